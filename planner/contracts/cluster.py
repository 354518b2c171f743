"""The Cluster contract: devices in pipeline order, and the links between them.

Stage i of a plan runs on device i (or, with `device_order="auto"`, on the
device the solver picks). Speeds are relative: a device's time for a layer is
the profile's time divided by `speed_factor(device, profile)`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import PipeplanError
from core.jsonio import build_dataclass, check_number, load_json_text
from core.limits import MAX_DEVICES
from profiler.gpus import GiB, get_preset
from profiler.profile import Profile

SCHEMA = "pipeplan.cluster/1"
INTRA_NODE_LATENCY_S = 5e-6
"""Default latency of one message inside a host (NVLink/PCIe p2p through NCCL: a few microseconds)."""
INTER_NODE_LATENCY_S = 10e-6
"""Default latency of one message between hosts (InfiniBand/RoCE)."""


def check_device_count(n: int, what: str = "the cluster has") -> None:
    """Refuse more devices than pipeplan plans, before anything proportional to the count is built
    (10^9 devices took GBs and minutes). `what` says where the count came from ("--devices asks for")."""
    if n > MAX_DEVICES:
        raise PipeplanError(f"{what} {n} devices; pipeplan plans at most {MAX_DEVICES} (a pipeline rarely has more "
                            "than a few dozen stages: use data parallelism for the rest)")


@dataclass(kw_only=True, slots=True)
class Device:
    name: str
    """Label shown in plans ("gpu0", "A100-80GB #1")."""
    memory_bytes: int
    """Memory the plan may use on this device (before the TrainConfig's reserve)."""
    preset: str | None = None
    """GPU preset name (see profiler.gpus) or None for a custom device."""
    tflops: float | None = None
    """Peak TFLOP/s in the training precision; scales times against the profile's reference device."""
    speed: float | None = None
    """Explicit speed relative to the profile's reference device (1.0 = same). Overrides tflops."""
    node: int = 0
    """Host index: devices with the same node talk over the intra-node link."""
    action_overhead_ms: float = 0.0
    """Fixed cost of every forward and backward action of the pipeline runtime on this device
    (Python dispatch, p2p bookkeeping), on top of the profile's layer times. Measured by
    `pipeplan calibrate`; 0 by default (negligible next to GPU layers of real models)."""
    step_overhead_ms: float = 0.0
    """Fixed cost of every training step on this device outside the pipeline's actions and the
    optimizer's memory traffic: the optimizer's per-tensor launches, zeroing the gradients. The step
    model charges the largest over the pipeline's devices once per step, after the drain, with the
    clipping all-reduce (cost.step_end_ms). Fitted by `pipeplan calibrate --from-run`; 0 by default."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise PipeplanError("device name must be a non-empty string")
        check_number(self.memory_bytes, f"device {self.name!r} memory_bytes", positive=True, integer=True)
        if self.preset is not None:
            get_preset(self.preset)
        if self.tflops is not None:
            check_number(self.tflops, f"device {self.name!r} tflops", positive=True)
        if self.speed is not None:
            check_number(self.speed, f"device {self.name!r} speed", positive=True)
        check_number(self.node, f"device {self.name!r} node", integer=True, minimum=0)
        check_number(self.action_overhead_ms, f"device {self.name!r} action_overhead_ms", minimum=0)
        check_number(self.step_overhead_ms, f"device {self.name!r} step_overhead_ms", minimum=0)

    def kind(self) -> tuple:
        """What makes two devices the same kind: everything this says about one but its name and node."""
        return (self.memory_bytes, self.preset, self.tflops, self.speed, self.action_overhead_ms,
                self.step_overhead_ms)

    @classmethod
    def from_preset(cls, preset: str, *, name: str | None = None, node: int = 0,
                    memory_bytes: int | None = None, precision: str = "bf16_mixed") -> Device:
        p = get_preset(preset)
        return cls(name=name or p.name, preset=p.name, memory_bytes=memory_bytes or p.memory_bytes,
                   tflops=p.peak_tflops(precision), node=node)


@dataclass(kw_only=True, slots=True)
class Link:
    bandwidth_bytes_per_s: float
    latency_s: float = 0.0
    """alpha: the fixed cost of one message (one tensor: torch.distributed.pipelining sends each as its own
    p2p op)."""
    transfer_overhead_s: float = 0.0
    """The fixed cost of one transfer over a stage boundary, whatever its tensor count: the batch of p2p
    ops one action posts, waking the receiving process. 0 by default; `pipeplan calibrate --from-run`
    fits it to what a run's step leaves unexplained."""

    def __post_init__(self) -> None:
        check_number(self.bandwidth_bytes_per_s, "link bandwidth_bytes_per_s", positive=True)
        check_number(self.latency_s, "link latency_s", minimum=0)
        check_number(self.transfer_overhead_s, "link transfer_overhead_s", minimum=0)

    @property
    def latency_ms(self) -> float:
        """alpha in ms."""
        return 1000.0 * self.latency_s

    @property
    def ms_per_byte(self) -> float:
        """beta: the cost of one byte."""
        return 1000.0 / self.bandwidth_bytes_per_s

    @property
    def transfer_overhead_ms(self) -> float:
        """gamma: the fixed cost of one transfer (a batch of messages)."""
        return 1000.0 * self.transfer_overhead_s

    def transfer_ms(self, nbytes: float, messages: int = 1) -> float:
        """Time to move nbytes one way in `messages` tensors: the transfer pays its overhead, each
        tensor the latency, the bytes the bandwidth (the alpha-beta model, Hockney 1994, plus gamma).
        The one link formula: the ILP's linear rows use the same latency_ms and ms_per_byte and leave
        gamma out (a lower bound: whether a boundary carries any bytes is not linear there)."""
        if nbytes <= 0:
            return 0.0
        return self.transfer_overhead_ms + max(messages, 1) * self.latency_ms + nbytes * self.ms_per_byte


@dataclass(kw_only=True, slots=True)
class Cluster:
    devices: list[Device]
    intra_node: Link = field(default_factory=lambda: Link(bandwidth_bytes_per_s=100e9, latency_s=INTRA_NODE_LATENCY_S))
    inter_node: Link = field(default_factory=lambda: Link(bandwidth_bytes_per_s=25e9, latency_s=INTER_NODE_LATENCY_S))
    schema: str = SCHEMA

    def __post_init__(self) -> None:
        if not isinstance(self.devices, list) or not self.devices:
            raise PipeplanError("the cluster has no devices: add at least one device")
        check_device_count(len(self.devices))

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    def link(self, a: int, b: int) -> Link:
        """The link between devices a and b."""
        return self.intra_node if self.devices[a].node == self.devices[b].node else self.inter_node

    def speed_factor(self, index: int, profile: Profile) -> float:
        """How many times faster device `index` runs a layer than the profile's reference device."""
        d = self.devices[index]
        if d.speed is not None:
            return d.speed
        ref = profile.provenance.reference_tflops
        if d.tflops is not None and ref:
            return d.tflops / ref
        return 1.0

    def unscaled_devices(self, profile: Profile) -> list[int]:
        """Devices whose speed cannot be scaled to this profile: they name a speed in TFLOP/s (a GPU
        preset) but the profile does not say its reference device's TFLOP/s (times measured on a CPU or
        a device pipeplan has no peak for), so speed_factor falls back to 1.0: they are planned at the
        profiling device's speed. Callers must say so (or give `speed` per device)."""
        ref = profile.provenance.reference_tflops
        return [i for i, d in enumerate(self.devices) if d.speed is None and d.tflops is not None and not ref]

    @classmethod
    def uniform(cls, n: int, preset: str | None = None, *, memory_bytes: int | None = None,
                devices_per_node: int = 8, precision: str = "bf16_mixed") -> Cluster:
        """n identical devices, `devices_per_node` to a host."""
        check_number(n, "device count", positive=True, integer=True)
        check_device_count(n)
        if preset is None and memory_bytes is None:
            raise PipeplanError("give a GPU preset or a memory size per device")
        devices = []
        for i in range(n):
            if preset is not None:
                d = Device.from_preset(preset, name=f"gpu{i}", node=i // devices_per_node,
                                       memory_bytes=memory_bytes, precision=precision)
            else:
                d = Device(name=f"dev{i}", memory_bytes=memory_bytes, node=i // devices_per_node)
            devices.append(d)
        intra = Link(bandwidth_bytes_per_s=get_preset(preset).intra_node_bw_gbs * 1e9,
                     latency_s=INTRA_NODE_LATENCY_S) \
            if preset else Link(bandwidth_bytes_per_s=100e9, latency_s=INTRA_NODE_LATENCY_S)
        return cls(devices=devices, intra_node=intra)

    # -- JSON ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Cluster:
        if not isinstance(data, dict):
            raise PipeplanError("cluster JSON must be an object with keys schema, devices, intra_node, inter_node")
        if data.get("schema") != SCHEMA:
            raise PipeplanError(f"cluster schema {data.get('schema')!r} is not supported; expected {SCHEMA!r}")
        devices = data.get("devices")
        if not isinstance(devices, list):
            raise PipeplanError("cluster JSON: 'devices' must be a list")
        check_device_count(len(devices))
        kwargs: dict[str, Any] = {"devices": [build_dataclass(Device, d, f"cluster devices[{i}]")
                                              for i, d in enumerate(devices)]}
        for key in ("intra_node", "inter_node"):
            if key in data:
                kwargs[key] = build_dataclass(Link, data[key], f"cluster {key}")
        extra = sorted(set(data) - {"schema", "devices", "intra_node", "inter_node"})
        if extra:
            raise PipeplanError(f"cluster JSON has unknown field(s) {extra}")
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str | bytes) -> Cluster:
        return cls.from_dict(load_json_text(text, "cluster"))


def parse_memory(text: str) -> int:
    """'80GB' -> 80 GiB in bytes, '24GiB', '512MB', or a plain byte count."""
    s = str(text).strip().upper().replace(" ", "")
    units = {"TIB": 2**40, "TB": 2**40, "GIB": GiB, "GB": GiB, "MIB": 2**20, "MB": 2**20, "KIB": 1024, "KB": 1024, "B": 1}
    for unit, scale in units.items():
        if s.endswith(unit):
            number = s[: -len(unit)]
            break
    else:
        number, scale = s, 1
    try:
        value = float(number)
    except ValueError:
        raise PipeplanError(f"cannot read memory size {text!r}; write it like 80GB, 24GiB or 512MB") from None
    if not (value > 0 and math.isfinite(value)):
        raise PipeplanError(f"memory size {text!r} must be a positive number")
    return int(value * scale)
