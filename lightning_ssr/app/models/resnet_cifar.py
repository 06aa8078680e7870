"""CIFAR ResNet-20/56/110 (He et al. 2016, section 4.2): 3 stages of 16/32/64 channels,
``n`` basic blocks each, global average pool, linear.

Shortcut type A, as in the paper and in HRank/FSM: where a block changes resolution and
width, the shortcut subsamples by 2 and zero-pads the new channels (:class:`ZeroPadShortcut`,
a fixed placement that is free in the cost counts). Both the inner channel of every block and
the residual streams are prunable; the FSM/HRank rate lists prune only the inner channels. On
32x32 RGB, ResNet-56 has 125.5M MACs and 0.85M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .resnet import Basic


class ZeroPadShortcut(nn.Conv2d):
    """Type-A shortcut: ``x[:, :, ::2, ::2]`` with ``planes - in_planes`` zero channels split on
    both sides, written as a fixed 1x1 stride-2 convolution whose weight places input channel
    ``i`` at output channel ``(planes - in_planes) // 2 + i``.

    The same function as padding, but the dependency graph sees which output channel each input
    channel feeds, so both residual streams it joins can be pruned (a pruned input drops its
    column, a pruned output its row). The weight is frozen (``requires_grad=False``: training
    never moves it), and it is free in the cost counts (``pruning_cost_free``), as the paper's
    parameter-free shortcut is. A checkpoint saved before this form existed has no weight for it;
    loading one fills in the placement.
    """

    pruning_cost_free = True

    def __init__(self, in_planes: int, planes: int, stride: int = 2):
        super().__init__(in_planes, planes, 1, stride=stride, bias=False)
        with torch.no_grad():
            self.weight.copy_(self.placement(in_planes, planes))
        self.weight.requires_grad_(False)

    @staticmethod
    def placement(in_planes: int, planes: int) -> torch.Tensor:
        weight = torch.zeros(planes, in_planes, 1, 1)
        before = (planes - in_planes) // 2
        weight[before + torch.arange(in_planes), torch.arange(in_planes)] = 1.0
        return weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "weight" not in state_dict:  # an unpruned checkpoint from before this form
            state_dict[prefix + "weight"] = self.placement(self.in_channels, self.out_channels)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def basic_block(in_planes: int, planes: int, stride: int = 1) -> Basic:
    """A basic block whose shortcut is the identity or, where the shape changes, type A."""
    reshape = stride != 1 or in_planes != planes
    return Basic(in_planes, planes, stride, ZeroPadShortcut(in_planes, planes, stride) if reshape else nn.Identity())


class CifarResNet(nn.Module):
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
