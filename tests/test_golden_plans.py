"""The golden plan corpus (tests/golden/): every plan the planner made when the corpus was recorded,
re-solved now, with the same partition, devices, recompute and micro-batches, and every number equal
to 1e-9 relative. A change that moves a plan on purpose re-records the corpus
(`PYTHONPATH=. python tests/golden/corpus.py --write`) and says why in its commit."""

from __future__ import annotations

import json
import math

import pytest
from golden.corpus import RECORDED, cases, clusters, load_profile_file, run_case, summary

from planner.contracts.plan import Plan, validate_plan

RECORDED_PLANS = json.loads(RECORDED.read_text())
CASES = {c.name: c for c in cases()}
REL = 1e-9
BOUND_REL = 1e-8
GAP_ABS = 1e-8


def test_corpus_is_large_and_recorded():
    assert len(CASES) >= 60
    assert set(RECORDED_PLANS) == set(CASES), "re-record: PYTHONPATH=. python tests/golden/corpus.py --write"
    statuses = {p["solver"]["status"] for p in RECORDED_PLANS.values()}
    assert {"optimal", "infeasible"} <= statuses


def assert_same(now, then, path="plan"):
    if isinstance(then, dict):
        assert isinstance(now, dict) and set(now) == set(then), f"{path}: keys {sorted(now)} != {sorted(then)}"
        for k in then:
            assert_same(now[k], then[k], f"{path}.{k}")
    elif isinstance(then, list):
        assert isinstance(now, list) and len(now) == len(then), f"{path}: {now!r} != {then!r}"
        for i, (a, b) in enumerate(zip(now, then)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(then, float) and not isinstance(now, bool) and isinstance(now, (int, float)):
        # HiGHS proves its bound to its gap tolerance (1e-9 relative), so the bound, and the gap (a
        # difference of two near-equal numbers) computed from it, hold to that and no closer
        rel = BOUND_REL if path.endswith(".lower_bound_ms") else REL
        absolute = GAP_ABS if path.endswith(".gap") else 1e-12
        assert math.isclose(now, then, rel_tol=rel, abs_tol=absolute), f"{path}: {now!r} != {then!r}"
    else:
        assert now == then, f"{path}: {now!r} != {then!r}"


@pytest.fixture(scope="module")
def cluster_table():
    return clusters()


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_plan(name, cluster_table):
    plan = run_case(CASES[name], cluster_table)
    # every golden plan also passes the Plan validation against its own profile (fingerprint included)
    validate_plan(Plan.from_json(plan.to_json()), load_profile_file(CASES[name].profile))
    now = json.loads(json.dumps(summary(plan)))
    then = RECORDED_PLANS[name]
    if then["solver"]["status"] == "feasible" and then["solver"]["lower_bound_ms"] is not None:
        # an unproven plan is where the exact finish's time-limited search (the ILP enumeration, the
        # refinement) stopped, which depends on the machine's load: the plan must fit, be at most 15%
        # slower than recorded (usually equal), its bound valid and within 25% of the recorded one
        assert now["solver"]["status"] in ("feasible", "optimal")
        got = now["solver"]["lower_bound_ms"]
        assert got is not None and got <= now["solver"]["objective_ms"] * (1 + 1e-12)
        assert now["solver"]["objective_ms"] == now["step_time_ms"] <= then["step_time_ms"] * 1.15
        assert math.isclose(got, then["solver"]["lower_bound_ms"], rel_tol=0.25)
        return
    assert_same(now, then)
