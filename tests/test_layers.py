"""The layers (dense, layer_norm, embedding, attention, feed_forward), each
compiled and run under several layouts on the 2x4 mesh, against NumPy
references written here from the same parameter values."""

from __future__ import annotations

import numpy as np

import mtfc as mtf
from conftest import assert_close, run_model
from opcheck import BF16, check, layouts

B, S, D = mtf.Dim("batch", 8), mtf.Dim("seq", 8), mtf.Dim("d", 16)
H, H2 = mtf.Dim("h", 8), mtf.Dim("h2", 4)
V = mtf.Dim("vocab", 16)
L, HEADS, KV = mtf.Dim("length", 8), mtf.Dim("heads", 4), mtf.Dim("kv", 8)
FF = mtf.Dim("d_ff", 32)

RNG = np.random.default_rng(99)


def random(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def np_gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ----------------------------------------------------------------- dense


@layouts("", "batch:rows", "d:cols", "h:cols", "batch:rows,h:cols", "d:cols,h2:rows")
def test_dense(layout):
    def model(x):
        with mtf.scope("block0"):
            scoped = mtf.layers.dense(x, H)
        return {
            "default": mtf.layers.dense(x, H, name="fc"),
            "scoped": scoped,
            "activation": mtf.layers.dense(x, H, activation=mtf.relu, name="act"),
            "multi_dims_no_bias": mtf.layers.dense(x, [H, H2], reduced_dims=[S, D], use_bias=False, name="multi"),
        }

    host = {
        "params/fc/bias": random(8),
        "params/block0/dense/bias": random(8),
        "params/act/bias": random(8),
    }

    def reference(p):
        x = f64(p["x"])

        def dense(name):
            return x @ f64(p[f"params/{name}/kernel"]) + f64(p[f"params/{name}/bias"])

        return {
            "default": dense("fc"),
            "scoped": dense("block0/dense"),
            "activation": np.maximum(dense("act"), 0.0),
            "multi_dims_no_bias": np.einsum("bsd,sdhj->bhj", x, f64(p["params/multi/kernel"])),
        }

    data = check(model, {"x": mtf.Input([B, S, D])}, reference, layout, host)
    assert data["params/fc/kernel"].shape == (16, 8)
    assert data["params/multi/kernel"].shape == (8, 16, 8, 4)
    assert "params/multi/bias" not in data
    # the kernel is fan-in normal: stddev 1/sqrt(16), not a constant
    assert 0.1 < data["params/fc/kernel"].std() < 0.5


@layouts("", "batch:rows", "h:cols", "batch:rows,d:cols")
def test_dense_bf16(layout):
    """On a bf16 input the layer computes in bf16 from f32 master parameters
    (stored f32, read through a bf16 cast)."""
    def model(x):
        return {"y": mtf.layers.dense(x, H, activation=mtf.gelu)}

    def reference(p):
        assert p["params/dense/kernel"].dtype == p["params/dense/bias"].dtype == np.float32
        x = f64(p["x"].astype(np.float32))
        w = f64(p["params/dense/kernel"].astype(BF16).astype(np.float32))
        b = f64(p["params/dense/bias"].astype(BF16).astype(np.float32))
        return {"y": np_gelu(x @ w + b).astype(BF16)}

    check(model, {"x": mtf.Input([B, D], "bf16")}, reference, layout, {"params/dense/bias": random(8)})


# ----------------------------------------------------------------- layer_norm


@layouts("", "batch:rows", "d:cols", "batch:rows,d:cols", "seq:cols")
def test_layer_norm(layout):
    def model(x):
        return {
            "over_d": mtf.layers.layer_norm(x, D),
            "over_seq": mtf.layers.layer_norm(x * 3.0 + 1.0, "seq", epsilon=1e-3, name="ln_seq"),
        }

    host = {
        "params/layer_norm/scale": random(16),
        "params/layer_norm/bias": random(16),
        "params/ln_seq/scale": random(8),
        "params/ln_seq/bias": random(8),
    }

    def reference(p):
        x = f64(p["x"])

        def ln(v, axis, eps, name, shape):
            mean = v.mean(axis, keepdims=True)
            var = ((v - mean) ** 2).mean(axis, keepdims=True)
            scale = f64(p[f"params/{name}/scale"]).reshape(shape)
            bias = f64(p[f"params/{name}/bias"]).reshape(shape)
            return (v - mean) / np.sqrt(var + eps) * scale + bias

        return {
            "over_d": ln(x, 2, 1e-6, "layer_norm", (1, 1, 16)),
            "over_seq": ln(x * 3.0 + 1.0, 1, 1e-3, "ln_seq", (1, 8, 1)),
        }

    check(model, {"x": mtf.Input([B, S, D])}, reference, layout, host)


# ----------------------------------------------------------------- embedding


@layouts("", "batch:rows", "vocab:cols", "d:cols", "batch:rows,vocab:cols", "vocab:rows+cols")
def test_embedding(layout):
    def model(ids):
        return {
            "f32": mtf.layers.embedding(ids, V, D),
            "bf16": mtf.layers.embedding(ids, V, D, name="emb_bf16", dtype="bf16"),
        }

    def reference(p):
        ids = p["ids"]
        return {"f32": p["params/embedding/table"][ids], "bf16": p["params/emb_bf16/table"][ids].astype(BF16)}

    data = check(model, {"ids": mtf.Input([B, S], "i32", mtf.init.randint(0, 16))}, reference, layout)
    assert data["params/embedding/table"].shape == (16, 16)
    assert data["params/emb_bf16/table"].dtype == np.float32  # the master table; read as bf16
    assert len(np.unique(data["ids"])) > 8


# ----------------------------------------------------------------- attention


def np_attention(x, p, prefix, causal):
    wq, wk, wv, wo = (f64(p[f"params/{prefix}/{n}"]) for n in ("w_q", "w_k", "w_v", "w_o"))
    q = np.einsum("bld,dhk->bhlk", x, wq)
    k = np.einsum("bmd,dhk->bhmk", x, wk)
    v = np.einsum("bmd,dhk->bhmk", x, wv)
    logits = np.einsum("bhlk,bhmk->bhlm", q, k) / np.sqrt(q.shape[-1])
    if causal:
        length = x.shape[1]
        logits = np.where(np.tril(np.ones((length, length), bool)), logits, -1e9)
    o = np.einsum("bhlm,bhmk->blhk", np_softmax(logits, -1), v)
    return np.einsum("blhk,hkd->bld", o, wo)


@layouts(
    "",
    "batch:rows",
    "heads:cols",
    "batch:rows,heads:cols",
    "length:cols",
    "memory_length:cols,batch:rows",
    "batch:rows+cols",
)
def test_attention(layout):
    def model(x):
        kwargs = dict(io_dim=D, heads_dim=HEADS, kv_dim=KV, length_dim=L)
        return {
            "full": mtf.layers.attention(x, **kwargs),
            "causal": mtf.layers.attention(x, causal=True, name="causal_attention", **kwargs),
        }

    def reference(p):
        x = f64(p["x"])
        return {
            "full": np_attention(x, p, "attention", causal=False),
            "causal": np_attention(x, p, "causal_attention", causal=True),
        }

    data = check(model, {"x": mtf.Input([B, L, D])}, reference, layout)
    assert data["params/attention/w_q"].shape == (16, 4, 8)
    assert data["params/attention/w_o"].shape == (4, 8, 16)


@layouts("", "batch:rows", "heads:cols", "batch:rows,heads:cols")
def test_attention_causal_ignores_the_future(layout):
    """Changing the last position leaves every earlier causal output unchanged."""

    def model(x):
        return {"y": mtf.layers.attention(x, io_dim=D, heads_dim=HEADS, kv_dim=KV, length_dim=L, causal=True)}

    x = random(8, 8, 16)
    x2 = x.copy()
    x2[:, -1] += 5.0
    y1, _, p1 = run_model(model, {"x": mtf.Input([B, L, D])}, {"x": x}, layout=layout)
    y2, _, p2 = run_model(model, {"x": mtf.Input([B, L, D])}, {"x": x2}, layout=layout)
    assert all(np.array_equal(p1[k], p2[k]) for k in p1 if k.startswith("params/"))
    assert_close(y2["y"][:, :-1], y1["y"][:, :-1])
    assert np.abs(y2["y"][:, -1] - y1["y"][:, -1]).max() > 1e-2
    assert_close(y1["y"], np_attention(f64(x), p1, "attention", causal=True))


# ----------------------------------------------------------------- feed_forward


@layouts("", "batch:rows", "d_ff:cols", "batch:rows,d_ff:cols", "d:cols,seq:rows")
def test_feed_forward(layout):
    def model(x):
        return {
            "relu": mtf.layers.feed_forward(x, io_dim=D, hidden_dim=FF),
            "gelu": mtf.layers.feed_forward(x, io_dim=D, hidden_dim=FF, activation=mtf.gelu, name="ff_gelu"),
        }

    host = {}
    for name in ("feed_forward", "ff_gelu"):
        host[f"params/{name}/wi/bias"] = random(32)
        host[f"params/{name}/wo/bias"] = random(16)

    def reference(p):
        x = f64(p["x"])

        def ff(name, act):
            q = f"params/{name}/"
            h = act(x @ f64(p[q + "wi/kernel"]) + f64(p[q + "wi/bias"]))
            return h @ f64(p[q + "wo/kernel"]) + f64(p[q + "wo/bias"])

        return {"relu": ff("feed_forward", lambda v: np.maximum(v, 0.0)), "gelu": ff("ff_gelu", np_gelu)}

    data = check(model, {"x": mtf.Input([B, S, D])}, reference, layout, host)
    assert data["params/feed_forward/wi/kernel"].shape == (16, 32)
    assert data["params/feed_forward/wo/kernel"].shape == (32, 16)
