"""Meshes, layout rules and tensor layouts: Mesh TF's placement model.

Shared by every layer (frontend, passes, runtime); it knows nothing of MLIR.

* A `Mesh` is an ordered list of named axes with sizes, spelled
  ``"rows:2,cols:4"`` (Mesh TF's ``"rows:2;cols:4"`` is accepted too).  Device
  ``d`` sits at the row-major mesh coordinate of ``d``.
* `LayoutRules` map dim names to mesh axes, spelled ``"batch:rows,d_ff:cols"``.
  A dim may be split over several axes, ``"batch:rows+cols"``; the first axis
  is the major one (shard index = row-major index over the listed axes).
* A tensor's layout is a pure function of its dim names, the rules and the
  mesh (Mesh TF's rule).  Policy on bad layouts: an error, never a silent
  fallback to replication -- an axis missing from the mesh, one axis used by
  two dims of a tensor, or a dim size not divisible by its axes' product.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from mtfc.errors import MtfcError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def _split_items(text: str, what: str) -> list[str]:
    """The items of a ``,``- or ``;``-separated string, stripped.

    The empty (or all-blank) string has no items.  Otherwise an empty item --
    two separators in a row, or a leading or trailing separator -- is an
    error naming `what`, the string and the item's character position, never
    silently skipped."""
    if not text.strip():
        return []
    items, start = [], 0
    for piece in re.split(r"([;,])", text):
        if piece in (";", ","):
            continue
        if not piece.strip():
            raise MtfcError(
                f"{what} {text!r} has an empty item at character {start + 1}: separate items with "
                "one ',' (or ';'), with none leading, trailing or doubled"
            )
        items.append(piece.strip())
        start += len(piece) + 1
    return items


@dataclass(frozen=True)
class Mesh:
    """Named device-mesh axes in order, e.g. ``Mesh((("rows", 2), ("cols", 4)))``."""

    axes: tuple[tuple[str, int], ...]

    @staticmethod
    def parse(text: str) -> "Mesh":
        """Parse ``"rows:2,cols:4"``; the empty string is the one-device mesh."""
        axes: list[tuple[str, int]] = []
        for item in _split_items(text, "mesh"):
            name, sep, size = item.partition(":")
            name, size = name.strip(), size.strip()
            if not sep or not _NAME.match(name):
                raise MtfcError(f"bad mesh axis {item!r} in mesh {text!r}: expected NAME:SIZE, e.g. 'rows:2,cols:4'")
            if not size.isdigit() or int(size) < 1:
                raise MtfcError(f"mesh axis {name!r} has size {size!r} in mesh {text!r}: sizes are positive integers")
            if any(name == n for n, _ in axes):
                raise MtfcError(f"mesh axis {name!r} appears twice in mesh {text!r}")
            axes.append((name, int(size)))
        return Mesh(tuple(axes))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s for _, s in self.axes)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def axis_size(self, name: str) -> int:
        for n, s in self.axes:
            if n == name:
                return s
        raise MtfcError(f"mesh axis {name!r} is not in mesh {self}")

    def coords(self, device: int) -> dict[str, int]:
        """Mesh coordinate of a (row-major) device index."""
        out = {}
        for name, size in reversed(self.axes):
            out[name] = device % size
            device //= size
        return {n: out[n] for n in self.names}

    def groups(self, axes: Sequence[str]) -> list[list[int]]:
        """Device groups that vary along `axes` and agree on every other axis.

        Within a group devices are ordered row-major over `axes` in the order
        given, so position ``i`` holds shard ``i`` of a dim split over `axes`.
        Computed once per (mesh, axes) (`_groups`; O(devices)), a fresh list
        each call.
        """
        return [list(g) for g in _groups(self, tuple(axes))]

    def __str__(self) -> str:
        return ",".join(f"{n}:{s}" for n, s in self.axes)


@functools.lru_cache(maxsize=256)
def _groups(mesh: Mesh, axes: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """`Mesh.groups`, cached: every collective of a partitioned module asks for
    the groups of its axes, and building them visits every device."""
    others = [n for n in mesh.names if n not in axes]
    by_key: dict[tuple, list[tuple[int, int]]] = {}
    for d in range(mesh.size):
        c = mesh.coords(d)
        key = tuple(c[n] for n in others)
        by_key.setdefault(key, []).append((shard_index(c, axes, mesh), d))
    return tuple(tuple(d for _, d in sorted(members)) for _, members in sorted(by_key.items()))


def shard_index(coords: dict[str, int], axes: Sequence[str], mesh: Mesh) -> int:
    """Row-major index of a device among the shards of a dim split over `axes`."""
    index = 0
    for a in axes:
        index = index * mesh.axis_size(a) + coords[a]
    return index


@dataclass(frozen=True)
class LayoutRules:
    """Dim name -> mesh axes, e.g. ``LayoutRules((("batch", ("rows",)),))``."""

    rules: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @staticmethod
    def parse(text: str) -> "LayoutRules":
        """Parse ``"batch:rows,d_ff:cols"`` or ``"batch:rows+cols"``."""
        rules: list[tuple[str, tuple[str, ...]]] = []
        for item in _split_items(text, "layout"):
            dim, sep, axes_text = item.partition(":")
            dim = dim.strip()
            axes = tuple(a.strip() for a in axes_text.split("+"))
            if not sep or not _NAME.match(dim) or not all(_NAME.match(a) for a in axes):
                raise MtfcError(
                    f"bad layout rule {item!r} in layout {text!r}: expected DIM:AXIS or DIM:AXIS+AXIS, "
                    "e.g. 'batch:rows,d_ff:cols'"
                )
            if len(set(axes)) != len(axes):
                raise MtfcError(f"layout rule {item!r} names a mesh axis twice")
            if any(dim == d for d, _ in rules):
                raise MtfcError(f"dim {dim!r} has two layout rules in layout {text!r}")
            rules.append((dim, axes))
        return LayoutRules(tuple(rules))

    def axes_for(self, dim: str) -> tuple[str, ...]:
        for d, axes in self.rules:
            if d == dim:
                return axes
        return ()

    def validate(self, mesh: Mesh) -> None:
        """Every rule names axes that exist in `mesh`."""
        for dim, axes in self.rules:
            for a in axes:
                if a not in mesh.names:
                    raise MtfcError(
                        f"layout rule '{dim}:{'+'.join(axes)}' names mesh axis {a!r}, "
                        f"which is not in mesh {str(mesh) or repr('')} (axes: {', '.join(mesh.names) or 'none'})"
                    )

    def __str__(self) -> str:
        return ",".join(f"{d}:{'+'.join(a)}" for d, a in self.rules)


@dataclass(frozen=True)
class TensorLayout:
    """Mesh axes splitting each dim of one tensor, in dim order."""

    dims: tuple[str, ...]
    sizes: tuple[int, ...]
    axes: tuple[tuple[str, ...], ...]
    mesh: Mesh

    @property
    def is_replicated(self) -> bool:
        return not any(self.axes)

    def split_factor(self, i: int) -> int:
        return math.prod(self.mesh.axis_size(a) for a in self.axes[i])

    def whole_along(self, positions) -> "TensorLayout":
        """This layout with the dims at `positions` unsplit (the others as they are)."""
        positions = set(positions)
        return TensorLayout(self.dims, self.sizes, tuple(() if i in positions else a for i, a in enumerate(self.axes)),
                            self.mesh)

    @property
    def local_sizes(self) -> tuple[int, ...]:
        return tuple(s // self.split_factor(i) for i, s in enumerate(self.sizes))

    @property
    def used_axes(self) -> tuple[str, ...]:
        return tuple(a for axes in self.axes for a in axes)

    def shard_slices(self, device: int) -> tuple[slice, ...]:
        """The global index ranges device `device` holds."""
        c = self.mesh.coords(device)
        out = []
        for i, axes in enumerate(self.axes):
            local = self.local_sizes[i]
            k = shard_index(c, axes, self.mesh)
            out.append(slice(k * local, (k + 1) * local))
        return tuple(out)


def tensor_layout(
    dims: Sequence[str], sizes: Sequence[int], rules: LayoutRules, mesh: Mesh, *, what: str = "tensor"
) -> TensorLayout:
    """Layout of a tensor with these dims under `rules` on `mesh`.

    Raises `MtfcError` naming `what` when the layout is impossible.  Valid
    layouts are cached per (dims, sizes, rules, mesh): a partitioner asks for
    the layout of every value, most of them alike.
    """
    try:
        key = (tuple(dims), tuple(sizes), rules, mesh)
        cached = _LAYOUTS.get(key)
    except TypeError:  # an unhashable size (never from the IR): no caching
        key, cached = None, None
    if cached is not None:
        return cached
    layout = _tensor_layout(dims, sizes, rules, mesh, what)
    if key is not None:
        if len(_LAYOUTS) >= 65536:
            _LAYOUTS.clear()
        _LAYOUTS[key] = layout
    return layout


_LAYOUTS: dict[tuple, "TensorLayout"] = {}


def _tensor_layout(dims: Sequence[str], sizes: Sequence[int], rules: LayoutRules, mesh: Mesh, what) -> TensorLayout:
    axes = tuple(rules.axes_for(d) for d in dims)
    owner: dict[str, str] = {}
    for d, size, dim_axes in zip(dims, sizes, axes):
        for a in dim_axes:
            if a not in mesh.names:
                raise MtfcError(f"{what}: dim {d!r} is laid out on mesh axis {a!r}, which is not in mesh {str(mesh) or repr('')}")
            if a in owner:
                raise MtfcError(
                    f"{what} [{', '.join(dims)}]: mesh axis {a!r} is used by both dim {owner[a]!r} and dim {d!r}; "
                    "two dims of one tensor may not share a mesh axis"
                )
            owner[a] = d
        factor = math.prod(mesh.axis_size(a) for a in dim_axes)
        if size % factor:
            raise MtfcError(
                f"{what}: dim {d!r} of size {size} is not divisible by mesh axes "
                f"{'+'.join(dim_axes)} (size {factor})"
            )
    return TensorLayout(tuple(dims), tuple(sizes), axes, mesh)


def parse_dim_list(text: str) -> list[str]:
    return _split_items(text, "dim list")


def ensure_names(names: Iterable[str]) -> None:
    for n in names:
        if not _NAME.match(n):
            raise MtfcError(f"bad name {n!r}: names are letters, digits, '_' and '.'")
