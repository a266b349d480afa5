"""The bad-input corpus for data (`--data`, `--inputs`; tests/corpus.py's contract).

Token ids outside the vocabulary (the ``mtfc.range`` the frontend records on
index inputs), complex and string arrays, each in a ``.npy`` token stream,
an ``.npz`` for ``--data`` and an ``.npz`` for ``--inputs``: one error line
naming the file, the array and the first bad position, exit status 1, and
nothing written.  A loss that turns infinite stops the run with a line that
names the checkpoint it kept.
"""

from __future__ import annotations

import numpy as np
import pytest

from corpus import fails, tokens_model
from mtfc.compiler import compile_file
from mtfc.emit.artifact import write_module
from mtfc.runtime import checkpoint

TOKENS_MODEL = tokens_model("sgd:lr=0.1")

SCALED_MODEL = '''
import mtfc as mtf
batch = mtf.Dim("batch", 4)
d = mtf.Dim("d", 8)


@mtf.entry(inputs={"x": mtf.Input([batch, d])}, mesh="rows:2", layout="batch:rows", optimizer="sgd:lr=0.01")
def scaled(x):
    w = mtf.get_variable("w", mtf.Shape([d]), initializer=mtf.init.normal(1.0))
    return {"loss": mtf.reduce_mean(mtf.square(x * w))}
'''


# sqrt's gradient at 0 is infinite: step 1's loss is 0, the state it leaves is not finite.
POISONED_MODEL = '''
import mtfc as mtf
batch = mtf.Dim("batch", 4)
d = mtf.Dim("d", 8)


@mtf.entry(inputs={"x": mtf.Input([batch, d])}, mesh="rows:2", layout="batch:rows", optimizer="sgd:lr=0.01")
def poisoned(x):
    w = mtf.get_variable("w", mtf.Shape([d]), initializer=mtf.init.zeros())
    return {"loss": mtf.reduce_sum(mtf.sqrt(w)) + 0.0 * mtf.reduce_mean(x)}
'''


@pytest.fixture(scope="module")
def modules(tmp_path_factory):
    """name -> module file: the token model as a train step and as a forward
    module (explicit mode), and a model whose loss follows its data."""
    folder = tmp_path_factory.mktemp("data_modules")
    out = {}
    for name, text, train in (("train", TOKENS_MODEL, True), ("forward", TOKENS_MODEL, False),
                              ("scaled", SCALED_MODEL, True), ("poisoned", POISONED_MODEL, True)):
        source = folder / f"{name}.py"
        source.write_text(text)
        path = folder / f"{name}.mlir"
        write_module(compile_file(str(source), mode="explicit", train=train), str(path))
        out[name] = str(path)
    return out


def _stream(bad_at=None, bad=None, n=200):
    stream = (np.arange(n) * 3 % 8).astype(np.int32)
    if bad_at is not None:
        stream[bad_at] = bad
    return stream


@pytest.mark.parametrize("bad_at, bad", [(37, 5000), (0, -1), (199, 8)])
def test_token_stream_with_an_id_outside_the_vocabulary(modules, tmp_path, bad_at, bad):
    np.save(tmp_path / "tokens.npy", _stream(bad_at, bad))
    fails(["run", modules["train"], "--steps", 1, "--data", tmp_path / "tokens.npy"],
          [f"tokens.npy: token id {bad} at position {bad_at} is outside [0, 8)", "dim 'vocab'", "input 'tokens'"],
          folder=tmp_path)


def test_int64_token_stream_beyond_int32(modules, tmp_path):
    """A value that an int32 cast would wrap into the vocabulary is still rejected."""
    stream = _stream().astype(np.int64)
    stream[5] = 2**32 + 3
    np.save(tmp_path / "tokens.npy", stream)
    fails(["run", modules["train"], "--steps", 1, "--data", tmp_path / "tokens.npy"],
          [f"token id {2**32 + 3} at position 5 is outside [0, 8)"], folder=tmp_path)


@pytest.mark.parametrize("layout", ["steps", "examples"])
def test_npz_data_with_an_id_outside_the_vocabulary(modules, tmp_path, layout):
    shape = (3, 4, 4) if layout == "steps" else (12, 4)
    tokens = np.zeros(shape, np.int32)
    targets = np.ones(shape, np.int32)
    where = (1, 2, 3) if layout == "steps" else (9, 2)
    targets[where] = 9
    np.savez(tmp_path / "d.npz", tokens=tokens, targets=targets)
    fails(["run", modules["train"], "--steps", 1, "--data", tmp_path / "d.npz"],
          [f"d.npz: array 'targets': value 9 at index {where} is outside [0, 8)", "input 'targets'"],
          folder=tmp_path)


@pytest.mark.parametrize("bad", [-3, 8, 2**40])
def test_inputs_with_an_id_outside_the_vocabulary(modules, tmp_path, bad):
    tokens = np.zeros((4, 4), np.int64)
    tokens[2, 3] = bad
    np.savez(tmp_path / "in.npz", tokens=tokens)
    fails(["run", modules["forward"], "--inputs", tmp_path / "in.npz", "--repeat", 1],
          [f"in.npz: array 'tokens': value {bad} at index (2, 3) is outside [0, 8)", "dim 'vocab'"],
          folder=tmp_path)


@pytest.mark.parametrize("value, words", [
    (np.zeros((4, 4), np.complex64), "is a complex array (complex64)"),
    (np.full((4, 4), "seven"), "is a string array (<U5)"),
    (np.full((4, 4), b"7"), "is a byte string array (|S1)"),
])
@pytest.mark.parametrize("flag", ["--inputs", "--data"])
def test_complex_and_string_arrays(modules, tmp_path, value, words, flag):
    np.savez(tmp_path / "in.npz", tokens=value)
    module = modules["forward" if flag == "--inputs" else "train"]
    extra = ["--steps", 1] if flag == "--data" else []
    fails(["run", module, flag, tmp_path / "in.npz", *extra], [f"in.npz: array 'tokens' {words}"],
          folder=tmp_path)


def test_complex_token_stream(modules, tmp_path):
    np.save(tmp_path / "tokens.npy", np.zeros(100, np.complex128))
    fails(["run", modules["train"], "--steps", 1, "--data", tmp_path / "tokens.npy"],
          ["tokens.npy: the token stream is a complex array (complex128)"], folder=tmp_path)


def _scaled_data(folder, bad_step):
    x = np.ones((6, 4, 8), np.float32)
    x[bad_step] = np.inf
    np.savez(folder / "x.npz", x=x)


def test_infinite_loss_names_the_last_checkpoint(modules, tmp_path):
    """Steps 1-2 are fine and saved (--save-every 2), step 3's data make the loss
    infinite: the run stops, and the checkpoint of step 2 is what it kept."""
    _scaled_data(tmp_path, 2)
    ck = tmp_path / "ck"
    fails(["run", modules["scaled"], "--steps", 5, "--data", tmp_path / "x.npz", "--save", ck, "--save-every", 2],
          ["the loss is inf after step 3; stopping (the last checkpoint, step 2, is in", str(ck)],
          folder=tmp_path, allow_new=["ck"])
    assert checkpoint.load_index(ck)["step"] == 2


def test_infinite_loss_without_a_checkpoint(modules, tmp_path):
    _scaled_data(tmp_path, 0)
    fails(["run", modules["scaled"], "--steps", 3, "--data", tmp_path / "x.npz"],
          ["the loss is inf after step 1; stopping (no checkpoint was saved (no --save))"], folder=tmp_path)
    fails(["run", modules["scaled"], "--steps", 3, "--data", tmp_path / "x.npz", "--save", tmp_path / "ck"],
          ["the loss is inf after step 1; stopping (this run saved no checkpoint;", "is as it was"],
          folder=tmp_path)


def test_a_state_that_is_no_longer_finite_is_never_saved(modules, tmp_path):
    """Step 1's loss is finite but its update is not: the save after it refuses
    (a checkpoint is always one to resume from) and names what is left."""
    ck = tmp_path / "ck"
    fails(["run", modules["poisoned"], "--steps", 3, "--save", ck, "--save-every", 1],
          ["params/w is not finite after step 1; stopping (this run saved no checkpoint;", "is as it was"],
          folder=tmp_path)
    fails(["run", modules["poisoned"], "--steps", 1, "--save", ck],
          ["params/w is not finite after step 1; stopping"], folder=tmp_path)
