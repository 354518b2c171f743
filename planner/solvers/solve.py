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
from planner.costmodel.inference import InferencePlan
from planner.solvers import diagnose
from planner.solvers.baselines import baseline_plans
from planner.solvers.search import relative_gap, solve_once
from profiler.profile import Profile


def solve(profile: Profile, cluster: Cluster, config: TrainConfig) -> Plan | InferencePlan:
    """The fastest plan that fits, or Plan(feasible=False) with a Diagnosis saying why and what would fit.
    In mode "inference", the InferencePlan of planner.solvers.inference (PipeplanError when nothing fits).

    The plan is the best found under the simulator: its step_time_ms (= solver.objective_ms) is its
    simulated makespan and solver.lower_bound_ms bounds the simulated step of every plan in the search
    space (planner.solvers.exact). The baselines are scored the same way; should one of them simulate
    faster than the solver's plan (possible only where no proof closed), that partition is returned
    instead, with solver.backend naming it and status "feasible" against the same bound.
    """
    from planner.costmodel.parallel import is_mesh

    if config.mode == "inference":  # forward only: throughput or latency (planner.solvers.inference)
        from planner.solvers.inference import solve_inference

        return solve_inference(profile, cluster, config.inference)
    if is_mesh(config):
        return solve_mesh(profile, cluster, config)
    plan = solve_once(profile, cluster, config)
    if plan is None:
        return diagnose.diagnose(profile, cluster, config)
    return _with_baselines(plan, profile, cluster, config)


def solve_mesh(profile: Profile, cluster: Cluster, config: TrainConfig, *, baselines: bool = True,
               diagnose_infeasible: bool = True) -> Plan:
    """solve() for data or tensor parallelism: `cluster` is the whole mesh of pp x dp x tp devices in rank
    order (planner.costmodel.parallel). For each micro-batch option, the pipeline solvers plan one GPU's
    share of the profile (rank_profile) on one device per pipeline rank (pipeline_cluster); the best plan
    is put back on the mesh (to_mesh_plan). Its profile_fingerprint is the user's profile's. When nothing
    fits, the diagnosis is the hybrid one (planner.solvers.hybrid.mesh_diagnosis): what would fit among
    more GPUs, more TP, FSDP and recompute."""
    from planner.costmodel.microbatches import microbatch_options, scale_profile
    from planner.costmodel.parallel import check_mesh, pipeline_cluster, rank_profile, to_mesh_plan

    mesh = check_mesh(cluster, config)
    pipe = pipeline_cluster(cluster, mesh)
    fingerprint = profile.fingerprint()
    best = None
    for M, mbs in microbatch_options(config, mesh.pp):
        cfg = dataclasses.replace(config, num_microbatches=M, micro_batch_size=mbs, global_batch=None)
        rank = rank_profile(scale_profile(profile, mbs), cfg, cluster, mesh)
        plan = solve_once(rank, pipe, cfg, fingerprint=fingerprint)
        if plan is not None and (best is None or plan.step_time_ms < best[0].step_time_ms):
            best = (plan, rank)
    if best is None:
        from planner.contracts.plan import Diagnosis

        cfg = config if config.num_microbatches is not None else dataclasses.replace(
            config, num_microbatches=config.global_batch // config.micro_batch_size, global_batch=None)
        if diagnose_infeasible:
            from planner.solvers.hybrid import mesh_diagnosis

            diag = mesh_diagnosis(profile, cluster, config)
        else:
            diag = Diagnosis(message=f"no partition fits in memory on pp {mesh.pp} x dp {mesh.dp} x tp {mesh.tp}")
        return Plan(model=profile.model, profile_fingerprint=fingerprint, cluster=cluster, config=cfg,
                    feasible=False, solver=SolverInfo(backend=config.solver, status="infeasible"), diagnosis=diag)
    plan, rank = best
    if baselines:
        plan = _with_baselines(plan, rank, pipe, config)
    else:
        plan.config = dataclasses.replace(plan.config, global_batch=_given_global_batch(plan, config))
    return to_mesh_plan(plan, cluster, plan.config, rank, mesh)


def _with_baselines(plan: Plan, profile: Profile, cluster: Cluster, config: TrainConfig) -> Plan:
    """The plan with its baselines scored (and one of them returned should it simulate faster)."""
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
