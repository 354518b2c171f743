"""Measure what the cost model cannot read off a profile: the link between two pipeline ranks
and the pipeline runtime's fixed cost per action, on this machine and backend.

    pipeplan calibrate --devices 2 --memory 64GB -o cluster.json

Two processes are started with torchrun (gloo on CPU, NCCL on CUDA); planner/calibration/worker.py
runs in each. From its raw numbers:
- the link is the alpha-beta fit (latency + bytes / bandwidth) of the one-way p2p times;
- the per-action overhead o is the value that makes the simulator's 1F1B step time of the
  calibration pipeline (two stages of one Linear(512, 512), its forward and backward timed alone, plus
  the fitted link) match the measured step time, least squares over the measured micro-batch
  counts. The simulator is linear in o, so this is one division.
The result is a Cluster whose devices carry `action_overhead_ms` and whose intra-node link is the
measured one: plans made with it predict what this machine's exported jobs measure
(bench/bench_accuracy.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import PipeplanError
from core.jsonio import load_json_text, read_json_file
from planner.contracts.cluster import Cluster, Device, Link

TIMEOUT_S = 300


@dataclass(kw_only=True, slots=True)
class Calibration:
    backend: str
    device: str
    latency_s: float
    bandwidth_bytes_per_s: float
    action_overhead_ms: float
    raw: dict
    """The worker's measurements (ping-pong times per size, calibration pipeline step times)."""

    @property
    def link(self) -> Link:
        return Link(bandwidth_bytes_per_s=self.bandwidth_bytes_per_s, latency_s=self.latency_s)

    def to_dict(self) -> dict:
        return asdict(self)


def fit_link(one_way_s: dict[int, float]) -> Link:
    """Least-squares alpha-beta fit t = latency + bytes / bandwidth over the measured sizes.
    A non-positive slope (noise at small sizes) falls back to the largest message's rate."""
    xs = sorted(one_way_s)
    if len(xs) < 2:
        raise PipeplanError("calibration needs ping-pong times at two message sizes at least")
    ys = [one_way_s[x] for x in xs]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    if slope <= 0:
        slope = ys[-1] / xs[-1]
    latency = max(0.0, my - slope * mx)
    return Link(bandwidth_bytes_per_s=1.0 / slope, latency_s=latency)


def fit_action_overhead(raw: dict, link: Link) -> float:
    """The per-action overhead (ms) that makes the simulated calibration pipeline match the measured one."""
    from planner.pipeline.simulator import simulate_times

    f, b = float(raw["stage_fwd_ms"]), float(raw["stage_bwd_ms"])
    comm = link.transfer_ms(raw["stage_bytes"])

    def simulated(m: int, overhead: float) -> float:
        return simulate_times([f + overhead] * 2, [b + overhead] * 2, [comm], schedule="1F1B", num_devices=2,
                              num_microbatches=m).makespan_ms

    num = den = 0.0
    for m_text, measured in raw["pipeline_step_ms"].items():
        m = int(m_text)
        base = simulated(m, 0.0)
        per_ms = simulated(m, 1.0) - base  # makespan grows linearly with the overhead
        num += per_ms * (float(measured) - base)
        den += per_ms * per_ms
    return max(0.0, num / den) if den > 0 else 0.0


def run_worker(*, threads: int = 1, progress: Callable[[str], None] | None = None) -> dict:
    """Start the two calibration ranks with torchrun and return rank 0's raw measurements."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="pipeplan-calibrate-") as tmp:
        out = Path(tmp) / "calibration.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "planner.calibration.worker", str(out)]
        if progress:
            progress("starting 2 ranks with torchrun (ping-pong, then a 2-stage pipeline)")
        try:
            proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=TIMEOUT_S,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise PipeplanError(f"calibration did not finish in {TIMEOUT_S} s; is the machine overloaded, or "
                                "does torchrun hang on this network? Try again on a quieter machine") from None
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise PipeplanError(f"the calibration ranks failed (exit {proc.returncode}):\n{tail}")
        return load_json_text(read_json_file(out, "calibration"), "calibration")


def calibrate(*, threads: int = 1, progress: Callable[[str], None] | None = None) -> Calibration:
    """Measure this machine's link and per-action overhead (2 ranks; see the module docstring)."""
    raw = run_worker(threads=threads, progress=progress)
    link = fit_link({int(k): float(v) for k, v in raw["pingpong_one_way_s"].items()})
    overhead = fit_action_overhead(raw, link)
    return Calibration(backend=raw["backend"], device=raw["device"], latency_s=link.latency_s,
                       bandwidth_bytes_per_s=link.bandwidth_bytes_per_s, action_overhead_ms=overhead, raw=raw)


def calibrated_cluster(calibration: Calibration, num_devices: int, memory_bytes: int, *,
                       name: str = "dev", speed: float = 1.0) -> Cluster:
    """num_devices identical devices on one node with the measured overhead and intra-node link."""
    devices = [Device(name=f"{name}{i}", memory_bytes=memory_bytes, speed=speed,
                      action_overhead_ms=calibration.action_overhead_ms) for i in range(num_devices)]
    return Cluster(devices=devices, intra_node=calibration.link)
