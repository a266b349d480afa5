"""gspmd mode's workaround for XLA's SPMD partitioner on convolutions.

XLA's GSPMD (jaxlib 0.10, CPU) computes wrong numbers for some convolutions
whose spatial dims are split (checked against ``jax.lax.conv_general_dilated``,
tests/test_conv.py): the kernel gradient under ``h:cols`` (relative error
1.0), a depthwise convolution under ``h:rows,o:cols`` (3x off), the input
gradient of a transposed convolution under ``h:rows,c:cols``; one VALID
dilated case aborts the process; and a convolution with batch groups (the
kernel gradient of a depthwise one) whose summed dim is split (``b:rows``:
3x off).  So in gspmd mode a convolution is computed
whole along its spatial dims: each operand split along one goes through a
``stablehlo.custom_call @Sharding`` (JAX's sharding constraint) that is whole
along them (and along the summed batch when there are batch groups), the
op's own ``mhlo.sharding`` is whole along them, and a second
``@Sharding`` after it restores the result's layout.  The ops whose
sharding leaves dims whole beyond their layout name them in ``mtfc.whole``
(docs/IR.md), so verify-names can still check every sharding.  The other dims (batch,
features) keep their layouts.  Explicit mode exchanges halos instead
(`mtfc.passes.partition.convolution`).
"""

from __future__ import annotations

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.passes.loops import program_ops
from mtfc.mesh import TensorLayout
from mtfc.passes.hlo_sharding import hlo_sharding
from mtfc.passes.op_rules import conv_numbers

SHARDING = "mhlo.sharding"


def _whole(layout: TensorLayout, positions) -> TensorLayout:
    return layout.whole_along(positions)


value_layout = mir.value_layout


def _mark_whole(op: ir.Operation, layout: TensorLayout, positions) -> None:
    """``mhlo.sharding`` of `layout` whole at `positions`, and ``mtfc.whole``
    naming those dims (verify-names checks the sharding against both)."""
    op.attributes[SHARDING] = ir.StringAttr.get(hlo_sharding(_whole(layout, positions)))
    op.attributes[mir.WHOLE] = mir.str_array([layout.dims[k] for k in positions if layout.axes[k]])


def _constrain(value: ir.Value, layout: TensorLayout, cls: str, whole=()) -> ir.Operation:
    """``custom_call @Sharding(value)`` with `layout`'s sharding (whole at
    positions `whole`), at the current insertion point."""
    op = hlo.CustomCallOp([value.type], [value], "Sharding")
    op.attributes[SHARDING] = ir.StringAttr.get(hlo_sharding(layout))
    if whole:
        _mark_whole(op.operation, layout, whole)
    mir.set_op_result_dims(op.operation, [mir.value_dims(value)])
    if cls != "activation":
        op.operation.attributes[mir.CLASS] = ir.StringAttr.get(cls)
    return op.operation


def whole_spatial_convolutions(fn: ir.Operation, layouts: mir.Layouts) -> None:
    """Rewrite every ``stablehlo.convolution`` of `fn`, loop bodies included (already carrying
    ``mhlo.sharding``) to run whole along its spatial dims (module docstring)."""
    for op in [o for o in program_ops(fn) if o.name == "stablehlo.convolution"]:  # loop bodies too
        c = conv_numbers(op)
        cls = mir.op_class(op)
        what = f"operand of {mir.describe_op(op)}"
        with op.location, ir.InsertionPoint(op):
            # batch groups (a depthwise kernel gradient): the summed batch too
            grouped = c.batch_groups > 1
            for i, spatial in ((0, c.lhs[2] + ((c.lhs[1],) if grouped else ())),
                               (1, c.rhs[2] + ((c.rhs[0],) if grouped else ()))):
                x = op.operands[i]
                layout = value_layout(x, layouts, what)
                if any(layout.axes[k] for k in spatial):
                    op.operands[i] = _constrain(x, layout, cls, spatial).results[0]
        result = op.results[0]
        layout = layouts.of_value(mir.op_result_dims(op)[0], ir.RankedTensorType(result.type).shape, cls=cls,
                                  what=f"value of {mir.describe_op(op)}")
        if not any(layout.axes[k] for k in c.out[2]):
            continue
        _mark_whole(op, layout, c.out[2])
        with op.location, ir.InsertionPoint.after(op):
            back = _constrain(result, layout, cls)
        result.replace_all_uses_except(back.results[0], back)
