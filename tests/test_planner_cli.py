"""`pipeplan plan` on profile: files."""

from __future__ import annotations

import json

from cli import main
from planner.contracts.cluster import Cluster, Device
from planner.contracts.plan import Plan
from profiler.synthetic import chain_profile


def write_profile(tmp_path, n=12):
    prof = chain_profile([1.0 + (i % 3) for i in range(n)], params=[10**6] * n, acts=[10**7] * n)
    path = tmp_path / "p.json"
    path.write_text(prof.to_json())
    return path


def test_plan_summary_and_json_output(tmp_path, capsys):
    path = write_profile(tmp_path)
    out = tmp_path / "plan.json"
    assert main(["plan", f"profile:{path}", "--devices", "4", "--memory", "80GB", "--microbatches", "8",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "step time" in text and "solver dp: optimal" in text and "faster" in text
    plan = Plan.from_json(out.read_text())
    assert plan.feasible and len(plan.stages) == 4
    assert main(["plan", f"profile:{path}", "--devices", "2", "--memory", "80GB", "--json", "--solver", "cbc",
                 "--schedule", "gpipe", "--precision", "bf16", "--recompute", "auto"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["solver"]["backend"] == "cbc" and data["config"]["schedule"] == "GPipe"


def test_plan_with_cluster_file_and_global_batch(tmp_path, capsys):
    path = write_profile(tmp_path)
    cluster = Cluster(devices=[Device(name="a100", memory_bytes=80 * 2**30, speed=2.0),
                               Device(name="l4", memory_bytes=24 * 2**30, speed=1.0, node=1)])
    cpath = tmp_path / "c.json"
    cpath.write_text(cluster.to_json())
    assert main(["plan", f"profile:{path}", "--cluster", str(cpath), "--global-batch", "8", "--json"]) == 0
    plan = Plan.from_dict(json.loads(capsys.readouterr().out))
    assert plan.config.num_microbatches * plan.config.micro_batch_size == 8
    assert len(plan.stages[0].node_ids) > len(plan.stages[1].node_ids)  # the faster device takes more


def test_plan_bad_input_is_one_line(tmp_path, capsys):
    path = write_profile(tmp_path)
    assert main(["plan", f"profile:{tmp_path / 'missing.json'}", "--devices", "2", "--memory", "8GB"]) == 2
    assert main(["plan", f"profile:{path}", "--devices", "2"]) == 2
    assert main(["plan", f"profile:{path}", "--devices", "40", "--memory", "8GB"]) == 2
    assert main(["plan", f"profile:{path}", "--devices", "4", "--memory", "8GB", "--microbatches", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("pipeplan plan: error:") for line in err)
    assert "micro-batches" in err[3]


def test_plan_infeasible_prints_diagnosis(tmp_path, capsys):
    path = write_profile(tmp_path, n=6)
    assert main(["plan", f"profile:{path}", "--devices", "2", "--memory", "20MB", "--microbatches", "2"]) == 1
    text = capsys.readouterr().out
    assert "NO PLAN FITS" in text and "smallest memory per device" in text


def test_plan_defaults_to_the_profiles_micro_batch_size(tmp_path, capsys):
    profile = chain_profile([1.0] * 6)
    profile.model.micro_batch_size = 4
    path = tmp_path / "mb4.json"
    path.write_text(profile.to_json())
    assert main(["plan", f"profile:{path}", "--devices", "2", "--memory", "80GB", "--json"]) == 0
    plan = Plan.from_json(capsys.readouterr().out)
    assert plan.config.micro_batch_size == 4
    assert plan.throughput_samples_per_s == 4 * plan.config.num_microbatches * 1000.0 / plan.step_time_ms


def test_a_huge_device_count_is_refused_at_once_within_memory_and_time_limits():
    """Issue 18, class 1: --devices 10^9 grew to GBs for minutes; it is refused before anything
    proportional to it is built, here under a 1 GiB address-space limit and a 10 s timeout."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    code = "import sys; from cli import main; sys.exit(main(sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, "plan", "sample:gpt:tiny", "--devices", "1000000000",
                          "--gpu", "A100"], check=False, capture_output=True, text=True, timeout=10,
                         preexec_fn=limit)  # the address-space limit applies to the child only
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().startswith("pipeplan plan: error: --devices asks for 1000000000 devices; pipeplan "
                                         "plans at most 4096") and out.stderr.count("\n") == 1
    import pytest

    from core.errors import PipeplanError
    from planner.contracts.cluster import Cluster

    with pytest.raises(PipeplanError, match="the cluster has 1000000000 devices; pipeplan plans at most 4096"):
        Cluster.uniform(10**9, "A100-80GB")


def test_plan_with_no_device_kind_plans_on_the_profiles_own_device(tmp_path, capsys):
    """`pipeplan plan sample:gpt:tiny --devices 2` (issue 17, item 17): the devices are the ones the
    layer times belong to (the estimate's GPU preset, or this machine's CPU for measured times), and the
    output says which."""
    import dataclasses

    assert main(["plan", "sample:gpt:tiny", "--devices", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("devices: 2 × A100-80GB, the profile's own device (its layer times are estimated "
                          "for A100-80GB)"), out
    assert "step time" in out
    measured = chain_profile([1.0, 2.0, 1.5, 1.0])
    measured.provenance = dataclasses.replace(measured.provenance, method="measured", device="cpu")
    path = tmp_path / "cpu.json"
    path.write_text(measured.to_json())
    assert main(["plan", f"profile:{path}", "--devices", "2", "--json"]) == 0
    captured = capsys.readouterr()
    plan = Plan.from_json(captured.out)  # stdout stays pure JSON; the line goes to stderr
    assert [d.name for d in plan.cluster.devices] == ["cpu0", "cpu1"]
    assert all(d.speed == 1.0 for d in plan.cluster.devices)
    assert "devices: 2 × cpu" in captured.err and "measured on cpu" in captured.err
