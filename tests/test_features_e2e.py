"""End to end, one observable effect each: tokenizer.kind=bpe, tokenizer.path, trainer.grad_accum,
trainer.max_epochs, trainer.patience, freeze_encoder, `embed` on image runs, streaming with data=hf, and
CI=true turning a skip for a missing extra into a failure."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_TRANSFORMER, read_manifest, read_metrics
from safetensors.torch import load_file
from test_streaming import _corpus_file

from ptcli.checkpoint import load_state

SMOKE = ["debug=smoke", *TINY_TRANSFORMER]


def _weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def _train_losses(run: Path) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in read_metrics(run) if e["split"] == "train"]


# ------------------------------------------------------------------------------------------- tokenizers
@pytest.fixture(scope="module")
def bpe_run(ptcli, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("bpe") / "run"
    r = ptcli("pretrain", *SMOKE, "tokenizer.kind=bpe", "tokenizer.vocab_size=400", "trainer.max_steps=4",
              f"hydra.run.dir={run}")
    assert r.code == 0, r
    return run


def test_bpe_tokenizer_is_a_byte_level_bpe(bpe_run):
    from ptcli.tokenizer import load_tokenizer

    spec = json.loads((bpe_run / "tokenizer" / "tokenizer.json").read_text())
    assert spec["model"]["type"] == "BPE" and spec["pre_tokenizer"]["type"] == "ByteLevel", spec["model"]["type"]
    assert read_manifest(bpe_run)["data"]["vocab_size"] == len(spec["model"]["vocab"]) <= 400
    # Byte-level: any text is spelled with byte tokens, never [UNK] (WordPiece gives [UNK] for unseen characters).
    tok = load_tokenizer(bpe_run / "tokenizer")
    enc = tok.encode("naïve café ☃ 🙂")
    assert tok.token_to_id("[UNK]") not in enc.ids and len(enc.ids) > 6, enc.tokens


@pytest.fixture(scope="module")
def epochs_run(ptcli, bpe_run, tmp_path_factory) -> Path:
    """data=text on a small corpus, by epochs (max_steps=null), 2 micro-batches per step, the BPE run's tokenizer."""
    root = tmp_path_factory.mktemp("epochs")
    data = root / "corpus.txt"
    _corpus_file(data, n=300)
    run = root / "run"
    r = ptcli("pretrain", *SMOKE, "data=text", f"data.train={data}", "trainer.max_steps=null", "trainer.max_epochs=2",
              "trainer.grad_accum=2", "trainer.eval_every=1000", f"tokenizer.path={bpe_run / 'tokenizer'}",
              f"hydra.run.dir={run}")
    assert r.code == 0, r
    return run


def test_tokenizer_path_reuses_that_tokenizer(bpe_run, epochs_run):
    given = json.loads((bpe_run / "tokenizer" / "tokenizer.json").read_text())
    used = json.loads((epochs_run / "tokenizer" / "tokenizer.json").read_text())
    # A tokenizer trained on this corpus would be a WordPiece (the default kind) with the corpus' words.
    assert used == given
    assert read_manifest(epochs_run)["data"]["vocab_size"] == len(given["model"]["vocab"])


def test_max_epochs_runs_whole_epochs_of_micro_batches(epochs_run):
    m = read_manifest(epochs_run)
    blocks, batch = m["data"]["train_blocks"], 8  # debug=smoke: trainer.batch_size=8
    per_epoch = blocks // batch
    assert m["status"] == "completed" and per_epoch >= 2
    # 2 epochs of micro-batches, 2 micro-batches per optimizer step.
    assert m["step"] == 2 * per_epoch // 2, (m["step"], blocks)
    # The data position: exactly the end of the second epoch (epoch index 1), every micro-batch drawn once.
    assert load_state(epochs_run / "checkpoints" / "last")["batches"] == {"epoch": 1, "offset": per_epoch * batch}


# ------------------------------------------------------------------------------------------- fine-tuning
FT = ["debug=smoke", "trainer.log_every=1", "trainer.eval_every=3", "trainer.max_steps=6"]


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_grad_accum_matches_one_batch_of_the_same_size(ptcli, smoke_pretrain, tmp_path):
    """Classification loss is a mean over examples and the batches are a seeded permutation, so 2 micro-batches
    of 4 are the batch of 8: same losses, same weights up to float rounding (measured: 3e-8)."""
    whole, accum = tmp_path / "whole", tmp_path / "accum"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", *FT, "trainer.batch_size=8", f"hydra.run.dir={whole}")
    assert r.code == 0, r
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", *FT, "trainer.batch_size=4", "trainer.grad_accum=2",
              f"hydra.run.dir={accum}")
    assert r.code == 0, r
    a, b = _train_losses(whole), _train_losses(accum)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5, 6]
    assert [x for _, x in a] == pytest.approx([x for _, x in b], rel=1e-5)
    wa, wb = _weights(whole), _weights(accum)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_patience_stops_early_at_the_first_plateau(ptcli, smoke_pretrain, tmp_path):
    run, patience, max_steps = tmp_path / "run", 1, 60
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "debug=smoke", f"trainer.max_steps={max_steps}",
              "trainer.eval_every=2", f"trainer.patience={patience}", f"hydra.run.dir={run}")
    assert r.code == 0, r
    m = read_manifest(run)
    assert m["status"] == "completed" and m["step"] < max_steps, m["step"]
    assert f"early stopping at step {m['step']}: val/accuracy has not improved for {patience}" in r.stderr, r
    # It stopped at the first evaluation that ended `patience` evaluations in a row without a new best.
    evals = [(e["step"], e["accuracy"]) for e in read_metrics(run) if e["split"] == "val"]
    best, stale, stop = -1.0, 0, None
    for step, acc in evals:
        best, stale = (acc, 0) if acc > best else (best, stale + 1)
        if stale == patience:
            stop = step
            break
    assert stop == m["step"] == evals[-1][0], evals


@pytest.mark.slow  # several training runs (seconds of CPU)
def test_freeze_encoder_trains_the_head_only(ptcli, smoke_pretrain, tmp_path):
    frozen, start = tmp_path / "frozen", tmp_path / "start"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "freeze_encoder=true", *FT, f"hydra.run.dir={frozen}")
    assert r.code == 0, r
    # The same run with a learning rate too small to move anything: its head is the initial head.
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "freeze_encoder=true", *FT, "trainer.max_steps=1",
              "optim.lr=1e-30", "optim.head_lr=1e-30", f"hydra.run.dir={start}")
    assert r.code == 0, r
    pretrained, initial = _weights(smoke_pretrain, "best"), _weights(start)
    for name in ("best", "last"):
        tuned = _weights(frozen, name)
        encoder = [k for k in tuned if k.startswith("encoder.")]
        head = [k for k in tuned if not k.startswith("encoder.")]
        assert encoder and head
        assert all(torch.equal(tuned[k], pretrained[k]) for k in encoder)  # bitwise the pretrained encoder
        moved = max((tuned[k] - initial[k]).abs().max().item() for k in head)
        # Adam moves each weight about head_lr (1e-3) per step, warmed up; an untrained head moves ~1e-30. The best
        # checkpoint may be an early one, so the bound is one tenth of a step (measured: 1.0e-3 at the least).
        assert moved > 1e-4, (name, moved)


# ------------------------------------------------------------------------------------------- images
@pytest.fixture(scope="module")
def image_run(ptcli, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("img") / "run"
    r = ptcli("pretrain", "model=convnet", "objective=simclr", "data=digits", "debug=smoke", "model.width=8",
              "model.stages=2", f"hydra.run.dir={run}")
    assert r.code == 0, r
    return run


def test_embed_image_run(ptcli, image_run, tmp_path):
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = 300
    x = (digits.images[:n] * (255 / 16)).astype(np.uint8)  # 0..16 -> the 0..255 an .npz of uint8 holds
    y = digits.target[:n]
    x[7], y[7] = x[3], y[3]  # one repeated image
    data = tmp_path / "digits.npz"
    np.savez(data, x=x)
    out = tmp_path / "emb.npy"
    r = ptcli("embed", str(image_run), "--input", str(data), "--out", str(out))
    assert r.code == 0, r
    e = np.load(out)
    assert e.shape == (n, 16) and e.dtype == np.float32 and np.isfinite(e).all()  # width 8, doubled by stage 2
    assert np.array_equal(e[3], e[7]) and not np.array_equal(e[3], e[4])
    # The rows are the images' features in order: each image's nearest other row is mostly the same digit.
    unit = e / np.linalg.norm(e, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    sim[3, 7] = sim[7, 3] = -np.inf  # the duplicate would be a free hit
    nn_acc = float((y[sim.argmax(1)] == y).mean())
    assert nn_acc > 0.3, nn_acc  # chance (or rows out of order): 0.1; measured 0.43


# ------------------------------------------------------------------------------------------- data=hf streaming
@pytest.mark.parametrize("layout", ["save_to_disk", "parquet_dir"])
def test_streaming_from_a_local_hf_dataset(ptcli, tmp_path, layout):
    import datasets

    lines = _corpus_file(tmp_path / "corpus.txt")
    ds = datasets.Dataset.from_dict({"body": lines})  # not `text`: data.text_column must be honoured
    path = tmp_path / "ds"
    if layout == "save_to_disk":
        ds.save_to_disk(str(path))
    else:
        path.mkdir()
        ds.to_parquet(str(path / "train.parquet"))
    run = tmp_path / "run"
    r = ptcli("pretrain", *SMOKE, "data=hf", f"data.name={path}", "data.text_column=body", "data.streaming=true",
              "data.block_size=32", "data.shuffle_buffer=8", "trainer.max_steps=30", "trainer.log_every=2",
              "trainer.eval_every=15", f"hydra.run.dir={run}")
    assert r.code == 0, r
    m = read_manifest(run)
    assert m["status"] == "completed" and m["step"] == 30
    assert m["data"]["train_blocks"] is None and m["data"]["val_blocks"] > 0  # streamed, never materialized
    vocab = json.loads((run / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"river", "quickly", "jumps"} <= set(vocab)  # trained on this dataset's text
    # Learned from it: an untrained MLM's loss is ln(vocab) (5.0 here); measured 4.0 after 30 steps.
    chance, first = math.log(len(vocab)), _train_losses(run)[0][1]
    assert m["metrics"]["val/loss"] < chance - 0.5 and m["metrics"]["train/loss"] < first - 0.5, (chance, m)


# ------------------------------------------------------------------------------------------- CI=true
@pytest.mark.slow  # a real process
def test_ci_turns_a_skip_for_a_missing_extra_into_a_failure(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text("import pytest\nfrom conftest import require\n\n"
                     "def test_require():\n    require('ptcli_no_such_extra')\n\n"
                     "def test_importorskip():\n    pytest.importorskip('ptcli_no_such_extra')\n\n"
                     "def test_other_skip():\n    pytest.skip('not about an extra')\n")
    tests = Path(__file__).parent

    def outcomes(ci: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
        env["PYTHONPATH"] = os.pathsep.join([str(tests), env.get("PYTHONPATH", "")])
        proc = subprocess.run([sys.executable, "-m", "pytest", str(probe), "-p", "conftest", "-q", "-rA",
                               "-p", "no:cacheprovider", "--rootdir", str(tmp_path)],
                              capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        return proc.stdout

    strict = outcomes("true")
    assert "2 failed, 1 skipped" in strict, strict
    assert "FAILED" in strict and "ptcli_no_such_extra" in strict
    assert "1 skipped" in strict and "not about an extra" in strict
    relaxed = outcomes(None)
    assert "3 skipped" in relaxed, relaxed
