"""Read-outs of a Plan for the headline metrics and charts (no streamlit, no cost formulas).

Everything here re-arranges numbers the planner computed: per-device sums of
the planner's per-stage memory (a device holds several stages under
Interleaved1F1B and ZBV), and the ratio of the planner's baseline step times
to the plan's.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from planner.contracts.plan import Plan
from planner.contracts.timeline import Timeline
from planner.costmodel.cost import StageTimeCoefficients
from planner.costmodel.memory import StageMemory
from planner.costmodel.memory import device_memory as memory_of_device
from planner.costmodel.microbatches import scale_profile
from profiler.profile import Profile

MEMORY_PARTS = tuple(f.name for f in fields(StageMemory))
"""params, grads, optimizer, activations, relay, reserve: the stacked-bar segments."""


@dataclass(frozen=True, slots=True)
class DeviceMemory:
    device: int
    name: str
    stages: tuple[int, ...]
    memory: StageMemory
    limit_bytes: int

    @property
    def fraction(self) -> float:
        return self.memory.total / self.limit_bytes


def device_memory(plan: Plan) -> list[DeviceMemory]:
    """Memory per device, in cluster order: the sum of its stages' StageMemory against its limit.

    The reserve is held once per device (planner.costmodel.memory.device_memory).
    """
    out = []
    for d, dev in enumerate(plan.cluster.devices):
        stages = [s for s in plan.stages if s.device == d]
        if not stages:
            continue
        out.append(DeviceMemory(device=d, name=dev.name, stages=tuple(s.index for s in stages),
                                memory=memory_of_device([s.memory for s in stages]),
                                limit_bytes=stages[0].memory_limit_bytes))
    return out


@dataclass(frozen=True, slots=True)
class Headline:
    step_time_ms: float
    throughput_samples_per_s: float
    bubble_fraction: float
    fullest: DeviceMemory
    best_baseline: str | None
    best_baseline_ms: float | None

    @property
    def speedup_over_best_baseline(self) -> float | None:
        """How many times faster the plan is than the fastest baseline that fits (None: no baseline fits)."""
        if self.best_baseline_ms is None:
            return None
        return self.best_baseline_ms / self.step_time_ms


def headline(plan: Plan) -> Headline:
    """The numbers at the top of the Plan section; the plan must be feasible."""
    if not plan.feasible or plan.step_time_ms is None:
        raise ValueError("headline() needs a feasible plan")
    fitting = {name: ms for name, ms in plan.baselines.items() if ms is not None}
    best = min(fitting, key=fitting.get) if fitting else None
    return Headline(step_time_ms=plan.step_time_ms, throughput_samples_per_s=plan.throughput_samples_per_s or 0.0,
                    bubble_fraction=plan.bubble_fraction or 0.0,
                    fullest=max(device_memory(plan), key=lambda m: m.fraction),
                    best_baseline=best, best_baseline_ms=fitting.get(best) if best else None)


def step_versus(step_ms: float, reference_ms: float) -> str:
    """A step time against a reference one: "1.24× slower", "1.24× faster", or "same (within 0.5%)"."""
    ratio = step_ms / reference_ms
    if ratio >= 1.005:
        return f"{ratio:.2f}× slower"
    if ratio <= 0.995:
        return f"{1 / ratio:.2f}× faster"
    return "same (within 0.5%)"


@dataclass(frozen=True, slots=True)
class DeviceUse:
    device: int
    name: str
    busy_ms: float
    idle_ms: float

    @property
    def utilisation(self) -> float:
        total = self.busy_ms + self.idle_ms
        return self.busy_ms / total if total > 0 else 0.0


def device_use(plan: Plan, timeline: Timeline) -> list[DeviceUse]:
    """Busy and idle time of every device over the simulated step: busy is what the simulator counts
    (forward, backward, weight-gradient and optimizer actions; Timeline.bubble_per_device is the idle
    share), so these add up to the makespan the timeline draws."""
    return [DeviceUse(device=d, name=plan.cluster.devices[d].name,
                      busy_ms=timeline.makespan_ms * (1.0 - idle), idle_ms=timeline.makespan_ms * idle)
            for d, idle in enumerate(timeline.bubble_per_device)]


def layer_ms_on_device(profile: Profile, plan: Plan) -> dict[str, float]:
    """Each layer's forward + backward per micro-batch on the device of its stage, by the cost model the
    plan was made with (the profile at the plan's micro-batch size, the device's speed, recompute):
    a stage's layers add up to its fwd_ms + bwd_ms less the two per-action overheads."""
    scaled = scale_profile(profile, plan.config.micro_batch_size)
    stage_of = {nid: st for st in plan.stages for nid in st.node_ids}
    out = {}
    for node in scaled.nodes:
        st = stage_of.get(node.id)
        if st is None:
            continue
        time = StageTimeCoefficients(speed=plan.cluster.speed_factor(st.device, scaled))
        fwd, bwd, _, _ = time.compute_ms(node.fwd_ms, node.bwd_ms, 0.0, st.recompute)
        out[node.id] = fwd + bwd
    return out
