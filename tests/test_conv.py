"""Convolutions: every op and layer against ``jax.lax.conv_general_dilated`` /
``jax.lax.conv_transpose`` (and ``jax.grad`` of them for the gradients),
forward and both gradients, under batch, spatial, feature and mixed layouts
on 1-, 2- and 3-axis meshes, in explicit, gspmd and shardy modes; each
sharded run also against the unsharded one."""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_close, run_model

import mtfc as mtf
from mtfc.compiler import compile_function
from mtfc.errors import MtfcError

MODES = ("explicit", "gspmd", "shardy")
SPEC = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}
SPATIAL = {1: "h", 2: "hw", 3: "dhw"}


@dataclass
class Case:
    id: str
    x: tuple  # (batch, spatial..., features)
    kernel: tuple  # (window..., in / groups, out)
    layout: str
    mesh: str = "rows:2,cols:4"
    strides: tuple | int = 1
    dilation: tuple | int = 1
    padding: object = "SAME"
    groups: int = 1
    transpose: bool = False
    modes: tuple = MODES
    extra: dict = field(default_factory=dict)


CASES = [
    Case("same-h-split", (2, 8, 6, 3), (3, 3, 3, 4), "h:cols"),
    Case("stride2-dilation-batch-h", (4, 8, 8, 3), (3, 2, 3, 5), "b:rows,h:cols", strides=(2, 1), dilation=(1, 2)),
    Case("valid-dilation2-odd", (3, 8, 8, 5), (3, 2, 5, 3), "w:rows,h:cols", mesh="rows:2,cols:2",
         padding="VALID", dilation=2, strides=(2, 1)),
    Case("explicit-pad-stride2-out-split", (2, 8, 6, 3), (3, 2, 3, 4), "h:rows,o:cols", strides=2,
         padding=((2, 0), (1, 3))),
    Case("depthwise", (4, 8, 6, 4), (3, 3, 1, 8), "b:rows,h:cols", groups=4),
    Case("depthwise-channels-split", (2, 8, 6, 4), (3, 2, 1, 8), "c:cols,o:cols,h:rows", groups=4, dilation=(2, 1)),
    Case("feature-split", (2, 6, 5, 8), (3, 3, 8, 4), "c:cols,o:rows"),
    Case("halo-beyond-neighbour", (2, 4, 8, 3), (3, 5, 3, 4), "w:cols+rows", dilation=(1, 2)),
    Case("conv1d-1axis", (2, 16, 3), (5, 3, 4), "h:x", mesh="x:4", strides=2),
    Case("conv3d-3axis", (2, 4, 4, 6, 2), (3, 3, 2, 2, 4), "d:a,h:b,o:c", mesh="a:2,b:2,c:2"),
    Case("transpose-stride2", (2, 8, 4, 3), (3, 3, 3, 4), "h:cols", strides=(2, 1), dilation=(1, 2), transpose=True),
    Case("transpose-valid", (4, 4, 6, 3), (3, 2, 3, 2), "b:rows,w:cols", mesh="rows:2,cols:2",
         strides=2, padding="VALID", transpose=True),
]


def _dims(case: Case):
    rank = len(case.x) - 2
    names = ["b", *SPATIAL[rank], "c"]
    x = [mtf.Dim(n, s) for n, s in zip(names, case.x)]
    kin = "c" if case.groups == 1 else "c_group"
    k = [mtf.Dim(f"k{n}", s) for n, s in zip(SPATIAL[rank], case.kernel)] + [
        mtf.Dim(kin, case.kernel[-2]), mtf.Dim("o", case.kernel[-1])]
    return rank, x, k


def _reference(case: Case, rank: int):
    def f(x, k):
        n = rank
        strides = (case.strides,) * n if isinstance(case.strides, int) else case.strides
        dilation = (case.dilation,) * n if isinstance(case.dilation, int) else case.dilation
        if case.transpose:
            return jax.lax.conv_transpose(x, k, strides, case.padding, rhs_dilation=dilation,
                                          dimension_numbers=SPEC[n])
        return jax.lax.conv_general_dilated(x, k, strides, case.padding, rhs_dilation=dilation,
                                            dimension_numbers=SPEC[n], feature_group_count=case.groups)
    return f


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_conv_forward_and_gradients(case):
    rank, xd, kd = _dims(case)
    f = _reference(case, rank)
    rng = np.random.default_rng(0)
    x = rng.normal(size=case.x).astype(np.float32)
    k = rng.normal(size=case.kernel).astype(np.float32)
    y = np.asarray(f(x, k))
    t = rng.normal(size=y.shape).astype(np.float32)
    gx, gk = jax.grad(lambda x, k: jnp.sum(f(x, k) * t), (0, 1))(x, k)
    spatial = list(SPATIAL[rank])
    op = mtf.conv_transpose if case.transpose else {1: mtf.conv1d, 2: mtf.conv2d, 3: mtf.conv3d}[rank]
    kwargs = dict(strides=case.strides, padding=case.padding, dilation=case.dilation)
    if case.groups != 1:
        kwargs.update(groups=case.groups, in_dim="c")

    def model(x, k, t):
        out = op(x, k, spatial, **kwargs)
        gx, gk = mtf.grad(mtf.reduce_sum(out * t), [x, k])
        return {"y": out, "gx": gx, "gk": gk}

    out_dims = [xd[0]] + [mtf.Dim(n, s) for n, s in zip(spatial, y.shape[1:-1])] + [kd[-1]]
    inputs = {"x": mtf.Input(xd), "k": mtf.Input(kd), "t": mtf.Input(out_dims)}
    want = {"y": y, "gx": np.asarray(gx), "gk": np.asarray(gk)}
    for mode in case.modes:
        sharded, unsharded, _ = run_model(model, inputs, {"x": x, "k": k, "t": t}, mesh=case.mesh,
                                          layout=case.layout, mode=mode)
        for name, expected in want.items():
            assert_close(sharded[name], expected)
            assert_close(sharded[name], unsharded[name])


def _program_text(model, inputs, mesh, layout):
    module = compile_function(model, inputs, mesh=mesh, layout=layout, mode="explicit")
    text = module.operation.get_asm()
    return text[: text.index("module @mtfc.reference")] if "module @mtfc.reference" in text else text


def test_explicit_spatial_split_exchanges_halos_never_gathers():
    """3x3 SAME, h and w split: forward = 4 collective_permutes (a halo row
    each way along h, then each way along w, corners included), as GSPMD's;
    with both gradients still no all_gather."""
    b, h, w, c, o = mtf.Dim("b", 2), mtf.Dim("h", 16), mtf.Dim("w", 8), mtf.Dim("c", 4), mtf.Dim("o", 4)
    inputs = {"x": mtf.Input([b, h, w, c]), "k": mtf.Input([mtf.Dim("kh", 3), mtf.Dim("kw", 3), c, o])}

    def forward(x, k):
        return mtf.conv2d(x, k, ["h", "w"])

    def train(x, k):
        y = mtf.conv2d(x, k, ["h", "w"])
        gx, gk = mtf.grad(mtf.reduce_sum(y * y), [x, k])
        return {"y": y, "gx": gx, "gk": gk}

    text = _program_text(forward, inputs, "rows:2,cols:4", "h:cols,w:rows")
    assert text.count('"stablehlo.collective_permute"') == 4
    assert "all_gather" not in text
    text = _program_text(train, inputs, "rows:2,cols:4", "h:cols,w:rows")
    assert "all_gather" not in text and "all_to_all" not in text


def _layer_reference(x, k, bias, rank, transpose):
    """relu(conv(x, k) + bias), stride 2, SAME, in plain JAX."""
    s = (2,) * rank
    if transpose:
        y = jax.lax.conv_transpose(x, k, s, "SAME", dimension_numbers=SPEC[rank])
    else:
        y = jax.lax.conv_general_dilated(x, k, s, "SAME", dimension_numbers=SPEC[rank])
    return jax.nn.relu(y + bias)


@pytest.mark.parametrize("layer,rank,transpose", [
    ("conv1d", 1, False), ("conv2d", 2, False), ("conv3d", 3, False), ("conv_transpose", 2, True)])
def test_conv_layers(layer, rank, transpose):
    sizes = {1: (2, 8, 3), 2: (2, 8, 6, 3), 3: (2, 4, 4, 4, 3)}[rank]
    xd = [mtf.Dim(n, s) for n, s in zip(["b", *SPATIAL[rank], "c"], sizes)]

    def model(x):
        y = getattr(mtf.layers, layer)(x, mtf.Dim("o", 4), (3,) * rank, strides=2, activation=mtf.relu, name="conv")
        grads = mtf.grad(mtf.reduce_sum(y * y), mtf.trainable_variables())
        return {"y": y, "g_kernel": grads["params/conv/kernel"], "g_bias": grads["params/conv/bias"]}

    layout = "b:rows,h:cols" if rank > 1 else "b:rows"
    sharded, unsharded, data = run_model(model, {"x": mtf.Input(xd)}, mesh="rows:2,cols:2", layout=layout,
                                         mode="explicit")
    k, bias = data["params/conv/kernel"], data["params/conv/bias"]
    assert k.shape == (3,) * rank + (3, 4)
    assert_close(sharded["y"], np.asarray(_layer_reference(data["x"], k, bias, rank, transpose)))
    g_k, g_b = jax.grad(lambda k, b: jnp.sum(_layer_reference(data["x"], k, b, rank, transpose) ** 2), (0, 1))(k, bias)
    assert_close(sharded["g_kernel"], np.asarray(g_k))
    assert_close(sharded["g_bias"], np.asarray(g_b))
    for name in sharded:
        assert_close(sharded[name], unsharded[name])


# ------------------------------------------------------------------ errors
def _compile(model, inputs, layout="", mode="explicit", mesh="rows:2,cols:4"):
    return compile_function(model, inputs, mesh=mesh, layout=layout, mode=mode)


B, H, W, C, O = (mtf.Dim(n, s) for n, s in (("b", 2), ("h", 9), ("w", 8), ("c", 4), ("o", 4)))
KH, KW = mtf.Dim("kh", 3), mtf.Dim("kw", 3)


def _one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_error_kernel_in_dim_not_in_x():
    def model(x, k):
        return mtf.conv2d(x, k, ["h", "w"])

    with pytest.raises(MtfcError) as err:
        _compile(model, {"x": mtf.Input([B, H, W, C]), "k": mtf.Input([KH, KW, mtf.Dim("d", 4), O])})
    assert "has no dim 'd'" in _one_line(err)


def test_error_groups_do_not_divide():
    def model(x, k):
        return mtf.conv2d(x, k, ["h", "w"], groups=3, in_dim="c")

    with pytest.raises(MtfcError) as err:
        _compile(model, {"x": mtf.Input([B, H, W, C]), "k": mtf.Input([KH, KW, mtf.Dim("cg", 1), O])})
    assert "feature_groups (3)" in _one_line(err)


def test_error_wrong_rank_and_kernel_clash():
    def model(x, k):
        return mtf.conv1d(x, k, ["h"])

    with pytest.raises(MtfcError) as err:
        _compile(model, {"x": mtf.Input([B, H, W, C]), "k": mtf.Input([KH, KW, C, O])})
    assert "must have 3 dims" in _one_line(err)

    def model2(x, k):
        return mtf.conv2d(x, k, ["h", "w"])

    with pytest.raises(MtfcError) as err:
        _compile(model2, {"x": mtf.Input([B, H, W, C]), "k": mtf.Input([mtf.Dim("h", 3), KW, C, O])})
    assert "kernel dims ['h']" in _one_line(err)


@pytest.mark.parametrize("mode", MODES)
def test_error_split_does_not_divide(mode):
    def model(x, k):
        return mtf.conv2d(x, k, ["h", "w"])

    with pytest.raises(MtfcError) as err:
        _compile(model, {"x": mtf.Input([B, H, W, C]), "k": mtf.Input([KH, KW, C, O])}, "h:cols", mode)
    message = _one_line(err)
    assert "'h' of size 9" in message and "cols" in message


def test_error_explicit_unaligned_dilated_blocks():
    """The input gradient of a stride-2 VALID conv (lhs dilation 2) whose
    blocks of 5 rows would need different local paddings: refused in
    explicit mode, never a wrong answer."""
    h10, ho = mtf.Dim("h", 10), mtf.Dim("h", 4)

    def model(x, k, t):
        y = mtf.conv2d(x, k, ["h", "w"], strides=(2, 1), padding="VALID")
        return mtf.grad(mtf.reduce_sum(y * t), x)

    inputs = {"x": mtf.Input([B, h10, W, C]), "k": mtf.Input([KH, mtf.Dim("kw", 1), C, O]),
              "t": mtf.Input([B, ho, W, O])}
    with pytest.raises(MtfcError) as err:
        _compile(model, inputs, "h:rows")
    message = _one_line(err)
    assert "'h' split over rows" in message and "dilation 2" in message


@pytest.mark.parametrize("transpose", [True, False])
def test_explicit_lhs_dilated_halo_is_one_row(transpose):
    """conv_transpose (stride 2) forward, and a stride-2 conv's input gradient
    (both lhs-dilated), h split over 4: values vs jax.lax, and the only
    exchanges are collective_permutes of one row of the neighbour's block
    (b * 1 * w * features * 4 bytes), never an all_gather."""
    b, h, w, c, o = mtf.Dim("b", 2), mtf.Dim("h", 8), mtf.Dim("w", 4), mtf.Dim("c", 3), mtf.Dim("o", 4)
    kh, kw = mtf.Dim("kh", 3), mtf.Dim("kw", 3)
    op = mtf.conv_transpose if transpose else mtf.conv2d
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 8, 4, 3)).astype(np.float32)
    k = rng.normal(size=(3, 3, 3, 4)).astype(np.float32)
    ref = (lambda x, k: jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=SPEC[2])) if transpose else \
        (lambda x, k: jax.lax.conv_general_dilated(x, k, (2, 2), "SAME", dimension_numbers=SPEC[2]))
    y = np.asarray(ref(x, k))
    t = rng.normal(size=y.shape).astype(np.float32)
    gx = np.asarray(jax.grad(lambda x: jnp.sum(ref(x, k) * t))(x))
    out = [b, mtf.Dim("h", y.shape[1]), mtf.Dim("w", y.shape[2]), o]
    inputs = {"x": mtf.Input([b, h, w, c]), "k": mtf.Input([kh, kw, c, o]), "t": mtf.Input(out)}

    def model(x, k, t):
        if transpose:
            return {"y": op(x, k, ["h", "w"], strides=2)}
        return {"gx": mtf.grad(mtf.reduce_sum(op(x, k, ["h", "w"], strides=2) * t), [x])[0]}

    name, want = ("y", y) if transpose else ("gx", gx)
    sharded, unsharded, _ = run_model(model, inputs, {"x": x, "k": k, "t": t}, mesh="cols:4", layout="h:cols",
                                      mode="explicit")
    assert_close(sharded[name], want)
    assert_close(sharded[name], unsharded[name])
    text = _program_text(model, inputs, "cols:4", "h:cols")
    assert "all_gather" not in text and "all_to_all" not in text
    permutes = [line.split(":")[-1].strip() for line in text.splitlines() if "collective_permute" in line]
    # the transpose's input x has c features; the gradient's lhs is the output gradient (o features)
    row = "tensor<2x1x{}x{}xf32>".format(4 if transpose else y.shape[2], 3 if transpose else 4)
    assert permutes and all(p == f"({row}) -> {row}" for p in permutes), permutes
