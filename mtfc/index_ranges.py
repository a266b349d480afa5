"""The valid values of integer inputs that index a dim: ``mtfc.range``.

An ``input`` argument of @main whose values pick positions along a dim -- the
indices of a ``gather`` (the DSL's `gather`, `layers.embedding`) or the
integers a ``one_hot`` compares with an ``iota`` -- can only mean something
inside ``[0, size)`` of that dim: XLA clamps a gather's out-of-range index to
the table's edge and a ``one_hot`` of it is all zeros, so a token id outside
the vocabulary would train silently on the wrong row.

`annotate` finds these arguments in the global module (right after
lowering, before any partitioning pass, which keep argument attributes) and
writes on each::

    mtfc.range = array<i64: 0, 512>     valid values [lo, hi)
    mtfc.range_dim = "vocab"            the dim they index (for messages)

The search follows the argument through ops that only move its values
(reshape, transpose, broadcast_in_dim, slice), and into a loop (a
``stablehlo.while`` operand: its cond's and body's block argument, which hold
it on the first trip), to

* the start indices of a single-dim ``stablehlo.gather``: ``[0, size - slice
  size + 1)`` of the looked-up operand dim (``[0, vocab)`` for a lookup);
* an ``EQ``/``NE`` ``stablehlo.compare`` with a ``stablehlo.iota``: ``[0,
  iota's size)`` along the iota dimension.

Several users intersect their ranges.  Arithmetic on the argument (``tokens +
1``) ends the search, so such an argument gets no range; so does every
non-``input`` argument (a step counter indexing a schedule table is meant to
clamp).  The runtime (`mtfc.runtime.data`) rejects ``--data``/``--inputs``
values outside an argument's range; a module without ``mtfc.range`` (written
by hand, or by another tool) is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError

RANGE = "mtfc.range"
RANGE_DIM = "mtfc.range_dim"
_MOVES_VALUES = ("stablehlo.reshape", "stablehlo.transpose", "stablehlo.broadcast_in_dim", "stablehlo.slice")


@dataclass(frozen=True)
class IndexRange:
    """Valid values ``[lo, hi)`` of an integer argument that indexes `dim`."""

    lo: int
    hi: int
    dim: str

    def describe(self) -> str:
        return f"[{self.lo}, {self.hi})"


def _dim_name(value: ir.Value, axis: int) -> str:
    try:
        dims = mir.value_dims(value)
    except (KeyError, ValueError, AttributeError, MtfcError):
        return f"#{axis}"
    return dims[axis] if axis < len(dims) else f"#{axis}"


def _gather_range(op: ir.Operation) -> IndexRange | None:
    numbers = hlo.GatherDimensionNumbers(op.attributes["dimension_numbers"])
    indices = ir.RankedTensorType(op.operands[1].type)
    start_map = list(numbers.start_index_map)
    if len(start_map) != 1 or numbers.index_vector_dim != indices.rank:
        return None
    axis = start_map[0]
    size = ir.RankedTensorType(op.operands[0].type).shape[axis]
    slice_size = list(ir.DenseI64ArrayAttr(op.attributes["slice_sizes"]))[axis]
    return IndexRange(0, size - slice_size + 1, _dim_name(op.operands[0], axis))


def _iota_range(op: ir.Operation, operand_number: int) -> IndexRange | None:
    direction = str(op.attributes["comparison_direction"])
    if "EQ" not in direction and "NE" not in direction:
        return None
    other = op.operands[1 - operand_number]
    if isinstance(other, ir.BlockArgument) or other.owner.name != "stablehlo.iota":
        return None
    axis = ir.IntegerAttr(other.owner.attributes["iota_dimension"]).value
    return IndexRange(0, ir.RankedTensorType(other.type).shape[axis], _dim_name(other, axis))


def value_range(value: ir.Value) -> IndexRange | None:
    """The range `value`'s uses require (the intersection over all of them), or None."""
    found: list[IndexRange] = []
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        for use in v.uses:
            op = use.owner
            if op.name in _MOVES_VALUES and use.operand_number == 0:
                key = id(op)
                if key not in seen:
                    seen.add(key)
                    stack.append(op.results[0])
            elif op.name == "stablehlo.gather" and use.operand_number == 1:
                r = _gather_range(op)
                found += [r] if r else []
            elif op.name == "stablehlo.compare":
                r = _iota_range(op, use.operand_number)
                found += [r] if r else []
            elif op.name == "stablehlo.while":
                # carried into a loop: the cond's and the body's block argument hold
                # it on the first trip (and on every trip when the body returns it unchanged)
                # (no cycle: a block argument never reaches its own loop's operands)
                stack += [region.blocks[0].arguments[use.operand_number] for region in op.regions]
    if not found:
        return None
    lo = max(r.lo for r in found)
    narrowest = min(found, key=lambda r: r.hi)
    return IndexRange(lo, narrowest.hi, narrowest.dim)


def annotate(module: ir.Module) -> None:
    """Write ``mtfc.range``/``mtfc.range_dim`` on each integer ``input`` argument of
    the global module that indexes a dim (see the module docstring)."""
    fn = mir.entry_function(module)
    if "arg_attrs" not in fn.attributes:
        return
    attrs = list(ir.ArrayAttr(fn.attributes["arg_attrs"]))
    changed = False
    for sig, arg in zip(mir.arguments(module), fn.regions[0].blocks[0].arguments):
        if sig.role != "input" or not sig.dtype.startswith(("i", "ui")):
            continue
        r = value_range(arg)
        if r is None:
            continue
        entries = {a.name: a.attr for a in ir.DictAttr(attrs[sig.index])}
        entries[RANGE] = ir.DenseI64ArrayAttr.get([r.lo, r.hi])
        entries[RANGE_DIM] = ir.StringAttr.get(r.dim)
        attrs[sig.index] = ir.DictAttr.get(entries)
        changed = True
    if changed:
        fn.attributes["arg_attrs"] = ir.ArrayAttr.get(attrs)


def argument_ranges(module: ir.Module) -> dict[str, IndexRange]:
    """mtfc.name -> the recorded range of every argument that has ``mtfc.range``."""
    fn = mir.entry_function(module)
    if "arg_attrs" not in fn.attributes:
        return {}
    out = {}
    for sig, a in zip(mir.arguments(module), ir.ArrayAttr(fn.attributes["arg_attrs"])):
        d = ir.DictAttr(a)
        if RANGE not in d:
            continue
        try:
            lo, hi = list(ir.DenseI64ArrayAttr(d[RANGE]))
        except (ValueError, TypeError):
            raise MtfcError(f"argument {sig.name!r}: {RANGE} is {d[RANGE]}, expected array<i64: lo, hi>") from None
        dim = ir.StringAttr(d[RANGE_DIM]).value if RANGE_DIM in d else "?"
        out[sig.name] = IndexRange(lo, hi, dim)
    return out
