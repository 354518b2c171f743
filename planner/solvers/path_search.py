"""The exact finish for several stages per device on a chain: a branch and bound over the cuts, ranked by
the path bounds and scored by the simulator (docs/ilp.md, "What is proven").

A chain's plan is S = P v contiguous intervals, stage s on device devices[s]. For a fixed schedule every
path of its event graph is a bound on the simulated drain, linear in the stage times (exact.py, "path
bounds"): sum_s (nF_s f_s + nB_s B_s + nW_s W_s) + sum_b nL_b link_b. Each term depends on one stage's
interval only (its link on the cut where the stage ends), so for one row the least completion of a partial
partition is a DP over (stage, position), and

    makespan >= max over rows (fixed part + least completion) + sync + the optimizer bound

is a valid bound for every partition below a node of the search. Rows are the schedule's seed paths, the
critical path of every plan the simulator scores, and a Lagrangian row: for weights lambda >= 0 summing to
1, max_p X_p >= sum_p lambda_p X_p, whose least completion is one DP too.

First, row generation (_generate_rows): Kelley's cutting planes choose the weights that maximise the
root's weighted bound (a small LP over the weights, one cut per partition seen); each round's least
partition is simulated and its critical path becomes a row (it need not fit: a path is a row whatever the
durations), so the bound of every partition that shares its bottleneck rises to what the simulator shows.
It ends when the bound reaches the best simulated step (proven) or no new row comes; the best weights
become a row.

With two chunks per device the root bound is then raised to the device-pair bound (device_pair_bound: the
least largest device path over every partition, by a DP over the devices), which every node inherits.

Then the search: best bound first, deeper first on ties; a complete partition is scored by the simulator
(None: it does not fit), its critical path becomes a row, and the search stops when the best simulated
step is <= every open bound (proven optimal) or at its limits (MAX_EXPANSIONS, MAX_LEAVES, the clock),
with the least open bound as the proven lower bound. Memory: each interval must fit its device alone, and
a device's stages together (partial sums pruned as the search fixes them); the simulator's plan check is
the last word. Recompute is branched per stage with the config's choices (on is never faster, only
smaller). What it cannot close, the ILP enumeration (ilp.enumerate_by_bound) goes on with, from its best
plan and with all its rows (planner.solvers.search.solve_fixed).
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable

import highspy
import numpy as np

from planner.contracts.cluster import Cluster
from planner.costmodel.cost import boundary_comm_ms, stage_optimizer_ms, stage_time_coefficients
from planner.costmodel.memory import memory_coefficients, stages_budget_bytes
from planner.pipeline.schedules import schedule_spec
from planner.solvers.dp import ChainProblem, IntervalSums, cut_bytes, cut_tensors
from planner.solvers.exact import PathCoeffs, critical_path
from planner.solvers.ilp import _silence_highs_banner

INF = float("inf")
REL_TOL = 1e-9
MAX_EXPANSIONS = 10000
MAX_LEAVES = 300
"""The search stops after this many expanded nodes or simulated partitions (before its time limit in
practice), so a plan does not depend on the machine's speed."""
MAX_TABLE_ELEMENTS = 2_000_000
"""Stages x positions x lengths x recompute choices the interval tables may hold; larger chains go to the
ILP enumeration (planner.solvers.ilp.enumerate_by_bound)."""
PAIR_BOUND_SHARE = 0.75
"""By this share of its time the search stops refining the device-pair bound (it keeps what it proved)."""
PAIR_BOUND_MAX_ELEMENTS = 2 * 10**8
"""Array elements one feasibility pass of the device-pair bound may touch (about (N - 2P) P (N/2) N^2; ViT-B/16's
75 nodes on 8 devices take 1e8, ~0.06 s a pass); longer chains skip the bound."""
GENERATION_ROUNDS = 60
"""Rounds of the row generation (_generate_rows): each is one DP and at most one simulation."""


def fits_tables(num_nodes: int, num_stages: int, options: int) -> bool:
    """Whether the search's interval tables stay within MAX_TABLE_ELEMENTS."""
    L = num_nodes - num_stages + 1
    return num_stages * (num_nodes + 1) * max(L, 1) * options <= MAX_TABLE_ELEMENTS


class _Intervals:
    """Per stage s and recompute choice r, for every interval [i, i+L) (rows i, columns L-1): the stage's
    F, B, W (the simulator's durations), its memory less the reserve, whether it may be stage s and fits
    its device alone; per stage the link its end cut pays (0 inside a device and after the last stage) and
    its optimizer step."""

    def __init__(self, prob: ChainProblem, cluster: Cluster, devices: list[int]):
        tb, cfg = prob.tables, prob.config
        N, S = tb.num_nodes, prob.num_stages
        self.N, self.S, self.L = N, S, N - S + 1
        self.options = prob.recompute_options
        L = self.L
        sums = IntervalSums.build(prob, L)
        i = np.arange(N + 1)[:, None]
        j = i + np.arange(1, L + 1)[None, :]
        inside = j <= N
        jc = np.where(inside, j, N)
        cols = np.broadcast_to(np.arange(L)[None, :], jc.shape)
        start_indexed = lambda a: np.where(inside, np.asarray(a, dtype=float)[jc, cols] if np.ndim(a) else a, 0.0)
        fref, bref, wref = (start_indexed(x) for x in (sums.fwd_ref, sums.bwd_ref, sums.bwd_weight_ref))
        po = np.concatenate([[0.0], np.cumsum(tb.optimizer)])
        fwd_cut, _ = cut_bytes(tb)
        fwd_n, _ = cut_tensors(tb)
        split = schedule_spec(prob.schedule).split_backward
        self.budget = {d: stages_budget_bytes(cluster.devices[d].memory_bytes, cfg.reserve_bytes) for d in set(devices)}
        self.F, self.B, self.W, self.mem, self.ok = [], [], [], [], []
        self.link, self.opt = [], []
        self.any_place: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        largest = int(tb.params.max(initial=0))
        for s in range(S):
            overhead = prob.stage_overhead[s] if prob.stage_overhead is not None else 0.0
            co_t = stage_time_coefficients(prob.stage_speed[s], overhead, prob.schedule, s == S - 1)
            # stage s ends in [s+1, N-(S-1-s)], the last one at N
            place = inside & (i >= s) & (j <= N - (S - 1 - s)) & ((j == N) if s == S - 1 else True)
            Fs, Bs, Ws, Ms, Os = [], [], [], [], []
            for r in self.options:
                f, bwd, b_in, w = co_t.compute_ms(fref, bref, wref, r)
                co_m = memory_coefficients(in_flight=prob.stage_in_flight[s], config=cfg, profile_dtype=tb.dtype,
                                           recompute=r, largest_layer_params=largest)
                mem = start_indexed(sums.memory_bytes(co_m)) - cfg.reserve_bytes
                Fs.append(np.where(place, f, 0.0))
                Bs.append(np.where(place, b_in if split else bwd, 0.0))
                Ws.append(np.where(place, w if split else 0.0, 0.0))
                Ms.append(mem)
                Os.append(place & (mem <= self.budget[devices[s]]))
            self.F.append(Fs), self.B.append(Bs), self.W.append(Ws), self.mem.append(Ms), self.ok.append(Os)
            # F, B, W on every interval, where stage s may lie or not, recompute off (device_pair_bound's floor)
            f, bwd, b_in, w = co_t.compute_ms(fref, bref, wref, False)
            self.any_place.append(tuple(np.where(inside, x, INF) for x in (f, b_in if split else bwd, w if split else np.zeros_like(f))))
            if s < S - 1 and devices[s] != devices[s + 1]:
                per_cut = np.array([boundary_comm_ms(cluster, devices[s], devices[s + 1], b, int(n))
                                    for b, n in zip(fwd_cut, fwd_n)])
                self.link.append(np.where(inside, per_cut[jc], 0.0))
            else:
                self.link.append(np.zeros_like(fref))
            self.opt.append(np.where(inside, stage_optimizer_ms(po[jc] - po[i], cfg.optimizer, prob.stage_speed[s]),
                                     0.0))
        self.jc = jc
        self.has_optimizer = float(tb.optimizer.sum()) > 0
        self.po, self.optimizer, self.fastest = po, cfg.optimizer, max(prob.stage_speed)

    def completion(self, AF, AB, AW, AL, argmin: bool = False):
        """C[row, k, i]: the least sum over stages k..S-1 of the row's terms, over the ways to cut positions
        i..N-1 into them (memory: each interval alone). With argmin, also each (k, i)'s best (L, r) for
        one row."""
        N, S = self.N, self.S
        R = AF.shape[0]
        C = np.full((R, S + 1, N + 1), INF)
        C[:, S, N] = 0.0
        choice = np.zeros((S, N + 1, 2), dtype=np.int64) if argmin else None
        for k in range(S - 1, -1, -1):
            nxt = C[:, k + 1][:, self.jc]
            best = np.full((R, N + 1), INF)
            for r in range(len(self.options)):
                term = self.term(AF[:, k], AB[:, k], AW[:, k], AL[:, k], k, r) + nxt
                term[:, ~self.ok[k][r]] = INF
                if argmin:
                    arg = term[0].argmin(axis=1)
                    val = term[0][np.arange(N + 1), arg]
                    better = val < best[0]
                    choice[k][better] = np.stack([arg[better], np.full(better.sum(), r)], axis=1)
                best = np.minimum(best, term.min(axis=2))
            C[:, k] = best
        return C, choice

    def term(self, af, ab, aw, al, k: int, r: int, at=slice(None)):
        """The rows' term of stage k with choice r on every interval (rows x positions x lengths), or on
        the intervals the index `at` selects ((position, lengths): rows x lengths)."""
        e = lambda a: a[:, None, None] if isinstance(at, slice) else a[:, None]
        return (e(af) * self.F[k][r][at] + e(ab) * self.B[k][r][at] + e(aw) * self.W[k][r][at]
                + e(al) * self.link[k][at])


class _Rows:
    """The bound's rows (paths and Lagrangian combinations) and their completion tables."""

    def __init__(self, iv: _Intervals):
        self.iv = iv
        S = iv.S
        self.AF = np.zeros((0, S))
        self.AB, self.AW, self.AL = np.zeros((0, S)), np.zeros((0, S)), np.zeros((0, S))
        self.C = np.zeros((0, S + 1, iv.N + 1))
        self.known: set[PathCoeffs] = set()
        self.source: list[PathCoeffs | None] = []
        """The path of each row (None for a Lagrangian row)."""
        self.active: list[PathCoeffs] = []
        """The paths the best Lagrangian weights use (_generate_rows)."""

    def __len__(self) -> int:
        return self.AF.shape[0]

    def add(self, af, ab, aw, al, source: PathCoeffs | None = None) -> None:
        self.source.append(source)
        af, ab, aw, al = (np.asarray(x, dtype=float)[None, :] for x in (af, ab, aw, al))
        C, _ = self.iv.completion(af, ab, aw, al)
        self.AF, self.AB = np.vstack([self.AF, af]), np.vstack([self.AB, ab])
        self.AW, self.AL = np.vstack([self.AW, aw]), np.vstack([self.AL, al])
        self.C = np.concatenate([self.C, C])

    def add_path(self, path: PathCoeffs) -> bool:
        if path in self.known:
            return False
        self.known.add(path)
        nF, nB, nW, nL = path
        self.add(nF, nB, nW, [*nL, 0], source=path)
        return True

    def fixed(self, stages, first: int = 0) -> np.ndarray:
        """Rows first.. summed over fixed stages [(i, L, r), ...]."""
        out = np.zeros(len(self) - first)
        iv = self.iv
        for k, (i, L_, r) in enumerate(stages):
            out += (self.AF[first:, k] * iv.F[k][r][i, L_ - 1] + self.AB[first:, k] * iv.B[k][r][i, L_ - 1]
                    + self.AW[first:, k] * iv.W[k][r][i, L_ - 1] + self.AL[first:, k] * iv.link[k][i, L_ - 1])
        return out


def _durations(iv: _Intervals, stages) -> tuple[list[float], list[float], list[float], list[float]]:
    """Per stage F, B, W and per boundary the link, of a partition [(i, L, r), ...] (the simulator's)."""
    pick = lambda arr: [float(arr[k][r][i, L_ - 1]) for k, (i, L_, r) in enumerate(stages)]
    link = [float(iv.link[k][i, L_ - 1]) for k, (i, L_, _) in enumerate(stages[:-1])]
    return pick(iv.F), pick(iv.B), pick(iv.W), link


def device_pair_bound(iv: _Intervals, devices: list[int], paths: list[PathCoeffs], lo: float, hi: float,
                      deadline: float, rel_tol: float = 2e-4) -> float:
    """A lower bound on the drain of every partition: the least, over partitions, of the largest device path.

    Two chunks per device on a chain (Interleaved1F1B with v = 2, ZBV): device d holds stage d of the first
    chain [0, c) and one stage of the second chain [c, N), stage P + d (loop placement, the second chain
    walked forwards) or 2P - 1 - d (V placement, walked backwards). A device path (exact.device_paths) is
    the device's own two stages times their counts, plus a head over stages t < d and boundaries b < d
    (micro-batch 0's way in, the last gradient's way out). The head is bounded below by its least value
    over every cut of [0, i0) into d stages (H below); the rest is exact. So for a target T the question
    "is there a partition with every device path <= T" is a DP over the devices in order whose state is
    (end of stage d in the first chain, how far the second chain is covered). Every reachable pair is kept:
    covering more of the second chain is not always better (the next device may then have to take a heavy
    node alone). For a new pair the nearest reachable frontier is the best source, since a shorter
    interval's durations (sums of non-negative node times plus the stage's fixed overhead) are no larger.
    Bisection on T between lo (known infeasible, or the caller's bound) and hi (a partition's value)
    returns the largest T proven infeasible: every partition has a device path, hence a drain, above it.
    The Lagrangian rows (_generate_rows) see only weighted averages of these paths; this sees that some
    device must take the extra block (llama's 32 blocks and head on 8 devices). Memory is left out (a
    relaxation). Paths of another shape are skipped; -inf when no path or placement fits the shape."""
    S, N = iv.S, iv.N
    P = S // 2
    if S != 2 * P or P < 2 or not hi > lo or (N - 2 * P) * P * (N // 2 + 1) * (N + 1) ** 2 > PAIR_BOUND_MAX_ELEMENTS:
        return -INF
    second = []
    for d in range(P):
        same = [t for t in range(P, S) if devices[t] == devices[d]]
        if len(same) != 1 or devices[:P].count(devices[d]) != 1:
            return -INF
        second.append(same[0])
    if second == [P + d for d in range(P)]:
        forward = True
    elif second == [S - 1 - d for d in range(P)]:
        forward = False
    else:
        return -INF
    L = iv.L

    def cost(s: int, nF: int, nB: int, nW: int, nL: int) -> np.ndarray:
        F, B, W = iv.any_place[s]
        out = np.where(np.isfinite(F), 0.0, INF)  # INF where the stage cannot hold the interval
        for n, x in ((nF, F), (nB, B), (nW, W), (nL, iv.link[s])):
            if n:
                out = out + n * x
        return out

    # per device: (head H[i0], own cost of its first-chain stage, own cost of its second-chain stage) per path
    by_device: list[list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = [[] for _ in range(P)]
    for nF, nB, nW, nL in paths:
        d = int(np.argmax([nF[t] + nB[t] for t in range(P)]))
        own = {d, second[d]}
        if any((nF[t] or nB[t] or nW[t]) and t not in own and t >= d for t in range(S)) or any(nL[d:]):
            continue
        H = np.full(N + 1, INF)
        H[0] = 0.0
        for t in range(d):  # the head's least value over cuts of [0, i0) into stages 0..d-1
            c_t = cost(t, nF[t], nB[t], nW[t], nL[t] if t < len(nL) else 0)
            nxt = np.full(N + 1, INF)
            cand = H[:, None] + c_t
            ends = np.arange(N + 1)[:, None] + np.arange(1, L + 1)[None, :]
            ok = ends <= N
            np.minimum.at(nxt, ends[ok], cand[ok])
            H = nxt
        sd = second[d]
        by_device[d].append((H, cost(d, nF[d], nB[d], nW[d], 0), cost(sd, nF[sd], nB[sd], nW[sd], 0)))
    if not any(by_device):
        return -INF

    pos = np.arange(N + 1)

    def length_cost(table: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
        """table[start, length - 1], INF where that is not an interval of 1..L nodes."""
        ok = (length >= 1) & (length <= L) & (start >= 0) & (start <= N)
        return np.where(ok, table[np.clip(start, 0, N), np.clip(length - 1, 0, L - 1)], INF)

    def feasible(T: float) -> bool | None:
        """Whether some partition has every device path <= T; None past the deadline."""
        for c in range(P, N - P + 1):  # the first chain is [0, c)
            if time.perf_counter() > deadline:
                return None
            # R[i, j]: devices 0..d-1 can end the first chain's stages at i with the second chain covered to j
            R = np.zeros((N + 1, N + 1), dtype=bool)
            R[0, c if forward else N] = True
            for d in range(P):
                last = d == P - 1
                src = np.nonzero(R.any(axis=1))[0]
                if len(src) == 0:
                    break
                n = len(src)
                # the second-chain stage of device d ends (forward) or starts (backward) at j; its best source
                # frontier is the nearest reachable one (a shorter interval costs no more): no dominance needed
                if forward:
                    below = np.maximum.accumulate(np.where(R[src], pos, -1), axis=1)
                    near = np.concatenate([np.full((n, 1), -1), below[:, :-1]], axis=1)
                    j_ok = (pos == N) if last else (pos <= N - (P - 1 - d))
                    b_start, b_len = near, pos[None, :] - near
                else:
                    above = np.minimum.accumulate(np.where(R[src], pos, N + 1)[:, ::-1], axis=1)[:, ::-1]
                    near = np.concatenate([above[:, 1:], np.full((n, 1), N + 1)], axis=1)
                    j_ok = (pos == c) if last else (pos >= c + (P - 1 - d))
                    b_start, b_len = np.broadcast_to(pos[None, :], near.shape), near - pos[None, :]
                has = (near >= 0) & (near <= N) & j_ok[None, :]
                a_len = pos[None, :] - src[:, None]
                a_ok = (a_len >= 1) & ((pos == c) if last else (pos <= c - (P - 1 - d)))[None, :]
                ok = a_ok[:, :, None] & has[:, None, :]  # (source, end i, frontier j)
                for H, own_a, own_b in by_device[d]:
                    budget = T - H[src][:, None] - length_cost(own_a, np.broadcast_to(src[:, None], a_len.shape), a_len)
                    ok &= length_cost(own_b, b_start, b_len)[:, None, :] <= budget[:, :, None]
                R = ok.any(axis=0)
            else:
                if R[c, N if forward else c]:
                    return True
        return False

    if feasible(lo * (1 + 4 * rel_tol)) is not False:  # nothing to gain over lo (the common case): one quick check
        return lo
    while hi - lo > rel_tol * hi:
        mid = (lo + hi) / 2
        ok = feasible(mid)
        if ok is None:
            break
        lo, hi = (lo, mid) if ok else (mid, hi)
    return lo


def _generate_rows(rows: _Rows, iv: _Intervals, on_partition: Callable[[list], None], good_enough: Callable[[], float],
                   deadline: float, max_rounds: int) -> float:
    """Row generation with Kelley's cutting planes: the weights lambda over the path rows that maximise
    the least weighted completion at the root (an LP over the weights, one cut per partition seen); each
    round's least partition goes to on_partition (which scores it and adds its critical path as a row, so
    the bound of every partition sharing its bottleneck rises to what the simulator shows). Stops when the
    bound reaches good_enough() (the best simulated step so far, less what the caller adds), when the LP and the
    bound meet with no new row, or at max_rounds / the deadline. The best weights become a row. Returns
    the bound (the Lagrangian dual over the rows; -inf when no partition fits stage by stage)."""
    parts: list[list[tuple[int, int, int]]] = []
    best_val, best_combo, best_lam = -INF, None, None
    lam = None
    _silence_highs_banner()
    for _ in range(max_rounds):
        R = len(rows)
        if R == 0:
            break
        if lam is None or len(lam) < R:  # start from the strongest single row; new rows weigh 0
            lam = np.zeros(R) if lam is None else np.concatenate([lam, np.zeros(R - len(lam))])
            if not lam.any():
                lam[int(rows.C[:, 0, 0].argmax())] = 1.0
        combo = [lam @ a for a in (rows.AF, rows.AB, rows.AW, rows.AL)]
        C, choice = iv.completion(*(c[None, :] for c in combo), argmin=True)
        value = float(C[0, 0, 0])
        if not np.isfinite(value):
            return -INF
        if value > best_val:
            best_val, best_combo, best_lam = value, combo, lam
        if best_val >= good_enough() * (1 - REL_TOL) or time.perf_counter() > deadline:
            break
        stages, i = [], 0
        for k in range(iv.S):
            L0, r = (int(x) for x in choice[k][i])
            stages.append((i, L0 + 1, r))
            i += L0 + 1
        before = len(rows)
        on_partition(stages)
        parts.append(stages)
        # the LP over the weights: max z, z <= sum_p lambda_p X_p(pi) for every partition seen
        R = len(rows)
        X = np.array([rows.fixed(pt) for pt in parts])  # partitions x rows
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        # one thread, as the ILP's: HiGHS's scheduler is process-wide and refuses another count later
        h.setOptionValue("threads", 1)
        inf = highspy.kHighsInf
        h.addVar(-inf, inf)
        h.changeColCost(0, -1.0)
        for _ in range(R):
            h.addVar(0.0, 1.0)
        h.addRow(1.0, 1.0, R, np.arange(1, R + 1, dtype=np.int32), np.ones(R))
        for x in X:
            h.addRow(-inf, 0.0, R + 1, np.arange(R + 1, dtype=np.int32), np.concatenate([[1.0], -x]))
        h.run()
        sol = np.array(h.getSolution().col_value)
        lam = np.clip(sol[1:], 0.0, None)
        lam = lam / lam.sum() if lam.sum() > 0 else None
        if len(rows) == before and sol[0] - best_val <= 1e-9 * max(1.0, abs(sol[0])):
            break  # converged: no weights do better on these rows
    if best_combo is not None:
        rows.add(*best_combo)
        rows.active = [rows.source[k] for k in np.nonzero(best_lam > 1e-9)[0] if rows.source[k] is not None]
    return best_val


def chunked_chain_finish(prob: ChainProblem, cluster: Cluster, devices: list[int], paths: list[PathCoeffs],
                         incumbents: list[tuple[list[int], list[bool]]],
                         score: Callable[[list[int], list[bool]], float | None],
                         path_of: Callable[[list[int], list[bool]], PathCoeffs | None],
                         time_limit_s: float, sync: float = 0.0):
    """Branch and bound over a chain's cuts for several stages per device (module docstring).

    paths: the schedule's seed paths; incumbents: (stage_of, recompute) to score first; score(stage_of,
    recompute) -> the simulated step (None if it does not fit); path_of(stage_of, recompute) -> the
    critical path of the plan just scored; sync: the optimizer's all-reduce, added to every bound.
    Returns (best (stage_of, recompute) or None, its simulated step, a lower bound on the simulated step of
    every partition that fits, proven, the path rows to hand over to the ILP: the seeds, those the best
    Lagrangian weights use and the best plan's critical path)."""
    start = time.perf_counter()
    iv = _Intervals(prob, cluster, devices)
    N, S = iv.N, iv.S
    rows = _Rows(iv)
    for p in paths:
        rows.add_path(p)
    best, best_ms, best_path = None, INF, None

    def scored(stage_of: list[int], rec: list[bool]) -> None:
        nonlocal best, best_ms, best_path
        ms = score(stage_of, rec)
        if ms is None:
            return
        path = path_of(stage_of, rec)
        if ms < best_ms:
            best, best_ms, best_path = (list(stage_of), list(rec)), ms, path
        if path is not None:
            rows.add_path(path)

    def hand_over() -> list[PathCoeffs]:
        """The rows worth an ILP's time: the seeds, those the best weights use, the best plan's path."""
        return [p for p in dict.fromkeys([*paths, *rows.active, best_path]) if p is not None]

    for stage_of, rec in incumbents:
        scored(stage_of, rec)
    devs = sorted(set(devices))
    slot = {d: k for k, d in enumerate(devs)}
    rem_opt = (iv.po[N] - iv.po) if iv.has_optimizer else np.zeros(N + 1)
    P, M = len(devs), prob.num_microbatches
    v = S // P

    def on_partition(stages) -> None:
        """A partition the row generation picked: its critical path is a row whether or not it fits; the
        simulator scores it when every device holds its stages."""
        fwd, b_dur, w_dur, link = _durations(iv, stages)
        rows.add_path(critical_path(prob.schedule, P, M, v, fwd, b_dur, w_dur, link)[1])
        used = dict.fromkeys(devs, 0.0)
        for k, (i, L_, r) in enumerate(stages):
            used[devices[k]] += float(iv.mem[k][r][i, L_ - 1])
        if all(used[d] <= iv.budget[d] for d in devs):
            scored([s for s, (_, L_, _) in enumerate(stages) for _ in range(L_)],
                   [bool(options[r]) for _, _, r in stages])

    def opt_bound(opt: tuple[float, ...], i: int) -> float:
        """max_d O_d given the steps fixed so far (opt, per device) and the rest from position i on."""
        if not iv.has_optimizer:
            return 0.0
        rest = stage_optimizer_ms(float(rem_opt[i]), iv.optimizer, iv.fastest)
        return max(max(opt), (sum(opt) + rest) / len(devs))

    options = iv.options
    zero = tuple(0.0 for _ in devs)
    extra = sync + opt_bound(zero, 0)
    _generate_rows(rows, iv, on_partition, lambda: best_ms - extra, start + time_limit_s / 2, GENERATION_ROUNDS)
    root = float(rows.C[:, 0, 0].max(initial=-INF)) + sync + opt_bound(zero, 0)
    if not np.isfinite(root):  # no partition fits even stage by stage
        return best, best_ms, best_ms if best is not None else INF, best is not None, hand_over()
    if best is not None and root < best_ms * (1 - REL_TOL):
        # every partition's drain is at least the least largest device path: a bound the rows' weighted
        # averages miss where the work cannot be spread evenly (device_pair_bound; -inf off its shapes)
        pair = device_pair_bound(iv, devices, paths, root - extra, best_ms - extra,
                                 start + time_limit_s * PAIR_BOUND_SHARE)
        root = max(root, pair + extra)
    heap = [(root, 0, 0, (0, 0, (), np.zeros(len(rows)), zero, zero))]
    counter = expansions = leaves = 0
    timed_out = False
    while heap:
        bound, _, _, node = heap[0]
        if bound >= best_ms * (1 - REL_TOL):
            break
        if expansions >= MAX_EXPANSIONS or leaves >= MAX_LEAVES or time.perf_counter() - start > time_limit_s:
            timed_out = True
            break
        heapq.heappop(heap)
        k, i, stages, fixed, mem, opt = node
        if len(fixed) < len(rows):  # rows added since: the bound may rise (the search is lazy about it)
            fixed = np.concatenate([fixed, rows.fixed(stages, first=len(fixed))])
            fresh = max(bound, float((fixed + rows.C[:, k, i]).max()) + sync + opt_bound(opt, i))
            if fresh > bound * (1 + REL_TOL):
                counter += 1
                heapq.heappush(heap, (fresh, -k, counter, (k, i, stages, fixed, mem, opt)))
                continue
        expansions += 1
        if k == S:
            leaves += 1
            stage_of = [s for s, (_, L_, _) in enumerate(stages) for _ in range(L_)]
            scored(stage_of, [bool(options[r]) for _, _, r in stages])
            continue
        d = slot[devices[k]]
        nxt = rows.C[:, k + 1][:, iv.jc[i]]  # rows x lengths
        for r in range(len(options)):
            ok = iv.ok[k][r][i] & (mem[d] + iv.mem[k][r][i] <= iv.budget[devices[k]])
            if not ok.any():
                continue
            Ls = np.nonzero(ok)[0]
            contrib = iv.term(rows.AF[:, k], rows.AB[:, k], rows.AW[:, k], rows.AL[:, k], k, r, at=(i, Ls))
            child_fixed = fixed[:, None] + contrib
            values = (child_fixed + nxt[:, Ls]).max(axis=0)
            for n, L0 in enumerate(Ls):
                j = i + int(L0) + 1
                o = list(opt)
                o[d] += float(iv.opt[k][i, L0])
                o = tuple(o)
                b = max(bound, float(values[n]) + sync + opt_bound(o, j))
                if b >= best_ms * (1 - REL_TOL):
                    continue
                m = list(mem)
                m[d] += float(iv.mem[k][r][i, L0])
                counter += 1
                heapq.heappush(heap, (b, -(k + 1), counter,
                                      (k + 1, j, (*stages, (i, int(L0) + 1, r)), child_fixed[:, n], tuple(m), o)))
    if timed_out:
        lower = min(best_ms, heap[0][0])
    else:
        lower = best_ms if best is not None else INF
    return best, best_ms, min(lower, best_ms), not timed_out and best is not None, hand_over()
