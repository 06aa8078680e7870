"""Rate-based structural pruning: per-layer pruning rates, as the papers give them.

Rates are listed per convolution, in the order the convolutions appear in
``model.named_modules()`` (FSM/HRank order), either as a list or as the papers' rate
expressions such as ``"[0.]+[0.6,0.]*9+[0.6,0.]*9+[0.4,0.]*9"``, which
:func:`parse_rates` reads without ``eval``. A shorter list is padded with zeros. A layer at
rate ``r`` keeps ``ceil(C * (1 - r))`` of its ``C`` channels (the FSM convention); the
importance criterion picks which.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence

import torch
from torch import nn

from .criteria import get_criterion
from .groups import ChannelGroup, find_channel_groups
from .plan import PruningPlan, prune_channels

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


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
        if isinstance(left, list) and isinstance(right, int):
            return left * right
        if isinstance(right, list) and isinstance(left, int):
            return right * left
    raise ValueError(f"rate expression {expr!r}: only numbers, [lists], list + list and list * int are "
                     f"allowed (found {ast.dump(node)[:60]})")


def conv_layer_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, _CONV)]


def keep_counts_from_rates(model: nn.Module, groups: Sequence[ChannelGroup], rates) -> dict[str, int]:
    """Channels to keep per group for per-convolution ``rates``."""
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
    keep = {}
    for g in groups:
        rs = {by_layer[m] for m in g.out_modules if m in by_layer}
        if len(rs) > 1:
            raise ValueError(f"layers {[m for m in g.out_modules if m in by_layer]} share their output channels "
                             f"(a residual stream or a depthwise pair) but got different rates {sorted(rs)}")
        rate = rs.pop() if rs else 0.0
        keep[g.name] = max(1, math.ceil(round(g.size * (1.0 - rate), 6)))
    return keep


def prune_by_rates(model: nn.Module, example_inputs: torch.Tensor, rates, criterion="l1",
                   ignored_layers: Sequence[str] = ()) -> PruningPlan:
    """Prune ``model`` in place at per-convolution ``rates``, keeping the channels the
    ``criterion`` (``"l1"``, ``"l2"``, ``"bn_scale"``, ``"random"`` or a callable) scores
    highest. Returns the plan, which :func:`lightning_ssr.plan.apply_plan` replays."""
    score = get_criterion(criterion)
    groups = find_channel_groups(model, example_inputs, ignored_layers)
    keep = keep_counts_from_rates(model, groups, rates)
    plan = PruningPlan(input_shape=[1, *example_inputs.shape[1:]])
    for g in groups:
        order = torch.sort(score(g, model), descending=True, stable=True).indices[:keep[g.name]]
        plan.kept[g.name] = sorted(int(i) for i in order)
        plan.sizes[g.name] = g.size
    prune_channels(model, example_inputs, plan.kept, plan.sizes)
    return plan
