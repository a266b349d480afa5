"""``mtfc.dims`` back on the per-device program Shardy wrote (`restore_dims`):
Shardy rebuilds some ops (its constants, pads) and inserts others
(collectives, slices, offset tables); they get dims back where certain.

Requires: `dims_by_location` of the global @main, taken before Shardy ran.
Guarantees: an op that had dims keeps them; an op is given dims only when
they are certain (docs/passes/shardy.md, "Guarantees").
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import Mesh
from mtfc.passes import op_rules
from mtfc.passes.loops import program_ops

# Ops whose result is their first operand moved between layouts: same dims.
_SAME_DIMS_AS_OPERAND = op_rules.names(result_dims_of_operand=True)

# (location, result ranks) -> (result dims, global result shapes) of the
# global program's op there; None when two such ops differ.
DimsTable = dict[tuple[str, tuple], "tuple[list[list[str]], list[list[int]]] | None"]


def _rank(value: ir.Value) -> int | None:
    t = value.type
    return ir.RankedTensorType(t).rank if isinstance(t, ir.RankedTensorType) else None


def _ranks(op: ir.Operation) -> tuple:
    return tuple(_rank(r) for r in op.results)


def _shapes(op: ir.Operation) -> list[list[int]]:
    return [list(ir.RankedTensorType(r.type).shape) if _rank(r) is not None else [] for r in op.results]


def dims_by_location(fn: ir.Operation) -> DimsTable:
    """The `DimsTable` of a global @main."""
    table: DimsTable = {}
    for op in program_ops(fn):
        dims = mir.op_result_dims(op)
        if dims is None or len(dims) != len(op.results):
            continue
        key = (str(op.location), _ranks(op))
        if key in table and table[key] != (dims, _shapes(op)):
            table[key] = None
        else:
            table.setdefault(key, (dims, _shapes(op)))
    return table


def _blocks_of(local: list[int], global_: list[int]) -> bool:
    """Whether a local shape can be a block of a global one (each size divides)."""
    return len(local) == len(global_) and all(0 < l <= g and g % l == 0 for l, g in zip(local, global_))


def _only_feeds_dynamic_slices(op: ir.Operation) -> bool:
    users = [u.owner for u in op.results[0].uses]
    return bool(users) and all(getattr(u, "name", None) == "stablehlo.dynamic_slice" for u in users)


def restore_dims(fn: ir.Operation, by_location: DimsTable, mesh: Mesh) -> None:
    """Give back ``mtfc.dims`` to the ops Shardy rebuilt or inserted, where they
    are certain: a collective or slice has its operand's dims, a scalar none,
    Shardy's per-device offset tables (one entry per device, read at
    ``partition_id``) ``["mesh"]`` as the explicit partitioner's, and an op
    Shardy rebuilt or added for an op of the global program (its constants
    and pads, the offset it adds to a split iota) those of the one op at its
    location with results of its ranks, if its shapes are blocks of that op's.
    Any other op is left without (the reshapes and transposes inside one of
    Shardy's multi-dim all_gathers, whose extra dims have no name)."""
    for op in program_ops(fn):
        if op.name in ("func.return", "stablehlo.return") or not len(op.results) or mir.DIMS in op.attributes:
            continue
        ranks = [_rank(r) for r in op.results]
        dims: list[list[str]] | None = None
        if op.name in _SAME_DIMS_AS_OPERAND and len(op.results) == 1 and len(op.operands):
            try:
                source = mir.value_dims(op.operands[0])
            except (MtfcError, KeyError, IndexError):
                source = None
            if source is not None and len(source) == ranks[0]:
                dims = [source]
        if dims is None and all(r == 0 for r in ranks):
            dims = [[] for _ in ranks]
        if (dims is None and op.name == "stablehlo.constant" and ranks == [1]
                and ir.RankedTensorType(op.results[0].type).shape == [mesh.size] and _only_feeds_dynamic_slices(op)):
            dims = [["mesh"]]
        if dims is None:
            found = by_location.get((str(op.location), _ranks(op)))
            if found is not None and all(_blocks_of(l, g) for l, g in zip(_shapes(op), found[1])):
                dims = found[0]
        if dims is not None:
            mir.set_op_result_dims(op, dims)
