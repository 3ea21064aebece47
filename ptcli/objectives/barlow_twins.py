"""Barlow Twins (Zbontar, Jing, Misra, LeCun and Deny, "Barlow Twins: Self-Supervised Learning via Redundancy
Reduction", ICML 2021, arXiv:2103.03230): two augmented views, a projector MLP, and a loss that pushes the
cross-correlation matrix of the two views' batch-normalized projections to the identity:

    C = BN(z1)^T BN(z2) / N,   loss = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2

(invariance on the diagonal, redundancy reduction off it; no negatives, no momentum target). ``BN`` is a
BatchNorm without affine parameters in training mode, i.e. each dimension standardized over the batch, as in
the official code (facebookresearch/barlowtwins).

The paper's projector is three 8,192-wide layers and lambda = 0.0051; at ptcli's small scale (``model=convnet``
on 8x8 digits, 128 features) three 512-wide layers, and the paper's lambda unchanged. Scaling lambda with the
width instead (each dimension has one diagonal and D - 1 off-diagonal terms, so lambda * D constant: 0.082 at
D = 512) did worse there: 150-step runs at batch 256 reached a validation kNN accuracy of 0.889 with 0.082, 0.961
with 0.0051, 0.944 with 0.002 (0.828 at random init; one run each, 180 images). The projector exists for the loss
only; downstream code uses ``BarlowTwins.encoder``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ptcli.augment import DEFAULT_SMALL_IMAGE_OPS, Augment
from ptcli.objectives import check_number, check_sizes, gather_rows, mlp, output, sharded, two_views


@dataclass
class BarlowTwinsConfig:
    """``objective=barlow_twins``: the defaults of ``BarlowTwins`` (conf/objective/barlow_twins.yaml extends it)."""

    _target_: str = "ptcli.objectives.barlow_twins.BarlowTwins"
    # Ordered augmentation ops (ptcli/augment.py), as objective=simclr; null or [] = the small-image defaults.
    augment: list[Any] | None = field(default_factory=lambda: copy.deepcopy(DEFAULT_SMALL_IMAGE_OPS))
    proj_hidden: int = 512
    proj_dim: int = 512
    proj_layers: int = 3  # linear layers of the projector
    lambd: float = 0.0051  # weight of the off-diagonal (redundancy reduction) terms


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Each column to mean 0 and variance 1 over the batch: ``BatchNorm1d(affine=False)`` in training mode."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """``[D, D]`` cross-correlation of two batches of projections ``[N, D]`` over the batch."""
    return standardize(z1).t() @ standardize(z2) / z1.shape[0]


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> torch.Tensor:
    """``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2`` of the cross-correlation ``C`` of ``z1, z2``."""
    c = cross_correlation(z1, z2)
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


class BarlowTwins(nn.Module):
    """Encoder + projector (``proj_layers`` Linear layers, BN-ReLU between) trained to make the cross-correlation
    of the two views' projections the identity."""

    modality = "image"
    produces = "projections"  # the projector exists for the loss only; downstream code uses ``encoder``
    probes: tuple[str, ...] = ("knn", "linear")  # how its encoder is judged (ptcli.probes)
    ddp = True  # trainer.strategy=ddp gives the one-process loss of the global batch (ptcli.objectives.sharded)

    def __init__(self, encoder: nn.Module, augment: list[dict] | None = None,
                 proj_hidden: int = BarlowTwinsConfig.proj_hidden, proj_dim: int = BarlowTwinsConfig.proj_dim,
                 proj_layers: int = BarlowTwinsConfig.proj_layers,
                 lambd: float = BarlowTwinsConfig.lambd) -> None:
        super().__init__()
        check_sizes(proj_hidden=proj_hidden, proj_dim=proj_dim, proj_layers=proj_layers)
        self.lambd = check_number("lambd", lambd, 0)
        self.encoder = encoder
        self.augment = Augment(augment or DEFAULT_SMALL_IMAGE_OPS)  # null or [] -> the small-image defaults
        self.projector = mlp(encoder.dim, proj_hidden, proj_dim, proj_layers)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """``images [B, C, H, W]`` float in [0, 1] -> ``{"loss": scalar, "count": B}``."""
        shard = sharded(self)  # DDP: images is the global batch; the correlations are over the whole of it
        views = two_views(self.augment, images, generator, "Barlow Twins", "its correlations are over the batch",
                          shard)
        z1, z2 = (gather_rows(h, shard) for h in self.projector(self.encoder(views)).float().chunk(2))  # float32
        return output(barlow_twins_loss(z1, z2, self.lambd), images, shard)
