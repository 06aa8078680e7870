"""Targets, and the one function that turns a target into per-group keep counts.

A :class:`Target` is exactly one of:

- ``rates``: per-convolution pruning rates, a list or the papers' rate expressions such as
  ``"[0.]+[0.6,0.]*9+[0.6,0.]*9+[0.4,0.]*9"`` (parsed without ``eval``), in the order the
  convolutions appear in ``model.named_modules()`` (FSM/HRank order; one per convolution), or a mapping
  ``{layer name: rate}`` that reaches any prunable layer, linear ones too (a structure given by
  hand, such as a paper's per-layer counts: a layer at rate r keeps ``ceil(C * (1 - r))``);
- ``macs``: the fraction of the dense model's MACs to keep, in (0, 1];
- ``params``: the fraction of the dense model's parameters to keep, in (0, 1];
- ``filters``: the fraction of the prunable channels to keep, in (0, 1];
- ``latency``: milliseconds per batch of ``batch_size`` on the device the model is on, predicted
  from measured per-layer timings (:mod:`lightning_ssr.latency`).

:class:`Budget` (the target and the limits every count obeys) is what callers ask;
:func:`keep_counts` is the only place where keep counts are computed, and :func:`round_keep`
the only rounding rule: a group of ``C`` channels keeping the fraction ``f`` keeps
``ceil(C * f)`` channels (so a rate ``r`` keeps ``ceil(C * (1 - r))``, FSM's convention), never
fewer than its floor (``min_channels``, ``max_pruning_ratio``) and never more than ``C``.

Each target kind has its measure (:class:`TargetMeasure`: the cost of a set of counts, and the
limit), and each allocation one function over it: :func:`uniform_counts` (every group keeps the
same fraction, the largest that fits), :func:`threshold_counts` (channels compete across groups
by value: ``"global"`` by importance per cost, ``"method"`` by the values of a method that learns
the structure), and :func:`fill_to_target`, which trades channels between groups to close the
gap rounding leaves below the target.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .cost import ModelCost, channel_macs, estimate_macs, estimate_params, is_cost_free
from .latency import (
    OtherProcessesLoad,
    calibrated_keep_counts,
    latency_model,
    measure_keep,
    steadied_allocator,
    timing_batch,
)
from .structure.groups import ChannelGroup
from .validation import check_choice, check_number, closest_name

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TARGET_KINDS = ("rates", "macs", "params", "filters", "latency")
_MAX_RATES = 10_000  # far more layers than any network has; bounds what an expression can allocate


def _fraction(name: str, value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"target {name} must be a number in (0, 1], got {type(value).__name__} {value!r}")
    value = float(value)
    if not (0.0 < value <= 1.0):
        hint = (f"for {value:g}x fewer use {1 / value:.4g}" if value > 1 and math.isfinite(value)
                else "for 20x fewer use 0.05")  # (1.5 read as a reduction factor: its inverse)
        if 5 <= value <= 100:  # (30 may be a percentage as well)
            hint += f"; to keep {value:g}% use {value / 100:g}"
        raise ValueError(f"target {name} is the fraction of the dense model to keep and must be in (0, 1]; "
                         f"got {value} ({hint})")
    return value


@dataclass(frozen=True)
class Target:
    """What the pruned model must reach: give exactly one of the four fields."""

    rates: str | tuple[float, ...] | Mapping[str, float] | None = None
    macs: float | None = None
    params: float | None = None
    filters: float | None = None
    latency: float | None = None  # milliseconds per batch of batch_size
    batch_size: int = 1  # of the latency target

    def __post_init__(self):
        given = [k for k in TARGET_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a pruning target needs exactly one of {TARGET_KINDS}; got {given or 'none'}")
        if isinstance(self.rates, Mapping):  # {layer name: rate}, any prunable layer (linear ones too)
            rates = {}
            for name, rate in self.rates.items():
                if not isinstance(name, str) or not name:
                    raise TypeError(f"target rates by layer need module names as keys, got {name!r}")
                rates[name] = parse_rates([rate])[0]
            object.__setattr__(self, "rates", rates)
        elif self.rates is not None:
            if isinstance(self.rates, numbers.Number) or (torch.is_tensor(self.rates) and self.rates.dim() == 0):
                # (one number: "'float' object is not iterable"; a list, an array or a tensor of rates pass)
                raise TypeError(
                    f"target rates is one pruning rate per prunable layer, in order: a list such as [0.5, 0.3], an "
                    f"expression such as '[0.5]*13', or {{layer name: rate}}; got {type(self.rates).__name__} "
                    f"{self.rates!r}. For the same rate r in every layer, give the target "
                    "{'filters': 1 - r} with allocation='uniform'")
            rates = self.rates if isinstance(self.rates, str) else tuple(float(r) for r in self.rates)
            parse_rates(rates)  # fail now, not when the prune is due
            object.__setattr__(self, "rates", rates)
        for k in ("macs", "params", "filters"):
            object.__setattr__(self, k, _fraction(k, getattr(self, k)))
        if self.latency is not None:
            if isinstance(self.latency, bool) or not isinstance(self.latency, (int, float)) or not (
                    math.isfinite(self.latency) and self.latency > 0):
                raise ValueError(f"target latency is milliseconds per batch and must be a number > 0, got "
                                 f"{self.latency!r}")
            object.__setattr__(self, "latency", float(self.latency))
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"target batch_size must be an integer >= 1, got {self.batch_size!r}")

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
            unknown = sorted(set(target) - set(TARGET_KINDS) - {"batch_size"})
            if unknown:
                hint = " (FLOPs are counted as multiply-accumulates: use 'macs')" if "flops" in unknown else ""
                limits = [k for k in unknown if k in ("allocation", "min_channels", "max_pruning_ratio", "round_to")]
                if limits:  # the CLI's target section holds them; in Python they are arguments of Pruning
                    hint += f" ({', '.join(limits)}: an argument of Pruning(...) or PruningEngine(...), not of the target)"
                close = {k: closest_name(k, (*TARGET_KINDS, "batch_size")) for k in unknown if k != "flops"}
                hint += "".join(f" ({k!r}: did you mean {c!r}?)" for k, c in close.items() if c)
                raise ValueError(f"unknown target key(s) {unknown}; a target is one of {TARGET_KINDS}{hint}")
            given = {k: v for k, v in target.items() if v is not None}
            if not any(k in TARGET_KINDS for k in given):
                return None
            return cls(**given)
        raise TypeError(f"target must be a Target, a mapping like {{'macs': 0.25}} or None, "
                        f"got {type(target).__name__}")

    def to_dict(self) -> dict:
        value = list(self.value) if isinstance(self.value, tuple) else (
            dict(self.value) if isinstance(self.value, Mapping) else self.value)
        return {self.kind: value, "batch_size": self.batch_size} if self.kind == "latency" else {self.kind: value}


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
    """The convolutions a rate list addresses, in order (fixed placement ops left out)."""
    return [n for n, m in model.named_modules() if isinstance(m, _CONV) and not is_cost_free(m)]


def _rate_per_group(model: nn.Module, groups: Sequence[ChannelGroup], rates) -> dict[str, float]:
    prunable = {m for g in groups for m in g.out_modules}
    if isinstance(rates, Mapping):  # by layer name: any layer whose output channels can go
        modules = dict(model.named_modules())
        unknown = sorted(set(rates) - set(modules))
        if unknown:
            layers = sorted(n for n in prunable if isinstance(modules.get(n), (*_CONV, nn.Linear)))
            raise ValueError(f"target rates name {unknown[:5]}, which are not modules of the model; the layers "
                             f"that can be pruned: {layers[:20]}")
        by_layer = dict(rates)
    else:
        values = parse_rates(rates)
        convs = conv_layer_names(model)
        if len(values) != len(convs):  # a short list would leave the last ones whole without a word
            shown = ", ".join(convs[:8]) + (", ..." if len(convs) > 8 else "")
            raise ValueError(f"{len(values)} rates given for a model with {len(convs)} convolutions ({shown}, in "
                             f"this order): give one per convolution (0. leaves one whole), or a mapping by layer "
                             f"name ({{{convs[0]!r}: 0.5}}) for some of them")
        by_layer = dict(zip(convs, values, strict=True))
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
#: how a fraction target is divided among the layers: ``uniform`` (every layer keeps the same
#: fraction), ``global`` (channels compete across layers by importance normalized per layer, over
#: the cost each saves), ``method`` (the structure the method learned: channels compete by the
#: method's own cross-layer values, :meth:`~lightning_ssr.methods.PruningMethod.allocation_scores`)
ALLOCATIONS = ("uniform", "global", "method")
#: the relative gap below a fraction target that the allocation closes by trading channels between layers
TARGET_TOLERANCE = 0.01
#: the relative gap below a fraction target within which every allocation meets it: where no trade
#: between layers lands within :data:`TARGET_TOLERANCE` (a network whose every step of ``round_to`` is
#: a large share of the target), the counts stay further below. ``allocation="method"`` trades only
#: to this gap, at the updates and at the prune alike: the method's structure is moved only as far
#: as the target's promise needs. (A trade search over ResNet-56's pairs of layers takes seconds:
#: run at every update to close a gap of 1.2%, it cost more than the training step.)
MET_TOLERANCE = 2 * TARGET_TOLERANCE


def round_keep(size: int, fraction: float, floor: int = 1, round_to: int = 1) -> int:
    """The rounding rule: ``ceil(size * fraction)``, at least ``floor``, then up to a multiple of
    ``round_to``; at most ``size`` (a group narrower than ``round_to`` keeps all its channels)."""
    keep = min(size, max(floor, math.ceil(round(size * fraction, 6))))
    if round_to > 1 and keep < size:
        keep = min(size, math.ceil(keep / round_to) * round_to)
    return keep


def _step_up(keep: int, size: int, round_to: int) -> int:
    """The next allowed count above ``keep`` (one more channel, or the next multiple of ``round_to``)."""
    return min(size, (keep // round_to + 1) * round_to)


def group_step(group: ChannelGroup, round_to: int = 1) -> int:
    """The granularity of a group's keep count: ``round_to``, and a whole number of channels per
    block where grouped convolutions split the group (``group.blocks``)."""
    return math.lcm(round_to, getattr(group, "blocks", 1))


def min_keep_counts(groups: Sequence[ChannelGroup], min_channels: int = 1,
                    max_pruning_ratio: float = 1.0, round_to: int = 1) -> dict[str, int]:
    """Channels each group keeps at least: ``min_channels``, and no more than
    ``max_pruning_ratio`` of a group's channels removed (rounded up to the group's step)."""
    return {g.name: round_keep(g.size, 1.0 - max_pruning_ratio, min_channels, group_step(g, round_to))
            for g in groups}


def floor_keep_counts(groups: Sequence[ChannelGroup], min_keep: Mapping[str, int], round_to: int = 1) -> dict[str, int]:
    """The fewest channels each group may keep: its floor, rounded as every count is."""
    return {g.name: round_keep(g.size, 0.0, min_keep[g.name], group_step(g, round_to)) for g in groups}


def _channel_params(model: nn.Module, groups: Sequence[ChannelGroup]) -> dict[str, float]:
    """Per group, the parameters that removing one of its channels saves."""
    full = {g.name: g.size for g in groups}
    base = estimate_params(model, groups, full)
    return {g.name: base - estimate_params(model, groups, {**full, g.name: g.size - 1}) for g in groups}


# ----------------------------------------------------------- the measures
@dataclass
class TargetMeasure:
    """How a fraction or latency target counts per-group keep counts: ``measure(keep)`` in the
    target's unit (MACs, parameters, channels or milliseconds), the ``limit`` it must not exceed
    and the dense model's ``total``."""

    kind: str
    limit: float
    total: float
    measure: Callable[[Mapping[str, int]], float]
    #: ``(keep) -> per group, the cost of one more channel`` in the unit channels compete in
    #: (MACs stand in for milliseconds: a latency table is a step function of the widths)
    unit_cost: Callable[[Mapping[str, int]], dict[str, float]]

    def fits(self, keep: Mapping[str, int]) -> bool:
        return self.measure(keep) <= self.limit * (1 + 1e-9)

    def fraction(self, keep: Mapping[str, int]) -> float:
        """The measure of ``keep`` as a fraction of the dense model's."""
        return self.measure(keep) / self.total if self.total else 1.0

    def describe(self, keep: Mapping[str, int]) -> str:
        """``keep``'s measure for a message: the fraction of the dense model's, and for a latency
        target the milliseconds too (``0.093 ms, 0.4011 of the dense model's 0.232 ms``)."""
        if self.kind == "latency":
            return f"{self.measure(keep):.3f} ms, {self.fraction(keep):.4f} of the dense model's {self.total:.3f} ms"
        return f"{self.fraction(keep):.4f} of the dense model"


def _marginal(groups: Sequence[ChannelGroup], measure: Callable[[Mapping[str, int]], float],
              keep: Mapping[str, int]) -> dict[str, float]:
    """Per group, what one channel more than ``keep`` costs by ``measure`` (one less where the
    group is whole), consumers that shrink with it included."""
    base = measure(keep)
    out = {}
    for g in groups:
        k = keep[g.name]
        if k < g.size:
            out[g.name] = measure({**keep, g.name: k + 1}) - base
        else:
            out[g.name] = base - measure({**keep, g.name: k - 1})
    return out


def measure_macs(groups: Sequence[ChannelGroup], cost: ModelCost, fraction: float) -> TargetMeasure:
    def measure(keep):
        return estimate_macs(groups, cost, keep)
    return TargetMeasure("macs", fraction * cost.macs, cost.macs, measure,
                         lambda keep: _marginal(groups, measure, keep))


def measure_params(model: nn.Module, groups: Sequence[ChannelGroup], cost: ModelCost, fraction: float) -> TargetMeasure:
    def measure(keep):
        return estimate_params(model, groups, keep)
    return TargetMeasure("params", fraction * cost.params, cost.params, measure,
                         lambda keep: _marginal(groups, measure, keep))


def measure_filters(groups: Sequence[ChannelGroup], fraction: float) -> TargetMeasure:
    total = sum(g.size for g in groups)
    return TargetMeasure("filters", fraction * total, total, lambda keep: float(sum(keep.values())),
                         lambda keep: {g.name: 1.0 for g in groups})


def measure_latency(groups: Sequence[ChannelGroup], cost: ModelCost, milliseconds: float, latency) -> TargetMeasure:
    if latency is None:
        raise ValueError("a latency target needs the model's measured latency table (lightning_ssr.latency)")
    macs = measure_macs(groups, cost, 1.0)
    return TargetMeasure("latency", milliseconds, latency.dense_ms, lambda keep: latency.predict(groups, cost, keep),
                         macs.unit_cost)


def target_measure(model: nn.Module, groups: Sequence[ChannelGroup], cost: ModelCost, target: Target,
                   latency=None) -> TargetMeasure:
    """The :class:`TargetMeasure` of a fraction or latency ``target`` on ``model`` (whose ``cost``
    is ``count_cost(model, example)``); ``latency``: a
    :class:`~lightning_ssr.latency.LatencyModel` of ``model``, for a latency target."""
    if target.kind == "macs":
        return measure_macs(groups, cost, target.macs)
    if target.kind == "params":
        return measure_params(model, groups, cost, target.params)
    if target.kind == "filters":
        return measure_filters(groups, target.filters)
    if target.kind == "latency":
        return measure_latency(groups, cost, target.latency, latency)
    raise ValueError(f"a {target.kind} target fixes the counts itself; it has no measure to allocate against")


# -------------------------------------------------------- the allocations
def uniform_counts(groups: Sequence[ChannelGroup], measure: TargetMeasure, min_keep: Mapping[str, int],
                   step: Mapping[str, int]) -> dict[str, int]:
    """Every group keeps the same fraction, the largest whose counts fit (by bisection)."""
    def counts(level: float) -> dict[str, int]:
        return {g.name: round_keep(g.size, level, min_keep[g.name], step[g.name]) for g in groups}
    return counts(_bisect(lambda level: measure.fits(counts(level))))


def threshold_counts(groups: Sequence[ChannelGroup], measure: TargetMeasure, values: Mapping[str, torch.Tensor],
                     min_keep: Mapping[str, int], step: Mapping[str, int]) -> dict[str, int]:
    """Channels compete across groups: every group keeps its channels whose value (``values[g]``,
    sorted in descending order) reaches one threshold, the lowest whose counts fit (by bisection)."""
    top = max(float(v.max()) for v in values.values())
    bottom = min(float(v.min()) for v in values.values())
    span = max(top - bottom, 1e-300)

    def counts(level: float) -> dict[str, int]:
        # level in [0, 1]: 0 keeps (almost) only the floor, 1 keeps every channel
        tau = top + 1e-9 * span - level * (1 + 2e-9) * span
        return {g.name: round_keep(g.size, int((values[g.name] >= tau).sum()) / g.size, min_keep[g.name],
                                   step[g.name]) for g in groups}
    return counts(_bisect(lambda level: measure.fits(counts(level))))


def _bisect(fits: Callable[[float], bool]) -> float:
    """The largest level in [0, 1] (to 2^-60) at which ``fits`` holds, for a monotone ``fits``."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


def fill_to_target(groups: Sequence[ChannelGroup], keep: dict[str, int], measure: TargetMeasure,
                   floor: Mapping[str, int], step: Mapping[str, int],
                   next_value: Callable[[ChannelGroup, Mapping[str, int]], float], trade: bool = True,
                   values: Mapping[str, torch.Tensor] | None = None,
                   tolerance: float = TARGET_TOLERANCE) -> dict[str, int]:
    """Close the gap that rounding leaves below the target: add one step at a time to the group
    whose next step is worth most (``next_value``) while the counts fit; then, if the gap is still
    over ``tolerance`` (a few costly channels left between the counts and the target) and
    ``trade``, move a step from one group to another, the pair that lands closest under the target
    (with ``values``, each group's channel values in descending order: of the pairs within the
    tolerance, the one that keeps most value)."""
    worth = None if values is None else (
        lambda counts: sum(float(values[g.name][:counts[g.name]].sum()) for g in groups))
    for _ in range(sum(g.size for g in groups)):  # each pass adds or trades at least one step
        candidates = [g for g in groups if keep[g.name] < g.size]
        for g in sorted(candidates, key=lambda g: (-next_value(g, keep), g.name)):
            bigger = {**keep, g.name: _step_up(keep[g.name], g.size, step[g.name])}
            if measure.fits(bigger):
                keep = bigger
                break
        else:
            if not trade or measure.measure(keep) >= (1 - tolerance) * measure.limit:
                return keep
            traded = _best_trade(groups, keep, floor, step, measure.measure, measure.limit, tolerance, worth=worth)
            if traded is None:
                return keep
            keep = traded
    return keep


def keep_counts(model: nn.Module, groups: Sequence[ChannelGroup], cost: ModelCost, target: Target,
                min_keep: Mapping[str, int], allocation: str = "uniform",
                scores: Mapping[str, torch.Tensor] | None = None, round_to: int = 1,
                latency=None, trade: bool = True) -> dict[str, int]:
    """Channels to keep in each group so that ``model`` meets ``target``.

    ``cost`` is ``count_cost(model, example)`` of the model the counts apply to; ``min_keep``
    the per-group floor (:func:`min_keep_counts`); every count is a multiple of ``round_to``
    (or the whole group). A latency target needs ``latency``, a
    :class:`~lightning_ssr.latency.LatencyModel` of the model at the target's batch size.

    - ``allocation="uniform"``: every group keeps the same fraction, the largest that fits.
    - ``allocation="global"``: channels compete across groups. Each channel's value is its
      importance (``scores[group]``, higher is more important) divided by the largest in its
      group (a group of all-zero scores: zero), over the cost one channel of its group carries
      (MACs, parameters or 1, as the target
      counts, relative to the mean); a threshold on that value, found by bisection, sets every
      group's count.
    - ``allocation="method"``: channels compete across groups by ``scores`` as given: values the
      method made comparable across layers (its own criterion; see
      :meth:`~lightning_ssr.methods.PruningMethod.allocation_scores`), so that the structure is the
      one the method learned, moved only as far as the target needs.

    Either way the gap rounding leaves below the target is then filled one step at a time (the
    group of lowest kept fraction, or of the most valuable next channel) and, with ``trade``,
    closed to within :data:`TARGET_TOLERANCE` by trading steps between groups.
    """
    if target.kind == "rates":
        rate = _rate_per_group(model, groups, target.rates)
        return {g.name: round_keep(g.size, 1.0 - rate[g.name], min_keep[g.name], group_step(g, round_to))
                for g in groups}
    if allocation not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    measure = target_measure(model, groups, cost, target, latency)
    step = {g.name: group_step(g, round_to) for g in groups}
    floor = floor_keep_counts(groups, min_keep, round_to)
    if not measure.fits(floor):
        raise target_too_small(target, measure.describe(floor))
    full = {g.name: g.size for g in groups}
    if measure.fits(full):
        return full
    if allocation == "uniform":
        keep = uniform_counts(groups, measure, min_keep, step)

        def next_value(g, keep):  # fill the group of lowest kept fraction first
            return -keep[g.name] / g.size
    else:
        values = (global_channel_values(model, groups, cost, target.kind, scores) if allocation == "global"
                  else _method_values(groups, scores))
        keep = threshold_counts(groups, measure, values, min_keep, step)

        def next_value(g, keep):  # the mean value of the channels the next step adds
            return float(values[g.name][keep[g.name]:_step_up(keep[g.name], g.size, step[g.name])].mean())
    # (the method's structure is traded only as far as the target's promise needs: MET_TOLERANCE)
    return fill_to_target(groups, keep, measure, floor, step, next_value, trade,
                          values=None if allocation == "uniform" else values,
                          tolerance=MET_TOLERANCE if allocation == "method" else TARGET_TOLERANCE)


def _method_values(groups: Sequence[ChannelGroup], scores: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Per group, the method's channel values sorted in descending order (checked)."""
    if scores is None:
        raise ValueError("allocation='method' needs the method's channel values (allocation_scores)")
    out = {}
    for g in groups:
        s = scores.get(g.name)
        if s is None or not torch.is_tensor(s) or s.numel() != g.size:
            got = ("no values" if s is None else f"{s.numel()} values" if torch.is_tensor(s) else
                   f"a {type(s).__name__}")
            raise ValueError(f"allocation='method': the method's allocation_scores() gave {got} for group {g.name!r}, "
                             f"which needs one value per channel, a tensor of {g.size}")
        s = s.detach().double().cpu().flatten()
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"allocation='method': the method's values for group {g.name!r} are not finite")
        out[g.name] = torch.sort(s, descending=True).values
    return out


def latency_table(model: nn.Module, example: torch.Tensor, groups: Sequence[ChannelGroup], cost: ModelCost,
                  target: Target, timing_input: torch.Tensor | None = None):
    """The per-layer latency table of ``model`` for a latency ``target``, timed on ``example``'s
    device at the target's batch size on the rows of ``timing_input`` (default ``example``; see
    :func:`~lightning_ssr.latency.timing_batch`). Returns the table and the timing batch."""
    rows = example if timing_input is None else timing_input.to(example.device, example.dtype)
    batch = timing_batch(rows, target.batch_size)
    return latency_model(model, batch, groups, cost), batch


def target_too_small(target: Target, floors_give: str, timed: str = "") -> ValueError:
    """The refusal of a target below what the floors already cost (``floors_give``: that cost,
    described), the same wherever it is found; ``timed``: how a latency target was timed."""
    unit = " ms" if target.kind == "latency" else ""
    return ValueError(f"target {target.kind}={target.value}{unit} is too small: the channels every layer must keep "
                      "(min_channels, max_pruning_ratio, round_to), with the layers that are not pruned (ignored or "
                      f"frozen), already give {floors_give}{timed}; raise the target or relax those limits")


def target_keep_counts(model: nn.Module, example: torch.Tensor, groups: Sequence[ChannelGroup], cost: ModelCost,
                       target: Target, min_keep: Mapping[str, int], allocation: str = "uniform",
                       scores: Mapping[str, torch.Tensor] | None = None, round_to: int = 1,
                       shared: Sequence[object] = (), timing_input: torch.Tensor | None = None,
                       table=None) -> tuple[dict[str, int], dict | None]:
    """:func:`keep_counts` for any target, the latency kind included: that one is timed on
    ``example``'s device at the target's batch size (a per-layer table, then whole pruned copies
    of ``model``: :func:`lightning_ssr.latency.calibrated_keep_counts`), on the rows of
    ``timing_input`` (default ``example``; see :func:`~lightning_ssr.latency.timing_batch`), or
    with ``table``, a :func:`~lightning_ssr.latency.latency_model` of ``model`` timed already.
    Timings on glibc drift by up to a third within a minute unless the process fixed the C
    allocator's thresholds first (:func:`~lightning_ssr.latency.steady_allocator`, opt-in: the
    command and the benchmarks do). Returns the counts and, for a latency target, ``{"dense_ms",
    "uncalibrated_ms", "predicted_ms", "calibrated_ms", "calibration_ms", "allocator",
    "calibration_load"}``
    (``allocator``: the thresholds fixed, ``None`` if the process did not)."""
    def allocate(table=None):
        return keep_counts(model, groups, cost, target, min_keep, allocation=allocation, scores=scores,
                           round_to=round_to, latency=table)
    if target.kind != "latency":
        return allocate(), None
    # the clock must repeat itself: with glibc's moving thresholds one pruned ResNet-20 measured 0.66
    # of its dense time for a 0.5 target, with them fixed 0.47-0.48 (lightning_ssr.latency)
    allocator = steadied_allocator()
    if table is None:
        table, batch = latency_table(model, example, groups, cost, target, timing_input)
    elif table.batch_size != target.batch_size:
        raise ValueError(f"the latency table was timed at batch {table.batch_size}, the target is for batch "
                         f"{target.batch_size}")
    else:
        rows = example if timing_input is None else timing_input.to(example.device, example.dtype)
        batch = timing_batch(rows, target.batch_size)
    floor = floor_keep_counts(groups, min_keep, round_to)
    try:
        allocate(table)
    except ValueError:  # the table may overrate what the floor costs: time the floor before refusing
        ms = measure_keep(model, batch, groups, floor, shared=shared, dense_ms=table.dense_ms)
        table.calibration.append([table.table_ms(groups, cost, floor), ms])
    with OtherProcessesLoad() as load:
        keep, info = calibrated_keep_counts(allocate, model, batch, groups, cost, table, shared=shared,
                                            target_ms=target.latency, floor=floor)
    return keep, {"dense_ms": table.dense_ms, **info, "allocator": allocator,
                  "calibration_load": load.to_dict() if batch.device.type == "cpu" else None}


def _best_trade(groups, keep, floor, step, measure, limit, tolerance=0.0, budget=20_000, worth=None):
    """Steps up in one group and, in another, the fewest steps down that bring the cost back under
    ``limit``: ``None`` if no such pair costs more than ``keep`` does.

    One step up first, the pair whose cost is largest (closest under the limit); with ``worth``
    (counts -> the value of the channels they keep: a method's or the importance's), of the pairs
    within ``tolerance`` of the limit the one that keeps most value, so that a trade does not undo
    what the values chose (by cost alone, a layer a method valued most gave up half its channels to
    land closer). Where no one-step trade improves (a small network, whose every step is a large
    share of the target), more steps up in one group: the fewest that reach within ``tolerance`` of
    the limit, else the pair of largest cost found. Two groups are searched exhaustively that way;
    more are searched pair by pair, within ``budget`` evaluations of ``measure`` (a large network's
    one-step trades suffice)."""
    def allowed(h, count):  # a count the rounding allows: a multiple of the group's step, or the floor
        return max(floor[h.name], count // step[h.name] * step[h.name])

    calls = 0
    goal = (1 - tolerance) * limit

    def cost_of(counts):
        nonlocal calls
        calls += 1
        return measure(counts)

    def rank(trial, cost):  # within the tolerance first, then the most value kept (or the cost)
        within = cost >= goal
        return (within, worth(trial) if within and worth is not None else cost)

    def best_at(ups: dict, best, best_cost):
        for g in groups:
            if g.name not in ups:
                continue
            up = {**keep, g.name: ups[g.name]}
            for h in groups:
                if h.name == g.name or keep[h.name] <= floor[h.name]:
                    continue
                lo, hi = floor[h.name], keep[h.name] - 1  # the largest count of h that fits, by bisection
                if cost_of({**up, h.name: allowed(h, lo)}) > limit * (1 + 1e-9):
                    continue
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if cost_of({**up, h.name: allowed(h, mid)}) <= limit * (1 + 1e-9):
                        lo = mid
                    else:
                        hi = mid - 1
                trial = {**up, h.name: allowed(h, lo)}
                cost = cost_of(trial)
                if cost > base and (best is None or rank(trial, cost) > rank(best, best_cost)):
                    best, best_cost = trial, cost
        return best, best_cost

    size = {g.name: g.size for g in groups}
    base = measure(keep)  # (a trade must cost more than the counts it leaves)
    ups = {n: _step_up(keep[n], size[n], step[n]) for n in size if keep[n] < size[n]}
    best, best_cost = best_at(ups, None, base)
    if best is not None:
        return best
    while calls < budget:
        ups = {n: _step_up(count, size[n], step[n]) for n, count in ups.items() if count < size[n]}
        if not ups:  # (every group full: no more steps up)
            break
        best, best_cost = best_at(ups, best, best_cost)
        if best is not None and best_cost >= goal:
            break
    return best


def global_channel_values(model: nn.Module, groups: Sequence[ChannelGroup], cost: ModelCost, kind: str,
                    scores: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """Per group, its channels' values for global allocation, sorted in descending order."""
    if scores is None:
        raise ValueError("allocation='global' needs channel importance scores (per group, one per channel)")
    missing = [g.name for g in groups if g.name not in scores or scores[g.name].numel() != g.size]
    if missing:
        raise ValueError(f"allocation='global': no importance scores (or the wrong number) for groups {missing[:5]}")
    if kind in ("macs", "latency"):  # latency: MACs stand in for the time one channel costs
        unit = channel_macs(groups, cost)
    elif kind == "params":
        unit = _channel_params(model, groups)
    else:
        unit = {g.name: 1.0 for g in groups}
    mean_unit = sum(unit[g.name] * g.size for g in groups) / max(sum(g.size for g in groups), 1)
    values = {}
    for g in groups:
        s = scores[g.name].detach().double().cpu().flatten()
        if not bool(torch.isfinite(s).all()):
            raise ValueError(f"allocation='global': the importance scores of group {g.name!r} are not finite")
        s = s.clamp_min(0.0)
        peak = float(s.max())
        # (a group of all-zero scores is the least important, not the most: taylor's scores are zero where no
        # gradient reaches, a group of dead filters, which was kept whole: review)
        normalized = s / peak if peak > 0 else torch.zeros_like(s)
        weight = mean_unit / unit[g.name] if unit[g.name] > 0 else float("inf")
        values[g.name] = torch.sort(normalized * weight, descending=True).values
    return values


def intermediate_keep_counts(sizes: Mapping[str, int], final: Mapping[str, int], step: int, steps: int,
                             min_keep: Mapping[str, int], round_to: int | Mapping[str, int] = 1) -> dict[str, int]:
    """Keep counts after prune event ``step`` (0-based) of ``steps`` equal shares on the way from
    ``sizes`` to ``final`` (iterative pruning); the last step reaches ``final`` exactly. ``round_to``:
    the granularity of every group, or per group (:func:`group_step`)."""
    if step >= steps - 1:
        return dict(final)
    share = (step + 1) / steps
    granularity = round_to if isinstance(round_to, Mapping) else {n: round_to for n in sizes}
    return {n: round_keep(size, 1.0 - (1.0 - final[n] / size) * share, max(final[n], min_keep.get(n, 1)),
                          granularity.get(n, 1)) for n, size in sizes.items()}


# ------------------------------------------------------------- the budget
class BudgetView:
    """A :class:`Budget` bound to one model's groups and cost: what a method that learns the
    structure (``allocation="method"``) consults while it trains. ``allocate(values)`` turns the
    method's cross-layer channel values into counts that meet the target, a gap over
    :data:`MET_TOLERANCE` closed by trading channels between groups as the prune does
    (:func:`fill_to_target`): the structure the method shapes while it trains is the one the prune
    keeps. (Without the trade, a small network learned 8-63 and was pruned to 9-55: channels the
    method had zeroed for the whole phase were kept, and ones it had trained removed.)"""

    def __init__(self, groups: Sequence[ChannelGroup], measure: TargetMeasure, min_keep: Mapping[str, int],
                 round_to: int):
        self.groups = list(groups)
        self.measure = measure
        self.min_keep = dict(min_keep)
        self.round_to = round_to
        self.step = {g.name: group_step(g, round_to) for g in self.groups}
        self.floor = floor_keep_counts(self.groups, self.min_keep, round_to)

    @property
    def kind(self) -> str:
        return self.measure.kind

    def fits(self, keep: Mapping[str, int]) -> bool:
        return self.measure.fits(keep)

    def fraction(self, keep: Mapping[str, int]) -> float:
        return self.measure.fraction(keep)

    def unit_cost(self, keep: Mapping[str, int]) -> dict[str, float]:
        """Per group, what one channel costs at the counts ``keep``, in the unit the target counts
        (MACs stand in for milliseconds), consumers included."""
        return self.measure.unit_cost(keep)

    def allocate(self, values: Mapping[str, torch.Tensor], limit: float | None = None) -> dict[str, int]:
        """Counts that meet the target (or ``limit``, in the target's unit: a budget on the way to
        it), channels competing across groups by ``values``. Never below the floors."""
        measure = self.measure
        if limit is not None:
            measure = dataclasses.replace(measure, limit=max(limit, measure.limit))
        full = {g.name: g.size for g in self.groups}
        if measure.fits(full):
            return full
        sorted_values = _method_values(self.groups, values)
        keep = threshold_counts(self.groups, measure, sorted_values, self.min_keep, self.step)

        def next_value(g, keep):
            return float(sorted_values[g.name][keep[g.name]:_step_up(keep[g.name], g.size, self.step[g.name])].mean())
        return fill_to_target(self.groups, keep, measure, self.floor, self.step, next_value, values=sorted_values,
                              tolerance=MET_TOLERANCE)


@dataclass(frozen=True)
class Budget:
    """The target and the limits every keep count obeys, and the one place that turns them into
    per-group keep counts: the callback, the command's pre-flight check,
    :func:`~lightning_ssr.methods.prune_oneshot` and the benchmarks all ask it.

    Args:
        target: a :class:`Target`, a mapping such as ``{"macs": 0.25}``, or ``None`` (no target:
            a method that can, decides alone).
        min_channels: channels every group keeps at least.
        max_pruning_ratio: the largest fraction of any group's (dense) channels that may go.
        allocation: how a fraction or latency target is divided among the layers (see
            :data:`ALLOCATIONS`); ``None``: ``"method"`` for methods that learn the structure while
            they train (:attr:`~lightning_ssr.methods.PruningMethod.learns_structure`),
            ``"uniform"`` for the others. A rates target fixes every layer's count itself.
        round_to: kept counts are multiples of this (a narrower group keeps all); ``None``: 8 on
            CUDA (tensor cores), 1 elsewhere, and 1 for a rates target (a given architecture).
    """

    target: Target | Mapping | None = None
    min_channels: int = 1
    max_pruning_ratio: float = 1.0
    allocation: str | None = None
    round_to: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "target", Target.coerce(self.target))
        object.__setattr__(self, "min_channels", check_number("Budget", "min_channels", self.min_channels, low=1,
                                                              integer=True))
        object.__setattr__(self, "max_pruning_ratio", check_number("Budget", "max_pruning_ratio",
                                                                   self.max_pruning_ratio, low=0.0, high=1.0,
                                                                   low_open=True))
        if self.allocation is not None:
            check_choice("Budget", "allocation", self.allocation, ALLOCATIONS)
        check_number("Budget", "round_to", self.round_to, low=1, integer=True, optional=True)

    def allocation_for(self, method=None) -> str:
        """The allocation the counts come from: ``"uniform"``, ``"global"`` or ``"method"``, or
        ``"rates"`` (given per layer) and ``"none"`` (no target). ``method``: the
        :class:`~lightning_ssr.methods.PruningMethod` that prunes (``None``: one that learns no
        structure). Refuses ``"method"`` for a method that learns none."""
        if self.target is None:
            return "none"
        if self.target.kind == "rates":
            return "rates"
        learns = bool(getattr(method, "learns_structure", False))
        if self.allocation is None:
            return "method" if learns else "uniform"
        if self.allocation == "method" and not learns:
            name = getattr(method, "name", None) or "this pruning"
            raise ValueError(f"allocation='method' takes the per-layer counts from the structure the method learns "
                             f"while it trains; {name!r} learns none (it ranks channels within each layer). Use "
                             "allocation='uniform' or 'global', or a method that learns it (ssr_l21, ssr_l20, ssl, "
                             "bn_scale).")
        return self.allocation

    def round_to_on(self, device: torch.device | str) -> int:
        """``round_to``, or its default on ``device``."""
        if self.round_to is not None:
            return self.round_to
        rates = self.target is not None and self.target.kind == "rates"
        return 8 if torch.device(device).type == "cuda" and not rates else 1

    def floors(self, groups: Sequence[ChannelGroup], round_to: int) -> dict[str, int]:
        """Channels each group keeps at least (:func:`min_keep_counts`)."""
        return min_keep_counts(groups, self.min_channels, self.max_pruning_ratio, round_to)

    def view(self, model: nn.Module, groups: Sequence[ChannelGroup], cost: ModelCost, round_to: int,
             latency=None) -> BudgetView:
        """This budget bound to ``model`` (a fraction or latency target; ``latency``: the model's
        :class:`~lightning_ssr.latency.LatencyModel` for a latency target)."""
        return BudgetView(groups, target_measure(model, groups, cost, self.target, latency),
                          self.floors(groups, round_to), round_to)

    def check(self, model: nn.Module, groups: Sequence[ChannelGroup], cost: ModelCost, round_to: int) -> None:
        """Before training: the target can be met (rates fit the model; the floors fit a fraction
        target). A latency target is checked where it is timed, on its device, at set-up."""
        if self.target is None or self.target.kind == "latency":
            return
        keep_counts(model, groups, cost, self.target, self.floors(groups, round_to), round_to=round_to)

    def keep_counts(self, model: nn.Module, example: torch.Tensor, groups: Sequence[ChannelGroup],
                    cost: ModelCost, *, round_to: int, allocation: str = "uniform",
                    scores: Mapping[str, torch.Tensor] | None = None, shared: Sequence[object] = (),
                    timing_input: torch.Tensor | None = None, table=None) -> tuple[dict[str, int], dict | None]:
        """Per-group keep counts that meet the target (:func:`target_keep_counts`): ``scores`` are
        the channels' importance for ``"global"``, the method's values for ``"method"``."""
        allocation = "uniform" if allocation in ("rates", "none") else allocation
        return target_keep_counts(model, example, groups, cost, self.target, self.floors(groups, round_to),
                                  allocation=allocation, scores=scores, round_to=round_to, shared=shared,
                                  timing_input=timing_input, table=table)

    def shortfall(self, model: nn.Module, groups: Sequence[ChannelGroup], cost: ModelCost,
                  keep: Mapping[str, int]) -> str | None:
        """What to say where whole channels leave ``keep`` more than :data:`MET_TOLERANCE` below a
        fraction target (a network of few, wide steps: one 16-channel group gave 0.448 of the MACs
        for 0.5, without a word: probe); ``None`` where they land within it, or the target has no
        fraction (rates, latency: said otherwise)."""
        target = self.target
        if target is None or target.kind not in ("macs", "params", "filters"):
            return None
        got, asked = target_measure(model, groups, cost, target).fraction(keep), getattr(target, target.kind)
        if got >= asked * (1 - MET_TOLERANCE) or all(keep[g.name] >= g.size for g in groups):
            return None
        return (f"target {target.to_dict()}: the closest the channel counts come below it is {got:.4f} of the dense "
                f"model's {target.kind} ({1 - got / asked:.1%} under, more than the {MET_TOLERANCE:.0%} a target is "
                "met within): whole channels allow no closer here (the widths, round_to, the blocks of grouped "
                "convolutions, the floors min_channels and max_pruning_ratio, coupled layers). Ask for the fraction "
                "reached, or a larger one, to know what the model will be")

    def to_dict(self) -> dict:
        return {"target": self.target.to_dict() if self.target is not None else None,
                "min_channels": self.min_channels, "max_pruning_ratio": self.max_pruning_ratio,
                "allocation": self.allocation, "round_to": self.round_to}
