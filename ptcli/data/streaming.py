"""Streaming corpora (``data.streaming=true``): read -> tokenize -> pack on the fly; memory stays flat.

For ``ptcli pretrain`` with ``data=text`` or ``data=hf``. Nothing is materialized but a bounded tokenizer
sample, a bounded set of validation blocks, and one shuffle buffer per data-loader worker.

Shards. Each rank reads only its own shard of the training documents, and each data-loader worker
(``data.num_workers``) a sub-shard of that: shard ``rank * W + worker`` of ``world * W`` (``W`` =
max(1, num_workers)), cut by ``datasets.distributed.split_dataset_by_node`` (whole files when their
number divides evenly, otherwise every n-th document). A rank's batches come from its workers in turn,
so each batch holds ``trainer.batch_size // world`` rows of that rank only (``per_rank = True``).

Packing. A shard's documents are read in groups of ``READ_DOCS``, tokenized, concatenated (each
document ending in [SEP]) and cut into ``[CLS] + block_size-1`` token blocks: the format of
``ptcli.data.text.pack_blocks``; the remainder carries over to the next documents, so only the last
partial block of each pass over a shard is dropped.

Shuffling. Blocks are shuffled within chunks of ``data.shuffle_buffer`` blocks (rounded up to whole
groups of ``READ_DOCS`` documents; 1 = no shuffling), with a seed drawn from
(seed, epoch, shard, chunk): a local, seeded buffer shuffle, so a block never moves further than one
buffer and a corpus sorted by topic stays roughly sorted. Each pass over a shard (epoch) reshuffles.

Position. Per shard: the epoch, the ``datasets`` stream state at the start of the current chunk (its
``state_dict()``), the tokens carried into that chunk, and the blocks already taken from it. A resumed
run re-reads that one chunk, reshuffles it with the same seed and skips the taken blocks, so it sees
exactly the batches an uninterrupted run would have (with the same world size and ``data.num_workers``).

Validation. At most ``data.val_blocks`` blocks, materialized: from the source's validation split when
it has one, otherwise held out from train: every round(1 / data.val_fraction)-th document from the
start, until there are enough blocks; training skips exactly those documents.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ptcli.errors import UsageError
from ptcli.tokenizer import special_ids

TOKENIZER_DOCS = 100_000  # documents the tokenizer trains on when tokenizer.train_examples is null
TOKENIZER_CHARS = 200_000_000  # and at most this much text
READ_DOCS = 256  # documents read and tokenized at a time
STATE_VERSION = 1


class Packer:
    """Token ids -> ``[CLS] + body`` blocks, the remainder carried over (``pack_blocks``'s format)."""

    def __init__(self, tok: Any, block_size: int) -> None:
        if block_size < 8:
            raise UsageError(f"data.block_size must be at least 8, got {block_size}")
        ids = special_ids(tok)
        self.tok, self.cls, self.sep, self.body = tok, ids["cls"], ids["sep"], block_size - 1

    def encode(self, texts: list[Any]) -> np.ndarray:
        flat: list[int] = []
        for enc in self.tok.encode_batch([t if isinstance(t, str) else "" for t in texts], add_special_tokens=False):
            flat.extend(enc.ids)
            flat.append(self.sep)
        return np.asarray(flat, dtype=np.int64)

    def cut(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(blocks [n, block_size], remainder)``."""
        n = len(ids) // self.body
        blocks = np.empty((n, self.body + 1), dtype=np.int64)
        blocks[:, 0] = self.cls
        blocks[:, 1:] = ids[: n * self.body].reshape(n, self.body)
        return blocks, ids[n * self.body :]


class StreamingCorpus:
    """One run's streamed corpus: shards of training documents, validation blocks, the tokenizer sample."""

    def __init__(self, source: Any, block_size: int, seed: int, shuffle_buffer: int = 10_000,
                 val_blocks: int = 512, val_fraction: float = 0.05, max_docs: int | None = None,
                 read_docs: int = READ_DOCS) -> None:
        for key, value in (("data.shuffle_buffer", shuffle_buffer), ("data.val_blocks", val_blocks)):
            if int(value) < 1:
                raise UsageError(f"{key} must be at least 1, got {value}")
        if max_docs is not None and int(max_docs) <= 0:
            raise UsageError(f"data.max_train_examples must be positive, got {max_docs}")
        self.source, self.block_size, self.seed = source, int(block_size), int(seed)
        self.shuffle_buffer, self.val_blocks, self.max_docs = int(shuffle_buffer), int(val_blocks), max_docs
        self.read_docs = int(read_docs)  # documents read and tokenized at a time
        source.stream("train", check=True)  # bad files, missing columns: exit 2 now, not mid-run
        self.has_validation = source.stream("validation", check=True) is not None
        if not self.has_validation and not 0 < val_fraction < 1:
            raise UsageError(f"data.val_fraction must be in (0, 1), got {val_fraction}")
        self.holdout_every = None if self.has_validation else max(2, round(1 / val_fraction))
        self.holdout_last: float = math.inf  # index of the last held-out document (set by validation_blocks)

    # -- documents ----------------------------------------------------------------------------------
    def documents(self, shard: int = 0, num_shards: int = 1) -> Any:
        """Shard ``shard`` of ``num_shards`` of the training documents (a ``datasets.IterableDataset``)."""
        from datasets.distributed import split_dataset_by_node

        ds = self.source.stream("train")
        every, last = self.holdout_every, self.holdout_last
        if every:
            ds = ds.filter(lambda batch, idx: [i % every != 0 or i > last for i in idx], with_indices=True,
                           batched=True, batch_size=READ_DOCS)
        if self.max_docs is not None:
            ds = ds.take(int(self.max_docs))
        if num_shards > 1:
            ds = split_dataset_by_node(ds, rank=shard, world_size=num_shards)
        return ds

    def tokenizer_sample(self, limit: int | None = None) -> Any:
        """The first ``limit`` (default 100,000) training documents as a ``datasets.Dataset`` whose
        fingerprint is a hash of their text, so the trained tokenizer is cached across runs."""
        import datasets

        limit = int(limit or TOKENIZER_DOCS)
        texts: list[str] = []
        chars = 0
        digest = hashlib.sha256(f"stream-sample-v1|{self.source.describe()}".encode())
        for batch in self.documents().take(limit).iter(batch_size=1000):
            for t in batch["text"]:
                t = t if isinstance(t, str) else ""
                texts.append(t)
                digest.update(t.encode() + b"\0")
                chars += len(t)
            if chars >= TOKENIZER_CHARS:
                break
        sample = datasets.Dataset.from_dict({"text": texts})
        sample._fingerprint = digest.hexdigest()[:32]
        return sample

    def validation_blocks(self, tok: Any) -> torch.Tensor:
        """At most ``val_blocks`` blocks ``[n, block_size]``; without a validation split this also fixes
        which training documents are held out (call it before ``batches``)."""
        if self.has_validation:
            return self.split_blocks(tok, "validation")
        every = self.holdout_every
        ds = self.source.stream("train").filter(lambda batch, idx: [i % every == 0 for i in idx],
                                                with_indices=True, batched=True, batch_size=READ_DOCS)
        blocks, docs = self._first_blocks(ds, tok, f"the held-out validation documents (every {every}th of train; "
                                                   "data.val_fraction)")
        self.holdout_last = (docs - 1) * every
        return blocks

    def split_blocks(self, tok: Any, split: str) -> torch.Tensor:
        """The first ``val_blocks`` blocks of the source's ``split`` (it must have one)."""
        return self._first_blocks(self.source.stream(split), tok, f"the {split} split")[0]

    def _first_blocks(self, ds: Any, tok: Any, where: str) -> tuple[torch.Tensor, int]:
        """(up to ``val_blocks`` blocks, documents read for them)."""
        packer = Packer(tok, self.block_size)
        target = self.val_blocks * packer.body
        pieces: list[list[int]] = []
        total = docs = 0
        for batch in ds.iter(batch_size=64):
            for enc in tok.encode_batch([t if isinstance(t, str) else "" for t in batch["text"]],
                                        add_special_tokens=False):
                pieces.append([*enc.ids, packer.sep])
                total += len(enc.ids) + 1
                docs += 1
                if total >= target:
                    break
            if total >= target:
                break
        blocks, _ = packer.cut(np.asarray([i for p in pieces for i in p], dtype=np.int64))
        if len(blocks) == 0:
            raise UsageError(f"{where} is too short for one block of data.block_size={self.block_size} tokens. "
                             "Add text, pass data.validation=FILE, or lower data.block_size.")
        return torch.from_numpy(blocks[: self.val_blocks]), docs


def shard_batches(corpus: StreamingCorpus, packer: Packer, batch_size: int, shard: int, num_shards: int,
                  position: dict[str, Any] | None = None) -> Iterator[tuple[torch.Tensor, dict[str, Any]]]:
    """Endless ``(batch [batch_size, block_size], position after it)`` of one shard, from ``position``."""
    pos = position or start_of(0)
    pending: list[np.ndarray] = []
    while True:
        epoch, chunk, taken = int(pos["epoch"]), int(pos["chunk"]), int(pos["taken"])
        upstream, carry = pos["upstream"], np.asarray(pos["carry"], dtype=np.int64)
        from_start, produced = upstream is None and chunk == 0 and taken == 0, False
        ds = corpus.documents(shard, num_shards)
        if upstream is not None:
            ds.load_state_dict(upstream)
        docs = ds.iter(batch_size=corpus.read_docs)
        end = False
        while not end:
            chunk_carry = carry.tolist()
            parts, n = [], 0
            while n < corpus.shuffle_buffer:  # one chunk: shuffle_buffer blocks, or up to the end of the shard
                batch = next(docs, None)
                if batch is None:
                    end = True
                    break
                blocks, carry = packer.cut(np.concatenate([carry, packer.encode(batch["text"])]))
                parts.append(blocks)
                n += len(blocks)
            after = start_of(epoch + 1) if end else {"epoch": epoch, "upstream": ds.state_dict(),
                                                     "carry": carry.tolist(), "chunk": chunk + 1, "taken": 0}
            if n:
                produced = True
                blocks = np.concatenate(parts)
                order = (np.random.default_rng([corpus.seed, epoch, shard, chunk]).permutation(n)
                         if corpus.shuffle_buffer > 1 else np.arange(n))
                for i in range(taken, n):
                    pending.append(blocks[order[i]])
                    if len(pending) == batch_size:
                        here = after if i + 1 == n else {"epoch": epoch, "upstream": upstream, "carry": chunk_carry,
                                                         "chunk": chunk, "taken": i + 1}
                        yield torch.from_numpy(np.stack(pending)), here
                        pending = []
            upstream, chunk, taken = after["upstream"], chunk + 1, 0
        if from_start and not produced:
            raise UsageError(f"training shard {shard} of {num_shards} is too short for one block of "
                             f"data.block_size={corpus.block_size} tokens. Add text, lower data.block_size, or "
                             "use fewer processes / data.num_workers.")
        pos = start_of(epoch + 1)


def start_of(epoch: int) -> dict[str, Any]:
    return {"epoch": epoch, "upstream": None, "carry": [], "chunk": 0, "taken": 0}


class StreamingBlocks:
    """Endless batches ``[batch_size, block_size]`` of this rank's shard, for ``Trainer.fit``.

    ``batch_size`` is this rank's share of the global batch (``per_rank``: the step function does not
    slice it again). ``state_dict()`` holds every rank's position (gathered under torchrun), so a resumed
    run continues exactly where it stopped.
    """

    per_rank = True
    batches_per_epoch = 0  # unknown for a stream: streaming runs need trainer.max_steps

    def __init__(self, corpus: StreamingCorpus, tok: Any, batch_size: int, rank: int | None = None,
                 world: int | None = None, num_workers: int = 0) -> None:
        if rank is None or world is None:
            from ptcli.distributed import rank_world

            rank, world = rank_world()
        if batch_size < 1:
            raise UsageError(f"trainer.batch_size must be positive, got {batch_size}")
        if num_workers < 0:
            raise UsageError(f"data.num_workers must be 0 or more, got {num_workers}")
        if corpus.holdout_every and math.isinf(corpus.holdout_last):
            corpus.validation_blocks(tok)  # fixes which training documents are held out
        self.corpus, self.packer, self.batch_size = corpus, Packer(tok, corpus.block_size), int(batch_size)
        self.rank, self.world, self.num_workers = int(rank), int(world), int(num_workers)
        self.shards = max(1, self.num_workers)  # shards of this rank: one per worker
        self.positions: list[dict[str, Any] | None] = [None] * self.shards
        self.next_shard = 0  # the worker whose batch comes next
        self._it: Iterator[tuple[torch.Tensor, int, dict[str, Any]]] | None = None

    def shard(self, worker: int) -> tuple[int, int]:
        """(index, count) of the shard read by ``worker`` of this rank."""
        return self.rank * self.shards + worker, self.world * self.shards

    def __iter__(self) -> StreamingBlocks:
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            self._it = self._stream()
        batch, worker, position = next(self._it)
        self.positions[worker], self.next_shard = position, (worker + 1) % self.shards
        return batch

    def _stream(self) -> Iterator[tuple[torch.Tensor, int, dict[str, Any]]]:
        if self.num_workers == 0:
            for batch, position in shard_batches(self.corpus, self.packer, self.batch_size, *self.shard(0),
                                                 self.positions[0]):
                yield batch, 0, position
            return
        from torch.utils.data import DataLoader

        # Worker j of the loader serves shard (j + next_shard) % W: the loader asks its workers in turn
        # from worker 0, so a resumed run continues with the shard whose turn it was.
        workers = _Workers(self, list(self.positions), self.next_shard)
        yield from DataLoader(workers, batch_size=None, num_workers=self.num_workers, prefetch_factor=2)

    def close(self) -> None:
        if self._it is not None:
            self._it.close()  # type: ignore[attr-defined]
            self._it = None

    def state_dict(self) -> dict[str, Any]:
        """Every rank's position (a collective under torchrun, as the trainer's own state is)."""
        from ptcli import distributed as dist

        local = {"positions": list(self.positions), "next_shard": self.next_shard}
        if self.world > 1 and dist.rank_world()[1] == self.world:
            ranks = dict(enumerate(dist.gather_objects(local)))
        else:
            ranks = {self.rank: local}
        return {"streaming": STATE_VERSION, "world": self.world, "num_workers": self.num_workers,
                "ranks": {str(r): s for r, s in ranks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "streaming" not in state:
            raise UsageError("the checkpoint was written by a run without data.streaming=true; resume it the "
                             "same way (drop data.streaming=true).")
        if int(state["world"]) != self.world or int(state["num_workers"]) != self.num_workers:
            raise UsageError(f"the checkpoint's data stream was read by {state['world']} process(es) with "
                             f"data.num_workers={state['num_workers']}; resume with the same (now {self.world}, "
                             f"{self.num_workers}), so that each shard continues where it stopped.")
        local = state["ranks"].get(str(self.rank))
        if local is None:
            raise UsageError(f"the checkpoint holds no data-stream position for rank {self.rank}.")
        self.close()
        self.positions, self.next_shard = list(local["positions"]), int(local["next_shard"])


class _Workers(torch.utils.data.IterableDataset):
    """The shards of one rank, one per data-loader worker process."""

    def __init__(self, blocks: StreamingBlocks, positions: list[dict[str, Any] | None], rotation: int) -> None:
        self.corpus, self.packer, self.batch_size = blocks.corpus, blocks.packer, blocks.batch_size
        self.rank, self.world, self.shards = blocks.rank, blocks.world, blocks.shards
        self.positions, self.rotation = positions, rotation

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, dict[str, Any]]]:
        # A forked worker must not use the tokenizers thread pool it inherited: that deadlocks.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        info = torch.utils.data.get_worker_info()
        worker = ((info.id if info else 0) + self.rotation) % self.shards
        for batch, position in shard_batches(self.corpus, self.packer, self.batch_size,
                                             self.rank * self.shards + worker, self.world * self.shards,
                                             self.positions[worker]):
            yield batch, worker, position


def open_streaming(cfg: Any, source: Any) -> StreamingCorpus:
    """``data.streaming=true`` for ``ptcli pretrain``: check the config and open the corpus of ``source`` (the
    data source ``cfg.data`` builds)."""
    from ptcli.distributed import rank_world

    if not getattr(source, "streamable", False):
        source.stream("train")  # raises a UsageError naming data.streaming
    if cfg.trainer.max_steps is None:
        raise UsageError("data.streaming=true: a stream's length is unknown, so trainer.max_epochs cannot set the "
                         "run length; set trainer.max_steps=N.")
    world = rank_world()[1]
    if cfg.trainer.batch_size % world:
        raise UsageError(f"trainer.batch_size={cfg.trainer.batch_size} is the global batch and must divide evenly "
                         f"over the {world} processes.")
    data = cfg.data
    return StreamingCorpus(source, int(data.block_size), int(cfg.seed), shuffle_buffer=int(data.shuffle_buffer),
                           val_blocks=int(data.val_blocks), val_fraction=float(data.val_fraction),
                           max_docs=data.max_train_examples)


def streaming_batches(cfg: Any, corpus: StreamingCorpus, tok: Any) -> StreamingBlocks:
    from ptcli.distributed import rank_world

    rank, world = rank_world()
    return StreamingBlocks(corpus, tok, int(cfg.trainer.batch_size) // world, rank, world,
                           num_workers=int(cfg.data.num_workers))


def streaming_eval_blocks(source: Any, data_cfg: Any, seed: int, tok: Any,
                          block_size: int) -> tuple[str, torch.Tensor]:
    """``ptcli evaluate`` of a streaming run: (split, at most ``data.val_blocks`` blocks) of its test split
    when ``source`` (what ``data_cfg`` builds) has one, else the validation blocks the run itself was scored on."""
    if not getattr(source, "streamable", False):
        source.stream("train")  # raises a UsageError naming data.streaming
    corpus = StreamingCorpus(source, block_size, seed, val_blocks=int(data_cfg.val_blocks),
                             val_fraction=float(data_cfg.val_fraction))
    if source.stream("test") is not None:
        return "test", corpus.split_blocks(tok, "test")
    return "validation", corpus.validation_blocks(tok)
