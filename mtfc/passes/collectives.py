"""Building blocks of explicit partitioning: local values, collectives, reshards.

A `Local` is one per-device SSA value together with what it means globally:
its dim names, its global sizes, and the mesh axes that split each dim.
`Emitter` writes per-device StableHLO at an insertion point: collectives whose
replica groups come from mesh axes, the device's own offset along a split
dim, and `reshard`, which moves a value from one layout to another with the
fewest collectives it knows (all_to_all when an axis moves between two dims,
all_gather when an axis is dropped, a local dynamic_slice when one is added).

Device ``d`` of the mesh runs replica ``d``; mesh coordinates are row-major
over the mesh axes (see `mtfc.mesh.Mesh.coords`).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import Mesh, shard_index
from mtfc.passes import op_rules

Axes = tuple[str, ...]



@dataclass(slots=True, unsafe_hash=True)  # not frozen: a frozen dataclass's __init__ costs 3x (one per value)
class Local:
    """A per-device value: `value` holds this device's block of a global tensor
    with dims `dims`, global sizes `shape`, each dim split over `axes[i]`.
    Never changed once made (`dataclasses.replace` makes another)."""

    value: ir.Value
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    axes: tuple[Axes, ...]

    @property
    def element_type(self) -> ir.Type:
        return ir.RankedTensorType(self.value.type).element_type

    @property
    def local_shape(self) -> tuple[int, ...]:
        return tuple(ir.RankedTensorType(self.value.type).shape)


def plan_reshard(have: Sequence[Axes], target: Sequence[Axes]) -> list[tuple]:
    """The steps that move a value laid out as `have` to `target` (mesh axes
    per dim), in order: ``("all_to_all", axes, from_dim, to_dim)``,
    ``("all_gather", dim, axes)``, ``("slice", dim, axes)`` (local).

    For each dim, the axes that are not a prefix shared with the target are
    dropped (gathered) and the target's remaining axes added (sliced); an
    axis group dropped whole from one dim and added whole at the end of
    another travels by one all_to_all instead.  Pure: `Emitter.reshard`
    carries the steps out, `mtfc.passes.layout_cost` predicts their cost."""
    keep = []
    for h, w in zip(have, target):
        p = 0
        while p < min(len(h), len(w)) and h[p] == w[p]:
            p += 1
        keep.append(p)
    drop = {i: tuple(have[i][keep[i]:]) for i in range(len(target)) if have[i][keep[i]:]}
    add = {i: tuple(target[i][keep[i]:]) for i in range(len(target)) if target[i][keep[i]:]}
    steps: list[tuple] = []
    for i in list(drop):
        for j in list(add):
            if i != j and j not in drop and drop.get(i) and add.get(j) == drop[i]:
                steps.append(("all_to_all", drop[i], i, j))
                del drop[i], add[j]
                break
    steps += [("all_gather", i, axes) for i, axes in drop.items()]
    steps += [("slice", i, axes) for i, axes in add.items()]
    return steps


def groups_attr(mesh: Mesh, axes: Sequence[str]) -> ir.DenseIntElementsAttr:
    return ir.DenseIntElementsAttr.get(np.array(mesh.groups(list(axes)), dtype=np.int64))


class Emitter:
    """Writes per-device ops for one function body; every op it makes carries
    ``mtfc.dims`` and the location current when it is called."""

    def __init__(self, mesh: Mesh):
        self.mesh = mesh
        self._replica_id: ir.Value | None = None
        self._offsets: dict[tuple[Axes, int], ir.Value] = {}
        self._reshards: dict[tuple, Local] = {}  # one reshard per (value, target layout)
        self._factors: dict[tuple, int] = {}
        self._groups: dict[tuple, ir.DenseIntElementsAttr] = {}
        self._scalars: dict[ir.Type, ir.RankedTensorType] = {}  # element type -> its rank-0 tensor type

    @contextmanager
    def region(self):
        """Emit into a nested region (a loop's body): values emitted once per
        function (the replica id, shard offsets, reshards) are made afresh
        inside it, and the ones made inside are forgotten when it closes, so
        no value is used outside the block that defines it and the region
        uses no value from outside."""
        saved = self._replica_id, self._offsets, self._reshards
        self._replica_id, self._offsets, self._reshards = None, {}, {}
        try:
            yield
        finally:
            self._replica_id, self._offsets, self._reshards = saved

    # -------------------------------------------------------------- basics
    def factor(self, axes: Axes) -> int:
        """The number of shards along `axes` (the product of their sizes)."""
        key = tuple(axes)
        f = self._factors.get(key)
        if f is None:
            f = self._factors[key] = math.prod(self.mesh.axis_size(a) for a in axes)
        return f

    def groups(self, axes: Sequence[str]) -> ir.DenseIntElementsAttr:
        """`groups_attr` of `axes`, made once per emitter."""
        key = tuple(axes)
        attr = self._groups.get(key)
        if attr is None:
            attr = self._groups[key] = groups_attr(self.mesh, key)
        return attr

    def local_shape(self, shape: Sequence[int], axes: Sequence[Axes]) -> list[int]:
        return [s // self.factor(a) for s, a in zip(shape, axes)]

    def tensor_type(self, shape: Sequence[int], element_type: ir.Type) -> ir.RankedTensorType:
        return ir.RankedTensorType.get(list(shape), element_type)

    @staticmethod
    def tag(op, dims: Sequence[str]) -> ir.Value:
        """Write `dims` as the ``mtfc.dims`` of `op`'s one result; return the result."""
        operation = op.operation if hasattr(op, "operation") else op
        operation.attributes[mir.DIMS] = mir.str_array(dims)  # mir.set_op_result_dims of one result
        return operation.results[0]

    def scalar_i32(self, value: int) -> ir.Value:
        i32 = ir.IntegerType.get_signless(32)
        attr = ir.DenseElementsAttr.get(np.array(value, dtype=np.int32), type=self.tensor_type([], i32))
        return self.tag(hlo.ConstantOp(attr), [])

    # ------------------------------------------------------- device offsets
    def replica_id(self) -> ir.Value:
        """This device's index (i32 scalar), emitted once per function."""
        if self._replica_id is None:
            raw = self.tag(hlo.ReplicaIdOp(), [])
            self._replica_id = self.tag(
                hlo.ConvertOp(self.tensor_type([], ir.IntegerType.get_signless(32)), raw), []
            )
        return self._replica_id

    def shard_offset(self, axes: Axes, chunk: int) -> ir.Value:
        """i32 scalar: where this device's block of a dim split over `axes` in
        chunks of `chunk` starts -- a per-device table indexed by replica id."""
        key = (tuple(axes), chunk)
        if key not in self._offsets:
            table = np.array(
                [shard_index(self.mesh.coords(d), axes, self.mesh) * chunk for d in range(self.mesh.size)],
                dtype=np.int32,
            )
            i32 = ir.IntegerType.get_signless(32)
            const = self.tag(hlo.ConstantOp(ir.DenseElementsAttr.get(table, type=self.tensor_type([len(table)], i32))), ["mesh"])
            picked = self.tag(hlo.DynamicSliceOp(const, [self.replica_id()], [1]), ["mesh"])
            self._offsets[key] = self.tag(hlo.ReshapeOp(self.tensor_type([], i32), picked), [])
        return self._offsets[key]

    # ----------------------------------------------------------- collectives
    def all_reduce(self, x: Local, axes: Axes, kind: str) -> Local:
        """Combine `x` with `kind` across the devices that differ only along `axes`."""
        if not axes:
            return x
        value = x.value
        op = ir.Operation.create("stablehlo.all_reduce", results=[value.type], operands=[value], regions=1,
                                 attributes={"replica_groups": self.groups(axes), mir.DIMS: mir.str_array(x.dims)})
        scalar = self._scalars.get(x.element_type)
        if scalar is None:
            scalar = self._scalars[x.element_type] = self.tensor_type([], x.element_type)
        block = op.regions[0].blocks.append(scalar, scalar)
        with ir.InsertionPoint(block):
            args = block.arguments
            combine = ir.Operation.create(op_rules.REDUCERS[kind], results=[scalar], operands=[args[0], args[1]])
            ir.Operation.create("stablehlo.return", operands=[combine.results[0]])
        return Local(op.results[0], x.dims, x.shape, x.axes)

    def all_gather(self, x: Local, dim: int, axes: Axes) -> Local:
        """Concatenate along `dim` the blocks of the devices along `axes`, which
        must be the minor-most axes splitting that dim."""
        if not axes:
            return x
        have = x.axes[dim]
        assert have[len(have) - len(axes):] == tuple(axes), (have, axes)
        shape = list(x.local_shape)
        shape[dim] *= self.factor(axes)
        op = hlo.AllGatherOp([self.tensor_type(shape, x.element_type)], [x.value], dim, self.groups(axes))
        new_axes = list(x.axes)
        new_axes[dim] = have[: len(have) - len(axes)]
        return replace(x, value=self.tag(op, x.dims), axes=tuple(new_axes))

    def all_to_all(self, x: Local, axes: Axes, from_dim: int, to_dim: int) -> Local:
        """Move mesh `axes` (the minor-most of `from_dim`) to the minor end of `to_dim`."""
        count = self.factor(axes)
        op = hlo.AllToAllOp([x.value], to_dim, from_dim, count, self.groups(axes))
        new_axes = list(x.axes)
        new_axes[from_dim] = x.axes[from_dim][: len(x.axes[from_dim]) - len(axes)]
        new_axes[to_dim] = x.axes[to_dim] + tuple(axes)
        return replace(x, value=self.tag(op, x.dims), axes=tuple(new_axes))

    def local_slice(self, x: Local, dim: int, axes: Axes) -> Local:
        """Keep this device's block of `dim` when it is further split over `axes`."""
        if not axes:
            return x
        shape = list(x.local_shape)
        if shape[dim] % self.factor(axes):
            raise MtfcError(f"dim {x.dims[dim]!r}: local size {shape[dim]} is not divisible by mesh axes {'+'.join(axes)}")
        shape[dim] //= self.factor(axes)
        zero = self.scalar_i32(0)
        starts = [self.shard_offset(tuple(axes), shape[dim]) if i == dim else zero for i in range(len(shape))]
        op = hlo.DynamicSliceOp(x.value, starts, shape)
        new_axes = list(x.axes)
        new_axes[dim] = x.axes[dim] + tuple(axes)
        return replace(x, value=self.tag(op, x.dims), axes=tuple(new_axes))

    def collective_permute(self, value: ir.Value, dims: Sequence[str], pairs: list[tuple[int, int]]) -> ir.Value:
        """Send `value` from each source device to its target; devices nobody
        sends to receive zeros."""
        attr = ir.DenseIntElementsAttr.get(np.array(pairs, dtype=np.int64).reshape(-1, 2))
        return self.tag(hlo.CollectivePermuteOp(value, attr, results=[value.type]), dims)

    # ---------------------------------------------------------------- reshard
    def reshard(self, x: Local, target: Sequence[Axes], what: str = "value") -> Local:
        """`x` laid out as `target` (mesh axes per dim, positionally).

        For each dim, the axes of `x` that are not a prefix shared with the
        target are dropped (gathered) and the target's remaining axes added
        (sliced).  An axis dropped from one dim and added at the end of another
        travels by one all_to_all instead of a gather and a slice.
        """
        target = tuple(tuple(a) for a in target)
        if target == x.axes:
            return x
        key = (x.value, x.axes, target)
        if key not in self._reshards:
            self._reshards[key] = self._reshard(x, target, what)
        return self._reshards[key]

    def _reshard(self, x: Local, target: tuple[Axes, ...], what: str) -> Local:
        if len(target) != len(x.axes):
            raise AssertionError(f"reshard of rank-{len(x.axes)} {what} to a rank-{len(target)} layout")
        for i, axes in enumerate(target):
            if x.shape[i] % self.factor(axes):
                raise MtfcError(
                    f"{what}: dim {x.dims[i]!r} of size {x.shape[i]} is not divisible by mesh axes {'+'.join(axes)}"
                )
        for step in plan_reshard(x.axes, target):
            if step[0] == "all_to_all":
                x = self.all_to_all(x, step[1], step[2], step[3])
            elif step[0] == "all_gather":
                x = self.all_gather(x, step[1], step[2])
            else:
                x = self.local_slice(x, step[1], step[2])
        assert x.axes == target, (x.axes, target)
        return x
