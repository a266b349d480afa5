"""Pass `verify-names`: check the IR contract of docs/IR.md.

Requires: a module with ``func.func @main``.
Guarantees (or fails naming the op): the module's mesh and layout parse and
agree; every argument and result of @main carries ``mtfc.dims``; every op in
@main's body carries ``mtfc.dims`` with one name per tensor dimension and no
name twice.  The module is not changed.
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.manager import register_pass


def _check(dims: list[str], value_type: ir.Type, what: str) -> None:
    if not isinstance(value_type, ir.RankedTensorType):
        return
    rank = ir.RankedTensorType(value_type).rank
    if len(dims) != rank:
        raise MtfcError(f"{what}: mtfc.dims {dims} names {len(dims)} dims for a rank-{rank} tensor")
    for d in dims:
        if dims.count(d) > 1:
            raise MtfcError(f"{what}: dim {d!r} is used twice in mtfc.dims {dims}")


@register_pass("verify-names")
def verify_names(module: ir.Module, options) -> None:
    """Check that every value carries dim names and the mesh/layout are valid."""
    mir.module_layouts(module).validate()
    fn = mir.entry_function(module)
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    for sig, t in zip(mir.arguments(module), ftype.inputs):
        _check(sig.dims, t, f"argument {sig.name!r}")
    for sig, t in zip(mir.results(module), ftype.results):
        _check(sig.dims, t, f"result {sig.name!r}")
    for op in mir.body_ops(fn):
        if op.name == "func.return":
            continue
        dims = mir.op_result_dims(op)
        if dims is None:
            raise MtfcError(f"{mir.describe_op(op)} carries no mtfc.dims")
        if len(dims) != len(op.results):
            raise MtfcError(f"{mir.describe_op(op)}: mtfc.dims lists {len(dims)} results, the op has {len(op.results)}")
        for d, r in zip(dims, op.results):
            _check(d, r.type, mir.describe_op(op))
