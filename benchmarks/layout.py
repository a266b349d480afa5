"""The layout search's quality (issue 12 item 5): the chosen layout's
measured step time against every valid candidate's, on the 8-device CPU mesh.

    python -m benchmarks.layout --calibrate cpu-network.json --json benchmarks/results-layout.json
    python -m benchmarks.layout --quick                                  # the tiny transformer only (smoke)

benchmarks/results-layout.json was made with ``--max-candidates 100
--max-train-candidates 24`` (about 30 minutes on the shared 2 cores,
2026-12-03), so only the U-Net forward step's 100 candidates were measured
exhaustively; the others are sampled from the ranking: see 3. below.  A
space over `SCORE_LIMIT` candidates (MoE's train step: 397,561) is scored
on a seeded uniform sample.

Models (each forward and train step, mesh ``rows:2,cols:4``): the benchmark
transformer (`benchmarks.model`) at two sizes (``small``, ``medium``), the
MoE example (examples/moe.py) and the conv example (examples/unet.py).

Per model and step:

1. **Every valid candidate** of the search's space (`mtfc.layout.space`:
   each activation assignment and, for train steps, each of its parameter
   rules) is scored with the prior network (``--network``, default
   ``cpu``); those the partitioner refuses are counted.  Two hand-written
   baselines are scored too, in the space or not: pure **data parallel**
   (``batch:rows+cols``) and a **Megatron** layout (per model, `BASELINES`).
2. The **memory budget** is the median predicted per-device peak of the
   valid candidates (so about half of them do not fit): the search must find
   a layout that fits it, and XLA's compiled per-device peak of the chosen
   layout is checked against it.
3. **Every candidate is measured** (`mtfc.layout.measure.measure_candidates`:
   compiled in explicit mode, run on the 8 virtual CPU devices, interleaved
   rounds of ``--repeats`` steps, median), up to ``--max-candidates``
   (forward, default 96) or ``--max-train-candidates`` (train, default 40:
   a train step's space holds hundreds, each a few seconds to compile on the
   shared 2 cores) per model and step; above that, the top half of the cap
   from the prior ranking and the other half spread over the rest
   (`measure.select`) -- the table and JSON say which (``exhaustive``).
   Every run is **gated** against the unsharded run (relative error <= 1e-5
   f32): a mismatch is reported and exits 1, and a wrong layout never counts
   as the best.
4. **Calibration**: the `Network` constants are fitted to all correct
   measurements of all models (`mtfc.layout.calibrate`, nnls), saved with
   ``--calibrate FILE``; the ``cpu`` preset (`mtfc.layout.network`) holds
   the constants of such a run.  Note that the calibrated choice is then
   judged on the measurements it was fitted to (a handful of constants
   fitted to hundreds of measurements; ``rho_prior`` shows the ranking
   before any fitting).
5. **The search** (`mtfc.layout.search.search_result`, its own method:
   exhaustive or beam) is run with the calibrated network and the budget;
   its choice, the 3 fastest measured candidates that fit the budget, and the
   two baselines are measured **again, together** (interleaved,
   ``--final-steps`` steps), and the table reports that run: the best is the
   fastest of it that fits the budget (the choice included), and the chosen
   layout's time is set against it: within 10% or not, within the budget
   (XLA's per-device peak) or not, and the baselines.

Columns: model, step, candidates valid (measured), the chosen layout and its
ms, the best measured layout and its ms, chosen/best, within 10%, fits the
budget (XLA's peak), data parallel ms, Megatron ms, and Spearman's rank
correlation of predicted and measured step time over all measured
candidates, with the prior and the calibrated network.  The machine is shared
(the JSON records the load average at the start and end of each model): the
times are medians of interleaved steps, but expect noise of 10-20%.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
MESH = "rows:2,cols:4"

# (data parallel, Megatron) per model; Megatron: the weights' hidden dims
# split (heads, d_ff; experts' expert_ff; the convolutions' features) and the
# batch over what is left, as a user would write them.
BASELINES = {
    "transformer": ("batch:rows+cols", "heads:rows+cols,d_ff:rows+cols,vocab:rows+cols"),
    "moe": ("batch:rows+cols", "batch:rows,heads:cols,d_ff:cols,expert_ff:cols"),
    "unet": ("batch:rows+cols", "batch:rows,f1:cols,f2:cols"),
}
MODELS = {  # name -> (kind, size or example file)
    "transformer-small": ("transformer", "small"),
    "transformer-medium": ("transformer", "medium"),
    "moe": ("moe", "moe.py"),
    "unet": ("unet", "unet.py"),
}
QUICK = {"transformer-tiny": ("transformer", "tiny")}
QUICK_CANDIDATES = 8  # measured per model and step with --quick
FINAL_CONTENDERS = 3  # phase 1's fastest fitting candidates measured again beside the choice


def global_module(model: str, train: bool):
    """The model's GLOBAL module (mode none) on `MESH`."""
    from mtfc.compiler import compile_file, compile_function

    kind, what = {**MODELS, **QUICK}[model]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "transformer":
            from benchmarks import model as bm

            fn, inputs = bm.mtfc_model(bm.SIZES[what])
            return compile_function(fn, inputs, mesh=MESH, layout="", mode="none", name="transformer",
                                    train=train, optimizer=bm.OPTIMIZER if train else None)
        return compile_file(os.path.join(EXAMPLES, what), mesh=MESH, mode="none", train=train)


def _key(rules: str, param_rules: str) -> tuple:
    """A candidate's identity: its rules as sets (texts may order dims differently)."""
    from mtfc.mesh import LayoutRules

    return (tuple(sorted(LayoutRules.parse(rules).rules)), tuple(sorted(LayoutRules.parse(param_rules).rules)))


SCORE_LIMIT = 60_000  # above: a seeded uniform sample of SCORE_SAMPLE candidates is scored (MoE's train step)
SCORE_SAMPLE = 6_000


def all_candidates(module, mesh, network) -> tuple[list, int, int, bool]:
    """Every valid candidate of the search's space, scored with `network`:
    (scored candidates, refused, the space's size, whether all were scored).
    A space over `SCORE_LIMIT` is scored on a seeded uniform sample of
    `SCORE_SAMPLE` (scoring one takes 5-40 ms: the MoE train step's 397,561
    would take hours)."""
    import random

    from mtfc.errors import MtfcError
    from mtfc.layout import space
    from mtfc.layout.cost import evaluate_table, module_table

    table = module_table(module)
    info = space.space_info(module)
    pairs = [(space.rules_text(a), p) for a in space.activation_space(info, mesh)
             for p in (space.param_space(info, mesh, a) if info.train else [""])]
    size, complete = len(pairs), len(pairs) <= SCORE_LIMIT
    if not complete:
        pairs = random.Random(0).sample(pairs, SCORE_SAMPLE)
    out, refused = [], 0
    for rules, p in pairs:
        try:
            out.append(evaluate_table(table, mesh, rules, p, network=network))
        except MtfcError:
            refused += 1
    return out, refused, size, complete


def _evaluate(module, mesh, rules, param_rules, network, budget=None):
    from mtfc.errors import MtfcError
    from mtfc.layout.search import evaluate

    try:
        return evaluate(module, mesh, rules, param_rules, network=network, memory_budget=budget)
    except MtfcError as e:
        return str(e).splitlines()[0]


def _with_network(c, network, budget):
    """`c` re-priced by `network` (its features do not depend on the network), fits against `budget`."""
    import dataclasses

    compute, comm = network.seconds(c.features)
    return dataclasses.replace(c, compute_s=compute, comm_s=comm, total_s=compute + comm,
                               fits=budget is None or c.peak_bytes <= budget)


def run_model(model: str, train: bool, *, prior, max_candidates: int, steps: int, echo) -> dict:
    """Phase 1 of one model and step: score and measure the candidates (see the module docstring)."""
    from mtfc import ir as mir
    from mtfc.layout.measure import measure_candidates, select
    from mtfc.layout.search import rank_key

    load_start = os.getloadavg()
    start = time.perf_counter()
    module = global_module(model, train)
    mesh = mir.module_mesh(module)
    cands, refused, space_size, all_scored = all_candidates(module, mesh, prior)
    peaks = sorted(c.peak_bytes for c in cands)
    budget = int(statistics.median(peaks))
    cands = sorted((_with_network(c, prior, budget) for c in cands), key=rank_key)
    known = {_key(c.rules, c.param_rules): c for c in cands}
    baselines = {}
    for name, rules in zip(("data_parallel", "megatron"), BASELINES[{**MODELS, **QUICK}[model][0]]):
        c = known.get(_key(rules, ""))
        if c is None:
            c = _evaluate(module, mesh, rules, "", prior, budget)
            baselines[name] = {"rules": rules, "in_space": False,
                               "refused": c if isinstance(c, str) else None}
        else:
            baselines[name] = {"rules": c.rules, "in_space": True, "refused": None}
        if not isinstance(c, str):
            baselines[name]["candidate"] = c
    exhaustive = all_scored and len(cands) <= max_candidates
    picks = list(range(len(cands))) if exhaustive else select(len(cands), max_candidates // 2,
                                                               max_candidates - max_candidates // 2)
    chosen = [cands[i] for i in picks]
    for b in baselines.values():
        c = b.get("candidate")
        if c is not None and all(_key(c.rules, c.param_rules) != _key(x.rules, x.param_rules) for x in chosen):
            chosen.append(c)
    echo(f"{model} {'train' if train else 'forward'}: {space_size} candidates, {len(cands)} valid scored "
         f"({refused} refused{'' if all_scored else ', a uniform sample'}), "
         f"measuring {len(chosen)}{'' if exhaustive else ' (sampled)'}, budget {budget:,} B")
    measured = measure_candidates(module, chosen, k=len(chosen), lower_ranked=0, steps=steps, echo=None)
    return {"model": model, "step": "train" if train else "forward", "mesh": MESH, "valid": len(cands),
            "refused": refused, "space_size": space_size, "all_scored": all_scored, "exhaustive": exhaustive, "budget_bytes": budget, "module": module,
            "candidates": cands, "measurements": measured, "baselines": baselines,
            "load_average_start": list(load_start), "load_average_end": list(os.getloadavg()),
            "seconds": time.perf_counter() - start}


def finish_model(rec: dict, network, *, final_steps: int, echo) -> dict:
    """Phase 2: the search with `network` and the budget, then its choice, the best measured and the
    baselines measured again together; the model's JSON record."""
    from mtfc import ir as mir
    from mtfc.layout.measure import measure_candidates, rank_correlation
    from mtfc.layout.search import search_result

    module, budget = rec["module"], rec["budget_bytes"]
    mesh = mir.module_mesh(module)
    ms = rec["measurements"]
    for m in ms:
        m.predicted_prior_s = m.predicted_s
        m.predicted_calibrated_s = network.step_seconds(m.features)
    rho_prior, n = rank_correlation(ms)
    rho_cal = _rho([(m.predicted_calibrated_s, m.measured_s) for m in ms if m.ok and m.measured_s is not None])
    result = search_result(module, mesh, network=network, memory_budget=budget)
    choice = result.candidates[0]
    fitting = sorted((m for m in ms if m.ok and m.measured_s is not None and m.peak_bytes <= budget),
                     key=lambda m: m.measured_s)
    pool = {_key(c.rules, c.param_rules): c
            for c in rec["candidates"] + [b["candidate"] for b in rec["baselines"].values() if "candidate" in b]}
    final = [("chosen", choice)]
    for m in fitting[:FINAL_CONTENDERS]:  # phase 1's fastest that fit: the final run picks the best of them
        final.append(("contender", _with_network(pool[_key(m.rules, m.param_rules)], network, budget)))
    for name, b in rec["baselines"].items():
        if "candidate" in b:
            final.append((name, _with_network(b["candidate"], network, budget)))
    unique, roles = [], {}
    for role, c in final:
        k = _key(c.rules, c.param_rules)
        if k not in roles:
            unique.append(c)
            roles[k] = []
        roles[k].append(role)
    again = measure_candidates(module, unique, k=len(unique), lower_ranked=0, steps=final_steps)
    by_role = {}
    for m in again:
        for role in roles[_key(m.rules, m.param_rules)]:
            by_role[role] = m
    # the best of the final run among the layouts that fit the budget (predicted) and are correct
    contenders = [m for m in again if m.ok and m.measured_s is not None and m.peak_bytes <= budget]
    if contenders:
        by_role["best_measured"] = min(contenders, key=lambda m: m.measured_s)
    c, b = by_role["chosen"], by_role.get("best_measured")
    ratio = (c.measured_s / b.measured_s) if (b is not None and c.ok and b.ok and c.measured_s and b.measured_s) else None
    chosen_measured_phase1 = next((m for m in ms if _key(m.rules, m.param_rules) == _key(c.rules, c.param_rules)), None)
    out = {
        "model": rec["model"], "step": rec["step"], "mesh": rec["mesh"], "valid": rec["valid"],
        "refused": rec["refused"], "space_size": rec["space_size"], "all_scored": rec["all_scored"],
        "measured": len(ms), "exhaustive": rec["exhaustive"],
        "budget_bytes": budget, "search_method": result.method, "search_seconds": round(result.seconds, 3),
        "chosen": _final_dict(c, budget), "best_measured": _final_dict(b, budget) if b else None,
        "chosen_over_best": ratio, "within_10pct": None if ratio is None else bool(ratio <= 1.10),
        "chosen_fits_budget": c.xla_peak_bytes is not None and c.xla_peak_bytes <= budget,
        "chosen_predicted_fits": bool(c.peak_bytes <= budget),
        "chosen_was_measured_in_phase1": chosen_measured_phase1 is not None,
        "baselines": {name: ({**{k: v for k, v in bl.items() if k != "candidate"},
                              **(_final_dict(by_role[name], budget) if name in by_role else {})})
                      for name, bl in rec["baselines"].items()},
        "rho_prior": rho_prior, "rho_calibrated": rho_cal, "correct": n,
        "mismatches": sum(1 for m in ms + again if m.failure is None and not m.ok),
        "failures": sum(1 for m in ms + again if m.failure is not None),
        "load_average_start": rec["load_average_start"], "load_average_end": rec["load_average_end"],
        "load_average_final": list(os.getloadavg()), "seconds": round(rec["seconds"], 1),
        "candidates": [{**m.as_dict(), "predicted_prior_s": m.predicted_prior_s,
                        "predicted_calibrated_s": m.predicted_calibrated_s} for m in ms],
    }
    echo(table([out]).splitlines()[-1])
    return out


def _final_dict(m, budget) -> dict:
    return {"rules": m.rules, "param_rules": m.param_rules, "measured_s": m.measured_s, "ok": m.ok,
            "error": m.error, "predicted_peak_bytes": m.peak_bytes, "xla_peak_bytes": m.xla_peak_bytes,
            "fits_budget": m.xla_peak_bytes is not None and m.xla_peak_bytes <= budget, "times": m.times,
            "failure": m.failure}


def _rho(pairs) -> float | None:
    if len(pairs) < 3 or len({p for p, _ in pairs}) < 2 or len({q for _, q in pairs}) < 2:
        return None
    from scipy.stats import spearmanr

    return float(spearmanr([p for p, _ in pairs], [q for _, q in pairs]).statistic)


def _layout(d: dict | None) -> str:
    if not d:
        return "-"
    text = d["rules"] or "(replicated)"
    return text + (f" / params {d['param_rules']}" if d.get("param_rules") else "")


def _ms(d: dict | None) -> str:
    return "-" if not d or d.get("measured_s") is None else f"{d['measured_s'] * 1e3:.2f}"


def _num(x, fmt="{:.2f}") -> str:
    return "-" if x is None else fmt.format(x)


COLUMNS = [
    ("model", lambda r: r["model"]), ("step", lambda r: r["step"]),
    ("candidates: space, scored (measured)", lambda r: f"{r.get('space_size', r['valid']):,}, "
     f"{r['valid']:,}{'' if r.get('all_scored', True) else ' sampled'} ({r['measured']}"
     f"{'' if r['exhaustive'] else ', sampled'})"),
    ("chosen", lambda r: _layout(r["chosen"])), ("chosen ms", lambda r: _ms(r["chosen"])),
    ("best measured", lambda r: _layout(r["best_measured"])), ("best ms", lambda r: _ms(r["best_measured"])),
    ("chosen/best", lambda r: _num(r["chosen_over_best"])),
    ("within 10%", lambda r: "-" if r["within_10pct"] is None else ("yes" if r["within_10pct"] else "NO")),
    ("fits budget", lambda r: "yes" if r["chosen_fits_budget"] else "NO"),
    ("data parallel ms", lambda r: _ms(r["baselines"].get("data_parallel"))),
    ("Megatron ms", lambda r: _ms(r["baselines"].get("megatron"))),
    ("rho prior", lambda r: _num(r["rho_prior"])), ("rho calibrated", lambda r: _num(r["rho_calibrated"])),
]


def table(rows: list[dict]) -> str:
    """The Markdown table, one row per model and step."""
    head = "| " + " | ".join(name for name, _ in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    return "\n".join([head, rule] + ["| " + " | ".join(f(r) for _, f in COLUMNS) + " |" for r in rows])


def candidates_table(r: dict) -> str:
    """Predicted (prior, calibrated) against measured for every measured candidate of one model and step."""
    lines = [f"{r['model']} {r['step']}:", "| layout | param layout | predicted ms (prior) | predicted ms (calibrated) "
             "| measured ms | check |", "|---|---|---|---|---|---|"]
    for c in sorted(r["candidates"], key=lambda c: (c["measured_s"] is None, c["measured_s"] or 0)):
        check = "ok" if c["ok"] else (c["failure"] or "MISMATCH")
        lines.append(f"| {c['rules'] or '(replicated)'} | {c['param_rules'] or '-'} | {c['predicted_prior_s'] * 1e3:.3f} "
                     f"| {c['predicted_calibrated_s'] * 1e3:.3f} | {_num(c['measured_s'] and c['measured_s'] * 1e3, '{:.3f}')} "
                     f"| {check} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layout", description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join({**MODELS, **QUICK}))
    parser.add_argument("--steps", default="forward,train", help="forward, train or both")
    parser.add_argument("--network", default="cpu", help="the prior network (preset or JSON file)")
    parser.add_argument("--calibrate", metavar="FILE", help="save the network fitted to all measurements")
    parser.add_argument("--max-candidates", type=int, default=96, help="per model, forward (above: sampled)")
    parser.add_argument("--max-train-candidates", type=int, default=40, help="per model, train step (above: sampled)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per candidate (interleaved)")
    parser.add_argument("--final-steps", type=int, default=15, help="timed steps of the final comparison")
    parser.add_argument("--quick", action="store_true", help="the tiny transformer, few steps")
    parser.add_argument("--json", metavar="FILE", help="write the results")
    parser.add_argument("--candidates-table", action="store_true", help="print every candidate's row too")
    args = parser.parse_args(argv)

    from mtfc.errors import MtfcError
    from mtfc.files.atomic import write_text_atomic
    from mtfc.layout.calibrate import calibrate, describe
    from mtfc.layout.network import load_network, save_network
    from mtfc.mesh import Mesh
    from mtfc.runtime import devices as rt_devices

    rt_devices.ensure_cpu_devices(8)
    models = list(QUICK) if args.quick else [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in {**MODELS, **QUICK}]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r} (choose from {', '.join({**MODELS, **QUICK})})")
    kinds = [s.strip() for s in args.steps.split(",") if s.strip()]
    if not kinds or any(k not in ("forward", "train") for k in kinds):
        parser.error("--steps: forward, train or forward,train")
    steps, final_steps = (2, 3) if args.quick else (args.repeats, args.final_steps)
    caps = {"forward": args.max_candidates, "train": args.max_train_candidates}
    if args.quick:
        caps = {k: min(v, QUICK_CANDIDATES) for k, v in caps.items()}
    try:
        prior = load_network(args.network)
    except MtfcError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    records = [run_model(m, k == "train", prior=prior, max_candidates=caps[k], steps=steps, echo=say)
               for m in models for k in kinds]
    pooled = [m for r in records for m in r["measurements"]]
    try:
        fit = calibrate(pooled, prior=prior, axes=list(Mesh.parse(MESH).names), name="cpu",
                        provenance={"backend": "cpu", "mesh": MESH, "source": "benchmarks/layout.py",
                                    "models": [f"{r['model']} {r['step']}" for r in records]})
        network, fit_lines = fit.network, describe(fit)
    except MtfcError as e:
        network, fit_lines, fit = prior, [f"calibration refused: {e}; the prior network is used"], None
    for line in fit_lines:
        say(line)
    if args.calibrate and fit is not None:
        save_network(network, args.calibrate)
        say(f"wrote {args.calibrate}")
    rows = [finish_model(r, network, final_steps=final_steps, echo=say) for r in records]
    print(table(rows))
    if args.candidates_table:
        for r in rows:
            print()
            print(candidates_table(r))
    result = {"benchmark": "layout", "started": started, "mesh": MESH, "cpu_count": os.cpu_count(),
              "steps_per_candidate": steps, "final_steps": final_steps, "max_candidates": caps,
              "network_prior": prior.as_dict(), "network_calibrated": network.as_dict(),
              "calibration": fit_lines, "rows": rows}
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1, default=float) + "\n")
        say(f"wrote {args.json}")
    bad = sum(r["mismatches"] for r in rows)
    if bad:
        say(f"{bad} candidate run(s) did not match the unsharded run")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
