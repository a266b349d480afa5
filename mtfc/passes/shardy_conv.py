"""shardy mode's workaround for convolutions (jaxlib 0.10's Shardy).

Shardy partitions a convolution whose spatial dims are split as if each
block were the whole image: no halo, silently wrong numbers (relative error
0.3-1.1 under ``h:cols``, forward and both gradients; checked in
tests/test_conv.py).  Split batch, input or output features are right.  So,
as for slice and pad (`shardy.whole_along_cut_dims`), a convolution is
computed whole along its spatial dims: its operands split along one are
resharded (``sdy.reshard`` -> all_gather) whole along them, its result is
computed whole along them and resharded to its layout right after (a local
slice).  Explicit mode exchanges halos instead.

Likewise ``stablehlo.reverse`` (a convolution's flipped kernel) along a split
dim: Shardy reverses each block in place (the input gradient under
``kw:rows`` was 1.4 off); it is computed whole along its reversed dims.
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.passes.gspmd_conv import _whole, value_layout
from mtfc.passes.op_rules import conv_numbers

SDY_SHARDING = "sdy.sharding"


def _reshard(value: ir.Value, dims, layout, sdy_mesh) -> ir.Operation:
    op = ir.Operation.create("sdy.reshard", results=[value.type], operands=[value],
                             attributes={"sharding": ir.Attribute.parse(sdy_mesh.tensor_sharding(layout))})
    mir.set_op_result_dims(op, [list(dims)])
    return op


def _whole_dims(op: ir.Operation) -> tuple[list[tuple[int, tuple[int, ...]]], tuple[int, ...]]:
    """[(operand, its dims to make whole)], the result's dims to make whole."""
    if op.name == "stablehlo.reverse":
        dims = tuple(ir.DenseI64ArrayAttr(op.attributes["dimensions"]))
        return [(0, dims)], dims
    c = conv_numbers(op)
    return [(0, c.lhs[2]), (1, c.rhs[2])], c.out[2]


OPS = ("stablehlo.convolution", "stablehlo.reverse")


def whole_spatial(op: ir.Operation, layouts: mir.Layouts, sdy_mesh) -> None:
    """Make `op` (one of `OPS`, annotated with its ``sdy.sharding``) whole
    along its spatial dims -- a reverse's reversed dims -- where they are
    split (module docstring)."""
    operands, out_dims = _whole_dims(op)
    what = f"operand of {mir.describe_op(op)}"
    for i, spatial in operands:
        x = op.operands[i]
        layout = value_layout(x, layouts, what)
        if any(layout.axes[k] for k in spatial):
            with op.location, ir.InsertionPoint(op):
                op.operands[i] = _reshard(x, mir.value_dims(x), _whole(layout, spatial), sdy_mesh).results[0]
    result = op.results[0]
    layout = value_layout(result, layouts, f"value of {mir.describe_op(op)}")
    if not any(layout.axes[k] for k in out_dims):
        return
    op.attributes[SDY_SHARDING] = ir.Attribute.parse(sdy_mesh.op_sharding([_whole(layout, out_dims)]))
    with op.location, ir.InsertionPoint.after(op):
        back = _reshard(result, mir.op_result_dims(op)[0], layout, sdy_mesh)
    result.replace_all_uses_except(back.results[0], back)
