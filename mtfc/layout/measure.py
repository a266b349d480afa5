"""`mtfc layout --measure K`: run candidate layouts on the actual devices and
set the cost model's prediction against the measured step time.

`measure_candidates(module, candidates, k=K, lower_ranked=L, ...)` takes the
GLOBAL module (as the frontend writes it, ``mtfc.partitioning`` ``none``) and
the search's ranked `Candidate` list (best first), and measures the top `k`
and `lower_ranked` more spread evenly over the rest of the ranking, the last
one included (`select`), so that the rank correlation covers the whole range
and not only the near-ties at the top.  For each selected candidate it

1. copies the module, sets the candidate's mesh and rules exactly as the
   search scored them (`mtfc.layout.cost.layouts_of`: parameter rules
   ``""`` mean the parameters follow the activation rules, as a module
   without ``mtfc.param_layout`` has them; they are written explicitly) and
   runs the explicit pipeline (``verify-names, partition, fuse-collectives``);
2. compiles it with the bundled runner (`mtfc.runtime.execute.Program`, what
   ``mtfc run`` uses) on `backend`'s devices (``cpu``: the mesh's size of
   virtual CPU devices);
3. feeds every candidate the same synthesized arguments (from `seed`: a
   train step's parameters and optimizer state from their initializers, its
   batch too) and runs one warm-up step, whose outputs are **checked against
   the unsharded program** on one device (`mtfc.runtime.check.compare`, the
   dtype's tolerance: f32 1e-5; a bf16 train step's f32 results at bf16's),
   so a fast wrong layout cannot win: a mismatch is recorded (``ok`` False),
   reported, and kept out of the correlation and of calibration;
4. then times `steps` steps, **interleaved**: round r runs one step of every
   candidate (of a group of `GROUP`, taken in a seeded random order) before
   round r+1 starts, so a burst of load on a shared machine lands on all of
   them and favours no part of the ranking; each step is `Program.run`'s timing (execute and
   wait for every output shard; feeding and gathering are outside it).  The
   measured time is the median of the `steps` steps.

A candidate that does not compile or run (an `MtfcError`: memory, XLA) is
recorded with its one-line error and no time; nothing else is caught.

`report(measurements)` is the table: rank, rules, predicted (compute +
communication), measured, measured rank, check, and Spearman's rank
correlation of predicted against measured over the correct ones
(`rank_correlation`, ``scipy.stats.spearmanr``; scipy is a dependency of
jax and jaxlib and listed in pyproject).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import LayoutRules, Mesh

EXPLICIT = ["verify-names", "partition", "fuse-collectives"]
GROUP = 16  # candidates compiled, held and timed together


@dataclass
class Measurement:
    """One candidate run on the devices: what was predicted and what was measured."""

    rank: int                       # position in the search's ranking (0 = best predicted)
    rules: str
    param_rules: str
    predicted_s: float              # the candidate's total_s (compute_s + comm_s)
    compute_s: float
    comm_s: float
    fits: bool
    peak_bytes: int
    features: object                # the candidate's CostFeatures (calibration reads it)
    measured_s: float | None = None  # median step seconds; None when it did not run
    times: list[float] = field(default_factory=list)
    error: float | None = None      # max relative error against the unsharded run, over outputs
    tolerance: float | None = None
    ok: bool = False                # ran and matched the unsharded run
    failure: str | None = None      # the one-line error when it did not compile or run
    compile_s: float | None = None
    xla_peak_bytes: int | None = None  # XLA's per-device peak of the compiled program

    def as_dict(self) -> dict:
        f = self.features
        return {"rank": self.rank, "rules": self.rules, "param_rules": self.param_rules,
                "predicted_s": self.predicted_s, "compute_s": self.compute_s, "comm_s": self.comm_s,
                "fits": self.fits, "peak_bytes": self.peak_bytes, "measured_s": self.measured_s,
                "times": self.times, "error": self.error, "tolerance": self.tolerance, "ok": self.ok,
                "failure": self.failure, "compile_s": self.compile_s, "xla_peak_bytes": self.xla_peak_bytes,
                "features": {"flops": f.flops, "axis_count": dict(f.axis_count), "axis_bytes": dict(f.axis_bytes)}}


def select(n: int, k: int, lower_ranked: int) -> list[int]:
    """The ranks measured among `n` candidates: the top `k`, and `lower_ranked`
    more spread evenly over ranks k..n-1 (the last included), each once."""
    if k < 1:
        raise MtfcError(f"--measure must be >= 1, not {k}")
    if lower_ranked < 0:
        raise MtfcError(f"the number of lower-ranked candidates to measure must be >= 0, not {lower_ranked}")
    top = list(range(min(k, n)))
    rest = n - len(top)
    if rest <= 0 or lower_ranked == 0:
        return top
    if lower_ranked >= rest:
        return top + list(range(len(top), n))
    picks = np.linspace(n - 1, len(top), lower_ranked)  # from the last one up: one pick is the last
    chosen = sorted({int(round(p)) for p in picks})
    return top + chosen


def candidate_module(module: ir.Module, mesh: Mesh, rules: str, param_rules: str) -> ir.Module:
    """A copy of the global `module` with `mesh` and the candidate's rules, through the explicit pipeline."""
    from mtfc.passes.manager import run_passes

    if mir.partitioning(module) != "none":
        raise MtfcError(f"layout measure: the module is already partitioned ({mir.partitioning(module)}); "
                        f"measure from the global module")
    acts = LayoutRules.parse(rules)
    params = LayoutRules.parse(param_rules) if param_rules else acts  # "" = parameters follow `rules` (cost.layouts_of)
    acts.validate(mesh)
    params.validate(mesh)
    copy = ir.Module.parse(module.operation.get_asm(enable_debug_info=True), module.context)
    mir.set_mesh_and_layout(copy, mesh, acts, params)
    with copy.context:
        # the search names only the module's dims, but a parameter rule may name an activation-only dim
        copy.operation.attributes[mir.ALLOW_UNUSED_RULES] = ir.UnitAttr.get()
    return run_passes(copy, EXPLICIT)


def _judged_dtype(module: ir.Module, dtype: str) -> str:
    low = mir.compute_precision(module)
    return low if low != "f32" and dtype == "f32" else dtype


def reference_outputs(reference, inputs: dict) -> dict[str, np.ndarray]:
    """The unsharded program's (`reference`, a `Program`) outputs on one device: the correctness gate's reference."""
    return reference.run(inputs, repeat=1).outputs


def check_outputs(module: ir.Module, results, got: dict, want: dict) -> tuple[float, float, bool]:
    """(worst error by error/tolerance ratio, its tolerance, all ok) of `got`
    against `want`.  A train step is judged as `mtfc run --check` judges it
    (`runtime.check_step.judge_step`: loss, metrics and optimizer state gated;
    parameters an Adam-family optimizer normalizes reported, not gated), so a
    correct layout is never refused for Adam's ill-conditioned first update;
    the worst error is over the gated results."""
    from mtfc.runtime.check_step import judge_step

    optimizer = mir.optimizer_spec(module)
    judged = judge_step(results, got, want, optimizer=optimizer, precision=mir.compute_precision(module))
    if mir.step_kind(module) != "train":  # a forward module: every output gated
        judged.results = [type(j)(j.comparison, j.role, True) for j in judged.results]
    worst, worst_tol, worst_ratio = 0.0, 0.0, -1.0
    for j in judged.results:
        if not j.gated:
            continue
        c = j.comparison
        ratio = c.error / c.tolerance if c.tolerance > 0 else (math.inf if c.error else 0.0)
        if ratio > worst_ratio:
            worst, worst_tol, worst_ratio = c.error, c.tolerance, ratio
    return worst, worst_tol, not any(j.failed for j in judged.results)


def _measurement(rank: int, c) -> Measurement:
    return Measurement(rank=rank, rules=c.rules, param_rules=c.param_rules, predicted_s=c.total_s,
                       compute_s=c.compute_s, comm_s=c.comm_s, fits=c.fits, peak_bytes=c.peak_bytes,
                       features=c.features)


def measure_candidates(module: ir.Module, candidates: Sequence, *, k: int, lower_ranked: int | None = None,
                       backend: str = "cpu", steps: int = 5, mesh: Mesh | None = None, seed: int = 0,
                       group: int = GROUP, echo: Callable[[str], None] | None = None) -> list[Measurement]:
    """Measure the selected `candidates` (ranked best first; `select`) on `mesh`
    (default: the module's); see the module docstring.  `lower_ranked`
    defaults to `k`.  Returns one `Measurement` per selected candidate, in
    ranking order.  Candidates are compiled and timed `group` at a time (their
    executables held together), in a seeded random order."""
    from mtfc.runtime import devices as rt_devices
    from mtfc.runtime.execute import Program

    if steps < 1:
        raise MtfcError(f"layout measure: steps must be >= 1, not {steps}")
    mesh = mesh if mesh is not None else mir.module_mesh(module)
    if not mesh.names:
        raise MtfcError("layout measure: the module has no mesh (compile it with --mesh)")
    ranks = select(len(candidates), k, k if lower_ranked is None else lower_ranked)
    say = echo or (lambda line: None)
    if backend == "cpu":
        rt_devices.ensure_cpu_devices(mesh.size)
    reference = Program(module, backend=backend, unsharded=True)
    inputs = reference.synthesize_inputs(seed)
    want = reference_outputs(reference, inputs)
    del reference

    measurements = [_measurement(r, candidates[r]) for r in ranks]
    order = list(range(len(measurements)))
    np.random.default_rng(seed).shuffle(order)  # a group mixes ranks: a burst of load favours no part of the ranking
    for g in range(0, len(order), group):
        _measure_group([measurements[i] for i in order[g:g + group]], module, mesh, inputs, want, backend,
                       steps, say)
    return measurements


def _measure_group(group: list[Measurement], module, mesh, inputs, want, backend, steps, say) -> None:
    """Compile and check each of `group`, then time them in interleaved rounds."""
    from mtfc.runtime.execute import Program

    programs: list = []
    for m in group:
        start = time.perf_counter()
        try:
            program = Program(candidate_module(module, mesh, m.rules, m.param_rules), backend=backend)
            got = program.run(inputs, repeat=1).outputs  # the warm-up step, checked
        except MtfcError as e:
            m.failure = str(e).splitlines()[0]
            programs.append(None)
            say(f"  rank {m.rank + 1}: {_describe(m)}: FAILED: {m.failure}")
            continue
        m.compile_s = time.perf_counter() - start
        m.xla_peak_bytes = _xla_peak(program)
        m.error, m.tolerance, m.ok = check_outputs(module, program.results, got, want)
        programs.append(program)
        say(f"  rank {m.rank + 1}: {_describe(m)}: compiled, check {'ok' if m.ok else 'MISMATCH'} "
            f"(error {m.error:.1e})")
    for _ in range(steps):  # interleaved rounds
        for m, program in zip(group, programs):
            if program is not None:
                m.times.append(program.run(inputs, repeat=1).step_seconds)
    for m in group:
        if m.times:
            m.measured_s = float(np.median(m.times))


def _xla_peak(program) -> int | None:
    """XLA's per-device peak of the compiled executable: arguments + outputs - aliased + temporaries."""
    try:
        s = program.executable.get_compiled_memory_stats()
    except Exception:  # a backend without memory statistics
        return None
    return int(s.argument_size_in_bytes + s.output_size_in_bytes - s.alias_size_in_bytes + s.temp_size_in_bytes)


def _describe(m: Measurement) -> str:
    text = m.rules or "(replicated)"
    return text + (f" | params {m.param_rules}" if m.param_rules else "")


def rank_correlation(measurements: Sequence[Measurement]) -> tuple[float | None, int]:
    """Spearman's rho of predicted against measured step time over the
    measurements that ran and matched the unsharded run, and how many those
    are; rho is None with fewer than 3 or when either side is constant."""
    good = [m for m in measurements if m.ok and m.measured_s is not None]
    if len(good) < 3:
        return None, len(good)
    from scipy.stats import spearmanr

    predicted = [m.predicted_s for m in good]
    measured = [m.measured_s for m in good]
    if len(set(predicted)) < 2 or len(set(measured)) < 2:
        return None, len(good)
    rho = spearmanr(predicted, measured).statistic
    return (None if not math.isfinite(rho) else float(rho)), len(good)


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.3f}"


def report(measurements: Sequence[Measurement], echo: Callable[[str], None] = print) -> dict:
    """Print predicted against measured per candidate and the rank correlation;
    return the summary (``rho``, ``n``, ``best_measured``, ``load_average``)."""
    from mtfc.runtime.tables import table

    order = sorted((m for m in measurements if m.ok and m.measured_s is not None), key=lambda m: m.measured_s)
    measured_rank = {id(m): i + 1 for i, m in enumerate(order)}
    rows = [("rank", "layout", "param layout", "predicted ms", "compute ms", "comm ms", "measured ms",
             "measured rank", "check")]
    for m in measurements:
        check = (("FAILED: " + m.failure) if m.failure else "ok" if m.ok
                 else "MISMATCH" + ("" if m.error is None else f" ({m.error:.1e})"))
        rows.append((str(m.rank + 1), m.rules or "(replicated)", m.param_rules or "-", _ms(m.predicted_s),
                     _ms(m.compute_s), _ms(m.comm_s), _ms(m.measured_s),
                     str(measured_rank.get(id(m), "-")), check))
    echo(table(rows))
    rho, n = rank_correlation(measurements)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    echo(f"rank correlation (Spearman) of predicted and measured step time: "
         f"{'n/a' if rho is None else f'{rho:.3f}'} over {n} correct candidate(s)"
         + (f"; load average {load:.2f}" if load is not None else ""))
    best = order[0] if order else None
    if best is not None and measurements and measurements[0].ok and measurements[0].measured_s is not None:
        ratio = measurements[0].measured_s / best.measured_s
        echo(f"the predicted best measured {_ms(measurements[0].measured_s)} ms, "
             f"{ratio:.2f}x the best measured ({_describe(best)}, {_ms(best.measured_s)} ms)")
    return {"rho": rho, "n": n, "best_measured": None if best is None else best.rank, "load_average": load}


DEFAULT_CALIBRATE_K = 4  # --calibrate without --measure K measures the top 4 and 4 lower-ranked


def measure_command(module: ir.Module, candidates: Sequence, *, network, k: int | None, calibrate_out: str | None,
                    backend: str = "cpu", steps: int = 5, echo: Callable[..., None] | None = None) -> dict:
    """``mtfc layout --measure K [--calibrate OUT]``: measure (`measure_candidates`,
    the top K and K lower-ranked), print `report`; with `calibrate_out`, fit
    `network`'s constants to the measurements (`calibrate.calibrate`) and save
    them (`save_network`).  Returns the JSON record (``--json``'s "measured")."""
    from mtfc.layout.calibrate import calibrate, describe
    from mtfc.layout.network import save_network

    echo = echo or _print
    k = DEFAULT_CALIBRATE_K if k is None else k
    mesh = mir.module_mesh(module)
    echo(f"measuring {len(select(len(candidates), k, k))} of {len(candidates)} candidate(s) on {mesh.size} "
         f"{backend} device(s), {steps} interleaved steps each:")
    ms = measure_candidates(module, candidates, k=k, lower_ranked=k, backend=backend, steps=steps, mesh=mesh)
    summary = report(ms, echo=echo)
    out = {"steps": steps, "backend": backend, **summary, "candidates": [m.as_dict() for m in ms]}
    if calibrate_out:
        fit = calibrate(ms, prior=network, axes=list(mesh.names), name=f"{network.name}-calibrated",
                        provenance={"backend": backend, "mesh": str(mesh), "model": mir.model_name(module)})
        for line in describe(fit):
            echo(line)
        save_network(fit.network, calibrate_out)
        echo(f"wrote {calibrate_out} (use --network {calibrate_out})", err=True)
        out["calibrated"] = fit.network.as_dict()
    return out


def _print(line: str, err: bool = False) -> None:
    import sys

    print(line, file=sys.stderr if err else sys.stdout)
