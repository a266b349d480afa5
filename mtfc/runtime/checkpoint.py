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

    {"format": "mtfc.checkpoint", "version": 2, "step": 10,
     "model": "mlp_train", "optimizer": "sgd:lr=0.1", "seed": 0,
     "mesh": "rows:2,cols:4", "layout": "batch:rows", "param_layout": "...",
     "partitioning": "gspmd", "data": {...},
     "arrays": [{"name": "params/w1", "role": "parameter",
                 "dims": ["d_in", "d_hidden"], "shape": [8, 32], "dtype": "f32",
                 "layout": [[], ["cols"]],
                 "shards": [{"file": "0000-params.w1.0.npy",
                             "slices": [[0, 8], [0, 8]], "devices": [0, 4],
                             "sha256": "9f86d0..."}, ...]}]}

``layout`` gives the mesh axes splitting each dim, ``slices`` the global
index range of a shard (start, stop per dim), ``devices`` the mesh devices
that held it, ``sha256`` the digest of the shard's data bytes (C order, as
stored).  bf16 arrays are stored as their uint16 bit patterns.

Saving is atomic and exclusive: the saver holds ``flock`` on ``.DIR.lock``
next to DIR (holding its pid; a second run saving to DIR at the same time
fails with an error naming it), writes everything under
``.DIR.tmp-HOST-PID-*``, flushes it, and swaps it into place
(``renameat2(RENAME_EXCHANGE)`` on Linux, else two renames); an interrupted
or failed save (a full disk) leaves the previous checkpoint as it was.
Files and directories get the user's umask.

Restoring validates the index (types, a step >= 0, shard blocks that tile
each array exactly), checks each shard's dtype (no conversion) and digest,
and reassembles each array from its shards (reading a shard file directly
when the new layout wants exactly that block), so a checkpoint restores onto
any mesh and layout of the same model.  Version 1 checkpoints (no digests)
are still read.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass

import jax
import numpy as np

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import TensorLayout
from mtfc.runtime.host_data import jax_sharding

FORMAT = "mtfc.checkpoint"
VERSION = 2
READS = (1, 2)  # version 1: no per-shard sha256
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


def _disk_dtype(dtype: str) -> np.dtype:
    """The numpy dtype a shard of an mtfc `dtype` array is stored as."""
    return np.dtype(np.uint16) if dtype == "bf16" else np.dtype(mir.numpy_dtype(dtype))


def _from_disk(array: np.ndarray, dtype: str) -> np.ndarray:
    """The stored shard as an array of `dtype` (bf16: a view of its bit patterns; no conversion)."""
    return array.view(np.dtype(mir.numpy_dtype(dtype))) if dtype == "bf16" else array


def _digest(array: np.ndarray) -> str:
    """sha256 of an array's data bytes in C order."""
    return hashlib.sha256(memoryview(np.asarray(array, order="C")).cast("B")).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


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


class _Writes:
    """A file seen by numpy as a plain stream: numpy then writes through
    `write` (which raises OSError with its errno on a full disk) instead of
    ``ndarray.tofile`` (whose short writes raise OSError without one)."""

    def __init__(self, f):
        self.write = f.write


def _write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.lib.format.write_array(_Writes(f), np.asarray(array, order="C"), allow_pickle=False)
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


def _owner_tag() -> str:
    """HOST-PID of this process, as a temporary directory's name carries it."""
    return f"{_safe(socket.gethostname()).replace('-', '.')}-{os.getpid()}-"


def _owner_alive(name: str, prefix: str) -> bool:
    """Whether the temporary `name` (``PREFIX HOST-PID-RANDOM``) belongs to a live
    process of this host other than this one (temporaries of other hosts count as live)."""
    rest = name[len(prefix):].split("-")
    if len(rest) < 3 or not rest[1].isdigit():
        return False  # an older mtfc's temporary, or a stray: no owner to wait for
    host, pid = rest[0], int(rest[1])
    if host != _safe(socket.gethostname()).replace("-", "."):
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_path(path: str) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


class _SaveLock:
    """Exclusive ``flock`` on ``.DIR.lock`` next to the checkpoint for the length
    of one save; the file holds the saver's pid and is removed when done.

    The holder unlinks the file before unlocking, so a process that locked a
    file since unlinked retries on the new one (inode check)."""

    def __init__(self, path: str, shown: str):
        self.file = _lock_path(path)
        self.shown = shown
        self.fd = -1

    def __enter__(self):
        for _ in range(100):
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip()
                os.close(fd)
                who = f" (pid {holder})" if holder.isdigit() else ""
                raise MtfcError(f"{self.shown}: another mtfc run{who} is saving here") from None
            try:
                same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self.fd = fd
                return self
            os.close(fd)
        raise AssertionError(f"could not lock {self.file}")

    def __exit__(self, *exc):
        try:
            os.unlink(self.file)
        except FileNotFoundError:
            pass
        os.close(self.fd)
        return False


def _old_prefix(path: str) -> str:
    return f".{os.path.basename(os.path.normpath(path))}.old-"


class NotFinite(MtfcError):
    """A float array to save holds NaN or infinity (nothing was saved)."""

    def __init__(self, name: str):
        super().__init__(f"{name} holds values that are not finite")
        self.name = name


def save(path: str, entries: list[Entry], meta: dict, *, _before_commit=None) -> None:
    """Write `entries` as a checkpoint at `path`, atomically replacing any checkpoint there.

    A float array holding NaN or infinity is never saved (`NotFinite`: a
    checkpoint is always one to resume from).  A file-system error (a full
    disk, no permission) ends as one `MtfcError` line naming `path`; either
    way the previous checkpoint is intact and no temporary is left."""
    shown = str(path)
    path = os.path.normpath(os.path.abspath(path))
    parent = os.path.dirname(path)
    try:
        if os.path.exists(path) and not os.path.isdir(path):
            raise MtfcError(f"checkpoint path {path!r} exists and is not a directory")
        if os.path.isdir(path) and os.listdir(path) and not _is_checkpoint(path):
            raise MtfcError(f"{path!r} is a non-empty directory that is not an mtfc checkpoint; "
                            "refusing to replace it")
        os.makedirs(parent, exist_ok=True)
        with _SaveLock(path, shown):
            _save_locked(path, entries, meta, _before_commit)
    except OSError as e:
        raise MtfcError(f"{shown}: {e.strerror or e}") from None


def _save_locked(path: str, entries: list[Entry], meta: dict, _before_commit) -> None:
    """`save`'s work, with the save lock held."""
    parent = os.path.dirname(path)
    prefix = _temp_prefix(path)
    # Left-overs of a save that was killed (never a live checkpoint, never a live save's).
    for stale in glob.glob(os.path.join(parent, glob.escape(prefix) + "*")):
        if not _owner_alive(os.path.basename(stale), prefix):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=prefix + _owner_tag())
    try:
        mask = _umask()
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes it 0700
        me = jax.process_index()
        arrays = []
        for i, entry in enumerate(entries):
            sig, layout = entry.sig, entry.layout
            shards = []
            for j, (slices, devs) in enumerate(distinct_shards(layout)):
                file = f"{i:04d}-{_safe(sig.name)}.{j}.npy"
                owner = entry.shards[devs[0]]
                shard = {"file": file, "slices": [[s.start, s.stop] for s in slices], "devices": devs}
                if next(iter(owner.devices())).process_index == me:  # each process writes its own
                    local = np.asarray(owner)
                    if tuple(local.shape) != tuple(s.stop - s.start for s in slices):
                        raise AssertionError(f"{sig.name}: device {devs[0]} holds {local.shape}, layout says {slices}")
                    if sig.dtype in ("f32", "f16", "bf16") and not np.isfinite(local).all():
                        raise NotFinite(sig.name)
                    stored = _to_disk(local, sig.dtype)
                    _write_npy(os.path.join(tmp, file), stored)
                    shard["sha256"] = _digest(stored)
                shards.append(shard)
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
    """The validated index of the checkpoint `path` names (`validate_index`),
    with ``_dir`` set to the directory holding it."""
    where = resolve(path)
    file = os.path.join(where, INDEX)
    try:
        with open(file) as f:
            index = json.load(f)
    except (OSError, ValueError) as e:
        raise MtfcError(f"cannot read checkpoint index {file!r}: {e}") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise MtfcError(f"{path!r}: {INDEX} is not an mtfc checkpoint index")
    if index.get("version") not in READS:
        raise MtfcError(f"{path!r}: checkpoint version {index.get('version')} "
                        f"(this mtfc reads versions {', '.join(map(str, READS))})")
    validate_index(index, f"{path}: {INDEX}")
    index["_dir"] = where
    return index


_META_TYPES = {"model": str, "optimizer": (str, type(None)), "mesh": str, "layout": str, "param_layout": str,
               "partitioning": str, "seed": (int, type(None)), "data": dict}
_ARRAY_FIELDS = {"name": str, "role": str, "dims": list, "shape": list, "dtype": str, "layout": list, "shards": list}
_SHARD_FIELDS = {"file": str, "slices": list, "devices": list}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _need_fields(obj, fields: dict, what: str) -> None:
    if not isinstance(obj, dict):
        raise MtfcError(f"{what} is a {type(obj).__name__}, not an object")
    for key, kind in fields.items():
        if key not in obj:
            raise MtfcError(f"{what} has no {key!r}")
        if not isinstance(obj[key], kind) or isinstance(obj[key], bool):
            raise MtfcError(f"{what}: {key!r} is {json.dumps(obj[key])}, not a {kind.__name__}")


def validate_index(index: dict, where: str) -> None:
    """Fail with one line naming the field unless `index` is well-formed: a step
    >= 0, the documented fields with their types, known dtypes, shard files
    inside the checkpoint, and shard blocks that lie in the array and cover it
    exactly once (`where` prefixes the message)."""
    if "step" not in index:
        raise MtfcError(f"{where} has no 'step'")
    if not _is_int(index["step"]) or index["step"] < 0:
        raise MtfcError(f"{where}: 'step' is {json.dumps(index['step'])}, not a number of steps (an integer >= 0)")
    for key, kind in _META_TYPES.items():
        if key in index and (not isinstance(index[key], kind) or isinstance(index[key], bool)):
            raise MtfcError(f"{where}: {key!r} is {json.dumps(index[key])}, of the wrong type")
    if not isinstance(index.get("arrays"), list):
        raise MtfcError(f"{where} has no list of 'arrays'")
    names = set()
    for k, array in enumerate(index["arrays"]):
        _need_fields(array, _ARRAY_FIELDS, f"{where}: array #{k}")
        what = f"{where}: array {array['name']!r}"
        if array["name"] in names:
            raise MtfcError(f"{what} appears twice")
        names.add(array["name"])
        shape = array["shape"]
        if not all(_is_int(n) and n >= 0 for n in shape) or len(array["dims"]) != len(shape):
            raise MtfcError(f"{what}: shape {json.dumps(shape)} is not {len(array['dims'])} sizes >= 0 (one per dim)")
        try:
            mir.numpy_dtype(array["dtype"])
        except (KeyError, ValueError):
            raise MtfcError(f"{what}: unknown dtype {array['dtype']!r}") from None
        _validate_shards(array, shape, what, index.get("version") != 1)


def _validate_shards(array: dict, shape: list, what: str, digests: bool) -> None:
    blocks = []
    for j, shard in enumerate(array["shards"]):
        _need_fields(shard, _SHARD_FIELDS, f"{what}: shard #{j}")
        file, slices = shard["file"], shard["slices"]
        if os.path.basename(file) != file or file in ("", ".", "..") or file == INDEX:
            raise MtfcError(f"{what}: shard #{j}: file {file!r} is not a shard file name inside the checkpoint")
        ok = len(slices) == len(shape) and all(
            isinstance(r, list) and len(r) == 2 and _is_int(r[0]) and _is_int(r[1]) and 0 <= r[0] <= r[1] <= n
            for r, n in zip(slices, shape))
        if not ok:
            raise MtfcError(f"{what}: shard {file!r} has slices {json.dumps(slices)}, "
                            f"outside the array's shape {json.dumps(shape)}")
        if digests and not (isinstance(shard.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", shard["sha256"])):
            raise MtfcError(f"{what}: shard {file!r} has no sha256 digest")
        blocks.append((file, [tuple(r) for r in slices]))
    for a in range(len(blocks)):
        for b in range(a + 1, len(blocks)):
            (fa, ra), (fb, rb) = blocks[a], blocks[b]
            if all(max(x[0], y[0]) < min(x[1], y[1]) for x, y in zip(ra, rb)):
                raise MtfcError(f"{what}: shards {fa!r} and {fb!r} overlap")
    volume = sum(int(np.prod([hi - lo for lo, hi in r])) for _, r in blocks)
    if volume != int(np.prod(shape)):
        raise MtfcError(f"{what}: its shards cover {volume} of its {int(np.prod(shape))} values")


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
    if "sha256" in shard and _digest(host) != shard["sha256"]:
        raise MtfcError(f"checkpoint shard {file!r} of array {array['name']!r} is corrupt "
                        "(its sha256 differs from the index's)")
    return _from_disk(host, array["dtype"])


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
    read: dict[tuple, np.ndarray] = {}  # each shard file is read (and its digest checked) once
    out = []
    for d, device in enumerate(devices):
        slices = layout.shard_slices(d)
        key = tuple((s.start, s.stop) for s in slices)
        if key in by_block:
            if key not in read:
                read[key] = _read_shard(index["_dir"], array, by_block[key])
            host = read[key]
        else:
            if whole is None:
                whole = read_global(index, sig.name)
            host = whole[slices]
        out.append(jax.device_put(np.array(host, order="C"), device))
    return out


def global_array(shards: list, layout: TensorLayout, devices: list) -> jax.Array:
    """A global jax.Array over `devices` from per-device buffers (no copies)."""
    return jax.make_array_from_single_device_arrays(tuple(layout.sizes), jax_sharding(layout, devices), shards)
