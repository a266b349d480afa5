"""mtfc explicit vs mtfc gspmd vs plain JAX, side by side, in one run.

    python -m benchmarks.compare            # the default run (~10 minutes on 2 cores)
    python -m benchmarks.compare --quick    # small sizes, few repeats (~1-2 minutes)

For the transformer (`benchmarks.model`) at each size, under each layout on
the 8-device mesh (``rows:2,cols:4``), for the forward pass and the train
step (AdamW), three subjects compute the same thing from the same data:

* ``mtfc explicit``: mtfc's own partitioner, a per-device program run as replicas;
* ``mtfc gspmd``: the same module with ``mhlo.sharding``, split by XLA;
* ``jax``: the model in plain jax.numpy, ``jax.jit`` with `NamedSharding`
  in/out shardings (XLA's partitioner too).

Before anything is timed, one step of each must give the same outputs (loss,
logits, or every parameter and optimizer slot after one AdamW step) as JAX
within the f32 tolerance (the "gate"); a mismatch is reported and the
process exits 1 after the tables.  Then it measures, per subject:

* lower: trace + compile to StableHLO (`compile_function`; `jax.jit(...).lower`);
* XLA: PJRT/XLA compile of that module (`Program`; `.compile()`);
* step: the median wall time of one step after warm-up, the three subjects
  timed round-robin so that a change in machine load hits all of them;
* MFU: the model's matmul FLOPs per step / step time / the peak, where the
  peak is measured in the same run (`benchmarks.peak`: the faster of XLA's
  dot and NumPy's BLAS on one device) at the start and again next to each
  configuration, and the best of those is the machine's peak (on a shared
  machine a contended measurement would flatter MFU); each row's MFU against
  the peak measured next to it is in the JSON (``mfu_nearby``);
* host: the median wall time per step until the step is launched and its
  results and the next step's arguments are in hand as device arrays (not
  waiting for the devices): the stepping loop's own host work;
* cpu: the process's CPU time per step (user + system, every thread), which,
  unlike wall time, does not depend on what else the machine runs;
* collectives: count and NCCL-convention bus bytes per device per step, read
  by `mtfc.passes.comm_analysis.hlo_collectives` from each compiled
  executable's optimized HLO (mtfc explicit's StableHLO figures are in the
  JSON too);
* memory: per device, from the compiled executable's memory statistics
  (arguments + outputs - aliased + temporaries).

Then the scaling tables (`benchmarks.scaling`) and, on CPU, the runtime
configuration's before/after (`benchmarks.cpu_runtime`).  Everything goes
to one JSON file (``--json``, default ``benchmarks/results.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small size, few repeats (~1-2 minutes)")
    p.add_argument("--sizes", help="comma-separated sizes (small, medium, large, single-device variants: see model.SIZES)")
    p.add_argument("--layouts", help="comma-separated layouts (single, data, tensor, fsdp, mixed)")
    p.add_argument("--steps", default="forward,train", help="forward, train or both")
    p.add_argument("--repeats", type=int, help="timed steps per subject (median reported)")
    p.add_argument("--warmup", type=int, help="untimed steps per subject first")
    p.add_argument("--backend", default="cpu", choices=("cpu", "gpu", "tpu"))
    p.add_argument("--precision", default=None, choices=("f32", "bf16"),
                   help="compute dtype (default f32 on CPU, bf16 on GPU/TPU)")
    p.add_argument("--no-scaling", action="store_true", help="skip the scaling tables")
    p.add_argument("--no-runtime", action="store_true", help="skip the CPU runtime before/after")
    p.add_argument("--json", default=None, help="write the results here (default benchmarks/results.json)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-n", type=int, help="matmul size for the peak (default 2048 on CPU, 8192 on GPU/TPU)")
    p.add_argument("--no-warm-up", action="store_true", help="skip the untimed warm-up compile")
    return p.parse_args(argv)


def settings(args) -> dict:
    """What to run: the default run or `--quick`, with command-line overrides."""
    from benchmarks import model as bm

    quick = args.quick
    s = {
        "sizes": (["small"] if quick else ["small", "large"]) if args.backend == "cpu" else ["large", "xl"],
        "layouts": (["data", "tensor", "fsdp", "mixed"] if quick else ["single", "data", "tensor", "fsdp", "mixed"])
        if args.backend == "cpu" or _device_count(args.backend) >= 8 else ["single"],
        "steps": [x.strip() for x in args.steps.split(",") if x.strip()],
        "repeats": 3 if quick else 5,
        "slow_step": 0.5,  # seconds: a configuration whose first timed step is slower ...
        "slow_repeats": 3,  # ... gets this many timed steps
        "warmup": 1,
        "peak_n": args.peak_n or ((1024 if quick else 2048) if args.backend == "cpu" else 8192),
        "precision": args.precision or ("f32" if args.backend == "cpu" else "bf16"),
    }
    if args.sizes:
        s["sizes"] = [x.strip() for x in args.sizes.split(",") if x.strip()]
    if args.layouts:
        s["layouts"] = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if args.repeats:
        s["repeats"] = args.repeats
    if args.warmup is not None:
        s["warmup"] = args.warmup
    for name in s["sizes"]:
        if name not in bm.SIZES:
            raise SystemExit(f"error: unknown size {name!r} (choose from {', '.join(bm.SIZES)})")
    for name in s["layouts"]:
        if name not in bm.LAYOUTS:
            raise SystemExit(f"error: unknown layout {name!r} (choose from {', '.join(bm.LAYOUTS)})")
    for name in s["steps"]:
        if name not in ("forward", "train"):
            raise SystemExit(f"error: unknown step {name!r} (forward, train)")
    return s


def _device_count(backend: str) -> int:
    import jax

    try:
        return len(jax.devices(backend))
    except RuntimeError:
        raise SystemExit(f"error: backend {backend!r} is not available here") from None


# ------------------------------------------------------------------ the gate

TOLERANCE = {"f32": 1e-5, "bf16": 2e-2}


def gate(subjects, reference, precision: str) -> dict:
    """Each subject's outputs against `reference`'s after one step from the
    same data: the largest normwise relative error over the outputs.

    Forward: the loss and the logits.  Train step: the loss, the gradient
    norm, the learning rate, the step counter and both AdamW slots of every
    parameter -- ``m`` is (1 - b1) times the clipped gradient, so every
    gradient is checked.  The updated parameters are compared and reported
    (``updated_params_max_error``) but not gated: Adam's first update is
    g / (|g| + eps), which turns rounding-level differences in near-zero
    gradients into differences of the order of the learning rate."""
    from mtfc.runtime.check import relative_error

    want = reference.outputs()
    out = {}
    for s in subjects:
        if s is reference:
            continue
        got = s.outputs()
        errors = {k: relative_error(got[k], want[k]) for k in want if k in got}
        missing = sorted(set(want) - set(got))
        gated = {k: e for k, e in errors.items() if not k.startswith("params/")}
        params = {k: e for k, e in errors.items() if k.startswith("params/")}
        worst = max(gated, key=gated.get)
        tol = TOLERANCE[precision]
        out[s.name] = {"max_error": gated[worst], "worst_output": worst, "tolerance": tol,
                       "loss": float(got["loss"]), "reference_loss": float(want["loss"]),
                       "outputs_compared": len(gated), "missing": missing,
                       "ok": bool(gated[worst] <= tol and not missing)}
        if params:
            worst_param = max(params, key=params.get)
            out[s.name]["updated_params_max_error"] = params[worst_param]
            out[s.name]["updated_params_worst"] = worst_param
    return out


# ------------------------------------------------------------------ one configuration


def run_config(size, layout, step: str, cfg: dict, peak: float, backend: str, seed: int, log) -> list[dict]:
    """Build, gate and time the three subjects of one (size, layout, step)."""
    import numpy as np

    from benchmarks.runners import JaxSubject, MtfcSubject, timed_step

    train = step == "train"
    precision = cfg["precision"]
    subjects = []
    for make in (lambda: MtfcSubject(size, layout, "explicit", train=train, precision=precision, backend=backend),
                 lambda: MtfcSubject(size, layout, "gspmd", train=train, precision=precision, backend=backend),
                 lambda: JaxSubject(size, layout, train=train, precision=precision, backend=backend)):
        subjects.append(make())
    jax_subject = subjects[-1]
    host = subjects[0].synthesize(seed)
    for s in subjects:
        s.load(host)
        s.step()
    checks = gate(subjects, jax_subject, precision if train else "f32")
    samples = {s.name: [] for s in subjects}
    for _ in range(cfg["warmup"]):
        for s in subjects:
            s.step()
    repeats = cfg["repeats"]
    for r in range(repeats):
        for s in subjects:  # round-robin: a change of load hits every subject
            samples[s.name].append(timed_step(s))
        if r == 0 and cfg.get("slow_step") and max(x[0]["wall"] for x in samples.values()) > cfg["slow_step"]:
            repeats = min(repeats, cfg.get("slow_repeats", repeats))
        if r + 1 >= repeats:
            break
    flops = size.matmul_flops(train)
    rows = []
    for s in subjects:
        times = [x["wall"] for x in samples[s.name]]
        median = float(np.median(times))
        cpu = float(np.median([x["user"] + x["sys"] for x in samples[s.name]]))
        coll = s.collectives["compiled HLO"]
        rows.append({
            "size": size.name, "layout": layout.name, "step": step, "subject": s.name,
            "mesh": layout.mesh, "rules": layout.layout, "param_rules": layout.param_layout,
            "lower_seconds": s.lower_seconds, "xla_seconds": s.xla_seconds,
            "step_seconds": median, "step_times": times, "step_min_seconds": min(times),
            "host_seconds": float(np.median([x["host"] for x in samples[s.name]])),
            "cpu_seconds": cpu, "sys_seconds": float(np.median([x["sys"] for x in samples[s.name]])),
            "page_faults": float(np.median([x["faults"] for x in samples[s.name]])),
            "flops": flops, "flops_per_second": flops / median, "mfu": flops / median / peak,
            "flops_per_cpu_second": flops / cpu if cpu > 0 else None,
            "collectives": coll, "collectives_all": s.collectives,
            "memory": s.memory, "gate": checks.get(s.name, {"reference": True}),
        })
    jax_row = rows[-1]
    for r in rows:
        r["ratio_to_jax"] = {
            "step_time": r["step_seconds"] / jax_row["step_seconds"],
            "lower_time": r["lower_seconds"] / jax_row["lower_seconds"],
            "xla_time": r["xla_seconds"] / jax_row["xla_seconds"],
            "bus_bytes": _ratio(r["collectives"]["bus_bytes"], jax_row["collectives"]["bus_bytes"]),
            "peak_memory": _ratio(r["memory"].get("peak_bytes"), jax_row["memory"].get("peak_bytes")),
        }
    for s in subjects:
        log(f"  {size.name:>6} {layout.name:<6} {step:<7} {s.name:<13} "
            f"lower {s.lower_seconds:5.2f}s  XLA {s.xla_seconds:5.2f}s  "
            f"step {np.median([x['wall'] for x in samples[s.name]]) * 1e3:8.2f} ms  "
            f"host {np.median([x['host'] for x in samples[s.name]]) * 1e3:6.2f} ms")
    del subjects
    return rows


def _ratio(a, b):
    if a is None or b is None:
        return None
    if b == 0:
        return 1.0 if a == 0 else math.inf
    return a / b


# ------------------------------------------------------------------ tables


def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return f"{n:.0f}"


def _fmt_ratio(x) -> str:
    if x is None:
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.2f}"


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    widths = [max(len(str(r[i])) for r in [headers] + rows) for i in range(len(headers))]
    align = align or "l" * len(headers)

    def line(cells):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def main_table(rows: list[dict]) -> str:
    headers = ["size", "layout", "step", "subject", "lower s", "XLA s", "step ms", "xJAX", "host ms", "cpu ms", "MFU %",
               "coll", "bus B", "xJAX", "mem B", "xJAX", "gate"]
    out = []
    for r in rows:
        g = r["gate"]
        gate_text = "ref" if g.get("reference") else (f"{g['max_error']:.0e}" + ("" if g["ok"] else " FAIL"))
        out.append([
            r["size"], r["layout"], r["step"], r["subject"],
            f"{r['lower_seconds']:.2f}", f"{r['xla_seconds']:.2f}",
            f"{r['step_seconds'] * 1e3:.1f}", _fmt_ratio(r["ratio_to_jax"]["step_time"]),
            f"{r['host_seconds'] * 1e3:.2f}" if r.get("host_seconds") is not None else "-",
            f"{r['cpu_seconds'] * 1e3:.0f}", f"{r['mfu'] * 100:.1f}",
            str(r["collectives"]["count"]), _fmt_bytes(r["collectives"]["bus_bytes"]),
            _fmt_ratio(r["ratio_to_jax"]["bus_bytes"]),
            _fmt_bytes(r["memory"].get("peak_bytes")), _fmt_ratio(r["ratio_to_jax"]["peak_memory"]),
            gate_text,
        ])
    return table(headers, out, "llll" + "r" * 13)


def summary_lines(rows: list[dict]) -> list[str]:
    """Where mtfc explicit is behind JAX (bytes, time, memory), stated plainly."""
    lines = []
    explicit = [r for r in rows if r["subject"] == "mtfc explicit"]
    more_bytes = [r for r in explicit if (r["ratio_to_jax"]["bus_bytes"] or 0) > 1.0]
    slower = [r for r in explicit if r["ratio_to_jax"]["step_time"] > 1.0]
    more_mem = [r for r in explicit if (r["ratio_to_jax"]["peak_memory"] or 0) > 1.0]
    failed = [r for r in rows if not r["gate"].get("reference") and not r["gate"]["ok"]]
    lines.append(f"mtfc explicit: bus bytes <= JAX's in {len(explicit) - len(more_bytes)}/{len(explicit)} configurations"
                 + ("" if not more_bytes else "; MORE in " + ", ".join(
                     f"{r['size']}/{r['layout']}/{r['step']} (x{r['ratio_to_jax']['bus_bytes']:.2f})" for r in more_bytes)))
    if explicit:
        ratios = sorted(r["ratio_to_jax"]["step_time"] for r in explicit)
        much_slower = [r for r in explicit if r["ratio_to_jax"]["step_time"] > 1.1]
        lines.append(f"mtfc explicit step time / JAX: median {ratios[len(ratios) // 2]:.2f}, "
                     f"range {ratios[0]:.2f}-{ratios[-1]:.2f}; slower than JAX in {len(slower)}/{len(explicit)}, "
                     f"by more than 10% in {len(much_slower)}"
                     + (": " + ", ".join(f"{r['size']}/{r['layout']}/{r['step']} (x{r['ratio_to_jax']['step_time']:.2f})"
                                         for r in much_slower) if much_slower else ""))
        much_more = [r for r in more_mem if r["ratio_to_jax"]["peak_memory"] > 1.05]
        lines.append(f"mtfc explicit peak memory / JAX: more in {len(more_mem)}/{len(explicit)}, "
                     f"by more than 5% in {len(much_more)}"
                     + (": " + ", ".join(f"{r['size']}/{r['layout']}/{r['step']} (x{r['ratio_to_jax']['peak_memory']:.2f})"
                                         for r in much_more) if much_more else ""))
    lines.append("gate: " + ("all subjects match JAX" if not failed else "MISMATCH in " + ", ".join(
        f"{r['size']}/{r['layout']}/{r['step']}/{r['subject']} ({r['gate']['max_error']:.1e})" for r in failed)))
    return lines


# ------------------------------------------------------------------ main


def machine_info(backend: str) -> dict:
    import jax
    import jaxlib

    info = {
        "platform": platform.platform(), "python": platform.python_version(),
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "cpu_count": os.cpu_count(),
        "backend": backend, "device": str(jax.devices(backend)[0].device_kind),
        "devices": len(jax.devices(backend)), "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def main(argv=None) -> int:
    args = parse_args(argv)
    from mtfc.runtime import devices as rt_devices

    if args.backend == "cpu":
        rt_devices.ensure_cpu_devices(8)
    cfg = settings(args)
    from benchmarks import model as bm
    from benchmarks.peak import measure_peak

    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    result = {"schema": 1, "command": "python -m benchmarks.compare " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": machine_info(args.backend), "settings": cfg}
    result["runtime_config"] = rt_devices.runtime_config() if hasattr(rt_devices, "runtime_config") else {}
    log("measuring the peak (one-device matmul)")
    peak = measure_peak(backend=args.backend, n=cfg["peak_n"], dtype=cfg["precision"])
    result["peak"] = peak
    log(f"peak {peak['peak_flops'] / 1e9:.1f} GFLOP/s ({peak['peak_source']})")
    if not args.no_warm_up:
        _warm_up(args.backend, log)

    rows = []
    peaks = [peak["peak_flops"]]
    for size_name in cfg["sizes"]:
        for layout_name in cfg["layouts"]:
            # the peak again, next to the configuration: the machine may be shared
            local = measure_peak(backend=args.backend, n=cfg["peak_n"], dtype=cfg["precision"], repeats=3)["peak_flops"]
            peaks.append(local)
            for step in cfg["steps"]:
                group = run_config(bm.SIZES[size_name], bm.LAYOUTS[layout_name], step, cfg,
                                   local, args.backend, args.seed, log)
                for r in group:
                    r["peak_nearby"] = local
                rows.extend(group)
    # MFU against the best the machine showed in this run (its own peak); the
    # peak measured next to each configuration is in the JSON (`peak_nearby`)
    peak["peak_flops"] = max(peaks)
    peak["samples"] = peaks
    for r in rows:
        r["mfu"] = r["flops_per_second"] / peak["peak_flops"]
        r["mfu_nearby"] = r["flops_per_second"] / r["peak_nearby"]
    result["rows"] = rows
    try:
        result["machine"]["loadavg_end_main"] = os.getloadavg()
    except OSError:
        pass

    if not args.no_scaling:
        from benchmarks import scaling

        result["scaling"] = scaling.run(quick=args.quick, backend=args.backend, precision=cfg["precision"], log=log)
    if not args.no_runtime and args.backend == "cpu":
        from benchmarks import cpu_runtime

        result["runtime"] = cpu_runtime.run(quick=args.quick, log=log)
    result["seconds"] = time.perf_counter() - started
    try:
        result["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass

    print(report(result))
    path = args.json or os.path.join(os.path.dirname(__file__), "results.json")
    with open(path + ".tmp", "w") as f:
        json.dump(result, f, indent=1, default=_json_default)
    os.replace(path + ".tmp", path)
    print(f"\nwrote {path}")
    failed = [r for r in rows if not r["gate"].get("reference") and not r["gate"]["ok"]]
    return 1 if failed else 0


def report(result: dict) -> str:
    m, peak = result["machine"], result["peak"]
    parts = [
        f"mtfc vs JAX on {m['devices']} {m['backend']} device(s) ({m['device']}), {m['cpu_count']} cores, "
        f"jax {m['jax']}; load average at start {_load(m.get('loadavg_start'))}",
        f"peak: {peak['peak_flops'] / 1e9:.1f} GFLOP/s, the best {peak['dtype']} {peak['n']}^3 matmul on one device "
        f"in this run (at the start: "
        + ", ".join(f"{k[:-6]} {v / 1e9:.1f}" for k, v in peak.items() if k.endswith("_flops") and k != "peak_flops")
        + (f"; next to each configuration: {min(peak['samples']) / 1e9:.1f}-{max(peak['samples']) / 1e9:.1f}"
           if peak.get("samples") else "") + ")",
        "runtime: " + (", ".join(f"{k}={v}" for k, v in result.get("runtime_config", {}).items()) or "(defaults)"),
        "",
        "lower = trace + compile to StableHLO; XLA = PJRT compile; step = median wall time; host = median wall time until",
        "the step is launched and its results and next arguments are in hand (not waiting); cpu = median CPU time of the",
        "process (all threads) per step; MFU = matmul FLOPs / step / peak;",
        "coll, bus B = collectives and NCCL bus bytes per device per step, read from each compiled executable's HLO;",
        "mem B = per-device arguments + outputs - aliased + temporaries (XLA memory stats); xJAX = mtfc / JAX;",
        "gate = largest normwise relative error of every output after one step vs JAX (tolerance 1e-5 f32).",
        "",
        main_table(result["rows"]),
        "",
        *summary_lines(result["rows"]),
    ]
    if "scaling" in result:
        from benchmarks import scaling

        parts += ["", scaling.report(result["scaling"])]
    if "runtime" in result:
        from benchmarks import cpu_runtime

        parts += ["", cpu_runtime.report(result["runtime"])]
    parts += ["", f"total {result['seconds']:.0f} s; load average at end {_load(m.get('loadavg_end'))}"]
    return "\n".join(parts)


def _load(x) -> str:
    return "-" if not x else "/".join(f"{v:.1f}" for v in x)


def _warm_up(backend: str, log) -> None:
    """One untimed compile of each kind, so that the first timed row does not
    pay for imports and one-time initialisation."""
    from benchmarks import model as bm
    from benchmarks.runners import JaxSubject, MtfcSubject

    log("warm-up compile")
    tiny = bm.SIZES["tiny"]
    lay = bm.LAYOUTS["mixed"] if backend == "cpu" else bm.LAYOUTS["single"]
    MtfcSubject(tiny, lay, "explicit", train=True, backend=backend)
    MtfcSubject(tiny, lay, "gspmd", train=False, backend=backend)
    JaxSubject(tiny, lay, train=True, backend=backend)


def _json_default(x):
    try:
        import numpy as np

        if isinstance(x, np.generic):
            return x.item()
    except ImportError:
        pass
    if isinstance(x, tuple):
        return list(x)
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
