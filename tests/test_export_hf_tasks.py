"""Every task family pipeplan plans exports and trains equal to a single process (issue 14): an
encoder-decoder (T5), a masked LM (BERT), a mixture of experts (Mixtral, real routing), parallel
attention+MLP (GPT-NeoX), sliding-window attention with grouped KV heads (Mistral), hierarchical vision
(Swin, a cut between two blocks of one stage), conv vision (ResNet, BatchNorm buffers) and sequence
classification (Qwen2). Each: the profiler's layers, cut in two, exported, torchrun on 2 ranks
against --single-process on the same data (losses within 1e-5 for 5 steps)."""

from __future__ import annotations

import json

import pytest
from helpers_export import check_equivalence, hand_plan

pytest.importorskip("transformers")

NO_DROPOUT = {"dropout_rate": 0.0, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "dropout": 0.0,
              "attention_dropout": 0.0, "hidden_dropout": 0.0}
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "vocab_size": 96, "max_position_embeddings": 32}
CASES = {
    "t5": {"model_type": "t5", "d_model": 32, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 4,
           "d_kv": 8, "vocab_size": 96, "decoder_start_token_id": 0},
    "bert-mlm": {"model_type": "bert", "architectures": ["BertForMaskedLM"], **SMALL},
    "mixtral": {"model_type": "mixtral", **SMALL, "num_key_value_heads": 2, "num_local_experts": 4,
                "num_experts_per_tok": 2},
    "neox-parallel": {"model_type": "gpt_neox", **SMALL, "use_parallel_residual": True},
    "mistral-sliding": {"model_type": "mistral", **SMALL, "num_key_value_heads": 2, "sliding_window": 8},
    "resnet": {"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8, 16], "depths": [2, 1],
               "num_labels": 5, "image_size": 32},
    "swin": {"model_type": "swin", "image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [2, 2],
             "num_heads": [1, 2], "window_size": 4, "num_labels": 5},
    "qwen2-seqcls": {"model_type": "qwen2", "architectures": ["Qwen2ForSequenceClassification"], **SMALL,
                     "num_key_value_heads": 2, "num_labels": 3, "pad_token_id": 0},
}
IMAGE = {"swin", "resnet"}


@pytest.mark.slow
@pytest.mark.torchrun
@pytest.mark.parametrize("name", list(CASES))
def test_task_family_trains_equal_to_one_process(tmp_path, name):
    from profiler.hf import profile_hf_config

    config = {**CASES[name], **NO_DROPOUT}
    path = tmp_path / "hf" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(config))
    seq_len = None if name in IMAGE else 16
    prof = profile_hf_config(config, batch_size=2, seq_len=seq_len)
    ids = [n.id for n in prof.nodes]
    cut = ids.index("swin.encoder.layers.0.blocks.1") if name == "swin" else len(ids) // 2
    plan = hand_plan(f"hf:{path}", [ids[:cut], ids[cut:]], seq_len=prof.model.seq_len,
                     image_size=prof.model.image_size)
    check_equivalence(tmp_path, name, plan, 2)
