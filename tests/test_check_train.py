"""`mtfc run --check` of a train-step module judges each result by its role
(mtfc/runtime/check_step.py): the loss, metrics and optimizer state are
gated; the new parameters of an Adam-family step are reported, not gated;
SGD's are gated.  The output is one summary row per role.

The judgment is checked on a NumPy Adam / SGD step (independent of mtfc),
then through the CLI: correct AdamW steps of examples/transformer.py under an
FSDP and a tensor-parallel layout pass (the parameter-level check failed the
tensor-parallel one), and a partitioned module whose gradient all_reduce
computes a max instead of a sum fails, naming the role and the output."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from click.testing import CliRunner

from mtfc import ir as mir
from mtfc.cli import main
from mtfc.runtime.check_step import judge_step, parameter_gating, report_lines

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
TRANSFORMER = os.path.join(EXAMPLES, "transformer.py")
FSDP = ["--layout", "batch:rows+cols", "--param-layout", "d_model:rows+cols"]
TENSOR = ["--layout", "batch:rows,heads:cols,d_ff:cols"]  # the example's default: Megatron over cols
ADAMW = "adamw:lr=3e-3"

# -- the judgment, on NumPy steps -----------------------------------------------------------


def _sigs(specs):
    return [mir.Signature(i, name, role, [f"d{k}" for k in range(len(shape))], shape, dtype)
            for i, (name, role, shape, dtype) in enumerate(specs)]


def _adam_step(p, g, lr=3e-3, b1=0.9, b2=0.999, eps=1e-8):
    """The first Adam step from zero slots, in float32, written here from the paper."""
    m = (1 - b1) * g
    v = (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1), v / (1 - b2)
    return {"params/w": (p - lr * m_hat / (np.sqrt(v_hat) + eps)).astype(np.float32),
            "opt/params/w/m": m.astype(np.float32), "opt/params/w/v": v.astype(np.float32),
            "loss": np.float32(np.sum(g)), "grad_norm": np.float32(np.sqrt(np.sum(g * g))),
            "opt/step": np.int32(1)}


ADAM_SIGS = _sigs([("loss", "loss", (), "f32"), ("grad_norm", "metric", (), "f32"),
                   ("params/w", "parameter", (8, 16), "f32"), ("opt/params/w/m", "optimizer_state", (8, 16), "f32"),
                   ("opt/params/w/v", "optimizer_state", (8, 16), "f32"), ("opt/step", "optimizer_state", (), "i32")])


def _gradients():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((8, 16)).astype(np.float32)
    g = rng.standard_normal((8, 16)).astype(np.float32)
    g[3, 5] = 0.0  # a gradient element that cancels exactly in one summation order...
    noisy = g.copy()
    noisy[3, 5] = 3e-8  # ... and to rounding noise (below f32's 1.2e-7 at |g| ~ 1) in another
    return p, g, noisy


def test_rounding_noise_moves_an_adam_parameter_by_the_learning_rate_and_passes():
    p, g, noisy = _gradients()
    want, got = _adam_step(p, g), _adam_step(p, noisy)
    moved = abs(got["params/w"][3, 5] - want["params/w"][3, 5])
    assert moved > 1e-3  # 0.75 lr: 3e-8 / (3e-8 + 1e-8)
    check = judge_step(ADAM_SIGS, got, want, optimizer="adamw:lr=0.003")
    judged = check.by_name()
    assert not judged["params/w"].gated and judged["params/w"].comparison.error > 1e-4  # reported
    assert all(j.gated and j.comparison.ok for n, j in judged.items() if n != "params/w")
    assert check.ok and "reported, not gated" in check.note and "adamw" in check.note


def test_a_wrong_gradient_fails_adam_through_its_slots():
    p, g, _ = _gradients()
    wrong = g.copy()
    wrong[1, 2] *= 1.01  # a 1% error in one gradient element
    check = judge_step(ADAM_SIGS, _adam_step(p, wrong), _adam_step(p, g), optimizer="adamw:lr=0.003")
    failed = {j.comparison.name for j in check.failures()}
    assert not check.ok and {"opt/params/w/m", "opt/params/w/v"} <= failed and "params/w" not in failed
    lines = report_lines(check)
    assert any(line.startswith("MISMATCH optimizer_state opt/params/w/m:") for line in lines), lines
    row = next(line for line in lines[0].splitlines() if line.startswith("optimizer_state"))
    assert row.split()[-1] == "FAIL" and "opt/params/w/" in row


SGD_SIGS = _sigs([("loss", "loss", (), "f32"), ("params/w", "parameter", (8, 16), "f32")])


@pytest.mark.parametrize("spec", ["sgd:lr=0.1,momentum=0", None])
def test_sgd_parameters_are_gated(spec):
    """SGD without momentum has no slots: ``p - lr * g`` is the only place the
    gradient shows, and it is well conditioned -- gated, by the optimizer's
    name or (no name recorded) because the parameter has no state."""
    p, g, noisy = _gradients()
    step = lambda grad: {"params/w": (p - 0.1 * grad).astype(np.float32), "loss": np.float32(1.0)}  # noqa: E731
    assert judge_step(SGD_SIGS, step(noisy), step(g), optimizer=spec).ok  # rounding noise: 3e-9
    wrong = g.copy()
    wrong[1, 2] *= 1.01
    check = judge_step(SGD_SIGS, step(wrong), step(g), optimizer=spec)
    assert not check.ok and [j.comparison.name for j in check.failures()] == ["params/w"]
    assert check.note is None


def test_parameter_gating_rule():
    states = {"opt/params/a/m", "opt/params/a/v", "opt/step"}
    assert not parameter_gating("adamw:lr=1e-3", "params/a", states)
    assert not parameter_gating("adafactor", "params/a", states)
    assert parameter_gating("sgd:lr=0.1,momentum=0.9", "params/a", {"opt/params/a/momentum"})  # well conditioned
    # no optimizer recorded, or one the runtime does not know: by the module's state
    assert not parameter_gating(None, "params/a", states)
    assert not parameter_gating("lion:lr=1e-4", "params/a", states)
    assert parameter_gating(None, "params/b", states)
    assert parameter_gating("lion:lr=1e-4", "params/ab", states)  # opt/params/a/... is not params/ab's


# -- through the CLI ------------------------------------------------------------------------


def _compile(tmp_path, name, *args):
    out = tmp_path / f"{name}.mlir"
    result = CliRunner().invoke(main, ["compile", TRANSFORMER, "--train", "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


def _check(module):
    return CliRunner().invoke(main, ["run", str(module), "--check", "--steps", "0"])


def _summary(output: str) -> dict[str, list[str]]:
    """The summary table's rows by role."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("role "))
    rows = {}
    for line in lines[start + 2:]:
        if not line or line.startswith(("parameter:", "MISMATCH", "check:")):
            break
        cells = line.split()
        assert cells[0] not in rows, f"two rows for role {cells[0]}:\n{output}"
        rows[cells[0]] = cells
    return rows


@pytest.mark.parametrize("layout", [FSDP, TENSOR], ids=["fsdp", "tensor"])
def test_correct_adamw_step_passes(layout, tmp_path):
    module = _compile(tmp_path, "adamw", "--optimizer", ADAMW, *layout)
    result = _check(module)
    assert result.exit_code == 0, result.output
    assert "check: passed" in result.output
    rows = _summary(result.output)
    assert set(rows) == {"loss", "metric", "optimizer_state", "parameter"}, result.output
    assert rows["optimizer_state"][1] == "57" and rows["parameter"][1] == "28"  # 28 params: m, v each + opt/step
    assert [rows[r][-1] for r in ("loss", "metric", "optimizer_state")] == ["ok"] * 3
    assert rows["parameter"][-1] == "reported"
    assert "gated through the optimizer state" in result.output
    assert not re.search(r"^opt/params/", result.output, re.M)  # no row per slot


def _break_gradient_all_reduce(module_file):
    """Make the per-device program's data-parallel gradient all_reduce (over
    `rows`: groups of devices 4 apart, the one with most operands) compute a
    max instead of a sum; the nested reference is left as it was."""
    text = module_file.read_text()
    program, sep, reference = text.partition("module @mtfc.reference")
    ops = list(re.finditer(r'"stablehlo\.all_reduce"\((?P<operands>[^)]*)\) <\{replica_groups = dense<'
                           r'\[\[0, 4\], \[1, 5\], \[2, 6\], \[3, 7\]\]>.*?stablehlo\.return', program, re.S))
    assert ops, "no all_reduce over rows in the per-device program"
    op = max(ops, key=lambda m: m.group("operands").count("%"))
    assert op.group("operands").count("%") > 10  # the fused weight gradients
    body = op.group(0)
    assert body.count("stablehlo.add ") == 1
    broken = program[:op.start()] + body.replace("stablehlo.add ", "stablehlo.maximum ") + program[op.end():]
    module_file.write_text(broken + sep + reference)


def test_broken_collective_fails_naming_role_and_output(tmp_path):
    module = _compile(tmp_path, "broken", "--optimizer", ADAMW, *TENSOR)
    _break_gradient_all_reduce(module)
    result = _check(module)
    assert result.exit_code != 0, result.output
    assert "check: FAILED" in result.output
    rows = _summary(result.output)
    assert rows["optimizer_state"][-1] == "FAIL" and rows["loss"][-1] == "ok", result.output
    assert re.search(r"^MISMATCH optimizer_state opt/params/\S+/[mv]: max rel err", result.output, re.M), result.output


def test_sgd_step_gates_parameters_and_a_fault_fails_on_them(tmp_path):
    """Plain SGD (no slots): the new parameters are gated, and they are what
    shows a broken gradient collective."""
    module = _compile(tmp_path, "sgd", "--optimizer", "sgd:lr=0.1,momentum=0", *TENSOR)
    result = _check(module)
    assert result.exit_code == 0, result.output
    rows = _summary(result.output)
    assert rows["parameter"][-1] == "ok" and rows["optimizer_state"][1] == "1", result.output  # opt/step only
    assert "reported" not in result.output
    _break_gradient_all_reduce(module)
    result = _check(module)
    assert result.exit_code != 0 and "check: FAILED" in result.output, result.output
    broken = _summary(result.output)
    assert broken["parameter"][-1] == "FAIL" and broken["loss"][-1] == "ok", result.output
    assert re.search(r"^MISMATCH parameter params/\S+: max rel err", result.output, re.M), result.output
