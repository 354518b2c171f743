"""DLRM (Naumov et al. 2019): recommendation model with embedding tables and dot interactions.

Dense features go through a bottom MLP; each sparse feature looks up a bag of
rows in its own EmbeddingBag (sum); all pairwise dot products of the resulting
vectors (strict upper triangle, a fixed index set) are concatenated with the
dense vector and fed to a top MLP that outputs one logit per sample.
Follows facebookresearch/dlrm `dlrm_s_pytorch.py` (`interact_features`, "dot").

Inputs:  dense (B, num_dense) float32, sparse (B, n_tables, bag_size) int64 with
         sparse[:, t] < table_rows[t] (fixed bag size: no offsets, nothing jagged).
Output:  logits (B,) float.
Target:  clicks (B,) float32 in {0, 1}; loss_fn = mean BCE-with-logits.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .spec import SampleModel, randint, randn, resolve_generator

# Criteo Kaggle Display Advertising Challenge: rows per categorical feature C1..C26
# (33,762,577 in all), as used by facebookresearch/dlrm for the Kaggle dataset.
CRITEO_KAGGLE_TABLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip


@dataclass(kw_only=True, frozen=True, slots=True)
class DLRMConfig:
    num_dense: int = 13
    """Dense (continuous) features per sample (Criteo: I1..I13)."""
    table_rows: tuple[int, ...] = CRITEO_KAGGLE_TABLE_ROWS
    """Rows of each embedding table, one table per sparse feature."""
    embedding_dim: int = 128
    """Width of every embedding row and of the bottom MLP output (MLPerf DLRM: 128)."""
    bottom_mlp: tuple[int, ...] = (512, 256)
    """Hidden widths of the bottom MLP; its last layer outputs embedding_dim (MLPerf: 13-512-256-128)."""
    top_mlp: tuple[int, ...] = (1024, 1024, 512, 256)
    """Hidden widths of the top MLP; its last layer outputs 1 (MLPerf: ...-1024-1024-512-256-1)."""
    bag_size: int = 1
    """Indices per table per sample in batches (Criteo is one-hot: 1)."""

    def __post_init__(self) -> None:
        if not self.table_rows or min(self.table_rows) < 1:
            raise ValueError(f"table_rows must be non-empty and >= 1 each, got {self.table_rows}")
        if self.bag_size < 1:
            raise ValueError(f"bag_size must be >= 1, got {self.bag_size}")

    @property
    def num_interactions(self) -> int:
        f = len(self.table_rows) + 1  # embeddings + bottom MLP output
        return f * (f - 1) // 2


def _mlp_layers(widths: list[int]) -> nn.ModuleList:
    return nn.ModuleList([nn.Linear(a, b) for a, b in itertools.pairwise(widths)])


class DLRM(nn.Module):
    def __init__(self, config: DLRMConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embedding_dim
        self.bottom_mlp = _mlp_layers([config.num_dense, *config.bottom_mlp, d])
        self.embeddings = nn.ModuleDict(
            {str(t): nn.EmbeddingBag(rows, d, mode="sum") for t, rows in enumerate(config.table_rows)}
        )
        self.top_mlp = _mlp_layers([d + config.num_interactions, *config.top_mlp, 1])

    def interact(self, x: torch.Tensor, embedded: list[torch.Tensor]) -> torch.Tensor:
        feats = torch.stack([x, *embedded], dim=1)  # (B, F, d), F = n_tables + 1
        Z = torch.bmm(feats, feats.transpose(1, 2))  # (B, F, F) all pairwise dot products
        n_feat = feats.shape[1]
        li, lj = torch.triu_indices(n_feat, n_feat, offset=1, device=x.device)  # static: F is a Python int
        return torch.cat((x, Z[:, li, lj]), dim=1)  # (B, d + F(F-1)/2)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = dense  # (B, num_dense)
        for layer in self.bottom_mlp:
            x = F.relu(layer(x))  # ends at (B, d)
        # sparse[:, t] is (B, bag): a 2-D input makes EmbeddingBag sum each row's bag.
        embedded = [table(sparse[:, t]) for t, table in enumerate(self.embeddings.values())]  # n_tables x (B, d)
        z = self.interact(x, embedded)
        last = len(self.top_mlp) - 1
        for i, layer in enumerate(self.top_mlp):
            z = layer(z)
            if i < last:
                z = F.relu(z)
        return z.squeeze(1)  # (B,) logits


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy on logits; logits (B,), target (B,) float32 in {0, 1}."""
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def make_batch(
    config: DLRMConfig,
    batch_size: int,
    shape: int | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """((dense (B, num_dense) float32, sparse (B, n_tables, bag) int64), clicks (B,) float32).
    `shape` is ignored."""
    g = resolve_generator(generator)
    dense = randn((batch_size, config.num_dense), g, device)
    sparse = torch.stack(
        [randint(rows, (batch_size, config.bag_size), g, device) for rows in config.table_rows], dim=1
    )  # (B, n_tables, bag)
    clicks = randint(2, (batch_size,), g, device).float()
    return (dense, sparse), clicks


SIZES = {
    "tiny": DLRMConfig(
        table_rows=(100, 50, 200, 30, 1000, 20, 75, 10),
        embedding_dim=16,
        bottom_mlp=(32,),
        top_mlp=(64, 32),
        bag_size=2,
    ),
    # Criteo Kaggle table sizes with MLPerf-sized MLPs and 128-wide rows: 4.3B embedding parameters.
    "criteo-kaggle": DLRMConfig(),
}

SAMPLE = SampleModel(
    name="dlrm",
    description="DLRM recommender: bottom MLP, EmbeddingBag tables, pairwise dot interaction, top MLP",
    sizes=SIZES,
    factory=DLRM,
    make_batch=make_batch,
    loss_fn=loss_fn,
    shape_kind="none",
    default_shape=None,
    documented_params={"tiny": 30_241, "criteo-kaggle": 4_323_978_753},
)
