"""One trace, many sequence lengths (issue 17, item 11): HfLengthProfiler traces an HF config once with
the token dimension symbolic and re-runs only the analysis for each new length. Every profile it returns
must equal a fresh `profile_hf_config` at that length, field by field; where export cannot keep the
length generic it must fall back to exactly that call."""

from __future__ import annotations

import pytest
from test_hf_any import BART, BERT_MLM, DECODER, MISTRAL_SLIDING, MIXTRAL, NEOX_PARALLEL, RESNET, T5

from core.errors import PipeplanError
from profiler.hf import HfLengthProfiler, profile_hf_config

pytest.importorskip("transformers")

LLAMA_DEEP = {"model_type": "llama", **DECODER, "num_hidden_layers": 6}  # >= 4 blocks: the shortened trace
MAMBA = {"model_type": "mamba", "hidden_size": 64, "num_hidden_layers": 5, "vocab_size": 128, "state_size": 8,
         "expand": 2, "conv_kernel": 4}  # export fixes its length: a static trace, used as one
GPT2 = {"model_type": "gpt2", "n_embd": 64, "n_layer": 5, "n_head": 4, "vocab_size": 128, "n_positions": 64}


def fields(profile) -> dict:
    data = profile.to_dict()
    data["provenance"].pop("date")
    return data


@pytest.mark.parametrize("config, lengths, reuses", [
    (LLAMA_DEEP, [32, 16, 9, 64, 2], True),
    (GPT2, [32, 17, 64], True),
    (MISTRAL_SLIDING, [32, 8, 5, 16], True),  # around its window of 8: banded or plain causal masks
    (MIXTRAL, [32, 12], True),
    (NEOX_PARALLEL, [32, 20], True),
    (T5, [16, 24], True),  # encoder and decoder lengths: one symbol
    (BART, [16, 7], True),
    (BERT_MLM, [32, 10], True),
    (RESNET, [32, 48], False),  # an image's size changes the config: traced at each size
    (MAMBA, [32, 16], False),
], ids=["llama", "gpt2", "mistral-sliding", "mixtral", "neox", "t5", "bart", "bert", "resnet", "mamba"])
def test_every_length_equals_a_fresh_profile(config, lengths, reuses):
    lengths_profiler = HfLengthProfiler(config, batch_size=2, estimate_for="A100-80GB", source="hf:c.json")
    for n in lengths:
        fresh = profile_hf_config(config, batch_size=2, seq_len=n, estimate_for="A100-80GB", source="hf:c.json")
        assert fields(lengths_profiler.profile(n)) == fields(fresh), n
    assert (lengths_profiler.reused == len(lengths) - 1) is reuses, lengths_profiler.reused


def test_default_length_and_refusals_match_profile_hf_config():
    lengths_profiler = HfLengthProfiler(LLAMA_DEEP, estimate_for="H100", source="hf:c.json")
    assert fields(lengths_profiler.profile(None)) == fields(profile_hf_config(LLAMA_DEEP, estimate_for="H100",
                                                                             source="hf:c.json"))
    with pytest.raises(PipeplanError, match="exceeds this model's max_position_embeddings"):
        lengths_profiler.profile(65)
    assert lengths_profiler.profile(33).model.seq_len == 33 and lengths_profiler.reused == 1


def test_falls_back_to_a_fresh_trace_when_the_generic_one_cannot_serve(monkeypatch):
    import torch
    from torch.utils._sympy.value_ranges import ValueRanges

    bounded = HfLengthProfiler(LLAMA_DEEP, estimate_for="A100-80GB")
    bounded.profile(16)
    bounded._ranges = [ValueRanges(2, 20)]  # as if export had bounded the length to 2..20
    assert fields(bounded.profile(32)) == fields(profile_hf_config(LLAMA_DEEP, seq_len=32, estimate_for="A100-80GB"))
    assert fields(bounded.profile(12)) == fields(profile_hf_config(LLAMA_DEEP, seq_len=12, estimate_for="A100-80GB"))
    assert bounded.reused == 1

    export = torch.export.export

    def static_only(*args, dynamic_shapes=None, **kwargs):
        if dynamic_shapes is not None:
            raise RuntimeError("Constraints violated (L['input_ids'].size()[1])")
        return export(*args, **kwargs)

    monkeypatch.setattr(torch.export, "export", static_only)
    refused = HfLengthProfiler(LLAMA_DEEP, estimate_for="A100-80GB")
    for n in (16, 24):
        assert fields(refused.profile(n)) == fields(profile_hf_config(LLAMA_DEEP, seq_len=n, estimate_for="A100-80GB"))
    assert refused.reused == 0 and refused._trace is None and not refused._may_trace


def test_a_stack_that_cannot_be_shortened_is_never_traced_whole_with_symbolic_sizes(monkeypatch):
    """A full symbolic trace of an 80-block model would take minutes: without a shortened one, each length
    is traced statically (and shortened where that works) as profile_hf_config does."""
    import importlib

    # the module, not the package's lazy `profiler.profile_model` function
    profile_model = importlib.import_module("profiler.profile_model")
    trace = importlib.import_module("profiler.trace")

    monkeypatch.setattr(profile_model, "expand", lambda *args: None)  # no stack can be expanded
    symbolic = []
    trace_model = trace.trace_model

    def counting(*args, dynamic_shapes=None, **kwargs):
        symbolic.append(dynamic_shapes is not None)
        return trace_model(*args, dynamic_shapes=dynamic_shapes, **kwargs)

    monkeypatch.setattr(profile_model, "trace_model", counting)
    lengths_profiler = HfLengthProfiler(LLAMA_DEEP, estimate_for="A100-80GB")
    assert fields(lengths_profiler.profile(16)) == fields(profile_hf_config(LLAMA_DEEP, seq_len=16,
                                                                           estimate_for="A100-80GB"))
    assert symbolic[:2] == [True, False] and symbolic.count(True) == 1 and lengths_profiler.reused == 0


def test_a_trace_export_made_static_is_used_once_not_redone(monkeypatch):
    import importlib

    profile_model = importlib.import_module("profiler.profile_model")
    traces = []
    trace_model = profile_model.trace_model
    monkeypatch.setattr(profile_model, "trace_model",
                        lambda *a, **k: traces.append(k.get("dynamic_shapes") is not None) or trace_model(*a, **k))
    lengths_profiler = HfLengthProfiler(MAMBA, estimate_for="A100-80GB")
    lengths_profiler.profile(32)
    assert traces == [True]  # one (shortened) trace, symbolic in name only: its profile is the static one
