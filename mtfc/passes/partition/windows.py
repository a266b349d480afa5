"""Rules for ops that read across block boundaries along a dim -- slice, pad,
concatenate and the shift ``slice(pad(x))`` -- by exchanging windows and
halos with ``collective_permute``, never gathering the dim; and the halo
helpers of pooling (`mtfc.passes.partition.pooling`): `halo_window` (each
block extended by its neighbours' edge rows) and `scatter_window_add` (its
mirror: rows written past a block's edges sent back and added)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.collectives import Axes, Local
from mtfc.passes.composites import SELECT_AND_SCATTER, SHIFT, composite_name, shift_attributes
from mtfc.passes.partition.common import i64s, is_zero_constant, local_result, rule, shape_of, zero_attr

if TYPE_CHECKING:
    from mtfc.passes.partition.driver import Partitioner


def _whole_along(x: Local, positions) -> list[Axes]:
    return [() if i in positions else a for i, a in enumerate(x.axes)]


def _same_split(x: Local, out_axes, k: int) -> bool:
    """Dim k is split over the same axes in `x` and the result, and the other
    dims agree positionally -- the case a window exchange handles."""
    return bool(x.axes[k]) and x.axes[k] == tuple(out_axes[k]) and all(
        x.axes[i] == tuple(out_axes[i]) or not x.axes[i] for i in range(len(out_axes)) if i != k)


def window_plan(op: ir.Operation, args, axes) -> tuple[list | None, int | None, list[int]]:
    """How a slice, pad or concatenate is partitioned, from its operands'
    layouts (`args`: anything with ``axes`` and ``shape``) and its result's
    `axes`: (window sources ``[(x, t)]`` for `window_exchange`, the windowed
    dim k, the cut dims) when one cut dim is split over the same axes in
    operands and result; else (None, None, the cut dims, gathered first)."""
    x = args[0]
    if op.name == "stablehlo.concatenate":
        d = ir.IntegerAttr(op.attributes["dimension"]).value
        if not all(_same_split(a, axes, d) for a in args):
            return None, None, [d]
        sources, offset = [], 0
        for a in args:
            sources.append((a, -offset))
            offset += a.shape[d]
        return sources, d, [d]
    if op.name == "stablehlo.slice":
        start, limit = i64s(op.attributes["start_indices"]), i64s(op.attributes["limit_indices"])
        strides = i64s(op.attributes["strides"])
        cut = [i for i in range(len(x.shape)) if start[i] != 0 or limit[i] != x.shape[i] or strides[i] != 1]
        if len(cut) == 1 and strides[cut[0]] == 1 and _same_split(x, axes, cut[0]):
            return [(x, start[cut[0]])], cut[0], cut
        return None, None, cut
    low, high = i64s(op.attributes["edge_padding_low"]), i64s(op.attributes["edge_padding_high"])
    interior = i64s(op.attributes["interior_padding"])
    cut = [i for i in range(len(x.shape)) if low[i] or high[i] or interior[i]]
    if len(cut) == 1 and not interior[cut[0]] and low[cut[0]] >= 0 and _same_split(x, axes, cut[0]):
        return [(x, -low[cut[0]])], cut[0], cut
    return None, None, cut


def window_distances(K: int, L: int, n: int, start: Callable[[int], int], length: int) -> list[int]:
    """The block distances ``delta`` (receiver j reads block ``j + delta``)
    that `fetch_window` serves, sorted."""
    distances = set()
    for j in range(K):
        lo, hi = max(start(j), 0), min(start(j) + length, n)
        if lo < hi:
            distances.update(range(lo // L - j, (hi - 1) // L - j + 1))
    return sorted(distances)


def window_pairs(groups, delta: int) -> list[tuple[int, int]]:
    """(source, target) pairs: position ``j + delta`` sends to ``j``, within each group."""
    K = len(groups[0])
    return [(group[j + delta], group[j]) for group in groups for j in range(K) if 0 <= j + delta < K]


def shift_pairs(groups, shift: int, wrap: bool) -> list[tuple[int, int]]:
    """(source, target) pairs: position ``j + shift`` (cyclically, with `wrap`) sends to ``j``."""
    count, pairs = len(groups[0]), []
    for group in groups:
        for j, dst in enumerate(group):
            src = (j + shift) % count if wrap else j + shift
            if 0 <= src < count:
                pairs.append((group[src], dst))
    return pairs


@rule("stablehlo.slice")
def slice_(p, op, args, dims, shape):
    """Slice locally along whole dims; a sliced dim that is split is gathered first."""
    (x,) = args
    start, limit = i64s(op.attributes["start_indices"]), i64s(op.attributes["limit_indices"])
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    sources, k, cut = window_plan(op, args, axes)
    if sources is not None:
        return window_exchange(p, op, sources, k, None, dims, shape, axes)
    x = p.emit.reshard(x, _whole_along(x, cut), mir.describe_op_lazily(op))
    local = x.local_shape
    start = [s if i in cut else 0 for i, s in enumerate(start)]
    limit = [l if i in cut else local[i] for i, l in enumerate(limit)]
    out_axes = x.axes
    t = p.local_type(shape, out_axes, x.element_type)
    value = p.clone(op, [x.value], t, dims, start_indices=ir.DenseI64ArrayAttr.get(start),
                    limit_indices=ir.DenseI64ArrayAttr.get(limit))
    return local_result(p, value, dims, shape, out_axes)


@rule("stablehlo.pad")
def pad(p, op, args, dims, shape):
    """Pad locally along whole dims; a padded dim that is split is gathered first."""
    x, value = args
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    sources, k, padded = window_plan(op, args, axes)
    if sources is not None:
        return window_exchange(p, op, sources, k, value, dims, shape, axes)
    x = p.emit.reshard(x, _whole_along(x, padded), mir.describe_op_lazily(op))
    t = p.local_type(shape, x.axes, x.element_type)
    return local_result(p, p.clone(op, [x.value, value.value], t, dims), dims, shape, x.axes)


@rule("stablehlo.concatenate")
def concatenate(p, op, args, dims, shape):
    """Concatenate locally when the concat dim is whole; gather it first otherwise."""
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    sources, _, (d,) = window_plan(op, args, axes)
    if sources is not None:
        return window_exchange(p, op, sources, d, None, dims, shape, axes)
    target = [() if i == d else a for i, a in enumerate(axes)]
    parts = [p.emit.reshard(x, target, mir.describe_op_lazily(op)) for x in args]
    t = p.local_type(shape, target, parts[0].element_type)
    return local_result(p, p.clone(op, [x.value for x in parts], t, dims), dims, shape, target)


def group_positions(p: Partitioner, axes: Axes) -> tuple[list[list[int]], np.ndarray]:
    """The device groups along mesh `axes` and each device's position in its group."""
    groups = p.mesh.groups(list(axes))
    position = np.zeros(p.mesh.size, dtype=np.int64)
    for group in groups:
        for j, dev in enumerate(group):
            position[dev] = j
    return groups, position


def device_table(p: Partitioner, values) -> ir.Value:
    """A per-device i32 scalar: ``values[d]`` on device ``d`` (a constant
    table read at the replica id)."""
    e = p.emit
    i32 = ir.IntegerType.get_signless(32)
    data = np.asarray(values, dtype=np.int32)
    const = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get(data, type=ir.RankedTensorType.get([len(data)], i32))),
                  ["mesh"])
    picked = e.tag(hlo.DynamicSliceOp(const, [e.replica_id()], [1]), ["mesh"])
    return e.tag(hlo.ReshapeOp(ir.RankedTensorType.get([], i32), picked), [])


def fetch_window(p: Partitioner, x: Local, k: int, start: Callable[[int], int], length: int,
                 base: ir.Value | None = None) -> ir.Value:
    """The window ``x[start(j) : start(j) + length]`` along dim `k`, on the
    device at position ``j`` of its group along the axes A that split dim k
    into K blocks of L; positions outside ``[0, n)`` hold `base`'s element
    there (a value of the window's local shape), or zero.

    Contract: `x` is split along k over A (``x.axes[k]``), its other dims as
    the caller wants them in the window (they stay local); `start` may differ
    per block in any way (tables per device), `length` is the same for all.
    The result has x's local shape with dim k of size `length`, x's dims.

    How: for every block distance ``delta`` that occurs (receiver j reads
    block ``j + delta``), every device cuts, from its block zero-padded by
    `length` on both sides, the part its receiver needs (a per-device
    offset), and one ``collective_permute`` within the groups along A
    delivers it; the receiver keeps, position by position, the part from the
    block owning that position.  Only halos travel -- each device receives at
    most (#distances) x `length` elements along k -- never an all_gather."""
    e = p.emit
    A = x.axes[k]
    groups, position = group_positions(p, A)
    K = len(groups[0])
    n, L = x.shape[k], x.local_shape[k]
    out_shape = list(x.local_shape)
    out_shape[k] = length
    out_type = ir.RankedTensorType.get(out_shape, x.element_type)
    i32 = ir.IntegerType.get_signless(32)
    index_type = ir.RankedTensorType.get(out_shape, i32)
    pred_type = ir.RankedTensorType.get(out_shape, ir.IntegerType.get_signless(1))
    direction = hlo.ComparisonDirectionAttr.get
    dims = x.dims

    def full(v: ir.Value) -> ir.Value:
        return e.tag(hlo.BroadcastInDimOp(index_type, v, []), dims)

    if base is None:
        base = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(out_type, zero_attr(x.element_type))), dims)
    value = base
    # the blocks each receiver j reads: positions [start(j), start(j) + length) within [0, n)
    distances = window_distances(K, L, n, start, length)
    if not distances:
        return value
    # g = the source position each element of the window reads
    g = e.tag(hlo.AddOp(e.tag(hlo.IotaOp(index_type, k), dims),
                        full(device_table(p, [start(position[d]) for d in range(p.mesh.size)]))), dims)
    # every block zero-padded by `length` on both sides: any window of that length that
    # overlaps the block starts inside the padded block
    lows, highs = [0] * len(out_shape), [0] * len(out_shape)
    lows[k] = highs[k] = length
    zero_scalar = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(
        ir.RankedTensorType.get([], x.element_type), zero_attr(x.element_type))), [])
    padded = e.tag(hlo.PadOp(x.value, zero_scalar, lows, highs, [0] * len(out_shape)), dims)
    sizes = list(x.local_shape)
    sizes[k] = length
    for delta in distances:
        # sender s serves receiver j = s - delta: its part starts at start(j) - s*L (+ the padding)
        starts = []
        for dev in range(p.mesh.size):
            s_, j = position[dev], position[dev] - delta
            begin = start(j) - s_ * L + length if 0 <= j < K else 0
            starts.append(min(max(begin, 0), L + length))
        zero_index = e.scalar_i32(0)
        start_values = [device_table(p, starts) if i == k else zero_index for i in range(len(out_shape))]
        part = e.tag(hlo.DynamicSliceOp(padded, start_values, sizes), dims)
        if delta:
            part = e.collective_permute(part, dims, window_pairs(groups, delta))
        # keep it where the source position lies in block (j + delta), inside [0, n)
        lo = full(device_table(p, [max((position[d] + delta) * L, 0) for d in range(p.mesh.size)]))
        hi = full(device_table(p, [min((position[d] + delta + 1) * L, n) for d in range(p.mesh.size)]))
        inside = e.tag(hlo.AndOp(
            e.tag(hlo.CompareOp(g, lo, direction("GE"), results=[pred_type]), dims),
            e.tag(hlo.CompareOp(g, hi, direction("LT"), results=[pred_type]), dims)), dims)
        value = e.tag(hlo.SelectOp(inside, part, value), dims)
    return value


def window_exchange(p: Partitioner, op: ir.Operation, sources, k: int, fill, dims, shape, axes) -> Local:
    """The result's block along dim k, when each result position ``o`` reads
    ``x[o + t]`` from one of `sources` ((x, t) pairs, e.g. a slice from
    ``begin``: t = begin; a pad: t = -low; concat: t = -offset of each part)
    and positions no source covers take `fill` (a scalar Local, or zeros).

    Dims split over the same axes A in operands and result: the device at
    position j needs the window ``x[j*c + t : (j+1)*c + t]`` of each source
    (c: the result's block), fetched by `fetch_window`."""
    e = p.emit
    first = sources[0][0]
    A = first.axes[k]
    K = len(p.mesh.groups(list(A))[0])
    c = shape[k] // K
    out_type = p.local_type(shape, axes, first.element_type)
    if fill is not None:
        value = e.tag(hlo.BroadcastInDimOp(out_type, fill.value, []), dims)
    else:
        value = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(out_type, zero_attr(first.element_type))), dims)
    for x, t in sources:
        target = [tuple(axes[i]) if i != k else A for i in range(len(axes))]
        x = e.reshard(x, target, mir.describe_op_lazily(op))
        value = fetch_window(p, x, k, lambda j, t=t: j * c + t, c, base=value)
    return Local(value, tuple(dims), tuple(shape), tuple(tuple(a) for a in axes))


def window_of(p: Partitioner, op: ir.Operation, env: dict):
    """For ``slice(pad(x))`` or ``slice(concat(x, x))`` that keeps the size of a
    split dim of `x` (a shift, as `mtf.shift` builds it): (x, dim, shift t,
    wrap, pad value) with ``y[i] = x[i + t]``; else None."""
    if op.name != "stablehlo.slice":
        return None
    source = op.operands[0]
    if isinstance(source, ir.BlockArgument):
        return None
    producer = ir.OpResult(source).owner.operation
    if producer.name not in ("stablehlo.pad", "stablehlo.concatenate") or len(list(source.uses)) != 1:
        return None
    x_old = producer.operands[0]
    if x_old not in env or env[x_old] is None:
        return None
    x = env[x_old]
    start, limit = i64s(op.attributes["start_indices"]), i64s(op.attributes["limit_indices"])
    strides = i64s(op.attributes["strides"])
    full = shape_of(source)
    cut = [i for i in range(len(full)) if start[i] != 0 or limit[i] != full[i] or strides[i] != 1]
    if len(cut) != 1 or strides[cut[0]] != 1:
        return None
    k = cut[0]
    n = x.shape[k]
    if limit[k] - start[k] != n or not x.axes[k]:
        return None
    if producer.name == "stablehlo.pad":
        low, high = i64s(producer.attributes["edge_padding_low"]), i64s(producer.attributes["edge_padding_high"])
        interior = i64s(producer.attributes["interior_padding"])
        if any(interior) or any(low[i] or high[i] for i in range(len(full)) if i != k) or low[k] < 0 or high[k] < 0:
            return None
        return x, k, start[k] - low[k], False, producer.operands[1]
    operands = list(producer.operands)
    if (len(operands) != 2 or operands[0] != operands[1]
            or ir.IntegerAttr(producer.attributes["dimension"]).value != k):
        return None
    return x, k, start[k], True, None


def halo_exchange(p: Partitioner, op: ir.Operation, env: dict, dims, shape, axes) -> Local:
    """The shift a hand-written ``slice(pad(x))`` or ``slice(concat(x, x))``
    spells (`window_of`), by `shift_exchange`.  (mtfc's frontend emits the
    ``mtfc.shift`` composite instead: `shift_rule`.)"""
    x, k, t, wrap, pad_value = window_of(p, op, env)
    pad = None if wrap or is_zero_constant(pad_value) else env[pad_value]
    return shift_exchange(p, op, x, k, t, wrap, pad, dims, shape, axes)


def shift_exchange(p: Partitioner, op: ir.Operation, x: Local, k: int, t: int, wrap: bool, pad: Local | None,
                   dims, shape, axes) -> Local:
    """``y[i] = x[i + t]`` along dim k split into K blocks of L: this device's
    block is the tail of block ``j+q`` and the head of block ``j+q+1``
    (``q, r = divmod(t, L)``), fetched by at most two collective_permutes
    within the dim's groups; positions past the ends take `pad` (a scalar;
    None: zero), or wrap around for a cyclic shift (``0 <= t < n``)."""
    e = p.emit
    x = e.reshard(x, [axes[i] if i != k else x.axes[k] for i in range(len(axes))], mir.describe_op_lazily(op))
    dim_axes = x.axes[k]
    groups = p.mesh.groups(list(dim_axes))
    local = list(x.local_shape)
    block = local[k]
    q, r = divmod(t, block)

    def cut(begin: int, end: int) -> ir.Value:
        starts, limits = [0] * len(local), list(local)
        starts[k], limits[k] = begin, end
        return e.tag(hlo.SliceOp(x.value, starts, limits, [1] * len(local)), x.dims)

    def fetch(value: ir.Value, shift: int) -> ir.Value:
        """`value` as computed by the device `shift` positions further along the dim."""
        if shift == 0:
            return value
        return e.collective_permute(value, x.dims, shift_pairs(groups, shift, wrap))

    # the halo travels, not the block: slice first, then permute
    parts = [fetch(cut(r, block), q)]
    if r:
        parts.append(fetch(cut(0, r), q + 1))
    value = parts[0] if len(parts) == 1 else e.tag(hlo.ConcatenateOp(parts, k), x.dims)
    out_type = p.local_type(shape, x.axes, x.element_type)
    if not wrap and pad is not None:
        # collective_permute leaves zeros where nobody sends; positions whose source x[g + t] lies outside [0, n) take the pad value
        n = x.shape[k]
        i32 = ir.IntegerType.get_signless(32)
        index_type = ir.RankedTensorType.get(local, i32)
        position = e.tag(hlo.IotaOp(index_type, k), dims)
        offset = e.tag(hlo.BroadcastInDimOp(index_type, e.shard_offset(dim_axes, block), []), dims)
        source = e.tag(hlo.AddOp(e.tag(hlo.AddOp(position, offset), dims),
                                 e.tag(hlo.BroadcastInDimOp(index_type, e.scalar_i32(t), []), dims)), dims)
        pred = ir.RankedTensorType.get(local, ir.IntegerType.get_signless(1))
        zero = e.tag(hlo.BroadcastInDimOp(index_type, e.scalar_i32(0), []), dims)
        end = e.tag(hlo.BroadcastInDimOp(index_type, e.scalar_i32(n), []), dims)
        direction = hlo.ComparisonDirectionAttr.get
        inside = e.tag(hlo.AndOp(e.tag(hlo.CompareOp(source, zero, direction("GE"), results=[pred]), dims),
                                 e.tag(hlo.CompareOp(source, end, direction("LT"), results=[pred]), dims)), dims)
        fill = e.tag(hlo.BroadcastInDimOp(out_type, pad.value, []), dims)
        value = e.tag(hlo.SelectOp(inside, value, fill), dims)
    return Local(value, tuple(dims), tuple(shape), x.axes)



@rule("stablehlo.composite")
def composite(p, op, args, dims, shape):
    """mtfc's composites (`mtfc.passes.composites`): ``mtfc.shift`` (here) and
    ``mtfc.select_and_scatter`` (`mtfc.passes.partition.pooling`)."""
    name = composite_name(op)
    if name == SHIFT:
        return shift_rule(p, op, args, dims, shape)
    if name == SELECT_AND_SCATTER:
        from mtfc.passes.partition.pooling import select_and_scatter_rule

        return select_and_scatter_rule(p, op, args, dims, shape)
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    if any(a for x in args for a in x.axes) or any(axes):
        raise MtfcError(f"partition: no rule splits the composite {name!r} ({mir.describe_op(op)})")
    from mtfc.passes.partition.local import replicated

    return replicated(p, op, args, dims, shape)


def shift_rule(p, op, args, dims, shape):
    """``mtfc.shift`` along a split dim: the halo by `shift_exchange`; along a
    whole dim: the shift computed locally (pad or concatenate, then slice)."""
    (x,) = args
    k, offset, wrap = shift_attributes(op)
    n = shape[k]
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    if axes[k]:
        t = (-offset) % n if wrap else -offset
        return shift_exchange(p, op, x, k, t, wrap, None, dims, shape, axes)
    e = p.emit
    x = e.reshard(x, axes, mir.describe_op_lazily(op))
    local = list(x.local_shape)
    rank = len(local)
    start, limit = [0] * rank, list(local)
    if wrap:
        doubled = e.tag(hlo.ConcatenateOp([x.value, x.value], k), dims)
        start[k], limit[k] = n - offset, 2 * n - offset
        value = e.tag(hlo.SliceOp(doubled, start, limit, [1] * rank), dims)
    else:
        low, high = [0] * rank, [0] * rank
        if offset > 0:
            low[k], high[k] = offset, n - offset
        else:
            low[k], high[k] = n + offset, -offset
            start[k], limit[k] = n, 2 * n
        zero = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(
            ir.RankedTensorType.get([], x.element_type), zero_attr(x.element_type))), [])
        padded = e.tag(hlo.PadOp(x.value, zero, low, high, [0] * rank), dims)
        value = e.tag(hlo.SliceOp(padded, start, limit, [1] * rank), dims)
    return Local(value, tuple(dims), tuple(shape), x.axes)


# ---------------------------------------------------------- pooling halos
def _halo_widths(p: Partitioner, x: Local, k: int, start: Callable[[int], int], length: int, what: str):
    """(groups, position, K, L, offsets, HL, HR) of the windows
    ``[start(j), start(j) + length)`` along dim k of `x` (split over
    ``x.axes[k]`` into K blocks of L), `halo_widths`."""
    groups, position = group_positions(p, x.axes[k])
    K, L = len(groups[0]), x.local_shape[k]
    offsets, hl, hr = halo_widths(K, L, start, length, x.dims[k], x.axes[k], what)
    return groups, position, K, L, offsets, hl, hr


def halo_widths(K: int, L: int, start: Callable[[int], int], length: int, dim: str, axes: Axes, what: str):
    """(offsets, HL, HR) of the windows ``[start(j), start(j) + length)``
    along a dim split over `axes` into K blocks of L: ``offsets[j] = start(j)
    - j*L``; HL (HR) rows are needed from the block before (after), the most
    any block needs -- one collective_permute has one shape; `halo_window`
    permutes HL rows from the block before (`neighbour_pairs(groups, 1)`) and
    HR from the one after (``-1``), `scatter_window_add` the mirror.  A window
    reaching past the neighbouring block is an error naming the dim and its
    mesh axes."""
    offsets = [start(j) - j * L for j in range(K)]
    hl = max([0] + [-a for a in offsets])
    hr = max([0] + [a + length - L for a in offsets])
    if hl > L or hr > L:
        raise MtfcError(f"{what}: the window along dim {dim!r} reaches {max(hl, hr)} rows past a block of "
                        f"{L} (dim split over mesh axes {'+'.join(axes)}); use fewer devices along it")
    return offsets, hl, hr


def _cut(p: Partitioner, value: ir.Value, dims, k: int, begin: int, end: int) -> ir.Value:
    shape = shape_of(value)
    starts, limits = [0] * len(shape), list(shape)
    starts[k], limits[k] = begin, end
    return p.emit.tag(hlo.SliceOp(value, starts, limits, [1] * len(shape)), dims)


def neighbour_pairs(groups, step: int) -> list[tuple[int, int]]:
    """(source, target) pairs: each device sends to the one `step` further along its group."""
    return [(g[j], g[j + step]) for g in groups for j in range(len(g)) if 0 <= j + step < len(g)]


def _per_device_starts(p: Partitioner, position, k: int, rank: int, offset_of) -> list[ir.Value]:
    e = p.emit
    zero = e.scalar_i32(0)
    table = device_table(p, [offset_of(position[d]) for d in range(p.mesh.size)])
    return [table if i == k else zero for i in range(rank)]


def halo_window(p: Partitioner, x: Local, k: int, start: Callable[[int], int], length: int,
                fill: ir.Value | None, what: str) -> ir.Value:
    """The window ``x[start(j) : start(j) + length]`` along dim `k` on the
    device at position j of the groups splitting dim k -- its block extended
    by exactly the HL rows before and HR rows after it that some block needs
    (`_halo_widths`), each fetched from the neighbour by one
    collective_permute, then cut at this block's offset.  Positions outside
    ``[0, n)`` (only at the global edges) hold `fill` (a scalar; None: zero).
    Contract as `fetch_window`: x's other dims stay as they are; the result
    has x's local shape with dim k of size `length`."""
    e = p.emit
    groups, position, K, L, offsets, hl, hr = _halo_widths(p, x, k, start, length, what)
    if not hl and not hr and length == L and not any(offsets):
        return x.value
    dims, rank = x.dims, len(x.local_shape)
    parts = []
    if hl:
        parts.append(e.collective_permute(_cut(p, x.value, dims, k, L - hl, L), dims, neighbour_pairs(groups, 1)))
    parts.append(x.value)
    if hr:
        parts.append(e.collective_permute(_cut(p, x.value, dims, k, 0, hr), dims, neighbour_pairs(groups, -1)))
    extended = parts[0] if len(parts) == 1 else e.tag(hlo.ConcatenateOp(parts, k), dims)
    ext_shape = shape_of(extended)
    if fill is not None and (hl or hr):
        # rows before 0 (block 0) and past n (block K-1) are padding: `fill`
        i32 = ir.IntegerType.get_signless(32)
        index_type = ir.RankedTensorType.get(ext_shape, i32)
        pred = ir.RankedTensorType.get(ext_shape, ir.IntegerType.get_signless(1))
        direction = hlo.ComparisonDirectionAttr.get

        def full(v):
            return e.tag(hlo.BroadcastInDimOp(index_type, v, []), dims)

        g = e.tag(hlo.AddOp(e.tag(hlo.IotaOp(index_type, k), dims),
                            full(device_table(p, [position[d] * L - hl for d in range(p.mesh.size)]))), dims)
        inside = e.tag(hlo.AndOp(
            e.tag(hlo.CompareOp(g, full(e.scalar_i32(0)), direction("GE"), results=[pred]), dims),
            e.tag(hlo.CompareOp(g, full(e.scalar_i32(x.shape[k])), direction("LT"), results=[pred]), dims)), dims)
        padding = e.tag(hlo.BroadcastInDimOp(extended.type, fill, []), dims)
        extended = e.tag(hlo.SelectOp(inside, extended, padding), dims)
    if hl + L + hr == length and not any(a + hl for a in offsets):
        return extended
    sizes = list(ext_shape)
    sizes[k] = length
    starts = _per_device_starts(p, position, k, rank, lambda j: hl + offsets[j])
    return e.tag(hlo.DynamicSliceOp(extended, starts, sizes), dims)


def scatter_window_add(p: Partitioner, x: Local, value: ir.Value, k: int, start: Callable[[int], int],
                       length: int, what: str) -> ir.Value:
    """The mirror of `halo_window`: `value` holds, on the device at position
    j, contributions to the rows ``[start(j), start(j) + length)`` along dim
    `k` of a tensor laid out as `x` (split over ``x.axes[k]`` into blocks of
    L); the result is this device's block (dim k of size L) of their sum
    over all devices.  The HL (HR) rows written before (after) the block
    are sent to the neighbour owning them by one collective_permute each
    and added there; rows outside ``[0, n)`` (padding) are dropped."""
    e = p.emit
    groups, position, K, L, offsets, hl, hr = _halo_widths(p, x, k, start, length, what)
    if not hl and not hr and length == L and not any(offsets):
        return value
    dims = x.dims
    local = shape_of(value)
    rank = len(local)
    buffer_shape = list(local)
    buffer_shape[k] = hl + L + hr
    element = ir.RankedTensorType(value.type).element_type
    if hl + L + hr == length and not any(a + hl for a in offsets):
        buffer = value
    else:
        zeros = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(
            ir.RankedTensorType.get(buffer_shape, element), zero_attr(element))), dims)
        starts = _per_device_starts(p, position, k, rank, lambda j: hl + offsets[j])
        buffer = e.tag(hlo.DynamicUpdateSliceOp(zeros, value, starts), dims)
    total = _cut(p, buffer, dims, k, hl, hl + L)
    zero_scalar = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(
        ir.RankedTensorType.get([], element), zero_attr(element))), [])

    def placed(part: ir.Value, low: int, high: int) -> ir.Value:
        lows, highs = [0] * rank, [0] * rank
        lows[k], highs[k] = low, high
        return e.tag(hlo.PadOp(part, zero_scalar, lows, highs, [0] * rank), dims)

    if hl:  # rows before the block belong to the previous device: its last hl rows
        sent = e.collective_permute(_cut(p, buffer, dims, k, 0, hl), dims, neighbour_pairs(groups, -1))
        total = e.tag(hlo.AddOp(total, placed(sent, L - hl, 0)), dims)
    if hr:  # rows after it belong to the next device: its first hr rows
        sent = e.collective_permute(_cut(p, buffer, dims, k, hl + L, hl + L + hr), dims, neighbour_pairs(groups, 1))
        total = e.tag(hlo.AddOp(total, placed(sent, 0, L - hr)), dims)
    return total
