"""Eager runs (`mtf.eager()`, `mtfc eval`): every op evaluated as it is
recorded gives the compiled unsharded run's numbers, for every example
(forward and one train step) and against a NumPy reference; values are
visible while the model runs; mistakes end as located one-liners."""

from __future__ import annotations

import os
import re
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

import mtfc as mtf
from mtfc import ir as mir
from mtfc.cli import main
from mtfc.compiler import compile_entry, compile_function
from mtfc.errors import MtfcError
from mtfc.frontend.eager import eval_entry
from mtfc.frontend.model import load_model_file
from mtfc.runtime.check import compare
from mtfc.runtime.check_step import judge_step
from mtfc.runtime.execute import Program
from mtfc.runtime.synthetic import synthesize

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
EXAMPLE_FILES = sorted(f for f in os.listdir(EXAMPLES) if f.endswith(".py"))


def _compiled_unsharded(path: str, seed: int, train: bool):
    """The compiled global module run unsharded, fed as `mtfc run` feeds it
    (a train step: the initial state and the batch of step 0)."""
    module = compile_entry(load_model_file(path), mode="none", path=path, train=train)
    program = Program(module, unsharded=True)
    data = {s.name: synthesize(s, seed, 0 if train and s.role == "input" else None) for s in program.arguments}
    return module, program, program.run(data).outputs


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_eager_forward_matches_the_compiled_unsharded_run(example):
    path = os.path.join(EXAMPLES, example)
    eager = eval_entry(load_model_file(path), seed=2, path=path)
    _, program, reference = _compiled_unsharded(path, 2, train=False)
    assert list(eager.outputs) == [s.name for s in program.results]
    for sig in program.results:
        assert eager.outputs[sig.name].shape == tuple(sig.shape)
        c = compare(sig.name, sig.dtype, eager.outputs[sig.name], reference[sig.name])
        assert c.ok, (example, sig.name, c.error)
    assert eager.evaluator.ops_evaluated > 0


@pytest.mark.parametrize("example", EXAMPLE_FILES)
def test_eager_train_step_matches_the_compiled_unsharded_step(example):
    """One train step, judged as `mtfc run --check` judges a step (`judge_step`:
    Adam's ~sign(g) first update makes the new parameters reported, their
    gradients gated through the optimizer state)."""
    path = os.path.join(EXAMPLES, example)
    eager = eval_entry(load_model_file(path), seed=1, path=path, train=True)
    module, program, reference = _compiled_unsharded(path, 1, train=True)
    assert list(eager.outputs) == [s.name for s in program.results]
    check = judge_step(program.results, eager.outputs, reference, optimizer=mir.optimizer_spec(module),
                       precision=mir.compute_precision(module))
    assert check.ok, [(j.comparison.name, j.comparison.error) for j in check.failures()]
    gated = [j for j in check.results if j.gated]
    assert any(j.role == "optimizer_state" for j in gated) and any(j.role == "loss" for j in gated)


def test_eager_matches_a_numpy_reference():
    batch, d, h = mtf.Dim("batch", 6), mtf.Dim("d", 5), mtf.Dim("h", 4)
    with mtf.eager(seed=7) as session:
        x = session.input("x", [batch, d])
        w = mtf.get_variable("w", [d, h], initializer=mtf.init.normal(0.5))
        y = mtf.tanh(mtf.einsum([x, w], [batch, h]))
        s = mtf.reduce_sum(mtf.softmax(y, h) * y, h)
    xs = synthesize(mir.Signature(0, "x", "input", ["batch", "d"], (6, 5), "f32", "normal:1.0"), 7)
    ws = synthesize(mir.Signature(0, "params/w", "parameter", ["d", "h"], (5, 4), "f32", "normal:0.5"), 7)
    np.testing.assert_array_equal(x.numpy(), xs.astype(np.float32))
    np.testing.assert_array_equal(w.numpy(), ws.astype(np.float32))
    ry = np.tanh(xs @ ws)
    e = np.exp(ry - ry.max(-1, keepdims=True))
    rs = (e / e.sum(-1, keepdims=True) * ry).sum(-1)
    np.testing.assert_allclose(y.numpy(), ry, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s.numpy(), rs, rtol=1e-5, atol=1e-6)
    assert s.numpy().shape == (6,) and s.numpy().dtype == np.float32


def test_inputs_given_by_name_replace_synthesized_ones():
    batch, d = mtf.Dim("batch", 3), mtf.Dim("d", 2)
    given = np.arange(6, dtype=np.float32).reshape(3, 2)
    with mtf.eager(inputs={"x": given}) as session:
        y = mtf.reduce_sum(session.input("x", [batch, d]) * 2.0, d)
    np.testing.assert_array_equal(y.numpy(), (given * 2).sum(1))


def _write(tmp_path, body: str) -> str:
    path = tmp_path / "model.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


PRINTING = """\
    import mtfc as mtf
    n = mtf.Dim("n", 4)

    @mtf.entry(inputs={"x": mtf.Input([n])})
    def model(x):
        c = mtf.cast(mtf.iota([n], n, dtype="i32"), "f32") * 10.0
        print("VALUE", c)
        print("NUMPY", c.numpy().tolist())
        return {"y": x + c}
    """


def test_print_inside_the_model_shows_numbers(tmp_path, capsys):
    path = _write(tmp_path, PRINTING)
    eager = eval_entry(load_model_file(path), seed=0, path=path)
    out = capsys.readouterr().out
    assert "VALUE Tensor(" in out and "[n:4]" in out and "[ 0. 10. 20. 30.]" in out
    assert "NUMPY [0.0, 10.0, 20.0, 30.0]" in out
    x = synthesize(mir.Signature(0, "x", "input", ["n"], (4,), "f32", "normal:1.0"), 0)
    np.testing.assert_allclose(eager.outputs["y"], x + np.array([0, 10, 20, 30]), rtol=1e-6)


def test_numpy_outside_eager_is_a_located_error():
    n = mtf.Dim("n", 3)

    def model(x):
        x.numpy()  # the line the error names
        return {"y": x}

    line = model.__code__.co_firstlineno + 1
    with pytest.raises(MtfcError) as e:
        compile_function(model, {"x": mtf.Input([n])}, mode="none")
    assert "has no value" in str(e.value) and "mtf.eager()" in str(e.value)
    assert e.value.where == f"test_eager.py:{line}"
    assert "\n" not in str(e.value)


def test_compiled_run_prints_traced_tensors_only(tmp_path):
    """Outside eager (mtfc compile), print shows the tensor without numbers."""
    path = _write(tmp_path, PRINTING.replace('        print("NUMPY", c.numpy().tolist())\n', ""))
    result = CliRunner().invoke(main, ["compile", path, "--mode", "none", "-o", str(tmp_path / "m.mlir")])
    assert result.exit_code == 0, result.output
    assert "VALUE Tensor(" in result.output and "10." not in result.output


def test_loop_body_tensors_have_no_values_and_the_loop_has(tmp_path):
    layers, d = mtf.Dim("layers", 3), mtf.Dim("d", 4)
    seen = []
    with mtf.eager(seed=0) as session:
        x = session.input("x", [d])

        def body(carry, _):
            seen.append(repr(carry))
            with pytest.raises(MtfcError, match="inside a loop body"):
                carry.numpy()
            return carry * 2.0 + 1.0, None

        out, _ = mtf.scan(body, x, dim=layers)
    assert seen and "\n" not in seen[0]  # a traced tensor: no numbers
    xs = synthesize(mir.Signature(0, "x", "input", ["d"], (4,), "f32", "normal:1.0"), 0)
    np.testing.assert_allclose(out.numpy(), ((xs * 2 + 1) * 2 + 1) * 2 + 1, rtol=1e-6)


# ----------------------------------------------------------------- the command


def _checksums(output: str) -> list[str]:
    return re.findall(r"^(\S+)\s+\[.*?\]\s+\S+\s+\S+\s+(sum=.*)$", output, flags=re.M)


def test_mtfc_eval_prints_mtfc_runs_checksums_and_writes_outputs(tmp_path):
    path = os.path.join(EXAMPLES, "mlp.py")
    runner = CliRunner()
    module = tmp_path / "m.mlir"
    assert runner.invoke(main, ["compile", path, "--mode", "none", "-o", str(module)]).exit_code == 0
    ran = runner.invoke(main, ["run", str(module), "--seed", "5", "--repeat", "1", "--outputs", str(tmp_path / "r.npz")])
    assert ran.exit_code == 0, ran.output
    ev = runner.invoke(main, ["eval", path, "--seed", "5", "--outputs", str(tmp_path / "e.npz")])
    assert ev.exit_code == 0, ev.output
    assert "eager (forward, op by op)" in ev.output
    assert _checksums(ev.output) == _checksums(ran.output) and len(_checksums(ev.output)) == 4
    with np.load(tmp_path / "e.npz") as e, np.load(tmp_path / "r.npz") as r:
        assert sorted(e.files) == sorted(r.files)
        for name in r.files:
            assert compare(name, "f32", e[name], r[name]).ok, name


def test_mtfc_eval_train_is_mtfc_runs_first_step(tmp_path):
    path = os.path.join(EXAMPLES, "mlp.py")
    runner = CliRunner()
    module = tmp_path / "t.mlir"
    assert runner.invoke(main, ["compile", path, "--train", "--mode", "none", "-o", str(module)]).exit_code == 0
    ran = runner.invoke(main, ["run", str(module), "--steps", "1", "--seed", "4"])
    assert ran.exit_code == 0, ran.output
    ev = runner.invoke(main, ["eval", path, "--train", "--seed", "4"])
    assert ev.exit_code == 0, ev.output
    step_loss = re.search(r"step 1 \(1/1\)\s+loss (\S+)", ran.output).group(1)
    eval_loss = re.search(r"^loss\s+\[\]\s+scalar\s+f32\s+sum=(\S+)", ev.output, flags=re.M).group(1)
    assert float(eval_loss) == pytest.approx(float(step_loss), rel=1e-5)


def test_mtfc_eval_inputs_file(tmp_path):
    path = os.path.join(EXAMPLES, "mlp.py")
    x = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    runner = CliRunner()
    ev = runner.invoke(main, ["eval", path, "--inputs", str(tmp_path / "in.npz"), "--outputs", str(tmp_path / "e.npz")])
    assert ev.exit_code == 0, ev.output
    module = compile_entry(load_model_file(path), mode="none", path=path)
    program = Program(module, unsharded=True)
    data = program.synthesize_inputs(0)
    data["x"] = x
    reference = program.run(data).outputs
    with np.load(tmp_path / "e.npz") as e:
        for sig in program.results:
            assert compare(sig.name, sig.dtype, e[sig.name], reference[sig.name]).ok, sig.name


@pytest.mark.parametrize("arrays,message", [
    ({"zz": np.zeros(3)}, "in.npz: no argument named 'zz'"),
    ({"labels": np.full(64, 99, np.int32)}, "in.npz: array 'labels': value 99 at position 0 is outside [0, 16)"),
    ({"x": np.zeros((2, 2), np.float32)}, "input 'x' has shape (2, 2), the model expects (64, 32)"),
])
def test_mtfc_eval_bad_inputs_is_one_line(tmp_path, arrays, message):
    np.savez(tmp_path / "in.npz", **arrays)
    result = CliRunner().invoke(main, ["eval", os.path.join(EXAMPLES, "mlp.py"), "--inputs", str(tmp_path / "in.npz"),
                                       "--outputs", str(tmp_path / "e.npz")])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.output
    assert not (tmp_path / "e.npz").exists()


def test_mtfc_eval_model_error_names_the_model_line(tmp_path):
    path = _write(tmp_path, """\
        import mtfc as mtf
        n, m = mtf.Dim("n", 4), mtf.Dim("m", 3)

        @mtf.entry(inputs={"x": mtf.Input([n])})
        def model(x):
            y = x * 2.0
            z = {}["missing"]
            return {"y": y}
        """)
    result = CliRunner().invoke(main, ["eval", path])
    assert result.exit_code == 1
    assert result.output.strip() == "error: model.py:7: KeyError: 'missing'"


def test_mtfc_eval_options_need_train(tmp_path):
    result = CliRunner().invoke(main, ["eval", os.path.join(EXAMPLES, "mlp.py"), "--optimizer", "sgd:lr=0.1"])
    assert result.exit_code == 1 and "add --train" in result.output


@pytest.mark.parametrize("optimizer,precision", [("sgd:lr=0.1", "f32"), ("sgd:lr=0.1", "bf16")])
def test_eager_train_step_with_gated_parameters(optimizer, precision):
    """SGD's update is well conditioned: every new parameter is gated too
    (f32; bf16 at bf16's tolerance)."""
    path = os.path.join(EXAMPLES, "mlp.py")
    entry = load_model_file(path)
    eager = eval_entry(entry, seed=3, path=path, train=True, optimizer=optimizer, precision=precision)
    module = compile_entry(entry, mode="none", path=path, train=True, optimizer=optimizer, precision=precision)
    program = Program(module, unsharded=True)
    data = {s.name: synthesize(s, 3, 0 if s.role == "input" else None) for s in program.arguments}
    reference = program.run(data).outputs
    check = judge_step(program.results, eager.outputs, reference, optimizer=mir.optimizer_spec(module),
                       precision=precision)
    assert check.ok, [(j.comparison.name, j.comparison.error) for j in check.failures()]
    assert all(j.gated for j in check.results if j.role == "parameter")


def test_mtfc_eval_of_a_module_says_to_run_it(tmp_path):
    module = tmp_path / "m.mlir"
    module.write_text("module {}\n")
    result = CliRunner().invoke(main, ["eval", str(module)])
    assert result.exit_code == 1 and "mtfc run" in result.output and "is a module" in result.output
