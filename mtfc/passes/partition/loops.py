"""Rules for loops over stacked layers (docs/IR.md, "Loops"): the
``stablehlo.while`` itself, and the ``dynamic_slice`` / ``dynamic_update_slice``
that read and write one layer of a stacked value per trip.

A carried value has one layout -- the one its dims and its class
(``mtfc.classes``) imply -- at entry, in both regions and at exit: each
operand is resharded to it before the loop, the regions are partitioned op by
op under the same rules as the function body (their block arguments are the
carried values in that layout), and every value the body returns is resharded
back to it.  The loop dim is never split (`mtfc.passes.loops.check_loop_dims`),
so every device runs every trip.
"""

from __future__ import annotations

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.collectives import Local
from mtfc.passes.partition.common import i64s, local_result, region_rule, rule


def carried_layouts(p, op: ir.Operation) -> list[tuple[tuple[str, ...], tuple[int, ...], tuple]]:
    """(dims, global shape, mesh axes per dim) of each value a loop carries,
    from its ``mtfc.dims`` and ``mtfc.classes``."""
    what = mir.describe_op_lazily(op)
    dims, classes = mir.op_result_dims(op), mir.op_result_classes(op)
    if len(dims) != len(op.results) or len(classes) != len(op.results):
        raise MtfcError(f"partition: {what} carries {len(op.results)} values but lists {len(dims)} "
                        f"{mir.DIMS} and {len(classes)} {mir.CLASSES}")
    out = []
    for k, (d, cls, r) in enumerate(zip(dims, classes, op.results)):
        shape = tuple(ir.RankedTensorType(r.type).shape)
        axes = p.axes_of(d, shape, f"carried value #{k} [{', '.join(d)}] of {what}", cls)
        out.append((tuple(d), shape, axes))
    return out


@region_rule("stablehlo.while")
def while_loop(p, op: ir.Operation, env: dict) -> list[Local]:
    """The loop with local types: operands resharded to their carried
    layouts, cond and body partitioned recursively, each value the body
    returns resharded to its carried layout.  Attributes (``mtfc.dims``,
    ``mtfc.classes``, ``mtfc.loop_dim``, ``mtfc.trip_count``) and the
    location are kept; values the emitter makes once per function (replica
    id, shard offsets) are made again inside each region, which uses no
    value from outside."""
    what = mir.describe_op_lazily(op)
    carried = carried_layouts(p, op)
    operands = [p.emit.reshard(env[v], axes, f"carried value #{k} entering {what}")
                for k, (v, (_, _, axes)) in enumerate(zip(op.operands, carried))]
    types = [p.local_type(shape, axes, ir.RankedTensorType(r.type).element_type)
             for r, (_, shape, axes) in zip(op.results, carried)]
    new = ir.Operation.create("stablehlo.while", results=types, operands=[x.value for x in operands],
                              attributes={n: op.attributes[n] for n in op.attributes}, regions=2,
                              loc=op.location)

    def cond_return(ret: ir.Operation, inner: dict) -> None:
        hlo.ReturnOp([inner[v].value for v in ret.operands])

    def body_return(ret: ir.Operation, inner: dict) -> None:
        hlo.ReturnOp([p.emit.reshard(inner[v], axes, f"carried value #{k} returned by the body of {what}").value
                      for k, (v, (_, _, axes)) in enumerate(zip(ret.operands, carried))])

    for old_region, new_region, terminator in zip(op.regions, new.regions, (cond_return, body_return)):
        old_block = old_region.blocks[0]
        block = new_region.blocks.append(*types)
        inner = dict(env)
        for a, b, (dims, shape, axes) in zip(old_block.arguments, block.arguments, carried):
            inner[a] = Local(b, dims, shape, axes)
        with p.emit.region():
            p.partition_block(old_block, block, inner, terminator)
    return [Local(r, dims, shape, axes) for r, (dims, shape, axes) in zip(new.results, carried)]


def sliced_dims_whole(x: Local, window: list[int]) -> list:
    """The layout a ``dynamic_slice`` / ``dynamic_update_slice`` needs of `x`
    for a window of sizes `window`: a dim the window covers whole keeps its
    axes (the op clamps its start to 0, on the global and on the local
    block alike); a dim it slices is whole."""
    return [axes if n == size else () for axes, n, size in zip(x.axes, window, x.shape)]


@rule("stablehlo.dynamic_slice")
def dynamic_slice(p, op, args, dims, shape):
    """A layer of a stacked value: sliced dims are gathered whole first (the
    loop dim is never split); dims kept whole by the slice keep the
    operand's axes, so a stacked parameter stored split (FSDP) is sliced
    first and only the one layer is resharded (the driver's all_gather)."""
    x, *starts = args
    sizes = i64s(op.attributes["slice_sizes"])
    target = sliced_dims_whole(x, sizes)
    x = p.emit.reshard(x, target, mir.describe_op_lazily(op))
    local_sizes = p.emit.local_shape(sizes, target)
    t = p.local_type(shape, target, x.element_type)
    value = p.clone(op, [x.value] + [s.value for s in starts], t, dims,
                    slice_sizes=ir.DenseI64ArrayAttr.get(local_sizes))
    return local_result(p, value, dims, shape, target)


@rule("stablehlo.dynamic_update_slice")
def dynamic_update_slice(p, op, args, dims, shape):
    """Write one layer into a stacked buffer: dims the update covers whole
    keep the buffer's axes (the update is resharded to them), sliced dims
    are whole in both."""
    x, update, *starts = args
    target = sliced_dims_whole(x, list(update.shape))
    x = p.emit.reshard(x, target, mir.describe_op_lazily(op))
    update = p.emit.reshard(update, target, mir.describe_op_lazily(op))
    t = p.local_type(shape, target, x.element_type)
    value = p.clone(op, [x.value, update.value] + [s.value for s in starts], t, dims)
    return local_result(p, value, dims, shape, target)
