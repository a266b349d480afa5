"""Pooling over named spatial dims: `max_pool` and `avg_pool` (1-D, 2-D, 3-D
or more -- as many dims as the window names).

``window``  -- ``{dim: size}`` (dims by name or `Dim`);
``strides`` -- ``{dim: stride}``, one int for every windowed dim, or None:
               the window sizes (non-overlapping windows, as Keras / TF's
               pooling layers);
``padding`` -- ``"VALID"`` (none), ``"SAME"`` (TF's: output ``ceil(n /
               stride)``, the extra ``lo = total // 2`` before, the rest
               after) or ``{dim: (before, after)}`` (explicit, unnamed dims
               unpadded).

The output keeps x's dims in order; a windowed dim keeps its *name* with its
new size (as `slice` and `pad` do).  Padded positions never win a max (they
are -inf) and, in `avg_pool`, are not counted unless ``count_include_pad``
(TF's ``avg_pool`` excludes them; ``count_include_pad=True`` divides by the
window size, as flax's ``avg_pool`` by default).
"""

from __future__ import annotations

import math

import numpy as np

from mtfc.frontend.dims import Shape, dim_name
from mtfc.frontend.graph import Tensor, fail
from mtfc.frontend.primitives import bind1
from mtfc.frontend.primitives.window import Win


def pool_windows(x: Tensor, window, strides, padding, what: str) -> tuple[Win, ...]:
    """The `Win` per windowed dim of x from the user's window, strides, padding."""
    if not isinstance(x, Tensor):
        raise fail(f"{what} expects an mtfc tensor, got {type(x).__name__}")
    if not isinstance(window, dict) or not window:
        raise fail(f"{what}: window must be a non-empty {{dim: size}} dict, got {window!r}")
    sizes = {dim_name(d): s for d, s in window.items()}
    for d in sizes:
        x.shape.index(d)
    if strides is None:
        steps = dict(sizes)
    elif isinstance(strides, int):
        steps = {d: strides for d in sizes}
    elif isinstance(strides, dict):
        steps = {d: 1 for d in sizes} | {dim_name(d): s for d, s in strides.items()}
        extra = set(steps) - set(sizes)
        if extra:
            raise fail(f"{what}: strides name dim {sorted(extra)[0]!r}, which has no window")
    else:
        raise fail(f"{what}: strides must be an int or a {{dim: stride}} dict, got {strides!r}")
    for d in sizes:
        if not isinstance(sizes[d], int) or not isinstance(steps[d], int) or sizes[d] < 1 or steps[d] < 1:
            raise fail(f"{what}: dim {d!r}: window {sizes[d]!r} and stride {steps[d]!r} must be positive ints")
    wins = []
    for d, w in sizes.items():
        n, s = x.shape.get(d).size, steps[d]
        if padding == "VALID":
            lo = hi = 0
        elif padding == "SAME":
            total = max((-(-n // s) - 1) * s + w - n, 0)
            lo, hi = total // 2, total - total // 2
        elif isinstance(padding, dict):
            lo, hi = {dim_name(k): v for k, v in padding.items()}.get(d, (0, 0))
            if lo < 0 or hi < 0:
                raise fail(f"{what}: dim {d!r}: padding ({lo}, {hi}) must be non-negative")
        else:
            raise fail(f"{what}: padding must be 'SAME', 'VALID' or {{dim: (before, after)}}, got {padding!r}")
        wins.append(Win(d, w, stride=s, lo=lo, hi=hi))
    if isinstance(padding, dict):
        extra = {dim_name(k) for k in padding} - set(sizes)
        if extra:
            raise fail(f"{what}: padding names dim {sorted(extra)[0]!r}, which has no window")
    return tuple(wins)


def max_pool(x: Tensor, window, strides=None, padding="VALID", *, name: str = "max_pool") -> Tensor:
    """The maximum of each window (``stablehlo.reduce_window`` with maximum).
    Its gradient goes to the first maximum of each window (XLA's choice)."""
    wins = pool_windows(x, window, strides, padding, "max_pool")
    return bind1("reduce_window", [x], kind="max", windows=wins, what="max_pool", name=name)


def _window_sum(x: Tensor, wins, what: str, name: str) -> Tensor:
    """The window sum; bf16 / f16 values are summed in f32 (as `reduce_sum`)."""
    from mtfc.frontend import ops

    if x.dtype in ops.LOW_PRECISION:
        total = bind1("reduce_window", [ops.cast(x, "f32")], kind="sum", windows=wins, what=what, name=name)
        return ops.cast(total, x.dtype)
    return bind1("reduce_window", [x], kind="sum", windows=wins, what=what, name=name)


def sum_pool(x: Tensor, window, strides=None, padding="VALID", *, name: str = "sum_pool") -> Tensor:
    """The sum of each window (``stablehlo.reduce_window`` with add; bf16 and
    f16 windows are summed in f32)."""
    return _window_sum(x, pool_windows(x, window, strides, padding, "sum_pool"), "sum_pool", name)


def avg_pool(x: Tensor, window, strides=None, padding="VALID", *, count_include_pad: bool = False,
             name: str = "avg_pool") -> Tensor:
    """The mean of each window: its sum divided by the number of real
    (unpadded) elements it holds, or by the window size when
    `count_include_pad`."""
    from mtfc.frontend import ops

    if not ops.is_float(x):
        raise fail(f"avg_pool: {x.dtype} input; cast it to a float dtype first")
    wins = pool_windows(x, window, strides, padding, "avg_pool")
    total = _window_sum(x, wins, "avg_pool", name)
    if count_include_pad or all(w.lo == 0 and w.hi == 0 for w in wins):
        return total * (1.0 / math.prod(w.size for w in wins))
    # the count of real elements is separable: a product of per-dim counts
    counts = np.ones([total.shape.get(w.dim).size for w in wins])
    for i, w in enumerate(wins):
        n, out = x.shape.get(w.dim).size, total.shape.get(w.dim).size
        start = np.arange(out) * w.stride - w.lo
        per_dim = np.minimum(start + w.size, n) - np.maximum(start, 0)
        shape = [1] * len(wins)
        shape[i] = out
        counts = counts * per_dim.reshape(shape)
    spatial = Shape([total.shape.get(w.dim) for w in wins])
    return total * ops.constant((1.0 / counts).astype(np.float32), spatial, x.dtype)


def _pool_layer(pool, rank: int, x: Tensor, ksize, strides, padding, name: str) -> Tensor:
    """Mesh TF's pooling layers: the `rank` dims of x between its first (the
    batch) and its last (the channels) are pooled, ``ksize`` (and
    ``strides``, default ``ksize``) per dim in that order."""
    if not isinstance(x, Tensor):
        raise fail(f"{name} expects an mtfc tensor, got {type(x).__name__}")
    if len(x.shape) != rank + 2:
        raise fail(f"{name}: x {x.shape} must have {rank + 2} dims: batch, {rank} spatial, channels")
    spatial = [d.name for d in x.shape[1:-1]]

    def per_dim(value, what):
        values = (value,) * rank if isinstance(value, int) else tuple(value)
        if len(values) != rank:
            raise fail(f"{name}: {what} {value!r} must be an int or {rank} of them (one per dim {spatial})")
        return dict(zip(spatial, values))

    window = per_dim(ksize, "ksize")
    steps = window if strides is None else per_dim(strides, "strides")
    return pool(x, window, steps, padding, name=name)


def max_pool2d(x, ksize=(2, 2), strides=None, padding="VALID", name="max_pool2d"):
    """Mesh TF's ``mtf.layers.max_pool2d``: x ``[batch, h, w, channels]``."""
    return _pool_layer(max_pool, 2, x, ksize, strides, padding, name)


def max_pool3d(x, ksize=(2, 2, 2), strides=None, padding="VALID", name="max_pool3d"):
    """Mesh TF's ``mtf.layers.max_pool3d``: x ``[batch, d, h, w, channels]``."""
    return _pool_layer(max_pool, 3, x, ksize, strides, padding, name)


def avg_pool2d(x, ksize=(2, 2), strides=None, padding="VALID", name="avg_pool2d"):
    """Mesh TF's ``mtf.layers.avg_pool2d``: x ``[batch, h, w, channels]``."""
    return _pool_layer(avg_pool, 2, x, ksize, strides, padding, name)


def avg_pool3d(x, ksize=(2, 2, 2), strides=None, padding="VALID", name="avg_pool3d"):
    """Mesh TF's ``mtf.layers.avg_pool3d``: x ``[batch, d, h, w, channels]``."""
    return _pool_layer(avg_pool, 3, x, ksize, strides, padding, name)
