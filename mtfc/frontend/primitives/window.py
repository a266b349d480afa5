"""Window primitives over named dims: pooling (``reduce_window``) and max
pooling's gradient (``select_and_scatter``).

A window is given per windowed dim as a `Win` (dim name, size, stride, pad
before, pad after, base dilation); dims not named have the trivial window.
Output dims keep the input's names and order; a windowed dim keeps its name
with its new size ``(b*(n-1)+1 + lo + hi - size) // stride + 1`` (the DSL lets
one dim name have different sizes in different tensors, as a slice does).

``reduce_window`` lowers to ``stablehlo.reduce_window`` (body: add or
maximum).  Its gradients:

* sum: the transposed window sum (JAX's rule): a ``reduce_window`` sum of the
  output gradient with base dilation = the forward stride, stride = the
  forward base dilation and padding ``(size-1-lo, ...)`` -- exact;
* max: ``select_and_scatter`` (select ``GE``: the first maximum of each window
  gets the gradient, as XLA), emitted as ``stablehlo.composite
  "mtfc.select_and_scatter"`` (docs/IR.md "Composite ops") whose
  decomposition is the ``stablehlo.select_and_scatter``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc.frontend.dims import Dim, Shape
from mtfc.frontend.graph import FLOAT_DTYPES, fail
from mtfc.frontend.primitives.base import Primitive, bind1, register

KINDS = {"sum": hlo.AddOp, "max": hlo.MaxOp}


@dataclass(frozen=True)
class Win:
    """The window along one named dim (see `reduce_window_shape`)."""

    dim: str
    size: int
    stride: int = 1
    lo: int = 0
    hi: int = 0
    base_dilation: int = 1

    def out_size(self, n: int) -> int:
        return (self.base_dilation * (n - 1) + 1 + self.lo + self.hi - self.size) // self.stride + 1


def window_shape(x_shape: Shape, windows: tuple[Win, ...], what: str) -> Shape:
    """The output dims: x's, each windowed dim resized (its name kept)."""
    by_name = {w.dim: w for w in windows}
    for w in windows:
        x_shape.index(w.dim)
        if w.size < 1 or w.stride < 1 or w.base_dilation < 1:
            raise fail(f"{what}: dim {w.dim!r}: window size, stride and dilation must be positive "
                       f"(got size {w.size}, stride {w.stride})")
    dims = []
    for d in x_shape:
        w = by_name.get(d.name)
        if w is None:
            dims.append(d)
            continue
        out = w.out_size(d.size)
        if out < 1:
            raise fail(f"{what}: dim {d.name!r} of size {d.size} is smaller than its window {w.size} "
                       f"(padding {w.lo}, {w.hi})")
        dims.append(Dim(d.name, out))
    return Shape(dims)


def window_attributes(x_shape: Shape, windows: tuple[Win, ...]) -> dict[str, list[int]]:
    """Per-position window attributes of the StableHLO op over `x_shape`."""
    by_name = {w.dim: w for w in windows}
    ws = [by_name.get(n, Win(n, 1)) for n in x_shape.names]
    return {"window_dimensions": [w.size for w in ws], "window_strides": [w.stride for w in ws],
            "base_dilations": [w.base_dilation for w in ws], "padding": [[w.lo, w.hi] for w in ws]}


def _init(kind: str, dtype: str):
    if kind == "sum":
        return 0
    return -np.inf if dtype in FLOAT_DTYPES else np.iinfo(np.int32).min


def _padding_attr(padding) -> ir.DenseIntElementsAttr:
    return ir.DenseIntElementsAttr.get(np.asarray(padding, dtype=np.int64).reshape(-1, 2))


def _body(lx, region, combine, dtype: str) -> None:
    scalar = lx.type_of([], dtype)
    block = region.blocks.append(scalar, scalar)
    with ir.InsertionPoint(block):
        hlo.ReturnOp([combine(block.arguments[0], block.arguments[1]).result])


@register
class ReduceWindow(Primitive):
    """``kind`` (sum, max) over the windows `windows` (a tuple of `Win`)."""

    name = "reduce_window"

    def infer(self, inputs, params):
        (x,) = inputs
        if params["kind"] not in KINDS:
            raise AssertionError(params["kind"])
        return [(window_shape(x.shape, params["windows"], params.get("what", "pool")), x.dtype)]

    def lower(self, lx, op, args):
        (x,), out = op.inputs, op.outputs[0]
        kind = op.params["kind"]
        a = window_attributes(x.shape, op.params["windows"])
        init = lx.scalar(_init(kind, x.dtype), x.dtype)
        rw = hlo.ReduceWindowOp([lx.type(out)], [args[0]], [init], a["window_dimensions"],
                                window_strides=a["window_strides"], base_dilations=a["base_dilations"],
                                padding=_padding_attr(a["padding"]))
        _body(lx, rw.regions[0], KINDS[kind], x.dtype)
        return [lx.tag(rw, out.shape.names)]

    def grad(self, op, output_grads):
        (g,), x = output_grads, op.inputs[0]
        if x.dtype not in FLOAT_DTYPES:
            return [None]
        windows = op.params["windows"]
        if op.params["kind"] == "max":
            if any(w.base_dilation != 1 for w in windows):
                raise fail("the gradient of a base-dilated max pool is not supported")
            return [bind1("select_and_scatter", [x, g], windows=windows, name="max_pool_grad")]
        back = []
        for w in windows:
            n, out = x.shape.get(w.dim).size, g.shape.get(w.dim).size
            dilated_in = (n - 1) * w.base_dilation + 1
            lo = w.size - w.lo - 1
            hi = dilated_in + w.size - 1 - ((out - 1) * w.stride + 1) - lo
            back.append(Win(w.dim, w.size, stride=w.base_dilation, lo=lo, hi=hi, base_dilation=w.stride))
        return [bind1("reduce_window", [g], kind="sum", windows=tuple(back), name="sum_pool_grad")]


@register
class SelectAndScatter(Primitive):
    """Max pooling's gradient: each window's source value (of ``source``,
    the pooled shape) added at the first maximum of the window in
    ``operand``; the result has the operand's dims."""

    name = "select_and_scatter"

    def infer(self, inputs, params):
        x, g = inputs
        want = window_shape(x.shape, params["windows"], "max_pool gradient")
        if g.shape != want:
            raise fail(f"select_and_scatter: source dims {g.shape} are not the pooled dims {want}")
        return [(x.shape, x.dtype)]

    def lower(self, lx, op, args):
        x, out = op.inputs[0], op.outputs[0]
        a = window_attributes(x.shape, op.params["windows"])
        names, dtype = out.shape.names, x.dtype

        def decompose(lx, operand, source):
            init = lx.scalar(0, dtype)
            ss = hlo.SelectAndScatterOp(lx.type(out), operand, source, init,
                                        window_dimensions=a["window_dimensions"],
                                        window_strides=a["window_strides"], padding=_padding_attr(a["padding"]))
            scalar = lx.type_of([], dtype)
            select = ss.regions[0].blocks.append(scalar, scalar)
            with ir.InsertionPoint(select):
                ge = hlo.CompareOp(select.arguments[0], select.arguments[1],
                                   hlo.ComparisonDirectionAttr.get("GE"))
                hlo.ReturnOp([ge.result])
            _body(lx, ss.regions[1], hlo.AddOp, dtype)
            return lx.tag(ss, names)

        attributes = {"window_dimensions": a["window_dimensions"], "window_strides": a["window_strides"],
                      "padding_low": [p[0] for p in a["padding"]], "padding_high": [p[1] for p in a["padding"]]}
        return [lx.composite("mtfc.select_and_scatter", list(args), lx.type(out), names, attributes, decompose)]

    def grad(self, op, output_grads):
        raise fail("the second-order gradient of max_pool is not supported")
