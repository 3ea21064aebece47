"""Train (or load) a subword tokenizer with Hugging Face ``tokenizers``.

Trained tokenizers are cached by a fingerprint of the training split and the settings, so a second
run on the same data skips training. Special tokens come first: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptcli.errors import UsageError

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class TokenizerConfig:
    """The ``tokenizer`` section of text runs (no component: ``build_tokenizer`` reads it)."""

    kind: str = "wordpiece"  # wordpiece | bpe
    vocab_size: int = 8192
    lowercase: bool = True
    min_frequency: int = 2
    # An existing tokenizer.json (or a directory holding one) instead of training.
    path: str | None = None
    # Train on at most this many training documents (the first ones); null = all (with
    # data.streaming=true: the first 100,000).
    train_examples: int | None = None


def _new_tokenizer(kind: str, vocab_size: int, lowercase: bool, min_frequency: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    norm = [normalizers.NFD(), normalizers.StripAccents()]
    if lowercase:
        norm.insert(0, normalizers.Lowercase())
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=SPECIAL_TOKENS)
    elif kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        raise UsageError(f"tokenizer.kind must be 'wordpiece' or 'bpe', got {kind!r}")
    tok.normalizer = normalizers.Sequence(norm)
    return tok, trainer


def _post_process(tok) -> None:
    from tokenizers import processors

    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise UsageError(f"tokenizer.path: '{path}' has no tokenizer.json. Pass a tokenizer.json file or a "
                         "directory holding one (e.g. a run's tokenizer/ folder).")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as exc:
        raise UsageError(f"cannot read tokenizer '{p}': {exc}") from exc
    ids = special_ids(tok)
    missing = [SPECIAL_NAMES[n][0] for n in ("pad", "cls", "sep") if ids[n] is None]
    if missing:
        raise UsageError(f"tokenizer '{p}' lacks special tokens {missing}; ptcli needs [PAD] [CLS] [SEP] (and "
                         "[MASK] for MLM), or their RoBERTa names <pad> <s> </s> <mask>.")
    return tok


def build_tokenizer(cfg: Any, train_split: Any):
    """Load ``cfg.path`` or train on ``train_split['text']`` (its first ``cfg.train_examples`` rows when set;
    cached by data fingerprint + settings)."""
    from ptcli.cache import cache_root

    if cfg.path:
        return load_tokenizer(cfg.path)
    if cfg.vocab_size < len(SPECIAL_TOKENS) + 1:
        raise UsageError(f"tokenizer.vocab_size must be larger than {len(SPECIAL_TOKENS)}, got {cfg.vocab_size}")
    limit = cfg.get("train_examples")
    if limit is not None:
        if int(limit) <= 0:
            raise UsageError(f"tokenizer.train_examples must be positive (or null = all), got {limit}")
        if len(train_split) > int(limit):
            train_split = train_split.select(range(int(limit)))
    key = f"v1|{train_split._fingerprint}|{cfg.kind}|{cfg.vocab_size}|{cfg.lowercase}|{cfg.min_frequency}"
    cached = cache_root() / "tokenizers" / (hashlib.sha256(key.encode()).hexdigest()[:20] + ".json")
    if cached.is_file():
        return load_tokenizer(cached)
    tok, trainer = _new_tokenizer(cfg.kind, int(cfg.vocab_size), bool(cfg.lowercase), int(cfg.min_frequency))

    def batches(size: int = 1000):
        for i in range(0, len(train_split), size):
            yield train_split[i : i + size]["text"]

    tok.train_from_iterator(batches(), trainer=trainer, length=len(train_split))
    _post_process(tok)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}")
    tok.save(str(tmp))
    os.replace(tmp, cached)
    return tok


def save_tokenizer(tok: Any, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))


# BERT-style names first, then RoBERTa-style ones (tokenizers of `pretrained=hf:` checkpoints).
SPECIAL_NAMES = {"pad": ("[PAD]", "<pad>"), "unk": ("[UNK]", "<unk>"), "cls": ("[CLS]", "<s>"),
                 "sep": ("[SEP]", "</s>"), "mask": ("[MASK]", "<mask>")}


def special_ids(tok: Any) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for name, candidates in SPECIAL_NAMES.items():
        out[name] = next((i for i in (tok.token_to_id(c) for c in candidates) if i is not None), None)
    return out
