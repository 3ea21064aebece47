"""Label vocabularies and stratified label budgets."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptcli.errors import UsageError


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
