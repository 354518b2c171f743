"""Prediction accuracy on this machine: measured CPU profile -> plan for 2 ranks -> exported job
run with torchrun/gloo -> measured step time and peak memory against the plan's prediction.

    python -m bench.bench_accuracy [--quick]

Writes bench/results/accuracy.json. Per tiny sample model:
1. profile with measure="cpu" in this process, one intra-op thread (torchrun's workers run with
   OMP_NUM_THREADS=1; the profile must be taken the same way);
2. plan for a cluster of 2 CPU "devices" (speed 1.0, 64 GiB, the default links), 1F1B,
   4 micro-batches of MICRO_BATCH samples, fp32 AdamW;
3. export and run `torchrun --standalone --nproc-per-node 2 train.py --steps STEPS`;
4. step time: mean `step_time_s` of the later steps (step 1 holds warm-up and allocation) vs
   plan.step_time_ms; memory: each rank's peak RSS (VmHWM, polled from /proc while the job runs)
   minus the peak RSS of a bare worker (torch imported, gloo group up: bench/_rss_baseline.py)
   vs the plan's stage memory (params + grads + optimizer + activations x in flight).
The two processes share this 2-core machine with everything else running on it; the step-time
ratio is only as steady as the machine (load average recorded).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import Timer, command_line, rnd, spread, write_result
from planner.calibration.calibrate import Calibration, calibrate, calibrated_cluster
from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.export import export_plan
from planner.solvers.solve import solve
from profiler import load_profile
from profiler.gpus import GiB

MODELS = ["gpt", "llama", "vit", "resnet", "unet3d", "dlrm", "mlp"]
QUICK_MODELS = ["gpt"]
MICRO_BATCH = 4
MICROBATCHES = 4
STEPS = 6
WARM_STEPS = 2
TIMEOUT_S = 300
VENV_BIN = Path(sys.executable).parent


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def _tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += _children(p)
    return found


def _rank_and_hwm(pid: int) -> tuple[int | None, int | None]:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        rank = next((int(e[5:]) for e in env if e.startswith(b"RANK=")), None)
        if rank is None or b"LOCAL_RANK" not in b"\0".join(env):
            return None, None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return rank, int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None, None


def run_torchrun(cwd: Path, script: str, args: list[str], nproc: int = 2) -> tuple[str, dict[int, int], float]:
    """Run torchrun; return (stdout, peak RSS per rank in bytes, wall seconds). Raises on failure."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", script, *args]
    out_f = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - closed below, after the process ends
    err_f = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out_f, stderr=err_f)
    peaks: dict[int, int] = {}
    try:
        while proc.poll() is None:
            if time.perf_counter() - t0 > TIMEOUT_S:
                raise TimeoutError(f"{' '.join(cmd)} ran over {TIMEOUT_S} s")
            for pid in _tree(proc.pid)[1:]:
                rank, hwm = _rank_and_hwm(pid)
                if rank is not None and hwm is not None:
                    peaks[rank] = max(peaks.get(rank, 0), hwm)
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            for pid in reversed(_tree(proc.pid)):
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
            proc.wait()
    wall = time.perf_counter() - t0
    out_f.seek(0)
    err_f.seek(0)
    stdout, stderr = out_f.read(), err_f.read()
    out_f.close()
    err_f.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {stderr[-1500:]}")
    return stdout, peaks, wall


def baseline_rss() -> dict[int, int]:
    _, peaks, _ = run_torchrun(Path(__file__).parent, "_rss_baseline.py", [])
    return peaks


def two_cpu_cluster(calibration: Calibration | None = None) -> Cluster:
    """2 CPU devices of speed 1.0: with the calibrated link and per-action overhead when given,
    else the default links and no overhead."""
    if calibration is not None:
        return calibrated_cluster(calibration, 2, 64 * GiB, name="cpu")
    return Cluster(devices=[Device(name=f"cpu{i}", memory_bytes=64 * GiB, speed=1.0) for i in range(2)])


def case(name: str, base: dict[int, int], workdir: Path, calibration: Calibration | None) -> dict:
    row: dict = {"model": name, "size": "tiny", "micro_batch_size": MICRO_BATCH, "microbatches": MICROBATCHES}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Timer() as t:
            prof = load_profile(f"sample:{name}:tiny", batch_size=MICRO_BATCH, measure="cpu")
    finally:
        torch.set_num_threads(threads)
    row["profile_s"] = rnd(t.wall, 3)
    row["nodes"] = len(prof.nodes)
    cfg = TrainConfig(schedule="1F1B", num_microbatches=MICROBATCHES, micro_batch_size=MICRO_BATCH,
                      precision="fp32", optimizer="adamw")
    plan = solve(prof, two_cpu_cluster(calibration), cfg)
    uncalibrated = solve(prof, two_cpu_cluster(), cfg).step_time_ms
    if not plan.feasible:
        row.update(status="infeasible", reason=plan.diagnosis.message if plan.diagnosis else "")
        return row
    job = workdir / name
    export_plan(plan, job)
    stdout, peaks, wall = run_torchrun(job, "train.py", ["--steps", str(STEPS)])
    steps = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    later = [s["step_time_s"] * 1000.0 for s in steps[WARM_STEPS:]]
    measured = statistics.mean(later)
    pred = plan.step_time_ms
    stages = []
    for st in plan.stages:
        rank = st.device  # 1F1B: stage i on rank i
        rss, b = peaks.get(rank), base.get(rank)
        pred_mem = st.memory.total
        stages.append({"stage": st.index, "rank": rank, "layers": len(st.node_ids),
                       "predicted_bytes": pred_mem, "params": st.param_count,
                       "predicted_activations_bytes": st.memory.activations, "in_flight": st.in_flight,
                       "peak_rss_bytes": rss, "baseline_rss_bytes": b,
                       "rss_over_baseline_bytes": (rss - b) if rss and b else None,
                       "unmodelled_bytes": (rss - b - pred_mem) if rss and b else None,
                       "measured_over_predicted": rnd((rss - b) / pred_mem) if rss and b and pred_mem else None})
    row.update(status="ok", job_wall_s=rnd(wall, 3), steps=len(steps),
               step_times_ms=[rnd(s["step_time_s"] * 1000.0, 4) for s in steps],
               measured_step_ms=rnd(measured, 5), measured_step_ms_stdev=rnd(statistics.pstdev(later), 3),
               measured_step_ms_median=rnd(statistics.median(later), 5),
               predicted_step_ms=rnd(pred, 5), measured_over_predicted=rnd(measured / pred),
               predicted_uncalibrated_ms=rnd(uncalibrated, 5),
               measured_over_predicted_uncalibrated=rnd(measured / uncalibrated),
               predicted_optimizer_ms=rnd(max(s.optimizer_ms for s in plan.stages), 4),
               predicted_compute_ms=rnd(sum(s.fwd_ms + s.bwd_ms for s in plan.stages) * MICROBATCHES, 5),
               predicted_comm_ms=rnd(sum(s.comm_out_ms + s.comm_grad_ms for s in plan.stages) * MICROBATCHES, 5),
               bubble_fraction=rnd(plan.bubble_fraction), stages=stages,
               reported_max_mem_bytes=steps[-1].get("max_mem_bytes") if steps else None)
    return row


def run(quick: bool) -> dict:
    models = QUICK_MODELS if quick else MODELS
    rows = []
    with tempfile.TemporaryDirectory(prefix="pipeplan-bench-") as tmp:
        base = baseline_rss()
        calibration = calibrate()
        print(f"  calibration: link {calibration.latency_s * 1e3:.3f} ms + bytes / "
              f"{calibration.bandwidth_bytes_per_s / 1e9:.2f} GB/s, {calibration.action_overhead_ms:.3f} ms per action",
              flush=True)
        for name in models:
            try:
                rows.append(case(name, base, Path(tmp), calibration))
            except Exception as exc:  # noqa: BLE001 - one model's failure is a result, not the end of the suite
                rows.append({"model": name, "status": "error", "reason": f"{type(exc).__name__}: {exc}"[:2000]})
            r = rows[-1]
            print(f"  accuracy {name}: {r['status']} time x{r.get('measured_over_predicted')} "
                  f"mem {[s.get('measured_over_predicted') for s in r.get('stages', [])]}", flush=True)
    ok = [r for r in rows if r["status"] == "ok"]
    time_ratios = [r["measured_over_predicted"] for r in ok]
    mem_ratios = [s["measured_over_predicted"] for r in ok for s in r["stages"] if s["measured_over_predicted"]]
    unc = [r["measured_over_predicted_uncalibrated"] for r in ok]
    data = {"cluster": "2 CPU devices, speed 1.0, 64 GiB, link and per-action overhead from planner.calibration.calibrate "
                       "(uncalibrated: default links, no overhead)",
            "calibration": calibration.to_dict(),
            "schedule": "1F1B", "precision": "fp32", "optimizer": "adamw", "steps": STEPS,
            "timed_steps": f"{WARM_STEPS + 1}..{STEPS}", "baseline_rss_bytes": base, "rows": rows,
            "summary": {"models": len(rows), "ok": len(ok),
                        **spread("step_time_ratio", time_ratios, median=True),
                        **spread("uncalibrated_ratio", unc, median=True),
                        **spread("memory_ratio", mem_ratios)}}
    write_result("accuracy", data, quick)
    return data


if __name__ == "__main__":
    command_line(run, summary_key="summary")
