"""Which micro-batch counts a schedule accepts, and the profile at another micro-batch size.

The rules (torch 2.13's) live in planner.pipeline.schedules.check_schedule; this module
only asks it.
"""

from __future__ import annotations

import dataclasses

from core.errors import PipeplanError
from planner.contracts.config import MAX_MICROBATCHES, TrainConfig
from planner.pipeline.schedules import check_schedule
from profiler.profile import Profile


def schedule_accepts(schedule: str, num_devices: int, num_microbatches: int, virtual_stages: int = 1) -> str | None:
    """None if the schedule runs M micro-batches on P devices, else the reason it does not."""
    try:
        check_schedule(schedule, num_devices, num_microbatches, virtual_stages)
    except PipeplanError as exc:
        return str(exc)
    return None


def microbatch_options(config: TrainConfig, num_devices: int) -> list[tuple[int, int]]:
    """(num_microbatches, micro_batch_size) pairs to try, valid for the schedule.

    With num_microbatches given: exactly that one (or a PipeplanError saying why it is invalid).
    With only global_batch: every split of it into M micro-batches of size global_batch / M.
    """
    if config.num_microbatches is not None:
        why = schedule_accepts(config.schedule, num_devices, config.num_microbatches, config.virtual_stages)
        if why:
            raise PipeplanError(why)
        return [(config.num_microbatches, config.micro_batch_size)]
    G = int(config.global_batch)
    options = [(G // b, b) for b in range(1, G + 1) if G % b == 0 and G // b <= MAX_MICROBATCHES
               and schedule_accepts(config.schedule, num_devices, G // b, config.virtual_stages) is None]
    if not options:
        raise PipeplanError(f"no split of global batch {G} into micro-batches suits {config.schedule} on "
                            f"{num_devices} devices; use a global batch of at least {2 * num_devices}")
    return options


def scale_profile(profile: Profile, micro_batch_size: int) -> Profile:
    """The profile at another micro-batch size, assuming time and activation bytes grow linearly
    with the samples per micro-batch (an estimate: GPUs are often more efficient at larger sizes); so do the
    TP facts (split FLOPs and activations, all-reduce bytes), parameters do not."""
    base = profile.model.micro_batch_size or 1
    if micro_batch_size == base:
        return profile
    f = micro_batch_size / base

    def node(n):
        return dataclasses.replace(
            n, fwd_flops=n.fwd_flops * f, bwd_flops=n.bwd_flops * f, fwd_ms=n.fwd_ms * f, bwd_ms=n.bwd_ms * f,
            bwd_input_ms=None if n.bwd_input_ms is None else n.bwd_input_ms * f,
            bwd_weight_ms=None if n.bwd_weight_ms is None else n.bwd_weight_ms * f,
            activation_bytes=round(n.activation_bytes * f), output_bytes=round(n.output_bytes * f),
            fwd_peak_bytes=round(n.fwd_peak_bytes * f),
            tp_split_flops=n.tp_split_flops * f, tp_split_activation_bytes=round(n.tp_split_activation_bytes * f),
            tp_allreduce_fwd_bytes=round(n.tp_allreduce_fwd_bytes * f),
            tp_allreduce_bwd_bytes=round(n.tp_allreduce_bwd_bytes * f))

    model = dataclasses.replace(profile.model, micro_batch_size=micro_batch_size,
                                input_bytes=round(profile.model.input_bytes * f))
    return Profile(model=model, provenance=profile.provenance, nodes=[node(n) for n in profile.nodes],
                   edges=[dataclasses.replace(e, bytes=round(e.bytes * f)) for e in profile.edges])
