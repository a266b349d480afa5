"""PJRT clients and devices through jax's public backend API.

On CPU the client is created with as many virtual devices as asked for
(``jax_num_cpu_devices``), which must happen before jax first creates its
backend; `ensure_cpu_devices` does that and fails clearly if too late.
"""

from __future__ import annotations

import jax
from jax.extend import backend as jax_backend

from mtfc.errors import MtfcError

BACKENDS = ("cpu", "gpu", "tpu")


def ensure_cpu_devices(count: int) -> None:
    """Ask for at least `count` virtual CPU devices (before the backend exists)."""
    try:
        current = jax.config.jax_num_cpu_devices
        if current is None or current < count:
            jax.config.update("jax_num_cpu_devices", count)
    except Exception:
        pass  # the backend exists already; `devices` reports a shortfall


def devices(backend: str, count: int) -> list:
    """The first `count` devices of `backend`."""
    if backend not in BACKENDS:
        raise MtfcError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "cpu":
        ensure_cpu_devices(count)
    try:
        client = jax_backend.get_backend(backend)
    except Exception as e:
        raise MtfcError(f"backend {backend!r} is not available here: {str(e).splitlines()[0]}") from None
    found = client.devices()
    if len(found) < count:
        raise MtfcError(
            f"the mesh needs {count} devices but backend {backend!r} has {len(found)}"
            + (" (the CPU backend was created before mtfc could ask for more)" if backend == "cpu" else "")
        )
    return list(found[:count])


def client_of(device):
    return device.client
