"""Count multiply-accumulates (MACs) and parameters of a model, per layer and in total, and
estimate them for given per-group keep counts without rebuilding.

Convention (the one the pruning papers use): a convolution costs
``out_elements * (in_channels / groups) * kh * kw`` MACs per sample and a linear layer
``in_features * out_features``; biases, normalization, activations and pooling are not
counted. Parameters are every element of every parameter of the model (BN included),
counted once even if shared. Figures are per sample (batch size 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from .modes import eval_mode

if TYPE_CHECKING:
    from .structure.groups import ChannelGroup

_COUNTED = (nn.modules.conv._ConvNd, nn.Linear)  # convolutions (transposed ones too) and linear layers


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

    def to_dict(self) -> dict:
        """Plain data (for checkpoints and results)."""
        return {"macs": int(self.macs), "params": int(self.params),
                "layers": [asdict(layer) for layer in self.layers.values()]}

    @classmethod
    def from_dict(cls, data: Mapping) -> ModelCost:
        layers = {d["name"]: LayerCost(**d) for d in data["layers"]}
        return cls(int(data["macs"]), int(data["params"]), layers)


def _layer_macs(module: nn.Module, inputs, output: torch.Tensor) -> int:
    if isinstance(module, nn.Linear):
        rows = output.numel() // output.shape[-1]
        return rows * module.in_features * module.out_features
    kernel = 1
    for k in module.kernel_size:
        kernel *= k
    if module.transposed:  # every input element is multiplied into a kernel of each output group
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


def count_cost(model: nn.Module, example_inputs: torch.Tensor) -> ModelCost:
    """Run one forward pass on a single sample of ``example_inputs`` and count MACs/params."""
    sample = example_inputs[:1]
    names = {m: n for n, m in model.named_modules()}
    macs: dict[str, int] = {}

    def hook(module, inputs, output):
        name = names[module]
        macs[name] = macs.get(name, 0) + _layer_macs(module, inputs, output)

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, _COUNTED) and not is_cost_free(m)]
    try:
        with eval_mode(model), torch.no_grad():
            model(sample)
    finally:
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
    total_params = sum(p.numel() for n, p in model.named_parameters() if n not in cost_free_parameters(model))
    return ModelCost(macs=sum(macs.values()), params=total_params, layers=layers)


def is_cost_free(module: nn.Module) -> bool:
    """A layer that stands for a parameter-free op and counts nothing (``pruning_cost_free``: the
    CIFAR ResNets' zero-padding shortcut, written as a fixed placement convolution)."""
    return bool(getattr(module, "pruning_cost_free", False))


def cost_free_parameters(model: nn.Module) -> set[str]:
    return {f"{n}.{p}" if n else p for n, m in model.named_modules() if is_cost_free(m)
            for p, _ in m.named_parameters(recurse=False)}


def _kept_fractions(groups: Sequence[ChannelGroup], keep: Mapping[str, int], cost: ModelCost):
    """(out fraction, in fraction) kept for every counted layer, given per-group keep counts."""
    out_kept = {n: float(layer.out_channels) for n, layer in cost.layers.items()}
    in_kept = {n: float(layer.in_channels) for n, layer in cost.layers.items()}
    for g in groups:
        for s in g.slices + g.fixed:  # the rows each group removes: a gate over a concat is cut by each branch's
            module, _, param = s.param.rpartition(".")
            if param == "weight" and module in out_kept:
                out_kept[module] -= (g.size - keep[g.name]) * s.index.shape[1]
        for m, width in g.consumers:
            if m in in_kept:  # not a cost-free layer
                in_kept[m] -= (g.size - keep[g.name]) * width
    out_frac = {n: out_kept[n] / cost.layers[n].out_channels for n in cost.layers}
    in_frac = {n: in_kept[n] / cost.layers[n].in_channels for n in cost.layers}
    return out_frac, in_frac


def kept_widths(groups: Sequence[ChannelGroup], cost: ModelCost, keep: Mapping[str, int]) -> dict[str, tuple]:
    """Per counted layer, its (input, output) channel counts after keeping ``keep[group.name]``
    channels of each group."""
    out_frac, in_frac = _kept_fractions(groups, keep, cost)
    return {n: (layer.in_channels * in_frac[n], layer.out_channels * out_frac[n]) for n, layer in cost.layers.items()}


def estimate_macs(groups: Sequence[ChannelGroup], cost: ModelCost, keep: Mapping[str, int]) -> float:
    """MACs of the model after keeping ``keep[group.name]`` channels of each group."""
    out_frac, in_frac = _kept_fractions(groups, keep, cost)
    return float(sum(layer.macs * out_frac[n] * in_frac[n] for n, layer in cost.layers.items()))


def estimate_params(model: nn.Module, groups: Sequence[ChannelGroup], keep: Mapping[str, int]) -> float:
    """Parameters of ``model`` after keeping ``keep[group.name]`` channels of each group.

    Every parameter keeps the product of the kept fractions of its output side (the rows that
    groups' slices remove, summed over groups: a norm over a concat holds several groups' rows)
    and of its input side (the weight of a consumer layer).
    """
    params = dict(model.named_parameters())
    frac = {n: 1.0 for n in params}
    removed_rows: dict[tuple[str, int], int] = {}
    for g in groups:
        for s in g.slices + g.fixed:
            key = (s.param, s.dim)
            removed_rows[key] = removed_rows.get(key, 0) + (g.size - keep[g.name]) * s.index.shape[1]
    for (name, dim), removed in removed_rows.items():
        rows = params[name].shape[dim]
        frac[name] *= (rows - removed) / rows
    modules = dict(model.named_modules())
    in_kept: dict[str, float] = {}
    for g in groups:
        for m, width in g.consumers:
            in_kept[m] = in_kept.get(m, 0.0) + (g.size - keep[g.name]) * width
    for m, removed in in_kept.items():
        module = modules[m]
        name = f"{m}.weight" if m else "weight"
        width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        frac[name] *= (width - removed) / width
    free = cost_free_parameters(model)
    return float(sum(p.numel() * frac[n] for n, p in params.items() if n not in free))


def channel_macs(groups: Sequence[ChannelGroup], cost: ModelCost) -> dict[str, float]:
    """Per group, the MACs that removing one of its channels saves (producers and consumers)."""
    full = {g.name: g.size for g in groups}
    base = estimate_macs(groups, cost, full)
    out = {}
    for g in groups:
        fewer = dict(full)
        fewer[g.name] = g.size - 1
        out[g.name] = base - estimate_macs(groups, cost, fewer)
    return out
