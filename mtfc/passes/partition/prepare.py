"""What the partition pass does to the module before its driver runs:
remove every sharding annotation (a gspmd-mode module's), skipping the walk
that edits op by op when nothing below the module carries one -- the common
case, a module straight from the frontend."""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir

_MARKER_OPS = frozenset(("sdy.mesh", "sdy.reshard"))


def strip_partitioning(module: ir.Module) -> None:
    """`mir.strip_partitioning_in_place` of `module`, in fewer steps when it
    would only change the module's own attributes: a module with no
    annotation `annotated` finds gets only those edits (its module-level
    partitioning attributes removed, ``mtfc.partitioning = "none"``)."""
    if annotated(module):
        mir.strip_partitioning_in_place(module)
        return
    attrs = module.operation.attributes
    for name in mir.MODULE_PARTITIONING_ATTRS:
        if name in attrs:
            del attrs[name]
    attrs[mir.PARTITIONING] = ir.StringAttr.get("none")


def annotated(module: ir.Module) -> bool:
    """Whether anything `mir.strip_partitioning_in_place` removes or rewrites
    below the module's own attributes is there: an op carrying one of
    `mir.PARTITIONING_ATTRS` (the module op included), an argument or result
    of a function carrying one, Shardy's mesh or reshards, XLA's sharding
    constraints.  One walk in C++, stopped at the first find."""
    names = mir.PARTITIONING_ATTRS
    found = []

    def visit(op: ir.Operation) -> ir.WalkResult:
        name = op.name
        attrs = op.attributes
        hit = name in _MARKER_OPS or any(n in attrs for n in names)
        if not hit and name == "stablehlo.custom_call":
            hit = mir.is_sharding_constraint(op)
        if not hit and name == "func.func":
            hit = any(n in ir.DictAttr(d) for key in ("arg_attrs", "res_attrs") if key in attrs
                      for d in ir.ArrayAttr(attrs[key]) for n in names)
        if hit:
            found.append(name)
            return ir.WalkResult.INTERRUPT
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return bool(found)
