"""Masked language modeling (BERT-style), with the vocabulary projection at masked positions only."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.errors import UsageError

IGNORE = -100


@dataclass
class MLMConfig:
    """``objective=mlm``: the defaults of ``MaskedLM`` (conf/objective/mlm.yaml extends it)."""

    _target_: str = "ptcli.objectives.mlm.MaskedLM"
    # 0.3, not BERT's 0.15: at ptcli's budgets the larger rate (with lr 2e-3) gave the largest head start
    # (README "Measured"; Wettig et al. 2023, "Should You Mask 15% in Masked Language Modeling?").
    mask_rate: float = 0.3
    # Of the selected tokens: this share becomes [MASK], this share a random token, the rest stay.
    mask_token_share: float = 0.8
    random_token_share: float = 0.1
    whole_word: bool = False


EVAL_SEED = 1234  # validation masks are the same at every evaluation, so scores are comparable


def mask_tokens(
    input_ids: torch.Tensor,
    *,
    mask_rate: float,
    mask_id: int,
    vocab_size: int,
    special: torch.Tensor,
    generator: torch.Generator | None = None,
    mask_token_share: float = MLMConfig.mask_token_share,
    random_token_share: float = MLMConfig.random_token_share,
    word_start: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Select non-special tokens with probability ``mask_rate``; of those, ``mask_token_share`` become
    [MASK], ``random_token_share`` a random token, the rest stay. Returns ``(inputs, labels)`` with
    labels ``-100`` at unselected positions. ``special`` is a ``[vocab]`` bool lookup table.
    With ``word_start`` (a ``[vocab]`` bool table: token begins a word) whole words are selected together.
    """
    is_special = special[input_ids]
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    if word_start is not None:
        # Each token takes the draw of the first token of its word: words are selected as units.
        starts = word_start[input_ids] | is_special
        start_positions = torch.where(starts, torch.arange(input_ids.shape[1], device=input_ids.device), 0)
        first_pos = torch.cummax(start_positions, dim=1).values
        draw = draw.gather(1, first_pos)
    selected = (draw < mask_rate) & ~is_special
    labels = torch.where(selected, input_ids, IGNORE)
    how = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    to_mask = selected & (how < mask_token_share)
    to_random = selected & (how >= mask_token_share) & (how < mask_token_share + random_token_share)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    inputs = torch.where(to_mask, mask_id, input_ids)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs, labels


def set_masking(module: nn.Module, *, vocab: int, special_ids: list[int], mask_id: int,
                word_start: torch.Tensor | None, mask_rate: float, mask_token_share: float, random_token_share: float,
                whole_word: bool) -> None:
    """Check an objective's masking options and keep them on ``module`` (``mask_rate``, ``mask_id``, the shares,
    the ``special`` and ``word_start`` tables) for ``mask_with``: MLM and ELECTRA mask the same way."""
    if not 0.0 < mask_rate < 1.0:
        raise UsageError(f"objective.mask_rate must be in (0, 1), got {mask_rate}")
    if mask_token_share < 0 or random_token_share < 0 or mask_token_share + random_token_share > 1:
        raise UsageError("objective.mask_token_share and random_token_share must be >= 0 and sum to <= 1, "
                         f"got {mask_token_share} and {random_token_share}")
    if whole_word and word_start is None:
        raise UsageError("objective.whole_word=true needs a WordPiece tokenizer (tokenizer.kind=wordpiece)")
    module.mask_rate, module.mask_id = mask_rate, mask_id
    module.mask_token_share, module.random_token_share = mask_token_share, random_token_share
    special = torch.zeros(vocab, dtype=torch.bool)
    special[torch.tensor(special_ids, dtype=torch.long)] = True
    module.register_buffer("special", special, persistent=False)
    module.register_buffer("word_start", word_start if whole_word else None, persistent=False)


def mask_with(module: nn.Module, input_ids: torch.Tensor,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``mask_tokens`` with the options ``set_masking`` kept on ``module``."""
    return mask_tokens(input_ids, mask_rate=module.mask_rate, mask_id=module.mask_id,
                       vocab_size=module.encoder.vocab_size, special=module.special, generator=generator,
                       mask_token_share=module.mask_token_share, random_token_share=module.random_token_share,
                       word_start=module.word_start)


class MaskedLM(nn.Module):
    """Encoder + MLM head (dense, GELU, LayerNorm, decoder tied to the token embedding).

    Any text encoder fits (``produces = "token_states"``, attributes ``dim`` and ``vocab_size``). The decoder is
    tied to its ``tok_emb`` when it has one (else a decoder of its own), and an encoder that declares
    ``selects_positions`` (ptcli's ``TransformerEncoder``) computes its last block at masked positions only.
    ``head`` replaces that head with an existing one mapping hidden states to vocabulary logits (the
    pre-trained head of a transformers checkpoint, for continued pre-training).
    """

    modality = "text"
    produces = "token_logits"  # what the pre-training head outputs; evaluation: masked-token loss, mlm_acc, ppl
    probes: tuple[str, ...] = ()  # its encoder is judged by evaluate_mlm, not by frozen-feature probes
    # What the text pre-training builder passes besides the encoder and the objective's own options
    # (ptcli.builders.build_text_objective; also "pad_id").
    needs: tuple[str, ...] = ("special_ids", "mask_id", "word_start", "head")

    def __init__(self, encoder: nn.Module, special_ids: list[int], mask_id: int, word_start: torch.Tensor | None = None,
                 mask_rate: float = MLMConfig.mask_rate, mask_token_share: float = MLMConfig.mask_token_share,
                 random_token_share: float = MLMConfig.random_token_share, whole_word: bool = MLMConfig.whole_word,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        dim, vocab = encoder.dim, encoder.vocab_size
        set_masking(self, vocab=vocab, special_ids=special_ids, mask_id=mask_id, word_start=word_start,
                    mask_rate=mask_rate, mask_token_share=mask_token_share, random_token_share=random_token_share,
                    whole_word=whole_word)
        if head is None:
            self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
            self.decoder_bias = nn.Parameter(torch.zeros(vocab))
            if not isinstance(getattr(encoder, "tok_emb", None), nn.Embedding):
                self.decoder = nn.Linear(dim, vocab, bias=False)  # nothing to tie to
        else:
            self.head = head

    def mask(self, input_ids: torch.Tensor, generator: torch.Generator | None = None):
        return mask_with(self, input_ids, generator)

    def logits_at(self, input_ids: torch.Tensor, where: torch.Tensor,
                  attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits at the positions ``where`` (``[B, T]`` bool), ``[n, vocab]`` row-major: the MLM
        loss reads them at masked tokens, cloze fine-tuning (ptcli/models/cloze.py) at the pattern's slot."""
        if hasattr(self, "head"):
            return self.head(self.encoder(input_ids, attention_mask)[where])
        if getattr(self.encoder, "selects_positions", False):  # last block at those positions only
            hidden = self.encoder(input_ids, attention_mask, only=where)
        else:
            hidden = self.encoder(input_ids, attention_mask)[where]
        weight = self.decoder.weight if hasattr(self, "decoder") else self.encoder.tok_emb.weight
        return F.linear(self.transform(hidden), weight, self.decoder_bias)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss summed over masked positions, with counts, so callers can average across batches exactly."""
        where = labels != IGNORE
        logits = self.logits_at(input_ids, where)
        target = labels[where]
        loss_sum = F.cross_entropy(logits.float(), target, reduction="sum")
        n = target.numel()
        out = {"loss": loss_sum / max(n, 1), "loss_sum": loss_sum, "count": n}
        if not self.training:  # accuracy is an evaluation metric; training skips the argmax
            out["correct"] = (logits.argmax(-1) == target).sum()
            out["ratios"] = {"loss": (loss_sum, n), "mlm_acc": (out["correct"], n)}  # summed over batches
        return out

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        """The evaluation's ratios (``loss``, ``mlm_acc``) -> its metrics, with the masked tokens' perplexity."""
        return {**metrics, "ppl": math.exp(min(metrics["loss"], 50.0))}


def word_start_table(tok) -> torch.Tensor | None:
    """``[vocab]`` bool: the token starts a word (WordPiece continuation tokens start with '##')."""
    vocab = tok.get_vocab()
    if not any(t.startswith("##") for t in vocab):
        return None
    table = torch.ones(tok.get_vocab_size(), dtype=torch.bool)
    for token, idx in vocab.items():
        if token.startswith("##"):
            table[idx] = False
    return table


@torch.no_grad()
def evaluate_mlm(model: nn.Module, blocks: torch.Tensor, batch_size: int, device: torch.device,
                 max_batches: int | None = None) -> dict[str, float]:
    """A text objective's evaluation over ``blocks`` with fixed (seeded) masks: MLM's masked-token loss, accuracy
    and perplexity, or whatever another objective reports. The objective's ``mask(blocks, generator)`` gives the
    arguments of its ``forward``, whose output in eval mode holds ``ratios`` ``{metric: (numerator, denominator)}``
    (summed over batches, then divided); its ``summarize(metrics)``, when it has one, adds derived metrics."""
    gen = torch.Generator(device="cpu").manual_seed(EVAL_SEED)
    sums: dict[str, list] = {}
    for i, start in enumerate(range(0, len(blocks), batch_size)):
        if max_batches is not None and i >= max_batches:
            break
        batch = model.mask(blocks[start : start + batch_size], generator=gen)
        out = model(*(t.to(device) for t in batch))
        ratios = out.get("ratios")
        if ratios is None:  # a MaskedLM subclass's own forward() with the older output: loss_sum, correct, count
            ratios = {"loss": (out["loss_sum"], out["count"]), "mlm_acc": (out["correct"], out["count"])}
        for name, (num, den) in ratios.items():
            acc = sums.setdefault(name, [torch.zeros((), dtype=torch.float64), 0])
            acc[0] += torch.as_tensor(num).double().cpu()
            acc[1] += int(den)
    metrics = {name: float(num) / max(den, 1) for name, (num, den) in sums.items()}
    summarize = getattr(model, "summarize", None)
    return summarize(metrics) if summarize is not None else metrics
