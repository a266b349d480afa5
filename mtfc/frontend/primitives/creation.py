"""Primitives that make values: constants, iota, and gather (embedding lookup)."""

from __future__ import annotations

import numpy as np
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc.frontend.graph import FLOAT_DTYPES, fail
from mtfc.frontend.primitives.base import Primitive, register


@register
class Constant(Primitive):
    """A constant of ``shape``: a splat of a Python number, or a NumPy array."""

    name = "constant"

    def infer(self, inputs, params):
        value, shape = params["value"], params["shape"]
        if isinstance(value, np.ndarray) and value.shape != shape.sizes:
            raise fail(f"constant of shape {value.shape} does not match {shape}")
        return [(shape, params["dtype"])]

    def lower(self, lx, op, args):
        out = op.outputs[0]
        return [lx.make("stablehlo.constant", out, [], {"value": lx.dense(op.params["value"], out)})]

    def grad(self, op, output_grads):
        return []


@register
class Iota(Primitive):
    """``0, 1, 2, ...`` along ``dim``, broadcast over the rest of ``shape``."""

    name = "iota"

    def infer(self, inputs, params):
        params["shape"].index(params["dim"])
        return [(params["shape"], params["dtype"])]

    def lower(self, lx, op, args):
        out = op.outputs[0]
        return [lx.tag(hlo.IotaOp(lx.type(out), out.shape.index(op.params["dim"])), out.shape.names)]

    def grad(self, op, output_grads):
        return []


@register
class Gather(Primitive):
    """``params[indices]`` along ``dim``: result dims are indices' then params' others."""

    name = "gather"

    def infer(self, inputs, params):
        table, indices = inputs
        dim = params["dim"]
        table.shape.index(dim)
        if indices.dtype != "i32":
            raise fail(f"gather indices must be i32, got {indices.dtype}")
        rest = table.shape.without([dim])
        clash = set(rest.names) & set(indices.shape.names)
        if clash:
            raise fail(f"gather: dims {sorted(clash)} are in both the table and the indices")
        from mtfc.frontend.dims import Shape

        return [(Shape(list(indices.shape) + list(rest)), table.dtype)]

    def lower(self, lx, op, args):
        (table, indices), out = op.inputs, op.outputs[0]
        axis = table.shape.index(op.params["dim"])
        n_idx = len(indices.shape)
        numbers = hlo.GatherDimensionNumbers.get(
            offset_dims=list(range(n_idx, n_idx + len(table.shape) - 1)),
            collapsed_slice_dims=[axis],
            operand_batching_dims=[],
            start_indices_batching_dims=[],
            start_index_map=[axis],
            index_vector_dim=n_idx,
        )
        sizes = list(table.shape.sizes)
        sizes[axis] = 1
        gather = hlo.GatherOp(args[0], args[1], numbers, sizes, indices_are_sorted=False)
        return [lx.tag(gather, out.shape.names)]

    def grad(self, op, output_grads):
        """The table's gradient is a scatter-add of the output gradient rows,
        written as ``einsum(one_hot(indices, vocab), g)``: it partitions like
        any einsum (a vocab split needs no gather of the gradient).  Indices
        are clamped into range first, as the lookup (StableHLO gather) does."""
        from mtfc.frontend import ops
        from mtfc.frontend.dims import Dim

        (g,), (table, indices) = output_grads, op.inputs
        if table.dtype not in FLOAT_DTYPES:
            return [None, None]
        vocab = table.shape.get(op.params["dim"])
        if vocab.name in indices.shape.names:
            # the indices reuse the table dim's name: give it another one on both sides
            other = _fresh_name(vocab.name, [table.shape, indices.shape, g.shape])
            indices = ops.rename_dimension(indices, vocab.name, other)
            g = ops.rename_dimension(g, vocab.name, other)
        indices = ops.minimum(ops.maximum(indices, 0), vocab.size - 1)
        hot = ops.one_hot(indices, Dim(vocab.name, vocab.size), dtype=table.dtype)
        return [ops.einsum([hot, g], table.shape, name="scatter_add"), None]


def _fresh_name(base, shapes):
    names = {n for s in shapes for n in s.names}
    k = 0
    while f"{base}_{k}" in names:
        k += 1
    return f"{base}_{k}"
