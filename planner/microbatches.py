"""Which micro-batch counts a schedule accepts, and the profile at another micro-batch size.

The rules are torch 2.13's (torch/distributed/pipelining/schedules.py):
Schedule1F1B raises unless M >= number of stages; ScheduleInterleaved1F1B needs
M to be a multiple of its number of rounds max(1, M // P); ZBV needs at least as
many micro-batches as stages (2P). GPipe accepts any M; ZBH1 is held to 1F1B's rule.
"""

from __future__ import annotations

import dataclasses

from planner.config import TrainConfig
from profiler.errors import PipeplanError
from profiler.profile import Profile


def schedule_accepts(schedule: str, num_devices: int, num_microbatches: int) -> str | None:
    """None if the schedule runs M micro-batches on P devices, else the reason it does not."""
    P, M = num_devices, num_microbatches
    if schedule in ("1F1B", "ZBH1") and M < P:
        return f"{schedule} needs at least as many micro-batches as stages ({P}), got {M}"
    if schedule == "ZBV" and M < 2 * P:
        return f"ZBV needs at least as many micro-batches as stages ({2 * P}), got {M}"
    if schedule == "Interleaved1F1B":
        rounds = max(1, M // P)
        if M % rounds:
            return (f"Interleaved1F1B needs M to be a multiple of its rounds max(1, M // P) = {rounds}; "
                    f"got M = {M} on {P} devices (use a multiple of {P})")
    return None


def microbatch_options(config: TrainConfig, num_devices: int) -> list[tuple[int, int]]:
    """(num_microbatches, micro_batch_size) pairs to try, valid for the schedule.

    With num_microbatches given: exactly that one (or a PipeplanError saying why it is invalid).
    With only global_batch: every split of it into M micro-batches of size global_batch / M.
    """
    if config.num_microbatches is not None:
        why = schedule_accepts(config.schedule, num_devices, config.num_microbatches)
        if why:
            raise PipeplanError(f"{why}; change --microbatches or the schedule")
        return [(config.num_microbatches, config.micro_batch_size)]
    G = int(config.global_batch)
    options = [(G // b, b) for b in range(1, G + 1) if G % b == 0
               and schedule_accepts(config.schedule, num_devices, G // b) is None]
    if not options:
        raise PipeplanError(f"no split of global batch {G} into micro-batches suits {config.schedule} on "
                            f"{num_devices} devices; use a global batch of at least {2 * num_devices}")
    return options


def scale_profile(profile: Profile, micro_batch_size: int) -> Profile:
    """The profile at another micro-batch size, assuming time and activation bytes grow linearly
    with the samples per micro-batch (an estimate: GPUs are often more efficient at larger sizes)."""
    base = profile.model.micro_batch_size or 1
    if micro_batch_size == base:
        return profile
    f = micro_batch_size / base

    def node(n):
        return dataclasses.replace(
            n, fwd_flops=n.fwd_flops * f, bwd_flops=n.bwd_flops * f, fwd_ms=n.fwd_ms * f, bwd_ms=n.bwd_ms * f,
            bwd_input_ms=None if n.bwd_input_ms is None else n.bwd_input_ms * f,
            bwd_weight_ms=None if n.bwd_weight_ms is None else n.bwd_weight_ms * f,
            activation_bytes=int(round(n.activation_bytes * f)), output_bytes=int(round(n.output_bytes * f)))

    model = dataclasses.replace(profile.model, micro_batch_size=micro_batch_size,
                                input_bytes=int(round(profile.model.input_bytes * f)))
    return Profile(model=model, provenance=profile.provenance, nodes=[node(n) for n in profile.nodes],
                   edges=[dataclasses.replace(e, bytes=int(round(e.bytes * f))) for e in profile.edges])
