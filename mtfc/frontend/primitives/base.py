"""The primitive registry: each primitive's dims rule and lowering, together.

A primitive is the unit the graph records.  Its class states

* ``infer(inputs, params) -> [(Shape, dtype)]`` -- the dims rule: output dims
  and dtype from input dims, raising a located `MtfcError` on a model mistake;
* ``lower(lx, op, args) -> [ir.Value]`` -- StableHLO for it, every emitted op
  tagged with its dim names through ``lx.tag``.

Partitioning rules are not here: the passes read only the IR and consult
`mtfc.passes.op_rules` instead.
"""

from __future__ import annotations

from typing import Any, Sequence

from mtfc.frontend.dims import Shape
from mtfc.frontend.graph import Operation, Tensor, current_graph, fail, user_location

PRIMITIVES: dict[str, "Primitive"] = {}


class Primitive:
    name: str = ""

    def infer(self, inputs: Sequence[Tensor], params: dict[str, Any]) -> list[tuple[Shape, str]]:
        raise NotImplementedError(f"primitive {self.name} has no dims rule")

    def lower(self, lx, op: Operation, args: list) -> list:
        raise NotImplementedError(f"primitive {self.name} has no lowering")


def register(cls):
    """Class decorator: add one instance of a `Primitive` subclass to the registry."""
    PRIMITIVES[cls.name] = cls()
    return cls


def bind(primitive: str, inputs: Sequence[Tensor], *, name: str | None = None, **params) -> list[Tensor]:
    """Record ``primitive(*inputs, **params)`` in the current graph; return its outputs."""
    graph = current_graph()
    for t in inputs:
        if not isinstance(t, Tensor):
            raise fail(f"{primitive} expects mtfc tensors, got {type(t).__name__}")
    prim = PRIMITIVES[primitive]
    outs = prim.infer(list(inputs), params)
    op = Operation(primitive, list(inputs), params, graph.unique_name(name or primitive), user_location())
    op.outputs = [Tensor(shape, dtype, op, i) for i, (shape, dtype) in enumerate(outs)]
    graph.operations.append(op)
    return op.outputs


def bind1(primitive: str, inputs: Sequence[Tensor], **params) -> Tensor:
    (out,) = bind(primitive, inputs, **params)
    return out


def check_same_sizes(shapes: Sequence[Shape], what: str) -> None:
    """Two sizes for one dim name inside one op is a model mistake."""
    seen: dict[str, int] = {}
    for shape in shapes:
        for d in shape:
            if seen.setdefault(d.name, d.size) != d.size:
                raise fail(f"{what}: dim {d.name!r} has two sizes, {seen[d.name]} and {d.size}")
