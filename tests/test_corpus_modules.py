"""Corpus: hand-edited and foreign modules (docs/IR.md, "Verification").

Each case compiles a module, edits its text as a person (or another tool)
might -- a string edit on the .mlir -- and runs `mtfc run`, `inspect` or
`opt` on it as a real process, so a crash in native code (a segfault is exit
-11) cannot pass: one error line naming the culprit, exit status 1, nothing
written.
"""

from __future__ import annotations


import numpy as np
import pytest

from corpus import MLP, process_fails, tiny_train_model
from mtfc.compiler import compile_file, compile_function
from mtfc.emit.artifact import write_module
from mtfc.errors import MtfcError
from mtfc.runtime.execute import Program
import jax
import mtfc as mtf

@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The MLP example's module text in each mode, and its train step (explicit)."""
    folder = tmp_path_factory.mktemp("modules")
    texts = {}
    for mode in ("gspmd", "explicit", "shardy"):
        path = folder / f"{mode}.mlir"
        write_module(compile_file(MLP, mode=mode), str(path))
        texts[mode] = path.read_text()
    path = folder / "train.mlir"
    write_module(compile_file(tiny_train_model(folder), mode="explicit", train=True), str(path))
    texts["train"] = path.read_text()
    return texts


def edited(text: str, old: str, new: str, count: int = 1) -> str:
    assert old in text, old
    return text.replace(old, new, count)


def write(folder, text: str) -> str:
    path = folder / "edited.mlir"
    path.write_text(text)
    return str(path)


X_GSPMD = '%arg0: tensor<64x32xf32> {mhlo.sharding = "{devices=[2,1,4]<=[8] last_tile_dim_replicate}", ' \
          'mtfc.dims = ["batch", "d_in"]'


def test_gspmd_dims_that_contradict_the_op_sizes(tmp_path, compiled):
    """The issue's segfault: argument dims that give another split than the
    executable's shardings."""
    text = edited(compiled["gspmd"], X_GSPMD, X_GSPMD.replace('["batch", "d_in"]', '["d_hidden", "d_in"]'))
    process_fails(["run", write(tmp_path, text)],
                  ["edited.mlir", "stablehlo.dot_general", "dim 'd_hidden' has size 128", "64"], folder=tmp_path)


def test_gspmd_sharding_that_contradicts_the_layout(tmp_path, compiled):
    text = edited(compiled["gspmd"], X_GSPMD, X_GSPMD.replace("{devices=[2,1,4]<=[8] last_tile_dim_replicate}",
                                                              "{devices=[4,1,2]<=[8] last_tile_dim_replicate}"))
    process_fails(["run", write(tmp_path, text)],
                  ["argument #0 (x): mhlo.sharding {devices=[4,1,2]<=[8] last_tile_dim_replicate} contradicts"],
                  folder=tmp_path)


def test_gspmd_layout_edited_under_its_shardings(tmp_path, compiled):
    text = edited(compiled["gspmd"], 'mtfc.layout = "batch:rows,d_hidden:cols"', 'mtfc.layout = "batch:cols"')
    process_fails(["run", write(tmp_path, text), "--check"], ["contradicts its dims"], folder=tmp_path)


def test_explicit_layout_edited_under_its_local_shapes(tmp_path, compiled):
    text = edited(compiled["explicit"], 'mtfc.layout = "batch:rows,d_hidden:cols", mtfc.mesh',
                  'mtfc.layout = "batch:rows", mtfc.mesh')
    process_fails(["run", write(tmp_path, text)], ["per-device shape", "is not the local shape"], folder=tmp_path)


def test_explicit_mesh_edited(tmp_path, compiled):
    text = edited(compiled["explicit"], 'mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "explicit"',
                  'mtfc.mesh = "rows:4,cols:2", mtfc.partitioning = "explicit"')
    process_fails(["run", write(tmp_path, text)], ["edited.mlir"], folder=tmp_path)


def test_shardy_manual_sharding_removed(tmp_path, compiled):
    text = edited(compiled["shardy"], 'mhlo.sharding = "{manual}", ', "")
    process_fails(["run", write(tmp_path, text)], ["shardy module's arguments and results carry"],
                  folder=tmp_path)


def test_unknown_role_in_inspect(tmp_path, compiled):
    text = edited(compiled["explicit"], 'mtfc.role = "parameter"', 'mtfc.role = "weight"')
    process_fails(["inspect", write(tmp_path, text), "--no-xla"], ["edited.mlir: ", "unknown mtfc.role 'weight'"],
                  folder=tmp_path)


def test_wrong_rank_dims_in_opt(tmp_path, compiled):
    text = edited(compiled["gspmd"], X_GSPMD, X_GSPMD.replace('["batch", "d_in"]', '["batch"]'))
    process_fails(["opt", write(tmp_path, text), "--passes", "partition"],
                  ["argument #0 (x): mtfc.dims ['batch'] names 1 dims for a rank-2 tensor"], folder=tmp_path)


def test_duplicate_names(tmp_path, compiled):
    text = edited(compiled["gspmd"], 'mtfc.name = "params/fc1/bias"', 'mtfc.name = "params/fc1/kernel"')
    process_fails(["run", write(tmp_path, text)], ["mtfc.name 'params/fc1/kernel' is also"], folder=tmp_path)


def test_unused_rule_in_an_edited_module(tmp_path, compiled):
    text = compiled["gspmd"].replace('mtfc.layout = "batch:rows,d_hidden:cols"',
                                     'mtfc.layout = "batch:rows,d_hidden:cols,d_hiden:rows"', 1)
    process_fails(["run", write(tmp_path, text)], ["layout rule 'd_hiden:rows'", "did you mean d_hidden"],
                  folder=tmp_path)


def test_bad_aliasing_in_a_train_step(tmp_path, compiled):
    text = compiled["train"]
    marker = "tf.aliasing_output = "
    start = text.index(marker) + len(marker)
    end = text.index(" ", start)
    text = text[:start] + "999" + text[end:]
    process_fails(["run", write(tmp_path, text), "--steps", "1"], ["tf.aliasing_output = 999 names no result"],
                  folder=tmp_path)


def test_unknown_partitioning_kind(tmp_path, compiled):
    text = edited(compiled["gspmd"], 'mtfc.partitioning = "gspmd"', 'mtfc.partitioning = "xla"')
    process_fails(["run", write(tmp_path, text)], ["unknown mtfc.partitioning 'xla'"], folder=tmp_path)


def test_bad_initializer(tmp_path, compiled):
    text = edited(compiled["gspmd"], 'mtfc.init = "constant:0.0"', 'mtfc.init = "constant:zero"')
    process_fails(["run", write(tmp_path, text)], ["initializer 'constant:zero' takes 1 finite number"],
                  folder=tmp_path)


# ----------------------------------------------------------------- runtime inputs

def test_runtime_refuses_arrays_the_executable_does_not_take():
    """`Program` checks every argument array (dtype, shape, shards) before
    executing: with several devices XLA would crash on a mismatch."""
    batch, d = mtf.Dim("batch", 8), mtf.Dim("d", 4)
    module = compile_function(lambda x: {"y": mtf.tanh(x)}, {"x": mtf.Input([batch, d])},
                              mesh="rows:2,cols:4", layout="batch:rows", mode="gspmd")
    program = Program(module)
    x = np.ones((8, 4), np.float32)
    good = jax.device_put(x, jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(program.devices).reshape(2, 4), ("rows", "cols")),
        jax.sharding.PartitionSpec("rows")))
    program.check_device_arguments([good])
    wrong_split = jax.device_put(x, jax.sharding.NamedSharding(
        jax.sharding.Mesh(np.array(program.devices).reshape(2, 4), ("rows", "cols")),
        jax.sharding.PartitionSpec("cols")))
    with pytest.raises(MtfcError, match=r"argument 'x' is split into shards of shape \(2, 4\)"):
        program.check_device_arguments([wrong_split])
    with pytest.raises(MtfcError, match="argument 'x' is float64"):
        program.check_device_arguments([np.ones((8, 4), np.float64)])
    with pytest.raises(MtfcError, match="takes 1 arguments, not 2"):
        program.check_device_arguments([good, good])
