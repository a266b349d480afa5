"""The partition pass's first step (`mtfc.passes.partition.prepare`): a
module with sharding annotations is stripped op by op, one without gets only
its module attributes edited -- and both partition to the same program."""

import os

from mtfc import ir as mir
from mtfc.compiler import compile_file
from mtfc.passes.manager import run_passes
from mtfc.passes.partition.prepare import annotated

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "mlp.py")


def _module(mode):
    return compile_file(EXAMPLE, mode=mode, context=mir.new_context())


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
