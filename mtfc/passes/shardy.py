"""Passes `sdy-partition` (shardy mode) and `sdy-shardings`: mtfc's layouts as
closed ``sdy.sharding``, then Shardy's own partitioner (shipped in jaxlib) run
in-process -- a partitioner independent of mtfc's, to check it against.

`sdy-partition`
  Requires: the IR contract (`verify-names`): a mesh, layout rules (and
  parameter layout rules, if any), ``mtfc.dims`` on every argument, result
  and body op of @main; a module not yet partitioned (``none``, or ``gspmd``,
  whose annotations are dropped).

  Guarantees: @main becomes the program one device runs (device ``d`` of the
  mesh is partition ``d``), written by Shardy: every value has its local
  shape -- each dim divided by the mesh axes its name is laid out on, exactly
  mtfc's layout, since every argument, result and op result was given a
  *closed* sharding Shardy cannot change -- and communication is explicit
  StableHLO collectives with ``use_global_device_ids`` and a channel
  (``all_reduce``, ``all_gather``, ``all_to_all``, ``collective_permute``),
  plus ``partition_id``-indexed ``dynamic_slice`` where Shardy slices
  (its all_slice).  Arguments and results keep their ``mtfc.*`` attributes
  and carry ``mhlo.sharding = "{manual}"``.  Ops keep ``mtfc.dims`` and their
  locations; the ops Shardy rebuilds or inserts get dims back where they are
  certain (`restore_dims`).  The global program is kept as the nested
  ``module @mtfc.reference``; the module carries ``mtfc.partitioning =
  "shardy"``, ``mhlo.num_partitions`` = mesh size, ``mhlo.num_replicas = 1``
  (XLA compiles it in partition mode: `mtfc.runtime.execute.compile_options`).
  An impossible layout is an error naming the value, as in
  `attach-shardings`; a module Shardy rejects is an error naming this pass,
  Shardy's stage, the op and its location.

`sdy-shardings`
  Only writes what `sdy-partition` first hands Shardy (``sdy.mesh @mesh``,
  the closed shardings, the ``sdy.reshard`` ops of `whole_along_cut_dims`),
  so it can be read; the module stays unpartitioned.

Shardy in jaxlib 0.10 gets some things wrong; this pass works around each
(docs/passes/shardy.md, "Where Shardy needs help"): it never offers Shardy a
split gather/slice/pad/concatenate dim or a contraction out of mesh order,
gives Shardy's all_reduce the reducer of the reduce it completes, where
Shardy's plan uses sub-axes ("cols":(2)2) -- whose lowering is inconsistent
-- it plans again on a mesh whose axes are split into prime factors, where no
sub-axis can arise, and it refuses ops it does not know to be safe.
"""

from __future__ import annotations

import re

from jax.extend.mlir import ir, passmanager
from jax.extend.mlir.dialects import sdy
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import Mesh, TensorLayout
from mtfc.passes.composites import inline_composites
from mtfc.passes.manager import register_pass
from mtfc.passes import shardy_conv

SDY_SHARDING = "sdy.sharding"
MESH_NAME = "mesh"

# Shardy's in-process pipeline, one PassManager each (docs/passes/shardy.md).
STAGES: tuple[tuple[str, str], ...] = (
    ("sdy-propagation-pipeline", "builtin.module(sdy-propagation-pipeline)"),
    ("sdy-insert-explicit-reshards",
     "builtin.module(func.func(sdy-insert-explicit-reshards{enable-full-version=true},sdy-reshard-to-collectives))"),
    ("sdy-convert-global-to-local", "builtin.module(sdy-convert-global-to-local)"),
    ("sdy-drop-sharding-and-mesh", "builtin.module(sdy-drop-sharding-and-mesh)"),
)
PLAN_STAGES, LOWER_STAGES = STAGES[:2], STAGES[2:]

# Ops whose result is their first operand moved between layouts: same dims.
_SAME_DIMS_AS_OPERAND = {
    "stablehlo.all_reduce", "stablehlo.all_gather", "stablehlo.all_to_all", "stablehlo.reduce_scatter",
    "stablehlo.collective_permute", "stablehlo.dynamic_slice", "stablehlo.copy", "stablehlo.optimization_barrier",
}


# ------------------------------------------------------------- Shardy's mesh
def _prime_factors(n: int) -> list[int]:
    out, p = [], 2
    while n > 1:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    return out


class SdyMesh:
    """Shardy's mesh for an mtfc mesh: each mtfc axis is one sdy axis of the
    same name (`direct`), or -- `prime` -- as many sdy axes as its size has
    prime factors, major first (``cols:4`` -> ``"cols_0"=2, "cols_1"=2``).
    The device order is the same either way (row-major), so is every layout;
    size-1 axes are left out (they split nothing)."""

    def __init__(self, mesh: Mesh, *, prime: bool):
        taken = set(mesh.names)
        self.axes: list[tuple[str, int]] = []
        self.of: dict[str, tuple[str, ...]] = {}
        for name, size in mesh.axes:
            factors = _prime_factors(size) if prime else ([size] if size > 1 else [])
            if len(factors) <= 1:
                parts = [(name, f) for f in factors]
            else:
                parts = []
                for i, f in enumerate(factors):
                    part = f"{name}_{i}"
                    while part in taken:
                        part += "_"
                    taken.add(part)
                    parts.append((part, f))
            self.axes += parts
            self.of[name] = tuple(p for p, _ in parts)
        self.prime = prime

    def text(self) -> str:
        """``<["rows"=2, "cols"=4]>``: devices in row-major order, as mtfc's."""
        return "<[" + ", ".join(f'"{n}"={s}' for n, s in self.axes) + "]>"

    def sharding_body(self, layout: TensorLayout) -> str:
        """``<@mesh, [{"rows", "cols"}, {}]>``: each dim's axes, major first;
        every dim closed (no ``?``), so Shardy can neither add an axis to a dim
        nor drop one.  Axes a tensor does not use are replicated (implied by
        closed dims)."""
        dims = ", ".join("{" + ", ".join(f'"{s}"' for a in axes for s in self.of[a]) + "}" for axes in layout.axes)
        return f"<@{MESH_NAME}, [{dims}]>"

    def tensor_sharding(self, layout: TensorLayout) -> str:
        """The ``sdy.sharding`` of an argument or result."""
        return "#sdy.sharding" + self.sharding_body(layout)

    def op_sharding(self, layouts: list[TensorLayout]) -> str:
        """The ``sdy.sharding`` of an op: one sharding per result."""
        return "#sdy.sharding_per_value<[" + ", ".join(self.sharding_body(l) for l in layouts) + "]>"


# ------------------------------------------------------------------ annotate
def _set_attr(attrs: ir.DictAttr, name: str, value: ir.Attribute) -> ir.DictAttr:
    out = {a.name: a.attr for a in attrs}
    out[name] = value
    return ir.DictAttr.get(out)


def _class_of_role(role: str) -> str:
    return "param" if role in mir.STATE_ROLES else "activation"


def value_layout(value: ir.Value, layouts: mir.Layouts, what: str) -> TensorLayout:
    """The layout of an SSA value of @main: a function argument's by its role,
    an op result's by its op's class (docs/IR.md, "Parameter layouts")."""
    shape = ir.RankedTensorType(value.type).shape
    if isinstance(value, ir.BlockArgument):
        arg = ir.BlockArgument(value)
        attrs = ir.DictAttr(ir.ArrayAttr(arg.owner.owner.attributes["arg_attrs"])[arg.arg_number])
        cls = _class_of_role(ir.StringAttr(attrs[mir.ROLE]).value if mir.ROLE in attrs else "input")
    else:
        owner = ir.OpResult(value).owner
        cls = mir.op_class(owner.operation if hasattr(owner, "operation") else owner)
    return layouts.of_value(mir.value_dims(value), shape, cls=cls, what=what)


def annotate(module: ir.Module, layouts: mir.Layouts, sdy_mesh: SdyMesh) -> None:
    """Write ``sdy.mesh @mesh`` and a closed ``sdy.sharding`` on every argument,
    result and body-op result of @main, and the reshards of
    `whole_along_cut_dims`; the module is otherwise unchanged."""
    fn = mir.entry_function(module)
    for key, sigs, what in (("arg_attrs", mir.arguments(module), "argument"),
                            ("res_attrs", mir.results(module), "result")):
        if not sigs:
            continue
        attrs = [
            _set_attr(ir.DictAttr(a), SDY_SHARDING, ir.Attribute.parse(sdy_mesh.tensor_sharding(
                layouts.of_value(s.dims, s.shape, cls=_class_of_role(s.role), what=f"{what} {s.name!r}"))))
            for a, s in zip(ir.ArrayAttr(fn.attributes[key]), sigs)
        ]
        fn.attributes[key] = ir.ArrayAttr.get(attrs)
    for op in mir.body_ops(fn):
        if op.name == "func.return" or not len(op.results):
            continue
        dims = mir.op_result_dims(op)
        if dims is None:
            raise MtfcError(f"sdy-partition: {mir.describe_op(op)} carries no {mir.DIMS}")
        results = [
            layouts.of_value(d, ir.RankedTensorType(r.type).shape, cls=mir.op_class(op),
                             what=f"value of {mir.describe_op(op)}")
            for d, r in zip(dims, op.results)
        ]
        op.attributes[SDY_SHARDING] = ir.Attribute.parse(sdy_mesh.op_sharding(results))
    for op in list(mir.body_ops(fn)):
        if op.name in _CUT_DIMS:
            whole_along_cut_dims(op, layouts, sdy_mesh)
        elif op.name == "stablehlo.dot_general":
            contract_in_mesh_order(op, layouts, sdy_mesh)
        elif op.name in shardy_conv.OPS:  # Shardy ignores halos (mtfc/passes/shardy_conv.py)
            shardy_conv.whole_spatial(op, layouts, sdy_mesh)
    for op in list(module.body.operations):  # a stale mesh of the same name
        if op.operation.name == "sdy.mesh":
            op.operation.erase()
    mesh_op = ir.Operation.parse(f"sdy.mesh @{MESH_NAME} = {sdy_mesh.text()}")
    ir.InsertionPoint.at_block_begin(module.body).insert(mesh_op)


# ------------------------------------------------------- where Shardy fails
# Ops that read or write across shard boundaries along some dims ("cut" dims).
# Shardy (jaxlib 0.10) mishandles them when such a dim is split:
#   gather  -- its plan (local lookups, then all_reduce) makes
#              `sdy-convert-global-to-local` write a garbage index constant and
#              then crash the process;
#   slice   -- `sdy-convert-global-to-local` refuses ("the slice is not a full
#              slice and requires device communication");
#   pad     -- converted as if local: silently wrong numbers;
#   concatenate -- `sdy-convert-global-to-local` refuses ("dimension 2 is
#              sharded but the concatenation is on this dimension").
# So such an op is computed whole along its cut dims: its operands are
# resharded (`sdy.reshard` -> all_gather) and, but for gather, its result is
# computed whole along them and resharded to its layout right after (a local
# slice).
def _gather_cut(op: ir.Operation) -> list[int]:
    shape = ir.RankedTensorType(op.operands[0].type).shape
    sizes = list(ir.DenseI64ArrayAttr(op.attributes["slice_sizes"]))
    return [i for i, (n, k) in enumerate(zip(shape, sizes)) if k < n]


def _slice_cut(op: ir.Operation) -> list[int]:
    shape = ir.RankedTensorType(op.operands[0].type).shape
    start, limit, strides = (list(ir.DenseI64ArrayAttr(op.attributes[k]))
                             for k in ("start_indices", "limit_indices", "strides"))
    return [i for i in range(len(shape)) if start[i] != 0 or limit[i] != shape[i] or strides[i] != 1]


def _pad_cut(op: ir.Operation) -> list[int]:
    low, high, interior = (list(ir.DenseI64ArrayAttr(op.attributes[k]))
                           for k in ("edge_padding_low", "edge_padding_high", "interior_padding"))
    return [i for i in range(len(low)) if low[i] or high[i] or interior[i]]


def _concatenate_cut(op: ir.Operation) -> list[int]:
    return [ir.IntegerAttr(op.attributes["dimension"]).value]


# op -> (its cut dims, whether all operands have them (else only operand 0),
#        whether the result is computed whole along them too)
_CUT_DIMS = {
    "stablehlo.gather": (_gather_cut, False, False),
    "stablehlo.slice": (_slice_cut, False, True),
    "stablehlo.pad": (_pad_cut, False, True),
    "stablehlo.concatenate": (_concatenate_cut, True, True),
}


def _whole(layout: TensorLayout, cut: list[int]) -> TensorLayout:
    return TensorLayout(layout.dims, layout.sizes,
                        tuple(() if i in cut else axes for i, axes in enumerate(layout.axes)), layout.mesh)


def _reshard(value: ir.Value, dims: list[str], layout: TensorLayout, sdy_mesh: SdyMesh) -> ir.Operation:
    """``sdy.reshard`` of `value` to `layout`, at the current insertion point and location."""
    op = ir.Operation.create("sdy.reshard", results=[value.type], operands=[value],
                             attributes={"sharding": ir.Attribute.parse(sdy_mesh.tensor_sharding(layout))})
    mir.set_op_result_dims(op, [dims])
    return op


def whole_along_cut_dims(op: ir.Operation, layouts: mir.Layouts, sdy_mesh: SdyMesh) -> None:
    """Make `op` (gather, slice, pad, concatenate) whole along the dims it cuts, where they are split."""
    cut_of, all_operands, result_too = _CUT_DIMS[op.name]
    cut = cut_of(op)
    indices = range(len(op.operands)) if all_operands else [0]
    operand_layouts = {i: value_layout(op.operands[i], layouts, f"operand of {mir.describe_op(op)}") for i in indices}
    if not any(l.axes[c] for l in operand_layouts.values() for c in cut):
        return
    for i, x_layout in operand_layouts.items():
        x = op.operands[i]
        with op.location, ir.InsertionPoint(op):
            op.operands[i] = _reshard(x, mir.value_dims(x), _whole(x_layout, cut), sdy_mesh).results[0]
    if not result_too:
        return
    dims = mir.op_result_dims(op)[0]
    result = op.results[0]
    layout = value_layout(result, layouts, f"value of {mir.describe_op(op)}")
    op.attributes[SDY_SHARDING] = ir.Attribute.parse(sdy_mesh.op_sharding([_whole(layout, cut)]))
    with op.location, ir.InsertionPoint.after(op):
        back = _reshard(result, dims, layout, sdy_mesh)
    result.replace_all_uses_except(back.results[0], back)


# A dot_general summing over split dims: `sdy-convert-global-to-local` checks
# that the axes of Shardy's all_reduce (in mesh order) equal the contracting
# dims' axes, dim after dim in the op's order -- and aborts the process when
# not ("The axes of the sdy.all_reduce should match the sharded contracting
# dimensions").  So before Shardy plans, the contracting dims are listed in
# the order of their axes (free: the sum is the same), a dim split over axes
# out of mesh order (`b:cols+rows`) is resharded to mesh order (a
# collective_permute), and a dim whose axes interleave with another's
# (`b:x` and `s:a+y` on mesh a,x,y) is gathered whole (`contract_in_mesh_order`);
# after planning, `order_contractions` checks what Shardy made of it.
def contract_in_mesh_order(op: ir.Operation, layouts: mir.Layouts, sdy_mesh: SdyMesh) -> None:
    position = {name: i for i, (name, _) in enumerate(sdy_mesh.axes)}

    def positions(axes) -> list[int]:
        return [position[s] for a in axes for s in sdy_mesh.of[a]]

    numbers = hlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    pairs = list(zip(numbers.lhs_contracting_dimensions, numbers.rhs_contracting_dimensions))
    operand_layouts = [value_layout(x, layouts, f"operand of {mir.describe_op(op)}") for x in op.operands]
    # within a dim: mesh order
    sorted_axes = [[tuple(sorted(layout.axes[pair[k]], key=lambda a: positions([a]) or [-1]))
                    for pair in pairs] for k, layout in enumerate(operand_layouts)]
    # across dims: by first axis; a dim whose axes come before the previous dim's last is gathered
    order = sorted(range(len(pairs)), key=lambda i: positions(sorted_axes[0][i])[:1] or [len(position)])
    whole, last = set(), -1
    for i in order:
        p = positions(sorted_axes[0][i])
        if not p:
            continue
        if p[0] <= last:
            whole.add(i)
        else:
            last = p[-1]
    for k, (x, layout) in enumerate(zip(op.operands, operand_layouts)):
        axes = list(layout.axes)
        for i, pair in enumerate(pairs):
            axes[pair[k]] = () if i in whole else sorted_axes[k][i]
        if tuple(axes) != layout.axes:
            target = TensorLayout(layout.dims, layout.sizes, tuple(axes), layout.mesh)
            with op.location, ir.InsertionPoint(op):
                op.operands[k] = _reshard(x, mir.value_dims(x), target, sdy_mesh).results[0]
    if order != list(range(len(pairs))):
        op.attributes["dot_dimension_numbers"] = hlo.DotDimensionNumbers.get(
            lhs_batching_dimensions=list(numbers.lhs_batching_dimensions),
            rhs_batching_dimensions=list(numbers.rhs_batching_dimensions),
            lhs_contracting_dimensions=[pairs[i][0] for i in order],
            rhs_contracting_dimensions=[pairs[i][1] for i in order],
        )


_AXIS_REF = re.compile(r'"([^"]*)"(:\(\d+\)\d+)?')


def _axis_refs(attr: ir.Attribute) -> list[str]:
    """``["cols", "rows:(1)2"]`` from a printed axis ref (list)."""
    return [name + (sub or "") for name, sub in _AXIS_REF.findall(str(attr))]


def _sdy_sharding_of(value: ir.Value, fn: ir.Operation) -> list[list[str]] | None:
    """Per dim, the axes of `value`'s sharding in Shardy's planned module."""
    if isinstance(value, ir.BlockArgument):
        attrs = ir.DictAttr(ir.ArrayAttr(fn.attributes["arg_attrs"])[ir.BlockArgument(value).arg_number])
        attr = attrs[SDY_SHARDING] if SDY_SHARDING in attrs else None
    else:
        result = ir.OpResult(value)
        op = result.owner.operation if hasattr(result.owner, "operation") else result.owner
        if "out_sharding" in op.attributes:
            attr = op.attributes["out_sharding"]
        elif "sharding" in op.attributes:
            attr = op.attributes["sharding"]
        elif SDY_SHARDING in op.attributes:
            attr = sdy.TensorShardingPerValueAttr(op.attributes[SDY_SHARDING]).shardings[result.result_number]
        else:
            attr = None
    if attr is None:
        return None
    return [[ref for a in sdy.DimensionShardingAttr(d).axes for ref in _axis_refs(a)]
            for d in sdy.TensorShardingAttr(attr).dimension_shardings]


def _is_zero_constant(value: ir.Value) -> bool:
    if isinstance(value, ir.BlockArgument):
        return False
    owner = ir.OpResult(value).owner
    op = owner.operation if hasattr(owner, "operation") else owner
    if op.name not in ("stablehlo.constant", "sdy.constant"):
        return False
    attr = ir.DenseElementsAttr(op.attributes["value"])
    if not attr.is_splat:
        return False
    splat = attr.get_splat_value()
    return (ir.FloatAttr(splat).value if isinstance(splat, ir.FloatAttr) else ir.IntegerAttr(splat).value) == 0


def _defining_op(value: ir.Value) -> ir.Operation | None:
    if isinstance(value, ir.BlockArgument):
        return None
    owner = ir.OpResult(value).owner
    return owner.operation if hasattr(owner, "operation") else owner


def scalar_constants(module: ir.Module) -> None:
    """Rank-0 ``sdy.constant`` back to ``stablehlo.constant`` before lowering
    (a scalar is whole on every device): the lowering's check that a pad
    feeding a split contraction pads with zero knows only the latter, and
    aborts the process on a ``sdy.constant`` zero."""
    for op in list(mir.walk(mir.entry_function(module))):
        if op.name != "sdy.constant" or ir.RankedTensorType(op.results[0].type).rank != 0:
            continue
        keep = {n: op.attributes[n] for n in ("value", SDY_SHARDING, mir.DIMS) if n in op.attributes}
        with op.location, ir.InsertionPoint(op):
            new = ir.Operation.create("stablehlo.constant", results=[op.results[0].type], attributes=keep)
        op.results[0].replace_all_uses_with(new.results[0])
        op.erase()


def order_contractions(module: ir.Module) -> None:
    """List each dot_general's contracting dims in the order of the axes of
    the all_reduce Shardy planned after it; refuse (one line) what no order
    fixes.  An operand padded with a non-zero value is passed through an
    ``optimization_barrier`` (the lowering aborts on a pad feeding a split
    contraction unless it pads with zero -- a guard for padding it adds
    itself, which mtfc's even layouts never need)."""
    fn = mir.entry_function(module)
    for op in mir.body_ops(fn):
        if op.name != "stablehlo.dot_general":
            continue
        reductions = [u.owner for u in op.results[0].uses if getattr(u.owner, "name", "") == "sdy.all_reduce"]
        lhs = _sdy_sharding_of(op.operands[0], fn)
        if not reductions or lhs is None:
            continue
        for i, x in enumerate(op.operands):
            pad = _defining_op(x)
            if pad is not None and pad.name == "stablehlo.pad" and not _is_zero_constant(pad.operands[1]):
                keep = {n: pad.attributes[n] for n in (SDY_SHARDING, mir.DIMS) if n in pad.attributes}
                with pad.location, ir.InsertionPoint(op):
                    barrier = ir.Operation.create("stablehlo.optimization_barrier", results=[x.type],
                                                  operands=[x], attributes=keep)
                op.operands[i] = barrier.results[0]
        wanted = _axis_refs(reductions[0].attributes["reduction_axes"])
        numbers = hlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
        pairs = list(zip(numbers.lhs_contracting_dimensions, numbers.rhs_contracting_dimensions))
        if [a for l, _ in pairs for a in lhs[l]] == wanted:
            continue
        rank = {a: i for i, a in enumerate(wanted)}
        pairs.sort(key=lambda p: rank.get(lhs[p[0]][0], len(wanted)) if lhs[p[0]] else len(wanted))
        if [a for l, _ in pairs for a in lhs[l]] != wanted:
            raise MtfcError(f"sdy-partition: {mir.describe_op(op)} sums over dims split over mesh axes "
                            f"{', '.join(' + '.join(lhs[l]) for l, _ in pairs if lhs[l])} in an order Shardy "
                            "(jaxlib 0.10) cannot lower (it would abort); use --mode explicit or gspmd for it")
        op.attributes["dot_dimension_numbers"] = hlo.DotDimensionNumbers.get(
            lhs_batching_dimensions=list(numbers.lhs_batching_dimensions),
            rhs_batching_dimensions=list(numbers.rhs_batching_dimensions),
            lhs_contracting_dimensions=[l for l, _ in pairs],
            rhs_contracting_dimensions=[r for _, r in pairs],
        )


# Ops known to go through Shardy (jaxlib 0.10) with split dims: the ops mtfc's
# frontend emits.  Another op with a split operand or result is refused before
# Shardy runs: its `sdy-convert-global-to-local` aborts the whole process on
# some (a reduce_window with a split window dim fails an internal CHECK).
SUPPORTED = {
    f"stablehlo.{name}"
    for name in (
        "abs add and broadcast_in_dim ceil clamp compare concatenate constant convert cosine divide dot_general "
        "exponential exponential_minus_one floor gather iota is_finite log log_plus_one logistic maximum minimum "
        "multiply negate not optimization_barrier or pad power reduce remainder reshape round_nearest_even rsqrt "
        "select sign sine slice convolution reverse "
        "sqrt subtract tanh transpose xor"
    ).split()
}


def check_supported(fn: ir.Operation, layouts: mir.Layouts) -> None:
    """Refuse, naming the op and its dims, an op outside `SUPPORTED` that has a
    split value.  A variadic reduce (an argmax) is outside too: Shardy would
    complete each of its results with a sum (`fix_reducers`)."""
    for op in mir.body_ops(fn):
        variadic = op.name == "stablehlo.reduce" and len(op.results) != 1
        if (op.name in SUPPORTED and not variadic) or op.name == "func.return":
            continue
        values = [v for v in list(op.operands) + list(op.results) if isinstance(v.type, ir.RankedTensorType)]
        split = [mir.value_dims(v) for v in values
                 if any(value_layout(v, layouts, f"value of {mir.describe_op(op)}").axes)]
        if split:
            shown = ", ".join(f"[{', '.join(d)}]" for d in split)
            raise MtfcError(f"sdy-partition: {mir.describe_op(op)} has split values ({shown}) and is not known "
                            "to go through Shardy (jaxlib 0.10); use --mode explicit or gspmd for it")


# ------------------------------------------------------------------ Shardy
def _diagnostic_line(error: Exception) -> str:
    """``'stablehlo.foo' op message at name (file:line)`` from an MLIRError."""
    diagnostics = getattr(error, "error_diagnostics", None) or []
    if diagnostics:
        d = diagnostics[0]
        message = " ".join(str(d.message).split())
        return f"{message} at {mir.location_text(d.location)}"
    lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
    return " ".join(lines[:3]) or type(error).__name__


def _run_stage(module: ir.Module, stage: str, pipeline: str) -> None:
    pm = passmanager.PassManager.parse(pipeline)
    try:
        pm.run(module.operation)
    except Exception as e:  # MLIRError carries the diagnostics
        raise MtfcError(f"sdy-partition: Shardy's {stage} failed: {_diagnostic_line(e)}") from None


_SUB_AXIS = re.compile(r'"[^"]*":\(\d+\)\d+')


def uses_sub_axes(module: ir.Module) -> bool:
    """Whether Shardy's plan names a sub-axis (``"cols":(2)2``) anywhere."""
    return bool(_SUB_AXIS.search(module.operation.get_asm(enable_debug_info=False)))


def plan_and_lower(text: str, context: ir.Context, layouts: mir.Layouts) -> ir.Module:
    """The per-device module Shardy makes of the global program `text`.

    Shardy plans on the mesh as it is; if its plan uses sub-axes, whose
    lowering in jaxlib 0.10's `sdy-convert-global-to-local` is inconsistent
    (all_gather reads ``"cols":(2)2`` as the minor half of ``cols``, all_slice
    and collective_permute as the major half: devices end up with the wrong
    blocks), it plans again on the prime-factored mesh, where none can arise."""
    for sdy_mesh in (SdyMesh(layouts.mesh, prime=False), SdyMesh(layouts.mesh, prime=True)):
        work = ir.Module.parse(text, context)
        annotate(work, layouts, sdy_mesh)
        for stage, pipeline in PLAN_STAGES:
            _run_stage(work, stage, pipeline)
        if not uses_sub_axes(work):
            break
        if sdy_mesh.prime:
            raise MtfcError("sdy-partition: Shardy's plan uses sub-axes even on the prime-factored mesh")
    order_contractions(work)
    scalar_constants(work)
    for stage, pipeline in LOWER_STAGES:
        _run_stage(work, stage, pipeline)
    leftovers = [op for op in mir.walk(work.operation) if op.name.startswith("sdy.")]
    if leftovers:
        names = ", ".join(sorted({op.name for op in leftovers}))
        raise MtfcError(f"sdy-partition: Shardy left {names} in the per-device program "
                        f"(first: {mir.describe_op(leftovers[0])})")
    return work


# ------------------------------------------------------------------ dims back
# (location, result ranks) -> (result dims, global result shapes) of the
# global program's op there; None when two such ops differ.
DimsTable = dict[tuple[str, tuple], "tuple[list[list[str]], list[list[int]]] | None"]


def _ranks(op: ir.Operation) -> tuple:
    return tuple(_rank(r) for r in op.results)


def _dims_by_location(fn: ir.Operation) -> DimsTable:
    table: DimsTable = {}
    for op in mir.body_ops(fn):
        dims = mir.op_result_dims(op)
        if dims is None or len(dims) != len(op.results):
            continue
        shapes = [list(ir.RankedTensorType(r.type).shape) if _rank(r) is not None else [] for r in op.results]
        key = (str(op.location), _ranks(op))
        if key in table and table[key] != (dims, shapes):
            table[key] = None
        else:
            table.setdefault(key, (dims, shapes))
    return table


def _blocks_of(local: list[int], global_: list[int]) -> bool:
    """Whether a local shape can be a block of a global one (each size divides)."""
    return len(local) == len(global_) and all(0 < l <= g and g % l == 0 for l, g in zip(local, global_))


def _rank(value: ir.Value) -> int | None:
    t = value.type
    return ir.RankedTensorType(t).rank if isinstance(t, ir.RankedTensorType) else None


def _only_feeds_dynamic_slices(op: ir.Operation) -> bool:
    users = [u.owner for u in op.results[0].uses]
    return bool(users) and all(getattr(u, "name", None) == "stablehlo.dynamic_slice" for u in users)


def restore_dims(fn: ir.Operation, by_location: DimsTable, mesh: Mesh) -> None:
    """Give back ``mtfc.dims`` to the ops Shardy rebuilt or inserted, where they
    are certain: a collective or slice has its operand's dims, a scalar none,
    Shardy's per-device offset tables (one entry per device, read at
    ``partition_id``) ``["mesh"]`` as the explicit partitioner's, and an op
    Shardy rebuilt or added for an op of the global program (its constants
    and pads, the offset it adds to a split iota) those of the one op at its
    location with results of its ranks, if its shapes are blocks of that op's.
    Any other op is left without (the reshapes and transposes inside one of
    Shardy's multi-dim all_gathers, whose extra dims have no name)."""
    for op in mir.body_ops(fn):
        if op.name == "func.return" or not len(op.results) or mir.DIMS in op.attributes:
            continue
        ranks = [_rank(r) for r in op.results]
        dims: list[list[str]] | None = None
        if op.name in _SAME_DIMS_AS_OPERAND and len(op.results) == 1 and len(op.operands):
            try:
                source = mir.value_dims(op.operands[0])
            except (MtfcError, KeyError, IndexError):
                source = None
            if source is not None and len(source) == ranks[0]:
                dims = [source]
        if dims is None and all(r == 0 for r in ranks):
            dims = [[] for _ in ranks]
        if (dims is None and op.name == "stablehlo.constant" and ranks == [1]
                and ir.RankedTensorType(op.results[0].type).shape == [mesh.size] and _only_feeds_dynamic_slices(op)):
            dims = [["mesh"]]
        if dims is None:
            found = by_location.get((str(op.location), _ranks(op)))
            shapes = [list(ir.RankedTensorType(r.type).shape) if _rank(r) is not None else [] for r in op.results]
            if found is not None and all(_blocks_of(l, g) for l, g in zip(shapes, found[1])):
                dims = found[0]
        if dims is not None:
            mir.set_op_result_dims(op, dims)


def _reducer(op: ir.Operation) -> ir.Operation | None:
    """The one combining op of a reduction body (``stablehlo.maximum``...), if that is all it is."""
    body = [o.operation for o in op.regions[0].blocks[0].operations]
    if len(body) == 2 and body[1].name == "stablehlo.return" and len(body[0].operands) == 2:
        return body[0]
    return None


def fix_reducers(fn: ir.Operation) -> None:
    """An all_reduce completing a ``stablehlo.reduce`` over split dims combines
    with that reduce's own reducer.  Shardy's ``sdy.all_reduce`` has no
    reduction kind and `sdy-convert-global-to-local` (jaxlib 0.10) always
    writes ``stablehlo.add``, which is wrong after a max, min, and, or."""
    for op in mir.body_ops(fn):
        if op.name != "stablehlo.all_reduce" or len(op.operands) != 1:
            continue
        source = op.operands[0].owner
        if not isinstance(source, ir.Operation):
            source = getattr(source, "operation", None)
        if source is None or source.name != "stablehlo.reduce" or len(source.results) != 1:
            continue
        want, have = _reducer(source), _reducer(op)
        if want is None or have is None:
            raise MtfcError(f"sdy-partition: cannot tell how Shardy's all_reduce after {mir.describe_op(source)} "
                            "combines: its reduction body is not a single binary op")
        if want.name == have.name:
            continue
        with have.location, ir.InsertionPoint(have):
            combined = ir.Operation.create(want.name, results=[have.results[0].type], operands=list(have.operands))
        have.results[0].replace_all_uses_with(combined.results[0])
        have.erase()


def _manual(attrs: ir.DictAttr) -> ir.DictAttr:
    return _set_attr(attrs, "mhlo.sharding", ir.StringAttr.get("{manual}"))


def _global_program(module: ir.Module, pass_name: str) -> mir.Layouts:
    kind = mir.partitioning(module)
    if kind not in ("none", "gspmd"):
        raise MtfcError(f"{pass_name}: the module is already partitioned ({kind})")
    layouts = mir.module_layouts(module)
    layouts.validate()
    return layouts


# ------------------------------------------------------------------ passes
@register_pass("sdy-shardings")
def sdy_shardings(module: ir.Module, options) -> None:
    """Write the closed sdy shardings sdy-partition hands Shardy (for reading; no partitioning)."""
    layouts = _global_program(module, "sdy-shardings")
    mir.strip_partitioning_in_place(module)
    inline_composites(module)
    annotate(module, layouts, SdyMesh(layouts.mesh, prime=False))


@register_pass("sdy-partition")
def sdy_partition(module: ir.Module, options) -> None:
    """Split @main into the per-device program with Shardy, from closed sdy shardings."""
    layouts = _global_program(module, "sdy-partition")
    mesh = layouts.mesh
    reference = ir.Module.parse(mir.strip_partitioning_text(module), module.context)
    reference.operation.attributes["sym_name"] = ir.StringAttr.get(mir.REFERENCE)
    mir.strip_partitioning_in_place(module)
    inline_composites(module)  # Shardy partitions their decompositions
    by_location = _dims_by_location(mir.entry_function(module))
    check_supported(mir.entry_function(module), layouts)
    work = plan_and_lower(module.operation.get_asm(enable_debug_info=True), module.context, layouts)
    for op in list(module.body.operations):
        op.operation.erase()
    for op in list(work.body.operations):
        module.body.append(op.operation)
    fn = mir.entry_function(module)
    fix_reducers(fn)
    restore_dims(fn, by_location, mesh)
    for key in ("arg_attrs", "res_attrs"):
        if key in fn.attributes:
            fn.attributes[key] = ir.ArrayAttr.get([_manual(ir.DictAttr(a)) for a in ir.ArrayAttr(fn.attributes[key])])
    attrs = module.operation.attributes
    attrs["mhlo.num_partitions"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), max(mesh.size, 1))
    attrs["mhlo.num_replicas"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), 1)
    mir.set_partitioning(module, "shardy")
    module.body.append(reference.operation.clone())
