"""Pipeline parallelism inside the one SPMD program: `pipeline`, the circular
(GPipe-order) pipeline of MaxText's pipeline.py written in named-dim ops.

The model's `layers` blocks are cut into ``S = stages.size`` stages of
``L = layers / S`` consecutive blocks.  Every block parameter is stored
``[stages, layers, ...]`` (block j of stage s at ``[s, j]``), so a layout
rule ``stages:pipe`` puts stage s's weights on the devices of `pipe`
position s.
The batch is cut into M microbatches; a state buffer ``[stages, ...]`` holds
each stage's current activation.  One *tick* applies all stages at once (the
block's named einsums treat `stages` as a batch dim) and then shifts the
buffer by one along `stages` (`mtf.shift`: along a split `stages` dim the
explicit partitioner sends it with one ``collective_permute``).  Microbatch t
enters stage 0 at tick t; the last stage finishes microbatch t at tick
t + S - 1; M + S - 1 ticks in all, of which each stage idles S - 1: the bubble
fraction (S - 1) / (M + S - 1).  The ticks are one loop (`mtf.scan`), so the
module does not grow with M.

The train step's backward runs the ticks in reverse (autodiff of this
forward): all M forwards, then all M backwards -- GPipe's order.

Numerics equal the unpipelined model: stage s, block j of the pipeline
computes what block ``s * L + j`` of the plain model computes, on the same
rows (microbatch m is the batch rows ``i * M + m``, see `pipeline`).
"""

from __future__ import annotations

from mtfc.frontend import ops
from mtfc.frontend.dims import Dim, Shape
from mtfc.frontend.graph import Tensor, fail, scope, stack_variables
from mtfc.frontend.scan import repeat, scan

TICKS = "pipeline_ticks"  # the dim the tick loop runs over (never split)
MICROBATCHES = "microbatches"
LAYERS = "layers"  # the blocks of one stage (an inner loop's dim, never split)


def bubble_fraction(stages: int, microbatches: int) -> float:
    """The share of stage-ticks spent idle: (S - 1) / (M + S - 1)."""
    return (stages - 1) / (microbatches + stages - 1)


def pipeline(block_fn, x: Tensor, *, layers: int, stages: Dim, microbatches: int, batch_dim=None,
             name: str = "pipeline", unroll: bool = False, stage_loop: bool = False) -> Tensor:
    """``layers`` applications of ``block_fn`` to `x`, pipelined over `stages`.

    Contract:
      * ``block_fn(h) -> h`` is one block (e.g. attention + feed-forward with
        residuals); it returns a tensor of h's dims and dtype and creates its
        parameters with `get_variable` (any layer does).  It is traced with
        an ``h`` that carries the `stages` dim; its parameters are stored
        ``params/<name>/stage/...`` with dims ``[stages, layers, ...]``
        (``layers`` of size layers/S), so ``X[s, j]`` is block
        ``s * layers/S + j`` of the unpipelined model.
      * `stages`: a Dim (``Dim("stages", S)``) whose name is not one of x's
        dims; a layout rule ``stages:AXIS`` puts stage s on AXIS position s.
      * `layers` must be a multiple of ``S``; `microbatches` (M >= 1) must
        divide x's `batch_dim` (default: x's first dim).
      * Microbatch m is the batch rows ``i * M + m`` (the batch dim is split
        as ``[batch / M, microbatches]``), so a layout that splits the batch
        needs no communication to cut or reassemble microbatches.
      * Bubble slots run the block on zeros; the block must be finite there
        (their results are discarded and get zero gradient).
      * The ticks are one ``stablehlo.while`` (`mtf.scan` over the dim
        ``pipeline_ticks`` of size M + S - 1, attributes
        ``mtfc.pipeline_stages``, ``mtfc.pipeline_microbatches``,
        ``mtfc.pipeline_stages_dim``), whose body applies a stage's blocks
        in a Python loop (`mtf.layers.repeat(..., unroll=True)`): each
        tick of the forward and of the gradient loop sends one permute.
        `stage_loop`: the blocks as an inner loop instead (the module does
        not grow with layers / S; the gradient loop then recomputes each
        tick's forward, its shift included: two permutes per gradient
        tick).  `unroll`: the ticks (and blocks) as Python loops (the same
        parameters, the same numbers, no loop attributes).
      * Returns x's dims and dtype: the last stage's outputs, reassembled
        (one sum over `stages`: an all-reduce over its axis, once).
    Errors (one line, at the calling line): `layers` not a multiple of S,
    M not dividing the batch, M or S below 1, `stages` already one of x's
    dims, x or `stages` using the pipeline's own dim names
    (``pipeline_ticks``, ``microbatches``, ``layers``), a block that changes
    its input's dims or dtype.
    """
    if not isinstance(stages, Dim):
        raise fail(f"pipeline: stages must be a Dim, e.g. mtf.Dim('stages', 4), got {stages!r}")
    S = stages.size
    M = int(microbatches)
    if S < 1:
        raise fail(f"pipeline: {stages} must have at least one stage")
    if stages.name in x.shape.names:
        raise fail(f"pipeline: the stages dim {stages.name!r} is already a dim of the input {x.shape}")
    for reserved in (TICKS, MICROBATCHES, LAYERS):
        if reserved in x.shape.names or reserved == stages.name:
            raise fail(f"pipeline: the dim name {reserved!r} is the pipeline's own; the input {x.shape} "
                       f"and the stages dim may not use it")
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
    ticks = Dim(TICKS, M + S - 1)

    # [.., batch, ..] -> [.., batch/M, microbatches, ..]: microbatch m = rows i*M + m
    xs = ops.replace_dimensions(x, batch, [mb_batch, micro])
    mb_shape = Shape([d for d in xs.shape if d.name != MICROBATCHES])
    state_shape = Shape([stages, *mb_shape])

    def checked_block(h: Tensor) -> Tensor:
        out = block_fn(h)
        if not isinstance(out, Tensor) or out.shape != h.shape or out.dtype != h.dtype:
            got = f"{out.shape} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
            raise fail(f"pipeline: the block must return its input's dims and dtype {h.shape} {h.dtype}, got {got}")
        return out

    def stage(h: Tensor) -> Tensor:
        # the stage's blocks, every parameter stacked [stages, layers, ...]:
        # a Python loop in the tick loop's body, or an inner loop
        with stack_variables(stages):
            return repeat(checked_block, h, per_stage, dim_name=LAYERS, name="stage",
                          unroll=unroll or not stage_loop)

    def tick(state: Tensor, x_t: Tensor):
        # the previous tick's outputs move one stage on (the one permute);
        # stage 0 takes this tick's microbatch (zeros while draining)
        moved = ops.shift(state, 1, stages)
        h = ops.where(ops.equal(ops.range_(stages), 0), x_t, moved)
        out = stage(h)
        return out, out * ops.cast(ops.equal(ops.range_(stages), S - 1), x.dtype)

    # microbatch t enters at tick t; ticks M .. M+S-2 feed zeros (the drain)
    fed = ops.pad(xs, (0, S - 1), micro, new_name=TICKS) if S > 1 else ops.rename_dimension(xs, micro, TICKS)
    state = ops.zeros(state_shape, x.dtype)
    attributes = {"pipeline_stages": S, "pipeline_microbatches": M, "pipeline_stages_dim": stages.name}
    with scope(name):
        _, ys = scan(tick, state, fed, dim=ticks, stack_variables=False, loop_attributes=attributes, unroll=unroll)
    # ys [ticks, stages, ...]: one sum over stages, then the last M ticks are the microbatches
    y = ops.rename_dimension(ops.slice(ops.reduce_sum(ys, stages), S - 1, M, ticks), TICKS, MICROBATCHES)
    y = ops.transpose(y, _with_micro_after(mb_shape, mb_batch, micro))
    return ops.replace_dimensions(y, [mb_batch, micro], batch)


def _with_micro_after(mb_shape: Shape, mb_batch: Dim, micro: Dim) -> Shape:
    """mb_shape with `micro` right after the batch dim."""
    dims = []
    for d in mb_shape:
        dims.append(d)
        if d.name == mb_batch.name:
            dims.append(micro)
    return Shape(dims)
