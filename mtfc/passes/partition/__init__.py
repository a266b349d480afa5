"""Pass `partition` (explicit mode): Mesh TF's lowering as an MLIR pass.

Requires: the IR contract (`verify-names`): ``mtfc.dims`` on every argument,
result and body op of @main (loop bodies included), a mesh and layout rules
on the module, no layout rule splitting a loop's dim (refused in one line).

Guarantees: @main becomes the program one device runs (device ``d`` of the
mesh is replica ``d``): every value has its local shape -- each dim divided by
the mesh axes the layout rules give its name -- and keeps its ``mtfc.dims``;
communication is explicit StableHLO collectives whose replica groups are the
device groups along mesh axes, placed only where the layout demands it (the
table in docs/passes/partition.md).  The global program is kept as a nested
``module @mtfc.reference`` (for ``mtfc run --check``); the module carries
``mtfc.partitioning = "explicit"`` and ``mhlo.num_replicas`` = mesh size.
An op with split operands or results that no rule covers is an error naming
the op, its location and its dims -- never a silent replication.

Each rule partitions one StableHLO op: it reshards the operands to a layout
under which the op is local, emits the local op, adds the collective the op's
semantics need (a sum over a split dim -> all_reduce), and reshards the
result to the layout its dims imply.  The package:

- `prepare`     -- one walk: annotations to remove? loops to check?
- `driver`      -- the per-device function, op by op (`Partitioner`);
- `common`      -- the rule table (`RULES`, `@rule`) and shared helpers;
- `local`       -- ops computed from the device's own blocks (elementwise,
                   constants, iota, broadcast, transpose, reshape);
- `contraction` -- dot_general and reduce (all_reduce over summed dims);
- `windows`     -- slice, pad, concatenate and shifts (window and halo
                   exchange by collective_permute);
- `gather`      -- the lookup table[indices];
- `loops`       -- ``stablehlo.while`` over stacked layers (its regions
                   partitioned recursively), dynamic_slice and
                   dynamic_update_slice.

What each op's dims do (pass, sum, window, whole) is declared once in
`mtfc.passes.op_rules`.
"""

from __future__ import annotations

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.composites import erase_unused_decompositions
from mtfc.passes.loops import check_loop_dims
from mtfc.passes.manager import register_pass
from mtfc.passes.partition.common import RULES, clone_region, rule  # noqa: F401 - the package's API
from mtfc.passes.partition.driver import Partitioner
from mtfc.passes.partition.prepare import strip_partitioning, survey


@register_pass("partition")
def partition(module: ir.Module, options) -> None:
    """Split @main into the per-device program with explicit collectives."""
    if mir.partitioning(module) not in ("none", "gspmd"):
        raise MtfcError(f"partition: the module is already partitioned ({mir.partitioning(module)})")
    found = survey(module)
    if found.loops:
        check_loop_dims(module)
    strip_partitioning(module, found.annotated)
    reference = module.operation.clone()  # the global program: what mir.stripped_clone makes, without a second strip
    reference.attributes["sym_name"] = ir.StringAttr.get(mir.REFERENCE)
    Partitioner(module).run()
    if len(mir.functions(module)) > 1:  # else no decomposition to erase
        erase_unused_decompositions(module)  # the composites' of the global program
    module.body.append(reference)
