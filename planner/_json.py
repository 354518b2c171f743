"""Small helpers shared by the planner's JSON contracts (Cluster, TrainConfig, Plan, Timeline)."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

from profiler.errors import PipeplanError


def build_dataclass(cls: type, data: Any, where: str):
    """Construct `cls(**data)`, rejecting unknown fields and naming the bad one."""
    if not isinstance(data, dict):
        raise PipeplanError(f"{where} must be a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PipeplanError(f"{where} has unknown field(s) {unknown}; known fields: {sorted(known)}")
    try:
        return cls(**data)
    except PipeplanError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise PipeplanError(f"{where}: {exc}") from None


def check_number(value: Any, where: str, *, positive: bool = False, integer: bool = False,
                 minimum: float | None = None) -> None:
    """Raise PipeplanError unless value is a finite number meeting the bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PipeplanError(f"{where} must be a number, got {value!r}")
    if integer and not isinstance(value, int):
        raise PipeplanError(f"{where} must be a whole number, got {value!r}")
    if not math.isfinite(value):
        raise PipeplanError(f"{where} must be finite, got {value!r}")
    if positive and value <= 0:
        raise PipeplanError(f"{where} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise PipeplanError(f"{where} must be >= {minimum}, got {value!r}")
