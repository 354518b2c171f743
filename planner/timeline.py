"""The Timeline contract: what the simulator says happens, op by op."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from planner._json import build_dataclass
from profiler.errors import PipeplanError
from profiler.profile import load_json_text

SCHEMA = "pipeplan.timeline/1"

OPS = ("F", "B", "W", "send", "recv")
"""F: forward. B: backward (full, or input-grad only when W is separate). W: weight-grad."""


@dataclass(kw_only=True, slots=True)
class Event:
    device: int
    stage: int
    microbatch: int
    op: str
    start_ms: float
    end_ms: float
    peer_stage: int = -1
    """send/recv only: the stage at the other end of the transfer; -1 for F/B/W."""


@dataclass(kw_only=True, slots=True)
class Timeline:
    schedule: str
    num_devices: int
    num_microbatches: int
    events: list[Event]
    makespan_ms: float
    bubble_fraction: float
    """Idle share of all devices' compute time over the makespan."""
    bubble_per_device: list[float]
    memory_ms: list[list[tuple[float, int]]] = field(default_factory=list)
    """Per device: (time, activation bytes held) steps, starting at (0, 0)."""
    peak_memory_bytes: list[int] = field(default_factory=list)
    """Per device: peak activation bytes over the step."""
    virtual_stages: int = 1
    """Stages (chunks) per device: 2 for ZBV, v for Interleaved1F1B, else 1."""
    stage_device: list[int] = field(default_factory=list)
    """Device of every stage (loop or V placement)."""
    peak_in_flight: list[int] = field(default_factory=list)
    """Per stage: peak micro-batches whose activations it holds, read off the events
    (equals planner.schedules.in_flight_microbatches; tests check it)."""
    schema: str = SCHEMA

    @property
    def num_stages(self) -> int:
        return len(self.stage_device) or self.num_devices * self.virtual_stages

    def compute_events(self) -> list[Event]:
        """F, B and W events only (no transfers)."""
        return [e for e in self.events if e.op in ("F", "B", "W")]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Timeline:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise PipeplanError(f"timeline JSON must be an object with schema {SCHEMA!r}")
        d = dict(data)
        d["events"] = [build_dataclass(Event, e, f"timeline events[{i}]") for i, e in enumerate(d.get("events", []))]
        try:
            d["memory_ms"] = [[tuple(p) for p in dev] for dev in d.get("memory_ms", [])]
        except TypeError:
            raise PipeplanError("timeline memory_ms must be a list per device of [time, bytes] pairs") from None
        return build_dataclass(cls, d, "timeline")

    @classmethod
    def from_json(cls, text: str | bytes) -> Timeline:
        return cls.from_dict(load_json_text(text, "timeline"))
