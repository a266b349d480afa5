"""Reading the checkpoints of earlier mtfc versions (index versions 1 and 2):
one ``.npy`` file per distinct shard, named in the index; bf16 stored as its
uint16 bit patterns; version 2 with a sha256 per shard."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from mtfc import ir as mir
from mtfc.errors import MtfcError


def digest(array: np.ndarray) -> str:
    """sha256 of an array's data bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(array).reshape(-1).view(np.uint8)).hexdigest()


def _disk_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a shard of an mtfc `dtype` array is stored as."""
    return np.dtype(np.uint16) if dtype == "bf16" else np.dtype(mir.numpy_dtype(dtype))


def read_shard(where: str, array: dict, shard: dict) -> np.ndarray:
    """A shard as stored, checked against the index: its shape, its dtype (no
    conversion: another dtype is an error) and its sha256 (when recorded)."""
    file = os.path.join(where, shard["file"])
    try:
        data = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MtfcError(f"cannot read checkpoint shard {file!r}: {e}") from None
    want = tuple(b - a for a, b in shard["slices"])
    if tuple(data.shape) != want:
        raise MtfcError(f"checkpoint shard {file!r} has shape {data.shape}, the index says {want}")
    if data.dtype != _disk_dtype(array["dtype"]):
        raise MtfcError(f"checkpoint shard {file!r} of array {array['name']!r} holds {data.dtype}, "
                        f"the index says {array['dtype']} (stored as {_disk_dtype(array['dtype'])})")
    host = np.asarray(data)
    if "sha256" in shard and digest(host) != shard["sha256"]:
        raise MtfcError(f"checkpoint shard {file!r} of array {array['name']!r} is corrupt "
                        "(its sha256 differs from the index's)")
    return host.view(np.dtype(mir.numpy_dtype(array["dtype"]))) if array["dtype"] == "bf16" else host


def read_global(index: dict, name: str) -> np.ndarray:
    """Reassemble array `name` of a version 1 or 2 checkpoint on the host."""
    array = next(a for a in index["arrays"] if a["name"] == name)
    out = np.empty(array["shape"], dtype=mir.numpy_dtype(array["dtype"]))
    for shard in array["shards"]:
        out[tuple(slice(a, b) for a, b in shard["slices"])] = read_shard(index["_dir"], array, shard)
    return out  # validate_index checked that the shards tile the array
