"""PJRT clients and devices through jax's public backend API.

On CPU the client is created with as many virtual devices as asked for
(``jax_num_cpu_devices``), which must happen before jax first creates its
backend; `ensure_cpu_devices` does that and fails clearly if too late.

It also configures the process's memory allocator for XLA:CPU
(`configure_cpu_allocator`).  XLA:CPU allocates every temporary and output
buffer of an execution with ``malloc`` and frees it afterwards; glibc serves
large blocks with ``mmap`` and unmaps them on ``free``, and each thread of the
client's pools gets its own arena, so every step faults in its working set
afresh from the kernel (a 4-layer d=512 train step: ~74,000 page faults and
~0.1 s of system time per step on one device, ~140,000 and ~0.2 s on 8
virtual devices; `benchmarks/RESULTS.md`).  With one arena, no ``mmap`` and
trimming only above 2 GiB, freed buffers are reused by the next step: no page
faults.  Set ``MTFC_CPU_ALLOCATOR=system`` to keep glibc's defaults.  Numbers
and placement are unaffected; memory freed by XLA stays with the process for
reuse instead of going back to the kernel.
"""

from __future__ import annotations

import ctypes
import os
import platform

import jax
from jax.extend import backend as jax_backend

from mtfc.errors import MtfcError

BACKENDS = ("cpu", "gpu", "tpu")


# mallopt(3) parameters (glibc <malloc.h>)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8
_ALLOCATOR_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20))
_allocator: dict | None = None


def configure_cpu_allocator() -> dict:
    """Make glibc's malloc reuse XLA:CPU's buffers across executions (see the
    module docstring); once per process, best before the CPU backend starts
    its threads.  Returns what was done: ``{"allocator": "reuse"}``, or
    ``"system"`` (``MTFC_CPU_ALLOCATOR=system``, not glibc, or refused)."""
    global _allocator
    if _allocator is not None:
        return _allocator
    wanted = os.environ.get("MTFC_CPU_ALLOCATOR", "reuse").strip().lower()
    if wanted not in ("reuse", "system"):
        raise MtfcError(f"MTFC_CPU_ALLOCATOR={wanted!r}: choose reuse or system")
    _allocator = {"allocator": "system"}
    if wanted == "system":
        return _allocator
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _allocator["note"] = "not glibc"
        return _allocator
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        _allocator["note"] = "no mallopt"
        return _allocator
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    if all(mallopt(param, value) == 1 for param, value in _ALLOCATOR_SETTINGS):
        _allocator = {"allocator": "reuse"}
    else:
        _allocator["note"] = "mallopt refused"
    return _allocator


def runtime_config() -> dict:
    """The CPU runtime configuration in effect (for reports and benchmarks)."""
    out = dict(_allocator or {"allocator": "not configured"})
    try:
        out["cpu_devices"] = jax.config.jax_num_cpu_devices
    except Exception:
        pass
    return out


def ensure_cpu_devices(count: int) -> None:
    """Ask for at least `count` virtual CPU devices (before the backend exists).
    In a multi-process job the count per process was set when joining
    (`mtfc.runtime.distributed.join`) and is left alone."""
    configure_cpu_allocator()
    from jax._src import distributed as jax_distributed

    if jax_distributed.global_state.client is not None:
        return
    try:
        current = jax.config.jax_num_cpu_devices
        if current is None or current < count:
            jax.config.update("jax_num_cpu_devices", count)
    except Exception:
        pass  # the backend exists already; `devices` reports a shortfall


def devices(backend: str, count: int) -> list:
    """The `count` devices of the mesh, in mesh order.

    One process: the first `count` devices of `backend`.  Several processes
    (`mtfc.runtime.distributed`): every device of the job, which must be
    exactly `count`, in *process-major* order -- process 0's devices, then
    process 1's, ..., each process's by device id (sorted by
    ``(process_index, id)``).  Mesh device ``d`` is entry ``d``: the mesh's
    first axes span the processes, its last ones stay inside a process.
    Device ids are not positions (on CPU process 1's ids start at 2048):
    device assignments are built from ``[d.id for d in devices]``."""
    if backend not in BACKENDS:
        raise MtfcError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if backend == "cpu":
        ensure_cpu_devices(count)
    try:
        client = jax_backend.get_backend(backend)
    except Exception as e:
        raise MtfcError(f"backend {backend!r} is not available here: {str(e).splitlines()[0]}") from None
    found = client.devices()
    if len(client.local_devices()) < len(found):  # a multi-process job
        ordered = sorted(found, key=lambda d: (d.process_index, d.id))
        if count == 1:  # an unsharded program (--check): process 0's first device
            return ordered[:1]
        if len(ordered) != count:
            raise MtfcError(f"the mesh needs {count} devices but the job's processes have {len(ordered)} "
                            f"({len(client.local_devices())} here)")
        return ordered
    if len(found) < count:
        raise MtfcError(
            f"the mesh needs {count} devices but backend {backend!r} has {len(found)}"
            + (" (the CPU backend was created before mtfc could ask for more)" if backend == "cpu" else "")
        )
    return list(found[:count])


def addressable(devices: list) -> list[tuple[int, object]]:
    """(mesh position, device) of the devices in `devices` that this process
    drives (all of them in a single-process run)."""
    if not devices:
        return []
    here = devices[0].client.process_index()
    return [(d, dev) for d, dev in enumerate(devices) if dev.process_index == here]


def client_of(device):
    return device.client
