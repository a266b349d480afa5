"""`mtfc run --check --bisect`: the first op where a sharded program and its
unsharded reference part ways.

When an output of ``--check`` differs, the output alone does not say where
the program went wrong.  `bisect` runs both programs once more on the same
arguments with every value of their top-level ops returned as an extra
result ("probes"), and compares them op by op in the reference's program
order:

* **The reference** is the unsharded global program: the nested
  ``module @mtfc.reference`` of an explicit or shardy module, the module
  stripped of its shardings for a gspmd module.  Each of its ops is named by
  its location (``"<scope>/<op>"("<file>":<line>:1)``, docs/IR.md,
  "Locations"); the value of a location is the result of the *last* op with
  that location (a frontend op that lowers to several StableHLO ops shares
  one location; its last op is its value).
* **The sharded side.**  In a per-device program (explicit, shardy) the ops
  with a location -- the op itself and everything a partitioner made for it,
  collectives included (passes give new ops the location of the op they
  stem from; a fused collective has a fused location naming each op it
  serves) -- are candidates for that location's value.  Each candidate's
  per-device buffers are put together into the global value by its layout
  (its ``mtfc.dims`` and the module's rules, by its op's class); a
  candidate whose per-device shape is not its layout's is not comparable,
  and one whose devices hold different values for the same block (a partial
  sum not yet reduced, a wrong replica group) is *inconsistent*.  In a gspmd
  module, XLA partitions the probed program itself: each probe is returned
  replicated (XLA gathers it), so every device holds the global value.
* **The verdict.**  A location *agrees* when, for each result of its value,
  some consistent candidate equals the reference's within the dtype's
  tolerance (`check.TOLERANCE`, normwise relative error; bf16's for every
  float value of a bf16 step), *differs* when candidates exist and none
  agrees, and is *unseen* when no candidate is comparable (an op the
  partitioner folded away, or a value kept in another layout).  The first
  location that differs, in the reference's order, is the finding: no op
  before it differs, so the fault is in it or in what fed it.

The finding names the op, its model-file location, dims, layout, per-device
shape, how far off it is, and the collectives that fed it: in a per-device
program, the collectives of that location and those its operands come from
(through data movement: reshapes, transposes, converts, slices, broadcasts);
in a gspmd module, the collectives XLA made for that op (its HLO's
``op_name``).

Limits: ops inside a loop body (``stablehlo.while``: `mtf.scan`, pipelines)
are not probed one by one; the loop is one op, its results the values.  The
probed run holds every value of the program at once (memory: a run's every
intermediate).  One process only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import func
from jaxlib import xla_client

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.layout.report import human_bytes
from mtfc.mesh import LayoutRules, Mesh, TensorLayout
from mtfc.passes import comm_analysis
from mtfc.runtime import devices as rt_devices
from mtfc.runtime.check import TOLERANCE, relative_error
from mtfc.runtime.execute import compile_options, strip_shardings
from mtfc.runtime.host_data import shard_to_devices
from mtfc.runtime.sources import as_source

# ---------------------------------------------------------------- locations

# A name location: "name"("file":line:col) -- possibly inside a fused location.
_NAME_LOC = re.compile(r'"((?:[^"\\]|\\.)*)"\("((?:[^"\\]|\\.)*)":(\d+):\d+\)')

Key = tuple[str, str, int]  # (scope/op name, model file, line)


def location_keys(loc: ir.Location) -> list[Key]:
    """The op names a location gives: one for a frontend op's location, one
    per fused op for a fused location (``loc(fused[...])``); none for an
    unknown or file-only location."""
    return [(m.group(1), m.group(2), int(m.group(3))) for m in _NAME_LOC.finditer(str(loc))]


def key_text(key: Key) -> str:
    name, file, line = key
    return f"{name} ({file}:{line})"


# ------------------------------------------------------------------ probes

DATA_MOVEMENT = frozenset({
    "stablehlo.reshape", "stablehlo.transpose", "stablehlo.convert", "stablehlo.broadcast_in_dim",
    "stablehlo.slice", "stablehlo.dynamic_slice", "stablehlo.concatenate", "stablehlo.pad",
    "stablehlo.get_tuple_element", "stablehlo.bitcast_convert", "stablehlo.copy",
})
COLLECTIVES = frozenset(f"stablehlo.{k}" for k in comm_analysis.KINDS)


@dataclass
class Probe:
    """One top-level op result returned as an extra result."""

    op: ir.Operation
    index: int  # which result of `op`
    keys: list[Key]
    dims: list[str]
    cls: str
    dtype: str
    shape: tuple[int, ...]  # the value's type (local in a per-device program)
    position: int  # the op's position in @main's body


def probes_of(fn: ir.Operation) -> list[Probe]:
    """Every tensor result of the ops directly in `fn`'s body that have a name location and dims."""
    out = []
    for position, op in enumerate(mir.body_ops(fn)):
        if op.name == "func.return":
            continue
        keys = location_keys(op.location)
        dims = mir.op_result_dims(op)
        if not keys or dims is None or len(dims) != len(op.results):
            continue
        classes = mir.op_result_classes(op)
        for k, result in enumerate(op.results):
            if not isinstance(result.type, ir.RankedTensorType):
                continue
            t = ir.RankedTensorType(result.type)
            out.append(Probe(op, k, keys, dims[k], classes[k], mir.dtype_name(t.element_type), tuple(t.shape),
                             position))
    return out


def add_results(fn: ir.Operation, probes: list[Probe], sharding: str | None) -> None:
    """Append each probe's value to @main's results (after the module's own),
    named ``bisect/K``; `sharding`: their ``mhlo.sharding``, if any."""
    block = fn.regions[0].blocks[0]
    ret = block.operations[len(block.operations) - 1]
    values = [p.op.results[p.index] for p in probes]
    with ir.InsertionPoint(ret), ret.location:
        func.ReturnOp(list(ret.operands) + values)
    ret.erase()
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    fn.attributes["function_type"] = ir.TypeAttr.get(
        ir.FunctionType.get(list(ftype.inputs), list(ftype.results) + [v.type for v in values]))
    old = ([ir.DictAttr(a) for a in ir.ArrayAttr(fn.attributes["res_attrs"])] if "res_attrs" in fn.attributes
           else [ir.DictAttr.get({}) for _ in ftype.results])
    new = []
    for k, p in enumerate(probes):
        attrs = {mir.NAME: ir.StringAttr.get(f"bisect/{k}"), mir.DIMS: mir.str_array(p.dims)}
        if sharding is not None:
            attrs["mhlo.sharding"] = ir.StringAttr.get(sharding)
        new.append(ir.DictAttr.get(attrs))
    fn.attributes["res_attrs"] = ir.ArrayAttr.get(old + new)


def _clone(module: ir.Module) -> ir.Module:
    return ir.Module.parse(module.operation.get_asm(enable_debug_info=True), module.context)


# ------------------------------------------------------------------- runs


@dataclass
class ProbedRun:
    """The probes of one program and, for each, its buffer on every device (mesh order)."""

    probes: list[Probe]
    buffers: list[list[np.ndarray]]
    module: ir.Module  # the probed program (keeps the probes' ops alive)
    hlo_text: str = ""

    def order(self) -> dict:
        """Each op of @main -> its position."""
        return {op: k for k, op in enumerate(mir.body_ops(mir.entry_function(self.module)))}


def _run(module: ir.Module, text: str, kind: str, devices: list, arguments: list, layouts: list, inputs: dict,
         first: int, probes: list[Probe]) -> ProbedRun:
    client = devices[0].client
    try:
        executable = client.compile_and_load(text, xla_client.DeviceList(tuple(devices)),
                                             compile_options(kind, devices))
    except Exception as e:
        raise MtfcError(f"bisect: XLA could not compile the probed program: {str(e).strip().splitlines()[0]}") \
            from None
    args = [shard_to_devices(as_source(inputs[sig.name]), layout, devices, mir.numpy_dtype(sig.dtype))
            for sig, layout in zip(arguments, layouts)]
    results = executable.execute_sharded(args)
    position = {dev.id: d for d, dev in enumerate(devices)}
    per_output = [sorted(shards, key=lambda a: position[next(iter(a.devices())).id])
                  for shards in results.disassemble_into_single_device_arrays()]
    buffers = [[np.asarray(s) for s in shards] for shards in per_output[first:]]
    hlo = ""
    if kind == "gspmd":
        try:
            hlo = executable.hlo_modules()[0].to_string()
        except Exception:  # a backend without HLO text: no collectives to name
            hlo = ""
    return ProbedRun(probes, buffers, module, hlo)


def run_probed(module: ir.Module, inputs: dict, *, backend: str = "cpu") -> tuple[ProbedRun, ProbedRun]:
    """The sharded program and the unsharded reference of `module`, each run
    once on `inputs` (argument name -> global array) with every probe returned."""
    kind = mir.partitioning(module)
    if kind not in ("explicit", "gspmd", "shardy"):
        raise MtfcError(f"--bisect needs a partitioned module (explicit, gspmd or shardy), not partitioning {kind!r}")
    arguments = mir.arguments(module)
    n_results = len(mir.results(module))
    mesh = mir.module_mesh(module)
    layouts = mir.module_layouts(module)
    devices = rt_devices.devices(backend, mesh.size)
    if len(rt_devices.addressable(devices)) < len(devices):
        raise MtfcError("--bisect runs in one process: its mesh's devices span several processes")
    missing = [s.name for s in arguments if s.name not in inputs]
    if missing:
        raise MtfcError(f"bisect: no data for argument(s) {', '.join(missing)}")

    sharded = _clone(module)
    if kind in mir.PER_DEVICE:
        reference = mir.reference_module(module)
    else:
        reference = strip_shardings(module)
    with module.context:
        fn = mir.entry_function(sharded)
        own = probes_of(fn)
        add_results(fn, own, "{manual}" if kind == "shardy" else "{replicated}" if kind == "gspmd" else None)
        sharded_text = mir.program_text(sharded)  # without the nested reference
        ref_fn = mir.entry_function(reference)
        theirs = probes_of(ref_fn)
        add_results(ref_fn, theirs, None)
        reference_text = mir.strip_partitioning_text(reference)
    arg_layouts = [layouts.of_signature(s) for s in arguments]
    one = Mesh(())
    whole = [s.layout(LayoutRules(), one) for s in arguments]
    ours = _run(sharded, sharded_text, kind, devices, arguments, arg_layouts, inputs, n_results, own)
    ref = _run(reference, reference_text, "none", devices[:1], arguments, whole, inputs, n_results, theirs)
    return ours, ref


# -------------------------------------------------------------- comparing


@dataclass
class Candidate:
    """One sharded value put together for a location, and how it compares."""

    probe: Probe
    layout: TensorLayout | None
    error: float
    inconsistent: tuple[int, int] | None = None  # two devices holding different values of one block
    spread: float = 0.0  # how far apart they are (relative error)


@dataclass
class Finding:
    """The first location whose sharded value differs from the reference's."""

    key: Key
    ref_op: ir.Operation
    dims: list[str]
    shape: tuple[int, ...]
    dtype: str
    tolerance: float
    best: Candidate | None  # the candidate closest to the reference
    candidates: list[Candidate]
    fed_by: list[comm_analysis.Collective]
    compared: int  # locations compared before (and with) this one
    ops_before: int  # locations that agreed before it
    mode: str
    layout: TensorLayout
    sharding: str | None = None  # the op's mhlo.sharding (gspmd)


@dataclass
class Bisection:
    finding: Finding | None
    agreed: int
    unseen: int


def _host_dtype(dtype) -> np.dtype:
    """Float values are compared in f64 (bf16 too); others as they are."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float64) if dtype.kind in "fc" or dtype.name == "bfloat16" else dtype


def _assemble(buffers: list[np.ndarray], layout: TensorLayout, tolerance: float):
    """The global value from per-device buffers; and the first two devices
    holding different values of one block (beyond `tolerance`), if any."""
    out = np.empty(layout.sizes, dtype=_host_dtype(buffers[0].dtype))
    first: dict[tuple, int] = {}
    worst, pair = 0.0, None
    for d, local in enumerate(buffers):
        index = layout.shard_slices(d)
        key = tuple((s.start, s.stop) for s in index)
        value = np.asarray(local, dtype=out.dtype)
        if key not in first:
            first[key] = d
            out[index] = value
            continue
        error = relative_error(value, out[index])
        if error > tolerance and error > worst:
            worst, pair = error, (first[key], d)
    return out, pair, worst


def _layout_for(probe: Probe, global_shape, layouts: mir.Layouts, kind: str) -> TensorLayout | None:
    mesh = layouts.mesh
    if kind == "gspmd":  # XLA returned every probe replicated
        return TensorLayout(tuple(probe.dims), tuple(global_shape), tuple(() for _ in probe.dims), mesh)
    for cls in dict.fromkeys((probe.cls, "activation", "param")):
        try:
            layout = layouts.of_value(probe.dims, global_shape, cls=cls)
        except MtfcError:
            continue
        if tuple(layout.local_sizes) == tuple(probe.shape):
            return layout
    return None


def _tolerance(dtype: str, precision: str) -> float:
    if dtype in TOLERANCE and precision == "bf16":
        return max(TOLERANCE[dtype], TOLERANCE["bf16"])
    return TOLERANCE.get(dtype, 0.0)


def compare_runs(module: ir.Module, ours: ProbedRun, ref: ProbedRun) -> Bisection:
    """Walk the reference's locations in program order; the first that differs."""
    kind = mir.partitioning(module)
    layouts = mir.module_layouts(module)
    precision = mir.compute_precision(module) if mir.step_kind(module) == "train" else "f32"

    # The reference's value of each location: the results of its last op.
    last: dict[Key, int] = {}  # key -> index of the first probe of its last op
    order: list[Key] = []
    previous = -1
    for i, p in enumerate(ref.probes):
        key = p.keys[0]
        if p.position != previous:
            if key not in last:
                order.append(key)
            last[key] = i
            previous = p.position
    order.sort(key=lambda k: last[k])

    by_key: dict[Key, list[int]] = {}
    for i, p in enumerate(ours.probes):
        for key in dict.fromkeys(p.keys):
            by_key.setdefault(key, []).append(i)

    agreed = unseen = 0
    for position, key in enumerate(order):
        start = last[key]
        ref_op = ref.probes[start].op
        results = [j for j in range(start, len(ref.probes)) if ref.probes[j].position == ref.probes[start].position]
        seen, differs = False, None
        for j in results:
            want = ref.probes[j]
            expected = ref.buffers[j][0]
            tolerance = _tolerance(want.dtype, precision)
            candidates = []
            for i in by_key.get(key, []):
                got = ours.probes[i]
                if got.dims != want.dims or got.dtype != want.dtype:
                    continue
                layout = _layout_for(got, want.shape, layouts, kind)
                if layout is None:
                    continue
                value, pair, spread = _assemble(ours.buffers[i], layout, tolerance)
                candidates.append(Candidate(got, layout, relative_error(value, expected), pair, spread))
            if not candidates:
                continue
            seen = True
            if not any(c.error <= tolerance and c.inconsistent is None for c in candidates):
                differs = (want, tolerance, candidates)
                break
        if differs is not None:
            want, tolerance, candidates = differs
            best = min(candidates, key=lambda c: (c.inconsistent is not None, c.error))
            layout = layouts.of_value(want.dims, want.shape, cls=want.cls)
            sharding = None
            fed = (_hlo_collectives(ours.hlo_text, layouts.mesh, key) if kind == "gspmd"
                   else _feeding_collectives([c.probe.op for c in candidates], key, layouts.mesh, ours.order()))
            if kind == "gspmd":
                sharded_op = next((ours.probes[i].op for i in by_key.get(key, [])), None)
                if sharded_op is not None and "mhlo.sharding" in sharded_op.attributes:
                    sharding = ir.StringAttr(sharded_op.attributes["mhlo.sharding"]).value
            finding = Finding(key, ref_op, want.dims, want.shape, want.dtype, tolerance, best, candidates, fed,
                              position + 1, agreed, kind, layout, sharding)
            return Bisection(finding, agreed, unseen)
        if seen:
            agreed += 1
        else:
            unseen += 1
    return Bisection(None, agreed, unseen)


def _feeding_collectives(ops: list[ir.Operation], key: Key, mesh: Mesh,
                         order: dict) -> list[comm_analysis.Collective]:
    """The collectives made for `key` and those `ops`' operands come from
    (through data movement and ops of `key`), each once, in program order
    (`order`: op -> its position in @main)."""
    found, seen = [], set()
    stack = list(ops)
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        if op.name in COLLECTIVES:
            found.append(op)
        for operand in op.operands:
            if isinstance(operand, ir.BlockArgument):
                continue
            owner = ir.OpResult(operand).owner
            owner = owner.operation if hasattr(owner, "operation") else owner
            if owner.name in COLLECTIVES or owner.name in DATA_MOVEMENT or key in location_keys(owner.location):
                stack.append(owner)
    records = []
    for op in sorted(found, key=lambda o: order.get(o, 0)):
        record = comm_analysis.stablehlo_collective(op, mesh)
        if record is not None:
            records.append(record)
    return records


def _hlo_collectives(text: str, mesh: Mesh, key: Key) -> list[comm_analysis.Collective]:
    """The collectives of XLA's partitioned program made for op `key` (by its ``op_name``)."""
    if not text:
        return []
    name = key[0]
    return [c for c in comm_analysis.hlo_collectives(text, mesh)
            if c.location.split("(")[0] == name]


# -------------------------------------------------------------- reporting


def _layout_text(layout: TensorLayout) -> str:
    parts = [f"{d}:{'+'.join(a)}" if a else f"{d}:-" for d, a in zip(layout.dims, layout.axes)]
    return ", ".join(parts) or "(scalar)"


def _shape_text(shape) -> str:
    return "x".join(map(str, shape)) or "scalar"


def _collective_text(c: comm_analysis.Collective, mesh: Mesh) -> str:
    if c.kind == "collective_permute":
        over = f"along {'+'.join(c.axes)}" if c.axes else "along no mesh axis"
        groups = f"pairs {c.groups}"
    else:
        over = f"over {'+'.join(c.axes)}" if c.axes else "over groups that are no mesh axes' groups"
        groups = f"groups {c.groups}"
        if c.axes is None and c.spans:
            over += f" (members differ along {'+'.join(c.spans)})"
    return f"{c.kind} {over}, {groups}, {c.shape} ({human_bytes(c.bytes)}) at {c.location}"


def report_lines(bisection: Bisection, mesh: Mesh) -> list[str]:
    """The finding as one block of lines (or one line saying that every op agrees)."""
    f = bisection.finding
    if f is None:
        return [f"bisect: no op's sharded value differs from the unsharded run's "
                f"({bisection.agreed} op(s) compared, {bisection.unseen} not comparable)"]
    lines = [f"bisect: first op whose sharded value differs from the unsharded run's "
             f"({f.ops_before} op(s) before it agree):"]
    rows = [
        ("op", f"{f.ref_op.name}  {f.key[0]}"),
        ("at", f"{f.key[1]}:{f.key[2]}"),
        ("dims", f"[{', '.join(f.dims)}]  global {_shape_text(f.shape)} {f.dtype}"),
        ("layout", _layout_text(f.layout) + (f"  (mhlo.sharding {f.sharding})" if f.sharding else "")),
        ("per device", _shape_text(f.layout.local_sizes) + f" on each of {mesh.size} devices"),
    ]
    best = f.best
    if best is not None:
        error = (f"max rel err {best.error:.3e} (tolerance {f.tolerance:.0e}) of its closest sharded value, "
                 f"{best.probe.op.name}")
        rows.append(("error", error))
        inconsistent = [c for c in f.candidates if c.inconsistent is not None]
        if inconsistent:
            c = min(inconsistent, key=lambda c: c.error)
            a, b = c.inconsistent
            rows.append(("replicas", f"devices {a} and {b} hold different values of the same block of "
                                     f"{c.probe.op.name} (rel diff {c.spread:.3e}): "
                                     f"a partial result not reduced, or reduced over the wrong devices"))
    if f.fed_by:
        for k, c in enumerate(f.fed_by):
            rows.append(("fed by" if k == 0 else "", _collective_text(c, mesh)))
    else:
        rows.append(("fed by", "no collective" + (" (XLA made none for this op)" if f.mode == "gspmd" else "")))
    width = max(len(r[0]) for r in rows)
    lines += [f"  {name:<{width}}  {text}" for name, text in rows]
    return lines


def bisect(module: ir.Module, inputs: dict, *, backend: str = "cpu") -> Bisection:
    """Run `module` sharded and unsharded on `inputs` with every op's value
    returned, and find the first op where they part ways (see the module doc)."""
    ours, ref = run_probed(module, inputs, backend=backend)
    with module.context:
        return compare_runs(module, ours, ref)
