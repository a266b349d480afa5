"""`python -m benchmarks.compile_time` end to end on tiny sizes: it runs, exits
0, and its JSON has every field RESULTS.md reads.  No time is asserted."""

from __future__ import annotations

import json
import math
import os
import sys

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

from benchmarks import compile_time  # noqa: E402


def _seconds(x):
    return isinstance(x, float) and math.isfinite(x) and x >= 0


def test_compile_time_smoke(tmp_path, capsys):
    path = tmp_path / "compile-time.json"
    status = compile_time.main(["--tiny", "--depths", "1,2", "--meshes", "8", "--repeats", "1",
                                "--json", str(path)])
    assert status == 0
    out = capsys.readouterr().out
    assert "front/JAX" in out and "cpu/JAX" in out
    result = json.loads(path.read_text())
    assert result["schema"] == 1
    assert {"machine", "settings", "depth", "mesh", "seconds"} <= set(result)
    assert [r["layers"] for r in result["depth"]] == [1, 2]
    assert [r["devices"] for r in result["mesh"]] == [8]
    assert result["mesh"][0]["mesh"] == "data:2,model:4"
    for r in result["depth"] + result["mesh"]:
        for key in ("trace_seconds", "lower_seconds", "passes_seconds", "front_seconds", "total_seconds",
                    "jax_lower_seconds"):
            assert _seconds(r[key]), key
        assert math.isclose(r["total_seconds"], r["trace_seconds"] + r["lower_seconds"] + r["passes_seconds"])
        assert set(r["cpu_seconds"]) == {"trace", "lower", "passes", "total", "jax_lower"}
        assert all(_seconds(v) for v in r["cpu_seconds"].values())
        assert set(r["ratio_to_jax"]) == {"front", "total", "total_cpu"}
        assert all(_seconds(v) for v in r["ratio_to_jax"].values())


def test_mesh_text():
    """The mesh sweep's meshes: `data` x `model`, as square as the count allows."""
    assert [compile_time.mesh_text(n) for n in (8, 64, 256, 1024)] == [
        "data:2,model:4", "data:8,model:8", "data:16,model:16", "data:32,model:32"]
