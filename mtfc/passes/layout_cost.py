"""Analysis `layout-cost`: the collectives the explicit partitioner will emit
for a layout, predicted from the *global* module, without writing the
per-device program -- what a layout search calls once per candidate.

`predict(module, layouts)` walks @main as the frontend emits it (before any
partitioning) with the explicit partitioner's own decisions, which are pure
functions of layouts: `op_rules` factors, the rules' operand targets
(`dot_targets`, `gather_targets`, `broadcast_target`, `transpose_target`,
`reshape_plan`, `conv_plan`, `halo_plan`, `reverse_target`, `pool_plan`
in `mtfc/passes/partition/`) and the reshard plan
(`collectives.plan_reshard`), with the emitter's one-reshard-per-(value,
layout) reuse.  Each op yields `PredictedCollective` records:

``all_reduce``          a split ``sum`` factor: a dot's contracting dim, a
                        reduced dim (with the reduce's reducer), a lookup's
                        looked-up dim;
``all_gather``          a dim an op needs whole (or on fewer axes) that is split;
``all_to_all``          an axis moving from one dim to another;
``collective_permute``  a split window factor: the halos of a shift (the
                        ``mtfc.shift`` composite, ``slice(pad(x))``) and the
                        window exchanges of a slice, pad or concatenate along
                        a dim split alike in operands and result
                        (`window_plan`, `window_distances`, `window_pairs`,
                        `shift_pairs` in `partition/windows.py`); the
                        halos of a convolution's split spatial dims (static
                        slices or `fetch_window`) and of a pool's split
                        windowed dims (`halo_widths`), and the rows a
                        select_and_scatter wrote into them, sent back.

A convolution's ``all_reduce`` sums its split input features and
kernel-gradient spatial dims.  An op with split values that no prediction
covers is refused in one line (`MtfcError`: "layout-cost has no prediction
for <op> ...", saying whether the partitioner has a rule); nothing is guessed.

**Loops** (``stablehlo.while``, docs/IR.md "Loops").  Each carried value
has the layout of its dims and class (``mtfc.dims``, ``mtfc.classes``), at
entry, in the body and at exit.  So a loop yields: each operand resharded to
its carried value's layout at entry (once, at the loop's location); the
body's ops predicted like @main's, each record with ``trips`` =
`mir.enclosing_trip_count` (the cond's ops too; they are scalar); each value
the body returns resharded to its carried value's layout (once per trip).
The loop's results have the carried layouts.  Inside and outside loops, a
``dynamic_slice`` whose sliced dims (size below the operand's) are whole is
local, its pass-through dims keeping the operand's split; a
``dynamic_update_slice`` likewise keeps its buffer's layout, with the update
resharded to it (its sliced dims whole); a split sliced dim is refused.  Then
the result is resharded to its own layout, as for every op.  `summarize`
counts a record ``trips`` times.

**What is predicted: the partitioner's output before `fuse-collectives`**
(the program `mtfc opt --passes verify-names,partition` writes; equal to
`comm_analysis.module_collectives` of it, kind by kind, in count and bytes).
Fusion only merges or rewrites these (all_reduce + slice -> reduce_scatter,
independent all_reduces merged), so the prediction is an upper bound on the
fused program's counts.

Requires: a global module (``mtfc.partitioning`` ``none`` or ``gspmd``) with
the IR contract (`verify-names`).  Read-only.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import Mesh
from mtfc.passes import comm_analysis, op_rules
from mtfc.passes.collectives import Axes, plan_reshard
from mtfc.passes.partition.contraction import dot_targets
from mtfc.passes.partition.common import RULES
from mtfc.passes.partition.convolution import conv_plan, dilation_error, halo_plan, reverse_target
from mtfc.passes.partition.driver import ELEMENTWISE
from mtfc.passes.partition.gather import gather_targets
from mtfc.passes.partition.local import broadcast_target, reshape_plan, transpose_target
from mtfc.passes.partition.pooling import pool_plan, windowed_dims
from mtfc.passes.partition.windows import (halo_widths, neighbour_pairs, shift_pairs, window_distances, window_of,
                                           window_pairs, window_plan, _whole_along)
from mtfc.passes.composites import KNOWN, SELECT_AND_SCATTER, SHIFT, composite_name, shift_attributes


@dataclass
class PredictedCollective:
    """One collective the explicit partitioner will emit, per device."""

    kind: str                 # a comm_analysis kind
    axes: list[str]           # the mesh axes it communicates over
    n: int                    # group size
    bytes: int                # S, per device (comm_analysis's convention)
    bus_bytes: float
    op: str                   # the global op it is emitted for ("func.return" for a result)
    location: str             # that op's location
    dims: list[str]           # the dims that cause it (summed, gathered, or moved from -> to)
    reason: str               # one line: why
    trips: int = 1            # executions per step (inside loops: the product of their trip counts)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Prediction:
    """Every predicted collective, in program order, and their totals."""

    mesh: Mesh
    collectives: list[PredictedCollective] = field(default_factory=list)

    def summary(self) -> dict:
        """`comm_analysis.summarize` of the records: by kind and in total."""
        return comm_analysis.summarize(self.collectives)

    def lines(self) -> list[str]:
        """One line per collective: what, over which axes, how many bytes, why (and ``in loop (×N)``)."""
        return [f"{c.kind} over {'+'.join(c.axes)} ({c.bytes} B): {c.reason} at {c.location}"
                + ("" if c.trips == 1 else f", in loop (×{c.trips})") for c in self.collectives]


@dataclass(frozen=True)
class _Value:
    """A per-device value as the partitioner holds it: global dims and shape, axes per dim."""

    id: int
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    axes: tuple[Axes, ...]
    element_bytes: int


class _Predictor:
    def __init__(self, module: ir.Module, layouts: mir.Layouts):
        self.layouts = layouts
        self.mesh = layouts.mesh
        self.out = Prediction(self.mesh)
        self._ids = itertools.count()
        self._reshards: dict[tuple, _Value] = {}
        self.where = ("", "")  # (op name, location or ir.Location) being predicted: printed only when recorded
        self.trips = 1  # how often the op being predicted runs per step (its loops' trip counts)

    # ------------------------------------------------------------ values
    def factor(self, axes: Axes) -> int:
        return math.prod(self.mesh.axis_size(a) for a in axes)

    def value(self, dims, shape, axes, element_bytes) -> _Value:
        return _Value(next(self._ids), tuple(dims), tuple(shape), tuple(tuple(a) for a in axes), element_bytes)

    def local_bytes(self, x: _Value) -> int:
        return math.prod(s // self.factor(a) for s, a in zip(x.shape, x.axes)) * x.element_bytes

    def block(self, x: _Value) -> list[int]:
        """`x`'s block shape on one device."""
        return [s // self.factor(a) for s, a in zip(x.shape, x.axes)]

    def local_bytes_with(self, x: _Value, k: int, length: int, block: list[int] | None = None) -> int:
        """Bytes of `x`'s block (or of `block`, a local shape of x's elements) with dim `k` cut to `length`."""
        shape = list(block if block is not None else self.block(x))
        shape[k] = length
        return math.prod(shape) * x.element_bytes

    def permute(self, pairs, size: int, dim: str, reason: str) -> None:
        self.record("collective_permute", tuple(comm_analysis.axes_of_pairs(self.mesh, pairs) or ()), size, [dim],
                    reason)

    def location(self) -> str:
        where = self.where[1]
        return where if isinstance(where, str) else mir.location_text(where)

    def record(self, kind: str, axes: Axes, size: int, dims: list[str], reason: str) -> None:
        n = self.factor(axes)
        self.out.collectives.append(PredictedCollective(
            kind, list(axes), n, size, comm_analysis.bus_bytes(kind, n, size), self.where[0], self.location(),
            dims, reason, self.trips))

    # ----------------------------------------------------------- reshard
    def reshard(self, x: _Value, target) -> _Value:
        """`collectives.Emitter.reshard`, recording instead of emitting."""
        target = tuple(tuple(a) for a in target)
        if target == x.axes:
            return x
        key = (x.id, x.axes, target)
        if key not in self._reshards:
            y = x
            for step in plan_reshard(x.axes, target):
                axes = list(y.axes)
                if step[0] == "all_to_all":
                    _, moved, i, j = step
                    axes[i] = y.axes[i][: len(y.axes[i]) - len(moved)]
                    axes[j] = y.axes[j] + moved
                    self.record("all_to_all", moved, self.local_bytes(y), [y.dims[i], y.dims[j]],
                                f"axis {'+'.join(moved)} moves from dim {y.dims[i]!r} to dim {y.dims[j]!r}")
                elif step[0] == "all_gather":
                    _, i, moved = step
                    axes[i] = y.axes[i][: len(y.axes[i]) - len(moved)]
                    gathered = self.local_bytes(y) * self.factor(moved)
                    self.record("all_gather", moved, gathered, [y.dims[i]],
                                f"dim {y.dims[i]!r} is needed without {'+'.join(moved)}")
                else:
                    _, i, added = step
                    axes[i] = y.axes[i] + added
                y = self.value(y.dims, y.shape, axes, y.element_bytes)
            self._reshards[key] = y
        return self._reshards[key]

    def all_reduce(self, x: _Value, axes: Axes, kind: str, dims: list[str]) -> None:
        if axes:
            self.record("all_reduce", axes, self.local_bytes(x), dims,
                        f"{kind} over dim{'s' if len(dims) > 1 else ''} {', '.join(repr(d) for d in dims)} "
                        f"split over {'+'.join(axes)}")

    # ----------------------------------------------------------- windows
    def window_exchange(self, sources, k: int, shape, axes) -> None:
        """`partition.windows.window_exchange`: each source resharded to the
        result's layout (dim k on the first source's axes), then the windows
        `fetch_window` permutes, one collective_permute per block distance."""
        first_axes = sources[0][0].axes[k]
        c = shape[k] // self.factor(first_axes)
        for x, t in sources:
            x = self.reshard(x, [tuple(axes[i]) if i != k else first_axes for i in range(len(axes))])
            self.fetch_window(x, k, lambda j, t=t: j * c + t, c, self.block(x))

    def fetch_window(self, x: _Value, k: int, start, length: int, block: list[int]) -> None:
        """`partition.windows.fetch_window` of `x` (local shape `block`, dim k
        split over ``x.axes[k]``): one collective_permute per nonzero block
        distance, S = the window's block."""
        groups = self.mesh.groups(list(x.axes[k]))
        L = x.shape[k] // self.factor(x.axes[k])
        for delta in window_distances(len(groups[0]), L, x.shape[k], start, length):
            if delta:
                self.permute(window_pairs(groups, delta), self.local_bytes_with(x, k, length, block), x.dims[k],
                             f"window of dim {x.dims[k]!r} from {abs(delta)} block(s) "
                             f"{'after' if delta > 0 else 'before'}")

    def shift_exchange(self, x: _Value, k: int, t: int, wrap: bool, axes) -> _Value:
        """`partition.windows.shift_exchange`: at most two halos permuted."""
        x = self.reshard(x, [axes[i] if i != k else x.axes[k] for i in range(len(axes))])
        groups = self.mesh.groups(list(x.axes[k]))
        block = x.shape[k] // self.factor(x.axes[k])
        q, r = divmod(t, block)
        for shift, width in [(q, block - r)] + ([(q + 1, r)] if r else []):
            if shift:
                self.permute(shift_pairs(groups, shift, wrap), self.local_bytes_with(x, k, width), x.dims[k],
                             f"halo of dim {x.dims[k]!r} ({width} wide) shifted by {shift} block(s)")
        return x

    def windowed(self, op: ir.Operation, env: dict, args: list, dims, shape, axes):
        """The result axes of a slice, pad, concatenate or composite (the
        explicit rules' paths), or False for a pad/concatenate partitioned
        with the slice that reads it."""
        if op.name in ("stablehlo.pad", "stablehlo.concatenate"):
            users = [u.owner for u in op.results[0].uses]
            if len(users) == 1 and window_of(self, users[0].operation, env) is not None:
                return False
        if op.name == "stablehlo.slice" and window_of(self, op, env) is not None:
            x, k, t, wrap, _ = window_of(self, op, env)
            return self.shift_exchange(x, k, t, wrap, axes).axes
        if op.name == "stablehlo.composite":
            if composite_name(op) != SHIFT:
                return None
            k, offset, wrap = shift_attributes(op)
            if axes[k]:
                t = (-offset) % shape[k] if wrap else -offset
                return self.shift_exchange(args[0], k, t, wrap, axes).axes
            return self.reshard(args[0], axes).axes
        sources, k, cut = window_plan(op, args, axes)
        if sources is not None:
            self.window_exchange(sources, k, shape, axes)
            return axes
        if op.name == "stablehlo.concatenate":
            target = tuple(() if i in cut else a for i, a in enumerate(axes))
            for x in args:
                self.reshard(x, target)
            return target
        return self.reshard(args[0], _whole_along(args[0], cut)).axes

    # ------------------------------------------------- convolutions, pools
    def convolution(self, op: ir.Operation, args: list, dims, shape, axes, ebytes: int) -> tuple:
        """`partition.convolution`: the operands to `conv_plan`'s targets, the
        halos of the split spatial dims (`halo_plan`: static slices, one
        permute per side, or `fetch_window`), the all_reduce of the split
        input features and kernel-gradient spatial sums; the computed layout."""
        lhs, rhs = args
        plan = conv_plan(op, lhs.axes, rhs.shape, shape, axes, self.factor)
        lhs = self.reshard(lhs, plan.lhs)
        self.reshard(rhs, plan.rhs)
        local = self.block(lhs)
        for h in plan.halos:
            k, dim = h.lhs_dim, lhs.dims[h.lhs_dim]
            groups = self.mesh.groups(list(lhs.axes[k]))
            how = halo_plan(len(groups[0]), local[k], h.start, h.span, h.lhs_dilation)
            if how is None:
                raise dilation_error(mir.describe_op(op), dim, lhs.axes[k], h.lhs_dilation)
            if how[0] == "static":
                for width, delta, side in ((how[1], -1, "before"), (how[2], 1, "after")):
                    if width > 0:
                        self.permute(window_pairs(groups, delta), self.local_bytes_with(lhs, k, width, local), dim,
                                     f"halo of dim {dim!r} ({width} wide) from the block {side}")
            else:
                self.fetch_window(lhs, k, how[1], how[2], local)
            local[k] = local[k] + how[1] + how[2] if how[0] == "static" else how[2]
        c = op_rules.conv_numbers(op)
        summed = {c.lhs[1]} | {h.lhs_dim for h in plan.halos if h.kernel_view}
        self.all_reduce(self.value(dims, shape, plan.compute, ebytes), plan.summed, "sum",
                        [lhs.dims[i] for i in sorted(summed) if plan.lhs[i]])
        return plan.compute

    def pool_halos(self, x: _Value, plan, what: str, extended: list[int] | None = None) -> list[int]:
        """`pooling._halo_plan`'s permutes (`windows.halo_window`): per split
        windowed dim, HL rows from the block before and HR from the one after
        (`halo_widths`), after a local base dilation; the extended block.
        With the `extended` block (what this returned): the mirror
        (`windows.scatter_window_add`, dims in reverse), the HL / HR rows
        written around each block sent back to their owners; the block."""
        back = extended is not None
        block = self.block(x)
        local = list(extended) if back else list(block)
        for h in (reversed(plan) if back else plan):
            k, dim = h.dim, x.dims[h.dim]
            if not back:
                local[k] *= h.base_dilation
            groups = self.mesh.groups(list(x.axes[k]))
            L = block[k] if back else local[k]
            _, hl, hr = halo_widths(len(groups[0]), L, h.start, h.length, dim, x.axes[k], what)
            for rows, step, side in ((hl, 1, "before"), (hr, -1, "after")):
                if rows:
                    self.permute(neighbour_pairs(groups, -step if back else step),
                                 self.local_bytes_with(x, k, rows, local), dim,
                                 f"pooling gradient of dim {dim!r}: {rows} rows written {side} the block, sent back"
                                 if back else f"pooling halo of dim {dim!r} ({rows} rows) from the block {side}")
            local[k] = L if back else h.length
        return local

    def reduce_window(self, op: ir.Operation, args: list, shape, axes) -> None:
        """`partition.pooling.reduce_window`: the operand to the result's layout, its halos."""
        what = mir.describe_op(op)
        if len(op.operands) != 2:
            raise MtfcError(f"partition: no rule splits the variadic {what}")
        x = self.reshard(args[0], axes)
        plan, _ = pool_plan(windowed_dims(op), axes, shape, self.factor, x.dims, what)
        self.pool_halos(x, plan, what)

    def select_and_scatter(self, op: ir.Operation, args: list, axes) -> None:
        """`partition.pooling.select_and_scatter_rule`: operand and source to
        the result's layout, the operand's halos, then the rows written into
        them sent back to their owners (`windows.scatter_window_add`)."""
        what = mir.describe_op(op)
        x = self.reshard(args[0], axes)
        source = self.reshard(args[1], axes)
        plan, _ = pool_plan(windowed_dims(op), axes, source.shape, self.factor, x.dims, what)
        self.pool_halos(x, plan, what, extended=self.pool_halos(x, plan, what))

    # --------------------------------------------------------------- ops
    def run(self, module: ir.Module) -> Prediction:
        fn = mir.entry_function(module)
        env: dict[ir.Value, _Value] = {}
        for arg, sig in zip(fn.regions[0].blocks[0].arguments, mir.arguments(module)):
            env[arg] = self.value(sig.dims, sig.shape, self.layouts.of_signature(sig).axes, _element_bytes(arg))
        for op in mir.body_ops(fn):
            self.where = (op.name, op.location)
            if op.name == "func.return":
                for v, sig in zip(op.operands, mir.results(module)):
                    self.reshard(env[v], self.layouts.of_signature(sig).axes)
                continue
            self.op(op, env)
        return self.out

    def loop(self, op: ir.Operation, env: dict) -> None:
        """A ``stablehlo.while`` (see the module docstring, "Loops")."""
        what = mir.describe_op(op)
        all_dims = mir.op_result_dims(op)
        classes = mir.op_result_classes(op)
        if all_dims is None or len(all_dims) != len(op.results) or len(classes) != len(op.results):
            raise MtfcError(f"layout-cost: {what} has no {mir.DIMS} and {mir.CLASSES} per carried value")
        carried = []
        for k, r in enumerate(op.results):
            shape = tuple(ir.RankedTensorType(r.type).shape)
            axes = self.layouts.of_value(all_dims[k], shape, cls=classes[k],
                                         what=f"value {k} carried by {what}").axes
            carried.append((all_dims[k], shape, axes, _element_bytes(r)))
        here = (op.name, op.location)
        for v, c in zip(op.operands, carried):  # entry: each operand to its carried layout
            if env.get(v) is not None:
                self.reshard(env[v], c[2])
        outer = self.trips
        self.trips = outer * mir.loop_trip_count(op)
        for r_index, region in enumerate(op.regions):
            block = region.blocks[0]
            for arg, c in zip(block.arguments, carried):
                env[arg] = self.value(*c)
            for inner in block.operations:
                inner = inner.operation
                self.where = (inner.name, inner.location)
                if inner.name == "stablehlo.return":
                    if r_index == 1:  # the body's: each returned value to its carried layout
                        for v, c in zip(inner.operands, carried):
                            if env.get(v) is not None:
                                self.reshard(env[v], c[2])
                    continue
                self.op(inner, env)
        self.trips = outer
        self.where = here
        for r, c in zip(op.results, carried):
            env[r] = self.value(*c)

    def sliced(self, op: ir.Operation, x: _Value, cut: list[int]) -> tuple:
        """The layout of `x` with the dims in `cut` whole, the others as `x`'s
        (a dynamic slice or update along whole dims is local); a split cut dim is refused."""
        if any(x.axes[k] for k in cut):
            raise MtfcError(_no_prediction(op))
        return tuple(() if k in cut else x.axes[k] for k in range(len(x.shape)))

    def op(self, op: ir.Operation, env: dict) -> None:
        if op.name == "stablehlo.while":
            self.loop(op, env)
            return
        all_dims = mir.op_result_dims(op)
        if all_dims is None or len(op.results) != 1:
            raise MtfcError(f"layout-cost: {mir.describe_op(op)} has no single result with {mir.DIMS}")
        dims = all_dims[0]
        result = op.results[0]
        shape = tuple(ir.RankedTensorType(result.type).shape)
        axes = self.layouts.of_value(dims, shape, cls=mir.op_class(op), what=mir.describe_op_lazily(op, "value of ")).axes
        args = [env[v] for v in op.operands]
        ebytes = _element_bytes(result)
        rule = op_rules.rule_of(op.name)
        family = rule.family if rule is not None else None
        out_axes = axes
        if op.name == "stablehlo.dot_general":
            lhs_target, rhs_target, lc = dot_targets(op, args[0].axes, axes)
            lhs = self.reshard(args[0], lhs_target)
            self.reshard(args[1], rhs_target)
            summed = tuple(a for i in lc for a in lhs.axes[i])
            self.all_reduce(self.value(dims, shape, axes, ebytes), summed, "sum",
                            [lhs.dims[i] for i in lc if lhs.axes[i]])
        elif op.name == "stablehlo.reduce":
            x = args[0]
            reduced = list(ir.DenseI64ArrayAttr(op.attributes["dimensions"]))
            out_axes = tuple(x.axes[i] for i in range(len(x.shape)) if i not in reduced)
            summed = tuple(a for i in reduced for a in x.axes[i])
            self.all_reduce(self.value(dims, shape, out_axes, ebytes), summed,
                            op_rules.reducer_of_body(op) or "sum", [x.dims[i] for i in reduced if x.axes[i]])
        elif op.name == "stablehlo.gather":
            table, indices = args
            numbers = hlo.GatherDimensionNumbers(op.attributes["dimension_numbers"])
            axis = list(numbers.collapsed_slice_dims)[0]
            table_target, vocab_axes = gather_targets(table.axes, axis, len(indices.shape), axes)
            self.reshard(table, table_target)
            self.reshard(indices, axes[: len(indices.shape)])
            self.all_reduce(self.value(dims, shape, axes, ebytes), vocab_axes, "sum", [table.dims[axis]])
        elif op.name == "stablehlo.broadcast_in_dim":
            self.reshard(args[0], broadcast_target(op, axes))
        elif op.name == "stablehlo.transpose":
            self.reshard(args[0], transpose_target(op, axes))
        elif op.name == "stablehlo.reshape":
            target_in, out_axes = reshape_plan(list(args[0].shape), list(shape), axes, self.factor)
            self.reshard(args[0], target_in)
        elif family in ("elementwise", "control"):
            for x in args:
                if x.shape:
                    self.reshard(x, axes)
        elif op.name in ("stablehlo.constant", "stablehlo.iota"):
            pass  # made or cut locally
        elif op.name == "stablehlo.dynamic_slice":
            x = args[0]
            sizes = list(ir.DenseI64ArrayAttr(op.attributes["slice_sizes"]))
            out_axes = self.sliced(op, x, [k for k in range(len(x.shape)) if sizes[k] != x.shape[k]])
        elif op.name == "stablehlo.dynamic_update_slice":
            buffer, update = args[0], args[1]
            out_axes = self.sliced(op, buffer, [k for k in range(len(buffer.shape))
                                                if update.shape[k] != buffer.shape[k]])
            self.reshard(update, out_axes)
        elif op.name == "stablehlo.convolution":
            out_axes = self.convolution(op, args, dims, shape, axes, ebytes)
        elif op.name == "stablehlo.reverse":
            out_axes = tuple(reverse_target(op, axes))
            self.reshard(args[0], out_axes)
        elif op.name == "stablehlo.reduce_window":
            self.reduce_window(op, args, shape, axes)
        elif op.name == "stablehlo.composite" and composite_name(op) == SELECT_AND_SCATTER:
            self.select_and_scatter(op, args, axes)
        elif op.name in ("stablehlo.slice", "stablehlo.pad", "stablehlo.concatenate", "stablehlo.composite") and (
                (out_axes := self.windowed(op, env, args, dims, shape, axes)) is not None):
            if out_axes is False:
                env[result] = None  # partitioned with the slice that reads it
                return
        elif any(a for x in args for a in x.axes) or any(axes):
            raise MtfcError(_no_prediction(op))
        else:
            out_axes = tuple(() for _ in shape)  # copied whole
        env[result] = self.reshard(self.value(dims, shape, out_axes, ebytes), axes)


def _no_prediction(op: ir.Operation) -> str:
    """The one-line refusal of an op with split values that no prediction
    covers, saying truly whether the explicit partitioner has a rule for it."""
    has_rule = (op.name in RULES or op.name in ELEMENTWISE) and (
        op.name != "stablehlo.composite" or composite_name(op) in KNOWN)
    why = ("the explicit partitioner has a rule for it: `mtfc opt --passes partition` and `mtfc inspect` "
           "measure what it emits" if has_rule else "the explicit partitioner has no rule that splits it either")
    return f"layout-cost has no prediction for {mir.describe_op(op)} with split values: {why}"


_ELEMENT_BYTES: dict = {}  # element type (uniqued, hashable) -> bytes


def _element_bytes(value: ir.Value) -> int:
    t = ir.RankedTensorType(value.type).element_type
    n = _ELEMENT_BYTES.get(t)
    if n is None:
        if len(_ELEMENT_BYTES) > 256:
            _ELEMENT_BYTES.clear()
        n = _ELEMENT_BYTES[t] = comm_analysis.element_bytes(str(t))
    return n


def predict(module: ir.Module, layouts: mir.Layouts | None = None, *, verify: bool = True) -> Prediction:
    """The collectives `partition` will emit for `module` (global, not yet
    partitioned) under `layouts` (default: the module's own mesh and rules).

    `verify=False` skips the IR contract check (`verify_module`) for a caller
    that has made it already -- the layout search predicts one module under
    many layouts."""
    from mtfc.passes.verify_names import verify_module

    if verify:
        verify_module(module)  # the IR contract: a bad module is one line, not a traceback
    kind = mir.partitioning(module)
    if kind not in ("none", "gspmd"):
        raise MtfcError(f"layout-cost: the module is already partitioned ({kind}); predict from the global module")
    layouts = layouts if layouts is not None else mir.module_layouts(module)
    layouts.validate()
    return _Predictor(module, layouts).run(module)
