"""Loops over a dim: `scan` and the stacked layers built on it (`repeat`).

The body function is traced once, into a body graph; the loop lowers to one
``stablehlo.while`` whose body is that graph (docs/IR.md, "Loops"), so the
size of the module and the time to trace and partition it do not grow with
the number of trips.  Parameters the body creates are stacked along the loop
dim (``params/blocks/attention/w_q`` with dims ``[layers, ...]``) and each
trip reads its layer's slice.
"""

from __future__ import annotations

from typing import Callable

from mtfc.frontend import ops
from mtfc.frontend.dims import Dim
from mtfc.frontend.graph import Graph, Tensor, current_graph, fail, scope, tracing
from mtfc.frontend.primitives import bind
from mtfc.frontend.primitives.loop import Body


def _flatten(tree, what: str) -> tuple[list[Tensor], Callable]:
    """A tensor, a tuple/list of tensors, a dict of them, or None -> (leaves, rebuild)."""
    if tree is None:
        return [], lambda leaves: None
    if isinstance(tree, Tensor):
        return [tree], lambda leaves: leaves[0]
    if isinstance(tree, dict):
        keys = list(tree)
        values = [tree[k] for k in keys]
        rebuild = lambda leaves: dict(zip(keys, leaves))  # noqa: E731
    elif isinstance(tree, (list, tuple)):
        values = list(tree)
        rebuild = (lambda leaves: list(leaves)) if isinstance(tree, list) else tuple
    else:
        raise fail(f"scan: {what} must be a tensor, a tuple, list or dict of tensors, or None; got {type(tree).__name__}")
    for v in values:
        if not isinstance(v, Tensor):
            raise fail(f"scan: {what} holds a {type(v).__name__}, not an mtfc tensor")
    return values, rebuild


def scan(fn: Callable, init, xs=None, *, dim: Dim, reverse: bool = False, stack_variables: bool = True,
         recompute: bool = False, loop_attributes: dict | None = None, unroll: bool = False):
    """Run ``carry, y = fn(carry, x)`` once per position of `dim`.

    `init` (the carry) is a tensor or a tuple/list/dict of tensors; `fn`
    must return a carry of the same structure, dims and dtypes.  `xs` (same
    kinds, or None) are stacked along `dim`: trip ``t`` passes their slices
    at position ``t`` (without `dim`) as `x`.  `fn` may return `y` (tensors,
    or None); the result is ``(carry, ys)`` with each y stacked along `dim`
    first.  With `reverse`, trips run from the last position to the first.

    Parameters `fn` creates (`get_variable`) are, with `stack_variables`,
    stored stacked along `dim` (``[dim, *dims]``) and `fn` reads trip
    ``t``'s slice: the layers of a stack; otherwise created once and read
    by every trip.  Tensors `fn` reads from outside are captured.  The body
    is traced once: Python control flow in `fn` cannot depend on the trip.

    The gradient is a reverse loop.  With `recompute` (or inside
    ``mtf.recompute()``), the forward loop keeps only each trip's incoming
    carry and the backward loop recomputes the trip's forward first
    (per-layer rematerialization); otherwise the forward loop also stores,
    per trip, the intermediate values the gradient reads.
    `loop_attributes` (name -> int or str) are written on the loop as
    ``mtfc.<name>`` for tools that read the schedule from the IR.

    With `unroll`, `fn` is traced once per trip instead (no loop): the same
    computation, the same parameters (stacked, each trip reading its slice),
    for comparing with the loop and for models whose trips differ.
    """
    if not isinstance(dim, Dim):
        raise fail(f"scan: dim must be an mtf.Dim (the dim the trips run over), got {type(dim).__name__}")
    graph = current_graph()
    carry, rebuild_carry = _flatten(init, "the carry")
    if not carry:
        raise fail("scan: the carry is empty; a loop needs at least one carried tensor")
    stacked_xs, rebuild_x = _flatten(xs, "xs")
    for t in carry:
        if dim.name in t.shape.names:
            raise fail(f"scan: the carry {t.shape} has the loop dim {dim.name!r}")
    sliced = []
    for x in stacked_xs:
        if dim.name not in x.shape.names:
            raise fail(f"scan: xs {x.shape} has no loop dim {dim.name!r}")
        if x.shape.get(dim.name).size != dim.size:
            raise fail(f"scan: xs {x.shape} has {dim.name}={x.shape.get(dim.name).size}, the loop runs {dim.size} trips")
        rest = [d for d in x.shape if d.name != dim.name]
        sliced.append(x if x.shape.names[0] == dim.name else ops.transpose(x, [dim] + rest))

    if unroll:
        return _unrolled(fn, carry, rebuild_carry, sliced, rebuild_x, xs is not None, dim, reverse, stack_variables)
    body = Graph.body(graph, stack_dim=dim if stack_variables else None)
    with tracing(body):
        carry_in = [body.add_input(t.shape, t.dtype, "carry") for t in carry]
        x_in = [body.add_input(x.shape.without([dim]), x.dtype, "slice") for x in sliced]
        result = fn(rebuild_carry(carry_in), rebuild_x(x_in) if xs is not None else None)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise fail("scan: fn must return a pair (carry, y); y may be None")
        carry_out, _ = _flatten(result[0], "the returned carry")
        ys, rebuild_y = _flatten(result[1], "y")
        if len(carry_out) != len(carry):
            raise fail(f"scan: fn returned {len(carry_out)} carry tensors for a carry of {len(carry)}")
        fixed = []
        for before, after in zip(carry_in, carry_out):
            after = body.capture(after)
            if after.dtype != before.dtype or sorted(after.shape.names) != sorted(before.shape.names) or \
                    any(after.shape.get(d.name).size != d.size for d in before.shape):
                raise fail(f"scan: fn returned a carry {after.shape} {after.dtype} for {before.shape} {before.dtype}; "
                           "a loop's carry keeps its dims and dtype")
            fixed.append(after if after.shape == before.shape else ops.transpose(after, before.shape))
        ys = [body.capture(y) for y in ys]
        for y in ys:
            if dim.name in y.shape.names:
                raise fail(f"scan: y {y.shape} already has the loop dim {dim.name!r}")
    x_in += [inner for _, inner in body.stacked]
    sliced += [outer if outer.shape.names[0] == dim.name else ops.transpose(outer, [dim, *outer.shape.without([dim])])
               for outer, _ in body.stacked]
    captures = body.captures
    loop = Body(body, carry_in, x_in, [inner for _, inner in captures], fixed, ys)
    outputs = bind("scan", carry + sliced + [outer for outer, _ in captures], name="scan", body=loop, dim=dim,
                   reverse=reverse, recompute=recompute, attributes=dict(loop_attributes or {}), n_ys=len(ys))
    return rebuild_carry(outputs[:len(carry)]), rebuild_y(outputs[len(carry):len(carry) + len(ys)])


def _unrolled(fn, carry, rebuild_carry, sliced, rebuild_x, has_xs, dim, reverse, stack_variables):
    """`scan` with the body traced once per trip (``unroll=True``)."""
    graph = current_graph()
    rest = [x.shape.without([dim]) for x in sliced]
    stacked: dict = {}
    ys_by_trip: dict[int, list[Tensor]] = {}
    rebuild_y = None
    saved = graph.unrolled_trip
    for trip in (reversed(range(dim.size)) if reverse else range(dim.size)):
        xs_t = [ops.reshape(ops.slice(x, trip, 1, dim), r) for x, r in zip(sliced, rest)]
        graph.unrolled_trip = (dim if stack_variables else None, trip, stacked, saved)
        try:
            result = fn(rebuild_carry(carry), rebuild_x(xs_t) if has_xs else None)
        finally:
            graph.unrolled_trip = saved
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise fail("scan: fn must return a pair (carry, y); y may be None")
        new_carry, _ = _flatten(result[0], "the returned carry")
        if len(new_carry) != len(carry) or any(a.dtype != b.dtype or sorted(a.shape.names) != sorted(b.shape.names)
                                               for a, b in zip(new_carry, carry)):
            raise fail("scan: fn must return a carry with the dims and dtypes of the carry it was given")
        carry = [ops.transpose(a, b.shape) for a, b in zip(new_carry, carry)]
        ys_by_trip[trip], rebuild_y = _flatten(result[1], "y")
    one = Dim(dim.name, 1)
    ys = [ops.concat([ops.reshape(ys_by_trip[t][k], [one] + list(ys_by_trip[t][k].shape)) for t in range(dim.size)],
                     one.name, new_name=None) for k in range(len(ys_by_trip[0]))]
    return rebuild_carry(carry), rebuild_y(ys)


def repeat(block_fn: Callable, x, n: int, *, dim_name: str = "layers", name: str = "blocks", recompute: bool = False,
           unroll: bool = False):
    """`n` stacked copies of a block: ``x = block_fn(x)`` n times, each with
    its own parameters, as one loop (`scan`).

    `x` is a tensor (or a tuple/list/dict of tensors the block returns in the
    same form); the parameters the block creates are stored as
    ``params/<name>/...`` with a leading ``[dim_name: n]`` dim.  The block is
    traced once.  `recompute`: rematerialize each layer in the backward pass
    (see `scan`); `unroll`: trace the block n times instead of looping
    (same parameters, same numbers)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise fail(f"repeat: the number of layers must be a positive int, got {n!r}")
    with scope(name):
        carry, _ = scan(lambda c, _: (block_fn(c), None), x, dim=Dim(dim_name, n), recompute=recompute, unroll=unroll)
    return carry
