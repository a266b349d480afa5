"""Layers built from DSL ops; each creates its parameters under a name scope.

Every layer names its dims explicitly, so the same layer is data parallel,
tensor parallel or both purely by the layout rules.

Parameters are stored in f32 (their master values, `get_variable`) and read
in the dtype the layer computes in: its float input's dtype (`dense`,
`layer_norm`, `attention`, `feed_forward`, `moe`'s experts), or `embedding`'s `dtype` (None:
the compute dtype).
"""

from __future__ import annotations

import math

from mtfc.frontend import ops
from mtfc.frontend.dims import Dim, Shape, as_shape
from mtfc.frontend.graph import FLOAT_DTYPES, Tensor, fail, scope
from mtfc.frontend.model import get_variable, init
from mtfc.frontend.moe import moe  # noqa: F401 - mtf.layers.moe (mixture of experts)
from mtfc.frontend.conv_layers import conv1d, conv2d, conv3d, conv_transpose  # noqa: F401 - convolutions
from mtfc.frontend.scan import repeat  # noqa: F401 - stacked layers, one loop
from mtfc.frontend.pooling import avg_pool2d, avg_pool3d, max_pool2d, max_pool3d  # noqa: F401 - Mesh TF's pooling layers
from mtfc.frontend.pipeline import pipeline  # noqa: F401 - pipeline parallelism over a stages dim


def _compute_dtype(x: Tensor) -> str | None:
    """The dtype a layer on `x` reads its parameters in: x's float dtype (None,
    the compute dtype, for a non-float input)."""
    return x.dtype if x.dtype in FLOAT_DTYPES else None


def dense(x: Tensor, new_dims, reduced_dims=None, *, use_bias: bool = True, activation=None, name: str = "dense") -> Tensor:
    """``x @ w + b``: contracts `reduced_dims` (default: x's last dim) into `new_dims`."""
    new_dims = as_shape(new_dims)
    reduced = as_shape([x.shape.get(d) for d in reduced_dims]) if reduced_dims else Shape([x.shape[-1]])
    with scope(name):
        w = get_variable("kernel", Shape(list(reduced) + list(new_dims)), _compute_dtype(x), init.fan_in_normal(reduced, reduced))
        y = ops.einsum([x, w], Shape(list(x.shape.without(reduced)) + list(new_dims)))
        if use_bias:
            y = y + get_variable("bias", new_dims, _compute_dtype(x), init.zeros())
    return activation(y) if activation else y


def layer_norm(x: Tensor, dim, *, epsilon: float = 1e-6, name: str = "layer_norm") -> Tensor:
    """Normalize over `dim` to zero mean and unit variance, then scale and shift."""
    d = x.shape.get(dim)
    with scope(name):
        scale = get_variable("scale", Shape([d]), _compute_dtype(x), init.ones())
        bias = get_variable("bias", Shape([d]), _compute_dtype(x), init.zeros())
        mean = ops.reduce_mean(x, d)
        centered = x - mean
        variance = ops.reduce_mean(ops.square(centered), d)
        return centered * ops.rsqrt(variance + epsilon) * scale + bias


def embedding(ids: Tensor, vocab_dim: Dim, output_dim: Dim, *, name: str = "embedding", dtype: str | None = None) -> Tensor:
    """Look up `ids` (i32) in a [vocab_dim, output_dim] table (f32, read as
    `dtype`; None: the compute dtype)."""
    with scope(name):
        table = get_variable("table", Shape([vocab_dim, output_dim]), dtype, init.normal(1.0 / math.sqrt(output_dim.size)))
        return ops.gather(table, ids, vocab_dim)


def attention(
    x: Tensor,
    *,
    io_dim: Dim,
    heads_dim: Dim,
    kv_dim: Dim,
    length_dim: Dim,
    memory_length_name: str = "memory_length",
    causal: bool = False,
    name: str = "attention",
) -> Tensor:
    """Multi-head self-attention over `length_dim` (Mesh TF's layout-friendly form).

    Keys and values run over `length_dim` renamed to `memory_length_name`, so
    queries and keys can be laid out independently.  With `causal`, position i
    attends to positions <= i.
    """
    if length_dim.name not in x.shape.names or io_dim.name not in x.shape.names:
        raise fail(f"attention input {x.shape} must have dims {length_dim.name!r} and {io_dim.name!r}")
    memory_dim = Dim(memory_length_name, length_dim.size)
    with scope(name):
        fan_in = init.normal(1.0 / math.sqrt(io_dim.size))
        dtype = _compute_dtype(x)
        wq = get_variable("w_q", Shape([io_dim, heads_dim, kv_dim]), dtype, fan_in)
        wk = get_variable("w_k", Shape([io_dim, heads_dim, kv_dim]), dtype, fan_in)
        wv = get_variable("w_v", Shape([io_dim, heads_dim, kv_dim]), dtype, fan_in)
        wo = get_variable("w_o", Shape([heads_dim, kv_dim, io_dim]), dtype,
                          init.normal(1.0 / math.sqrt(heads_dim.size * kv_dim.size)))
        batch_dims = [d for d in x.shape if d.name not in (length_dim.name, io_dim.name)]
        memory = ops.rename_dimension(x, length_dim, memory_dim.name)
        q = ops.einsum([x, wq], Shape(batch_dims + [length_dim, heads_dim, kv_dim]), name="q")
        k = ops.einsum([memory, wk], Shape(batch_dims + [memory_dim, heads_dim, kv_dim]), name="k")
        v = ops.einsum([memory, wv], Shape(batch_dims + [memory_dim, heads_dim, kv_dim]), name="v")
        logits = ops.einsum([q, k], Shape(batch_dims + [heads_dim, length_dim, memory_dim]), name="logits")
        logits = logits * (1.0 / math.sqrt(kv_dim.size))
        if causal:
            visible = ops.greater_equal(ops.range_(length_dim), ops.range_(memory_dim))
            logits = ops.where(visible, logits, -1e9)
        weights = ops.softmax(logits, memory_dim)
        o = ops.einsum([weights, v], Shape(batch_dims + [length_dim, heads_dim, kv_dim]), name="weighted_values")
        return ops.einsum([o, wo], Shape(batch_dims + [length_dim, io_dim]), name="output")


def feed_forward(x: Tensor, *, io_dim: Dim, hidden_dim: Dim, activation=ops.relu, name: str = "feed_forward") -> Tensor:
    """Dense up to `hidden_dim`, activation, dense back to `io_dim`."""
    with scope(name):
        h = dense(x, hidden_dim, [io_dim], activation=activation, name="wi")
        return dense(h, io_dim, [hidden_dim], name="wo")
