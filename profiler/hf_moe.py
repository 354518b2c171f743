"""Mixture-of-experts on meta: balanced routing for estimates.

Routing is data-dependent (which expert gets which token), so a meta trace cannot see it, and
transformers' default experts kernel (`grouped_mm`) counts tokens per expert with ops that do not
run on meta/fake tensors. For estimates pipeplan registers one more experts implementation with
transformers (`ExpertsInterface`, the registry behind `config.experts_implementation`), used only
when a model is built on meta:

- balanced routing: the tokens x top-k (token, expert) pairs are split evenly over the experts,
  each expert gets ceil(tokens x top-k / experts) rows, one batched matmul per projection
  (the FLOPs and activations of a perfectly balanced router; the router's weights still
  scale the outputs, so its gradient is traced);
- memory counts every expert's parameters (they are the module's parameters, untouched).

Measured profiles (real weights) and the exported job run transformers' own kernels and the real
routing. The profile's notes say when balanced routing was assumed.
"""

from __future__ import annotations

import torch
from torch import nn

BALANCED = "pipeplan_balanced"
NOTE = "MoE experts estimated with balanced routing (each expert gets tokens x top-k / experts)"


def _matmul(x: torch.Tensor, weight: torch.Tensor, bias, transposed: bool) -> torch.Tensor:
    """x (E, C, in) times each expert's weight: (E, out, in), or (E, in, out) when transposed."""
    out = torch.bmm(x, weight if transposed else weight.transpose(1, 2))
    return out if bias is None else out + bias.unsqueeze(1)


def balanced_experts_forward(self: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                             top_k_weights: torch.Tensor) -> torch.Tensor:
    """An experts forward with every expert receiving the same number of (token, expert) pairs."""
    num_tokens, hidden_dim = hidden_states.shape[0], hidden_states.shape[-1]
    top_k = top_k_index.size(-1)
    up = self.gate_up_proj if self.has_gate else self.up_proj
    up_bias = (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias) if self.has_bias else None
    experts = up.shape[0]
    pairs = num_tokens * top_k
    rows = -(-pairs // experts)
    x = hidden_states.repeat_interleave(top_k, dim=0)
    if rows * experts > pairs:
        x = torch.nn.functional.pad(x, (0, 0, 0, rows * experts - pairs))
    x = _matmul(x.reshape(experts, rows, hidden_dim), up, up_bias, self.is_transposed)
    x = self._apply_gate(x) if self.has_gate else self.act_fn(x)
    x = _matmul(x, self.down_proj, self.down_proj_bias if self.has_bias else None, self.is_transposed)
    if getattr(self, "has_post_expert_norm", False):
        x = self.post_expert_norm(x)
    x = x.reshape(experts * rows, hidden_dim)[:pairs] * top_k_weights.reshape(-1, 1).to(x.dtype)
    return x.view(num_tokens, top_k, hidden_dim).sum(dim=1).to(hidden_states.dtype)


def register() -> bool:
    """Register BALANCED with transformers' experts registry; False when this transformers has none."""
    try:
        from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
    except ImportError:
        return False
    if BALANCED not in ALL_EXPERTS_FUNCTIONS:
        ALL_EXPERTS_FUNCTIONS.register(BALANCED, balanced_experts_forward)
    return True


def uses_balanced(model: nn.Module) -> bool:
    """Whether any experts module of `model` runs the balanced estimate."""
    for m in model.modules():
        cfg = getattr(m, "config", None)
        if hasattr(m, "has_gate") and getattr(cfg, "_experts_implementation", None) == BALANCED:
            return True
    return False
