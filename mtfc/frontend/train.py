"""Train steps: ``(params, optimizer state, batch) -> (loss, metrics, new
params, new optimizer state)`` built from a model's loss (docs/IR.md,
"Train-step modules").

The model function is traced as for a forward module; the loss output is
differentiated with respect to every trainable parameter (`mtf.grad`), and
the optimizer's update is recorded in the ``param`` layout class, so its
values -- the new parameters and the optimizer's slots -- take the parameter
layout and the partitioner reduce-scatters the gradients into it (FSDP /
ZeRO when the parameter layout splits parameters).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from mtfc.errors import MtfcError, warn
from mtfc.frontend import ops
from mtfc.frontend.dims import Shape
from mtfc.frontend.graph import FLOAT_DTYPES, Graph, Tensor, scope, tracing
from mtfc.frontend.model import Entry, Traced
from mtfc.frontend.optimizers import OptimizerSpec, make_optimizer

STEP_NAME = "opt/step"
PRECISIONS = ("f32", "bf16")


@dataclass
class TrainStep:
    traced: Traced
    output_roles: dict[str, str]
    aliases: dict[str, int]  # argument name -> result index
    optimizer: OptimizerSpec
    dropped: list[str] = field(default_factory=list)  # "name [dims]" of the non-scalar model outputs left out
    precision: str = "f32"  # the compute dtype


def _entry_location(entry: Entry) -> tuple[str, int] | None:
    """(file, line) of the entry function's definition (its decorator)."""
    code = getattr(entry.fn, "__code__", None)
    return (code.co_filename, code.co_firstlineno) if code else None


def _where(location: tuple[str, int] | None) -> str | None:
    return f"{os.path.basename(location[0])}:{location[1]}" if location else None


def _settings(entry: Entry, optimizer: str | None, precision: str | None) -> tuple[OptimizerSpec, str]:
    """The optimizer spec and precision: the command line's (errors name the
    flag), else the entry's (errors name the entry's line)."""
    where = None if optimizer else _where(_entry_location(entry))
    try:
        spec = OptimizerSpec.parse(optimizer or entry.optimizer)
    except MtfcError as e:
        raise MtfcError(str(e) if where else f"--optimizer: {e}", where=where) from None
    precision = precision or entry.precision
    if precision not in PRECISIONS:
        raise MtfcError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})",
                        where=_where(_entry_location(entry)))
    return spec, precision


def _split_outputs(entry: Entry, result) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """The model's loss, its scalar outputs (the step's metrics) and the
    non-scalar ones (dropped); errors at the entry's line (the loss's, for a
    loss that is not a scalar)."""
    where = _where(_entry_location(entry))
    if isinstance(result, Tensor):
        result = {"out": result}
    if not isinstance(result, dict) or entry.loss not in result:
        raise MtfcError(f"entry {entry.name!r} has no output {entry.loss!r} to train on "
                        f"(outputs: {', '.join(result) if isinstance(result, dict) else type(result).__name__})",
                        where=where)
    for name, value in result.items():
        if not isinstance(value, Tensor):
            raise MtfcError(f"entry {entry.name!r} output {name!r} is a {type(value).__name__}, not an mtfc tensor",
                            where=where)
    loss = result[entry.loss]
    if len(loss.shape) or loss.dtype not in FLOAT_DTYPES:
        raise MtfcError(f"entry {entry.name!r}: the loss {entry.loss!r} must be a float scalar tensor, "
                        f"got {loss.dtype} {loss.shape}", where=_where(loss.op.location) or where)
    others = {k: v for k, v in result.items() if k != entry.loss}
    metrics = {k: v for k, v in others.items() if not len(v.shape)}
    dropped = {k: v for k, v in others.items() if len(v.shape)}
    return loss, metrics, dropped


def _metric_value(value: Tensor) -> Tensor:
    """A scalar model output as a metric: floats as f32, booleans as i32."""
    if value.dtype in FLOAT_DTYPES:
        return ops.cast(value, "f32")
    return ops.cast(value, "i32") if value.dtype == "i1" else value


def trace_train_step(entry: Entry, optimizer: str | None = None, precision: str | None = None) -> TrainStep:
    """Trace `entry` and build its train step (optimizer spec and precision
    default to the entry's).

    The model's scalar outputs other than the loss become the step's metrics
    (role ``metric``, after the optimizer's); its non-scalar outputs are left
    out (`TrainStep.dropped`, see `warn_dropped`)."""
    from mtfc.frontend.autodiff import grad

    spec, precision = _settings(entry, optimizer, precision)
    graph = Graph()
    graph.compute_dtype = precision
    graph.training = True  # mtf.is_training(): layers pick their train-time settings
    with tracing(graph):
        args = {}
        for k, spec_in in entry.inputs.items():
            t = graph.add_variable(k, "input", spec_in.shape, spec_in.dtype, spec_in.init)
            args[k] = ops.cast(t, precision) if precision != "f32" and spec_in.dtype == "f32" else t
        loss, model_metrics, dropped = _split_outputs(entry, entry.fn(**args))
        loss = ops.cast(loss, "f32")
        model_metrics = {k: _metric_value(v) for k, v in model_metrics.items()}
        params = {v.name: v.tensor for v in graph.variables if v.role == "parameter" and v.trainable}
        if not params:
            raise MtfcError(f"entry {entry.name!r} has no trainable parameters", where=_where(_entry_location(entry)))
        with scope("grad"):
            grads = dict(zip(params, grad(loss, list(params.values()))))
        step = graph.add_variable(STEP_NAME, "optimizer_state", Shape([]), "i32", "constant:0")
        first_update_op = len(graph.operations)
        # the optimizer's ops are located at the model function's definition
        graph.location_override = _entry_location(entry)
        with scope("optimizer"):
            stacked = {v.name: v.stacked for v in graph.variables if v.name in params}
            new_params, slots, metrics = make_optimizer(spec).apply(params, grads, step, stacked)
            new_step = step + ops.constant(1, dtype="i32")
        graph.location_override = None
        for op in graph.operations[first_update_op:]:
            op.layout_class = "param"
    outputs: dict[str, Tensor] = {"loss": loss}
    roles = {"loss": "loss"}
    state = {**new_params, **slots, STEP_NAME: new_step}
    for name in model_metrics:
        if name in metrics or name in state or name == "loss":
            raise MtfcError(f"entry {entry.name!r}: output {name!r} has the name of one of the train step's own "
                            f"results (loss, {', '.join(metrics)}, parameters, optimizer state); rename it",
                            where=_where(_entry_location(entry)))
    for name, value in {**metrics, **model_metrics}.items():
        outputs[name], roles[name] = value, "metric"
    for name, value in state.items():
        outputs[name] = value
        roles[name] = "parameter" if name in new_params else "optimizer_state"
    index = {name: i for i, name in enumerate(outputs)}
    aliases = {v.name: index[v.name] for v in graph.variables if v.name in index}
    dropped_text = [f"{k} {v.shape}" for k, v in dropped.items()]
    return TrainStep(Traced(graph, outputs, entry.name), roles, aliases, spec, dropped_text, precision)


def warn_dropped(step: TrainStep) -> None:
    """The one warning naming a train step's dropped (non-scalar) model
    outputs; the compiler gives it once the step has compiled (so that a
    failed compile prints nothing but its error)."""
    if step.dropped:
        warn(f"entry {step.traced.name!r}: the train step drops the non-scalar output(s) "
             + ", ".join(step.dropped)
             + " (a train step's results are the loss, scalar outputs as metrics, taps, and the new state; "
             "mtf.tap keeps a value)")
