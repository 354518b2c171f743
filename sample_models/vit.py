"""Vision Transformer (ViT, Dosovitskiy et al. 2021) for image classification.

Conv patch embedding, a learned class token, learned position embeddings,
pre-LN encoder blocks, final LayerNorm and a linear head on the class token.
Parameter names and counts follow timm `vit_base_patch16_224`.

Inputs:  images (B, 3, S, S) float32 with S == image_size.
Output:  logits (B, num_classes) float.
Target:  class ids (B,) int64; loss_fn = mean cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .spec import SampleModel, randint, randn, resolve_generator


@dataclass(kw_only=True, frozen=True, slots=True)
class ViTConfig:
    image_size: int = 224
    """Input side in pixels; fixed, because the position embedding has one row per patch."""
    patch_size: int = 16
    """Patch side in pixels; image_size must be divisible by it."""
    in_channels: int = 3
    """Image channels."""
    num_classes: int = 1000
    """ImageNet-1k classes."""
    dim: int = 768
    """Model width."""
    depth: int = 12
    """Number of encoder blocks (`layers.0` ... `layers.{depth-1}`)."""
    n_heads: int = 12
    """Attention heads; dim must be divisible by it."""
    mlp_ratio: int = 4
    """MLP hidden width = mlp_ratio * dim."""

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size ({self.patch_size})")
        if self.dim % self.n_heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Attention(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape  # batch, tokens (1 + patches), dim
        qkv = self.qkv(x).view(B, N, 3, self.n_heads, C // self.n_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, N, hs)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, N, hs), bidirectional
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class MLP(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.dim, config.mlp_ratio * config.dim)
        self.fc2 = nn.Linear(config.mlp_ratio * config.dim, config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.dim, eps=1e-6)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.dim, eps=1e-6)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Patches -> tokens, prepend the class token, add position embeddings."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(config.in_channels, config.dim, config.patch_size, stride=config.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.num_patches, config.dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.proj(images)  # (B, dim, S/p, S/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, dim), N = (S/p)^2
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, dim)
        return torch.cat((cls, x), dim=1) + self.pos_embed  # (B, 1 + N, dim)


class ViT(nn.Module):
    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = PatchEmbed(config)
        self.layers = nn.ModuleDict({str(i): Block(config) for i in range(config.depth)})
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.head = nn.Linear(config.dim, config.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)  # (B, 1 + N, dim)
        for layer in self.layers.values():
            x = layer(x)
        x = self.norm(x)
        return self.head(x[:, 0])  # class token -> (B, num_classes)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; logits (B, num_classes), target (B,) int64."""
    return F.cross_entropy(logits.float(), target)


def make_batch(
    config: ViTConfig,
    batch_size: int,
    shape: int | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Random images ((B, C, S, S) float32,) and labels (B,) int64. S must equal image_size."""
    size = config.image_size if shape is None else shape
    if size != config.image_size:
        raise ValueError(f"ViT image size is fixed by its position embedding: got {size}, expected {config.image_size}")
    g = resolve_generator(generator)
    images = randn((batch_size, config.in_channels, size, size), g, device)
    labels = randint(config.num_classes, (batch_size,), g, device)
    return (images,), labels


SIZES = {
    "tiny": ViTConfig(image_size=32, patch_size=8, num_classes=10, dim=64, depth=4, n_heads=4),
    "B/16": ViTConfig(image_size=224, patch_size=16, num_classes=1000, dim=768, depth=12, n_heads=12),
}

SAMPLE = SampleModel(
    name="vit",
    description="Vision Transformer: conv patch embedding, class token, pre-LN encoder, linear head",
    sizes=SIZES,
    factory=ViT,
    make_batch=make_batch,
    loss_fn=loss_fn,
    shape_kind="image_size",
    default_shape=SIZES["tiny"].image_size,
    documented_params={
        "tiny": 214_218,
        "B/16": 86_567_656,  # timm vit_base_patch16_224
    },
    shape_of=lambda config: config.image_size,
)
