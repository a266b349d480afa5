"""Loops (``stablehlo.while``, docs/IR.md "Loops") in gspmd and shardy mode:
each hand-written loop module (tests/loop_modules.py) partitioned by
`attach-shardings` (XLA's partitioner) and by `sdy-partition` (Shardy) under
several layouts computes what the unsharded program computes and what an
independent NumPy reference computes; a split loop dim is refused in one
line; the CLI's ``mtfc run --check`` passes on a partitioned loop module."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_close
from loop_modules import mlp, mlp_reference, reverse, reverse_reference, shift, shift_reference
from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import LayoutRules
from mtfc.passes import PIPELINES, run_passes
from mtfc.runtime.execute import Program

MODES = ("gspmd", "shardy")


def _module(text: str, layout: str, param_layout: str | None = None):
    module = mir.parse_module(text, mir.new_context())
    mir.set_mesh_and_layout(module, mir.module_mesh(module), LayoutRules.parse(layout),
                            LayoutRules.parse(param_layout) if param_layout is not None else None)
    return module


def _check(text: str, reference, mode: str, layout: str, param_layout: str | None = None):
    """Partition `text` under `layout` in `mode`; its outputs against the
    unsharded program's and against `reference` (NumPy, float64)."""
    module = _module(text, layout, param_layout)
    run_passes(module, PIPELINES[mode])
    program = Program(module)
    data = program.synthesize_inputs(0)
    sharded = program.run(data).outputs
    unsharded = Program(module, unsharded=True).run(data).outputs
    want = reference(data)
    assert set(sharded) == set(want)
    for name, expected in want.items():
        assert_close(sharded[name], unsharded[name])
        assert_close(sharded[name], expected)
    return module


MLP_LAYOUTS = ["batch:rows,d_ff:cols", "d_model:rows,d_ff:cols", "batch:rows+cols", "d_ff:rows+cols", ""]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", MLP_LAYOUTS)
def test_mlp_loop(mode, layout):
    _check(mlp(3), mlp_reference, mode, layout)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["batch:rows,d_ff:cols", "d_model:cols", "batch:cols,d_model:rows"])
def test_reverse_loop_writes_stacked_output(mode, layout):
    _check(reverse(4), reverse_reference, mode, layout)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout, param_layout", [
    ("batch:rows", "d_model:rows"),
    ("batch:rows,d_ff:cols", "d_model:rows,d_ff:cols"),
    ("batch:cols", "d_model:cols,d_ff:rows"),
])
def test_fsdp_param_layout_in_a_loop(mode, layout, param_layout):
    """Stacked parameters stored split along d_model (``mtfc.param_layout``)
    are carried split and gathered at use inside the body."""
    module = _check(mlp(4, param_layout=param_layout), mlp_reference, mode, layout, None)
    assert str(mir.module_param_layout(module)) == str(LayoutRules.parse(param_layout))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("layout", ["d_model:cols", "batch:rows,d_model:cols", "d_in:rows"])
def test_composite_in_a_loop_body(mode, layout):
    _check(shift(2), shift_reference, mode, layout)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rule, param_rule, which", [
    ("layers:rows", None, "layout rule layers:rows"),
    ("layers:cols", None, "layout rule layers:cols"),
    ("batch:rows", "layers:cols", "parameter layout rule layers:cols"),
])
def test_split_loop_dim_is_refused_in_one_line(mode, rule, param_rule, which):
    module = _module(mlp(4), rule, param_rule)
    with pytest.raises(MtfcError) as e:
        run_passes(module, PIPELINES[mode])
    text = str(e.value)
    assert text.splitlines() == [text]
    assert text.startswith(which) or f" {which} " in text or f": {which} " in text, text
    assert "'layers'" in text and "loop at" in text


def test_gspmd_body_ops_carry_shardings_and_while_none():
    module = _module(mlp(3), "batch:rows,d_ff:cols")
    run_passes(module, PIPELINES["gspmd"])
    loop = next(op for op in mir.walk_ops(mir.entry_function(module)) if op.name == "stablehlo.while")
    assert "mhlo.sharding" not in loop.attributes  # XLA bug: attach_shardings._LOOP_SHARDING_BUG
    body = [op for op in mir.walk_ops(mir.entry_function(module))
            if op.parent is not None and op.name not in ("stablehlo.return",) and op.parent.name == "stablehlo.while"]
    assert body and all("mhlo.sharding" in op.attributes for op in body)
    dot = next(op for op in body if op.name == "stablehlo.dot_general")
    assert str(dot.attributes["mhlo.sharding"]) == '"{devices=[2,4]<=[8]}"'


def test_shardy_body_is_local_and_named():
    module = _module(reverse(4), "batch:rows,d_ff:cols")
    run_passes(module, PIPELINES["shardy"])
    fn = mir.entry_function(module)
    loop = next(op for op in mir.walk_ops(fn) if op.name == "stablehlo.while")
    body = loop.regions[1].blocks[0]
    assert [str(a.type) for a in body.arguments] == [str(x.type) for x in loop.operands]
    assert str(body.arguments[4].type) == "tensor<4x4x8xf32>"  # hs [layers, batch/rows, d_ff/cols]
    for op in body.operations:
        if op.name != "stablehlo.return":
            assert mir.DIMS in op.attributes, op


@pytest.mark.parametrize("mode", MODES)
def test_cli_run_check(tmp_path, mode):
    src = tmp_path / "loop.mlir"
    src.write_text(reverse(4))
    out = tmp_path / f"loop-{mode}.mlir"
    cli = [sys.executable, "-m", "mtfc.cli"]
    subprocess.run([*cli, "opt", str(src), "--pipeline", mode, "--layout", "batch:rows,d_ff:cols", "-o", str(out)],
                   check=True, capture_output=True, text=True)
    run = subprocess.run([*cli, "run", str(out), "--check", "--repeat", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "check: passed" in run.stdout


def test_hlo_text_attributes_loop_collectives_to_the_trip_count():
    """XLA's compiled HLO of a gspmd loop: the body's all-reduce (the second
    dot sums over the split d_ff) sits in the while body computation, which
    runs known_trip_count (4) times; the cond 5 times; the entry once."""
    from mtfc.passes import hlo_text

    module = _module(reverse(4), "batch:rows,d_ff:cols")
    run_passes(module, PIPELINES["gspmd"])
    text = Program(module).executable.hlo_modules()[0].to_string()
    counts = hlo_text.execution_counts(text)
    found, _ = hlo_text.instructions(text)
    loop = next(i for i in found if i.opcode == "while")
    assert hlo_text.known_trip_count(loop) == 4
    body = hlo_text.attr(loop.attrs, "body").lstrip("%")
    cond = hlo_text.attr(loop.attrs, "condition").lstrip("%")
    assert counts[hlo_text.entry_computation(text)] == 1 and counts[body] == 4 and counts[cond] == 5
    reduces = [i for i in found if i.opcode in ("all-reduce", "all-reduce-start")]
    assert reduces and all(i.computation == body for i in reduces)


def test_hlo_text_unknown_trip_count_is_none():
    from mtfc.passes import hlo_text

    text = """HloModule m

%body (p: (s32[], f32[4])) -> (s32[], f32[4]) {
  %p = (s32[], f32[4]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[4] get-tuple-element(%p), index=1
  %ar = f32[4] all-reduce(%x), replica_groups={{0,1}}, to_apply=%add
  ROOT %t = (s32[], f32[4]) tuple(%i, %ar)
}

%cond (q: (s32[], f32[4])) -> pred[] {
  %q = (s32[], f32[4]) parameter(0)
  ROOT %c = pred[] constant(true)
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4] parameter(0)
  %z = s32[] constant(0)
  %t0 = (s32[], f32[4]) tuple(%z, %x)
  %w = (s32[], f32[4]) while(%t0), condition=%cond, body=%body
  %w2 = (s32[], f32[4]) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  ROOT %r = f32[4] get-tuple-element(%w), index=1
}
"""
    counts = hlo_text.execution_counts(text)
    assert counts["main"] == 1 and counts["body"] is None and counts["add"] is None
    found, _ = hlo_text.instructions(text)
    assert next(i for i in found if i.opcode == "all-reduce").computation == "body"
    assert [hlo_text.known_trip_count(i) for i in found if i.opcode == "while"] == [None, 3]
    one = text.replace("%w = (s32[], f32[4]) while(%t0), condition=%cond, body=%body\n", "")
    one = one.replace("get-tuple-element(%w)", "get-tuple-element(%w2)")
    assert hlo_text.execution_counts(one)["body"] == 3 and hlo_text.execution_counts(one)["cond"] == 4


_ONE_HOT_IN_A_LOOP = """
module @r attributes {mtfc.layout = "batch:rows", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%ids: tensor<8xi32> {mtfc.dims = ["batch"], mtfc.name = "ids", mtfc.role = "input"},
                  %x: tensor<8x16xf32> {mtfc.dims = ["batch", "vocab"], mtfc.init = "normal:1.0", mtfc.name = "x", mtfc.role = "input"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "vocab"], mtfc.name = "y", mtfc.role = "output"}) {
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %r:3 = stablehlo.while(%i = %c0, %h = %x, %t = %ids) : tensor<i32>, tensor<8x16xf32>, tensor<8xi32>
      attributes {mtfc.dims = [[], ["batch", "vocab"], ["batch"]], mtfc.classes = ["activation", "activation", "activation"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 2 : i64}
    cond {
      %n = stablehlo.constant {mtfc.dims = []} dense<2> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    } do {
      %b = stablehlo.broadcast_in_dim %t, dims = [0] {mtfc.dims = ["batch", "vocab"]} : (tensor<8xi32>) -> tensor<8x16xi32>
      %io = stablehlo.iota dim = 1 {mtfc.dims = ["batch", "vocab"]} : tensor<8x16xi32>
      %eq = stablehlo.compare EQ, %b, %io {mtfc.dims = ["batch", "vocab"]} : (tensor<8x16xi32>, tensor<8x16xi32>) -> tensor<8x16xi1>
      %f = stablehlo.convert %eq {mtfc.dims = ["batch", "vocab"]} : (tensor<8x16xi1>) -> tensor<8x16xf32>
      %h2 = stablehlo.add %h, %f {mtfc.dims = ["batch", "vocab"]} : tensor<8x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %t : tensor<i32>, tensor<8x16xf32>, tensor<8xi32>
    }
    return %r#1 : tensor<8x16xf32>
  }
}
"""


def test_index_range_of_an_input_used_inside_a_loop():
    """An integer input carried into a loop and one-hot compared with an iota
    in the body gets the iota's range (mtfc.index_ranges follows it in)."""
    from mtfc import index_ranges

    module = mir.parse_module(_ONE_HOT_IN_A_LOOP, mir.new_context())
    with module.context:
        index_ranges.annotate(module)
    r = index_ranges.argument_ranges(module)["ids"]
    assert (r.lo, r.hi, r.dim) == (0, 16, "vocab")
    ids = np.array([0, 3, 15, 7, 1, 2, 9, 4], np.int32)
    x = np.random.default_rng(1).standard_normal((8, 16)).astype(np.float32)
    for mode in MODES:
        m = mir.parse_module(_ONE_HOT_IN_A_LOOP, mir.new_context())
        run_passes(m, PIPELINES[mode])
        assert_close(Program(m).run({"ids": ids, "x": x}).outputs["y"], x + 2 * np.eye(16)[ids])
