"""Checks every mode makes of the loops mtfc emits (docs/IR.md, "Loops").

A ``stablehlo.while`` carrying ``mtfc.loop_dim`` runs its trips over that
dim: each trip slices one position of the stacked values.  Splitting the
loop dim over a mesh axis would give each device only some of the layers,
which a loop on every device cannot run: the layout rules must leave it
whole (pipeline parallelism splits a separate ``stages`` dim instead).
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError


def loops(module: ir.Module) -> list[ir.Operation]:
    """The ``stablehlo.while`` ops of @main carrying ``mtfc.loop_dim``, outer loops first."""
    return [op for op in mir.walk_ops(mir.entry_function(module))
            if op.name == "stablehlo.while" and mir.LOOP_DIM in op.attributes]


def loop_dim(op: ir.Operation) -> str:
    return ir.StringAttr(op.attributes[mir.LOOP_DIM]).value


def check_loop_dims(module: ir.Module) -> None:
    """Refuse, in one line naming the loop and the rule, a layout (activation
    or parameter rules) that splits a loop's dim."""
    layouts = mir.module_layouts(module)
    for op in loops(module):
        dim = loop_dim(op)
        for which, rules in (("layout", layouts.activations), ("parameter layout", layouts.params)):
            axes = rules.axes_for(dim)
            if axes:
                raise MtfcError(
                    f"{which} rule {dim}:{'+'.join(axes)} splits the dim {dim!r} that the loop at "
                    f"{mir.location_text(op.location)} runs over; a scanned dim must stay whole "
                    f"(split a 'stages' dim for pipeline parallelism instead)")


def named_ops(fn: ir.Operation):
    """The ops of `fn` the IR contract names (``mtfc.dims``): those directly
    in its body and, recursively, in its loops' ``cond`` and ``do`` bodies --
    not the scalar ops of reducer bodies (a reduce's, an all_reduce's)."""
    for op in fn.regions[0].blocks[0].operations:
        yield from _named(op.operation)


def _named(op: ir.Operation):
    yield op
    if op.name == "stablehlo.while":
        for region in op.regions:
            for block in region.blocks:
                for inner in block.operations:
                    yield from _named(inner.operation)


def program_ops(fn: ir.Operation):
    """Every op of `fn`'s program, each before the ops of its regions: the
    ops of its body and, recursively, of each ``stablehlo.while``'s cond and
    body -- not the ops of the computation regions other ops hold (a
    reduce's or all_reduce's reducer, a sort's comparator: scalar code
    without ``mtfc.dims``), which `mir.walk_ops` also yields."""
    def visit(block):
        for op in block.operations:
            op = op.operation
            yield op
            if op.name == "stablehlo.while":
                for region in op.regions:
                    for inner in region.blocks:
                        yield from visit(inner)
    yield from visit(fn.regions[0].blocks[0])
