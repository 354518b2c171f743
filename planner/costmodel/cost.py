"""The planner's cost model: the time and bytes of any assignment of layers to stages.

Written once here and used by the chain DP, the ILP, the baselines and
`evaluate_partition`; docs/ilp.md writes the same formulas down.

Conventions (all per micro-batch):
- A *tensor* is what one producer node sends to its consumers. Profile edges are
  per (src, dst) pair, so the same output read by two later layers appears as two
  edges. Edges from one source with the same byte count and requires_grad flag
  are taken as one tensor read by several consumers (counted once per boundary);
  edges with different byte counts are different tensors (summed).
- A tensor produced in stage a and last read in stage c crosses every boundary
  b with a <= b < c (the torch runtime only talks to adjacent stages) and is
  relayed (held) by every stage strictly between a and c.
- Boundary b (between stage b and b+1): forward bytes = sum of crossing tensors,
  gradient bytes = the requires_grad ones; time = link.transfer_ms(bytes, tensors) on the
  link between the two stages' devices, 0 when both stages share a device.
- Backward split (zero-bubble B/W): the profile's bwd_input_ms / bwd_weight_ms
  when both are given; otherwise a layer with parameters splits its backward
  evenly (for matmul/conv layers dgrad and wgrad cost the same FLOPs), and a
  layer without parameters has W = 0.
- Runtime terms (docs/cost-model.md, "Runtime overheads"): every forward and
  every backward action of a stage costs its device's `action_overhead_ms` on
  top of the layer times; once per step, after the pipeline drains, each device
  runs the optimizer step of its stages (stage_optimizer_ms). The DP and the ILP
  minimise the pipeline part, overheads included, without the optimizer step;
  every Plan's step time includes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from profiler.gpus import OPTIMIZER_STEP_TRAFFIC_BYTES
from profiler.profile import Profile, ProfileNode


def split_backward_ms(bwd_ms, has_weights: bool = True):
    """(B, W) of a backward of bwd_ms when the profile does not split it: a layer with parameters
    splits evenly (for matmul/conv layers dgrad and wgrad cost the same FLOPs; the zero-bubble paper's
    T_B = T_W, Qi et al. 2023, sec. 2), a layer without parameters has W = 0. The simulator uses the
    same rule for raw per-stage times (it takes stages to hold weights)."""
    if has_weights:
        return bwd_ms / 2.0, bwd_ms / 2.0
    return bwd_ms, 0.0 * bwd_ms


def backward_split_ms(node: ProfileNode) -> tuple[float, float]:
    """(B, W): input-gradient and weight-gradient time of a node on the reference device."""
    if node.bwd_input_ms is not None and node.bwd_weight_ms is not None:
        return float(node.bwd_input_ms), float(node.bwd_weight_ms)
    b, w = split_backward_ms(float(node.bwd_ms), node.param_count > 0 or node.param_bytes > 0)
    return float(b), float(w)


@dataclass(slots=True)
class Tensor:
    producer: int
    """Position of the producing node in the profile's topological order."""
    consumers: list[int]
    nbytes: int
    requires_grad: bool
    saved_by_producer: bool = False
    """The producer saves it for backward (ProfileEdge.saved_by_src): its activation bytes hold it."""
    savers: list[int] = field(default_factory=list)
    """Consumers that save (a view of) it for backward (ProfileEdge.saved_by_dst), ascending."""

    @property
    def last_consumer(self) -> int:
        return max(self.consumers)

    @property
    def first_saver(self) -> int | None:
        """The node the profile charged its saved bytes to: the first in order that saves it (None: none)."""
        if self.saved_by_producer:
            return self.producer
        return self.savers[0] if self.savers else None

    @property
    def copy_savers(self) -> list[int]:
        """Savers after the first one. Where one of them sits in another stage than the first saver, that
        stage received its own copy and saves it: its bytes count there too (saved_copy_bytes)."""
        first = self.first_saver
        return [c for c in self.savers if first is not None and c > first]


@dataclass(slots=True)
class SharedParam:
    """A tied parameter: owned by one node, used by others; each stage holding a user keeps a copy."""

    fqn: str
    size: int
    """Parameter count; the owner node's param_count (an upper bound when it owns more)."""
    owner: int
    """Position of the owning node, -1 if no node owns it (then every user stage holds a copy)."""
    users: list[int]


@dataclass(slots=True)
class CostTables:
    """Per-node numbers of a profile in its topological order, ready for the solvers."""

    ids: list[str]
    fwd: np.ndarray
    bwd: np.ndarray
    bwd_input: np.ndarray
    bwd_weight: np.ndarray
    params: np.ndarray
    activation: np.ndarray
    tensors: list[Tensor]
    shared: list[SharedParam]
    model_input_bytes: int
    dtype: str
    optimizer: np.ndarray = field(default_factory=lambda: np.zeros(0))
    """Per node: its AdamW step time on the reference device (0 where the profile has none)."""
    position: dict[str, int] = field(default_factory=dict)

    @property
    def num_nodes(self) -> int:
        return len(self.ids)

    def is_chain(self) -> bool:
        """True when the topological order is the only one (consecutive nodes joined by an edge):
        then every precedence-respecting partition is a set of contiguous intervals."""
        linked = np.zeros(self.num_nodes, dtype=bool)
        for t in self.tensors:
            if t.producer + 1 in t.consumers:
                linked[t.producer] = True
        return bool(linked[:-1].all())


def build_tables(profile: Profile) -> CostTables:
    nodes = profile.nodes
    position = {n.id: k for k, n in enumerate(nodes)}
    splits = [backward_split_ms(n) for n in nodes]
    groups: dict[tuple[int, int, bool], list[int]] = {}
    saved_src: dict[tuple[int, int, bool], bool] = {}
    savers: dict[tuple[int, int, bool], set[int]] = {}
    for e in profile.edges:
        key = (position[e.src], int(e.bytes), bool(e.requires_grad))
        groups.setdefault(key, [])
        dst = position[e.dst]
        if dst not in groups[key]:
            groups[key].append(dst)
        # one tensor, several edges: the producer saves it only if every edge says so (fewer bytes
        # assumed held already), a consumer saves it if its edge says so
        saved_src[key] = saved_src.get(key, True) and bool(e.saved_by_src)
        if e.saved_by_dst:
            savers.setdefault(key, set()).add(dst)
    tensors = [Tensor(producer=p, consumers=sorted(c), nbytes=b, requires_grad=rg,
                      saved_by_producer=saved_src[(p, b, rg)], savers=sorted(savers.get((p, b, rg), ())))
               for (p, b, rg), c in sorted(groups.items())]
    owners = sorted(((n.module_path, k) for k, n in enumerate(nodes)), key=lambda t: -len(t[0]))
    users: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for fqn in n.shared_params:
            users.setdefault(fqn, []).append(k)
    shared = []
    for fqn, us in users.items():
        owner = next((k for path, k in owners if path and (fqn == path or fqn.startswith(path + "."))), -1)
        size = nodes[owner].param_count if owner >= 0 else 0
        shared.append(SharedParam(fqn=fqn, size=int(size), owner=owner, users=sorted(set(us))))
    return CostTables(
        ids=[n.id for n in nodes],
        fwd=np.array([n.fwd_ms for n in nodes], dtype=float),
        bwd=np.array([n.bwd_ms for n in nodes], dtype=float),
        bwd_input=np.array([s[0] for s in splits], dtype=float),
        bwd_weight=np.array([s[1] for s in splits], dtype=float),
        params=np.array([n.param_count for n in nodes], dtype=np.int64),
        activation=np.array([n.activation_bytes for n in nodes], dtype=float),
        tensors=tensors, shared=shared, model_input_bytes=int(profile.model.input_bytes),
        dtype=profile.model.dtype, position=position,
        optimizer=np.array([n.optimizer_ms or 0.0 for n in nodes], dtype=float))


# -- per-stage formulas ---------------------------------------------------------

def zero_bubble_weight_factor(schedule: str) -> float:
    """kappa: how many W passes per stage the schedule hides in the fill/drain bubble.
    ZB-H1 (Qi et al. 2023): bubble (P-1)(F+B-2W) instead of (P-1)(F+B+W), i.e. kappa = 2."""
    from planner.pipeline.schedules import schedule_spec

    return schedule_spec(schedule).weight_credit


def cycle_ms(fwd_ms, bwd_ms, comm_ms):
    """T: a stage's busy time per micro-batch in the steady state: its forward, its backward and the
    transfers on the boundary after it (forward activation and gradient), charged to the sender."""
    return fwd_ms + bwd_ms + comm_ms


def fill_drain_ms(cycle, bwd_weight_ms, weight_credit: float):
    """c: what a stage adds to the pipeline's fill and drain: its cycle less the W passes the
    schedule hides there (weight_credit = kappa; 0 on the last stage, which has no later stage to
    wait for)."""
    return cycle - weight_credit * bwd_weight_ms


@dataclass(frozen=True, slots=True)
class StageTimeCoefficients:
    """One stage's times as linear functions of its nodes' sums on the reference device (ms), the
    form the DP and the ILP build their rows from (memory.MemoryCoefficients is the memory twin):

        fwd = fwd_ref / speed + action_overhead_ms
        bwd = (bwd_ref + r * fwd_ref) / speed + action_overhead_ms      r = 1 with recompute
        W   = bwd_weight_ref / speed,  B = bwd - W
        T   = fwd + bwd + comm                                            (cycle_ms)
        c   = T - weight_credit * W                                       (fill_drain_ms)

    Recomputation re-runs the forward before the input-gradient pass (Chen et al. 2016), so it adds
    fwd to bwd and B. The device's per-action runtime overhead (docs/cost-model.md, "Runtime
    overheads") is paid once by the forward and once by the backward (by B when W is separate).
    """

    speed: float
    """How many times faster than the profile's reference device."""
    action_overhead_ms: float = 0.0
    weight_credit: float = 0.0
    """kappa of the schedule (zero_bubble_weight_factor), 0 on the last stage."""

    @property
    def per_ref_ms(self) -> float:
        """ms on this device per reference ms of forward, backward, recompute or W."""
        return 1.0 / self.speed

    @property
    def constant_ms(self) -> float:
        """The per-action overhead of T: one forward and one backward action per micro-batch."""
        return 2.0 * self.action_overhead_ms

    def compute_ms(self, fwd_ref, bwd_ref, bwd_weight_ref, recompute=False):
        """(fwd, bwd, B, W) of the stage, on floats or numpy arrays; recompute a bool or 0..1."""
        fwd = fwd_ref / self.speed
        w = bwd_weight_ref / self.speed
        bwd = bwd_ref / self.speed + (fwd if recompute is True else fwd * recompute)
        o = self.action_overhead_ms
        return fwd + o, bwd + o, bwd - w + o, w

    def cycle_and_fill_ms(self, fwd_ref, bwd_ref, bwd_weight_ref, recompute, comm_ms):
        """(T, c) of the stage (cycle_ms, fill_drain_ms)."""
        fwd, bwd, _, w = self.compute_ms(fwd_ref, bwd_ref, bwd_weight_ref, recompute)
        T = cycle_ms(fwd, bwd, comm_ms)
        return T, fill_drain_ms(T, w, self.weight_credit)


def stage_time_coefficients(speed: float, action_overhead_ms: float, schedule: str,
                            is_last: bool) -> StageTimeCoefficients:
    """The time coefficients of a stage on a device of this speed and overhead."""
    return StageTimeCoefficients(speed=speed, action_overhead_ms=action_overhead_ms,
                                 weight_credit=0.0 if is_last else zero_bubble_weight_factor(schedule))


def stage_compute_ms(fwd_ref, bwd_ref, bwd_weight_ref, speed, recompute, action_overhead_ms=0.0):
    """(fwd, bwd, B, W) of a stage on a device `speed` times faster than the reference
    (StageTimeCoefficients.compute_ms)."""
    return StageTimeCoefficients(speed=speed, action_overhead_ms=action_overhead_ms).compute_ms(
        fwd_ref, bwd_ref, bwd_weight_ref, recompute)


def stage_optimizer_ms(adamw_ref_ms: float, optimizer: str, speed: float) -> float:
    """A stage's optimizer step on its device, from its nodes' AdamW times on the reference device,
    scaled by the optimizer's memory traffic (profiler.gpus.OPTIMIZER_STEP_TRAFFIC_BYTES)."""
    return adamw_ref_ms * OPTIMIZER_STEP_TRAFFIC_BYTES[optimizer] / OPTIMIZER_STEP_TRAFFIC_BYTES["adamw"] / speed


def clip_allreduce_ms(cluster: Cluster, devices: list[int]) -> float:
    """The global-norm all-reduce before the optimizer step: one scalar over the pipeline's devices,
    a ring of 2 (P - 1) messages, each paying the slowest link between neighbouring devices' latency
    (bandwidth is irrelevant for 8 bytes). 0 for one device."""
    ranks = sorted(set(devices))
    if len(ranks) < 2:
        return 0.0
    hops = zip(ranks, ranks[1:] + ranks[:1])
    # a collective's messages, not a pipeline transfer: no Link.transfer_overhead_s
    latency_ms = max(cluster.link(a, b).latency_ms + 8 * cluster.link(a, b).ms_per_byte for a, b in hops)
    return 2 * (len(ranks) - 1) * latency_ms


def step_end_ms(cluster: Cluster, devices: list[int]) -> float:
    """What every device waits after the drain before its optimizer update: the clipping all-reduce,
    then the fixed per-step cost (Device.step_overhead_ms) of the slowest of these devices."""
    fixed = max((cluster.devices[d].step_overhead_ms for d in set(devices)), default=0.0)
    return clip_allreduce_ms(cluster, devices) + fixed


def predicted_step_time_ms(stage_fwd, stage_bwd, comm, num_microbatches: int, schedule: str,
                           num_devices: int, virtual_stages: int = 1, stage_bwd_weight=None,
                           stage_optimizer=None) -> float:
    """The closed-form step time (makespan) of one pipeline step.

    T_s = fwd_s + bwd_s + comm_s (comm_s: forward send and gradient send on the boundary after s),
    D_d = sum of T_s over the stages on device d, v = stages per device,
    c_s = T_s - kappa * W_s for every stage but the last (kappa from zero_bubble_weight_factor),
    step = max(M * max_d D_d, (M - 1/v) * max_d D_d + sum_s c_s / v) + max_d O_d,
    O_d = the optimizer steps of the stages on device d (stage_optimizer; they run after the drain).
    For 1F1B with v = 1 this is (M-1) max T + sum T; uniform stages give (M+P-1) t (GPipe and 1F1B)
    and (M v + P - 1) t/v (interleaved).
    Without stage_optimizer it is what the DP and the ILP minimise (solver.objective_ms, with its
    lower bound and gap); a Plan's step_time_ms is the simulated makespan, optimizer step included
    (evaluate.with_timeline). For 1F1B this form is an upper bound on the simulated makespan (it
    charges both sends to the sender; the simulator overlaps them with compute). For GPipe without
    communication it is a lower bound: the simulator gives sum F + (M-1) max F + sum B + (M-1) max B,
    and max F + max B >= max(F+B). For interleaved and zero-bubble schedules with unequal stages it
    is an estimate either way (tests/test_planner_timeline.py).
    """
    from planner.pipeline.schedules import stage_to_device

    M, v = int(num_microbatches), int(virtual_stages)
    S = len(stage_fwd)
    T = [cycle_ms(float(stage_fwd[s]), float(stage_bwd[s]), float(comm[s])) for s in range(S)]
    placement = stage_to_device(num_devices, schedule, v) if S == num_devices * v else list(range(S))
    D = [0.0] * (max(placement) + 1)
    for s, d in enumerate(placement):
        D[d] += T[s]
    kappa = zero_bubble_weight_factor(schedule)
    w = stage_bwd_weight if stage_bwd_weight is not None else [0.0] * S
    c = sum(fill_drain_ms(T[s], float(w[s]), kappa if s < S - 1 else 0.0) for s in range(S))
    optimizer = [0.0] * len(D)
    for s, d in enumerate(placement):
        optimizer[d] += float(stage_optimizer[s]) if stage_optimizer is not None else 0.0
    return closed_form_step_ms(M, v, max(D), c) + max(optimizer)


def closed_form_pieces(num_microbatches: int, virtual_stages: int = 1) -> tuple[tuple[float, float], ...]:
    """The closed-form step as the max of linear pieces a * peak + b * fill, where peak = the
    busiest device's sum of cycles (max_d D_d) and fill = the sum of the stages' c:
    M * peak (the busiest device never idles), and (M - 1/v) * peak + fill / v (the fill and drain
    of v chunks per device; Narayanan et al. 2021, sec. 2.2, for the interleaved bubble). The DP
    and the ILP minimise exactly these pieces."""
    M, v = float(num_microbatches), float(virtual_stages)
    return ((M, 0.0), (M - 1.0 / v, 1.0 / v))


def closed_form_step_ms(num_microbatches: int, virtual_stages: int, peak_ms, fill_ms):
    """max over closed_form_pieces of a * peak_ms + b * fill_ms (floats, or numpy arrays)."""
    (a1, _), (a2, b2) = closed_form_pieces(num_microbatches, virtual_stages)
    return np.maximum(a1 * peak_ms, a2 * peak_ms + b2 * fill_ms) if isinstance(peak_ms, np.ndarray) \
        else max(a1 * peak_ms, a2 * peak_ms + b2 * fill_ms)


def bubble_fraction(stage_fwd, stage_bwd, num_microbatches: int, num_devices: int, step_ms: float) -> float:
    """Idle share of the devices: 1 - M * sum(compute) / (P * step). (P-1)/(M+P-1) for uniform 1F1B."""
    busy = num_microbatches * sum(float(f) + float(b) for f, b in zip(stage_fwd, stage_bwd))
    return max(0.0, 1.0 - busy / (num_devices * step_ms)) if step_ms > 0 else 0.0


# -- a whole assignment ------------------------------------------------------------

@dataclass(slots=True)
class AssignmentCost:
    """Everything the cost model says about one node -> stage assignment."""

    stage_nodes: list[list[int]]
    fwd_bytes: list[int]
    """Per boundary b = 0..S-2 (after stage b)."""
    grad_bytes: list[int]
    relay_bytes: list[int]
    """Per stage."""
    input_bytes: list[int]
    param_count: list[int]
    fwd_tensors: list[int] = field(default_factory=list)
    """Per boundary: tensors sent forward (one p2p message each)."""
    held_output_bytes: list[int] = field(default_factory=list)
    """Per stage: the tensors it makes and sends on that its own layers did not save (those its activation
    bytes hold already); it keeps them until their backward (memory.stage_memory_bytes' output_bytes)."""
    saved_copy_bytes: list[int] = field(default_factory=list)
    """Per stage: received tensors one of its layers saves while the profile charged them to a layer of
    another stage (Tensor.copy_savers): its own copies, saved activations on top of its layers'."""
    grad_tensors: list[int] = field(default_factory=list)
    """Per boundary: gradients sent back (the requires_grad tensors)."""


def assignment_bytes(tables: CostTables, stage_of: list[int], num_stages: int) -> AssignmentCost:
    """Boundary, relay, input bytes and parameter counts (tied copies included) of an assignment."""
    S = num_stages
    fwd_b, grad_b, relay, inp = [0] * max(S - 1, 0), [0] * max(S - 1, 0), [0] * S, [0] * S
    fwd_n, grad_n = [0] * max(S - 1, 0), [0] * max(S - 1, 0)
    held, copies = [0] * S, [0] * S
    inp[0] = tables.model_input_bytes
    for t in tables.tensors:
        a, c = stage_of[t.producer], max(stage_of[k] for k in t.consumers)
        for b in range(a, c):
            fwd_b[b] += t.nbytes
            fwd_n[b] += 1
            inp[b + 1] += t.nbytes
            if t.requires_grad:
                grad_b[b] += t.nbytes
                grad_n[b] += 1
        for s in range(a + 1, c):
            relay[s] += t.nbytes
        if c > a and not t.saved_by_producer:
            held[a] += t.nbytes
        if t.copy_savers:
            for s in {stage_of[k] for k in t.copy_savers} - {stage_of[t.first_saver]}:
                copies[s] += t.nbytes
    stage_nodes: list[list[int]] = [[] for _ in range(S)]
    for k, s in enumerate(stage_of):
        stage_nodes[s].append(k)
    params = [int(tables.params[ns].sum()) for ns in stage_nodes]
    for sp in tables.shared:
        owner_stage = stage_of[sp.owner] if sp.owner >= 0 else -1
        for s in {stage_of[u] for u in sp.users}:
            if s != owner_stage:
                params[s] += sp.size
    return AssignmentCost(stage_nodes=stage_nodes, fwd_bytes=fwd_b, grad_bytes=grad_b,
                          relay_bytes=relay, input_bytes=inp, param_count=params,
                          fwd_tensors=fwd_n, grad_tensors=grad_n, held_output_bytes=held, saved_copy_bytes=copies)


def boundary_comm_ms(cluster: Cluster, dev_a: int, dev_b: int, nbytes: float, messages: int = 1) -> float:
    """Time to move nbytes in `messages` tensors from the device of one stage to the next one's
    (0 on the same device). Each tensor pays the latency: torch.distributed.pipelining sends each
    as its own p2p op."""
    if dev_a == dev_b:
        return 0.0
    return cluster.link(dev_a, dev_b).transfer_ms(nbytes, messages)


def link_coefficients(cluster: Cluster, dev_a: int, dev_b: int) -> tuple[float, float]:
    """(latency ms per message, ms per byte) of the boundary between two stages' devices, (0, 0) on one
    device: boundary_comm_ms as the linear rows of the ILP (Link.transfer_ms's alpha and beta; its
    per-transfer gamma is left out, so the rows stay below the simulated transfer)."""
    if dev_a == dev_b:
        return 0.0, 0.0
    link = cluster.link(dev_a, dev_b)
    return link.latency_ms, link.ms_per_byte


def speeds(cluster: Cluster, profile: Profile) -> list[float]:
    return [cluster.speed_factor(d, profile) for d in range(cluster.num_devices)]


def stage_devices(num_devices: int, config: TrainConfig, device_order: list[int] | None = None) -> list[int]:
    """Device of every stage: the schedule's placement, through an optional device permutation."""
    from planner.pipeline.schedules import stage_to_device

    placement = stage_to_device(num_devices, config.schedule, config.virtual_stages)
    order = device_order or list(range(num_devices))
    return [order[p] for p in placement]
