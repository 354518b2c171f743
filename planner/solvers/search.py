"""The search for one TrainConfig: the best feasible plan over micro-batch counts, device orders and
stage cuts (solve_once), each (M, order) by the exact chain DP or the ILP (solve_fixed).

Backend choice ("auto"): the exact DP when the layer graph is a chain and each
device runs one stage (it proves optimality itself, in a fraction of the ILP's
time); otherwise the ILP on HiGHS, warm-started and bounded by the DP's best
contiguous partition. "highs"/"cbc" force the ILP (still warm-started); "dp"
forces the DP (on a non-chain DAG it returns the best contiguous partition,
status "heuristic"). planner.solvers.solve (the entry point) and planner.solvers.diagnose both call
solve_once; neither imports the other's callers.
"""

from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan, SolverInfo
from planner.costmodel.cost import (
    CostTables,
    boundary_comm_ms,
    build_tables,
    link_coefficients,
    speeds,
    stage_devices,
    stage_optimizer_ms,
)
from planner.costmodel.memory import even_chunk_limit_bytes, stages_budget_bytes
from planner.costmodel.microbatches import microbatch_options, scale_profile
from planner.pipeline.schedules import in_flight_microbatches, schedule_spec
from planner.solvers.baselines import baseline_partitions
from planner.solvers.coarsen import block_size, coarsen, refine_cuts
from planner.solvers.dp import TABLE_BUDGET_BYTES, ChainProblem, cut_bytes, cut_tensors, solve_chain
from planner.solvers.evaluate import evaluate_pipeline_partition, make_plan, with_timeline
from planner.solvers.ilp import ILPProblem, enumerate_by_bound, solve_ilp
from planner.solvers.path_search import chunked_chain_finish, fits_tables
from profiler.profile import Profile

MAX_DEVICE_ORDERS = 24


def chain_problem(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                  devices: list[int], stage_limit: list[float] | None = None) -> ChainProblem:
    """The DP's problem for these stages. With several stages per device (Interleaved1F1B, ZBV) pass
    stage_limit (the caller's split of each device's memory); in-flight counts follow the schedule."""
    S, P = len(devices), cluster.num_devices
    sp = speeds(cluster, profile)
    fwd_cut, grad_cut = cut_bytes(tables)
    fwd_n, grad_n = cut_tensors(tables)
    comm, per_link = [], {}
    for s in range(S):
        if s == S - 1:
            comm.append(np.zeros(tables.num_nodes + 1))
            continue
        a, b = devices[s], devices[s + 1]
        key = "same" if a == b else ("intra" if cluster.devices[a].node == cluster.devices[b].node else "inter")
        if key not in per_link:  # one array per distinct link: the DP shares work between equal stages
            per_link[key] = np.array([boundary_comm_ms(cluster, a, b, fb, int(fn))
                                      + boundary_comm_ms(cluster, b, a, gb, int(gn))
                                      for fb, gb, fn, gn in zip(fwd_cut, grad_cut, fwd_n, grad_n)])
        comm.append(per_link[key])
    return ChainProblem(tables=tables, num_microbatches=config.num_microbatches, schedule=config.schedule,
                        stage_speed=[sp[d] for d in devices],
                        stage_limit=stage_limit if stage_limit is not None
                        else [cluster.devices[d].memory_bytes for d in devices],
                        stage_in_flight=in_flight_microbatches(config.schedule, P, config.num_microbatches,
                                                               config.virtual_stages),
                        recompute_options=config.recompute_choices(), comm_ms_per_cut=comm, config=config,
                        stage_overhead=[cluster.devices[d].action_overhead_ms for d in devices])


def ilp_problem(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                devices: list[int]) -> ILPProblem:
    S, P = len(devices), cluster.num_devices
    sp = speeds(cluster, profile)
    links = [link_coefficients(cluster, devices[b], devices[b + 1]) for b in range(S - 1)]
    # the ILP's stage memory leaves the reserve out; a device holds it once. The ILP cannot round to
    # whole bytes as stage_memory_bytes does; make_plan re-checks every plan it returns.
    limits = {d: stages_budget_bytes(cluster.devices[d].memory_bytes, config.reserve_bytes) for d in set(devices)}
    return ILPProblem(tables=tables, num_microbatches=config.num_microbatches, schedule=config.schedule,
                      virtual_stages=config.virtual_stages, stage_device=devices,
                      stage_speed=[sp[d] for d in devices], device_limit=limits,
                      stage_in_flight=in_flight_microbatches(config.schedule, P, config.num_microbatches,
                                                             config.virtual_stages),
                      recompute_options=config.recompute_choices(), link_latency_ms=[lat for lat, _ in links],
                      link_ms_per_byte=[per_byte for _, per_byte in links], config=config,
                      stage_overhead=[cluster.devices[d].action_overhead_ms for d in devices])


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


@dataclasses.dataclass(slots=True)
class _Warm:
    """A feasible starting plan for the ILP: its assignment, recompute flags and closed-form objective."""

    stage_of: list[int]
    recompute: list[bool]
    objective: float
    source: str
    seconds: float


def chunk_split_limits(cluster: Cluster, config: TrainConfig, devices: list[int]) -> list[float]:
    """Per-stage memory limits that split each device's memory (less the reserve, held once) evenly
    between its stages: stages that each fit their share fit their device together."""
    return [even_chunk_limit_bytes(cluster.devices[d].memory_bytes, config.reserve_bytes, devices.count(d))
            for d in devices]


def multi_chunk_warm_start(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                           devices: list[int], time_limit_s: float, fingerprint: str | None = None) -> _Warm | None:
    """The best feasible plan among the baseline partitions and a contiguous DP over all P*v stages
    with each device's memory split evenly between its chunks (conservative, but what it finds fits);
    None if none of them fits. Every candidate is re-scored and memory-checked by make_plan."""
    from planner.solvers.evaluate import choose_recompute

    start = time.perf_counter()
    S = len(devices)
    candidates: list[tuple[list[int], list[bool], str]] = []
    try:
        parts = baseline_partitions(profile, S)
    except PipeplanError:
        parts = {}
    for name, stages in parts.items():
        stage_of = [0] * tables.num_nodes
        for k, ids in enumerate(stages):
            for nid in ids:
                stage_of[tables.position[nid]] = k
        if any(stage_of[c] < stage_of[t.producer] for t in tables.tensors for c in t.consumers):
            continue  # the profile's listed order is not the tables' topological order here
        candidates.append((stage_of, choose_recompute(profile, tables, cluster, config, stage_of, devices), name))
    dp = solve_chain(chain_problem(profile, tables, cluster, config, devices,
                                   chunk_split_limits(cluster, config, devices)),
                     time_limit_s=max(0.05, time_limit_s / 4))
    if dp.cuts is not None:
        candidates.append((cuts_to_stage_of(dp.cuts), dp.recompute, "dp"))
    best = None
    for stage_of, rec, name in candidates:
        plan = make_plan(profile, tables, cluster, config, stage_of, devices, rec,
                         SolverInfo(backend=name, status="evaluated"), fingerprint, timeline=False)
        if plan.feasible and (best is None or plan.solver.objective_ms < best.objective):
            best = _Warm(stage_of, list(rec), plan.solver.objective_ms, name, 0.0)
    if best is not None:
        best.seconds = time.perf_counter() - start
    return best


FINISH_SHARE = 0.5
"""Most of a (micro-batch count, device order) budget the exact finish may take ..."""
FINISH_MAX_S = 1.0
"""... and at most this long, unless the budget is over 10 s (then a tenth of it)."""
ENUMERATE_SHARE = 0.75
"""With several chunks per device (Interleaved1F1B, ZBV, ...): the proxy takes a quarter of the budget,
the enumeration by the path bounds this share of what is left, the refinement the rest. One stage per
device off a chain keeps half for the proxy and the finish share for the enumeration (the 200-node
DAG's 5 s target)."""
CHAIN_SEARCH_SHARE = 0.2
"""Of the (M, order) budget, what path_search (several chunks per device on a chain) may take before the
proxy and the ILP enumeration go on from where it stopped."""


def solve_fixed(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                devices: list[int], time_limit_s: float, fingerprint: str | None = None) -> Plan | None:
    """The best plan under the simulator with this stage -> device map and micro-batch count; None if
    nothing fits. Its step_time_ms is the simulated makespan, and solver.objective_ms the same number;
    solver.lower_bound_ms bounds the simulated step of every plan with this map and count
    (planner.solvers.exact): on a chain with one stage per device the exact finish proves it, elsewhere
    the generic bound holds and the status is "feasible" unless the plan reaches it."""
    from planner.pipeline.schedules import chunks_per_device
    from planner.solvers.exact import chain_finish, generic_lower_bound, plan_path, seed_paths, sync_ms

    start = time.perf_counter()
    finish_s = min(time_limit_s * FINISH_SHARE, max(FINISH_MAX_S, time_limit_s / 10))
    chain_exact = config.virtual_stages == 1 and tables.is_chain()
    # off a chain: (several chunks per device on a chain: first path_search, CHAIN_SEARCH_SHARE, which often
    # proves the plan and ends here) half the budget for the proxy (a quarter with several chunks per
    # device), then the enumeration (its finish share; with several chunks, ENUMERATE_SHARE of what is
    # left), then the refinement
    multi = schedule_spec(config.schedule).multi_chunk and len(devices) > cluster.num_devices
    sp = speeds(cluster, profile)
    if not chain_exact:
        scored: dict[tuple, Plan] = {}

        def score(stage_of: list[int], rec: list[bool]) -> float | None:
            p = make_plan(profile, tables, cluster, config, stage_of, devices, rec,
                          SolverInfo(backend="x", status="feasible"), fingerprint)
            scored.clear()
            scored[(tuple(stage_of), tuple(rec))] = p
            return p.step_time_ms if p.feasible else None

        def path_of(stage_of: list[int], rec: list[bool]):
            p = scored.get((tuple(stage_of), tuple(rec)))
            return plan_path(p) if p is not None and p.feasible else None

        sync = sync_ms(tables, cluster, devices)
        # the path bounds (exact.py): the device paths, the simulator's critical paths under a few
        # stage-time shapes, and the incumbent's own critical path; each scored plan adds its own
        paths = seed_paths(config.schedule, cluster.num_devices, config.num_microbatches,
                           chunks_per_device(config.schedule, config.virtual_stages))
        found, bound, proven = None, -float("inf"), False
        if tables.is_chain() and fits_tables(tables.num_nodes, len(devices), len(config.recompute_choices())):
            # several stages per device on a chain: first the branch and bound over the cuts (path_search),
            # from the baselines' partitions; most small cases close here and need no ILP at all. Otherwise
            # the proxy and the ILP enumeration go on from its best plan with the rows that mattered to it,
            # and the larger of the two bounds holds.
            best, best_ms, bound, proven, paths = chunked_chain_finish(
                chain_problem(profile, tables, cluster, config, devices), cluster, devices, paths,
                _starts(profile, tables, cluster, config, devices, None), score, path_of,
                time_limit_s * CHAIN_SEARCH_SHARE, sync)
            found = None if best is None else (best[0], best[1], best_ms - sync)
            bound -= sync
        proxy = None
        if not proven:
            # the closed-form proxy: a quarter of the budget with several chunks per device, else half
            proxy = _solve_proxy(profile, tables, cluster, config, devices, time_limit_s / (4 if multi else 2),
                                 fingerprint)
            if proxy is not None:
                with_timeline(proxy)
            if proxy is not None and proxy.feasible:
                paths = [*paths, plan_path(proxy)]
            prob = dataclasses.replace(ilp_problem(profile, tables, cluster, config, devices),
                                       objective="stage_bound",
                                       split_backward=schedule_spec(config.schedule).split_backward,
                                       optimizer_factor=stage_optimizer_ms(1.0, config.optimizer, 1.0)
                                       if float(tables.optimizer.sum()) > 0 else 0.0, paths=paths)

            def pipeline_score(so: list[int], rec: list[bool]) -> float | None:
                ms = score(so, rec)
                return None if ms is None else ms - sync  # the ILP's bound leaves the optimizer's sync out

            # the stage-bound ILP, enumerated by its bound and scored by the simulator
            # (ilp.enumerate_by_bound): with several chunks ENUMERATE_SHARE of what is left, else the finish share
            share = max(0.2, (ENUMERATE_SHARE * (time_limit_s - (time.perf_counter() - start))) if multi
                        else min(finish_s, time_limit_s - (time.perf_counter() - start)))
            incumbent = min(proxy.step_time_ms - sync if proxy is not None else float("inf"),
                            found[2] if found is not None else float("inf"))
            more, ilp_bound, _ = enumerate_by_bound(
                prob, pipeline_score, backend="cbc" if config.solver == "cbc" else "highs", time_limit_s=share,
                incumbent_ms=incumbent, path_of=path_of)
            found = more if more is not None else found
            bound = max(bound, ilp_bound)
        lower = max(generic_lower_bound(tables, cluster, config, devices, sp), bound + sync)
        plan = proxy
        if found is not None and (plan is None or found[2] + sync < plan.step_time_ms):
            plan = make_plan(profile, tables, cluster, config, found[0], devices, found[1],
                             SolverInfo(backend=proxy.solver.backend if proxy else "path search", status="feasible"),
                             fingerprint)
        if plan is not None and relative_gap(with_timeline(plan).step_time_ms, lower) != 0.0:
            plan = _refined(profile, tables, cluster, config, devices, plan, score,
                            max(finish_s, time_limit_s - (time.perf_counter() - start)), fingerprint)
        if plan is None:
            return None
        with_timeline(plan)
        return _with_bound(plan, lower, time.perf_counter() - start)
    proxy = _solve_proxy(profile, tables, cluster, config, devices, time_limit_s - finish_s, fingerprint)
    cache: dict[tuple, float | None] = {}

    def simulate_cuts(cuts: list[int], rec: list[bool]) -> float | None:
        key = (tuple(cuts), tuple(rec))
        if key not in cache:
            p = make_plan(profile, tables, cluster, config, cuts_to_stage_of(cuts), devices, rec,
                          SolverInfo(backend="dp", status="feasible"), fingerprint, timeline=False)
            cache[key] = with_timeline(p).step_time_ms if p.feasible else None
        return cache[key]

    incumbents = []
    if proxy is not None:
        stage_of = [0] * tables.num_nodes
        for st in proxy.stages:
            for nid in st.node_ids:
                stage_of[tables.position[nid]] = st.index
        cuts = [0] + [stage_of.index(s + 1) for s in range(len(devices) - 1)] + [tables.num_nodes]
        incumbents.append((cuts, [st.recompute for st in proxy.stages]))
    try:  # the baselines' partitions too: the search never returns a plan slower than theirs
        from planner.solvers.evaluate import choose_recompute

        for ids in baseline_partitions(profile, len(devices)).values():
            ends = list(itertools.accumulate(len(p) for p in ids))
            if [tables.position[n] for p in ids for n in p] == list(range(tables.num_nodes)):
                cuts = [0] + ends
                incumbents.append((cuts, choose_recompute(profile, tables, cluster, config,
                                                          cuts_to_stage_of(cuts), devices)))
    except PipeplanError:
        pass
    prob = chain_problem(profile, tables, cluster, config, devices)
    share = max(0.05, min(finish_s, time_limit_s - (time.perf_counter() - start)))
    best, _, lower, proven = chain_finish(prob, cluster, devices, incumbents, simulate_cuts, share,
                                          extra_ms=sync_ms(tables, cluster, devices))
    if best is None:
        return None
    backend = proxy.solver.backend if proxy is not None else "dp"
    plan = make_plan(profile, tables, cluster, config, cuts_to_stage_of(best[0]), devices, best[1],
                     SolverInfo(backend=backend, status="feasible"), fingerprint)
    if not proven:
        plan = _refined(profile, tables, cluster, config, devices, plan,
                        lambda so, rec: simulate_cuts(_stage_of_cuts(so, len(devices)), rec), finish_s / 4,
                        fingerprint)
    if not proven:  # both bounds hold; the chain's is -inf when its tables were too large
        lower = max(lower, generic_lower_bound(tables, cluster, config, devices, sp))
    return _with_bound(plan, lower, time.perf_counter() - start)


def _stage_of_cuts(stage_of: list[int], S: int) -> list[int]:
    """The cuts of a monotone stage_of (a contiguous partition of the chain's order)."""
    return [0] + [stage_of.index(s + 1) for s in range(S - 1)] + [len(stage_of)]


def _plan_stage_of(tables: CostTables, plan: Plan) -> list[int]:
    stage_of = [0] * tables.num_nodes
    for st in plan.stages:
        for nid in st.node_ids:
            stage_of[tables.position[nid]] = st.index
    return stage_of


def _starts(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig, devices: list[int],
            plan: Plan | None) -> list[tuple[list[int], list[bool]]]:
    """(stage_of, recompute) of the plan (first, when there is one) and of the baselines' partitions that
    let data flow forward (torch's proposed auto_partition starts from a balanced one too): the searches
    never return a plan slower than theirs."""
    from planner.solvers.evaluate import choose_recompute

    starts = [] if plan is None else [(_plan_stage_of(tables, plan), [st.recompute for st in plan.stages])]
    try:
        for ids in baseline_partitions(profile, len(devices)).values():
            so = [0] * tables.num_nodes
            for k, part in enumerate(ids):
                for nid in part:
                    so[tables.position[nid]] = k
            if all(so[c] >= so[t.producer] for t in tables.tensors for c in t.consumers):
                starts.append((so, choose_recompute(profile, tables, cluster, config, so, devices)))
    except PipeplanError:
        pass
    return starts


def _refined(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig, devices: list[int],
             plan: Plan, score, time_limit_s: float, fingerprint: str | None) -> Plan:
    """The plan after exact.refine_by_simulation (one-node moves kept while the timeline gets faster)."""
    from planner.solvers.evaluate import choose_recompute
    from planner.solvers.exact import refine_by_simulation

    choose = lambda so: choose_recompute(profile, tables, cluster, config, so, devices)
    starts = _starts(profile, tables, cluster, config, devices, plan)
    stage_of, rec = starts[0]
    begin = time.perf_counter()
    best = (stage_of, rec, score(stage_of, rec))
    for k, (so, r) in enumerate(starts):
        left = time_limit_s - (time.perf_counter() - begin)
        if left <= 0:
            break
        new, new_rec, ms = refine_by_simulation(so, r, len(devices), tables, score, choose, left / (len(starts) - k))
        if ms is not None and (best[2] is None or ms < best[2] * (1 - 1e-12)):
            best = (new, new_rec, ms)
    if best[0] == stage_of and best[1] == rec:
        return plan
    return make_plan(profile, tables, cluster, config, best[0], devices, best[1],
                     SolverInfo(backend=plan.solver.backend, status="feasible"), fingerprint)


def _with_bound(plan: Plan, lower: float | None, seconds: float) -> Plan:
    """The plan (simulated) with its objective, bound, gap and status under the simulator."""
    info = plan.solver
    info.objective_ms = plan.step_time_ms
    info.lower_bound_ms = None if lower is None else min(lower, plan.step_time_ms)
    info.gap = relative_gap(info.objective_ms, info.lower_bound_ms)
    info.status = "optimal" if info.gap == 0.0 else "feasible"
    info.seconds = seconds
    return plan


def _solve_proxy(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                 devices: list[int], time_limit_s: float, fingerprint: str | None = None) -> Plan | None:
    """The best plan under the closed form (the proxy the DP and the ILP minimise); None if nothing fits.
    Its step_time_ms is still the closed form (solver.objective_ms); solve_fixed simulates it.

    The ILP is always warm-started and cut off by a plan known to fit (the DP's for one stage per
    device; the best of the baselines and a chunk-split DP for several), so a run that times out
    still returns that plan; None only when the ILP proved infeasibility or found nothing and no
    candidate fits."""
    backend = config.solver
    single_chunk = config.virtual_stages == 1
    chain = tables.is_chain()
    if backend == "dp" and not single_chunk:
        raise PipeplanError(f"the dp solver plans one stage per device; {config.schedule} needs the ILP "
                            "(--solver highs or cbc)")
    warm: _Warm | None = None
    proven_bound = None  # a lower bound proven before the ILP (the DP's, on a chain)
    dp_seconds = 0.0
    if single_chunk:
        dp = solve_chain(chain_problem(profile, tables, cluster, config, devices),
                         time_limit_s=time_limit_s if backend in ("auto", "dp") else time_limit_s / 2)
        dp_seconds = dp.seconds
        use_dp = backend == "dp" or (backend == "auto" and chain)
        if use_dp:
            if dp.cuts is None:
                return None
            status = ("optimal" if dp.optimal else "feasible") if chain else "feasible"
            info = SolverInfo(backend="dp", status=status, seconds=dp.seconds)
            plan = make_plan(profile, tables, cluster, config, cuts_to_stage_of(dp.cuts), devices, dp.recompute,
                             info, fingerprint, timeline=False)
            info.lower_bound_ms = dp.lower_bound if chain else None
            info.gap = relative_gap(info.objective_ms, info.lower_bound_ms)
            return plan
        if dp.cuts is not None:
            warm = _Warm(cuts_to_stage_of(dp.cuts), list(dp.recompute), dp.objective, "dp", dp.seconds)
        if chain:  # the DP is exact on a chain: its bound holds whatever the ILP does
            proven_bound = dp.lower_bound if dp.cuts is not None else None
    else:
        warm = multi_chunk_warm_start(profile, tables, cluster, config, devices, time_limit_s, fingerprint)
        dp_seconds = warm.seconds if warm is not None else 0.0
    ilp_backend = "cbc" if backend == "cbc" else "highs"
    res = solve_ilp(ilp_problem(profile, tables, cluster, config, devices), backend=ilp_backend,
                    time_limit_s=max(0.5, time_limit_s - dp_seconds),
                    warm_stage_of=warm.stage_of if warm else None,
                    warm_recompute=warm.recompute if warm else None,
                    upper_bound=warm.objective if warm else None)
    seconds = res.seconds + dp_seconds
    plan = None
    if res.stage_of is not None:
        info = SolverInfo(backend=ilp_backend, status=res.status, seconds=seconds)
        plan = make_plan(profile, tables, cluster, config, res.stage_of, devices, res.recompute, info, fingerprint,
                         timeline=False)
        if not plan.feasible:  # within the ILP's un-rounded bytes of a limit: never report a plan that does not fit
            plan = None
        elif warm is not None and warm.objective < plan.solver.objective_ms * (1 - 1e-12):
            plan = None  # the incumbent is no better than the start (float noise): keep the start
    if plan is None:
        if warm is None:
            return None  # the ILP proved infeasibility, or found nothing and no candidate fits
        # the ILP found nothing better than its cutoff (the warm start) within the limit
        info = SolverInfo(backend=ilp_backend, status="feasible", seconds=seconds)
        plan = make_plan(profile, tables, cluster, config, warm.stage_of, devices, warm.recompute, info,
                         fingerprint, timeline=False)
        if res.status == "infeasible":  # proven: nothing beats the warm start
            info.status, res.bound = "optimal", info.objective_ms
    bounds = [b for b in (res.bound, proven_bound) if b is not None]
    info = plan.solver
    info.lower_bound_ms = min(max(bounds), info.objective_ms) if bounds else None
    info.gap = relative_gap(info.objective_ms, info.lower_bound_ms)
    if info.gap == 0.0:
        info.status = "optimal"  # proven by the ILP, or by the DP on a chain (one stage per device)
    return plan


def relative_gap(objective: float | None, bound: float | None) -> float | None:
    if objective is None or bound is None or objective <= 0:
        return None
    gap = (objective - bound) / objective
    return 0.0 if gap < 1e-9 else gap  # float noise between the solver's sums and the re-scored plan


def validate(profile: Profile, cluster: Cluster, config: TrainConfig) -> None:
    S = cluster.num_devices * config.virtual_stages
    if len(profile.nodes) < S:
        raise PipeplanError(f"the model has {len(profile.nodes)} layers but {config.schedule} on "
                            f"{cluster.num_devices} devices needs {S} stages; use at most "
                            f"{len(profile.nodes) // config.virtual_stages} devices, split them between pipeline, "
                            "data and tensor parallelism (--parallel auto), or profile the model at a "
                            "finer granularity (pipeplan profile --granularity op)")


def solve_once(profile: Profile, cluster: Cluster, config: TrainConfig, *,
               fingerprint: str | None = None) -> Plan | None:
    """Best feasible plan over micro-batch counts and device orders; None if nothing fits (solve() then
    diagnoses). fingerprint: the plan's profile_fingerprint when `profile` is derived from the user's
    (a mesh's rank_profile); default profile.fingerprint()."""
    validate(profile, cluster, config)
    start = time.perf_counter()
    k = block_size(len(profile.nodes), cluster.num_devices * config.virtual_stages)
    if k > 1:
        return solve_coarsened(profile, cluster, config, k, start, fingerprint)
    best, lower = _search(profile, cluster, config, config.time_limit_s, fingerprint)
    proven = best is not None and lower is not None and relative_gap(best.step_time_ms, lower) == 0.0
    if best is not None and not proven and config.recompute == "auto" \
            and len(config.recompute_choices()) > 1:
        # no proof: make sure "auto" is never worse than all-off or all-on (each searched on its own)
        for r in ("off", "on"):
            other, _ = _search(profile, cluster, dataclasses.replace(config, recompute=r), config.time_limit_s / 4,
                               fingerprint)
            if other is not None and other.step_time_ms < best.step_time_ms:
                best = other
        best.config = dataclasses.replace(best.config, recompute=config.recompute)
    if best is not None:
        _with_bound(best, lower, time.perf_counter() - start)
    return best


def _generic(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig, order: list[int]) -> float:
    from planner.solvers.exact import generic_lower_bound

    return generic_lower_bound(tables, cluster, config, stage_devices(cluster.num_devices, config, order),
                               speeds(cluster, profile))


def _search(profile: Profile, cluster: Cluster, config: TrainConfig, time_limit_s: float,
            fingerprint: str | None = None) -> tuple[Plan | None, float | None]:
    """The plan with the least simulated step over micro-batch counts and device orders, and a lower
    bound on the simulated step of every plan in that space (None when one part has none)."""
    options = microbatch_options(config, cluster.num_devices)
    orders = device_orders(cluster, config)
    budget = time_limit_s / (len(options) * len(orders))
    best = None
    lower: float | None = float("inf")
    fingerprint = fingerprint or profile.fingerprint()
    for M, mbs in options:
        cfg = dataclasses.replace(config, num_microbatches=M, micro_batch_size=mbs, global_batch=None)
        prof = scale_profile(profile, mbs)
        tables = build_tables(prof)
        for order in orders:
            plan = solve_fixed(prof, tables, cluster, cfg, stage_devices(cluster.num_devices, cfg, order), budget,
                               fingerprint)
            if plan is None:  # nothing fits this (M, order): proven on a chain by the DP, else maybe not
                if not (cfg.virtual_stages == 1 and tables.is_chain()) and lower is not None:
                    lower = min(lower, _generic(prof, tables, cluster, cfg, order))
                continue
            b = plan.solver.lower_bound_ms
            lower = None if lower is None or b is None else min(lower, b)
            # candidates are ranked by their simulated step (solve_fixed simulates each)
            if plan.feasible and (best is None or plan.step_time_ms < best.step_time_ms):
                best = plan
    return best, lower


_COARSENED: dict[tuple[str | None, int], tuple[Profile, list[list[str]]]] = {}
"""The last coarsening, by (profile fingerprint, k): coarsening 100k layers takes ~0.4 s per call."""


def solve_coarsened(profile: Profile, cluster: Cluster, config: TrainConfig, k: int, start: float,
                    fingerprint: str | None = None) -> Plan | None:
    """solve_once on the graph coarsened into blocks of k consecutive nodes (planner.solvers.coarsen), its
    stages mapped back to the fine nodes and scored there; status "feasible" with no gap, and the note
    says how it was planned. None if nothing fits (the fine graph is re-checked)."""
    key = (fingerprint, k)
    if fingerprint is None or key not in _COARSENED:
        _COARSENED.clear()  # one entry: the diagnosis re-solves one profile many times
        _COARSENED[key] = coarsen(profile, k)
    coarse, groups = _COARSENED[key]
    found = solve_once(coarse, cluster, config)
    if found is None:
        return None
    fine_ids = {f"block{b}": ids for b, ids in enumerate(groups)}
    stages = sorted(found.stages, key=lambda st: st.index)
    parts = [[i for b in st.node_ids for i in fine_ids[b]] for st in stages]
    devices, recompute = [st.device for st in stages], [st.recompute for st in stages]
    refined = ""
    if config.virtual_stages == 1:  # one stage per device: move each cut within a block of where it fell
        cfg = found.config
        prof = scale_profile(profile, cfg.micro_batch_size)
        tables = build_tables(prof)
        order = {nid: k for k, nid in enumerate(tables.ids)}
        cuts = [0] + list(itertools.accumulate(len(p) for p in parts))
        if all(order[nid] == k for k, nid in enumerate(i for p in parts for i in p)):
            moved = refine_cuts(chain_problem(prof, tables, cluster, cfg, devices), cuts, recompute, window=k)
            if moved != cuts:
                parts = [tables.ids[moved[s]:moved[s + 1]] for s in range(len(parts))]
                refined = f", then every cut re-placed within {k} layers of where it fell"
    plan = evaluate_pipeline_partition(profile, cluster, found.config, parts, devices=devices, recompute=recompute,
                                       backend=found.solver.backend, fingerprint=fingerprint)
    if not plan.feasible:
        return None
    plan.solver = SolverInfo(
        backend=found.solver.backend, status="feasible", objective_ms=plan.solver.objective_ms,
        seconds=time.perf_counter() - start,
        note=f"coarsened: {len(profile.nodes)} layers planned as {len(groups)} blocks of {k} consecutive layers "
             f"(the exact solvers' tables would exceed {TABLE_BUDGET_BYTES / 2**30:.0f} GiB){refined}; "
             "no optimality gap is proven")
    return plan
