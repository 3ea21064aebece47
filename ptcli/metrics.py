"""Classification metrics: accuracy, macro-F1 and per-class precision/recall/F1/support with the confusion
matrix, computed by ``sklearn.metrics`` over a fixed label set (every class of the run, present or not)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``[num_classes, num_classes]`` counts, rows = true class, columns = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    if y_true.size == 0:  # scikit-learn refuses an empty split; its confusion matrix is all zeros
        return np.zeros((num_classes, num_classes), dtype=np.int64)
    from sklearn.metrics import confusion_matrix as sk_confusion_matrix

    return sk_confusion_matrix(y_true, y_pred, labels=np.arange(num_classes)).astype(np.int64)


def split_metrics(report: dict, split: str) -> dict[str, float]:
    """The headline numbers of a report as run metrics: ``{"test/accuracy": ..., "test/macro_f1": ..., ...}``."""
    short = "val" if split in ("validation", "val") else split
    return {f"{short}/{k}": report[k] for k in ("accuracy", "macro_f1", "loss")}


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support; rows of ``confusion`` = true class.

    ``macro_f1`` averages F1 over the classes that occur in the evaluated split (scikit-learn's
    ``f1_score(average="macro", labels=<classes present>)``): a class absent from a small test split would add
    a 0 that says nothing about the model. A class with no prediction (or no example) scores 0, not a warning.
    """
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    k = len(names)
    cm = confusion_matrix(y_true, y_pred, k)
    if y_true.size:
        from sklearn.metrics import precision_recall_fscore_support

        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(k), average=None, zero_division=0)
    else:
        precision = recall = f1 = np.zeros(k)
        support = np.zeros(k, dtype=np.int64)
    present = support > 0
    return {
        "accuracy": float(np.trace(cm) / max(cm.sum(), 1)),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            n: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for n, p, r, f, s in zip(names, precision, recall, f1, support, strict=True)
        },
        "confusion": cm.tolist(),
        "labels": list(names),
    }


def score_logits(logits: Any, y: Any, names: list[str]) -> dict:
    """The classification report of ``logits [N, classes]`` against labels ``y [N]`` (torch or numpy), with
    the cross-entropy ``loss``."""
    import torch
    import torch.nn.functional as F

    logits, y = torch.as_tensor(logits).float(), torch.as_tensor(y).long()
    report = classification_report(y.numpy(), logits.argmax(-1).numpy(), names)
    report["loss"] = float(F.cross_entropy(logits, y))
    return report


def score_best(run: Any, model: Any, splits: Iterable[str], score: Callable[[str], dict]) -> dict[str, float]:
    """A fine-tune's final metrics: its best checkpoint scored on ``splits`` (``score(split)`` gives the report);
    the test report is saved as ``test_report.json``."""
    import json

    from ptcli import distributed as dist
    from ptcli.checkpoint import load_weights

    dist.load_full_model_state(model, load_weights(run.checkpoints / "best"))
    model.eval()
    metrics: dict[str, float] = {}
    for split in splits:
        report = score(split)
        metrics.update(split_metrics(report, split))
        if split == "test":
            run.write_text("test_report.json", json.dumps(report, indent=2) + "\n")
    return metrics
