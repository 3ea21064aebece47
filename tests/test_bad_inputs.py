"""The bad-input table: each case exits 2 with one paragraph naming the culprit, and no traceback."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import read_manifest


def _csv(path, rows):
    path.write_text("\n".join(rows) + "\n")
    return path


def _assert_usage_error(r, *needles, run_dir=None):
    assert r.code == 2, r
    assert "Traceback" not in r.stderr, r
    assert r.stderr.count("ptcli: error:") == 1, r
    for needle in needles:
        assert needle in r.stderr, (needle, r)
    if run_dir is not None and (run_dir / "run.json").exists():
        assert read_manifest(run_dir)["status"] == "failed"
        assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize("case", [
    "empty_csv", "malformed_jsonl", "too_short", "bad_extension", "heads_dim", "mask_rate", "negative_steps",
    "zero_batch", "missing_train_key", "strategy", "init_from",
])
def test_bad_pretrain_inputs(ptcli, tmp_path, case):
    run = tmp_path / "run"
    base = ["pretrain", "debug=smoke", f"hydra.run.dir={run}"]
    if case == "empty_csv":
        f = _csv(tmp_path / "empty.csv", ["text"])
        r = ptcli(*base, "data=text", f"data.train={f}")
        _assert_usage_error(r, "empty.csv", run_dir=run)
    elif case == "malformed_jsonl":
        f = _csv(tmp_path / "bad.jsonl", ['{"text": "fine"}', '{"text": broken'])
        r = ptcli(*base, "data=text", f"data.train={f}")
        _assert_usage_error(r, "bad.jsonl", "data.train", run_dir=run)
    elif case == "too_short":
        f = _csv(tmp_path / "short.txt", ["hello world"] * 3)
        r = ptcli(*base, "data=text", f"data.train={f}", "data.val_fraction=0.34")
        _assert_usage_error(r, "data.block_size", run_dir=run)
    elif case == "bad_extension":
        f = _csv(tmp_path / "data.xlsx", ["x"])
        r = ptcli(*base, "data=text", f"data.train={f}")
        _assert_usage_error(r, "data.xlsx", ".csv", run_dir=run)
    elif case == "heads_dim":
        r = ptcli(*base, "model.dim=30", "model.heads=4")
        _assert_usage_error(r, "model.heads=4", "model.dim=30", run_dir=run)
    elif case == "mask_rate":
        r = ptcli(*base, "objective.mask_rate=1.5")
        _assert_usage_error(r, "objective.mask_rate", "(0, 1)", run_dir=run)
    elif case == "negative_steps":
        r = ptcli(*base, "trainer.max_steps=-5")
        _assert_usage_error(r, "trainer.max_steps", run_dir=run)
    elif case == "zero_batch":
        r = ptcli(*base, "trainer.batch_size=0")
        _assert_usage_error(r, "trainer.batch_size", run_dir=run)
    elif case == "init_from":
        r = ptcli(*base, "init_from=hf:bert-base-uncased")  # offline: a hub name cannot load
        _assert_usage_error(r, "hf:bert-base-uncased", "Offline", run_dir=run)
    elif case == "strategy":
        r = ptcli(*base, "trainer.strategy=ddp")
        _assert_usage_error(r, "trainer.strategy=ddp", "torchrun", run_dir=run)
    elif case == "missing_train_key":
        r = ptcli(*base, "data=text")
        _assert_usage_error(r, "data.train", run_dir=run)


def test_corrupted_weights_are_named(ptcli, smoke_pretrain, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(smoke_pretrain, broken)
    for name in ("best", "last"):
        f = broken / "checkpoints" / name / "model.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    r = ptcli("evaluate", str(broken), f"hydra.run.dir={tmp_path / 'e'}")
    _assert_usage_error(r, "model.safetensors", "corrupted")
    r = ptcli("finetune", f"pretrained={broken}", "debug=smoke", f"hydra.run.dir={tmp_path / 'f'}")
    _assert_usage_error(r, "model.safetensors")


def test_tokenizer_vocab_mismatch(ptcli, smoke_pretrain, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(smoke_pretrain, other)
    tok = json.loads((other / "tokenizer" / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for i in range(50):  # a tokenizer with more tokens than the checkpoint's embedding
        vocab[f"zz{i}"] = len(vocab)
    (other / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok))
    r = ptcli("evaluate", str(other), f"hydra.run.dir={tmp_path / 'e'}")
    _assert_usage_error(r, "do not fit the model")


def test_pretrained_of_another_modality(ptcli, smoke_pretrain, tmp_path):
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "data=digits", "debug=smoke",
              f"hydra.run.dir={tmp_path / 'f'}")
    _assert_usage_error(r, "data=digits")


@pytest.mark.slow  # ~2 s of training runs: the inner loop keeps the smaller ones
def test_pretrained_is_a_finetune_run(ptcli, smoke_pretrain, tmp_path):
    ft = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "debug=smoke", "trainer.max_steps=2",
              "trainer.eval_every=2", f"hydra.run.dir={ft}")
    assert r.code == 0, r
    r = ptcli("finetune", f"pretrained={ft}", "debug=smoke", f"hydra.run.dir={tmp_path / 'g'}")
    _assert_usage_error(r, "'finetune' run", "pretrain run directory")


def test_reusing_a_run_directory_is_refused(ptcli, smoke_pretrain):
    before = (smoke_pretrain / "run.json").read_text()
    r = ptcli("pretrain", "debug=smoke", f"hydra.run.dir={smoke_pretrain}")
    _assert_usage_error(r, "already holds a run", "resume=")
    assert (smoke_pretrain / "run.json").read_text() == before
