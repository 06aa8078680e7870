"""``bn_scale``: network slimming (Liu et al. 2017).

During the sparsify phase an L1 penalty on the BatchNorm scales of every prunable channel
(``penalty * sign(gamma)`` added to their gradients) drives unneeded channels' gammas
toward zero; at the prune the channels of smallest ``|gamma|`` go
(:func:`lightning_ssr.methods.importance.bn_scale`).

With a target, the structure is the one the penalty learned (``allocation="method"``, the
default): as in the paper, one threshold on ``|gamma|`` over the whole network decides, set so
that the pruned model meets the target; and one global multiplier on ``penalty`` grows at each
update while the channels whose ``|gamma|`` exceeds ``threshold`` times the largest cost more
than the target allows (:meth:`~lightning_ssr.methods.continuation.Continuation.feedback`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..structure.groups import ChannelGroup
from ..validation import check_number
from .base import MethodContext, PruningMethod, methods_without_batchnorm, register_method, top_k_masks
from .continuation import Continuation
from .importance import batchnorm_scales, bn_scale

_BN = nn.modules.batchnorm._BatchNorm


@register_method("bn_scale")
class BNScale(PruningMethod):
    """Network slimming (Liu et al. 2017): L1 on the BatchNorm scales, then the smallest ``|gamma|`` go.

    Args:
        penalty: the L1 strength on BN gammas (``s`` in the paper: 1e-4 for VGG, 1e-5 for
            ResNet on CIFAR).
    """

    name = "bn_scale"
    sparsifies = True
    learns_structure = True
    requires_batchnorm = True

    def __init__(self, penalty: float = 1e-4, threshold: float = 1e-2, ramp: float = 0.5):
        self.penalty = check_number("bn_scale", "penalty", penalty, low=0.0)
        self.threshold = check_number("bn_scale", "threshold", threshold, low=0.0, high=1.0, high_open=True)
        self.ramp = check_number("bn_scale", "ramp", ramp, low=0.0, high=1.0, low_open=True)
        self._gammas: list[nn.Parameter] = []
        self._continuation: Continuation | None = None

    def check(self, model: nn.Module, groups: list[ChannelGroup]) -> None:
        self._scales(model, groups)

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        self._gammas = [context.params[n] for n in self._scales(context.model, context.groups)]
        self._continuation = Continuation.learning(context, self.ramp, growth_total=1000.0)

    @staticmethod
    def _scales(model: nn.Module, groups: list[ChannelGroup]) -> list[str]:
        """The BatchNorm scales of the groups (sorted), or an error naming the groups without one."""
        modules = dict(model.named_modules())

        def scales(slices):
            return [s.param for s in batchnorm_scales(modules, slices)]

        names, without, frozen = set(), [], []
        for g in groups:
            found = scales(g.slices)
            if not found:
                (frozen if scales(g.fixed) else without).append(g.name)
            names.update(found)
        others = methods_without_batchnorm()
        if frozen:  # its scale is there, but requires_grad=False: the penalty cannot move it
            frozen.sort()
            raise ValueError(f"bn_scale trains the BatchNorm scales towards zero, but the BatchNorm of "
                             f"{', '.join(map(repr, frozen))} is frozen (requires_grad=False). Unfreeze it, pass "
                             f"{frozen} in ignored_layers, or use another method ({others}).")
        if without and len(without) == len(groups):
            raise ValueError(f"bn_scale prunes by BatchNorm scales, but no prunable group of this model has a "
                             f"BatchNorm ({len(without)} groups: {sorted(without)}); bn_scale does not apply to it. "
                             f"Use a method that needs no BatchNorm: {others}.")
        if without:  # all of them at once: the user fixes the list in one go
            without.sort()
            raise ValueError(f"bn_scale prunes by BatchNorm scales, but the channels of {', '.join(map(repr, without))} "
                             f"have no BatchNorm. Pass {without} in ignored_layers, or use another method ({others}).")
        return sorted(names)

    @property
    def strength(self) -> float:
        return self._continuation.strength if self._continuation is not None else 1.0

    def before_optimizer_step(self) -> None:
        pairs = [(p, p.grad) for p in self._gammas if p.grad is not None]
        if not pairs or self.penalty == 0:
            return
        with torch.no_grad():
            torch._foreach_add_([g for _, g in pairs], torch._foreach_sign([p.detach() for p, _ in pairs]),
                                alpha=self.penalty * self.strength)

    def allocation_scores(self) -> dict[str, torch.Tensor]:
        """``|gamma|`` of every channel, as it is: one threshold over the whole network (the paper's rule)."""
        return {g.name: bn_scale(g, self.context.model) for g in self.context.groups}

    def learned_counts(self) -> dict[str, int]:
        """Per group, the channels whose ``|gamma|`` exceeds ``threshold`` times the network's largest."""
        scores = self.allocation_scores()
        top = max(float(s.max()) for s in scores.values())
        return {name: max(1, int((s > self.threshold * top).sum())) for name, s in scores.items()}

    def update(self) -> dict[str, float]:
        if self._continuation is None:
            return {}
        budget, counts = self.context.budget, self.learned_counts()
        strength = self._continuation.feedback(not budget.fits(counts))
        return {"strength": strength, "target_fraction": budget.fraction(counts)}

    def state_dict(self) -> dict:
        return {"continuation": self._continuation.state_dict()} if self._continuation is not None else {}

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("continuation") is not None and self._continuation is not None:
            self._continuation.load_state_dict(state["continuation"])

    def select(self, keep: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
        ctx = self.context
        return top_k_masks({g.name: bn_scale(g, ctx.model) for g in ctx.groups}, keep)

    def importance(self, model: nn.Module, groups) -> dict[str, torch.Tensor]:
        return {g.name: bn_scale(g, model) for g in groups}

    def metrics(self) -> dict[str, float]:
        if not self._gammas:
            return {}
        with torch.no_grad():
            total = sum(float(p.detach().abs().sum()) for p in self._gammas)
        return {"regularizer": total}

    def config(self) -> dict:
        return {"penalty": self.penalty, "threshold": self.threshold, "ramp": self.ramp}
