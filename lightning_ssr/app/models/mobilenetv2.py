"""MobileNetV2 (Sandler et al. 2018), width 1.0: inverted residual blocks with depthwise 3x3
convs. For inputs below 64x64 (CIFAR, MNIST) the stem and the second stage use stride 1,
the usual CIFAR adaptation; at 224x224 it is the ImageNet network (300M MACs, 3.5M params).
"""

from __future__ import annotations

import torch
from torch import nn

# expansion t, output channels c, repeats n, first stride s
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
            (6, 320, 1, 1)]


def _cbr(cin, cout, k, stride=1, groups=1, relu=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return layers + ([nn.ReLU6(inplace=True)] if relu else [])


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = _cbr(cin, hidden, 1) if expand != 1 else []
        layers += _cbr(hidden, hidden, 3, stride, groups=hidden) + _cbr(hidden, cout, 1, relu=False)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32):
        super().__init__()
        small = input_size < 64
        layers = _cbr(in_channels, 32, 3, 1 if small else 2)
        cin = 32
        for i, (t, c, n, s) in enumerate(SETTINGS):
            for j in range(n):
                stride = (1 if small and i == 1 else s) if j == 0 else 1
                layers.append(InvertedResidual(cin, c, stride, t))
                cin = c
        layers += _cbr(cin, 1280, 1)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))
