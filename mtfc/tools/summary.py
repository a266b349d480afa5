"""The default `mtfc inspect` text: a summary that fits one screen.

Three parts, each a section's ``summary`` in `mtfc.tools.report.SECTIONS`:

* `overview`: the mesh, layout and partitioning, how many tensors of each
  role, and the largest per-device arguments and results with their layouts;
* `communication`: the step's collectives grouped by cause
  (`mtfc.tools.causes.group_causes`), in words, each group's share of the
  step's communication time at the stated bandwidth, at most `MAX_CAUSES`
  lines of groups (the rest summed in one line);
* `pipeline`: each pipeline's schedule and bubble, wrapped;
* `memory`: per-device bytes of parameters, optimizer state, inputs and
  outputs, the peak of live activations and what is live there.

Every line fits `report.WIDTH` columns; sizes are in B/KiB/MiB/GiB.
"""

from __future__ import annotations

import re
import textwrap

from mtfc.tools import causes as causes_mod
from mtfc.tools import report as rep

MAX_CAUSES = 10
LARGEST = 5


def _scope(location: str) -> str:
    from mtfc.tools.pictures import _scope as scope

    return scope(location)


_GLUE = "\x00"


def wrap(text: str, width: int = rep.WIDTH, indent: str = "  ") -> list[str]:
    """`text` wrapped to `width` columns, never between a number and its unit
    (``736.9 KiB``, ``50 us``); continuation lines indented by `indent`."""
    glued = re.sub(r"(\d) (B|KiB|MiB|GiB|us|ms|s|GB/s)\b", lambda m: m.group(1) + _GLUE + m.group(2), text)
    return [line.replace(_GLUE, " ") for line in
            textwrap.wrap(glued, width, subsequent_indent=indent, break_on_hyphens=False)]


def _h(n) -> str:
    return rep.human_bytes(n)


def _seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def overview(report: dict) -> list[str]:
    out = rep._overview_text(report)
    roles: dict[str, int] = {}
    for a in report["arguments"]:
        roles[a["role"]] = roles.get(a["role"], 0) + 1
    words = ", ".join(f"{role.replace('_', ' ')} {n}" for role, n in roles.items())
    out.append(f"arguments: {words or 'none'}; results {len(report['results'])}; "
               f"values in @main {len(report['values'])}")
    named = {}
    for a in report["arguments"] + report["results"]:  # a train step's new state repeats its argument's name
        named.setdefault(a["name"], a)
    tensors = sorted(named.values(), key=lambda a: -a["bytes_per_device"])[:LARGEST]
    if tensors:
        rows = [("largest per device", "dims", "global", "per device", "bytes", "layout")]
        for a in tensors:
            rows.append((a["name"], ",".join(a["dims"]), rep._shape(a["shape"]), rep._shape(a["local_shape"]),
                         _h(a["bytes_per_device"]), _split(a)))
        out.append(rep._table(rows, right={4}))
    return out


def _split(a: dict) -> str:
    """``d_model:rows+cols`` (the split dims), ``replicated``, or ``?`` (no layout matches)."""
    if a.get("axes") is None:
        return "?"
    return ",".join(f"{d}:{'+'.join(x)}" for d, x in zip(a["dims"], a["axes"]) if x) or "replicated"


def communication(report: dict) -> list[str]:
    c = report["collectives"]
    if c["partitioner"] is None or c.get("error"):
        return rep._collectives_text(report)[:2]
    ops = c["ops"]
    if not ops:
        return [f"communication: none ({c['partitioner']}, read from {c['source']})"]
    bw = causes_mod.default_bandwidth()
    groups = causes_mod.group_causes(ops, bw)
    total_s = sum(g.seconds for g in groups) or 1.0
    total = c["total"]
    out = wrap(f"communication per step, per device ({c['partitioner']}, read from {c['source']}): "
                        f"{total['count']} collective run{'s' if total['count'] != 1 else ''}, {_h(total['bus_bytes'])} bus bytes, {_seconds(total_s)} "
                        f"at {bw}")
    kinds = ", ".join(f"{rep._purpose(k, report['partitioning'])} {t['count']} ({_h(t['bus_bytes'])})"
                      for k, t in sorted(c["by_kind"].items(), key=lambda kv: -kv[1]["bus_bytes"]))
    out += wrap(f"by kind: {kinds}")
    out.append(f"{'share':>5}  {'time':>8}  {'bus bytes':>9}  what communicates, and why")
    shown = groups if len(groups) <= MAX_CAUSES + 1 else groups[:MAX_CAUSES]
    for g in shown:
        head = f"{100 * g.seconds / total_s:>4.0f}%  {_seconds(g.seconds):>8}  {_h(g.bus_bytes):>9}  "
        words = wrap(g.words(), rep.WIDTH - len(head), indent="")
        out.append(head + words[0])
        out += [" " * len(head) + w for w in words[1:]]
    rest = groups[len(shown):]
    if rest:
        s = sum(g.seconds for g in rest)
        out.append(f"{100 * s / total_s:>4.0f}%  {_seconds(s):>8}  {_h(sum(g.bus_bytes for g in rest)):>9}  "
                   f"{len(rest)} more causes ({sum(g.count for g in rest)} collectives): "
                   "--section collectives")
    return out


def memory(report: dict) -> list[str]:
    m = report["memory"]
    out = wrap(f"memory per device: parameters {_h(m['parameter_bytes'])}, optimizer state "
               f"{_h(m['optimizer_state_bytes'])}, inputs {_h(m['input_bytes'])}, outputs {_h(m['output_bytes'])}")
    at = m["peak_at"]
    if at["index"] >= 0:
        line = (f"peak live activations {_h(m['peak_activation_bytes'])} at op #{at['index']} {at['op']} "
                f"({at['location']})")
        if at.get("loop_body_bytes"):
            line += f", {_h(at['loop_body_bytes'])} of it the loop body's temporaries"
        out += wrap(line)
        live = [f"{rep.middle(_scope(v['location']), 40)} {','.join(v['dims']) or 'scalar'} {_h(v['bytes'])}"
                for v in m["largest_live"][:3]]
        if live:
            out += wrap("largest live there: " + "; ".join(live))
    else:
        out.append(f"peak live activations {_h(m['peak_activation_bytes'])}")
    if m.get("xla"):
        parts = [f"{label} {_h(m['xla'][key])}" for label, key in
                 (("arguments", "argument_bytes"), ("outputs", "output_bytes"), ("temporaries", "temp_bytes"))
                 if key in m["xla"]]
        out.append("XLA's buffers per device: " + ", ".join(parts))
    return out


def pipeline(report: dict) -> list[str]:
    from mtfc.passes import pipeline_analysis

    lines = pipeline_analysis.render_text(report.get("pipeline") or [])[1:]  # its first line is a blank
    out: list[str] = []
    for line in lines:
        out += wrap(line, indent="    ") if line.strip() else [line]
    return out
