"""The inference cost model (issue 20): forward-only pipelines, no backward, no optimizer.

One place for the inference terms; the solver (planner.solvers.inference), the simulator
(planner.pipeline.inference_sim), the CLI, the app and the export read them from here. The
training formulas are imported, not copied: bytes per parameter (memory.bytes_per_param),
activation dtype scale (memory.activation_scale), link time (cost.boundary_comm_ms), device
speed (cost.speeds) and the forward time of a stage (cost.StageTimeCoefficients.compute_ms).

Per stage s on device d holding the contiguous node interval [i, j) of the topological order:

    compute_s = fwd_ref[i:j] / speed_d + action_overhead_d                 (forward only)
    recv_s    = boundary_comm_ms(d_{s-1}, d_s, cut_bytes[i], cut_tensors[i])   (0 on stage 0)
    send_s    = boundary_comm_ms(d_s, d_{s+1}, cut_bytes[j], cut_tensors[j])   (0 on the last stage)
    period_s  = recv_s + compute_s + send_s      (a blocking recv -> forward -> send loop)

    throughput = micro_batch_size / max_s period_s * 1000        samples/s of a stream
    latency    = sum_s compute_s + sum of boundary transfers      ms for one request

    memory_s = weights + live + work + reserve
      weights = params_s * weight_bytes(weight_dtype)       (fp32 4, bf16 2, int8 1)
      live    = in_flight * scale * held,   held = in_bytes + out_bytes - relay_bytes
                in_bytes: the tensors received (cut_bytes[i], the model input on stage 0);
                out_bytes: the tensors held until sent (cut_bytes[j]) plus the model outputs
                (nodes without consumers) produced by the stage; a relayed tensor (received and
                sent on untouched) is one tensor: counted once - so is a model input a later stage reads
                (the profiler's edge from the first layer; see IntervalTerms).
      work    = scale * max(0, transient - held): what one micro-batch's forward needs beyond what it
                holds once done, where
                transient = max_{k in [i, j)} in_bytes + made_k + sinks_k + peak_k
                  made_k:  bytes nodes i..k-1 made that node k or later reads (cut_bytes[k] minus what
                           crossed cut i: relay_matrix[i, k]);
                  sinks_k: model outputs made by nodes i..k-1;
                  peak_k:  node k's own forward peak without autograd, its outputs included
                           (ProfileNode.fwd_peak_bytes, measured by the profiler; output_bytes where 0).
                No saved activations (no backward). With one micro-batch in flight the stage peaks at
                max(held, transient) = live + work: what the exported job measures (core.live_bytes).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from core.errors import PipeplanError
from core.jsonio import build_dataclass, load_json_text
from planner.contracts.inference_config import (  # noqa: F401  (re-exported: the contract lives in contracts/)
    ACTIVATION_DTYPES,
    OBJECTIVES,
    WEIGHT_DTYPES,
    InferenceConfig,
    training_precision,
)
from planner.costmodel.cost import (
    CostTables,
    StageTimeCoefficients,
    boundary_comm_ms,
    build_tables,
    speeds,
)
from planner.costmodel.memory import activation_scale, bytes_per_param


def weight_bytes_per_param(weight_dtype: str) -> int:
    """Bytes of one served weight: fp32 and bf16 from the training table (memory.bytes_per_param's
    weight column); int8 weights (weight-only quantisation, where the user says so) one byte."""
    if weight_dtype == "int8":
        return 1
    return bytes_per_param(training_precision(weight_dtype), "sgd")[0]


def inference_activation_scale(profile_dtype: str, activation_dtype: str) -> float:
    """Factor from the profile's activation bytes to the serving dtype's (memory.activation_scale)."""
    return activation_scale(profile_dtype, training_precision(activation_dtype))


@dataclass(kw_only=True, slots=True)
class InferenceMemory:
    weights: int = 0
    live: int = 0
    """Inputs and outputs of the micro-batches in flight (held until sent)."""
    work: int = 0
    reserve: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.live + self.work + self.reserve

    def activation_peak(self, in_flight: int) -> int:
        """Activation bytes at the peak with one micro-batch in the stage (what the job measures)."""
        return round(self.live / in_flight) + self.work

    def to_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["total"] = self.total
        return d

    @classmethod
    def from_dict(cls, data: Any) -> InferenceMemory:
        return build_dataclass(cls, _without(data, ("total",), "inference stage memory"), "inference stage memory")


@dataclass(kw_only=True, slots=True)
class InferenceStage:
    index: int
    device: int
    nodes: list[str]
    compute_ms: float
    recv_ms: float
    send_ms: float
    memory: InferenceMemory
    memory_limit: int
    in_bytes: int = 0
    out_bytes: int = 0

    @property
    def period_ms(self) -> float:
        return self.recv_ms + self.compute_ms + self.send_ms

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.memory_limit

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "device": self.device, "nodes": self.nodes, "compute_ms": self.compute_ms,
                "recv_ms": self.recv_ms, "send_ms": self.send_ms, "period_ms": self.period_ms,
                "memory": self.memory.to_dict(), "memory_limit": self.memory_limit, "fits": self.fits,
                "in_bytes": self.in_bytes, "out_bytes": self.out_bytes}

    @classmethod
    def from_dict(cls, data: Any) -> InferenceStage:
        data = _without(data, ("period_ms", "fits"), "inference stage")
        data["memory"] = InferenceMemory.from_dict(data.get("memory"))
        return build_dataclass(cls, data, "inference stage")


def _without(data: Any, derived: tuple[str, ...], where: str) -> dict[str, Any]:
    """A copy of a JSON object without the fields to_dict derives (they are recomputed, not trusted)."""
    if not isinstance(data, dict):
        raise PipeplanError(f"{where} must be a JSON object")
    return {k: v for k, v in data.items() if k not in derived}


INFERENCE_PLAN_SCHEMA = "pipeplan.inferenceplan/1"
INFERENCE_PLAN_DERIVED = ("mode", "period_ms", "throughput_sps", "latency_ms", "fits", "meets_budget")
"""Fields InferencePlan.to_dict writes for readers and from_dict recomputes."""


@dataclass(kw_only=True, slots=True)
class InferencePlan:
    config: InferenceConfig
    stages: list[InferenceStage]
    cuts: list[int]
    """Positions in the topological order where a stage ends (len = stages - 1)."""
    solver: dict[str, Any] = field(default_factory=dict)
    schema: str = INFERENCE_PLAN_SCHEMA

    @property
    def period_ms(self) -> float:
        return max(s.period_ms for s in self.stages)

    @property
    def throughput_sps(self) -> float:
        return throughput_sps(self.period_ms, self.config.micro_batch_size)

    @property
    def latency_ms(self) -> float:
        return latency_ms(self.stages)

    @property
    def fits(self) -> bool:
        return all(s.fits for s in self.stages)

    @property
    def meets_budget(self) -> bool:
        b = self.config.latency_budget_ms
        return b is None or self.latency_ms <= b * (1 + 1e-9)

    @property
    def objective_value(self) -> float:
        return self.period_ms if self.config.objective == "throughput" else self.latency_ms

    def solver_summary(self) -> str:
        """Which solver answered and whether the optimum is proven (the CLI and the app show it)."""
        info = self.solver
        if not info:
            return "cuts given, not solved"
        proof = "proven optimal" if info.get("exact") else info.get("note", "not proven optimal")
        return f"solved by {info.get('method', '?')} in {info.get('seconds', 0.0):.2f} s: {proof}"

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "mode": "inference", "config": self.config.to_dict(), "cuts": self.cuts,
                "stages": [s.to_dict() for s in self.stages], "period_ms": self.period_ms,
                "throughput_sps": self.throughput_sps, "latency_ms": self.latency_ms, "fits": self.fits,
                "meets_budget": self.meets_budget, "solver": self.solver}

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> InferencePlan:
        """The plan of to_dict (the CLI's `-o` file adds "model", "cluster" and "simulated": ignored here)."""
        data = _without(data, (*INFERENCE_PLAN_DERIVED, "model", "cluster", "simulated"), "inference plan")
        if data.get("schema", INFERENCE_PLAN_SCHEMA) != INFERENCE_PLAN_SCHEMA:
            raise PipeplanError(f"inference plan schema {data.get('schema')!r} is not supported; expected "
                                f"{INFERENCE_PLAN_SCHEMA!r}")
        data["config"] = InferenceConfig.from_dict(data.get("config"))
        stages = data.get("stages")
        if not isinstance(stages, list) or not stages:
            raise PipeplanError("inference plan.stages must be a non-empty list")
        data["stages"] = [InferenceStage.from_dict(st) for st in stages]
        plan = build_dataclass(cls, data, "inference plan")
        if len(plan.cuts) != len(plan.stages) - 1:
            raise PipeplanError(f"inference plan has {len(plan.stages)} stages but {len(plan.cuts)} cuts; "
                                "a plan of S stages has S - 1 cuts")
        return plan

    @classmethod
    def from_json(cls, text: str | bytes) -> InferencePlan:
        return cls.from_dict(load_json_text(text, "inference plan"))


def throughput_sps(period_ms: float, micro_batch_size: int) -> float:
    """Samples per second of a steady stream: one micro-batch leaves every period."""
    return 1000.0 * micro_batch_size / period_ms if period_ms > 0 else float("inf")


def latency_ms(stages: list[InferenceStage]) -> float:
    """One request through every stage: the forwards plus each boundary transfer once (a stage's send
    is the next one's recv)."""
    return sum(s.compute_ms for s in stages) + sum(s.send_ms for s in stages[:-1])


class IntervalTerms:
    """Prefix sums over the topological order so any stage [i, j) costs O(1) (O(j-i) for `work`)."""

    def __init__(self, tables: CostTables, nodes: list) -> None:
        """nodes: the profile's ProfileNodes, in the tables' order (their output and forward peak bytes)."""
        from planner.solvers.dp import cut_bytes, cut_tensors, relay_matrix  # the training DP's cut helpers

        N = tables.num_nodes
        self.N = N
        profile_nodes_output = np.array([n.output_bytes for n in nodes], dtype=float)
        # a node's own forward peak (its outputs included); unmeasured (0): its outputs
        self.peak = np.maximum(profile_nodes_output, np.array([n.fwd_peak_bytes for n in nodes], dtype=float))
        self.fwd = np.concatenate([[0.0], np.cumsum(tables.fwd)])
        self.params = np.concatenate([[0], np.cumsum(tables.params)])
        self.cut_bytes, _ = cut_bytes(tables)
        self.cut_bytes = self.cut_bytes.copy()
        self.cut_bytes[0] = tables.model_input_bytes
        self.cut_tensors, _ = cut_tensors(tables)
        self.cut_tensors = self.cut_tensors.copy()
        self.cut_tensors[0] = max(int(self.cut_tensors[0]), 1)
        self.relay = relay_matrix(tables)
        consumed = np.zeros(N, dtype=bool)
        for t in tables.tensors:
            consumed[t.producer] = True
        sink = np.where(consumed, 0.0, profile_nodes_output)
        self.sink = np.concatenate([[0.0], np.cumsum(sink)])
        self.out = profile_nodes_output
        # The profiler draws a model input that a later layer reads as an edge from the first layer
        # (profiler.analyze._add_edges; no gradient). On stage 0 it is the input tensor itself, relayed:
        # held once. in_relay[j]: bytes of those crossing cut j.
        self.in_relay = np.zeros(N + 1)
        for t in tables.tensors:
            if t.producer == 0 and not t.requires_grad and t.nbytes <= tables.model_input_bytes:
                self.in_relay[1:t.last_consumer + 1] += t.nbytes

    def relay_bytes(self, i: int, j: int) -> float:
        return 0.0 if self.relay is None or i >= j else float(self.relay[i, j])

    def held_bytes(self, i: int, j: int, last: bool) -> tuple[float, float, float]:
        """(in, out, relayed) bytes per micro-batch of stage [i, j) in the profile's dtype."""
        inp = float(self.cut_bytes[i])
        out = (0.0 if last else float(self.cut_bytes[j])) + float(self.sink[j] - self.sink[i])
        relayed = 0.0 if last else self.relay_bytes(i, j) + (float(self.in_relay[j]) if i == 0 else 0.0)
        return inp, out, relayed

    def transient_bytes(self, i: int, j: int) -> float:
        """Peak bytes alive while stage [i, j) runs one micro-batch, in the profile's dtype: for each node k,
        the stage's input (held through the forward), what nodes i..k-1 made that node k or a later one
        reads, the model outputs made so far, and node k's own forward peak; the largest over k."""
        k = np.arange(i, j)
        crossing = self.cut_bytes[k].copy()
        if self.relay is not None:
            crossing -= self.relay[i, k]  # made before i: part of the input, counted there
        if i == 0:
            crossing -= self.in_relay[k]  # the model input, read again later: the input itself
        crossing[0] = 0.0  # at k = i everything crossing is the input
        alive = self.cut_bytes[i] + crossing + (self.sink[k] - self.sink[i]) + self.peak[k]
        return float(alive.max())


def stage_terms(terms: IntervalTerms, tables: CostTables, cluster, config: InferenceConfig, speed: list[float],
                i: int, j: int, dev: int, prev_dev: int | None, next_dev: int | None) -> InferenceStage:
    """One stage's times and memory: the formulas of the module docstring."""
    d = cluster.devices[dev]
    fwd, _, _, _ = StageTimeCoefficients(speed=speed[dev], action_overhead_ms=d.action_overhead_ms).compute_ms(
        float(terms.fwd[j] - terms.fwd[i]), 0.0, 0.0)
    recv = 0.0 if prev_dev is None else boundary_comm_ms(cluster, prev_dev, dev, float(terms.cut_bytes[i]),
                                                         int(terms.cut_tensors[i]))
    send = 0.0 if next_dev is None else boundary_comm_ms(cluster, dev, next_dev, float(terms.cut_bytes[j]),
                                                         int(terms.cut_tensors[j]))
    scale = inference_activation_scale(tables.dtype, config.activation_dtype)
    inp, out, rel = terms.held_bytes(i, j, next_dev is None)
    held = inp + out - rel
    work = max(0.0, terms.transient_bytes(i, j) - held) if j > i else 0.0
    mem = InferenceMemory(weights=int(terms.params[j] - terms.params[i]) * weight_bytes_per_param(config.weight_dtype),
                          live=round(config.in_flight * scale * held), work=round(scale * work),
                          reserve=config.reserve_bytes)
    return InferenceStage(index=0, device=dev, nodes=list(tables.ids[i:j]), compute_ms=float(fwd), recv_ms=recv,
                          send_ms=send, memory=mem, memory_limit=int(d.memory_bytes),
                          in_bytes=round(scale * inp), out_bytes=round(scale * out))


def evaluate_cuts(profile, cluster, config: InferenceConfig, cuts: list[int], devices: list[int] | None = None,
                  tables: CostTables | None = None, terms: IntervalTerms | None = None) -> InferencePlan:
    """The InferencePlan of the stages the cuts make (cut c: a stage ends before node position c),
    on `devices` (default: the first len(cuts)+1 devices of the cluster)."""
    tables = tables or build_tables(profile)
    terms = terms or IntervalTerms(tables, profile.nodes)
    bounds = [0, *cuts, tables.num_nodes]
    S = len(bounds) - 1
    devices = devices if devices is not None else list(range(S))
    if len(devices) != S or S > cluster.num_devices:
        raise PipeplanError(f"{S} stages need {S} devices; the cluster has {cluster.num_devices}")
    if any(bounds[k] >= bounds[k + 1] for k in range(S)):
        raise PipeplanError(f"cuts {cuts} must be strictly increasing inside 1..{tables.num_nodes - 1}")
    sp = speeds(cluster, profile)
    stages = []
    for s in range(S):
        st = stage_terms(terms, tables, cluster, config, sp, bounds[s], bounds[s + 1], devices[s],
                         devices[s - 1] if s else None, devices[s + 1] if s + 1 < S else None)
        st.index = s
        stages.append(st)
    return InferencePlan(config=config, stages=stages, cuts=list(cuts))
