"""The harness of the one-layer benchmarks (`benchmarks.moe`,
`benchmarks.conv`): mtfc explicit / gspmd / shardy against the same model in
plain JAX, under the same layout rules on the 8-device mesh ``rows:2,cols:4``.

* `mtfc_subject`: a model function compiled by mtfc in one mode, as a
  `benchmarks.runners.MtfcSubject`; a mode that refuses the model or layout
  (an `MtfcError` while compiling) gives a `Refused` subject instead;
* `JaxLayerSubject`: the model written in plain JAX, `jax.jit` with
  `NamedSharding` in/out shardings from the layout rules, its activations
  annotated with `with_sharding_constraint` (``constrain``);
* `measure`: the gate (every subject's outputs after one step from the same
  data against a reference's, within the f32 tolerance), then the round-robin
  timing and the figures of one configuration, one row per subject;
* `table`, `main`: the Markdown table and the command line both share.

Per row: the median step wall time and CPU time (`runners.timed_step`), the
collectives of the compiled executable's optimized HLO (count, bus bytes per
device per step, and count / bus bytes of the kinds the benchmark names),
XLA's per-device memory (peak = arguments + outputs - aliased +
temporaries), lower and XLA compile seconds, and ratios to the ``jax`` row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

from benchmarks import model as bm

MESH = bm.MESH


class Refused:
    """A subject that mtfc would not build: `message` is its one-line error."""

    def __init__(self, name: str, message: str):
        self.name, self.message = name, message


def mtfc_subject(model, inputs: dict, *, layout: str, mode: str, train: bool, optimizer: str | None, name: str,
                 mesh: str = MESH):
    """`model(**inputs)` compiled by mtfc in `mode` and loaded
    (`benchmarks.runners.MtfcSubject`), or `Refused` with mtfc's message."""
    from benchmarks.runners import MtfcSubject
    from mtfc.compiler import compile_function
    from mtfc.errors import MtfcError

    start = time.perf_counter()
    try:
        module = compile_function(model, inputs, mesh=mesh, layout=layout, mode=mode, train=train,
                                  optimizer=optimizer if train else None, name=name)
    except MtfcError as e:
        return Refused(f"mtfc {mode}", str(e).splitlines()[0])
    return MtfcSubject.from_module(module, mode, train=train, lower_seconds=time.perf_counter() - start)


def sgd_train_step(loss_fn, lr: float):
    """`step(params, x, constrain) -> (loss, *metrics, new params)`: one SGD
    step (no momentum) on ``loss_fn(params, x, constrain) -> (loss, metrics)``."""

    def step(params, x, constrain):
        import jax

        (loss, metrics), grads = jax.value_and_grad(lambda p: loss_fn(p, x, constrain), has_aux=True)(params)
        return (loss, *metrics, {k: params[k] - lr * grads[k] for k in params})

    return step


class JaxLayerSubject:
    """A plain-JAX model ``fn(params, x, constrain) -> tuple``, jitted with
    `NamedSharding`s from the layout rules `layout` on `mesh`.

    `param_dims`: each parameter's dim names; `dim_sizes`: every dim's size;
    `x_dims`: the input's dims (host array `x_name`); `results`: ``(name,
    dims)`` of fn's outputs.  With `train`, fn returns those and then the new
    parameters, which are donated and fed back (`sgd_train_step`).
    ``constrain(value, dims)`` is `with_sharding_constraint` to the layout of
    `dims` (GSPMD-style annotations on activations)."""

    def __init__(self, fn, layout: str, *, param_dims: dict, dim_sizes: dict, x_dims: tuple, results: tuple,
                 train: bool, mesh: str = MESH, x_name: str = "x", name: str = "jax"):
        import jax
        from jax.sharding import NamedSharding

        from benchmarks.runners import collectives_record, memory_stats
        from mtfc.mesh import Mesh
        from mtfc.passes import comm_analysis

        self.name, self.train, self.x_name = name, train, x_name
        self.param_dims = param_dims
        jmesh = bm.jax_mesh(jax.devices("cpu"), mesh)

        def sharding(dims):
            return NamedSharding(jmesh, bm.partition_spec(dims, layout))

        def constrain(value, dims):
            return jax.lax.with_sharding_constraint(value, sharding(dims))

        self.param_sharding = {k: sharding(d) for k, d in param_dims.items()}
        self.x_sharding = sharding(x_dims)
        self.result_names = [n for n, _ in results]
        out_shardings = tuple(sharding(d) for _, d in results) + ((self.param_sharding,) if train else ())
        self.jitted = jax.jit(lambda p, x: fn(p, x, constrain), in_shardings=(self.param_sharding, self.x_sharding),
                              out_shardings=out_shardings, donate_argnums=(0,) if train else ())
        p_abs = {k: jax.ShapeDtypeStruct(tuple(dim_sizes[d] for d in dims), np.float32,
                                         sharding=self.param_sharding[k]) for k, dims in param_dims.items()}
        x_abs = jax.ShapeDtypeStruct(tuple(dim_sizes[d] for d in x_dims), np.float32, sharding=self.x_sharding)
        start = time.perf_counter()
        lowered = self.jitted.lower(p_abs, x_abs)
        self.lower_seconds = time.perf_counter() - start
        start = time.perf_counter()
        self.compiled = lowered.compile()
        self.xla_seconds = time.perf_counter() - start
        hlo = self.compiled.as_text()
        self.collectives = {"compiled HLO": collectives_record(comm_analysis.hlo_collectives(hlo, Mesh.parse(mesh)),
                                                               "compiled HLO")}
        self.memory = memory_stats(self.compiled.memory_analysis())
        self.args = self.last = None

    def load(self, host: dict) -> None:
        import jax

        self.args = [{k: jax.device_put(np.asarray(host[k], np.float32), self.param_sharding[k])
                      for k in self.param_dims},
                     jax.device_put(np.asarray(host[self.x_name], np.float32), self.x_sharding)]

    def step(self) -> None:
        import jax

        out = self.compiled(*self.args)
        jax.block_until_ready(out)
        self.last = out
        if self.train:
            self.args[0] = out[-1]

    def outputs(self) -> dict:
        out = {n: np.asarray(v, np.float64) for n, v in zip(self.result_names, self.last)}
        if self.train:
            out.update({k: np.asarray(v, np.float64) for k, v in self.last[-1].items()})
        return out


# ------------------------------------------------------------------ one configuration
def gate(subject, reference: dict) -> float:
    """The largest normwise relative error of `subject`'s outputs against
    `reference` (every reference output must be there)."""
    from mtfc.runtime.check import relative_error

    got = subject.outputs()
    missing = sorted(set(reference) - set(got))
    if missing:
        raise SystemExit(f"error: {subject.name} has no output(s) {', '.join(missing)}")
    return max(relative_error(np.asarray(got[k]), np.asarray(v)) for k, v in reference.items())


def _ratio(a, b):
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else None
    return a / b


def measure(subjects: list, *, size: str, layout: str, rules: str, train: bool, repeats: int, warmup: int,
            kinds: tuple[str, ...], reference=None, seed: int = 0) -> list[dict]:
    """Gate, time and describe the `subjects` of one configuration (module
    docstring); `Refused` subjects get a row with their message and no
    figures.  The host data are the first mtfc subject's synthesized inputs.
    The gate's reference is `reference`'s outputs after one step (a subject
    run only for that), else those of the subject named ``jax``."""
    from benchmarks.runners import timed_step
    from mtfc.runtime.check import TOLERANCE

    built = [s for s in subjects if not isinstance(s, Refused)]
    host = next(s for s in built if hasattr(s, "synthesize")).synthesize(seed)
    for s in built + ([reference] if reference is not None else []):
        s.load(host)
        s.step()
    ref = reference if reference is not None else next(s for s in built if s.name == "jax")
    want = ref.outputs()
    errors = {s.name: gate(s, want) for s in built}
    for s in built:
        s.load(host)
        for _ in range(warmup):
            s.step()
    times = {s.name: [] for s in built}
    for _ in range(repeats):
        for s in built:  # round-robin: a change of load hits every subject
            times[s.name].append(timed_step(s))
    base = {"size": size, "layout": layout, "rules": rules, "step": "train" if train else "forward"}
    rows = []
    for s in subjects:
        if isinstance(s, Refused):
            rows.append({**base, "subject": s.name, "status": "refused", "note": s.message})
            continue
        hlo = s.collectives["compiled HLO"]
        row = {**base, "subject": s.name, "status": "ok", "note": getattr(s, "note", ""),
               "gate_error": errors[s.name], "gate_ok": errors[s.name] <= TOLERANCE["f32"],
               "step_ms": 1e3 * statistics.median(t["wall"] for t in times[s.name]),
               "cpu_ms": 1e3 * statistics.median(t["user"] + t["sys"] for t in times[s.name]),
               "collectives": hlo["count"], "bus_bytes": hlo["bus_bytes"]}
        for kind in kinds:
            figures = hlo["by_kind"].get(kind, {"count": 0, "bus_bytes": 0})
            row[kind], row[f"{kind}_bus_bytes"] = figures["count"], figures["bus_bytes"]
        row.update(peak_bytes=s.memory.get("peak_bytes"), lower_s=s.lower_seconds, xla_s=s.xla_seconds,
                   collectives_detail=s.collectives)
        rows.append(row)
    jax_row = next((r for r in rows if r["subject"] == "jax"), None)
    for r in rows:
        if jax_row is not None and r["status"] == "ok":
            r["ratio_to_jax"] = {k: _ratio(r[k], jax_row[k]) for k in ("step_ms", "cpu_ms", "bus_bytes", "peak_bytes")}
    return rows


# ------------------------------------------------------------------ table and command line
def table(rows: list[dict], columns: list[tuple[str, object]]) -> str:
    """A Markdown table: ``(header, row -> text)`` per column; a refused row
    shows its message (its first 70 characters) after the configuration and
    the subject."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    for r in rows:
        if r["status"] == "refused":
            note = r["note"] if len(r["note"]) <= 70 else r["note"][:70] + "..."
            cells = [r["size"], r["layout"], r["step"], r["subject"], f"refused: {note}"]
            cells += ["-"] * (len(columns) - len(cells))
        else:
            cells = [text(r) for _, text in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def key_columns() -> list:
    """The columns that name a row's configuration and subject."""
    return [(k, lambda r, k=k: r[k]) for k in ("size", "layout", "step", "subject")]


def gate_text(r: dict) -> str:
    return f"{'ok' if r['gate_ok'] else 'FAIL'} ({r['gate_error']:.1e})"


def ratio_text(r: dict, key: str) -> str:
    x = r.get("ratio_to_jax", {}).get(key)
    return "-" if x is None else f"{x:.2f}"


def main(argv, *, prog: str, doc: str, sizes: dict, layouts: dict, run, columns) -> int:
    """The one-layer benchmarks' command line: ``run(size, layout, train,
    repeats) -> rows`` for every size x layout x (forward, train); the
    table; ``--json``; exit 1 when a gate failed."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small size, 5 repeats")
    ap.add_argument("--sizes", help=f"comma-separated ({', '.join(sizes)})")
    ap.add_argument("--layouts", help=f"comma-separated ({', '.join(layouts)})")
    ap.add_argument("--steps", default="forward,train", help="forward, train or both")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    chosen_sizes = args.sizes.split(",") if args.sizes else (["small"] if args.quick else list(sizes))
    chosen_layouts = args.layouts.split(",") if args.layouts else list(layouts)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    for what, names, known in (("size", chosen_sizes, sizes), ("layout", chosen_layouts, layouts),
                               ("step", steps, ("forward", "train"))):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise SystemExit(f"error: unknown {what} {unknown[0]!r} (choose from {', '.join(known)})")
    repeats = args.repeats or (5 if args.quick else 15)
    started, load_start = time.perf_counter(), os.getloadavg()
    rows = []
    for size in chosen_sizes:
        for layout in chosen_layouts:
            for step in steps:
                new = run(size, layout, step == "train", repeats)
                rows.extend(new)
                print("\n".join(table(new, columns).splitlines()[2:]), flush=True)
    print()
    print(table(rows, columns))
    failed = [r for r in rows if r.get("gate_ok") is False]
    refused = sorted({f"{r['subject']}: {r['note']}" for r in rows if r["status"] == "refused"})
    for line in refused:
        print(f"refused: {line}")
    print("gate: every subject matches the reference" if not failed else "gate FAILED: " + ", ".join(
        f"{r['subject']} {r['size']}/{r['layout']}/{r['step']} ({r['gate_error']:.1e})" for r in failed))
    if args.json:
        machine = {"cpu_count": os.cpu_count(), "jax": jax.__version__, "loadavg_start": load_start,
                   "loadavg_end": os.getloadavg()}
        with open(args.json, "w") as f:
            json.dump({"mesh": MESH, "machine": machine, "repeats": repeats,
                       "seconds": time.perf_counter() - started, "rows": rows}, f, indent=1)
    return 1 if failed else 0
