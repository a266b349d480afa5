"""Analysis `memory`: per-device bytes of @main's activations, by liveness.

Read-only.  @main's body is straight-line code (ops nested in regions -- the
bodies of reductions and collectives -- belong to the top-level op that holds
them), so one walk gives each value's live range: from the op that defines it
to the last top-level op that uses it (directly or inside one of its regions);
a value @main returns lives until the end, a value nobody uses only at its own
op.  At each op the live values are the ones whose range covers it -- the
op's operands and results together -- and the peak is the largest sum of
their per-device bytes over all ops.

Arguments are not activations: they are reported by role (parameters,
optimizer state, inputs) by the caller.  The estimate ignores what a compiler
does to buffers (fusion removes many intermediates, in-place updates reuse
them); it is the program's own demand, comparable across layouts and
partitioners.  XLA's own figure (``get_compiled_memory_stats().temp_size_in_bytes``)
is the buffer assignment after fusion.

**Loops** (``stablehlo.while``, docs/IR.md "Loops").  A loop is one op of
its block: its operands are live up to it and its results from it, like any
op's.  The results stand for the loop's state, the carried values, while it
runs (XLA updates the state in place: a body's block argument and its
result are that buffer), so the body's block arguments add nothing; a
carried value the body returns unchanged (a stacked parameter, a captured
mask) is its operand's buffer: that result counts 0 bytes and keeps the
operand live until the result's last use.  While the loop runs, its body's
own demand is added at the loop's index: the peak, over the body's ops, of
the body's temporaries live there (each from its definition to its last use
in the body; a nested loop adds its own body's peak the same way), the
cond's likewise, the larger counting.  So at a loop both the operands and
the new state are counted (an upper bound: XLA may reuse an operand that
dies there), which is never below the straight-line figure of one trip
(the same operands, the carried values and that trip's temporaries).  Trip
counts do not multiply memory: a trip's temporaries are dead when the next
begins.  `Liveness.peak_loop_bytes` is the body's share of the peak (0 when
the peak is not at a loop).

A splat constant (``stablehlo.constant dense<0.0>`` of any shape) counts one
element: compilers materialize it where it is used, fused, never as a buffer.

The walk is split in two: `plan` reads the IR once (each value's dims, type
shape, class and live range, loops' plans nested), and `evaluate` /
`peak_bytes` size a plan for a per-device shape function -- the layout
search (`mtfc/layout/cost.py`) sizes every candidate from one plan, with
`per_device_shape_fn(module, layouts)` for the candidate's layouts.

Per-device sizes: in a per-device program (``explicit``, ``shardy``) a value's
type is its per-device shape; in a global program (``none``, ``gspmd``) the
per-device shape is the layout's (each dim divided by its mesh axes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.comm_analysis import element_bytes, is_ranked


@dataclass
class LiveValue:
    index: int              # the top-level op defining it
    op: str
    location: str
    dims: list[str]
    dtype: str
    local_shape: list[int]
    bytes: int
    last_use: int

    def as_dict(self) -> dict:
        return {"op": self.op, "location": self.location, "dims": self.dims, "dtype": self.dtype,
                "local_shape": self.local_shape, "bytes": self.bytes, "defined_at": self.index,
                "last_use": self.last_use}


@dataclass
class Liveness:
    peak_bytes: int
    peak_index: int                  # top-level op index of the peak (-1: no values)
    peak_op: str
    peak_location: str
    live_at_peak: list[LiveValue]    # largest first
    ops: int
    values: list[LiveValue] = field(default_factory=list)
    peak_loop_bytes: int = 0         # of peak_bytes: the loop body's demand, when the peak is at a loop

    @property
    def total_bytes(self) -> int:
        return sum(v.bytes for v in self.values)


def per_device_shape_fn(module: ir.Module, layouts: "mir.Layouts | None" = None
                        ) -> Callable[[list[str], tuple[int, ...]], list[int]]:
    """(dims, type shape[, class]) -> per-device shape, for the module's
    partitioning; with `layouts` (a global module only: the layout search's
    candidate), that layout's per-device shapes instead of the module's own."""
    if mir.partitioning(module) in mir.PER_DEVICE:
        if layouts is not None:
            raise MtfcError("memory: a per-device program's shapes are its own; give layouts for a global module")
        return lambda dims, shape, cls="activation": list(shape)
    layouts = layouts if layouts is not None else mir.module_layouts(module)

    def local(dims, shape, cls="activation"):
        if len(dims) != len(shape):
            return list(shape)
        try:
            return list(layouts.of_value(dims, shape, cls=cls).local_sizes)
        except Exception:  # a value the layout cannot split: counted whole
            return list(shape)

    return local


@dataclass
class _PlannedValue:
    """A ranked result of one block's op, before per-device sizes: what a
    candidate layout needs to size it (dims, type shape, class, element bytes)."""

    index: int
    op: str
    location: str
    dims: list[str]
    dtype: str
    shape: tuple[int, ...]
    cls: str
    element_bytes: int
    last_use: int
    buffer_reused: bool = False   # a loop's carried value returned unchanged: its operand's buffer (0 bytes)
    splat: bool = False           # a splat constant: one element, whatever its shape


@dataclass
class LivenessPlan:
    """One block's live ranges, read from the IR once (`plan`); `evaluate`
    sizes them for any per-device shape function without touching MLIR --
    the layout search sizes every candidate from one plan."""

    ops: list[str]                                  # op name per index
    values: list[_PlannedValue]
    loops: dict[int, list["LivenessPlan"]] = field(default_factory=dict)  # op index -> its regions' plans
    locations: list[str] = field(default_factory=list)


def _plan_block(ops: list[ir.Operation]) -> LivenessPlan:
    """The ranked results of `ops` (one block's), each live from its own op
    to its last use, and the plans of the loops among them."""
    index_of: dict = {}
    values: list[tuple[ir.Value, _PlannedValue]] = []
    loops: dict[int, list[LivenessPlan]] = {}
    for i, op in enumerate(ops):
        dims = mir.op_result_dims(op) if op.name not in ("func.return", "stablehlo.return") else None
        classes = mir.op_result_classes(op)
        splat = op.name == "stablehlo.constant" and _is_splat(op)
        for k, r in enumerate(op.results):
            if not is_ranked(r.type):
                continue
            t = ir.RankedTensorType(r.type)
            d = dims[k] if dims is not None and k < len(dims) else []
            pv = _PlannedValue(i, op.name, mir.location_text(op.location), d, mir.dtype_name(t.element_type),
                               tuple(t.shape), classes[k] if k < len(classes) else "activation",
                               element_bytes(str(t.element_type)), i, splat=splat)
            index_of[r] = len(values)
            values.append((r, pv))
        if op.name == "stablehlo.while":
            loops[i] = [_plan_block([o.operation for o in region.blocks[0].operations]) for region in op.regions]
    for i, op in enumerate(ops):
        for nested in mir.walk(op):
            for v in nested.operands:
                j = index_of.get(v)
                if j is not None:
                    pv = values[j][1]
                    pv.last_use = max(pv.last_use, i)
    for op in ops:  # a carried value returned unchanged is its operand's buffer
        if op.name != "stablehlo.while":
            continue
        for k in _passed_through(op):
            j = index_of.get(op.results[k])
            if j is None:
                continue
            result = values[j][1]
            result.buffer_reused = True
            source = index_of.get(op.operands[k])
            if source is not None:
                values[source][1].last_use = max(values[source][1].last_use, result.last_use)
    return LivenessPlan([op.name for op in ops], [pv for _, pv in values], loops,
                        [mir.location_text(op.location) for op in ops])


def _is_splat(op: ir.Operation) -> bool:
    try:
        return ir.DenseElementsAttr(op.attributes["value"]).is_splat
    except (ValueError, TypeError, KeyError):
        return False


def _passed_through(loop: ir.Operation) -> list[int]:
    """The carried values a loop's body returns unchanged (its block argument at the same position)."""
    body = loop.regions[1].blocks[0]
    ret = [op.operation for op in body.operations][-1]
    return [k for k, (v, arg) in enumerate(zip(ret.operands, body.arguments)) if v == arg]


def _bytes(pv: _PlannedValue, local) -> tuple[list[int], int]:
    """A planned value's per-device shape and bytes (0 for a reused buffer, one element for a splat)."""
    shape = local(pv.dims, pv.shape, pv.cls)
    if pv.buffer_reused:
        return shape, 0
    return shape, (1 if pv.splat else math.prod(shape)) * pv.element_bytes


def _running(block: LivenessPlan, sizes: list[int], local) -> list[int]:
    """Per op of one block: bytes of that block's values live there plus the
    peak of a loop's body at the loop (`_loop_peak`)."""
    delta = [0] * (len(block.ops) + 1)
    for pv, b in zip(block.values, sizes):
        delta[pv.index] += b
        delta[pv.last_use + 1] -= b
    out, running = [], 0
    for i in range(len(block.ops)):
        running += delta[i]
        out.append(running + (_loop_peak(block.loops[i], local) if i in block.loops else 0))
    return out


def _loop_peak(regions: list[LivenessPlan], local) -> int:
    """The demand of a loop's temporaries while it runs: the larger of its
    cond's and body's peaks (the carried values are the loop's results)."""
    peak = 0
    for block in regions:
        sizes = [_bytes(pv, local)[1] for pv in block.values]
        peak = max(peak, max(_running(block, sizes, local), default=0))
    return peak


def plan(module: ir.Module) -> LivenessPlan:
    """@main's live ranges (`LivenessPlan`), read once."""
    with module.context:
        return _plan_block(list(mir.body_ops(mir.entry_function(module))))


def peak_bytes(block: LivenessPlan, local) -> int:
    """The peak of `liveness` for a plan and per-device shape function, without the report."""
    sizes = [_bytes(pv, local)[1] for pv in block.values]
    return max(_running(block, sizes, local), default=0)


def evaluate(block: LivenessPlan, local, *, top: int = 8) -> Liveness:
    """`liveness` of a plan under a per-device shape function."""
    shaped = [_bytes(pv, local) for pv in block.values]
    values = [LiveValue(pv.index, pv.op, pv.location, pv.dims, pv.dtype, shape, b, pv.last_use)
              for pv, (shape, b) in zip(block.values, shaped)]
    running = _running(block, [b for _, b in shaped], local)
    peak, peak_index = 0, -1
    for i, r in enumerate(running):
        if r > peak:
            peak, peak_index = r, i
    live = [lv for lv in values if peak_index >= 0 and lv.index <= peak_index <= lv.last_use and lv.bytes]
    live.sort(key=lambda lv: (-lv.bytes, lv.index))
    at_loop = peak_index >= 0 and peak_index in block.loops
    in_loop = peak - sum(lv.bytes for lv in live) if at_loop else 0
    return Liveness(
        peak_bytes=peak, peak_index=peak_index,
        peak_op=block.ops[peak_index] if peak_index >= 0 else "",
        peak_location=block.locations[peak_index] if peak_index >= 0 else "",
        live_at_peak=live[:top], ops=len(block.ops), values=values, peak_loop_bytes=in_loop,
    )


def liveness(module: ir.Module, *, top: int = 8, layouts: "mir.Layouts | None" = None) -> Liveness:
    """Live ranges of @main's values and the peak of their per-device bytes
    (a loop adds its body's peak at its own index, see the module docstring).

    `live_at_peak` keeps the `top` largest values of @main's block live at the peak.
    `layouts` (a global module only): size the values under that layout
    instead of the module's own (the layout search's candidates)."""
    with module.context:
        return evaluate(plan(module), per_device_shape_fn(module, layouts), top=top)


@dataclass
class Timeline:
    """Per top-level op of @main, in program order: its name, location and the
    per-device bytes live there (`liveness`'s running sum; at a loop its body's
    peak is added, as for the peak)."""

    ops: list[str]
    locations: list[str]
    bytes: list[int]


def timeline(module: ir.Module, *, layouts: "mir.Layouts | None" = None) -> Timeline:
    """The live bytes at each op of @main (the curve whose maximum is
    `liveness(...).peak_bytes`)."""
    with module.context:
        block = plan(module)
        local = per_device_shape_fn(module, layouts)
        sizes = [_bytes(pv, local)[1] for pv in block.values]
        return Timeline(list(block.ops), list(block.locations), _running(block, sizes, local))
