"""Classification metrics from a confusion matrix (no extra dependency, exact for any label set)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def split_metrics(report: dict, split: str) -> dict[str, float]:
    """The headline numbers of a report as run metrics: ``{"test/accuracy": ..., "test/macro_f1": ..., ...}``."""
    short = "val" if split in ("validation", "val") else split
    return {f"{short}/{k}": report[k] for k in ("accuracy", "macro_f1", "loss")}


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, names: list[str]) -> dict:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support; rows of ``confusion`` = true class."""
    cm = confusion_matrix(y_true, y_pred, len(names))
    tp = np.diag(cm).astype(float)
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0  # macro average over classes that occur in the evaluated split
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
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
