"""A mixture-of-experts layer: mtfc explicit vs mtfc gspmd vs plain JAX.

    python -m benchmarks.moe                 # benchmarks/RESULTS.md's MoE table (~2-3 minutes on 2 cores)
    python -m benchmarks.moe --quick         # the small size, fewer repeats
    python -m benchmarks.moe --json benchmarks/results-moe.json

One `mtf.layers.moe` layer (top-2 of E experts, capacity factors 1.25 train
/ 2.0 eval) on an input x ``[batch, length, d_model]``; forward: ``y,
aux_loss``; train step: loss = mean((x + y)^2) + 0.01 aux_loss, one SGD
step (lr 0.1, no momentum).  Three subjects compute the same thing from the
same data on the 8-device mesh ``rows:2,cols:4``:

* ``mtfc explicit`` and ``mtfc gspmd``: the layer compiled by mtfc;
* ``jax``: the same layer written in jax.numpy (GShard's einsums), jitted
  with `NamedSharding` in/out shardings from the same layout rules and
  `with_sharding_constraint` -- GShard's annotations -- on the groups
  ``[G, S, D]``, the dispatch and combine masks ``[G, S, E, C]`` and the
  combined output (groups split), and on the dispatched tokens and the
  experts' outputs ``[E, G, C, D]`` (experts split); without them XLA
  chooses those layouts itself.

Before timing, each subject's outputs (forward: y and aux_loss; train: the
loss and the new parameters) must equal JAX's within the f32 tolerance (the
gate; a mismatch exits 1 after the table).  Measured per subject, as
`benchmarks.compare` does: the median step wall time (round-robin), CPU
time per step, the collectives of the compiled executable's optimized HLO
(count, all_to_all count and bus bytes, total bus bytes; mtfc explicit's
StableHLO figures too) and XLA's per-device memory (peak = arguments +
outputs - aliased + temporaries).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np

MESH = "rows:2,cols:4"
OPTIMIZER = "sgd:lr=0.1,momentum=0.0"
LR, AUX_COEF, TRAIN_FACTOR, EVAL_FACTOR = 0.1, 0.01, 1.25, 2.0
SIZES = {
    "small": dict(batch=16, length=32, d_model=64, experts=4, d_ff=128, group=64),
    "medium": dict(batch=32, length=128, d_model=256, experts=8, d_ff=1024, group=256),
}
LAYOUTS = {
    "expert": "batch:rows,experts:rows",
    "data_expert": "batch:rows+cols,batch_unsplit:rows,experts:cols",
    "expert_tensor": "batch:rows,experts:rows,expert_ff:cols",
}
P = "params/moe/"


# ------------------------------------------------------------------ mtfc
def mtfc_model(size: dict):
    import mtfc as mtf

    dims = {k: mtf.Dim(k, size[k]) for k in ("batch", "length", "d_model", "experts")}
    expert_ff = mtf.Dim("expert_ff", size["d_ff"])

    def model(x):
        y, aux = mtf.layers.moe(x, io_dim=dims["d_model"], hidden_dim=expert_ff, experts_dim=dims["experts"],
                                group_size=size["group"], gating="top2", capacity_factor_train=TRAIN_FACTOR,
                                capacity_factor_eval=EVAL_FACTOR)
        return {"y": y, "aux_loss": aux, "loss": mtf.reduce_mean(mtf.square(x + y)) + AUX_COEF * aux}

    return model, {"x": mtf.Input([dims["batch"], dims["length"], dims["d_model"]])}


def mtfc_subject(size: dict, layout: str, mode: str, train: bool):
    """A `benchmarks.runners.MtfcSubject` for the MoE layer's module."""
    from benchmarks.runners import STATE_ROLES, MtfcSubject, collectives_record, memory_stats
    from mtfc import ir as mir
    from mtfc.compiler import compile_function
    from mtfc.passes import comm_analysis
    from mtfc.runtime.execute import Program

    subject = MtfcSubject.__new__(MtfcSubject)
    subject.name, subject.train = f"mtfc {mode}", train
    model, inputs = mtfc_model(size)
    start = time.perf_counter()
    subject.module = compile_function(model, inputs, mesh=MESH, layout=layout, mode=mode, train=train,
                                      optimizer=OPTIMIZER if train else None, name="moe")
    subject.lower_seconds = time.perf_counter() - start
    subject.program = p = Program(subject.module)
    subject.xla_seconds = p.compile_seconds
    hlo = p.executable.hlo_modules()[0].to_string()
    mesh = mir.module_mesh(subject.module)
    subject.collectives = {"compiled HLO": collectives_record(comm_analysis.hlo_collectives(hlo, mesh), "compiled HLO")}
    if mode == "explicit":
        subject.collectives["StableHLO"] = collectives_record(comm_analysis.module_collectives(subject.module),
                                                              "StableHLO")
    subject.memory = memory_stats(p.executable.get_compiled_memory_stats())
    results = {r.name: k for k, r in enumerate(p.results)}
    subject.feedback = [(i, results[s.name]) for i, s in enumerate(p.arguments)
                        if train and s.role in STATE_ROLES and s.name in results]
    subject.args = subject.last = None
    return subject


# ------------------------------------------------------------------ plain JAX
def jax_moe(params, x, size, factor, constrain):
    """GShard's top-2 MoE layer in jax.numpy: (y, aux_loss)."""
    import jax
    import jax.numpy as jnp

    e, s = size["experts"], size["group"]
    cap = min(s, math.ceil(s * factor / e))
    groups = constrain(x.reshape(-1, s, x.shape[-1]), ("batch", "group", "d_model"))
    probs = jax.nn.softmax(jnp.einsum("gsd,de->gse", groups, params[P + "gate"]), -1)
    i1 = jnp.argmax(probs, -1)
    m1 = jax.nn.one_hot(i1, e, dtype=probs.dtype)
    i2 = jnp.argmax(probs * (1.0 - m1), -1)
    m2 = jax.nn.one_hot(i2, e, dtype=probs.dtype)
    g1, g2 = jnp.sum(probs * m1, -1), jnp.sum(probs * m2, -1)
    g1, g2 = g1 / (g1 + g2 + 1e-9), g2 / (g1 + g2 + 1e-9)
    aux = jnp.mean(m1.mean(1) * probs.mean(1)) * e * e
    pos1 = (jnp.cumsum(m1, 1) - m1) * m1
    m1 = m1 * (pos1 < cap)
    pos2 = (jnp.cumsum(m2, 1) - m2 + m1.sum(1, keepdims=True)) * m2
    m2 = m2 * (pos2 < cap)
    slot1, slot2 = pos1.sum(-1).astype(jnp.int32), pos2.sum(-1).astype(jnp.int32)
    d1 = m1[..., None] * jax.nn.one_hot(slot1, cap)[:, :, None, :]
    d2 = m2[..., None] * jax.nn.one_hot(slot2, cap)[:, :, None, :]
    mask_dims = ("batch", "group", "experts_unsplit", "c")
    dispatch = constrain(jax.lax.stop_gradient(d1 + d2), mask_dims)  # [g, s, e, c]
    combine = constrain(d1 * g1[..., None, None] + d2 * g2[..., None, None], mask_dims)
    expert_in = constrain(jnp.einsum("gsd,gsec->egcd", groups, dispatch), ("experts", "batch_unsplit", "c", "d_model"))
    h = jax.nn.relu(jnp.einsum("egcd,edh->egch", expert_in, params[P + "wi"]))
    expert_out = constrain(jnp.einsum("egch,ehd->egcd", h, params[P + "wo"]), ("experts", "batch_unsplit", "c", "d_model"))
    y = constrain(jnp.einsum("egcd,gsec->gsd", expert_out, combine), ("batch", "group", "d_model"))
    return y.reshape(x.shape), aux


PARAM_DIMS = {P + "gate": ("d_model", "experts_unsplit"), P + "wi": ("experts", "d_model", "expert_ff"),
              P + "wo": ("experts", "expert_ff", "d_model")}


class JaxMoe:
    """The plain-JAX layer, jitted with `NamedSharding`s from the layout rules."""

    name = "jax"

    def __init__(self, size: dict, layout: str, train: bool):
        import jax
        import jax.numpy as jnp
        from jax.sharding import NamedSharding

        from benchmarks import model as bm
        from benchmarks.runners import collectives_record, memory_stats
        from mtfc.mesh import Mesh
        from mtfc.passes import comm_analysis

        self.train = train
        mesh = bm.jax_mesh(jax.devices("cpu"), MESH)

        def sharding(dims):
            return NamedSharding(mesh, bm.partition_spec(dims, layout))

        def constrain(value, dims):
            return jax.lax.with_sharding_constraint(value, sharding(dims))

        self.param_sharding = {k: sharding(d) for k, d in PARAM_DIMS.items()}
        self.x_sharding = sharding(("batch", "length", "d_model"))
        rep = sharding(())
        if train:
            def step(params, x):
                def loss_fn(p):
                    y, aux = jax_moe(p, x, size, TRAIN_FACTOR, constrain)
                    return jnp.mean((x + y) ** 2) + AUX_COEF * aux, aux
                (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
                return loss, aux, {k: params[k] - LR * grads[k] for k in params}
            self.jitted = jax.jit(step, in_shardings=(self.param_sharding, self.x_sharding),
                                  out_shardings=(rep, rep, self.param_sharding), donate_argnums=(0,))
        else:
            def forward(params, x):
                return jax_moe(params, x, size, EVAL_FACTOR, constrain)
            self.jitted = jax.jit(forward, in_shardings=(self.param_sharding, self.x_sharding),
                                  out_shardings=(self.x_sharding, rep))
        shapes = {"batch": size["batch"], "length": size["length"], "d_model": size["d_model"],
                  "experts": size["experts"], "experts_unsplit": size["experts"], "expert_ff": size["d_ff"]}
        p_abs = {k: jax.ShapeDtypeStruct(tuple(shapes[d] for d in dims), np.float32, sharding=self.param_sharding[k])
                 for k, dims in PARAM_DIMS.items()}
        x_abs = jax.ShapeDtypeStruct((size["batch"], size["length"], size["d_model"]), np.float32,
                                     sharding=self.x_sharding)
        start = time.perf_counter()
        lowered = self.jitted.lower(p_abs, x_abs)
        self.lower_seconds = time.perf_counter() - start
        start = time.perf_counter()
        self.compiled = lowered.compile()
        self.xla_seconds = time.perf_counter() - start
        hlo = self.compiled.as_text()
        self.collectives = {"compiled HLO": collectives_record(comm_analysis.hlo_collectives(hlo, Mesh.parse(MESH)),
                                                               "compiled HLO")}
        self.memory = memory_stats(self.compiled.memory_analysis())
        self.args = self.last = None

    def load(self, host):
        import jax

        self.args = [{k: jax.device_put(np.asarray(host[k], np.float32), self.param_sharding[k]) for k in PARAM_DIMS},
                     jax.device_put(np.asarray(host["x"], np.float32), self.x_sharding)]

    def step(self):
        import jax

        out = self.compiled(*self.args)
        jax.block_until_ready(out)
        self.last = out
        if self.train:
            self.args[0] = out[2]

    def outputs(self):
        if not self.train:
            y, aux = self.last
            return {"y": np.asarray(y, np.float64), "aux_loss": np.asarray(aux, np.float64)}
        loss, aux, params = self.last
        return {"loss": np.asarray(loss, np.float64), "aux_loss": np.asarray(aux, np.float64),
                **{k: np.asarray(v, np.float64) for k, v in params.items()}}


# ------------------------------------------------------------------ the run
def gate(subject, reference: dict) -> float:
    """The largest normwise relative error of `subject`'s outputs against JAX's."""
    from mtfc.runtime.check import relative_error

    got = subject.outputs()
    return max(relative_error(np.asarray(got[k]), np.asarray(v)) for k, v in reference.items())


def measure(size_name: str, layout_name: str, train: bool, repeats: int, warmup: int) -> list[dict]:
    from benchmarks.runners import timed_step
    from mtfc.runtime.check import TOLERANCE

    size, layout = SIZES[size_name], LAYOUTS[layout_name]
    subjects = [mtfc_subject(size, layout, "explicit", train), mtfc_subject(size, layout, "gspmd", train),
                JaxMoe(size, layout, train)]
    host = subjects[0].synthesize(0)
    for s in subjects:
        s.load(host)
        s.step()
    reference = subjects[2].outputs()
    errors = [gate(s, reference) for s in subjects]
    for s in subjects:
        s.load(host)
        for _ in range(warmup):
            s.step()
    times = {s.name: [] for s in subjects}
    for _ in range(repeats):
        for s in subjects:
            times[s.name].append(timed_step(s))
    rows = []
    for s, error in zip(subjects, errors):
        hlo = s.collectives["compiled HLO"]
        a2a = hlo["by_kind"].get("all_to_all", {"count": 0, "bus_bytes": 0})
        row = {
            "size": size_name, "layout": layout_name, "rules": layout, "step": "train" if train else "forward",
            "subject": s.name, "gate_error": error, "gate_ok": error <= TOLERANCE["f32"],
            "step_ms": 1e3 * statistics.median(t["wall"] for t in times[s.name]),
            "cpu_ms": 1e3 * statistics.median(t["user"] + t["sys"] for t in times[s.name]),
            "collectives": hlo["count"], "all_to_all": a2a["count"], "all_to_all_bus_bytes": a2a["bus_bytes"],
            "bus_bytes": hlo["bus_bytes"], "peak_bytes": s.memory.get("peak_bytes"),
            "lower_s": s.lower_seconds, "xla_s": s.xla_seconds, "collectives_detail": s.collectives,
        }
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = ("| size | layout | step | subject | ms/step | cpu ms | collectives | all_to_all | a2a bus bytes "
            "| bus bytes | peak memory | gate |")
    lines = [head, "| " + " | ".join("---" for _ in head.strip("|").split("|")) + " |"]
    for r in rows:
        lines.append(f"| {r['size']} | {r['layout']} | {r['step']} | {r['subject']} | {r['step_ms']:.2f} "
                     f"| {r['cpu_ms']:.2f} | {r['collectives']} | {r['all_to_all']} | {r['all_to_all_bus_bytes']:,} "
                     f"| {r['bus_bytes']:,} | {r['peak_bytes']:,} | {'ok' if r['gate_ok'] else 'FAIL'} "
                     f"({r['gate_error']:.1e}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.moe", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small size, 5 repeats")
    ap.add_argument("--sizes", help=f"comma-separated ({', '.join(SIZES)})")
    ap.add_argument("--layouts", help=f"comma-separated ({', '.join(LAYOUTS)})")
    ap.add_argument("--repeats", type=int)
    ap.add_argument("--json", default=None, help="write the rows here")
    args = ap.parse_args(argv)
    import jax

    jax.config.update("jax_num_cpu_devices", 8)
    sizes = args.sizes.split(",") if args.sizes else (["small"] if args.quick else list(SIZES))
    layouts = args.layouts.split(",") if args.layouts else list(LAYOUTS)
    repeats = args.repeats or (5 if args.quick else 15)
    rows = []
    for size in sizes:
        for layout in layouts:
            for train in (False, True):
                rows.extend(measure(size, layout, train, repeats, warmup=2))
                print("\n".join(table(rows[-3:]).splitlines()[2:]), flush=True)
    print()
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"mesh": MESH, "rows": rows}, f, indent=1)
    return 0 if all(r["gate_ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
