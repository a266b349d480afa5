"""`mtfc run --check` of a train-step module: each result judged by its role.

A train step's results are the loss, metrics (``grad_norm``,
``learning_rate``, the model's scalar outputs), the new optimizer state
(``opt/<param name>/<slot>`` and the step counter ``opt/step``) and the new
parameters (docs/IR.md, "Train-step modules").  Every result is compared
with the unsharded run's (`check.compare`), and `judge_step` decides by role
which comparisons decide the verdict (*gated*) and which are only shown
(*reported*):

* ``loss``, ``metric``, ``tap`` (a value the model taps, `mtf.tap` /
  ``--tap``), ``optimizer_state`` (and any ``output``): gated.
  The optimizer state carries every gradient: Adam's ``m`` is (1 - b1)
  times the clipped gradient (``v`` its square), SGD's ``momentum`` the
  gradient on a first step.  Adafactor keeps no first moment: its slots
  hold ``g^2`` (a vector) or the row and column means of ``g^2`` (a
  matrix), so there the gradients are gated up to their signs.
* ``parameter``: gated unless the optimizer *normalizes* each update by a
  second-moment estimate.  Adam/AdamW's first update is
  ``g / (sqrt(g^2) + eps)`` -- about ``sign(g)`` -- and Adafactor's
  ``g / sqrt(g^2 + eps1)`` for an unfactored parameter, so rounding-level
  differences in a near-zero gradient element move that parameter by up to
  the learning rate: a correct program fails an f32 tolerance there.  Such
  parameters are reported (their worst error is shown), and their gradients
  are gated through the optimizer state instead.  SGD's ``p - lr * g``
  (with or without momentum) is well conditioned: gated.

Which optimizer updated the parameters is read from the module
(``mtfc.optimizer``, its name before the first ``:``).  For a name this
table does not know, or a module that records none, the rule falls back to
the IR alone: a parameter with optimizer-state results of its own
(``opt/<its name>/...``) is reported -- its slots are gated -- and a
parameter without any is gated.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtfc.runtime.check import Comparison, compare

# optimizer name -> whether its parameter update divides by a per-element
# second-moment estimate (ill-conditioned where a gradient is near zero)
NORMALIZED_UPDATE = {"sgd": False, "adam": True, "adamw": True, "adafactor": True}

ROLE_ORDER = ("loss", "metric", "tap", "output", "optimizer_state", "parameter")


@dataclass
class Judged:
    comparison: Comparison
    role: str
    gated: bool

    @property
    def failed(self) -> bool:
        return self.gated and not self.comparison.ok


@dataclass
class StepCheck:
    """Every result's comparison, its role and whether it is gated; `note`
    says why parameters are reported, when some are."""

    results: list[Judged]
    note: str | None = None

    @property
    def ok(self) -> bool:
        return not any(j.failed for j in self.results)

    def by_name(self) -> dict[str, Judged]:
        return {j.comparison.name: j for j in self.results}

    def summary_rows(self) -> list[tuple]:
        """One row per role (loss, metric, optimizer_state, parameter, ...):
        role, count, worst error, worst output, its tolerance, status; the
        worst output is the one furthest over (or nearest to) its tolerance."""
        rows = [("role", "count", "worst error", "worst output", "tolerance", "status")]
        roles = sorted({j.role for j in self.results},
                       key=lambda r: (ROLE_ORDER.index(r) if r in ROLE_ORDER else len(ROLE_ORDER), r))
        for role in roles:
            group = [j for j in self.results if j.role == role]
            worst = max(group, key=lambda j: (_excess(j.comparison), j.comparison.error))
            gated = [j for j in group if j.gated]
            if not gated:
                status = "reported"
            elif any(j.failed for j in gated):
                status = "FAIL"
            elif len(gated) < len(group):
                status = "ok (some reported)"
            else:
                status = "ok"
            c = worst.comparison
            rows.append((role, str(len(group)), f"{c.error:.3e}", c.name, f"{c.tolerance:.0e}", status))
        return rows

    def failures(self) -> list[Judged]:
        return [j for j in self.results if j.failed]


def _excess(c: Comparison) -> float:
    """How far `c` is over its tolerance (error / tolerance; an exact
    comparison that differs is infinitely over)."""
    if c.tolerance > 0:
        return c.error / c.tolerance
    return 0.0 if c.error == 0 else float("inf")


def optimizer_name(spec: str | None) -> str | None:
    """The optimizer's name in an ``mtfc.optimizer`` spec (``"adamw:lr=..."`` -> ``"adamw"``)."""
    if not spec:
        return None
    return spec.partition(":")[0].strip().lower() or None


def parameter_gating(optimizer: str | None, param: str, state_names: set[str]) -> bool:
    """Whether parameter `param`'s new value is gated (module docstring):
    by the recorded optimizer's kind when it is known, else by whether the
    module has optimizer-state results ``opt/<param>/...`` for it."""
    name = optimizer_name(optimizer)
    if name in NORMALIZED_UPDATE:
        return not NORMALIZED_UPDATE[name]
    return not any(s.startswith(f"opt/{param}/") for s in state_names)


def judge_step(signatures, sharded: dict, reference: dict, *, optimizer: str | None,
               precision: str = "f32") -> StepCheck:
    """Compare every result of a train step (`signatures`: ``mir.Signature``
    of the results; `sharded`, `reference`: name -> array) and judge it by
    role.  f32 results of a step computed in `precision` (bf16) are judged at
    that dtype's tolerance (``mtfc.precision``)."""
    states = {s.name for s in signatures if s.role == "optimizer_state"}
    judged: list[Judged] = []
    reported_params = 0
    for sig in signatures:
        dtype = precision if precision != "f32" and sig.dtype == "f32" else sig.dtype
        c = compare(sig.name, dtype, sharded[sig.name], reference[sig.name])
        gated = True
        if sig.role == "parameter":
            gated = parameter_gating(optimizer, sig.name, states)
            reported_params += not gated
        judged.append(Judged(c, sig.role, gated))
    note = None
    if reported_params:
        name = optimizer_name(optimizer)
        why = (f"{name} divides each update by a second-moment estimate (about g / |g| on the first step)"
               if name in NORMALIZED_UPDATE else
               f"the optimizer ({name or 'not named'}) keeps state for them, so it may normalize the update")
        note = (f"parameter: {reported_params} new parameter(s) reported, not gated: {why}, so rounding noise in "
                f"a near-zero gradient element moves its parameter by up to the learning rate; the gradients are "
                f"gated through the optimizer state")
    return StepCheck(judged, note)


def report_lines(check: StepCheck) -> list[str]:
    """The summary table (one row per role), the note on reported
    parameters, and one line per gated result over its tolerance."""
    from mtfc.runtime.tables import table

    lines = [table(check.summary_rows())]
    if check.note:
        lines.append(check.note)
    for j in check.failures():
        c = j.comparison
        lines.append(f"MISMATCH {j.role} {c.name}: max rel err {c.error:.3e} > tolerance {c.tolerance:.0e}")
    return lines
