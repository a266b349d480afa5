"""The CLI's main paths: compile formats, dumps, opt, inspect, run with files."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys

import click
import numpy as np
import pytest
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


# ----------------------------------------------------------------- a light command line

LIGHT_COMMANDS = [["--help"], ["--version"], ["compile", "--help"], ["opt", "--help"], ["inspect", "--help"],
                  ["run", "--help"], ["launch", "--help"], ["-h"]]


def test_help_and_version_do_not_import_jax():
    # The time (well under 0.5 s) follows from not importing jax; a test asserts what it can: the imports.
    script = (
        "import sys\n"
        "from mtfc.cli import main\n"
        "assert 'jax' not in sys.modules, 'import mtfc.cli imported jax'\n"
        f"for args in {LIGHT_COMMANDS!r}:\n"
        "    try:\n"
        "        main(args, prog_name='mtfc')\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
        "    assert 'jax' not in sys.modules, f'mtfc {\" \".join(args)} imported jax'\n"
        "    assert not any(m.startswith('mtfc.frontend') for m in sys.modules), args\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("ok") and "mtfc, version 0.1.0" in proc.stdout


def test_the_dsl_is_imported_on_first_use():
    script = (
        "import sys\n"
        "import mtfc as mtf\n"
        "assert 'jax' not in sys.modules\n"
        "d = mtf.Dim('d', 4)\n"
        "from mtfc import einsum, layers, ir\n"
        "assert layers.dense is mtf.layers.dense and einsum is mtf.einsum and ir.__name__ == 'mtfc.ir'\n"
        "assert set(mtf.__all__) <= set(dir(mtf))\n"
        "assert all(getattr(mtf, name) is not None for name in mtf.__all__)\n"
        "try:\n"
        "    mtf.no_such_name\n"
        "except AttributeError as e:\n"
        "    assert 'no_such_name' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no AttributeError')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# ----------------------------------------------------------------- opt --list-passes


def test_opt_list_passes_needs_no_module():
    from mtfc.passes.manager import PASSES

    listed = [line.split()[0] for line in invoke("opt", "--list-passes").splitlines()]
    assert listed == list(PASSES)


def test_opt_without_module_or_list_passes_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["opt"])
    assert result.exit_code == 2 and "Missing argument 'MODULE_FILE'" in result.stderr, result.stderr
    assert "--list-passes" in result.stderr
    (tmp_path / "m.mlir").write_text("module {}\n")
    result = CliRunner().invoke(main, ["opt", str(tmp_path / "m.mlir"), "--list-passes"])
    assert result.exit_code == 2 and "--list-passes lists the passes and takes no MODULE_FILE" in result.stderr


# ----------------------------------------------------------------- file modes


TINY_TRAIN = """\
import mtfc as mtf

batch, d = mtf.Dim("batch", 8), mtf.Dim("d", 4)


@mtf.entry(inputs={"x": mtf.Input([batch, d])}, mesh="rows:2", layout="batch:rows", optimizer="sgd:lr=0.01")
def tiny(x):
    w = mtf.get_variable("w", [d])
    return {"loss": mtf.reduce_mean(mtf.square(x * w))}
"""


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_written_files_get_the_users_umask(tmp_path, umask):
    expected = 0o666 & ~umask
    invoke("compile", MLP, "-o", tmp_path / "m.mlir", "--dump-ir-after-all", tmp_path / "dumps")
    invoke("compile", MLP, "-o", tmp_path / "m.mlirbc")
    invoke("compile", MLP, "-o", tmp_path / "m.vhlo", "--portable")
    invoke("run", tmp_path / "m.mlir", "--outputs", tmp_path / "fwd.npz", "--repeat", 1)
    (tmp_path / "tiny.py").write_text(TINY_TRAIN)
    invoke("compile", tmp_path / "tiny.py", "--train", "-o", tmp_path / "train.mlir")
    invoke("run", tmp_path / "train.mlir", "--steps", 1, "--outputs", tmp_path / "train.npz",
           "--log", tmp_path / "log.jsonl")
    files = ["tiny.py", "m.mlir", "m.mlirbc", "m.vhlo", "fwd.npz", "train.mlir", "train.npz", "log.jsonl",
             *(os.path.join("dumps", name) for name in os.listdir(tmp_path / "dumps"))]
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in files}
    assert modes == {name: expected for name in files}
    assert stat.S_IMODE(os.stat(tmp_path / "dumps").st_mode) == 0o777 & ~umask


def test_an_atomic_write_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    from mtfc.files.atomic import write_bytes_atomic

    path = tmp_path / "f.bin"
    write_bytes_atomic(str(path), b"old")
    write_bytes_atomic(str(path), b"new content")
    assert path.read_bytes() == b"new content" and os.listdir(tmp_path) == ["f.bin"]


# ----------------------------------------------------------------- docs/cli.md


def _all_commands(group, prefix=()):
    yield prefix, group
    if isinstance(group, click.Group):
        for name, command in group.commands.items():
            yield from _all_commands(command, (*prefix, name))


def _doc_sections(doc: str) -> dict[str, str]:
    """docs/cli.md cut at its ``## `mtfc COMMAND`` headings: command name -> its text
    (subsections included); "" -> the text before the first command."""
    sections, name = {"": ""}, ""
    for line in doc.splitlines(keepends=True):
        if line.startswith("## `mtfc "):
            words = []  # the command's words: `mtfc checkpoint export DIR ...` is "checkpoint export"
            for word in line[len("## `mtfc "):].split():
                word = word.rstrip("`")
                if not re.fullmatch(r"[a-z][a-z-]*", word):
                    break
                words.append(word)
            name = " ".join(words)
            sections[name] = ""
        sections[name] += line
    return sections


def test_docs_cli_md_documents_every_option_of_every_command():
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md")) as f:
        sections = _doc_sections(f.read())
    missing = []
    for path, command in _all_commands(main):
        name = " ".join(path)
        if name not in sections:
            missing.append(f"mtfc {name} (no section)")
            continue
        for param in command.get_params(click.Context(command)):
            if param.param_type_name != "option" or param.hidden or (path and "--help" in param.opts):
                continue  # -h/--help: documented once, for every command, before the commands
            # each spelling (`-o`, `--output`) in the command's own section, as `--option`
            for opt in param.opts + param.secondary_opts:
                if f"`{opt}" not in sections[name] and f", {opt}" not in sections[name]:
                    missing.append(f"mtfc {name} {opt}".replace("  ", " "))
    assert not missing, f"docs/cli.md does not document: {missing}"
