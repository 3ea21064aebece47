"""Frozen-feature probes: weighted kNN and a linear (logistic regression) probe.

Both take features already computed by a frozen encoder and return predicted labels for the test
features, so the caller computes whatever metric it reports. ``PROTOCOLS`` holds the parameters, to be
printed beside every score (solo-learn#221: a number without its protocol cannot be compared).
"""

from __future__ import annotations

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
        "description": "logistic regression on frozen features standardized with the training mean/std; "
                       "full-batch SGD (momentum 0.9, nesterov), zero init, cross entropy + L2 weight decay",
        "epochs": 100,
        "lr": 0.1,
        "weight_decay": 1e-4,
        "seed": 0,
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
    for start in range(0, test.shape[0], chunk):
        sim, idx = (test[start:start + chunk] @ train.t()).topk(k, dim=1)  # [b, k]
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=test.device)


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor, num_classes: int,
                 epochs: int = 100, lr: float = 0.1, weight_decay: float = 1e-4, seed: int = 0) -> torch.Tensor:
    """Logistic regression on standardized frozen features; predicted labels ``[M]`` (long) for ``test_feats``.

    Full batch and zero-initialized: the problem is convex and the result is a deterministic function of the
    inputs. ``seed`` is accepted so the protocol record is complete; the fit itself draws no random numbers.
    """
    if epochs <= 0 or not lr > 0 or weight_decay < 0:
        raise UsageError(f"linear probe: epochs and lr must be positive and weight_decay >= 0, got epochs={epochs}, "
                         f"lr={lr}, weight_decay={weight_decay}")
    _check(train_feats, train_labels, test_feats, num_classes)
    x = train_feats.detach().float()
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True, unbiased=False).clamp_min(1e-6)
    x = (x - mean) / std
    y = train_labels.long().to(x.device)
    weight = torch.zeros(num_classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    params = [weight, bias]
    velocity = [torch.zeros_like(p) for p in params]
    # Nesterov momentum SGD written out (the update torch.optim.SGD(momentum=0.9, nesterov=True) makes); weight
    # decay is in the loss so it applies to the weights only, not the bias.
    with torch.enable_grad(), torch.autocast(x.device.type, enabled=False):
        for _ in range(epochs):
            loss = F.cross_entropy(x @ weight.t() + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, v, grad in zip(params, velocity, grads, strict=True):
                    v.mul_(0.9).add_(grad)
                    p.sub_(lr * (grad + 0.9 * v))
    with torch.no_grad():
        z = (test_feats.detach().float().to(x.device) - mean) / std
        return (z @ weight.t() + bias).argmax(1)


@torch.no_grad()
def features(encoder: torch.nn.Module, x: torch.Tensor, device: torch.device, batch: int = 512) -> torch.Tensor:
    """A frozen encoder's features of ``x``, on the CPU (the encoder's train/eval mode is restored)."""
    was_training = encoder.training
    encoder.eval()
    out = torch.cat([encoder(x[i : i + batch].to(device)).float().cpu() for i in range(0, len(x), batch)])
    encoder.train(was_training)
    return out


def knn_accuracy(encoder: torch.nn.Module, train: tuple, test: tuple, num_classes: int,
                 device: torch.device) -> float:
    """Accuracy of the kNN probe (``PROTOCOLS["knn"]``) on ``test = (x, y)``, neighbours from ``train``."""
    p = PROTOCOLS["knn"]
    pred = knn_classify(features(encoder, train[0], device), train[1], features(encoder, test[0], device),
                        num_classes, k=p["k"], temperature=p["temperature"])
    return float((pred == test[1]).float().mean())


def linear_probe_accuracy(encoder: torch.nn.Module, train: tuple, test: tuple, num_classes: int,
                          device: torch.device) -> float:
    """Accuracy of the linear probe (``PROTOCOLS["linear"]``) fit on ``train``, on ``test``."""
    p = PROTOCOLS["linear"]
    pred = linear_probe(features(encoder, train[0], device), train[1], features(encoder, test[0], device),
                        num_classes, epochs=p["epochs"], lr=p["lr"], weight_decay=p["weight_decay"], seed=p["seed"])
    return float((pred == test[1]).float().mean())


PROBES = {"knn": knn_accuracy, "linear": linear_probe_accuracy}  # what an objective's ``probes`` may name
