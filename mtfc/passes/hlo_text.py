"""XLA's HLO text (``HloModule.to_string()`` of a compiled executable), read:
instructions (`instructions`), their attributes (`attr`), shapes and their
bytes (`shape_bytes`), replica groups in any of XLA's spellings
(`parse_replica_groups`), permute pairs (`parse_pairs`) and source locations
(`location`, from ``op_name``/``source_file`` or the ``StackFrames`` tables),
the computation each instruction is in (`Instruction.computation`) and how
many times each computation runs per execution (`execution_counts`: a
``while`` body ``known_trip_count`` times -- XLA's backend config --, so a
collective in a loop body counts that many times; None where a loop around
it has no known trip count).

Only text: no mesh, no cost model -- `comm_analysis.hlo_collectives` turns
these into `Collective` records.  What cannot be read is None, never a guess.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

# HLO element types: the number is the width in bits (c64: two f32).
def element_bytes(dtype: str) -> int:
    if dtype == "pred":
        return 1
    if dtype == "token":
        return 0
    m = re.search(r"(\d+)", dtype)
    return max(1, math.ceil(int(m.group(1)) / 8)) if m else 4


ARRAY_SHAPE = re.compile(r"([a-z][a-z0-9]*)\[([0-9,]*)\](?:\{[^}]*\})?")


def shape_bytes(shape: str) -> int:
    """Bytes of an HLO shape: ``f32[8,32]{1,0}`` or a tuple ``(f32[2], s32[])``."""
    total = 0
    for dtype, dims in ARRAY_SHAPE.findall(shape):
        sizes = [int(d) for d in dims.split(",") if d]
        total += math.prod(sizes) * element_bytes(dtype)
    return total


def shape_text(shape: str) -> str:
    return ", ".join(f"{d}[{s}]" for d, s in ARRAY_SHAPE.findall(shape))


# `%name = SHAPE opcode(operands), attributes`; SHAPE may be a tuple.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>\((?:[^()]|\([^()]*\))*\)|[a-z][a-z0-9]*\[[0-9,]*\](?:\{[^}]*\})?)\s+"
    r"(?P<opcode>[a-z][\w\-]*)\((?P<operands>[^)]*)\)(?P<attrs>.*)$"
)


def split_top(text: str, sep: str = ",") -> list[str]:
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


def attr(attrs: str, name: str) -> str | None:
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


def parse_pairs(text: str | None) -> list[list[int]]:
    if not text:
        return []
    return [[int(a), int(b)] for a, b in re.findall(r"\{\s*(-?\d+)\s*,\s*(-?\d+)\s*\}", text)]


def stack_frames(text: str) -> dict[int, tuple[str, int]]:
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


def location(name: str, attrs: str, frames: dict[int, tuple[str, int]]) -> str:
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


@dataclass(frozen=True)
class Instruction:
    """One HLO instruction: ``%name = SHAPE opcode(operands), attrs``."""

    name: str
    shape: str       # its result shape (a tuple shape for a tuple)
    opcode: str
    operands: str    # the raw operand list
    attrs: str       # the raw attribute text after the operands
    computation: str = ""  # the computation it is in (``main.3_spmd``, a loop body ``region_0.1_spmd``)

    def operand_shapes(self, shapes: dict[str, str]) -> list[str]:
        """Each operand's shape: printed inline (``f32[8]{0} %x``) or, for a
        bare ``%x``, the shape `shapes` (name -> shape) has for it."""
        out = []
        for operand in split_top(self.operands):
            operand = operand.strip()
            name = re.search(r"%?([\w.\-]+)\s*$", operand)
            if not name:
                continue
            printed = ARRAY_SHAPE.search(operand)
            out.append(operand.rsplit(" ", 1)[0] if printed and " " in operand else shapes.get(name.group(1), ""))
        return out


# `%name (params) -> shape {` or `ENTRY %name ...{`: a computation's header.
_COMPUTATION = re.compile(r"^(?P<entry>ENTRY\s+)?%?(?P<name>[\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")


def instructions(text: str) -> tuple[list[Instruction], dict[str, str]]:
    """Every instruction of an HLO module's text, in order (each with the
    computation it is in), and name -> shape."""
    out, shapes = [], {}
    computation = ""
    for line in text.splitlines():
        header = _COMPUTATION.match(line)
        if header and not _INSTRUCTION.match(line):
            computation = header.group("name")
            continue
        m = _INSTRUCTION.match(line)
        if m:
            shapes[m.group("name")] = m.group("shape")
            out.append(Instruction(m.group("name"), m.group("shape"), m.group("opcode"), m.group("operands"),
                                   m.group("attrs"), computation))
    return out, shapes


def entry_computation(text: str) -> str | None:
    """The name of the module's ``ENTRY`` computation, or None."""
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m and m.group("entry"):
            return m.group("name")
    return None


def known_trip_count(ins: Instruction) -> int | None:
    """A ``while``'s trip count from XLA's backend config
    (``"known_trip_count":{"n":"4"}``), or None when XLA does not know it."""
    m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"?(\d+)"?', ins.attrs)
    return int(m.group(1)) if m else None


# Attributes naming the computations an instruction runs.
_CALLED = re.compile(r"\b(condition|body|calls|to_apply|true_computation|false_computation|branch_computations)="
                     r"(\{[^}]*\}|%?[\w.\-]+)")


def execution_counts(text: str) -> dict[str, int | None]:
    """How many times each computation reachable from ``ENTRY`` runs per
    execution of the module: ``ENTRY`` once; a ``while``'s body `n` times and
    its condition ``n + 1`` times, `n` its `known_trip_count` (None when
    unknown: then so is every count below it); any other called computation
    (a call, a fusion, a reducer, a conditional's branches: at most once each)
    as often as its caller runs.  A computation called from several places
    sums them."""
    found, _ = instructions(text)
    entry = entry_computation(text)
    if entry is None:
        return {}
    calls: dict[str, list[tuple[str, int | None]]] = {}  # caller -> (callee, runs per caller run)
    for ins in found:
        for kind, target in _CALLED.findall(ins.attrs):
            names = re.findall(r"%?([\w.\-]+)", target.strip("{}"))
            if ins.opcode == "while" and kind in ("body", "condition"):
                n = known_trip_count(ins)
                per = None if n is None else (n if kind == "body" else n + 1)
            else:
                per = 1
            calls.setdefault(ins.computation, []).extend((name, per) for name in names)
    counts: dict[str, int | None] = {}

    def add(name: str, runs: int | None, depth: int = 0) -> None:
        if depth > 64:  # HLO has no recursion; a misread cycle stops here
            return
        before = counts.get(name, 0)
        counts[name] = None if before is None or runs is None else before + runs
        for callee, per in calls.get(name, []):
            add(callee, None if runs is None or per is None else runs * per, depth + 1)

    add(entry, 1)
    return counts


def instruction_trips(text: str) -> dict[str, int]:
    """Instruction name -> how many times it runs per execution of the entry
    computation (`execution_counts` of its computation); once where a loop
    around it has no known trip count (the HLO does not say more)."""
    counts = execution_counts(text)
    found, _ = instructions(text)
    return {ins.name: counts.get(ins.computation) or 1 for ins in found}
