"""Frozen-feature probes: weighted kNN and a linear (logistic regression) probe.

Both take features already computed by a frozen encoder and return predicted labels for the test
features, so the caller computes whatever metric it reports. ``PROTOCOLS`` holds the parameters, to be
printed beside every score (solo-learn#221: a number without its protocol cannot be compared).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F

from ptcli.errors import UsageError

PROTOCOLS: dict[str, dict[str, Any]] = {
    "knn": {
        "description": "weighted kNN on frozen features (solo-learn solo/utils/knn.py): cosine similarity, "
                       "top-k neighbours, each votes for its class with weight exp(sim / T)",
        "k": 20,
        "temperature": 0.07,
        "similarity": "cosine",
    },
    "linear": {
        "description": "multinomial logistic regression (scikit-learn LogisticRegression, lbfgs, L2 penalty) on "
                       "frozen features standardized with the training mean/std (StandardScaler); deterministic; "
                       "a fit that has not converged in max_iter iterations is warned about",
        "solver": "lbfgs",
        "C": 1.0,
        "max_iter": 1000,
    },
}

_KNN_BUDGET = 1 << 24  # similarity entries per chunk (64 MiB in float32) whatever the test set size


def describe(protocol: str, **params: Any) -> str:
    """One line naming the probe and its parameters, e.g. ``knn(k=20, temperature=0.07, similarity=cosine)``."""
    spec = {k: v for k, v in PROTOCOLS[protocol].items() if k != "description"}
    spec.update(params)
    return f"{protocol}({', '.join(f'{k}={v}' for k, v in spec.items())})"


def _check(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, num_classes: int) -> None:
    if train_feats.dim() != 2 or test_feats.dim() != 2 or train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"features must be [N, D] with the same D, got {tuple(train_feats.shape)} and "
                         f"{tuple(test_feats.shape)}")
    if train_labels.shape != (train_feats.shape[0],):
        raise ValueError(f"train_labels must be [{train_feats.shape[0]}], got {tuple(train_labels.shape)}")
    if train_feats.shape[0] == 0:
        raise UsageError("the probe needs labeled training examples, and the training split has none with a label")
    if train_labels.min() < 0 or train_labels.max() >= num_classes:
        raise ValueError(f"train labels must be in [0, {num_classes}), got [{int(train_labels.min())}, "
                         f"{int(train_labels.max())}]")


@torch.no_grad()
def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, num_classes: int,
                 k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Weighted kNN: predicted labels ``[M]`` (long) for ``test_feats [M, D]``."""
    if k <= 0 or not temperature > 0:
        raise UsageError(f"kNN probe: k must be positive and temperature > 0, got k={k}, temperature={temperature}")
    _check(train_feats, train_labels, test_feats, num_classes)
    train = F.normalize(train_feats.float(), dim=1)
    test = F.normalize(test_feats.float(), dim=1)
    labels = train_labels.long().to(train.device)
    k = min(k, train.shape[0])
    chunk = max(1, _KNN_BUDGET // train.shape[0])
    preds = []
    # float32 even inside a bf16/fp16 autocast region (a run's evaluation): low-precision similarities lose the
    # neighbours' ranking, and scatter_add_ refuses to mix their dtype with the float32 votes.
    with torch.autocast(test.device.type, enabled=False):
        for start in range(0, test.shape[0], chunk):
            sim, idx = (test[start:start + chunk] @ train.t()).topk(k, dim=1)  # [b, k]
            votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
            votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
            preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=test.device)


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, num_classes: int,
                 C: float = 1.0, max_iter: int = 1000) -> torch.Tensor:
    """Multinomial logistic regression (``PROTOCOLS["linear"]``) on standardized frozen features; predicted labels
    ``[M]`` (long) for ``test_feats``. lbfgs on a convex problem: the result is a function of the inputs alone.
    A fit that stops at ``max_iter`` before converging warns (``ConvergenceWarning``): its score is a lower bound.
    """
    if not C > 0 or max_iter <= 0:
        raise UsageError(f"linear probe: C and max_iter must be positive, got C={C}, max_iter={max_iter}")
    _check(train_feats, train_labels, test_feats, num_classes)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = train_feats.detach().cpu().double().numpy()
    y = train_labels.detach().cpu().long().numpy()
    test = test_feats.detach().cpu().double().numpy()
    if len(set(y.tolist())) == 1:  # one class to learn: logistic regression is undefined, the answer is not
        return torch.full((test.shape[0],), int(y[0]), dtype=torch.long, device=test_feats.device)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, solver="lbfgs", max_iter=max_iter))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe.fit(x, y)
    converged = int(probe[-1].n_iter_.max()) < max_iter
    for w in caught:  # scikit-learn's warnings pass on; its ConvergenceWarning is replaced by one naming the probe
        if issubclass(w.category, ConvergenceWarning):
            converged = False
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not converged:
        warnings.warn(f"linear probe: lbfgs stopped at max_iter={max_iter} before converging "
                      f"({x.shape[0]} examples, {x.shape[1]} features); the score is that of an unconverged fit",
                      ConvergenceWarning, stacklevel=2)
    return torch.from_numpy(probe.predict(test)).long().to(test_feats.device)


@torch.no_grad()
def features(encoder: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    """A frozen encoder's features of ``x``, on the CPU (the encoder's train/eval mode is restored)."""
    was_training = encoder.training
    encoder.eval()
    out = torch.cat([encoder(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])
    encoder.train(was_training)
    return out


def probe_accuracy(probe: str, encoder: torch.nn.Module, train: tuple, test: tuple, num_classes: int,
                   device: torch.device) -> float:
    """Accuracy on ``test = (x, y)`` of the frozen-feature ``probe`` (``"knn"``: neighbours from ``train``;
    ``"linear"``: fit on ``train``), with its protocol's settings (``PROTOCOLS[probe]``)."""
    p = PROTOCOLS[probe]
    fit, settings = {"knn": (knn_classify, ("k", "temperature")), "linear": (linear_probe, ("C", "max_iter"))}[probe]
    pred = fit(features(encoder, train[0], device), train[1], features(encoder, test[0], device), num_classes,
               **{key: p[key] for key in settings})
    return float((pred == test[1]).float().mean())
