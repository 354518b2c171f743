"""Exporting a `file:PATH.py:FACTORY` model: the file is copied as text (never run by pipeplan),
bad paths are refused clearly, and the job trains for real (torchrun, gloo) exactly like
`train.py --single-process`."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers_export import hand_plan, losses, run_job

from core.errors import PipeplanError
from planner.export import export_plan, render_job

STEPS = 3
TOL = 1e-5

USER_FILE = textwrap.dedent('''
    from pathlib import Path

    import torch
    import torch.nn.functional as F
    from torch import nn

    # Importing this file leaves a mark next to it: pipeplan's export must never do that.
    Path(__file__).with_name("imported.marker").write_text("imported")


    class Block(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.fc = nn.Linear(d, d)

        def forward(self, x):
            return x + torch.relu(self.fc(self.norm(x)))


    class Net(nn.Module):
        def __init__(self, vocab=64, d=32, n=4):
            super().__init__()
            self.embed = nn.Embedding(vocab, d)
            self.blocks = nn.ModuleList(Block(d) for _ in range(n))
            self.head = nn.Linear(d, vocab)
            self.register_buffer("scale", torch.linspace(0.5, 1.5, d))  # computed in __init__, not a parameter

        def forward(self, tokens):
            h = self.embed(tokens) * self.scale
            for block in self.blocks:
                h = block(h)
            return self.head(h)


    def make(batch_size=2, seq_len=8):
        tokens = torch.randint(0, 64, (batch_size, seq_len + 1))
        loss = lambda out, t: F.cross_entropy(out.flatten(0, 1), t.flatten())
        return Net(), (tokens[:, :-1],), loss, tokens[:, 1:]


    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(16, 32)
            self.mid = nn.Sequential(nn.ReLU(), nn.Linear(32, 32))
            self.out = nn.Linear(32, 4)

        def forward(self, x, bias):
            return self.out(self.mid(self.inp(x) + bias))


    def make_plain(batch_size=3):
        """No loss, no target; `bias` does not follow batch_size (replicated to every micro-batch)."""
        return Mlp(), (torch.randn(batch_size, 16), torch.randn(32))


    def make_fixed():
        """No batch_size parameter; inputs a bare tensor (the profiler accepts both)."""
        return nn.Sequential(nn.Linear(16, 8), nn.Tanh()), torch.randn(4, 16)
''')


@pytest.fixture()
def user_file(tmp_path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    path = src / "user_net.py"
    path.write_text(USER_FILE)
    return path


def net_plan(source: str, **kw):
    return hand_plan(source, [["embed", "blocks.0", "blocks.1"], ["blocks.2", "blocks.3", "head"]], **kw)


def test_export_copies_the_file_without_running_it(user_file, tmp_path):
    files = render_job(net_plan(f"file:{user_file}:make"))
    assert files["model/user_model.py"] == USER_FILE
    assert {"model/__init__.py", "model/init.py", "model/user_model.py"} <= set(files)
    assert 'FACTORY = "make"' in files["model/__init__.py"]
    assert "Your model file" in files["README.md"] and "MSE against zeros" in files["README.md"]
    export_plan(net_plan(f"file:{user_file}:make"), tmp_path / "job")
    assert not list(tmp_path.rglob("imported.marker")), "export imported the user's file"
    # sample and HF jobs get no such section
    assert "Your model file" not in render_job(hand_plan("sample:gpt:tiny", [["wte", "wpe"], ["lm_head"]],
                                                         seq_len=32))["README.md"]


def test_plan_with_a_bare_file_name_resolves_from_the_current_folder(user_file, monkeypatch, tmp_path):
    # a profile records file:NAME.py:FACTORY (the name as given); export resolves it like the profiler
    monkeypatch.chdir(user_file.parent)
    assert "model/user_model.py" in render_job(net_plan("file:user_net.py:make"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipeplanError, match="run export from that folder or pass --model-source file:PATH.py:FACTORY"):
        render_job(net_plan("file:user_net.py:make"))
    assert "model/user_model.py" in render_job(net_plan("file:user_net.py:make"),
                                               model_source=f"file:{user_file}:make")


def test_bad_file_sources_are_refused_clearly(user_file, tmp_path):
    (tmp_path / "folder.py").mkdir()
    os.mkfifo(tmp_path / "pipe.py")
    (tmp_path / "broken.py").write_text("def make(:\n")
    (tmp_path / "latin.py").write_bytes(b"# caf\xe9\n")
    cases = [
        (f"file:{tmp_path}/missing.py:make", "does not exist"),
        (f"file:{tmp_path}/model.txt:make", "is not a .py file"),
        (f"file:{user_file}", "names no factory function"),
        (f"file:{tmp_path}/folder.py:make", "is not a regular file"),
        (f"file:{tmp_path}/pipe.py:make", "is not a regular file"),
        (f"file:{tmp_path}/broken.py:make", r"is not valid Python \(line 1"),
        (f"file:{tmp_path}/latin.py:make", "is not UTF-8"),
        (f"file:{user_file}:nope", "defines no top-level 'nope'"),
    ]
    for source, message in cases:
        with pytest.raises(PipeplanError, match=message):
            render_job(net_plan(source), model_source=source)


def test_exported_adapter_passes_the_projects_lint(user_file, tmp_path):
    ruff = Path(sys.executable).parent / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    export_plan(net_plan(f"file:{user_file}:make"), tmp_path / "job")
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    proc = subprocess.run([str(ruff), "check", "--config", str(pyproject), "--output-format", "concise",
                           str(tmp_path / "job" / "train.py"), str(tmp_path / "job" / "pipeline_runtime.py"),
                           str(tmp_path / "job" / "model" / "__init__.py")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_adapter_follows_the_profilers_factory_conventions(load_job, user_file, tmp_path):
    """In-process: what model/__init__.py makes of each factory form (this runs the copied file)."""
    import torch

    export_plan(net_plan(f"file:{user_file}:make"), tmp_path / "lm")
    train = load_job(tmp_path / "lm")
    adapter = train.model_source
    example, batched = train.example_batch()
    assert batched == [True] and example[0].shape == (2, 8) and example[0].is_meta
    (tokens,), target = adapter.make_batch(5, generator=torch.Generator().manual_seed(1))
    assert tokens.shape == target.shape == (5, 8) and tokens.dtype == torch.long
    assert 0 <= int(tokens.min()) and int(tokens.max()) < 64, "token ids stay valid: rows of the factory's example"
    again, _ = adapter.make_batch(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(tokens, again[0]), "deterministic in the generator"
    scale = torch.empty(32)
    assert adapter.init_buffers([("scale", scale)]) == [] and torch.equal(scale, torch.linspace(0.5, 1.5, 32))
    assert all(p.is_meta for p in adapter._example()[0].parameters()), "no parameter memory for the example"

    export_plan(hand_plan(f"file:{user_file}:make_fixed", [["0"], ["1"]], micro_batch_size=3), tmp_path / "fixed")
    train = load_job(tmp_path / "fixed")
    example, batched = train.example_batch()
    assert batched == [True] and example[0].shape == (3, 16)
    (x,), target = train.model_source.make_batch(6)
    pool = train.model_source._example()[1][0]
    assert x.shape == (6, 16) and all(any(torch.equal(row, p) for p in pool) for row in x)
    assert target.shape == (6,) and not target.any(), "placeholder target of zeros"
    loss = train.model_source.loss_fn(torch.full((6, 8), 2.0), target)
    assert float(loss) == 4.0, "default loss: mean square of the output"


def assert_same(pipeline: list[dict], single: list[dict]) -> None:
    assert [d["step"] for d in pipeline] == [d["step"] for d in single] == list(range(1, STEPS + 1))
    diffs = [abs(a - b) for a, b in zip(losses(pipeline), losses(single))]
    assert max(diffs) <= TOL, f"pipeline {losses(pipeline)} vs single {losses(single)}"
    assert len(set(losses(single))) > 1, "the model does not train"


@pytest.mark.slow
@pytest.mark.torchrun
def test_profiled_file_model_trains_like_single_process(user_file, monkeypatch, tmp_path):
    """The real flow: profile the file in the sandbox, solve for 2 devices, export, torchrun."""
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve
    from profiler import load_profile

    monkeypatch.chdir(user_file.parent)
    profile = load_profile("file:user_net.py:make", allow_code=True, batch_size=2)
    (user_file.parent / "imported.marker").unlink()  # the profiler's sandbox ran the file; export must not
    plan = solve(profile, Cluster.uniform(2, memory_bytes=8 << 30),
                 TrainConfig(schedule="1F1B", num_microbatches=4, micro_batch_size=2))
    assert plan.feasible and len(plan.stages) == 2
    job = tmp_path / "job"
    export_plan(plan, job)
    assert not (user_file.parent / "imported.marker").exists()
    single = run_job(job, ["--steps", str(STEPS)], None)
    assert_same(run_job(job, ["--steps", str(STEPS)], 2), single)
    assert (job / "model" / "imported.marker").exists(), "train.py ran the copied file"
    assert 3.5 < single[0]["loss"] < 5.0, "cross-entropy over 64 tokens starts near ln(64) = 4.16"


@pytest.mark.slow
@pytest.mark.torchrun
def test_file_model_without_loss_uses_the_default_and_replicates_fixed_inputs(user_file, tmp_path):
    plan = hand_plan(f"file:{user_file}:make_plain", [["inp"], ["mid", "out"]], num_microbatches=2,
                     micro_batch_size=3)
    job = tmp_path / "job"
    export_plan(plan, job)
    assert_same(run_job(job, ["--steps", str(STEPS)], 2), run_job(job, ["--steps", str(STEPS)], None))
