"""``taylor``: first-order Taylor importance (Molchanov et al. 2017; the group form of 2019).

Removing a channel zeroes its output side (its filter rows, bias and BN affine parameters,
the group's ``slices``); to first order that changes the loss by ``sum_i g_i w_i`` over
those parameters, so the channel's importance is ``(sum_i g_i w_i)^2``. The method trains
normally through the sparsify phase (no term) and, at every optimizer step, records each
channel's score from the step's gradients; at the prune the scores of the last ``batches``
steps are summed and the channels of lowest total go. With ``allocation="global"`` those sums
also decide how many each layer keeps: channels compete across layers at the prune
(:meth:`Taylor.importance_at_prune`), by the engine's global rule (each layer's scores divided by
its largest, over the cost of one of its channels; Molchanov et al. 2017 rank across layers after
dividing each layer's by their L2 norm, and 2019 without a normalization).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..validation import check_number
from .base import MethodContext, PruningMethod, register_method, top_k_masks
from .importance import first_order_taylor


@register_method("taylor")
class Taylor(PruningMethod):
    """First-order Taylor importance, accumulated over the last ``batches`` optimizer steps.

    Args:
        batches: how many of the last optimizer steps (>= 1) the importance sums over (all of
            them where the sparsify phase holds fewer: each prune event records how many,
            ``taylor_steps_summed``).
    """

    name = "taylor"
    sparsifies = True  # it needs training steps before the prune, to see gradients

    def __init__(self, batches: int = 64):
        self.batches = check_number("taylor", "batches", batches, low=1, integer=True)
        self._window: dict[str, torch.Tensor] = {}
        self._seen = 0

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        device = next(iter(context.params.values())).device  # scores stay there: no sync per step
        self._window = {g.name: torch.zeros(self.batches, g.size, dtype=torch.float64, device=device)
                        for g in context.groups}
        self._seen = 0

    def scores_now(self) -> dict[str, torch.Tensor]:
        """Each channel's ``(sum g * w)^2`` from the gradients present now."""
        return {g.name: first_order_taylor(g, self.context.params) for g in self.context.groups}

    def before_optimizer_step(self) -> None:
        row = self._seen % self.batches
        for name, score in self.scores_now().items():
            self._window[name][row] = score.to(self._window[name].device)
        self._seen += 1

    def importance_at_prune(self) -> dict[str, torch.Tensor]:
        """The accumulated scores: with ``allocation="global"`` channels compete across layers by
        them at the prune (the engine's global rule), rather than by the dense weights at set-up."""
        return self.accumulated()

    def accumulated(self) -> dict[str, torch.Tensor]:
        if self._seen == 0:
            raise RuntimeError("taylor ranks channels by the gradients of the steps before the prune, and none "
                               "were seen: give it schedule.sparsify_epochs >= 1")
        return {name: w.sum(0).cpu() for name, w in self._window.items()}

    def select(self, keep: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
        return top_k_masks(self.accumulated(), keep)

    def after_rebuild(self, model, plan) -> dict:
        """The steps the scores summed, recorded in the prune event: fewer than ``batches`` where the
        sparsify phase held fewer optimizer steps (nothing said of it otherwise: probe)."""
        return {"taylor_steps_summed": min(self._seen, self.batches)}

    def state_dict(self) -> dict:
        return {"window": {k: v.cpu().clone() for k, v in self._window.items()}, "seen": self._seen}

    def load_state_dict(self, state: Mapping) -> None:
        window = state.get("window") or {}
        for name, w in window.items():
            if name not in self._window or tuple(w.shape) != tuple(self._window[name].shape):
                raise ValueError(f"taylor: the checkpoint's scores for {name!r} do not match this model's groups; "
                                 "the checkpoint is from another model or another batches= setting")
            self._window[name] = w.clone().double().to(self._window[name].device)
        self._seen = int(state.get("seen", 0))

    def config(self) -> dict:
        return {"batches": self.batches}
