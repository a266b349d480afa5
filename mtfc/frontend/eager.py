"""Eager runs: a model evaluated op by op on the host while it is traced.

Inside ``with mtf.eager():`` (and under ``mtfc eval``) the model is traced as
usual, but every op is also *evaluated as soon as it is recorded*: `bind`
hands it to the `Evaluator`, which lowers that one op with its primitive's
own ``lower`` (the lowering the compiled program uses) into a one-op
StableHLO function, compiles it for the host CPU through PJRT (once per
distinct function text: primitive, parameters, input types) and runs it on
the op's input values.  So tensors have values while the model function
runs -- ``print(x)`` shows dims and numbers, ``x.numpy()`` returns them, a
debugger sees them -- and the numbers are those of the compiled unsharded
run, up to the rounding XLA's fusion of the whole program may change.

Arguments (model inputs, parameters, optimizer state) take the values
`mtfc run` feeds for the same ``--seed``: each is synthesized from its name,
dims, dtype and initializer exactly as `mtfc.runtime.synthetic` does for the
compiled module's argument of that name (or given by name, ``inputs``).

Loops (``mtf.scan``, ``layers.repeat``, pipelines) are evaluated as a whole
op: the body is traced once, symbolically, into a body graph, and the loop
op -- its ``stablehlo.while`` with the body inside -- runs when it is
recorded.  So inside a loop body tensors have no values (``print`` shows a
traced tensor, ``.numpy()`` raises); the loop's results have values.

Contract: `Evaluator.evaluate(op)` stores one host value per output of `op`
(dtype and sizes of the tensor, axes in dim order); a value is computed once.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.frontend.graph import Graph, Operation, Tensor, Variable, _eager, fail, tracing

# cache across evaluators: one-op function text -> loaded executable
_EXECUTABLES: dict[str, object] = {}


def _device():
    from mtfc.runtime import devices as rt_devices

    rt_devices.ensure_cpu_devices(1)
    return rt_devices.devices("cpu", 1)[0]


class Evaluator:
    """Evaluates the ops of the root graphs made while it is active.

    `sources`: argument name -> value (a NumPy array or a `HostSource`) for
    arguments given explicitly; every other argument is synthesized from
    `seed` (model inputs with ``step=input_step`` when that is not None, as
    a training loop's batch of that step)."""

    def __init__(self, seed: int = 0, sources: dict | None = None, input_step: int | None = None,
                 check: Callable[[Variable, np.ndarray], None] | None = None):
        self.seed = seed
        self.sources = dict(sources or {})
        self.input_step = input_step
        self.check = check  # called on each given argument's array before use
        self.used: set[str] = set()  # names of the given sources read
        self.values: dict[int, object] = {}  # id(tensor) -> device array
        self._keep: list[Tensor] = []  # the tensors of `values` (ids stay unique)
        self._evaluated: dict[int, Operation] = {}  # id(op) -> the ops run (kept alive)
        self.ops_evaluated = 0
        self.compiled = 0
        self._context = None
        self._dev = None

    # ------------------------------------------------------------ values

    def has_value(self, t: Tensor) -> bool:
        return id(t) in self.values or (t.op.primitive == "variable" and t.op.graph is not None
                                        and t.op.graph.evaluator is self)

    def numpy(self, t: Tensor) -> np.ndarray:
        """The host value of `t` (a located `MtfcError` for a loop body's tensor)."""
        return np.asarray(self._value(t))

    def describe(self, t: Tensor) -> str:
        """``Tensor(name, [dims], dtype)`` followed by its numbers (what ``print`` shows)."""
        head = f"Tensor({t.op.name}, {t.shape!r}, {t.dtype})"
        value = self.numpy(t)
        return head + "\n" + np.array2string(value, threshold=64, edgeitems=3, precision=6)

    def _value(self, t: Tensor):
        value = self.values.get(id(t))
        if value is not None:
            return value
        if t.op.primitive == "variable" and t.op.graph is not None and t.op.graph.evaluator is self:
            value = self._argument(t)
        elif id(t.op) in self._evaluated:
            # outputs added to an op after it ran (a loop's gradient makes the forward loop save
            # its trips' values as extra stacked outputs): run it again for those
            self.evaluate(t.op, only_missing=True)
            return self.values[id(t)]
        elif t.op.graph is not None and t.op.graph.parent is not None:
            raise fail(f"tensor {t.op.name} {t.shape} is inside a loop body (mtf.scan / layers.repeat / pipeline): "
                       "an eager run evaluates the loop as one op, so its body's tensors have no values; "
                       "read the loop's results instead")
        else:
            raise fail(f"tensor {t.op.name} {t.shape} was not computed by this eager run")
        self._store(t, value)
        return value

    def _store(self, t: Tensor, value) -> None:
        self.values[id(t)] = value
        self._keep.append(t)

    def _argument(self, t: Tensor):
        """The value of an argument (a model input, parameter, optimizer state)."""
        import jax

        from mtfc.runtime.sources import materialize
        from mtfc.runtime.synthetic import SyntheticSource

        variable = next(v for v in reversed(t.op.graph.variables) if v.tensor is t)
        dtype = np.dtype(mir.numpy_dtype(t.dtype))
        if variable.name in self.sources:
            self.used.add(variable.name)
            array = self.sources[variable.name]
            array = materialize(array) if not isinstance(array, np.ndarray) else array
            if tuple(array.shape) != t.shape.sizes:
                raise MtfcError(f"input {variable.name!r} has shape {tuple(array.shape)}, the model expects "
                                f"{t.shape.sizes} {t.shape}")
            if self.check is not None:
                self.check(variable, array)
            array = np.asarray(array).astype(dtype, copy=False)
        else:
            step = self.input_step if variable.role == "input" else None
            sig = mir.Signature(0, variable.name, variable.role, list(t.shape.names), t.shape.sizes, t.dtype,
                                variable.init)
            array = materialize(SyntheticSource(sig, self.seed, step)).astype(dtype, copy=False)
        return jax.device_put(np.ascontiguousarray(array), self._device())

    def _device(self):
        if self._dev is None:
            self._dev = _device()
        return self._dev

    # ------------------------------------------------------------ evaluation

    def evaluate(self, op: Operation, only_missing: bool = False) -> None:
        """Compute `op`'s outputs from its inputs' values (now, once each;
        `only_missing`: store only the outputs without a value yet, keeping the
        ones already read)."""
        args = [self._value(t) for t in op.inputs]
        executable = self._executable(op)
        try:
            results = executable.execute_sharded(args)
            outs = [shards[0] for shards in results.disassemble_into_single_device_arrays()]
        except Exception as e:  # XLA's runtime errors are not the model's lines
            raise MtfcError(f"eager run of op {op.name} ({op.primitive}) failed: "
                            f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}",
                            where=_where(op)) from None
        for t, value in zip(op.outputs, outs):
            if not (only_missing and id(t) in self.values):
                self._store(t, value)
        self._evaluated[id(op)] = op
        self.ops_evaluated += 1

    def _executable(self, op: Operation):
        from jaxlib import xla_client

        from mtfc.runtime.execute import compile_options

        text = self._function_text(op)
        executable = _EXECUTABLES.get(text)
        if executable is None:
            device = self._device()
            try:
                executable = device.client.compile_and_load(
                    text, xla_client.DeviceList((device,)), compile_options("none", [device]))
            except Exception as e:
                raise MtfcError(f"eager run: XLA could not compile op {op.name} ({op.primitive}): "
                                f"{str(e).strip().splitlines()[0]}", where=_where(op)) from None
            _EXECUTABLES[text] = executable
            self.compiled += 1
        return executable

    def _function_text(self, op: Operation) -> str:
        """``func.func @main(inputs...) -> (outputs...)`` holding `op` lowered
        by its primitive (plus the private functions of any composite), as
        text without locations: the cache key and what XLA compiles."""
        from jax.extend.mlir import ir
        from jax.extend.mlir.dialects import func

        from mtfc.frontend.lower import Lowerer
        from mtfc.frontend.primitives import PRIMITIVES

        if self._context is None:
            self._context = mir.new_context()
        with self._context, ir.Location.unknown():
            module = ir.Module.create()
            in_types = [mir.tensor_type(t.shape.sizes, t.dtype) for t in op.inputs]
            out_types = [mir.tensor_type(t.shape.sizes, t.dtype) for t in op.outputs]
            with ir.InsertionPoint(module.body):
                fn = func.FuncOp(mir.ENTRY, ir.FunctionType.get(in_types, out_types))
            block = fn.add_entry_block()
            lx = Lowerer(module)
            lx.layout_class = op.layout_class
            with ir.InsertionPoint(block):
                with lx.location(op):
                    results = PRIMITIVES[op.primitive].lower(lx, op, list(block.arguments))
                func.ReturnOp(list(results))
            return module.operation.get_asm(enable_debug_info=False)


def _where(op: Operation) -> str | None:
    import os

    return f"{os.path.basename(op.location[0])}:{op.location[1]}" if op.location else None


@dataclass
class EagerSession:
    """What ``with mtf.eager() as session`` gives: the root graph DSL calls
    record into (evaluated at once) and its evaluator."""

    graph: Graph
    evaluator: Evaluator

    def input(self, name: str, spec) -> Tensor:
        """A model input `name` (an `mtf.Input`, or dims): its value given by
        name (``mtf.eager(inputs=...)``) or synthesized as `mtfc run` does."""
        from mtfc.frontend.model import Input

        spec = spec if isinstance(spec, Input) else Input(spec)
        return self.graph.add_variable(name, "input", spec.shape, spec.dtype, spec.init)


@contextlib.contextmanager
def eager(seed: int = 0, inputs: dict | None = None, *, training: bool = False):
    """``with mtf.eager(seed=0, inputs=None) as session:`` -- run DSL code op
    by op: every op is evaluated when it is called, so tensors have values
    (``print(t)``, ``t.numpy()``).  Arguments take `mtfc run`'s synthesized
    values for `seed` unless `inputs` (name -> array) gives them.

    The block gets a fresh root graph (`EagerSession.graph`, model inputs via
    `EagerSession.input`; ``training`` sets `mtf.is_training()`), and any
    model traced inside the block (`mtf.trace`, a train step) is evaluated
    too.  Values stay readable after the block."""
    evaluator = Evaluator(seed, inputs)
    token = _eager.set(evaluator)
    try:
        graph = Graph()
        graph.training = training
        with tracing(graph):
            yield EagerSession(graph, evaluator)
    finally:
        _eager.reset(token)


@contextlib.contextmanager
def evaluating(evaluator: Evaluator):
    """Root graphs made inside take `evaluator` (their ops are evaluated as recorded)."""
    token = _eager.set(evaluator)
    try:
        yield evaluator
    finally:
        _eager.reset(token)


@dataclass
class EagerResult:
    """An eager run of an entry: its outputs (name -> NumPy array, in the
    compiled module's result order) and how they were computed."""

    outputs: dict[str, np.ndarray]
    tensors: dict[str, Tensor]
    roles: dict[str, str]
    graph: Graph
    evaluator: Evaluator
    dropped: list[str] = field(default_factory=list)


def eval_entry(entry, *, seed: int = 0, inputs: dict | None = None, train: bool = False,
               optimizer: str | None = None, precision: str | None = None, path: str | None = None,
               check: Callable | None = None) -> EagerResult:
    """Run `entry` eagerly: its forward outputs, or with `train` one train
    step's results (loss, metrics, new parameters and optimizer state) --
    fed as `mtfc run` feeds the compiled module for `seed` (a train step's
    batch: that of step 0 of the training loop), `inputs` (name -> array)
    overriding arguments by name.  Errors of the model's code are located
    one-liners at the model file's line (`path`)."""
    from mtfc.frontend.model import run_model_code, trace

    evaluator = Evaluator(seed, inputs, input_step=0 if train else None, check=check)
    with evaluating(evaluator):
        if train:
            from mtfc.frontend.train import trace_train_step

            step = run_model_code(path, trace_train_step, entry, optimizer, precision)
            traced, roles, dropped = step.traced, step.output_roles, step.dropped
        else:
            traced = run_model_code(path, trace, entry.fn, entry.inputs, entry.name)
            roles, dropped = entry.output_roles, []
    outputs = {name: evaluator.numpy(t) for name, t in traced.outputs.items()}
    return EagerResult(outputs, dict(traced.outputs), {k: roles.get(k, "output") for k in traced.outputs},
                       traced.graph, evaluator, dropped)
