"""ELECTRA: replaced-token detection (Clark, Luong, Le & Manning 2020, "ELECTRA: Pre-training Text Encoders as
Discriminators Rather Than Generators", ICLR 2020, https://arxiv.org/abs/2003.10555).

A small generator (a masked LM) fills the masked positions with tokens sampled from its output distribution; the
discriminator (the encoder that is kept, ``.encoder``: what ``finetune pretrained=``, ``embed`` and ``export`` load)
predicts at every position whether its token was replaced. The loss is the generator's MLM loss plus
``disc_weight`` (the paper's lambda = 50) times the discriminator's binary cross-entropy. As in the paper:

- the generator is a transformer with the discriminator's number of layers and ``generator_scale`` of its width,
  attention heads and MLP width (the paper finds 1/4 to 1/2 of the discriminator best; 0.25 is the released code's
  default);
- the token embeddings are shared: the generator reads the discriminator's ``tok_emb`` (projected to its width when
  the widths differ) and its MLM head projects back to the embedding width and decodes with the same table;
- a sampled token equal to the original counts as original (label 0);
- no gradient flows from the discriminator into the generator through the sampling (samples are integers);
- 15% of the tokens are selected, 85% of those become [MASK] and the rest keep their token (the released code's
  ``pretrain_helpers.mask``; no random tokens: the generator supplies the replacements).

Sampling draws its uniforms from the ``torch.Generator`` the masks come from, on the CPU, together with the masks
(``mask()`` returns them beside the inputs and labels), so a run is reproducible, resumes exactly, and N processes
see the samples one process would. The generator lives under ``generator.`` in the state dict: checkpoints hold it
(exact resume) and loaders of the encoder (``encoder.`` keys) never pick it up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.errors import UsageError
from ptcli.models.transformer import TransformerBody, rotary_tables
from ptcli.objectives import check_number
from ptcli.objectives.mlm import IGNORE, mask_with, set_masking


@dataclass
class ElectraConfig:
    """``objective=electra``: the defaults of ``Electra`` (conf/objective/electra.yaml extends it)."""

    _target_: str = "ptcli.objectives.electra.Electra"
    mask_rate: float = 0.15  # the paper's (its Table 7 lists 15% for Small and Base)
    mask_token_share: float = 0.85  # of the selected tokens; the rest keep their token
    random_token_share: float = 0.0
    whole_word: bool = False
    generator_scale: float = 0.25  # generator width / discriminator width (dim, heads, ffn_dim); same layers
    disc_weight: float = 50.0  # lambda: weight of the discriminator loss


def _body_sizes(encoder: nn.Module) -> tuple[int, int, int]:
    """``(layers, heads, ffn_dim)`` of a ptcli transformer; a UsageError for any other encoder."""
    blocks = getattr(encoder, "blocks", None)
    if not isinstance(encoder, TransformerBody) or not isinstance(getattr(encoder, "tok_emb", None), nn.Embedding) \
            or not blocks:
        raise UsageError("objective=electra needs ptcli's transformer (model=transformer), not "
                         f"{type(encoder).__name__}: its generator is a narrower copy of it.")
    first = blocks[0]
    return len(blocks), first.attn.heads, first.mlp[0].out_features


class ElectraGenerator(TransformerBody):
    """The generator: a narrower transformer reading the discriminator's token embeddings (``emb_dim`` wide),
    with an MLM head that maps back to ``emb_dim`` for the tied decoder. Holds no embedding table of its own."""

    def __init__(self, emb_dim: int, dim: int, layers: int, heads: int, ffn_dim: int, max_len: int, vocab_size: int,
                 rotary: bool, bias: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.embed_proj = nn.Linear(emb_dim, dim) if emb_dim != dim else nn.Identity()
        if rotary:
            cos, sin = rotary_tables(max_len, dim // heads)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.rotary = rotary
        self._build_body(dim, layers, heads, ffn_dim, 0.0, bias)
        # MLM head (ELECTRA's generator head: dense to the embedding width, GELU, LayerNorm, tied decoder + bias)
        self.transform = nn.Sequential(nn.Linear(dim, emb_dim), nn.GELU(), nn.LayerNorm(emb_dim))
        self.decoder_bias = nn.Parameter(torch.zeros(vocab_size))
        self._init_weights()

    def forward(self, embedded: torch.Tensor, only: torch.Tensor, decoder: torch.Tensor) -> torch.Tensor:
        """Embedded tokens ``[B, T, emb_dim]`` -> vocabulary logits at the ``only`` positions ``[n, vocab]``."""
        t = embedded.shape[1]
        x = self.embed_proj(embedded)
        rotary = (self.rope_cos[:t].to(x.dtype), self.rope_sin[:t].to(x.dtype)) if self.rotary else None
        hidden = self.run_blocks(x, None, rotary, only)
        return F.linear(self.transform(hidden), decoder, self.decoder_bias)


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits [n, vocab]`` from its softmax, by inverting the CDF at ``uniform [n]`` (values
    in [0, 1): drawn from the run's seeded generator). Integers out: nothing to differentiate."""
    with torch.no_grad():
        cdf = torch.softmax(logits.detach().float(), dim=-1).cumsum(-1)
        u = uniform.to(cdf.device, cdf.dtype).unsqueeze(1) * cdf[:, -1:]
        return torch.searchsorted(cdf, u).squeeze(1).clamp_(max=logits.shape[-1] - 1)


class Electra(nn.Module):
    """Generator + discriminator (the ``encoder`` it is given) + binary head: replaced-token detection."""

    modality = "text"
    produces = "replaced_token_logits"  # per-position replaced-vs-original; evaluation: losses, gen_mlm_acc, disc_acc
    probes: tuple[str, ...] = ()
    hf_export = None  # ptcli export of a pretrain run writes a *ForMaskedLM; the discriminator has no MLM head
    # What the text pre-training builder passes (ptcli.builders.build_text_objective).
    needs = ("special_ids", "mask_id", "word_start", "head", "pad_id")

    def __init__(self, encoder: nn.Module, special_ids: list[int], mask_id: int, word_start: torch.Tensor | None = None,
                 head: nn.Module | None = None, pad_id: int | None = None,
                 mask_rate: float = ElectraConfig.mask_rate, mask_token_share: float = ElectraConfig.mask_token_share,
                 random_token_share: float = ElectraConfig.random_token_share,
                 whole_word: bool = ElectraConfig.whole_word, generator_scale: float = ElectraConfig.generator_scale,
                 disc_weight: float = ElectraConfig.disc_weight) -> None:
        super().__init__()
        if head is not None:
            raise UsageError("objective=electra trains ptcli's transformer from scratch; it cannot continue a "
                             "transformers checkpoint (init_from=hf:). Use objective=mlm for that.")
        check_number("generator_scale", generator_scale, 0.0, 1.0, lo_open=True)
        self.disc_weight = check_number("disc_weight", disc_weight, 0.0)
        layers, heads, ffn_dim = _body_sizes(encoder)
        self.encoder = encoder
        dim, vocab = encoder.dim, encoder.vocab_size
        g_heads = max(1, round(heads * generator_scale))
        g_dim = max(g_heads, round(dim * generator_scale / g_heads) * g_heads)  # a multiple of its heads
        rotary = getattr(encoder, "pos_emb", None) is None
        if rotary and (g_dim // g_heads) % 2:
            g_dim += g_heads  # rotary positions need an even head size
        self.generator = ElectraGenerator(dim, g_dim, layers, g_heads, max(1, round(ffn_dim * generator_scale)),
                                          encoder.max_len, vocab, rotary)
        self.disc_head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))  # the paper's head
        set_masking(self, vocab=vocab, special_ids=special_ids, mask_id=mask_id, word_start=word_start,
                    mask_rate=mask_rate, mask_token_share=mask_token_share, random_token_share=random_token_share,
                    whole_word=whole_word)
        self.pad_id = pad_id

    def mask(self, input_ids: torch.Tensor, generator: torch.Generator | None = None):
        """``(generator inputs, labels, uniforms)``: MLM masking (``ptcli.objectives.mlm.mask_tokens``), then one
        uniform per position from the same generator, which ``forward`` turns into the generator's samples."""
        inputs, labels = mask_with(self, input_ids, generator)
        return inputs, labels, torch.rand(input_ids.shape, generator=generator, device=input_ids.device)

    def _embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        embed = getattr(self.encoder, "embed_tokens", self.encoder.tok_emb)  # with its LayerNorm (model.embed_norm)
        x = embed(input_ids)
        if getattr(self.encoder, "pos_emb", None) is not None:  # shared learned positions, as the embeddings
            x = x + self.encoder.pos_emb(torch.arange(input_ids.shape[1], device=input_ids.device))
        return x

    def corrupt(self, inputs: torch.Tensor, labels: torch.Tensor, uniform: torch.Tensor):
        """Generator pass: ``(generator logits at masked positions, discriminator inputs, replaced [B, T] bool,
        masked positions [B, T] bool)``."""
        where = labels != IGNORE
        logits = self.generator(self._embed(inputs), where, self.encoder.tok_emb.weight)
        sampled = sample_tokens(logits, uniform[where])
        original = torch.where(where, labels, inputs)
        corrupted = original.clone()
        corrupted[where] = sampled
        return logits, corrupted, corrupted != original, where

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor, uniform: torch.Tensor) -> dict:
        logits, corrupted, replaced, where = self.corrupt(inputs, labels, uniform)
        target = labels[where]
        gen_sum = F.cross_entropy(logits.float(), target, reduction="sum")
        n = target.numel()
        valid = corrupted != self.pad_id if self.pad_id is not None else torch.ones_like(replaced)
        attention = valid if not bool(valid.all()) else None
        disc = self.disc_head(self.encoder(corrupted, attention)).squeeze(-1)[valid].float()
        truth = replaced[valid].float()
        disc_sum = F.binary_cross_entropy_with_logits(disc, truth, reduction="sum")
        m = truth.numel()
        gen_loss, disc_loss = gen_sum / max(n, 1), disc_sum / max(m, 1)
        out = {"loss": gen_loss + self.disc_weight * disc_loss, "gen_loss": gen_loss.detach(),
               "disc_loss": disc_loss.detach()}
        if not self.training:  # evaluation: {metric: (numerator, denominator)}, summed over batches
            out["ratios"] = {"gen_loss": (gen_sum, n), "disc_loss": (disc_sum, m),
                             "gen_mlm_acc": ((logits.argmax(-1) == target).sum(), n),
                             "disc_acc": (((disc > 0) == truth.bool()).sum(), m),
                             "replaced": (truth.sum(), m)}
        return out

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        """The evaluation's ratios -> its metrics: ``loss`` is the training loss's form over the whole split."""
        return {"loss": metrics["gen_loss"] + self.disc_weight * metrics["disc_loss"], **metrics}
