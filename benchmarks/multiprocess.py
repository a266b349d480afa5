"""One job as 2 processes x 4 devices against 1 process x 8 devices, in one run.

    python -m benchmarks.multiprocess                 # small transformer, data/tensor/fsdp, forward + train
    python -m benchmarks.multiprocess --quick         # tiny size, one round (~1 minute)
    python -m benchmarks.multiprocess --single-only   # only the 1 x 8 half (no multi-process run)

For the benchmark transformer (`benchmarks.model`, default size ``small``)
under each layout on the 8-device mesh ``rows:2,cols:4`` (``data``,
``tensor``, ``fsdp``: `benchmarks.model.LAYOUTS`), for the forward pass and
the AdamW train step, the same compiled module file runs

* as ``1x8``: ``mtfc run M.mlir`` (one process, 8 virtual CPU devices), and
* as ``2x4``: two ``mtfc run M.mlir --coordinator 127.0.0.1:PORT
  --num-processes 2 --process-id I --local-devices 4`` on loopback
  (jax.distributed, gloo collectives; the mesh laid over the global devices
  process-major), or with ``--via launch`` one ``mtfc launch -n 2
  --local-devices 4 -- run M.mlir ...``.

Each configuration runs ``--rounds`` times, 1x8 and 2x4 alternating, so a
change of machine load hits both.  Step time: a forward run's median of
``--repeat`` executions (``mtfc run``'s ``step ... ms (median of R)``); a
training run's per-step seconds from ``--log``, its first step left out (the
first execution's one-time work); the figure per configuration is the median
over rounds (forward) or over every step of every round (train).

The 2x4 results are checked against the 1x8 ones before any time is shown:
the forward outputs (``--outputs``, written by process 0 from the gathered
outputs) and every step's loss (``--log``) must agree within the f32
tolerance (1e-5 normwise relative; the processes' all-reduces go through
gloo, whose summation order may differ).  A mismatch is reported and the
script exits 1.

Bytes that cross processes come from ``mtfc inspect --processes 2``'s
analysis (`mtfc.passes.process_analysis`, on the module's collectives:
StableHLO for ``explicit``/``shardy``, XLA's compiled HLO for ``gspmd``):
per step, summed over every device's sends to the other process, and the
busiest device's share.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
LAYOUT_NAMES = ("data", "tensor", "fsdp")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.multiprocess", description=__doc__.split("\n")[0])
    p.add_argument("--size", default=None, help="model size (benchmarks.model.SIZES; default small, tiny with --quick)")
    p.add_argument("--layouts", default=",".join(LAYOUT_NAMES),
                   help="comma-separated layouts (data, tensor, fsdp, mixed)")
    p.add_argument("--steps", default="forward,train", help="forward, train or both")
    p.add_argument("--mode", default="explicit", choices=("explicit", "gspmd", "shardy"))
    p.add_argument("--rounds", type=int, default=None,
                   help="runs of each configuration per half (default 3; 1 with --quick)")
    p.add_argument("--repeat", type=int, default=20, help="forward: timed executions per run (median)")
    p.add_argument("--train-steps", type=int, default=12, help="train: steps per run (the first is not timed)")
    p.add_argument("--quick", action="store_true", help="tiny size, one round")
    p.add_argument("--single-only", action="store_true", help="run only the 1x8 half")
    p.add_argument("--via", default="flags", choices=("flags", "launch"),
                   help="start the 2x4 half as two `mtfc run --coordinator ...` (flags) or one `mtfc launch -n 2`")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take before it is killed")
    p.add_argument("--mtfc-command", default=None,
                   help="the command that runs mtfc (default: this Python's `-m mtfc.cli` from this checkout)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.size = args.size or ("tiny" if args.quick else "small")
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    args.steps = [x.strip() for x in args.steps.split(",") if x.strip()]
    from benchmarks import model as bm

    if args.size not in bm.SIZES:
        p.error(f"unknown size {args.size!r} (choose from {', '.join(bm.SIZES)})")
    for name in args.layouts:
        if name not in bm.LAYOUTS or bm.LAYOUTS[name].mesh != bm.MESH:
            p.error(f"unknown layout {name!r} (choose from data, tensor, fsdp, mixed)")
    for name in args.steps:
        if name not in ("forward", "train"):
            p.error(f"unknown step {name!r} (forward, train)")
    for flag, value in (("--rounds", args.rounds), ("--repeat", args.repeat), ("--train-steps", args.train_steps - 1)):
        if value < 1:
            p.error(f"{flag} is too small")
    return args


# ------------------------------------------------------------------ running mtfc


def mtfc_command(args) -> list[str]:
    return shlex.split(args.mtfc_command) if args.mtfc_command else [sys.executable, "-m", "mtfc.cli"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RunFailed(RuntimeError):
    pass


def run_job(command: list[str], run_args: list[str], processes: int, timeout: float, cwd: str,
            via: str = "flags") -> str:
    """Run ``mtfc run ...`` as one process, or as `processes` processes of
    ``8 / processes`` devices on a free loopback port -- started here with
    ``--coordinator``/``--process-id`` flags (`via` ``"flags"``) or by ``mtfc
    launch -n`` (``"launch"``); process 0's output (launch: all of it,
    process 0's lines unprefixed).
    Every process is bounded by `timeout` and killed (by its pid) past it or
    when another fails.  They run in `cwd` (not this checkout, so that a
    ``--mtfc-command`` with its own PYTHONPATH gets its own mtfc)."""
    if processes == 1:
        jobs = [command + ["run"] + run_args]
    elif via == "launch":
        jobs = [command + ["launch", "-n", str(processes), "--local-devices", str(8 // processes), "--", "run"]
                + run_args]
    else:
        port = free_port()
        jobs = [command + ["run"] + run_args + ["--coordinator", f"127.0.0.1:{port}", "--num-processes",
                                               str(processes), "--process-id", str(i),
                                               "--local-devices", str(8 // processes)]
                for i in range(processes)]
    logs = [tempfile.TemporaryFile(mode="w+") for _ in jobs]
    procs = [subprocess.Popen(j, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=cwd)
             for j, log in zip(jobs, logs)]
    deadline = time.monotonic() + timeout
    failed = None
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                failed = f"timed out after {timeout:.0f} s"
                break
            bad = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if bad:
                failed = f"process {bad[0]} exited with status {procs[bad[0]].returncode}"
                break
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    if failed is None:
        bad = [i for i, p in enumerate(procs) if p.returncode != 0]
        if bad:
            failed = f"process {bad[0]} exited with status {procs[bad[0]].returncode}"
    if failed:
        detail = "\n".join(f"--- process {i}:\n{out[-2000:]}" for i, out in enumerate(outputs))
        raise RunFailed(f"{shlex.join(jobs[0])}: {failed}\n{detail}")
    return outputs[0]


def forward_step_seconds(stdout: str) -> float:
    """``compile 123.4 ms, step 5.678 ms (median of 20)`` -> 0.005678."""
    import re

    m = re.search(r"step ([0-9.]+) ms \(median of \d+\)", stdout)
    if not m:
        raise RunFailed(f"no step time in the output of mtfc run:\n{stdout[-2000:]}")
    return float(m.group(1)) / 1e3


def read_log(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


# ------------------------------------------------------------------ one configuration


def crossing(module, processes: int) -> dict:
    """``mtfc inspect --processes`` on `module`: the `process_analysis` section."""
    from mtfc.tools.report import inspect_module

    return inspect_module(module, processes=processes)["processes"]


def relative_error(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.linalg.norm(b)), 1e-30)
    return float(np.linalg.norm(a - b)) / scale


def run_config(args, size, layout, step: str, workdir: str, log) -> dict:
    import numpy as np

    from benchmarks import model as bm
    from mtfc.emit.artifact import write_module

    train = step == "train"
    module = bm.compile_mtfc(size, layout, args.mode, train=train)
    path = os.path.join(workdir, f"{size.name}-{layout.name}-{step}.mlir")
    write_module(module, path)
    placed = crossing(module, 2)
    command = mtfc_command(args)
    halves = [1] if args.single_only else [1, 2]
    samples: dict[int, list[float]] = {n: [] for n in halves}
    results: dict[int, object] = {}
    for r in range(args.rounds):
        for n in halves:
            tag = f"{n}x{8 // n}-r{r}"
            if train:
                log_file = os.path.join(workdir, f"{layout.name}-{step}-{tag}.jsonl")
                run_job(command, [path, "--steps", str(args.train_steps), "--seed", str(args.seed), "--log", log_file],
                        n, args.timeout, workdir, args.via)
                records = read_log(log_file)
                if len(records) != args.train_steps:
                    raise RunFailed(f"{log_file}: {len(records)} steps logged, {args.train_steps} run")
                samples[n].extend(rec["seconds"] for rec in records[1:])
                results.setdefault(n, [rec["loss"] for rec in records])
            else:
                out_file = os.path.join(workdir, f"{layout.name}-{step}-{tag}.npz")
                stdout = run_job(command, [path, "--repeat", str(args.repeat), "--seed", str(args.seed),
                                           "--outputs", out_file], n, args.timeout, workdir, args.via)
                samples[n].append(forward_step_seconds(stdout))
                if n not in results:
                    with np.load(out_file) as data:
                        results[n] = {k: data[k] for k in data.files}
        log(f"  {size.name} {layout.name:<6} {step:<7} round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n}x{8 // n} {np.median(samples[n]) * 1e3:.2f} ms" for n in halves))
    row = {
        "size": size.name, "layout": layout.name, "step": step, "mode": args.mode, "mesh": layout.mesh,
        "rules": layout.layout, "param_rules": layout.param_layout,
        "crossing": {"collectives": placed["total"]["count"], "crossing": placed["total"]["crossing"],
                     "unknown": placed["total"]["unknown"], "bytes_per_step": placed["total"]["bytes_total"],
                     "bytes_per_device": placed["total"]["bytes_per_device"], "by_axes": placed["by_axes"],
                     "axes": placed["axes"]},
        "samples": {f"{n}x{8 // n}": samples[n] for n in halves},
        "step_seconds": {f"{n}x{8 // n}": float(np.median(samples[n])) for n in halves},
    }
    if 2 in results:
        row["ratio"] = row["step_seconds"]["2x4"] / row["step_seconds"]["1x8"]
        if train:
            error = relative_error(results[2], results[1])
            compared = f"{len(results[1])} losses"
        else:
            missing = sorted(set(results[1]) ^ set(results[2]))
            error = max(relative_error(results[2][k], results[1][k]) for k in results[1] if k in results[2])
            error = float("inf") if missing else error
            compared = f"{len(results[1])} outputs"
        row["check"] = {"max_error": error, "tolerance": TOLERANCE, "compared": compared,
                        "ok": bool(error <= TOLERANCE)}
    return row


# ------------------------------------------------------------------ report


def _bytes(n) -> str:
    n = float(n)
    if n >= 1e6:
        return f"{n / 1e6:.2f} MB"
    if n >= 1e3:
        return f"{n / 1e3:.1f} kB"
    return f"{n:.0f} B"


def report(result: dict) -> str:
    from benchmarks.compare import table

    m = result["machine"]
    lines = [
        f"{result['size']} transformer, mesh rows:2,cols:4, mode {result['mode']}: 2 processes x 4 CPU devices "
        f"(gloo over loopback) vs 1 process x 8, on {m['cpu_count']} cores ({m['processor']}), jax {m['jax']}; "
        f"load average {_load(m.get('loadavg_start'))} at start, {_load(m.get('loadavg_end'))} at end",
        f"step = median wall time ({result['rounds']} round(s) each, halves alternating; forward: median of "
        f"{result['repeat']} executions per run; train: {result['train_steps'] - 1} steps per run after the first);",
        "crossing = collectives whose groups span both processes / all; bytes = sent from one process to the other "
        "per step (all devices; busiest device in brackets), ring accounting of `mtfc inspect --processes 2`;",
        "check = largest normwise relative error of 2x4 vs 1x8 (forward outputs; every step's loss).",
        "",
    ]
    headers = ["layout", "step", "crossing", "bytes/step", "(per device)", "1x8 ms"]
    two = any("2x4" in r["step_seconds"] for r in result["rows"])
    if two:
        headers += ["2x4 ms", "2x4/1x8", "check"]
    rows = []
    for r in result["rows"]:
        c = r["crossing"]
        cells = [r["layout"], r["step"], f"{c['crossing']}/{c['collectives']}", _bytes(c["bytes_per_step"]),
                 f"({_bytes(c['bytes_per_device'])})", f"{r['step_seconds']['1x8'] * 1e3:.2f}"]
        if two:
            ch = r.get("check")
            cells += [f"{r['step_seconds']['2x4'] * 1e3:.2f}", f"{r['ratio']:.2f}",
                      f"{ch['max_error']:.0e}" + ("" if ch["ok"] else " FAIL")]
        rows.append(cells)
    lines.append(table(headers, rows, "ll" + "r" * (len(headers) - 2)))
    if not two:
        lines += ["", "(1x8 only: --single-only)"]
    lines += ["", f"total {result['seconds']:.0f} s"]
    return "\n".join(lines)


def _load(x) -> str:
    return "-" if not x else "/".join(f"{v:.1f}" for v in x)


def machine_info() -> dict:
    import jax

    info = {"platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
            "cpu_count": os.cpu_count(), "processor": _processor()}
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def main(argv=None) -> int:
    args = parse_args(argv)
    from mtfc.runtime import devices as rt_devices

    rt_devices.ensure_cpu_devices(8)  # for a gspmd module's XLA compile (the crossing analysis)
    from benchmarks import model as bm

    started = time.perf_counter()

    def log(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {text}", file=sys.stderr, flush=True)

    given = argv if argv is not None else sys.argv[1:]
    result = {"schema": 1, "command": "python -m benchmarks.multiprocess " + " ".join(given),
              "machine": machine_info(), "size": args.size, "mode": args.mode, "rounds": args.rounds,
              "repeat": args.repeat, "train_steps": args.train_steps, "rows": []}
    with tempfile.TemporaryDirectory(prefix="mtfc-multiprocess-") as workdir:
        try:
            for layout_name in args.layouts:
                for step in args.steps:
                    result["rows"].append(run_config(args, bm.SIZES[args.size], bm.LAYOUTS[layout_name], step,
                                                     workdir, log))
        except RunFailed as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
    result["seconds"] = time.perf_counter() - started
    try:
        result["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    print(report(result))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
        print(f"\nwrote {args.json}")
    failed = [r for r in result["rows"] if r.get("check") and not r["check"]["ok"]]
    for r in failed:
        print(f"error: {r['layout']}/{r['step']}: 2x4 differs from 1x8 by {r['check']['max_error']:.1e} "
              f"(tolerance {TOLERANCE:g})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
