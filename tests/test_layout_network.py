"""mtfc.layout.network: the Network model, presets, JSON files and their one-line errors."""

import json
import os
from types import SimpleNamespace

import pytest

from mtfc.errors import MtfcError
from mtfc.layout.network import PRESETS, Network, load_network, save_network


def _features(flops, count, nbytes):
    return SimpleNamespace(flops=flops, axis_count=count, axis_bytes=nbytes)


def test_presets_exist_and_are_sane():
    assert set(PRESETS) == {"cpu", "nvlink", "infiniband", "ici"}
    for name, net in PRESETS.items():
        assert net.name == name
        assert net.flops_per_s > 0 and net.bandwidth("anything") > 0 and net.latency("anything") >= 0
    # published ballparks: NVLink is faster than InfiniBand per GPU
    assert PRESETS["nvlink"].bandwidth("x") > PRESETS["infiniband"].bandwidth("x")
    assert load_network("nvlink") is PRESETS["nvlink"]


def test_per_axis_lookup_and_star_default():
    net = Network("n", 1e9, {"*": 1e-5, "rows": 3e-5}, {"*": 1e9, "cols": 4e9})
    assert net.latency("rows") == 3e-5 and net.latency("cols") == 1e-5
    assert net.bandwidth("cols") == 4e9 and net.bandwidth("rows") == 1e9
    only = Network("n", 1e9, {"rows": 1e-5}, {"rows": 1e9})
    with pytest.raises(MtfcError, match="no latency_s for mesh axis 'cols'"):
        only.latency("cols")


def test_seconds_is_the_linear_model():
    net = Network("n", 2e9, {"*": 1e-5, "rows": 4e-5}, {"*": 1e9, "rows": 5e8})
    f = _features(4e9, {"rows": 3, "cols": 2}, {"rows": 1e9, "cols": 3e9})
    compute, comm = net.seconds(f)
    assert compute == pytest.approx(2.0)
    assert comm == pytest.approx(3 * 4e-5 + 1e9 / 5e8 + 2 * 1e-5 + 3e9 / 1e9)
    assert net.compute_seconds(1e9) == pytest.approx(0.5)
    # an axis with no collectives costs nothing, even if the network does not know it
    only = Network("n", 1e9, {"rows": 1e-5}, {"rows": 1e9})
    assert only.seconds(_features(0, {"cols": 0}, {"cols": 0}))[1] == 0.0
    with_overhead = Network("n", 2e9, {"*": 0.0}, {"*": 1e9}, overhead_s=0.25)
    assert with_overhead.step_seconds(_features(2e9, {}, {})) == pytest.approx(1.25)


def test_save_load_round_trip(tmp_path):
    net = Network("fit", 3.5e9, {"*": 2e-5, "rows": 0.0}, {"*": 1.5e9}, overhead_s=1e-3,
                  calibrated_on={"measurements": 12, "load_average": 1.5})
    path = str(tmp_path / "net.json")
    save_network(net, path)
    back = load_network(path)
    assert back == net and back.calibrated_on["measurements"] == 12
    assert json.load(open(path))["latency_s"] == {"*": 2e-5, "rows": 0.0}
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


def test_network_is_immutable():
    net = PRESETS["cpu"]
    with pytest.raises(Exception):
        net.flops_per_s = 1.0
    with pytest.raises(TypeError):
        net.latency_s["*"] = 1.0
    assert hash(net) == hash(PRESETS["cpu"])


def _write(tmp_path, text):
    path = tmp_path / "net.json"
    path.write_text(text)
    return str(path)


GOOD = {"name": "x", "flops_per_s": 1e9, "latency_s": {"*": 1e-5}, "bandwidth_Bps": {"*": 1e9}}


@pytest.mark.parametrize("change, message", [
    ({"flops_per_s": 0}, r"flops_per_s must be a positive finite number, got 0"),
    ({"flops_per_s": "fast"}, r"flops_per_s must be a positive number, got 'fast'"),
    ({"flops_per_s": True}, r"flops_per_s must be a positive number, got True"),
    ({"latency_s": {"*": -1e-5}}, r"latency_s\.\* must be a non-negative finite number"),
    ({"bandwidth_Bps": {"*": 1e9, "rows": 0}}, r"bandwidth_Bps\.rows must be a positive finite number"),
    ({"bandwidth_Bps": 5}, r"bandwidth_Bps must be an object"),
    ({"latency_s": {}}, r"latency_s is empty"),
    ({"overhead_s": -1}, r"overhead_s must be a non-negative"),
    ({"name": ""}, r"name must be a non-empty string"),
    ({"calibrated_on": 3}, r"calibrated_on must be an object"),
    ({"speed": 3}, r"unknown key 'speed'"),
])
def test_bad_files_are_one_line(tmp_path, change, message):
    path = _write(tmp_path, json.dumps({**GOOD, **change}))
    with pytest.raises(MtfcError, match=message) as e:
        load_network(path)
    assert "\n" not in str(e.value) and path in str(e.value)


def test_missing_key(tmp_path):
    data = dict(GOOD)
    del data["bandwidth_Bps"]
    with pytest.raises(MtfcError, match=r"net\.json'?: missing key 'bandwidth_Bps'"):
        load_network(_write(tmp_path, json.dumps(data)))


def test_invalid_json_names_line_and_column(tmp_path):
    path = _write(tmp_path, '{\n  "name": "x",\n  "flops_per_s": ,\n}')
    with pytest.raises(MtfcError, match=r"invalid JSON at line 3 column 18"):
        load_network(path)
    with pytest.raises(MtfcError, match=r"must hold a JSON object, got list"):
        load_network(_write(tmp_path, "[1, 2]"))


def test_unknown_preset_and_missing_file(tmp_path):
    with pytest.raises(MtfcError, match=r"unknown network 'gpu' \(presets: cpu, nvlink, infiniband, ici; or a JSON file\)"):
        load_network("gpu")
    with pytest.raises(MtfcError, match=r"network file '.*nope\.json' does not exist"):
        load_network(str(tmp_path / "nope.json"))
    with pytest.raises(MtfcError, match=r"is a directory"):
        load_network(str(tmp_path))


def test_save_refuses_a_directory(tmp_path):
    with pytest.raises(MtfcError, match="Is a directory"):
        save_network(PRESETS["cpu"], str(tmp_path))
