"""The golden plan corpus: planner behaviour pinned before and across refactors.

Each case is a (profile, cluster, config) the planner solves, or a partition it scores. The
profiles are stored as JSON next to this file, so the corpus tests the planner alone (the profiler
can change without moving it). `python tests/golden/corpus.py --write` re-records every case;
tests/test_golden_plans.py re-solves each and compares the partition exactly and every number to
1e-9 relative.

Record only what a refactor must preserve: the partition, devices, recompute, micro-batches, step
time (simulated and closed form), memory per stage, solver status and bound, and the diagnosis of
infeasible cases. Seconds are not recorded.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path

from planner.contracts.cluster import Cluster, Device, Link
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan
from profiler.profile import Profile

HERE = Path(__file__).resolve().parent
PROFILES = HERE / "profiles"
RECORDED = HERE / "plans.json"
SAMPLES = ("gpt", "llama", "vit", "resnet", "unet3d", "dlrm", "mlp")
GiB = 1 << 30


@dataclass(frozen=True)
class Case:
    name: str
    profile: str
    """File stem under profiles/."""
    cluster: str
    """Key of CLUSTERS."""
    config: dict = field(default_factory=dict)
    """TrainConfig fields (time_limit_s defaults to 60 so every case ends proven)."""
    partition: str | None = None
    """None: solve(). A baseline name: score that baseline's partition (evaluate_partition)."""


def _a100(n: int, *, memory: int | None = None, node_of=lambda i: 0) -> list[Device]:
    return [Device.from_preset("A100-80GB", name=f"a100-{i}", node=node_of(i), memory_bytes=memory)
            for i in range(n)]


def clusters() -> dict[str, Cluster]:
    mixed = _a100(2) + [Device.from_preset("L4", name=f"l4-{i}", node=1) for i in range(2)]
    calibrated = [Device(name=f"cpu{i}", memory_bytes=8 * GiB, speed=1.0 + 0.25 * i, node=i // 2,
                         action_overhead_ms=0.6) for i in range(4)]
    slow_link = Link(bandwidth_bytes_per_s=2e9, latency_s=50e-6)
    return {
        "a100x2": Cluster(devices=_a100(2)),
        "a100x4": Cluster(devices=_a100(4)),
        "a100x4_2nodes": Cluster(devices=_a100(4, node_of=lambda i: i // 2),
                                 inter_node=Link(bandwidth_bytes_per_s=12.5e9, latency_s=10e-6)),
        "mixed": Cluster(devices=mixed, intra_node=Link(bandwidth_bytes_per_s=300e9, latency_s=5e-6),
                         inter_node=Link(bandwidth_bytes_per_s=12.5e9, latency_s=10e-6)),
        "calibrated": Cluster(devices=calibrated, intra_node=slow_link, inter_node=slow_link),
        # synthetic chains: 30 layers of 0.1-10 M params (16 B each with AdamW) and 1-50 MB activations
        "tight3": Cluster(devices=[Device(name=f"d{i}", memory_bytes=int(1.4 * GiB), speed=1.0) for i in range(3)]),
        "tight4_mixed": Cluster(devices=[Device(name=f"d{i}", memory_bytes=int((1.0 + 0.5 * (i % 2)) * GiB),
                                                speed=(1.0, 1.5, 0.75, 1.0)[i], node=i // 2) for i in range(4)]),
        "roomy4": Cluster(devices=[Device(name=f"d{i}", memory_bytes=64 * GiB, speed=1.0) for i in range(4)]),
        "tiny_mem4": Cluster(devices=[Device(name=f"d{i}", memory_bytes=64 * (1 << 20), speed=1.0) for i in range(4)]),
    }


def cases() -> list[Case]:
    out: list[Case] = []
    for m in SAMPLES:
        p = f"{m}_tiny"
        out += [
            Case(f"{m}/1F1B/a100x4", p, "a100x4", {"schedule": "1F1B", "num_microbatches": 8}),
            Case(f"{m}/GPipe/a100x2", p, "a100x2", {"schedule": "GPipe", "num_microbatches": 4}),
            Case(f"{m}/Interleaved1F1B/a100x2", p, "a100x2",
                 {"schedule": "Interleaved1F1B", "virtual_stages": 2, "num_microbatches": 4}),
            Case(f"{m}/ZBH1/a100x2", p, "a100x2", {"schedule": "ZBH1", "num_microbatches": 4}),
            Case(f"{m}/ZBV/a100x2", p, "a100x2", {"schedule": "ZBV", "num_microbatches": 4}),
            Case(f"{m}/1F1B/mixed/bf16", p, "mixed",
                 {"schedule": "1F1B", "num_microbatches": 8, "precision": "bf16_mixed"}),
            Case(f"{m}/1F1B/calibrated", p, "calibrated", {"schedule": "1F1B", "num_microbatches": 8}),
        ]
    out += [
        Case("gpt/1F1B/2nodes/sgd", "gpt_tiny", "a100x4_2nodes",
             {"schedule": "1F1B", "num_microbatches": 4, "optimizer": "sgd_momentum"}),
        Case("llama/1F1B/mixed/auto-order", "llama_tiny", "mixed",
             {"schedule": "1F1B", "num_microbatches": 8, "device_order": "auto"}),
        Case("gpt/1F1B/global-batch", "gpt_tiny", "a100x4", {"schedule": "1F1B", "num_microbatches": None,
                                                             "global_batch": 16}),
        Case("gpt/ZBV/calibrated", "gpt_tiny", "calibrated", {"schedule": "ZBV", "num_microbatches": 8}),
        Case("mlp/Interleaved1F1B/calibrated", "mlp_tiny", "calibrated",
             {"schedule": "Interleaved1F1B", "virtual_stages": 2, "num_microbatches": 8}),
    ]
    for seed in range(3):
        p = f"chain30_seed{seed}"
        for rec in ("off", "on", "auto"):
            out.append(Case(f"chain{seed}/1F1B/tight3/recompute-{rec}", p, "tight3",
                            {"schedule": "1F1B", "num_microbatches": 6, "recompute": rec}))
        out.append(Case(f"chain{seed}/1F1B/tight4_mixed/auto", p, "tight4_mixed",
                        {"schedule": "1F1B", "num_microbatches": 8, "recompute": "auto",
                         "reserve_bytes": 64 << 20}))
        out.append(Case(f"chain{seed}/Interleaved1F1B/tight4_mixed/auto", p, "tight4_mixed",
                        {"schedule": "Interleaved1F1B", "virtual_stages": 2, "num_microbatches": 8,
                         "recompute": "auto"}))
        out.append(Case(f"chain{seed}/ZBH1/roomy4/cbc", p, "roomy4",
                        {"schedule": "ZBH1", "num_microbatches": 8, "solver": "cbc"}))
    for d in ("unet_d3", "dag_skip"):
        out += [
            Case(f"{d}/1F1B/roomy4", d, "roomy4", {"schedule": "1F1B", "num_microbatches": 8}),
            Case(f"{d}/GPipe/roomy4/recompute-on", d, "roomy4",
                 {"schedule": "GPipe", "num_microbatches": 4, "recompute": "on"}),
            Case(f"{d}/Interleaved1F1B/roomy4", d, "roomy4",
                 {"schedule": "Interleaved1F1B", "virtual_stages": 2, "num_microbatches": 8}),
            Case(f"{d}/1F1B/calibrated", d, "calibrated", {"schedule": "1F1B", "num_microbatches": 4}),
        ]
    # nothing fits: the diagnosis is part of the behaviour
    out += [
        Case("chain0/1F1B/tiny_mem4/infeasible", "chain30_seed0", "tiny_mem4",
             {"schedule": "1F1B", "num_microbatches": 4, "time_limit_s": 5}),
        Case("chain1/GPipe/tiny_mem4/infeasible-recompute-auto", "chain30_seed1", "tiny_mem4",
             {"schedule": "GPipe", "num_microbatches": 4, "recompute": "auto", "time_limit_s": 5}),
        Case("dag_skip/ZBV/tiny_mem4/infeasible", "dag_skip", "tiny_mem4",
             {"schedule": "ZBV", "num_microbatches": 4, "time_limit_s": 5}),
    ]
    # baselines scored by the same cost model
    for b in ("uniform_layers", "param_balanced", "time_balanced"):
        out += [
            Case(f"gpt/1F1B/a100x4/baseline-{b}", "gpt_tiny", "a100x4",
                 {"schedule": "1F1B", "num_microbatches": 8}, partition=b),
            Case(f"chain2/ZBV/tight4_mixed/baseline-{b}", "chain30_seed2", "tight4_mixed",
                 {"schedule": "ZBV", "num_microbatches": 8, "recompute": "auto"}, partition=b),
        ]
    return out


def make_profiles() -> None:
    """Write the corpus profiles (run once; the stored JSON is the corpus from then on)."""
    from profiler.sources import load_profile
    from profiler.synthetic import dag_profile, random_chain_profile, unet_profile

    PROFILES.mkdir(parents=True, exist_ok=True)
    made: dict[str, Profile] = {f"{m}_tiny": load_profile(f"sample:{m}:tiny", estimate_for="A100-80GB")
                                for m in SAMPLES}
    made.update({f"chain30_seed{s}": random_chain_profile(30, 100 + s) for s in range(3)})
    made["unet_d3"] = unet_profile(depth=3, width=2, seed=1)
    made["dag_skip"] = dag_profile(
        [1.0, 2.0, 1.5, 0.5, 3.0, 1.0, 2.5, 0.8, 1.2, 2.0],
        [(i, i + 1, 4 << 20) for i in range(9)] + [(0, 5, 8 << 20), (2, 8, 2 << 20), (3, 9, 1 << 20)],
        params=[10**6 * (1 + i % 4) for i in range(10)], acts=[(8 + 3 * i) << 20 for i in range(10)])
    for name, prof in made.items():
        (PROFILES / f"{name}.json").write_text(prof.to_json(indent=1))


def load_profile_file(stem: str) -> Profile:
    return Profile.from_json((PROFILES / f"{stem}.json").read_text())


def run_case(case: Case, cluster_table: dict[str, Cluster] | None = None) -> Plan:
    from planner.solvers.baselines import baseline_partitions
    from planner.solvers.evaluate import evaluate_partition
    from planner.solvers.solve import solve

    prof = load_profile_file(case.profile)
    cluster = (cluster_table or clusters())[case.cluster]
    # far above what any case needs (the slowest, chain2/Interleaved1F1B/tight4_mixed, proves optimality in
    # ~47 s on 2 idle cores): a plan must not depend on how loaded the machine is (at 60 s, CI under load
    # stopped chain1's proof early, gap 1.1% instead of 0)
    config = TrainConfig(**{"time_limit_s": 600.0, **case.config})
    if case.partition is None:
        return solve(prof, cluster, config)
    parts = baseline_partitions(prof, cluster.num_devices * config.virtual_stages)[case.partition]
    return evaluate_partition(prof, cluster, config, parts, backend=case.partition)


def summary(plan: Plan) -> dict:
    """What the corpus pins of a Plan."""
    s = plan.solver
    out = {
        "feasible": plan.feasible,
        "num_microbatches": plan.config.num_microbatches,
        "micro_batch_size": plan.config.micro_batch_size,
        "step_time_ms": plan.step_time_ms,
        "bubble_fraction": plan.bubble_fraction,
        "solver": {"backend": s.backend, "status": s.status, "objective_ms": s.objective_ms,
                   "lower_bound_ms": s.lower_bound_ms, "gap": s.gap},
        "baselines": dict(sorted((plan.baselines or {}).items())),
        "stages": [{"device": st.device, "node_ids": list(st.node_ids), "recompute": st.recompute,
                    "fwd_ms": st.fwd_ms, "bwd_ms": st.bwd_ms, "bwd_weight_ms": st.bwd_weight_ms,
                    "comm_out_ms": st.comm_out_ms, "comm_grad_ms": st.comm_grad_ms,
                    "optimizer_ms": st.optimizer_ms, "in_flight": st.in_flight,
                    "memory": st.memory.to_dict()} for st in plan.stages],
    }
    if plan.diagnosis is not None:
        out["diagnosis"] = {"message": plan.diagnosis.message, "problems": list(plan.diagnosis.problems),
                            "suggestions": list(plan.diagnosis.suggestions),
                            "min_devices": plan.diagnosis.min_devices,
                            "min_memory_bytes": plan.diagnosis.min_memory_bytes}
    return out


def record() -> None:
    table = clusters()
    recorded = {}
    for case in cases():
        recorded[case.name] = summary(run_case(case, table))
        print(f"{case.name}: {recorded[case.name]['solver']['status']} "
              f"{recorded[case.name]['step_time_ms']}", flush=True)
    RECORDED.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", action="store_true", help="re-make the stored profiles first")
    parser.add_argument("--write", action="store_true", help="re-record plans.json")
    args = parser.parse_args()
    if args.profiles:
        make_profiles()
    if args.write:
        record()
