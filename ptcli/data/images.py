"""Image data: the embedded 8x8 digits and the user's own image folders or ``.npz`` arrays.

Everything is returned as tensors ``x [N, C, H, W]`` float32 in [0, 1] and labels ``y [N]`` long (or None):
the image sets this tool targets fit in memory, and augmentations run batched on the tensors.
Bad input is a ``UsageError`` naming the config key (``data.path``, ``data.size``, ...) and the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ptcli.errors import UsageError

DIGITS_SPLIT_SEED = 0  # fixed: every run, whatever its seed, sees the same train/validation/test images
ON_ERROR = ("fail", "skip")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def load_digits_splits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, no download) as ``{split: (x, y)}``.

    ``x [N, 1, 8, 8]`` float in [0, 1] (the 0..16 gray levels / 16), ``y [N]`` long in 0..9. The split is
    stratified 70/10/20 -> train 1257 / validation 180 / test 360 and FIXED: it does not depend on ``seed``
    (reserved), so scores from different runs and seeds are measured on the same test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    del seed  # the split is fixed on purpose; see the docstring
    digits = load_digits()
    x = torch.from_numpy(digits.data.astype(np.float32) / 16.0).view(-1, 1, 8, 8)
    y = torch.from_numpy(digits.target.astype(np.int64))
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=0.2, stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
    train, val = train_test_split(rest, test_size=0.125, stratify=digits.target[rest], random_state=DIGITS_SPLIT_SEED)
    out = {}
    for name, part in (("train", train), ("validation", val), ("test", test)):
        part = torch.from_numpy(np.sort(part))
        out[name] = (x[part].clone(), y[part].clone())
    return out


def load_image_folder(path: str, size: int, channels: int = 1,
                      on_error: str = "fail") -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """Read images into ``(x [N, channels, size, size] in [0, 1], y [N] or None, class_names)``.

    ``path`` is one of:
    - a folder with one sub-folder per class (at least two; labels = sub-folder names, sorted);
    - a flat folder of images (no labels; ``y`` is None, ``class_names`` empty);
    - an ``.npz`` file with ``x`` ([N, H, W], [N, H, W, C] or [N, C, H, W]; uint8 0..255 or floats in [0, 1]
      or 0..255) and optionally ``y`` (integer labels, or strings mapped to their sorted order).
    Images are resized to ``size`` x ``size`` (aspect ratio not kept) and converted to ``channels`` (1 or 3).
    Unreadable image files: ``on_error="fail"`` raises naming them, ``"skip"`` drops them with a warning.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise UsageError(f"data.size must be a positive integer (image side in pixels), got {size!r}")
    if channels not in (1, 3):
        raise UsageError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if on_error not in ON_ERROR:
        raise UsageError(f"data.on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise UsageError(f"data.path: '{path}' does not exist. Point data.path at a folder of images (one "
                         "sub-folder per class, or flat) or at an .npz file.")
    if p.is_file():
        if p.suffix.lower() != ".npz":
            raise UsageError(f"data.path: '{path}' is a file but not an .npz archive. Point data.path at a folder "
                             "of images or at an .npz file with an 'x' array.")
        return _load_npz(p, size, channels)
    return _load_folder(p, size, channels, on_error)


# ------------------------------------------------------------------------------------------------- folders
def _load_folder(p: Path, size: int, channels: int, on_error: str):
    from PIL import Image

    files, labels, names = _list_images(p)
    mode = "L" if channels == 1 else "RGB"
    arrays, keep, bad = [], [], []
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)  # PIL antialiases down
                arrays.append(np.asarray(img, dtype=np.uint8))
            keep.append(i)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's decode errors
            bad.append((_rel(file, p), f"{type(exc).__name__}: {exc}"))
    if bad:
        listed = ", ".join(f"'{name}'" for name, _ in bad[:10])
        listed += f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        if on_error == "fail":
            raise UsageError(f"data.path: cannot read {len(bad)} image file(s) in '{p}': {listed} ({bad[0][1]}). "
                             "Fix or remove them, or pass data.on_error=skip to skip unreadable files.")
        warnings.warn(f"data.path: skipped {len(bad)} unreadable image file(s) in '{p}': {listed}", stacklevel=3)
    if not arrays:
        raise UsageError(f"data.path: no readable image in '{p}'. Point data.path at a folder of images.")
    x = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    x = x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([labels[i] for i in keep], dtype=torch.long) if labels is not None else None
    return x, y, names


def _list_images(p: Path) -> tuple[list[str], list[int] | None, list[str]]:
    """Image paths, their labels and the class names, through ``datasets``' ``imagefolder`` builder (labels
    when there are >= 2 sub-folders at the same depth; its image extensions; offline)."""
    import datasets

    # data_files="**" keeps every file in one split: without it, sub-folders named train/test/validation
    # would be taken for splits instead of classes or data.
    try:
        ds = datasets.load_dataset("imagefolder", data_dir=str(p), data_files={"train": "**"}, split="train")
    except Exception as exc:  # an empty folder surfaces as "corresponds to no data" or FileNotFoundError
        if not any(f.is_file() for f in p.rglob("*")) or "no data" in str(exc) or isinstance(exc, FileNotFoundError):
            raise UsageError(f"data.path: folder '{p}' has no image files (png, jpg, bmp, gif, tiff, webp, ...). "
                             "Point data.path at a folder of images, one sub-folder per class.") from exc
        raise UsageError(f"data.path: cannot list images in '{p}': {type(exc).__name__}: {str(exc)[:300]}") from exc
    ds = ds.cast_column("image", datasets.Image(decode=False))  # decode ourselves, to name a broken file
    files = [row["path"] for row in ds["image"]]
    if "label" in ds.column_names and isinstance(ds.features["label"], datasets.ClassLabel):
        return files, list(ds["label"]), list(ds.features["label"].names)
    return files, None, []


def _rel(file: str, root: Path) -> str:
    try:
        return str(Path(file).relative_to(root))
    except ValueError:
        return str(file)


# ----------------------------------------------------------------------------------------------------- npz
def _load_npz(p: Path, size: int, channels: int):
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise UsageError(f"data.path: cannot read '{p}' as an .npz archive: {type(exc).__name__}: {exc}") from exc
    if "x" not in arrays:
        raise UsageError(f"data.path: '{p}' has no 'x' array (it has: {', '.join(arrays) or 'nothing'}). Save the "
                         "images as np.savez(path, x=images, y=labels).")
    x = _to_nchw(arrays["x"], p)
    n = x.shape[0]
    x = _to_channels(x, channels)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    y, names = None, []
    if "y" in arrays:
        raw = arrays["y"]
        if raw.shape != (n,):
            raise UsageError(f"data.path: '{p}' key 'y' has shape {raw.shape}; expected one label per image ({n},).")
        if raw.dtype.kind in "US":
            names = sorted({str(v) for v in raw})
            index = {name: i for i, name in enumerate(names)}
            y = torch.tensor([index[str(v)] for v in raw], dtype=torch.long)
        elif raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and np.all(raw == np.round(raw))):
            if n and raw.min() < 0:
                raise UsageError(f"data.path: '{p}' key 'y' has negative labels; use labels 0..K-1.")
            y = torch.from_numpy(raw.astype(np.int64))
            names = [str(i) for i in range(int(raw.max()) + 1 if n else 0)]
        else:
            raise UsageError(f"data.path: '{p}' key 'y' must hold integer or string labels, got dtype {raw.dtype}.")
    return x.contiguous(), y, names


def _to_nchw(raw: np.ndarray, p: Path) -> torch.Tensor:
    """``x`` in any of the accepted layouts -> float ``[N, C, H, W]`` in [0, 1]."""
    if raw.dtype.kind not in "uif" or raw.ndim not in (3, 4) or raw.shape[0] == 0:
        raise UsageError(f"data.path: '{p}' key 'x' must be a non-empty numeric array [N, H, W], [N, H, W, C] or "
                         f"[N, C, H, W]; got dtype {raw.dtype} shape {raw.shape}.")
    x = torch.from_numpy(raw.astype(np.float32))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif raw.shape[-1] in (1, 3, 4) and raw.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)  # channels last
    elif raw.shape[1] not in (1, 3, 4):
        raise UsageError(f"data.path: '{p}' key 'x' has shape {raw.shape}: no channel axis of size 1, 3 or 4 "
                         "(expected [N, H, W], [N, H, W, C] or [N, C, H, W]).")
    lo, hi = float(x.min()), float(x.max())
    if raw.dtype == np.uint8 or (hi > 1.0 and lo >= 0.0 and hi <= 255.0):
        x = x / 255.0
    elif lo < 0.0 or hi > 1.0:
        raise UsageError(f"data.path: '{p}' key 'x' has values in [{lo:g}, {hi:g}]; store pixels as uint8 0..255 or "
                         "floats in [0, 1].")
    return x


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    c = x.shape[1]
    if c == 4:  # RGBA: drop alpha
        x, c = x[:, :3], 3
    if c == channels:
        return x
    if channels == 1:  # RGB -> luminance
        return (x * torch.from_numpy(_LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    return x.expand(-1, 3, -1, -1)  # gray -> RGB
