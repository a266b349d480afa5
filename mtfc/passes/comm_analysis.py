"""Analysis `comm`: the collectives of a per-device program and what they cost.

Read-only: nothing here changes a module.  Two readers produce the same
records (`Collective`):

* `module_collectives` reads a per-device StableHLO program (``explicit`` or
  ``shardy`` partitioning): every ``stablehlo.all_reduce``, ``all_gather``,
  ``reduce_scatter``, ``all_to_all``, ``collective_permute`` and
  ``collective_broadcast`` reachable from @main (calls are followed, once per
  call site; the nested ``module @mtfc.reference`` is not looked at);
* `hlo_collectives` reads XLA's HLO text (``hlo_modules()[0].to_string()`` of
  a compiled executable, parsed by `mtfc.passes.hlo_text`): ``all-reduce``, ``all-gather``, ``reduce-scatter``,
  ``all-to-all``, ``collective-permute`` and their async ``-start`` forms,
  each logical collective counted once (``-done`` halves and the
  ``async-start``/``async-done`` wrappers are not counted; the collective
  inside an async wrapper's computation is).

Mesh axes are recovered from replica groups by matching them against
`Mesh.groups(axes)` for every ordered subset of the mesh axes
(`axes_of_groups`); a collective permute's axes are the mesh axes along which
some source and target differ.

Bytes follow the NCCL-tests convention (``bus bytes``), per device, with S
the per-device buffer size:

==================  ==========================  =========================
kind                S                           bus bytes
==================  ==========================  =========================
all_reduce          operand bytes               2 (n-1)/n * S
all_gather          result bytes (the full      (n-1)/n * S
                    gathered buffer)
reduce_scatter      operand bytes (the full     (n-1)/n * S
                    buffer before scattering)
all_to_all          operand bytes               (n-1)/n * S
collective_permute  operand bytes               S
collective_broadcast operand bytes              S
==================  ==========================  =========================

n is the group size.  Variadic collectives (several operands in one op) count
once, with S the sum over their operands.

**Loops.** A collective inside the body (or cond) of a ``stablehlo.while``
runs once per trip: its record keeps S and bus bytes of one execution and
says how often it runs in ``trips`` (`mir.enclosing_trip_count`, the product
of the enclosing loops' ``mtfc.trip_count``, times that of a loop around the
call site when reached through a call; 1 outside loops).  `summarize` counts
it ``trips`` times: count, bytes and bus bytes per step are multiplied by
``trips``.  The HLO reader does the same with XLA's ``while`` loops: an
instruction in a loop's body (or cond) computation has ``trips`` = the
product of the enclosing loops' ``known_trip_count`` (`hlo_text.instruction_trips`;
a while whose trip count XLA does not know counts once).
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import numpy as np
from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.mesh import Mesh
from mtfc.passes import hlo_text, op_rules

# The collectives' kinds: op_rules' collective family, in its order, without "stablehlo.".
_STABLEHLO_KINDS = {n: n.removeprefix("stablehlo.") for n in op_rules.ordered(family="collective")}
KINDS = tuple(_STABLEHLO_KINDS.values())
_HLO_KINDS = {k.replace("_", "-"): k for k in KINDS}


# ------------------------------------------------------------------ records


@dataclass
class Collective:
    """One collective of a per-device program, with its per-device cost."""

    kind: str                      # one of KINDS
    op: str                        # the op as written: stablehlo.all_reduce, all-reduce-start, ...
    location: str                  # name scope and source line, or XLA's op_name
    axes: list[str] | None         # mesh axes it communicates over (None: groups match no axes)
    n: int                         # group size
    bytes: int                     # S, per device (see the module docstring)
    bus_bytes: float               # NCCL-tests bus bytes, per device
    shape: str                     # per-device operand type(s), e.g. f32[8,32,64]
    groups: list[list[int]] = field(default_factory=list)  # replica groups (pairs for a permute)
    spans: list[str] | None = None  # when `axes` is None: the mesh axes a group's members differ along
    trips: int = 1                 # executions per step (inside loops: the product of their trip counts)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["bus_bytes"] = _number(self.bus_bytes)
        return d


def _number(x: float):
    """An int when exact (JSON shows 49152, not 49152.0)."""
    return int(x) if float(x).is_integer() else round(float(x), 3)


def bus_bytes(kind: str, n: int, size: int) -> float:
    """NCCL-tests bus bytes of one collective over `n` devices moving `size` bytes (S)."""
    if kind in ("collective_permute", "collective_broadcast"):
        return float(size)
    if n <= 1:
        return 0.0
    if kind == "all_reduce":
        return 2.0 * (n - 1) / n * size
    if kind in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n * size
    raise ValueError(f"unknown collective kind {kind!r}")


def summarize(collectives: Iterable[Collective]) -> dict:
    """Per-step totals: ``{"by_kind": {kind: {count, bytes, bus_bytes}}, "total": {...}}``.

    A record with ``trips`` (a collective inside loops) counts that many
    times, in count and bytes.  `by_kind` lists only the kinds that occur, in
    `KINDS` order."""
    by_kind: dict[str, dict] = {}
    total = {"count": 0, "bytes": 0, "bus_bytes": 0.0}
    for c in collectives:
        row = by_kind.setdefault(c.kind, {"count": 0, "bytes": 0, "bus_bytes": 0.0})
        trips = getattr(c, "trips", 1)
        for r in (row, total):
            r["count"] += trips
            r["bytes"] += trips * c.bytes
            r["bus_bytes"] += trips * c.bus_bytes
    ordered = {k: by_kind[k] for k in KINDS if k in by_kind}
    for r in list(ordered.values()) + [total]:
        r["bus_bytes"] = _number(r["bus_bytes"])
    return {"by_kind": ordered, "total": total}


# --------------------------------------------------------- groups -> axes


def _clean_groups(groups) -> list[tuple[int, ...]]:
    """Replica groups as tuples, without the -1 padding of ragged groups."""
    return [tuple(int(d) for d in g if int(d) >= 0) for g in groups]


_AXES_CACHE: dict[tuple, list[str] | None] = {}


def axes_of_groups(mesh: Mesh, groups: Sequence[Sequence[int]]) -> list[str] | None:
    """The mesh axes whose device groups (`Mesh.groups`) are `groups`.

    Ordered subsets of the mesh axes are tried, shortest first; an exact match
    (the same order of devices within each group) wins, else a match of groups
    as sets (order within a group only matters for gathers and scatters).  Only
    orderings of the axes the groups' members actually differ along can match,
    so only those are built (a mesh of many axes stays cheap).  An empty group
    list means one group of every device.  None when nothing matches (e.g. a
    group spanning half of an axis).
    """
    cleaned = _clean_groups(groups)
    if not cleaned or (len(cleaned) == 1 and not cleaned[0]):
        cleaned = [tuple(range(mesh.size))]
    key = (mesh, tuple(cleaned))
    if key in _AXES_CACHE:
        return _AXES_CACHE[key]
    spans = spanned_axes(mesh, cleaned)
    result: list[str] | None = None
    if spans is not None:
        want_ordered = sorted(cleaned)
        want_sets = sorted(tuple(sorted(g)) for g in cleaned)
        fallback: list[str] | None = None
        for axes in itertools.permutations(spans):
            got = sorted(tuple(g) for g in mesh.groups(list(axes)))
            if got == want_ordered:
                result = list(axes)
                break
            if fallback is None and sorted(tuple(sorted(g)) for g in got) == want_sets:
                fallback = list(axes)
        else:
            result = fallback
    _AXES_CACHE[key] = result
    return result


def spanned_axes(mesh: Mesh, groups: Sequence[Sequence[int]]) -> list[str] | None:
    """Mesh axes along which members of some group differ, in mesh order (for
    groups that are no whole axes, e.g. half of an axis); None when a device
    id is off the mesh."""
    moved = set()
    for g in _clean_groups(groups):
        if any(not 0 <= d < mesh.size for d in g):
            return None
        coords = [mesh.coords(d) for d in g]
        moved.update(a for a in mesh.names if len({c[a] for c in coords}) > 1)
    return [a for a in mesh.names if a in moved]


def group_size(groups: Sequence[Sequence[int]], mesh: Mesh) -> int:
    cleaned = _clean_groups(groups)
    if not cleaned or (len(cleaned) == 1 and not cleaned[0]):
        return mesh.size
    return max(len(g) for g in cleaned)


def axes_of_pairs(mesh: Mesh, pairs: Sequence[Sequence[int]]) -> list[str] | None:
    """Mesh axes along which some (source, target) pair of a permute differs,
    in mesh order; None when a device id is off the mesh."""
    moved = set()
    for s, t in pairs:
        if not (0 <= s < mesh.size and 0 <= t < mesh.size):
            return None
        cs, ct = mesh.coords(int(s)), mesh.coords(int(t))
        moved.update(a for a in mesh.names if cs[a] != ct[a])
    return [a for a in mesh.names if a in moved]


def _permute_n(mesh: Mesh, axes: list[str] | None, pairs) -> int:
    if axes is not None:
        return math.prod(mesh.axis_size(a) for a in axes)
    return len({d for p in pairs for d in p})


# ------------------------------------------------------- StableHLO reader


def element_bytes(element_type: str) -> int:
    """Bytes of one element of an MLIR element type (``f32``, ``bf16``, ``i1``,
    ``complex<f32>``, ``f8E4M3FN``, ...); ``i1`` is stored as one byte."""
    text = str(element_type)
    scale = 1
    if text.startswith("complex<"):
        text, scale = text[len("complex<"):-1], 2
    m = re.search(r"(\d+)", text)
    bits = int(m.group(1)) if m else 32
    return scale * max(1, math.ceil(bits / 8))


def is_ranked(t: ir.Type) -> bool:
    """Whether `t` is a ranked tensor type (across MLIR binding versions)."""
    if isinstance(t, ir.RankedTensorType):
        return True
    try:
        ir.RankedTensorType(t)
    except (ValueError, TypeError):
        return False
    return True


def type_bytes(t: ir.Type) -> int:
    """Bytes of a ranked tensor type (0 for tokens and other non-tensors)."""
    if not is_ranked(t):
        return 0
    rt = ir.RankedTensorType(t)
    return math.prod(rt.shape) * element_bytes(str(rt.element_type))


def type_text(t: ir.Type) -> str:
    """``f32[8,32,64]`` for ``tensor<8x32x64xf32>``."""
    if not is_ranked(t):
        return str(t)
    rt = ir.RankedTensorType(t)
    return f"{mir.dtype_name(rt.element_type)}[{','.join(map(str, rt.shape))}]"


def _dense_ints(attr) -> np.ndarray:
    return np.asarray(ir.DenseIntElementsAttr(attr), dtype=np.int64)


def _walk_calls(fn: ir.Operation, functions: dict, depth: int = 0, trips: int = 1):
    """(op, trips) for the ops of `fn` in program order, nested regions
    included, entering each called function at its call site; `trips` is how
    often the op runs per call of the entry function (its loops' trip counts,
    times those around the call site)."""
    for op in mir.walk(fn):
        if op is fn or op == fn:
            continue
        runs = trips * mir.enclosing_trip_count(op)
        yield op, runs
        if op.name == "func.call" and depth < 32:
            callee = ir.FlatSymbolRefAttr(op.attributes["callee"]).value
            if callee in functions:
                yield from _walk_calls(functions[callee], functions, depth + 1, runs)


def stablehlo_collective(op: ir.Operation, mesh: Mesh) -> Collective | None:
    """The `Collective` record of one StableHLO op, or None if it is not one."""
    kind = _STABLEHLO_KINDS.get(op.name)
    if kind is None:
        return None
    operands = [v.type for v in op.operands]
    results = [r.type for r in op.results]
    operand_bytes = sum(type_bytes(t) for t in operands)
    if kind == "collective_permute":
        pairs = _dense_ints(op.attributes["source_target_pairs"]).reshape(-1, 2).tolist()
        axes = axes_of_pairs(mesh, pairs)
        n, groups, size = _permute_n(mesh, axes, pairs), pairs, operand_bytes
    else:
        groups_attr = op.attributes["replica_groups"] if "replica_groups" in op.attributes else None
        groups = _dense_ints(groups_attr).tolist() if groups_attr is not None else []
        if groups and not isinstance(groups[0], list):
            groups = [groups]
        groups = [list(g) for g in _clean_groups(groups)]
        axes = axes_of_groups(mesh, groups)
        n = group_size(groups, mesh)
        size = sum(type_bytes(t) for t in results) if kind == "all_gather" else operand_bytes
    return Collective(
        kind=kind, op=op.name, location=mir.location_text(op.location), axes=axes, n=n,
        bytes=size, bus_bytes=bus_bytes(kind, n, size),
        shape=", ".join(type_text(t) for t in operands), groups=groups,
        spans=spanned_axes(mesh, groups) if axes is None and kind != "collective_permute" else None,
    )


def module_collectives(module: ir.Module) -> list[Collective]:
    """Every collective of the per-device program @main, in program order
    (a collective in a loop body once, with its ``trips``)."""
    with module.context:
        mesh = mir.module_mesh(module)
        functions = mir.functions(module)
        entry = mir.entry_function(module)
        out = []
        for op, trips in _walk_calls(entry, functions):
            c = stablehlo_collective(op, mesh)
            if c is not None:
                c.trips = trips
                out.append(c)
        return out


# ------------------------------------------------------------ HLO reader


def hlo_collectives(text: str, mesh: Mesh) -> list[Collective]:
    """Every collective of an HLO module's text (``HloModule.to_string()``)."""
    found, shapes = hlo_text.instructions(text)
    frames = hlo_text.stack_frames(text)
    trips = hlo_text.instruction_trips(text)
    out = []
    for ins in found:
        if ins.opcode.endswith("-done"):
            continue
        base = ins.opcode[: -len("-start")] if ins.opcode.endswith("-start") else ins.opcode
        kind = _HLO_KINDS.get(base)
        if kind is None:
            continue
        operand_shapes = ins.operand_shapes(shapes)
        operand_bytes = sum(hlo_text.shape_bytes(s) for s in operand_shapes)
        if kind == "collective_permute":
            pairs = hlo_text.parse_pairs(hlo_text.attr(ins.attrs, "source_target_pairs"))
            axes = axes_of_pairs(mesh, pairs)
            n, groups, size = _permute_n(mesh, axes, pairs), pairs, operand_bytes
        else:
            groups = hlo_text.parse_replica_groups(hlo_text.attr(ins.attrs, "replica_groups"), mesh.size)
            if groups is None:
                axes, groups, n = None, [], 0
            else:
                axes = axes_of_groups(mesh, groups)
                n = group_size(groups, mesh)
            if kind == "all_gather":
                # S is the gathered buffer: n operands' worth (an all-gather-start's
                # result is the tuple (operand, gathered)).
                result = hlo_text.ARRAY_SHAPE.findall(ins.shape)
                size = operand_bytes * n if n else hlo_text.shape_bytes("%s[%s]" % result[-1])
            else:
                size = operand_bytes
        out.append(Collective(
            kind=kind, op=ins.opcode, location=hlo_text.location(ins.name, ins.attrs, frames), axes=axes, n=n,
            bytes=size, bus_bytes=bus_bytes(kind, n, size),
            shape=", ".join(hlo_text.shape_text(s) for s in operand_shapes), groups=groups,
            spans=spanned_axes(mesh, groups) if axes is None and groups and kind != "collective_permute" else None,
            trips=trips.get(ins.name, 1),
        ))
    return out
