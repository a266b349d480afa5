"""`mtf.layers.moe`: mixture of experts against a dense-dispatch reference
written here in jax.numpy (every expert on every token, the gate weights,
capacity positions by cumsum, drops and the load-balancing loss computed
independently), forward and gradients, top-1 and top-2, train and eval
capacity, under replicated, data, expert and expert x tensor layouts on 1-,
2- and 3-axis meshes in every partitioning mode; and the explicit program's
all_to_alls: exactly two per MoE layer forward (Mesh TF's rename of the
split dim), their mirrors backward, with the bytes of
docs/passes/partition.md's closed form."""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtfc as mtf
from conftest import assert_close, run_model, run_train_steps
from mtfc.compiler import compile_function
from mtfc.errors import MtfcError

B, L, D, E, H = 8, 8, 8, 4, 16  # batch, length, d_model, experts, d_ff
GROUP = 8  # tokens per group: 8 groups
batch, length, d_model = mtf.Dim("batch", B), mtf.Dim("length", L), mtf.Dim("d_model", D)
experts, d_ff = mtf.Dim("experts", E), mtf.Dim("d_ff", H)
INPUTS = {"x": mtf.Input([batch, length, d_model]), "cot": mtf.Input([batch, length, d_model])}
AUX_COEF = 0.1
P = "params/moe/"

MODES = ("gspmd", "explicit", "shardy")


def moe_model(gating, train_factor, eval_factor):
    def model(x, cot):
        y, aux = mtf.layers.moe(x, io_dim=d_model, hidden_dim=d_ff, experts_dim=experts, group_size=GROUP,
                                gating=gating, capacity_factor_train=train_factor,
                                capacity_factor_eval=eval_factor)
        return {"y": y, "aux": aux, "loss": mtf.reduce_sum(y * cot) + AUX_COEF * aux}
    return model


# ------------------------------------------------------------------ reference
def reference(p, gating, factor):
    """Dense dispatch in jax.numpy: (y, aux, dropped token count)."""
    x = p["x"]
    wg, wi, wo = p[P + "gate"], p[P + "wi"], p[P + "wo"]
    tokens = x.reshape(-1, GROUP, D)  # [groups, group, d]: batch-major token order
    probs = jax.nn.softmax(jnp.einsum("gsd,de->gse", tokens, wg), axis=-1)
    every = jnp.einsum("gseh,ehd->gsed", jax.nn.relu(jnp.einsum("gsd,edh->gseh", tokens, wi)), wo)
    cap = min(GROUP, math.ceil(GROUP * factor / E))
    first = jnp.argmax(probs, -1)
    m1 = jax.nn.one_hot(first, E, dtype=probs.dtype)
    g1 = jnp.take_along_axis(probs, first[..., None], -1)[..., 0]
    aux = jnp.mean(jnp.sum(m1.mean(1) * probs.mean(1), -1) * E)
    choices = [(first, m1, g1)]
    if gating == "top2":
        second = jnp.argmax(jnp.where(m1 > 0, -1.0, probs), -1)
        m2 = jax.nn.one_hot(second, E, dtype=probs.dtype)
        g2 = jnp.take_along_axis(probs, second[..., None], -1)[..., 0]
        total = g1 + g2 + 1e-9
        choices = [(first, m1, g1 / total), (second, m2, g2 / total)]
    filled = jnp.zeros((tokens.shape[0], E), probs.dtype)  # slots taken per group and expert
    y = jnp.zeros_like(tokens)
    dropped = 0
    for index, mask, gate in choices:
        position = jnp.sum((jnp.cumsum(mask, axis=1) - mask + filled[:, None, :]) * mask, -1)  # [groups, group]
        keep = position < cap
        filled = filled + jnp.sum(mask * keep[..., None], axis=1)
        dropped += int(np.sum(~np.asarray(keep)))
        chosen = jnp.take_along_axis(every, index[..., None, None], 2)[:, :, 0, :]
        y = y + (gate * keep)[..., None] * chosen
    return y.reshape(x.shape), aux, dropped


def expected_outputs(p, gating, factor):
    y, aux, _ = reference(p, gating, factor)
    return {"y": y, "aux": aux, "loss": jnp.sum(y * p["cot"]) + AUX_COEF * aux}


def test_capacity_formula():
    from mtfc.frontend.moe import capacity

    assert capacity(8, 4, 1.0) == 2
    assert capacity(8, 4, 1.25) == 3  # ceil(2.5)
    assert capacity(8, 4, 100.0) == 8  # at most the group
    assert capacity(6, 4, 0.1) == 1


# (gating, train factor, eval factor): capacities ceil(8 * factor / 4) -- eval 3 (top1) and 4 (top2),
# train 4 and 2 -- all rounded up
GATINGS = [("top1", 1.75, 1.25), ("top2", 0.75, 1.75)]
FACTORS = {g: (t, e) for g, t, e in GATINGS}
# Layouts on 1-, 2- and 3-axis meshes: replicated, data, expert, expert x tensor.
FORWARD_CASES = [
    ("x:8", "", "top2"),
    ("x:4", "batch:x,experts:x", "top1"),
    ("rows:2,cols:4", "batch:rows+cols", "top2"),
    ("rows:2,cols:4", "batch:rows,experts:rows", "top1"),
    ("rows:2,cols:4", "batch:rows,experts:rows", "top2"),
    ("rows:2,cols:4", "batch:rows,experts:rows,d_ff:cols", "top2"),
    ("a:2,b:2,c:2", "batch:a+b,experts:a+b,d_ff:c", "top1"),
    ("a:2,b:2,c:2", "batch:a,experts:a,d_ff:b+c", "top2"),
]


@pytest.mark.parametrize("mesh,layout,gating", FORWARD_CASES,
                         ids=[f"{m}-{l or 'replicated'}-{g}" for m, l, g in FORWARD_CASES])
def test_moe_forward_matches_dense_reference(mesh, layout, gating):
    """Forward module (eval capacity) in every mode: y and aux against the
    reference and the unsharded run; the data drop tokens."""
    train_factor, eval_factor = FACTORS[gating]
    model = moe_model(gating, train_factor, eval_factor)
    for mode in MODES:
        sharded, unsharded, data = run_model(model, INPUTS, mesh=mesh, layout=layout, mode=mode)
        with jax.enable_x64(True):
            p = {k: jnp.asarray(v, jnp.float64) for k, v in data.items()}
            want = expected_outputs(p, gating, eval_factor)
            assert reference(p, gating, eval_factor)[2] > 0, "the case must drop tokens"
        for name, value in want.items():
            try:
                assert_close(sharded[name], np.asarray(value, np.float32))
                assert_close(sharded[name], unsharded[name])
            except AssertionError as e:
                raise AssertionError(f"{mode}, {name!r}, layout {layout!r} on {mesh}: {e}") from None


GRAD_CASES = [
    ("rows:2,cols:4", "", "top2"),
    ("rows:2,cols:4", "batch:rows,experts:rows,d_ff:cols", "top1"),
    ("a:2,b:2,c:2", "batch:a+b,experts:a+b,d_ff:c", "top2"),
]


@pytest.mark.parametrize("mesh,layout,gating", GRAD_CASES, ids=[f"{g}-{l or 'replicated'}" for _, l, g in GRAD_CASES])
@pytest.mark.parametrize("mode", MODES)
def test_moe_gradients_match_jax_grad(mesh, layout, gating, mode):
    """mtf.grad of loss = sum(y * cot) + coef * aux with respect to x and every
    parameter, against jax.grad of the reference (float64)."""
    factor = FACTORS[gating][1]
    base = moe_model(gating, 1.0, factor)

    def model(x, cot):
        loss = base(x, cot)["loss"]
        wrt = {"x": x, **mtf.trainable_variables()}
        return {"loss": loss, **{f"d_{k}": g for k, g in mtf.grad(loss, wrt).items()}}

    sharded, unsharded, data = run_model(model, INPUTS, mesh=mesh, layout=layout, mode=mode)
    with jax.enable_x64(True):
        floats = {k: jnp.asarray(v, jnp.float64) for k, v in data.items()}
        wrt = ["x", P + "gate", P + "wi", P + "wo"]
        loss, grads = jax.value_and_grad(
            lambda w: expected_outputs({**floats, **w}, gating, factor)["loss"])({k: floats[k] for k in wrt})
    assert sorted(sharded) == sorted(["loss"] + [f"d_{k}" for k in wrt])
    assert_close(sharded["loss"], np.asarray(loss, np.float32))
    for k in wrt:
        assert_close(sharded[f"d_{k}"], np.asarray(grads[k], np.float32))
        assert_close(sharded[f"d_{k}"], unsharded[f"d_{k}"])


@pytest.mark.parametrize("mode", MODES)
def test_moe_train_step_uses_train_capacity(mode):
    """A train step (traced with mtf.is_training() true) uses the train
    capacity factor: its loss and aux metric match the reference at the
    train capacity (not the eval one, which gives other values here), and
    one SGD step (lr 1, no momentum) subtracts jax.grad of the reference."""
    gating = "top2"
    train_factor, eval_factor = FACTORS[gating]
    module = compile_function(moe_model(gating, train_factor, eval_factor), INPUTS, mesh="rows:2,cols:4",
                              layout="batch:rows,experts:rows,d_ff:cols", mode=mode, train=True,
                              optimizer="sgd:lr=1.0,momentum=0.0")
    data, outputs = run_train_steps(module, 1)
    (out,) = outputs
    with jax.enable_x64(True):
        floats = {k: jnp.asarray(v, jnp.float64) for k, v in data.items()
                  if np.issubdtype(np.asarray(v).dtype, np.floating)}
        params = [P + "gate", P + "wi", P + "wo"]
        want = expected_outputs(floats, gating, train_factor)
        other = expected_outputs(floats, gating, eval_factor)
        assert abs(float(want["aux"]) - float(other["aux"])) + abs(float(want["loss"]) - float(other["loss"])) > 1e-3
        grads = jax.grad(lambda w: expected_outputs({**floats, **w}, gating, train_factor)["loss"])(
            {k: floats[k] for k in params})
    assert_close(out["loss"], np.asarray(want["loss"], np.float32))
    assert_close(out["aux"], np.asarray(want["aux"], np.float32))
    for k in params:
        assert_close(out[k], np.asarray(floats[k] - grads[k], np.float32))


def test_is_training_outside_a_train_step_is_false():
    assert mtf.is_training() is False


def test_moe_errors_are_one_clear_line():
    def bad_group(x, cot):
        return {"y": mtf.layers.moe(x, io_dim=d_model, hidden_dim=d_ff, experts_dim=experts, group_size=5)[0]}

    with pytest.raises(MtfcError, match="not a multiple of group_size 5"):
        compile_function(bad_group, INPUTS, mode="none")

    def bad_gating(x, cot):
        return {"y": mtf.layers.moe(x, io_dim=d_model, hidden_dim=d_ff, experts_dim=experts, group_size=8,
                                    gating="top3")[0]}

    with pytest.raises(MtfcError, match="unknown gating 'top3'"):
        compile_function(bad_gating, INPUTS, mode="none")
