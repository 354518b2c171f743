"""planner/solvers/diagnose.py: dead ends get a way out (issue 17, item 6)."""

from __future__ import annotations

from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.solvers.solve import solve
from profiler.synthetic import chain_profile

GiB = 1 << 30


def test_more_devices_with_recompute_and_micro_batches_of_1_when_more_devices_alone_do_not_fit():
    # 16 layers of 64 MiB activations per sample; a 1 GiB device holds 4 layers' weights but, at
    # micro-batches of 2 without recompute, not even 1 stage's activations for its in-flight micro-batches
    prof = chain_profile([1.0] * 16, params=[2 * 10**6] * 16, acts=[128 << 20] * 16, edge_bytes=[1 << 20] * 15)
    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=GiB, speed=1.0) for i in range(2)])
    plan = solve(prof, cluster, TrainConfig(num_microbatches=8, time_limit_s=2))
    assert not plan.feasible
    combined = [s for s in plan.diagnosis.suggestions if "with activation recomputation on" in s]
    assert combined and "micro-batches of 1" in combined[0] and "fits, predicted step" in combined[0], \
        plan.diagnosis.suggestions
    n = int(combined[0].split()[1])
    assert 2 < n <= 16
    # the count is the least: one device fewer does not fit with the same savings
    fewer = Cluster(devices=[Device(name=f"d{i}", memory_bytes=GiB, speed=1.0) for i in range(n - 1)])
    cfg = TrainConfig(num_microbatches=max(8, n - 1), recompute="on", time_limit_s=2)
    assert not solve(prof, fewer, cfg).feasible


def test_says_plainly_when_pipeline_parallelism_alone_cannot_fit():
    # one layer's weights + grads + Adam state: 10^8 x 16 B = 1.5 GiB > 1 GiB devices, however it is cut
    prof = chain_profile([1.0] * 4, params=[10**6, 10**8, 10**6, 10**6])
    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=GiB, speed=1.0) for i in range(2)])
    plan = solve(prof, cluster, TrainConfig(num_microbatches=4, time_limit_s=2))
    assert not plan.feasible
    message = plan.diagnosis.message
    assert "Pipeline parallelism alone cannot fit this model" in message and "layer 'n1'" in message
    assert "ZeRO/FSDP" in message and "tensor parallelism" in message
