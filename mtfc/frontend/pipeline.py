"""Pipeline parallelism inside the one SPMD program: `pipeline`, the circular
(GPipe-order) pipeline of MaxText's pipeline.py written in named-dim ops.

The model's `layers` blocks are cut into ``S = stages.size`` stages of
``L = layers / S`` consecutive blocks.  Every stage parameter carries the
`stages` dim first (``[stages, ...]``, one slice per stage), so a layout rule
``stages:pipe`` puts stage s's weights on the devices of `pipe` position s.
The batch is cut into M microbatches; a state buffer ``[stages, ...]`` holds
each stage's current activation.  One *tick* applies all stages at once (the
block's named einsums treat `stages` as a batch dim) and then shifts the
buffer by one along `stages` (`mtf.shift`: along a split `stages` dim the
explicit partitioner sends it with one ``collective_permute``).  Microbatch t
enters stage 0 at tick t; the last stage finishes microbatch t at tick
t + S - 1; M + S - 1 ticks in all, of which each stage idles S - 1: the bubble
fraction (S - 1) / (M + S - 1).

The train step's backward runs the ticks in reverse (autodiff of this
forward): all M forwards, then all M backwards -- GPipe's order.

Numerics equal the unpipelined model: stage s, block j of the pipeline
computes what block ``s * L + j`` of the plain model computes, on the same
rows (microbatch m is the batch rows ``i * M + m``, see `pipeline`).
"""

from __future__ import annotations

import contextlib

from mtfc.frontend import ops
from mtfc.frontend.dims import Dim, Shape
from mtfc.frontend.graph import Tensor, current_graph, fail, scope

TICKS = "pipeline_ticks"  # the dim the tick loop runs over (never split)
MICROBATCHES = "microbatches"


def bubble_fraction(stages: int, microbatches: int) -> float:
    """The share of stage-ticks spent idle: (S - 1) / (M + S - 1)."""
    return (stages - 1) / (microbatches + stages - 1)


@contextlib.contextmanager
def _stacked_variables(dim: Dim, *, reuse: bool):
    """Every variable created inside gets `dim` prepended to its dims; with
    `reuse`, creating a variable that already exists (same name, same dims)
    returns the existing one (the unrolled ticks create each block's
    variables M + S - 1 times).  The graph's own `stack_variables` replaces
    this once it exists (mtfc.frontend.graph)."""
    graph = current_graph()
    original = graph.add_variable
    created: dict[str, Tensor] = {}

    def add_variable(name, role, shape, dtype, init, trainable=False):
        shape = Shape([dim, *shape])
        if reuse and name in created:
            t = created[name]
            if t.shape != shape or t.dtype != dtype:
                raise fail(f"pipeline: the block creates variable {name!r} as {shape} {dtype} on one tick "
                           f"and {t.shape} {t.dtype} on another")
            return t
        t = original(name, role, shape, dtype, init, trainable)
        created[name] = t
        return t

    graph.add_variable = add_variable
    try:
        yield
    finally:
        del graph.add_variable  # the instance attribute: back to the class's method


def pipeline(block_fn, x: Tensor, *, layers: int, stages: Dim, microbatches: int, batch_dim=None,
             name: str = "pipeline") -> Tensor:
    """``layers`` applications of ``block_fn`` to `x`, pipelined over `stages`.

    Contract:
      * ``block_fn(h) -> h`` is one block (e.g. attention + feed-forward with
        residuals); it returns a tensor of h's dims and dtype and creates its
        parameters with `get_variable` (any layer does).  It is traced with
        an ``h`` that carries the `stages` dim first; its parameters are
        created ``[stages, ...]`` under ``params/<name>/layer<j>/...`` (block
        j of each stage), so ``params/<name>/layer<j>/X[s]`` is block
        ``s * layers/stages + j`` of the unpipelined model.
      * `stages`: a Dim (``Dim("stages", S)``) whose name is not one of x's
        dims; a layout rule ``stages:AXIS`` puts stage s on AXIS position s.
      * `layers` must be a multiple of ``S``; `microbatches` (M >= 1) must
        divide x's `batch_dim` (default: x's first dim).
      * Microbatch m is the batch rows ``i * M + m`` (the batch dim is split
        as ``[batch / M, microbatches]``), so a layout that splits the batch
        needs no communication to cut or reassemble microbatches.
      * Bubble slots run the block on zeros; the block must be finite there
        (their results are discarded and get zero gradient).
      * Returns x's dims and dtype: the last stage's outputs, reassembled
        (one sum over `stages`: an all-reduce over its axis, once).
    Errors (one line, at the calling line): `layers` not a multiple of S,
    M not dividing the batch, M or S below 1, `stages` already one of x's
    dims, a block that changes its input's dims or dtype.
    """
    if not isinstance(stages, Dim):
        raise fail(f"pipeline: stages must be a Dim, e.g. mtf.Dim('stages', 4), got {stages!r}")
    S = stages.size
    M = int(microbatches)
    if S < 1:
        raise fail(f"pipeline: {stages} must have at least one stage")
    if stages.name in x.shape.names:
        raise fail(f"pipeline: the stages dim {stages.name!r} is already a dim of the input {x.shape}")
    if M < 1:
        raise fail(f"pipeline: microbatches must be at least 1, got {microbatches}")
    if layers < 1 or layers % S:
        raise fail(f"pipeline: {layers} layers do not divide into {S} stages ({stages.name}={S})")
    batch = x.shape.get(batch_dim if batch_dim is not None else x.shape[0])
    if batch.size % M:
        raise fail(f"pipeline: {M} microbatches do not divide the batch dim {batch.name}={batch.size}")
    per_stage = layers // S
    mb_batch = Dim(batch.name, batch.size // M)
    micro = Dim(MICROBATCHES, M)
    ticks = M + S - 1

    # [.., batch, ..] -> [.., batch/M, microbatches, ..]: microbatch m = rows i*M + m
    xs = ops.replace_dimensions(x, batch, [mb_batch, micro])
    mb_shape = Shape([d for d in xs.shape if d.name != MICROBATCHES])
    state_shape = Shape([stages, *mb_shape])
    first_stage = ops.equal(ops.range_(stages), 0)
    last_stage = ops.cast(ops.equal(ops.range_(stages), S - 1), x.dtype)

    def stage(h: Tensor) -> Tensor:
        for j in range(per_stage):
            with scope(f"layer{j}"):
                out = block_fn(h)
            if not isinstance(out, Tensor) or out.shape != h.shape or out.dtype != h.dtype:
                got = f"{out.shape} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
                raise fail(f"pipeline: the block must return its input's dims and dtype {h.shape} {h.dtype}, got {got}")
            h = out
        return h

    def tick(state: Tensor, x_t: Tensor) -> tuple[Tensor, Tensor]:
        # the previous tick's outputs move one stage on (the one permute);
        # stage 0 takes this tick's microbatch (zeros while draining)
        moved = ops.shift(state, 1, stages)
        h = ops.where(first_stage, x_t, moved)
        out = stage(h)
        return out, out * last_stage

    state = ops.zeros(state_shape, x.dtype)
    done = ops.zeros(Shape([stages, *_with_micro_after(mb_shape, mb_batch, micro)]), x.dtype)
    with scope(name), _stacked_variables(stages, reuse=True):
        for t in range(ticks):
            if t < M:
                x_t = ops.reshape(ops.slice(xs, t, 1, micro), mb_shape)
            else:
                x_t = ops.zeros(mb_shape, x.dtype)
            state, y = tick(state, x_t)
            if t >= S - 1:  # microbatch t - S + 1 leaves the last stage
                done = done + y * ops.one_hot(ops.constant(t - S + 1, (), "i32"), micro, x.dtype)
    # the one sum over `stages` (only the last stage's slot is non-zero)
    return ops.replace_dimensions(ops.reduce_sum(done, stages), [mb_batch, micro], batch)


def _with_micro_after(mb_shape: Shape, mb_batch: Dim, micro: Dim) -> Shape:
    """mb_shape with `micro` right after the batch dim."""
    dims = []
    for d in mb_shape:
        dims.append(d)
        if d.name == mb_batch.name:
            dims.append(micro)
    return Shape(dims)
