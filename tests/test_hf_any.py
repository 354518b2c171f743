"""Any transformers architecture in (issue 14, first part): the class from transformers' auto registries,
one layer rule from module structure, parameter bytes that sum to transformers' unique count, one-line
refusals, and the exported train.py agreeing with the profiler's layer rule on HF models."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from helpers_export import hand_plan

from core.errors import PipeplanError
from profiler.hf import build_hf_model, profile_hf_config, resolve_class
from profiler.hf_tasks import TASK_BY_NAME, TASKS

pytest.importorskip("transformers")

DECODER = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 128, "max_position_embeddings": 64}
QWEN2_GQA = {"model_type": "qwen2", **DECODER}
MIXTRAL = {"model_type": "mixtral", **DECODER, "num_local_experts": 4, "num_experts_per_tok": 2}
BERT_MLM = {"model_type": "bert", "architectures": ["BertForMaskedLM"], "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 128, "max_position_embeddings": 64}
MISTRAL_SLIDING = {"model_type": "mistral", **DECODER, "sliding_window": 8}  # window < sequence: banded masks
NEOX_PARALLEL = {"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "vocab_size": 128, "max_position_embeddings": 64,
                 "use_parallel_residual": True}  # attention and MLP side by side in each block
T5 = {"model_type": "t5", "d_model": 64, "d_ff": 128, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
      "d_kv": 16, "vocab_size": 128}
BART = {"model_type": "bart", "architectures": ["BartForConditionalGeneration"], "d_model": 64,
        "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "encoder_layers": 2, "decoder_layers": 2,
        "encoder_attention_heads": 4, "decoder_attention_heads": 4, "vocab_size": 128, "max_position_embeddings": 64}
RESNET = {"model_type": "resnet", "embedding_size": 16, "hidden_sizes": [16, 32], "depths": [1, 1], "num_labels": 10}
SWIN = {"model_type": "swin", "image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2], "num_heads": [1, 2],
        "window_size": 4, "num_labels": 10}


def unique_param_count(config: dict) -> int:
    model, _, _ = build_hf_model(config)
    return sum(p.numel() for p in model.parameters())  # named_parameters dedups tied weights


@pytest.mark.parametrize("config, seq_len, task, name, layers", [
    (QWEN2_GQA, 32, "causal-lm", "Qwen2ForCausalLM",
     ["model.embed_tokens", "model.rotary_emb", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]),
    (MIXTRAL, 32, "causal-lm", "MixtralForCausalLM",
     ["model.embed_tokens", "model.rotary_emb", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]),
    (MISTRAL_SLIDING, 32, "causal-lm", "MistralForCausalLM",
     ["model.embed_tokens", "model.rotary_emb", "model.layers.0", "model.layers.1", "model.norm", "lm_head"]),
    (NEOX_PARALLEL, 32, "causal-lm", "GPTNeoXForCausalLM",
     ["gpt_neox.embed_in", "gpt_neox.emb_dropout", "gpt_neox.rotary_emb", "gpt_neox.layers.0", "gpt_neox.layers.1",
      "gpt_neox.final_layer_norm", "lm_head"]),
    (T5, 16, "seq2seq-lm", "T5ForConditionalGeneration",
     ["encoder.embed_tokens", "encoder.block.0", "encoder.block.1", "encoder.final_layer_norm",
      "decoder.embed_tokens", "decoder.block.0", "decoder.block.1", "decoder.final_layer_norm", "lm_head"]),
    (BART, 16, "seq2seq-lm", "BartForConditionalGeneration",
     ["model.encoder.embed_tokens", "model.encoder.embed_positions", "model.encoder.layernorm_embedding",
      "model.encoder.layers.0", "model.encoder.layers.1", "model.decoder.embed_tokens",
      "model.decoder.embed_positions", "model.decoder.layernorm_embedding", "model.decoder.layers.0",
      "model.decoder.layers.1", "lm_head"]),
    (BERT_MLM, 32, "masked-lm", "BertForMaskedLM",
     ["bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "cls"]),
    (RESNET, 32, "image-classification", "ResNetForImageClassification",
     ["resnet.embedder", "resnet.encoder.stages.0.layers.0", "resnet.encoder.stages.1.layers.0", "resnet.pooler",
      "classifier.0", "classifier.1"]),
    (SWIN, None, "image-classification", "SwinForImageClassification",  # hierarchical: each block is a layer
     ["swin.embeddings", "swin.encoder.layers.0.blocks.0", "swin.encoder.layers.0.blocks.1",
      "swin.encoder.layers.0.downsample", "swin.encoder.layers.1.blocks.0", "swin.encoder.layers.1.blocks.1",
      "swin.layernorm", "swin.pooler", "classifier"]),
])
def test_families_profile_with_structural_layers_and_exact_parameter_bytes(config, seq_len, task, name, layers):
    model, picked, _ = build_hf_model(config)
    assert picked == task and type(model).__name__ == name
    prof = profile_hf_config(config, batch_size=1, seq_len=seq_len)
    assert prof.model.name == name
    assert [n.id for n in prof.nodes] == layers
    unique = unique_param_count(config)
    assert prof.model.param_count == unique
    assert sum(n.param_count for n in prof.nodes) == unique
    assert prof.total_param_bytes == unique * 4  # fp32, tied weights once
    assert prof.total_flops > 0
    fed = {e.dst for e in prof.edges if e.bytes > 0}
    assert fed >= set(layers[1:]) - {n.id for n in prof.nodes if n.id.endswith("rotary_emb")}  # one connected DAG
    if config is BERT_MLM:  # the MLM decoder is tied to the word embeddings: one owner, both list it
        assert sum(1 for n in prof.nodes if n.shared_params) == 2


def test_gqa_keeps_fewer_key_value_heads():
    model, _, config = build_hf_model(QWEN2_GQA)
    attn = model.model.layers[0].self_attn
    assert config.num_key_value_heads == 2 < config.num_attention_heads
    assert attn.k_proj.out_features == 2 * 16 and attn.q_proj.out_features == 4 * 16


def test_moe_estimates_with_balanced_routing_and_counts_every_expert():
    prof = profile_hf_config(MIXTRAL, batch_size=1, seq_len=32)
    assert "balanced routing" in prof.provenance.notes
    block = next(n for n in prof.nodes if n.id == "model.layers.0")
    experts = 4 * (2 * 128 * 64 + 64 * 128)  # gate_up and down of every expert
    assert block.param_count > experts
    dense = profile_hf_config(QWEN2_GQA, batch_size=1, seq_len=32)
    assert "balanced routing" not in dense.provenance.notes


def test_architectures_entry_picks_the_class_else_the_task_priority():
    assert resolve_class({"model_type": "bert"})[1] == "BertLMHeadModel"  # causal LM comes first
    assert resolve_class({"model_type": "bert", "architectures": ["BertForMaskedLM"]})[1] == "BertForMaskedLM"
    assert resolve_class({"model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}) == \
        (TASK_BY_NAME["sequence-classification"], "LlamaForSequenceClassification")
    # an architectures entry transformers does not register for a task we train: the priority decides
    assert resolve_class({"model_type": "bert", "architectures": ["BertForTokenClassification"]})[1] == "BertLMHeadModel"
    assert resolve_class({"model_type": "vit"})[0].name == "image-classification"
    assert resolve_class({"model_type": "t5"})[1] == "T5ForConditionalGeneration"  # seq2seq before the rest
    assert [t.name for t in TASKS] == ["causal-lm", "seq2seq-lm", "masked-lm", "image-classification",
                                       "sequence-classification"]


def test_sequence_classification_profiles():
    config = {**QWEN2_GQA, "architectures": ["Qwen2ForSequenceClassification"], "num_labels": 3, "pad_token_id": 0}
    prof = profile_hf_config(config, batch_size=2, seq_len=16)
    assert prof.model.name == "Qwen2ForSequenceClassification" and prof.nodes[-1].id == "score"


class _DataDependentMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 64)

    def forward(self, x):
        if x.sum() > 0:  # control flow on a tensor value: neither tracer can follow it
            return self.fc(x)
        return x


@pytest.mark.parametrize("config, message", [
    ({**QWEN2_GQA, "auto_map": {"AutoModelForCausalLM": "evil.Model"}}, r"custom remote code \(auto_map\)"),
    ({"model_type": "not_a_model"}, "HF model_type 'not_a_model' is unknown to transformers"),
    ({"model_type": "llava"}, "HF model_type 'llava' has no auto class for any task pipeplan trains"),
    ({"vocab_size": 10}, "HF config has no model_type"),
    ({**QWEN2_GQA, "num_attention_heads": 0}, "transformers could not build Qwen2ForCausalLM from this config: "),
])
def test_refusals_are_one_line(config, message):
    with pytest.raises(PipeplanError, match=message) as info:
        profile_hf_config(config, batch_size=1, seq_len=8)
    assert "\n" not in str(info.value)


def test_trace_failure_names_the_module_and_line(monkeypatch):
    from profiler import hf

    real = hf.build_hf_model

    def build(*args, **kw):
        model, task, config = real(*args, **kw)
        with torch.device(kw.get("device", "meta")):
            model.model.layers[1].mlp = _DataDependentMLP()
        return model, task, config

    monkeypatch.setattr(hf, "build_hf_model", build)
    with pytest.raises(PipeplanError) as info:
        profile_hf_config(QWEN2_GQA, batch_size=1, seq_len=8)
    text = str(info.value)
    assert text.startswith("cannot trace Qwen2ForCausalLM: ") and "\n" not in text
    assert "in module model.layers.1.mlp (_DataDependentMLP) at test_hf_any.py:" in text and "x.sum() > 0" in text


@pytest.mark.parametrize("config, stages", [
    (QWEN2_GQA, [["model.embed_tokens", "model.rotary_emb", "model.layers.0"],
                 ["model.layers.1", "model.norm", "lm_head"]]),
    ({"model_type": "gpt_neox", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
      "num_attention_heads": 4, "vocab_size": 128, "max_position_embeddings": 64, "use_parallel_residual": True},
     None),
])
def test_train_py_stage_rule_agrees_with_profiler_layer_rule_on_hf_models(load_job, tmp_path, config, stages):
    """The exported job's assign_stages puts every graph op in the stage of the profile layer the
    profiler assigned it to (the same check as test_export_files.py, on HF causal LMs)."""
    from planner.export import export_plan
    from profiler.trace import trace_model

    path = tmp_path / "hf" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    ids = [n.id for n in profile_hf_config(config, batch_size=2, seq_len=16).nodes]
    stages = stages or [ids[:len(ids) // 2], ids[len(ids) // 2:]]
    assert [x for s in stages for x in s] == ids
    export_plan(hand_plan(f"hf:{path}", stages, seq_len=16), tmp_path / "job")
    train = load_job(tmp_path / "job")
    runtime = sys.modules["pipeline_runtime"]
    example, _ = train.example_batch()
    node_stage = runtime.assign_stages(train.trace_model(train.meta_model(), example), train.SETTINGS["stages"])
    with torch.device("meta"):
        traced = trace_model(train.model_source.build_model(), example)
    assert traced.layers == ids
    layer_stage = {lid: s for s, lids in enumerate(stages) for lid in lids}
    assert node_stage == {name: layer_stage[lay] for name, lay in traced.node_layer.items()}


def test_default_sequence_length_is_the_configs_own_capped():
    """Issue 17, item 3: an uploaded Llama config with 4096 positions is planned at 4096, not 1024."""
    from profiler.hf import profile_hf_config
    from profiler.hf_tasks import MAX_DEFAULT_SEQ_LEN

    base = {"model_type": "llama", "vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4}
    assert profile_hf_config({**base, "max_position_embeddings": 4096}, estimate_for="A100-80GB").model.seq_len == 4096
    long = profile_hf_config({**base, "max_position_embeddings": 131072}, estimate_for="A100-80GB")
    assert long.model.seq_len == MAX_DEFAULT_SEQ_LEN


def test_composite_config_builds_its_causal_lm_from_the_text_config():
    """A vision-language config.json (Qwen3.5: model_type qwen3_5, the text model under text_config) plans
    as its causal LM, built from the text part, as transformers' AutoModelForCausalLM does."""
    text = {"model_type": "qwen3_5_text", **DECODER, "head_dim": 16, "layer_types": ["full_attention"] * 2}
    config = {"model_type": "qwen3_5", "text_config": text,
              "vision_config": {"model_type": "qwen3_5", "depth": 1, "hidden_size": 32, "intermediate_size": 64,
                                "num_heads": 2, "out_hidden_size": 64}}
    model, task, built = build_hf_model(config)
    assert (type(model).__name__, task, type(built).__name__) == ("Qwen3_5ForCausalLM", "causal-lm",
                                                                  "Qwen3_5TextConfig")
    prof = profile_hf_config(config, seq_len=16)
    assert prof.model.name == "Qwen3_5ForCausalLM"
    assert prof.model.param_count == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("config, encoder_out, decoder_blocks", [
    (T5, "encoder.final_layer_norm", ["decoder.block.0", "decoder.block.1"]),
    (BART, "model.encoder.layers.1", ["model.decoder.layers.0", "model.decoder.layers.1"]),
])
def test_encoder_decoder_graph_feeds_the_encoder_output_to_every_decoder_block(config, encoder_out, decoder_blocks):
    """Two stacks in one DAG: every decoder block's cross-attention reads the encoder output (an edge of
    B x T x d_model fp32 bytes), so a cut inside the decoder relays it; and the plan is a valid DAG plan."""
    from planner.contracts.cluster import Cluster
    from planner.contracts.config import TrainConfig
    from planner.solvers.solve import solve

    prof = profile_hf_config(config, batch_size=2, seq_len=16)
    edges = {(e.src, e.dst): e.bytes for e in prof.edges}
    for block in decoder_blocks:
        assert edges[(encoder_out, block)] == 2 * 16 * 64 * 4
    plan = solve(prof, Cluster.uniform(3, "A100-80GB"), TrainConfig(schedule="1F1B", num_microbatches=6))
    assert plan.feasible and [n for s in plan.stages for n in s.node_ids] == [n.id for n in prof.nodes]


def test_job_stage_rule_agrees_on_blocks_inside_stages():
    """Hierarchical models (Swin): the layers are the blocks inside each stage and the stage's downsample.
    The job's rule (longest layer-id prefix of an op's module, then rule 3) puts every op where the
    profiler's layer rule does, for a cut between two blocks of one stage."""
    from planner.export.runtime import pipeline_runtime as job
    from profiler.hf import make_hf_batch
    from profiler.trace import trace_model

    model, task, config = build_hf_model(SWIN)
    inputs, *_ = make_hf_batch(task, config, 2, None, "meta", type(model))
    traced = trace_model(model, inputs)
    ids = traced.layers
    cut = ids.index("swin.encoder.layers.0.blocks.1")  # inside stage 0 of the model
    stages = [ids[:cut], ids[cut:]]
    layer_stage = {lid: s for s, lids in enumerate(stages) for lid in lids}
    node_stage = job.assign_stages(job.trace_model(model, tuple(inputs)), stages)
    assert node_stage == {name: layer_stage[lay] for name, lay in traced.node_layer.items()}
