"""Passes `sdy-partition` (shardy mode) and `sdy-shardings`: mtfc's layouts as
closed ``sdy.sharding``, then Shardy's own partitioner (shipped in jaxlib) run
in-process -- a partitioner independent of mtfc's, to check it against.

`sdy-partition`
  Requires: the IR contract (`verify-names`): a mesh, layout rules (and
  parameter layout rules, if any), ``mtfc.dims`` on every argument, result
  and body op of @main; a module not yet partitioned (``none``, or ``gspmd``,
  whose annotations are dropped).

  Guarantees: @main becomes the program one device runs (device ``d`` of the
  mesh is partition ``d``), written by Shardy: every value has its local
  shape -- each dim divided by the mesh axes its name is laid out on, exactly
  mtfc's layout, since every argument, result and op result was given a
  *closed* sharding Shardy cannot change -- and communication is explicit
  StableHLO collectives with ``use_global_device_ids`` and a channel
  (``all_reduce``, ``all_gather``, ``all_to_all``, ``collective_permute``),
  plus ``partition_id``-indexed ``dynamic_slice`` where Shardy slices
  (its all_slice).  Arguments and results keep their ``mtfc.*`` attributes
  and carry ``mhlo.sharding = "{manual}"``.  Ops keep ``mtfc.dims`` and their
  locations; the ops Shardy rebuilds or inserts get dims back where they are
  certain (`restore_dims`).  The global program is kept as the nested
  ``module @mtfc.reference``; the module carries ``mtfc.partitioning =
  "shardy"``, ``mhlo.num_partitions`` = mesh size, ``mhlo.num_replicas = 1``
  (XLA compiles it in partition mode: `mtfc.runtime.execute.compile_options`).
  An impossible layout is an error naming the value, as in
  `attach-shardings`; a module Shardy rejects is an error naming this pass,
  Shardy's stage, the op and its location.

`sdy-shardings`
  Only writes what `sdy-partition` first hands Shardy (``sdy.mesh @mesh``,
  the closed shardings, the ``sdy.reshard`` ops of `whole_along_cut_dims`),
  so it can be read; the module stays unpartitioned.

Shardy in jaxlib 0.10 gets some things wrong; this pass works around each
(docs/passes/shardy.md, "Where Shardy needs help"), one registered entry per
bug in `workarounds` (``MTFC_SDY_SKIP_WORKAROUNDS=name,...`` disables some,
to retest them): it never offers Shardy a split gather/slice/pad/concatenate
dim or a contraction out of mesh order, gives Shardy's all_reduce the reducer
of the reduce it completes, where Shardy's plan uses sub-axes ("cols":(2)2)
-- whose lowering is inconsistent -- it plans again on a mesh whose axes are
split into prime factors, where no sub-axis can arise, and it refuses ops it
does not know to be safe.

The package: `annotation` (Shardy's mesh, layouts as closed shardings),
`pipeline` (Shardy's stages, its diagnostics), `workarounds`, `dims`
(``mtfc.dims`` back on the per-device program); the passes are here.
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.composites import inline_composites
from mtfc.passes.loops import check_loop_dims
from mtfc.passes.manager import register_pass
from mtfc.passes.shardy import workarounds
from mtfc.passes.shardy.annotation import MESH_NAME, SDY_SHARDING, SdyMesh, annotate, set_attr, value_layout  # noqa: F401
from mtfc.passes.shardy.dims import dims_by_location, restore_dims
from mtfc.passes.shardy.pipeline import STAGES, plan_and_lower, prepare  # noqa: F401
from mtfc.passes.shardy.workarounds import WORKAROUNDS  # noqa: F401


def _manual(attrs: ir.DictAttr) -> ir.DictAttr:
    return set_attr(attrs, "mhlo.sharding", ir.StringAttr.get("{manual}"))


def _global_program(module: ir.Module, pass_name: str) -> mir.Layouts:
    kind = mir.partitioning(module)
    if kind not in ("none", "gspmd"):
        raise MtfcError(f"{pass_name}: the module is already partitioned ({kind})")
    layouts = mir.module_layouts(module)
    layouts.validate()
    check_loop_dims(module)  # a split loop dim: one line naming the loop (docs/IR.md, "Loops")
    return layouts


@register_pass("sdy-shardings")
def sdy_shardings(module: ir.Module, options) -> None:
    """Write the closed sdy shardings sdy-partition hands Shardy (for reading; no partitioning)."""
    skip = workarounds.skipped()
    layouts = _global_program(module, "sdy-shardings")
    mir.strip_partitioning_in_place(module)
    inline_composites(module)
    prepare(module, layouts, SdyMesh(layouts.mesh, prime=False), skip)


@register_pass("sdy-partition")
def sdy_partition(module: ir.Module, options) -> None:
    """Split @main into the per-device program with Shardy, from closed sdy shardings."""
    skip = workarounds.skipped()
    layouts = _global_program(module, "sdy-partition")
    mesh = layouts.mesh
    reference = ir.Module.parse(mir.strip_partitioning_text(module), module.context)
    reference.operation.attributes["sym_name"] = ir.StringAttr.get(mir.REFERENCE)
    mir.strip_partitioning_in_place(module)
    inline_composites(module)  # Shardy partitions their decompositions
    by_location = dims_by_location(mir.entry_function(module))
    workarounds.apply("check", skip, mir.entry_function(module), layouts)
    work = plan_and_lower(module.operation.get_asm(enable_debug_info=True), module.context, layouts, skip)
    for op in list(module.body.operations):
        op.operation.erase()
    for op in list(work.body.operations):
        module.body.append(op.operation)
    fn = mir.entry_function(module)
    workarounds.apply("lowered", skip, fn)
    restore_dims(fn, by_location, mesh)
    for key in ("arg_attrs", "res_attrs"):
        if key in fn.attributes:
            fn.attributes[key] = ir.ArrayAttr.get([_manual(ir.DictAttr(a)) for a in ir.ArrayAttr(fn.attributes[key])])
    attrs = module.operation.attributes
    attrs["mhlo.num_partitions"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), max(mesh.size, 1))
    attrs["mhlo.num_replicas"] = ir.IntegerAttr.get(ir.IntegerType.get_signless(32), 1)
    mir.set_partitioning(module, "shardy")
    module.body.append(reference.operation.clone())
