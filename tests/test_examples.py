"""The examples compile through the CLI, pass `mtfc run --check` under data-,
model- and mixed-parallel layouts, and match plain-JAX references written here."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import assert_close
from mtfc.cli import main
from mtfc.compiler import compile_file
from mtfc.runtime.execute import Program

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")

LAYOUTS = {
    "mlp.py": {
        "data": "batch:rows+cols",
        "model": "d_hidden:cols",
        "both": "batch:rows,d_hidden:cols",
    },
    "transformer.py": {
        "data": "batch:rows+cols",
        "model": "heads:cols,d_ff:cols,vocab:rows",
        "both": "batch:rows,heads:cols,d_ff:cols",
    },
    "moe.py": {
        "data": "batch:rows+cols",
        "expert_tensor": "batch:rows,experts:rows,d_ff:cols,expert_ff:cols",
        "data_expert": "batch:rows+cols,batch_unsplit:rows,experts:cols",
    },
    "unet.py": {
        "spatial": "h:rows,w:cols",
        "data": "batch:rows+cols",
        "spatial_features": "h:rows,f1:cols,f2:cols",
    },
}


MODES = ("gspmd", "explicit", "shardy")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("example,kind", [(e, k) for e, ls in LAYOUTS.items() for k in ls])
def test_example_compiles_and_passes_check(example, kind, mode, tmp_path):
    out = tmp_path / "model.mlir"
    runner = CliRunner()
    path = os.path.join(EXAMPLES, example)
    result = runner.invoke(main, ["compile", path, "-o", str(out), "--layout", LAYOUTS[example][kind], "--mode", mode])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["run", str(out), "--check", "--repeat", "1"])
    assert result.exit_code == 0, result.output
    assert "check: passed" in result.output


def _gelu(x):
    return 0.5 * x * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _layer_norm(x, scale, bias):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + 1e-6) * scale + bias


def mlp_reference(p):
    h = _gelu(p["x"] @ p["params/fc1/kernel"] + p["params/fc1/bias"])
    y = h @ p["params/fc2/kernel"] + p["params/fc2/bias"]
    return {"y": y, "probs": jax.nn.softmax(y, axis=-1)}


def transformer_reference(p, n_layers=2):
    x = p["params/embedding/table"][p["tokens"]]  # [b, l, d]
    length = x.shape[1]
    causal = np.tril(np.ones((length, length), bool))
    for i in range(n_layers):
        q = f"params/block{i}/"
        h = _layer_norm(x, p[q + "ln_attention/scale"], p[q + "ln_attention/bias"])
        qh = jnp.einsum("bld,dhk->bhlk", h, p[q + "attention/w_q"])
        kh = jnp.einsum("bmd,dhk->bhmk", h, p[q + "attention/w_k"])
        vh = jnp.einsum("bmd,dhk->bhmk", h, p[q + "attention/w_v"])
        logits = jnp.einsum("bhlk,bhmk->bhlm", qh, kh) / np.sqrt(qh.shape[-1])
        logits = jnp.where(causal, logits, -1e9)
        o = jnp.einsum("bhlm,bhmk->blhk", jax.nn.softmax(logits, -1), vh)
        x = x + jnp.einsum("blhk,hkd->bld", o, p[q + "attention/w_o"])
        h = _layer_norm(x, p[q + "ln_feed_forward/scale"], p[q + "ln_feed_forward/bias"])
        h = _gelu(h @ p[q + "feed_forward/wi/kernel"] + p[q + "feed_forward/wi/bias"])
        x = x + h @ p[q + "feed_forward/wo/kernel"] + p[q + "feed_forward/wo/bias"]
    x = _layer_norm(x, p["params/ln_final/scale"], p["params/ln_final/bias"])
    logits = x @ p["params/logits/kernel"]
    target = jnp.take_along_axis(logits, p["targets"][..., None], -1)[..., 0]
    loss = (jax.nn.logsumexp(logits, -1) - target).mean()
    return {"logits": logits, "loss": loss}


@pytest.mark.parametrize("example,reference", [("mlp.py", mlp_reference), ("transformer.py", transformer_reference)])
@pytest.mark.parametrize("kind", ["data", "model", "both"])
@pytest.mark.parametrize("mode", MODES)
def test_example_matches_plain_jax(example, reference, kind, mode):
    module = compile_file(os.path.join(EXAMPLES, example), layout=LAYOUTS[example][kind], mode=mode)
    program = Program(module)
    data = program.synthesize_inputs(seed=7)
    outputs = program.run(data).outputs
    with jax.default_matmul_precision("highest"):
        expected = reference({k: jnp.asarray(v) for k, v in data.items()})
    for name, value in expected.items():
        assert_close(outputs[name], np.asarray(value))


SCANNED_LAYOUTS = {
    "data": ["--layout", "batch:rows+cols"],
    "tensor": ["--layout", "batch:rows,heads:cols,d_ff:cols,vocab:cols"],
    "fsdp": ["--layout", "batch:rows+cols", "--param-layout", "d_model:rows+cols"],
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", list(SCANNED_LAYOUTS))
@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
def test_scanned_transformer_compiles_and_passes_check(kind, mode, train, tmp_path):
    """examples/transformer.py with -D SCAN=True: one loop over 4 layers."""
    out = tmp_path / "model.mlir"
    runner = CliRunner()
    args = ["compile", os.path.join(EXAMPLES, "transformer.py"), "-D", "SCAN=True", "-D", "N_LAYERS=4", "-o", str(out),
            "--mode", mode, *SCANNED_LAYOUTS[kind]]
    # SGD: --check gates the updated parameters too (an Adam-family step's are only reported, docs/runtime.md)
    args += ["--train", "--optimizer", "sgd:lr=0.1,momentum=0.9"] if train else []
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    program = out.read_text().split("module @mtfc.reference")[0]  # not the global reference copy
    assert "mtfc.trip_count = 4" in program and program.count("stablehlo.while") == (2 if train else 1)
    result = runner.invoke(main, ["run", str(out), "--check", *(["--steps", "1"] if train else ["--repeat", "1"])])
    assert result.exit_code == 0, result.output
    assert "check: passed" in result.output
