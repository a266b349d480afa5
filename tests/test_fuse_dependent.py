"""Dependent collectives (issue 8): contractions whose sums run over dims split
on different mesh axes, one level feeding the next, so that `fuse-collectives`
merges all_reduces of one level while the next level's depend on them.  Every
mode compiles and runs them, and agrees with the unsharded run and NumPy."""

from __future__ import annotations

import numpy as np
import pytest

import mtfc as mtf
from conftest import assert_close, run_model

MODES = ("explicit", "gspmd", "shardy")

B, D, KV, O = mtf.Dim("batch", 4), mtf.Dim("d", 8), mtf.Dim("kv", 4), mtf.Dim("o", 6)


def two_level_chain(x):
    """u1 = x.w1, u2 = x.w2 (summed over d), y1 = u1.v1, y2 = u2.v2 (summed over kv), y = y1 + y2."""
    w1, w2 = mtf.get_variable("w1", [D, KV]), mtf.get_variable("w2", [D, KV])
    v1, v2 = mtf.get_variable("v1", [KV, O]), mtf.get_variable("v2", [KV, O])
    u1, u2 = mtf.einsum([x, w1], [B, KV]), mtf.einsum([x, w2], [B, KV])
    y1, y2 = mtf.einsum([u1, v1], [B, O]), mtf.einsum([u2, v2], [B, O])
    return {"y": y1 + y2, "u1": u1}


def two_level_reference(data):
    x = data["x"].astype(np.float64)
    p = {k: data[f"params/{k}"].astype(np.float64) for k in ("w1", "w2", "v1", "v2")}
    u1, u2 = x @ p["w1"], x @ p["w2"]
    return {"y": u1 @ p["v1"] + u2 @ p["v2"], "u1": u1}


@pytest.mark.parametrize("mode", MODES)
def test_two_level_contraction_chain(mode):
    """The issue's model on a:4,b:2 with d:a,kv:b (explicit mode used to fail
    verification: a merged all_reduce placed before its operands)."""
    sharded, unsharded, data = run_model(two_level_chain, {"x": mtf.Input([B, D])}, mesh="a:4,b:2",
                                         layout="d:a,kv:b", mode=mode)
    expected = two_level_reference(data)
    for name, want in expected.items():
        assert_close(sharded[name], want)
        assert_close(unsharded[name], want)
        assert_close(sharded[name], unsharded[name])


def test_explicit_merges_each_level_once():
    """In explicit mode each level's two sums become one variadic all_reduce."""
    from mtfc.compiler import compile_function

    module = compile_function(two_level_chain, {"x": mtf.Input([B, D])}, mesh="a:4,b:2", layout="d:a,kv:b",
                              mode="explicit")
    program = str(module).split("module @mtfc.reference")[0]
    reduces = [line for line in program.splitlines() if '"stablehlo.all_reduce"' in line]
    assert len(reduces) == 2, reduces
    assert all(line.lstrip().startswith("%") and ":2 = " in line for line in reduces), reduces


# ---------------------------------------------------------------- grouped-query attention

BATCH, SEQ, MEM = mtf.Dim("batch", 2), mtf.Dim("seq", 4), mtf.Dim("memory", 4)
D_MODEL, KV_HEADS, GROUP, D_KV = mtf.Dim("d_model", 8), mtf.Dim("kv_heads", 2), mtf.Dim("group", 2), mtf.Dim("d_kv", 4)


def gqa_with_input_gradient(x):
    """Grouped-query attention (query heads = kv_heads x group share each kv
    head) and the gradient of its loss with respect to the input."""
    wq = mtf.get_variable("wq", [D_MODEL, KV_HEADS, GROUP, D_KV], initializer="normal:0.3")
    wk = mtf.get_variable("wk", [D_MODEL, KV_HEADS, D_KV], initializer="normal:0.3")
    wv = mtf.get_variable("wv", [D_MODEL, KV_HEADS, D_KV], initializer="normal:0.3")
    wo = mtf.get_variable("wo", [KV_HEADS, GROUP, D_KV, D_MODEL], initializer="normal:0.3")
    memory = mtf.rename_dimension(x, "seq", "memory")
    q = mtf.einsum([x, wq], [BATCH, KV_HEADS, GROUP, SEQ, D_KV])
    k = mtf.einsum([memory, wk], [BATCH, KV_HEADS, MEM, D_KV])
    v = mtf.einsum([memory, wv], [BATCH, KV_HEADS, MEM, D_KV])
    logits = mtf.einsum([q, k], [BATCH, KV_HEADS, GROUP, SEQ, MEM]) * (D_KV.size**-0.5)
    weights = mtf.softmax(logits, MEM)
    context = mtf.einsum([weights, v], [BATCH, KV_HEADS, GROUP, SEQ, D_KV])
    out = mtf.einsum([context, wo], [BATCH, SEQ, D_MODEL])
    loss = mtf.reduce_sum(mtf.square(out))
    return {"out": out, "loss": loss, "dx": mtf.grad(loss, x)}


def gqa_reference(data):
    """NumPy forward and a hand-written backward pass with respect to x."""
    x = data["x"].astype(np.float64)
    wq, wk, wv, wo = (data[f"params/{k}"].astype(np.float64) for k in ("wq", "wk", "wv", "wo"))
    q = np.einsum("bsd,dhgk->bhgsk", x, wq)
    k = np.einsum("bmd,dhk->bhmk", x, wk)
    v = np.einsum("bmd,dhk->bhmk", x, wv)
    logits = np.einsum("bhgsk,bhmk->bhgsm", q, k) / 2.0
    e = np.exp(logits - logits.max(-1, keepdims=True))
    w = e / e.sum(-1, keepdims=True)
    ctx = np.einsum("bhgsm,bhmk->bhgsk", w, v)
    out = np.einsum("bhgsk,hgkd->bsd", ctx, wo)
    d_out = 2 * out
    d_ctx = np.einsum("bsd,hgkd->bhgsk", d_out, wo)
    d_w = np.einsum("bhgsk,bhmk->bhgsm", d_ctx, v)
    d_v = np.einsum("bhgsm,bhgsk->bhmk", w, d_ctx)
    d_logits = w * (d_w - (d_w * w).sum(-1, keepdims=True)) / 2.0
    d_q = np.einsum("bhgsm,bhmk->bhgsk", d_logits, k)
    d_k = np.einsum("bhgsm,bhgsk->bhmk", d_logits, q)
    dx = (np.einsum("bhgsk,dhgk->bsd", d_q, wq) + np.einsum("bhmk,dhk->bmd", d_k, wk)
          + np.einsum("bhmk,dhk->bmd", d_v, wv))
    return {"out": out, "loss": np.sum(out**2), "dx": dx}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["kv_heads:x,group:y,d_kv:z", "d_model:x,d_kv:y,memory:z"])
def test_grouped_query_attention_input_gradient_3_axes(mode, layout):
    """GQA with its input gradient on x:2,y:2,z:2, where the issue first showed."""
    sharded, unsharded, data = run_model(gqa_with_input_gradient, {"x": mtf.Input([BATCH, SEQ, D_MODEL])},
                                         mesh="x:2,y:2,z:2", layout=layout, mode=mode)
    expected = gqa_reference(data)
    for name, want in expected.items():
        try:
            assert_close(sharded[name], want)
            assert_close(unsharded[name], want)
        except AssertionError as e:
            raise AssertionError(f"{mode} mode, {layout}, {name}: {e}") from None
