"""The loop primitive: ``scan`` -- a body graph run once per position of a
dim, lowered to one ``stablehlo.while`` (docs/IR.md, "Loops").

Inputs, in order: the carry's initial values, the stacked inputs (each with
the loop dim first; the body reads trip ``t``'s slice), the captured values
(read unchanged by every trip).  Outputs: the carry's final values, then the
stacked outputs (loop dim first; trip ``t`` writes position ``t``).  A
reverse loop runs its trips from the last position to the first.

The gradient is a reverse loop (`Scan.grad`): its body differentiates the
forward body against the carried cotangents.  What the backward body needs
of the forward trip is saved by the forward loop as extra stacked outputs
(appended to the forward op when the gradient is built): with
``recompute``, only each trip's incoming carry, the backward body running
the block's forward again (per-layer rematerialization); otherwise the
block's intermediate values the gradient reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from jax.extend.mlir import ir
from jax.extend.mlir.dialects import stablehlo as hlo

from mtfc import ir as mir
from mtfc.frontend.dims import Shape
from mtfc.frontend.graph import FLOAT_DTYPES, Graph, Operation, Tensor, current_graph, tracing
from mtfc.frontend.primitives.base import Primitive, bind, register


@dataclass
class Body:
    """A loop body: its graph, its placeholders by kind, and what a trip returns."""

    graph: Graph
    carry_in: list[Tensor]
    x_in: list[Tensor]  # slices of the stacked inputs
    capture_in: list[Tensor]
    carry_out: list[Tensor]
    y_out: list[Tensor]  # slices of the stacked outputs
    saved: dict = field(default_factory=dict)  # recompute flag -> (forward tensors saved, their outer outputs)

    def with_outputs(self, extra: list[Tensor]) -> "Body":
        return Body(self.graph, self.carry_in, self.x_in, self.capture_in, self.carry_out, self.y_out + extra)


def _stacked(dim, shape: Shape) -> Shape:
    return Shape([dim] + list(shape))


def _is_state(t: Tensor) -> bool:
    """Stored state (a parameter or optimizer state, or the optimizer's update of one)."""
    op = t.op
    if op.layout_class == "param":
        return True
    if op.primitive == "variable":
        graph = op.graph
        return any(v.tensor is t and v.role in ("parameter", "optimizer_state") for v in graph.variables)
    return False


def _zero_const(lx, sizes, dtype: str, dims) -> ir.Value:
    t = lx.type_of(sizes, dtype)
    element = mir.mlir_type(dtype)
    if dtype in FLOAT_DTYPES:
        attr = ir.FloatAttr.get(element, 0.0)
    else:
        attr = ir.IntegerAttr.get(element, 0)
    return lx.tag(hlo.ConstantOp(ir.DenseElementsAttr.get_splat(t, attr)), dims)


@register
class Scan(Primitive):
    """params: body (`Body`), dim (the loop's `Dim`), reverse, recompute,
    attributes (name -> int | str, written on the while as ``mtfc.<name>``),
    n_ys (how many stacked outputs the user asked for; the gradient appends
    saved ones after them), y_classes (the layout class of each stacked
    output, default ``activation``)."""

    name = "scan"

    def infer(self, inputs, params):
        body: Body = params["body"]
        dim = params["dim"]
        return [(t.shape, t.dtype) for t in body.carry_out] + [(_stacked(dim, y.shape), y.dtype) for y in body.y_out]

    # ------------------------------------------------------------- lowering
    def lower(self, lx, op, args):
        from mtfc.frontend.lower import live_operations, lower_ops

        body: Body = op.params["body"]
        dim = op.params["dim"]
        n = dim.size
        nc, nx = len(body.carry_in), len(body.x_in)
        ny = len(body.y_out)
        carries, xs, caps = args[:nc], args[nc:nc + nx], args[nc + nx:]
        outer_x, outer_k = op.inputs[nc:nc + nx], op.inputs[nc + nx:]
        y_dims = [[dim.name, *y.shape.names] for y in body.y_out]
        # a stacked output's class: `param` for the gradient of a stacked parameter, so that an FSDP
        # layout keeps its accumulator split (each trip's slice is resharded into it)
        y_classes = list(op.params.get("y_classes") or []) + ["activation"] * ny
        y_classes = y_classes[:ny]
        saved_class = lx.layout_class
        y_init = []
        for y, d, cls in zip(body.y_out, y_dims, y_classes):
            lx.layout_class = cls
            y_init.append(_zero_const(lx, [n] + list(y.shape.sizes), y.dtype, d))
        lx.layout_class = saved_class
        counter = lx.scalar(0, "i32")
        operands = [counter, *carries, *y_init, *xs, *caps]
        dims = ([[]] + [list(t.shape.names) for t in body.carry_in] + y_dims
                + [list(t.shape.names) for t in outer_x] + [list(t.shape.names) for t in outer_k])
        classes = (["activation"] * (1 + nc) + y_classes + ["param" if _is_state(t) else "activation" for t in outer_x]
                   + ["param" if _is_state(t) else "activation" for t in outer_k])
        types = [v.type for v in operands]
        loop = hlo.WhileOp(types, operands)
        mir.set_op_result_dims(loop.operation, dims)
        loop.operation.attributes[mir.CLASSES] = mir.str_array(classes)
        loop.operation.attributes[mir.LOOP_DIM] = ir.StringAttr.get(dim.name)
        i64 = ir.IntegerType.get_signless(64)
        loop.operation.attributes[mir.TRIP_COUNT] = ir.IntegerAttr.get(i64, n)
        for key, value in (op.params.get("attributes") or {}).items():
            loop.operation.attributes[f"mtfc.{key}"] = (ir.IntegerAttr.get(i64, int(value)) if isinstance(value, int)
                                                        else ir.StringAttr.get(str(value)))

        cond = loop.regions[0].blocks.append(*types)
        with ir.InsertionPoint(cond):
            limit = lx.scalar(n, "i32")
            less = lx.tag(hlo.CompareOp(cond.arguments[0], limit, hlo.ComparisonDirectionAttr.get("LT")), [])
            hlo.ReturnOp([less])

        block = loop.regions[1].blocks.append(*types)
        a = list(block.arguments)
        i_arg, carry_args = a[0], a[1:1 + nc]
        y_args = a[1 + nc:1 + nc + ny]
        x_args = a[1 + nc + ny:1 + nc + ny + nx]
        cap_args = a[1 + nc + ny + nx:]
        with ir.InsertionPoint(block):
            index = i_arg
            if op.params.get("reverse"):
                last = lx.scalar(n - 1, "i32")
                index = lx.tag(hlo.SubtractOp(last, i_arg), [])
            zero = lx.scalar(0, "i32")
            values: dict[int, ir.Value] = {}
            for t, v in zip(body.carry_in, carry_args):
                values[id(t)] = v
            for t, v in zip(body.capture_in, cap_args):
                values[id(t)] = v
            for t, v, outer in zip(body.x_in, x_args, outer_x):
                starts = [index] + [zero] * len(t.shape)
                piece = hlo.DynamicSliceOp(v, starts, ir.DenseI64ArrayAttr.get([1] + list(t.shape.sizes)))
                piece = lx.tag(piece, outer.shape.names)
                values[id(t)] = lx.tag(hlo.ReshapeOp(lx.type(t), piece), t.shape.names)
            outputs = body.carry_out + body.y_out
            lower_ops(lx, live_operations(body.graph, outputs), values)
            lx.layout_class = saved_class
            new_ys = []
            for y, acc, d, cls in zip(body.y_out, y_args, y_dims, y_classes):
                one = lx.tag(hlo.ReshapeOp(lx.type_of([1] + list(y.shape.sizes), y.dtype), values[id(y)]), d)
                starts = [index] + [zero] * len(y.shape)
                lx.layout_class = cls
                new_ys.append(lx.tag(hlo.DynamicUpdateSliceOp(acc, one, starts), d))
                lx.layout_class = saved_class
            step = lx.scalar(1, "i32")
            next_i = lx.tag(hlo.AddOp(i_arg, step), [])
            hlo.ReturnOp([next_i, *[values[id(t)] for t in body.carry_out], *new_ys, *x_args, *cap_args])
        results = list(loop.results)
        return results[1:1 + nc] + results[1 + nc:1 + nc + ny]

    # ------------------------------------------------------------- gradient
    def grad(self, op, output_grads):
        from mtfc.frontend import ops
        from mtfc.frontend.autodiff import vjp

        body: Body = op.params["body"]
        dim = op.params["dim"]
        remat = bool(op.params.get("recompute") or op.recompute)
        nc, nx = len(body.carry_in), len(body.x_in)
        n_user_y = op.params["n_ys"]
        carry_cts = output_grads[:nc]
        y_cts = output_grads[nc:nc + n_user_y]
        outer = current_graph()
        floats = [t.dtype in FLOAT_DTYPES for t in body.carry_in]

        g = Graph.body(outer)
        with tracing(g):
            # the backward trip's placeholders: carried cotangents, then per-trip slices, then captures
            dcarry = [g.add_input(t.shape, t.dtype, "carry_cotangent") if f else None for t, f in zip(body.carry_in, floats)]
            dcap_acc = [g.add_input(t.shape, t.dtype, "capture_gradient") if t.dtype in FLOAT_DTYPES else None
                        for t in body.capture_in]
            saved_carry = [g.add_input(t.shape, t.dtype, "saved_carry") for t in body.carry_in]
            x_slices = [g.add_input(t.shape, t.dtype, "slice") for t in body.x_in]
            dy = [g.add_input(y.shape, y.dtype, "output_cotangent") if ct is not None else None
                  for y, ct in zip(body.y_out[:n_user_y], y_cts)]
            caps = [g.add_input(t.shape, t.dtype, "capture") for t in body.capture_in]

            # the forward trip, again
            mapping: dict[int, Tensor] = {}
            for src, dst in zip(body.carry_in + body.x_in + body.capture_in, saved_carry + x_slices + caps):
                mapping[id(src)] = dst
            from mtfc.frontend.lower import live_operations

            replayed = _replay(g, live_operations(body.graph, body.carry_out + body.y_out[:n_user_y]), mapping)
            n_forward = len(g.operations)
            outs = [mapping[id(t)] for t in body.carry_out + body.y_out[:n_user_y]]
            cts = list(dcarry) + list(dy)
            wrt = [t for t, f in zip(saved_carry, floats) if f] + [t for t in x_slices if t.dtype in FLOAT_DTYPES] \
                + [t for t in caps if t.dtype in FLOAT_DTYPES]
            grads = iter(vjp(outs, cts, wrt))
            d_carry = [next(grads) if f else None for f in floats]
            d_x = [next(grads) if t.dtype in FLOAT_DTYPES else None for t in x_slices]
            d_cap = [next(grads) if t.dtype in FLOAT_DTYPES else None for t in caps]
            new_acc = [ops.add(acc, d) if acc is not None else None for acc, d in zip(dcap_acc, d_cap)]

        # What the backward trip reads of the forward trip: the saved values.
        inverse = {id(v): k for k, v in mapping.items()}
        forward_of = {id(t): t for t in _tensors(body)}
        if remat:
            keep = list(saved_carry)
        else:
            keep = [t for t in _residuals(g, n_forward, replayed, carry={id(t) for t in saved_carry})
                    if id(t) in inverse]  # not: what a nested loop's gradient added to its replay (recomputed)
        saved_forward = [forward_of[inverse[id(t)]] for t in keep]
        if not remat:
            keep = _rewire(g, n_forward, keep)
            # a replayed op that stays live (a nested loop, whose gradient added outputs to its replay)
            # may read the incoming carry: saved too, when used
            for t in saved_carry:
                if all(t is not k for k in keep):
                    keep.append(t)
                    saved_forward.append(forward_of[inverse[id(t)]])
        carry_out = [d for d in d_carry if d is not None] + [a for a in new_acc if a is not None]
        used = _used_inputs(g, carry_out + [d for d in d_x if d is not None])
        saved_forward = [f for f, t in zip(saved_forward, keep) if id(t) in used]
        keep = [t for t in keep if id(t) in used]

        # the forward loop writes them as extra stacked outputs
        key = (remat, tuple(id(t) for t in saved_forward))
        if key in body.saved:
            saved_outer = body.saved[key]
        else:
            new_body = op.params["body"].with_outputs(saved_forward)
            new_body.saved = body.saved
            op.params["body"] = new_body
            saved_outer = []
            for t in saved_forward:
                out = Tensor(_stacked(dim, t.shape), t.dtype, op, len(op.outputs))
                op.outputs.append(out)
                saved_outer.append(out)
            body.saved[key] = saved_outer

        # the backward loop
        carry_in = [t for t in dcarry if t is not None] + [t for t in dcap_acc if t is not None]
        slices = list(keep) + x_slices + [t for t in dy if t is not None]
        outer_slices = saved_outer + list(op.inputs[nc:nc + nx]) + [ct for ct in y_cts if ct is not None]
        pairs = [(s, o) for s, o in zip(slices, outer_slices) if id(s) in used]
        cap_pairs = [(c, o) for c, o in zip(caps, op.inputs[nc + nx:]) if id(c) in used]
        # captures the backward body made itself (constants of enclosing graphs are not expected)
        back = Body(g, carry_in, [s for s, _ in pairs], [c for c, _ in cap_pairs] + [i for _, i in g.captures],
                    carry_out, [d for d in d_x if d is not None])
        init = [ct if ct is not None else ops.zeros(t.shape, t.dtype)
                for t, ct, f in zip(body.carry_in, carry_cts, floats) if f]
        init += [ops.zeros(t.shape, t.dtype) for t in dcap_acc if t is not None]
        inputs = init + [o for _, o in pairs] + [o for _, o in cap_pairs] + [o for o, _ in g.captures]
        y_classes = ["param" if _is_state(o) else "activation"
                     for o, d in zip(op.inputs[nc:nc + nx], d_x) if d is not None]
        results = bind("scan", inputs, name="scan", body=back, dim=dim, reverse=not op.params.get("reverse"),
                       recompute=False, attributes=None, n_ys=len(back.y_out), y_classes=y_classes)
        r = iter(results)
        grad_carry = [next(r) if f else None for f in floats]
        grad_cap = [next(r) if t is not None else None for t in dcap_acc]
        grad_x = [next(r) if d is not None else None for d in d_x]
        return grad_carry + grad_x + grad_cap


def _tensors(body: Body):
    yield from body.carry_in
    yield from body.x_in
    yield from body.capture_in
    for op in body.graph.operations:
        yield from op.outputs


def _replay(g: Graph, operations: list[Operation], mapping: dict[int, Tensor]) -> list[Operation]:
    """Record copies of `operations` in `g`, reading `mapping`'s tensors
    (filled with the copies' outputs)."""
    copies = []
    for op in operations:
        if op.primitive == "body_input":
            continue
        params = dict(op.params)  # a nested loop's gradient replaces its body: never share the dict
        new = Operation(op.primitive, [mapping[id(t)] for t in op.inputs], params, op.name,
                        op.location, layout_class=op.layout_class, graph=g)
        new.outputs = [Tensor(t.shape, t.dtype, new, i) for i, t in enumerate(op.outputs)]
        g.operations.append(new)
        for t, c in zip(op.outputs, new.outputs):
            mapping[id(t)] = c
        copies.append(new)
    return copies


def _depends_on(op: Operation, sources: set[int], memo: dict[int, bool]) -> bool:
    """Whether `op` reads, through its inputs, one of the tensors `sources`."""
    if id(op) in memo:
        return memo[id(op)]
    result = any(id(t) in sources or _depends_on(t.op, sources, memo) for t in op.inputs)
    memo[id(op)] = result
    return result


def _residuals(g: Graph, n_forward: int, replayed: list[Operation], carry: set[int]) -> list[Tensor]:
    """The forward values the gradient ops read that depend on the trip's
    incoming carry (the carry itself included): what the forward loop saves
    when it does not recompute.  Values computed from the trip's slices and
    the captures alone (a parameter slice's cast, a mask) are recomputed by
    the backward trip instead of stored once per trip."""
    forward_ids = {id(t) for op in replayed for t in op.outputs} | carry
    memo: dict[int, bool] = {}
    seen: dict[int, Tensor] = {}
    for op in g.operations[n_forward:]:
        for t in op.inputs:
            if id(t) in forward_ids and id(t) not in seen:
                if id(t) in carry or _depends_on(t.op, carry, memo):
                    seen[id(t)] = t
    return list(seen.values())


def _rewire(g: Graph, n_forward: int, keep: list[Tensor]) -> list[Tensor]:
    """Make the gradient ops read saved slices instead of the replayed
    forward values in `keep`; returns the placeholders standing for them
    (a saved carry is one already).  Replayed ops nothing reads any more
    are left dead (never lowered)."""
    replace: dict[int, Tensor] = {}
    placeholders = []
    for t in keep:
        if t.op.primitive != "body_input":
            replace[id(t)] = g.add_input(t.shape, t.dtype, "saved")
        placeholders.append(replace.get(id(t), t))
    for op in g.operations[n_forward:]:
        op.inputs = [replace.get(id(t), t) for t in op.inputs]
    return placeholders


def _used_inputs(g: Graph, outputs: list[Tensor]) -> set[int]:
    """Ids of the placeholders the live ops of `g` (for `outputs`) read, and of outputs that are placeholders."""
    from mtfc.frontend.lower import live_operations

    used = {id(t) for t in outputs if t.op.primitive == "body_input"}
    for op in live_operations(g, outputs):
        for t in op.inputs:
            if t.op.primitive == "body_input":
                used.add(id(t))
    return used


__all__ = ["Body", "Scan"]
