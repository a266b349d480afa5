"""`mtfc.runtime.bisect`: the first op where a sharded program and its
unsharded reference part ways.  A clean module has no such op; a module with
a fault put in on purpose (a collective removed, a wrong replica group) is
bisected to the op the fault breaks, with the collectives that fed it."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.cli import main
from mtfc.files.modules import read_module
from mtfc.runtime import bisect
from mtfc.runtime import devices as rt_devices
from mtfc.runtime.sources import as_source, materialize
from mtfc.runtime.synthetic import synthetic_sources

MESH, LAYOUT = "rows:2,cols:4", "batch:rows,d_hidden:cols"


def _compile(tmp_path, mode):
    out = tmp_path / f"mlp-{mode}.mlir"
    result = CliRunner().invoke(main, ["compile", "examples/mlp.py", "--mode", mode, "--mesh", MESH,
                                       "--layout", LAYOUT, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return read_module(str(out), mir.new_context())


def _bisect(module):
    rt_devices.ensure_cpu_devices(8)
    inputs = {k: materialize(as_source(v)) for k, v in synthetic_sources(mir.arguments(module), 0).items()}
    return bisect.bisect(module, inputs)


def _all_reduce(module, name):
    fn = mir.entry_function(module)
    return next(op for op in mir.body_ops(fn)
                if op.name == "stablehlo.all_reduce" and name in str(op.location))


@pytest.mark.parametrize("mode", ["explicit", "shardy", "gspmd"])
def test_a_clean_module_has_no_differing_op(tmp_path, mode):
    found = _bisect(_compile(tmp_path, mode))
    assert found.finding is None
    assert found.agreed > 40


@pytest.mark.parametrize("mode", ["explicit", "shardy"])
def test_a_removed_collective_is_found_at_its_op(tmp_path, mode):
    module = _compile(tmp_path, mode)
    with module.context:
        op = _all_reduce(module, "fc2/einsum")
        op.results[0].replace_all_uses_with(op.operands[0])
        op.erase()
    found = _bisect(module)
    f = found.finding
    assert f is not None and f.key[0] == "fc2/einsum" and f.ref_op.name == "stablehlo.dot_general"
    assert f.fed_by == []  # the all_reduce it needed is gone
    assert f.best.error > 1e-2
    lines = bisect.report_lines(found, mir.module_mesh(module))
    assert any("fc2/einsum" in line for line in lines) and any("no collective" in line for line in lines)
    assert any("different values of the same block" in line for line in lines)


def test_a_wrong_replica_group_is_found_with_the_collective(tmp_path):
    module = _compile(tmp_path, "explicit")
    with module.context:
        op = _all_reduce(module, "fc2/einsum")
        groups = np.array(ir.DenseIntElementsAttr(op.attributes["replica_groups"]))
        assert groups.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]
        op.attributes["replica_groups"] = ir.DenseIntElementsAttr.get(np.ascontiguousarray(groups.T))  # rows, not cols
    found = _bisect(module)
    f = found.finding
    assert f is not None and f.key[0] == "fc2/einsum"
    assert [c.kind for c in f.fed_by] == ["all_reduce"] and f.fed_by[0].axes == ["rows"]
    assert any("all_reduce over rows" in line for line in bisect.report_lines(found, mir.module_mesh(module)))
