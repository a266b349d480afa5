"""`mtfc inspect`: what a module holds and what it will cost, per device.

The report (a dict; the CLI's ``--json`` prints it as is) is printed as
text by sections (`SECTIONS`, a list of named `Section`s): `render_summary`
the one-screen default (`mtfc.tools.summary`), `render_text` every table
(``--all``), `render_sections` the ones named (``--section NAME``); every
table fits `WIDTH` columns (`_table` cuts the widest columns in the middle).
`mtfc.tools.pictures` draws one tensor's layout (``--show``) and
`mtfc.tools.html_report` the HTML page (``--html``).  The report has:

* the mesh, layout rules and partitioning;
* every argument and result (name, role, dims, dtype, global and per-device
  shape, bytes per device, ``axes``: the mesh axes splitting each dim) and
  every value in @main's body (op, dims, dtype, global and per-device shape,
  bytes per device, location, ``axes`` -- None when its per-device shape
  matches no layout of its dims);
* ``collectives``: every collective of the per-device program -- read from
  the StableHLO of an ``explicit`` or ``shardy`` module, or from the HLO XLA
  compiled a ``gspmd`` module into -- with its mesh axes, group size n,
  per-device bytes S and NCCL-tests bus bytes, and the totals per step
  (`mtfc.passes.comm_analysis`); a collective inside a loop body is listed
  once, with ``trips`` (how often it runs per step), shown as
  ``in loop (×N)``, and counted N times in the totals; each with a
  ``reason`` in words (`mtfc.tools.causes.attach_reasons`);
* ``memory``: per-device bytes of parameters, optimizer state and inputs, and
  the peak of live activations with the largest values live there
  (`mtfc.passes.memory_analysis`), the live bytes at each op (``timeline``),
  plus XLA's buffer sizes when the module was compiled;
* ``processes`` (with ``processes=N``): for N processes holding the mesh
  process-major, which collectives cross process boundaries and the bytes
  that cross, per collective, per mesh axes and per step
  (`mtfc.passes.process_analysis`); None without it;
* ``comparison`` (with ``compare=True``): the same global program through
  each partitioner -- mtfc explicit, shardy (when available), XLA GSPMD --
  one row each with count and bus bytes per kind (`mtfc.tools.compare`);
* ``layout_search`` (only for a module compiled with ``--layout auto``): the
  recorded choice, ``mtfc.layout_search`` (docs/IR.md): rules, param_rules,
  predicted_s, compute_s, comm_s, peak_bytes, network, searched, method.
"""

from __future__ import annotations

import math

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import tensor_layout
from mtfc.passes import comm_analysis, memory_analysis, process_analysis

SCHEMA_VERSION = 5  # 4: collectives carry "trips"; memory.peak_at carries "loop_body_bytes"
# 5 (keys added, none removed): arguments/results/values carry "axes"; collectives ops carry "reason";
#   memory carries "timeline"


def _dim_sizes(module: ir.Module) -> dict[str, int]:
    """dim name -> global size, for names that have one size in the global
    program (a sliced dim keeps its name with a new size: ambiguous, left out)."""
    sizes: dict[str, set[int]] = {}

    def add(dims, shape):
        for d, s in zip(dims, shape):
            sizes.setdefault(d, set()).add(int(s))

    for sig in mir.arguments(module) + mir.results(module):
        add(sig.dims, sig.shape)
    program = mir.reference_module(module) if mir.partitioning(module) in mir.PER_DEVICE else module
    for op in mir.body_ops(mir.entry_function(program)):
        dims = mir.op_result_dims(op)
        if dims is None:
            continue
        for d, r in zip(dims, op.results):
            if comm_analysis.is_ranked(r.type):
                add(d, ir.RankedTensorType(r.type).shape)
    return {d: next(iter(s)) for d, s in sizes.items() if len(s) == 1}


def inspect_module(module: ir.Module, *, xla: bool = True, compare: bool = False, backend: str = "cpu",
                   source: str | None = None, processes: int | None = None, predict: bool = False) -> dict:
    """The inspection report of `module` (see the module docstring).

    `xla`: compile a ``gspmd`` module to read XLA's collectives and memory;
    `compare`: also run the global program through every partitioner;
    `predict`: also predict the explicit partitioner's collectives from the
    global program (`layout_cost`) beside the measured ones (key
    ``"prediction"``, present only then);
    `processes`: also place the mesh on that many processes and say which
    collectives cross them -- an error (naming ``--processes``) below 1, when
    it does not divide the mesh, for an unpartitioned module, or for a
    ``gspmd`` module with ``xla=False`` (its collectives are XLA's).
    A module that breaks the IR contract is an error (`verify_module`),
    prefixed with `source`, the module's file, when given."""
    from mtfc.passes.verify_names import verify_module

    verify_module(module, source=source)
    with module.context:
        layouts = mir.module_layouts(module)
        mesh, rules = layouts.mesh, layouts.activations
        kind = mir.partitioning(module)
        per_device_program = kind in mir.PER_DEVICE
        if processes is not None:
            process_analysis.check_process_count(mesh, processes, kind, what="--processes")
            if kind == "gspmd" and not xla:
                raise MtfcError(f"--processes {processes}: a gspmd module's collectives are the ones XLA compiles; "
                                "drop --no-xla")
        entry = mir.entry_function(module)
        ftype = ir.FunctionType(ir.TypeAttr(entry.attributes["function_type"]).value)
        global_sizes = _dim_sizes(module) if per_device_program else {}

        def layout_local(dims, shape, what, cls="activation"):
            return list(layouts.of_value(dims, shape, cls=cls, what=what).local_sizes)

        def global_of(dims, local_shape, what):
            """Global shape of a per-device value: each dim's size in the global
            program when the name has one, else the local size times its axes."""
            out = []
            try:
                factors = tensor_layout(dims, [0] * len(dims), rules, mesh, what=what).axes
            except MtfcError:
                factors = [()] * len(dims)
            for d, s, axes in zip(dims, local_shape, factors):
                out.append(global_sizes.get(d, s * math.prod(mesh.axis_size(a) for a in axes)))
            return out

        def value_axes(dims, global_shape, local, cls):
            """The mesh axes splitting each dim of a value (None: its shapes match no layout)."""
            try:
                rule = layouts.of_value(dims, global_shape, cls=cls).axes
            except Exception:
                return None
            out = []
            for g, s, axes in zip(global_shape, local, rule):
                if g == s:
                    out.append([])
                elif g == s * math.prod(mesh.axis_size(a) for a in axes):
                    out.append(list(axes))
                else:
                    return None
            return out

        def describe(sig, program_type):
            if per_device_program:
                shape = list(ir.RankedTensorType(program_type).shape)
            else:
                shape = list(layouts.of_signature(sig).local_sizes)
            return {
                "name": sig.name, "role": sig.role, "dims": sig.dims, "dtype": sig.dtype,
                "shape": list(sig.shape), "local_shape": shape,
                "bytes_per_device": math.prod(shape) * comm_analysis.element_bytes(str(ir.RankedTensorType(program_type).element_type)),
                "axes": [list(a) for a in layouts.of_signature(sig).axes],
            }

        arguments = [describe(s, t) for s, t in zip(mir.arguments(module), ftype.inputs)]
        results = [describe(s, t) for s, t in zip(mir.results(module), ftype.results)]
        values = []
        for op in mir.body_ops(entry):
            dims = mir.op_result_dims(op)
            if dims is None:
                continue
            for d, r in zip(dims, op.results):
                t = ir.RankedTensorType(r.type)
                shape = tuple(t.shape)
                if per_device_program:
                    local, global_shape = list(shape), global_of(d, shape, mir.describe_op(op))
                else:
                    local, global_shape = layout_local(d, shape, mir.describe_op(op), mir.op_class(op)), list(shape)
                values.append({
                    "op": op.name, "location": mir.location_text(op.location), "dims": d,
                    "dtype": mir.dtype_name(t.element_type), "shape": global_shape, "local_shape": local,
                    "bytes_per_device": math.prod(local) * comm_analysis.element_bytes(str(t.element_type)),
                    "axes": value_axes(d, global_shape, local, mir.op_class(op)),
                })

        # ------------------------------------------------------ collectives
        xla_memory = None
        if per_device_program:
            found = comm_analysis.module_collectives(module)
            collectives = {"partitioner": "mtfc explicit" if kind == "explicit" else kind,
                           "source": "StableHLO", "error": None}
        elif kind == "gspmd" and xla:
            from mtfc.tools.compare import xla_compile

            try:
                compiled = xla_compile(module, backend=backend)
            except MtfcError as e:
                found, error = [], str(e)
            else:
                found, error = comm_analysis.hlo_collectives(compiled.hlo_text, mesh), None
                xla_memory = compiled.memory
            collectives = {"partitioner": "XLA GSPMD", "source": "optimized HLO", "error": error}
        else:
            found = []
            collectives = {"partitioner": None, "source": None,
                           "error": None if kind == "none" else "not compiled (--no-xla)"}
        collectives["ops"] = [c.as_dict() for c in found]
        if found:
            from mtfc.tools.causes import attach_reasons

            attach_reasons(module, collectives["ops"])
        collectives.update(comm_analysis.summarize(found))
        placed = None
        if processes is not None:
            placed = process_analysis.process_report(found, mesh, processes, kind, what="--processes")
            placed["error"] = collectives["error"]

        # ----------------------------------------------------------- memory
        def role_bytes(*roles):
            return sum(a["bytes_per_device"] for a in arguments if a["role"] in roles)

        live = memory_analysis.liveness(module)
        memory = {
            "parameter_bytes": role_bytes("parameter"),
            "optimizer_state_bytes": role_bytes("optimizer_state"),
            "input_bytes": role_bytes("input"),
            "output_bytes": sum(r["bytes_per_device"] for r in results),
            "peak_activation_bytes": live.peak_bytes,
            "peak_at": {"index": live.peak_index, "op": live.peak_op, "location": live.peak_location,
                        "loop_body_bytes": live.peak_loop_bytes},
            "largest_live": [v.as_dict() for v in live.live_at_peak],
            "xla": xla_memory,
        }
        curve = memory_analysis.timeline(module)
        memory["timeline"] = {"ops": curve.ops, "locations": curve.locations, "bytes": curve.bytes}

        report = {
            "schema": SCHEMA_VERSION,
            "mesh": str(mesh), "layout": str(rules), "partitioning": kind, "devices": mesh.size,
            "arguments": arguments, "results": results, "values": values,
            "parameter_bytes_per_device": role_bytes("parameter", "optimizer_state"),
            "collectives": collectives,
            "processes": placed,
            "memory": memory,
            "comparison": None,
        }
    from mtfc.layout.command import recorded_choice

    with module.context:
        choice = recorded_choice(module)
    if choice is not None:  # present only for a module compiled with --layout auto
        report["layout_search"] = choice
    if compare:
        from mtfc.tools.compare import compare_partitioners

        report["comparison"] = compare_partitioners(module, backend=backend)
    if predict:
        from mtfc.tools.compare import prediction_rows

        report["prediction"] = prediction_rows(module)
    return report


# ----------------------------------------------------------------- text


WIDTH = 100  # a terminal: every table line fits


def middle(text, width: int) -> str:
    """`text` cut to `width` characters in the middle (``block0/fe…(model.py:70:1)``)."""
    text = str(text)
    if len(text) <= width:
        return text
    if width < 4:
        return text[:width]
    head = (width - 1) // 2
    return text[:head] + "…" + text[len(text) - (width - 1 - head):]


def _table(rows: list[tuple], right: set[int] = frozenset(), width: int = WIDTH) -> str:
    """Rows as aligned columns (the first row the header), at most `width`
    characters a line: the widest left-aligned columns are cut in the middle
    (`middle`) until the table fits."""
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    floor = 10
    while sum(widths) + 2 * (len(widths) - 1) > width:
        shrinkable = [i for i in range(len(widths)) if i not in right and widths[i] > floor]
        if not shrinkable:
            break
        i = max(shrinkable, key=lambda k: widths[k])
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        others = sorted((widths[k] for k in shrinkable if k != i), reverse=True)
        target = max(widths[i] - excess, others[0] if others else floor, floor)
        widths[i] = target if target < widths[i] else widths[i] - 1

    def cell(i, c, w):
        c = middle(c, w)
        return c.rjust(w) if i in right else c.ljust(w)

    lines = ["  ".join(cell(i, c, w) for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _operand(shape: str) -> str:
    """``f32[256], f32[256], f32[]`` -> ``2×f32[256], f32[]`` (a fused collective's operands)."""
    parts = [p.strip() for p in shape.split(", ")] if shape else []
    out: list[list] = []
    for p in parts:
        if out and out[-1][0] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return ", ".join(p if n == 1 else f"{n}×{p}" for p, n in out)


def _shape(s) -> str:
    return "x".join(map(str, s)) or "scalar"


def human_bytes(n) -> str:
    """``393216`` -> ``384.0 KiB``."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" and n.is_integer() else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _axes(op: dict) -> str:
    if op["axes"] is None:
        return f"part of {'+'.join(op['spans'])}" if op.get("spans") else "?"
    return "+".join(op["axes"]) or "(none)"


def _runs(op: dict) -> str:
    """``once`` or ``in loop (×3)``: how often a collective runs per step."""
    trips = op.get("trips", 1)
    return "once" if trips == 1 else f"in loop (×{trips})"


def _num(x) -> str:
    return f"{x:,}" if isinstance(x, int) else f"{x:,.1f}"


def _collectives_text(report: dict) -> list[str]:
    c = report["collectives"]
    if c["partitioner"] is None:
        return ["collectives: none (an unpartitioned module)" if report["partitioning"] == "none"
                else f"collectives: {c['error']}"]
    head = f"collectives ({c['partitioner']}, read from {c['source']}; bytes per device, bus bytes by NCCL-tests):"
    out = [head]
    if c.get("error"):
        return out + [f"  error: {c['error']}"]
    if not c["ops"]:
        return out + ["  none"]
    rows = [("#", "kind", "axes", "n", "operand", "S bytes", "bus bytes", "runs", "location")]
    for i, op in enumerate(c["ops"]):
        rows.append((i, op["kind"], _axes(op), op["n"], _operand(op["shape"]), _num(op["bytes"]),
                     _num(op["bus_bytes"]), _runs(op), op["location"]))
    out.append(_table(rows, right={0, 3, 5, 6}))
    out += ["", "collective totals per step (a collective in a loop counted once per trip):"]
    rows = [("kind", "count", "S bytes", "bus bytes", "bus")]
    for kind, t in list(c["by_kind"].items()) + [("total", c["total"])]:
        rows.append((_purpose(kind, report["partitioning"]), t["count"], _num(t["bytes"]), _num(t["bus_bytes"]),
                     human_bytes(t["bus_bytes"])))
    out.append(_table(rows, right={1, 2, 3, 4}))
    return out


# What a kind of collective does in mtfc's own per-device program: there a
# collective_permute only ever exchanges halos and windows (shifts,
# convolutions, pooling, slices/pads along split dims) and an all_to_all only
# moves a mesh axis between two dims (a layout change: MoE's dispatch and
# combine, reshapes).
_EXPLICIT_PURPOSE = {"collective_permute": "halo exchange", "all_to_all": "axis move"}


def _purpose(kind: str, partitioning: str) -> str:
    purpose = _EXPLICIT_PURPOSE.get(kind) if partitioning == "explicit" else None
    return f"{kind} ({purpose})" if purpose else kind


def crossing_line(placed: dict) -> str:
    """``crosses processes: X of Y collectives, B bytes per step (P per device)``."""
    t = placed["total"]
    line = (f"crosses processes: {t['crossing']} of {t['count']} collectives, {_num(t['bytes_total'])} bytes per step "
            f"({human_bytes(t['bytes_total'])}; {_num(t['bytes_per_device'])} bytes per device)")
    return line + (f", {t['unknown']} unknown (groups not read)" if t["unknown"] else "")


def _processes_text(report: dict) -> list[str]:
    p = report["processes"]
    k = p["devices_per_process"]
    devices = f"mesh devices {k}p..{k}p+{k - 1}" if k > 1 else "mesh device p"
    out = [f"across {p['num_processes']} process(es) of {k} device(s) (process-major: process p holds {devices}):"]
    if p.get("error"):
        return out + [f"  error: {p['error']}"]
    rows = [("mesh axis", "size", "processes", "placement")]
    for a in p["axes"]:
        rows.append((a["axis"], a["size"], a["processes"], a["placement"]))
    out.append(_table(rows, right={1, 2}))
    ops = report["collectives"]["ops"]
    crossing = [(i, op, x) for i, (op, x) in enumerate(zip(ops, p["ops"])) if x["crosses"] is not False]
    if crossing:
        out += ["", "collectives that cross (bytes sent to other processes per execution: the busiest device, "
                "all devices):"]
        rows = [("#", "kind", "axes", "n", "processes", "per device", "all devices", "runs", "location")]
        for i, op, x in crossing:
            if x["crosses"] is None:
                rows.append((i, op["kind"], _axes(op), op["n"], "?", "?", "?", _runs(op), op["location"]))
            else:
                rows.append((i, op["kind"], _axes(op), op["n"], x["processes"], _num(x["bytes_per_device"]),
                             _num(x["bytes_total"]), _runs(op), op["location"]))
        out.append(_table(rows, right={0, 3, 4, 5, 6}))
    if p["by_axes"]:
        out += ["", "per mesh axes:"]
        rows = [("axes", "count", "crossing", "per device", "all devices")]
        for axes, t in p["by_axes"].items():
            rows.append((axes, t["count"], t["crossing"], _num(t["bytes_per_device"]), _num(t["bytes_total"])))
        out.append(_table(rows, right={1, 2, 3, 4}))
    return out + ["", crossing_line(p)]


def _memory_text(report: dict) -> list[str]:
    m = report["memory"]
    out = ["memory per device:"]
    rows = [("", "bytes", "")]
    for label, key in (("parameters", "parameter_bytes"), ("optimizer state", "optimizer_state_bytes"),
                       ("inputs", "input_bytes"), ("outputs", "output_bytes"),
                       ("peak live activations", "peak_activation_bytes")):
        rows.append((label, _num(m[key]), human_bytes(m[key])))
    if m.get("xla"):
        for label, key in (("XLA arguments", "argument_bytes"), ("XLA outputs", "output_bytes"),
                           ("XLA temporaries", "temp_bytes")):
            if key in m["xla"]:
                rows.append((label, _num(m["xla"][key]), human_bytes(m["xla"][key])))
    out.append(_table(rows, right={1, 2}))
    at = m["peak_at"]
    if at["index"] >= 0:
        out += ["", f"largest values live at the peak (op #{at['index']} {at['op']} at {at['location']}):"]
        if at.get("loop_body_bytes"):
            out.append(f"  (the peak is inside the loop: {human_bytes(at['loop_body_bytes'])} of it are the body's "
                       "temporaries, not listed)")
        rows = [("op", "dims", "dtype", "per device", "bytes", "live", "location")]
        for v in m["largest_live"]:
            rows.append((v["op"], ",".join(v["dims"]), v["dtype"], _shape(v["local_shape"]), human_bytes(v["bytes"]),
                         f"{v['defined_at']}-{v['last_use']}", v["location"]))
        out.append(_table(rows, right={4}))
    return out


def _comparison_text(report: dict) -> list[str]:
    return _side_by_side(report["comparison"], "partitioners side by side (the same global program, mesh and layout; "
                         "count and bus bytes per device per step):")


def _prediction_text(report: dict) -> list[str]:
    rows = report["prediction"]
    out = _side_by_side(rows, "predicted from the global program (layout-cost: the explicit partitioner before "
                        "fuse-collectives) beside the measured explicit program, count and bus bytes per device per step:")
    if not rows[0].get("error"):
        out += ["", "predicted collectives, and why:"]
        out += [f"  {c['kind']} over {'+'.join(c['axes'])} ({c['bytes']} B): {c['reason']} at {c['location']}"
                + ("" if c.get("trips", 1) == 1 else f", {_runs(c)}")
                for c in rows[0]["collectives"]] or ["  (none)"]
    return out


def _side_by_side(rows_in: list[dict], title: str) -> list[str]:
    kinds = [k for k in comm_analysis.KINDS if any(k in (r.get("by_kind") or {}) for r in rows_in)]
    out = [title]
    header = ["partitioner", "read from"]
    for k in kinds:
        header += [k, "bus bytes"]
    header += ["total", "bus bytes"]
    rows = [tuple(header)]
    errors = []
    for r in rows_in:
        if r.get("error"):
            rows.append(tuple([r["partitioner"], r["source"]] + ["-"] * (2 * len(kinds) + 2)))
            errors.append(f"  {r['partitioner']}: {r['error']}")
            continue
        cells = [r["partitioner"], r["source"]]
        for k in kinds:
            t = r["by_kind"].get(k)
            cells += [t["count"], _num(t["bus_bytes"])] if t else [0, "0"]
        cells += [r["total"]["count"], _num(r["total"]["bus_bytes"])]
        rows.append(tuple(cells))
    out.append(_table(rows, right=set(range(2, len(header)))))
    return out + errors


def _overview_text(report: dict) -> list[str]:
    parts = [f"mesh: {report['mesh'] or '(none)'}", f"layout: {report['layout'] or '(replicated)'}",
             f"partitioning: {report['partitioning']}", f"devices: {report['devices']}"]
    lines = [parts[0]]
    for p in parts[1:]:  # one line when it fits, else as many as it takes
        if len(lines[-1]) + 3 + len(p) <= WIDTH:
            lines[-1] += "   " + p
        else:
            lines.append(p)
    return lines


def _layout_search_text(report: dict) -> list[str]:
    from mtfc.layout.command import choice_lines

    return choice_lines(report["layout_search"])


def _arguments_text(report: dict) -> list[str]:
    rows = [("name", "role", "dims", "dtype", "global", "per device", "bytes/device")]
    for a in report["arguments"] + report["results"]:
        rows.append((a["name"], a["role"], ",".join(a["dims"]), a["dtype"], _shape(a["shape"]), _shape(a["local_shape"]),
                     human_bytes(a["bytes_per_device"])))
    return ["arguments and results:", _table(rows, right={6})]


def _values_text(report: dict) -> list[str]:
    rows = [("op", "dims", "dtype", "global", "per device", "bytes/device", "location")]
    for v in report["values"]:
        rows.append((v["op"], ",".join(v["dims"]), v["dtype"], _shape(v["shape"]), _shape(v["local_shape"]),
                     human_bytes(v["bytes_per_device"]), v["location"]))
    return ["values:", _table(rows, right={5})]


def _parameters_text(report: dict) -> list[str]:
    n = report["parameter_bytes_per_device"]
    return [f"parameters per device: {n} bytes ({human_bytes(n)})"]


class Section:
    """One named part of the text report: `full(report)` its complete text
    (``--all``, ``--section NAME``), `summary(report)` its lines in the
    default one-screen summary (None: not in the summary), `present(report)`
    whether the report has it at all (a section of an option not given is
    absent; asking for it names the option)."""

    def __init__(self, name, full, summary=None, present=None, needs=None):
        self.name, self.full, self.summary = name, full, summary
        self.present = present or (lambda report: True)
        self.needs = needs


def _summary(name):
    def lines(report):
        from mtfc.tools import summary

        return getattr(summary, name)(report)
    return lines


# The text report, in order.  A new section (the layout search's recorded
# choice, say) is one more entry here.
SECTIONS: list[Section] = [
    Section("overview", _overview_text, _summary("overview")),
    # the choice `mtfc compile --layout auto` recorded (report key "layout_search", set by the layout
    # search's code in inspect_module; `mtfc.layout.command` is imported only when the report has it)
    Section("layout-search", _layout_search_text, _layout_search_text,
            present=lambda r: r.get("layout_search") is not None, needs="a module compiled with --layout auto"),
    Section("arguments", _arguments_text),
    Section("values", _values_text),
    Section("collectives", _collectives_text, _summary("communication")),
    Section("processes", _processes_text, lambda r: _processes_text(r) if r["processes"].get("error")
            else _processes_text(r)[:1] + [crossing_line(r["processes"])],
            present=lambda r: r.get("processes") is not None, needs="--processes N"),
    Section("memory", _memory_text, _summary("memory")),
    Section("comparison", _comparison_text, _comparison_text,
            present=lambda r: r.get("comparison") is not None, needs="--compare"),
    Section("prediction", _prediction_text, _prediction_text,
            present=lambda r: r.get("prediction") is not None, needs="--predict"),
    Section("pipeline", _summary("pipeline"), _summary("pipeline"), present=lambda r: bool(r.get("pipeline"))),
    Section("parameters", _parameters_text),
]


def section_names() -> list[str]:
    return [s.name for s in SECTIONS]


def _join(blocks: list[list[str]]) -> str:
    out: list[str] = []
    for b in blocks:
        if b:
            out += ([""] if out else []) + b
    return "\n".join(out)


def render_text(report: dict) -> str:
    """The full report: every present section's tables (``--all``)."""
    return _join([s.full(report) for s in SECTIONS if s.present(report)])


def render_summary(report: dict) -> str:
    """The default: one screen (what communicates and why, memory, and the
    sections of the options given)."""
    return _join([s.summary(report) for s in SECTIONS if s.summary is not None and s.present(report)])


def render_sections(report: dict, names: list[str]) -> str:
    """The named sections in full, in the order asked; an unknown name, or a
    section whose option was not given, is a one-line `MtfcError`."""
    by_name = {s.name: s for s in SECTIONS}
    blocks = []
    for name in names:
        s = by_name.get(name)
        if s is None:
            raise MtfcError(f"--section {name!r}: unknown section (choose from {', '.join(by_name)})")
        if not s.present(report):
            why = (f"add {s.needs}" if s.needs.startswith("--") else f"only {s.needs} has it") if s.needs \
                else "this module has none"
            raise MtfcError(f"--section {name!r}: not in this report ({why})")
        blocks.append(s.full(report))
    return _join(blocks)
