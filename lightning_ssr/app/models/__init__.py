"""Model registry: ``build_model(name, in_channels, num_classes, input_size)``.

Every model takes the input's channels, the number of classes and the input size, so each
runs on 28x28 grayscale as well as 32x32 RGB. No torchvision dependency.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .alexnet import AlexNet
from .googlenet import GoogLeNet
from .lenet import LeNet5
from .mobilenetv2 import MobileNetV2
from .resnet import resnet18, resnet50
from .resnet_cifar import resnet20, resnet56, resnet110
from .vgg import VGG16BN

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "alexnet": AlexNet,
    "vgg16_bn": VGG16BN,
    "resnet20": resnet20,
    "resnet56": resnet56,
    "resnet110": resnet110,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "googlenet": GoogLeNet,
    "mobilenetv2": MobileNetV2,
}


def build_model(name: str, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> nn.Module:
    """Construct a registered model for inputs of ``in_channels x input_size x input_size``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, input_size=input_size)


__all__ = ["MODELS", "build_model"]
