"""When nothing fits: where it does not fit, by how much, and which changes would fit (each re-solved)."""

from __future__ import annotations

import dataclasses
import time

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Diagnosis, Plan, SolverInfo
from planner.costmodel.memory import bytes_per_param
from planner.solvers.evaluate import gib, memory_problems
from profiler.profile import Profile

MAX_EXTRA_DEVICES_FACTOR = 8
"""Try up to this many times the current device count when looking for the smallest that fits."""

DIAGNOSIS_TIME_FACTOR = 6.0
MIN_DIAGNOSIS_SECONDS = 30.0
"""The diagnosis re-solves many variants; it stops starting new ones after
max(MIN_DIAGNOSIS_SECONDS, DIAGNOSIS_TIME_FACTOR * time_limit_s) and says so."""


def _with_memory(cluster: Cluster, memory_bytes: int | None) -> Cluster:
    """The cluster with every device's memory set (None: effectively unlimited)."""
    mem = memory_bytes if memory_bytes is not None else 2**62
    return dataclasses.replace(cluster, devices=[dataclasses.replace(d, memory_bytes=mem) for d in cluster.devices])


def _with_devices(cluster: Cluster, n: int) -> Cluster:
    """n devices like the cluster's first one (same type), 8 to a host."""
    base = cluster.devices[0]
    devices = [dataclasses.replace(base, name=f"{base.preset or 'dev'}#{i}", node=i // 8) for i in range(n)]
    return dataclasses.replace(cluster, devices=devices)


def _fits(profile: Profile, cluster: Cluster, config: TrainConfig, fingerprint: str) -> Plan | None:
    from planner.solvers.search import solve_once

    try:
        return solve_once(profile, cluster, config, fingerprint=fingerprint)
    except PipeplanError:
        return None


def _valid_for(config: TrainConfig, num_devices: int) -> TrainConfig | None:
    """The config on num_devices, with the smallest micro-batch count >= the given one that the
    schedule accepts there (1F1B needs M >= P, ...); None if there is none."""
    from planner.costmodel.microbatches import schedule_accepts

    if config.num_microbatches is None:
        return config
    for M in range(config.num_microbatches, 4 * num_devices * config.virtual_stages + config.num_microbatches + 1):
        if schedule_accepts(config.schedule, num_devices, M, config.virtual_stages) is None:
            return config if M == config.num_microbatches else dataclasses.replace(config, num_microbatches=M)
    return None


def _fewest_devices_with_every_saving(profile: Profile, cluster: Cluster, config: TrainConfig,
                                     out_of_time, fingerprint: str) -> tuple[int, Plan] | None:
    """The fewest devices like the first one (up to one layer per device) on which the model fits with
    every memory saving that keeps the model's math: recomputation on every stage and micro-batches of
    one sample (as many micro-batches as samples per step); with the plan found there. Bisection on the
    count, each step a solve: more devices never hold more per device."""
    try:
        saving = dataclasses.replace(config, recompute="on", micro_batch_size=1,
                                     num_microbatches=config.samples_per_step, global_batch=None)
    except PipeplanError:
        return None

    def plan_on(n: int) -> Plan | None:
        cfg = _valid_for(saving, n)
        return None if cfg is None else _fits(profile, _with_devices(cluster, n), cfg, fingerprint)

    lo, hi = cluster.num_devices, len(profile.nodes) // config.virtual_stages
    if hi <= lo or out_of_time("the smallest device count with recompute and micro-batches of 1"):
        return None
    best = plan_on(hi)
    if best is None:
        return None
    while hi - lo > 1 and not out_of_time("the smallest device count with recompute and micro-batches of 1"):
        mid = (lo + hi) // 2
        plan = plan_on(mid)
        if plan is None:
            lo = mid
        else:
            hi, best = mid, plan
    return hi, best


def _beyond_pipeline_parallelism(profile: Profile, cluster: Cluster, config: TrainConfig) -> str:
    """A plain sentence when pipeline parallelism alone cannot fit the model on devices like these, what
    ever the cut: the largest layer's weights, gradients and optimizer state (which no schedule,
    recompute or micro-batch size shrinks) exceed the largest device. Empty otherwise."""
    per_param = sum(bytes_per_param(config.precision, config.optimizer))
    largest = max(profile.nodes, key=lambda n: n.param_count)
    need = largest.param_count * per_param + config.reserve_bytes
    room = max(d.memory_bytes for d in cluster.devices)
    if need <= room:
        return ""
    return (f"Pipeline parallelism alone cannot fit this model on these devices: layer {largest.id!r} alone holds "
            f"{gib(need)} of weights, gradients and optimizer state ({config.precision}, {config.optimizer}), more "
            f"than the {gib(room)} of the largest device, however the model is cut. Sharding that state across "
            "data-parallel replicas (ZeRO/FSDP) or splitting the layer with tensor parallelism would; pipeplan "
            "does not plan those yet")


def diagnose(profile: Profile, cluster: Cluster, config: TrainConfig) -> Plan:
    """Plan(feasible=False) with a Diagnosis; every suggestion in it was checked by re-solving."""
    from planner.solvers.search import solve_once

    started = time.perf_counter()
    budget = max(MIN_DIAGNOSIS_SECONDS, DIAGNOSIS_TIME_FACTOR * config.time_limit_s)
    skipped: list[str] = []

    def out_of_time(what: str) -> bool:
        if time.perf_counter() - started <= budget:
            return False
        if what not in skipped:
            skipped.append(what)
        return True

    quick = dataclasses.replace(config, time_limit_s=max(1.0, config.time_limit_s / 4))
    fingerprint = profile.fingerprint()  # a JSON dump of the profile: once, not once per re-solve
    unlimited = solve_once(profile, _with_memory(cluster, None), quick, fingerprint=fingerprint)
    problems, worst = [], None
    if unlimited is not None:
        # the fastest partition ignoring memory, scored against the real limits
        over = memory_problems(unlimited.stages, cluster, unlimited.config)
        for d, b in over:
            stages = [s.index for s in unlimited.stages if s.device == d]
            problems.append(f"device {d} ({cluster.devices[d].name}, stage {', '.join(map(str, stages))}) needs "
                            f"{gib(cluster.devices[d].memory_bytes + b)} in the fastest partition, has "
                            f"{gib(cluster.devices[d].memory_bytes)}: {gib(b)} over")
        worst = max((b for _, b in over), default=None)
    # smallest uniform memory per device that fits (bisection on whole MiB)
    min_mem = None
    lo, hi = 0, max(d.memory_bytes for d in cluster.devices)
    while hi < 2**50 and not out_of_time("the smallest memory per device") and \
            _fits(profile, _with_memory(cluster, hi), quick, fingerprint) is None:
        lo, hi = hi, hi * 2
    if hi < 2**50 and "the smallest memory per device" not in skipped:
        while hi - lo > 2**20:
            if out_of_time("the smallest memory per device (the figure given fits, but may not be the least)"):
                break
            mid = (lo + hi) // 2
            if _fits(profile, _with_memory(cluster, mid), quick, fingerprint) is None:
                lo = mid
            else:
                hi = mid
        min_mem = hi
    # smallest device count of the first device's type that fits
    min_devices = None
    P = cluster.num_devices
    min_devices_note = ""
    for n in range(P + 1, min(len(profile.nodes) // config.virtual_stages, MAX_EXTRA_DEVICES_FACTOR * P) + 1):
        if out_of_time("the smallest device count"):
            break
        cfg_n = _valid_for(quick, n)
        if cfg_n is not None and _fits(profile, _with_devices(cluster, n), cfg_n, fingerprint) is not None:
            min_devices = n
            if cfg_n.num_microbatches != quick.num_microbatches:
                min_devices_note = f" with {cfg_n.num_microbatches} micro-batches"
            break
    suggestions = []
    if min_devices is not None:
        suggestions.append(f"use {min_devices} devices like {cluster.devices[0].name}{min_devices_note} (fits)")
    else:
        combined = _fewest_devices_with_every_saving(profile, cluster, quick, out_of_time, fingerprint)
        if combined is not None:
            n, plan = combined
            used = plan.config
            suggestions.append(f"use {n} devices like {cluster.devices[0].name} with activation recomputation on "
                               f"(--recompute on) and micro-batches of 1 ({used.num_microbatches} micro-batches of "
                               f"{used.micro_batch_size}): fits, predicted step {plan.step_time_ms:.1f} ms")
    beyond = _beyond_pipeline_parallelism(profile, cluster, config)
    if min_mem is not None:
        suggestions.append(f"use devices with at least {gib(min_mem)} each (fits)")
    changes = []
    if config.recompute != "on":
        changes.append(("turn activation recomputation on (--recompute on)", {"recompute": "on"}))
    if config.precision == "fp32":
        changes.append(("train in bf16 mixed precision (--precision bf16)", {"precision": "bf16_mixed"}))
    if config.optimizer in ("adam", "adamw"):
        changes.append(("use SGD with momentum instead of Adam (--optimizer sgd_momentum)",
                        {"optimizer": "sgd_momentum"}))
    for schedule in ("1F1B", "ZBH1"):
        if config.schedule != schedule:
            changes.append((f"use the {schedule} schedule (--schedule {schedule})",
                            {"schedule": schedule, "virtual_stages": 1}))
    if config.num_microbatches and config.micro_batch_size > 1:
        changes.append(("use micro-batches of 1 sample", {"micro_batch_size": 1,
                                                         "num_microbatches": config.samples_per_step}))
    for text, change in changes:
        try:
            cfg = dataclasses.replace(quick, **change)
        except PipeplanError:
            continue
        if out_of_time("other changes (recompute, precision, optimizer, schedule, micro-batch size)"):
            break
        plan = _fits(profile, cluster, cfg, fingerprint)
        if plan is not None:
            used = plan.config
            suggestions.append(f"{text}: fits, predicted step {plan.step_time_ms:.1f} ms with "
                               f"{used.num_microbatches} micro-batches of {used.micro_batch_size}")
    message = "no partition fits in memory on this cluster"
    if worst is not None:
        message += f"; even the fastest partition is {gib(worst)} over on its worst device"
    if beyond:
        message += f". {beyond}"
    if skipped:
        message += (f". The diagnosis was cut short after {time.perf_counter() - started:.0f} s "
                    f"(limit {budget:.0f} s); not searched: {'; '.join(skipped)}")
    cfg = config if config.num_microbatches is not None else dataclasses.replace(
        config, num_microbatches=config.global_batch // config.micro_batch_size, global_batch=None)
    return Plan(model=profile.model, profile_fingerprint=fingerprint, cluster=cluster, config=cfg,
                feasible=False, solver=SolverInfo(backend=config.solver, status="infeasible"),
                diagnosis=Diagnosis(message=message, problems=problems, suggestions=suggestions,
                                    min_devices=min_devices, min_memory_bytes=min_mem))


__all__ = ["Device", "diagnose"]
