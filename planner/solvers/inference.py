"""The inference cut search (issue 20): contiguous stages over the topological order, as the training
chain DP cuts them (relayed tensors across cuts via planner.solvers.dp.cut_bytes / relay_matrix, read
through planner.costmodel.inference.IntervalTerms), stage s on device s, 1..D stages.

A DP over (stage, cut) keeps the Pareto set of (period, latency) labels, so one pass answers both
objectives and the latency budget exactly:
  throughput: minimise max_s period_s subject to memory and latency <= budget;
  latency:    minimise the latency subject to memory (and the budget, which it then meets or nothing does).
Ties go to the other objective, then to fewer stages.

The same problem as a MILP over intervals (solve_inference_ilp): binary y[s, i, j] picks [i, j) as stage s
(only intervals that fit memory get a variable), flow rows chain the stages from cut 0 to cut N,
    P >= sum_ij period(s, i, j) y[s, i, j]   for every stage s      (one interval per used stage)
    L  = sum_sij (compute + send)(s, i, j) y[s, i, j]    <= budget
and the objective is P (throughput) or L (latency), then the other one with the first held at its optimum,
then the stage count. Every coefficient is stage_terms' (planner.costmodel.inference), as in the DP.
The DP keeps at most MAX_LABELS labels per (stage, cut); where it had to drop some it is no longer exact,
and solver "auto" answers with the MILP instead (tests/test_inference.py checks they agree).
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


def _pareto(labels: list[tuple]) -> tuple[list[tuple], bool]:
    """The labels no other one beats on both period and latency, and whether some had to be dropped
    (more than MAX_LABELS: an even subset is kept, and the DP is no longer exact)."""
    labels.sort(key=lambda t: (t[0], t[1]))
    out, best_lat = [], float("inf")
    for lab in labels:
        if lab[1] < best_lat - 1e-12:
            out.append(lab)
            best_lat = lab[1]
    if len(out) > MAX_LABELS:
        idx = np.linspace(0, len(out) - 1, MAX_LABELS).round().astype(int)
        return [out[k] for k in sorted(set(idx))], True
    return out, False


MAX_ILP_INTERVALS = 60_000
"""Interval variables the MILP builds at most (stages x N^2 / 2); past it solver "ilp" is refused and "auto"
keeps the DP's answer, noting that it is not proven."""
ILP_TIME_LIMIT_S = 60.0
"""Per objective of the MILP; the interval MILPs in the tests and benches close in well under a second."""


class _Problem:
    """What both solvers read: the cost of stage s over [i, j) from stage_terms, None if it does not fit."""

    def __init__(self, profile, cluster, config: InferenceConfig) -> None:
        self.profile, self.cluster, self.config = profile, cluster, config
        self.tables = build_tables(profile)
        self.terms = IntervalTerms(self.tables, profile.nodes)
        self.N, D = self.tables.num_nodes, cluster.num_devices
        self.Smax = min(D, self.N, config.max_stages or D)
        self.speeds = speeds(cluster, profile)
        self.budget = config.latency_budget_ms if config.latency_budget_ms is not None else float("inf")

    def cost(self, i: int, j: int, s: int, last: bool) -> tuple[float, float] | None:
        """(period, latency share: forward + send) of stage s = [i, j) on device s."""
        st = stage_terms(self.terms, self.tables, self.cluster, self.config, self.speeds, i, j, s,
                         s - 1 if s else None, None if last else s + 1)
        if not st.fits:
            return None
        return st.period_ms, st.compute_ms + st.send_ms

    def plan(self, cuts: list[int], solver: dict) -> InferencePlan:
        plan = evaluate_cuts(self.profile, self.cluster, self.config, cuts, devices=list(range(len(cuts) + 1)),
                             tables=self.tables, terms=self.terms)
        plan.solver = solver
        return plan

    def nothing_fits(self) -> PipeplanError:
        single = evaluate_cuts(self.profile, self.cluster, self.config, [], devices=[0], tables=self.tables,
                               terms=self.terms)
        why = ("no contiguous cut into at most "
               f"{self.Smax} stages fits every device's memory" if self.config.latency_budget_ms is None else
               f"no contiguous cut into at most {self.Smax} stages fits memory within the latency budget "
               f"{self.config.latency_budget_ms:g} ms")
        return PipeplanError(f"{why} (one device would need {single.stages[0].memory.total / 2**30:.2f} GiB)")


def solve_inference(profile, cluster, config: InferenceConfig) -> InferencePlan:
    """The best contiguous cuts for the objective by config.solver (module docstring); PipeplanError when
    no cut fits memory and budget."""
    prob = _Problem(profile, cluster, config)
    if config.solver == "ilp":
        return _solve_ilp(prob)
    plan = _solve_dp(prob)
    if config.solver == "auto" and not plan.solver["exact"]:
        if _interval_count(prob) <= MAX_ILP_INTERVALS:
            return _solve_ilp(prob)
        plan.solver["note"] = (f"the DP kept {MAX_LABELS} Pareto labels per cut and dropped others, and the MILP "
                               f"would need more than {MAX_ILP_INTERVALS:,} interval variables: the plan is "
                               "not proven optimal")
    return plan


def _solve_dp(prob: _Problem) -> InferencePlan:
    t0 = time.perf_counter()
    N, Smax, budget, cost = prob.N, prob.Smax, prob.budget, prob.cost
    thinned = False

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
        for j, labs in cur.items():
            cur[j], dropped = _pareto(labs)
            thinned = thinned or dropped
        labels.append(cur)
        prev = cur
    if not finals:
        raise prob.nothing_fits()
    key = (lambda f: (f[0], f[1], f[2])) if prob.config.objective == "throughput" else (lambda f: (f[1], f[0], f[2]))
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
    return prob.plan(cuts, {"method": "pareto-dp", "seconds": time.perf_counter() - t0, "candidates": len(finals),
                            "stages_considered": Smax, "exact": not thinned})


def _interval_count(prob: _Problem) -> int:
    return prob.Smax * prob.N * (prob.N + 1) // 2


def _solve_ilp(prob: _Problem) -> InferencePlan:
    """The interval MILP of the module docstring, solved lexicographically (objective, the other, stages)."""
    import pulp

    from planner.solvers.ilp import _cbc_solver, _HighsWarm, _new_var, _silence_highs_banner, highspy

    t0 = time.perf_counter()
    if _interval_count(prob) > MAX_ILP_INTERVALS:
        raise PipeplanError(f"the inference MILP would need up to {_interval_count(prob):,} interval variables "
                            f"({prob.N} layers x {prob.Smax} stages; at most {MAX_ILP_INTERVALS:,}): use solver "
                            "\"dp\" or \"auto\"")
    N, Smax = prob.N, prob.Smax
    lp = pulp.LpProblem("inference", pulp.LpMinimize)
    var: dict[tuple[int, int, int], pulp.LpVariable] = {}  # (s, i, j): stage s is [i, j)
    cost: dict[tuple[int, int, int], tuple[float, float]] = {}
    for s in range(Smax):
        for i in ([0] if s == 0 else range(s, N)):
            for j in range(i + 1, N + 1):
                if j < N and s == Smax - 1:
                    continue  # a stage that is not last needs a next one
                c = prob.cost(i, j, s, j == N)
                if c is not None and c[1] <= prob.budget * (1 + 1e-9):
                    var[s, i, j] = _new_var(lp, f"y_{s}_{i}_{j}", 0, 1, pulp.LpBinary)
                    cost[s, i, j] = c
    if not var or (0, 0) not in {(s, i) for (s, i, _) in var}:
        raise prob.nothing_fits()
    starts: dict[tuple[int, int], list] = {}
    ends: dict[tuple[int, int], list] = {}
    for (s, i, j), v in var.items():
        starts.setdefault((s, i), []).append(v)
        if j < N:
            ends.setdefault((s, j), []).append(v)
    lp += pulp.lpSum(starts.get((0, 0), [])) == 1, "first_stage"
    for s in range(1, Smax):  # a stage ends at j (not last) <=> the next starts at j
        for i in range(s, N):
            if starts.get((s, i)) or ends.get((s - 1, i)):
                lp += pulp.lpSum(starts.get((s, i), [])) == pulp.lpSum(ends.get((s - 1, i), [])), f"flow_{s}_{i}"
    period = _new_var(lp, "period", 0)
    for s in range(Smax):
        terms = [cost[k][0] * v for k, v in var.items() if k[0] == s]
        if terms:
            lp += period >= pulp.lpSum(terms), f"period_{s}"
    latency = pulp.lpSum(cost[k][1] * v for k, v in var.items())
    if prob.config.latency_budget_ms is not None:
        lp += latency <= prob.budget * (1 + 1e-9), "budget"
    stages = pulp.lpSum((s + 1) * v for (s, i, j), v in var.items() if j == N)
    order = [period, latency] if prob.config.objective == "throughput" else [latency, period]
    backend = "highs" if highspy is not None else "cbc"
    exact, chosen = True, []
    for k, expr in enumerate([*order, stages]):
        lp.setObjective(expr)
        if backend == "highs":
            _silence_highs_banner()
            solver = _HighsWarm(msg=False, gapRel=1e-9, threads=1, timeLimit=ILP_TIME_LIMIT_S)
        else:
            solver = _cbc_solver(ILP_TIME_LIMIT_S, False)
        lp.solve(solver)
        if lp.status == pulp.LpStatusInfeasible or lp.sol_status == pulp.LpSolutionInfeasible:
            if k == 0:
                raise prob.nothing_fits()
            break  # cannot happen (the previous optimum is feasible): keep that solution
        solved = lp.sol_status == pulp.LpSolutionOptimal
        if not solved and (lp.sol_status != pulp.LpSolutionIntegerFeasible
                           or any(v.varValue is None for v in var.values())):
            if k == 0:
                raise PipeplanError(f"the inference MILP found no plan in {ILP_TIME_LIMIT_S:g} s; use solver \"dp\"")
            break  # a tie-break that found nothing: the previous solution stands
        chosen = sorted(key for key, v in var.items() if (v.varValue or 0) > 0.5)
        if not solved:  # an incumbent without proof: the first objective is not proven; a tie-break's is
            exact = exact and k > 0
            break
        value = pulp.value(expr)
        # hold this objective at its optimum (a relative hair of slack for the floats) for the next one
        lp += expr <= value * (1 + 1e-9) + 1e-12, f"hold_{k}"
    cuts = [j for (_, _, j) in chosen if j < N]
    return prob.plan(cuts, {"method": f"interval-milp ({backend})", "seconds": time.perf_counter() - t0,
                            "intervals": len(var), "stages_considered": Smax, "exact": exact})


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
