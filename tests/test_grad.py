"""Reverse-mode autodiff (`mtf.grad`): the gradient of every primitive and of
the composite DSL functions and layers, compiled into models that return the
gradients, run sharded and unsharded on the 2x4 mesh (replicated and with the
reduced / contracted dims split; both partitioners), against `jax.grad` of a
plain-JAX reference written here, in float64.

Each op's output is weighted by its own random cotangent input and summed into
one scalar loss, and each op reads its own inputs, so the gradient with
respect to an input checks one op's rule (one compiled model checks many ops).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtfc as mtf
from conftest import assert_close, run_model
from mtfc.errors import MtfcError
from mtfc.frontend.model import trace

# Two sets of dim sizes (every split dim divisible by its mesh axes).
SIZES = [
    dict(batch=8, d=16, seq=6, h=8, vocab=16, heads=4, kv=4),
    dict(batch=4, d=8, seq=3, h=12, vocab=8, heads=4, kv=2),
]
# Both partitioners: XLA's (gspmd) and mtfc's own (explicit).
modes_param = pytest.mark.parametrize("mode", ["gspmd", "explicit", "shardy"])


def cases(split, other_split=None):
    """(layout, sizes): replicated, and layouts splitting the reduced /
    contracted dims, over both sets of sizes (not the full product: the
    file's runtime stays ~1 minute)."""
    items = [("", SIZES[1]), (split, SIZES[0]), (other_split or split, SIZES[1])]
    ids = [f"{layout or 'replicated'}-sizes{SIZES.index(sizes)}" for layout, sizes in items]
    return pytest.mark.parametrize("layout, sizes", items, ids=ids)

POSITIVE = mtf.init.uniform(0.5, 2.0)


def dims(sizes, *names):
    return [mtf.Dim(n, sizes[n]) for n in names]


def weighted(out, w):
    """The loss term of one op: its output times a cotangent, summed."""
    return mtf.reduce_sum(out * w)


def check_grads(model, inputs, reference, *, layout, mode, host_inputs=None):
    """Compile ``model(**tensors) -> scalar loss`` into a model that returns the
    loss and its gradients with respect to every f32 input and every
    trainable parameter; compare them (sharded and unsharded) with
    ``jax.value_and_grad(reference)`` in float64, `reference` taking the host
    data (inputs and parameters by name).  Returns the host data."""

    def entry(**args):
        loss = model(**args)
        wrt = {k: t for k, t in args.items() if t.dtype == "f32"}
        wrt.update(mtf.trainable_variables())
        grads = mtf.grad(loss, wrt)
        for k, g in grads.items():
            assert g.shape == wrt[k].shape and g.dtype == wrt[k].dtype, (k, g, wrt[k])
        return {"loss": loss, **{f"d_{k}": g for k, g in grads.items()}}

    sharded, unsharded, data = run_model(entry, inputs, host_inputs, layout=layout, mode=mode)
    floats = {k: v for k, v in data.items() if np.issubdtype(np.asarray(v).dtype, np.floating)}
    with jax.enable_x64(True):
        others = {k: jnp.asarray(v) for k, v in data.items() if k not in floats}
        f64 = {k: jnp.asarray(v, jnp.float64) for k, v in floats.items()}
        loss, grads = jax.value_and_grad(lambda fl: reference({**fl, **others}))(f64)
        expected = {"loss": np.asarray(loss), **{f"d_{k}": np.asarray(g) for k, g in grads.items()}}
    assert sorted(sharded) == sorted(expected), (sorted(sharded), sorted(expected))
    for name, want in expected.items():
        for what, got in (("sharded", sharded[name]), ("unsharded", unsharded[name])):
            try:
                assert_close(np.asarray(got, np.float64), want)
            except AssertionError as e:
                raise AssertionError(f"{mode} mode, {what}, {name!r} under layout {layout!r}: {e}") from None
    return data


def integers(rng, shape, low, high):
    """Small integer-valued floats: reductions and max / min see ties."""
    return rng.integers(low, high, size=shape).astype(np.float32)


# ----------------------------------------------------------------- elementwise


@modes_param
@cases("batch:rows,d:cols")
def test_unary(layout, mode, sizes):
    B, D = dims(sizes, "batch", "d")
    fns = {
        "exp": (lambda x: mtf.exp(x * 0.5), lambda x: jnp.exp(x * 0.5)),
        "log": (mtf.log, jnp.log),
        "tanh": (mtf.tanh, jnp.tanh),
        "sigmoid": (mtf.sigmoid, jax.nn.sigmoid),
        "sqrt": (mtf.sqrt, jnp.sqrt),
        "rsqrt": (mtf.rsqrt, jax.lax.rsqrt),
        "abs": (mtf.abs, jnp.abs),
        "negative": (mtf.negative, jnp.negative),
        "neg_operator": (lambda x: -x, lambda x: -x),
        "floor": (lambda x: mtf.floor(x * 3.0), lambda x: jnp.floor(x * 3.0)),
        "sign": (mtf.sign, jnp.sign),
        "square": (mtf.square, jnp.square),
        "relu": (mtf.relu, jax.nn.relu),
        # exactly 0 where the gradient flows: jax.nn.relu's (and tf.nn.relu's) gradient there is 0
        "relu_at_zero": (lambda x: mtf.relu(x - mtf.stop_gradient(x)), lambda x: jax.nn.relu(x - jax.lax.stop_gradient(x))),
        "gelu": (mtf.gelu, lambda x: jax.nn.gelu(x, approximate=True)),
        "cast_bf16": (lambda x: mtf.cast(mtf.cast(x, "bf16"), "f32"), lambda x: x.astype(jnp.bfloat16).astype(x.dtype)),
        "cast_i32": (lambda x: mtf.cast(mtf.cast(x * 3.0, "i32"), "f32"), lambda x: jnp.trunc(x * 3.0)),
        "stop_gradient": (lambda x: x * mtf.stop_gradient(x), lambda x: x * jax.lax.stop_gradient(x)),
        "scalar_ops": (lambda x: (2.0 - x) / 3.0 + 1.5 * x, lambda x: (2.0 - x) / 3.0 + 1.5 * x),
    }
    positive = {"log", "sqrt", "rsqrt"}

    def model(w, **xs):
        return sum((weighted(fns[k][0](x), w) for k, x in xs.items()), mtf.zeros([]))

    def reference(p):
        return sum(jnp.sum(fns[k][1](p[k]) * p["w"]) for k in fns)

    inputs = {k: mtf.Input([B, D], "f32", POSITIVE if k in positive else None) for k in fns}
    check_grads(model, {"w": mtf.Input([B, D]), **inputs}, reference, layout=layout, mode=mode)


@modes_param
@cases("batch:rows,d:cols")
def test_binary_broadcast_select_and_ties(layout, mode, sizes):
    """Binary ops broadcasting by name, where/select, comparisons and logical
    ops (no gradient), max/min ties (half to each), unused inputs (zeros)."""
    B, D = dims(sizes, "batch", "d")
    rng = np.random.default_rng(sizes["d"])

    def model(w, a1, b1, a2, b2, a3, c3, a4, q4, a5, c5, b6, a6, p7, a7, q8, a9, c9, u, v, t1, t2, t3, t4, unused):
        cond = mtf.logical_and(mtf.greater(u, 0.0), mtf.logical_or(mtf.logical_not(mtf.less(v, -0.5)), u > 1.0))
        terms = [
            mtf.add(a1, b1),  # [batch, d] + [d]
            mtf.subtract(b2, a2),  # [d] - [batch, d]: result [d, batch]
            mtf.multiply(a3, c3),  # c3 is [d, batch]: matched by name
            mtf.divide(a4, q4),
            mtf.maximum(a5, c5),
            mtf.minimum(b6, a6),
            mtf.power(p7, a7),
            mtf.power(q8, 3.0),
            mtf.where(cond, a9, c9),
            mtf.where(mtf.equal(u, v), 2.0, a9 * 3.0),
            mtf.maximum(t1, t2),  # integer-valued: ties
            mtf.minimum(t3, t4),
            mtf.maximum(t1, mtf.stop_gradient(t1)),  # all ties: half the gradient
        ]
        return sum((weighted(t, w) for t in terms), mtf.zeros([]))

    def reference(p):
        g = lambda k: p[k]  # noqa: E731
        u, v = g("u"), g("v")
        cond = (u > 0) & ((~(v < -0.5)) | (u > 1.0))
        terms = [
            g("a1") + g("b1"),
            g("b2")[None, :] - g("a2"),
            g("a3") * g("c3").T,
            g("a4") / g("q4"),
            jnp.maximum(g("a5"), g("c5").T),
            jnp.minimum(g("b6")[None, :], g("a6")),
            g("p7") ** g("a7"),
            jnp.broadcast_to(g("q8") ** 3.0, u.shape),
            jnp.where(cond, g("a9"), g("c9").T),
            jnp.where(u == v, 2.0, g("a9") * 3.0),
            jnp.maximum(g("t1"), g("t2")),
            jnp.minimum(g("t3"), g("t4")),
            jnp.maximum(g("t1"), jax.lax.stop_gradient(g("t1"))),
        ]
        return sum(jnp.sum(t * g("w")) for t in terms)

    bd, db, d = mtf.Input([B, D]), mtf.Input([D, B]), mtf.Input([D])
    pos_bd, pos_d = mtf.Input([B, D], "f32", POSITIVE), mtf.Input([D], "f32", POSITIVE)
    inputs = dict(w=bd, a1=bd, b1=d, a2=bd, b2=d, a3=bd, c3=db, a4=bd, q4=pos_d, a5=bd, c5=db, b6=d, a6=bd,
                  p7=pos_bd, a7=bd, q8=pos_d, a9=bd, c9=db, u=bd, v=bd, t1=bd, t2=bd, t3=bd, t4=bd, unused=bd)
    shape = (sizes["batch"], sizes["d"])
    host = {k: integers(rng, shape, -1, 2) for k in ("t1", "t2", "t3", "t4")}
    check_grads(model, inputs, reference, layout=layout, mode=mode, host_inputs=host)


# ----------------------------------------------------------------- reductions


@modes_param
@cases("batch:rows,d:cols")
def test_reductions_and_softmax(layout, mode, sizes):
    B, D, S = dims(sizes, "batch", "d", "seq")
    rng = np.random.default_rng(sizes["seq"])

    def model(w_bs, w_b, w_bds, w_bd, x_sum, x_mean, x_max, x_min, x_maxt, x_all, x_lse, x_sm, x_lsm, x_mean_all):
        terms = [
            weighted(mtf.reduce_sum(x_sum, "d"), w_bs),
            weighted(mtf.reduce_mean(x_mean, ["d", "seq"]), w_b),
            weighted(mtf.reduce_max(x_max, "d"), w_bs),  # no ties (normal values)
            weighted(mtf.reduce_min(x_min, output_shape=[B, S]), w_bs),  # ties
            weighted(mtf.reduce_max(x_maxt, ["d", "seq"]), w_b),  # ties
            mtf.reduce_sum(x_all) * 0.25,
            weighted(mtf.reduce_logsumexp(x_lse, "d"), w_bs),
            weighted(mtf.softmax(x_sm, "d"), w_bds),
            weighted(mtf.log_softmax(x_lsm, "seq"), w_bds),
            mtf.reduce_mean(x_mean_all * x_mean_all),
        ]
        return sum(terms, mtf.zeros([]))

    def reference(p):
        terms = [
            jnp.sum(jnp.sum(p["x_sum"], 1) * p["w_bs"]),
            jnp.sum(jnp.mean(p["x_mean"], (1, 2)) * p["w_b"]),
            jnp.sum(jnp.max(p["x_max"], 1) * p["w_bs"]),
            jnp.sum(jnp.min(p["x_min"], 1) * p["w_bs"]),
            jnp.sum(jnp.max(p["x_maxt"], (1, 2)) * p["w_b"]),
            jnp.sum(p["x_all"]) * 0.25,
            jnp.sum(jax.nn.logsumexp(p["x_lse"], 1) * p["w_bs"]),
            jnp.sum(jax.nn.softmax(p["x_sm"], 1) * p["w_bds"]),
            jnp.sum(jax.nn.log_softmax(p["x_lsm"], 2) * p["w_bds"]),
            jnp.mean(p["x_mean_all"] ** 2),
        ]
        return sum(terms)

    bds = mtf.Input([B, D, S])
    inputs = dict(w_bs=mtf.Input([B, S]), w_b=mtf.Input([B]), w_bds=bds, w_bd=mtf.Input([B, D]),
                  x_sum=bds, x_mean=bds, x_max=bds, x_min=bds, x_maxt=bds, x_all=bds, x_lse=bds, x_sm=bds,
                  x_lsm=bds, x_mean_all=bds)
    shape = (sizes["batch"], sizes["d"], sizes["seq"])
    host = {"x_min": integers(rng, shape, -2, 1), "x_maxt": integers(rng, shape, 0, 2)}
    check_grads(model, inputs, reference, layout=layout, mode=mode, host_inputs=host)


# ----------------------------------------------------------------- structural


@modes_param
@cases("batch:rows,d:cols", "d:rows,batch:cols")
def test_structural(layout, mode, sizes):
    """broadcast, transpose, reshape (rename, split, merge), slice, pad, concat, shift."""
    B, D, S = dims(sizes, "batch", "d", "seq")
    n, d2 = sizes["seq"], sizes["d"] // 2
    d_half, two = mtf.Dim("d_half", d2), mtf.Dim("two", 2)

    def model(w, v, x_t, x_rename, x_split, x_merge, x_slice, x_pad, x_cat1, x_cat2, x_shift, x_shift_neg, x_wrap):
        terms = [
            weighted(mtf.broadcast(v, [S, D, B]), w),
            weighted(mtf.transpose(x_t, [S, B, D]), w),
            weighted(mtf.rename_dimension(x_rename, "d", "e"), mtf.rename_dimension(w, "d", "e")),
            weighted(mtf.replace_dimensions(x_split, D, [d_half, two]), mtf.replace_dimensions(w, D, [d_half, two])),
            weighted(mtf.replace_dimensions(x_merge, [D, B], mtf.Dim("db", sizes["d"] * sizes["batch"])),
                     mtf.replace_dimensions(w, [D, B], mtf.Dim("db", sizes["d"] * sizes["batch"]))),
            mtf.reduce_sum(mtf.square(mtf.slice(x_slice, 1, n - 1, "seq", new_name="sl"))),
            mtf.reduce_sum(mtf.square(mtf.pad(x_pad, (1, 2), "seq", value=0.5))),
            weighted(mtf.concat([x_cat1, x_cat2], "seq"), mtf.concat([w, mtf.exp(w)], "seq")),
            weighted(mtf.shift(x_shift, 1, "seq"), w),
            weighted(mtf.shift(x_shift_neg, -2, "seq"), w),
            weighted(mtf.shift(x_wrap, 1, "seq", wrap=True), w),
        ]
        return sum(terms, mtf.zeros([]))

    def reference(p):
        w = p["w"]  # [batch, d, seq]

        def shift(x, k, wrap=False):
            if wrap:
                return jnp.roll(x, k, axis=2)
            if k > 0:
                return jnp.pad(x, ((0, 0), (0, 0), (k, 0)))[:, :, :n]
            return jnp.pad(x, ((0, 0), (0, 0), (0, -k)))[:, :, -k:]

        terms = [
            jnp.sum(p["v"][None, :, None] * w),
            jnp.sum(p["x_t"] * w),
            jnp.sum(p["x_rename"] * w),
            jnp.sum(p["x_split"] * w),
            jnp.sum(p["x_merge"] * w),
            jnp.sum(p["x_slice"][:, :, 1:] ** 2),
            jnp.sum(jnp.pad(p["x_pad"], ((0, 0), (0, 0), (1, 2)), constant_values=0.5) ** 2),
            jnp.sum(p["x_cat1"] * w) + jnp.sum(p["x_cat2"] * jnp.exp(w)),
            jnp.sum(shift(p["x_shift"], 1) * w),
            jnp.sum(shift(p["x_shift_neg"], -2) * w),
            jnp.sum(shift(p["x_wrap"], 1, wrap=True) * w),
        ]
        return sum(terms)

    bds = mtf.Input([B, D, S])
    names = ["x_rename", "x_split", "x_merge", "x_slice", "x_pad", "x_cat1", "x_cat2", "x_shift", "x_shift_neg", "x_wrap"]
    inputs = dict(w=bds, v=mtf.Input([D]), x_t=bds, **{k: bds for k in names})
    check_grads(model, inputs, reference, layout=layout, mode=mode)


# ----------------------------------------------------------------- einsum


@modes_param
@cases("batch:rows,d:cols", "h:cols,d:rows")
def test_einsum(layout, mode, sizes):
    """Two and three inputs, dims summed away from one input only, the same
    tensor twice, a shared (batch) dim, the default output shape."""
    B, D, S, H = dims(sizes, "batch", "d", "seq", "h")

    def model(w_bh, w_bs, w_b, w_bsh, x1, k1, x2, y2, z2, x3, x4, v4, x5, q6, k6, a7, b7):
        terms = [
            weighted(mtf.einsum([x1, k1], [B, H]), w_bh),  # matmul
            weighted(mtf.einsum([x2, y2, z2], [B, S]), w_bs),  # three inputs, chain
            weighted(mtf.einsum([x3], [B]), w_b),  # one input: a sum over d and seq
            weighted(mtf.einsum([x4, v4], [B, H]), w_bh),  # d only in x4, seq only in v4
            weighted(mtf.einsum([x5, x5], [B]), w_b),  # the same tensor twice
            weighted(mtf.einsum([q6, k6], [B, S, H]), w_bsh),  # batch dims in both
            weighted(mtf.einsum([a7, b7]), w_bh),  # default output: [batch, h]
        ]
        return sum(terms, mtf.zeros([]))

    def reference(p):
        e = jnp.einsum
        terms = [
            jnp.sum(e("bd,dh->bh", p["x1"], p["k1"]) * p["w_bh"]),
            jnp.sum(e("bd,dh,hs->bs", p["x2"], p["y2"], p["z2"]) * p["w_bs"]),
            jnp.sum(e("bds->b", p["x3"]) * p["w_b"]),
            jnp.sum(e("bd,hs->bh", p["x4"], p["v4"]) * p["w_bh"]),
            jnp.sum(e("bd,bd->b", p["x5"], p["x5"]) * p["w_b"]),
            jnp.sum(e("bsd,dsh->bsh", p["q6"], p["k6"]) * p["w_bsh"]),
            jnp.sum(e("bd,dh->bh", p["a7"], p["b7"]) * p["w_bh"]),
        ]
        return sum(terms)

    I = mtf.Input  # noqa: E741
    inputs = dict(w_bh=I([B, H]), w_bs=I([B, S]), w_b=I([B]), w_bsh=I([B, S, H]),
                  x1=I([B, D]), k1=I([D, H]), x2=I([B, D]), y2=I([D, H]), z2=I([H, S]), x3=I([B, D, S]),
                  x4=I([B, D]), v4=I([H, S]), x5=I([B, D]), q6=I([B, S, D]), k6=I([D, S, H]),
                  a7=I([B, D]), b7=I([D, H]))
    check_grads(model, inputs, reference, layout=layout, mode=mode)


# ----------------------------------------------------------------- gather, embedding, cross-entropy


@modes_param
@cases("batch:rows,vocab:cols", "d:cols")
def test_gather_embedding_cross_entropy(layout, mode, sizes):
    """gather (repeated ids accumulate), layers.embedding, and a softmax
    cross-entropy written as one_hot . log_softmax."""
    B, D, S, V = dims(sizes, "batch", "d", "seq", "vocab")
    n_vocab = sizes["vocab"]

    def model(ids, labels, table, idx_v):
        h = mtf.layers.embedding(ids, V, D)  # [batch, seq, d], a trainable table
        logits = mtf.einsum([h, table], [B, S, V])  # the input table [d, vocab], reused as the output layer
        targets = mtf.one_hot(labels, V)
        cross_entropy = -mtf.reduce_mean(mtf.reduce_sum(targets * mtf.log_softmax(logits, V), V))
        rows = mtf.gather(mtf.transpose(table, [V, D]), ids, V)  # [batch, seq, d]
        # indices whose dim is named like the table's: [vocab] -> [vocab, d]
        same_name = mtf.gather(table, idx_v, V)
        return cross_entropy + mtf.reduce_sum(rows * h) * 0.1 + mtf.reduce_sum(mtf.tanh(same_name))

    def reference(p):
        ids, labels, table = p["ids"], p["labels"], p["table"]  # table [d, vocab]
        emb = p["params/embedding/table"]  # [vocab, d]
        h = emb[ids]
        logits = jnp.einsum("bsd,dv->bsv", h, table)
        targets = jax.nn.one_hot(labels, n_vocab, dtype=h.dtype)
        cross_entropy = -jnp.mean(jnp.sum(targets * jax.nn.log_softmax(logits, -1), -1))
        rows = table.T[ids]
        same_name = table[:, p["idx_v"]].T  # [vocab(idx), d]
        return cross_entropy + jnp.sum(rows * h) * 0.1 + jnp.sum(jnp.tanh(same_name))

    inputs = {
        "ids": mtf.Input([B, S], "i32", mtf.init.randint(0, n_vocab)),
        "labels": mtf.Input([B, S], "i32", mtf.init.randint(0, n_vocab)),
        "table": mtf.Input([D, V]),
        "idx_v": mtf.Input([V], "i32", mtf.init.randint(0, n_vocab)),
    }
    data = check_grads(model, inputs, reference, layout=layout, mode=mode)
    assert len(np.unique(data["ids"])) < data["ids"].size  # repeated ids: gradients accumulate


# ----------------------------------------------------------------- layers


def jax_layer_norm(x, scale, bias, eps=1e-6):
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.mean((x - mean) ** 2, -1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def jax_attention(x, p, name, causal):
    wq, wk, wv, wo = (p[f"params/{name}/w_{k}"] for k in "qkvo")
    q = jnp.einsum("bld,dhk->blhk", x, wq)
    k = jnp.einsum("bld,dhk->blhk", x, wk)
    v = jnp.einsum("bld,dhk->blhk", x, wv)
    logits = jnp.einsum("blhk,bmhk->bhlm", q, k) * (1.0 / math.sqrt(wq.shape[-1]))
    if causal:
        length = x.shape[1]
        logits = jnp.where(jnp.tril(jnp.ones((length, length), bool)), logits, -1e9)
    o = jnp.einsum("bhlm,bmhk->blhk", jax.nn.softmax(logits, -1), v)
    return jnp.einsum("blhk,hkd->bld", o, wo)


@modes_param
@cases("batch:rows,heads:cols", "d:cols")
def test_layers(layout, mode, sizes):
    """A small transformer block: layer_norm, causal attention, feed_forward
    (relu), dense (gelu), mean squared error; gradients of every parameter."""
    B, D, L, HEADS, KV, H = dims({**sizes, "length": sizes["seq"]}, "batch", "d", "length", "heads", "kv", "h")
    FF = mtf.Dim("d_ff", 2 * sizes["d"])

    def model(x, target):
        h = mtf.layers.layer_norm(x, D)
        h = h + mtf.layers.attention(h, io_dim=D, heads_dim=HEADS, kv_dim=KV, length_dim=L, causal=True)
        h = h + mtf.layers.feed_forward(h, io_dim=D, hidden_dim=FF)
        y = mtf.layers.dense(h, H, activation=mtf.gelu, name="out")
        return mtf.reduce_mean(mtf.square(y - target))

    def reference(p):
        x = p["x"]
        h = jax_layer_norm(x, p["params/layer_norm/scale"], p["params/layer_norm/bias"])
        h = h + jax_attention(h, p, "attention", causal=True)
        hidden = jnp.maximum(h @ p["params/feed_forward/wi/kernel"] + p["params/feed_forward/wi/bias"], 0.0)
        h = h + hidden @ p["params/feed_forward/wo/kernel"] + p["params/feed_forward/wo/bias"]
        y = jax.nn.gelu(h @ p["params/out/kernel"] + p["params/out/bias"], approximate=True)
        return jnp.mean((y - p["target"]) ** 2)

    rng = np.random.default_rng(7)
    # non-trivial scales and biases, so their gradients are not all alike
    host = {
        "params/layer_norm/scale": (1.0 + 0.5 * rng.standard_normal(sizes["d"])).astype(np.float32),
        "params/layer_norm/bias": rng.standard_normal(sizes["d"]).astype(np.float32),
        "params/feed_forward/wi/bias": rng.standard_normal(2 * sizes["d"]).astype(np.float32),
        "params/out/bias": rng.standard_normal(sizes["h"]).astype(np.float32),
    }
    inputs = {"x": mtf.Input([B, L, D]), "target": mtf.Input([B, L, H])}
    data = check_grads(model, inputs, reference, layout=layout, mode=mode, host_inputs=host)
    assert "params/attention/w_q" in data and "params/feed_forward/wo/kernel" in data


@modes_param
def test_bf16_layer_gives_f32_master_gradients(mode):
    """A layer on a bf16 input computes in bf16 from f32 master parameters: the
    gradients (bf16 tolerance) have the masters' dtype, f32; the f32 loss is a cast."""
    B, D, H = mtf.Dim("batch", 8), mtf.Dim("d", 16), mtf.Dim("h", 8)

    def model(x):
        loss = mtf.cast(mtf.reduce_mean(mtf.square(mtf.layers.dense(x, H, activation=mtf.gelu, name="fc"))), "f32")
        return {"loss": loss, **mtf.grad(loss, mtf.trainable_variables())}

    sharded, _, data = run_model(model, {"x": mtf.Input([B, D], "bf16")}, layout="batch:rows,d:cols", mode=mode)
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731

    def reference(k, b):
        return jnp.mean(jax.nn.gelu(f32(data["x"]) @ k + b, approximate=True) ** 2)

    gk, gb = jax.grad(reference, argnums=(0, 1))(f32(data["params/fc/kernel"]), f32(data["params/fc/bias"]))
    assert sharded["params/fc/kernel"].dtype == data["params/fc/kernel"].dtype == np.float32
    assert_close(f32(sharded["params/fc/kernel"]), gk, "bf16")
    assert_close(f32(sharded["params/fc/bias"]), gb, "bf16")


# ----------------------------------------------------------------- the API


B8, D16, H8 = mtf.Dim("batch", 8), mtf.Dim("d", 16), mtf.Dim("h", 8)


def _trace(fn, **inputs):
    return trace(fn, {k: mtf.Input(v) for k, v in inputs.items()})


def test_grad_structures_zeros_and_dims():
    seen = {}

    def model(x, y):
        loss = mtf.reduce_sum(mtf.exp(x))
        seen["list"] = mtf.grad(loss, [x, y])
        seen["tuple"] = mtf.grad(loss, (y,))
        seen["dict"] = mtf.grad(loss, {"x": x})
        seen["single"] = mtf.grad(loss, x)
        seen["self"] = mtf.grad(loss, loss)
        return loss

    _trace(model, x=[B8, D16], y=[D16, B8])
    gx, gy = seen["list"]
    assert gx.shape == mtf.Shape([B8, D16]) and gy.shape == mtf.Shape([D16, B8])
    assert gy.op.primitive == "constant" and gy.op.params["value"] == 0  # y unused: zeros, not None
    assert isinstance(seen["tuple"], tuple) and list(seen["dict"]) == ["x"]
    assert seen["single"].shape == gx.shape
    assert seen["self"].op.primitive == "constant" and seen["self"].op.params["value"] == 1.0


def test_gradient_ops_are_scoped_and_located_at_the_forward_line():
    lines = {}

    def model(x):
        import inspect

        h = mtf.layers.dense(x, H8, name="fc"); lines["dense"] = inspect.currentframe().f_lineno  # noqa: E702
        loss = mtf.reduce_sum(mtf.tanh(h)); lines["loss"] = inspect.currentframe().f_lineno  # noqa: E702
        grads = mtf.grad(loss, mtf.trainable_variables()); lines["grad"] = inspect.currentframe().f_lineno  # noqa: E702
        return {"loss": loss, **grads}

    traced = _trace(model, x=[B8, D16])
    grad_ops = [op for op in traced.graph.operations if op.name.startswith("grad/")]
    assert grad_ops
    by_name = {op.name: op for op in grad_ops}
    assert any(name.startswith("grad/fc/einsum/") for name in by_name), sorted(by_name)
    for op in grad_ops:
        line = op.location[1]
        assert line in (lines["dense"], lines["loss"]), (op.name, line, lines)
        forward = "dense" if op.name.startswith("grad/fc/") else "loss"
        assert line == lines[forward], (op.name, line, lines)
    kernel_grad = traced.outputs["params/fc/kernel"]
    assert kernel_grad.op.primitive == "einsum" and kernel_grad.op.name.startswith("grad/fc/einsum")
    # nothing unused is left in the graph: every gradient op feeds an output
    live, stack = set(), [t.op for t in traced.outputs.values()]
    while stack:
        op = stack.pop()
        if id(op) not in live:
            live.add(id(op))
            stack.extend(t.op for t in op.inputs)
    assert all(id(op) in live for op in grad_ops)


def test_value_and_grad_and_trainable_variables():
    seen = {}

    def model(x):
        step = mtf.get_variable("step", [], "i32", mtf.init.zeros())
        slot = mtf.get_variable("slot", [D16], trainable=False)

        def loss_fn(x):
            h = mtf.layers.dense(x, H8, name="fc")
            return mtf.reduce_mean(mtf.square(h)), h

        (loss, h), grads = mtf.value_and_grad(loss_fn, has_aux=True)(x)
        seen["vars"] = mtf.trainable_variables()
        seen["grads"] = grads
        seen["h"] = h
        value, gx = mtf.value_and_grad(lambda: mtf.reduce_sum(x * x), wrt=x)()
        seen["gx"] = gx
        return {"loss": loss, "step": step, "slot": slot, "value": value, **grads}

    _trace(model, x=[B8, D16])
    assert list(seen["vars"]) == ["params/fc/kernel", "params/fc/bias"]
    assert list(seen["grads"]) == ["params/fc/kernel", "params/fc/bias"]
    assert seen["grads"]["params/fc/kernel"].shape == seen["vars"]["params/fc/kernel"].shape
    assert seen["h"].shape == mtf.Shape([B8, H8])
    assert seen["gx"].shape == mtf.Shape([B8, D16])


def test_value_and_grad_runs():
    """The gradients of value_and_grad as model outputs, against jax.grad."""

    def model(x):
        loss, grads = mtf.value_and_grad(
            lambda: mtf.reduce_mean(mtf.square(mtf.layers.dense(x, H8, activation=mtf.tanh, name="fc")))
        )()
        return {"loss": loss, **{f"d_{k}": g for k, g in grads.items()}}

    sharded, _, data = run_model(model, {"x": mtf.Input([B8, D16])}, layout="batch:rows,d:cols", mode="explicit")

    def reference(k, b):
        return jnp.mean(jnp.tanh(data["x"] @ k + b) ** 2)

    gk, gb = jax.grad(reference, argnums=(0, 1))(data["params/fc/kernel"], data["params/fc/bias"])
    assert_close(sharded["d_params/fc/kernel"], gk)
    assert_close(sharded["d_params/fc/bias"], gb)


def test_stop_gradient_lowers_to_nothing():
    from mtfc.compiler import compile_function

    module = compile_function(lambda x: mtf.stop_gradient(x) * 2.0, {"x": mtf.Input([B8])}, mesh="rows:2,cols:4",
                              mode="none")
    text = str(module)
    assert "stop_gradient" not in text
    assert text.count("stablehlo.multiply") == 1


@pytest.mark.parametrize(
    "body, message",
    [
        (lambda x, i: mtf.grad(x, [x]), "must be a scalar"),
        (lambda x, i: mtf.grad(mtf.reduce_sum(i), [x]), "must be a float tensor"),
        (lambda x, i: mtf.grad(mtf.reduce_sum(x), [i]), "only float tensors have gradients"),
        (lambda x, i: mtf.grad(mtf.reduce_sum(x), [3.0]), "must be mtfc tensors"),
    ],
    ids=["non_scalar_y", "integer_y", "integer_x", "not_a_tensor"],
)
def test_grad_errors(body, message):
    def model(x, i):
        return body(x, i)

    with pytest.raises(MtfcError, match=message) as info:
        trace(model, {"x": mtf.Input([B8]), "i": mtf.Input([B8], "i32")})
    assert "test_grad.py" in str(info.value)
