"""The bad-input and fault corpus of the command line itself (tests/corpus.py's
contract): a model file where a module belongs, a model file that exits,
Ctrl-C during compile, run and training, and a stdout closed early."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from corpus import assert_one_error_line, assert_unchanged, fails, mtfc_process, process_fails, tree

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MLP = os.path.abspath(os.path.join(EXAMPLES, "mlp.py"))

TINY = """\
import mtfc as mtf

batch, d = mtf.Dim("batch", 8), mtf.Dim("d", 4)


@mtf.entry(inputs={"x": mtf.Input([batch, d])}, mesh="rows:2", layout="batch:rows", optimizer="sgd:lr=0.01")
def tiny(x):
    w = mtf.get_variable("w", [d])
    return {"loss": mtf.reduce_mean(mtf.square(x * w)), "y": x * w}
"""


@pytest.fixture(autouse=True)
def _no_traceback_env(monkeypatch):
    monkeypatch.delenv("MTFC_TRACEBACK", raising=False)


@pytest.fixture(scope="module")
def tiny_modules(tmp_path_factory):
    """(model file, forward module, train-step module) of a 2-device model, compiled in process."""
    from click.testing import CliRunner

    from mtfc.cli import main

    folder = tmp_path_factory.mktemp("tiny")
    model = folder / "tiny.py"
    model.write_text(TINY)
    for extra, name in (([], "fwd.mlir"), (["--train"], "train.mlir")):
        result = CliRunner().invoke(main, ["compile", str(model), "-o", str(folder / name), *extra])
        assert result.exit_code == 0, result.output
    return model, folder / "fwd.mlir", folder / "train.mlir"


# ------------------------------------------------------------ a model file for a module


@pytest.mark.parametrize("command", ["run", "inspect", "opt"])
def test_model_file_given_where_a_module_belongs(tmp_path, command):
    model = tmp_path / "model.py"
    model.write_text(TINY)
    line = fails([command, model], [f"{model} is a model file (Python), not a module",
                                    f"'mtfc compile {model} -o {tmp_path / 'model'}.mlir'"], folder=tmp_path)
    assert line.endswith("compile it first with " + f"'mtfc compile {model} -o {tmp_path / 'model'}.mlir'")


def test_model_file_without_py_suffix_is_recognized_by_its_content(tmp_path):
    model = tmp_path / "model.txt"
    model.write_text(TINY)
    fails(["run", model], [f"{model} is a model file (Python)"], folder=tmp_path)


@pytest.mark.parametrize("name", ["fwd.mlir", "copy.bin"])
def test_module_given_to_compile(tmp_path, tiny_modules, name):
    _, forward, _ = tiny_modules
    module = tmp_path / name
    if name.endswith(".mlir"):
        module.write_bytes(forward.read_bytes())
    else:  # bytecode under any name
        from mtfc import ir as mir
        from mtfc.emit.artifact import write_module
        from mtfc.files.modules import read_module

        write_module(read_module(str(forward), mir.new_context()), str(tmp_path / "m.mlirbc"))
        os.rename(tmp_path / "m.mlirbc", module)
    fails(["compile", module, "-o", tmp_path / "out.mlir"],
          [f"{module} is a module, not a model file (Python)", f"'mtfc run {module}'"], folder=tmp_path)


# ------------------------------------------------------------ a model file that exits

EXITS = {
    "sys_exit_at_import": ("import sys\nimport mtfc as mtf\nsys.exit(0)  # <-\n", "sys.exit(0)", []),
    "exit_in_entry": (TINY.replace("    w = mtf.get_variable", "    exit()  # <-\n    w = mtf.get_variable"),
                      "sys.exit(None)", []),
    "quit_in_train_step": (TINY.replace("    return {", "    quit(3)  # <-\n    return {"), "sys.exit(3)", ["--train"]),
}


@pytest.mark.parametrize("name", sorted(EXITS))
def test_model_file_that_exits_is_an_error_at_its_line(tmp_path, name):
    source, call, extra = EXITS[name]
    model = tmp_path / "exits.py"
    model.write_text(source)
    (marked,) = [i + 1 for i, line in enumerate(source.splitlines()) if line.endswith("# <-")]
    out = tmp_path / "out.mlir"
    fails(["compile", model, "-o", out, *extra], [f"exits.py:{marked}:", f"called {call}", "must not exit"],
          folder=tmp_path)


def test_model_file_that_exits_fails_as_a_process_too(tmp_path):
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    process_fails(["compile", "exits.py", "-o", "out.mlir"], ["exits.py:2:", "sys.exit(0)"], folder=tmp_path)


# ------------------------------------------------------------------------ Ctrl-C


def _popen(args, cwd, **kwargs) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MTFC_TRACEBACK"}
    command = [sys.executable, "-c", "from mtfc.cli import main; main()", *map(str, args)]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)


def _interrupt(proc: subprocess.Popen, timeout: float = 60) -> tuple[str, str]:
    """Send SIGINT to `proc` (which we started) and collect its output."""
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


def _read_until(proc: subprocess.Popen, prefix: str, deadline: float = 120) -> list[str]:
    """Lines of `proc`'s stdout up to and including the first that starts with `prefix`."""
    lines, end = [], time.monotonic() + deadline
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith(prefix):
            return lines
    proc.kill()
    proc.communicate()
    raise AssertionError(f"no line starting with {prefix!r}: {lines}")


def test_ctrl_c_during_training_says_the_step_and_the_last_checkpoint(tmp_path, tiny_modules):
    _, _, train = tiny_modules
    proc = _popen(["run", train, "--steps", 10**7, "--save", "ckpt", "--save-every", 20, "--log", "log.jsonl",
                   "--outputs", "out.npz"], cwd=tmp_path)
    _read_until(proc, "saved step 20 to ckpt")
    stdout, stderr = _interrupt(proc)
    assert proc.returncode == 130, (proc.returncode, stderr)
    line = assert_one_error_line(stderr, stdout, ["error: interrupted at step ", "; last checkpoint: ckpt (step "])
    step = int(line.split("interrupted at step ")[1].split(";")[0])
    saved = int(line.split("(step ")[1].rstrip(")"))
    assert saved % 20 == 0 and 20 <= saved <= step
    with open(tmp_path / "ckpt" / "index.json") as f:
        assert json.load(f)["step"] == saved                  # the checkpoint named is whole, at that step
    with open(tmp_path / "log.jsonl") as f:
        logged = [json.loads(row) for row in f]               # every line whole (a JSON document)
    assert [r["step"] for r in logged] == list(range(1, len(logged) + 1)) and len(logged) in (step - 1, step)
    assert not (tmp_path / "out.npz").exists()
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "log.jsonl"]  # no temporary file or directory left


def test_ctrl_c_during_training_without_a_checkpoint(tmp_path, tiny_modules):
    _, _, train = tiny_modules
    proc = _popen(["run", train, "--steps", 10**7], cwd=tmp_path)
    _read_until(proc, "step 1 ")
    stdout, stderr = _interrupt(proc)
    assert proc.returncode == 130, (proc.returncode, stderr)
    line = assert_one_error_line(stderr, stdout, ["error: interrupted at step ", "; no checkpoint saved"])
    assert int(line.split("interrupted at step ")[1].split(";")[0]) >= 1
    assert os.listdir(tmp_path) == []


def test_ctrl_c_during_compile_leaves_no_output(tmp_path):
    # The model file interrupts itself while it is traced: Ctrl-C at a known point of compile.
    (tmp_path / "model.py").write_text(TINY.replace(
        "    w = mtf.get_variable", "    import os, signal\n    os.kill(os.getpid(), signal.SIGINT)\n"
        "    w = mtf.get_variable"))
    for extra in ([], ["--train", "--dump-ir-after-all", "dumps"]):
        before = tree(tmp_path)
        proc = mtfc_process("compile", "model.py", "-o", "out.mlir", *extra, cwd=tmp_path)
        assert proc.returncode == 130, (proc.returncode, proc.stderr)
        assert_one_error_line(proc.stderr, proc.stdout, ["error: interrupted"])
        assert proc.stderr.strip() == "error: interrupted"
        assert_unchanged(tmp_path, before)


def test_ctrl_c_during_run_leaves_no_output(tmp_path, tiny_modules):
    # --inputs names a FIFO: the run blocks reading it, after compiling, until interrupted.
    _, forward, _ = tiny_modules
    fifo, work = tmp_path / "fifo", tmp_path / "work"
    fifo.mkdir()
    work.mkdir()
    os.mkfifo(fifo / "inputs.npz")
    proc = _popen(["run", forward, "--inputs", fifo / "inputs.npz", "--outputs", "out.npz"], cwd=work)
    writer, end = None, time.monotonic() + 120
    while writer is None and time.monotonic() < end and proc.poll() is None:
        try:  # succeeds once the run has opened the FIFO for reading
            writer = os.open(fifo / "inputs.npz", os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.05)
    try:
        assert writer is not None, proc.communicate()
        time.sleep(0.2)
        stdout, stderr = _interrupt(proc)
    finally:
        if writer is not None:
            os.close(writer)
    assert proc.returncode == 130, (proc.returncode, stderr)
    assert stderr.strip() == "error: interrupted"
    assert_one_error_line(stderr, stdout, ["error: interrupted"])
    assert os.listdir(work) == []


# ------------------------------------------------------------------ a closed stdout


def _run_with_closed_stdout(args, cwd, *, read_lines: int, stderr_too: bool = False) -> tuple[int, str]:
    """Run ``mtfc ARGS`` with stdout a pipe whose reader reads `read_lines` lines and
    closes it (``mtfc ... | head -n N``; with `stderr_too`, ``2>&1 | head``); return
    (exit status, stderr; with `stderr_too`, what was read)."""
    read_end, write_end = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != "MTFC_TRACEBACK"}
    command = [sys.executable, "-c", "from mtfc.cli import main; main()", *map(str, args)]
    proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=write_end,
                            stderr=write_end if stderr_too else subprocess.PIPE, text=True)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        read = "".join(reader.readline() for _ in range(read_lines))
    try:
        _, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, read if stderr_too else stderr


# The reader closes the pipe before the command writes (0 lines: it is still starting up),
# or a few lines into a run that goes on writing for seconds: a write meets the closed pipe.
@pytest.mark.parametrize("which, extra, read_lines", [
    ("forward", [], 0),
    ("forward", ["--check"], 0),
    ("train", ["--steps", 2000], 2),
])
def test_closed_stdout_ends_quietly(tmp_path, tiny_modules, which, extra, read_lines):
    _, forward, train = tiny_modules
    module = forward if which == "forward" else train
    status, stderr = _run_with_closed_stdout(["run", module, *extra], tmp_path, read_lines=read_lines)
    assert status == 141, (status, stderr)   # 128 + SIGPIPE, as `yes | head` reports for `yes`
    assert stderr == "", stderr               # no "error: Broken pipe", traceback or "Exception ignored"
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------ options a module cannot use


def test_repeat_with_a_train_step_module_is_an_error(tmp_path, tiny_modules):
    _, _, train = tiny_modules
    fails(["run", train, "--repeat", 5], ["--repeat is for forward modules", "train-step module"], folder=tmp_path)


def test_closed_stdout_of_opt_ends_quietly(tmp_path, tiny_modules):
    _, forward, _ = tiny_modules
    status, stderr = _run_with_closed_stdout(["opt", forward, "--passes", "verify-names"], tmp_path, read_lines=0)
    assert (status, stderr) == (141, "")


def test_an_error_with_stdout_and_stderr_closed_ends_quietly(tmp_path):
    # `mtfc run missing.mlir 2>&1 | head -n 0`: the error line itself meets the closed pipe.
    status, read = _run_with_closed_stdout(["run", "missing.mlir"], tmp_path, read_lines=0, stderr_too=True)
    assert (status, read) == (141, "")


def test_opt_with_passes_and_pipeline_is_an_error(tmp_path, tiny_modules):
    _, forward, _ = tiny_modules
    fails(["opt", forward, "--passes", "verify-names", "--pipeline", "gspmd", "-o", tmp_path / "out.mlir"],
          ["--passes or --pipeline, not both"], folder=tmp_path)


def test_unwritable_output_fails_before_compiling_with_one_line(tmp_path):
    # The transformer's train step drops its logits (a warning after a
    # successful compile): a bad -o must fail first, alone.
    (tmp_path / "adir").mkdir()
    transformer = os.path.abspath(os.path.join(EXAMPLES, "transformer.py"))
    fails(["compile", transformer, "--train", "-o", tmp_path / "adir"], ["adir", "Is a directory"], folder=tmp_path)
