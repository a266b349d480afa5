"""`mtfc plot LOG -o loss.png`: a quick look at a training run's ``--log``.

Reads the JSON lines `mtfc run --log` writes (one per step: step, loss,
metrics, seconds) and draws the loss against the step, and one panel per
metric asked for (``--metric NAME``, repeatable; ``--metric all`` for every
metric in the log), with matplotlib's non-interactive Agg backend.  The
image format follows the output's extension (.png, .svg, .pdf).  Non-finite
values (written as null) are left out of the curves.  Bad input -- a
missing or empty log, a line that is not a step's record, an unknown
metric, an unsupported extension -- is one line naming the culprit, and
nothing is written.
"""

from __future__ import annotations

import io
import json
import os

from mtfc.errors import MtfcError
from mtfc.files.atomic import check_writable, write_bytes_atomic

FORMATS = (".png", ".svg", ".pdf")


def read_log(path: str) -> list[dict]:
    """The step records of an ``--log`` file, in file order."""
    if not os.path.isfile(path):
        raise MtfcError(f"{path}: no such log file")
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.rstrip("\n"))
            except json.JSONDecodeError as e:
                raise MtfcError(f"{path}:{n}: not JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise MtfcError(f"{path}:{n}: not a step record of mtfc run --log (a JSON object with a \"step\")")
            records.append(record)
    if not records:
        raise MtfcError(f"{path}: the log has no steps")
    return records


def plot(log: str, output: str, metrics: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """Draw `log` into `output`; (steps read, panels drawn)."""
    extension = os.path.splitext(output)[1].lower()
    if extension not in FORMATS:
        raise MtfcError(f"-o {output}: unsupported image format {extension or '(none)'!r}; "
                        f"use one of {', '.join(FORMATS)}")
    check_writable(output)
    records = read_log(log)
    known = sorted({k for r in records for k in (r.get("metrics") or {})})
    if "all" in metrics:
        metrics = tuple(known)
    for m in metrics:
        if m not in known:
            raise MtfcError(f"--metric {m}: not in {log} (metrics there: {', '.join(known) or 'none'})")
    panels = ["loss"] + list(metrics)

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True, squeeze=False)
    for ax, name in zip(axes[:, 0], panels):
        points = [(r["step"], r["loss"] if name == "loss" else (r.get("metrics") or {}).get(name)) for r in records]
        points = [(s, v) for s, v in points if isinstance(v, (int, float))]
        ax.plot([s for s, _ in points], [v for _, v in points], linewidth=1.2)
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(os.path.basename(log))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format=extension[1:])
    plt.close(fig)
    write_bytes_atomic(output, buffer.getvalue())
    return len(records), panels
