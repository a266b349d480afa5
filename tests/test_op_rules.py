"""The op-rule registry (mtfc/passes/op_rules.py) is the one place that knows
ops by name: every op the examples compile to has a rule, no pass module keeps
its own list of StableHLO op names, and representative ops' factors are what
their semantics say."""

from __future__ import annotations

import ast
import os
import pathlib
import warnings

import pytest

from mtfc import ir as mir
from mtfc.compiler import compile_file
from mtfc.passes import op_rules
from mtfc.passes.op_rules import PASS, SUM, WINDOW, Factor, Window

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = {
    "mlp.py": "batch:rows,d_hidden:cols",
    "transformer.py": "batch:rows,heads:cols,d_ff:cols",
    "moe.py": "batch:rows,experts:rows,d_ff:cols,expert_ff:cols",
}
STRUCTURE = {"builtin.module", "func.func"}  # containers, not ops with dims


@pytest.mark.parametrize("train", [False, True], ids=["forward", "train"])
@pytest.mark.parametrize("mode", ["none", "gspmd", "explicit", "shardy"])
@pytest.mark.parametrize("example", list(EXAMPLES))
def test_every_op_the_examples_compile_to_has_a_rule(example, mode, train):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = compile_file(os.path.join(ROOT, "examples", example), layout=EXAMPLES[example], mode=mode,
                              train=train)
    seen = {op.name for op in mir.walk(module.operation)}
    assert seen - STRUCTURE, "walked nothing"
    assert not {n for n in seen - STRUCTURE if op_rules.rule_of(n) is None}


# Module-level tables of StableHLO op names allowed outside op_rules, and why.
ALLOWED = {
    ("device_values.py", "_BINARY"): "an interpreter: each op's NumPy semantics, which op_rules does not hold",
}


def _op_name_tables(path: pathlib.Path) -> list[str]:
    """Module-level assignments whose value spells two or more "stablehlo.*"
    names, or builds them with an f-string."""
    out = []
    for node in ast.parse(path.read_text()).body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
            continue
        literals = [n for n in ast.walk(node.value)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.startswith("stablehlo.")]
        built = [n for n in ast.walk(node.value) if isinstance(n, ast.JoinedStr)
                 and any(isinstance(v, ast.Constant) and str(v.value).startswith("stablehlo.") for v in n.values)]
        if len(literals) >= 2 or built:
            target = node.targets[0] if isinstance(node, ast.Assign) else node.target
            out.append(ast.unparse(target))
    return out


def test_no_pass_module_keeps_its_own_op_list():
    found = []
    for path in sorted((ROOT / "mtfc" / "passes").rglob("*.py")):
        if path.name == "op_rules.py":
            continue
        found += [f"{path.relative_to(ROOT)}: {name}" for name in _op_name_tables(path)
                  if (path.name, name) not in ALLOWED]
    assert found == []


def test_the_grep_finds_an_op_list():
    # the scan above can fail: it sees the tables op_rules itself keeps
    assert "REDUCERS" in _op_name_tables(ROOT / "mtfc" / "passes" / "op_rules.py")


def test_the_allowed_tables_are_elementwise_ops():
    from mtfc.passes.device_values import _BINARY

    assert set(_BINARY) <= op_rules.names(family="elementwise")


def test_derived_lists():
    from mtfc.passes import comm_analysis, fuse_collectives

    assert comm_analysis.KINDS == ("all_reduce", "all_gather", "reduce_scatter", "all_to_all",
                                   "collective_permute", "collective_broadcast")
    assert fuse_collectives.COLLECTIVES == {f"stablehlo.{k}" for k in comm_analysis.KINDS}
    assert op_rules.names(result_dims_of_operand=True) >= fuse_collectives.COLLECTIVES | {
        "stablehlo.dynamic_slice", "stablehlo.copy", "stablehlo.optimization_barrier"}
    shardy = op_rules.names(shardy=True)
    assert {"stablehlo.dot_general", "stablehlo.gather", "stablehlo.slice"} <= shardy
    assert not shardy & fuse_collectives.COLLECTIVES


OPS = """
module @m {
  func.func @main(%x: tensor<4x6xf32>, %w: tensor<3x6x5xf32>, %t: tensor<10x6xf32>, %i: tensor<4x2xi32>,
                  %b: tensor<6xf32>, %z: tensor<f32>, %p: tensor<i1>) -> tensor<f32> {
    %dot = stablehlo.dot_general %x, %w, contracting_dims = [1] x [1] : (tensor<4x6xf32>, tensor<3x6x5xf32>) -> tensor<4x3x5xf32>
    %red = stablehlo.reduce(%x init: %z) applies stablehlo.maximum across dimensions = [0] : (tensor<4x6xf32>, tensor<f32>) -> tensor<6xf32>
    %bc = stablehlo.broadcast_in_dim %b, dims = [1] : (tensor<6xf32>) -> tensor<4x6xf32>
    %tr = stablehlo.transpose %x, dims = [1, 0] : (tensor<4x6xf32>) -> tensor<6x4xf32>
    %sl = stablehlo.slice %x [0:4, 1:5:2] : (tensor<4x6xf32>) -> tensor<4x2xf32>
    %pd = stablehlo.pad %x, %z, low = [0, 2], high = [0, 1], interior = [0, 0] : (tensor<4x6xf32>, tensor<f32>) -> tensor<4x9xf32>
    %cat = stablehlo.concatenate %x, %x, dim = 0 : (tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<8x6xf32>
    %g = "stablehlo.gather"(%t, %i) <{dimension_numbers = #stablehlo.gather<offset_dims = [2], collapsed_slice_dims = [0], start_index_map = [0], index_vector_dim = 2>, indices_are_sorted = false, slice_sizes = array<i64: 1, 6>}> : (tensor<10x6xf32>, tensor<4x2xi32>) -> tensor<4x2x6xf32>
    %s = stablehlo.select %p, %x, %x : (tensor<i1>, tensor<4x6xf32>, tensor<4x6xf32>) -> tensor<4x6xf32>
    return %z : tensor<f32>
  }
}
"""


@pytest.fixture(scope="module")
def ops():
    module = mir.parse_module(OPS, mir.new_context())
    with module.context:
        by_name = {}
        for op in mir.body_ops(mir.entry_function(module)):
            by_name.setdefault(op.name.removeprefix("stablehlo."), op)
        yield {name: op_rules.factors_of(op) for name, op in by_name.items() if name != "func.return"}


def test_dot_general_factors(ops):
    f = ops["dot_general"]  # [4,6] x [3,6,5] contracting 1 x 1
    assert f.factors == (Factor(PASS, 4), Factor(PASS, 3), Factor(PASS, 5), Factor(SUM, 6))
    assert f.operands == ((0, 3), (1, 3, 2)) and f.results == ((0, 1, 2),) and f.reducer == "sum"


def test_reduce_factors(ops):
    f = ops["reduce"]
    assert f.factors == (Factor(SUM, 4), Factor(PASS, 6)) and f.reducer == "max"
    assert f.operands == ((0, 1), ()) and f.results == ((1,),)


def test_shape_moving_factors(ops):
    assert ops["broadcast_in_dim"].operands == ((1,),) and ops["broadcast_in_dim"].results == ((0, 1),)
    assert ops["transpose"].operands == ((1, 0),) and ops["transpose"].results == ((0, 1),)


def test_window_factors(ops):
    assert ops["slice"].factors == (Factor(PASS, 4), Factor(WINDOW, 2, Window(1, stride=2, pad_lo=-1, pad_hi=-1)))
    assert ops["pad"].factors == (Factor(PASS, 4), Factor(WINDOW, 9, Window(1, pad_lo=2, pad_hi=1)))
    assert ops["pad"].operands == ((0, 1), ())
    assert ops["concatenate"].factors[0].kind == WINDOW and ops["concatenate"].operands == ((0, 1), (0, 1))


def test_lookup_and_elementwise_factors(ops):
    g = ops["gather"]  # table [10, 6] looked up along 0 by indices [4, 2]
    assert g.factors == (Factor(PASS, 4), Factor(PASS, 2), Factor(PASS, 6), Factor(SUM, 10))
    assert g.operands == ((3, 2), (0, 1)) and g.results == ((0, 1, 2),) and g.reducer == "sum"
    s = ops["select"]  # a scalar predicate maps to nothing
    assert s.operands == ((), (0, 1), (0, 1)) and s.results == ((0, 1),)
