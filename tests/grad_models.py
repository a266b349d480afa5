"""Random differentiable models for the gradient property tests
(tests/test_properties.py): a registry of node kinds and a builder that
draws a DAG of them.

Each node kind (`NodeKind`, in `KINDS`) has three parts:

* ``plan``  -- the dims it needs: picks its operands among the model's
  values (or makes new inputs / parameters with the dims it needs) and draws
  its own parameters; None when the model has nothing that fits;
* ``mtf``   -- the mtfc builder: the node's DSL *source* expression (the
  model is compiled from source text, so a failing example prints a
  self-contained model);
* ``ref``   -- the jnp reference builder: the node's value from its
  operands' values in jax.numpy / jax.lax, written independently of mtfc.

The builder records, for every node, its source line and its reference
function; `GradModel.reference` replays the references on host data (in
float64), so that ``jax.value_and_grad`` of it gives the expected loss and
gradients.  The model's loss is ``sum_i reduce_sum(t_i * c_i)`` over the
model's sinks and some other nodes (``c_i`` a random cotangent input of its
own, so the gradient with respect to ``c_i`` is ``t_i`` itself: forward
values are checked too) plus ``0.7 * s`` for each scalar sink ``s``.

Ties: values can be exactly 0 or equal (relu, pad, max of two relus), so
the references take mtfc's documented gradients at ties: `mtf.relu`'s is 0
at exactly 0 (as ``jax.nn.relu``), `mtf.maximum` / `mtf.minimum` split a
tie's gradient in halves (as ``jnp.maximum`` / ``jnp.minimum``).

Adding a node kind: write its ``plan_*`` (and a ``ref``), add a `NodeKind`
to `KINDS`.  Convolution and pooling: `WINDOW_KINDS` below (conv2d,
max_pool, avg_pool: jnp references with ``jax.lax.conv_general_dilated`` and
``jax.lax.reduce_window``), drawn by their own property test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import strategies as st

import mtfc as mtf
from moe_reference import dense_moe

ENABLE_WINDOW_KINDS = True  # conv2d / max_pool / avg_pool node kinds (WINDOW_KINDS)

POOL = ("b", "s", "d", "h")
SIZES = (4, 8, 2, 6)  # hypothesis leans towards the first
MAX_ELEMENTS = 512  # per value
MAX_RANK = 4
MAX_ABS = 1e3  # a model whose reference exceeds this anywhere is not drawn
LOSS_SCALAR = 0.7  # weight of a scalar sink in the loss




# ====================================================================== values


@dataclass
class Value:
    """A value of the model: its source variable, dims (name, size) in order,
    dtype ("f32" or "i32"), and whether it is an input / parameter (a leaf)."""

    var: str
    dims: tuple[tuple[str, int], ...]
    dtype: str = "f32"
    leaf: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.dims)


@dataclass
class Plan:
    """A node to add: its operands, dims, kind-specific parameters, and `extra` (name, dims)
    pairs -- tensors inside the node (MoE parameters, groups) that the
    layout drawer should know of.  (Every dim's `mtf.Dim` is defined at the
    top of the model's source.)"""

    operands: list[Value]
    dims: tuple[tuple[str, int], ...]
    params: dict = field(default_factory=dict)
    extra: list[tuple[str, tuple]] = field(default_factory=list)
    commit: Callable | None = None  # run once the node is added (the data it brings)


@dataclass(frozen=True)
class NodeKind:
    name: str
    weight: int
    plan: Callable  # (GradModel) -> Plan | None: the dims it needs
    mtf: Callable  # (Plan, operand vars) -> DSL source expression
    ref: Callable  # (Plan, *operand arrays) -> jnp array (the plan's dims, in order)
    api: tuple[str, ...] = ()  # the mtf functions it needs (mtfc may not have them yet)

    def available(self) -> bool:
        return all(hasattr(mtf, name) for name in self.api)


def dim_var(name: str, size: int) -> str:
    return f"{name}_{size}"


def shape_src(dims) -> str:
    return "[" + ", ".join(dim_var(n, s) for n, s in dims) + "]"


def union_dims(*dim_lists):
    """Ordered union by name; None when a name has two sizes."""
    out: dict[str, int] = {}
    for dims in dim_lists:
        for n, s in dims:
            if out.setdefault(n, s) != s:
                return None
    return tuple(out.items())


def ok_size(dims) -> bool:
    return dims is not None and len(dims) <= MAX_RANK and math.prod(s for _, s in dims) <= MAX_ELEMENTS


def jbcast(v, dims, target):
    """`v` (with `dims`) transposed and broadcast to the `target` dims."""
    names = [n for n, _ in dims]
    order = [names.index(n) for n, _ in target if n in names]
    v = jnp.transpose(v, order) if order else v
    v = jnp.reshape(v, [s if n in names else 1 for n, s in target])
    return jnp.broadcast_to(v, [s for _, s in target])


def einsum_spec(operands, out) -> str:
    """The einsum subscripts of (value, dims) pairs to the `out` dims, a letter per dim name."""
    letters: dict[str, str] = {}
    for _, dims in operands:
        for n, _ in dims:
            letters.setdefault(n, chr(ord("a") + len(letters)))
    spec = ",".join("".join(letters[n] for n, _ in dims) for _, dims in operands)
    return spec + "->" + "".join(letters[n] for n, _ in out)


def jeinsum(operands, out):
    """jnp.einsum of (value, dims) pairs to the `out` dims."""
    return jnp.einsum(einsum_spec(operands, out), *[v for v, _ in operands])


def axis(v: Value, name: str) -> int:
    return v.names.index(name)


def relu_ref(x):
    return jax.nn.relu(x)  # gradient 0 at 0, as mtf.relu (see the module docstring)


# ====================================================================== kinds: elementwise

BINARY = {  # kind -> (source, reference)
    "add": ("{a} + {b}", jnp.add),
    "subtract": ("mtf.subtract({a}, {b})", jnp.subtract),
    "multiply": ("{a} * {b}", jnp.multiply),
    "divide": ("{a} / (1.0 + mtf.square({b}))", lambda a, b: a / (1.0 + b * b)),
    "maximum": ("mtf.maximum({a}, {b})", jnp.maximum),
    "minimum": ("mtf.minimum({a}, {b})", jnp.minimum),
}


def plan_binary(m: "GradModel"):
    a = m.pick()
    b = m.pick(lambda v: v is not a and ok_size(union_dims(a.dims, v.dims))) or a
    return Plan([a, b], union_dims(a.dims, b.dims), {"op": m.choice(sorted(BINARY))})


def ref_binary(p: Plan, a, b):
    x, y = p.operands
    return BINARY[p.params["op"]][1](jbcast(a, x.dims, p.dims), jbcast(b, y.dims, p.dims))


UNARY = {  # kind -> (source, reference)
    "tanh": ("mtf.tanh({a})", jnp.tanh),
    "sigmoid": ("mtf.sigmoid({a})", jax.nn.sigmoid),
    "relu": ("mtf.relu({a})", relu_ref),
    "square": ("mtf.square({a})", jnp.square),
    "gelu": ("mtf.gelu({a})", lambda x: jax.nn.gelu(x, approximate=True)),
    "exp_tanh": ("mtf.exp(mtf.tanh({a}))", lambda x: jnp.exp(jnp.tanh(x))),
    "log1p_sq": ("mtf.log(1.0 + mtf.square({a}))", lambda x: jnp.log(1.0 + x * x)),
    "rsqrt": ("mtf.rsqrt(mtf.square({a}) + 1.0)", lambda x: jax.lax.rsqrt(x * x + 1.0)),
    "negative": ("-{a}", jnp.negative),
    "scale": ("{a} * 0.5", lambda x: x * 0.5),
    "rsub": ("2.0 - {a}", lambda x: 2.0 - x),
    "max_const": ("mtf.maximum({a}, 0.25)", lambda x: jnp.maximum(x, 0.25)),
}


def plan_unary(m):
    a = m.pick()
    return Plan([a], a.dims, {"op": m.choice(sorted(UNARY))})


# ====================================================================== kinds: contractions, reductions


def plan_einsum(m):
    ops = [m.pick()]
    for _ in range(m.choice([1, 0, 2]) if m.coin(8) else 0):
        nxt = m.pick(lambda v: union_dims(*[o.dims for o in ops], v.dims) is not None)
        if nxt is None:
            break
        ops.append(nxt)
    if len(ops) == 1:
        nxt = m.pick(lambda v: v is not ops[0] and union_dims(ops[0].dims, v.dims) is not None)
        if nxt is not None:
            ops.append(nxt)
    dims = union_dims(*[o.dims for o in ops])
    if dims is None or math.prod(s for _, s in dims) > 8 * MAX_ELEMENTS:
        return None
    out = tuple((n, dict(dims)[n]) for n in m.subset([n for n, _ in dims], 0, MAX_RANK))
    m.hot.update(n for n, _ in dims if n not in dict(out))
    return Plan(ops, out)


def ref_einsum(p: Plan, *arrays):
    return jeinsum([(a, o.dims) for a, o in zip(arrays, p.operands)], p.dims)


def plan_reduce(m):
    a = m.pick(lambda v: v.dims)
    if a is None:
        return None
    reduced = m.subset(a.names, 1)
    m.hot.update(reduced)
    op = m.choice(["sum", "mean", "logsumexp"])
    return Plan([a], tuple(d for d in a.dims if d[0] not in reduced), {"op": op, "reduced": reduced})


def ref_reduce(p: Plan, a):
    axes = tuple(axis(p.operands[0], n) for n in p.params["reduced"])
    fn = {"sum": jnp.sum, "mean": jnp.mean, "logsumexp": jax.nn.logsumexp}[p.params["op"]]
    return fn(a, axis=axes)


def plan_softmax(m):
    a = m.pick(lambda v: v.dims)
    if a is None:
        return None
    n = m.choice(a.names)
    m.hot.add(n)
    return Plan([a], a.dims, {"dim": n, "log": m.coin(4)})


def ref_softmax(p: Plan, a):
    fn = jax.nn.log_softmax if p.params["log"] else jax.nn.softmax
    return fn(a, axis=axis(p.operands[0], p.params["dim"]))


def plan_cumsum(m):
    a = m.pick(lambda v: v.dims)
    if a is None:
        return None
    n = m.choice(a.names)
    m.hot.add(n)
    return Plan([a], a.dims, {"dim": n, "exclusive": m.coin(4)})


def ref_cumsum(p: Plan, a):
    c = jnp.cumsum(a, axis=axis(p.operands[0], p.params["dim"]))
    return c - a if p.params["exclusive"] else c


# ====================================================================== kinds: moving data


def plan_transpose(m):
    a = m.pick(lambda v: len(v.dims) > 1)
    if a is None:
        return None
    perm = list(m.draw(st.permutations(range(len(a.dims)))))
    return Plan([a], tuple(a.dims[i] for i in perm), {"perm": perm})


def plan_rename(m):
    a = m.pick(lambda v: v.dims)
    if a is None:
        return None
    n, new = m.choice(a.names), m.fresh_name()
    m.hot.update([n, new])
    return Plan([a], tuple((new if k == n else k, s) for k, s in a.dims), {"dim": n, "new": new})


def plan_slice(m):
    a = m.pick(lambda v: any(s >= 2 for _, s in v.dims))
    if a is None:
        return None
    n = m.choice([k for k, s in a.dims if s >= 2])
    size = dict(a.dims)[n]
    begin = m.draw(st.integers(0, size - 1))
    length = m.draw(st.integers(1, size - begin))
    m.hot.add(n)
    return Plan([a], tuple((k, length if k == n else s) for k, s in a.dims), {"dim": n, "begin": begin, "len": length})


def ref_slice(p: Plan, a):
    i = axis(p.operands[0], p.params["dim"])
    return jax.lax.slice_in_dim(a, p.params["begin"], p.params["begin"] + p.params["len"], axis=i)


def plan_pad(m):
    a = m.pick(lambda v: v.dims)
    if a is None:
        return None
    n = m.choice(a.names)
    size = dict(a.dims)[n]
    before, after = m.draw(st.integers(0, size)), m.draw(st.integers(0, size))
    dims = tuple((k, s + before + after if k == n else s) for k, s in a.dims)
    if not ok_size(dims):
        return None
    m.hot.add(n)
    return Plan([a], dims, {"dim": n, "widths": (before, after), "value": m.choice([0.0, -1.0, 2.5])})


def ref_pad(p: Plan, a):
    i = axis(p.operands[0], p.params["dim"])
    widths = [p.params["widths"] if k == i else (0, 0) for k in range(a.ndim)]
    return jnp.pad(a, widths, constant_values=p.params["value"])


def plan_shift(m):
    a = m.pick(lambda v: v.dims)
    if a is None:
        return None
    n = m.choice(a.names)
    size = dict(a.dims)[n]
    m.hot.add(n)
    return Plan([a], a.dims, {"dim": n, "offset": m.draw(st.integers(-size, size)), "wrap": m.coin(4)})


def ref_shift(p: Plan, a):
    """mtf.shift's documented meaning: towards higher indices, zeros (or the
    wrapped elements) in the vacated positions."""
    i, offset = axis(p.operands[0], p.params["dim"]), p.params["offset"]
    if p.params["wrap"]:
        return jnp.roll(a, offset, axis=i)
    n = a.shape[i]
    if abs(offset) >= n:
        return jnp.zeros_like(a)
    zeros = jnp.zeros_like(jax.lax.slice_in_dim(a, 0, abs(offset), axis=i))
    if offset >= 0:
        return jnp.concatenate([zeros, jax.lax.slice_in_dim(a, 0, n - offset, axis=i)], axis=i)
    return jnp.concatenate([jax.lax.slice_in_dim(a, -offset, n, axis=i), zeros], axis=i)


def plan_concat(m):
    a = m.pick(lambda v: v.dims)
    if a is None:
        return None
    n = m.choice(a.names)
    b = m.pick(lambda v: v.names == a.names and all(s == dict(a.dims)[k] for k, s in v.dims if k != n)) or a
    dims = tuple((k, s + dict(b.dims)[n] if k == n else s) for k, s in a.dims)
    if not ok_size(dims):
        return None
    m.hot.add(n)
    return Plan([a, b], dims, {"dim": n})


def plan_gather(m):
    table = m.pick(lambda v: v.dims)
    if table is None:
        return None
    n = m.choice(table.names)
    rest = [d for d in table.dims if d[0] != n]
    idx_dims = m.random_dims(1, 2, exclude={k for k, _ in rest} | {n})
    if not idx_dims:
        return None
    dims = tuple(idx_dims) + tuple(rest)
    if not ok_size(dims) or union_dims(dims) is None:
        return None
    idx = m.new_input(idx_dims, "i32", high=dict(table.dims)[n])
    m.hot.add(n)
    return Plan([table, idx], dims, {"dim": n})


def ref_gather(p: Plan, table, idx):
    i, k = axis(p.operands[0], p.params["dim"]), idx.ndim
    return jnp.moveaxis(jnp.take(table, idx, axis=i), list(range(i, i + k)), list(range(k)))


def plan_causal(m):
    a = m.pick(lambda v: len(v.dims) >= 2)
    if a is None:
        return None
    n, k = m.subset(a.names, 2, 2)
    m.hot.update([n, k])
    other = m.pick(lambda v: v is not a and union_dims(a.dims, v.dims) == a.dims and set(v.names) <= set(a.names))
    return Plan([a] + ([other] if other is not None and m.coin(5) else []), a.dims, {"dims": (n, k)})


def mtf_causal(p: Plan, vars_):
    (n, k), sizes = p.params["dims"], dict(p.dims)
    mask = f"mtf.less_equal(mtf.range_({dim_var(n, sizes[n])}), mtf.range_({dim_var(k, sizes[k])}))"
    return f"mtf.where({mask}, {vars_[0]}, {vars_[1] if len(vars_) > 1 else '-3.0'})"


def ref_causal(p: Plan, a, b=None):
    n, k = p.params["dims"]
    mask = jbcast(jnp.arange(dict(p.dims)[n])[:, None] <= jnp.arange(dict(p.dims)[k])[None, :],
                  ((n, 0), (k, 0)), p.dims)
    other = -3.0 if b is None else jbcast(b, p.operands[1].dims, p.dims)
    return jnp.where(mask, a, other)


def plan_param(m):
    dims = tuple(m.random_dims(1, 3))
    m.new_param(dims)
    return None  # a leaf: no node of its own


# ====================================================================== kinds: mixture of experts


def plan_moe(m):
    """`mtf.layers.moe` on a value with >= 2 dims: io its last dim, the others
    the tokens (the first one the batch: the groups take its name), a group
    size dividing the tokens; experts and hidden dims of its own."""
    x = m.pick(lambda v: len(v.dims) >= 2 and "group" not in v.names)
    if x is None:
        x = m.new_input(m.random_dims(2, 3))
        if len(x.dims) < 2:
            return None
    io = x.dims[-1]
    tokens = [d for d in x.dims if d != io]
    count = math.prod(s for _, s in tokens)
    # mostly several groups (layouts split them), sometimes one group of every token
    group = m.choice([g for g in (4, 2, 8) if count % g == 0 and count // g >= 2] or [count])
    k = m.n_moe
    m.n_moe += 1
    experts, hidden = (f"ex{k}", m.choice([4, 2])), (f"hid{k}", m.choice([4, 8]))
    gating = m.choice(["top2", "top1"])
    factor = m.choice([1.25, 0.75, 2.0])
    name = f"moe{k}"
    weights = {}
    for pname, dims in (("gate", (io, experts)), ("wi", (experts, io, hidden)), ("wo", (experts, hidden, io))):
        fan_in = dims[-2][1]
        weights[pname] = (m.rng.standard_normal([s for _, s in dims]) / math.sqrt(fan_in)).astype(np.float32)
    batch = tokens[0][0]
    extra = [(f"{name}/gate", (io, experts)), (f"{name}/wi", (experts, io, hidden)),
             (f"{name}/wo", (experts, hidden, io)), (f"{name}/groups", ((batch, count // group),))]

    def commit():
        m.data.update({f"params/{name}/{k}": v for k, v in weights.items()})
        m.hot.update([batch, experts[0], hidden[0], io[0]])
        m.moe_axes.append(((batch, tokens[0][1]), (batch, count // group), experts))

    return Plan([x], x.dims, {"io": io, "tokens": tokens, "group": group, "experts": experts, "hidden": hidden,
                              "gating": gating, "factor": factor, "name": name, "aux": m.coin(6),
                              "weights": weights}, extra=extra, commit=commit)


def mtf_moe(p: Plan, vars_):
    q = p.params
    call = (f"mtf.layers.moe({vars_[0]}, io_dim={dim_var(*q['io'])}, hidden_dim={dim_var(*q['hidden'])}, "
            f"experts_dim={dim_var(*q['experts'])}, group_size={q['group']}, gating={q['gating']!r}, "
            f"capacity_factor_eval={q['factor']}, name={q['name']!r})")
    return f"(lambda y_aux: y_aux[0] + {LOSS_SCALAR} * y_aux[1])({call})" if q["aux"] else f"{call}[0]"


def ref_moe(p: Plan, x):
    """Dense dispatch (tests/moe_reference.py) on x's tokens, batch first."""
    q, v = p.params, p.operands[0]
    order = [axis(v, n) for n, _ in q["tokens"]] + [axis(v, q["io"][0])]
    tokens = jnp.transpose(x, order).reshape(-1, q["group"], q["io"][1])
    prm = {k: jnp.asarray(q["weights"][k], jnp.float64) for k in ("gate", "wi", "wo")}
    y, aux, _ = dense_moe(tokens, prm["gate"], prm["wi"], prm["wo"], q["gating"], q["factor"], activation=relu_ref)
    y = jnp.transpose(y.reshape([s for _, s in q["tokens"]] + [q["io"][1]]), np.argsort(order))
    return y + LOSS_SCALAR * aux if q["aux"] else y


# ====================================================================== kinds: convolution, pooling


def plan_conv2d(m):
    """x [batch, h, w, c_in] (any order: an existing value with >= 3 dims, or
    a new input) and a kernel parameter [kh, kw, c_in, c_out]."""
    x = m.pick(lambda v: len(v.dims) == 4)
    if x is None:
        dims = tuple(m.random_dims(4, 4))
        if not ok_size(dims):
            return None
        x = m.new_input(dims)
    batch, h, w, c_in = m.draw(st.permutations(x.dims))
    kh, kw = (m.fresh_name(), m.choice([3, 1, 2])), (m.fresh_name(), m.choice([3, 2]))
    out = (m.fresh_name(), m.choice([4, 2]))
    strides = (m.choice([1, 2]), m.choice([1, 2]))
    dilation = (m.choice([1, 2]), 1)
    padding = m.choice(["SAME", "VALID", ((1, 0), (0, 2))])
    pads = conv_padding(padding, (h[1], w[1]), (kh[1], kw[1]), strides, dilation)
    sizes = [(n + lo + hi - ((k - 1) * d + 1)) // s + 1
             for n, (lo, hi), k, d, s in zip((h[1], w[1]), pads, (kh[1], kw[1]), dilation, strides)]
    if min(sizes) < 1:
        return None
    new = {h[0]: sizes[0], w[0]: sizes[1], c_in[0]: out[1]}
    dims = tuple((out[0] if n == c_in[0] else n, new.get(n, s)) for n, s in x.dims)
    kernel = m.new_param((kh, kw, c_in, out), fan_in=kh[1] * kw[1] * c_in[1])
    m.hot.update([h[0], w[0], c_in[0]])
    return Plan([x, kernel], dims, {"spatial": (h, w), "batch": batch, "in": c_in, "strides": strides,
                                    "dilation": dilation, "padding": padding, "pads": pads})


def conv_padding(padding, sizes, ksizes, strides, dilation):
    """(lo, hi) per spatial dim: TF's SAME (output ceil(n / stride), the extra at the end), VALID, or explicit."""
    if padding == "VALID":
        return ((0, 0), (0, 0))
    if padding != "SAME":
        return padding
    pads = []
    for n, k, s, d in zip(sizes, ksizes, strides, dilation):
        total = max((-(-n // s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return tuple(pads)


def mtf_conv2d(p: Plan, vars_):
    q = p.params
    spatial = "[" + ", ".join(repr(n) for n, _ in q["spatial"]) + "]"
    return (f"mtf.conv2d({vars_[0]}, {vars_[1]}, {spatial}, strides={q['strides']}, padding={q['padding']!r}, "
            f"dilation={q['dilation']})")


def ref_conv2d(p: Plan, x, kernel):
    q, v = p.params, p.operands[0]
    (h, _), (w, _) = q["spatial"]
    order = [axis(v, q["batch"][0]), axis(v, q["in"][0]), axis(v, h), axis(v, w)]  # NCHW
    y = jax.lax.conv_general_dilated(jnp.transpose(x, order), kernel, q["strides"], q["pads"],
                                     rhs_dilation=q["dilation"], dimension_numbers=("NCHW", "HWIO", "NCHW"))
    return jnp.transpose(y, np.argsort(order))


def plan_pool(m):
    x = m.pick(lambda v: len(v.dims) >= 2)
    if x is None:
        return None
    windowed = m.subset(x.names, 1, 2)
    window = {n: m.choice([2, 3]) for n in windowed}
    strides = {n: m.choice([1, 2, window[n]]) for n in windowed}
    padding = m.choice(["VALID", "SAME"])
    pads, sizes = {}, dict(x.dims)
    for n in windowed:
        total = max((-(-sizes[n] // strides[n]) - 1) * strides[n] + window[n] - sizes[n], 0) if padding == "SAME" else 0
        pads[n] = (total // 2, total - total // 2)
        sizes[n] = (sizes[n] + total - window[n]) // strides[n] + 1
    if min(sizes.values()) < 1:
        return None
    m.hot.update(windowed)
    return Plan([x], tuple((n, sizes[n]) for n in x.names),
                {"op": m.choice(["max", "avg"]), "window": window, "strides": strides, "padding": padding,
                 "pads": pads})


def mtf_pool(p: Plan, vars_):
    q = p.params
    return f"mtf.{q['op']}_pool({vars_[0]}, {q['window']!r}, strides={q['strides']!r}, padding={q['padding']!r})"


def ref_pool(p: Plan, x):
    """jax.lax.reduce_window: max (padding never wins), or the mean over the
    real (unpadded) elements of each window (TF's avg_pool)."""
    q, names = p.params, p.operands[0].names
    dims = [q["window"].get(n, 1) for n in names]
    strides = [q["strides"].get(n, 1) for n in names]
    pads = [q["pads"].get(n, (0, 0)) for n in names]
    if q["op"] == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, pads)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, pads)
    count = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, dims, strides, pads)
    return total / count


# ====================================================================== the registry


def simple(template):
    """An mtfc builder from a format string over the operands {a}, {b} and the plan's params."""
    return lambda p, v: template.format(a=v[0], b=v[-1], **p.params)


KINDS = [
    NodeKind("binary", 3, plan_binary, lambda p, v: BINARY[p.params["op"]][0].format(a=v[0], b=v[1]), ref_binary),
    NodeKind("einsum", 3, plan_einsum, lambda p, v: f"mtf.einsum([{', '.join(v)}], {shape_src(p.dims)})",
             ref_einsum),
    NodeKind("unary", 2, plan_unary, lambda p, v: UNARY[p.params["op"]][0].format(a=v[0]),
             lambda p, a: UNARY[p.params["op"]][1](a)),
    NodeKind("reduce", 2, plan_reduce, lambda p, v: f"mtf.reduce_{p.params['op']}({v[0]}, {p.params['reduced']!r})",
             ref_reduce),
    NodeKind("softmax", 1, plan_softmax,
             lambda p, v: f"mtf.{'log_' if p.params['log'] else ''}softmax({v[0]}, {p.params['dim']!r})", ref_softmax),
    NodeKind("cumsum", 1, plan_cumsum, simple("mtf.cumsum({a}, {dim!r}, exclusive={exclusive})"), ref_cumsum),
    NodeKind("transpose", 1, plan_transpose, lambda p, v: f"mtf.transpose({v[0]}, {shape_src(p.dims)})",
             lambda p, a: jnp.transpose(a, p.params["perm"])),
    NodeKind("rename", 1, plan_rename, simple("mtf.rename_dimension({a}, {dim!r}, {new!r})"), lambda p, a: a),
    NodeKind("slice", 2, plan_slice, simple("mtf.slice({a}, {begin}, {len}, {dim!r})"), ref_slice),
    NodeKind("pad", 1, plan_pad, simple("mtf.pad({a}, {widths}, {dim!r}, value={value})"), ref_pad),
    NodeKind("shift", 1, plan_shift, simple("mtf.shift({a}, {offset}, {dim!r}, wrap={wrap})"), ref_shift),
    NodeKind("concat", 1, plan_concat, lambda p, v: f"mtf.concat([{', '.join(v)}], {p.params['dim']!r})",
             lambda p, a, b: jnp.concatenate([a, b], axis=axis(p.operands[0], p.params["dim"]))),
    NodeKind("gather", 1, plan_gather, simple("mtf.gather({a}, {b}, {dim!r})"), ref_gather),
    NodeKind("causal", 1, plan_causal, mtf_causal, ref_causal),
    NodeKind("param", 1, plan_param, None, None),
    NodeKind("moe", 1, plan_moe, mtf_moe, ref_moe),
]

# Convolution and pooling: drawn only when window_kinds_enabled() (module docstring).
WINDOW_KINDS = [
    NodeKind("conv2d", 2, plan_conv2d, mtf_conv2d, ref_conv2d, api=("conv2d",)),
    NodeKind("pool", 2, plan_pool, mtf_pool, ref_pool, api=("max_pool", "avg_pool")),
]


def window_kinds() -> list[NodeKind]:
    """The window kinds that are drawn: those whose ops mtfc has, once switched on."""
    return [k for k in WINDOW_KINDS if ENABLE_WINDOW_KINDS and k.available()]


def missing_window_api() -> list[str]:
    return [name for k in WINDOW_KINDS for name in k.api if not hasattr(mtf, name)]


def active_kinds() -> list[NodeKind]:
    return KINDS + window_kinds()


# ====================================================================== the builder


class Drawer:
    """Random choices through a hypothesis `draw` over a pool of named dims
    (`pool_names`, each given a size from `sizes`): what every random-model
    generator of the property tests draws with (test_properties.Builder
    too)."""

    def __init__(self, draw, pool_names, sizes_pool):
        self.draw = draw
        self.rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        sizes = draw(st.lists(st.sampled_from(sizes_pool), min_size=len(pool_names), max_size=len(pool_names)))
        self.pool_names = list(pool_names)
        self.pool = dict(zip(pool_names, sizes))
        self.fresh = 0

    def choice(self, items):
        items = list(items)
        return items[self.draw(st.integers(0, len(items) - 1))]

    def coin(self, p_in_10: int = 5) -> bool:
        return self.draw(st.integers(0, 9)) < p_in_10

    def subset(self, items, min_size=0, max_size=None) -> list:
        """Some of `items` (at least `min_size`), in a random order."""
        items = list(items)
        max_size = len(items) if max_size is None else min(max_size, len(items))
        k = self.draw(st.integers(min_size, max_size))
        return list(self.draw(st.permutations(items))[:k])

    def fresh_name(self) -> str:
        self.fresh += 1
        return f"m{self.fresh}"

    def random_dims(self, min_rank=1, max_rank=3, exclude=()):
        names = [n for n in self.pool_names if n not in exclude]
        return [(n, self.pool[n]) for n in self.subset(names, min(min_rank, len(names)), max_rank)]

    def pick_from(self, cands):
        """One of `cands`, often one of the latest (deeper graphs); None if empty."""
        if not cands:
            return None
        if len(cands) > 3 and self.coin(6):
            cands = cands[-3:]
        return self.choice(cands)


class GradModel(Drawer):
    """Draws a random differentiable model node by node (`KINDS`); each
    node's reference is traced for its shape as it is added."""

    def __init__(self, draw, kinds=None):
        super().__init__(draw, POOL, SIZES)
        self.kinds = kinds or active_kinds()
        self.values: list[Value] = []
        self.steps: list[tuple[str, NodeKind, Plan]] = []  # (var, kind, plan) in order
        self.lines: list[str] = []
        self.inputs: dict[str, str] = {}  # argument -> mtf.Input(...) source
        self.params: dict[str, tuple] = {}  # parameter name -> dims
        self.data: dict[str, np.ndarray] = {}
        self.extra: list[tuple[str, tuple]] = []
        self.hot: set[str] = set()
        self.moe_axes: list[tuple] = []  # each MoE node's (batch dim, groups dim, experts dim): (name, size)s
        self.n_moe = 0
        self.count = 0

    # ------------------------------------------------------------ drawing
    def pick(self, pred=lambda v: True) -> Value | None:
        """A float value satisfying `pred`, often one of the latest (deeper graphs)."""
        return self.pick_from([v for v in self.values if v.dtype == "f32" and pred(v)])

    # ------------------------------------------------------------ leaves
    def new_input(self, dims, dtype="f32", high=None) -> Value:
        var = f"{'x' if dtype == 'f32' else 'i'}{len(self.inputs)}"
        shape = [s for _, s in dims]
        if dtype == "f32":
            host = self.rng.standard_normal(shape).astype(np.float32)
            self.inputs[var] = f"mtf.Input({shape_src(dims)})"
        else:
            host = self.rng.integers(0, high, shape).astype(np.int32)
            self.inputs[var] = f'mtf.Input({shape_src(dims)}, "i32", mtf.init.randint(0, {high}))'
        self.data[var] = host
        value = Value(var, tuple(dims), dtype, leaf=True)
        self.values.append(value)
        return value

    def new_param(self, dims, fan_in=None) -> Value:
        name = f"w{len(self.params)}"
        self.params[name] = tuple(dims)
        scale = 1.0 / math.sqrt(fan_in) if fan_in else 1.0
        host = (self.rng.standard_normal([s for _, s in dims]) * scale).astype(np.float32)
        self.data[f"params/{name}"] = host
        var = f"p_{name}"
        self.lines.append(f"{var} = mtf.get_variable({name!r}, {shape_src(dims)})")
        value = Value(var, tuple(dims), "f32", leaf=True)
        self.values.append(value)
        return value

    # ------------------------------------------------------------ nodes
    def add(self, kind: NodeKind) -> Value | None:
        plan = kind.plan(self)
        if plan is None or kind.mtf is None or not ok_size(plan.dims):
            return None
        with jax.enable_x64(True):  # the reference's shape (traced, not run: values are checked once, jitted)
            args = [jax.ShapeDtypeStruct([s for _, s in o.dims], jnp.float64 if o.dtype == "f32" else jnp.int32)
                    for o in plan.operands]
            out = jax.eval_shape(lambda *a: kind.ref(plan, *a), *args)
        assert out.shape == tuple(s for _, s in plan.dims), (kind.name, out.shape, plan.dims)
        var = f"t{self.count}"
        self.count += 1
        self.lines.append(f"{var} = {kind.mtf(plan, [o.var for o in plan.operands])}")
        self.extra.extend(plan.extra)
        if plan.commit:
            plan.commit()
        self.steps.append((var, kind, plan))
        node = Value(var, plan.dims, "f32")
        self.values.append(node)
        return node

    def build(self, n_ops: int, first=None) -> None:
        for _ in range(self.draw(st.integers(1, 2))):
            self.new_input(self.random_dims(1, 3))
        if first:
            self.add(self.choice(first))
        weighted = [k for k in self.kinds for _ in range(k.weight)]
        done = 0
        for _ in range(3 * n_ops):
            if done >= n_ops:
                break
            done += self.add(self.choice(weighted)) is not None

    # ------------------------------------------------------------ the loss
    def loss_terms(self) -> list[tuple[Value, str | None]]:
        """(node, its cotangent input or None for a scalar): the sinks and some others."""
        used = {o.var for _, _, p in self.steps for o in p.operands}
        nodes = [v for v in self.values if not v.leaf]
        terms = []
        for v in nodes:
            if v.var in used and not self.coin(3):
                continue
            if v.dims:
                cot = self.new_input(v.dims)
                terms.append((v, cot.var))
            else:
                terms.append((v, None))
        return terms

    def source(self, terms) -> str:
        """The model's source text: it returns the loss and its gradient with
        respect to every float input and parameter (``d_<name>``)."""
        loss = " + ".join(f"mtf.reduce_sum({v.var} * {c})" if c else f"{LOSS_SCALAR} * {v.var}" for v, c in terms)
        dims = {dim_var(*d): d for v in self.layout_items() for d in v.dims}
        head = [f"{k} = mtf.Dim({d[0]!r}, {d[1]})" for k, d in sorted(dims.items())]
        floats = [k for k, src in self.inputs.items() if '"i32"' not in src]
        body = [f"    {line}" for line in self.lines] + [
            f"    loss = {loss}",
            "    wrt = {" + ", ".join(f"{k!r}: {k}" for k in floats) + "}",
            "    wrt.update(mtf.trainable_variables())",
            '    return {"loss": loss, **{"d_" + k: g for k, g in mtf.grad(loss, wrt).items()}}',
        ]
        inputs = "inputs = {" + ", ".join(f"{k!r}: {v}" for k, v in self.inputs.items()) + "}"
        return "\n".join(head + [f"def model({', '.join(self.inputs)}):"] + body + [inputs])

    def reference(self, terms):
        """f(floats) -> (loss, {"scale", "peak"}): the model replayed in jnp
        from host data (name -> array: the float inputs and "params/<name>"),
        for ``jax.value_and_grad(..., has_aux=True)``; "scale" is the sum of
        the terms' magnitudes (the loss's error scale), "peak" the largest
        magnitude of any node (a model beyond `MAX_ABS` is not checked)."""
        ints = {k: jnp.asarray(v) for k, v in self.data.items() if np.asarray(v).dtype == np.int32}
        steps = list(self.steps)
        param_vars = {f"p_{name}": f"params/{name}" for name in self.params}

        def loss_fn(floats):
            env = {**{k: floats[k] for k in floats if not k.startswith("params/")}, **ints}
            env.update({var: floats[key] for var, key in param_vars.items()})
            for var, kind, plan in steps:
                if kind.name == "moe":
                    q = plan.params["name"]
                    plan = Plan(plan.operands, plan.dims, {**plan.params, "weights": {
                        k: floats[f"params/{q}/{k}"] for k in ("gate", "wi", "wo")}})
                env[var] = kind.ref(plan, *[env[o.var] for o in plan.operands])
            parts = [env[v.var] * env[c] if c else LOSS_SCALAR * env[v.var] for v, c in terms]
            peak = jnp.max(jnp.stack([jnp.max(jnp.abs(env[var]), initial=0.0) for var, _, _ in steps]))
            return sum(jnp.sum(t) for t in parts), {"scale": sum(jnp.sum(jnp.abs(t)) for t in parts),
                                                    "peak": jax.lax.stop_gradient(peak)}

        return loss_fn

    def layout_items(self) -> list[Value]:
        """Every tensor whose dims the layout lays out: the values, and the extra
        tensors inside nodes (MoE weights and groups)."""
        return self.values + [Value(name, tuple(dims), leaf=True) for name, dims in self.extra]
