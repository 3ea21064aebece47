"""Fine-tuning from a pretrain run or random init, label budgets, evaluation, safe loading."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import read_manifest
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def smoke_finetune(ptcli, smoke_pretrain, tmp_path_factory):
    run = tmp_path_factory.mktemp("ft") / "run"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "debug=smoke", "data.labels_per_class=4",
              f"hydra.run.dir={run}")
    assert r.code == 0, r
    return run


def test_finetune_from_pretrained(smoke_finetune, smoke_pretrain):
    run = smoke_finetune
    m = read_manifest(run)
    assert m["status"] == "completed"
    assert {"test/accuracy", "test/macro_f1", "val/accuracy"} <= set(m["metrics"])
    names = json.loads((run / "labels.json").read_text())["names"]
    sub = json.loads((run / "subsample.json").read_text())
    assert len(sub["train_indices"]) == 4 * len(names)
    assert m["data"]["train_examples"] == 4 * len(names)
    # architecture and tokenizer come from the pretrain run
    assert "dim: 32" in (run / "config.yaml").read_text()
    tok = "tokenizer/tokenizer.json"
    assert (run / tok).read_text() == (smoke_pretrain / tok).read_text()


def test_init_random_uses_fresh_weights(ptcli, smoke_pretrain, tmp_path):
    run = tmp_path / "random"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "init=random", "debug=smoke", "trainer.max_steps=1",
              "trainer.eval_every=1", "data.labels_per_class=2", f"hydra.run.dir={run}")
    assert r.code == 0, r
    pre = load_file(str(smoke_pretrain / "checkpoints" / "best" / "model.safetensors"))["encoder.tok_emb.weight"]
    ft = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))["encoder.tok_emb.weight"]
    assert pre.shape == ft.shape and not torch.allclose(pre, ft, atol=1e-2)


def test_conflicting_model_override_is_refused(ptcli, smoke_pretrain, tmp_path):
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "model.dim=64", "debug=smoke",
              f"hydra.run.dir={tmp_path / 'r'}")
    assert r.code == 2, r
    assert "model.dim" in r.stderr and "pretrained" in r.stderr


def test_dropout_may_differ_from_the_pretrained_run(ptcli, smoke_pretrain, tmp_path):
    run = tmp_path / "r"
    r = ptcli("finetune", f"pretrained={smoke_pretrain}", "model.dropout=0.2", "debug=smoke", "trainer.max_steps=2",
              "trainer.eval_every=2", "data.labels_per_class=2", f"hydra.run.dir={run}")
    assert r.code == 0, r
    text = (run / "config.yaml").read_text()
    assert "dropout: 0.2" in text and "dim: 32" in text  # the pretrained architecture, tuned dropout


def test_pretrained_must_be_a_run_dir(ptcli, tmp_path):
    r = ptcli("finetune", f"pretrained={tmp_path}", "debug=smoke", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.code == 2, r
    assert "run.json" in r.stderr


def test_evaluate_json(ptcli, smoke_finetune, tmp_path):
    r = ptcli("evaluate", str(smoke_finetune), "--json", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.code == 0, r
    metrics = json.loads(r.stdout)
    assert metrics["test/accuracy"] == pytest.approx(read_manifest(smoke_finetune)["metrics"]["test/accuracy"])
    details = json.loads((tmp_path / "e" / "evaluation.json").read_text())
    n = len(details["labels"])
    assert len(details["confusion"]) == n and sum(map(sum, details["confusion"])) == details["examples"]
    assert set(details["per_class"]) == set(details["labels"])


def test_evaluate_mlm_run(ptcli, smoke_pretrain, tmp_path):
    r = ptcli("evaluate", str(smoke_pretrain), "--json", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.code == 0, r
    metrics = json.loads(r.stdout)
    assert {"test/mlm_acc", "test/ppl", "test/loss"} <= set(metrics)


def _labeled_csv(path, labels, n=120):
    words = {"pos": "good great fine happy nice lovely superb".split(),
             "neg": "bad awful sad poor ugly grim dull".split(),
             "meh": "okay average plain middling so-so fair mild".split()}
    rows = ["text,label"]
    for i in range(n):
        lab = labels[i % len(labels)]
        w = words[lab]
        rows.append(f"{' '.join(w[(i + j) % len(w)] for j in range(8))},{lab}")
    path.write_text("\n".join(rows) + "\n")


def test_user_data_labels_and_unseen_label_at_evaluation(ptcli, tmp_path):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    _labeled_csv(train, ["pos", "neg"])
    _labeled_csv(test, ["pos", "neg"], n=20)
    run = tmp_path / "run"
    r = ptcli("finetune", "data=text", f"data.train={train}", f"data.test={test}", "debug=smoke",
              "tokenizer.vocab_size=100", "trainer.batch_size=8", f"hydra.run.dir={run}")
    assert r.code == 0, r
    assert json.loads((run / "labels.json").read_text())["names"] == ["neg", "pos"]
    assert read_manifest(run)["metrics"]["test/accuracy"] > 0.9  # a trivially separable task
    other = tmp_path / "other.csv"
    _labeled_csv(other, ["pos", "meh"], n=20)
    r = ptcli("evaluate", str(run), "data=text", f"data.train={train}", f"data.test={other}",
              f"hydra.run.dir={tmp_path / 'e'}")
    assert r.code == 2, r
    assert "'meh'" in r.stderr


def test_tampered_config_is_refused_and_nothing_runs(ptcli, smoke_finetune, tmp_path):
    import shutil

    evil = tmp_path / "evil"
    shutil.copytree(smoke_finetune, evil)
    marker = tmp_path / "pwned"
    cfg = (evil / "config.yaml").read_text()
    cfg = cfg.replace("_target_: ptcli.models.transformer.TransformerEncoder",
                      f"_target_: os.system\n  _args_: ['touch {marker}']")
    (evil / "config.yaml").write_text(cfg)
    r = ptcli("evaluate", str(evil), f"hydra.run.dir={tmp_path / 'e'}")
    assert r.code == 2, r
    assert "os.system" in r.stderr
    assert not marker.exists()


def test_embed_text_rows_and_width(ptcli, smoke_pretrain, smoke_finetune, tmp_path):
    import numpy as np

    texts = tmp_path / "texts.txt"
    texts.write_text("Return the sum of two numbers.\nOpen a socket connection.\nParse an email header.\n")
    for run in (smoke_pretrain, smoke_finetune):
        out = tmp_path / f"{run.name}.npy"
        r = ptcli("embed", str(run), "--input", str(texts), "--out", str(out))
        assert r.code == 0, r
        arr = np.load(out)
        assert arr.shape == (3, 32) and np.isfinite(arr).all()
    r = ptcli("embed", str(smoke_pretrain), "--input", str(tmp_path / "nope.txt"), "--out", str(out))
    assert r.code == 2 and "nope.txt" in r.stderr
