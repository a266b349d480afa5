"""Index inputs: one answer for any index in every mode, and ``mtfc.range``.

* A gather clamps an out-of-range index to the table (StableHLO's semantics):
  every partitioner -- explicit's masked lookup in a split table included --
  reads the row the unsharded program reads, forward and backward.
* The frontend records ``mtfc.range`` on the integer inputs that index a dim
  (`mtfc.index_ranges`), and the partitioning pipelines keep it.
"""

from __future__ import annotations

import numpy as np
import pytest

import mtfc as mtf
from mtfc import ir as mir
from mtfc.compiler import compile_function
from mtfc.index_ranges import IndexRange, argument_ranges
from corpus import tokens_model
from opcheck import MODES, check, layouts

B, S, D = mtf.Dim("batch", 8), mtf.Dim("seq", 8), mtf.Dim("d", 16)
V = mtf.Dim("vocab", 16)


@layouts("vocab:cols", "vocab:rows", "batch:rows,vocab:cols", "vocab:rows+cols", "d:cols,vocab:rows")
def test_gather_clamps_out_of_range_indices_in_every_mode(layout):
    """Indices in [-5, 21) under layouts splitting the table's vocab dim: each
    mode (and the unsharded run) equals NumPy's ``table[clip(ids, 0, 15)]``,
    and the table's gradient accumulates into the clamped rows."""

    def model(table, ids, weight):
        looked = mtf.gather(table, ids, V)
        loss = mtf.reduce_sum(looked * weight)
        return {"looked": looked, "d_table": mtf.grad(loss, table)}

    def reference(data):
        table, ids, weight = data["table"], data["ids"], data["weight"]
        clamped = np.clip(ids, 0, V.size - 1)
        d_table = np.zeros_like(table)
        np.add.at(d_table, clamped, weight)
        return {"looked": table[clamped], "d_table": d_table}

    inputs = {
        "table": mtf.Input([V, D]),
        "ids": mtf.Input([B, S], "i32", mtf.init.randint(-5, 21)),
        "weight": mtf.Input([B, S, D]),
    }
    data = check(model, inputs, reference, layout)
    assert (data["ids"] < 0).any() and (data["ids"] >= V.size).any()


def _ranges(fn, inputs, mode="none"):
    module = compile_function(fn, inputs, mesh="rows:2,cols:4", layout="batch:rows,vocab:cols", mode=mode)
    with module.context:
        return argument_ranges(module)


@pytest.mark.parametrize("mode", ("none", *MODES))
def test_range_recorded_for_gather_and_one_hot_inputs(mode):
    """Ids looked up (directly or reshaped) and ids one-hot encoded get [0, vocab);
    ids used in arithmetic, floats and integers that index nothing get none; all
    pipelines keep the attribute."""
    L2 = mtf.Dim("pair", 2)
    half = mtf.Dim("half", 4)

    def model(table, ids, targets, shifted, counts, pairs):
        flat = mtf.replace_dimensions(pairs, [half, L2], [S])
        return {
            "e": mtf.gather(table, ids, V),
            "hot": mtf.one_hot(targets, V),
            "moved": mtf.gather(table, shifted + 1, V),
            "c": counts * 2,
            "p": mtf.gather(table, flat, V),
        }

    inputs = {
        "table": mtf.Input([V, D]),
        "ids": mtf.Input([B, S], "i32", mtf.init.randint(0, 16)),
        "targets": mtf.Input([B, S], "i32", mtf.init.randint(0, 16)),
        "shifted": mtf.Input([B, S], "i32", mtf.init.randint(0, 15)),
        "counts": mtf.Input([B], "i32", mtf.init.randint(0, 100)),
        "pairs": mtf.Input([B, half, L2], "i32", mtf.init.randint(0, 16)),
    }
    got = _ranges(model, inputs, mode)
    want = IndexRange(0, 16, "vocab")
    assert got == {"ids": want, "targets": want, "pairs": want}


def test_range_is_the_narrowest_of_its_uses():
    small = mtf.Dim("small", 4)

    def model(table, small_table, ids):
        return {"a": mtf.gather(table, ids, V), "b": mtf.one_hot(ids, small)}

    inputs = {"table": mtf.Input([V, D]), "small_table": mtf.Input([small, D]),
              "ids": mtf.Input([B, S], "i32", mtf.init.randint(0, 4))}
    assert _ranges(model, inputs) == {"ids": IndexRange(0, 4, "small")}


def test_train_step_ranges_only_on_inputs(tmp_path):
    """A train step's token inputs carry the range; a step counter indexing a
    schedule table (optimizer state) does not (it is meant to clamp)."""
    from mtfc.cli import main
    from click.testing import CliRunner

    from mtfc.files.modules import read_module

    model = tmp_path / "tiny.py"
    model.write_text(TINY_MODEL)
    out = tmp_path / "train.mlir"
    result = CliRunner().invoke(main, ["compile", str(model), "--train", "--mode", "explicit", "-o", str(out)])
    assert result.exit_code == 0, result.output
    module = read_module(str(out), mir.new_context())
    with module.context:
        ranges = argument_ranges(module)
        roles = {s.name: s.role for s in mir.arguments(module)}
    assert ranges == {"tokens": IndexRange(0, 8, "vocab"), "targets": IndexRange(0, 8, "vocab")}
    assert all(roles[n] == "input" for n in ranges)


TINY_MODEL = tokens_model("adamw:lr=0.01,warmup=2,decay=cosine,steps=10")
