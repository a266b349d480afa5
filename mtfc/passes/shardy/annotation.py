"""mtfc's layouts as closed Shardy shardings: Shardy's mesh for an mtfc mesh
(`SdyMesh`), a value's layout (`value_layout`), and `annotate`, which writes
``sdy.mesh @mesh`` and a closed ``sdy.sharding`` on every argument, result and
body-op result of @main (the ops of a loop's cond and body too; a
``stablehlo.while`` gets one sharding per carried value, from its
``mtfc.dims`` and ``mtfc.classes``) (docs/passes/shardy.md, "Layouts as sdy shardings").

Requires: the IR contract (``mtfc.dims`` everywhere, a mesh, layout rules).
Guarantees: the module is otherwise unchanged; every dim is closed, so
Shardy can neither add an axis to a dim nor drop one.
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.passes.loops import program_ops
from mtfc.errors import MtfcError
from mtfc.mesh import Mesh, TensorLayout

SDY_SHARDING = "sdy.sharding"
MESH_NAME = "mesh"


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


def set_attr(attrs: ir.DictAttr, name: str, value: ir.Attribute) -> ir.DictAttr:
    """`attrs` with `name` set to `value`."""
    out = {a.name: a.attr for a in attrs}
    out[name] = value
    return ir.DictAttr.get(out)


value_layout = mir.value_layout  # shared with gspmd mode


def reshard(value: ir.Value, dims: list[str], layout: TensorLayout, sdy_mesh: SdyMesh) -> ir.Operation:
    """``sdy.reshard`` of `value` to `layout`, at the current insertion point and location."""
    op = ir.Operation.create("sdy.reshard", results=[value.type], operands=[value],
                             attributes={"sharding": ir.Attribute.parse(sdy_mesh.tensor_sharding(layout))})
    mir.set_op_result_dims(op, [dims])
    return op


def annotate(module: ir.Module, layouts: mir.Layouts, sdy_mesh: SdyMesh) -> None:
    """Write ``sdy.mesh @mesh`` and a closed ``sdy.sharding`` on every argument,
    result and body-op result of @main; the module is otherwise unchanged."""
    fn = mir.entry_function(module)
    for key, sigs, what in (("arg_attrs", mir.arguments(module), "argument"),
                            ("res_attrs", mir.results(module), "result")):
        if not sigs:
            continue
        attrs = [
            set_attr(ir.DictAttr(a), SDY_SHARDING, ir.Attribute.parse(sdy_mesh.tensor_sharding(
                layouts.of_value(s.dims, s.shape, cls=mir.class_of_role(s.role), what=f"{what} {s.name!r}"))))
            for a, s in zip(ir.ArrayAttr(fn.attributes[key]), sigs)
        ]
        fn.attributes[key] = ir.ArrayAttr.get(attrs)
    for op in program_ops(fn):  # loop bodies and conds too
        if op.name in ("func.return", "stablehlo.return") or not len(op.results):
            continue
        dims = mir.op_result_dims(op)
        if dims is None:
            raise MtfcError(f"sdy-partition: {mir.describe_op(op)} carries no {mir.DIMS}")
        if len(dims) != len(op.results):
            raise MtfcError(f"sdy-partition: {mir.describe_op(op)} has {len(op.results)} results but "
                            f"{mir.DIMS} for {len(dims)}")
        results = [  # a loop: each carried value by its dims and its class (mtfc.classes)
            layouts.of_value(d, ir.RankedTensorType(r.type).shape, cls=cls,
                             what=f"value of {mir.describe_op(op)}")
            for d, r, cls in zip(dims, op.results, mir.op_result_classes(op))
        ]
        op.attributes[SDY_SHARDING] = ir.Attribute.parse(sdy_mesh.op_sharding(results))
    for op in list(module.body.operations):  # a stale mesh of the same name
        if op.operation.name == "sdy.mesh":
            op.operation.erase()
    mesh_op = ir.Operation.parse(f"sdy.mesh @{MESH_NAME} = {sdy_mesh.text()}")
    ir.InsertionPoint.at_block_begin(module.body).insert(mesh_op)
