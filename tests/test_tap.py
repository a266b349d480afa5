"""Taps (mtfc/frontend/tap.py): `mtf.tap(x, name)` and `mtfc compile --tap
PATTERN` make intermediate values results (role ``tap``, the value's dims).

A tapped value must be the compiled run's number: it is compared with a
NumPy forward pass written here from the same inputs and parameters, and
with the unsharded run, in the explicit, gspmd and shardy modes, in a
forward module and in a train step (whose new parameters must equal the
untapped step's, and a NumPy SGD step's).  Then the CLI (--tap on compile,
the run's table, --outputs with ``mtfc.dims``, --check's ``tap`` row) and
the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import mtfc as mtf
from mtfc import ir as mir
from mtfc.cli import main
from mtfc.compiler import compile_function
from mtfc.errors import MtfcError
from mtfc.runtime.check_step import judge_step
from mtfc.runtime.execute import Program

from conftest import assert_close, run_model, run_train_steps

batch, d_in, d_h, d_out = mtf.Dim("batch", 16), mtf.Dim("d_in", 8), mtf.Dim("d_h", 32), mtf.Dim("d_out", 4)
INPUTS = {"x": mtf.Input([batch, d_in])}
MESH, LAYOUT = "rows:2,cols:4", "batch:rows,d_h:cols"
MODES = ("explicit", "gspmd", "shardy")
SGD = "sgd:lr=0.1"


def mlp(x, tapped=True):
    with mtf.scope("block"):
        z = mtf.layers.dense(x, d_h, name="fc1")
        h = mtf.tanh(z)
        if tapped:
            h = mtf.tap(h, "h")
    y = mtf.layers.dense(h, d_out, name="fc2")
    if tapped:
        mtf.tap(z, "z")  # (the root scope: tap/z)
    return {"loss": mtf.reduce_mean(mtf.square(y)), "y": y}


def untapped(x):
    return mlp(x, tapped=False)


def numpy_forward(data):
    """(z, h, y, loss) in float64 from the inputs and parameters `data`."""
    x = data["x"].astype(np.float64)
    w1, b1 = data["params/block/fc1/kernel"].astype(np.float64), data["params/block/fc1/bias"].astype(np.float64)
    w2, b2 = data["params/fc2/kernel"].astype(np.float64), data["params/fc2/bias"].astype(np.float64)
    z = x @ w1 + b1
    h = np.tanh(z)
    y = h @ w2 + b2
    return z, h, y, np.mean(y * y)


def numpy_sgd(data, lr=0.1):
    """The new parameters of one SGD step on the mean-square loss, by hand."""
    x = data["x"].astype(np.float64)
    z, h, y, _ = numpy_forward(data)
    dy = 2 * y / y.size
    w2 = data["params/fc2/kernel"].astype(np.float64)
    dz = (dy @ w2.T) * (1 - h * h)
    grads = {"params/fc2/kernel": h.T @ dy, "params/fc2/bias": dy.sum(0),
             "params/block/fc1/kernel": x.T @ dz, "params/block/fc1/bias": dz.sum(0)}
    return {k: data[k].astype(np.float64) - lr * g for k, g in grads.items()}


def results(module):
    return {s.name: s for s in mir.results(module)}


@pytest.mark.parametrize("mode", MODES)
def test_forward_taps_are_the_runs_values(mode):
    # --tap fc2/einsum: a contraction over d_h, split over cols (a partial sum on each device until reduced)
    module = compile_function(mlp, INPUTS, mesh=MESH, layout=LAYOUT, mode=mode, taps=("fc2/einsum",))
    sigs = results(module)
    assert [n for n in sigs] == ["loss", "y", "tap/block/h", "tap/z", "tap/fc2/einsum"]  # taps after the outputs
    assert (sigs["tap/block/h"].role, sigs["tap/block/h"].dims) == ("tap", ["batch", "d_h"])
    program = Program(module)
    data = program.synthesize_inputs(1)
    sharded = program.run(data, repeat=1).outputs
    unsharded = Program(module, unsharded=True).run(data, repeat=1).outputs
    z, h, y, loss = numpy_forward(data)
    matmul = h @ data["params/fc2/kernel"].astype(np.float64)
    for name, want in (("tap/block/h", h), ("tap/z", z), ("tap/fc2/einsum", matmul), ("y", y), ("loss", loss)):
        assert_close(sharded[name], want)
        assert_close(sharded[name], unsharded[name])
    assert np.abs(h).max() > 0.1  # (not a vacuous comparison of zeros)


@pytest.mark.parametrize("mode", MODES)
def test_train_step_taps_forward_values_and_leave_the_update_alone(mode):
    tapped = compile_function(mlp, INPUTS, mesh=MESH, layout=LAYOUT, mode=mode, train=True, optimizer=SGD,
                              taps=("grad/block/fc1/*",))  # and the gradient ops of fc1, by pattern
    plain = compile_function(untapped, INPUTS, mesh=MESH, layout=LAYOUT, mode=mode, train=True, optimizer=SGD)
    sigs = results(tapped)
    taps = [n for n, s in sigs.items() if s.role == "tap"]
    assert taps[:2] == ["tap/block/h", "tap/z"] and list(sigs)[-len(taps):] == taps  # last, mtf.taps first
    (kernel_grad,) = [n for n, s in sigs.items() if n.startswith("tap/grad/block/fc1/") and s.dims == ["d_in", "d_h"]]
    assert not any(n.startswith("tap/") for n in results(plain))
    initial, (out,) = run_train_steps(tapped, 1, seed=2)
    _, (ref,) = run_train_steps(tapped, 1, seed=2, unsharded=True)
    _, (base,) = run_train_steps(plain, 1, seed=2)
    z, h, _, loss = numpy_forward(initial)
    assert_close(out["tap/block/h"], h)
    assert_close(out["tap/z"], z)
    assert_close(out["tap/block/h"], ref["tap/block/h"])
    assert_close(out["loss"], loss)
    assert_close(out[kernel_grad], (initial["params/block/fc1/kernel"] - numpy_sgd(initial)["params/block/fc1/kernel"]) / 0.1)
    for name, want in numpy_sgd(initial).items():
        assert_close(out[name], want)
        assert_close(out[name], base[name])  # the tapped step updates as the untapped one
        assert_close(out[name] - initial[name], base[name] - initial[name])  # the update itself, not only p
    assert np.abs(out["params/block/fc1/kernel"] - initial["params/block/fc1/kernel"]).max() > 1e-4


def test_check_step_gates_taps_like_metrics():
    sig = mir.Signature(0, "tap/h", "tap", ["batch"], (4,), "f32")
    good = {"tap/h": np.arange(4, dtype=np.float32)}
    bad = {"tap/h": good["tap/h"] * 1.01}
    assert judge_step([sig], good, good, optimizer=SGD).ok
    check = judge_step([sig], bad, good, optimizer=SGD)
    assert not check.ok and check.by_name()["tap/h"].gated
    assert check.summary_rows()[1][0] == "tap" and check.summary_rows()[1][-1] == "FAIL"


# -- the command line -------------------------------------------------------------------------

MODEL = '''
import mtfc as mtf
batch, d_in, d_h = mtf.Dim("batch", 16), mtf.Dim("d_in", 8), mtf.Dim("d_h", 32)

@mtf.entry(inputs={"x": mtf.Input([batch, d_in])}, mesh="rows:2,cols:4", layout="batch:rows,d_h:cols",
           optimizer="sgd:lr=0.1")
def model(x):
    with mtf.scope("block0"):
        with mtf.scope("attention"):
            h = mtf.layers.dense(x, d_h, name="proj")
        h = mtf.tap(mtf.tanh(h), "act")
    return {"loss": mtf.reduce_mean(mtf.square(h))}
'''


def invoke(*args, ok=True):
    result = CliRunner().invoke(main, list(map(str, args)))
    assert (result.exit_code == 0) == ok, result.output
    return result.output


def test_cli_tap_pattern_run_outputs_and_dims(tmp_path):
    model = tmp_path / "model.py"
    model.write_text(MODEL)
    invoke("compile", model, "-o", tmp_path / "m.mlir", "--tap", "block0/attention/*")
    names = [s.name for s in mir.results(_read(tmp_path / "m.mlir"))]
    assert names == ["loss", "tap/block0/act", "tap/block0/attention/proj/einsum", "tap/block0/attention/proj/broadcast",
                     "tap/block0/attention/proj/add"]
    for by_scope in ("block0/attention", "*/proj"):  # a pattern naming a scope taps its ops
        invoke("compile", model, "-o", tmp_path / "s.mlir", "--tap", by_scope)
        assert [s.name for s in mir.results(_read(tmp_path / "s.mlir"))] == names
    invoke("compile", model, "-o", tmp_path / "one.mlir", "--tap", "block0/*/add", "--tap", "block0/tanh")
    assert [s.name for s in mir.results(_read(tmp_path / "one.mlir"))] == [
        "loss", "tap/block0/act", "tap/block0/attention/proj/add", "tap/block0/tanh"]
    assert "matches no op" in invoke("compile", model, "-o", tmp_path / "x.mlir", "--tap", "block1", ok=False)
    report = invoke("run", tmp_path / "m.mlir", "--repeat", 1, "--check", "--outputs", tmp_path / "o.npz")
    assert "check: passed" in report
    row = next(line for line in report.splitlines() if line.startswith("tap/block0/attention/proj/add "))
    assert "[batch,d_h]" in row and "16x32" in row
    with np.load(tmp_path / "o.npz") as data:
        dims = json.loads(str(data["mtfc.dims"]))
        add, act = data["tap/block0/attention/proj/add"], data["tap/block0/act"]
    assert dims["tap/block0/act"] == ["batch", "d_h"] and dims["loss"] == []
    np.testing.assert_allclose(act, np.tanh(add), rtol=1e-5, atol=1e-6)  # the two taps agree with each other


def test_cli_train_run_writes_the_last_steps_taps_and_checks_them(tmp_path):
    model = tmp_path / "model.py"
    model.write_text(MODEL)
    invoke("compile", model, "--train", "-o", tmp_path / "t.mlir", "--mode", "gspmd")
    report = invoke("run", tmp_path / "t.mlir", "--steps", 2, "--check", "--outputs", tmp_path / "o.npz")
    assert "check: passed" in report
    tap_row = next(line for line in report.splitlines() if line.startswith("tap "))
    assert tap_row.split()[1] == "1" and tap_row.rstrip().endswith("ok")
    assert "taps of step 2:" in report
    with np.load(tmp_path / "o.npz") as data:
        assert data["tap/block0/act"].shape == (16, 32)
        assert json.loads(str(data["mtfc.dims"]))["tap/block0/act"] == ["batch", "d_h"]
        assert "params/block0/attention/proj/kernel" in data.files


def _read(path):
    from mtfc.files.modules import read_module

    return read_module(str(path), mir.new_context())


# -- errors ------------------------------------------------------------------------------------


def _compile(fn, **kwargs):
    return compile_function(fn, INPUTS, mesh=MESH, layout=LAYOUT, **kwargs)


def test_a_tap_name_used_twice_names_both_lines():
    def model(x):
        a = mtf.tap(mtf.tanh(x), "t")
        mtf.tap(a * 2.0, "t")
        return a

    with pytest.raises(MtfcError) as e:
        _compile(model)
    first = model.__code__.co_firstlineno + 1
    assert str(e.value) == (f"test_tap.py:{first + 1}: tap 'tap/t' is made twice: at test_tap.py:{first} and here "
                            f"(give one of them another name, or call it in another mtf.scope)")


def test_scoped_taps_of_one_name_are_distinct():
    def model(x):
        for k in range(2):
            with mtf.scope(f"block{k}"):
                x = mtf.tap(mtf.tanh(x), "h")
        return x

    module = compile_function(model, INPUTS, mesh=MESH, layout="batch:rows", mode="none")
    assert [s.name for s in mir.results(module)] == ["out", "tap/block0/h", "tap/block1/h"]


@pytest.mark.parametrize("unroll", [False, True])
def test_a_tap_inside_a_loop_body_is_refused(unroll):
    layers = mtf.Dim("layers", 2)

    def model(x):
        def body(h, _):
            return mtf.tap(mtf.tanh(h), "h"), None

        out, _ = mtf.scan(body, x, dim=layers, unroll=unroll)
        return out

    with pytest.raises(MtfcError, match=r"test_tap.py:\d+: mtf.tap\('h'\) inside a loop body .* tap that"):
        _compile(model)


def test_a_tap_in_a_repeated_block_is_refused():
    def model(x):
        return mtf.layers.repeat(lambda h: mtf.tap(mtf.tanh(h), "h"), x, 2)

    with pytest.raises(MtfcError, match=r"mtf.tap\('h'\) inside a loop body"):
        _compile(model)


def test_a_tap_of_an_input_returns_the_input():
    def model(x):
        return mtf.tanh(mtf.tap(x, "x"))

    sharded, unsharded, data = run_model(model, INPUTS, layout="batch:rows", mode="explicit")
    np.testing.assert_array_equal(sharded["tap/x"], data["x"])
    np.testing.assert_array_equal(unsharded["tap/x"], data["x"])


def test_a_pattern_matching_nothing_lists_nearby_names():
    with pytest.raises(MtfcError, match=r"--tap 'blok/\*' matches no op of the model \(nearest: .*block/fc1/"):
        _compile(mlp, taps=("blok/*",))


def test_a_pattern_matching_only_loop_body_ops_says_so():
    layers = mtf.Dim("layers", 2)

    def model(x):
        def body(h, _):
            with mtf.scope("inner"):
                return mtf.tanh(h), None

        out, _ = mtf.scan(body, x, dim=layers)
        return out

    with pytest.raises(MtfcError, match=r"--tap 'inner/\*' matches only ops inside loop bodies \(e.g. inner/tanh\)"):
        _compile(model, taps=("inner/*",))


def test_a_tap_named_as_an_output_is_an_error():
    def model(x):
        h = mtf.tap(mtf.tanh(x), "h")
        return {"tap/h": h * 2.0}

    with pytest.raises(MtfcError, match="tap 'tap/h' has the name of one of the module's results"):
        _compile(model)


def test_tap_of_a_non_tensor_is_an_error():
    def model(x):
        mtf.tap(3.0, "three")
        return x

    with pytest.raises(MtfcError, match=r"mtf.tap\('three'\): expected an mtfc tensor, got float"):
        _compile(model)


TWICE = MODEL.replace('''    return {"loss"''', '''    mtf.tap(h * 2.0, "block0/act")
    return {"loss"''')


def test_cli_errors_are_one_line_and_write_nothing(tmp_path):
    from corpus import fails

    model, twice = tmp_path / "model.py", tmp_path / "twice.py"
    model.write_text(MODEL)
    twice.write_text(TWICE)
    out = tmp_path / "m.mlir"
    fails(["compile", model, "-o", out, "--tap", "block0/atention/*"],
          ["--tap 'block0/atention/*' matches no op", "nearest: block0/attention/proj/"], folder=tmp_path)
    line = fails(["compile", twice, "-o", out, "--train"], ["twice.py:12: tap 'tap/block0/act' is made twice: "
                                                            "at twice.py:11 and here"], folder=tmp_path)
    assert line.startswith("error: twice.py:12: ")
    assert not out.exists()


def test_taps_of_a_two_process_train_run_equal_the_one_process_run(tmp_path):
    """The taps are gathered across processes (a collective every process
    joins after the loop): 2 processes x 4 devices write what 1 x 8 writes."""
    from corpus import mtfc_process

    model = tmp_path / "model.py"
    model.write_text(MODEL)
    invoke("compile", model, "--train", "-o", tmp_path / "t.mlir")
    invoke("run", tmp_path / "t.mlir", "--steps", 2, "--outputs", tmp_path / "one.npz")
    proc = mtfc_process("launch", "-n", 2, "--", "run", "t.mlir", "--steps", 2, "--outputs", "two.npz", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "taps of step 2:" in proc.stdout
    with np.load(tmp_path / "one.npz") as one, np.load(tmp_path / "two.npz") as two:
        assert sorted(one.files) == sorted(two.files) and "tap/block0/act" in one.files
        assert str(one["mtfc.dims"]) == str(two["mtfc.dims"])
        assert_close(two["tap/block0/act"], one["tap/block0/act"])
        assert np.abs(one["tap/block0/act"]).max() > 0.1
