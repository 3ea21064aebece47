"""Label vocabularies and stratified label budgets."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ptcli.errors import UsageError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from ptcli.rundir import RunDir


class LabelMap:
    """Class names (strings, in a fixed order) <-> ids. Saved as ``labels.json`` in the run dir."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.index = {n: i for i, n in enumerate(names)}

    @classmethod
    def fit(cls, values: Sequence[Any], where: str = "data.label_column") -> LabelMap:
        present = [v for v in values if v is not None]
        if not present:
            raise UsageError(f"{where}: the training split has no labels. Fine-tuning needs a label column "
                             "(set data.label_column=<column>).")
        uniq = set(present)
        # Integers sort numerically (so 2 < 10); anything else sorts as text.
        ordered = sorted(uniq) if all(isinstance(v, (int, np.integer)) for v in uniq) else sorted(uniq, key=str)
        if len(ordered) < 2:
            raise UsageError(f"{where}: only one class ({ordered[0]!r}) in the training split; need at least 2.")
        return cls([str(v) for v in ordered])

    def encode(self, values: Sequence[Any], where: str) -> np.ndarray:
        unseen = sorted({str(v) for v in values if str(v) not in self.index})
        if unseen:
            shown = ", ".join(repr(u) for u in unseen[:10]) + (" ..." if len(unseen) > 10 else "")
            raise UsageError(f"{where}: labels {shown} were not seen in training; the model knows "
                             f"{', '.join(self.names[:20])}{' ...' if len(self.names) > 20 else ''}.")
        return np.array([self.index[str(v)] for v in values], dtype=np.int64)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"names": self.names}, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> LabelMap:
        try:
            names = json.loads(path.read_text())["names"]
        except (OSError, ValueError, KeyError) as exc:
            raise UsageError(f"cannot read label map '{path}': {exc}") from exc
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UsageError(f"label map '{path}' is malformed: 'names' must be a list of strings")
        return cls(names)


def stratified_subsample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of at most ``per_class`` examples of each class, drawn with ``seed``; sorted."""
    if per_class <= 0:
        raise UsageError(f"data.labels_per_class must be positive (or null for all), got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        chosen.append(rng.permutation(idx)[:per_class])
    return np.sort(np.concatenate(chosen))


def run_labels(cfg: DictConfig, run: RunDir, fit: Callable[[], LabelMap]) -> LabelMap:
    """The run's label map: on resume the one it started with (``labels.json``: its ids are the trained head's
    rows), else ``fit()``, saved."""
    path = run.path / "labels.json"
    if cfg.resume and path.is_file():
        return LabelMap.load(path)
    labels = fit()
    if run.writable:
        labels.save(path)
    return labels


def run_subsample(cfg: DictConfig, run: RunDir, y: np.ndarray) -> np.ndarray:
    """Indices of the training examples under ``data.labels_per_class``: on resume the ones the run started
    with (``subsample.json``), so it goes on training on the same examples, else a stratified seeded draw, saved."""
    path = run.path / "subsample.json"
    if cfg.resume and path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            keep = stored["train_indices"]
            same = stored.get("labels_per_class") == cfg.data.labels_per_class and stored.get("seed") == cfg.seed
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"resume={run.path}: cannot read {path}: {exc}. Restore the file, or start a new run "
                             "instead of resuming.") from exc
        if not same:
            raise UsageError(f"resume={run.path}: {path} was drawn with labels_per_class="
                             f"{stored.get('labels_per_class')} and seed={stored.get('seed')}, but the run's config "
                             f"has {cfg.data.labels_per_class} and {cfg.seed}. Restore the file, or start a new run "
                             "instead of resuming.")
        if not (isinstance(keep, list) and keep and all(type(i) is int and 0 <= i < len(y) for i in keep)):
            raise UsageError(f"resume={run.path}: {path}: 'train_indices' must be a non-empty list of indices into "
                             f"the {len(y)} training examples. Restore the file, or start a new run.")
        return np.array(keep, dtype=np.int64)
    keep = stratified_subsample(y, int(cfg.data.labels_per_class), cfg.seed)
    run.write_text("subsample.json", json.dumps({"labels_per_class": cfg.data.labels_per_class, "seed": cfg.seed,
                                                 "train_indices": keep.tolist()}) + "\n")
    return keep
