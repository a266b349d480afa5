"""Test set-up: 8 virtual CPU devices, and helpers to compile and run models."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from mtfc.compiler import compile_function  # noqa: E402
from mtfc.runtime.execute import Program  # noqa: E402

MESH_2x4 = "rows:2,cols:4"


def run_model(fn, inputs, host_inputs=None, *, mesh=MESH_2x4, layout="", mode="gspmd", seed=0):
    """Compile `fn` (inputs: name -> mtf.Input), run it sharded, return
    (outputs, unsharded outputs, host inputs incl. synthesized parameters)."""
    module = compile_function(fn, inputs, mesh=mesh, layout=layout, mode=mode)
    program = Program(module)
    data = program.synthesize_inputs(seed)
    data.update(host_inputs or {})
    sharded = program.run(data).outputs
    unsharded = Program(module, unsharded=True).run(data).outputs
    return sharded, unsharded, data


def run_train_steps(module, steps: int, seed: int = 3, *, unsharded: bool = False):
    """Run a train-step module `steps` times (sharded, or with `unsharded` the
    unsharded program) from synthesized data, feeding parameters and optimizer
    state back by name; (the initial host inputs, each step's outputs)."""
    program = Program(module, unsharded=unsharded)
    data = program.synthesize_inputs(seed)
    initial = dict(data)
    outputs = []
    for _ in range(steps):
        out = program.run(data).outputs
        outputs.append(out)
        for sig in program.arguments:
            if sig.role in ("parameter", "optimizer_state"):
                data[sig.name] = out[sig.name]
    return initial, outputs


def assert_close(actual, expected, dtype="f32"):
    """Normwise relative error within the dtype's tolerance (see mtfc.runtime.check)."""
    from mtfc.runtime.check import TOLERANCE, relative_error

    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    err = relative_error(actual, expected)
    assert err <= TOLERANCE.get(dtype, 0.0), f"relative error {err:.3e} > {TOLERANCE.get(dtype, 0.0)}"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
