"""Corpus: malformed mesh and layout strings, and layout rules the model does
not use (docs/layouts.md, "Policy"): one error line naming the string or the
rule (and the nearest dim), exit status 1, no output written."""

from __future__ import annotations


import pytest

from corpus import MLP, fails, tiny_train_model
from mtfc.compiler import compile_function
from mtfc.errors import MtfcError
from mtfc.mesh import LayoutRules, Mesh
import mtfc as mtf

@pytest.mark.parametrize("flag, text, fragment", [
    ("--mesh", "rows:2,,cols:4", "mesh 'rows:2,,cols:4' has an empty item at character 8"),
    ("--mesh", "rows:2,cols:4,", "mesh 'rows:2,cols:4,' has an empty item at character 15"),
    ("--mesh", ";rows:8", "mesh ';rows:8' has an empty item at character 1"),
    ("--layout", "batch:rows;;", "layout 'batch:rows;;' has an empty item at character 12"),
    ("--layout", "batch:rows, ,d_hidden:cols", "layout 'batch:rows, ,d_hidden:cols' has an empty item at character 12"),
    ("--param-layout", ",d_hidden:cols", "layout ',d_hidden:cols' has an empty item at character 1"),
])
def test_empty_items_in_mesh_and_layout_strings(tmp_path, flag, text, fragment):
    fails(["compile", MLP, "-o", tmp_path / "m.mlir", flag, text], [fragment], folder=tmp_path)


def test_empty_strings_stay_one_device_and_no_rules():
    assert Mesh.parse("") == Mesh(()) and Mesh.parse("  ") == Mesh(())
    assert LayoutRules.parse("") == LayoutRules()
    assert Mesh.parse("rows:2;cols:4") == Mesh.parse("rows:2,cols:4")


@pytest.mark.parametrize("args, fragments", [
    (["--layout", "batchh:rows"], ["layout rule 'batchh:rows' names dim 'batchh'", "did you mean batch?",
                                    "--allow-unused-rules"]),
    (["--layout", "batch:rows,d_hiden:cols"], ["layout rule 'd_hiden:cols'", "did you mean d_hidden"]),
    (["--param-layout", "d_hiden:rows+cols"], ["parameter layout rule 'd_hiden:rows+cols'",
                                               "no parameter or optimizer state", "did you mean d_hidden"]),
    (["--param-layout", "batch:rows"], ["parameter layout rule 'batch:rows'", "no parameter or optimizer state"]),
    (["--layout", "tokens:rows"], ["layout rule 'tokens:rows'", "its dims: batch, d_hidden, d_in, d_out"]),
])
def test_unused_rule_is_an_error(tmp_path, args, fragments):
    fails(["compile", MLP, "-o", tmp_path / "m.mlir", *args], fragments, folder=tmp_path)


def test_unused_rule_in_train_step_param_layout(tmp_path):
    model = tiny_train_model(tmp_path)
    fails(["compile", model, "-o", tmp_path / "t.mlir", "--train", "--param-layout", "d_hiden:rows"],
          ["parameter layout rule 'd_hiden:rows'", "did you mean d_hidden"], folder=tmp_path)


def test_allow_unused_rules_is_recorded_and_checked_again_by_opt(tmp_path):
    from click.testing import CliRunner

    from mtfc.cli import main

    out = tmp_path / "m.mlir"
    result = CliRunner().invoke(main, ["compile", MLP, "-o", str(out), "--mode", "none",
                                       "--layout", "batch:rows,tokens:cols", "--allow-unused-rules"])
    assert result.exit_code == 0, result.stderr
    text = out.read_text()
    assert "mtfc.allow_unused_rules" in text and 'mtfc.layout = "batch:rows,tokens:cols"' in text
    # The recorded module runs and is verified as allowed.
    result = CliRunner().invoke(main, ["run", str(out), "--repeat", "1"])
    assert result.exit_code == 0, result.stderr
    # New rules through `opt --layout` are checked unless allowed again.
    fails(["opt", out, "--passes", "verify-names", "--layout", "batch:rows,other:cols"],
          ["layout rule 'other:cols'"], folder=tmp_path)
    result = CliRunner().invoke(main, ["opt", str(out), "--passes", "verify-names", "--layout",
                                       "batch:rows,other:cols", "--allow-unused-rules"])
    assert result.exit_code == 0, result.stderr


def test_allow_unused_rules_keyword_in_compile_function_and_entry():
    batch, d = mtf.Dim("batch", 8), mtf.Dim("d", 4)

    def model(x):
        return {"y": mtf.tanh(x)}

    inputs = {"x": mtf.Input([batch, d])}
    with pytest.raises(MtfcError, match="layout rule 'tokens:cols'"):
        compile_function(model, inputs, mesh="rows:2,cols:4", layout="batch:rows,tokens:cols")
    module = compile_function(model, inputs, mesh="rows:2,cols:4", layout="batch:rows,tokens:cols",
                              allow_unused_rules=True)
    assert "mtfc.allow_unused_rules" in module.operation.attributes
    entry = mtf.entry(inputs=inputs, mesh="rows:2,cols:4", layout="batch:rows,tokens:cols",
                      allow_unused_rules=True)(model)
    assert entry.allow_unused_rules
