"""The parallelism search: for N GPUs and a global batch, the fastest (pp, dp, tp, dp_sharding, micro-batch
size, micro-batches, chunks) with its stage cuts and recompute, ranked (docs/hybrid.md).

    search_parallel(profile, cluster, global_batch, base=TrainConfig(...)) -> ParallelSearch

Every candidate is planned by the pipeline solvers (planner.solvers.solve.solve_mesh: the exact chain DP or
the ILP, finished under the simulator) on one GPU's share of the profile (planner.costmodel.parallel
.rank_profile), so its step time is the same simulated step `pipeplan simulate` shows. Before solving, each
candidate gets two cheap bounds from the same cost terms:

- memory: every device holds at least its share of the weights, gradients and optimizer state
  (sharded_bytes_per_param x params / pp, plus FSDP's gather buffer and the reserve, plus one micro-batch of
  activations / pp without recompute), and the largest layer must fit one device: above the limit, the
  candidate cannot fit ("no_fit") and is not solved;
- time: the simulated step of any partition is at least pipeline_time_bound (device d is busy M T_d and
  waits for the earlier stages' forwards before its first action and their backwards after its last),
  with W = one micro-batch's forward + backward on one GPU plus the least forward any plan must
  recompute to fit (recompute_bound_ms), + the after-drain work / pp and the clipping all-reduce.

Candidates are solved in the order of their time bound; once top_k plans are known, a candidate whose bound
is not below the k-th best step is "pruned" (it cannot enter the top k). With prune=False every valid
candidate is solved (the brute force of the tests).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import PipeplanError
from core.jsonio import build_dataclass, load_json_text
from core.limits import MAX_MICROBATCHES, MAX_STAGE_MICROBATCHES
from planner.contracts.cluster import Cluster
from planner.contracts.config import DP_SHARDING, TrainConfig
from planner.contracts.plan import Diagnosis, Plan
from planner.costmodel.cost import backward_split_ms, clip_allreduce_ms, stage_optimizer_ms, step_end_ms
from planner.costmodel.memory import activation_scale, gather_buffer_bytes, sharded_bytes_per_param
from planner.costmodel.microbatches import scale_profile, schedule_accepts
from planner.costmodel.parallel import (
    Mesh,
    check_uniform,
    gpus_per_node,
    has_tp_plan,
    max_tp_degree,
    pipeline_devices,
    rank_profile,
    throughput,
)
from planner.pipeline.schedules import chunks_per_device, schedule_spec
from profiler.gpus import GiB
from profiler.profile import Profile

SCHEMA = "pipeplan.parallel-search/1"
DEFAULT_TIME_LIMIT_S = 1.0
"""Solver time limit per candidate (the exact chain DP proves most candidates well inside it)."""
DEFAULT_BUDGET_S = 6.0
"""Wall seconds after which the search stops starting solves (see search_parallel)."""
MAX_MICRO_BATCH_SIZE = 64
"""Largest micro-batch size tried by default (larger ones only grow the bubble and the activations)."""


@dataclass(kw_only=True, slots=True)
class ParallelCandidate:
    """One configuration of the search, with what the cost model says about it."""

    pp: int
    dp: int
    tp: int
    dp_sharding: str
    micro_batch_size: int
    num_microbatches: int
    """Micro-batches per step per pipeline replica: global batch / (dp x micro_batch_size)."""
    schedule: str
    virtual_stages: int
    recompute: str
    """The config's recompute mode ("off", "on", "auto")."""
    status: str
    """"optimal" or "feasible" (solved: the solver's status), "infeasible" (solved: no partition fits),
    "no_fit" (its memory lower bound is over the device limit: not solved), "pruned" (its time lower bound
    is not below the k-th best step: not solved)."""
    lower_bound_ms: float
    """The cheap bound on the simulated step (module docstring)."""
    memory_lower_bound_bytes: int
    step_time_ms: float | None = None
    """Predicted (simulated) step time; None unless solved and feasible."""
    samples_per_s: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    memory_per_device_bytes: int | None = None
    """The fullest device's memory in the plan."""
    memory_limit_bytes: int = 0
    recompute_stages: int | None = None
    dp_sync_ms: float | None = None
    """The largest stage's data-parallel gradient sync (after the drain)."""
    bubble_fraction: float | None = None
    solver_seconds: float = 0.0

    @property
    def label(self) -> str:
        shard = f" {self.dp_sharding}" if self.dp > 1 else ""
        chunks = f" v{self.virtual_stages}" if self.virtual_stages > 1 else ""
        return (f"pp{self.pp} x dp{self.dp}{shard} x tp{self.tp}, {self.num_microbatches} x mbs "
                f"{self.micro_batch_size}, {self.schedule}{chunks}")

    def config(self, base: TrainConfig) -> TrainConfig:
        """The TrainConfig of this candidate (base gives optimizer, precision, reserve, solver...)."""
        return dataclasses.replace(base, schedule=self.schedule, virtual_stages=self.virtual_stages,
                                   num_microbatches=self.num_microbatches, micro_batch_size=self.micro_batch_size,
                                   global_batch=None, data_parallel=self.dp, tensor_parallel=self.tp,
                                   dp_sharding=self.dp_sharding, recompute=self.recompute, device_order="fixed")


@dataclass(kw_only=True, slots=True)
class ParallelSearch:
    """The result of search_parallel: the ranked configurations and the best plan."""

    global_batch: int
    devices: int
    gpus_per_node: int
    ranked: list[ParallelCandidate] = field(default_factory=list)
    """Solved, feasible configurations, fastest first (at most top_k)."""
    best_plan: Plan | None = None
    """The plan of ranked[0] on the whole cluster (config carries the degrees); None when nothing fits."""
    candidates: int = 0
    """Valid configurations enumerated."""
    solved: int = 0
    pruned: int = 0
    no_fit: int = 0
    infeasible: int = 0
    unsearched: int = 0
    """Candidates neither solved nor pruned because the search's time budget ran out (their lower bound is
    below the k-th best step, so they might have entered the top k)."""
    seconds: float = 0.0
    diagnosis: Diagnosis | None = None
    """When nothing fits: why, and what would (checked)."""
    notes: list[str] = field(default_factory=list)
    schema: str = SCHEMA

    @property
    def feasible(self) -> bool:
        return bool(self.ranked)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["best_plan"] = self.best_plan.to_dict() if self.best_plan is not None else None
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> ParallelSearch:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise PipeplanError(f"parallel search schema {data.get('schema') if isinstance(data, dict) else None!r} "
                                f"is not supported; expected {SCHEMA!r}")
        d = dict(data)
        d["ranked"] = [build_dataclass(ParallelCandidate, c, f"ranked[{i}]") for i, c in enumerate(d.get("ranked", []))]
        if d.get("best_plan") is not None:
            d["best_plan"] = Plan.from_dict(d["best_plan"])
        if d.get("diagnosis") is not None:
            d["diagnosis"] = build_dataclass(Diagnosis, d["diagnosis"], "diagnosis")
        return build_dataclass(cls, d, "parallel search")

    @classmethod
    def from_json(cls, text: str | bytes) -> ParallelSearch:
        return cls.from_dict(load_json_text(text, "parallel search"))


# -- enumeration ----------------------------------------------------------------------------------------

def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def enumerate_configs(profile: Profile, cluster: Cluster, global_batch: int, base: TrainConfig, *,
                      tp: int | None = None, dp: int | None = None, pp: int | None = None,
                      dp_sharding: str | Sequence[str] | None = None,
                      micro_batch_sizes: Sequence[int] | None = None,
                      schedules: Sequence[tuple[str, int]] | None = None) -> list[TrainConfig]:
    """enumerate_configs_for for each (schedule, chunks per device) of `schedules` (default: base's)."""
    out = []
    for schedule, chunks in schedules or [(base.schedule, base.virtual_stages)]:
        b = dataclasses.replace(base, schedule=schedule, virtual_stages=chunks)
        out += enumerate_configs_for(profile, cluster, global_batch, b, tp=tp, dp=dp, pp=pp, dp_sharding=dp_sharding,
                                     micro_batch_sizes=micro_batch_sizes)
    return out


def enumerate_configs_for(profile: Profile, cluster: Cluster, global_batch: int, base: TrainConfig, *,
                          tp: int | None = None, dp: int | None = None, pp: int | None = None,
                          dp_sharding: str | Sequence[str] | None = None,
                          micro_batch_sizes: Sequence[int] | None = None) -> list[TrainConfig]:
    """Every valid configuration: tp divides the GPUs per node (and every layer's tp_max_degree), pp x dp x tp
    = N, dp x micro-batch size divides the global batch, the schedule accepts (pp, M, chunks), pp x chunks
    <= layers. tp > 1 only when the profile has TP facts (else it replicates every layer: never faster) and
    dp, tp > 1 only on identical devices, unless fixed by the caller. A fixed degree or sharding narrows."""
    N = cluster.num_devices
    per_node = gpus_per_node(cluster)
    uniform = True
    try:
        check_uniform(cluster)
    except PipeplanError:
        uniform = False
        if (tp or 1) > 1 or (dp or 1) > 1:
            raise
    limit = max_tp_degree(profile)
    splittable = has_tp_plan(profile)
    shardings = (dp_sharding,) if isinstance(dp_sharding, str) else tuple(dp_sharding or DP_SHARDING)
    for s in shardings:
        if s not in DP_SHARDING:
            raise PipeplanError(f"unknown dp_sharding {s!r}; choose one of {', '.join(DP_SHARDING)}")
    v = chunks_per_device(base.schedule, base.virtual_stages)
    layers = len(profile.nodes)
    out = []
    tps = [tp] if tp is not None else [t for t in _divisors(per_node) if t == 1 or (splittable and uniform)]
    for t in tps:
        if t < 1 or N % t or (t > 1 and per_node % t) or (limit and t > 1 and limit % t):
            continue
        for p in _divisors(N // t):
            d = N // (t * p)
            if (pp is not None and p != pp) or (dp is not None and d != dp) or (d > 1 and not uniform):
                continue
            if p * v > layers or global_batch % d:
                continue
            per_replica = global_batch // d
            sizes = micro_batch_sizes or [b for b in _divisors(per_replica) if b <= MAX_MICRO_BATCH_SIZE]
            for mbs in sizes:
                if per_replica % mbs:
                    continue
                M = per_replica // mbs
                if M > MAX_MICROBATCHES or p * v * M > MAX_STAGE_MICROBATCHES:
                    continue
                if schedule_accepts(base.schedule, p, M, base.virtual_stages) is not None:
                    continue
                for s in (shardings if d > 1 else ("ddp",)):
                    out.append(dataclasses.replace(
                        base, num_microbatches=M, micro_batch_size=mbs, global_batch=None, data_parallel=d,
                        tensor_parallel=t, dp_sharding=s,
                        device_order=base.device_order if d * t == 1 else "fixed"))
    return out


# -- bounds ---------------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Bounds:
    time_ms: float
    """A lower bound on the simulated step of every plan of the configuration."""
    memory_bytes: int
    """A lower bound on the fullest device's memory."""
    largest_layer_bytes: int
    """The largest layer's weights, state and one micro-batch of activations: a device must hold it."""
    estimate_ms: float = 0.0
    """Not a bound: the step of uniform stages, (M + pp - 1) W / pp (x (1 + F / W) when the activations
    of the schedule's in-flight micro-batches cannot fit without recompute) + after-drain work; the
    search solves candidates in this order so the best are found early."""


def pipeline_time_bound(M: int, pp: int, work_ms: float, rho: float) -> float:
    """A lower bound on the pipeline part of any partition's simulated step, one stage per device:
    min over partitions of max_d (M T_d + rho Q_d), relaxed to continuous stage sizes, where T_d is stage
    d's forward + backward per micro-batch, Q_d = sum of T_s over the stages before d, and rho <= (F + B) / T
    of every layer. Device d waits Q_d's forwards before its first action and, after its last backward,
    the earlier stages' backwards of that micro-batch run one after another (ZB schedules: their B parts),
    so the step is at least M T_d + rho Q_d for every d. Equalising all d gives
    L = rho W / (1 - (1 - rho / M)^pp) (W = sum of T): about M W / pp + (pp - 1) rho W / (2 pp)."""
    if pp <= 1 or work_ms <= 0:
        return M * work_ms
    return rho * work_ms / (1.0 - (1.0 - rho / M) ** pp)


@dataclass(frozen=True, slots=True)
class ChainMemory:
    """What chain_pipeline_time_bound needs to know of memory: per layer its weights-and-state bytes, saved
    activation bytes (training precision) and forward ms; per device its in-flight micro-batches; the
    bytes a device may fill; which recompute choices are allowed."""

    static: Sequence[float]
    acts: Sequence[float]
    fwd: Sequence[float]
    in_flight: Sequence[int]
    capacity: float
    allow_off: bool = True
    allow_on: bool = False


def chain_pipeline_time_bound(times: Sequence[float], M: int, pp: int, rho: float, floor: float = 0.0,
                              memory: ChainMemory | None = None) -> float:
    """pipeline_time_bound without the continuous relaxation, for a chain (every plan's stages are contiguous
    runs of its layers, one per device): the least L such that the layers, in order, fit pp devices with
    M T_d + rho Q_d <= L (T_d: the device's forward + backward per micro-batch, Q_d: the earlier devices'
    T without recompute) and, given `memory`, the device's memory: weights and state + k_d x its activations
    without recompute (+ its forward in T_d and 1 x activations with recompute) <= capacity (inputs, relays
    and tied copies only add). For a given L, taking the longest run each device can take is optimal (the
    end of device d's run may reach Q_d + (L - rho Q_d) / M, which grows with Q_d as rho <= M, and a later
    start leaves a subset of layers to hold), so L is found by bisection
    from `floor` (a valid bound); an empty device is allowed (a relaxation). inf when nothing fits."""
    n = len(times)
    total = float(sum(times))
    if n == 0 or total <= 0:
        return floor

    def reach(i: int, room: float, d: int) -> int:
        best = i
        if memory is None:
            t, j = 0.0, i
            while j < n and t + times[j] <= room * (1 + 1e-12):
                t += times[j]
                j += 1
            return j
        k = memory.in_flight[d]
        for rec in ((False,) if not memory.allow_on else (True,) if not memory.allow_off else (False, True)):
            t, mem, j = 0.0, 0.0, i
            while j < n:
                dt = times[j] + (memory.fwd[j] if rec else 0.0)
                dm = memory.static[j] + memory.acts[j] * (1 if rec else k)
                if t + dt > room * (1 + 1e-12) or mem + dm > memory.capacity:
                    break
                t, mem, j = t + dt, mem + dm, j + 1
            best = max(best, j)
        return best

    def fits(L: float) -> bool:
        i, q = 0, 0.0
        for d in range(pp):
            j = reach(i, (L - rho * q) / M, d)
            q += sum(times[i:j])
            i = j
            if i == n:
                return True
        return False

    worst = M * (total + (sum(memory.fwd) if memory is not None else 0.0))
    lo, hi = floor, max(floor, worst) * (1 + 1e-9) + 1e-12
    if fits(lo):
        return lo
    if not fits(hi):
        return float("inf")
    for _ in range(60):
        mid = (lo + hi) / 2
        if fits(mid):
            hi = mid
        else:
            lo = mid
        if hi - lo <= 1e-9 * hi:
            break
    return lo


def recompute_bound_ms(rank: Profile, config: TrainConfig, pp: int, speed: float, capacity: float,
                       static_bytes: float, scale: float) -> float | None:
    """A lower bound on the forward time every plan must recompute (None: cannot fit at all), one stage
    per device. Stage s holds k_s micro-batches (the schedule's in-flight count) of what it does not
    recompute and one micro-batch of what it does, within `capacity` bytes: summed, the activations it
    does not recompute cost (k_s - 1) bytes each beyond what every plan holds (static + one micro-batch of
    everything), and a stage holds at most capacity / k_s of them. Filling the stages with the fewest
    in flight first gives the most activations any plan can keep; the rest is recomputed at the least
    forward ms per byte (fractional knapsack)."""
    from planner.pipeline.schedules import in_flight_microbatches

    acts = [(scale * n.activation_bytes, n.fwd_ms / speed) for n in rank.nodes]
    total = sum(a for a, _ in acts)
    room = pp * capacity - static_bytes - total
    if room < 0:
        return None
    choices = config.recompute_choices()
    if True not in choices:
        choices_off = True
    else:
        choices_off = False
        if False not in choices:
            return sum(f for _, f in acts)
    if config.virtual_stages > 1 or chunks_per_device(config.schedule, config.virtual_stages) > 1:
        return 0.0
    kept = 0.0
    for k in sorted(in_flight_microbatches(config.schedule, pp, config.num_microbatches, config.virtual_stages)):
        take = capacity / k if k > 1 else capacity
        if k > 1:
            take = min(take, room / (k - 1))
            room -= take * (k - 1)
        kept += take
        if kept >= total:
            return 0.0
    missing = total - kept
    if choices_off:
        return None  # recompute is off and the activations cannot all be kept
    need = 0.0
    for a, f in sorted(((a, f) for a, f in acts if a > 0), key=lambda t: t[1] / t[0]):
        part = min(a, missing)
        need += f * part / a
        missing -= part
        if missing <= 0:
            break
    return need


def bounds(profile: Profile, cluster: Cluster, config: TrainConfig) -> Bounds:
    """The cheap lower bounds of a configuration (module docstring), from its rank profile."""
    from planner.pipeline.schedules import in_flight_microbatches

    dp, tp = config.data_parallel, config.tensor_parallel
    N = cluster.num_devices
    pp = N // (dp * tp)
    mesh = Mesh(pp=pp, dp=dp, tp=tp, gpus_per_node=gpus_per_node(cluster))
    rank = rank_profile(scale_profile(profile, config.micro_batch_size), config, cluster, mesh)
    # identical devices (any dp or tp > 1): theirs; a mixed PP-only cluster: the most favourable device for
    # every term (the fastest speed, the largest memory, no per-action overhead), so the bounds stay bounds
    uniform = len({d.kind() for d in cluster.devices}) == 1
    speed = max(cluster.speed_factor(i, rank) for i in range(N)) if not uniform else cluster.speed_factor(0, rank)
    overhead = cluster.devices[0].action_overhead_ms if uniform else 0.0
    v = chunks_per_device(config.schedule, config.virtual_stages)
    M = config.num_microbatches
    split = schedule_spec(config.schedule).split_backward
    work = sum(n.fwd_ms + n.bwd_ms for n in rank.nodes) / speed
    f_min = min(n.fwd_ms for n in rank.nodes) / speed
    b_min = min((backward_split_ms(n)[0] if split else n.bwd_ms) for n in rank.nodes) / speed
    opt_ref = sum(n.optimizer_ms or 0.0 for n in rank.nodes)
    after = 0.0
    if opt_ref > 0:
        first = pipeline_devices(pp, dp, tp)
        after = (stage_optimizer_ms(opt_ref, config.optimizer, speed) / pp
                 + (step_end_ms(cluster, first) if uniform else clip_allreduce_ms(cluster, first)))
    w, g, o = sharded_bytes_per_param(config)
    params = [n.param_count for n in rank.nodes]
    largest = max(params, default=0)
    buffer = gather_buffer_bytes(config, largest)
    scale = activation_scale(rank.model.dtype, config.precision)
    # one micro-batch of saved activations: a stage holds them at least once, with or without recompute
    # (recompute rebuilds one micro-batch's activations of the whole stage during its backward)
    acts = scale * sum(n.activation_bytes for n in rank.nodes) / pp
    memory = (w + g + o) * sum(params) / pp + buffer + config.reserve_bytes + acts
    largest_bytes = max((w + g + o) * n.param_count + scale * n.activation_bytes for n in rank.nodes) \
        + buffer + config.reserve_bytes
    limit = min(d.memory_bytes for d in cluster.devices) if uniform else max(d.memory_bytes for d in cluster.devices)
    recompute = recompute_bound_ms(rank, config, pp, speed, limit - config.reserve_bytes - buffer,
                                   (w + g + o) * sum(params), scale)
    if recompute is None:  # cannot fit: report the memory bound over the limit
        memory = max(memory, limit + 1)
        recompute = 0.0
    total = work + recompute
    if v == 1:
        rho = min((n.fwd_ms + (backward_split_ms(n)[0] if split else n.bwd_ms)) / (2 * n.fwd_ms + n.bwd_ms)
                  for n in rank.nodes if 2 * n.fwd_ms + n.bwd_ms > 0) if work > 0 else 1.0
        pipe = pipeline_time_bound(M, pp, total, rho)
        from planner.costmodel.cost import build_tables

        if uniform and build_tables(rank).is_chain():  # contiguous stages: the discrete bound with memory
            choices = config.recompute_choices()
            mem = ChainMemory(static=[(w + g + o) * n.param_count for n in rank.nodes],
                              acts=[scale * n.activation_bytes for n in rank.nodes],
                              fwd=[n.fwd_ms / speed for n in rank.nodes],
                              in_flight=in_flight_microbatches(config.schedule, pp, M, config.virtual_stages),
                              capacity=limit - config.reserve_bytes - buffer,
                              allow_off=False in choices, allow_on=True in choices)
            rho_plain = min((n.fwd_ms + (backward_split_ms(n)[0] if split else n.bwd_ms)) / (n.fwd_ms + n.bwd_ms)
                            for n in rank.nodes if n.fwd_ms + n.bwd_ms > 0) if work > 0 else 1.0
            chain = chain_pipeline_time_bound([(n.fwd_ms + n.bwd_ms) / speed for n in rank.nodes], M, pp,
                                              rho_plain, floor=pipeline_time_bound(M, pp, work, rho_plain), memory=mem)
            if chain == float("inf"):  # no contiguous cut fits the devices' memory
                memory = max(memory, limit + 1)
            else:
                pipe = max(pipe, chain)
        pipe += 2 * M * overhead
    else:
        pipe = M * total / pp + 2 * M * v * overhead + (pp - 1) * (f_min + b_min) / 2
    in_flight = in_flight_microbatches(config.schedule, pp, M, config.virtual_stages)
    held = sum(in_flight) / len(in_flight) * acts
    slowdown = 1.0
    if memory - acts + held > limit and True in config.recompute_choices():
        slowdown += sum(n.fwd_ms for n in rank.nodes) / speed / work if work > 0 else 0.0
    estimate = max((M * v + pp - 1) * work * slowdown / (pp * v) + 2 * M * v * overhead + after, pipe + after)
    return Bounds(time_ms=pipe + after, memory_bytes=int(memory), largest_layer_bytes=int(largest_bytes),
                  estimate_ms=estimate)


# -- the search -----------------------------------------------------------------------------------------

def _candidate(cfg: TrainConfig, pp: int, b: Bounds, limit: int, status: str) -> ParallelCandidate:
    return ParallelCandidate(pp=pp, dp=cfg.data_parallel, tp=cfg.tensor_parallel, dp_sharding=cfg.dp_sharding,
                             micro_batch_size=cfg.micro_batch_size, num_microbatches=cfg.num_microbatches,
                             schedule=cfg.schedule, virtual_stages=cfg.virtual_stages, recompute=cfg.recompute,
                             status=status, lower_bound_ms=b.time_ms,
                             memory_lower_bound_bytes=max(b.memory_bytes, b.largest_layer_bytes),
                             memory_limit_bytes=limit)


def _fill(c: ParallelCandidate, plan: Plan, profile: Profile, cluster: Cluster, global_batch: int) -> None:
    from planner.solvers.evaluate import device_memory_bytes

    c.status = plan.solver.status if plan.feasible else "infeasible"
    c.solver_seconds = plan.solver.seconds if plan.solver else 0.0
    if not plan.feasible:
        return
    tput = throughput(profile, cluster, global_batch, plan.step_time_ms)
    c.step_time_ms = plan.step_time_ms
    c.samples_per_s, c.tokens_per_s, c.mfu = tput.samples_per_s, tput.tokens_per_s, tput.mfu
    c.memory_per_device_bytes = max(device_memory_bytes(plan.stages, plan.config.reserve_bytes).values())
    c.recompute_stages = sum(s.recompute for s in plan.stages)
    c.dp_sync_ms = max(s.dp_sync_ms for s in plan.stages)
    c.bubble_fraction = plan.bubble_fraction


def search_parallel(profile: Profile, cluster: Cluster, global_batch: int, *, base: TrainConfig | None = None,
                    top_k: int = 5, tp: int | None = None, dp: int | None = None, pp: int | None = None,
                    dp_sharding: str | Sequence[str] | None = None, micro_batch_sizes: Sequence[int] | None = None,
                    time_limit_s: float = DEFAULT_TIME_LIMIT_S, prune: bool = True, diagnose: bool = True,
                    budget_s: float | None = DEFAULT_BUDGET_S,
                    schedules: Sequence[tuple[str, int]] | None = None,
                    progress: Callable[[str], None] | None = None) -> ParallelSearch:
    """The ranked top-k configurations of pp x dp x tp = cluster.num_devices for `global_batch` samples per
    step (all replicas together), each with its plan's predicted step time, samples/s, tokens/s, MFU and
    memory per device; best_plan is the winner's Plan on the whole cluster (its config carries the degrees:
    `pipeplan export` consumes it). `base` gives the schedule (and chunks), optimizer, precision, recompute
    mode, reserve and solver; tp, dp, pp, dp_sharding and micro_batch_sizes fix or narrow the search, and
    `schedules` lists (schedule, chunks per device) pairs to search (default: base's one).
    Micro-batch sizes other than the profile's scale its per-layer times, activations and all-reduce bytes
    linearly (scale_profile: an approximation). PP-only (dp = tp = 1) candidates are planned exactly as
    `solve` plans them. When nothing fits, `diagnosis` says what would (more GPUs, recompute).

    Candidates are solved in the order of their estimate; one whose lower bound is not below the k-th best
    step is pruned (it cannot enter the top k: exact); once `budget_s` seconds have passed (and a plan is
    found), the rest are left unsearched and counted (`unsearched`; None: no budget). prune=False solves
    every valid candidate (the brute force)."""
    if not prune:
        budget_s = None
    from planner.solvers.solve import solve, solve_mesh

    start = time.perf_counter()
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise PipeplanError(f"global batch must be a positive integer, got {global_batch!r}")
    base = base or TrainConfig(num_microbatches=1)
    base = dataclasses.replace(base, time_limit_s=time_limit_s)
    say = progress or (lambda _msg: None)
    configs = enumerate_configs(profile, cluster, global_batch, base, tp=tp, dp=dp, pp=pp,
                                dp_sharding=dp_sharding, micro_batch_sizes=micro_batch_sizes, schedules=schedules)
    result = ParallelSearch(global_batch=global_batch, devices=cluster.num_devices,
                            gpus_per_node=gpus_per_node(cluster), candidates=len(configs))
    if not configs:
        raise PipeplanError(_no_config_reason(profile, cluster, global_batch, base, tp, dp, pp))
    mems = [d.memory_bytes for d in cluster.devices]
    limit = min(mems) if len(set(mems)) == 1 else max(mems)  # mixed (PP-only): the largest device bounds
    scored = []
    for cfg in configs:
        p = cluster.num_devices // (cfg.data_parallel * cfg.tensor_parallel)
        b = bounds(profile, cluster, cfg)
        fits = b.memory_bytes <= limit and b.largest_layer_bytes <= limit
        scored.append((b.estimate_ms, len(scored), cfg, p, b, fits))
    scored.sort(key=lambda t: (t[0], t[1]))
    say(f"{len(configs)} configurations, {sum(1 for s in scored if not s[5])} cannot fit by their memory bound")
    found: list[tuple[float, ParallelCandidate, Plan]] = []
    for _, _, cfg, p, b, fits in scored:
        if not fits:
            result.no_fit += 1
            continue
        c = _candidate(cfg, p, b, limit, "pruned")
        if prune and len(found) >= top_k and b.time_ms >= found[top_k - 1][0] * (1 - 1e-9):
            result.pruned += 1
            continue
        if budget_s is not None and found and time.perf_counter() - start > budget_s:
            result.unsearched += 1
            continue
        plan = solve_mesh(profile, cluster, cfg, baselines=False, diagnose_infeasible=False) \
            if cfg.data_parallel * cfg.tensor_parallel > 1 else _solve_pp(solve, profile, cluster, cfg)
        result.solved += 1
        _fill(c, plan, profile, cluster, global_batch)
        say(f"[{result.solved}] {c.label}: " + (f"{c.step_time_ms:.1f} ms" if c.step_time_ms else c.status))
        if c.step_time_ms is None:
            result.infeasible += 1
            continue
        found.append((c.step_time_ms, c, plan))
        found.sort(key=lambda t: t[0])
    result.ranked = [c for _, c, _ in found[:top_k]]
    result.best_plan = found[0][2] if found else None
    if result.best_plan is not None:
        result.best_plan.config = dataclasses.replace(
            result.best_plan.config, global_batch=result.best_plan.config.samples_per_step)
    if not found and diagnose:
        result.diagnosis = search_diagnosis(profile, cluster, global_batch, base, time_limit_s, tp=tp, dp=dp, pp=pp,
                                            dp_sharding=dp_sharding)
    result.seconds = time.perf_counter() - start
    return result


def _solve_pp(solve, profile: Profile, cluster: Cluster, cfg: TrainConfig) -> Plan:
    """A PP-only candidate: exactly `solve` (without the baselines and the diagnosis, which rank nothing)."""
    from planner.solvers.search import solve_once

    plan = solve_once(profile, cluster, cfg)
    if plan is None:
        return Plan(model=profile.model, profile_fingerprint=profile.fingerprint(), cluster=cluster, config=cfg,
                    feasible=False)
    return plan


def _no_config_reason(profile, cluster, global_batch, base, tp, dp, pp) -> str:
    fixed = ", ".join(f"{k} {v}" for k, v in (("pp", pp), ("dp", dp), ("tp", tp)) if v is not None)
    return (f"no valid configuration of {cluster.num_devices} devices ({gpus_per_node(cluster)} per node) for global "
            f"batch {global_batch} with {base.schedule}" + (f" and {fixed}" if fixed else "") +
            ": pp x dp x tp must equal the devices, tp divide the GPUs per node, dp x micro-batch size divide the "
            f"global batch, and the schedule accept the micro-batches (the model has {len(profile.nodes)} layers)")


# -- when nothing fits --------------------------------------------------------------------------------------

def _like(cluster: Cluster, n: int) -> Cluster:
    """n devices like the cluster's first, as many per node as it has."""
    per = gpus_per_node(cluster)
    base = cluster.devices[0]
    return dataclasses.replace(cluster, devices=[dataclasses.replace(base, name=f"gpu{i}", node=i // per)
                                                 for i in range(n)])


def search_diagnosis(profile: Profile, cluster: Cluster, global_batch: int, base: TrainConfig, time_limit_s: float,
                     *, tp=None, dp=None, pp=None, dp_sharding=None) -> Diagnosis:
    """Why no configuration fits, and which changes would (each checked by a search): recompute on, the
    degrees or sharding left free, more GPUs of the same kind (2x, 4x, 8x)."""
    limit = min(d.memory_bytes for d in cluster.devices)
    configs = enumerate_configs(profile, cluster, global_batch, base, tp=tp, dp=dp, pp=pp, dp_sharding=dp_sharding)
    least = min((max(b.memory_bytes, b.largest_layer_bytes), cfg)
                for cfg in configs for b in [bounds(profile, cluster, cfg)]) if configs else None
    problems = []
    if least is not None:
        need, cfg = least
        problems.append(f"the least memory any configuration needs per device is at least {need / GiB:.2f} GiB "
                        f"(pp {cluster.num_devices // (cfg.data_parallel * cfg.tensor_parallel)} x dp "
                        f"{cfg.data_parallel} {cfg.dp_sharding} x tp {cfg.tensor_parallel}), the devices have "
                        f"{limit / GiB:.2f} GiB")
    suggestions: list[str] = []

    def attempt(text: str, cl: Cluster, b: TrainConfig, **narrow) -> bool:
        try:
            r = search_parallel(profile, cl, global_batch, base=b, top_k=1, time_limit_s=time_limit_s,
                                diagnose=False, **narrow)
        except PipeplanError:
            return False
        if r.ranked:
            c = r.ranked[0]
            suggestions.append(f"{text}: {c.label} fits, predicted step {c.step_time_ms:.1f} ms")
            return True
        return False

    narrow = {"tp": tp, "dp": dp, "pp": pp, "dp_sharding": dp_sharding}
    if base.recompute != "on" and schedule_spec(base.schedule).supports_recompute:
        attempt("turn activation recomputation on (--recompute on)", cluster,
                dataclasses.replace(base, recompute="on"), **narrow)
    if any(x is not None for x in narrow.values()):
        attempt("let pipeplan choose the degrees and the sharding (--parallel auto: other TP degrees, ZeRO-1, FSDP)",
                cluster, base)
    for factor in (2, 4, 8):
        n = cluster.num_devices * factor
        try:
            bigger = _like(cluster, n)
        except PipeplanError:
            break
        if attempt(f"use {n} GPUs like {cluster.devices[0].name} ({gpus_per_node(cluster)} per node)", bigger,
                   dataclasses.replace(base, recompute="auto") if base.recompute == "off" else base):
            break
    return Diagnosis(message=f"no configuration of {cluster.num_devices} GPUs fits in memory for global batch "
                             f"{global_batch}", problems=problems, suggestions=suggestions)


def mesh_diagnosis(profile: Profile, cluster: Cluster, config: TrainConfig) -> Diagnosis:
    """The diagnosis of a fixed-degree plan that does not fit (solve() on a mesh): the search diagnosis with
    the config's degrees, sharding and micro-batching fixed."""
    per_replica = config.samples_per_step
    B = per_replica * config.data_parallel
    pp = cluster.num_devices // (config.data_parallel * config.tensor_parallel)
    return search_diagnosis(profile, cluster, B, config, min(2.0, config.time_limit_s), tp=config.tensor_parallel,
                            dp=config.data_parallel, pp=pp, dp_sharding=config.dp_sharding)
