"""The op-rule registry: for every StableHLO op mtfc emits, how its dims partition.

In the spirit of Shardy's sharding rules (``op_sharding_rule_registry.cc``):
the dims of one op instance are grouped into *factors* -- one per index of the
op's iteration space -- and each operand and result dim is mapped to the
factor that indexes it.  Each factor has a kind:

``pass``    each block of the result is computed from the same blocks of the
            operands (batch and free dims of a dot, every dim of an
            elementwise op): split, it needs no communication;
``sum``     the op combines over the factor (a contracting dim, a reduced
            dim, the looked-up dim of a lookup): split, each device holds a
            partial result, completed by an ``all_reduce`` with the op's
            `OpFactors.reducer` (a ``reduce_scatter`` when the result is
            split);
``window``  result position ``o`` reads operand positions around
            ``o * stride`` (`Window`: convolution and pooling spatial dims
            -- ``reduce_window``, ``mtfc.select_and_scatter`` --,
            slice / pad / concatenate along a dim): split, each block needs a
            halo from its neighbours, fetched by ``collective_permute``;
``whole``   the op needs the dim unsplit (it is gathered first).

An operand or result dim mapped to no factor (None) must be whole.

`RULES` holds one `OpRule` per op name.  Everything that needs to know about
ops by name -- the explicit partitioner's generic rule, shardy mode's support
guard, verify-names' size check, the communication analyses, the fusion of
collectives -- reads it through `rule_of` and `names`; nothing else keeps a
list of op names.  Adding an op = its frontend primitive, an entry here, and
(only if its factors are not enough) a rule in `mtfc/passes/partition/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from jax.extend.mlir import ir

PASS, SUM, WINDOW, WHOLE = "pass", "sum", "window", "whole"
KINDS = (PASS, SUM, WINDOW, WHOLE)

# How a `sum` factor combines, and the StableHLO op that does it.
REDUCERS = {"sum": "stablehlo.add", "max": "stablehlo.maximum", "min": "stablehlo.minimum",
            "and": "stablehlo.and", "or": "stablehlo.or"}
REDUCER_OF_OP = {op: kind for kind, op in REDUCERS.items()}


@dataclass(frozen=True)
class Window:
    """Operand positions a result position ``o`` reads along a windowed dim:
    ``o * stride - pad_lo + k * dilation`` for ``k`` in ``range(size)``, in the
    operand dilated by ``base_dilation`` (positions between real elements and
    outside ``[0, n)`` read the op's padding value).  A slice from ``b`` with
    stride ``s`` is ``Window(1, stride=s, pad_lo=-b)``; a pad by (lo, hi) is
    ``Window(1, pad_lo=lo, pad_hi=hi)``."""

    size: int = 1
    stride: int = 1
    dilation: int = 1
    pad_lo: int = 0
    pad_hi: int = 0
    base_dilation: int = 1


@dataclass(frozen=True)
class Factor:
    """One index of an op's iteration space: its kind (`KINDS`), its global
    extent, and for a ``window`` factor the window."""

    kind: str
    size: int
    window: Window | None = None


@dataclass(frozen=True)
class OpFactors:
    """The factors of one op instance.  ``operands[i][d]`` (``results[r][d]``)
    is the index in `factors` of the factor dim ``d`` of operand ``i`` (result
    ``r``) is indexed by, or None when that dim must be whole.  `reducer`
    (a key of `REDUCERS`) says how ``sum`` factors combine."""

    factors: tuple[Factor, ...]
    operands: tuple[tuple[int | None, ...], ...]
    results: tuple[tuple[int | None, ...], ...]
    reducer: str | None = None

    def of_kind(self, kind: str) -> list[int]:
        return [i for i, f in enumerate(self.factors) if f.kind == kind]


@dataclass(frozen=True)
class OpRule:
    """What mtfc knows about one StableHLO op.

    family       -- the op's kind, for readers: elementwise, broadcast,
                    transpose, reshape, contraction, reduction, window,
                    lookup, composite, creation, collective, device,
                    control;
    factors      -- op instance -> `OpFactors` (None: the op has no factor
                    rule; the explicit partitioner needs a bespoke rule for
                    it, the analyses treat it as opaque);
    size_keeping -- in a global program each operand dim keeps its size in
                    the result under the same name (verify-names checks it);
    shardy       -- Shardy (jaxlib 0.10) partitions it correctly with split
                    values (possibly thanks to a workaround of
                    `mtfc/passes/shardy`); sdy-partition refuses the others;
    result_dims_of_operand -- its (one) result has its first operand's dims,
                    whatever its shape (a collective, a per-device slice, a
                    copy, a barrier): how sdy-partition names the ops Shardy
                    inserts.
    """

    name: str
    family: str
    factors: Callable[[ir.Operation], OpFactors] | None = None
    size_keeping: bool = False
    shardy: bool = False
    result_dims_of_operand: bool = False


RULES: dict[str, OpRule] = {}


def register(rule: OpRule) -> OpRule:
    if rule.name in RULES:
        raise AssertionError(f"op rule for {rule.name} registered twice")
    RULES[rule.name] = rule
    return rule


def rule_of(op_name: str) -> OpRule | None:
    return RULES.get(op_name)


def names(*, family: str | Iterable[str] | None = None, size_keeping: bool | None = None,
          shardy: bool | None = None, result_dims_of_operand: bool | None = None) -> frozenset[str]:
    """Op names whose rule matches every given filter."""
    families = {family} if isinstance(family, str) else (set(family) if family is not None else None)
    return frozenset(
        r.name for r in RULES.values()
        if (families is None or r.family in families)
        and (size_keeping is None or r.size_keeping == size_keeping)
        and (shardy is None or r.shardy == shardy)
        and (result_dims_of_operand is None or r.result_dims_of_operand == result_dims_of_operand)
    )


def ordered(**filters) -> tuple[str, ...]:
    """`names` (same filters) in registration order."""
    chosen = names(**filters)
    return tuple(n for n in RULES if n in chosen)


def factors_of(op: ir.Operation) -> OpFactors | None:
    """The factors of `op`, or None when its rule has none (or it has no rule)."""
    rule = RULES.get(op.name)
    return rule.factors(op) if rule is not None and rule.factors is not None else None


# ------------------------------------------------------------------ helpers
def _shape(value: ir.Value) -> list[int]:
    t = value.type
    return list(ir.RankedTensorType(t).shape) if isinstance(t, ir.RankedTensorType) else []


def _i64s(op: ir.Operation, name: str) -> list[int]:
    return list(ir.DenseI64ArrayAttr(op.attributes[name]))


def _result_factors(op: ir.Operation) -> tuple[tuple[Factor, ...], tuple[int, ...]]:
    shape = _shape(op.results[0])
    return tuple(Factor(PASS, n) for n in shape), tuple(range(len(shape)))


# ------------------------------------------------------------- elementwise
def elementwise_factors(op: ir.Operation) -> OpFactors:
    """Every dim of the result is a pass factor; operands of the result's rank
    map position by position, scalar operands (a select's predicate, a
    clamp's bounds) to nothing."""
    factors, dims = _result_factors(op)
    operands = tuple(dims if len(_shape(x)) == len(dims) else () for x in op.operands)
    return OpFactors(factors, operands, tuple(dims for _ in op.results))


_ELEMENTWISE = (
    "abs add and compare convert cosine divide exponential exponential_minus_one floor ceil log "
    "log_plus_one logistic maximum minimum multiply negate not or power remainder round_nearest_even "
    "rsqrt select sign sine sqrt subtract tanh xor clamp is_finite"
).split()
for _name in _ELEMENTWISE:
    register(OpRule(f"stablehlo.{_name}", "elementwise", elementwise_factors, size_keeping=True, shardy=True))
register(OpRule("stablehlo.optimization_barrier", "control", elementwise_factors, size_keeping=True, shardy=True,
                result_dims_of_operand=True))


# --------------------------------------------------------- shape-moving ops
def broadcast_factors(op: ir.Operation) -> OpFactors:
    """Result dims are pass factors; an operand dim takes the factor of the
    result dim it becomes, unless it is a size-1 dim broadcast (then whole)."""
    factors, dims = _result_factors(op)
    shape, x = _shape(op.results[0]), _shape(op.operands[0])
    positions = _i64s(op, "broadcast_dimensions")
    operand = tuple(j if x[i] == shape[j] else None for i, j in enumerate(positions))
    return OpFactors(factors, (operand,), (dims,))


def transpose_factors(op: ir.Operation) -> OpFactors:
    factors, dims = _result_factors(op)
    perm = _i64s(op, "permutation")
    operand: list[int | None] = [None] * len(perm)
    for k, src in enumerate(perm):
        operand[src] = k
    return OpFactors(factors, (tuple(operand),), (dims,))


register(OpRule("stablehlo.broadcast_in_dim", "broadcast", broadcast_factors, shardy=True))
register(OpRule("stablehlo.transpose", "transpose", transpose_factors, size_keeping=True, shardy=True))
register(OpRule("stablehlo.reshape", "reshape", shardy=True))  # runs of dims: mtfc/passes/partition/local.py


# ------------------------------------------------------ contractions, reductions
def dot_general_factors(op: ir.Operation) -> OpFactors:
    """Batch dims, then the lhs's and the rhs's free dims: pass factors (the
    result's dims, in this order); contracting dim pairs: sum factors."""
    from jax.extend.mlir.dialects import stablehlo as hlo

    numbers = hlo.DotDimensionNumbers(op.attributes["dot_dimension_numbers"])
    lb, rb = list(numbers.lhs_batching_dimensions), list(numbers.rhs_batching_dimensions)
    lc, rc = list(numbers.lhs_contracting_dimensions), list(numbers.rhs_contracting_dimensions)
    lhs, rhs = _shape(op.operands[0]), _shape(op.operands[1])
    lfree = [i for i in range(len(lhs)) if i not in lb + lc]
    rfree = [i for i in range(len(rhs)) if i not in rb + rc]
    lmap: list[int | None] = [None] * len(lhs)
    rmap: list[int | None] = [None] * len(rhs)
    factors: list[Factor] = []
    for i, j in zip(lb, rb):
        lmap[i] = rmap[j] = len(factors)
        factors.append(Factor(PASS, lhs[i]))
    for i in lfree:
        lmap[i] = len(factors)
        factors.append(Factor(PASS, lhs[i]))
    for j in rfree:
        rmap[j] = len(factors)
        factors.append(Factor(PASS, rhs[j]))
    result = tuple(range(len(factors)))
    for i, j in zip(lc, rc):
        lmap[i] = rmap[j] = len(factors)
        factors.append(Factor(SUM, lhs[i]))
    return OpFactors(tuple(factors), (tuple(lmap), tuple(rmap)), (result,), reducer="sum")


def reducer_of_body(op: ir.Operation) -> str | None:
    """The `REDUCERS` key of a reduction body that is one combining op, else None."""
    body = [o.operation.name for o in op.regions[0].blocks[0].operations]
    return REDUCER_OF_OP.get(body[0]) if len(body) == 2 else None


def reduce_factors(op: ir.Operation) -> OpFactors:
    """Operand dims are factors, the reduced ones sum factors combined with the
    body's reducer; the init values map to nothing.  (Variadic reduces -- an
    argmax -- have no reducer: their sum factors cannot be completed.)"""
    x = _shape(op.operands[0])
    reduced = _i64s(op, "dimensions")
    factors = tuple(Factor(SUM if i in reduced else PASS, n) for i, n in enumerate(x))
    n_inputs = len(op.operands) // 2
    kept = tuple(i for i in range(len(x)) if i not in reduced)
    operands = tuple(tuple(range(len(x))) for _ in range(n_inputs)) + tuple(() for _ in range(n_inputs))
    reducer = reducer_of_body(op) if n_inputs == 1 else None
    return OpFactors(factors, operands, tuple(kept for _ in op.results), reducer=reducer)


register(OpRule("stablehlo.dot_general", "contraction", dot_general_factors, size_keeping=True, shardy=True))
register(OpRule("stablehlo.reduce", "reduction", reduce_factors, size_keeping=True, shardy=True))


# -------------------------------------------------------- windows along dims
def _windowed(op: ir.Operation, windows: dict[int, Window], n_operands_mapped: int) -> OpFactors:
    """Result dims are factors; those in `windows` are window factors; the
    first `n_operands_mapped` operands map position by position, the others
    (a pad value) to nothing."""
    shape = _shape(op.results[0])
    factors = tuple(Factor(WINDOW, n, windows[i]) if i in windows else Factor(PASS, n) for i, n in enumerate(shape))
    dims = tuple(range(len(shape)))
    operands = tuple(dims if k < n_operands_mapped else () for k in range(len(op.operands)))
    return OpFactors(factors, operands, (dims,))


def slice_factors(op: ir.Operation) -> OpFactors:
    x = _shape(op.operands[0])
    start, limit, strides = (_i64s(op, k) for k in ("start_indices", "limit_indices", "strides"))
    windows = {i: Window(1, stride=strides[i], pad_lo=-start[i], pad_hi=limit[i] - x[i])
               for i in range(len(x)) if start[i] != 0 or limit[i] != x[i] or strides[i] != 1}
    return _windowed(op, windows, 1)


def pad_factors(op: ir.Operation) -> OpFactors:
    low, high, interior = (_i64s(op, k) for k in ("edge_padding_low", "edge_padding_high", "interior_padding"))
    windows = {i: Window(1, pad_lo=low[i], pad_hi=high[i], base_dilation=interior[i] + 1)
               for i in range(len(low)) if low[i] or high[i] or interior[i]}
    return _windowed(op, windows, 1)


def concatenate_factors(op: ir.Operation) -> OpFactors:
    """The concatenated dim is a window factor (each part is read at its
    offset; the Window is that of the first part)."""
    d = ir.IntegerAttr(op.attributes["dimension"]).value
    return _windowed(op, {d: Window(1)}, len(op.operands))


def _padding(op: ir.Operation, rank: int) -> list[tuple[int, int]]:
    if "padding" not in op.attributes:
        return [(0, 0)] * rank
    flat = [int(v) for v in ir.DenseIntElementsAttr(op.attributes["padding"])]
    return list(zip(flat[0::2], flat[1::2]))


def _i64s_or(op: ir.Operation, name: str, rank: int, default: int = 1) -> list[int]:
    return _i64s(op, name) if name in op.attributes else [default] * rank


def pooling_windows(sizes, strides, padding, base_dilations, window_dilations) -> dict[int, Window]:
    """The nontrivial `Window`s of a window op, by dim position."""
    windows = {}
    for i, (w, s, (lo, hi), b, d) in enumerate(zip(sizes, strides, padding, base_dilations, window_dilations)):
        window = Window(w, stride=s, dilation=d, pad_lo=lo, pad_hi=hi, base_dilation=b)
        if window != Window():
            windows[i] = window
    return windows


def reduce_window_factors(op: ir.Operation) -> OpFactors:
    """Pooling: dims with a nontrivial window (size, stride, padding,
    dilations) are window factors, the others pass; the init values map to
    nothing; `reducer` is the body's (add: a sum pool, maximum: a max pool)."""
    rank = len(_shape(op.operands[0]))
    windows = pooling_windows(_i64s(op, "window_dimensions"), _i64s_or(op, "window_strides", rank),
                              _padding(op, rank), _i64s_or(op, "base_dilations", rank),
                              _i64s_or(op, "window_dilations", rank))
    f = _windowed(op, windows, len(op.operands) // 2)
    return OpFactors(f.factors, f.operands, tuple(f.results[0] for _ in op.results), reducer=reducer_of_body(op))


def select_and_scatter_factors(op: ir.Operation) -> OpFactors:
    """Max pooling's gradient (operands: operand, source, init): the factors of
    its forward pool over the operand's (= the result's) dims; the source
    indexes the window factors at the pooled positions; the scattered values
    add up (reducer sum)."""
    rank = len(_shape(op.operands[0]))
    ones = [1] * rank
    windows = pooling_windows(_i64s_or(op, "window_dimensions", rank), _i64s_or(op, "window_strides", rank),
                              _padding(op, rank), ones, ones)
    f = _windowed(op, windows, 2)
    return OpFactors(f.factors, f.operands, f.results, reducer="sum")


# shardy: Shardy (jaxlib 0.10) aborts on a split windowed dim; workarounds whole-reduce-window, whole-select-and-scatter keep them whole
register(OpRule("stablehlo.reduce_window", "window", reduce_window_factors, shardy=True))
register(OpRule("stablehlo.select_and_scatter", "window", select_and_scatter_factors, shardy=True))
register(OpRule("stablehlo.slice", "window", slice_factors, shardy=True))
register(OpRule("stablehlo.pad", "window", pad_factors, shardy=True))
register(OpRule("stablehlo.concatenate", "window", concatenate_factors, shardy=True))


# ------------------------------------------------------------ convolutions
@dataclass(frozen=True)
class ConvNumbers:
    """A ``stablehlo.convolution``'s dims and window, read once (the
    partitioner's rule reads it too).  ``lhs``: (batch, feature, spatial...)
    positions in the input, ``rhs``: (in, out, spatial...) in the kernel,
    ``out``: (batch, feature, spatial...) in the result; per spatial dim
    ``strides``, ``padding`` (lo, hi) pairs, ``lhs_dilation``, ``rhs_dilation``."""

    lhs: tuple
    rhs: tuple
    out: tuple
    strides: tuple[int, ...]
    padding: tuple[tuple[int, int], ...]
    lhs_dilation: tuple[int, ...]
    rhs_dilation: tuple[int, ...]
    feature_groups: int
    batch_groups: int

    def kernel_gradient_view(self, op: ir.Operation, i: int) -> bool:
        """Spatial dim `i` is read from the kernel's side: the rhs spatial dim
        is longer than the output's (a kernel gradient: the output gradient is
        the window, the kernel-sized result is summed over its positions)."""
        return _shape(op.operands[1])[self.rhs[2][i]] > _shape(op.results[0])[self.out[2][i]]


def conv_numbers(op: ir.Operation) -> ConvNumbers:
    from jax.extend.mlir.dialects import stablehlo as hlo
    import numpy as np

    d = hlo.ConvDimensionNumbers(op.attributes["dimension_numbers"])
    n = len(list(d.input_spatial_dimensions))
    attrs = op.attributes

    def ints(name: str) -> tuple[int, ...]:
        return tuple(ir.DenseI64ArrayAttr(attrs[name])) if name in attrs else (1,) * n

    pads = ((0, 0),) * n
    if "padding" in attrs:
        rows = np.array(ir.DenseIntElementsAttr(attrs["padding"])).reshape(n, 2)
        pads = tuple((int(lo), int(hi)) for lo, hi in rows)
    return ConvNumbers(
        (d.input_batch_dimension, d.input_feature_dimension, tuple(d.input_spatial_dimensions)),
        (d.kernel_input_feature_dimension, d.kernel_output_feature_dimension, tuple(d.kernel_spatial_dimensions)),
        (d.output_batch_dimension, d.output_feature_dimension, tuple(d.output_spatial_dimensions)),
        ints("window_strides"), pads, ints("lhs_dilation"), ints("rhs_dilation"),
        ir.IntegerAttr(attrs["feature_group_count"]).value, ir.IntegerAttr(attrs["batch_group_count"]).value,
    )


def convolution_factors(op: ir.Operation) -> OpFactors:
    """Batch: pass; output features: pass; input features: sum; each spatial
    dim a window factor over the output (``Window(kernel, stride,
    rhs_dilation, pad_lo, pad_hi, base_dilation=lhs_dilation)``; the kernel's
    spatial dim whole) -- or, in a kernel gradient (`kernel_gradient_view`),
    a sum factor over the rhs's positions whose window is the output's (the
    output spatial dim whole).  Grouped dims are whole: with feature groups
    the features and output features, with batch groups the batches and
    output features.  (A group index is no single dim's factor; the explicit
    rule still keeps group-aligned splits of them local.)"""
    c = conv_numbers(op)
    lhs, rhs, out = _shape(op.operands[0]), _shape(op.operands[1]), _shape(op.results[0])
    lmap: list[int | None] = [None] * len(lhs)
    rmap: list[int | None] = [None] * len(rhs)
    omap: list[int | None] = [None] * len(out)
    factors: list[Factor] = []

    def add(kind, size, window=None, lhs_dim=None, rhs_dim=None, out_dim=None):
        for table, dim in ((lmap, lhs_dim), (rmap, rhs_dim), (omap, out_dim)):
            if dim is not None:
                table[dim] = len(factors)
        factors.append(Factor(kind, size, window))

    grouped = c.feature_groups > 1 or c.batch_groups > 1
    if c.batch_groups == 1:
        add(PASS, out[c.out[0]], lhs_dim=c.lhs[0], out_dim=c.out[0])
    if not grouped:
        add(PASS, out[c.out[1]], rhs_dim=c.rhs[1], out_dim=c.out[1])
    if c.feature_groups == 1:
        add(SUM, lhs[c.lhs[1]], lhs_dim=c.lhs[1], rhs_dim=c.rhs[0])
    for i, (li, ri, oi) in enumerate(zip(*(x[2] for x in (c.lhs, c.rhs, c.out)))):
        lo, hi = c.padding[i]
        if c.kernel_gradient_view(op, i):
            window = Window(out[oi], c.rhs_dilation[i], c.strides[i], lo, hi, c.lhs_dilation[i])
            add(SUM, rhs[ri], window, lhs_dim=li, rhs_dim=ri)
        else:
            window = Window(rhs[ri], c.strides[i], c.rhs_dilation[i], lo, hi, c.lhs_dilation[i])
            add(WINDOW, out[oi], window, lhs_dim=li, out_dim=oi)
    return OpFactors(tuple(factors), (tuple(lmap), tuple(rmap)), (tuple(omap),), reducer="sum")


def reverse_factors(op: ir.Operation) -> OpFactors:
    """The reversed dims are whole (block j would read block K-1-j); the others pass."""
    factors, dims = _result_factors(op)
    reversed_ = set(_i64s(op, "dimensions"))
    mapped = tuple(None if i in reversed_ else i for i in dims)
    return OpFactors(factors, (mapped,), (mapped,))


# shardy: whole along spatial / reversed dims there (workarounds whole-convolution, whole-reverse)
register(OpRule("stablehlo.convolution", "window", convolution_factors, shardy=True))
register(OpRule("stablehlo.reverse", "transpose", reverse_factors, size_keeping=True, shardy=True))


# --------------------------------------------------------------- composites
def composite_factors(op: ir.Operation) -> OpFactors | None:
    """mtfc's composites (`mtfc.passes.composites`): ``mtfc.shift`` is a pass
    factor per dim but the shifted one, a window ``y[o] = x[o - offset]``;
    ``mtfc.select_and_scatter`` (max pooling's gradient) has the factors of
    its forward pool over the operand's (= the result's) dims -- windowed
    dims are window factors, which the source (the pooled gradient) indexes
    at the pooled positions -- and sums the scattered values (reducer sum)."""
    from mtfc.passes.composites import SELECT_AND_SCATTER, SHIFT, composite_name, select_and_scatter_windows
    from mtfc.passes.composites import shift_attributes

    name = composite_name(op)
    if name == SELECT_AND_SCATTER:
        f = _windowed(op, select_and_scatter_windows(op), 2)
        return OpFactors(f.factors, f.operands, f.results, reducer="sum")
    if name != SHIFT:
        return None
    k, offset, _ = shift_attributes(op)
    return _windowed(op, {k: Window(1, pad_lo=offset, pad_hi=-offset)}, 1)


# shardy: Shardy sees the decomposition (sdy-partition inlines composites first)
register(OpRule("stablehlo.composite", "composite", composite_factors, shardy=True))


# ------------------------------------------------------------------ lookups
def gather_factors(op: ir.Operation) -> OpFactors:
    """The DSL's single-dim lookup ``table[indices]``: index dims and the
    table's other dims pass (the result is index dims, then the table's other
    dims); the looked-up dim is a sum factor (each block contributes its own
    rows, zeros elsewhere)."""
    from jax.extend.mlir.dialects import stablehlo as hlo

    table, indices = _shape(op.operands[0]), _shape(op.operands[1])
    numbers = hlo.GatherDimensionNumbers(op.attributes["dimension_numbers"])
    looked = list(numbers.collapsed_slice_dims)
    factors = [Factor(PASS, n) for n in indices]
    tmap: list[int | None] = [None] * len(table)
    for i, n in enumerate(table):
        if i not in looked:
            tmap[i] = len(factors)
            factors.append(Factor(PASS, n))
    result = tuple(range(len(factors)))
    for i in looked:
        tmap[i] = len(factors)
        factors.append(Factor(SUM, table[i]))
    return OpFactors(tuple(factors), (tuple(tmap), tuple(range(len(indices)))), (result,), reducer="sum")


register(OpRule("stablehlo.gather", "lookup", gather_factors, shardy=True))


# ----------------------------------------------------------------- creation
def creation_factors(op: ir.Operation) -> OpFactors:
    factors, dims = _result_factors(op)
    return OpFactors(factors, (), (dims,))


register(OpRule("stablehlo.constant", "creation", creation_factors, shardy=True))
register(OpRule("stablehlo.iota", "creation", creation_factors, shardy=True))


# --------------------------------------- per-device ops (partitioned programs)
for _name in ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "collective_permute",
              "collective_broadcast"):
    register(OpRule(f"stablehlo.{_name}", "collective", result_dims_of_operand=True))
# dynamic_slice / dynamic_update_slice also read and write a loop's stacked values
# (docs/IR.md, "Loops"): Shardy reshards a dim they slice whole and passes the
# others through (checked under several layouts: tests/test_loops_gspmd_shardy.py).
for _name in ("replica_id", "partition_id", "dynamic_slice", "dynamic_update_slice", "copy"):
    register(OpRule(f"stablehlo.{_name}", "device", result_dims_of_operand=_name in ("dynamic_slice", "copy"),
                    shardy=_name in ("dynamic_slice", "dynamic_update_slice")))
# A loop over stacked layers (docs/IR.md "Loops"): no factors -- each carried
# value keeps the layout its dims and class imply; the explicit partitioner
# partitions its regions (mtfc/passes/partition/loops.py); Shardy propagates
# through its data-flow edges (operand, block arguments, returned value,
# result of each carried value).
register(OpRule("stablehlo.while", "control", shardy=True))
register(OpRule("stablehlo.return", "control"))
register(OpRule("func.return", "control"))
