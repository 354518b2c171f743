"""3D U-Net (Çiçek et al. 2016) for volumetric segmentation.

Encoder levels of two (Conv3d 3x3x3 -> GroupNorm -> ReLU) each, max-pooled
between levels; a bottleneck; decoder levels that upsample with a transposed
conv, concatenate the encoder output of the same resolution (a skip connection
that crosses every level below it) and apply two more convs; a 1x1x1 head.
GroupNorm instead of the paper's BatchNorm, so there are no buffers at all.

Inputs:  volume (B, in_channels, S, S, S) float32, S divisible by 2**levels.
Output:  logits (B, num_classes, S, S, S) float.
Target:  labels (B, S, S, S) int64; loss_fn = mean per-voxel cross-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .spec import SampleModel, randint, randn, resolve_generator


@dataclass(kw_only=True, frozen=True, slots=True)
class UNet3DConfig:
    in_channels: int = 4
    """Input channels (4 = BraTS MRI modalities T1, T1ce, T2, FLAIR)."""
    num_classes: int = 4
    """Output classes per voxel (BraTS: background + 3 tumour regions)."""
    base_channels: int = 32
    """Channels of the first encoder level; level i has base_channels * 2**i."""
    levels: int = 4
    """Encoder (and decoder) levels; the bottleneck sits below them at base_channels * 2**levels."""
    groups: int = 8
    """GroupNorm groups (Wu & He 2018 default 32; 8 fits 8-channel tiny levels)."""
    volume_size: int = 128
    """Default volume side for batches; forward accepts any side divisible by 2**levels."""

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ValueError(f"levels must be >= 1, got {self.levels}")
        if self.base_channels % self.groups != 0:
            raise ValueError(f"base_channels ({self.base_channels}) must be divisible by groups ({self.groups})")
        if self.volume_size % 2**self.levels != 0:
            raise ValueError(f"volume_size ({self.volume_size}) must be divisible by 2**levels ({2**self.levels})")


class DoubleConv(nn.Module):
    """(Conv3d 3x3x3 -> GroupNorm -> ReLU) x 2. Convs have no bias: GroupNorm re-centres."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv3d(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x)))


class Up(nn.Module):
    """Upsample x2 with a transposed conv, concatenate the skip, DoubleConv."""

    def __init__(self, in_ch: int, out_ch: int, groups: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose3d(in_ch, out_ch, kernel_size=2, stride=2)
        self.conv = DoubleConv(2 * out_ch, out_ch, groups)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, out_ch, 2D, 2H, 2W)
        return self.conv(torch.cat((skip, x), dim=1))  # cat -> (B, 2*out_ch, 2D, 2H, 2W)


class UNet3D(nn.Module):
    def __init__(self, config: UNet3DConfig) -> None:
        super().__init__()
        self.config = config
        ch = [config.base_channels * 2**i for i in range(config.levels + 1)]  # ch[levels] = bottleneck
        g = config.groups
        self.down = nn.ModuleList(
            [DoubleConv(config.in_channels if i == 0 else ch[i - 1], ch[i], g) for i in range(config.levels)]
        )
        self.bottleneck = DoubleConv(ch[-2], ch[-1], g)
        # up.0 is the deepest decoder level; up.{levels-1} returns to full resolution.
        self.up = nn.ModuleList([Up(ch[i + 1], ch[i], g) for i in reversed(range(config.levels))])
        self.head = nn.Conv3d(ch[0], config.num_classes, kernel_size=1)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        skips = []
        x = volume  # (B, in_channels, S, S, S)
        for level in self.down:
            x = level(x)  # (B, ch[i], S/2^i, ...)
            skips.append(x)
            x = F.max_pool3d(x, kernel_size=2)  # (B, ch[i], S/2^(i+1), ...)
        x = self.bottleneck(x)  # (B, ch[levels], S/2^levels, ...)
        for level, skip in zip(self.up, reversed(skips)):
            x = level(x, skip)
        return self.head(x)  # (B, num_classes, S, S, S)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean per-voxel cross-entropy; logits (B, K, S, S, S), target (B, S, S, S) int64."""
    return F.cross_entropy(logits.float(), target)


def make_batch(
    config: UNet3DConfig,
    batch_size: int,
    shape: int | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """Random volumes ((B, C, S, S, S) float32,) and labels (B, S, S, S) int64."""
    size = config.volume_size if shape is None else shape
    if size < 1 or size % 2**config.levels != 0:
        raise ValueError(f"volume size {size} must be a positive multiple of 2**levels = {2**config.levels}")
    g = resolve_generator(generator)
    volume = randn((batch_size, config.in_channels, size, size, size), g, device)
    labels = randint(config.num_classes, (batch_size, size, size, size), g, device)
    return (volume,), labels


SIZES = {
    "tiny": UNet3DConfig(in_channels=1, num_classes=3, base_channels=8, levels=3, groups=4, volume_size=16),
    "base": UNet3DConfig(in_channels=4, num_classes=4, base_channels=32, levels=4, groups=8, volume_size=128),
}

SAMPLE = SampleModel(
    name="unet3d",
    description="3D U-Net for volumetric segmentation: Conv3d + GroupNorm, skip connections by concatenation",
    sizes=SIZES,
    factory=UNet3D,
    make_batch=make_batch,
    loss_fn=loss_fn,
    shape_kind="volume_size",
    default_shape=SIZES["tiny"].volume_size,
    documented_params={"tiny": 350_827, "base": 22_580_964},
    shape_of=lambda config: config.volume_size,
)
