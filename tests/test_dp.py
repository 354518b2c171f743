"""The chain DP (planner/solvers/dp.py): hand-made regimes (memory slack, binding, too tight; recompute
chosen only where it must be), then property tests: the DP, the ILP and brute force agree on random
chains, and the plans are valid."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planner.contracts.cluster import Cluster, Device, Link
from planner.contracts.config import TrainConfig
from planner.contracts.plan import SolverInfo
from planner.costmodel.cost import build_tables, stage_devices
from planner.costmodel.microbatches import schedule_accepts
from planner.pipeline.schedules import schedule_spec
from planner.pipeline.simulator import simulate
from planner.solvers.baselines import baseline_plans
from planner.solvers.dp import solve_chain
from planner.solvers.evaluate import make_plan
from planner.solvers.ilp import solve_ilp
from planner.solvers.search import chain_problem, cuts_to_stage_of, ilp_problem
from planner.solvers.solve import solve
from profiler.synthetic import chain_profile


def hand_chain(memory: int, recompute: str = "off"):
    """Four nodes of 1 ms forward, 2 ms backward and 100 activation bytes, no parameters, 1-byte edges;
    two devices, 1F1B with 4 micro-batches: stage 0 holds 2 micro-batches in flight, stage 1 one."""
    profile = chain_profile([1.0] * 4, acts=[100] * 4, edge_bytes=[1] * 3)
    profile.model.input_bytes = 1
    free = Link(bandwidth_bytes_per_s=1e12, latency_s=0.0)  # 1-byte transfers: ~1e-9 ms
    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=memory, speed=1.0) for i in range(2)],
                      intra_node=free, inter_node=free)
    config = TrainConfig(schedule="1F1B", num_microbatches=4, recompute=recompute)
    tables = build_tables(profile)
    return solve_chain(chain_problem(profile, tables, cluster, config, stage_devices(2, config)))


def test_dp_memory_slack_balances_time():
    # 2 + 2 nodes: T = 6 per stage; step = (M - 1) max T + sum T = 3 * 6 + 12 = 30 (comm ~ 0)
    res = hand_chain(10**6)
    assert res.cuts == [0, 2, 4] and res.optimal
    assert res.objective == pytest.approx(30.0, rel=1e-6)


def test_dp_memory_binding_moves_layers_off_the_first_stage():
    # stage 0 holds 2 in flight: k nodes need 200 k bytes <= 300, so k = 1; stage 1 then holds 3
    # nodes x 100 B x 1 in flight = 300 <= 300. T = 3 and 9: step = 3 * 9 + 12 = 39
    res = hand_chain(300)
    assert res.cuts == [0, 1, 4]
    assert res.objective == pytest.approx(39.0, rel=1e-6)


def test_dp_memory_too_tight_is_infeasible():
    # stage 0 fits at most 1 node (200 <= 250), stage 1 at most 2 (300 > 250): 3 < 4 nodes
    res = hand_chain(250)
    assert res.cuts is None and res.objective == float("inf")


def test_dp_recompute_auto_only_where_memory_binds():
    # with recompute a stage keeps 1 micro-batch of activations + its inputs per micro-batch in
    # flight (1 byte each): stage 0 with 2 nodes needs 200 + 2 = 202 <= 210, and pays 2 ms of
    # re-forward per micro-batch; stage 1 (1 in flight) fits 200 without it. T = 8 and 6:
    # step = 3 * 8 + 14 = 38. Without recompute nothing fits: stage 0 takes at most 1 node
    # (2 x 100 <= 210) and stage 1 at most 2 (300 > 210)
    res = hand_chain(210, recompute="auto")
    assert res.cuts == [0, 2, 4] and res.recompute == [True, False]
    assert res.objective == pytest.approx(38.0, rel=1e-6)
    assert hand_chain(210, recompute="off").cuts is None


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def instances(draw, max_nodes=8, max_devices=3):
    n = draw(st.integers(2, max_nodes))
    P = draw(st.integers(1, min(max_devices, n)))
    times = draw(st.lists(st.floats(0.1, 5.0), min_size=n, max_size=n))
    params = draw(st.lists(st.integers(0, 1000), min_size=n, max_size=n))
    acts = draw(st.lists(st.integers(0, 5000), min_size=n, max_size=n))
    edge_bytes = draw(st.lists(st.integers(1, 10**8), min_size=n - 1, max_size=n - 1))
    mixed = draw(st.booleans())
    total_need = sum(params) * 16 + sum(acts) * P
    # memory from "hardly binding" to "infeasible"
    mem_frac = draw(st.sampled_from([0.05, 0.2, 0.4, 0.7, 2.0]))
    devices = []
    for d in range(P):
        speed = draw(st.sampled_from([0.5, 1.0, 2.0])) if mixed else 1.0
        mem = max(1, int(total_need * mem_frac * (draw(st.sampled_from([0.5, 1.0, 1.5])) if mixed else 1.0)))
        devices.append(Device(name=f"d{d}", memory_bytes=mem, speed=speed, node=d // 2))
    cluster = Cluster(devices=devices)
    schedule = draw(st.sampled_from(["1F1B", "GPipe", "ZBH1"]))
    M = draw(st.integers(P, 3 * P))
    assume(schedule_accepts(schedule, P, M) is None)
    recompute = draw(st.sampled_from(["off", "on", "auto"]))
    assume(recompute != "on" or schedule_spec(schedule).supports_recompute)  # TrainConfig refuses the rest
    reserve = draw(st.sampled_from([0, 0, max(1, total_need // (4 * P))]))
    cfg = TrainConfig(schedule=schedule, num_microbatches=M, recompute=recompute, reserve_bytes=reserve)
    profile = chain_profile(times, params=params, acts=acts, edge_bytes=edge_bytes)
    # saved-tensor facts (a ReLU saving its output, the next layer saving its input): held outputs and
    # saved copies across cuts (cost.AssignmentCost), the same rule in the DP, the ILP and make_plan
    for e in profile.edges:
        e.saved_by_src, e.saved_by_dst = draw(st.booleans()), draw(st.booleans())
    return profile, cluster, cfg


def brute_force(profile, cluster, config, simulated: bool = False):
    """Every contiguous partition and recompute choice, scored by make_plan: the ground truth (the
    least closed form, or with simulated=True the least simulated step)."""
    tables = build_tables(profile)
    N, S = tables.num_nodes, cluster.num_devices
    devices = stage_devices(S, config)
    # "auto" may turn recompute on only where the schedule supports it (TrainConfig.recompute_choices)
    rec_opts = list(itertools.product(config.recompute_choices(), repeat=S)) if config.recompute == "auto" \
        else [(config.recompute == "on",) * S]
    best = None
    for cuts in itertools.combinations(range(1, N), S - 1):
        stage_of = cuts_to_stage_of([0, *cuts, N])
        for rec in rec_opts:
            plan = make_plan(profile, tables, cluster, config, stage_of, devices, list(rec),
                             SolverInfo(backend="brute", status="optimal"), timeline=simulated)
            score = plan.step_time_ms if simulated else plan.solver.objective_ms
            if plan.feasible and (best is None or score < best):
                best = score
    return best


def check_plan_valid(plan, profile, cluster):
    ids = [n for s in plan.stages for n in s.node_ids]
    assert sorted(ids) == sorted(n.id for n in profile.nodes)  # every node exactly once
    assert all(s.node_ids for s in plan.stages)
    used = {}
    for s in plan.stages:
        used[s.device] = used.get(s.device, 0) + s.memory.total - plan.config.reserve_bytes
    for d, u in used.items():
        assert u + plan.config.reserve_bytes <= cluster.devices[d].memory_bytes


@SETTINGS
@given(instances())
def test_dp_equals_brute_force_and_plans_are_valid(inst):
    profile, cluster, config = inst
    truth = brute_force(profile, cluster, config)
    plan = solve(profile, cluster, dataclasses.replace(config, solver="dp"))
    if truth is None:
        assert not plan.feasible and plan.diagnosis is not None
        return
    assert plan.feasible
    check_plan_valid(plan, profile, cluster)
    # the DP alone minimises the closed form exactly
    tables = build_tables(profile)
    dp = solve_chain(chain_problem(profile, tables, cluster, config, stage_devices(cluster.num_devices, config)))
    assert abs(dp.lower_bound - truth) <= 1e-9 * truth and abs(dp.objective - truth) <= 1e-9 * truth
    # solve() is optimal under the simulator (the exact finish), which brute force confirms
    sim_truth = brute_force(profile, cluster, config, simulated=True)
    assert plan.solver.status == "optimal" and plan.solver.gap == 0.0
    assert plan.step_time_ms == pytest.approx(sim_truth, rel=1e-9)
    assert plan.solver.objective_ms == plan.step_time_ms and plan.solver.lower_bound_ms <= sim_truth * (1 + 1e-9)
    assert plan.step_time_ms == pytest.approx(simulate(plan).makespan_ms, rel=1e-12)
    for name, bp in baseline_plans(profile, cluster, plan.config).items():
        assert not bp.feasible or truth <= bp.solver.objective_ms * (1 + 1e-9), name
        assert plan.baselines[name] == (pytest.approx(bp.step_time_ms, rel=1e-12) if bp.feasible else None)
        assert not bp.feasible or plan.step_time_ms <= bp.step_time_ms * (1 + 1e-9), name


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances(max_nodes=10, max_devices=4), st.sampled_from(["highs", "cbc"]))
def test_cold_ilp_objective_equals_dp(inst, backend):
    """The ILP without warm start or bounds reaches the DP's optimum (its own objective and the re-scored plan)."""
    profile, cluster, config = inst
    tables = build_tables(profile)
    devices = stage_devices(cluster.num_devices, config)
    dp = solve_chain(chain_problem(profile, tables, cluster, config, devices))
    # tiny instances solve in well under a second; the generous limit only matters when the machine
    # is overloaded, where a 20 s limit was once hit before any incumbent ("timeout")
    res = solve_ilp(ilp_problem(profile, tables, cluster, config, devices), backend=backend, time_limit_s=120)
    if dp.cuts is None:
        assert res.stage_of is None and res.status == "infeasible"
        return
    assert res.status == "optimal", (res, profile.to_json(), cluster.to_json(), config.to_json())
    assert abs(res.objective - dp.objective) <= 1e-6 * dp.objective
    plan = make_plan(profile, tables, cluster, config, res.stage_of, devices, res.recompute,
                     SolverInfo(backend=backend, status="optimal"), timeline=False)
    assert plan.feasible
    assert abs(plan.solver.objective_ms - dp.objective) <= 1e-6 * dp.objective


def test_time_limited_ilp_is_not_reported_optimal():
    """pulp reports a HiGHS or CBC run stopped by its time limit as "Optimal" (with or without an
    incumbent); solve_ilp must say "feasible" (incumbent, open gap) or "timeout" (none)."""
    import random

    rng = random.Random(5)
    n, P = 120, 8
    profile = chain_profile([rng.uniform(0.2, 3.0) for _ in range(n)], edge_bytes=[10**6] * (n - 1))
    cluster = Cluster.uniform(P, memory_bytes=2**40)
    config = TrainConfig(num_microbatches=2 * P)
    tables = build_tables(profile)
    prob = ilp_problem(profile, tables, cluster, config, stage_devices(P, config))
    # a warm start (equal layer counts) gives HiGHS an incumbent at once, but no proof in 0.05 s
    warm = [i * P // n for i in range(n)]
    res = solve_ilp(prob, backend="highs", time_limit_s=0.05, warm_stage_of=warm)
    assert res.status == "feasible", res.status
    assert res.bound is not None and res.bound < res.objective and sorted(set(res.stage_of)) == list(range(P))
    res = solve_ilp(prob, backend="cbc", time_limit_s=1)
    assert res.status in ("feasible", "timeout"), res.status
    assert res.status == "timeout" or (res.stage_of is not None and len(res.stage_of) == n)
