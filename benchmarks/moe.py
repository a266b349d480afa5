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

import math
import sys

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
    from benchmarks.layer_bench import mtfc_subject as subject

    model, inputs = mtfc_model(size)
    return subject(model, inputs, layout=layout, mode=mode, train=train, optimizer=OPTIMIZER, name="moe")


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


def jax_subject(size: dict, layout: str, train: bool):
    """The plain-JAX layer (`jax_moe`), jitted with `NamedSharding`s from the layout rules."""
    from benchmarks.layer_bench import JaxLayerSubject, sgd_train_step

    def loss_fn(params, x, constrain):
        y, aux = jax_moe(params, x, size, TRAIN_FACTOR, constrain)
        return ((x + y) ** 2).mean() + AUX_COEF * aux, (aux,)

    def forward(params, x, constrain):
        return jax_moe(params, x, size, EVAL_FACTOR, constrain)

    x_dims = ("batch", "length", "d_model")
    results = (("loss", ()), ("aux_loss", ())) if train else (("y", x_dims), ("aux_loss", ()))
    sizes = {"batch": size["batch"], "length": size["length"], "d_model": size["d_model"],
             "experts": size["experts"], "experts_unsplit": size["experts"], "expert_ff": size["d_ff"]}
    return JaxLayerSubject(sgd_train_step(loss_fn, LR) if train else forward, layout, param_dims=PARAM_DIMS,
                           dim_sizes=sizes, x_dims=x_dims, results=results, train=train)


# ------------------------------------------------------------------ the run
def measure(size_name: str, layout_name: str, train: bool, repeats: int, warmup: int = 2) -> list[dict]:
    from benchmarks.layer_bench import measure as measure_rows

    size, layout = SIZES[size_name], LAYOUTS[layout_name]
    subjects = [mtfc_subject(size, layout, "explicit", train), mtfc_subject(size, layout, "gspmd", train),
                jax_subject(size, layout, train)]
    return measure_rows(subjects, size=size_name, layout=layout_name, rules=layout, train=train, repeats=repeats,
                        warmup=warmup, kinds=("all_to_all",))


def _columns():
    from benchmarks.layer_bench import gate_text, key_columns

    return key_columns() + [
        ("ms/step", lambda r: f"{r['step_ms']:.2f}"),
        ("cpu ms", lambda r: f"{r['cpu_ms']:.2f}"), ("collectives", lambda r: str(r["collectives"])),
        ("all_to_all", lambda r: str(r["all_to_all"])),
        ("a2a bus bytes", lambda r: f"{r['all_to_all_bus_bytes']:,}"),
        ("bus bytes", lambda r: f"{r['bus_bytes']:,}"), ("peak memory", lambda r: f"{r['peak_bytes']:,}"),
        ("gate", gate_text)]


def table(rows: list[dict]) -> str:
    from benchmarks import layer_bench

    return layer_bench.table(rows, _columns())


def main(argv=None) -> int:
    from benchmarks import layer_bench

    return layer_bench.main(argv, prog="python -m benchmarks.moe", doc=__doc__, sizes=SIZES, layouts=LAYOUTS,
                            run=measure, columns=_columns())


if __name__ == "__main__":
    sys.exit(main())
