"""Compile one global program through each partitioner and read the
collectives each one chose (for `mtfc inspect`).

* mtfc explicit: the ``explicit`` pipeline of `mtfc.passes.manager.PIPELINES`;
  its collectives are read from the per-device StableHLO it writes;
* shardy: the ``shardy`` pipeline, when `PIPELINES` has one; read likewise;
* XLA GSPMD: the ``gspmd`` pipeline, compiled by PJRT (`XLA's SPMD
  partitioner`); its collectives are read from the compiled executable's
  optimized HLO text (``hlo_modules()[0].to_string()``).

The analyses themselves live in `mtfc.passes.comm_analysis`; this module only
runs pipelines and the compiler.
"""

from __future__ import annotations

from dataclasses import dataclass

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.passes import comm_analysis

# (row name, pipeline, where its collectives are read)
PARTITIONERS = (
    ("mtfc explicit", "explicit", "StableHLO"),
    ("shardy", "shardy", "StableHLO"),
    ("XLA GSPMD", "gspmd", "optimized HLO"),
)


@dataclass
class Compiled:
    hlo_text: str
    memory: dict


def xla_compile(module: ir.Module, *, backend: str = "cpu") -> Compiled:
    """Compile a partitioned module (``gspmd``, ``explicit``, ``shardy``) with
    PJRT on its mesh; return XLA's optimized HLO text and memory statistics."""
    from jaxlib import xla_client

    from mtfc.runtime import devices as rt_devices
    from mtfc.runtime.execute import compile_options

    kind = mir.partitioning(module)
    mesh = mir.module_mesh(module)
    if kind == "none":
        raise MtfcError("an unpartitioned module has no partitioner's collectives to read")
    devices = rt_devices.devices(backend, mesh.size)
    try:
        executable = devices[0].client.compile_and_load(
            mir.program_text(module), xla_client.DeviceList(tuple(devices)), compile_options(kind, mesh.size)
        )
    except Exception as e:
        raise MtfcError(f"XLA could not compile the module: {str(e).strip().splitlines()[0]}") from None
    text = executable.hlo_modules()[0].to_string()
    try:
        stats = executable.get_compiled_memory_stats()
        memory = {
            "argument_bytes": int(stats.argument_size_in_bytes),
            "output_bytes": int(stats.output_size_in_bytes),
            "alias_bytes": int(stats.alias_size_in_bytes),
            "temp_bytes": int(stats.temp_size_in_bytes),
        }
    except Exception:  # not every backend reports them
        memory = {}
    return Compiled(text, memory)


def global_program_text(module: ir.Module) -> str:
    """The global program a module stands for, as text with locations: the
    nested reference program of a per-device module, else the module without
    its sharding annotations."""
    with module.context:
        text = module.operation.get_asm(enable_debug_info=True)
        clone = ir.Module.parse(text, module.context)
        if mir.partitioning(module) in mir.PER_DEVICE:
            for op in clone.body.operations:
                op = op.operation
                if (op.name == "builtin.module" and "sym_name" in op.attributes
                        and ir.StringAttr(op.attributes["sym_name"]).value == mir.REFERENCE):
                    return op.get_asm(enable_debug_info=True)
            raise MtfcError("this partitioned module carries no reference program (module @mtfc.reference)")
        mir.strip_partitioning_in_place(clone)
        return clone.operation.get_asm(enable_debug_info=True)


def partitioner_collectives(module: ir.Module, pipeline: str, *, backend: str = "cpu") -> list[comm_analysis.Collective]:
    """Collectives of `module` (already through `pipeline`)."""
    if pipeline == "gspmd":
        return comm_analysis.hlo_collectives(xla_compile(module, backend=backend).hlo_text, mir.module_mesh(module))
    return comm_analysis.module_collectives(module)


def prediction_rows(module: ir.Module) -> list[dict]:
    """`mtfc inspect --predict`: the collectives `layout_cost.predict` expects
    of the global program, beside those the explicit partitioner emits before
    `fuse-collectives` (what is predicted) and after it; each row as in
    `compare_partitioners` (the predicted row's records also name the dims
    that cause each collective and why)."""
    from mtfc.passes import layout_cost
    from mtfc.passes.manager import PIPELINES, run_passes

    text = global_program_text(module)
    rows = []
    for name, passes in (("predicted", None), ("mtfc explicit, unfused", ["verify-names", "partition"]),
                         ("mtfc explicit", PIPELINES["explicit"])):
        row = {"partitioner": name, "source": "global module" if passes is None else "StableHLO", "error": None}

        def collect(clone, passes=passes):
            if passes is None:
                return layout_cost.predict(clone).collectives
            run_passes(clone, passes)
            return comm_analysis.module_collectives(clone)

        rows.append(_row(row, module, text, collect))
    return rows


def _row(row: dict, module: ir.Module, text: str, collect) -> dict:
    """`row` completed with the collectives `collect(clone)` finds in a fresh
    parse of `text` (their totals per kind, the total), or the error that
    stopped it."""
    try:
        clone = ir.Module.parse(text, module.context)
        with module.context:
            collectives = collect(clone)
    except MtfcError as e:
        row.update({"error": str(e), "by_kind": {}, "total": None, "collectives": []})
    else:
        row.update(comm_analysis.summarize(collectives))
        row["collectives"] = [c.as_dict() for c in collectives]
    return row


def compare_partitioners(module: ir.Module, *, backend: str = "cpu") -> list[dict]:
    """One row per available partitioner: its collectives, their totals per
    kind, and the total -- or the error that stopped it."""
    from mtfc.passes.manager import PIPELINES, run_passes

    text = global_program_text(module)
    rows = []
    for name, pipeline, source in PARTITIONERS:
        if pipeline not in PIPELINES:
            continue
        row = {"partitioner": name, "mode": pipeline, "source": source, "error": None}

        def collect(clone, pipeline=pipeline):
            run_passes(clone, PIPELINES[pipeline])
            return partitioner_collectives(clone, pipeline, backend=backend)

        rows.append(_row(row, module, text, collect))
    return rows
