"""The layout search (docs/layout-search.md, "Method"): score candidate layouts
(`space`) with the cost model (`cost`) and rank them.

Ranking: candidates that fit the memory budget first, then by predicted
step time (``total_s``), then by peak memory, then by rules text (so equal
costs rank the same on every run).

Method, chosen by the size of the space (deterministic, not by a clock):

* **exhaustive** when the activation space has at most `EXHAUSTIVE_LIMIT`
  valid assignments: every one is scored, and for train steps every one's
  parameter rules too when the total stays within `EXHAUSTIVE_LIMIT` x 2;
* **beam** otherwise: from the replicated layout, each step extends the
  `BEAM_WIDTH` best layouts so far by every valid single move -- one more
  (dim, mesh axis), the axis free or used only by dims that never meet the
  dim in one value -- or by none, and keeps the `BEAM_WIDTH` best-ranked;
  it stops when a step changes nothing.  For train steps beyond the
  exhaustive size, parameter rules are searched for the `BEAM_WIDTH`
  fastest activation layouts and the `BEAM_WIDTH` best-ranked ones, each
  with its `PARAM_WIDTH` most promising parameter rules by a prescreen that
  needs no `predict` (`_prescreen`: fits, compute + the activation layout's
  communication, memory).

Candidates the partitioner refuses (`layout_cost.predict` raises
`MtfcError`) are counted and reported by reason, never scored.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass, field

from jax.extend.mlir import ir

from mtfc.errors import MtfcError
from mtfc.layout import space
from mtfc.layout.cost import Candidate, ModuleTable, evaluate_table, module_table, refusal_reason
from mtfc.mesh import Mesh

EXHAUSTIVE_LIMIT = 128
BEAM_WIDTH = 6
PARAM_WIDTH = 8


@dataclass
class SearchResult:
    """A search's ranked candidates and how it got them."""

    candidates: list[Candidate]           # best first (all scored, or the `top` best)
    searched: int                         # candidates scored or refused
    invalid: dict[str, int] = field(default_factory=dict)  # refusal reason -> count
    method: str = "exhaustive"
    seconds: float = 0.0

    def invalid_line(self) -> str:
        """One line: how many candidates the partitioner refused, and why."""
        n = sum(self.invalid.values())
        if not n:
            return "0 invalid"
        why = "; ".join(f"{k} ({v})" for k, v in sorted(self.invalid.items(), key=lambda kv: -kv[1]))
        return f"{n} invalid: {why}"


def rank_key(c: Candidate):
    return (not c.fits, c.total_s, c.peak_bytes, c.rules, c.param_rules)


class _Scorer:
    def __init__(self, table: ModuleTable, mesh: Mesh, network, budget):
        self.table, self.mesh, self.network, self.budget = table, mesh, network, budget
        self.scored: dict[tuple[str, str], Candidate | None] = {}
        self.invalid: dict[str, int] = {}

    def __call__(self, rules: str, param_rules: str = "") -> Candidate | None:
        key = (rules, param_rules)
        if key not in self.scored:
            try:
                self.scored[key] = evaluate_table(self.table, self.mesh, rules, param_rules, network=self.network,
                                                  memory_budget=self.budget)
            except MtfcError as e:
                reason = refusal_reason(e)
                self.invalid[reason] = self.invalid.get(reason, 0) + 1
                self.scored[key] = None
        return self.scored[key]

    def valid(self) -> list[Candidate]:
        return [c for c in self.scored.values() if c is not None]


def search_result(module: ir.Module, mesh: Mesh, *, network, memory_budget: int | None = None,
                  top: int | None = None, train: bool | None = None) -> SearchResult:
    """Search `module`'s layouts on `mesh` (see the module docstring).
    `train` (default: the module's ``mtfc.step``) searches parameter rules too."""
    start = time.perf_counter()
    table = module_table(module)
    info = space.space_info(module)
    if train is not None:
        info = dataclasses.replace(info, train=train)
    score = _Scorer(table, mesh, network, memory_budget)
    acts = list(itertools.islice(space.activation_space(info, mesh), EXHAUSTIVE_LIMIT + 1))
    method = "exhaustive"
    if len(acts) <= EXHAUSTIVE_LIMIT:
        for a in acts:
            score(space.rules_text(a))
    else:
        method = "beam"
        _beam(info, mesh, score)
    if info.train:
        act_candidates = [c for c in score.valid() if c.param_rules == ""]
        options = {c.rules: space.param_space(info, mesh, _assignment(c.rules))[1:] for c in act_candidates}
        if method == "exhaustive" and len(act_candidates) + sum(map(len, options.values())) <= EXHAUSTIVE_LIMIT * 2:
            for c in act_candidates:
                for p in options[c.rules]:
                    score(c.rules, p)
        else:
            method = "beam"
            fastest = sorted(act_candidates, key=lambda c: (c.total_s, c.rules))[:BEAM_WIDTH]
            ranked = sorted(act_candidates, key=rank_key)[:BEAM_WIDTH]
            for c in {c.rules: c for c in fastest + ranked}.values():
                for p in _prescreen(table, mesh, network, memory_budget, c, options[c.rules]):
                    score(c.rules, p)
    ranked = sorted(score.valid(), key=rank_key)
    searched = len(score.scored)
    return SearchResult(ranked[:top] if top else ranked, searched, dict(score.invalid), method,
                        time.perf_counter() - start)


def _prescreen(table: ModuleTable, mesh: Mesh, network, budget, base: Candidate, params: list[str]) -> list[str]:
    """The `PARAM_WIDTH` most promising parameter rules for activation layout
    `base`, by what costs no `predict`: fitting the budget first, then
    compute time plus `base`'s communication (a stored-state split adds
    gathers to it), then peak memory."""
    from mtfc.layout.cost import layouts_of, peak_memory, per_device_flops

    keyed = []
    for p in params:
        layouts = layouts_of(mesh, base.rules, p)
        with table.module.context:
            peak = sum(peak_memory(table, layouts))
            compute_s = network.compute_seconds(per_device_flops(table, layouts))
        keyed.append(((budget is not None and peak > budget), compute_s + base.comm_s, peak, p))
    return [k[-1] for k in sorted(keyed)[:PARAM_WIDTH]]


def _assignment(rules: str) -> space.Assignment:
    from mtfc.mesh import LayoutRules

    return LayoutRules.parse(rules).rules


def _beam(info: space.SpaceInfo, mesh: Mesh, score: _Scorer) -> None:
    """Grow layouts one (dim, mesh axis) at a time from the replicated one,
    keeping the `BEAM_WIDTH` best-ranked after each step, until a step
    changes nothing (the module docstring).  A move may give a dim an axis
    that other dims already use, when they never meet it in one value."""
    score("")
    beam: list[space.Assignment] = [()]
    for _ in range(len(info.dims) * len(mesh.names) + 1):
        pool = {space.rules_text(a): a for a in beam}  # "stop": each layout as it is
        for a in beam:
            for b in space.moves(info, mesh, a):
                pool.setdefault(space.rules_text(b), b)
        ranked = []
        for text, a in pool.items():
            c = score(text)
            if c is not None:
                ranked.append((rank_key(c), a))
        ranked.sort(key=lambda x: x[0])
        new = [a for _, a in ranked[:BEAM_WIDTH]] or [()]
        if new == beam:
            break
        beam = new


def search(module: ir.Module, mesh: Mesh, *, network, memory_budget: int | None = None, top: int | None = None,
           train: bool | None = None) -> list[Candidate]:
    """The ranked candidates, best first (fitting ones first); see `search_result`."""
    return search_result(module, mesh, network=network, memory_budget=memory_budget, top=top, train=train).candidates


def evaluate(module: ir.Module, mesh: Mesh, rules: str, param_rules: str, *, network,
             memory_budget: int | None = None) -> Candidate:
    """Score one candidate (`MtfcError` when the partitioner refuses it)."""
    return evaluate_table(module_table(module), mesh, rules, param_rules, network=network,
                          memory_budget=memory_budget)


def best(module: ir.Module, mesh: Mesh, *, network, memory_budget: int | None = None,
         train: bool | None = None) -> tuple[Candidate, SearchResult]:
    """The winner, or one-line `MtfcError` "no layout fits ..." when none fits the budget."""
    result = search_result(module, mesh, network=network, memory_budget=memory_budget, train=train)
    if not result.candidates:
        raise MtfcError(f"no valid layout on mesh {mesh}: every candidate was refused ({result.invalid_line()})")
    winner = result.candidates[0]
    if not winner.fits:
        smallest = min(result.candidates, key=lambda c: c.peak_bytes)
        from mtfc.layout.report import human_bytes

        raise MtfcError(
            f"no layout fits the memory budget of {human_bytes(memory_budget)} per device on mesh {mesh}: "
            f"the smallest of {len(result.candidates)} candidates needs {human_bytes(smallest.peak_bytes)} "
            f"({smallest.rules or 'replicated'}"
            + (f", params {smallest.param_rules}" if smallest.param_rules else "") + ")")
    return winner, result
