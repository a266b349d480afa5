"""Loops over stacked layers (docs/IR.md, "Loops") in explicit mode: hand-written
``stablehlo.while`` modules, partitioned by ``mtfc opt --passes partition``
under data, tensor, both and FSDP layouts and run by ``mtfc run --check``
(the unsharded run agrees), with outputs compared to a NumPy loop."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import assert_close
from mtfc.cli import main

B, D, F, L = 8, 16, 32, 3

# The contract's 3-layer residual MLP: h += tanh(h @ wi[l]) @ wo[l].
MLP = """
module @loop_mlp attributes {mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "x", mtfc.role = "input"},
                  %w1: tensor<3x16x32xf32> {mtfc.dims = ["layers", "d_model", "d_ff"], mtfc.name = "wi", mtfc.role = "parameter"},
                  %w2: tensor<3x32x16xf32> {mtfc.dims = ["layers", "d_ff", "d_model"], mtfc.name = "wo", mtfc.role = "parameter"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"}) {
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %r:4 = stablehlo.while(%i = %c0, %h = %x, %a = %w1, %b = %w2) : tensor<i32>, tensor<8x16xf32>, tensor<3x16x32xf32>, tensor<3x32x16xf32>
      attributes {mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_model", "d_ff"], ["layers", "d_ff", "d_model"]],
                  mtfc.classes = ["activation", "activation", "param", "param"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}
    cond {
      %n = stablehlo.constant {mtfc.dims = []} dense<3> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    } do {
      %z = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
      %a1 = stablehlo.dynamic_slice %a, %i, %z, %z, sizes = [1, 16, 32] {mtfc.dims = ["layers", "d_model", "d_ff"]} : (tensor<3x16x32xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x32xf32>
      %a2 = stablehlo.reshape %a1 {mtfc.dims = ["d_model", "d_ff"]} : (tensor<1x16x32xf32>) -> tensor<16x32xf32>
      %b1 = stablehlo.dynamic_slice %b, %i, %z, %z, sizes = [1, 32, 16] {mtfc.dims = ["layers", "d_ff", "d_model"]} : (tensor<3x32x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x32x16xf32>
      %b2 = stablehlo.reshape %b1 {mtfc.dims = ["d_ff", "d_model"]} : (tensor<1x32x16xf32>) -> tensor<32x16xf32>
      %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_ff"]} : (tensor<8x16xf32>, tensor<16x32xf32>) -> tensor<8x32xf32>
      %t = stablehlo.tanh %u {mtfc.dims = ["batch", "d_ff"]} : tensor<8x32xf32>
      %v = stablehlo.dot_general %t, %b2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_model"]} : (tensor<8x32xf32>, tensor<32x16xf32>) -> tensor<8x16xf32>
      %h2 = stablehlo.add %h, %v {mtfc.dims = ["batch", "d_model"]} : tensor<8x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %a, %b : tensor<i32>, tensor<8x16xf32>, tensor<3x16x32xf32>, tensor<3x32x16xf32>
    }
    return %r#1 : tensor<8x16xf32>
  }
}
"""

# A reverse loop (a gradient loop's form): layer k = 2 - i, h = tanh(h @ w[k])
# renamed back to d_model, and h written into saved[k] of a carried zeros buffer.
REVERSE = """
module @loop_rev attributes {mtfc.layout = "", mtfc.mesh = "rows:2,cols:4", mtfc.partitioning = "none"} {
  func.func @main(%x: tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "x", mtfc.role = "input"},
                  %w: tensor<3x16x16xf32> {mtfc.dims = ["layers", "d_model", "d_out"], mtfc.name = "w", mtfc.role = "parameter"})
      -> (tensor<8x16xf32> {mtfc.dims = ["batch", "d_model"], mtfc.name = "y", mtfc.role = "output"},
          tensor<3x8x16xf32> {mtfc.dims = ["layers", "batch", "d_model"], mtfc.name = "saved", mtfc.role = "output"}) {
    %c0 = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
    %zeros = stablehlo.constant {mtfc.dims = ["layers", "batch", "d_model"]} dense<0.0> : tensor<3x8x16xf32>
    %r:4 = stablehlo.while(%i = %c0, %h = %x, %a = %w, %s = %zeros) : tensor<i32>, tensor<8x16xf32>, tensor<3x16x16xf32>, tensor<3x8x16xf32>
      attributes {mtfc.dims = [[], ["batch", "d_model"], ["layers", "d_model", "d_out"], ["layers", "batch", "d_model"]],
                  mtfc.classes = ["activation", "activation", "param", "activation"],
                  mtfc.loop_dim = "layers", mtfc.trip_count = 3 : i64}
    cond {
      %n = stablehlo.constant {mtfc.dims = []} dense<3> : tensor<i32>
      %lt = stablehlo.compare LT, %i, %n {mtfc.dims = []} : (tensor<i32>, tensor<i32>) -> tensor<i1>
      stablehlo.return %lt : tensor<i1>
    } do {
      %last = stablehlo.constant {mtfc.dims = []} dense<2> : tensor<i32>
      %k = stablehlo.subtract %last, %i {mtfc.dims = []} : tensor<i32>
      %z = stablehlo.constant {mtfc.dims = []} dense<0> : tensor<i32>
      %a1 = stablehlo.dynamic_slice %a, %k, %z, %z, sizes = [1, 16, 16] {mtfc.dims = ["layers", "d_model", "d_out"]} : (tensor<3x16x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<1x16x16xf32>
      %a2 = stablehlo.reshape %a1 {mtfc.dims = ["d_model", "d_out"]} : (tensor<1x16x16xf32>) -> tensor<16x16xf32>
      %u = stablehlo.dot_general %h, %a2, contracting_dims = [1] x [0] {mtfc.dims = ["batch", "d_out"]} : (tensor<8x16xf32>, tensor<16x16xf32>) -> tensor<8x16xf32>
      %t = stablehlo.tanh %u {mtfc.dims = ["batch", "d_out"]} : tensor<8x16xf32>
      %h2 = stablehlo.reshape %t {mtfc.dims = ["batch", "d_model"]} : (tensor<8x16xf32>) -> tensor<8x16xf32>
      %t1 = stablehlo.reshape %h2 {mtfc.dims = ["layers", "batch", "d_model"]} : (tensor<8x16xf32>) -> tensor<1x8x16xf32>
      %s2 = stablehlo.dynamic_update_slice %s, %t1, %k, %z, %z {mtfc.dims = ["layers", "batch", "d_model"]} : (tensor<3x8x16xf32>, tensor<1x8x16xf32>, tensor<i32>, tensor<i32>, tensor<i32>) -> tensor<3x8x16xf32>
      %one = stablehlo.constant {mtfc.dims = []} dense<1> : tensor<i32>
      %i2 = stablehlo.add %i, %one {mtfc.dims = []} : tensor<i32>
      stablehlo.return %i2, %h2, %a, %s2 : tensor<i32>, tensor<8x16xf32>, tensor<3x16x16xf32>, tensor<3x8x16xf32>
    }
    return %r#1, %r#3 : tensor<8x16xf32>, tensor<3x8x16xf32>
  }
}
"""


def mlp_reference(x, wi, wo):
    h = x.astype(np.float64)
    for layer in range(L):
        h = h + np.tanh(h @ wi[layer]) @ wo[layer]
    return {"y": h}


def reverse_reference(x, w):
    h, saved = x.astype(np.float64), np.zeros((L, B, D))
    for i in range(L):
        k = L - 1 - i
        h = np.tanh(h @ w[k])
        saved[k] = h
    return {"y": h, "saved": saved}


def mlp_inputs(rng):
    return {"x": rng.normal(size=(B, D)), "wi": rng.normal(size=(L, D, F)) * 0.25,
            "wo": rng.normal(size=(L, F, D)) * 0.17}


def reverse_inputs(rng):
    return {"x": rng.normal(size=(B, D)), "w": rng.normal(size=(L, D, D)) * 0.3}


def invoke(*args):
    result = CliRunner().invoke(main, list(map(str, args)))
    assert result.exit_code == 0, result.output
    return result.output


def partition_and_run(tmp_path, text, layout, param_layout, inputs):
    """`mtfc opt --passes partition` under the layouts, then `mtfc run --check`
    on the given inputs; (the outputs by name, the partitioned program's text)."""
    src, out = tmp_path / "loop.mlir", tmp_path / "loop.explicit.mlir"
    src.write_text(text)
    extra = ["--param-layout", param_layout] if param_layout else []
    invoke("opt", src, "--layout", layout, *extra, "--passes", "partition", "-o", out)
    np.savez(tmp_path / "in.npz", **{k: v.astype(np.float32) for k, v in inputs.items()})
    report = invoke("run", out, "--inputs", tmp_path / "in.npz", "--outputs", tmp_path / "out.npz", "--check")
    assert "check: passed" in report, report
    with np.load(tmp_path / "out.npz") as data:
        outputs = {k: data[k] for k in data.files}
    program = out.read_text()
    return outputs, program[: program.index("module @mtfc.reference")]


LAYOUTS = [
    # (id, layout, param layout, collectives the loop body must hold)
    ("data", "batch:rows+cols", None, []),
    ("tensor", "d_ff:cols", None, ["all_reduce"]),
    ("both", "batch:rows,d_ff:cols", None, ["all_reduce"]),
    ("fsdp", "batch:rows", "d_model:cols", ["all_gather"]),
    ("fsdp+tensor", "batch:rows,d_ff:cols", "d_model:rows", ["all_gather", "all_reduce"]),
]


def body_of(program: str) -> str:
    return program[program.index("} do {"): program.rindex("stablehlo.return")]


@pytest.mark.parametrize("name,layout,param_layout,collectives", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_stacked_mlp_under_layouts(tmp_path, rng, name, layout, param_layout, collectives):
    inputs = mlp_inputs(rng)
    outputs, program = partition_and_run(tmp_path, MLP, layout, param_layout, inputs)
    assert_close(outputs["y"], mlp_reference(**inputs)["y"])
    assert program.count("stablehlo.while") == 1
    body = body_of(program)
    for c in collectives:
        assert f"stablehlo.{c}" in body, (c, body)
    if not collectives:
        assert "all_" not in program and "collective" not in program
    if param_layout:  # the stacked parameters enter split: only one layer is gathered per trip
        assert "all_gather" not in program[: program.index("stablehlo.while")]


REVERSE_LAYOUTS = [
    # the carry h is split on d_model; the body's contraction over it leaves
    # d_out whole and renaming back to d_model cuts it again (a local slice)
    ("carry-split", "batch:rows,d_model:cols", None, ["all_reduce"]),
    # h whole; d_out split: renaming it back to the whole d_model gathers it
    ("body-split", "batch:rows,d_out:cols", None, ["all_gather"]),
    ("data", "batch:rows+cols", None, []),
    ("fsdp", "batch:cols", "d_model:rows", ["all_gather"]),
]


@pytest.mark.parametrize("name,layout,param_layout,collectives", REVERSE_LAYOUTS, ids=[c[0] for c in REVERSE_LAYOUTS])
def test_reverse_loop_writes_stacked_output(tmp_path, rng, name, layout, param_layout, collectives):
    inputs = reverse_inputs(rng)
    outputs, program = partition_and_run(tmp_path, REVERSE, layout, param_layout, inputs)
    want = reverse_reference(**inputs)
    assert_close(outputs["y"], want["y"])
    assert_close(outputs["saved"], want["saved"])
    body = body_of(program)
    assert "stablehlo.dynamic_update_slice" in body
    for c in collectives:
        assert f"stablehlo.{c}" in body, (c, body)
    if not collectives:
        assert "all_" not in program and "collective" not in program


def test_carry_split_on_a_dim_the_body_regathers(tmp_path, rng):
    # d_model split: the carry enters and leaves split, the body gathers nothing
    # of it but slices the whole d_out result back to its carried layout
    inputs = reverse_inputs(rng)
    _, program = partition_and_run(tmp_path, REVERSE, "d_model:cols", None, inputs)
    body = body_of(program)
    assert "all_gather" not in body and "all_to_all" not in body
    assert "stablehlo.replica_id" in body  # the local slice at this device's offset, made inside the body
    assert "tensor<i32>, tensor<8x4xf32>, tensor<3x4x16xf32>, tensor<3x8x4xf32>" in program


def test_split_loop_dim_is_refused_in_one_line(tmp_path):
    src = tmp_path / "loop.mlir"
    src.write_text(MLP)
    result = CliRunner().invoke(main, ["opt", str(src), "--layout", "layers:cols", "--passes", "partition"])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line]
    assert len(lines) == 1 and "layout rule layers:cols splits the dim 'layers'" in lines[0], result.output


def test_partition_refuses_a_split_loop_dim_itself():
    from mtfc import ir as mir
    from mtfc.errors import MtfcError
    from mtfc.passes.manager import run_passes

    with mir.new_context() as ctx:
        module = mir.parse_module(MLP.replace('mtfc.layout = ""', 'mtfc.layout = "layers:rows"'), ctx)
        with pytest.raises(MtfcError, match="splits the dim 'layers' that the loop"):
            run_passes(module, ["partition"])
