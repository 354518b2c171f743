"""Pipeline schedules as data: which stage runs where, in which order, and how
many micro-batches each stage holds in flight.

A schedule is `dict[device, list[Action]]`, like torch.distributed.pipelining's
`pipeline_order` without the `None` padding: each device runs its actions one
at a time, in list order. Ops: "F" forward; "B" backward (the full backward,
or only the input gradient in the zero-bubble schedules ZBH1 and ZBV); "W"
weight gradient (zero-bubble schedules only).

`in_flight_microbatches` is THE memory function: planner/costmodel/memory.py, the ILP,
the DP and the simulator all use it. It walks these orders, so the memory
model and the simulated timeline cannot disagree. docs/schedules.md derives
every order, count and closed form.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

from core.errors import PipeplanError
from core.limits import check_pipeline_size

if TYPE_CHECKING:
    from planner.contracts.config import TrainConfig


class Action(NamedTuple):
    """One op of one micro-batch on one stage; prints like torch's `_Action`: "2F0"."""

    stage: int
    op: str
    microbatch: int

    def __str__(self) -> str:
        return f"{self.stage}{self.op}{self.microbatch}"


OrderBuilder = Callable[[int, int, int, int], list]
"""(rank, P, M, v) -> that rank's actions, in the order the runtime runs them."""
MicrobatchRule = Callable[[int, int, int], "str | None"]
"""(P, M, v) -> None when the schedule runs M micro-batches on P devices, else why not and what would."""


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """Everything pipeplan knows about one schedule: the registry entry that config validation, the
    cost model, the simulator, the export and the app read. Adding a schedule is one entry in
    SCHEDULE_SPECS, its order builder, and tests (docs/architecture.md, "Adding a schedule")."""

    name: str
    order: OrderBuilder
    """Per-rank action order (the in-flight counts are read off it: in_flight_microbatches)."""
    torch_class: str
    """The torch.distributed.pipelining schedule class the exported train.py runs."""
    chunks_per_device: int | None = 1
    """Stages per device: a fixed count, or None for the config's virtual_stages (Interleaved1F1B)."""
    placement: str = "loop"
    """"loop": stage s on device s mod P; "v": device d holds stages d and 2P-1-d."""
    split_backward: bool = False
    """B (input gradient) and W (weight gradient) are separate actions; activations live until W."""
    weight_credit: float = 0.0
    """kappa: W passes per stage the schedule hides in the fill/drain (cost.fill_drain_ms)."""
    microbatch_rule: MicrobatchRule | None = None
    """What torch's order generator accepts: the planner, the simulator and the export check it."""
    export_rule: MicrobatchRule | None = None
    """What torch's runtime class needs on top (checked at export, before any process group exists)."""
    aliases: tuple[str, ...] = ()
    description: str = ""
    exported: bool = True
    """Whether `pipeplan export` runs it (a torchrun equivalence test covers it); the export refuses the rest."""

    @property
    def supports_recompute(self) -> bool:
        """Whether the exported job can recompute a stage as the cost model assumes (one forward rebuilt
        per backward). Not with a split backward: torch's checkpoint rebuilds the forward for the input
        gradient and again for every weight-gradient group (measured: 13 times per micro-batch for a
        2-block GPT stage), so config validation, the solvers and the export all refuse it."""
        return not self.split_backward

    @property
    def multi_chunk(self) -> bool:
        """Several stages per device (always, or when virtual_stages > 1 is allowed)."""
        return self.chunks_per_device != 1


def _at_least_one_per_device(P: int, M: int, v: int) -> str | None:
    if M < P:
        return (f"1F1B needs at least as many micro-batches as devices (torch's Schedule1F1B): got {M} "
                f"micro-batches for {P} devices; use {P} or more micro-batches, or GPipe")
    return None


def _equal_rounds(name: str, torch_class: str) -> MicrobatchRule:
    """torch's flexible interleaving runs micro-batches in rounds of equal size."""

    def rule(P: int, M: int, v: int) -> str | None:
        rounds = max(1, M // P)
        if M % rounds:
            near = sorted({rounds * (M // rounds), (rounds + 1) * P} - {0})
            return (f"{name} (torch's {torch_class}) runs micro-batches in rounds of equal size: {M} micro-batches "
                    f"on {P} devices make {rounds} rounds, and {M} is not a multiple of {rounds}; use a multiple of "
                    f"{P} (e.g. {' or '.join(map(str, near))}) or at most {P} micro-batches")
        return None

    return rule


def _whole_rounds_at_run_time(P: int, M: int, v: int) -> str | None:
    if M % P:
        return (f"Interleaved1F1B needs the micro-batch count ({M}) to be a multiple of the pipeline ranks ({P}) "
                "when torch runs it; re-plan with a multiple")
    return None


def _one_per_stage_at_run_time(P: int, M: int, v: int) -> str | None:
    if M < 2 * P:
        return f"ZBV needs at least as many micro-batches as stages ({2 * P}), the plan has {M}"
    return None


def _one_per_stage(P: int, M: int, v: int) -> str | None:
    if M < 2 * P:
        return (f"DualPipeV (torch's ScheduleDualPipeV) needs at least as many micro-batches as stages: got {M} "
                f"micro-batches for {2 * P} stages ({P} devices x 2 chunks); use {2 * P} or more")
    return None


def _registry() -> dict[str, ScheduleSpec]:
    specs = [
        ScheduleSpec("GPipe", _gpipe, "ScheduleGPipe",
                     description="all forwards, then all backwards (Huang et al. 2019)"),
        ScheduleSpec("1F1B", _one_f_one_b, "Schedule1F1B", microbatch_rule=_at_least_one_per_device,
                     description="one forward, one backward (Narayanan et al. 2019, PipeDream-Flush)"),
        ScheduleSpec("Interleaved1F1B", _interleaved, "ScheduleInterleaved1F1B", chunks_per_device=None,
                     microbatch_rule=_equal_rounds("Interleaved1F1B", "ScheduleInterleaved1F1B"),
                     export_rule=_whole_rounds_at_run_time, aliases=("interleaved",),
                     description="1F1B over v chunks per device, loop placement (Narayanan et al. 2021)"),
        # ZBH1 runs as torch's interleaved zero-bubble class with one stage per rank; its per-rank
        # order equals _zb_h1 (tests/test_export_zbh1.py checks it against torch's own lists).
        ScheduleSpec("ZBH1", _zb_h1, "ScheduleInterleavedZeroBubble", split_backward=True, weight_credit=2.0,
                     microbatch_rule=_equal_rounds("ZBH1", "ScheduleInterleavedZeroBubble"),
                     aliases=("zb-h1", "zb_h1"),
                     description="1F1B with the backward split into B and W (Qi et al. 2023, ZB-H1)"),
        # torch 2.13's ScheduleLoopedBFS: order checked against torch's own lists (tests/test_schedules.py);
        # exported (tests/test_export_train.py; its class takes no args_chunk_spec, train.py sets it after)
        ScheduleSpec("LoopedBFS", _looped_bfs, "ScheduleLoopedBFS", chunks_per_device=None,
                     aliases=("looped_bfs", "bfs"),
                     description="breadth first: every forward of each local stage in turn, then the backwards "
                                 "in reverse (Lamy-Poirier 2023)"),
        ScheduleSpec("ZBV", _zbv, "ScheduleZBVZeroBubble", chunks_per_device=2, placement="v", split_backward=True,
                     weight_credit=2.0, export_rule=_one_per_stage_at_run_time, aliases=("zbvzerobubble",),
                     description="zero bubble with two chunks per device in V placement (Qi et al. 2023)"),
        # torch 2.13's ScheduleDualPipeV: order checked against torch's own lists (tests/test_schedules.py).
        # torch's OVERLAP_F_B runs its forward, then its full backward, one after the other (no overlap
        # on CPU or GPU in torch 2.13): the order lists them sequentially, a full backward as B then W.
        ScheduleSpec("DualPipeV", _dualpipev, "ScheduleDualPipeV", chunks_per_device=2, placement="v",
                     split_backward=True, weight_credit=2.0, microbatch_rule=_one_per_stage, aliases=("dualpipe_v", "dualpipe-v"),
                     description="DeepSeek's DualPipe in V placement: two chunks per device, forward and backward "
                                 "of different chunks paired (run one after the other by torch)"),
    ]
    return {s.name: s for s in specs}


def canonical_schedule(name: str) -> str:
    """Case-insensitive schedule lookup (dashes and underscores ignored, aliases accepted); the error
    lists the valid names."""
    key = str(name).strip().lower()
    for spec in SCHEDULE_SPECS.values():
        if spec.name.lower() == key.replace("-", "").replace("_", "") or key in spec.aliases:
            return spec.name
    raise PipeplanError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULE_SPECS)}")


def schedule_spec(name: str) -> ScheduleSpec:
    """The registry entry of a schedule (any spelling canonical_schedule accepts)."""
    return SCHEDULE_SPECS[canonical_schedule(name)]


def num_stages(num_devices: int, config: TrainConfig) -> int:
    """Pipeline stages for this many devices: devices x chunks per device."""
    return num_devices * chunks_per_device(config.schedule, config.virtual_stages)


def chunks_per_device(schedule: str, virtual_stages: int = 1) -> int:
    """Stages per device: the schedule's fixed count (ZBV: 2), or virtual_stages where it takes it."""
    spec = schedule_spec(schedule)
    return virtual_stages if spec.chunks_per_device is None else spec.chunks_per_device


def stage_to_device(num_devices: int, schedule: str, virtual_stages: int) -> list[int]:
    """Device of every stage. Loop placement (stage s on device s mod P) for
    interleaved schedules, V placement for ZBV (device d holds stages d and 2P-1-d),
    the same maps as torch's `generate_stage_to_rank_mapping(P, S, style)`."""
    P = num_devices
    spec = schedule_spec(schedule)
    S = P * chunks_per_device(spec.name, virtual_stages)
    if spec.placement == "v":
        return [s if s < P else 2 * P - 1 - s for s in range(S)]
    return [s % P for s in range(S)]


def check_virtual_stages(schedule: str, virtual_stages: int) -> str:
    """The schedule's canonical name, if it runs `virtual_stages` chunks per device (1 is always accepted
    for a fixed count: it means "the schedule's own"); else PipeplanError saying which schedule would."""
    spec = schedule_spec(schedule)
    v = virtual_stages
    if spec.chunks_per_device is not None and v not in (1, spec.chunks_per_device):
        if spec.chunks_per_device == 1:
            takes = [s.name for s in SCHEDULE_SPECS.values() if s.chunks_per_device is None]
            raise PipeplanError(f"virtual_stages={v} needs schedule {' or '.join(takes)}; {spec.name} runs one stage "
                                "per device")
        raise PipeplanError(f"{spec.name} always runs {spec.chunks_per_device} stages per device "
                            f"({spec.placement} placement); got virtual_stages={v}. Use Interleaved1F1B for other "
                            "chunk counts")
    return spec.name


def check_schedule(schedule: str, num_devices: int, num_microbatches: int, virtual_stages: int = 1) -> str:
    """Validate a schedule's shape against what torch's runtime accepts; return its canonical name.

    Raises PipeplanError naming the constraint and how to satisfy it.
    """
    name = canonical_schedule(schedule)
    for label, value in (("devices", num_devices), ("micro-batches", num_microbatches),
                         ("virtual_stages", virtual_stages)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PipeplanError(f"{name} needs a whole number of {label} >= 1, got {value!r}")
    check_virtual_stages(name, virtual_stages)
    check_pipeline_size(num_devices * chunks_per_device(name, virtual_stages), num_microbatches)
    rule = SCHEDULE_SPECS[name].microbatch_rule
    why = rule(num_devices, num_microbatches, virtual_stages) if rule is not None else None
    if why is not None:
        raise PipeplanError(why)
    return name


def schedule_actions(schedule: str, num_devices: int, num_microbatches: int,
                     virtual_stages: int = 1) -> dict[int, list[Action]]:
    """Per device, the ordered compute actions of one training step (a fresh copy)."""
    order = _order(check_schedule(schedule, num_devices, num_microbatches, virtual_stages),
                   num_devices, num_microbatches, virtual_stages)
    return {d: [Action(*a) for a in acts] for d, acts in enumerate(order)}


def in_flight_microbatches(schedule: str, num_devices: int, num_microbatches: int,
                           virtual_stages: int = 1) -> list[int]:
    """Peak number of micro-batches whose activations each stage holds, per stage.

    Read off the schedule's order: a stage takes a micro-batch's activations at
    the start of its F and frees them at the end of its B (GPipe, 1F1B,
    Interleaved1F1B) or of its W (ZBH1, ZBV: the weight gradient still needs the
    saved inputs, so counting until W never under-estimates). Cached; the ILP
    calls it for every solve.
    """
    name = check_schedule(schedule, num_devices, num_microbatches, virtual_stages)
    return list(_in_flight(name, num_devices, num_microbatches, virtual_stages))


@lru_cache(maxsize=1024)
def _in_flight(name: str, P: int, M: int, v: int) -> tuple[int, ...]:
    release = "W" if SCHEDULE_SPECS[name].split_backward else "B"
    S = P * chunks_per_device(name, v)
    held, peak = [0] * S, [0] * S
    for acts in _order(name, P, M, v):
        for stage, op, _ in acts:
            if op == "F":
                held[stage] += 1
                peak[stage] = max(peak[stage], held[stage])
            elif op == release:
                held[stage] -= 1
    return tuple(peak)


@lru_cache(maxsize=64)
def _order(name: str, P: int, M: int, v: int) -> tuple[tuple[tuple[int, str, int], ...], ...]:
    """Per device, the actions as plain (stage, op, microbatch) tuples; name already checked."""
    builder = SCHEDULE_SPECS[name].order
    return tuple(tuple(builder(rank, P, M, v)) for rank in range(P))


def _gpipe(rank: int, P: int, M: int, v: int) -> list[Action]:
    """All forwards, then all backwards in the same micro-batch order (torch's ScheduleGPipe)."""
    return [Action(rank, "F", m) for m in range(M)] + [Action(rank, "B", m) for m in range(M)]


def _one_f_one_b(rank: int, P: int, M: int, v: int) -> list[Action]:
    """Megatron's non-interleaved 1F1B: P-rank-1 warm-up forwards, then F,B pairs, then the remaining B."""
    warmup = min(P - rank - 1, M)
    acts = [Action(rank, "F", m) for m in range(warmup)]
    for i in range(M - warmup):
        acts += [Action(rank, "F", warmup + i), Action(rank, "B", i)]
    acts += [Action(rank, "B", m) for m in range(M - warmup, M)]
    return acts


def _rounds(P: int, M: int) -> int:
    """Micro-batches per round in torch's flexible interleaving (M // rounds, rounds = max(1, M // P))."""
    return M // max(1, M // P)


def _warmup_then_steady(rank: int, P: int, M: int, v: int, warmup: int, zero_bubble: bool) -> list[Action]:
    """torch's `_get_1f1b_rank_ops` without padding: warm-up forwards, then F,B (and W once
    `rank` steady steps have passed, for zero bubble), then cool-down B (and W), then leftover W."""
    per_round = _rounds(P, M)
    total = v * M
    # Next micro-batch per (chunk, op): chunk c of this rank is stage c*P + rank.
    next_f, next_b, next_w = [0] * v, [0] * v, [0] * v
    acts: list[tuple[int, str, int]] = []
    backward_chunks: list[int] = []
    weights_done = 0
    for k in range(total + warmup):
        if k < total:
            c = (k // per_round) % v
            acts.append((c * P + rank, "F", next_f[c]))
            next_f[c] += 1
        if k < warmup:
            continue
        c = v - 1 - ((k - warmup) // per_round) % v
        acts.append((c * P + rank, "B", next_b[c]))
        next_b[c] += 1
        backward_chunks.append(c)
        if zero_bubble and k - warmup >= rank:
            c = backward_chunks[weights_done]
            acts.append((c * P + rank, "W", next_w[c]))
            next_w[c] += 1
            weights_done += 1
    while zero_bubble and weights_done < len(backward_chunks):
        c = backward_chunks[weights_done]
        acts.append((c * P + rank, "W", next_w[c]))
        next_w[c] += 1
        weights_done += 1
    return acts


def _interleaved(rank: int, P: int, M: int, v: int) -> list[Action]:
    """torch's ScheduleInterleaved1F1B (Megatron interleaving, depth first, flexible rounds):
    warm-up (v-1)*per_round + 2*(P-1-rank) forwards, capped at v*M."""
    warmup = min((v - 1) * _rounds(P, M) + 2 * (P - 1 - rank), M * v)
    return _warmup_then_steady(rank, P, M, v, warmup, zero_bubble=False)


def _looped_bfs(rank: int, P: int, M: int, v: int) -> list[Action]:
    """torch's ScheduleLoopedBFS: for each local stage (rank, rank+P, ...) all M forwards, then the local
    stages in reverse, each with its backwards in reverse micro-batch order."""
    stages = [c * P + rank for c in range(v)]
    acts = [Action(s, "F", m) for s in stages for m in range(M)]
    return acts + [Action(s, "B", m) for s in reversed(stages) for m in reversed(range(M))]


def _zb_h1(rank: int, P: int, M: int, v: int) -> list[Action]:
    """ZB-H1 (Qi et al. 2023, sec. 3.1), as torch's ScheduleInterleavedZeroBubble with one stage
    per rank: 1F1B with B split into B and W; rank r postpones its first W by r steady steps."""
    warmup = min(P - 1 - rank, M)
    return _warmup_then_steady(rank, P, M, 1, warmup, zero_bubble=True)


def _zbv(rank: int, P: int, M: int, v: int) -> list[Action]:
    """torch's ScheduleZBVZeroBubble (Qi et al. 2023, sec. 6): chunk 0 = stage rank, chunk 1 =
    stage 2P-1-rank; built for max(M, 2P-1) micro-batches, then the extra ones are dropped."""
    n = max(2 * P - 1, M)
    stage = (rank, 2 * P - 1 - rank)
    count = {(c, op): 0 for c in (0, 1) for op in "FBW"}
    acts: list[Action] = []

    def emit(chunk: int, *ops: str) -> None:
        for op in ops:
            acts.append(Action(stage[chunk], op, count[(chunk, op)]))
            count[(chunk, op)] += 1

    for _ in range(2 * (P - rank) - 1):
        emit(0, "F")
    for _ in range(rank):
        emit(1, "F")
        emit(0, "F")
    for _ in range(P - rank):
        emit(1, "F", "B", "W")
    while count[(1, "F")] < count[(0, "F")] or count[(0, "F")] < n:
        if count[(0, "F")] < n:
            emit(0, "F")
        emit(0, "B", "W")
        emit(1, "F", "B", "W")
    for _ in range(rank):
        emit(0, "B")
        emit(1, "B")
    for _ in range(P - rank):
        emit(0, "B", "W")
    while count[(1, "W")] < count[(1, "B")]:
        emit(1, "W")
    while count[(0, "W")] < count[(0, "B")]:
        emit(0, "W")
    return [a for a in acts if a.microbatch < M]


def _dualpipev(rank: int, P: int, M: int, v: int) -> list[Action]:
    """torch's ScheduleDualPipeV (`_calculate_single_rank_operations`), flattened: chunk 0 = stage rank,
    chunk 1 = stage 2P-1-rank; an OVERLAP_F_B becomes its F then its full backward; a full backward
    becomes B then W (same stage and micro-batch); a split one (torch's I) is B, its W comes later
    from a FIFO queue, as in torch."""
    s0, s1 = rank, 2 * P - 1 - rank
    count: dict[tuple[int, str], int] = {}
    queue: list[tuple[int, int]] = []
    acts: list[Action] = []

    def fwd(stage: int) -> None:
        m = count.get((stage, "F"), 0)
        acts.append(Action(stage, "F", m))
        count[(stage, "F")] = m + 1

    def bwd(stage: int, full: bool) -> None:
        m = count.get((stage, "B"), 0)
        acts.append(Action(stage, "B", m))
        count[(stage, "B")] = m + 1
        if full:
            acts.append(Action(stage, "W", m))
        else:
            queue.append((stage, m))

    def weight() -> None:
        if queue:
            stage, m = queue.pop(0)
            acts.append(Action(stage, "W", m))

    for _ in range((P - rank - 1) * 2):
        fwd(s0)
    for _ in range(rank + 1):
        fwd(s0)
        fwd(s1)
    for _ in range(P - rank - 1):
        bwd(s1, full=False)
        weight()
        fwd(s1)
    for _ in range(M - 2 * P + rank + 1):
        fwd(s0)  # step 4: (F0, full B1) then (F1, full B0); the first pair not overlapped on the last rank
        bwd(s1, full=True)
        fwd(s1)
        bwd(s0, full=True)
    for _ in range(P - rank - 1):
        bwd(s1, full=True)
        fwd(s1)
        bwd(s0, full=True)
    split = False
    steps = rank + 1
    for i in range(steps):
        if i == steps // 2 and rank % 2 == 1:
            split = True
        bwd(s1, full=not split)
        if i == steps // 2 and rank % 2 == 0:
            split = True
        bwd(s0, full=not split)
    for _ in range(P - rank - 1):
        weight()
        bwd(s0, full=not split)
    for _ in range(rank + 1):
        weight()
    return acts


SCHEDULE_SPECS: dict[str, ScheduleSpec] = _registry()
"""The schedule registry, in the order the app and the CLI list them."""
SCHEDULES = tuple(SCHEDULE_SPECS)
SPLIT_BACKWARD_SCHEDULES = tuple(s.name for s in SCHEDULE_SPECS.values() if s.split_backward)
"""Schedules that run backward as B (input gradient) then W (weight gradient)."""
MULTI_CHUNK_SCHEDULES = tuple(s.name for s in SCHEDULE_SPECS.values() if s.multi_chunk)
"""Schedules that put several stages (chunks) on each device."""
