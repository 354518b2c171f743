"""Planner benchmarks: solve time and proven optimality on the sizes issue 4 sets targets for.

    python -m bench.bench_planner [--quick]

Writes bench/results/planner.json. Targets (issue 4): 1000-node chain / 8 stages proven optimal
<= 2 s; 200-node U-Net-like DAG / 8 stages proven optimal <= 5 s; 2000-node chain / 64 stages
gap <= 1 % in <= 10 s; re-solve after a small change (memory limit, device count) <= 1 s for a
GPT-124M-like profile on 8 devices. Each case also runs a reference in the same process (the
baselines' step time, or the cold ILP) and reports ratios against it.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from planner.cluster import Cluster, Device
from planner.config import TrainConfig
from planner.cost import build_tables, stage_devices
from planner.ilp import solve_ilp
from planner.solve import ilp_problem, solve
from planner.synthetic import chain_profile, gpt_like_profile, unet_profile
from profiler.gpus import GiB

RESULTS = Path(__file__).parent / "results" / "planner.json"


def random_chain(n: int, seed: int):
    rng = random.Random(seed)
    return chain_profile([rng.uniform(0.2, 3.0) for _ in range(n)],
                         params=[rng.randint(10**5, 10**7) for _ in range(n)],
                         acts=[rng.randint(10**6, 5 * 10**7) for _ in range(n)],
                         edge_bytes=[rng.randint(10**5, 10**7) for _ in range(n - 1)])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def summarize(plan, seconds):
    best_baseline = min((t for t in plan.baselines.values() if t is not None), default=None)
    return {"seconds": round(seconds, 3), "solver_seconds": round(plan.solver.seconds, 3),
            "backend": plan.solver.backend, "status": plan.solver.status,
            "gap": plan.solver.gap, "step_ms": plan.step_time_ms,
            "best_baseline_over_optimal": None if best_baseline is None else best_baseline / plan.step_time_ms}


def memory_need(prof, P: int) -> float:
    """Bytes the whole model needs with 1F1B on P devices if activations were spread evenly:
    16 B per parameter (fp32 Adam) plus saved activations x the average in-flight count (P+1)/2."""
    return sum(x.param_count for x in prof.nodes) * 16 + sum(x.activation_bytes for x in prof.nodes) * (P + 1) / 2


def case_chain(n: int, P: int, seed: int, time_limit: float, mixed: bool = False):
    prof = random_chain(n, seed)
    need = memory_need(prof, P)
    devices = [Device(name=f"d{i}", memory_bytes=int(need / P * 1.5), speed=(2.0 if mixed and i % 2 else 1.0),
                      node=i // 8) for i in range(P)]
    cfg = TrainConfig(num_microbatches=2 * P, time_limit_s=time_limit)
    plan, sec = timed(lambda: solve(prof, Cluster(devices=devices), cfg))
    return summarize(plan, sec)


def case_unet(P: int, time_limit: float):
    prof = unet_profile(depth=6, width=16, seed=1)
    cfg = TrainConfig(num_microbatches=2 * P, time_limit_s=time_limit)
    plan, sec = timed(lambda: solve(prof, Cluster.uniform(P, memory_bytes=GiB), cfg))
    out = summarize(plan, sec)
    out["nodes"] = len(prof.nodes)
    return out


def case_cold_ilp(n: int, P: int, seed: int, time_limit: float):
    """Reference: the ILP alone (no DP warm start or bounds) on the same chain."""
    prof = random_chain(n, seed)
    need = memory_need(prof, P)
    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=int(need / P * 1.5)) for i in range(P)])
    cfg = TrainConfig(num_microbatches=2 * P)
    tables = build_tables(prof)
    res, sec = timed(lambda: solve_ilp(ilp_problem(prof, tables, cluster, cfg, stage_devices(P, cfg)),
                                       time_limit_s=time_limit))
    return {"seconds": round(sec, 3), "status": res.status, "objective": res.objective}


def case_resolve(P: int = 8):
    prof = gpt_like_profile()
    base_cfg = TrainConfig(num_microbatches=16, precision="bf16_mixed")
    first, t_first = timed(lambda: solve(prof, Cluster.uniform(P, "A100-80GB"), base_cfg))
    changes = {
        "memory_limit_16GB": lambda: solve(prof, Cluster.uniform(P, "A100-80GB", memory_bytes=16 * GiB), base_cfg),
        "devices_6": lambda: solve(prof, Cluster.uniform(6, "A100-80GB"), base_cfg),
        "recompute_auto_8GB": lambda: solve(prof, Cluster.uniform(P, "A100-80GB", memory_bytes=8 * GiB),
                                            TrainConfig(num_microbatches=16, precision="bf16_mixed",
                                                        recompute="auto")),
    }
    out = {"first_solve": summarize(first, t_first)}
    for name, fn in changes.items():
        plan, sec = timed(fn)
        out[name] = summarize(plan, sec) if plan.feasible else {"seconds": round(sec, 3), "feasible": False}
    return out


def run(quick: bool) -> dict:
    results = {
        "chain_1000_8": case_chain(1000, 8, seed=0, time_limit=10),
        "chain_1000_8_mixed": case_chain(1000, 8, seed=1, time_limit=10, mixed=True),
        "unet_dag_200_8": case_unet(8, time_limit=10),
        "chain_2000_64": case_chain(2000, 64, seed=2, time_limit=10),
        "resolve_gpt124m_8": case_resolve(),
    }
    if not quick:
        results["reference_cold_ilp_chain_1000_8"] = case_cold_ilp(1000, 8, seed=0, time_limit=60)
        ref = results["reference_cold_ilp_chain_1000_8"]["seconds"]
        results["chain_1000_8"]["speedup_vs_cold_ilp"] = ref / max(results["chain_1000_8"]["seconds"], 1e-9)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=2))
