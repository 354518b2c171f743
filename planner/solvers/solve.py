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

    The plan is the best found under the simulator: its step_time_ms (= solver.objective_ms) is its
    simulated makespan and solver.lower_bound_ms bounds the simulated step of every plan in the search
    space (planner.solvers.exact). The baselines are scored the same way; should one of them simulate
    faster than the solver's plan (possible only where no proof closed), that partition is returned
    instead, with solver.backend naming it and status "feasible" against the same bound.
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
        lower = found.lower_bound_ms
        if lower is not None:
            lower = min(lower, plan.step_time_ms)
        plan.solver = SolverInfo(backend=name, status="feasible", objective_ms=plan.step_time_ms,
                                 lower_bound_ms=lower, seconds=found.seconds, note=found.note,
                                 gap=relative_gap(plan.step_time_ms, lower))
        if plan.solver.gap == 0.0:
            plan.solver.status = "optimal"
    return plan


def _given_global_batch(plan: Plan, config: TrainConfig) -> int | None:
    """config.global_batch when the plan's micro-batches add up to it (the CLI and app show it)."""
    if config.global_batch is not None and \
            plan.config.num_microbatches * plan.config.micro_batch_size == config.global_batch:
        return config.global_batch
    return None
