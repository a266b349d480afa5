"""Arrays of data files (``--inputs``, ``--data``) opened so that a block reads
only its own elements, and the `HostSource` kinds built on them.

* ``.npy``: memory-mapped (``np.load(mmap_mode="r")``);
* ``.npz``: each member that `np.savez` stored uncompressed is memory-mapped
  at its offset inside the zip (the member is itself an ``.npy``: header,
  then the raw array).  A member that is compressed (`np.savez_compressed`),
  encrypted, not an ``.npy``, of an object dtype or with a header numpy
  writes only for unusual dtypes (version 3) is read whole, as `np.load`
  reads it.  A mapped member's zip CRC is not checked (zip checks it only
  when a member is read to its end).

Opening reads headers only; the bytes of an array are read when a block (or
a validation pass, `mtfc.runtime.data.check_values`) asks for them.
"""

from __future__ import annotations

import struct
import zipfile

import numpy as np

from mtfc.errors import MtfcError
from mtfc.runtime.sources import block_extent

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., file name length, extra field length
_LOCAL_SIGNATURE = b"PK\x03\x04"


def open_npy(path: str, what: str) -> np.ndarray:
    """The array of .npy `path`, memory-mapped; `MtfcError` ``cannot read
    {what} {path!r}: ...`` when numpy cannot read it."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise MtfcError(f"cannot read {what} {path!r}: {e}") from None


def open_npz(path: str, what: str) -> dict[str, np.ndarray]:
    """name -> array of each member of .npz `path` (memory-mapped where the
    member is stored, see the module docstring); `MtfcError` ``cannot read
    {what} {path!r}: ...`` when numpy cannot read it."""
    try:
        with np.load(path, allow_pickle=False) as data, open(path, "rb") as f:
            out = {}
            for name in data.files:
                member = name if name in data.zip.namelist() else f"{name}.npy"
                mapped = _map_member(path, f, data.zip.getinfo(member))
                out[name] = mapped if mapped is not None else np.asarray(data[name])
            return out
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise MtfcError(f"cannot read {what} {path!r}: {e}") from None


def _map_member(path: str, f, info: zipfile.ZipInfo) -> np.ndarray | None:
    """The memory map of a stored .npy member, or None where it must be read whole."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1 or not info.filename.endswith(".npy"):
        return None
    f.seek(info.header_offset)
    header = f.read(_LOCAL_HEADER.size)
    if len(header) < _LOCAL_HEADER.size:
        return None
    signature, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    if signature != _LOCAL_SIGNATURE:
        return None
    start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
    f.seek(start)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
    except ValueError:
        return None  # np.load reads the member and gives its own error
    offset = f.tell()
    count = int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject or count == 0 or offset - start + count * dtype.itemsize > info.file_size:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


class FileSource:
    """The global array ``view`` (an array of a file, or a lazy slice of one:
    a step of a steps-first .npz, a run of consecutive examples) in `dtype`.
    A block reads only its own elements of the file and casts them."""

    def __init__(self, view: np.ndarray, dtype):
        self.view = view
        self.shape = tuple(view.shape)
        self.dtype = np.dtype(dtype)

    def block(self, index: tuple[slice, ...]) -> np.ndarray:
        block_extent(index, self.shape)
        return np.asarray(self.view[index]).astype(self.dtype, order="C")


class TokenWindowSource:
    """Windows of a 1-D token stream as a ``[rows, length]`` array: row ``j``
    is ``stream[starts[j] + shift : starts[j] + shift + length]`` in `dtype`
    (``shift`` 1: the targets, the tokens shifted by one).  A block reads only
    its rows' windows, and of those only its columns."""

    def __init__(self, stream: np.ndarray, starts: np.ndarray, length: int, shift: int, dtype):
        self.stream = stream
        self.starts = np.asarray(starts, dtype=np.int64)
        self.length = length
        self.shift = shift
        self.shape = (len(self.starts), length)
        self.dtype = np.dtype(dtype)

    def block(self, index: tuple[slice, ...]) -> np.ndarray:
        block_extent(index, self.shape)
        rows, cols = index
        positions = (self.starts[rows] + self.shift)[:, None] + np.arange(cols.start, cols.stop, dtype=np.int64)
        return np.asarray(self.stream[positions]).astype(self.dtype, order="C")
