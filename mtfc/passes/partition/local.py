"""Rules for ops each device computes from its own blocks: elementwise ops,
constants and iotas, broadcasts, transposes, reshapes (which may move an
axis between dims)."""

from __future__ import annotations

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.passes.collectives import Axes
from mtfc.passes.partition.common import i64s, local_result, rule, shape_of


def replicated(p, op, args, dims, shape):
    """An op no rule covers, on values that are whole on every device."""
    t = ir.RankedTensorType(op.results[0].type)
    value = p.clone(op, [x.value for x in args], t, dims)
    return local_result(p, value, dims, shape, [()] * len(shape))


def elementwise(p, op, args, dims, shape):
    """Same-shape operands: reshard each to the result's layout; no communication."""
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    operands = [p.emit.reshard(x, axes, mir.describe_op_lazily(op)) if x.shape else x for x in args]
    t = p.local_type(shape, axes, ir.RankedTensorType(op.results[0].type).element_type)
    return local_result(p, p.clone(op, [x.value for x in operands], t, dims), dims, shape, axes)


def local_splat(value: ir.Attribute, local: ir.RankedTensorType) -> ir.Attribute | None:
    """A splat constant's `value` at the `local` type; None when `value` is no splat."""
    value = ir.DenseElementsAttr(value)
    if not value.is_splat:
        return None
    return ir.DenseElementsAttr.get_splat(local, value.get_splat_value())


@rule("stablehlo.constant", copyable=True)
def constant(p, op, args, dims, shape):
    """A splat is made at its local shape; any other split constant is cut locally."""
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    global_type = ir.RankedTensorType(op.results[0].type)
    if not any(axes):
        return replicated(p, op, args, dims, shape)
    local = p.local_type(shape, axes, global_type.element_type)
    splat = local_splat(op.attributes["value"], local)
    if splat is not None:
        return local_result(p, p.emit.tag(hlo.ConstantOp(splat), dims), dims, shape, axes)
    whole = replicated(p, op, args, dims, shape)
    return p.emit.reshard(whole, axes, mir.describe_op_lazily(op))


@rule("stablehlo.iota")
def iota(p, op, args, dims, shape):
    """Local iota plus this device's offset along the iota dim when it is split."""
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    element = ir.RankedTensorType(op.results[0].type).element_type
    t = p.local_type(shape, axes, element)
    k = ir.IntegerAttr(op.attributes["iota_dimension"]).value
    value = p.emit.tag(hlo.IotaOp(t, k), dims)
    if axes[k]:
        offset = p.emit.shard_offset(axes[k], t.shape[k])
        offset = p.emit.tag(hlo.ConvertOp(ir.RankedTensorType.get([], element), offset), [])
        offset = p.emit.tag(hlo.BroadcastInDimOp(t, offset, []), dims)
        value = p.emit.tag(hlo.AddOp(value, offset), dims)
    return local_result(p, value, dims, shape, axes)


def broadcast_target(op: ir.Operation, axes) -> list:
    """The operand layout of a broadcast whose result is laid out as `axes`."""
    x, shape = shape_of(op.operands[0]), shape_of(op.results[0])
    positions = i64s(op.attributes["broadcast_dimensions"])
    return [axes[j] if x[i] == shape[j] else () for i, j in enumerate(positions)]


def transpose_target(op: ir.Operation, axes) -> list:
    """The operand layout of a transpose whose result is laid out as `axes`."""
    perm = i64s(op.attributes["permutation"])
    target = [()] * len(perm)
    for k, src in enumerate(perm):
        target[src] = axes[k]
    return target


@rule("stablehlo.broadcast_in_dim", copyable=True)
def broadcast_in_dim(p, op, args, dims, shape):
    """Each operand dim takes the layout of the result dim it becomes; size-1
    dims broadcast along a split dim are whole."""
    (x,) = args
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    x = p.emit.reshard(x, broadcast_target(op, axes), mir.describe_op_lazily(op))
    t = p.local_type(shape, axes, x.element_type)
    return local_result(p, p.clone(op, [x.value], t, dims), dims, shape, axes)


@rule("stablehlo.transpose", copyable=True)
def transpose(p, op, args, dims, shape):
    (x,) = args
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    x = p.emit.reshard(x, transpose_target(op, axes), mir.describe_op_lazily(op))
    t = p.local_type(shape, axes, x.element_type)
    return local_result(p, p.clone(op, [x.value], t, dims), dims, shape, axes)


def reshape_segments(a: list[int], b: list[int]) -> list[tuple[list[int], list[int]]]:
    """Split a reshape `a` -> `b` into the smallest runs of dims with equal products."""
    segments, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        si, sj, pi, pj = [], [], 1, 1
        if i < len(a):
            si.append(i); pi *= a[i]; i += 1  # noqa: E702
        if j < len(b):
            sj.append(j); pj *= b[j]; j += 1  # noqa: E702
        while pi != pj:
            if pi < pj:
                si.append(i); pi *= a[i]; i += 1  # noqa: E702
            else:
                sj.append(j); pj *= b[j]; j += 1  # noqa: E702
        segments.append((si, sj))
    return segments


def reshape_plan(x_shape: list[int], shape: list[int], axes, factor) -> tuple[list, list]:
    """(the operand's layout, the local reshape's result layout) of a reshape
    whose result is laid out as `axes`: a run of dims keeps the axes of its
    leading result dim when the run's other result dims are whole.  Size-1
    dims leading a run (the layer dim of one layer sliced from a stack) are
    whole and do not count: the run's leading dims are its first larger
    ones."""
    target_in: list[Axes] = [()] * len(x_shape)
    middle: list[Axes] = [()] * len(shape)
    for si, sj in reshape_segments(x_shape, shape):
        si = [i for k, i in enumerate(si) if any(x_shape[m] != 1 for m in si[: k + 1])]
        sj = [j for k, j in enumerate(sj) if any(shape[m] != 1 for m in sj[: k + 1])]
        if not si or not sj:
            continue
        lead = axes[sj[0]]
        if all(not axes[j] for j in sj[1:]) and x_shape[si[0]] % factor(lead) == 0:
            target_in[si[0]] = lead
            middle[sj[0]] = lead
    return target_in, middle


@rule("stablehlo.reshape")
def reshape(p, op, args, dims, shape):
    """Row-major reshape, run of dims by run of dims: a run whose result is split
    only on its leading dim is local when the input is split the same way on its
    leading dim, so the input is resharded to that; other runs are gathered
    before and cut after."""
    (x,) = args
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    target_in, middle = reshape_plan(list(x.shape), list(shape), axes, p.emit.factor)
    x = p.emit.reshard(x, target_in, mir.describe_op_lazily(op))
    t = p.local_type(shape, middle, x.element_type)
    value = p.emit.tag(hlo.ReshapeOp(t, x.value), dims)
    return local_result(p, value, dims, shape, middle)

