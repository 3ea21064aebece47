"""data=images: official splits (data.train/validation/test, train/ val/ test/ sub-folders) and data.size
defaulting to the images' own size (issue 16 item 5). Tiny PNG folders and .npz files; runs are a few steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from conftest import read_manifest

from ptcli.data.sources import ImageFiles
from ptcli.errors import UsageError

TINY = ["model=convnet", "objective=simclr", "model.width=4", "model.stages=1", "model.blocks_per_stage=1",
        "trainer.max_steps=2", "trainer.eval_every=2", "trainer.log_every=1", "trainer.batch_size=8"]


def _pngs(root, classes=("circle", "square"), n=6, side=16, seed=0):
    """``n`` PNGs per class under ``root/<class>/`` (or flat in ``root`` when ``classes`` is empty)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for cls in classes or ("",):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (side, side), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")


def _config(run) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def _load(**options):
    splits, names = ImageFiles(seed=0, **options).load_images()
    return {k: (tuple(x.shape), None if y is None else y.tolist()) for k, (x, y) in splits.items()}, names


# ------------------------------------------------------------------------------------------ the source itself
@pytest.mark.parametrize("val_dir", ["validation", "val"])
def test_split_subfolders_are_kept_as_splits(tmp_path, val_dir):
    for split, n in (("train", 6), (val_dir, 2), ("test", 3)):
        _pngs(tmp_path / "d" / split, n=n, seed=n)
    shapes, names = _load(path=str(tmp_path / "d"))
    assert names == ["circle", "square"]
    assert shapes["train"] == ((12, 1, 16, 16), [0] * 6 + [1] * 6)  # all of train/: nothing held out
    assert shapes["validation"] == ((4, 1, 16, 16), [0, 0, 1, 1])
    assert shapes["test"] == ((6, 1, 16, 16), [0, 0, 0, 1, 1, 1])
    origins = ImageFiles(seed=0, path=str(tmp_path / "d")).origins()
    assert origins["test"].startswith("data.path (test/)=") and f"{val_dir}/" in origins["validation"]


def test_train_key_alone_holds_out_validation_and_has_no_test(tmp_path):
    """As data=text: data.train only -> a seeded data.val_fraction of train is validation, there is no test."""
    x = np.random.default_rng(0).integers(0, 256, (20, 12, 12), dtype=np.uint8)
    np.savez(tmp_path / "tr.npz", x=x, y=np.array(["a", "b"] * 10))
    shapes, names = _load(train=str(tmp_path / "tr.npz"), val_fraction=0.2)
    assert names == ["a", "b"]
    assert shapes["validation"][0] == (4, 1, 12, 12) and shapes["train"][0] == (16, 1, 12, 12)
    assert shapes["test"] == ((0, 1, 12, 12), [])
    origins = ImageFiles(seed=0, train=str(tmp_path / "tr.npz")).origins()
    assert origins["test"] == "none" and origins["validation"].startswith("held out from train")


def test_split_keys_mix_folders_and_npz_and_map_labels_by_name(tmp_path):
    _pngs(tmp_path / "train", classes=("a", "b", "c"), n=4, side=8)
    # test: an .npz whose string labels use only some of train's classes, in another order.
    np.savez(tmp_path / "te.npz", x=np.zeros((3, 8, 8), np.uint8), y=np.array(["c", "a", "c"]))
    _pngs(tmp_path / "val", classes=("b",), n=2, side=8)  # one class sub-folder is still a labeled split
    shapes, names = _load(train=str(tmp_path / "train"), validation=str(tmp_path / "val"),
                          test=str(tmp_path / "te.npz"))
    assert names == ["a", "b", "c"]
    assert shapes["test"][1] == [2, 0, 2] and shapes["validation"][1] == [1, 1]


def test_split_rules_and_class_mismatch_are_usage_errors(tmp_path):
    _pngs(tmp_path / "d" / "train", n=5, side=8)
    _pngs(tmp_path / "d" / "test", classes=("circle", "zebra"), n=1, side=8)
    with pytest.raises(UsageError, match=r"data\.path \(test/\): the test split .* class 'zebra'.*training split "
                                         r"lacks \(its classes: circle, square\)"):
        _load(path=str(tmp_path / "d"))
    with pytest.raises(UsageError, match=r"data\.validation: the validation split .*class 'zebra'"):
        _load(train=str(tmp_path / "d" / "train"), validation=str(tmp_path / "d" / "test"))
    with pytest.raises(UsageError, match=r"data\.train is required"):
        _load(test=str(tmp_path / "d" / "test"))
    with pytest.raises(UsageError, match=r"data\.path and data\.train both given"):
        _load(path=str(tmp_path / "d"), train=str(tmp_path / "d" / "train"))
    with pytest.raises(UsageError, match=r"data\.test: '.*nope' does not exist"):
        _load(train=str(tmp_path / "d" / "train"), test=str(tmp_path / "nope"))
    _pngs(tmp_path / "flat" / "test", classes=(), n=2, side=8)
    with pytest.raises(UsageError, match=r"data\.test: the training split has class labels but the test split"):
        _load(train=str(tmp_path / "d" / "train"), test=str(tmp_path / "flat" / "test"))
    _pngs(tmp_path / "twice" / "train", n=3, side=8)
    for v in ("val", "validation"):
        _pngs(tmp_path / "twice" / v, n=1, side=8)
    with pytest.raises(UsageError, match=r"both val/ and validation/"):
        _load(path=str(tmp_path / "twice"))


def test_native_size_and_mixed_sizes(tmp_path):
    _pngs(tmp_path / "same", n=5, side=16)
    assert ImageFiles(seed=0, path=str(tmp_path / "same")).image_size() == 16
    assert _load(path=str(tmp_path / "same"))[0]["train"][0][2:] == (16, 16)
    assert _load(path=str(tmp_path / "same"), size=8)[0]["train"][0][2:] == (8, 8)  # explicit: resized as before
    _pngs(tmp_path / "same" / "circle", classes=("",), n=1, side=20, seed=7)  # overwrites circle/0.png at 20x20
    with pytest.raises(UsageError, match=r"data\.size: the images in data\.path=.* have different sizes: 16x16 "
                                         r"\(9 images\), 20x20 \(1 image\)\. Set data\.size=N .*data\.size=16"):
        ImageFiles(seed=0, path=str(tmp_path / "same")).image_size()
    with pytest.raises(UsageError, match=r"data\.size: .*different sizes"):
        _load(path=str(tmp_path / "same"))
    np.savez(tmp_path / "wide.npz", x=np.zeros((4, 6, 10, 3), np.uint8))  # [N, H, W, C], not square
    with pytest.raises(UsageError, match=r"data\.size: .* are 10x6 \(width x height\), not square"):
        ImageFiles(seed=0, path=str(tmp_path / "wide.npz")).image_size()
    np.savez(tmp_path / "sq.npz", x=np.zeros((4, 3, 12, 12), np.float32))  # [N, C, H, W]
    assert ImageFiles(seed=0, path=str(tmp_path / "sq.npz")).image_size() == 12


def test_one_path_hold_out_is_unchanged(tmp_path):
    """The seeded, stratified 3-way hold-out of one data.path: same counts and the same images as before."""
    _pngs(tmp_path / "d", n=10, side=8)
    source = ImageFiles(seed=0, path=str(tmp_path / "d"), size=8)
    splits, names = source.load_images()
    assert {k: len(v[0]) for k, v in splits.items()} == {"train": 16, "validation": 2, "test": 2}
    # The indices the hold-out picked before official splits existed (seed 0, per class: permute, 1 val, 1 test).
    rng = np.random.default_rng(0)
    expected = {"train": [], "validation": [], "test": []}
    for c in range(2):
        idx = rng.permutation(np.arange(10 * c, 10 * c + 10))
        expected["validation"] += [idx[0]]
        expected["test"] += [idx[1]]
        expected["train"] += list(idx[2:])
    from ptcli.data.images import load_image_folder

    x, y, _ = load_image_folder(str(tmp_path / "d"), 8)
    for split, idx in expected.items():
        assert np.array_equal(splits[split][0].numpy(), x[np.sort(idx)].numpy()), split
    assert ImageFiles(seed=0, path=str(tmp_path / "d")).origins()["test"].endswith("seed 0, stratified)")


# ------------------------------------------------------------------------------------------- through the CLI
@pytest.mark.slow  # several training runs (seconds of CPU)
def test_cli_native_size_official_splits_and_finetune_evaluate(ptcli, tmp_path):
    """16x16 images without data.size train at 16 (config.yaml holds 16; run.json records the splits); a
    fine-tune of that run on other images without data.size resizes them to the encoder's 16; evaluate too."""
    root = tmp_path / "digits16"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        _pngs(root / split, n=n, seed=n)
    pre = tmp_path / "pre"
    r = ptcli("pretrain", *TINY, "data=images", f"data.path={root}", f"hydra.run.dir={pre}")
    assert r.code == 0, r
    assert _config(pre)["data"]["size"] == 16
    data = read_manifest(pre)["data"]
    assert data["image_shape"] == [1, 16, 16] and (data["train_images"], data["val_images"], data["test_images"]) \
        == (12, 4, 4)
    assert data["splits"]["validation"] == f"data.path (val/)='{root / 'val'}'"

    other = tmp_path / "other"  # 12x12 images, labeled by the same classes
    _pngs(other / "train", n=6, side=12)
    _pngs(other / "test", n=2, side=12)
    ft = tmp_path / "ft"
    r = ptcli("finetune", f"pretrained={pre}", "data=images", f"data.train={other / 'train'}",
              f"data.test={other / 'test'}", "trainer.max_steps=2", "trainer.eval_every=2", "trainer.batch_size=8",
              f"hydra.run.dir={ft}")
    assert r.code == 0, r
    assert _config(ft)["data"]["size"] == 16  # the encoder's size, as embed resizes its input
    m = read_manifest(ft)
    assert m["data"]["image_shape"] == [1, 16, 16] and m["data"]["test_examples"] == 4
    assert m["data"]["splits"]["test"] == f"data.test='{other / 'test'}'"
    r = ptcli("evaluate", str(ft), "--json", f"hydra.run.dir={tmp_path / 'e'}")
    assert r.code == 0, r
    assert "test/accuracy" in json.loads(r.stdout)
    r = ptcli("evaluate", str(pre), "data=images", f"data.train={other / 'train'}", f"data.test={other / 'test'}",
              "--json", f"hydra.run.dir={tmp_path / 'e2'}")
    assert r.code == 0, r
    assert _config(tmp_path / "e2")["data"]["size"] == 16 and "test/knn_acc" in json.loads(r.stdout)


def test_cli_errors_exit_2(ptcli, tmp_path):
    _pngs(tmp_path / "d" / "train", n=5, side=8)
    _pngs(tmp_path / "d" / "validation", classes=("circle", "zebra"), n=1, side=8)
    r = ptcli("pretrain", *TINY, "data=images", f"data.path={tmp_path / 'd'}", f"hydra.run.dir={tmp_path / 'a'}")
    assert r.code == 2 and "Traceback" not in r.stderr, r
    assert "validation split" in r.stderr and "'zebra'" in r.stderr, r
    _pngs(tmp_path / "mixed" / "a", n=5, side=8)
    _pngs(tmp_path / "mixed" / "b", n=5, side=10)
    args = ["pretrain", *TINY, "data=images", f"data.path={tmp_path / 'mixed'}"]
    r = ptcli(*args, f"hydra.run.dir={tmp_path / 'b'}")
    assert r.code == 2 and "data.size" in r.stderr and "8x8 (10 images), 10x10 (10 images)" in r.stderr, r
    r = ptcli(*args, "data.size=8", f"hydra.run.dir={tmp_path / 'c'}")
    assert r.code == 0, r
