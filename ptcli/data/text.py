"""Text to tensors: tokenize with ``datasets.map`` (cached by fingerprint) and pack fixed blocks."""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

import torch

from ptcli.errors import UsageError


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:32]


def pack_blocks(split: Any, tok: Any, block_size: int, where: str = "data") -> torch.Tensor:
    """Concatenate documents (each ending in [SEP]) and cut ``[CLS] + block_size-1`` token blocks.

    The remainder of each map batch (under one block per 1,000 documents) is dropped, as in
    transformers' ``run_mlm.py`` ``group_texts``. Returns a ``[num_blocks, block_size]`` int64 tensor.
    """
    if block_size < 8:
        raise UsageError(f"data.block_size must be at least 8, got {block_size}")
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
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
    return torch.from_numpy(packed.with_format("numpy")["input_ids"].astype("int64"))


class BlockBatches:
    """Endless seeded batches over packed blocks: a fresh permutation per epoch, no replacement.

    Its position (epoch, offset) is a pair of ints, so a resumed run continues mid-epoch exactly
    where it stopped without replaying batches.
    """

    def __init__(self, blocks: torch.Tensor, batch_size: int, seed: int) -> None:
        if len(blocks) < batch_size:
            raise UsageError(f"only {len(blocks)} training blocks but trainer.batch_size={batch_size}. "
                             "Add data, or lower trainer.batch_size / data.block_size.")
        self.blocks, self.batch_size, self.seed = blocks, batch_size, seed
        self.epoch, self.offset = 0, 0
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self) -> torch.Tensor:
        if self._perm_epoch != self.epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.blocks), generator=g), self.epoch
        return self._perm

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self

    def __next__(self) -> torch.Tensor:
        if self.offset + self.batch_size > len(self.blocks):
            self.epoch, self.offset = self.epoch + 1, 0
        idx = self._permutation()[self.offset : self.offset + self.batch_size]
        self.offset += self.batch_size
        return self.blocks[idx]

    @property
    def batches_per_epoch(self) -> int:
        return len(self.blocks) // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
