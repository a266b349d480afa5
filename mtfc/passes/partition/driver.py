"""The explicit partitioner's driver: the per-device function, value by value."""

from __future__ import annotations

from typing import NamedTuple

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import func

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes import op_rules
from mtfc.passes.collectives import Axes, Emitter, Local
from mtfc.passes.partition import contraction, convolution, gather, local, loops, pooling, windows  # noqa: F401 - their rules register on import
from mtfc.passes.partition.common import COPYABLE_RULES, REGION_RULES, RULES, clone_region
from mtfc.passes.partition.local import elementwise, local_splat, replicated
from mtfc.passes.partition.windows import halo_exchange, window_of

TERMINATORS = frozenset(("func.return", "stablehlo.return"))
ELEMENTWISE = op_rules.names(family=("elementwise", "control")) - TERMINATORS - set(REGION_RULES)
# Ops `Partitioner.copy_local` may copy: elementwise ops without a rule of
# their own, and ops whose rule emits the op itself when nothing is split.
ELEMENTWISE_COPYABLE = frozenset(ELEMENTWISE - set(RULES))
COPYABLE = ELEMENTWISE_COPYABLE | COPYABLE_RULES


class ResultInfo(NamedTuple):
    """What the partitioner needs of an op's one result: its dims, global
    shape and mesh axes per dim, the op's layout class, the result's local
    type, and whether ``mtfc.dims`` must be rewritten on a copy of the op
    (it is not the flat list the emitter writes)."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    axes: tuple
    cls: str
    local_type: ir.Type
    retag: bool
    split: bool  # any(axes)


class Partitioner:
    def __init__(self, module: ir.Module):
        self.module = module
        self.mesh = mir.module_mesh(module)
        self.layouts = mir.module_layouts(module)
        self.layouts.validate()
        self.current_class = "activation"  # the layout class of the op being partitioned
        self.current_op: ir.Operation | None = None  # the op `partition_op` is partitioning, and its ResultInfo
        self.current_info: ResultInfo | None = None
        self.emit = Emitter(self.mesh)
        self._infos: dict[tuple, ResultInfo] = {}  # (mtfc.dims, result type[, mtfc.class]) -> its ResultInfo
        self._axes: dict[tuple, tuple[Axes, ...]] = {}  # (dims, shape, class) -> axes_of
        self._types: dict[tuple, ir.RankedTensorType] = {}  # (shape, axes, element type) -> local_type
        self._ints: dict[ir.Attribute, tuple[int, ...]] = {}  # DenseI64ArrayAttr -> its values
        self._splats: dict[tuple, ir.Attribute | None] = {}  # (constant's value, local type) -> local splat
        self.memo: dict = {}  # for rules: what they read of attributes, per (rule's tag, attributes...)

    # --------------------------------------------------------------- layouts
    def axes_of(self, dims, shape, what: str, cls: str | None = None) -> tuple[Axes, ...]:
        """Mesh axes per dim of a value of class `cls` (default: the current op's)."""
        cls = cls or self.current_class
        key = (tuple(dims), tuple(shape), cls)
        axes = self._axes.get(key)
        if axes is None:  # an impossible layout raises, naming `what`, and is not remembered
            axes = self._axes[key] = self.layouts.of_value(dims, shape, cls=cls, what=what).axes
        return axes

    def local_type(self, shape, axes, element_type) -> ir.RankedTensorType:
        """The type of this device's block of a `shape` tensor laid out as `axes`."""
        key = (tuple(shape), tuple(tuple(a) for a in axes), element_type)
        t = self._types.get(key)
        if t is None:
            t = self._types[key] = ir.RankedTensorType.get(self.emit.local_shape(shape, axes), element_type)
        return t

    def clone(self, op: ir.Operation, operands: list[ir.Value], result_type: ir.Type, dims, **overrides) -> ir.Value:
        """`op` with new operands and result type (attributes, regions and
        location copied, then `overrides` set; its regions' block arguments
        at the current location, as `clone_region` makes them); `operands`
        replace `op`'s one for one, or, when there are more or fewer, make a
        new op of `op`'s name and attributes at the current location."""
        if len(operands) == len(op.operands):
            new = op.clone()  # attributes, regions and location copied in C++, without a binding call each
            if len(new.regions):  # block arguments at the current location, as `clone_region` makes them
                here = ir.Location.current
                for region in new.regions:
                    for block in region.blocks:
                        for arg in block.arguments:
                            arg.set_location(here)
            slots = new.operands
            for i, v in enumerate(operands):
                slots[i] = v
            result = new.results[0]
            if result.type != result_type:
                result.set_type(result_type)
            for name, attr in overrides.items():
                new.attributes[name] = attr
            info = self.current_info
            if op is self.current_op and not info.retag and tuple(dims) == info.dims:
                return result  # op's own mtfc.dims, copied
            return self.emit.tag(new, dims)
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

        def ret(op, env):
            values = [self.emit.reshard(env[v], axes, f"result {sig.name!r}").value
                      for v, sig, axes in zip(op.operands, results, res_axes)]
            func.ReturnOp(values)

        self.partition_block(old.regions[0].blocks[0], block, env, ret)
        old.erase()
        new.attributes["sym_name"] = ir.StringAttr.get(mir.ENTRY)
        attrs = module.operation.attributes
        attrs["mhlo.num_replicas"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), mesh.size)
        attrs["mhlo.num_partitions"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), 1)
        mir.set_partitioning(module, "explicit")

    def partition_block(self, old: ir.Block, new: ir.Block, env: dict, terminator) -> None:
        """Append to `new` the per-device ops of `old`'s ops, value by value.

        `env` maps each value of the global program visible in `old` (its
        block arguments included) to its `Local`, and gains the block's
        values; `terminator(op, env)` writes the block's terminator (the
        function's return, a loop region's ``stablehlo.return``).  Each op's
        location is current while its ops are made (an op `copy_local`
        copies keeps its own)."""
        with ir.InsertionPoint(new):
            for op in old.operations:
                op = op.operation
                name = op.name
                if name in COPYABLE and self.copy_local(op, name, env):
                    continue
                with op.location:
                    if name in TERMINATORS:
                        terminator(op, env)
                    else:
                        self.partition_op(op, env)

    # ------------------------------------------------------------ per op
    def result_info(self, op: ir.Operation) -> ResultInfo:
        """The `ResultInfo` of `op`'s one result, remembered per (``mtfc.dims``,
        result type, ``mtfc.class``) -- uniqued objects, so ops alike share it.
        Raises what `partition_op` raises of an op without ``mtfc.dims``, with
        several results, or whose layout is impossible."""
        attrs = op.attributes
        dims_attr = attrs.get(mir.DIMS)
        if dims_attr is None:
            raise MtfcError(f"{mir.describe_op(op)} carries no mtfc.dims")
        results = op.results
        if len(results) != 1:
            raise MtfcError(f"partition: cannot split {mir.describe_op(op)}: ops with {len(results)} results have no rule")
        result_type = results[0].type
        cls_attr = attrs.get(mir.CLASS)
        # never None beside an attribute in a key: comparing the two raises
        key = (dims_attr, result_type) if cls_attr is None else (dims_attr, result_type, cls_attr)
        info = self._infos.get(key)
        if info is None:
            info = self._infos[key] = self._result_info(op, dims_attr, result_type, cls_attr)
        return info

    def _result_info(self, op, dims_attr, result_type, cls_attr) -> ResultInfo:
        (dims,) = mir.op_result_dims(op)
        tensor = ir.RankedTensorType(result_type)
        shape = tuple(tensor.shape)
        cls = ir.StringAttr(cls_attr).value if cls_attr is not None else "activation"
        axes = self.axes_of(dims, shape, mir.describe_op_lazily(op, "value of "), cls)
        local_t = self.local_type(shape, axes, tensor.element_type) if any(axes) else result_type
        return ResultInfo(tuple(dims), shape, axes, cls, local_t, mir.str_array(dims) != dims_attr, any(axes))

    def copy_local(self, op: ir.Operation, name: str, env: dict) -> bool:
        """Partition `op` by copying it, when its rule would emit the op
        itself on the operands' blocks with no collective, and return True;
        else return False, making nothing (the rule decides).  That is: an
        elementwise op whose operands are laid out as its result (or are
        scalars); a broadcast or transpose whose operand is laid out as the
        result needs it (`broadcast_target`, `transpose_target`); a whole
        constant.  The copy is what the rule emits: attributes and location
        kept, operands replaced, the result's type the local one.  A split
        splat constant is made at its local shape, as its rule does."""
        info = self.result_info(op)
        axes = info.axes
        args = [env[v] for v in op.operands]
        if name in ELEMENTWISE_COPYABLE:
            for x in args:
                if x.axes != axes and x.shape:
                    return False
        elif name == "stablehlo.broadcast_in_dim":
            x = args[0]
            positions = self.i64s(op.attributes["broadcast_dimensions"])
            xs, shape = x.shape, info.shape
            if x.axes != tuple(axes[j] if xs[i] == shape[j] else () for i, j in enumerate(positions)):
                return False
        elif name == "stablehlo.transpose":
            target = [()] * len(axes)
            for k, src in enumerate(self.i64s(op.attributes["permutation"])):
                target[src] = axes[k]
            if args[0].axes != tuple(target):
                return False
        elif info.split:  # a constant
            return self.splat_constant(op, info, env)
        new = op.clone()
        slots = new.operands
        for i, x in enumerate(args):
            slots[i] = x.value
        result = new.results[0]
        if info.split:
            result.set_type(info.local_type)
        if info.retag:
            self.emit.tag(new, info.dims)
        env[op.results[0]] = Local(result, info.dims, info.shape, axes)
        return True

    def splat_constant(self, op: ir.Operation, info: ResultInfo, env: dict) -> bool:
        """A split splat constant made at its local shape (`local.constant`);
        False for any other constant."""
        value = op.attributes["value"]
        key = (value, info.local_type)
        splat = self._splats.get(key, False)
        if splat is False:
            splat = self._splats[key] = local_splat(value, info.local_type)
        if splat is None:
            return False
        new = ir.Operation.create("stablehlo.constant", results=[info.local_type],
                                  attributes={"value": splat, mir.DIMS: mir.str_array(info.dims)}, loc=op.location)
        env[op.results[0]] = Local(new.results[0], info.dims, info.shape, info.axes)
        return True

    def i64s(self, attr: ir.Attribute) -> tuple[int, ...]:
        """The integers of a ``DenseI64ArrayAttr``, remembered per attribute."""
        values = self._ints.get(attr)
        if values is None:
            values = self._ints[attr] = tuple(ir.DenseI64ArrayAttr(attr))
        return values

    def partition_op(self, op: ir.Operation, env: dict) -> None:
        if op.name in REGION_RULES:  # one Local per result, its regions partitioned recursively
            if mir.op_result_dims(op) is None:
                raise MtfcError(f"{mir.describe_op(op)} carries no mtfc.dims")
            env.update(zip(op.results, REGION_RULES[op.name](self, op, env)))
            return
        info = self.result_info(op)
        dims, shape, axes = info.dims, info.shape, info.axes
        self.current_class = info.cls
        self.current_op, self.current_info = op, info
        what = mir.describe_op_lazily(op, "value of ")
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
        result = self.emit.reshard(result, axes, what)
        env[op.results[0]] = result
