"""Elementwise DSL ops, broadcasting by dim name, Python scalars, comparisons,
logical ops, where and cast: each compiled and run under several layouts on
the 2x4 mesh, against NumPy references written here."""

from __future__ import annotations

import numpy as np

import mtfc as mtf
from opcheck import BF16, check, layouts

B, D, S = mtf.Dim("batch", 8), mtf.Dim("d", 16), mtf.Dim("seq", 8)

POSITIVE = mtf.init.uniform(0.5, 2.0)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def np_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------- unary


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols", "batch:rows+cols")
def test_unary_float_ops(layout):
    def model(x, p):
        return {
            "exp": mtf.exp(x),
            "log": mtf.log(p),
            "tanh": mtf.tanh(x),
            "relu": mtf.relu(x),
            "gelu": mtf.gelu(x),
            "sigmoid": mtf.sigmoid(x),
            "sqrt": mtf.sqrt(p),
            "rsqrt": mtf.rsqrt(p),
            "square": mtf.square(x),
            "abs": mtf.abs(x),
            "negative": mtf.negative(x),
            "neg_operator": -x,
            "floor": mtf.floor(x * 3.0),
            "sign": mtf.sign(x),
            "stop_gradient": mtf.stop_gradient(x),
        }

    def reference(data):
        x, p = f64(data["x"]), f64(data["p"])
        return {
            "exp": np.exp(x),
            "log": np.log(p),
            "tanh": np.tanh(x),
            "relu": np.maximum(x, 0.0),
            "gelu": np_gelu(x),
            "sigmoid": np_sigmoid(x),
            "sqrt": np.sqrt(p),
            "rsqrt": 1.0 / np.sqrt(p),
            "square": x * x,
            "abs": np.abs(x),
            "negative": -x,
            "neg_operator": -x,
            "floor": np.floor(data["x"] * np.float32(3.0)).astype(np.float64),
            "sign": np.sign(x),
            "stop_gradient": x,
        }

    check(model, {"x": mtf.Input([B, D]), "p": mtf.Input([B, D], "f32", POSITIVE)}, reference, layout)


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols")
def test_unary_ops_bf16(layout):
    def model(x, p):
        return {
            "exp": mtf.exp(x),
            "log": mtf.log(p),
            "tanh": mtf.tanh(x),
            "gelu": mtf.gelu(x),
            "sigmoid": mtf.sigmoid(x),
            "rsqrt": mtf.rsqrt(p),
            "relu": mtf.relu(x),
            "affine": x * 2.0 + 1.0,
        }

    def reference(data):
        assert data["x"].dtype == BF16
        x, p = f64(data["x"].astype(np.float32)), f64(data["p"].astype(np.float32))
        out = {
            "exp": np.exp(x),
            "log": np.log(p),
            "tanh": np.tanh(x),
            "gelu": np_gelu(x),
            "sigmoid": np_sigmoid(x),
            "rsqrt": 1.0 / np.sqrt(p),
            "relu": np.maximum(x, 0.0),
            "affine": x * 2.0 + 1.0,
        }
        return {k: v.astype(BF16) for k, v in out.items()}

    check(model, {"x": mtf.Input([B, D], "bf16"), "p": mtf.Input([B, D], "bf16", POSITIVE)}, reference, layout)


# ----------------------------------------------------------------- binary


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols")
def test_binary_ops_same_dims(layout):
    def model(x, y, p):
        return {
            "add": mtf.add(x, y),
            "subtract": mtf.subtract(x, y),
            "multiply": mtf.multiply(x, y),
            "divide": mtf.divide(x, p),
            "maximum": mtf.maximum(x, y),
            "minimum": mtf.minimum(x, y),
            "power": mtf.power(p, x),
            "op_add": x + y,
            "op_sub": x - y,
            "op_mul": x * y,
            "op_div": x / p,
            "op_pow": p**y,
        }

    def reference(data):
        x, y, p = f64(data["x"]), f64(data["y"]), f64(data["p"])
        return {
            "add": x + y,
            "subtract": x - y,
            "multiply": x * y,
            "divide": x / p,
            "maximum": np.maximum(x, y),
            "minimum": np.minimum(x, y),
            "power": p**x,
            "op_add": x + y,
            "op_sub": x - y,
            "op_mul": x * y,
            "op_div": x / p,
            "op_pow": p**y,
        }

    inputs = {"x": mtf.Input([B, D]), "y": mtf.Input([B, D]), "p": mtf.Input([B, D], "f32", POSITIVE)}
    check(model, inputs, reference, layout)


@layouts("", "batch:rows", "d:cols,seq:rows", "batch:rows,d:cols", "batch:rows+cols")
def test_binary_ops_broadcast_by_dim_name(layout):
    """The result holds the first operand's dims, then the other's new dims."""

    def model(x, v, w, s, pv):
        return {
            "x_plus_v": mtf.add(x, v),  # [batch, d]
            "v_plus_x": mtf.add(v, x),  # [d, batch]
            "x_times_w": mtf.multiply(x, w),  # w is [d, batch]: matched by name
            "x_minus_s": mtf.subtract(x, s),  # [batch, d, seq]
            "max_s_x": mtf.maximum(s, x),  # [seq, batch, d]
            "x_div_pv": mtf.divide(x, pv),  # [batch, d]
            "min_w_v": mtf.minimum(w, v),  # [d, batch]
            "pow_pv_x": mtf.power(pv, x),  # [d, batch]
            "s_times_v": s * v,  # [seq, d]: outer product
        }

    def reference(data):
        x, v, w, s, pv = (f64(data[k]) for k in ("x", "v", "w", "s", "pv"))
        return {
            "x_plus_v": x + v,
            "v_plus_x": x.T + v[:, None],
            "x_times_w": x * w.T,
            "x_minus_s": x[:, :, None] - s,
            "max_s_x": np.maximum(s[:, None, None], x[None]),
            "x_div_pv": x / pv,
            "min_w_v": np.minimum(w, v[:, None]),
            "pow_pv_x": pv[:, None] ** x.T,
            "s_times_v": s[:, None] * v[None, :],
        }

    inputs = {
        "x": mtf.Input([B, D]),
        "v": mtf.Input([D]),
        "w": mtf.Input([D, B]),
        "s": mtf.Input([S]),
        "pv": mtf.Input([D], "f32", POSITIVE),
    }
    check(model, inputs, reference, layout)


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols")
def test_python_scalar_operands(layout):
    def model(x, p):
        return {
            "x_plus_2": x + 2.0,
            "2_plus_x": 2.0 + x,
            "x_minus": x - 1.5,
            "3_minus_x": 3 - x,
            "x_times": x * 0.5,
            "times_x": 0.5 * x,
            "x_div": x / 4.0,
            "recip": 1.0 / p,
            "x_squared": x**2,
            "pow_2_x": mtf.power(2.0, x),
            "rpow_operator": 2.0**x,
            "add_fn": mtf.add(1, x),
            "max_scalar": mtf.maximum(x, 0.25),
            "min_scalar": mtf.minimum(-0.5, x),
            "numpy_scalar": x * np.float32(3.0),
        }

    def reference(data):
        x, p = f64(data["x"]), f64(data["p"])
        return {
            "x_plus_2": x + 2.0,
            "2_plus_x": 2.0 + x,
            "x_minus": x - 1.5,
            "3_minus_x": 3 - x,
            "x_times": x * 0.5,
            "times_x": 0.5 * x,
            "x_div": x / 4.0,
            "recip": 1.0 / p,
            "x_squared": x**2,
            "pow_2_x": 2.0**x,
            "rpow_operator": 2.0**x,
            "add_fn": 1 + x,
            "max_scalar": np.maximum(x, 0.25),
            "min_scalar": np.minimum(-0.5, x),
            "numpy_scalar": x * 3.0,
        }

    check(model, {"x": mtf.Input([B, D]), "p": mtf.Input([B, D], "f32", POSITIVE)}, reference, layout)


@layouts("", "batch:rows", "d:cols", "batch:cols,d:rows")
def test_integer_ops(layout):
    def model(a, b, bv):
        return {
            "add": a + b,
            "add_broadcast": a + bv,
            "sub_scalar": 10 - a,
            "mul_scalar": a * 3,
            "maximum": mtf.maximum(a, 4),
            "minimum": mtf.minimum(a, b),
            "abs": mtf.abs(a - 5),
            "negative": mtf.negative(a),
            "square": mtf.square(a),
            "relu": mtf.relu(a - 3),
            "sign": mtf.sign(a - 4),
        }

    def reference(data):
        a, b, bv = (data[k].astype(np.int64) for k in ("a", "b", "bv"))
        out = {
            "add": a + b,
            "add_broadcast": a + bv,
            "sub_scalar": 10 - a,
            "mul_scalar": a * 3,
            "maximum": np.maximum(a, 4),
            "minimum": np.minimum(a, b),
            "abs": np.abs(a - 5),
            "negative": -a,
            "square": a * a,
            "relu": np.maximum(a - 3, 0),
            "sign": np.sign(a - 4),
        }
        return {k: v.astype(np.int32) for k, v in out.items()}

    inputs = {
        "a": mtf.Input([B, D], "i32", mtf.init.randint(0, 10)),
        "b": mtf.Input([B, D], "i32", mtf.init.randint(-5, 5)),
        "bv": mtf.Input([D], "i32", mtf.init.randint(0, 100)),
    }
    check(model, inputs, reference, layout)


# ----------------------------------------------------------------- comparisons and logic


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols")
def test_comparisons(layout):
    def model(x, y, v, a, b):
        return {
            "equal": mtf.equal(a, b),
            "not_equal": mtf.not_equal(a, b),
            "less": mtf.less(x, y),
            "less_equal": mtf.less_equal(a, b),
            "greater": mtf.greater(x, v),
            "greater_equal": mtf.greater_equal(a, 1),
            "equal_float_scalar": mtf.equal(x, x),
            "op_lt": x < y,
            "op_le": x <= 0.0,
            "op_gt": v > x,  # [d, batch]
            "op_ge": a >= b,
            "bool_equal": mtf.equal(x > 0.0, y > 0.0),
        }

    def reference(data):
        x, y, v, a, b = (data[k] for k in ("x", "y", "v", "a", "b"))
        return {
            "equal": a == b,
            "not_equal": a != b,
            "less": x < y,
            "less_equal": a <= b,
            "greater": x > v,
            "greater_equal": a >= 1,
            "equal_float_scalar": np.ones(x.shape, bool),
            "op_lt": x < y,
            "op_le": x <= 0.0,
            "op_gt": v[:, None] > x.T,
            "op_ge": a >= b,
            "bool_equal": (x > 0) == (y > 0),
        }

    inputs = {
        "x": mtf.Input([B, D]),
        "y": mtf.Input([B, D]),
        "v": mtf.Input([D]),
        "a": mtf.Input([B, D], "i32", mtf.init.randint(0, 3)),
        "b": mtf.Input([B, D], "i32", mtf.init.randint(0, 3)),
    }
    check(model, inputs, reference, layout)


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols")
def test_logical_ops(layout):
    def model(x, y, v):
        c1, c2, c3 = x > 0.0, y > 0.0, v > 0.0
        return {
            "and": mtf.logical_and(c1, c2),
            "or": mtf.logical_or(c1, c2),
            "not": mtf.logical_not(c1),
            "or_broadcast": mtf.logical_or(c3, c1),  # [d, batch]
            "and_true": mtf.logical_and(c1, True),
            "or_false": mtf.logical_or(c2, False),
            "xor": mtf.logical_and(mtf.logical_or(c1, c2), mtf.logical_not(mtf.logical_and(c1, c2))),
        }

    def reference(data):
        c1, c2, c3 = data["x"] > 0, data["y"] > 0, data["v"] > 0
        return {
            "and": c1 & c2,
            "or": c1 | c2,
            "not": ~c1,
            "or_broadcast": c3[:, None] | c1.T,
            "and_true": c1,
            "or_false": c2,
            "xor": c1 ^ c2,
        }

    check(model, {"x": mtf.Input([B, D]), "y": mtf.Input([B, D]), "v": mtf.Input([D])}, reference, layout)


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols", "seq:rows,batch:cols")
def test_where(layout):
    def model(x, y, v, s, a, b):
        c = x > 0.0
        return {
            "tensors": mtf.where(c, x, y),
            "scalar_false": mtf.where(c, x, 0.0),
            "scalar_true": mtf.where(c, -1.0, y),
            # condition [d] over [batch, d] branches: the branches' dims first
            "broadcast_condition": mtf.where(v > 0.0, x, y),
            # branches of different dims: [d] + [seq] + condition's [batch]
            "broadcast_branches": mtf.where(c, v, s),
            "integers": mtf.where(a > b, a, b),
        }

    def reference(data):
        x, y, v, s, a, b = (data[k] for k in ("x", "y", "v", "s", "a", "b"))
        c = x > 0
        return {
            "tensors": np.where(c, x, y),
            "scalar_false": np.where(c, x, 0.0),
            "scalar_true": np.where(c, -1.0, y),
            "broadcast_condition": np.where((v > 0)[None, :], x, y),
            "broadcast_branches": np.where(c.T[:, None, :], v[:, None, None], s[None, :, None]),
            "integers": np.where(a > b, a, b),
        }

    inputs = {
        "x": mtf.Input([B, D]),
        "y": mtf.Input([B, D]),
        "v": mtf.Input([D]),
        "s": mtf.Input([S]),
        "a": mtf.Input([B, D], "i32", mtf.init.randint(0, 10)),
        "b": mtf.Input([B, D], "i32", mtf.init.randint(0, 10)),
    }
    check(model, inputs, reference, layout)


# ----------------------------------------------------------------- cast


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols")
def test_cast(layout):
    def model(x, xb, a):
        return {
            "f32_to_bf16": mtf.cast(x, "bf16"),
            "bf16_to_f32": mtf.cast(xb, "f32"),
            "f32_to_i32": mtf.cast(x * 4.0, "i32"),
            "bf16_to_i32": mtf.cast(xb * 4.0, "int32"),
            "i32_to_f32": mtf.cast(a, "float32"),
            "i32_to_bf16": mtf.cast(a, "bfloat16"),
            "bool_to_f32": mtf.cast(x > 0.0, "f32"),
            "bool_to_i32": mtf.cast(x > 0.0, "i32"),
            "i32_to_bool": mtf.cast(a, "bool"),
            "f32_to_bool": mtf.cast(mtf.floor(x), "bool"),
            "roundtrip": mtf.cast(mtf.cast(x, "bf16"), "f32"),
            "same_dtype": mtf.cast(x, "f32"),
        }

    def reference(data):
        x, xb, a = data["x"], data["xb"], data["a"]
        return {
            "f32_to_bf16": x.astype(BF16),
            "bf16_to_f32": xb.astype(np.float32),
            "f32_to_i32": np.trunc(x * np.float32(4.0)).astype(np.int32),
            "bf16_to_i32": np.trunc((xb * BF16(4.0)).astype(np.float32)).astype(np.int32),
            "i32_to_f32": a.astype(np.float32),
            "i32_to_bf16": a.astype(BF16),
            "bool_to_f32": (x > 0).astype(np.float32),
            "bool_to_i32": (x > 0).astype(np.int32),
            "i32_to_bool": a != 0,
            "f32_to_bool": np.floor(x) != 0,
            # bf16 rounding, checked at f32 tolerance: exact round-to-nearest-even
            "roundtrip": x.astype(BF16).astype(np.float32),
            "same_dtype": x,
        }

    inputs = {
        "x": mtf.Input([B, D]),
        "xb": mtf.Input([B, D], "bf16"),
        "a": mtf.Input([B, D], "i32", mtf.init.randint(-3, 3)),
    }
    check(model, inputs, reference, layout)
