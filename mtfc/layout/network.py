"""The machine a layout's cost is predicted for: a `Network` of achieved
per-device FLOP/s and, per mesh axis, collective latency and bus bandwidth.

The layout cost model (`mtfc.layout.cost`, contract in docs/layout-search.md) is
linear in ``1/flops_per_s``, ``latency(a)`` and ``1/bandwidth(a)``::

    compute_s = flops / flops_per_s
    comm_s    = sum_a axis_count[a] * latency(a) + axis_bytes[a] / bandwidth(a)

where, per device and step, ``flops`` are the FLOPs after partitioning,
``axis_count[a]`` the number of collectives touching mesh axis ``a`` and
``axis_bytes[a]`` their NCCL-tests *bus* bytes (`comm_analysis.bus_bytes`), so
``bandwidth_Bps`` is a bus bandwidth as nccl-tests reports it ("busbw").
`latency_s` and `bandwidth_Bps` map a mesh-axis name to its value; the key
``"*"`` stands for every axis not named.

**Presets** (`PRESETS`).  ``cpu`` is this project's machine, 8 virtual XLA CPU
devices of one process; its constants are the calibration of
benchmarks/layout.py (the comment above `_CPU` says which run; the first
guesses before it are there too).  The others are published ballpark figures for one
accelerator, not measurements of ours -- a starting point for `--calibrate`:

``nvlink``      an H100 SXM node (NVLink 4, NVSwitch): 900 GB/s bidirectional
                per GPU, NCCL all-reduce busbw about 360-480 GB/s (NVIDIA
                nccl-tests reports); 350e9 B/s, 10 us latency (NCCL's
                small-message all-reduce).  FLOP/s: H100 dense bf16 peak
                989 TFLOP/s at a 40% model-FLOPs utilization, 4e14.
``infiniband``  H100 nodes over NDR InfiniBand, one 400 Gb/s (50 GB/s) HCA per
                GPU, busbw about 40 GB/s per GPU; 20 us latency (a
                multi-node NCCL ring).  FLOP/s as ``nvlink``.
``ici``         a TPU v4 slice: ICI links of about 45 GB/s per direction
                (v5p: about 100 GB/s), a ring along one mesh axis using two
                links, 90e9 B/s; 5 us latency.  FLOP/s: TPU v4 bf16 peak
                275 TFLOP/s at 50%, 1.4e14.

**Files** (`load_network`, `save_network`): JSON ::

    {"name": "h100-node", "flops_per_s": 4e14,
     "latency_s": {"*": 1e-5, "rows": 2e-5},
     "bandwidth_Bps": {"*": 3.5e11},
     "overhead_s": 0.0,
     "calibrated_on": {...}}

``overhead_s`` (a fixed per-step time, default 0; it shifts every candidate
alike, so it never changes a ranking) and ``calibrated_on`` (free-form
provenance written by `--calibrate`) are optional.  ``flops_per_s`` and
bandwidths must be positive, latencies and the overhead non-negative (a
calibration can find a latency too small to measure).  Every mistake is one
`MtfcError` line naming the file and the key.
"""

from __future__ import annotations

import json
import math
import os
import types
from dataclasses import dataclass, field
from typing import Any, Mapping

from mtfc.errors import MtfcError
from mtfc.files.atomic import check_writable, write_text_atomic

_REQUIRED = ("name", "flops_per_s", "latency_s", "bandwidth_Bps")
_OPTIONAL = ("overhead_s", "calibrated_on")


def _number(value: Any, key: str, where: str, *, positive: bool) -> float:
    """`value` as a finite float, > 0 (`positive`) or >= 0; else one line naming `key`."""
    kind = "a positive" if positive else "a non-negative"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MtfcError(f"{where}: {key} must be {kind} number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x < 0 or (positive and x == 0):
        raise MtfcError(f"{where}: {key} must be {kind} finite number, got {value!r}")
    return x


def _axis_map(value: Any, key: str, where: str, *, positive: bool) -> Mapping[str, float]:
    """A read-only {axis name or "*": number} map; one line naming `key` when it is not one."""
    if not isinstance(value, Mapping):
        raise MtfcError(f"{where}: {key} must be an object of mesh axis (or \"*\") -> number, got {value!r}")
    if not value:
        raise MtfcError(f"{where}: {key} is empty; give at least \"*\" (every mesh axis)")
    out = {}
    for axis, x in value.items():
        if not isinstance(axis, str) or not axis:
            raise MtfcError(f"{where}: {key} has a bad mesh axis name {axis!r}")
        out[axis] = _number(x, f"{key}.{axis}", where, positive=positive)
    return types.MappingProxyType(out)


@dataclass(frozen=True)
class Network:
    """Achieved per-device FLOP/s and per-mesh-axis latency (s) and bus bandwidth (B/s).

    Constructing one validates it (`MtfcError`, one line).  The maps are
    read-only copies."""

    name: str
    flops_per_s: float
    latency_s: Mapping[str, float] = field(hash=False)
    bandwidth_Bps: Mapping[str, float] = field(hash=False)
    overhead_s: float = 0.0
    calibrated_on: Mapping[str, Any] | None = field(default=None, hash=False, compare=False)

    def __post_init__(self):
        where = f"network {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise MtfcError(f"network: name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "flops_per_s", _number(self.flops_per_s, "flops_per_s", where, positive=True))
        object.__setattr__(self, "latency_s", _axis_map(self.latency_s, "latency_s", where, positive=False))
        object.__setattr__(self, "bandwidth_Bps", _axis_map(self.bandwidth_Bps, "bandwidth_Bps", where, positive=True))
        object.__setattr__(self, "overhead_s", _number(self.overhead_s, "overhead_s", where, positive=False))
        if self.calibrated_on is not None:
            if not isinstance(self.calibrated_on, Mapping):
                raise MtfcError(f"{where}: calibrated_on must be an object, got {self.calibrated_on!r}")
            object.__setattr__(self, "calibrated_on", types.MappingProxyType(dict(self.calibrated_on)))

    def _lookup(self, table: Mapping[str, float], key: str, axis: str) -> float:
        if axis in table:
            return table[axis]
        if "*" in table:
            return table["*"]
        raise MtfcError(f"network {self.name!r} has no {key} for mesh axis {axis!r} (and no \"*\" entry)")

    def latency(self, axis: str) -> float:
        """Seconds per collective over mesh axis `axis`."""
        return self._lookup(self.latency_s, "latency_s", axis)

    def bandwidth(self, axis: str) -> float:
        """Bus bytes per second of a collective over mesh axis `axis`."""
        return self._lookup(self.bandwidth_Bps, "bandwidth_Bps", axis)

    def compute_seconds(self, flops: float) -> float:
        """``flops / flops_per_s``."""
        return flops / self.flops_per_s

    def seconds(self, features) -> tuple[float, float]:
        """(compute_s, comm_s) of a `CostFeatures` (flops, axis_count, axis_bytes): the linear model
        of the module docstring.  `overhead_s` is not in either; `step_seconds` adds it."""
        comm = 0.0
        for axis in sorted(set(features.axis_count) | set(features.axis_bytes)):
            count = features.axis_count.get(axis, 0.0)
            nbytes = features.axis_bytes.get(axis, 0.0)
            if count:
                comm += count * self.latency(axis)
            if nbytes:
                comm += nbytes / self.bandwidth(axis)
        return self.compute_seconds(features.flops), comm

    def step_seconds(self, features) -> float:
        """Predicted seconds of one step: compute + communication + `overhead_s`."""
        compute, comm = self.seconds(features)
        return compute + comm + self.overhead_s

    def as_dict(self) -> dict:
        """The JSON form (`save_network`); `overhead_s` and `calibrated_on` only when set."""
        d: dict[str, Any] = {"name": self.name, "flops_per_s": self.flops_per_s,
                             "latency_s": dict(self.latency_s), "bandwidth_Bps": dict(self.bandwidth_Bps)}
        if self.overhead_s:
            d["overhead_s"] = self.overhead_s
        if self.calibrated_on is not None:
            d["calibrated_on"] = dict(self.calibrated_on)
        return d


def network_from_dict(data: Any, where: str) -> Network:
    """A `Network` from its JSON form; `where` (a file name) starts every error line."""
    if not isinstance(data, dict):
        raise MtfcError(f"{where}: a network file must hold a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise MtfcError(f"{where}: unknown key {unknown[0]!r} (keys: {', '.join(_REQUIRED + _OPTIONAL)})")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise MtfcError(f"{where}: missing key {missing[0]!r} (required: {', '.join(_REQUIRED)})")
    if not isinstance(data["name"], str) or not data["name"]:
        raise MtfcError(f"{where}: name must be a non-empty string, got {data['name']!r}")
    if "calibrated_on" in data and not isinstance(data["calibrated_on"], dict):
        raise MtfcError(f"{where}: calibrated_on must be an object, got {data['calibrated_on']!r}")
    return Network(
        name=data["name"],
        flops_per_s=_number(data["flops_per_s"], "flops_per_s", where, positive=True),
        latency_s=_axis_map(data["latency_s"], "latency_s", where, positive=False),
        bandwidth_Bps=_axis_map(data["bandwidth_Bps"], "bandwidth_Bps", where, positive=True),
        overhead_s=_number(data.get("overhead_s", 0.0), "overhead_s", where, positive=False),
        calibrated_on=data.get("calibrated_on"))


# The 8 virtual CPU devices of one process on this project's 2-core machine,
# calibrated by `python -m benchmarks.layout --calibrate` (2026-12-03T08:57:58+00:00: 185
# correct measurements -- 164 forward, 21 train steps: most AdamW train-step
# candidates failed the 1e-5 gate and were left out -- of the benchmark
# transformer (two sizes), the MoE and the conv example on mesh rows:2,cols:4; load average
# [2.05, 5.46, 8.22]; relative RMS error of the fit 0.319039).  Axes other
# than rows and cols ("*") take the slower of the two.  The first guesses
# before calibration were 2e9 FLOP/s, 50 us, 2e9 B/s.
_CPU = Network(name="cpu", flops_per_s=6.97e+09, latency_s={"*": 0.000134, "rows": 0.000134, "cols": 0.000118},
               bandwidth_Bps={"*": 5.57e+08, "rows": 1.5e+09, "cols": 5.57e+08}, overhead_s=0.00731)

PRESETS: dict[str, Network] = {
    "cpu": _CPU,
    "nvlink": Network(name="nvlink", flops_per_s=4e14, latency_s={"*": 1e-5}, bandwidth_Bps={"*": 3.5e11}),
    "infiniband": Network(name="infiniband", flops_per_s=4e14, latency_s={"*": 2e-5}, bandwidth_Bps={"*": 4e10}),
    "ici": Network(name="ici", flops_per_s=1.4e14, latency_s={"*": 5e-6}, bandwidth_Bps={"*": 9e10}),
}


def load_network(spec: str) -> Network:
    """A preset by name, or a network JSON file by path.  One-line `MtfcError`
    for an unknown preset (listing them), a missing or unreadable file,
    invalid JSON (line and column), missing or unknown keys, bad values."""
    if spec in PRESETS:
        return PRESETS[spec]
    if not os.path.exists(spec):
        if spec.endswith(".json") or os.sep in spec or "/" in spec:
            raise MtfcError(f"network file {spec!r} does not exist")
        raise MtfcError(f"unknown network {spec!r} (presets: {', '.join(PRESETS)}; or a JSON file)")
    if os.path.isdir(spec):
        raise MtfcError(f"network file {spec!r} is a directory")
    try:
        with open(spec, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise MtfcError(f"network file {spec!r}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise MtfcError(f"network file {spec!r}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return network_from_dict(data, f"network file {spec!r}")


def save_network(net: Network, path: str) -> None:
    """Write `net` as JSON to `path` atomically (`mtfc.files.atomic`); `load_network(path)` reads it back."""
    check_writable(path)
    write_text_atomic(path, json.dumps(net.as_dict(), indent=2) + "\n")
