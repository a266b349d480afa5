"""`mtfc inspect MODULE --html FILE`: the inspect report as one self-contained
HTML page (inline CSS, JS and SVG; it loads nothing from the network).

The page has, in order (each a ``<section>`` with an ``id``):

* ``summary``: the text summary (`mtfc.tools.report.render_summary`);
* ``layouts``: every argument and result, then the largest values of @main
  (`mtfc.tools.pictures.largest_values`), each drawn over the mesh as a grid
  of its devices (``table.mesh``, one ``td.device`` per device, the mesh's
  first axis down): each cell names the device and the block it holds -- a
  slice ``dim[start:stop]`` per dim -- and devices holding the same block
  (replicas) share a colour and a letter;
* ``collectives``: every collective in program order with its kind, axes,
  group size, bytes per device, bus bytes, runs per step, location and reason;
* ``memory``: the per-device live bytes at each op of @main
  (`mtfc.passes.memory_analysis.timeline`) as an SVG area chart
  (``svg#memory-timeline``) with the peak marked; hovering shows the op.
"""

from __future__ import annotations

import html
import json

from mtfc.files.atomic import write_text_atomic
from mtfc.mesh import Mesh
from mtfc.tools import pictures
from mtfc.tools.report import human_bytes, render_summary

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
pre{background:#fff;border:1px solid #ddd;padding:.8em;overflow-x:auto;font-size:12px}
.cards{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 10px;max-width:100%}
.card h3{font-size:13px;margin:0 0 4px 0;font-family:monospace;word-break:break-all}
.meta{font-size:11px;color:#555;margin-bottom:6px}
table.mesh{border-collapse:collapse;font-family:monospace;font-size:11px}
table.mesh th{font-weight:normal;color:#666;padding:2px 6px}
td.device{border:1px solid #888;padding:4px 6px;vertical-align:top;white-space:nowrap}
td.device .dev{color:#333;font-weight:bold}
table.list{border-collapse:collapse;font-size:12px;background:#fff}
table.list th,table.list td{border:1px solid #ddd;padding:2px 6px;text-align:left}
table.list td.num{text-align:right;font-family:monospace}
#memory-tip{font-family:monospace;font-size:12px;min-height:1.4em;color:#333}
"""

_JS = """
(function () {
  var data = JSON.parse(document.getElementById('timeline-data').textContent);
  var svg = document.getElementById('memory-timeline');
  var tip = document.getElementById('memory-tip');
  if (!svg || !tip || !data.bytes.length) { return; }
  var x0 = data.x0, w = data.w;
  svg.addEventListener('mousemove', function (ev) {
    var box = svg.getBoundingClientRect();
    var x = (ev.clientX - box.left) * (data.width / box.width);
    var i = Math.round((x - x0) / w * Math.max(data.bytes.length - 1, 1));
    if (i < 0 || i >= data.bytes.length) { return; }
    tip.textContent = 'op #' + i + ' ' + data.ops[i] + ' at ' + data.locations[i] + ': ' + data.human[i] + ' live';
  });
})();
document.body.setAttribute('data-ready', '1');
"""


def _e(x) -> str:
    return html.escape(str(x))


def _colour(k: int, n: int) -> str:
    hue = (k * 360 / max(n, 1) + 200) % 360 if n <= 12 else (k * 137.5) % 360
    return f"hsl({hue:.0f},65%,85%)"


def _grid(entry: dict, mesh: Mesh) -> str:
    """One tensor's card: its name, shapes and layout, and the mesh grid."""
    head = (f'<div class="card" data-tensor="{_e(entry["name"])}"><h3>{_e(entry["name"])}</h3>'
            f'<div class="meta">{_e(entry["kind"])} &middot; dims {_e(",".join(entry["dims"]) or "(none)")} &middot; '
            f'{_e(entry["dtype"])} &middot; global {_e(pictures._shape(entry["shape"]))} &middot; per device '
            f'{_e(pictures._shape(entry["local_shape"]))} ({_e(human_bytes(entry["bytes_per_device"]))})<br>'
            f'{_e(pictures.layout_words(entry))}</div>')
    if entry.get("axes") is None:
        return head + '<div class="meta">no layout matches its per-device shape: not drawn</div></div>'
    labels, numbers = pictures.block_labels(entry, mesh)
    rows, cols = pictures.grid_shape(mesh)
    names = mesh.names
    n_blocks = len(set(numbers))
    out = [head, '<table class="mesh">']
    if len(names) > 1:
        across = "x".join(names[1:])
        out.append("<tr><th></th>" + "".join(
            f"<th>{_e(across)} {_e(','.join(str(mesh.coords(c)[a]) for a in names[1:]))}</th>" for c in range(cols))
            + "</tr>")
    for r in range(rows):
        out.append("<tr>" + (f"<th>{_e(names[0])} {r}</th>" if len(names) > 1 else ""))
        for c in range(cols):
            d = r * cols + c
            k = numbers[d]
            out.append(f'<td class="device" data-device="{d}" data-block="{k}" style="background:{_colour(k, n_blocks)}">'
                       f'<span class="dev">dev {d} &middot; {pictures._letter(k)}</span><br>'
                       + "<br>".join(_e(x) for x in labels[d]) + "</td>")
        out.append("</tr>")
    out.append("</table></div>")
    return "".join(out)


def _collectives(report: dict) -> str:
    c = report["collectives"]
    if c["partitioner"] is None:
        return "<p>none (an unpartitioned module)</p>" if report["partitioning"] == "none" else f"<p>{_e(c['error'])}</p>"
    if c.get("error"):
        return f"<p>error: {_e(c['error'])}</p>"
    if not c["ops"]:
        return "<p>none</p>"
    rows = ['<table class="list" id="collectives-table"><tr><th>#</th><th>kind</th><th>axes</th><th>n</th>'
            "<th>operand</th><th>bytes/device</th><th>bus bytes</th><th>runs/step</th><th>location</th>"
            "<th>why</th></tr>"]
    for i, op in enumerate(c["ops"]):
        axes = "+".join(op["axes"]) if op["axes"] is not None else "part of " + "+".join(op.get("spans") or ["?"])
        rows.append(f'<tr class="collective"><td class="num">{i}</td><td>{_e(op["kind"])}</td><td>{_e(axes)}</td>'
                    f'<td class="num">{op["n"]}</td><td>{_e(op["shape"])}</td>'
                    f'<td class="num">{_e(human_bytes(op["bytes"]))}</td>'
                    f'<td class="num">{_e(human_bytes(op["bus_bytes"]))}</td><td class="num">{op.get("trips", 1)}</td>'
                    f'<td>{_e(op["location"])}</td><td>{_e(op.get("reason", ""))}</td></tr>')
    t = c["total"]
    rows.append(f'<tr><td></td><td colspan="5">total per step: {t["count"]} runs</td>'
                f'<td class="num">{_e(human_bytes(t["bus_bytes"]))}</td><td colspan="3"></td></tr></table>')
    return "".join(rows)


def _timeline(report: dict) -> tuple[str, dict]:
    """The SVG area chart of live bytes per op, and the data its script reads."""
    tl = report["memory"].get("timeline") or {"ops": [], "locations": [], "bytes": []}
    ys = tl["bytes"]
    width, height, x0, y0, top = 900, 260, 70, 230, 20
    w, h = width - x0 - 20, y0 - top
    data = {"ops": tl["ops"], "locations": tl["locations"], "bytes": ys, "human": [human_bytes(b) for b in ys],
            "width": width, "x0": x0, "w": w}
    if not ys:
        return "<p>no values in @main</p>", data
    peak = max(ys) or 1
    n = max(len(ys) - 1, 1)

    def px(i):
        return x0 + w * i / n

    def py(b):
        return y0 - h * b / peak

    points = " ".join(f"{px(i):.1f},{py(b):.1f}" for i, b in enumerate(ys))
    area = f"{px(0):.1f},{y0} {points} {px(len(ys) - 1):.1f},{y0}"
    k = max(range(len(ys)), key=lambda i: ys[i])
    ticks = []
    for frac in (0, 0.25, 0.5, 0.75, 1):
        y = py(peak * frac)
        ticks.append(f'<line x1="{x0 - 4}" y1="{y:.1f}" x2="{x0 + w}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                     f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="10">'
                     f'{_e(human_bytes(peak * frac))}</text>')
    for frac in (0, 0.5, 1):
        i = round(n * frac)
        ticks.append(f'<text x="{px(i):.1f}" y="{y0 + 16}" text-anchor="middle" font-size="10">op {i}</text>')
    svg = (f'<svg id="memory-timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 10}" '
           f'viewBox="0 0 {width} {height + 10}" role="img" aria-label="live bytes per device over program order">'
           + "".join(ticks)
           + f'<polygon points="{area}" fill="#9ecae1" stroke="none"/>'
           f'<polyline points="{points}" fill="none" stroke="#3182bd" stroke-width="1.2"/>'
           f'<circle cx="{px(k):.1f}" cy="{py(ys[k]):.1f}" r="4" fill="#de2d26"/>'
           f'<text x="{min(px(k) + 6, x0 + w - 150):.1f}" y="{max(py(ys[k]) + 4, top + 4):.1f}" font-size="11" '
           f'fill="#de2d26">peak {_e(human_bytes(ys[k]))} at op #{k}</text>'
           f'<line x1="{x0}" y1="{y0}" x2="{x0 + w}" y2="{y0}" stroke="#555"/>'
           f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{y0}" stroke="#555"/></svg>')
    return svg, data


def render_html(report: dict, title: str = "mtfc inspect") -> str:
    """The page (module docstring)."""
    mesh = Mesh.parse(report["mesh"] or "")
    entries = pictures.tensors(report)
    drawn = entries[: len(report["arguments"]) + len(report["results"])] + pictures.largest_values(report)
    cards = "".join(_grid(e, mesh) for e in drawn)
    svg, data = _timeline(report)
    m = report["memory"]
    blob = json.dumps(data).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}: mtfc inspect</title>
<style>{_CSS}</style></head>
<body>
<h1>mtfc inspect: {_e(title)}</h1>
<p>mesh <b>{_e(report['mesh'] or '(none)')}</b> &middot; layout <b>{_e(report['layout'] or '(replicated)')}</b>
&middot; partitioning <b>{_e(report['partitioning'])}</b> &middot; {report['devices']} devices</p>
<section id="summary"><h2>Summary</h2><pre>{_e(render_summary(report))}</pre></section>
<section id="layouts"><h2>Layouts over the mesh</h2>
<p>Each grid is the mesh ({_e(report['mesh'] or 'one device')}; its first axis down, the others across); each cell a
device and the block of the tensor it holds, a slice per dim. Devices with the same colour and letter hold the same
block (replicas).</p>
<div class="cards">{cards}</div></section>
<section id="collectives"><h2>Collectives in program order</h2>{_collectives(report)}</section>
<section id="memory"><h2>Per-device memory over program order</h2>
<p>Live activation bytes per device at each op of @main (liveness; splat constants count one element). Peak
{_e(human_bytes(m['peak_activation_bytes']))}; parameters {_e(human_bytes(m['parameter_bytes']))}, optimizer state
{_e(human_bytes(m['optimizer_state_bytes']))}, inputs {_e(human_bytes(m['input_bytes']))} besides.</p>
{svg}<div id="memory-tip"></div></section>
<script type="application/json" id="timeline-data">{blob}</script>
<script>{_JS}</script>
</body></html>
"""


def write_html(report: dict, path: str, title: str = "mtfc inspect") -> None:
    write_text_atomic(path, render_html(report, title))
