"""AlexNet, CIFAR-size variant: five convolutions (64-192-384-256-256) with three max-pools,
then a 1024 -> 512 -> classes classifier with dropout."""

from __future__ import annotations

import torch
from torch import nn


class AlexNet(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 10, input_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        spatial = input_size // 8
        if spatial < 1:
            raise ValueError(f"AlexNet needs inputs of at least 8x8, got {input_size}x{input_size}")
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * spatial * spatial, 1024), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(1024, 512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
