"""Hand-built plans for the exporter tests (node ids = module paths), so they do not
depend on the solver; test_export_flow.py also covers profile -> solve -> export."""

from __future__ import annotations

from planner.cluster import Cluster
from planner.config import TrainConfig
from planner.memory import StageMemory
from planner.plan import Plan, StagePlan
from profiler.profile import ModelInfo

GIB = 1 << 30


def hand_plan(source: str, stages: list[list[str]], *, schedule: str = "1F1B", num_microbatches: int = 4,
              micro_batch_size: int = 2, data_parallel: int = 1, seq_len: int | None = None,
              image_size: int | None = None, virtual_stages: int = 1) -> Plan:
    config = TrainConfig(schedule=schedule, num_microbatches=num_microbatches, micro_batch_size=micro_batch_size,
                         data_parallel=data_parallel, virtual_stages=virtual_stages)
    from planner.schedules import stage_to_device

    devices = len(stages) // config.virtual_stages
    placement = stage_to_device(devices, config.schedule, config.virtual_stages)
    stage_plans = [StagePlan(index=i, device=placement[i], node_ids=ids, fwd_ms=1.0, bwd_ms=2.0, bwd_input_ms=1.0,
                             bwd_weight_ms=1.0, comm_out_ms=0.0, comm_out_bytes=0, recompute=False, in_flight=1,
                             memory=StageMemory(), memory_limit_bytes=16 * GIB, param_count=0)
                   for i, ids in enumerate(stages)]
    model = ModelInfo(source=source, name=source, param_count=0, micro_batch_size=micro_batch_size,
                      seq_len=seq_len, image_size=image_size)
    return Plan(model=model, profile_fingerprint="hand", cluster=Cluster.uniform(devices, memory_bytes=16 * GIB),
                config=config, feasible=True, stages=stage_plans, step_time_ms=10.0)


def gpt_tiny_stages(n: int) -> list[list[str]]:
    """GPT tiny (4 blocks) cut into n stages: embeddings first, head last."""
    layers = ["wte", "wpe", *[f"layers.{i}" for i in range(4)], "ln_f", "lm_head"]
    if n == 2:
        return [layers[:4], layers[4:]]
    if n == 4:
        return [layers[:3], layers[3:4], layers[4:6], layers[6:]]
    raise ValueError(n)
