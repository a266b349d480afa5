"""Reverse-mode autodiff on the named-dim graph.

`grad(y, xs)` walks the recorded graph backwards from the scalar `y`, calling
each primitive's gradient rule (``Primitive.grad``, next to its dims rule and
lowering).  The rules are written in DSL ops, so the gradient ops are ordinary
graph ops: they keep dim names, and therefore partition by the same layout
rules as the forward ops.  Each gradient op is recorded under the name scope
``grad/<forward op name>`` at the forward op's model-file line, so the
compiled module's locations read like the forward pass's.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

from mtfc.frontend.dims import Shape
from mtfc.frontend.graph import FLOAT_DTYPES, Graph, Operation, Tensor, current_graph, fail
from mtfc.frontend.model import trainable_variables


@contextlib.contextmanager
def _at(graph: Graph, op: Operation):
    """Record ops under ``grad/<op's name>`` at `op`'s location."""
    saved = graph._scopes, graph.location_override
    graph._scopes = ["grad", *op.name.split("/")]
    graph.location_override = op.location
    try:
        yield
    finally:
        graph._scopes, graph.location_override = saved


def _flatten(xs) -> tuple[list, Callable]:
    """xs (a tensor, a list/tuple, or a dict of tensors) -> (list, rebuild)."""
    if isinstance(xs, Tensor):
        return [xs], lambda gs: gs[0]
    if isinstance(xs, dict):
        keys = list(xs)
        return [xs[k] for k in keys], lambda gs: dict(zip(keys, gs))
    if isinstance(xs, (list, tuple)):
        return list(xs), (lambda gs: list(gs)) if isinstance(xs, list) else tuple
    raise fail(f"grad: xs must be a tensor, a list or tuple of tensors, or a dict of them, got {type(xs).__name__}")


def grad(y: Tensor, xs):
    """Gradients of the scalar `y` with respect to each of `xs`.

    `xs` is a tensor, a list or tuple of tensors, or a dict name -> tensor (e.g.
    `trainable_variables()`); the result has the same structure, each gradient
    with the dims and dtype of its tensor.  A tensor that `y` does not depend
    on gets zeros.  Gradients sum over every path from x to y (a tensor used
    several times accumulates), and `stop_gradient` cuts a path.
    """
    graph = current_graph()
    if not isinstance(y, Tensor):
        raise fail(f"grad: y must be an mtfc tensor, got {type(y).__name__}")
    if len(y.shape) != 0:
        raise fail(f"grad: y must be a scalar (no dims), got {y.shape}; reduce it first (e.g. reduce_sum)")
    if y.dtype not in FLOAT_DTYPES:
        raise fail(f"grad: y must be a float tensor, got {y.dtype}")
    targets, rebuild = _flatten(xs)
    for x in targets:
        if not isinstance(x, Tensor):
            raise fail(f"grad: xs must be mtfc tensors, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise fail(f"grad: only float tensors have gradients, got {x.dtype} {x.shape}")

    return rebuild(_backprop(graph, [y], {id(y): None}, targets))


def vjp(outputs: list[Tensor], cotangents: list[Tensor | None], xs: list[Tensor]) -> list[Tensor]:
    """The vector-Jacobian product: gradients with respect to each of `xs`
    of ``sum(outputs[i] * cotangents[i])`` (a None cotangent is zero),
    each with its x's dims and dtype (zeros where nothing depends on it).
    Used by the gradient of loops, whose backward body differentiates the
    forward body against the cotangents the loop carries."""
    graph = current_graph()
    seeds = {id(t): ct for t, ct in zip(outputs, cotangents) if ct is not None}
    roots = [t for t, ct in zip(outputs, cotangents) if ct is not None]
    return _backprop(graph, roots, seeds, list(xs))


def _backprop(graph: Graph, roots: list[Tensor], seeds: dict, targets: list[Tensor]) -> list[Tensor]:
    """Reverse mode from `roots`, whose gradients are `seeds` (id -> tensor;
    None: the scalar one), to `targets`; the gradient ops not needed are pruned."""
    from mtfc.frontend import ops
    from mtfc.frontend.primitives import PRIMITIVES

    # The ops on a path from some x to a root, in graph (topological) order.
    ancestors: set[int] = set()
    stack = [t.op for t in roots]
    while stack:
        op = stack.pop()
        if id(op) not in ancestors:
            ancestors.add(id(op))
            stack.extend(t.op for t in op.inputs)
    depends = {id(x) for x in targets}
    path: list[Operation] = []
    for op in graph.operations:
        if id(op) in ancestors and any(id(t) in depends for t in op.inputs):
            path.append(op)
            depends.update(id(t) for t in op.outputs)

    first_new = len(graph.operations)
    grads: dict[int, Tensor] = {}
    for root in roots:
        if id(root) in depends:
            seed = seeds[id(root)]
            if seed is None:
                with _at(graph, root.op):
                    seed = ops.constant(1.0, Shape(), root.dtype)
            previous = grads.get(id(root))
            grads[id(root)] = seed if previous is None else ops.add(previous, seed)
    for op in reversed(path):
        out_grads = [grads.get(id(t)) for t in op.outputs]
        if all(g is None for g in out_grads):
            continue
        with _at(graph, op):
            in_grads = PRIMITIVES[op.primitive].grad(op, out_grads)
            if len(in_grads) != len(op.inputs):
                raise AssertionError(f"{op.primitive} gradient rule gave {len(in_grads)} gradients for {len(op.inputs)} inputs")
            for t, g in zip(op.inputs, in_grads):
                if g is None or id(t) not in depends or t.dtype not in FLOAT_DTYPES:
                    continue
                if g.shape != t.shape or g.dtype != t.dtype:
                    raise AssertionError(
                        f"{op.primitive} gradient rule ({op.params.get('fn', '')}) gave {g.shape} {g.dtype} "
                        f"for an input of {t.shape} {t.dtype}"
                    )
                previous = grads.get(id(t))
                grads[id(t)] = g if previous is None else ops.add(previous, g)

    results = []
    for x in targets:
        g = grads.get(id(x))
        if g is None:
            with _at(graph, x.op):
                g = ops.zeros(x.shape, x.dtype)
        results.append(g)
    _prune(graph, first_new, results)
    return results


def _prune(graph: Graph, first_new: int, keep: list[Tensor]) -> None:
    """Drop the gradient ops (recorded from `first_new` on) that no result uses:
    gradients of inputs nothing asked for, scalar constants that were splatted."""
    new = graph.operations[first_new:]
    new_ids = {id(op) for op in new}
    live: set[int] = set()
    stack = [t.op for t in keep]
    while stack:
        op = stack.pop()
        if id(op) in live or id(op) not in new_ids:
            continue
        live.add(id(op))
        stack.extend(t.op for t in op.inputs)
    graph.operations[first_new:] = [op for op in new if id(op) in live]


def value_and_grad(fn: Callable, *, wrt=None, has_aux: bool = False) -> Callable:
    """``fn`` -> a function returning ``(value, grads)``.

    `fn` returns a scalar float tensor (with `has_aux`, a pair ``(value,
    aux)``; the wrapped function then returns ``((value, aux), grads)``).
    `grads` are the gradients of the value with respect to `wrt` (anything
    `grad` takes), by default every trainable parameter of the graph after
    `fn` has run -- a dict ``"params/..." -> gradient``, parameters that
    `fn` creates included.
    """

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        if has_aux:
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise fail("value_and_grad(has_aux=True): the function must return a pair (value, aux)")
            value = out[0]
        else:
            value = out
        targets = trainable_variables() if wrt is None else wrt
        return (tuple(out) if has_aux else value), grad(value, targets)

    return wrapped
