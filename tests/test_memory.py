"""planner/costmodel/memory.py against hand calculations: bytes per parameter, activations per schedule, the reserve."""

from __future__ import annotations

import pytest

from planner.contracts.config import TrainConfig
from planner.costmodel.memory import (
    StageMemory,
    activation_scale,
    bytes_per_param,
    device_memory,
    even_chunk_limit_bytes,
    memory_coefficients,
    stage_memory_bytes,
    stage_output_bytes,
    stages_budget_bytes,
)


def test_bytes_per_param_zero_accounting():
    assert bytes_per_param("fp32", "adamw") == (4, 4, 8)
    assert sum(bytes_per_param("bf16_mixed", "adamw")) == 16  # ZeRO paper, sec. 3.1: 2 + 2 + 12
    assert activation_scale("float32", "bf16_mixed") == 0.5


def test_stage_memory_by_hand():
    cfg = TrainConfig(reserve_bytes=1000)
    # 10 params x 16 B, 100 B of saved activations x 3 in flight, 7 B relayed x 3, reserve once
    m = stage_memory_bytes(param_count=10, activation_bytes=100, input_bytes=40, relay_bytes=7, in_flight=3,
                           config=cfg)
    assert (m.params, m.grads, m.optimizer, m.activations, m.relay, m.reserve) == (40, 40, 80, 300, 21, 1000)
    # recompute keeps the inputs of the 3 in-flight micro-batches and rebuilds one micro-batch at a time
    r = stage_memory_bytes(param_count=10, activation_bytes=100, input_bytes=40, relay_bytes=7, in_flight=3,
                           config=cfg, recompute=True)
    assert r.activations == 100 + 3 * 40 and r.total == 160 + 220 + 21 + 1000


@pytest.mark.parametrize("recompute", [False, True])
def test_coefficients_reproduce_stage_memory(recompute):
    cfg = TrainConfig(precision="bf16_mixed", reserve_bytes=64)
    args = {"param_count": 1234, "activation_bytes": 5e6, "input_bytes": 3e5, "relay_bytes": 2e4, "in_flight": 4}
    m = stage_memory_bytes(**args, config=cfg, recompute=recompute)
    c = memory_coefficients(in_flight=4, config=cfg, recompute=recompute)
    linear = (c.per_param * 1234 + c.per_activation_byte * 5e6 + c.per_input_byte * 3e5
              + c.per_relay_byte * 2e4 + c.constant)
    assert m.total == pytest.approx(linear, abs=1.0)


def test_reserve_is_held_once_per_device():
    a = StageMemory(params=10, activations=5, reserve=100)
    b = StageMemory(params=20, relay=3, reserve=100)
    both = device_memory([a, b])
    assert both.total == 10 + 5 + 20 + 3 + 100
    assert stages_budget_bytes(1000, 100) == 900
    # two chunks share 900: 450 each, and every stage's own total counts the reserve
    assert even_chunk_limit_bytes(1000, 100, 2) == 550.0


@pytest.mark.parametrize("recompute", [False, True])
def test_total_bytes_is_stage_memory_bytes_exactly(recompute):
    """The solvers' memory (MemoryCoefficients.total_bytes) rounds as stage_memory_bytes does."""
    cfg = TrainConfig(precision="bf16_mixed", reserve_bytes=64)
    for acts, inputs, relay in ((5e6 + 0.5, 3e5, 2e4 + 0.25), (1.0, 0.5, 0.5), (0.0, 0.0, 0.0)):
        m = stage_memory_bytes(param_count=1234, activation_bytes=acts, input_bytes=inputs, relay_bytes=relay,
                               in_flight=3, config=cfg, recompute=recompute)
        c = memory_coefficients(in_flight=3, config=cfg, recompute=recompute)
        assert c.total_bytes(1234, acts, inputs, relay) == m.total


def test_stage_outputs_are_held_until_their_backward_by_hand():
    """torch's PipelineStage keeps each micro-batch's outputs (fwd_cache) until its backward: a stage
    holds output_bytes x in flight on top of its saved activations, with or without recompute."""
    cfg = TrainConfig()
    m = stage_memory_bytes(param_count=0, activation_bytes=100, input_bytes=40, relay_bytes=7, in_flight=3,
                           config=cfg, output_bytes=25)
    assert (m.activations, m.relay) == (3 * 100 + 3 * 25, 3 * 7)
    r = stage_memory_bytes(param_count=0, activation_bytes=100, input_bytes=40, relay_bytes=7, in_flight=3,
                           config=cfg, output_bytes=25, recompute=True)
    assert r.activations == 100 + 3 * 40 + 3 * 25
    c = memory_coefficients(in_flight=3, config=cfg)
    assert c.total_bytes(0, 100, 40, 7, 25) == m.total
    # the out boundary less what the stage only relays (relayed tensors count once, as relay)
    assert stage_output_bytes(1000, 300) == 700 and stage_output_bytes(0, 0) == 0


def test_plan_memory_counts_the_sent_outputs_by_hand():
    """A 4-node chain cut 2|2 on 2 devices, 1F1B, M=4 (in flight [2, 1]): 100 B saved per node, 64 B edges.
    Stage 0 = 2 x (100 + 100) + 2 x 64 (its output to stage 1); the last stage sends nothing: 1 x 200."""
    from planner.contracts.cluster import Cluster, Device
    from planner.solvers.evaluate import evaluate_partition
    from profiler.synthetic import chain_profile

    prof = chain_profile([1, 1, 1, 1], acts=[100] * 4, edge_bytes=[64] * 3)
    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=1 << 30, speed=1.0) for i in range(2)])
    plan = evaluate_partition(prof, cluster, TrainConfig(schedule="1F1B", num_microbatches=4),
                              [["n0", "n1"], ["n2", "n3"]])
    assert [st.memory.activations for st in plan.stages] == [2 * 200 + 2 * 64, 200]


def test_saved_tensor_facts_by_hand():
    """n0 -> n1 -> n2 -> n3 (100 B saved per node, 64 B edges), cut 2|2, 1F1B M=4 (in flight [2, 1]).
    n1 saves its output (a ReLU: its 100 B hold it) and n2 saves its input: stage 0 keeps nothing more for
    the output it sends, stage 1 saves its own received copy: 2 x 200 and 1 x (200 + 64). A DAG: n0's
    output read by n1 and n3, saved by both readers (n1 first): cut 1|3 stage 1 holds n1 and n3 (one
    charge, no copy); cut 2|2 stage 1 holds n3's copy."""
    from planner.contracts.cluster import Cluster, Device
    from planner.costmodel.cost import assignment_bytes, build_tables
    from planner.solvers.evaluate import evaluate_partition
    from profiler.synthetic import chain_profile, dag_profile

    cluster = Cluster(devices=[Device(name=f"d{i}", memory_bytes=1 << 30, speed=1.0) for i in range(2)])
    config = TrainConfig(schedule="1F1B", num_microbatches=4)
    prof = chain_profile([1, 1, 1, 1], acts=[100] * 4, edge_bytes=[64] * 3)
    prof.edges[1].saved_by_src = prof.edges[1].saved_by_dst = True
    plan = evaluate_partition(prof, cluster, config, [["n0", "n1"], ["n2", "n3"]])
    assert [st.memory.activations for st in plan.stages] == [2 * 200, 200 + 64]

    dag = dag_profile([1, 1, 1, 1], [(0, 1, 64), (0, 3, 64), (1, 2, 32), (2, 3, 32)], acts=[100] * 4)
    for e in dag.edges:
        e.saved_by_dst = e.src == "n0"
    tables = build_tables(dag)
    (shared,) = [t for t in tables.tensors if t.producer == 0]
    assert (shared.first_saver, shared.copy_savers) == (1, [3])
    assert assignment_bytes(tables, [0, 1, 1, 1], 2).saved_copy_bytes == [0, 0]
    assert assignment_bytes(tables, [0, 0, 1, 1], 2).saved_copy_bytes == [0, 64]
    assert assignment_bytes(tables, [0, 0, 1, 1], 2).held_output_bytes == [64 + 32, 0]
