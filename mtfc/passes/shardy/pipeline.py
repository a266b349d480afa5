"""Shardy's own passes run in-process over the annotated module, with the
workarounds (`workarounds`) at their stages, and Shardy's failures as one
line naming its stage, the op and its location (docs/passes/shardy.md,
"The pipeline").

Requires: a global module as `sdy-partition` hands it over (composites
inlined, the IR contract).  Guarantees: `plan_and_lower` returns the
per-device module, with no ``sdy.*`` op left, or raises `MtfcError`.
"""

from __future__ import annotations

from jax.extend.mlir import ir, passmanager

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes.shardy import workarounds
from mtfc.passes.shardy.annotation import SdyMesh, annotate

# Shardy's in-process pipeline, one PassManager each (docs/passes/shardy.md).
STAGES: tuple[tuple[str, str], ...] = (
    ("sdy-propagation-pipeline", "builtin.module(sdy-propagation-pipeline)"),
    ("sdy-insert-explicit-reshards",
     "builtin.module(func.func(sdy-insert-explicit-reshards{enable-full-version=true},sdy-reshard-to-collectives))"),
    ("sdy-convert-global-to-local", "builtin.module(sdy-convert-global-to-local)"),
    ("sdy-drop-sharding-and-mesh", "builtin.module(sdy-drop-sharding-and-mesh)"),
)
PLAN_STAGES, LOWER_STAGES = STAGES[:2], STAGES[2:]


def diagnostic_line(error: Exception) -> str:
    """``'stablehlo.foo' op message at name (file:line)`` from an MLIRError."""
    diagnostics = getattr(error, "error_diagnostics", None) or []
    if diagnostics:
        d = diagnostics[0]
        message = " ".join(str(d.message).split())
        return f"{message} at {mir.location_text(d.location)}"
    lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
    return " ".join(lines[:3]) or type(error).__name__


def run_stage(module: ir.Module, stage: str, pipeline: str, *, verify: bool = True) -> None:
    """Run one of Shardy's `STAGES`; its failure is one `MtfcError` line.
    With `verify` False the module is not verified after it (the caller
    fixes it up and verifies it)."""
    pm = passmanager.PassManager.parse(pipeline)
    pm.enable_verifier(verify)
    try:
        pm.run(module.operation)
    except Exception as e:  # MLIRError carries the diagnostics
        raise MtfcError(f"sdy-partition: Shardy's {stage} failed: {diagnostic_line(e)}") from None


def prepare(module: ir.Module, layouts: mir.Layouts, sdy_mesh: SdyMesh, skip: frozenset[str]) -> None:
    """What Shardy is handed: the closed shardings, then the ``annotate``-stage workarounds."""
    annotate(module, layouts, sdy_mesh)
    workarounds.apply("annotate", skip, module, layouts, sdy_mesh)


def plan_and_lower(text: str, context: ir.Context, layouts: mir.Layouts, skip: frozenset[str]) -> ir.Module:
    """The per-device module Shardy makes of the global program `text`.

    Shardy plans on the mesh as it is; if a ``replan`` workaround asks
    (`workarounds.uses_sub_axes`), it plans again on the prime-factored mesh,
    where no sub-axis can arise.  Then the ``planned`` workarounds, the
    lowering: `sdy-convert-global-to-local` without the verifier, the
    ``converted`` workarounds (a loop's block argument types), the
    verifier (an invalid module is one `MtfcError` line), the rest."""
    for sdy_mesh in (SdyMesh(layouts.mesh, prime=False), SdyMesh(layouts.mesh, prime=True)):
        work = ir.Module.parse(text, context)
        prepare(work, layouts, sdy_mesh, skip)
        for stage, pipeline in PLAN_STAGES:
            run_stage(work, stage, pipeline)
        if not any(workarounds.apply("replan", skip, work)):
            break
        if sdy_mesh.prime:
            raise MtfcError("sdy-partition: Shardy's plan uses sub-axes even on the prime-factored mesh")
    workarounds.apply("planned", skip, work)
    (convert, convert_pipeline), rest = LOWER_STAGES[0], LOWER_STAGES[1:]
    run_stage(work, convert, convert_pipeline, verify=False)  # loops: `workarounds` "converted"
    workarounds.apply("converted", skip, work)
    try:
        work.operation.verify()
    except Exception as e:  # MLIRError
        raise MtfcError(f"sdy-partition: Shardy's {convert} wrote an invalid module: {diagnostic_line(e)}") from None
    for stage, pipeline in rest:
        run_stage(work, stage, pipeline)
    leftovers = [op for op in mir.walk(work.operation) if op.name.startswith("sdy.")]
    if leftovers:
        names = ", ".join(sorted({op.name for op in leftovers}))
        raise MtfcError(f"sdy-partition: Shardy left {names} in the per-device program "
                        f"(first: {mir.describe_op(leftovers[0])})")
    return work
