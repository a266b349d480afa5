"""Optimizers on named-dim tensors: SGD with momentum, Adam/AdamW, Adafactor.

An optimizer is built from a spec string, so a model file and the command
line say it the same way::

    "adamw:lr=0.003,b1=0.9,b2=0.99,eps=1e-8,wd=0.01,clip=1.0,warmup=10,decay=cosine,steps=200"
    "sgd:lr=0.1,momentum=0.9"
    "adafactor:lr=0.01,decay_rate=0.8,clip_rms=1.0"

Common keys: ``lr`` (peak learning rate), ``clip`` (global-norm gradient
clipping, 0 = off), ``warmup`` (linear warm-up steps), ``decay``
(``constant``, ``linear``, ``cosine`` or ``rsqrt``) over ``steps``.

`Optimizer.apply` reads gradients and writes new parameters and slot values
as named-dim tensors; slots are graph variables with role ``optimizer_state``
named ``opt/<param name>/<slot>``, so the layout rules (the parameter layout)
shard them like the parameters they belong to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mtfc.errors import MtfcError
from mtfc.frontend import ops
from mtfc.frontend.dims import Dim, Shape
from mtfc.frontend.graph import Tensor, current_graph

SCHEDULE_DIM = "schedule_step"

_COMMON = {"lr": 1e-3, "clip": 0.0, "warmup": 0, "decay": "constant", "steps": 1000}
_DEFAULTS = {
    "sgd": {"momentum": 0.9},
    "adam": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "wd": 0.0},
    "adamw": {"b1": 0.9, "b2": 0.999, "eps": 1e-8, "wd": 0.01},
    "adafactor": {"decay_rate": 0.8, "eps1": 1e-30, "clip_rms": 1.0},
}


@dataclass
class OptimizerSpec:
    name: str
    settings: dict = field(default_factory=dict)

    @staticmethod
    def parse(text: str) -> "OptimizerSpec":
        name, _, rest = text.strip().partition(":")
        name = name.strip().lower()
        if name not in _DEFAULTS:
            raise MtfcError(f"unknown optimizer {name!r} in {text!r} (choose from {', '.join(_DEFAULTS)})")
        settings = dict(_COMMON, **_DEFAULTS[name])
        for item in filter(None, (i.strip() for i in rest.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or key not in settings:
                known = ", ".join(settings)
                raise MtfcError(f"optimizer {name}: bad setting {item!r} (known: {known})")
            default = settings[key]
            try:
                settings[key] = value.strip() if isinstance(default, str) else type(default)(float(value))
            except ValueError:
                raise MtfcError(f"optimizer {name}: {key}={value.strip()!r} is not a number") from None
        if settings["decay"] not in ("constant", "linear", "cosine", "rsqrt"):
            raise MtfcError(f"optimizer {name}: decay={settings['decay']!r} (choose constant, linear, cosine, rsqrt)")
        return OptimizerSpec(name, settings)

    def __str__(self) -> str:
        return self.name + ":" + ",".join(f"{k}={v:g}" if not isinstance(v, str) else f"{k}={v}"
                                          for k, v in self.settings.items())


def learning_rates(settings: dict) -> np.ndarray:
    """The learning rate of steps 0 .. steps-1 (warm-up, then decay); later
    steps keep the last value."""
    steps = max(int(settings["steps"]), 1)
    lr, warmup, decay = settings["lr"], int(settings["warmup"]), settings["decay"]
    out = np.empty(steps, dtype=np.float64)
    for t in range(steps):
        scale = min(1.0, (t + 1) / warmup) if warmup else 1.0
        progress = max(0, t - warmup) / max(1, steps - warmup)
        if decay == "linear":
            scale *= 1.0 - progress
        elif decay == "cosine":
            scale *= 0.5 * (1.0 + math.cos(math.pi * progress))
        elif decay == "rsqrt":
            scale *= 1.0 / math.sqrt(max(1, t + 1 - warmup))
        out[t] = lr * scale
    return out.astype(np.float32)


def _slot(param_name: str, slot: str, shape: Shape, init: str = "constant:0") -> Tensor:
    graph = current_graph()
    return graph.add_variable(f"opt/{param_name}/{slot}", "optimizer_state", shape, "f32", init)


def _scalar(value: float) -> Tensor:
    """An f32 constant: the optimizer computes in f32 whatever the model's compute dtype."""
    return ops.constant(float(value), dtype="f32")


def global_norm(grads: list[Tensor]) -> Tensor:
    """sqrt of the sum of squares of every gradient.  All the per-gradient sums
    are recorded before they are added, so that their all_reduces (when the
    gradients are split) are independent and fuse into one."""
    sums = [ops.reduce_sum(ops.square(g)) for g in grads]
    total = sums[0]
    for s in sums[1:]:
        total = total + s
    return ops.sqrt(total)


def _message(error: MtfcError) -> str:
    """An error's message without its ``file:line: `` prefix."""
    text = str(error)
    prefix = f"{error.where}: " if error.where else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


class Optimizer:
    """Applies one update: ``apply(params, grads, step)`` with `params` a dict
    name -> tensor, returns (new params, new slots, metrics), all by name."""

    def __init__(self, spec: OptimizerSpec):
        self.spec = spec
        self.s = spec.settings

    def learning_rate(self, step: Tensor) -> Tensor:
        table = learning_rates(self.s)
        dim = Dim(SCHEDULE_DIM, len(table))
        index = ops.minimum(step, ops.constant(len(table) - 1, dtype="i32"))
        return ops.gather(ops.constant(table, Shape([dim]), "f32"), index, dim)

    def apply(self, params: dict[str, Tensor], grads: dict[str, Tensor], step: Tensor,
              stacked: dict[str, tuple[str, ...]] | None = None):
        """`stacked`: per parameter, the names of its stacking dims (a scanned
        loop's ``layers``, a pipeline's ``stages``: `graph.Variable.stacked`).
        Each position along them is a parameter of its own: statistics an
        optimizer keeps per parameter (Adafactor's factored moments and its
        update clipping) are kept per position, so a stacked model updates
        exactly as its unstacked twin does."""
        stacked = stacked or {}
        lr = self.learning_rate(step)
        norm = global_norm(list(grads.values()))
        if self.s["clip"] > 0:
            scale = ops.minimum(_scalar(1.0), _scalar(self.s["clip"]) / (norm + _scalar(1e-6)))
            grads = {k: g * scale for k, g in grads.items()}
        t = ops.cast(step, "f32") + _scalar(1.0)  # 1-based step for bias correction
        new_params, slots = {}, {}
        for name, p in params.items():
            assert p.dtype == grads[name].dtype == "f32", (name, p.dtype, grads[name].dtype)
            try:
                new_params[name], slot_values = self.update(name, p, grads[name], lr, t, stacked.get(name, ()))
            except MtfcError as e:
                raise MtfcError(f"{self.spec.name} update of parameter {name!r}: {_message(e)}", where=e.where) from None
            slots.update({f"opt/{name}/{k}": v for k, v in slot_values.items()})
        return new_params, slots, {"grad_norm": norm, "learning_rate": lr}

    def update(self, name, p, g, lr, t, stacked: tuple[str, ...] = ()):
        """One parameter's update: (new value, slots by name).  `stacked`: see `apply`."""
        raise NotImplementedError


class SGD(Optimizer):
    """``buf = momentum * buf + g; p -= lr * buf``."""

    def update(self, name, p, g, lr, t, stacked=()):
        if self.s["momentum"] == 0:
            return p - lr * g, {}
        buf = _slot(name, "momentum", p.shape) * _scalar(self.s["momentum"]) + g
        return p - lr * buf, {"momentum": buf}


class Adam(Optimizer):
    """Adam with bias correction; AdamW's decoupled weight decay ``wd``."""

    def update(self, name, p, g, lr, t, stacked=()):
        b1, b2, eps, wd = self.s["b1"], self.s["b2"], self.s["eps"], self.s["wd"]
        m = _slot(name, "m", p.shape) * _scalar(b1) + g * _scalar(1 - b1)
        v = _slot(name, "v", p.shape) * _scalar(b2) + ops.square(g) * _scalar(1 - b2)
        m_hat = m / (_scalar(1.0) - ops.power(_scalar(b1), t))
        v_hat = v / (_scalar(1.0) - ops.power(_scalar(b2), t))
        update = m_hat / (ops.sqrt(v_hat) + _scalar(eps))
        if wd:
            update = update + p * _scalar(wd)
        return p - lr * update, {"m": m, "v": v}


class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern, as in Mesh TF and T5), without momentum:
    the second moment of a parameter with two or more dims is kept factored
    over its two largest dims (a row and a column statistic); the decay is
    ``1 - t^-decay_rate``; updates are clipped to RMS ``clip_rms``.  Stacking
    dims (`apply`'s `stacked`) are never factored and the RMS is taken per
    position along them: each layer of a scanned stack is updated as the
    same layer unrolled."""

    def update(self, name, p, g, lr, t, stacked=()):
        decay = _scalar(1.0) - ops.power(t, _scalar(-self.s["decay_rate"]))
        g2 = ops.square(g) + _scalar(self.s["eps1"])
        own = [d for d in p.shape if d.name not in stacked]  # the dims of one position's parameter
        dims = sorted(own, key=lambda d: -d.size)
        if len(dims) >= 2 and dims[1].size > 1:
            a, b = dims[0], dims[1]
            vr = _slot(name, "vr", p.shape.without([b])) * decay + ops.reduce_mean(g2, b) * (_scalar(1.0) - decay)
            vc = _slot(name, "vc", p.shape.without([a])) * decay + ops.reduce_mean(g2, a) * (_scalar(1.0) - decay)
            v = vr * vc / ops.reduce_mean(vr, a)
            slots = {"vr": vr, "vc": vc}
        else:
            v = _slot(name, "v", p.shape) * decay + g2 * (_scalar(1.0) - decay)
            slots = {"v": v}
        update = g * ops.rsqrt(v)
        rms = ops.sqrt(ops.reduce_mean(ops.square(update), own)) if own else ops.abs(update)
        update = update / ops.maximum(_scalar(1.0), rms / _scalar(self.s["clip_rms"]))
        return p - lr * update, slots


_CLASSES = {"sgd": SGD, "adam": Adam, "adamw": Adam, "adafactor": Adafactor}


def make_optimizer(spec: str | OptimizerSpec) -> Optimizer:
    spec = OptimizerSpec.parse(spec) if isinstance(spec, str) else spec
    return _CLASSES[spec.name](spec)
