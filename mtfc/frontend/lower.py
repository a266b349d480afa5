"""Lower a traced `Graph` to a global StableHLO module (the IR contract, docs/IR.md).

Produces ``func.func @main(inputs..., parameters...) -> (outputs...)`` in which
every op carries ``mtfc.dims`` and a location ``"scope/op"("model.py":line)``,
arguments and results carry name, role and dims, and the module carries the
mesh and layout rules.  Only ops reachable from the outputs are emitted.
"""

from __future__ import annotations

import os
import struct

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import func
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import index_ranges
from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.frontend.graph import Graph, Operation, Tensor
from mtfc.frontend.primitives import PRIMITIVES
from mtfc.mesh import LayoutRules, Mesh


class Lowerer:
    """Helpers the primitives' ``lower`` methods use to emit tagged StableHLO."""

    def __init__(self, module: ir.Module | None = None):
        self.layout_class = "activation"  # of the graph operation being lowered
        self.module = module  # where composite ops' decompositions go
        self._symbols: set[str] = set()
        # attributes and locations made once per lowering (one context): dims lists,
        # splat constants, file locations
        self._dims: dict[tuple, ir.ArrayAttr] = {}
        self._splats: dict[tuple, ir.DenseElementsAttr] = {}
        self._files: dict[tuple, ir.Location] = {}
        self._types: dict[tuple, ir.RankedTensorType] = {}

    def tag(self, op_or_value, dims) -> ir.Value:
        """Attach ``mtfc.dims`` (and the layout class, when not the default) to
        the op defining the (single) result; return it."""
        op = getattr(op_or_value, "operation", None)
        if op is None:
            op = op_or_value.owner
        key = tuple(dims)
        attr = self._dims.get(key)
        if attr is None:
            attr = self._dims[key] = mir.str_array(key)
        attrs = op.attributes
        attrs[mir.DIMS] = attr
        if self.layout_class != "activation":
            attrs[mir.CLASS] = ir.StringAttr.get(self.layout_class)
        return op.results[0]

    def location(self, op: Operation, prefix: str = "") -> ir.Location:
        """``"prefix + op name"("file":line)``: where `op` was made (its file
        location made once per line)."""
        if op.location is None:
            return ir.Location.name(prefix + op.name)
        file = self._files.get(op.location)
        if file is None:
            filename, line = op.location
            file = self._files[op.location] = ir.Location.file(os.path.basename(filename), line, 1)
        return ir.Location.name(prefix + op.name, childLoc=file)

    def type(self, tensor: Tensor) -> ir.RankedTensorType:
        key = (tensor.shape.sizes, tensor.dtype)
        t = self._types.get(key)
        if t is None:
            t = self._types[key] = mir.tensor_type(*key)
        return t

    def make(self, name: str, tensor: Tensor, operands, attributes: dict | None = None) -> ir.Value:
        """The op `name` of `operands` with `attributes` and one result, of
        `tensor`'s type, tagged with its dims (and class) as `tag` does: the
        generic builder, for the ops lowered most (elementwise, constants,
        broadcasts), whose result type is the tensor's."""
        return self._make(name, self.type(tensor), tensor.shape.names, operands, attributes)

    def _make(self, name: str, result_type: ir.Type, names: tuple, operands, attributes: dict | None) -> ir.Value:
        attr = self._dims.get(names)
        if attr is None:
            attr = self._dims[names] = mir.str_array(names)
        attrs = {mir.DIMS: attr}
        if self.layout_class != "activation":
            attrs[mir.CLASS] = ir.StringAttr.get(self.layout_class)
        if attributes:
            attrs.update(attributes)
        return ir.Operation.create(name, results=[result_type], operands=list(operands),
                                   attributes=attrs).results[0]

    def type_of(self, sizes, dtype: str) -> ir.RankedTensorType:
        return mir.tensor_type(sizes, dtype)

    def dense(self, value, tensor: Tensor) -> ir.DenseElementsAttr:
        """`value` (a number or an array) as a constant of `tensor`'s type; a
        Python number's splat made once per (number, type)."""
        kind = type(value)
        if kind is float or kind is int or kind is bool:
            key = (kind, struct.pack("<d", value) if kind is float else value, tensor.dtype, tensor.shape.sizes)
            attr = self._splats.get(key)
            if attr is None:
                attr = self._splats[key] = self._dense(value, tensor)
            return attr
        return self._dense(value, tensor)

    def _dense(self, value, tensor: Tensor) -> ir.DenseElementsAttr:
        t = self.type(tensor)
        np_dtype = mir.numpy_dtype(tensor.dtype)
        array = np.asarray(value, dtype=np_dtype)
        if array.ndim == 0:
            return ir.DenseElementsAttr.get_splat(t, _scalar_attr(array.item(), tensor.dtype))
        return ir.DenseElementsAttr.get(np.ascontiguousarray(array), type=t)

    def composite(self, name: str, operands: list[ir.Value], result_type: ir.Type, dims, attributes: dict,
                  decompose) -> ir.Value:
        """``stablehlo.composite name(operands)`` with ``composite_attributes``
        from `attributes` (int, bool, or a list of ints: an i64 array), its
        result tagged `dims`.  Its
        decomposition, a private function appended to the module, is what
        ``decompose(lx, *arguments)`` emits (tagged ops; it returns the
        result value).  Consumers that do not know the composite inline it
        (`mtfc.passes.composites`)."""
        symbol, k = name, 0
        while symbol in self._symbols:
            k += 1
            symbol = f"{name}_{k}"
        self._symbols.add(symbol)
        with ir.InsertionPoint(self.module.body):
            fn = func.FuncOp(symbol, ir.FunctionType.get([v.type for v in operands], [result_type]))
            fn.attributes["sym_visibility"] = ir.StringAttr.get("private")
            block = fn.add_entry_block()
            with ir.InsertionPoint(block):
                func.ReturnOp([decompose(self, *block.arguments)])
        i64, i1 = ir.IntegerType.get_signless(64), ir.IntegerType.get_signless(1)
        attrs = {key: ir.DenseI64ArrayAttr.get([int(e) for e in v]) if isinstance(v, (list, tuple))
                 else ir.IntegerAttr.get(i1 if isinstance(v, bool) else i64, int(v)) for key, v in attributes.items()}
        op = hlo.CompositeOp([result_type], operands, name, symbol, composite_attributes=ir.DictAttr.get(attrs))
        return self.tag(op, dims)

    def scalar(self, value, dtype: str) -> ir.Value:
        """A rank-0 constant, e.g. a reduction's init value or a pad value."""
        key = ("scalar", dtype, type(value), struct.pack("<d", value) if isinstance(value, float) else value)
        try:
            attr = self._splats.get(key)
        except TypeError:  # (an unhashable number: not remembered)
            key, attr = None, None
        if attr is None:
            attr = ir.DenseElementsAttr.get_splat(mir.tensor_type([], dtype), _scalar_attr(value, dtype))
            if key is not None:
                self._splats[key] = attr
        return self._make("stablehlo.constant", attr.type, (), [], {"value": attr})


def _scalar_attr(value, dtype: str) -> ir.Attribute:
    element = mir.mlir_type(dtype)
    if dtype in ("f32", "bf16", "f16"):
        return ir.FloatAttr.get(element, float(value))
    if dtype == "i1":
        return ir.IntegerAttr.get(element, int(bool(value)))
    return ir.IntegerAttr.get(element, int(value))


def lower_ops(lx: Lowerer, operations: list[Operation], values: dict[int, ir.Value], remat: "_Recompute | None" = None) -> None:
    """Emit `operations` (in order) at the current insertion point, reading
    and filling `values` (tensor id -> SSA value).  With `remat`, gradient
    ops read fresh copies of the values made in `mtf.recompute()` blocks."""
    for op in operations:
        if op.primitive in ("variable", "body_input"):
            continue
        lx.layout_class = op.layout_class
        if remat is not None and op.name.startswith("grad/"):
            args = [remat.value(t) if t.op.recompute and t.op.primitive != "scan" else values[id(t)] for t in op.inputs]
        else:
            args = [values[id(t)] for t in op.inputs]
        with lx.location(op):
            results = PRIMITIVES[op.primitive].lower(lx, op, args)
        for t, r in zip(op.outputs, results):
            values[id(t)] = r


def live_operations(graph: Graph, outputs: list[Tensor]) -> list[Operation]:
    """The ops of `graph` that `outputs` depend on, in graph order."""
    return _live_operations(graph, outputs)


def _live_operations(graph: Graph, outputs: list[Tensor]) -> list[Operation]:
    live: set[int] = set()
    stack = [t.op for t in outputs]
    while stack:
        op = stack.pop()
        if id(op) in live:
            continue
        live.add(id(op))
        stack.extend(t.op for t in op.inputs)
    return [op for op in graph.operations if id(op) in live]


class _Recompute:
    """Fresh copies of values made in `mtf.recompute()` blocks, for the
    gradient ops that read them: the producing ops are lowered again from the
    block's inputs, each passed through ``stablehlo.optimization_barrier``."""

    def __init__(self, lx: Lowerer, values: dict[int, ir.Value]):
        self.lx, self.values = lx, values
        self.copies: dict[int, ir.Value] = {}
        self.barriers: dict[int, ir.Value] = {}

    def value(self, t: Tensor) -> ir.Value:
        if id(t) not in self.copies:
            op = t.op
            args = [self.value(i) if i.op.recompute and i.op.primitive != "scan" else self._barrier(i) for i in op.inputs]
            saved = self.lx.layout_class
            self.lx.layout_class = op.layout_class
            with self.lx.location(op, prefix="recompute/"):
                results = PRIMITIVES[op.primitive].lower(self.lx, op, args)
            self.lx.layout_class = saved
            for out, r in zip(op.outputs, results):
                self.copies[id(out)] = r
        return self.copies[id(t)]

    def _barrier(self, t: Tensor) -> ir.Value:
        if id(t) not in self.barriers:
            value = self.values[id(t)]
            with self.lx.location(t.op, prefix="recompute/"):
                barrier = hlo.OptimizationBarrierOp([value])
            self.barriers[id(t)] = self.lx.tag(barrier, t.shape.names)
        return self.barriers[id(t)]


def lower_graph(
    graph: Graph,
    outputs: dict[str, Tensor],
    *,
    mesh: Mesh,
    layout: LayoutRules,
    model_name: str,
    context: ir.Context | None = None,
    output_roles: dict[str, str] | None = None,
    aliases: dict[str, int] | None = None,
) -> ir.Module:
    """The global module for `graph` with results `outputs` (name -> tensor).

    `aliases`: argument name -> index of the result that reuses its buffer
    (``tf.aliasing_output``, for train steps)."""
    context = context or mir.new_context()
    output_roles = output_roles or {}
    aliases = aliases or {}
    for name, t in outputs.items():
        if not isinstance(t, Tensor):
            raise MtfcError(f"model output {name!r} is a {type(t).__name__}, not an mtfc tensor")
    with context, ir.Location.unknown():
        module = ir.Module.create()
        module.operation.attributes["sym_name"] = ir.StringAttr.get(model_name)
        mir.set_mesh_and_layout(module, mesh, layout)
        mir.set_partitioning(module, "none")
        arg_types = [mir.tensor_type(v.tensor.shape.sizes, v.tensor.dtype) for v in graph.variables]
        res_types = [mir.tensor_type(t.shape.sizes, t.dtype) for t in outputs.values()]
        with ir.InsertionPoint(module.body):
            fn = func.FuncOp(mir.ENTRY, ir.FunctionType.get(arg_types, res_types))
        fn.arg_attrs = ir.ArrayAttr.get(
            [
                ir.DictAttr.get(
                    {
                        mir.DIMS: mir.str_array(v.tensor.shape.names),
                        mir.NAME: ir.StringAttr.get(v.name),
                        mir.ROLE: ir.StringAttr.get(v.role),
                        mir.INIT: ir.StringAttr.get(v.init),
                        **({mir.ALIAS: ir.IntegerAttr.get(ir.IntegerType.get_signless(32), aliases[v.name])}
                           if v.name in aliases else {}),
                    }
                )
                for v in graph.variables
            ]
        )
        fn.res_attrs = ir.ArrayAttr.get(
            [
                ir.DictAttr.get(
                    {
                        mir.DIMS: mir.str_array(t.shape.names),
                        mir.NAME: ir.StringAttr.get(name),
                        mir.ROLE: ir.StringAttr.get(output_roles.get(name, "output")),
                    }
                )
                for name, t in outputs.items()
            ]
        )
        block = fn.add_entry_block()
        values: dict[int, ir.Value] = {}
        for v, arg in zip(graph.variables, block.arguments):
            values[id(v.tensor)] = arg
        lx = Lowerer(module)
        remat = _Recompute(lx, values)
        with ir.InsertionPoint(block):
            lower_ops(lx, _live_operations(graph, list(outputs.values())), values, remat)
            func.ReturnOp([values[id(t)] for t in outputs.values()])
        if not module.operation.verify():
            raise AssertionError("lowered module does not verify")
        index_ranges.annotate(module)  # mtfc.range on inputs that index a dim (docs/IR.md)
    return module
