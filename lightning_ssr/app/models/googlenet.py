"""GoogLeNet, the CIFAR variant used by HRank and FSM: a 3x3 stem of 192 channels, nine
inception blocks (the "5x5" branch is two 3x3 convs), max-pools after b3 and e4, 8x8
average pool, linear 1024 -> classes. On 32x32 RGB: 1.53G MACs, 6.17M parameters.
"""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, k: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class Inception(nn.Module):
    def __init__(self, cin: int, n1: int, n3red: int, n3: int, n5red: int, n5: int, pool: int):
        super().__init__()
        self.branch1x1 = nn.Sequential(*_cbr(cin, n1, 1))
        self.branch3x3 = nn.Sequential(*_cbr(cin, n3red, 1), *_cbr(n3red, n3, 3))
        self.branch5x5 = nn.Sequential(*_cbr(cin, n5red, 1), *_cbr(n5red, n5, 3), *_cbr(n5, n5, 3))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), *_cbr(cin, pool, 1))
        self.out_channels = n1 + n3 + n5 + pool

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(x)], 1)


# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection) per block
BLOCKS = {
    "a3": (64, 96, 128, 16, 32, 32), "b3": (128, 128, 192, 32, 96, 64),
    "a4": (192, 96, 208, 16, 48, 64), "b4": (160, 112, 224, 24, 64, 64), "c4": (128, 128, 256, 24, 64, 64),
    "d4": (112, 144, 288, 32, 64, 64), "e4": (256, 160, 320, 32, 128, 128),
    "a5": (256, 160, 320, 32, 128, 128), "b5": (384, 192, 384, 48, 128, 128),
}


class GoogLeNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32):
        super().__init__()
        if input_size < 4:
            raise ValueError(f"GoogLeNet needs inputs of at least 4x4, got {input_size}x{input_size}")
        self.pre_layers = nn.Sequential(*_cbr(in_channels, 192, 3))
        channels = 192
        for name, spec in BLOCKS.items():
            block = Inception(channels, *spec)
            setattr(self, f"inception_{name}", block)
            channels = block.out_channels
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.linear = nn.Linear(channels, num_classes)

    def forward(self, x):
        x = self.pre_layers(x)
        for name in BLOCKS:
            x = getattr(self, f"inception_{name}")(x)
            if name in ("b3", "e4"):
                x = self.maxpool(x)
        return self.linear(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
