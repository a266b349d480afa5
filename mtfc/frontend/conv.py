"""Convolution ops over named spatial dims: ``conv1d/conv2d/conv3d`` (any
rank: `conv`) and ``conv_transpose`` (Mesh TF's vocabulary; the layers that
create the kernel are in `mtfc.frontend.layers`).

Dims (docs/dsl.md, "Convolutions"):

* x: one batch dim, the `spatial_dims`, and one feature dim (`in_dim`), in
  any order;
* kernel: ``[window dims (one per spatial dim, in that order)..., in, out]``
  -- Mesh TF's ``[fh, fw, in, out]``; the window dims have names of their own;
* result: x's dims with `in_dim` replaced by the kernel's `out` dim at its
  place; each spatial dim keeps its **name** with its new size (stride,
  VALID), as Mesh TF's conv2d and `slice` do, so the layout rule of ``h``
  lays out both.

`in_dim` defaults to the kernel's in dim when x has a dim of that name (then
``groups`` must be 1: one name, one size); with ``groups > 1`` the kernel's
in dim (size ``in / groups``) has a name of its own and `in_dim` names x's.
`spatial_dims` defaults to x's dims other than its first (the batch) and
`in_dim`.
"""

from __future__ import annotations

from typing import Sequence

from mtfc.frontend.dims import DimLike
from mtfc.frontend.graph import Tensor, fail
from mtfc.frontend.primitives.convolution import convolution, dilate

Padding = "str | int | Sequence[tuple[int, int]]"


def _per_dim(value, n: int, what: str, op: str) -> tuple[int, ...]:
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or not all(isinstance(v, int) and v >= 1 for v in values):
        raise fail(f"{op}: {what} must be a positive integer or {n} of them, got {value!r}")
    return values


def same_padding(n: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF / JAX ``SAME``: output ``ceil(n / stride)``, the extra padding at the end."""
    out = -(-n // stride)
    total = max((out - 1) * stride + dilate(k, dilation) - n, 0)
    return total // 2, total - total // 2


def _padding(padding, sizes, kernel_sizes, strides, dilations, op: str) -> tuple[tuple[int, int], ...]:
    n = len(sizes)
    if isinstance(padding, str):
        if padding.upper() == "SAME":
            return tuple(same_padding(*a) for a in zip(sizes, kernel_sizes, strides, dilations))
        if padding.upper() == "VALID":
            return ((0, 0),) * n
        raise fail(f"{op}: padding {padding!r}: use 'SAME', 'VALID' or (lo, hi) per spatial dim")
    if isinstance(padding, int):
        return ((padding, padding),) * n
    pairs = tuple(tuple(p) for p in padding)
    if len(pairs) != n or not all(len(p) == 2 and all(isinstance(v, int) for v in p) for p in pairs):
        raise fail(f"{op}: padding {padding!r} must be 'SAME', 'VALID', an int or {n} (lo, hi) pairs")
    return pairs


def _roles(x: Tensor, kernel: Tensor, spatial_dims, in_dim, n: int | None, op: str):
    """(batch, in, spatial names, kernel window names, kernel in, kernel out)."""
    if not isinstance(x, Tensor) or not isinstance(kernel, Tensor):
        raise fail(f"{op} takes mtfc tensors (x, kernel)")
    if n is None:
        n = len(kernel.shape) - 2
    if len(kernel.shape) != n + 2:
        raise fail(f"{op}: the kernel {kernel.shape} must have {n + 2} dims: {n} window dims, in, out")
    *window, k_in, k_out = kernel.shape.names
    if in_dim is None:
        if k_in not in x.shape.names:
            raise fail(f"{op}: x {x.shape} has no dim {k_in!r} (the kernel's in dim); give in_dim=")
        in_dim = k_in
    in_dim = x.shape.get(in_dim).name
    if spatial_dims is None:
        spatial = [d for d in x.shape.names[1:] if d != in_dim]
    else:
        spatial = [x.shape.get(d).name for d in ([spatial_dims] if isinstance(spatial_dims, (str,)) else spatial_dims)]
    if len(spatial) != n:
        raise fail(f"{op}: {n} spatial dims expected, got {spatial} (x {x.shape})")
    rest = [d for d in x.shape.names if d != in_dim and d not in spatial]
    if len(rest) != 1:
        raise fail(f"{op}: x {x.shape} must have exactly one batch dim besides the spatial dims {spatial} "
                   f"and the features {in_dim!r}, got {rest}")
    clash = [d for d in list(window) + [k_out] if d in x.shape.names]
    if clash:
        raise fail(f"{op}: kernel dims {clash} are also dims of x {x.shape}; give the window and out dims "
                   "names of their own")
    return rest[0], in_dim, spatial, window, k_in, k_out


def conv(x: Tensor, kernel: Tensor, spatial_dims: Sequence[DimLike] | None = None, *, strides=1,
         padding: Padding = "SAME", dilation=1, groups: int = 1, in_dim: DimLike | None = None,
         name: str = "conv", _rank: int | None = None) -> Tensor:
    """N-d convolution (module docstring): `strides` and `dilation` (the
    kernel's) an int or one per spatial dim; `padding` ``"SAME"``,
    ``"VALID"``, an int, or ``(lo, hi)`` per spatial dim; `groups` feature
    groups (depthwise: ``groups`` = the input features).  As
    ``jax.lax.conv_general_dilated``."""
    batch, in_dim, spatial, window, k_in, k_out = _roles(x, kernel, spatial_dims, in_dim, _rank, name)
    n = len(spatial)
    strides = _per_dim(strides, n, "strides", name)
    dilation = _per_dim(dilation, n, "dilation", name)
    if not isinstance(groups, int) or groups < 1:
        raise fail(f"{name}: groups must be a positive integer, got {groups!r}")
    sizes = [x.shape.get(d).size for d in spatial]
    ksizes = [kernel.shape.get(d).size for d in window]
    pads = _padding(padding, sizes, ksizes, strides, dilation, name)
    order = [k_out if d == in_dim else d for d in x.shape.names]
    return convolution(x, kernel, lhs=(batch, in_dim, spatial), rhs=(k_in, k_out, window),
                       out=(batch, k_out, spatial), order=order, strides=strides, padding=pads,
                       lhs_dilation=(1,) * n, rhs_dilation=dilation, feature_groups=groups, what=name)


def conv1d(x, kernel, spatial_dims=None, **kwargs) -> Tensor:
    """`conv` over one spatial dim."""
    return conv(x, kernel, spatial_dims, _rank=1, **{"name": "conv1d", **kwargs})


def conv2d(x, kernel, spatial_dims=None, **kwargs) -> Tensor:
    """`conv` over two spatial dims (Mesh TF's ``mtf.conv2d``)."""
    return conv(x, kernel, spatial_dims, _rank=2, **{"name": "conv2d", **kwargs})


def conv3d(x, kernel, spatial_dims=None, **kwargs) -> Tensor:
    """`conv` over three spatial dims."""
    return conv(x, kernel, spatial_dims, _rank=3, **{"name": "conv3d", **kwargs})


def transpose_padding(k: int, stride: int, padding: str) -> tuple[int, int]:
    """JAX's ``_conv_transpose_padding`` for a dilated kernel of size `k`."""
    if padding == "SAME":
        total = k + stride - 2
        lo = k - 1 if stride > k - 1 else -(-total // 2)
    else:  # VALID
        total = k + stride - 2 + max(k - stride, 0)
        lo = k - 1
    return lo, total - lo


def conv_transpose(x: Tensor, kernel: Tensor, spatial_dims: Sequence[DimLike] | None = None, *, strides=1,
                   padding: Padding = "SAME", dilation=1, in_dim: DimLike | None = None,
                   name: str = "conv_transpose") -> Tensor:
    """The transposed ("fractionally strided") convolution of
    ``jax.lax.conv_transpose(..., transpose_kernel=False)``: x dilated by
    `strides` (``strides - 1`` zeros between elements), then convolved with
    stride 1.  ``SAME``: output ``n * stride``; ``VALID``: ``n * stride +
    max(k - stride, 0)`` (k: the dilated kernel); explicit ``(lo, hi)``
    pads the dilated x.  Dims as `conv` (kernel ``[window..., in, out]``)."""
    batch, in_dim, spatial, window, k_in, k_out = _roles(x, kernel, spatial_dims, in_dim, None, name)
    n = len(spatial)
    strides = _per_dim(strides, n, "strides", name)
    dilation = _per_dim(dilation, n, "dilation", name)
    ksizes = [dilate(kernel.shape.get(d).size, r) for d, r in zip(window, dilation)]
    if isinstance(padding, str) and padding.upper() in ("SAME", "VALID"):
        pads = tuple(transpose_padding(k, s, padding.upper()) for k, s in zip(ksizes, strides))
    else:
        pads = _padding(padding, [1] * n, ksizes, strides, dilation, name)
    order = [k_out if d == in_dim else d for d in x.shape.names]
    return convolution(x, kernel, lhs=(batch, in_dim, spatial), rhs=(k_in, k_out, window),
                       out=(batch, k_out, spatial), order=order, strides=(1,) * n, padding=pads,
                       lhs_dilation=strides, rhs_dilation=dilation, what=name)


__all__ = ["conv", "conv1d", "conv2d", "conv3d", "conv_transpose"]
