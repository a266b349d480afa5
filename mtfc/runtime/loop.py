"""The step loop of `mtfc run --steps N`, with hooks for what happens between steps.

`run_loop` runs a `TrainStep` `steps` times from a `TrainState`: step ``k``'s
batch is put on the devices while step ``k - 1`` runs, only the loss and
metrics (scalars) are read back, and after each step every `Hook` sees the
step's `StepRecord` in order (progress, ``--log``, the finite-loss guard,
``--save-every``).  A hook stops the run by raising (an `MtfcError`); every
hook's `close` runs however the loop ends.  A step's time runs from the end of
the previous step's hooks to its scalars being read: it does not include the
hooks' own work (a save, a log line).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Callable

from mtfc.errors import MtfcError
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
    outs: list | None  # the last step's results (per-device buffers), None if no step ran


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
    """``--log FILE``: one JSON line per step (step, loss, metrics, seconds), flushed."""

    def __init__(self, path: str):
        self.file = open(path, "w")  # noqa: SIM115

    def on_step(self, record: StepRecord, state: TrainState) -> None:
        self.file.write(json.dumps({"step": record.step, "loss": json_number(record.loss),
                                    "metrics": {k: json_number(v) for k, v in record.metrics.items()},
                                    "seconds": record.seconds}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


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
