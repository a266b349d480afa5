"""The bad-input and fault corpus's contract, shared by every ``test_corpus_*.py``.

Each case runs one `mtfc` command that must fail (or be interrupted) and
checks the CLI's contract (docs/cli.md):

* exactly one line ``error: ...`` on stderr, naming the culprit (`fragments`),
  no traceback and no ``internal error``;
* the expected exit status (1 for user mistakes, 130 for Ctrl-C, ...);
* nothing lost or half-written: every file under `folder` that existed before
  is byte-identical afterwards, and no new file (a temporary one included)
  appears except those the case lists in `allow_new`.

`fails` runs the command in-process (fast; click's runner); `process_fails`
runs it as a real process, which also sees native writes to stderr, crashes
(a segfault is exit -11) and signals.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from click.testing import CliRunner

from mtfc.cli import main

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MLP = os.path.join(EXAMPLES, "mlp.py")

TINY_TRAIN_MODEL = """
import mtfc as mtf

batch, d_in, d_hidden = mtf.Dim("batch", 8), mtf.Dim("d_in", 4), mtf.Dim("d_hidden", 16)


@mtf.entry(inputs={"x": mtf.Input([batch, d_in])}, mesh="rows:2,cols:4", layout="batch:rows,d_hidden:cols")
def tiny(x):
    h = mtf.layers.dense(x, d_hidden, name="fc")
    return {"loss": mtf.reduce_mean(h * h)}
"""


_TOKENS_MODEL = """
import mtfc as mtf
batch = mtf.Dim("batch", 4)
length = mtf.Dim("length", 4)
vocab = mtf.Dim("vocab", 8)
d = mtf.Dim("d", 4)


@mtf.entry(
    inputs={
        "tokens": mtf.Input([batch, length], "i32", mtf.init.randint(0, vocab.size)),
        "targets": mtf.Input([batch, length], "i32", mtf.init.randint(0, vocab.size)),
    },
    mesh="rows:2,cols:2", layout="batch:rows,vocab:cols", optimizer="OPTIMIZER",
)
def tiny(tokens, targets):
    x = mtf.layers.embedding(tokens, vocab, d)
    logits = mtf.layers.dense(x, vocab, [d], name="out")
    lp = mtf.log_softmax(logits, vocab)
    return {"loss": -mtf.reduce_mean(mtf.reduce_sum(lp * mtf.one_hot(targets, vocab), vocab))}
"""


def tokens_model(optimizer: str) -> str:
    """The source of a tiny token model (an embedding and a softmax over a
    vocab of 8, tokens and targets as i32 inputs) training with `optimizer`."""
    return _TOKENS_MODEL.replace("OPTIMIZER", optimizer)


def tiny_train_model(folder) -> str:
    """Write a tiny model with a loss (a train step in a few ms) to `folder`/tiny.py; its path."""
    path = folder / "tiny.py"
    path.write_text(TINY_TRAIN_MODEL)
    return str(path)


def tree(folder) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (directories as 'dir')."""
    out: dict[str, str] = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "dir"
        for f in files:
            path = os.path.join(root, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_unchanged(folder, before: dict[str, str], allow_new=()) -> None:
    after = tree(folder)
    lost = {p for p in before if before[p] != after.get(p)}
    assert not lost, f"changed or lost: {sorted(lost)}"
    new = {p for p in set(after) - set(before) if not any(p == a or p.startswith(a.rstrip("/") + "/") for a in allow_new)}
    assert not new, f"left behind: {sorted(new)}"


def assert_one_error_line(stderr: str, stdout: str, fragments) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one stderr line, got:\n{stderr}"
    (line,) = lines
    assert line.startswith("error: "), line
    assert "internal error" not in line, line
    assert "Traceback" not in stderr + stdout
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


def fails(args, fragments, *, folder, exit_code: int = 1, allow_new=()) -> str:
    """Invoke the CLI in process; check the contract; return the error line."""
    before = tree(folder)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert isinstance(result.exception, SystemExit), (result.exception, result.stderr)
    assert result.exit_code == exit_code, (result.exit_code, result.stderr)
    line = assert_one_error_line(result.stderr, result.stdout, fragments)
    assert_unchanged(folder, before, allow_new)
    return line


def mtfc_process(*args, cwd, env: dict | None = None, timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    """Run ``mtfc ARGS`` as a real process in `cwd` (MTFC_TRACEBACK unset)."""
    full_env = {k: v for k, v in os.environ.items() if k != "MTFC_TRACEBACK"}
    full_env.update(env or {})
    command = [sys.executable, "-c", "from mtfc.cli import main; main()", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, **kwargs)


def process_fails(args, fragments, *, folder, exit_code: int = 1, env: dict | None = None, allow_new=()) -> str:
    """Run the command as a process in `folder`; check the contract; return the error line."""
    before = tree(folder)
    proc = mtfc_process(*args, cwd=folder, env=env)
    assert proc.returncode == exit_code, (proc.returncode, proc.stderr)
    line = assert_one_error_line(proc.stderr, proc.stdout, fragments)
    assert_unchanged(folder, before, allow_new)
    return line
