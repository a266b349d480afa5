"""`python -m benchmarks.depth` end to end at one layer: it runs, gates mtfc
against JAX (scanned and unrolled), exits 0 and writes every field
RESULTS.md's table reads.  No time is asserted."""

from __future__ import annotations

import json
import math
import os
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

from benchmarks import depth  # noqa: E402


def test_depth_smoke(tmp_path, capsys):
    path = tmp_path / "depth.json"
    status = depth.main(["--layers", "1", "--repeats", "1", "--warmup", "0", "--json", str(path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "step x unrolled" in out and "scan" in out and "unrolled" in out
    result = json.loads(path.read_text())
    assert result["benchmark"] == "depth" and "machine" in result
    assert [(r["layers"], r["scan"]) for r in result["rows"]] == [(1, True), (1, False)]
    for r in result["rows"]:
        assert r["gate_ok"] and r["gate_error"] <= 1e-5
        for key in ("mtfc_lower", "mtfc_xla", "mtfc_step", "jax_lower", "jax_xla", "jax_step"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, key
