"""One rank of `pipeplan calibrate` (started by torchrun; see planner/calibration/calibrate.py).

Rank 0 and rank 1 measure, on the backend a pipeline job would use:
1. point-to-point transfers: blocking send/recv ping-pong at several sizes (one-way time =
   round trip / 2), the same p2p calls torch.distributed.pipelining issues between stages;
2. the pipeline runtime's step time for a two-stage model (one Linear per stage, about a
   millisecond of math) under Schedule1F1B at two micro-batch counts, and that Linear's own
   forward and backward time, so the caller can solve for the runtime's per-action overhead.
Rank 0 writes the raw numbers as JSON to the path given as the only argument.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

SIZES = (4 << 10, 256 << 10, 4 << 20)
"""Ping-pong message sizes in bytes."""
PINGPONG_REPS = 20
MICROBATCH_COUNTS = (4, 24)
PIPELINE_STEPS = 20
LOCAL_REPS = 40
WIDTH, ROWS = 512, 64
"""The calibration stage: Linear(WIDTH, WIDTH) on ROWS x WIDTH micro-batches, about a millisecond of
math on one CPU core: the overhead is measured while both ranks compute, as in a real job (on a
shared CPU the runtime's p2p threads then wait for a core)."""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pingpong(rank: int, device: torch.device) -> dict[int, float]:
    """bytes -> one-way seconds between rank 0 and rank 1: the lower quartile of the round trips / 2.
    On a shared CPU some round trips wait milliseconds for a core to wake the receiver; a
    quartile keeps the link's own cost, and the pipeline fit below absorbs the waits a real job sees."""
    out = {}
    for nbytes in SIZES:
        buf = torch.zeros(nbytes // 4, dtype=torch.float32, device=device)
        times = []
        for rep in range(PINGPONG_REPS + 2):
            _sync(device)
            t0 = time.perf_counter()
            if rank == 0:
                dist.send(buf, 1)
                dist.recv(buf, 1)
            else:
                dist.recv(buf, 0)
                dist.send(buf, 0)
            _sync(device)
            if rep >= 2:
                times.append((time.perf_counter() - t0) / 2)
        out[nbytes] = statistics.quantiles(times, n=4)[0]
    return out


def local_linear_ms(device: torch.device) -> tuple[float, float]:
    """Forward and backward ms of the calibration stage's math alone (what a profile would say),
    timed on both ranks at once."""
    torch.manual_seed(0)
    layer = nn.Linear(WIDTH, WIDTH).to(device)
    fwd, bwd = [], []
    for rep in range(LOCAL_REPS + 3):
        x = torch.randn(ROWS, WIDTH, device=device, requires_grad=True)
        _sync(device)
        t0 = time.perf_counter()
        y = layer(x)
        _sync(device)
        t1 = time.perf_counter()
        torch.autograd.grad(y, [x, *layer.parameters()], torch.ones_like(y))
        _sync(device)
        t2 = time.perf_counter()
        if rep >= 3:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    return 1000 * statistics.median(fwd), 1000 * statistics.median(bwd)


def pipeline_step_ms(rank: int, device: torch.device, num_microbatches: int) -> float:
    """Median step time of Schedule1F1B over the two-stage calibration pipeline."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B

    torch.manual_seed(rank)
    layer = nn.Linear(WIDTH, WIDTH).to(device)
    meta = torch.empty(ROWS, WIDTH, device="meta", requires_grad=True)
    stage = PipelineStage(layer, rank, 2, device, input_args=(meta,), output_args=(meta,))
    schedule = Schedule1F1B(stage, num_microbatches, loss_fn=lambda out, target: (out - target).pow(2).mean())
    data = torch.randn(ROWS * num_microbatches, WIDTH, device=device)
    times = []
    for step in range(PIPELINE_STEPS + 2):
        dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        if rank == 0:
            schedule.step(data)
        else:
            schedule.step(target=data, losses=[])
        _sync(device)
        if step >= 2:
            times.append(time.perf_counter() - t0)
    # the step ends on the rank that finishes last; take the larger median of the two ranks
    median = torch.tensor([statistics.median(times)], dtype=torch.float64)
    dist.all_reduce(median.to(device) if device.type == "cuda" else median, op=dist.ReduceOp.MAX)
    return 1000 * float(median)


def main() -> int:
    out_path = sys.argv[1]
    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    rank = dist.get_rank()
    try:
        p2p = pingpong(rank, device)
        # the stage's own math is timed before and after the pipeline runs (the machine may change)
        before = local_linear_ms(device)
        steps = {m: pipeline_step_ms(rank, device, m) for m in MICROBATCH_COUNTS}
        after = local_linear_ms(device)
        fwd_ms, bwd_ms = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
        if rank == 0:
            result = {
                "backend": backend,
                "device": torch.cuda.get_device_name(device) if cuda else "cpu",
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "pingpong_one_way_s": {str(k): v for k, v in p2p.items()},
                "stage_bytes": ROWS * WIDTH * 4,
                "stage_fwd_ms": fwd_ms, "stage_bwd_ms": bwd_ms,
                "pipeline_step_ms": {str(k): v for k, v in steps.items()},
            }
            with open(out_path, "w", encoding="utf-8") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
