"""GPT-2: decoder-only transformer with learned positions, pre-LN blocks and a tied LM head.

Follows karpathy/nanoGPT `model.py` (itself following OpenAI GPT-2 and HF
`GPT2LMHeadModel`), without dropout and without the loss: forward returns logits.

Inputs:  tokens (B, T) int64, T <= block_size.
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
class GPTConfig:
    block_size: int = 1024
    """Context length: rows of the position embedding, and the longest sequence forward accepts."""
    vocab_size: int = 50257
    """GPT-2 BPE vocabulary (not padded to 50304 as nanoGPT does, so counts match GPT-2)."""
    n_layer: int = 12
    """Number of transformer blocks (`layers.0` ... `layers.{n_layer-1}`)."""
    n_head: int = 12
    """Attention heads per block."""
    n_embd: int = 768
    """Model width; must be divisible by n_head."""
    bias: bool = True
    """Biases in Linear and LayerNorm, as in GPT-2."""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape  # batch, sequence length, n_embd
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        # is_causal builds the mask inside the kernel: no (T, T) buffer, nothing to slice.
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # GPT-2 uses the tanh GELU


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embedding
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # position embedding
        self.layers = nn.ModuleDict({str(i): Block(config) for i in range(config.n_layer)})
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf 2017): one Parameter, registered under wte.weight first.
        self.lm_head.weight = self.wte.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        pos = torch.arange(T, dtype=torch.long, device=tokens.device)  # (T,)
        x = self.wte(tokens) + self.wpe(pos)  # (B, T, C) + (T, C)
        for layer in self.layers.values():
            x = layer(x)
        x = self.ln_f(x)
        return self.lm_head(x)  # (B, T, vocab_size)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits (B, T, V), target (B, T) int64."""
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten())


def make_batch(
    config: GPTConfig,
    batch_size: int,
    shape: int | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Random tokens: inputs ((B, T) int64,), target (B, T) int64 = inputs shifted by one."""
    seq_len = config.block_size if shape is None else shape
    if not 1 <= seq_len <= config.block_size:
        raise ValueError(f"seq_len {seq_len} must be in [1, block_size={config.block_size}]")
    seq = randint(config.vocab_size, (batch_size, seq_len + 1), resolve_generator(generator), device)
    return (seq[:, :-1],), seq[:, 1:]


SIZES = {
    "tiny": GPTConfig(block_size=64, vocab_size=512, n_layer=4, n_head=4, n_embd=64),
    "124M": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # GPT-2 small
    "350M": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # GPT-2 medium
    "1.5B": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # GPT-2 XL
}

SAMPLE = SampleModel(
    name="gpt",
    description="GPT-2 decoder-only LM: learned positions, pre-LN, tied LM head (nanoGPT)",
    sizes=SIZES,
    factory=GPT,
    make_batch=make_batch,
    loss_fn=loss_fn,
    shape_kind="seq_len",
    default_shape=SIZES["tiny"].block_size,
    documented_params={
        "tiny": 236_928,
        "124M": 124_439_808,  # HF gpt2, counting the tied head once
        "350M": 354_823_168,  # HF gpt2-medium
        "1.5B": 1_557_611_200,  # HF gpt2-xl
    },
    shape_of=lambda config: config.block_size,
)
