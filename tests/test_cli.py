"""The CLI's main paths: compile formats, dumps, opt, inspect, run with files."""

from __future__ import annotations

import json
import os

import numpy as np
from click.testing import CliRunner

from mtfc.cli import main

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MLP = os.path.join(EXAMPLES, "mlp.py")


def invoke(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result.output


def test_compile_text_bytecode_and_portable_all_run_alike(tmp_path):
    outputs = {}
    for name, extra in [("m.mlir", []), ("m.mlirbc", []), ("m.vhlo", ["--portable"])]:
        path = tmp_path / name
        invoke("compile", MLP, "-o", path, *extra)
        assert path.exists() and path.stat().st_size > 0
        out = tmp_path / f"{name}.npz"
        invoke("run", path, "--outputs", out, "--seed", 3, "--repeat", 1)
        with np.load(out) as data:
            outputs[name] = {k: data[k] for k in data.files}
    text = (tmp_path / "m.mlir").read_text()
    assert 'mtfc.dims = ["batch", "d_hidden"]' in text
    assert 'loc("fc1/einsum"(#loc' in text and 'loc("mlp.py":' in text
    for name in ("m.mlirbc", "m.vhlo"):
        for key, value in outputs["m.mlir"].items():
            np.testing.assert_array_equal(outputs[name][key], value)


def test_dump_ir_after_all_writes_numbered_files(tmp_path):
    invoke("compile", MLP, "-o", tmp_path / "m.mlir", "--mode", "gspmd", "--dump-ir-after-all", tmp_path / "dumps")
    assert sorted(os.listdir(tmp_path / "dumps")) == ["00-input.mlir", "01-verify-names.mlir", "02-attach-shardings.mlir"]
    assert "mhlo.sharding" not in (tmp_path / "dumps" / "00-input.mlir").read_text()
    assert "mhlo.sharding" in (tmp_path / "dumps" / "02-attach-shardings.mlir").read_text()


def test_default_mode_is_explicit_and_dumps_each_pass(tmp_path):
    invoke("compile", MLP, "-o", tmp_path / "m.mlir", "--dump-ir-after-all", tmp_path / "dumps")
    assert sorted(os.listdir(tmp_path / "dumps")) == [
        "00-input.mlir", "01-verify-names.mlir", "02-partition.mlir", "03-fuse-collectives.mlir"]
    assert 'mtfc.partitioning = "explicit"' in (tmp_path / "m.mlir").read_text()
    assert "stablehlo.all_reduce" in (tmp_path / "dumps" / "02-partition.mlir").read_text()


def test_opt_reruns_attach_shardings_with_a_new_layout(tmp_path):
    invoke("compile", MLP, "-o", tmp_path / "m.mlir", "--mode", "none")
    text = invoke("opt", tmp_path / "m.mlir", "--passes", "verify-names,attach-shardings", "--layout", "batch:cols+rows", "--no-debug-info")
    assert 'mtfc.layout = "batch:cols+rows"' in text
    assert '{mhlo.sharding = "{devices=[8,1]<=[2,4]T(1,0)}", mtfc.dims = ["batch", "d_in"]' in text


def test_inspect_json_reports_per_device_shapes(tmp_path):
    invoke("compile", MLP, "-o", tmp_path / "m.mlir", "--layout", "batch:rows,d_hidden:cols")
    report = json.loads(invoke("inspect", tmp_path / "m.mlir", "--json"))
    args = {a["name"]: a for a in report["arguments"]}
    assert args["x"]["shape"] == [64, 32] and args["x"]["local_shape"] == [32, 32]
    assert args["params/fc1/kernel"]["local_shape"] == [32, 32]  # d_hidden 128 / cols 4
    assert report["parameter_bytes_per_device"] == 4 * (32 * 32 + 32 + 32 * 16 + 16)


def test_run_uses_given_inputs_and_synthesizes_the_rest(tmp_path):
    invoke("compile", MLP, "-o", tmp_path / "m.mlir")
    x = np.zeros((64, 32), np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    invoke("run", tmp_path / "m.mlir", "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz", "--check")
    with np.load(tmp_path / "out.npz") as data:
        y, probs = data["y"], data["probs"]
    # x = 0: y is the output bias (zeros) broadcast over the batch; probs uniform
    np.testing.assert_allclose(y, np.zeros((64, 16)), atol=1e-6)
    np.testing.assert_allclose(probs, np.full((64, 16), 1 / 16), rtol=1e-6)
