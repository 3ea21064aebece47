"""A classification head on a pooled encoder output (text: masked mean over tokens; images: features)."""

from __future__ import annotations

import torch
from torch import nn


class SequenceClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(encoder.dim, num_classes))
        self.num_classes = num_classes

    def pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled embedding: mean over real tokens (MLM pre-training trains no [CLS] objective)."""
        hidden = self.encoder(input_ids, attention_mask)
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
