"""The primitive registry: each primitive's dims rule and lowering, together.

A primitive is the unit the graph records.  Its class states

* ``infer(inputs, params) -> [(Shape, dtype)]`` -- the dims rule: output dims
  and dtype from input dims, raising a located `MtfcError` on a model mistake;
* ``lower(lx, op, args) -> [ir.Value]`` -- StableHLO for it, every emitted op
  tagged with its dim names through ``lx.tag``;
* ``grad(op, output_grads) -> [Tensor | None]`` -- the reverse-mode gradient
  rule, in DSL ops (so gradients keep dim names), one entry per input.

Partitioning rules are not here: the passes read only the IR and consult
`mtfc.passes.op_rules` instead.
"""

from __future__ import annotations

from typing import Any, Sequence

from mtfc.frontend.dims import Shape
from mtfc.frontend.graph import Operation, Tensor, current_graph, fail

PRIMITIVES: dict[str, "Primitive"] = {}


class Primitive:
    name: str = ""

    def infer(self, inputs: Sequence[Tensor], params: dict[str, Any]) -> list[tuple[Shape, str]]:
        raise NotImplementedError(f"primitive {self.name} has no dims rule")

    def lower(self, lx, op: Operation, args: list) -> list:
        raise NotImplementedError(f"primitive {self.name} has no lowering")

    def grad(self, op: Operation, output_grads: list[Tensor | None]) -> list[Tensor | None]:
        """The gradient rule (reverse mode), written in DSL ops.

        `output_grads` holds, per output of `op`, the gradient of the scalar
        being differentiated with respect to that output (dims and dtype of
        the output), or None where it is zero.  Returns, per input, the
        gradient with respect to that input (exactly the input's shape and
        dtype), or None where it is zero or the input is not differentiable.
        `mtfc.frontend.autodiff` calls it with the graph's name scope and
        location set to the forward op's.
        """
        raise NotImplementedError(f"primitive {self.name} has no gradient rule")


def register(cls):
    """Class decorator: add one instance of a `Primitive` subclass to the registry."""
    PRIMITIVES[cls.name] = cls()
    return cls


def bind(primitive: str, inputs: Sequence[Tensor], *, name: str | None = None, **params) -> list[Tensor]:
    """Record ``primitive(*inputs, **params)`` in the current graph; return its
    outputs.  Under `mtf.eager()` (a root graph with an evaluator) the op is
    also evaluated at once (`mtfc.frontend.eager`)."""
    graph = current_graph()
    for t in inputs:
        if not isinstance(t, Tensor):
            raise fail(f"{primitive} expects mtfc tensors, got {type(t).__name__}")
    inputs = [t if t.op.graph is graph else graph.capture(t) for t in inputs]
    prim = PRIMITIVES[primitive]
    outs = prim.infer(inputs, params)
    op = Operation(primitive, inputs, params, graph.unique_name(name or primitive), graph.location(), graph=graph)
    op.outputs = [Tensor(shape, dtype, op, i) for i, (shape, dtype) in enumerate(outs)]
    graph.operations.append(op)
    if graph.evaluator is not None:  # mtf.eager(): compute it now
        graph.evaluator.evaluate(op)
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
