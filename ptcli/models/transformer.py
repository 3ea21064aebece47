"""A pre-LN transformer encoder from torch primitives.

Token + learned position embeddings, pre-LN blocks (attention through ``F.scaled_dot_product_attention``,
GELU MLP), a final LayerNorm. Biases off by default (Cramming). ``forward`` returns hidden states; heads
(MLM, classification) live with their objectives and read ``tok_emb`` for weight tying.

``forward(..., only=positions)`` returns the final hidden states at those positions alone, and the last
block computes its queries, attention output and MLP only there (its keys and values still cover every
position). An MLM loss reads nothing else, so this is the same function with ~16% fewer training FLOPs
at mask rate 0.15 -- the encoder-side counterpart of projecting onto the vocabulary at masked positions only.

``set_activation_checkpointing(True)`` (``trainer.activation_checkpointing=true``): in training, each block's
activations are recomputed during backward instead of kept (``torch.utils.checkpoint``, non-reentrant, so it
composes with DDP, FSDP2 and ``only=``), trading about one more forward pass for memory.

A padded batch (an ``attention_mask`` with zeros) runs unpadded (``Unpadded``): everything but attention at
its real tokens only, attention grouped by row length; the same function at every real token, zeros at padding.

``TransformerBody`` is what the text encoder and ``model=vit`` (ptcli/models/vit.py) share: the block stack,
the final LayerNorm, the weight init and activation checkpointing. Each subclass brings its own embedding
(tokens, image patches) and positions (1-D or 2-D rotary tables fed to the same blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from ptcli.errors import UsageError


@dataclass
class TransformerConfig:
    """``model=transformer``: the defaults of ``TransformerEncoder`` (conf/model/transformer.yaml extends it).
    Sized so that the default ``ptcli pretrain`` finishes in about 4 minutes on 2 CPU cores."""

    _target_: str = "ptcli.models.transformer.TransformerEncoder"
    dim: int = 128
    layers: int = 4
    heads: int = 4
    ffn_dim: int = 512
    max_len: int = 128
    dropout: float = 0.0
    bias: bool = False  # off, as in Cramming (Geiping & Goldstein 2022)
    position: str = "rotary"  # rotary | learned; rotary learns local context far sooner at small budgets
    # A LayerNorm on the token embeddings (BERT's and ModernBERT's): off by default, as every figure in the README
    # was measured without it; on, MLM learns faster per step and takes twice the lr (README "Performance").
    embed_norm: bool = False


def rotary_tables(max_len: int, head_dim: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2).float() / head_dim)
    angles = torch.outer(torch.arange(max_len).float(), inv)  # [T, hd/2]
    return angles.cos(), angles.sin()


def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, sign: float = 1.0) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head's channels by the angles of ``cos``/``sin``
    (``sign=-1``: the opposite angles), written straight into the two halves of one output. In ``x``'s dtype:
    under an autocast the tables are cast to bf16, as transformers' rotary models do."""
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    o1, o2 = out.chunk(2, dim=-1)
    torch.mul(x1, cos, out=o1).addcmul_(x2, sin, value=-sign)
    torch.mul(x2, cos, out=o2).addcmul_(x1, sin, value=sign)
    return out


class Rotary(torch.autograd.Function):
    """Rotary positions with a backward of their own: the gradient of a rotation is the gradient rotated by the
    opposite angles, so only the tables are kept for it. Autograd through the written-out form keeps both
    halves of ``x`` and runs about twice the kernels (scripts/bench_kernels.py)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        ctx.dtype = x.dtype
        return rotate_pairs(x, cos, sin)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return rotate_pairs(grad.to(ctx.dtype), cos, sin, sign=-1.0), None, None


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of each head's channels by position-dependent angles (the tables
    are constants: no gradient reaches them). Under ``torch.compile`` the written-out form: inductor fuses it
    into one kernel itself (and does not lower ``Rotary``'s ``out=`` writes)."""
    if torch.compiler.is_compiling():
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return Rotary.apply(x, cos, sin)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None,
           dropout_p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, except on CPU under a low-precision autocast: there the written-out
    form (two matmuls in the autocast dtype, softmax with fp32 accumulation), as the transformers models' "eager"
    attention. Forward+backward at [32, 4, 128, 64] with a padding mask, torch 2.13's CPU flash-attention kernel
    takes 41 ms in bf16, 19 ms computing in fp32 on bf16 inputs, this form 11 ms (9.0 vs 9.4 ms at head size 32;
    scripts/results/bench/kernels.txt, "attention"). In fp32 SDPA is the faster one (20 vs 27 ms). ``attn_mask``: bool,
    True = attend; every query row must have a key to attend to (ptcli's masks do: see ``Unpadded``)."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        with torch.autocast("cpu", enabled=False):
            q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
            scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, torch.finfo(dtype).min)
            weights = scores.softmax(-1)
            if dropout_p:
                weights = F.dropout(weights, dropout_p)
            return weights @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p)


class LengthGroup(NamedTuple):
    """Rows of a batch whose real lengths round up to the same ``width``: attended together, ``[rows, width]``,
    from slot ``start`` of the unpadded layout's slot buffer."""

    start: int
    rows: int
    width: int
    key_mask: torch.Tensor | None  # [rows, 1, 1, width] bool, True = a real key; None: every row is full


class Unpadded:
    """Where the real tokens of a padded ``[batch, length]`` batch are, and how attention groups them.

    Padded batches run unpadded: embeddings, projections, LayerNorms and MLPs see the real tokens alone
    (``[N, dim]``), as ModernBERT's unpadding does. Attention needs rows again: rows are grouped by their real
    length rounded up to a power of two (at least 16, at most the batch's length), and each group is attended
    at its own width, so a batch of short texts with one long one does not pay the long one's width on every
    row (pydocs docstrings: 31% of a padded batch's positions are real). Each token has a slot in one buffer
    that holds every group's rows back to back (its row's tokens first, in order); positions (rotary, learned)
    are the original ones, so the function is the same at every real position (tests/test_units.py)."""

    def __init__(self, attention_mask: torch.Tensor, min_width: int = 16) -> None:
        keep = attention_mask.bool()
        self.batch, self.length = keep.shape
        self.index = keep.reshape(-1).nonzero().squeeze(1)  # [N] flat positions of the real tokens, row-major
        lengths = keep.sum(1)
        row = self.index // self.length
        rank = torch.arange(len(self.index), device=keep.device) - (lengths.cumsum(0) - lengths)[row]
        pow2 = 2 ** torch.ceil(torch.log2(lengths.clamp(min=1).float())).long()
        widths = pow2.clamp(min=min_width, max=self.length).masked_fill(lengths == 0, 0)
        row_start = torch.zeros_like(widths)  # each row's first slot
        self.groups: list[LengthGroup] = []
        start = 0
        for width in sorted(set(widths.tolist()) - {0}):
            rows = (widths == width).nonzero().squeeze(1)
            row_start[rows] = start + width * torch.arange(len(rows), device=keep.device)
            full = bool((lengths[rows] == width).all())
            key_mask = None if full else (torch.arange(width, device=keep.device) < lengths[rows, None])[:, None, None]
            self.groups.append(LengthGroup(start, len(rows), width, key_mask))
            start += len(rows) * width
        self.slots, self.size = row_start[row] + rank, start  # [N]: each real token's slot

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, ...]`` -> ``[batch, length, ...]``, zeros at padded positions (differentiable)."""
        out = x.new_zeros(self.batch * self.length, *x.shape[1:]).index_copy(0, self.index, x)
        return out.view(self.batch, self.length, *x.shape[1:])

    def positions(self) -> torch.Tensor:
        """Each real token's position in its row, ``[N]``."""
        return self.index % self.length

    def attend(self, qkv: torch.Tensor, dropout_p: float) -> torch.Tensor:
        """Attention within each row over its real tokens: ``qkv [N, 3, heads, hd]`` -> ``[N, heads * hd]``."""
        buf = qkv.new_zeros(self.size, *qkv.shape[1:]).index_copy(0, self.slots, qkv)
        outs = []
        for g in self.groups:
            part = buf[g.start : g.start + g.rows * g.width].view(g.rows, g.width, *qkv.shape[1:])
            q, k, v = part.permute(2, 0, 3, 1, 4)
            y = attend(q, k, v, g.key_mask, dropout_p)  # [rows, heads, width, hd]
            outs.append(y.transpose(1, 2).reshape(g.rows * g.width, -1))
        return torch.cat(outs).index_select(0, self.slots)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                picks: torch.Tensor | None = None, unpadded: Unpadded | None = None) -> torch.Tensor:
        """``[B, T, dim]``. With ``picks [B, L]`` (positions): queries there only, keys and values
        everywhere, ``[B, L, dim]``. With ``unpadded``: real tokens ``[N, dim]`` in and out (``rotary``: their
        tables, ``[N, 1, 1, head_dim / 2]``)."""
        if unpadded is not None:
            return self._unpadded(x, rotary, unpadded)
        b, t, d = x.shape
        hd = d // self.heads
        if picks is None:
            q, k, v = self.qkv(x).view(b, t, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        else:
            w, bias = self.qkv.weight, self.qkv.bias
            k, v = F.linear(x, w[d:], None if bias is None else bias[d:]).view(b, t, 2, self.heads, hd).permute(
                2, 0, 3, 1, 4)
            xq = x.gather(1, picks[..., None].expand(-1, -1, d))
            q = F.linear(xq, w[:d], None if bias is None else bias[:d]).view(b, -1, self.heads, hd).transpose(1, 2)
        if rotary is not None:
            cos, sin = rotary
            q_cos, q_sin = (cos, sin) if picks is None else (cos[picks][:, None], sin[picks][:, None])
            q, k = apply_rotary(q, q_cos, q_sin), apply_rotary(k, cos, sin)
        y = attend(q, k, v, attn_mask, self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(b, -1, d))

    def _unpadded(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                  unpadded: Unpadded) -> torch.Tensor:
        n, d = x.shape
        qkv = self.qkv(x).view(n, 3, self.heads, d // self.heads)
        if rotary is not None:  # queries and keys in one go: [N, 2, heads, hd]
            qkv = torch.cat([apply_rotary(qkv[:, :2], *rotary), qkv[:, 2:]], 1)
        return self.proj(unpadded.attend(qkv, self.dropout if self.training else 0.0))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float, bias: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, bias=bias)
        self.attn = SelfAttention(dim, heads, dropout, bias)
        self.ln2 = nn.LayerNorm(dim, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(dim, ffn_dim, bias=bias), nn.GELU(), nn.Linear(ffn_dim, dim, bias=bias))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None,
                rotary: tuple[torch.Tensor, torch.Tensor] | None = None,
                only: torch.Tensor | None = None, unpadded: Unpadded | None = None) -> torch.Tensor:
        """``[B, T, dim]``; with ``only [B, T]`` bool, the output at those positions, ``[n, dim]`` row-major.
        With ``unpadded``: real tokens ``[N, dim]`` in and out (and no ``only``)."""
        if only is None or not only.any():
            x = x + self.drop(self.attn(self.ln1(x), attn_mask, rotary, unpadded=unpadded))
            x = x + self.drop(self.mlp(self.ln2(x)))
            return x if only is None else x[only]
        counts = only.sum(1)
        width = int(counts.max())
        # Per row, the selected positions first (ascending), padded to the widest row.
        picks = torch.argsort((~only).to(torch.int8), dim=1, stable=True)[:, :width]
        valid = torch.arange(width, device=only.device) < counts[:, None]
        x = x[only] + self.drop(self.attn(self.ln1(x), attn_mask, rotary, picks=picks)[valid])
        return x + self.drop(self.mlp(self.ln2(x)))


def check_body(dim: int, layers: int, heads: int, ffn_dim: int, dropout: float) -> None:
    """The block-stack sizes every ``TransformerBody`` validates (errors name the ``model.*`` key)."""
    for key, value in (("dim", dim), ("layers", layers), ("heads", heads), ("ffn_dim", ffn_dim)):
        if value <= 0:
            raise UsageError(f"model.{key} must be positive, got {value}")
    if dim % heads:
        raise UsageError(f"model.heads={heads} must divide model.dim={dim} (e.g. model.heads=4 with dim={dim}).")
    if not 0.0 <= dropout < 1.0:
        raise UsageError(f"model.dropout must be in [0, 1), got {dropout}")


class TransformerBody(nn.Module):
    """The pre-LN block stack shared by ptcli's transformers (text: ``TransformerEncoder``; images: ``ViT``).

    A subclass builds its embeddings, then ``_build_body`` (the blocks, the final LayerNorm), then calls
    ``_init_weights``; its forward embeds and hands the tokens to ``run_blocks`` with its position tables."""

    lora_targets = ("qkv", "proj")  # finetune.lora.target_modules=null: the attention projections (ptcli.models.lora)

    def _build_body(self, dim: int, layers: int, heads: int, ffn_dim: int, dropout: float, bias: bool) -> None:
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, ffn_dim, dropout, bias) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, bias=bias)
        self.activation_checkpointing = False

    def _init_weights(self) -> None:
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2 style scaled init of residual projections
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / (2 * len(self.blocks)) ** 0.5)

    def set_activation_checkpointing(self, enabled: bool) -> None:
        self.activation_checkpointing = enabled

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    def run_blocks(self, x: torch.Tensor, mask: torch.Tensor | None,
                   rotary: tuple[torch.Tensor, torch.Tensor] | None, only: torch.Tensor | None = None,
                   unpadded: Unpadded | None = None) -> torch.Tensor:
        """Embedded tokens ``x [B, T, dim]`` through the blocks and the final LayerNorm. ``rotary``: cos/sin
        tables ``[T, head_dim / 2]`` (or ``[B, 1, T, head_dim / 2]``: per-row positions). With ``only``
        (``[B, T]`` bool): the output at those positions alone, ``[n, dim]`` row-major. With ``unpadded``:
        ``x`` is the real tokens, ``[N, dim]``, and so is the output (``rotary``: ``[N, 1, 1, head_dim / 2]``)."""
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for i, block in enumerate(self.blocks):
            picked = only if i == len(self.blocks) - 1 else None
            if recompute:  # (dropout masks are replayed: checkpoint restores the RNG state for the recomputation)
                x = checkpoint(block, x, mask, rotary, picked, unpadded, use_reentrant=False)
            else:
                x = block(x, mask, rotary, only=picked, unpadded=unpadded)
        return self.ln_f(x)


class TransformerEncoder(TransformerBody):
    modality = "text"
    produces = "token_states"  # [B, T, dim] hidden states
    finetune_head = "sequence_classifier"
    finetune_lr = 3e-4  # optim.lr=null in finetune: the best head start at 16 labels/class (README "Measured")
    hf_export = "esm"  # ptcli export writes it as EsmForMaskedLM / EsmForSequenceClassification
    selects_positions = True  # forward(..., only=mask): the last block runs at those positions only (MaskedLM)

    # Defaults: TransformerConfig (one place; the YAML and direct callers both get them from there).
    def __init__(self, vocab_size: int, dim: int = TransformerConfig.dim, layers: int = TransformerConfig.layers,
                 heads: int = TransformerConfig.heads, ffn_dim: int = TransformerConfig.ffn_dim,
                 max_len: int = TransformerConfig.max_len, dropout: float = TransformerConfig.dropout,
                 bias: bool = TransformerConfig.bias, position: str = TransformerConfig.position,
                 embed_norm: bool = TransformerConfig.embed_norm) -> None:
        super().__init__()
        check_body(dim, layers, heads, ffn_dim, dropout)
        for key, value in (("max_len", max_len), ("vocab_size", vocab_size)):
            if value <= 0:
                raise UsageError(f"model.{key} must be positive, got {value}")
        if position not in ("learned", "rotary"):
            raise UsageError(f"model.position must be 'learned' or 'rotary', got {position!r}")
        if position == "rotary" and (dim // heads) % 2:
            raise UsageError(f"model.dim={dim} / model.heads={heads} gives an odd head size {dim // heads}; rotary "
                             "positions need an even one (change model.heads, or use model.position=learned).")
        self.dim, self.max_len, self.vocab_size, self.position = dim, max_len, vocab_size, position
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.emb_norm = nn.LayerNorm(dim, bias=bias) if embed_norm else None
        self.pos_emb = nn.Embedding(max_len, dim) if position == "learned" else None
        if position == "rotary":
            cos, sin = rotary_tables(max_len, dim // heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self._build_body(dim, layers, heads, ffn_dim, dropout, bias)
        self._init_weights()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                only: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids [B, T]`` -> hidden states ``[B, T, dim]``. ``attention_mask`` 1 = real token.
        With ``only`` (``[B, T]`` bool): the hidden states at those positions, ``[n, dim]``, row-major."""
        t = input_ids.shape[1]
        if t > self.max_len:
            raise UsageError(f"sequence length {t} exceeds model.max_len={self.max_len}")
        if attention_mask is not None and not bool(attention_mask.all()):
            return self._forward_unpadded(input_ids, attention_mask, only)
        x = self.embed_tokens(input_ids)
        rotary = None
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(t, device=input_ids.device))
        else:
            rotary = (self.rope_cos[:t].to(x.dtype), self.rope_sin[:t].to(x.dtype))
        x = self.drop(x)
        return self.run_blocks(x, None, rotary, only)  # no padding here (packed blocks, or a mask of ones)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok_emb(input_ids)
        return x if self.emb_norm is None else self.emb_norm(x)

    def _forward_unpadded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          only: torch.Tensor | None) -> torch.Tensor:
        """A padded batch through the blocks at its real tokens only (``Unpadded``); zeros at padded positions.
        ``only`` selects afterwards: the unpadded blocks already skip most of what it would."""
        unpadded = Unpadded(attention_mask)
        x = self.embed_tokens(input_ids.reshape(-1).index_select(0, unpadded.index))
        pos, rotary = unpadded.positions(), None
        if self.pos_emb is not None:
            x = x + self.pos_emb(pos)
        else:
            rotary = (self.rope_cos[pos][:, None, None].to(x.dtype), self.rope_sin[pos][:, None, None].to(x.dtype))
        hidden = unpadded.pad(self.run_blocks(self.drop(x), None, rotary, unpadded=unpadded))
        return hidden if only is None else hidden[only]
