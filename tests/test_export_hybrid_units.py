"""The hybrid export without processes: what SETTINGS carries, the refusals, and the runtime's helpers."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers_export import gpt_tiny_stages, hand_plan, hybrid_plan

from core.errors import PipeplanError
from planner.export.job import render_job, tp_plan
from planner.export.runtime.pipeline_runtime import (
    JobError,
    global_rank,
    mesh_coords,
    tp_shard_dims,
    zero1_owners,
)

GPT = "sample:gpt:tiny"


@pytest.fixture(scope="module")
def gpt_profile():
    from profiler import load_profile

    return load_profile(GPT, batch_size=2, seq_len=32)


def settings(files):
    import json

    return json.loads(files["train.py"].split('r"""')[1].split('"""')[0])


def test_the_jobs_tp_plan_is_the_profiles(gpt_profile):
    plan = hybrid_plan(GPT, gpt_tiny_stages(2), tp=2, seq_len=32)
    s = settings(render_job(plan, profile=gpt_profile))
    want = {}
    for n in gpt_profile.nodes:
        for rel in n.tp_colwise:
            want[f"{n.module_path}.{rel}"] = "colwise"
        for rel in n.tp_rowwise:
            want[f"{n.module_path}.{rel}"] = "rowwise"
    assert want and s["tp_plan"] == want == tp_plan(plan, gpt_profile)
    assert s["tensor_parallel"] == 2 and s["dp_sharding"] == "ddp"
    # without a profile the export rebuilds it from the model source: the same plan
    assert settings(render_job(plan))["tp_plan"] == want
    # a profile that splits other modules (layers.0 replicated) gives another job
    other = dataclasses.replace(gpt_profile, nodes=[
        dataclasses.replace(n, tp_colwise=[], tp_rowwise=[]) if n.id == "layers.0" else n for n in gpt_profile.nodes])
    got = settings(render_job(plan, profile=other))["tp_plan"]
    assert got == {k: v for k, v in want.items() if not k.startswith("layers.0.")} != want


def test_launch_counts_every_rank(gpt_profile):
    files = render_job(hybrid_plan(GPT, gpt_tiny_stages(2), tp=2, dp=2, sharding="zero1", seq_len=32),
                       profile=gpt_profile)
    assert "WORLD=8" in files["launch.sh"]
    assert "2 pipeline rank(s) x 2 data-parallel replica(s) (zero1) x 2 tensor-parallel rank(s) = 8" in files["README.md"]


def test_pp_only_jobs_are_unchanged():
    s = settings(render_job(hand_plan(GPT, gpt_tiny_stages(2), seq_len=32)))
    assert s["tensor_parallel"] == 1 and s["dp_sharding"] == "ddp" and "tp_plan" not in s


@pytest.mark.parametrize("schedule, message", [
    ("GPipe", None), ("1F1B", None), ("Interleaved1F1B", None), ("ZBH1", None),
    ("ZBV", "with the GPipe, 1F1B, Interleaved1F1B, ZBH1 schedules only"),
])
def test_schedules_under_tp(gpt_profile, schedule, message):
    layers = ["wte", "wpe", *[f"layers.{i}" for i in range(4)], "ln_f", "lm_head"]
    stages = [layers[:2], layers[2:4], layers[4:6], layers[6:]] if schedule in ("Interleaved1F1B", "ZBV") \
        else gpt_tiny_stages(2)
    plan = hybrid_plan(GPT, stages, tp=2, seq_len=32, schedule=schedule,
                       virtual_stages=2 if schedule == "Interleaved1F1B" else 1)
    if message is None:
        assert settings(render_job(plan, profile=gpt_profile))["schedule"] == schedule
        return
    with pytest.raises(PipeplanError, match=message):
        render_job(plan, profile=gpt_profile)
    # the same schedule without TP or FSDP exports as before
    plan.config = dataclasses.replace(plan.config, tensor_parallel=1)
    render_job(plan)


def test_weights_refused_with_tp_or_fsdp(gpt_profile):
    plan = hybrid_plan(GPT, gpt_tiny_stages(2), tp=2, seq_len=32)
    with pytest.raises(PipeplanError, match="--weights is not implemented for jobs with tensor parallelism or FSDP"):
        render_job(plan, weights="/data/model.safetensors", profile=gpt_profile)
    plan = hybrid_plan(GPT, gpt_tiny_stages(2), dp=2, sharding="fsdp", seq_len=32)
    with pytest.raises(PipeplanError, match="--weights is not implemented for jobs with tensor parallelism or FSDP"):
        render_job(plan, weights="/data/model.safetensors")
    # zero1 keeps whole parameters: weights load as in DDP
    render_job(hybrid_plan(GPT, gpt_tiny_stages(2), dp=2, sharding="zero1", seq_len=32),
               weights="/data/model.safetensors")


def test_rank_layout_tp_fastest():
    pp, dp, tp = 2, 3, 2
    seen = set()
    for r in range(pp * dp * tp):
        p, d, t = mesh_coords(r, dp, tp)
        assert global_rank(p, d, t, dp, tp) == r
        seen.add((p, d, t))
    assert len(seen) == 12 and mesh_coords(1, dp, tp) == (0, 0, 1) and mesh_coords(2, dp, tp) == (0, 1, 0)


def test_shard_dims_follow_colwise_and_rowwise():
    from sample_models import gpt

    with torch.device("meta"):
        model = gpt.GPT(gpt.GPTConfig(block_size=16, vocab_size=64, n_layer=1, n_head=2, n_embd=16))
    dims = tp_shard_dims(model, {"layers.0.attn.c_attn": "colwise", "layers.0.attn.c_proj": "rowwise",
                                 "wpe": "colwise"})
    assert dims["layers.0.attn.c_attn.weight"] == 0 and dims["layers.0.attn.c_attn.bias"] == 0
    assert dims["layers.0.attn.c_proj.weight"] == 1 and dims["layers.0.attn.c_proj.bias"] is None
    assert dims["wpe.weight"] == 1 and dims["ln_f.weight"] is None
    # GPT's lm_head is tied to wte: two placements for one parameter are refused
    with pytest.raises(JobError, match="tied parameter wte.weight gets two TP placements"):
        tp_shard_dims(model, {"wte": "rowwise", "lm_head": "rowwise"})
    with pytest.raises(JobError, match="splits only nn.Linear and nn.Embedding"):
        tp_shard_dims(model, {"ln_f": "colwise"})


def test_zero1_owners_balance_and_cover():
    copies = {f"p{i}": [torch.nn.Parameter(torch.zeros(n))] for i, n in enumerate([100, 60, 50, 10, 5])}
    owner = zero1_owners(copies, 2)
    assert set(owner) == set(copies)
    load = [sum(copies[f][0].numel() for f, o in owner.items() if o == r) for r in range(2)]
    assert load == [110, 115] or load == [115, 110]


def test_whole_mesh_plan_counts_nodes_and_checks_group_devices(gpt_profile):
    """A plan on the whole mesh (stage devices 0 and 4 of 8, two nodes of 4): launch.sh starts 8 processes
    on 2 nodes, and a stage on an unlike device is refused against the group's first device."""
    from planner.contracts.cluster import Cluster, Device

    plan = hybrid_plan(GPT, gpt_tiny_stages(2), tp=2, dp=2, seq_len=32)
    plan.cluster = Cluster(devices=[Device(name=f"gpu{i}", memory_bytes=16 << 30, speed=1.0, node=i // 4)
                                    for i in range(8)])
    plan.stages[1].device = 4
    files = render_job(plan, profile=gpt_profile)
    assert "WORLD=8" in files["launch.sh"] and "#SBATCH --nodes=2" in files["slurm.sbatch"]
    assert "--gpus-per-node=4" in files["slurm.sbatch"]
    plan.stages[1].device = 5  # alike device 5 for 4: a relabelling, exported
    render_job(plan, profile=gpt_profile)
    plan.cluster.devices[4] = Device(name="slow", memory_bytes=16 << 30, speed=0.5, node=1)
    with pytest.raises(PipeplanError, match="on the cluster's device 4"):
        render_job(plan, profile=gpt_profile)


def test_startup_line_states_dp_tp_and_sharding(load_job, tmp_path, gpt_profile):
    from planner.export import export_plan

    export_plan(hybrid_plan(GPT, gpt_tiny_stages(2), tp=2, dp=2, sharding="zero1", seq_len=32), tmp_path / "job",
                profile=gpt_profile)
    train = load_job(tmp_path / "job")
    args = train.parse_args([])
    lines = [train.startup_line(r, args) for r in range(8)]
    # rank = (pp_rank * dp + dp_rank) * tp + tp_rank
    assert lines[5].startswith("rank 5: stage 1 layers layers.2..lm_head (4), recompute off; 1F1B")
    assert lines[5].endswith("dp 2 (replica 0), zero1, tp 2 (tp rank 1, 4 modules split); mesh pp 2 x dp 2 x tp 2")
    assert lines[2].endswith("dp 2 (replica 1), zero1, tp 2 (tp rank 0, 4 modules split); mesh pp 2 x dp 2 x tp 2")
    assert train.TP == 2 and train.DP_SHARDING == "zero1"


def test_cli_export_uses_the_given_profile_and_counts_every_process(gpt_profile, tmp_path):
    """`pipeplan export plan.json --profile profile.json` takes the TP plan from that profile (a file:
    model could not be rebuilt without --allow-code) and says how many processes the job needs."""
    import subprocess
    import sys
    from pathlib import Path

    plan = hybrid_plan(GPT, gpt_tiny_stages(2), tp=2, dp=2, sharding="zero1", seq_len=32)
    plan.profile_fingerprint = gpt_profile.fingerprint()
    (tmp_path / "plan.json").write_text(plan.to_json())
    (tmp_path / "profile.json").write_text(gpt_profile.to_json())
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "cli", "export", "plan.json", "--profile", "profile.json",
                           "-o", "job"], cwd=tmp_path, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    assert "8 processes" in done.stdout, done.stdout
    assert settings({"train.py": (tmp_path / "job" / "train.py").read_text()})["tp_plan"] == \
        tp_plan(plan, gpt_profile)
