"""Collective, sharded checkpoints of a training run's state (parameters and optimizer state).

A checkpoint is a directory (docs/checkpoints.md)::

    DIR/index.json     mtfc's metadata: model, step, optimizer, seed, mesh,
                       layouts, data source and position, and per array its
                       role, dims, shape, dtype, layout and the sha256 of each
                       distinct block (`index.py`)
    DIR/state/         the arrays: an orbax-checkpoint PyTree (OCDBT), one
                       leaf per array at its name split at "/" (`store.py`)

Every process of a job calls `save` (and `restore`) with the same arguments.
Saving: process 0 takes the lock (one saver per DIR) and makes the temporary
``.DIR.tmp-*`` (`swap.py`); each process checks and digests the blocks it
owns (the first device holding a block, in mesh order, owns it) and orbax
writes them; orbax commits ``state/`` after its barrier (every process done,
waited for at most `timeout` s); process 0 writes ``index.json`` and swaps
the temporary with DIR; the others wait for that.  A save that fails or is
killed in any process leaves DIR as it was.  bf16 stays bf16 throughout.

Restoring checks the index, the stored dtypes and shapes (no conversion) and
reads the arrays onto any mesh, layout and process count: each process reads
the blocks its devices need and checks the digests of the saved blocks they
overlap.  Checkpoints of versions 1 and 2 (mtfc's earlier ``.npy`` shards)
are still read.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass

import jax
import numpy as np

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import TensorLayout
from mtfc.runtime.checkpoint import npy, store, swap
from mtfc.runtime.checkpoint.group import Group
from mtfc.runtime.checkpoint.index import (FORMAT, INDEX, READS, STATE, VERSION, check_matches, distinct_shards,
                                           index_text, is_checkpoint, load_index, resolve, tree_keys,
                                           validate_index)
from mtfc.runtime.host_data import jax_sharding, shard_to_devices

__all__ = ["FORMAT", "INDEX", "READS", "STATE", "VERSION", "Entry", "NotFinite", "check_matches",
           "distinct_shards", "load_index", "read_all", "resolve", "restore", "save",
           "validate_index", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 300.0  # seconds; MTFC_CHECKPOINT_TIMEOUT overrides


def default_timeout() -> float:
    """How long a process waits for the others at each step of a collective save
    (``MTFC_CHECKPOINT_TIMEOUT`` seconds, 300 by default)."""
    text = os.environ.get("MTFC_CHECKPOINT_TIMEOUT")
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 and math.isfinite(value)):
        raise MtfcError(f"MTFC_CHECKPOINT_TIMEOUT={text!r} is not a number of seconds > 0")
    return value


@dataclass
class Entry:
    """One array to save: its signature, layout, and the global jax.Array laid
    out by `layout` (in a multi-process job it holds this process's shards only)."""

    sig: mir.Signature
    layout: TensorLayout
    array: jax.Array


class NotFinite(MtfcError):
    """A float array to save holds NaN or infinity (nothing was saved)."""

    def __init__(self, name: str):
        super().__init__(f"{name} holds values that are not finite")
        self.name = name


# -- saving ----------------------------------------------------------------------------------------


def save(path: str, entries: list[Entry], meta: dict, *, timeout: float | None = None, _before_commit=None) -> None:
    """Write `entries` as a checkpoint at `path`, atomically replacing any checkpoint there.

    Collective: every process calls it with the same `path` and arrays.  A
    float array holding NaN or infinity is never saved (`NotFinite`, raised in
    every process).  A file-system error (a full disk, no permission) or a
    process that does not arrive within `timeout` s ends as one `MtfcError`
    line naming `path`; either way the previous checkpoint is intact and no
    temporary of this save is left."""
    shown = str(path)
    path = os.path.normpath(os.path.abspath(path))
    group = Group(shown, default_timeout() if timeout is None else timeout)
    lock = swap.SaveLock(path, shown)
    tmp = None
    try:
        # 1. process 0: check DIR, lock it, make the temporary; the others learn how that went
        problem = None
        if group.index == 0:
            try:
                _check_target(path)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                lock.acquire()
                tmp = swap.make_temporary(path)
            except MtfcError as e:
                problem = str(e)
            except OSError as e:
                problem = f"{shown}: {e.strerror or e}"
        tmp_shared, problem = group.first("start", [tmp, problem], "start the save")
        if problem:
            raise MtfcError(problem)
        tmp = tmp_shared
        # 2. every process: check and digest the blocks it owns
        keys = tree_keys([e.sig.name for e in entries], f"{shown}: saving")
        failure = None
        try:
            local = _own_blocks(entries)
        except BaseException as e:  # the others must not wait for this process: tell them, then raise
            failure, local = e, {"error": f"process {group.index}: {type(e).__name__}: {e}"}
        reports = group.share("blocks", local, "check its blocks")
        if failure is not None:
            raise failure
        error = next((r["error"] for r in reports if "error" in r), None)
        if error:
            raise MtfcError(f"{shown}: the save failed in {error}")
        bad = next((r["not_finite"] for r in reports if r["not_finite"]), None)
        if bad:
            raise NotFinite(bad)
        digests = [{} for _ in entries]
        for r in reports:
            for i, block in r["digests"]:
                digests[i][block] = r["digests_of"][f"{i}/{block}"]
        # 3. orbax writes every process's shards and commits state/ after its barrier
        try:
            store.write(os.path.join(tmp, STATE), {keys[e.sig.name]: e.array for e in entries}, group.timeout)
        except TimeoutError:
            raise MtfcError(f"{shown}: not every process finished writing within {group.timeout:g} s "
                            "(MTFC_CHECKPOINT_TIMEOUT); the previous checkpoint is kept") from None
        except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise ValueError, OSError, ...
            if store.not_an_orbax_error(e):
                raise
            raise MtfcError(f"{shown}: {store.message(e)}") from None
        # 4. process 0: the index, then the swap; the others wait for it
        done = None
        if group.index == 0:
            try:
                _finish(tmp, path, entries, digests, meta, group.count, _before_commit)
                tmp = None
            except OSError as e:
                done = f"{shown}: {e.strerror or e}"
        done = group.first("commit", done, "commit the checkpoint")
        if done:
            raise MtfcError(done)
    except OSError as e:
        raise MtfcError(f"{shown}: {e.strerror or e}") from None
    finally:
        if group.index == 0:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            lock.release()


def _check_target(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise MtfcError(f"checkpoint path {path!r} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not is_checkpoint(path):
        raise MtfcError(f"{path!r} is a non-empty directory that is not an mtfc checkpoint; refusing to replace it")


def _own_blocks(entries: list[Entry]) -> dict:
    """The digests of the blocks whose owner device is this process's, and the
    first array (if any) whose owned blocks are not finite (JSON for `Group.share`)."""
    out = {"not_finite": None, "digests": [], "digests_of": {}}
    for i, entry in enumerate(entries):
        sig, layout = entry.sig, entry.layout
        mesh_devices = list(np.asarray(entry.array.sharding.mesh.devices).reshape(-1)) \
            if hasattr(entry.array.sharding, "mesh") else list(entry.array.sharding.device_set)
        local = {s.device: s for s in entry.array.addressable_shards}
        for j, (slices, devs) in enumerate(distinct_shards(layout)):
            owner = local.get(mesh_devices[devs[0]])
            if owner is None:
                continue
            data = np.asarray(owner.data)
            if tuple(data.shape) != tuple(s.stop - s.start for s in slices):
                raise AssertionError(f"{sig.name}: device {devs[0]} holds {data.shape}, layout says {slices}")
            if sig.dtype in ("f32", "f16", "bf16") and out["not_finite"] is None and not np.isfinite(data).all():
                out["not_finite"] = sig.name
            out["digests"].append([i, j])
            out["digests_of"][f"{i}/{j}"] = npy.digest(data)
    return out


def _finish(tmp: str, path: str, entries: list[Entry], digests: list[dict], meta: dict, processes: int,
            before_commit) -> None:
    """Process 0, once orbax committed: write index.json, flush, swap into place."""
    arrays = []
    for i, entry in enumerate(entries):
        sig, layout = entry.sig, entry.layout
        shards = [{"slices": [[s.start, s.stop] for s in slices], "devices": devs, "sha256": digests[i][j]}
                  for j, (slices, devs) in enumerate(distinct_shards(layout))]
        arrays.append({"name": sig.name, "role": sig.role, "dims": list(sig.dims), "shape": list(sig.shape),
                       "dtype": sig.dtype, "layout": [list(a) for a in layout.axes], "shards": shards})
    index = {"format": FORMAT, "version": VERSION, **meta, "processes": processes, "arrays": arrays}
    with open(os.path.join(tmp, INDEX), "w") as f:
        f.write(index_text(index))
    swap.fsync_tree(tmp)
    if before_commit is not None:  # tests: fail between writing and committing
        before_commit(tmp)
    swap.commit(tmp, path)


# -- restoring -------------------------------------------------------------------------------------


def restore(index: dict, targets: list[tuple[mir.Signature, TensorLayout]], devices: list) -> dict[str, jax.Array]:
    """Array name -> global jax.Array laid out by its target layout over
    `devices` (the mesh's devices in mesh order), from the checkpoint `index`
    describes (`load_index`; `check_matches` first).  Each process reads the
    blocks of its own devices, checked against the saved digests."""
    if index["version"] in (1, 2):
        return {sig.name: shard_to_devices(npy.read_global(index, sig.name), layout, devices) for sig, layout in targets}
    where = index["_dir"]
    state = os.path.join(os.path.abspath(where), STATE)
    saved = {a["name"]: a for a in index["arrays"]}
    keys = tree_keys(saved, f"{where}: {INDEX}")
    with store.errors_as(f"cannot read checkpoint {where!r}: {STATE}/"):
        kinds = store.stored(state)
    wanted = {}
    for sig, layout in targets:
        array = saved[sig.name]
        found = kinds.get(keys[sig.name])
        if found is None:
            raise MtfcError(f"checkpoint {where!r}: array {sig.name!r} is in {INDEX} but not in {STATE}/")
        want = np.dtype(mir.numpy_dtype(array["dtype"]))
        if found[1] != want or found[0] != tuple(array["shape"]):
            raise MtfcError(f"checkpoint {where!r}: array {sig.name!r} is stored as {found[1]} {list(found[0])}, "
                            f"{INDEX} says {array['dtype']} {array['shape']}")
        wanted[keys[sig.name]] = jax.ShapeDtypeStruct(tuple(array["shape"]), want,
                                                      sharding=jax_sharding(layout, devices))
    with store.errors_as(f"cannot read checkpoint {where!r}"):
        arrays = store.read(state, wanted)
    out = {}
    for sig, _ in targets:
        out[sig.name] = arrays[keys[sig.name]]
        _verify(where, state, saved[sig.name], keys[sig.name], out[sig.name])
    return out


def _verify(where: str, state: str, array: dict, keys: tuple[str, ...], restored: jax.Array) -> None:
    """Check the sha256 of every saved block that this process's shards of
    `restored` overlap (a block inside one shard is cut from it; one that is
    not is read from the checkpoint)."""
    local = []
    for s in restored.addressable_shards:
        bounds = tuple((sl.start or 0, n if sl.stop is None else sl.stop) for sl, n in zip(s.index, restored.shape))
        local.append((bounds, s))
    for block in array["shards"]:
        lo_hi = [tuple(r) for r in block["slices"]]
        overlapping = [(b, s) for b, s in local if all(max(x[0], y[0]) < min(x[1], y[1]) or x[0] == x[1]
                                                         for x, y in zip(lo_hi, b))]
        if not overlapping:
            continue
        inside = next(((b, s) for b, s in overlapping if all(y[0] <= x[0] and x[1] <= y[1] for x, y in zip(lo_hi, b))),
                      None)
        if inside is not None:
            b, s = inside
            data = np.asarray(s.data)[tuple(slice(x[0] - y[0], x[1] - y[0]) for x, y in zip(lo_hi, b))]
        else:
            try:
                data = store.read_block(state, keys, tuple(slice(a, b) for a, b in lo_hi))
            except Exception as e:  # noqa: BLE001
                raise MtfcError(f"cannot read checkpoint {where!r}: {store.message(e)}") from None
        if npy.digest(data) != block["sha256"]:
            raise MtfcError(f"checkpoint {where!r}: array {array['name']!r}, block {block['slices']} is corrupt "
                            "(its sha256 differs from the index's)")


def read_all(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(index, name -> global host array) of a checkpoint, read on this process's first device."""
    index = load_index(path)
    if index["version"] in (1, 2):
        return index, {a["name"]: npy.read_global(index, a["name"]) for a in index["arrays"]}
    from mtfc.mesh import Mesh

    device, one = jax.local_devices()[0], Mesh(())
    targets = [(mir.Signature(k, a["name"], a["role"], list(a["dims"]), tuple(a["shape"]), a["dtype"]),
                TensorLayout(tuple(a["dims"]), tuple(a["shape"]), tuple(() for _ in a["dims"]), one))
               for k, a in enumerate(index["arrays"])]
    arrays = restore(index, targets, [device])
    return index, {name: np.asarray(a) for name, a in arrays.items()}
