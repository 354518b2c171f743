"""Will measuring this model fit in memory here? (Otherwise suggest an estimate.)"""

from __future__ import annotations

import os

import torch

from core.errors import PipeplanError

# Measuring needs weights + grads + saved activations in memory; keep this much headroom.
MEASURE_MEMORY_FRACTION = 0.7


def available_memory_bytes(device: str) -> int:
    """Free memory on `device`: MemAvailable for the CPU, cudaMemGetInfo for CUDA."""
    if device == "cuda":
        return int(torch.cuda.mem_get_info()[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_fits_for_measuring(needed_bytes: float, device: str, what: str) -> None:
    """PipeplanError suggesting an estimate when `needed_bytes` would not fit on `device`."""
    free = available_memory_bytes(device)
    if needed_bytes > MEASURE_MEMORY_FRACTION * free:
        raise PipeplanError(
            f"{what} needs about {needed_bytes / 2**30:.1f} GiB to measure on {device} but only "
            f"{free / 2**30:.1f} GiB is free: estimate instead with --estimate-for PRESET (e.g. A100-80GB), "
            "or lower --batch-size / --seq-len")
