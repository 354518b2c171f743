"""Solver speed and optimality: solve time against graph size and stage count, per backend.

    python -m bench.bench_solver [--quick]

Writes bench/results/solver.json. Random chains (planner's synthetic profiles: layer times
0.2-3 ms, 0.1-10 M parameters, 1-50 MB saved activations, memory limit 1.5x an even share, so
memory binds on some stages), 1F1B, M = 2 x stages, fp32 AdamW:
- graph-size sweep: N = 100 .. 5000 nodes at S = 8 stages;
- stage sweep: S = 2 .. 64 stages at N = 500 nodes.
Backends, each on the same instance in the same process:
- dp: `solve(..., solver="dp")`, the exact chain DP pipeplan uses by default on chains;
- highs, cbc: `solve(..., solver=backend)`, the product path: the ILP warm-started with the DP's
  plan and bounded by it (stage windows, objective cutoff), one thread; it either proves the
  warm start optimal or improves on it;
- highs_cold, cbc_cold: the ILP alone (no warm start, no bounds), one thread, with a time limit.
solve() ranks by the simulated step and proves its bound under the simulator (docs/ilp.md, "What is
proven"): status "optimal" or "feasible" with a gap that bounds the simulated step (no "heuristic").
Proven gap = (objective - best bound) / objective, objective = the simulated step.
`plan_over_dp` is the step time of the backend's partition, re-scored by the
cost model, over the DP optimum: 1.0 = the optimum, > 1 = stopped short.
Cold ILPs whose binary count (N x (S-1)) exceeds MAX_COLD_BINARIES, and CBC runs above
MAX_CBC_BINARIES, are skipped (recorded):
beyond that they find no incumbent within the time limit on this machine (PuLP's model
building alone takes tens of seconds), and pipeplan never solves them cold.
"""

from __future__ import annotations

from bench.common import Timer, command_line, rnd, write_result
from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.costmodel.cost import build_tables, stage_devices
from planner.solvers.evaluate import evaluate_partition
from planner.solvers.ilp import solve_ilp
from planner.solvers.search import ilp_problem
from planner.solvers.solve import solve
from profiler.synthetic import random_chain_profile

MAX_COLD_BINARIES = 8_000
MAX_CBC_BINARIES = 4_000
"""CBC (warm and cold) runs only up to here: beyond it PuLP's CBC path alone takes minutes on this machine."""


def instance(n: int, S: int, seed: int):
    prof = random_chain_profile(n, seed)
    need = sum(x.param_count for x in prof.nodes) * 16 + sum(x.activation_bytes for x in prof.nodes) * (S + 1) / 2
    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=int(need / S * 1.5), node=i // 8) for i in range(S)])
    return prof, cluster


def one_case(n: int, S: int, seed: int, ilp_limit: float, dp_limit: float) -> dict:
    prof, cluster = instance(n, S, seed)
    M = 2 * S
    row = {"nodes": n, "stages": S, "microbatches": M, "seed": seed}
    dp_opt = None
    for backend in ("dp", "highs", "cbc"):
        if backend == "cbc" and n * (S - 1) > MAX_CBC_BINARIES:
            row[backend] = {"status": "skipped", "reason": f"{n * (S - 1)} binaries > {MAX_CBC_BINARIES} (CBC)"}
            continue
        cfg = TrainConfig(num_microbatches=M, solver=backend, time_limit_s=dp_limit if backend == "dp" else ilp_limit)
        with Timer() as t:
            plan = solve(prof, cluster, cfg)
        step = plan.step_time_ms if plan.feasible else None
        if backend == "dp":
            dp_opt = step
        row[backend] = {"seconds": rnd(t.wall, 3), "cpu_s": rnd(t.cpu, 3),
                        "status": plan.solver.status if plan.feasible else "infeasible",
                        "returned": plan.solver.backend if plan.feasible else None,
                        "gap": rnd(plan.solver.gap) if plan.feasible else None, "objective_ms": rnd(step, 8),
                        "plan_over_dp": rnd(step / dp_opt, 8) if step and dp_opt else None}
    tables = build_tables(prof)
    cfg = TrainConfig(num_microbatches=M)
    for backend in ("highs", "cbc"):
        key = f"{backend}_cold"
        binaries = n * (S - 1)
        limit = MAX_CBC_BINARIES if backend == "cbc" else MAX_COLD_BINARIES
        if binaries > limit:
            row[key] = {"status": "skipped", "reason": f"{binaries} binaries > {limit}"}
            continue
        prob = ilp_problem(prof, tables, cluster, cfg, stage_devices(S, cfg))
        with Timer() as t:
            res = solve_ilp(prob, backend=backend, time_limit_s=ilp_limit)
        gap, step = None, None
        if res.objective is not None and res.bound is not None and res.objective > 0:
            gap = max(0.0, (res.objective - res.bound) / res.objective)
        if res.stage_of is not None:
            parts = [[] for _ in range(S)]
            for k, s_ in enumerate(res.stage_of):
                parts[s_].append(tables.ids[k])
            p = evaluate_partition(prof, cluster, cfg, parts, recompute=res.recompute)
            step = p.step_time_ms
        row[key] = {"seconds": rnd(t.wall, 3), "cpu_s": rnd(t.cpu, 3), "status": res.status,
                    "time_limit_s": ilp_limit, "objective_ms": rnd(step, 8), "gap": rnd(gap),
                    "plan_over_dp": rnd(step / dp_opt, 8) if step and dp_opt else None}
    return row


BACKENDS = ("dp", "highs", "cbc", "highs_cold", "cbc_cold")


def _line(r: dict) -> str:
    return ", ".join(f"{b}={r[b].get('seconds')}s {r[b].get('status')}" for b in BACKENDS)


def run(quick: bool) -> dict:
    if quick:
        size_sweep, stage_sweep, base_n, base_s = [100, 200], [2, 4], 100, 4
        ilp_limit, dp_limit = 2.0, 10.0
    else:
        size_sweep, stage_sweep, base_n, base_s = [100, 500, 1000, 2000, 5000], [2, 4, 8, 16, 32, 64], 500, 8
        ilp_limit, dp_limit = 10.0, 30.0
    by_size, by_stages = [], []
    for n in size_sweep:
        by_size.append(one_case(n, base_s, seed=n, ilp_limit=ilp_limit, dp_limit=dp_limit))
        print(f"  solver N={n} S={base_s}: {_line(by_size[-1])}", flush=True)
    for S in stage_sweep:
        by_stages.append(one_case(base_n, S, seed=S, ilp_limit=ilp_limit, dp_limit=dp_limit))
        print(f"  solver N={base_n} S={S}: {_line(by_stages[-1])}", flush=True)
    data = {"instances": "random chains (profiler.synthetic.random_chain_profile), 1F1B, M = 2 x stages, fp32 AdamW, "
                         "memory limit 1.5 x even share",
            "ilp_time_limit_s": ilp_limit, "dp_time_limit_s": dp_limit, "max_cold_binaries": MAX_COLD_BINARIES, "max_cbc_binaries": MAX_CBC_BINARIES,
            "size_sweep": {"stages": base_s, "rows": by_size},
            "stage_sweep": {"nodes": base_n, "rows": by_stages}}
    write_result("solver", data, quick)
    return data


if __name__ == "__main__":
    command_line(run)
