"""Analysis `comm`: the collectives of a per-device program and what they cost.

Read-only: nothing here changes a module.  Two readers produce the same
records (`Collective`):

* `module_collectives` reads a per-device StableHLO program (``explicit`` or
  ``shardy`` partitioning): every ``stablehlo.all_reduce``, ``all_gather``,
  ``reduce_scatter``, ``all_to_all``, ``collective_permute`` and
  ``collective_broadcast`` reachable from @main (calls are followed, once per
  call site; the nested ``module @mtfc.reference`` is not looked at);
* `hlo_collectives` reads XLA's HLO text (``hlo_modules()[0].to_string()`` of
  a compiled executable): ``all-reduce``, ``all-gather``, ``reduce-scatter``,
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

KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute", "collective_broadcast")

_STABLEHLO_KINDS = {f"stablehlo.{k}": k for k in KINDS}
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

    `by_kind` lists only the kinds that occur, in `KINDS` order."""
    by_kind: dict[str, dict] = {}
    total = {"count": 0, "bytes": 0, "bus_bytes": 0.0}
    for c in collectives:
        row = by_kind.setdefault(c.kind, {"count": 0, "bytes": 0, "bus_bytes": 0.0})
        for r in (row, total):
            r["count"] += 1
            r["bytes"] += c.bytes
            r["bus_bytes"] += c.bus_bytes
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


def _walk_calls(fn: ir.Operation, functions: dict, depth: int = 0):
    """Ops of `fn` in program order, nested regions included, entering each
    called function at its call site."""
    for op in mir.walk(fn):
        if op is fn or op == fn:
            continue
        yield op
        if op.name == "func.call" and depth < 32:
            callee = ir.FlatSymbolRefAttr(op.attributes["callee"]).value
            if callee in functions:
                yield from _walk_calls(functions[callee], functions, depth + 1)


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
    """Every collective of the per-device program @main, in program order."""
    with module.context:
        mesh = mir.module_mesh(module)
        functions = mir.functions(module)
        entry = mir.entry_function(module)
        out = []
        for op in _walk_calls(entry, functions):
            c = stablehlo_collective(op, mesh)
            if c is not None:
                out.append(c)
        return out


# ------------------------------------------------------------ HLO reader

# HLO element types: the number is the width in bits (c64: two f32).
def hlo_element_bytes(dtype: str) -> int:
    if dtype == "pred":
        return 1
    if dtype == "token":
        return 0
    m = re.search(r"(\d+)", dtype)
    return max(1, math.ceil(int(m.group(1)) / 8)) if m else 4


_ARRAY_SHAPE = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\](?:\{[^}]*\})?")


def hlo_shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape: ``f32[8,32]{1,0}`` or a tuple ``(f32[2], s32[])``."""
    total = 0
    for dtype, dims in _ARRAY_SHAPE.findall(shape):
        sizes = [int(d) for d in dims.split(",") if d]
        total += math.prod(sizes) * hlo_element_bytes(dtype)
    return total


def _hlo_shape_text(shape: str) -> str:
    return ", ".join(f"{d}[{s}]" for d, s in _ARRAY_SHAPE.findall(shape))


# `%name = SHAPE opcode(operands), attributes`; SHAPE may be a tuple.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>\((?:[^()]|\([^()]*\))*\)|[a-z][a-z0-9]*\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<opcode>[a-z][\w\-]*)\((?P<operands>[^)]*)\)(?P<attrs>.*)$"
)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split at `sep` outside brackets."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur))
    return out


def _attr(attrs: str, name: str) -> str | None:
    """The raw text of attribute `name` in an instruction's attribute list."""
    m = re.search(r"(?:^|[\s,])" + re.escape(name) + r"=", attrs)
    if not m:
        return None
    start = m.end()
    depth = 0
    i = start
    while i < len(attrs):
        ch = attrs[i]
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                break
        elif ch == "," and depth == 0:
            break
        i += 1
    value = attrs[start:i].strip()
    # The mesh form runs past a comma: mesh[...], device_ids=(...) {'axis'}.
    if value.startswith("mesh["):
        rest = attrs[start:]
        m2 = re.match(_MESH_GROUPS, rest)
        if m2:
            value = m2.group(0)
    return value


# mesh['axis_0'=2,'axis_1'=4], device_ids=([2,4]T(1,0)) {'axis_1'}
_MESH_GROUPS = (r"mesh\[(?P<axes>[^\]]*)\](?:,\s*device_ids=\((?P<ids>(?:[^()]|\([^()]*\))*)\))?"
                r"\s*\{(?P<sel>[^}]*)\}")


def _iota_list(dims: list[int], perm: list[int] | None) -> np.ndarray:
    ids = np.arange(math.prod(dims)).reshape(dims)
    if perm is not None:
        ids = ids.transpose(perm)
    return ids.reshape(-1)


def parse_replica_groups(text: str | None, num_devices: int) -> list[list[int]] | None:
    """Replica groups from HLO text, in any of XLA's spellings:

    ``{{0,1},{2,3}}``; the iota form ``[2,4]<=[8]`` / ``[4,2]<=[2,4]T(1,0)``;
    the mesh form ``mesh['axis_0'=2,'axis_1'=4] {'axis_1'}`` (optionally with
    ``device_ids=([2,4]T(1,0))``).  None when the text cannot be read; ``[]``
    for ``{}`` (one group of every device)."""
    if text is None:
        return []
    text = text.strip()
    if text.startswith("{"):
        inner = text[1:-1].strip()
        if not inner:
            return []
        return [[int(x) for x in re.findall(r"-?\d+", g)] for g in re.findall(r"\{([^{}]*)\}", inner)]
    m = re.match(r"\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?$", text)
    if m:
        shape = [int(x) for x in m.group(1).split(",")]
        dims = [int(x) for x in m.group(2).split(",")]
        perm = [int(x) for x in m.group(3).split(",")] if m.group(3) else None
        ids = _iota_list(dims, perm)
        return ids.reshape(shape[0], -1).tolist()
    m = re.match(_MESH_GROUPS + "$", text)
    if m:
        axes = re.findall(r"'([^']+)'\s*=\s*(\d+)", m.group("axes"))
        if not axes or ":" in m.group("sel"):
            return None  # sub-axes: not read
        names = [a for a, _ in axes]
        sizes = [int(s) for _, s in axes]
        ids_text = (m.group("ids") or "").strip()
        if not ids_text:
            ids = np.arange(math.prod(sizes))
        else:
            im = re.match(r"\[([\d,]+)\](?:T\(([\d,]+)\))?$", ids_text)
            if im:
                ids = _iota_list([int(x) for x in im.group(1).split(",")],
                                 [int(x) for x in im.group(2).split(",")] if im.group(2) else None)
            else:
                ids = np.array([int(x) for x in re.findall(r"\d+", ids_text)])
        if len(ids) != math.prod(sizes):
            return None
        selected = re.findall(r"'([^']+)'", m.group("sel"))
        if any(s not in names for s in selected):
            return None
        grid = ids.reshape(sizes)
        order = [i for i, a in enumerate(names) if a not in selected] + [names.index(s) for s in selected]
        size = math.prod(sizes[names.index(s)] for s in selected)
        return grid.transpose(order).reshape(-1, size).tolist()
    return None


def _parse_pairs(text: str | None) -> list[list[int]]:
    if not text:
        return []
    return [[int(a), int(b)] for a, b in re.findall(r"\{\s*(-?\d+)\s*,\s*(-?\d+)\s*\}", text)]


def _stack_frames(text: str) -> dict[int, tuple[str, int]]:
    """stack frame id -> (file, line), from the ``FileNames``/``FileLocations``/
    ``StackFrames`` tables newer XLA prints after the computations."""
    tables: dict[str, dict[int, str]] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(stripped, {})
            continue
        if current is None:
            continue
        m = re.match(r"^(\d+)\s+(.*)$", stripped)
        if m:
            current[int(m.group(1))] = m.group(2)
        elif stripped:
            current = None
    files = {k: v.strip('"') for k, v in tables.get("FileNames", {}).items()}
    locations = {}
    for k, v in tables.get("FileLocations", {}).items():
        f, ln = re.search(r"file_name_id=(\d+)", v), re.search(r"\bline=(\d+)", v)
        if f and ln:
            locations[k] = (files.get(int(f.group(1)), "?"), int(ln.group(1)))
    frames = {}
    for k, v in tables.get("StackFrames", {}).items():
        loc = re.search(r"file_location_id=(\d+)", v)
        if loc and int(loc.group(1)) in locations:
            frames[k] = locations[int(loc.group(1))]
    return frames


def _hlo_location(name: str, attrs: str, frames: dict[int, tuple[str, int]]) -> str:
    op_name = re.search(r'op_name="([^"]*)"', attrs)
    where = op_name.group(1) if op_name else f"%{name}"
    source = re.search(r'source_file="([^"]*)"\s+source_line=(\d+)', attrs)
    frame = re.search(r"stack_frame_id=(\d+)", attrs)
    if source:
        where += f"({source.group(1).rsplit('/', 1)[-1]}:{source.group(2)})"
    elif frame and int(frame.group(1)) in frames:
        file, line = frames[int(frame.group(1))]
        where += f"({file.rsplit('/', 1)[-1]}:{line})"
    return where


def hlo_collectives(text: str, mesh: Mesh) -> list[Collective]:
    """Every collective of an HLO module's text (``HloModule.to_string()``)."""
    shapes: dict[str, str] = {}
    frames = _stack_frames(text)
    instructions = []
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        shapes[m.group("name")] = m.group("shape")
        instructions.append(m)
    out = []
    for m in instructions:
        opcode = m.group("opcode")
        if opcode.endswith("-done"):
            continue
        base = opcode[: -len("-start")] if opcode.endswith("-start") else opcode
        kind = _HLO_KINDS.get(base)
        if kind is None:
            continue
        attrs = m.group("attrs")
        operand_names = []
        for operand in _split_top(m.group("operands")):
            operand = operand.strip()
            # `f32[8]{0} %x` (operand shapes printed) or `%x`
            name = re.search(r"%?([\w.\-]+)\s*$", operand)
            if name:
                operand_names.append((operand, name.group(1)))
        operand_shapes = []
        for raw, name in operand_names:
            printed = _ARRAY_SHAPE.search(raw)
            operand_shapes.append(raw.rsplit(" ", 1)[0] if printed and " " in raw else shapes.get(name, ""))
        operand_bytes = sum(hlo_shape_bytes(s) for s in operand_shapes)
        if kind == "collective_permute":
            pairs = _parse_pairs(_attr(attrs, "source_target_pairs"))
            axes = axes_of_pairs(mesh, pairs)
            n, groups, size = _permute_n(mesh, axes, pairs), pairs, operand_bytes
        else:
            groups = parse_replica_groups(_attr(attrs, "replica_groups"), mesh.size)
            if groups is None:
                axes, groups, n = None, [], 0
            else:
                axes = axes_of_groups(mesh, groups)
                n = group_size(groups, mesh)
            if kind == "all_gather":
                # S is the gathered buffer: n operands' worth (an all-gather-start's
                # result is the tuple (operand, gathered)).
                result = _ARRAY_SHAPE.findall(m.group("shape"))
                size = operand_bytes * n if n else hlo_shape_bytes("%s[%s]" % result[-1])
            else:
                size = operand_bytes
        out.append(Collective(
            kind=kind, op=opcode, location=_hlo_location(m.group("name"), attrs, frames), axes=axes, n=n,
            bytes=size, bus_bytes=bus_bytes(kind, n, size),
            shape=", ".join(_hlo_shape_text(s) for s in operand_shapes), groups=groups,
            spans=spanned_axes(mesh, groups) if axes is None and groups and kind != "collective_permute" else None,
        ))
    return out
