"""Why each collective of a module communicates, and the causes grouped
(`mtfc inspect`'s summary).

**Reasons.**  `attach_reasons` gives each collective of the report (the
measured ones: read from the per-device StableHLO or from XLA's HLO) a
one-line ``reason``: the one `mtfc.passes.layout_cost.predict` records for
the global program ("sum over dim 'batch' split over rows+cols", "dim
'd_model' is needed without rows+cols", ...).  A measured collective takes
the reason of the predicted one at its location of its kind and axes, else
of its kind, else of any kind at its location, else the commonest reason among the predicted
collectives of its family (an all_reduce, or a reduce_scatter made of one,
is the family ``sum``) over the same mesh axes -- fuse-collectives merges
collectives and moves them, so locations do not always match; when nothing
matches (or the prediction fails) the reason says what the kind does.

**Groups.**  `group_causes` groups collectives by kind, axes, scope and
reason, where the scope is the location without its source line and with
layer numbers folded (a scope component of letters then digits:
``block3/feed_forward/wo/einsum`` -> ``block*/feed_forward/wo/einsum``, the
layers counted) and ops' uniquifying suffixes dropped (``broadcast_2`` ->
``broadcast``, ``reshape_1/reshape`` -> ``reshape/reshape``).  Each group's
time is its collectives' ``latency + bus bytes / bandwidth`` per execution,
times their trips, at a stated `Bandwidth`.

**Bandwidth.**  `DEFAULT_BANDWIDTH`: the ``cpu`` preset of
`mtfc.layout.network` when that module exists, else this project's own
documented figure for it -- 2 GB/s bus bandwidth and 50 us per collective
(8 virtual XLA CPU devices in one process).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from jax.extend.mlir import ir

_FAMILY = {"all_reduce": "sum", "reduce_scatter": "sum"}

GENERIC = {
    "all_reduce": "sums partial results over {axes}",
    "reduce_scatter": "sums partial results over {axes} and keeps each device's shard",
    "all_gather": "gathers a dim split over {axes} where it is needed whole",
    "all_to_all": "moves {axes} from one dim to another (a layout change)",
    "collective_permute": "exchanges halos or windows with neighbours along {axes}",
    "collective_broadcast": "broadcasts over {axes}",
}


@dataclass(frozen=True)
class Bandwidth:
    """The figures a collective's time is computed at: bytes/s and seconds per collective."""

    name: str
    bytes_per_s: float
    latency_s: float

    def seconds(self, bus_bytes: float) -> float:
        return self.latency_s + bus_bytes / self.bytes_per_s

    def __str__(self) -> str:
        return f"{self.bytes_per_s / 1e9:g} GB/s bus bandwidth and {self.latency_s * 1e6:g} us per collective ({self.name})"


def default_bandwidth() -> Bandwidth:
    """The ``cpu`` preset of `mtfc.layout.network` if present, else the same figures documented here."""
    try:
        from mtfc.layout.network import PRESETS  # type: ignore[import-not-found]

        cpu = PRESETS["cpu"]
        return Bandwidth("the cpu network preset", float(cpu.bandwidth_Bps["*"]), float(cpu.latency_s["*"]))
    except Exception:  # noqa: BLE001 -- the module or its fields are absent: the documented figures
        return Bandwidth("this machine's 8 virtual CPU devices, docs/cli.md", 2e9, 5e-5)


def _predicted(module: ir.Module) -> list:
    from mtfc.passes import layout_cost
    from mtfc.tools.compare import global_program_text

    text = global_program_text(module)
    clone = ir.Module.parse(text, module.context)
    return layout_cost.predict(clone).collectives


def attach_reasons(module: ir.Module, ops: list[dict]) -> None:
    """Set ``op["reason"]`` on each collective record of the report (see the module docstring)."""
    try:
        with module.context:
            predicted = _predicted(module)
    except Exception:  # noqa: BLE001 -- a program layout_cost cannot read: the generic reasons
        predicted = []
    by_axes: dict[tuple, list[str]] = {}  # in program order: the k-th measured there takes the k-th reason
    by_kind_loc: dict[tuple, str] = {}
    by_loc: dict[str, str] = {}
    by_family: dict[tuple, Counter] = {}
    for p in predicted:
        by_axes.setdefault((p.kind, p.location, tuple(p.axes)), []).append(p.reason)
        by_kind_loc.setdefault((p.kind, p.location), p.reason)
        by_loc.setdefault(p.location, p.reason)
        by_family.setdefault((_FAMILY.get(p.kind, p.kind), tuple(p.axes)), Counter())[p.reason] += 1
    for op in ops:
        axes = tuple(op["axes"] or ())
        same = by_axes.get((op["kind"], op["location"], axes))
        reason = ((same.pop(0) if len(same) > 1 else same[0]) if same else None) or \
            by_kind_loc.get((op["kind"], op["location"])) or by_loc.get(op["location"])
        if reason is None:
            common = by_family.get((_FAMILY.get(op["kind"], op["kind"]), axes))
            reason = common.most_common(1)[0][0] if common else None
        if reason is None:
            where = "+".join(axes) if op["axes"] else ("part of " + "+".join(op.get("spans") or ["?"]))
            reason = GENERIC.get(op["kind"], "{axes}").format(axes=where or "no axes")
        op["reason"] = reason


_SOURCE = re.compile(r"\(([^()]*:\d+(:\d+)?)\)$")
_LAYER = re.compile(r"^([A-Za-z_]*[A-Za-z])(\d+)$")
_SUFFIX = re.compile(r"_\d+$")


def scope_of(location: str) -> tuple[str, tuple[str, ...]]:
    """``block3/ff/wo/einsum_1(model.py:70:1)`` -> (``block*/ff/wo/einsum``, (``block3``,)):
    the location's scope with layer numbers folded, and the layers it names."""
    scope = _SOURCE.sub("", location).strip() or location
    parts = scope.split("/")
    layers = []
    for i, p in enumerate(parts):
        m = _LAYER.match(p) if i < len(parts) - 1 else None
        if m:  # block3 -> block*
            parts[i] = m.group(1) + "*"
            layers.append(p)
        else:  # an op's uniquifying suffix: broadcast_2 -> broadcast
            parts[i] = _SUFFIX.sub("", p)
    return "/".join(parts), tuple(layers)


@dataclass
class Cause:
    kind: str
    axes: str
    scope: str
    reason: str
    count: int = 0          # collectives (each once, however many trips)
    executions: int = 0     # per step
    bus_bytes: float = 0.0  # per device per step
    seconds: float = 0.0
    layers: set = field(default_factory=set)

    def words(self) -> str:
        """``all_gather over rows+cols: block*/attention/q -- dim 'd_model' is needed ... (x2 layers)``."""
        n_layers = len(self.layers)
        extra = []
        if n_layers > 1:
            extra.append(f"x{n_layers} layers")
        if self.count > 1 and self.count != n_layers:
            extra.append(f"{self.count} ops")
        if self.executions != self.count:
            extra.append(f"{self.executions} runs per step")
        tail = f" ({', '.join(extra)})" if extra else ""
        from mtfc.tools.report import middle

        return f"{self.kind} over {self.axes}: {middle(self.scope, 60)} -- {self.reason}{tail}"


def group_causes(ops: list[dict], bandwidth: Bandwidth) -> list[Cause]:
    """The collectives grouped by cause (module docstring), most time first."""
    groups: dict[tuple, Cause] = {}
    for op in ops:
        axes = "+".join(op["axes"]) if op["axes"] else ("part of " + "+".join(op.get("spans") or ["?"]))
        scope, layers = scope_of(op["location"])
        reason = op.get("reason") or GENERIC.get(op["kind"], "").format(axes=axes)
        key = (op["kind"], axes, scope, reason)
        c = groups.setdefault(key, Cause(op["kind"], axes, scope, reason))
        trips = op.get("trips", 1)
        c.count += 1
        c.executions += trips
        c.bus_bytes += op["bus_bytes"] * trips
        c.seconds += bandwidth.seconds(op["bus_bytes"]) * trips
        if layers:
            c.layers.add(layers)
    return sorted(groups.values(), key=lambda c: (-c.seconds, c.kind, c.scope))
