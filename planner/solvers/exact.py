"""The exact finish: plans ranked by their simulated step time, with lower bounds proven against the
simulator (planner/pipeline/simulator.py); docs/ilp.md, "What is proven".

The DP and the ILP minimise a proxy (the closed form). This module turns their answer into a proof
under the simulator:

- `stage_bound_terms`: for one stage per device, every simulated step satisfies
      makespan >= max_s ( sum_{t<s} alpha_t + M beta_s + opt_s ) + sync
  (alpha, beta below), a bound that adds up stage by stage, so a DP over a chain finds its minimum
  over all partitions and a branch and bound can enumerate partitions in the order of it;
- `chain_finish`: that branch and bound, best bound first; each complete partition is scored by the
  simulator itself; it stops when the best simulated step is <= the bound of everything not yet
  simulated (proven optimal), or at its time limit with the least open bound (a gap that bounds the
  simulated makespan);
- `generic_lower_bound`: a bound valid for every schedule, placement and partition (DAGs, several
  chunks per device): the busiest device must do its share of the work.
- the path bounds (`critical_path`, `device_paths`, `seed_paths`, `plan_path`; "path bounds" below):
  the simulated makespan is the longest path of the schedule's event graph, so every path of it is a
  bound linear in the stage times and valid for every partition; the ILP takes them as rows and adds
  each scored plan's critical path as it enumerates.

Why the stage bound holds (one stage per device, the simulator's rules): F(s, m) cannot start before
F(s-1, m) ended plus the boundary's send, so every action of stage s starts at or after
H_s = sum_{t<s} (f_t + c_t). Stage s runs M forwards and M backwards one at a time, so its last F or B
ends at or after H_s + M (f_s + b_s); that last one is a B (B(s, m) waits, through the later stages,
for F(s, m)), and the gradient then still has to flow back: B(s-1, m) starts after it plus c_{s-1},
and so on down to stage 0, adding sum_{t<s} (c_t + b_t). So makespan >= sum_{t<s} (f_t + b_t + 2 c_t)
+ M (f_s + b_s): alpha_t = f_t + b_t + 2 c_t, beta_s = f_s + b_s. With a split backward (ZBH1) the last
action of a stage may be a W, so the tail is dropped and W counted on the stage: alpha_t = f_t + c_t,
beta_s = f_s + B_s + W_s. The optimizer steps start sync_ms after the last compute or transfer ends,
and max(a) + max(b) >= max(a + b) gives the opt_s term. c_t is the forward send time of boundary t,
which the simulator charges to the gradient too.

A second bound, for one stage per device, reads the schedule's order: stage s runs w_s forwards
before its first B (forwards_before_first_backward: min(P-s, M) for 1F1B and ZBH1, M for GPipe). That
B cannot start before micro-batch 0 went forward through every stage and back down to s
(sum_t f_t + sum_{t>s} B_t, sends left out); after it the stage still runs its other M-1 B and its
remaining M - w_s forwards, one at a time, and the last gradient goes down through stages s-1..0:
makespan >= sum_t (f_t + B_t) + max_s [(M-1) B_s + (M - w_s) f_s] (+ sync). The chain search
uses the larger of the two at every node: the first alone lets a partition with a huge first stage
look cheap.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

import numpy as np

from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.costmodel.cost import (
    CostTables,
    boundary_comm_ms,
    stage_optimizer_ms,
    stage_time_coefficients,
    step_end_ms,
)
from planner.pipeline.schedules import schedule_spec
from planner.solvers.dp import ChainProblem, DPTooLarge, IntervalCosts, cut_bytes, cut_tensors, memory_band_length

INF = float("inf")
MAX_EXPANSIONS = 20000
MAX_LEAVES = 400
"""The chain search stops after this many expanded nodes or simulated partitions, before its time
limit in practice, so a plan does not depend on the machine's speed."""
BISECT_STEPS = 30
BISECT_ELEMENTS = 2_000_000
"""The root bound's bisection keeps every stage's interval arrays (3 x 8 bytes each: at most 48 MB);
it runs when they hold at most this many intervals (stages x positions x lengths)."""
REL_TOL = 1e-9
"""A candidate whose bound is within this fraction of the best simulated step cannot beat it."""


def sync_ms(tables: CostTables, cluster: Cluster, devices: list[int]) -> float:
    """The clipping all-reduce and the fixed per-step cost before the optimizer steps
    (cost.step_end_ms), when the profile has optimizer times (every partition then has a stage with a
    step > 0, and the simulator waits for it)."""
    return step_end_ms(cluster, list(devices)) if float(tables.optimizer.sum()) > 0 else 0.0


def generic_lower_bound(tables: CostTables, cluster: Cluster, config: TrainConfig, devices: list[int],
                        profile_speeds: list[float]) -> float:
    """A lower bound on the simulated step of every partition, recompute choice and schedule on these
    devices: the devices together must run M forwards and backwards of every node (recompute and the
    per-action overheads only add), so the busiest one is busy at least M * work / sum of speeds; no
    node can be split, so also M * (its work) / the fastest speed. The optimizer steps run after the
    last backward: + sync + total optimizer work / sum of speeds."""
    used = sorted(set(devices))
    total_speed = sum(profile_speeds[d] for d in used)
    fastest = max(profile_speeds[d] for d in used)
    M = config.num_microbatches
    work = tables.fwd + tables.bwd
    busy = max(M * float(work.sum()) / total_speed, M * float(work.max(initial=0.0)) / fastest)
    opt_ref = float(tables.optimizer.sum())
    if opt_ref <= 0:
        return busy
    opt = stage_optimizer_ms(opt_ref, config.optimizer, total_speed)
    return busy + sync_ms(tables, cluster, devices) + opt


def forwards_before_first_backward(schedule: str, num_stages: int, M: int) -> list[int]:
    """w_s: how many forwards stage s runs before its first backward in the schedule's order (one
    stage per device; M where it runs them all first, GPipe)."""
    from planner.pipeline.schedules import _order, canonical_schedule

    out = []
    for acts in _order(canonical_schedule(schedule), num_stages, M, 1):
        w = 0
        for _, op, _ in acts:
            if op != "F":
                break
            w += 1
        out.append(w)
    return out


def order_terms(schedule: str, P: int, M: int, v: int) -> list[tuple[int, int, dict[int, int]]]:
    """Per device, from the schedule's order: (stage of its first B, stage of its last B, forwards of
    each of its stages that come after that first B) — the order bound's terms for any placement."""
    from planner.pipeline.schedules import _order, canonical_schedule

    out = []
    for acts in _order(canonical_schedule(schedule), P, M, v):
        first = next(k for k, a in enumerate(acts) if a[1] == "B")
        last = max(k for k, a in enumerate(acts) if a[1] == "B")
        after: dict[int, int] = {}
        for stage, op, _ in acts[first:]:
            if op == "F":
                after[stage] = after.get(stage, 0) + 1
        out.append((acts[first][0], acts[last][0], after))
    return out


def device_bound(fwd: list[float], bwd: list[float], link: list[float], device_of: list[int], M: int,
                 split_backward: bool, optimizer: list[float] | None = None, sync: float = 0.0,
                 bwd_input: list[float] | None = None,
                 terms: list[tuple[int, int, dict[int, int]]] | None = None) -> float:
    """The stage bound of one plan (module docstring), for any placement: for every device d with first
    stage s0, sum_{t<s0} alpha_t + M sum_{s on d} (f_s + b_s) + its optimizer steps; the largest, plus
    sync (pass 0 when no stage has an optimizer step). bwd is the full backward (B + W); link[t] the
    send time of boundary t as the simulator charges it (0 between stages on one device)."""
    S = len(fwd)
    alpha = [fwd[t] + link[t] if split_backward else fwd[t] + bwd[t] + 2.0 * link[t] for t in range(S - 1)]
    prefix = [0.0]
    for a in alpha:
        prefix.append(prefix[-1] + a)
    best = 0.0
    for d in set(device_of):
        own = [s for s in range(S) if device_of[s] == d]
        opt = sum(optimizer[s] for s in own) if optimizer is not None else 0.0
        best = max(best, prefix[own[0]] + M * sum(fwd[s] + bwd[s] for s in own) + opt)
    B = bwd if not split_backward else bwd_input
    if terms is not None and B is not None:  # the order bound, every placement
        for d, (first, last, after) in enumerate(terms):
            own = [s for s in range(S) if device_of[s] == d]
            best = max(best, sum(fwd) + sum(B[first + 1:]) + sum(M * B[s] + after.get(s, 0) * fwd[s] for s in own)
                       + sum(B[:last]))
    return best + sync


class _StageTerms:
    """alpha, M beta + opt of every interval [i, i+L) on every stage (computed per stage on demand)."""

    def __init__(self, prob: ChainProblem, cluster: Cluster, devices: list[int], max_len: int):
        tb = prob.tables
        self.prob, self.N, self.S, self.M, self.L = prob, tb.num_nodes, prob.num_stages, prob.num_microbatches, max_len
        self.ic = IntervalCosts(prob, max_len)
        P = lambda a: np.concatenate([[0.0], np.cumsum(a)])
        self.pf, self.pb, self.pw, self.po = P(tb.fwd), P(tb.bwd), P(tb.bwd_weight), P(tb.optimizer)
        fwd_cut, _ = cut_bytes(tb)
        fwd_n, _ = cut_tensors(tb)
        self.comm = []
        for s in range(self.S):
            if s == self.S - 1:
                self.comm.append(np.zeros(self.N + 1))
            else:
                self.comm.append(np.array([boundary_comm_ms(cluster, devices[s], devices[s + 1], b, int(n))
                                           for b, n in zip(fwd_cut, fwd_n)]))
        self.split = schedule_spec(prob.schedule).split_backward
        self.warm = forwards_before_first_backward(prob.schedule, self.S, self.M)
        self.optimizer = prob.config.optimizer

    def stage(self, s: int, i: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Stage s's terms for intervals [i, i+L), L = 1..Lmax, as arrays (len(i) x L), every start
        when i is None: alpha, mbeta (M beta + opt), x (f + B: the second bound's sum), B (the input
        gradient's duration), rec; inf where the interval does not fit or cannot be stage s."""
        N, L = self.N, self.L
        i = np.arange(N + 1)[:, None] if i is None else np.asarray(i).reshape(-1, 1)
        lens = np.arange(1, L + 1)[None, :]
        j = i + lens
        ok = j <= N
        jc = np.where(ok, j, N)
        T = self.ic.T[s][jc, lens - 1]
        rec = self.ic.rec[s][jc, lens - 1]
        ok &= np.isfinite(T)
        ic_ = np.broadcast_to(i, jc.shape)
        fref, bref, wref = self.pf[jc] - self.pf[ic_], self.pb[jc] - self.pb[ic_], self.pw[jc] - self.pw[ic_]
        overhead = self.prob.stage_overhead[s] if self.prob.stage_overhead is not None else 0.0
        co = stage_time_coefficients(self.prob.stage_speed[s], overhead, self.prob.schedule, s == self.S - 1)
        f, bwd, b_in, _ = co.compute_ms(fref, bref, wref, rec.astype(float))
        B = b_in if self.split else bwd
        c = self.comm[s][jc]
        alpha = f + c if self.split else f + bwd + 2.0 * c
        opt = stage_optimizer_ms(self.po[jc] - self.po[ic_], self.optimizer, self.prob.stage_speed[s])
        y = (self.M - 1) * B + (self.M - self.warm[s]) * f
        out = {"alpha": alpha, "mbeta": self.M * (f + bwd) + opt, "x": f + B, "B": y}
        out = {k: np.where(ok, v, INF) for k, v in out.items()}
        out["rec"] = rec
        return out

    def tables(self) -> list[dict[str, np.ndarray]] | None:
        """Every stage's full arrays, kept when they are small enough (BISECT_ELEMENTS); else None."""
        if self.S * (self.N + 1) * self.L > BISECT_ELEMENTS:
            return None
        if not hasattr(self, "_all"):  # only what completion() reads: 3 arrays of float64 per stage
            self._all = [{k: t[k] for k in ("alpha", "mbeta", "B")} for t in map(self.stage, range(self.S))]
        return self._all

    def feasible_below(self, t: float, wmin: float, extra: float) -> bool:
        """Whether some partition has both bounds below t: every stage's first-bound term <= t and
        every stage's B <= (t - wmin) / (M - 1) (the second bound with sum (f + B) >= wmin)."""
        cap = t - extra - wmin
        G, _ = self.completion(b_cap=cap)
        return bool(G[0][0] + extra <= t)

    def completion(self, b_cap: float = INF) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """G[k][i]: the least max_{s>=k} (sum_{k<=t<s} alpha_t + M beta_s + opt_s) over the ways to cut
        positions i..N-1 into stages k..S-1 (G[S][N] = -inf, the empty max); Bm[k][i]: the least
        max_{s>=k} B_s over the same ways."""
        N, S, L = self.N, self.S, self.L
        G, Bm = [None] * (S + 1), [None] * (S + 1)
        last = np.full(N + 1, INF)
        last[N] = -INF
        G[S], Bm[S] = last.copy(), last.copy()
        j = np.arange(N + 1)[:, None] + np.arange(1, L + 1)[None, :]
        kept = self.tables() if np.isfinite(b_cap) else None
        for k in range(S - 1, -1, -1):
            t = kept[k] if kept is not None else self.stage(k)
            alpha, mbeta, B = t["alpha"], t["mbeta"], t["B"]
            if np.isfinite(b_cap):
                over = B > b_cap
                alpha, mbeta = np.where(over, INF, alpha), np.where(over, INF, mbeta)
            nxt = np.concatenate([G[k + 1], np.full(L, INF)])[j]
            with np.errstate(invalid="ignore"):
                via = alpha + nxt
            via[~np.isfinite(alpha)] = INF  # an interval that cannot be stage k (inf + -inf is nan)
            G[k] = np.maximum(mbeta, via).min(axis=1)
            nb = np.concatenate([Bm[k + 1], np.full(L, INF)])[j]
            Bm[k] = np.where(np.isfinite(B), np.maximum(B, nb), INF).min(axis=1)
        return G, Bm

    def min_work_suffix(self) -> np.ndarray:
        """W[i]: a lower bound on sum_s (f_s + B_s) of the stages holding nodes i..N-1 (the fastest
        speed, no recompute, no overhead)."""
        tb = self.prob.tables
        per = tb.fwd + (tb.bwd - tb.bwd_weight if self.split else tb.bwd)
        return np.concatenate([np.cumsum(per[::-1])[::-1], [0.0]]) / max(self.prob.stage_speed)


def bound_band(prob: ChainProblem, upper_ms: float) -> int:
    """Longest interval that can sit in a partition whose bound is below upper_ms: M (f + b) of a stage
    is at least M * (its nodes' f + b) / its speed, with recompute and overheads only adding."""
    tb = prob.tables
    N, S, M = tb.num_nodes, prob.num_stages, prob.num_microbatches
    work = np.concatenate([[0.0], np.cumsum(tb.fwd + tb.bwd)])
    budget = upper_ms / M * max(prob.stage_speed) * (1 + 1e-9)
    lo = np.searchsorted(work, work - budget, side="left")
    longest = int((np.arange(N + 1) - lo).max())
    return max(1, min(longest, N - S + 1, memory_band_length(prob)))


def chain_finish(prob: ChainProblem, cluster: Cluster, devices: list[int], incumbents: list[tuple[list[int], list[bool]]],
                 simulate_cuts: Callable[[list[int], list[bool]], float | None], time_limit_s: float,
                 extra_ms: float = 0.0) -> tuple[tuple[list[int], list[bool]] | None, float, float, bool]:
    """Branch and bound over the cuts of a chain, ranked by the stage bound and scored by the simulator.

    incumbents: (cuts, recompute) to score first (the DP's pick, ...); simulate_cuts returns a plan's
    simulated step (None if it does not fit). extra_ms is added to every bound (the optimizer's sync).
    Returns (best (cuts, recompute), its simulated step, a lower bound on the simulated step of every
    contiguous partition that fits, proven) where proven means best step <= that bound (optimal).
    With off-recompute fitting, on is never faster (the simulator is monotone in the durations), so
    each interval takes the first recompute option that fits (IntervalCosts' choice)."""
    start = time.perf_counter()
    best, best_ms = None, INF
    for cuts, rec in incumbents:
        ms = simulate_cuts(cuts, rec)
        if ms is not None and ms < best_ms:
            best, best_ms = (list(cuts), list(rec)), ms
    N, S = prob.tables.num_nodes, prob.num_stages
    if best is None:  # no incumbent fits: bound the band by memory alone
        band = max(1, min(N - S + 1, memory_band_length(prob)))
    else:
        band = bound_band(prob, best_ms - extra_ms)
    try:
        terms = _StageTerms(prob, cluster, devices, band)
    except DPTooLarge:
        return best, best_ms, -INF, False
    Wsuf = terms.min_work_suffix()
    wmin = float(Wsuf[0])
    # intervals whose B alone puts the second bound above the incumbent can be in no better plan
    cap = best_ms - extra_ms - wmin if np.isfinite(best_ms) else INF
    G, Bm = terms.completion(b_cap=cap)
    # second bound (module docstring): sum_s (f_s + B_s) + (M-1) max_s B_s
    root = max(float(G[0][0]), float(Wsuf[0] + Bm[0][0])) + extra_ms
    if np.isfinite(root) and np.isfinite(best_ms) and root < best_ms * (1 - REL_TOL) \
            and terms.tables() is not None:
        # the least t with a partition whose two bounds are both <= t: a bisection, each step one DP
        lo, hi = root, best_ms
        for _ in range(BISECT_STEPS):
            if hi - lo <= REL_TOL * hi or time.perf_counter() - start > time_limit_s / 2:
                break
            mid = (lo + hi) / 2
            if terms.feasible_below(mid, wmin, extra_ms):
                hi = mid
            else:
                lo = mid
        root = lo
    if not np.isfinite(root):  # no partition fits (within the band: none below the incumbent)
        return best, best_ms, best_ms, best is not None
    # heap entries: (bound, tie, stage k, alpha prefix, max of fixed first-bound terms, sum x, max B, cuts)
    heap: list = [(root, 0, 0, 0.0, -INF, 0.0, -INF, ())]
    counter = expansions = leaves = 0
    timed_out = False
    while heap:
        bound, _, k, A, curmax, X, curB, cuts = heap[0]
        if bound >= best_ms * (1 - REL_TOL):
            break
        if expansions >= MAX_EXPANSIONS or leaves >= MAX_LEAVES or time.perf_counter() - start > time_limit_s:
            timed_out = True
            break
        heapq.heappop(heap)
        expansions += 1
        leaves += k == S
        i = cuts[-1] if cuts else 0
        if k == S:  # a complete partition: the simulator decides
            full = [0, *cuts]
            rec = [bool(terms.stage(s, [full[s]])["rec"][0, full[s + 1] - full[s] - 1]) for s in range(S)]
            ms = simulate_cuts(full, rec)
            if ms is not None and ms < best_ms:
                best, best_ms = (full, rec), ms
            continue
        t = terms.stage(k, [i])
        a_row, m_row, x_row, b_row = t["alpha"][0], t["mbeta"][0], t["x"][0], t["B"][0]
        js = i + np.arange(1, terms.L + 1)
        inside = js <= N
        nxt, nb, ws = np.full(terms.L, INF), np.full(terms.L, INF), np.zeros(terms.L)
        nxt[inside], nb[inside], ws[inside] = G[k + 1][js[inside]], Bm[k + 1][js[inside]], Wsuf[js[inside]]
        here = np.maximum(curmax, A + m_row)
        with np.errstate(invalid="ignore"):
            via = A + a_row + nxt
        via[~np.isfinite(a_row)] = INF
        newB = np.maximum(curB, b_row)
        second = X + x_row + ws + np.maximum(newB, nb)
        child = np.maximum(np.maximum(np.maximum(here, via), second) + extra_ms, root)  # root: holds for all
        for L_ in np.nonzero(child < best_ms * (1 - REL_TOL))[0]:
            counter += 1
            heapq.heappush(heap, (float(child[L_]), counter, k + 1, A + float(a_row[L_]), float(here[L_]),
                                  X + float(x_row[L_]), float(newB[L_]), (*cuts, i + int(L_) + 1)))
    if timed_out:
        lower = min(best_ms, heap[0][0])
    else:
        lower = best_ms if best is not None else INF
    return best, best_ms, min(lower, best_ms), not timed_out and best is not None


def refine_by_simulation(stage_of: list[int], recompute: list[bool], num_stages: int, tables: CostTables,
                         score: Callable[[list[int], list[bool]], float | None],
                         choose: Callable[[list[int]], list[bool]], time_limit_s: float,
                         max_evaluations: int = 2000) -> tuple[list[int], list[bool], float | None]:
    """Hill-climb on the simulated step: move one node to the neighbouring stage (keeping data flowing
    forward and every stage non-empty) while that simulates faster; recompute re-chosen for each move
    by `choose` (the config's rule). What the exact finish cannot prove, this at least improves: the
    schedule-aware refinement of torch's proposed auto_partition, memory-checked. Stops at a local
    optimum, after max_evaluations scored moves, or at time_limit_s."""
    start = time.perf_counter()
    best = score(stage_of, recompute)
    if best is None:
        return stage_of, recompute, None
    N = tables.num_nodes
    consumers: list[set[int]] = [set() for _ in range(N)]
    producers: list[set[int]] = [set() for _ in range(N)]
    for t in tables.tensors:
        for c in t.consumers:
            consumers[t.producer].add(c)
            producers[c].add(t.producer)
    stage_of, recompute = list(stage_of), list(recompute)
    count = [0] * num_stages
    for s in stage_of:
        count[s] += 1
    evaluations = 0
    improved = True
    while improved:
        improved = False
        for i in range(N):
            s = stage_of[i]
            if count[s] == 1:
                continue
            for t in (s - 1, s + 1):
                if not 0 <= t < num_stages:
                    continue
                if t > s and any(stage_of[c] < t for c in consumers[i]):
                    continue
                if t < s and any(stage_of[p] > t for p in producers[i]):
                    continue
                if evaluations >= max_evaluations or time.perf_counter() - start > time_limit_s:
                    return stage_of, recompute, best
                evaluations += 1
                trial = list(stage_of)
                trial[i] = t
                rec = choose(trial)
                ms = score(trial, rec)
                if ms is not None and ms < best * (1 - 1e-12):
                    best, stage_of, recompute, improved = ms, trial, rec, True
                    count[s] -= 1
                    count[t] += 1
                    break
    return stage_of, recompute, best


# -- path bounds: the simulated makespan is the longest path of the schedule's event graph --------------
#
# For a fixed action order the simulator (planner/pipeline/simulator.py, _run) starts every action at
#     start(a) = max(end(previous action on its device), end(dep(a)) + link(a))     (0 with neither)
# where dep(a) is F(s-1, m) for F(s, m), B(s+1, m) for B(s, m) (none for the last stage's B, whose F is
# earlier on its own device), B(s, m) for W(s, m), and link(a) the send time of the boundary crossed (0
# inside a device). That is the longest-path recurrence of a DAG whose nodes are the actions (weight:
# duration) and whose edges are the device sequence (weight 0) and the dependencies (weight: link). So
# the drained time (last compute end; every transfer feeds a later compute action) is the longest path,
# and EVERY path is a lower bound. The graph depends only on (schedule, P, M, v): a path is a vector of
# counts (nF[s], nB[s], nW[s], nL[b]) and its length sum nF f + nB B + nW W + nL link is linear in the
# stage times, valid for every partition, placement and recompute choice with that schedule and shape.
# The optimizer steps start sync after the drain, so makespan - sync >= path + max_d opt_d.

PathCoeffs = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]
"""(nF per stage, nB per stage, nW per stage, n per boundary): how often a path of the event graph
passes each stage's F, B, W and each boundary's send."""


def path_length(coeffs: PathCoeffs, fwd, b_dur, w_dur, link) -> float:
    nF, nB, nW, nL = coeffs
    return (sum(n * x for n, x in zip(nF, fwd)) + sum(n * x for n, x in zip(nB, b_dur))
            + sum(n * x for n, x in zip(nW, w_dur)) + sum(n * x for n, x in zip(nL, link)))


def critical_path(schedule: str, P: int, M: int, v: int, fwd: list[float], b_dur: list[float],
                  w_dur: list[float], link: list[float]) -> tuple[float, PathCoeffs]:
    """The simulator's drained time for these per-stage durations (B: the full backward, or the input
    gradient with a split backward; W: 0 without one) and per-boundary send times as the simulator
    charges them (0 inside a device), and one longest path of the event graph that attains it."""
    from planner.pipeline.schedules import canonical_schedule
    from planner.pipeline.simulator import _encoded_order, _run

    name = canonical_schedule(schedule)
    seq = _encoded_order(name, P, M, v)
    S = len(fwd)
    compute, _ = _run(seq, S, M, (fwd, b_dur, w_dur), link)
    rows: list[list[tuple]] = [[] for _ in range(P)]
    at: dict[int, tuple[int, int]] = {}
    for d, s, m, kind, t0, t1 in compute:
        k = len(rows[d])
        rows[d].append((t0, t1))
        key = seq[d][k][5]
        if key >= 0:
            at[key] = (d, k)
    nF, nB, nW, nL = [0] * S, [0] * S, [0] * S, [0] * max(S - 1, 0)
    if not compute:
        return 0.0, (tuple(nF), tuple(nB), tuple(nW), tuple(nL))
    d, k = max(((d, len(r) - 1) for d, r in enumerate(rows) if r), key=lambda dk: rows[dk[0]][dk[1]][1])
    drained = rows[d][k][1]
    while True:
        kind, s, _, need, b_in = seq[d][k][:5]
        (nF, nB, nW)[kind][s] += 1
        t0 = rows[d][k][0]
        if k > 0 and rows[d][k - 1][1] == t0:
            k -= 1
            continue
        if need >= 0:
            dd, kk = at[need]
            if rows[dd][kk][1] + (link[b_in] if b_in >= 0 else 0.0) == t0:
                if b_in >= 0:
                    nL[b_in] += 1
                d, k = dd, kk
                continue
        if k > 0:  # a float tie not matched exactly: the device edge still is an edge of the graph
            k -= 1
            continue
        break
    return drained, (tuple(nF), tuple(nB), tuple(nW), tuple(nL))


def device_paths(schedule: str, P: int, M: int, v: int) -> list[PathCoeffs]:
    """Per device, the paths: micro-batch m's forwards through stages 0..s-1 into the device's first
    action F(s, m), then every action of the device in order, then (when the last action kept is a B(s', m'))
    the gradient of m' down through stages s'-1..0. With a split backward, also the same up to the
    device's last B only (its trailing W dropped, the tail added)."""
    from planner.pipeline.schedules import _order, canonical_schedule, chunks_per_device, stage_to_device

    name = canonical_schedule(schedule)
    S = P * chunks_per_device(name, v)
    device_of = stage_to_device(P, name, v)
    out = []
    for acts in _order(name, P, M, v):
        last_b = max(k for k, a in enumerate(acts) if a[1] == "B")
        for end in sorted({len(acts) - 1, last_b}):
            nF, nB, nW, nL = [0] * S, [0] * S, [0] * S, [0] * (S - 1)
            s0 = acts[0][0]  # the first action is F(s0, m0); the head: F(0, m0) .. F(s0-1, m0)
            for t in range(s0):
                nF[t] += 1
                nL[t] += device_of[t] != device_of[t + 1]
            for s, op, _ in acts[: end + 1]:
                {"F": nF, "B": nB, "W": nW}[op][s] += 1
            s1, op1, _ = acts[end]
            if op1 == "B":
                for t in range(s1 - 1, -1, -1):  # the tail: B(s1-1, m) .. B(0, m)
                    nB[t] += 1
                    nL[t] += device_of[t] != device_of[t + 1]
            out.append((tuple(nF), tuple(nB), tuple(nW), tuple(nL)))
    return out


SEED_SHAPES = 1
"""How many stage-time shapes seed_paths simulates (uniform first, then stage 0 heavy, 1 heavy, ...): each
adds ILP rows that slow its solves; the enumeration adds the paths that matter as it goes."""


def seed_paths(schedule: str, P: int, M: int, v: int) -> list[PathCoeffs]:
    """Paths for the ILP to start from, before any plan is simulated: the device paths, and the critical
    paths of the simulator under uniform stage times and under each stage made heavy (x4), with and
    without sends (the longest path moves with the partition; these cover the usual shapes)."""
    from planner.pipeline.schedules import canonical_schedule, chunks_per_device, schedule_spec, stage_to_device

    name = canonical_schedule(schedule)
    S = P * chunks_per_device(name, v)
    split = schedule_spec(name).split_backward
    device_of = stage_to_device(P, name, v)
    out = list(device_paths(name, P, M, v))
    for heavy in [None, *range(S)][:SEED_SHAPES]:
        for send in (0.0, 0.5):
            f = [4.0 if s == heavy else 1.0 for s in range(S)]
            b = [x for x in f] if split else [2 * x for x in f]
            w = [x for x in f] if split else [0.0] * S
            link = [send if device_of[t] != device_of[t + 1] else 0.0 for t in range(S - 1)]
            out.append(critical_path(name, P, M, v, f, b, w, link)[1])
    return list(dict.fromkeys(out))


def plan_path(plan) -> PathCoeffs:
    """A critical path of a plan's simulated step."""
    P, M, v, fwd, b_dur, w_dur, link = plan_durations(plan)
    return critical_path(plan.config.schedule, P, M, v, fwd, b_dur, w_dur, link)[1]


def plan_durations(plan) -> tuple:
    """(P, M, v, fwd, B, W, link) of a plan: the per-stage durations and per-boundary send times that
    planner.pipeline.simulator.simulate passes to the simulator (link 0 inside a device)."""
    from planner.pipeline.schedules import chunks_per_device, schedule_spec, stage_to_device
    from planner.pipeline.simulator import _split_backward, _split_or_none

    cfg = plan.config
    v = chunks_per_device(cfg.schedule, cfg.virtual_stages)
    S = len(plan.stages)
    P = S // v
    fwd = [st.fwd_ms for st in plan.stages]
    bwd = [st.bwd_ms for st in plan.stages]
    if schedule_spec(cfg.schedule).split_backward:
        b_dur, w_dur = _split_backward(bwd, _split_or_none([st.bwd_input_ms for st in plan.stages]),
                                       _split_or_none([st.bwd_weight_ms for st in plan.stages]), S)
    else:
        b_dur, w_dur = bwd, [0.0] * S
    device_of = stage_to_device(P, cfg.schedule, v)
    link = [0.0 if device_of[b] == device_of[b + 1] else plan.stages[b].comm_out_ms for b in range(S - 1)]
    return P, cfg.num_microbatches, v, fwd, b_dur, w_dur, link
