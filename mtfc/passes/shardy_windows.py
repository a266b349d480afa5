"""A workaround of `sdy-partition` (shardy mode) for pooling: Shardy
(jaxlib 0.10) cannot partition ``reduce_window`` or ``select_and_scatter``
along a split windowed dim -- `sdy-convert-global-to-local` fails an
internal CHECK and aborts the whole process.  So, as for the ops of
`whole_along_cut_dims`, such an op is computed whole along its windowed dims
where the layout splits them: its windowed operands (``sdy.reshard`` ->
all_gather) and its result are whole along them, and the result is
resharded to its layout right after (a local slice).  Dims without a window
(batch, channels) stay split: Shardy partitions those correctly.  (mtfc's
explicit mode exchanges only the halo instead.)

Called from `mtfc.passes.shardy.annotate`, one line: `whole_along_windows`.
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.passes import op_rules

WINDOW_OPS = frozenset({"stablehlo.reduce_window", "stablehlo.select_and_scatter"})


def windowed_dims(op: ir.Operation) -> list[int]:
    """Positions of `op`'s window factors (the registry's rule)."""
    factors = op_rules.factors_of(op)
    return [i for i, f in enumerate(factors.factors) if f.kind == op_rules.WINDOW]


def whole_along_windows(op: ir.Operation, layouts: mir.Layouts, sdy_mesh) -> None:
    """Make a pooling op whole along its windowed dims, where they are split."""
    from mtfc.passes.shardy import SDY_SHARDING, _reshard, _whole, value_layout

    cut = windowed_dims(op)
    what = f"operand of {mir.describe_op(op)}"
    rank = ir.RankedTensorType(op.results[0].type).rank
    tensors = [i for i, x in enumerate(op.operands) if ir.RankedTensorType(x.type).rank == rank]  # not the init
    operand_layouts = {i: value_layout(op.operands[i], layouts, what) for i in tensors}
    result = op.results[0]
    layout = value_layout(result, layouts, f"value of {mir.describe_op(op)}")
    if not any(l.axes[c] for l in [*operand_layouts.values(), layout] for c in cut):
        return
    for i, x_layout in operand_layouts.items():
        x = op.operands[i]
        with op.location, ir.InsertionPoint(op):
            op.operands[i] = _reshard(x, mir.value_dims(x), _whole(x_layout, cut), sdy_mesh).results[0]
    op.attributes[SDY_SHARDING] = ir.Attribute.parse(sdy_mesh.op_sharding([_whole(layout, cut)]))
    with op.location, ir.InsertionPoint.after(op):
        back = _reshard(result, mir.op_result_dims(op)[0], layout, sdy_mesh)
    result.replace_all_uses_except(back.results[0], back)
