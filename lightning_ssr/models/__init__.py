"""Model registry: ``build_model(name, in_channels, num_classes, input_size)``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .lenet import LeNet5

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
}


def build_model(name: str, in_channels: int = 1, num_classes: int = 10, input_size: int = 28) -> nn.Module:
    """Construct a registered model for inputs of ``in_channels x input_size x input_size``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {sorted(MODELS)}")
    return MODELS[name](in_channels=in_channels, num_classes=num_classes, input_size=input_size)


__all__ = ["MODELS", "LeNet5", "build_model"]
