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

from dataclasses import dataclass

from mtfc.errors import MtfcError
from mtfc.frontend import ops
from mtfc.frontend.dims import Shape
from mtfc.frontend.graph import Graph, Tensor, scope, tracing
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


def trace_train_step(entry: Entry, optimizer: str | None = None, precision: str | None = None) -> TrainStep:
    """Trace `entry` and build its train step (optimizer spec and precision
    default to the entry's)."""
    from mtfc.frontend.autodiff import grad

    spec = OptimizerSpec.parse(optimizer or entry.optimizer)
    precision = precision or entry.precision
    if precision not in PRECISIONS:
        raise MtfcError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    graph = Graph()
    graph.compute_dtype = precision
    with tracing(graph):
        args = {}
        for k, spec_in in entry.inputs.items():
            t = graph.add_variable(k, "input", spec_in.shape, spec_in.dtype, spec_in.init)
            args[k] = ops.cast(t, precision) if precision != "f32" and spec_in.dtype == "f32" else t
        result = entry.fn(**args)
        if isinstance(result, Tensor):
            result = {"out": result}
        if not isinstance(result, dict) or entry.loss not in result:
            raise MtfcError(f"entry {entry.name!r} has no output {entry.loss!r} to train on "
                            f"(outputs: {', '.join(result) if isinstance(result, dict) else type(result).__name__})")
        loss = result[entry.loss]
        if not isinstance(loss, Tensor) or len(loss.shape):
            raise MtfcError(f"entry {entry.name!r}: the loss {entry.loss!r} must be a scalar tensor, "
                            f"got {getattr(loss, 'shape', type(loss).__name__)}")
        loss = ops.cast(loss, "f32") if loss.dtype != "f32" else loss
        params = {v.name: v.tensor for v in graph.variables if v.role == "parameter" and v.trainable}
        if not params:
            raise MtfcError(f"entry {entry.name!r} has no trainable parameters")
        with scope("grad"):
            grads = dict(zip(params, grad(loss, list(params.values()))))
        step = graph.add_variable(STEP_NAME, "optimizer_state", Shape([]), "i32", "constant:0")
        first_update_op = len(graph.operations)
        # the optimizer's ops are located at the model function's definition
        code = getattr(entry.fn, "__code__", None)
        graph.location_override = (code.co_filename, code.co_firstlineno) if code else None
        with scope("optimizer"):
            new_params, slots, metrics = make_optimizer(spec).apply(params, grads, step)
            new_step = step + ops.constant(1, dtype="i32")
        graph.location_override = None
        for op in graph.operations[first_update_op:]:
            op.layout_class = "param"
    outputs: dict[str, Tensor] = {"loss": loss}
    roles = {"loss": "loss"}
    for name, value in metrics.items():
        outputs[name], roles[name] = value, "metric"
    for name, value in {**new_params, **slots, STEP_NAME: new_step}.items():
        outputs[name] = value
        roles[name] = "parameter" if name in new_params else "optimizer_state"
    index = {name: i for i, name in enumerate(outputs)}
    aliases = {v.name: index[v.name] for v in graph.variables if v.name in index}
    return TrainStep(Traced(graph, outputs, entry.name), roles, aliases, spec)
