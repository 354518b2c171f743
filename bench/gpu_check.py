"""GPU check: the profiler's roofline estimate against CUDA-measured layer times, and the exported
GPT job's step time and peak memory against the plan's prediction. One short run:

    python -m bench.gpu_check                 # on a CUDA machine: writes bench/results/gpu_check.json
    python -m bench.gpu_check --device cpu    # the same flow on this CPU with a tiny model (checks the
                                              # script itself; writes bench/results/gpu_check_cpu.json)

1. Profile accuracy: `sample:gpt:SIZE` profiled twice at the same shape: measured on the GPU
   (measure="cuda") and estimated for the GPU preset matching the device name (roofline). Per
   layer: estimated / measured forward and backward time; summary over layers (median,
   min, max, and the whole-model ratio).
2. Job accuracy: the measured profile planned for the GPUs present (up to 2 pipeline ranks: one
   process per GPU; with one GPU a one-stage pipeline), 1F1B, fp32 AdamW; exported and run with
   torchrun for STEPS steps. Measured step time (mean of steps after the first WARM) and peak
   `torch.cuda.max_memory_allocated` (reported by train.py on the last rank) against
   plan.step_time_ms and the last stage's predicted memory. The plan made from the roofline
   profile is scored too, so the table shows both predictions next to the measurement.
3. The calibration loop (issue 19): that run's logs (the job measures itself: per-stage forward and
   backward, waits, cuda max_memory_allocated) -> `calibrate --from-run` (planner/calibration/
   from_run.py) -> re-plan with the refit cluster (and the fitted memory reserve) -> export -> run:
   the step-time error before and after calibration ("loop" in the results). Ready but unmeasured:
   no GPU has run it yet; `--device cpu` runs the same code path here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from bench.bench_accuracy import run_torchrun
from bench.common import RESULTS_DIR, Timer, environment, rnd
from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.export import export_plan
from planner.solvers.solve import solve
from profiler import load_profile
from profiler.gpus import GPU_PRESETS, GiB

STEPS = 10
WARM = 2
# device-name fragments -> preset, most specific first
NAME_TO_PRESET = [("h200", "H200"), ("h100", "H100-SXM"), ("a100", "A100-80GB"), ("l4", "L4"), ("4090", "RTX4090"),
                  ("v100", "V100"), ("mi300", "MI300X")]


def preset_for(device_name: str, memory_bytes: int | None = None) -> str:
    """The GPU preset for a CUDA device name (A100 split by memory); A100-80GB when unknown."""
    name = device_name.lower()
    for frag, preset in NAME_TO_PRESET:
        if frag in name:
            if preset == "A100-80GB" and memory_bytes is not None and memory_bytes < 60 * GiB:
                return "A100-40GB"
            return preset
    return "A100-80GB"


def _stats(xs: list[float]) -> dict:
    return {"median": rnd(statistics.median(xs)), "min": rnd(min(xs)), "max": rnd(max(xs))} if xs else {}


def profile_accuracy(spec: str, seq_len: int, batch: int, device: str, preset: str) -> tuple[dict, object]:
    with Timer() as tm:
        measured = load_profile(spec, seq_len=seq_len, batch_size=batch, measure=device)
    with Timer() as te:
        estimated = load_profile(spec, seq_len=seq_len, batch_size=batch, estimate_for=preset)
    est = {n.id: n for n in estimated.nodes}
    layers, fwd_r, bwd_r = [], [], []
    for n in measured.nodes:
        e = est.get(n.id)
        if e is None:
            continue
        fr = e.fwd_ms / n.fwd_ms if n.fwd_ms > 0 else None
        br = e.bwd_ms / n.bwd_ms if n.bwd_ms > 0 else None
        layers.append({"id": n.id, "kind": n.kind, "fwd_flops": n.fwd_flops, "measured_fwd_ms": rnd(n.fwd_ms, 5),
                       "estimated_fwd_ms": rnd(e.fwd_ms, 5), "measured_bwd_ms": rnd(n.bwd_ms, 5),
                       "estimated_bwd_ms": rnd(e.bwd_ms, 5), "fwd_est_over_measured": rnd(fr),
                       "bwd_est_over_measured": rnd(br)})
        if fr:
            fwd_r.append(fr)
        if br:
            bwd_r.append(br)
    total_m = sum(n.fwd_ms + n.bwd_ms for n in measured.nodes)
    total_e = sum(n.fwd_ms + n.bwd_ms for n in estimated.nodes)
    out = {"spec": spec, "seq_len": seq_len, "micro_batch": batch, "preset": preset,
           "measure_s": rnd(tm.wall, 3), "estimate_s": rnd(te.wall, 3), "layers": layers,
           "fwd_est_over_measured": _stats(fwd_r), "bwd_est_over_measured": _stats(bwd_r),
           "model_measured_ms": rnd(total_m, 5), "model_estimated_ms": rnd(total_e, 5),
           "model_est_over_measured": rnd(total_e / total_m) if total_m else None,
           "same_layers": len(layers) == len(measured.nodes) == len(estimated.nodes)}
    return out, (measured, estimated)


def job_accuracy(measured, estimated, device: str, n_ranks: int, microbatches: int, workdir: Path) -> dict:
    mem = torch.cuda.get_device_properties(0).total_memory if device == "cuda" else 64 * GiB
    cluster = Cluster(devices=[Device(name=f"{device}{i}", memory_bytes=int(mem), speed=1.0) for i in range(n_ranks)])
    cfg = TrainConfig(schedule="1F1B", num_microbatches=microbatches, micro_batch_size=measured.model.micro_batch_size,
                      precision="fp32", optimizer="adamw")
    plan = solve(measured, cluster, cfg)
    if not plan.feasible:
        return {"status": "infeasible", "reason": plan.diagnosis.message if plan.diagnosis else ""}
    from planner.solvers.evaluate import evaluate_partition

    roof = evaluate_partition(estimated, cluster, plan.config, [list(s.node_ids) for s in plan.stages])
    job = workdir / "job"
    export_plan(plan, job)
    stdout, rss, wall = run_torchrun(job, "train.py", ["--steps", str(STEPS)], nproc=n_ranks)
    steps = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    later = [s["step_time_s"] * 1000.0 for s in steps[WARM:]]
    measured_ms = statistics.mean(later)
    last = plan.stages[-1]
    peak = steps[-1].get("max_mem_bytes") if steps else None
    return {"status": "ok", "ranks": n_ranks, "microbatches": microbatches, "stages": len(plan.stages),
            "cuts": [len(s.node_ids) for s in plan.stages], "job_wall_s": rnd(wall, 3),
            "step_times_ms": [rnd(s["step_time_s"] * 1000.0, 5) for s in steps],
            "measured_step_ms": rnd(measured_ms, 5), "measured_step_ms_stdev": rnd(statistics.pstdev(later), 3),
            "predicted_step_ms_from_measured_profile": rnd(plan.step_time_ms, 5),
            "predicted_step_ms_from_roofline": rnd(roof.step_time_ms, 5),
            "measured_over_predicted": rnd(measured_ms / plan.step_time_ms),
            "measured_over_roofline_prediction": rnd(measured_ms / roof.step_time_ms),
            "last_stage_predicted_bytes": last.memory.total, "last_stage_memory": last.memory.to_dict(),
            "last_rank_peak_bytes": peak, "peak_kind": "cuda max_memory_allocated" if device == "cuda" else "RSS",
            "peak_over_predicted": rnd(peak / last.memory.total) if peak and last.memory.total else None,
            "rank_peak_rss_bytes": rss,
            "loop": calibration_loop(measured, plan, stdout, n_ranks, workdir)}


def calibration_loop(profile, plan, stdout: str, n_ranks: int, workdir: Path, runner=None) -> dict:
    """Calibrate from the first run's logs, re-plan, export, run again: step-time error before and after.
    `runner(job_dir, args, nproc) -> stdout` (default: run_torchrun) is injectable for tests."""
    from dataclasses import replace

    from planner.calibration.from_run import calibrate_from_run, read_run_log

    if runner is None:
        runner = lambda job, args, nproc: run_torchrun(job, "train.py", args, nproc=nproc)[0]
    try:
        refit, report = calibrate_from_run(plan, [stdout], profile=profile)
        plan2 = solve(profile, refit, replace(plan.config, reserve_bytes=report["reserve_bytes"]))
        if not plan2.feasible:
            return {"status": "infeasible after calibration", "fit": report}
        job = workdir / "job_calibrated"
        export_plan(plan2, job)
        out2 = runner(job, ["--steps", str(STEPS)], n_ranks)
        m1 = statistics.median(d["step_time_s"] * 1e3 for d in read_run_log(stdout)[WARM:])
        m2 = statistics.median(d["step_time_s"] * 1e3 for d in read_run_log(out2)[WARM:])
    except Exception as exc:  # noqa: BLE001 - the first half is still a result
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:2000]}
    return {"status": "ok", "before": {"predicted_ms": rnd(plan.step_time_ms, 5), "measured_ms": rnd(m1, 5),
                                       "error": rnd((plan.step_time_ms - m1) / m1, 4)},
            "after": {"predicted_ms": rnd(plan2.step_time_ms, 5), "measured_ms": rnd(m2, 5),
                      "error": rnd((plan2.step_time_ms - m2) / m2, 4)},
            "fit": {k: report[k] for k in ("device_speed", "action_overhead_ms", "action_overhead_parts_ms",
                                            "step_overhead_ms", "link", "reserve_bytes", "step")},
            "memory_per_stage": report["memory_per_stage"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--size", default=None, help="GPT size (default 124M on cuda, tiny on cpu)")
    ap.add_argument("--out", type=Path, default=None, help="results file (default bench/results/gpu_check[_cpu].json)")
    args = ap.parse_args(argv)
    env = environment()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu to check the script)",
              file=sys.stderr)
        return 2
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        preset = preset_for(props.name, props.total_memory)
        size, seq, batch, M = args.size or "124M", 1024, 4, 8
        n_ranks = min(2, torch.cuda.device_count())
    else:
        preset = "A100-80GB"  # nothing to match on a CPU; the comparison below is not meaningful there
        torch.set_num_threads(1)  # as torchrun's workers (OMP_NUM_THREADS=1)
        size, seq, batch, M = args.size or "tiny", 64, 4, 4
        n_ranks = 2
    assert preset in GPU_PRESETS
    result = {"benchmark": "gpu_check", "device": args.device, "env": env, "preset": preset}
    spec = f"sample:gpt:{size}"
    prof_out, (measured, estimated) = profile_accuracy(spec, seq, batch, args.device, preset)
    result["profile"] = prof_out
    print(f"gpu_check: profile est/measured (whole model) {prof_out['model_est_over_measured']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pipeplan-gpucheck-") as tmp:
        try:
            result["job"] = job_accuracy(measured, estimated, args.device, n_ranks, M, Path(tmp))
        except Exception as exc:  # noqa: BLE001 - the profile half is still a result
            result["job"] = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:3000]}
    print(f"gpu_check: job {json.dumps({k: v for k, v in result['job'].items() if 'times' not in k})[:600]}",
          flush=True)
    out = args.out or RESULTS_DIR / ("gpu_check.json" if args.device == "cuda" else "gpu_check_cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    print(f"gpu_check: wrote {out}")
    return 0 if result["job"].get("status") == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
