"""Pipeline schedules as data: which stage runs where, and how many
micro-batches each stage holds in flight.

`in_flight_microbatches` is the one function the memory model uses for every
schedule; the simulator's timelines are tested against it.
"""

from __future__ import annotations

from planner.config import TrainConfig


def num_stages(num_devices: int, config: TrainConfig) -> int:
    """Pipeline stages for this many devices: devices x chunks per device."""
    return num_devices * config.virtual_stages


def stage_to_device(num_devices: int, schedule: str, virtual_stages: int) -> list[int]:
    """Device of every stage. Loop placement (stage s on device s mod P) for
    interleaved schedules, V placement for ZBV (device d holds stages d and 2P-1-d)."""
    P = num_devices
    if schedule == "ZBV":
        return [s if s < P else 2 * P - 1 - s for s in range(2 * P)]
    return [s % P for s in range(P * virtual_stages)]


def in_flight_microbatches(schedule: str, num_devices: int, num_microbatches: int,
                           virtual_stages: int = 1) -> list[int]:
    """Peak number of micro-batches whose activations each stage holds, per stage.

    GPipe: M everywhere. 1F1B and ZB-H1: min(P - s, M) (Megatron's warm-up
    count + 1). Interleaved and ZBV: derived from the schedule order.
    """
    P, M = num_devices, num_microbatches
    if schedule == "GPipe":
        return [M] * P
    if schedule in ("1F1B", "ZBH1"):
        return [min(P - s, M) for s in range(P)]
    S = P * virtual_stages
    # Interim closed form (Megatron interleaving warm-up); refined by the simulator.
    return [min(M, 2 * (P - (s % P) - 1) + (virtual_stages - 1) * P + 1) for s in range(S)]
