"""Compile a module with PJRT and run it on a device mesh.

`Program` reads everything it needs from the IR: the mesh, the layout rules,
each argument's and result's name, role, dims and initializer, and how the
module is partitioned (``mtfc.partitioning``):

* ``none``: a global module; run on one device (or, for `--check`, as the
  reference);
* ``gspmd``: ``mhlo.sharding`` annotations, split by XLA's SPMD partitioner
  (``num_partitions`` = mesh size);
* ``explicit``: mtfc's per-device program with explicit collectives, run as
  replicas (``num_replicas`` = mesh size; replica groups name replica ids);
* ``shardy``: Shardy's per-device program (``mhlo.sharding = "{manual}"`` on
  arguments and results, collectives with channels and global device ids),
  run as partitions (``num_partitions`` = mesh size, SPMD partitioning on, so
  XLA accepts the manual program as it is).

Across processes (`mtfc.runtime.distributed`) nothing changes in the
program: every process compiles the same text for the whole mesh (the
device assignment lists the global devices' ids in mesh order,
process-major), feeds only its own devices' shards (`Program.feed`), runs
``execute_sharded`` together with the others, and gets back its own
devices' output shards, which `Program.gather` exchanges (jax's
``process_allgather``) so that every process can reassemble the outputs;
process 0 is the one that prints and writes them.

Stepping (`Program.execute`): the results come back as one global
``jax.Array`` per result, built in C++ by jaxlib's result handlers
(``ExecuteResults.consume_with_handlers`` with
``xla_client.array_result_handler``, the path ``jax.jit`` takes), so that a
train step's new state can be passed straight back as the next step's
arguments with no Python work per array or per device.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from jax.extend.mlir import ir
from jaxlib import xla_client

from mtfc import ir as mir
from mtfc.errors import MtfcError
from mtfc.mesh import LayoutRules, Mesh
from mtfc.passes.comm_analysis import element_bytes
from mtfc.runtime import devices as rt_devices
from mtfc.runtime import memory_check
from mtfc.runtime.host_data import all_shards, gather_from_shards, jax_sharding, shard_to_devices
from mtfc.runtime.sources import as_source
from mtfc.runtime.synthetic import synthesize


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    compile_seconds: float
    step_seconds: float


def strip_shardings(module: ir.Module) -> ir.Module:
    """A copy of `module` without partitioning annotations: the global program."""
    text = mir.strip_partitioning_text(module)
    return ir.Module.parse(text, module.context)


def compile_options(kind: str, devices, xla_options: dict | None = None) -> xla_client.CompileOptions:
    """PJRT compile options for a module of partitioning `kind` on `devices`
    (the mesh's devices in mesh order, or their number for devices with ids
    0..n-1); `xla_options` (e.g. ``{"xla_cpu_multi_thread_eigen": False}``)
    override XLA's debug options for this executable only.

    The device assignment lists the devices' ids in mesh order (ids are not
    positions: on CPU a second process's devices start at 2048), so replica
    and partition ids are mesh positions in every process."""
    ids = np.arange(devices) if isinstance(devices, int) else np.array([d.id for d in devices])
    num_devices = len(ids)
    options = xla_client.CompileOptions()
    if xla_options:
        options.env_option_overrides = list(xla_options.items())
    build = options.executable_build_options
    if kind in ("gspmd", "shardy"):
        # shardy: a manual (per-device) program; XLA's partitioner leaves it
        # as it is.  `{manual}` is an mhlo.sharding, so the GSPMD path reads it.
        build.num_replicas, build.num_partitions = 1, num_devices
        build.use_spmd_partitioning = True
        build.use_shardy_partitioner = False
        assignment = ids.reshape(1, num_devices)
    elif kind == "explicit":
        # N replicas of one partition, over a global device assignment (as
        # pmap does), in one process or many (docs/IR.md, "Explicit mode").
        build.num_replicas, build.num_partitions = num_devices, 1
        build.use_spmd_partitioning = False
        assignment = ids.reshape(num_devices, 1)
    else:
        assert num_devices == 1, "an unpartitioned module runs on one device"
        build.num_replicas, build.num_partitions = 1, 1
        assignment = ids.reshape(1, 1)
    build.device_assignment = xla_client.DeviceAssignment.create(assignment)
    return options


def program_argument_shapes(module: ir.Module, kind: str, arguments: list) -> list[tuple[int, ...]]:
    """The per-device shape of each argument as XLA compiles the program --
    read from what XLA reads (the per-device types, or a gspmd module's
    ``mhlo.sharding`` tiles), not from the layout rules, so feeding checks
    the two against each other."""
    if kind == "none":
        return [tuple(s.shape) for s in arguments]
    fn = mir.entry_function(module)
    ftype = ir.FunctionType(ir.TypeAttr(fn.attributes["function_type"]).value)
    own = [tuple(ir.RankedTensorType(t).shape) for t in ftype.inputs]
    if kind in mir.PER_DEVICE:
        return own
    attrs = [ir.DictAttr(a) for a in ir.ArrayAttr(fn.attributes["arg_attrs"])]
    out = []
    for k, (shape, a) in enumerate(zip(own, attrs)):
        if "mhlo.sharding" not in a:
            raise MtfcError(f"argument #{k} of a gspmd module carries no mhlo.sharding")
        sharding = xla_client.HloSharding.from_string(ir.StringAttr(a["mhlo.sharding"]).value)
        if sharding.is_replicated() or not sharding.is_tiled():
            out.append(shape)
            continue
        tiles = list(sharding.tile_assignment_dimensions())[:len(shape)]
        out.append(tuple(-(-size // t) for size, t in zip(shape, tiles)))
    return out


class Program:
    """A module compiled for a mesh of devices, ready to run on host data."""

    def __init__(self, module: ir.Module, *, backend: str = "cpu", unsharded: bool = False,
                 xla_options: dict | None = None):
        self.arguments = mir.arguments(module)
        self.results = mir.results(module)
        fn = mir.entry_function(module)
        self.donates = "arg_attrs" in fn.attributes and any(
            mir.ALIAS in ir.DictAttr(a) for a in ir.ArrayAttr(fn.attributes["arg_attrs"]))
        kind = mir.partitioning(module)
        if unsharded:
            if kind in ("explicit", "shardy"):
                module = mir.reference_module(module)
            else:
                module = strip_shardings(module)
            kind = "none"
        self.kind = kind
        mesh = mir.module_mesh(module) if kind != "none" else Mesh(())
        self.mesh = mesh
        self.layouts = mir.module_layouts(module) if kind != "none" else mir.Layouts(Mesh(()), LayoutRules(), LayoutRules())
        self.rules = self.layouts.activations
        self.devices = rt_devices.devices(backend, mesh.size)  # the mesh, process-major (devices.py)
        self.local = rt_devices.addressable(self.devices)  # (mesh position, device) this process drives
        self.spans_processes = len(self.local) < len(self.devices)
        if not self.local:
            raise MtfcError(f"{'the unsharded program' if unsharded else 'the program'} has no device in this "
                            f"process (the unsharded program runs on process 0)")
        self.arg_layouts = [self.layouts.of_signature(s) for s in self.arguments]
        self.res_layouts = [self.layouts.of_signature(s) for s in self.results]
        self.program_shapes = program_argument_shapes(module, kind, self.arguments)
        what = "the unsharded program" if unsharded else f"the {kind} program"
        needs = self.memory_needs(fn)
        local = [dev for _, dev in self.local]  # each process checks the memory of its own devices
        memory_check.check_arrays(needs, local, what=what)
        text = mir.strip_partitioning_text(module) if kind == "none" else mir.program_text(module)
        client = self.devices[0].client
        start = time.perf_counter()
        try:
            self.executable = client.compile_and_load(
                text, xla_client.DeviceList(tuple(self.devices)), compile_options(kind, self.devices, xla_options)
            )
        except Exception as e:
            raise MtfcError(f"XLA could not compile the module: {str(e).strip().splitlines()[0]}") from None
        self.compile_seconds = time.perf_counter() - start
        self._handlers = None
        try:
            stats = self.executable.get_compiled_memory_stats()
        except Exception:  # a backend without memory statistics
            stats = None
        if stats is not None:
            memory_check.check_compiled(stats, needs, local, what=what)

    def memory_needs(self, fn: ir.Operation) -> list[memory_check.ArrayNeed]:
        """Each argument's and each result's bytes on one device and whole;
        a result aliased to an argument (``tf.aliasing_output``) reuses its buffer."""
        aliased = set()
        if "arg_attrs" in fn.attributes:
            for a in ir.ArrayAttr(fn.attributes["arg_attrs"]):
                a = ir.DictAttr(a)
                if mir.ALIAS in a:
                    aliased.add(ir.IntegerAttr(a[mir.ALIAS]).value)
        needs = []
        for kind, sigs, layouts in (("argument", self.arguments, self.arg_layouts),
                                    ("result", self.results, self.res_layouts)):
            for k, (sig, layout) in enumerate(zip(sigs, layouts)):
                if kind == "result" and k in aliased:
                    continue
                size = element_bytes(sig.dtype)
                needs.append(memory_check.ArrayNeed(
                    f"{kind} {sig.name!r}", tuple(layout.local_sizes), sig.dtype,
                    math.prod(layout.local_sizes) * size, math.prod(sig.shape) * size))
        return needs

    def check_device_arguments(self, args: list) -> None:
        """Every argument array has the dtype and global shape of its argument
        and per-device shards of the shape the compiled program takes.  (XLA
        does not check this with several devices: a wrong buffer crashes the
        process.)"""
        if len(args) != len(self.arguments):
            raise MtfcError(f"the program takes {len(self.arguments)} arguments, not {len(args)}")
        for sig, array in zip(self.arguments, args):
            want = np.dtype(mir.numpy_dtype(sig.dtype))
            if np.dtype(array.dtype) != want:
                raise MtfcError(f"argument {sig.name!r} is {np.dtype(array.dtype).name}, the module takes {sig.dtype}")
            if tuple(array.shape) != tuple(sig.shape):
                raise MtfcError(f"argument {sig.name!r} has shape {tuple(array.shape)}, the module takes {sig.shape}")
        for sig, array, takes in zip(self.arguments, args, self.program_shapes):
            local = tuple(array.sharding.shard_shape(tuple(array.shape)))
            if local != takes or len(array.sharding.device_set) != len(self.devices):
                raise MtfcError(f"argument {sig.name!r} is split into shards of shape {local} over "
                                f"{len(array.sharding.device_set)} device(s); the compiled program takes "
                                f"{takes} on each of {len(self.devices)}")

    @property
    def result_handlers(self) -> list:
        """One jaxlib result handler per result: the global ``jax.Array`` of
        the result's layout (``jax_sharding``) over the mesh, from this
        process's buffers.  Built once, on first use."""
        if self._handlers is None:
            import jax

            self._shardings = [jax_sharding(layout, self.devices) for layout in self.res_layouts]
            try:
                self._handlers = [
                    xla_client.array_result_handler(
                        jax.core.ShapedArray(tuple(sig.shape), np.dtype(mir.numpy_dtype(sig.dtype))),
                        sharding, committed=True, _skip_checks=True)
                    for sig, sharding in zip(self.results, self._shardings)]
            except (AttributeError, TypeError):  # a jaxlib without them: `execute` assembles in Python
                self._handlers = []
        return self._handlers

    def execute(self, args) -> list:
        """Run once on `args` (a sequence of global ``jax.Array``s, one per
        argument, as `feed` builds them or as an earlier `execute` returned
        them); each result as a global ``jax.Array`` (this process's shards;
        not waited for).  Host work: one PJRT launch and jaxlib's C++ result
        handlers -- nothing per array in Python (a jaxlib without
        ``array_result_handler``: the shards are assembled per result in Python).  The handlers skip jax's
        shard-order checks (the buffers come in the device assignment's order,
        which is the mesh order of the results' shardings); `check_outputs`
        verifies that once."""
        handlers = self.result_handlers
        results = self.executable.execute_sharded(args)
        if handlers or not self.results:
            return results.consume_with_handlers(handlers)
        import jax

        return [jax.make_array_from_single_device_arrays(tuple(sig.shape), sharding, shards)
                for sig, sharding, shards in zip(self.results, self._shardings,
                                                 results.disassemble_into_single_device_arrays())]

    def check_outputs(self, outputs: list) -> None:
        """Each output of `execute` holds, on each of this process's devices,
        a buffer of its layout's per-device shape that lives on the device its
        sharding names (run on a program's first outputs)."""
        for sig, layout, array in zip(self.results, self.res_layouts, outputs):
            for shard in array.addressable_shards:
                where = shard.data.devices()
                if where != {shard.device} or tuple(shard.data.shape) != tuple(layout.local_sizes):
                    raise MtfcError(f"result {sig.name!r}: the buffer for device {shard.device} has shape "
                                    f"{tuple(shard.data.shape)} on {sorted(map(str, where))}; its layout says "
                                    f"{tuple(layout.local_sizes)} on that device")

    def synthesize_inputs(self, seed: int) -> dict[str, np.ndarray]:
        return {s.name: synthesize(s, seed) for s in self.arguments}

    def feed(self, inputs: dict) -> list:
        """The argument arrays from `inputs` (name -> global ndarray or
        `HostSource`): this process's shards only, converted to each
        argument's dtype."""
        missing = [s.name for s in self.arguments if s.name not in inputs]
        if missing:
            raise MtfcError(f"no data for argument(s) {', '.join(missing)}")
        sources = []
        for sig in self.arguments:
            source = as_source(inputs[sig.name])
            if tuple(source.shape) != sig.shape:
                raise MtfcError(f"input {sig.name!r} has shape {tuple(source.shape)}, the module expects {sig.shape}")
            sources.append(source)
        return [shard_to_devices(source, layout, self.devices, mir.numpy_dtype(sig.dtype))
                for sig, source, layout in zip(self.arguments, sources, self.arg_layouts)]

    def gather(self, per_output: list[list]) -> dict[str, np.ndarray]:
        """The global outputs from each output's local shards (mesh order),
        on every process (a collective in a multi-process run)."""
        everything = all_shards(per_output, self.devices)
        return {sig.name: gather_from_shards(shards, layout, mir.numpy_dtype(sig.dtype))
                for sig, layout, shards in zip(self.results, self.res_layouts, everything)}

    def local_outputs(self, results) -> list[list]:
        """Each output's shards on this process's devices, in mesh order, from
        what ``execute_sharded`` returned."""
        position = {dev.id: d for d, dev in enumerate(self.devices)}
        return [sorted(shards, key=lambda a: position[next(iter(a.devices())).id])
                for shards in results.disassemble_into_single_device_arrays()]

    def run(self, inputs: dict, *, repeat: int = 1) -> RunResult:
        """Feed `inputs` (name -> global ndarray or `HostSource`; each process
        builds only its own devices' shards), run `repeat` times, gather the
        outputs (all processes of a job call this together)."""
        args = self.feed(inputs)
        self.check_device_arguments(args)
        times = []
        for i in range(max(repeat, 1)):
            if i and self.donates:
                args = self.feed(inputs)  # the previous run donated (reused) these buffers
            start = time.perf_counter()
            results = self.executable.execute_sharded(args)
            per_output = self.local_outputs(results)
            for shards in per_output:
                for shard in shards:
                    shard.block_until_ready()
            times.append(time.perf_counter() - start)
        return RunResult(self.gather(per_output), self.compile_seconds, float(np.median(times)))
