"""One benchmark subject each: build it (timed), feed it host data, run a
step, read back its outputs, its collectives and its memory.

* `MtfcSubject`: mtfc's compiler (`compile_mtfc`: trace, lower, the mode's
  passes) and runtime (`mtfc.runtime.execute.Program`: PJRT compile; its
  executable run with `Program.execute`, state results fed back as the next
  arguments as they are, as `mtfc run`'s training loop does);
* `JaxSubject`: the plain-JAX model (`benchmarks.model`) under
  ``jax.jit(in_shardings=, out_shardings=, donate_argnums=)`` with
  `NamedSharding`s derived from the same layout rules.

Both are timed the same way: the wall time of one call until every output is
ready (`step` = `dispatch`, then `wait`), and the host time of `dispatch`
alone (launch, result handling, next arguments in hand; not waiting).
"""

from __future__ import annotations

import resource
import time

import numpy as np

from benchmarks import model as bm
from mtfc import ir as mir
from mtfc.mesh import Mesh
from mtfc.passes import comm_analysis

STATE_ROLES = ("parameter", "optimizer_state")


def host_data(size: bm.Size, train: bool, seed: int = 0) -> dict[str, np.ndarray]:
    """Every argument's host array, synthesized by mtfc from its initializer
    (seeded by name, independent of the layout), without compiling anything."""
    from mtfc.runtime.synthetic import synthesize

    module = bm.compile_mtfc(size, bm.LAYOUTS["single"], "none", train=train)
    return {sig.name: synthesize(sig, seed) for sig in mir.arguments(module)}


def timed_step(subject) -> dict:
    """Run one step of `subject`; its wall time, and the process's CPU time
    (user, system: every thread) and minor page faults over the step.  The
    subjects run one at a time, so the process's figures are the step's.
    ``host``: the wall time until `dispatch` returns (the step launched, its
    results in hand as arrays and the next step's arguments built), before
    waiting for the devices; None for a subject without `dispatch`."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if hasattr(subject, "dispatch"):
        subject.dispatch()
        host = time.perf_counter() - start
        subject.wait()
    else:  # a subject with only `step` (the one-layer benchmarks' JAX subjects): no host figure
        subject.step()
        host = None
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"wall": wall, "host": host, "user": after.ru_utime - before.ru_utime,
            "sys": after.ru_stime - before.ru_stime, "faults": after.ru_minflt - before.ru_minflt}


def memory_stats(stats) -> dict:
    """XLA's per-device memory statistics of a compiled executable, in bytes;
    `peak_bytes` = arguments + outputs - aliased + temporaries."""
    if stats is None:
        return {}
    out = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "alias_bytes": int(stats.alias_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
    }
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    return out


def collectives_record(collectives, source: str) -> dict:
    summary = comm_analysis.summarize(collectives)
    return {"source": source, "count": summary["total"]["count"], "bus_bytes": summary["total"]["bus_bytes"],
            "by_kind": summary["by_kind"]}


class MtfcSubject:
    """mtfc in `mode` (``explicit`` or ``gspmd``)."""

    def __init__(self, size: bm.Size, layout: bm.Layout, mode: str, *, train: bool, precision: str = "f32",
                 backend: str = "cpu", xla_options: dict | None = None):
        start = time.perf_counter()
        module = bm.compile_mtfc(size, layout, mode, train=train, precision=precision)
        self._setup(module, mode, train, time.perf_counter() - start, backend, xla_options)

    @classmethod
    def from_module(cls, module, mode: str, *, train: bool, lower_seconds: float, backend: str = "cpu",
                    xla_options: dict | None = None) -> "MtfcSubject":
        """A subject of any compiled mtfc module (the one-layer benchmarks'
        models, `benchmarks.layer_bench`); `lower_seconds`: what compiling it took."""
        subject = cls.__new__(cls)
        subject._setup(module, mode, train, lower_seconds, backend, xla_options)
        return subject

    def _setup(self, module, mode: str, train: bool, lower_seconds: float, backend: str,
               xla_options: dict | None) -> None:
        from mtfc.runtime.execute import Program

        self.name = f"mtfc {mode}"
        self.train = train
        self.module = module
        self.lower_seconds = lower_seconds
        start = time.perf_counter()
        self.program = Program(self.module, backend=backend, xla_options=xla_options)
        self.compile_seconds = time.perf_counter() - start  # the module printed, then XLA
        self.xla_seconds = self.program.compile_seconds  # XLA alone
        mesh = mir.module_mesh(self.module)
        hlo = self.program.executable.hlo_modules()[0].to_string()
        self.collectives = {"compiled HLO": collectives_record(comm_analysis.hlo_collectives(hlo, mesh), "compiled HLO")}
        if mode == "explicit":
            self.collectives["StableHLO"] = collectives_record(comm_analysis.module_collectives(self.module), "StableHLO")
        try:
            self.memory = memory_stats(self.program.executable.get_compiled_memory_stats())
        except Exception:  # not every backend reports them
            self.memory = {}
        p = self.program
        results = {r.name: k for k, r in enumerate(p.results)}
        self.feedback = [(i, results[s.name]) for i, s in enumerate(p.arguments)
                         if train and s.role in STATE_ROLES and s.name in results]
        self.args = None
        self.last = None

    def synthesize(self, seed: int) -> dict[str, np.ndarray]:
        return self.program.synthesize_inputs(seed)

    def load(self, host: dict[str, np.ndarray]) -> None:
        from mtfc.runtime.host_data import shard_to_devices
        from mtfc.runtime.train_step import picker

        p = self.program
        self.args = []
        for sig, layout in zip(p.arguments, p.arg_layouts):
            array = np.asarray(host[sig.name]).astype(mir.numpy_dtype(sig.dtype))
            self.args.append(shard_to_devices(array, layout, p.devices))
        # next arguments = (results + the arguments not fed back)[picked], in C (as `TrainStep` does)
        fed = dict(self.feedback)
        n_results = len(p.results)
        self._kept = tuple(a for i, a in enumerate(self.args) if i not in fed)
        kept_at = {i: n for n, i in enumerate(i for i in range(len(self.args)) if i not in fed)}
        self._next_args = picker([fed[i] if i in fed else n_results + kept_at[i] for i in range(len(self.args))])
        self.last = None
        self._checked = False

    def dispatch(self) -> None:
        """Launch one execution; its results become `last` (global arrays) and
        the state results the next arguments, without waiting."""
        p = self.program
        outs = p.execute(self.args)
        if not self._checked:
            p.check_outputs(outs)
            self._checked = True
        self.last = outs
        if self.feedback:
            self.args = self._next_args(tuple(outs) + self._kept)

    def wait(self) -> None:
        import jax

        jax.block_until_ready(self.last)

    def step(self) -> None:
        """One execution, waited for; state results become the next arguments."""
        self.dispatch()
        self.wait()

    def outputs(self) -> dict[str, np.ndarray]:
        from mtfc.runtime.host_data import gather_from_shards, local_shards

        p = self.program
        return {sig.name: gather_from_shards(local_shards(array, p.devices), layout,
                                             np.float64 if sig.dtype != "i32" else np.int64)
                for sig, layout, array in zip(p.results, p.res_layouts, self.last)}


class JaxSubject:
    """The plain-JAX transformer, jitted with `NamedSharding`s."""

    name = "jax"

    def __init__(self, size: bm.Size, layout: bm.Layout, *, train: bool, precision: str = "f32",
                 backend: str = "cpu", xla_options: dict | None = None):
        import jax
        from jax.sharding import NamedSharding

        self.train = train
        self.size = size
        devices = jax.devices(backend)
        self.mesh = bm.jax_mesh(devices, layout.mesh)
        act = layout.layout
        par = layout.param_layout if layout.param_layout is not None else layout.layout
        self.param_dims = bm.jax_param_dims(size)

        def sharding(dims, rules):
            return NamedSharding(self.mesh, bm.partition_spec(dims, rules))

        self.param_sharding = {k: sharding(d, par) for k, d in self.param_dims.items()}
        self.token_sharding = sharding(("batch", "length"), act)
        self.scalar_sharding = sharding((), act)
        # mtfc's precision applies to train steps only (forward modules are f32): the same here
        dtype = "bfloat16" if precision == "bf16" and train else "float32"
        f32 = np.float32
        p_abs = {k: jax.ShapeDtypeStruct(self._shape(d), f32, sharding=self.param_sharding[k])
                 for k, d in self.param_dims.items()}
        tok_abs = jax.ShapeDtypeStruct((size.batch, size.length), np.int32, sharding=self.token_sharding)
        if train:
            fn = bm.jax_train_step(size, dtype)
            rep = self.scalar_sharding
            in_sh = (self.param_sharding, self.param_sharding, self.param_sharding, rep, self.token_sharding,
                     self.token_sharding)
            out_sh = (rep, rep, rep, self.param_sharding, self.param_sharding, self.param_sharding, rep)
            jitted = jax.jit(fn, in_shardings=in_sh, out_shardings=out_sh, donate_argnums=(0, 1, 2, 3))
            abstract = (p_abs, p_abs, p_abs, jax.ShapeDtypeStruct((), np.int32, sharding=rep), tok_abs, tok_abs)
        else:
            fn = bm.jax_forward(size, dtype)
            logits = sharding(("batch", "length", "vocab"), act)
            jitted = jax.jit(fn, in_shardings=(self.param_sharding, self.token_sharding, self.token_sharding),
                             out_shardings=(logits, self.scalar_sharding))
            abstract = (p_abs, tok_abs, tok_abs)
        start = time.perf_counter()
        lowered = jitted.lower(*abstract)
        self.lower_seconds = time.perf_counter() - start
        start = time.perf_counter()
        self.compiled = lowered.compile(compiler_options=xla_options) if xla_options else lowered.compile()
        self.compile_seconds = self.xla_seconds = time.perf_counter() - start
        hlo = self.compiled.as_text()
        mtfc_mesh = Mesh.parse(layout.mesh)
        self.collectives = {"compiled HLO": collectives_record(comm_analysis.hlo_collectives(hlo, mtfc_mesh),
                                                               "compiled HLO")}
        try:
            self.memory = memory_stats(self.compiled.memory_analysis())
        except Exception:
            self.memory = {}
        self.args = None
        self.last = None

    def _shape(self, dims):
        return tuple(getattr(self.size, d) for d in dims)

    def load(self, host: dict[str, np.ndarray]) -> None:
        import jax

        params = {k: jax.device_put(np.asarray(host[k], np.float32), self.param_sharding[k]) for k in self.param_dims}
        tokens = jax.device_put(np.asarray(host["tokens"], np.int32), self.token_sharding)
        targets = jax.device_put(np.asarray(host["targets"], np.int32), self.token_sharding)
        if self.train:
            m = {k: jax.device_put(np.asarray(host[f"opt/{k}/m"], np.float32), self.param_sharding[k])
                 for k in self.param_dims}
            v = {k: jax.device_put(np.asarray(host[f"opt/{k}/v"], np.float32), self.param_sharding[k])
                 for k in self.param_dims}
            step = jax.device_put(np.asarray(host["opt/step"], np.int32), self.scalar_sharding)
            self.args = [params, m, v, step, tokens, targets]
        else:
            self.args = [params, tokens, targets]
        self.last = None

    def dispatch(self) -> None:
        out = self.compiled(*self.args)
        self.last = out
        if self.train:
            self.args[:4] = out[3:7]

    def wait(self) -> None:
        import jax

        jax.block_until_ready(self.last)

    def step(self) -> None:
        self.dispatch()
        self.wait()

    def outputs(self) -> dict[str, np.ndarray]:
        def host(x):
            return np.asarray(x, np.float64 if np.asarray(x).dtype.kind == "f" else np.int64)

        if not self.train:
            logits, loss = self.last
            return {"logits": host(logits), "loss": host(loss)}
        loss, norm, lr, p, m, v, step = self.last
        out = {"loss": host(loss), "grad_norm": host(norm), "learning_rate": host(lr), "opt/step": host(step)}
        for k in self.param_dims:
            out[k] = host(p[k])
            out[f"opt/{k}/m"] = host(m[k])
            out[f"opt/{k}/v"] = host(v[k])
        return out
