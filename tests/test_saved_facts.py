"""The saved-tensor facts of the profile (ProfileEdge.saved_by_src / saved_by_dst) against autograd, stage by
stage: every 2-stage cut of the ResNet, U-Net3D and GPT samples is split the way the exported job splits
it (pipeline_runtime.trace_model / split_into_stages), each stage runs one micro-batch forward (the last
one with the loss) under a saved-tensor hook, and the bytes it keeps for backward - what autograd saves and
the outputs it sends on, each storage once - equal the plan's activations + relay per micro-batch.

Before the facts, a ResNet stage that received a ReLU's output and saved its own copy was 20% low, and a
U-Net stage that sent tensors its own ReLUs had saved counted them twice (16% high; bench/bench_loop)."""

from __future__ import annotations

import pytest
import torch

import sample_models
from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.export.runtime import pipeline_runtime as runtime
from planner.solvers.evaluate import evaluate_partition
from profiler import load_profile

BATCH = 2


def kept_bytes(stage, inputs: tuple, params: set[int], loss=None) -> tuple[int, tuple]:
    """Bytes one micro-batch leaves behind for backward in this stage: saved tensors and sent outputs."""
    saved: dict[int, int] = {}

    def pack(t):
        key = t.untyped_storage()._cdata
        if key not in params:
            saved[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = stage(*inputs)
        out = out if isinstance(out, tuple) else (out,)
        if loss is not None:
            loss(out)
    if loss is None:  # PipelineStage keeps what it sends until the backward of that micro-batch
        for t in out:
            saved.setdefault(t.untyped_storage()._cdata, t.untyped_storage().nbytes())
    return sum(saved.values()), out


@pytest.mark.parametrize("name", ["resnet", "unet3d", "gpt"])
def test_stage_saved_bytes_equal_the_plan(name):
    torch.manual_seed(0)
    prof = load_profile(f"sample:{name}:tiny", batch_size=BATCH)
    spec = sample_models.get_model(name)
    inputs, target = spec.make_batch(spec.sizes["tiny"], batch_size=BATCH)
    model = sample_models.build(name, "tiny")
    ids = [n.id for n in prof.nodes]
    cluster = Cluster.uniform(2, memory_bytes=1 << 40)
    config = TrainConfig(schedule="GPipe", num_microbatches=1, micro_batch_size=BATCH)
    checked = 0
    for cut in range(1, len(ids)):
        stages = [ids[:cut], ids[cut:]]
        plan = evaluate_partition(prof, cluster, config, stages)
        modules = runtime.split_into_stages(runtime.trace_model(model, tuple(inputs)), stages)
        params = {t.untyped_storage()._cdata for m in modules for t in [*m.parameters(), *m.buffers()]}
        x = tuple(inputs)
        for s, module in enumerate(modules):
            module.train()
            x = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in x)
            last = s == len(modules) - 1
            got, out = kept_bytes(module, x, params,
                                  (lambda o: spec.loss_fn(o[0] if len(o) == 1 else o, target)) if last else None)
            st = plan.stages[s]
            planned = (st.memory.activations + st.memory.relay) / st.in_flight
            assert got == pytest.approx(planned, rel=0.002, abs=64), (name, stages, s, got, planned)
            x = tuple(t.detach() for t in out)
        checked += 1
    assert checked == len(ids) - 1


def test_the_profiler_records_who_saves_what():
    """ResNet blocks end in a ReLU, which saves its output, and the next block's convolutions save their
    input; a GPT block ends in a residual add (saves nothing) and the next block's LayerNorm saves its input."""
    resnet = {(e.src, e.dst): (e.saved_by_src, e.saved_by_dst) for e in load_profile("sample:resnet:tiny").edges}
    assert resnet[("layers.0", "layers.1")] == (True, True)
    gpt = {(e.src, e.dst): (e.saved_by_src, e.saved_by_dst) for e in load_profile("sample:gpt:tiny").edges}
    assert gpt[("layers.0", "layers.1")] == (False, True)
