"""Einsum by dim names and reductions over named dims.

An einsum's gradient is an einsum of the output gradient with the other
inputs; a sum's is a broadcast.
"""

from __future__ import annotations

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc.frontend.dims import Shape
from mtfc.frontend.graph import FLOAT_DTYPES, fail
from mtfc.frontend.primitives.base import Primitive, check_same_sizes, register

REDUCERS = {"sum": hlo.AddOp, "max": hlo.MaxOp, "min": hlo.MinOp}


@register
class Einsum(Primitive):
    """Multiply inputs, broadcasting by name; sum every dim absent from ``shape``."""

    name = "einsum"

    def infer(self, inputs, params):
        shape: Shape = params["shape"]
        check_same_sizes([t.shape for t in inputs] + [shape], "einsum")
        known = {n for t in inputs for n in t.shape.names}
        for d in shape:
            if d.name not in known:
                raise fail(
                    f"einsum output dim {d.name!r} is in no input (inputs: "
                    + ", ".join(repr(t.shape) for t in inputs) + ")"
                )
        dtypes = {t.dtype for t in inputs}
        if len(dtypes) != 1:
            raise fail(f"einsum operands have dtypes {sorted(dtypes)}; cast one first")
        return [(shape, inputs[0].dtype)]

    def lower(self, lx, op, args):
        out = op.outputs[0]
        sizes = {d.name: d.size for t in op.inputs for d in t.shape}
        values = list(zip(args, [list(t.shape.names) for t in op.inputs]))
        value, names = values[0]
        for k, (rhs, rhs_names) in enumerate(values[1:], start=1):
            later = {n for _, ns in values[k + 1 :] for n in ns} | set(out.shape.names)
            value, names = _dot(lx, value, names, rhs, rhs_names, later, sizes, op.inputs[0].dtype)
        value, names = _reduce_to(lx, value, names, set(out.shape.names), sizes, op.inputs[0].dtype, "sum")
        if names != list(out.shape.names):
            perm = [names.index(n) for n in out.shape.names]
            value = lx.tag(hlo.TransposeOp(value, perm), out.shape.names)
        return [value]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        (g,) = output_grads
        if op.outputs[0].dtype not in FLOAT_DTYPES:
            return [None] * len(op.inputs)
        grads = []
        for i, x in enumerate(op.inputs):
            # d/dx_i: the output gradient times every other input, summed down to
            # x_i's dims (an einsum, so it partitions like the forward one)
            others = op.inputs[:i] + op.inputs[i + 1 :]
            available = set(g.shape.names).union(*(t.shape.names for t in others))
            kept = Shape(d for d in x.shape if d.name in available)
            gx = ops.einsum([g] + others, kept)
            # dims only x_i had were summed away in the forward op: broadcast back
            grads.append(ops.broadcast(gx, x.shape))
        return grads


def _dot(lx, lhs, lhs_names, rhs, rhs_names, keep, sizes, dtype):
    """dot_general of two named values, keeping the dims in `keep`."""
    lhs, lhs_names = _reduce_to(lx, lhs, lhs_names, keep | set(rhs_names), sizes, dtype, "sum")
    rhs, rhs_names = _reduce_to(lx, rhs, rhs_names, keep | set(lhs_names), sizes, dtype, "sum")
    common = [n for n in lhs_names if n in rhs_names]
    batch = [n for n in common if n in keep]
    contract = [n for n in common if n not in keep]
    lhs_free = [n for n in lhs_names if n not in common]
    rhs_free = [n for n in rhs_names if n not in common]
    names = batch + lhs_free + rhs_free
    numbers = hlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=[lhs_names.index(n) for n in batch],
        rhs_batching_dimensions=[rhs_names.index(n) for n in batch],
        lhs_contracting_dimensions=[lhs_names.index(n) for n in contract],
        rhs_contracting_dimensions=[rhs_names.index(n) for n in contract],
    )
    result_type = lx.type_of([sizes[n] for n in names], dtype)
    return lx.tag(hlo.DotGeneralOp(result_type, lhs, rhs, numbers), names), names


def _reduce_to(lx, value, names, keep, sizes, dtype, kind):
    """Reduce away the dims of `value` that are not in `keep`."""
    drop = [i for i, n in enumerate(names) if n not in keep]
    if not drop:
        return value, names
    kept = [n for n in names if n in keep]
    return reduce_value(lx, value, drop, [sizes[n] for n in kept], kept, dtype, kind), kept


def reduce_value(lx, value, axes, out_sizes, out_names, dtype, kind):
    """stablehlo.reduce of `value` over positions `axes` with the `kind` body."""
    init = lx.scalar(_identity(kind, dtype), dtype)
    op = hlo.ReduceOp([lx.type_of(out_sizes, dtype)], [value], [init], axes)
    scalar = lx.type_of([], dtype)
    block = op.regions[0].blocks.append(scalar, scalar)
    with ir.InsertionPoint(block):
        hlo.ReturnOp([REDUCERS[kind](block.arguments[0], block.arguments[1]).result])
    return lx.tag(op, out_names)


def _identity(kind: str, dtype: str):
    if kind == "sum":
        return 0
    if dtype in ("i32",):
        info = np.iinfo(np.int32)
        return info.min if kind == "max" else info.max
    return -np.inf if kind == "max" else np.inf


@register
class Reduce(Primitive):
    """Reduce (sum, max, min) over the dims absent from ``shape``."""

    name = "reduce"

    def infer(self, inputs, params):
        (x,) = inputs
        shape: Shape = params["shape"]
        if params["kind"] not in REDUCERS:
            raise fail(f"unknown reduction {params['kind']!r}")
        if [n for n in x.shape.names if n in shape.names] != list(shape.names):
            raise fail(f"reduce: {shape} is not {x.shape} with some dims removed")
        return [(shape, x.dtype)]

    def lower(self, lx, op, args):
        (x,), out = op.inputs, op.outputs[0]
        axes = [i for i, n in enumerate(x.shape.names) if n not in out.shape.names]
        return [reduce_value(lx, args[0], axes, list(out.shape.sizes), out.shape.names, x.dtype, op.params["kind"])]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        (g,), (x,), ans = output_grads, op.inputs, op.outputs[0]
        if x.dtype not in FLOAT_DTYPES:
            return [None]
        if op.params["kind"] == "sum":
            return [ops.broadcast(g, x.shape)]
        # max / min (JAX's convention): the gradient goes to the elements equal
        # to the result, shared equally among ties
        hit = ops.cast(ops.equal(x, ans), x.dtype)
        count = ops.reduce_sum(hit, output_shape=ans.shape)
        return [hit * (g / count)]
