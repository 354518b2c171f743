"""Deep residual MLP for fast tests: many identical layers, nothing but matmuls.

x -> input projection -> n_layers x (x + ReLU(Linear(LayerNorm(x)))) -> LayerNorm -> head.
The pre-norm residual form keeps activations and gradients at a useful scale at
any depth with the normal(0, 0.02) init of `sample_models.init`.

Inputs:  x (B, in_features) float32.
Output:  prediction (B, out_features) float.
Target:  (B, out_features) float32; loss_fn = mean squared error.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .spec import SampleModel, randn, resolve_generator


@dataclass(kw_only=True, frozen=True, slots=True)
class MLPConfig:
    in_features: int = 64
    """Input features per sample."""
    width: int = 64
    """Hidden width of every layer."""
    n_layers: int = 8
    """Residual layers (`layers.0` ... `layers.{n_layers-1}`)."""
    out_features: int = 8
    """Regression outputs per sample."""

    def __post_init__(self) -> None:
        if min(self.in_features, self.width, self.n_layers, self.out_features) < 1:
            raise ValueError(f"all MLPConfig fields must be >= 1, got {self}")


class Layer(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + F.relu(self.fc(self.norm(x)))  # (B, width)


class MLP(nn.Module):
    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        self.input = nn.Linear(config.in_features, config.width)
        self.layers = nn.ModuleDict({str(i): Layer(config.width) for i in range(config.n_layers)})
        self.norm = nn.LayerNorm(config.width)
        self.head = nn.Linear(config.width, config.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input(x)  # (B, width)
        for layer in self.layers.values():
            x = layer(x)
        return self.head(self.norm(x))  # (B, out_features)


def loss_fn(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error; pred and target (B, out_features)."""
    return F.mse_loss(pred.float(), target)


def make_batch(
    config: MLPConfig,
    batch_size: int,
    shape: int | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Random ((B, in_features) float32,) and target (B, out_features) float32. `shape` is ignored."""
    g = resolve_generator(generator)
    x = randn((batch_size, config.in_features), g, device)
    target = randn((batch_size, config.out_features), g, device)
    return (x,), target


SIZES = {
    "tiny": MLPConfig(in_features=64, width=64, n_layers=8, out_features=8),
    "base": MLPConfig(in_features=1024, width=1024, n_layers=24, out_features=1024),
    "large": MLPConfig(in_features=8192, width=8192, n_layers=64, out_features=8192),
}

SAMPLE = SampleModel(
    name="mlp",
    description="Deep pre-norm residual MLP (regression), for fast tests",
    sizes=SIZES,
    factory=MLP,
    make_batch=make_batch,
    loss_fn=loss_fn,
    shape_kind="none",
    default_shape=None,
    documented_params={"tiny": 39_112, "base": 27_340_800, "large": 4_430_790_656},
)
