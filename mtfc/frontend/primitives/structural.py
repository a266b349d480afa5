"""Primitives that move data without arithmetic: broadcast, transpose,
reshape (rename / replace dims), slice, pad, concat, shift, stop_gradient.

Their gradient rules move the gradient back the other way: a broadcast's is a
sum over the added dims, a slice's a pad with zeros, a pad's a slice, and so on.
"""

from __future__ import annotations

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc.frontend.dims import Shape
from mtfc.frontend.graph import fail
from mtfc.frontend.primitives.base import Primitive, check_same_sizes, register


@register
class Broadcast(Primitive):
    """Broadcast to ``shape``, which holds every input dim (in any order)."""

    name = "broadcast"

    def infer(self, inputs, params):
        (x,) = inputs
        shape: Shape = params["shape"]
        check_same_sizes([x.shape, shape], "broadcast")
        for d in x.shape:
            if d.name not in shape.names:
                raise fail(f"cannot broadcast {x.shape} to {shape}: dim {d.name!r} is missing")
        return [(shape, x.dtype)]

    def lower(self, lx, op, args):
        (x,), out = op.inputs, op.outputs[0]
        value = args[0]
        positions = [out.shape.names.index(n) for n in x.shape.names]
        if positions != sorted(positions):
            order = sorted(range(len(positions)), key=lambda i: positions[i])
            names = [x.shape.names[i] for i in order]
            value = lx.tag(hlo.TransposeOp(value, order), names)
            positions = sorted(positions)
        return [lx.make("stablehlo.broadcast_in_dim", out, [value],
                        {"broadcast_dimensions": ir.DenseI64ArrayAttr.get(positions)})]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        (g,), x = output_grads, op.inputs[0]
        # sum over the added dims, then back to x's dim order
        return [ops.transpose(ops.reduce_sum(g, output_shape=x.shape), x.shape)]


@register
class Transpose(Primitive):
    """Reorder dims to ``shape`` (a permutation of the input's)."""

    name = "transpose"

    def infer(self, inputs, params):
        (x,) = inputs
        shape: Shape = params["shape"]
        if sorted(shape.names) != sorted(x.shape.names):
            raise fail(f"transpose: {shape} is not a permutation of {x.shape}")
        check_same_sizes([x.shape, shape], "transpose")
        return [(shape, x.dtype)]

    def lower(self, lx, op, args):
        (x,), out = op.inputs, op.outputs[0]
        perm = [x.shape.names.index(n) for n in out.shape.names]
        return [lx.tag(hlo.TransposeOp(args[0], perm), out.shape.names)]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        return [ops.transpose(output_grads[0], op.inputs[0].shape)]


@register
class Reshape(Primitive):
    """Same elements in the same row-major order under new dims (rename, split, merge)."""

    name = "reshape"

    def infer(self, inputs, params):
        (x,) = inputs
        shape: Shape = params["shape"]
        if shape.size != x.shape.size:
            raise fail(f"cannot reshape {x.shape} ({x.shape.size} elements) to {shape} ({shape.size} elements)")
        return [(shape, x.dtype)]

    def lower(self, lx, op, args):
        out = op.outputs[0]
        return [lx.tag(hlo.ReshapeOp(lx.type(out), args[0]), out.shape.names)]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        # the same elements under the input's dims (a rename back, or the inverse split / merge)
        return [ops.reshape(output_grads[0], op.inputs[0].shape)]


@register
class Slice(Primitive):
    """``x[begin:end]`` along one dim; the result dim is ``new_dim``."""

    name = "slice"

    def infer(self, inputs, params):
        (x,) = inputs
        i = x.shape.index(params["dim"])
        begin, end = params["begin"], params["end"]
        size = x.shape[i].size
        if not (0 <= begin < end <= size):
            raise fail(f"slice [{begin}:{end}] is out of range for dim {x.shape[i]!r}")
        dims = list(x.shape)
        dims[i] = params["new_dim"]
        return [(Shape(dims), x.dtype)]

    def lower(self, lx, op, args):
        (x,), out = op.inputs, op.outputs[0]
        i = x.shape.index(op.params["dim"])
        start = [0] * len(x.shape)
        limit = list(x.shape.sizes)
        start[i], limit[i] = op.params["begin"], op.params["end"]
        return [lx.tag(hlo.SliceOp(args[0], start, limit, [1] * len(start)), out.shape.names)]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        (g,), x = output_grads, op.inputs[0]
        old = x.shape.get(op.params["dim"])
        begin, end = op.params["begin"], op.params["end"]
        # zeros where the slice dropped elements
        return [ops.pad(g, (begin, old.size - end), op.params["new_dim"].name, new_name=old.name)]


@register
class Pad(Primitive):
    """Pad one dim with ``before``/``after`` copies of the scalar ``value``."""

    name = "pad"

    def infer(self, inputs, params):
        (x,) = inputs
        i = x.shape.index(params["dim"])
        if params["before"] < 0 or params["after"] < 0:
            raise fail("pad: before and after must be non-negative")
        dims = list(x.shape)
        dims[i] = params["new_dim"]
        return [(Shape(dims), x.dtype)]

    def lower(self, lx, op, args):
        (x,), out = op.inputs, op.outputs[0]
        i = x.shape.index(op.params["dim"])
        low = [0] * len(x.shape)
        high = [0] * len(x.shape)
        low[i], high[i] = op.params["before"], op.params["after"]
        pad_value = lx.scalar(op.params["value"], x.dtype)
        return [lx.tag(hlo.PadOp(args[0], pad_value, low, high, [0] * len(low)), out.shape.names)]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        (g,), x = output_grads, op.inputs[0]
        old = x.shape.get(op.params["dim"])
        # the padding value is a constant: only the original elements get gradient
        return [ops.slice(g, op.params["before"], old.size, op.params["new_dim"].name, new_name=old.name)]


@register
class Concat(Primitive):
    """Concatenate along one dim; other dims must agree in name, size and order."""

    name = "concat"

    def infer(self, inputs, params):
        dim = params["dim"]
        first = inputs[0]
        for t in inputs:
            t.shape.index(dim)
            if t.shape.without([dim]) != first.shape.without([dim]) or t.shape.names != first.shape.names:
                raise fail(f"concat along {dim!r}: shapes {first.shape} and {t.shape} differ in other dims")
            if t.dtype != first.dtype:
                raise fail(f"concat: dtypes {first.dtype} and {t.dtype} differ")
        dims = list(first.shape)
        dims[first.shape.index(dim)] = params["new_dim"]
        return [(Shape(dims), first.dtype)]

    def lower(self, lx, op, args):
        out = op.outputs[0]
        axis = op.inputs[0].shape.index(op.params["dim"])
        return [lx.tag(hlo.ConcatenateOp(args, axis), out.shape.names)]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        (g,), dim, new = output_grads, op.params["dim"], op.params["new_dim"].name
        grads, offset = [], 0
        for x in op.inputs:
            size = x.shape.get(dim).size
            grads.append(ops.slice(g, offset, size, new, new_name=dim))
            offset += size
        return grads


@register
class Shift(Primitive):
    """``y[i] = x[i - offset]`` along one dim (zeros where that is outside the
    dim, or the wrapped-around element when ``wrap``).

    Lowers to ``stablehlo.composite "mtfc.shift"`` (docs/IR.md "Composite
    ops"), whose decomposition is a pad (or a concatenation with itself) and
    a slice back to the dim's size: the explicit partitioner reads the
    composite and exchanges just the halo; every other consumer (XLA,
    Shardy) sees the decomposition."""

    name = "shift"

    def infer(self, inputs, params):
        (x,) = inputs
        x.shape.index(params["dim"])
        return [(x.shape, x.dtype)]

    def lower(self, lx, op, args):
        (x,), out = op.inputs, op.outputs[0]
        k = x.shape.index(op.params["dim"])
        n, offset, wrap = x.shape[k].size, op.params["offset"], op.params["wrap"]
        names = out.shape.names

        def decompose(lx, value):
            rank = len(x.shape)
            start, limit = [0] * rank, list(x.shape.sizes)
            if wrap:  # [x, x][n - offset : 2n - offset]: element i is x[(i - offset) mod n]
                doubled = lx.tag(hlo.ConcatenateOp([value, value], k), names)
                start[k], limit[k] = n - offset, 2 * n - offset
                return lx.tag(hlo.SliceOp(doubled, start, limit, [1] * rank), names)
            low, high = [0] * rank, [0] * rank
            if offset > 0:  # offset zeros, x, n - offset zeros; keep the first n
                low[k], high[k] = offset, n - offset
            else:  # n + offset zeros, x, -offset zeros; keep the last n
                low[k], high[k] = n + offset, -offset
                start[k], limit[k] = n, 2 * n
            padded = lx.tag(hlo.PadOp(value, lx.scalar(0, x.dtype), low, high, [0] * rank), names)
            return lx.tag(hlo.SliceOp(padded, start, limit, [1] * rank), names)

        attributes = {"dim": k, "offset": offset, "wrap": wrap}
        return [lx.composite("mtfc.shift", [args[0]], lx.type(out), names, attributes, decompose)]

    def grad(self, op, output_grads):
        from mtfc.frontend import ops

        (g,) = output_grads
        return [ops.shift(g, -op.params["offset"], op.params["dim"], wrap=op.params["wrap"])]


@register
class StopGradient(Primitive):
    """The identity, with no gradient: ``mtf.stop_gradient(x)``.  Lowers to nothing."""

    name = "stop_gradient"

    def infer(self, inputs, params):
        (x,) = inputs
        return [(x.shape, x.dtype)]

    def lower(self, lx, op, args):
        return [args[0]]

    def grad(self, op, output_grads):
        return [None]
