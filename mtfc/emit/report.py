"""`mtfc inspect`: what a module holds, read from the IR alone.

The report lists the mesh and layout rules, every argument and result (name,
role, dims, global and per-device shape, bytes per device), and every value
in @main's body with its op, dims and per-device shape.
"""

from __future__ import annotations

import math

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.mesh import tensor_layout

_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "ui32": 4, "i1": 1}


def inspect_module(module: ir.Module) -> dict:
    with module.context:
        mesh, rules = mir.module_mesh(module), mir.module_layout(module)
        kind = mir.partitioning(module)
        per_device_program = kind in ("explicit", "shardy")

        def local(dims, shape, what):
            if per_device_program:
                return list(shape)
            return list(tensor_layout(dims, shape, rules, mesh, what=what).local_sizes)

        def describe(sig):
            shape = local(sig.dims, sig.shape, sig.name)
            return {
                "name": sig.name, "role": sig.role, "dims": sig.dims, "dtype": sig.dtype,
                "shape": list(sig.shape), "local_shape": shape,
                "bytes_per_device": math.prod(shape) * _BYTES.get(sig.dtype, 4),
            }

        arguments = [describe(s) for s in mir.arguments(module)]
        results = [describe(s) for s in mir.results(module)]
        values = []
        for op in mir.body_ops(mir.entry_function(module)):
            dims = mir.op_result_dims(op)
            if dims is None:
                continue
            for d, r in zip(dims, op.results):
                t = ir.RankedTensorType(r.type)
                shape = tuple(t.shape)
                values.append({
                    "op": op.name, "location": mir.location_text(op.location), "dims": d,
                    "dtype": mir.dtype_name(t.element_type), "shape": list(shape),
                    "local_shape": local(d, shape, mir.describe_op(op)),
                })
        parameter_bytes = sum(a["bytes_per_device"] for a in arguments if a["role"] in ("parameter", "optimizer_state"))
        return {
            "mesh": str(mesh), "layout": str(rules), "partitioning": kind, "devices": mesh.size,
            "arguments": arguments, "results": results, "values": values,
            "parameter_bytes_per_device": parameter_bytes,
        }


def _table(rows: list[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _shape(s) -> str:
    return "x".join(map(str, s)) or "scalar"


def render_text(report: dict) -> str:
    out = [
        f"mesh: {report['mesh'] or '(none)'}   layout: {report['layout'] or '(replicated)'}   "
        f"partitioning: {report['partitioning']}   devices: {report['devices']}",
        "",
        "arguments and results:",
    ]
    rows = [("name", "role", "dims", "dtype", "global", "per device", "bytes/device")]
    for a in report["arguments"] + report["results"]:
        rows.append((a["name"], a["role"], ",".join(a["dims"]), a["dtype"], _shape(a["shape"]), _shape(a["local_shape"]), a["bytes_per_device"]))
    out.append(_table(rows))
    out += ["", "values:"]
    rows = [("op", "dims", "dtype", "global", "per device", "location")]
    for v in report["values"]:
        rows.append((v["op"], ",".join(v["dims"]), v["dtype"], _shape(v["shape"]), _shape(v["local_shape"]), v["location"]))
    out.append(_table(rows))
    out += ["", f"parameters per device: {report['parameter_bytes_per_device']} bytes"]
    return "\n".join(out)
