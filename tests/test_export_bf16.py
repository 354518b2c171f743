"""bf16_mixed in the exported job: fp32 weights and optimizer, each stage's forward under
torch.autocast(bfloat16), floating tensors crossing a stage boundary in their fp32 dtype, and the
same autocast in --single-process.

Tolerance: both runs do the same ops on the same values in the same dtypes, so the step-1 losses
agree to 1e-6. Later steps differ by fp32 summation order in the backward (~1e-7 relative), which
bf16 can magnify where a value sits near a rounding boundary (one bf16 ulp is 2**-8, 0.4% of an
element), averaged over every term of the loss. Measured on GPT tiny: 2.4e-6 relative after 5 steps,
so REL_TOL = 1e-4 leaves 40x room. Since bf16 and fp32 runs of these tiny-init models differ by only
~1e-5 relative, the test also checks that autocast is on at all (step-1 loss differs from fp32's).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers_export import gpt_tiny_stages, hand_plan, losses, run_job

from planner.export import export_plan

STEPS = 3
REL_TOL = 1e-4
"""bf16 pipeline vs bf16 --single-process, per step (see the module docstring)."""
FP32_REL_TOL = 1e-3
"""bf16 vs fp32 training, per step: measured 1.3e-5 relative on GPT tiny; a loss off by bf16 noise
in a wrong place (e.g. no fp32 master weights) drifts much further."""

DLRM_STAGES = [["bottom_mlp", "embeddings"], ["top_mlp"]]


def export_with(tmp_path: Path, name: str, plan, precision: str) -> Path:
    plan.config.precision = precision
    export_plan(plan, tmp_path / name)
    return tmp_path / name


def rel_diffs(a: list[dict], b: list[dict]) -> list[float]:
    return [abs(x - y) / abs(y) for x, y in zip(losses(a), losses(b))]


def test_boundary_tensors_keep_their_fp32_dtype_under_autocast(load_job, tmp_path):
    """DLRM's stage 0 ends in a Linear+ReLU: autocast makes that bf16, but the static stage metadata
    (from the meta run) says fp32, so the stage must send fp32 (gloo would abort on the size mismatch)."""
    job = export_with(tmp_path, "dlrm", hand_plan("sample:dlrm:tiny", DLRM_STAGES, micro_batch_size=4),
                      "bf16_mixed")
    train = load_job(job)
    assert train.BF16_MIXED
    example, _ = train.example_batch()
    modules = train.split_into_stages(train.trace_model(train.meta_model(), example), train.SETTINGS["stages"],
                                      bf16_mixed=train.BF16_MIXED)
    shapes = train.stage_shapes(modules, example)
    stage = modules[0]
    cpu = torch.device("cpu")
    train.retarget_devices(stage, cpu)
    train.materialize(stage, cpu, 0, train.model_source.init_parameters, train.model_source.init_buffers)
    inputs, _ = train.model_source.make_batch(4)
    sent = stage(*inputs)
    sent = sent if isinstance(sent, tuple) else (sent,)
    assert [t.dtype for t in sent] == [t.dtype for t in shapes[0][1]] == [torch.float32]
    stage.out_dtypes = None  # what autocast alone would send
    raw = stage(*inputs)
    assert (raw if isinstance(raw, tuple) else (raw,))[0].dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in stage.parameters()), "master weights stay fp32"
    assert train.upcast((torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.long)))[0].dtype == torch.float32


def test_fp32_plan_has_no_autocast(load_job, tmp_path):
    job = export_with(tmp_path, "fp32", hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32), "fp32")
    train = load_job(job)
    assert not train.BF16_MIXED
    assert not torch.is_autocast_enabled("cpu")
    with train.mixed_precision(torch.device("cpu"), train.BF16_MIXED):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.slow
@pytest.mark.torchrun
def test_gpt_bf16_pipeline_matches_single_process_and_stays_close_to_fp32(tmp_path):
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32)
    job = export_with(tmp_path, "bf16", plan, "bf16_mixed")
    args = ["--steps", str(STEPS)]
    pipeline, single = run_job(job, args, 2), run_job(job, args, None)
    fp32 = run_job(export_with(tmp_path, "fp32", plan, "fp32"), args, None)
    assert [d["step"] for d in pipeline] == [d["step"] for d in single] == list(range(1, STEPS + 1))
    assert all(math.isfinite(x) for x in losses(pipeline) + losses(single))
    assert max(rel_diffs(pipeline, single)) <= REL_TOL, f"bf16 pipeline {losses(pipeline)} vs single {losses(single)}"
    assert abs(losses(pipeline)[0] - losses(single)[0]) <= 1e-6, "step 1: the same ops on the same values"
    assert max(rel_diffs(single, fp32)) <= FP32_REL_TOL, f"bf16 {losses(single)} vs fp32 {losses(fp32)}"
    assert losses(single)[0] != losses(fp32)[0], "bf16_mixed computed exactly like fp32: autocast is not on"
    assert len(set(losses(single))) > 1


@pytest.mark.slow
@pytest.mark.torchrun
def test_dlrm_bf16_with_a_bf16_boundary(tmp_path):
    """The boundary autocast makes bf16 is sent as fp32 (see the first test) and training still matches."""
    job = export_with(tmp_path, "dlrm", hand_plan("sample:dlrm:tiny", DLRM_STAGES, micro_batch_size=4),
                      "bf16_mixed")
    args = ["--steps", str(STEPS)]
    pipeline, single = run_job(job, args, 2), run_job(job, args, None)
    assert max(rel_diffs(pipeline, single)) <= REL_TOL, f"bf16 pipeline {losses(pipeline)} vs single {losses(single)}"
