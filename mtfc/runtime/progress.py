"""The training loop's progress display (tqdm): step, loss, metrics, time per
step, elapsed time and the estimated time left.

On a terminal, one tqdm bar redrawn in place (at most 10 times a second;
`close` draws the last step).  Otherwise (a log file, a pipe, CI) a plain
line for the first step, every ``total/10`` steps and the last, with the same
fields formatted by tqdm -- no carriage returns in files.
"""

from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm import tqdm

from mtfc.runtime.train_step import StepRecord


class Progress:
    """Progress of a run of `total` steps.  `close()` ends the bar (before
    another message, e.g. a save's, and at the end); an update after it
    starts a new bar that keeps the elapsed time and the ETA."""

    def __init__(self, total: int, echo: Callable[[str], None], *, tty: bool | None = None, stream=None):
        self.total = total
        self.echo = echo
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = max(1, total // 10)
        self.done = 0
        self.start = time.monotonic()
        self.bar: tqdm | None = None

    def update(self, record: StepRecord) -> None:
        self.done += 1
        fields = step_fields(record, self.done, self.total)
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(total=self.total, initial=self.done - 1, desc=fields, file=self.stream,
                                unit="step", dynamic_ncols=True, mininterval=0.1, leave=True,
                                bar_format="{desc}  {bar:12}  {elapsed}<{remaining}", delay=1e-9)
                self.bar.start_t = self.start_t_for_tqdm()
            self.bar.set_description_str(fields, refresh=False)
            self.bar.update(1)  # draws at most every 0.1 s; `close` draws the last step
        elif self.done % self.every == 0 or self.done == self.total or self.done == 1:
            elapsed = time.monotonic() - self.start
            self.echo(f"{fields}  {times(elapsed, self.done, self.total)}")

    def start_t_for_tqdm(self) -> float:
        """The run's start on tqdm's clock (`time.time`), so a bar reopened after
        `close` counts the elapsed time and rate from the first step."""
        return time.time() - (time.monotonic() - self.start)

    def close(self) -> None:
        """Show the latest step and end the bar's line."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def step_fields(record: StepRecord, done: int, total: int) -> str:
    """``step 12 (12/30)  loss 0.512  grad_norm 1.2  3.41 ms/step``."""
    return (f"step {record.step} ({done}/{total})  loss {record.loss:.6g}  "
            + "".join(f"{name} {metric_text(value)}  " for name, value in record.metrics.items())
            + f"{record.seconds * 1e3:.2f} ms/step")


def times(elapsed: float, done: int, total: int) -> str:
    """``elapsed 00:03, left 00:05`` (tqdm's formatting); the time left is
    extrapolated from the mean step so far."""
    left = elapsed / done * (total - done) if done else 0.0
    return f"elapsed {tqdm.format_interval(elapsed)}, left {tqdm.format_interval(left)}"


def metric_text(value) -> str:
    """A metric for the progress line and summary (4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
