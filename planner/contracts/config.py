"""The TrainConfig contract: how the pipeline is trained.

Optimizers and precisions are closed sets named here once (schedules in the registry,
planner.pipeline.schedules.SCHEDULE_SPECS); every other module refers to these names.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import PipeplanError
from core.jsonio import build_dataclass, check_number, load_json_text
from core.limits import (
    MAX_DATA_PARALLEL,
    MAX_GLOBAL_BATCH,
    MAX_MICROBATCHES,
    MAX_TENSOR_PARALLEL,
    MAX_VIRTUAL_STAGES,
    check_count,
)
from planner.contracts.inference_config import InferenceConfig, training_precision
from planner.pipeline.schedules import (  # noqa: F401  (re-exported: the closed set of schedule names)
    MULTI_CHUNK_SCHEDULES,
    SCHEDULE_SPECS,
    SCHEDULES,
    canonical_schedule,
    check_virtual_stages,
    schedule_spec,
)
from profiler.gpus import GiB

SCHEMA = "pipeplan.trainconfig/1"

OPTIMIZERS = ("adamw", "adam", "sgd", "sgd_momentum")
PRECISIONS = ("fp32", "bf16_mixed")
RECOMPUTE = ("off", "on", "auto")
DP_SHARDING = ("ddp", "zero1", "fsdp")
"""How data-parallel replicas hold the model state: "ddp" replicates everything and all-reduces gradients;
"zero1" shards the optimizer state (reduce-scatter gradients, all-gather parameters); "fsdp" shards
parameters, gradients and optimizer state (FSDP2 fully_shard). docs/hybrid.md has the cost of each."""
SOLVERS = ("auto", "highs", "cbc", "dp")
MODES = ("train", "inference")
""""train": forward, backward and optimizer under a pipeline schedule; "inference": forward only, planned for
throughput or latency under TrainConfig.inference (issue 20)."""


@dataclass(kw_only=True, slots=True)
class TrainConfig:
    schedule: str = "1F1B"
    """One of SCHEDULES (planner.pipeline.schedules.SCHEDULE_SPECS)."""
    num_microbatches: int | None = 8
    """Micro-batches per step (M). None: pick the fastest valid count for `global_batch`."""
    global_batch: int | None = None
    """Samples per optimizer step per pipeline replica; must be micro_batch_size x M."""
    micro_batch_size: int = 1
    """Samples per micro-batch; must equal the profile's micro-batch size."""
    virtual_stages: int = 1
    """Chunks (stages) per device: >1 only for Interleaved1F1B; ZBV always uses 2."""
    optimizer: str = "adamw"
    precision: str = "fp32"
    recompute: str = "off"
    """Activation recomputation: "off", "on" (every stage), "auto" (the solver picks per stage)."""
    reserve_bytes: int = 0
    """Memory held back on every device (CUDA context, NCCL, allocator fragmentation)."""
    data_parallel: int = 1
    """Pipeline replicas (data-parallel degree); each replica gets global_batch samples."""
    tensor_parallel: int = 1
    """Tensor-parallel degree: each pipeline stage runs on this many GPUs of one node, splitting the layers
    that have a TP plan (ProfileNode.tp_colwise / tp_rowwise) and replicating the others."""
    dp_sharding: str = "ddp"
    """One of DP_SHARDING: how the data_parallel replicas hold parameters, gradients and optimizer state."""
    solver: str = "auto"
    """"auto" (fastest available), "highs", "cbc" or "dp" (chains only)."""
    time_limit_s: float = 10.0
    """Solver time limit; on time-out the best plan found is returned with its proven gap."""
    device_order: str = "fixed"
    """"fixed": stage i on device i. "auto": the solver may reorder the devices."""
    mode: str = "train"
    """One of MODES. In "inference" the schedule, micro-batch count, optimizer and recompute do not apply."""
    inference: InferenceConfig | None = None
    """The serving settings in mode "inference" (default InferenceConfig() there); None in mode "train"."""
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        self.schedule = canonical_schedule(self.schedule)
        self._check_mode()
        if self.num_microbatches is not None:
            check_number(self.num_microbatches, "num_microbatches", positive=True, integer=True)
            if self.num_microbatches > MAX_MICROBATCHES:
                raise PipeplanError(f"num_microbatches {self.num_microbatches} is more than pipeplan plans "
                                    f"(at most {MAX_MICROBATCHES}); use larger micro-batches")
        if self.global_batch is not None:
            check_number(self.global_batch, "global_batch", positive=True, integer=True)
            if self.global_batch > MAX_GLOBAL_BATCH:
                raise PipeplanError(f"global_batch {self.global_batch} is more than pipeplan plans "
                                    f"(at most {MAX_GLOBAL_BATCH} samples per step per pipeline)")
        check_number(self.micro_batch_size, "micro_batch_size", positive=True, integer=True)
        check_number(self.virtual_stages, "virtual_stages", positive=True, integer=True)
        check_count(self.virtual_stages, MAX_VIRTUAL_STAGES, "virtual_stages")
        check_number(self.reserve_bytes, "reserve_bytes", integer=True, minimum=0)
        check_number(self.data_parallel, "data_parallel", positive=True, integer=True)
        check_count(self.data_parallel, MAX_DATA_PARALLEL, "data_parallel")
        check_number(self.tensor_parallel, "tensor_parallel", positive=True, integer=True)
        check_count(self.tensor_parallel, MAX_TENSOR_PARALLEL, "tensor_parallel")
        check_number(self.time_limit_s, "time_limit_s", positive=True)
        for name, allowed in (("optimizer", OPTIMIZERS), ("precision", PRECISIONS),
                              ("recompute", RECOMPUTE), ("solver", SOLVERS), ("dp_sharding", DP_SHARDING), ("device_order", ("fixed", "auto"))):
            value = getattr(self, name)
            if value not in allowed:
                raise PipeplanError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.recompute == "on" and not schedule_spec(self.schedule).supports_recompute:
            raise PipeplanError(f"{self.schedule} cannot recompute activations in the exported job (its weight-"
                                "gradient pass would rebuild each stage's forward many times, not once): use "
                                "recompute off or auto, or one of "
                                f"{', '.join(n for n, spec in SCHEDULE_SPECS.items() if spec.supports_recompute)} "
                                "with recompute on")
        fixed_chunks = schedule_spec(self.schedule).chunks_per_device
        if fixed_chunks is not None and fixed_chunks > 1:
            self.virtual_stages = fixed_chunks  # the schedule's own count (ZBV: 2), whatever was given
        else:
            check_virtual_stages(self.schedule, self.virtual_stages)
        if self.num_microbatches is None and self.global_batch is None:
            raise PipeplanError("give num_microbatches, or global_batch to let pipeplan choose the micro-batch count")
        if self.global_batch is not None:
            if self.global_batch % self.micro_batch_size:
                raise PipeplanError(f"global_batch {self.global_batch} is not a multiple of micro_batch_size "
                                    f"{self.micro_batch_size}")
            if self.num_microbatches is not None and \
                    self.num_microbatches * self.micro_batch_size != self.global_batch:
                raise PipeplanError(
                    f"{self.num_microbatches} micro-batches of {self.micro_batch_size} make "
                    f"{self.num_microbatches * self.micro_batch_size} samples, not global_batch {self.global_batch}; "
                    "fix one of them or leave num_microbatches empty to choose it automatically")

    def _check_mode(self) -> None:
        if self.mode not in MODES:
            raise PipeplanError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if isinstance(self.inference, dict):  # from JSON
            self.inference = InferenceConfig.from_dict(self.inference)
        if self.inference is not None and not isinstance(self.inference, InferenceConfig):
            raise PipeplanError("train config.inference must be a JSON object (the inference settings) or null, "
                                f"got {type(self.inference).__name__}")
        if self.mode == "train":
            if self.inference is not None:
                raise PipeplanError("inference settings were given in mode \"train\"; set mode \"inference\" "
                                    "to plan a forward-only pipeline, or drop them")
            return
        if self.inference is None:
            self.inference = InferenceConfig(micro_batch_size=self.micro_batch_size, reserve_bytes=self.reserve_bytes)
        # one value per setting: the serving ones are the inference config's, and must agree with these
        for name in ("micro_batch_size", "reserve_bytes"):
            if getattr(self.inference, name) != getattr(self, name):
                raise PipeplanError(f"{name} is {getattr(self, name)} but the inference settings say "
                                    f"{getattr(self.inference, name)}; give one value (TrainConfig.for_inference "
                                    "copies them)")
        if self.precision != training_precision(self.inference.weight_dtype):
            raise PipeplanError(f"precision {self.precision!r} does not match {self.inference.weight_dtype} "
                                f"weights (use {training_precision(self.inference.weight_dtype)!r})")

    @classmethod
    def for_inference(cls, inference: InferenceConfig, **overrides: Any) -> TrainConfig:
        """The TrainConfig of mode "inference" around these serving settings: micro-batch size, reserve and
        precision (the devices' speed preset) come from them."""
        return cls(mode="inference", inference=inference, micro_batch_size=inference.micro_batch_size,
                   reserve_bytes=inference.reserve_bytes, precision=training_precision(inference.weight_dtype),
                   **overrides)

    def recompute_choices(self) -> tuple[bool, ...]:
        """Per-stage recompute values the solvers may choose: "auto" never turns it on under a schedule the
        job cannot recompute under (ScheduleSpec.supports_recompute; "on" is refused there above)."""
        if not schedule_spec(self.schedule).supports_recompute:
            return (False,)
        return {"off": (False,), "on": (True,), "auto": (False, True)}[self.recompute]

    @property
    def samples_per_step(self) -> int:
        """Samples per optimizer step per pipeline replica."""
        if self.num_microbatches is not None:
            return self.num_microbatches * self.micro_batch_size
        return int(self.global_batch)

    # -- JSON ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        if isinstance(data, dict) and data.get("schema", SCHEMA) != SCHEMA:
            raise PipeplanError(f"train config schema {data.get('schema')!r} is not supported; expected {SCHEMA!r}")
        return build_dataclass(cls, data, "train config")

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainConfig:
        return cls.from_dict(load_json_text(text, "train config"))


DEFAULT_RESERVE_BYTES = 2 * GiB
"""Suggested reserve on CUDA devices: context + NCCL + cuBLAS workspace (Sailor measures 2-3 GB)."""
