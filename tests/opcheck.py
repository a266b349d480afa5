"""Shared helper for the op and layer tests: run a model sharded and unsharded
and compare both with a NumPy reference written in the test."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from conftest import assert_close, run_model

BF16 = ml_dtypes.bfloat16


def layouts(*items):
    """pytest.mark.parametrize over layout strings, "" shown as 'replicated'."""
    return pytest.mark.parametrize("layout", list(items), ids=[i or "replicated" for i in items])


def _tolerance_key(got: np.ndarray, want: np.ndarray, name: str) -> str:
    """Check the output dtype against the reference's and return the tolerance key."""
    if want.dtype == np.bool_:
        assert got.dtype == np.bool_, f"output {name!r} has dtype {got.dtype}, expected bool"
        return "i1"
    if np.issubdtype(want.dtype, np.integer):
        assert got.dtype == np.int32, f"output {name!r} has dtype {got.dtype}, expected int32"
        return "i32"
    if want.dtype == BF16:
        assert got.dtype == BF16, f"output {name!r} has dtype {got.dtype}, expected bfloat16"
        return "bf16"
    assert got.dtype == np.float32, f"output {name!r} has dtype {got.dtype}, expected float32"
    return "f32"


# Every op test runs under each partitioner: XLA's (gspmd), mtfc's own
# (explicit) and Shardy's (shardy, run in-process by the pass sdy-partition).
MODES = ("gspmd", "explicit", "shardy")


def check(fn, inputs, reference, layout, host_inputs=None, modes=MODES):
    """Compile and run `fn` under `layout` on the 2x4 mesh in each of `modes`;
    compare every output with `reference(data)` (name -> NumPy array; data: the
    host inputs used, parameters included) and with the unsharded run.
    Returns the host data."""
    for mode in modes:
        sharded, unsharded, data = run_model(fn, inputs, host_inputs, layout=layout, mode=mode)
        expected = reference(data)
        assert sorted(sharded) == sorted(expected), (sorted(sharded), sorted(expected))
        for name, want in expected.items():
            got = np.asarray(sharded[name])
            want = np.asarray(want)
            key = _tolerance_key(got, want, name)
            try:
                assert_close(got, want, key)
                assert_close(got, np.asarray(unsharded[name]), key)
            except AssertionError as e:
                raise AssertionError(f"{mode} mode, output {name!r} under layout {layout!r}: {e}") from None
    return data
