"""A dense-dispatch mixture of experts in jax.numpy, written independently of
mtfc: every expert runs on every token, the gate weights pick their outputs,
capacity positions come from a cumsum, dropped tokens get zero.  Shared by
tests/test_moe.py and the property tests (tests/test_properties.py)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def moe_capacity(group: int, experts: int, factor: float) -> int:
    """Slots per expert and group: ceil(group * factor / experts), at most the group."""
    return min(group, math.ceil(group * factor / experts))


def dense_moe(tokens, wg, wi, wo, gating: str, factor: float, activation=jax.nn.relu):
    """(y, aux, dropped token count (an array)) of an MoE layer on `tokens` [groups,
    group, d] with gate [d, experts], wi [experts, d, hidden], wo [experts,
    hidden, d]; y is [groups, group, d]."""
    group, experts = tokens.shape[1], wg.shape[1]
    probs = jax.nn.softmax(jnp.einsum("gsd,de->gse", tokens, wg), axis=-1)
    every = jnp.einsum("gseh,ehd->gsed", activation(jnp.einsum("gsd,edh->gseh", tokens, wi)), wo)
    cap = moe_capacity(group, experts, factor)
    first = jnp.argmax(probs, -1)
    m1 = jax.nn.one_hot(first, experts, dtype=probs.dtype)
    g1 = jnp.take_along_axis(probs, first[..., None], -1)[..., 0]
    aux = jnp.mean(jnp.sum(m1.mean(1) * probs.mean(1), -1) * experts)
    choices = [(first, m1, g1)]
    if gating == "top2":
        second = jnp.argmax(jnp.where(m1 > 0, -1.0, probs), -1)
        m2 = jax.nn.one_hot(second, experts, dtype=probs.dtype)
        g2 = jnp.take_along_axis(probs, second[..., None], -1)[..., 0]
        total = g1 + g2 + 1e-9
        choices = [(first, m1, g1 / total), (second, m2, g2 / total)]
    filled = jnp.zeros((tokens.shape[0], experts), probs.dtype)  # slots taken per group and expert
    y = jnp.zeros_like(tokens)
    dropped = 0
    for index, mask, gate in choices:
        position = jnp.sum((jnp.cumsum(mask, axis=1) - mask + filled[:, None, :]) * mask, -1)  # [groups, group]
        keep = position < cap
        filled = filled + jnp.sum(mask * keep[..., None], axis=1)
        dropped = dropped + jnp.sum(~keep)
        chosen = jnp.take_along_axis(every, index[..., None, None], 2)[:, :, 0, :]
        y = y + (gate * keep)[..., None] * chosen
    return y, aux, dropped
