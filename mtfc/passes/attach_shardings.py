"""Pass `attach-shardings` (gspmd mode): layouts -> ``mhlo.sharding`` everywhere.

Requires: the IR contract (`verify-names`): a mesh, layout rules, and
``mtfc.dims`` on every argument, result and body op.
Guarantees: every argument, result and body-op result of @main carries the
``mhlo.sharding`` its dims imply under the layout rules (see
`hlo_sharding`), so XLA's SPMD partitioner reproduces exactly that layout
(but a convolution, computed whole along its split spatial dims between
``@Sharding`` constraints: `mtfc.passes.gspmd_conv`);
the module carries ``mhlo.num_partitions`` = mesh size and
``mtfc.partitioning = "gspmd"``.  A value whose layout is impossible (an
axis used by two of its dims, a dim not divisible by its axes) is an error
naming the value, its dims and the op's location -- never a replication.
Where XLA's partitioner is known to get an op wrong under a layout (max
pooling's gradient with a split windowed dim), that op is constrained whole
along the dims concerned (`mtfc.passes.gspmd_windows`).
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.gspmd_conv import whole_spatial_convolutions
from mtfc.passes.gspmd_windows import keep_windows_whole
from mtfc.passes.hlo_sharding import hlo_sharding
from mtfc.passes.loops import check_loop_dims, program_ops
from mtfc.passes.manager import register_pass

SHARDING = "mhlo.sharding"

# Why a ``stablehlo.while`` carries no ``mhlo.sharding`` (docs/passes/attach-shardings.md,
# "Loops"): XLA's import (jaxlib 0.10) canonicalizes the while first, dropping the
# carried values the body returns unchanged (stacked parameters, captured values) and
# using them as free variables, but keeps the while's tuple sharding as written; its
# translation then lifts the free variables back with their shardings appended and
# fails a RET_CHECK ("has 4 leaf nodes while this sharding has 6").  Every value the
# loop carries is pinned anyway: by its producer outside the loop, by every op of the
# body and cond that reads it, and by the users of the loop's results.
_LOOP_SHARDING_BUG = "XLA drops pass-through while operands but not their tuple-sharding entries"


def _with_sharding(attrs: ir.DictAttr, sharding: str) -> ir.DictAttr:
    entries = {a.name: a.attr for a in attrs}
    entries[SHARDING] = ir.StringAttr.get(sharding)
    return ir.DictAttr.get(entries)


@register_pass("attach-shardings")
def attach_shardings(module: ir.Module, options) -> None:
    """Attach mhlo.sharding to every value from its dims, the layout and the mesh."""
    layouts = mir.module_layouts(module)
    layouts.validate()
    check_loop_dims(module)  # a split loop dim: one line naming the loop (docs/IR.md, "Loops")
    mesh = layouts.mesh
    fn = mir.entry_function(module)

    def sharding(dims, shape, what, cls="activation"):
        return hlo_sharding(layouts.of_value(dims, shape, cls=cls, what=what))

    def state(sig):
        return "param" if sig.role in mir.STATE_ROLES else "activation"

    arg_attrs = [
        _with_sharding(ir.DictAttr(a), sharding(sig.dims, sig.shape, f"argument {sig.name!r}", state(sig)))
        for a, sig in zip(ir.ArrayAttr(fn.attributes["arg_attrs"]), mir.arguments(module))
    ]
    res_attrs = [
        _with_sharding(ir.DictAttr(a), sharding(sig.dims, sig.shape, f"result {sig.name!r}", state(sig)))
        for a, sig in zip(ir.ArrayAttr(fn.attributes["res_attrs"]), mir.results(module))
    ]
    fn.attributes["arg_attrs"] = ir.ArrayAttr.get(arg_attrs)
    fn.attributes["res_attrs"] = ir.ArrayAttr.get(res_attrs)
    for op in program_ops(fn):  # nested ops too: a loop's cond and body
        if op.name in ("func.return", "stablehlo.return"):
            continue
        dims = mir.op_result_dims(op)
        if dims is None:
            raise MtfcError(f"{mir.describe_op(op)} carries no mtfc.dims")
        if len(dims) != len(op.results):
            raise MtfcError(f"{mir.describe_op(op)} has {len(op.results)} results but mtfc.dims for {len(dims)}")
        texts = [
            sharding(d, tuple(ir.RankedTensorType(r.type).shape), f"value of {mir.describe_op(op)}", cls)
            for d, r, cls in zip(dims, op.results, mir.op_result_classes(op))
        ]
        if op.name == "stablehlo.while":
            continue  # checked above, but left to XLA's propagation: `_LOOP_SHARDING_BUG`
        op.attributes[SHARDING] = ir.StringAttr.get(texts[0] if len(texts) == 1 else "{" + ", ".join(texts) + "}")
    whole_spatial_convolutions(fn, layouts)  # XLA miscomputes split spatial dims (mtfc/passes/gspmd_conv.py)
    keep_windows_whole(fn, layouts)  # XLA mis-partitions some split windows (mtfc/passes/gspmd_windows.py)
    module.operation.attributes["mhlo.num_partitions"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), mesh.size)
    module.operation.attributes["mhlo.num_replicas"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), 1)
    mir.set_partitioning(module, "gspmd")
