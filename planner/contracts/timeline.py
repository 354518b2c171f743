"""The Timeline contract: what the simulator says happens, op by op."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from core.errors import PipeplanError
from core.jsonio import build_dataclass, load_json_text

SCHEMA = "pipeplan.timeline/1"

OPS = ("F", "B", "W", "send", "recv", "O")
"""F: forward. B: backward (full, or input-grad only when W is separate). W: weight-grad.
O: the device's optimizer step (clipping + update of all its stages' parameters) after the
pipeline drains; its microbatch is -1."""


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
    (equals planner.pipeline.schedules.in_flight_microbatches; tests check it)."""
    schema: str = SCHEMA

    @property
    def num_stages(self) -> int:
        return len(self.stage_device) or self.num_devices * self.virtual_stages

    def compute_events(self) -> list[Event]:
        """F, B and W events only (no transfers, no optimizer step)."""
        return [e for e in self.events if e.op in ("F", "B", "W")]

    def busy_events(self) -> list[Event]:
        """What keeps a device busy: F, B, W and its optimizer step."""
        return [e for e in self.events if e.op in ("F", "B", "W", "O")]

    def to_dict(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies every event (~4 s at 10^5 events).
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("events", "memory_ms")}
        d["events"] = [{"device": e.device, "stage": e.stage, "microbatch": e.microbatch, "op": e.op,
                        "start_ms": e.start_ms, "end_ms": e.end_ms, "peer_stage": e.peer_stage}
                       for e in self.events]
        d["memory_ms"] = [[list(p) for p in dev] for dev in self.memory_ms]
        for key in ("bubble_per_device", "peak_memory_bytes", "stage_device", "peak_in_flight"):
            d[key] = list(d[key])
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Timeline:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise PipeplanError(f"timeline JSON must be an object with schema {SCHEMA!r}")
        d = dict(data)
        events = d.get("events", [])
        if not isinstance(events, list):
            raise PipeplanError("timeline events must be a list")
        d["events"] = [_event_from_json(e, i) for i, e in enumerate(events)]
        try:
            d["memory_ms"] = [[tuple(p) for p in dev] for dev in d.get("memory_ms", [])]
        except TypeError:
            raise PipeplanError("timeline memory_ms must be a list per device of [time, bytes] pairs") from None
        return build_dataclass(cls, d, "timeline")

    @classmethod
    def from_json(cls, text: str | bytes) -> Timeline:
        return cls.from_dict(load_json_text(text, "timeline"))


_EVENT_KEYS = frozenset(("device", "stage", "microbatch", "op", "start_ms", "end_ms", "peer_stage"))


def _event_from_json(e: Any, i: int) -> Event:
    """One event from JSON. Well-formed events take a fast path (build_dataclass's per-call type
    hints cost ~1 ms, i.e. minutes for 10^5 events); anything else goes through build_dataclass,
    whose error names the bad field."""
    if isinstance(e, dict) and e.keys() <= _EVENT_KEYS and len(e) >= 6 \
            and all(type(e.get(k, -1)) is int for k in ("device", "stage", "microbatch", "peer_stage")) \
            and type(e.get("start_ms")) in (int, float) and type(e.get("end_ms")) in (int, float) \
            and type(e.get("op")) is str:
        event = Event(**e)
    else:
        event = build_dataclass(Event, e, f"timeline events[{i}]")
    if event.op not in OPS:
        raise PipeplanError(f"timeline events[{i}].op is {event.op!r}; expected one of {', '.join(OPS)}")
    return event
