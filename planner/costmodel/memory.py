"""The memory model: the one place that says how many bytes a stage needs.

The ILP, the chain DP, the baselines, the simulator, the app and the export all
call these functions; docs/cost-model.md writes the same formulas down with
their sources.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from planner.contracts.config import TrainConfig

# Bytes per parameter as (weights, gradients, optimizer state).
# fp32: weights and grads in fp32; Adam keeps m and v in fp32 (8 B), SGD with
# momentum one buffer (4 B). bf16_mixed follows the ZeRO paper's accounting
# (Rajbhandari et al. 2020, sec. 3.1): bf16 weights (2) and grads (2), and an
# fp32 master copy plus Adam's m and v (4 + 4 + 4 = 12).
_BYTES_PER_PARAM: dict[tuple[str, str], tuple[int, int, int]] = {
    ("fp32", "adamw"): (4, 4, 8),
    ("fp32", "adam"): (4, 4, 8),
    ("fp32", "sgd"): (4, 4, 0),
    ("fp32", "sgd_momentum"): (4, 4, 4),
    ("bf16_mixed", "adamw"): (2, 2, 12),
    ("bf16_mixed", "adam"): (2, 2, 12),
    ("bf16_mixed", "sgd"): (2, 2, 4),
    ("bf16_mixed", "sgd_momentum"): (2, 2, 8),
}

_DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "bfloat16": 2, "bf16": 2, "fp16": 2, "float64": 8}


def bytes_per_param(precision: str, optimizer: str) -> tuple[int, int, int]:
    """(weight, gradient, optimizer-state) bytes per parameter for this precision and optimizer."""
    return _BYTES_PER_PARAM[(precision, optimizer)]


def activation_scale(profile_dtype: str, precision: str) -> float:
    """Factor from the profile's activation bytes to the training precision's.

    bf16 mixed precision stores activations in bf16: half of an fp32 profile's bytes.
    """
    train_bytes = 2 if precision == "bf16_mixed" else 4
    return train_bytes / _DTYPE_BYTES.get(profile_dtype, 4)


@dataclass(kw_only=True, slots=True)
class StageMemory:
    """Peak memory of one stage, in bytes, by what holds it."""

    params: int = 0
    grads: int = 0
    optimizer: int = 0
    activations: int = 0
    """Saved activations x micro-batches in flight (or boundary inputs with recomputation), plus the
    stage's own outputs x micro-batches in flight (the runtime keeps them until their backward)."""
    relay: int = 0
    """Tensors this stage only passes along (skip connections), x micro-batches in flight."""
    reserve: int = 0

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimizer + self.activations + self.relay + self.reserve

    def to_dict(self) -> dict[str, int]:
        d = asdict(self)
        d["total"] = self.total
        return d


def sharded_bytes_per_param(config: TrainConfig) -> tuple[float, float, float]:
    """(weight, gradient, optimizer-state) bytes per parameter one data-parallel rank holds
    (Rajbhandari et al. 2020, ZeRO, sec. 5; FSDP2 fully_shard), n = config.data_parallel:

        ddp:   (w, g, o)              every replica holds everything
        zero1: (w, g, o / n)          the optimizer state is sharded (ZeRO stage 1)
        fsdp:  (w / n, g / n, o / n)  parameters, gradients and optimizer state are sharded
                                      (plus one layer's unsharded weights: gather_buffer_bytes)
    """
    w, g, o = bytes_per_param(config.precision, config.optimizer)
    n = config.data_parallel
    if n <= 1 or config.dp_sharding == "ddp":
        return float(w), float(g), float(o)
    if config.dp_sharding == "zero1":
        return float(w), float(g), o / n
    return w / n, g / n, o / n


def gather_buffer_bytes(config: TrainConfig, largest_layer_params: int) -> int:
    """FSDP's all-gather buffer: the largest layer's unsharded weights (w bytes each), held while that layer
    runs; 0 unless dp_sharding is fsdp with data_parallel > 1. Conservatively the model's largest layer
    (one TP rank's share) on every stage, so the term stays a constant of the linear memory rows."""
    if config.dp_sharding != "fsdp" or config.data_parallel <= 1:
        return 0
    w, _, _ = bytes_per_param(config.precision, config.optimizer)
    return int(largest_layer_params) * w


def stage_memory_bytes(*, param_count: int, activation_bytes: float, input_bytes: float,
                       relay_bytes: float, in_flight: int, config: TrainConfig,
                       profile_dtype: str = "float32", recompute: bool = False,
                       largest_layer_params: int = 0, output_bytes: float = 0.0) -> StageMemory:
    """Peak bytes of one stage.

    param_count: parameters the stage owns (a tied parameter is counted on every
        stage that holds a copy); under tensor parallelism, one TP rank's share.
    activation_bytes: Σ saved-activation bytes per micro-batch of the stage's layers.
    input_bytes: bytes per micro-batch the stage receives from the previous one.
    relay_bytes: bytes per micro-batch passing through the stage untouched.
    in_flight: micro-batches whose activations the stage holds at its peak, from
        planner.pipeline.schedules.in_flight_microbatches for the schedule.
    largest_layer_params: the largest layer's parameters (FSDP's gather buffer, gather_buffer_bytes).
    output_bytes: bytes per micro-batch of the tensors the stage produces and sends to the next stage
        (its forward boundary less what it relays; 0 for the last stage). torch's PipelineStage keeps a
        micro-batch's outputs (fwd_cache) until that micro-batch's backward, on top of what autograd
        saves, so they count x in-flight like activations, with or without recomputation. (When the
        stage's last op also saves its output, e.g. a ReLU, that storage is held once: the model then
        counts it twice; see docs/cost-model.md.)

    Weights, gradients and optimizer state per parameter follow config.dp_sharding over
    config.data_parallel replicas (sharded_bytes_per_param; each sharded part rounded up).
    With recomputation a stage keeps only its inputs per in-flight micro-batch and
    rebuilds one micro-batch's activations at a time during backward
    (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost").
    """
    w, g, o = sharded_bytes_per_param(config)
    c = memory_coefficients(in_flight=in_flight, config=config, profile_dtype=profile_dtype, recompute=recompute)
    acts = (c.per_activation_byte * activation_bytes + c.per_input_byte * input_bytes
            + c.per_output_byte * output_bytes)
    return StageMemory(
        params=math.ceil(param_count * w) + gather_buffer_bytes(config, largest_layer_params),
        grads=math.ceil(param_count * g),
        optimizer=math.ceil(param_count * o),
        activations=round(acts),
        relay=round(c.per_relay_byte * relay_bytes),
        reserve=config.reserve_bytes,
    )


def device_memory(stages: list[StageMemory]) -> StageMemory:
    """The memory of one device that runs these stages: their parts summed, the reserve held once
    (it is per process: CUDA context, NCCL, allocator slack, not per stage)."""
    parts = {p: sum(getattr(m, p) for m in stages) for p in ("params", "grads", "optimizer", "activations", "relay")}
    return StageMemory(**parts, reserve=max((m.reserve for m in stages), default=0))


def stages_budget_bytes(memory_bytes: int, reserve_bytes: int) -> int:
    """What the stages of one device may use together: its memory less the reserve, taken once.
    The solvers' memory rows without the reserve term are checked against this."""
    return memory_bytes - reserve_bytes


def even_chunk_limit_bytes(memory_bytes: int, reserve_bytes: int, chunks: int) -> float:
    """A per-stage limit for `chunks` stages sharing one device: the stages' budget split evenly,
    plus the reserve (every stage's StageMemory counts it): stages that each fit it fit together."""
    return float(stages_budget_bytes(memory_bytes, reserve_bytes) // chunks + reserve_bytes)


@dataclass(frozen=True, slots=True)
class MemoryCoefficients:
    """stage_memory_bytes as a linear function, for solvers (ILP, DP) that need it so:
    total ~= per_param * param_count + per_activation_byte * activation_bytes
             + per_input_byte * input_bytes + per_output_byte * output_bytes
             + per_relay_byte * relay_bytes + constant
    (stage_memory_bytes rounds the activation and relay terms to whole bytes)."""

    per_param: int
    per_activation_byte: float
    per_input_byte: float
    per_relay_byte: float
    constant: int
    per_output_byte: float = 0.0

    def total_bytes(self, param_count, activation_bytes, input_bytes, relay_bytes=0.0, output_bytes=0.0):
        """stage_memory_bytes(...).total from these coefficients, rounded as it rounds (half to even);
        on floats or numpy arrays (the DP evaluates every interval at once)."""
        return (self.per_param * param_count
                + np.rint(self.per_activation_byte * activation_bytes + self.per_input_byte * input_bytes
                          + self.per_output_byte * output_bytes)
                + np.rint(self.per_relay_byte * relay_bytes) + self.constant)


def memory_coefficients(*, in_flight: int, config: TrainConfig, profile_dtype: str = "float32",
                        recompute: bool = False, largest_layer_params: int = 0) -> MemoryCoefficients:
    """The coefficients of stage_memory_bytes for one stage; the one place the
    activation/recompute/relay rule is written. Under zero1/fsdp per_param is fractional (the sharded
    parts), and fsdp's gather buffer is part of the constant."""
    w, g, o = sharded_bytes_per_param(config)
    scale = activation_scale(profile_dtype, config.precision)
    if recompute:
        per_act, per_input = scale, in_flight * scale
    else:
        per_act, per_input = in_flight * scale, 0.0
    per_param = w + g + o
    return MemoryCoefficients(per_param=int(per_param) if per_param == int(per_param) else per_param,
                              per_activation_byte=per_act, per_input_byte=per_input,
                              per_relay_byte=in_flight * scale, per_output_byte=in_flight * scale,
                              constant=config.reserve_bytes + gather_buffer_bytes(config, largest_layer_params))


def stage_output_bytes(boundary_bytes, relay_bytes):
    """Bytes per micro-batch a stage produces and sends on (stage_memory_bytes' output_bytes): the
    forward bytes of its out boundary less the tensors it only relays (those count as relay). On floats
    or numpy arrays; 0 for the last stage (pass boundary_bytes = 0)."""
    return np.maximum(np.asarray(boundary_bytes, dtype=float) - relay_bytes, 0.0) if np.ndim(boundary_bytes) \
        else max(float(boundary_bytes) - float(relay_bytes), 0.0)
