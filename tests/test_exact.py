"""Optimal under the simulator (planner/solvers/exact.py, docs/ilp.md "What is proven"): brute force over
every partition and recompute choice, each scored by the simulator, for every schedule in the registry,
on random small chains and DAGs (mixed speeds, binding memory, communication). The solver's plan is
optimal or within its reported gap, and its lower bound is <= the simulated step of every enumerated
plan. Then: recompute auto <= off and on, device order auto <= fixed (property sweeps), and the stage
bound itself against the simulator on random stage times.

A few derandomized examples run in the fast suite; the `slow` sweep runs many more."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planner.contracts.cluster import Cluster, Device, Link
from planner.contracts.config import TrainConfig
from planner.contracts.plan import SolverInfo
from planner.costmodel.cost import build_tables, clip_allreduce_ms, stage_devices
from planner.costmodel.microbatches import schedule_accepts
from planner.pipeline.schedules import SCHEDULE_SPECS, chunks_per_device, stage_to_device
from planner.pipeline.simulator import simulate_times
from planner.solvers.evaluate import make_plan
from planner.solvers.exact import device_bound, order_terms
from planner.solvers.solve import solve
from profiler.synthetic import chain_profile, dag_profile

SCHEDULES = list(SCHEDULE_SPECS)
TOL = 1e-9


@st.composite
def instances(draw, max_nodes: int = 7, max_devices: int = 3, dag: bool | None = None):
    """A small chain or DAG, 2..max_devices devices of mixed speed and memory, a schedule and its
    parameters; memory from slack to binding (recompute may be needed), transfers that matter."""
    schedule = draw(st.sampled_from(SCHEDULES))
    spec = SCHEDULE_SPECS[schedule]
    v = draw(st.sampled_from([1, 2])) if spec.chunks_per_device is None else 1
    per_device = chunks_per_device(schedule, v)
    P = draw(st.integers(2, max_devices))
    n = draw(st.integers(P * per_device, max(P * per_device, max_nodes)))
    assume(n <= max_nodes + 1)
    times = draw(st.lists(st.floats(0.2, 4.0), min_size=n, max_size=n))
    params = draw(st.lists(st.integers(0, 2000), min_size=n, max_size=n))
    acts = draw(st.lists(st.integers(0, 4000), min_size=n, max_size=n))
    is_dag = draw(st.booleans()) if dag is None else dag
    if is_dag:
        edges = [(i, i + 1, draw(st.integers(1, 10**7))) for i in range(n - 1)]
        for _ in range(draw(st.integers(1, 3)) if n >= 3 else 0):  # skips
            a = draw(st.integers(0, n - 3))
            b = draw(st.integers(a + 2, n - 1))
            edges.append((a, b, draw(st.integers(1, 10**7))))
        if draw(st.booleans()) and n >= 4:  # a parallel branch: the topological order is not unique
            a = draw(st.integers(0, n - 4))
            edges = [e for e in edges if e[:2] != (a + 1, a + 2)] + [(a, a + 2, 1000)]
        profile = dag_profile(times, edges, params=params, acts=acts)
    else:
        profile = chain_profile(times, params=params, acts=acts,
                                edge_bytes=draw(st.lists(st.integers(1, 10**7), min_size=n - 1, max_size=n - 1)))
    need = sum(params) * 16 + sum(acts) * 2
    frac = draw(st.sampled_from([0.3, 0.6, 1.0, 3.0]))
    devices = [Device(name=f"d{d}", memory_bytes=max(1, int(need * frac * draw(st.sampled_from([0.7, 1.0, 1.4])))),
                      speed=draw(st.sampled_from([0.5, 1.0, 2.0])), node=d // 2,
                      step_overhead_ms=draw(st.sampled_from([0.0, 0.0, 0.4]))) for d in range(P)]
    # a per-transfer overhead (calibrate --from-run's gamma) is in the simulator, not in the ILP's rows
    slow_link = Link(bandwidth_bytes_per_s=draw(st.sampled_from([1e9, 1e10])), latency_s=1e-5,
                     transfer_overhead_s=draw(st.sampled_from([0.0, 0.0, 3e-4])))
    cluster = Cluster(devices=devices, intra_node=slow_link, inter_node=slow_link)
    M = draw(st.integers(P, 2 * P + 1))
    assume(schedule_accepts(schedule, P, M, v) is None)
    recompute = draw(st.sampled_from(["off", "auto", "on"])) if spec.supports_recompute else "off"
    return profile, cluster, TrainConfig(schedule=schedule, num_microbatches=M, virtual_stages=v,
                                         recompute=recompute, time_limit_s=20)


def brute_force(profile, cluster, config) -> list[float]:
    """The simulated step of every plan that fits: every stage assignment that lets data flow forward
    (non-empty stages) and every recompute choice the config allows."""
    tables = build_tables(profile)
    N = tables.num_nodes
    devices = stage_devices(cluster.num_devices, config)
    S = len(devices)
    rec_opts = list(itertools.product(config.recompute_choices(), repeat=S)) if config.recompute == "auto" \
        else [(config.recompute == "on",) * S]
    out = []
    for stage_of in itertools.product(range(S), repeat=N):
        if len(set(stage_of)) < S or any(stage_of[c] < stage_of[t.producer] for t in tables.tensors
                                        for c in t.consumers):
            continue
        for rec in rec_opts:
            plan = make_plan(profile, tables, cluster, config, list(stage_of), devices, list(rec),
                             SolverInfo(backend="brute", status="evaluated"))
            if plan.feasible:
                out.append(plan.step_time_ms)
    return out


def check_against_brute_force(profile, cluster, config) -> str:
    scores = brute_force(profile, cluster, config)
    plan = solve(profile, cluster, config)
    if not scores:
        assert not plan.feasible
        return "infeasible"
    assert plan.feasible
    info, best = plan.solver, min(scores)
    assert info.status in ("optimal", "feasible")
    assert info.objective_ms == plan.step_time_ms
    # the lower bound holds for every enumerated plan's timeline
    assert info.lower_bound_ms <= best * (1 + TOL), (info, best)
    if info.status == "optimal":
        assert plan.step_time_ms <= best * (1 + TOL), (info, best)
    else:  # the gap bounds the simulated makespan
        assert info.gap is not None and plan.step_time_ms * (1 - info.gap) <= best * (1 + TOL)
    assert plan.step_time_ms >= best * (1 - TOL)
    return info.status


FAST = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))


@FAST
@given(instances(dag=False))
def test_chains_optimal_under_the_simulator_against_brute_force(inst):
    profile, cluster, config = inst
    status = check_against_brute_force(profile, cluster, config)
    # the chain's exact finishes (exact.chain_finish; path_search with several chunks) close on these sizes
    assert status in ("optimal", "infeasible")


@FAST
@given(instances(dag=True))
def test_dags_optimal_or_within_gap_against_brute_force(inst):
    check_against_brute_force(*inst)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(instances(max_nodes=8, max_devices=4))
def test_sweep_every_schedule_against_brute_force(inst):
    check_against_brute_force(*inst)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_every_schedule_brute_force_one_case_each(schedule):
    """Each registry schedule at least once in the fast suite, chain with communication and mixed speeds."""
    rng = random.Random(hash(schedule) % 1000)
    v = 2 if SCHEDULE_SPECS[schedule].chunks_per_device is None else 1
    P = 2
    n = P * chunks_per_device(schedule, v) + 2
    profile = chain_profile([rng.uniform(0.3, 3.0) for _ in range(n)], params=[rng.randint(0, 1000) for _ in range(n)],
                            edge_bytes=[rng.choice([10**5, 10**7]) for _ in range(n - 1)])
    cluster = Cluster(devices=[Device(name="a", memory_bytes=10**9, speed=1.0),
                               Device(name="b", memory_bytes=10**9, speed=2.0, node=1)],
                      inter_node=Link(bandwidth_bytes_per_s=1e9, latency_s=1e-5))
    M = 4
    assert schedule_accepts(schedule, P, M, v) is None
    check_against_brute_force(profile, cluster, TrainConfig(schedule=schedule, num_microbatches=M, virtual_stages=v))


@pytest.mark.parametrize("schedule", ["Interleaved1F1B", "ZBV"])
def test_chunked_chain_search_hands_over_to_the_ilp(schedule, monkeypatch):
    """Several chunks per device on a chain: path_search runs first; stopped on its caps at once (no
    expansion, one round of row generation), the ILP enumeration goes on from its rows and plans, and the
    answer still holds against brute force."""
    import planner.solvers.path_search as ps
    from planner.solvers import search

    calls = []
    real = search.chunked_chain_finish

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out[3])
        return out

    monkeypatch.setattr(ps, "MAX_EXPANSIONS", 0)
    monkeypatch.setattr(ps, "GENERATION_ROUNDS", 1)
    monkeypatch.setattr(search, "chunked_chain_finish", spy)
    rng = random.Random(7)
    n = 8
    profile = chain_profile([rng.uniform(0.3, 3.0) for _ in range(n)], params=[rng.randint(0, 1000) for _ in range(n)],
                            edge_bytes=[rng.choice([10**5, 10**7]) for _ in range(n - 1)])
    cluster = Cluster(devices=[Device(name="a", memory_bytes=10**9, speed=1.0),
                               Device(name="b", memory_bytes=10**9, speed=2.0, node=1)],
                      inter_node=Link(bandwidth_bytes_per_s=1e9, latency_s=1e-5))
    check_against_brute_force(profile, cluster, TrainConfig(schedule=schedule, num_microbatches=4, virtual_stages=2))
    assert calls and not any(calls)  # it ran, and stopped without a proof: the ILP finished the job


# -- auto never worse ------------------------------------------------------------------------

@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(instances(max_nodes=7))
def test_recompute_auto_never_slower_than_off_or_on(inst):
    profile, cluster, config = inst
    assume(len(config.recompute_choices()) > 1 or config.recompute != "off")
    auto = solve(profile, cluster, dataclasses.replace(config, recompute="auto"))
    for r in ("off", "on"):
        if r == "on" and not SCHEDULE_SPECS[config.schedule].supports_recompute:
            continue
        other = solve(profile, cluster, dataclasses.replace(config, recompute=r))
        if other.feasible:
            assert auto.feasible and auto.step_time_ms <= other.step_time_ms * (1 + TOL), r


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
@given(instances(max_nodes=7, dag=False))
def test_device_order_auto_never_slower_than_fixed(inst):
    profile, cluster, config = inst
    fixed = solve(profile, cluster, dataclasses.replace(config, device_order="fixed"))
    auto = solve(profile, cluster, dataclasses.replace(config, device_order="auto"))
    if fixed.feasible:
        assert auto.feasible and auto.step_time_ms <= fixed.step_time_ms * (1 + TOL)


# -- the bound itself ------------------------------------------------------------------------

def _random_pipelines(rng: random.Random, schedule: str, tries: int):
    """Random shapes the schedule accepts (P, v, M, S stages) with per-stage F, B, W (None without a split
    backward) and sends."""
    spec = SCHEDULE_SPECS[schedule]
    for _ in range(tries):
        P = rng.randint(1, 4)
        v = rng.choice([1, 2, 3]) if spec.chunks_per_device is None else 1
        M = rng.randint(1, 3 * P)
        if schedule_accepts(schedule, P, M, v) is not None:
            continue
        S = P * chunks_per_device(schedule, v)
        f = [rng.uniform(0.1, 3) for _ in range(S)]
        b = [x * rng.uniform(1, 3) for x in f]
        w = [x * rng.uniform(0, 0.6) for x in b] if spec.split_backward else None
        c = [rng.choice([0.0, rng.uniform(0, 2)]) for _ in range(S - 1)]
        yield P, v, M, S, f, b, w, c


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_device_bound_below_the_simulated_makespan(schedule):
    """exact.device_bound (the bound the chain search and the stage-bound ILP use) against the simulator
    on random per-stage times, sends and optimizer steps."""
    rng = random.Random(11)
    spec = SCHEDULE_SPECS[schedule]
    tight = 0
    for P, v, M, S, f, b, w, c in _random_pipelines(rng, schedule, 200):
        opt = [rng.choice([0.0, rng.uniform(0, 1)]) for _ in range(S)]
        sync = rng.uniform(0, 0.5)
        tl = simulate_times(f, b, c, schedule=schedule, num_devices=P, num_microbatches=M, virtual_stages=v,
                            bwd_weight_ms=w, optimizer_ms=opt, sync_ms=sync)
        device_of = stage_to_device(P, schedule, v)
        link = [0.0 if device_of[k] == device_of[k + 1] else c[k] for k in range(S - 1)]
        lb = device_bound(f, b, link, device_of, M, spec.split_backward, opt,
                          sync if any(x > 0 for x in opt) else 0.0,
                          bwd_input=[x - y for x, y in zip(b, w)] if w is not None else None,
                          terms=order_terms(schedule, P, M, v))
        assert lb <= tl.makespan_ms * (1 + TOL), (P, v, M, lb, tl.makespan_ms)
        tight += lb >= tl.makespan_ms * (1 - 1e-6)
    assert tight > 0  # the bound is reached on some instances (uniform-enough stages)


# -- the path bounds (exact.py, "path bounds") ---------------------------------------------------

def _durations(plan):
    from planner.solvers.exact import plan_durations

    return plan_durations(plan)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_critical_path_is_the_simulated_makespan(schedule):
    """The simulator's drained time is the longest path of the event graph: critical_path returns it and
    a path whose length, recomputed from its counts, is the same number; every seed path is <= it."""
    from planner.solvers.exact import critical_path, path_length, seed_paths

    rng = random.Random(5)
    spec = SCHEDULE_SPECS[schedule]
    for P, v, M, S, f, b, w, c in _random_pipelines(rng, schedule, 120):
        vv = chunks_per_device(schedule, v)
        w = w if w is not None else [0.0] * S
        device_of = stage_to_device(P, schedule, v)
        link = [0.0 if device_of[k] == device_of[k + 1] else c[k] for k in range(S - 1)]
        B = [x - y for x, y in zip(b, w)]
        tl = simulate_times(f, b, c, schedule=schedule, num_devices=P, num_microbatches=M, virtual_stages=v,
                            bwd_weight_ms=w if spec.split_backward else None)
        length, path = critical_path(schedule, P, M, vv, f, B, w, link)
        assert length == pytest.approx(tl.makespan_ms, rel=1e-12)
        assert path_length(path, f, B, w, link) == pytest.approx(length, rel=1e-9)
        for p in seed_paths(schedule, P, M, vv):
            assert path_length(p, f, B, w, link) <= length * (1 + TOL)


def _all_assignments(tables, S: int) -> list[list[int]]:
    """Every stage assignment with data flowing forward and no empty stage (in topological order)."""
    N = tables.num_nodes
    preds = [[] for _ in range(N)]
    for t in tables.tensors:
        for c in t.consumers:
            preds[c].append(t.producer)
    out = []

    def rec(i: int, so: list[int]) -> None:
        if i == N:
            if len(set(so)) == S:
                out.append(list(so))
            return
        lo = max((so[p] for p in preds[i]), default=0)
        for s in range(lo, S):
            if S - 1 - s > N - 1 - i and len(set(so)) + (N - i) < S:  # cannot fill the stages left
                continue
            so.append(s)
            rec(i + 1, so)
            so.pop()

    rec(0, [])
    return out


@st.composite
def path_instances(draw):
    """Up to 12 nodes, 2-4 devices, every schedule: chains and DAGs, mixed speeds, memory from slack
    to binding, transfers that matter (instances() with the brief's sizes)."""
    return draw(instances(max_nodes=12, max_devices=4))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(path_instances(), st.randoms(use_true_random=False))
def test_path_bounds_below_every_enumerated_plan(inst, rnd):
    """For every schedule: the bound the enumeration uses (the device paths, the seeded critical paths
    and the critical path of every scored plan, + the largest optimizer step + sync) is <= the
    simulated makespan of every enumerated plan that fits (up to 400 of them, at random when more),
    and so is the critical path of each other enumerated plan (the rows the ILP adds as it goes); with
    a plan's own critical path the bound is its simulated step exactly (the durations are the
    simulator's)."""
    from planner.solvers.evaluate import choose_recompute
    from planner.solvers.exact import path_length, plan_path, seed_paths

    profile, cluster, config = inst
    tables = build_tables(profile)
    devices = stage_devices(cluster.num_devices, config)
    S = len(devices)
    assignments = _all_assignments(tables, S)
    if len(assignments) > 400:
        assignments = rnd.sample(assignments, 400)
    plans = []
    for so in assignments:
        for rec in ([choose_recompute(profile, tables, cluster, config, so, devices)] +
                    ([[False] * S, [True] * S] if config.recompute == "auto" else [])):
            p = make_plan(profile, tables, cluster, config, so, devices, list(rec),
                          SolverInfo(backend="brute", status="evaluated"))
            if p.feasible:
                plans.append(p)
    assume(plans)
    P, M, v = _durations(plans[0])[:3]
    paths = seed_paths(config.schedule, P, M, v) + [plan_path(p) for p in plans[:40]]
    for k, p in enumerate(plans):
        _, _, _, f, B, W, link = _durations(p)
        opt = [st_.optimizer_ms + st_.dp_sync_ms for st_ in p.stages]
        opt_max = max(sum(opt[s] for s in range(S) if p.stages[s].device == d) for d in set(devices))
        sync = clip_allreduce_ms(cluster, [st_.device for st_ in p.stages]) if any(x > 0 for x in opt) else 0.0
        bound = max(path_length(q, f, B, W, link) for q in paths) + opt_max + sync
        assert bound <= p.step_time_ms * (1 + TOL), (config.schedule, bound, p.step_time_ms)
        if k < 40:  # its own critical path is among them: the bound is its simulated step exactly
            assert bound == pytest.approx(p.step_time_ms, rel=1e-9)


# -- the device-pair bound (path_search.device_pair_bound) -----------------------------------------

def _least_device_path_case(seed: int):
    """A random chain (a few heavy nodes among light ones), 2-3 devices of mixed speed, Interleaved1F1B or ZBV."""
    rng = random.Random(seed)
    P = rng.choice([2, 3])
    n = 2 * P + rng.randint(1, 4)
    schedule = rng.choice(["Interleaved1F1B", "ZBV"])
    profile = chain_profile([rng.choice([0.05, 0.1, 0.2, 3.0, 8.0]) for _ in range(n)],
                            params=[rng.randint(0, 1000) for _ in range(n)],
                            edge_bytes=[rng.choice([10**5, 10**7]) for _ in range(n - 1)])
    cluster = Cluster(devices=[Device(name=f"d{k}", memory_bytes=10**9, speed=rng.choice([1.0, 3.0]), node=k % 2)
                               for k in range(P)], inter_node=Link(bandwidth_bytes_per_s=1e9, latency_s=1e-4))
    return profile, cluster, TrainConfig(schedule=schedule, num_microbatches=rng.choice([P, 2 * P]), virtual_stages=2)


# 116, 187, 321, 341, 369: a version that kept only the farthest frontier per end (covering more of the second
# chain taken as never worse) returned a bound above the least largest device path on these
@pytest.mark.parametrize("seed", [*range(24), 116, 187, 321, 341, 369])
def test_device_pair_bound_never_exceeds_the_least_largest_device_path(seed):
    """Brute force over every cut: the bound is <= the least, over partitions, of the largest device path
    (which is <= every partition's simulated drain), and close to it (the heads are bounded by their least
    value over every cut, so it may be a little lower)."""
    import time

    from planner.solvers.exact import critical_path, device_paths, path_length
    from planner.solvers.path_search import _durations, _Intervals, device_pair_bound
    from planner.solvers.search import chain_problem

    profile, cluster, config = _least_device_path_case(seed)
    P, M, n = cluster.num_devices, config.num_microbatches, len(profile.nodes)
    tables = build_tables(profile)
    devices = stage_devices(P, config)
    iv = _Intervals(chain_problem(profile, tables, cluster, config, devices), cluster, devices)
    paths = device_paths(config.schedule, P, M, 2)
    least_device, least_drain = float("inf"), float("inf")
    for cuts in itertools.combinations(range(1, n), 2 * P - 1):
        ends = [0, *cuts, n]
        stages = [(ends[k], ends[k + 1] - ends[k], 0) for k in range(2 * P)]
        f, b, w, link = _durations(iv, stages)
        least_device = min(least_device, max(path_length(p, f, b, w, link) for p in paths))
        least_drain = min(least_drain, critical_path(config.schedule, P, M, 2, f, b, w, link)[0])
    bound = device_pair_bound(iv, devices, paths, 0.0, 2 * least_device, time.perf_counter() + 60, rel_tol=1e-9)
    assert least_device <= least_drain * (1 + 1e-9)  # every device path is a path
    assert 0.95 * least_device <= bound <= least_device * (1 + 1e-9)
