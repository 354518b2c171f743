"""Tensor-parallel facts in the profile (profiler/tp.py, docs/hybrid.md): hand calculations on tiny blocks.

Shapes: b = 2 sequences of s = 16 tokens, hidden h = 64, 4 heads (head size 16), float32 (4 bytes), so
T = b·s = 32 tokens and one hidden-state tensor is T·h·4 = 8192 bytes. FLOPs are torch's formulas: a
Linear is 2·T·in·out, SDPA forward 4·b·s²·h (torch counts the causal mask's zeros too).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import sample_models
from core.errors import PipeplanError
from profiler import tp
from profiler.profile import Profile, ProfileNode
from profiler.profile_model import profile_model

B, S, H, HEADS = 2, 16, 64, 4
T = B * S
F32 = 4
HIDDEN_BYTES = T * H * F32  # 8192
SDPA_FLOPS = 4 * B * S * S * H
LSE_BYTES = B * HEADS * S * F32  # SDPA's saved logsumexp, one float per head and query
GOLDEN = Path(__file__).parent / "golden" / "profiles"

_CACHE: dict[str, Profile] = {}


def _profile(name: str, **kw) -> Profile:
    key = name + repr(sorted(kw.items()))
    if key not in _CACHE:
        spec = sample_models.get_model(name)
        if name == "gpt":
            from sample_models.gpt import GPT, GPTConfig
            model = GPT(GPTConfig(block_size=S, vocab_size=128, n_layer=2, n_head=HEADS, n_embd=H))
        elif name == "llama":
            from sample_models.llama import Llama, LlamaConfig
            model = Llama(LlamaConfig(dim=H, n_layers=2, n_heads=HEADS, n_kv_heads=2, vocab_size=128, ffn_dim=128,
                                      max_seq_len=S))
        else:
            model = sample_models.build(name, "tiny")
        if name in ("gpt", "llama"):
            tokens = torch.randint(0, 128, (B, S))
            inputs, target = (tokens,), tokens
        else:
            inputs, target = spec.make_batch(spec.sizes["tiny"], B)
        _CACHE[key] = profile_model(model, inputs, loss_fn=spec.loss_fn, target=target, source=f"sample:{name}",
                                    name=name, **kw)
    return _CACHE[key]


def _hf(config: dict) -> Profile:
    pytest.importorskip("transformers")
    from profiler.hf import profile_hf_config
    key = json.dumps(config, sort_keys=True)
    if key not in _CACHE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _CACHE[key] = profile_hf_config(config, batch_size=B, seq_len=S)
    return _CACHE[key]


HF_LLAMA = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": H, "intermediate_size": 128,
            "num_attention_heads": HEADS, "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 128,
            "max_position_embeddings": 64}
HF_MIXTRAL = {**HF_LLAMA, "model_type": "mixtral", "architectures": ["MixtralForCausalLM"], "num_local_experts": 4,
              "num_experts_per_tok": 2}
HF_GPT2 = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": H, "n_head": HEADS, "n_layer": 2,
           "vocab_size": 128, "n_positions": 64}


def _node(prof: Profile, node_id: str) -> ProfileNode:
    return next(n for n in prof.nodes if n.id == node_id)


# -- sample models ------------------------------------------------------------------------------------


def test_gpt_block_by_hand():
    prof = _profile("gpt")
    n = _node(prof, "layers.0")
    # the MLP only: the fused qkv attention replicates (profiler.tp.SAMPLE_PLANS says why)
    assert n.tp_colwise == ["mlp.c_fc"] and n.tp_rowwise == ["mlp.c_proj"]
    # colwise weight+bias: c_fc 4h·h+4h; rowwise weight only: 4h·h
    assert n.tp_split_param_count == 8 * H * H + 4 * H == 33024
    # replicated: c_attn 3h·h+3h, attn.c_proj h·h+h, the MLP's rowwise bias h, two LayerNorms 4h
    assert n.param_count - n.tp_split_param_count == 4 * H * H + 9 * H
    # the MLP's two matmuls are split; the attention's linears (2·T·4h²) and its core are not
    assert n.tp_split_flops == 2 * T * 8 * H * H == 2_097_152
    assert n.fwd_flops - n.tp_split_flops == 2 * T * 4 * H * H + SDPA_FLOPS
    # Megatron's MLP: one all-reduce of b·s·h in forward (its output), one in backward (its input)
    assert n.tp_allreduce_fwd_bytes == n.tp_allreduce_bwd_bytes == HIDDEN_BYTES == 8192
    # split saved tensors: c_fc output 4·bsh and gelu output 4·bsh; the attention's and the rest replicate
    assert n.tp_split_activation_bytes == 8 * HIDDEN_BYTES == 65536
    # replicated: block input, ln_1 output, qkv output (3·bsh), SDPA output and logsumexp, the residual sum,
    # ln_2 output, LayerNorm mean/rstd (4 × b·s floats)
    assert n.activation_bytes - n.tp_split_activation_bytes == 8 * HIDDEN_BYTES + LSE_BYTES + 4 * B * S * F32
    assert n.tp_max_degree == 4  # gcd(4h, 4h, 4 heads): the head count still bounds it (conservative)
    for other in ("wte", "wpe", "ln_f", "lm_head"):  # embeddings, norm and head replicate
        o = _node(prof, other)
        assert not o.tp_colwise and o.tp_split_flops == 0 and o.tp_max_degree == 0
    assert "TP plan: pipeplan's plan for gpt" in prof.provenance.notes


def test_llama_block_by_hand():
    prof = _profile("llama")
    n = _node(prof, "layers.0")
    kv = 2 * 16  # 2 key/value heads of size 16
    ffn = 128
    assert n.tp_colwise == ["attention.wq", "attention.wk", "attention.wv", "feed_forward.w1", "feed_forward.w3"]
    assert n.tp_rowwise == ["attention.wo", "feed_forward.w2"]
    assert n.tp_split_param_count == 2 * H * H + 2 * H * kv + 3 * H * ffn == n.param_count - 2 * H
    assert n.tp_split_flops == 2 * T * (2 * H * H + 2 * H * kv + 3 * H * ffn) + SDPA_FLOPS == n.fwd_flops
    # q, k, v read one normalised state (one all-reduce), w1 and w3 another: 2 in backward, as in forward
    assert n.tp_allreduce_fwd_bytes == n.tp_allreduce_bwd_bytes == 2 * HIDDEN_BYTES
    # split: SDPA's q, k, v (after RoPE and repeat_interleave), output and logsumexp; w1, w3, silu and the
    # product (T·ffn each). Replicated: the RMSNorm inputs, rsqrt and outputs, RoPE's cos and sin tables.
    assert n.tp_split_activation_bytes == 4 * HIDDEN_BYTES + LSE_BYTES + 4 * T * ffn * F32 == 98816
    assert n.tp_max_degree == 2  # the 2 key/value heads bound it
    assert tp.tp_degree_allowed(n, 2) is None
    reason = tp.tp_degree_allowed(prof, 4)
    assert reason is not None and "layers.0" in reason and "tp=4" in reason and "2" in reason


def test_vit_blocks_are_planned_and_convs_replicate():
    vit = _profile("vit")
    blocks = [n for n in vit.nodes if n.tp_colwise]
    assert blocks and all(n.tp_colwise == ["mlp.fc1"] and n.tp_rowwise == ["mlp.fc2"] for n in blocks)
    assert not _node(vit, "patch_embed").tp_colwise  # the conv patch embedding replicates
    for name in ("resnet", "unet3d", "mlp", "dlrm"):
        prof = _profile(name)
        assert all(not n.tp_colwise and not n.tp_rowwise and n.tp_split_flops == 0 and n.tp_split_param_count == 0
                   and n.tp_allreduce_fwd_bytes == 0 and n.tp_max_degree == 0 for n in prof.nodes), name
        assert "no TP plan: layers replicate" in prof.provenance.notes
        assert all(not k.startswith("tp_") for node in json.loads(prof.to_json())["nodes"] for k in node)
        assert tp.tp_degree_allowed(prof, 8) is None  # replicated layers allow any degree


def test_measured_profile_has_the_same_facts():
    est, meas = _profile("gpt"), _profile("gpt", measure="cpu", warmup=0, reps=1)
    for a, b in zip(est.nodes, meas.nodes, strict=True):
        assert (a.tp_colwise, a.tp_split_flops, a.tp_split_activation_bytes, a.tp_allreduce_fwd_bytes,
                a.tp_split_param_count, a.tp_max_degree) == (b.tp_colwise, b.tp_split_flops,
                                                              b.tp_split_activation_bytes, b.tp_allreduce_fwd_bytes,
                                                              b.tp_split_param_count, b.tp_max_degree)


def test_shortened_trace_copies_the_facts():
    short, full = _profile("llama"), _profile("llama", shorten=False)
    assert [(_n.id, _n.tp_split_flops, _n.tp_split_activation_bytes) for _n in short.nodes] == \
        [(_n.id, _n.tp_split_flops, _n.tp_split_activation_bytes) for _n in full.nodes]


# -- transformers plans -------------------------------------------------------------------------------


def test_hf_llama_uses_base_model_tp_plan():
    prof = _hf(HF_LLAMA)
    n = _node(prof, "model.layers.0")
    assert n.tp_colwise == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
                            "mlp.up_proj"]
    assert n.tp_rowwise == ["self_attn.o_proj", "mlp.down_proj"]
    kv, ffn = 2 * 16, 128
    assert n.tp_split_param_count == 2 * H * H + 2 * H * kv + 3 * H * ffn
    assert n.tp_split_flops == 2 * T * (2 * H * H + 2 * H * kv + 3 * H * ffn) + SDPA_FLOPS == n.fwd_flops
    assert n.tp_allreduce_fwd_bytes == n.tp_allreduce_bwd_bytes == 2 * HIDDEN_BYTES
    assert 0 < n.tp_split_activation_bytes < n.activation_bytes
    assert n.tp_max_degree == 2
    assert "TP plan: transformers base_model_tp_plan" in prof.provenance.notes
    assert not _node(prof, "model.embed_tokens").tp_colwise and not _node(prof, "lm_head").tp_colwise


def test_hf_mixtral_splits_attention_and_replicates_experts():
    prof = _hf(HF_MIXTRAL)
    n = _node(prof, "model.layers.0")
    assert n.tp_colwise == ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]
    assert n.tp_rowwise == ["self_attn.o_proj"]
    kv = 2 * 16
    assert n.tp_split_param_count == 2 * H * H + 2 * H * kv
    assert n.tp_split_flops == 2 * T * (2 * H * H + 2 * H * kv) + SDPA_FLOPS < n.fwd_flops
    assert n.tp_allreduce_fwd_bytes == n.tp_allreduce_bwd_bytes == HIDDEN_BYTES  # attention only


def test_hf_gpt2_has_no_plan_and_replicates():
    prof = _hf(HF_GPT2)
    assert all(not n.tp_colwise and n.tp_split_flops == 0 for n in prof.nodes)
    assert "no TP plan (gpt2 config has no base_model_tp_plan): layers replicate" in prof.provenance.notes


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(8, 16), nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 8)


class _Config:
    def __init__(self, plan):
        self.base_model_tp_plan = plan
        self.model_type = "toy"


class _Toy(nn.Module):
    def __init__(self, plan):
        super().__init__()
        self.config = _Config(plan)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([_Block(), _Block()])


def test_hf_style_mapping():
    """Only colwise and rowwise are used; transformers' other styles replicate; the stack prefix is stripped."""
    toy = _Toy({"layers.*.a": "colwise", "layers.*.b": "rowwise", "layers.*.c": "packed_colwise",
                "layers.*.d": "colwise_rep"})
    assert tp.layer_tp_plan(toy, "model.layers.1") == {"a": "colwise", "b": "rowwise"}
    assert tp.layer_tp_plan(toy, "model.layers") == {"0.a": "colwise", "0.b": "rowwise",
                                                     "1.a": "colwise", "1.b": "rowwise"}
    # a colwise without its rowwise partner (or only non-torch styles) is no plan: the layer replicates
    assert tp.layer_tp_plan(_Toy({"layers.*.a": "colwise", "layers.*.b": "rowwise_rep"}), "model.layers.0") == {}
    assert tp.layer_tp_plan(_Toy({"layers.*.a": "sequence_parallel"}), "model.layers.0") == {}
    assert tp.plan_note(toy) == "TP plan: transformers base_model_tp_plan"
    block = toy.model.layers[0]
    plan = {"a": "colwise", "b": "rowwise"}
    assert tp.split_param_count(block, plan) == 8 * 16 + 16 + 16 * 8  # b's bias replicates
    assert tp.max_degree(nn.Module(), block, plan) == 16


# -- the contract ------------------------------------------------------------------------------------


def test_json_round_trip_keeps_the_facts():
    prof = _profile("gpt")
    again = Profile.from_json(prof.to_json())
    assert again == prof and again.fingerprint() == prof.fingerprint()
    nodes = json.loads(prof.to_json())["nodes"]
    block = next(n for n in nodes if n["id"] == "layers.0")
    assert block["tp_max_degree"] == 4 and block["tp_colwise"] == ["mlp.c_fc"]
    assert not any(k.startswith("tp_") for k in next(n for n in nodes if n["id"] == "wte"))


@pytest.mark.parametrize("stem", ["gpt_tiny", "resnet_tiny", "chain30_seed0"])
def test_an_old_profile_keeps_its_fingerprint(stem):
    text = (GOLDEN / f"{stem}.json").read_text()
    assert "tp_" not in text
    prof = Profile.from_json(text)
    compact = json.dumps(json.loads(text), allow_nan=False)
    assert prof.to_json() == compact
    assert prof.fingerprint() == hashlib.sha256(compact.encode()).hexdigest()[:16]
    assert all(n.tp_max_degree == 0 and not n.tp_colwise for n in prof.nodes)


def test_node_validation():
    base = {"id": "b", "name": "b", "kind": "block", "module_path": "b", "fwd_flops": 100.0, "param_count": 1000}
    ProfileNode(**base, tp_colwise=["x"], tp_rowwise=["y"], tp_split_flops=100.0, tp_max_degree=4)
    for bad in ({"tp_max_degree": -1}, {"tp_max_degree": 2.5}, {"tp_max_degree": True},
                {"tp_colwise": ["x"]}, {"tp_colwise": [""], "tp_rowwise": ["y"]},
                {"tp_split_flops": 101.0}, {"tp_split_param_count": 1001}):
        with pytest.raises(PipeplanError):
            ProfileNode(**base, **bad)


def test_tp_degree_allowed():
    node = ProfileNode(id="b", name="b", kind="block", module_path="b", tp_colwise=["x"], tp_rowwise=["y"],
                       tp_max_degree=12)
    assert [tp.tp_degree_allowed(node, t) for t in (1, 2, 3, 4, 6, 12)] == [None] * 6
    assert "must divide 12" in tp.tp_degree_allowed(node, 8)
    assert tp.tp_degree_allowed(node, 0) is not None
    free = ProfileNode(id="c", name="c", kind="conv", module_path="c")
    assert tp.tp_degree_allowed(free, 7) is None


def test_fx_fallback_trace_gives_the_same_facts(monkeypatch):
    """symbolic_trace keeps Linears as call_module nodes: the region rule reads their targets instead of
    nn_module_stack, and the facts equal the torch.export trace's."""
    import functools

    import profiler.profile_model as pm
    from profiler.trace import trace_model
    exported = _profile("gpt")
    monkeypatch.setattr(pm, "trace_model", functools.partial(trace_model, tracer="fx"))
    traced = _profile("gpt", granularity="block")  # another cache key: traced again, with fx
    assert "fx trace" in traced.provenance.notes
    for a, b in zip(exported.nodes, traced.nodes, strict=True):
        assert (a.tp_split_flops, a.tp_split_activation_bytes, a.tp_allreduce_fwd_bytes, a.tp_allreduce_bwd_bytes,
                a.tp_split_param_count) == (b.tp_split_flops, b.tp_split_activation_bytes, b.tp_allreduce_fwd_bytes,
                                            b.tp_allreduce_bwd_bytes, b.tp_split_param_count), a.id


def test_a_failing_region_run_leaves_the_layer_replicated(monkeypatch):
    """The facts are optional: if the node-by-node run fails, the layer is profiled as before, without them."""
    good = _profile("llama")

    def boom(self, n):
        raise RuntimeError("interpreter failure")
    monkeypatch.setattr(tp.RegionRun, "run_node", boom)
    bad = _profile("llama", reps=5)  # another cache key: profiled again
    for a, b in zip(good.nodes, bad.nodes, strict=True):
        assert not b.tp_colwise and b.tp_split_flops == 0
        assert (a.fwd_flops, a.bwd_flops, a.activation_bytes, a.fwd_ms) == (b.fwd_flops, b.bwd_flops,
                                                                           b.activation_bytes, b.fwd_ms)
