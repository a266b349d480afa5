"""`mtfc run TRAIN.mlir --steps N`: the training loop for train-step modules.

A module with ``mtfc.step = "train"`` is one step of training (docs/IR.md,
"Train-step modules").  The loop

1. initializes parameters and optimizer state from their ``mtfc.init``
   (seeded by ``(seed, mtfc.name)``, as a forward run synthesizes them), or
   restores them from a checkpoint (`checkpoint.py`) on any layout;
2. runs the compiled step N times.  State never leaves the devices: each
   step's ``parameter``/``optimizer_state`` results (per-device buffers) are
   paired with the arguments of the same ``mtfc.name`` and become the next
   step's arguments; the module's ``tf.aliasing_output`` lets XLA reuse, and
   PJRT donate, their buffers.  Only the loss and the metrics (scalars) are
   read back each step.  Batches come from `data.py`; step ``k``'s batch is
   put on the devices while step ``k - 1`` runs;
3. shows progress, writes ``--log`` JSON lines, saves ``--save`` checkpoints
   (every ``--save-every`` steps and at the end) and prints a summary.
"""

from __future__ import annotations

import io
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import jax
import numpy as np
from jax.extend.mlir import ir

from mtfc import ir as mir
from mtfc.errors import Interrupted, MtfcError, warn
from mtfc.index_ranges import argument_ranges
from mtfc.runtime import checkpoint
from mtfc.runtime import devices as rt_devices
from mtfc.runtime.check import compare
from mtfc.runtime.data import Batches, describe_info, open_batches, same_source, throughput_unit
from mtfc.runtime.execute import Program
from mtfc.runtime.host_data import gather_from_shards, shard_to_devices, synthesize

STEP = "mtfc.step"
OPTIMIZER = "mtfc.optimizer"
PRECISION = "mtfc.precision"
ALIASING = "tf.aliasing_output"
STATE_ROLES = ("parameter", "optimizer_state")
DEFAULT_STEPS = 10
DEFAULT_REPEAT = 3  # timed executions of a forward run


def step_kind(module: ir.Module) -> str | None:
    """The module's ``mtfc.step`` (``"train"``), or None for a forward module."""
    attrs = module.operation.attributes
    return ir.StringAttr(attrs[STEP]).value if STEP in attrs else None


def optimizer_spec(module: ir.Module) -> str | None:
    attrs = module.operation.attributes
    return ir.StringAttr(attrs[OPTIMIZER]).value if OPTIMIZER in attrs else None


def compute_precision(module: ir.Module) -> str:
    """A train step's compute dtype (``mtfc.precision``; f32 when absent)."""
    attrs = module.operation.attributes
    return ir.StringAttr(attrs[PRECISION]).value if PRECISION in attrs else "f32"


def _aliased_arguments(module: ir.Module) -> set[int]:
    """Indices of @main's arguments that carry ``tf.aliasing_output``."""
    fn = mir.entry_function(module)
    if "arg_attrs" not in fn.attributes:
        return set()
    return {i for i, a in enumerate(ir.ArrayAttr(fn.attributes["arg_attrs"])) if ALIASING in ir.DictAttr(a)}


def _model_name(module: ir.Module) -> str:
    attrs = module.operation.attributes
    return ir.StringAttr(attrs["sym_name"]).value if "sym_name" in attrs else ""


def device_shards(host: np.ndarray, layout, devices: list) -> list:
    """Per-device buffers (mesh order) of a host array cut by `layout`."""
    return [jax.device_put(np.array(host[layout.shard_slices(d)], order="C"), dev) for d, dev in enumerate(devices)]


def _scalar(shards: list, sig: mir.Signature, layout) -> float | list:
    if not sig.shape:
        return np.asarray(shards[0]).item()
    return gather_from_shards(shards, layout, mir.numpy_dtype(sig.dtype)).tolist()


@dataclass
class StepRecord:
    step: int  # steps completed after this one (1-based over the whole run)
    loss: float
    metrics: dict
    seconds: float


@dataclass
class TrainState:
    step: int  # steps completed
    buffers: dict[str, list] = field(default_factory=dict)  # name -> per-device buffers (mesh order)


class TrainStep:
    """A compiled train-step module and the pairing of its state arguments and results."""

    def __init__(self, module: ir.Module, *, backend: str = "cpu"):
        if step_kind(module) != "train":
            raise MtfcError("this is not a train-step module (no mtfc.step = \"train\")")
        kind = mir.partitioning(module)
        self.module = module
        self.program = Program(module, backend=backend, unsharded=kind == "none")
        p = self.program
        self.devices = p.devices
        self.optimizer = optimizer_spec(module)
        self.model = _model_name(module)
        results = {r.name: (k, r) for k, r in enumerate(p.results)}
        self.state: list[tuple[int, int, mir.Signature]] = []  # (arg index, result index, signature)
        self.inputs: list[tuple[int, mir.Signature]] = []
        for i, sig in enumerate(p.arguments):
            if sig.role in STATE_ROLES:
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
            if res.role in STATE_ROLES and res.name not in fed:
                raise MtfcError(f"train step: {res.role} result {res.name!r} has no argument of the same name")
        losses = [k for k, r in enumerate(p.results) if r.role == "loss"]
        if len(losses) != 1:
            raise MtfcError(f"train step: expected one result with role 'loss', found {len(losses)}")
        self.loss_index = losses[0]
        self.metrics = [(k, r) for k, r in enumerate(p.results) if r.role == "metric"]
        aliased = _aliased_arguments(module)
        self.donated = sum(1 for i, _, _ in self.state if i in aliased)
        self.launched = False

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
            state.buffers[sig.name] = device_shards(synthesize(sig, seed), self.layout(i), self.devices)
        return state

    def restore(self, path: str) -> tuple[TrainState, dict]:
        index = checkpoint.load_index(path)
        checkpoint.check_matches(index, self.state_signatures, path)
        state = TrainState(int(index["step"]))
        for i, _, sig in self.state:
            state.buffers[sig.name] = checkpoint.restore_to_devices(index, sig, self.layout(i), self.devices)
        return state, index

    def state_order(self, index: dict) -> list[tuple[int, int, mir.Signature]]:
        """The state entries in the order of a checkpoint's arrays."""
        by_name = {sig.name: entry for entry in self.state for sig in [entry[2]]}
        return [by_name[a["name"]] for a in index["arrays"]]

    def host_state(self, state: TrainState) -> dict[str, np.ndarray]:
        """Gather the state to the host (for --check and --outputs; not used by the loop)."""
        return {
            sig.name: gather_from_shards(state.buffers[sig.name], self.layout(i), mir.numpy_dtype(sig.dtype))
            for i, _, sig in self.state
        }

    def save(self, path: str, state: TrainState, meta: dict, **kwargs) -> None:
        entries = [checkpoint.Entry(sig, self.layout(i), state.buffers[sig.name]) for i, _, sig in self.state]
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

    def device_inputs(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        out = {}
        for i, sig in self.inputs:
            host = np.asarray(batch[sig.name])
            if tuple(host.shape) != sig.shape:
                raise MtfcError(f"batch for input {sig.name!r} has shape {host.shape}, the module expects {sig.shape}")
            want = np.dtype(mir.numpy_dtype(sig.dtype))
            out[sig.name] = shard_to_devices(host if host.dtype == want else host.astype(want), self.layout(i), self.devices)
        return out

    def launch(self, state: TrainState, inputs: dict[str, jax.Array]) -> list[list]:
        """Run one step; return every result's per-device buffers (not waited for)."""
        args: list = [None] * len(self.program.arguments)
        for i, _, sig in self.state:
            args[i] = checkpoint.global_array(state.buffers[sig.name], self.layout(i), self.devices)
        for i, sig in self.inputs:
            args[i] = inputs[sig.name]
        if not self.launched:  # later steps feed back what this executable returned
            self.program.check_device_arguments(args)
            self.launched = True
        results = self.program.executable.execute_sharded(args)
        del args  # donated buffers are dead now
        return results.disassemble_into_single_device_arrays()

    def advance(self, state: TrainState, outs: list[list]) -> None:
        for _, k, sig in self.state:
            state.buffers[sig.name] = outs[k]
        state.step += 1

    def read_scalars(self, outs: list[list]) -> tuple[float, dict]:
        p = self.program
        loss = float(np.asarray(outs[self.loss_index][0]).reshape(-1)[0]) if p.results[self.loss_index].shape == () \
            else float(np.mean(gather_from_shards(outs[self.loss_index], p.res_layouts[self.loss_index], np.float64)))
        metrics = {r.name: _scalar(outs[k], r, p.res_layouts[k]) for k, r in self.metrics}
        return loss, metrics


class Progress:
    """One `\\r`-rewritten line on a terminal (redrawn at most 10 times a second);
    otherwise a line for the first step, every `total/10` steps and the last."""

    def __init__(self, total: int, echo: Callable[[str], None], *, tty: bool | None = None, stream=None):
        self.total = total
        self.echo = echo
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = max(1, total // 10)
        self.done = 0
        self.width = 0
        self.drawn = -1.0
        self.text = ""

    def update(self, record: StepRecord) -> None:
        self.done += 1
        self.text = (f"step {record.step} ({self.done}/{self.total})  loss {record.loss:.6g}  "
                     + "".join(f"{name} {_metric_text(value)}  " for name, value in record.metrics.items())
                     + f"{record.seconds * 1e3:.2f} ms/step")
        if self.tty:
            now = time.monotonic()
            if now - self.drawn >= 0.1 or self.done == self.total:
                self.drawn = now
                self._draw()
        elif self.done % self.every == 0 or self.done == self.total or self.done == 1:
            self.echo(self.text)

    def _draw(self) -> None:
        self.stream.write("\r" + self.text.ljust(self.width))
        self.stream.flush()
        self.width = len(self.text)
        self.text = ""

    def close(self) -> None:
        """Show the latest step and end the `\\r` line (before other output, and at the end)."""
        if self.tty and self.text:
            self._draw()
        if self.tty and self.width:
            self.stream.write("\n")
            self.stream.flush()
            self.width = 0


@dataclass
class TrainOptions:
    steps: int | None = None
    data: str | None = None
    save: str | None = None
    save_every: int | None = None
    restore: str | None = None
    log: str | None = None

    def given(self) -> list[str]:
        flags = {"steps": "--steps", "data": "--data", "save": "--save", "save_every": "--save-every",
                 "restore": "--restore", "log": "--log"}
        return [flag for key, flag in flags.items() if getattr(self, key) is not None]


def _json_number(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, list):
        return [_json_number(v) for v in x]
    return x


def _check_first_step(train: TrainStep, state: TrainState, batches: Batches, backend: str,
                      echo: Callable[[str], None]) -> bool:
    """The first step sharded vs the unsharded program on one device, from the same state and batch."""
    from mtfc.runtime.runner import _table

    inputs = train.host_state(state)
    inputs.update(batches.batch(state.step))
    sharded = train.program.run(inputs, repeat=1).outputs
    reference = Program(train.module, backend=backend, unsharded=True).run(inputs, repeat=1).outputs
    rows = [("output", "max rel err", "tolerance", "status")]
    ok = True
    # f32 results computed from bf16 values (a bf16 step's loss, gradients,
    # updates) are judged at the compute dtype's tolerance
    low = compute_precision(train.module)
    for sig in train.program.results:
        judged = low if low != "f32" and sig.dtype == "f32" else sig.dtype
        c = compare(sig.name, judged, sharded[sig.name], reference[sig.name])
        rows.append((sig.name, f"{c.error:.3e}", f"{c.tolerance:.0e}", "ok" if c.ok else "MISMATCH"))
        ok &= c.ok
    echo(f"check step {state.step + 1} against the unsharded run on 1 device:")
    echo(_table(rows))
    echo("check: " + ("passed" if ok else "FAILED (not training)"))
    return ok


def train_command(
    module: ir.Module,
    module_file: str,
    options: TrainOptions,
    *,
    backend: str = "cpu",
    seed: int = 0,
    outputs_file: str | None = None,
    inputs_file: str | None = None,
    check: bool = False,
    echo: Callable[[str], None] = print,
    progress_stream=None,
) -> bool:
    """The training loop of `mtfc run` for a train-step module; False when `check` fails."""
    steps = DEFAULT_STEPS if options.steps is None else options.steps
    if steps < 0:
        raise MtfcError(f"--steps must be >= 0, not {steps}")
    if inputs_file is not None:
        raise MtfcError("--inputs is for forward modules; a train-step module takes batches from --data")
    if options.save_every is not None:
        if options.save is None:
            raise MtfcError("--save-every needs --save DIR")
        if options.save_every < 1:
            raise MtfcError(f"--save-every must be >= 1, not {options.save_every}")
    if options.restore is not None:
        checkpoint.load_index(options.restore)  # fail on a bad checkpoint before compiling
    # Bad data files fail before compiling.
    batches = open_batches(options.data, [s for s in mir.arguments(module) if s.role == "input"], seed,
                           argument_ranges(module))
    if backend == "cpu":
        kind = mir.partitioning(module)
        rt_devices.ensure_cpu_devices(max(mir.module_mesh(module).size if kind != "none" else 1, 1))
    train = TrainStep(module, backend=backend)
    p = train.program

    where = (f"{p.mesh.size} {backend} device(s), mesh {p.mesh}" if p.kind != "none" else f"1 {backend} device")
    echo(f"module {module_file}: train step ({train.optimizer or 'optimizer not named'}), "
         f"partitioning {p.kind}, {where}")
    params = [s for s in train.state_signatures if s.role == "parameter"]
    n_values = sum(math.prod(s.shape) for s in params)
    echo(f"state: {len(params)} parameter array(s) ({n_values:,} values), "
         f"{len(train.state) - len(params)} optimizer-state array(s); "
         f"donated to XLA: {train.donated} of {len(train.state)}")
    echo(f"data: {batches.describe()}")
    echo(f"compile {p.compile_seconds * 1e3:.1f} ms")

    if options.restore is not None:
        state, index = train.restore(options.restore)
        notes = []
        here = [[list(axes) for axes in train.layout(i).axes] for i, _, _ in train.state_order(index)]
        if index.get("mesh") != str(p.mesh) or [a["layout"] for a in index["arrays"]] != here:
            notes.append(f"saved on mesh {index.get('mesh') or '(one device)'}, "
                         f"layout {index.get('layout') or '(replicated)'}"
                         + (f", parameter layout {index['param_layout']}"
                            if index.get("param_layout") not in (None, index.get("layout")) else "")
                         + "; resharded")
        if index.get("seed") is not None and index.get("seed") != seed:
            notes.append(f"it was trained with --seed {index['seed']}, continuing with --seed {seed}")
        echo(f"restored step {state.step} from {options.restore}" + (f" ({'; '.join(notes)})" if notes else ""))
        if "data" in index and not same_source(index["data"], batches.info()):
            warn(f"{options.restore} was trained on {describe_info(index['data'])}; "
                  f"this run reads {describe_info(batches.info())}")
    else:
        state = train.initial_state(seed)

    if check and not _check_first_step(train, state, batches, backend, echo):
        return False

    meta = {"seed": seed, "data": batches.info()}
    log = open(options.log, "w") if options.log else None  # noqa: SIM115
    records: list[StepRecord] = []
    last_saved = None
    outs = None
    start_step = state.step
    progress = Progress(steps, echo, stream=progress_stream)
    try:
        upcoming = train.device_inputs(batches.batch(state.step)) if steps else None
        previous = time.perf_counter()
        for n in range(steps):
            outs = train.launch(state, upcoming)
            train.advance(state, outs)
            if n + 1 < steps:  # the next batch travels while this step runs
                upcoming = train.device_inputs(batches.batch(state.step))
            loss, metrics = train.read_scalars(outs)  # waits for the step
            now = time.perf_counter()
            record = StepRecord(state.step, loss, metrics, now - previous)
            previous = now
            records.append(record)
            progress.update(record)
            if log:
                log.write(json.dumps({"step": record.step, "loss": _json_number(loss),
                                      "metrics": {k: _json_number(v) for k, v in metrics.items()},
                                      "seconds": record.seconds}) + "\n")
                log.flush()
            if not math.isfinite(loss):
                progress.close()
                raise MtfcError(f"the loss is {loss} after step {state.step}; stopping ({_kept(options, last_saved)})")
            if options.save_every and state.step % options.save_every == 0:
                progress.close()
                _save_finite(train, options, state, meta, last_saved)
                last_saved = state.step
                echo(f"saved step {state.step} to {options.save}")
                previous = time.perf_counter()  # a step's time does not include the save
        progress.close()
    except KeyboardInterrupt:
        progress.close()
        raise Interrupted(_interrupted_message(state.step, options, last_saved, start_step)) from None
    finally:
        if log:
            log.close()

    if records:
        _summary(records, start_step, train, echo)
    else:
        echo(f"no steps run (at step {state.step})")
    if options.save is not None and last_saved != state.step:
        _save_finite(train, options, state, meta, last_saved)
        echo(f"saved step {state.step} to {options.save}")
    if outputs_file:
        values = train.host_state(state)
        if outs is not None:
            for k, sig in enumerate(p.results):
                if sig.role not in STATE_ROLES:
                    values[sig.name] = gather_from_shards(outs[k], p.res_layouts[k], mir.numpy_dtype(sig.dtype))
        from mtfc.emit.text import write_bytes_atomic

        buffer = io.BytesIO()
        np.savez(buffer, **values)
        write_bytes_atomic(outputs_file, buffer.getvalue())
        echo(f"wrote {outputs_file}")
    return True


def _interrupted_message(step: int, options: TrainOptions, last_saved: int | None, start_step: int) -> str:
    """What Ctrl-C during training says: the steps completed and the checkpoint to resume from."""
    if last_saved is not None:
        kept = f"last checkpoint: {options.save} (step {last_saved})"
    elif options.restore is not None:
        kept = f"no checkpoint saved (restored from {options.restore} at step {start_step})"
    else:
        kept = "no checkpoint saved"
    return f"interrupted at step {step}; {kept}"


def _save_finite(train: TrainStep, options: "TrainOptions", state: TrainState, meta: dict,
                 last_saved: int | None) -> None:
    """Save the state; a state that is no longer finite stops the run instead,
    with the line saying which checkpoint is left (as for a non-finite loss)."""
    try:
        train.save(options.save, state, meta)
    except checkpoint.NotFinite as e:
        raise MtfcError(f"{e.name} is not finite after step {state.step}; stopping ({_kept(options, last_saved)})") \
            from None


def _kept(options: "TrainOptions", last_saved: int | None) -> str:
    """Which checkpoint a run stopped early leaves, in words."""
    if last_saved is not None:
        return f"the last checkpoint, step {last_saved}, is in {options.save}"
    if options.save is not None:
        return f"this run saved no checkpoint; {options.save} is as it was"
    return "no checkpoint was saved (no --save)"


def _metric_text(value) -> str:
    """A metric for the progress line and summary (4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _summary(records: list[StepRecord], start_step: int, train: TrainStep, echo: Callable[[str], None]) -> None:
    times = np.array([r.seconds for r in records])
    median = float(np.median(times))
    total = float(times.sum())
    echo(f"trained steps {start_step + 1}-{records[-1].step} ({len(records)} steps) in {total:.3f} s: "
         f"loss {records[0].loss:.6g} -> {records[-1].loss:.6g} (first -> last)")
    if records[-1].metrics:
        echo("metrics: " + ", ".join(f"{name} {_metric_text(records[0].metrics.get(name))} -> {_metric_text(value)}"
                                     for name, value in records[-1].metrics.items()) + " (first -> last)")
    unit = throughput_unit(train.input_signatures)
    rate = f"; {unit[1] / median:,.0f} {unit[0]}/s" if unit and median > 0 else ""
    echo(f"step time: median {median * 1e3:.2f} ms (min {times.min() * 1e3:.2f}, max {times.max() * 1e3:.2f}){rate}")


def run_or_train(module_file: str, options: TrainOptions, *, backend: str, seed: int, inputs_file, outputs_file,
                 check: bool, repeat: int | None, echo: Callable[[str], None]) -> bool:
    """`mtfc run`: the training loop for a train-step module, the forward run otherwise."""
    from mtfc.emit.artifact import read_module
    from mtfc.passes.verify_names import verify_module
    from mtfc.runtime.runner import run_command

    context = mir.new_context()
    module = read_module(module_file, context)
    verify_module(module, source=module_file)  # nothing runs a module that breaks the IR contract
    kind = step_kind(module)
    if kind == "train":
        if repeat is not None:
            raise MtfcError(f"--repeat is for forward modules; {module_file} is a train-step module (use --steps)")
        return train_command(module, module_file, options, backend=backend, seed=seed, outputs_file=outputs_file,
                             inputs_file=inputs_file, check=check, echo=echo)
    if kind is not None:
        raise MtfcError(f"{module_file}: unknown mtfc.step {kind!r} (the runner knows \"train\")")
    given = options.given()
    if given:
        raise MtfcError(
            f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} a train-step module "
            f"(mtfc.step = \"train\"); "
            f"{module_file} is a forward module"
        )
    return run_command(module_file, backend=backend, seed=seed, inputs_file=inputs_file, outputs_file=outputs_file,
                       check=check, repeat=DEFAULT_REPEAT if repeat is None else repeat, echo=echo, module=module)
