"""Rules for ops that sum over dims: ``dot_general`` and ``reduce`` -- local
partial results completed by an ``all_reduce`` over the summed dims' axes."""

from __future__ import annotations

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.op_rules import reducer_of_body
from mtfc.passes.partition.common import local_result, rule


def dot_numbers(op: ir.Operation) -> tuple[list[int], ...]:
    """A dot_general's (lhs batch, rhs batch, lhs contracting, rhs
    contracting, lhs free, rhs free) dims."""
    numbers = hlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    lb, rb = list(numbers.lhs_batching_dimensions), list(numbers.rhs_batching_dimensions)
    lc, rc = list(numbers.lhs_contracting_dimensions), list(numbers.rhs_contracting_dimensions)
    lhs_rank, rhs_rank = (ir.RankedTensorType(x.type).rank for x in op.operands)
    lfree = [i for i in range(lhs_rank) if i not in lb + lc]
    rfree = [i for i in range(rhs_rank) if i not in rb + rc]
    return lb, rb, lc, rc, lfree, rfree


def dot_targets(op: ir.Operation, lhs_axes, out_axes, numbers=None) -> tuple[list, list, list[int]]:
    """The layouts a dot_general's operands are resharded to, and its lhs
    contracting dims: batch and free dims take the result's axes; each
    contracting dim keeps the prefix of the lhs's axes the result does not
    use, and the rhs follows.  `numbers`: `dot_numbers(op)`, if known."""
    lb, rb, lc, rc, lfree, rfree = numbers or dot_numbers(op)
    used = {a for axes in out_axes for a in axes}
    lhs_target, rhs_target = [()] * (len(lb) + len(lc) + len(lfree)), [()] * (len(rb) + len(rc) + len(rfree))
    for k, i in enumerate(lb):
        lhs_target[i] = rhs_target[rb[k]] = out_axes[k]
    for k, i in enumerate(lfree):
        lhs_target[i] = out_axes[len(lb) + k]
    for k, i in enumerate(rfree):
        rhs_target[i] = out_axes[len(lb) + len(lfree) + k]
    for li, ri in zip(lc, rc):
        keep = []
        for a in lhs_axes[li]:
            if a in used:
                break  # keep a prefix: the axes after one the result uses are gathered too
            keep.append(a)
            used.add(a)
        lhs_target[li] = rhs_target[ri] = tuple(keep)
    return lhs_target, rhs_target, lc


@rule("stablehlo.dot_general")
def dot_general(p, op, args, dims, shape):
    """Local dot of local blocks, operands resharded to `dot_targets`; a split
    contracting dim leaves partial sums: all_reduce over its axes."""
    lhs, rhs = args
    what = mir.describe_op_lazily(op)
    out_axes = p.axes_of(dims, shape, what)
    attr = op.attributes["dot_dimension_numbers"]
    key = ("dot_numbers", attr, len(lhs.shape), len(rhs.shape))
    numbers = p.memo.get(key)
    if numbers is None:
        numbers = p.memo[key] = dot_numbers(op)
    lhs_target, rhs_target, lc = dot_targets(op, lhs.axes, out_axes, numbers)
    lhs = p.emit.reshard(lhs, lhs_target, what)
    rhs = p.emit.reshard(rhs, rhs_target, what)
    t = p.local_type(shape, out_axes, ir.RankedTensorType(op.results[0].type).element_type)
    value = p.clone(op, [lhs.value, rhs.value], t, dims)
    result = local_result(p, value, dims, shape, out_axes)
    summed = tuple(a for i in lc for a in lhs.axes[i])
    return p.emit.all_reduce(result, summed, "sum")


@rule("stablehlo.reduce")
def reduce(p, op, args, dims, shape):
    """Local reduce, then all_reduce (same reducer) over the reduced dims' axes.
    Requires the init value to be the reducer's identity, as the frontend emits."""
    if len(args) != 2:
        raise MtfcError(f"partition: no rule splits the variadic {mir.describe_op(op)}")
    x, init = args
    reduced = p.i64s(op.attributes["dimensions"])
    summed = tuple(a for i in reduced for a in x.axes[i])
    kind = reducer_of_body(op) if summed else None
    if summed and kind is None:
        body = [o.operation.name for o in op.regions[0].blocks[0].operations]
        raise MtfcError(f"partition: {mir.describe_op(op)} reduces split dims with a body ({', '.join(body)}) "
                        "that is not add, maximum, minimum, and, or")
    out_axes = [x.axes[i] for i in range(len(x.shape)) if i not in reduced]
    t = p.local_type(shape, out_axes, x.element_type)
    value = p.clone(op, [x.value, init.value], t, dims)
    return p.emit.all_reduce(local_result(p, value, dims, shape, out_axes), summed, kind or "sum")
