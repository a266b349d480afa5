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

    @property
    def total_bytes(self) -> int:
        return sum(v.bytes for v in self.values)


def per_device_shape_fn(module: ir.Module) -> Callable[[list[str], tuple[int, ...]], list[int]]:
    """(dims, type shape) -> per-device shape, for the module's partitioning."""
    if mir.partitioning(module) in mir.PER_DEVICE:
        return lambda dims, shape, cls="activation": list(shape)
    layouts = mir.module_layouts(module)

    def local(dims, shape, cls="activation"):
        if len(dims) != len(shape):
            return list(shape)
        try:
            return list(layouts.of_value(dims, shape, cls=cls).local_sizes)
        except Exception:  # a value the layout cannot split: counted whole
            return list(shape)

    return local


def liveness(module: ir.Module, *, top: int = 8) -> Liveness:
    """Live ranges of @main's values and the peak of their per-device bytes.

    `live_at_peak` keeps the `top` largest values live at the peak."""
    with module.context:
        local = per_device_shape_fn(module)
        fn = mir.entry_function(module)
        ops = list(mir.body_ops(fn))
        index_of: dict = {}
        values: list[tuple[ir.Value, LiveValue]] = []
        for i, op in enumerate(ops):
            dims = mir.op_result_dims(op) if op.name != "func.return" else None
            for k, r in enumerate(op.results):
                if not is_ranked(r.type):
                    continue
                t = ir.RankedTensorType(r.type)
                d = dims[k] if dims is not None and k < len(dims) else []
                shape = local(d, tuple(t.shape), mir.op_class(op))
                lv = LiveValue(i, op.name, mir.location_text(op.location), d, mir.dtype_name(t.element_type),
                               shape, math.prod(shape) * element_bytes(str(t.element_type)), i)
                index_of[r] = len(values)
                values.append((r, lv))
        for i, op in enumerate(ops):
            for nested in mir.walk(op):
                for v in nested.operands:
                    j = index_of.get(v)
                    if j is not None:
                        lv = values[j][1]
                        lv.last_use = max(lv.last_use, i)
        # sweep: +bytes at definition, -bytes after the last use
        delta = [0] * (len(ops) + 1)
        for _, lv in values:
            delta[lv.index] += lv.bytes
            delta[lv.last_use + 1] -= lv.bytes
        peak, peak_index, running = 0, -1, 0
        for i in range(len(ops)):
            running += delta[i]
            if running > peak:
                peak, peak_index = running, i
        live = [lv for _, lv in values if peak_index >= 0 and lv.index <= peak_index <= lv.last_use]
        live.sort(key=lambda lv: (-lv.bytes, lv.index))
        peak_op = ops[peak_index] if peak_index >= 0 else None
        return Liveness(
            peak_bytes=peak, peak_index=peak_index,
            peak_op=peak_op.name if peak_op is not None else "",
            peak_location=mir.location_text(peak_op.location) if peak_op is not None else "",
            live_at_peak=live[:top], ops=len(ops), values=[lv for _, lv in values],
        )
