"""``oneshot``: prune the channels of lowest importance at once, then fine-tune.

No training-time term: the engine prunes at the first prune event (with an empty sparsify
phase, at the start of fine-tuning) the channels of lowest importance (group L2 norm by
default; see :mod:`lightning_ssr.methods.importance`). :func:`prune_oneshot` does the same to
a bare model, without a Trainer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..cost import count_cost
from ..structure.groups import align_blocks, find_channel_groups
from ..structure.plan import PruningPlan, applied_plan, mark_applied_plan, plan_from_support
from ..structure.surgery import check_finite, prune_channels
from ..targets import Budget, Target
from ..validation import check_number
from .base import PruningMethod, plain_data, register_method, top_k_masks
from .fsm import check_fsm_groups
from .importance import IMPORTANCES, get_importance, random_scores, without_batchnorm


@register_method("oneshot")
class OneShot(PruningMethod):
    """One-shot pruning by the group's L2 norm (or any importance), then fine-tuning.

    Args:
        importance: a name from :data:`lightning_ssr.methods.importance.IMPORTANCES`
            (``"l2"``, the SSR group norm, by default) or a callable ``(group, model) -> scores``.
    """

    name = "oneshot"

    def __init__(self, importance="l2"):
        if isinstance(importance, str) and importance not in IMPORTANCES:
            raise ValueError(f"oneshot: importance must be one of {sorted(IMPORTANCES)} or a callable, "
                             f"got {importance!r}")
        self.importance_fn = importance

    def check(self, model: nn.Module, groups) -> None:
        check_importance(self.importance_fn, model, groups, who="oneshot's")

    def select(self, keep: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
        ctx = self.context
        return top_k_masks(self.scores(ctx.model, ctx.groups), keep)

    def scores(self, model: nn.Module, groups) -> dict[str, torch.Tensor]:
        score = get_importance(self.importance_fn)
        return {g.name: score(g, model) for g in groups}

    def importance(self, model: nn.Module, groups) -> dict[str, torch.Tensor]:
        return self.scores(model, groups)

    def config(self) -> dict:
        fn = self.importance_fn
        return {"importance": plain_data(fn)}  # a function by its qualified name, the same in every process


def check_importance(importance, model: nn.Module, groups, who: str = "") -> None:
    """Refuse an importance that reads each channel's BatchNorm (``"bn_scale"``, ``"fsm"``, by name
    or as the function) on a model where a group has none, naming every such group: bn_scale
    scored those channels by their L1 norm instead, without a word, and was recorded as bn_scale
    (where ``pruning=bn_scale`` refuses the model); fsm named one group of several and advised the
    method in use (probe). ``who``: whose importance it is, in the message."""
    name = next((n for n in ("bn_scale", "fsm") if importance in (n, IMPORTANCES[n])), None)
    if name is None:
        return
    who, instead = f"{who} importance={name!r}".strip(), "importance='l1' or 'l2', which need no BatchNorm"
    if name == "fsm":
        check_fsm_groups(groups, model, who=who, instead=instead)
        return
    without = without_batchnorm(model, groups)
    if without:
        where = ("no prunable group of this model has one: use" if len(without) == len(groups) else
                 f"the channels of {', '.join(map(repr, without))} have none: pass {without} in ignored_layers, or use")
        raise ValueError(f"{who} ranks channels by their BatchNorm scales, but {where} {instead}.")


def prune_oneshot(model: nn.Module, example_inputs: torch.Tensor, target, importance="l1",
                  ignored_layers: Sequence[str] = (), min_channels: int = 1,
                  max_pruning_ratio: float = 1.0, allocation: str | None = None, round_to: int | None = None,
                  report: dict | None = None) -> PruningPlan:
    """Prune a bare ``model`` in place to ``target`` (a :class:`~lightning_ssr.targets.Target`, a
    mapping such as ``{"rates": "[0.5]*3"}``, or a rate list/expression), keeping the channels
    ``importance`` scores highest. Returns the plan from the model's constructed shapes (a model
    pruned before: both prunes in one), which :func:`lightning_ssr.structure.apply_plan` replays on
    a fresh model. ``min_channels``, ``max_pruning_ratio``, ``allocation`` (``"uniform"``
    by default, or ``"global"``) and ``round_to`` (by default 8 on CUDA, 1 elsewhere) are those of
    :class:`~lightning_ssr.targets.Budget`. For a latency target, ``report`` (a dict) receives the
    dense, uncalibrated, predicted and calibration timings in milliseconds."""
    if not torch.is_tensor(example_inputs):
        raise TypeError(f"prune_oneshot: example_inputs must be one input tensor (a batch the model's forward takes), "
                        f"got {type(example_inputs).__name__}")
    if isinstance(target, (str, list, tuple)):
        target = Target(rates=target)
    budget = Budget(target, min_channels=min_channels, max_pruning_ratio=max_pruning_ratio, allocation=allocation,
                    round_to=round_to)
    allocation = budget.allocation_for(None)  # "method" is refused: nothing learned a structure here
    groups = find_channel_groups(model, example_inputs, ignored_layers)
    check_finite(model)  # (a diverged model named as such, before its scores are read)
    check_importance(importance, model, groups, who="prune_oneshot:")
    cost = count_cost(model, example_inputs)
    score = get_importance(importance)
    scores = {g.name: score(g, model) for g in groups}
    # a latency target is timed here, on the inputs' device, at the target's batch size
    keep, timing = budget.keep_counts(model, example_inputs, groups, cost,
                                      round_to=budget.round_to_on(example_inputs.device), allocation=allocation,
                                      scores=scores)
    if report is not None and timing is not None:
        report.update(timing)
    top = top_k_masks(scores, keep)
    masks = {g.name: align_blocks(g, top[g.name], scores[g.name]) for g in groups}
    plan = plan_from_support(example_inputs.shape, masks, groups)
    prior = applied_plan(model)
    prune_channels(model, example_inputs, plan.kept, plan.sizes)
    if prior is not None:  # (a model pruned before: prune_channels composed this cut into its record)
        return applied_plan(model)
    mark_applied_plan(model, plan)  # (a checkpoint of it keeps the plan)
    return plan


@register_method("l1")
class L1(OneShot):
    """L1-norm filter pruning (Li et al. 2017): one-shot, the filters of smallest L1 norm go."""

    name = "l1"

    def __init__(self):
        super().__init__("l1")


@register_method("random")
class RandomPruning(OneShot):
    """Random filter pruning, the floor every criterion must beat; reproducible by ``seed``."""

    name = "random"

    def __init__(self, seed: int = 0):
        check_number("random", "seed", seed, low=0, integer=True)
        self.seed = int(seed)
        super().__init__(lambda group, model: random_scores(group, model, self.seed))

    def config(self) -> dict:
        return {"seed": self.seed}
