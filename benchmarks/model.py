"""The benchmark's transformer, twice: in mtfc's DSL (size-parametric, the
same layers as ``examples/transformer.py``) and in plain JAX (written here
from jax.numpy, independently of mtfc, with the same math and the same
AdamW), plus the layouts both are run under.

Parameter and argument names are the same in both (``params/block0/...``,
``opt/<param>/m``, ``tokens``), so one set of host arrays feeds both and the
benchmark can check that they compute the same numbers before it times them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# The example's optimizer (examples/transformer.py).
OPTIMIZER = "adamw:lr=0.01,b2=0.99,warmup=10,decay=cosine,steps=200,clip=1.0"
ADAMW = {"lr": 0.01, "b1": 0.9, "b2": 0.99, "eps": 1e-8, "wd": 0.01, "clip": 1.0,
         "warmup": 10, "steps": 200}
MESH = "rows:2,cols:4"


@dataclass(frozen=True)
class Size:
    """One transformer size (the example's dims, scaled)."""

    name: str
    layers: int
    batch: int
    length: int
    d_model: int
    heads: int
    d_kv: int
    d_ff: int
    vocab: int
    scan: bool = False  # the layers as one loop (mtf.layers.repeat / jax.lax.scan), parameters stacked

    def scanned(self, scan: bool = True) -> "Size":
        return Size(**{**asdict(self), "name": f"{self.name}{'-scan' if scan else ''}", "scan": scan})

    def with_layers(self, n: int) -> "Size":
        return Size(**{**asdict(self), "name": f"{self.name}-L{n}", "layers": n})

    def with_batch(self, b: int) -> "Size":
        return Size(**{**asdict(self), "batch": b})

    def matmul_flops(self, train: bool) -> float:
        """FLOPs of the model's matrix products per step (2·m·n·k each; the
        causal attention is computed whole, as both programs do); a train step
        is 3x the forward (each product has two gradient products).  The
        elementwise work is not counted (the usual MFU convention)."""
        b, l, d, h, k, f, v = self.batch, self.length, self.d_model, self.heads, self.d_kv, self.d_ff, self.vocab
        per_layer = (2 * b * l * d * h * k * 4      # q, k, v, output projections
                     + 2 * b * h * l * l * k * 2    # logits, weighted values
                     + 2 * b * l * d * f * 2)       # feed-forward in and out
        forward = self.layers * per_layer + 2 * b * l * d * v  # + the logits
        return float(forward * (3 if train else 1))


SIZES = {
    # the smallest that every layout splits (tests, warm-up)
    "tiny": Size("tiny", layers=1, batch=8, length=8, d_model=16, heads=8, d_kv=2, d_ff=32, vocab=16),
    # the example's dims, with 8 heads of 8 so that heads split 8 ways
    "small": Size("small", layers=2, batch=16, length=32, d_model=64, heads=8, d_kv=8, d_ff=256, vocab=64),
    "medium": Size("medium", layers=4, batch=16, length=64, d_model=256, heads=8, d_kv=32, d_ff=1024, vocab=512),
    "large": Size("large", layers=4, batch=16, length=64, d_model=512, heads=8, d_kv=64, d_ff=2048, vocab=1024),
    # for a GPU (`--backend gpu`): big enough to keep one busy
    "xl": Size("xl", layers=12, batch=32, length=512, d_model=1024, heads=16, d_kv=64, d_ff=4096, vocab=32768),
}


@dataclass(frozen=True)
class Layout:
    name: str
    layout: str
    param_layout: str | None = None
    mesh: str = MESH


LAYOUTS = {
    # one device, nothing split: the unsharded baseline
    "single": Layout("single", "", mesh="one:1"),
    "data": Layout("data", "batch:rows+cols"),
    # Megatron over all 8 devices, the vocabulary (embedding, logits) included
    "tensor": Layout("tensor", "heads:rows+cols,d_ff:rows+cols,vocab:rows+cols"),
    "fsdp": Layout("fsdp", "batch:rows+cols", "d_model:rows+cols"),
    # the example's default: data parallel over rows, Megatron over cols
    "mixed": Layout("mixed", "batch:rows,heads:cols,d_ff:cols"),
}


# ----------------------------------------------------------------- mtfc


def mtfc_model(size: Size):
    """(model function, inputs) for `mtfc.compiler.compile_function`: the
    layers of examples/transformer.py at `size`."""
    import mtfc as mtf

    batch, length = mtf.Dim("batch", size.batch), mtf.Dim("length", size.length)
    vocab, d_model = mtf.Dim("vocab", size.vocab), mtf.Dim("d_model", size.d_model)
    heads, d_kv, d_ff = mtf.Dim("heads", size.heads), mtf.Dim("d_kv", size.d_kv), mtf.Dim("d_ff", size.d_ff)
    inputs = {
        "tokens": mtf.Input([batch, length], "i32", mtf.init.randint(0, vocab.size)),
        "targets": mtf.Input([batch, length], "i32", mtf.init.randint(0, vocab.size)),
    }

    decoder = _example_decoder()

    def transformer(tokens, targets):
        return decoder(tokens, targets, vocab=vocab, d_model=d_model, heads=heads, d_kv=d_kv, d_ff=d_ff,
                       n_layers=size.layers, scan=size.scan)

    return transformer, inputs


def compile_mtfc(size: Size, layout: Layout, mode: str, *, train: bool, precision: str = "f32"):
    """The mtfc module of `size` under `layout`, through `mode`'s pipeline."""
    from mtfc.compiler import compile_function

    fn, inputs = mtfc_model(size)
    return compile_function(
        fn, inputs, mesh=layout.mesh, layout=layout.layout, param_layout=layout.param_layout, mode=mode,
        name="transformer", train=train, optimizer=OPTIMIZER if train else None,
        precision=precision if train else None,
    )


# ----------------------------------------------------------------- plain JAX


def jax_param_dims(size: Size) -> dict[str, tuple[str, ...]]:
    """Every parameter's name and dim names (the names mtfc gives them)."""
    dims = {"params/embedding/table": ("vocab", "d_model")}
    for i in range(1 if size.scan else size.layers):
        q = "params/blocks/" if size.scan else f"params/block{i}/"
        first = len(dims)
        dims.update({
            q + "ln_attention/scale": ("d_model",), q + "ln_attention/bias": ("d_model",),
            q + "attention/w_q": ("d_model", "heads", "d_kv"), q + "attention/w_k": ("d_model", "heads", "d_kv"),
            q + "attention/w_v": ("d_model", "heads", "d_kv"), q + "attention/w_o": ("heads", "d_kv", "d_model"),
            q + "ln_feed_forward/scale": ("d_model",), q + "ln_feed_forward/bias": ("d_model",),
            q + "feed_forward/wi/kernel": ("d_model", "d_ff"), q + "feed_forward/wi/bias": ("d_ff",),
            q + "feed_forward/wo/kernel": ("d_ff", "d_model"), q + "feed_forward/wo/bias": ("d_model",),
        })
        if size.scan:  # stacked along the layers (mtfc's names and dims for mtf.layers.repeat)
            for k in list(dims)[first:]:
                dims[k] = ("layers", *dims[k])
    dims.update({"params/ln_final/scale": ("d_model",), "params/ln_final/bias": ("d_model",),
                 "params/logits/kernel": ("d_model", "vocab")})
    return dims


def jax_loss(params: dict, tokens, targets, *, layers: int, dtype="float32", with_logits: bool = False,
             scan: bool = False):
    """The transformer's mean next-token cross-entropy, in jax.numpy; with
    `scan`, the layers are one `jax.lax.scan` over stacked parameters
    (``params/blocks/...``, layers first)."""
    import jax
    import jax.numpy as jnp

    p = {k: v.astype(dtype) for k, v in params.items()}

    def layer_norm(x, scale, bias):
        mean = x.mean(-1, keepdims=True)
        centered = x - mean
        var = (centered * centered).mean(-1, keepdims=True)
        return centered * jax.lax.rsqrt(var + 1e-6) * scale + bias

    def gelu(x):
        return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))

    x = jnp.take(p["params/embedding/table"], tokens, axis=0)  # [b, l, d]
    length = x.shape[1]
    causal = jnp.arange(length)[:, None] >= jnp.arange(length)[None, :]
    def block(x, p, q):
        h = layer_norm(x, p[q + "ln_attention/scale"], p[q + "ln_attention/bias"])
        qh = jnp.einsum("bld,dhk->blhk", h, p[q + "attention/w_q"])
        kh = jnp.einsum("bmd,dhk->bmhk", h, p[q + "attention/w_k"])
        vh = jnp.einsum("bmd,dhk->bmhk", h, p[q + "attention/w_v"])
        logits = jnp.einsum("blhk,bmhk->bhlm", qh, kh) * (1.0 / math.sqrt(qh.shape[-1]))
        logits = jnp.where(causal, logits, -1e9)
        logits = logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True))
        e = jnp.exp(logits)
        weights = e / e.sum(-1, keepdims=True)
        o = jnp.einsum("bhlm,bmhk->blhk", weights, vh)
        x = x + jnp.einsum("blhk,hkd->bld", o, p[q + "attention/w_o"])
        h = layer_norm(x, p[q + "ln_feed_forward/scale"], p[q + "ln_feed_forward/bias"])
        h = gelu(jnp.einsum("bld,df->blf", h, p[q + "feed_forward/wi/kernel"]) + p[q + "feed_forward/wi/bias"])
        return x + jnp.einsum("blf,fd->bld", h, p[q + "feed_forward/wo/kernel"]) + p[q + "feed_forward/wo/bias"]

    if scan:
        stacked = {k: v for k, v in p.items() if k.startswith("params/blocks/")}
        x, _ = jax.lax.scan(lambda x, layer: (block(x, layer, "params/blocks/"), None), x, stacked)
    else:
        for i in range(layers):
            x = block(x, p, f"params/block{i}/")
    x = layer_norm(x, p["params/ln_final/scale"], p["params/ln_final/bias"])
    logits = jnp.einsum("bld,dv->blv", x, p["params/logits/kernel"])
    peak = jax.lax.stop_gradient(logits.max(-1, keepdims=True))
    lse = jnp.log(jnp.exp(logits - peak).sum(-1)) + peak[..., 0]
    onehot = (targets[..., None] == jnp.arange(logits.shape[-1])).astype(logits.dtype)
    target_logit = (logits * onehot).sum(-1)
    loss = (lse - target_logit).mean().astype("float32")
    return (loss, logits) if with_logits else loss


def learning_rate_table(spec: dict = ADAMW) -> np.ndarray:
    """Linear warm-up then cosine decay, one entry per step (written from the
    formula, not taken from mtfc)."""
    steps, warmup = spec["steps"], spec["warmup"]
    t = np.arange(steps)
    warm = np.minimum(1.0, (t + 1) / warmup) if warmup else np.ones(steps)
    progress = np.maximum(0, t - warmup) / max(1, steps - warmup)
    return (spec["lr"] * warm * 0.5 * (1.0 + np.cos(np.pi * progress))).astype(np.float32)


def jax_train_step(size: Size, dtype="float32", spec: dict = ADAMW):
    """`step(params, m, v, step, tokens, targets) -> (loss, grad_norm, lr,
    params, m, v, step + 1)`: jax.grad of `jax_loss` and AdamW (global-norm
    clipping, bias correction, decoupled weight decay)."""
    import jax
    import jax.numpy as jnp

    table = learning_rate_table(spec)
    b1, b2, eps, wd, clip = spec["b1"], spec["b2"], spec["eps"], spec["wd"], spec["clip"]

    def step_fn(params, m, v, step, tokens, targets):
        loss, grads = jax.value_and_grad(jax_loss)(params, tokens, targets, layers=size.layers, dtype=dtype,
                                                   scan=size.scan)
        norm = jnp.sqrt(sum(jnp.sum(g * g) for g in grads.values()))
        scale = jnp.minimum(1.0, clip / (norm + 1e-6)) if clip > 0 else 1.0
        lr = jnp.asarray(table)[jnp.minimum(step, len(table) - 1)]
        t = step.astype(jnp.float32) + 1.0
        new_p, new_m, new_v = {}, {}, {}
        for k, p in params.items():
            g = grads[k] * scale
            new_m[k] = m[k] * b1 + g * (1 - b1)
            new_v[k] = v[k] * b2 + g * g * (1 - b2)
            m_hat = new_m[k] / (1.0 - jnp.power(b1, t))
            v_hat = new_v[k] / (1.0 - jnp.power(b2, t))
            update = m_hat / (jnp.sqrt(v_hat) + eps) + p * wd
            new_p[k] = p - lr * update
        return loss, norm, lr, new_p, new_m, new_v, step + 1

    return step_fn


def jax_forward(size: Size, dtype="float32"):
    """`forward(params, tokens, targets) -> (logits, loss)`."""

    def forward(params, tokens, targets):
        loss, logits = jax_loss(params, tokens, targets, layers=size.layers, dtype=dtype, with_logits=True,
                                scan=size.scan)
        return logits, loss

    return forward


def partition_spec(dims, layout: str):
    """The jax PartitionSpec of a value with `dims` under layout rules
    ``"batch:rows+cols,d_ff:cols"``."""
    from jax.sharding import PartitionSpec

    rules = {}
    for item in filter(None, (s.strip() for s in layout.replace(";", ",").split(","))):
        dim, _, axes = item.partition(":")
        rules[dim.strip()] = tuple(a.strip() for a in axes.split("+") if a.strip())
    entries = []
    for d in dims:
        axes = rules.get(d, ())
        entries.append(None if not axes else axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*entries)


def jax_mesh(devices, mesh: str):
    from jax.sharding import AxisType, Mesh

    axes = [(n.strip(), int(s)) for n, s in (a.split(":") for a in mesh.split(",") if a.strip())]
    shape = tuple(s for _, s in axes)
    grid = np.array(devices[: math.prod(shape)], dtype=object).reshape(shape)
    return Mesh(grid, tuple(n for n, _ in axes), axis_types=(AxisType.Auto,) * len(axes))


def _example_decoder():
    """`decoder` of examples/transformer.py: the benchmarked model is the example's."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "transformer.py")
    spec = importlib.util.spec_from_file_location("mtfc_example_transformer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decoder
