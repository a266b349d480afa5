"""The predicted cost of one candidate layout (docs/layout-search.md, "Cost model").

For a global module (as the frontend writes it), a mesh and a candidate
(activation rules, parameter rules), per device and per step:

* **compute** -- FLOPs after partitioning.  Each op's global FLOPs (a
  ``dot_general`` 2 x the product of all its factor sizes, a convolution
  2 x output elements x kernel elements per output feature, elementwise ops
  one per result element, a reduce one per operand element, a
  ``reduce_window`` one per result element and window position; data
  movement -- broadcasts, reshapes, slices, constants -- none), divided by
  the product of the mesh sizes of the axes that split the op's factors
  (`op_rules.factors_of`; a factor is named by the result dim, else the
  operand dim, that indexes it, and split as the op's class's rules split
  that name; an axis splits one factor of an op at most).  Replicated work
  counts in full on every device.  Inside loops x `mir.enclosing_trip_count`.
* **communication** -- `layout_cost.predict`'s records (the explicit
  partitioner's collectives, before fusion) as `CostFeatures`: per mesh
  axis, the number of collectives touching it (x trips) and their bus bytes
  (x trips); a collective over several axes counts on each.  A
  `Network` turns them into seconds: ``count x latency + bytes / bandwidth``.
* **memory** -- the per-device peak: the arguments' per-device bytes
  (parameters, optimizer state, inputs, each by its role's rules) plus the
  activations' liveness peak (`memory_analysis`'s plan, sized with the
  candidate's per-device shapes).

`ModuleTable` reads everything the above needs from the IR once; a
candidate's FLOPs and memory are then pure Python, and `predict` (which
walks the IR) runs once per candidate.  The module is never changed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import LayoutRules, Mesh
from mtfc.passes import comm_analysis, layout_cost, memory_analysis, op_rules


@dataclass(frozen=True)
class CostFeatures:
    """What a candidate costs, before a network prices it (the contract in docs/layout-search.md)."""

    flops: float                        # per device per step (loops: x trips)
    axis_count: Mapping[str, float]     # per mesh axis: sum over collectives touching it of trips
    axis_bytes: Mapping[str, float]     # per mesh axis: sum over those collectives of trips * bus_bytes

    def as_dict(self) -> dict:
        return {"flops": self.flops, "axis_count": dict(self.axis_count), "axis_bytes": dict(self.axis_bytes)}


@dataclass
class Candidate:
    """One scored layout."""

    rules: str                 # activation rules ("" = replicated)
    param_rules: str           # parameter rules ("" = parameters follow `rules`)
    features: CostFeatures
    compute_s: float
    comm_s: float
    total_s: float             # compute_s + comm_s
    peak_bytes: int            # per device: arguments + activation peak
    fits: bool                 # peak_bytes <= budget (True without a budget)
    collectives: list[dict]    # the biggest contributors, largest time first
    argument_bytes: int = 0    # of peak_bytes: parameters, optimizer state, inputs
    activation_bytes: int = 0  # of peak_bytes: the liveness peak

    def as_dict(self) -> dict:
        return {"rules": self.rules, "param_rules": self.param_rules, "features": self.features.as_dict(),
                "compute_s": self.compute_s, "comm_s": self.comm_s, "total_s": self.total_s,
                "peak_bytes": self.peak_bytes, "argument_bytes": self.argument_bytes,
                "activation_bytes": self.activation_bytes, "fits": self.fits, "collectives": self.collectives}


@dataclass(frozen=True)
class _FlopOp:
    """One op's compute: global FLOPs per step (x trips), its factors (dim name, size), its class."""

    flops: float
    factors: tuple[tuple[str, int], ...]
    cls: str


@dataclass
class ModuleTable:
    """What the cost of any layout of one module needs, read from the IR once."""

    module: ir.Module
    flop_ops: list[_FlopOp]
    arguments: list[tuple[list[str], tuple[int, ...], str, int]]  # dims, shape, role, element bytes
    liveness: memory_analysis.LivenessPlan
    _verified: bool = False
    _split_cache: dict = field(default_factory=dict)


def module_table(module: ir.Module) -> ModuleTable:
    """Read `module` (global, IR contract checked) once for `evaluate`."""
    from mtfc.passes.verify_names import verify_module

    verify_module(module)
    kind = mir.partitioning(module)
    if kind not in ("none", "gspmd"):
        raise MtfcError(f"layout search: the module is already partitioned ({kind}); search from the global module")
    with module.context:
        flop_ops = flop_table(module)
        args = []
        fn = mir.entry_function(module)
        for arg, sig in zip(fn.regions[0].blocks[0].arguments, mir.arguments(module)):
            ebytes = comm_analysis.element_bytes(str(ir.RankedTensorType(arg.type).element_type))
            args.append((list(sig.dims), tuple(sig.shape), sig.role, ebytes))
        plan = memory_analysis.plan(module)
    return ModuleTable(module, flop_ops, args, plan, _verified=True)


def _name_factors(op: ir.Operation, factors: op_rules.OpFactors) -> tuple[tuple[str, int], ...]:
    """Each factor of `op` named by the result dim indexing it, else the first operand dim."""
    names: dict[int, str] = {}
    result_dims = mir.op_result_dims(op) or []
    for r, mapping in enumerate(factors.results):
        dims = result_dims[r] if r < len(result_dims) else []
        for d, f in enumerate(mapping):
            if f is not None and d < len(dims):
                names.setdefault(f, dims[d])
    for i, mapping in enumerate(factors.operands):
        if not mapping:
            continue
        dims = mir.value_dims(op.operands[i])
        for d, f in enumerate(mapping):
            if f is not None and d < len(dims):
                names.setdefault(f, dims[d])
    return tuple((names[f], factors.factors[f].size) for f in sorted(names))


def op_flops(op: ir.Operation) -> float:
    """The global FLOPs of one run of `op` (see the module docstring); 0 for data movement."""
    rule = op_rules.rule_of(op.name)
    family = rule.family if rule is not None else None
    shape = lambda v: list(ir.RankedTensorType(v.type).shape)  # noqa: E731
    if op.name == "stablehlo.dot_general":
        return 2.0 * math.prod(f.size for f in op_rules.factors_of(op).factors)
    if op.name == "stablehlo.convolution":
        c = op_rules.conv_numbers(op)
        rhs = shape(op.operands[1])
        return 2.0 * math.prod(shape(op.results[0])) * math.prod(rhs) / rhs[c.rhs[1]]
    if family == "elementwise":
        return float(math.prod(shape(op.results[0])))
    if op.name == "stablehlo.reduce":
        return float(sum(math.prod(shape(x)) for x in op.operands[: len(op.operands) // 2]))
    if op.name == "stablehlo.reduce_window":
        window = list(ir.DenseI64ArrayAttr(op.attributes["window_dimensions"]))
        return float(math.prod(shape(op.results[0])) * math.prod(window))
    return 0.0


def flop_table(module: ir.Module) -> list[_FlopOp]:
    """Every op with FLOPs in @main (loop bodies included), grouped by (factors, class)."""
    totals: dict[tuple, float] = {}
    for op in mir.walk_ops(mir.entry_function(module)):
        if mir.DIMS not in op.attributes or op.name == "stablehlo.while" or len(op.results) != 1:
            continue
        flops = op_flops(op)
        if not flops:
            continue
        factors = op_rules.factors_of(op)
        named = _name_factors(op, factors) if factors is not None else ()
        key = (named, mir.op_class(op))
        totals[key] = totals.get(key, 0.0) + flops * mir.enclosing_trip_count(op)
    return [_FlopOp(f, named, cls) for (named, cls), f in totals.items()]


def per_device_flops(table: ModuleTable, layouts: mir.Layouts) -> float:
    """Per-device FLOPs per step under `layouts` (see the module docstring)."""
    mesh = layouts.mesh
    total = 0.0
    for op in table.flop_ops:
        rules = layouts.rules(cls=op.cls)
        used: set[str] = set()
        split = 1
        for name, size in op.factors:
            axes = [a for a in rules.axes_for(name) if a not in used]
            k = math.prod(mesh.axis_size(a) for a in axes)
            if axes and size % k == 0:
                used.update(axes)
                split *= k
        total += op.flops / split
    return total


def peak_memory(table: ModuleTable, layouts: mir.Layouts) -> tuple[int, int]:
    """(argument bytes, activation peak bytes) per device under `layouts`."""
    shape_of = memory_analysis.per_device_shape_fn(table.module, layouts)
    memo: dict = {}

    def local(dims, shape, cls="activation"):  # shape_of, remembered: many values share dims and shape
        key = (tuple(dims), shape, cls)
        out = memo.get(key)
        if out is None:
            out = memo[key] = shape_of(dims, shape, cls)
        return out

    args = sum(math.prod(local(dims, shape, mir.class_of_role(role))) * eb for dims, shape, role, eb in table.arguments)
    return args, memory_analysis.peak_bytes(table.liveness, local)


def features_of(prediction: layout_cost.Prediction, flops: float) -> CostFeatures:
    """`CostFeatures` of predicted collectives: per axis, trips and trips x bus bytes."""
    count: dict[str, float] = {}
    nbytes: dict[str, float] = {}
    for c in prediction.collectives:
        for a in c.axes:
            count[a] = count.get(a, 0.0) + c.trips
            nbytes[a] = nbytes.get(a, 0.0) + c.trips * c.bus_bytes
    return CostFeatures(flops, count, nbytes)


def _verb(kind: str) -> str:
    return {"all_reduce": "sums", "all_gather": "gathers", "all_to_all": "moves", "reduce_scatter": "scatters",
            "collective_permute": "halo of"}.get(kind, kind)


def top_collectives(prediction: layout_cost.Prediction, network, *, top: int = 4) -> list[dict]:
    """The predicted collectives grouped by (kind, axes, dims), with their
    count, bus bytes and seconds per step (x trips), largest time first."""
    groups: dict[tuple, dict] = {}
    for c in prediction.collectives:
        key = (c.kind, tuple(c.axes), tuple(c.dims))
        g = groups.setdefault(key, {"kind": c.kind, "axes": list(c.axes), "dims": list(c.dims), "count": 0,
                                    "bytes": 0.0, "seconds": 0.0, "reason": c.reason})
        g["count"] += c.trips
        g["bytes"] += c.trips * c.bus_bytes
        g["seconds"] += c.trips * sum(network.latency(a) + c.bus_bytes / network.bandwidth(a) for a in c.axes)
    return sorted(groups.values(), key=lambda g: (-g["seconds"], -g["bytes"], g["kind"]))[:top]


def describe_collective(c: dict) -> str:
    """``all_reduce over cols: sums d_ff`` (x count when more than one)."""
    dims = "->".join(c["dims"]) if c["kind"] == "all_to_all" else ", ".join(c["dims"])
    times = f" x{c['count']:g}" if c["count"] != 1 else ""
    return f"{c['kind']} over {'+'.join(c['axes'])}: {_verb(c['kind'])} {dims}{times}"


def layouts_of(mesh: Mesh, rules: str, param_rules: str) -> mir.Layouts:
    """The `mir.Layouts` of a candidate (``param_rules == ""``: parameters follow `rules`)."""
    act = LayoutRules.parse(rules)
    return mir.Layouts(mesh, act, LayoutRules.parse(param_rules) if param_rules else act)


def evaluate_table(table: ModuleTable, mesh: Mesh, rules: str, param_rules: str, *, network,
                   memory_budget: int | None = None) -> Candidate:
    """Score one candidate from a `ModuleTable`; `MtfcError` (one line) when
    the explicit partitioner refuses the layout (`layout_cost.predict`)."""
    layouts = layouts_of(mesh, rules, param_rules)
    with table.module.context:
        prediction = layout_cost.predict(table.module, layouts, verify=not table._verified)
        flops = per_device_flops(table, layouts)
        args, activations = peak_memory(table, layouts)
    features = features_of(prediction, flops)
    compute_s, comm_s = network.seconds(features)
    peak = args + activations
    return Candidate(rules, param_rules, features, compute_s, comm_s, compute_s + comm_s, peak,
                     memory_budget is None or peak <= memory_budget, top_collectives(prediction, network),
                     argument_bytes=args, activation_bytes=activations)


_LOCATION = re.compile(r" at (loc\(.*?\)|\S+ \([^)]*\)|\S+)")


def refusal_reason(error: MtfcError) -> str:
    """An invalid candidate's message without op locations, to group alike
    refusals: layout-cost's "no prediction for <op> with split values" up to
    its explanation, any other message whole (at most 120 characters)."""
    text = _LOCATION.sub("", str(error))
    if text.startswith("layout-cost has no prediction for"):
        return text.split(":")[0]
    return text if len(text) <= 120 else text[:119] + "~"
