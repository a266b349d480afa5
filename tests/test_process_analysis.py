"""`mtfc.passes.process_analysis`: which collectives cross processes and the
bytes that cross, against answers computed by hand here.

Placement is process-major: with N processes of K = 8 / N devices, process p
holds mesh devices p*K .. p*K+K-1.  Rings (all-reduce, all-gather,
reduce-scatter) are ordered by process, so a group spanning q processes
crosses q times, each crossing carrying the bus bytes b; an all-to-all sends
S/n to each member; a permute sends S per pair.  Then `mtfc inspect
--processes N` on a matmul compiled in each mode.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import mtfc as mtf
from mtfc import ir as mir
from mtfc.cli import main
from mtfc.compiler import compile_function
from mtfc.emit.artifact import write_module
from mtfc.errors import MtfcError
from mtfc.mesh import Mesh
from mtfc.passes import comm_analysis, process_analysis

MESH = Mesh.parse("rows:2,cols:4")
F32 = 4

# a: tensor<4x8xf32> = 128 bytes, b: tensor<8x8xf32> = 256 bytes; one collective of each kind
from test_inspect import PER_DEVICE_MODULE as MODULE  # noqa: E402



@pytest.fixture(scope="module")
def collectives():
    return comm_analysis.module_collectives(mir.parse_module(MODULE, mir.new_context()))


def crossings(collectives, n):
    report = process_analysis.process_report(collectives, MESH, n, "explicit")
    return [(o["crosses"], o["processes"], o["bytes_per_device"], o["bytes_total"]) for o in report["ops"]], report


def test_two_processes_rows_crosses_cols_stays(collectives):
    got, report = crossings(collectives, 2)
    assert got == [
        (True, 2, 384, 4 * 2 * 384),    # all_reduce over rows, S = 384, b = 2*1/2*384: every device sends b across
        (False, 1, 0, 0),               # reduce_scatter over cols: inside each process
        (True, 2, 64, 8 * 64),          # all_to_all over 8: 4 of 8 members elsewhere, 4/8 * 128 each
        (False, 1, 0, 0),               # permute 0->1->2->3->0: all in process 0
        (False, 1, 0, 0),               # all_gather over cols
    ]
    assert report["total"] == {"count": 5, "crossing": 2, "unknown": 0,
                               "bytes_per_device": 384 + 64, "bytes_total": 3072 + 512}
    assert report["by_axes"]["rows"] == {"count": 1, "crossing": 1, "bytes_per_device": 384, "bytes_total": 3072}
    assert report["by_axes"]["cols"] == {"count": 3, "crossing": 0, "bytes_per_device": 0, "bytes_total": 0}
    assert report["by_axes"]["rows+cols"]["bytes_total"] == 512
    assert (report["num_processes"], report["devices_per_process"], report["placement"]) == (2, 4, "process-major")
    assert [(a["axis"], a["processes"], a["placement"]) for a in report["axes"]] == [
        ("rows", 2, "across"), ("cols", 1, "inside")]


def test_four_processes_split_cols_in_halves(collectives):
    # processes: {0,1} {2,3} {4,5} {6,7}
    got, report = crossings(collectives, 4)
    assert got == [
        (True, 2, 384, 3072),
        (True, 2, 96, 2 * (2 * 96)),    # cols group of 4 spans 2 processes: the ring crosses twice, b = 3/4*128
        (True, 4, 96, 8 * 96),          # 6 of 8 members elsewhere: 6/8 * 128
        (True, 2, 128, 2 * 128),        # pairs 1->2 and 3->0 cross, S = 128 each
        (True, 2, 96, 2 * (2 * 96)),    # all_gather, S = the gathered 128 bytes
    ]
    assert report["total"]["crossing"] == 5
    assert report["total"]["bytes_per_device"] == 384 + 96 + 96 + 128 + 96
    assert report["total"]["bytes_total"] == 3072 + 384 + 768 + 256 + 384
    assert [(a["axis"], a["processes"], a["placement"]) for a in report["axes"]] == [
        ("rows", 2, "across"), ("cols", 2, "partly")]


def test_one_device_per_process_every_ring_crosses_at_every_member(collectives):
    got, _ = crossings(collectives, 8)
    assert got[1] == (True, 4, 96, 2 * 4 * 96)      # every ring hop crosses: 8 senders of b
    assert got[2] == (True, 8, 112, 8 * 112)        # 7/8 * 128
    assert got[3] == (True, 2, 128, 4 * 128)


def test_one_process_nothing_crosses(collectives):
    got, report = crossings(collectives, 1)
    assert all(g == (False, 1, 0, 0) for g in got)
    assert report["total"]["crossing"] == 0 and report["total"]["bytes_total"] == 0


def test_gspmd_iota_groups_from_hlo():
    hlo = """HloModule m
%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}
ENTRY %main (param: f32[8,32]) -> f32[8,4] {
  %param = f32[8,32]{1,0} parameter(0)
  %ar = f32[8,32]{1,0} all-reduce(%param), channel_id=1, replica_groups=[2,4]<=[8], use_global_device_ids=true, to_apply=%add
  %slice = f32[8,4]{1,0} slice(%ar), slice={[0:8], [0:4]}
  %ag = f32[8,8]{1,0} all-gather(%slice), channel_id=2, replica_groups=[4,2]<=[2,4]T(1,0), dimensions={1}, use_global_device_ids=true
  ROOT %cp = f32[8,4]{1,0} collective-permute(%slice), channel_id=3, source_target_pairs={{0,4},{4,0}}
}
"""
    found = comm_analysis.hlo_collectives(hlo, MESH)
    assert [c.axes for c in found] == [["cols"], ["rows"], ["rows"]]
    report = process_analysis.process_report(found, MESH, 2, "gspmd")
    gathered = 2 * 8 * 4 * F32                     # S of the all-gather: 256 bytes, b = 1/2 * 256
    assert [(o["crosses"], o["bytes_per_device"], o["bytes_total"]) for o in report["ops"]] == [
        (False, 0, 0),
        (True, gathered // 2, 4 * 2 * (gathered // 2)),  # 4 rows pairs, both members send b
        (True, 128, 2 * 128),                      # 0->4 and 4->0, 8x4 f32 each
    ]


def test_unreadable_groups_are_unknown_not_zero():
    unread = comm_analysis.Collective(kind="all_reduce", op="all-reduce", location="x", axes=None, n=0,
                                      bytes=64, bus_bytes=0.0, shape="f32[16]", groups=[])
    off_mesh = comm_analysis.Collective(kind="all_gather", op="all-gather", location="y", axes=None, n=2,
                                        bytes=64, bus_bytes=32.0, shape="f32[8]", groups=[[0, 9]])
    report = process_analysis.process_report([unread, off_mesh], MESH, 2, "gspmd")
    assert [o["crosses"] for o in report["ops"]] == [None, None]
    assert report["total"] == {"count": 2, "crossing": 0, "unknown": 2, "bytes_per_device": 0, "bytes_total": 0}


def test_broadcast_is_a_chain_by_process():
    # groups {0,1,4,5} {2,3,6,7} over processes {0..3} {4..7}: one crossing hop of S each
    c = comm_analysis.Collective(kind="collective_broadcast", op="stablehlo.collective_broadcast", location="z",
                                 axes=None, n=4, bytes=100, bus_bytes=100.0, shape="f32[25]",
                                 groups=[[0, 1, 4, 5], [2, 3, 6, 7]])
    assert process_analysis.crossing(c, MESH, 2).as_dict() == {
        "crosses": True, "processes": 2, "bytes_per_device": 100, "bytes_total": 2 * 100}
    assert process_analysis.crossing(c, MESH, 8).as_dict() == {
        "crosses": True, "processes": 4, "bytes_per_device": 100, "bytes_total": 2 * 3 * 100}


def test_an_axis_that_only_some_groups_cross_is_partly():
    # 3x2 over 2 processes of 3: cols groups {0,1} {2,3} {4,5} -> {2,3} straddles.
    mesh = Mesh.parse("a:3,b:2")
    assert [(x["axis"], x["processes"], x["placement"]) for x in process_analysis.axis_placement(mesh, 2)] == [
        ("a", 2, "partly"), ("b", 2, "partly")]


@pytest.mark.parametrize("n, partitioning, words", [
    (0, "explicit", "process count 0: give at least 1"),
    (-2, "explicit", "process count -2: give at least 1"),
    (3, "explicit", "process count 3 does not divide the mesh's 8 devices (rows:2,cols:4)"),
    (2, "none", "process count 2: the module is not partitioned"),
])
def test_bad_process_counts(n, partitioning, words):
    with pytest.raises(MtfcError, match="^" + words.replace("(", r"\(").replace(")", r"\)")):
        process_analysis.check_process_count(MESH, n, partitioning)


# ------------------------------------------------------------------ the CLI

B, D, H = mtf.Dim("batch", 8), mtf.Dim("d", 16), mtf.Dim("h", 32)


def matmul(x, w):
    return {"y": mtf.einsum([x, w], [B, H])}


def matmul_module(tmp_path, layout, mode):
    path = tmp_path / f"{mode}-{layout.replace(':', '_').replace(',', '-')}.mlir"
    write_module(compile_function(matmul, {"x": mtf.Input([B, D]), "w": mtf.Input([D, H])}, mesh=str(MESH),
                                  layout=layout, mode=mode), str(path))
    return path


def inspect(path, *args):
    return CliRunner().invoke(main, ["inspect", str(path), *map(str, args)])


@pytest.mark.parametrize("mode", ["explicit", "shardy", "gspmd"])
def test_cli_places_the_matmul_all_reduce_in_every_mode(tmp_path, mode):
    # sum over d, split over cols: one all_reduce over cols of the local y[batch/rows, h],
    # S = 4*32*4 = 512 bytes, b = 2*3/4*512 = 768.
    path = matmul_module(tmp_path, "batch:rows,d:cols", mode)
    two = json.loads(inspect(path, "--json", "--processes", 2).output)["processes"]
    assert [o["kind"] for o in json.loads(inspect(path, "--json").output)["collectives"]["ops"]] == ["all_reduce"]
    assert two["ops"] == [{"crosses": False, "processes": 1, "bytes_per_device": 0, "bytes_total": 0}]
    assert two["error"] is None
    # 4 processes of 2: each cols ring {0..3}, {4..7} spans two processes and crosses twice
    four = json.loads(inspect(path, "--json", "--processes", 4).output)["processes"]
    assert four["ops"] == [{"crosses": True, "processes": 2, "bytes_per_device": 768, "bytes_total": 2 * 2 * 768}]
    assert four["by_axes"] == {"cols": {"count": 1, "crossing": 1, "bytes_per_device": 768, "bytes_total": 3072}}
    text = inspect(path, "--processes", 4)
    assert text.exit_code == 0, text.output
    assert "crosses processes: 1 of 1 collectives, 3,072 bytes per step (3.0 KiB; 768 bytes per device)" in text.output
    assert "process-major: process p holds mesh devices 2p..2p+1" in text.output


def test_cli_a_rows_sum_crosses_two_processes(tmp_path):
    # d over rows: the all_reduce over rows of y[batch/cols, h] = 2*32*4 = 256 bytes, b = 256;
    # every device's pair partner is in the other process.
    report = json.loads(inspect(matmul_module(tmp_path, "batch:cols,d:rows", "explicit"), "--json",
                                "--processes", 2).output)
    assert report["collectives"]["ops"][0]["axes"] == ["rows"]
    assert report["processes"]["total"] == {"count": 1, "crossing": 1, "unknown": 0,
                                            "bytes_per_device": 256, "bytes_total": 8 * 256}
    assert json.loads(inspect(matmul_module(tmp_path, "batch:cols,d:rows", "explicit"), "--json").output)[
        "processes"] is None


@pytest.mark.parametrize("args, mode, message", [
    (["--processes", 0], "explicit", "error: --processes 0: give at least 1"),
    (["--processes", 3], "explicit", "error: --processes 3 does not divide the mesh's 8 devices (rows:2,cols:4)"),
    (["--processes", 2], "none", "error: --processes 2: the module is not partitioned (partitioning 'none')"),
    (["--processes", 2, "--no-xla"], "gspmd", "error: --processes 2: a gspmd module's collectives are the ones "
                                              "XLA compiles; drop --no-xla"),
])
def test_cli_bad_process_counts_are_one_line(tmp_path, args, mode, message):
    result = inspect(matmul_module(tmp_path, "batch:rows,d:cols", mode), *args)
    assert result.exit_code == 1
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith(message), result.output
