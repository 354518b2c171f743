"""The exported folder: its files, the zip the app offers (byte-identical to `pipeplan export`),
bad input as one clear line, and train.py's stage rule agreeing with the profiler's layer rule."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import pytest
from helpers_export import gpt_tiny_stages, hand_plan

from cli import main as cli_main
from core.errors import PipeplanError
from planner.export import export_plan, export_zip_bytes, render_job

JOB_FILES = {"train.py", "pipeline_runtime.py", "launch.sh", "slurm.sbatch", "plan.json", "README.md",
             "model/__init__.py", "model/init.py", "model/spec.py", "model/gpt.py"}


def gpt_plan(**kw):
    return hand_plan("sample:gpt:tiny", gpt_tiny_stages(2), seq_len=32, **kw)


def test_export_writes_the_job_folder(tmp_path):
    written = export_plan(gpt_plan(), tmp_path / "job")
    rel = {p.relative_to(tmp_path / "job").as_posix() for p in written}
    assert rel == JOB_FILES
    job = tmp_path / "job"
    assert (job / "train.py").stat().st_mode & 0o111 and (job / "launch.sh").stat().st_mode & 0o111
    train = (job / "train.py").read_text()
    settings = json.loads(train.split('SETTINGS = json.loads(r"""')[1].split('""")')[0])
    assert settings["stages"] == gpt_tiny_stages(2)
    assert settings["stage_to_rank"] == [0, 1] and settings["schedule"] == "1F1B"
    assert settings["num_microbatches"] == 4 and settings["micro_batch_size"] == 2
    assert "import planner" not in train and "import profiler" not in train and "sample_models" not in train
    assert "SHAPE = 32" in (job / "model" / "__init__.py").read_text()
    assert json.loads((job / "plan.json").read_text())["stages"][1]["node_ids"] == gpt_tiny_stages(2)[1]
    readme = (job / "README.md").read_text()
    assert "| 1 | 1 | layers.2, layers.3, ln_f, lm_head |" in readme and "--single-process" in readme
    assert "--rdzv-endpoint" in (job / "launch.sh").read_text()
    assert "#SBATCH --nodes=1" in (job / "slurm.sbatch").read_text()


def test_zip_bytes_equal_the_files_pipeplan_export_writes(tmp_path, capsys):
    plan = gpt_plan()
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(plan.to_json())
    assert cli_main(["export", str(plan_file), "-o", str(tmp_path / "job")]) == 0
    data = export_zip_bytes(plan)
    assert data == export_zip_bytes(plan), "zip bytes must be reproducible"
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = set(zf.namelist())
        assert names == JOB_FILES
        for name in names:
            assert zf.read(name) == (tmp_path / "job" / name).read_bytes(), name
        assert zf.getinfo("launch.sh").external_attr >> 16 & 0o111
    # --zip writes those same bytes
    assert cli_main(["export", str(plan_file), "-o", str(tmp_path / "job2"), "--zip"]) == 0
    assert (tmp_path / "job2.zip").read_bytes() == data


def test_interleaved_and_zbv_use_the_schedules_placement():
    layers = ["wte", "wpe", *[f"layers.{i}" for i in range(4)], "ln_f", "lm_head"]
    i1 = render_job(hand_plan("sample:gpt:tiny", [[x] for x in layers], schedule="Interleaved1F1B",
                              virtual_stages=2, seq_len=32))
    assert '"stage_to_rank": [\n  0,\n  1,\n  2,\n  3,\n  0,\n  1,\n  2,\n  3\n ]' in i1["train.py"]
    zbv = render_job(hand_plan("sample:gpt:tiny", gpt_tiny_stages(4), schedule="ZBV", seq_len=32))
    assert '"stage_to_rank": [\n  0,\n  1,\n  1,\n  0\n ]' in zbv["train.py"]


@pytest.mark.parametrize("mutate, message", [
    (lambda p: setattr(p, "feasible", False), "infeasible"),
    (lambda p: setattr(p.config, "schedule", "PipeDream2BW"), "re-plan with one of those"),
    (lambda p: (setattr(p.config, "schedule", "ZBH1"), setattr(p.config, "num_microbatches", 5)),
     "ZBH1 .* runs micro-batches in rounds"),
    (lambda p: setattr(p.stages[1], "device", 0), "needs"),
    (lambda p: setattr(p.config, "num_microbatches", None), "num_microbatches"),
])
def test_unexportable_plans_raise_clear_errors(mutate, message):
    plan = gpt_plan()
    mutate(plan)
    with pytest.raises(PipeplanError, match=message):
        render_job(plan)


def test_model_sources(tmp_path):
    with pytest.raises(PipeplanError, match="unknown sample model 'nope'"):
        render_job(gpt_plan(), model_source="sample:nope")
    with pytest.raises(PipeplanError, match="export supports sample:NAME"):
        render_job(gpt_plan(), model_source="profile:x.json")
    with pytest.raises(PipeplanError, match="does not exist"):
        render_job(gpt_plan(), model_source=f"hf:{tmp_path}/missing.json")
    bert = tmp_path / "bert.json"
    bert.write_text(json.dumps({"model_type": "bert", "vocab_size": 100, "architectures": ["BertForMaskedLM"]}))
    model = render_job(gpt_plan(), model_source=f"hf:{bert}")["model/__init__.py"]  # every task exports
    assert "TASK = 'masked-lm'" in model and "MODEL_CLASS = 'BertForMaskedLM'" in model
    vit = tmp_path / "vit.json"
    vit.write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(PipeplanError, match="has no image_size; an HF image classification needs one"):
        render_job(gpt_plan(), model_source=f"hf:{vit}")
    # a profile-derived plan exports with the model named explicitly
    files = render_job(gpt_plan(), model_source="sample:gpt:tiny")
    assert "model/gpt.py" in files


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert cli_main(["export", str(tmp_path / "missing.json"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli_main(["export", str(bad), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipeplan export: error:") and err.count("\n") == 1


@pytest.mark.parametrize("source, stages, kw", [
    ("sample:gpt:tiny", [["wte", "wpe", "layers.0"], ["layers.1", "layers.2", "layers.3", "ln_f", "lm_head"]],
     {"seq_len": 32}),
    ("sample:dlrm:tiny", [["bottom_mlp.0", "bottom_mlp.1", *[f"embeddings.{i}" for i in range(8)]],
                          ["top_mlp.0", "top_mlp.1", "top_mlp.2"]], {}),
    ("sample:unet3d:tiny", [["down.0", "down.1"], ["down.2", "bottleneck", "up.0", "up.1", "up.2", "head"]],
     {"image_size": 16, "micro_batch_size": 1}),
    # one layer per stage: the root-level add (wte + wpe) runs after wpe's stage, the arange before it
    ("sample:gpt:tiny", [[x] for x in ["wte", "wpe", *[f"layers.{i}" for i in range(4)], "ln_f", "lm_head"]],
     {"seq_len": 32}),
])
def test_train_py_stage_rule_agrees_with_profiler_layer_rule(load_job, tmp_path, source, stages, kw):
    """Every graph op runs in the stage that holds the profile layer the profiler assigned it to,
    so the plan's costs describe what each exported stage computes."""
    from profiler.trace import trace_model

    export_plan(hand_plan(source, stages, **kw), tmp_path / "job")
    train = load_job(tmp_path / "job")
    runtime = sys.modules["pipeline_runtime"]  # the job's copy, which train.py imported
    example, _ = train.example_batch()
    node_stage = runtime.assign_stages(train.trace_model(train.meta_model(), example), train.SETTINGS["stages"])
    with __import__("torch").device("meta"):
        traced = trace_model(train.model_source.build_model(), example)
    layer_stage = {lid: s for s, ids in enumerate(stages) for lid in ids}
    expected = {name: layer_stage[lay] for name, lay in traced.node_layer.items()}
    assert node_stage == expected
    modules = train.split_into_stages(train.trace_model(train.meta_model(), example), train.SETTINGS["stages"])
    assert len(modules) == len(stages) and all(m.param_fqns for m in modules)
    shapes = train.stage_shapes(modules, example)
    assert all(out[0].requires_grad for _, out in shapes), "every stage output carries a gradient"


def test_train_py_rejects_plan_layers_the_model_lacks(load_job, tmp_path):
    export_plan(hand_plan("sample:gpt:tiny", [["wte", "wpe", "layers.0"], ["layers.9", "lm_head"]], seq_len=32),
                tmp_path / "job")
    train = load_job(tmp_path / "job")
    example, _ = train.example_batch()
    with pytest.raises(train.JobError, match=r"plan layers \['layers.9'\] are not modules of this model"):
        train.split_into_stages(train.trace_model(train.meta_model(), example), train.SETTINGS["stages"])


def test_exported_python_passes_the_projects_lint(tmp_path):
    import shutil
    import subprocess

    ruff = Path(sys.executable).parent / "ruff"
    ruff = str(ruff) if ruff.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    export_plan(gpt_plan(), tmp_path / "gpt")
    config = tmp_path / "hf" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"model_type": "llama", "vocab_size": 128, "hidden_size": 32,
                                  "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}))
    export_plan(hand_plan(f"hf:{config}", [["model.embed_tokens", "model.layers.0"], ["model.layers.1", "lm_head"]],
                          seq_len=8), tmp_path / "llama")
    pyproject = Path(__file__).parents[1] / "pyproject.toml"
    proc = subprocess.run([ruff, "check", "--config", str(pyproject), "--output-format", "concise",
                           str(tmp_path / "gpt"), str(tmp_path / "llama")], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_launch_scripts_parse_and_refuse_bad_layouts(tmp_path):
    import subprocess

    job = tmp_path / "job"
    export_plan(gpt_plan(), job)
    for script in ("launch.sh", "slurm.sbatch"):
        assert subprocess.run(["bash", "-n", str(job / script)], check=False).returncode == 0, script
    uneven = subprocess.run([str(job / "launch.sh"), "--nnodes", "3"], capture_output=True, text=True, check=False)
    assert uneven.returncode == 2 and "do not split evenly over 3 nodes" in uneven.stderr
    no_endpoint = subprocess.run([str(job / "launch.sh"), "--nnodes", "2", "--node-rank", "1"], capture_output=True,
                                 text=True, check=False)
    assert no_endpoint.returncode == 2 and "--rdzv-endpoint" in no_endpoint.stderr


def test_train_py_wrong_process_count_is_one_clear_line(tmp_path):
    import os
    import subprocess

    job = tmp_path / "job"
    export_plan(gpt_plan(), job)
    env = dict(os.environ, WORLD_SIZE="3", RANK="0", LOCAL_RANK="0")
    proc = subprocess.run([sys.executable, "train.py", "--steps", "1"], cwd=job, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("train.py: error: world size is 3 but the plan needs 2 pipeline ranks x 1 "
                                   "data-parallel replicas = 2 processes: run `torchrun --nproc-per-node 2 train.py` "
                                   "(or --single-process)")
