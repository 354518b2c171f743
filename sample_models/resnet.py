"""ResNet with bottleneck blocks and BatchNorm (He et al. 2016), torchvision layout (v1.5).

Same layers and parameter count as torchvision `resnet50` (stride on the 3x3
conv), but the 16 bottleneck blocks sit in one flat `layers` ModuleDict
(`layers.0` ... `layers.15`) instead of `layer1.0` ... `layer4.2`, so a
pipeline split can cut between any two blocks. BatchNorm running statistics
are the only buffers.

Inputs:  images (B, 3, S, S) float32, any S >= 32 (S >= 64 keeps the last stage at
         2x2 or more, so batch-1 microbatches still train through BatchNorm).
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
class ResNetConfig:
    blocks_per_stage: tuple[int, ...] = (3, 4, 6, 3)
    """Bottleneck blocks in each stage (ResNet-50: 3, 4, 6, 3); stage i has width * 2**i channels."""
    width: int = 64
    """Stem output channels and bottleneck width of the first stage."""
    expansion: int = 4
    """Bottleneck output channels = expansion * bottleneck width."""
    in_channels: int = 3
    """Image channels."""
    num_classes: int = 1000
    """ImageNet-1k classes."""
    image_size: int = 224
    """Default input side for batches; forward accepts any side >= 32."""

    def __post_init__(self) -> None:
        if not self.blocks_per_stage or min(self.blocks_per_stage) < 1:
            raise ValueError(f"blocks_per_stage must be non-empty and >= 1 each, got {self.blocks_per_stage}")


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride) -> 1x1 expand, plus a projected shortcut when shapes change."""

    def __init__(self, in_ch: int, width: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class Stem(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(config.in_channels, config.width, 7, stride=2, padding=3, bias=False)
        self.bn = nn.BatchNorm2d(config.width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(images)))  # (B, width, S/2, S/2)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)  # (B, width, S/4, S/4)


class ResNet(nn.Module):
    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = Stem(config)
        blocks = []
        in_ch = config.width
        for stage, n_blocks in enumerate(config.blocks_per_stage):
            width = config.width * 2**stage
            out_ch = width * config.expansion
            for b in range(n_blocks):
                stride = 2 if stage > 0 and b == 0 else 1  # halve the side at the start of stages 2..
                blocks.append(Bottleneck(in_ch, width, out_ch, stride))
                in_ch = out_ch
        self.layers = nn.ModuleDict({str(i): block for i, block in enumerate(blocks)})
        self.fc = nn.Linear(in_ch, config.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.stem(images)  # (B, width, S/4, S/4)
        for layer in self.layers.values():
            x = layer(x)  # ends at (B, 32 * width, S/32, S/32) for 4 stages
        x = x.mean(dim=(2, 3))  # global average pool -> (B, C)
        return self.fc(x)  # (B, num_classes)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; logits (B, num_classes), target (B,) int64."""
    return F.cross_entropy(logits.float(), target)


def make_batch(
    config: ResNetConfig,
    batch_size: int,
    shape: int | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Random images ((B, C, S, S) float32,) and labels (B,) int64."""
    size = config.image_size if shape is None else shape
    if size < 32:
        raise ValueError(f"image size must be >= 32, got {size}")
    g = resolve_generator(generator)
    images = randn((batch_size, config.in_channels, size, size), g, device)
    labels = randint(config.num_classes, (batch_size,), g, device)
    return (images,), labels


SIZES = {
    "tiny": ResNetConfig(blocks_per_stage=(1, 1, 1, 1), width=8, num_classes=10, image_size=64),
    "ResNet-50": ResNetConfig(blocks_per_stage=(3, 4, 6, 3), width=64, num_classes=1000, image_size=224),
}

SAMPLE = SampleModel(
    name="resnet",
    description="Bottleneck ResNet with BatchNorm (torchvision v1.5 layout, flat block list)",
    sizes=SIZES,
    factory=ResNet,
    make_batch=make_batch,
    loss_fn=loss_fn,
    shape_kind="image_size",
    default_shape=SIZES["tiny"].image_size,
    documented_params={
        "tiny": 130_962,
        "ResNet-50": 25_557_032,  # torchvision resnet50
    },
    shape_of=lambda config: config.image_size,
)
