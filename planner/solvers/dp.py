"""Exact dynamic program over contiguous stages of the topological order.

For a chain (the topological order is unique) every valid partition is a set of
contiguous intervals, so this is exact; on other DAGs it is the best contiguous
partition, a warm start and upper bound for the ILP. One stage per device
(GPipe, 1F1B, ZBH1), devices in a fixed order, each with its own speed, memory
and links.

The objective step = max(M * maxT, (M-1) * maxT + sum c) (cost.closed_form_step_ms
with v = 1; T and c per stage from cost.StageTimeCoefficients) is not separable, so we solve it parametrically: f(t) = min sum c over
partitions whose stages all have T <= t (a plain DP), and
    opt = min over candidate t (the stage times that occur) of max(M t, (M-1) t + f(t)).
f is non-increasing, so over a range [t_a, t_b] of candidates no plan beats
max(M t_a, (M-1) t_a + f(t_b)); branch and bound on candidate ranges proves optimality
after a few dozen DP passes. The first feasible t (the bottleneck) is found by bisection.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from core.errors import PipeplanError
from planner.costmodel.cost import (
    CostTables,
    StageTimeCoefficients,
    closed_form_step_ms,
    cycle_ms,
    fill_drain_ms,
    stage_time_coefficients,
)
from planner.costmodel.memory import memory_coefficients, stage_output_bytes

INF = float("inf")


@dataclass(slots=True)
class ChainProblem:
    """The numbers the DP and the ILP need, for S stages on fixed devices."""

    tables: CostTables
    num_microbatches: int
    schedule: str
    stage_speed: list[float]
    stage_limit: list[float]
    """Memory limit of each stage's device (bytes)."""
    stage_in_flight: list[int]
    recompute_options: tuple[bool, ...]
    comm_ms_per_cut: list[np.ndarray]
    """comm_ms_per_cut[s][j]: forward + gradient transfer time of the cut after position j-1 on the
    link from stage s to s+1 (zeros for the last stage)."""
    config: object
    relay: np.ndarray | bool | None = None
    """relay_matrix(tables), computed once on first use (False: computed, nothing is relayed)."""
    stage_overhead: list[float] | None = None
    """Per stage: its device's per-action runtime overhead (ms), added to fwd and bwd (None: 0)."""

    @property
    def num_stages(self) -> int:
        return len(self.stage_speed)

    def time_coefficients(self, s: int) -> StageTimeCoefficients:
        """Stage s's time terms from the cost model (its device's speed and overhead, the schedule)."""
        overhead = self.stage_overhead[s] if self.stage_overhead is not None else 0.0
        return stage_time_coefficients(self.stage_speed[s], overhead, self.schedule, s == self.num_stages - 1)


@dataclass(slots=True)
class DPResult:
    cuts: list[int] | None
    """Stage s covers positions cuts[s]..cuts[s+1]-1; None if nothing fits."""
    recompute: list[bool] | None
    objective: float
    lower_bound: float
    seconds: float
    optimal: bool


def cut_tensors(tables: CostTables) -> tuple[np.ndarray, np.ndarray]:
    """Forward tensors and gradient tensors crossing the cut at position j (one p2p message each)."""
    N = tables.num_nodes
    fwd, grad = np.zeros(N + 2), np.zeros(N + 2)
    for t in tables.tensors:
        a, c = t.producer + 1, t.last_consumer + 1
        fwd[a] += 1
        fwd[c] -= 1
        if t.requires_grad:
            grad[a] += 1
            grad[c] -= 1
    return np.cumsum(fwd)[: N + 1].round().astype(int), np.cumsum(grad)[: N + 1].round().astype(int)


def cut_bytes(tables: CostTables) -> tuple[np.ndarray, np.ndarray]:
    """Forward and gradient bytes crossing the cut at position j (nodes < j before it), j = 0..N."""
    N = tables.num_nodes
    fwd, grad = np.zeros(N + 2), np.zeros(N + 2)
    for t in tables.tensors:
        a, c = t.producer + 1, t.last_consumer + 1  # crosses cuts a..c-1
        fwd[a] += t.nbytes
        fwd[c] -= t.nbytes
        if t.requires_grad:
            grad[a] += t.nbytes
            grad[c] -= t.nbytes
    return np.cumsum(fwd)[: N + 1], np.cumsum(grad)[: N + 1]


def relay_matrix(tables: CostTables) -> np.ndarray | None:
    """R[i, j] = bytes of tensors produced before position i and read at or after j (relayed by [i, j)).
    None when nothing skips a node: then no interval [i, j) with i < j (the only ones used) relays
    anything, and the (N+1)^2 matrix is not worth its memory."""
    N = tables.num_nodes
    if all(t.last_consumer <= t.producer + 1 for t in tables.tensors):
        return None
    K = np.zeros((N + 1, N + 1))
    for t in tables.tensors:
        K[t.producer + 1, t.last_consumer] += t.nbytes
    # sum over p <= i (rows ascending) and q >= j (columns descending)
    return np.cumsum(np.cumsum(K, axis=0)[:, ::-1], axis=1)[:, ::-1]


def held_output_bytes(tables: CostTables, relay) -> tuple[np.ndarray, np.ndarray | None | bool]:
    """The pieces of AssignmentCost.held_output_bytes for every interval [i, j): cut[j] - R[i, j] over the
    tensors their producer does not save (cut_bytes and relay_matrix of those); `relay` (the full relay
    matrix, False or None) is reused when every tensor qualifies."""
    unsaved = [t for t in tables.tensors if not t.saved_by_producer]
    if len(unsaved) == len(tables.tensors):
        return cut_bytes(tables)[0], relay
    sub = dataclasses.replace(tables, tensors=unsaved)
    return cut_bytes(sub)[0], (relay_matrix(sub) if relay_matrix_bytes(sub) else False)


def saved_copy_matrix(tables: CostTables) -> np.ndarray | None:
    """C[i, j] = AssignmentCost.saved_copy_bytes of the stage [i, j): tensors whose first saver is before i
    and a copy saver (Tensor.copy_savers) is inside. For savers f < c1 < c2 ..., the stage holds a copy
    of c_k's iff c_{k-1} < i <= c_k < j: rectangles, summed through a 2-D difference array. None when no
    tensor has a copy saver."""
    N = tables.num_nodes
    D, any_copy = None, False
    for t in tables.tensors:
        previous = t.first_saver
        for c in t.copy_savers:
            if D is None:
                D = np.zeros((N + 2, N + 2))
            D[previous + 1, c + 1] += t.nbytes
            D[c + 1, c + 1] -= t.nbytes
            previous, any_copy = c, True
    if not any_copy:
        return None
    return np.cumsum(np.cumsum(D, axis=0), axis=1)[: N + 1, : N + 1]


def saved_matrices_bytes(tables: CostTables) -> int:
    """What held_output_bytes' relay matrix and saved_copy_matrix allocate at most."""
    unsaved = dataclasses.replace(tables, tensors=[t for t in tables.tensors if not t.saved_by_producer])
    copies = any(t.copy_savers for t in tables.tensors)
    return (relay_matrix_bytes(unsaved) if len(unsaved.tensors) < len(tables.tensors) else 0) + \
        (8 * (tables.num_nodes + 2) ** 2 * 3 if copies else 0)


TABLE_BUDGET_BYTES = 1 << 30
"""Most memory the DP's interval tables may take (IntervalCosts); larger graphs are coarsened first
(planner.solvers.coarsen), so a huge profile never exhausts the machine."""


def relay_matrix_bytes(tables: CostTables) -> int:
    """Bytes relay_matrix allocates: (N+1)^2 float64 when some tensor skips a node, else nothing."""
    if all(t.last_consumer <= t.producer + 1 for t in tables.tensors):
        return 0
    return 8 * (tables.num_nodes + 1) ** 2


def interval_table_bytes(num_nodes: int, num_stages: int, max_len: int) -> int:
    """Peak bytes of IntervalCosts(prob, max_len): T, C and the recompute flags per stage (3 S arrays of
    (N+1) x L), plus about 24 (N+1) x L temporaries (positions, sums, memory, fits, the per-key T and C)."""
    return 8 * (3 * num_stages + 24) * (num_nodes + 1) * max_len


class DPTooLarge(PipeplanError):
    """The interval tables would take more than TABLE_BUDGET_BYTES; the caller coarsens the graph. Raised
    to the user (one line) only when even the coarsest graph with one layer per stage is too large: too
    many stages (issue 18: --devices 4096 --schedule GPipe on a 5000-layer profile was a traceback)."""


@dataclass(slots=True)
class IntervalSums:
    """What a stage holding the interval [j-L, j) sums up, for every end j = 0..N (rows) and length
    L = 1..Lmax (columns): its reference times and the pieces of its memory (AssignmentCost's terms).
    Entries with j - L < 0 are not intervals (valid False; their start is clipped to 0)."""

    valid: np.ndarray
    start: np.ndarray
    """j - L (unclipped: negative where not valid)."""
    end: np.ndarray
    fwd_ref: np.ndarray
    bwd_ref: np.ndarray
    bwd_weight_ref: np.ndarray
    params: np.ndarray
    activations: np.ndarray
    inputs: np.ndarray
    relay: np.ndarray | float
    outputs: np.ndarray

    @classmethod
    def build(cls, prob: ChainProblem, max_len: int) -> IntervalSums:
        tb = prob.tables
        N = tb.num_nodes
        P = lambda a: np.concatenate([[0.0], np.cumsum(a)])
        pf, pb, pw, pp, pa = P(tb.fwd), P(tb.bwd), P(tb.bwd_weight), P(tb.params.astype(float)), P(tb.activation)
        fwd_cut, _ = cut_bytes(tb)
        in_bytes = fwd_cut.copy()
        in_bytes[0] = tb.model_input_bytes
        if prob.relay is None:
            prob.relay = False if relay_matrix_bytes(tb) == 0 else relay_matrix(tb)
        R = prob.relay
        j = np.arange(N + 1)[:, None]
        lengths = np.arange(1, max_len + 1)[None, :]
        i = j - lengths
        valid = i >= 0
        ic = np.where(valid, i, 0)
        jj = np.broadcast_to(j, ic.shape)
        params = pp[jj] - pp[ic]
        for sp in tb.shared:  # a stage holding a user but not the owner keeps a copy
            users = np.array(sp.users)
            has_user = np.zeros_like(valid)
            for u in users:
                has_user |= (ic <= u) & (u < jj)
            holds_owner = (ic <= sp.owner) & (sp.owner < jj) if sp.owner >= 0 else np.zeros_like(valid)
            params = params + sp.size * (has_user & ~holds_owner)
        acts = pa[jj] - pa[ic]
        copies = saved_copy_matrix(tb)
        if copies is not None:  # received tensors its layers save, charged to another stage's layer
            acts = acts + copies[ic, jj]
        # held by the stage until their backward, unless its own layers saved them (AssignmentCost)
        held_cut, held_relay = held_output_bytes(tb, R)
        outputs = stage_output_bytes(held_cut[jj], held_relay[ic, jj] if held_relay is not False else 0.0)
        return cls(valid=valid, start=i, end=jj, fwd_ref=pf[jj] - pf[ic], bwd_ref=pb[jj] - pb[ic],
                   bwd_weight_ref=pw[jj] - pw[ic], params=params, activations=acts, inputs=in_bytes[ic],
                   relay=R[ic, jj] if R is not False else 0.0, outputs=outputs)

    def memory_bytes(self, co) -> np.ndarray:
        """stage_memory_bytes(...).total of every interval, for one stage's memory.MemoryCoefficients."""
        return co.total_bytes(self.params, self.activations, self.inputs, self.relay, self.outputs)


class IntervalCosts:
    """T and c of every interval [j-L, j) on every stage, L = 1..Lmax, best recompute choice."""

    def __init__(self, prob: ChainProblem, max_len: int):
        tb = prob.tables
        N, S = tb.num_nodes, prob.num_stages
        need = interval_table_bytes(N, S, max_len) + (relay_matrix_bytes(tb) if prob.relay is None else 0) \
            + saved_matrices_bytes(tb)
        if need > TABLE_BUDGET_BYTES:
            raise DPTooLarge(f"{N} layers x {S} stages: the planner's tables would take {need / 2**30:.1f} GiB "
                             f"(at most {TABLE_BUDGET_BYTES / 2**30:.0f} GiB); plan for fewer devices")
        self.N, self.S, self.L = N, S, max_len
        sums = IntervalSums.build(prob, max_len)
        valid, i, jj = sums.valid, sums.start, sums.end
        fref, bref, wref = sums.fwd_ref, sums.bwd_ref, sums.bwd_weight_ref
        self.T = np.full((S, N + 1, max_len), INF)
        self.C = np.full((S, N + 1, max_len), INF)
        self.rec = np.zeros((S, N + 1, max_len), dtype=bool)
        # T and c depend on the stage only through its speed, its link and whether it is the last:
        # long pipelines on one kind of device share them (64 stages, 2000 nodes: 3x faster)
        times: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        comm_of: dict[int, np.ndarray] = {}
        for s in range(S):
            key_c = id(prob.comm_ms_per_cut[s])
            if key_c not in comm_of:
                comm_of[key_c] = prob.comm_ms_per_cut[s][jj]
            comm = comm_of[key_c]
            done = ~valid
            for r in prob.recompute_options:  # "off" first: where it fits it is never slower
                co = memory_coefficients(in_flight=prob.stage_in_flight[s], config=prob.config,
                                         profile_dtype=tb.dtype, recompute=r,
                                         largest_layer_params=int(tb.params.max(initial=0)))
                mem = sums.memory_bytes(co)
                fits = (mem <= prob.stage_limit[s]) & ~done
                coefficients = prob.time_coefficients(s)
                key = (coefficients, key_c, r)
                if key not in times:
                    times[key] = coefficients.cycle_and_fill_ms(fref, bref, wref, r, comm)
                T, C = times[key]
                self.T[s][fits], self.C[s][fits], self.rec[s][fits] = T[fits], C[fits], r
                done |= fits
            # stage s must end at j in [s+1, N-(S-1-s)]; the last stage ends at N
            lo, hi = s + 1, N - (S - 1 - s)
            self.T[s][:lo], self.T[s][hi + 1:] = INF, INF
            if s == S - 1:
                self.T[s][:N] = INF
            self.C[s][~np.isfinite(self.T[s])] = INF
        self.start = np.clip(i, 0, N)
        """start position of each (j, L) interval (clipped; invalid ones have C = inf)."""

    def solve(self, t: float, want_cuts: bool = True):
        """f(t): min sum c with every stage T <= t. Returns (value, cuts, recompute, max T)."""
        N, S = self.N, self.S
        F = np.full(N + 1, INF)
        F[0] = 0.0
        args = np.zeros((S, N + 1), dtype=np.int64)
        rows = np.arange(N + 1)
        for s in range(S):
            cand = F[self.start]
            cand += self.C[s]
            np.putmask(cand, self.T[s] > t, INF)
            a = np.argmin(cand, axis=1)
            args[s] = a
            F = cand[rows, a]
        if not np.isfinite(F[N]):
            return INF, None, None, INF
        cuts, rec, j = [N], [], N
        maxT = 0.0
        for s in range(S - 1, -1, -1):
            L_ = int(args[s][j]) + 1
            maxT = max(maxT, float(self.T[s][j, L_ - 1]))
            rec.append(bool(self.rec[s][j, L_ - 1]))
            j -= L_
            cuts.append(j)
        return float(F[N]), cuts[::-1], rec[::-1], maxT


def step_of(M: int, max_t: float, sum_c: float) -> float:
    """The closed-form step for one stage per device, from its two aggregates (cost.closed_form_step_ms)."""
    return closed_form_step_ms(M, 1, max_t, sum_c)


def band_length(prob: ChainProblem, t_cap: float) -> int:
    """Longest interval whose no-recompute time can be <= t_cap on some stage."""
    tb = prob.tables
    N = tb.num_nodes
    work = np.concatenate([[0.0], np.cumsum(tb.fwd + tb.bwd)])
    longest = 1
    for s in range(prob.num_stages):
        budget = (t_cap - prob.comm_ms_per_cut[s]) * prob.stage_speed[s]
        lo = np.searchsorted(work, work - budget - 1e-12 * max(1.0, t_cap), side="left")
        longest = max(longest, int((np.arange(N + 1) - lo).max()))
    return min(max(longest, 1), N - prob.num_stages + 1)


def memory_band_length(prob: ChainProblem) -> int:
    """Longest interval that can fit in memory on some stage: params and saved activations only grow
    with the interval (relay and input bytes are >= 0), so this bounds every feasible interval."""
    tb = prob.tables
    N = tb.num_nodes
    longest = 1
    for s in range(prob.num_stages):
        cos = [memory_coefficients(in_flight=prob.stage_in_flight[s], config=prob.config, profile_dtype=tb.dtype,
                                   recompute=r, largest_layer_params=int(tb.params.max(initial=0)))
               for r in prob.recompute_options]
        per_act = min(c.per_activation_byte for c in cos)
        lower = np.concatenate([[0.0], np.cumsum(cos[0].per_param * tb.params + per_act * tb.activation)])
        budget = prob.stage_limit[s] - cos[0].constant
        lo = np.searchsorted(lower, lower - budget - 1e-9 * max(1.0, budget), side="left")
        longest = max(longest, int((np.arange(N + 1) - lo).max()))
    return max(longest, 1)


BISECTION_STEPS = 16
"""Bisection passes on the bottleneck before the branch and bound (each is one DP pass)."""


def sum_c_lower_bound(prob: ChainProblem) -> float:
    """A lower bound on sum_s c_s of any partition: each node's time on the stage where it is
    cheapest (recompute and communication only add)."""
    tb = prob.tables
    per_stage = []
    for s in range(prob.num_stages):
        co = prob.time_coefficients(s)  # without its overhead, recompute and comm, which only add
        per_stage.append(fill_drain_ms(cycle_ms(tb.fwd, tb.bwd, 0.0), tb.bwd_weight, co.weight_credit) / co.speed)
    return float(np.minimum.reduce(per_stage).sum())


def solve_chain(prob: ChainProblem, *, time_limit_s: float = 10.0, rel_tol: float = 1e-9) -> DPResult:
    """The best contiguous partition under the cost model, with a proven lower bound."""
    start = time.perf_counter()
    tb, S, M = prob.tables, prob.num_stages, prob.num_microbatches
    N = tb.num_nodes
    if N < S:
        return DPResult(None, None, INF, INF, 0.0, True)
    # 1) an upper bound: grow t until a partition exists, then tighten by a short bisection.
    total = float((tb.fwd + tb.bwd).sum())
    # perfect balance is rarely reached: start a little above it (each miss costs a table build)
    t = max(1.25 * total / sum(prob.stage_speed), 1e-9)
    full_len = min(N - S + 1, memory_band_length(prob))
    while True:
        ic = IntervalCosts(prob, min(band_length(prob, t), full_len))
        _, cuts, _, maxT = ic.solve(t)
        if cuts is not None:
            break
        if ic.L >= full_len:
            finite = ic.T[np.isfinite(ic.T)]
            if finite.size == 0 or t >= finite.max():
                return DPResult(None, None, INF, INF, time.perf_counter() - start, True)
        t *= 2.0
    # lo: a bottleneck no partition reaches (f(lo) = inf); hi: one that is reached
    lo, hi = 0.0, maxT
    for _ in range(BISECTION_STEPS):
        mid = (lo + hi) / 2
        _, c2, _, m2 = ic.solve(mid)
        if c2 is None:
            lo = mid
        else:
            hi = m2
        if hi - lo <= 1e-3 * hi:
            break
    best_val, best_cuts, best_rec, best_maxT = ic.solve(hi)
    best = step_of(M, best_maxT, best_val)
    # 2) candidate bottlenecks: the stage times in (lo, t_hi]. A plan whose largest stage time is t
    # costs at least max(M t, (M-1) t + sum_c_lower_bound), so one with t > t_hi cannot beat `best`;
    # for long pipelines (M >> 1) this window is narrow, which keeps the search short.
    t_hi = best / M
    if M > 1:
        t_hi = min(t_hi, (best - sum_c_lower_bound(prob)) / (M - 1))
    need = min(band_length(prob, t_hi * (1 + 1e-12)), full_len)
    if need > ic.L:  # usually the bands built above already cover every useful interval
        ic = IntervalCosts(prob, need)
    Tv = ic.T[np.isfinite(ic.T)]
    cand = np.unique(Tv[(Tv > lo) & (Tv <= t_hi * (1 + 1e-12))])
    if len(cand) == 0:
        cand = np.array([best_maxT])
    memo: dict[int, float] = {}

    def f(k: int) -> float:
        nonlocal best, best_cuts, best_rec
        if k not in memo:
            v, cuts, rec, maxT = ic.solve(float(cand[k]))
            memo[k] = v
            if cuts is not None and step_of(M, maxT, v) < best:
                best, best_cuts, best_rec = step_of(M, maxT, v), cuts, rec
        return memo[k]

    stack = [(0, len(cand) - 1)]
    f(0), f(len(cand) - 1)
    timed_out = False
    open_bounds: list[float] = []
    while stack:
        a, b = stack.pop()
        fa, fb = f(a), f(b)
        bound = step_of(M, cand[a], fb)
        if bound >= best * (1 - rel_tol) or fa == fb or b - a <= 1:
            continue
        if time.perf_counter() - start > time_limit_s:
            timed_out = True
            open_bounds.append(bound)
            open_bounds.extend(step_of(M, cand[x], f(y)) for x, y in stack)
            break
        mid = (a + b) // 2
        f(mid)
        stack += [(a, mid), (mid, b)]
    lower = min([best] + open_bounds) if timed_out else best
    return DPResult(best_cuts, best_rec, float(best), float(lower), time.perf_counter() - start, not timed_out)
