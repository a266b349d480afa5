"""`mtfc inspect`: values, collectives with bus bytes, memory, and the
partitioners side by side -- against numbers computed by hand here.

Bus bytes follow NCCL-tests: all-reduce 2(n-1)/n*S; all-gather,
reduce-scatter, all-to-all (n-1)/n*S (S the full buffer); permute S.
"""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

import mtfc as mtf
from mtfc import ir as mir
from mtfc.cli import main
from mtfc.compiler import compile_file, compile_function
from mtfc.emit.artifact import write_module
from mtfc.mesh import Mesh
from mtfc.passes import comm_analysis, memory_analysis

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
MESH = "rows:2,cols:4"
F32 = 4

B, D, H = mtf.Dim("batch", 8), mtf.Dim("d", 16), mtf.Dim("h", 32)


def matmul(x, w):
    return {"y": mtf.einsum([x, w], [B, H])}


MATMUL_INPUTS = {"x": mtf.Input([B, D]), "w": mtf.Input([D, H])}


def inspect_json(path, *extra):
    result = CliRunner().invoke(main, ["inspect", str(path), "--json", *map(str, extra)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def compiled(tmp_path, fn, inputs, layout, mode, name="m.mlir"):
    path = tmp_path / name
    write_module(compile_function(fn, inputs, mesh=MESH, layout=layout, mode=mode), str(path))
    return path


# ------------------------------------------------ the explicit program's collectives


def test_matmul_summed_over_a_split_dim_is_one_all_reduce_over_cols(tmp_path):
    report = inspect_json(compiled(tmp_path, matmul, MATMUL_INPUTS, "batch:rows,d:cols", "explicit"))
    ops = report["collectives"]["ops"]
    assert [(c["kind"], c["axes"], c["n"]) for c in ops] == [("all_reduce", ["cols"], 4)]
    local_result = (8 // 2) * 32 * F32           # y[batch/rows, h] on one device: 512 bytes
    assert ops[0]["bytes"] == local_result
    assert ops[0]["bus_bytes"] == 2 * 3 / 4 * local_result == 768
    assert ops[0]["groups"] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert ops[0]["shape"] == "f32[4,32]"
    assert ops[0]["location"].startswith("einsum(")
    assert report["collectives"]["by_kind"] == {"all_reduce": {"count": 1, "bytes": 512, "bus_bytes": 768}}
    assert report["collectives"]["total"] == {"count": 1, "bytes": 512, "bus_bytes": 768}


def test_all_gather_counts_the_gathered_buffer(tmp_path):
    # x[batch, d] with d split over cols; renaming d to the unsplit e gathers it.
    report = inspect_json(compiled(
        tmp_path, lambda x: {"y": mtf.rename_dimension(x, "d", "e")}, {"x": mtf.Input([B, D])},
        "batch:rows,d:cols", "explicit",
    ))
    (op,) = report["collectives"]["ops"]
    assert (op["kind"], op["axes"], op["n"], op["shape"]) == ("all_gather", ["cols"], 4, "f32[4,4]")
    gathered = 4 * 16 * F32                       # S: the full [batch/rows, d] buffer, 256 bytes
    assert op["bytes"] == gathered
    assert op["bus_bytes"] == 3 / 4 * gathered == 192


def test_values_arguments_and_memory_of_a_per_device_program(tmp_path):
    report = inspect_json(compiled(tmp_path, matmul, MATMUL_INPUTS, "batch:rows,d:cols", "explicit"))
    args = {a["name"]: a for a in report["arguments"]}
    assert args["x"]["shape"] == [8, 16] and args["x"]["local_shape"] == [4, 4]
    assert args["x"]["bytes_per_device"] == 4 * 4 * F32
    assert args["w"]["local_shape"] == [4, 32]
    (y,) = report["results"]
    assert y["shape"] == [8, 32] and y["local_shape"] == [4, 32]
    dots = [v for v in report["values"] if v["op"] == "stablehlo.dot_general"]
    assert dots and dots[0]["shape"] == [8, 32] and dots[0]["local_shape"] == [4, 32]
    memory = report["memory"]
    assert memory["input_bytes"] == (4 * 4 + 4 * 32) * F32
    # the partial product and its all-reduced sum are both live at the all_reduce
    assert memory["peak_activation_bytes"] == 2 * 4 * 32 * F32


# ------------------------------------------------------------- XLA's collectives


def test_gspmd_module_shows_the_collectives_xla_chose(tmp_path):
    report = inspect_json(compiled(tmp_path, matmul, MATMUL_INPUTS, "batch:rows,d:cols", "gspmd"))
    c = report["collectives"]
    assert c["partitioner"] == "XLA GSPMD" and c["source"] == "optimized HLO" and c["error"] is None
    assert [(o["kind"], o["axes"], o["n"], o["bytes"], o["bus_bytes"]) for o in c["ops"]] == [
        ("all_reduce", ["cols"], 4, 512, 768)
    ]
    assert report["memory"]["xla"]["temp_bytes"] >= 0
    skipped = inspect_json(tmp_path / "m.mlir", "--no-xla")
    assert skipped["collectives"]["ops"] == [] and skipped["memory"]["xla"] is None


PARTITIONERS = ("mtfc explicit", "shardy", "XLA GSPMD")


def test_compare_puts_the_partitioners_side_by_side(tmp_path):
    report = inspect_json(compiled(tmp_path, matmul, MATMUL_INPUTS, "batch:rows,d:cols", "none"), "--compare")
    rows = {r["partitioner"]: r for r in report["comparison"]}
    assert set(rows) == set(PARTITIONERS)
    for name in rows:
        assert rows[name]["error"] is None, (name, rows[name]["error"])  # a failing partitioner fails the test
        assert rows[name]["by_kind"] == {"all_reduce": {"count": 1, "bytes": 512, "bus_bytes": 768}}, name
    text = CliRunner().invoke(main, ["inspect", str(tmp_path / "m.mlir"), "--compare"]).output
    assert "partitioners side by side" in text and "XLA GSPMD" in text and "mtfc explicit" in text


# ----------------------------------------------------------------- JSON schema


def _check_totals(t):
    assert set(t) == {"count", "bytes", "bus_bytes"}
    assert isinstance(t["count"], int) and isinstance(t["bytes"], int) and isinstance(t["bus_bytes"], (int, float))


COLLECTIVE_KEYS = {"kind", "op", "location", "axes", "n", "bytes", "bus_bytes", "shape", "groups", "spans", "trips"}


def test_json_schema(tmp_path):
    report = inspect_json(compiled(tmp_path, matmul, MATMUL_INPUTS, "batch:rows,d:cols", "explicit"), "--compare")
    assert set(report) == {
        "schema", "mesh", "layout", "partitioning", "devices", "arguments", "results", "values",
        "parameter_bytes_per_device", "collectives", "processes", "memory", "comparison", "pipeline",
    }
    assert report["pipeline"] == []  # not pipelined (tests/test_pipeline.py reads a pipelined one)
    assert report["schema"] == 5 and report["devices"] == 8 and report["partitioning"] == "explicit"
    for a in report["arguments"] + report["results"]:
        assert set(a) == {"name", "role", "dims", "dtype", "shape", "local_shape", "bytes_per_device", "axes"}
    for v in report["values"]:
        assert set(v) == {"op", "location", "dims", "dtype", "shape", "local_shape", "bytes_per_device", "axes"}
        assert len(v["dims"]) == len(v["shape"]) == len(v["local_shape"])
    c = report["collectives"]
    assert set(c) == {"partitioner", "source", "error", "ops", "by_kind", "total"}
    for op in c["ops"]:
        assert set(op) == COLLECTIVE_KEYS | {"reason"} and op["kind"] in comm_analysis.KINDS
    for t in list(c["by_kind"].values()) + [c["total"]]:
        _check_totals(t)
    m = report["memory"]
    assert set(m) == {"parameter_bytes", "optimizer_state_bytes", "input_bytes", "output_bytes",
                      "peak_activation_bytes", "peak_at", "largest_live", "xla", "timeline"}
    assert set(m["timeline"]) == {"ops", "locations", "bytes"}
    assert max(m["timeline"]["bytes"]) == m["peak_activation_bytes"]
    assert set(m["peak_at"]) == {"index", "op", "location", "loop_body_bytes"}
    for v in m["largest_live"]:
        assert set(v) == {"op", "location", "dims", "dtype", "local_shape", "bytes", "defined_at", "last_use"}
    assert [row["partitioner"] for row in report["comparison"]] == list(PARTITIONERS)
    for row in report["comparison"]:
        assert set(row) == {"partitioner", "mode", "source", "error", "by_kind", "total", "collectives"}
        assert row["error"] is None, (row["partitioner"], row["error"])
        _check_totals(row["total"])
        for op in row["collectives"]:
            assert set(op) == COLLECTIVE_KEYS


# --------------------------------------------------------------- the transformer

TRANSFORMER_LAYOUT = "batch:rows,heads:cols,d_ff:cols"


@pytest.fixture(scope="module")
def transformer_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("transformer") / "t.mlir"
    module = compile_file(os.path.join(EXAMPLES, "transformer.py"), layout=TRANSFORMER_LAYOUT, mode="explicit")
    write_module(module, str(path))
    return inspect_json(path, "--compare")


def test_transformer_explicit_needs_no_more_communication_than_xla(transformer_report):
    rows = {r["partitioner"]: r for r in transformer_report["comparison"]}
    assert set(rows) == set(PARTITIONERS)
    for name, row in rows.items():
        assert row["error"] is None, (name, row["error"])
    mtfc_row, xla_row = rows["mtfc explicit"], rows["XLA GSPMD"]
    assert xla_row["total"]["count"] > 0
    assert mtfc_row["total"]["count"] <= xla_row["total"]["count"]
    assert mtfc_row["total"]["bus_bytes"] <= xla_row["total"]["bus_bytes"]
    # the module's own collectives are the ones the comparison re-derives
    assert transformer_report["collectives"]["total"] == mtfc_row["total"]


def test_transformer_megatron_matches_the_closed_form(transformer_report):
    # docs/passes/partition.md: 2N all_reduces over cols of a [B/R, L, D] f32 block
    # and one scalar all_reduce over rows (the loss mean over the batch).
    n_layers, batch, length, d_model, rows, cols = 2, 16, 32, 64, 2, 4
    block = 4 * batch * length * d_model // rows
    expected_count = 2 * n_layers + 1
    expected_bus = 2 * n_layers * 2 * (cols - 1) / cols * block + 2 * (rows - 1) / rows * 4
    total = transformer_report["collectives"]["total"]
    assert (total["count"], total["bus_bytes"]) == (expected_count, expected_bus) == (5, 393_220)
    kinds = {c["kind"] for c in transformer_report["collectives"]["ops"]}
    assert kinds == {"all_reduce"}


def test_transformer_attention_output_is_all_reduced_over_cols(transformer_report):
    # Megatron: each attention output / feed-forward output projection sums over
    # heads or d_ff (split over cols): one all-reduce of the local [batch/rows,
    # length, d_model] = 8x32x64 f32 activation, n=4.
    local = 8 * 32 * 64 * F32
    over_cols = [c for c in transformer_report["collectives"]["ops"] if c["axes"] == ["cols"]]
    assert len(over_cols) >= 4
    for c in over_cols:
        assert c["kind"] == "all_reduce" and c["n"] == 4
        assert c["bytes"] % local == 0 and c["bus_bytes"] == 2 * 3 / 4 * c["bytes"]
    logits = [v for v in transformer_report["values"] if v["dims"] == ["batch", "length", "vocab"]]
    assert logits and logits[-1]["shape"] == [16, 32, 64] and logits[-1]["local_shape"] == [8, 32, 64]


# ------------------------------------------------------------- the analyses alone


def test_axes_of_groups_tries_every_ordered_subset():
    mesh = Mesh.parse(MESH)
    assert comm_analysis.axes_of_groups(mesh, [[0, 1, 2, 3], [4, 5, 6, 7]]) == ["cols"]
    assert comm_analysis.axes_of_groups(mesh, [[4, 5, 6, 7], [0, 1, 2, 3]]) == ["cols"]
    assert comm_analysis.axes_of_groups(mesh, [[0, 4], [1, 5], [2, 6], [3, 7]]) == ["rows"]
    assert comm_analysis.axes_of_groups(mesh, [list(range(8))]) == ["rows", "cols"]
    assert comm_analysis.axes_of_groups(mesh, [[0, 4, 1, 5, 2, 6, 3, 7]]) == ["cols", "rows"]
    assert comm_analysis.axes_of_groups(mesh, []) == ["rows", "cols"]
    assert comm_analysis.axes_of_groups(mesh, [[d] for d in range(8)]) == []
    half = [[0, 1], [2, 3], [4, 5], [6, 7]]          # half of cols: no whole axis
    assert comm_analysis.axes_of_groups(mesh, half) is None
    assert comm_analysis.spanned_axes(mesh, half) == ["cols"]


def test_bus_bytes_convention():
    assert comm_analysis.bus_bytes("all_reduce", 4, 1024) == 1536
    assert comm_analysis.bus_bytes("all_gather", 4, 1024) == 768
    assert comm_analysis.bus_bytes("reduce_scatter", 2, 1024) == 512
    assert comm_analysis.bus_bytes("all_to_all", 8, 1024) == 896
    assert comm_analysis.bus_bytes("collective_permute", 4, 1024) == 1024
    assert comm_analysis.bus_bytes("all_reduce", 1, 1024) == 0


PER_DEVICE_MODULE = """
module @m attributes {mtfc.mesh = "rows:2,cols:4", mtfc.layout = "", mtfc.partitioning = "explicit"} {
  func.func @main(%a: tensor<4x8xf32>, %b: tensor<8x8xf32>) -> (tensor<4x8xf32>) {
    %0:2 = "stablehlo.all_reduce"(%a, %b) <{replica_groups = dense<[[0, 4], [1, 5], [2, 6], [3, 7]]> : tensor<4x2xi64>}> ({
    ^bb0(%x: tensor<f32>, %y: tensor<f32>):
      %s = stablehlo.add %x, %y : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) : (tensor<4x8xf32>, tensor<8x8xf32>) -> (tensor<4x8xf32>, tensor<8x8xf32>)
    %1 = "stablehlo.reduce_scatter"(%a) <{scatter_dimension = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> ({
    ^bb0(%x: tensor<f32>, %y: tensor<f32>):
      %s = stablehlo.add %x, %y : tensor<f32>
      stablehlo.return %s : tensor<f32>
    }) : (tensor<4x8xf32>) -> tensor<4x2xf32>
    %2 = "stablehlo.all_to_all"(%a) <{split_dimension = 1 : i64, concat_dimension = 0 : i64, split_count = 8 : i64, replica_groups = dense<[[0, 1, 2, 3, 4, 5, 6, 7]]> : tensor<1x8xi64>}> : (tensor<4x8xf32>) -> tensor<32x1xf32>
    %3 = "stablehlo.collective_permute"(%a) <{source_target_pairs = dense<[[0, 1], [1, 2], [2, 3], [3, 0]]> : tensor<4x2xi64>}> : (tensor<4x8xf32>) -> tensor<4x8xf32>
    %4 = "stablehlo.all_gather"(%1) <{all_gather_dim = 1 : i64, replica_groups = dense<[[0, 1, 2, 3], [4, 5, 6, 7]]> : tensor<2x4xi64>}> : (tensor<4x2xf32>) -> tensor<4x8xf32>
    return %4 : tensor<4x8xf32>
  }
}
"""


def test_every_stablehlo_collective_kind():
    module = mir.parse_module(PER_DEVICE_MODULE, mir.new_context())
    got = [(c.kind, c.axes, c.n, c.bytes, c.bus_bytes) for c in comm_analysis.module_collectives(module)]
    a, b = 4 * 8 * F32, 8 * 8 * F32                 # 128 and 256 bytes
    assert got == [
        ("all_reduce", ["rows"], 2, a + b, 2 * 1 / 2 * (a + b)),   # variadic: one collective, S = 384
        ("reduce_scatter", ["cols"], 4, a, 3 / 4 * a),              # S = the full operand
        ("all_to_all", ["rows", "cols"], 8, a, 7 / 8 * a),
        ("collective_permute", ["cols"], 4, a, a),
        ("all_gather", ["cols"], 4, a, 3 / 4 * a),                  # S = the gathered result
    ]
    totals = comm_analysis.summarize(comm_analysis.module_collectives(module))
    assert totals["total"] == {"count": 5, "bytes": 384 + 4 * 128, "bus_bytes": 384 + 96 + 112 + 128 + 96}


HLO_TEXT = """HloModule m, entry_computation_layout={(f32[8,32]{1,0})->f32[8,32]{1,0}}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%async_computation (p: f32[8,4]) -> f32[8,4] {
  %p = f32[8,4]{1,0} parameter(0)
  ROOT %all-to-all = f32[8,4]{1,0} all-to-all(%p), channel_id=5, replica_groups=mesh['axis_0'=1,'axis_1'=4,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_1'}, dimensions={1}
}

ENTRY %main (param: f32[8,32]) -> f32[8,32] {
  %param = f32[8,32]{1,0} parameter(0)
  %all-reduce-start = f32[8,32]{1,0} all-reduce-start(f32[8,32]{1,0} %param), channel_id=1, replica_groups=[2,4]<=[8], use_global_device_ids=true, to_apply=%add, metadata={op_name="block0/out" source_file="model.py" source_line=12}
  %all-reduce-done = f32[8,32]{1,0} all-reduce-done(f32[8,32]{1,0} %all-reduce-start)
  %slice = f32[8,4]{1,0} slice(%all-reduce-done), slice={[0:8], [0:4]}
  %all-gather-start = (f32[8,4]{1,0}, f32[8,16]{1,0}) all-gather-start(%slice), channel_id=2, replica_groups=[4,2]<=[2,4]T(1,0), dimensions={1}, use_global_device_ids=true
  %all-gather-done = f32[8,16]{1,0} all-gather-done(%all-gather-start)
  %cp-start = (f32[8,4]{1,0}, f32[8,4]{1,0}, u32[], u32[]) collective-permute-start(%slice), channel_id=3, source_target_pairs={{0,4},{4,0}}
  %cp-done = f32[8,4]{1,0} collective-permute-done(%cp-start)
  %a2a-start = ((f32[8,4]{1,0}), f32[8,4]{1,0}) async-start(%cp-done), calls=%async_computation
  %a2a-done = f32[8,4]{1,0} async-done(%a2a-start)
  %rs = f32[8,8]{1,0} reduce-scatter(%param), channel_id=4, replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={1}, to_apply=%add
  ROOT %ar2 = (f32[8,4]{1,0}, f32[8,16]{1,0}) all-reduce(%a2a-done, %all-gather-done), replica_groups={}, to_apply=%add
}
"""


def test_hlo_text_collectives_count_async_pairs_once():
    mesh = Mesh.parse(MESH)
    got = {c.kind if c.kind != "all_reduce" else c.op: c for c in comm_analysis.hlo_collectives(HLO_TEXT, mesh)}
    assert sorted(got) == ["all-reduce", "all-reduce-start", "all_gather", "all_to_all", "collective_permute",
                           "reduce_scatter"]
    ar = got["all-reduce-start"]
    assert (ar.axes, ar.n, ar.bytes, ar.bus_bytes) == (["cols"], 4, 8 * 32 * F32, 2 * 3 / 4 * 8 * 32 * F32)
    assert ar.location == "block0/out(model.py:12)"
    ag = got["all_gather"]                      # [4,2]<=[2,4]T(1,0): groups {0,4},{1,5},...
    assert (ag.axes, ag.n, ag.bytes) == (["rows"], 2, 2 * 8 * 4 * F32)
    cp = got["collective_permute"]
    assert (cp.axes, cp.bytes, cp.bus_bytes) == (["rows"], 8 * 4 * F32, 8 * 4 * F32)
    a2a = got["all_to_all"]                     # mesh form with device_ids: groups along cols
    assert (a2a.axes, a2a.n, a2a.bytes, a2a.bus_bytes) == (["cols"], 4, 128, 96)
    rs = got["reduce_scatter"]
    assert (rs.axes, rs.n, rs.bytes, rs.bus_bytes) == (["cols"], 4, 8 * 32 * F32, 3 / 4 * 8 * 32 * F32)
    whole = got["all-reduce"]                   # replica_groups={}: every device, variadic
    assert (whole.axes, whole.n, whole.bytes) == (["rows", "cols"], 8, (8 * 4 + 8 * 16) * F32)


LIVENESS_MODULE = """
module @m attributes {mtfc.mesh = "rows:2,cols:4", mtfc.layout = "batch:rows", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<8x16xf32> {mtfc.dims = ["batch", "d"]}) -> (tensor<8xf32> {mtfc.dims = ["batch"]}) {
    %zero = stablehlo.constant {mtfc.dims = []} dense<0.0> : tensor<f32>
    %0 = stablehlo.tanh %x {mtfc.dims = ["batch", "d"]} : tensor<8x16xf32>
    %1 = stablehlo.exponential %x {mtfc.dims = ["batch", "d"]} : tensor<8x16xf32>
    %2 = stablehlo.add %0, %1 {mtfc.dims = ["batch", "d"]} : tensor<8x16xf32>
    %3 = stablehlo.reduce(%2 init: %zero) applies stablehlo.add across dimensions = [1] {mtfc.dims = ["batch"]} : (tensor<8x16xf32>, tensor<f32>) -> tensor<8xf32>
    return %3 : tensor<8xf32>
  }
}
"""


def test_liveness_peak_by_hand():
    module = mir.parse_module(LIVENESS_MODULE, mir.new_context())
    live = memory_analysis.liveness(module)
    tile = 4 * 16 * F32                               # [batch/rows, d] per device: 256 bytes
    # op #3 (the add): %zero (4 B, used by op #4), %0, %1 (its operands) and %2
    assert live.peak_index == 3 and live.peak_op == "stablehlo.add"
    assert live.peak_bytes == 4 + 3 * tile
    assert [v.bytes for v in live.live_at_peak] == [tile, tile, tile, 4]
    zero = [v for v in live.values if v.op == "stablehlo.constant"][0]
    assert (zero.index, zero.last_use) == (0, 4)
    result = [v for v in live.values if v.op == "stablehlo.reduce"][0]
    assert result.last_use == 5                       # returned: live until the end
