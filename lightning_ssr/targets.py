"""Targets, and the one function that turns a target into per-group keep counts.

A :class:`Target` is exactly one of:

- ``rates``: per-convolution pruning rates, a list or the papers' rate expressions such as
  ``"[0.]+[0.6,0.]*9+[0.6,0.]*9+[0.4,0.]*9"`` (parsed without ``eval``), in the order the
  convolutions appear in ``model.named_modules()`` (FSM/HRank order);
- ``macs``: the fraction of the dense model's MACs to keep, in (0, 1];
- ``params``: the fraction of the dense model's parameters to keep, in (0, 1];
- ``filters``: the fraction of the prunable channels to keep, in (0, 1].

:func:`keep_counts` is the only place where keep counts are computed, and
:func:`round_keep` the only rounding rule: a group of ``C`` channels keeping the fraction
``f`` keeps ``ceil(C * f)`` channels (so a rate ``r`` keeps ``ceil(C * (1 - r))``, FSM's
convention), never fewer than its floor (``min_channels``, ``max_pruning_ratio``) and never
more than ``C``. For the fraction targets every group keeps the same fraction, the largest
that fits the target; the gap that rounding leaves below the target is then filled one
channel at a time, always into the group with the lowest kept fraction, so the result lands
just under the target.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from torch import nn

from .cost import ModelCost, estimate_macs, estimate_params
from .structure.groups import ChannelGroup

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TARGET_KINDS = ("rates", "macs", "params", "filters")
_MAX_RATES = 10_000  # far more layers than any network has; bounds what an expression can allocate


def _fraction(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"target {name} must be a number in (0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"target {name} is the fraction of the dense model to keep and must be in (0, 1]; "
                         f"got {value} (for 20x fewer use 0.05)")
    return value


@dataclass(frozen=True)
class Target:
    """What the pruned model must reach: give exactly one of the four fields."""

    rates: str | tuple[float, ...] | None = None
    macs: float | None = None
    params: float | None = None
    filters: float | None = None

    def __post_init__(self):
        given = [k for k in TARGET_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a pruning target needs exactly one of {TARGET_KINDS}; got {given or 'none'}")
        if self.rates is not None:
            rates = self.rates if isinstance(self.rates, str) else tuple(float(r) for r in self.rates)
            parse_rates(rates)  # fail now, not when the prune is due
            object.__setattr__(self, "rates", rates)
        for k in ("macs", "params", "filters"):
            object.__setattr__(self, k, _fraction(k, getattr(self, k)))

    @property
    def kind(self) -> str:
        return next(k for k in TARGET_KINDS if getattr(self, k) is not None)

    @property
    def value(self):
        return getattr(self, self.kind)

    @classmethod
    def coerce(cls, target) -> Target | None:
        """``None``, a :class:`Target`, or a mapping such as ``{"macs": 0.25}``."""
        if target is None or isinstance(target, Target):
            return target
        if isinstance(target, Mapping):
            unknown = sorted(set(target) - set(TARGET_KINDS))
            if unknown:
                raise ValueError(f"unknown target key(s) {unknown}; a target is one of {TARGET_KINDS}")
            given = {k: v for k, v in target.items() if v is not None}
            return cls(**given) if given else None
        raise TypeError(f"target must be a Target, a mapping like {{'macs': 0.25}} or None, "
                        f"got {type(target).__name__}")

    def to_dict(self) -> dict:
        value = self.value if not isinstance(self.value, tuple) else list(self.value)
        return {self.kind: value}


# ------------------------------------------------------------------ rates
def parse_rates(expr: str | Sequence[float]) -> list[float]:
    """A list of rates from a list or from an expression of lists, ``+`` and ``* int``."""
    if not isinstance(expr, str):
        values = [float(v) for v in expr]
    else:
        try:
            tree = ast.parse(expr.strip(), mode="eval")
        except SyntaxError as err:
            raise ValueError(f"cannot parse rate expression {expr!r}: {err.msg}") from err
        values = _evaluate(tree.body, expr)
        if not isinstance(values, list):
            values = [values]
        values = [float(v) for v in values]
    bad = [v for v in values if not (0.0 <= v < 1.0 and math.isfinite(v))]
    if bad:
        raise ValueError(f"pruning rates must be in [0, 1), got {bad[:5]}")
    return values


def _evaluate(node, expr):
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_evaluate(node.operand, expr)
    if isinstance(node, ast.List):
        out = []
        for elt in node.elts:
            value = _evaluate(elt, expr)
            out.extend(value if isinstance(value, list) else [value])
        return out
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _evaluate(node.left, expr), _evaluate(node.right, expr)
        if isinstance(left, list) and isinstance(right, list):
            return left + right
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        left, right = _evaluate(node.left, expr), _evaluate(node.right, expr)
        if isinstance(right, list) and isinstance(left, int):
            left, right = right, left
        if isinstance(left, list) and isinstance(right, int):
            if not 0 <= right <= _MAX_RATES or len(left) * right > _MAX_RATES:
                raise ValueError(f"rate expression {expr!r}: a list may be repeated 0 to {_MAX_RATES} times "
                                 f"(and hold at most {_MAX_RATES} rates), got * {right}")
            return left * right
    raise ValueError(f"rate expression {expr!r}: only numbers, [lists], list + list and list * int are "
                     f"allowed (found {ast.dump(node)[:60]})")


def conv_layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, _CONV)]


def _rate_per_group(model: nn.Module, groups: Sequence[ChannelGroup], rates) -> dict[str, float]:
    values = parse_rates(rates)
    convs = conv_layer_names(model)
    if len(values) > len(convs):
        raise ValueError(f"{len(values)} rates given for a model with {len(convs)} convolutions")
    by_layer = dict(zip(convs, values + [0.0] * (len(convs) - len(values))))
    prunable = {m for g in groups for m in g.out_modules}
    orphans = [n for n, r in by_layer.items() if r > 0 and n not in prunable]
    if orphans:
        raise ValueError(f"non-zero rates for layers that cannot be pruned (ignored, or the model's outputs): "
                         f"{orphans[:5]}")
    out = {}
    for g in groups:
        rs = {by_layer[m] for m in g.out_modules if m in by_layer}
        if len(rs) > 1:
            raise ValueError(f"layers {[m for m in g.out_modules if m in by_layer]} share their output channels "
                             f"(a residual stream or a depthwise pair) but got different rates {sorted(rs)}")
        out[g.name] = rs.pop() if rs else 0.0
    return out


# --------------------------------------------------------------- counting
def round_keep(size: int, fraction: float, floor: int = 1) -> int:
    """The rounding rule: ``ceil(size * fraction)``, at least ``floor``, at most ``size``."""
    return min(size, max(floor, math.ceil(round(size * fraction, 6))))


def min_keep_counts(groups: Sequence[ChannelGroup], min_channels: int = 1,
                    max_pruning_ratio: float = 1.0) -> dict[str, int]:
    """Channels each group keeps at least: ``min_channels``, and no more than
    ``max_pruning_ratio`` of a group's channels removed."""
    return {g.name: round_keep(g.size, 1.0 - max_pruning_ratio, min_channels) for g in groups}


def keep_counts(model: nn.Module, groups: Sequence[ChannelGroup], cost: ModelCost, target: Target,
                min_keep: Mapping[str, int]) -> dict[str, int]:
    """Channels to keep in each group so that ``model`` meets ``target``.

    ``cost`` is ``count_cost(model, example)`` of the model the counts apply to; ``min_keep``
    the per-group floor (:func:`min_keep_counts`).
    """
    if target.kind == "rates":
        rate = _rate_per_group(model, groups, target.rates)
        return {g.name: round_keep(g.size, 1.0 - rate[g.name], min_keep[g.name]) for g in groups}

    def counts(fraction: float) -> dict[str, int]:
        return {g.name: round_keep(g.size, fraction, min_keep[g.name]) for g in groups}

    if target.kind == "macs":
        limit, total = target.macs * cost.macs, cost.macs

        def measure(keep):
            return estimate_macs(groups, cost, keep)
    elif target.kind == "params":
        limit, total = target.params * cost.params, cost.params

        def measure(keep):
            return estimate_params(model, groups, keep)
    else:
        total = sum(g.size for g in groups)
        limit = target.filters * total

        def measure(keep):
            return sum(keep.values())

    floor = counts(0.0)
    if measure(floor) > limit * (1 + 1e-9):
        raise ValueError(f"target {target.kind}={target.value} is too small: the channels every layer must keep "
                         f"(min_channels, max_pruning_ratio) already give {measure(floor) / total:.4f} of the "
                         "dense model; raise the target or relax those limits")
    def fits(keep):
        return measure(keep) <= limit * (1 + 1e-9)

    lo, hi = 0.0, 1.0
    if fits(counts(hi)):
        return counts(hi)
    for _ in range(50):
        mid = (lo + hi) / 2
        if fits(counts(mid)):
            lo = mid
        else:
            hi = mid
    # Rounding up per group leaves the uniform fraction a step below the target: fill that gap
    # one channel at a time, always into the group with the lowest kept fraction that still fits.
    keep = counts(lo)
    while True:
        for g in sorted(groups, key=lambda g: (keep[g.name] / g.size, g.name)):
            if keep[g.name] < g.size and fits({**keep, g.name: keep[g.name] + 1}):
                keep[g.name] += 1
                break
        else:
            return keep


def intermediate_keep_counts(sizes: Mapping[str, int], final: Mapping[str, int], step: int, steps: int,
                             min_keep: Mapping[str, int]) -> dict[str, int]:
    """Keep counts after prune event ``step`` (0-based) of ``steps`` equal shares on the way from
    ``sizes`` to ``final`` (iterative pruning); the last step reaches ``final`` exactly."""
    if step >= steps - 1:
        return dict(final)
    share = (step + 1) / steps
    return {n: round_keep(size, 1.0 - (1.0 - final[n] / size) * share, max(final[n], min_keep.get(n, 1)))
            for n, size in sizes.items()}
