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
    return [op for op in program_ops(mir.entry_function(module))
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


def program_ops(fn: ir.Operation):
    """The ops of `fn` the IR contract names (``mtfc.dims``), each before the
    ops of its regions: those directly in its body and, recursively, in the
    ``cond`` and ``do`` bodies of its loops (``stablehlo.while`` carrying
    ``mtfc.loop_dim``) -- not the scalar ops of the computation regions other
    ops hold (a reduce's or all_reduce's reducer, a sort's comparator), which
    `mir.walk_ops` also yields, nor those of a while that is not such a loop
    (written by hand; the contract leaves its regions unnamed)."""
    def visit(block):
        for op in block.operations:
            op = op.operation
            yield op
            if op.name == "stablehlo.while" and mir.LOOP_DIM in op.attributes:
                for region in op.regions:
                    for inner in region.blocks:
                        yield from visit(inner)
    yield from visit(fn.regions[0].blocks[0])
