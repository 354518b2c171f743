"""The planner on every real sample model (profiled by the profiler, times estimated for A100-80GB):
the optimum is never slower than a baseline, on 2, 4 and 8 uniform devices and on a mixed cluster.
Ratios for realistic sizes are in bench/bench_planner.py (`sample_models` case)."""

from __future__ import annotations

import functools

import pytest

import sample_models
from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device, Link
from planner.contracts.config import TrainConfig
from planner.pipeline.simulator import simulate
from planner.solvers.baselines import baseline_plans
from planner.solvers.solve import solve
from profiler.profile import Profile
from profiler.sources import load_profile

MODELS = sorted(sample_models.REGISTRY)


@functools.cache
def tiny(name: str) -> Profile:
    return load_profile(f"sample:{name}:tiny", estimate_for="A100-80GB")


def mixed_cluster() -> Cluster:
    """2 x A100-80GB on one host, 2 x L4 on another: the issue's main mixed case."""
    devices = [Device.from_preset("A100-80GB", name=f"a100-{i}", node=0) for i in range(2)]
    devices += [Device.from_preset("L4", name=f"l4-{i}", node=1) for i in range(2)]
    return Cluster(devices=devices, intra_node=Link(bandwidth_bytes_per_s=300e9, latency_s=5e-6),
                   inter_node=Link(bandwidth_bytes_per_s=12.5e9, latency_s=10e-6))


def check_optimal_vs_baselines(prof: Profile, cluster: Cluster, config: TrainConfig) -> float:
    plan = solve(prof, cluster, config)
    assert plan.feasible, plan.diagnosis
    assert plan.solver.lower_bound_ms is not None and plan.solver.gap is not None
    assert plan.step_time_ms == simulate(plan).makespan_ms
    baselines = baseline_plans(prof, cluster, plan.config)
    assert set(plan.baselines) == set(baselines)
    for name, bp in baselines.items():
        if not bp.feasible:
            assert plan.baselines[name] is None
            continue
        # the bound holds for every plan's timeline, and the returned plan's timeline beats every baseline
        assert plan.solver.lower_bound_ms <= bp.step_time_ms * (1 + 1e-9), name
        assert plan.step_time_ms <= bp.step_time_ms * (1 + 1e-9), name
    assert plan.solver.status in ("optimal", "feasible")
    assert plan.solver.objective_ms == plan.step_time_ms
    assert plan.solver.lower_bound_ms <= plan.step_time_ms * (1 + 1e-9)
    if plan.solver.status == "optimal":
        assert plan.solver.gap == 0.0
    fitting = [t for t in plan.baselines.values() if t is not None]
    return min(fitting) / plan.step_time_ms


@pytest.mark.parametrize("name", MODELS)
def test_sample_model_optimum_beats_baselines(name):
    prof = tiny(name)
    for P in (2, 4, 8):
        cluster = Cluster.uniform(P, "A100-80GB")
        config = TrainConfig(num_microbatches=2 * P, time_limit_s=5)
        if len(prof.nodes) < P:
            # more devices than layers: one clear error, saying how many devices would work
            with pytest.raises(PipeplanError, match=f"has {len(prof.nodes)} layers.*at most {len(prof.nodes)} devices"):
                solve(prof, cluster, config)
            continue
        assert check_optimal_vs_baselines(prof, cluster, config) >= 1.0 - 1e-9
    mixed = TrainConfig(num_microbatches=8, device_order="auto", time_limit_s=5)
    assert check_optimal_vs_baselines(prof, mixed_cluster(), mixed) >= 1.0 - 1e-9
