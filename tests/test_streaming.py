"""data.streaming=true: streamed, sharded, resumable pre-training corpora (ptcli/data/streaming.py)."""

from __future__ import annotations

import io
import json
import math
import random
import signal

import pytest
import torch
from conftest import TINY_TRANSFORMER, read_manifest, read_metrics
from omegaconf import OmegaConf
from safetensors.torch import load_file
from test_resume import _spawn, _wait_for_step

from ptcli.data.sources import TextFiles
from ptcli.data.streaming import StreamingBlocks, StreamingCorpus
from ptcli.tokenizer import build_tokenizer, special_ids

WORDS = "the a cat dog runs jumps over under quickly slowly red blue green house tree river sky".split()


def _corpus_file(path, n=400, seed=0):
    rng = random.Random(seed)
    lines = [f"doc{i} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30))) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return lines


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cache_dir):
    path = tmp_path_factory.mktemp("stream") / "corpus.txt"
    lines = _corpus_file(path)
    source = TextFiles(train=str(path), streaming=True)
    # Small reads and buffer: a few hundred lines span many shuffle chunks, with tokens carried across them.
    corpus = StreamingCorpus(source, block_size=32, seed=0, shuffle_buffer=16, val_blocks=4, read_docs=8)
    cfg = OmegaConf.create({"path": None, "kind": "wordpiece", "vocab_size": 300, "lowercase": True,
                            "min_frequency": 1, "train_examples": None})
    tok = build_tokenizer(cfg, corpus.tokenizer_sample())
    val = corpus.validation_blocks(tok)
    return corpus, tok, val, lines


def _take(batches, n):
    return [next(batches) for _ in range(n)]


def _docs(corpus, shard, num_shards):
    return [t for b in corpus.documents(shard, num_shards).iter(batch_size=100) for t in b["text"]]


def test_blocks_have_the_shape_and_start_with_cls(corpus):
    corpus, tok, val, _ = corpus
    ids = special_ids(tok)
    batch = next(StreamingBlocks(corpus, tok, batch_size=4, rank=0, world=1))
    assert batch.dtype == torch.long and batch.shape == (4, 32)
    assert (batch[:, 0] == ids["cls"]).all() and not (batch[:, 1:] == ids["cls"]).any()
    assert not (batch == ids["pad"]).any()
    assert 1 <= len(val) <= 4 and val.shape[1] == 32 and (val[:, 0] == ids["cls"]).all()


def test_held_out_validation_documents_never_reach_training(corpus):
    corpus, _, _, lines = corpus
    every, last = corpus.holdout_every, corpus.holdout_last
    assert every == 20 and 0 <= last < len(lines)  # every 20th document until 4 blocks were full
    train = _docs(corpus, 0, 1)
    held = {lines[i] for i in range(0, int(last) + 1, every)}
    assert held and not held & set(train)
    assert set(train) | held == set(lines)


def test_ranks_read_disjoint_shards_that_cover_the_corpus(corpus):
    corpus, tok, _, _ = corpus
    everything = _docs(corpus, 0, 1)
    r0, r1 = _docs(corpus, 0, 2), _docs(corpus, 1, 2)
    assert r0 and r1 and not set(r0) & set(r1)
    assert sorted(r0 + r1) == sorted(everything)
    # Blocks carry exactly the shard's tokens: without shuffling, rank 1's first blocks are its documents'
    # tokens in order, each document ending in [SEP], cut into [CLS] + 31-token pieces.
    plain = StreamingCorpus(corpus.source, block_size=32, seed=0, shuffle_buffer=1, val_blocks=4)
    blocks = torch.cat(_take(StreamingBlocks(plain, tok, batch_size=2, rank=1, world=2), 3))
    sep = special_ids(tok)["sep"]
    stream = [i for d in _docs(plain, 1, 2) for i in (*tok.encode(d, add_special_tokens=False).ids, sep)]
    assert blocks[:, 1:].reshape(-1).tolist() == stream[: 6 * 31]


def test_resume_continues_with_exactly_the_same_batches(corpus):
    corpus, tok, _, _ = corpus
    for rank, workers in ((1, 0), (0, 2)):  # in-process, and two data-loader worker processes
        original = StreamingBlocks(corpus, tok, batch_size=8, rank=rank, world=2, num_workers=workers)
        _take(original, 23)  # past the end of an epoch of this shard, mid-chunk
        buf = io.BytesIO()
        torch.save(original.state_dict(), buf)  # as in a checkpoint (loaded weights_only)
        state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
        expected = _take(original, 12)
        resumed = StreamingBlocks(corpus, tok, batch_size=8, rank=rank, world=2, num_workers=workers)
        resumed.load_state_dict(state)
        got = _take(resumed, 12)
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True)), (rank, workers)
        positions = state["ranks"][str(rank)]["positions"]
        assert len(positions) == max(1, workers) and all(p["epoch"] == 1 and p["chunk"] >= 1 for p in positions)
        restarted = StreamingBlocks(corpus, tok, batch_size=8, rank=rank, world=2, num_workers=workers)
        fresh = _take(restarted, 12)
        assert not all(torch.equal(a, b) for a, b in zip(expected, fresh, strict=True))  # the position mattered
        for b in (original, resumed, restarted):
            b.close()


@pytest.mark.slow  # SIGKILL to a real process
def test_streaming_pretrain_completes_and_resumes_exactly(ptcli, tmp_path):
    data = tmp_path / "corpus.txt"
    _corpus_file(data)
    args = ["debug=smoke", *TINY_TRANSFORMER, "data=text", f"data.train={data}", "data.streaming=true",
            "data.block_size=32", "data.shuffle_buffer=8", "trainer.max_steps=30", "trainer.log_every=2",
            "trainer.eval_every=15", "trainer.checkpoint_every=1"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    r = ptcli("pretrain", *args, f"hydra.run.dir={full}")
    assert r.code == 0, r
    m = read_manifest(full)
    assert m["status"] == "completed" and m["step"] == 30 and m["data"]["train_blocks"] is None
    assert (full / "checkpoints" / "last" / "COMPLETE").is_file() and (full / "tokenizer" / "tokenizer.json").is_file()
    # An untrained MLM predicts uniformly: loss ln(vocab) (5.04 here). Measured: train 5.04 -> 4.02 over 30
    # steps, val 4.04; a model that did not learn cannot get 0.5 below either bound.
    chance = math.log(len(json.loads((full / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]))
    first = next(e["loss"] for e in read_metrics(full) if e["split"] == "train")
    assert m["metrics"]["val/loss"] < chance - 0.5 and m["metrics"]["train/loss"] < first - 0.5, (chance, first, m)
    proc = _spawn(["pretrain", *args, f"hydra.run.dir={killed}"], {"PTCLI_STEP_DELAY": "0.1"})
    _wait_for_step(killed, 12, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = ptcli("pretrain", *args, f"resume={killed}")
    assert r.code == 0, r
    # It did stop mid-run. Step 12 is logged before its checkpoint is written, so the kill may land between
    # the two: the last checkpoint is then step 11's (written before step 12 began).
    assert 11 <= read_manifest(killed)["resumed"][0]["step"] < 30
    a = load_file(str(full / "checkpoints" / "last" / "model.safetensors"))
    b = load_file(str(killed / "checkpoints" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # same batches after the resume: identical weights
    train = lambda run: [(e["step"], e["loss"]) for e in read_metrics(run) if e["split"] == "train"]  # noqa: E731
    assert train(full) == train(killed)
    # evaluate scores a streaming run on the same bounded validation blocks it was scored on in training
    r = ptcli("evaluate", str(full), "--json")
    assert r.code == 0, r
    assert json.loads(r.stdout)["val/loss"] == pytest.approx(m["metrics"]["best/val/loss"], abs=1e-4)


@pytest.mark.slow  # ~2 s of training runs: the inner loop keeps the smaller ones
def test_streaming_needs_a_streamable_source_and_max_steps(ptcli, tmp_path):
    r = ptcli("pretrain", "debug=smoke", "data=pydocs", "data.streaming=true", f"hydra.run.dir={tmp_path}/a")
    assert r.code == 2 and "data.streaming" in r.stderr and "data=text" in r.stderr, r
    r = ptcli("finetune", "debug=smoke", "data=digits", "model=convnet", "data.streaming=true",
              f"hydra.run.dir={tmp_path}/b")
    assert r.code == 2 and "data.streaming" in r.stderr, r
    data = tmp_path / "c.txt"
    _corpus_file(data, n=50)
    r = ptcli("pretrain", "debug=smoke", "data=text", f"data.train={data}", "data.streaming=true",
              "trainer.max_steps=null", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}/c")
    assert r.code == 2 and "trainer.max_steps" in r.stderr and "data.streaming" in r.stderr, r
