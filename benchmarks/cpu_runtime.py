"""Where the CPU time of a step goes on virtual CPU devices, and the CPU
runtime's configuration before and after (part of `benchmarks.compare`).

Before/after: the runtime's one setting that measurably helps is the memory
allocator (`mtfc.runtime.devices.configure_cpu_allocator`; ``reuse``).  It is
process-wide and must be set before XLA's threads start, so "before" runs in
a child process with ``MTFC_CPU_ALLOCATOR=system`` and "after" in this one,
back to back, on the same configurations: the large transformer's train
step, single device, data parallel and tensor parallel, mtfc explicit and
plain JAX.  Per step: wall time, CPU time of the process (user + system, all
threads) and minor page faults -- CPU time and faults do not depend on what
else the machine runs, wall time does.

Where the time goes: the same train step in plain JAX on one device at the
full batch, on one device at 1/8 of the batch (x 8: the data-parallel work
with no collectives and no concurrency), and data- and tensor-parallel on 8
devices.

``python -m benchmarks.cpu_runtime --flags`` (not part of the default run)
compares XLA:CPU options per executable in one process, interleaved
(``xla_cpu_multi_thread_eigen`` and others; none helped here, see RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np

CONFIGS = {"default": ("large", ["single", "data", "tensor"]), "quick": ("small", ["single", "tensor"])}
# the two reference points (one device; tensor parallel on 8) and data parallel


def _round_robin(subs, repeats: int) -> dict[str, list]:
    """`repeats` timed steps of each subject, interleaved (A, B, C, A, ...), so
    a change in the machine's load hits every subject alike."""
    from benchmarks.runners import timed_step

    samples = {s.name: [] for s in subs}
    for _ in range(repeats):
        for s in subs:
            samples[s.name].append(timed_step(s))
    return samples


def _measure(size, layouts: list[str], repeats: int, log, *, subjects=("jax", "explicit"),
             xla_options: dict | None = None) -> list[dict]:
    from benchmarks import model as bm
    from benchmarks.runners import JaxSubject, MtfcSubject, host_data

    rows = []
    for name in layouts:
        layout = bm.LAYOUTS[name]
        subs = []
        for who in subjects:
            if who == "jax":
                subs.append(JaxSubject(size, layout, train=True, xla_options=xla_options))
            else:
                subs.append(MtfcSubject(size, layout, who, train=True, xla_options=xla_options))
        host = host_data(size, True, seed=0)
        for s in subs:
            s.load(host)
            s.step()
            s.step()
        samples = _round_robin(subs, repeats)
        for s in subs:
            x = samples[s.name]
            row = {"size": size.name, "batch": size.batch, "layout": name, "subject": s.name,
                   "wall": float(np.median([v["wall"] for v in x])),
                   "cpu": float(np.median([v["user"] + v["sys"] for v in x])),
                   "sys": float(np.median([v["sys"] for v in x])),
                   "faults": float(np.median([v["faults"] for v in x])),
                   "flops": size.matmul_flops(True)}
            rows.append(row)
            log(f"  {size.name}/{name:<6} {s.name:<13} wall {row['wall'] * 1e3:7.0f} ms  cpu {row['cpu'] * 1e3:7.0f} ms"
                f"  sys {row['sys'] * 1e3:5.0f} ms  faults {row['faults']:8.0f}")
        del subs
    return rows


def _child(args) -> None:
    from mtfc.runtime import devices as rt_devices

    rt_devices.ensure_cpu_devices(8)
    from benchmarks import model as bm

    rows = _measure(bm.SIZES[args.size], args.layouts.split(","), args.repeats,
                    lambda t: print(t, file=sys.stderr, flush=True))
    print(json.dumps({"runtime_config": rt_devices.runtime_config(), "rows": rows}))


def run(*, quick: bool, log=print) -> dict:
    """Before (child, system allocator) and after (this process), then the
    decomposition of the CPU time."""
    from mtfc.runtime import devices as rt_devices

    size, layouts = CONFIGS["quick" if quick else "default"]
    repeats = 3
    log(f"runtime before/after: child process with MTFC_CPU_ALLOCATOR=system ({size}, {', '.join(layouts)})")
    env = dict(os.environ, MTFC_CPU_ALLOCATOR="system")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.cpu_runtime", "--child", "--size", size,
                           "--layouts", ",".join(layouts), "--repeats", str(repeats)],
                          cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the 'before' child failed:\n{proc.stderr[-3000:]}")
    before = json.loads(proc.stdout.strip().splitlines()[-1])
    log(f"runtime before/after: this process ({rt_devices.runtime_config()})")
    from benchmarks import model as bm

    after = {"runtime_config": rt_devices.runtime_config(), "rows": _measure(bm.SIZES[size], layouts, repeats, log)}
    log("where the CPU time goes: one device at 1/8 of the batch (plain JAX)")
    full = bm.SIZES[size]
    eighth_size = bm.Size(**{**full.__dict__, "name": f"{size}/8", "batch": full.batch // 8})
    eighth = _measure(eighth_size, ["single"], repeats, log, subjects=("jax",))
    return {"size": size, "layouts": layouts, "before": before, "after": after, "per_device_batch": eighth}


def report(result: dict) -> str:
    from benchmarks.compare import table

    before = {(r["layout"], r["subject"]): r for r in result["before"]["rows"]}
    after = {(r["layout"], r["subject"]): r for r in result["after"]["rows"]}
    parts = [f"CPU runtime before/after ({result['size']} train step; before: {result['before']['runtime_config']}, "
             f"after: {result['after']['runtime_config']}); per step, medians",
             "wall: elapsed; cpu: process CPU time (user + system, all threads); faults: minor page faults"]
    rows = []
    for key, a in after.items():
        b = before.get(key)
        if b is None:
            continue
        rows.append([key[0], key[1], f"{b['wall'] * 1e3:.0f}", f"{a['wall'] * 1e3:.0f}",
                     f"{b['cpu'] * 1e3:.0f}", f"{a['cpu'] * 1e3:.0f}", f"{b['sys'] * 1e3:.0f}", f"{a['sys'] * 1e3:.0f}",
                     f"{b['faults']:.0f}", f"{a['faults']:.0f}", f"{a['cpu'] / b['cpu']:.2f}"])
    parts.append(table(["layout", "subject", "wall ms before", "after", "cpu ms before", "after", "sys ms before",
                        "after", "faults before", "after", "cpu after/before"], rows, "ll" + "r" * 9))
    single = after.get(("single", "jax"))
    if single:
        parts += ["", "where the CPU time goes (plain JAX, after): CPU time per step relative to one device at the "
                      "full batch"]
        rows = [["1 device, full batch", f"{single['cpu'] * 1e3:.0f}", "1.00",
                 f"{single['flops'] / single['cpu'] / 1e9:.1f}"]]
        for r in result["per_device_batch"]:
            rows.append(["1 device, 1/8 batch, x 8", f"{8 * r['cpu'] * 1e3:.0f}", f"{8 * r['cpu'] / single['cpu']:.2f}",
                         f"{8 * r['flops'] / (8 * r['cpu']) / 1e9:.1f}"])
        for name in result["layouts"]:
            r = after.get((name, "jax"))
            if r and name != "single":
                rows.append([f"8 devices, {name}", f"{r['cpu'] * 1e3:.0f}", f"{r['cpu'] / single['cpu']:.2f}",
                             f"{r['flops'] / r['cpu'] / 1e9:.1f}"])
        parts.append(table(["program", "cpu ms", "x 1 device", "GFLOP per cpu-s"], rows, "lrrr"))
    return "\n".join(parts)


FLAG_VARIANTS = [
    {},
    {"xla_cpu_multi_thread_eigen": False},
    {"xla_cpu_use_xnnpack": True},
    {"xla_cpu_prefer_vector_width": 512},
    {"xla_cpu_use_fusion_emitters": False},
    {"xla_cpu_enable_concurrency_optimized_scheduler": False},
]


def flags_study(size: str, layouts: list[str], repeats: int) -> None:
    """Each XLA:CPU option variant compiled side by side in this process and
    run interleaved (the same load for all); mtfc explicit's train step."""
    from benchmarks import model as bm
    from benchmarks.runners import MtfcSubject

    for name in layouts:
        subs = []
        for v in FLAG_VARIANTS:
            s = MtfcSubject(bm.SIZES[size], bm.LAYOUTS[name], "explicit", train=True, xla_options=v or None)
            s.name = ",".join(f"{k}={val}" for k, val in v.items()) or "default"
            subs.append(s)
        host = subs[0].synthesize(0)
        for s in subs:
            s.load(host)
            s.step()
        samples = _round_robin(subs, repeats)
        for s in subs:
            x = samples[s.name]
            print(f"{size}/{name:<6} {s.name:<52} wall {np.median([v['wall'] for v in x]) * 1e3:7.0f} ms  "
                  f"cpu {np.median([v['user'] + v['sys'] for v in x]) * 1e3:7.0f} ms  XLA compile {s.xla_seconds:5.1f} s",
                  flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cpu_runtime")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--flags", action="store_true", help="compare XLA:CPU options (interleaved, one process)")
    p.add_argument("--size", default="large")
    p.add_argument("--layouts", default="single,data,tensor")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return 0
    from mtfc.runtime import devices as rt_devices

    rt_devices.ensure_cpu_devices(8)
    if args.flags:
        flags_study(args.size, args.layouts.split(","), args.repeats)
        return 0
    result = run(quick=args.size == "small", log=lambda t: print(t, file=sys.stderr, flush=True))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
