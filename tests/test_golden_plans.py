"""The golden plan corpus (tests/golden/): every plan the planner made when the corpus was recorded,
re-solved now, with the same partition, devices, recompute and micro-batches, and every number equal
to 1e-9 relative. A change that moves a plan on purpose re-records the corpus
(`PYTHONPATH=. python tests/golden/corpus.py --write`) and says why in its commit."""

from __future__ import annotations

import json
import math

import pytest
from golden.corpus import RECORDED, cases, clusters, run_case, summary

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
    now = json.loads(json.dumps(summary(run_case(CASES[name], cluster_table))))
    then = RECORDED_PLANS[name]
    if then["solver"]["status"] == "feasible" and now["solver"]["status"] == "feasible" \
            and then["solver"]["lower_bound_ms"] is not None:
        # an unproven plan's bound is where the exact finish stopped, on its caps or (with a small
        # per-(M, order) budget) on the clock: the plan must be the same, the bound valid and close
        got, had = now["solver"].pop("lower_bound_ms"), then["solver"]["lower_bound_ms"]
        now["solver"].pop("gap")
        then = json.loads(json.dumps(then))
        then["solver"].pop("lower_bound_ms"), then["solver"].pop("gap")
        assert got is not None and got <= now["solver"]["objective_ms"] * (1 + 1e-12)
        assert math.isclose(got, had, rel_tol=0.05), f"lower_bound_ms {got} vs recorded {had}"
    assert_same(now, then)
