"""What `mtfc layout` and `mtfc compile --layout auto` do (the CLI stays thin).

Both trace the model once to the global module (mode ``none``, no layout:
the trace does not depend on the layout, only module attributes do), search
(`search.search_result`), and then either print the ranked table (and
JSON), or set the winner's rules on the module, record the choice
(``mtfc.layout_search``, docs/IR.md) and run the mode's pipeline.
"""

from __future__ import annotations

import json

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import LayoutRules

LAYOUT_SEARCH = mir.LAYOUT_SEARCH  # module attribute: the chosen layout and its predicted cost
AUTO = "auto"


def trace_global(model: str, *, mesh: str | None, train: bool, **kwargs) -> ir.Module:
    """The model's global module (mode ``none``) on `mesh` (default: the model's), with no layout rules."""
    from mtfc.compiler import compile_file

    return compile_file(model, mesh=mesh, layout="", param_layout="", mode="none", train=train,
                        allow_unused_rules=None, **kwargs)


def options(network: str | None, memory_per_device: str | None):
    """The `Network` and budget (bytes or None) of the command line; one-line errors."""
    from mtfc.layout.network import load_network
    from mtfc.layout.report import parse_size

    budget = parse_size(memory_per_device) if memory_per_device is not None else None
    return load_network(network or "cpu"), budget


def layout_command(model: str, *, mesh: str | None, train: bool, network: str | None,
                   memory_per_device: str | None, top: int | None, json_out: str | None, echo,
                   measure: int | None = None, calibrate_out: str | None = None, backend: str = "cpu",
                   **kwargs) -> None:
    """`mtfc layout`: the ranked table on stdout, `--json OUT` the full report;
    "no layout fits ..." (one line) when no candidate fits the budget.
    `measure` / `calibrate_out` (``--measure K``, ``--calibrate OUT``): then
    `mtfc.layout.measure.measure_command`."""
    from mtfc.files.atomic import check_writable, write_text_atomic
    from mtfc.layout.report import report_json, summary_lines, table_lines
    from mtfc.layout.search import best

    if top is not None and top < 1:
        raise MtfcError(f"--top {top}: give a positive number of candidates to show")
    if measure is not None and measure < 1:
        raise MtfcError(f"--measure {measure}: give a positive number of candidates to run")
    net, budget = options(network, memory_per_device)
    if json_out:
        check_writable(json_out)
    if calibrate_out:
        check_writable(calibrate_out)
    module = trace_global(model, mesh=mesh, train=train, **kwargs)
    mesh_obj = mir.module_mesh(module)
    _, result = best(module, mesh_obj, network=net, memory_budget=budget)
    shown = result.candidates[:top] if top else result.candidates[:10]
    echo("\n".join(summary_lines(result, mesh_obj, net, budget)))
    echo("\n".join(table_lines(shown, budget=budget)))
    measured = None
    if measure is not None or calibrate_out:
        from mtfc.layout.measure import measure_command

        measured = measure_command(module, result.candidates, network=net, k=measure, calibrate_out=calibrate_out,
                                   backend=backend, echo=echo)
    if json_out:
        data = report_json(result, mesh=mesh_obj, network=net, budget=budget)
        if top:
            data["candidates"] = data["candidates"][:top]
        if measured is not None:
            data["measured"] = measured
        write_text_atomic(json_out, json.dumps(data, indent=2) + "\n")
        echo(f"wrote {json_out}", err=True)


def compile_auto(model: str, *, mesh: str | None, mode: str, train: bool, network: str | None,
                 memory_per_device: str | None, dump_dir: str | None = None, **kwargs) -> ir.Module:
    """`mtfc compile --layout auto`: the winner's rules set on the global
    module, the choice recorded (`record`), then `mode`'s pipeline."""
    from mtfc.compiler import MODES
    from mtfc.layout.search import best
    from mtfc.passes.manager import PIPELINES, run_passes
    from mtfc.passes.verify_names import verify_module

    if mode not in MODES:
        raise MtfcError(f"unknown mode {mode!r} (choose from {', '.join(MODES)})")
    net, budget = options(network, memory_per_device)
    module = trace_global(model, mesh=mesh, train=train, **kwargs)
    mesh_obj = mir.module_mesh(module)
    winner, result = best(module, mesh_obj, network=net, memory_budget=budget)
    apply_choice(module, winner, result, net.name)
    verify_module(module)
    return run_passes(module, PIPELINES[mode], dump_dir=dump_dir)


def apply_choice(module: ir.Module, winner, result, network_name: str) -> None:
    """Set `winner`'s rules on `module` (no ``mtfc.param_layout`` when its
    parameter rules are ``""``: parameters follow the activation rules) and
    record ``mtfc.layout_search``."""
    mesh = mir.module_mesh(module)
    param = LayoutRules.parse(winner.param_rules) if winner.param_rules else None
    mir.set_mesh_and_layout(module, mesh, LayoutRules.parse(winner.rules), param)
    attrs = module.operation.attributes
    with module.context, ir.Location.unknown():
        if param is None and mir.PARAM_LAYOUT in attrs:
            del attrs[mir.PARAM_LAYOUT]
        f64 = ir.F64Type.get()
        i64 = ir.IntegerType.get_signless(64)
        attrs[LAYOUT_SEARCH] = ir.DictAttr.get({
            "rules": ir.StringAttr.get(winner.rules),
            "param_rules": ir.StringAttr.get(winner.param_rules),
            "predicted_s": ir.FloatAttr.get(f64, winner.total_s),
            "compute_s": ir.FloatAttr.get(f64, winner.compute_s),
            "comm_s": ir.FloatAttr.get(f64, winner.comm_s),
            "peak_bytes": ir.IntegerAttr.get(i64, int(winner.peak_bytes)),
            "network": ir.StringAttr.get(network_name),
            "searched": ir.IntegerAttr.get(i64, int(result.searched)),
            "method": ir.StringAttr.get(result.method),
        })


def recorded_choice(module: ir.Module) -> dict | None:
    """``mtfc.layout_search`` as a dict (None when the layout was not searched)."""
    attrs = module.operation.attributes
    if LAYOUT_SEARCH not in attrs:
        return None
    out = {}
    for named in ir.DictAttr(attrs[LAYOUT_SEARCH]):
        a = named.attr
        if isinstance(a, ir.StringAttr):
            out[named.name] = a.value
        elif isinstance(a, ir.FloatAttr):
            out[named.name] = a.value
        elif isinstance(a, ir.IntegerAttr):
            out[named.name] = a.value
        else:
            out[named.name] = str(a)
    return out


def choice_lines(choice: dict) -> list[str]:
    """inspect's short section on a searched layout."""
    from mtfc.layout.report import human_bytes, human_seconds

    params = choice.get("param_rules") or "(as layout)"
    return ["layout search:",
            f"  chosen: {choice.get('rules') or '(replicated)'}   params: {params}   "
            f"({choice.get('searched')} candidates, {choice.get('method')}, network {choice.get('network')})",
            f"  predicted: {human_seconds(choice.get('predicted_s', 0))} per step "
            f"(compute {human_seconds(choice.get('compute_s', 0))}, comm {human_seconds(choice.get('comm_s', 0))}), "
            f"peak {human_bytes(choice.get('peak_bytes'))} per device"]
