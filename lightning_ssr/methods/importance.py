"""Channel importance: small functions from a group (and the model holding it) to one score per
channel; higher means more important. Shared by every method that ranks channels."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..structure.groups import ChannelGroup
from .fsm import fsm_importance


def l1_norm(group: ChannelGroup, model: nn.Module) -> torch.Tensor:
    """L1 norm of the producer conv/linear filters of each channel (Li et al. 2017): the trainable
    ones or, where every producer is frozen (its BatchNorm trains), the frozen ones (they scored
    zero, and a frozen layer kept its first filters: probe)."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    score = torch.zeros(group.size, dtype=torch.float64)
    for parts in (group.slices, group.fixed):
        found = False
        for s in parts:
            module = modules[s.param.rsplit(".", 1)[0]] if "." in s.param else model
            if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or not s.param.endswith("weight"):
                continue
            rows = params[s.param].detach().movedim(s.dim, 0)[s.index.reshape(-1).to(params[s.param].device)]
            score += rows.reshape(group.size, -1).double().abs().sum(1).cpu()
            found = True
        if found:
            break
    return score


def l2_norm(group: ChannelGroup, model: nn.Module) -> torch.Tensor:
    """L2 norm of each channel's whole output-side group (the SSR group norm)."""
    return group.norms({n: p.detach() for n, p in model.named_parameters()})


def batchnorm_scales(modules: Mapping[str, nn.Module], slices) -> list:
    """The slices (of a group's ``slices`` or ``fixed``) that are a BatchNorm's scale (its weight);
    ``modules``: the model's ``named_modules()``."""
    return [s for s in slices if s.param.endswith(".weight")
            and isinstance(modules.get(s.param.rsplit(".", 1)[0]), nn.modules.batchnorm._BatchNorm)]


def without_batchnorm(model: nn.Module, groups) -> list[str]:
    """The groups (sorted names) whose channels have no BatchNorm scale, trainable or frozen."""
    modules = dict(model.named_modules())
    return sorted(g.name for g in groups if not batchnorm_scales(modules, (*g.slices, *g.fixed)))


def bn_scale(group: ChannelGroup, model: nn.Module) -> torch.Tensor:
    """Sum of |gamma| of the BN layers on each channel (network slimming), trainable or frozen; the
    L1 norm for a group without BN (which :func:`~lightning_ssr.methods.oneshot.check_importance`
    refuses for the ``oneshot`` method and :func:`~lightning_ssr.methods.oneshot.prune_oneshot`)."""
    params = dict(model.named_parameters())
    found = batchnorm_scales(dict(model.named_modules()), (*group.slices, *group.fixed))
    if not found:
        return l1_norm(group, model)
    score = torch.zeros(group.size, dtype=torch.float64)
    for s in found:
        t = params[s.param].detach()
        score += t[s.index.reshape(-1).to(t.device)].reshape(group.size, -1).double().abs().sum(1).cpu()
    return score


def first_order_taylor(group: ChannelGroup, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Each channel's ``(sum_i g_i w_i)^2`` over its output side (the group's ``slices``), from the
    gradients present now (Molchanov et al. 2019): the squared first-order change of the loss
    when the channel is removed, in loss units. Where no output-side parameter has a gradient (a
    frozen layer), the same sum over the consumers' weights that read the channel (its
    ``inputs``): to first order both are the loss's change when the channel's output is removed
    (``sum a * dL/da`` over its activations), so the values compare across groups; a consumer
    without a gradient (frozen too) or a grouped one (whose weight holds only its block's
    columns) adds nothing, so the value is a part of it there. Float64, on the parameters'
    device; zero for a channel no gradient reaches."""
    total = None
    with torch.no_grad():
        for sides in (group.slices, group.readable_inputs(params)):
            for s in sides:
                p = params.get(s.param)
                if p is None or p.grad is None:
                    continue
                prod = (p.detach() * p.grad).movedim(s.dim, 0)[s.index.reshape(-1).to(p.device)]
                per = prod.reshape(group.size, -1).double().sum(1)
                total = per if total is None else total + per
            if total is not None:
                break
    if total is None:
        device = next(iter(params.values())).device if params else None
        return torch.zeros(group.size, dtype=torch.float64, device=device)
    return total.pow(2)


def random_scores(group: ChannelGroup, model: nn.Module, seed: int = 0) -> torch.Tensor:
    """Random importance (a baseline), reproducible by ``seed`` and the group's name."""
    gen = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{group.name}".encode()))
    return torch.rand(group.size, generator=gen, dtype=torch.float64)


IMPORTANCES: Mapping[str, Callable[[ChannelGroup, nn.Module], torch.Tensor]] = {
    "fsm": fsm_importance,
    "l1": l1_norm,
    "l2": l2_norm,
    "bn_scale": bn_scale,
    "random": random_scores,
}


def get_importance(name_or_fn) -> Callable[[ChannelGroup, nn.Module], torch.Tensor]:
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in IMPORTANCES:
        raise ValueError(f"unknown importance {name_or_fn!r}; available: {sorted(IMPORTANCES)} "
                         "or a callable (group, model) -> scores")
    return IMPORTANCES[name_or_fn]
