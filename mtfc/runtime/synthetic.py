"""Synthesized host data: an argument's values from its initializer string, as
a `HostSource` any process can read block by block.

The global array is cut into fixed *tiles* -- a grid that depends only on the
array's shape (`tile_shape`) -- and each tile is drawn from its own generator,
keyed by ``(seed, [step,] name)`` and the tile's position in the grid.  A
block (a global index range) draws only the tiles it intersects and keeps
their part in it, so:

* a value depends on the seed, the step, the argument's name and its global
  position only: every process, every layout and every way of splitting the
  array reads the same numbers (a multi-process run feeds exactly what one
  process feeds);
* a block costs about its own size (plus the tiles it cuts at its edges),
  whichever dims it splits, and the memory beyond the block is one tile.

Initializer arguments (a stddev, bounds) are those of the string, which the
frontend wrote for the whole array (`mtfc/initializers.py`); nothing scales by
the block's shape.
"""

from __future__ import annotations

import hashlib
import itertools
import math

import numpy as np

from mtfc import initializers
from mtfc import ir as mir
from mtfc.runtime.sources import block_extent, materialize

TILE_ELEMENTS = 1 << 18  # values one generator draws at most (2 MiB of float64)


def tile_shape(shape: tuple[int, ...], limit: int | None = None) -> tuple[int, ...]:
    """The tile of an array of `shape`: start from the whole array and halve
    (rounding up) its largest extent, the leading one among equals, until at
    most `limit` (default `TILE_ELEMENTS`) values remain.  A function of
    `shape` alone: the tiles, so the values, are the same in every process."""
    limit = TILE_ELEMENTS if limit is None else limit
    tile = [max(n, 1) for n in shape]
    while math.prod(tile) > limit:
        d = tile.index(max(tile))
        tile[d] = -(-tile[d] // 2)
    return tuple(tile)


class SyntheticSource:
    """The values of argument `sig` from its initializer, for `seed` (and
    `step`: the training loop's per-step batches), block by block."""

    def __init__(self, sig: mir.Signature, seed: int, step: int | None = None):
        self.name = sig.name
        self.shape = tuple(sig.shape)
        self.dtype = np.dtype(mir.numpy_dtype(sig.dtype))
        what = f"argument {sig.name!r}"
        kind, self._args = initializers.parse(sig.init or initializers.DEFAULT, what)
        self._sampler = initializers.KINDS[kind][1]
        key = f"{seed}/{sig.name}" if step is None else f"{seed}/{step}/{sig.name}"
        self._entropy = int.from_bytes(hashlib.sha256(key.encode()).digest()[:16], "little")
        self.tile = tile_shape(self.shape)
        self._grid = tuple(-(-n // t) for n, t in zip(self.shape, self.tile))

    def _draw(self, coords: tuple[int, ...]) -> tuple[tuple[slice, ...], np.ndarray]:
        """The global range of the tile at grid position `coords` and its values
        (in the sampler's own dtype; cast when copied into a block)."""
        number = int(np.ravel_multi_index(coords, self._grid)) if coords else 0
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self._entropy, spawn_key=(number,))))
        where = tuple(slice(c * t, min((c + 1) * t, n)) for c, t, n in zip(coords, self.tile, self.shape))
        return where, np.asarray(self._sampler(rng, tuple(s.stop - s.start for s in where), self._args))

    def block(self, index: tuple[slice, ...]) -> np.ndarray:
        extent = block_extent(index, self.shape)
        out = np.empty(extent, dtype=self.dtype)
        if out.size == 0:
            return out
        spans = [range(s.start // t, -(-s.stop // t)) for s, t in zip(index, self.tile)]
        for coords in itertools.product(*spans):
            where, values = self._draw(coords)
            cut = tuple(slice(max(b.start, w.start), min(b.stop, w.stop)) for b, w in zip(index, where))
            out[tuple(slice(c.start - b.start, c.stop - b.start) for c, b in zip(cut, index))] = \
                values[tuple(slice(c.start - w.start, c.stop - w.start) for c, w in zip(cut, where))]
        return out


def synthetic_sources(sigs: list[mir.Signature], seed: int, step: int | None = None) -> dict[str, SyntheticSource]:
    """name -> the synthesized source of each argument in `sigs`."""
    return {s.name: SyntheticSource(s, seed, step) for s in sigs}


def synthesize(sig: mir.Signature, seed: int, step: int | None = None) -> np.ndarray:
    """The whole synthesized array of `sig` (the unsharded reference, tests);
    equal to every block `SyntheticSource` gives of it."""
    return materialize(SyntheticSource(sig, seed, step))
