"""The rule for ``gather`` (the DSL's lookup ``table[indices]``)."""

from __future__ import annotations

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.partition.common import local_result, rule, zero_attr


def gather_targets(table_axes, axis: int, n_idx: int, axes) -> tuple[list, tuple]:
    """The table's layout for a lookup along `axis` whose result (index dims,
    then the table's other dims) is laid out as `axes`, and the looked-up
    dim's axes: the prefix of the table's that the result does not use."""
    out_used = {a for ax in axes for a in ax}
    keep = 0
    while keep < len(table_axes[axis]) and table_axes[axis][keep] not in out_used:
        keep += 1
    vocab_axes = tuple(table_axes[axis][:keep])
    table_target = [()] * len(table_axes)
    table_target[axis] = vocab_axes
    for k, i in enumerate(i for i in range(len(table_axes)) if i != axis):
        table_target[i] = axes[n_idx + k]
    return table_target, vocab_axes


@rule("stablehlo.gather")
def gather(p, op, args, dims, shape):
    """Embedding lookup ``table[indices]``.  With the looked-up dim split, each
    device looks up the indices that fall in its block (others read row 0 and
    are zeroed) and an all_reduce sums the one non-zero contribution.  Indices
    are first clamped to ``[0, size - 1]`` of the whole dim, as StableHLO's
    gather clamps them, so every index -- negative or past the table -- reads
    the row the unsharded program reads."""
    table, indices = args
    numbers = hlo.GatherDimensionNumbers(op.attributes["dimension_numbers"])
    n_idx = len(indices.shape)
    collapsed = list(numbers.collapsed_slice_dims)
    if (len(collapsed) != 1 or list(numbers.start_index_map) != collapsed or numbers.index_vector_dim != n_idx
            or list(numbers.operand_batching_dims)):
        raise MtfcError(f"partition: no rule splits {mir.describe_op(op)}: only single-dim lookups "
                        "(the DSL's gather) are supported")
    axis = collapsed[0]
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    table_target, vocab_axes = gather_targets(table.axes, axis, n_idx, axes)
    table = p.emit.reshard(table, table_target, mir.describe_op_lazily(op))
    indices = p.emit.reshard(indices, axes[:n_idx], mir.describe_op_lazily(op))
    sizes = list(table.local_shape)
    sizes[axis] = 1
    t = p.local_type(shape, axes, table.element_type)
    if not vocab_axes:
        value = p.clone(op, [table.value, indices.value], t, dims, slice_sizes=ir.DenseI64ArrayAttr.get(sizes))
        return local_result(p, value, dims, shape, axes)
    e = p.emit
    idx_type = ir.RankedTensorType(indices.value.type)
    block = table.local_shape[axis]
    bcast = lambda v, ty: e.tag(hlo.BroadcastInDimOp(ty, v, []), indices.dims)  # noqa: E731
    offset = bcast(e.shard_offset(vocab_axes, block), idx_type)
    zero = bcast(e.scalar_i32(0), idx_type)
    last = bcast(e.scalar_i32(table.shape[axis] - 1), idx_type)
    clamped = e.tag(hlo.ClampOp(zero, indices.value, last), indices.dims)
    local_idx = e.tag(hlo.SubtractOp(clamped, offset), indices.dims)
    pred = ir.RankedTensorType.get(idx_type.shape, ir.IntegerType.get_signless(1))
    upper = bcast(e.scalar_i32(block), idx_type)
    direction = lambda s: hlo.ComparisonDirectionAttr.get(s)  # noqa: E731
    ge = e.tag(hlo.CompareOp(local_idx, zero, direction("GE"), results=[pred]), indices.dims)
    lt = e.tag(hlo.CompareOp(local_idx, upper, direction("LT"), results=[pred]), indices.dims)
    mine = e.tag(hlo.AndOp(ge, lt), indices.dims)
    safe_idx = e.tag(hlo.SelectOp(mine, local_idx, zero), indices.dims)
    looked = p.clone(op, [table.value, safe_idx], t, dims, slice_sizes=ir.DenseI64ArrayAttr.get(sizes))
    mask = e.tag(hlo.BroadcastInDimOp(ir.RankedTensorType.get(t.shape, pred.element_type), mine,
                                      list(range(n_idx))), dims)
    zeros = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(t, zero_attr(t.element_type))), dims)
    value = e.tag(hlo.SelectOp(mask, looked, zeros), dims)
    return e.all_reduce(local_result(p, value, dims, shape, axes), vocab_axes, "sum")

