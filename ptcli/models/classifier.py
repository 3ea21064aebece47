"""A classification head on a pooled encoder output (text: masked mean over tokens or the [CLS] token;
images: features)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

POOLINGS = ("mean", "cls")


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """``[B, T, dim]`` -> ``[B, dim]``: the mean over real tokens (``attention_mask`` 1), or over all."""
    if attention_mask is None:
        return hidden.mean(1)
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


class SequenceClassifier(nn.Module):
    """``pooling=mean`` (default: MLM pre-training trains no [CLS] objective): a linear head on the mean over
    real tokens. ``pooling=cls``: the BERT/RoBERTa/ESM head (dense, tanh, linear) on the first token, which
    is what transformers' ``*ForSequenceClassification`` compute, so such runs export exactly."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1, pooling: str = "mean") -> None:
        super().__init__()
        from ptcli.errors import UsageError

        if pooling not in POOLINGS:
            raise UsageError(f"pooling={pooling!r}: choose one of {', '.join(POOLINGS)}.")
        self.encoder = encoder
        dim = encoder.dim
        if pooling == "cls":
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, dim), nn.Tanh(), nn.Dropout(dropout),
                                      nn.Linear(dim, num_classes))
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, num_classes))
        self.num_classes, self.pooling = num_classes, pooling

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled embedding: the first ([CLS]) token, or the mean over real tokens."""
        hidden = self.encoder(input_ids, attention_mask)
        return hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.pool(input_ids, attention_mask))


class ImageClassifier(nn.Module):
    """A linear head on an image encoder's pooled features."""

    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.dim, num_classes))
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def init_encoder(model: SequenceClassifier | ImageClassifier, checkpoint: Path | None, freeze: bool,
                 what: str = "pretrained") -> None:
    """Load a pre-training checkpoint's encoder weights into ``model.encoder`` (``None``: keep the fresh
    weights), and freeze the encoder for a linear probe."""
    from ptcli.checkpoint import load_into
    from ptcli.errors import UsageError

    if checkpoint is not None:
        missing = load_into(model.encoder, checkpoint, strict=False, prefix="encoder.")
        if missing:
            raise UsageError(f"{what}: checkpoint {checkpoint} lacks encoder weights {missing[:5]}.")
    if freeze:
        model.encoder.requires_grad_(False)


@torch.no_grad()
def text_logits(model: SequenceClassifier, seqs: list[list[int]], pad_id: int, device: torch.device,
                batch_size: int = 64) -> torch.Tensor:
    """Logits ``[N, classes]`` for token id sequences, in order (sorted by length inside: little padding)."""
    from ptcli.data.text import pad_batch

    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    logits = torch.empty(len(seqs), model.num_classes)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_batch([seqs[i] for i in idx], pad_id)
        logits[idx] = model(ids.to(device), mask.to(device)).float().cpu()
    return logits


@torch.no_grad()
def image_logits(model: ImageClassifier, x: torch.Tensor, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Logits ``[N, classes]`` for images ``[N, C, H, W]``."""
    model.eval()
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
