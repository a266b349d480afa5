"""Elementwise primitives: one table row per function (arity, StableHLO op, result dtype).

Inputs of an elementwise op have identical shapes; the DSL broadcasts by dim
name before binding (see `mtfc.frontend.ops`).
"""

from __future__ import annotations

from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc.frontend.graph import FLOAT_DTYPES, fail
from mtfc.frontend.primitives.base import Primitive, register

# fn -> (arity, builder(*args) -> op, float inputs only)
UNARY = {
    "exp": hlo.ExpOp,
    "log": hlo.LogOp,
    "tanh": hlo.TanhOp,
    "logistic": hlo.LogisticOp,
    "sqrt": hlo.SqrtOp,
    "rsqrt": hlo.RsqrtOp,
    "abs": hlo.AbsOp,
    "negate": hlo.NegOp,
    "floor": hlo.FloorOp,
    "sign": hlo.SignOp,
    "not": hlo.NotOp,
}
BINARY = {
    "add": hlo.AddOp,
    "subtract": hlo.SubtractOp,
    "multiply": hlo.MulOp,
    "divide": hlo.DivOp,
    "maximum": hlo.MaxOp,
    "minimum": hlo.MinOp,
    "power": hlo.PowOp,
    "and": hlo.AndOp,
    "or": hlo.OrOp,
}
COMPARE = {"eq": "EQ", "ne": "NE", "lt": "LT", "le": "LE", "gt": "GT", "ge": "GE"}
FLOAT_ONLY = {"exp", "log", "tanh", "logistic", "sqrt", "rsqrt", "floor", "power"}
BOOL_ONLY = {"not", "and", "or"}


@register
class Elementwise(Primitive):
    """``fn(*inputs)`` elementwise over inputs of one shape."""

    name = "elementwise"

    def infer(self, inputs, params):
        fn = params["fn"]
        shapes = {tuple(t.shape) for t in inputs}
        assert len(shapes) == 1, f"elementwise {fn} on unbroadcast shapes {shapes}"
        shape = inputs[0].shape
        if fn == "select":
            pred, a, b = inputs
            if pred.dtype != "i1":
                raise fail(f"where: the condition must be boolean, got {pred.dtype}")
            if a.dtype != b.dtype:
                raise fail(f"where: branches have dtypes {a.dtype} and {b.dtype}")
            return [(shape, a.dtype)]
        dtypes = {t.dtype for t in inputs}
        if len(dtypes) != 1:
            raise fail(f"{fn}: operands have dtypes {sorted(dtypes)}; cast one first")
        dtype = inputs[0].dtype
        if fn in FLOAT_ONLY and dtype not in FLOAT_DTYPES:
            raise fail(f"{fn} needs a float tensor, got {dtype}")
        if fn in BOOL_ONLY and dtype != "i1":
            raise fail(f"logical {fn} needs boolean tensors, got {dtype}")
        if fn in COMPARE:
            return [(shape, "i1")]
        return [(shape, dtype)]

    def lower(self, lx, op, args):
        fn = op.params["fn"]
        dims = op.outputs[0].shape.names
        if fn in UNARY:
            out = UNARY[fn](*args)
        elif fn in BINARY:
            out = BINARY[fn](*args)
        elif fn in COMPARE:
            kind = "FLOAT" if op.inputs[0].dtype in FLOAT_DTYPES else ("UNSIGNED" if op.inputs[0].dtype == "i1" else "SIGNED")
            out = hlo.CompareOp(
                *args,
                hlo.ComparisonDirectionAttr.get(COMPARE[fn]),
                compare_type=hlo.ComparisonTypeAttr.get(kind),
            )
        elif fn == "select":
            out = hlo.SelectOp(*args)
        else:
            raise AssertionError(f"unknown elementwise fn {fn}")
        return [lx.tag(out, dims)]


@register
class Convert(Primitive):
    """Cast to another dtype."""

    name = "convert"

    def infer(self, inputs, params):
        return [(inputs[0].shape, params["dtype"])]

    def lower(self, lx, op, args):
        out = op.outputs[0]
        return [lx.tag(hlo.ConvertOp(lx.type(out), args[0]), out.shape.names)]
