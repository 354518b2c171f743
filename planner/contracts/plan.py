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
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.costmodel.memory import StageMemory
from profiler.profile import ModelInfo

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
    """"optimal", "feasible" (time limit hit, gap > 0), "infeasible", "heuristic"."""
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
        if not isinstance(data, dict):
            raise PipeplanError("plan JSON must be an object")
        if data.get("schema") != SCHEMA:
            raise PipeplanError(f"plan schema {data.get('schema')!r} is not supported; expected {SCHEMA!r}")
        d = dict(data)
        try:
            d["model"] = build_dataclass(ModelInfo, d.get("model"), "plan model")
            d["cluster"] = Cluster.from_dict(d.get("cluster"))
            d["config"] = TrainConfig.from_dict(d.get("config"))
            stages = []
            for i, s in enumerate(d.get("stages") or []):
                s = dict(s)
                mem = dict(s.get("memory") or {})
                mem.pop("total", None)
                s["memory"] = build_dataclass(StageMemory, mem, f"plan stages[{i}].memory")
                stages.append(build_dataclass(StagePlan, s, f"plan stages[{i}]"))
            d["stages"] = stages
            n_dev = d["cluster"].num_devices
            for i, s in enumerate(stages):
                if isinstance(s.device, int) and not 0 <= s.device < n_dev:
                    raise PipeplanError(f"plan stages[{i}] runs on device {s.device}, but the plan's cluster has "
                                        f"{n_dev} devices (0..{n_dev - 1}); re-create the plan with `pipeplan plan`")
            if d.get("solver") is not None:
                d["solver"] = build_dataclass(SolverInfo, d["solver"], "plan solver")
            if d.get("diagnosis") is not None:
                d["diagnosis"] = build_dataclass(Diagnosis, d["diagnosis"], "plan diagnosis")
        except (TypeError, AttributeError) as exc:
            raise PipeplanError(f"plan JSON is malformed: {exc}") from None
        return build_dataclass(cls, d, "plan")

    @classmethod
    def from_json(cls, text: str | bytes) -> Plan:
        return cls.from_dict(load_json_text(text, "plan"))
