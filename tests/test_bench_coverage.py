"""The coverage benchmark's --quick sweep (10 transformers architectures) runs and writes its results."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quick_coverage_sweep(tmp_path, monkeypatch):
    import bench.bench_coverage as cov

    monkeypatch.setattr(cov, "RESULTS_DIR", tmp_path)
    data = cov.run(True, docs=False)
    saved = json.loads((tmp_path / "coverage-quick.json").read_text())
    assert {r["model_type"] for r in saved["results"]} == set(cov.QUICK_TYPES)
    rows = data["summary"]["registries"]
    assert rows["causal-lm"]["planned"] >= 6 and rows["all"]["swept"] == len(cov.QUICK_TYPES)
    assert all(r.get("config") for r in saved["results"])  # every type has an outcome, failures a reason


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
