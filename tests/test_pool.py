"""max_pool / avg_pool over named spatial dims (1-D, 2-D, 3-D), forward and
gradient, against `jax.lax.reduce_window` and `jax.grad` of it (a reference
independent of mtfc), under batch, spatial, channel and mixed layouts on 1-,
2- and 3-axis meshes, in explicit, gspmd and shardy modes; every sharded
result is also compared with the unsharded run.  Explicit programs exchange
halos by collective_permute and never all_gather; bad input is one line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import mtfc as mtf
from conftest import assert_close, run_model
from mtfc.compiler import compile_function
from mtfc.errors import MtfcError

MODES = ("explicit", "gspmd", "shardy")


def lax_pool(kind, x, names, window, strides, padding, count_include_pad=False):
    """The pool by jax.lax.reduce_window, dims by position in `names`."""
    dims = tuple(window.get(n, 1) for n in names)
    steps = tuple((strides or window).get(n, 1) if isinstance(strides or window, dict) else strides
                  for n in names)
    steps = tuple(s if n in window else 1 for s, n in zip(steps, names))
    pads = padding if isinstance(padding, str) else [tuple(padding.get(n, (0, 0))) for n in names]
    if kind == "max":
        return lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, pads)
    total = lax.reduce_window(x, 0.0, lax.add, dims, steps, pads)
    if count_include_pad:
        return total / np.prod(dims)
    return total / lax.reduce_window(jnp.ones_like(x), 0.0, lax.add, dims, steps, pads)


def mtf_pool(kind, x, window, strides, padding, count_include_pad=False):
    if kind == "max":
        return mtf.max_pool(x, window, strides, padding)
    return mtf.avg_pool(x, window, strides, padding, count_include_pad=count_include_pad)


def run_case(shape, kind, window, strides, padding, mesh, layout, modes=MODES, host=None, include_pad=False):
    """Forward y and gradient of sum(y * y) in each mode, checked against lax."""
    dims = [mtf.Dim(n, s) for n, s in shape]
    names = [n for n, _ in shape]

    def model(x):
        y = mtf_pool(kind, x, window, strides, padding, include_pad)
        return {"y": y, "gx": mtf.grad(mtf.reduce_sum(y * y), [x])[0]}

    for mode in modes:
        sharded, unsharded, data = run_model(model, {"x": mtf.Input(dims)}, host, mesh=mesh, layout=layout, mode=mode)
        x = np.asarray(data["x"])
        want = {"y": lax_pool(kind, x, names, window, strides, padding, include_pad),
                "gx": jax.grad(lambda v: jnp.sum(lax_pool(kind, v, names, window, strides, padding,
                                                          include_pad) ** 2))(x)}
        for name, value in want.items():
            try:
                assert_close(sharded[name], np.asarray(value))
                assert_close(unsharded[name], np.asarray(value))
            except AssertionError as e:
                raise AssertionError(f"{mode} mode, {name} under {layout!r} on {mesh}: {e}") from None


IMG = [("b", 2), ("h", 8), ("w", 8), ("c", 4)]
CASES = [
    # (id, shape, kind, window, strides, padding, mesh, layouts)
    ("1d-max-same-s1", [("b", 4), ("t", 12), ("c", 2)], "max", {"t": 3}, 1, "SAME", "p:4", ["t:p", "b:p"]),
    ("1d-avg-w2-s3", [("b", 2), ("t", 12), ("c", 2)], "avg", {"t": 2}, 3, "VALID", "p:2", ["t:p"]),
    ("1d-odd-9-3way", [("t", 9), ("c", 2)], "avg", {"t": 3}, 1, "SAME", "p:3", ["t:p"]),
    ("1d-odd-max-s3", [("t", 9), ("c", 3)], "max", {"t": 3}, 3, "VALID", "p:3", ["t:p", "c:p"]),
    ("2d-max-33-s21", IMG, "max", {"h": 3, "w": 3}, {"h": 2, "w": 1}, "SAME", "rows:2,cols:4",
     ["b:rows", "h:cols", "c:cols", "h:cols,w:rows", "h:rows,c:cols"]),
    ("2d-avg-32-s12", IMG, "avg", {"h": 3, "w": 2}, {"h": 1, "w": 2}, "SAME", "rows:2,cols:4",
     ["h:cols,w:rows", "b:rows,w:cols"]),
    ("2d-max-22", IMG, "max", {"h": 2, "w": 2}, None, "VALID", "rows:2,cols:4", ["h:cols,w:rows"]),
    ("2d-max-explicit", IMG, "max", {"h": 3, "w": 3}, {"h": 1, "w": 2}, {"h": (2, 0), "w": (1, 0)},
     "rows:2,cols:4", ["h:cols,w:rows"]),
    ("3d-max", [("b", 2), ("d", 8), ("h", 6), ("w", 6), ("c", 2)], "max", {"d": 2, "h": 3, "w": 3},
     {"d": 2, "h": 3, "w": 1}, "VALID", "x:2,y:2,z:2", ["d:x,h:y,w:z", "b:x,c:y,d:z"]),
    ("3d-avg-explicit", [("b", 2), ("d", 10), ("h", 8), ("w", 4)], "avg", {"d": 3, "h": 4, "w": 3},
     {"d": 3, "h": 2, "w": 1}, {"d": (1, 2), "h": (1, 1), "w": (1, 1)}, "x:2,y:2,z:2",
     ["d:x,h:y,w:z", "b:x,h:y+z"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_pool_against_lax(case):
    _, shape, kind, window, strides, padding, mesh, layouts = case
    for layout in layouts:
        run_case(shape, kind, window, strides, padding, mesh, layout)


def test_avg_pool_count_include_pad():
    run_case(IMG, "avg", {"h": 3, "w": 3}, 1, "SAME", "rows:2,cols:4", "h:cols,w:rows", include_pad=True)


def test_bf16_pools_sum_in_f32():
    """bf16 in, bf16 out; the window sums accumulate in f32 (as reduce_sum)."""
    import ml_dtypes

    dims = [mtf.Dim(n, s) for n, s in IMG]

    def model(x):
        return {"a": mtf.avg_pool(x, {"h": 3, "w": 3}, 1, "SAME"), "m": mtf.max_pool(x, {"h": 3}, 2, "SAME")}

    sharded, unsharded, data = run_model(model, {"x": mtf.Input(dims, "bf16")}, layout="h:cols,w:rows",
                                         mode="explicit")
    x = np.asarray(data["x"]).astype(np.float32)
    names = [n for n, _ in IMG]
    for name, want in (("a", lax_pool("avg", x, names, {"h": 3, "w": 3}, 1, "SAME")),
                       ("m", lax_pool("max", x, names, {"h": 3}, 2, "SAME"))):
        assert np.asarray(sharded[name]).dtype == ml_dtypes.bfloat16
        assert_close(sharded[name], np.asarray(want).astype(ml_dtypes.bfloat16), "bf16")
        assert_close(unsharded[name], np.asarray(want).astype(ml_dtypes.bfloat16), "bf16")


def test_max_pool_gradient_goes_to_the_first_maximum():
    """Ties (small integers): the gradient goes to the first maximum of each
    window, as XLA's select_and_scatter, also across block boundaries."""
    x = np.random.default_rng(0).integers(0, 3, size=(2, 8, 8, 4)).astype(np.float32)
    run_case(IMG, "max", {"h": 3, "w": 3}, 1, "SAME", "rows:2,cols:4", "h:cols,w:rows", host={"x": x})


def _program(model, shape, mesh, layout, mode="explicit"):
    module = compile_function(model, {"x": mtf.Input([mtf.Dim(n, s) for n, s in shape])},
                              mesh=mesh, layout=layout, mode=mode)
    text = str(module)
    return text[: text.index("module @mtfc.reference")] if mode == "explicit" else text


def test_explicit_pooling_exchanges_halos_only():
    def model(x):
        y = mtf.max_pool(x, {"h": 3, "w": 3}, 1, "SAME") + mtf.avg_pool(x, {"h": 3, "w": 3}, 1, "SAME")
        return {"gx": mtf.grad(mtf.reduce_sum(y * y), [x])[0]}

    program = _program(model, IMG, "rows:2,cols:4", "h:cols,w:rows")
    assert "all_gather" not in program and "all_to_all" not in program
    assert "collective_permute" in program
    assert "stablehlo.composite" not in program


def test_gspmd_workaround_passes_verify_names():
    """The values gspmd_windows keeps whole say so (mtfc.whole): the
    partitioned module still verifies (as `mtfc run` checks it)."""
    from mtfc.passes.manager import run_passes

    def model(x):
        y = mtf.max_pool(x, {"h": 3, "w": 3}, 1, "SAME")
        return {"gx": mtf.grad(mtf.reduce_sum(y * y), [x])[0]}

    module = compile_function(model, {"x": mtf.Input([mtf.Dim(n, s) for n, s in IMG])},
                              mesh="rows:2,cols:4", layout="h:cols,b:rows", mode="gspmd")
    assert 'mtfc.whole = ["h"]' in str(module)
    run_passes(module, ["verify-names"])


def test_non_overlapping_pool_needs_no_communication():
    program = _program(lambda x: {"y": mtf.max_pool(x, {"h": 2, "w": 2})}, IMG, "rows:2,cols:4", "h:cols,w:rows")
    assert "collective_permute" not in program and "all_gather" not in program


@pytest.mark.parametrize("mode", ["explicit", "gspmd"])
def test_a_pooled_size_that_does_not_divide_is_one_line(mode):
    with pytest.raises(MtfcError) as e:
        _program(lambda x: {"y": mtf.max_pool(x, {"h": 2}, 3)}, IMG, "rows:2,cols:4", "h:cols", mode)
    message = str(e.value)
    assert "\n" not in message and "dim 'h' of size 3" in message and "cols" in message


def test_a_window_wider_than_the_halo_is_one_line():
    with pytest.raises(MtfcError) as e:
        _program(lambda x: {"y": mtf.avg_pool(x, {"h": 7}, 1, "SAME")}, IMG, "rows:2,cols:4", "h:cols")
    message = str(e.value)
    assert "\n" not in message and "dim 'h'" in message and "cols" in message and "reaches 3 rows" in message


@pytest.mark.parametrize("window,strides,padding,fragment", [
    ({"q": 2}, None, "VALID", "unknown dim 'q'"),
    ({"h": 2}, None, "FULL", "padding must be 'SAME', 'VALID'"),
    ({"h": 0}, None, "VALID", "must be positive ints"),
    ({"h": 9}, None, "VALID", "smaller than its window 9"),
    ({"h": 2}, {"w": 2}, "VALID", "strides name dim 'w', which has no window"),
    ({"h": 2}, None, {"h": (-1, 0)}, "must be non-negative"),
])
def test_bad_pool_arguments_are_one_line(window, strides, padding, fragment):
    with pytest.raises(MtfcError) as e:
        _program(lambda x: {"y": mtf.max_pool(x, window, strides, padding)}, IMG, "rows:2,cols:4", "")
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("mode", MODES)
def test_mesh_tf_pooling_layers(mode):
    """mtf.layers.max_pool2d / avg_pool2d / max_pool3d / avg_pool3d pool the
    dims between batch and channels (as Mesh TF's), under a spatial layout,
    forward and gradient, against jax.lax."""
    B, H, W, D, C = (mtf.Dim(n, s) for n, s in (("b", 2), ("h", 8), ("w", 8), ("d", 4), ("c", 3)))

    def model(x2, x3):
        ys = {"max2": mtf.layers.max_pool2d(x2, (3, 3), (1, 1), "SAME"),
              "avg2": mtf.layers.avg_pool2d(x2),
              "max3": mtf.layers.max_pool3d(x3, (2, 3, 2), (2, 1, 2), "SAME"),
              "avg3": mtf.layers.avg_pool3d(x3, 2)}
        loss = sum((mtf.reduce_sum(y * y) for y in ys.values()), mtf.zeros([]))
        return {**ys, **dict(zip(("g2", "g3"), mtf.grad(loss, [x2, x3])))}

    def reference(x2, x3):
        ys = {"max2": lax_pool("max", x2, "bhwc", {"h": 3, "w": 3}, 1, "SAME"),
              "avg2": lax_pool("avg", x2, "bhwc", {"h": 2, "w": 2}, None, "VALID"),
              "max3": lax_pool("max", x3, "bdhwc", {"d": 2, "h": 3, "w": 2}, {"d": 2, "h": 1, "w": 2}, "SAME"),
              "avg3": lax_pool("avg", x3, "bdhwc", {"d": 2, "h": 2, "w": 2}, None, "VALID")}
        return ys, sum(jnp.sum(y * y) for y in ys.values())

    inputs = {"x2": mtf.Input([B, H, W, C]), "x3": mtf.Input([B, D, H, W, C])}
    sharded, unsharded, data = run_model(model, inputs, None, mesh="rows:2,cols:4", layout="h:cols,w:rows",
                                         mode=mode)
    x2, x3 = (np.asarray(data[k]) for k in ("x2", "x3"))
    ys, _ = reference(x2, x3)
    want = {**ys, **dict(zip(("g2", "g3"), jax.grad(lambda a, b: reference(a, b)[1], argnums=(0, 1))(x2, x3)))}
    for name, value in want.items():
        assert_close(sharded[name], np.asarray(value))
        assert_close(unsharded[name], np.asarray(value))


def test_mesh_tf_pooling_layer_errors():
    x = mtf.Input([mtf.Dim("b", 2), mtf.Dim("h", 4), mtf.Dim("c", 1)])
    with pytest.raises(MtfcError, match="max_pool2d: x .* must have 4 dims: batch, 2 spatial, channels"):
        compile_function(lambda x: {"y": mtf.layers.max_pool2d(x)}, {"x": x})
