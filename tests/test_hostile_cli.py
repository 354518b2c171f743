"""Every hostile input through the CLI: exit 2, one clear line, no traceback, no payload.

Each case goes through the CLI's entry point. Cases whose point is process behaviour (huge or sparse
files, payload markers, .py factories, time limits) and one case per input family run in a fresh
`python -m cli` process; the other pure-JSON cases call `cli.main([...])` in-process
with stdout/stderr captured (same exit code, one-line stderr and no-traceback checks), which saves an
interpreter start (~2-5 s under load) per case.

The corpus is tests/hostile/corpus.py; see docs/security.md for the rules it checks.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest
from hostile.corpus import CASES, Base, pickle_payload
from hostile.harness import (
    CliResult,
    assert_clear_refusal,
    base_documents,
    fill,
    markers_absent,
    module_exists,
    run_cli,
)

NEEDS = {"hf": "profiler.hf"}
TIME_LIMIT_S = {"profile_sparse_20gib": 30, "train_hundred_million_microbatches": 60, "zip_bomb_1gib": 60,
                "pt2_zip_bomb_1gib": 60, "hf_absurd_sizes": 60}


FAMILY_REPRESENTATIVES = {"profile_truncated", "cluster_zero_devices", "plan_truncated",
                          "plan_model_source_reads_server_file", "train_zero_devices", "hf_not_an_object"}
"""One real subprocess per input family (the others of the family run in-process)."""


def needs_subprocess(case) -> bool:
    return (case.name in FAMILY_REPRESENTATIVES or case.name in TIME_LIMIT_S or bool(case.markers)
            or case.kind in ("code", "archive", "hf") or case.name in ("profile_huge_60mib", "hf_million_layers"))


def run_in_process(argv: list[str], cwd) -> CliResult:
    """cli.main(argv) in this process, cwd and env as run_cli sets them; a crash becomes a traceback."""
    from cli import main

    out, err = io.StringIO(), io.StringIO()
    old_cwd, allow = os.getcwd(), os.environ.pop("PIPEPLAN_ALLOW_CODE", None)
    start = time.monotonic()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(argv)
            except SystemExit as exc:  # argparse usage errors
                rc = exc.code if isinstance(exc.code, int) else 1
            except BaseException:  # noqa: BLE001 - what the real process would print
                traceback.print_exc()
                rc = 1
    finally:
        os.chdir(old_cwd)
        if allow is not None:
            os.environ["PIPEPLAN_ALLOW_CODE"] = allow
    return CliResult(rc, out.getvalue(), err.getvalue(), time.monotonic() - start)


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
    assert len(CASES) >= 30
    assert {c.kind for c in CASES} >= {"profile", "cluster", "plan", "hf", "archive", "train", "code"}


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

    def prepare(case):
        folder = root / case.name
        folder.mkdir()
        path = case.build(folder, base)
        return folder, fill(case.cli, path=path, good_profile=good_profile, folder=folder)

    def one(case):
        folder, argv = prepare(case)
        return case.name, (folder, run_cli(argv, cwd=folder, timeout=TIME_LIMIT_S.get(case.name, 60) + 120))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(one, [c for c in runnable if needs_subprocess(c)]))
    for case in runnable:
        if not needs_subprocess(case):
            folder, argv = prepare(case)
            results[case.name] = (folder, run_in_process(argv, folder))
    return results


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
    folder, res = cli_results[case.name]
    assert_clear_refusal(res, case)
    assert res.seconds < TIME_LIMIT_S.get(case.name, 120), f"{case.name} took {res.seconds:.1f} s"
    markers_absent(folder, case)
    assert not (folder / "out.json").exists(), "a refused input must not leave an output file"


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
