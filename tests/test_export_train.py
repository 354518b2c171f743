"""Exported jobs train for real: torchrun processes (gloo, CPU) against `train.py --single-process`.

Every check compares per-step losses of the pipeline with the unsplit model run on the same
data, seed and micro-batches; 1e-5 is far below what a missed tied-gradient sync (1e-3 after
5 steps) or a wrong split would give.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from helpers_export import (
    VENV_BIN,
    check_equivalence,
    export,
    gpt_tiny_stages,
    hand_plan,
    job_env,
    losses,
    run_job,
    run_job_until_step,
    tiny_llama_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.torchrun]


def test_gpt_gpipe_matches_single_process(tmp_path):
    # 1F1B on 2 ranks: test_profile_solve_export_flow (the solver's plan for GPT tiny)
    check_equivalence(tmp_path, "gpipe", hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), schedule="GPipe",
                                                   seq_len=32), 2)


def test_unet3d_skips_across_stages(tmp_path):
    # down.0 and down.1 outputs skip to up.2 / up.1 in stage 1: relayed through the boundary
    stages = [["down.0", "down.1"], ["down.2", "bottleneck", "up.0", "up.1", "up.2", "head"]]
    check_equivalence(tmp_path, "unet", hand_plan("sample:unet3d:tiny", stages, num_microbatches=2,
                                                  micro_batch_size=1, image_size=16), 2)


def test_dlrm(tmp_path):
    stages = [["bottom_mlp", "embeddings"], ["top_mlp"]]
    check_equivalence(tmp_path, "dlrm", hand_plan("sample:dlrm:tiny", stages, num_microbatches=4, micro_batch_size=4), 2)


def test_gpt_four_ranks_two_stages_each(tmp_path):
    layers = ["wte", "wpe", *[f"layers.{i}" for i in range(4)], "ln_f", "lm_head"]
    plan = hand_plan("sample:gpt:tiny", [[x] for x in layers], schedule="Interleaved1F1B", virtual_stages=2,
                     num_microbatches=4, seq_len=32)
    check_equivalence(tmp_path, "i1f1b", plan, 4)


def test_gpt_zbv_two_ranks(tmp_path):
    # V placement: rank 0 holds stages 0 and 3, so the tied wte / lm_head share one Parameter there
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(4), schedule="ZBV", num_microbatches=4, seq_len=32)
    check_equivalence(tmp_path, "zbv", plan, 2)


def test_gpt_dualpipev_two_ranks(tmp_path):
    # torch 2.13's ScheduleDualPipeV: V placement like ZBV, M >= 2P; its OVERLAP_F_B steps run F then the full B
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(4), schedule="DualPipeV", num_microbatches=4, seq_len=32)
    check_equivalence(tmp_path, "dualpipev", plan, 2)


def test_gpt_looped_bfs_two_ranks(tmp_path):
    # torch 2.13's ScheduleLoopedBFS: loop placement, every forward of each local stage, then the backwards
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(4), schedule="LoopedBFS", virtual_stages=2,
                     num_microbatches=4, seq_len=32)
    check_equivalence(tmp_path, "loopedbfs", plan, 2)


def test_pp2_dp2_matches_single_process_with_same_global_batch(tmp_path):
    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), data_parallel=2, seq_len=32)
    # --dp defaults to the plan's data_parallel (2): the reference sees all 2 x 4 micro-batches
    check_equivalence(tmp_path, "dp", plan, 4)


def test_hf_llama_tiny_config(tmp_path):
    stages = tiny_llama_config(tmp_path / "hf")
    plan = hand_plan(f"hf:{tmp_path / 'hf' / 'config.json'}", stages, seq_len=16)
    check_equivalence(tmp_path, "llama", plan, 2)
    assert (tmp_path / "llama" / "model" / "config.json").is_file()


def test_checkpoint_kill_resume_matches_uninterrupted(tmp_path):
    job = export(tmp_path, "ckpt", hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32))
    args = ["--steps", "6", "--checkpoint-every", "3"]
    full = run_job(job, [*args, "--checkpoint-dir", str(tmp_path / "full_ckpt")], 2)
    assert [d["step"] for d in full] == [1, 2, 3, 4, 5, 6]
    # Second run: kill the whole torchrun process group once step 3 (checkpointed) is logged.
    ckpt = tmp_path / "ckpt_dir"
    seen = run_job_until_step(job, [*args, "--checkpoint-dir", str(ckpt)], 2, stop_step=3)
    assert seen and seen[-1]["step"] == 3, "the run was not killed right after the step-3 checkpoint"
    assert (ckpt / "latest").read_text() == "3"
    resumed = run_job(job, [*args, "--checkpoint-dir", str(ckpt), "--resume"], 2)
    assert [d["step"] for d in resumed] == [4, 5, 6]
    assert losses(seen[:3]) == losses(full[:3])
    diffs = [abs(a - b) for a, b in zip(losses(resumed), losses(full[3:]))]
    assert max(diffs) <= 1e-6, f"resumed {losses(resumed)} vs uninterrupted {losses(full[3:])}"


def test_mismatched_micro_batch_shape_fails_clearly_before_any_process_group(tmp_path):
    job = export(tmp_path, "bad", hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32))
    # The user's real data has 31 tokens per sample, the plan was made at 32.
    train = job / "train.py"
    text = train.read_text()
    hook = "    return model_source.make_batch(num_samples, generator=generator)\n"
    assert hook in text
    train.write_text(text.replace(hook, "    inputs, target = model_source.make_batch(num_samples, generator=generator)\n"
                                        "    return (inputs[0][:, :31],), target[:, :31]\n"))
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "train.py", "--steps", "2"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=job, env=job_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "train.py: error: get_batch input 0 has shape (8, 31)" in proc.stderr
    assert "need (8, 32)" in proc.stderr
    # no traceback from the job itself (torchrun still reports the failed worker its own way)
    assert "Received data size" not in proc.stderr and 'train.py", line' not in proc.stderr
    assert time.monotonic() - start < 100
    single = subprocess.run([sys.executable, "train.py", "--single-process", "--steps", "1"], cwd=job, env=job_env(),
                            capture_output=True, text=True, timeout=120, check=False)
    assert single.returncode == 2 and single.stderr.startswith("train.py: error: get_batch input 0")


def test_profile_solve_export_flow(tmp_path):
    """The real flow: a profile of GPT tiny, the solver's plan for 2 devices, the exported job."""
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve
    from profiler import load_profile

    profile = load_profile("sample:gpt:tiny", batch_size=2, seq_len=32)
    plan = solve(profile, Cluster.uniform(2, memory_bytes=8 << 30),
                 TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=2))
    assert plan.feasible and len(plan.stages) == 2 and plan.config.schedule == "1F1B"
    check_equivalence(tmp_path, "solved", plan, 2)
