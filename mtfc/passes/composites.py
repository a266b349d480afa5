"""mtfc's composite ops: ops the frontend emits as ``stablehlo.composite``
(docs/IR.md "Composite ops") so that their meaning survives to the explicit
partitioner, each with a decomposition into plain StableHLO.

``mtfc.shift`` -- ``composite_attributes = {dim, offset, wrap}``:
``y[i] = x[i - offset]`` along operand dim ``dim``; zeros where ``i - offset``
is outside the dim, or ``x[(i - offset) mod n]`` when ``wrap``.

``mtfc.select_and_scatter`` -- ``composite_attributes = {window_dimensions,
window_strides, padding_low, padding_high}`` (i64 arrays, one entry per
operand dim), operands ``(operand, source)``: max pooling's gradient.  For
each window of `operand` (padded by ``padding_low/high``; padded positions
are never chosen), the window's value of `source` (the pooled shape) is
added at the window's first maximum; the result has the operand's shape.
Its decomposition is one ``stablehlo.select_and_scatter`` (select ``GE``,
scatter add, init 0).

`inline_composites` replaces every composite of @main by its decomposition
(for the consumers that do not know it: XLA's and Shardy's partitioners);
`erase_unused_decompositions` drops decompositions nothing calls any more.
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.passes.loops import program_ops
from mtfc.errors import MtfcError

SHIFT = "mtfc.shift"
SELECT_AND_SCATTER = "mtfc.select_and_scatter"
KNOWN = (SHIFT, SELECT_AND_SCATTER)


def composite_name(op: ir.Operation) -> str:
    return ir.StringAttr(op.attributes["name"]).value


def composite_attributes(op: ir.Operation) -> dict[str, int | list[int]]:
    """The composite's attributes as Python ints (booleans as 0/1) and lists
    of ints (i64 arrays)."""
    if "composite_attributes" not in op.attributes:
        return {}

    def value(attr):
        if isinstance(attr, ir.DenseI64ArrayAttr):
            return list(attr)
        return ir.IntegerAttr(attr).value

    return {a.name: value(a.attr) for a in ir.DictAttr(op.attributes["composite_attributes"])}


def shift_attributes(op: ir.Operation) -> tuple[int, int, bool]:
    """(dim, offset, wrap) of an ``mtfc.shift``, checked against its operand."""
    attrs = composite_attributes(op)
    try:
        k, offset, wrap = attrs["dim"], attrs["offset"], bool(attrs["wrap"])
    except KeyError as e:
        raise MtfcError(f"{mir.describe_op(op)}: mtfc.shift needs composite_attributes dim, offset, wrap "
                        f"({e.args[0]} is missing)") from None
    rank = ir.RankedTensorType(op.operands[0].type).rank
    if not 0 <= k < rank:
        raise MtfcError(f"{mir.describe_op(op)}: mtfc.shift dim {k} is not a dim of its rank-{rank} operand")
    return k, offset, wrap


def select_and_scatter_attributes(op: ir.Operation) -> tuple[list[int], list[int], list[int], list[int]]:
    """(window_dimensions, window_strides, padding_low, padding_high) of an
    ``mtfc.select_and_scatter``, checked against its operand's rank."""
    attrs = composite_attributes(op)
    keys = ("window_dimensions", "window_strides", "padding_low", "padding_high")
    missing = [k for k in keys if k not in attrs]
    if missing:
        raise MtfcError(f"{mir.describe_op(op)}: mtfc.select_and_scatter needs composite_attributes "
                        f"{', '.join(keys)} ({missing[0]} is missing)")
    rank = ir.RankedTensorType(op.operands[0].type).rank
    values = tuple(list(attrs[k]) for k in keys)
    for k, v in zip(keys, values):
        if len(v) != rank:
            raise MtfcError(f"{mir.describe_op(op)}: mtfc.select_and_scatter {k} has {len(v)} entries "
                            f"for a rank-{rank} operand")
    return values


def select_and_scatter_windows(op: ir.Operation) -> dict:
    """The nontrivial `op_rules.Window` of each windowed operand dim (by position)."""
    from mtfc.passes.op_rules import pooling_windows

    sizes, strides, lows, highs = select_and_scatter_attributes(op)
    ones = [1] * len(sizes)
    return pooling_windows(sizes, strides, list(zip(lows, highs)), ones, ones)


def _clone_into(op: ir.Operation, mapping: dict) -> ir.Operation:
    from mtfc.passes.partition.common import clone_region

    new = ir.Operation.create(op.name, results=[r.type for r in op.results],
                              operands=[mapping[v] for v in op.operands],
                              attributes={n: op.attributes[n] for n in op.attributes},
                              regions=len(op.regions), loc=op.location)
    for src, dst in zip(op.regions, new.regions):
        clone_region(src, dst)
    for old, res in zip(op.results, new.results):
        mapping[old] = res
    return new


def inline_composites(module: ir.Module) -> None:
    """Every ``stablehlo.composite`` in @main, loop bodies included, becomes
    the ops of its decomposition, in place (which keep their dims and
    locations); decompositions left unused are erased."""
    functions = mir.functions(module)
    fn = mir.entry_function(module)
    for op in [o for o in program_ops(fn) if o.name == "stablehlo.composite"]:
        callee = ir.FlatSymbolRefAttr(op.attributes["decomposition"]).value
        if callee not in functions:
            raise MtfcError(f"{mir.describe_op(op)}: its decomposition @{callee} is not in the module")
        body = functions[callee].regions[0].blocks[0]
        mapping = dict(zip(body.arguments, op.operands))
        with ir.InsertionPoint(op):
            for inner in body.operations:
                inner = inner.operation
                if inner.name == "func.return":
                    for result, value in zip(op.results, inner.operands):
                        result.replace_all_uses_with(mapping[value])
                    continue
                _clone_into(inner, mapping)
        op.erase()
    erase_unused_decompositions(module)


def erase_unused_decompositions(module: ir.Module) -> None:
    """Erase the private functions of the module that @main does not reach
    (through composites' decompositions and calls)."""
    functions = mir.functions(module)
    reached, stack = set(), [mir.ENTRY]
    while stack:
        name = stack.pop()
        if name in reached or name not in functions:
            continue
        reached.add(name)
        for op in mir.walk(functions[name]):
            for key in ("decomposition", "callee"):
                if key in op.attributes:
                    stack.append(ir.FlatSymbolRefAttr(op.attributes[key]).value)
    for name, fn in functions.items():
        private = "sym_visibility" in fn.attributes and ir.StringAttr(fn.attributes["sym_visibility"]).value == "private"
        if private and name not in reached:
            fn.erase()
