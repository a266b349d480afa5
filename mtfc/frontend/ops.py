"""The DSL's ops: thin wrappers that bind primitives, plus composites built from them.

Elementwise ops broadcast by dim name: the result holds the first operand's
dims, then the other operand's new dims, in order (Mesh TF's rule).

Dtypes: float operands of different dtypes (elementwise ops, `where`,
`einsum`) are cast to their promoted dtype (`promote`: f32 when they differ);
Python numbers become constants of the operands' dtype; a float or integer
tensor mixed with a tensor of another kind is an error.  A float value the
model gives no dtype (`constant`, `zeros`, `ones`, `one_hot`, `where` of two
numbers, parameters) takes the compute dtype (`default_float`: bf16 in a
train step built with ``--precision bf16``, else f32).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mtfc.frontend.dims import Dim, DimLike, Shape, as_shape, dim_name
from mtfc.frontend.graph import FLOAT_DTYPES, Tensor, fail
from mtfc.frontend.primitives import bind1

# ----------------------------------------------------------------- broadcasting


def _union(shapes: Sequence[Shape]) -> Shape:
    dims: list[Dim] = []
    for shape in shapes:
        for d in shape:
            for e in dims:
                if e.name == d.name and e.size != d.size:
                    raise fail(f"dim {d.name!r} has two sizes, {e.size} and {d.size}")
            if d.name not in [e.name for e in dims]:
                dims.append(d)
    return Shape(dims)


def broadcast(x: Tensor, shape) -> Tensor:
    """Broadcast (and reorder) `x` to `shape`, which must hold all of x's dims."""
    shape = as_shape(shape)
    if x.shape == shape:
        return x
    return bind1("broadcast", [x], shape=shape)


LOW_PRECISION = ("bf16", "f16")  # float dtypes whose sums accumulate in f32


def default_float() -> str:
    """The dtype of a float value a model does not give one (constants,
    `one_hot`, `zeros`, parameters): the graph's compute dtype -- ``bf16`` in
    a train step built with ``--precision bf16``, else ``f32``."""
    graph = _current_graph_or_none()
    return graph.compute_dtype if graph is not None else "f32"


def _current_graph_or_none():
    from mtfc.frontend.graph import _current

    return _current.get()


def promote(dtypes) -> str | None:
    """The common dtype of float operands (JAX's rule for floats): one dtype
    stays; f32 with bf16 or f16, or bf16 with f16, gives f32.  None when a
    non-float dtype is mixed with another dtype (an error left to the op)."""
    dtypes = set(dtypes)
    if len(dtypes) == 1:
        return next(iter(dtypes))
    if dtypes <= set(FLOAT_DTYPES):
        return "f32"
    return None


def _as_tensors(*values, op: str = "elementwise") -> list[Tensor]:
    """Tensors for `values`: float tensors of different dtypes are cast to
    their promoted dtype (`promote`); Python numbers become constants of it.
    A float number with an integer or boolean tensor is an error (it would be
    truncated)."""
    tensors = [v for v in values if isinstance(v, Tensor)]
    if not tensors:
        raise fail("at least one operand must be an mtfc tensor")
    dtype = promote(t.dtype for t in tensors) or tensors[0].dtype
    out = []
    for v in values:
        if isinstance(v, Tensor):
            out.append(cast(v, dtype) if v.dtype in FLOAT_DTYPES and dtype in FLOAT_DTYPES else v)
        elif isinstance(v, (int, float, bool, np.number)):
            if dtype not in FLOAT_DTYPES and isinstance(v, (float, np.floating)) and not float(v).is_integer():
                raise fail(f"{op}: the number {v!r} with a {dtype} tensor would be truncated; cast the tensor first")
            out.append(constant(v, Shape(), dtype))
        else:
            raise fail(f"cannot use {type(v).__name__} as an mtfc operand")
    return out


def _elementwise(fn: str, *values, name: str | None = None) -> Tensor:
    tensors = _as_tensors(*values, op=fn)
    shape = _union([t.shape for t in tensors])
    tensors = [_splat_or_broadcast(t, shape) for t in tensors]
    return bind1("elementwise", tensors, fn=fn, name=name or fn)


def _splat_or_broadcast(t: Tensor, shape: Shape) -> Tensor:
    if t.op.primitive == "constant" and not t.shape and not isinstance(t.op.params["value"], np.ndarray):
        return constant(t.op.params["value"], shape, t.dtype) if shape else t
    return broadcast(t, shape)


# ----------------------------------------------------------------- elementwise

def exp(x): return _elementwise("exp", x)
def log(x): return _elementwise("log", x)
def tanh(x): return _elementwise("tanh", x)
def sigmoid(x): return _elementwise("logistic", x)
def sqrt(x): return _elementwise("sqrt", x)
def rsqrt(x): return _elementwise("rsqrt", x)
def abs(x): return _elementwise("abs", x)  # noqa: A001 - Mesh TF's name
def negative(x): return _elementwise("negate", x)
def floor(x): return _elementwise("floor", x)
def sign(x): return _elementwise("sign", x)
def logical_not(x): return _elementwise("not", x)
def add(a, b): return _elementwise("add", a, b)
def subtract(a, b): return _elementwise("subtract", a, b)
def multiply(a, b): return _elementwise("multiply", a, b)
def divide(a, b): return _elementwise("divide", a, b)
def maximum(a, b): return _elementwise("maximum", a, b)
def minimum(a, b): return _elementwise("minimum", a, b)
def power(a, b): return _elementwise("power", a, b)
def logical_and(a, b): return _elementwise("and", a, b)
def logical_or(a, b): return _elementwise("or", a, b)
def equal(a, b): return _elementwise("eq", a, b)
def not_equal(a, b): return _elementwise("ne", a, b)
def less(a, b): return _elementwise("lt", a, b)
def less_equal(a, b): return _elementwise("le", a, b)
def greater(a, b): return _elementwise("gt", a, b)
def greater_equal(a, b): return _elementwise("ge", a, b)


def where(condition, x, y) -> Tensor:
    """Elementwise ``x if condition else y``, broadcasting all three by name.

    The result holds x's dims, then y's new ones, then the condition's (Mesh
    TF's order), so a mask broadcast over data keeps the data's layout order.
    """
    if not isinstance(condition, Tensor):
        raise fail("where: the condition must be an mtfc tensor")
    if not isinstance(x, Tensor) and not isinstance(y, Tensor):
        x = constant(x, Shape(), default_float())
    x, y = _as_tensors(x, y, op="where")
    shape = _union([x.shape, y.shape, condition.shape])
    return bind1(
        "elementwise",
        [_splat_or_broadcast(t, shape) for t in (condition, x, y)],
        fn="select",
        name="where",
    )


def square(x): return multiply(x, x)
def relu(x: Tensor) -> Tensor:
    """``max(x, 0)`` with the gradient of jax.nn.relu and tf.nn.relu: 0 at
    ``x == 0`` (`maximum` splits a tie's gradient in halves, as jnp.maximum)."""
    return where(greater(x, 0.0), x, 0.0)


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh approximation (as jax.nn.gelu's default)."""
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1.0 + tanh(inner))


def cast(x: Tensor, dtype: str) -> Tensor:
    """Convert to dtype ``f32``, ``bf16``, ``f16``, ``i32`` or ``i1``; a no-op when equal."""
    dtype = _dtype(dtype)
    if x.dtype == dtype:
        return x
    return bind1("convert", [x], dtype=dtype, name="cast")


def _dtype(dtype) -> str:
    aliases = {"float32": "f32", "bfloat16": "bf16", "float16": "f16", "int32": "i32", "bool": "i1"}
    name = aliases.get(str(dtype), str(dtype))
    if name not in ("f32", "bf16", "f16", "i32", "i1"):
        raise fail(f"unknown dtype {dtype!r}: use f32, bf16, f16, i32 or bool")
    return name


# ----------------------------------------------------------------- einsum and reductions


def einsum(xs: Sequence[Tensor], output_shape=None, *, name: str = "einsum") -> Tensor:
    """Multiply `xs` (broadcasting by name) and sum every dim not in `output_shape`.

    Without `output_shape` the output holds the dims that occur in exactly one
    input, in order of appearance (Mesh TF's rule).
    """
    xs = list(xs)
    if not xs or not all(isinstance(x, Tensor) for x in xs):
        raise fail("einsum takes a list of mtfc tensors")
    dtype = promote(x.dtype for x in xs)
    if dtype in FLOAT_DTYPES:
        xs = [cast(x, dtype) for x in xs]
    if output_shape is None:
        all_dims = [d for x in xs for d in x.shape]
        counts = {n: sum(n in x.shape.names for x in xs) for n in {d.name for d in all_dims}}
        output_shape = _union([Shape([d]) for d in all_dims if counts[d.name] == 1])
    return bind1("einsum", xs, shape=as_shape(output_shape), name=name)


def _reduce(kind: str, x: Tensor, reduced_dim, output_shape, name: str) -> Tensor:
    if output_shape is not None:
        shape = as_shape(output_shape)
        for d in shape:
            if d.name not in x.shape.names:
                raise fail(f"{name}: output dim {d.name!r} is not in the input {x.shape}")
    elif reduced_dim is None:
        shape = Shape()
    else:
        dims = reduced_dim if isinstance(reduced_dim, (list, tuple, Shape)) else [reduced_dim]
        for d in dims:
            x.shape.index(d)
        shape = x.shape.without(dims)
    shape = Shape(d for d in x.shape if d.name in shape.names)
    if shape == x.shape:
        return x
    if kind == "sum" and x.dtype in LOW_PRECISION:
        # a bf16 / f16 sum accumulates in f32 (a bf16 running sum of 512 values
        # near 4 stops growing at 2048); the result has x's dtype
        total = bind1("reduce", [cast(x, "f32")], shape=shape, kind=kind, name=name)
        return bind1("convert", [total], dtype=x.dtype, name="cast", f32_sum=True)
    return bind1("reduce", [x], shape=shape, kind=kind, name=name)


def reduce_sum(x, reduced_dim=None, output_shape=None):
    """Sum over `reduced_dim` (a dim, a list of dims), or down to `output_shape`, or everything."""
    return _reduce("sum", x, reduced_dim, output_shape, "reduce_sum")


def reduce_max(x, reduced_dim=None, output_shape=None):
    return _reduce("max", x, reduced_dim, output_shape, "reduce_max")


def reduce_min(x, reduced_dim=None, output_shape=None):
    return _reduce("min", x, reduced_dim, output_shape, "reduce_min")


def reduce_mean(x, reduced_dim=None, output_shape=None):
    """Mean over the reduced dims; an integer mean divides the sum by the count,
    truncating toward zero (as TF's integer reduce_mean)."""
    total = reduce_sum(x, reduced_dim, output_shape)
    if not is_float(x):
        return total / (x.shape.size // total.shape.size)
    return total * (total.shape.size / x.shape.size)


def reduce_logsumexp(x, reduced_dim=None, output_shape=None):
    """log(sum(exp(x))) computed stably (max subtracted first)."""
    peak = stop_gradient(reduce_max(x, reduced_dim, output_shape))
    return log(reduce_sum(exp(x - peak), reduced_dim, output_shape)) + peak


def cumsum(x: Tensor, dim: DimLike, exclusive: bool = False) -> Tensor:
    """Running sum along `dim` (``exclusive``: of the elements before each
    position, so the first is 0).  As Mesh TF's: an einsum of x, its `dim`
    renamed, with a triangular 0/1 matrix -- O(n^2) in the dim's size, meant
    for short dims (an MoE group), and split like any einsum."""
    d = x.shape.get(dim)
    if not is_float(x):
        raise fail(f"cumsum: {x.dtype} input; cast it to a float dtype first")
    source = Dim(f"{d.name}_cumsum_source", d.size)
    if source.name in x.shape.names:
        raise fail(f"cumsum: dim name {source.name!r} is already in {x.shape}")
    before = (less if exclusive else less_equal)(range_(source), range_(d))
    triangle = where(before, constant(1.0, Shape(), x.dtype), constant(0.0, Shape(), x.dtype))
    return einsum([rename_dimension(x, d, source.name), triangle], x.shape, name="cumsum")


def softmax(x: Tensor, dim: DimLike) -> Tensor:
    """exp(x) / sum(exp(x)) over `dim`, stably."""
    shifted = x - stop_gradient(reduce_max(x, dim))
    e = exp(shifted)
    return e / reduce_sum(e, dim)


def log_softmax(x: Tensor, dim: DimLike) -> Tensor:
    return x - reduce_logsumexp(x, dim)


def stop_gradient(x: Tensor) -> Tensor:
    """Identity in the forward pass; `mtf.grad` sends no gradient through it."""
    if not isinstance(x, Tensor):
        raise fail(f"stop_gradient expects an mtfc tensor, got {type(x).__name__}")
    return bind1("stop_gradient", [x])


# ----------------------------------------------------------------- reshaping


def transpose(x: Tensor, new_shape) -> Tensor:
    new_shape = as_shape(new_shape)
    return x if new_shape == x.shape else bind1("transpose", [x], shape=new_shape)


def reshape(x: Tensor, new_shape) -> Tensor:
    """Same elements, same row-major order, new dims."""
    new_shape = as_shape(new_shape)
    return x if new_shape == x.shape else bind1("reshape", [x], shape=new_shape)


def rename_dimension(x: Tensor, old: DimLike, new: str) -> Tensor:
    """The same tensor with dim `old` called `new` (its layout may change)."""
    i = x.shape.index(old)
    dims = list(x.shape)
    dims[i] = Dim(dim_name(new), dims[i].size)
    return bind1("reshape", [x], shape=Shape(dims), name="rename")


def replace_dimensions(x: Tensor, old_dims, new_dims) -> Tensor:
    """Replace the dims `old_dims` (one or several) by `new_dims` of equal total size.

    Splits one dim into several, merges several into one, or both.  The old
    dims are first brought together (in the order given) at the position of
    the first of them.
    """
    old_dims = [old_dims] if isinstance(old_dims, (Dim, str)) else list(old_dims)
    new_dims = [new_dims] if isinstance(new_dims, Dim) else list(new_dims)
    positions = [x.shape.index(d) for d in old_dims]
    old = [x.shape[i] for i in positions]
    if math.prod(d.size for d in old) != math.prod(d.size for d in new_dims):
        raise fail(f"replace_dimensions: {old} and {list(new_dims)} have different total sizes")
    at = min(positions)
    rest = [d for d in x.shape if d.name not in {o.name for o in old}]
    before = [d for d in x.shape[:at] if d in rest]
    after = [d for d in rest if d not in before]
    x = transpose(x, Shape(before + old + after))
    return bind1("reshape", [x], shape=Shape(before + list(new_dims) + after), name="replace_dimensions")


# ----------------------------------------------------------------- slice, pad, concat, shift


def slice(x: Tensor, begin: int, size: int, dim: DimLike, new_name: str | None = None) -> Tensor:  # noqa: A001
    """Elements ``begin .. begin+size`` along `dim`; the result dim keeps its name
    (or takes `new_name`) with size `size`."""
    i = x.shape.index(dim)
    new_dim = Dim(new_name or x.shape[i].name, size)
    return bind1("slice", [x], dim=x.shape[i].name, begin=begin, end=begin + size, new_dim=new_dim)


def pad(x: Tensor, paddings: tuple[int, int], dim: DimLike, value=0, new_name: str | None = None) -> Tensor:
    """Add `paddings` = (before, after) elements of `value` along `dim`."""
    i = x.shape.index(dim)
    before, after = paddings
    new_dim = Dim(new_name or x.shape[i].name, x.shape[i].size + before + after)
    return bind1("pad", [x], dim=x.shape[i].name, before=before, after=after, value=value, new_dim=new_dim)


def concat(xs: Sequence[Tensor], dim: DimLike, new_name: str | None = None) -> Tensor:
    """Concatenate along `dim`; the other dims must match."""
    xs = list(xs)
    name = dim_name(dim)
    size = sum(x.shape.get(name).size for x in xs)
    return bind1("concat", xs, dim=name, new_dim=Dim(new_name or name, size))


def shift(x: Tensor, offset: int, dim: DimLike, wrap: bool = False) -> Tensor:
    """Shift along `dim` by `offset` (positive: towards higher indices).

    Vacated positions are zero, or the wrapped-around elements when `wrap`.
    One op in the IR (``stablehlo.composite "mtfc.shift"``): along a dim the
    layout splits, the explicit partitioner sends each device just the
    |offset| elements it needs from its neighbour.
    """
    d = x.shape.get(dim)
    n = d.size
    if wrap:
        offset %= n
    if offset == 0:
        return x
    if abs_int(offset) >= n:
        return zeros(x.shape, x.dtype)
    return bind1("shift", [x], dim=d.name, offset=int(offset), wrap=bool(wrap))


def abs_int(v: int) -> int:
    return v if v >= 0 else -v


# ----------------------------------------------------------------- creation


def constant(value, shape=(), dtype=None) -> Tensor:
    """A constant: a Python number broadcast to `shape`, or a NumPy array of
    that shape; `dtype` None: the compute dtype (`default_float`)."""
    shape = as_shape(shape)
    dtype = _dtype(dtype) if dtype is not None else default_float()
    if isinstance(value, np.ndarray):
        value = np.asarray(value)
        if value.ndim == 0:
            value = value.item()
    return bind1("constant", [], value=value, shape=shape, dtype=dtype)


def zeros(shape, dtype=None) -> Tensor:
    """Zeros of `dtype` (None: the compute dtype)."""
    return constant(0, shape, dtype)


def ones(shape, dtype=None) -> Tensor:
    """Ones of `dtype` (None: the compute dtype)."""
    return constant(1, shape, dtype)


def iota(shape, dim: DimLike, dtype="i32") -> Tensor:
    """``0, 1, ...`` along `dim` of `shape` (broadcast over the other dims)."""
    shape = as_shape(shape)
    return bind1("iota", [], shape=shape, dim=shape.get(dim).name, dtype=_dtype(dtype))


def range_(dim: Dim, dtype="i32") -> Tensor:
    return iota(Shape([dim]), dim, dtype)


def one_hot(indices: Tensor, dim: Dim, dtype=None, on_value=1.0, off_value=0.0) -> Tensor:
    """``dim``-sized one-hot vectors of integer `indices` (result dims: indices'
    + dim), of `dtype` (None: the compute dtype).

    The usual 1/0 one-hot is lowered as a ``convert`` of the comparison (as
    ``jax.nn.one_hot`` is), not a ``select`` of two constants: XLA then folds
    ``x * one_hot`` into ``select(hit, x, 0)`` next to ``x``'s producer (the
    loss's target logit reads the logits directly) instead of materializing
    the one-hot -- a [batch, length, vocab] buffer that, depending only on the
    targets, XLA scheduled at the start and kept alive through the whole
    forward pass (issue 14, item 4).  The values are the same 1.0 and 0.0."""
    dtype = _dtype(dtype) if dtype is not None else default_float()
    if indices.dtype != "i32":
        raise fail(f"one_hot indices must be i32, got {indices.dtype}")
    if dim.name in indices.shape.names:
        raise fail(f"one_hot: dim {dim.name!r} is already in the indices {indices.shape}")
    shape = Shape(list(indices.shape) + [dim])
    hit = equal(broadcast(indices, shape), iota(shape, dim))
    if on_value == 1.0 and off_value == 0.0:
        return cast(hit, dtype)
    return where(hit, constant(on_value, Shape(), dtype), constant(off_value, Shape(), dtype))


def gather(params: Tensor, indices: Tensor, dim: DimLike) -> Tensor:
    """Rows of `params` along `dim` picked by integer `indices` (embedding lookup).

    Result dims: the indices' dims, then params' dims other than `dim`.
    """
    return bind1("gather", [params, indices], dim=params.shape.get(dim).name)


def is_float(x: Tensor) -> bool:
    return x.dtype in FLOAT_DTYPES
