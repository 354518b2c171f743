"""Model sources (HF configs, profile JSON, samples) and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cli import main as cli_main
from core.errors import PipeplanError
from profiler.hf import profile_hf_config
from profiler.profile_model import profile_model
from profiler.sources import load_profile

HF_CONFIGS = {
    "gpt2": {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_layer": 2, "n_embd": 64, "n_head": 4,
                 "vocab_size": 128, "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0},
    "llama": {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 128,
                  "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 128,
                  "max_position_embeddings": 64},
    "bert": {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 64, "intermediate_size": 128,
                 "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128, "max_position_embeddings": 64},
    "vit": {"model_type": "vit", "architectures": ["ViTForImageClassification"], "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
                "num_labels": 10},
}


@pytest.mark.parametrize("arch", list(HF_CONFIGS))
def test_hf_configs_build_and_profile(arch, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(HF_CONFIGS[arch]))
    prof = load_profile(f"hf:{path}", batch_size=2, seq_len=32)
    ids = [n.id for n in prof.nodes]
    assert sum(1 for i in ids if i.rsplit(".", 1)[-1].isdigit()) == 2, ids  # one node per block
    assert prof.total_flops > 0 and prof.model.param_count > 0
    assert prof.total_param_bytes == prof.model.param_count * 4
    if arch in ("gpt2", "bert"):  # tied input embedding and LM head
        assert any(n.shared_params for n in prof.nodes)


def test_hf_config_from_text_like_the_app_upload():
    prof = profile_hf_config(json.dumps(HF_CONFIGS["llama"]), batch_size=1, seq_len=16)
    assert prof.model.seq_len == 16 and prof.model.name == "LlamaForCausalLM"


@pytest.mark.parametrize("config, message", [
    ({"model_type": "nope"}, "unknown to transformers"),
    ({"model_type": "llama", "auto_map": {"AutoModel": "evil.Model"}}, "remote code"),
    ([1, 2], "must be an object"),
])
def test_bad_hf_configs(config, message):
    with pytest.raises(PipeplanError, match=message):
        profile_hf_config(config, batch_size=1, seq_len=8)


def test_broken_profile_json(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text('{"schema": "pipeplan.profile/1", "nodes": [')
    with pytest.raises(PipeplanError, match="not valid JSON"):
        load_profile(f"profile:{bad}")


def test_profile_file_round_trip(tmp_path):
    prof = load_profile("sample:mlp", batch_size=2)
    path = tmp_path / "mlp.json"
    path.write_text(prof.to_json())
    assert load_profile(f"profile:{path}") == prof
    with pytest.raises(PipeplanError, match="micro-batch 2, not 4"):
        load_profile(f"profile:{path}", batch_size=4)


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: neither tracer can follow it
            return self.fc(x)
        return x


def test_untraceable_model_names_the_line():
    with pytest.raises(PipeplanError, match=r"test_profiler_sources.py:\d+ in forward: `if x.sum\(\) > 0"):
        profile_model(DataDependent(), (torch.randn(2, 4),), source="s", name="dd")


def test_too_large_to_measure_suggests_estimating():
    with pytest.raises(PipeplanError, match="estimate instead with --estimate-for"):
        load_profile("sample:llama:70B", measure="cpu")


@pytest.mark.parametrize("spec, message", [
    ("sample:nope", "unknown sample model 'nope'"),
    ("sample:gpt:huge", "unknown size 'huge'"),
    ("gpt", "sample:NAME"),
    ("sample:gpt:tiny", "seq_len 999"),
])
def test_bad_specs(spec, message):
    with pytest.raises(PipeplanError, match=message):
        load_profile(spec, seq_len=999 if spec == "sample:gpt:tiny" else None)


def test_cli_writes_a_profile_and_prints_one_summary_line(tmp_path, capsys):
    out = tmp_path / "p.json"
    assert cli_main(["profile", "sample:mlp", "--batch-size", "2", "--estimate-for", "H100-SXM", "-o", str(out),
                     "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "mlp-tiny" in line and "H100-SXM" in line
    assert json.loads(out.read_text())["provenance"]["device"] == "H100-SXM"


@pytest.mark.parametrize("args", [
    ["profile", "sample:nope", "-o", "x.json"],
    ["profile", "sample:gpt", "--estimate-for", "Z80", "-o", "x.json"],
    ["profile", "sample:gpt", "--batch-size", "0", "-o", "x.json"],
])
def test_cli_errors_are_one_line(args, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipeplan profile: error:") and "\n" not in err and "Traceback" not in err
