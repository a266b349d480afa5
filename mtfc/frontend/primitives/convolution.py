"""Convolutions over named spatial dims (``stablehlo.convolution``) and the
``reverse`` of dims (the flipped kernel of a convolution's input gradient).

One primitive, ``convolution``, covers the forward convolution, the
transposed convolution and both gradients, as StableHLO's op does: each
operand's dims play *roles* given by name --

    lhs = (batch, feature, spatial...)      the input x
    rhs = (in, out, spatial...)             the kernel
    out = (batch, feature, spatial...)      the result (its feature is rhs's out)

and ``out[b, o, p] = sum_{c, k} lhs[b, c, p * stride - pad_lo + k * rhs_dilation]
* rhs[c, o, k]`` in the lhs dilated by ``lhs_dilation`` (zeros between and
outside its elements), with ``feature_groups`` (``batch_groups``) splitting the
features (batch) and the output features into groups that convolve apart.
Output spatial size: ``(dil(n, lhs_dilation) + lo + hi - dil(k, rhs_dilation))
// stride + 1`` with ``dil(n, d) = (n - 1) * d + 1``.

A spatial dim keeps its name through a size change (a strided or VALID
convolution, like Mesh TF's conv2d and like `slice`): the result's ``h`` is
the input's ``h`` resized, laid out by the same layout rule.

Gradients (JAX's transpose rules, in DSL ops so they keep dim names): the
input gradient is a convolution of the output gradient with the kernel
reversed along its spatial dims (``window_strides`` and ``lhs_dilation``
exchanged: a transposed convolution); the kernel gradient a convolution of
the input with the output gradient, whose spatial dims become the window
(``batch_groups`` = the forward's feature groups).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc.frontend.dims import Dim, Shape
from mtfc.frontend.graph import FLOAT_DTYPES, fail
from mtfc.frontend.primitives.base import Primitive, bind1, register


def dilate(n: int, d: int) -> int:
    """Size of a dim of `n` elements with ``d - 1`` zeros between neighbours."""
    return 0 if n == 0 else (n - 1) * d + 1


def conv_output_size(n: int, k: int, stride: int, lo: int, hi: int, lhs_dilation: int = 1,
                     rhs_dilation: int = 1) -> int:
    """Output size of one spatial dim (may be < 1: the caller reports it)."""
    span = dilate(n, lhs_dilation) + lo + hi - dilate(k, rhs_dilation)
    return span // stride + 1 if span >= 0 else 0


@register
class Convolution(Primitive):
    """``stablehlo.convolution`` with operand dims given by role (module docstring)."""

    name = "convolution"

    def infer(self, inputs, params):
        x, k = inputs
        (lb, lf, ls), (ri, ro, rs), (ob, of, os_) = params["lhs"], params["rhs"], params["out"]
        what = params.get("what", "convolution")
        for t, roles, role_names in ((x, (lb, lf, *ls), "input"), (k, (ri, ro, *rs), "kernel")):
            if sorted(t.shape.names) != sorted(roles):
                raise fail(f"{what}: the {role_names} has dims {t.shape}; expected exactly [{', '.join(roles)}]")
        if x.dtype != k.dtype:
            raise fail(f"{what}: input and kernel have dtypes {x.dtype} and {k.dtype}; cast one first")
        if x.dtype not in FLOAT_DTYPES:
            raise fail(f"{what}: {x.dtype} operands; convolutions take float tensors")
        fg, bg = params["feature_groups"], params["batch_groups"]
        n, c = x.shape.get(lb).size, x.shape.get(lf).size
        kin, kout = k.shape.get(ri).size, k.shape.get(ro).size
        if c % fg or kin * fg != c:
            raise fail(f"{what}: input features {lf!r} ({c}) must be the kernel's {ri!r} ({kin}) "
                       f"times feature_groups ({fg})")
        if kout % (fg * bg):
            raise fail(f"{what}: the kernel's output features {ro!r} ({kout}) are not divisible "
                       f"by {fg * bg} groups")
        if n % bg:
            raise fail(f"{what}: batch {lb!r} ({n}) is not divisible by batch_groups ({bg})")
        sizes = {ob: n // bg, of: kout}
        for i, (sx, sk, so) in enumerate(zip(ls, rs, os_)):
            lo, hi = params["padding"][i]
            size = conv_output_size(x.shape.get(sx).size, k.shape.get(sk).size, params["strides"][i], lo, hi,
                                    params["lhs_dilation"][i], params["rhs_dilation"][i])
            if size < 1:
                raise fail(f"{what}: spatial dim {sx!r} ({x.shape.get(sx).size}, padding ({lo}, {hi})) is "
                           f"smaller than the dilated kernel {sk!r} ({k.shape.get(sk).size})")
            sizes[so] = size
        order = params["order"]
        if sorted(order) != sorted(sizes):
            raise AssertionError(f"convolution output order {order} is not a permutation of {sorted(sizes)}")
        return [(Shape(Dim(n_, sizes[n_]) for n_ in order), x.dtype)]

    def lower(self, lx, op, args):
        (x, k), out = op.inputs, op.outputs[0]
        (lb, lf, ls), (ri, ro, rs), (ob, of, os_) = op.params["lhs"], op.params["rhs"], op.params["out"]
        xi, ki, oi = x.shape.names.index, k.shape.names.index, out.shape.names.index
        numbers = hlo.ConvDimensionNumbers.get(
            input_batch_dimension=xi(lb), input_feature_dimension=xi(lf),
            input_spatial_dimensions=[xi(n) for n in ls],
            kernel_input_feature_dimension=ki(ri), kernel_output_feature_dimension=ki(ro),
            kernel_spatial_dimensions=[ki(n) for n in rs],
            output_batch_dimension=oi(ob), output_feature_dimension=oi(of),
            output_spatial_dimensions=[oi(n) for n in os_],
        )
        padding = np.asarray(op.params["padding"], dtype=np.int64).reshape(len(ls), 2)
        conv = hlo.ConvolutionOp(
            lx.type(out), args[0], args[1], numbers, op.params["feature_groups"], op.params["batch_groups"],
            window_strides=list(op.params["strides"]),
            padding=ir.DenseIntElementsAttr.get(padding),
            lhs_dilation=list(op.params["lhs_dilation"]), rhs_dilation=list(op.params["rhs_dilation"]),
        )
        return [lx.tag(conv, out.shape.names)]

    def grad(self, op, output_grads):
        (g,) = output_grads
        if op.params["batch_groups"] != 1:
            raise fail("convolution: no gradient for a convolution with batch_groups (a kernel gradient)")
        return [input_gradient(op, g), kernel_gradient(op, g)]


def convolution(x, kernel, *, lhs, rhs, out, order, strides, padding, lhs_dilation, rhs_dilation,
                feature_groups=1, batch_groups=1, what="convolution", name=None):
    """Bind the primitive (roles and numbers as tuples, so the graph is hashable)."""
    return bind1(
        "convolution", [x, kernel],
        lhs=(lhs[0], lhs[1], tuple(lhs[2])), rhs=(rhs[0], rhs[1], tuple(rhs[2])),
        out=(out[0], out[1], tuple(out[2])), order=tuple(order),
        strides=tuple(strides), padding=tuple((int(lo), int(hi)) for lo, hi in padding),
        lhs_dilation=tuple(lhs_dilation), rhs_dilation=tuple(rhs_dilation),
        feature_groups=int(feature_groups), batch_groups=int(batch_groups), what=what,
        name=name or what,
    )


def _numbers(op):
    p = op.params
    return p["strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"], p["feature_groups"]


def input_gradient(op, g):
    """d/dx: ``g`` convolved with the kernel reversed along its spatial dims,
    its in/out roles exchanged (``_conv_general_dilated_transpose_lhs``)."""
    from mtfc.frontend import ops

    x, k = op.inputs
    (lb, lf, ls), (ri, ro, rs), (ob, of, os_) = op.params["lhs"], op.params["rhs"], op.params["out"]
    strides, padding, ld, rd, fg = _numbers(op)
    kernel = reverse(k, rs)
    kin = ro
    if fg == 1 and ri != lf:
        kernel = ops.rename_dimension(kernel, ri, lf)
    if fg > 1:
        # the groups move from the kernel's output features into its input
        # features: [.., in, (group, out/group)] -> [.., (group, in) = x's features, out/group]
        c = x.shape.get(lf)
        group, per_group = Dim(_fresh(ro, "_group", k), fg), Dim(_fresh(ro, "_in_group", k), k.shape.get(ro).size // fg)
        kernel = ops.replace_dimensions(kernel, ro, [group, per_group])
        kernel = ops.replace_dimensions(kernel, [group.name, ri], Dim(lf, c.size))
        kin = per_group.name
    pads = []
    for i, (sx, sk, so) in enumerate(zip(ls, rs, os_)):
        n, kk, o = x.shape.get(sx).size, k.shape.get(sk).size, g.shape.get(so).size
        before = dilate(kk, rd[i]) - padding[i][0] - 1
        after = dilate(n, ld[i]) + dilate(kk, rd[i]) - 1 - dilate(o, strides[i]) - before
        pads.append((before, after))
    return convolution(
        g, kernel, lhs=(ob, of, os_), rhs=(kin, lf, rs), out=(lb, lf, ls), order=x.shape.names,
        strides=ld, padding=pads, lhs_dilation=strides, rhs_dilation=rd, feature_groups=fg,
        what=op.params["what"], name="input_grad",
    )


def kernel_gradient(op, g):
    """d/dkernel: the input convolved with ``g`` as the window, batch and
    features exchanged (``_conv_general_dilated_transpose_rhs``)."""
    x, k = op.inputs
    (lb, lf, ls), (ri, ro, rs), (ob, of, os_) = op.params["lhs"], op.params["rhs"], op.params["out"]
    strides, padding, ld, rd, fg = _numbers(op)
    pads = []
    for i, (sx, sk, so) in enumerate(zip(ls, rs, os_)):
        n, kk, o = x.shape.get(sx).size, k.shape.get(sk).size, g.shape.get(so).size
        lo = padding[i][0]
        hi = (dilate(o, strides[i]) - dilate(n, ld[i])) + (dilate(kk, rd[i]) - lo - 1)
        pads.append((lo, hi))
    return convolution(
        x, g, lhs=(lf, lb, ls), rhs=(ob, of, os_), out=(ri, ro, rs), order=k.shape.names,
        strides=rd, padding=pads, lhs_dilation=ld, rhs_dilation=strides, batch_groups=fg,
        what=op.params["what"], name="kernel_grad",
    )


def _fresh(base: str, suffix: str, t) -> str:
    name = base + suffix
    while name in t.shape.names:
        name += "_"
    return name


@register
class Reverse(Primitive):
    """Reverse the order of elements along ``dims`` (``stablehlo.reverse``)."""

    name = "reverse"

    def infer(self, inputs, params):
        (x,) = inputs
        for d in params["dims"]:
            x.shape.index(d)
        return [(x.shape, x.dtype)]

    def lower(self, lx, op, args):
        (x,), out = op.inputs, op.outputs[0]
        positions = [x.shape.names.index(d) for d in op.params["dims"]]
        return [lx.tag(hlo.ReverseOp(args[0], positions), out.shape.names)]

    def grad(self, op, output_grads):
        return [reverse(output_grads[0], op.params["dims"])]


def reverse(x, dims: Sequence[str]):
    dims = tuple(dims)
    return x if not dims else bind1("reverse", [x], dims=dims)
