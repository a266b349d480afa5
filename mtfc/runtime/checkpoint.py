"""Sharded checkpoints of a training run's state (parameters and optimizer state).

A checkpoint is a directory::

    DIR/index.json
    DIR/0000-params.w1.0.npy      array 0, shard 0
    DIR/0000-params.w1.1.npy      array 0, shard 1
    ...

Each *distinct* shard of each array is written once, as one ``.npy`` file, by
the process whose device holds it (replicas of a shard are not repeated: the
first device in mesh order that holds it owns it).  ``index.json`` says
everything needed to read the arrays back without the module::

    {"format": "mtfc.checkpoint", "version": 1, "step": 10,
     "model": "mlp_train", "optimizer": "sgd:lr=0.1", "seed": 0,
     "mesh": "rows:2,cols:4", "layout": "batch:rows", "param_layout": "...",
     "partitioning": "gspmd", "data": {...},
     "arrays": [{"name": "params/w1", "role": "parameter",
                 "dims": ["d_in", "d_hidden"], "shape": [8, 32], "dtype": "f32",
                 "layout": [[], ["cols"]],
                 "shards": [{"file": "0000-params.w1.0.npy",
                             "slices": [[0, 8], [0, 8]], "devices": [0, 4]}, ...]}]}

``layout`` gives the mesh axes splitting each dim, ``slices`` the global
index range of a shard (start, stop per dim), ``devices`` the mesh devices
that held it.  bf16 arrays are stored as their uint16 bit patterns.

Saving is atomic: everything is written under ``.DIR.tmp-*`` next to DIR,
flushed, and then swapped into place (``renameat2(RENAME_EXCHANGE)`` on Linux,
else two renames); an interrupted save leaves the previous checkpoint as it
was.  Restoring reassembles each array from its shards (reading a shard file
directly when the new layout wants exactly that block), so a checkpoint
restores onto any mesh and layout of the same model.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass

import jax
import numpy as np

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import TensorLayout
from mtfc.runtime.host_data import jax_sharding

FORMAT = "mtfc.checkpoint"
VERSION = 1
INDEX = "index.json"


@dataclass
class Entry:
    """One array to save: its signature, layout and per-device buffers (mesh order)."""

    sig: mir.Signature
    layout: TensorLayout
    shards: list  # single-device jax.Arrays, one per mesh device


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", ".", name)


def _to_disk(array: np.ndarray, dtype: str) -> np.ndarray:
    return array.view(np.uint16) if dtype == "bf16" else array


def _from_disk(array: np.ndarray, dtype: str) -> np.ndarray:
    want = np.dtype(mir.numpy_dtype(dtype))
    if dtype == "bf16":
        return array.view(want)
    return array if array.dtype == want else array.astype(want)


def distinct_shards(layout: TensorLayout) -> list[tuple[tuple[slice, ...], list[int]]]:
    """The distinct blocks of a layout, each with the mesh devices holding it (mesh order)."""
    blocks: dict[tuple, list[int]] = {}
    for d in range(layout.mesh.size or 1):
        key = tuple((s.start, s.stop) for s in layout.shard_slices(d))
        blocks.setdefault(key, []).append(d)
    return [(tuple(slice(a, b) for a, b in key), devs) for key, devs in blocks.items()]


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), a, None, b)


def _is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, INDEX))


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(os.path.normpath(path))}.tmp-"


def _old_prefix(path: str) -> str:
    return f".{os.path.basename(os.path.normpath(path))}.old-"


def save(path: str, entries: list[Entry], meta: dict, *, _before_commit=None) -> None:
    """Write `entries` as a checkpoint at `path`, atomically replacing any checkpoint there."""
    path = os.path.normpath(os.path.abspath(path))
    parent = os.path.dirname(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise MtfcError(f"checkpoint path {path!r} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not _is_checkpoint(path):
        raise MtfcError(f"{path!r} is a non-empty directory that is not an mtfc checkpoint; refusing to replace it")
    os.makedirs(parent, exist_ok=True)
    # Left-overs of a save that was killed (never a live checkpoint).
    for stale in glob.glob(os.path.join(parent, glob.escape(_temp_prefix(path)) + "*")):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=_temp_prefix(path))
    try:
        me = jax.process_index()
        arrays = []
        for i, entry in enumerate(entries):
            sig, layout = entry.sig, entry.layout
            shards = []
            for j, (slices, devs) in enumerate(distinct_shards(layout)):
                file = f"{i:04d}-{_safe(sig.name)}.{j}.npy"
                owner = entry.shards[devs[0]]
                if next(iter(owner.devices())).process_index == me:  # each process writes its own
                    local = np.asarray(owner)
                    if tuple(local.shape) != tuple(s.stop - s.start for s in slices):
                        raise AssertionError(f"{sig.name}: device {devs[0]} holds {local.shape}, layout says {slices}")
                    _write_npy(os.path.join(tmp, file), _to_disk(local, sig.dtype))
                shards.append({"file": file, "slices": [[s.start, s.stop] for s in slices], "devices": devs})
            arrays.append({
                "name": sig.name, "role": sig.role, "dims": list(sig.dims), "shape": list(sig.shape),
                "dtype": sig.dtype, "layout": [list(a) for a in layout.axes], "shards": shards,
            })
        index = {"format": FORMAT, "version": VERSION, **meta, "arrays": arrays}
        with open(os.path.join(tmp, INDEX), "w") as f:
            f.write(_index_text(index))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if _before_commit is not None:  # tests: fail between writing and committing
            _before_commit(tmp)
        _commit(tmp, path)
        _fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _index_text(index: dict) -> str:
    """index.json: one line per top-level key, per array and per shard (readable, diffable)."""
    lines = []
    for key, value in index.items():
        if key != "arrays":
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}")
    arrays = []
    for a in index["arrays"]:
        head = json.dumps({k: v for k, v in a.items() if k != "shards"})[:-1]
        shards = ",\n".join(f"      {json.dumps(s)}" for s in a["shards"])
        arrays.append(f"    {head}, \"shards\": [\n{shards}\n    ]}}")
    lines.append('  "arrays": [\n' + ",\n".join(arrays) + "\n  ]")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def _commit(tmp: str, path: str) -> None:
    if not os.path.exists(path):
        os.rename(tmp, path)
        return
    if _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # now holds the previous checkpoint
        return
    # No atomic exchange: move the old checkpoint aside first.  A crash between
    # the two renames leaves it intact under .DIR.old-*, which `load_index` finds.
    old = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=_old_prefix(path))
    os.rmdir(old)
    os.rename(path, old)
    os.rename(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


def resolve(path: str) -> str:
    """The directory holding the checkpoint `path` names (a previous one set
    aside by an interrupted non-atomic save, if `path` itself is missing)."""
    if _is_checkpoint(path):
        return path
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        olds = sorted(glob.glob(os.path.join(parent, glob.escape(_old_prefix(path)) + "*")))
        olds = [o for o in olds if _is_checkpoint(o)]
        if olds:
            return olds[-1]
        raise MtfcError(f"checkpoint {path!r} does not exist")
    raise MtfcError(f"{path!r} is not an mtfc checkpoint (no {INDEX})")


def load_index(path: str) -> dict:
    where = resolve(path)
    try:
        with open(os.path.join(where, INDEX)) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise MtfcError(f"cannot read checkpoint index {os.path.join(where, INDEX)!r}: {e}") from None
    if index.get("format") != FORMAT:
        raise MtfcError(f"{path!r}: {INDEX} is not an mtfc checkpoint index")
    if index.get("version") != VERSION:
        raise MtfcError(f"{path!r}: checkpoint version {index.get('version')} (this mtfc reads version {VERSION})")
    index["_dir"] = where
    return index


def check_matches(index: dict, sigs: list[mir.Signature], path: str) -> None:
    """Fail with one line listing what differs between the checkpoint and the module's state."""
    saved = {a["name"]: a for a in index["arrays"]}
    wanted = {s.name: s for s in sigs}
    problems = []
    for name, sig in wanted.items():
        a = saved.get(name)
        if a is None:
            problems.append(f"{sig.role} {name!r} is not in the checkpoint")
            continue
        if tuple(a["shape"]) != sig.shape:
            problems.append(f"{name!r} has shape {list(a['shape'])} in the checkpoint, {list(sig.shape)} in the module")
        if a["dtype"] != sig.dtype:
            problems.append(f"{name!r} is {a['dtype']} in the checkpoint, {sig.dtype} in the module")
        if a["role"] != sig.role:
            problems.append(f"{name!r} is {a['role']} in the checkpoint, {sig.role} in the module")
    for name in saved:
        if name not in wanted:
            problems.append(f"the checkpoint's {saved[name]['role']} {name!r} is not in the module")
    if problems:
        more = f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        raise MtfcError(f"checkpoint {path!r} does not match the module: {'; '.join(problems[:4])}{more}")


def _read_shard(where: str, array: dict, shard: dict) -> np.ndarray:
    file = os.path.join(where, shard["file"])
    try:
        data = np.load(file, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise MtfcError(f"cannot read checkpoint shard {file!r}: {e}") from None
    want = tuple(b - a for a, b in shard["slices"])
    if tuple(data.shape) != want:
        raise MtfcError(f"checkpoint shard {file!r} has shape {data.shape}, the index says {want}")
    return _from_disk(np.asarray(data), array["dtype"])


def read_global(index: dict, name: str) -> np.ndarray:
    """Reassemble array `name` of a checkpoint on the host."""
    array = next((a for a in index["arrays"] if a["name"] == name), None)
    if array is None:
        raise MtfcError(f"checkpoint has no array {name!r}")
    out = np.empty(array["shape"], dtype=mir.numpy_dtype(array["dtype"]))
    covered = np.zeros(array["shape"], dtype=bool)
    for shard in array["shards"]:
        index_ = tuple(slice(a, b) for a, b in shard["slices"])
        out[index_] = _read_shard(index["_dir"], array, shard)
        covered[index_] = True
    if not covered.all():
        raise MtfcError(f"checkpoint array {name!r}: its shards do not cover the whole array")
    return out


def read_all(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(index, name -> global host array) of a checkpoint."""
    index = load_index(path)
    return index, {a["name"]: read_global(index, a["name"]) for a in index["arrays"]}


def restore_to_devices(index: dict, sig: mir.Signature, layout: TensorLayout, devices: list) -> list:
    """Per-device buffers (mesh order) of array `sig.name` laid out by `layout`:
    a shard file whose block is exactly what a device needs is read directly,
    otherwise the global array is reassembled and cut."""
    array = next(a for a in index["arrays"] if a["name"] == sig.name)
    by_block = {tuple(map(tuple, s["slices"])): s for s in array["shards"]}
    whole = None
    out = []
    for d, device in enumerate(devices):
        slices = layout.shard_slices(d)
        key = tuple((s.start, s.stop) for s in slices)
        if key in by_block:
            host = _read_shard(index["_dir"], array, by_block[key])
        else:
            if whole is None:
                whole = read_global(index, sig.name)
            host = whole[slices]
        out.append(jax.device_put(np.array(host, order="C"), device))
    return out


def global_array(shards: list, layout: TensorLayout, devices: list) -> jax.Array:
    """A global jax.Array over `devices` from per-device buffers (no copies)."""
    return jax.make_array_from_single_device_arrays(tuple(layout.sizes), jax_sharding(layout, devices), shards)
