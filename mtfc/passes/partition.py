"""Pass `partition` (explicit mode): Mesh TF's lowering as an MLIR pass.

Requires: the IR contract (`verify-names`): ``mtfc.dims`` on every argument,
result and body op of @main, a mesh and layout rules on the module.

Guarantees: @main becomes the program one device runs (device ``d`` of the
mesh is replica ``d``): every value has its local shape -- each dim divided by
the mesh axes the layout rules give its name -- and keeps its ``mtfc.dims``;
communication is explicit StableHLO collectives whose replica groups are the
device groups along mesh axes, placed only where the layout demands it (the
table in docs/passes/partition.md).  The global program is kept as a nested
``module @mtfc.reference`` (for ``mtfc run --check``); the module carries
``mtfc.partitioning = "explicit"`` and ``mhlo.num_replicas`` = mesh size.
An op with split operands or results that no rule covers is an error naming
the op, its location and its dims -- never a silent replication.

Each rule below partitions one StableHLO op: it reshards the operands to a
layout under which the op is local, emits the local op, adds the collective
the op's semantics need (a sum over a split dim -> all_reduce), and reshards
the result to the layout its dims imply.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import func
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.collectives import REDUCER_OF_OP, Axes, Emitter, Local
from mtfc.passes.manager import register_pass

ELEMENTWISE = {
    f"stablehlo.{name}"
    for name in (
        "abs add and compare convert cosine divide exponential exponential_minus_one floor ceil log "
        "log_plus_one logistic maximum minimum multiply negate not or power remainder round_nearest_even "
        "rsqrt select sign sine sqrt subtract tanh xor clamp is_finite optimization_barrier"
    ).split()
}

Rule = Callable[["Partitioner", ir.Operation, list[Local], list[str], tuple[int, ...]], Local]
RULES: dict[str, Rule] = {}


def rule(*names: str):
    def wrap(fn):
        for n in names:
            RULES[n] = fn
        return fn

    return wrap


def _i64s(attr) -> list[int]:
    return list(ir.DenseI64ArrayAttr(attr))


def clone_region(src: ir.Region, dst: ir.Region) -> None:
    """Copy a region of scalar ops (a reducer body) into `dst`."""
    for block in src.blocks:
        new_block = dst.blocks.append(*[a.type for a in block.arguments])
        mapping = {a: b for a, b in zip(block.arguments, new_block.arguments)}
        with ir.InsertionPoint(new_block):
            for op in block.operations:
                op = op.operation
                new = ir.Operation.create(
                    op.name,
                    results=[r.type for r in op.results],
                    operands=[mapping[v] for v in op.operands],
                    attributes={n: op.attributes[n] for n in op.attributes},
                    loc=op.location,
                )
                for old, res in zip(op.results, new.results):
                    mapping[old] = res


class Partitioner:
    def __init__(self, module: ir.Module):
        self.module = module
        self.mesh = mir.module_mesh(module)
        self.layouts = mir.module_layouts(module)
        self.layouts.validate()
        self.current_class = "activation"  # the layout class of the op being partitioned
        self.emit = Emitter(self.mesh)

    # --------------------------------------------------------------- layouts
    def axes_of(self, dims, shape, what: str, cls: str | None = None) -> tuple[Axes, ...]:
        """Mesh axes per dim of a value of class `cls` (default: the current op's)."""
        return self.layouts.of_value(dims, shape, cls=cls or self.current_class, what=what).axes

    def local_type(self, shape, axes, element_type) -> ir.RankedTensorType:
        return ir.RankedTensorType.get(self.emit.local_shape(shape, axes), element_type)

    def clone(self, op: ir.Operation, operands: list[ir.Value], result_type: ir.Type, dims, **overrides) -> ir.Value:
        """`op` with new operands and result type (attributes copied, then `overrides`)."""
        attrs = {n: op.attributes[n] for n in op.attributes}
        attrs.update(overrides)
        new = ir.Operation.create(op.name, results=[result_type], operands=operands, attributes=attrs,
                                  regions=len(op.regions))
        for src, dst in zip(op.regions, new.regions):
            clone_region(src, dst)
        return self.emit.tag(new, dims)

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        module, mesh = self.module, self.mesh
        old = mir.entry_function(module)
        args, results = mir.arguments(module), mir.results(module)
        def state(sig):
            return "param" if sig.role in mir.STATE_ROLES else "activation"

        arg_axes = [self.axes_of(s.dims, s.shape, f"argument {s.name!r}", state(s)) for s in args]
        res_axes = [self.axes_of(s.dims, s.shape, f"result {s.name!r}", state(s)) for s in results]
        ftype = ir.FunctionType(ir.TypeAttr(old.attributes["function_type"]).value)
        in_types = [self.local_type(s.shape, a, ir.RankedTensorType(t).element_type)
                    for s, a, t in zip(args, arg_axes, ftype.inputs)]
        out_types = [self.local_type(s.shape, a, ir.RankedTensorType(t).element_type)
                     for s, a, t in zip(results, res_axes, ftype.results)]
        with old.location:
            new = func.FuncOp("main.partitioned", ir.FunctionType.get(in_types, out_types), ip=ir.InsertionPoint(old))
        for key in ("arg_attrs", "res_attrs"):
            if key in old.attributes:
                new.attributes[key] = old.attributes[key]
        block = new.add_entry_block()
        env: dict[ir.Value, Local] = {}
        for old_arg, new_arg, sig, axes in zip(old.regions[0].blocks[0].arguments, block.arguments, args, arg_axes):
            env[old_arg] = Local(new_arg, tuple(sig.dims), tuple(sig.shape), axes)
        with ir.InsertionPoint(block):
            for op in mir.body_ops(old):
                with op.location:
                    if op.name == "func.return":
                        values = [
                            self.emit.reshard(env[v], axes, f"result {sig.name!r}").value
                            for v, sig, axes in zip(op.operands, results, res_axes)
                        ]
                        func.ReturnOp(values)
                        continue
                    self.partition_op(op, env)
        old.erase()
        new.attributes["sym_name"] = ir.StringAttr.get(mir.ENTRY)
        attrs = module.operation.attributes
        attrs["mhlo.num_replicas"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), mesh.size)
        attrs["mhlo.num_partitions"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), 1)
        mir.set_partitioning(module, "explicit")

    def partition_op(self, op: ir.Operation, env: dict) -> None:
        all_dims = mir.op_result_dims(op)
        if all_dims is None:
            raise MtfcError(f"{mir.describe_op(op)} carries no mtfc.dims")
        if len(op.results) != 1:
            raise MtfcError(f"partition: cannot split {mir.describe_op(op)}: ops with {len(op.results)} results have no rule")
        dims = all_dims[0]
        shape = tuple(ir.RankedTensorType(op.results[0].type).shape)
        self.current_class = mir.op_class(op)
        axes = self.axes_of(dims, shape, f"value of {mir.describe_op(op)}")
        if op.name in ("stablehlo.pad", "stablehlo.concatenate"):
            users = [u.owner for u in op.results[0].uses]
            if len(users) == 1 and window_of(self, users[0].operation, env) is not None:
                env[op.results[0]] = None  # partitioned together with the slice that reads it
                return
        if op.name == "stablehlo.slice" and window_of(self, op, env) is not None:
            env[op.results[0]] = halo_exchange(self, op, env, list(dims), shape, axes)
            return
        args = [env[v] for v in op.operands]
        fn = RULES.get(op.name)
        if fn is None and op.name in ELEMENTWISE:
            fn = elementwise
        if fn is None:
            if any(a for x in args for a in x.axes) or any(axes):
                described = ", ".join(f"[{', '.join(x.dims)}]" for x in args)
                raise MtfcError(
                    f"partition: no rule splits {mir.describe_op(op)} (operands {described} -> [{', '.join(dims)}])"
                )
            fn = replicated
        result = fn(self, op, args, list(dims), shape)
        result = self.emit.reshard(result, axes, f"value of {mir.describe_op(op)}")
        env[op.results[0]] = result


# --------------------------------------------------------------------- rules
def _result(p: Partitioner, value: ir.Value, dims, shape, axes) -> Local:
    return Local(value, tuple(dims), tuple(shape), tuple(axes))


def replicated(p, op, args, dims, shape):
    """An op no rule covers, on values that are whole on every device."""
    t = ir.RankedTensorType(op.results[0].type)
    value = p.clone(op, [x.value for x in args], t, dims)
    return _result(p, value, dims, shape, [()] * len(shape))


def elementwise(p, op, args, dims, shape):
    """Same-shape operands: reshard each to the result's layout; no communication."""
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    operands = [p.emit.reshard(x, axes, mir.describe_op(op)) if x.shape else x for x in args]
    t = p.local_type(shape, axes, ir.RankedTensorType(op.results[0].type).element_type)
    return _result(p, p.clone(op, [x.value for x in operands], t, dims), dims, shape, axes)


@rule("stablehlo.constant")
def constant(p, op, args, dims, shape):
    """A splat is made at its local shape; any other split constant is cut locally."""
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    global_type = ir.RankedTensorType(op.results[0].type)
    if not any(axes):
        return replicated(p, op, args, dims, shape)
    value = ir.DenseElementsAttr(op.attributes["value"])
    if value.is_splat:
        local = p.local_type(shape, axes, global_type.element_type)
        splat = ir.DenseElementsAttr.get_splat(local, value.get_splat_value())
        return _result(p, p.emit.tag(hlo.ConstantOp(splat), dims), dims, shape, axes)
    whole = replicated(p, op, args, dims, shape)
    return p.emit.reshard(whole, axes, mir.describe_op(op))


@rule("stablehlo.iota")
def iota(p, op, args, dims, shape):
    """Local iota plus this device's offset along the iota dim when it is split."""
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    element = ir.RankedTensorType(op.results[0].type).element_type
    t = p.local_type(shape, axes, element)
    k = ir.IntegerAttr(op.attributes["iota_dimension"]).value
    value = p.emit.tag(hlo.IotaOp(t, k), dims)
    if axes[k]:
        offset = p.emit.shard_offset(axes[k], t.shape[k])
        offset = p.emit.tag(hlo.ConvertOp(ir.RankedTensorType.get([], element), offset), [])
        offset = p.emit.tag(hlo.BroadcastInDimOp(t, offset, []), dims)
        value = p.emit.tag(hlo.AddOp(value, offset), dims)
    return _result(p, value, dims, shape, axes)


@rule("stablehlo.broadcast_in_dim")
def broadcast_in_dim(p, op, args, dims, shape):
    """Each operand dim takes the layout of the result dim it becomes; size-1
    dims broadcast along a split dim are whole."""
    (x,) = args
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    positions = _i64s(op.attributes["broadcast_dimensions"])
    target = [axes[j] if x.shape[i] == shape[j] else () for i, j in enumerate(positions)]
    x = p.emit.reshard(x, target, mir.describe_op(op))
    t = p.local_type(shape, axes, x.element_type)
    return _result(p, p.clone(op, [x.value], t, dims), dims, shape, axes)


@rule("stablehlo.transpose")
def transpose(p, op, args, dims, shape):
    (x,) = args
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    perm = _i64s(op.attributes["permutation"])
    target = [()] * len(perm)
    for k, src in enumerate(perm):
        target[src] = axes[k]
    x = p.emit.reshard(x, target, mir.describe_op(op))
    t = p.local_type(shape, axes, x.element_type)
    return _result(p, p.clone(op, [x.value], t, dims), dims, shape, axes)


def reshape_segments(a: list[int], b: list[int]) -> list[tuple[list[int], list[int]]]:
    """Split a reshape `a` -> `b` into the smallest runs of dims with equal products."""
    segments, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        si, sj, pi, pj = [], [], 1, 1
        if i < len(a):
            si.append(i); pi *= a[i]; i += 1  # noqa: E702
        if j < len(b):
            sj.append(j); pj *= b[j]; j += 1  # noqa: E702
        while pi != pj:
            if pi < pj:
                si.append(i); pi *= a[i]; i += 1  # noqa: E702
            else:
                sj.append(j); pj *= b[j]; j += 1  # noqa: E702
        segments.append((si, sj))
    return segments


@rule("stablehlo.reshape")
def reshape(p, op, args, dims, shape):
    """Row-major reshape, run of dims by run of dims: a run whose result is split
    only on its leading dim is local when the input is split the same way on its
    leading dim, so the input is resharded to that; other runs are gathered
    before and cut after."""
    (x,) = args
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    target_in: list[Axes] = [()] * len(x.shape)
    middle: list[Axes] = [()] * len(shape)
    for si, sj in reshape_segments(list(x.shape), list(shape)):
        if not si or not sj:
            continue
        lead = axes[sj[0]]
        pullable = all(not axes[j] for j in sj[1:]) and x.shape[si[0]] % p.emit.factor(lead) == 0
        if pullable:
            target_in[si[0]] = lead
            middle[sj[0]] = lead
    x = p.emit.reshard(x, target_in, mir.describe_op(op))
    t = p.local_type(shape, middle, x.element_type)
    value = p.emit.tag(hlo.ReshapeOp(t, x.value), dims)
    return _result(p, value, dims, shape, middle)


@rule("stablehlo.dot_general")
def dot_general(p, op, args, dims, shape):
    """Local dot of local blocks.  Batch and free dims of both operands take
    the result's layout; the contracting dims keep the lhs's axes (minus any
    the result uses) and the rhs follows; a split contracting dim leaves
    partial sums: all_reduce over its axes."""
    lhs, rhs = args
    numbers = hlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    lb, rb = list(numbers.lhs_batching_dimensions), list(numbers.rhs_batching_dimensions)
    lc, rc = list(numbers.lhs_contracting_dimensions), list(numbers.rhs_contracting_dimensions)
    lfree = [i for i in range(len(lhs.shape)) if i not in lb + lc]
    rfree = [i for i in range(len(rhs.shape)) if i not in rb + rc]
    out_axes = p.axes_of(dims, shape, mir.describe_op(op))
    used = {a for axes in out_axes for a in axes}
    lhs_target, rhs_target = [()] * len(lhs.shape), [()] * len(rhs.shape)
    for k, i in enumerate(lb):
        lhs_target[i] = rhs_target[rb[k]] = out_axes[k]
    for k, i in enumerate(lfree):
        lhs_target[i] = out_axes[len(lb) + k]
    for k, i in enumerate(rfree):
        rhs_target[i] = out_axes[len(lb) + len(lfree) + k]
    for li, ri in zip(lc, rc):
        keep = []
        for a in lhs.axes[li]:
            if a in used:
                break  # keep a prefix: the axes after one the result uses are gathered too
            keep.append(a)
            used.add(a)
        lhs_target[li] = rhs_target[ri] = tuple(keep)
    lhs = p.emit.reshard(lhs, lhs_target, mir.describe_op(op))
    rhs = p.emit.reshard(rhs, rhs_target, mir.describe_op(op))
    t = p.local_type(shape, out_axes, ir.RankedTensorType(op.results[0].type).element_type)
    value = p.clone(op, [lhs.value, rhs.value], t, dims)
    result = _result(p, value, dims, shape, out_axes)
    summed = tuple(a for i in lc for a in lhs.axes[i])
    return p.emit.all_reduce(result, summed, "sum")


@rule("stablehlo.reduce")
def reduce(p, op, args, dims, shape):
    """Local reduce, then all_reduce (same reducer) over the reduced dims' axes.
    Requires the init value to be the reducer's identity, as the frontend emits."""
    if len(args) != 2:
        raise MtfcError(f"partition: no rule splits the variadic {mir.describe_op(op)}")
    x, init = args
    body = [o.operation.name for o in op.regions[0].blocks[0].operations]
    kind = REDUCER_OF_OP.get(body[0]) if len(body) == 2 else None
    reduced = _i64s(op.attributes["dimensions"])
    summed = tuple(a for i in reduced for a in x.axes[i])
    if summed and kind is None:
        raise MtfcError(f"partition: {mir.describe_op(op)} reduces split dims with a body ({', '.join(body)}) "
                        "that is not add, maximum, minimum, and, or")
    out_axes = [x.axes[i] for i in range(len(x.shape)) if i not in reduced]
    t = p.local_type(shape, out_axes, x.element_type)
    value = p.clone(op, [x.value, init.value], t, dims)
    return p.emit.all_reduce(_result(p, value, dims, shape, out_axes), summed, kind or "sum")


def _whole_along(x: Local, positions) -> list[Axes]:
    return [() if i in positions else a for i, a in enumerate(x.axes)]


@rule("stablehlo.slice")
def slice_(p, op, args, dims, shape):
    """Slice locally along whole dims; a sliced dim that is split is gathered first."""
    (x,) = args
    start, limit = _i64s(op.attributes["start_indices"]), _i64s(op.attributes["limit_indices"])
    strides = _i64s(op.attributes["strides"])
    cut = [i for i in range(len(x.shape)) if start[i] != 0 or limit[i] != x.shape[i] or strides[i] != 1]
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    if len(cut) == 1 and strides[cut[0]] == 1 and _same_split(x, axes, cut[0]):
        k = cut[0]
        return window_exchange(p, op, [(x, start[k])], k, None, dims, shape, axes)
    x = p.emit.reshard(x, _whole_along(x, cut), mir.describe_op(op))
    local = x.local_shape
    start = [s if i in cut else 0 for i, s in enumerate(start)]
    limit = [l if i in cut else local[i] for i, l in enumerate(limit)]
    out_axes = x.axes
    t = p.local_type(shape, out_axes, x.element_type)
    value = p.clone(op, [x.value], t, dims, start_indices=ir.DenseI64ArrayAttr.get(start),
                    limit_indices=ir.DenseI64ArrayAttr.get(limit))
    return _result(p, value, dims, shape, out_axes)


@rule("stablehlo.pad")
def pad(p, op, args, dims, shape):
    """Pad locally along whole dims; a padded dim that is split is gathered first."""
    x, value = args
    low, high = _i64s(op.attributes["edge_padding_low"]), _i64s(op.attributes["edge_padding_high"])
    interior = _i64s(op.attributes["interior_padding"])
    padded = [i for i in range(len(x.shape)) if low[i] or high[i] or interior[i]]
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    if len(padded) == 1 and not interior[padded[0]] and low[padded[0]] >= 0 and _same_split(x, axes, padded[0]):
        k = padded[0]
        return window_exchange(p, op, [(x, -low[k])], k, value, dims, shape, axes)
    x = p.emit.reshard(x, _whole_along(x, padded), mir.describe_op(op))
    t = p.local_type(shape, x.axes, x.element_type)
    return _result(p, p.clone(op, [x.value, value.value], t, dims), dims, shape, x.axes)


@rule("stablehlo.concatenate")
def concatenate(p, op, args, dims, shape):
    """Concatenate locally when the concat dim is whole; gather it first otherwise."""
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    d = ir.IntegerAttr(op.attributes["dimension"]).value
    if all(_same_split(x, axes, d) for x in args):
        sources, offset = [], 0
        for x in args:
            sources.append((x, -offset))
            offset += x.shape[d]
        return window_exchange(p, op, sources, d, None, dims, shape, axes)
    target = [() if i == d else a for i, a in enumerate(axes)]
    parts = [p.emit.reshard(x, target, mir.describe_op(op)) for x in args]
    t = p.local_type(shape, target, parts[0].element_type)
    return _result(p, p.clone(op, [x.value for x in parts], t, dims), dims, shape, target)


@rule("stablehlo.gather")
def gather(p, op, args, dims, shape):
    """Embedding lookup ``table[indices]``.  With the looked-up dim split, each
    device looks up the indices that fall in its block (others read row 0 and
    are zeroed) and an all_reduce sums the one non-zero contribution.  Indices
    are first clamped to ``[0, size - 1]`` of the whole dim, as StableHLO's
    gather clamps them, so every index -- negative or past the table -- reads
    the row the unsharded program reads."""
    table, indices = args
    numbers = hlo.GatherDimensionNumbers(op.attributes["dimension_numbers"])
    n_idx = len(indices.shape)
    collapsed = list(numbers.collapsed_slice_dims)
    if (len(collapsed) != 1 or list(numbers.start_index_map) != collapsed or numbers.index_vector_dim != n_idx
            or list(numbers.operand_batching_dims)):
        raise MtfcError(f"partition: no rule splits {mir.describe_op(op)}: only single-dim lookups "
                        "(the DSL's gather) are supported")
    axis = collapsed[0]
    axes = p.axes_of(dims, shape, mir.describe_op(op))
    rest = [i for i in range(len(table.shape)) if i != axis]
    out_used = {a for ax in axes for a in ax}
    vocab_axes = tuple(a for a in table.axes[axis] if a not in out_used)
    # the looked-up dim keeps only a prefix of its axes that the result does not use
    keep = 0
    while keep < len(table.axes[axis]) and table.axes[axis][keep] in vocab_axes:
        keep += 1
    vocab_axes = table.axes[axis][:keep]
    table_target = [()] * len(table.shape)
    table_target[axis] = vocab_axes
    for k, i in enumerate(rest):
        table_target[i] = axes[n_idx + k]
    table = p.emit.reshard(table, table_target, mir.describe_op(op))
    indices = p.emit.reshard(indices, axes[:n_idx], mir.describe_op(op))
    sizes = list(table.local_shape)
    sizes[axis] = 1
    t = p.local_type(shape, axes, table.element_type)
    if not vocab_axes:
        value = p.clone(op, [table.value, indices.value], t, dims, slice_sizes=ir.DenseI64ArrayAttr.get(sizes))
        return _result(p, value, dims, shape, axes)
    e = p.emit
    idx_type = ir.RankedTensorType(indices.value.type)
    block = table.local_shape[axis]
    bcast = lambda v, ty: e.tag(hlo.BroadcastInDimOp(ty, v, []), indices.dims)  # noqa: E731
    offset = bcast(e.shard_offset(vocab_axes, block), idx_type)
    zero = bcast(e.scalar_i32(0), idx_type)
    last = bcast(e.scalar_i32(table.shape[axis] - 1), idx_type)
    clamped = e.tag(hlo.ClampOp(zero, indices.value, last), indices.dims)
    local_idx = e.tag(hlo.SubtractOp(clamped, offset), indices.dims)
    pred = ir.RankedTensorType.get(idx_type.shape, ir.IntegerType.get_signless(1))
    upper = bcast(e.scalar_i32(block), idx_type)
    direction = lambda s: hlo.ComparisonDirectionAttr.get(s)  # noqa: E731
    ge = e.tag(hlo.CompareOp(local_idx, zero, direction("GE"), results=[pred]), indices.dims)
    lt = e.tag(hlo.CompareOp(local_idx, upper, direction("LT"), results=[pred]), indices.dims)
    mine = e.tag(hlo.AndOp(ge, lt), indices.dims)
    safe_idx = e.tag(hlo.SelectOp(mine, local_idx, zero), indices.dims)
    looked = p.clone(op, [table.value, safe_idx], t, dims, slice_sizes=ir.DenseI64ArrayAttr.get(sizes))
    mask = e.tag(hlo.BroadcastInDimOp(ir.RankedTensorType.get(t.shape, pred.element_type), mine,
                                      list(range(n_idx))), dims)
    zeros = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(t, _zero_attr(t.element_type))), dims)
    value = e.tag(hlo.SelectOp(mask, looked, zeros), dims)
    return e.all_reduce(_result(p, value, dims, shape, axes), vocab_axes, "sum")


def _zero_attr(element_type: ir.Type) -> ir.Attribute:
    if isinstance(element_type, ir.IntegerType):
        return ir.IntegerAttr.get(element_type, 0)
    return ir.FloatAttr.get(element_type, 0.0)


# ------------------------------------------------------------ halo exchange
def _same_split(x: Local, out_axes, k: int) -> bool:
    """Dim k is split over the same axes in `x` and the result, and the other
    dims agree positionally -- the case a window exchange handles."""
    return bool(x.axes[k]) and x.axes[k] == tuple(out_axes[k]) and all(
        x.axes[i] == tuple(out_axes[i]) or not x.axes[i] for i in range(len(out_axes)) if i != k)


def window_exchange(p: Partitioner, op: ir.Operation, sources, k: int, fill, dims, shape, axes) -> Local:
    """The result's block along dim k, when each result position ``o`` reads
    ``x[o + t]`` from one of `sources` ((x, t) pairs, e.g. a slice from
    ``begin``: t = begin; a pad: t = -low; concat: t = -offset of each part)
    and positions no source covers take `fill` (a scalar Local, or zeros).

    Dims split over the same axes A in operands and result: each device needs
    one window of the result block's length from a few neighbouring blocks.
    For every block distance that occurs, every device cuts the window its
    receiver needs out of its zero-padded block (a per-device offset) and one
    collective_permute within the groups along A delivers it; the receiver
    keeps, position by position, the window that came from the block owning
    that position.  No all_gather: each device receives at most
    (#distances) x block bytes."""
    e = p.emit
    first = sources[0][0]
    A = first.axes[k]
    groups = p.mesh.groups(list(A))
    K = len(groups[0])
    position = np.zeros(p.mesh.size, dtype=np.int64)
    for group in groups:
        for j, dev in enumerate(group):
            position[dev] = j
    c = shape[k] // K
    out_type = p.local_type(shape, axes, first.element_type)
    out_shape = list(out_type.shape)
    i32 = ir.IntegerType.get_signless(32)
    index_type = ir.RankedTensorType.get(out_shape, i32)
    pred_type = ir.RankedTensorType.get(out_shape, ir.IntegerType.get_signless(1))
    direction = hlo.ComparisonDirectionAttr.get

    def table(values) -> ir.Value:
        """A per-device i32 scalar from a table indexed by replica id."""
        data = np.asarray(values, dtype=np.int32)
        const = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get(data, type=ir.RankedTensorType.get([len(data)], i32))),
                      ["mesh"])
        picked = e.tag(hlo.DynamicSliceOp(const, [e.replica_id()], [1]), ["mesh"])
        return e.tag(hlo.ReshapeOp(ir.RankedTensorType.get([], i32), picked), [])

    def full(v: ir.Value) -> ir.Value:
        return e.tag(hlo.BroadcastInDimOp(index_type, v, []), dims)

    # o = global result position of each local element along k
    o = e.tag(hlo.AddOp(e.tag(hlo.IotaOp(index_type, k), dims), full(table(position * c))), dims)
    if fill is not None:
        value = e.tag(hlo.BroadcastInDimOp(out_type, fill.value, []), dims)
    else:
        zero = ir.DenseElementsAttr.get_splat(out_type, _zero_attr(first.element_type))
        value = e.tag(hlo.ConstantOp(zero), dims)
    for x, t in sources:
        target = [tuple(axes[i]) if i != k else A for i in range(len(axes))]
        x = e.reshard(x, target, mir.describe_op(op))
        n, L = x.shape[k], x.local_shape[k]
        # the blocks each receiver j reads: positions [j*c + t, (j+1)*c + t) within [0, n)
        distances = set()
        for j in range(K):
            lo, hi = max(j * c + t, 0), min((j + 1) * c + t, n)
            if lo < hi:
                distances.update(range(lo // L - j, (hi - 1) // L - j + 1))
        if not distances:
            continue
        # every block zero-padded by c on both sides, so any window of length c starting
        # inside it is in bounds
        lows, highs = [0] * len(out_shape), [0] * len(out_shape)
        lows[k] = highs[k] = c
        padded_type = list(x.local_shape)
        padded_type[k] += 2 * c
        zero_scalar = e.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(
            ir.RankedTensorType.get([], x.element_type), _zero_attr(x.element_type))), [])
        padded = e.tag(hlo.PadOp(x.value, zero_scalar, lows, highs, [0] * len(out_shape)), x.dims)
        sizes = list(x.local_shape)
        sizes[k] = c
        shifted = full(e.scalar_i32(t))
        g = e.tag(hlo.AddOp(o, shifted), dims)  # the source position each element reads
        for delta in sorted(distances):
            # sender s serves receiver j = s - delta: its window starts at j*c + t - s*L (+ c of padding)
            starts = []
            for dev in range(p.mesh.size):
                s_, j = position[dev], position[dev] - delta
                start = j * c + t - s_ * L + c if 0 <= j < K else 0
                starts.append(min(max(start, 0), L + c))
            zero_index = e.scalar_i32(0)
            start_values = [table(starts) if i == k else zero_index for i in range(len(out_shape))]
            window = e.tag(hlo.DynamicSliceOp(padded, start_values, sizes), x.dims)
            if delta:
                pairs = [(group[j + delta], group[j]) for group in groups for j in range(K) if 0 <= j + delta < K]
                window = e.collective_permute(window, x.dims, pairs)
            # keep it where the source position lies in block (j + delta), inside [0, n)
            lo = full(table([max((position[d] + delta) * L, 0) for d in range(p.mesh.size)]))
            hi = full(table([min((position[d] + delta + 1) * L, n) for d in range(p.mesh.size)]))
            inside = e.tag(hlo.AndOp(
                e.tag(hlo.CompareOp(g, lo, direction("GE"), results=[pred_type]), dims),
                e.tag(hlo.CompareOp(g, hi, direction("LT"), results=[pred_type]), dims)), dims)
            value = e.tag(hlo.SelectOp(inside, window, value), dims)
    return Local(value, tuple(dims), tuple(shape), tuple(tuple(a) for a in axes))


def window_of(p: Partitioner, op: ir.Operation, env: dict):
    """For ``slice(pad(x))`` or ``slice(concat(x, x))`` that keeps the size of a
    split dim of `x` (a shift, as `mtf.shift` builds it): (x, dim, shift t,
    wrap, pad value) with ``y[i] = x[i + t]``; else None."""
    if op.name != "stablehlo.slice":
        return None
    source = op.operands[0]
    if isinstance(source, ir.BlockArgument):
        return None
    producer = ir.OpResult(source).owner.operation
    if producer.name not in ("stablehlo.pad", "stablehlo.concatenate") or len(list(source.uses)) != 1:
        return None
    x_old = producer.operands[0]
    if x_old not in env or env[x_old] is None:
        return None
    x = env[x_old]
    start, limit = _i64s(op.attributes["start_indices"]), _i64s(op.attributes["limit_indices"])
    strides = _i64s(op.attributes["strides"])
    full = _shape_of(source)
    cut = [i for i in range(len(full)) if start[i] != 0 or limit[i] != full[i] or strides[i] != 1]
    if len(cut) != 1 or strides[cut[0]] != 1:
        return None
    k = cut[0]
    n = x.shape[k]
    if limit[k] - start[k] != n or not x.axes[k]:
        return None
    if producer.name == "stablehlo.pad":
        low, high = _i64s(producer.attributes["edge_padding_low"]), _i64s(producer.attributes["edge_padding_high"])
        interior = _i64s(producer.attributes["interior_padding"])
        if any(interior) or any(low[i] or high[i] for i in range(len(full)) if i != k) or low[k] < 0 or high[k] < 0:
            return None
        return x, k, start[k] - low[k], False, producer.operands[1]
    operands = list(producer.operands)
    if (len(operands) != 2 or operands[0] != operands[1]
            or ir.IntegerAttr(producer.attributes["dimension"]).value != k):
        return None
    return x, k, start[k], True, None


def _shape_of(value: ir.Value) -> list[int]:
    return list(ir.RankedTensorType(value.type).shape)


def _is_zero_constant(value: ir.Value) -> bool:
    if isinstance(value, ir.BlockArgument):
        return False
    op = ir.OpResult(value).owner.operation
    if op.name != "stablehlo.constant":
        return False
    return not np.any(np.array(ir.DenseElementsAttr(op.attributes["value"])))


def halo_exchange(p: Partitioner, op: ir.Operation, env: dict, dims, shape, axes) -> Local:
    """``y[i] = x[i + t]`` along a dim split into K blocks of L: this device's
    block is the tail of block ``j+q`` and the head of block ``j+q+1``
    (``q, r = divmod(t, L)``), fetched by at most two collective_permutes
    within the dim's groups; positions past the ends take the pad value (or
    wrap around, for a cyclic shift)."""
    x, k, t, wrap, pad_value = window_of(p, op, env)
    e = p.emit
    x = e.reshard(x, [axes[i] if i != k else x.axes[k] for i in range(len(axes))], mir.describe_op(op))
    dim_axes = x.axes[k]
    groups = p.mesh.groups(list(dim_axes))
    count = len(groups[0])
    local = list(x.local_shape)
    block = local[k]
    q, r = divmod(t, block)

    def cut(begin: int, end: int) -> ir.Value:
        starts, limits = [0] * len(local), list(local)
        starts[k], limits[k] = begin, end
        return e.tag(hlo.SliceOp(x.value, starts, limits, [1] * len(local)), x.dims)

    def fetch(value: ir.Value, shift: int) -> ir.Value:
        """`value` as computed by the device `shift` positions further along the dim."""
        if shift == 0:
            return value
        pairs = []
        for group in groups:
            for j, dst in enumerate(group):
                src = (j + shift) % count if wrap else j + shift
                if 0 <= src < count:
                    pairs.append((group[src], dst))
        return e.collective_permute(value, x.dims, pairs)

    # the halo travels, not the block: slice first, then permute
    parts = [fetch(cut(r, block), q)]
    if r:
        parts.append(fetch(cut(0, r), q + 1))
    value = parts[0] if len(parts) == 1 else e.tag(hlo.ConcatenateOp(parts, k), x.dims)
    out_type = p.local_type(shape, x.axes, x.element_type)
    if not wrap and not _is_zero_constant(pad_value):
        # collective_permute leaves zeros where nobody sends; positions whose source x[g + t] lies outside [0, n) take the pad value
        n = x.shape[k]
        i32 = ir.IntegerType.get_signless(32)
        index_type = ir.RankedTensorType.get(local, i32)
        position = e.tag(hlo.IotaOp(index_type, k), dims)
        offset = e.tag(hlo.BroadcastInDimOp(index_type, e.shard_offset(dim_axes, block), []), dims)
        source = e.tag(hlo.AddOp(e.tag(hlo.AddOp(position, offset), dims),
                                 e.tag(hlo.BroadcastInDimOp(index_type, e.scalar_i32(t), []), dims)), dims)
        pred = ir.RankedTensorType.get(local, ir.IntegerType.get_signless(1))
        zero = e.tag(hlo.BroadcastInDimOp(index_type, e.scalar_i32(0), []), dims)
        end = e.tag(hlo.BroadcastInDimOp(index_type, e.scalar_i32(n), []), dims)
        direction = hlo.ComparisonDirectionAttr.get
        inside = e.tag(hlo.AndOp(e.tag(hlo.CompareOp(source, zero, direction("GE"), results=[pred]), dims),
                                 e.tag(hlo.CompareOp(source, end, direction("LT"), results=[pred]), dims)), dims)
        fill = e.tag(hlo.BroadcastInDimOp(out_type, env[pad_value].value, []), dims)
        value = e.tag(hlo.SelectOp(inside, value, fill), dims)
    return Local(value, tuple(dims), tuple(shape), x.axes)


# ---------------------------------------------------------------------- pass
@register_pass("partition")
def partition(module: ir.Module, options) -> None:
    """Split @main into the per-device program with explicit collectives."""
    if mir.partitioning(module) not in ("none", "gspmd"):
        raise MtfcError(f"partition: the module is already partitioned ({mir.partitioning(module)})")
    reference = ir.Module.parse(mir.strip_partitioning_text(module), module.context)
    reference.operation.attributes["sym_name"] = ir.StringAttr.get(mir.REFERENCE)
    mir.strip_partitioning_in_place(module)
    Partitioner(module).run()
    module.body.append(reference.operation.clone())
