"""Training in shardy mode: the example train steps (examples/transformer.py
through the CLI, the layers of examples/mlp.py with a loss) train to the same
losses as explicit and gspmd mode and the unsharded run, and `mtf.recompute()`
blocks with split values go through Shardy with the values and gradients they
have without recomputation."""

from __future__ import annotations

import contextlib
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

import mtfc as mtf
from conftest import assert_close, run_model, run_train_steps
from mtfc.cli import main
from mtfc.compiler import compile_function
from mtfc.frontend.model import load_model_file

ROOT = os.path.join(os.path.dirname(__file__), "..")
TRANSFORMER = os.path.join(ROOT, "examples", "transformer.py")
MLP = os.path.join(ROOT, "examples", "mlp.py")
TOKENS = os.path.join(ROOT, "examples", "data", "tokens.npy")
STEPS = 3
RTOL = 2e-5  # as tests/test_train_transformer.py: f32 sums in other orders over 3 steps

TRANSFORMER_LAYOUTS = {
    "data": ["--layout", "batch:rows+cols"],
    "tensor": ["--layout", "batch:rows,heads:cols,d_ff:cols"],
    "fsdp": ["--layout", "batch:rows+cols", "--param-layout", "d_model:rows+cols"],
}


def train_cli(tmp_path, name, flags, mode):
    """Compile examples/transformer.py --train in `mode`, run STEPS steps on the shipped tokens; the losses."""
    module, log = tmp_path / f"{name}-{mode}.mlir", tmp_path / f"{name}-{mode}.jsonl"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", TRANSFORMER, "--train", "--mode", mode, "-o", str(module), *flags])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["run", str(module), "--steps", str(STEPS), "--data", TOKENS, "--log", str(log)])
    assert result.exit_code == 0, result.output
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def transformer_unsharded(tmp_path_factory):
    return train_cli(tmp_path_factory.mktemp("unsharded"), "unsharded", ["--mesh", "one:1", "--layout", ""], "none")


SHARDY_LOSSES: dict[str, list[float]] = {}  # layout kind -> shardy mode's losses (trained once)


@pytest.mark.parametrize("kind", list(TRANSFORMER_LAYOUTS))
def test_transformer_trains_in_shardy_mode_as_unsharded(kind, tmp_path, transformer_unsharded):
    losses = SHARDY_LOSSES[kind] = train_cli(tmp_path, kind, TRANSFORMER_LAYOUTS[kind], "shardy")
    assert len(losses) == STEPS and losses[0] > 4.0 and losses[-1] < losses[0], losses
    np.testing.assert_allclose(losses, transformer_unsharded, rtol=RTOL)


def test_transformer_trains_alike_in_every_mode(tmp_path, transformer_unsharded):
    """The default (data + tensor parallel) layout: shardy, explicit and gspmd
    give the same losses, each the unsharded run's."""
    flags = TRANSFORMER_LAYOUTS["tensor"]
    losses = {mode: train_cli(tmp_path, "tensor", flags, mode) for mode in ("explicit", "gspmd")}
    losses["shardy"] = SHARDY_LOSSES.get("tensor") or train_cli(tmp_path, "tensor", flags, "shardy")
    for mode, got in losses.items():
        np.testing.assert_allclose(got, transformer_unsharded, rtol=RTOL, err_msg=mode)
    np.testing.assert_allclose(losses["shardy"], losses["explicit"], rtol=RTOL)
    np.testing.assert_allclose(losses["shardy"], losses["gspmd"], rtol=RTOL)


# ---------------------------------------------------------------- the MLP example

MLP_ENTRY = load_model_file(MLP)


def run_steps(module, *, unsharded=False):
    """Each of STEPS steps' outputs (`conftest.run_train_steps`)."""
    return run_train_steps(module, STEPS, unsharded=unsharded)[1]


@pytest.mark.parametrize("layout,param_layout", [("batch:rows,d_hidden:cols", None),
                                                 ("batch:rows+cols", "d_hidden:rows+cols")], ids=["dp+tp", "fsdp"])
def test_mlp_trains_alike_in_every_mode(layout, param_layout):
    kwargs = dict(mesh="rows:2,cols:4", layout=layout, param_layout=param_layout, train=True,
                  optimizer="adamw:lr=0.01")
    runs = {mode: run_steps(compile_function(MLP_ENTRY.fn, MLP_ENTRY.inputs, mode=mode, **kwargs))
            for mode in ("shardy", "explicit", "gspmd")}
    unsharded = run_steps(compile_function(MLP_ENTRY.fn, MLP_ENTRY.inputs, mode="shardy", **kwargs), unsharded=True)
    losses = {mode: [float(o["loss"]) for o in out] for mode, out in runs.items()}
    want = [float(o["loss"]) for o in unsharded]
    assert want[-1] < want[0], want
    for mode, got in losses.items():
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=mode)
    for name in ("params/fc1/kernel", "params/fc2/kernel", "params/fc2/bias"):
        assert_close(runs["shardy"][-1][name], unsharded[-1][name])
        assert_close(runs["shardy"][-1][name], runs["explicit"][-1][name])


# ---------------------------------------------------------------- recompute

B, D_IN, HIDDEN = mtf.Dim("batch", 16), mtf.Dim("d_in", 8), mtf.Dim("hidden", 16)
D4 = mtf.Dim("d_out", 4)
REMAT_INPUTS = {"x": mtf.Input([B, D_IN]), "t": mtf.Input([B, D4])}


def remat_loss(x, t, remat):
    """Two dense layers, the first (and a nonlinearity) in a recompute block."""
    with mtf.recompute() if remat else contextlib.nullcontext():
        h = mtf.layers.dense(x, HIDDEN, name="fc1", activation=mtf.tanh)
        h = mtf.gelu(h) * mtf.sigmoid(h)
    y = mtf.layers.dense(h, D4, [HIDDEN], name="fc2")
    return mtf.reduce_mean(mtf.square(y - t))


def remat_grads(remat):
    def model(x, t):
        loss = remat_loss(x, t, remat)
        params = mtf.trainable_variables()
        grads = mtf.grad(loss, {"x": x, **params})
        return {"loss": loss, **{f"grad/{k}": g for k, g in grads.items()}}

    return model


def remat_reference(data):
    """JAX: the loss and its gradients with respect to x and every parameter."""
    p = {k: jnp.asarray(v) for k, v in data.items() if k.startswith("params/")}

    def loss(x, p):
        h = jnp.tanh(x @ p["params/fc1/kernel"] + p["params/fc1/bias"])
        h = jax.nn.gelu(h, approximate=True) * jax.nn.sigmoid(h)
        y = h @ p["params/fc2/kernel"] + p["params/fc2/bias"]
        return jnp.mean((y - jnp.asarray(data["t"])) ** 2)

    value, (gx, gp) = jax.value_and_grad(loss, argnums=(0, 1))(jnp.asarray(data["x"]), p)
    return {"loss": value, "grad/x": gx, **{f"grad/{k}": g for k, g in gp.items()}}


@pytest.mark.parametrize("layout", ["batch:rows,hidden:cols", "d_in:rows,hidden:cols", "batch:rows+cols"])
def test_recompute_with_split_values_in_shardy_mode(layout):
    """Shardy used to refuse the barrier (`optimization_barrier ... is not
    known to go through Shardy`); now the recomputed gradients equal those
    without recomputation, the unsharded run's and JAX's."""
    plain = run_model(remat_grads(False), REMAT_INPUTS, layout=layout, mode="shardy")
    remat = run_model(remat_grads(True), REMAT_INPUTS, layout=layout, mode="shardy")
    module = compile_function(remat_grads(True), REMAT_INPUTS, mesh="rows:2,cols:4", layout=layout, mode="shardy")
    program = str(module).split("module @mtfc.reference")[0]
    assert "stablehlo.optimization_barrier" in program
    want = remat_reference(remat[2])
    assert sorted(remat[0]) == sorted(want)
    for name, value in want.items():
        for what, got in (("recomputed", remat[0]), ("recomputed, unsharded", remat[1]), ("plain", plain[0])):
            try:
                assert_close(got[name], value)
            except AssertionError as e:
                raise AssertionError(f"{what}, {name}: {e}") from None


def test_recompute_trains_alike_in_shardy_mode():
    """The train step with a recompute block: shardy mode trains as without
    the block and as explicit mode, FSDP parameters included."""
    kwargs = dict(mesh="rows:2,cols:4", layout="batch:rows,hidden:cols", param_layout="d_in:rows+cols",
                  train=True, optimizer="adamw:lr=0.01")

    def step_model(remat):
        return lambda x, t: {"loss": remat_loss(x, t, remat)}

    plain = run_steps(compile_function(step_model(False), REMAT_INPUTS, mode="shardy", **kwargs))
    remat_module = compile_function(step_model(True), REMAT_INPUTS, mode="shardy", **kwargs)
    assert "stablehlo.optimization_barrier" in str(remat_module).split("module @mtfc.reference")[0]
    remat = run_steps(remat_module)
    explicit = run_steps(compile_function(step_model(True), REMAT_INPUTS, mode="explicit", **kwargs))
    for name in ("loss", "params/fc1/kernel", "params/fc2/kernel"):
        assert_close(remat[-1][name], plain[-1][name])
        assert_close(remat[-1][name], explicit[-1][name])
