"""BYOL (Grill et al., "Bootstrap Your Own Latent: A New Approach to Self-Supervised Learning", NeurIPS 2020,
arXiv:2006.07733): an online network (encoder, projector, predictor) learns to predict, from one augmented
view, a target network's projection of the other view. The target (encoder and projector) is no copy the
optimizer trains: after each optimizer step it moves toward the online weights by an exponential moving average,

    target <- tau * target + (1 - tau) * online,   tau = 1 - (1 - tau_base) * (cos(pi * k / K) + 1) / 2

with k the step just taken (0-based) of K in all, so tau rises from ``tau_base`` toward 1 over the run. The loss is
the normalized mean squared error ``2 - 2 cos(q, z')`` between the online prediction ``q`` of one view and the
target projection ``z'`` of the other, symmetrized over the two views (sum of both directions).

The paper's projector and predictor are Linear(4096)-BN-ReLU-Linear(256) and its tau_base is 0.996 for 1,000
epochs of ImageNet; at ptcli's small scale (``model=convnet`` on 8x8 digits, 128 features, a few thousand steps)
512 hidden and 128 out, and tau_base = 0.99, the usual value for short runs (solo-learn's CIFAR recipe): with
0.996 the target would trail the online network by ~250 steps, a large part of such a run.

The target lives in the module's ``state_dict`` (``target_encoder``, ``target_projector``) and tau is a function
of the step alone, so checkpoints and resumed runs keep it exactly. Downstream code uses ``BYOL.encoder``, the
online encoder.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.augment import DEFAULT_SMALL_IMAGE_OPS, Augment
from ptcli.objectives import check_number, check_sizes, mlp, output, sharded, two_views


@dataclass
class BYOLConfig:
    """``objective=byol``: the defaults of ``BYOL`` (conf/objective/byol.yaml extends it)."""

    _target_: str = "ptcli.objectives.byol.BYOL"
    # Ordered augmentation ops (ptcli/augment.py), as objective=simclr; null or [] = the small-image defaults.
    augment: list[Any] | None = field(default_factory=lambda: copy.deepcopy(DEFAULT_SMALL_IMAGE_OPS))
    proj_hidden: int = 512
    proj_dim: int = 128
    pred_hidden: int = 512
    # The target's EMA rate at the first step; it rises to 1 by a cosine over the run's steps.
    tau_base: float = 0.99


def byol_tau(step: int, total_steps: int, tau_base: float) -> float:
    """tau after optimizer step ``step`` (1-based: the number of steps done) of ``total_steps``."""
    k = min(max(step - 1, 0), total_steps)
    return 1 - (1 - tau_base) * (math.cos(math.pi * k / max(total_steps, 1)) + 1) / 2


def byol_loss(q: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``||q/|q| - z/|z|||^2 = 2 - 2 cos(q, z)``; ``z`` (the target) gets no gradient."""
    return (2 - 2 * F.cosine_similarity(q.float(), z.detach().float(), dim=-1)).mean()


class BYOL(nn.Module):
    """Online encoder + projector + predictor, and their momentum target (encoder + projector)."""

    modality = "image"
    produces = "projections"  # the heads and the target exist for the loss only; downstream code uses ``encoder``
    probes: tuple[str, ...] = ("knn", "linear")  # how its encoder is judged (ptcli.probes)
    ddp = True  # trainer.strategy=ddp gives the one-process loss of the global batch (ptcli.objectives.sharded)

    def __init__(self, encoder: nn.Module, augment: list[dict] | None = None,
                 proj_hidden: int = BYOLConfig.proj_hidden, proj_dim: int = BYOLConfig.proj_dim,
                 pred_hidden: int = BYOLConfig.pred_hidden, tau_base: float = BYOLConfig.tau_base) -> None:
        super().__init__()
        check_sizes(proj_hidden=proj_hidden, proj_dim=proj_dim, pred_hidden=pred_hidden)
        self.tau_base = check_number("tau_base", tau_base, 0, 1)
        self.encoder = encoder
        self.augment = Augment(augment or DEFAULT_SMALL_IMAGE_OPS)  # null or [] -> the small-image defaults
        self.projector = mlp(encoder.dim, proj_hidden, proj_dim)
        self.predictor = mlp(proj_dim, pred_hidden, proj_dim)
        # The target starts as a copy of the online encoder and projector; only after_step changes its weights.
        self.target_encoder = copy.deepcopy(encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def online_target_pairs(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(online, target) parameter pairs, in the same order."""
        online = [*self.encoder.parameters(), *self.projector.parameters()]
        target = [*self.target_encoder.parameters(), *self.target_projector.parameters()]
        return list(zip(online, target, strict=True))

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """The trainer's hook after each optimizer step: ``target <- tau * target + (1 - tau) * online``. The
        target's BatchNorm statistics are its own, updated by its forward passes."""
        tau = byol_tau(step, total_steps, self.tau_base)
        for online, target in self.online_target_pairs():
            target.lerp_(online.detach(), 1 - tau)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """``images [B, C, H, W]`` float in [0, 1] -> ``{"loss": scalar, "count": B}``."""
        # DDP: images is the global batch; the loss is a mean of per-image terms, so each rank's mean of its rows
        # needs no gather (BatchNorm, global_batch_norm, is what sees the whole batch).
        shard = sharded(self)
        views = two_views(self.augment, images, generator, "BYOL", "its heads have BatchNorm", shard)
        q1, q2 = self.predictor(self.projector(self.encoder(views))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_encoder(views)).chunk(2)
        loss = byol_loss(q1, z2) + byol_loss(q2, z1)
        return output(loss, images, shard)
