"""Score any partition with the cost model and build the Plan for it.

Every Plan pipeplan returns (optimal, baseline, manual) is built here, so its
numbers come from one set of formulas (planner/costmodel/cost.py, planner/costmodel/memory.py).
"""

from __future__ import annotations

import dataclasses

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Diagnosis, Plan, SolverInfo, StagePlan
from planner.costmodel.cost import (
    CostTables,
    assignment_bytes,
    boundary_comm_ms,
    bubble_fraction,
    build_tables,
    predicted_step_time_ms,
    speeds,
    stage_compute_ms,
    stage_devices,
    stage_optimizer_ms,
)
from planner.costmodel.memory import device_memory, stage_memory_bytes
from planner.pipeline.schedules import in_flight_microbatches
from profiler.gpus import GiB
from profiler.profile import Profile


def gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def build_stages(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                 stage_of: list[int], devices: list[int], recompute: list[bool]) -> list[StagePlan]:
    """The StagePlans of an assignment (config.num_microbatches must be set)."""
    S = len(devices)
    P = cluster.num_devices
    cost = assignment_bytes(tables, stage_of, S)
    in_flight = in_flight_microbatches(config.schedule, P, config.num_microbatches, config.virtual_stages)
    speed = speeds(cluster, profile)
    stages = []
    for s in range(S):
        ns = cost.stage_nodes[s]
        device = cluster.devices[devices[s]]
        fwd, bwd, b_in, w = stage_compute_ms(float(tables.fwd[ns].sum()), float(tables.bwd[ns].sum()),
                                             float(tables.bwd_weight[ns].sum()), speed[devices[s]], recompute[s],
                                             device.action_overhead_ms)
        if s < S - 1:
            out_b, grad_b = cost.fwd_bytes[s], cost.grad_bytes[s]
            comm_f = boundary_comm_ms(cluster, devices[s], devices[s + 1], out_b, cost.fwd_tensors[s])
            comm_b = boundary_comm_ms(cluster, devices[s + 1], devices[s], grad_b, cost.grad_tensors[s])
        else:
            out_b, comm_f, comm_b = 0, 0.0, 0.0
        mem = stage_memory_bytes(param_count=cost.param_count[s],
                                 activation_bytes=float(tables.activation[ns].sum()) + cost.saved_copy_bytes[s],
                                 input_bytes=cost.input_bytes[s], relay_bytes=cost.relay_bytes[s],
                                 in_flight=in_flight[s], config=config, profile_dtype=tables.dtype,
                                 recompute=recompute[s], largest_layer_params=int(tables.params.max(initial=0)),
                                 output_bytes=cost.held_output_bytes[s])
        stages.append(StagePlan(
            index=s, device=devices[s], node_ids=[tables.ids[k] for k in ns], fwd_ms=fwd, bwd_ms=bwd,
            bwd_input_ms=b_in, bwd_weight_ms=w, comm_out_ms=comm_f, comm_out_bytes=int(out_b), comm_grad_ms=comm_b,
            relay_bytes=int(cost.relay_bytes[s]), input_bytes=int(cost.input_bytes[s]), recompute=bool(recompute[s]),
            in_flight=in_flight[s], memory=mem, memory_limit_bytes=cluster.devices[devices[s]].memory_bytes,
            param_count=cost.param_count[s],
            optimizer_ms=stage_optimizer_ms(float(tables.optimizer[ns].sum()), config.optimizer, speed[devices[s]])))
    return stages


def device_memory_bytes(stages: list[StagePlan], reserve_bytes: int) -> dict[int, int]:
    """Peak bytes per device: its stages' memory, with the reserve counted once (memory.device_memory).
    reserve_bytes is the config's; every stage's StageMemory already holds it."""
    on: dict[int, list] = {}
    for st in stages:
        on.setdefault(st.device, []).append(st.memory)
    return {d: device_memory(ms).total for d, ms in on.items()}


def memory_problems(stages: list[StagePlan], cluster: Cluster, config: TrainConfig) -> list[tuple[int, int]]:
    """(device, bytes over its limit) for every device that does not fit."""
    used = device_memory_bytes(stages, config.reserve_bytes)
    return [(d, u - cluster.devices[d].memory_bytes) for d, u in sorted(used.items())
            if u > cluster.devices[d].memory_bytes]


def step_time_of(stages: list[StagePlan], config: TrainConfig, num_devices: int) -> float:
    return predicted_step_time_ms([s.fwd_ms for s in stages], [s.bwd_ms for s in stages],
                                  [s.comm_out_ms + s.comm_grad_ms for s in stages], config.num_microbatches,
                                  config.schedule, num_devices, config.virtual_stages,
                                  [s.bwd_weight_ms for s in stages])


def make_plan(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
              stage_of: list[int], devices: list[int], recompute: list[bool], solver: SolverInfo,
              fingerprint: str | None = None, *, timeline: bool = True) -> Plan:
    """A Plan for this assignment; feasible=False (with the over-limit devices named) if memory does not fit.

    solver.objective_ms is set to the closed form (cost.predicted_step_time_ms), the number the DP
    and the ILP minimise. With timeline=True, step_time_ms and bubble_fraction are the simulated
    timeline's makespan and bubble (see with_timeline); with timeline=False they hold the closed form,
    for callers that rank many candidates and simulate only the winner.
    """
    stages = build_stages(profile, tables, cluster, config, stage_of, devices, recompute)
    P = cluster.num_devices
    closed = step_time_of(stages, config, P)
    solver.objective_ms = closed
    over = memory_problems(stages, cluster, config)
    diagnosis = None
    if over:
        problems = [f"device {d} ({cluster.devices[d].name}) needs {gib(cluster.devices[d].memory_bytes + b)}, "
                    f"has {gib(cluster.devices[d].memory_bytes)}: {gib(b)} over" for d, b in over]
        diagnosis = Diagnosis(message="this partition does not fit in memory", problems=problems)
    plan = Plan(model=profile.model, profile_fingerprint=fingerprint or profile.fingerprint(), cluster=cluster,
                config=config, feasible=not over, stages=stages, solver=solver, diagnosis=diagnosis)
    _set_step(plan, closed, bubble_fraction([s.fwd_ms for s in stages], [s.bwd_ms for s in stages],
                                            config.num_microbatches, P, closed))
    return with_timeline(plan) if timeline else plan


def _set_step(plan: Plan, step_ms: float, bubble: float) -> None:
    cfg = plan.config
    plan.step_time_ms = step_ms
    plan.bubble_fraction = bubble
    plan.throughput_samples_per_s = cfg.samples_per_step * cfg.data_parallel / (step_ms / 1000.0) \
        if step_ms > 0 else None


def with_timeline(plan: Plan) -> Plan:
    """Set the plan's step time, throughput and bubble from its simulated timeline, in place.

    The timeline is the truth: the closed form (kept in plan.solver.objective_ms) is exact for
    uniform stages, an upper bound for 1F1B and only an estimate for the other schedules
    (docs/ilp.md, "Objective and simulated step time"), and the app headlines the makespan of the
    timeline it draws, which is this number.
    """
    from planner.pipeline.simulator import simulate

    makespan, bubble = simulate(plan, makespan_only=True)  # the timeline's numbers, without its events
    _set_step(plan, makespan, bubble)
    return plan


def choose_recompute(profile: Profile, tables: CostTables, cluster: Cluster, config: TrainConfig,
                     stage_of: list[int], devices: list[int]) -> list[bool]:
    """Per-stage recomputation for config.recompute: all off, all on, or (auto) on exactly where
    a device would not fit otherwise, largest activation saving first."""
    S = len(devices)
    if config.recompute != "auto" or True not in config.recompute_choices():
        return [config.recompute == "on"] * S
    recompute = [False] * S
    stages = build_stages(profile, tables, cluster, config, stage_of, devices, recompute)
    over = dict(memory_problems(stages, cluster, config))
    if not over:
        return recompute
    on = build_stages(profile, tables, cluster, config, stage_of, devices, [True] * S)
    for d, excess in over.items():
        saving = sorted(((stages[s].memory.activations - on[s].memory.activations, s)
                         for s in range(S) if devices[s] == d), reverse=True)
        for gain, s in saving:
            if excess <= 0:
                break
            if gain > 0:
                recompute[s] = True
                excess -= gain
    return recompute


def evaluate_partition(profile: Profile, cluster: Cluster, config: TrainConfig, stage_node_ids: list[list[str]], *,
                       devices: list[int] | None = None, recompute: list[bool] | None = None,
                       backend: str = "manual", fingerprint: str | None = None) -> Plan:
    """Score a given partition (node ids per stage, pipeline order) with the cost model.

    devices: device index of every stage (default: the schedule's placement on the cluster order).
    recompute: per stage (default from config.recompute; "auto" turns it on only where needed).
    fingerprint: profile.fingerprint(), if the caller has it already (it costs a JSON dump of the profile).

    With data or tensor parallelism (config.data_parallel * config.tensor_parallel > 1) the cluster is the
    whole mesh (planner.costmodel.parallel): the partition is scored on one GPU's share of the profile
    (rank_profile) on one device per pipeline rank, and `devices` (if given) name each stage's first
    device in the mesh (parallel.pipeline_devices).
    """
    from planner.costmodel.parallel import is_mesh

    if not is_mesh(config):
        return evaluate_pipeline_partition(profile, cluster, config, stage_node_ids, devices=devices,
                                           recompute=recompute, backend=backend, fingerprint=fingerprint)
    from planner.costmodel.microbatches import microbatch_options, scale_profile
    from planner.costmodel.parallel import check_mesh, pipeline_cluster, pipeline_devices, rank_profile, to_mesh_plan

    mesh = check_mesh(cluster, config)
    pipe = pipeline_cluster(cluster, mesh)
    if devices is not None:
        first = pipeline_devices(mesh.pp, mesh.dp, mesh.tp)
        bad = [d for d in devices if d not in first]
        if bad:
            raise PipeplanError(f"device {bad[0]} is not the first device of a pipeline rank's TP group; with "
                                f"dp {mesh.dp} x tp {mesh.tp} stages run on devices {first}")
        devices = [first.index(d) for d in devices]
    fingerprint = fingerprint or profile.fingerprint()
    best, best_rank = None, None
    for M, mbs in microbatch_options(config, mesh.pp):
        cfg = dataclasses.replace(config, num_microbatches=M, micro_batch_size=mbs, global_batch=None)
        rank = rank_profile(scale_profile(profile, mbs), cfg, cluster, mesh)
        plan = evaluate_pipeline_partition(rank, pipe, cfg, stage_node_ids, devices=devices, recompute=recompute,
                                           backend=backend, fingerprint=fingerprint)
        if best is None or (plan.feasible, -plan.step_time_ms) > (best.feasible, -best.step_time_ms):
            best, best_rank = plan, rank
    return to_mesh_plan(best, cluster, best.config, best_rank, mesh)


def evaluate_pipeline_partition(profile: Profile, cluster: Cluster, config: TrainConfig,
                                stage_node_ids: list[list[str]], *, devices: list[int] | None = None,
                                recompute: list[bool] | None = None, backend: str = "manual",
                                fingerprint: str | None = None) -> Plan:
    """evaluate_partition on one pipeline: `cluster` has one device per pipeline rank and `profile` is what
    one GPU runs (for a mesh: parallel.rank_profile); the solvers call this one."""
    from planner.costmodel.microbatches import microbatch_options, scale_profile

    P = cluster.num_devices
    S = P * config.virtual_stages
    if len(stage_node_ids) != S:
        raise PipeplanError(f"the partition has {len(stage_node_ids)} stages; {config.schedule} on {P} devices "
                            f"with {config.virtual_stages} stage(s) per device needs {S}")
    best = None
    fingerprint = fingerprint or profile.fingerprint()
    for M, mbs in microbatch_options(config, P):
        cfg = dataclasses.replace(config, num_microbatches=M, micro_batch_size=mbs, global_batch=None)
        prof = scale_profile(profile, mbs)
        plan = _evaluate_one(prof, cluster, cfg, stage_node_ids, devices, recompute, backend, fingerprint)
        # ranked by the closed form, as solve() ranks micro-batch counts; only the winner is simulated
        if best is None or (plan.feasible, -plan.solver.objective_ms) > (best.feasible, -best.solver.objective_ms):
            best = plan
    return with_timeline(best)


def _evaluate_one(profile, cluster, config, stage_node_ids, devices, recompute, backend, fingerprint) -> Plan:
    tables = build_tables(profile)
    S = len(stage_node_ids)
    stage_of = [-1] * tables.num_nodes
    for s, ids in enumerate(stage_node_ids):
        if not ids:
            raise PipeplanError(f"stage {s} of the partition is empty: every stage needs at least one layer")
        for nid in ids:
            if nid not in tables.position:
                raise PipeplanError(f"stage {s} names layer {nid!r}, which is not in the profile")
            if stage_of[tables.position[nid]] != -1:
                raise PipeplanError(f"layer {nid!r} is assigned to two stages")
            stage_of[tables.position[nid]] = s
    missing = [tables.ids[k] for k, s in enumerate(stage_of) if s == -1]
    if missing:
        raise PipeplanError(f"{len(missing)} layer(s) are in no stage, e.g. {missing[0]!r}: assign every layer")
    for t in tables.tensors:
        for c in t.consumers:
            if stage_of[c] < stage_of[t.producer]:
                raise PipeplanError(f"layer {tables.ids[c]!r} (stage {stage_of[c]}) reads the output of "
                                    f"{tables.ids[t.producer]!r} (stage {stage_of[t.producer]}): "
                                    "data must flow forward through the stages")
    devs = devices if devices is not None else stage_devices(cluster.num_devices, config)
    if len(devs) != S or any(not (0 <= d < cluster.num_devices) for d in devs):
        raise PipeplanError(f"devices must list one device index in 0..{cluster.num_devices - 1} per stage")
    rec = recompute if recompute is not None else choose_recompute(profile, tables, cluster, config, stage_of, devs)
    if len(rec) != S:
        raise PipeplanError(f"recompute must have one flag per stage ({S})")
    return make_plan(profile, tables, cluster, config, stage_of, list(devs), [bool(r) for r in rec],
                     SolverInfo(backend=backend, status="evaluated"), fingerprint, timeline=False)
