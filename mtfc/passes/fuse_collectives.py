"""Pass `fuse-collectives`: fewer, larger collectives in a per-device program.

Requires: a per-device @main (explicit or shardy mode) whose collectives name
their replica groups.  Guarantees: the same results, computed with
* ``all_gather`` then a slice of the device's own block -> the gather's input;
* a slice of the own block then ``all_gather`` back -> the slice's input;
* ``all_to_all`` followed by its inverse -> the first one's input;
* ``all_reduce`` then a transpose or reshape, its only use -> the transpose
  or reshape, then the ``all_reduce``;
* ``all_reduce`` whose every use takes the device's own block along one dim
  (one slice or several equal ones), directly or through an element-type
  ``convert`` -> one ``reduce_scatter`` along that dim (then the convert of
  the block);
* independent ``all_reduce`` ops over the same groups with the same reducer
  and element type -> one variadic ``all_reduce``, placed right after the
  latest op computing one of their operands, which comes before the first
  op using one of their results (`merge_all_reduces`; not in shardy
  modules, whose manual program XLA's partitioner accepts only with
  single-operand all_reduces);
* identical collectives on the same operands -> one;
then ops left without uses are removed.

Loops (docs/IR.md, "Loops"): the rewrites run on @main's block, then on the
body (and cond) block of every ``stablehlo.while``, nested loops included,
each block on its own like a function body.  A rewrite only combines ops of
one block: a collective is never moved into or out of a loop (that would
change how many times it runs), nor merged with one of another block; an op
whose result is used inside a loop's body counts, in its own block, as used
at the loop.  "The device's own block" is checked
semantically: the slice's start, evaluated on every device, is the device's
position in its replica group times the block size (`device_values`), so
Shardy's ``partition_id`` arithmetic is recognised like mtfc's tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.passes import op_rules
from mtfc.passes.device_values import per_device_value
from mtfc.passes.manager import register_pass
from mtfc.passes.partition.common import clone_region

COLLECTIVES = op_rules.names(family="collective")


def _groups(op: ir.Operation) -> np.ndarray:
    return np.array(ir.DenseIntElementsAttr(op.attributes["replica_groups"]), dtype=np.int64).reshape(
        ir.DenseIntElementsAttr(op.attributes["replica_groups"]).type.shape
    )


def _int_attr(op: ir.Operation, name: str) -> int:
    return ir.IntegerAttr(op.attributes[name]).value


def _shape(value: ir.Value) -> list[int]:
    return list(ir.RankedTensorType(value.type).shape)


def _producer(value: ir.Value) -> ir.Operation | None:
    if isinstance(value, ir.BlockArgument):
        return None
    return ir.OpResult(value).owner.operation


def _users(value: ir.Value) -> list[ir.Operation]:
    return [use.owner.operation if hasattr(use.owner, "operation") else use.owner for use in value.uses]


def _first_result(op: ir.Operation | None) -> ir.Value | None:
    """`op`'s first result (None for None or an op without results)."""
    return op.results[0] if op is not None and len(op.results) else None


def _later(a: ir.Operation | None, b: ir.Operation | None) -> ir.Operation | None:
    """The later of two ops of one block (None counts as before every op)."""
    if a is None:
        return b
    return b if b is not None and a.is_before_in_block(b) else a


def _earlier(a: ir.Operation | None, b: ir.Operation | None) -> ir.Operation | None:
    """The earlier of two ops of one block (None counts as after every op)."""
    if a is None:
        return b
    return b if b is not None and b.is_before_in_block(a) else a


def _merge_key(op: ir.Operation) -> tuple:
    """What all_reduces must share to become one variadic op: replica groups,
    reducer body, element type and the channel/device-id flags."""
    body = [o.operation.name for o in op.regions[0].blocks[0].operations]
    # (attributes and types are uniqued: equal exactly when they print the same)
    return (op.attributes["replica_groups"], tuple(body),
            ir.RankedTensorType(op.operands[0].type).element_type,
            "use_global_device_ids" in op.attributes, "channel_handle" in op.attributes)


def _dedup_key(op: ir.Operation) -> tuple:
    """What makes two collectives identical: name, operands, attributes but the
    dims, reducer body and result types."""
    attrs = tuple(sorted((n, str(op.attributes[n])) for n in op.attributes if n != mir.DIMS))
    body = str(op.regions[0]) if len(op.regions) else ""
    return (op.name, tuple(op.operands), attrs, body, tuple(str(r.type) for r in op.results))


@dataclass
class _Bucket:
    """all_reduces to merge, with the latest op of the block producing one of
    their operands and the earliest op using one of their results."""

    members: list[ir.Operation]
    last_def: ir.Operation | None
    first_use: ir.Operation | None

    def can_take(self, other: "_Bucket") -> bool:
        """Whether every producer of both comes strictly before every user of both."""
        last = _later(self.last_def, other.last_def)
        first = _earlier(self.first_use, other.first_use)
        return last is None or first is None or last.is_before_in_block(first)

    def take(self, other: "_Bucket") -> None:
        self.members.extend(other.members)
        self.last_def = _later(self.last_def, other.last_def)
        self.first_use = _earlier(self.first_use, other.first_use)


class Fuser:
    """The rewrites on one block: @main's body or a loop's body (`block`)."""

    def __init__(self, block: ir.Block, num_devices: int, *, variadic: bool = True):
        self.block = block
        self.n = num_devices
        self.variadic = variadic  # may all_reduces be merged into one variadic op
        self.changed = False
        self.sweep = True  # `remove_dead` sweeps the whole block (the first time: ops dead on entry)
        self.maybe_dead: list[ir.Operation] = []  # ops that may have lost their last use since
        self._ops: list[ir.Operation] | None = None
        self._collectives: list[ir.Operation] | None = None
        self._created: list[ir.Operation] = []  # collectives created since, for `collectives`
        self.loops: list[ir.Operation] = []  # the block's stablehlo.while ops (after `remove_dead`)

    def ops(self) -> list[ir.Operation]:
        """The block's ops in order (a new list after a rewrite creates an op
        (`created`) or `remove_dead` erases some: the only ways the block's
        list of ops changes)."""
        if self._ops is None:
            self._ops = [op.operation for op in self.block.operations]
        return self._ops

    def collectives(self) -> list[ir.Operation]:
        """The block's collectives (`COLLECTIVES`) in order, a snapshot: the
        rewrites visit only these, and the ~95% other ops of a program cost
        nothing.  Kept up to date without rereading the block: a rewrite
        that creates a collective registers it (`created`), `remove_dead`
        drops those it erases."""
        if self._collectives is None:
            self._collectives = [op for op in self.ops() if op.name in COLLECTIVES]
            self._created = []
        known = self._collectives
        for op in self._created:  # (after insertions MLIR renumbers the block once, at the first comparison)
            lo, hi = 0, len(known)
            while lo < hi:
                mid = (lo + hi) // 2
                if known[mid].is_before_in_block(op):
                    lo = mid + 1
                else:
                    hi = mid
            known.insert(lo, op)
        self._created = []
        return list(known)

    def created(self, op: ir.Operation) -> None:
        """Register `op`, just created in this block (every rewrite does, for
        each op it creates): `ops` is reread, and a collective joins
        `collectives` in its place (at the next call: a rewrite visits a
        snapshot)."""
        self._ops = None
        if self._collectives is not None and op.name in COLLECTIVES:
            self._created.append(op)

    def here(self, op: ir.Operation | None) -> bool:
        """Whether `op` is an op of this block (not of a nested region, not outside)."""
        return op is not None and op.block == self.block

    def positions(self, groups: np.ndarray) -> np.ndarray | None:
        """Each device's index within its replica group (None if some device is in none)."""
        pos = np.full(self.n, -1)
        for group in groups:
            for i, d in enumerate(group):
                if 0 <= d < self.n:
                    pos[d] = i
        return None if (pos < 0).any() else pos

    def own_block_dim(self, ds: ir.Operation, source: ir.Value, groups: np.ndarray) -> int | None:
        """The dim along which dynamic_slice `ds` of `source` keeps exactly this
        device's block for `groups` (other dims whole), or None."""
        if ds.name != "stablehlo.dynamic_slice" or ds.operands[0] != source:
            return None
        sizes = list(ir.DenseI64ArrayAttr(ds.attributes["slice_sizes"]))
        full = _shape(source)
        cut = [k for k in range(len(full)) if sizes[k] != full[k]]
        pos = self.positions(groups)
        if len(cut) != 1 or pos is None:
            return None
        k = cut[0]
        if full[k] != sizes[k] * groups.shape[1]:
            return None
        for i, start in enumerate(ds.operands[1:]):
            values = per_device_value(start, self.n)
            if values is None:
                return None
            expected = pos * sizes[k] if i == k else np.zeros(self.n)
            if not np.array_equal(values.reshape(self.n), expected):
                return None
        return k

    def replace(self, old: ir.Value, new: ir.Value) -> None:
        """Replace every use of `old` by `new`: `old`'s op may be left dead, and so
        may `new`'s if `old` had no use (an op a rewrite just created)."""
        for value in (old, new):
            producer = _producer(value)
            if producer is not None:
                self.maybe_dead.append(producer)
        old.replace_all_uses_with(new)
        self.changed = True

    # ------------------------------------------------------------- rewrites
    def gather_then_own_slice(self) -> None:
        for op in self.collectives():
            if op.name != "stablehlo.all_gather" or len(op.results) != 1:
                continue
            k = _int_attr(op, "all_gather_dim")
            for user in _users(op.results[0]):
                if self.here(user) and self.own_block_dim(user, op.results[0], _groups(op)) == k:
                    self.replace(user.results[0], op.operands[0])

    def own_slice_then_gather(self) -> None:
        for op in self.collectives():
            if op.name != "stablehlo.all_gather" or len(op.results) != 1:
                continue
            ds = _producer(op.operands[0])
            if not self.here(ds) or ds.name != "stablehlo.dynamic_slice":
                continue
            if self.own_block_dim(ds, ds.operands[0], _groups(op)) == _int_attr(op, "all_gather_dim"):
                self.replace(op.results[0], ds.operands[0])

    def all_to_all_inverse(self) -> None:
        for op in self.collectives():
            if op.name != "stablehlo.all_to_all" or len(op.results) != 1:
                continue
            first = _producer(op.operands[0])
            if not self.here(first) or first.name != "stablehlo.all_to_all" or len(first.results) != 1:
                continue
            if (_int_attr(op, "split_dimension") == _int_attr(first, "concat_dimension")
                    and _int_attr(op, "concat_dimension") == _int_attr(first, "split_dimension")
                    and np.array_equal(_groups(op), _groups(first))):
                self.replace(op.results[0], first.operands[0])

    def sink_all_reduce(self) -> None:
        """all_reduce then a transpose or reshape == the transpose or reshape
        then all_reduce (a sum commutes with moving elements).  Sinking it
        lets a following own-block slice become a reduce_scatter, and moves a
        gradient's all_reduce past the transpose into its parameter's dim
        order, next to its real consumer (the optimizer), so that
        `merge_all_reduces` can merge the gradients' all_reduces."""
        for _ in range(4):  # through a transpose then a reshape, ...
            if not self._sink_all_reduce_once():
                break
            self.remove_dead()

    def _sink_all_reduce_once(self) -> bool:
        sunk = False
        for op in self.collectives():
            if op.name != "stablehlo.all_reduce" or len(op.results) != 1:
                continue
            users = _users(op.results[0])
            if (len(users) != 1 or users[0].name not in ("stablehlo.transpose", "stablehlo.reshape")
                    or not self.here(users[0])):  # never sunk into a loop body
                continue
            move = users[0]
            sunk = True
            attrs = {n: move.attributes[n] for n in move.attributes}
            with ir.InsertionPoint(move), move.location:
                moved = ir.Operation.create(move.name, results=[move.results[0].type], operands=[op.operands[0]],
                                            attributes=attrs)
                self.created(moved)
                reduce_attrs = {n: op.attributes[n] for n in op.attributes}
                reduce_attrs[mir.DIMS] = move.attributes[mir.DIMS]
                summed = ir.Operation.create("stablehlo.all_reduce", results=[move.results[0].type],
                                             operands=[moved.results[0]], attributes=reduce_attrs, regions=1)
                clone_region(op.regions[0], summed.regions[0])
            self.created(summed)
            self.replace(move.results[0], summed.results[0])
        return sunk

    def reduce_then_own_slice(self) -> None:
        """An all_reduce whose every use keeps this device's block of one dim
        (one slice, or several equal ones -- Shardy cuts a value once per
        consumer, each with its own `partition_id` arithmetic) becomes one
        reduce_scatter along that dim, placed before the first of them.  An
        all_reduce whose only use is an element-type ``convert`` (a bf16
        gradient reaching its f32 master) whose every use is such a slice
        becomes the reduce_scatter, then the convert of the block: a slice
        commutes with a convert exactly, and the sum stays in the all_reduce's
        element type."""
        for op in self.collectives():
            if op.name != "stablehlo.all_reduce" or len(op.results) != 1:
                continue
            users = _users(op.results[0])
            convert = (users[0] if len(users) == 1 and users[0].name == "stablehlo.convert" and self.here(users[0])
                       else None)
            source = convert.results[0] if convert is not None else op.results[0]
            slices = _users(source)
            cut = {self.own_block_dim(ds, source, _groups(op)) for ds in slices}
            if not slices or len(cut) != 1 or None in cut or len({str(ds.results[0].type) for ds in slices}) != 1:
                continue
            if not all(self.here(ds) for ds in slices):
                # a reduce_scatter for a slice in a loop body would run once per trip (and one
                # for slices in other regions would not dominate them all)
                continue
            first = slices[0]
            for ds in slices[1:]:
                first = _earlier(first, ds)
            block_type = ir.RankedTensorType(first.results[0].type)
            summed_element = ir.RankedTensorType(op.results[0].type).element_type
            attrs = {n: op.attributes[n] for n in op.attributes}
            attrs["scatter_dimension"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(64), cut.pop())
            dims = [mir.value_dims(first.results[0])]
            with ir.InsertionPoint(first), first.location:
                rs = ir.Operation.create("stablehlo.reduce_scatter",
                                         results=[ir.RankedTensorType.get(block_type.shape, summed_element)],
                                         operands=[op.operands[0]], attributes=attrs, regions=1)
                clone_region(op.regions[0], rs.regions[0])
                mir.set_op_result_dims(rs, dims)
                self.created(rs)
                block = rs
                if convert is not None:
                    block = ir.Operation.create("stablehlo.convert", results=[block_type], operands=[rs.results[0]],
                                                attributes={n: convert.attributes[n] for n in convert.attributes})
                    mir.set_op_result_dims(block, dims)
                    self.created(block)
            for ds in slices:
                self.replace(ds.results[0], block.results[0])

    def in_block(self, op: ir.Operation) -> ir.Operation | None:
        """`op` if it is an op of this block, else the op of this block whose
        region holds it (a use inside a loop body counts at the loop); None if
        `op` is outside this block (e.g. a value of @main read in a loop body)."""
        while op is not None:
            if op.block == self.block:
                return op
            parent = op.parent
            if parent is None:
                return None
            op = parent.operation if hasattr(parent, "operation") else parent
            if op.name in ("func.func", "builtin.module"):
                return None
        return None

    def last_producer(self, op: ir.Operation) -> ir.Operation | None:
        """The latest op of this block that computes an operand of `op` (None
        when every operand is a block argument or is computed outside the block)."""
        last = None
        for value in op.operands:
            producer = _producer(value)
            if producer is not None:
                last = _later(last, self.in_block(producer))
        return last

    def first_user(self, op: ir.Operation) -> ir.Operation | None:
        """The earliest op of this block that uses a result of `op`
        (directly or inside its regions); None when no result is used."""
        first = None
        for result in op.results:
            for user in _users(result):
                first = _earlier(first, self.in_block(user))
        return first

    def merge_all_reduces(self) -> None:
        """Merge independent all_reduces of one kind into variadic ones.

        Ops are compared by their position in the block (`is_before_in_block`),
        never by hashing `ir.Operation`s: an Operation's hash follows its
        operands and attributes, so it changes when a rewrite replaces a use,
        and a dict keyed by ops silently loses them.  A bucket takes an
        all_reduce while the latest producer of any member's operand comes
        strictly before the first user of any member's result (then no member
        depends on another, even through other ops); its merged op is placed
        right after that producer (before the first member if there is none).
        Slots computed from the original positions are consistent across
        buckets: if bucket A reads what bucket B computes, A's latest producer
        comes after B's first user, which comes after B's slot."""
        buckets: dict[tuple, _Bucket] = {}
        done: list[_Bucket] = []
        for op in self.collectives():
            if op.name != "stablehlo.all_reduce":
                continue
            k = _merge_key(op)
            member = _Bucket([op], self.last_producer(op), self.first_user(op))
            bucket = buckets.get(k)
            if bucket is not None and bucket.can_take(member):
                bucket.take(member)
            else:
                if bucket is not None:
                    done.append(bucket)
                buckets[k] = member
        done.extend(buckets.values())
        for bucket in done:
            if len(bucket.members) > 1:
                self.merge_bucket(bucket)

    def merge_bucket(self, bucket: "_Bucket") -> None:
        """Replace `bucket`'s members by one variadic all_reduce in its slot."""
        members = bucket.members
        first = members[0]
        point = ir.InsertionPoint.after(bucket.last_def) if bucket.last_def is not None else ir.InsertionPoint(first)
        operands = [v for o in members for v in o.operands]
        types = [r.type for o in members for r in o.results]
        attrs = {n: first.attributes[n] for n in first.attributes if n != mir.DIMS}
        with point, merged_location(members):
            merged = ir.Operation.create("stablehlo.all_reduce", results=types, operands=operands,
                                         attributes=attrs, regions=1)
            clone_region(first.regions[0], merged.regions[0])
        self.created(merged)
        mir.set_op_result_dims(merged, [mir.value_dims(r) for o in members for r in o.results])
        results = iter(merged.results)
        for o in members:
            for r in o.results:
                self.replace(r, next(results))
        for result in merged.results:
            for user in _users(result):
                assert merged.is_before_in_block(self.in_block(user)), (
                    f"fuse-collectives: merged all_reduce placed after its user {user.name}")

    def deduplicate(self) -> None:
        seen: dict[tuple, ir.Operation] = {}
        # (name, operands) -> collectives seen with them: the full key (attributes
        # and body printed) only for ops sharing both with an earlier one
        candidates: dict[tuple, list[ir.Operation]] = {}
        for op in self.collectives():
            if op.name not in COLLECTIVES:
                continue
            same = candidates.setdefault((op.name, tuple(op.operands)), [])
            same.append(op)
            if len(same) == 1:
                continue
            if len(same) == 2:
                seen.setdefault(_dedup_key(same[0]), same[0])
            k = _dedup_key(op)
            if k in seen:
                for old, new in zip(op.results, seen[k].results):
                    self.replace(old, new)
            else:
                seen[k] = op

    def remove_dead(self) -> None:
        """Erase the block's ops whose results are all unused (not the
        terminator, nor ops without results), to the fixpoint.

        The first time, one backward sweep of the whole block (an op's users
        come after it).  After it only a `replace` -- every rewrite's one way
        to change the program -- can make an op dead: the op whose value it
        replaced (or the op it created, if that value had no use), then,
        as dead ops go, the producers of their operands.  So later calls
        look only at those (`maybe_dead`): ops all of whose uses are by ops
        found dead (a use inside a loop's body counts at the loop), found
        users first and erased in that order (each once, while every handle
        is valid); the same ops the sweep would erase."""
        if self.sweep:
            self._sweep_block()
            return
        work, self.maybe_dead = self.maybe_dead, []
        dead: list[ir.Operation] = []
        found: set[ir.Value] = set()  # first results of `dead` (a value hashes by identity, an op by content)
        while work:
            op = work.pop()
            if not self.here(op) or op.name == "func.return" or not len(op.results) or op.results[0] in found:
                continue
            if all(_first_result(self.in_block(use.owner.operation)) in found for r in op.results for use in r.uses):
                dead.append(op)
                found.add(op.results[0])
                for inner in (mir.walk(op) if len(op.regions) else (op,)):  # a loop body's uses too
                    work.extend(p for p in map(_producer, inner.operands) if p is not None)
        if not dead:
            return
        if self._collectives is not None:
            self._collectives = [c for c in self._collectives if c.results[0] not in found]
            self._created = [c for c in self._created if c.results[0] not in found]
        self.loops = [w for w in self.loops if not len(w.results) or w.results[0] not in found]
        for op in dead:
            op.erase()
        self._ops = None

    def _sweep_block(self) -> None:
        """`remove_dead` by one backward sweep of the whole block."""
        kept = []
        for op in reversed(self.ops()):
            results = op.results
            if len(results) == 1:  # (most ops: the quick test)
                unused = next(iter(results[0].uses), None) is None
            else:
                unused = len(results) and op.name != "func.return" and all(not list(r.uses) for r in results)
            if unused:
                op.erase()
            else:
                kept.append(op)
        kept.reverse()
        self._ops = kept
        self._collectives = [op for op in kept if op.name in COLLECTIVES]
        self._created = []
        self.loops = [op for op in kept if op.name == "stablehlo.while"]
        self.sweep = False
        self.maybe_dead = []

    def run(self) -> None:
        for _ in range(8):
            self.changed = False
            for rewrite in (self.gather_then_own_slice, self.own_slice_then_gather, self.all_to_all_inverse,
                            self.deduplicate):
                rewrite()
                self.remove_dead()
            if not self.changed:
                break
        self.sink_all_reduce()
        self.remove_dead()
        self.reduce_then_own_slice()
        self.remove_dead()
        if self.variadic:
            self.merge_all_reduces()
            self.remove_dead()


def merged_location(ops: list[ir.Operation]) -> ir.Location:
    """The location of one op that does the work of `ops`: theirs, fused
    (``loc(fused["a"(...), "b"(...)])``, each distinct location once, in
    order), so that every op it serves stays named."""
    distinct = list({str(op.location): op.location for op in ops}.values())
    return distinct[0] if len(distinct) == 1 else ir.Location.fused(distinct)


@register_pass("fuse-collectives")
def fuse_collectives(module: ir.Module, options) -> None:
    """Merge, simplify and remove collectives without changing results."""
    mesh = mir.module_mesh(module)
    # XLA runs Shardy's manual program through its SPMD partitioner, which
    # accepts only single-operand all_reduces
    variadic = mir.partitioning(module) != "shardy"
    _fuse_block(mir.entry_function(module).regions[0].blocks[0], mesh.size, variadic)


def _fuse_block(block: ir.Block, num_devices: int, variadic: bool) -> None:
    """`Fuser` on `block`, then on the cond and body blocks of each loop left
    in it (a loop whose results went unused is gone by then)."""
    fuser = Fuser(block, num_devices, variadic=variadic)
    fuser.run()
    for op in fuser.loops:
        for region in op.regions:
            _fuse_block(region.blocks[0], num_devices, variadic)
