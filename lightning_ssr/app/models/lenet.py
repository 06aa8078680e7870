"""LeNet-5 in the Caffe variant used by SSL and SSR: conv 20 - conv 50 - fc 500 - fc 10."""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """conv5x5(20) - maxpool2 - conv5x5(50) - maxpool2 - fc(500) - ReLU - fc(num_classes).

    As in Caffe's ``lenet_train_test.prototxt`` there is no ReLU after the convolutions. On
    28x28 inputs: 2.29M MACs and 431K parameters.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, input_size: int = 28):
        super().__init__()
        spatial = ((input_size - 4) // 2 - 4) // 2
        if spatial < 1:
            raise ValueError(f"LeNet5 needs inputs of at least 16x16, got {input_size}x{input_size}")
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * spatial * spatial, 500)
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)
