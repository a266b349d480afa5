"""The step loop of `mtfc run --steps N`, with hooks for what happens between steps.

`run_loop` runs a `TrainStep` `steps` times from a `TrainState`: step ``k``'s
batch is put on the devices while step ``k - 1`` runs, only the loss and
metrics (scalars) are read back, and after each step every `Hook` sees the
step's `StepRecord` in order (progress, ``--log``, ``--tensorboard``, the finite-loss guard,
``--save-every``).  A hook stops the run by raising (an `MtfcError`); every
hook's `close` runs however the loop ends.  A step's time runs from the end of
the previous step's hooks to its scalars being read: it does not include the
hooks' own work (a save, a log line).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from mtfc.errors import MtfcError
from mtfc.files.atomic import write_text_atomic
from mtfc.runtime.data import Batches
from mtfc.runtime.progress import Progress
from mtfc.runtime.train_step import StepRecord, TrainState, TrainStep


class Hook:
    """Something done after each step; `close` when the loop ends (also by an error)."""

    def on_step(self, record: StepRecord, state: TrainState) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class LoopResult:
    records: list[StepRecord]
    outs: list | None  # the last step's results (global jax.Arrays, `TrainStep.launch`), None if no step ran


def run_loop(train: TrainStep, state: TrainState, batches: Batches, steps: int, hooks: list[Hook]) -> LoopResult:
    """Run `steps` steps, advancing `state` in place; see the module docstring."""
    records: list[StepRecord] = []
    outs = None
    try:
        upcoming = train.device_inputs(batches.batch(state.step)) if steps else None
        previous = time.perf_counter()
        for n in range(steps):
            outs = train.launch(state, upcoming)
            train.advance(state, outs)
            if n + 1 < steps:  # the next batch travels while this step runs
                upcoming = train.device_inputs(batches.batch(state.step))
            loss, metrics = train.read_scalars(outs)  # waits for the step
            record = StepRecord(state.step, loss, metrics, time.perf_counter() - previous)
            records.append(record)
            for hook in hooks:
                hook.on_step(record, state)
            previous = time.perf_counter()
    finally:
        for hook in hooks:
            hook.close()
    return LoopResult(records, outs)


class ProgressHook(Hook):
    """The progress line (`progress.Progress`)."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def on_step(self, record: StepRecord, state: TrainState) -> None:
        self.progress.update(record)

    def close(self) -> None:
        self.progress.close()


def json_number(x):
    """`x` for JSON: non-finite floats become null (in lists too)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [json_number(v) for v in x]
    return x


class LogHook(Hook):
    """``--log FILE``: one JSON line per step (step, loss, metrics, seconds), flushed.

    A fresh run (`resume_after` None) starts the file anew.  A run restored
    from step ``k`` (`resume_after` = k) continues the file: it keeps the
    lines of steps up to ``k`` and drops any later ones (steps of an earlier
    run past the checkpoint, which this run redoes), then appends -- so the
    log holds each step once, in order.  A file that is not a log of JSON
    lines is refused in one line, left as it was."""

    def __init__(self, path: str, resume_after: int | None = None):
        kept = ""
        if resume_after is not None and os.path.exists(path):
            kept = "".join(line for line in log_lines(path) if json.loads(line)["step"] <= resume_after)
            write_text_atomic(path, kept)
        self.file = open(path, "a" if resume_after is not None else "w")  # noqa: SIM115

    def on_step(self, record: StepRecord, state: TrainState) -> None:
        self.file.write(json.dumps(log_record(record)) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def log_record(record: StepRecord) -> dict:
    """A step as ``--log`` writes it (non-finite numbers as null)."""
    return {"step": record.step, "loss": json_number(record.loss),
            "metrics": {k: json_number(v) for k, v in record.metrics.items()}, "seconds": record.seconds}


def log_lines(path: str) -> list[str]:
    """The lines of an ``--log`` file, each checked to be a step's JSON record."""
    with open(path) as f:
        lines = f.readlines()
    for n, line in enumerate(lines, 1):
        try:
            step = json.loads(line).get("step")
        except (json.JSONDecodeError, AttributeError):
            step = None
        if not isinstance(step, int):
            raise MtfcError(f"{path}:{n}: not a line of an mtfc --log file (a JSON object with a \"step\"); "
                            "not appending to it")
    return [line if line.endswith("\n") else line + "\n" for line in lines]


class TensorBoardHook(Hook):
    """``--tensorboard DIR``: the loss, each metric and the step time as
    TensorBoard scalars (tensorboardX event files), by step.  A restored run
    passes `resume_after`: TensorBoard then discards events of later steps
    left by an earlier run (``purge_step``)."""

    def __init__(self, logdir: str, resume_after: int | None = None):
        from tensorboardX import SummaryWriter

        try:
            # tensorboardX names an event file by the second and the host: a run started within the same
            # second as the previous one would replace its file; the suffix keeps every run's events
            suffix = f".step{resume_after or 0}.{os.getpid()}.{secrets.token_hex(3)}"
            self.writer = SummaryWriter(logdir, purge_step=None if resume_after is None else resume_after + 1,
                                        filename_suffix=suffix)
        except OSError as e:
            raise MtfcError(f"--tensorboard {logdir}: {e.strerror or e}") from None

    def on_step(self, record: StepRecord, state: TrainState) -> None:
        if math.isfinite(record.loss):
            self.writer.add_scalar("loss", record.loss, record.step)
        for name, value in record.metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"metrics/{name}", value, record.step)
        self.writer.add_scalar("seconds_per_step", record.seconds, record.step)

    def close(self) -> None:
        self.writer.close()


class FiniteLossHook(Hook):
    """Stop at the first non-finite loss, saying which checkpoint is left (`kept()`)."""

    def __init__(self, kept: Callable[[], str], before: Callable[[], None] = lambda: None):
        self.kept = kept
        self.before = before

    def on_step(self, record: StepRecord, state: TrainState) -> None:
        if not math.isfinite(record.loss):
            self.before()
            raise MtfcError(f"the loss is {record.loss} after step {state.step}; stopping ({self.kept()})")


class SaveHook(Hook):
    """``--save-every K``: `save(state)` after every step whose number K divides."""

    def __init__(self, every: int, save: Callable[[TrainState], None]):
        self.every = every
        self.save = save

    def on_step(self, record: StepRecord, state: TrainState) -> None:
        if state.step % self.every == 0:
            self.save(state)
