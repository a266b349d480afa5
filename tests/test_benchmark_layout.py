"""The layout benchmark (`python -m benchmarks.layout`) end to end on its
smallest configuration (--quick: the tiny transformer, forward only, 8
candidates, 2 steps): its JSON fields, the gate, the calibration record, the
table.  No time is asserted."""

from __future__ import annotations

import json
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

from benchmarks import layout  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "results-layout.json"
    status = layout.main(["--quick", "--steps", "forward", "--json", str(path)])
    return status, json.loads(path.read_text())


def test_fields(result):
    status, data = result
    assert status == 0
    assert data["mesh"] == "rows:2,cols:4" and data["max_candidates"]["forward"] == layout.QUICK_CANDIDATES
    assert data["network_prior"]["name"] == "cpu" and data["network_calibrated"]["flops_per_s"] > 0
    [row] = data["rows"]
    assert (row["model"], row["step"]) == ("transformer-tiny", "forward")
    assert row["valid"] > row["measured"] >= layout.QUICK_CANDIDATES and row["exhaustive"] is False
    assert row["mismatches"] == 0 and row["failures"] == 0 and row["correct"] == row["measured"]
    assert row["budget_bytes"] > 0 and isinstance(row["chosen_fits_budget"], bool)
    assert row["chosen"]["ok"] and row["best_measured"]["ok"] and row["chosen_over_best"] > 0
    assert row["within_10pct"] == (row["chosen_over_best"] <= 1.10)
    assert row["best_measured"]["measured_s"] <= row["chosen"]["measured_s"]  # the choice is a contender
    assert set(row["baselines"]) == {"data_parallel", "megatron"}
    for b in row["baselines"].values():
        assert b["refused"] is not None or (b["ok"] and b["measured_s"] > 0)
    assert -1 <= row["rho_prior"] <= 1 and len(row["load_average_start"]) == 3
    for c in row["candidates"]:
        assert c["ok"] and c["error"] <= 1e-5 and len(c["times"]) == 2
        assert c["predicted_prior_s"] > 0 and c["predicted_calibrated_s"] > 0 and c["xla_peak_bytes"] > 0


def test_table_has_a_row_per_model_and_step(result):
    _, data = result
    lines = layout.table(data["rows"]).splitlines()
    assert lines[0].startswith("| model | step |") and len(lines) == 3
    assert "transformer-tiny | forward" in lines[2]
    assert layout.candidates_table(data["rows"][0]).count("| ok |") == data["rows"][0]["measured"]
