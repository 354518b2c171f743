"""The ILP (planner/solvers/ilp.py), one constraint family at a time.

Each test builds a tiny ILPProblem through planner.solvers.search.ilp_problem and picks numbers so that the
family under test decides the answer; it is named by regime ("binding": the family moves the
optimum, "slack": it does not, "infeasible": nothing fits). Expected plans and step times are
worked out by hand in the comments (node work = fwd + bwd = 3 * fwd; 1F1B, v = 1 and no
zero-bubble credit: step = (M - 1) * max T + sum T) and checked against brute force over every
assignment of the nodes to stages, scored by the cost model's rules (`score`, below).
"""

from __future__ import annotations

import itertools
import warnings

import pytest

from planner.contracts.cluster import Cluster, Device, Link
from planner.contracts.config import TrainConfig
from planner.costmodel.cost import assignment_bytes, build_tables, stage_devices
from planner.costmodel.memory import stage_memory_bytes
from planner.solvers.ilp import ILPProblem, solve_ilp
from planner.solvers.search import ilp_problem
from profiler.synthetic import chain_profile, dag_profile

GiB = 1 << 30
NO_COMM = Link(bandwidth_bytes_per_s=1e12, latency_s=0.0)
"""With 0-byte edges: boundaries cost nothing, so step times are whole numbers of ms."""
SLOW = Link(bandwidth_bytes_per_s=1e9, latency_s=0.0)
"""1e-6 ms per byte: 500 kB cost 0.5 ms each way."""


def problem(profile, *, P: int = 2, M: int = 4, schedule: str = "1F1B", virtual_stages: int = 1,
            recompute: str = "off", memory: int | list[int] = GiB, speed: list[float] | None = None, overhead: float = 0.0,
            link: Link = NO_COMM) -> ILPProblem:
    mem = memory if isinstance(memory, list) else [memory] * P
    devices = [Device(name=f"d{d}", memory_bytes=mem[d], speed=(speed or [1.0] * P)[d],
                      action_overhead_ms=overhead) for d in range(P)]
    cluster = Cluster(devices=devices, intra_node=link, inter_node=link)
    config = TrainConfig(schedule=schedule, num_microbatches=M, virtual_stages=virtual_stages, recompute=recompute)
    return ilp_problem(profile, build_tables(profile), cluster, config, stage_devices(P, config))


def solve(prob: ILPProblem, **kwargs):
    res = solve_ilp(prob, time_limit_s=60, **kwargs)
    assert res.status in ("optimal", "infeasible"), res
    return res


# -- the reference: the cost model's rules on one assignment, and brute force over all of them ------

KAPPA = {"ZBH1": 2.0, "ZBV": 2.0}


def score(prob: ILPProblem, stage_of: list[int], rec: tuple[bool, ...]) -> float | None:
    """The closed-form step time (ms) of an assignment, None if a device's memory does not fit."""
    tb, S = prob.tables, len(prob.stage_device)
    ab = assignment_bytes(tb, stage_of, S)
    fwd = [sum(tb.fwd[i] for i in ns) for ns in ab.stage_nodes]
    bwd = [sum(tb.bwd[i] for i in ns) for ns in ab.stage_nodes]
    wgt = [sum(tb.bwd_weight[i] for i in ns) for ns in ab.stage_nodes]
    overhead = prob.stage_overhead or [0.0] * S
    T, W = [], []
    for s in range(S):
        comm = 0.0
        if s < S - 1:
            lat, per_byte = prob.link_latency_ms[s], prob.link_ms_per_byte[s]
            comm = (lat * ab.fwd_tensors[s] + per_byte * ab.fwd_bytes[s]
                    + lat * ab.grad_tensors[s] + per_byte * ab.grad_bytes[s])
        sp = prob.stage_speed[s]
        T.append((fwd[s] + bwd[s] + (fwd[s] if rec[s] else 0.0)) / sp + 2 * overhead[s] + comm)
        W.append(wgt[s] / sp)
    for d, limit in prob.device_limit.items():
        used = 0
        for s in range(S):
            if prob.stage_device[s] == d:
                m = stage_memory_bytes(param_count=ab.param_count[s],
                                       activation_bytes=float(sum(tb.activation[i] for i in ab.stage_nodes[s]))
                                       + ab.saved_copy_bytes[s],
                                       input_bytes=ab.input_bytes[s], relay_bytes=ab.relay_bytes[s],
                                       in_flight=prob.stage_in_flight[s], config=prob.config,
                                       profile_dtype=tb.dtype, recompute=rec[s],
                                       output_bytes=ab.held_output_bytes[s])
                used += m.total - m.reserve
        if used > limit:
            return None
    M, v = prob.num_microbatches, prob.virtual_stages
    D = max(sum(T[s] for s in range(S) if prob.stage_device[s] == d) for d in set(prob.stage_device))
    fill = sum(T) - KAPPA.get(prob.schedule, 0.0) * sum(W[: S - 1])
    return max(M * D, (M - 1 / v) * D + fill / v)


def brute_force(prob: ILPProblem, *, precedence: bool = True, nonempty: bool = True):
    """(step, stage_of, recompute) of the best assignment, None if none fits; every stage_of in
    range(S)^N and every recompute choice the problem allows."""
    tb, S = prob.tables, len(prob.stage_device)
    best = None
    for stage_of in itertools.product(range(S), repeat=tb.num_nodes):
        if nonempty and len(set(stage_of)) < S:
            continue
        if precedence and any(stage_of[c] < stage_of[t.producer] for t in tb.tensors for c in t.consumers):
            continue
        for rec in itertools.product(prob.recompute_options, repeat=S):
            step = score(prob, list(stage_of), rec)
            if step is not None and (best is None or step < best[0] - 1e-12):
                best = (step, list(stage_of), list(rec))
    return best


def assert_solves_to(prob: ILPProblem, stage_of: list[int], step: float, recompute: list[bool] | None = None):
    """The ILP returns exactly this plan and step, and brute force agrees (the optimum is unique)."""
    res = solve(prob)
    assert res.status == "optimal"
    assert res.stage_of == stage_of
    assert res.objective == pytest.approx(step, rel=1e-9)
    assert res.bound == pytest.approx(step, rel=1e-9)
    if recompute is not None:
        assert res.recompute == recompute
    best = brute_force(prob)
    assert best[1] == stage_of and best[0] == pytest.approx(step, rel=1e-12)
    if recompute is not None:
        assert best[2] == recompute
    return res


# -- assignment: every node in one stage, every stage non-empty ---------------------------------------

def test_assignment_binding_every_stage_holds_a_node():
    # one 1 GB edge on a 1 GB/s link: splitting the two nodes costs 1000 ms each way, so both in one
    # stage (T = 6, step = 3*6 + 6 = 24) would be best, but stage 1 may not be empty:
    # T = [3 + 2000, 3], step = 3*2003 + 2006 = 8015 (4 GiB: stage 0 keeps its 1 GB output for 2 micro-batches)
    prob = problem(chain_profile([1, 1], edge_bytes=[10**9]), link=SLOW, memory=4 * GiB)
    assert score(prob, [0, 0], (False, False)) == 24.0
    assert brute_force(prob, nonempty=False)[0] == 24.0
    assert_solves_to(prob, [0, 1], 8015.0)


def test_assignment_infeasible_more_stages_than_nodes():
    res = solve(problem(chain_profile([1, 1], edge_bytes=[0]), P=3))
    assert res.status == "infeasible" and res.stage_of is None and res.objective is None


# -- precedence: a consumer never sits in an earlier stage than its producer --------------------------

def test_precedence_binding_on_a_diamond():
    # n0 -> n1 -> n3 and n0 -> n2 -> n3, work [3, 12, 3, 6]. Ignoring precedence, {n1} | {n0, n2, n3}
    # balances at T = [12, 12]: step 3*12 + 24 = 60. Respecting it (n0 first, n3 last):
    # {n0, n1} | {n2, n3}: T = [15, 9], step 3*15 + 24 = 69; {n0, n2} | {n1, n3}: 3*18 + 24 = 78
    prof = dag_profile([1, 4, 1, 2], [(0, 1, 0), (0, 2, 0), (1, 3, 0), (2, 3, 0)])
    prob = problem(prof)
    assert brute_force(prob, precedence=False)[0] == 60.0
    assert_solves_to(prob, [0, 0, 1, 1], 69.0)


# -- crossing: a tensor crosses every boundary between its producer and its last consumer -------------

def skip_chain(skip_bytes: int):
    # n0 -> n1 -> n2 -> n3 (0-byte edges) and a skip n0 -> n2 of skip_bytes
    return dag_profile([1, 1, 1, 1], [(0, 1, 0), (1, 2, 0), (2, 3, 0), (0, 2, skip_bytes)])


def test_crossing_slack_cheap_skip_keeps_the_balanced_cut():
    # skip of 500 kB: 0.5 ms each way. 2|2 crosses it: T = [6 + 1, 6], step 3*7 + 13 = 34;
    # 3|1 does not: T = [9, 3], step 3*9 + 12 = 39
    assert_solves_to(problem(skip_chain(500_000), link=SLOW), [0, 0, 1, 1], 34.0)


def test_crossing_binding_costly_skip_moves_the_cut_past_its_consumer():
    # skip of 2 MB: 2 ms each way. 2|2: T = [10, 6], 3*10 + 16 = 46; 1|3: T = [7, 9], 3*9 + 16 = 43;
    # 3|1 keeps the skip inside stage 0: 39
    assert_solves_to(problem(skip_chain(2_000_000), link=SLOW), [0, 0, 0, 1], 39.0)


# -- relay: a stage strictly between producer and last consumer holds the tensor ----------------------

def relay_problem(memory: int):
    # n0 .. n4 with work [9, 9, 3, 3, 3] and a 1000-byte skip n0 -> n2 on 3 devices (1F1B in flight
    # [3, 2, 1]); no parameters or activations, so a device only holds relayed bytes.
    # 1|1|3 balances (T = 9 each) but stage 1 relays the skip: 2 * 1000 bytes on device 1. Device 0
    # has room for stage 0's own outputs (the skip, 3 in flight).
    prof = dag_profile([3, 3, 1, 1, 1], [(0, 1, 0), (1, 2, 0), (2, 3, 0), (3, 4, 0), (0, 2, 1000)])
    prob = problem(prof, P=3, memory=[10**6, memory, memory])
    assert prob.stage_in_flight == [3, 2, 1]
    return prob


# the skip crosses boundary b: 2 * 1000 bytes * 1e-9 ms/byte = 2e-6 ms on stage b's time
SKIP_MS = 2 * 1000 * 1e-9


def test_relay_slack():
    # 1|1|3: T = [9 + SKIP, 9 + SKIP, 9], step 3*(9 + SKIP) + 27 + 2*SKIP
    assert_solves_to(relay_problem(GiB), [0, 1, 2, 2, 2], 54.0 + 5 * SKIP_MS)


def test_relay_binding_no_stage_may_relay():
    # 1999 bytes per device: 1|1|3 needs 2000 on device 1. Next best 1|2|2 (the skip's consumer n2
    # joins stage 1): T = [9 + SKIP, 12, 6], step 3*12 + 27 + SKIP
    prob = relay_problem(1999)
    assert score(prob, [0, 1, 2, 2, 2], (False,) * 3) is None
    assert_solves_to(prob, [0, 1, 1, 2, 2], 63.0 + SKIP_MS)


# -- tied copies: a stage holding a user of a tied parameter but not its owner keeps a copy ----------

def tied_problem(memory: list[int]):
    # n1 reads layers.0.weight, owned by n0 (1000 parameters, 16 B each with fp32 AdamW); work
    # [9, 3, 3, 3]. 1|3 balances (T = [9, 9], step 45) but device 1 then holds a copy of the
    # 16000 bytes; 2|2 keeps n1 with the owner: T = [12, 6], step 3*12 + 18 = 54.
    prof = chain_profile([3, 1, 1, 1], params=[1000, 0, 0, 0], edge_bytes=[0, 0, 0],
                         shared={1: ["layers.0.weight"]})
    prob = problem(prof, memory=memory)
    (tied,) = prob.tables.shared
    assert (tied.owner, tied.users, tied.size) == (0, [1], 1000)
    return prob


def test_tied_copies_slack():
    assert_solves_to(tied_problem([GiB, GiB]), [0, 1, 1, 1], 45.0)


def test_tied_copies_binding_user_stays_with_its_owner():
    prob = tied_problem([16000, 15999])
    assert score(prob, [0, 1, 1, 1], (False, False)) is None
    assert_solves_to(prob, [0, 0, 1, 1], 54.0)


# -- memory per device, and the recompute choice --------------------------------------------------------

A = 10**6
"""Activation bytes of each node of mem_chain."""


def mem_chain():
    # n0 .. n3, work 3 each, activations A each, no parameters; 1F1B in flight [2, 1]:
    # without recompute stage s holds in_flight_s * its activations
    return chain_profile([1, 1, 1, 1], acts=[A] * 4, edge_bytes=[0, 0, 0])


def test_memory_slack():
    # 2|2: T = [6, 6], step 3*6 + 12 = 30 (memory [4A, 2A])
    assert_solves_to(problem(mem_chain()), [0, 0, 1, 1], 30.0)


def test_memory_binding():
    # 3A per device: 2|2 needs 4A on device 0; 1|3 fits exactly ([2A, 3A]): T = [3, 9], 3*9 + 12 = 39
    prob = problem(mem_chain(), memory=3 * A)
    assert score(prob, [0, 0, 1, 1], (False, False)) is None
    assert_solves_to(prob, [0, 1, 1, 1], 39.0)


def test_memory_infeasible_too_tight():
    # stage 0 holds at least one node: 2A > 2A - 1
    prob = problem(mem_chain(), memory=2 * A - 1)
    assert brute_force(prob) is None
    assert solve(prob).status == "infeasible"


def test_recompute_slack_not_chosen():
    assert_solves_to(problem(mem_chain(), recompute="auto"), [0, 0, 1, 1], 30.0, [False, False])


def test_recompute_binding_chosen_only_where_memory_binds():
    # 3A per device. Recomputing stage 0 of 2|2 keeps one micro-batch's activations (2A) plus its
    # input per micro-batch in flight (2 * 1024 model input bytes): 2A + 2048 fits, and costs the
    # stage's forward again: T = [6 + 2, 6], step 3*8 + 14 = 38, better than 1|3 without it (39).
    # Stage 1 (2A) fits as it is and is not recomputed.
    prob = problem(mem_chain(), recompute="auto", memory=3 * A)
    assert_solves_to(prob, [0, 0, 1, 1], 38.0, [True, False])


def test_recompute_infeasible_too_tight():
    # recomputing, stage 0 still needs one node's activations and its 2 inputs: A + 2048 > A + 2047
    prob = problem(mem_chain(), recompute="auto", memory=A + 2047)
    assert brute_force(prob) is None
    assert solve(prob).status == "infeasible"


# -- time: per device sum of stage times <= Dmax, step >= each closed-form piece ----------------------

def test_time_fill_drain_piece_binding_with_speed_overhead_and_link():
    # two nodes, two stages (forced). Stage 0: speed 1, fwd 2 + bwd 4, overhead 0.5 twice, a 1 MB
    # edge on a link of 1e-6 ms/byte and 0.01 ms latency each way: T0 = 6 + 1 + 2*(0.01 + 1) = 9.02.
    # Stage 1: speed 2, (4 + 8)/2 + 1 = 7. step = max(4*9.02, 3*9.02 + 16.02) = 43.08
    prob = problem(chain_profile([2, 4], edge_bytes=[10**6]), speed=[1.0, 2.0], overhead=0.5,
                   link=Link(bandwidth_bytes_per_s=1e9, latency_s=1e-5))
    assert_solves_to(prob, [0, 1], 3 * 9.02 + 16.02)


def test_time_steady_state_piece_binding_zero_bubble():
    # ZBH1, two nodes with parameters (W = bwd / 2 = fwd): T = [9, 3], W0 = 3. The fill/drain piece
    # 3*9 + (12 - 2*3) = 33 is below M * max T = 36: the busiest stage never idles
    prob = problem(chain_profile([3, 1], params=[10, 10], edge_bytes=[0]), schedule="ZBH1")
    assert_solves_to(prob, [0, 1], 36.0)


def test_time_interleaved_device_sums_its_stages():
    # Interleaved1F1B, v = 2 on 2 devices: stage s on device s % 2. T = [3, 6, 9, 12];
    # D = [3 + 9, 6 + 12] = [12, 18]; step = max(4*18, 3.5*18 + 30/2) = 78
    prob = problem(chain_profile([1, 2, 3, 4], edge_bytes=[0, 0, 0]), schedule="Interleaved1F1B", virtual_stages=2)
    assert prob.stage_device == [0, 1, 0, 1]
    assert_solves_to(prob, [0, 1, 2, 3], 78.0)


def test_time_zbv_v_placement_and_weight_credit():
    # ZBV: stages 0 and 3 on device 0, 1 and 2 on device 1. T = [3, 6, 9, 12], W = fwd = [1, 2, 3, 4];
    # D = [15, 15]; fill = 30 - 2*(1 + 2 + 3) = 18; step = max(4*15, 3.5*15 + 18/2) = 61.5
    prob = problem(chain_profile([1, 2, 3, 4], params=[10] * 4, edge_bytes=[0, 0, 0]), schedule="ZBV")
    assert prob.stage_device == [0, 1, 1, 0]
    assert_solves_to(prob, [0, 1, 2, 3], 61.5)


# -- the solve step: cutoff, warm start, CBC ------------------------------------------------------------

def test_cutoff_at_the_optimum_is_optimal_below_it_infeasible():
    prob = problem(skip_chain(2_000_000), link=SLOW)
    assert solve(prob, upper_bound=39.0).stage_of == [0, 0, 0, 1]
    assert solve(prob, upper_bound=38.0).status == "infeasible"


def test_warm_start_from_a_worse_plan_reaches_the_optimum():
    prob = problem(mem_chain(), recompute="auto", memory=3 * A)
    res = solve(prob, warm_stage_of=[0, 1, 1, 1], warm_recompute=[False, False])
    assert (res.stage_of, res.recompute, res.objective) == ([0, 0, 1, 1], [True, False], pytest.approx(38.0))


def test_cbc_agrees_and_warns_nothing():
    prob = problem(mem_chain(), recompute="auto", memory=3 * A)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = solve(prob, backend="cbc", warm_stage_of=[0, 1, 1, 1])
    assert (res.stage_of, res.recompute, res.objective) == ([0, 0, 1, 1], [True, False], pytest.approx(38.0))
    assert not [w for w in caught if issubclass(w.category, DeprecationWarning)]


# -- all families together: brute force on small DAGs ------------------------------------------------------

def small_dag(case: str) -> ILPProblem:
    if case == "skip-relay":
        # two skips (3 MB n0 -> n4, 1 MB n1 -> n5) on a 6-node chain, 3 MB on devices 1 and 2 (device 0
        # holds stage 0's outputs, the skips among them), recompute auto: memory binds (101 ms; 92 with
        # room), the optimum relays nothing
        prof = dag_profile([1, 2, 1, 3, 1, 2], [(0, 1, 10**5), (1, 2, 10**5), (2, 3, 10**5), (3, 4, 10**5),
                                                (4, 5, 10**5), (0, 4, 3 * 10**6), (1, 5, 10**6)],
                           acts=[2 * 10**5] * 6)
        return problem(prof, P=3, recompute="auto", memory=[10**8, 3 * 10**6, 3 * 10**6], link=SLOW)
    if case == "tied-recompute":
        # the last node reads the first one's weight; memory binds (67 ms; 52 with room) and the
        # optimum recomputes stages 0 and 1 (devices 0 and 1 also keep their 10**5-byte outputs x in flight)
        prof = chain_profile([2, 1, 1, 2, 1, 1], params=[5000, 100, 100, 100, 100, 0], acts=[3 * 10**5] * 6,
                             edge_bytes=[10**5] * 5, shared={5: ["layers.0.weight"]})
        return problem(prof, P=3, recompute="auto", memory=[13 * 10**5, 12 * 10**5, 8 * 10**5], link=SLOW)
    if case == "saved-copies":
        # n0's 2 MB output goes to n1 and (a skip) to n4; n0 saves it (a ReLU), n1 and n4 save their
        # copies too; n2 -> n3 is saved by both ends. A stage holding n4 without n0 holds its own copy, and a
        # stage sending n0's output keeps nothing extra for it (cost.AssignmentCost): memory binds (87 ms,
        # [0, 0, 1, 1, 2, 2]; without the facts the optimum would be [0, 0, 1, 1, 1, 2] at 80 ms)
        prof = dag_profile([1, 2, 1, 3, 1, 2], [(0, 1, 2 * 10**6), (1, 2, 10**5), (2, 3, 10**6), (3, 4, 10**5),
                                                (4, 5, 10**5), (0, 4, 2 * 10**6)], acts=[2 * 10**5] * 6)
        for e in prof.edges:
            e.saved_by_src = e.src in ("n0", "n2")
            e.saved_by_dst = (e.src, e.dst) in (("n0", "n1"), ("n0", "n4"), ("n2", "n3"))
        return problem(prof, P=3, recompute="auto", memory=[10**8, 5 * 10**6, 4 * 10**6], link=SLOW)
    # two branches n1 -> n3 and n2 -> n4 between n0 and n5, ZBH1: the optimum [0, 1, 0, 2, 0, 2]
    # is not contiguous in the listed order
    prof = dag_profile([0.5, 3, 1, 2, 2, 0.5], [(0, 1, 10**5), (0, 2, 10**5), (1, 3, 10**6), (2, 4, 10**6),
                                                (3, 5, 10**5), (4, 5, 10**5), (0, 5, 5 * 10**5)],
                       acts=[10**5] * 6)
    return problem(prof, P=3, schedule="ZBH1", M=6, link=SLOW)


@pytest.mark.parametrize("case", ["skip-relay", "tied-recompute", "saved-copies", "branches"])
def test_brute_force_agrees_on_small_dags(case):
    prob = small_dag(case)
    best = brute_force(prob)
    res = solve(prob)
    assert res.status == "optimal"
    assert res.objective == pytest.approx(best[0], rel=1e-9)
    assert score(prob, res.stage_of, tuple(res.recompute)) == pytest.approx(best[0], rel=1e-9)


def test_memory_rows_are_scaled_for_the_solver():
    """Memory rows in KiB, not bytes: with an 80 GB device and GB-sized layers the byte rows reached
    ~4e11 next to ms-sized time rows, and HiGHS once called a feasible model infeasible (a false
    "optimal", U-Net3D base on 2 x A100 + 2 x L4, Interleaved1F1B). Every row's coefficients and right-hand
    side stay within 1e8 here; a plan that fits is still found."""
    from planner.solvers.ilp import build_model

    n = 8
    profile = chain_profile([1.0 + k % 3 for k in range(n)], params=[600_000_000] * n, acts=[2_000_000_000] * n)
    prob = problem(profile, P=2, M=4, schedule="Interleaved1F1B", virtual_stages=2, recompute="auto",
                   memory=80 * GiB)
    model = build_model(prob)
    worst = max(max([abs(c) for c in row.values()] + [abs(row.constant)]) for row in model.lp.constraints.values())
    assert worst <= 1e8, worst
    res = solve(prob)
    assert res.status == "optimal" and score(prob, res.stage_of, tuple(res.recompute)) is not None


def test_solves_after_highs_ran_elsewhere_with_another_thread_count():
    """HiGHS's thread scheduler is process-wide: after any run with its default thread count, a run with
    threads=1 used to refuse to start (model status kNotset), which read as a time-out: the ILP proxy and
    enumeration then silently proved nothing. The ILP resets the scheduler and solves."""
    import highspy

    other = highspy.Highs()
    other.setOptionValue("output_flag", False)
    other.addVar(0.0, 1.0)
    other.run()
    try:
        prob = problem(chain_profile([3, 1, 1, 3]), P=2)
        res = solve(prob)
        assert res.stage_of == [0, 0, 1, 1]
    finally:
        highspy.Highs.resetGlobalScheduler(True)
