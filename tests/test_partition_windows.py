"""Slices, pads, concatenations and shifts along a dim split over several
devices: explicit mode moves windows between neighbours (collective_permute,
no all_gather); every case is checked against NumPy and the unsharded run."""

from __future__ import annotations

import numpy as np
import pytest

import mtfc as mtf
from conftest import assert_close, run_model
from mtfc.compiler import compile_function

B, N = 4, 16
CASES = [
    # (name, mesh, layout, op, numpy reference)
    ("slice-inner", "p:4", "d:p", lambda x: mtf.slice(x, 4, 8, "d"), lambda x: x[:, 4:12]),
    ("slice-head", "p:4", "d:p", lambda x: mtf.slice(x, 0, 4, "d"), lambda x: x[:, 0:4]),
    ("slice-tail", "rows:2,cols:4", "d:cols,batch:rows", lambda x: mtf.slice(x, 8, 8, "d"), lambda x: x[:, 8:]),
    ("slice-odd-start", "p:2", "d:p", lambda x: mtf.slice(x, 3, 10, "d"), lambda x: x[:, 3:13]),
    ("slice-two-axes", "rows:2,cols:2", "d:rows+cols", lambda x: mtf.slice(x, 2, 12, "d"), lambda x: x[:, 2:14]),
    ("pad", "p:4", "d:p", lambda x: mtf.pad(x, (3, 5), "d", value=2.5),
     lambda x: np.pad(x, ((0, 0), (3, 5)), constant_values=2.5)),
    ("pad-before", "rows:2,cols:4", "d:cols", lambda x: mtf.pad(x, (8, 0), "d"),
     lambda x: np.pad(x, ((0, 0), (8, 0)))),
    ("shift+3", "p:4", "d:p", lambda x: mtf.shift(x, 3, "d"), lambda x: np.pad(x, ((0, 0), (3, 0)))[:, :N]),
    ("shift-5", "p:4", "d:p", lambda x: mtf.shift(x, -5, "d"), lambda x: np.pad(x, ((0, 0), (0, 5)))[:, 5:]),
    ("roll+7", "rows:2,cols:4", "d:cols", lambda x: mtf.shift(x, 7, "d", wrap=True), lambda x: np.roll(x, 7, 1)),
    ("concat-self", "p:4", "d:p", lambda x: mtf.concat([x, mtf.exp(x)], "d"),
     lambda x: np.concatenate([x, np.exp(x)], 1)),
    ("concat-uneven", "p:2", "d:p",
     lambda x: mtf.concat([mtf.slice(x, 0, 6, "d"), x, mtf.slice(x, 0, 2, "d")], "d"),
     lambda x: np.concatenate([x[:, :6], x, x[:, :2]], 1)),
]


@pytest.mark.parametrize("name,mesh,layout,op,reference", CASES, ids=[c[0] for c in CASES])
def test_window_ops_along_split_dim(name, mesh, layout, op, reference):
    def model(x):
        return {"y": op(x)}

    inputs = {"x": mtf.Input([mtf.Dim("batch", B), mtf.Dim("d", N)])}
    sharded, unsharded, data = run_model(model, inputs, mesh=mesh, layout=layout, mode="explicit")
    want = reference(np.asarray(data["x"]))
    assert_close(sharded["y"], want)
    assert_close(unsharded["y"], want)


@pytest.mark.parametrize("name,mesh,layout,op,reference", CASES[:7], ids=[c[0] for c in CASES[:7]])
def test_window_ops_do_not_gather(name, mesh, layout, op, reference):
    def model(x):
        return {"y": op(x)}

    module = compile_function(model, {"x": mtf.Input([mtf.Dim("batch", B), mtf.Dim("d", N)])},
                              mesh=mesh, layout=layout, mode="explicit")
    text = str(module)
    program = text[: text.index("module @mtfc.reference")]
    assert "all_gather" not in program
    # slice [3:13] of 16 on 2 devices: each reads only its own block
    assert ("collective_permute" in program) == (name != "slice-odd-start")
