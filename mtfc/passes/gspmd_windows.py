"""A workaround of `attach-shardings` (gspmd mode): XLA's SPMD partitioner
(jaxlib 0.10) mis-partitions ``select_and_scatter`` (max pooling's
gradient) along a split windowed dim with overlapping windows -- silently
wrong numbers (e.g. a 3-wide, stride-1 window along a dim split 4 ways; the
forward ``reduce_window`` comes out right).  So `keep_windows_whole` makes
every ``mtfc.select_and_scatter`` whole along its windowed dims: its
operands pass through ``stablehlo.custom_call @Sharding`` (a sharding
constraint, as JAX's) with those dims unsplit, and so does its result
(XLA inlines the composite and would otherwise give the op its consumers'
sharding); XLA gathers them, computes the op whole along them,
and its consumers slice their blocks back out.  Dims without a window keep
their layout.  Each value made whole says so: ``mtfc.whole`` lists the
dims it keeps whole against the layout (docs/IR.md), which verify-names
honours.  (mtfc's explicit mode exchanges only the halo instead.)
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.passes.loops import program_ops
from mtfc.mesh import TensorLayout
from mtfc.passes.composites import SELECT_AND_SCATTER, composite_name, select_and_scatter_windows
from mtfc.passes.hlo_sharding import hlo_sharding

SHARDING = "mhlo.sharding"


def _windowed(op: ir.Operation) -> list[int]:
    if op.name == "stablehlo.composite" and composite_name(op) == SELECT_AND_SCATTER:
        return sorted(select_and_scatter_windows(op))
    return []


def _whole(layout: TensorLayout, positions) -> TensorLayout:
    return layout.whole_along(positions)


def _constraint(value: ir.Value, dims, sharding: str, whole: list[str]) -> ir.Value:
    op = ir.Operation.create("stablehlo.custom_call", results=[value.type], operands=[value],
                             attributes={"call_target_name": ir.StringAttr.get("Sharding"),
                                         SHARDING: ir.StringAttr.get(sharding)})
    mir.set_op_result_dims(op, [list(dims)])
    op.attributes[mir.WHOLE] = mir.str_array(whole)
    return op.results[0]


def keep_windows_whole(fn: ir.Operation, layouts: mir.Layouts) -> None:
    """Make each op of @main (loop bodies included) that XLA mis-partitions with a split windowed
    dim whole along its windowed dims (operands constrained, result
    annotated); a no-op where those dims are not split."""
    for op in list(program_ops(fn)):  # loop bodies too
        windowed = _windowed(op)
        if not windowed:
            continue
        dims = mir.op_result_dims(op)[0]
        shape = tuple(ir.RankedTensorType(op.results[0].type).shape)
        what = f"value of {mir.describe_op(op)}"
        layout = layouts.of_value(dims, shape, cls=mir.op_class(op), what=what)
        if not any(layout.axes[i] for i in windowed):
            continue
        whole = [dims[i] for i in windowed if layout.axes[i]]
        op.attributes[SHARDING] = ir.StringAttr.get(hlo_sharding(_whole(layout, windowed)))
        op.attributes[mir.WHOLE] = mir.str_array(whole)
        with op.location, ir.InsertionPoint(op):
            for i, x in enumerate(list(op.operands)):
                x_dims = mir.value_dims(x)
                x_shape = tuple(ir.RankedTensorType(x.type).shape)
                x_layout = layouts.of_value(x_dims, x_shape, cls=mir.op_class(op), what=what)
                op.operands[i] = _constraint(x, x_dims, hlo_sharding(_whole(x_layout, windowed)), whole)
        result = op.results[0]
        with op.location, ir.InsertionPoint.after(op):
            pinned = _constraint(result, dims, hlo_sharding(_whole(layout, windowed)), whole)
        result.replace_all_uses_except(pinned, pinned.owner.operation)
