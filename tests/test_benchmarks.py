"""The benchmark (`python -m benchmarks.compare`) end to end on its smallest
configuration: its JSON, its correctness gate (mtfc explicit, mtfc gspmd and
plain JAX compute the same train step), and the collective bytes.  No time is
asserted."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

from benchmarks import compare  # noqa: E402
from benchmarks import model as bm  # noqa: E402


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "results.json"
    status = compare.main(["--sizes", "tiny", "--layouts", "mixed", "--steps", "train", "--repeats", "1",
                           "--warmup", "0", "--peak-n", "128", "--no-warm-up", "--no-scaling", "--no-runtime",
                           "--json", str(path)])
    assert status == 0
    return json.loads(path.read_text())


def test_json_schema(result):
    assert result["schema"] == 1
    assert {"machine", "settings", "peak", "rows", "runtime_config", "seconds"} <= set(result)
    assert result["peak"]["peak_flops"] > 0 and result["peak"]["peak_source"] in ("xla_flops", "numpy_flops")
    rows = result["rows"]
    assert [r["subject"] for r in rows] == ["mtfc explicit", "mtfc gspmd", "jax"]
    for r in rows:
        assert (r["size"], r["layout"], r["step"], r["mesh"]) == ("tiny", "mixed", "train", bm.MESH)
        for key in ("lower_seconds", "xla_seconds", "step_seconds", "host_seconds", "cpu_seconds", "mfu",
                    "flops_per_second"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, key
        assert r["flops"] == bm.SIZES["tiny"].matmul_flops(train=True)
        assert r["collectives"]["source"] == "compiled HLO"
        assert set(r["collectives"]) >= {"count", "bus_bytes", "by_kind"}
        assert r["memory"]["peak_bytes"] > 0
        assert set(r["ratio_to_jax"]) == {"step_time", "lower_time", "xla_time", "bus_bytes", "peak_memory"}
    explicit = rows[0]
    assert set(explicit["collectives_all"]) == {"compiled HLO", "StableHLO"}


def test_gate_passes(result):
    """One AdamW step from the same data: loss, gradient norm, learning rate,
    step and every gradient (the m slots) and v slot agree with plain JAX."""
    jax_row = result["rows"][-1]
    assert jax_row["gate"] == {"reference": True}
    for r in result["rows"][:2]:
        g = r["gate"]
        assert g["ok"], g
        assert g["missing"] == []
        # loss, grad_norm, learning_rate, opt/step and two slots per parameter
        params = len(bm.jax_param_dims(bm.SIZES["tiny"]))
        assert g["outputs_compared"] == 4 + 2 * params
        assert abs(g["loss"] - g["reference_loss"]) <= 1e-5 * abs(g["reference_loss"])


def test_explicit_moves_no_more_bytes_than_jax(result):
    explicit, jax_row = result["rows"][0], result["rows"][-1]
    assert explicit["collectives"]["bus_bytes"] <= jax_row["collectives"]["bus_bytes"]
    assert explicit["collectives_all"]["StableHLO"]["bus_bytes"] == explicit["collectives"]["bus_bytes"]


def test_report_prints_the_table(result):
    text = compare.report(result)
    assert "mtfc explicit" in text and "xJAX" in text and "gate: all subjects match JAX" in text


def test_jax_model_matches_the_mtfc_model_forward():
    """The plain-JAX forward and mtfc's unsharded forward give the same loss
    and logits from the same parameters (the models are the same math)."""
    import jax
    import numpy as np

    from benchmarks.runners import host_data
    from mtfc.runtime.check import relative_error
    from mtfc.runtime.execute import Program

    size = bm.SIZES["tiny"]
    module = bm.compile_mtfc(size, bm.LAYOUTS["single"], "none", train=False)
    data = host_data(size, False, seed=3)
    want = Program(module, unsharded=True).run(data).outputs
    params = {k: v for k, v in data.items() if k.startswith("params/")}
    logits, loss = jax.jit(bm.jax_forward(size))(params, data["tokens"], data["targets"])
    assert relative_error(np.asarray(logits), want["logits"]) <= 1e-5
    assert relative_error(np.asarray(loss), want["loss"]) <= 1e-5


def test_partition_spec_follows_layout_rules():
    from jax.sharding import PartitionSpec as P

    assert bm.partition_spec(("batch", "length"), "batch:rows+cols") == P(("rows", "cols"), None)
    assert bm.partition_spec(("d_model", "heads", "d_kv"), "heads:cols,d_ff:cols") == P(None, "cols", None)
    assert bm.partition_spec(("vocab",), "") == P(None)


def test_multiprocess_benchmark_single_process_half(tmp_path):
    """`benchmarks.multiprocess` on its smallest configuration, the 1x8 half
    only (the 2x4 half is the multi-process tests' business): a step time from
    `mtfc run`, and the bytes that would cross two processes, by hand: the
    forward's one collective is the loss's scalar all-reduce over all 8
    devices (data layout), b = 2*7/8*4 = 7 bytes per device; its ring crosses
    the process boundary twice: 14 bytes per step."""
    from benchmarks import multiprocess

    path = tmp_path / "mp.json"
    status = multiprocess.main(["--quick", "--single-only", "--layouts", "data", "--steps", "forward",
                                "--repeat", "1", "--timeout", "120", "--json", str(path)])
    assert status == 0
    (row,) = json.loads(path.read_text())["rows"]
    assert (row["layout"], row["step"], row["size"]) == ("data", "forward", "tiny")
    assert row["crossing"]["collectives"] == row["crossing"]["crossing"] == 1
    assert row["crossing"]["bytes_per_step"] == 14 and row["crossing"]["bytes_per_device"] == 7
    assert set(row["step_seconds"]) == {"1x8"} and row["step_seconds"]["1x8"] > 0
    assert "ratio" not in row and "check" not in row


def test_multiprocess_benchmark_reads_mtfc_runs_step_time():
    from benchmarks import multiprocess

    assert multiprocess.forward_step_seconds("compile 812.3 ms, step 5.250 ms (median of 20)\n") == 0.00525
    with pytest.raises(multiprocess.RunFailed):
        multiprocess.forward_step_seconds("no time here")


def test_moe_benchmark_smallest(tmp_path):
    """`benchmarks.moe` (on the shared `benchmarks.layer_bench` harness) on
    one configuration: the gate passes for every subject and mtfc explicit's
    forward moves tokens with exactly two all_to_alls."""
    from benchmarks import moe

    path = tmp_path / "moe.json"
    status = moe.main(["--quick", "--layouts", "data_expert", "--steps", "forward", "--repeats", "1",
                       "--json", str(path)])
    assert status == 0
    rows = json.loads(path.read_text())["rows"]
    assert [r["subject"] for r in rows] == ["mtfc explicit", "mtfc gspmd", "jax"]
    assert all(r["gate_ok"] and r["status"] == "ok" for r in rows)
    assert rows[0]["all_to_all"] == 2
    assert rows[0]["collectives_detail"]["StableHLO"]["by_kind"]["all_to_all"]["count"] == 2
