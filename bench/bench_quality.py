"""Plan quality: the optimal plan against the partitioners people use today, and against a lower bound.

    python -m bench.bench_quality [--quick]

Writes bench/results/quality.json. For every sample model at a realistic size (profiled in
estimate mode for A100-80GB, bf16 mixed precision, AdamW, recompute chosen by the solver) and
for 4 and 8 A100-80GB and a mixed 2 x A100-80GB + 2 x L4 cluster (two hosts), under 1F1B,
Interleaved1F1B (2 chunks per device) and ZBV (2 chunks, V placement): the predicted step time of pipeplan's optimal plan, of
each baseline partition (uniform layers, parameter-balanced, time-balanced; planner/solvers/baselines.py)
scored by the same cost model, the lower bound M x (total compute) / (sum of device speeds),
i.e. total compute / devices on a uniform cluster (no bubble, no communication, perfect balance),
and torch's proposed auto_partition (its published algorithm, torch_auto_partition below; it
ignores memory): its simulated step over pipeplan's and whether its plan fits. The solver's status
is "optimal" (proven under the simulator) or "feasible" with a gap that bounds the simulated step;
there is no "heuristic".

All numbers are predictions of one cost model, computed in one process: the ratios say how much
the partition matters, not how fast any GPU is.
"""

from __future__ import annotations

from bench.common import Timer, command_line, rnd, write_result
from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device, Link
from planner.contracts.config import TrainConfig
from planner.costmodel.cost import speeds
from planner.solvers.baselines import baseline_plans
from planner.solvers.solve import solve
from profiler import load_profile
from profiler.gpus import get_preset

PRESET = "A100-80GB"
# (model, realistic size, shape (seq len / image side) or None for the model's default)
MODELS = [("gpt", "1.5B", 1024), ("llama", "7B", 4096), ("vit", "B/16", 224), ("resnet", "ResNet-50", 224),
          ("unet3d", "base", 128), ("dlrm", "criteo-kaggle", None), ("mlp", "large", None)]
QUICK_MODELS = [("gpt", "124M", 1024)]
SCHEDULES = [("1F1B", 1), ("Interleaved1F1B", 2), ("ZBV", 2)]


def mixed_cluster() -> Cluster:
    """2 x A100-80GB on host 0, 2 x L4 on host 1 (inter-host link: the Cluster default, 25 GB/s)."""
    devs = [Device.from_preset("A100-80GB", name=f"a100-{i}", node=0) for i in range(2)]
    devs += [Device.from_preset("L4", name=f"l4-{i}", node=1) for i in range(2)]
    return Cluster(devices=devs, intra_node=Link(bandwidth_bytes_per_s=get_preset("L4").intra_node_bw_gbs * 1e9,
                                                 latency_s=5e-6))


def clusters(quick: bool) -> list[tuple[str, Cluster]]:
    out = [("4xA100-80GB", Cluster.uniform(4, PRESET)), ("8xA100-80GB", Cluster.uniform(8, PRESET)),
           ("2xA100-80GB+2xL4", mixed_cluster())]
    return [out[0], out[2]] if quick else out


def lower_bound_ms(profile, cluster: Cluster, M: int) -> float:
    """M x total compute (fwd + bwd at the reference device) / sum of device speeds."""
    total = sum(n.fwd_ms + n.bwd_ms for n in profile.nodes)
    return M * total / sum(speeds(cluster, profile))


def case(profile, cluster_name: str, cluster: Cluster, schedule: str, v: int, time_limit: float) -> dict:
    P = cluster.num_devices
    M = 4 * P
    cfg = TrainConfig(schedule=schedule, virtual_stages=v, num_microbatches=M, precision="bf16_mixed",
                      optimizer="adamw", recompute="auto", time_limit_s=time_limit)
    row = {"cluster": cluster_name, "devices": P, "schedule": schedule, "virtual_stages": v, "microbatches": M,
           "stages": P * v}
    lb = lower_bound_ms(profile, cluster, M)
    row["lower_bound_ms"] = rnd(lb, 6)
    with Timer() as t:
        try:
            plan = solve(profile, cluster, cfg)
        except PipeplanError as exc:
            row.update(status="not_applicable", reason=str(exc))
            return row
    row["solve_s"] = rnd(t.wall, 3)
    if not plan.feasible:
        row.update(status="infeasible", reason=plan.diagnosis.message if plan.diagnosis else "",
                   suggestions=(plan.diagnosis.suggestions if plan.diagnosis else [])[:3])
        # A baseline that fits shows the "infeasible" is the solver finding no plan in its time limit.
        try:
            bl = baseline_plans(profile, cluster, cfg)
            row["baselines_ms"] = {k: (rnd(p.step_time_ms, 6) if p.feasible else None) for k, p in bl.items()}
        except PipeplanError:
            pass
        return row
    opt = plan.step_time_ms
    row.update(status="ok", optimal_ms=rnd(opt, 6), backend=plan.solver.backend, solver_status=plan.solver.status,
               gap=rnd(plan.solver.gap), optimal_over_lower_bound=rnd(opt / lb),
               recompute_stages=sum(s.recompute for s in plan.stages),
               bubble_fraction=rnd(plan.bubble_fraction),
               baselines_ms={k: rnd(v_, 6) for k, v_ in plan.baselines.items()},
               baseline_over_optimal={k: (rnd(v_ / opt) if v_ is not None else None)
                                      for k, v_ in plan.baselines.items()})
    try:
        tp = torch_auto_partition(profile, cluster, cfg, passes=2 if time_limit < 10 else 4)
        row["torch_auto_partition"] = {"step_ms": rnd(tp.step_time_ms, 6), "fits": tp.feasible,
                                       "over_optimal": rnd(tp.step_time_ms / opt)}
    except PipeplanError as exc:
        row["torch_auto_partition"] = {"error": str(exc)}
    return row


def torch_auto_partition(profile, cluster: Cluster, cfg: TrainConfig, passes: int = 4):
    """The algorithm of torch's proposed `_partition.auto_partition` (not in torch 2.13's
    torch.distributed.pipelining; its published description): a DP that balances the stages' training
    time (the time_balanced baseline: min-max over contiguous blocks, devices taken as equal), then a
    schedule-aware refinement: move each cut one layer either way while the simulated step improves.
    Memory is ignored while it searches (scored on the cluster with unlimited memory); the returned
    plan is then scored on the real cluster, so `feasible` says whether it fits."""
    import dataclasses

    from planner.solvers.baselines import baseline_partitions
    from planner.solvers.evaluate import evaluate_partition

    S = cluster.num_devices * cfg.virtual_stages
    parts = baseline_partitions(profile, S)["time_balanced"]
    ids = [n for p in parts for n in p]
    sizes = [len(p) for p in parts]
    roomy = Cluster(devices=[dataclasses.replace(d, memory_bytes=1 << 60) for d in cluster.devices],
                    intra_node=cluster.intra_node, inter_node=cluster.inter_node)
    off = dataclasses.replace(cfg, recompute="off")

    def score(sz):
        cut = [ids[sum(sz[:k]):sum(sz[:k + 1])] for k in range(S)]
        return evaluate_partition(profile, roomy, off, cut).step_time_ms, cut

    best, cut = score(sizes)
    for _ in range(passes):
        moved = False
        for k in range(S - 1):
            for d in (-1, 1):
                sz = list(sizes)
                sz[k] += d
                sz[k + 1] -= d
                if min(sz) < 1:
                    continue
                t, c = score(sz)
                if t < best * (1 - 1e-12):
                    best, sizes, cut, moved = t, sz, c, True
        if not moved:
            break
    return evaluate_partition(profile, cluster, cfg, cut, backend="torch_auto_partition")


def profile_for(name: str, size: str, shape: int | None, min_nodes: int) -> tuple:
    """The block-level profile; an op-level one when blocks are fewer than the stages asked for."""
    spec = f"sample:{name}:{size}"
    with Timer() as t:
        prof = load_profile(spec, seq_len=shape, estimate_for=PRESET)
    gran = "block"
    if len(prof.nodes) < min_nodes:
        with Timer() as t2:
            prof = load_profile(spec, seq_len=shape, estimate_for=PRESET, granularity="op")
        t.wall += t2.wall
        gran = "op"
    return prof, gran, t.wall


def run(quick: bool) -> dict:
    models = QUICK_MODELS if quick else MODELS
    cl = clusters(quick)
    max_stages = max(c.num_devices for _, c in cl) * max(v for _, v in SCHEDULES)
    rows = []
    for name, size, shape in models:
        prof, gran, prof_s = profile_for(name, size, shape, max_stages)
        info = {"model": name, "size": size, "shape": shape, "granularity": gran, "nodes": len(prof.nodes),
                "params": prof.model.param_count, "profile_s": rnd(prof_s, 3)}
        for cname, cluster in cl:
            for schedule, v in SCHEDULES:
                rows.append({**info, **case(prof, cname, cluster, schedule, v, time_limit=4.0 if quick else 10.0)})
                r = rows[-1]
                print(f"  quality {name}:{size} {cname} {schedule}: {r['status']} "
                      f"{r.get('optimal_over_lower_bound')} {r.get('baseline_over_optimal')}", flush=True)
    ok = [r for r in rows if r["status"] == "ok"]
    summary = {"solver_status": {st: sum(1 for r in ok if r["solver_status"] == st)
                                 for st in sorted({r["solver_status"] for r in ok})}}
    tap = [r["torch_auto_partition"] for r in ok if "step_ms" in r.get("torch_auto_partition", {})]
    summary["torch_auto_partition"] = {
        "cases": len(tap), "fits": sum(t["fits"] for t in tap),
        "over_optimal_min": rnd(min(t["over_optimal"] for t in tap)) if tap else None,
        "over_optimal_max": rnd(max(t["over_optimal"] for t in tap)) if tap else None,
        "over_optimal_geomean_fitting": rnd(_geomean([t["over_optimal"] for t in tap if t["fits"]]))
        if any(t["fits"] for t in tap) else None}
    for b in ("uniform_layers", "param_balanced", "time_balanced"):
        ratios = [r["baseline_over_optimal"][b] for r in ok if r["baseline_over_optimal"].get(b) is not None]
        summary[b] = {"cases": len(ratios), "infeasible": sum(1 for r in ok if r["baseline_over_optimal"].get(b) is None),
                      "min": rnd(min(ratios)) if ratios else None, "max": rnd(max(ratios)) if ratios else None,
                      "geomean": rnd(_geomean(ratios)) if ratios else None}
    data = {"precision": "bf16_mixed", "optimizer": "adamw", "recompute": "auto", "preset": PRESET,
            "microbatches": "4 x devices", "rows": rows, "summary": summary}
    write_result("quality", data, quick)
    return data


def _geomean(xs: list[float]) -> float:
    import math
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


if __name__ == "__main__":
    command_line(run, summary_key="summary")
