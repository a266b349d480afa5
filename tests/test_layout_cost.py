"""`layout_cost.predict`: the explicit partitioner's collectives predicted
from the global module equal, one by one, those `partition` emits (before
fuse-collectives), for the examples under several layouts, forward and train
step; `mtfc inspect --predict` shows them beside the measured totals."""

from __future__ import annotations

import json
import os
import pathlib
import warnings

import pytest
from click.testing import CliRunner

from mtfc import ir as mir
from mtfc.cli import main
from mtfc.compiler import compile_file
from mtfc.errors import MtfcError
from mtfc.passes import comm_analysis, layout_cost, run_passes

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"

CASES = [  # example, layout, parameter layout
    ("mlp.py", "batch:rows+cols", None),
    ("mlp.py", "batch:rows,d_hidden:cols", None),
    ("transformer.py", "heads:cols,d_ff:cols,vocab:rows", None),
    ("transformer.py", "batch:rows,heads:cols,d_ff:cols", None),
    ("transformer.py", "batch:rows", "d_model:rows"),
    ("moe.py", "batch:rows,experts:rows,d_ff:cols,expert_ff:cols", None),
    ("moe.py", "batch:rows+cols,batch_unsplit:rows,experts:cols", None),
    ("unet.py", "h:rows,w:cols", None),  # tests/test_examples.py LAYOUTS["unet.py"]: convolution and pool halos
    ("unet.py", "batch:rows+cols", None),
    ("unet.py", "h:rows,f1:cols,f2:cols", None),
]


def _global(example, layout, param_layout, train):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_file(os.path.join(EXAMPLES, example), layout=layout, param_layout=param_layout,
                            mode="none", train=train)


@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
@pytest.mark.parametrize("example,layout,param_layout", CASES)
def test_prediction_equals_the_partitioned_program(example, layout, param_layout, train):
    module = _global(example, layout, param_layout, train)
    prediction = layout_cost.predict(module)
    run_passes(module, ["partition"])
    measured = comm_analysis.module_collectives(module)
    assert [(c.kind, c.axes, c.bytes, c.n, c.trips) for c in prediction.collectives] == \
        [(c.kind, c.axes, c.bytes, c.n, c.trips) for c in measured]
    assert prediction.summary() == comm_analysis.summarize(measured)
    if layout != "batch:rows+cols":
        assert measured, "a layout that communicates"


def test_records_name_the_dims_that_cause_them():
    module = _global("mlp.py", "d_hidden:cols", None, False)
    (c,) = layout_cost.predict(module).collectives
    assert (c.kind, c.axes, c.n, c.dims, c.op) == ("all_reduce", ["cols"], 4, ["d_hidden"], "stablehlo.dot_general")
    assert c.bytes == 64 * 16 * 4 and "mlp.py" in c.location  # the partial result [batch:64, d_out:16] f32
    module = _global("moe.py", "batch:rows+cols,batch_unsplit:rows,experts:cols", None, False)
    moves = [c for c in layout_cost.predict(module).collectives if c.kind == "all_to_all"]
    assert moves and all(len(c.dims) == 2 and "moves from dim" in c.reason for c in moves)


def test_prediction_can_differ_from_the_fused_program():
    # what is predicted is the unfused program; fusion merges the all_reduces
    module = _global("transformer.py", "batch:rows", "d_model:rows", True)
    prediction = layout_cost.predict(module).summary()
    run_passes(module, ["partition", "fuse-collectives"])
    assert prediction != comm_analysis.summarize(comm_analysis.module_collectives(module))


@pytest.mark.parametrize("path", sorted((ROOT / "lit_tests" / "partition").glob("*.mlir")), ids=lambda p: p.name)
def test_prediction_equals_partition_on_its_lit_inputs(path):
    # the windows (halos, window exchanges), all_to_alls, gathers and reshapes of the partition lit tests
    module = mir.parse_module(path.read_text(), mir.new_context())
    with module.context:
        prediction = layout_cost.predict(module)
    run_passes(module, ["partition"])
    assert [(c.kind, c.axes, c.bytes, c.n, c.trips) for c in prediction.collectives] == \
        [(c.kind, c.axes, c.bytes, c.n, c.trips) for c in comm_analysis.module_collectives(module)]


BASE_DILATED_POOL = """
module @pool attributes {mtfc.layout = "d:cols", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%arg0: tensor<2x16xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "x", mtfc.role = "input"})
      -> (tensor<2x32xf32> {mtfc.dims = ["batch", "d"], mtfc.name = "y", mtfc.role = "output"}) {
    %cst = stablehlo.constant {mtfc.dims = []} dense<0.0> : tensor<f32>
    %0 = "stablehlo.reduce_window"(%arg0, %cst) <{padding = dense<[[0, 0], [1, 1]]> : tensor<2x2xi64>,
        base_dilations = array<i64: 1, 2>, window_dimensions = array<i64: 1, 2>, window_strides = array<i64: 1, 1>}> ({
    ^bb0(%arg1: tensor<f32>, %arg2: tensor<f32>):
      %1 = stablehlo.add %arg1, %arg2 : tensor<f32>
      stablehlo.return %1 : tensor<f32>
    }) {mtfc.dims = ["batch", "d"]} : (tensor<2x16xf32>, tensor<f32>) -> tensor<2x32xf32>
    return %0 : tensor<2x32xf32>
  }
}
"""


def test_base_dilated_pool_halo():
    # the gradient of a strided sum pool: each block dilated locally, then its halo
    module = mir.parse_module(BASE_DILATED_POOL, mir.new_context())
    with module.context:
        prediction = layout_cost.predict(module)
    run_passes(module, ["partition"])
    measured = comm_analysis.module_collectives(module)
    assert [(c.kind, c.axes, c.bytes, c.n, c.trips) for c in prediction.collectives] == \
        [(c.kind, c.axes, c.bytes, c.n, c.trips) for c in measured]
    assert measured and all(c.dims == ["d"] and c.op == "stablehlo.reduce_window" for c in prediction.collectives)


def test_conv_and_pool_records_name_their_dims():
    module = _global("unet.py", "h:rows,f1:cols,f2:cols", None, True)
    records = layout_cost.predict(module).collectives
    halos = [c for c in records if c.op == "stablehlo.convolution" and c.kind == "collective_permute"]
    sums = [c for c in records if c.op == "stablehlo.convolution" and c.kind == "all_reduce"]
    pools = [c for c in records if c.op == "stablehlo.reduce_window"]
    assert halos and all(c.dims == ["h"] and c.axes == ["rows"] for c in halos)
    assert {c.reason.split(" of dim")[0] for c in halos} == {"halo"}  # static slices, also for the lhs-dilated "up" layer
    assert sums and all(set(c.dims) <= {"f1", "f1b", "f2", "f2b", "h"} and "sum over" in c.reason for c in sums)
    assert pools and all(c.dims == ["h"] and c.kind == "collective_permute" for c in pools)


def test_refusals_are_one_line():
    text = (ROOT / "lit_tests" / "shardy" / "errors.mlir").read_text()
    module = mir.parse_module(text, mir.new_context())
    # its reduce_window (split window dim) is predicted; the reduce_precision no rule splits is refused
    with pytest.raises(MtfcError, match=r"^layout-cost has no prediction for stablehlo.reduce_precision at "
                                        r"precision\(model.py:8:1\) with split values: the explicit partitioner "
                                        r"has no rule that splits it either$"):
        layout_cost.predict(module)
    # an op the partitioner has a rule for is never said to have none
    conv = mir.parse_module((ROOT / "lit_tests" / "partition" / "conv-halo.mlir").read_text(), mir.new_context())
    with conv.context:
        op = next(o for o in mir.body_ops(mir.entry_function(conv)) if o.name == "stablehlo.convolution")
        assert "the explicit partitioner has a rule for it" in layout_cost._no_prediction(op)
    text = (ROOT / "lit_tests" / "verify-names" / "wrong-rank.mlir").read_text()
    with pytest.raises(MtfcError) as e:
        layout_cost.predict(mir.parse_module(text, mir.new_context()))
    assert len(str(e.value).splitlines()) == 1
    module = _global("mlp.py", "d_hidden:cols", None, False)
    run_passes(module, ["partition"])
    with pytest.raises(MtfcError, match="already partitioned"):
        layout_cost.predict(module)


def test_inspect_predict(tmp_path):
    out = tmp_path / "m.mlir"
    runner = CliRunner()
    result = runner.invoke(main, ["compile", str(EXAMPLES / "transformer.py"), "-o", str(out),
                                  "--layout", "batch:rows,heads:cols,d_ff:cols", "--mode", "explicit"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["inspect", str(out), "--predict", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["partitioner"]: r for r in json.loads(result.output)["prediction"]}
    assert rows["predicted"]["error"] is None
    assert rows["predicted"]["total"] == rows["mtfc explicit, unfused"]["total"]
    assert rows["predicted"]["by_kind"] == rows["mtfc explicit, unfused"]["by_kind"]
    assert rows["predicted"]["collectives"][0]["reason"]
    text = runner.invoke(main, ["inspect", str(out), "--predict"]).output
    assert "predicted collectives, and why:" in text and "all_reduce over cols" in text
