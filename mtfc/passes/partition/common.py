"""What the explicit partitioner's rules share: the rule table, a result
`Local`, attribute readers and small IR tests."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
from jax.extend.mlir import ir

from mtfc.passes.collectives import Local

if TYPE_CHECKING:
    from mtfc.passes.partition.driver import Partitioner

Rule = Callable[["Partitioner", ir.Operation, list[Local], list[str], tuple[int, ...]], Local]
RULES: dict[str, Rule] = {}
# Ops with regions the driver partitions recursively (a loop): (partitioner,
# op, env) -> one `Local` per result, each already in its result's layout.
RegionRule = Callable[["Partitioner", ir.Operation, dict], list[Local]]
REGION_RULES: dict[str, RegionRule] = {}


# ops whose rule emits the op itself, with local types, when nothing needs a
# collective: `Partitioner.copy_local` may copy them directly (`rule(copyable=True)`)
COPYABLE_RULES: set[str] = set()


def rule(*names: str, copyable: bool = False):
    """Register the decorated function as the explicit rule of the ops `names`;
    `copyable`: see `COPYABLE_RULES`."""
    def wrap(fn):
        for n in names:
            RULES[n] = fn
            if copyable:
                COPYABLE_RULES.add(n)
        return fn

    return wrap


def region_rule(*names: str):
    """Register the decorated function as the explicit rule of the ops
    `names`, which have regions and any number of results (`RegionRule`)."""
    def wrap(fn):
        for n in names:
            REGION_RULES[n] = fn
        return fn

    return wrap


def i64s(attr) -> list[int]:
    return list(ir.DenseI64ArrayAttr(attr))


def local_result(p: Partitioner, value: ir.Value, dims, shape, axes) -> Local:
    return Local(value, tuple(dims), tuple(shape), tuple(axes))


def zero_attr(element_type: ir.Type) -> ir.Attribute:
    if isinstance(element_type, ir.IntegerType):
        return ir.IntegerAttr.get(element_type, 0)
    return ir.FloatAttr.get(element_type, 0.0)


def shape_of(value: ir.Value) -> list[int]:
    return list(ir.RankedTensorType(value.type).shape)


def is_zero_constant(value: ir.Value) -> bool:
    if isinstance(value, ir.BlockArgument):
        return False
    op = ir.OpResult(value).owner.operation
    if op.name != "stablehlo.constant":
        return False
    return not np.any(np.array(ir.DenseElementsAttr(op.attributes["value"])))


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

