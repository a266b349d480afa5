"""Mixed precision (`--precision bf16`): every example and every layer trains
with every optimizer, computing in bf16 from f32 master weights with f32
optimizer state; the losses stay finite and within bf16 tolerance of the f32
run's, and the sharded program agrees with the unsharded one.  Also the dtype
rules bf16 relies on: float promotion and defaults that follow the compute
dtype (docs/training.md, "Mixed precision")."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import mtfc as mtf
from conftest import assert_close, run_model
from opcheck import BF16
from mtfc import ir as mir
from mtfc.compiler import compile_file, compile_function
from mtfc.runtime.execute import Program

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
STEPS = 3

OPTIMIZERS = {
    "sgd": "sgd:lr=0.05,momentum=0.9",
    "adamw_clip": "adamw:lr=0.003,wd=0.01,clip=0.5,warmup=2",
    "adafactor": "adafactor:lr=0.003",
}


def run_steps(module, steps: int = STEPS, seed: int = 5, *, unsharded: bool = True):
    """Run a train-step module `steps` times sharded (and, with `unsharded`,
    unsharded) from the same state and batch, each run feeding its own new
    state back; per step, each run's outputs by kind."""
    programs = {"sharded": Program(module)}
    if unsharded:
        programs["unsharded"] = Program(module, unsharded=True)
    data = programs["sharded"].synthesize_inputs(seed)
    state = {kind: dict(data) for kind in programs}
    history = []
    for _ in range(steps):
        outs = {kind: program.run(state[kind]).outputs for kind, program in programs.items()}
        history.append(outs)
        for sig in programs["sharded"].arguments:
            if sig.role in ("parameter", "optimizer_state"):
                for kind in state:
                    state[kind][sig.name] = outs[kind][sig.name]
    return history


def assert_f32_state(module):
    """Every parameter and optimizer-state argument and result is f32 (the step
    counter i32) and the model computes in bf16."""
    state = [s for s in mir.arguments(module) + mir.results(module) if s.role in ("parameter", "optimizer_state")]
    assert state
    for sig in state:
        want = "i32" if sig.name == "opt/step" else "f32"
        assert sig.dtype == want, (sig.name, sig.dtype)
    for sig in mir.results(module):
        if sig.role in ("loss", "metric"):
            assert sig.dtype in ("f32", "i32"), (sig.name, sig.dtype)
    program = str(module)
    assert "xbf16>" in program and "stablehlo.dot_general" in program


def assert_trains_like_f32(bf16_module, f32_module):
    """bf16 losses finite, within bf16 tolerance of the f32 run's and of the
    unsharded bf16 run's, and falling; f32 masters close to the f32 run's."""
    got, want = run_steps(bf16_module), run_steps(f32_module, unsharded=False)
    losses = [float(step["sharded"]["loss"]) for step in got]
    assert all(math.isfinite(v) for v in losses), losses
    for g, w in zip(got, want):
        assert_close(g["sharded"]["loss"], w["sharded"]["loss"], "bf16")
        assert_close(g["sharded"]["loss"], g["unsharded"]["loss"], "bf16")
    names = [s.name for s in mir.results(bf16_module) if s.role == "parameter"]
    assert all(got[-1]["sharded"][k].dtype == np.float32 for k in names)

    def weights(outputs):
        # all parameters as one vector: a zero-initialized bias holds nothing
        # but the bf16-sensitive updates, so it is compared within the whole
        return np.concatenate([np.asarray(outputs[k], np.float64).ravel() for k in names])

    assert_close(weights(got[-1]["sharded"]), weights(want[-1]["sharded"]), "bf16")
    assert_close(weights(got[-1]["sharded"]), weights(got[-1]["unsharded"]), "bf16")
    assert losses[-1] < losses[0], losses
    return got


# ----------------------------------------------------------------- the examples


@pytest.mark.parametrize("example,layout,optimizer", [
    ("mlp.py", "batch:rows,d_hidden:cols", OPTIMIZERS["sgd"]),
    ("transformer.py", "batch:rows,heads:cols,d_ff:cols", None),  # its own: adamw, warm-up, cosine, clip
])
def test_example_trains_in_bf16_with_f32_masters(example, layout, optimizer):
    path = os.path.join(EXAMPLES, example)
    kwargs = dict(layout=layout, mode="explicit", train=True, optimizer=optimizer)
    bf16 = compile_file(path, precision="bf16", **kwargs)
    assert_f32_state(bf16)
    f32 = compile_file(path, **kwargs)
    assert "bf16" not in str(f32)
    assert_trains_like_f32(bf16, f32)


# ----------------------------------------------------------------- every layer, every optimizer

BATCH, LENGTH = mtf.Dim("batch", 4), mtf.Dim("length", 8)
VOCAB, D_MODEL = mtf.Dim("vocab", 16), mtf.Dim("d_model", 16)
HEADS, D_KV, D_FF = mtf.Dim("heads", 4), mtf.Dim("d_kv", 4), mtf.Dim("d_ff", 32)
LAYER_INPUTS = {
    "tokens": mtf.Input([BATCH, LENGTH], "i32", mtf.init.randint(0, VOCAB.size)),
    "targets": mtf.Input([BATCH, LENGTH], "i32", mtf.init.randint(0, VOCAB.size)),
}


def every_layer_model(tokens, targets):
    """embedding, layer_norm, attention, feed_forward and dense, in a residual stack."""
    x = mtf.layers.embedding(tokens, VOCAB, D_MODEL)
    x = x + mtf.layers.attention(mtf.layers.layer_norm(x, D_MODEL, name="ln1"), io_dim=D_MODEL, heads_dim=HEADS,
                                 kv_dim=D_KV, length_dim=LENGTH, causal=True)
    x = x + mtf.layers.feed_forward(mtf.layers.layer_norm(x, D_MODEL, name="ln2"), io_dim=D_MODEL, hidden_dim=D_FF)
    logits = mtf.layers.dense(x, VOCAB, [D_MODEL], name="logits")
    label_logit = mtf.reduce_sum(logits * mtf.one_hot(targets, VOCAB), VOCAB)
    return {"loss": mtf.reduce_mean(mtf.reduce_logsumexp(logits, VOCAB) - label_logit)}


# every optimizer in explicit mode; gspmd and shardy with one (the partitioner, not the optimizer, differs)
@pytest.mark.parametrize("optimizer,mode", [(name, "explicit") for name in OPTIMIZERS]
                         + [("adamw_clip", "gspmd"), ("adamw_clip", "shardy")])
def test_every_layer_trains_in_bf16_with_each_optimizer(optimizer, mode):
    kwargs = dict(mesh="rows:2,cols:4", layout="batch:rows,heads:cols,d_ff:cols", mode=mode, train=True,
                  optimizer=OPTIMIZERS[optimizer])
    bf16 = compile_function(every_layer_model, LAYER_INPUTS, precision="bf16", **kwargs)
    assert_f32_state(bf16)
    names = {s.name for s in mir.arguments(bf16)}
    for layer in ("embedding/table", "ln1/scale", "attention/w_q", "feed_forward/wi/kernel", "logits/kernel"):
        assert f"params/{layer}" in names
    assert_trains_like_f32(bf16, compile_function(every_layer_model, LAYER_INPUTS, **kwargs))


def test_fsdp_bf16_keeps_state_split_and_f32():
    """bf16 under FSDP: the f32 masters and their slots are stored split over
    the mesh (gathered where the forward pass reads them), and the step
    trains like the f32 one (docs/training.md, "FSDP / ZeRO as a layout")."""
    kwargs = dict(mesh="rows:2,cols:4", layout="batch:rows,length:cols", param_layout="d_model:rows+cols",
                  mode="explicit", train=True, optimizer=OPTIMIZERS["adamw_clip"])
    bf16 = compile_function(every_layer_model, LAYER_INPUTS, precision="bf16", **kwargs)
    assert_f32_state(bf16)
    f32 = compile_function(every_layer_model, LAYER_INPUTS, **kwargs)
    program = str(bf16)
    assert "stablehlo.all_gather" in program
    # every gradient the f32 step reduce-scatters into its master, the bf16 step
    # does too: the vectors' (bf16 sums accumulated in f32) and the matrices'
    # (a bf16 reduce_scatter, then the cast of the block)
    assert program.count('"stablehlo.reduce_scatter"') == str(f32).count('"stablehlo.reduce_scatter"') == 11
    assert 'tensor<16x2xf32> {mtfc.dims = ["vocab", "d_model"], mtfc.init = "constant:0", ' \
           'mtfc.name = "opt/params/embedding/table/m"' in program
    assert_trains_like_f32(bf16, f32)


# ----------------------------------------------------------------- the dtype rules


def _trace(fn, inputs, precision="f32"):
    from mtfc.frontend.train import trace_train_step

    return trace_train_step(mtf.Entry(fn, inputs, name="m"), "sgd:lr=0.1", precision)


def test_defaults_follow_the_compute_dtype_and_floats_promote():
    seen = {}

    def model(x, ids):
        w = mtf.get_variable("w", [x.shape[1]])
        hot = mtf.one_hot(ids, VOCAB)
        seen.update(w=w.dtype, hot=hot.dtype, zeros=mtf.zeros([VOCAB]).dtype, const=mtf.constant(2.0).dtype,
                    where=mtf.where(ids > 3, 1.0, 0.0).dtype, explicit=mtf.get_variable("e", [VOCAB], "f32").dtype)
        mixed = mtf.cast(x, "f32") * w  # f32 * bf16 -> f32
        seen.update(mixed=mixed.dtype, einsum=mtf.einsum([hot, mtf.cast(hot, "f32")], []).dtype)
        return {"loss": mtf.reduce_mean(mixed) + mtf.reduce_mean(hot)}

    inputs = {"x": mtf.Input([BATCH, D_MODEL]), "ids": mtf.Input([BATCH], "i32", mtf.init.randint(0, 16))}
    step = _trace(model, inputs, "bf16")
    assert seen == {"w": "bf16", "hot": "bf16", "zeros": "bf16", "const": "bf16", "where": "bf16",
                    "explicit": "f32", "mixed": "f32", "einsum": "f32"}
    stored = {v.name: v.tensor.dtype for v in step.traced.graph.variables}
    assert stored["params/w"] == stored["params/e"] == "f32"
    _trace(model, inputs, "f32")
    assert set(seen.values()) == {"f32"}


def test_promotion_has_gradients_of_each_operand_dtype():
    """f32 * bf16 promotes through a cast, so each operand's gradient keeps its dtype."""
    def model(x):
        xb = mtf.cast(x, "bf16")
        w = mtf.get_variable("w", [D_MODEL], "bf16")
        y = mtf.reduce_sum(x * w + xb * 2.0)
        g_x, g_xb = mtf.grad(y, [x, xb])
        assert (g_x.dtype, g_xb.dtype) == ("f32", "bf16")
        return {"y": y, "g_x": g_x}

    sharded, unsharded, data = run_model(model, {"x": mtf.Input([BATCH, D_MODEL])}, layout="batch:rows",
                                         mode="explicit")
    w = data["params/w"].astype(BF16).astype(np.float32)
    x = data["x"].astype(np.float64)
    # d/dx: w directly, and 2 through the cast xb
    assert_close(sharded["g_x"], np.broadcast_to(w + 2.0, (4, 16)))
    assert_close(unsharded["g_x"], np.broadcast_to(w + 2.0, (4, 16)))
    assert_close(sharded["y"], (x * w).sum() + 2 * data["x"].astype(BF16).astype(np.float64).sum(), "bf16")


def test_bf16_through_the_command_line(tmp_path):
    """`mtfc compile --train --precision bf16` then `mtfc run --check`: the
    check passes, finite losses and metrics in the log, f32 state and
    `mtfc.precision = "bf16"` in the written module."""
    import json

    from click.testing import CliRunner

    from mtfc.cli import main
    from mtfc.files.modules import read_module

    module, log = tmp_path / "mlp.mlir", tmp_path / "log.jsonl"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", os.path.join(EXAMPLES, "mlp.py"), "--train", "--precision", "bf16",
                                  "-o", str(module)])
    assert result.exit_code == 0, result.output
    written = read_module(str(module), mir.new_context())
    assert_f32_state(written)
    assert str(written.operation.attributes["mtfc.precision"]) == '"bf16"'
    # --check judges the f32 results a bf16 step computes at bf16's tolerance
    result = runner.invoke(main, ["run", str(module), "--steps", "2", "--log", str(log), "--check"])
    assert result.exit_code == 0, result.output
    assert "check: passed" in result.output and "2e-02" in result.output
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 2
    for r in records:
        assert math.isfinite(r["loss"]) and all(math.isfinite(v) for v in r["metrics"].values()), r
