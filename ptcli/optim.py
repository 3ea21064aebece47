"""Optimizer and learning-rate schedule builders (targets of conf/optim and conf/schedule)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ptcli.errors import UsageError


@dataclass
class AdamWConfig:
    """``optim=adamw``: the arguments of ``build_adamw`` (besides the model)."""

    _target_: str = "ptcli.optim.build_adamw"
    lr: float | None = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    # Fine-tuning: learning rate of the freshly initialized head (null = same as lr).
    head_lr: float | None = None
    # Fine-tuning: layer-wise lr decay (ELECTRA, BEiT): the top block gets lr, each block below it
    # layer_decay x the one above, the embeddings the smallest. null = one lr for the whole encoder.
    layer_decay: float | None = None


@dataclass
class ScheduleConfig:
    """``schedule=cosine|linear|constant``: the arguments of ``warmup_schedule`` (besides optimizer, steps)."""

    _target_: str = "ptcli.optim.warmup_schedule"
    decay: str = "cosine"  # cosine | linear | constant
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0


def layer_depths(model: nn.Module) -> dict[int, int]:
    """``id(param) -> depth`` for a classifier over a block-structured encoder: embeddings 0, block i
    i + 1, everything above the blocks (final norm) len(blocks) + 1. Empty if the encoder has no blocks."""
    encoder = getattr(model, "encoder", None)
    blocks = getattr(encoder, "blocks", None)
    if blocks is None:
        return {}
    depths = {id(p): 0 for p in encoder.parameters()}
    for i, block in enumerate(blocks):
        depths.update({id(p): i + 1 for p in block.parameters()})
    embeddings = {"blocks", "tok_emb", "emb_norm", "pos_emb"}
    above = {name.split(".")[0] for name, _ in encoder.named_parameters()} - embeddings
    for name in above:
        depths.update({id(p): len(blocks) + 1 for p in getattr(encoder, name).parameters()})
    return depths


def build_adamw(model: nn.Module, lr: float | None, weight_decay: float, betas: list[float], eps: float,
                head_lr: float | None = AdamWConfig.head_lr,
                layer_decay: float | None = AdamWConfig.layer_decay) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or 1-d parameters).

    A model with a ``head`` (a classifier) gets ``head_lr`` for it: a fresh head wants a larger step
    than a pre-trained encoder. ``layer_decay`` scales the encoder's lr down layer by layer from the top,
    so fine-tuning moves the general lower layers less than the task-specific upper ones.
    """
    if lr is None:
        raise UsageError("optim.lr is not set; pass optim.lr=<learning rate>")
    for key, value in (("lr", lr), ("head_lr", head_lr)):
        if value is not None and value <= 0:
            raise UsageError(f"optim.{key} must be positive, got {value}")
    if layer_decay is not None and not 0 < layer_decay <= 1:
        raise UsageError(f"optim.layer_decay must be in (0, 1], got {layer_decay}")
    depths = layer_depths(model) if layer_decay is not None else {}
    if layer_decay is not None and not depths:
        raise UsageError("optim.layer_decay needs a classifier over ptcli's transformer encoder (model=transformer); "
                         "set optim.layer_decay=null.")
    top = max(depths.values(), default=0)
    head = getattr(model, "head", None)
    head_ids = {id(p) for p in head.parameters()} if head is not None and head_lr is not None else set()
    by_group: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in head_ids:
            group_lr = head_lr
        elif id(p) in depths:
            group_lr = lr * layer_decay ** (top - depths[id(p)])
        else:
            group_lr = lr
        by_group.setdefault((group_lr, p.ndim >= 2), []).append(p)
    groups = [{"params": params, "weight_decay": weight_decay if decays else 0.0, "lr": group_lr}
              for (group_lr, decays), params in by_group.items()]
    # The fused kernel exists for CPU and CUDA in torch >= 2.4 and is the fastest path on both.
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)


def warmup_schedule(optimizer: torch.optim.Optimizer, total_steps: int, decay: str = ScheduleConfig.decay,
                    warmup_steps: int = ScheduleConfig.warmup_steps,
                    min_lr_ratio: float = ScheduleConfig.min_lr_ratio) -> torch.optim.lr_scheduler.LambdaLR:
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
