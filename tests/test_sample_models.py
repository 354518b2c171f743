"""Tests for sample_models: registry, tiny-model training steps, meta builds and
parameter counts, torch.export tracing on meta, and per-FQN initialisation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sample_models import REGISTRY, build, count_parameters, get_model, init_parameters, materialize
from sample_models.init import tied_parameter_aliases

ALL_SIZES = [(name, size) for name, spec in REGISTRY.items() for size in spec.sizes]
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _tiny_batch(name: str, batch_size: int = 2, **kw):
    spec = get_model(name)
    return spec.make_batch(spec.sizes["tiny"], batch_size, **kw)


def _first_repeated_child(model: nn.Module) -> str:
    """FQN of element "1" of the first ModuleDict/ModuleList in the model, e.g. "layers.1"."""
    for fqn, mod in model.named_modules():
        if isinstance(mod, (nn.ModuleDict, nn.ModuleList)) and len(mod) > 1:
            return f"{fqn}.1"
    raise AssertionError("model has no repeated layers")


# ---------------------------------------------------------------- registry


def test_registry_lists_every_model():
    assert set(REGISTRY) == {"gpt", "llama", "vit", "resnet", "unet3d", "dlrm", "mlp"}
    for name, spec in REGISTRY.items():
        assert spec.name == name
        assert next(iter(spec.sizes)) == "tiny"
        assert spec.shape_kind in ("seq_len", "image_size", "volume_size", "none")
        assert set(spec.documented_params) == set(spec.sizes)
        assert spec.default_shape == spec.default_shape_for("tiny")
        assert (spec.default_shape is None) == (spec.shape_kind == "none")


def test_unknown_model_names_valid_models():
    with pytest.raises(ValueError, match="gpt.*llama.*vit.*resnet.*unet3d.*dlrm.*mlp"):
        get_model("bert")
    with pytest.raises(ValueError, match="valid models"):
        build("bert")


def test_unknown_size_names_valid_sizes():
    with pytest.raises(ValueError, match="tiny, 7B, 13B, 70B"):
        build("llama", "8B", device="meta")
    with pytest.raises(ValueError, match="valid sizes: tiny, ResNet-50"):
        get_model("resnet").default_shape_for("ResNet-18")


# ---------------------------------------------------------------- tiny models train


@pytest.mark.parametrize("name", REGISTRY)
def test_tiny_forward_backward(name):
    spec = get_model(name)
    model = build(name, "tiny")
    inputs, target = _tiny_batch(name)
    out = model(*inputs)
    assert isinstance(out, torch.Tensor) and out.shape[0] == 2
    loss = spec.loss_fn(out, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: no/invalid grad for {missing}"


@pytest.mark.parametrize("name", REGISTRY)
def test_tiny_trains_on_microbatch_of_one(name):
    """Pipelines cut batches into microbatches; batch size 1 must work in train mode (BatchNorm too)."""
    spec = get_model(name)
    inputs, target = _tiny_batch(name, batch_size=1)
    loss = spec.loss_fn(build(name)(*inputs), target)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("name", REGISTRY)
def test_inputs_batched_on_dim0_and_only_bn_buffers(name):
    inputs, target = _tiny_batch(name, batch_size=3)
    assert all(t.shape[0] == 3 for t in (*inputs, target))
    bad = [n for n, _ in build(name, device="meta").named_buffers() if not n.endswith(BN_BUFFERS)]
    assert not bad, f"{name}: buffers other than BatchNorm statistics: {bad}"


def test_make_batch_deterministic_shape_and_meta():
    spec = get_model("gpt")
    cfg = spec.sizes["tiny"]
    (a,), ta = spec.make_batch(cfg, 2, 16, generator=torch.Generator().manual_seed(1))
    (b,), tb = spec.make_batch(cfg, 2, 16, generator=torch.Generator().manual_seed(1))
    (c,), _ = spec.make_batch(cfg, 2, 16, generator=torch.Generator().manual_seed(2))
    assert a.shape == (2, 16) and a.dtype == torch.long
    assert torch.equal(a, b) and torch.equal(ta, tb) and not torch.equal(a, c)
    assert torch.equal(a[:, 1:], ta[:, :-1])  # target = next token
    (m,), tm = spec.make_batch(cfg, 2, device="meta")
    assert m.is_meta and tm.is_meta and m.shape == (2, cfg.block_size)
    with pytest.raises(ValueError, match="block_size"):
        spec.make_batch(cfg, 2, cfg.block_size + 1)


# ---------------------------------------------------------------- meta builds and counts


@pytest.mark.parametrize("name,size", ALL_SIZES)
def test_builds_on_meta_with_documented_count(name, size):
    model = build(name, size, device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert count_parameters(model) == get_model(name).documented_params[size]


@pytest.mark.parametrize(
    "name,size,expected",
    [
        ("gpt", "124M", 124.4e6),
        ("llama", "7B", 6.74e9),
        ("llama", "70B", 69e9),
        ("resnet", "ResNet-50", 25.6e6),
        ("vit", "B/16", 86.6e6),
    ],
)
def test_published_parameter_counts(name, size, expected):
    assert math.isclose(get_model(name).documented_params[size], expected, rel_tol=0.01)


def test_count_parameters_counts_tied_once():
    model = build("gpt", "tiny", device="meta")
    assert model.lm_head.weight is model.wte.weight
    total = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert count_parameters(model) == total - model.wte.weight.numel()


# ---------------------------------------------------------------- tracing


@pytest.mark.parametrize("name", REGISTRY)
def test_tiny_exports_on_meta(name):
    model = build(name, device="meta")
    inputs, _ = _tiny_batch(name, device="meta")
    ep = torch.export.export(model, inputs, strict=False)
    (out,) = next(n for n in ep.graph.nodes if n.op == "output").args[0]
    assert out.meta["val"].shape[0] == inputs[0].shape[0]


# ---------------------------------------------------------------- initialisation


@pytest.mark.parametrize("name", REGISTRY)
def test_init_of_a_stage_subset_matches_full_model(name):
    full = build(name, "tiny", seed=0)
    meta = build(name, "tiny", device="meta")
    fqn = _first_repeated_child(meta)
    part = meta.get_submodule(fqn)
    part.to_empty(device="cpu")
    init_parameters([(f"{fqn}.{n}", p) for n, p in part.named_parameters()], seed=0)
    for n, p in part.named_parameters():
        assert torch.equal(p, full.get_parameter(f"{fqn}.{n}")), f"{name}: {fqn}.{n} differs"


def test_init_of_a_tied_alias_matches_with_aliases():
    full = build("gpt", "tiny", seed=0)
    meta = build("gpt", "tiny", device="meta")
    aliases = tied_parameter_aliases(meta)
    assert aliases == {"lm_head.weight": "wte.weight"}
    head = meta.lm_head.to_empty(device="cpu")
    init_parameters([("lm_head.weight", head.weight)], seed=0, aliases=aliases)
    assert torch.equal(head.weight, full.wte.weight)


def test_build_keeps_tied_weights_tied():
    model = build("gpt", "tiny")
    assert model.lm_head.weight is model.wte.weight


def test_materialize_with_prefix_matches_full_model():
    """Parameters and BatchNorm buffers of one materialised block equal the full model's."""
    full = build("resnet", "tiny", seed=3).layers["2"].state_dict()
    part = materialize(build("resnet", "tiny", device="meta").layers["2"], "cpu", 3, prefix="layers.2.")
    part_sd = part.state_dict()
    assert part_sd.keys() == full.keys()
    assert all(torch.equal(part_sd[k], full[k]) for k in full)


@pytest.mark.parametrize("name", ["gpt", "resnet"])
def test_same_seed_same_weights_different_seed_different(name):
    a, b, c = build(name, seed=0), build(name, seed=0), build(name, seed=1)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    random_params = [n for n, p in a.named_parameters() if p.ndim >= 2]
    assert all(not torch.equal(sa[k], sc[k]) for k in random_params)


def test_init_rule_by_name_and_shape():
    model = build("resnet", "tiny")
    for n, p in model.named_parameters():
        if n.endswith("bias"):
            assert torch.all(p == 0), n
        elif p.ndim == 1:
            assert torch.all(p == 1), n  # BatchNorm weights
    assert torch.all(model.stem.bn.running_var == 1) and torch.all(model.stem.bn.running_mean == 0)
    conv = model.stem.conv.weight  # (8, 3, 7, 7): std 1/sqrt(3*7*7)
    assert abs(conv.std().item() * math.sqrt(3 * 49) - 1) < 0.15
    fc = model.fc.weight
    assert abs(fc.std().item() / 0.02 - 1) < 0.15
    gpt = build("gpt")
    assert torch.all(gpt.layers["0"].ln_1.weight == 1) and torch.all(gpt.layers["0"].ln_1.bias == 0)


def test_init_parameters_is_generic():
    """The rule needs no model-specific code: works on a plain torch module with its own names."""
    enc = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32)
    init_parameters(enc.named_parameters(), seed=0)
    assert torch.all(enc.norm1.weight == 1) and torch.all(enc.self_attn.in_proj_bias == 0)
    assert 0.01 < enc.linear1.weight.std().item() < 0.03
