"""Mixture of experts: `moe`, Mesh TF's ``transformer_moe_layer_v1`` and GShard.

Tokens (every dim of the input but `io_dim`) are cut into groups of
`group_size` tokens.  The group dim keeps the name of the input's batch dim,
so it takes the batch dim's layout: each device routes its own groups.  A
softmax gate over the experts picks one expert per token (top-1, Switch) or
two (top-2, GShard); each expert takes at most `capacity` tokens from each
group, in token order (the first expert choices of a group before its second
choices), and the tokens over capacity are dropped -- their output is zero,
so that, added to the residual by the caller, they pass through unchanged.

Dispatch and combine are one-hot einsums over a ``[group, group_size,
experts, capacity]`` tensor.  The dispatched tokens are computed with the
experts dim under an unsplit name (``<experts>_unsplit``) and the group dim
split, then one reshape renames both -- the experts dim takes its own name
(and layout), the group dim becomes ``<batch>_unsplit`` -- so under a layout
that splits `batch` and `experts` over the same mesh axis the mesh axis
moves from the groups to the experts: one ``all_to_all`` in the explicit
program, and its mirror on the way back (Mesh TF's trick,
docs/passes/partition.md, "Mixture of experts").
"""

from __future__ import annotations

import math

from mtfc.frontend import ops
from mtfc.frontend.dims import Dim, Shape
from mtfc.frontend.graph import FLOAT_DTYPES, Tensor, fail, is_training, scope
from mtfc.frontend.model import get_variable, init

GATINGS = ("top1", "top2")


def capacity(group_size: int, num_experts: int, capacity_factor: float) -> int:
    """Tokens each expert takes from one group:
    ``ceil(group_size * capacity_factor / num_experts)``, at most `group_size`."""
    return min(group_size, max(1, math.ceil(group_size * capacity_factor / num_experts)))


def _first_argmax(x: Tensor, dim: Dim) -> Tensor:
    """i32 index of the largest element along `dim` (the first on ties)."""
    x = ops.stop_gradient(x)
    peak = ops.reduce_max(x, dim)
    return ops.reduce_min(ops.where(ops.equal(x, peak), ops.iota(x.shape, dim), dim.size), dim)


def moe(
    x: Tensor,
    *,
    io_dim: Dim,
    hidden_dim: Dim,
    experts_dim: Dim,
    group_size: int,
    batch_dim=None,
    gating: str = "top2",
    capacity_factor_train: float = 1.25,
    capacity_factor_eval: float = 2.0,
    activation=ops.relu,
    name: str = "moe",
) -> tuple[Tensor, Tensor]:
    """A mixture-of-experts feed-forward layer: ``(output, aux_loss)``.

    `x`'s dims other than `io_dim` are its tokens; `batch_dim` (default:
    x's first dim) leads them, and the group dim takes its name.  The tokens
    (``prod`` of those dims) must be a multiple of `group_size`.  Each of the
    `experts_dim.size` experts is ``activation(t @ wi) @ wo`` (wi ``[experts,
    io, hidden]``, wo ``[experts, hidden, io]``, no biases).

    `gating`: ``"top1"`` (Switch: the top expert, weighted by its gate
    probability) or ``"top2"`` (GShard/Mesh TF with second-expert policy
    "all": the two top experts, always both dispatched, weights their
    probabilities renormalized to sum to one).  Capacity per expert and
    group: `capacity` of ``capacity_factor_train`` while traced for a train
    step (`mtf.is_training()`), else ``capacity_factor_eval``.

    Returns `output`, x's shape and dtype -- the experts' outputs combined
    with the gate weights, zero for a dropped token; the caller adds it to
    the residual -- and `aux_loss`, the f32 scalar load-balancing loss of
    GShard / Mesh TF: per group, ``num_experts * sum_e mean_gate_e *
    fraction_e`` (mean gate probability of expert e times the fraction of
    the group's tokens whose top choice is e, before capacity), averaged
    over the groups; 1 when balanced.  It is not scaled: the model adds
    ``coef * aux_loss`` to its loss (and may output it as a metric).
    """
    if gating not in GATINGS:
        raise fail(f"moe: unknown gating {gating!r} (choose from {', '.join(GATINGS)})")
    io_dim = x.shape.get(io_dim)
    experts = Dim(experts_dim.name, experts_dim.size)
    if gating == "top2" and experts.size < 2:
        raise fail(f"moe: top2 gating needs at least 2 experts, got {experts.size}")
    token_dims = [d for d in x.shape if d.name != io_dim.name]
    if not token_dims:
        raise fail(f"moe: input {x.shape} has no token dims besides {io_dim.name!r}")
    batch = x.shape.get(batch_dim) if batch_dim is not None else token_dims[0]
    if batch.name == io_dim.name:
        raise fail(f"moe: the batch dim cannot be the io dim {io_dim.name!r}")
    token_dims = [batch] + [d for d in token_dims if d.name != batch.name]
    tokens = math.prod(d.size for d in token_dims)
    if group_size < 1 or tokens % group_size:
        raise fail(f"moe: {tokens} tokens ({' x '.join(f'{d.name}:{d.size}' for d in token_dims)}) "
                   f"are not a multiple of group_size {group_size}")
    factor = capacity_factor_train if is_training() else capacity_factor_eval
    if not factor > 0:
        raise fail(f"moe: capacity factor must be positive, got {factor}")
    cap = capacity(group_size, experts.size, factor)
    groups = Dim(batch.name, tokens // group_size)
    group = Dim("group", group_size)
    capacity_dim = Dim("expert_capacity", cap)
    experts_unsplit = Dim(f"{experts.name}_unsplit", experts.size)
    groups_unsplit = Dim(f"{batch.name}_unsplit", groups.size)
    taken = {io_dim.name, hidden_dim.name, experts.name}
    for d in (group, capacity_dim, experts_unsplit, groups_unsplit):
        if d.name in taken or d.name in x.shape.names:
            raise fail(f"moe: dim name {d.name!r} is taken (the layer uses it internally)")
    dtype = x.dtype if x.dtype in FLOAT_DTYPES else None

    with scope(name):
        # [groups, group, io]: the groups take the batch dim's name (and layout)
        xt = ops.transpose(x, Shape(token_dims + [io_dim]))
        xg = ops.reshape(xt, Shape([groups, group, io_dim]))
        # ---- gating, in f32
        wg = get_variable("gate", Shape([io_dim, experts_unsplit]), "f32", init.fan_in_normal([io_dim], [io_dim]))
        logits = ops.einsum([ops.cast(xg, "f32"), wg], Shape([groups, group, experts_unsplit]), name="gate_logits")
        probs = ops.softmax(logits, experts_unsplit)
        index_1 = _first_argmax(probs, experts_unsplit)
        mask_1 = ops.one_hot(index_1, experts_unsplit, dtype="f32")
        gate_1 = ops.reduce_sum(probs * mask_1, experts_unsplit)
        # load balance: fraction of top-1 choices x mean probability, per expert
        fraction = ops.reduce_mean(mask_1, group)
        mean_prob = ops.reduce_mean(probs, group)
        aux_loss = ops.reduce_mean(fraction * mean_prob) * float(experts.size * experts.size)
        choices = [(index_1, mask_1, gate_1)]
        if gating == "top2":
            index_2 = _first_argmax(probs * (1.0 - mask_1), experts_unsplit)
            mask_2 = ops.one_hot(index_2, experts_unsplit, dtype="f32")
            gate_2 = ops.reduce_sum(probs * mask_2, experts_unsplit)
            denominator = gate_1 + gate_2 + 1e-9
            choices = [(index_1, mask_1, gate_1 / denominator), (index_2, mask_2, gate_2 / denominator)]
        # ---- positions within each expert's capacity, drops
        combine = dispatch = None
        taken_before = None  # [groups, experts]: slots the earlier choices filled
        for index, mask, gate in choices:
            position = ops.cumsum(mask, group, exclusive=True)
            if taken_before is not None:
                position = position + taken_before
            position = position * mask
            mask = mask * ops.cast(ops.less(position, float(cap)), "f32")
            taken_before = ops.reduce_sum(mask, group) if taken_before is None else taken_before + ops.reduce_sum(mask, group)
            kept = ops.reduce_sum(mask, experts_unsplit)  # [groups, group]: 1, or 0 if dropped
            slot = ops.cast(ops.reduce_sum(position, experts_unsplit), "i32")
            routed = ops.one_hot(index, experts_unsplit, dtype="f32") * ops.one_hot(slot, capacity_dim, dtype="f32")
            routed = ops.stop_gradient(routed * kept)  # [groups, group, experts, capacity]
            term = routed * gate
            combine = term if combine is None else combine + term
            dispatch = routed if dispatch is None else dispatch + routed
        compute = x.dtype if x.dtype in FLOAT_DTYPES else "f32"
        combine = ops.cast(ops.transpose(combine, Shape([groups, group, experts_unsplit, capacity_dim])), compute)
        dispatch = ops.cast(ops.transpose(dispatch, Shape([groups, group, experts_unsplit, capacity_dim])), compute)
        # ---- dispatch: [experts_unsplit, groups, capacity, io], then move the split
        expert_in = ops.einsum([xg, dispatch], Shape([experts_unsplit, groups, capacity_dim, io_dim]), name="dispatch")
        expert_in = ops.reshape(expert_in, Shape([experts, groups_unsplit, capacity_dim, io_dim]))
        wi = get_variable("wi", Shape([experts, io_dim, hidden_dim]), dtype, init.fan_in_normal([io_dim], [io_dim]))
        wo = get_variable("wo", Shape([experts, hidden_dim, io_dim]), dtype,
                          init.fan_in_normal([hidden_dim], [hidden_dim]))
        h = ops.einsum([expert_in, wi], Shape([experts, groups_unsplit, capacity_dim, hidden_dim]), name="expert_wi")
        if activation is not None:
            h = activation(h)
        expert_out = ops.einsum([h, wo], Shape([experts, groups_unsplit, capacity_dim, io_dim]), name="expert_wo")
        # ---- back to the groups, combine
        expert_out = ops.reshape(expert_out, Shape([experts_unsplit, groups, capacity_dim, io_dim]))
        y = ops.einsum([expert_out, combine], Shape([groups, group, io_dim]), name="combine")
        y = ops.reshape(y, Shape(token_dims + [io_dim]))
        y = ops.transpose(y, x.shape)
    return y, aux_loss
