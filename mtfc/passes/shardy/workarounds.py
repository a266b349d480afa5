"""Where Shardy (jaxlib 0.10) needs help: one registered `Workaround` per
bug or limitation `sdy-partition` works around (docs/passes/shardy.md,
"Where Shardy needs help"), each with its name, what it works around, the
point of the pipeline it applies at, and the function.

`MTFC_SDY_SKIP_WORKAROUNDS=name1,name2` disables entries (`skipped`), so each
can be retested -- and dropped -- when jaxlib moves: with it skipped, the
bug it names comes back (``lit_tests/shardy/workaround-<name>.mlir`` shows
each one's effect, and, where that costs no crash, the failure without it).
An unknown name is a one-line error.

Stages (`STAGES`), in pipeline order, and what `apply` passes:

``check``     the global @main and its layouts, before anything is annotated;
``annotate``  the annotated module, its layouts and Shardy mesh, before
              Shardy plans (also what `sdy-shardings` prints);
``replan``    Shardy's planned module -> whether to plan again on the
              prime-factored mesh;
``planned``   Shardy's planned module, before it is lowered to local shapes;
``converted`` the module `sdy-convert-global-to-local` wrote, before it is
              verified (the pass runs without the verifier: it leaves a loop's
              block arguments and a ``dynamic_slice``'s sizes global);
``lowered``   the per-device @main Shardy wrote.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import sdy
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import TensorLayout
from mtfc.passes import op_rules
from mtfc.passes.loops import program_ops
from mtfc.passes.shardy.annotation import SDY_SHARDING, SdyMesh, reshard, value_layout

ENV = "MTFC_SDY_SKIP_WORKAROUNDS"
STAGES = ("check", "annotate", "replan", "planned", "converted", "lowered")


@dataclass(frozen=True)
class Workaround:
    """One workaround: `name` (what ``MTFC_SDY_SKIP_WORKAROUNDS`` lists),
    `works_around` (the jaxlib 0.10 bug or limitation, and its symptom), `stage`
    (`STAGES`) and `apply`, called with that stage's arguments."""

    name: str
    stage: str
    works_around: str
    apply: Callable


WORKAROUNDS: dict[str, Workaround] = {}


def workaround(name: str, stage: str, works_around: str):
    """Register the decorated function as the workaround `name`."""
    assert stage in STAGES, stage

    def register(fn: Callable) -> Callable:
        assert name not in WORKAROUNDS, f"workaround {name} registered twice"
        WORKAROUNDS[name] = Workaround(name, stage, works_around, fn)
        return fn

    return register


def skipped(environ=None) -> frozenset[str]:
    """The workarounds ``MTFC_SDY_SKIP_WORKAROUNDS`` disables; an unknown name
    is an `MtfcError` naming it."""
    text = (os.environ if environ is None else environ).get(ENV, "")
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    unknown = sorted(names - WORKAROUNDS.keys())
    if unknown:
        raise MtfcError(f"{ENV}: unknown workaround {unknown[0]!r} (known: {', '.join(WORKAROUNDS)})")
    return names


def apply(stage: str, skip: frozenset[str], *args) -> list:
    """Run every workaround of `stage` not in `skip`, in registration order;
    their return values, in that order."""
    return [w.apply(*args) for w in WORKAROUNDS.values() if w.stage == stage and w.name not in skip]


def _op_of(value: ir.Value) -> ir.Operation | None:
    if isinstance(value, ir.BlockArgument):
        return None
    owner = ir.OpResult(value).owner
    return owner.operation if hasattr(owner, "operation") else owner


# ------------------------------------------------------- refused before Shardy
@workaround("refuse-unsupported", "check",
            "`sdy-convert-global-to-local` aborts the whole process on some ops with split values (a "
            "reduce_window with a split window dim fails an internal CHECK), and a variadic reduce (an argmax) "
            "would be completed with sums: an op without `shardy=True` in op_rules, or a variadic reduce, with a "
            "split value is refused in one line")
def check_supported(fn: ir.Operation, layouts: mir.Layouts) -> None:
    """Refuse, naming the op and its dims, an op not marked ``shardy`` in
    `op_rules` that has a split value.  A variadic reduce (an argmax) is
    refused too: Shardy would complete each of its results with a sum
    (`fix_reducers`)."""
    supported = op_rules.names(shardy=True)
    for op in program_ops(fn):
        variadic = op.name == "stablehlo.reduce" and len(op.results) != 1
        if (op.name in supported and not variadic) or op.name in ("func.return", "stablehlo.return"):
            continue
        values = [v for v in list(op.operands) + list(op.results) if isinstance(v.type, ir.RankedTensorType)]
        split = [mir.value_dims(v) for v in values
                 if any(value_layout(v, layouts, f"value of {mir.describe_op(op)}").axes)]
        if split:
            shown = ", ".join(f"[{', '.join(d)}]" for d in split)
            raise MtfcError(f"sdy-partition: {mir.describe_op(op)} has split values ({shown}) and is not known "
                            "to go through Shardy (jaxlib 0.10); use --mode explicit or gspmd for it")


# ------------------------------------------------------------ whole along cut dims
# Ops that read or write across shard boundaries along some dims ("cut" dims)
# are computed whole along them where they are split: their operands are
# resharded (`sdy.reshard` -> all_gather) and, where the result has cut dims
# too (not a gather's), the result is computed whole along them and resharded
# to its layout right after (a local slice).  The cut dims come from the op's
# factors (op_rules): its window factors (slice, pad, concatenate) or, for a
# lookup, its looked-up (sum) factor.  Which ops need it is not an op list
# but the workarounds registered below, one per op Shardy gets wrong.
def cut_dims(op: ir.Operation) -> tuple[dict[int, list[int]], list[int]]:
    """Per operand index, the dims of that operand `op` cuts (operands with
    none left out), and the result's cut dims."""
    rule = op_rules.rule_of(op.name)
    factors = op_rules.factors_of(op)
    kind = op_rules.SUM if rule is not None and rule.family == "lookup" else op_rules.WINDOW
    cut = set(factors.of_kind(kind))
    operands = {i: [d for d, f in enumerate(dims) if f in cut] for i, dims in enumerate(factors.operands)}
    return ({i: dims for i, dims in operands.items() if dims},
            [d for d, f in enumerate(factors.results[0]) if f in cut])


def _whole(layout: TensorLayout, positions) -> TensorLayout:
    return layout.whole_along(positions)


def whole_along_cut_dims(op: ir.Operation, layouts: mir.Layouts, sdy_mesh: SdyMesh) -> None:
    """Make `op` (gather, slice, pad, concatenate) whole along the dims it cuts, where they are split."""
    operand_cuts, result_cut = cut_dims(op)
    operand_layouts = {i: value_layout(op.operands[i], layouts, f"operand of {mir.describe_op(op)}")
                       for i in operand_cuts}
    if not any(operand_layouts[i].axes[c] for i, cut in operand_cuts.items() for c in cut):
        return
    for i, x_layout in operand_layouts.items():
        x = op.operands[i]
        with op.location, ir.InsertionPoint(op):
            op.operands[i] = reshard(x, mir.value_dims(x), _whole(x_layout, operand_cuts[i]), sdy_mesh).results[0]
    if not result_cut:
        return
    dims = mir.op_result_dims(op)[0]
    result = op.results[0]
    layout = value_layout(result, layouts, f"value of {mir.describe_op(op)}")
    op.attributes[SDY_SHARDING] = ir.Attribute.parse(sdy_mesh.op_sharding([_whole(layout, result_cut)]))
    with op.location, ir.InsertionPoint.after(op):
        back = reshard(result, dims, layout, sdy_mesh)
    result.replace_all_uses_except(back.results[0], back)


def _each_op(op_name: str, rewrite: Callable) -> Callable:
    """A workaround applying `rewrite(op, *args)` to every `op_name` op of @main."""
    def run(module: ir.Module, layouts: mir.Layouts, sdy_mesh: SdyMesh) -> None:
        for op in list(program_ops(mir.entry_function(module))):
            if op.name == op_name:
                rewrite(op, layouts, sdy_mesh)
    run.__doc__ = f"{rewrite.__name__} on every {op_name}."
    return run


for _name, _symptom in (
    ("gather", "a lookup in a table split along a looked-up dim: Shardy plans local lookups + all_reduce, "
               "and `sdy-convert-global-to-local` writes a garbage index constant, then crashes the process"),
    ("slice", "a slice along a split dim: `sdy-convert-global-to-local` refuses (\"the slice is not a full "
              "slice and requires device communication\")"),
    ("pad", "a pad along a split dim: converted as if local -- silently wrong numbers"),
    ("concatenate", "a concatenate along a split dim: `sdy-convert-global-to-local` refuses (\"dimension N is "
                    "sharded but the concatenation is on this dimension\")"),
):
    workaround(f"whole-{_name}", "annotate", _symptom + "; so the op is computed whole along its cut dims "
               "(operands resharded whole first, the result resharded back to its layout)")(
        _each_op(f"stablehlo.{_name}", whole_along_cut_dims))


def spatial_dims(op: ir.Operation) -> tuple[dict[int, tuple[int, ...]], tuple[int, ...]]:
    """A convolution's spatial dims per operand (lhs, kernel) and of its
    result; a reverse's reversed dims."""
    if op.name == "stablehlo.reverse":
        dims = tuple(ir.DenseI64ArrayAttr(op.attributes["dimensions"]))
        return {0: dims}, dims
    c = op_rules.conv_numbers(op)
    return {0: c.lhs[2], 1: c.rhs[2]}, c.out[2]


def whole_along_spatial_dims(op: ir.Operation, layouts: mir.Layouts, sdy_mesh: SdyMesh) -> None:
    """Make `op` (a convolution or reverse) whole along `spatial_dims` where
    they are split: each operand split along one is resharded whole along
    them, and a result split along one is computed whole and resharded back."""
    operands, out_dims = spatial_dims(op)
    for i, dims in operands.items():
        x = op.operands[i]
        layout = value_layout(x, layouts, f"operand of {mir.describe_op(op)}")
        if any(layout.axes[k] for k in dims):
            with op.location, ir.InsertionPoint(op):
                op.operands[i] = reshard(x, mir.value_dims(x), _whole(layout, list(dims)), sdy_mesh).results[0]
    result = op.results[0]
    layout = value_layout(result, layouts, f"value of {mir.describe_op(op)}")
    if not any(layout.axes[k] for k in out_dims):
        return
    op.attributes[SDY_SHARDING] = ir.Attribute.parse(sdy_mesh.op_sharding([_whole(layout, list(out_dims))]))
    with op.location, ir.InsertionPoint.after(op):
        back = reshard(result, mir.op_result_dims(op)[0], layout, sdy_mesh)
    result.replace_all_uses_except(back.results[0], back)


def whole_along_windows(op: ir.Operation, layouts: mir.Layouts, sdy_mesh: SdyMesh) -> None:
    """Make a pooling op (reduce_window, select_and_scatter) whole along its
    windowed dims (its window factors) where its operands or result split
    them; batch and channel dims stay split (Shardy partitions those)."""
    factors = op_rules.factors_of(op)
    cut = [i for i, f in enumerate(factors.factors) if f.kind == op_rules.WINDOW]
    rank = ir.RankedTensorType(op.results[0].type).rank
    tensors = [i for i, x in enumerate(op.operands) if ir.RankedTensorType(x.type).rank == rank]  # not the init
    operand_layouts = {i: value_layout(op.operands[i], layouts, f"operand of {mir.describe_op(op)}")
                       for i in tensors}
    result = op.results[0]
    layout = value_layout(result, layouts, f"value of {mir.describe_op(op)}")
    if not any(lay.axes[c] for lay in [*operand_layouts.values(), layout] for c in cut):
        return
    for i, x_layout in operand_layouts.items():
        x = op.operands[i]
        with op.location, ir.InsertionPoint(op):
            op.operands[i] = reshard(x, mir.value_dims(x), _whole(x_layout, cut), sdy_mesh).results[0]
    op.attributes[SDY_SHARDING] = ir.Attribute.parse(sdy_mesh.op_sharding([_whole(layout, cut)]))
    with op.location, ir.InsertionPoint.after(op):
        back = reshard(result, mir.op_result_dims(op)[0], layout, sdy_mesh)
    result.replace_all_uses_except(back.results[0], back)


for _name in ("reduce_window", "select_and_scatter"):
    workaround(f"whole-{_name.replace('_', '-')}", "annotate",
               f"a {_name} (pooling) along a split windowed dim: `sdy-convert-global-to-local` fails an internal "
               "CHECK and aborts the whole process; so it is computed whole along its windowed dims (operands "
               "resharded whole, the result resharded back); batch and channels stay split")(
        _each_op(f"stablehlo.{_name}", whole_along_windows))

workaround("whole-convolution", "annotate",
           "a convolution with a split spatial dim: Shardy partitions it as if each block were the whole image "
           "(no halo: relative error 0.3-1.1 under `h:cols`, forward and both gradients); so it is computed whole "
           "along its spatial dims (operands resharded whole, the result resharded back); split batch and "
           "features are left to Shardy")(_each_op("stablehlo.convolution", whole_along_spatial_dims))
workaround("whole-reverse", "annotate",
           "a reverse along a split dim (a convolution's flipped kernel): Shardy reverses each block in place "
           "(the input gradient under `kw:rows` was 1.4 off); so it is computed whole along its reversed dims")(
    _each_op("stablehlo.reverse", whole_along_spatial_dims))


# --------------------------------------------------------- contraction order
# A dot_general summing over split dims: `sdy-convert-global-to-local` checks
# that the axes of Shardy's all_reduce (in mesh order) equal the contracting
# dims' axes, dim after dim in the op's order -- and aborts the process when
# not ("The axes of the sdy.all_reduce should match the sharded contracting
# dimensions").
def contract_in_mesh_order(op: ir.Operation, layouts: mir.Layouts, sdy_mesh: SdyMesh) -> None:
    """List `op`'s contracting dims in the order of their axes (free: the sum
    is the same), reshard a dim split over axes out of mesh order
    (`b:cols+rows`) to mesh order (a collective_permute), and gather whole a
    dim whose axes interleave with another's (`b:x` and `s:a+y` on mesh
    a,x,y)."""
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
                op.operands[k] = reshard(x, mir.value_dims(x), target, sdy_mesh).results[0]
    if order != list(range(len(pairs))):
        _set_contracting(op, numbers, [pairs[i] for i in order])


def _set_contracting(op: ir.Operation, numbers, pairs: list[tuple[int, int]]) -> None:
    op.attributes["dot_dimension_numbers"] = hlo.DotDimensionNumbers.get(
        lhs_batching_dimensions=list(numbers.lhs_batching_dimensions),
        rhs_batching_dimensions=list(numbers.rhs_batching_dimensions),
        lhs_contracting_dimensions=[l for l, _ in pairs],
        rhs_contracting_dimensions=[r for _, r in pairs],
    )


workaround("contraction-mesh-order", "annotate",
           "a dot_general summing over split dims whose axes, dim after dim, are not in mesh order: "
           "`sdy-convert-global-to-local` fails an internal CHECK (\"The axes of the sdy.all_reduce should match "
           "the sharded contracting dimensions\") that aborts the process; so the contracting dims are listed in "
           "axis order, a dim split out of mesh order is resharded to it, interleaved dims are gathered whole")(
    _each_op("stablehlo.dot_general", contract_in_mesh_order))


_AXIS_REF = re.compile(r'"([^"]*)"(:\(\d+\)\d+)?')


def _axis_refs(attr: ir.Attribute) -> list[str]:
    """``["cols", "rows:(1)2"]`` from a printed axis ref (list)."""
    return [name + (sub or "") for name, sub in _AXIS_REF.findall(str(attr))]


def _sdy_sharding_of(value: ir.Value, fn: ir.Operation) -> list[list[str]] | None:
    """Per dim, the axes of `value`'s sharding in Shardy's planned module."""
    op = _op_of(value)
    owner = ir.BlockArgument(value).owner.owner if op is None else None
    owner = owner.operation if owner is not None and hasattr(owner, "operation") else owner
    if op is None and owner.name != "func.func":  # a loop's block argument: its carried value's sharding
        attr = (sdy.TensorShardingPerValueAttr(owner.attributes[SDY_SHARDING]).shardings[ir.BlockArgument(value).arg_number]
                if SDY_SHARDING in owner.attributes else None)
    elif op is None:
        attrs = ir.DictAttr(ir.ArrayAttr(fn.attributes["arg_attrs"])[ir.BlockArgument(value).arg_number])
        attr = attrs[SDY_SHARDING] if SDY_SHARDING in attrs else None
    elif "out_sharding" in op.attributes:
        attr = op.attributes["out_sharding"]
    elif "sharding" in op.attributes:
        attr = op.attributes["sharding"]
    elif SDY_SHARDING in op.attributes:
        attr = sdy.TensorShardingPerValueAttr(op.attributes[SDY_SHARDING]).shardings[ir.OpResult(value).result_number]
    else:
        attr = None
    if attr is None:
        return None
    return [[ref for a in sdy.DimensionShardingAttr(d).axes for ref in _axis_refs(a)]
            for d in sdy.TensorShardingAttr(attr).dimension_shardings]


def _split_contractions(fn: ir.Operation):
    """(dot_general, its lhs's planned sharding, the axes of Shardy's
    all_reduce after it) for every dot Shardy completes with an all_reduce."""
    for op in program_ops(fn):
        if op.name != "stablehlo.dot_general":
            continue
        reductions = [u.owner for u in op.results[0].uses if getattr(u.owner, "name", "") == "sdy.all_reduce"]
        lhs = _sdy_sharding_of(op.operands[0], fn)
        if reductions and lhs is not None:
            yield op, lhs, _axis_refs(reductions[0].attributes["reduction_axes"])


@workaround("order-contractions", "planned",
            "the same CHECK as `contraction-mesh-order`, against the all_reduce Shardy actually planned: each "
            "dot_general's contracting dims are listed in the order of that all_reduce's axes; what no order "
            "fixes is refused in one line instead of aborting the process")
def order_contractions(module: ir.Module) -> None:
    """List each dot_general's contracting dims in the order of the axes of
    the all_reduce Shardy planned after it; refuse (one line) what no order
    fixes."""
    for op, lhs, wanted in _split_contractions(mir.entry_function(module)):
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
        _set_contracting(op, numbers, pairs)


def _is_zero_constant(value: ir.Value) -> bool:
    op = _op_of(value)
    if op is None or op.name not in ("stablehlo.constant", "sdy.constant"):
        return False
    attr = ir.DenseElementsAttr(op.attributes["value"])
    if not attr.is_splat:
        return False
    splat = attr.get_splat_value()
    return (ir.FloatAttr(splat).value if isinstance(splat, ir.FloatAttr) else ir.IntegerAttr(splat).value) == 0


@workaround("pad-barrier", "planned",
            "`sdy-convert-global-to-local` aborts on a pad feeding a dot_general that sums over split dims unless "
            "the pad value is a zero `stablehlo.constant` (a guard for padding it adds for uneven shards, which "
            "mtfc's even layouts never need); so a non-zero pad reaches the dot through an optimization_barrier")
def pad_barrier(module: ir.Module) -> None:
    """Pass an operand of a split contraction that is a pad with a non-zero
    value through an ``optimization_barrier`` (same shardings and dims)."""
    for op, _, _ in list(_split_contractions(mir.entry_function(module))):
        for i, x in enumerate(op.operands):
            pad = _op_of(x)
            if pad is not None and pad.name == "stablehlo.pad" and not _is_zero_constant(pad.operands[1]):
                keep = {n: pad.attributes[n] for n in (SDY_SHARDING, mir.DIMS) if n in pad.attributes}
                with pad.location, ir.InsertionPoint(op):
                    barrier = ir.Operation.create("stablehlo.optimization_barrier", results=[x.type],
                                                  operands=[x], attributes=keep)
                op.operands[i] = barrier.results[0]


@workaround("scalar-constants", "planned",
            "Shardy's import turns constants into `sdy.constant`, and the lowering's check that a pad feeding a "
            "split contraction pads with zero knows only `stablehlo.constant`: it aborts the process on an "
            "`sdy.constant` zero; so rank-0 constants go back to `stablehlo.constant` (a scalar is whole)")
def scalar_constants(module: ir.Module) -> None:
    """Rank-0 ``sdy.constant`` back to ``stablehlo.constant`` before lowering."""
    for op in list(mir.walk(mir.entry_function(module))):
        if op.name != "sdy.constant" or ir.RankedTensorType(op.results[0].type).rank != 0:
            continue
        keep = {n: op.attributes[n] for n in ("value", SDY_SHARDING, mir.DIMS) if n in op.attributes}
        with op.location, ir.InsertionPoint(op):
            new = ir.Operation.create("stablehlo.constant", results=[op.results[0].type], attributes=keep)
        op.results[0].replace_all_uses_with(new.results[0])
        op.erase()


# ----------------------------------------------------------------- sub-axes
_SUB_AXIS = re.compile(r'"[^"]*":\(\d+\)\d+')


@workaround("prime-mesh", "replan",
            "a reshard planned with sub-axes (`\"cols\":(2)2`: renaming a dim from cols to rows, merging dims): "
            "`sdy-convert-global-to-local` reads them inconsistently (all_gather as the minor half, all_slice and "
            "collective_permute as the major half) and devices end with the wrong blocks; so a plan naming any "
            "sub-axis is made again on the mesh with every axis split into prime factors")
def uses_sub_axes(module: ir.Module) -> bool:
    """Whether Shardy's plan names a sub-axis (``"cols":(2)2``) anywhere."""
    return bool(_SUB_AXIS.search(module.operation.get_asm(enable_debug_info=False)))


# ------------------------------------------------------------------ reducers
def _reducer(op: ir.Operation) -> ir.Operation | None:
    """The one combining op of a reduction body (``stablehlo.maximum``...), if that is all it is."""
    body = [o.operation for o in op.regions[0].blocks[0].operations]
    if len(body) == 2 and body[1].name == "stablehlo.return" and len(body[0].operands) == 2:
        return body[0]
    return None


@workaround("fix-reducers", "lowered",
            "`sdy.all_reduce` has no reduction kind and `sdy-convert-global-to-local` always combines with "
            "`stablehlo.add`: after a max, min, and, or over a split dim, silently wrong numbers; so the all_reduce "
            "completing a `stablehlo.reduce` gets that reduce's own reducer")
def fix_reducers(fn: ir.Operation) -> None:
    """An all_reduce completing a ``stablehlo.reduce`` over split dims combines
    with that reduce's own reducer."""
    for op in program_ops(fn):
        if op.name != "stablehlo.all_reduce" or len(op.operands) != 1:
            continue
        source = _op_of(op.operands[0])
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


# -------------------------------------------------------------------- loops
@workaround("while-block-types", "converted",
            "`sdy-convert-global-to-local` gives a `stablehlo.while`'s operands and results their local types but "
            "leaves its cond's and body's block arguments global (the module then fails to verify: \"expect operands "
            "to be compatible with condition block arguments\"); so each block argument gets its carried value's "
            "local type (the while's operand's, which Shardy set from the same closed sharding)")
def while_block_types(module: ir.Module) -> None:
    """Each cond and body block argument of every ``stablehlo.while`` takes
    the (local) type of the while operand it carries."""
    for op in mir.walk(module.operation):
        if op.name != "stablehlo.while":
            continue
        for region in op.regions:
            for arg, x in zip(region.blocks[0].arguments, op.operands):
                if arg.type != x.type:
                    arg.set_type(x.type)


@workaround("dynamic-slice-sizes", "converted",
            "`sdy-convert-global-to-local` gives a `stablehlo.dynamic_slice` its local result type but keeps its "
            "global `slice_sizes` (a loop slicing a stacked parameter split along a non-loop dim fails to verify: "
            "\"slice size 32 greater than dimension size 8\"); so the sizes become the local result's shape -- "
            "right because Shardy slices only whole dims (a dim it slices partly is resharded whole first)")
def dynamic_slice_sizes(module: ir.Module) -> None:
    """Each ``stablehlo.dynamic_slice``'s ``slice_sizes`` become its result's (local) shape."""
    for op in mir.walk(module.operation):
        if op.name != "stablehlo.dynamic_slice":
            continue
        shape = list(ir.RankedTensorType(op.results[0].type).shape)
        if list(ir.DenseI64ArrayAttr(op.attributes["slice_sizes"])) != shape:
            op.attributes["slice_sizes"] = ir.DenseI64ArrayAttr.get(shape)
