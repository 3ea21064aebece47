"""A classification head on a pooled encoder output (text: masked mean over tokens or the [CLS] token;
images: features)."""

from __future__ import annotations

import torch
from torch import nn

POOLINGS = ("mean", "cls")


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
        if self.pooling == "cls":
            return hidden[:, 0]
        if attention_mask is None:
            return hidden.mean(1)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)

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
