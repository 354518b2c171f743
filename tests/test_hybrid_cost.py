"""Hybrid cost terms (planner/costmodel/parallel.py, memory.py) against hand calculations (issue 15)."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device, Link
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan
from planner.costmodel import parallel as par
from planner.costmodel.memory import stage_memory_bytes
from planner.pipeline.simulator import simulate
from planner.solvers.evaluate import evaluate_partition
from planner.solvers.solve import solve
from profiler.profile import ModelInfo, Profile, ProfileEdge, ProfileNode, Provenance
from tests.hybrid_helpers import mesh_cluster, tp_gpt

GB = 1e9
LINK = Link(bandwidth_bytes_per_s=100 * GB, latency_s=5e-6)  # beta = 1e-8 ms/B, alpha = 0.005 ms


def test_rank_layout():
    # (pp_rank * dp + dp_rank) * tp + tp_rank, tp fastest
    assert par.mesh_rank(1, 1, 1, dp=2, tp=4) == (1 * 2 + 1) * 4 + 1 == 13
    assert par.mesh_coords(13, dp=2, tp=4) == (1, 1, 1)
    assert par.tp_group(1, 0, dp=2, tp=4) == [8, 9, 10, 11]
    assert par.dp_group(1, 2, dp=2, tp=4) == [10, 14]
    assert par.stage_groups(0, dp=2, tp=2) == [[0, 1], [2, 3]]
    assert par.pipeline_devices(4, dp=2, tp=2) == [0, 4, 8, 12]
    for r in range(32):
        assert par.mesh_rank(*par.mesh_coords(r, 2, 4), 2, 4) == r


def test_ring_collectives_by_hand():
    # 2 (n-1)/n * bytes * beta + 2 (n-1) alpha = 1.5 * 1e6 * 1e-8 + 6 * 0.005
    assert par.ring_allreduce_ms(1e6, 4, LINK) == pytest.approx(0.015 + 0.03)
    assert par.reduce_scatter_ms(1e6, 4, LINK) == pytest.approx(0.0075 + 0.015)
    assert par.all_gather_ms(1e6, 4, LINK) == pytest.approx(0.0075 + 0.015)
    assert par.ring_allreduce_ms(1e6, 1, LINK) == 0.0


def _node(**kw) -> ProfileNode:
    base = {"id": "b", "name": "b", "kind": "block", "module_path": "b", "fwd_flops": 100.0, "bwd_flops": 200.0, "fwd_ms": 10.0,
                "bwd_ms": 20.0, "param_count": 1000, "param_bytes": 4000, "activation_bytes": 10_000, "output_bytes": 100,
                "optimizer_ms": 1.0}
    base.update(kw)
    return ProfileNode(**base)


def _profile(*nodes) -> Profile:
    edges = [ProfileEdge(src=a.id, dst=b.id, bytes=100) for a, b in itertools.pairwise(nodes)]
    return Profile(model=ModelInfo(source="t", name="t", param_count=sum(n.param_count for n in nodes),
                                   micro_batch_size=1, seq_len=16),
                   provenance=Provenance(method="estimated", device="t"), nodes=list(nodes), edges=edges)


def test_tp_rank_share_by_hand():
    node = _node(tp_split_flops=80.0, tp_split_param_count=800, tp_split_activation_bytes=6000,
                 tp_allreduce_fwd_bytes=1_000_000, tp_allreduce_bwd_bytes=2_000_000, tp_colwise=["i"], tp_rowwise=["o"])
    prof = _profile(node, _node(id="c", module_path="c"))
    cluster = Cluster(devices=[Device(name=f"g{i}", memory_bytes=2**34, speed=1.0) for i in range(2)],
                      intra_node=LINK, inter_node=LINK)
    cfg = TrainConfig(num_microbatches=2, tensor_parallel=2)
    r = par.rank_profile(prof, cfg, cluster).nodes[0]
    f = (100 - 80 + 80 / 2) / 100  # 0.6 of the compute per rank
    ar_f = 2 * 1 / 2 * 1e6 * 1e-8 + 2 * 1 * 0.005  # one all-reduce over 2 ranks
    ar_b = 2 * 1 / 2 * 2e6 * 1e-8 + 2 * 1 * 0.005
    assert r.fwd_ms == pytest.approx(10 * f + ar_f)
    assert r.bwd_input_ms == pytest.approx(10 * f + ar_b)  # B = W = 10 (even split), the all-reduce in B
    assert r.bwd_weight_ms == pytest.approx(10 * f)
    assert r.bwd_ms == pytest.approx(20 * f + ar_b)
    assert r.param_count == 200 + 800 / 2
    assert r.param_bytes == 4 * 600
    assert r.activation_bytes == 4000 + 6000 / 2
    assert r.fwd_flops == pytest.approx(60.0)
    assert r.optimizer_ms == pytest.approx(1.0 * 600 / 1000)  # its share of the update, no DP
    assert r.tp_split_flops == 0 and r.tp_allreduce_fwd_bytes == 0  # consumed: applying twice changes nothing
    # a layer without TP facts replicates: same times and bytes
    c = par.rank_profile(prof, cfg, cluster).nodes[1]
    assert (c.fwd_ms, c.param_count, c.activation_bytes) == (10.0, 1000, 10_000)


def test_dp_sync_by_hand():
    n = 4
    cfg = {"num_microbatches": 4, "data_parallel": n, "precision": "bf16_mixed", "optimizer": "adamw"}
    params = 1e6  # bf16: 2 B grads, 2 B weights
    ddp = par.dp_sync_ms(params, TrainConfig(**cfg, dp_sharding="ddp"), LINK)
    assert ddp == pytest.approx(2 * 3 / 4 * 2e6 * 1e-8 + 2 * 3 * 0.005)
    zero1 = par.dp_sync_ms(params, TrainConfig(**cfg, dp_sharding="zero1"), LINK)
    assert zero1 == pytest.approx(3 / 4 * 2e6 * 1e-8 + 3 * 0.005 + 3 / 4 * 2e6 * 1e-8 + 3 * 0.005)
    fsdp = par.dp_sync_ms(params, TrainConfig(**cfg, dp_sharding="fsdp"), LINK)
    assert fsdp == pytest.approx(3 / 4 * 2e6 * 1e-8 + 3 * 0.005)
    assert par.fsdp_gather_ms(params, TrainConfig(**cfg, dp_sharding="fsdp"), LINK) == pytest.approx(fsdp)
    assert par.dp_sync_ms(params, TrainConfig(num_microbatches=4), LINK) == 0.0


def test_dp_link_crosses_nodes_when_replicas_do():
    cl = mesh_cluster(16, 4, intra_gbs=100, inter_gbs=10)
    within = par.check_mesh(cl, TrainConfig(num_microbatches=4, data_parallel=2, tensor_parallel=2))
    assert par.dp_link(cl, within) is cl.intra_node  # dp x tp = 4 = GPUs per node
    across = par.check_mesh(cl, TrainConfig(num_microbatches=4, data_parallel=4, tensor_parallel=2))
    assert par.dp_link(cl, across) is cl.inter_node  # dp x tp = 8 > 4


def test_memory_under_ddp_zero1_fsdp_by_hand():
    args = {"param_count": 1000, "activation_bytes": 500, "input_bytes": 0, "relay_bytes": 0, "in_flight": 2}
    base = {"num_microbatches": 4, "precision": "bf16_mixed", "optimizer": "adamw", "data_parallel": 4}  # (2, 2, 12) B
    ddp = stage_memory_bytes(**args, config=TrainConfig(**base, dp_sharding="ddp"))
    assert (ddp.params, ddp.grads, ddp.optimizer, ddp.activations) == (2000, 2000, 12000, 2 * 500 // 2)
    z1 = stage_memory_bytes(**args, config=TrainConfig(**base, dp_sharding="zero1"))
    assert (z1.params, z1.grads, z1.optimizer) == (2000, 2000, 3000)
    fs = stage_memory_bytes(**args, config=TrainConfig(**base, dp_sharding="fsdp"), largest_layer_params=300)
    assert (fs.params, fs.grads, fs.optimizer) == (500 + 300 * 2, 500, 3000)
    # one replica: no sharding, whatever the mode says
    one = stage_memory_bytes(**args, config=TrainConfig(num_microbatches=4, precision="bf16_mixed", dp_sharding="fsdp"),
                             largest_layer_params=300)
    assert (one.params, one.grads, one.optimizer) == (2000, 2000, 12000)


def test_throughput_and_mfu_by_hand():
    prof = _profile(_node(fwd_flops=1e12, bwd_flops=2e12))
    cl = Cluster(devices=[Device(name=f"g{i}", memory_bytes=2**34, tflops=100.0) for i in range(4)])
    t = par.throughput(prof, cl, global_batch=8, step_ms=500.0)
    assert t.samples_per_s == pytest.approx(16.0)
    assert t.tokens_per_s == pytest.approx(16.0 * 16)
    assert t.mfu == pytest.approx(3e12 * 8 / (0.5 * 4 * 100e12))


def test_mesh_plan_agrees_with_simulator_and_keeps_the_fingerprint():
    prof = tp_gpt(layers=8)
    cl = mesh_cluster(8, 4)
    cfg = TrainConfig(num_microbatches=8, data_parallel=2, tensor_parallel=2, dp_sharding="zero1",
                      precision="bf16_mixed")
    plan = solve(prof, cl, cfg)
    assert plan.feasible and plan.profile_fingerprint == prof.fingerprint()
    plan.validate(prof)
    assert [s.device for s in plan.stages] == [0, 4]
    assert plan.cluster.num_devices == 8 and plan.config.tensor_parallel == 2
    assert all(s.dp_sync_ms > 0 for s in plan.stages)
    tl = simulate(plan)
    assert tl.makespan_ms == pytest.approx(plan.step_time_ms)
    # the after-drain event holds the DP sync and the optimizer step of each device
    o = [e for e in tl.events if e.op == "O"]
    assert sorted(round(e.end_ms - e.start_ms, 9) for e in o) == sorted(
        round(s.optimizer_ms + s.dp_sync_ms, 9) for s in plan.stages)
    again = Plan.from_json(plan.to_json())
    assert again.stages[0].dp_sync_ms == plan.stages[0].dp_sync_ms
    assert simulate(again).makespan_ms == pytest.approx(plan.step_time_ms)
    # evaluate_partition on the same cuts scores the same plan
    ev = evaluate_partition(prof, cl, cfg, [s.node_ids for s in plan.stages],
                            recompute=[s.recompute for s in plan.stages])
    assert ev.step_time_ms == pytest.approx(plan.step_time_ms)


def test_fsdp_gather_overlaps_compute():
    node = _node(param_count=10**9, param_bytes=4 * 10**9)  # a 4 GB gather at 10 GB/s: 300 ms > 10 ms of compute
    prof = _profile(node, _node(id="c", module_path="c", param_count=10, param_bytes=40))
    cl = mesh_cluster(4, 2, intra_gbs=10, inter_gbs=10)
    cfg = TrainConfig(num_microbatches=4, data_parallel=4, dp_sharding="fsdp")
    r = par.rank_profile(prof, cfg, cl).nodes
    gather = par.all_gather_ms(10**9 * 4, 4, cl.inter_node)
    assert r[0].fwd_ms == pytest.approx(max(10.0, gather))
    assert r[0].bwd_ms == pytest.approx(max(20.0, gather))
    assert r[1].fwd_ms == pytest.approx(10.0)


def test_bad_meshes_are_one_clear_line():
    cl = mesh_cluster(8, 4)
    with pytest.raises(PipeplanError, match="multiple of dp x tp"):
        par.check_mesh(cl, TrainConfig(num_microbatches=4, data_parallel=3))
    with pytest.raises(PipeplanError, match="inside one node"):
        par.check_mesh(mesh_cluster(8, 2), TrainConfig(num_microbatches=4, tensor_parallel=4))
    mixed = Cluster(devices=[Device(name="a", memory_bytes=2**34), Device(name="b", memory_bytes=2**33)])
    with pytest.raises(PipeplanError, match="one kind"):
        par.check_mesh(mixed, TrainConfig(num_microbatches=4, data_parallel=2))


def test_pp_only_is_untouched():
    prof = tp_gpt(layers=4)
    cfg = TrainConfig(num_microbatches=4)
    assert par.rank_profile(prof, cfg, mesh_cluster(4, 4)) is prof
    assert not par.is_mesh(cfg)
    assert dataclasses.replace(cfg, data_parallel=2).data_parallel == 2
