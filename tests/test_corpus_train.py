"""The corpus's train-step cases: errors raised while a train step is built
(`mtfc compile --train`) name the model file's line -- never a library's
(click's core.py, mtfc's own) -- or the flag or parameter they concern;
each is one `error:` line, exit 1, no module written (tests/corpus.py's
contract)."""

from __future__ import annotations

import re
import textwrap

import pytest

from corpus import fails

HEADER = """\
import mtfc as mtf
B, D, V = mtf.Dim("batch", 8), mtf.Dim("d", 4), mtf.Dim("vocab", 4)
X = mtf.Input([B, D])
IDS = mtf.Input([B], "i32", mtf.init.randint(0, 4))
"""

CASES = {
    "loss_not_scalar": ("""
        @mtf.entry(inputs={"x": X}, mesh="rows:2", layout="batch:rows")  # <- entry
        def model(x):
            w = mtf.get_variable("w", [D])
            return {"loss": mtf.reduce_sum(x * w, D)}  # <- here
        """, [], ["the loss 'loss' must be a float scalar tensor", "[batch:8]"]),
    "loss_missing": ("""
        @mtf.entry(inputs={"x": X}, mesh="rows:2", layout="batch:rows")  # <- here
        def model(x):
            return {"y": mtf.reduce_sum(x * mtf.get_variable("w", [D]))}
        """, [], ["no output 'loss' to train on", "outputs: y"]),
    "loss_integer": ("""
        @mtf.entry(inputs={"x": X, "ids": IDS}, mesh="rows:2", layout="batch:rows")
        def model(x, ids):
            w = mtf.get_variable("w", [D])
            return {"loss": mtf.reduce_sum(ids), "y": mtf.reduce_sum(x * w)}  # <- here
        """, [], ["float scalar", "i32"]),
    "dtype_clash": ("""
        @mtf.entry(inputs={"x": X, "ids": IDS}, mesh="rows:2", layout="batch:rows")
        def model(x, ids):
            w = mtf.get_variable("w", [D])
            y = mtf.reduce_sum(x * w, D)
            return {"loss": mtf.reduce_mean(y * ids)}  # <- here
        """, ["--precision", "bf16"], ["multiply", "i32", "cast one first"]),
    "entry_optimizer_spec": ("""
        @mtf.entry(inputs={"x": X}, mesh="rows:2", layout="batch:rows",  # <- here
                   optimizer="adam:lr=0.1,beta=3")
        def model(x):
            return {"loss": mtf.reduce_sum(x * mtf.get_variable("w", [D]))}
        """, [], ["bad setting 'beta=3'"]),
    "entry_precision": ("""
        @mtf.entry(inputs={"x": X}, mesh="rows:2", layout="batch:rows", precision="fp8")  # <- here
        def model(x):
            return {"loss": mtf.reduce_sum(x * mtf.get_variable("w", [D]))}
        """, [], ["unknown precision 'fp8'"]),
    "metric_name_clash": ("""
        @mtf.entry(inputs={"x": X}, mesh="rows:2", layout="batch:rows")  # <- here
        def model(x):
            y = mtf.reduce_sum(x * mtf.get_variable("w", [D]))
            return {"loss": y, "grad_norm": y}
        """, [], ["output 'grad_norm'", "rename it"]),
    "grad_in_model_helper": ("""
        def helper(x, ids):
            loss = mtf.reduce_sum(x * mtf.get_variable("w", [D]))
            return loss, mtf.grad(loss, ids)  # <- here

        @mtf.entry(inputs={"x": X, "ids": IDS}, mesh="rows:2", layout="batch:rows")
        def model(x, ids):
            loss, g = helper(x, ids)
            return {"loss": loss}
        """, [], ["grad: only float tensors have gradients", "i32"]),
    "error_in_helper_module": ("""
        import helper_lib

        @mtf.entry(inputs={"x": X}, mesh="rows:2", layout="batch:rows")
        def model(x):
            return {"loss": helper_lib.bad_loss(x, D)}  # <- here
        """, [], ["unknown dim 'nope'"]),
    "python_exception_in_helper_module": ("""
        import helper_lib

        @mtf.entry(inputs={"x": X}, mesh="rows:2", layout="batch:rows")
        def model(x):
            return {"loss": helper_lib.raises(x)}  # <- here
        """, [], ["ZeroDivisionError"]),
}

HELPER_LIB = """\
import mtfc as mtf


def bad_loss(x, d):
    return mtf.reduce_sum(x, "nope")


def raises(x):
    return 1 / 0
"""


def marked_line(text: str, marker: str = "# <- here") -> int:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if marker in line]
    assert len(hits) == 1, hits
    return hits[0]


@pytest.mark.parametrize("case", list(CASES))
def test_train_step_errors_name_the_model_line(case, tmp_path, monkeypatch):
    # the model imports helper_lib from its own folder, as `python model.py` could
    body, flags, fragments = CASES[case]
    text = HEADER + textwrap.dedent(body)
    (tmp_path / "model.py").write_text(text)
    (tmp_path / "helper_lib.py").write_text(HELPER_LIB)
    line = fails(["compile", tmp_path / "model.py", "--train", "-o", tmp_path / "out.mlir", *flags],
                 [f"error: model.py:{marked_line(text)}: ", *fragments], folder=tmp_path, allow_new=["__pycache__"])
    assert not re.search(r"\b(core|train|optimizers|autodiff|graph|ops|helper_lib)\.py", line), line


def test_optimizer_flag_errors_name_the_flag(tmp_path):
    text = HEADER + textwrap.dedent(CASES["loss_missing"][0]).replace('"y"', '"loss"')
    (tmp_path / "model.py").write_text(text)
    fails(["compile", tmp_path / "model.py", "--train", "--optimizer", "rmsprop:lr=1", "-o", tmp_path / "out.mlir"],
          ["error: --optimizer: unknown optimizer 'rmsprop'"], folder=tmp_path, allow_new=["__pycache__"])


def test_in_process_errors_name_the_callers_line():
    """A model function compiled in-process (no model file): the error names
    the caller's line, not the test runner's or mtfc's."""
    import mtfc as mtf
    from mtfc.compiler import compile_function

    def model(x):
        return {"loss": mtf.reduce_sum(x * mtf.get_variable("w", [x.shape[1]]), x.shape[1])}  # <- in process

    with pytest.raises(mtf.MtfcError) as info:
        compile_function(model, {"x": mtf.Input([mtf.Dim("batch", 8), mtf.Dim("d", 4)])}, train=True)
    with open(__file__) as f:
        line = marked_line(f.read(), "# <- in" + " process")
    assert str(info.value).startswith(f"test_corpus_train.py:{line}: "), str(info.value)
