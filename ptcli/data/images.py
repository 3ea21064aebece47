"""Image data: the embedded 8x8 digits and the user's own image folders or ``.npz`` arrays.

Everything is returned as tensors ``x [N, C, H, W]`` float32 in [0, 1] and labels ``y [N]`` long (or None):
the image sets this tool targets fit in memory, and augmentations run batched on the tensors.
Bad input is a ``UsageError`` naming the config key (``data.path``, ``data.size``, ...) and the file.
"""

from __future__ import annotations

import warnings
from collections import Counter
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


def load_image_folder(path: str, size: int | None = None, channels: int = 1, on_error: str = "fail",
                      key: str = "data.path") -> tuple[torch.Tensor, torch.Tensor | None, list[str]]:
    """Read images into ``(x [N, channels, size, size] in [0, 1], y [N] or None, class_names)``.

    ``path`` is one of:
    - a folder with one sub-folder per class (at least two; labels = sub-folder names, sorted);
    - a flat folder of images (no labels; ``y`` is None, ``class_names`` empty);
    - an ``.npz`` file with ``x`` ([N, H, W], [N, H, W, C] or [N, C, H, W]; uint8 0..255 or floats in [0, 1]
      or 0..255) and optionally ``y`` (integer labels, or strings mapped to their sorted order).
    Images are resized to ``size`` x ``size`` (aspect ratio not kept) and converted to ``channels`` (1 or 3);
    ``size=None`` keeps their own size, which they must all share and which must be square (``native_size``).
    Unreadable image files: ``on_error="fail"`` raises naming them, ``"skip"`` drops them with a warning.
    ``key`` is the config key errors name (``data.path``, ``data.train``, ...).
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise UsageError(f"data.size must be a positive integer (image side in pixels), got {size!r}")
    if channels not in (1, 3):
        raise UsageError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
    if on_error not in ON_ERROR:
        raise UsageError(f"data.on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    p = checked_input(path, key)
    if p.is_file():
        return _load_npz(p, size, channels, key)
    return _load_folder(p, size, channels, on_error, key)


def checked_input(path: str, key: str) -> Path:
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise UsageError(f"{key}: '{path}' does not exist. Point {key} at a folder of images (one "
                         "sub-folder per class, or flat) or at an .npz file.")
    if p.is_file() and p.suffix.lower() != ".npz":
        raise UsageError(f"{key}: '{path}' is a file but not an .npz archive. Point {key} at a folder "
                         "of images or at an .npz file with an 'x' array.")
    return p


# ------------------------------------------------------------------------------------------- official splits
# Sub-folders of a data.path folder that make it a dataset with its own splits (train/ is required). val/ and
# valid/ are common spellings of validation/ (ImageNet and the folders made for it use val/); without them such a
# folder would silently become two classes named "train" and "val".
SPLIT_DIRS = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
              "test": "test"}


def split_folders(p: Path) -> dict[str, Path] | None:
    """``{split: sub-folder}`` when the folder ``p`` holds its own splits (sub-folders among ``SPLIT_DIRS``,
    ``train/`` among them), else None (one pool of images)."""
    if not p.is_dir():
        return None
    subdirs = sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs or any(d.name not in SPLIT_DIRS for d in subdirs):
        return None
    splits: dict[str, Path] = {}
    for d in subdirs:
        split = SPLIT_DIRS[d.name]
        if split in splits:
            raise UsageError(f"data.path: '{p}' has both {splits[split].name}/ and {d.name}/; keep one validation "
                             "split (validation/, val/ or valid/).")
        splits[split] = d
    if "train" not in splits:
        raise UsageError(f"data.path: '{p}' has the split sub-folders {', '.join(d.name + '/' for d in subdirs)} "
                         "but no train/; add train/, or point data.train, data.validation and data.test at them.")
    loose = [f.name for f in p.iterdir() if f.is_file() and f.suffix.lower() in _image_extensions()]
    if loose:
        raise UsageError(f"data.path: '{p}' has split sub-folders ({', '.join(d.name + '/' for d in subdirs)}) and "
                         f"{len(loose)} image file(s) beside them (e.g. '{loose[0]}'), which belong to no split; "
                         "move them into a split.")
    return splits


def _image_extensions() -> set[str]:
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    return {e.lower() for e in ImageFolder.EXTENSIONS}


# ------------------------------------------------------------------------------------------------ data.size
def image_shapes(path: str, key: str = "data.path") -> Counter:
    """``Counter({(width, height): images})`` of a folder or ``.npz``, from the files' headers (no decoding):
    what ``data.size=null`` resolves from before a run starts. Unreadable files are left to the loader."""
    from PIL import Image

    p = checked_input(path, key)
    if p.is_file():
        shape = _npz_shape(p, key)
        return Counter({(shape[1], shape[0]): shape[2]}) if shape else Counter()
    shapes: Counter = Counter()
    for file in _list_images(p, key)[0]:
        try:
            with Image.open(file) as img:
                shapes[img.size] += 1
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # named (or skipped) by the loader, as data.on_error says
    return shapes


def native_size(shapes: Counter, where: str) -> int:
    """The side of the images ``shapes`` counts when they all share one square size; otherwise a ``UsageError``
    naming ``data.size`` and the sizes found. Resizing to the most common size instead would pick the resolution,
    which sets the cost of every step, behind the user's back (a photo folder's most common size can be 4000x3000)."""
    if not shapes:
        raise UsageError(f"data.size: no readable image in {where} to take the size from; set data.size=N.")
    if len(shapes) == 1:
        (w, h), = shapes
        if w == h:
            return int(w)
        raise UsageError(f"data.size: the images in {where} are {w}x{h} (width x height), not square; set "
                         f"data.size=N to resize them to N x N (e.g. data.size={max(w, h)}).")
    common = shapes.most_common()
    found = ", ".join(f"{w}x{h} ({n} image{'s' if n > 1 else ''})" for (w, h), n in common[:6])
    found += f" and {len(common) - 6} more sizes" if len(common) > 6 else ""
    w, h = common[0][0]
    raise UsageError(f"data.size: the images in {where} have different sizes: {found}. Set data.size=N to resize "
                     f"them all to N x N (the most common size: data.size={max(w, h)}).")


# ------------------------------------------------------------------------------------------------- folders
def _load_folder(p: Path, size: int | None, channels: int, on_error: str, key: str):
    from PIL import Image

    files, labels, names = _list_images(p, key)
    mode = "L" if channels == 1 else "RGB"
    arrays, keep, bad = [], [], []
    shapes: Counter = Counter()
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert(mode)
                shapes[img.size] += 1
                if size is not None:
                    img = img.resize((size, size), Image.Resampling.BILINEAR)  # PIL antialiases down
                arrays.append(np.asarray(img, dtype=np.uint8))
            keep.append(i)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL's decode errors
            bad.append((_rel(file, p), f"{type(exc).__name__}: {exc}"))
    if bad:
        listed = ", ".join(f"'{name}'" for name, _ in bad[:10])
        listed += f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        if on_error == "fail":
            raise UsageError(f"{key}: cannot read {len(bad)} image file(s) in '{p}': {listed} ({bad[0][1]}). "
                             "Fix or remove them, or pass data.on_error=skip to skip unreadable files.")
        warnings.warn(f"{key}: skipped {len(bad)} unreadable image file(s) in '{p}': {listed}", stacklevel=3)
    if not arrays:
        raise UsageError(f"{key}: no readable image in '{p}'. Point {key} at a folder of images.")
    if size is None:
        native_size(shapes, f"'{p}'")  # one square size, or an error naming data.size
    x = torch.from_numpy(np.stack(arrays)).float().div_(255.0)
    x = x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([labels[i] for i in keep], dtype=torch.long) if labels is not None else None
    return x, y, names


def _list_images(p: Path, key: str = "data.path") -> tuple[list[str], list[int] | None, list[str]]:
    """Image paths, their labels and the class names, through ``datasets``' ``imagefolder`` builder (labels
    when there are >= 2 sub-folders at the same depth; its image extensions; offline)."""
    import datasets

    # data_files="**" keeps every file in one split: without it, sub-folders named train/test/validation
    # would be taken for splits instead of classes or data (official splits are found by split_folders).
    try:
        ds = datasets.load_dataset("imagefolder", data_dir=str(p), data_files={"train": "**"}, split="train")
    except Exception as exc:  # an empty folder surfaces as "corresponds to no data" or FileNotFoundError
        if not any(f.is_file() for f in p.rglob("*")) or "no data" in str(exc) or isinstance(exc, FileNotFoundError):
            raise UsageError(f"{key}: folder '{p}' has no image files (png, jpg, bmp, gif, tiff, webp, ...). "
                             f"Point {key} at a folder of images, one sub-folder per class.") from exc
        raise UsageError(f"{key}: cannot list images in '{p}': {type(exc).__name__}: {str(exc)[:300]}") from exc
    ds = ds.cast_column("image", datasets.Image(decode=False))  # decode ourselves, to name a broken file
    files = [row["path"] for row in ds["image"]]
    if "label" in ds.column_names and isinstance(ds.features["label"], datasets.ClassLabel):
        return files, list(ds["label"]), list(ds.features["label"].names)
    return files, None, []


def one_class_folder(files_root: Path) -> str | None:
    """The name of the one sub-folder that holds all of a folder's images, if so: a validation or test split
    may hold a single class, which ``imagefolder`` (labels from >= 2 sub-folders) reads as unlabeled."""
    subdirs = [d for d in files_root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    exts = _image_extensions()
    if len(subdirs) != 1 or any(f.is_file() and f.suffix.lower() in exts for f in files_root.iterdir()):
        return None
    inner = subdirs[0]
    if any(d.is_dir() for d in inner.iterdir()):
        return None
    return inner.name


def _rel(file: str, root: Path) -> str:
    try:
        return str(Path(file).relative_to(root))
    except ValueError:
        return str(file)


# ----------------------------------------------------------------------------------------------------- npz
def _load_npz(p: Path, size: int | None, channels: int, key: str = "data.path"):
    try:
        with np.load(p, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise UsageError(f"{key}: cannot read '{p}' as an .npz archive: {type(exc).__name__}: {exc}") from exc
    if "x" not in arrays:
        raise UsageError(f"{key}: '{p}' has no 'x' array (it has: {', '.join(arrays) or 'nothing'}). Save the "
                         "images as np.savez(path, x=images, y=labels).")
    x = _to_nchw(arrays["x"], p, key)
    n = x.shape[0]
    x = _to_channels(x, channels)
    if size is None:
        size = native_size(Counter({(x.shape[-1], x.shape[-2]): n}), f"'{p}'")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    y, names = None, []
    if "y" in arrays:
        raw = arrays["y"]
        if raw.shape != (n,):
            raise UsageError(f"{key}: '{p}' key 'y' has shape {raw.shape}; expected one label per image ({n},).")
        if raw.dtype.kind in "US":
            names = sorted({str(v) for v in raw})
            index = {name: i for i, name in enumerate(names)}
            y = torch.tensor([index[str(v)] for v in raw], dtype=torch.long)
        elif raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and np.all(raw == np.round(raw))):
            if n and raw.min() < 0:
                raise UsageError(f"{key}: '{p}' key 'y' has negative labels; use labels 0..K-1.")
            y = torch.from_numpy(raw.astype(np.int64))
            names = [str(i) for i in range(int(raw.max()) + 1 if n else 0)]
        else:
            raise UsageError(f"{key}: '{p}' key 'y' must hold integer or string labels, got dtype {raw.dtype}.")
    return x.contiguous(), y, names


def _npz_shape(p: Path, key: str) -> tuple[int, int, int] | None:
    """``(height, width, N)`` of an ``.npz``'s ``x`` from its header, without reading the pixels; None when the
    archive cannot be read that way (the loader then names the problem)."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as zf, zf.open("x.npy") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape = read(f)[0]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None
    layout = _layout(tuple(shape))
    if layout is None or shape[0] == 0:
        return None
    h, w = (shape[1], shape[2]) if layout in ("nhw", "nhwc") else (shape[2], shape[3])
    return int(h), int(w), int(shape[0])


def _layout(shape: tuple[int, ...]) -> str | None:
    """How an ``x`` array of this shape is laid out: ``nhw``, ``nhwc`` or ``nchw`` (None: none of them)."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) != 4:
        return None
    if shape[-1] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "nhwc"
    return "nchw" if shape[1] in (1, 3, 4) else None


def _to_nchw(raw: np.ndarray, p: Path, key: str = "data.path") -> torch.Tensor:
    """``x`` in any of the accepted layouts -> float ``[N, C, H, W]`` in [0, 1]."""
    if raw.dtype.kind not in "uif" or raw.ndim not in (3, 4) or raw.shape[0] == 0:
        raise UsageError(f"{key}: '{p}' key 'x' must be a non-empty numeric array [N, H, W], [N, H, W, C] or "
                         f"[N, C, H, W]; got dtype {raw.dtype} shape {raw.shape}.")
    x = torch.from_numpy(raw.astype(np.float32))
    layout = _layout(raw.shape)
    if layout == "nhw":
        x = x.unsqueeze(1)
    elif layout == "nhwc":
        x = x.permute(0, 3, 1, 2)  # channels last
    elif layout is None:
        raise UsageError(f"{key}: '{p}' key 'x' has shape {raw.shape}: no channel axis of size 1, 3 or 4 "
                         "(expected [N, H, W], [N, H, W, C] or [N, C, H, W]).")
    lo, hi = float(x.min()), float(x.max())
    if raw.dtype == np.uint8 or (hi > 1.0 and lo >= 0.0 and hi <= 255.0):
        x = x / 255.0
    elif lo < 0.0 or hi > 1.0:
        raise UsageError(f"{key}: '{p}' key 'x' has values in [{lo:g}, {hi:g}]; store pixels as uint8 0..255 or "
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
