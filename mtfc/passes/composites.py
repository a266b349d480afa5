"""mtfc's composite ops: ops the frontend emits as ``stablehlo.composite``
(docs/IR.md "Composite ops") so that their meaning survives to the explicit
partitioner, each with a decomposition into plain StableHLO.

``mtfc.shift`` -- ``composite_attributes = {dim, offset, wrap}``:
``y[i] = x[i - offset]`` along operand dim ``dim``; zeros where ``i - offset``
is outside the dim, or ``x[(i - offset) mod n]`` when ``wrap``.

`inline_composites` replaces every composite of @main by its decomposition
(for the consumers that do not know it: XLA's and Shardy's partitioners);
`erase_unused_decompositions` drops decompositions nothing calls any more.
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError

SHIFT = "mtfc.shift"
KNOWN = (SHIFT,)


def composite_name(op: ir.Operation) -> str:
    return ir.StringAttr(op.attributes["name"]).value


def composite_attributes(op: ir.Operation) -> dict[str, int]:
    """The composite's attributes as Python ints (booleans as 0/1)."""
    if "composite_attributes" not in op.attributes:
        return {}
    return {a.name: ir.IntegerAttr(a.attr).value for a in ir.DictAttr(op.attributes["composite_attributes"])}


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
    """Every ``stablehlo.composite`` in @main becomes the ops of its
    decomposition (which keep their dims and locations); decompositions
    left unused are erased."""
    functions = mir.functions(module)
    fn = mir.entry_function(module)
    for op in list(mir.body_ops(fn)):
        if op.name != "stablehlo.composite":
            continue
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
