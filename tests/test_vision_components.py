"""Unit tests of the vision components: ConvNet, Augment, NT-Xent/SimCLR, probes, image data loading."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ptcli.augment import DEFAULT_SMALL_IMAGE_OPS, OPS, Augment
from ptcli.data.images import load_digits_splits, load_image_folder
from ptcli.errors import UsageError
from ptcli.models.convnet import ConvNet
from ptcli.objectives.simclr import SimCLR, nt_xent
from ptcli.probes import PROTOCOLS, describe, knn_classify, linear_probe

EXAMPLE_OPS = [
    {"name": "random_resized_crop", "scale": [0.3, 1.0], "ratio": [0.75, 1.33]},
    {"name": "hflip", "p": 0.5},
    {"name": "affine", "degrees": 10, "translate": 0.1, "p": 0.5},
    {"name": "color_jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
    {"name": "gaussian_noise", "std": 0.05, "p": 0.5},
    {"name": "gaussian_blur", "sigma": [0.1, 1.0], "p": 0.5},
    {"name": "random_erasing", "p": 0.25, "scale": [0.02, 0.2]},
]

# Each op with p=1 and parameters strong enough that it must change a random image.
SINGLE_OPS = {
    "random_resized_crop": {"scale": [0.3, 0.5]},
    "hflip": {"p": 1.0},
    "affine": {"degrees": 30, "translate": 0.2},
    "color_jitter": {"brightness": 0.5, "contrast": 0.5, "saturation": 0.5, "hue": 0.2},
    "grayscale": {"p": 1.0},
    "gaussian_noise": {"std": 0.1},
    "gaussian_blur": {"sigma": [1.0, 2.0]},
    "random_erasing": {"p": 1.0, "scale": [0.1, 0.3]},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    import datasets

    # datasets reads the cache location at import; point the live config there too.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    datasets.disable_progress_bars()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------ ConvNet
@pytest.mark.parametrize("in_channels,width,stages,hw", [(1, 8, 3, 8), (3, 4, 2, 17), (1, 4, 1, 5)])
def test_convnet_shape_and_dim(in_channels, width, stages, hw):
    model = ConvNet(in_channels=in_channels, width=width, stages=stages, blocks_per_stage=2)
    out = model(torch.rand(3, in_channels, hw, hw))
    assert model.dim == width * 2 ** (stages - 1)
    assert out.shape == (3, model.dim)
    assert model.modality == "image"


@pytest.mark.parametrize("width, hw", [(4, 8), (2, 8), (8, 9)])
def test_convnet_gradients_match_float64_and_the_shortcut_is_a_strided_conv(width, hw):
    """Channels-last fp32 gradients equal a float64 NCHW copy's (no oneDNN there). Widths 2-4 on an even input are
    where oneDNN's channels-last 1x1 stride-2 kernel got the weight gradient ~50% wrong on an AVX2-only CPU (heap
    corruption with one thread): the shortcut avoids it by subsampling first, the same function as that conv."""
    import copy

    import torch.nn.functional as F

    torch.manual_seed(0)
    model = ConvNet(in_channels=1, width=width, stages=2)
    ref = copy.deepcopy(model).double().to(memory_format=torch.contiguous_format)
    x = torch.rand(12, 1, hw, hw)
    model(x).pow(2).sum().backward()
    ref(x.double()).pow(2).sum().backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert (p.grad.double() - q.grad).abs().max() <= 1e-4 * q.grad.abs().max() + 1e-8, name
    conv = ref.blocks[1].shortcut[0]  # stage 2's projection shortcut: 1x1, after a stride-2 subsample
    h = torch.rand(3, width, hw, hw, dtype=torch.float64)
    torch.testing.assert_close(conv(h[:, :, ::2, ::2]), F.conv2d(h, conv.weight, stride=2))


def test_convnet_rejects_bad_args_naming_the_key():
    with pytest.raises(UsageError, match=r"model\.width"):
        ConvNet(width=0)
    with pytest.raises(UsageError, match=r"model\.blocks_per_stage"):
        ConvNet(blocks_per_stage=-1)
    with pytest.raises(UsageError, match=r"model\.in_channels"):
        ConvNet(in_channels=1)(torch.rand(2, 3, 8, 8))


# ------------------------------------------------------------------------------------------------ Augment
@pytest.mark.parametrize("channels", [1, 3])
def test_augment_deterministic_shape_range(channels):
    x = torch.rand(16, channels, 12, 10)
    aug = Augment(EXAMPLE_OPS)
    a, b = aug(x, gen(1)), aug(x, gen(1))
    c = aug(x, gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(SINGLE_OPS))
def test_each_op_changes_the_image(name, channels):
    x = torch.rand(8, channels, 10, 10)
    y = Augment([{"name": name, **SINGLE_OPS[name]}])(x, gen(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    if channels == 1 and name == "grayscale":
        assert torch.equal(x, y)  # documented no-op on single-channel images
    else:
        changed = (y - x).abs().flatten(1).amax(1) > 1e-3
        assert changed.all(), f"{name} left some images unchanged"


def test_ops_cover_the_registry_and_defaults_build():
    assert set(SINGLE_OPS) == set(OPS)
    names = [op["name"] for op in DEFAULT_SMALL_IMAGE_OPS]
    assert "hflip" not in names and "gaussian_blur" not in names  # digits are not flip-invariant
    y = Augment(DEFAULT_SMALL_IMAGE_OPS)(torch.rand(4, 1, 8, 8), gen(0))
    assert y.shape == (4, 1, 8, 8)


def test_probability_is_per_sample():
    x = torch.rand(400, 1, 6, 6)
    y = Augment([{"name": "hflip", "p": 0.5}])(x, gen(0))
    flipped = (y == x.flip(-1)).flatten(1).all(1) & ~(y == x).flatten(1).all(1)
    assert 150 < int(flipped.sum()) < 250


def test_color_jitter_saturation_hue_only_touch_rgb():
    x = torch.rand(4, 1, 6, 6)
    y = Augment([{"name": "color_jitter", "saturation": 0.9, "hue": 0.4}])(x, gen(0))
    assert torch.equal(x, y)


def test_hue_shift_by_full_turn_is_identity():
    from ptcli.augment import _hsv_to_rgb, _rgb_to_hsv

    x = torch.rand(3, 3, 5, 5)
    assert torch.allclose(_hsv_to_rgb(_rgb_to_hsv(x)), x, atol=1e-5)


def test_unknown_op_and_bad_params_name_the_key():
    with pytest.raises(UsageError, match=r"objective\.augment\[1\]\.name.*'solarise'.*Valid names:.*hflip"):
        Augment([{"name": "hflip"}, {"name": "solarise"}])
    with pytest.raises(UsageError, match=r"objective\.augment\[0\]\.p"):
        Augment([{"name": "hflip", "p": 1.5}])
    with pytest.raises(UsageError, match=r"objective\.augment\[0\]\.degree\b.*Valid parameters: degrees"):
        Augment([{"name": "affine", "degree": 5}])
    with pytest.raises(UsageError, match=r"objective\.augment\[0\]\.scale"):
        Augment([{"name": "random_resized_crop", "scale": [0.9, 0.1]}])
    with pytest.raises(UsageError, match=r"objective\.augment\[0\]\.kernel_size"):
        Augment([{"name": "gaussian_blur", "kernel_size": 4}])
    with pytest.raises(UsageError, match=r"objective\.augment\[0\] has no 'name'"):
        Augment([{"p": 0.5}])
    with pytest.raises(UsageError, match=r"objective\.augment must be a list"):
        Augment({"name": "hflip"})  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ NT-Xent/SimCLR
def reference_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        denom = sum(math.exp(float(z[i] @ z[j]) / t) for j in range(n2) if j != i)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / t) / denom)
    return torch.tensor(total / n2, dtype=torch.float64)


def test_nt_xent_matches_reference():
    z1, z2 = torch.randn(6, 5, generator=gen(0)), torch.randn(6, 5, generator=gen(1))
    for t in (0.5, 0.2):
        assert torch.allclose(nt_xent(z1, z2, t).double(), reference_nt_xent(z1, z2, t), atol=1e-5)


def test_nt_xent_identical_views_lower_than_random():
    z = torch.randn(32, 16, generator=gen(0))
    same = nt_xent(z, z.clone(), 0.1)
    rand = nt_xent(z, torch.randn(32, 16, generator=gen(1)), 0.1)
    assert same < 0.5 < rand


def test_simclr_forward_backward_and_validation():
    model = SimCLR(ConvNet(width=4, stages=2), proj_dim=8, proj_hidden=16, temperature=0.2)
    out = model(torch.rand(6, 1, 8, 8), generator=gen(0))
    assert out["count"] == 6 and out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert model.encoder.stem[0].weight.grad is not None
    with pytest.raises(UsageError, match=r"objective\.temperature"):
        SimCLR(ConvNet(width=4), temperature=0)
    with pytest.raises(UsageError, match=r"objective\.augment\[0\]\.name"):
        SimCLR(ConvNet(width=4), augment=[{"name": "nope"}])


# ---------------------------------------------------------------------------------------------------- probes
def clusters(n_per: int, num_classes: int = 4, dim: int = 16, seed: int = 0):
    g = gen(seed)
    centers = torch.randn(num_classes, dim, generator=g) * 5
    y = torch.arange(num_classes).repeat_interleave(n_per)
    x = centers[y] + 0.3 * torch.randn(len(y), dim, generator=g)
    perm = torch.randperm(len(y), generator=g)
    return x[perm], y[perm]


def test_knn_perfect_on_separated_clusters():
    xtr, ytr = clusters(50)
    xte, yte = clusters(30, seed=0)
    xte = xte + 0.1 * torch.randn(xte.shape, generator=gen(5))
    pred = knn_classify(xtr, ytr, xte, num_classes=4, k=20, temperature=0.07)
    assert pred.dtype == torch.long and torch.equal(pred, yte)


def test_knn_chunking_gives_same_answer(monkeypatch):
    import ptcli.probes as probes

    xtr, ytr = clusters(20, num_classes=3, seed=1)
    xte, _ = clusters(10, num_classes=3, seed=2)
    full = knn_classify(xtr, ytr, xte, num_classes=3)
    monkeypatch.setattr(probes, "_KNN_BUDGET", 1)  # one test row per chunk
    assert torch.equal(knn_classify(xtr, ytr, xte, num_classes=3), full)


def test_linear_probe_perfect_and_deterministic():
    xtr, ytr = clusters(50)
    xte, yte = clusters(30, seed=0)
    pred = linear_probe(xtr, ytr, xte, num_classes=4)
    assert torch.equal(pred, yte)
    assert torch.equal(linear_probe(xtr, ytr, xte, num_classes=4), pred)


def test_protocols_describe_parameters():
    assert PROTOCOLS["knn"]["k"] == 20 and PROTOCOLS["knn"]["temperature"] == 0.07
    assert describe("knn", k=5).startswith("knn(k=5, temperature=0.07")


# ------------------------------------------------------------------------------------------------------ data
def test_digits_splits_fixed_disjoint_stratified():
    a = load_digits_splits(seed=0)
    b = load_digits_splits(seed=123)
    sizes = {k: len(v[1]) for k, v in a.items()}
    assert sizes == {"train": 1257, "validation": 180, "test": 360}
    for split, (x, y) in a.items():
        assert x.shape == (len(y), 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
        assert 0 <= x.min() and x.max() <= 1
        assert set(y.tolist()) == set(range(10))
        assert torch.equal(x, b[split][0]) and torch.equal(y, b[split][1])
    # Disjoint and complete: together the splits are exactly the dataset (as a multiset of image+label rows).
    from sklearn.datasets import load_digits

    digits = load_digits()
    full = sorted(tuple(r) + (int(t),) for r, t in zip(digits.data.astype(int).tolist(), digits.target, strict=True))
    parts = sorted(tuple(r) + (int(t),) for x, y in a.values()
                   for r, t in zip((x.flatten(1) * 16).round().int().tolist(), y.tolist(), strict=True))
    assert parts == full


def _png(path, size=(6, 5), mode="L", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=None).save(path)


@pytest.mark.parametrize("channels", [1, 3])
def test_image_folder_with_classes(tmp_path, channels):
    root = tmp_path / "imgs"
    for c in ("cat", "ant"):
        for i in range(3):
            _png(root / c / f"{i}.png", mode="RGB" if i % 2 else "L", seed=i)
    (root / "cat" / "notes.txt").write_text("not an image")
    x, y, names = load_image_folder(str(root), size=4, channels=channels)
    assert names == ["ant", "cat"]
    assert x.shape == (6, channels, 4, 4) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    assert sorted(y.tolist()) == [0, 0, 0, 1, 1, 1]


def test_split_named_subfolders_are_classes_not_splits(tmp_path):
    for c in ("train", "test"):
        _png(tmp_path / "d" / c / "a.png")
    x, y, names = load_image_folder(str(tmp_path / "d"), size=3)
    assert names == ["test", "train"] and len(x) == 2


def test_flat_folder_unlabeled(tmp_path):
    for i in range(3):
        _png(tmp_path / "flat" / f"{i}.png", seed=i)
    x, y, names = load_image_folder(str(tmp_path / "flat"), size=5, channels=3)
    assert x.shape == (3, 3, 5, 5) and y is None and names == []


def test_corrupt_file_fail_and_skip(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        _png(root / c / "ok.png")
    (root / "b" / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(UsageError, match=r"b/broken\.png.*data\.on_error=skip"):
        load_image_folder(str(root), size=4)
    with pytest.warns(UserWarning, match=r"b/broken\.png"):
        x, y, names = load_image_folder(str(root), size=4, on_error="skip")
    assert len(x) == 2 and sorted(y.tolist()) == [0, 1]


def test_missing_and_empty_paths(tmp_path):
    with pytest.raises(UsageError, match=r"data\.path.*nope.*does not exist"):
        load_image_folder(str(tmp_path / "nope"), size=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"data\.path.*empty.*no image files"):
        load_image_folder(str(tmp_path / "empty"), size=4)
    with pytest.raises(UsageError, match=r"data\.size"):
        load_image_folder(str(tmp_path), size=0)
    with pytest.raises(UsageError, match=r"data\.on_error"):
        load_image_folder(str(tmp_path), size=4, on_error="ignore")


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_npz_layouts(tmp_path, layout):
    rng = np.random.default_rng(0)
    x = {"nhw": rng.integers(0, 256, (5, 6, 6)), "nhwc": rng.integers(0, 256, (5, 6, 6, 3)),
         "nchw": rng.random((5, 3, 6, 6))}[layout]
    x = x.astype(np.uint8) if layout != "nchw" else x.astype(np.float32)
    path = tmp_path / "a.npz"
    np.savez(path, x=x, y=np.array([0, 1, 2, 1, 0]))
    xs, y, names = load_image_folder(str(path), size=4, channels=3)
    assert xs.shape == (5, 3, 4, 4) and 0 <= xs.min() and xs.max() <= 1
    assert y.tolist() == [0, 1, 2, 1, 0] and names == ["0", "1", "2"]
    same, _, _ = load_image_folder(str(path), size=6, channels=1)
    assert same.shape == (5, 1, 6, 6)
    if layout == "nhw":
        assert torch.allclose(same[:, 0], torch.from_numpy(x).float() / 255)


def test_npz_string_labels_unlabeled_and_missing_x(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.zeros((3, 4, 4), np.uint8), y=np.array(["dog", "cat", "dog"]))
    _, y, names = load_image_folder(str(tmp_path / "s.npz"), size=4)
    assert names == ["cat", "dog"] and y.tolist() == [1, 0, 1]
    np.savez(tmp_path / "u.npz", x=np.zeros((3, 4, 4), np.uint8))
    assert load_image_folder(str(tmp_path / "u.npz"), size=4)[1] is None
    np.savez(tmp_path / "bad.npz", images=np.zeros((3, 4, 4)))
    with pytest.raises(UsageError, match=r"data\.path.*bad\.npz.*no 'x' array.*images"):
        load_image_folder(str(tmp_path / "bad.npz"), size=4)


@pytest.mark.slow  # ~2 s of training runs: the inner loop keeps the smaller ones
def test_simclr_learns_something_on_digits_quickly():
    """A few steps must lower the loss: the pieces fit together (encoder, augment, head, loss)."""
    torch.manual_seed(0)
    x = load_digits_splits()["train"][0][:128]
    model = SimCLR(ConvNet(width=8, stages=2), proj_dim=16, proj_hidden=32, temperature=0.2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = gen(0)
    losses = []
    for _ in range(15):
        loss = model(x, generator=g)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2
    with torch.no_grad():
        feats = F.normalize(model.eval().encoder(x), dim=1)
    assert torch.isfinite(feats).all()
