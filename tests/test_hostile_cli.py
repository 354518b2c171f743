"""Every hostile input through the CLI in a fresh process: exit 2, one clear line, no traceback, no payload.

The corpus is tests/hostile/corpus.py; see docs/security.md for the rules it checks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from hostile.corpus import CASES, Base, pickle_payload
from hostile.harness import assert_clear_refusal, base_documents, fill, markers_absent, module_exists, run_cli

NEEDS = {"hf": "profiler.hf"}
TIME_LIMIT_S = {"profile_sparse_20gib": 30, "train_hundred_million_microbatches": 60, "zip_bomb_1gib": 60,
                "pt2_zip_bomb_1gib": 60, "hf_absurd_sizes": 60}


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
    """Run every case's CLI call, four at a time (each is a fresh interpreter): name -> (folder, result)."""
    runnable = [c for c in CASES if not (c.kind in NEEDS and not module_exists(NEEDS[c.kind]))]
    root = tmp_path_factory.mktemp("hostile_cli")

    def one(case):
        folder = root / case.name
        folder.mkdir()
        path = case.build(folder, base)
        argv = fill(case.cli, path=path, good_profile=good_profile, folder=folder)
        return case.name, (folder, run_cli(argv, cwd=folder, timeout=TIME_LIMIT_S.get(case.name, 60) + 120))

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, runnable))


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
