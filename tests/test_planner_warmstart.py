"""Multi-chunk schedules always get a feasible warm start; a timed-out ILP returns it, never a
diagnosis; the diagnosis runs only when nothing fits and is time-bounded; a DP proof survives an
ILP certification run that times out."""

from __future__ import annotations

import pytest

import planner.solvers.diagnose
import planner.solvers.search
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.pipeline.simulator import simulate
from planner.solvers.evaluate import device_memory_bytes
from planner.solvers.ilp import ILPResult
from planner.solvers.solve import solve
from profiler.gpus import GiB
from profiler.synthetic import chain_profile, gpt_like_profile


def _interleaved(time_limit_s: float, **kw) -> TrainConfig:
    return TrainConfig(schedule="Interleaved1F1B", virtual_stages=2, num_microbatches=16, optimizer="adamw",
                       recompute="auto", time_limit_s=time_limit_s, **kw)


def _timeout_ilp(*args, **kwargs) -> ILPResult:
    """What HiGHS returned in the benchmark: the time limit struck before any incumbent."""
    return ILPResult(None, None, "timeout", None, None, 0.0)


def _no_diagnosis(*args, **kwargs):
    raise AssertionError("the infeasibility diagnosis ran on a problem that has a plan")


def _assert_fits(plan):
    assert plan.feasible and plan.diagnosis is None and plan.stages
    used = device_memory_bytes(plan.stages, plan.config.reserve_bytes)
    for d, u in used.items():
        assert u <= plan.cluster.devices[d].memory_bytes
    assert sorted({s.device for s in plan.stages}) == list(range(plan.cluster.num_devices))
    assert plan.step_time_ms == pytest.approx(simulate(plan).makespan_ms, rel=1e-12)


@pytest.mark.parametrize("time_limit_s", [0.01, 0.1])
def test_interleaved_with_tiny_time_limit_returns_a_plan_that_fits(time_limit_s, monkeypatch):
    monkeypatch.setattr(planner.solvers.diagnose, "diagnose", _no_diagnosis)
    prof = gpt_like_profile(layers=24, d_model=1024)
    plan = solve(prof, Cluster.uniform(4, memory_bytes=12 * GiB), _interleaved(time_limit_s))
    _assert_fits(plan)
    assert plan.solver.status in ("optimal", "feasible")
    assert plan.solver.gap is None or plan.solver.gap >= 0.0


@pytest.mark.parametrize("schedule", ["Interleaved1F1B", "ZBV"])
def test_ilp_timeout_without_incumbent_returns_the_warm_start(schedule, monkeypatch):
    """The benchmark failure, made deterministic: the ILP never finds an incumbent."""
    monkeypatch.setattr(planner.solvers.search, "solve_ilp", _timeout_ilp)
    monkeypatch.setattr(planner.solvers.diagnose, "diagnose", _no_diagnosis)
    prof = gpt_like_profile(layers=24, d_model=1024)
    cfg = dataclasses_replace(_interleaved(0.05), schedule=schedule)
    plan = solve(prof, Cluster.uniform(4, memory_bytes=12 * GiB), cfg)
    _assert_fits(plan)
    # the closed-form ILP proved nothing; the bound is the stage-bound enumeration's or the generic one,
    # and it holds for the plan's own timeline
    assert plan.solver.status in ("feasible", "optimal")
    assert plan.solver.lower_bound_ms <= plan.step_time_ms and plan.solver.gap >= 0.0


def dataclasses_replace(cfg: TrainConfig, **kw) -> TrainConfig:
    import dataclasses

    if kw.get("schedule") == "ZBV":
        kw["virtual_stages"] = 2
    return dataclasses.replace(cfg, **kw)


def test_chunk_split_dp_warm_start_fits_where_no_baseline_does(monkeypatch):
    """Activation-heavy last layers: no baseline partition fits;
    the chunk-split DP finds a split that fits, and its plan is what a timed-out ILP returns."""
    monkeypatch.setattr(planner.solvers.search, "solve_ilp", _timeout_ilp)
    monkeypatch.setattr(planner.solvers.diagnose, "diagnose", _no_diagnosis)
    prof = chain_profile([1.0] * 16, acts=[10**6] * 12 + [8 * 10**6] * 4)
    cluster = Cluster.uniform(4, memory_bytes=55 * 10**6)
    cfg = TrainConfig(schedule="Interleaved1F1B", virtual_stages=2, num_microbatches=8, recompute="off",
                      time_limit_s=0.05)
    from planner.solvers.baselines import baseline_plans

    assert not any(p.feasible for p in baseline_plans(prof, cluster, cfg).values())
    plan = solve(prof, cluster, cfg)
    _assert_fits(plan)
    assert plan.solver.status in ("feasible", "optimal")
    assert plan.solver.backend == "highs"  # not a baseline's partition: none of them fits


def test_genuinely_infeasible_interleaved_case_is_diagnosed():
    prof = chain_profile([1.0] * 8, params=[10**6] * 8)  # 8M params x 16 B (AdamW, fp32) = 128 MB
    cluster = Cluster.uniform(2, memory_bytes=32 * 10**6)
    cfg = TrainConfig(schedule="Interleaved1F1B", virtual_stages=2, num_microbatches=4, optimizer="adamw",
                      precision="fp32", time_limit_s=1)
    plan = solve(prof, cluster, cfg)
    assert not plan.feasible and plan.stages == []
    assert plan.solver.status == "infeasible"
    d = plan.diagnosis
    assert d is not None and d.message.startswith("no partition fits in memory")
    assert "cut short" not in d.message
    assert d.min_memory_bytes is not None and d.min_memory_bytes >= 16 * 8 * 10**6 // 2
    assert solve(prof, Cluster.uniform(2, memory_bytes=d.min_memory_bytes), cfg).feasible


def test_diagnosis_is_time_bounded_and_says_so(monkeypatch):
    monkeypatch.setattr(planner.solvers.diagnose, "MIN_DIAGNOSIS_SECONDS", 0.0)
    monkeypatch.setattr(planner.solvers.diagnose, "DIAGNOSIS_TIME_FACTOR", 0.0)
    prof = chain_profile([1.0] * 8, params=[10**6] * 8)
    cfg = TrainConfig(num_microbatches=4, optimizer="adamw", precision="fp32", time_limit_s=1)
    plan = solve(prof, Cluster.uniform(2, memory_bytes=32 * 10**6), cfg)
    assert not plan.feasible
    d = plan.diagnosis
    assert "cut short" in d.message and "not searched" in d.message
    assert d.min_memory_bytes is None and d.min_devices is None and d.suggestions == []


def test_dp_proof_survives_an_ilp_certification_timeout(monkeypatch):
    """A chain with one stage per device: the DP proves its optimum; --solver highs then runs the
    ILP, which times out without an incumbent. The plan stays "optimal" with gap 0."""
    calls = []

    def timeout(*args, **kwargs):
        calls.append(kwargs)
        return _timeout_ilp()

    monkeypatch.setattr(planner.solvers.search, "solve_ilp", timeout)
    prof = chain_profile([1.0, 2.0, 1.5, 0.5, 3.0, 1.0, 2.5, 1.0], params=[1000] * 8)
    plan = solve(prof, Cluster.uniform(4, memory_bytes=GiB), TrainConfig(num_microbatches=8, solver="highs"))
    assert calls and calls[0]["warm_stage_of"] is not None  # the ILP did run, warm-started
    assert plan.feasible and plan.solver.backend in ("highs", "uniform_layers", "param_balanced", "time_balanced")
    if plan.solver.backend == "highs":
        assert plan.solver.status == "optimal" and plan.solver.gap == 0.0
        assert plan.solver.lower_bound_ms == pytest.approx(plan.solver.objective_ms, rel=1e-12)
    auto = solve(prof, Cluster.uniform(4, memory_bytes=GiB), TrainConfig(num_microbatches=8))
    assert auto.solver.status == "optimal"
    assert plan.solver.objective_ms == pytest.approx(auto.solver.objective_ms, rel=1e-12)


def test_ilp_timeout_on_a_dag_is_feasible_not_optimal(monkeypatch):
    """Without a proof (no exact finish, the closed-form ILP timed out) a DAG's plan is not optimal; its
    gap is the generic bound's (planner.solvers.exact.generic_lower_bound), which holds for its timeline."""
    from profiler.synthetic import unet_profile

    monkeypatch.setattr(planner.solvers.search, "solve_ilp", _timeout_ilp)
    monkeypatch.setattr(planner.solvers.search, "enumerate_by_bound",
                        lambda *a, **k: (None, float("-inf"), False))
    plan = solve(unet_profile(depth=3, width=2), Cluster.uniform(2, memory_bytes=GiB),
                 TrainConfig(num_microbatches=4, solver="highs"))
    assert plan.feasible and plan.solver.status == "feasible" and plan.solver.gap > 0
    assert plan.solver.lower_bound_ms < plan.step_time_ms
