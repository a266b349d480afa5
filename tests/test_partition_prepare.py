"""The partition pass's first step (`mtfc.passes.partition.prepare`): a
module with sharding annotations is stripped op by op, one without gets only
its module attributes edited -- and both partition to the same program; the
loops' dims are checked when the survey finds a loop."""

import os

import pytest
from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.compiler import compile_file
from mtfc.errors import MtfcError
from mtfc.passes.manager import run_passes
from mtfc.passes.partition.prepare import annotated, survey

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
EXAMPLE = os.path.join(EXAMPLES, "mlp.py")


def _module(mode, path=EXAMPLE, **kwargs):
    return compile_file(path, mode=mode, context=mir.new_context(), **kwargs)


def test_frontend_module_has_no_annotations_and_gspmd_module_has():
    plain, sharded = _module("none"), _module("gspmd")
    with plain.context:
        assert not annotated(plain)
    with sharded.context:
        assert annotated(sharded)
        assert "mhlo.sharding" in str(sharded)


def test_annotated_and_plain_modules_partition_alike():
    plain, sharded = _module("none"), _module("gspmd")
    run_passes(plain, ["partition"])
    run_passes(sharded, ["partition"])
    text = mir.program_text(sharded)
    assert "mhlo.sharding" not in str(sharded) and "mtfc.whole" not in str(sharded)
    assert text == mir.program_text(plain)
    with sharded.context:
        assert not annotated(mir.reference_module(sharded))


def test_survey_finds_loops_and_the_pass_checks_their_dims():
    path = os.path.join(EXAMPLES, "transformer.py")
    unrolled = _module("none", path)
    scanned = _module("none", path, defines={"SCAN": True})
    with unrolled.context:
        assert survey(unrolled) == (False, False)
    with scanned.context:
        assert survey(scanned) == (False, True)
    split = _module("none", path, defines={"SCAN": True})
    with split.context:
        split.operation.attributes[mir.LAYOUT] = ir.StringAttr.get("batch:rows,layers:cols")
    with pytest.raises(MtfcError, match="layout rule layers:cols splits the dim 'layers' that the loop"):
        run_passes(split, ["partition"])
