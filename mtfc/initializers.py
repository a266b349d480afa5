"""Initializer strings: how the runner synthesizes an argument's values
(`mtfc/runtime/synthetic.py` draws them tile by tile).

The one table of initializer kinds, read by the frontend (which writes them,
`mtf.init`), `verify-names` (which checks them) and the runtime (which samples
them); it knows nothing of MLIR.  Spelled ``KIND:ARG,ARG`` (docs/IR.md):

| kind | args | values |
| --- | --- | --- |
| ``normal`` | stddev | N(0, stddev²) |
| ``truncated_normal`` | stddev | N(0, 1) clipped to [-2, 2], times stddev |
| ``uniform`` | lo, hi | U[lo, hi) |
| ``constant`` | value | every element `value` |
| ``randint`` | lo, hi | integers in [lo, hi) |
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from mtfc.errors import MtfcError

DEFAULT = "normal:1.0"

# kind -> (number of arguments, sampler(rng, shape, args))
KINDS: dict[str, tuple[int, Callable[[np.random.Generator, tuple, list[float]], np.ndarray]]] = {
    "normal": (1, lambda rng, shape, a: rng.standard_normal(shape) * a[0]),
    "truncated_normal": (1, lambda rng, shape, a: np.clip(rng.standard_normal(shape), -2.0, 2.0) * a[0]),
    "uniform": (2, lambda rng, shape, a: rng.uniform(a[0], a[1], shape)),
    "constant": (1, lambda rng, shape, a: np.full(shape, a[0])),
    "randint": (2, lambda rng, shape, a: rng.integers(int(a[0]), int(a[1]), shape)),
}


def parse(text: str, what: str) -> tuple[str, list[float]]:
    """(kind, arguments) of an initializer string; an `MtfcError` naming
    `what` when the kind is unknown or the arguments are not its count of
    finite numbers."""
    kind, _, args_text = text.partition(":")
    if kind not in KINDS:
        raise MtfcError(f"{what}: unknown initializer {text!r} (known: {', '.join(KINDS)})")
    arity = KINDS[kind][0]
    try:
        args = [float(a) for a in args_text.split(",") if a.strip()]
    except ValueError:
        args = None
    if args is None or len(args) != arity or not all(math.isfinite(v) for v in args):
        raise MtfcError(f"{what}: initializer {text!r} takes {arity} finite number(s), e.g. "
                        f"'{kind}:{','.join(['1'] * arity)}'")
    return kind, args
