"""mtfc.layout.measure and mtfc.layout.calibrate: candidates compiled and run
on the 8 virtual CPU devices, gated against the unsharded run; predicted
against measured (Spearman); the nnls fit of a Network's constants."""

from __future__ import annotations

import os
import warnings
from types import SimpleNamespace

import numpy as np
import pytest

from mtfc import ir as mir
from mtfc.compiler import compile_file
from mtfc.errors import MtfcError
from mtfc.layout import measure as lm
from mtfc.layout.calibrate import calibrate, describe
from mtfc.layout.network import PRESETS, Network, load_network, save_network
from mtfc.mesh import LayoutRules
from mtfc.passes import layout_cost

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def features_from_prediction(module, rules, param_rules, flops):
    """CostFeatures (contract) by hand: per axis, the trips and trips*bus_bytes of predicted collectives."""
    mesh = mir.module_mesh(module)
    p = layout_cost.predict(module, mir.Layouts(mesh, LayoutRules.parse(rules), LayoutRules.parse(param_rules)))
    count, nbytes = {}, {}
    for c in p.collectives:
        for a in c.axes:
            count[a] = count.get(a, 0) + c.trips
            nbytes[a] = nbytes.get(a, 0.0) + c.trips * c.bus_bytes
    return SimpleNamespace(flops=flops, axis_count=count, axis_bytes=nbytes)


def candidate(module, rules, param_rules, net=PRESETS["cpu"], flops=1e6):
    f = features_from_prediction(module, rules, param_rules, flops)
    compute, comm = net.seconds(f)
    return SimpleNamespace(rules=rules, param_rules=param_rules, features=f, compute_s=compute, comm_s=comm,
                           total_s=compute + comm, peak_bytes=0, fits=True)


MLP_LAYOUTS = [("batch:rows+cols", ""), ("batch:rows,d_hidden:cols", "d_hidden:cols"), ("", ""),
               ("d_hidden:rows+cols", "d_hidden:rows+cols")]


@pytest.fixture(scope="module", params=[False, True], ids=["forward", "train"])
def mlp(request):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return compile_file(os.path.join(EXAMPLES, "mlp.py"), mode="none", train=request.param)


def test_select_top_and_spread():
    assert lm.select(10, 3, 0) == [0, 1, 2]
    assert lm.select(10, 3, 3) == [0, 1, 2, 3, 6, 9]
    assert lm.select(4, 3, 5) == [0, 1, 2, 3]
    assert lm.select(2, 5, 5) == [0, 1]
    with pytest.raises(MtfcError, match="--measure must be >= 1, not 0"):
        lm.select(10, 0, 0)


def test_measure_runs_checks_and_times_every_selected_candidate(mlp):
    cands = [candidate(mlp, r, p) for r, p in MLP_LAYOUTS]
    ms = lm.measure_candidates(mlp, cands, k=2, lower_ranked=1, steps=3)
    assert [m.rank for m in ms] == [0, 1, 3]  # top 2 and the last
    for m, c in zip(ms, [cands[0], cands[1], cands[3]]):
        assert m.ok and m.failure is None and m.error <= m.tolerance == 1e-5
        assert len(m.times) == 3 and m.measured_s == pytest.approx(float(np.median(m.times)))
        assert m.measured_s > 0 and m.predicted_s == c.total_s and m.rules == c.rules and m.xla_peak_bytes > 0
    d = ms[0].as_dict()
    assert d["features"]["axis_count"] == dict(cands[0].features.axis_count) and d["ok"] is True


def test_a_wrong_result_is_a_mismatch_and_left_out(mlp, monkeypatch):
    """The gate can fail: against a perturbed reference every candidate mismatches."""
    real = lm.reference_outputs

    def perturbed(reference, inputs):
        return {k: np.asarray(v) + 1.0 for k, v in real(reference, inputs).items()}

    monkeypatch.setattr(lm, "reference_outputs", perturbed)
    cands = [candidate(mlp, r, p) for r, p in MLP_LAYOUTS[:3]]
    ms = lm.measure_candidates(mlp, cands, k=3, lower_ranked=0, steps=1)
    assert all(not m.ok and m.error > 1e-5 for m in ms)
    assert lm.rank_correlation(ms) == (None, 0)
    lines = []
    lm.report(ms, echo=lines.append)
    assert sum("MISMATCH" in line for line in lines[0].splitlines()) == 3


def test_a_failing_candidate_is_one_line(mlp, monkeypatch):
    def broken(module, mesh, rules, param_rules):
        raise MtfcError("XLA could not compile the module: boom")

    monkeypatch.setattr(lm, "candidate_module", broken)
    ms = lm.measure_candidates(mlp, [candidate(mlp, "", "")], k=1, steps=1)
    assert ms[0].failure == "XLA could not compile the module: boom" and ms[0].measured_s is None


def test_measure_refuses_a_partitioned_module(mlp):
    with pytest.raises(MtfcError, match="already partitioned"):
        lm.candidate_module(lm.candidate_module(mlp, mir.module_mesh(mlp), "", ""), mir.module_mesh(mlp), "", "")


def _m(pred, meas, ok=True, features=None):
    return lm.Measurement(rank=0, rules="", param_rules="", predicted_s=pred, compute_s=pred, comm_s=0.0,
                          fits=True, peak_bytes=0, features=features, measured_s=meas, ok=ok)


def test_rank_correlation_and_report():
    ms = [_m(1, 10), _m(2, 30), _m(3, 20), _m(4, 40), _m(0.5, 1, ok=False)]
    rho, n = lm.rank_correlation(ms)
    assert n == 4 and rho == pytest.approx(0.8)  # one swapped pair of 4: 1 - 6*2/(4*15)
    lines = []
    summary = lm.report(ms, echo=lines.append)
    assert summary["rho"] == pytest.approx(0.8) and summary["n"] == 4
    assert "0.800 over 4 correct" in lines[1]
    assert lm.rank_correlation(ms[:2]) == (None, 2)


# ------------------------------------------------------------------ calibrate
TRUE = Network("true", flops_per_s=3e9, latency_s={"*": 1e-4, "rows": 4e-5, "cols": 9e-5},
               bandwidth_Bps={"*": 1e9, "rows": 2e9, "cols": 5e8}, overhead_s=2e-4)


def _synthetic(n, rng, axes=("rows", "cols"), net=TRUE, noise=0.0):
    out = []
    for _ in range(n):
        f = SimpleNamespace(flops=float(rng.uniform(1e6, 1e8)),
                            axis_count={a: float(rng.integers(0, 20)) for a in axes},
                            axis_bytes={a: float(rng.uniform(0, 1e7)) for a in axes})
        t = net.step_seconds(f) * (1 + noise * rng.standard_normal())
        out.append(_m(0.0, t, features=f))
    return out


def test_calibrate_recovers_the_constants():
    ms = _synthetic(20, np.random.default_rng(0))
    fit = calibrate(ms, prior=PRESETS["cpu"], axes=["rows", "cols"], name="fit")
    n = fit.network
    assert n.flops_per_s == pytest.approx(3e9, rel=1e-6) and n.overhead_s == pytest.approx(2e-4, rel=1e-5)
    for a in ("rows", "cols"):
        assert n.latency(a) == pytest.approx(TRUE.latency(a), rel=1e-5)
        assert n.bandwidth(a) == pytest.approx(TRUE.bandwidth(a), rel=1e-5)
    assert fit.rms_relative_error < 1e-8 and fit.used == 20 and fit.notes == []
    assert n.calibrated_on["measurements"] == 20 and n.calibrated_on["overhead_fitted"] is True
    assert "flops_per_s 3e+09" in describe(fit)[0]


def test_calibrate_without_overhead_when_there_is_none():
    exact = Network("x", 3e9, {"*": 5e-5}, {"*": 1e9})
    fit = calibrate(_synthetic(12, np.random.default_rng(1), net=exact), prior=PRESETS["cpu"], axes=["rows", "cols"])
    assert fit.network.overhead_s == 0.0 and fit.network.flops_per_s == pytest.approx(3e9, rel=1e-6)


def test_calibrate_round_trip_through_a_file(tmp_path):
    fit = calibrate(_synthetic(20, np.random.default_rng(2), noise=0.02), prior=PRESETS["cpu"],
                    axes=["rows", "cols"], name="noisy", provenance={"backend": "cpu"})
    assert fit.network.flops_per_s == pytest.approx(3e9, rel=0.2)
    path = str(tmp_path / "cpu.json")
    save_network(fit.network, path)
    back = load_network(path)
    assert back == fit.network and back.calibrated_on["backend"] == "cpu"


def test_an_axis_never_communicated_keeps_the_prior():
    ms = _synthetic(12, np.random.default_rng(3), axes=("rows",))
    fit = calibrate(ms, prior=PRESETS["cpu"], axes=["rows", "cols"])
    assert fit.network.latency("cols") == PRESETS["cpu"].latency("cols")
    assert fit.network.bandwidth("cols") == PRESETS["cpu"].bandwidth("cols")
    assert fit.network.latency("rows") == pytest.approx(4e-5, rel=1e-5)
    assert any("'cols' carried no collective" in note for note in fit.notes)


def test_calibrate_refuses_too_few_and_degenerate():
    ms = _synthetic(4, np.random.default_rng(4))
    with pytest.raises(MtfcError, match=r"calibrate: 4 correct measurement\(s\) for 5 unknowns"):
        calibrate(ms, prior=PRESETS["cpu"], axes=["rows", "cols"])
    # bytes always 1e6 per collective over rows: latency(rows) and 1/bandwidth(rows) are inseparable
    rng = np.random.default_rng(5)
    same = []
    for _ in range(10):
        c = float(rng.integers(1, 20))
        f = SimpleNamespace(flops=float(rng.uniform(1e6, 1e8)), axis_count={"rows": c}, axis_bytes={"rows": c * 1e6})
        same.append(_m(0.0, TRUE.step_seconds(f), features=f))
    with pytest.raises(MtfcError, match=r"degenerate.*latency\(rows\), 1/bandwidth\(rows\)"):
        calibrate(same, prior=PRESETS["cpu"], axes=["rows"])
    bad = [_m(0.0, 1.0, ok=False, features=ms[0].features)]
    with pytest.raises(MtfcError, match="no correct measurement"):
        calibrate(bad, prior=PRESETS["cpu"], axes=["rows"])


# ------------------------------------------------------------------ the command
def test_layout_measure_and_calibrate_command(tmp_path):
    from click.testing import CliRunner

    from mtfc.cli import main

    net, out = str(tmp_path / "net.json"), str(tmp_path / "layout.json")
    r = CliRunner().invoke(main, ["layout", os.path.join(EXAMPLES, "mlp.py"), "--measure", "3", "--calibrate", net,
                                  "--json", out])
    assert r.exit_code == 0, r.output
    assert "measuring 6 of " in r.output and "rank correlation (Spearman)" in r.output
    assert "calibrated network" in r.output
    fitted = load_network(net)
    assert fitted.calibrated_on["measurements"] == 6 and fitted.calibrated_on["mesh"] == "rows:2,cols:4"
    import json

    data = json.load(open(out))
    assert len(data["measured"]["candidates"]) == 6 and all(c["ok"] for c in data["measured"]["candidates"])
    assert data["measured"]["calibrated"]["name"] == "cpu-calibrated"
    # the saved network is read back by --network
    r = CliRunner().invoke(main, ["layout", os.path.join(EXAMPLES, "mlp.py"), "--network", net, "--top", "1"])
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args, message", [
    (["--measure", "0"], "--measure 0: give a positive number"),
    (["--calibrate", "/"], "'/': Is a directory"),
    (["--measure", "2", "--calibrate", "/tmp/mtfc-never-written.json"],
     "error: calibrate: 4 correct measurement(s) for 5 unknowns"),
])
def test_layout_measure_bad_options_are_one_line(args, message):
    from click.testing import CliRunner

    from mtfc.cli import main

    r = CliRunner().invoke(main, ["layout", os.path.join(EXAMPLES, "mlp.py"), *args])
    assert r.exit_code != 0 and message in r.output, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and r.output.strip().endswith(errors[0]), r.output
    assert not os.path.exists("/tmp/mtfc-never-written.json")
