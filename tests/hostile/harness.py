"""Shared helpers of the hostile-input tests: the valid base documents and the CLI runner."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hostile.corpus import Base, Case

ROOT = Path(__file__).resolve().parents[2]
FAKE_SECRET = "hunter2-pipeplan-test-secret"


def base_documents() -> Base:
    """A 6-layer chain profile, a 2-device cluster and a solved plan, as JSON dicts."""
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve
    from profiler.profile import ModelInfo, Profile, ProfileEdge, ProfileNode, Provenance

    n = 6
    nodes = [ProfileNode(id=f"layers.{i}", name=f"block {i}", kind="block", module_path=f"layers.{i}",
                         fwd_flops=1e9, bwd_flops=2e9, fwd_ms=1.0 + 0.1 * i, bwd_ms=2.0 + 0.2 * i,
                         param_bytes=4_000_000, param_count=1_000_000, activation_bytes=2_000_000,
                         output_bytes=65_536) for i in range(n)]
    edges = [ProfileEdge(src=f"layers.{i}", dst=f"layers.{i + 1}", bytes=65_536) for i in range(n - 1)]
    profile = Profile(model=ModelInfo(source="sample:gpt:tiny", name="hostile-base", param_count=n * 1_000_000,
                                      micro_batch_size=1, seq_len=64, input_bytes=512),
                      provenance=Provenance(method="estimated", device="A100-80GB", reference_tflops=19.5),
                      nodes=nodes, edges=edges)
    cluster = Cluster.uniform(2, memory_bytes=8 * 2**30)
    plan = solve(profile, cluster, TrainConfig(num_microbatches=4, solver="dp"))
    assert plan.feasible, "the base plan must be feasible"
    return Base(profile=profile.to_dict(), cluster=cluster.to_dict(), plan=plan.to_dict())


def module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str
    seconds: float


def run_cli(argv: list[str], *, timeout: float = 120, cwd: Path | None = None,
            extra_env: dict[str, str] | None = None) -> CliResult:
    """`python -m cli ARGV` in a fresh process, with a fake secret in its environment."""
    env = {**os.environ, "PIPEPLAN_FAKE_SECRET": FAKE_SECRET, "AWS_SECRET_ACCESS_KEY": FAKE_SECRET,
           "PYTHONPATH": str(ROOT), **(extra_env or {})}
    env.pop("PIPEPLAN_ALLOW_CODE", None)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "cli", *argv], capture_output=True, timeout=timeout,
                          cwd=cwd or ROOT, env=env, check=False)
    return CliResult(proc.returncode, proc.stdout.decode("utf-8", "replace"),
                     proc.stderr.decode("utf-8", "replace"), time.monotonic() - start)


def fill(argv: tuple[str, ...], *, path: Path, good_profile: Path, folder: Path) -> list[str]:
    return [a.format(path=path, good_profile=good_profile, out=folder / "out.json", out_dir=folder / "job_out")
            for a in argv]


def assert_clear_refusal(res: CliResult, case: Case) -> str:
    """Exit 2, one line on stderr that matches the case's regex, no traceback anywhere."""
    both = res.stdout + res.stderr
    assert "Traceback" not in both, f"{case.name}: traceback\n{both[-3000:]}"
    assert res.rc == 2, f"{case.name}: exit {res.rc}, expected 2\n{both[-2000:]}"
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    # `pipeplan profile` may draw a progress line first; the error is the last line
    lines = [ln for ln in lines if not ln.lstrip("\r").startswith("[")]
    assert len(lines) == 1, f"{case.name}: expected one line on stderr, got {lines!r}"
    line = lines[0]
    assert line.startswith("pipeplan "), line
    assert re.search(case.expect, line), f"{case.name}: {line!r} does not match {case.expect!r}"
    assert len(line) < 600, f"{case.name}: the error line is {len(line)} characters long"
    return line


def markers_absent(folder: Path, case: Case) -> None:
    for m in case.markers:
        assert not (folder / m).exists(), f"{case.name}: payload ran: {folder / m} exists"
