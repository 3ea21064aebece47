"""A small ResNet-style CNN for small images (8x8 digits up to ~64x64).

Stem: one 3x3 conv, no max-pool (on small images the ImageNet 7x7/stride-2 stem plus max-pool throws away
most of the resolution; lightly#1419 saw SimCLR on CIFAR-10 stall because of it). Then ``stages`` stages of
BasicBlocks (conv-BN-ReLU-conv-BN + shortcut), width doubling and stride-2 downsampling at the start of every
stage after the first, and a global average pool. ``forward`` returns pooled features ``[B, dim]``; heads
(projection, classifier) live with their objectives/tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ptcli.errors import UsageError


@dataclass
class ConvNetConfig:
    """``model=convnet``: the defaults of ``ConvNet`` (conf/model/convnet.yaml extends it)."""

    _target_: str = "ptcli.models.convnet.ConvNet"
    in_channels: int = 1
    width: int = 32
    stages: int = 3
    blocks_per_stage: int = 1


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)  # bias is redundant before BN
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        self.stride = stride
        if stride != 1 or cin != cout:  # projection shortcut only where the shape changes
            # A strided 1x1 conv written as a subsample, then a 1x1 conv: the same function (tested in
            # tests/test_vision_components.py), and it keeps oneDNN off its channels-last 1x1 stride-2 kernel, whose
            # weight gradient is wrong for 2-4 input channels on AVX2-only CPUs (torch 2.13: off by ~50%, and heap
            # corruption with one thread).
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        s = self.stride
        return self.relu(self.bn2(self.conv2(y)) + self.shortcut(x[:, :, ::s, ::s] if s > 1 else x))


class ConvNet(nn.Module):
    modality = "image"
    produces = "features"  # [B, dim] pooled features
    finetune_head = "image_classifier"
    finetune_lr = 1e-4  # optim.lr=null in finetune: the best head start at 5 labels/class (README "Measured")
    hf_export = None  # no transformers counterpart

    def __init__(self, in_channels: int = ConvNetConfig.in_channels, width: int = ConvNetConfig.width,
                 stages: int = ConvNetConfig.stages, blocks_per_stage: int = ConvNetConfig.blocks_per_stage) -> None:
        super().__init__()
        for key, value in (("in_channels", in_channels), ("width", width), ("stages", stages),
                           ("blocks_per_stage", blocks_per_stage)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"model.{key} must be a positive integer, got {value!r}")
        self.in_channels, self.width, self.stages, self.blocks_per_stage = in_channels, width, stages, blocks_per_stage
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=True))
        blocks: list[nn.Module] = []
        cin = width
        for s in range(stages):
            cout = width * 2**s
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, cout, stride=2 if s > 0 and b == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)  # any input size >= 1 pixel after downsampling works
        self.dim = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # zero-init the last BN of each block: blocks start as identity (Goyal et al. 2017)
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
        # Channels-last weights: oneDNN's convolutions and BatchNorm then run in their native NHWC layout, with no
        # reorder per call (a SimCLR step on digits 1.22x faster on CPU, median of rounds 1.03-1.37: bench_kernels.py).
        # Checkpoints store contiguous tensors either way (ptcli/checkpoint.py) and load back into this layout.
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, H, W]`` float -> pooled features ``[B, dim]``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise UsageError(f"model.in_channels={self.in_channels} but the images have shape {tuple(x.shape)} "
                             f"(expected [B, {self.in_channels}, H, W]); set model.in_channels to the images' "
                             "channel count or data.channels to match the model.")
        return self.pool(self.blocks(self.stem(x))).flatten(1)
