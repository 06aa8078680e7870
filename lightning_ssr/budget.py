"""Per-layer regularization strength and per-layer channel budgets."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .flops import ModelCost
from .groups import ChannelGroup, estimate_macs

LAM_SCALINGS = ("flops", "none")


def resolve_lam(groups: Sequence[ChannelGroup], lam, scaling: str = "flops") -> dict[str, float]:
    """Regularization strength per group.

    - ``lam`` a number and ``scaling="flops"`` (default): ``lam * macs_per_channel / mean``,
      the mean taken over all channels of the model. A filter whose removal saves more
      compute is pushed harder, so the regularizer spends sparsity where it buys speed.
      With a uniform ``lam`` SSR prunes mostly the wide fully connected layer, which saves
      parameters but almost no FLOPs.
    - ``lam`` a number and ``scaling="none"``: the same ``lam`` for every group.
    - ``lam`` a mapping from group name (its root layer) to a number: taken as given; every
      group must be named.
    """
    names = [g.name for g in groups]
    if isinstance(lam, Mapping):
        missing = [n for n in names if n not in lam]
        extra = [n for n in lam if n not in names]
        if missing or extra:
            raise ValueError(f"lam mapping must name exactly the prunable layers {names}; "
                             f"missing {missing}, unknown {extra}")
        values = {n: float(lam[n]) for n in names}
    else:
        if scaling not in LAM_SCALINGS:
            raise ValueError(f"lam_scaling must be one of {LAM_SCALINGS}, got {scaling!r}")
        if scaling == "none":
            values = {n: float(lam) for n in names}
        else:
            channels = sum(g.size for g in groups)
            mean = sum(g.size * g.macs_per_channel for g in groups) / max(channels, 1)
            values = {g.name: float(lam) * g.macs_per_channel / mean if mean > 0 else float(lam)
                      for g in groups}
    bad = {n: v for n, v in values.items() if not (v >= 0 and math.isfinite(v))}
    if bad:
        raise ValueError(f"lam must be finite and >= 0, got {bad}")
    return values


def min_keep_counts(groups: Sequence[ChannelGroup], min_channels: int = 1,
                    max_pruning_ratio: float = 1.0) -> dict[str, int]:
    """Channels each group keeps at least: ``min_channels``, and no more than
    ``max_pruning_ratio`` of a layer's channels removed."""
    if not 0.0 < max_pruning_ratio <= 1.0:
        raise ValueError(f"max_pruning_ratio must be in (0, 1], got {max_pruning_ratio}")
    return {g.name: min(g.size, max(min_channels, math.ceil(round(g.size * (1 - max_pruning_ratio), 6))))
            for g in groups}


def allocate_keep_counts(
    groups: Sequence[ChannelGroup],
    cost: ModelCost,
    flops_budget: float | None = None,
    filter_budget: float | None = None,
    min_keep: int | Mapping[str, int] = 1,
) -> dict[str, int]:
    """Channels to keep per group so the pruned model fits the budget.

    ``flops_budget`` is the fraction of the dense model's MACs to keep, ``filter_budget``
    the fraction of its prunable channels. Every layer keeps the same fraction ``r`` of
    its channels (at least ``min_keep``, a number or a count per group, see
    :func:`min_keep_counts`), with ``r`` the largest value that fits;
    the top-k projection then picks *which* channels survive in each layer.
    """
    if (flops_budget is None) == (filter_budget is None):
        raise ValueError("give exactly one of flops_budget and filter_budget")

    floor = min_keep if isinstance(min_keep, Mapping) else {g.name: min(g.size, min_keep) for g in groups}

    def counts(r: float) -> dict[str, int]:
        return {g.name: min(g.size, max(floor[g.name], math.floor(r * g.size + 1e-9))) for g in groups}

    if flops_budget is not None:
        limit = flops_budget * cost.macs

        def fits(keep):
            return estimate_macs(groups, cost, keep) <= limit + 1e-6
    else:
        limit = filter_budget * sum(g.size for g in groups)

        def fits(keep):
            return sum(keep.values()) <= limit + 1e-9

    if not fits(counts(0.0)):
        kind = "flops_budget" if flops_budget is not None else "filter_budget"
        raise ValueError(f"{kind} is too small: the channels every layer must keep (min_channels, "
                         "max_pruning_ratio) already exceed it; raise the budget or relax those limits")
    lo, hi = 0.0, 1.0
    if fits(counts(hi)):
        return counts(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        if fits(counts(mid)):
            lo = mid
        else:
            hi = mid
    return counts(lo)
