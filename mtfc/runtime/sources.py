"""Host data as *sources of blocks*: what a process reads or synthesizes for
the shards its own devices hold, without building whole global arrays.

A `HostSource` stands for one global array (an argument's value: an input
batch, a parameter's initial value, an array of an ``--inputs`` file) and
gives any block of it by its global index range.  Feeding a program asks
each source only for the blocks of the devices this process owns
(`mtfc.runtime.host_data.shard_to_devices`); a source decides how to make a
block cheaply (slice an array it holds, read rows of a file, synthesize the
block from the seed and its global index range).

Contract: ``block(index)`` returns a C-contiguous array of `dtype` whose
shape is the extent of `index` (one ``slice(start, stop)`` per dim, with
``0 <= start <= stop <= shape[d]``), equal to ``full[index]`` of the one
global array the source stands for, whichever process asks, in any order.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class HostSource(Protocol):
    """One global array, readable block by block (see the module docstring)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def block(self, index: tuple[slice, ...]) -> np.ndarray: ...


class ArraySource:
    """A source over a host array it holds whole (single-process data, tests)."""

    def __init__(self, array: np.ndarray):
        self.array = np.asarray(array)
        self.shape = tuple(self.array.shape)
        self.dtype = self.array.dtype

    def block(self, index: tuple[slice, ...]) -> np.ndarray:
        # np.array, not np.ascontiguousarray: the latter turns a rank-0 array into shape (1,).
        return np.array(self.array[index], order="C")


def as_source(value) -> HostSource:
    """`value` if it is a source already, else an `ArraySource` over it."""
    if isinstance(value, HostSource) and not isinstance(value, np.ndarray):
        return value
    return ArraySource(value)


def materialize(source: HostSource) -> np.ndarray:
    """The whole global array of `source` (for the unsharded `--check` run,
    `--outputs` and tests; never on the per-process feeding path)."""
    if isinstance(source, ArraySource):
        return source.array
    return source.block(tuple(slice(0, n) for n in source.shape))


def block_extent(index: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of block `index` of an array of `shape`; a `ValueError` unless
    `index` is one ``slice(start, stop)`` per dim with ``0 <= start <= stop <= size``."""
    if len(index) != len(shape):
        raise ValueError(f"block index {index} has {len(index)} ranges for an array of shape {shape}")
    extent = []
    for s, n in zip(index, shape):
        if not isinstance(s, slice) or s.step not in (None, 1) or not (
                isinstance(s.start, (int, np.integer)) and isinstance(s.stop, (int, np.integer)) and 0 <= s.start <= s.stop <= n):
            raise ValueError(f"block index {index} is not a range inside shape {shape}")
        extent.append(int(s.stop - s.start))
    return tuple(extent)
