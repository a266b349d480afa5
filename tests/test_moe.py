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
from moe_reference import dense_moe

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
    """Dense dispatch in jax.numpy (tests/moe_reference.py): (y, aux, dropped token count)."""
    x = p["x"]
    tokens = x.reshape(-1, GROUP, D)  # [groups, group, d]: batch-major token order
    y, aux, dropped = dense_moe(tokens, p[P + "gate"], p[P + "wi"], p[P + "wo"], gating, factor)
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


# ------------------------------------------------------------------ explicit program: all_to_alls
def stacked_moe(n_layers, gating="top2"):
    """`n_layers` residual MoE layers after a parameter (so the first layer's
    input needs a gradient too): (model, capacity at the eval / train factor)."""
    train_factor, eval_factor = FACTORS[gating]

    def model(x, cot):
        h = x * mtf.get_variable("scale", [d_model], initializer=mtf.init.ones())
        aux_total = 0.0
        for i in range(n_layers):
            y, aux = mtf.layers.moe(h, io_dim=d_model, hidden_dim=d_ff, experts_dim=experts, group_size=GROUP,
                                    gating=gating, capacity_factor_train=train_factor,
                                    capacity_factor_eval=eval_factor, name=f"moe{i}")
            h, aux_total = h + y, aux + aux_total
        return {"y": h, "aux": aux_total, "loss": mtf.reduce_sum(h * cot) + AUX_COEF * aux_total}

    return model


def all_to_alls(module):
    from mtfc.passes.comm_analysis import module_collectives

    return [c for c in module_collectives(module) if c.kind == "all_to_all"]


# (mesh, layout, mesh axes the groups and experts share)
EXPERT_LAYOUTS = [
    ("rows:2,cols:4", "batch:rows,experts:rows", ["rows"]),
    ("rows:2,cols:4", "batch:rows,experts:rows,d_ff:cols", ["rows"]),
    ("a:2,b:2,c:2", "batch:a+b,experts:a+b,d_ff:c", ["a", "b"]),
    ("x:4", "batch:x,experts:x", ["x"]),
]


@pytest.mark.parametrize("mesh,layout,axes", EXPERT_LAYOUTS, ids=[lay for _, lay, _ in EXPERT_LAYOUTS])
def test_explicit_program_moves_tokens_by_one_all_to_all_each_way(mesh, layout, axes):
    """Per MoE layer: forward exactly 2 all_to_alls (into the experts, back),
    the train step 4 (the forward 2 and the backward's mirrors: the output's
    cotangent into the experts, the input's back); each over the axes the
    groups and experts share, each moving S = bytes of [E, G/n, C, D] =
    4 * E * G * C * D / n per device (docs/passes/partition.md, "Mixture of
    experts").  Nothing else is an all_to_all; no all_gather appears."""
    from mtfc.frontend.moe import capacity

    n_layers = 2
    n = math.prod(int(a.split(":")[1]) for a in mesh.split(",") if a.split(":")[0] in axes)
    groups = B * L // GROUP
    train_factor, eval_factor = FACTORS["top2"]
    for train, factor, per_layer in ((False, eval_factor, 2), (True, train_factor, 4)):
        module = compile_function(stacked_moe(n_layers), INPUTS, mesh=mesh, layout=layout, mode="explicit",
                                  train=train, optimizer="sgd:lr=0.1" if train else None)
        found = all_to_alls(module)
        assert len(found) == per_layer * n_layers, [c.location for c in found]
        size = 4 * E * groups * capacity(GROUP, E, factor) * D // n
        for c in found:
            assert (c.axes, c.n, c.bytes) == (axes, n, size), c
            assert c.bus_bytes == (n - 1) / n * size
        from mtfc.passes.comm_analysis import module_collectives

        assert not [c for c in module_collectives(module) if c.kind == "all_gather"], "no all_gather of tokens"


def test_explicit_all_to_alls_split_experts_and_concatenate_groups():
    """The forward pair, as emitted: into the experts, split the experts dim
    (0) and concatenate the groups (1) of [experts, groups, capacity, d]; back,
    the reverse; replica groups: the mesh columns (devices along `rows`)."""
    module = compile_function(stacked_moe(1), INPUTS, mesh="rows:2,cols:4", layout="batch:rows,experts:rows",
                              mode="explicit")
    text = str(module)
    ops = re.findall(r'"stablehlo.all_to_all"\(.*', text)
    assert len(ops) == 2
    into, back = ops
    for op, split, concat in ((into, 0, 1), (back, 1, 0)):
        assert f"concat_dimension = {concat} : i64" in op and f"split_dimension = {split} : i64" in op, op
        assert "split_count = 2" in op and "[[0, 4], [1, 5], [2, 6], [3, 7]]" in op, op
    assert 'mtfc.dims = ["experts_unsplit", "batch", "expert_capacity", "d_model"]' in into
    assert 'mtfc.dims = ["experts", "batch_unsplit", "expert_capacity", "d_model"]' in back


def test_moe_batch_dim_not_first_and_three_token_dims():
    """Tokens over three dims with the batch dim given and not first
    ([length, d_model, batch, extra]): the layer puts the batch first (so the
    groups take its layout), routes, and returns x's own dim order."""
    extra = mtf.Dim("extra", 2)
    short = mtf.Dim("length", L // 2)
    inputs = {"x": mtf.Input([short, d_model, batch, extra])}

    def model(x):
        y, aux = mtf.layers.moe(x, io_dim=d_model, hidden_dim=d_ff, experts_dim=experts, group_size=GROUP,
                                batch_dim=batch, gating="top2", capacity_factor_eval=FACTORS["top2"][1])
        return {"y": y, "aux": aux}

    for mode in MODES:
        sharded, unsharded, data = run_model(model, inputs, mesh="rows:2,cols:4", layout="batch:rows,experts:rows",
                                             mode=mode)
        with jax.enable_x64(True):
            p = {k: jnp.asarray(v, jnp.float64) for k, v in data.items()}
            x = p["x"]  # [length, d, batch, extra] -> tokens in (batch, length, extra) order
            p["x"] = jnp.transpose(x, (2, 0, 3, 1)).reshape(B, L, D)
            y, aux, _ = reference(p, "top2", FACTORS["top2"][1])
            y = jnp.transpose(y.reshape(B, L // 2, 2, D), (1, 3, 0, 2))
        assert_close(sharded["y"], np.asarray(y, np.float32))
        assert_close(sharded["aux"], np.asarray(aux, np.float32))
        assert_close(sharded["y"], unsharded["y"])
