"""SimCLR (Chen et al. 2020): two augmented views per image, a projection head, the NT-Xent loss.

The projection head exists only for the loss; downstream code uses ``SimCLR.encoder`` alone (the
representation before the head transfers better than the one after it, SimCLR section 4.2).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.augment import DEFAULT_SMALL_IMAGE_OPS, Augment
from ptcli.errors import UsageError
from ptcli.objectives import gather_rows, output, sharded, two_views


@dataclass
class SimCLRConfig:
    """``objective=simclr``: the defaults of ``SimCLR`` (conf/objective/simclr.yaml extends it)."""

    _target_: str = "ptcli.objectives.simclr.SimCLR"
    # Ordered augmentation ops applied batched on tensors (ptcli/augment.py); null or [] = these defaults
    # for small images.
    augment: list[Any] | None = field(default_factory=lambda: copy.deepcopy(DEFAULT_SMALL_IMAGE_OPS))
    proj_dim: int = 128
    proj_hidden: int = 256
    temperature: float = 0.2


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalized-temperature cross entropy over the ``2N`` projections of ``N`` pairs.

    Each of the 2N rows is classified against the 2N - 1 others by cosine similarity / temperature; its
    positive is the other view of the same image. Mean over all 2N rows (both directions).
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # float32: bf16 logits / T lose the ranking
    logits = z @ z.t() / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))  # a view is not its own negative
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


class SimCLR(nn.Module):
    """Encoder + projection head (Linear-BN-ReLU-Linear) trained with NT-Xent on two augmented views."""

    modality = "image"
    produces = "projections"  # the head exists for the loss only; downstream code uses ``encoder``
    probes: tuple[str, ...] = ("knn", "linear")  # how its encoder is judged (ptcli.probes)
    ddp = True  # trainer.strategy=ddp gives the one-process loss of the global batch (ptcli.objectives.sharded)

    def __init__(self, encoder: nn.Module, augment: list[dict] | None = None,
                 proj_dim: int = SimCLRConfig.proj_dim, proj_hidden: int = SimCLRConfig.proj_hidden,
                 temperature: float = SimCLRConfig.temperature) -> None:
        super().__init__()
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise UsageError(f"objective.temperature must be a positive number (0.1-0.5 is usual), got {temperature!r}")
        for key, value in (("proj_dim", proj_dim), ("proj_hidden", proj_hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"objective.{key} must be a positive integer, got {value!r}")
        self.encoder = encoder
        self.augment = Augment(augment or DEFAULT_SMALL_IMAGE_OPS)  # null or [] -> the small-image defaults
        self.temperature = float(temperature)
        self.projector = nn.Sequential(nn.Linear(encoder.dim, proj_hidden, bias=False), nn.BatchNorm1d(proj_hidden),
                                       nn.ReLU(inplace=True), nn.Linear(proj_hidden, proj_dim))

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """``images [B, C, H, W]`` float in [0, 1] -> ``{"loss": scalar, "count": B}`` (``ptcli.objectives.output``)."""
        shard = sharded(self)  # DDP: images is the global batch; the negatives are the whole global batch
        views = two_views(self.augment, images, generator, "SimCLR", "the other images are the negatives", shard)
        z = self.projector(self.encoder(views))
        z1, z2 = (gather_rows(h, shard) for h in z.chunk(2))
        return output(nt_xent(z1, z2, self.temperature), images, shard)
