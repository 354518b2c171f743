"""Shared helpers for the exporter tests (not a test module: pytest does not collect it).

- hand_plan / gpt_tiny_stages: hand-built plans (node ids = module paths), so the exporter tests
  do not depend on the solver; test_export_train.py's test_profile_solve_export_flow covers
  profile -> solve -> export.
- run_job / check_equivalence / ...: run an exported job for real (torchrun with gloo on CPU,
  or `train.py --single-process`) and compare per-step losses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from planner.contracts.cluster import Cluster
from planner.contracts.config import TrainConfig
from planner.contracts.plan import Plan, StagePlan
from planner.costmodel.memory import StageMemory
from planner.export import export_plan
from profiler.profile import ModelInfo

GIB = 1 << 30

# -- hand-built plans ----------------------------------------------------------


def hand_plan(source: str, stages: list[list[str]], *, schedule: str = "1F1B", num_microbatches: int | None = None,
              micro_batch_size: int = 2, data_parallel: int = 1, seq_len: int | None = None,
              image_size: int | None = None, virtual_stages: int = 1) -> Plan:
    """A plan with these stages (1 ms forward, 2 ms backward each); num_microbatches defaults to
    max(4, devices), which every schedule's export accepts."""
    from planner.pipeline.schedules import chunks_per_device, stage_to_device

    devices = len(stages) // chunks_per_device(schedule, virtual_stages)
    num_microbatches = num_microbatches if num_microbatches is not None else max(4, devices)
    config = TrainConfig(schedule=schedule, num_microbatches=num_microbatches, micro_batch_size=micro_batch_size,
                         data_parallel=data_parallel, virtual_stages=virtual_stages)
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


# -- an exported job in real processes -------------------------------------------

VENV_BIN = Path(sys.executable).parent
TOL = 1e-5
STEPS = 5


def job_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)  # the job must not need pipeplan on the path
    return env


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def run_job(job: Path, args: list[str], nproc: int | None, timeout: float = 300) -> list[dict]:
    """Run the job's train.py: under torchrun with nproc processes, or --single-process (nproc None)."""
    if nproc is None:
        cmd = [sys.executable, "train.py", "--single-process", *args]
    else:
        cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "train.py", *args]
    proc = subprocess.run(cmd, cwd=job, env=job_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json_lines(proc.stdout)


def tiny_llama_config(folder: Path) -> list[list[str]]:
    """Save a 4-layer Llama config.json into `folder` (skips without transformers); returns a 2-stage split."""
    import pytest

    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    config.save_pretrained(folder)
    return [["model.embed_tokens", "model.rotary_emb", "model.layers.0", "model.layers.1"],
            ["model.layers.2", "model.layers.3", "model.norm", "lm_head"]]


def run_job_until_step(job: Path, args: list[str], nproc: int, stop_step: int, timeout: float = 300) -> list[dict]:
    """Run the job under torchrun and SIGKILL every process of it once step `stop_step` is logged (a crash
    right after a checkpoint); returns the steps logged until then."""
    cmd = [str(VENV_BIN / "torchrun"), "--standalone", f"--nproc-per-node={nproc}", "train.py", *args]
    proc = subprocess.Popen(cmd, cwd=job, env=job_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    seen: list[dict] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += json_lines(line)
            if seen and seen[-1]["step"] == stop_step:
                break
    finally:
        kill_tree(proc.pid)
        proc.wait()
    return seen


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts each worker in its own session,
    so killing torchrun's process group would leave the workers running)."""
    def children(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                pass
        return out
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo += children(p)
    for p in reversed(found):  # workers first, then torchrun
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


_SINGLE: dict[tuple, list[dict]] = {}


def single_reference(job: Path, plan, steps: int = STEPS) -> list[dict]:
    """`train.py --single-process` for this job; cached, since it depends only on the model, data,
    micro-batching and steps (not on the split or schedule), so several tests share one run."""
    cfg = plan.config
    key = (plan.model.source, plan.model.seq_len, plan.model.image_size, cfg.num_microbatches,
           cfg.micro_batch_size, cfg.data_parallel, steps)
    if key not in _SINGLE:
        _SINGLE[key] = run_job(job, ["--steps", str(steps)], None)
    return _SINGLE[key]


def losses(lines: list[dict]) -> list[float]:
    return [d["loss"] for d in lines]


def assert_same_losses(pipeline: list[dict], single: list[dict], steps: int = STEPS) -> None:
    assert [d["step"] for d in pipeline] == list(range(1, steps + 1))
    assert [d["step"] for d in single] == list(range(1, steps + 1))
    diffs = [abs(a - b) for a, b in zip(losses(pipeline), losses(single))]
    assert max(diffs) <= TOL, f"pipeline {losses(pipeline)} vs single {losses(single)}: max diff {max(diffs)}"
    for d in pipeline:
        assert {"step", "loss", "step_time_s", "samples_per_s", "max_mem_bytes"} <= set(d)
        assert d["step_time_s"] > 0 and d["samples_per_s"] > 0 and d["max_mem_bytes"] > 0
    # the run trains: losses move (a frozen model would also "match")
    assert len(set(losses(single))) > 1


def export(tmp_path: Path, name: str, plan) -> Path:
    job = tmp_path / name
    export_plan(plan, job)
    return job


def check_equivalence(tmp_path: Path, name: str, plan, nproc: int) -> None:
    """Export the plan, run it under torchrun with nproc processes and require the single-process losses."""
    job = export(tmp_path, name, plan)
    assert_same_losses(run_job(job, ["--steps", str(STEPS)], nproc), single_reference(job, plan))


# -- hybrid (PP x DP x TP) plans ---------------------------------------------------


def hybrid_plan(source: str, stages: list[list[str]], *, tp: int = 1, dp: int = 1, sharding: str = "ddp",
                **kw) -> Plan:
    """hand_plan with the parallel degrees set (what the job reads: partition + degrees)."""
    import dataclasses

    plan = hand_plan(source, stages, data_parallel=dp, **kw)
    plan.config = dataclasses.replace(plan.config, tensor_parallel=tp, dp_sharding=sharding)
    return plan


def check_hybrid_equivalence(tmp_path: Path, name: str, plan, nproc: int, profile=None,
                             extra: list[str] | None = None) -> tuple[list[dict], list[dict]]:
    """check_equivalence for a hybrid plan (the TP plan from `profile`, else rebuilt from the model source;
    `extra`: more train.py arguments for the pipeline run); returns (pipeline lines, single-process lines)."""
    job = tmp_path / name
    export_plan(plan, job, profile=profile)
    lines = run_job(job, ["--steps", str(STEPS), *(extra or [])], nproc)
    single = single_reference(job, plan)
    assert_same_losses(lines, single)
    return lines, single
