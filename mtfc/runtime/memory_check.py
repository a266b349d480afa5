"""Does a module fit the devices?  Checked before anything is allocated.

`mtfc run` would otherwise end in ``MemoryError: Unable to allocate 8.00
TiB`` (NumPy synthesizing a parameter) or an allocation failure deep inside
XLA.  Two checks, each failing with one line that names the budget and the
largest arrays (name, per-device shape, bytes):

* `check_arrays`, before compiling: every device holds its shard of each
  argument and of each result (a result aliased to an argument reuses its
  buffer) at once -- a lower bound of what it needs, from the module's own
  shapes;
* `check_compiled`, after compiling and before any data exist: XLA's own
  figure for one device (arguments + outputs + temporaries - aliased bytes,
  ``get_compiled_memory_stats``).

The budget: on a GPU/TPU each device's ``bytes_limit`` less what is in use
(``memory_stats``; unchecked where a backend reports none), and the host's
available memory for the whole host copies; on CPU the virtual devices and
the host's whole copies of the arrays (the runner builds each input whole,
then cuts it) share the host's available memory (``MemAvailable`` of
``/proc/meminfo``): devices x per-device bytes + host bytes must fit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mtfc.errors import MtfcError


@dataclass(frozen=True)
class ArrayNeed:
    name: str            # "argument 'params/w'", "result 'y'"
    local_shape: tuple[int, ...]
    dtype: str
    bytes: int           # per device
    global_bytes: int    # on the host, whole


def _bytes_text(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} PiB"


def host_available_bytes() -> int | None:
    """The host memory available to new allocations (Linux ``MemAvailable``),
    or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return None


def device_available_bytes(device) -> int | None:
    """A GPU/TPU device's free memory (``bytes_limit - bytes_in_use``), or None
    when the backend does not report it (CPU devices share the host's)."""
    if getattr(device, "platform", "cpu") == "cpu":
        return None
    try:
        stats = device.memory_stats() or {}
    except Exception:  # a backend without memory statistics: nothing to check against
        return None
    limit = stats.get("bytes_limit")
    if not limit:
        return None
    return int(limit) - int(stats.get("bytes_in_use", 0))


def _on_cpu(devices: list) -> bool:
    return not devices or getattr(devices[0], "platform", "cpu") == "cpu"


def _device_budget(devices: list) -> tuple[int | None, str]:
    """(bytes each accelerator may still use, how it was found); None: unknown."""
    free = [f for f in (device_available_bytes(d) for d in devices) if f is not None]
    if not free:
        return None, "device memory unknown"
    return min(free), f"{_bytes_text(min(free))} free on each {devices[0].platform} device"


def _largest(needs: list[ArrayNeed], top: int = 3) -> str:
    ranked = sorted(needs, key=lambda n: -n.bytes)[:top]
    return "; ".join(f"{n.name} {list(n.local_shape)} {n.dtype} {_bytes_text(n.bytes)}" for n in ranked)


def _check(per_device: int, host: int, needs: list[ArrayNeed], devices: list, what: str, need_text: str) -> None:
    count = max(len(devices), 1)
    if _on_cpu(devices):
        available = host_available_bytes()
        if available is None:
            return
        total = count * per_device + host
        if total > available:
            raise MtfcError(
                f"{what} does not fit: {need_text} {_bytes_text(per_device)} on each of {count} CPU device(s) "
                f"plus {_bytes_text(host)} of whole host copies ({_bytes_text(total)}), but the host has "
                f"{_bytes_text(available)} available; largest per device: {_largest(needs)}"
            )
        return
    limit, text = _device_budget(devices)
    if limit is not None and per_device > limit:
        raise MtfcError(f"{what} does not fit: {need_text} {_bytes_text(per_device)} per device, but there is "
                        f"{text}; largest per device: {_largest(needs)}")
    available = host_available_bytes()
    if available is not None and host > available:
        raise MtfcError(f"{what} does not fit: its whole host copies need {_bytes_text(host)}, but the host has "
                        f"{_bytes_text(available)} available; largest per device: {_largest(needs)}")


def check_arrays(needs: list[ArrayNeed], devices: list, *, what: str) -> None:
    """Fail when the arguments and results every device holds at once (and
    the host's whole copies of them) exceed the memory there; checked before
    compiling, `what` names the program."""
    _check(sum(n.bytes for n in needs), sum(n.global_bytes for n in needs), needs, devices, what,
           "its arguments and results need at least")


def check_compiled(stats, needs: list[ArrayNeed], devices: list, *, what: str) -> None:
    """Fail when XLA's own figure for one device (arguments + outputs +
    temporaries - aliased) exceeds the memory there; checked after compiling,
    before any buffer exists."""
    try:
        per_device = (stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
                      - stats.alias_size_in_bytes)
    except AttributeError:
        return
    _check(per_device, sum(n.global_bytes for n in needs), needs, devices, what,
           f"XLA needs (with {_bytes_text(stats.temp_size_in_bytes)} of temporaries)")
