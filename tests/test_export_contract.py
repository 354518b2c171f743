"""The plan -> job contract (issue 19, part 1): the exported job applies every decision of the Plan,
says at start-up what it applies, and export refuses what the job cannot apply.

- recompute: a stage whose plan says recompute keeps only its inputs for backward (bytes counted
  with torch.autograd.graph.saved_tensors_hooks over one stage forward), within TOL_BYTES of the
  profile's numbers the plan was made from; the math is unchanged (gradients, dropout).
- the start-up line (train.py startup_line) changes with each plan field, and so does behaviour.
- every Plan, StagePlan, TrainConfig and ModelInfo field is in docs/export.md's contract table.
- one torchrun run: a 2-stage job with recompute on one stage trains exactly like --single-process.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest
import torch
from helpers_export import (
    STEPS,
    VENV_BIN,
    assert_same_losses,
    export,
    gpt_tiny_stages,
    hand_plan,
    job_env,
    json_lines,
    single_reference,
)

from core.errors import PipeplanError
from planner.contracts.cluster import Cluster, Device
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan, SolverInfo, StagePlan
from planner.export import export_plan, render_job
from profiler.profile import ModelInfo

TOL_BYTES = 0.05
"""Measured saved bytes vs the profile's, relative. Measured: 0 (exact) for GPT tiny's stages 0 and 1."""
GPT3 = [["wte", "wpe", "layers.0"], ["layers.1", "layers.2"], ["layers.3", "ln_f", "lm_head"]]
"""GPT tiny in 3 stages: stage 1 is a middle stage (a residual stream in, one out, no loss)."""
CPU = torch.device("cpu")


# --------------------------------------------------------------------------- helpers
def gpt_plan(**kw) -> Plan:
    return hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32, **kw)


def real_stages(train) -> list:
    """Every stage of the job's plan, built by train.py's own split_model (so with the plan's recompute
    flags) and materialised on the CPU, as each rank does for its own stages."""
    example, _ = train.example_batch()
    modules = train.split_model(example)
    train.stage_shapes(modules, example)
    for m in modules:
        train.retarget_devices(m, CPU)
        train.materialize(m, CPU, 0, train.model_source.init_parameters, train.model_source.init_buffers)
    return modules


def saved_bytes(module, args: tuple):
    """Bytes autograd saves for backward during one forward of `module`: distinct storages, the
    module's own parameters and buffers excluded (the profiler's rule, profiler/analyze.py)."""
    own = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.nbytes() and storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = module(*args)
    return sum(saved.values()), out


def stage_inputs(train, modules, k: int) -> tuple:
    """One micro-batch's inputs of stage k (fresh, contiguous tensors, as a receiving rank has them)."""
    inputs, _ = train.get_batch(1, train.SETTINGS["micro_batch_size"], 0)
    args = tuple(x.clone() for x in inputs)
    with torch.no_grad():
        for m in modules[:k]:
            out = m._forward(*args)
            args = out if isinstance(out, tuple) else (out,)
    return tuple(a.detach().clone().requires_grad_(a.is_floating_point()) for a in args)


def count_forwards(module) -> list[int]:
    calls = [0]
    inner = module._forward

    def counted(*args):
        calls[0] += 1
        return inner(*args)

    module._forward = counted  # StageModule.forward looks it up on the instance
    return calls


# --------------------------------------------------------------------------- recompute
@pytest.fixture(scope="module")
def gpt3_plans():
    """Plans for GPT tiny on 3 devices (1F1B, M=4, micro-batch 2) from a profile of the same model:
    recompute off everywhere, and on for stages 0 and 1. Their memory is the cost model's."""
    from planner.solvers.evaluate import evaluate_partition
    from profiler import load_profile

    profile = load_profile("sample:gpt:tiny", batch_size=2, seq_len=32)
    cluster = Cluster.uniform(3, memory_bytes=8 << 30)
    config = TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=2, recompute="auto")
    off = evaluate_partition(profile, cluster, config, GPT3, recompute=[False, False, False])
    on = evaluate_partition(profile, cluster, config, GPT3, recompute=[True, True, False])
    act = [sum(n.activation_bytes for n in profile.nodes if n.id in ids) for ids in GPT3]
    return off, on, act


def test_recompute_keeps_only_the_stage_inputs_as_the_plan_predicts(load_job, tmp_path, gpt3_plans):
    off_plan, on_plan, profile_act = gpt3_plans
    export_plan(on_plan, tmp_path / "job")
    train = load_job(tmp_path / "job")
    assert train.SETTINGS["recompute"] == [True, True, False]
    modules = real_stages(train)
    assert [m.recompute for m in modules] == [True, True, False]
    report = {}
    for k in (0, 1):
        s_off, s_on = off_plan.stages[k], on_plan.stages[k]
        assert (s_off.recompute, s_on.recompute) == (False, True)
        in_flight = s_off.in_flight
        assert in_flight == s_on.in_flight and in_flight == 3 - k  # 1F1B: min(P - s, M)
        # the stage's outputs, held by torch's PipelineStage until their backward with or without recompute
        # (memory.stage_output_bytes; a chain: what the next stage receives), are not autograd's saved bytes
        held_outputs = in_flight * off_plan.stages[k + 1].input_bytes
        saved_off = s_off.memory.activations - held_outputs
        saved_on = s_on.memory.activations - held_outputs
        # the plan's prediction, per micro-batch: every saved activation off, the stage's inputs on
        predicted_off = saved_off / in_flight
        assert predicted_off == profile_act[k]
        predicted_input = s_on.input_bytes
        m = modules[k]
        args = stage_inputs(train, modules, k)
        m.recompute = False
        measured_off, _ = saved_bytes(m, args)
        m.recompute = True
        measured_on, _ = saved_bytes(m, args)
        report[k] = (measured_off, predicted_off, measured_on, predicted_input)
        assert abs(measured_off - predicted_off) <= TOL_BYTES * predicted_off, report
        assert abs(measured_on - predicted_input) <= TOL_BYTES * predicted_input, report
        # Held by the stage at its peak: in_flight micro-batches' saved tensors, plus (recompute)
        # one micro-batch rebuilt during its backward, which is exactly what the forward saves without it.
        measured_mem_off = in_flight * measured_off
        measured_mem_on = in_flight * measured_on + measured_off
        assert abs(measured_mem_off - saved_off) <= TOL_BYTES * saved_off
        assert abs(measured_mem_on - saved_on) <= TOL_BYTES * saved_on
        predicted_saving = s_off.memory.activations - s_on.memory.activations
        assert measured_mem_on < measured_mem_off
        assert abs((measured_mem_off - measured_mem_on) - predicted_saving) <= TOL_BYTES * predicted_saving, report
    print("saved bytes per micro-batch (measured off, predicted off, measured on, predicted on):", report)


@pytest.fixture
def middle_stage(load_job, tmp_path, gpt3_plans):
    """Stage 1 of the 3-stage GPT plan's exported job, a counter of its forwards, and its inputs."""
    export_plan(gpt3_plans[1], tmp_path / "job")
    train = load_job(tmp_path / "job")
    modules = real_stages(train)
    return modules[1], count_forwards(modules[1]), stage_inputs(train, modules, 1)


def test_recompute_rebuilds_the_forward_once_and_leaves_gradients_unchanged(middle_stage):
    m, calls, args = middle_stage
    grads = {}
    for recompute in (False, True):
        m.recompute = recompute
        m.zero_grad(set_to_none=True)
        x = tuple(a.detach().clone().requires_grad_() for a in args)
        calls[0] = 0
        out = m(*x)
        out.backward(torch.ones_like(out))
        assert calls[0] == (2 if recompute else 1)  # one rebuild per micro-batch, in its backward
        grads[recompute] = [x[0].grad, *[p.grad for p in m.parameters()]]
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))


def test_recompute_restores_the_rng_for_dropout():
    """Dropout in a recomputed stage draws the same mask when rebuilt (preserve_rng_state), so the
    gradients are the ones without recompute; without that they would differ."""
    from torch import nn
    from torch.utils.checkpoint import checkpoint

    from planner.export.runtime import pipeline_runtime as rt
    from sample_models.init import init_buffers, init_parameters

    class Drop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.drop, self.b = nn.Linear(16, 16), nn.Dropout(0.5), nn.Linear(16, 16)

        def forward(self, x):
            return self.b(self.drop(torch.relu(self.a(x))))

    with torch.device("meta"):
        model = Drop()
    example = (torch.empty(4, 16, device="meta"),)
    modules = rt.split_into_stages(rt.trace_model(model, example), [["a"], ["drop", "b"]], recompute=[False, True])
    rt.stage_shapes(modules, example)
    for m in modules:
        rt.retarget_devices(m, CPU)
        rt.materialize(m, CPU, 0, init_parameters, init_buffers)
    m = modules[1]
    x0 = torch.randn(4, 16)

    def grads(run) -> list[torch.Tensor]:
        m.zero_grad(set_to_none=True)
        x = x0.clone().requires_grad_()
        torch.manual_seed(7)
        out = run(x)
        torch.rand(100)  # the RNG moves on before backward, as it does in a pipeline
        out.sum().backward()
        return [out.detach(), x.grad, *[p.grad for p in m.parameters()]]

    m.recompute = False
    plain = grads(m)
    m.recompute = True
    recomputed = grads(m)
    assert all(torch.equal(a, b) for a, b in zip(plain, recomputed))
    torch.manual_seed(8)
    assert not torch.equal(m._forward(x0), plain[0]), "the stage has live dropout"
    unpreserved = grads(lambda x: checkpoint(m._forward, x, use_reentrant=False, preserve_rng_state=False))
    assert not all(torch.equal(a, b) for a, b in zip(plain[1:], unpreserved[1:])), "the test would notice"


def test_split_backward_rebuilds_once_per_weight_group_so_export_refuses(middle_stage):
    """Zero-bubble schedules split the backward (torch's stage_backward_input / stage_backward_weight):
    torch's checkpoint then rebuilds the forward for the input gradient and again for every
    weight-gradient group, not once as the plan's time assumes, so export refuses recompute there."""
    from torch.distributed.pipelining._backward import stage_backward_input, stage_backward_weight

    m, calls, args = middle_stage
    grads = {}
    for recompute in (False, True):
        m.recompute = recompute
        m.zero_grad(set_to_none=True)
        x = args[0].detach().clone().requires_grad_()
        calls[0] = 0
        out = m(x)
        dx, groups = stage_backward_input([out], [torch.ones_like(out)], [x], m.parameters())
        stage_backward_weight(m.parameters(), groups)
        grads[recompute] = [dx[0], *[p.grad for p in m.parameters()]]
        if recompute:
            assert calls[0] > 2, calls[0]  # measured: 14 (the forward, 1 rebuild for B, 12 in W: one per group)
    assert all(torch.equal(a, b) for a, b in zip(grads[False], grads[True]))
    for schedule in ("ZBH1", "ZBV"):
        stages = gpt_tiny_stages(4 if schedule == "ZBV" else 2)
        plan = hand_plan("sample:gpt:tiny", stages, schedule=schedule, seq_len=32)
        render_job(plan)  # exportable without recompute
        plan.stages[1].recompute = True
        with pytest.raises(PipeplanError, match=rf"recomputes stage\(s\) 1 under {schedule}.*re-plan with recompute off"):
            render_job(plan)


# --------------------------------------------------------------------------- start-up line and contract
def startup_lines(train, argv: list[str] | None = None) -> list[str]:
    args = train.parse_args(argv or [])
    world = (max(train.SETTINGS["stage_to_rank"]) + 1) * args.dp
    return [train.startup_line(r, args) for r in range(world)]


def with_model_mbs(plan: Plan, mbs: int) -> Plan:
    plan.config.micro_batch_size = mbs
    plan.model.micro_batch_size = mbs
    return plan


def interleaved(plan: Plan) -> Plan:
    layers = ["wte", "wpe", *[f"layers.{i}" for i in range(4)], "ln_f", "lm_head"]
    return hand_plan("sample:gpt:tiny", [layers[:2], layers[2:4], layers[4:6], layers[6:]],
                     schedule="Interleaved1F1B", virtual_stages=2, seq_len=32)


BASE_LINE = "rank {rank}: {stage}, recompute off; 1F1B, M=4, micro-batch 2, fp32, adamw, clip 1, dp 1 (replica 0)"
"""gpt_plan()'s start-up line."""

# (what changes, plan -> plan, text expected on rank 1's line, a behaviour check on the loaded job)
CHANGES = [
    ("recompute", lambda p: setattr(p.stages[1], "recompute", True) or p, ("stage 1 layers layers.2..lm_head (4), "
     "recompute on;"), lambda t: [m.recompute for m in t.split_model(t.example_batch()[0])] == [False, True]),
    ("partition", lambda p: hand_plan("sample:gpt:tiny", [gpt_tiny_stages(2)[0][:3], ["layers.1",
     *gpt_tiny_stages(2)[1]]], seq_len=32), "stage 1 layers layers.1..lm_head (5)",
     lambda t: len(t.split_model(t.example_batch()[0])[1].param_fqns) > 0),
    ("schedule", lambda p: setattr(p.config, "schedule", "GPipe") or p, "; GPipe, M=4",
     lambda t: t.SETTINGS["schedule_class"] == "ScheduleGPipe"),
    ("virtual_stages", interleaved, "; stage 3 layers ln_f..lm_head (2), recompute off; Interleaved1F1B v=2",
     lambda t: t.SETTINGS["stage_to_rank"] == [0, 1, 0, 1]),
    ("num_microbatches", lambda p: setattr(p.config, "num_microbatches", 8) or p, "M=8,",
     lambda t: t.SETTINGS["num_microbatches"] == 8),
    ("micro_batch_size", lambda p: with_model_mbs(p, 4), "micro-batch 4,",
     lambda t: tuple(t.example_batch()[0][0].shape) == (4, 32)),
    ("precision", lambda p: setattr(p.config, "precision", "bf16_mixed") or p, ", bf16_mixed,",
     lambda t: t.BF16_MIXED and all(m.bf16_mixed for m in t.split_model(t.example_batch()[0]))),
    ("optimizer", lambda p: setattr(p.config, "optimizer", "sgd_momentum") or p, ", sgd_momentum,",
     lambda t: isinstance(o := t.make_optimizer([torch.nn.Parameter(torch.zeros(1))], t.parse_args([])),
                          torch.optim.SGD) and o.defaults["momentum"] == 0.9),
    ("data_parallel", lambda p: setattr(p.config, "data_parallel", 2) or p, "dp 2 (replica 1)",
     lambda t: t.parse_args([]).dp == 2),
]


@pytest.mark.parametrize("field, change, expected, behaves", CHANGES, ids=[c[0] for c in CHANGES])
def test_each_plan_field_changes_the_startup_line_and_the_job(load_job, tmp_path, field, change, expected, behaves):
    export_plan(gpt_plan(), tmp_path / "base")
    base = startup_lines(load_job(tmp_path / "base"))
    assert base == [BASE_LINE.format(rank=0, stage="stage 0 layers wte..layers.1 (4)"),
                    BASE_LINE.format(rank=1, stage="stage 1 layers layers.2..lm_head (4)")]
    export_plan(change(gpt_plan()), tmp_path / field)
    train = load_job(tmp_path / field)
    lines = startup_lines(train)
    assert expected in lines[1], lines
    assert lines[:len(base)] != base
    assert all(line.startswith(f"rank {r}: stage ") and not line.startswith("{") for r, line in enumerate(lines))
    assert behaves(train), field
    if field == "data_parallel":
        assert len(lines) == 4 and lines[3].startswith("rank 3: stage 1 ") and lines[3].endswith("(replica 1)")


def test_startup_line_shows_job_arguments_too(load_job, tmp_path):
    export_plan(gpt_plan(), tmp_path / "job")
    train = load_job(tmp_path / "job")
    lines = startup_lines(train, ["--max-grad-norm", "0", "--dp", "3"])
    assert len(lines) == 6 and lines[5].endswith("no clipping, dp 3 (replica 2)")


def hetero_plan() -> Plan:
    """Two unlike devices, the solver's device_order="auto" having put stage 0 on the big one (device 1)."""
    plan = gpt_plan()
    plan.cluster = Cluster(devices=[Device(name="small", memory_bytes=8 << 30),
                                    Device(name="big", memory_bytes=80 << 30)])
    plan.config.device_order = "auto"
    plan.stages[0].device, plan.stages[1].device = 1, 0
    return plan


@pytest.mark.parametrize("mutate, message", [
    (lambda p: setattr(p.config, "optimizer", "lion"), r"job runs adamw, adam, sgd, sgd_momentum; .* 'lion'"),
    (lambda p: setattr(p.config, "precision", "fp8"), r"job runs fp32, bf16_mixed; .* 'fp8'"),
    (lambda p: setattr(p.config, "micro_batch_size", 4), "micro_batch_size 4 but its model was profiled at 2"),
    (lambda p: (setattr(p.config, "schedule", "ZBH1"), setattr(p.stages[0], "recompute", True)),
     r"recomputes stage\(s\) 0 under ZBH1"),
])
def test_export_refuses_what_the_job_cannot_apply(mutate, message):
    plan = gpt_plan()
    mutate(plan)
    with pytest.raises(PipeplanError, match=message):
        render_job(plan)


def test_device_order_is_applied_or_refused():
    with pytest.raises(PipeplanError, match=r"stage 0 on device 1 \(big\), but the job starts pipeline rank 0 on "
                                            r"the cluster's device 0 \(small\)"):
        render_job(hetero_plan())
    alike = hetero_plan()
    alike.cluster.devices[1].memory_bytes = 8 << 30  # swapped but interchangeable devices: a relabelling
    assert '"stage_to_rank": [\n  0,\n  1\n ]' in render_job(alike)["train.py"]


def contract_table() -> dict[str, str]:
    """docs/export.md's table "Plan field -> how the job applies it": field name -> how."""
    text = (Path(__file__).parents[1] / "docs" / "export.md").read_text()
    section = text.split("## The plan -> job contract", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 2:
            for name in re.findall(r"`([a-z_.\[\]]+)`", cells[0]):
                rows[name] = cells[1]
    return rows


def test_docs_list_every_plan_field_and_how_the_job_applies_it():
    rows = contract_table()
    wanted = [f"config.{f.name}" for f in dataclasses.fields(TrainConfig)]
    wanted += [f"stages[].{f.name}" for f in dataclasses.fields(StagePlan)]
    wanted += [f"model.{f.name}" for f in dataclasses.fields(ModelInfo)]
    wanted += [f"solver.{f.name}" for f in dataclasses.fields(SolverInfo)]
    wanted += [f.name for f in dataclasses.fields(Plan) if f.name not in ("config", "stages", "model", "solver")]
    missing = [w for w in wanted if w not in rows]
    assert not missing, f"docs/export.md's contract table lacks {missing}"
    assert all(rows[w] for w in wanted)


# --------------------------------------------------------------------------- one real run
@pytest.mark.torchrun
def test_recompute_job_matches_single_process_and_says_what_it_applies(tmp_path):
    plan = gpt_plan()
    plan.config.recompute = "auto"
    plan.stages[0].recompute = True  # stage 0: token ids in (no input gradient), the tied wte
    job = export(tmp_path, "recompute", plan)
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node=2", "train.py", "--steps", str(STEPS)]
    proc = subprocess.run(cmd, cwd=job, env=job_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    assert_same_losses(json_lines(proc.stdout), single_reference(job, plan))
    started = sorted(line for line in proc.stderr.splitlines() if line.startswith("rank "))
    assert started == [BASE_LINE.format(rank=0, stage="stage 0 layers wte..layers.1 (4)").replace("off", "on"),
                       BASE_LINE.format(rank=1, stage="stage 1 layers layers.2..lm_head (4)")], proc.stderr[-3000:]
