"""Images end to end at tiny scale: SimCLR pre-training, fine-tuning, evaluation, user image data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import read_manifest, read_metrics

TINY = ["model=convnet", "objective=simclr", "model.width=8", "model.stages=2", "trainer.max_steps=6",
        "trainer.eval_every=3", "trainer.batch_size=32", "trainer.log_every=2"]
# Long enough for the encoder to learn something measurable: 40 steps took the kNN accuracy from 0.467
# (untrained) to 0.617 on digits' 180 validation images; 6 steps moved it by only 0.03.
LEARNS = ["trainer.max_steps=40", "trainer.eval_every=20"]


@pytest.fixture(scope="module")
def simclr_run(ptcli, tmp_path_factory):
    run = tmp_path_factory.mktemp("simclr") / "run"
    r = ptcli("pretrain", *TINY, *LEARNS, "data=digits", f"hydra.run.dir={run}")
    assert r.code == 0, r
    return run


def test_simclr_pretrain_run(simclr_run):
    m = read_manifest(simclr_run)
    assert m["status"] == "completed"
    assert {"val/knn_acc", "val/knn_acc_init", "val/loss"} <= set(m["metrics"])
    # An encoder that learned nothing keeps its initial kNN accuracy; 0.08 is 14 of the 180 images.
    assert m["metrics"]["val/knn_acc"] >= m["metrics"]["val/knn_acc_init"] + 0.08, m["metrics"]
    assert m["probe"]["knn"]["k"] == 20 and m["probe"]["knn"]["temperature"] == 0.07
    events = read_metrics(simclr_run)
    assert events[0] == {"step": 0, "split": "val", "knn_acc": m["metrics"]["val/knn_acc_init"]}
    assert not (simclr_run / "tokenizer").exists()


@pytest.mark.slow  # ~2 s of training runs: the inner loop keeps the smaller ones
def test_simclr_finetune_and_evaluate(ptcli, simclr_run, tmp_path):
    run = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={simclr_run}", "data.labels_per_class=5", "trainer.max_steps=6",
              "trainer.eval_every=3", f"hydra.run.dir={run}")
    assert r.code == 0, r
    m = read_manifest(run)
    assert m["data"]["train_examples"] == 50 and "test/accuracy" in m["metrics"]
    r = ptcli("evaluate", str(run), "--json", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.code == 0, r
    assert json.loads(r.stdout)["test/accuracy"] == pytest.approx(m["metrics"]["test/accuracy"])
    r = ptcli("evaluate", str(simclr_run), "--json", f"hydra.run.dir={tmp_path / 'e2'}")
    assert r.code == 0, r
    metrics = json.loads(r.stdout)
    assert {"test/knn_acc", "test/linear_acc"} <= set(metrics)
    assert "knn(k=20, temperature=0.07" in r.stderr  # the protocol is printed beside the score
    assert "linear(solver=lbfgs, C=1.0, max_iter=1000)" in r.stderr


def _write_pngs(root, channels):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, base in (("circle", 40), ("square", 200)):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            arr = np.clip(base + rng.normal(0, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
            img = Image.fromarray(arr if channels == 3 else arr[..., 0])
            img.save(root / cls / f"{i}.png")


@pytest.mark.parametrize("kind", ["folder", "npz"])
@pytest.mark.slow  # ~2 s of training runs: the inner loop keeps the smaller ones
def test_user_images_pretrain_finetune_evaluate(ptcli, tmp_path, kind):
    if kind == "folder":
        path = tmp_path / "imgs"
        _write_pngs(path, channels=3)
        data = ["data=images", f"data.path={path}", "data.size=8", "data.channels=3"]
    else:
        rng = np.random.default_rng(0)
        x = np.concatenate([rng.integers(0, 80, (15, 8, 8)), rng.integers(170, 255, (15, 8, 8))]).astype(np.uint8)
        y = np.array(["dark"] * 15 + ["light"] * 15)
        path = tmp_path / "arrays.npz"
        np.savez(path, x=x, y=y)
        data = ["data=images", f"data.path={path}", "data.size=8", "data.channels=1"]
    pre = tmp_path / "pre"
    r = ptcli("pretrain", *TINY, "trainer.batch_size=8", *data, f"hydra.run.dir={pre}")
    assert r.code == 0, r
    ft = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={pre}", *data, "trainer.max_steps=4", "trainer.eval_every=2",
              "trainer.batch_size=8", f"hydra.run.dir={ft}")
    assert r.code == 0, r
    r = ptcli("evaluate", str(ft), "--json", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.code == 0, r
    assert "test/accuracy" in json.loads(r.stdout)


def test_corrupt_image_is_named(ptcli, tmp_path):
    path = tmp_path / "imgs"
    _write_pngs(path, channels=1)
    (path / "circle" / "broken.png").write_bytes(b"not a png at all")
    args = ["pretrain", *TINY, "trainer.batch_size=8", "data=images", f"data.path={path}", "data.size=8"]
    r = ptcli(*args, f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "broken.png" in r.stderr and "on_error=skip" in r.stderr, r
    r = ptcli(*args, "data.on_error=skip", f"hydra.run.dir={tmp_path / 'b'}")
    assert r.code == 0, r


def test_mismatched_model_and_data(ptcli, tmp_path):
    r = ptcli("pretrain", "model=convnet", "objective=simclr", "data=pydocs", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "data=digits" in r.stderr, r
    r = ptcli("pretrain", "data=digits", "debug=smoke", f"hydra.run.dir={tmp_path / 'b'}")
    assert r.code == 2 and "model=convnet" in r.stderr, r
