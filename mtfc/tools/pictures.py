"""Layout pictures: which block of a tensor each device of the mesh holds
(`mtfc inspect --show NAME`, and the grids of `mtfc inspect --html`), as
``jax.debug.visualize_array_sharding`` draws them.

A tensor of the inspect report (an argument, a result, or a value of @main's
body) carries ``dims``, its global ``shape`` and ``axes``: the mesh axes that
split each dim.  Device d (row-major over the mesh, `Mesh.coords`) holds
along dim i the ``k``-th of ``prod(axes[i])`` equal slices, k its row-major
index over ``axes[i]`` (`mtfc.mesh.TensorLayout.shard_slices`).

The grid puts the mesh's first axis down and the others across (row-major),
so cell (r, c) is device ``r * columns + c``; a 1-axis mesh is one row.
Devices that hold the same block (replicas) share a letter (and, in HTML, a
colour).
"""

from __future__ import annotations

import difflib
import math

from mtfc.errors import MtfcError
from mtfc.mesh import Mesh, TensorLayout

WIDTH = 100


def tensors(report: dict) -> list[dict]:
    """Every tensor that can be drawn: arguments, results, then body values, each
    with ``name`` (a value's: its location), ``kind`` and the report's fields."""
    out = [dict(a, kind=a["role"]) for a in report["arguments"]]
    out += [dict(r, kind="result") for r in report["results"]]
    for i, v in enumerate(report["values"]):
        out.append(dict(v, name=v["location"], kind=v["op"], value_index=i))
    return out


def _scope(location: str) -> str:
    """``block0/ff/wo(model.py:70:1)`` -> ``block0/ff/wo``."""
    return location.rsplit("(", 1)[0] if location.endswith(")") and "(" in location else location


def find_tensor(report: dict, name: str) -> dict:
    """The tensor called `name`: an argument or result name, or a value's
    location with or without its source line (several values at one
    location: the last one, the scope's final result).  Unknown: a one-line
    `MtfcError` listing close matches."""
    entries = tensors(report)
    for e in entries[: len(report["arguments"]) + len(report["results"])]:
        if e["name"] == name:
            return e
    matches = [e for e in entries if "value_index" in e and name in (e["location"], _scope(e["location"]))]
    if matches:
        return matches[-1]
    names = list(dict.fromkeys([e["name"] for e in entries if "value_index" not in e]
                               + [_scope(e["location"]) for e in entries if "value_index" in e]))
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else "; see 'mtfc inspect --section arguments' for names"
    raise MtfcError(f"--show {name!r}: no argument, result or value of that name{hint}")


def blocks(entry: dict, mesh: Mesh) -> list[list[tuple[int, int]]]:
    """Per device (row-major), per dim: the [start, stop) of the block it holds."""
    axes = entry.get("axes")
    if axes is None:
        raise MtfcError(f"{entry['name']}: its per-device shape {entry['local_shape']} matches no layout of "
                        f"dims {entry['dims']}; no picture")
    layout = TensorLayout(tuple(entry["dims"]), tuple(entry["shape"]), tuple(tuple(a) for a in axes), mesh)
    return [[(s.start, s.stop) for s in layout.shard_slices(d)] for d in range(mesh.size)]


def grid_shape(mesh: Mesh) -> tuple[int, int]:
    """(rows, columns) of the picture: the first mesh axis down, the rest across."""
    if len(mesh.axes) < 2:
        return 1, mesh.size
    return mesh.shape[0], mesh.size // mesh.shape[0]


def block_labels(entry: dict, mesh: Mesh) -> tuple[list[list[str]], list[int]]:
    """Per device: one ``dim[start:stop]`` per dim; and the block number each
    device holds (replicas share one), numbered in device order."""
    per_device = blocks(entry, mesh)
    ids: dict[tuple, int] = {}
    numbers = [ids.setdefault(tuple(b), len(ids)) for b in per_device]
    labels = [[f"{d}[{lo}:{hi}]" for d, (lo, hi) in zip(entry["dims"], b)] or ["scalar"] for b in per_device]
    return labels, numbers


def _middle(text: str, width: int) -> str:
    from mtfc.tools.report import middle

    return middle(text, width)


def _letter(k: int) -> str:
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return letters[k] if k < 26 else f"B{k}"


def layout_words(entry: dict) -> str:
    """``d_model over rows+cols, d_ff whole``."""
    if entry.get("axes") is None:
        return "no layout matches its per-device shape"
    parts = [f"{d} over {'+'.join(a)}" if a else f"{d} whole" for d, a in zip(entry["dims"], entry["axes"])]
    return ", ".join(parts) or "a scalar, on every device"


def _shape(s) -> str:
    return "x".join(map(str, s)) or "scalar"


def show_text(entry: dict, mesh: Mesh, width: int = WIDTH) -> list[str]:
    """The terminal picture of one tensor: a header, then a grid of the mesh
    whose cells name the device, its block's letter and slice per dim (a
    list, one device a line, when the grid would be wider than `width`)."""
    head = [f"{entry['name']}: {entry['kind']}",
            f"dims {','.join(entry['dims']) or '(none)'}, {entry['dtype']}, global {_shape(entry['shape'])}, "
            f"per device {_shape(entry['local_shape'])}",
            f"layout: {layout_words(entry)}"]
    head = [_middle(line, width) for line in head]
    labels, numbers = block_labels(entry, mesh)
    distinct = len(set(numbers))
    head.append(f"{distinct} distinct block(s) over {mesh.size} devices"
                + (f" (each held by {mesh.size // distinct})" if distinct < mesh.size else ""))
    rows, cols = grid_shape(mesh)
    names = mesh.names
    cells = [[f"dev {d}  {_letter(numbers[d])}"] + labels[d] for d in range(mesh.size)]
    cell_w = max(len(line) for c in cells for line in c) + 2
    row_head = f"{names[0]} {rows - 1}" if len(names) > 1 else ""
    margin = len(row_head) + 1 if row_head else 0
    if margin + cols * (cell_w + 1) + 1 > width:
        out = head + [f"mesh {mesh or '(one device)'} (each line: a device, its coordinates, its block):"]
        for d in range(mesh.size):
            coords = ", ".join(f"{a} {i}" for a, i in mesh.coords(d).items())
            out.append(f"  dev {d} ({coords}): {_letter(numbers[d])} " + " ".join(labels[d]))
        return out
    across = "x".join(names[1:]) if len(names) > 1 else names[0] if names else "devices"
    down = f"{names[0]} down, " if len(names) > 1 else ""
    out = head + [f"mesh {mesh or '(one device)'} ({down}{across} across, row-major):"]
    col_heads = []
    for c in range(cols):
        d = c if len(names) > 1 else c
        coords = mesh.coords(d)
        text = ",".join(str(coords[a]) for a in names[1:]) if len(names) > 1 else str(c)
        col_heads.append(f"{across} {text}".center(cell_w))
    out.append((" " * margin + " " + " ".join(col_heads)).rstrip())
    rule = " " * margin + "+" + "+".join("-" * cell_w for _ in range(cols)) + "+"
    height = max(len(c) for c in cells)
    for r in range(rows):
        out.append(rule)
        for k in range(height):
            label = (f"{names[0]} {r}" if k == 0 else "").ljust(margin - 1) + " " if margin else ""
            line = "|".join(" " + (cells[r * cols + c][k] if k < len(cells[r * cols + c]) else "").ljust(cell_w - 1)
                            for c in range(cols))
            out.append(f"{label}|{line}|")
    out.append(rule)
    return out


def largest_values(report: dict, n: int = 12) -> list[dict]:
    """The `n` largest body values (global size) with a layout, constants aside (for the HTML), in program order."""
    entries = [e for e in tensors(report) if "value_index" in e and e.get("axes") is not None and e["dims"]
               and e["op"] != "stablehlo.constant"]  # constants: mostly splats, materialized where used
    top = sorted(entries, key=lambda e: (-math.prod(e["shape"]), -e["bytes_per_device"], e["value_index"]))
    seen, out = set(), []
    for e in top:
        key = (e["location"], tuple(e["shape"]))
        if key in seen:
            continue
        seen.add(key)
        out.append(e)
        if len(out) == n:
            break
    return sorted(out, key=lambda e: e["value_index"])
