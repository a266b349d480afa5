"""Rules for pooling: ``stablehlo.reduce_window`` (max and sum pools) and the
composite ``mtfc.select_and_scatter`` (max pooling's gradient).

Their dims are read from the op-rule registry (`op_rules.factors_of`): dims
with a nontrivial window are window factors, the others pass.  Pass dims and
windowed dims the layout keeps whole are computed locally with the op's own
window.  A windowed dim split into K blocks (the result's block: c rows):
block j of the result reads the operand rows ``[j*c*stride - pad_lo,
j*c*stride - pad_lo + (c-1)*stride + size)`` -- its own block and a halo of
its neighbours' edge rows, exchanged by ``collective_permute``
(`windows.halo_window`), never an all_gather; rows outside the operand (the
padding, at the global edges only) hold the op's padding value (the init
value: -inf for a max pool, 0 for a sum; -inf for select_and_scatter, whose
padding is never chosen).  The local op then runs on that window without
padding.  select_and_scatter writes into the halo rows too: they are sent
back to their owners and added (`windows.scatter_window_add`).

A base-dilated sum pool (the gradient of a strided sum pool) along a split
dim first dilates each block locally (interior and trailing padding with the
init value): the blocks of the dilated operand are then the dilated blocks.
Sizes that do not divide, and windows reaching past a neighbouring block,
are one-line errors naming the dim and the mesh axes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes import op_rules
from mtfc.passes.collectives import Local
from mtfc.passes.partition.common import local_result, rule, shape_of
from mtfc.passes.partition.windows import halo_window, scatter_window_add


def windowed_dims(op: ir.Operation) -> dict[int, op_rules.Window]:
    """The window of each windowed dim of a pooling op (op_rules window factors), by dim index."""
    factors = op_rules.factors_of(op)
    return {i: f.window for i, f in enumerate(factors.factors) if f.kind == op_rules.WINDOW}


def _attrs(rank: int, windows: dict[int, op_rules.Window]) -> dict[str, list]:
    ws = [windows.get(i, op_rules.Window()) for i in range(rank)]
    return {"window_dimensions": [w.size for w in ws], "window_strides": [w.stride for w in ws],
            "base_dilations": [w.base_dilation for w in ws], "window_dilations": [w.dilation for w in ws],
            "padding": [[w.pad_lo, w.pad_hi] for w in ws]}


def _padding_attr(padding) -> ir.DenseIntElementsAttr:
    return ir.DenseIntElementsAttr.get(np.asarray(padding, dtype=np.int64).reshape(-1, 2))


def _scalar(p, value: float, element: ir.Type) -> ir.Value:
    attr = ir.FloatAttr.get(element, value) if not isinstance(element, ir.IntegerType) else ir.IntegerAttr.get(
        element, int(value))
    return p.emit.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(ir.RankedTensorType.get([], element), attr)), [])


def _dilate(p, x: Local, k: int, b: int, fill: ir.Value) -> Local:
    """x base-dilated by b along split dim k, block by block, plus b-1 trailing
    fill rows per block: global size n*b, blocks of L*b."""
    rank = len(x.local_shape)
    low, high, interior = [0] * rank, [0] * rank, [0] * rank
    high[k], interior[k] = b - 1, b - 1
    value = p.emit.tag(hlo.PadOp(x.value, fill, low, high, interior), x.dims)
    shape = list(x.shape)
    shape[k] *= b
    return Local(value, x.dims, tuple(shape), x.axes)


@dataclass(frozen=True)
class PoolHalo:
    """The window of split windowed dim `dim` (after a base dilation by
    `base_dilation` when > 1): device j reads rows ``[start(j), start(j) + length)``."""

    dim: int
    base_dilation: int
    block: int
    stride: int
    pad_lo: int
    length: int

    def start(self, j: int) -> int:
        return j * self.block * self.stride - self.pad_lo


def pool_plan(windows: dict[int, op_rules.Window], axes, pooled_shape, factor, dims, what: str):
    """The pooling rules' decisions, from layouts alone: ([`PoolHalo`] of the
    split windowed dims, in dim order; the local op's windows).  A dilated
    window on a split dim is refused."""
    plan, local = [], dict(windows)
    for k, w in sorted(windows.items()):
        if not axes[k]:
            continue
        if w.dilation != 1:
            raise MtfcError(f"partition: {what}: dim {dims[k]!r} has a dilated window and is split over mesh "
                            f"axes {'+'.join(axes[k])}; keep it whole")
        c = pooled_shape[k] // factor(axes[k])
        plan.append(PoolHalo(k, w.base_dilation, c, w.stride, w.pad_lo, (c - 1) * w.stride + w.size))
        local[k] = op_rules.Window(w.size, stride=w.stride)
    return plan, local


def _halo_plan(p, op, x: Local, pooled_shape, axes, windows, fill: ir.Value, what: str):
    """Extend x by the halo of every split windowed dim (`pool_plan`): (the
    extended Local, [`PoolHalo`], the local op's windows)."""
    plan, local = pool_plan(windows, axes, pooled_shape, p.emit.factor, x.dims, what)
    for h in plan:
        if h.base_dilation > 1:
            x = _dilate(p, x, h.dim, h.base_dilation, fill)
        x = replace(x, value=halo_window(p, x, h.dim, h.start, h.length, fill, what))
    return x, plan, local


@rule("stablehlo.reduce_window")
def reduce_window(p, op, args, dims, shape):
    """A max or sum pool: split windowed dims by halo exchange, the rest local."""
    what = mir.describe_op_lazily(op)
    if len(op.operands) != 2:
        raise MtfcError(f"partition: no rule splits the variadic {what}")
    x, init = args
    axes = p.axes_of(dims, shape, what)
    x = p.emit.reshard(x, axes, what)
    windows = windowed_dims(op)
    extended, _, local = _halo_plan(p, op, x, shape, axes, windows, init.value, what)
    a = _attrs(len(shape), local)
    t = p.local_type(shape, axes, x.element_type)
    value = p.clone(op, [extended.value, init.value], t, dims,
                    window_dimensions=ir.DenseI64ArrayAttr.get(a["window_dimensions"]),
                    window_strides=ir.DenseI64ArrayAttr.get(a["window_strides"]),
                    base_dilations=ir.DenseI64ArrayAttr.get(a["base_dilations"]),
                    window_dilations=ir.DenseI64ArrayAttr.get(a["window_dilations"]),
                    padding=_padding_attr(a["padding"]))
    return local_result(p, value, dims, shape, axes)


def select_and_scatter_rule(p, op, args, dims, shape):
    """``mtfc.select_and_scatter``: the operand's halo in (-inf at the global
    edges), the local select_and_scatter on it, the rows it wrote into the
    halo sent back to their owners and added."""
    what = mir.describe_op_lazily(op)
    x, source = args
    axes = p.axes_of(dims, shape, what)
    x = p.emit.reshard(x, axes, what)
    source = p.emit.reshard(source, axes, what)
    windows = windowed_dims(op)
    element = x.element_type
    extended, plan, local = _halo_plan(p, op, x, source.shape, axes, windows, _scalar(p, -np.inf, element), what)
    a = _attrs(len(shape), local)
    result_type = ir.RankedTensorType.get(shape_of(extended.value), element)
    ss = hlo.SelectAndScatterOp(result_type, extended.value, source.value, _scalar(p, 0.0, element),
                                window_dimensions=a["window_dimensions"], window_strides=a["window_strides"],
                                padding=_padding_attr(a["padding"]))
    scalar = ir.RankedTensorType.get([], element)
    select = ss.regions[0].blocks.append(scalar, scalar)
    with ir.InsertionPoint(select):
        hlo.ReturnOp([hlo.CompareOp(select.arguments[0], select.arguments[1],
                                    hlo.ComparisonDirectionAttr.get("GE")).result])
    scatter = ss.regions[1].blocks.append(scalar, scalar)
    with ir.InsertionPoint(scatter):
        hlo.ReturnOp([hlo.AddOp(scatter.arguments[0], scatter.arguments[1]).result])
    value = p.emit.tag(ss, dims)
    for h in reversed(plan):
        value = scatter_window_add(p, x, value, h.dim, h.start, h.length, what)
    return local_result(p, value, dims, shape, axes)
