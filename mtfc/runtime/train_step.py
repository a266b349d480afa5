"""One compiled train step and the state it carries from step to step.

A module with ``mtfc.step = "train"`` is one step of training (docs/IR.md,
"Train-step modules").  `TrainStep` pairs each ``parameter`` /
``optimizer_state`` argument with the result of the same ``mtfc.name`` (the
next step's argument), knows the loss and metric results, and launches the
executable on a `TrainState` -- one global ``jax.Array`` per state array
(sharded by the argument's layout over the mesh's devices,
``host_data.jax_sharding``), whose buffers never leave the devices; the
module's ``tf.aliasing_output`` lets XLA reuse, and PJRT donate, them.  In a
multi-process job each process's arrays hold only its own devices' shards
(``addressable_shards``), every process launches every step (lockstep), and
the loss and metrics are gathered from every device, so that every process
reads the same values (and stops at the same step).  Initial state comes from each argument's ``mtfc.init`` (seeded by
``(seed, mtfc.name)``, as a forward run synthesizes it) or from a checkpoint
(`checkpoint/`) on any layout.  The loop that drives it is `loop.py`.

Per step the host does a fixed amount of Python work, whatever the number of
state arrays: `launch` picks the arguments out of the state and the batch
with precomputed ``operator.itemgetter``s (C), `Program.execute` launches and
gets every result back as a global ``jax.Array`` from jaxlib's C++ result
handlers, and `advance` zips the state results into the next state dict (C
again).  Only the loss and metrics are read back to the host (`read_scalars`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import jax
import numpy as np
from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.runtime import checkpoint
from mtfc.runtime.execute import Program
from mtfc.runtime.host_data import all_shards, gather_from_shards, local_shards, shard_to_devices
from mtfc.runtime.sources import as_source
from mtfc.runtime.synthetic import SyntheticSource


@dataclass
class StepRecord:
    step: int  # steps completed after this one (1-based over the whole run)
    loss: float
    metrics: dict
    seconds: float


@dataclass
class TrainState:
    step: int  # steps completed
    # name -> global jax.Array laid out by the argument's layout (this process's shards only)
    buffers: dict[str, jax.Array] = field(default_factory=dict)


def picker(keys: list):
    """``operator.itemgetter(*keys)`` that always returns a tuple (also for one key or none)."""
    if not keys:
        return lambda _: ()
    if len(keys) == 1:
        key = keys[0]
        return lambda x: (x[key],)
    return operator.itemgetter(*keys)


class TrainStep:
    """A compiled train-step module and the pairing of its state arguments and results."""

    def __init__(self, module: ir.Module, *, backend: str = "cpu"):
        if mir.step_kind(module) != "train":
            raise MtfcError("this is not a train-step module (no mtfc.step = \"train\")")
        kind = mir.partitioning(module)
        self.module = module
        self.program = Program(module, backend=backend, unsharded=kind == "none")
        p = self.program
        self.devices = p.devices
        self.optimizer = mir.optimizer_spec(module)
        self.model = mir.model_name(module)
        results = {r.name: (k, r) for k, r in enumerate(p.results)}
        self.state: list[tuple[int, int, mir.Signature]] = []  # (arg index, result index, signature)
        self.inputs: list[tuple[int, mir.Signature]] = []
        for i, sig in enumerate(p.arguments):
            if sig.role in mir.STATE_ROLES:
                if sig.name not in results:
                    raise MtfcError(
                        f"train step: {sig.role} argument {sig.name!r} has no result of the same name to feed back"
                    )
                k, res = results[sig.name]
                for what, a, b in (("role", sig.role, res.role), ("shape", sig.shape, res.shape),
                                   ("dtype", sig.dtype, res.dtype), ("dims", sig.dims, res.dims)):
                    if a != b:
                        raise MtfcError(f"train step: argument {sig.name!r} has {what} {a}, its result has {b}")
                self.state.append((i, k, sig))
            elif sig.role == "input":
                self.inputs.append((i, sig))
            else:
                raise MtfcError(f"train step: argument {sig.name!r} has role {sig.role!r}")
        fed = {sig.name for _, _, sig in self.state}
        for k, res in enumerate(p.results):
            if res.role in mir.STATE_ROLES and res.name not in fed:
                raise MtfcError(f"train step: {res.role} result {res.name!r} has no argument of the same name")
        losses = [k for k, r in enumerate(p.results) if r.role == "loss"]
        if len(losses) != 1:
            raise MtfcError(f"train step: expected one result with role 'loss', found {len(losses)}")
        self.loss_index = losses[0]
        self.metrics = [(k, r) for k, r in enumerate(p.results) if r.role == "metric"]
        aliased = mir.aliased_arguments(module)
        self.donated = sum(1 for i, _, _ in self.state if i in aliased)
        self.launched = False
        # the step loop's plumbing, fixed once: state dict -> tuple (state order), batch dict -> tuple,
        # (state + batch) -> arguments in the module's order, results -> next state (state order)
        self.state_names = tuple(sig.name for _, _, sig in self.state)
        self._state_of = picker(list(self.state_names))
        self._inputs_of = picker([sig.name for _, sig in self.inputs])
        order = [i for i, _, _ in self.state] + [i for i, _ in self.inputs]
        position = {a: n for n, a in enumerate(order)}
        self._arguments = picker([position[i] for i in range(len(p.arguments))])
        self._next_state = picker([k for _, k, _ in self.state])

    @property
    def state_signatures(self) -> list[mir.Signature]:
        return [sig for _, _, sig in self.state]

    @property
    def input_signatures(self) -> list[mir.Signature]:
        return [sig for _, sig in self.inputs]

    def layout(self, arg_index: int):
        return self.program.arg_layouts[arg_index]

    # -- state ------------------------------------------------------------------------------

    def initial_state(self, seed: int) -> TrainState:
        state = TrainState(0)
        for i, _, sig in self.state:
            state.buffers[sig.name] = shard_to_devices(SyntheticSource(sig, seed), self.layout(i), self.devices)
        return state

    def restore(self, path: str) -> tuple[TrainState, dict]:
        index = checkpoint.load_index(path)
        checkpoint.check_matches(index, self.state_signatures, path)
        state = TrainState(int(index["step"]))
        arrays = checkpoint.restore(index, [(sig, self.layout(i)) for i, _, sig in self.state], self.devices)
        for _, _, sig in self.state:
            state.buffers[sig.name] = arrays[sig.name]
        return state, index

    def state_order(self, index: dict) -> list[tuple[int, int, mir.Signature]]:
        """The state entries in the order of a checkpoint's arrays."""
        by_name = {sig.name: entry for entry in self.state for sig in [entry[2]]}
        return [by_name[a["name"]] for a in index["arrays"]]

    def host_state(self, state: TrainState) -> dict[str, np.ndarray]:
        """Gather the state to the host, whole, in every process (for --check
        and --outputs; not used by the loop; a collective in a multi-process job)."""
        local = [local_shards(state.buffers[sig.name], self.devices) for _, _, sig in self.state]
        everything = all_shards(local, self.devices)
        return {sig.name: gather_from_shards(shards, self.layout(i), mir.numpy_dtype(sig.dtype))
                for (i, _, sig), shards in zip(self.state, everything)}

    def save(self, path: str, state: TrainState, meta: dict, **kwargs) -> None:
        entries = [checkpoint.Entry(sig, self.layout(i), state.buffers[sig.name])
                   for i, _, sig in self.state]
        mesh = self.program.mesh
        layouts = getattr(self.program, "layouts", None)
        info = {
            "step": state.step, "model": self.model, "optimizer": self.optimizer,
            "mesh": str(mesh), "layout": str(self.program.rules),
            "param_layout": str(layouts.params) if layouts is not None else str(self.program.rules),
            "partitioning": self.program.kind, **meta,
        }
        checkpoint.save(path, entries, info, **kwargs)

    # -- steps ------------------------------------------------------------------------------

    def device_inputs(self, batch: dict) -> dict[str, jax.Array]:
        """A batch (input name -> global ndarray or `HostSource`) on the
        devices: this process's shards only."""
        out = {}
        for i, sig in self.inputs:
            source = as_source(batch[sig.name])
            if tuple(source.shape) != sig.shape:
                raise MtfcError(f"batch for input {sig.name!r} has shape {tuple(source.shape)}, "
                                f"the module expects {sig.shape}")
            out[sig.name] = shard_to_devices(source, self.layout(i), self.devices, mir.numpy_dtype(sig.dtype))
        return out

    def launch(self, state: TrainState, inputs: dict[str, jax.Array]) -> list[jax.Array]:
        """Run one step; return every result as a global ``jax.Array`` (this
        process's shards; not waited for).  The state's buffers are donated
        where the module aliases them: `advance` must replace them."""
        args = self._arguments(self._state_of(state.buffers) + self._inputs_of(inputs))
        first = not self.launched
        if first:  # later steps feed back what this executable returned
            self.program.check_device_arguments(list(args))
            self.launched = True
        outs = self.program.execute(args)
        del args  # donated buffers are dead now
        if first:
            self.program.check_outputs(outs)
        return outs

    def advance(self, state: TrainState, outs: list[jax.Array]) -> None:
        """The state after the step that returned `outs`: its state results, as they are."""
        state.buffers = dict(zip(self.state_names, self._next_state(outs)))
        state.step += 1

    def read_scalars(self, outs: list[jax.Array]) -> tuple[float, dict]:
        """The loss and metrics of a step, from every device's shards (gathered
        across processes: every process gets the same values; replicas must agree)."""
        p = self.program
        wanted = [self.loss_index] + [k for k, _ in self.metrics]
        everything = all_shards([local_shards(outs[k], self.devices) for k in wanted], self.devices)
        values = {k: gather_from_shards(shards, p.res_layouts[k], mir.numpy_dtype(p.results[k].dtype))
                  for k, shards in zip(wanted, everything)}
        loss = values[self.loss_index]
        loss = float(loss) if loss.shape == () else float(np.mean(loss.astype(np.float64)))
        metrics = {r.name: (values[k].item() if values[k].shape == () else values[k].tolist())
                   for k, r in self.metrics}
        return loss, metrics

    def gather_outputs(self, outs: list[jax.Array]) -> dict[str, np.ndarray]:
        """Every result that is not state (loss, metrics), whole, in every process."""
        p = self.program
        wanted = [k for k, sig in enumerate(p.results) if sig.role not in mir.STATE_ROLES]
        everything = all_shards([local_shards(outs[k], self.devices) for k in wanted], self.devices)
        return {p.results[k].name: gather_from_shards(shards, p.res_layouts[k], mir.numpy_dtype(p.results[k].dtype))
                for k, shards in zip(wanted, everything)}
