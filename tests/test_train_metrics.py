"""A train step's model outputs besides the loss: scalars become metrics
(role `metric` in the module, printed by `mtfc run`'s progress and summary,
written to `--log`), non-scalars are reported as dropped, once, at compile
time (docs/training.md, "Metrics")."""

from __future__ import annotations

import json
import os

import numpy as np
from click.testing import CliRunner

from mtfc import ir as mir
from mtfc.cli import main
from mtfc.files.modules import read_module
from mtfc.runtime.train_step import TrainStep

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MLP = os.path.join(EXAMPLES, "mlp.py")  # outputs y, probs (non-scalar), loss, accuracy (scalar)


def gelu(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def numpy_accuracy(p, x, labels):
    """The MLP's accuracy written out in NumPy: the fraction of examples whose
    label's logit is the largest."""
    h = gelu(x @ p["params/fc1/kernel"] + p["params/fc1/bias"])
    y = h @ p["params/fc2/kernel"] + p["params/fc2/bias"]
    return float(np.mean(np.argmax(y, axis=1) == labels))


def test_scalar_outputs_become_metrics_and_the_others_are_reported_dropped(tmp_path):
    module_path, log = tmp_path / "mlp.mlir", tmp_path / "log.jsonl"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", MLP, "--train", "--optimizer", "sgd:lr=0.5,momentum=0.9",
                                  "-o", str(module_path)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, result.stderr
    assert "y [batch:64, d_out:16]" in warnings[0] and "probs [batch:64, d_out:16]" in warnings[0]
    assert "accuracy" not in warnings[0]

    module = read_module(str(module_path), mir.new_context())
    roles = {r.name: (r.role, r.dtype, r.shape) for r in mir.results(module)}
    assert roles["accuracy"] == ("metric", "f32", ())
    assert roles["loss"] == ("loss", "f32", ())
    assert "y" not in roles and "probs" not in roles

    # a batch from a file, so the first step's accuracy can be recomputed
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 64, 32)).astype(np.float32)
    labels = rng.integers(0, 16, (3, 64)).astype(np.int32)
    np.savez(tmp_path / "data.npz", x=x, labels=labels)
    result = runner.invoke(main, ["run", str(module_path), "--steps", "3", "--data", str(tmp_path / "data.npz"),
                                  "--log", str(log), "--seed", "4"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in log.read_text().splitlines()]
    accuracies = [r["metrics"]["accuracy"] for r in records]
    assert len(accuracies) == 3 and all(0.0 <= a <= 1.0 for a in accuracies)
    assert all(a * 64 == round(a * 64) for a in accuracies)  # a count of examples over 64

    # the first step's accuracy is the initial parameters' on the first batch
    train = TrainStep(module)
    initial = train.host_state(train.initial_state(4))
    assert accuracies[0] == numpy_accuracy({k: v.astype(np.float64) for k, v in initial.items()}, x[0], labels[0])
    progress = [line for line in result.stdout.splitlines() if line.startswith("step ")]
    for line, acc in zip(progress, accuracies):
        assert f"accuracy {acc:.4g}" in line, line
    summary = [line for line in result.stdout.splitlines() if line.startswith("metrics: ")]
    assert len(summary) == 1 and f"accuracy {accuracies[0]:.4g} -> {accuracies[-1]:.4g}" in summary[0], summary


def test_metrics_keep_their_order_after_the_optimizers():
    """Model metrics follow the optimizer's (grad_norm, learning_rate); a
    boolean scalar becomes an i32 metric."""
    import mtfc as mtf
    from mtfc.compiler import compile_function

    B, D = mtf.Dim("batch", 8), mtf.Dim("d", 4)

    def model(x):
        y = mtf.reduce_sum(x * mtf.get_variable("w", [D]))
        return {"loss": y * y, "positive": y > 0.0, "y": y}

    module = compile_function(model, {"x": mtf.Input([B, D])}, train=True, optimizer="sgd:lr=0.1")
    metrics = [(r.name, r.dtype) for r in mir.results(module) if r.role == "metric"]
    assert metrics == [("grad_norm", "f32"), ("learning_rate", "f32"), ("positive", "i32"), ("y", "f32")]
