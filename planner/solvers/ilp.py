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

Code: solve_ilp = build_model (one _Builder method per constraint family, in a fixed order) ->
_run (backend, time limit, warm start) -> _decode (the solver's status first, then the values).
The cutoff (upper_bound) is part of the model: it fixes x outside each node's stage window and
bounds Dmax and step.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass

import pulp

from planner.costmodel.cost import CostTables, closed_form_pieces, stage_time_coefficients
from planner.costmodel.memory import memory_coefficients

MEMORY_UNIT_BYTES = 2**10
"""The unit of the ILP's memory rows: KiB (bytes next to ms-sized time rows reached ~4e11, and HiGHS once called a
feasible model infeasible; in KiB an 80 GB device is ~8e7 and one byte still ~1e3 times the feasibility
tolerance, so limits hold to the byte)."""

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
    objective: str = "closed_form"
    """"closed_form" (the proxy: cost.predicted_step_time_ms) or "stage_bound": the least, over
    devices d, of the lower bound planner.solvers.exact.device_bound proves for the simulated step
    (its optimum and its dual bound are lower bounds on the simulated step of every plan)."""
    split_backward: bool = False
    """The schedule runs B and W apart (the stage bound's tail then drops)."""
    optimizer_factor: float = 0.0
    """Optimizer ms per reference AdamW ms (stage_optimizer_ms at speed 1); 0 leaves it out."""
    paths: list | None = None
    """With "stage_bound": paths of the schedule's event graph (planner.solvers.exact.PathCoeffs), each a
    row step >= its length + the largest optimizer step (exact.py, "path bounds"); more are added
    while the enumeration runs (ILPModel.add_path)."""


@dataclass(slots=True)
class ILPResult:
    stage_of: list[int] | None
    recompute: list[bool] | None
    status: str
    """"optimal", "feasible", "infeasible", "timeout" (no solution found)."""
    objective: float | None
    bound: float | None
    seconds: float


# -- HiGHS and CBC plumbing ------------------------------------------------------------

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
        status = lp.solverModel.run()
        if highspy is not None and status == highspy.HighsStatus.kError \
                and lp.solverModel.getModelStatus() == highspy.HighsModelStatus.kNotset:
            # HiGHS's thread scheduler is process-wide: one run elsewhere with another thread count makes
            # every later run refuse to start (kNotset, which reads as a time-out with no bound: a search
            # that silently proves nothing). Reset it and run again.
            highspy.Highs.resetGlobalScheduler(True)
            lp.solverModel.run()


def _cbc_solver(time_limit_s: float, warm_start: bool) -> pulp.LpSolver:
    """CBC through PuLP: COIN_CMD on the cbc binary of the cbcbox package (`pip install pulp[cbc]`,
    what PuLP >= 3.3.2 recommends) when it is installed, else PuLP's bundled binary (PULP_CBC_CMD)."""
    options = {"msg": False, "timeLimit": max(1, round(time_limit_s)), "warmStart": warm_start,
               "gapRel": 1e-9, "threads": 1}
    try:
        import cbcbox
    except ImportError:
        cbcbox = None
    if cbcbox is not None:
        return pulp.COIN_CMD(path=cbcbox.cbc_bin_path(), **options)
    with warnings.catch_warnings():
        # PuLP 3.3.2 deprecates PULP_CBC_CMD (its bundled binary goes in PuLP 4.0, hence pulp<4) in
        # favour of COIN_CMD on cbcbox's binary; until cbcbox is a dependency the bundled one is
        # the only CBC every install has, so this one warning is silenced, nothing else.
        warnings.filterwarnings("ignore", message="PULP_CBC_CMD is deprecated", category=DeprecationWarning)
        return pulp.PULP_CBC_CMD(**options)


def _new_var(lp: pulp.LpProblem, name: str, low: float | None = None, up: float | None = None,
             cat: str = pulp.LpContinuous) -> pulp.LpVariable:
    """A variable of lp: `LpProblem.add_variable` (PuLP >= 3.3.1, the PuLP 4 API); the LpVariable
    constructor, deprecated since, on an older PuLP."""
    add = getattr(lp, "add_variable", None)
    return add(name, low, up, cat) if add is not None else pulp.LpVariable(name, low, up, cat)


# -- bounds from a known plan: the stage window of every node --------------------------

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


def _time_unit(prob: ILPProblem, upper_bound: float | None) -> float:
    """ms per model time unit: about 1/1000 of the step (the known bound, else a work estimate)."""
    if upper_bound is not None and upper_bound > 0:
        return upper_bound / 1000.0
    tb = prob.tables
    work = float((tb.fwd + tb.bwd).sum()) / max(sum(prob.stage_speed), 1e-12)
    estimate = (prob.num_microbatches + len(prob.stage_device)) * work / max(prob.virtual_stages, 1)
    return estimate / 1000.0 if estimate > 0 else 1.0


# -- the model ---------------------------------------------------------------------------
#
# Variables (names as the solver sees them; it orders columns by name):
#   x_{i}_{s}   binary  node i is in stage <= s (s < S-1 and inside node i's window; else fixed 0/1)
#   a_{k}_{b}   [0, 1]  tensor k crosses boundary b (between stages b and b+1)
#   r_{k}_{s}   [0, 1]  tensor k is held by stage s strictly between its producer's and last consumer's
#   h_{f}_{s}   [0, 1]  stage s keeps a copy of tied parameter f (holds a user of it but not its owner)
#   rec_{s}     binary  stage s recomputes its activations (recompute "auto" only)
#   recf_{s}    >= 0    forward ms (reference device) stage s re-runs: fwd_s if rec_s, else 0
#   mact_{s}    >= 0    activation bytes of stage s under its recompute choice
#   Dmax        >= 0    the busiest device's time per micro-batch (model time units)
#   step        >= 0    the closed-form step time, the objective (model time units)
# Units: memory in bytes, as the profile gives them; time in units of `unit` ms, converted once in
# the time block.

@dataclass(slots=True)
class Assignment:
    """Where the nodes sit: x[i, s] for s inside node i's window; cum() fills in the fixed rest."""

    num_stages: int
    windows: list[tuple[int, int]]
    x: dict[tuple[int, int], pulp.LpVariable]

    def cum(self, i: int, s: int):
        """x[i, s] (node i is in stage <= s): a variable, or the 0/1 its window fixes."""
        if s < 0:
            return 0
        if s >= self.num_stages - 1 or s >= self.windows[i][1]:
            return 1
        if s < self.windows[i][0]:
            return 0
        return self.x[i, s]

    def stage_of(self, num_nodes: int) -> list[int]:
        """The stage of every node, read from a solved model."""
        out = []
        for i in range(num_nodes):
            s = 0
            while s < self.num_stages - 1 and not (pulp.value(self.cum(i, s)) or 0) > 0.5:
                s += 1
            out.append(s)
        return out


@dataclass(slots=True)
class ILPModel:
    """The built MILP and the handles the solve and decode steps need."""

    lp: pulp.LpProblem
    assignment: Assignment
    recompute: list
    """Per stage: the rec_s variable (recompute "auto"), or the one allowed bool."""
    step: pulp.LpVariable
    unit: float
    """ms per model time unit."""
    add_path: object = None
    """With "stage_bound": add_path(coeffs) adds the row step >= that path's length (+ the largest
    optimizer step); None otherwise."""

    def start_values(self, stage_of: list[int] | None, recompute: list[bool] | None) -> dict[str, float] | None:
        """A warm start (variable name -> value) from a known plan; None without one."""
        if stage_of is None:
            return None
        values = {var.name: float(1 if stage_of[i] <= s else 0) for (i, s), var in self.assignment.x.items()}
        for s, r in enumerate(recompute or []):
            if not isinstance(self.recompute[s], bool):
                values[self.recompute[s].name] = float(r)
        return values


class _Builder:
    """Adds the ILP's variables and constraints to one LpProblem, one method per family.
    build_model calls them in a fixed order: the solver sees the same rows in the same order
    (ties between optimal plans are broken the same way from run to run)."""

    def __init__(self, prob: ILPProblem, upper_bound: float | None):
        self.prob, self.tb = prob, prob.tables
        self.N, self.S = self.tb.num_nodes, len(prob.stage_device)
        self.M, self.v = prob.num_microbatches, prob.virtual_stages
        self.upper_bound = upper_bound
        self.t_cap = upper_bound / self.M if upper_bound is not None else None
        self.lp = pulp.LpProblem("pipeplan", pulp.LpMinimize)

    def stage_sum(self, values) -> list:
        """Per stage: sum of a per-node value over the stage's nodes (linear in y)."""
        return [pulp.lpSum(float(values[i]) * self.y[i, s] for i in range(self.N)) for s in range(self.S)]

    # [Constraint] Assignment: every node in exactly one stage (x cumulative, monotone in s)
    def assignment(self) -> None:
        N, S, lp = self.N, self.S, self.lp
        win = stage_windows(self.prob, self.t_cap)
        x = {(i, s): _new_var(lp, f"x_{i}_{s}", cat=pulp.LpBinary)
             for i in range(N) for s in range(S - 1) if win[i][0] <= s < win[i][1]}
        self.asg = asg = Assignment(num_stages=S, windows=win, x=x)
        # y[i, s] = 1 iff node i is in stage s (an expression, or a constant where the window fixes it)
        self.y = {(i, s): asg.cum(i, s) - asg.cum(i, s - 1) for i in range(N) for s in range(S)}
        for (i, s), var in x.items():
            if (i, s + 1) in x:
                lp += var <= x[i, s + 1]

    # [Constraint] Precedence: a consumer is never in an earlier stage than its producer
    def precedence(self) -> bool:
        """False when the windows alone break it: no plan beats the cutoff."""
        cum = self.asg.cum
        for t in self.tb.tensors:
            for c in t.consumers:
                for s in range(self.S - 1):
                    a_, b_ = cum(c, s), cum(t.producer, s)
                    if not (isinstance(a_, int) and isinstance(b_, int)):
                        self.lp += a_ <= b_
                    elif a_ > b_:
                        return False
        return True

    # [Constraint] Assignment (continued): every stage holds at least one node (after the precedence
    # rows, where it always was: the row order decides which of tied optima HiGHS returns)
    def nonempty_stages(self) -> None:
        for s in range(self.S):
            self.lp += pulp.lpSum(self.y[i, s] for i in range(self.N)) >= 1

    # [Constraint] Crossing: tensor k crosses boundary b if its producer is in a stage <= b and
    # one of its consumers in a stage > b (a is minimised through the time and memory rows)
    def crossing(self) -> None:
        cum, lp = self.asg.cum, self.lp
        self.cross = cross = {}
        for k, t in enumerate(self.tb.tensors):
            for b in range(self.S - 1):
                terms = [(cum(t.producer, b), cum(c, b)) for c in t.consumers]
                if all(isinstance(p, int) and isinstance(c, int) for p, c in terms):
                    cross[k, b] = max(p - c for p, c in terms)
                    continue
                a = _new_var(lp, f"a_{k}_{b}", 0, 1)
                for p, c in terms:
                    lp += a >= p - c
                cross[k, b] = a
        # bytes sent forward over boundary b: what stage b+1 receives
        self.boundary_bytes = [pulp.lpSum(t.nbytes * cross[k, b] for k, t in enumerate(self.tb.tensors))
                               for b in range(self.S - 1)]

    # [Constraint] Relay: stage s holds tensor k when k crosses both the boundary before s and
    # the one after it (s lies strictly between producer and last consumer)
    def relay(self) -> None:
        self.relayed = relayed = {}
        for k in range(len(self.tb.tensors)):
            for s in range(1, self.S - 1):
                r = _new_var(self.lp, f"r_{k}_{s}", 0, 1)
                self.lp += r >= self.cross[k, s - 1] + self.cross[k, s] - 1
                relayed[k, s] = r

    # [Constraint] Tied copies: a stage holding a user of a tied parameter but not its owner keeps
    # a copy (every user stage does when no node owns it); stage_params counts it
    def tied_copies(self) -> None:
        tb, y = self.tb, self.y
        self.stage_params = []
        for s in range(self.S):
            expr = pulp.lpSum(int(tb.params[i]) * y[i, s] for i in range(self.N))
            for f, sp in enumerate(tb.shared):
                h = _new_var(self.lp, f"h_{f}_{s}", 0, 1)
                for u in sp.users:
                    self.lp += h >= y[u, s] - (y[sp.owner, s] if sp.owner >= 0 else 0)
                expr += sp.size * h
            self.stage_params.append(expr)

    # [Constraint] Memory per device: params, activations (under the stage's recompute choice)
    # and relayed tensors of its stages <= its limit (the reserve is left out of both sides)
    def saved_copies(self) -> list:
        """Per stage: bytes of received tensors one of its layers saves while the profile charged them to a
        layer in an earlier stage (AssignmentCost.saved_copy_bytes): v[k, s] >= y[c, s] - y[f, s] for each
        copy saver c of tensor k, f its first saver."""
        out = [0] * self.S
        for k, t in enumerate(self.tb.tensors):
            if not t.copy_savers:
                continue
            f = t.first_saver
            for s in range(self.S):
                terms = [(self.y[c, s], self.y[f, s]) for c in t.copy_savers]
                if all(isinstance(a, int) and isinstance(b, int) for a, b in terms):
                    out[s] += t.nbytes * max(0, max(a - b for a, b in terms))
                    continue
                v = _new_var(self.lp, f"copy_{k}_{s}", 0, 1)
                for a, b in terms:
                    self.lp += v >= a - b
                out[s] += t.nbytes * v
        return out

    def memory(self) -> None:
        prob, tb, lp, S = self.prob, self.tb, self.lp, self.S
        copies = self.saved_copies()
        act = [a + c for a, c in zip(self.stage_sum(tb.activation), copies)]
        inputs = [tb.model_input_bytes] + [self.boundary_bytes[b] for b in range(S - 1)]
        total_fwd = float(tb.fwd.sum())
        max_input = max([tb.model_input_bytes] + [sum(t.nbytes for t in tb.tensors)])
        self.recompute, self.recompute_fwd, stage_bytes = [], [], []
        # memory rows in KiB (MEMORY_UNIT_BYTES): in bytes HiGHS once called a feasible model infeasible
        # (U-Net3D, 2 x A100 + 2 x L4, Interleaved1F1B: "optimal" at 524.8 ms with a 486.4 ms plan inside)
        unit = 1.0 / MEMORY_UNIT_BYTES
        for s in range(S):
            co = {r: memory_coefficients(in_flight=prob.stage_in_flight[s], config=prob.config,
                                         profile_dtype=tb.dtype, recompute=r,
                                         largest_layer_params=int(tb.params.max(initial=0)))
                  for r in prob.recompute_options}
            act_bytes = {r: (c.per_activation_byte * act[s] + c.per_input_byte * inputs[s]) * unit
                         for r, c in co.items()}
            if len(prob.recompute_options) == 1:
                r0 = prob.recompute_options[0]
                self.recompute.append(r0)
                self.recompute_fwd.append(self.fwd[s] if r0 else 0)
                mact = act_bytes[r0]
            else:
                # recompute "auto": rec_s chooses; recf_s = rec_s * fwd_s, mact_s = the chosen
                # activation bytes. Big-M: F (all forward work) and an upper bound on either
                # option's activation bytes (all activations, the largest input), plus 1.
                r = _new_var(lp, f"rec_{s}", cat=pulp.LpBinary)
                z = _new_var(lp, f"recf_{s}", 0)
                lp += z >= self.fwd[s] - total_fwd * (1 - r)
                mact = _new_var(lp, f"mact_{s}", 0)
                copy_total = sum(t.nbytes for t in tb.tensors if t.copy_savers)
                big = (max(c.per_activation_byte * (float(tb.activation.sum()) + copy_total)
                           + c.per_input_byte * max_input for c in co.values()) + 1) * unit
                lp += mact >= act_bytes[False] - big * r
                lp += mact >= act_bytes[True] - big * (1 - r)
                self.recompute.append(r)
                self.recompute_fwd.append(z)
            # per_param and per_relay_byte do not depend on the recompute choice
            rel = co[prob.recompute_options[0]].per_relay_byte
            per_param = co[prob.recompute_options[0]].per_param
            # the constant less the reserve: FSDP's gather buffer (0 otherwise; the reserve is left out)
            buffer = co[prob.recompute_options[0]].constant - prob.config.reserve_bytes
            relayed = pulp.lpSum(t.nbytes * self.relayed[k, s] for k, t in enumerate(tb.tensors)
                                 if (k, s) in self.relayed)
            # the stage's own outputs, kept until their backward unless its layers saved them
            # (AssignmentCost.held_output_bytes; none after the last)
            outputs = pulp.lpSum(t.nbytes * (self.cross[k, s] - self.relayed.get((k, s), 0))
                                 for k, t in enumerate(tb.tensors) if not t.saved_by_producer) if s < S - 1 else 0
            per_out = co[prob.recompute_options[0]].per_output_byte
            stage_bytes.append(mact + (buffer + per_param * self.stage_params[s] + rel * relayed + per_out * outputs)
                               * unit)
        for d, limit in prob.device_limit.items():
            lp += pulp.lpSum(stage_bytes[s] for s in range(S) if prob.stage_device[s] == d) <= limit * unit

    # [Constraint] Time: per device the sum of its stages' times <= Dmax; step >= each piece of the
    # closed form (cost.predicted_step_time_ms). The one place the time formula is written.
    def step_time(self) -> None:
        prob, tb, lp, S, M, v = self.prob, self.tb, self.lp, self.S, self.M, self.v
        cross = self.cross
        # comm after stage b: forward tensors and gradients, one latency per crossing tensor (each
        # is its own p2p op, as cost.assignment_bytes counts them)
        grad_bytes = [pulp.lpSum(t.nbytes * cross[k, b] for k, t in enumerate(tb.tensors) if t.requires_grad)
                      for b in range(S - 1)]
        fwd_n = [pulp.lpSum(cross[k, b] for k in range(len(tb.tensors))) for b in range(S - 1)]
        grad_n = [pulp.lpSum(cross[k, b] for k, t in enumerate(tb.tensors) if t.requires_grad)
                  for b in range(S - 1)]
        comm = []
        for b in range(S - 1):
            lat = prob.link_latency_ms[b]
            comm.append(lat * fwd_n[b] + prob.link_ms_per_byte[b] * self.boundary_bytes[b]
                        + lat * grad_n[b] + prob.link_ms_per_byte[b] * grad_bytes[b])
        comm.append(0)
        bwd, bwd_weight = self.stage_sum(tb.bwd), self.stage_sum(tb.bwd_weight)
        # Times enter the model in units of `unit` ms, chosen so that the objective is about 1000: HiGHS
        # stops at an absolute gap of 1e-6 and works to feasibility tolerances of ~1e-7, which for a
        # 0.2 ms step would be a 5e-6 relative gap, not the 1e-9 asked for.
        self.unit = unit = _time_unit(prob, self.upper_bound)
        # T and W per stage from the cost model's linear coefficients (cost.StageTimeCoefficients):
        # T = (fwd + bwd + recomputed fwd) / speed + comm + 2 x the per-action overhead
        coeffs = [stage_time_coefficients(prob.stage_speed[s], prob.stage_overhead[s] if prob.stage_overhead else 0.0,
                                          prob.schedule, s == S - 1) for s in range(S)]
        T = [(self.fwd[s] + bwd[s] + self.recompute_fwd[s]) * (1.0 / (coeffs[s].speed * unit))
             + (comm[s] + coeffs[s].constant_ms) * (1.0 / unit) for s in range(S)]
        W = [bwd_weight[s] * (1.0 / (coeffs[s].speed * unit)) for s in range(S)]
        t_cap, ub = self.t_cap, self.upper_bound
        dmax = _new_var(lp, "Dmax", 0, t_cap / unit * (1 + 1e-7) if t_cap else None)
        self.step = step = _new_var(lp, "step", 0, ub / unit * (1 + 1e-7) if ub else None)
        for d in set(prob.stage_device):
            lp += pulp.lpSum(T[s] for s in range(S) if prob.stage_device[s] == d) <= dmax
        # the closed form's pieces: step >= a * Dmax + b * sum_s c_s, c_s = T_s - credit_s * W_s
        fill = pulp.lpSum(T) - pulp.lpSum(coeffs[s].weight_credit * W[s] for s in range(S)
                                          if coeffs[s].weight_credit)
        if prob.objective == "stage_bound":
            self._stage_bound(coeffs, bwd, unit)
            return
        for a, b in closed_form_pieces(M, v):
            lp += step >= (a * dmax + b * fill if b else a * dmax)
        lp += step  # the objective

    def _stage_bound(self, coeffs, bwd, unit: float) -> None:
        """step >= sum_{t<d} alpha_t + M sum_{s on d} beta_s + opt_d for every device d, its first stage
        d (planner.solvers.exact.device_bound: alpha_t = f_t + b_t + 2 c_t, or f_t + c_t with a split
        backward; beta_s = f_s + b_s; c_t the forward send, which the simulator charges both ways)."""
        prob, tb, lp, S, M = self.prob, self.tb, self.lp, self.S, self.M
        fwd_n = [pulp.lpSum(self.cross[k, b] for k in range(len(tb.tensors))) for b in range(S - 1)]
        cf = [(prob.link_latency_ms[b] * fwd_n[b] + prob.link_ms_per_byte[b] * self.boundary_bytes[b]) * (1.0 / unit)
              for b in range(S - 1)] + [0]
        f = [self.fwd[s] * (1.0 / (coeffs[s].speed * unit)) + coeffs[s].action_overhead_ms / unit for s in range(S)]
        b = [(bwd[s] + self.recompute_fwd[s]) * (1.0 / (coeffs[s].speed * unit)) + coeffs[s].action_overhead_ms / unit
             for s in range(S)]
        alpha = [f[t] + cf[t] if prob.split_backward else f[t] + b[t] + 2 * cf[t] for t in range(S)]
        opt = self.stage_sum(tb.optimizer) if prob.optimizer_factor > 0 else [0] * S
        step = self.step
        for d in sorted(set(prob.stage_device)):
            own = [s for s in range(S) if prob.stage_device[s] == d]
            first = own[0]
            lp += step >= (pulp.lpSum(alpha[t] for t in range(first))
                           + M * pulp.lpSum(f[s] + b[s] for s in own)
                           + pulp.lpSum(opt[s] * (prob.optimizer_factor / (coeffs[s].speed * unit)) for s in own
                                        if prob.optimizer_factor > 0))
        # the order bound (exact.device_bound's terms from exact.order_terms), per rank of the schedule
        from planner.pipeline.schedules import stage_to_device
        from planner.solvers.exact import order_terms

        P = len(set(prob.stage_device))
        rank_of = stage_to_device(P, prob.schedule, prob.virtual_stages)
        w = self.stage_sum(tb.bwd_weight)
        W = [w[s] * (1.0 / (coeffs[s].speed * unit)) if prob.split_backward else 0 for s in range(S)]
        B = [b[s] - W[s] if prob.split_backward else b[s] for s in range(S)]
        total_f = pulp.lpSum(f)
        for r, (first, last, after) in enumerate(order_terms(prob.schedule, P, M, prob.virtual_stages)):
            own = [s for s in range(S) if rank_of[s] == r]
            lp += step >= (total_f + pulp.lpSum(B[first + 1:]) + pulp.lpSum(B[:last])
                           + pulp.lpSum(M * B[s] + after.get(s, 0) * f[s] for s in own))
        # the path bounds (exact.py, "path bounds"): step >= a path of the event graph + the largest
        # optimizer step; sends only where the schedule's placement puts the two stages on two ranks
        link = [cf[t] if rank_of[t] != rank_of[t + 1] else 0 for t in range(S - 1)]
        optmax = 0
        if prob.optimizer_factor > 0:
            optmax = _new_var(lp, "optmax", 0)
            for d in sorted(set(prob.stage_device)):
                lp += optmax >= pulp.lpSum(opt[s] * (prob.optimizer_factor / (coeffs[s].speed * unit))
                                           for s in range(S) if prob.stage_device[s] == d)
        count = [0]

        def add_path(path) -> None:
            nF, nB, nW, nL = path
            expr = pulp.lpSum([n * f[s] for s, n in enumerate(nF) if n] + [n * B[s] for s, n in enumerate(nB) if n]
                              + [n * W[s] for s, n in enumerate(nW) if n] + [n * link[t] for t, n in enumerate(nL) if n])
            lp.addConstraint(step >= expr + optmax, f"path_{count[0]}")
            count[0] += 1

        self.add_path = add_path
        for path in prob.paths or []:
            add_path(path)
        lp += step

    def build(self) -> ILPModel | None:
        self.assignment()
        if not self.precedence():
            return None
        self.nonempty_stages()
        self.crossing()
        self.relay()
        self.fwd = self.stage_sum(self.tb.fwd)  # reference forward ms per stage: recompute and time
        self.tied_copies()
        self.memory()
        self.step_time()
        return ILPModel(lp=self.lp, assignment=self.asg, recompute=self.recompute, step=self.step, unit=self.unit,
                        add_path=getattr(self, "add_path", None))


def build_model(prob: ILPProblem, upper_bound: float | None = None) -> ILPModel | None:
    """The MILP of prob; upper_bound (ms, a known plan's step) is the cutoff. None when the cutoff
    alone rules out every plan (the stage windows contradict precedence)."""
    return _Builder(prob, upper_bound).build()


# -- solve and decode --------------------------------------------------------------------

def _run(model: ILPModel, backend: str, time_limit_s: float, start_values: dict[str, float] | None) -> None:
    """Solve in place: HiGHS (warm start through Highs.setSolution) or CBC (PuLP's warmStart)."""
    lp = model.lp
    if backend == "cbc":
        if start_values:
            for var in lp.variables():
                if var.name in start_values:
                    var.setInitialValue(start_values[var.name])
        solver = _cbc_solver(time_limit_s, bool(start_values))
    else:
        _silence_highs_banner()
        solver = _HighsWarm(msg=False, timeLimit=float(time_limit_s), gapRel=1e-9, threads=1)
        solver.start = start_values
    lp.solve(solver)


def _highs_dual_bound(model: ILPModel, backend: str) -> float | None:
    """HiGHS's proven lower bound on the objective (model units); None on CBC or an older highspy."""
    if backend == "cbc":
        return None
    try:
        return float(model.lp.solverModel.getInfo().mip_dual_bound)
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return None


def _status(model: ILPModel, backend: str) -> str:
    """What the solver says, before any value is read: "infeasible", "timeout" (no incumbent),
    "optimal" (a proof) or "feasible" (an incumbent without one)."""
    lp = model.lp
    # pulp reports a run stopped by the time limit with an incumbent as LpStatusOptimal (HiGHS
    # kTimeLimit, CBC "Stopped on time - objective value ..."); only sol_status tells them apart:
    # LpSolutionOptimal is a proof, LpSolutionIntegerFeasible an incumbent without one.
    if lp.status == pulp.LpStatusInfeasible or lp.sol_status == pulp.LpSolutionInfeasible:
        return "infeasible"
    has_solution = lp.sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible)
    if has_solution and backend != "cbc" and lp.sol_status != pulp.LpSolutionOptimal:
        # pulp maps kTimeLimit to IntegerFeasible even when HiGHS holds no incumbent at all
        has_solution = lp.solverModel.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible
    if not has_solution or model.step.varValue is None:
        return "timeout"
    return "optimal" if lp.sol_status == pulp.LpSolutionOptimal else "feasible"


def _decode(model: ILPModel, backend: str, num_nodes: int, seconds: float) -> ILPResult:
    status, unit = _status(model, backend), model.unit
    if status == "infeasible":
        return ILPResult(None, None, "infeasible", None, None, seconds)
    if status == "timeout":
        # no incumbent (none better than the cutoff, when one was given); HiGHS may still have
        # proven a bound, which holds for any plan better than the cutoff
        b = _highs_dual_bound(model, backend)
        bound = b * unit if b is not None and math.isfinite(b) and b > 0 else None
        return ILPResult(None, None, "timeout", None, bound, seconds)
    stage_of = model.assignment.stage_of(num_nodes)
    rec = [bool(r) if isinstance(r, bool) else (r.varValue or 0) > 0.5 for r in model.recompute]
    objective = float(pulp.value(model.lp.objective)) * unit
    optimal = status == "optimal"
    b = _highs_dual_bound(model, backend)
    bound = b * unit if b is not None else None
    if bound is not None and bound >= objective * (1 - 1e-9):
        optimal = True  # the time limit struck after the search had closed the gap
    if optimal:
        bound = objective if bound is None else max(min(bound, objective), 0.0)
    return ILPResult(stage_of, rec, "optimal" if optimal else "feasible", objective, bound, seconds)


def solve_ilp(prob: ILPProblem, *, backend: str = "highs", time_limit_s: float = 10.0,
              warm_stage_of: list[int] | None = None, warm_recompute: list[bool] | None = None,
              upper_bound: float | None = None) -> ILPResult:
    """The best assignment of prob's nodes to stages (and per-stage recompute) by the closed-form
    step time, under per-device memory limits. upper_bound: a known plan's step (ms), the cutoff;
    warm_stage_of/warm_recompute: a known plan to start from. backend: "highs" or "cbc"."""
    start = time.perf_counter()
    model = build_model(prob, upper_bound)
    if model is None:
        return ILPResult(None, None, "infeasible", None, None, time.perf_counter() - start)
    _run(model, backend, time_limit_s, model.start_values(warm_stage_of, warm_recompute))
    return _decode(model, backend, prob.tables.num_nodes, time.perf_counter() - start)


def enumerate_by_bound(prob: ILPProblem, score, *, backend: str = "highs", time_limit_s: float = 10.0,
                       incumbent_ms: float = math.inf, max_rounds: int = 60, path_of=None):
    """The exact finish off a chain (docs/ilp.md, "What is proven"): solve prob (objective
    "stage_bound") for the plan with the least bound, score it with the simulator (score(stage_of,
    recompute) -> ms, None if it does not fit), forbid that exact assignment (a no-good cut on the x
    and rec variables) and solve again, each time with the cutoff step <= the best simulated step so
    far, until nothing below it is left (proven: the best simulated step is optimal), or the time or
    the rounds run out (max_rounds, not the clock, is what normally stops it: the same plan on every
    machine). Every assignment not yet scored has a bound >= the last optimum, so
    min(best, last optimum) bounds the simulated step of every plan in the ILP's space.
    path_of(stage_of, recompute) -> a critical path (exact.PathCoeffs) of the plan just scored, or None:
    its row is added too (valid for every plan: exact.py, "path bounds"), so the bound of the plans
    that share its bottleneck rises to what the simulator shows.

    Returns (stage_of, recompute, ms) of the best scored plan or None, the lower bound (-inf when the
    ILP proved nothing), and whether it is proven."""
    start = time.perf_counter()
    model = build_model(prob, None)
    if model is None:
        return None, incumbent_ms, True
    best, best_ms, lower = None, incumbent_ms, -math.inf
    for round_ in range(max_rounds):
        left = time_limit_s - (time.perf_counter() - start)
        if left <= 0.05:
            return best, min(lower, best_ms), False
        if math.isfinite(best_ms):
            model.step.upBound = best_ms / model.unit * (1 - 1e-9)
        _run(model, backend, left, None)
        res = _decode(model, backend, prob.tables.num_nodes, 0.0)
        if res.status == "infeasible":  # nothing left below the best simulated step
            return best, best_ms, True
        if res.status != "optimal":  # stopped: only the dual bound (if any) holds for the rest
            bound = res.bound if res.bound is not None else -math.inf
            return best, min(max(lower, bound), best_ms), False
        lower = max(lower, res.objective)
        if lower >= best_ms * (1 - 1e-9):
            return best, best_ms, True
        ms = score(res.stage_of, res.recompute)
        if ms is not None and ms < best_ms:
            best, best_ms = (res.stage_of, res.recompute, ms), ms
        path = path_of(res.stage_of, res.recompute) if path_of is not None and ms is not None else None
        if path is not None and model.add_path is not None:
            model.add_path(path)
        # no-good: at least one x or rec variable must differ from this assignment
        flips = []
        for (i, s), var in model.assignment.x.items():
            flips.append(1 - var if res.stage_of[i] <= s else var)
        for s, r in enumerate(model.recompute):
            if not isinstance(r, bool):
                flips.append(1 - r if res.recompute[s] else r)
        if not flips:  # the windows fix everything: this was the only plan
            return best, best_ms, True
        model.lp += pulp.lpSum(flips) >= 1, f"nogood_{round_}"
    return best, min(lower, best_ms), False
