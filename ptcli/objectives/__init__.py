"""Pre-training objectives: one module each (``objective=<name>``), the schema of its defaults beside the class.

What several image objectives share lives here: the two augmented views of a batch, the MLP heads (projector,
expander, predictor) and the checks of their options.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ptcli.errors import UsageError


def two_views(augment: Any, images: torch.Tensor, generator: torch.Generator | None, method: str,
              why: str) -> torch.Tensor:
    """Two augmented views of ``images [B, ...]`` stacked as ``[2B, ...]`` (view 1, then view 2): one encoder pass
    over both lets BatchNorm see both and halves the kernel launches. Augmentation is data preparation, outside
    the graph. ``method``/``why``: the error for a batch of one (``why``: what needs the other images)."""
    if images.shape[0] < 2:
        raise ValueError(f"{method} needs at least 2 images per batch ({why})")
    with torch.no_grad():
        return torch.cat([augment(images, generator), augment(images, generator)])


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
