"""A pre-LN transformer encoder from torch primitives.

Token + learned position embeddings, pre-LN blocks (attention through ``F.scaled_dot_product_attention``,
GELU MLP), a final LayerNorm. Biases off by default (Cramming). ``forward`` returns hidden states; heads
(MLM, classification) live with their objectives and read ``tok_emb`` for weight tying.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.errors import UsageError


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, bias=bias)
        self.attn = SelfAttention(dim, heads, dropout, bias)
        self.ln2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_dim, bias=bias), nn.GELU(), nn.Linear(ffn_dim, dim, bias=bias))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x), attn_mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class TransformerEncoder(nn.Module):
    modality = "text"

    def __init__(self, vocab_size: int, dim: int = 256, layers: int = 4, heads: int = 4, ffn_dim: int = 1024,
                 max_len: int = 128, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        for key, value in (("dim", dim), ("layers", layers), ("heads", heads), ("ffn_dim", ffn_dim),
                           ("max_len", max_len), ("vocab_size", vocab_size)):
            if value <= 0:
                raise UsageError(f"model.{key} must be positive, got {value}")
        if dim % heads:
            raise UsageError(f"model.heads={heads} must divide model.dim={dim} (e.g. model.heads=4 with dim={dim}).")
        if not 0.0 <= dropout < 1.0:
            raise UsageError(f"model.dropout must be in [0, 1), got {dropout}")
        self.dim, self.max_len, self.vocab_size = dim, max_len, vocab_size
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, ffn_dim, dropout, bias) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, bias=bias)
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2 style scaled init of residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / (2 * layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids [B, T]`` -> hidden states ``[B, T, dim]``. ``attention_mask`` 1 = real token."""
        t = input_ids.shape[1]
        if t > self.max_len:
            raise UsageError(f"sequence length {t} exceeds model.max_len={self.max_len}")
        pos = torch.arange(t, device=input_ids.device)
        x = self.drop(self.tok_emb(input_ids) + self.pos_emb(pos))
        # SDPA boolean mask: True = may attend. None keeps the fast path for packed (unpadded) blocks.
        mask = attention_mask[:, None, None, :].bool() if attention_mask is not None else None
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x)
