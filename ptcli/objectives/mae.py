"""MAE (He, Chen, Xie, Li, Dollár and Girshick, "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022,
arXiv:2111.06377): mask a random ``mask_ratio`` of each image's patches, run the encoder on the visible patches
only, and let a light decoder reconstruct the masked patches' pixels from the encoded visible ones plus a shared
mask token at every masked position; the loss is the mean squared error on the masked patches only.

The image twin of MLM, with the same rule: compute only what the loss reads. The encoder embeds and encodes the
visible patches alone (``ViT.forward_visible``; 4 of 16 at the default ratio), the decoder's last block computes
queries, attention output and MLP at the masked positions only (``Block(only=...)``, as MLM's last block), and
the pixel head projects those rows alone.

Small-scale choices (the paper's are ViT-L on 224x224 ImageNet, 16x16 patches):
- the decoder is ptcli's own pre-LN block (``ptcli.models.transformer.Block``), 2 blocks of width 64 (the
  paper's ablation: a decoder of even 1 block does well for fine-tuning; 8 blocks of 512 is its default at scale),
  with the encoder's 2-D rotary positions (``ptcli.models.vit``) in place of fixed sine-cosine embeddings;
- ``norm_pix_loss``: the target is each patch's pixels normalized by their own mean and standard deviation (the
  paper's better option at 16x16 patches); off by default here, where a 2x2 patch of an 8x8 digit has 4 pixels
  and normalizing them erases whether the patch is ink or background. It did not help on digits (400-step runs,
  fine-tuned at 5 labels per class: 0.63 with it, 0.65 without; kNN 0.53 both);
- ``mask_ratio`` 0.75, the paper's, even with 16 patches: 0.5 did no better (same runs: 0.61, kNN 0.48);
- no augmentation by default: the random mask is the augmentation (the paper adds crops and flips; flips do not
  suit digits, and an 8x8 image has little to crop). ``augment`` takes the same op list as ``objective=simclr``.

The mask comes from the ``generator`` the recipe passes (its state is in every checkpoint), so runs are
reproducible and a resumed run draws the masks the uninterrupted one would. Downstream code uses
``MAE.encoder``, the whole ViT on all patches; the decoder exists for the loss only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.augment import Augment
from ptcli.errors import UsageError
from ptcli.models.transformer import Block, TransformerBody
from ptcli.models.vit import rotary_2d
from ptcli.objectives import check_number, check_sizes


@dataclass
class MAEConfig:
    """``objective=mae``: the defaults of ``MAE`` (conf/objective/mae.yaml extends it)."""

    _target_: str = "ptcli.objectives.mae.MAE"
    mask_ratio: float = 0.75  # the paper's
    decoder_dim: int = 64
    decoder_layers: int = 2
    decoder_heads: int = 4
    decoder_ffn_dim: int = 256
    norm_pix_loss: bool = False
    # Ordered augmentation ops (ptcli/augment.py), as objective=simclr; null or [] = none (the mask is enough).
    augment: list[Any] | None = field(default_factory=list)


def kept_count(patches: int, mask_ratio: float) -> int:
    """How many of ``patches`` stay visible: ``int(N * (1 - mask_ratio))`` as the paper's code, at least one
    visible and one masked."""
    return min(max(int(patches * (1 - mask_ratio)), 1), patches - 1)


def random_masking(batch: int, patches: int, mask_ratio: float, generator: torch.Generator | None = None,
                   device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, a uniformly random subset of patches to keep: ``keep [B, L]`` (indices, in random order) and
    ``masked [B, N]`` (bool, True = hidden from the encoder, reconstructed by the decoder)."""
    noise = torch.rand(batch, patches, generator=generator, device=device)
    keep = noise.argsort(dim=1)[:, :kept_count(patches, mask_ratio)]
    masked = torch.ones(batch, patches, dtype=torch.bool, device=device).scatter_(1, keep, False)
    return keep, masked


def pixel_targets(patches: torch.Tensor, norm_pix: bool, eps: float = 1e-6) -> torch.Tensor:
    """The reconstruction targets of patches ``[..., P]``: their pixels, or (``norm_pix``) the pixels normalized
    by the patch's own mean and variance (the paper's code: unbiased variance, eps 1e-6)."""
    if not norm_pix:
        return patches
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    return (patches - mean) / (var + eps) ** 0.5


class MAE(nn.Module):
    """A patch encoder (``model=vit``) + a light transformer decoder reconstructing masked patches."""

    modality = "image"
    produces = "pixels"  # the decoder exists for the loss only; downstream code uses ``encoder``
    probes: tuple[str, ...] = ("knn", "linear")  # how its encoder is judged (ptcli.probes)

    def __init__(self, encoder: nn.Module, mask_ratio: float = MAEConfig.mask_ratio,
                 decoder_dim: int = MAEConfig.decoder_dim, decoder_layers: int = MAEConfig.decoder_layers,
                 decoder_heads: int = MAEConfig.decoder_heads, decoder_ffn_dim: int = MAEConfig.decoder_ffn_dim,
                 norm_pix_loss: bool = MAEConfig.norm_pix_loss, augment: list[dict] | None = None) -> None:
        super().__init__()
        if not getattr(encoder, "takes_patches", False):
            raise UsageError(f"objective=mae masks image patches and needs a patch encoder: model=vit "
                             f"({type(encoder).__name__} does not declare takes_patches; it has no patches to "
                             "hide). For model=convnet use objective=simclr, byol, vicreg or barlow_twins.")
        self.mask_ratio = check_number("mask_ratio", mask_ratio, 0.0, 1.0, lo_open=True)
        if self.mask_ratio >= 1.0:
            raise UsageError(f"objective.mask_ratio must be below 1 (some patches stay visible), got {mask_ratio!r}")
        check_sizes(decoder_dim=decoder_dim, decoder_layers=decoder_layers, decoder_heads=decoder_heads,
                    decoder_ffn_dim=decoder_ffn_dim)
        if decoder_dim % decoder_heads or (decoder_dim // decoder_heads) % 4:
            raise UsageError(f"objective.decoder_dim={decoder_dim} / objective.decoder_heads={decoder_heads} must be "
                             "a whole head size that is a multiple of 4 (2-D rotary positions), e.g. 64 / 4.")
        if not isinstance(norm_pix_loss, bool):
            raise UsageError(f"objective.norm_pix_loss must be true or false, got {norm_pix_loss!r}")
        self.encoder = encoder
        self.norm_pix_loss, self.decoder_heads = norm_pix_loss, decoder_heads
        self.augment = Augment(augment or [])
        pixels = encoder.in_channels * encoder.patch_size ** 2
        self.decoder_embed = nn.Linear(encoder.dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder = nn.ModuleList(Block(decoder_dim, decoder_heads, decoder_ffn_dim, 0.0, True)
                                     for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, pixels)
        for module in (self.decoder_embed, self.decoder, self.decoder_pred):
            module.apply(TransformerBody._init)
        nn.init.normal_(self.mask_token, std=0.02)

    def reconstruct(self, images: torch.Tensor, keep: torch.Tensor,
                    masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted pixels of the masked patches and their targets, both ``[n_masked, C * p * p]`` in
        row-major order (image by image, patch by patch)."""
        grid = self.encoder.grid(images)
        patches = self.encoder.patchify(images)
        b, n, _ = patches.shape
        hidden = self.decoder_embed(self.encoder.forward_visible(patches, keep, grid))  # [B, (1 +) L, d]
        d, lead = hidden.shape[-1], hidden.shape[1] - keep.shape[1]  # lead: the [CLS] token, if any
        # The full grid in row-major order: the mask token everywhere, the encoded patches put back in place.
        x = self.mask_token.to(hidden.dtype).expand(b, n, d).scatter(1, keep[..., None].expand(-1, -1, d),
                                                                     hidden[:, lead:])
        x = torch.cat([hidden[:, :lead], x], dim=1)
        cos, sin = rotary_2d(*grid, d // self.decoder_heads, cls=lead > 0, device=x.device)
        rotary = (cos.to(x.dtype), sin.to(x.dtype))
        only = torch.cat([masked.new_zeros(b, lead), masked], dim=1)
        for i, block in enumerate(self.decoder):  # the last block at the masked positions only
            x = block(x, None, rotary, only=only if i == len(self.decoder) - 1 else None)
        pred = self.decoder_pred(self.decoder_norm(x))  # [n_masked, P], row-major as patches[masked]
        return pred, pixel_targets(patches[masked], self.norm_pix_loss)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """``images [B, C, H, W]`` float in [0, 1] -> ``{"loss": scalar, "count": B}``."""
        if len(self.augment.ops):
            with torch.no_grad():  # augmentations are data preparation, not part of the graph
                images = self.augment(images, generator)
        rows, cols = self.encoder.grid(images)
        keep, masked = random_masking(images.shape[0], rows * cols, self.mask_ratio, generator, images.device)
        pred, target = self.reconstruct(images, keep, masked)
        return {"loss": F.mse_loss(pred.float(), target.float()), "count": int(images.shape[0])}
