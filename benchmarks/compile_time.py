"""Compile time against depth and mesh size: mtfc's trace, lowering and
passes beside ``jax.jit(step).lower(...)`` of the same train step.

    python -m benchmarks.compile_time                      # benchmarks/RESULTS.md's table (~3-5 minutes on 2 cores)
    python -m benchmarks.compile_time --quick              # depths 1,2,4 and meshes 8,64, 1 repeat
    python -m benchmarks.compile_time --profile /tmp/prof  # also cProfile the deepest and the biggest-mesh case

The model is the transformer of ``examples/transformer.py`` (its `decoder`,
built by `benchmarks.model` at any depth) as a train step (AdamW with
clipping, as the example's entry).  Two sweeps, compile only (nothing is
executed, no XLA compile):

* depth: 1, 2, 4, 12, 24, 48 layers of the `small` size under the `mixed`
  layout on ``rows:2,cols:4``;
* mesh size: a 4-layer model (`MESH_SIZE`: 32 heads and a batch of 32, so
  that both split 32 ways) on ``data:2,model:4`` (8 devices), ``data:8,model:8``
  (64), ``data:16,model:16`` (256) and ``data:32,model:32`` (1024), layout
  ``batch:data,heads:model,d_ff:model``.  mtfc's passes read only the mesh
  written in the module, so they need no devices; JAX's lowering needs as many
  devices as the mesh, so this process asks for that many virtual CPU devices
  (``jax_num_cpu_devices``; creating them costs a few seconds, not timed).

Per case, best of `--repeats` (default 3) with `time.perf_counter`:

* mtfc ``trace``: tracing the model, autodiff and the optimizer
  (`mtfc.frontend.train.trace_train_step`); ``lower``: the graph to global
  StableHLO (`lower_graph`); ``passes``: explicit mode's pipeline
  (verify-names, partition, fuse-collectives) up to the per-device module --
  the phases of `mtfc.compiler.compile_entry` (its `timings`);
* ``jax lower``: ``jax.jit(step, in_shardings=, out_shardings=).lower(...)``
  of the plain-JAX train step of `benchmarks.model` (same sizes, same mesh,
  `NamedSharding`s from the same layout rules) on abstract arguments: JAX's
  trace and lowering to global StableHLO with shardings, the counterpart of
  mtfc's trace + lower (XLA's partitioner, the counterpart of the passes, runs
  later, in ``.compile()``, which is not timed).  A fresh jitted function each
  time, so JAX's tracing cache never answers.

Ratios: ``front/JAX`` = (trace + lower) / jax lower, ``all/JAX`` = (trace +
lower + passes) / jax lower, ``cpu/JAX`` the same as ``all/JAX`` in CPU
seconds of this process (`time.process_time`, best of the repeats), which
other processes on a shared machine move far less than wall time.  Output: a table, and JSON
(``--json``, default ``benchmarks/results-compile-time.json``).  Times are
not asserted anywhere (tests/test_benchmark_compile_time.py checks the
fields on tiny sizes).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time

from benchmarks import model as bm

DEPTHS = (1, 2, 4, 12, 24, 48)
MESHES = (8, 64, 256, 1024)
DEPTH_SIZE = bm.SIZES["small"]
DEPTH_LAYOUT = bm.LAYOUTS["mixed"]
MESH_SIZE = bm.Size("mesh", layers=4, batch=32, length=32, d_model=64, heads=32, d_kv=2, d_ff=256, vocab=64)
MESH_RULES = "batch:data,heads:model,d_ff:model"
TINY = bm.Size("tiny", layers=1, batch=8, length=8, d_model=16, heads=8, d_kv=2, d_ff=32, vocab=16)


def mesh_text(devices: int) -> str:
    """``data:A,model:B`` with A * B == `devices`, as square as possible (model >= data)."""
    data = 1
    while (data * 2) * (data * 2) <= devices and devices % (data * 2) == 0:
        data *= 2
    return f"data:{data},model:{devices // data}"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.compile_time", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="depths 1,2,4, meshes 8,64, one repeat")
    p.add_argument("--depths", help=f"comma-separated layer counts (default {','.join(map(str, DEPTHS))})")
    p.add_argument("--meshes", help=f"comma-separated device counts (default {','.join(map(str, MESHES))})")
    p.add_argument("--repeats", type=int, help="best of this many (default 3)")
    p.add_argument("--tiny", action="store_true", help="the tiny model in both sweeps (tests)")
    p.add_argument("--no-jax", action="store_true", help="skip the JAX baseline")
    p.add_argument("--profile", metavar="DIR", help="cProfile the deepest and the biggest-mesh case into DIR")
    p.add_argument("--json", default=os.path.join(os.path.dirname(__file__), "results-compile-time.json"))
    return p.parse_args(argv)


def _ints(text, default):
    return tuple(int(x) for x in text.split(",") if x.strip()) if text else default


# ----------------------------------------------------------------- subjects


def mtfc_phases(size: bm.Size, layout: bm.Layout) -> dict[str, float]:
    """One compile of the train step of `size` under `layout`, explicit mode:
    seconds of trace, lower, passes."""
    from mtfc import errors
    from mtfc.compiler import compile_function

    fn, inputs = bm.mtfc_model(size)
    timings: dict[str, float] = {}
    errors.show_warnings(False)  # the train step's dropped `logits`, once per compile
    try:
        compile_function(fn, inputs, mesh=layout.mesh, layout=layout.layout, param_layout=layout.param_layout,
                         mode="explicit", name="transformer", train=True, optimizer=bm.OPTIMIZER,
                         timings=timings)
    finally:
        errors.show_warnings(True)
    return timings


def jax_lower_seconds(size: bm.Size, layout: bm.Layout) -> tuple[float, float]:
    """Wall and CPU seconds of ``jax.jit(step, ...).lower(abstract args)`` (the plain-JAX
    train step of `benchmarks.model`, shardings as `benchmarks.runners.JaxSubject`)."""
    import jax
    import numpy as np
    from jax.sharding import NamedSharding

    mesh = bm.jax_mesh(jax.devices("cpu"), layout.mesh)
    par = layout.param_layout if layout.param_layout is not None else layout.layout
    dims = bm.jax_param_dims(size)
    psh = {k: NamedSharding(mesh, bm.partition_spec(d, par)) for k, d in dims.items()}
    tok = NamedSharding(mesh, bm.partition_spec(("batch", "length"), layout.layout))
    rep = NamedSharding(mesh, bm.partition_spec((), layout.layout))
    p_abs = {k: jax.ShapeDtypeStruct(tuple(getattr(size, x) for x in d), np.float32, sharding=psh[k])
             for k, d in dims.items()}
    tok_abs = jax.ShapeDtypeStruct((size.batch, size.length), np.int32, sharding=tok)
    abstract = (p_abs, p_abs, p_abs, jax.ShapeDtypeStruct((), np.int32, sharding=rep), tok_abs, tok_abs)
    fn = bm.jax_train_step(size)  # a new function: JAX's trace cache cannot answer
    jitted = jax.jit(fn, in_shardings=(psh, psh, psh, rep, tok, tok),
                     out_shardings=(rep, rep, rep, psh, psh, psh, rep), donate_argnums=(0, 1, 2, 3))
    start, cpu = time.perf_counter(), time.process_time()
    jitted.lower(*abstract)
    return time.perf_counter() - start, time.process_time() - cpu


def measure(size: bm.Size, layout: bm.Layout, repeats: int, with_jax: bool) -> dict:
    """Best of `repeats` of each mtfc phase and of JAX's lower, interleaved
    (mtfc, JAX, mtfc, ...) so that a change of machine load hits both."""
    best: dict[str, float] = {}
    for _ in range(repeats):
        gc.collect()
        for k, v in mtfc_phases(size, layout).items():
            best[k] = min(best.get(k, float("inf")), v)
        if with_jax:
            gc.collect()
            wall, cpu = jax_lower_seconds(size, layout)
            best["jax_lower"] = min(best.get("jax_lower", float("inf")), wall)
            best["jax_lower_cpu"] = min(best.get("jax_lower_cpu", float("inf")), cpu)
    row = {"layers": size.layers, "size": size.name, "mesh": layout.mesh, "layout": layout.layout,
           "devices": _devices(layout.mesh), "trace_seconds": best["trace"], "lower_seconds": best["lower"],
           "passes_seconds": best["passes"]}
    row["front_seconds"] = row["trace_seconds"] + row["lower_seconds"]
    row["total_seconds"] = row["front_seconds"] + row["passes_seconds"]
    row["jax_lower_seconds"] = best.get("jax_lower")
    # CPU seconds (this process, every thread): far less moved by other load than wall time
    row["cpu_seconds"] = {k: best[k + "_cpu"] for k in ("trace", "lower", "passes")}
    row["cpu_seconds"]["total"] = sum(row["cpu_seconds"].values())
    row["cpu_seconds"]["jax_lower"] = best.get("jax_lower_cpu")
    jl, jc = row["jax_lower_seconds"], row["cpu_seconds"]["jax_lower"]
    row["ratio_to_jax"] = {"front": row["front_seconds"] / jl if jl else None,
                           "total": row["total_seconds"] / jl if jl else None,
                           "total_cpu": row["cpu_seconds"]["total"] / jc if jc else None}
    return row


def _devices(mesh: str) -> int:
    from mtfc.mesh import Mesh

    return Mesh.parse(mesh).size


def profile_case(size: bm.Size, layout: bm.Layout, path: str) -> str:
    """cProfile one mtfc compile into `path` (.prof); the top of pstats by
    cumulative and by own time, as text."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    mtfc_phases(size, layout)
    prof.disable()
    prof.dump_stats(path)
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(40)
    stats.sort_stats("tottime").print_stats(40)
    return out.getvalue()


# ----------------------------------------------------------------- tables


def _ratio(x):
    return "-" if x is None else f"{x:.2f}"


def _cpu(x):
    return "-" if x is None else f"{x:.3f}"


def depth_table(rows: list[dict]) -> str:
    from benchmarks.compare import table

    base = rows[0]
    out = []
    for r in rows:
        per_layer = (r["total_seconds"] - base["total_seconds"]) / (r["layers"] - base["layers"]) \
            if r["layers"] != base["layers"] else None
        out.append([str(r["layers"]), f"{r['trace_seconds']:.3f}", f"{r['lower_seconds']:.3f}",
                    f"{r['passes_seconds']:.3f}", f"{r['total_seconds']:.3f}",
                    "-" if per_layer is None else f"{per_layer * 1e3:.0f}",
                    "-" if r["jax_lower_seconds"] is None else f"{r['jax_lower_seconds']:.3f}",
                    _ratio(r["ratio_to_jax"]["front"]), _ratio(r["ratio_to_jax"]["total"]),
                    f"{r['cpu_seconds']['total']:.3f}", _cpu(r["cpu_seconds"]["jax_lower"]),
                    _ratio(r["ratio_to_jax"]["total_cpu"])])
    return table(["layers", "trace s", "lower s", "passes s", "total s", "ms/layer", "jax lower s", "front/JAX",
                  "all/JAX", "cpu s", "jax cpu s", "cpu/JAX"], out, "l" + "r" * 11)


def mesh_table(rows: list[dict]) -> str:
    from benchmarks.compare import table

    base = rows[0]
    out = [[str(r["devices"]), r["mesh"], f"{r['trace_seconds']:.3f}", f"{r['lower_seconds']:.3f}",
            f"{r['passes_seconds']:.3f}", f"{r['total_seconds']:.3f}",
            f"{r['total_seconds'] / base['total_seconds']:.2f}",
            "-" if r["jax_lower_seconds"] is None else f"{r['jax_lower_seconds']:.3f}",
            _ratio(r["ratio_to_jax"]["front"]), _ratio(r["ratio_to_jax"]["total"]),
            f"{r['cpu_seconds']['total']:.3f}", f"{r['cpu_seconds']['total'] / base['cpu_seconds']['total']:.2f}",
            _ratio(r["ratio_to_jax"]["total_cpu"])] for r in rows]
    return table(["devices", "mesh", "trace s", "lower s", "passes s", "total s", f"x{base['devices']}",
                  "jax lower s", "front/JAX", "all/JAX", "cpu s", f"cpu x{base['devices']}", "cpu/JAX"], out,
                 "ll" + "r" * 11)


# ----------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    depths = _ints(args.depths, (1, 2, 4) if args.quick else DEPTHS)
    meshes = _ints(args.meshes, (8, 64) if args.quick else MESHES)
    repeats = args.repeats or (1 if args.quick else 3)
    with_jax = not args.no_jax
    if with_jax:
        import jax

        # JAX's mesh needs real (virtual) devices; before the CPU client starts
        need = max([8, *meshes])
        if jax.config.jax_num_cpu_devices < need:
            jax.config.update("jax_num_cpu_devices", need)
        jax.devices("cpu")
    started = time.perf_counter()
    load_start = os.getloadavg()
    depth_size = TINY if args.tiny else DEPTH_SIZE
    mesh_size = TINY if args.tiny else MESH_SIZE
    # warm-up (imports, MLIR context, JAX's own caches): not timed
    measure(depth_size.with_layers(1), DEPTH_LAYOUT, 1, with_jax)

    depth_rows = []
    for n in depths:
        depth_rows.append(measure(depth_size.with_layers(n), DEPTH_LAYOUT, repeats, with_jax))
        print(f"  depth {n}: {depth_rows[-1]['total_seconds']:.3f} s", file=sys.stderr, flush=True)
    mesh_rows = []
    for d in meshes:
        layout = bm.Layout(f"mesh{d}", MESH_RULES, mesh=mesh_text(d))
        mesh_rows.append(measure(mesh_size, layout, repeats, with_jax))
        print(f"  mesh {d}: {mesh_rows[-1]['total_seconds']:.3f} s", file=sys.stderr, flush=True)

    profiles = {}
    if args.profile:
        os.makedirs(args.profile, exist_ok=True)
        deep = depth_size.with_layers(max(depths))
        text = profile_case(deep, DEPTH_LAYOUT, os.path.join(args.profile, f"depth{max(depths)}.prof"))
        profiles["depth"] = os.path.join(args.profile, f"depth{max(depths)}.txt")
        open(profiles["depth"], "w").write(text)
        big = bm.Layout("mesh", MESH_RULES, mesh=mesh_text(max(meshes)))
        text = profile_case(mesh_size, big, os.path.join(args.profile, f"mesh{max(meshes)}.prof"))
        profiles["mesh"] = os.path.join(args.profile, f"mesh{max(meshes)}.txt")
        open(profiles["mesh"], "w").write(text)

    import jax

    result = {
        "schema": 1,
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
                    "cpu_count": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "settings": {"depths": list(depths), "meshes": list(meshes), "repeats": repeats, "mode": "explicit",
                     "step": "train", "optimizer": bm.OPTIMIZER, "depth_size": depth_size.name,
                     "depth_layout": DEPTH_LAYOUT.layout, "depth_mesh": DEPTH_LAYOUT.mesh,
                     "mesh_size": mesh_size.name, "mesh_layout": MESH_RULES, "jax": with_jax},
        "depth": depth_rows,
        "mesh": mesh_rows,
        "profiles": profiles,
        "seconds": time.perf_counter() - started,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(f"compile time, train step, explicit mode; {os.cpu_count()} cores, jax {jax.__version__}; "
          f"load average at start {load_start[0]:.1f}; best of {repeats}")
    print(f"\ndepth ({depth_size.name} size, {DEPTH_LAYOUT.layout} on {DEPTH_LAYOUT.mesh}):")
    print(depth_table(depth_rows))
    print(f"\nmesh size ({mesh_size.name} size, {mesh_size.layers} layers, {MESH_RULES}):")
    print(mesh_table(mesh_rows))
    print(f"\ntotal {result['seconds']:.0f} s; load average at end {result['machine']['loadavg_end'][0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
