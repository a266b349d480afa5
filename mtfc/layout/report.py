"""The layout search's output: the ranked table, the JSON, and sizes
(``--memory-per-device 16GiB``) read and written."""

from __future__ import annotations

import re

from mtfc.errors import MtfcError
from mtfc.layout.cost import Candidate, describe_collective

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000 ** 2, "mb": 1000 ** 2, "g": 1000 ** 3, "gb": 1000 ** 3,
          "t": 1000 ** 4, "tb": 1000 ** 4, "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str, what: str = "--memory-per-device") -> int:
    """Bytes of ``"16GiB"``, ``"512MB"``, ``"1e9"`` (B, kB/MB/GB/TB = 1000^k,
    KiB/MiB/GiB/TiB = 1024^k; case-insensitive); one-line `MtfcError` naming
    `what` for anything else, a negative or a zero size."""
    raw = str(text)
    if raw.strip().startswith("-"):
        raise MtfcError(f"{what} {raw!r} is negative: give a positive size, e.g. 16GiB")
    m = _SIZE.match(raw)
    if not m or m.group(2).lower() not in _UNITS:
        raise MtfcError(f"{what} {raw!r} is not a size: a number with an optional unit B, kB, MB, GB, TB, "
                        f"KiB, MiB, GiB or TiB, e.g. 16GiB")
    n = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if n < 1:
        raise MtfcError(f"{what} {raw!r} is below one byte: give a positive size, e.g. 16GiB")
    return int(n)


def human_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_seconds(s: float) -> str:
    """``7.5 ms``, ``12 us``, ``3 ns``, ``1.2 s``: three significant digits at most, no exponent."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.3g} {unit}"
    return "0" if s == 0 else f"{s / 1e-9:.3g} ns"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def table_lines(candidates: list[Candidate], *, budget: int | None = None) -> list[str]:
    """The ranked table (fits 100 columns): rank, rules, param rules, predicted
    total / compute / comm time per step, peak memory per device, fits; under
    each row its top collectives with the dims behind their bytes (bus bytes
    and time per step)."""
    head = f"{'#':>3} {'layout':<28} {'params':<18} {'total':>9} {'compute':>9} {'comm':>9} {'peak':>10} {'fits':>4}"
    out = [head]
    for i, c in enumerate(candidates, 1):
        fits = "yes" if c.fits else "NO"
        params = c.param_rules or "(as layout)"
        out.append(f"{i:>3} {_clip(c.rules or '(replicated)', 28):<28} {_clip(params, 18):<18} "
                   f"{human_seconds(c.total_s):>9} {human_seconds(c.compute_s):>9} {human_seconds(c.comm_s):>9} "
                   f"{human_bytes(c.peak_bytes):>10} {fits:>4}")
        if len(c.rules) > 28 or len(params) > 18:  # clipped above: in full
            out.append(_clip(f"      layout {c.rules or '(replicated)'}; params {params}", 100))
        for col in c.collectives[:3]:
            out.append(_clip(f"      {describe_collective(col)}: {human_bytes(col['bytes'])}, "
                             f"{human_seconds(col['seconds'])}", 100))
    return out


def report_json(result, *, mesh, network, budget) -> dict:
    """``mtfc layout --json``: mesh, network, budget, candidates best first, invalid, searched, method."""
    return {"mesh": str(mesh), "network": network.name, "budget": budget,
            "candidates": [c.as_dict() for c in result.candidates],
            "invalid": {"count": sum(result.invalid.values()), "reasons": dict(result.invalid)},
            "searched": result.searched, "method": result.method, "seconds": result.seconds}


def summary_lines(result, mesh, network, budget) -> list[str]:
    """Two lines: what was searched, how, what was refused; for which network and budget."""
    return [f"mesh {str(mesh) or '(one device)'}: {result.searched} candidate(s) searched ({result.method}, {result.seconds:.1f} s); "
            f"{result.invalid_line()}",
            f"network {network.name}; budget {human_bytes(budget) + ' per device' if budget else 'none'}"]
