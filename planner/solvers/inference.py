"""The inference cut search (issue 20): contiguous stages over the topological order, as the training
chain DP cuts them (relayed tensors across cuts via planner.solvers.dp.cut_bytes / relay_matrix, read
through planner.costmodel.inference.IntervalTerms), stage s on device s, 1..D stages.

A DP over (stage, cut) keeps the Pareto set of (period, latency) labels, so one pass answers both
objectives and the latency budget exactly:
  throughput: minimise max_s period_s subject to memory and latency <= budget;
  latency:    minimise the latency subject to memory (and the budget, which it then meets or nothing does).
"""

from __future__ import annotations

import time

import numpy as np

from core.errors import PipeplanError
from planner.costmodel.cost import build_tables, speeds
from planner.costmodel.inference import (
    InferenceConfig,
    InferencePlan,
    IntervalTerms,
    evaluate_cuts,
    stage_terms,
)

MAX_LABELS = 64
"""Pareto labels kept per (stage, cut); more are thinned (evenly) - exact below this size."""


def _pareto(labels: list[tuple]) -> list[tuple]:
    labels.sort(key=lambda t: (t[0], t[1]))
    out, best_lat = [], float("inf")
    for lab in labels:
        if lab[1] < best_lat - 1e-12:
            out.append(lab)
            best_lat = lab[1]
    if len(out) > MAX_LABELS:
        idx = np.linspace(0, len(out) - 1, MAX_LABELS).round().astype(int)
        out = [out[k] for k in sorted(set(idx))]
    return out


def solve_inference(profile, cluster, config: InferenceConfig) -> InferencePlan:
    """The best contiguous cuts for the objective; PipeplanError when no cut fits memory and budget."""
    t0 = time.perf_counter()
    tables = build_tables(profile)
    terms = IntervalTerms(tables, np.array([n.output_bytes for n in profile.nodes], dtype=float))
    N, D = tables.num_nodes, cluster.num_devices
    Smax = min(D, N, config.max_stages or D)
    sp = speeds(cluster, profile)
    budget = config.latency_budget_ms if config.latency_budget_ms is not None else float("inf")

    def cost(i, j, s, last):
        st = stage_terms(terms, tables, cluster, config, sp, i, j, s, s - 1 if s else None, None if last else s + 1)
        if not st.fits:
            return None
        return st.period_ms, st.compute_ms + st.send_ms

    # labels[s][j]: (period, latency, i, parent index) for stages 0..s with stage s (not last) ending at j
    labels: list[dict[int, list[tuple]]] = []
    finals: list[tuple[float, float, int, int, int]] = []  # (period, latency, stages, i, parent)
    prev: dict[int, list[tuple]] = {0: [(0.0, 0.0, -1, -1)]}
    for s in range(Smax):
        cur: dict[int, list[tuple]] = {}
        for i, plabs in prev.items():
            if not plabs:
                continue
            # last stage [i, N)
            c = cost(i, N, s, True)
            if c is not None:
                for k, (p, lat, _, _) in enumerate(plabs):
                    period, total = max(p, c[0]), lat + c[1]
                    if total <= budget * (1 + 1e-9):
                        finals.append((period, total, s + 1, i, k))
            if s == Smax - 1:
                continue
            for j in range(i + 1, N):
                c = cost(i, j, s, False)
                if c is None:
                    continue
                for k, (p, lat, _, _) in enumerate(plabs):
                    total = lat + c[1]
                    if total <= budget * (1 + 1e-9):
                        cur.setdefault(j, []).append((max(p, c[0]), total, i, k))
        cur = {j: _pareto(v) for j, v in cur.items()}
        labels.append(cur)
        prev = cur
    if not finals:
        single = evaluate_cuts(profile, cluster, config, [], devices=[0], tables=tables, terms=terms)
        why = ("no contiguous cut into at most "
               f"{Smax} stages fits every device's memory" if config.latency_budget_ms is None else
               f"no contiguous cut into at most {Smax} stages fits memory within the latency budget "
               f"{config.latency_budget_ms:g} ms")
        raise PipeplanError(f"{why} (one device would need {single.stages[0].memory.total / 2**30:.2f} GiB)")
    key = (lambda f: (f[0], f[1], f[2])) if config.objective == "throughput" else (lambda f: (f[1], f[0], f[2]))
    best = min(finals, key=key)
    # walk back the cuts
    _, _, S, i, k = best
    cuts = []
    s = S - 2
    while s >= 0:
        cuts.append(i)
        lab = labels[s][i][k]
        i, k = lab[2], lab[3]
        s -= 1
    cuts.reverse()
    plan = evaluate_cuts(profile, cluster, config, cuts, devices=list(range(S)), tables=tables, terms=terms)
    plan.solver = {"method": "pareto-dp", "seconds": time.perf_counter() - t0, "candidates": len(finals),
                   "stages_considered": Smax}
    return plan


def brute_force(profile, cluster, config: InferenceConfig) -> InferencePlan | None:
    """Every contiguous cut into 1..D stages (tests: small chains only)."""
    import itertools

    tables = build_tables(profile)
    N, D = tables.num_nodes, cluster.num_devices
    best, best_key = None, None
    for S in range(1, min(D, N, config.max_stages or D) + 1):
        for cuts in itertools.combinations(range(1, N), S - 1):
            p = evaluate_cuts(profile, cluster, config, list(cuts), tables=tables)
            if not p.fits or not p.meets_budget:
                continue
            k = (p.period_ms, p.latency_ms) if config.objective == "throughput" else (p.latency_ms, p.period_ms)
            if best_key is None or k < best_key:
                best, best_key = p, k
    return best
