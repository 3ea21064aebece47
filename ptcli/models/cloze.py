"""Cloze fine-tuning: classify by filling a [MASK] slot with the pre-trained MLM head (``head=cloze``).

A pattern wraps each input with one [MASK] slot (``"[MASK] : {text}"``, ``"{text} It documents a [MASK]."``); a
verbalizer maps each label to one or more vocabulary tokens (``function: [function, def]``). The class logit is the
mean of the MLM head's logits of the label's tokens at the slot, and the loss is cross-entropy over those class
logits, training the whole model (PET: Schick & Schuetze 2021, "Exploiting Cloze Questions for Few Shot Text
Classification and Natural Language Inference", EACL; LM-BFF: Gao, Fisch & Chen 2021, "Making Pre-trained Language
Models Better Few-shot Learners", ACL). The head the classifier starts from is the one pre-training trained, so a
few labels steer a model that already predicts words at [MASK], instead of training a fresh linear layer from 32
examples.

Several patterns may be given: every training example is seen under each, and a prediction averages the class
log-probabilities over the patterns (PET's ensemble, in one model). With ``verbalizer: null`` the label tokens are
chosen from the labeled training examples as LM-BFF does: for each class, the vocabulary token whose log-probability
at the slot (pre-trained model, first pattern) is highest on that class's examples relative to all examples. With
``verbalizer: names`` (the default) a label whose name is one token is its own word (LM-BFF's manual label words,
e.g. a package name for the package a docstring comes from); the other labels' words are chosen as above.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ptcli.errors import UsageError

TEXT, SLOT = "{text}", "[MASK]"
VERBALIZER_MODES = ("auto", "names")  # finetune.cloze.verbalizer given as a word instead of {label: [words]}
HEADS = ("classifier", "cloze")
VERBALIZER = "verbalizer.json"  # in a head=cloze fine-tune run: the label words it was trained with


@dataclass
class ClozeConfig:
    """``finetune.cloze``: the patterns (each with ``{text}`` and one ``[MASK]``) and the verbalizer
    (``{label: [token, ...]}``; null = chosen from the training examples)."""

    # LM-BFF's template for question-type classification (TREC), a task decided by form more than topic.
    patterns: list[str] = field(default_factory=lambda: ["[MASK] : {text}"])
    # {label: [word, ...]} (a word alone is a list of one); "names" = each label's own name where it is one token,
    # the others chosen from the training examples; null (or "auto") = all chosen. Default names: measured best on
    # both pydocs tasks (README "Cloze fine-tuning vs the classification head"). Typed Any: OmegaConf cannot merge
    # a command-line dict into a typed dict node that is null.
    verbalizer: Any = "names"


def check_pattern(pattern: str) -> list[str]:
    """The pattern split into its parts: literal strings, ``{text}`` and ``[MASK]`` (exactly one of each)."""
    if pattern.count(TEXT) != 1 or pattern.count(SLOT) != 1:
        raise UsageError(f"finetune.cloze.patterns: {pattern!r} must hold {TEXT} once and {SLOT} once, e.g. "
                         f"\"{TEXT} It was {SLOT}.\"")
    parts: list[str] = []
    for piece in pattern.split(TEXT):
        before, slot, after = piece.partition(SLOT)
        parts += [before, slot, after] if slot else [piece]
        parts.append(TEXT)
    return [p for p in parts[:-1] if p]


class PatternEncoder:
    """Token ids of texts wrapped in one pattern: ``[CLS] ... [SEP]`` with the slot as the mask token; the text is
    truncated (never the pattern) so the whole fits ``max_len``."""

    def __init__(self, tok: Any, pattern: str, max_len: int, ids: dict[str, int | None]) -> None:
        self.parts: list = []
        for part in check_pattern(pattern):
            if part in (TEXT, SLOT):
                self.parts.append(part)
                continue
            # Literal special tokens inside a pattern ("[SEP]") map to the tokenizer's own ids.
            for j, chunk in enumerate(part.split("[SEP]")):
                if j:
                    self.parts.append([ids["sep"]])
                if chunk.strip():
                    self.parts.append(tok.encode(chunk, add_special_tokens=False).ids)
        self.mask_id, self.cls_id, self.sep_id = ids["mask"], ids["cls"], ids["sep"]
        self.unk_id = ids["unk"] if ids["unk"] is not None else ids["pad"]
        fixed = 2 + 1 + sum(len(p) for p in self.parts if isinstance(p, list))
        self.room = max_len - fixed
        if self.room < 1:
            raise UsageError(f"finetune.cloze.patterns: {pattern!r} alone fills model.max_len={max_len} tokens.")

    def __call__(self, text_ids: list[int]) -> list[int]:
        # A mask token inside the text itself (a literal "[MASK]") would be a second slot: read it as unknown.
        text_ids = [self.unk_id if t == self.mask_id else t for t in text_ids[: self.room]]
        out = [self.cls_id]
        for part in self.parts:
            out += text_ids if part == TEXT else [self.mask_id] if part == SLOT else part
        return out + [self.sep_id]


def encode_with_patterns(tok: Any, texts: list[str], patterns: list[str], max_len: int) -> list[list[list[int]]]:
    """``[pattern][example]`` token ids."""
    from ptcli.tokenizer import special_ids

    ids = special_ids(tok)
    if ids["mask"] is None:
        raise UsageError("head=cloze needs a tokenizer with a mask token ([MASK] or <mask>).")
    raw = [e.ids for e in tok.encode_batch([t if isinstance(t, str) else "" for t in texts],
                                            add_special_tokens=False)]
    return [[enc(r) for r in raw] for enc in (PatternEncoder(tok, p, max_len, ids) for p in patterns)]


def label_token_ids(tok: Any, verbalizer: dict[str, list[str]], names: list[str]) -> list[list[int]]:
    """Each label's verbalizer tokens as ids; every label needs at least one, and each word must be one token."""
    missing = [n for n in names if str(n) not in verbalizer]
    if missing:
        raise UsageError(f"finetune.cloze.verbalizer has no words for label(s) {missing[:5]}; give every label "
                         "one or more words, or verbalizer=null to choose them from the training examples.")
    out = []
    for name in names:
        words = verbalizer[str(name)]
        words = [words] if isinstance(words, str) else list(words)
        ids = []
        for word in words:
            # Byte-level BPE marks a word start with a leading space; WordPiece ignores it.
            enc = tok.encode(f" {word}", add_special_tokens=False).ids
            if len(enc) != 1:
                raise UsageError(f"finetune.cloze.verbalizer.{name}: {word!r} is {len(enc)} tokens for this "
                                 "tokenizer; each word must be one token (pick another word).")
            ids.append(enc[0])
        if not ids:
            raise UsageError(f"finetune.cloze.verbalizer.{name} is empty; give it one or more words.")
        out.append(ids)
    return out


class ClozeClassifier(nn.Module):
    """A masked LM (``.mlm``: encoder + MLM head, a ``MaskedLM``) read at the [MASK] slot: class logits are the
    mean of each label's token logits there. ``forward(input_ids, attention_mask)`` -> ``[B, classes]`` like
    ``SequenceClassifier``, so the fine-tuning loop, scoring and evaluation treat both alike."""

    def __init__(self, mlm: nn.Module, mask_id: int, label_ids: list[list[int]]) -> None:
        super().__init__()
        self.mlm, self.mask_id = mlm, mask_id
        self.set_label_ids(label_ids)

    def set_label_ids(self, label_ids: list[list[int]]) -> None:
        """The verbalizer as token ids per class (not saved with the weights: the run keeps verbalizer.json)."""
        self.num_classes = len(label_ids)
        width = max(len(ids) for ids in label_ids)
        table = torch.tensor([ids + [ids[0]] * (width - len(ids)) for ids in label_ids])
        weight = torch.tensor([[1.0 / len(ids)] * len(ids) + [0.0] * (width - len(ids)) for ids in label_ids])
        device = next(self.mlm.parameters()).device
        self.register_buffer("label_ids", table.to(device), persistent=False)
        self.register_buffer("label_weight", weight.to(device), persistent=False)

    @property
    def encoder(self) -> nn.Module:
        return self.mlm.encoder

    def slot_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits at each row's slot, ``[B, vocab]``."""
        where = input_ids == self.mask_id
        if not bool((where.sum(1) == 1).all()):
            raise UsageError("head=cloze: every input needs exactly one mask token (the pattern's [MASK]).")
        return self.mlm.logits_at(input_ids, where, attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        vocab = self.slot_logits(input_ids, attention_mask)
        return (vocab[:, self.label_ids] * self.label_weight).sum(-1)


def name_words(tok: Any, names: list[str]) -> dict[str, list[str]]:
    """``verbalizer: names``: the labels whose name (lowercased when the tokenizer lowercases) is one whole-word
    token, each mapped to itself; the others are left out, for ``choose_verbalizer`` to fill."""
    out: dict[str, list[str]] = {}
    for name in map(str, names):
        ids = tok.encode(f" {name}", add_special_tokens=False).ids
        if len(ids) == 1:
            out[name] = [tok.id_to_token(ids[0]).removeprefix("Ġ").removeprefix("▁")]
    return out


@torch.no_grad()
def choose_verbalizer(model: ClozeClassifier, seqs: list[list[int]], y: torch.Tensor, names: list[str], tok: Any,
                      pad_id: int, device: torch.device, batch_size: int = 64,
                      fixed: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """LM-BFF's automatic label words, one per class: the whole-word token whose log-probability at the slot is
    highest on the class's examples relative to the mean over all examples (distinct across classes). Labels in
    ``fixed`` keep their words (and those tokens are not chosen for another label)."""
    fixed = fixed or {}
    if all(str(n) in fixed for n in names):
        return {str(n): fixed[str(n)] for n in names}
    from ptcli.data.text import pad_batch

    model.eval()
    logp = []
    for start in range(0, len(seqs), batch_size):
        ids, mask = pad_batch(seqs[start : start + batch_size], pad_id)
        logp.append(F.log_softmax(model.slot_logits(ids.to(device), mask.to(device)).float(), -1).cpu())
    lp = torch.cat(logp)
    vocab = tok.get_vocab()
    usable = torch.zeros(lp.shape[1], dtype=torch.bool)
    for token, idx in vocab.items():
        word = token.removeprefix("Ġ").removeprefix("▁")
        usable[idx] = word.isalpha() and len(word) > 1 and not token.startswith("##") and not token.startswith("[")
    overall = lp.mean(0)
    chosen: dict[str, list[str]] = {}
    taken = {i for words in fixed.values() for w in words for i in tok.encode(f" {w}", add_special_tokens=False).ids}
    id_to_token = {i: t for t, i in vocab.items()}
    for c, name in enumerate(names):
        if str(name) in fixed:
            chosen[str(name)] = fixed[str(name)]
            continue
        score = lp[y == c].mean(0) - overall if bool((y == c).any()) else overall.clone()
        score[~usable] = float("-inf")
        for idx in score.argsort(descending=True).tolist():
            if idx not in taken:
                taken.add(idx)
                chosen[str(name)] = [id_to_token[idx].removeprefix("Ġ").removeprefix("▁")]
                break
    model.train()
    return chosen


def pattern_logits(model: ClozeClassifier, pseqs: list[list[list[int]]], pad_id: int,
                   device: torch.device) -> torch.Tensor:
    """``[N, classes]`` class log-probabilities averaged over the patterns (``pseqs[pattern][example]``)."""
    from ptcli.models.classifier import text_logits

    return torch.stack([F.log_softmax(text_logits(model, s, pad_id, device), -1) for s in pseqs]).mean(0)


def load_masked_lm(mlm: nn.Module, checkpoint: Any, what: str) -> None:
    """A pre-training checkpoint's encoder and MLM head into ``mlm`` (a ``MaskedLM``); refuses one without a head."""
    from ptcli.checkpoint import load_into

    missing = load_into(mlm, checkpoint, strict=False)
    if missing:
        raise UsageError(f"{what}: head=cloze needs the pre-trained MLM head, and checkpoint {checkpoint} lacks "
                         f"{missing[:4]}; fine-tune it with head=classifier.")


def reinit_top_blocks(encoder: nn.Module, k: int) -> None:
    """``finetune.reinit_layers=k``: the top ``k`` transformer blocks get fresh weights (the encoder's own init)."""
    if k == 0:
        return
    blocks, init = getattr(encoder, "blocks", None), getattr(encoder, "_init", None)
    if blocks is None or init is None:
        raise UsageError(f"finetune.reinit_layers={k}: only ptcli's transformer re-initializes blocks; set it to 0.")
    if not 0 < k <= len(blocks):
        raise UsageError(f"finetune.reinit_layers={k}: the encoder has {len(blocks)} blocks; use 0..{len(blocks)}.")
    for block in list(blocks)[-k:]:
        block.apply(init)
        for m in block.modules():
            if isinstance(m, nn.LayerNorm):
                m.reset_parameters()
