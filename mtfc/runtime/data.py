"""Batches for the training loop: one `HostSource` per `input` argument per step.

Step ``k`` (counted from 0 over the whole run, restores included, so a resumed
run reads the same batches as an uninterrupted one) gets:

* **synthetic** (no ``--data``): every input synthesized from its
  ``mtfc.init``, seeded by ``(seed, k, mtfc.name)`` and the global position
  (`mtfc.runtime.synthetic`);
* **``--data FILE.npz``**: arrays named like the inputs.  Either all arrays
  have a leading *step* axis, ``(S, *input shape)``, and step ``k`` takes
  slice ``k mod S``; or all have a leading *example* axis, ``(E, *input
  shape[1:])``, and step ``k`` takes the consecutive examples
  ``[b*B, (b+1)*B)`` with ``B`` the input's first (batch) dim and ``b = k mod
  floor(E / B)`` (a trailing partial batch is never used).  Inputs the file
  lacks are synthesized as above;
* **``--data FILE.npy``**: a 1-D integer token stream, for inputs named
  ``tokens`` (and optionally ``targets``) of dims ``[batch, length]``: the
  stream is cut into windows ``w = 0, 1, ...`` starting at ``w * length``;
  row ``j`` of step ``k`` reads window ``(k * batch + j) mod W`` (``W`` the
  number of whole windows), ``tokens = stream[s : s + length]`` and
  ``targets = stream[s + 1 : s + length + 1]`` (shifted by one).  Other
  inputs are synthesized.

A batch is a source, not an array: feeding asks it only for the blocks of
this process's devices, and a block reads only its rows of the file (the
file is memory-mapped, `mtfc.runtime.file_sources`).

Every array a file gives is checked when the file is opened, whole, in every
process (`check_dtype`, `check_values`; a pass over the memory map in bounded
chunks): complex, string and object arrays are errors, integers must fit the
input's dtype, and an input with ``mtfc.range`` (an index into a dim,
`mtfc.index_ranges`) must lie in its range -- the error names the file, the
array or input, the first bad value and its position.  So a file that is bad
anywhere fails before the first step in every process with the same line,
whichever rows each process goes on to read.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.index_ranges import IndexRange
from mtfc.runtime.file_sources import FileSource, TokenWindowSource, open_npy, open_npz
from mtfc.runtime.sources import HostSource
from mtfc.runtime.synthetic import SyntheticSource


def _leaf(name: str) -> str:
    return name.rsplit("/", 1)[-1]


_NOT_NUMBERS = {"c": "a complex", "U": "a string", "S": "a byte string", "O": "an object", "V": "a structured",
                "M": "a datetime", "m": "a timedelta"}
_CHUNK = 1 << 22  # values checked at a time (bounded memory for large token streams)


def check_dtype(what: str, array: np.ndarray) -> None:
    """Fail unless `array` holds real numbers, integers or booleans (`what` names it)."""
    kind = _NOT_NUMBERS.get(array.dtype.kind)
    if kind is not None:
        raise MtfcError(f"{what} is {kind} array ({array.dtype}); inputs are real numbers, integers or booleans")


def _first_bad(array: np.ndarray, lo: int, hi: int) -> int | None:
    """The flat (C-order) index of the first value of `array` outside [lo, hi),
    or None; reads `array` (a memory map, say) a run of leading rows at a time."""
    if array.ndim == 0:
        array = array.reshape(1)
    per_row = math.prod(array.shape[1:])
    rows = max(1, _CHUNK // max(per_row, 1))
    for start in range(0, array.shape[0], rows):
        chunk = np.asarray(array[start:start + rows]).reshape(-1)
        bad = (chunk < lo) | (chunk >= hi)
        if bad.any():
            return start * per_row + int(np.argmax(bad))
    return None


def _position(array: np.ndarray, flat: int) -> str:
    if array.ndim == 1:
        return f"position {flat}"
    return f"index {tuple(int(i) for i in np.unravel_index(flat, array.shape))}"


def check_values(what: str, array: np.ndarray, sig: mir.Signature, index_range: IndexRange | None,
                 *, value_word: str = "value") -> None:
    """Fail unless the integers of `array` (given for input `sig`) fit its dtype and
    lie in `index_range`; the error names `what`, the first bad value and its position."""
    if array.dtype.kind not in "iu" or array.size == 0:
        return
    target = np.dtype(mir.numpy_dtype(sig.dtype))
    bounds = []
    if index_range is not None:
        bounds.append((index_range.lo, index_range.hi,
                       f"(the size of dim {index_range.dim!r}, which input {sig.name!r} indexes)"))
    if target.kind in "iu":
        info = np.iinfo(target)
        bounds.append((int(info.min), int(info.max) + 1, f"(input {sig.name!r} is {sig.dtype})"))
    for lo, hi, why in bounds:
        flat = _first_bad(array, lo, hi)
        if flat is not None:
            value = array[np.unravel_index(flat, array.shape)] if array.ndim else array[()]
            raise MtfcError(f"{what}: {value_word} {value} at {_position(array, flat)} is outside [{lo}, {hi}) {why}")


def cast_dtype(dtype: np.dtype, sig: mir.Signature, what: str) -> np.dtype:
    """The dtype an array of `dtype` given for input `sig` is cast to (the
    input's); an error unless the cast keeps the kind of number."""
    target = np.dtype(mir.numpy_dtype(sig.dtype))
    if dtype != target and not np.can_cast(dtype, target, "same_kind") and not (
        dtype.kind in "iub" and target.kind in "iuf"
    ):
        raise MtfcError(f"{what} has dtype {dtype}, input {sig.name!r} is {sig.dtype}")
    return target


def throughput_unit(inputs: list[mir.Signature]) -> tuple[str, int] | None:
    """("tokens", batch*length) when there is a `tokens` input, else
    ("examples", the size of the `batch` dim, or the first input's leading dim)."""
    for sig in inputs:
        if _leaf(sig.name) == "tokens" and len(sig.shape) == 2:
            return "tokens", sig.shape[0] * sig.shape[1]
    for sig in inputs:
        if "batch" in sig.dims:
            return "examples", sig.shape[sig.dims.index("batch")]
    for sig in inputs:
        if sig.shape:
            return "examples", sig.shape[0]
    return None


class Batches:
    """Synthetic batches (and the base of the file-backed sources)."""

    kind = "synthetic"

    def __init__(self, inputs: list[mir.Signature], seed: int):
        self.inputs = inputs
        self.seed = seed
        self.synthesized = [s.name for s in inputs]

    def batch(self, step: int) -> dict[str, HostSource]:
        """Step `step`'s batch: input name -> the source of its global array."""
        out: dict[str, HostSource] = {s.name: SyntheticSource(s, self.seed, step)
                                      for s in self.inputs if s.name in self.synthesized}
        out.update(self._from_file(step))
        return out

    def _from_file(self, step: int) -> dict[str, HostSource]:
        return {}

    def describe(self) -> str:
        return f"synthetic (seed {self.seed}, per step)"

    def info(self) -> dict:
        """What a checkpoint records of the data (the file's real path, its size)."""
        return {"source": self.kind, "seed": self.seed}

    def _note_synthesized(self) -> str:
        return f"; synthesized per step: {', '.join(self.synthesized)}" if self.synthesized else ""


class NpzBatches(Batches):
    kind = "npz"

    def __init__(self, path: str, inputs: list[mir.Signature], seed: int,
                 ranges: dict[str, IndexRange] | None = None):
        super().__init__(inputs, seed)
        self.path = path
        ranges = ranges or {}
        given = open_npz(path, "data")
        by_name = {s.name: s for s in inputs}
        unknown = sorted(set(given) - set(by_name))
        if unknown:
            raise MtfcError(
                f"{path}: no input named {unknown[0]!r} (inputs: {', '.join(sorted(by_name)) or 'none'})"
            )
        if not given:
            raise MtfcError(f"{path} holds no arrays")
        self.arrays: dict[str, np.ndarray] = {}  # name -> the file's array (memory-mapped)
        self.dtypes: dict[str, np.dtype] = {}  # name -> its input's dtype (blocks are cast to it)
        modes = {}
        for name, array in given.items():
            sig = by_name[name]
            check_dtype(f"{path}: array {name!r}", array)
            shape = tuple(array.shape)
            if shape[1:] == sig.shape and len(shape) == len(sig.shape) + 1:
                modes[name] = "steps"
            elif sig.shape and len(shape) == len(sig.shape) and shape[1:] == sig.shape[1:] and shape[0] >= sig.shape[0]:
                modes[name] = "examples"
            else:
                want = " x ".join(map(str, sig.shape)) or "scalar"
                examples = (f" or (examples >= {sig.shape[0]}, {', '.join(map(str, sig.shape[1:]))})"
                            if sig.shape else "")
                raise MtfcError(
                    f"{path}: array {name!r} has shape {shape}, input {name!r} [{', '.join(sig.dims)}] is {want}: "
                    f"give (steps, {', '.join(map(str, sig.shape))}){examples}"
                )
            check_values(f"{path}: array {name!r}", array, sig, ranges.get(name))
            self.dtypes[name] = cast_dtype(array.dtype, sig, f"{path}: array {name!r}")
            self.arrays[name] = array
        if len(set(modes.values())) > 1:
            raise MtfcError(
                f"{path}: some arrays have a leading step axis and some an example axis "
                f"({', '.join(f'{n}: {m}' for n, m in sorted(modes.items()))}); use one kind"
            )
        self.mode = next(iter(modes.values()))
        lengths = {n: a.shape[0] for n, a in self.arrays.items()}
        if self.mode == "steps":
            if len(set(lengths.values())) > 1:
                raise MtfcError(f"{path}: arrays have different numbers of steps: {lengths}")
            self.length = next(iter(lengths.values()))
        else:
            counts = {n: lengths[n] // by_name[n].shape[0] for n in self.arrays}
            if len(set(lengths.values())) > 1:
                raise MtfcError(f"{path}: arrays have different numbers of examples: {lengths}")
            self.length = min(counts.values())
        if self.length < 1:
            raise MtfcError(f"{path}: the arrays hold no whole step")
        self.synthesized = [s.name for s in inputs if s.name not in self.arrays]

    def _from_file(self, step: int) -> dict[str, HostSource]:
        i = step % self.length
        if self.mode == "steps":
            return {n: FileSource(a[i], self.dtypes[n]) for n, a in self.arrays.items()}
        out = {}
        for n, a in self.arrays.items():
            size = next(s.shape[0] for s in self.inputs if s.name == n)
            out[n] = FileSource(a[i * size:(i + 1) * size], self.dtypes[n])
        return out

    def describe(self) -> str:
        unit = "steps" if self.mode == "steps" else "batches of consecutive examples"
        return f"{self.path} ({self.length} {unit}, cycled){self._note_synthesized()}"

    def info(self) -> dict:
        return {"source": self.kind, "path": os.path.realpath(self.path), "mode": self.mode, "length": self.length,
                "seed": self.seed}


class TokenBatches(Batches):
    kind = "tokens"

    def __init__(self, path: str, inputs: list[mir.Signature], seed: int,
                 ranges: dict[str, IndexRange] | None = None):
        super().__init__(inputs, seed)
        self.path = path
        ranges = ranges or {}
        stream = open_npy(path, "data")
        check_dtype(f"{path}: the token stream", stream)
        if stream.ndim != 1 or stream.dtype.kind not in "iu":
            raise MtfcError(
                f"{path}: a .npy data file is a 1-D integer token stream; this one is {stream.dtype} of shape {stream.shape}"
            )
        self.stream = stream
        self.tokens = next((s for s in inputs if _leaf(s.name) == "tokens"), None)
        self.targets = next((s for s in inputs if _leaf(s.name) == "targets"), None)
        if self.tokens is None:
            raise MtfcError(
                f"{path} is a token stream, but the module has no input named 'tokens' "
                f"(inputs: {', '.join(s.name for s in inputs) or 'none'}); give an .npz instead"
            )
        for sig in (self.tokens, self.targets):
            if sig is not None and (len(sig.shape) != 2 or sig.dtype not in ("i32", "ui32")):
                raise MtfcError(
                    f"input {sig.name!r} [{', '.join(sig.dims)}] ({sig.dtype}) cannot take windows of a token stream: "
                    "it needs dims [batch, length] and an integer dtype"
                )
        if self.targets is not None and self.targets.shape != self.tokens.shape:
            raise MtfcError(f"inputs {self.tokens.name!r} and {self.targets.name!r} have different shapes")
        self.batch_size, self.length = self.tokens.shape
        need = self.length + (1 if self.targets is not None else 0)
        if len(stream) < need:
            raise MtfcError(f"{path} holds {len(stream)} tokens; one window of {self.tokens.name!r} needs {need}")
        self.windows = (len(stream) - need) // self.length + 1
        for sig in (self.tokens, self.targets):
            if sig is not None:
                check_values(path, stream, sig, ranges.get(sig.name), value_word="token id")
        self.synthesized = [s.name for s in inputs if s is not self.tokens and s is not self.targets]

    def _from_file(self, step: int) -> dict[str, HostSource]:
        n, length = self.batch_size, self.length
        starts = ((step * n + np.arange(n, dtype=np.int64)) % self.windows) * length
        out: dict[str, HostSource] = {
            self.tokens.name: TokenWindowSource(self.stream, starts, length, 0, mir.numpy_dtype(self.tokens.dtype))}
        if self.targets is not None:
            out[self.targets.name] = TokenWindowSource(self.stream, starts, length, 1,
                                                       mir.numpy_dtype(self.targets.dtype))
        return out

    def describe(self) -> str:
        return (f"{self.path} ({len(self.stream)} tokens, {self.windows} windows of {self.length}, cycled)"
                f"{self._note_synthesized()}")

    def info(self) -> dict:
        return {"source": self.kind, "path": os.path.realpath(self.path), "tokens": int(len(self.stream)),
                "windows": self.windows, "seed": self.seed}


def describe_info(info) -> str:
    """A `Batches.info()` record in words (for messages)."""
    if not isinstance(info, dict) or info.get("source") not in ("synthetic", "npz", "tokens"):
        return f"an unknown data source ({json.dumps(info)})"
    if info["source"] == "synthetic":
        return "synthetic batches"
    if info["source"] == "tokens":
        return f"{info.get('path')} ({info.get('tokens')} tokens)"
    return f"{info.get('path')} ({info.get('length')} {'steps' if info.get('mode') == 'steps' else 'batches'})"


def same_source(saved, now: dict) -> bool:
    """Whether a checkpoint's data record `saved` names the source `now` reads
    (the seed aside: a changed seed is reported on its own)."""
    if not isinstance(saved, dict):
        return False
    strip = lambda info: {k: v for k, v in info.items() if k != "seed"}  # noqa: E731
    saved = strip(saved)
    if "path" in saved and isinstance(saved["path"], str):
        saved["path"] = os.path.realpath(saved["path"])
    return saved == strip(now)


def open_batches(path: str | None, inputs: list[mir.Signature], seed: int,
                 ranges: dict[str, IndexRange] | None = None) -> Batches:
    """The batch source for `--data path` (None: synthetic); `ranges` (input name ->
    its ``mtfc.range``) bounds the values a file may give."""
    if path is None:
        return Batches(inputs, seed)
    if not os.path.exists(path):
        raise MtfcError(f"data file {path!r} does not exist")
    if os.path.isdir(path):
        raise MtfcError(f"data file {path!r} is a directory")
    if path.endswith(".npz"):
        return NpzBatches(path, inputs, seed, ranges)
    if path.endswith(".npy"):
        return TokenBatches(path, inputs, seed, ranges)
    raise MtfcError(f"data file {path!r}: expected .npz (arrays by input name) or .npy (a token stream)")
