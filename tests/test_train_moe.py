"""examples/moe.py (dense and mixture-of-experts feed-forward layers) trains
on the shipped token stream under its default data x expert layout, in
explicit and shardy mode: its loss falls as the dense example's does over
the same steps, its first steps match the unsharded run's, and its explicit
train step moves tokens by exactly the all_to_alls of
docs/passes/partition.md's closed form."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

from mtfc.cli import main

ROOT = os.path.join(os.path.dirname(__file__), "..")
MOE = os.path.join(ROOT, "examples", "moe.py")
DENSE = os.path.join(ROOT, "examples", "transformer.py")
TOKENS = os.path.join(ROOT, "examples", "data", "tokens.npy")
STEPS, THRESHOLD = 30, 1.2  # ln 64 = 4.16 at the start; the stream's entropy is ~0.73


def compile_step(tmp_path, model, name, flags=(), mode="explicit"):
    module = tmp_path / f"{name}.mlir"
    result = CliRunner().invoke(main, ["compile", model, "--train", "--mode", mode, "-o", str(module), *flags])
    assert result.exit_code == 0, result.output
    return module


def train(tmp_path, model, name, steps, flags=(), mode="explicit"):
    module, log = compile_step(tmp_path, model, name, flags, mode), tmp_path / f"{name}.jsonl"
    result = CliRunner().invoke(main, ["run", str(module), "--steps", str(steps), "--data", TOKENS, "--log", str(log)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in log.read_text().splitlines()]


@pytest.fixture(scope="module")
def dense_losses(tmp_path_factory):
    return [r["loss"] for r in train(tmp_path_factory.mktemp("dense"), DENSE, "dense", STEPS)]


@pytest.mark.parametrize("mode", ["explicit", "shardy"])
def test_moe_example_trains_like_the_dense_one(mode, tmp_path, dense_losses):
    records = train(tmp_path, MOE, mode, STEPS, mode=mode)
    losses = [r["loss"] for r in records]
    assert len(losses) == STEPS
    assert losses[0] > 4.0
    assert min(losses[-5:]) < THRESHOLD, losses[-10:]
    # as fast as the dense model: the last 10 steps' mean within 0.15 nats of its
    assert np.mean(losses[-10:]) < np.mean(dense_losses[-10:]) + 0.15, (losses[-10:], dense_losses[-10:])
    aux = [r["metrics"]["aux_loss"] for r in records]
    assert all(0.99 < a < 4.0 for a in aux), aux  # 1 when balanced, E = 4 at worst (E * sum_e f_e m_e)


def test_moe_example_first_steps_match_unsharded(tmp_path):
    sharded = [r["loss"] for r in train(tmp_path, MOE, "sharded", 3)]
    unsharded = [r["loss"] for r in train(tmp_path, MOE, "unsharded", 3, ["--mesh", "one:1", "--layout", ""],
                                         mode="none")]
    np.testing.assert_allclose(sharded, unsharded, rtol=2e-5)


def test_moe_example_train_step_all_to_alls(tmp_path):
    """Default layout (batch:rows+cols, batch_unsplit:rows, experts:cols on
    rows:2,cols:4), one MoE layer: 4 all_to_alls over `cols` (forward in and
    back, backward in and back), each of S = 4 E G C D / 8 bytes per device
    -- the local [E, G/8, C, D] block, groups split over all 8 devices
    before, experts over cols and groups over rows after."""
    from mtfc import ir as mir
    from mtfc.files.modules import read_module
    from mtfc.passes.comm_analysis import module_collectives

    module = read_module(str(compile_step(tmp_path, MOE, "step")), mir.new_context())
    found = [c for c in module_collectives(module) if c.kind == "all_to_all"]
    experts, groups, group_size, d_model = 4, 16 * 32 // 64, 64, 64
    capacity = math.ceil(group_size * 1.25 / experts)  # the train capacity factor
    size = 4 * experts * groups * capacity * d_model // 8
    assert [(c.axes, c.n, c.bytes) for c in found] == [(["cols"], 4, size)] * 4, found
    assert not [c for c in module_collectives(module) if c.kind == "all_gather"]


def test_inspect_reports_the_all_to_all_bytes(tmp_path):
    """`mtfc inspect` on the example's train step lists the 4 all_to_alls
    over `cols` with their bytes (S 20,480, bus bytes 3/4 of it) and their
    total."""
    module = compile_step(tmp_path, MOE, "inspect")
    result = CliRunner().invoke(main, ["inspect", str(module), "--section", "collectives"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if " all_to_all " in f" {line} "]
    listed = [r for r in rows if r[0].isdigit()]
    assert [(r[1], r[2], r[3], r[5], r[6]) for r in listed] == [("all_to_all", "cols", "4", "20,480", "15,360")] * 4
    totals = [r for r in rows if r[0] == "all_to_all"]  # "all_to_all (axis move)  count  S  bus ..."
    numbers = [[f for f in r if f.replace(",", "").isdigit()][:3] for r in totals]  # count, S bytes, bus bytes
    assert numbers == [["4", "81,920", "61,440"]], totals
