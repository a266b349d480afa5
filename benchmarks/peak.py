"""The machine's own peak, measured in the same run: a large matmul on one
device, through XLA's dot and (on CPU) NumPy's BLAS; the faster is the peak
that MFU is a fraction of."""

from __future__ import annotations

import time

import numpy as np


def _rate(fn, flops: float, repeats: int) -> float:
    """FLOP/s of the median of `repeats` timed calls (after one untimed)."""
    fn()  # warm-up (and compile)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return flops / float(np.median(times))


def measure_peak(*, backend: str = "cpu", n: int = 2048, repeats: int = 5, dtype: str = "f32") -> dict:
    """FLOP/s of an n x n x n matmul, the median of `repeats`, through XLA
    (jit of ``x @ y`` on the backend's first device) and, on CPU, NumPy."""
    import jax
    import jax.numpy as jnp

    flops = 2.0 * n ** 3
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    device = jax.devices(backend)[0]
    jdtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    x, y = jax.device_put(a.astype(jdtype), device), jax.device_put(b.astype(jdtype), device)
    dot = jax.jit(lambda p, q: p @ q)
    xla = _rate(lambda: dot(x, y).block_until_ready(), flops, repeats)
    out = {"n": n, "dtype": dtype, "device": str(device.device_kind), "xla_flops": xla}
    if backend == "cpu" and dtype == "f32":
        out["numpy_flops"] = _rate(lambda: a @ b, flops, repeats)
    out["peak_flops"] = max(v for k, v in out.items() if k.endswith("_flops"))
    out["peak_source"] = max((k for k in out if k.endswith("_flops") and k != "peak_flops"), key=out.get)
    return out
