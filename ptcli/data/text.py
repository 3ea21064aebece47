"""Text to tensors: tokenize with ``datasets.map`` (cached by fingerprint) and pack fixed blocks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch

from ptcli.errors import UsageError
from ptcli.tokenizer import special_ids


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def pack_blocks(split: Any, tok: Any, block_size: int, where: str = "data") -> torch.Tensor:
    """Concatenate documents (each ending in [SEP]) and cut ``[CLS] + block_size-1`` token blocks.

    The remainder of each map batch (under one block per 1,000 documents) is dropped, as in
    transformers' ``run_mlm.py`` ``group_texts``. Returns a ``[num_blocks, block_size]`` int64 tensor.
    """
    if block_size < 8:
        raise UsageError(f"data.block_size must be at least 8, got {block_size}")
    ids = special_ids(tok)
    cls_id, sep_id = ids["cls"], ids["sep"]
    body = block_size - 1
    tok_hash = hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]

    def tokenize_and_pack(batch: dict) -> dict:
        ids: list[int] = []
        for enc in tok.encode_batch(batch["text"], add_special_tokens=False):
            ids.extend(enc.ids)
            ids.append(sep_id)
        n = len(ids) // body
        return {"input_ids": [[cls_id, *ids[i * body : (i + 1) * body]] for i in range(n)]}

    packed = split.map(
        tokenize_and_pack,
        batched=True,
        batch_size=1000,
        remove_columns=split.column_names,
        new_fingerprint=_fingerprint("pack-v1", split._fingerprint, tok_hash, block_size),
        desc=f"tokenize+pack {where}",
    )
    if len(packed) == 0:
        raise UsageError(f"{where}: the text is too short for one block of data.block_size={block_size} "
                         f"tokens. Add text or lower data.block_size.")
    # Straight from Arrow: fixed-length lists flatten into one contiguous buffer.
    flat = packed.data.column("input_ids").combine_chunks().flatten().to_numpy()
    return torch.from_numpy(flat.astype("int64")).view(-1, block_size)


class SeededBatches:
    """Endless seeded batches of indices: a fresh permutation per epoch, no replacement.

    Its position (epoch, offset) is a pair of ints, so a resumed run continues mid-epoch exactly
    where it stopped without replaying batches. Subclasses turn indices into tensors.
    """

    def __init__(self, size: int, batch_size: int, seed: int, what: str = "training examples") -> None:
        if size < batch_size:
            raise UsageError(f"only {size} {what} but trainer.batch_size={batch_size}. "
                             "Add data, or lower trainer.batch_size.")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.epoch, self.offset = 0, 0
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm, self._perm_epoch = torch.randperm(self.size, generator=g), self.epoch
        return self._perm

    def __iter__(self) -> Iterator[Any]:
        return self

    def next_indices(self) -> torch.Tensor:
        if self.offset + self.batch_size > self.size:
            self.epoch, self.offset = self.epoch + 1, 0
        idx = self._permutation()[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        return idx

    def __next__(self) -> Any:
        return self.next_indices()

    @property
    def batches_per_epoch(self) -> int:
        return self.size // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])


class BlockBatches(SeededBatches):
    """Batches of rows of a tensor: packed blocks ``[batch_size, block_size]``, or images ``[batch_size, C, H, W]``
    (``what`` names them in errors)."""

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int,
                 what: str = "training blocks (lower data.block_size too)") -> None:
        super().__init__(len(blocks), batch_size, seed, what=what)
        self.blocks = blocks

    def __next__(self) -> torch.Tensor:
        return self.blocks[self.next_indices()]


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists to the longest; returns ``(input_ids, attention_mask)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def tokenize_texts(split: Any, tok: Any, max_len: int, where: str = "data") -> list[list[int]]:
    """``[CLS] text [SEP]`` token ids per row, truncated to ``max_len`` (``datasets.map``, cached)."""
    tok_hash = hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]
    ids = special_ids(tok)
    cls_id, sep_id = ids["cls"], ids["sep"]

    def encode(batch: dict) -> dict:
        out = []
        for enc in tok.encode_batch([t if isinstance(t, str) else "" for t in batch["text"]],
                                    add_special_tokens=False):
            out.append([cls_id, *enc.ids[: max_len - 2], sep_id])
        return {"input_ids": out}

    encoded = split.map(encode, batched=True, batch_size=1000, remove_columns=["text"],
                        new_fingerprint=_fingerprint("encode-v1", split._fingerprint, tok_hash, max_len),
                        desc=f"tokenize {where}")
    return encoded.select_columns(["input_ids"]).to_dict()["input_ids"]
