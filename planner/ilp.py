"""The integer program: optimal stages on any layer DAG, per-stage recompute, several stages per device.

Formulation (docs/ilp.md has it in full):
  x[i,s] = 1 iff node i is in stage <= s (cumulative, monotone in s); node i is in stage s
  iff y[i,s] = x[i,s] - x[i,s-1] = 1. Every edge (u,v): x[v,s] <= x[u,s] (data flows forward).
  a[t,b] >= x[p,b] - x[c,b] for each consumer c of tensor t produced by p: t crosses boundary b.
  Relay through stage s: r[t,s] >= a[t,s-1] + a[t,s] - 1. Tied copies: h[f,s] >= y[u,s] - y[owner,s].
  Memory per device: sum over its stages of memory_coefficients(...) terms <= limit.
  Time: T_s = (fwd + bwd + rec_s * fwd)/speed + comm_s; D_d = sum over d's stages; minimise
  step >= M * Dmax and step >= (M - 1/v) Dmax + (sum T - kappa sum_{s<S-1} W)/v.
Bounds from a known plan (the DP's) fix most x: a node cannot sit in stage s if the work of
itself and its ancestors exceeds what stages 0..s can do in UB/M each (same for descendants).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import pulp

from planner.cost import CostTables, zero_bubble_weight_factor
from planner.memory import memory_coefficients

try:
    import highspy
except ImportError:  # pragma: no cover - highspy is a dependency
    highspy = None


@dataclass(slots=True)
class ILPProblem:
    tables: CostTables
    num_microbatches: int
    schedule: str
    virtual_stages: int
    stage_device: list[int]
    stage_speed: list[float]
    device_limit: dict[int, float]
    """Device memory minus the reserve counted once, minus a rounding margin."""
    stage_in_flight: list[int]
    recompute_options: tuple[bool, ...]
    link_latency_ms: list[float]
    """Per boundary b: latency of the link (ms), 0 when both stages share a device."""
    link_ms_per_byte: list[float]
    config: object
    stage_overhead: list[float] | None = None
    """Per stage: its device's per-action runtime overhead (ms), added to fwd and bwd (None: 0)."""


@dataclass(slots=True)
class ILPResult:
    stage_of: list[int] | None
    recompute: list[bool] | None
    status: str
    """"optimal", "feasible", "infeasible", "timeout" (no solution found)."""
    objective: float | None
    bound: float | None
    seconds: float


_BANNER_SILENCED = False


def _silence_highs_banner() -> None:
    """highspy prints a banner to fd 1 when the first Highs() of a process is built; swallow it so
    `pipeplan plan --json` prints only JSON."""
    global _BANNER_SILENCED
    if _BANNER_SILENCED or highspy is None:
        return
    import os
    import sys

    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            highspy.Highs()
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    _BANNER_SILENCED = True


class _HighsWarm(pulp.HiGHS):
    """pulp's HiGHS with a starting solution handed to highspy before the run."""

    start: dict[str, float] | None = None

    def callSolver(self, lp):
        if self.start and highspy is not None:
            try:
                sol = highspy.HighsSolution()
                sol.col_value = [float(self.start.get(v.name, v.lowBound or 0.0)) for v in lp.variables()]
                sol.value_valid = True
                lp.solverModel.setSolution(sol)
            except (AttributeError, TypeError, ValueError, RuntimeError):
                self.start = None  # a warm start is an optimisation only: solve without it
        lp.solverModel.run()


def _ancestor_work(tables: CostTables, reverse: bool) -> list[float]:
    """Work (fwd + bwd, reference ms) of each node plus all its ancestors (descendants if reverse)."""
    N = tables.num_nodes
    preds: list[list[int]] = [[] for _ in range(N)]
    for t in tables.tensors:
        for c in t.consumers:
            if reverse:
                preds[t.producer].append(c)
            else:
                preds[c].append(t.producer)
    work = tables.fwd + tables.bwd
    sets = [0] * N
    order = range(N - 1, -1, -1) if reverse else range(N)
    for i in order:
        m = 1 << i
        for p in preds[i]:
            m |= sets[p]
        sets[i] = m
    out = []
    for i in range(N):
        m, total, k = sets[i], 0.0, 0
        while m:
            if m & 1:
                total += work[k]
            m >>= 1
            k += 1
        out.append(total)
    return out


def stage_windows(prob: ILPProblem, t_cap: float | None) -> list[tuple[int, int]]:
    """(earliest, latest) stage of every node given that no stage may take longer than t_cap."""
    N, S = prob.tables.num_nodes, len(prob.stage_device)
    if t_cap is None or prob.virtual_stages != 1:
        return [(0, S - 1)] * N
    cap = [t_cap * sp * (1 + 1e-9) for sp in prob.stage_speed]
    prefix = [sum(cap[: s + 1]) for s in range(S)]
    suffix = [sum(cap[s:]) for s in range(S)]
    up, down = _ancestor_work(prob.tables, False), _ancestor_work(prob.tables, True)
    windows = []
    for i in range(N):
        e = next((s for s in range(S) if prefix[s] >= up[i]), S - 1)
        l = next((s for s in range(S - 1, -1, -1) if suffix[s] >= down[i]), 0)
        windows.append((e, max(e, l)) if e <= l else (0, S - 1))
    return windows


def solve_ilp(prob: ILPProblem, *, backend: str = "highs", time_limit_s: float = 10.0,
              warm_stage_of: list[int] | None = None, warm_recompute: list[bool] | None = None,
              upper_bound: float | None = None) -> ILPResult:
    start = time.perf_counter()
    tb = prob.tables
    N, S, M, v = tb.num_nodes, len(prob.stage_device), prob.num_microbatches, prob.virtual_stages
    lp = pulp.LpProblem("pipeplan", pulp.LpMinimize)
    t_cap = upper_bound / M if upper_bound is not None else None
    win = stage_windows(prob, t_cap)

    def xv(i: int, s: int):
        if s < 0:
            return 0
        if s >= S - 1 or s >= win[i][1]:
            return 1
        if s < win[i][0]:
            return 0
        return x[i, s]

    x = {(i, s): pulp.LpVariable(f"x_{i}_{s}", cat="Binary")
         for i in range(N) for s in range(S - 1) if win[i][0] <= s < win[i][1]}
    y = {(i, s): xv(i, s) - xv(i, s - 1) for i in range(N) for s in range(S)}
    for (i, s), var in x.items():
        if (i, s + 1) in x:
            lp += var <= x[i, s + 1]
    for t in tb.tensors:
        for c in t.consumers:
            for s in range(S - 1):
                a_, b_ = xv(c, s), xv(t.producer, s)
                if not (isinstance(a_, int) and isinstance(b_, int)):
                    lp += a_ <= b_
                elif a_ > b_:
                    return ILPResult(None, None, "infeasible", None, None, time.perf_counter() - start)
    for s in range(S):
        lp += pulp.lpSum(y[i, s] for i in range(N)) >= 1
    # crossing indicators per tensor and boundary
    cross = {}
    for k, t in enumerate(tb.tensors):
        for b in range(S - 1):
            terms = [(xv(t.producer, b), xv(c, b)) for c in t.consumers]
            if all(isinstance(p, int) and isinstance(c, int) for p, c in terms):
                cross[k, b] = max(p - c for p, c in terms)
                continue
            a = pulp.LpVariable(f"a_{k}_{b}", lowBound=0, upBound=1)
            for p, c in terms:
                lp += a >= p - c
            cross[k, b] = a
    relay = {}
    for k, t in enumerate(tb.tensors):
        for s in range(1, S - 1):
            r = pulp.LpVariable(f"r_{k}_{s}", lowBound=0, upBound=1)
            lp += r >= cross[k, s - 1] + cross[k, s] - 1
            relay[k, s] = r
    fwd_b = [pulp.lpSum(t.nbytes * cross[k, b] for k, t in enumerate(tb.tensors)) for b in range(S - 1)]
    grad_b = [pulp.lpSum(t.nbytes * cross[k, b] for k, t in enumerate(tb.tensors) if t.requires_grad)
              for b in range(S - 1)]
    # one latency per tensor crossing (each is its own p2p op), as cost.assignment_bytes counts them
    fwd_n = [pulp.lpSum(cross[k, b] for k in range(len(tb.tensors))) for b in range(S - 1)]
    grad_n = [pulp.lpSum(cross[k, b] for k, t in enumerate(tb.tensors) if t.requires_grad) for b in range(S - 1)]
    comm = []
    for b in range(S - 1):
        lat = prob.link_latency_ms[b]
        comm.append(lat * fwd_n[b] + prob.link_ms_per_byte[b] * fwd_b[b]
                    + lat * grad_n[b] + prob.link_ms_per_byte[b] * grad_b[b])
    comm.append(0)
    # per stage compute, params, memory
    fsum = [pulp.lpSum(float(tb.fwd[i]) * y[i, s] for i in range(N)) for s in range(S)]
    bsum = [pulp.lpSum(float(tb.bwd[i]) * y[i, s] for i in range(N)) for s in range(S)]
    wsum = [pulp.lpSum(float(tb.bwd_weight[i]) * y[i, s] for i in range(N)) for s in range(S)]
    asum = [pulp.lpSum(float(tb.activation[i]) * y[i, s] for i in range(N)) for s in range(S)]
    psum = []
    for s in range(S):
        expr = pulp.lpSum(int(tb.params[i]) * y[i, s] for i in range(N))
        for f, sp in enumerate(tb.shared):
            h = pulp.LpVariable(f"h_{f}_{s}", lowBound=0, upBound=1)
            for u in sp.users:
                lp += h >= y[u, s] - (y[sp.owner, s] if sp.owner >= 0 else 0)
            expr += sp.size * h
        psum.append(expr)
    inputs = [tb.model_input_bytes] + [fwd_b[b] for b in range(S - 1)]
    total_fwd = float(tb.fwd.sum())
    max_input = max([tb.model_input_bytes] + [sum(t.nbytes for t in tb.tensors)])
    rec_var, rec_time, mem_act = [], [], []
    for s in range(S):
        co = {r: memory_coefficients(in_flight=prob.stage_in_flight[s], config=prob.config,
                                     profile_dtype=tb.dtype, recompute=r) for r in prob.recompute_options}
        expr_of = {r: c.per_activation_byte * asum[s] + c.per_input_byte * inputs[s] for r, c in co.items()}
        if len(prob.recompute_options) == 1:
            r0 = prob.recompute_options[0]
            rec_var.append(r0)
            rec_time.append(fsum[s] if r0 else 0)
            mem_act.append(expr_of[r0])
        else:
            r = pulp.LpVariable(f"rec_{s}", cat="Binary")
            z = pulp.LpVariable(f"recf_{s}", lowBound=0)
            lp += z >= fsum[s] - total_fwd * (1 - r)
            m = pulp.LpVariable(f"mact_{s}", lowBound=0)
            big = max(c.per_activation_byte * float(tb.activation.sum()) + c.per_input_byte * max_input
                      for c in co.values()) + 1
            lp += m >= expr_of[False] - big * r
            lp += m >= expr_of[True] - big * (1 - r)
            rec_var.append(r)
            rec_time.append(z)
            mem_act.append(m)
        rel = co[prob.recompute_options[0]].per_relay_byte
        per_param = co[prob.recompute_options[0]].per_param
        mem_act[s] = mem_act[s] + per_param * psum[s] + rel * pulp.lpSum(
            t.nbytes * relay[k, s] for k, t in enumerate(tb.tensors) if (k, s) in relay)
    for d, limit in prob.device_limit.items():
        lp += pulp.lpSum(mem_act[s] for s in range(S) if prob.stage_device[s] == d) <= limit
    # Times enter the model in units of `unit` ms, chosen so that the objective is about 1000: HiGHS
    # stops at an absolute gap of 1e-6 and works to feasibility tolerances of ~1e-7, which for a
    # 0.2 ms step would be a 5e-6 relative gap, not the 1e-9 asked for.
    unit = _time_unit(prob, upper_bound)
    # the per-action overhead: once on the forward, once on the backward (cost.stage_compute_ms)
    overhead = prob.stage_overhead if prob.stage_overhead is not None else [0.0] * S
    T = [(fsum[s] + bsum[s] + rec_time[s]) * (1.0 / (prob.stage_speed[s] * unit))
         + (comm[s] + 2.0 * overhead[s]) * (1.0 / unit) for s in range(S)]
    W = [wsum[s] * (1.0 / (prob.stage_speed[s] * unit)) for s in range(S)]
    dmax = pulp.LpVariable("Dmax", lowBound=0, upBound=t_cap / unit * (1 + 1e-7) if t_cap else None)
    step = pulp.LpVariable("step", lowBound=0, upBound=upper_bound / unit * (1 + 1e-7) if upper_bound else None)
    for d in set(prob.stage_device):
        lp += pulp.lpSum(T[s] for s in range(S) if prob.stage_device[s] == d) <= dmax
    kappa = zero_bubble_weight_factor(prob.schedule)
    lp += step >= M * dmax
    lp += step >= (M - 1.0 / v) * dmax + (1.0 / v) * (pulp.lpSum(T) - kappa * pulp.lpSum(W[: S - 1]))
    lp += step
    start_values = None
    if warm_stage_of is not None:
        start_values = {var.name: float(1 if warm_stage_of[i] <= s else 0) for (i, s), var in x.items()}
        for s, r in enumerate(warm_recompute or []):
            if not isinstance(rec_var[s], bool):
                start_values[rec_var[s].name] = float(r)
    if backend == "cbc":
        if start_values:
            for var in lp.variables():
                if var.name in start_values:
                    var.setInitialValue(start_values[var.name])
        solver = pulp.PULP_CBC_CMD(msg=False, timeLimit=max(1, round(time_limit_s)), warmStart=bool(start_values),
                                   gapRel=1e-9, threads=1)
    else:
        _silence_highs_banner()
        solver = _HighsWarm(msg=False, timeLimit=float(time_limit_s), gapRel=1e-9, threads=1)
        solver.start = start_values
    lp.solve(solver)
    seconds = time.perf_counter() - start
    # pulp reports a run stopped by the time limit with an incumbent as LpStatusOptimal (HiGHS
    # kTimeLimit, CBC "Stopped on time - objective value ..."); only sol_status tells them apart:
    # LpSolutionOptimal is a proof, LpSolutionIntegerFeasible an incumbent without one.
    if lp.status == pulp.LpStatusInfeasible or lp.sol_status == pulp.LpSolutionInfeasible:
        return ILPResult(None, None, "infeasible", None, None, seconds)
    has_solution = lp.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if has_solution and backend != "cbc" and lp.sol_status != pulp.LpSolutionOptimal:
        # pulp maps kTimeLimit to IntegerFeasible even when HiGHS holds no incumbent at all
        has_solution = lp.solverModel.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible
    if not has_solution or step.varValue is None:
        # no incumbent (none better than the cutoff, when one was given); HiGHS may still have
        # proven a bound, which holds for any plan better than the cutoff
        bound = None
        if backend != "cbc":
            try:
                b = float(lp.solverModel.getInfo().mip_dual_bound)
                bound = b * unit if math.isfinite(b) and b > 0 else None
            except (AttributeError, TypeError, ValueError, RuntimeError):
                bound = None
        return ILPResult(None, None, "timeout", None, bound, seconds)
    stage_of = []
    for i in range(N):
        s = 0
        while s < S - 1 and not (pulp.value(xv(i, s)) or 0) > 0.5:
            s += 1
        stage_of.append(s)
    rec = [bool(r) if isinstance(r, bool) else (r.varValue or 0) > 0.5 for r in rec_var]
    objective = float(pulp.value(lp.objective)) * unit
    optimal = lp.sol_status == pulp.LpSolutionOptimal
    bound = None
    if backend != "cbc":
        try:
            bound = float(lp.solverModel.getInfo().mip_dual_bound) * unit
        except (AttributeError, TypeError, ValueError, RuntimeError):  # an older highspy: no bound known
            bound = None
    if bound is not None and bound >= objective * (1 - 1e-9):
        optimal = True  # the time limit struck after the search had closed the gap
    if optimal:
        bound = objective if bound is None else max(min(bound, objective), 0.0)
    return ILPResult(stage_of, rec, "optimal" if optimal else "feasible", objective, bound, seconds)


def _time_unit(prob: ILPProblem, upper_bound: float | None) -> float:
    """ms per model time unit: about 1/1000 of the step (the known bound, else a work estimate)."""
    if upper_bound is not None and upper_bound > 0:
        return upper_bound / 1000.0
    tb = prob.tables
    work = float((tb.fwd + tb.bwd).sum()) / max(sum(prob.stage_speed), 1e-12)
    estimate = (prob.num_microbatches + len(prob.stage_device)) * work / max(prob.virtual_stages, 1)
    return estimate / 1000.0 if estimate > 0 else 1.0
