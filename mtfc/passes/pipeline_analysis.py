"""Pipeline analysis: the schedule and the stage-to-stage traffic of a
pipelined module (`mtf.layers.pipeline`), read from the IR alone.

A pipeline's tick loop is a ``stablehlo.while`` carrying
``mtfc.pipeline_stages`` (S), ``mtfc.pipeline_microbatches`` (M) and
``mtfc.pipeline_stages_dim`` (the stages dim's name) besides the loop
contract's ``mtfc.trip_count`` (docs/IR.md, "Loops"; the train step's
gradient loop carries them too).  For each such loop:

* ``bubble_fraction``: (S - 1) / (M + S - 1), the share of stage-ticks idle;
* ``permutes_per_tick`` and ``permute_bytes_per_tick``: the
  ``collective_permute``s in the loop body and the bytes each device sends
  per trip -- measured in a per-device program (explicit mode); in a global
  program (gspmd, shardy, unpartitioned) *predicted* from the layout: the
  ``mtfc.shift`` composites along the stages dim, each sending its operand's
  per-device slab of ``|offset|`` stages (nothing when the dim is not split);
* ``permute_bytes``: per tick times the trip count.

The train step's gradient loop over the same loop dim (no pipeline
attributes of its own) is reported too, as the ``gradient`` loop.

Reads only; knows nothing of the frontend.
"""

from __future__ import annotations

import math

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.passes import comm_analysis
from mtfc.passes.composites import composite_attributes

STAGES = "mtfc.pipeline_stages"
MICROBATCHES = "mtfc.pipeline_microbatches"
STAGES_DIM = "mtfc.pipeline_stages_dim"


def _int(op: ir.Operation, name: str) -> int:
    return ir.IntegerAttr(op.attributes[name]).value


def _str(op: ir.Operation, name: str, default: str = "stages") -> str:
    return ir.StringAttr(op.attributes[name]).value if name in op.attributes else default


def _body_ops(loop: ir.Operation):
    """The ops of the loop's ``do`` region (nested regions included)."""
    for block in loop.regions[1].blocks:
        for op in block.operations:
            yield from mir.walk(op.operation)


def _shift_attrs(op: ir.Operation) -> tuple[str, int] | None:
    """(dim name, |offset|) of an ``mtfc.shift`` composite, else None."""
    if op.name != "stablehlo.composite" or ir.StringAttr(op.attributes["name"]).value != "mtfc.shift":
        return None
    attrs = composite_attributes(op)
    return mir.value_dims(op.operands[0])[attrs["dim"]], abs(attrs["offset"])


def _predicted_bytes(op: ir.Operation, dim: str, offset: int, layouts: mir.Layouts) -> int:
    """Bytes one device sends for a shift along `dim` in a global program."""
    value = op.operands[0]
    dims = mir.value_dims(value)
    shape = list(ir.RankedTensorType(value.type).shape)
    layout = layouts.of_value(dims, shape, what=mir.describe_op(op))
    local = list(layout.local_sizes)
    i = dims.index(dim)
    if local[i] == shape[i]:  # not split: a local shift, no communication
        return 0
    local[i] = min(offset, local[i])
    return math.prod(local) * comm_analysis.element_bytes(str(ir.RankedTensorType(value.type).element_type))


def pipeline_report(module: ir.Module) -> list[dict]:
    """One record per pipeline tick loop of `module` (empty: not pipelined):
    the loops carrying the pipeline attributes (``"loop": "forward"``), and
    the loops over the same loop dim without them -- the train step's
    gradient loops, which run the ticks backwards (``"loop": "gradient"``,
    with the schedule of the forward loop over that dim)."""
    out = []
    with module.context:
        per_device = mir.partitioning(module) in mir.PER_DEVICE
        layouts = None if per_device else mir.module_layouts(module)
        loops = [op for op in mir.walk_ops(mir.entry_function(module))
                 if op.name == "stablehlo.while" and mir.LOOP_DIM in op.attributes]
        schedules = {}
        for op in loops:
            if STAGES in op.attributes:
                schedules.setdefault(_str(op, mir.LOOP_DIM), (_int(op, STAGES), _int(op, MICROBATCHES),
                                                              _str(op, STAGES_DIM)))
        for op in loops:
            loop_dim = _str(op, mir.LOOP_DIM)
            if STAGES in op.attributes:
                S, M, stages_dim, role = _int(op, STAGES), _int(op, MICROBATCHES), _str(op, STAGES_DIM), "forward"
            elif loop_dim in schedules:
                (S, M, stages_dim), role = schedules[loop_dim], "gradient"
            else:
                continue
            ticks = mir.loop_trip_count(op)
            count = per_tick = 0
            for inner in _body_ops(op):
                if per_device and inner.name == "stablehlo.collective_permute":
                    count += 1
                    per_tick += sum(comm_analysis.type_bytes(v.type) for v in inner.operands)
                elif not per_device:
                    shift = _shift_attrs(inner)
                    if shift is not None and shift[0] == stages_dim:
                        sent = _predicted_bytes(inner, stages_dim, shift[1], layouts)
                        count += 1 if sent else 0
                        per_tick += sent
            out.append({
                "loop": role, "location": mir.location_text(op.location),
                "stages": S, "microbatches": M, "ticks": ticks,
                "bubble_fraction": (S - 1) / (M + S - 1),
                "permutes_per_tick": count,
                "permute_bytes_per_tick": per_tick,
                "permute_bytes": per_tick * ticks,
                "source": "measured" if per_device else "predicted from the layout",
            })
    return out


def render_text(records: list[dict]) -> list[str]:
    """The inspect report's ``pipeline:`` lines (none when not pipelined)."""
    lines = []
    for r in records:
        lines += [
            "", f"pipeline, {r['loop']} ticks ({r['location']}): {r['stages']} stages, {r['microbatches']} microbatches, "
            f"{r['ticks']} ticks; bubble fraction (S-1)/(M+S-1) = {r['bubble_fraction']:.3f}",
            f"  stage-to-stage collective_permute ({r['source']}): {r['permutes_per_tick']} per tick, "
            f"{r['permute_bytes_per_tick']} bytes/device per tick, {r['permute_bytes']} bytes/device in all",
        ]
    return lines
