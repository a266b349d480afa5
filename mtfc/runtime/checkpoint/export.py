"""`mtfc checkpoint export` and `info`: a checkpoint's arrays as one
safetensors file, and a summary of what a checkpoint holds.

The export holds each array under its mtfc name (``params/fc/kernel``), in
its own dtype (bf16 stays bf16: safetensors' ``BF16``), the parameters only
unless `everything` (then the optimizer state too); its metadata (strings)
says the format, model, step and optimizer.  The file is written under a
temporary name and renamed: it is complete or absent.
"""

from __future__ import annotations

import math

import numpy as np

from mtfc.errors import MtfcError
from mtfc.files.atomic import check_writable, write_bytes_atomic
from mtfc.runtime import checkpoint


def export(path: str, output: str, *, everything: bool = False) -> tuple[int, int, int]:
    """Write the checkpoint `path`'s parameters (all arrays with `everything`) to
    the safetensors file `output`; return (arrays, bytes of data, step)."""
    import safetensors.numpy

    check_writable(output)
    index, arrays = checkpoint.read_all(path)
    roles = {a["name"]: a["role"] for a in index["arrays"]}
    chosen = {name: np.array(value, order="C") for name, value in arrays.items()  # (0-d stays 0-d)
              if everything or roles[name] == "parameter"}
    if not chosen:
        raise MtfcError(f"checkpoint {path!r} has no parameters to export (--all exports the optimizer state)")
    meta = {"format": "mtfc.checkpoint export", "step": str(index["step"])}
    for key in ("model", "optimizer", "mesh", "layout"):
        if index.get(key) is not None:
            meta[key] = str(index[key])
    try:
        data = safetensors.numpy.save(chosen, metadata=meta)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own errors
        raise MtfcError(f"{output}: cannot encode the arrays as safetensors: {e}") from None
    try:
        write_bytes_atomic(output, data)
    except OSError as e:
        raise MtfcError(f"{output}: {e.strerror or e}") from None
    return len(chosen), sum(v.nbytes for v in chosen.values()), index["step"]


def info_lines(path: str) -> list[str]:
    """What `mtfc checkpoint info` prints: the metadata, then one line per array."""
    index = checkpoint.load_index(path)
    lines = [f"checkpoint {path}: format version {index['version']}, step {index['step']}"]
    for key in ("model", "optimizer", "mesh", "layout", "param_layout", "partitioning", "processes", "seed"):
        if index.get(key) not in (None, ""):
            lines.append(f"  {key}: {index[key]}")
    if "data" in index:
        from mtfc.runtime.data import describe_info

        lines.append(f"  data: {describe_info(index['data'])}")
    rows = [("array", "role", "dtype", "shape", "layout", "blocks")]
    for a in index["arrays"]:
        layout = ",".join(f"{d}:{'+'.join(axes)}" for d, axes in zip(a["dims"], a["layout"]) if axes) or "replicated"
        shape = "x".join(map(str, a["shape"])) or "scalar"
        rows.append((a["name"], a["role"], a["dtype"], shape, layout, str(len(a["shards"]))))
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    total = sum(math.prod(a["shape"]) for a in index["arrays"] if a["role"] == "parameter")
    lines.append(f"  {total:,} parameter values")
    return lines
