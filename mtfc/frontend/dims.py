"""`Dim` and `Shape`: every tensor axis is a named dimension (Mesh TF's model)."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

from mtfc.errors import MtfcError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


@dataclass(frozen=True)
class Dim:
    """A named dimension of a given size, e.g. ``Dim("batch", 32)``."""

    name: str
    size: int

    def __post_init__(self):
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise MtfcError(f"bad dim name {self.name!r}: names are letters, digits, '_' and '.'", where=_user_where())
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise MtfcError(f"dim {self.name!r} has size {self.size!r}: sizes are positive integers", where=_user_where())

    def __repr__(self) -> str:
        return f"{self.name}:{self.size}"


DimLike = Union[Dim, str]


class Shape(tuple):
    """An ordered tuple of `Dim`s with distinct names."""

    def __new__(cls, dims: Iterable[Dim] = ()):
        dims = tuple(dims)
        for d in dims:
            if not isinstance(d, Dim):
                raise MtfcError(f"Shape takes Dims, got {d!r}", where=_user_where())
        names = [d.name for d in dims]
        for n in names:
            if names.count(n) > 1:
                raise MtfcError(f"dim {n!r} is used twice in one tensor shape {list(dims)}", where=_user_where())
        return super().__new__(cls, dims)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        return tuple([d.name for d in self])  # (a Shape never changes: computed once)

    @functools.cached_property
    def sizes(self) -> tuple[int, ...]:
        return tuple([d.size for d in self])

    @property
    def size(self) -> int:
        return math.prod(self.sizes)

    def index(self, dim: DimLike) -> int:  # type: ignore[override]
        name = dim_name(dim)
        for i, d in enumerate(self):
            if d.name == name:
                if isinstance(dim, Dim) and dim.size != d.size:
                    raise MtfcError(
                        f"dim {name!r} has two sizes, {dim.size} and {d.size} (the tensor has dims {list(self)})",
                        where=_user_where(),
                    )
                return i
        raise MtfcError(f"unknown dim {name!r}: the tensor has dims {list(self)}", where=_user_where())

    def get(self, dim: DimLike) -> Dim:
        return self[self.index(dim)]

    def __contains__(self, dim) -> bool:  # by name
        name = dim.name if isinstance(dim, Dim) else dim
        return name in self.names

    def without(self, dims: Sequence[DimLike]) -> "Shape":
        names = {dim_name(d) for d in dims}
        return Shape(d for d in self if d.name not in names)

    def __repr__(self) -> str:
        return "[" + ", ".join(repr(d) for d in self) + "]"


def dim_name(dim: DimLike) -> str:
    return dim.name if isinstance(dim, Dim) else dim


def as_shape(value) -> Shape:
    if isinstance(value, Shape):
        return value
    if isinstance(value, Dim):
        return Shape([value])
    return Shape(value)


def _user_where() -> str | None:
    from mtfc.frontend.graph import where

    return where()  # "model.py:14", like every other located model error
