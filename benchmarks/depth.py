"""Deep models: compile cost and step time against the number of layers,
the layers scanned (one loop, `mtf.layers.repeat`) or unrolled, beside plain
JAX's `jax.lax.scan` version (and JAX unrolled), in one run on one mesh.

For each depth: the small transformer's train step (benchmarks/model.py,
the layers of examples/transformer.py) under the ``mixed`` layout on 8
virtual CPU devices, mtfc explicit mode:

* lower -- trace + passes to the per-device StableHLO (mtfc), ``jit(...)
  .lower`` (JAX);
* XLA -- PJRT/XLA compile of that module;
* step -- the median wall time of `--repeats` steps after `--warmup`, state
  fed back device to device (benchmarks/runners.py).

Before timing, every pair computes the same first step from the same host
arrays: mtfc scanned against JAX scanned, mtfc unrolled against JAX
unrolled (the parameters' names are shared within a pair): the loss, the
gradient norm and both AdamW slots of every parameter within the f32
tolerance (benchmarks/compare.py's gate); a mismatch exits 1.

    python -m benchmarks.depth                  # 1..96 layers, writes benchmarks/results-depth.json
    python -m benchmarks.depth --quick          # 1, 2, 4 layers (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from benchmarks import model as bm

LAYERS = [1, 2, 4, 8, 16, 32, 48, 96]
LAYERS_QUICK = [1, 2, 4]
UNROLLED_MAX = 48  # unrolled beyond this takes minutes per row in XLA (and proves nothing new)


def _subjects(n: int, scan: bool, layout, log):
    from benchmarks.runners import JaxSubject, MtfcSubject

    size = bm.SIZES["small"].with_layers(n).scanned(scan)
    mtfc = MtfcSubject(size, layout, "explicit", train=True)
    jax = JaxSubject(size, layout, train=True)
    return size, mtfc, jax


def _step_times(subject, host, repeats: int, warmup: int) -> float:
    from benchmarks.runners import timed_step

    subject.load(host)
    for _ in range(warmup):
        subject.step()
    return statistics.median(timed_step(subject)["wall"] for _ in range(repeats))


def _gate(mtfc, jax, host) -> float:
    """Largest relative error of mtfc's first step against JAX's, gated as
    benchmarks/compare.py gates (loss, gradient norm, learning rate, step and
    both AdamW slots -- every gradient -- not the updated parameters, which
    Adam's first update makes sensitive to rounding)."""
    from benchmarks.compare import gate

    mtfc.load(host)
    jax.load(host)
    mtfc.step()
    jax.step()
    return gate([mtfc], jax, "f32")[mtfc.name]["max_error"]


def measure(layers: list[int], repeats: int, warmup: int, unrolled_max: int, log) -> list[dict]:
    from benchmarks.runners import host_data
    from mtfc.runtime.check import TOLERANCE

    layout = bm.LAYOUTS["mixed"]
    rows = []
    for n in layers:
        for scan in (True, False):
            if not scan and n > unrolled_max:
                continue
            size, mtfc, jax = _subjects(n, scan, layout, log)
            host = host_data(size, train=True)
            error = _gate(mtfc, jax, host)
            row = {"layers": n, "scan": scan, "layout": layout.name, "gate_error": error,
                   "gate_ok": error <= TOLERANCE["f32"],
                   "mtfc_lower": mtfc.lower_seconds, "mtfc_xla": mtfc.xla_seconds,
                   "jax_lower": jax.lower_seconds, "jax_xla": jax.xla_seconds,
                   "mtfc_step": _step_times(mtfc, host, repeats, warmup),
                   "jax_step": _step_times(jax, host, repeats, warmup),
                   "mtfc_memory": mtfc.memory, "jax_memory": jax.memory}
            rows.append(row)
            log(f"  L={n:<3} {'scan  ' if scan else 'unroll'} mtfc lower {row['mtfc_lower']:6.2f} s  XLA "
                f"{row['mtfc_xla']:6.2f} s  step {row['mtfc_step'] * 1e3:7.1f} ms | jax lower {row['jax_lower']:6.2f} s"
                f"  XLA {row['jax_xla']:6.2f} s  step {row['jax_step'] * 1e3:7.1f} ms | gate {error:.1e}")
            del mtfc, jax
    return rows


def report(rows: list[dict]) -> str:
    from benchmarks.compare import table

    def ms(x):
        return f"{x * 1e3:.1f}"

    body = []
    by = {(r["layers"], r["scan"]): r for r in rows}
    for r in rows:
        unrolled = by.get((r["layers"], False))
        body.append([str(r["layers"]), "scan" if r["scan"] else "unrolled",
                     f"{r['mtfc_lower']:.2f}", f"{r['mtfc_xla']:.2f}", ms(r["mtfc_step"]),
                     f"{r['jax_lower']:.2f}", f"{r['jax_xla']:.2f}", ms(r["jax_step"]),
                     f"{r['mtfc_lower'] / r['jax_lower']:.2f}", f"{r['mtfc_step'] / r['jax_step']:.2f}",
                     f"{r['mtfc_step'] / unrolled['mtfc_step']:.2f}" if r["scan"] and unrolled else "-",
                     f"{r['gate_error']:.0e}"])
    head = ["layers", "layers as", "mtfc lower s", "mtfc XLA s", "mtfc step ms", "jax lower s", "jax XLA s",
            "jax step ms", "lower xJAX", "step xJAX", "step x unrolled", "gate"]
    lines = ["train step vs depth (small dims, mixed layout, 8 CPU devices, explicit mode); JAX: lax.scan when "
             "scanned, a Python loop when unrolled", table(head, body, "ll" + "r" * 10)]
    scans = [r for r in rows if r["scan"]]
    if scans:
        two = by.get((2, True))
        for r in scans:
            if r["layers"] == 48:
                lines.append(f"48 scanned layers: trace + passes {r['mtfc_lower']:.2f} s; XLA compile "
                             f"{r['mtfc_xla']:.2f} s" + (f" = {r['mtfc_xla'] / two['mtfc_xla']:.2f}x the 2-layer step's"
                                                         if two else ""))
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.depth", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1, 2 and 4 layers, 2 repeats (a smoke test)")
    p.add_argument("--layers", default=None, help="comma-separated depths (default: 1,2,4,8,16,32,48,96)")
    p.add_argument("--unrolled-max", type=int, default=UNROLLED_MAX, help="deepest unrolled model measured")
    p.add_argument("--repeats", type=int, default=None, help="timed steps per subject (default 10; quick: 2)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--json", default=None, help="where to write the results (default benchmarks/results-depth.json; "
                   "quick: none)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    args = parse_args(argv)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else (LAYERS_QUICK if args.quick else LAYERS)
    repeats = args.repeats or (2 if args.quick else 10)
    start = time.perf_counter()
    rows = measure(layers, repeats, args.warmup, args.unrolled_max, lambda m: print(m, file=sys.stderr, flush=True))
    from benchmarks.compare import machine_info

    result = {"benchmark": "depth", "machine": machine_info("cpu"), "rows": rows,
              "seconds": time.perf_counter() - start}
    print(report(rows))
    path = args.json or (None if args.quick else os.path.join(os.path.dirname(__file__), "results-depth.json"))
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1, default=float)
    bad = [r for r in rows if not r["gate_ok"]]
    for r in bad:
        print(f"error: {r['layers']} layers ({'scan' if r['scan'] else 'unrolled'}): mtfc and JAX differ "
              f"(relative error {r['gate_error']:.1e})", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
