"""The exported job's plan-independent runtime (planner/export/runtime/pipeline_runtime.py), imported
straight from the package: no plan, no rendering, no subprocess. The job folder holds the same file
(checked here byte for byte), so what passes here is what train.py runs."""

from __future__ import annotations

import ast
import json
import random
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from planner.export.runtime import RUNTIME_FILES
from planner.export.runtime import pipeline_runtime as rt
from sample_models.init import init_buffers, init_parameters

D = 8
STAGES = [["inp"], ["mid"], ["out"]]
RUNTIME_PATH = Path(rt.__file__)


class Shift(nn.Module):
    """A layer with a buffer: `running_mean` is a name init_buffers knows (reset to 0)."""

    def __init__(self, d: int, buffer_name: str = "running_mean") -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.buffer_name = buffer_name
        self.register_buffer(buffer_name, torch.ones(d))

    def forward(self, x):
        return torch.relu(self.lin(x) - getattr(self, self.buffer_name))


class Tiny(nn.Module):
    """Three layers, cut one per stage. Root-level ops exercise the stage rule: `x + arange` (no
    layer, fed by the input: joins its consumer's stage 0; the arange burns device="meta" into the trace), `y + h` (latest producer:
    stage 1, so h crosses boundary 0), `x.abs().mean()` (fed only by the input, first consumer in
    stage 2: so x is relayed through stages 0 and 1)."""

    def __init__(self, d: int = D, buffer_name: str = "running_mean") -> None:
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.mid = Shift(d, buffer_name)
        self.out = nn.Linear(d, 3)

    def forward(self, x):
        scale = x.abs().mean(-1, keepdim=True)
        h = self.inp(x + torch.arange(x.shape[-1], device=x.device, dtype=x.dtype))
        y = self.mid(h)
        return self.out(y + h) * scale


def meta_tiny(**kw) -> nn.Module:
    with torch.device("meta"):
        return Tiny(**kw)


def example(batch: int = 4, device: str = "meta") -> tuple[torch.Tensor]:
    return (torch.randn(batch, D, device=device) if device != "meta" else torch.empty(batch, D, device="meta"),)


def traced(**kw) -> torch.fx.GraphModule:
    return rt.trace_model(meta_tiny(**kw), example())


def real_stages(seed: int = 0, **kw) -> list[rt.StageModule]:
    """Tiny split into STAGES, every stage materialised on the CPU (what each rank does for its own)."""
    modules = rt.split_into_stages(traced(), STAGES, **kw)
    rt.stage_shapes(modules, example())
    cpu = torch.device("cpu")
    for m in modules:
        rt.retarget_devices(m, cpu)
        rt.materialize(m, cpu, seed, init_parameters, init_buffers)
    return modules


def run_chain(modules: list[rt.StageModule], inputs: tuple) -> torch.Tensor:
    args = inputs
    for m in modules:
        out = m(*args)
        args = out if isinstance(out, tuple) else (out,)
    assert len(args) == 1
    return args[0]


def unsplit(seed: int = 0) -> nn.Module:
    model = Tiny()
    init_parameters(model.named_parameters(), seed)
    assert init_buffers(model.named_buffers()) == []
    return model


# --------------------------------------------------------------------------- the file itself
def test_runtime_is_a_self_contained_job_file():
    """The job runs without pipeplan: the runtime imports only the standard library and torch (and
    safetensors, lazily, for pretrained weights), and
    holds nothing train.py renders (no placeholders, no SETTINGS)."""
    text = RUNTIME_PATH.read_text(encoding="utf-8")
    tree = ast.parse(text)
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the file is a top-level module in the job"
            roots.add(node.module.split(".")[0])
    # safetensors is optional: imported only inside the --weights / --save-weights functions
    assert roots - set(sys.stdlib_module_names) == {"torch", "safetensors"}
    top = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names} | \
          {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    assert top - set(sys.stdlib_module_names) == {"torch"}
    assert "@" not in text.replace("@torch.no_grad()", ""), "no @PLACEHOLDERS@ (and no other decorators)"
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"SETTINGS", "BF16_MIXED", "model_source"}, "plan and job state come in as arguments"
    assert RUNTIME_FILES == ("pipeline_runtime.py",) and RUNTIME_PATH.name in RUNTIME_FILES
    assert set(rt.__all__) <= set(dir(rt))


def test_the_job_folder_holds_the_runtime_unchanged(tmp_path):
    from helpers_export import gpt_tiny_stages, hand_plan

    from planner.export import export_plan, render_job

    plan = hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32)
    assert render_job(plan)["pipeline_runtime.py"] == RUNTIME_PATH.read_text(encoding="utf-8")
    export_plan(plan, tmp_path / "job")
    assert (tmp_path / "job" / "pipeline_runtime.py").read_bytes() == RUNTIME_PATH.read_bytes()
    train = (tmp_path / "job" / "train.py").read_text()
    assert "from pipeline_runtime import (" in train and "def split_into_stages" not in train


# --------------------------------------------------------------------------- stage rule
def test_layer_of_takes_the_longest_dotted_prefix():
    ids = ["layers", "layers.1", "layers.10", "head"]
    assert rt.layer_of("layers.1.attn.q", ids) == "layers.1"
    assert rt.layer_of("layers.10", ids) == "layers.10"
    assert rt.layer_of("layers.2.mlp", ids) == "layers"
    assert rt.layer_of("head_norm", ids) is None, "a prefix must end at a dot"
    assert rt.layer_of("", ids) is None


def test_assign_stages_follows_the_layer_rule():
    gm = traced()
    stage = rt.assign_stages(gm, STAGES)
    by_target: dict[str, set[int]] = {}
    for n in gm.graph.nodes:
        if n.name in stage:
            by_target.setdefault(str(n.target).split(".")[1] if "aten" in str(n.target) else str(n.target),
                                 set()).add(stage[n.name])
    assert by_target["abs"] == by_target["mean"] == {2}, "fed by the input only: its first consumer's stage"
    assert by_target["arange"] == {0}, "no inputs: its consumer's stage"
    assert by_target["add"] == {0, 1}, "x + arange in stage 0 (its consumer's); y + h in stage 1 (latest producer)"
    assert by_target["mul"] == {2}
    assert by_target["linear"] == {0, 1, 2} and by_target["relu"] == {1}
    compute = {n.name for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")}
    assert set(stage) == compute


def test_assign_stages_rejects_plans_for_another_model():
    with pytest.raises(rt.JobError, match=r"plan layers \['nope'\] are not modules of this model"):
        rt.assign_stages(traced(), [["inp"], ["mid", "nope"], ["out"]])
    with pytest.raises(rt.JobError, match="not in the model's data-flow order"):
        rt.assign_stages(traced(), [["out"], ["mid"], ["inp"]])
    with pytest.raises(rt.JobError, match=r"stages \[1\] compute nothing"):
        rt.split_into_stages(traced(), [["inp", "mid"], [], ["out"]])


# --------------------------------------------------------------------------- split
def test_split_relays_skips_along_the_chain_and_owns_parameters_by_fqn():
    modules = rt.split_into_stages(traced(), STAGES)
    assert [m.index for m in modules] == [0, 1, 2]
    x = modules[0].in_names[0]
    assert [m.in_names[0] for m in modules] == [x, x, x] and [m.out_names[0] for m in modules[:2]] == [x, x], \
        "the input is relayed through stage 1 to stage 2, where x.abs() runs"
    assert [len(m.in_names) for m in modules] == [1, 2, 2], "stage 1 gets h, stage 2 gets y + h (and both x)"
    assert [m.in_names for m in modules[1:]] == [m.out_names for m in modules[:2]], "the chain contract"
    assert len(modules[2].out_names) == 1
    assert [sorted(m.param_fqns) for m in modules] == [
        ["inp.bias", "inp.weight"], ["mid.lin.bias", "mid.lin.weight"], ["out.bias", "out.weight"]]
    assert modules[1].buffer_fqns == ["mid.running_mean"] and not modules[0].buffer_fqns
    assert all(p.is_meta for m in modules for p in m.parameters()), "split on meta: no memory yet"


def test_stage_shapes_are_one_micro_batch_with_training_requires_grad():
    modules = rt.split_into_stages(traced(), STAGES)
    shapes = rt.stage_shapes(modules, example(batch=5))
    assert len(shapes) == 3
    (in0,), out0 = shapes[0]
    assert in0.shape == (5, D) and in0.is_meta and not in0.requires_grad
    assert [t.shape for t in out0] == [(5, D), (5, D)]
    assert [t.requires_grad for t in out0] == [False, True], "h carries a gradient, the relayed input does not"
    assert [(t.shape, t.requires_grad) for t in shapes[1][0]] == [(t.shape, t.requires_grad) for t in out0]
    assert [tuple(t.shape) for t in shapes[2][1]] == [(5, 3)]
    assert all(m.out_dtypes == [torch.float32] * len(m.out_names) for m in modules)


def test_retarget_devices_rewrites_meta_devices_burned_into_the_trace():
    def meta_devices(m: rt.StageModule) -> int:
        return sum(isinstance(a, torch.device) and a.type == "meta"
                   for n in m.submod.graph.nodes for a in (*n.args, *n.kwargs.values()))

    modules = rt.split_into_stages(traced(), STAGES)
    assert meta_devices(modules[0]) >= 1, "the arange was traced with device=meta"
    rt.retarget_devices(modules[0], torch.device("cpu"))
    assert meta_devices(modules[0]) == 0
    assert "device(type='meta')" not in modules[0].submod.code


def test_split_stages_compute_exactly_what_the_unsplit_model_computes():
    """Forward and every parameter's gradient: stages materialised one by one from the per-FQN rule
    equal the unsplit model built and initialised whole."""
    torch.manual_seed(0)
    (x,) = example(device="cpu")
    modules = real_stages(seed=3)
    model = unsplit(seed=3)
    assert torch.equal(modules[1].buf_0, torch.zeros(D)), "the buffer got init_buffers' value, not ones"
    out_split, out_whole = run_chain(modules, (x,)), model(x)
    torch.testing.assert_close(out_split, out_whole, rtol=0, atol=1e-6)
    out_split.square().sum().backward()
    out_whole.square().sum().backward()
    whole = dict(model.named_parameters())
    split_grads = {f: p.grad for m in modules for f, p in zip(m.param_fqns, m.params)}
    assert set(split_grads) == set(whole)
    for fqn, g in split_grads.items():
        torch.testing.assert_close(g, whole[fqn].grad, rtol=1e-6, atol=1e-6, msg=fqn)
    assert not torch.equal(run_chain(real_stages(seed=4), (x,)), out_whole.detach()), "the seed matters"


def test_materialize_refuses_a_buffer_without_an_initial_value():
    modules = rt.split_into_stages(rt.trace_model(meta_tiny(buffer_name="table"), example()), STAGES)
    rt.retarget_devices(modules[1], torch.device("cpu"))
    with pytest.raises(rt.JobError, match="buffer mid.table has no known initial value"):
        rt.materialize(modules[1], torch.device("cpu"), 0, init_parameters, init_buffers)


def test_bf16_mixed_stages_autocast_but_send_their_fp32_dtypes():
    (x,) = example(device="cpu")
    modules = real_stages(bf16_mixed=True)
    sent = modules[0](x)
    assert [t.dtype for t in sent] == [torch.float32, torch.float32]
    modules[0].out_dtypes = None
    assert [t.dtype for t in modules[0](x)] == [torch.float32, torch.bfloat16], "autocast makes h = inp(...) bf16"
    assert all(p.dtype == torch.float32 for m in modules for p in m.parameters()), "weights stay fp32"
    fp32 = real_stages(bf16_mixed=False)
    assert [t.dtype for t in fp32[0](x)] == [torch.float32, torch.float32]


def test_mixed_precision_and_upcast():
    cpu = torch.device("cpu")
    with rt.mixed_precision(cpu, True):
        assert torch.is_autocast_enabled("cpu")
    with rt.mixed_precision(cpu, False):
        assert not torch.is_autocast_enabled("cpu")
    with rt.mixed_precision(torch.device("meta"), True):
        assert not torch.is_autocast_enabled("cpu")
    out = rt.upcast([torch.ones(2, dtype=torch.bfloat16), (torch.ones(1, dtype=torch.bfloat16), torch.ones(1, dtype=torch.long))])
    assert isinstance(out, list) and out[0].dtype == torch.float32
    assert isinstance(out[1], tuple) and [t.dtype for t in out[1]] == [torch.float32, torch.long]
    marker = object()
    assert rt.upcast(marker) is marker


# --------------------------------------------------------------------------- data
def test_check_batch_names_the_expected_shape():
    ex = (torch.empty(2, 5, dtype=torch.long, device="meta"), torch.empty(5, 5, device="meta"))
    good = (torch.zeros(8, 5, dtype=torch.long), torch.zeros(5, 5))
    rt.check_batch(good, torch.zeros(8), ex, [True, False], 4)
    with pytest.raises(rt.JobError, match=r"input 0 has shape \(8, 4\) torch.int64.*need \(8, 5\) torch.int64"):
        rt.check_batch((torch.zeros(8, 4, dtype=torch.long), good[1]), torch.zeros(8), ex, [True, False], 4)
    with pytest.raises(rt.JobError, match="input 0 has shape .* torch.float32"):
        rt.check_batch((torch.zeros(8, 5), good[1]), torch.zeros(8), ex, [True, False], 4)
    with pytest.raises(rt.JobError, match="returned 1 inputs; the model was traced with 2"):
        rt.check_batch(good[:1], torch.zeros(8), ex, [True, False], 4)
    with pytest.raises(rt.JobError, match="target has 7 rows but the inputs have 8"):
        rt.check_batch(good, torch.zeros(7), ex, [True, False], 4)


def test_micro_batches_split_batched_inputs_and_replicate_the_others():
    x, mask, target = torch.arange(12).reshape(6, 2), torch.ones(3, 3), torch.arange(6)
    parts = rt.micro_batches((x, mask), target, 3, [True, False])
    assert len(parts) == 3
    for i, ((xi, mi), ti) in enumerate(parts):
        assert torch.equal(xi, x[2 * i:2 * i + 2]) and mi is mask and torch.equal(ti, target[2 * i:2 * i + 2])


# --------------------------------------------------------------------------- gradients
def param_with_grad(values: list[float]) -> nn.Parameter:
    p = nn.Parameter(torch.zeros(len(values)))
    p.grad = torch.tensor(values)
    return p


def test_clip_by_global_norm():
    a, b = param_with_grad([3.0]), param_with_grad([4.0])
    assert rt.clip_by_global_norm([a, b], [a, b], 10.0) == pytest.approx(5.0)
    assert a.grad.item() == 3.0, "under the limit: untouched"
    assert rt.clip_by_global_norm([a, b], [a, b], 0.0) == pytest.approx(5.0)
    assert a.grad.item() == 3.0, "max_norm 0 disables clipping"
    assert rt.clip_by_global_norm([a, b], [a, b], 1.0) == pytest.approx(5.0)
    assert a.grad.item() == pytest.approx(0.6, rel=1e-6) and b.grad.item() == pytest.approx(0.8, rel=1e-6)
    # a tied copy is counted once but scaled like every local gradient
    c, copy = param_with_grad([3.0]), param_with_grad([3.0])
    d = param_with_grad([4.0])
    assert rt.clip_by_global_norm([c, d], [c, copy, d], 2.5) == pytest.approx(5.0)
    assert c.grad.item() == copy.grad.item() == pytest.approx(1.5, rel=1e-6)


def test_sync_gradients_sums_tied_copies_on_one_rank():
    tied_a, tied_b = param_with_grad([1.0, 2.0]), param_with_grad([10.0, 20.0])
    unused = nn.Parameter(torch.ones(3))
    alone = param_with_grad([5.0])
    rt.sync_gradients({"wte.weight": [tied_a, tied_b], "unused": [unused], "alone": [alone]}, [], None, 1)
    assert tied_a.grad.tolist() == tied_b.grad.tolist() == [11.0, 22.0]
    assert tied_a.grad is not tied_b.grad, "each stage keeps its own gradient tensor"
    assert unused.grad is not None and unused.grad.tolist() == [0.0, 0.0, 0.0]
    assert alone.grad.tolist() == [5.0]


def test_all_reduce_mean_flattens_and_divides():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        g1, g2 = torch.arange(6.0).reshape(2, 3), torch.tensor([8.0])
        rt.all_reduce_mean([g1, g2], None, 2)
        assert g1.tolist() == [[0.0, 0.5, 1.0], [1.5, 2.0, 2.5]] and g2.tolist() == [4.0]
        p = param_with_grad([3.0, 4.0])
        assert rt.clip_by_global_norm([p], [p], 1.0, dist.group.WORLD) == pytest.approx(5.0)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- logging
def test_log_step_prints_one_json_line(capsys):
    rt.log_step(3, 1.25, 0.5, 16, torch.device("cpu"))
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    record = json.loads(line)
    assert record["step"] == 3 and record["loss"] == 1.25 and record["step_time_s"] == 0.5
    assert record["samples_per_s"] == 32.0 and record["max_mem_bytes"] > 1 << 20
    assert rt.pick_device(0) == torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")


# --------------------------------------------------------------------------- checkpoints
def trained(seed: int) -> tuple[dict[str, nn.Parameter], torch.optim.Optimizer]:
    torch.manual_seed(seed)
    params = {"a.weight": nn.Parameter(torch.randn(3, 2)), "b.bias": nn.Parameter(torch.randn(2))}
    opt = torch.optim.AdamW(list(params.values()), lr=0.1)
    for p in params.values():
        p.grad = torch.randn_like(p)
    opt.step()
    return params, opt


def test_checkpoint_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    params, opt = trained(0)
    rt.save_checkpoint(tmp_path, 7, {"stage_0": params}, opt, 1, True)
    rt.finish_checkpoint(tmp_path, 7)
    assert (tmp_path / "latest").read_text() == "7"
    assert sorted(p.name for p in (tmp_path / "step_000007").iterdir()) == ["rank_1.pt", "stage_0.pt"]
    after_save = (torch.rand(3), random.random())

    fresh, fresh_opt = trained(1)  # other values and another optimizer state: all must be overwritten
    assert not torch.equal(fresh["a.weight"], params["a.weight"])
    assert rt.load_checkpoint(tmp_path, {"stage_0": fresh}, fresh_opt, 1) == 7
    for f in params:
        assert torch.equal(fresh[f], params[f]), f
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(fresh_opt.state[fresh[f]][key], opt.state[params[f]][key]), (f, key)
    assert torch.equal(torch.rand(3), after_save[0]) and random.random() == after_save[1], "RNG continues"
    # the restored run continues exactly as the original
    for ps, o in ((params, opt), (fresh, fresh_opt)):
        for p in ps.values():
            p.grad = torch.full_like(p, 0.5)
        o.step()
    assert all(torch.equal(fresh[f], params[f]) for f in params)


def test_checkpoint_without_model_files_and_resume_without_checkpoint(tmp_path):
    params, opt = trained(0)
    rt.save_checkpoint(tmp_path, 2, {"stage_1": params}, opt, 3, False)  # another data-parallel replica
    assert [p.name for p in (tmp_path / "step_000002").iterdir()] == ["rank_3.pt"]
    assert not (tmp_path / "latest").exists()
    with pytest.raises(rt.JobError, match="--resume: no checkpoint in .* train with --checkpoint-every first"):
        rt.load_checkpoint(tmp_path, {"stage_1": params}, opt, 3)
