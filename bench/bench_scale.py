"""Scale: time and peak memory to profile and plan the Llama 70B shape on 64 devices.

    python -m bench.bench_scale [--quick]

Writes bench/results/scale.json. Runs in a fresh child process so that its peak RSS is its own:
profile `sample:llama:70B` (seq 4096, micro-batch 1, estimate mode for A100-80GB: the model is
built on the meta device and traced under FakeTensor, no weights exist), then plan it on 64
A100-80GB (8 per host), 1F1B, 128 micro-batches, bf16 mixed AdamW, recompute chosen by the
solver. Peak RSS (VmHWM) after imports, after profiling and after planning; wall and CPU
seconds of each phase. --quick plans gpt:124M on 8 devices instead (smoke test only).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from bench.common import rnd, write_result

FULL = {"spec": "sample:llama:70B", "seq_len": 4096, "devices": 64, "microbatches": 128}
QUICK = {"spec": "sample:gpt:124M", "seq_len": 1024, "devices": 8, "microbatches": 16}


def child(spec: str, seq_len: int, devices: int, microbatches: int) -> dict:
    from bench.common import Timer, peak_rss_bytes
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve
    from profiler import load_profile

    out = {"rss_after_imports_bytes": peak_rss_bytes()}
    with Timer() as t:
        prof = load_profile(spec, seq_len=seq_len, batch_size=1, estimate_for="A100-80GB")
    out.update(profile_wall_s=rnd(t.wall, 4), profile_cpu_s=rnd(t.cpu, 4), rss_after_profile_bytes=peak_rss_bytes(),
               nodes=len(prof.nodes), params=prof.model.param_count)
    cfg = TrainConfig(num_microbatches=microbatches, precision="bf16_mixed", optimizer="adamw", recompute="auto")
    with Timer() as t:
        plan = solve(prof, Cluster.uniform(devices, "A100-80GB"), cfg)
    out.update(plan_wall_s=rnd(t.wall, 4), plan_cpu_s=rnd(t.cpu, 4), rss_after_plan_bytes=peak_rss_bytes(),
               feasible=plan.feasible)
    if plan.feasible:
        out.update(step_time_ms=rnd(plan.step_time_ms, 6), backend=plan.solver.backend,
                   solver_status=plan.solver.status,
                   gap=rnd(plan.solver.gap), recompute_stages=sum(s.recompute for s in plan.stages),
                   max_stage_memory_gib=rnd(max(s.memory.total for s in plan.stages) / 2**30, 4),
                   baselines_ms={k: rnd(v, 6) for k, v in plan.baselines.items()})
    else:
        out["diagnosis"] = plan.diagnosis.message if plan.diagnosis else None
    return out


def run(quick: bool) -> dict:
    case = QUICK if quick else FULL
    proc = subprocess.run([sys.executable, "-m", "bench.bench_scale", "--child", json.dumps(case)],
                          capture_output=True, text=True, timeout=1500, check=False)
    if proc.returncode != 0:
        result = {"status": "error", "reason": proc.stderr[-2000:]}
    else:
        result = {"status": "ok", **json.loads(proc.stdout.strip().splitlines()[-1])}
    data = {"case": case, "cluster": f"{case['devices']} x A100-80GB, 8 per host", "schedule": "1F1B",
            "precision": "bf16_mixed", "optimizer": "adamw", "recompute": "auto", "result": result}
    write_result("scale", data, quick)
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(**json.loads(a.child))))
    else:
        print(json.dumps(run(a.quick), indent=2))
