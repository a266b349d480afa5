"""The arrays of a checkpoint, as an orbax-checkpoint PyTree under ``DIR/state``.

orbax (with tensorstore's OCDBT and zarr underneath) writes each array's
distinct shards once, each from the process whose device holds its first
replica, into that process's ``ocdbt.process_N/`` database, and commits
(renames its own temporary to ``state/``) on process 0 only after every
process has reached its ``async_write_complete`` barrier, a jax.distributed
barrier that waits at most the save's timeout.  Reading gives each process
the blocks of the target sharding's addressable devices.

orbax is imported here only, when a checkpoint is written or read.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

import jax
import numpy as np

from mtfc.errors import MtfcError


def nest(values: dict[tuple[str, ...], object]) -> dict:
    """A nested dict (orbax's tree) from leaf paths."""
    tree: dict = {}
    for keys, value in values.items():
        node = tree
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return tree


def _leaf(tree: dict, keys: tuple[str, ...]):
    for k in keys:
        tree = tree[k]
    return tree


_STATUS = re.compile(r"\b(DATA_LOSS|FAILED_PRECONDITION|NOT_FOUND|INVALID_ARGUMENT|RESOURCE_EXHAUSTED|"
                     r"PERMISSION_DENIED|UNAVAILABLE|INTERNAL|OUT_OF_RANGE|ABORTED|UNKNOWN): ")


def message(e: BaseException) -> str:
    """One line from an orbax / tensorstore error: the OS error when there is
    one, else tensorstore's status line (orbax wraps it), else the first line;
    without the tensorstore spec it appends."""
    chain = []
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    texts = [str(x) for x in chain]
    for text in texts:
        code = re.search(r"os_error_code='?(\d+)", text)
        if code:
            return os.strerror(int(code.group(1)))
    text = next((t for t in texts if _STATUS.search(t)), texts[0])
    if _STATUS.search(text):
        text = text[_STATUS.search(text).start():]
    text = re.sub(r"\s*\[(tensorstore_spec|source locations)=.*$", "", text, flags=re.S)
    return next((line.strip() for line in text.splitlines() if line.strip()), type(chain[0]).__name__)


@contextlib.contextmanager
def quiet():
    """Keep orbax's and tensorstore's own reports of a failure (absl ERROR lines,
    tracebacks from its threads) off stderr: the caller turns the failure into
    one line.  With ``MTFC_TRACEBACK`` set they are shown."""
    if os.environ.get("MTFC_TRACEBACK"):
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(Exception):
                    sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def _drop_late_callbacks() -> None:
    """After a failed write, tensorstore completes the writes still in flight
    and calls back into the event loop orbax has closed by then; Python reports
    each as an unraisable ``RuntimeError('Event loop is closed')``, possibly
    after the save has returned.  Those (and only those) are dropped."""
    previous = sys.unraisablehook
    if getattr(previous, "_mtfc", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
            return
        previous(unraisable)

    hook._mtfc = True
    sys.unraisablehook = hook


def write(state: str, arrays: dict[tuple[str, ...], jax.Array], timeout: float) -> None:
    """Write `arrays` (leaf path -> global jax.Array) as the orbax checkpoint
    `state` (which must not exist), from every process; returns once orbax has
    committed it.  Raises TimeoutError when a process did not finish writing
    within `timeout` seconds, ValueError / OSError for a failed write."""
    import orbax.checkpoint as ocp

    _drop_late_callbacks()
    processes = jax.process_count()
    options = ocp.options.MultiprocessingOptions(
        # all processes named: orbax's barriers are then jax.distributed ones, with timeouts
        active_processes=set(range(processes)) if processes > 1 else None,
        barrier_sync_key_prefix=f"mtfc-{os.path.basename(os.path.dirname(state))}",
    )
    saver = ocp.AsyncCheckpointer(ocp.PyTreeCheckpointHandler(), multiprocessing_options=options,
                                  async_options=ocp.options.AsyncOptions(timeout_secs=max(1, int(timeout))))
    with quiet():
        try:
            saver.save(state, args=ocp.args.PyTreeSave(nest(arrays)))
            saver.wait_until_finished()
        finally:
            saver.close()


def stored(state: str) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    """Leaf path -> (shape, dtype) of the arrays orbax stored in `state`."""
    import orbax.checkpoint as ocp
    from etils import epath

    with quiet():
        meta = ocp.PyTreeCheckpointHandler().metadata(epath.Path(state))
    tree = meta.tree if hasattr(meta, "tree") else meta
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "dtype"))[0]:
        out[tuple(str(getattr(p, "key", p)) for p in path)] = (tuple(leaf.shape), np.dtype(leaf.dtype))
    return out


def read(state: str, targets: dict[tuple[str, ...], jax.ShapeDtypeStruct]) -> dict[tuple[str, ...], jax.Array]:
    """The arrays at `targets`' leaf paths, each laid out by its target's sharding
    (each process reads the blocks of its addressable devices; no dtype conversion:
    the targets' dtypes are the stored ones)."""
    import orbax.checkpoint as ocp
    from etils import epath

    tree = nest(targets)
    restore_args = jax.tree.map(lambda t: ocp.ArrayRestoreArgs(sharding=t.sharding, global_shape=t.shape,
                                                               dtype=t.dtype), tree)
    with quiet():
        out = ocp.PyTreeCheckpointHandler().restore(epath.Path(state),
                                                    args=ocp.args.PyTreeRestore(item=tree, restore_args=restore_args))
    return {keys: _leaf(out, keys) for keys in targets}


def read_block(state: str, keys: tuple[str, ...], slices: tuple[slice, ...]) -> np.ndarray:
    """One block of one stored array, read with tensorstore (the zarr array orbax
    keeps in its OCDBT database under the leaf path joined with ``.``)."""
    import tensorstore as ts

    spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": "file://" + os.path.abspath(state),
                                          "path": ".".join(keys) + "/"}}
    with quiet():
        store = ts.open(spec, open=True, read=True).result()
        return np.asarray(store[slices].read().result())


@contextlib.contextmanager
def errors_as(prefix: str):
    """Turn an error of orbax or tensorstore inside the block into one
    `MtfcError` line, ``PREFIX: why``; ours pass through unchanged."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 - orbax / tensorstore raise ValueError, OSError, ...
        if not_an_orbax_error(e):
            raise
        raise MtfcError(f"{prefix}: {message(e)}") from None


def not_an_orbax_error(e: BaseException) -> bool:
    """Whether `e` is one of ours (to pass through unchanged)."""
    return isinstance(e, (MtfcError, KeyboardInterrupt, SystemExit))
