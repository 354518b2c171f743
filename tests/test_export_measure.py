"""Issue 19: the exported job measures itself (pipeline_runtime.StepMeter, train.py's per-step
"ranks"/"stages"/"actions"), and its resume checkpoints load with torch.load(weights_only=True)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from planner.export.runtime.pipeline_runtime import StepMeter, load_checkpoint, save_checkpoint, state_bytes


def test_saved_tensor_count_is_exact_and_released():
    meter = StepMeter(torch.device("cpu"))
    lin = nn.Linear(64, 32)
    meter.watch_params(lin.parameters())
    x = torch.randn(16, 64, requires_grad=True)
    meter.reset()
    meter.current = 0
    with meter.saved_tensors():
        y = torch.tanh(lin(x))  # saves x (16x64) for the weight grad and tanh's output (16x32); not the weight
        loss = y.sum()
    assert meter.live == 4 * (16 * 64 + 16 * 32)
    assert meter.stage_peak[0] == meter.live == meter.peak_live
    loss.backward()
    del y, loss
    assert meter.live == 0 and meter.peak_live == 4 * (16 * 64 + 16 * 32)



def test_saved_input_micro_batch_counts_its_slice_not_the_whole_batch():
    """The schedule splits the step's input batch into views of one storage (tensor_split): a layer that
    saves its input micro-batch holds that slice, which is what the plan counts per micro-batch in flight.
    By hand: batch 4 micro-batches x 8 rows x 64 fp32 = 8192 B; two micro-batches in flight save 2 x 2048."""
    meter = StepMeter(torch.device("cpu"))
    lin = nn.Linear(64, 32, bias=False)
    meter.watch_params(lin.parameters())
    batch = torch.randn(32, 64)
    meter.reset()
    meter.watch_inputs([batch])
    meter.current = 0
    with meter.saved_tensors():
        outs = [lin(mb) for mb in batch.tensor_split(4)[:2]]  # Linear saves its input (the weight is a param)
    assert meter.live == 2 * 8 * 64 * 4
    del outs
    assert meter.live == 0
    meter.watch_inputs([])
    with meter.saved_tensors():
        out = lin(batch.tensor_split(4)[0])
    assert meter.live == 32 * 64 * 4  # unwatched: the view's whole storage (what the job counted before)
    del out

def test_state_bytes_counts_params_grads_and_optimizer():
    lin = nn.Linear(8, 4)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.randn(2, 8)).sum().backward()
    opt.step()
    n = sum(p.numel() for p in lin.parameters())
    # params + grads + exp_avg + exp_avg_sq (4 bytes each) + one fp32 step scalar per parameter tensor
    assert state_bytes(list(lin.parameters()), opt) == 4 * n * 4 + 2 * 4


def test_resume_checkpoint_loads_with_weights_only(tmp_path):
    torch.manual_seed(0)
    lin = nn.Linear(8, 4)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.randn(2, 8)).sum().backward()
    opt.step()
    groups = {"stage_0": dict(lin.named_parameters())}
    random.seed(3)
    save_checkpoint(tmp_path, 7, groups, opt, 0, True)
    (tmp_path / "latest").write_text("7")
    want_rng, want_py = torch.get_rng_state(), random.getstate()
    torch.rand(3), random.random()
    fresh = nn.Linear(8, 4)
    opt2 = torch.optim.AdamW(fresh.parameters())
    assert load_checkpoint(tmp_path, {"stage_0": dict(fresh.named_parameters())}, opt2, 0) == 7
    for (_, a), (_, b) in zip(lin.named_parameters(), fresh.named_parameters()):
        assert torch.equal(a, b)
        assert torch.equal(opt.state[a]["exp_avg"], opt2.state[b]["exp_avg"])
    assert torch.equal(torch.get_rng_state(), want_rng) and random.getstate() == want_py
    # the loader really is restricted: a pickled object that is not tensors/containers is refused
    torch.save({"step": 1, "rng": object()}, tmp_path / "step_000007" / "rank_1.pt")
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(tmp_path, {}, opt2, 1)


@pytest.mark.slow
@pytest.mark.torchrun
def test_job_logs_measurements_and_recompute_lowers_stage_memory(tmp_path):
    from helpers_export import export, gpt_tiny_stages, hand_plan, run_job

    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2))
    runs = {}
    for rc in (False, True):
        plan.stages[0].recompute = rc
        job = export(tmp_path, f"job_{rc}", plan)
        runs[rc] = run_job(job, ["--steps", "3", "--profile-steps", "1", "--checkpoint-every", "2"], 2)
        # resume from step 2 (weights_only=True loads the optimizer and RNG state)
        resumed = run_job(job, ["--steps", "3", "--resume"], 2)
        assert [d["step"] for d in resumed] == [3]
        assert resumed[0]["loss"] == pytest.approx(runs[rc][2]["loss"], abs=1e-6)
    for rc, lines in runs.items():
        assert [d["step"] for d in lines] == [1, 2, 3]
        assert "actions" in lines[0] and "actions" not in lines[1]
        kinds = {(a[0], a[1]) for a in lines[0]["actions"]}
        assert kinds == {("F", 0), ("B", 0), ("F", 1), ("B", 1)}
        for d in lines:
            assert [r["rank"] for r in d["ranks"]] == [0, 1]
            for r in d["ranks"]:
                assert r["step_s"] > 0 and r["fwd_s"] > 0 and r["bwd_s"] > 0 and r["wait_s"] >= 0
                assert 0 < r["peak_bytes"] < 100 * 2**20
            assert [(s["n_fwd"], s["n_bwd"]) for s in d["stages"]] == [(4, 4), (4, 4)]
    assert [d["loss"] for d in runs[True]] == pytest.approx([d["loss"] for d in runs[False]], abs=1e-6)
    off, on = runs[False][-1]["stages"][0], runs[True][-1]["stages"][0]
    # recomputed: the inputs and sent outputs of the 2 micro-batches in flight, and the one micro-batch
    # rebuilt during its backward (counted through the checkpoint's recompute context), as the plan says
    from planner.contracts.config import TrainConfig
    from planner.solvers.evaluate import evaluate_partition
    from profiler import load_profile

    prof = load_profile("sample:gpt:tiny", batch_size=plan.config.micro_batch_size)
    planned = {rc: evaluate_partition(prof, plan.cluster, TrainConfig(schedule="1F1B", num_microbatches=4,
                                                                         micro_batch_size=2),
                                      gpt_tiny_stages(2), recompute=[rc, False]).stages[0].memory
               for rc in (False, True)}
    assert on["act_peak_bytes"] < 0.7 * off["act_peak_bytes"]
    assert on["act_peak_bytes"] == pytest.approx(planned[True].activations + planned[True].relay, rel=0.01)
    assert off["act_peak_bytes"] == pytest.approx(planned[False].activations + planned[False].relay, rel=0.01)
    assert runs[True][-1]["stages"][1]["act_peak_bytes"] == runs[False][-1]["stages"][1]["act_peak_bytes"]


@pytest.mark.slow
@pytest.mark.torchrun
def test_plan_stage_memory_matches_the_jobs_exact_count(tmp_path):
    """vit tiny on 2 ranks, 1F1B: the plan's activation bytes per stage (saved activations and the outputs the
    runtime keeps, x in flight) equal the job's exact count on stage 0 and are within 1% on the last stage
    (the profile charges the loss's saved tensors to the head; the job computes the loss outside the stages)."""
    from helpers_export import export, run_job

    from planner.contracts.cluster import Cluster, Device
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve
    from profiler import load_profile

    prof = load_profile("sample:vit:tiny", batch_size=4)
    cluster = Cluster(devices=[Device(name=f"cpu{i}", memory_bytes=64 << 30, speed=1.0) for i in range(2)])
    plan = solve(prof, cluster, TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=4))
    lines = run_job(export(tmp_path, "job", plan), ["--steps", "1"], 2)
    measured = [s["act_peak_bytes"] for s in lines[-1]["stages"]]
    planned = [st.memory.activations + st.memory.relay for st in plan.stages]
    assert planned[0] == measured[0]
    assert planned[1] == pytest.approx(measured[1], rel=0.01)
