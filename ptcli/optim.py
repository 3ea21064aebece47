"""Optimizer and learning-rate schedule builders (targets of conf/optim and conf/schedule)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ptcli.errors import UsageError


def build_adamw(model: nn.Module, lr: float | None, weight_decay: float, betas: list[float], eps: float,
                head_lr: float | None = None) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or 1-d parameters).

    A model with a ``head`` (a classifier) gets ``head_lr`` for it: a fresh head wants a larger step
    than a pre-trained encoder.
    """
    if lr is None:
        raise UsageError("optim.lr is not set; pass optim.lr=<learning rate>")
    for key, value in (("lr", lr), ("head_lr", head_lr)):
        if value is not None and value <= 0:
            raise UsageError(f"optim.{key} must be positive, got {value}")
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if head is not None and head_lr is not None else set()
    groups = []
    for is_head in (False, True):
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad and (id(p) in head_ids) == is_head:
                (decay if p.ndim >= 2 else no_decay).append(p)
        group_lr = head_lr if is_head else lr
        groups += [{"params": decay, "weight_decay": weight_decay, "lr": group_lr},
                   {"params": no_decay, "weight_decay": 0.0, "lr": group_lr}]
    groups = [g for g in groups if g["params"]]
    # The fused kernel exists for CPU and CUDA in torch >= 2.4 and is the fastest path on both.
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, decay: str = "cosine",
                    warmup_steps: int = 100, min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup to the base lr, then cosine/linear decay to ``min_lr_ratio`` x base, or constant."""
    if decay not in ("cosine", "linear", "constant"):
        raise UsageError(f"schedule.decay must be cosine, linear or constant, got {decay!r}")
    if warmup_steps < 0:
        raise UsageError(f"schedule.warmup_steps must be >= 0, got {warmup_steps}")
    warmup = min(warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
        return min_lr_ratio + (1 - min_lr_ratio) * shape

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
