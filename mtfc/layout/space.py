"""The candidate layouts of a global module on a mesh (docs/layout.md, "Search space").

A candidate is two `LayoutRules` texts: the activation rules (``mtfc.layout``)
and, for train steps, the parameter rules (``mtfc.param_layout``, docs/IR.md
"Parameter layouts"; ``""`` = none, parameters follow the activation rules).

**Activation rules.**  Each mesh axis is given to at most one dim name that
appears in the module (or to none: the dim is replicated over it); a dim
given several axes takes them in mesh order (the other orders place shards
differently but group the same devices in every collective, so they cost
the same and are not enumerated).  A split is kept only when the product of
its axes' sizes divides *every* size the dim has in the module (a dim may
change size between ops: slices, windows) -- `mesh.tensor_layout`'s rule,
checked here so that no candidate fails for divisibility.

**Parameter rules (train steps).**  ``""`` (parameters stored as the
activation rules lay them out: ZeRO-0 for data parallelism, Megatron's
sharded weights for tensor parallelism), and FSDP / ZeRO-3: the activation
rules restricted to the dims of stored state, plus one dim ``p`` of the
stored state split further over a set of mesh axes that no stored dim uses
yet (e.g. ``batch:data`` gives ``d_model:data``).  Again only splits that
divide every stored tensor with ``p``.

`SpaceInfo` is read from the IR once (`space_info`); enumeration is pure Python.
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


@dataclass(frozen=True)
class SpaceInfo:
    """The dim names of a module and every size each takes, by layout class."""

    dims: tuple[str, ...]                           # every dim name, in first-appearance order
    sizes: dict[str, frozenset[int]] = field(hash=False)        # activation-class sizes (and every value's)
    param_sizes: dict[str, frozenset[int]] = field(hash=False)  # sizes in stored state (param class)
    train: bool = False
    weight_dims: frozenset[str] = frozenset()  # dims of the parameters (role ``parameter``)

    @property
    def param_dims(self) -> tuple[str, ...]:
        """The dims FSDP may split stored state along: the parameters' own."""
        return tuple(d for d in self.dims if d in self.param_sizes and d in self.weight_dims)


def space_info(module: ir.Module) -> SpaceInfo:
    """Dims and sizes of `module`'s arguments, results and every op result
    (loops' bodies included), activation and param class apart."""
    order: dict[str, None] = {}
    sizes: dict[str, set[int]] = {}
    param: dict[str, set[int]] = {}
    weights: set[str] = set()

    def add(dims, shape, cls):
        if len(dims) != len(shape):
            return
        for d, n in zip(dims, shape):
            order.setdefault(d)
            (param if cls == "param" else sizes).setdefault(d, set()).add(int(n))

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
    return SpaceInfo(tuple(order), {d: frozenset(s) for d, s in sizes.items()},
                     {d: frozenset(s) for d, s in param.items()}, train, frozenset(weights))


def divides(mesh: Mesh, axes, sizes) -> bool:
    factor = math.prod(mesh.axis_size(a) for a in axes)
    return all(n % factor == 0 for n in sizes)


def _all_sizes(info: SpaceInfo, dim: str) -> frozenset[int]:
    return info.sizes.get(dim, frozenset()) | info.param_sizes.get(dim, frozenset())


def rules_text(assignment: Assignment) -> str:
    """``"batch:rows,d_ff:cols"`` (dims in first-appearance order; `LayoutRules` text)."""
    return ",".join(f"{d}:{'+'.join(a)}" for d, a in assignment)


def canonical(info: SpaceInfo, mesh: Mesh, owner: dict[str, str]) -> Assignment:
    """An axis -> dim map as rules: dims in module order, each dim's axes in mesh order."""
    return tuple((d, tuple(a for a in mesh.names if owner.get(a) == d)) for d in info.dims
                 if any(owner.get(a) == d for a in mesh.names))


def valid_activation(info: SpaceInfo, mesh: Mesh, assignment: Assignment) -> bool:
    """Every split divides every size of its dim (activations' and stored state's:
    parameters without their own rules follow these)."""
    return all(divides(mesh, axes, _all_sizes(info, d)) for d, axes in assignment)


def activation_space(info: SpaceInfo, mesh: Mesh) -> Iterator[Assignment]:
    """Every valid activation assignment (replicated first), each axis to one dim or none."""
    choices = [None, *info.dims]
    for pick in itertools.product(choices, repeat=len(mesh.names)):
        owner = {a: d for a, d in zip(mesh.names, pick) if d is not None}
        assignment = canonical(info, mesh, owner)
        if valid_activation(info, mesh, assignment):
            yield assignment


def activation_space_size(info: SpaceInfo, mesh: Mesh) -> int:
    """An upper bound of `activation_space`'s length (before divisibility): (dims + 1) ** axes."""
    return (len(info.dims) + 1) ** len(mesh.names)


def extensions(info: SpaceInfo, mesh: Mesh, assignment: Assignment, axis: str) -> list[Assignment]:
    """`assignment` with mesh axis `axis` (unused in it) given to each dim in
    turn, the valid ones -- the beam search's moves."""
    owner = {a: d for d, axes in assignment for a in axes}
    out = []
    for d in info.dims:
        o = dict(owner)
        o[axis] = d
        candidate = canonical(info, mesh, o)
        if valid_activation(info, mesh, candidate):
            out.append(candidate)
    return out


def param_space(info: SpaceInfo, mesh: Mesh, assignment: Assignment) -> list[str]:
    """The parameter rules for activation rules `assignment` (train steps):
    ``""`` first, then each FSDP option (see the module docstring)."""
    out = [""]
    if not info.train or not info.param_sizes:
        return out
    stored = [(d, axes) for d, axes in assignment if d in info.param_sizes]
    used = {a for _, axes in stored for a in axes}
    free = [a for a in mesh.names if a not in used]
    seen = set()
    for r in range(1, len(free) + 1):
        for extra in itertools.combinations(free, r):
            for p in info.param_dims:
                owner = {a: d for d, axes in stored for a in axes}
                owner.update({a: p for a in extra})
                rules = canonical(info, mesh, owner)
                if not all(divides(mesh, axes, info.param_sizes.get(d, ())) for d, axes in rules):
                    continue
                text = rules_text(rules)
                if text not in seen and text != rules_text(tuple(stored)):
                    seen.add(text)
                    out.append(text)
    return out
