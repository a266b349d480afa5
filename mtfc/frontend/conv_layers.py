"""Convolution layers: `mtf.layers.conv1d/conv2d/conv3d/conv_transpose`
create their kernel (and bias) under a name scope, like `layers.dense`.

The kernel is ``[<spatial>_kernel..., in, out]`` (Mesh TF's ``[fh, fw, in,
out]``; with ``groups > 1``, ``in`` is ``<in>_group`` of size ``in /
groups``), initialized ``fan_in_normal`` over its window and in dims; the bias
is ``[out]``.  x: one batch dim (its first), the spatial dims, and the
features `in_dim` (default: its last dim); the spatial dims default to the
dims between.
"""

from __future__ import annotations

from mtfc.frontend import conv as conv_ops
from mtfc.frontend.dims import Dim, Shape
from mtfc.frontend.graph import FLOAT_DTYPES, Tensor, fail, scope
from mtfc.frontend.model import get_variable, init


def _layer(op, x: Tensor, output_dim: Dim, filter_size, rank, *, spatial_dims, in_dim, groups, use_bias,
           activation, name, **numbers) -> Tensor:
    if not isinstance(x, Tensor):
        raise fail(f"{name} takes an mtfc tensor")
    if not isinstance(output_dim, Dim):
        raise fail(f"{name}: output_dim must be a Dim, got {output_dim!r}")
    features = x.shape.get(in_dim) if in_dim is not None else x.shape[-1]
    if spatial_dims is None:
        spatial = [d for d in x.shape[1:] if d.name != features.name]
    else:
        spatial = [x.shape.get(d) for d in spatial_dims]
    if len(spatial) != rank:
        raise fail(f"{name}: {rank} spatial dims expected, got {[d.name for d in spatial]} (x {x.shape})")
    sizes = (filter_size,) * rank if isinstance(filter_size, int) else tuple(filter_size)
    if len(sizes) != rank:
        raise fail(f"{name}: filter_size {filter_size!r} must be an int or {rank} ints")
    window = [Dim(f"{d.name}_kernel", k) for d, k in zip(spatial, sizes)]
    if groups == 1:
        k_in = features
    elif isinstance(groups, int) and groups > 1 and features.size % groups == 0:
        k_in = Dim(f"{features.name}_group", features.size // groups)
    else:
        raise fail(f"{name}: groups={groups!r} must divide the input features {features!r}")
    dtype = x.dtype if x.dtype in FLOAT_DTYPES else None
    with scope(name):
        shape = Shape(window + [k_in, output_dim])
        kernel = get_variable("kernel", shape, dtype, init.fan_in_normal(shape, window + [k_in]))
        kwargs = dict(numbers, in_dim=features.name, name=name)
        if groups != 1:
            kwargs["groups"] = groups
        y = op(x, kernel, [d.name for d in spatial], **kwargs)
        if use_bias:
            y = y + get_variable("bias", Shape([output_dim]), dtype, init.zeros())
    return activation(y) if activation else y


def conv1d(x, output_dim, filter_size=3, strides=1, padding="SAME", *, dilation=1, groups=1, spatial_dims=None,
           in_dim=None, use_bias=True, activation=None, name="conv1d"):
    return _layer(conv_ops.conv, x, output_dim, filter_size, 1, strides=strides, padding=padding,
                  dilation=dilation, groups=groups, spatial_dims=spatial_dims, in_dim=in_dim, use_bias=use_bias,
                  activation=activation, name=name)


def conv2d(x, output_dim, filter_size=(3, 3), strides=1, padding="SAME", *, dilation=1, groups=1,
           spatial_dims=None, in_dim=None, use_bias=True, activation=None, name="conv2d"):
    """Mesh TF's ``mtf.layers.conv2d(x, output_dim, filter_size, strides, padding)``."""
    return _layer(conv_ops.conv, x, output_dim, filter_size, 2, strides=strides, padding=padding,
                  dilation=dilation, groups=groups, spatial_dims=spatial_dims, in_dim=in_dim, use_bias=use_bias,
                  activation=activation, name=name)


def conv3d(x, output_dim, filter_size=(3, 3, 3), strides=1, padding="SAME", *, dilation=1, groups=1,
           spatial_dims=None, in_dim=None, use_bias=True, activation=None, name="conv3d"):
    return _layer(conv_ops.conv, x, output_dim, filter_size, 3, strides=strides, padding=padding,
                  dilation=dilation, groups=groups, spatial_dims=spatial_dims, in_dim=in_dim, use_bias=use_bias,
                  activation=activation, name=name)


def conv_transpose(x, output_dim, filter_size=(3, 3), strides=1, padding="SAME", *, dilation=1,
                   spatial_dims=None, in_dim=None, use_bias=True, activation=None, name="conv_transpose"):
    """Mesh TF's ``conv2d_transpose`` for any rank (``len(filter_size)`` spatial dims)."""
    rank = 1 if isinstance(filter_size, int) else len(filter_size)
    return _layer(conv_ops.conv_transpose, x, output_dim, filter_size, rank, strides=strides, padding=padding,
                  dilation=dilation, groups=1, spatial_dims=spatial_dims, in_dim=in_dim, use_bias=use_bias,
                  activation=activation, name=name)
