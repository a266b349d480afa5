"""Comparing a sharded run's outputs with the unsharded run's.

`check_step.py` decides which results of a train step are gated.

The error of an output is ``max|a - b| / max|b|`` (normwise relative error;
``max|a - b|`` when b is all zeros), so elements near zero do not dominate.
Tolerances by dtype: f32 1e-5, f16 1e-2, bf16 2e-2; integers and booleans
must match exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOLERANCE = {"f32": 1e-5, "f16": 1e-2, "bf16": 2e-2}


@dataclass
class Comparison:
    name: str
    dtype: str
    error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.error <= self.tolerance)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return float("inf")
    a, b = np.nan_to_num(a), np.nan_to_num(b)
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    diff = float(np.max(np.abs(a - b))) if b.size else 0.0
    return diff / scale if scale > 0 else diff


def compare(name: str, dtype: str, actual, expected) -> Comparison:
    return Comparison(name, dtype, relative_error(actual, expected), TOLERANCE.get(dtype, 0.0))
