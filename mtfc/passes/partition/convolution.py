"""Rules for ``stablehlo.convolution`` and ``stablehlo.reverse``.

A convolution partitions by its factors (`mtfc.passes.op_rules.convolution_factors`):

* batch and output features: local (the operands take the result's axes);
* input features: each device convolves its own features, then an
  ``all_reduce`` over their axes (the driver's reshard to the result's layout
  then cuts its block: fused into a ``reduce_scatter`` downstream);
* a spatial dim split over axes A into K blocks: device j computes its block
  of the result, whose window of the (dilated) input starts at
  ``q(j) = j * c * a - pad_lo`` and spans ``span = (c - 1) * a + (w - 1) * b + 1``
  dilated positions (c: the block of the blocked operand, a: its step, w and
  b: the other window's extent and step -- forward view: the output block,
  ``a`` = stride, the kernel with its dilation; kernel-gradient view: the
  output gradient's block, ``a`` = rhs dilation, the kernel-sized output with
  the stride), so each device needs a halo of ``pad_lo`` positions before its
  block and ``span - pad_lo - L`` after it (L: its block of the input), which
  differ at the edges only by the zeros nobody sends.  When the blocks align
  (no lhs dilation, ``c * a = L``, halos at most one block), the halos are
  exact static slices sent by one ``collective_permute`` per side; else
  `windows.fetch_window` cuts the window with per-device offsets.  Never an
  all_gather of the activation.  In the kernel-gradient view the partial
  kernels are summed by the same ``all_reduce`` as the features.
* grouped convolutions (depthwise): when the output features are split over
  axes whose size divides the groups, each device keeps whole groups and
  convolves them alone (`_group_split`); otherwise grouped dims are whole.

Sizes that do not divide the mesh axes are refused by the layout itself
(``dim 'h' of size 9 is not divisible by mesh axes cols``); a split whose
blocks give different local paddings under lhs dilation is refused naming
the op, the dim and the axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.collectives import Local
from mtfc.passes.op_rules import conv_numbers
from mtfc.passes.partition.common import i64s, local_result, rule
from mtfc.passes.partition.windows import fetch_window, group_positions, window_pairs


def _sum_axes(lhs_axes, dim: int, used: set) -> tuple:
    """The prefix of the lhs's axes on a summed dim that the result does not use."""
    keep = []
    for a in lhs_axes[dim]:
        if a in used:
            break
        keep.append(a)
        used.add(a)
    return tuple(keep)


@dataclass(frozen=True)
class ConvHalo:
    """The lhs window of split spatial dim `spatial` (lhs dim `lhs_dim`,
    split over `axes`): device j reads dilated positions
    ``[j * block * step - pad_lo, ... + span)``; `kernel_view`: the kernel-gradient view."""

    spatial: int
    lhs_dim: int
    axes: tuple
    kernel_view: bool
    block: int
    step: int
    pad_lo: int
    span: int
    lhs_dilation: int

    def start(self, j: int) -> int:
        return j * self.block * self.step - self.pad_lo


@dataclass(frozen=True)
class ConvPlan:
    """The convolution rule's decisions, from layouts alone: the operand
    targets, the layout the local convolution computes, the axes summed by
    the all_reduce (split input features, kernel-gradient spatial sums), the
    group split (axes, lhs role) or None, and the halos, in spatial order."""

    lhs: tuple
    rhs: tuple
    compute: tuple
    summed: tuple
    groups: tuple | None
    halos: tuple


def conv_plan(op: ir.Operation, lhs_axes, rhs_shape, shape, out_axes, factor) -> ConvPlan:
    """`ConvPlan` of `op` (lhs laid out as `lhs_axes`, the result as
    `out_axes`); `factor(axes)` is the device count of mesh axes."""
    c = conv_numbers(op)
    grouped = c.feature_groups > 1 or c.batch_groups > 1
    lhs_t, rhs_t = [()] * len(lhs_axes), [()] * len(rhs_shape)
    compute = [()] * len(shape)  # the layout the local convolution computes
    used = {a for axes in out_axes for a in axes}
    if c.batch_groups == 1:
        lhs_t[c.lhs[0]] = compute[c.out[0]] = out_axes[c.out[0]]
    if not grouped:
        rhs_t[c.rhs[1]] = compute[c.out[1]] = out_axes[c.out[1]]
    summed: tuple = ()
    if c.feature_groups == 1:
        summed = lhs_t[c.lhs[1]] = rhs_t[c.rhs[0]] = _sum_axes(lhs_axes, c.lhs[1], used)
    groups = _group_split(c, out_axes, factor)
    if groups:
        axes, role = groups
        lhs_t[c.lhs[role]] = rhs_t[c.rhs[1]] = compute[c.out[1]] = axes
    halos = []
    for i, (li, ri, oi) in enumerate(zip(c.lhs[2], c.rhs[2], c.out[2])):
        if c.kernel_gradient_view(op, i):
            axes = _sum_axes(lhs_axes, li, used)
            if not (axes and rhs_shape[ri] % factor(axes) == 0):
                continue
            lhs_t[li] = rhs_t[ri] = axes
            summed += axes
            block, step = rhs_shape[ri] // factor(axes), c.rhs_dilation[i]
            span = (block - 1) * step + (shape[oi] - 1) * c.strides[i] + 1
        elif out_axes[oi]:
            axes = lhs_t[li] = compute[oi] = out_axes[oi]
            block, step = shape[oi] // factor(axes), c.strides[i]
            span = (block - 1) * step + (rhs_shape[ri] - 1) * c.rhs_dilation[i] + 1
        else:
            continue
        halos.append(ConvHalo(i, li, tuple(axes), c.kernel_gradient_view(op, i), block, step, c.padding[i][0], span,
                              c.lhs_dilation[i]))
    return ConvPlan(tuple(lhs_t), tuple(rhs_t), tuple(compute), summed, groups, tuple(halos))


def halo_plan(K: int, L: int, start, span: int, ld: int):
    """How `_halo` fetches the window ``[start(j), start(j) + span)`` (dilated
    positions) of a dim split into K blocks of L real elements (lhs dilation
    `ld`): ``("static", before, after, padding)`` -- exact static slices of
    real elements, a collective_permute per nonzero side (`before` from the
    block before, `after` from the one after; negative: trimmed), then the
    local convolution with `padding`; ``("fetch", start, length, padding)`` --
    `windows.fetch_window` with the local padding; None -- the blocks would
    need different local paddings (refused).  Window j holds the real
    elements ``[first(j), first(j) + count)``, ``first(j) = ceil(start(j) /
    ld)``, its first one ``lo`` dilated positions in; the blocks align when
    ``first(j) = j * L - before`` for every j (with ld = 1: ``c * a = L``;
    else ``c * a = L * ld``), and the halos fit in one block."""
    first = [-((-start(j)) // ld) for j in range(K)]
    lo = [first[j] * ld - start(j) for j in range(K)]
    count = [(start(j) + span - 1) // ld - first[j] + 1 for j in range(K)]
    if len(set(lo)) != 1 or len(set(count)) != 1 or count[0] < 1:
        return None
    padding = (lo[0], span - lo[0] - ((count[0] - 1) * ld + 1))
    before = -first[0]
    after = count[0] - before - L
    aligned = all(first[j] == j * L - before for j in range(K))
    if aligned and abs(before) <= L and abs(after) <= L and max(0, -before) < L + min(0, after):
        return "static", before, after, padding
    return "fetch", (lambda j: first[j]), count[0], padding


def dilation_error(what: str, dim: str, axes, ld: int) -> MtfcError:
    """The refusal of a `halo_plan` that is None."""
    return MtfcError(
        f"partition: {what}: dim {dim!r} split over {'+'.join(axes)} gives the blocks "
        f"of this lhs-dilated (transposed) convolution different local paddings; choose a block size "
        f"(size / devices) that is a multiple of the dilation {ld}, or keep {dim!r} whole")


@rule("stablehlo.convolution")
def convolution(p, op, args, dims, shape):
    lhs, rhs = args
    c = conv_numbers(op)
    what = mir.describe_op_lazily(op)
    out_axes = p.axes_of(dims, shape, what)
    plan = conv_plan(op, lhs.axes, rhs.shape, shape, out_axes, p.emit.factor)
    lhs = p.emit.reshard(lhs, plan.lhs, what)
    rhs = p.emit.reshard(rhs, plan.rhs, what)
    value, padding = lhs.value, list(c.padding)
    for h in plan.halos:
        x = Local(value, lhs.dims, lhs.shape, lhs.axes)
        value, padding[h.spatial] = _halo(p, op, x, h.lhs_dim, h.start, h.span, h.lhs_dilation)
    t = p.local_type(shape, plan.compute, lhs.element_type)
    pads = ir.DenseIntElementsAttr.get(np.asarray(padding, dtype=np.int64).reshape(len(padding), 2))
    overrides = {"padding": pads}
    if plan.groups:
        i64 = ir.IntegerType.get_signless(64)
        key = "feature_group_count" if c.feature_groups > 1 else "batch_group_count"
        count = max(c.feature_groups, c.batch_groups) // p.emit.factor(plan.groups[0])
        overrides[key] = ir.IntegerAttr.get(i64, count)
    result = local_result(p, p.clone(op, [value, rhs.value], t, dims, **overrides), dims, shape, plan.compute)
    return p.emit.all_reduce(result, plan.summed, "sum")


def _group_split(c, out_axes, factor):
    """Group-aligned blocks of a grouped convolution: with g feature (batch)
    groups and the output features split over axes A of K devices, K | g,
    each device holds whole groups -- its block of the lhs features (batch),
    of the kernel's and the result's output features -- and convolves them
    alone with g / K groups.  (axes, lhs role index) or None (grouped dims
    whole)."""
    g = max(c.feature_groups, c.batch_groups)
    axes = out_axes[c.out[1]]
    if g == 1 or not axes or g % factor(axes):
        return None
    return tuple(axes), (1 if c.feature_groups > 1 else 0)


def _halo(p, op, x: Local, k: int, start, span: int, ld: int) -> tuple[ir.Value, tuple[int, int]]:
    """The lhs window dilated positions ``[start(j), start(j) + span)`` of
    device j need, along dim k (split over ``x.axes[k]``), and the local
    convolution's padding of that dim: (value, (lo, hi)) -- as `halo_plan` decides."""
    groups, _ = group_positions(p, x.axes[k])
    plan = halo_plan(len(groups[0]), x.local_shape[k], start, span, ld)
    if plan is None:
        raise dilation_error(mir.describe_op(op), x.dims[k], x.axes[k], ld)
    if plan[0] == "static":
        return _static_halo(p, x, k, groups, plan[1], plan[2]), plan[3]
    _, begin, length, padding = plan
    return fetch_window(p, x, k, begin, length), padding


def _static_halo(p, x: Local, k: int, groups, before: int, after: int) -> ir.Value:
    """[last `before` elements of the previous block, this block (trimmed
    where a halo is negative), first `after` of the next]: exact static
    slices, one collective_permute per side; the edge devices receive zeros
    (the convolution's zero padding)."""
    e = p.emit
    L = x.local_shape[k]

    def cut(begin: int, end: int) -> ir.Value:
        starts, limits = [0] * len(x.local_shape), list(x.local_shape)
        starts[k], limits[k] = begin, end
        return e.tag(hlo.SliceOp(x.value, starts, limits, [1] * len(starts)), x.dims)

    def from_neighbour(value: ir.Value, delta: int) -> ir.Value:
        return e.collective_permute(value, x.dims, window_pairs(groups, delta))

    parts = []
    if before > 0:
        parts.append(from_neighbour(cut(L - before, L), -1))
    begin, end = max(0, -before), L + min(0, after)
    parts.append(x.value if (begin, end) == (0, L) else cut(begin, end))
    if after > 0:
        parts.append(from_neighbour(cut(0, after), 1))
    return parts[0] if len(parts) == 1 else e.tag(hlo.ConcatenateOp(parts, k), x.dims)


@rule("stablehlo.reverse")
def reverse(p, op, args, dims, shape):
    """Reverse locally along whole dims (the reversed ones are gathered: a
    kernel's window dims, whole under any sensible layout)."""
    (x,) = args
    axes = p.axes_of(dims, shape, mir.describe_op_lazily(op))
    target = reverse_target(op, axes)
    x = p.emit.reshard(x, target, mir.describe_op_lazily(op))
    t = p.local_type(shape, target, x.element_type)
    return local_result(p, p.clone(op, [x.value], t, dims), dims, shape, target)


def reverse_target(op: ir.Operation, axes) -> list:
    """The result's layout with the reversed dims whole: the operand's target and the local result's layout."""
    reversed_ = set(i64s(op.attributes["dimensions"]))
    return [() if i in reversed_ else tuple(a) for i, a in enumerate(axes)]
