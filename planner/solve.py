"""`solve`: the optimal Plan for a Profile on a Cluster under a TrainConfig.

Backend choice ("auto"): the exact DP when the layer graph is a chain and each
device runs one stage (it proves optimality itself, in a fraction of the ILP's
time); otherwise the ILP on HiGHS, warm-started and bounded by the DP's best
contiguous partition. "highs"/"cbc" force the ILP (still warm-started); "dp"
forces the DP (on a non-chain DAG it returns the best contiguous partition,
status "heuristic").
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np

from planner.baselines import baseline_partitions
from planner.cluster import Cluster
from planner.config import TrainConfig
from planner.cost import CostTables, boundary_comm_ms, build_tables, speeds, stage_devices
from planner.dp import ChainProblem, cut_bytes, solve_chain
from planner.evaluate import evaluate_partition, make_plan, with_timeline
from planner.ilp import ILPProblem, solve_ilp
from planner.microbatches import microbatch_options, scale_profile
from planner.plan import Plan, SolverInfo
from planner.schedules import in_flight_microbatches
from profiler.errors import PipeplanError
from profiler.profile import Profile

MAX_DEVICE_ORDERS = 24


def recompute_options(config: TrainConfig) -> tuple[bool, ...]:
    return {"off": (False,), "on": (True,), "auto": (False, True)}[config.recompute]


def chain_problem(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                  devices: list[int]) -> ChainProblem:
    S, P = len(devices), cluster.num_devices
    sp = speeds(cluster, profile)
    fwd_cut, grad_cut = cut_bytes(tables)
    comm, per_link = [], {}
    for s in range(S):
        if s == S - 1:
            comm.append(np.zeros(tables.num_nodes + 1))
            continue
        a, b = devices[s], devices[s + 1]
        key = "same" if a == b else ("intra" if cluster.devices[a].node == cluster.devices[b].node else "inter")
        if key not in per_link:  # one array per distinct link: the DP shares work between equal stages
            per_link[key] = np.array([boundary_comm_ms(cluster, a, b, fb) + boundary_comm_ms(cluster, b, a, gb)
                                      for fb, gb in zip(fwd_cut, grad_cut)])
        comm.append(per_link[key])
    return ChainProblem(tables=tables, num_microbatches=config.num_microbatches, schedule=config.schedule,
                        stage_speed=[sp[d] for d in devices],
                        stage_limit=[cluster.devices[d].memory_bytes for d in devices],
                        stage_in_flight=in_flight_microbatches(config.schedule, P, config.num_microbatches, 1),
                        recompute_options=recompute_options(config), comm_ms_per_cut=comm, config=config)


def ilp_problem(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                devices: list[int]) -> ILPProblem:
    S, P = len(devices), cluster.num_devices
    sp = speeds(cluster, profile)
    lat, per_byte = [], []
    for b in range(S - 1):
        a, c = devices[b], devices[b + 1]
        if a == c:
            lat.append(0.0)
            per_byte.append(0.0)
        else:
            link = cluster.link(a, c)
            lat.append(1000.0 * link.latency_s)
            per_byte.append(1000.0 / link.bandwidth_bytes_per_s)
    stages_on = {d: devices.count(d) for d in set(devices)}
    # the ILP's stage memory leaves the reserve out; a device holds it once. The ILP cannot round to
    # whole bytes as stage_memory_bytes does; make_plan re-checks every plan it returns.
    limits = {d: cluster.devices[d].memory_bytes - config.reserve_bytes for d in stages_on}
    return ILPProblem(tables=tables, num_microbatches=config.num_microbatches, schedule=config.schedule,
                      virtual_stages=config.virtual_stages, stage_device=devices,
                      stage_speed=[sp[d] for d in devices], device_limit=limits,
                      stage_in_flight=in_flight_microbatches(config.schedule, P, config.num_microbatches,
                                                             config.virtual_stages),
                      recompute_options=recompute_options(config), link_latency_ms=lat,
                      link_ms_per_byte=per_byte, config=config)


def cuts_to_stage_of(cuts: list[int]) -> list[int]:
    out = []
    for s in range(len(cuts) - 1):
        out += [s] * (cuts[s + 1] - cuts[s])
    return out


def device_orders(cluster: Cluster, config: TrainConfig) -> list[list[int]]:
    """The device orders to try: the given one, or (device_order="auto") every distinct order of
    device kinds (memory, speed, host), up to MAX_DEVICE_ORDERS, the given order first."""
    P = cluster.num_devices
    identity = list(range(P))
    if config.device_order != "auto" or P == 1:
        return [identity]
    kinds = [(d.memory_bytes, d.speed, d.tflops, d.node) for d in cluster.devices]
    seen, orders = set(), []
    for perm in itertools.permutations(range(P)):
        key = tuple(kinds[p] for p in perm)
        if key in seen:
            continue
        seen.add(key)
        orders.append(list(perm))
        if len(orders) >= MAX_DEVICE_ORDERS:
            break
    return orders if identity in orders else [identity] + orders[:-1]


def solve_fixed(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                devices: list[int], time_limit_s: float, fingerprint: str | None = None) -> Plan | None:
    """The best plan with this stage -> device map and micro-batch count; None if nothing fits.
    Its step_time_ms is still the closed form (solver.objective_ms): solve_once simulates the winner."""
    backend = config.solver
    single_chunk = config.virtual_stages == 1
    chain = tables.is_chain()
    if backend == "dp" and not single_chunk:
        raise PipeplanError(f"the dp solver plans one stage per device; {config.schedule} needs the ILP "
                            "(--solver highs or cbc)")
    dp = None
    if single_chunk:
        dp = solve_chain(chain_problem(profile, tables, cluster, config, devices),
                         time_limit_s=time_limit_s if backend in ("auto", "dp") else time_limit_s / 2)
    use_dp = backend == "dp" or (backend == "auto" and chain and single_chunk)
    if use_dp:
        if dp.cuts is None:
            return None
        status = ("optimal" if dp.optimal else "feasible") if chain else "heuristic"
        info = SolverInfo(backend="dp", status=status, seconds=dp.seconds)
        plan = make_plan(profile, tables, cluster, config, cuts_to_stage_of(dp.cuts), devices, dp.recompute, info,
                         fingerprint, timeline=False)
        info.lower_bound_ms = dp.lower_bound if chain else None
        info.gap = _gap(info.objective_ms, info.lower_bound_ms)
        return plan
    ilp_backend = "cbc" if backend == "cbc" else "highs"
    warm = cuts_to_stage_of(dp.cuts) if dp is not None and dp.cuts is not None else None
    res = solve_ilp(ilp_problem(profile, tables, cluster, config, devices), backend=ilp_backend,
                    time_limit_s=max(0.5, time_limit_s - (dp.seconds if dp else 0.0)), warm_stage_of=warm,
                    warm_recompute=dp.recompute if warm else None,
                    upper_bound=dp.objective if warm else None)
    if res.stage_of is None:
        if warm is None:
            return None
        # the ILP found nothing better than its cutoff (the DP's objective) within the limit
        info = SolverInfo(backend=ilp_backend, status="feasible", seconds=res.seconds + dp.seconds)
        plan = make_plan(profile, tables, cluster, config, warm, devices, dp.recompute, info, fingerprint,
                         timeline=False)
        if res.status == "infeasible":  # proven: nothing beats the warm start
            info.status, info.lower_bound_ms = "optimal", info.objective_ms
        info.gap = _gap(info.objective_ms, info.lower_bound_ms)
        return plan
    info = SolverInfo(backend=ilp_backend, status=res.status, seconds=res.seconds + (dp.seconds if dp else 0.0))
    plan = make_plan(profile, tables, cluster, config, res.stage_of, devices, res.recompute, info, fingerprint,
                     timeline=False)
    if not plan.feasible:  # within the ILP's un-rounded bytes of a limit: never report a plan that does not fit
        if warm is None:
            return None
        plan = make_plan(profile, tables, cluster, config, warm, devices, dp.recompute, info, fingerprint,
                         timeline=False)
        info.status, res.bound = "feasible", None
    info.lower_bound_ms = min(res.bound, info.objective_ms) if res.bound is not None else None
    info.gap = _gap(info.objective_ms, info.lower_bound_ms)
    return plan


def _gap(objective: float | None, bound: float | None) -> float | None:
    if objective is None or bound is None or objective <= 0:
        return None
    gap = (objective - bound) / objective
    return 0.0 if gap < 1e-9 else gap  # float noise between the solver's sums and the re-scored plan


def validate(profile: Profile, cluster: Cluster, config: TrainConfig) -> None:
    S = cluster.num_devices * config.virtual_stages
    if len(profile.nodes) < S:
        raise PipeplanError(f"the model has {len(profile.nodes)} layers but {config.schedule} on "
                            f"{cluster.num_devices} devices needs {S} stages; use at most "
                            f"{len(profile.nodes) // config.virtual_stages} devices, or profile the model at a "
                            "finer granularity (pipeplan profile --granularity op)")


def solve_once(profile: Profile, cluster: Cluster, config: TrainConfig) -> Plan | None:
    """Best feasible plan over micro-batch counts and device orders; None if nothing fits."""
    validate(profile, cluster, config)
    start = time.perf_counter()
    options = microbatch_options(config, cluster.num_devices)
    orders = device_orders(cluster, config)
    budget = config.time_limit_s / (len(options) * len(orders))
    best = None
    fingerprint = profile.fingerprint()
    for M, mbs in options:
        cfg = dataclasses.replace(config, num_microbatches=M, micro_batch_size=mbs, global_batch=None)
        prof = scale_profile(profile, mbs)
        tables = build_tables(prof)
        for order in orders:
            plan = solve_fixed(prof, tables, cluster, cfg, stage_devices(cluster.num_devices, cfg, order), budget,
                               fingerprint)
            # candidates are ranked by the closed form the solvers minimise (an upper bound on the
            # 1F1B makespan); simulating every (M, order) candidate would cost a timeline each
            if plan is not None and plan.feasible and (best is None or
                                                       plan.solver.objective_ms < best.solver.objective_ms):
                best = plan
    if best is not None:
        with_timeline(best)
        best.solver.seconds = time.perf_counter() - start
    return best


def solve(profile: Profile, cluster: Cluster, config: TrainConfig) -> Plan:
    """The fastest plan that fits, or Plan(feasible=False) with a Diagnosis saying why and what would fit.

    The solvers minimise the closed form (solver.objective_ms); the plan's step time is its simulated
    makespan. The baselines are scored the same way, and should one of them simulate faster than the
    solver's plan (the closed form charges sends serially and is only an estimate for GPipe and the
    zero-bubble schedules), that partition is returned instead, with solver.backend naming it and
    status "heuristic": pipeplan never recommends a plan its own timeline shows to be slower than a
    baseline it lists next to it.
    """
    plan = solve_once(profile, cluster, config)
    if plan is None:
        from planner.diagnose import diagnose

        return diagnose(profile, cluster, config)
    plan.config = dataclasses.replace(plan.config, global_batch=_given_global_batch(plan, config))
    try:
        S = cluster.num_devices * plan.config.virtual_stages
        bl = {name: evaluate_partition(profile, cluster, plan.config, parts, backend=name,
                                       fingerprint=plan.profile_fingerprint)
              for name, parts in baseline_partitions(profile, S).items()}
    except PipeplanError:
        plan.baselines = {}
        return plan
    baselines = {name: (p.step_time_ms if p.feasible else None) for name, p in bl.items()}
    plan.baselines = baselines
    faster = [(p.step_time_ms, name) for name, p in bl.items()
              if p.feasible and p.step_time_ms < plan.step_time_ms * (1 - 1e-9)]
    if faster:
        name = min(faster)[1]
        found = plan.solver
        plan = bl[name]
        plan.config = dataclasses.replace(plan.config, global_batch=_given_global_batch(plan, config))
        plan.baselines = baselines
        plan.solver = SolverInfo(backend=name, status="heuristic", objective_ms=plan.solver.objective_ms,
                                 lower_bound_ms=found.lower_bound_ms, seconds=found.seconds,
                                 gap=_gap(plan.solver.objective_ms, found.lower_bound_ms))
    return plan


def _given_global_batch(plan: Plan, config: TrainConfig) -> int | None:
    """config.global_batch when the plan's micro-batches add up to it (the CLI and app show it)."""
    if config.global_batch is not None and \
            plan.config.num_microbatches * plan.config.micro_batch_size == config.global_batch:
        return config.global_batch
    return None
