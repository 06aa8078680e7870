"""CIFAR ResNet-20/56/110 (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels,
``n`` basic blocks each, global average pool, linear.

Shortcut type A, as in the paper and in HRank/FSM: where a block changes resolution and
width, the shortcut subsamples by 2 and zero-pads the new channels (no parameters). The
residual streams are therefore not prunable (see ``pruning_ignored_layers``); the inner
channel of every block is. On
32x32 RGB, ResNet-56 has 125.5M MACs and 0.85M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import Basic


class ZeroPadShortcut(nn.Module):
    """Type-A shortcut: ``x[:, :, ::2, ::2]`` with ``extra`` zero channels split on both sides."""

    def __init__(self, extra: int):
        super().__init__()
        self.before, self.after = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.before, self.after))


def basic_block(in_planes: int, planes: int, stride: int = 1) -> Basic:
    """A basic block whose shortcut is the identity or, where the shape changes, type A."""
    reshape = stride != 1 or in_planes != planes
    return Basic(in_planes, planes, stride, ZeroPadShortcut(planes - in_planes) if reshape else nn.Identity())


class CifarResNet(nn.Module):
    # The type-A shortcut zero-pads the residual stream to the next stage's width, which fixes
    # the streams' channels; only the inner channels of each block (conv1 -> conv2) are
    # prunable, as in HRank and FSM. Ignoring the stem drops the stream groups it roots.
    pruning_ignored_layers = ("conv1",)

    def __init__(self, depth: int = 56, in_channels: int = 3, num_classes: int = 10, input_size: int = 32):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, planes = [], 16
        for stage, width in enumerate((16, 32, 64)):
            layer = []
            for i in range(n):
                layer.append(basic_block(planes, width, 2 if stage > 0 and i == 0 else 1))
                planes = width
            blocks.append(nn.Sequential(*layer))
        self.layer1, self.layer2, self.layer3 = blocks
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def resnet20(**kw) -> CifarResNet:
    return CifarResNet(20, **kw)


def resnet56(**kw) -> CifarResNet:
    return CifarResNet(56, **kw)


def resnet110(**kw) -> CifarResNet:
    return CifarResNet(110, **kw)
