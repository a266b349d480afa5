"""The compiler driver: trace a model, lower it, run a mode's pass pipeline.

Used by the CLI and by tests; the only place that wires frontend -> passes.
"""

from __future__ import annotations

import functools
import gc
import time
from typing import Callable

from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.frontend.lower import lower_graph
from mtfc.frontend.tap import add_taps
from mtfc.frontend.model import Entry, Input, load_model_file, resolve_mesh_layout, run_model_code, trace_entry
from mtfc.mesh import LayoutRules, Mesh
from mtfc.passes.manager import PIPELINES, run_passes

MODES = ("gspmd", "explicit", "shardy", "none")
DEFAULT_MODE = "explicit"


def _gc_paused(fn: Callable) -> Callable:
    """`fn` run with Python's cyclic garbage collector paused (and resumed
    after, also on an error, if it was running): a compile allocates objects
    that mostly live until it returns (the traced graph, the IR's Python
    handles), and each full collection would traverse all of them -- 9% of a
    48-layer train step's compile, a share growing with depth.  Reference
    cycles made meanwhile are collected after."""

    @functools.wraps(fn)
    def paused(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return paused


@_gc_paused
def compile_entry(
    entry: Entry,
    *,
    mesh: str | None = None,
    layout: str | None = None,
    param_layout: str | None = None,
    mode: str = DEFAULT_MODE,
    dump_dir: str | None = None,
    path: str | None = None,
    context: ir.Context | None = None,
    train: bool = False,
    optimizer: str | None = None,
    precision: str | None = None,
    allow_unused_rules: bool | None = None,
    timings: dict[str, float] | None = None,
    taps: tuple[str, ...] = (),
) -> ir.Module:
    """Trace `entry` (or, with `train`, its train step), lower it to global
    StableHLO, and run `mode`'s pipeline.

    With `timings` (a dict), the wall seconds of each phase are stored in it:
    ``trace`` (tracing, autodiff and the optimizer), ``lower`` (to global
    StableHLO) and ``passes`` (the mode's pipeline), and the process's CPU
    seconds of each (``trace_cpu``, ...), for `benchmarks.compile_time`.

    A layout rule naming a dim the module does not have is an error (in the
    pipeline's `verify-names`) unless `allow_unused_rules` (default: the
    entry's own setting) -- then the module records it
    (``mtfc.allow_unused_rules``), so later checks of the module agree.

    The model's `mtf.tap` values and the results of the ops matching the
    `taps` patterns (``--tap``) become results with role ``tap``, after the
    others (`mtfc.frontend.tap`)."""
    if mode not in PIPELINES:
        raise MtfcError(f"unknown mode {mode!r} (choose from {', '.join(PIPELINES)})")
    mesh_obj, rules = resolve_mesh_layout(entry, mesh, layout)
    param_text = param_layout if param_layout is not None else entry.param_layout
    param_rules = LayoutRules.parse(param_text) if param_text is not None else None
    if param_rules is not None:
        param_rules.validate(mesh_obj)
    clock = (time.perf_counter(), time.process_time())
    if train:
        from mtfc.frontend.train import trace_train_step

        step = run_model_code(path, trace_train_step, entry, optimizer, precision)
        traced, roles, aliases = step.traced, step.output_roles, step.aliases
    else:
        traced, roles, aliases = trace_entry(entry, path), entry.output_roles, None
    outputs, roles = add_taps(traced.graph, traced.outputs, roles, taps, where=_entry_where(entry))
    clock = _lap(timings, "trace", clock)
    module = lower_graph(
        traced.graph, outputs, mesh=mesh_obj, layout=rules, model_name=entry.name,
        context=context, output_roles=roles, aliases=aliases,
    )
    with module.context:
        if param_rules is not None:
            module.operation.attributes[mir.PARAM_LAYOUT] = ir.StringAttr.get(str(param_rules))
        if allow_unused_rules or (allow_unused_rules is None and entry.allow_unused_rules):
            module.operation.attributes[mir.ALLOW_UNUSED_RULES] = ir.UnitAttr.get()
        if train:
            module.operation.attributes[mir.STEP] = ir.StringAttr.get("train")
            module.operation.attributes[mir.OPTIMIZER] = ir.StringAttr.get(str(step.optimizer))
            module.operation.attributes[mir.PRECISION] = ir.StringAttr.get(step.precision)
    clock = _lap(timings, "lower", clock)
    module = run_passes(module, PIPELINES[mode], dump_dir=dump_dir, verified=True)  # (lower_graph verified it)
    _lap(timings, "passes", clock)
    if train:
        from mtfc.frontend.train import warn_dropped

        warn_dropped(step)
    return module


def _entry_where(entry: Entry) -> str | None:
    """``file:line`` of the entry function's definition."""
    from mtfc.frontend.train import _entry_location, _where

    return _where(_entry_location(entry))


def _lap(timings: dict[str, float] | None, phase: str, start: tuple[float, float]) -> tuple[float, float]:
    now = (time.perf_counter(), time.process_time())
    if timings is not None:
        timings[phase] = now[0] - start[0]
        timings[phase + "_cpu"] = now[1] - start[1]
    return now


def compile_file(path: str, **kwargs) -> ir.Module:
    """`mtfc compile`: a model file to a module."""
    entry_name = kwargs.pop("entry_name", None)
    defines = kwargs.pop("defines", None)
    return compile_entry(load_model_file(path, entry_name, defines), path=path, **kwargs)


def compile_function(
    fn: Callable,
    inputs: dict[str, Input],
    *,
    mesh: str = "",
    layout: str = "",
    mode: str = DEFAULT_MODE,
    name: str = "model",
    **kwargs,
) -> ir.Module:
    """Compile a Python model function directly (tests, notebooks); `kwargs`
    go to `compile_entry` (param_layout, train, optimizer, precision,
    allow_unused_rules)."""
    return compile_entry(Entry(fn, inputs, mesh, layout, name), mode=mode, **kwargs)


def override_mesh_layout(module: ir.Module, mesh: str | None, layout: str | None,
                         param_layout: str | None = None, *, allow_unused_rules: bool = False,
                         source: str | None = None) -> None:
    """Replace the module's mesh and/or layout rules (before partitioning
    passes), then verify the module against the IR contract (`mtfc opt`
    runs nothing on a module that breaks it).

    New rules (`layout`, `param_layout`) are checked for dims the module lacks
    unless `allow_unused_rules`; the module then records that choice
    (``mtfc.allow_unused_rules``, set or removed).  With only a new `mesh`,
    or nothing new, the module's own record stands; `allow_unused_rules`
    sets it too.  A new mesh or rules drop the record of a layout search
    (``mtfc.layout_search``): it described the old layout."""
    from mtfc.passes.verify_names import verify_module

    if mesh is not None or layout is not None or param_layout is not None:
        mesh_obj = Mesh.parse(mesh) if mesh is not None else mir.module_mesh(module)
        rules = LayoutRules.parse(layout) if layout is not None else mir.module_layout(module)
        rules.validate(mesh_obj)
        param_rules = LayoutRules.parse(param_layout) if param_layout is not None else None
        if param_rules is not None:
            param_rules.validate(mesh_obj)
        mir.set_mesh_and_layout(module, mesh_obj, rules, param_rules)
    attrs = module.operation.attributes
    if (mesh is not None or layout is not None or param_layout is not None) and mir.LAYOUT_SEARCH in attrs:
        del attrs[mir.LAYOUT_SEARCH]  # the searched choice no longer describes the module
    with module.context:
        if allow_unused_rules:
            attrs[mir.ALLOW_UNUSED_RULES] = ir.UnitAttr.get()
        elif (layout is not None or param_layout is not None) and mir.ALLOW_UNUSED_RULES in attrs:
            del attrs[mir.ALLOW_UNUSED_RULES]
    verify_module(module, source=source)
