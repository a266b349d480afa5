"""The candidate layouts of a global module on a mesh (docs/layout-search.md, "Search space").

A candidate is two `LayoutRules` texts: the activation rules (``mtfc.layout``)
and, for train steps, the parameter rules (``mtfc.param_layout``, docs/IR.md
"Parameter layouts"; ``""`` = none, parameters follow the activation rules).

**Activation rules.**  Each dim name that appears in the module gets a set
of mesh axes (none: replicated), and one mesh axis may serve several dims
as long as no value of the module -- argument, result, or any op's result,
loop bodies included -- has two of those dims: Mesh TensorFlow's rule, and
`mesh.tensor_layout`'s, which refuses only a tensor with two dims on one
axis.  Megatron's tensor parallelism is such a layout
(``batch:rows,heads:cols,d_ff:cols``: heads and d_ff never meet in one
tensor).  A dim given several axes takes them in mesh order (the other
orders place shards differently but group the same devices in every
collective, so they cost the same and are not enumerated).  A split is kept
only when the product of its axes' sizes divides *every* size the dim has
in the module (a dim may change size between ops: slices, windows) --
`mesh.tensor_layout`'s rule, checked here so that no candidate fails for
divisibility or for a shared axis.

**Parameter rules (train steps).**  ``""`` (parameters stored as the
activation rules lay them out: ZeRO-0 for data parallelism, Megatron's
sharded weights for tensor parallelism), and FSDP / ZeRO-3: the activation
rules restricted to the dims of stored state, plus one dim ``p`` of the
parameters split further over a set of mesh axes that no dim meeting ``p``
in a stored tensor uses (e.g. ``batch:data`` gives ``d_model:data``).  Again
only splits that divide every stored tensor with ``p``.

**Negligible dims are never split.**  A dim whose values all hold at most
1/`NEGLIGIBLE_FRACTION` of the elements of the module's largest value, and
whose ops (those with a factor it names, `cost.flop_table`) do at most
1/`NEGLIGIBLE_FRACTION` of the module's FLOPs, stays replicated -- a train
step's ``schedule_step``, the MoE layer's ``group_cumsum_source``, a
pooling's ``pixel``: splitting it would divide almost no memory or compute
and add collectives, yet every such dim multiplies the space
(``schedule_step`` alone by 4 on a 2 x 4 mesh).  `SpaceInfo.dims`
holds the dims that may be split; `SpaceInfo.negligible` the others.

`SpaceInfo` is read from the IR once (`space_info`): dims, sizes, and which
dim pairs co-occur in some value; enumeration is then pure Python.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Iterator

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.mesh import Mesh

Assignment = tuple[tuple[str, tuple[str, ...]], ...]  # (dim, axes) in first-use order, = LayoutRules.rules

NEGLIGIBLE_FRACTION = 8  # a dim whose largest value holds <= 1/8 of the largest value's elements is not split


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


@dataclass(frozen=True)
class SpaceInfo:
    """The dim names of a module, every size each takes, and which dims meet
    in one value, by layout class."""

    dims: tuple[str, ...]                           # the dims that may be split, in first-appearance order
    sizes: dict[str, frozenset[int]] = field(hash=False)        # activation-class sizes (and every value's)
    param_sizes: dict[str, frozenset[int]] = field(hash=False)  # sizes in stored state (param class)
    train: bool = False
    weight_dims: frozenset[str] = frozenset()  # dims of the parameters (role ``parameter``)
    pairs: frozenset[tuple[str, str]] = frozenset()        # (a, b), a < b: both dims of some value (any class)
    param_pairs: frozenset[tuple[str, str]] = frozenset()  # the same over stored state (param class) only
    negligible: tuple[str, ...] = ()  # dims only small values carry: never split (module docstring)

    @property
    def param_dims(self) -> tuple[str, ...]:
        """The dims FSDP may split stored state along: the parameters' own."""
        return tuple(d for d in self.dims if d in self.param_sizes and d in self.weight_dims)

    def meet(self, a: str, b: str) -> bool:
        """Whether dims `a` and `b` are both dims of some value of the module."""
        return _pair(a, b) in self.pairs


def space_info(module: ir.Module) -> SpaceInfo:
    """Dims, sizes and co-occurring dim pairs of `module`'s arguments, results
    and every op result (loops' bodies included), activation and param class apart."""
    order: dict[str, None] = {}
    sizes: dict[str, set[int]] = {}
    param: dict[str, set[int]] = {}
    weights: set[str] = set()
    pairs: set[tuple[str, str]] = set()
    param_pairs: set[tuple[str, str]] = set()
    largest: dict[str, int] = {}  # dim -> elements of the largest value carrying it

    def add(dims, shape, cls):
        if len(dims) != len(shape):
            return
        elements = math.prod(int(n) for n in shape)
        for d in dims:
            largest[d] = max(largest.get(d, 0), elements)
        for d, n in zip(dims, shape):
            order.setdefault(d)
            (param if cls == "param" else sizes).setdefault(d, set()).add(int(n))
        found = {_pair(a, b) for a, b in itertools.combinations(dims, 2) if a != b}
        pairs.update(found)
        if cls == "param":
            param_pairs.update(found)

    with module.context:
        for sig in list(mir.arguments(module)) + list(mir.results(module)):
            add(sig.dims, sig.shape, mir.class_of_role(sig.role))
            if sig.role == "parameter":
                weights.update(sig.dims)
        for op in mir.walk_ops(mir.entry_function(module)):
            dims = mir.op_result_dims(op)
            if dims is None:
                continue
            classes = mir.op_result_classes(op)
            for k, r in enumerate(op.results):
                if k < len(dims) and isinstance(r.type, ir.RankedTensorType):
                    add(dims[k], ir.RankedTensorType(r.type).shape, classes[k] if k < len(classes) else "activation")
        train = mir.step_kind(module) == "train"
        negligible = _negligible(module, order, largest)
    return SpaceInfo(tuple(d for d in order if d not in negligible), {d: frozenset(s) for d, s in sizes.items()},
                     {d: frozenset(s) for d, s in param.items()}, train, frozenset(weights),
                     frozenset(pairs), frozenset(param_pairs), negligible)


def _negligible(module: ir.Module, order, largest: dict[str, int]) -> tuple[str, ...]:
    """The dims of `order` that are small in both memory and FLOPs (module docstring)."""
    from mtfc.layout.cost import flop_table

    biggest = max(largest.values(), default=0)
    small = [d for d in order if largest[d] * NEGLIGIBLE_FRACTION <= biggest]
    if not small:
        return ()
    ops = flop_table(module)
    total = sum(op.flops for op in ops)
    share = {d: sum(op.flops for op in ops if any(name == d for name, _ in op.factors)) for d in small}
    return tuple(d for d in small if share[d] * NEGLIGIBLE_FRACTION <= total)


def divides(mesh: Mesh, axes, sizes) -> bool:
    factor = math.prod(mesh.axis_size(a) for a in axes)
    return all(n % factor == 0 for n in sizes)


def _all_sizes(info: SpaceInfo, dim: str) -> frozenset[int]:
    return info.sizes.get(dim, frozenset()) | info.param_sizes.get(dim, frozenset())


def rules_text(assignment: Assignment) -> str:
    """``"batch:rows,d_ff:cols"`` (dims in first-appearance order; `LayoutRules` text)."""
    return ",".join(f"{d}:{'+'.join(a)}" for d, a in assignment)


def canonical(info: SpaceInfo, mesh: Mesh, axes_of: dict[str, set[str] | tuple[str, ...]]) -> Assignment:
    """A dim -> axes map as rules: dims in module order, each dim's axes in mesh order."""
    return tuple((d, tuple(a for a in mesh.names if a in axes_of[d])) for d in info.dims if axes_of.get(d))


def shared_conflict(info: SpaceInfo, assignment: Assignment, pairs=None) -> tuple[str, str, str] | None:
    """(axis, dim, dim) for two dims on one axis that meet in some value, or None."""
    pairs = info.pairs if pairs is None else pairs
    users: dict[str, list[str]] = {}
    for d, axes in assignment:
        for a in axes:
            for e in users.get(a, ()):
                if _pair(d, e) in pairs:
                    return a, e, d
            users.setdefault(a, []).append(d)
    return None


def valid_activation(info: SpaceInfo, mesh: Mesh, assignment: Assignment) -> bool:
    """Every split divides every size of its dim (activations' and stored state's:
    parameters without their own rules follow these), and no two dims that
    meet in one value share a mesh axis."""
    return (all(divides(mesh, axes, _all_sizes(info, d)) for d, axes in assignment)
            and shared_conflict(info, assignment) is None)


def _axis_groups(info: SpaceInfo, mesh: Mesh, axis: str) -> list[tuple[str, ...]]:
    """Every set of pairwise non-meeting dims that may take `axis` (its size
    divides theirs), the empty set first, in module order."""
    able = [d for d in info.dims if divides(mesh, (axis,), _all_sizes(info, d))]
    out: list[tuple[str, ...]] = []

    def grow(start: int, group: tuple[str, ...]):
        out.append(group)
        for i in range(start, len(able)):
            d = able[i]
            if not any(info.meet(d, e) for e in group):
                grow(i + 1, group + (d,))

    grow(0, ())
    return out


def activation_space(info: SpaceInfo, mesh: Mesh) -> Iterator[Assignment]:
    """Every valid activation assignment, replicated first, lazily: per mesh
    axis a set of pairwise non-meeting dims (or none)."""
    groups = [_axis_groups(info, mesh, a) for a in mesh.names]
    for pick in itertools.product(*groups):
        axes_of: dict[str, set[str]] = {}
        for a, group in zip(mesh.names, pick):
            for d in group:
                axes_of.setdefault(d, set()).add(a)
        assignment = canonical(info, mesh, axes_of)
        if all(divides(mesh, axes, _all_sizes(info, d)) for d, axes in assignment):
            yield assignment


def activation_space_size(info: SpaceInfo, mesh: Mesh) -> int:
    """An upper bound of `activation_space`'s length (before the combined
    divisibility): the product over axes of the dim sets each may take."""
    return math.prod(len(_axis_groups(info, mesh, a)) for a in mesh.names)


def moves(info: SpaceInfo, mesh: Mesh, assignment: Assignment) -> list[Assignment]:
    """`assignment` with one more (dim, mesh axis), every valid one -- the
    beam search's moves.  The axis may already serve other dims, those that
    never meet the dim in one value (so shared-axis layouts are reachable)."""
    axes_of = {d: set(axes) for d, axes in assignment}
    out = []
    for d in info.dims:
        sizes = _all_sizes(info, d)
        mine = axes_of.get(d, set())
        for a in mesh.names:
            if a in mine or any(a in axes_of.get(e, ()) for e in info.dims if e != d and info.meet(d, e)):
                continue
            if not divides(mesh, [*mine, a], sizes):
                continue
            new = dict(axes_of)
            new[d] = mine | {a}
            out.append(canonical(info, mesh, new))
    return out


def extensions(info: SpaceInfo, mesh: Mesh, assignment: Assignment, axis: str) -> list[Assignment]:
    """The `moves` of `assignment` that add mesh axis `axis`."""
    before = {d: set(axes) for d, axes in assignment}
    return [b for b in moves(info, mesh, assignment)
            if any(axis in axes and axis not in before.get(d, ()) for d, axes in b)]


def param_space(info: SpaceInfo, mesh: Mesh, assignment: Assignment) -> list[str]:
    """The parameter rules for activation rules `assignment` (train steps):
    ``""`` first, then each FSDP option (see the module docstring)."""
    out = [""]
    if not info.train or not info.param_sizes:
        return out
    stored = [(d, axes) for d, axes in assignment if d in info.param_sizes]
    seen = {rules_text(tuple(stored))}
    for p in info.param_dims:
        mine = dict(stored).get(p, ())
        blocked = {a for d, axes in stored if d != p and _pair(d, p) in info.param_pairs for a in axes}
        free = [a for a in mesh.names if a not in mine and a not in blocked]
        for r in range(1, len(free) + 1):
            for extra in itertools.combinations(free, r):
                axes_of = {d: set(axes) for d, axes in stored}
                axes_of[p] = set(mine) | set(extra)
                rules = canonical(info, mesh, axes_of)
                if not all(divides(mesh, axes, info.param_sizes.get(d, ())) for d, axes in rules):
                    continue
                text = rules_text(rules)
                if text not in seen:
                    seen.add(text)
                    out.append(text)
    return out
