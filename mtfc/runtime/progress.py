"""The training loop's progress display: one line per step, redrawn in place on a terminal."""

from __future__ import annotations

import sys
import time
from typing import Callable

from mtfc.runtime.train_step import StepRecord


class Progress:
    """One `\\r`-rewritten line on a terminal (redrawn at most 10 times a second);
    otherwise a line for the first step, every `total/10` steps and the last."""

    def __init__(self, total: int, echo: Callable[[str], None], *, tty: bool | None = None, stream=None):
        self.total = total
        self.echo = echo
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = max(1, total // 10)
        self.done = 0
        self.width = 0
        self.drawn = -1.0
        self.text = ""

    def update(self, record: StepRecord) -> None:
        self.done += 1
        self.text = (f"step {record.step} ({self.done}/{self.total})  loss {record.loss:.6g}  "
                     + "".join(f"{name} {metric_text(value)}  " for name, value in record.metrics.items())
                     + f"{record.seconds * 1e3:.2f} ms/step")
        if self.tty:
            now = time.monotonic()
            if now - self.drawn >= 0.1 or self.done == self.total:
                self.drawn = now
                self._draw()
        elif self.done % self.every == 0 or self.done == self.total or self.done == 1:
            self.echo(self.text)

    def _draw(self) -> None:
        self.stream.write("\r" + self.text.ljust(self.width))
        self.stream.flush()
        self.width = len(self.text)
        self.text = ""

    def close(self) -> None:
        """Show the latest step and end the `\\r` line (before other output, and at the end)."""
        if self.tty and self.text:
            self._draw()
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


def metric_text(value) -> str:
    """A metric for the progress line and summary (4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)
