"""The convolution benchmark (`python -m benchmarks.conv`) end to end on its
smallest configuration (the small size, the spatial layout, forward and train
step, one timed step): its JSON, its gate (every subject against the same
JAX model on one device), and the halo exchange of mtfc explicit.  No time is
asserted."""

from __future__ import annotations

import json
import math
import os
import sys

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, ROOT)

from benchmarks import conv, layer_bench  # noqa: E402

SUBJECTS = ["mtfc explicit", "mtfc gspmd", "mtfc shardy", "jax"]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "results-conv.json"
    status = conv.main(["--sizes", "small", "--layouts", "spatial", "--repeats", "1", "--json", str(path)])
    return status, json.loads(path.read_text())


def test_json_schema(result):
    _, data = result
    assert data["mesh"] == "rows:2,cols:4" and data["repeats"] == 1
    assert {"cpu_count", "jax", "loadavg_start", "loadavg_end"} <= set(data["machine"])
    rows = data["rows"]
    assert [(r["step"], r["subject"]) for r in rows] == [(s, n) for s in ("forward", "train") for n in SUBJECTS]
    for r in rows:
        assert (r["size"], r["layout"], r["rules"]) == ("small", "spatial", "h:rows,w:cols")
        assert r["status"] in ("ok", "refused")
        if r["status"] == "refused":  # one line from mtfc naming the op
            assert r["subject"].startswith("mtfc ") and "stablehlo.convolution" in r["note"], r
            assert "\n" not in r["note"]
            continue
        for key in ("step_ms", "cpu_ms", "lower_s", "xla_s", "gate_error"):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] >= 0, key
        for key in ("collectives", "collective_permute", "all_gather"):
            assert isinstance(r[key], int) and r[key] >= 0, key
        assert r["bus_bytes"] >= r["collective_permute_bus_bytes"] + r["all_gather_bus_bytes"]
        assert r["peak_bytes"] > 0
        assert set(r["ratio_to_jax"]) == {"step_ms", "cpu_ms", "bus_bytes", "peak_bytes"}
        assert r["collectives_detail"]["compiled HLO"]["source"] == "compiled HLO"
    explicit = rows[0]
    assert set(explicit["collectives_detail"]) == {"compiled HLO", "StableHLO"}
    assert rows[3]["ratio_to_jax"] == {"step_ms": 1.0, "cpu_ms": 1.0, "bus_bytes": 1.0, "peak_bytes": 1.0}


def test_gate_passes(result):
    """Every subject that was built (explicit, gspmd and the sharded JAX model
    at least) matches the one-device JAX model: forward y, train loss and
    every new parameter."""
    status, data = result
    assert status == 0
    built = [r for r in data["rows"] if r["status"] == "ok"]
    assert {r["subject"] for r in built} >= {"mtfc explicit", "mtfc gspmd", "jax"}
    for r in built:
        assert r["gate_ok"] and r["gate_error"] <= 1e-5, r


def test_explicit_exchanges_halos_and_gathers_nothing(result):
    """Under h:rows,w:cols mtfc explicit's program moves the activations' halos
    by collective_permute and never all_gathers, in its StableHLO and in the
    compiled executable; gspmd and shardy (workarounds for XLA and Shardy)
    run every convolution whole along h and w, by all_gathers."""
    _, data = result
    for r in data["rows"]:
        if r["subject"] == "mtfc explicit":
            for source in ("compiled HLO", "StableHLO"):
                kinds = r["collectives_detail"][source]["by_kind"]
                assert kinds["collective_permute"]["count"] > 0, (r["step"], source)
                assert "all_gather" not in kinds and "all_to_all" not in kinds, (r["step"], source)
        if r["subject"] in ("mtfc gspmd", "mtfc shardy") and r["status"] == "ok":
            assert r["all_gather"] > 0 and r["collective_permute"] == 0, r["subject"]
            assert r["note"] == ("whole: 3/3 convs" if r["step"] == "forward" else "whole: 8/8 convs"), r["subject"]


def test_forward_halo_bytes_by_hand(result):
    """The forward's halos, by hand.  Shards (h/2, w/4): x [8, 8, 4, 4], then
    [8, 8, 4, 8] (f0 = 8), then [8, 4, 2, 8] after the stride.  conv0 (3x3,
    SAME) needs 1 row/column on each side; conv1 (stride 2: SAME pads (0, 1))
    1 on the high side only; conv2 (dilation 2: pads (2, 2)) 2 on each side.
    Per conv one permute per side and dim, h first, then w over the block
    extended by the h halo: 4 + 2 + 4 = 10 collective_permutes."""
    _, data = result
    explicit = data["rows"][0]
    f4 = 4  # bytes
    conv0 = (1 * 4 * 4 + 1 * 4 * 4) * 8 * f4 + ((8 + 2) * 1 * 4 + (8 + 2) * 1 * 4) * 8 * f4
    conv1 = 1 * 4 * 8 * 8 * f4 + (8 + 1) * 1 * 8 * 8 * f4
    conv2 = (2 * 2 * 8 * 2) * 8 * f4 + ((4 + 4) * 2 * 8 * 2) * 8 * f4
    assert explicit["collective_permute_bus_bytes"] == conv0 + conv1 + conv2 == 17152
    assert explicit["collective_permute"] == 10


def test_gate_catches_a_mismatch():
    """`layer_bench.gate` fails a subject whose output differs by more than
    the f32 tolerance, and stops on a missing output."""

    class Fake:
        name = "fake"

        def __init__(self, out):
            self.out = out

        def outputs(self):
            return self.out

    want = {"y": np.linspace(1.0, 2.0, 12).reshape(3, 4)}
    assert layer_bench.gate(Fake({"y": want["y"].copy()}), want) == 0.0
    assert layer_bench.gate(Fake({"y": want["y"] * (1 + 1e-3)}), want) > 1e-5
    with pytest.raises(SystemExit, match="fake has no output"):
        layer_bench.gate(Fake({}), want)


def test_table_shows_refused_rows():
    rows = [{"size": "s", "layout": "l", "step": "forward", "subject": "mtfc shardy", "status": "refused",
             "note": "x" * 100}]
    text = layer_bench.table(rows, [("size", None), ("layout", None), ("step", None), ("subject", None),
                                    ("a", None), ("b", None)])
    assert "| s | l | forward | mtfc shardy | refused: " + "x" * 70 + "... | - |" in text


def test_xla_miscomputes_split_spatial_with_split_output_features():
    """Why the plain-JAX rows of the spatial_features layout fail the gate
    (benchmarks/RESULTS.md, "Convolutions"): jaxlib 0.10's partitioner (JAX's
    default, Shardy) computes one plain 3x3 convolution wrong when x is split
    along h and the kernel along its output features -- 4x (the cols size)
    the right numbers.  When this fails, jaxlib has fixed it: re-run the
    benchmark and update RESULTS.md."""
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from benchmarks import model as bm
    from mtfc.runtime.check import relative_error

    mesh = bm.jax_mesh(jax.devices("cpu"), "rows:2,cols:4")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16, 4)).astype(np.float32)
    k = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)

    def conv2d(a, b):
        return jax.lax.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

    want = np.asarray(jax.jit(conv2d)(x, k), np.float64)
    h, features = NamedSharding(mesh, P(None, "rows")), NamedSharding(mesh, P(None, None, None, "cols"))
    out = NamedSharding(mesh, P(None, "rows", None, "cols"))
    split = jax.jit(conv2d, in_shardings=(h, features), out_shardings=out)
    got = np.asarray(split(x, k), np.float64)
    assert relative_error(got, want) > 1.0
    assert np.allclose(got, 4 * want, rtol=1e-4, atol=1e-3)
