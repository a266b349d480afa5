"""Every bad input to the `mtfc` command ends the same way (docs/cli.md):
exactly one line ``error: ...`` on stderr naming the culprit, no traceback,
exit status 1, and no output file (nor a temporary one) left behind."""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner

import corpus
from corpus import process_fails
from mtfc.cli import main

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MLP = os.path.join(EXAMPLES, "mlp.py")


def mlp_line(fragment: str) -> int:
    with open(MLP) as f:
        hits = [i + 1 for i, line in enumerate(f) if fragment in line]
    assert len(hits) == 1, (fragment, hits)
    return hits[0]


FC1_LINE = mlp_line('name="fc1"')


@pytest.fixture(autouse=True)
def _no_traceback_env(monkeypatch):
    monkeypatch.delenv("MTFC_TRACEBACK", raising=False)


def fails(args, fragments, *, folder, absent=()):
    """`corpus.fails` (one error line, exit 1, `folder` as it began); the
    `absent` paths must not exist either."""
    line = corpus.fails(args, fragments, folder=folder)
    for path in absent:
        assert not os.path.exists(path), path
    return line


def succeeds(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


# ----------------------------------------------------------------- mesh and layout


@pytest.mark.parametrize(
    "mesh, fragments",
    [
        ("rows:0", ["'rows'", "'0'", "rows:0"]),
        ("rows2", ["'rows2'"]),
        ("rows:2,rows:4", ["'rows'", "twice"]),
        ("rows:x", ["'rows'", "'x'"]),
        ("rows:-1", ["'rows'", "'-1'"]),
        (":2", ["':2'"]),
        ("rows:2;cols", ["'cols'"]),
        # the empty mesh is one device: the model's rule batch:rows names a missing axis
        ("", ["batch:rows", "'rows'", "mesh ''"]),
    ],
    ids=["size0", "no-size", "axis-twice", "size-not-int", "negative", "no-name", "semicolon-no-size", "empty"],
)
def test_bad_mesh(tmp_path, mesh, fragments):
    out = tmp_path / "out.mlir"
    fails(["compile", MLP, "-o", out, "--mesh", mesh], fragments, folder=tmp_path, absent=[out])


def test_empty_mesh_with_empty_layout_compiles(tmp_path):
    succeeds("compile", MLP, "-o", tmp_path / "one.mlir", "--mesh", "", "--layout", "")
    assert (tmp_path / "one.mlir").exists()


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--layout", "batch:depth"], ["batch:depth", "'depth'", "rows:2,cols:4"]),
        (
            ["--layout", "batch:rows,d_hidden:rows"],
            ["'rows'", "'batch'", "'d_hidden'", f"mlp.py:{FC1_LINE}"],
        ),
        (["--mesh", "rows:3", "--layout", "batch:rows"], ["'batch'", "64", "rows", "3"]),
        (["--layout", "batch"], ["'batch'"]),
        (["--layout", "batch:rows,batch:cols"], ["'batch'", "two layout rules"]),
        (["--layout", "batch:rows+rows"], ["batch:rows+rows", "twice"]),
        (["--layout", "batch:ro-ws"], ["batch:ro-ws"]),
        (["--mode", "bogus"], ["'bogus'"]),
        (["--entry", "nope"], ["'nope'", "mlp"]),
    ],
    ids=["unknown-axis", "axis-twice-in-tensor", "not-divisible", "no-axis", "two-rules", "rule-axis-twice",
         "bad-axis-name", "unknown-mode", "unknown-entry"],
)
def test_bad_layout_and_options(tmp_path, extra, fragments):
    out = tmp_path / "out.mlir"
    fails(["compile", MLP, "-o", out, *extra], fragments, folder=tmp_path, absent=[out])


def test_dump_dir_is_not_created_by_a_bad_mesh(tmp_path):
    out, dumps = tmp_path / "out.mlir", tmp_path / "dumps"
    fails(["compile", MLP, "-o", out, "--mesh", "rows:0", "--dump-ir-after-all", dumps], ["'rows'"],
          folder=tmp_path, absent=[out, dumps])


def test_output_path_that_is_a_directory(tmp_path):
    (tmp_path / "adir").mkdir()
    fails(["compile", MLP, "-o", tmp_path / "adir"], ["adir"], folder=tmp_path)
    assert os.listdir(tmp_path / "adir") == []


# ----------------------------------------------------------------- model files

HEADER = """\
import mtfc as mtf

batch, d_in, d_hidden = mtf.Dim("batch", 64), mtf.Dim("d_in", 32), mtf.Dim("d_hidden", 128)
"""

ENTRY = """

@mtf.entry(inputs={"x": mtf.Input([batch, d_in])}, mesh="rows:2,cols:4", layout="batch:rows")
def model(x):
"""

MODELS = {
    # name: (source, fragments); '# <-' marks the line the error must name
    "syntax_error": (HEADER + "def broken(:  # <-\n    pass\n", ["syntax error"]),
    "name_error_at_import": (
        HEADER + "scale = undefined_scale * 2  # <-\n" + ENTRY + "    return {'y': x}\n",
        ["NameError", "'undefined_scale'"],
    ),
    "name_error_in_entry": (
        HEADER + ENTRY + "    h = undefined_helper(x)  # <-\n    return {'y': h}\n",
        ["NameError", "'undefined_helper'"],
    ),
    "exception_in_helper": (
        HEADER + "\n\ndef helper(t):\n    raise ValueError('scale must be positive')  # <-\n"
        + ENTRY + "    return {'y': helper(x)}\n",
        ["ValueError", "scale must be positive"],
    ),
    "einsum_dims_mismatch": (
        HEADER + ENTRY
        + "    w = mtf.get_variable('w', [mtf.Dim('d_in', 16), d_hidden])\n"
        + "    return {'y': mtf.einsum([x, w], [batch, d_hidden])}  # <-\n",
        ["einsum", "'d_in'", "32", "16"],
    ),
    "einsum_output_dim_in_no_input": (
        HEADER + ENTRY + "    return {'y': mtf.einsum([x], [batch, mtf.Dim('d_ff', 8)])}  # <-\n",
        ["einsum", "'d_ff'", "in no input"],
    ),
    "unknown_dim": (
        HEADER + ENTRY + "    return {'y': mtf.reduce_sum(x, reduced_dim=mtf.Dim('nope', 4))}  # <-\n",
        ["unknown dim", "'nope'"],
    ),
    "dim_twice_in_tensor": (
        HEADER + ENTRY + "    w = mtf.get_variable('w', [d_in, d_in])  # <-\n    return {'y': x}\n",
        ["'d_in'", "twice"],
    ),
    "two_sizes_for_one_dim": (
        HEADER + ENTRY + "    return {'y': x + mtf.ones([mtf.Dim('batch', 32)])}  # <-\n",
        ["'batch'", "two sizes", "64", "32"],
    ),
    "bad_dim_size": (
        HEADER + "d_ff = mtf.Dim('d_ff', 0)  # <-\n" + ENTRY + "    return {'y': x}\n",
        ["'d_ff'", "size 0"],
    ),
}


def _marked_line(source: str) -> int:
    hits = [i + 1 for i, line in enumerate(source.splitlines()) if line.rstrip().endswith("# <-")]
    assert len(hits) == 1
    return hits[0]


@pytest.mark.parametrize("name", list(MODELS))
def test_broken_model_file_names_file_line_and_culprit(tmp_path, name):
    source, fragments = MODELS[name]
    model = tmp_path / f"{name}.py"
    model.write_text(source)
    out = tmp_path / "out.mlir"
    line = fails(["compile", model, "-o", out], [f"{name}.py:{_marked_line(source)}:", *fragments],
                 folder=tmp_path, absent=[out])
    assert line.startswith(f"error: {name}.py:"), line  # the file's name, not a path


@pytest.mark.parametrize(
    "source, fragments",
    [
        (HEADER + "\n\ndef model(x):\n    return {'y': x}\n", ["none", "@mtf.entry"]),
        (
            HEADER + ENTRY + "    return {'y': x}\n" + ENTRY.replace("def model", "def other") + "    return {'y': x}\n",
            ["model, other", "--entry"],
        ),
        (HEADER + ENTRY + "    mtf.relu(x)\n", ["'model'", "NoneType"]),
        (HEADER + ENTRY + "    return {'y': 3}\n", ["'model'", "'y'", "int"]),
    ],
    ids=["no-entry", "two-entries", "returns-none", "returns-a-number"],
)
def test_model_file_entry_mistakes(tmp_path, source, fragments):
    model = tmp_path / "entries.py"
    model.write_text(source)
    out = tmp_path / "out.mlir"
    fails(["compile", model, "-o", out], fragments, folder=tmp_path, absent=[out])


def test_missing_model_file(tmp_path):
    out = tmp_path / "out.mlir"
    fails(["compile", tmp_path / "missing.py", "-o", out], ["missing.py"], folder=tmp_path, absent=[out])


# ----------------------------------------------------------------- module files: run, inspect, opt


@pytest.fixture(scope="module")
def module_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("module") / "m.mlir"
    succeeds("compile", MLP, "-o", path)
    return path


@pytest.fixture
def garbage(tmp_path):
    path = tmp_path / "garbage.mlir"
    path.write_text("this is not MLIR\n")
    return path


@pytest.mark.parametrize("command", ["run", "inspect", "opt"])
def test_missing_module_file(tmp_path, command):
    fails([command, tmp_path / "missing.mlir"], ["missing.mlir"], folder=tmp_path)


@pytest.mark.parametrize("command", ["run", "inspect", "opt"])
def test_garbage_module_file(tmp_path, garbage, command):
    fails([command, garbage], ["garbage.mlir"], folder=tmp_path)


@pytest.mark.parametrize("command", ["run", "inspect"])
def test_binary_garbage_module_file(tmp_path, command):
    path = tmp_path / "binary.mlir"
    path.write_bytes(b"\xff\xfe\x00\x01garbage")
    fails([command, path], ["binary.mlir"], folder=tmp_path)


@pytest.mark.parametrize("command", ["run", "inspect"])
def test_mlir_that_is_not_an_mtfc_module(tmp_path, command):
    path = tmp_path / "plain.mlir"
    path.write_text("module {\n}\n")
    fails([command, path], ["@main"], folder=tmp_path)


def test_opt_unknown_pass(tmp_path, module_file):
    out = tmp_path / "out.mlir"
    fails(["opt", module_file, "--passes", "verify-names,no-such-pass", "-o", out], ["'no-such-pass'"],
          folder=tmp_path, absent=[out])


def test_opt_unknown_pipeline(tmp_path, module_file):
    out = tmp_path / "out.mlir"
    fails(["opt", module_file, "--pipeline", "bogus", "-o", out], ["'bogus'"], folder=tmp_path, absent=[out])


def test_opt_bad_layout_override(tmp_path, module_file):
    out = tmp_path / "out.mlir"
    fails(["opt", module_file, "--passes", "attach-shardings", "--layout", "batch:depth", "-o", out],
          ["batch:depth", "'depth'"], folder=tmp_path, absent=[out])


def test_run_missing_inputs_file(tmp_path, module_file):
    out = tmp_path / "out.npz"
    fails(["run", module_file, "--inputs", tmp_path / "missing.npz", "--outputs", out], ["missing.npz"],
          folder=tmp_path, absent=[out])


def test_run_inputs_file_that_is_not_npz(tmp_path, module_file):
    bad = tmp_path / "bad.npz"
    bad.write_text("not an npz\n")
    out = tmp_path / "out.npz"
    fails(["run", module_file, "--inputs", bad, "--outputs", out], ["bad.npz"], folder=tmp_path, absent=[out])


def test_run_inputs_with_unknown_name(tmp_path, module_file):
    np.savez(tmp_path / "in.npz", nope=np.zeros(3, np.float32))
    out = tmp_path / "out.npz"
    fails(["run", module_file, "--inputs", tmp_path / "in.npz", "--outputs", out], ["'nope'"],
          folder=tmp_path, absent=[out])


def test_run_inputs_with_wrong_shape(tmp_path, module_file):
    np.savez(tmp_path / "in.npz", x=np.zeros((3, 3), np.float32))
    out = tmp_path / "out.npz"
    fails(["run", module_file, "--inputs", tmp_path / "in.npz", "--outputs", out], ["'x'", "(3, 3)", "(64, 32)"],
          folder=tmp_path, absent=[out])


def test_run_outputs_path_that_is_a_directory(tmp_path, module_file):
    (tmp_path / "adir").mkdir()
    fails(["run", module_file, "--outputs", tmp_path / "adir", "--repeat", 1], ["adir"], folder=tmp_path)
    assert os.listdir(tmp_path / "adir") == []


# ----------------------------------------------------------------- as a real process

# The in-process runner sees neither native (C++) writes to stderr nor the
# real exit status; these run the installed command.


def test_process_bad_model_and_garbage_module(tmp_path, garbage):
    source, fragments = MODELS["einsum_dims_mismatch"]
    (tmp_path / "model.py").write_text(source)
    process_fails(["compile", "model.py", "-o", "out.mlir"], [f"model.py:{_marked_line(source)}:", *fragments],
                  folder=tmp_path)
    process_fails(["run", garbage.name], ["garbage.mlir"], folder=tmp_path)


def test_process_truncated_bytecode(tmp_path):
    path = tmp_path / "m.mlirbc"
    succeeds("compile", MLP, "-o", path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    process_fails(["inspect", path.name], ["m.mlirbc"], folder=tmp_path)
