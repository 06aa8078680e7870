"""Proximal operators of the structured-sparsity regularizers, on group norms.

Every operator takes the L2 norms of the groups of ``T = W + U`` (one entry per group)
and returns the multiplier to apply to each group, so that ``V_g = scale_g * T_g``.
Working on norms keeps the operators independent of how a group is laid out across
parameters (a filter row, its bias, the BN scale and shift, coupled residual producers).

- :func:`group_soft_threshold`: prox of ``t * sum_g ||x_g||_2`` (L2,1, group lasso).
- :func:`group_hard_threshold`: prox of ``t * #{g: x_g != 0}`` (L2,0).
- :func:`keep_top_k`: projection onto "at most k non-zero groups" (budget form of L2,0).

Ties and zero groups are resolved deterministically: a group exactly at the threshold
is zeroed (the conditions are strict), a zero group stays zero, and among equal norms
``keep_top_k`` keeps the lower index.
"""

from __future__ import annotations

import torch


def _as_tensor(value, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def group_soft_threshold(norms: torch.Tensor, threshold) -> torch.Tensor:
    """Scale ``max(0, 1 - threshold / ||T_g||)`` per group; 0 where ``||T_g|| <= threshold``.

    ``threshold`` (``lam / rho``) is a scalar or one value per group, and must be >= 0.
    """
    thr = _as_tensor(threshold, norms)
    if bool((thr < 0).any()):
        raise ValueError("group_soft_threshold: threshold must be >= 0")
    keep = norms > thr
    safe = torch.where(keep, norms, torch.ones_like(norms))
    return torch.where(keep, 1.0 - thr / safe, torch.zeros_like(norms))


def group_hard_threshold(norms: torch.Tensor, threshold) -> torch.Tensor:
    """Scale 1 where ``||T_g||^2 > 2 * threshold`` and 0 elsewhere (``threshold = lam / rho``)."""
    thr = _as_tensor(threshold, norms)
    if bool((thr < 0).any()):
        raise ValueError("group_hard_threshold: threshold must be >= 0")
    return (norms.pow(2) > 2.0 * thr).to(norms.dtype)


def keep_top_k(norms: torch.Tensor, k: int) -> torch.Tensor:
    """Scale 1 for the ``k`` groups of largest norm and 0 for the others."""
    n = norms.numel()
    if not 0 <= k <= n:
        raise ValueError(f"keep_top_k: k={k} is outside [0, {n}]")
    # stable descending sort: among equal norms the lower index comes first
    order = torch.sort(norms, descending=True, stable=True).indices
    scale = torch.zeros_like(norms)
    scale[order[:k]] = 1.0
    return scale


def protect_largest(scale: torch.Tensor, norms: torch.Tensor, min_keep: int) -> torch.Tensor:
    """Return ``scale`` with at least ``min_keep`` groups non-zero.

    Groups that a threshold zeroed are restored (scale 1) in order of decreasing norm until
    ``min_keep`` survive, so that a layer is never emptied.
    """
    alive = int((scale > 0).sum())
    if alive >= min_keep:
        return scale
    scale = scale.clone()
    order = torch.sort(torch.where(scale > 0, torch.full_like(norms, -1.0), norms),
                       descending=True, stable=True).indices
    scale[order[: min_keep - alive]] = 1.0
    return scale
