"""What the partition pass learns of the module, and does to it, before its
driver runs: one walk (in C++) finds whether any op carries a sharding
annotation (a gspmd-mode module's) and whether there are loops; the
annotations are then removed op by op only when there are some -- a module
straight from the frontend has none -- and the loops' dims are checked
(`check_loop_dims`) only when there are loops (an unrolled model has none)."""

from __future__ import annotations

from typing import NamedTuple

from jax.extend.mlir import ir

from mtfc import ir as mir

_MARKER_OPS = frozenset(("sdy.mesh", "sdy.reshard"))


class Survey(NamedTuple):
    annotated: bool  # something `mir.strip_partitioning_in_place` removes below the module's own attributes
    loops: bool  # a stablehlo.while anywhere


def survey(module: ir.Module) -> Survey:
    """What `strip_partitioning` and the loop check need to know: whether an
    op carries one of `mir.PARTITIONING_ATTRS` (the module op included), an
    argument or result of a function carries one, or Shardy's mesh or
    reshards or XLA's sharding constraints are there; and whether any
    ``stablehlo.while`` is.  One walk, stopped once both are found."""
    names = mir.PARTITIONING_ATTRS
    found = {"annotated": False, "loops": False}

    def visit(op: ir.Operation) -> ir.WalkResult:
        name = op.name
        if name == "stablehlo.while":
            found["loops"] = True
        if not found["annotated"]:
            attrs = op.attributes
            hit = name in _MARKER_OPS or any(n in attrs for n in names)
            if not hit and name == "stablehlo.custom_call":
                hit = mir.is_sharding_constraint(op)
            if not hit and name == "func.func":
                hit = any(n in ir.DictAttr(d) for key in ("arg_attrs", "res_attrs") if key in attrs
                          for d in ir.ArrayAttr(attrs[key]) for n in names)
            found["annotated"] = hit
        if found["annotated"] and found["loops"]:
            return ir.WalkResult.INTERRUPT
        return ir.WalkResult.ADVANCE

    module.operation.walk(visit)
    return Survey(found["annotated"], found["loops"])


def annotated(module: ir.Module) -> bool:
    """Whether `module` carries any annotation `strip_partitioning` removes op by op."""
    return survey(module).annotated


def strip_partitioning(module: ir.Module, annotated: bool) -> None:
    """`mir.strip_partitioning_in_place` of `module`, in fewer steps when it
    is not `annotated` (`survey`): then only the module's own attributes
    change (its module-level partitioning attributes removed,
    ``mtfc.partitioning = "none"``), all the full strip would do."""
    if annotated:
        mir.strip_partitioning_in_place(module)
        return
    attrs = module.operation.attributes
    for name in mir.MODULE_PARTITIONING_ATTRS:
        if name in attrs:
            del attrs[name]
    attrs[mir.PARTITIONING] = ir.StringAttr.get("none")
