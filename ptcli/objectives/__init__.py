"""Pre-training objectives: one module each (``objective=<name>``), the schema of its defaults beside the class.

What several image objectives share lives here: the two augmented views of a batch, the MLP heads (projector,
expander, predictor), the checks of their options, and what makes them exact under ``trainer.strategy=ddp``:
each rank augments the same global batch and keeps its rows (``two_views(shard=True)``), projections are gathered
across ranks with gradients where the loss needs the whole batch (``gather_rows``), and BatchNorm layers take
their training statistics over the global batch (``global_batch_norm``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptcli import distributed as dist
from ptcli.errors import UsageError


def sharded(module: nn.Module) -> bool:
    """Whether ``module``'s forward gets the global batch of a multi-process run and must keep its own rows: in
    training under an initialized process group of more than one rank (evaluation runs whole on every rank)."""
    return module.training and dist.rank_world()[1] > 1


def two_views(augment: Any, images: torch.Tensor, generator: torch.Generator | None, method: str,
              why: str, shard: bool = False) -> torch.Tensor:
    """Two augmented views of ``images [B, ...]`` stacked as ``[2B, ...]`` (view 1, then view 2): one encoder pass
    over both lets BatchNorm see both and halves the kernel launches. Augmentation is data preparation, outside
    the graph. ``method``/``why``: the error for a batch of one (``why``: what needs the other images).
    ``shard``: ``images`` is the global batch of a multi-process run; every rank draws the same views of it (same
    seeded generator) as one process would, and keeps its contiguous rows of each view (``[2B / world, ...]``)."""
    if images.shape[0] < 2:
        raise ValueError(f"{method} needs at least 2 images per batch ({why})")
    with torch.no_grad():
        v1, v2 = augment(images, generator), augment(images, generator)
        if shard:
            v1, v2 = dist.shard_rows(v1), dist.shard_rows(v2)
        return torch.cat([v1, v2])


def gather_rows(z: torch.Tensor, shard: bool) -> torch.Tensor:
    """With ``shard``: the rows of every rank's ``z`` in rank order (the global batch's rows, as one process
    would have them), gathered with gradients: the backward of ``all_gather`` sums each rank's gradient for
    this rank's rows. Without: ``z`` itself."""
    if not shard:
        return z
    import warnings

    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # torch 2.13 marks it deprecated; its successor has no autograd on gloo
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(z.contiguous()))


def output(loss: torch.Tensor, images: torch.Tensor, shard: bool) -> dict:
    """An image objective's ``{"loss", "count"}``. Sharded, ``count`` is this rank's rows and ``loss_sum`` is
    ``loss * count``, so the trainer's share (``loss_sum`` / the global count) is ``loss / world``: with a loss
    computed over the gathered global batch (every rank the same value) or a per-rank mean of a per-image loss,
    DDP's averaging of the gradients then gives the one-process gradient of the global batch's loss."""
    if not shard:
        return {"loss": loss, "count": int(images.shape[0])}
    count = int(images.shape[0]) // dist.rank_world()[1]
    return {"loss": loss, "loss_sum": loss * count, "count": count}


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm (1-D or 2-D) whose training statistics are those of the global batch of a multi-process run:
    the input rows of all ranks are gathered with gradients, normalized together (and the running statistics
    updated) exactly as one process would, and this rank keeps its rows. Unlike ``torch.nn.SyncBatchNorm`` it
    runs on CPU (gloo) as well as on GPUs. Outside training or a process group it is the plain BatchNorm."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not sharded(self):
            return super().forward(input)
        rank, n = dist.rank_world()[0], input.shape[0]
        return super().forward(gather_rows(input, True))[rank * n : (rank + 1) * n]


def global_batch_norm(module: nn.Module) -> nn.Module:
    """``module`` with every ``BatchNorm1d``/``BatchNorm2d`` replaced by a ``GlobalBatchNorm`` holding the same
    parameters and buffers (as ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``); call it before the optimizer
    is built and before wrapping in DDP."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, global_batch_norm(child))
    return module


def check_sizes(**sizes: Any) -> None:
    """Refuse an ``objective.<key>`` that is not a positive integer."""
    for key, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UsageError(f"objective.{key} must be a positive integer, got {value!r}")


def check_number(key: str, value: Any, lo: float, hi: float | None = None, lo_open: bool = False) -> float:
    """``objective.<key>`` as a float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), else a UsageError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and (value > lo if lo_open else value >= lo) and (hi is None or value <= hi)
    if not ok:
        where = f"{'(' if lo_open else '['}{lo:g}, {'inf)' if hi is None else f'{hi:g}]'}"
        raise UsageError(f"objective.{key} must be a number in {where}, got {value!r}")
    return float(value)


def mlp(dim: int, hidden: int, out: int, layers: int = 2) -> nn.Sequential:
    """``layers`` linear layers ``dim -> hidden -> ... -> out``: each but the last followed by BatchNorm and ReLU
    (no bias before a BatchNorm); the heads of SimCLR, BYOL, VICReg and Barlow Twins."""
    mods: list[nn.Module] = []
    width = dim
    for _ in range(layers - 1):
        mods += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    mods.append(nn.Linear(width, out))
    return nn.Sequential(*mods)
