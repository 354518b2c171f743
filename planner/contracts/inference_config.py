"""The InferenceConfig contract (issue 20): how a forward-only pipeline serves.

It travels inside TrainConfig (mode "inference", TrainConfig.inference) and inside the inference plan's
JSON; the formulas that read it are planner.costmodel.inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from core.errors import PipeplanError
from core.jsonio import build_dataclass, check_number

OBJECTIVES = ("throughput", "latency")
WEIGHT_DTYPES = ("fp32", "bf16", "int8")
ACTIVATION_DTYPES = ("fp32", "bf16")
INFERENCE_SOLVERS = ("auto", "dp", "ilp")
""""dp": the Pareto DP (planner.solvers.inference); "ilp": the interval MILP (planner.solvers.inference_ilp);
"auto": the DP, and the MILP where the DP had to thin its labels (then the DP alone is not exact)."""


def training_precision(dtype: str) -> str:
    """The training precision (TrainConfig.precision) of a serving dtype: fp32 -> "fp32"; bf16, and int8
    weights (dequantised to bf16 math), -> "bf16_mixed". It picks the devices' speed preset and the
    training tables' bytes; one place for the cost model, the CLI and the app."""
    return "fp32" if dtype == "fp32" else "bf16_mixed"


@dataclass(kw_only=True, slots=True)
class InferenceConfig:
    """How the pipeline serves: the inference twin of TrainConfig."""

    objective: str = "throughput"
    """"throughput" (samples/s of a stream) or "latency" (ms for one request)."""
    latency_budget_ms: float | None = None
    """Optional constraint: a request's latency must not exceed it."""
    weight_dtype: str = "fp32"
    activation_dtype: str | None = None
    """None: bf16 with bf16 or int8 weights, else fp32."""
    micro_batch_size: int = 1
    """Samples per request (micro-batch); the profile's times are for its micro-batch size."""
    in_flight: int = 1
    """Micro-batches whose input and output a stage holds at once (1: a blocking loop)."""
    reserve_bytes: int = 0
    max_stages: int | None = None
    """At most this many stages (devices used); None: up to every device."""
    solver: str = "auto"
    """One of INFERENCE_SOLVERS."""

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise PipeplanError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.weight_dtype not in WEIGHT_DTYPES:
            raise PipeplanError(f"unknown weight dtype {self.weight_dtype!r}; choose one of {', '.join(WEIGHT_DTYPES)}")
        if self.activation_dtype is None:
            self.activation_dtype = "fp32" if self.weight_dtype == "fp32" else "bf16"
        if self.activation_dtype not in ACTIVATION_DTYPES:
            raise PipeplanError(f"unknown activation dtype {self.activation_dtype!r}; choose one of "
                                f"{', '.join(ACTIVATION_DTYPES)}")
        if self.latency_budget_ms is not None:
            check_number(self.latency_budget_ms, "latency_budget_ms", positive=True)
        check_number(self.micro_batch_size, "micro_batch_size", positive=True, integer=True)
        check_number(self.in_flight, "in_flight", positive=True, integer=True)
        check_number(self.reserve_bytes, "reserve_bytes", integer=True, minimum=0)
        if self.max_stages is not None:
            check_number(self.max_stages, "max_stages", positive=True, integer=True)
        if self.solver not in INFERENCE_SOLVERS:
            raise PipeplanError(f"unknown inference solver {self.solver!r}; choose one of "
                                f"{', '.join(INFERENCE_SOLVERS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> InferenceConfig:
        return build_dataclass(cls, data, "inference config")
