"""Llama 2: RMSNorm, rotary position embeddings, SwiGLU MLP, grouped-query attention.

Follows meta-llama/llama `model.py` and torchtitan `models/llama3/model.py`:
no biases, untied output head. Differences for tracing and pipelining: RoPE
cos/sin are computed from `torch.arange` inside each attention (no
`freqs_cis` buffer, nothing sliced by T, and nothing but the hidden state
crosses a layer boundary); rotation uses real arithmetic, not complex numbers.

Inputs:  tokens (B, T) int64, any T.
Output:  logits (B, T, vocab_size) float.
Target:  next tokens (B, T) int64; loss_fn = mean cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .spec import SampleModel, randint, resolve_generator


@dataclass(kw_only=True, frozen=True, slots=True)
class LlamaConfig:
    dim: int = 4096
    """Model width."""
    n_layers: int = 32
    """Number of transformer blocks (`layers.0` ... `layers.{n_layers-1}`)."""
    n_heads: int = 32
    """Query heads; head_dim = dim // n_heads."""
    n_kv_heads: int | None = None
    """Key/value heads for grouped-query attention; None means n_heads (plain MHA)."""
    vocab_size: int = 32000
    """Llama 2 SentencePiece vocabulary."""
    ffn_dim: int = 11008
    """SwiGLU hidden width (Llama 2 7B: 11008 = 256 * ceil(8/3 * 4096 / 256))."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    rope_theta: float = 10000.0
    """RoPE base (RoFormer, Su et al. 2021)."""
    max_seq_len: int = 4096
    """Default sequence length for batches (Llama 2 context); forward accepts any length."""

    def __post_init__(self) -> None:
        if self.dim % self.n_heads != 0 or (self.dim // self.n_heads) % 2 != 0:
            raise ValueError(f"dim ({self.dim}) / n_heads ({self.n_heads}) must be an even integer")
        if self.n_heads % self.kv_heads != 0:
            raise ValueError(f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})")

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


def rope_cos_sin(seq_len: int, head_dim: int, theta: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim/2): angle[t, i] = t * theta^(-2i/head_dim) (RoFormer eq. 15)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    angles = torch.outer(t, inv_freq)  # (T, hd/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of x (B, T, nh, hd) by the angles (T, hd/2)."""
    B, T, nh, hd = x.shape
    xp = x.float().reshape(B, T, nh, hd // 2, 2)
    x1, x2 = xp[..., 0], xp[..., 1]  # (B, T, nh, hd/2)
    cos = cos.view(1, T, 1, hd // 2)
    sin = sin.view(1, T, 1, hd // 2)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, T, nh, hd/2, 2)
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.n_kv_heads = config.kv_heads
        self.head_dim = config.dim // config.n_heads
        self.rope_theta = config.rope_theta
        self.wq = nn.Linear(config.dim, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.dim, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)  # (B, T, nkv, hd)
        cos, sin = rope_cos_sin(T, self.head_dim, self.rope_theta, x.device)  # (T, hd/2) each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)
        n_rep = self.n_heads // self.n_kv_heads
        if n_rep > 1:  # GQA: each kv head serves n_rep query heads
            k = k.repeat_interleave(n_rep, dim=1)  # (B, nh, T, hd)
            v = v.repeat_interleave(n_rep, dim=1)  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, nh*hd)
        return self.wo(y)


class FeedForward(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.dim, config.ffn_dim, bias=False)  # gate
        self.w2 = nn.Linear(config.ffn_dim, config.dim, bias=False)  # down
        self.w3 = nn.Linear(config.dim, config.ffn_dim, bias=False)  # up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # SwiGLU (Shazeer 2020)


class TransformerBlock(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(config) for i in range(config.n_layers)})
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)  # (B, T, dim)
        for layer in self.layers.values():
            h = layer(h)
        return self.output(self.norm(h))  # (B, T, vocab_size)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, T, V), target (B, T) int64."""
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())


def make_batch(
    config: LlamaConfig,
    batch_size: int,
    shape: int | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Random tokens: inputs ((B, T) int64,), target (B, T) int64 = inputs shifted by one."""
    seq_len = config.max_seq_len if shape is None else shape
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    seq = randint(config.vocab_size, (batch_size, seq_len + 1), resolve_generator(generator), device)
    return (seq[:, :-1],), seq[:, 1:]


SIZES = {
    "tiny": LlamaConfig(dim=64, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=512, ffn_dim=192, max_seq_len=64),
    "7B": LlamaConfig(dim=4096, n_layers=32, n_heads=32, ffn_dim=11008),
    "13B": LlamaConfig(dim=5120, n_layers=40, n_heads=40, ffn_dim=13824),
    "70B": LlamaConfig(dim=8192, n_layers=80, n_heads=64, n_kv_heads=8, ffn_dim=28672),
}

SAMPLE = SampleModel(
    name="llama",
    description="Llama 2 decoder-only LM: RMSNorm, RoPE, SwiGLU, grouped-query attention, untied head",
    sizes=SIZES,
    factory=Llama,
    make_batch=make_batch,
    loss_fn=loss_fn,
    shape_kind="seq_len",
    default_shape=SIZES["tiny"].max_seq_len,
    documented_params={
        "tiny": 262_720,
        "7B": 6_738_415_616,  # Llama 2 paper / HF meta-llama/Llama-2-7b-hf
        "13B": 13_015_864_320,  # HF meta-llama/Llama-2-13b-hf
        "70B": 68_976_648_192,  # HF meta-llama/Llama-2-70b-hf
    },
    shape_of=lambda config: config.max_seq_len,
)
