"""VGG-16-BN in the CIFAR form used by HRank and FSM: 13 conv-BN-ReLU layers (with conv
biases), 4 max-pools, a 2x2 average pool, then linear 512 -> 512 -> BN1d -> ReLU -> linear.

On 32x32 RGB: 313.7M MACs and 14.98M parameters, the papers' baseline.
"""

from __future__ import annotations

import torch
from torch import nn

VGG16_CHANNELS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]


class VGG16BN(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in VGG16_CHANNELS:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                channels = v
        self.features = nn.Sequential(*layers)
        spatial = input_size // 16
        if spatial < 1:
            raise ValueError(f"VGG16BN needs inputs of at least 16x16, got {input_size}x{input_size}")
        # the 2x2 average pool of the CIFAR form; below 32x32 inputs there is nothing left to pool
        self.pool = nn.AvgPool2d(2, 2) if spatial >= 2 else nn.Identity()
        spatial = spatial // 2 if spatial >= 2 else spatial
        self.classifier = nn.Sequential(
            nn.Linear(512 * spatial * spatial, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
