"""The parallelism search (planner/solvers/hybrid.py) and its CLI (issue 15)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan
from planner.pipeline.simulator import simulate
from planner.solvers.hybrid import ParallelSearch, enumerate_configs, search_parallel
from planner.solvers.search import solve_once
from planner.solvers.solve import solve, solve_mesh
from tests.hybrid_helpers import mesh_cluster, tp_gpt

ROOT = Path(__file__).resolve().parent.parent
BASE = TrainConfig(num_microbatches=1, precision="bf16_mixed", recompute="auto")


def brute_force(profile, cluster, global_batch, base):
    """Every valid configuration solved by solve() (no pruning, no bounds): the fastest step."""
    best = None
    for cfg in enumerate_configs(profile, cluster, global_batch, base):
        if cfg.data_parallel * cfg.tensor_parallel > 1:
            plan = solve_mesh(profile, cluster, cfg, baselines=False, diagnose_infeasible=False)
        else:
            plan = solve_once(profile, cluster, cfg)  # solve() without its baselines and diagnosis
        if plan is not None and plan.feasible and (best is None or plan.step_time_ms < best[0]):
            best = (plan.step_time_ms, cfg)
    return best


@pytest.mark.parametrize("layers, devices, per_node, batch, memory_gib", [
    (6, 8, 4, 16, 16.0),
    (8, 8, 8, 32, 0.08),   # tight memory: TP / sharding / recompute decide what fits
    (4, 4, 2, 8, 16.0),
])
def test_top1_equals_brute_force(layers, devices, per_node, batch, memory_gib):
    prof = tp_gpt(layers=layers, d_model=512, seq_len=256)
    cl = mesh_cluster(devices, per_node, memory_gib=memory_gib)
    res = search_parallel(prof, cl, batch, base=BASE, top_k=3)
    brute = brute_force(prof, cl, batch, BASE)
    assert brute is not None and res.ranked
    assert res.ranked[0].step_time_ms == pytest.approx(brute[0], rel=1e-9)
    full = search_parallel(prof, cl, batch, base=BASE, top_k=1000, prune=False)
    assert all(c.lower_bound_ms <= c.step_time_ms * (1 + 1e-9) for c in full.ranked)  # the bounds hold
    full.ranked = full.ranked[:3]
    assert [c.step_time_ms for c in full.ranked] == pytest.approx([c.step_time_ms for c in res.ranked])
    assert full.solved >= res.solved and full.pruned == 0
    # the best plan is a whole-mesh plan that simulates to its step and keeps the user's fingerprint
    best = res.best_plan
    assert best.profile_fingerprint == prof.fingerprint() and best.cluster.num_devices == devices
    assert simulate(best).makespan_ms == pytest.approx(res.ranked[0].step_time_ms)
    assert best.config.global_batch * best.config.data_parallel == batch


def test_pp_only_candidate_is_todays_plan():
    prof = tp_gpt(layers=6)
    cl = mesh_cluster(4, 4)
    res = search_parallel(prof, cl, 8, base=BASE, tp=1, dp=1, micro_batch_sizes=[1])
    cfg = TrainConfig(num_microbatches=8, precision="bf16_mixed", recompute="auto")
    today = solve(prof, cl, cfg)
    assert res.best_plan.step_time_ms == pytest.approx(today.step_time_ms)
    assert [s.node_ids for s in res.best_plan.stages] == [s.node_ids for s in today.stages]


def test_json_round_trip_and_ranking():
    prof = tp_gpt(layers=6)
    res = search_parallel(prof, mesh_cluster(8, 4), 16, base=BASE, top_k=4)
    again = ParallelSearch.from_json(res.to_json())
    assert again.ranked == res.ranked
    assert again.best_plan.to_dict() == res.best_plan.to_dict()
    steps = [c.step_time_ms for c in res.ranked]
    assert steps == sorted(steps)
    for c in res.ranked:
        assert c.pp * c.dp * c.tp == 8 and c.dp * c.micro_batch_size * c.num_microbatches == 16
        assert c.samples_per_s == pytest.approx(16 / (c.step_time_ms / 1000))
        assert c.lower_bound_ms <= c.step_time_ms * (1 + 1e-9)


def test_mixed_devices_refuse_tp_and_plan_pp_only():
    cl = Cluster(devices=[Device(name="a", memory_bytes=2**34, speed=1.0),
                          Device(name="b", memory_bytes=2**33, speed=1.0)])
    prof = tp_gpt(layers=4)
    with pytest.raises(PipeplanError, match="one kind"):
        search_parallel(prof, cl, 4, base=BASE, tp=2)
    res = search_parallel(prof, cl, 4, base=BASE)
    assert {(c.dp, c.tp) for c in res.ranked} == {(1, 1)}


def test_nothing_fits_says_what_would():
    prof = tp_gpt(layers=4, d_model=1024, seq_len=256)
    cl = mesh_cluster(2, 2, memory_gib=0.25)
    res = search_parallel(prof, cl, 4, base=TrainConfig(num_microbatches=1, precision="bf16_mixed"), top_k=2)
    assert not res.ranked and res.best_plan is None
    assert res.diagnosis is not None and res.diagnosis.problems
    assert any("GPUs" in s or "recomputation" in s for s in res.diagnosis.suggestions), res.diagnosis


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cli", "plan", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hy") / "gpt.json"
    path.write_text(tp_gpt(layers=6, d_model=512, seq_len=256).to_json())
    return path


def test_cli_auto_table_and_plan_file(profile_file, tmp_path):
    out = tmp_path / "plan.json"
    p = run_cli(f"profile:{profile_file}", "--devices", "8", "--gpus-per-node", "4", "--memory", "16GB",
                "--global-batch", "16", "--parallel", "auto", "--precision", "bf16", "-o", str(out))
    assert p.returncode == 0, p.stderr
    assert "step ms" in p.stdout and "best plan:" in p.stdout
    plan = Plan.from_json(out.read_text())
    assert plan.cluster.num_devices == 8
    assert plan.config.data_parallel * plan.config.tensor_parallel * len({s.device for s in plan.stages}) == 8
    sim = subprocess.run([sys.executable, "-m", "cli", "simulate", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=False)
    assert sim.returncode == 0, sim.stderr


def test_cli_fixed_degrees_and_json(profile_file):
    p = run_cli(f"profile:{profile_file}", "--devices", "8", "--gpus-per-node", "4", "--memory", "16GB",
                "--global-batch", "16", "--tp", "2", "--dp", "2", "--dp-sharding", "fsdp", "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["ranked"] and all((c["tp"], c["dp"], c["pp"], c["dp_sharding"]) == (2, 2, 2, "fsdp") for c in d["ranked"])
    cfg = d["best_plan"]["config"]
    assert (cfg["tensor_parallel"], cfg["data_parallel"], cfg["dp_sharding"]) == (2, 2, "fsdp")


@pytest.mark.parametrize("args, message", [
    (["--tp", "3"], "does not divide 4 GPUs per node"),
    (["--dp", "3"], "not a multiple of --dp 3"),
    (["--parallel", "pp", "--tp", "2"], "pipeline parallelism only"),
    (["--tp", "0"], "--tp must be >= 1"),
])
def test_cli_bad_combinations_are_one_line(profile_file, args, message):
    p = run_cli(f"profile:{profile_file}", "--devices", "8", "--gpus-per-node", "4", "--memory", "16GB",
                "--global-batch", "16", *args)
    assert p.returncode == 2
    assert message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "Traceback" not in p.stderr


def test_mixed_cluster_bounds_stay_bounds():
    """PP-only on unequal devices: the search's bounds use the most favourable device, so its top-1 equals the
    brute force (a bound from device 0 alone would prune the plan that puts the big stage on the fast one)."""
    cl = Cluster(devices=[Device(name="slow", memory_bytes=2**34, speed=1.0),
                          Device(name="fast", memory_bytes=2**35, speed=3.0)])
    prof = tp_gpt(layers=6)
    base = TrainConfig(num_microbatches=1, precision="bf16_mixed", device_order="auto")
    res = search_parallel(prof, cl, 8, base=base, top_k=1)
    brute = brute_force(prof, cl, 8, base)
    assert res.ranked[0].step_time_ms == pytest.approx(brute[0], rel=1e-9)
    full = search_parallel(prof, cl, 8, base=base, top_k=100, prune=False)
    assert all(c.lower_bound_ms <= c.step_time_ms * (1 + 1e-9) for c in full.ranked)


def test_schedules_and_chunks_are_a_dimension():
    prof = tp_gpt(layers=8)
    cl = mesh_cluster(4, 4)
    res = search_parallel(prof, cl, 16, base=BASE, top_k=50, prune=False,
                          schedules=[("1F1B", 1), ("Interleaved1F1B", 2)], micro_batch_sizes=[2], tp=1, dp_sharding="ddp")
    kinds = {(c.schedule, c.virtual_stages) for c in res.ranked}
    assert kinds == {("1F1B", 1), ("Interleaved1F1B", 2)}
    assert all(c.lower_bound_ms <= c.step_time_ms * (1 + 1e-9) for c in res.ranked)
