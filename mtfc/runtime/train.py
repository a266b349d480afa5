"""`mtfc run TRAIN.mlir --steps N`: training a train-step module.

`train_command` checks the options (before compiling), compiles the step
(`train_step.TrainStep`), initializes or restores the state (noting a
checkpoint saved on another mesh, layout, seed or data source), optionally
checks the first step against the unsharded program, runs `loop.run_loop`
with the hooks the options ask for (progress, ``--log``, ``--tensorboard``, the finite-loss
guard, ``--save-every``), then prints a summary (and the last step's taps,
results with role ``tap``, with their dims), saves ``--save`` and writes
``--outputs`` (the final state and the last step's loss, metrics and taps).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import Interrupted, MtfcError, warn
from mtfc.files.atomic import check_writable, write_bytes_atomic
from mtfc.index_ranges import argument_ranges
from mtfc.runtime import checkpoint
from mtfc.runtime import devices as rt_devices
from mtfc.runtime.check_step import judge_step, report_lines
from mtfc.runtime.data import Batches, describe_info, open_batches, same_source, throughput_unit
from mtfc.runtime.execute import Program
from mtfc.runtime.forward import outputs_npz, result_rows
from mtfc.runtime.tables import table
from mtfc.runtime import distributed, failure
from mtfc.runtime.sources import as_source, materialize
from mtfc.runtime.loop import FiniteLossHook, Hook, LogHook, ProgressHook, SaveHook, TensorBoardHook, log_lines, run_loop
from mtfc.runtime.progress import Progress, metric_text
from mtfc.runtime.train_step import StepRecord, TrainState, TrainStep

DEFAULT_STEPS = 10


@dataclass
class TrainOptions:
    steps: int | None = None
    data: str | None = None
    save: str | None = None
    save_every: int | None = None
    restore: str | None = None
    log: str | None = None
    tensorboard: str | None = None

    def given(self) -> list[str]:
        flags = {"steps": "--steps", "data": "--data", "save": "--save", "save_every": "--save-every",
                 "restore": "--restore", "log": "--log", "tensorboard": "--tensorboard"}
        return [flag for key, flag in flags.items() if getattr(self, key) is not None]


def _check_first_step(train: TrainStep, state: TrainState, batches: Batches, backend: str,
                      echo: Callable[[str], None]) -> bool:
    """The first step sharded vs the unsharded program on one device, from the
    same state and batch.  In a multi-process job every process runs the
    sharded step; process 0 runs the reference and tells the others the verdict."""
    inputs = train.host_state(state)
    inputs.update({name: materialize(as_source(value)) for name, value in batches.batch(state.step).items()})
    sharded = train.program.run(inputs, repeat=1).outputs
    if not distributed.is_primary():
        return distributed.primary_says(False, "mtfc-check")
    reference = Program(train.module, backend=backend, unsharded=True).run(inputs, repeat=1).outputs
    # each result judged by its role (check_step.py); f32 results computed from
    # bf16 values (a bf16 step's loss, gradients, updates) at bf16's tolerance
    judged = judge_step(train.program.results, sharded, reference, optimizer=train.optimizer,
                        precision=mir.compute_precision(train.module))
    ok = judged.ok
    echo(f"check step {state.step + 1} against the unsharded run on 1 device "
         f"({len(judged.results)} results, worst per role):")
    for line in report_lines(judged):
        echo(line)
    echo("check: " + ("passed" if ok else "FAILED (not training)"))
    return distributed.primary_says(ok, "mtfc-check")


def train_command(
    module: ir.Module,
    module_file: str,
    options: TrainOptions,
    *,
    backend: str = "cpu",
    seed: int = 0,
    outputs_file: str | None = None,
    inputs_file: str | None = None,
    check: bool = False,
    echo: Callable[[str], None] = print,
    progress_stream=None,
) -> bool:
    """The training loop of `mtfc run` for a train-step module; False when `check` fails."""
    steps = DEFAULT_STEPS if options.steps is None else options.steps
    if steps < 0:
        raise MtfcError(f"--steps must be >= 0, not {steps}")
    if inputs_file is not None:
        raise MtfcError("--inputs is for forward modules; a train-step module takes batches from --data")
    if options.save_every is not None:
        if options.save is None:
            raise MtfcError("--save-every needs --save DIR")
        if options.save_every < 1:
            raise MtfcError(f"--save-every must be >= 1, not {options.save_every}")
    if options.save is not None:
        checkpoint.default_timeout()  # a bad MTFC_CHECKPOINT_TIMEOUT fails now, not after training
    if options.restore is not None:
        checkpoint.load_index(options.restore)  # fail on a bad checkpoint before compiling
    if options.log is not None:
        check_writable(options.log)
        if options.restore is not None and os.path.exists(options.log):
            log_lines(options.log)  # a file that is not a log fails now, not after compiling
    if options.tensorboard is not None and os.path.exists(options.tensorboard) \
            and not os.path.isdir(options.tensorboard):
        raise MtfcError(f"--tensorboard {options.tensorboard}: not a directory")
    # Bad data files fail before compiling.
    batches = open_batches(options.data, [s for s in mir.arguments(module) if s.role == "input"], seed,
                           argument_ranges(module))
    if backend == "cpu":
        kind = mir.partitioning(module)
        rt_devices.ensure_cpu_devices(max(mir.module_mesh(module).size if kind != "none" else 1, 1))
    train = TrainStep(module, backend=backend)
    distributed.wait_for_all("mtfc-compiled")  # processes compile at their own pace; steps start together
    p = train.program

    job = distributed.current_job()
    processes = f" in {job.num_processes} processes" if job.is_multi_process else ""
    where = (f"{p.mesh.size} {backend} device(s){processes}, mesh {p.mesh}" if p.kind != "none"
             else f"1 {backend} device")
    echo(f"module {module_file}: train step ({train.optimizer or 'optimizer not named'}), "
         f"partitioning {p.kind}, {where}")
    params = [s for s in train.state_signatures if s.role == "parameter"]
    n_values = sum(math.prod(s.shape) for s in params)
    echo(f"state: {len(params)} parameter array(s) ({n_values:,} values), "
         f"{len(train.state) - len(params)} optimizer-state array(s); "
         f"donated to XLA: {train.donated} of {len(train.state)}")
    echo(f"data: {batches.describe()}")
    echo(f"compile {p.compile_seconds * 1e3:.1f} ms")

    state = (_restore(train, options.restore, seed, batches, echo) if options.restore is not None
             else train.initial_state(seed))

    if check and not _check_first_step(train, state, batches, backend, echo):
        return False

    meta = {"seed": seed, "data": batches.info()}
    saver = Saver(train, options, meta)
    failure.set_describe(lambda: f"stopped at step {state.step}; {saver.kept()}")  # a lost peer, SIGTERM
    progress = Progress(steps, echo, stream=progress_stream)
    hooks: list[Hook] = []
    if distributed.is_primary():  # every process runs every step; process 0 shows and logs them
        hooks.append(ProgressHook(progress))
        resume_after = state.step if options.restore is not None else None
        if options.log:
            hooks.append(LogHook(options.log, resume_after))
        if options.tensorboard:
            hooks.append(TensorBoardHook(options.tensorboard, resume_after))
    hooks.append(FiniteLossHook(saver.kept, before=progress.close))
    if options.save_every:
        def save_now(state: TrainState) -> None:
            progress.close()
            saver.save(state)
            echo(f"saved step {state.step} to {options.save}")

        hooks.append(SaveHook(options.save_every, save_now))
    start_step = state.step
    try:
        result = run_loop(train, state, batches, steps, hooks)
    except KeyboardInterrupt:
        raise Interrupted(_interrupted_message(state.step, options, saver.last_saved, start_step)) from None
    records, outs = result.records, result.outs

    if records:
        _summary(records, start_step, train, echo)
    else:
        echo(f"no steps run (at step {state.step})")
    if options.save is not None and saver.last_saved != state.step:
        saver.save(state)
        echo(f"saved step {state.step} to {options.save}")
    taps = [sig for sig in p.results if sig.role == "tap"]
    last = train.gather_outputs(outs) if outs is not None and (outputs_file or taps) else {}  # collective
    if taps and last:
        echo(f"taps of step {state.step}:")
        echo(table(result_rows(taps, last, header="tap")))
    if outputs_file:
        values = train.host_state(state)  # collective: every process gathers, process 0 writes
        values.update(last)
        if not distributed.is_primary():
            return True
        write_bytes_atomic(outputs_file, outputs_npz(values, p.results))
        echo(f"wrote {outputs_file}")
    return True


def _restore(train: TrainStep, path: str, seed: int, batches: Batches, echo: Callable[[str], None]) -> TrainState:
    """The state saved in `path`, with a line saying what was restored and what
    differs from the checkpoint's run (mesh or layout: resharded; seed; data)."""
    state, index = train.restore(path)
    notes = []
    here = [[list(axes) for axes in train.layout(i).axes] for i, _, _ in train.state_order(index)]
    if index.get("mesh") != str(train.program.mesh) or [a["layout"] for a in index["arrays"]] != here:
        notes.append(f"saved on mesh {index.get('mesh') or '(one device)'}, "
                     f"layout {index.get('layout') or '(replicated)'}"
                     + (f", parameter layout {index['param_layout']}"
                        if index.get("param_layout") not in (None, index.get("layout")) else "")
                     + "; resharded")
    if index.get("seed") is not None and index.get("seed") != seed:
        notes.append(f"it was trained with --seed {index['seed']}, continuing with --seed {seed}")
    echo(f"restored step {state.step} from {path}" + (f" ({'; '.join(notes)})" if notes else ""))
    if "data" in index and not same_source(index["data"], batches.info()):
        warn(f"{path} was trained on {describe_info(index['data'])}; "
              f"this run reads {describe_info(batches.info())}")
    return state


def _interrupted_message(step: int, options: TrainOptions, last_saved: int | None, start_step: int) -> str:
    """What Ctrl-C during training says: the steps completed and the checkpoint to resume from."""
    if last_saved is not None:
        kept = f"last checkpoint: {options.save} (step {last_saved})"
    elif options.restore is not None:
        kept = f"no checkpoint saved (restored from {options.restore} at step {start_step})"
    else:
        kept = "no checkpoint saved"
    return f"interrupted at step {step}; {kept}"


class Saver:
    """``--save DIR``: saves the state and remembers the last step saved, so that
    a run stopped early can say which checkpoint it leaves (`kept`)."""

    def __init__(self, train: TrainStep, options: TrainOptions, meta: dict):
        self.train = train
        self.options = options
        self.meta = meta
        self.last_saved: int | None = None

    def save(self, state: TrainState) -> None:
        """Save; a state that is no longer finite stops the run instead, with
        the line saying which checkpoint is left (as for a non-finite loss)."""
        try:
            self.train.save(self.options.save, state, self.meta)
        except checkpoint.NotFinite as e:
            raise MtfcError(f"{e.name} is not finite after step {state.step}; stopping ({self.kept()})") from None
        self.last_saved = state.step

    def kept(self) -> str:
        """Which checkpoint a run stopped early leaves, in words."""
        if self.last_saved is not None:
            return f"the last checkpoint, step {self.last_saved}, is in {self.options.save}"
        if self.options.save is not None:
            return f"this run saved no checkpoint; {self.options.save} is as it was"
        return "no checkpoint was saved (no --save)"


def _summary(records: list[StepRecord], start_step: int, train: TrainStep, echo: Callable[[str], None]) -> None:
    times = np.array([r.seconds for r in records])
    median = float(np.median(times))
    total = float(times.sum())
    echo(f"trained steps {start_step + 1}-{records[-1].step} ({len(records)} steps) in {total:.3f} s: "
         f"loss {records[0].loss:.6g} -> {records[-1].loss:.6g} (first -> last)")
    if records[-1].metrics:
        echo("metrics: " + ", ".join(f"{name} {metric_text(records[0].metrics.get(name))} -> {metric_text(value)}"
                                     for name, value in records[-1].metrics.items()) + " (first -> last)")
    unit = throughput_unit(train.input_signatures)
    rate = f"; {unit[1] / median:,.0f} {unit[0]}/s" if unit and median > 0 else ""
    echo(f"step time: median {median * 1e3:.2f} ms (min {times.min() * 1e3:.2f}, max {times.max() * 1e3:.2f}){rate}")
