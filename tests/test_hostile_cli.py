"""Every hostile input through the CLI: exit 2, one clear line, no traceback, no payload.

Each case goes through the CLI's entry point. Cases whose point is process behaviour (huge or sparse
files, payload markers, .py factories, time limits) and one case per input family run in a fresh
`python -m cli` process; the other pure-JSON cases call `cli.main([...])` in-process
with stdout/stderr captured (same exit code, one-line stderr and no-traceback checks), which saves an
interpreter start (~2-5 s under load) per case.

The corpus is tests/hostile/corpus.py; see docs/security.md for the rules it checks.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from hostile.corpus import CASES, Base, pickle_payload
from hostile.harness import (
    assert_clear_refusal,
    assert_nothing_left,
    base_documents,
    fill,
    markers_absent,
    module_exists,
    run_cli,
    run_in_process,
    snapshot,
    world_readable_folder,
    wrapper,
)

NEEDS = {"hf": "profiler.hf"}
TIME_LIMIT_S = {"profile_sparse_20gib": 30, "train_hundred_million_microbatches": 60, "zip_bomb_1gib": 60,
                "pt2_zip_bomb_1gib": 60, "hf_absurd_sizes": 60}


FAMILY_REPRESENTATIVES = {"profile_truncated", "cluster_zero_devices", "plan_truncated",
                          "plan_model_source_reads_server_file", "train_zero_devices", "hf_not_an_object",
                          "plan_stages_overlap", "plan_duplicate_key_in_config", "write_plan_dev_full",
                          "write_export_over_previous_export_with_checkpoints"}
"""One real subprocess per input family (the others of the family run in-process)."""


def needs_subprocess(case) -> bool:
    if case.extra.get("limits"):  # tests/test_hostile_limits.py runs them as limited, measured processes
        return False
    return (case.name in FAMILY_REPRESENTATIVES or case.name in TIME_LIMIT_S or bool(case.markers)
            or case.kind in ("code", "archive", "hf") or case.name in ("profile_huge_60mib", "hf_million_layers")
            or bool(case.extra.get("wrap")))


@pytest.fixture(scope="module")
def base() -> Base:
    return base_documents()


@pytest.fixture(scope="module")
def good_profile(base, tmp_path_factory):
    p = tmp_path_factory.mktemp("good") / "profile.json"
    p.write_text(json.dumps(base.profile))
    return p


def test_corpus_is_big_and_names_are_unique():
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
    assert len(CASES) >= 100
    assert {c.kind for c in CASES} >= {"profile", "cluster", "plan", "hf", "archive", "train", "code", "write"}


def test_write_cases_cover_every_writer_and_error_class():
    """Issue 18, class 2: each OS error class for each file pipeplan writes."""
    from hostile.corpus import FILE_WRITERS, WRITERS

    names = {c.name for c in CASES if c.kind == "write"}
    for writer in WRITERS:
        for problem in ("missing_parent", "parent_is_file", "permission", "read_only"):
            assert f"write_{writer}_{problem}" in names
    for writer in FILE_WRITERS:
        assert f"write_{writer}_folder" in names
    for writer in ("profile", "plan", "html", "timeline"):  # calibrate's full disk: tests/test_writes.py
        assert f"write_{writer}_dev_full" in names and f"write_{writer}_disk_full" in names
    assert "write_export_disk_full" in names and "write_export_folder_not_an_export" in names


def test_good_inputs_are_accepted(base, good_profile, tmp_path):
    """The base documents the corpus mutates are valid: each refusal below is due to the mutation."""
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps(base.cluster))
    res = run_cli(["plan", f"profile:{good_profile}", "--cluster", str(cluster), "-o", str(tmp_path / "plan.json")])
    assert res.rc == 0, res.stderr
    plan = tmp_path / "plan2.json"
    plan.write_text(json.dumps(base.plan))
    assert run_cli(["simulate", str(plan)]).rc == 0


@pytest.fixture(scope="module")
def cli_results(base, good_profile, tmp_path_factory):
    """Run every case's CLI call: name -> (folder, result). Subprocess cases four at a time (each is a
    fresh interpreter), in-process cases one after another in this thread (they chdir)."""
    runnable = [c for c in CASES if not (c.kind in NEEDS and not module_exists(NEEDS[c.kind]))]
    root = tmp_path_factory.mktemp("hostile_cli")
    public = world_readable_folder()  # for cases run as another user: pytest's tmp is root's alone

    def prepare(case):
        folder = (public if case.extra.get("wrap") == "nobody" else root) / case.name
        folder.mkdir()
        folder.chmod(0o755)
        path = case.build(folder, base)
        return folder, fill(case.cli, path=path, good_profile=good_profile, folder=folder)

    def one(case):
        folder, argv = prepare(case)
        before = snapshot(folder)
        wrap, why = wrapper(case, folder)
        if wrap is None:
            return case.name, (folder, why, before)
        res = run_cli(argv, cwd=folder, timeout=TIME_LIMIT_S.get(case.name, 60) + 120, wrap=wrap)
        return case.name, (folder, res, before)

    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = dict(pool.map(one, [c for c in runnable if needs_subprocess(c)]))
        for case in runnable:
            if not needs_subprocess(case):
                folder, argv = prepare(case)
                before = snapshot(folder)
                results[case.name] = (folder, run_in_process(argv, folder), before)
        for name, (folder, res, before) in results.items():  # taken before the folders are removed
            results[name] = (folder, res, before, snapshot(folder) if folder.exists() else {})
        yield results
    finally:
        for locked in public.glob("*/locked"):
            locked.chmod(0o700)
        shutil.rmtree(public, ignore_errors=True)


def test_subprocess_subset_covers_every_family_and_process_case():
    families = {c.kind for c in CASES if needs_subprocess(c)}
    assert families == {c.kind for c in CASES}, families
    assert all(needs_subprocess(c) for c in CASES if c.markers or c.kind == "code" or c.name in TIME_LIMIT_S)
    assert sum(not needs_subprocess(c) for c in CASES) >= 20, "most pure-JSON cases run in-process"


def test_in_process_runner_reports_a_crash_as_a_traceback(monkeypatch, tmp_path):
    """Control: an exception escaping main() would fail assert_clear_refusal, as it would in a subprocess."""
    import cli

    def crash(argv):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "main", crash)
    res = run_in_process(["plan"], tmp_path)
    assert res.rc == 1 and "Traceback" in res.stderr and "boom" in res.stderr


@pytest.mark.slow  # cli_results runs every case, a fresh CLI process for each process-level one (~20 s)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_cli_refuses_clearly(case, cli_results):
    if case.kind in NEEDS and not module_exists(NEEDS[case.kind]):
        pytest.skip(f"{NEEDS[case.kind]} is not built yet")
    folder, res, before, after = cli_results[case.name]
    if isinstance(res, str):
        pytest.skip(res)
    assert_clear_refusal(res, case)
    assert res.seconds < TIME_LIMIT_S.get(case.name, 120), f"{case.name} took {res.seconds:.1f} s"
    if case.kind == "write":
        assert_nothing_left(before, after, case, res)
    else:
        markers_absent(folder, case)
        assert not (folder / "out.json").exists(), "a refused input must not leave an output file"
        assert not (folder / "job_out").exists(), "a refused plan must not leave an export folder"


def test_pickle_payload_is_live(tmp_path):
    """Control: the payload embedded in the .pt2 case really runs when unpickled, so its marker means something."""
    marker = tmp_path / "PWNED-control"
    blob = tmp_path / "payload.pkl"
    blob.write_bytes(pickle_payload(marker))
    code = f"import pickle; pickle.loads(open({str(blob)!r}, 'rb').read())"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert marker.exists()


def test_remote_code_module_is_live(tmp_path):
    """Control: the HF remote-code module leaves its marker when imported."""
    from hostile.corpus import by_name

    case = by_name()["hf_trust_remote_code_architecture"]
    cfg = case.build(tmp_path, None)
    subprocess.run([sys.executable, "-c", "import modeling_evil"], cwd=cfg.parent, check=True, timeout=60)
    assert (tmp_path / case.markers[0]).exists()
