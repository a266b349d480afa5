"""Train steps (`compile --train`): optimizers, clipping and the learning-rate
schedule against a reference written here (JAX for the gradients, NumPy for
the updates), under several layouts and both partitioners; FSDP's
collectives; mixed precision."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mtfc as mtf
from conftest import assert_close, run_train_steps
from mtfc.compiler import compile_function

BATCH, D_IN, D_OUT = 16, 8, 4


def linear_model(x, t):
    w = mtf.get_variable("w", [mtf.Dim("d_in", D_IN), mtf.Dim("d_out", D_OUT)], initializer="normal:0.5")
    b = mtf.get_variable("b", [mtf.Dim("d_out", D_OUT)], initializer="normal:0.5")
    y = mtf.einsum([x, w], output_shape=[x.shape[0], w.shape[1]]) + b
    return {"loss": mtf.reduce_mean(mtf.square(y - t))}


INPUTS = {
    "x": mtf.Input([mtf.Dim("batch", BATCH), mtf.Dim("d_in", D_IN)]),
    "t": mtf.Input([mtf.Dim("batch", BATCH), mtf.Dim("d_out", D_OUT)]),
}


def reference_loss(params, x, t):
    y = x @ params["params/w"] + params["params/b"]
    return jnp.mean((y - t) ** 2)


def reference_steps(spec: dict, name: str, params: dict, x, t, steps: int):
    """`steps` updates of `name` (sgd, adamw, adafactor) written from the papers' formulas."""
    params = {k: np.asarray(v, np.float64) for k, v in params.items()}
    state = {k: {} for k in params}
    lrs, norms = [], []
    for step in range(steps):
        grads = jax.grad(reference_loss)({k: jnp.asarray(v, jnp.float32) for k, v in params.items()}, x, t)
        grads = {k: np.asarray(g, np.float64) for k, g in grads.items()}
        norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
        norms.append(norm)
        if spec.get("clip", 0):
            scale = min(1.0, spec["clip"] / (norm + 1e-6))
            grads = {k: g * scale for k, g in grads.items()}
        warmup = spec.get("warmup", 0)
        lr = spec["lr"] * (min(1.0, (step + 1) / warmup) if warmup else 1.0)
        lrs.append(lr)
        t_ = step + 1
        for k, p in params.items():
            g, s = grads[k], state[k]
            if name == "sgd":
                s["buf"] = spec["momentum"] * s.get("buf", 0.0) + g
                params[k] = p - lr * s["buf"]
            elif name == "adamw":
                s["m"] = spec["b1"] * s.get("m", 0.0) + (1 - spec["b1"]) * g
                s["v"] = spec["b2"] * s.get("v", 0.0) + (1 - spec["b2"]) * g * g
                m_hat = s["m"] / (1 - spec["b1"] ** t_)
                v_hat = s["v"] / (1 - spec["b2"] ** t_)
                params[k] = p - lr * (m_hat / (np.sqrt(v_hat) + spec["eps"]) + spec["wd"] * p)
            elif name == "adafactor":
                decay = 1 - t_ ** -spec["decay_rate"]
                g2 = g * g + 1e-30
                if g.ndim == 2:  # rows: d_in (the larger dim), columns: d_out
                    s["vr"] = decay * s.get("vr", 0.0) + (1 - decay) * g2.mean(axis=1)
                    s["vc"] = decay * s.get("vc", 0.0) + (1 - decay) * g2.mean(axis=0)
                    v = np.outer(s["vr"], s["vc"]) / s["vr"].mean()
                else:
                    s["v"] = decay * s.get("v", 0.0) + (1 - decay) * g2
                    v = s["v"]
                update = g / np.sqrt(v)
                update = update / max(1.0, math.sqrt((update * update).mean()) / spec["clip_rms"])
                params[k] = p - lr * update
    return params, lrs, norms


OPTIMIZERS = [
    ("sgd", "sgd:lr=0.05,momentum=0.9", {"lr": 0.05, "momentum": 0.9}),
    ("adamw", "adamw:lr=0.01,b1=0.9,b2=0.99,eps=1e-8,wd=0.01,clip=0.5,warmup=2",
     {"lr": 0.01, "b1": 0.9, "b2": 0.99, "eps": 1e-8, "wd": 0.01, "clip": 0.5, "warmup": 2}),
    ("adafactor", "adafactor:lr=0.01,decay_rate=0.8,clip_rms=1.0", {"lr": 0.01, "decay_rate": 0.8, "clip_rms": 1.0}),
]
LAYOUTS = [("", None), ("batch:rows,d_out:cols", None), ("batch:rows+cols", "d_in:rows+cols")]


@pytest.mark.parametrize("mode", ["gspmd", "explicit", "shardy"])
@pytest.mark.parametrize("layout,param_layout", LAYOUTS, ids=["replicated", "dp+tp", "fsdp"])
@pytest.mark.parametrize("name,spec_text,spec", OPTIMIZERS, ids=[o[0] for o in OPTIMIZERS])
def test_optimizer_matches_reference(name, spec_text, spec, layout, param_layout, mode):
    module = compile_function(linear_model, INPUTS, mesh="rows:2,cols:4", layout=layout, mode=mode,
                              param_layout=param_layout, train=True, optimizer=spec_text)
    steps = 3
    initial, outputs = run_train_steps(module, steps)
    params = {k: initial[k] for k in ("params/w", "params/b")}
    want, lrs, norms = reference_steps(spec, name, params, initial["x"], initial["t"], steps)
    for k in params:
        assert_close(outputs[-1][k], want[k].astype(np.float32))
    for out, lr, norm in zip(outputs, lrs, norms):
        assert abs(float(out["learning_rate"]) - lr) <= 1e-7 * max(1.0, lr)
        assert abs(float(out["grad_norm"]) - norm) <= 1e-5 * norm
    assert int(outputs[-1]["opt/step"]) == steps
    losses = [float(o["loss"]) for o in outputs]
    assert losses[-1] < losses[0]


def test_learning_rate_schedule():
    from mtfc.frontend.optimizers import OptimizerSpec, learning_rates

    s = OptimizerSpec.parse("adamw:lr=1.0,warmup=4,decay=cosine,steps=12").settings
    lrs = learning_rates(s)
    assert list(lrs[:4]) == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # cosine from 1 at the end of warm-up towards 0 at `steps`
    assert lrs[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0 / 8)))
    assert lrs[8] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 8)))
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    linear = learning_rates(OptimizerSpec.parse("sgd:lr=2,decay=linear,steps=4").settings)
    assert list(linear) == pytest.approx([2.0, 1.5, 1.0, 0.5])


@pytest.mark.parametrize("text,message", [
    ("rmsprop:lr=1", "unknown optimizer 'rmsprop'"),
    ("adam:lr=fast", "lr='fast' is not a number"),
    ("adam:beta=0.9", "bad setting 'beta=0.9'"),
    ("sgd:decay=exp", "decay='exp'"),
])
def test_bad_optimizer_specs(text, message):
    from mtfc.errors import MtfcError
    from mtfc.frontend.optimizers import OptimizerSpec

    with pytest.raises(MtfcError, match=message.replace("(", r"\(").replace(")", r"\)")):
        OptimizerSpec.parse(text)


def _program(module):
    text = str(module)
    return text[: text.index("module @mtfc.reference")]


def test_fsdp_gathers_parameters_and_reduce_scatters_gradients():
    """FSDP as a layout: data-parallel activations, parameters stored split
    over the same axes; explicit mode gathers each parameter where it is used
    and reduce-scatters its gradient (never all_reduce + slice)."""
    module = compile_function(linear_model, INPUTS, mesh="rows:2,cols:4", layout="batch:rows+cols",
                              param_layout="d_in:rows+cols", mode="explicit", train=True,
                              optimizer="adamw:lr=0.01")
    import re

    program = _program(module)
    ops = re.findall(r'"stablehlo\.(all_gather|reduce_scatter|all_reduce)".*?: \((tensor<[^>]*>)\) -> (tensor<[^>]*>)',
                     program, re.S)
    assert ("all_gather", "tensor<1x4xf32>", "tensor<8x4xf32>") in ops, ops  # w gathered where it is used
    assert ("reduce_scatter", "tensor<8x4xf32>", "tensor<1x4xf32>") in ops, ops  # its gradient scattered
    assert ("all_reduce", "tensor<8x4xf32>", "tensor<8x4xf32>") not in ops
    # the optimizer state lives on shards: m and v of w are [1, 4] per device
    assert 'tensor<1x4xf32> {mtfc.dims = ["d_in", "d_out"], mtfc.init = "constant:0", mtfc.name = "opt/params/w/m"' in program


def test_train_step_donates_state_buffers():
    module = compile_function(linear_model, INPUTS, mesh="rows:2,cols:4", layout="batch:rows", train=True,
                              optimizer="sgd:lr=0.1")
    text = _program(module)  # without the nested reference program
    import re

    aliased = re.findall(r'tf.aliasing_output = (\d+) : i32', text)
    # w, b, their momentum slots and the step counter
    assert len(aliased) == 5 and len(set(aliased)) == 5


def test_mixed_precision_matches_f32_within_bf16_tolerance():
    f32 = compile_function(linear_model, INPUTS, mesh="rows:2,cols:4", layout="batch:rows", train=True,
                           optimizer="sgd:lr=0.05,momentum=0.9")
    bf16 = compile_function(linear_model, INPUTS, mesh="rows:2,cols:4", layout="batch:rows", train=True,
                            optimizer="sgd:lr=0.05,momentum=0.9", precision="bf16")
    assert "bf16" in str(bf16) and "bf16" not in str(f32)
    _, want = run_train_steps(f32, 2)
    _, got = run_train_steps(bf16, 2)
    # master weights stay f32
    assert got[-1]["params/w"].dtype == np.float32
    assert_close(got[-1]["params/w"], want[-1]["params/w"], "bf16")
    assert_close(got[-1]["loss"], want[-1]["loss"], "bf16")


def mlp_model(x, t, remat=False):
    import contextlib

    hidden = mtf.Dim("hidden", 16)
    with mtf.recompute() if remat else contextlib.nullcontext():
        h = mtf.layers.dense(x, hidden, name="fc1", activation=mtf.tanh)
        h = mtf.gelu(h) * mtf.sigmoid(h)
    y = mtf.layers.dense(h, mtf.Dim("d_out", D_OUT), [hidden], name="fc2")
    return {"loss": mtf.reduce_mean(mtf.square(y - t))}


@pytest.mark.parametrize("mode", ["gspmd", "explicit", "shardy"])
def test_recompute_block_gives_the_same_training(mode):
    """A block marked `mtf.recompute()` is lowered again for the backward pass
    from optimization barriers on its inputs; the training is unchanged."""
    kwargs = dict(mesh="rows:2,cols:4", layout="batch:rows,hidden:cols", mode=mode, train=True,
                  optimizer="adamw:lr=0.01")
    plain = compile_function(mlp_model, INPUTS, **kwargs)
    remat = compile_function(lambda x, t: mlp_model(x, t, remat=True), INPUTS, **kwargs)
    plain_text, remat_text = str(plain), str(remat)
    assert "optimization_barrier" not in plain_text
    assert remat_text.count("stablehlo.optimization_barrier") >= 1
    assert "recompute/fc1" in remat.operation.get_asm(enable_debug_info=True)
    assert remat_text.count("stablehlo.tanh") > plain_text.count("stablehlo.tanh")
    _, want = run_train_steps(plain, 2)
    _, got = run_train_steps(remat, 2)
    for name in ("loss", "params/fc1/kernel", "params/fc2/kernel"):
        assert_close(got[-1][name], want[-1][name])
