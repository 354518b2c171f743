"""`solve`: the optimal Plan for a Profile on a Cluster under a TrainConfig, or a diagnosis.

The search over micro-batches, device orders and cuts is planner.solvers.search; when nothing fits,
planner.solvers.diagnose says why and what would. The baselines are scored next to the plan.
"""

from __future__ import annotations

import dataclasses

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan, SolverInfo
from planner.solvers import diagnose
from planner.solvers.baselines import baseline_plans
from planner.solvers.search import relative_gap, solve_once
from profiler.profile import Profile


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
        return diagnose.diagnose(profile, cluster, config)
    plan.config = dataclasses.replace(plan.config, global_batch=_given_global_batch(plan, config))
    try:
        bl = baseline_plans(profile, cluster, plan.config, fingerprint=plan.profile_fingerprint)
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
                                 gap=relative_gap(plan.solver.objective_ms, found.lower_bound_ms))
    return plan


def _given_global_batch(plan: Plan, config: TrainConfig) -> int | None:
    """config.global_batch when the plan's micro-batches add up to it (the CLI and app show it)."""
    if config.global_batch is not None and \
            plan.config.num_microbatches * plan.config.micro_batch_size == config.global_batch:
        return config.global_batch
    return None
