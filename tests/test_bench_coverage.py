"""The coverage benchmark's --quick sweep (10 transformers architectures) runs, trains two of them under
torchrun, and writes its results."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quick_coverage_sweep(tmp_path, monkeypatch):
    import bench.bench_coverage as cov

    monkeypatch.setattr(cov, "RESULTS_DIR", tmp_path)
    data = cov.run(True, docs=False, train=2)
    saved = json.loads((tmp_path / "coverage-quick.json").read_text())
    assert {r["model_type"] for r in saved["results"]} == set(cov.QUICK_TYPES)
    rows = data["summary"]["registries"]
    assert rows["causal-lm"]["planned"] >= 6 and rows["all"]["swept"] == len(cov.QUICK_TYPES)
    assert all(r.get("config") for r in saved["results"])  # every type has an outcome, failures a reason
    # step 3: a seeded sample exported and trained under torchrun, equal to one process
    assert data["summary"]["training"]["sampled"] == 2
    trained = [r for r in saved["results"] if "train" in r]
    assert len({r["task"] for r in trained}) == 2  # spread over the tasks
    assert all(r["train"] == "equal" and r["train_max_diff"] <= 1e-5 for r in trained), trained


def test_shrink_keeps_grouped_query_attention_and_per_layer_lists():
    from bench.bench_coverage import shrink_config

    d = shrink_config({"hidden_size": 4096, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                       "num_hidden_layers": 32, "layer_types": ["full"] * 32, "vocab_size": 150000,
                       "eos_token_id": 149999, "num_local_experts": 64, "num_experts_per_tok": 8})
    assert (d["hidden_size"], d["num_attention_heads"], d["num_key_value_heads"], d["head_dim"]) == (64, 4, 2, 16)
    assert d["num_hidden_layers"] == 2 and len(d["layer_types"]) == 2
    assert d["vocab_size"] == 1024 and d["eos_token_id"] == 1023
    assert (d["num_local_experts"], d["num_experts_per_tok"]) == (4, 2)


def test_fill_unset_names_what_real_checkpoints_always_state():
    """transformers' default configs leave some fields None that every checkpoint sets (and the model
    cannot be built without); the sweep fills them, recursively, and trims per-layer override dicts."""
    from bench.bench_coverage import fill_unset, shrink_config

    d = fill_unset({"hidden_size": 256, "num_attention_heads": 8, "head_dim": None, "num_key_value_heads": None,
                    "num_hidden_layers": 3, "layer_types": None, "n_routed_experts": None,
                    "num_experts_per_tok": None, "n_shared_experts": None,
                    "text_config": {"model_type": "x", "hidden_size": 64, "num_attention_heads": 4, "head_dim": None}})
    assert (d["head_dim"], d["num_key_value_heads"], d["layer_types"]) == (32, 8, ["full_attention"] * 3)
    assert (d["n_routed_experts"], d["num_experts_per_tok"], d["n_shared_experts"]) == (4, 2, 1)
    assert d["text_config"]["head_dim"] == 16
    s = shrink_config({"num_hidden_layers": 8, "per_layer_config": {"01": {"a": 1}, "05": {"a": 2}}})
    assert s["num_hidden_layers"] == 2 and s["per_layer_config"] == {"01": {"a": 1}}


def test_train_sample_is_seeded_and_spread_over_tasks():
    from bench.bench_coverage import train_sample

    results = [{"model_type": f"{t}{i}", "task": t, "plan": "ok"} for t in ("a", "b", "c") for i in range(5)]
    results.append({"model_type": "x", "task": "a", "plan": "infeasible"})
    first = train_sample(results, 6)
    assert first == train_sample(results, 6) and len(set(first)) == 6 and "x" not in first
    assert sorted(t[0] for t in first) == ["a", "a", "b", "b", "c", "c"]


def test_no_dropout_zeroes_every_dropout_probability():
    from bench.bench_coverage import no_dropout

    d = no_dropout({"hidden_dropout_prob": 0.1, "resid_pdrop": 0.1, "layerdrop": 0.05, "hidden_size": 64,
                    "text_config": {"attention_dropout": 0.2}})
    assert d == {"hidden_dropout_prob": 0.0, "resid_pdrop": 0.0, "layerdrop": 0.0, "hidden_size": 64,
                 "text_config": {"attention_dropout": 0.0}}
