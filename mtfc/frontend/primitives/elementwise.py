"""Elementwise primitives: one table row per function (arity, StableHLO op, result dtype).

Inputs of an elementwise op have identical shapes; the DSL broadcasts by dim
name before binding (see `mtfc.frontend.ops`), so a gradient rule here returns
gradients of the output's shape and the broadcast's rule sums them back.
"""

from __future__ import annotations

import functools

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
_OP_NAMES = {fn: builder.OPERATION_NAME for fn, builder in {**UNARY, **BINARY}.items()}  # (`Lowerer.make`)
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
        if fn in _OP_NAMES:
            return [lx.make(_OP_NAMES[fn], op.outputs[0], args)]
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

    def grad(self, op, output_grads):
        (g,) = output_grads
        fn, xs, y = op.params["fn"], op.inputs, op.outputs[0]
        rules = _grad_rules()
        if g is None or y.dtype not in FLOAT_DTYPES or fn not in rules:
            # comparisons, logical ops, integer arithmetic: not differentiable;
            # floor and sign: zero almost everywhere.
            return [None] * len(xs)
        return rules[fn](g, y, *xs)


@functools.cache
def _grad_rules():
    """fn -> rule(g, ans, *inputs) -> per-input gradients (JAX's conventions).

    Built on first use: the DSL ops the rules use import this module."""
    from mtfc.frontend import ops

    def scalar(value, like):
        return ops.constant(value, (), like.dtype)

    def balanced(x, ans, other):
        # JAX's max/min rule: the gradient goes to the input equal to the
        # result; on a tie each input gets half of it.
        half_or_one = ops.where(ops.equal(other, ans), scalar(0.5, x), 1.0)
        return ops.where(ops.equal(x, ans), half_or_one, 0.0)

    def power(g, ans, x, p):
        # JAX's pow rule: d/dx is 0 where the exponent is 0, and d/dp uses
        # log(1) where the base is 0.
        dx = ops.where(ops.equal(p, 0.0), 0.0, p * ops.power(x, p - 1.0))
        safe_x = ops.where(ops.equal(x, 0.0), 1.0, x)
        return [g * dx, g * (ops.log(safe_x) * ans)]

    return {
        "exp": lambda g, ans, x: [g * ans],
        "log": lambda g, ans, x: [g / x],
        "tanh": lambda g, ans, x: [g * (1.0 - ans * ans)],
        "logistic": lambda g, ans, x: [g * (ans * (1.0 - ans))],
        "sqrt": lambda g, ans, x: [g * (0.5 / ans)],
        "rsqrt": lambda g, ans, x: [g * ((ans / x) * -0.5)],
        "abs": lambda g, ans, x: [ops.where(ops.greater_equal(x, 0.0), g, ops.negative(g))],
        "negate": lambda g, ans, x: [ops.negative(g)],
        "add": lambda g, ans, a, b: [g, g],
        "subtract": lambda g, ans, a, b: [g, ops.negative(g)],
        "multiply": lambda g, ans, a, b: [g * b, g * a],
        "divide": lambda g, ans, a, b: [g / b, ops.negative(g) * a / (b * b)],
        "maximum": lambda g, ans, a, b: [g * balanced(a, ans, b), g * balanced(b, ans, a)],
        "minimum": lambda g, ans, a, b: [g * balanced(a, ans, b), g * balanced(b, ans, a)],
        "power": power,
        # where(cond, x, y): to each branch where it was chosen, none to the condition
        "select": lambda g, ans, c, a, b: [None, ops.where(c, g, 0.0), ops.where(c, 0.0, g)],
    }


@register
class Convert(Primitive):
    """Cast to another dtype."""

    name = "convert"

    def infer(self, inputs, params):
        return [(inputs[0].shape, params["dtype"])]

    def lower(self, lx, op, args):
        out = op.outputs[0]
        return [lx.tag(hlo.ConvertOp(lx.type(out), args[0]), out.shape.names)]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        (g,), x = output_grads, op.inputs[0]
        if g is None or x.dtype not in FLOAT_DTYPES or op.outputs[0].dtype not in FLOAT_DTYPES:
            return [None]  # from or to an integer / boolean: no gradient
        if g.op.primitive == "convert" and g.op.params.get("f32_sum") and g.op.inputs[0].dtype == x.dtype:
            # g is a bf16 sum accumulated in f32 (`ops.reduce_sum`) reaching an
            # f32 value (a master parameter): the f32 sum itself, unrounded
            return [g.op.inputs[0]]
        return [ops.cast(g, x.dtype)]
