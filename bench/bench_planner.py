"""Planner benchmarks: solve time and proven optimality on the sizes issue 4 sets targets for.

    python -m bench.bench_planner [--quick]

Writes bench/results/planner.json. Targets (issue 4): 1000-node chain / 8 stages proven optimal
<= 2 s; 200-node U-Net-like DAG / 8 stages proven optimal <= 5 s; 2000-node chain / 64 stages
gap <= 1 % in <= 10 s; re-solve after a small change (memory limit, device count) <= 1 s for a
GPT-124M-like profile on 8 devices. Each case also runs a reference in the same process (the
baselines' step time, or the cold ILP) and reports ratios against it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bench.common import command_line
from planner.contracts.cluster import Cluster, Device, Link
from planner.contracts.config import TrainConfig
from planner.costmodel.cost import build_tables, stage_devices
from planner.solvers.baselines import baseline_plans
from planner.solvers.ilp import solve_ilp
from planner.solvers.search import ilp_problem, solve_once
from planner.solvers.solve import solve
from profiler.gpus import GiB
from profiler.synthetic import gpt_like_profile, random_chain_profile, unet_profile

RESULTS = Path(__file__).parent / "results" / "planner.json"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def summarize(plan, seconds):
    """seconds/status/gap: the solver's own (closed-form objective); step_ms: the simulated timeline;
    best_baseline_over_optimal: the best fitting baseline's simulated step over the plan's."""
    if not plan.baselines:
        plan.baselines = {n: (p.step_time_ms if p.feasible else None)
                          for n, p in baseline_plans(plan_profile[id(plan)], plan.cluster, plan.config).items()}
    best_baseline = min((t for t in plan.baselines.values() if t is not None), default=None)
    return {"seconds": round(seconds, 3), "solver_seconds": round(plan.solver.seconds, 3),
            "backend": plan.solver.backend, "status": plan.solver.status,
            "gap": plan.solver.gap, "objective_ms": plan.solver.objective_ms, "step_ms": plan.step_time_ms,
            "best_baseline_over_optimal": None if best_baseline is None else best_baseline / plan.step_time_ms}


plan_profile: dict[int, object] = {}


def optimise(prof, cluster, cfg):
    """The optimiser alone (solve_once: DP or ILP, timeline of the winner), timed; the targets are about it.
    solve() would add the three baselines and could swap in one that simulates faster."""
    plan, sec = timed(lambda: solve_once(prof, cluster, cfg))
    plan_profile[id(plan)] = prof
    return plan, sec


def memory_need(prof, P: int) -> float:
    """Bytes the whole model needs with 1F1B on P devices if activations were spread evenly:
    16 B per parameter (fp32 Adam) plus saved activations x the average in-flight count (P+1)/2."""
    return sum(x.param_count for x in prof.nodes) * 16 + sum(x.activation_bytes for x in prof.nodes) * (P + 1) / 2


def case_chain(n: int, P: int, seed: int, time_limit: float, mixed: bool = False):
    prof = random_chain_profile(n, seed)
    need = memory_need(prof, P)
    devices = [Device(name=f"d{i}", memory_bytes=int(need / P * 1.5), speed=(2.0 if mixed and i % 2 else 1.0),
                      node=i // 8) for i in range(P)]
    cfg = TrainConfig(num_microbatches=2 * P, time_limit_s=time_limit)
    plan, sec = optimise(prof, Cluster(devices=devices), cfg)
    return summarize(plan, sec)


def case_unet(P: int, time_limit: float):
    prof = unet_profile(depth=6, width=16, seed=1)
    cfg = TrainConfig(num_microbatches=2 * P, time_limit_s=time_limit)
    plan, sec = optimise(prof, Cluster.uniform(P, memory_bytes=GiB), cfg)
    out = summarize(plan, sec)
    out["nodes"] = len(prof.nodes)
    return out


def case_cold_ilp(n: int, P: int, seed: int, time_limit: float):
    """Reference: the ILP alone (no DP warm start or bounds) on the same chain."""
    prof = random_chain_profile(n, seed)
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


REALISTIC = {"gpt": "124M", "llama": "7B", "vit": "B/16", "resnet": "ResNet-50", "unet3d": "base",
             "dlrm": "criteo-kaggle", "mlp": "base"}


def mixed_cluster() -> Cluster:
    devices = [Device.from_preset("A100-80GB", name=f"a100-{i}", node=0) for i in range(2)]
    devices += [Device.from_preset("L4", name=f"l4-{i}", node=1) for i in range(2)]
    return Cluster(devices=devices, intra_node=Link(bandwidth_bytes_per_s=300e9, latency_s=5e-6),
                   inter_node=Link(bandwidth_bytes_per_s=12.5e9, latency_s=10e-6))


def case_sample_models() -> dict:
    """Realistic sizes (profiled on meta, times estimated for A100-80GB), bf16 mixed, Adam, recompute auto:
    the plan's simulated step against each baseline's, on 4 and 8 A100-80GB and on 2 x A100 + 2 x L4."""
    from profiler.sources import load_profile

    out = {}
    for name, size in REALISTIC.items():
        spec = f"sample:{name}:{size}"
        prof, load_s = timed(lambda spec=spec: load_profile(spec, estimate_for="A100-80GB"))
        row = {"layers": len(prof.nodes), "profile_seconds": round(load_s, 1)}
        clusters = {"4xA100": Cluster.uniform(4, "A100-80GB"), "8xA100": Cluster.uniform(8, "A100-80GB"),
                    "2xA100+2xL4": mixed_cluster()}
        for label, cluster in clusters.items():
            P = cluster.num_devices
            cfg = TrainConfig(num_microbatches=2 * P, precision="bf16_mixed", recompute="auto", time_limit_s=10,
                              device_order="auto" if label.startswith("2x") else "fixed")
            if len(prof.nodes) < P:
                row[label] = "fewer layers than devices"
                continue
            plan, sec = timed(lambda prof=prof, cluster=cluster, cfg=cfg: solve(prof, cluster, cfg))
            if not plan.feasible:
                row[label] = {"feasible": False, "diagnosis": plan.diagnosis.message}
                continue
            row[label] = {"seconds": round(sec, 2), "backend": plan.solver.backend, "status": plan.solver.status,
                          "step_ms": round(plan.step_time_ms, 3),
                          "baseline_over_plan": {b: (None if t is None else round(t / plan.step_time_ms, 4))
                                                 for b, t in plan.baselines.items()}}
        out[f"{name}:{size}"] = row
    return out


def case_llama7b_memory_bound() -> dict:
    """Real Llama 7B profile, fp32 + AdamW on 4 x 24 GB: fits, or the diagnosis' minimum is verified."""
    from profiler.sources import load_profile

    prof = load_profile("sample:llama:7B", estimate_for="A100-80GB")
    cfg = TrainConfig(num_microbatches=8, optimizer="adamw", precision="fp32", time_limit_s=4)
    plan, sec = timed(lambda: solve(prof, Cluster.uniform(4, memory_bytes=24 * GiB), cfg))
    out = {"seconds": round(sec, 2), "feasible": plan.feasible}
    if plan.feasible:
        return out
    d = plan.diagnosis
    out.update(message=d.message, problems=d.problems, suggestions=d.suggestions, min_devices=d.min_devices,
               min_memory_gib=None if d.min_memory_bytes is None else d.min_memory_bytes / GiB)
    if d.min_memory_bytes is not None:
        out["fits_at_min_memory"] = solve(prof, Cluster.uniform(4, memory_bytes=d.min_memory_bytes), cfg).feasible
        out["fits_2MiB_below"] = solve(prof, Cluster.uniform(4, memory_bytes=d.min_memory_bytes - 2**21),
                                       cfg).feasible
    if d.min_devices is not None:
        n = d.min_devices
        on = [solve(prof, Cluster.uniform(k, memory_bytes=24 * GiB),
                    TrainConfig(num_microbatches=max(8, k), optimizer="adamw", precision="fp32",
                                time_limit_s=4)).feasible for k in (n - 1, n)]
        out["fits_with_min_devices"], out["fits_with_one_fewer"] = on[1], on[0]
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
        results["sample_models"] = case_sample_models()
        results["llama7b_fp32_adam_4x24GB"] = case_llama7b_memory_bound()
        results["reference_cold_ilp_chain_1000_8"] = case_cold_ilp(1000, 8, seed=0, time_limit=60)
        ref = results["reference_cold_ilp_chain_1000_8"]["seconds"]
        results["chain_1000_8"]["speedup_vs_cold_ilp"] = ref / max(results["chain_1000_8"]["seconds"], 1e-9)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    command_line(run)
