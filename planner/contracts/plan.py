"""The Plan contract: where the model is cut, what each stage costs, and why.

A Plan carries its inputs (model identity, cluster, config) so that
`pipeplan simulate plan.json` and `pipeplan export plan.json` need nothing else.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import PipeplanError
from core.jsonio import build_dataclass, load_json_text
from core.limits import MAX_PROFILE_NODES, MAX_STAGES
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.costmodel.memory import StageMemory
from profiler.profile import ModelInfo, Profile

SCHEMA = "pipeplan.plan/1"


@dataclass(kw_only=True, slots=True)
class StagePlan:
    index: int
    device: int
    """Index into cluster.devices."""
    node_ids: list[str]
    """Profile node ids (layers) in this stage, in topological order."""
    fwd_ms: float
    """Forward time per micro-batch on this stage's device (recompute not included)."""
    bwd_ms: float
    """Full backward time per micro-batch, including the recomputed forward if any."""
    bwd_input_ms: float
    """Input-gradient part of backward (B), for zero-bubble schedules."""
    bwd_weight_ms: float
    """Weight-gradient part of backward (W)."""
    comm_out_ms: float
    """Time to send this stage's outputs (all relayed tensors included) to the next stage, per micro-batch."""
    comm_out_bytes: int
    """Bytes per micro-batch crossing the boundary after this stage."""
    comm_grad_ms: float = 0.0
    """Time to move the gradients of those tensors back over the same boundary, per micro-batch
    (tensors without requires_grad send no gradient)."""
    relay_bytes: int = 0
    """Bytes per micro-batch this stage only passes along (produced before it, consumed after it)."""
    input_bytes: int = 0
    """Bytes per micro-batch this stage receives from the previous stage (model inputs for stage 0)."""
    recompute: bool
    in_flight: int
    """Micro-batches held in flight at peak (the schedule's memory function)."""
    memory: StageMemory
    memory_limit_bytes: int
    param_count: int
    optimizer_ms: float = 0.0
    """Time of this stage's optimizer step (global-norm clipping + update) once per training step;
    0 when the profile has no optimizer times (planner.costmodel.cost.stage_optimizer_ms)."""
    dp_sync_ms: float = 0.0
    """Data-parallel gradient sync of this stage once per step (all-reduce under ddp, reduce-scatter plus
    all-gather under zero1/fsdp: planner.costmodel.parallel.dp_sync_ms), run after the pipeline drains,
    before the optimizer step; 0 without data parallelism."""

    @property
    def compute_ms(self) -> float:
        return self.fwd_ms + self.bwd_ms

    @property
    def memory_fraction(self) -> float:
        return self.memory.total / self.memory_limit_bytes


@dataclass(kw_only=True, slots=True)
class SolverInfo:
    backend: str
    """"highs", "cbc", "dp", or a baseline name."""
    status: str
    """"optimal" (proven under the simulator: no plan in the search space simulates faster), "feasible" (the
    gap, when set, bounds how much faster any plan can simulate), "infeasible", or "evaluated" (a given or
    baseline partition, scored but not searched)."""
    objective_ms: float | None = None
    lower_bound_ms: float | None = None
    gap: float | None = None
    """Proven relative gap (objective - bound) / objective; 0 when optimal."""
    seconds: float = 0.0
    note: str = ""
    """How the plan was found when that limits what its status claims, e.g. that the graph was
    coarsened into blocks (planner.solvers.coarsen); empty otherwise."""


@dataclass(kw_only=True, slots=True)
class Diagnosis:
    """Why no plan fits, and the smallest changes that would make one fit."""

    message: str
    problems: list[str] = field(default_factory=list)
    """"device 0 (gpu0) needs 31.2 GiB, has 24.0 GiB: 7.2 GiB over" ..."""
    suggestions: list[str] = field(default_factory=list)
    """Changes checked by re-solving: "use 6 devices", "recompute on", "bf16_mixed" ..."""
    min_devices: int | None = None
    min_memory_bytes: int | None = None


@dataclass(kw_only=True, slots=True)
class Plan:
    model: ModelInfo
    profile_fingerprint: str
    cluster: Cluster
    config: TrainConfig
    """The config as solved: num_microbatches is always set here."""
    feasible: bool
    stages: list[StagePlan] = field(default_factory=list)
    step_time_ms: float | None = None
    """Predicted time of one optimizer step (the schedule's makespan)."""
    throughput_samples_per_s: float | None = None
    bubble_fraction: float | None = None
    solver: SolverInfo | None = None
    diagnosis: Diagnosis | None = None
    baselines: dict[str, float | None] = field(default_factory=dict)
    """Predicted step time (ms) of each baseline partition under the same cost model (None: does not fit)."""
    schema: str = SCHEMA

    @property
    def node_to_stage(self) -> dict[str, int]:
        return {n: s.index for s in self.stages for n in s.node_ids}

    def module_fqns_per_stage(self) -> list[list[str]]:
        """torchtitan's `module_fqns_per_model_part` shape: layer ids per stage."""
        return [list(s.node_ids) for s in self.stages]

    # -- JSON ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for s, stage in zip(d["stages"], self.stages):
            s["memory"]["total"] = stage.memory.total
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        """A Plan from its JSON object, or PipeplanError naming the bad field; the plan's structure is
        then checked (validate_plan) so a plan that contradicts itself is refused when it is read."""
        if not isinstance(data, dict):
            raise PipeplanError("plan JSON must be an object")
        if data.get("schema") != SCHEMA:
            raise PipeplanError(f"plan schema {data.get('schema')!r} is not supported; expected {SCHEMA!r}")
        d = dict(data)
        try:
            d["model"] = build_dataclass(ModelInfo, d.get("model"), "plan model")
            d["cluster"] = Cluster.from_dict(d.get("cluster"))
            d["config"] = TrainConfig.from_dict(d.get("config"))
            raw_stages = d.get("stages", [])
            if not isinstance(raw_stages, list):
                raise PipeplanError("plan stages must be a list of stage objects")
            _check_plan_counts(raw_stages)  # before any stage is built (core.limits)
            stages = []
            for i, s in enumerate(raw_stages):
                if not isinstance(s, dict):
                    raise PipeplanError(f"plan stages[{i}] must be a JSON object")
                s = dict(s)
                mem = s.get("memory", {})
                if not isinstance(mem, dict):
                    raise PipeplanError(f"plan stages[{i}].memory must be a JSON object")
                mem = dict(mem)
                mem.pop("total", None)
                s["memory"] = build_dataclass(StageMemory, mem, f"plan stages[{i}].memory")
                stages.append(build_dataclass(StagePlan, s, f"plan stages[{i}]"))
            d["stages"] = stages
            if d.get("solver") is not None:
                d["solver"] = build_dataclass(SolverInfo, d["solver"], "plan solver")
            if d.get("diagnosis") is not None:
                d["diagnosis"] = build_dataclass(Diagnosis, d["diagnosis"], "plan diagnosis")
        except (TypeError, AttributeError) as exc:
            raise PipeplanError(f"plan JSON is malformed: {exc}") from None
        plan = build_dataclass(cls, d, "plan")
        validate_plan(plan)
        return plan

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        return cls.from_dict(load_json_text(text, "plan"))

    def validate(self, profile: Profile | None = None) -> None:
        """validate_plan(self, profile)."""
        validate_plan(self, profile)


# -- structure: a plan that contradicts itself is refused ----------------------------------------
_REPLAN = "re-create the plan with `pipeplan plan`"
_NON_NEGATIVE = ("fwd_ms", "bwd_ms", "bwd_input_ms", "bwd_weight_ms", "comm_out_ms", "comm_out_bytes",
                 "comm_grad_ms", "relay_bytes", "input_bytes", "in_flight", "param_count", "optimizer_ms",
                 "dp_sync_ms")
_MEMORY_FIELDS = ("params", "grads", "optimizer", "activations", "relay", "reserve")


def _check_plan_counts(raw_stages: list) -> None:
    """A Plan JSON's stage and layer counts against core.limits, before anything is built from them."""
    if len(raw_stages) > MAX_STAGES:
        raise PipeplanError(f"plan JSON has {len(raw_stages)} stages; pipeplan plans at most {MAX_STAGES}; "
                            f"{_REPLAN}")
    layers = sum(len(s["node_ids"]) for s in raw_stages if isinstance(s, dict) and isinstance(s.get("node_ids"), list))
    if layers > MAX_PROFILE_NODES:
        raise PipeplanError(f"plan JSON lists {layers} layers in its stages; pipeplan plans at most "
                            f"{MAX_PROFILE_NODES}; {_REPLAN}")


def validate_plan(plan: Plan, profile: Profile | None = None) -> None:
    """Raise PipeplanError, naming the stage and the problem, unless the plan is self-consistent:

    - its config is of mode "train"; a feasible plan has stages; stage i has index i (0..S-1, in order) and at least one layer;
    - every layer is in exactly one stage ("stage 2 repeats layer 'layers.3' (also in stage 1)");
    - every stage's device is one of the plan's cluster; times, bytes and counts are >= 0 and the
      memory limit is > 0;
    - the schedule's rules: S = devices x chunks per device (chunks_per_device), the schedule accepts
      that many devices and the plan's micro-batches (check_schedule), and the stages sit where the
      schedule puts them (stage_to_device: every pipeline rank on one device, one rank per device);

    and, when the profile the plan was made from is given:

    - the plan's profile_fingerprint is the profile's;
    - every profile layer is in exactly one stage and the plan names no other layer;
    - the stages follow the layer graph: no edge runs from a later stage to an earlier one, and
      within a stage a layer comes after the layers it reads.
    """
    from planner.pipeline.schedules import check_schedule, chunks_per_device, stage_to_device

    if plan.config.mode != "train":
        raise PipeplanError(f"a training plan's config has mode {plan.config.mode!r}: an inference plan is an "
                            f"InferencePlan (`pipeplan infer`, docs/inference.md); {_REPLAN}")
    stages = plan.stages
    if plan.feasible and not stages:
        raise PipeplanError(f"plan says it is feasible but has no stages; {_REPLAN}")
    n_dev = plan.cluster.num_devices
    owner: dict[str, int] = {}
    for i, s in enumerate(stages):
        if s.index != i:
            raise PipeplanError(f"plan stage at position {i} has index {s.index}: stages must be numbered "
                                f"0..{len(stages) - 1} in order; {_REPLAN}")
        if not 0 <= s.device < n_dev:
            raise PipeplanError(f"plan stages[{i}] runs on device {s.device}, but the plan's cluster has "
                                f"{n_dev} devices (0..{n_dev - 1}); {_REPLAN}")
        if not s.node_ids:
            raise PipeplanError(f"plan stage {i} has no layers; {_REPLAN}")
        for name in _NON_NEGATIVE:
            if getattr(s, name) < 0:
                raise PipeplanError(f"plan stage {i} {name} is {getattr(s, name)!r}; it must be >= 0")
        for name in _MEMORY_FIELDS:
            if getattr(s.memory, name) < 0:
                raise PipeplanError(f"plan stage {i} memory.{name} is {getattr(s.memory, name)!r}; it must be >= 0")
        if s.memory_limit_bytes <= 0:
            raise PipeplanError(f"plan stage {i} memory_limit_bytes is {s.memory_limit_bytes!r}; it must be > 0")
        for node in s.node_ids:
            first = owner.setdefault(node, i)
            if first != i:
                raise PipeplanError(f"plan stage {i} repeats layer {node!r} (also in stage {first}); "
                                    f"every layer belongs to exactly one stage; {_REPLAN}")
        if len(set(s.node_ids)) != len(s.node_ids):
            twice = next(n for k, n in enumerate(s.node_ids) if n in s.node_ids[:k])
            raise PipeplanError(f"plan stage {i} lists layer {twice!r} twice; {_REPLAN}")
    if stages:
        _check_schedule_shape(plan, check_schedule, chunks_per_device, stage_to_device)
    if profile is not None:
        _check_against_profile(plan, profile, owner)


def _check_schedule_shape(plan: Plan, check_schedule, chunks_per_device, stage_to_device) -> None:
    cfg, stages = plan.config, plan.stages
    M = cfg.num_microbatches
    if M is None:
        raise PipeplanError(f"plan config has no num_microbatches; {_REPLAN}")
    v = chunks_per_device(cfg.schedule, cfg.virtual_stages)
    S = len(stages)
    devices = sorted({s.device for s in stages})
    P = len(devices)
    if S != P * v:
        per = f"{v} stages per device" if v > 1 else "one stage per device"
        raise PipeplanError(f"plan has {S} stages on {P} device(s), but {cfg.schedule} runs {per}: "
                            f"{P} device(s) need {P * v} stages; {_REPLAN}")
    try:
        check_schedule(cfg.schedule, P, M, cfg.virtual_stages)
    except PipeplanError as exc:
        raise PipeplanError(f"plan's schedule does not fit its stages: {exc}") from None
    ranks = stage_to_device(P, cfg.schedule, cfg.virtual_stages)
    device_of_rank: dict[int, int] = {}
    first_stage: dict[int, int] = {}
    for s, rank in zip(stages, ranks):
        if device_of_rank.setdefault(rank, s.device) != s.device:
            raise PipeplanError(f"plan stage {s.index} is on device {s.device}, but {cfg.schedule} places it on the "
                                f"device of stage {first_stage[rank]} (device {device_of_rank[rank]}); {_REPLAN}")
        first_stage.setdefault(rank, s.index)


def _check_against_profile(plan: Plan, profile: Profile, owner: dict[str, int]) -> None:
    fp = profile.fingerprint()
    if plan.profile_fingerprint != fp:
        raise PipeplanError(f"the plan was made from another profile (plan's profile_fingerprint "
                            f"{plan.profile_fingerprint!r}, this profile's is {fp!r}); re-plan from this profile")
    if not plan.stages:
        return
    ids = [n.id for n in profile.nodes]
    known = set(ids)
    for node, stage in owner.items():
        if node not in known:
            raise PipeplanError(f"plan stage {stage} lists layer {node!r}, which the profile does not have; {_REPLAN}")
    missing = [n for n in ids if n not in owner]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise PipeplanError(f"profile layer {missing[0]!r}{more} is in no stage of the plan: every layer belongs "
                            f"to exactly one stage; {_REPLAN}")
    position = {n: k for s in plan.stages for k, n in enumerate(s.node_ids)}
    for e in profile.edges:
        a, b = owner[e.src], owner[e.dst]
        if a > b:
            raise PipeplanError(f"plan stage {b} holds layer {e.dst!r}, which reads {e.src!r} from stage {a}, a later "
                                f"stage: stages must follow the layers' topological order; {_REPLAN}")
        if a == b and position[e.src] > position[e.dst]:
            raise PipeplanError(f"plan stage {a} lists layer {e.dst!r} before {e.src!r}, which it reads: a stage's "
                                f"layers must be in topological order; {_REPLAN}")
