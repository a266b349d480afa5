"""`mtfc inspect` for people: the one-screen summary (line count, widths,
words for a known cause), --all and --section, splat constants in the peak,
the --show picture against the blocks NumPy slicing gives each device, and
the --html page rendered by headless Chromium without console errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

import mtfc as mtf
from mtfc.cli import main
from mtfc.compiler import compile_function
from mtfc.emit.artifact import write_module
from mtfc.passes import memory_analysis
from mtfc.tools import causes
from mtfc.tools import report as report_tool

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")
TRANSFORMER = os.path.join(EXAMPLES, "transformer.py")
MESH = "rows:2,cols:4"


def invoke(*args, code=0):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    """The README's FSDP train module."""
    path = tmp_path_factory.mktemp("fsdp") / "train.mlir"
    invoke("compile", TRANSFORMER, "--train", "-o", path, "--layout", "batch:rows+cols",
           "--param-layout", "d_model:rows+cols")
    return path


def _fits(text: str, lines: int) -> None:
    rows = text.rstrip("\n").splitlines()
    assert len(rows) <= lines, f"{len(rows)} lines:\n{text}"
    wide = [r for r in rows if len(r) > report_tool.WIDTH]
    assert not wide, wide


# ----------------------------------------------------------------- the summary


def test_summary_of_the_readme_fsdp_module_fits_one_screen(fsdp):
    text = invoke("inspect", fsdp)
    _fits(text, 60)
    assert "communication per step, per device (mtfc explicit" in text
    # 26 all_gathers of FSDP's parameters, by cause, folded over the 2 layers
    flat = " ".join(text.split())  # the words, however they wrap
    assert ("all_gather over rows+cols: block*/feed_forward/wi/einsum -- dim 'd_model' is needed without rows+cols "
            "(x2 layers)") in flat, text
    bandwidth = causes.default_bandwidth()  # stated: the cpu network preset, else docs/cli.md's figures
    assert f"at {bandwidth}" in flat and f"{bandwidth.bytes_per_s / 1e9:g} GB/s" in flat
    assert re.search(r"peak live activations \d+\.\d MiB at op #\d+", text), text
    report = json.loads(invoke("inspect", fsdp, "--json"))
    total = report["collectives"]["total"]["count"]
    shares = [int(m) for m in re.findall(r"^\s*(\d+)%", text, re.M)]
    assert 98 <= sum(shares) <= 102 and total == 55  # every collective in some group (rounded shares)


@pytest.mark.parametrize("example,args", [
    ("pipeline.py", ["--train"]),                       # the longest summary: two tick loops
    ("transformer.py", ["--train", "-D", "SCAN=True"]),  # collectives inside a loop
    ("moe.py", ["--train", "--mode", "shardy"]),
    ("unet.py", ["--mode", "gspmd"]),                  # XLA's collectives, read from HLO
    ("mlp.py", []),
])
def test_summaries_of_the_examples_fit_one_screen(tmp_path, example, args):
    path = tmp_path / "m.mlir"
    invoke("compile", os.path.join(EXAMPLES, example), "-o", path, *args)
    text = invoke("inspect", path)
    _fits(text, 60)
    assert "memory per device:" in text and ("communication per step" in text or "collectives: none" in text)


def test_summary_words_for_the_megatron_all_reduce(tmp_path):
    """Megatron's feed-forward sums d_ff, split over cols, once per layer."""
    path = tmp_path / "t.mlir"
    invoke("compile", TRANSFORMER, "-o", path, "--layout", "batch:rows,heads:cols,d_ff:cols")
    text = invoke("inspect", path)
    _fits(text, 60)
    assert ("all_reduce over cols: block*/feed_forward/wo/einsum -- sum over dim 'd_ff' split over cols (x2 layers)"
            in " ".join(text.split())), text
    report = json.loads(invoke("inspect", path, "--json"))
    ops = [op for op in report["collectives"]["ops"] if "feed_forward/wo" in op["location"]]
    assert [op["reason"] for op in ops] == ["sum over dim 'd_ff' split over cols"] * 2


def test_all_and_sections(fsdp):
    full = invoke("inspect", fsdp, "--all")
    for title in ("arguments and results:", "values:", "collectives (mtfc explicit", "memory per device:",
                  "largest values live at the peak", "parameters per device:"):
        assert title in full
    assert all(len(r) <= report_tool.WIDTH for r in full.splitlines())
    collectives = invoke("inspect", fsdp, "--section", "collectives")
    assert collectives.startswith("collectives (mtfc explicit") and collectives.strip() in full
    assert len([r for r in collectives.splitlines() if re.match(r"\s*\d+\s+(all_|reduce_)", r)]) == 55
    two = invoke("inspect", fsdp, "--section", "memory", "--section", "arguments")
    assert two.index("memory per device:") < two.index("arguments and results:")
    bad = invoke("inspect", fsdp, "--section", "colectives", code=1)
    assert len(bad.strip().splitlines()) == 1
    assert "unknown section" in bad and all(n in bad for n in report_tool.section_names())
    absent = invoke("inspect", fsdp, "--section", "comparison", code=1)
    assert len(absent.strip().splitlines()) == 1 and "--compare" in absent
    assert "--section NAME" in invoke("inspect", "--help") and "collectives" in invoke("inspect", "--help")


# ----------------------------------------------------------------- splat constants


B, D = mtf.Dim("batch", 8), mtf.Dim("d", 1024)


def _scaled(value):
    def f(x):
        return {"y": x * mtf.ones([B, D]) + mtf.constant(value, [B, D])}
    return f


def test_peak_counts_a_splat_constant_as_one_element(tmp_path):
    """y = x * ones + c on [8, 1024] f32, batch over rows, d over cols: a
    per-device block is 4x256 f32 = 4096 bytes.  At the add, x*ones, c and y
    are live: with c a splat 4096 + 4 + 4096 (global program and per-device
    program alike); with c a real array, in the global program, 3 x 4096 (the
    per-device program holds that array whole before slicing it)."""
    block = (8 // 2) * (1024 // 4) * 4
    for value, expected, modes in ((2.0, 2 * block + 4, ("none", "explicit")),
                                   (np.arange(8 * 1024, dtype=np.float32).reshape(8, 1024), 3 * block, ("none",))):
        for mode in modes:
            module = compile_function(_scaled(value), {"x": mtf.Input([B, D])}, mesh=MESH,
                                      layout="batch:rows,d:cols", mode=mode)
            assert memory_analysis.liveness(module).peak_bytes == expected, (mode, expected)
            path = tmp_path / f"{mode}.mlir"
            write_module(module, str(path))
            report = json.loads(invoke("inspect", path, "--json", "--no-xla"))
            assert report["memory"]["peak_activation_bytes"] == expected
            assert max(report["memory"]["timeline"]["bytes"]) == expected


# ----------------------------------------------------------------- --show


A2, B2 = mtf.Dim("a", 8), mtf.Dim("b", 16)


def _picture_module(tmp_path, layout, mode):
    def f(x):
        return {"y": x * 2.0}
    path = tmp_path / f"show-{mode}-{layout.replace(':', '_').replace(',', '-').replace('+', '_')}.mlir"
    write_module(compile_function(f, {"x": mtf.Input([A2, B2])}, mesh=MESH, layout=layout, mode=mode), str(path))
    return path


def _cells(text: str) -> dict[int, dict[str, tuple[int, int]]]:
    """device -> {dim: (start, stop)} read back from the text grid."""
    out: dict[int, dict] = {}
    block: list[list[str]] = []

    def flush():
        if not block:
            return
        for column in zip(*block):
            content = " ".join(column)
            d = int(re.search(r"dev (\d+)", content).group(1))
            out[d] = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"(\w+)\[(\d+):(\d+)\]", content)}
        block.clear()

    for line in text.splitlines():
        if line.lstrip().startswith("+"):
            flush()
        elif "|" in line:
            block.append(line.split("|")[1:-1])
    flush()
    return out


@pytest.mark.parametrize("layout,split,mode", [
    ("a:rows,b:cols", (2, 4), "explicit"),   # a over rows (device row r), b over cols (column c)
    ("a:cols,b:rows", (4, 2), "explicit"),   # transposed: a's block is the column, b's the row
    ("a:rows", (2, 1), "explicit"),          # b whole: the 4 devices of a row hold the same block
    ("a:rows,b:cols", (2, 4), "gspmd"),      # a global program: the layout's blocks
    ("a:cols,b:rows", (4, 2), "none"),
])
def test_show_draws_the_block_each_device_holds(tmp_path, layout, split, mode):
    text = invoke("inspect", _picture_module(tmp_path, layout, mode), "--show", "x", "--no-xla")
    _fits(text, 60)
    cells = _cells(text)
    assert sorted(cells) == list(range(8))
    x = np.arange(8 * 16).reshape(8, 16)
    for d in range(8):
        r, c = divmod(d, 4)  # row-major over rows:2,cols:4
        a_part = {"a:rows,b:cols": r, "a:cols,b:rows": c, "a:rows": r}[layout]
        b_part = {"a:rows,b:cols": c, "a:cols,b:rows": r, "a:rows": 0}[layout]
        expected = np.array_split(np.array_split(x, split[0], axis=0)[a_part], split[1], axis=1)[b_part]
        (a0, a1), (b0, b1) = cells[d]["a"], cells[d]["b"]
        assert np.array_equal(x[a0:a1, b0:b1], expected), (layout, d, cells[d])
    letters = re.findall(r"dev \d+  ([A-Z])", text)
    assert len(set(letters)) == 8 // (4 if layout == "a:rows" else 1)


def test_show_a_value_by_location_and_unknown_names(tmp_path, fsdp):
    text = invoke("inspect", fsdp, "--show", "params/block0/feed_forward/wi/kernel")
    _fits(text, 60)
    assert "layout: d_model over rows+cols, d_ff whole" in text and "8 distinct block(s)" in text
    value = invoke("inspect", fsdp, "--show", "block0/feed_forward/wi/einsum")
    assert value.startswith("block0/feed_forward/wi/einsum(transformer.py:70:1): stablehlo.")
    bad = invoke("inspect", fsdp, "--show", "params/block0/feed_forward/wi/kernal", code=1)
    assert len(bad.strip().splitlines()) == 1
    assert "no argument, result or value" in bad and "params/block0/feed_forward/wi/kernel" in bad


# ----------------------------------------------------------------- --html


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium is not installed: apt-get install -y chromium (.ci/run installs it)"
    return path


def _render(html_path) -> tuple[str, list[str]]:
    """The DOM after load, and the console lines Chromium logged."""
    run = subprocess.run([_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                          "--v=0", "--dump-dom", f"file://{os.path.abspath(html_path)}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return run.stdout, console


def _screenshot(html_path, png) -> int:
    """Bytes of a 1200x1600 PNG screenshot of the page."""
    run = subprocess.run([_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--window-size=1200,1600",
                          f"--screenshot={png}", f"file://{os.path.abspath(html_path)}"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return len(data)


BLANK_PNG = 20_000  # a 1200x1600 page with nothing drawn compresses to a few KB


def test_the_console_check_sees_errors(tmp_path):
    """The checks below can fail: a page with a script error logs it, and
    a page with nothing drawn makes a small screenshot."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); notDefined();</script></body></html>")
    _, console = _render(bad)
    assert any("Uncaught ReferenceError" in line for line in console), console
    assert _screenshot(bad, tmp_path / "bad.png") < BLANK_PNG


def test_html_report_renders_without_errors(tmp_path, fsdp):
    page = tmp_path / "report.html"
    invoke("inspect", fsdp, "--html", page)
    source = page.read_text()
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", source)  # self-contained: loads nothing
    dom, console = _render(page)
    assert console == []
    assert _screenshot(page, tmp_path / "report.png") > BLANK_PNG  # it draws something
    assert 'data-ready="1"' in dom  # the page's script ran to its end
    report = json.loads(invoke("inspect", fsdp, "--json"))
    for section in ("summary", "layouts", "collectives", "memory"):
        assert f'<section id="{section}">' in dom
    cards = re.findall(r'<div class="card" data-tensor="([^"]+)"', dom)
    names = [a["name"] for a in report["arguments"] + report["results"]]
    assert cards[:len(names)] == names and len(cards) > len(names)  # then the largest intermediates
    assert dom.count('<td class="device"') == 8 * len(cards)
    assert dom.count('<tr class="collective">') == len(report["collectives"]["ops"]) == 55
    assert '<svg id="memory-timeline"' in dom and "<polyline" in dom
    # the picture of one parameter: device 5 holds d_model[40:48] of params/embedding/table
    card = dom[dom.index('data-tensor="params/embedding/table"'):]
    card = card[:card.index("</table>")]
    assert re.search(r'data-device="5"[^>]*>.*?vocab\[0:64\]<br>d_model\[40:48\]', card)
