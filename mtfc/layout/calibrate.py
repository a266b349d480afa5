"""`mtfc layout --calibrate OUT`: fit a `Network`'s constants to measured step times.

The cost model is linear in its constants (`mtfc.layout.network`): a
candidate with features (``flops``, ``axis_count[a]``, ``axis_bytes[a]``)
is predicted to take ::

    t = flops * (1/flops_per_s) + sum_a axis_count[a] * latency(a)
        + sum_a axis_bytes[a] * (1/bandwidth(a)) [+ overhead_s]

so `calibrate` solves for the non-negative vector ``x = (1/flops_per_s,
latency(a)..., 1/bandwidth(a)..., [overhead_s])`` that best fits the
measured medians (`scipy.optimize.nnls`).  Each measurement's row is divided
by its measured time, so the fit minimizes *relative* errors (a 1 ms
candidate counts as much as a 100 ms one), and each column is scaled to unit
norm before solving (FLOPs, counts and bytes differ by many orders of
magnitude).  Only measurements that ran and matched the unsharded run
(``ok``) are used; they may come from several modules on the same mesh (the
benchmark pools its models).

* **The fixed per-step overhead** (``overhead_s``: dispatch, the runtime's
  per-execution cost) is fitted too when it lowers the relative residual by
  at least 10% and there are measurements to spare (`overhead`: True forces
  it, False leaves it out); it shifts every candidate alike, so it never
  changes a ranking, but without it the other constants absorb it.
* **An axis never communicated** over (its count and bytes zero in every
  measurement) cannot be fitted: it keeps the prior's latency and bandwidth,
  and a note says so.  Likewise a constant the fit sets to 0 where 0 cannot
  be stored (``1/flops_per_s`` or ``1/bandwidth``: "no measurable cost")
  keeps the prior's value, with a note; a latency of 0 is stored as 0.
* **Refused** (one-line `MtfcError`): fewer correct measurements than
  unknowns, and a degenerate fit (columns linearly dependent, e.g. every
  collective over an axis moving the same bytes, so that its latency and
  bandwidth cannot be told apart) -- naming the constants it cannot separate.

Returns the fitted `Network` (named `name`, ``"*"`` kept from the prior,
``calibrated_on`` recording the provenance: measurements, mesh, backend,
load average, the fit's relative RMS error, which constants kept the prior)
and the notes; `save_network` writes it for ``--network FILE``.
"""

from __future__ import annotations

import datetime
import math
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mtfc.errors import MtfcError
from mtfc.layout.network import Network

OVERHEAD_GAIN = 0.9  # the overhead term is kept when it brings the relative residual to <= 90%
EXACT = 1e-6  # ... of a fit not already exact (relative RMS residual below this)


@dataclass
class Fit:
    network: Network
    notes: list[str]
    rms_relative_error: float     # sqrt(mean((predicted - measured)/measured)^2)) of the fitted network
    used: int                     # measurements in the fit


def _columns(good, axes: list[str]) -> tuple[list[str], np.ndarray]:
    names = ["1/flops_per_s"] + [f"latency({a})" for a in axes] + [f"1/bandwidth({a})" for a in axes]
    rows = []
    for m in good:
        f = m.features
        rows.append([float(f.flops)] + [float(f.axis_count.get(a, 0.0)) for a in axes]
                    + [float(f.axis_bytes.get(a, 0.0)) for a in axes])
    return names, np.array(rows, dtype=np.float64)


def _solve(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """nnls of the relative system (rows / y), columns scaled to unit norm: (x, relative RMS residual)."""
    from scipy.optimize import nnls

    w = a / y[:, None]
    scale = np.linalg.norm(w, axis=0)
    scale[scale == 0] = 1.0
    x_scaled, _ = nnls(w / scale, np.ones_like(y), maxiter=50 * w.shape[1] + 100)
    x = x_scaled / scale
    residual = (a @ x - y) / y
    return x, float(np.sqrt(np.mean(residual ** 2)))


def _dependent(w: np.ndarray, names: list[str]) -> list[str]:
    """The columns of `w` that lie in the span of the others (the ones a degenerate fit cannot separate)."""
    full = np.linalg.matrix_rank(w)
    return [names[j] for j in range(w.shape[1]) if np.linalg.matrix_rank(np.delete(w, j, axis=1)) == full]


def calibrate(measurements: Sequence, *, prior: Network, axes: Sequence[str], name: str = "calibrated",
              overhead: bool | None = None, provenance: dict | None = None) -> Fit:
    """Fit `prior`'s constants for mesh `axes` to `measurements` (see the module docstring)."""
    good = [m for m in measurements if getattr(m, "ok", False) and m.measured_s is not None and m.measured_s > 0]
    axes = list(axes)
    if not axes:
        raise MtfcError("calibrate: no mesh axes (compile the model with --mesh)")
    names, a = _columns(good, axes)
    notes: list[str] = []
    if not good:
        raise MtfcError(f"calibrate: no correct measurement to fit ({len(measurements)} measured, none ran and "
                        f"matched the unsharded run)")
    y = np.array([m.measured_s for m in good], dtype=np.float64)
    live = [j for j in range(a.shape[1]) if np.any(a[:, j] != 0)]
    dead_axes = [ax for ax in axes
                 if not np.any(a[:, names.index(f"latency({ax})")]) and not np.any(a[:, names.index(f"1/bandwidth({ax})")])]
    for ax in dead_axes:
        notes.append(f"mesh axis {ax!r} carried no collective in any measurement: its latency and bandwidth "
                     f"keep {prior.name!r}'s values")
    if 0 not in live:
        raise MtfcError("calibrate: every measured candidate has zero FLOPs; nothing to fit flops_per_s to")
    a_live = a[:, live]
    live_names = [names[j] for j in live]
    if len(good) < len(live):
        raise MtfcError(f"calibrate: {len(good)} correct measurement(s) for {len(live)} unknowns "
                        f"({', '.join(live_names)}); measure more candidates (--measure K)")
    w = a_live / y[:, None]
    if np.linalg.matrix_rank(w) < len(live):
        raise MtfcError(f"calibrate: the fit is degenerate: the measurements cannot separate "
                        f"{', '.join(_dependent(w, live_names))}; measure more varied candidates")
    x, rms = _solve(a_live, y)
    with_overhead = False
    if overhead is not False and len(good) >= len(live) + 1:
        a_over = np.hstack([a_live, np.ones((len(good), 1))])
        if np.linalg.matrix_rank(a_over / y[:, None]) == len(live) + 1:
            x_over, rms_over = _solve(a_over, y)
            if overhead or (rms > EXACT and rms_over <= OVERHEAD_GAIN * rms):
                x, rms, with_overhead = x_over, rms_over, True
    if overhead and not with_overhead:
        raise MtfcError(f"calibrate: cannot fit an overhead term too ({len(good)} measurement(s) for "
                        f"{len(live) + 1} unknowns, or the overhead is not separable)")
    fitted = dict(zip(live_names, x[:len(live)]))
    overhead_s = float(x[-1]) if with_overhead else 0.0

    inv_flops = fitted["1/flops_per_s"]
    if inv_flops > 0:
        flops_per_s = 1.0 / inv_flops
    else:
        flops_per_s = prior.flops_per_s
        notes.append(f"the fit gives FLOPs no measurable cost: flops_per_s keeps {prior.name!r}'s value")
    latency = {"*": prior.latency_s.get("*", max(prior.latency_s.values()))}
    bandwidth = {"*": prior.bandwidth_Bps.get("*", min(prior.bandwidth_Bps.values()))}
    for ax in axes:
        lat_key, bw_key = f"latency({ax})", f"1/bandwidth({ax})"
        latency[ax] = float(fitted[lat_key]) if lat_key in fitted else prior.latency(ax)
        inv_bw = fitted.get(bw_key)
        if inv_bw is None:
            bandwidth[ax] = prior.bandwidth(ax)
        elif inv_bw > 0:
            bandwidth[ax] = 1.0 / float(inv_bw)
        else:
            bandwidth[ax] = prior.bandwidth(ax)
            notes.append(f"the fit gives bytes over mesh axis {ax!r} no measurable cost: its bandwidth keeps "
                         f"{prior.name!r}'s value")
    record = {
        "measurements": len(good),
        "axes": axes,
        "overhead_fitted": with_overhead,
        "rms_relative_error_fit": round(rms, 6),
        "prior": prior.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if hasattr(os, "getloadavg"):
        record["load_average"] = [round(v, 2) for v in os.getloadavg()]
    if notes:
        record["notes"] = notes
    record.update(provenance or {})
    net = Network(name=name, flops_per_s=flops_per_s, latency_s=latency, bandwidth_Bps=bandwidth,
                  overhead_s=overhead_s, calibrated_on=record)
    predicted = np.array([net.step_seconds(m.features) for m in good])
    stored_rms = float(np.sqrt(np.mean(((predicted - y) / y) ** 2)))
    return Fit(net, notes, stored_rms, len(good))


def describe(fit: Fit) -> list[str]:
    """Lines for the user: the fitted constants, the fit's error, the notes."""
    n = fit.network
    lines = [f"calibrated network {n.name!r} from {fit.used} measurement(s): "
             f"flops_per_s {n.flops_per_s:.3g}, overhead {n.overhead_s * 1e3:.3f} ms, "
             f"relative RMS error {fit.rms_relative_error:.1%}"]
    for ax in n.latency_s:
        if ax != "*":
            lines.append(f"  axis {ax}: latency {n.latency(ax) * 1e6:.2f} us, bandwidth {n.bandwidth(ax):.3g} B/s")
    lines += [f"note: {note}" for note in fit.notes]
    return lines
