"""A Vision Transformer (Dosovitskiy et al. 2021) on ptcli's own transformer blocks (``TransformerBody``, the
block stack of the text encoder): a patch embedding (``Conv2d`` with stride = kernel = ``patch_size``), 2-D rotary
positions, pre-LN blocks, a final LayerNorm, and a [CLS] token (default) or mean pooling over the patches.

Positions are 2-D rotary (axial RoPE, Heo et al. 2024, "Rotary Position Embedding for Vision Transformer"): in
every head, half of the rotated channel pairs turn with the patch's row, the other half with its column. Chosen
over learned per-patch embeddings because (1) it has no parameter tied to the grid, so the model needs no image
size in its config, works at any ``data.size`` its patch size divides, and a checkpoint moves between sizes;
(2) MAE's encoder on a random subset of the patches and its decoder over the full grid take their positions by
indexing the same tables; (3) it is the text encoder's default, which learned local structure far sooner at
small budgets. The tables use base 100, not 10,000: a grid is a handful of patches wide, and at base 10,000 most
frequencies would barely turn across it. A [CLS] token (``pooling=cls``) is not rotated.

``forward(images)`` returns pooled features ``[B, dim]`` (as ``model=convnet``). ``forward_visible(patches,
keep, grid)`` runs the encoder on the kept patches alone (``objective=mae``, He et al. 2022): the class declares
it with ``takes_patches = True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.errors import UsageError
from ptcli.models.transformer import TransformerBody, check_body

ROPE_BASE = 100.0
POOLINGS = ("mean", "cls")


@dataclass
class ViTConfig:
    """``model=vit``: the defaults of ``ViT`` (conf/model/vit.yaml extends it). Sized for small images: 8x8
    digits in 2x2 patches are 16 tokens. Width 64, not 128: on 2 CPU cores a SimCLR step of the 128-wide model
    took ~2.7x the convnet's (its 2,000 default steps would not fit in 6 minutes), the 64-wide one ~1.3x."""

    _target_: str = "ptcli.models.vit.ViT"
    in_channels: int = 1
    patch_size: int = 2
    dim: int = 64
    layers: int = 4
    heads: int = 4
    ffn_dim: int = 128
    dropout: float = 0.0
    bias: bool = True  # on, as in ViT and MAE
    # cls | mean: the pooled features downstream code reads. cls measured better on digits after short runs
    # (SimCLR 150 steps, kNN 0.90 vs 0.81; MAE 400 steps, fine-tuned at 5 labels per class 0.65 vs 0.45).
    pooling: str = "cls"


def rotary_2d(rows: int, cols: int, head_dim: int, cls: bool = False, base: float = ROPE_BASE,
              device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables ``[rows * cols (+1), head_dim / 2]`` for a ``rows x cols`` grid of patches in row-major
    order (after a [CLS] row of angle 0 with ``cls``): the first ``head_dim / 4`` angles turn with the row, the
    others with the column (``ptcli.models.transformer.apply_rotary`` pairs channel i with i + head_dim / 2).
    Patches sit at 1..rows, 1..cols, so none shares the unrotated [CLS]'s position."""
    m = head_dim // 4
    inv = base ** (-torch.arange(m, dtype=torch.float32, device=device) / m)
    r = torch.arange(1, rows + 1, dtype=torch.float32, device=device).repeat_interleave(cols)
    c = torch.arange(1, cols + 1, dtype=torch.float32, device=device).repeat(rows)
    angles = torch.cat([torch.outer(r, inv), torch.outer(c, inv)], dim=1)
    if cls:
        angles = torch.cat([angles.new_zeros(1, 2 * m), angles])
    return angles.cos(), angles.sin()


class ViT(TransformerBody):
    modality = "image"
    produces = "features"  # [B, dim] pooled features
    finetune_head = "image_classifier"
    # optim.lr=null in finetune: 1e-3, the best validation accuracy of an MAE-pre-trained ViT at 5 labels per class
    # over 3e-4, 1e-3, 3e-3 (flat: 0.722-0.730); a random-init ViT wants 3e-3 (README "The pre-training zoo").
    finetune_lr = 1e-3
    hf_export = None  # no transformers counterpart written by ptcli export
    takes_patches = True  # forward_visible(patches, keep, grid): the encoder on a subset of patches (MAE)

    def __init__(self, in_channels: int = ViTConfig.in_channels, patch_size: int = ViTConfig.patch_size,
                 dim: int = ViTConfig.dim, layers: int = ViTConfig.layers, heads: int = ViTConfig.heads,
                 ffn_dim: int = ViTConfig.ffn_dim, dropout: float = ViTConfig.dropout, bias: bool = ViTConfig.bias,
                 pooling: str = ViTConfig.pooling) -> None:
        super().__init__()
        for key, value in (("in_channels", in_channels), ("patch_size", patch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"model.{key} must be a positive integer, got {value!r}")
        check_body(dim, layers, heads, ffn_dim, dropout)
        if (dim // heads) % 4:
            raise UsageError(f"model.dim={dim} / model.heads={heads} gives a head size of {dim // heads}; 2-D rotary "
                             "positions need a multiple of 4 (half the pairs turn with the row, half with the column).")
        if pooling not in POOLINGS:
            raise UsageError(f"model.pooling={pooling!r}: choose one of {', '.join(POOLINGS)}.")
        self.in_channels, self.patch_size, self.dim, self.heads, self.pooling = (
            in_channels, patch_size, dim, heads, pooling)
        self.patch_emb = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pooling == "cls" else None
        self._build_body(dim, layers, heads, ffn_dim, dropout, bias)
        self._init_weights()
        # The patch embedding initialized as the Linear it is (MAE's code: xavier_uniform on the flattened kernel).
        nn.init.xavier_uniform_(self.patch_emb.weight.view(dim, -1))
        nn.init.zeros_(self.patch_emb.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    # ------------------------------------------------------------------------------------------- patches
    def grid(self, images: torch.Tensor) -> tuple[int, int]:
        """The patch grid ``(rows, cols)`` of ``images [B, C, H, W]``; a clear error when they do not fit."""
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise UsageError(f"model.in_channels={self.in_channels} but the images have shape {tuple(images.shape)} "
                             f"(expected [B, {self.in_channels}, H, W]); set model.in_channels to the images' "
                             "channel count or data.channels to match the model.")
        h, w = images.shape[2:]
        p = self.patch_size
        if h % p or w % p:
            divisors = [d for d in range(1, min(h, w) + 1) if h % d == 0 and w % d == 0]
            raise UsageError(f"model.patch_size={p} does not divide the images' size {h}x{w} (data.size): choose a "
                             f"model.patch_size that divides it ({', '.join(map(str, divisors))}) or a data.size "
                             f"that model.patch_size={p} divides.")
        return h // p, w // p

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> ``[B, N, C * p * p]``: the patches in row-major order, each flattened as the
        patch embedding's kernel is (channel, row, column)."""
        rows, cols = self.grid(images)
        b, c, p = images.shape[0], self.in_channels, self.patch_size
        x = images.reshape(b, c, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, rows * cols, c * p * p)

    def tables(self, rows: int, cols: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rotary_2d(rows, cols, self.dim // self.heads, cls=self.cls_token is not None,
                             device=self.patch_emb.weight.device)
        return cos.to(dtype), sin.to(dtype)

    def _with_cls(self, x: torch.Tensor) -> torch.Tensor:
        if self.cls_token is None:
            return x
        return torch.cat([self.cls_token.to(x.dtype).expand(x.shape[0], -1, -1), x], dim=1)

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[B, T, dim]`` final hidden states -> ``[B, dim]``: the [CLS] token's, or the mean over patches."""
        return hidden[:, 0] if self.cls_token is not None else hidden.mean(1)

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, C, H, W]`` float -> pooled features ``[B, dim]``."""
        rows, cols = self.grid(images)
        x = self._with_cls(self.patch_emb(images).flatten(2).transpose(1, 2))  # [B, (1 +) N, dim]
        return self.pool(self.run_blocks(self.drop(x), None, self.tables(rows, cols, x.dtype)))

    def forward_visible(self, patches: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The encoder on a subset of each image's patches: ``patches [B, N, C * p * p]`` (``patchify``), ``keep
        [B, L]`` the indices of the patches it sees (row-major, any order) -> final hidden states ``[B, (1 +) L,
        dim]`` (the [CLS] token first with ``pooling=cls``). Only the kept patches are embedded, and each keeps
        its own 2-D position; with every index kept this is ``forward`` before pooling."""
        d = patches.shape[-1]
        seen = patches.gather(1, keep[..., None].expand(-1, -1, d))
        x = F.linear(seen, self.patch_emb.weight.view(self.dim, -1), self.patch_emb.bias)  # the conv, per patch
        x = self._with_cls(x)
        cos, sin = self.tables(*grid, x.dtype)
        if self.cls_token is not None:  # the [CLS] row stays first; patch rows follow their indices
            keep = torch.cat([keep.new_zeros(keep.shape[0], 1), keep + 1], dim=1)
        return self.run_blocks(self.drop(x), None, (cos[keep][:, None], sin[keep][:, None]))
