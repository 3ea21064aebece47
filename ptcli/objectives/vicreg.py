"""VICReg (Bardes, Ponce and LeCun, "VICReg: Variance-Invariance-Covariance Regularization for Self-Supervised
Learning", ICLR 2022, arXiv:2105.04906): two augmented views, an expander MLP, and a loss of three terms on the
two batches of embeddings ``z1, z2 [N, D]`` with no negatives and no momentum target:

- invariance: the mean squared distance between the two views' embeddings, weight ``sim_coeff`` (lambda = 25);
- variance: a hinge keeping the standard deviation of every dimension over the batch at least gamma = 1,
  ``mean_j relu(1 - sqrt(Var(z_j) + 1e-4))`` averaged over the two views, weight ``std_coeff`` (mu = 25);
- covariance: the squared off-diagonal entries of each view's covariance matrix, summed and divided by D,
  summed over the two views, weight ``cov_coeff`` (nu = 1).

The paper's values are the defaults (section 4.1 and the official code, facebookresearch/vicreg). Its expander is
three 8,192-wide layers on a ResNet-50; at ptcli's small scale (``model=convnet`` on 8x8 digits, 128 features)
three 512-wide layers. The expander exists for the loss only; downstream code uses ``VICReg.encoder``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.augment import DEFAULT_SMALL_IMAGE_OPS, Augment
from ptcli.objectives import check_number, check_sizes, gather_rows, mlp, output, sharded, two_views


@dataclass
class VICRegConfig:
    """``objective=vicreg``: the defaults of ``VICReg`` (conf/objective/vicreg.yaml extends it)."""

    _target_: str = "ptcli.objectives.vicreg.VICReg"
    # Ordered augmentation ops (ptcli/augment.py), as objective=simclr; null or [] = the small-image defaults.
    augment: list[Any] | None = field(default_factory=lambda: copy.deepcopy(DEFAULT_SMALL_IMAGE_OPS))
    proj_hidden: int = 512
    proj_dim: int = 512
    proj_layers: int = 3  # linear layers of the expander
    sim_coeff: float = 25.0  # invariance (lambda)
    std_coeff: float = 25.0  # variance (mu)
    cov_coeff: float = 1.0  # covariance (nu)


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> dict[str, torch.Tensor]:
    """The three unweighted VICReg terms of embeddings ``z1, z2 [N, D]`` (float32): invariance, variance,
    covariance, as the paper's pseudo-code (Algorithm 1) computes them."""
    n, d = z1.shape
    invariance = F.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    for z in (z1, z2):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + eps)
        variance = variance + F.relu(1 - std).mean() / 2
        cov = (z.t() @ z) / (n - 1)
        covariance = covariance + off_diagonal(cov).pow(2).sum() / d
    return {"invariance": invariance, "variance": variance, "covariance": covariance}


class VICReg(nn.Module):
    """Encoder + expander (``proj_layers`` Linear layers, BN-ReLU between) trained with the VICReg loss on two
    augmented views."""

    modality = "image"
    produces = "embeddings"  # the expander exists for the loss only; downstream code uses ``encoder``
    probes: tuple[str, ...] = ("knn", "linear")  # how its encoder is judged (ptcli.probes)
    ddp = True  # trainer.strategy=ddp gives the one-process loss of the global batch (ptcli.objectives.sharded)

    def __init__(self, encoder: nn.Module, augment: list[dict] | None = None,
                 proj_hidden: int = VICRegConfig.proj_hidden, proj_dim: int = VICRegConfig.proj_dim,
                 proj_layers: int = VICRegConfig.proj_layers, sim_coeff: float = VICRegConfig.sim_coeff,
                 std_coeff: float = VICRegConfig.std_coeff, cov_coeff: float = VICRegConfig.cov_coeff) -> None:
        super().__init__()
        check_sizes(proj_hidden=proj_hidden, proj_dim=proj_dim, proj_layers=proj_layers)
        self.coeffs = {"invariance": check_number("sim_coeff", sim_coeff, 0),
                       "variance": check_number("std_coeff", std_coeff, 0),
                       "covariance": check_number("cov_coeff", cov_coeff, 0)}
        self.encoder = encoder
        self.augment = Augment(augment or DEFAULT_SMALL_IMAGE_OPS)  # null or [] -> the small-image defaults
        self.expander = mlp(encoder.dim, proj_hidden, proj_dim, proj_layers)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """``images [B, C, H, W]`` float in [0, 1] -> ``{"loss": scalar, "count": B}``."""
        shard = sharded(self)  # DDP: images is the global batch; the statistics are over the whole of it
        views = two_views(self.augment, images, generator, "VICReg", "its variance and covariance are over it", shard)
        z1, z2 = (gather_rows(h, shard) for h in self.expander(self.encoder(views)).float().chunk(2))  # float32
        terms = vicreg_terms(z1, z2)
        loss = sum(self.coeffs[k] * v for k, v in terms.items())
        return output(loss, images, shard)
