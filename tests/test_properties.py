"""Property tests: random small models x random valid layouts x random meshes.

A generator (`Builder`) draws a random DAG of DSL ops over a small pool of
named dims and, alongside, computes what each op must produce with NumPy (in
float64, from the host data it also draws) -- never by calling mtfc.  The
model is emitted as DSL *source text*, which is what gets compiled: a failing
example prints a self-contained snippet (dims, model, inputs, mesh, layout)
that reproduces it.  Every node of the DAG is an output of the model.

A layout is drawn for a random mesh (1-3 axes, 1-8 devices): each dim name
of the model is split over zero, one or several distinct mesh axes.  The
generator mostly respects divisibility and "no axis twice in one tensor" as
far as it knows the model's values, and sometimes ignores them.  mtfc's own
validation decides: a compile-time `MtfcError` about divisibility or a shared
mesh axis is an invalid draw (`assume(False)`) -- but every mode must reject
it alike, and a layout the generator knows to break a value of the model
must be rejected.  Any other error is a failure.

For a valid draw, every partitioning mode (gspmd, explicit, and shardy when
the pass manager has it), the unsharded program of each, and the NumPy
reference agree within the dtype's tolerance (`mtfc.runtime.check`:
normwise relative error, f32 1e-5, bf16 2e-2, integers and booleans exact).
For f32 the norm is taken against the larger of the reference's magnitude and
the node's *error scale*, a forward bound of the magnitudes that rounding
errors are relative to (sums of absolute values through contractions and
reductions, scaled by derivatives through nonlinear ops): where a value
cancels (a sum of random signs), float32 cannot give 1e-5 relative to the
small result, and a partitioning bug (a missing or doubled partial sum, a
wrong shard) is still off by O(1) of that scale.

Models are compiled and run in a worker process: a crash in compiled code
(an LLVM or Shardy CHECK aborts its process) fails one example, with the
crash message, instead of ending the test session.

Gradients (section "gradients"): tests/grad_models.py draws random
differentiable models from a registry of node kinds (each: the dims it
needs, its mtfc source, an independent jax.numpy reference) -- elementwise,
einsum, reductions, softmax, cumsum, data movement, gather, causal masks,
parameters and mixture-of-experts layers (`mtf.layers.moe`, under layouts
that often split its groups and experts over one mesh axis).  Each model
returns a scalar loss and `mtf.grad` of it with respect to every float input
and parameter; every mode's sharded and unsharded runs must agree with
`jax.value_and_grad` of the reference (float64, jitted) and with each other.
Convolution and pooling node kinds (`grad_models.WINDOW_KINDS`: conv2d with
strides, dilation and padding, max / avg pools) have a test of their own;
`test_window_kinds_are_on` fails if any of them is not drawn.

Hypothesis: derandomized (the same examples every run, no database),
deadline None; a failing example prints its whole model (source, mesh,
layout).  The gradient tests draw a few examples each and are not shrunk
(an example costs seconds).  The file runs in about two minutes of one core.
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import re
import select
import struct
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st

import grad_models
import mtfc as mtf
from conftest import assert_close  # also gives the worker its 8 virtual CPU devices
from mtfc.passes.manager import PIPELINES
from mtfc.runtime.check import TOLERANCE

# Every partitioning mode the pass manager has; MTFC_PROPERTY_MODES=explicit,gspmd
# narrows it while working on one partitioner.
MODES = tuple(m for m in ("gspmd", "explicit", "shardy") if m in PIPELINES
              and m in os.environ.get("MTFC_PROPERTY_MODES", m).split(","))

POOL_NAMES = ("b", "s", "d", "h", "e")
SIZES = (8, 4, 16, 12, 2)  # hypothesis leans towards the first choice
AXIS_NAMES = ("a", "x", "y", "z", "p", "q")
MAX_ELEMENTS = 4096  # per value of the model
MAX_RANK = 4
MAX_ABS = 1e3  # f32 values beyond this are dropped (a model of sane magnitudes)
# Float outputs are compared normwise against max(max|reference|, weight * max(error
# scale)): f32's 1e-5 of a tenth of the error scale is ~17 float32 ulps of it; bf16's
# 2e-2 of the whole error scale ~5 bf16 ulps.
ERROR_SCALE_WEIGHT = {"f32": 0.1, "bf16": 1.0}

# A compile-time MtfcError saying one of these is mtfc rejecting the layout.
LAYOUT_ERRORS = re.compile(r"is not divisible by mesh axes|may not share a mesh axis")

F64 = np.float64
BF16 = ml_dtypes.bfloat16


# ====================================================================== the model


@dataclass
class Node:
    """One value of the generated model: its source variable, dims (name, size)
    in order, dtype ("f32", "i32", "bool"), tolerance class, NumPy value, and
    error scale `mag` (>= |value|; see the module docstring)."""

    var: str
    dims: tuple[tuple[str, int], ...]
    dtype: str
    value: np.ndarray
    mag: np.ndarray
    tol: str = "f32"  # "f32", "bf16" (downstream of a bf16 rounding) or "exact"
    is_input: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.dims)


SERIALS = itertools.count()


class Case:
    """A generated model with its data, mesh and layout; its repr is runnable source."""

    def __init__(self, source, outputs, data, mesh, layout, problem=""):
        self.source = source
        self.outputs: dict[str, Node] = outputs
        self.data: dict[str, np.ndarray] = data
        self.mesh, self.layout = mesh, layout
        self.why_invalid = problem  # the generator's reason the layout is invalid ('' if none)
        self.serial = next(SERIALS)  # tells the worker which case its data belongs to

    @property
    def predicted_valid(self) -> bool:
        return not self.why_invalid

    def __repr__(self) -> str:
        note = f"\n# generator: this layout breaks a value ({self.why_invalid})" if self.why_invalid else ""
        return (
            f"\n{self.source}\nmesh, layout = {self.mesh!r}, {self.layout!r}{note}\n"
            "# conftest.run_model(model, inputs, mesh=mesh, layout=layout, mode=...) reruns it on data\n"
            "# synthesized from the initializers (the test's own data is in .data)\n"
        )

    def _repr_pretty_(self, p, cycle):  # how hypothesis prints a falsifying example
        p.text(repr(self))


dim_var, union_dims = grad_models.dim_var, grad_models.union_dims  # one spelling of the generators' dims


def bcast(value, dims, target) -> np.ndarray:
    """`value` (with `dims`) transposed and broadcast to the `target` dims."""
    names = [n for n, _ in dims]
    order = [names.index(n) for n, _ in target if n in names]
    v = np.transpose(value, order) if order else value
    v = v.reshape([s if n in names else 1 for n, s in target])
    return np.broadcast_to(v, [s for _, s in target])


def einsum_by_name(operands, out) -> np.ndarray:
    """np.einsum of (value, dims) pairs to the `out` dims."""
    return np.einsum(grad_models.einsum_spec(operands, out), *[v for v, _ in operands])


def picked(take_a, a, b, ma, mb) -> np.ndarray:
    """Error scale of a selection (max, min): the chosen operand's, or both near a tie."""
    near = np.abs(a - b) <= 1e-4 * (ma + mb)
    return np.where(near, np.maximum(ma, mb), np.where(take_a, ma, mb))


def shifted(x: np.ndarray, offset: int, axis: int, wrap: bool) -> np.ndarray:
    """mtf.shift's documented meaning: towards higher indices, zeros (or wrapped
    elements) in the vacated positions."""
    if wrap:
        return np.roll(x, offset, axis=axis)
    n = x.shape[axis]
    out = np.zeros_like(x)
    if abs(offset) < n:
        src, dst = [slice(None)] * x.ndim, [slice(None)] * x.ndim
        if offset >= 0:
            src[axis], dst[axis] = slice(0, n - offset), slice(offset, n)
        else:
            src[axis], dst[axis] = slice(-offset, n), slice(0, n + offset)
        out[tuple(dst)] = x[tuple(src)]
    return out


class Builder(grad_models.Drawer):
    """Draws a random model op by op, keeping the NumPy value of every node."""

    def __init__(self, draw):
        super().__init__(draw, POOL_NAMES, SIZES)
        self.nodes: list[Node] = []
        self.lines: list[str] = []
        self.inputs: dict[str, str] = {}  # argument -> mtf.Input(...) source
        self.data: dict[str, np.ndarray] = {}
        self.n_params = 0
        self.hot: set[str] = set()  # dims some op works along (contracts, reduces, slices, reshapes...)
        self.count = 0

    # ------------------------------------------------------------ drawing
    def pick(self, pred=lambda n: True) -> Node | None:
        """A node satisfying `pred`, often one of the latest (deeper graphs)."""
        return self.pick_from([n for n in self.nodes if pred(n)])

    # ------------------------------------------------------------ source text
    def shape_src(self, dims) -> str:
        return "[" + ", ".join(dim_var(n, s) for n, s in dims) + "]"

    def dim_src(self, name, size) -> str:
        """A dim argument: the Dim object or, sometimes, its name."""
        return repr(name) if self.coin(3) else dim_var(name, size)

    def dim_def(self, name, size) -> str:
        return f"{dim_var(name, size)} = mtf.Dim({name!r}, {size})"

    # ------------------------------------------------------------ nodes
    @staticmethod
    def ok_size(dims) -> bool:
        return dims is not None and len(dims) <= MAX_RANK and math.prod(s for _, s in dims) <= MAX_ELEMENTS

    def add(self, expr: str, dims, dtype: str, value, mag=None, tol="f32", pre=()) -> Node | None:
        """Record node `expr` (after the lines `pre`) unless its value is not sane.

        `mag` is the error scale of an f32 value, |value| when not given."""
        dims = tuple(dims)
        value = np.asarray(value)
        assert value.shape == tuple(s for _, s in dims), (expr, value.shape, dims)
        if dtype == "f32":
            value = value.astype(F64)
            if not np.all(np.isfinite(value)) or (value.size and np.max(np.abs(value)) > MAX_ABS):
                return None
            mag = np.abs(value) if mag is None else np.maximum(np.abs(value), np.asarray(mag, dtype=F64))
        else:
            value = value.astype(np.int64 if dtype == "i32" else bool)
            mag, tol = np.abs(value).astype(F64), "exact"
        var = f"t{self.count}"
        self.count += 1
        self.lines.extend(pre)
        self.lines.append(f"{var} = {expr}")
        node = Node(var, dims, dtype, value, np.broadcast_to(mag, value.shape), tol)
        self.nodes.append(node)
        return node

    def new_input(self, dims, dtype="f32", high=None) -> Node:
        var = f"{'x' if dtype == 'f32' else 'i'}{len(self.inputs)}"
        shape = [s for _, s in dims]
        if dtype == "f32":
            host = self.rng.standard_normal(shape).astype(np.float32)
            self.inputs[var] = f"mtf.Input({self.shape_src(dims)})"
            value, tol = host.astype(F64), "f32"
        else:
            host = self.rng.integers(0, high, shape).astype(np.int32)
            self.inputs[var] = f'mtf.Input({self.shape_src(dims)}, "i32", mtf.init.randint(0, {high}))'
            value, tol = host.astype(np.int64), "exact"
        self.data[var] = host
        node = Node(var, tuple(dims), dtype, value, np.abs(value).astype(F64), tol, is_input=True)
        self.nodes.append(node)
        return node

    @staticmethod
    def tol_of(*nodes) -> str:
        return "bf16" if any(n.tol == "bf16" for n in nodes) else "f32"

    def same(self, a: Node, expr, dims, fn, pre=(), mag_fn=None):
        """A node that moves a's elements around (value and error scale alike)."""
        return self.add(expr, dims, a.dtype, fn(a.value), (mag_fn or fn)(a.mag), a.tol, pre)

    # ------------------------------------------------------------ arithmetic
    @staticmethod
    def in_bf16(node: Node) -> tuple[str, np.ndarray]:
        """Source and value of `node` rounded to bf16."""
        return f'mtf.cast({node.var}, "bf16")', node.value.astype(np.float32).astype(BF16).astype(F64)

    def op_einsum(self, bf16=False):
        k = self.choice([2, 1, 2, 3])
        ops = [self.pick(lambda n: n.dtype == "f32")]
        for _ in range(k - 1):
            nxt = self.pick(lambda n: n.dtype == "f32" and union_dims(*[o.dims for o in ops], n.dims) is not None)
            if nxt is None:
                break
            ops.append(nxt)
        dims = union_dims(*[o.dims for o in ops])
        if dims is None or math.prod(s for _, s in dims) > 4 * MAX_ELEMENTS:
            return
        if self.coin(3):  # inferred: the dims that occur in exactly one input, in order
            out = [(n, s) for n, s in dims if sum(n in o.names for o in ops) == 1]
            out_src = ""
        else:
            out = [(n, dict(dims)[n]) for n in self.subset([n for n, _ in dims], 0, MAX_RANK)]
            out_src = ", " + self.shape_src(out)
        if not self.ok_size(out):
            return
        self.hot.update(n for n, _ in dims if n not in dict(out))
        self.einsum_node(ops, out, out_src, bf16)

    def einsum_node(self, ops, out, out_src: str, bf16=False) -> Node | None:
        """The node `mtf.einsum(ops{out_src})` with dims `out` (`out_src` is
        `", [dims]"` or `""` for inferred dims), in f32 or computed in bf16."""
        srcs, values = [o.var for o in ops], [o.value for o in ops]
        if bf16:  # computed in bf16: operands cast down, the result cast back up
            srcs, values = zip(*[self.in_bf16(o) for o in ops])
        value = einsum_by_name(list(zip(values, [o.dims for o in ops])), out)
        absolute = [(np.abs(v), o.dims) for v, o in zip(values, ops)]
        mag = einsum_by_name(absolute, out) + sum(  # own rounding + each operand's error carried through
            einsum_by_name(absolute[:i] + [(o.mag, o.dims)] + absolute[i + 1:], out) for i, o in enumerate(ops))
        expr = f"mtf.einsum([{', '.join(srcs)}]{out_src})"
        if bf16:
            expr = f'mtf.cast({expr}, "f32")'
        return self.add(expr, out, "f32", value, mag, "bf16" if bf16 else self.tol_of(*ops))

    # kind -> (function form, operator form or None, value(a, b), error scale(a, b, ma, mb, out))
    BINARY = {
        "add": ("mtf.add({a}, {b})", "{a} + {b}", np.add, lambda a, b, ma, mb, o: ma + mb),
        "subtract": ("mtf.subtract({a}, {b})", "{a} - {b}", np.subtract, lambda a, b, ma, mb, o: ma + mb),
        "multiply": ("mtf.multiply({a}, {b})", "{a} * {b}", np.multiply,
                     lambda a, b, ma, mb, o: np.abs(b) * ma + np.abs(a) * mb),
        "maximum": ("mtf.maximum({a}, {b})", None, np.maximum, lambda a, b, ma, mb, o: picked(a >= b, a, b, ma, mb)),
        "minimum": ("mtf.minimum({a}, {b})", None, np.minimum, lambda a, b, ma, mb, o: picked(a <= b, a, b, ma, mb)),
        "divide": ("mtf.divide({a}, 1.0 + mtf.square({b}))", "{a} / (mtf.square({b}) + 1.0)",
                   lambda a, b: a / (1.0 + b * b), lambda a, b, ma, mb, o: ma / (1 + b * b) + 2 * np.abs(o) * mb),
    }

    def op_binary(self):
        kind = self.choice(self.BINARY)
        a = self.pick(lambda n: n.dtype == "f32")
        b = self.pick(lambda n: n.dtype == "f32" and n is not a and self.ok_size(union_dims(a.dims, n.dims))) or a
        self.binary_node(kind, a, b)

    def binary_node(self, kind: str, a: Node, b: Node) -> Node | None:
        """The node `kind(a, b)` (a `BINARY` entry), broadcast to the union of their dims."""
        fn_src, op_src, ref, err = self.BINARY[kind]
        dims = union_dims(a.dims, b.dims)
        src = (op_src if op_src and self.coin(5) else fn_src).format(a=a.var, b=b.var)
        av, bv = bcast(a.value, a.dims, dims), bcast(b.value, b.dims, dims)
        out = ref(av, bv)
        mag = err(av, bv, bcast(a.mag, a.dims, dims), bcast(b.mag, b.dims, dims), out)
        return self.add(src, dims, "f32", out, mag, self.tol_of(a, b))

    # (source, value(x), derivative bound(x)): error scale = |f'(x)| * mag(x) + |f(x)|
    SCALAR = [
        ("{a} * 0.5", lambda x: x * 0.5, lambda x: 0.5),
        ("2.0 - {a}", lambda x: 2.0 - x, lambda x: 1.0),
        ("{a} + 1.5", lambda x: x + 1.5, lambda x: 1.0),
        ("{a} ** 2", lambda x: x**2, lambda x: 2 * np.abs(x)),
        ("mtf.maximum({a}, 0.25)", lambda x: np.maximum(x, 0.25), lambda x: 1.0),
        ("1.0 / (1.0 + mtf.abs({a}))", lambda x: 1.0 / (1.0 + np.abs(x)), lambda x: 1.0 / (1.0 + np.abs(x)) ** 2),
    ]
    UNARY = [
        ("mtf.tanh({a})", np.tanh, lambda x: 1 - np.tanh(x) ** 2),
        ("mtf.relu({a})", lambda x: np.maximum(x, 0.0), lambda x: 1.0),
        ("mtf.sigmoid({a})", lambda x: 1.0 / (1.0 + np.exp(-x)), lambda x: 0.25),
        ("mtf.abs({a})", np.abs, lambda x: 1.0),
        ("mtf.negative({a})", np.negative, lambda x: 1.0),
        ("-{a}", np.negative, lambda x: 1.0),
        ("mtf.gelu({a})", lambda x: 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3))),
         lambda x: 1.2),
        ("mtf.exp(mtf.tanh({a}))", lambda x: np.exp(np.tanh(x)), lambda x: np.exp(np.tanh(x))),
        ("mtf.exp({a} * 0.125)", lambda x: np.exp(x * 0.125), lambda x: np.exp(x * 0.125) / 8),
        ("mtf.square({a})", np.square, lambda x: 2 * np.abs(x)),
        ("mtf.log(1.0 + mtf.square({a}))", lambda x: np.log1p(x * x), lambda x: 1.0),
        ("mtf.rsqrt(mtf.square({a}) + 1.0)", lambda x: 1.0 / np.sqrt(x * x + 1.0), lambda x: 0.4),
        ("mtf.sqrt(mtf.square({a}) + 1.0)", lambda x: np.sqrt(x * x + 1.0), lambda x: 1.0),
    ]

    def op_unary(self, table=None):
        entry = self.choice(table or self.UNARY)
        self.unary_node(entry, self.pick(lambda n: n.dtype == "f32"))

    def unary_node(self, entry, a: Node) -> Node | None:
        """The node of a `UNARY` or `SCALAR` entry applied to `a`."""
        src, ref, slope = entry
        out = ref(a.value)
        return self.add(src.format(a=a.var), a.dims, "f32", out, slope(a.value) * a.mag + np.abs(out), a.tol)

    def op_scalar(self):
        self.op_unary(self.SCALAR)

    def op_reduce(self, bf16=False):
        a = self.pick(lambda n: n.dtype in (("f32",) if bf16 else ("f32", "i32")) and n.dims)
        kinds = ["sum", "mean", "max", "min", "logsumexp"] if a.dtype == "f32" else ["sum", "max", "min"]
        kind = self.choice(kinds)
        names, sizes = list(a.names), dict(a.dims)
        form = self.choice(["one", "list", "output_shape", "all"])
        if form == "one":
            reduced = [self.choice(names)]
            arg = ", " + self.dim_src(reduced[0], sizes[reduced[0]])
        elif form == "list":
            reduced = self.subset(names, 1)
            arg = ", [" + ", ".join(self.dim_src(n, sizes[n]) for n in reduced) + "]"
        elif form == "output_shape":
            keep = self.subset(names)  # in any order: the result keeps a's order
            reduced = [n for n in names if n not in keep]
            arg = ", output_shape=" + self.shape_src([(n, sizes[n]) for n in keep])
        else:
            reduced, arg = names, ""
        axes = tuple(names.index(n) for n in reduced)
        self.hot.update(reduced)
        out = [(n, s) for n, s in a.dims if n not in reduced]
        x, m, src = a.value, a.mag, a.var
        if bf16:  # computed in bf16: the operand cast down, the result cast back up
            src, x = self.in_bf16(a)
        if kind == "sum":
            value, mag = np.sum(x, axis=axes), 2 * np.sum(m, axis=axes)
        elif kind == "mean":
            value, mag = np.mean(x, axis=axes), 2 * np.mean(m, axis=axes)
        elif kind in ("max", "min"):
            value, mag = (np.max if kind == "max" else np.min)(x, axis=axes), np.max(m, axis=axes)
        else:
            peak = np.max(x, axis=axes, keepdims=True)
            value = np.log(np.sum(np.exp(x - peak), axis=axes)) + np.squeeze(peak, axis=axes)
            mag = 2 * np.max(m, axis=axes) + np.abs(value)
        expr = f"mtf.reduce_{kind}({src}{arg})"
        if bf16:
            expr = f'mtf.cast({expr}, "f32")'
        self.add(expr, out, a.dtype, value, mag, "bf16" if bf16 else a.tol)

    def op_softmax(self):
        a = self.pick(lambda n: n.dtype == "f32" and n.dims)
        n = self.choice(a.names)
        i = a.names.index(n)
        self.hot.add(n)
        z = a.value - a.value.max(axis=i, keepdims=True)
        log_sm = z - np.log(np.exp(z).sum(axis=i, keepdims=True))
        spread = 2 * a.mag.max(axis=i, keepdims=True)  # an error in any logit moves every output
        if self.coin(6):
            self.add(f"mtf.softmax({a.var}, {self.dim_src(n, dict(a.dims)[n])})", a.dims, "f32",
                     np.exp(log_sm), np.exp(log_sm) * (1 + spread), a.tol)
        else:
            self.add(f"mtf.log_softmax({a.var}, {self.dim_src(n, dict(a.dims)[n])})", a.dims, "f32",
                     log_sm, a.mag + spread, a.tol)

    # ------------------------------------------------------------ moving data
    def op_reshape(self):
        a = self.pick(lambda n: n.dims)
        names, sizes = list(a.names), dict(a.dims)
        kind = self.choice(["rename", "split", "merge", "transpose"])
        if kind == "rename":
            n, new = self.choice(names), self.fresh_name()
            self.hot.update([n, new])
            dims = [(new if m == n else m, s) for m, s in a.dims]
            self.same(a, f"mtf.rename_dimension({a.var}, {self.dim_src(n, sizes[n])}, {new!r})", dims, lambda v: v)
        elif kind == "split":
            splittable = [n for n, s in a.dims if any(s % p == 0 for p in range(2, s))]
            if not splittable or len(names) >= MAX_RANK:
                return
            n = self.choice(splittable)
            p = self.choice([p for p in range(2, sizes[n]) if sizes[n] % p == 0])
            parts = [(self.fresh_name(), p), (self.fresh_name(), sizes[n] // p)]
            self.hot.update([n] + [d[0] for d in parts])
            i = names.index(n)
            dims = list(a.dims[:i]) + parts + list(a.dims[i + 1:])
            old = self.dim_src(n, sizes[n]) if self.coin(5) else f"[{self.dim_src(n, sizes[n])}]"
            self.same(a, f"mtf.replace_dimensions({a.var}, {old}, [{', '.join(dim_var(*d) for d in parts)}])",
                      dims, lambda v: v.reshape([s for _, s in dims]), pre=[self.dim_def(*d) for d in parts])
        elif kind == "merge":
            if len(names) < 2:
                return
            old = self.subset(names, 2, 3)
            new = (self.fresh_name(), math.prod(sizes[n] for n in old))
            self.hot.update(old + [new[0]])
            # docs: the old dims come together, in the order given, at the position of the first of them
            at = min(names.index(n) for n in old)
            rest = [n for n in names if n not in old]
            before = [n for n in names[:at] if n in rest]
            after = [n for n in rest if n not in before]
            perm = [names.index(n) for n in before + old + after]
            dims = [(n, sizes[n]) for n in before] + [new] + [(n, sizes[n]) for n in after]
            olds = ", ".join(self.dim_src(n, sizes[n]) for n in old)
            self.same(a, f"mtf.replace_dimensions({a.var}, [{olds}], {dim_var(*new)})", dims,
                      lambda v: np.transpose(v, perm).reshape([s for _, s in dims]), pre=[self.dim_def(*new)])
        else:
            perm = list(self.draw(st.permutations(range(len(names)))))
            dims = [a.dims[i] for i in perm]
            self.same(a, f"mtf.transpose({a.var}, {self.shape_src(dims)})", dims, lambda v: np.transpose(v, perm))

    def _resized(self, a: Node, n: str, new_size: int, new_name: str | None):
        self.hot.update([n, new_name or n])
        dims = [((new_name or n), new_size) if m == n else (m, s) for m, s in a.dims]
        return dims, (f", new_name={new_name!r}" if new_name else "")

    def op_slice(self):
        a = self.pick(lambda n: any(s >= 2 for _, s in n.dims))
        if a is None:
            return
        n = self.choice([m for m, s in a.dims if s >= 2])
        size, i = dict(a.dims)[n], a.names.index(n)
        if self.coin(4):
            begin, length = self.choice([0, size // 2]), size // 2
        else:
            begin = self.draw(st.integers(0, size - 1))
            length = self.draw(st.integers(1, size - begin))
        dims, extra = self._resized(a, n, length, self.fresh_name() if self.coin(4) else None)
        self.same(a, f"mtf.slice({a.var}, {begin}, {length}, {self.dim_src(n, size)}{extra})", dims,
                  lambda v: np.take(v, range(begin, begin + length), axis=i))

    def op_pad(self):
        a = self.pick(lambda n: n.dims and n.dtype != "bool")
        if a is None:
            return
        n = self.choice(a.names)
        size, i = dict(a.dims)[n], a.names.index(n)
        before, after = self.draw(st.integers(0, size)), self.draw(st.integers(0, size))
        if self.coin(3):
            before, after = self.choice([(0, size), (size, 0), (size // 2, size // 2)])
        value = self.choice([0, -1, 2]) if a.dtype == "i32" else self.choice([0.0, -1.0, 2.5])
        dims, extra = self._resized(a, n, size + before + after, self.fresh_name() if self.coin(3) else None)
        if not self.ok_size(dims):
            return
        widths = [(before, after) if k == i else (0, 0) for k in range(len(a.dims))]
        vsrc = "" if value == 0 and self.coin(5) else f", value={value!r}"
        self.same(a, f"mtf.pad({a.var}, ({before}, {after}), {self.dim_src(n, size)}{vsrc}{extra})", dims,
                  lambda v: np.pad(v, widths, constant_values=value),
                  mag_fn=lambda m: np.pad(m, widths, constant_values=abs(value)))

    def op_concat(self):
        a = self.pick(lambda n: n.dims)
        n = self.choice(a.names)
        others = {m: s for m, s in a.dims if m != n}

        def partner(m: Node):
            return (m.dtype == a.dtype and set(m.names) == set(a.names)
                    and all(dict(m.dims)[k] == s for k, s in others.items()))

        parts = [a] + [self.pick(partner) for _ in range(self.draw(st.integers(1, 2)))]
        pre, srcs, values, mags = [], [], [], []
        for p in parts:
            order = [p.names.index(m) for m in a.names]
            if p.names != a.names:  # concat wants one dim order: transpose the partner first
                var = f"t{self.count}_{len(pre)}"
                pre.append(f"{var} = mtf.transpose({p.var}, {self.shape_src([p.dims[k] for k in order])})")
                srcs.append(var)
            else:
                srcs.append(p.var)
            values.append(np.transpose(p.value, order))
            mags.append(np.transpose(p.mag, order))
        total = sum(dict(p.dims)[n] for p in parts)
        dims, extra = self._resized(a, n, total, self.fresh_name() if self.coin(3) else None)
        if not self.ok_size(dims):
            return
        i = a.names.index(n)
        self.add(f"mtf.concat([{', '.join(srcs)}], {self.dim_src(n, dict(a.dims)[n])}{extra})", dims, a.dtype,
                 np.concatenate(values, axis=i), np.concatenate(mags, axis=i), self.tol_of(*parts), pre)

    def op_shift(self):
        a = self.pick(lambda n: n.dims and n.dtype != "bool")
        if a is None:
            return
        n = self.choice(a.names)
        size, i = dict(a.dims)[n], a.names.index(n)
        offset, wrap = self.draw(st.integers(-size, size)), self.coin(4)
        self.hot.add(n)
        wsrc = ", wrap=True" if wrap else ""
        self.same(a, f"mtf.shift({a.var}, {offset}, {self.dim_src(n, size)}{wsrc})", a.dims,
                  lambda v: shifted(v, offset, i, wrap))

    def op_gather(self):
        if self.coin(3):  # an embedding table parameter
            vocab = (self.fresh_name(), self.choice(SIZES))
            rest = self.random_dims(1, 1)
            name = f"table{self.n_params}"
            self.n_params += 1
            host = self.rng.standard_normal([vocab[1], rest[0][1]]).astype(np.float32)
            self.data[f"params/{name}"] = host
            table = self.add(f"mtf.get_variable({name!r}, [{dim_var(*vocab)}, {dim_var(*rest[0])}])",
                             [vocab] + rest, "f32", host, pre=[self.dim_def(*vocab)])
            axis_name = vocab[0]
        else:
            table = self.pick(lambda n: n.dtype == "f32" and n.dims)
            axis_name = self.choice(table.names)
        vsize = dict(table.dims)[axis_name]
        self.hot.add(axis_name)
        rest = [(m, s) for m, s in table.dims if m != axis_name]
        rest_names = {m for m, _ in rest}
        idx = None
        if self.coin(5):  # computed indices, when some are in range
            idx = self.pick(lambda n: n.dtype == "i32" and n.dims and not (set(n.names) & rest_names)
                            and n.value.min() >= 0 and n.value.max() < vsize)
        if idx is None:
            idx = self.new_input(self.random_dims(1, 2, exclude=rest_names), "i32", vsize)
        dims = list(idx.dims) + rest
        if not self.ok_size(dims) or union_dims(dims) is None:
            return
        i, k = table.names.index(axis_name), len(idx.dims)

        def look_up(v):  # np.take puts the index dims where the table's dim was: move them first
            return np.moveaxis(np.take(v, idx.value, axis=i), list(range(i, i + k)), list(range(k)))

        self.add(f"mtf.gather({table.var}, {idx.var}, {self.dim_src(axis_name, vsize)})", dims, "f32",
                 look_up(table.value), look_up(table.mag), table.tol)

    def op_one_hot(self):
        idx = self.pick(lambda n: n.dtype == "i32" and len(n.dims) < 3)
        if idx is None:
            idx = self.new_input(self.random_dims(1, 2), "i32", self.choice(SIZES))
        cands = [n for n in POOL_NAMES if n not in idx.names]
        pre = []
        if cands and self.coin(5):
            dim = self.choice(cands)
            dim = (dim, self.pool[dim])
        else:
            dim = (self.fresh_name(), self.choice(SIZES))
            pre = [self.dim_def(*dim)]
        dims = list(idx.dims) + [dim]
        if not self.ok_size(dims):
            return
        self.hot.add(dim[0])
        on, off = (1.0, 0.0) if self.coin(7) else (2.0, -0.5)
        extra = "" if (on, off) == (1.0, 0.0) else f", on_value={on}, off_value={off}"
        value = np.where(idx.value[..., None] == np.arange(dim[1]), on, off)  # out of range: all off
        self.add(f"mtf.one_hot({idx.var}, {dim_var(*dim)}{extra})", dims, "f32", value, pre=pre)

    # ------------------------------------------------------------ creation, dtypes, masks
    def iota_node(self, dims, dtype="i32") -> Node:
        n = self.choice([m for m, _ in dims])
        shape = [s for _, s in dims]
        i = [m for m, _ in dims].index(n)
        self.hot.add(n)
        value = np.broadcast_to(np.arange(shape[i]).reshape([-1 if k == i else 1 for k in range(len(shape))]), shape)
        dsrc = "" if dtype == "i32" else f", {dtype!r}"
        if len(dims) == 1 and self.coin(4):
            return self.add(f"mtf.range_({dim_var(*dims[0])}{dsrc})", dims, dtype, value)
        return self.add(f"mtf.iota({self.shape_src(dims)}, {self.dim_src(n, shape[i])}{dsrc})", dims, dtype, value)

    def op_create(self):
        kind = self.choice(["iota", "constant_array", "constant_scalar"])
        dims = self.random_dims(1, 3)
        shape = [s for _, s in dims]
        if kind == "iota":
            self.iota_node(dims, self.choice(["i32", "f32"]))
        elif kind == "constant_array":
            total = math.prod(shape)
            value = np.linspace(-1.0, 1.0, total, dtype=np.float32).reshape(shape)
            self.add(f"mtf.constant(np.linspace(-1.0, 1.0, {total}, dtype=np.float32).reshape({shape}), "
                     f"{self.shape_src(dims)})", dims, "f32", value)
        else:
            src, v = self.choice([("mtf.zeros({s})", 0.0), ("mtf.ones({s})", 1.0), ("mtf.constant(-2.5, {s})", -2.5)])
            self.add(src.format(s=self.shape_src(dims)), dims, "f32", np.full(shape, v))

    def op_cast(self):
        kind = self.choice(["bf16", "bf16_einsum", "bf16_reduce", "to_f32", "to_i32"])
        if kind == "bf16_einsum":
            self.op_einsum(bf16=True)
        elif kind == "bf16_reduce":
            self.op_reduce(bf16=True)
        elif kind == "bf16":  # a bf16 rounding: bf16 tolerance from here on
            a = self.pick(lambda n: n.dtype == "f32")
            value = a.value.astype(np.float32).astype(BF16).astype(F64)
            self.add(f'mtf.cast(mtf.cast({a.var}, "bf16"), "f32")', a.dims, "f32", value, a.mag, "bf16")
        elif kind == "to_f32":
            a = self.pick(lambda n: n.dtype in ("i32", "bool"))
            if a is not None:
                self.add(f'mtf.cast({a.var}, "f32")', a.dims, "f32", a.value)
        else:
            # truncating a computed float would let its last bit decide the integer:
            # only inputs (exact), times a power of two (exact) are truncated
            a = self.pick(lambda n: n.is_input and n.dtype == "f32")
            value = np.trunc(self.data[a.var].astype(np.float32) * np.float32(4.0))
            self.add(f'mtf.cast({a.var} * 4.0, "i32")', a.dims, "i32", value)

    def int_node(self, dims_hint=()) -> Node | None:
        """An integer value: an existing one, or a new iota over some dims."""
        a = self.pick(lambda n: n.dtype == "i32") if self.coin(5) else None
        return a if a is not None else self.iota_node(list(dims_hint) or self.random_dims(1, 2))

    def op_int_arith(self):
        a = self.int_node()
        b = self.pick(lambda n: n.dtype == "i32" and self.ok_size(union_dims(a.dims, n.dims)))
        dims = union_dims(a.dims, b.dims)
        src, ref = self.choice([("{a} + {b}", np.add), ("{a} * {b}", np.multiply), ("{a} - {b}", np.subtract),
                                ("mtf.maximum({a}, {b})", np.maximum), ("{a} + 3", None)])
        if ref is None:
            self.add(src.format(a=a.var), a.dims, "i32", a.value + 3)
        else:
            self.add(src.format(a=a.var, b=b.var), dims, "i32",
                     ref(bcast(a.value, a.dims, dims), bcast(b.value, b.dims, dims)))

    COMPARE = [("mtf.less({a}, {b})", np.less), ("{a} <= {b}", np.less_equal), ("mtf.equal({a}, {b})", np.equal),
               ("mtf.greater({a}, {b})", np.greater), ("{a} >= {b}", np.greater_equal),
               ("mtf.not_equal({a}, {b})", np.not_equal)]

    def op_mask(self):
        """A boolean mask from integer comparisons (iota(s) <= iota(m): a causal
        mask), then `where(mask, x, y)` on a float value."""
        x = self.pick(lambda n: n.dtype == "f32" and n.dims)
        c = self.pick(lambda n: n.dtype == "bool" and self.ok_size(union_dims(x.dims, n.dims))) if self.coin(3) else None
        if c is None:
            a = self.int_node(self.subset(x.dims, 1, 2))
            b = self.int_node(self.subset(x.dims, 1, 2))
            dims = union_dims(a.dims, b.dims)
            if not self.ok_size(dims):
                return
            src, ref = self.choice(self.COMPARE)
            c = self.add(src.format(a=a.var, b=b.var), dims, "bool",
                         ref(bcast(a.value, a.dims, dims), bcast(b.value, b.dims, dims)))
            if self.coin(2):
                c = self.add(f"mtf.logical_not({c.var})", c.dims, "bool", ~c.value)
        if not self.ok_size(union_dims(x.dims, c.dims)):
            return
        y = None
        if self.coin(4):
            y = self.pick(lambda n: n.dtype == "f32" and self.ok_size(union_dims(x.dims, n.dims, c.dims)))
        if y is not None:  # result dims: x's, then y's new ones, then the condition's
            dims = union_dims(x.dims, y.dims, c.dims)
            yv, ym, ysrc, tol = bcast(y.value, y.dims, dims), bcast(y.mag, y.dims, dims), y.var, self.tol_of(x, y)
        else:
            dims = union_dims(x.dims, c.dims)
            yv, ym, ysrc, tol = -30.0, 30.0, "-30.0", x.tol
        cond = bcast(c.value, c.dims, dims)
        self.add(f"mtf.where({c.var}, {x.var}, {ysrc})", dims, "f32", np.where(cond, bcast(x.value, x.dims, dims), yv),
                 np.where(cond, bcast(x.mag, x.dims, dims), ym), tol)

    OPS = {  # op -> (generator, weight); hypothesis leans a little towards the first
        "binary": (op_binary, 3),
        "einsum": (op_einsum, 3),
        "reshape": (op_reshape, 3),
        "unary": (op_unary, 2),
        "reduce": (op_reduce, 2),
        "gather": (op_gather, 2),
        "slice": (op_slice, 2),
        "mask": (op_mask, 2),
        "softmax": (op_softmax, 1),
        "scalar": (op_scalar, 1),
        "pad": (op_pad, 1),
        "concat": (op_concat, 1),
        "shift": (op_shift, 1),
        "one_hot": (op_one_hot, 1),
        "create": (op_create, 1),
        "cast": (op_cast, 2),
        "int_arith": (op_int_arith, 1),
    }
    WEIGHTED = [name for name, (_, w) in OPS.items() for _ in range(w)]

    # ------------------------------------------------------------ the model
    def build(self, n_ops: int) -> None:
        for _ in range(self.draw(st.integers(1, 3))):
            self.new_input(self.random_dims(1, 3))
        done = 0
        for _ in range(3 * n_ops):  # an op may come out empty (sizes, magnitudes)
            if done == n_ops:
                break
            before = len(self.nodes)
            self.OPS[self.choice(self.WEIGHTED)][0](self)
            done += any(not n.is_input for n in self.nodes[before:])

    def source(self, returned=None) -> tuple[str, dict[str, Node]]:
        """The model's source text and its outputs: `returned` nodes (default:
        every node that is not an input)."""
        outputs = {n.var: n for n in (returned if returned is not None else self.nodes) if not n.is_input}
        defined = {line.split(" = ")[0] for line in self.lines if " = mtf.Dim(" in line}
        used = sorted({dim_var(*d): d for n in self.nodes for d in n.dims}.items())
        head = [self.dim_def(*d) for v, d in used if v not in defined]
        body = [f"    {line}" for line in self.lines]
        ret = "    return {" + ", ".join(f"{v!r}: {v}" for v in outputs) + "}"
        inputs = "inputs = {" + ", ".join(f"{k!r}: {v}" for k, v in self.inputs.items()) + "}"
        return "\n".join(head + [f"def model({', '.join(self.inputs)}):"] + body + [ret, inputs]), outputs


# ====================================================================== layouts


@st.composite
def meshes(draw):
    """[(axis, size)]: 1-3 named axes, at most 8 devices."""
    count = draw(st.sampled_from([2, 3, 1]))
    names = draw(st.permutations(AXIS_NAMES))[:count]
    # 2 first: meshes of size-1 axes only should be rare
    sizes = draw(st.lists(st.sampled_from([2, 4, 1, 8]), min_size=count, max_size=count)
                 .filter(lambda s: math.prod(s) <= 8))
    return list(zip(names, sizes))


def layout_problem(nodes, rules: dict[str, tuple[str, ...]], mesh: dict[str, int]) -> str:
    """Why `rules` cannot lay out some value of the model ('' when they can)."""
    for node in nodes:
        used: dict[str, str] = {}
        for n, s in node.dims:
            axes = rules.get(n, ())
            for a in axes:
                if a in used:
                    return f"{node.var} uses axis {a} for {used[a]} and {n}"
                used[a] = n
            if s % math.prod(mesh[a] for a in axes):
                return f"{node.var}: {n}:{s} over {'+'.join(axes)}"
    return ""


@st.composite
def layouts(draw, nodes, hot=frozenset()):
    """(mesh text, layout text, the generator's objection or '') for a model.

    The dims in `hot` (those ops work along) get their axes first, and are
    seldom left whole: that is where partitioners must communicate."""
    mesh_axes = draw(meshes())
    mesh = dict(mesh_axes)
    sizes: dict[str, set[int]] = {}
    together: dict[str, set[str]] = {}
    for node in nodes:
        for n, s in node.dims:
            sizes.setdefault(n, set()).add(s)
            together.setdefault(n, set()).update(node.names)
    careless = draw(st.integers(0, 9)) == 0  # sometimes ignore what the generator knows
    rules: dict[str, tuple[str, ...]] = {}
    order = list(draw(st.permutations(sorted(hot & set(sizes))))) + list(draw(st.permutations(sorted(set(sizes) - hot))))
    for n in order:
        if draw(st.sampled_from([False, False, False, False, False, False, False, True] if n in hot
                                else [False, False, False, True])):  # leave this dim whole
            continue
        taken = {a for m in together[n] for a in rules.get(m, ())}
        free = [a for a, _ in mesh_axes if careless or a not in taken]
        if not careless:  # axes that divide every size the dim has
            free = [a for a in free if not any(s % mesh[a] for s in sizes[n])]
        if not free:
            continue
        axes = tuple(draw(st.permutations(free))[: draw(st.sampled_from([1, 2, 3, 1]))])
        while not careless and any(s % math.prod(mesh[a] for a in axes) for s in sizes[n]):
            axes = axes[:-1]
        rules[n] = axes
    if draw(st.booleans()):
        rules["unused"] = (draw(st.sampled_from([a for a, _ in mesh_axes])),)  # a rule for no dim of the model
    layout = ",".join(f"{n}:{'+'.join(rules[n])}" for n in draw(st.permutations(sorted(rules))))
    mesh_text = ",".join(f"{a}:{s}" for a, s in mesh_axes)
    return mesh_text, layout, layout_problem(nodes, rules, mesh)


@st.composite
def cases(draw, min_ops=3, max_ops=8):
    builder = Builder(draw)
    builder.build(draw(st.integers(min_ops, max_ops)))
    source, outputs = builder.source()
    assume(outputs)
    mesh, layout, problem = draw(layouts(builder.nodes, frozenset(builder.hot)))
    return Case(source, outputs, builder.data, mesh, layout, problem)


# ====================================================================== contraction chains

CHAIN_MESHES = ((2, 2), (2, 4), (4, 2), (2, 2, 2))  # several axes to sum over, at most 8 devices
CHAIN_SIZE = 8  # every chain dim: divisible by any one or two of those axes
CHAIN_BATCH = ("b", 4)


def chain_weight(builder: Builder, dims) -> Node:
    """A weight [c_l, c_l+1]: an input or a parameter, scaled by 1/sqrt(fan-in)
    so that values keep their magnitude from level to level."""
    scale = np.float32(1.0 / math.sqrt(dims[0][1]))
    host = (builder.rng.standard_normal([s for _, s in dims]).astype(np.float32) * scale).astype(np.float32)
    if builder.coin(5):
        var = f"x{len(builder.inputs)}"
        builder.inputs[var] = f"mtf.Input({builder.shape_src(dims)})"
        builder.data[var] = host
        node = Node(var, tuple(dims), "f32", host.astype(F64), np.abs(host).astype(F64), is_input=True)
        builder.nodes.append(node)
        return node
    name = f"w{builder.n_params}"
    builder.n_params += 1
    builder.data[f"params/{name}"] = host
    return builder.add(f"mtf.get_variable({name!r}, {builder.shape_src(dims)})", dims, "f32", host.astype(F64))


def chain_level(builder: Builder, operands: list[Node], summed, produced) -> list[Node] | None:
    """One level: each branch contracts one of `operands` (or the sum or product
    of two of them) with its own weight over the `summed` dim, giving a value
    with the `produced` dim, sometimes through a nonlinearity; None when a value
    comes out of range."""
    batch = CHAIN_BATCH
    out = []
    for j in range(max(len(operands), builder.draw(st.integers(2, 3)))):
        a = operands[j % len(operands)]  # mostly: every result feeds the next level (none is dead)
        if len(operands) > 1 and builder.coin(2):  # results combined before the next level's sums
            b = builder.choice([o for o in operands if o is not a])
            a = builder.binary_node(builder.choice(["add", "multiply"]), a, b)
            if a is None:
                return None
        elif builder.coin(1):
            a = builder.choice(operands)
        w = chain_weight(builder, [summed, produced])
        order = [batch, produced] if builder.coin(9) else [produced, batch]  # the other order: a transpose
        u = builder.einsum_node([a, w], order, ", " + builder.shape_src(order))
        if u is not None and builder.coin(1):
            u = builder.unary_node(builder.choice(Builder.UNARY[:3]), u)  # tanh, relu, sigmoid
        if u is None:
            return None
        out.append(u)
    return out


@st.composite
def contraction_chains(draw):
    """A model of 2-3 levels of einsums, level l summing over dim c_l, which
    the layout splits over one or two mesh axes other than c_(l-1)'s: each
    level's all_reduces run over other replica groups than the last level's,
    and read its results.  The last level's results are added up.  These are
    the dependent collectives that `fuse-collectives` must merge level by
    level (each merged op after its operands, before its users)."""
    builder = Builder(draw)
    sizes = draw(st.sampled_from(CHAIN_MESHES))
    mesh_axes = list(zip(draw(st.permutations(AXIS_NAMES))[:len(sizes)], sizes))
    levels = draw(st.integers(2, 3))
    chain = [(f"c{level}", CHAIN_SIZE) for level in range(levels + 1)]
    rules: dict[str, tuple[str, ...]] = {}
    previous: tuple[str, ...] = ()
    for name, _ in chain:
        free = [a for a, _ in mesh_axes if a not in previous]
        most = min(2, len(mesh_axes) - 1)  # leave the next dim an axis
        rules[name] = previous = tuple(draw(st.permutations(free))[: draw(st.integers(1, most))])
    spare = [a for a, _ in mesh_axes if not any(a in axes for axes in rules.values())]
    if spare and builder.coin(5):
        rules[CHAIN_BATCH[0]] = (builder.choice(spare),)
    x = builder.new_input([CHAIN_BATCH, chain[0]])
    values = [x, builder.new_input([CHAIN_BATCH, chain[0]])] if builder.coin(4) else [x]
    for level in range(levels):
        values = chain_level(builder, values, chain[level], chain[level + 1])
        assume(values is not None)
    total = values[0]
    for v in values[1:]:
        total = builder.binary_node("add", total, v)
        assume(total is not None)
    returned = [total] + [n for n in builder.nodes if not n.is_input and n is not total and builder.coin(2)]
    source, outputs = builder.source(returned)
    mesh = dict(mesh_axes)
    layout = ",".join(f"{n}:{'+'.join(axes)}" for n, axes in rules.items())
    mesh_text = ",".join(f"{a}:{s}" for a, s in mesh_axes)
    return Case(source, outputs, builder.data, mesh_text, layout, layout_problem(builder.nodes, rules, mesh))


# ====================================================================== the worker


def load_source(source: str):
    """(model, inputs) from generated source text."""
    env = {"mtf": mtf, "np": np}
    exec(compile(source, "<generated model>", "exec"), env)  # noqa: S102 - our own generated text
    return env["model"], env["inputs"]


# The unsharded program each mode carries (gspmd: its module without
# annotations; explicit and shardy: their nested reference copy) is one global
# program: it is compiled and run once per case, and again only for a mode
# whose copy differs from it (other than in the module's name).
_UNSHARDED: dict = {"case": None, "runs": {}}


def unsharded_program_text(module) -> str:
    from mtfc import ir as mir

    if mir.partitioning(module) in ("explicit", "shardy"):
        module = mir.reference_module(module)
    return re.sub(r"^module @\S+", "module @m", mir.strip_partitioning_text(module), count=1, flags=re.M)


def _serve(request: dict) -> dict:
    """In the worker: compile `request`'s model in one mode and, if asked, run it
    sharded and unsharded.  Errors come back as data."""
    from mtfc.compiler import compile_function
    from mtfc.errors import MtfcError
    from mtfc.runtime.execute import Program

    if "source" in request:
        model, inputs = load_source(request["source"])
    else:
        model, inputs = globals()[request["entry"]]()
    try:
        # The layouts may carry a rule for no dim of the model (`unused`): allowed explicitly.
        module = compile_function(model, inputs, mesh=request["mesh"], layout=request["layout"], mode=request["mode"],
                                  allow_unused_rules=True)
    except MtfcError as e:
        return {"status": "rejected", "message": str(e), "traceback": traceback.format_exc()}
    except Exception as e:  # noqa: BLE001 - reported to the test
        return {"status": "compile_error", "message": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    reply = {"status": "ok", "text": str(module)}
    if not request.get("run"):
        return reply
    stage = "sharded"
    try:
        reply["sharded"] = Program(module).run(request["data"]).outputs
        stage = "unsharded"
        if _UNSHARDED["case"] != request.get("case"):
            _UNSHARDED.update(case=request.get("case"), runs={})
        key = unsharded_program_text(module)
        if key not in _UNSHARDED["runs"]:
            _UNSHARDED["runs"][key] = Program(module, unsharded=True).run(request["data"]).outputs
        reply["unsharded"] = _UNSHARDED["runs"][key]
    except Exception as e:  # noqa: BLE001
        return {"status": "run_error", "message": f"{stage}: {type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    return reply


def _worker_main() -> None:
    """The worker's loop: length-prefixed pickles on stdin -> stdout."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to the log, not into the protocol
    inp = sys.stdin.buffer
    while True:
        head = inp.read(8)
        if len(head) < 8:
            return
        request = pickle.loads(inp.read(struct.unpack("<Q", head)[0]))
        blob = pickle.dumps(_serve(request))
        out.write(struct.pack("<Q", len(blob)) + blob)
        out.flush()


class Worker:
    """A child Python process that compiles and runs models for the tests."""

    TIMEOUT = 300

    def __init__(self):
        self.log = tempfile.NamedTemporaryFile(prefix="mtfc-properties-", suffix=".log", delete=False)
        here = os.path.dirname(os.path.abspath(__file__))
        code = f"import sys; sys.path.insert(0, {here!r}); import test_properties as t; t._worker_main()"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, request: dict) -> dict:
        blob = pickle.dumps(request)
        try:
            self.proc.stdin.write(struct.pack("<Q", len(blob)) + blob)
            self.proc.stdin.flush()
            reply = self._read()
        except (BrokenPipeError, EOFError, TimeoutError) as e:
            message = f"{e} -- {self._log_tail()}"
            self.close()
            return {"status": "crashed", "message": message}
        return reply

    def _read(self) -> dict:
        def read(n):
            buf = b""
            while len(buf) < n:
                ready, _, _ = select.select([self.proc.stdout], [], [], self.TIMEOUT)
                if not ready:
                    raise TimeoutError(f"no answer in {self.TIMEOUT} s")
                chunk = os.read(self.proc.stdout.fileno(), n - len(buf))
                if not chunk:
                    raise EOFError(f"the worker died (exit {self.proc.wait()})")
                buf += chunk
            return buf

        return pickle.loads(read(struct.unpack("<Q", read(8))[0]))

    def _log_tail(self) -> str:
        with open(self.log.name, errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
        crash = [ln for ln in lines if "LLVM ERROR" in ln or "Check failed" in ln or "Fatal" in ln]
        return " | ".join((crash or lines)[-3:])[:2000]

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()
        if os.path.exists(self.log.name):
            self.log.close()
            os.unlink(self.log.name)


@pytest.fixture(scope="module")
def worker():
    holder = {"w": Worker()}

    def call(request):
        if not holder["w"].alive():
            holder["w"].close()
            holder["w"] = Worker()
        reply = holder["w"].call(request)
        return reply

    yield call
    holder["w"].close()


# ====================================================================== checking


def compile_everywhere(call, case: Case, run: bool) -> dict[str, dict]:
    """Each mode's reply, after checking that mtfc judges the layout consistently."""
    replies = {}
    for mode in MODES:
        request = {"source": case.source, "mesh": case.mesh, "layout": case.layout, "mode": mode,
                   "run": run, "data": case.data if run else None, "case": case.serial}
        replies[mode] = reply = call(request)
        if reply["status"] == "rejected" and not LAYOUT_ERRORS.search(reply["message"]):
            raise AssertionError(f"{mode} mode: compiling failed: {reply['message']}\n{reply['traceback']}")
        if reply["status"] in ("compile_error", "crashed"):
            raise AssertionError(f"{mode} mode: compiling {reply['status']}: {reply['message']}\n"
                                 f"{reply.get('traceback', '')}")
    rejected = sorted(m for m, r in replies.items() if r["status"] == "rejected")
    if rejected:
        accepted = sorted(set(MODES) - set(rejected))
        assert not accepted, (f"modes disagree on the layout: {accepted} accept it, {rejected} reject it: "
                              f"{replies[rejected[0]]['message']}")
    if not case.predicted_valid:
        assert rejected, f"mtfc accepted a layout that breaks a value of the model: {case.why_invalid}"
    return replies


def close_enough(actual: np.ndarray, node: Node, what: str, name: str) -> None:
    """`assert_close` against the node's reference, the norm taken against the
    larger of its magnitude and its error scale (see the module docstring)."""
    want_dtype = {"f32": np.float32, "i32": np.int32, "bool": np.bool_}[node.dtype]
    assert actual.dtype == want_dtype, f"{what}: output {name!r} has dtype {actual.dtype}, expected {want_dtype}"
    assert actual.shape == node.value.shape, f"{what}: output {name!r} has shape {actual.shape}, not {node.value.shape}"
    if node.tol == "exact":
        try:
            assert_close(actual, node.value, "i32")
        except AssertionError as e:
            raise AssertionError(f"{what}: output {name!r} differs from the NumPy reference: {e}") from None
        return
    tolerance = TOLERANCE[node.tol]
    scale = max(float(np.max(np.abs(node.value), initial=0.0)),
                ERROR_SCALE_WEIGHT[node.tol] * float(np.max(node.mag, initial=0.0)))
    error = float(np.max(np.abs(actual - node.value), initial=0.0)) / scale if scale else 0.0
    if not error <= tolerance:  # also false for NaN
        raise AssertionError(f"{what}: output {name!r} differs from the NumPy reference: "
                             f"relative error {error:.3e} > {tolerance} (scale {scale:.3g})")


def check_case(call, case: Case) -> None:
    replies = compile_everywhere(call, case, run=True)
    assume(not any(r["status"] == "rejected" for r in replies.values()))  # all modes reject alike
    for mode, reply in replies.items():
        if reply["status"] != "ok":
            raise AssertionError(f"{mode} mode: {reply['status']}: {reply['message']}\n{reply.get('traceback', '')}")
    for mode, reply in replies.items():
        for run in ("sharded", "unsharded"):
            got = reply[run]
            assert sorted(got) == sorted(case.outputs), (mode, run, sorted(got), sorted(case.outputs))
            for name, node in case.outputs.items():
                close_enough(np.asarray(got[name]), node, f"{mode} mode, {run}", name)


# ====================================================================== tests

SETTINGS = dict(
    deadline=None,
    derandomize=True,  # the same examples on every run (and no example database)
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
# The gradient tests: a few examples each (each compiles a forward and backward
# program in every mode), not shrunk (an example costs seconds; the failing
# model prints whole, and is small).
GRAD_EXAMPLES, MOE_EXAMPLES, WINDOW_EXAMPLES = 12, 5, 8
GRAD_SETTINGS = dict(SETTINGS, phases=[Phase.explicit, Phase.generate])


# Hypothesis draws some models more than once (with other data, or draws the
# model does not use); an example that passed is not run again.
PASSED: set[tuple] = set()


def once(case: Case, test: str) -> tuple:
    key = (test, case.source, case.mesh, case.layout)
    assume(key not in PASSED)
    return key


@settings(max_examples=130, **SETTINGS)
@given(case=cases())
def test_random_models_agree_in_every_mode(worker, case):
    key = once(case, "agree")
    check_case(worker, case)
    PASSED.add(key)


@settings(max_examples=100, **SETTINGS)
@given(case=cases())
def test_layouts_are_judged_alike(worker, case):
    """Compiling only: every mode accepts or rejects a layout alike, and rejects
    those the generator knows to break a value of the model."""
    key = once(case, "judged")
    compile_everywhere(worker, case, run=False)
    PASSED.add(key)


@settings(max_examples=8, **SETTINGS)
@given(case=contraction_chains())
def test_contraction_chains_agree_in_every_mode(worker, case):
    """Multi-level contraction chains over several mesh axes (dependent
    collectives): every mode, sharded and unsharded, agrees with NumPy."""
    key = once(case, "chains")
    check_case(worker, case)
    PASSED.add(key)


# ====================================================================== gradients
# Random differentiable models (tests/grad_models.py: a registry of node kinds,
# each with its mtfc builder, jnp reference builder and the dims it needs)
# whose scalar loss is differentiated by mtfc (`mtf.grad`, compiled in each
# mode, run sharded and unsharded) and by jax.grad of the jnp reference.


def parse_rules(layout: str) -> dict[str, tuple[str, ...]]:
    return {r.split(":")[0]: tuple(r.split(":")[1].split("+")) for r in layout.split(",") if r}


@st.composite
def grad_layouts(draw, model: grad_models.GradModel):
    """`layouts` for the model's tensors; with an MoE node, often its batch
    (the groups) and experts dims split over one shared mesh axis that
    divides them (the expert-parallel layout: tokens move by all_to_all)."""
    items = model.layout_items()
    mesh, layout, problem = draw(layouts(items, frozenset(model.hot)))
    sizes = {a: int(n) for a, n in (r.split(":") for r in mesh.split(","))}
    dims = draw(st.sampled_from(model.moe_axes)) if model.moe_axes else ()
    axes = [a for a, n in sizes.items() if dims and n > 1 and not any(s % n for _, s in dims)]
    if axes and draw(st.integers(0, 9)) < 7:
        (batch, _), _, (experts, _) = dims
        shared = draw(st.sampled_from(axes))
        rules = {d: tuple(a for a in ax if a != shared) for d, ax in parse_rules(layout).items()}
        rules = {d: ax for d, ax in rules.items() if ax}
        rules[batch] = rules[experts] = (shared,)
        layout = ",".join(f"{d}:{'+'.join(ax)}" for d, ax in sorted(rules.items()))
        problem = layout_problem(items, rules, sizes)
    return mesh, layout, problem


@st.composite
def grad_cases(draw, kinds=None, first=None, min_ops=3, max_ops=7):
    """A random differentiable model (its loss and the gradients of every
    float input and parameter as outputs) with a mesh and layout; `.model`
    holds the generator's description (for the reference), `.terms` the loss."""
    model = grad_models.GradModel(draw, kinds)
    model.build(draw(st.integers(min_ops, max_ops)), first)
    assume(any(not v.leaf for v in model.values))
    terms = model.loss_terms()
    mesh, layout, problem = draw(grad_layouts(model))
    case = Case(model.source(terms), {}, model.data, mesh, layout, problem)
    case.model, case.terms = model, terms
    return case


def grad_reference(case: Case) -> tuple[dict[str, np.ndarray], float]:
    """jax.value_and_grad of the jnp reference in float64, jitted: ({"loss",
    "d_<name>"} -> expected value, the loss's error scale: the sum of |each
    term|); a model whose values go beyond grad_models.MAX_ABS is not drawn."""
    import jax
    import jax.numpy as jnp

    floats = {k: v for k, v in case.data.items() if np.asarray(v).dtype == np.float32}
    with jax.enable_x64(True):
        f64 = {k: jnp.asarray(v, jnp.float64) for k, v in floats.items()}
        (loss, aux), grads = jax.jit(jax.value_and_grad(case.model.reference(case.terms), has_aux=True))(f64)
        expected = {"loss": np.asarray(loss), **{f"d_{k}": np.asarray(g) for k, g in grads.items()}}
    peak = float(aux["peak"])
    finite = all(np.all(np.isfinite(v)) for v in expected.values())
    assume(np.isfinite(peak) and peak <= grad_models.MAX_ABS and finite)
    return expected, float(aux["scale"])


def check_grad_case(call, case: Case) -> None:
    expected, loss_scale = grad_reference(case)
    replies = compile_everywhere(call, case, run=True)
    assume(not any(r["status"] == "rejected" for r in replies.values()))
    for mode, reply in replies.items():
        if reply["status"] != "ok":
            raise AssertionError(f"{mode} mode: {reply['status']}: {reply['message']}\n{reply.get('traceback', '')}")
        for run in ("sharded", "unsharded"):
            got = reply[run]
            assert sorted(got) == sorted(expected), (mode, run, sorted(got), sorted(expected))
            for name, want in expected.items():
                value = np.asarray(got[name])
                what = f"{mode} mode, {run}, {name!r}"
                assert value.dtype == np.float32 and value.shape == want.shape, (what, value.dtype, value.shape)
                if name == "loss":  # a sum of terms of both signs: relative to the sum of their magnitudes
                    scale = max(abs(float(want)), ERROR_SCALE_WEIGHT["f32"] * loss_scale)
                    error = abs(float(value) - float(want)) / scale if scale else abs(float(value))
                    assert error <= TOLERANCE["f32"], f"{what}: relative error {error:.3e} (scale {scale:.3g})"
                    continue
                try:
                    assert_close(value.astype(F64), want)
                    if run == "sharded":
                        assert_close(value, np.asarray(reply["unsharded"][name]))
                except AssertionError as e:
                    raise AssertionError(f"{what}: {e}") from None


@settings(max_examples=GRAD_EXAMPLES, **GRAD_SETTINGS)
@given(case=grad_cases())
def test_random_model_gradients_agree_with_jax_grad(worker, case):
    """mtf.grad of random models (every kind of tests/grad_models.py.KINDS),
    each mode sharded and unsharded, against jax.grad of the jnp reference."""
    key = once(case, "grads")
    check_grad_case(worker, case)
    PASSED.add(key)


MOE_KIND = [k for k in grad_models.KINDS if k.name == "moe"]


@settings(max_examples=MOE_EXAMPLES, **GRAD_SETTINGS)
@given(case=grad_cases(first=MOE_KIND, min_ops=1, max_ops=3))
def test_random_moe_models_agree_with_jax_grad(worker, case):
    """Models that start with a mixture-of-experts layer (then random nodes,
    sometimes another MoE), under layouts that often split its groups and
    experts over one mesh axis: forward (the loss, d_cot) and gradients."""
    key = once(case, "moe")
    check_grad_case(worker, case)
    PASSED.add(key)


WINDOW_OFF = (f"conv2d / max_pool / avg_pool node kinds are off: grad_models.ENABLE_WINDOW_KINDS="
              f"{grad_models.ENABLE_WINDOW_KINDS}, mtfc lacks {grad_models.missing_window_api() or 'nothing'}")


def test_window_kinds_are_on():
    """The conv / pool node kinds are drawn (mtfc has their ops)."""
    assert len(grad_models.window_kinds()) == len(grad_models.WINDOW_KINDS), WINDOW_OFF


@settings(max_examples=30, **GRAD_SETTINGS)
@given(data=st.data())
def test_window_kinds_trace_to_their_dims(data):
    """Without mtfc (before the conv / pool ops merge): the window kinds'
    plans and jnp references agree on every drawn node's dims (the builder
    traces each reference's shape), and their mtfc source is written."""
    model = grad_models.GradModel(data.draw, grad_models.KINDS + grad_models.WINDOW_KINDS)
    model.build(data.draw(st.integers(1, 3)), grad_models.WINDOW_KINDS)
    assume(any(kind in grad_models.WINDOW_KINDS for _, kind, _ in model.steps))
    assert "mtf.conv2d(" in model.source(model.loss_terms()) or "_pool(" in model.source([])


@settings(max_examples=WINDOW_EXAMPLES, **GRAD_SETTINGS)
@given(case=grad_cases(first=grad_models.window_kinds(), min_ops=1, max_ops=3))
def test_random_window_models_agree_with_jax_grad(worker, case):
    """Models that start with a conv2d or a pool (then random nodes, others among them)."""
    key = once(case, "window")
    check_grad_case(worker, case)
    PASSED.add(key)


# ---------------------------------------------------------------------- Megatron

BATCH, SEQ, MEMORY, D_MODEL = mtf.Dim("batch", 4), mtf.Dim("seq", 8), mtf.Dim("memory", 8), mtf.Dim("d_model", 16)
HEADS, D_KV, D_FF = mtf.Dim("heads", 4), mtf.Dim("d_kv", 8), mtf.Dim("d_ff", 32)
MEGATRON_PARAMS = {
    "w_q": [D_MODEL, HEADS, D_KV], "w_k": [D_MODEL, HEADS, D_KV], "w_v": [D_MODEL, HEADS, D_KV],
    "w_o": [HEADS, D_KV, D_MODEL], "w_1": [D_MODEL, D_FF], "b_1": [D_FF], "w_2": [D_FF, D_MODEL],
}


def megatron_entry():
    """A Megatron block: causal self-attention (heads split), a residual, layer
    norm, an MLP (d_ff split) with a second residual, and a scalar loss."""

    def model(x):
        p = {name: mtf.get_variable(name, shape) for name, shape in MEGATRON_PARAMS.items()}
        memory = mtf.rename_dimension(x, "seq", "memory")
        q = mtf.einsum([x, p["w_q"]], [BATCH, HEADS, SEQ, D_KV])
        k = mtf.einsum([memory, p["w_k"]], [BATCH, HEADS, MEMORY, D_KV])
        v = mtf.einsum([memory, p["w_v"]], [BATCH, HEADS, MEMORY, D_KV])
        logits = mtf.einsum([q, k], [BATCH, HEADS, SEQ, MEMORY]) * (D_KV.size**-0.5)
        causal = mtf.less_equal(mtf.range_(MEMORY), mtf.range_(SEQ))
        weights = mtf.softmax(mtf.where(causal, logits, -1e9), MEMORY)
        context = mtf.einsum([weights, v], [BATCH, SEQ, HEADS, D_KV])
        attention = mtf.einsum([context, p["w_o"]], [BATCH, SEQ, D_MODEL])
        h = x + attention
        mean = mtf.reduce_mean(h, D_MODEL)
        var = mtf.reduce_mean(mtf.square(h - mean), D_MODEL)
        normed = (h - mean) * mtf.rsqrt(var + 1e-5)
        hidden = mtf.relu(mtf.einsum([normed, p["w_1"]], [BATCH, SEQ, D_FF]) + p["b_1"])
        out = h + mtf.einsum([hidden, p["w_2"]], [BATCH, SEQ, D_MODEL])
        return {"weights": weights, "attention": attention, "hidden": hidden, "out": out,
                "loss": mtf.reduce_mean(mtf.square(out))}

    return model, {"x": mtf.Input([BATCH, SEQ, D_MODEL])}


def megatron_reference(d):
    x = d["x"].astype(F64)
    w = {k: d[f"params/{k}"].astype(F64) for k in MEGATRON_PARAMS}
    q = np.einsum("bsd,dhk->bhsk", x, w["w_q"])
    k = np.einsum("bmd,dhk->bhmk", x, w["w_k"])
    v = np.einsum("bmd,dhk->bhmk", x, w["w_v"])
    logits = np.einsum("bhsk,bhmk->bhsm", q, k) / np.sqrt(8)
    logits = np.where(np.arange(8)[None, :] <= np.arange(8)[:, None], logits, -1e9)  # [seq, memory]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    weights = e / e.sum(-1, keepdims=True)
    attention = np.einsum("bshk,hkd->bsd", np.einsum("bhsm,bhmk->bshk", weights, v), w["w_o"])
    h = x + attention
    normed = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    hidden = np.maximum(normed @ w["w_1"] + w["b_1"], 0.0)
    out = h + hidden @ w["w_2"]
    return {"weights": weights, "attention": attention, "hidden": hidden, "out": out, "loss": np.mean(out**2)}


@pytest.mark.parametrize("mode", MODES)
def test_megatron_block(worker, mode):
    """batch:x, heads:y, d_ff:y on x:2,y:4: each mode's sharded and unsharded
    runs agree with NumPy; explicit mode needs no gathers, only sums."""
    rng = np.random.default_rng(7)
    data = {"x": rng.standard_normal([4, 8, 16]).astype(np.float32)}
    for name, shape in MEGATRON_PARAMS.items():
        fan_in = shape[0].size if name != "w_o" else 32
        data[f"params/{name}"] = (rng.standard_normal([d.size for d in shape]) / np.sqrt(fan_in)).astype(np.float32)
    reply = worker({"entry": "megatron_entry", "mesh": "x:2,y:4", "layout": "batch:x,heads:y,d_ff:y",
                    "mode": mode, "run": True, "data": data, "case": "megatron"})
    assert reply["status"] == "ok", f"{reply['status']}: {reply['message']}\n{reply.get('traceback', '')}"
    expected = megatron_reference(data)
    for run in ("sharded", "unsharded"):
        for name, want in expected.items():
            got = np.asarray(reply[run][name])
            try:
                assert got.dtype == np.float32, got.dtype
                assert_close(got, want)
            except AssertionError as e:
                raise AssertionError(f"{mode} mode, {run}, output {name!r}: {e}") from None
    if mode == "explicit":
        program = reply["text"].split("module @mtfc.reference")[0]
        assert "all_reduce" in program
        assert not re.search(r"all_gather|all_to_all|collective_permute", program), "Megatron needs only sums"
