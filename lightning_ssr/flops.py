"""Count multiply-accumulates (MACs) and parameters of a model, per layer and in total.

Convention (the one the pruning papers use): a convolution costs
``out_elements * (in_channels / groups) * kh * kw`` MACs per sample and a linear layer
``in_features * out_features``; biases, normalization, activations and pooling are not
counted. Parameters are every element of every parameter of the model (BN included),
counted once even if shared. Figures are per sample (batch size 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerCost:
    name: str
    kind: str
    in_channels: int
    out_channels: int
    macs: int
    params: int


@dataclass
class ModelCost:
    macs: int
    params: int
    layers: dict[str, LayerCost] = field(default_factory=dict)


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        rows = output.numel() // output.shape[-1]
        return rows * module.in_features * module.out_features
    kernel = 1
    for k in module.kernel_size:
        kernel *= k
    return output.numel() * (module.in_channels // module.groups) * kernel


def count_cost(model: nn.Module, example_inputs: torch.Tensor) -> ModelCost:
    """Run one forward pass on a single sample of ``example_inputs`` and count MACs/params."""
    sample = example_inputs[:1]
    names = {m: n for n, m in model.named_modules()}
    macs: dict[str, int] = {}

    def hook(module, _inputs, output):
        name = names[module]
        macs[name] = macs.get(name, 0) + _layer_macs(module, output)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COUNTED)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    layers = {}
    for name, module in model.named_modules():
        if name not in macs:
            continue
        in_ch = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        out_ch = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        layers[name] = LayerCost(
            name=name,
            kind=type(module).__name__,
            in_channels=in_ch,
            out_channels=out_ch,
            macs=macs[name],
            params=sum(p.numel() for p in module.parameters(recurse=False)),
        )
    total_params = sum(p.numel() for p in model.parameters())
    return ModelCost(macs=sum(macs.values()), params=total_params, layers=layers)
