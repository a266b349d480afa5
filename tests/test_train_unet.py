"""examples/unet.py (a 2-D encoder-decoder: convolutions, a max pool, a
transposed convolution, a per-pixel loss) under its default spatial layout
`h:rows,w:cols` on rows:2,cols:4: its explicit programs exchange halos only
(no all_gather of an activation, forward or train step), it trains in every
mode with the unsharded run's first losses, and its loss falls."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from mtfc import ir as mir
from mtfc.cli import main
from mtfc.files.modules import read_module
from mtfc.passes.comm_analysis import module_collectives

ROOT = os.path.join(os.path.dirname(__file__), "..")
UNET = os.path.join(ROOT, "examples", "unet.py")


def compile_module(tmp_path, name, flags=(), mode="explicit"):
    module = tmp_path / f"{name}.mlir"
    result = CliRunner().invoke(main, ["compile", UNET, "--mode", mode, "-o", str(module), *flags])
    assert result.exit_code == 0, result.output
    return module


def train(tmp_path, name, steps, flags=(), mode="explicit"):
    module, log = compile_module(tmp_path, name, ["--train", *flags], mode), tmp_path / f"{name}.jsonl"
    result = CliRunner().invoke(main, ["run", str(module), "--steps", str(steps), "--log", str(log)])
    assert result.exit_code == 0, result.output
    return [json.loads(line)["loss"] for line in log.read_text().splitlines()]


@pytest.mark.parametrize("train_step", [False, True], ids=["forward", "train"])
def test_spatial_layout_exchanges_halos_only(tmp_path, train_step):
    """Every collective of the explicit program is a halo collective_permute
    but the loss's (and in the train step the gradients') all_reduces over
    scalars and kernels: nothing is gathered, nothing moved by all_to_all."""
    module = read_module(str(compile_module(tmp_path, "m", ["--train"] if train_step else [])), mir.new_context())
    found = module_collectives(module)
    kinds = {c.kind for c in found}
    assert "collective_permute" in kinds
    assert kinds <= {"collective_permute", "all_reduce"}, sorted(kinds)
    assert not [c for c in found if c.kind == "all_gather"]
    if not train_step:  # forward: one all_reduce, the mean loss (a scalar)
        assert [c.bytes for c in found if c.kind == "all_reduce"] == [4]


def test_trains_in_every_mode_like_the_unsharded_run(tmp_path):
    unsharded = train(tmp_path, "unsharded", 3, ["--mesh", "one:1", "--layout", ""], mode="none")
    for mode in ("explicit", "gspmd", "shardy"):
        np.testing.assert_allclose(train(tmp_path, mode, 3, mode=mode), unsharded, rtol=2e-5, err_msg=mode)


def test_loss_falls(tmp_path):
    losses = train(tmp_path, "long", 40)
    assert losses[0] > 0.6  # ~ln 2: a fair coin per pixel at the start
    assert max(losses[-5:]) < 0.25, losses[-10:]
