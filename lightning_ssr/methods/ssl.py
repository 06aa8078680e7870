"""``ssl``: structured sparsity learning by direct group lasso (Wen et al. 2016).

SGD on ``loss + sum_g lam_g ||W_g||_2`` over the same filter groups as SSR: each optimizer
step adds the subgradient ``lam_g W_g / ||W_g||`` (0 where a group is exactly 0) to the
gradients. Subgradient steps never reach exact zeros, so at the prune the groups whose norm
is below ``threshold`` times the largest norm of their layer are removed (or, with a target,
the top-k groups by norm stay). This is the solver AULM's speed claim is measured against
(``benchmarks/solver_speed.py``); ``lam`` and ``lam_scaling`` mean what they mean for SSR.

With a target, SSL learns the per-layer structure (``allocation="method"``, the default): one
global multiplier on ``lam`` grows at each update while the groups above the threshold cost
more than the target allows, and holds once they fit
(:meth:`~lightning_ssr.methods.continuation.Continuation.feedback`); the engine then keeps, in
every layer, the groups whose norm relative to the layer's largest clears one common threshold
that meets the target.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..validation import check_choice, check_number
from .base import MethodContext, PruningMethod, register_method, top_k_masks
from .continuation import Continuation
from .prox import protect_largest
from .ssr import LAM_SCALINGS, lam_at, resolve_lam


@register_method("ssl")
class SSL(PruningMethod):
    """SSL (Wen et al. 2016): group lasso by subgradient, then the groups below a threshold go.

    Args:
        lam: group-lasso strength (a number, or ``{layer: number}`` naming every prunable layer).
        lam_scaling: ``"flops"`` (per layer, by the MACs one filter costs) or ``"none"``.
        threshold: a group survives while its norm exceeds ``threshold`` times the largest norm
            in its layer.
        patience: :meth:`ready` once the surviving set has not changed for this many updates.
    """

    name = "ssl"
    sparsifies = True
    needs_target = False
    learns_structure = True

    def __init__(self, lam: float | Mapping[str, float] = 1e-3, lam_scaling: str = "flops",
                 threshold: float = 1e-2, patience: int = 3, ramp: float = 0.5):
        if isinstance(lam, Mapping):
            self.lam = {str(k): check_number("ssl", f"lam[{k!r}]", v, low=0.0) for k, v in lam.items()}
        else:
            self.lam = check_number("ssl", "lam", lam, low=0.0)
        self.lam_scaling = check_choice("ssl", "lam_scaling", lam_scaling, LAM_SCALINGS)
        self.threshold = check_number("ssl", "threshold", threshold, low=0.0, high=1.0, high_open=True)
        self.patience = check_number("ssl", "patience", patience, low=0, integer=True)
        self.ramp = check_number("ssl", "ramp", ramp, low=0.0, high=1.0, low_open=True)
        self._continuation: Continuation | None = None
        self._lam: dict[str, float] = {}
        self._support: dict[str, torch.Tensor] | None = None
        self.stable_updates = 0

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        self._lam = resolve_lam(context.groups, self.lam, self.lam_scaling, context.channel_macs)
        self._continuation = Continuation.learning(context, self.ramp, growth_total=1000.0)

    @property
    def strength(self) -> float:
        return self._continuation.strength if self._continuation is not None else 1.0

    def before_optimizer_step(self) -> None:
        params = self.context.params
        strength = self.strength
        with torch.no_grad():
            for g in self.context.groups:
                lam = self._lam[g.name] * strength
                if lam == 0 or all(params[s.param].grad is None for s in g.slices):
                    continue
                norms = g.norms(params)
                coef = torch.where(norms > 0, lam / norms.clamp_min(1e-30), torch.zeros_like(norms))
                for s in g.slices:
                    p = params[s.param]
                    if p.grad is None:  # frozen (a fixed placement) or unused: nothing to move
                        continue
                    grad, weight = p.grad.movedim(s.dim, 0), p.detach().movedim(s.dim, 0)
                    idx = s.index.reshape(-1).to(p.device)
                    factor = coef.to(p.device, p.dtype).repeat_interleave(s.index.shape[1])
                    grad[idx] += factor.view(-1, *([1] * (grad.dim() - 1))) * weight[idx]

    def _norms(self) -> dict[str, torch.Tensor]:
        params = {n: p.detach() for n, p in self.context.params.items()}
        return {g.name: g.norms(params).cpu() for g in self.context.groups}

    def support(self) -> dict[str, torch.Tensor]:
        """Per group: the channels whose norm exceeds ``threshold`` times the layer's largest."""
        out = {}
        norms = self._norms()
        for name, n in norms.items():
            scale = (n > self.threshold * n.max()).double()
            out[name] = protect_largest(scale, n, self.context.min_keep.get(name, 1)) > 0
        return out

    def update(self) -> dict[str, float]:
        support = self.support()
        if self.context.sync is not None:
            support = self.context.sync(support)
        same = self._support is not None and all(torch.equal(support[k], self._support[k]) for k in support)
        self.stable_updates = self.stable_updates + 1 if same else 0
        self._support = support
        out = {"filters": float(sum(int(v.sum()) for v in support.values()))}
        if self._continuation is not None:  # towards the target: stronger while the support costs too much
            budget, counts = self.context.budget, self.learned_counts()
            self._lam = lam_at(self.context, self.lam, self.lam_scaling, counts)
            out["strength"] = self._continuation.feedback(not budget.fits(counts))
            out["target_fraction"] = budget.fraction(counts)
        return out

    def allocation_scores(self) -> dict[str, torch.Tensor]:
        """Each group's norm relative to the largest of its layer (the quantity SSL thresholds)."""
        return {name: n / n.max().clamp_min(1e-30) for name, n in self._norms().items()}

    def learned_counts(self) -> dict[str, int] | None:
        if self._support is None:
            return None
        return {k: int(v.sum()) for k, v in self._support.items()}

    def ready(self) -> tuple[bool, str]:
        if self._continuation is not None and self._continuation.updates < self._continuation.ramp_updates:
            return False, "ssl: the strength is still rising towards the target"
        if self._support is not None and self.stable_updates >= self.patience:
            return True, f"ssl: the surviving groups have not changed for {self.stable_updates} updates"
        return False, "ssl: the surviving groups still change"

    def select(self, keep: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
        if keep is not None:
            return top_k_masks(self._norms(), keep)
        return self.support()

    def metrics(self) -> dict[str, float]:
        norms = self._norms()
        out = {"regularizer": self.strength * sum(self._lam[n] * float(v.sum()) for n, v in norms.items())}
        if self._support is not None:
            out.update({f"filters/{n}": float(v.sum()) for n, v in self._support.items()})
        return out

    def state_dict(self) -> dict:
        state = {"support": None if self._support is None else {k: v.clone() for k, v in self._support.items()},
                 "stable_updates": self.stable_updates}
        if self._continuation is not None:  # learning a target's structure: lam follows it
            state.update(continuation=self._continuation.state_dict(), lam=dict(self._lam))
        return state

    def load_state_dict(self, state: Mapping) -> None:
        support = state.get("support")
        self._support = None if support is None else {k: v.clone() for k, v in support.items()}
        self.stable_updates = int(state.get("stable_updates", 0))
        if state.get("lam"):
            self._lam = {k: float(v) for k, v in state["lam"].items()}
        if state.get("continuation") is not None and self._continuation is not None:
            self._continuation.load_state_dict(state["continuation"])

    def config(self) -> dict:
        return {"lam": self.lam, "lam_scaling": self.lam_scaling, "threshold": self.threshold,
                "patience": self.patience, "ramp": self.ramp}
