"""Data sources: where text (and optional labels) come from.

Every source returns a ``datasets.DatasetDict`` with a ``train`` and a ``validation`` split (and
``test`` when the source has one), a ``text`` column and, when labels exist, a ``label`` column.
Bad input is a ``UsageError`` that names the config key, file and columns involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import MISSING

from ptcli.errors import UsageError


# One schema per source (conf/data/<name>.yaml extends it), so a key that the chosen source does not read
# (``data=text data.size=64``) is refused like a typo. Every source has the keys of DataSourceConfig, which
# the recipes read whatever the data (debug=smoke sets block_size and max_train_examples for any source).
@dataclass
class DataSourceConfig:
    _target_: str = MISSING
    # Fine-tuning: stratified, seeded subsample of the training split; null = all.
    labels_per_class: int | None = None
    # Keep at most this many training examples (quick experiments and CI); null = all.
    max_train_examples: int | None = None
    # Text: tokens per packed block (pre-training, evaluation).
    block_size: int = 128


@dataclass
class PydocsConfig(DataSourceConfig):
    """``data=pydocs``: fixed train/validation/test split of the standard library's docstrings."""

    _target_: str = "ptcli.data.sources.Pydocs"
    # package: the top-level package (topic words decide it); kind: module | class | function | method, what the
    # docstring documents (its form decides it: README "A task that is not lexical").
    label: str = "package"
    num_labels: int = 20  # label=package: the most frequent top-level packages kept as labels


@dataclass
class TextSourceConfig(DataSourceConfig):
    """The keys of the user's text sources (files, ``datasets``)."""

    text_column: str = "text"
    label_column: str = "label"
    # Share of train held out (seeded) for validation when the source has no validation split.
    val_fraction: float = 0.05
    # ptcli pretrain: stream the training corpus (read -> tokenize -> pack on the fly, sharded by rank and
    # data.num_workers, resumable) instead of loading it; memory stays flat. Needs trainer.max_steps. See
    # ptcli/data/streaming.py.
    streaming: bool = False
    # Streaming: blocks shuffled together (seeded, per chunk of this many blocks); 1 = corpus order.
    shuffle_buffer: int = 10000
    # Streaming: validation blocks kept in memory (from the validation split, or held out from train:
    # every round(1/val_fraction)-th document until there are this many blocks).
    val_blocks: int = 512
    # Streaming: data-loader worker processes that read and tokenize (0 = in the training process).
    num_workers: int = 0


@dataclass
class TextFilesConfig(TextSourceConfig):
    """``data=text``: file paths (csv, tsv, json, jsonl, parquet or txt, by extension)."""

    _target_: str = "ptcli.data.sources.TextFiles"
    train: str | None = None  # required: TextFiles refuses a run without it, saying how to set it
    validation: str | None = None
    test: str | None = None


@dataclass
class HubDatasetConfig(TextSourceConfig):
    """``data=hf``: a ``datasets`` hub name or a local dataset directory."""

    _target_: str = "ptcli.data.sources.HubDataset"
    name: str | None = None  # required (HubDataset says so)
    config: str | None = None


@dataclass
class DigitsConfig(DataSourceConfig):
    """``data=digits``: scikit-learn's 8x8 grayscale digits, a fixed split; nothing to choose but the shared keys."""

    _target_: str = "ptcli.data.sources.Digits"


@dataclass
class ImageFilesConfig(DataSourceConfig):
    """``data=images``: a folder (class sub-folders or flat; or train/ validation/ test/ sub-folders) or an .npz
    file as ``data.path``, or the official splits as ``data.train`` / ``data.validation`` / ``data.test``."""

    _target_: str = "ptcli.data.sources.ImageFiles"
    path: str | None = None  # this or data.train is required (ImageFiles says so)
    # Official splits, each a folder or an .npz (as data=text takes files): train is required with the others;
    # without validation a seeded data.val_fraction of train is held out; without test there is none.
    train: str | None = None
    validation: str | None = None
    test: str | None = None
    # Images are resized to size x size; null = their own size, when they all share one square size (else an
    # error naming the sizes found). A run's config.yaml holds the size it used (ptcli.runconfig).
    size: int | None = None
    channels: int = 1  # 1 (grayscale) or 3 (RGB)
    on_error: str = "fail"  # fail | skip (unreadable image files)
    # Seeded, stratified hold-outs of one data.path: a tenth each, so that small folders still give every
    # class a few validation and test images. With official splits, val_fraction holds out validation from
    # train when there is no validation split.
    val_fraction: float = 0.1
    test_fraction: float = 0.1


# Keys of the one flat DataConfig that served every source before each had its own schema. A run directory
# written then carries all of them; a loaded data section drops those its source's schema lacks (the source
# never read them, so nothing about the run changes). ptcli.build.load_run_config applies it.
LEGACY_FLAT_KEYS = frozenset({
    "num_labels", "train", "validation", "test", "name", "config", "text_column", "label_column", "val_fraction",
    "test_fraction", "labels_per_class", "max_train_examples", "block_size", "streaming", "shuffle_buffer",
    "val_blocks", "num_workers", "path", "size", "channels", "on_error",
})

SOURCE_SCHEMAS: dict[str, type[DataSourceConfig]] = {
    "pydocs": PydocsConfig, "text": TextFilesConfig, "hf": HubDatasetConfig, "digits": DigitsConfig,
    "images": ImageFilesConfig,
}

_NO_STREAMING = ("data.streaming=true is supported only by `ptcli pretrain` with data=text or data=hf (this run: "
                 "{}). Drop data.streaming=true (small corpora load into memory anyway), or use data=text / data=hf.")


def _read_errors() -> tuple[type[BaseException], ...]:
    # What reading a file or dataset raises for bad input (parsers, arrow, datasets' own wrappers). A bug in
    # ptcli is none of these, so it surfaces as an internal error instead of being blamed on the data.
    # (Called in the except clause itself, which Python evaluates only once something was raised.)
    import datasets.exceptions
    import pyarrow

    return (OSError, ValueError, TypeError, UnicodeError, KeyError, IndexError, pyarrow.ArrowException,
            datasets.exceptions.DatasetsError)


FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text"}


class DataSource:
    """Common options (all of ``conf/data/*``) and the split/subsample logic shared by sources."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        # A source's keys and their defaults: its schema (``*Config`` above), which Hydra passes in whole.
        self.text_column: str = options.get("text_column") or TextSourceConfig.text_column
        self.label_column: str = options.get("label_column") or TextSourceConfig.label_column
        self.val_fraction: float = float(options.get("val_fraction", TextSourceConfig.val_fraction))
        self.max_train_examples: int | None = options.get("max_train_examples")
        self.seed: int = int(options.get("seed", 0))

    def describe(self) -> str:
        return type(self).__name__

    # Sources that can be read as a stream (``data.streaming=true``, see ptcli/data/streaming.py).
    streamable = False

    def check_not_streaming(self) -> None:
        """Loading a whole split into memory: refuse ``data.streaming=true`` with a clear message."""
        if self.options.get("streaming"):
            raise UsageError(_NO_STREAMING.format(self.describe()))

    def stream(self, split: str, check: bool = False) -> Any:
        """``split`` as a ``datasets.IterableDataset`` with a ``text`` column (None if the source lacks it);
        ``check``: read its first row now, so bad input fails before training."""
        raise UsageError(_NO_STREAMING.format(self.describe()))

    def _load(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self):
        import datasets

        self.check_not_streaming()
        dd = self._load()
        if "train" not in dd or len(dd["train"]) == 0:
            raise UsageError(f"{self.describe()}: the training split is empty. Point data.train at a file with rows.")
        if "validation" not in dd:
            if not 0 < self.val_fraction < 1:
                raise UsageError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
            if len(dd["train"]) < 2:
                raise UsageError(f"{self.describe()}: need at least 2 training rows to hold out validation; "
                                 "pass data.validation=FILE.")
            held = dd["train"].train_test_split(test_size=self.val_fraction, seed=self.seed, shuffle=True)
            dd = datasets.DatasetDict({**dd, "train": held["train"], "validation": held["test"]})
        if self.max_train_examples is not None:
            n = int(self.max_train_examples)
            if n <= 0:
                raise UsageError(f"data.max_train_examples must be positive, got {n}")
            train = dd["train"].shuffle(seed=self.seed)
            dd["train"] = train.select(range(min(n, len(train))))
        return dd


class Pydocs(DataSource):
    """Docstrings of Python's standard library; label = top-level package (most frequent N kept)."""

    def describe(self) -> str:
        return "data=pydocs"

    def _load(self):
        from collections import Counter

        from ptcli.data.pydocs import load_pydocs

        label = self.options.get("label") or PydocsConfig.label
        if label not in ("package", "kind"):
            raise UsageError(f"data.label={label!r}: data=pydocs has the labels 'package' (the top-level package) "
                             "and 'kind' (module, class, function or method).")
        dd = load_pydocs()
        if label == "kind":
            return dd.map(lambda b: {"label": b["kind"]}, batched=True, desc="pydocs labels")
        num_labels = int(self.options.get("num_labels") or PydocsConfig.num_labels)
        top = {p for p, _ in Counter(dd["train"]["package"]).most_common(num_labels)}

        def to_label(batch: dict) -> dict:
            return {"label": [p if p in top else None for p in batch["package"]]}

        return dd.map(to_label, batched=True, desc="pydocs labels")


class TextFiles(DataSource):
    """The user's files: ``data.train`` / ``data.validation`` / ``data.test``."""

    streamable = True

    def describe(self) -> str:
        return f"data.train={self.options.get('train')}"

    def _load(self):
        import datasets

        dd = {}
        for split, p in self._files().items():
            dd[split] = self._read(split, p)
        return datasets.DatasetDict(dd)

    def stream(self, split: str, check: bool = False) -> Any:
        import datasets

        p = self._files().get(split)
        if p is None:
            return None
        kwargs: dict[str, Any] = {"sep": "\t"} if p.suffix.lower() == ".tsv" else {}
        ds = datasets.load_dataset(FORMATS[p.suffix.lower()], data_files={"data": str(p)}, split="data",
                                   streaming=True, **kwargs)
        return _stream_text_column(ds, self.text_column, f"data.{split}='{p}'", check)

    def _files(self) -> dict[str, Path]:
        files = {}
        for split in ("train", "validation", "test"):
            path = self.options.get(split)
            if path is None:
                continue
            p = Path(str(path)).expanduser()
            if not p.is_file():
                raise UsageError(f"data.{split}: file '{path}' does not exist (or is not a file). "
                                 f"Pass an existing csv, tsv, json, jsonl, parquet or txt file.")
            if p.suffix.lower() not in FORMATS:
                raise UsageError(f"data.{split}: cannot tell the format of '{path}' from its extension "
                                 f"'{p.suffix}'. Use one of: {', '.join(sorted(FORMATS))}.")
            files[split] = p
        if "train" not in files:
            raise UsageError("data.train is required with data=text: data.train=path/to/file.csv")
        return files

    def _read(self, split: str, p: Path):
        import datasets

        fmt = FORMATS[p.suffix.lower()]
        kwargs: dict[str, Any] = {"sep": "\t"} if p.suffix.lower() == ".tsv" else {}
        try:
            ds = datasets.load_dataset(fmt, data_files={"data": str(p)}, split="data", **kwargs)
        except _read_errors() as exc:  # datasets wraps parser errors in several layers
            root = exc
            while root.__cause__ is not None or root.__context__ is not None:
                root = root.__cause__ or root.__context__  # type: ignore[assignment]
            raise UsageError(f"data.{split}: cannot read '{p}' as {fmt}: {type(root).__name__}: "
                             f"{str(root).strip()[:400]}. Fix the file or check its extension.") from exc
        if len(ds) == 0:
            raise UsageError(f"data.{split}: '{p}' has no rows.")
        return _select_columns(ds, self.text_column, self.label_column, f"data.{split}='{p}'")


class HubDataset(DataSource):
    """A ``datasets`` dataset by hub name, a local dataset directory, or a ``save_to_disk`` folder."""

    streamable = True
    downloads = True  # names data to fetch: never loaded because a foreign run's config names it (evaluate)

    def describe(self) -> str:
        return f"data.name={self.options.get('name')}"

    def stream(self, split: str, check: bool = False) -> Any:
        """Hub and local data-file datasets stream through ``load_dataset(..., streaming=True)``; a
        ``save_to_disk`` folder is memory-mapped and iterated (``to_iterable_dataset``)."""
        import datasets

        dd = self._open(streaming=True)
        if isinstance(dd, (datasets.Dataset, datasets.IterableDataset)):
            dd = {"train": dd}
        if split == "validation" and "validation" not in dd and "valid" in dd:
            split = "valid"
        if split == "train" and "train" not in dd:
            raise UsageError(f"data.name={self.options.get('name')}: no 'train' split; splits are {sorted(dd)}.")
        ds = dd.get(split)
        if ds is None:
            return None
        if isinstance(ds, datasets.Dataset):
            ds = ds.to_iterable_dataset()
        return _stream_text_column(ds, self.text_column, f"data.name={self.options.get('name')} [{split}]", check)

    def _open(self, streaming: bool = False):
        import datasets

        if not self.options.get("name"):
            raise UsageError("data.name is required with data=hf: a datasets hub name or a local dataset directory, "
                             "e.g. data.name=wikitext data.config=wikitext-2-raw-v1")
        name = str(self.options.get("name"))
        config = self.options.get("config")
        local = Path(name).expanduser()
        try:
            if (local / "dataset_dict.json").is_file() or (local / "dataset_info.json").is_file():
                return datasets.load_from_disk(str(local))
            return datasets.load_dataset(str(local) if local.is_dir() else name, config, streaming=streaming)
        except _read_errors() as exc:
            from ptcli.errors import load_hint

            # "offline" only when that is why: an online failure (a typo, a bad config name) says so instead.
            hint = load_hint(exc, "the dataset")
            raise UsageError(f"data.name: cannot load dataset '{name}'"
                             f"{f' (config {config})' if config else ''}: {str(exc).strip()[:300]}. {hint}") from exc

    def _load(self):
        import datasets

        name = str(self.options.get("name"))
        dd = self._open()
        if isinstance(dd, datasets.Dataset):
            dd = datasets.DatasetDict({"train": dd})
        if "validation" not in dd and "valid" in dd:
            dd["validation"] = dd.pop("valid")
        if "train" not in dd:
            raise UsageError(f"data.name={name}: no 'train' split; splits are {sorted(dd)}.")
        return datasets.DatasetDict(
            {s: _select_columns(dd[s], self.text_column, self.label_column, f"data.name={name} [{s}]")
             for s in ("train", "validation", "test") if s in dd}
        )


def _stream_text_column(ds, text_column: str, where: str, check: bool):
    """Keep only the text column of a streamed split, named ``text``. ``check``: read the first row now
    (columns of csv/json streams are unknown until read) and turn bad input into a ``UsageError``."""
    if check:
        try:
            first = next(iter(ds.take(1)), None)
        except Exception as exc:
            raise UsageError(f"{where}: cannot read it: {type(exc).__name__}: {str(exc).strip()[:400]}") from exc
        if first is None:
            raise UsageError(f"{where}: no rows.")
        if text_column not in first:
            raise UsageError(f"{where}: no text column '{text_column}'. Columns are: {', '.join(first)}. "
                             f"Set data.text_column=<one of them>.")
    if text_column != "text":
        ds = ds.rename_column(text_column, "text")
    return ds.select_columns(["text"])


def _select_columns(ds, text_column: str, label_column: str, where: str):
    cols = ds.column_names
    if text_column not in cols:
        raise UsageError(f"{where}: no text column '{text_column}'. Columns are: {', '.join(cols)}. "
                         f"Set data.text_column=<one of them>.")
    keep = {text_column: "text"}
    if label_column in cols:
        keep[label_column] = "label"
    ds = ds.select_columns(list(keep))
    return ds.rename_columns({k: v for k, v in keep.items() if k != v})


class ImageSource(DataSource):
    """Image sources return tensors: ``{split: (x [N, C, H, W] in [0, 1], y [N] or None)}`` + class names."""

    modality = "image"
    # The side every image of this source has (digits: 8), or None when data.size decides (``image_size``).
    size: int | None = None

    def load(self):
        raise UsageError(f"{self.describe()} holds images; use model=convnet with objective=simclr (pretrain) "
                         "or a convnet pretrain run (finetune).")

    def load_images(self) -> tuple[dict[str, tuple[Any, Any]], list[str]]:
        raise NotImplementedError

    def image_size(self) -> int:
        """The side the images are loaded at."""
        assert self.size is not None
        return self.size

    def origins(self) -> dict[str, str]:
        """Where each split comes from, for run.json."""
        return {}


class Digits(ImageSource):
    """scikit-learn's bundled 8x8 digits: fixed stratified train/validation/test split, label = digit."""

    size = 8

    def describe(self) -> str:
        return "data=digits"

    def load_images(self):
        from ptcli.data.images import load_digits_splits

        self.check_not_streaming()
        splits = load_digits_splits(self.seed)
        return _limit(splits, self.max_train_examples, self.seed), [str(d) for d in range(10)]

    def origins(self) -> dict[str, str]:
        return {s: "scikit-learn digits, fixed stratified 70/10/20 split" for s in ("train", "validation", "test")}


IMAGE_SPLITS = ("train", "validation", "test")


class ImageFiles(ImageSource):
    """The user's images: ``data.path`` = a folder (class sub-folders = labels, or flat) or an ``.npz`` file, split
    into seeded, stratified hold-outs (``data.val_fraction``, ``data.test_fraction``); or official splits: a
    ``data.path`` folder whose sub-folders are ``train/`` (required), ``validation/`` (or ``val/``, ``valid/``) and
    ``test/``, or ``data.train`` / ``data.validation`` / ``data.test``, the rules of ``data=text``: train is
    required, a missing validation split is held out from train (``data.val_fraction``), a missing test split
    stays empty. The classes of validation and test must be classes of train.
    """

    def describe(self) -> str:
        if self.options.get("train") is not None:
            return f"data.train={self.options.get('train')}"
        return f"data.path={self.options.get('path')}"

    def inputs(self) -> dict[str, tuple[str, Path]]:
        """``{split: (config key, path)}``; the split ``"all"`` is one pool to hold validation and test out of."""
        from ptcli.data.images import checked_input, split_folders

        opt = self.options
        given = {s: opt.get(s) for s in IMAGE_SPLITS if opt.get(s) is not None}
        path = opt.get("path")
        if path and given:
            raise UsageError(f"data.path and data.{next(iter(given))} both given: pass either data.path (one folder "
                             "or .npz, split into train/validation/test unless it has train/ validation/ test/ "
                             "sub-folders) or data.train [data.validation] [data.test].")
        if given:
            if "train" not in given:
                raise UsageError("data.train is required with data=images when data.validation or data.test is "
                                 "given: data.train=path/to/train (a folder or .npz)")
            return {s: (f"data.{s}", checked_input(v, f"data.{s}")) for s, v in given.items()}
        if not path:
            raise UsageError("data.path is required with data=images: a folder of images or an .npz file "
                             "(or data.train=... [data.validation=...] [data.test=...]).")
        p = checked_input(path, "data.path")
        folders = split_folders(p)
        if folders:
            return {s: (f"data.path ({folders[s].name}/)", folders[s]) for s in IMAGE_SPLITS if s in folders}
        return {"all": ("data.path", p)}

    def _options(self) -> tuple[int, str]:
        opt, schema = self.options, ImageFilesConfig
        return int(opt.get("channels") or schema.channels), str(opt.get("on_error", schema.on_error))

    def image_size(self) -> int:
        """``data.size``, or when it is null the images' own size (all splits' images must share one)."""
        size = self.options.get("size")
        if size is not None:
            return size
        from collections import Counter

        from ptcli.data.images import image_shapes, native_size

        inputs = self.inputs()
        shapes: Counter = Counter()
        for key, p in inputs.values():
            shapes.update(image_shapes(str(p), key))
        where = (f"data.path='{self.options.get('path')}'" if self.options.get("path")
                 else " and ".join(f"{key}='{p}'" for key, p in inputs.values()))
        return native_size(shapes, where)

    def origins(self) -> dict[str, str]:
        inputs = self.inputs()
        opt, schema = self.options, ImageFilesConfig
        held = f"seed {self.seed}, stratified"
        val = f"data.val_fraction={opt.get('val_fraction', schema.val_fraction)}"
        if "all" in inputs:
            key, p = inputs["all"]
            test = f"data.test_fraction={opt.get('test_fraction', schema.test_fraction)}"
            return {"train": f"{key}='{p}' (what is not held out)",
                    "validation": f"{key}='{p}' (held out: {val}, {held})",
                    "test": f"{key}='{p}' (held out: {test}, {held})"}
        out = {s: f"{key}='{p}'" for s, (key, p) in inputs.items()}
        out.setdefault("validation", f"held out from train ({val}, {held})")
        out.setdefault("test", "none")
        return {s: out[s] for s in IMAGE_SPLITS}

    def load_images(self):
        from ptcli.data.images import load_image_folder

        self.check_not_streaming()
        inputs = self.inputs()
        size = self.image_size()
        channels, on_error = self._options()
        if "all" in inputs:
            key, p = inputs["all"]
            x, y, names = load_image_folder(str(p), size, channels, on_error, key)
            return _limit(self._hold_out(x, y, names, key), self.max_train_examples, self.seed), names
        loaded = {s: load_image_folder(str(p), size, channels, on_error, key) for s, (key, p) in inputs.items()}
        x, y, names = loaded["train"]
        splits = {"train": (x, y)}
        for split in ("validation", "test"):
            if split in loaded:
                splits[split] = self._align(split, *inputs[split], loaded[split], y is not None, names)
        if "validation" not in splits:
            key = inputs["train"][0]
            held = self._hold_out(x, y, names, key, test=False)
            splits["train"], splits["validation"] = held["train"], held["validation"]
        if "test" not in splits:
            x_train, y_train = splits["train"]
            splits["test"] = (x_train[:0], y_train[:0] if y_train is not None else None)
        return _limit(splits, self.max_train_examples, self.seed), names

    def _align(self, split: str, key: str, p: Path, loaded: tuple, labeled: bool, names: list[str]):
        """A validation/test split's labels as indices into train's class names; its classes must be train's."""
        import torch

        from ptcli.data.images import one_class_folder

        x, y, own = loaded
        if labeled and y is None and p.is_dir() and (only := one_class_folder(p)) is not None:
            y, own = torch.zeros(len(x), dtype=torch.long), [only]  # one class sub-folder: still labeled
        if labeled != (y is not None):
            has, lacks = ("the training split", f"the {split} split") if labeled else (f"the {split} split",
                                                                                      "the training split")
            raise UsageError(f"{key}: {has} has class labels but {lacks} ('{p}') has none (a flat folder, or an "
                             ".npz without y). Give every split the same class sub-folders (or y), or none.")
        if y is None:
            return x, None
        index = {name: i for i, name in enumerate(names)}
        used = sorted({own[i] for i in y.unique().tolist()})
        unknown = [name for name in used if name not in index]
        if unknown:
            shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            raise UsageError(f"{key}: the {split} split ('{p}') has class '{unknown[0]}'"
                             f"{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}, which the training "
                             f"split lacks (its classes: {shown}). Every {split} class must also be a training "
                             "class: add its images to train, or remove them.")
        remap = torch.tensor([index.get(name, -1) for name in own], dtype=torch.long)
        return x, remap[y]

    def _hold_out(self, x, y, names: list[str], key: str, test: bool = True) -> dict[str, tuple[Any, Any]]:
        """Seeded, stratified hold-outs of one pool: validation (and test) by data.val_fraction (test_fraction)."""
        import numpy as np
        import torch

        opt, schema = self.options, ImageFilesConfig
        fractions = (float(opt.get("val_fraction", schema.val_fraction)),
                     float(opt.get("test_fraction", schema.test_fraction)))
        need = 10 if test else 5
        if len(x) < need:
            what = "validation and test" if test else "validation"
            fix = "" if test else " Pass data.validation=FOLDER_OR_NPZ (or add a validation/ sub-folder)."
            raise UsageError(f"{key}: only {len(x)} images; need at least {need} to hold out {what} images.{fix}")
        rng = np.random.default_rng(self.seed)
        groups = [np.flatnonzero(y.numpy() == c) for c in range(len(names))] if y is not None else [np.arange(len(x))]
        parts: dict[str, list] = {"train": [], "validation": [], "test": []}
        for idx in groups:  # stratified: each class is split with the same fractions
            idx = rng.permutation(idx)
            n_val, n_test = (max(1, round(f * len(idx))) if len(idx) > 2 else 0 for f in fractions)
            n_test = n_test if test else 0
            parts["validation"].append(idx[:n_val])
            parts["test"].append(idx[n_val : n_val + n_test])
            parts["train"].append(idx[n_val + n_test :])
        splits = {}
        for name, chunks in parts.items():
            sel = torch.from_numpy(np.sort(np.concatenate(chunks)))
            splits[name] = (x[sel], y[sel] if y is not None else None)
        return splits


def _limit(splits: dict, n: int | None, seed: int) -> dict:
    if n is None:
        return splits
    import torch

    x, y = splits["train"]
    keep = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[: int(n)].sort().values
    return {**splits, "train": (x[keep], y[keep] if y is not None else None)}
