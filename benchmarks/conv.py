"""A stack of 2-D convolutions: mtfc explicit vs mtfc gspmd / shardy vs plain JAX.

    python -m benchmarks.conv                 # benchmarks/RESULTS.md's conv table (a few minutes on 2 cores)
    python -m benchmarks.conv --quick         # the small size, fewer repeats
    python -m benchmarks.conv --json benchmarks/results-conv.json

Three `mtf.layers.conv2d` layers, 3x3 kernels, ``SAME`` padding, bias and
relu, over x ``[batch, h, w, channels]``: ``channels -> f0`` (stride 1),
``f0 -> f1`` (stride 2: h and w halve) and ``f1 -> f2`` (dilation 2); the
spatial dims keep their names ``h``, ``w`` through the stride.  Forward: the
last activation ``y``; train step: loss = mean(y^2), one SGD step (lr 0.1,
no momentum).  The subjects compute the same thing from the same data on the
8-device mesh ``rows:2,cols:4``:

* ``mtfc explicit``, ``mtfc gspmd`` and ``mtfc shardy``: the model compiled
  by mtfc (a mode that refuses the model gets a "refused" row with its
  message).  Explicit exchanges halos by collective_permute; gspmd and
  shardy run a convolution whose spatial dims are split whole along them
  (`mtfc.passes.gspmd_conv`, shardy's `whole-convolution` entry: workarounds for
  XLA's and Shardy's wrong numbers), and their rows say how many
  convolutions of the program ran that way ("whole: n/m convs",
  `whole_convolutions`);
* ``jax``: the same model written with `jax.lax.conv_general_dilated`, jitted
  with `NamedSharding` in/out shardings from the same layout rules and
  `with_sharding_constraint` on every activation ``[batch, h, w, f_i]``
  (GSPMD-style annotations); XLA partitions the convolutions itself.

Layouts: **spatial** ``h:rows,w:cols``; **batch_spatial** ``batch:rows,h:cols``;
**spatial_features** ``h:rows,f0:cols,f2:cols`` (the first and last layers'
output features split, so the middle layer's input features are split and
summed: Megatron's alternation); **data** ``batch:rows+cols``.

The gate: before timing, every subject's outputs (forward: y; train: the loss
and the new parameters) must equal those of the same JAX model jitted on one
device, unsharded, within the f32 tolerance; the sharded ``jax`` subject is
gated too.  A mismatch exits 1 after the table.  Then, per subject
(`benchmarks.layer_bench`): the median step wall time (round-robin) and CPU
time, the collectives of the compiled executable's optimized HLO -- count,
collective_permute count and bus bytes (the halo), all_gather count and bus
bytes, total bus bytes; mtfc explicit's StableHLO figures are in the JSON --
XLA's per-device memory, and the ratios to ``jax``.
"""

from __future__ import annotations

import sys

OPTIMIZER = "sgd:lr=0.1,momentum=0.0"
LR = 0.1
# (stride, dilation) of the three 3x3 layers
LAYERS = ((1, 1), (2, 1), (1, 2))
SIZES = {
    "small": dict(batch=8, h=16, w=16, channels=4, features=8),
    "medium": dict(batch=8, h=64, w=64, channels=16, features=32),
}
LAYOUTS = {
    "spatial": "h:rows,w:cols",
    "batch_spatial": "batch:rows,h:cols",
    "spatial_features": "h:rows,f0:cols,f2:cols",
    "data": "batch:rows+cols",
}
MODES = ("explicit", "gspmd", "shardy")
KINDS = ("collective_permute", "all_gather")
X_DIMS = ("batch", "h", "w", "channels")


def _in_dim(i: int) -> str:
    return "channels" if i == 0 else f"f{i - 1}"


# ------------------------------------------------------------------ mtfc
def mtfc_model(size: dict, train: bool):
    """(model, inputs): the forward returns ``y``, the train step's model its ``loss``."""
    import mtfc as mtf

    x_dims = [mtf.Dim(d, size[d]) for d in X_DIMS]
    features = [mtf.Dim(f"f{i}", size["features"]) for i in range(len(LAYERS))]

    def model(x):
        y = x
        for i, (stride, dilation) in enumerate(LAYERS):
            y = mtf.layers.conv2d(y, features[i], (3, 3), strides=stride, padding="SAME", dilation=dilation,
                                  activation=mtf.relu, name=f"conv{i}")
        return {"loss": mtf.reduce_mean(mtf.square(y))} if train else {"y": y}

    return model, {"x": mtf.Input(x_dims)}


def whole_convolutions(module) -> tuple[int, int]:
    """(convolutions that gspmd or shardy mode runs whole along their spatial
    dims, all convolutions) of `module`.  gspmd (`mtfc.passes.gspmd_conv`,
    a global module): an operand or the result goes through a ``@Sharding``
    custom_call.  shardy (workaround `whole-convolution`; the module is the
    per-device program Shardy made): an operand is all_gathered (through
    reshapes and transposes) or the result is cut back to the block by a
    ``dynamic_slice``."""
    from jax.extend.mlir import ir

    from mtfc import ir as mir

    def producer(value):
        while not isinstance(value.owner, ir.Block):
            op = value.owner.operation
            if op.name not in ("stablehlo.reshape", "stablehlo.transpose"):
                return op
            value = op.operands[0]
        return None

    def marks_whole(op) -> bool:
        if op is None:
            return False
        op = op.operation
        if op.name in ("stablehlo.all_gather", "stablehlo.dynamic_slice"):
            return True
        return (op.name == "stablehlo.custom_call"
                and ir.StringAttr(op.attributes["call_target_name"]).value == "Sharding")

    whole = total = 0
    for fn in mir.functions(module).values():
        for op in mir.body_ops(fn):
            if op.name != "stablehlo.convolution":
                continue
            total += 1
            near = [producer(v) for v in op.operands] + [u.owner for u in op.results[0].uses]
            whole += any(marks_whole(o) for o in near)
    return whole, total


def mtfc_subject(size: dict, layout: str, mode: str, train: bool):
    """`benchmarks.layer_bench.mtfc_subject` of the model; gspmd's and
    shardy's notes say how many convolutions run whole (module docstring)."""
    from benchmarks.layer_bench import Refused
    from benchmarks.layer_bench import mtfc_subject as subject

    model, inputs = mtfc_model(size, train)
    s = subject(model, inputs, layout=layout, mode=mode, train=train, optimizer=OPTIMIZER, name="convs")
    if mode in ("gspmd", "shardy") and not isinstance(s, Refused):
        whole, total = whole_convolutions(s.module)
        s.note = f"whole: {whole}/{total} convs" if whole else ""
    return s


# ------------------------------------------------------------------ plain JAX
def param_dims() -> dict[str, tuple[str, ...]]:
    dims = {}
    for i in range(len(LAYERS)):
        dims[f"params/conv{i}/kernel"] = ("h_kernel", "w_kernel", _in_dim(i), f"f{i}")
        dims[f"params/conv{i}/bias"] = (f"f{i}",)
    return dims


def jax_convs(params: dict, x, constrain):
    """The three layers with `jax.lax.conv_general_dilated` (NHWC, HWIO)."""
    import jax

    y = x
    for i, (stride, dilation) in enumerate(LAYERS):
        y = jax.lax.conv_general_dilated(y, params[f"params/conv{i}/kernel"], window_strides=(stride, stride),
                                         padding="SAME", rhs_dilation=(dilation, dilation),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        y = constrain(jax.nn.relu(y + params[f"params/conv{i}/bias"]), ("batch", "h", "w", f"f{i}"))
    return y


def jax_subject(size: dict, layout: str, train: bool, mesh: str | None = None):
    """The plain-JAX model under `layout` (on `mesh`, default the benchmark's)."""
    from benchmarks.layer_bench import MESH, JaxLayerSubject, sgd_train_step

    def loss_fn(params, x, constrain):
        return (jax_convs(params, x, constrain) ** 2).mean(), ()

    def forward(params, x, constrain):
        return (jax_convs(params, x, constrain),)

    sizes = {**{d: size[d] for d in X_DIMS}, "h_kernel": 3, "w_kernel": 3,
             **{f"f{i}": size["features"] for i in range(len(LAYERS))}}
    results = (("loss", ()),) if train else (("y", ("batch", "h", "w", f"f{len(LAYERS) - 1}")),)
    return JaxLayerSubject(sgd_train_step(loss_fn, LR) if train else forward, layout, param_dims=param_dims(),
                           dim_sizes=sizes, x_dims=X_DIMS, results=results, train=train, mesh=mesh or MESH,
                           name="jax" if mesh is None else "jax unsharded")


# ------------------------------------------------------------------ the run
def measure(size_name: str, layout_name: str, train: bool, repeats: int, warmup: int = 2) -> list[dict]:
    from benchmarks.layer_bench import measure as measure_rows

    size, layout = SIZES[size_name], LAYOUTS[layout_name]
    subjects = [mtfc_subject(size, layout, mode, train) for mode in MODES] + [jax_subject(size, layout, train)]
    reference = jax_subject(size, "", train, mesh="one:1")
    return measure_rows(subjects, size=size_name, layout=layout_name, rules=layout, train=train, repeats=repeats,
                        warmup=warmup, kinds=KINDS, reference=reference)


def _stablehlo_permutes(r: dict) -> str:
    """mtfc explicit's collective_permutes in its own StableHLO (before XLA's
    optimizations, which may merge equal ones); ``-`` for the other subjects."""
    record = r["collectives_detail"].get("StableHLO")
    if record is None:
        return "-"
    p = record["by_kind"].get("collective_permute", {"count": 0, "bus_bytes": 0})
    return f"{p['count']} ({p['bus_bytes']:,.0f})"


def _columns():
    from benchmarks.layer_bench import gate_text, key_columns, ratio_text

    return key_columns() + [
        ("ms/step", lambda r: f"{r['step_ms']:.2f}"),
        ("xJAX", lambda r: ratio_text(r, "step_ms")), ("cpu ms", lambda r: f"{r['cpu_ms']:.2f}"),
        ("xJAX", lambda r: ratio_text(r, "cpu_ms")), ("collectives", lambda r: str(r["collectives"])),
        ("permutes", lambda r: str(r["collective_permute"])),
        ("permute bytes", lambda r: f"{r['collective_permute_bus_bytes']:,.0f}"),
        ("StableHLO permutes (bytes)", _stablehlo_permutes), ("all_gathers", lambda r: str(r["all_gather"])),
        ("all_gather bytes", lambda r: f"{r['all_gather_bus_bytes']:,.0f}"),
        ("bus bytes", lambda r: f"{r['bus_bytes']:,.0f}"), ("xJAX", lambda r: ratio_text(r, "bus_bytes")),
        ("peak memory", lambda r: f"{r['peak_bytes']:,}"), ("xJAX", lambda r: ratio_text(r, "peak_bytes")),
        ("gate", gate_text), ("note", lambda r: r["note"])]


def table(rows: list[dict]) -> str:
    from benchmarks import layer_bench

    return layer_bench.table(rows, _columns())


def main(argv=None) -> int:
    from benchmarks import layer_bench

    return layer_bench.main(argv, prog="python -m benchmarks.conv", doc=__doc__, sizes=SIZES, layouts=LAYOUTS,
                            run=measure, columns=_columns())


if __name__ == "__main__":
    sys.exit(main())
