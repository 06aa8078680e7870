"""AULM: ADMM for structured-sparsity regularized training, in plain PyTorch.

Splits ``min_W L(W) + lam R(W)`` into ``W = V`` with scaled dual ``U`` and penalty ``rho``:

1. W-step (every optimizer step, by the user's optimizer): the gradient of
   ``(rho/2) ||W - V + U||^2``, i.e. ``rho * (W - V + U)``, is added to ``W.grad``.
2. V-step: ``V = prox_{(lam/rho) R}(W + U)`` group by group (:mod:`lightning_ssr.prox`).
3. U-step: ``U = U + W - V``.
4. ``rho <- min(rho * rho_growth, rho_max)``, and ``U <- U * rho_old / rho_new`` so that the
   unscaled dual ``rho * U`` carries over (U is the dual scaled by 1/rho).

Convergence: the relative primal residual ``||W - V|| / ||W||`` is below ``tol`` and the
support of ``V`` (which groups are non-zero) has not changed for ``patience`` updates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .groups import ChannelGroup
from .prox import group_hard_threshold, group_soft_threshold, keep_top_k, protect_largest

REGULARIZERS = ("l21", "l20")
Sync = Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]


@dataclass
class AULMStats:
    primal_residual: float  # ||W - V||
    relative_primal_residual: float  # ||W - V|| / ||W||
    dual_residual: float  # rho * ||V - V_prev||
    rho: float  # the rho used by this update (before growth)
    surviving: dict[str, int]  # non-zero groups of V, per layer
    support_changed: bool


class AULM:
    """ADMM state (V, U, rho) for the grouped parameters of a model.

    ``params`` maps parameter names to the live parameters; ``groups`` come from
    :func:`lightning_ssr.groups.find_channel_groups`, each with its ``lam`` set. With
    ``keep`` (group name -> channel count) the V-step is the budget form of L2,0: keep the
    ``keep[g]`` channels of largest norm in each group. ``min_keep`` (a number, or a count per
    group) is the number of channels the threshold forms never remove.
    """

    def __init__(
        self,
        params: Mapping[str, torch.nn.Parameter],
        groups: Sequence[ChannelGroup],
        regularizer: str = "l21",
        rho: float = 0.1,
        rho_growth: float = 1.0,
        rho_max: float | None = None,
        keep: Mapping[str, int] | None = None,
        min_keep: int | Mapping[str, int] = 1,
        tol: float = 1e-3,
        patience: int = 3,
    ):
        if regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}")
        if not (rho > 0 and math.isfinite(rho)):
            raise ValueError(f"rho must be a positive number, got {rho}")
        if rho_growth < 1.0:
            raise ValueError(f"rho_growth must be >= 1, got {rho_growth}")
        if keep is not None and regularizer != "l20":
            raise ValueError("a channel budget (keep counts) is the budget form of L2,0: use regularizer='l20'")
        self.groups = list(groups)
        self.regularizer = regularizer
        self.rho = float(rho)
        self.rho_growth = float(rho_growth)
        self.rho_max = float(rho_max) if rho_max is not None else math.inf
        self.keep = dict(keep) if keep is not None else None
        self.min_keep = (dict(min_keep) if isinstance(min_keep, Mapping)
                         else {g.name: min(int(min_keep), g.size) for g in self.groups})
        self.tol = float(tol)
        self.patience = int(patience)
        names = sorted({s.param for g in self.groups for s in g.slices})
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"grouped parameters {missing} are not among the model's parameters")
        self.params = {n: params[n] for n in names}
        self.V: dict[str, torch.Tensor] = {}
        self.U: dict[str, torch.Tensor] = {}
        self.num_updates = 0
        self.stable_updates = 0
        self._support: dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ steps
    @property
    def started(self) -> bool:
        return bool(self.V)

    def _check_finite(self) -> None:
        bad = [n for n, p in self.params.items() if not bool(torch.isfinite(p).all())]
        if bad:
            raise FloatingPointError(
                f"non-finite values in {bad[:3]}: training diverged before the AULM update. Lower the "
                "learning rate or rho (rho * (W - V + U) is added to the gradients), or clip gradients.")

    def start(self, sync: Sync | None = None) -> None:
        """``U = 0`` and ``V = prox(W)``."""
        self._check_finite()
        with torch.no_grad():
            self.U = {n: torch.zeros_like(p) for n, p in self.params.items()}
            self.V = {n: p.detach().clone() for n, p in self.params.items()}
            self._support = self._prox_(self.V, sync)

    def add_penalty_gradient(self) -> None:
        """W-step: ``W.grad += rho * (W - V + U)`` for every grouped parameter with a gradient."""
        with torch.no_grad():
            for n, p in self.params.items():
                if p.grad is not None:
                    p.grad.add_(p.detach() - self.V[n] + self.U[n], alpha=self.rho)

    def update(self, sync: Sync | None = None) -> AULMStats:
        """V-step, U-step, residuals and the rho schedule.

        ``sync`` (optional) receives the per-group prox scales and returns the ones to apply;
        under data parallelism it broadcasts rank 0's, so every rank makes the same decision.
        """
        self._check_finite()
        with torch.no_grad():
            previous = self.V
            self.V = {n: p.detach() + self.U[n] for n, p in self.params.items()}
            support = self._prox_(self.V, sync)
            primal_sq = dual_sq = w_sq = 0.0
            for n, p in self.params.items():
                w = p.detach()
                diff = w - self.V[n]
                self.U[n].add_(diff)
                primal_sq += float(diff.double().pow(2).sum())
                dual_sq += float((self.V[n] - previous[n]).double().pow(2).sum())
                w_sq += float(w.double().pow(2).sum())
            changed = any(not torch.equal(support[k], self._support.get(k, support[k].logical_not()))
                          for k in support)
            self._support = support
            self.stable_updates = 0 if changed else self.stable_updates + 1
            self.num_updates += 1
            rho_used = self.rho
            self.rho = min(self.rho * self.rho_growth, self.rho_max)
            if self.rho != rho_used:  # U is the dual scaled by 1/rho: keep rho * U unchanged
                for u in self.U.values():
                    u.mul_(rho_used / self.rho)
        primal = math.sqrt(primal_sq)
        return AULMStats(
            primal_residual=primal,
            relative_primal_residual=primal / max(math.sqrt(w_sq), 1e-12),
            dual_residual=rho_used * math.sqrt(dual_sq),
            rho=rho_used,
            surviving=self.surviving(),
            support_changed=changed,
        )

    def _prox_(self, tensors: dict[str, torch.Tensor], sync: Sync | None = None) -> dict[str, torch.Tensor]:
        """Apply the group prox to ``tensors`` in place; return each group's support."""
        scales = {}
        for g in self.groups:
            norms = g.norms(tensors)
            if self.keep is not None:
                scale = keep_top_k(norms, self.keep[g.name])
            elif self.regularizer == "l21":
                scale = group_soft_threshold(norms, g.lam / self.rho)
            else:
                scale = group_hard_threshold(norms, g.lam / self.rho)
            scales[g.name] = protect_largest(scale, norms, self.min_keep[g.name])
        if sync is not None:
            scales = sync(scales)
        for g in self.groups:
            g.scale_(tensors, scales[g.name])
        return {name: scale > 0 for name, scale in scales.items()}

    # ---------------------------------------------------------------- queries
    def support(self) -> dict[str, torch.Tensor]:
        """Per group, a bool tensor: which channels V keeps."""
        return {k: v.clone() for k, v in self._support.items()}

    def surviving(self) -> dict[str, int]:
        return {k: int(v.sum()) for k, v in self._support.items()}

    def converged(self) -> bool:
        if not self.started or self.num_updates == 0:
            return False
        with torch.no_grad():
            primal = sum(float((p.detach() - self.V[n]).double().pow(2).sum()) for n, p in self.params.items())
            norm = sum(float(p.detach().double().pow(2).sum()) for p in self.params.values())
        return math.sqrt(primal) <= self.tol * max(math.sqrt(norm), 1e-12) and self.stable_updates >= self.patience

    def regularizer_value(self) -> float:
        """``sum_g lam_g ||W_g||`` for L2,1; ``sum_g lam_g [V_g != 0]`` for L2,0 (W is never exactly 0)."""
        total = 0.0
        with torch.no_grad():
            for g in self.groups:
                if self.regularizer == "l21":
                    total += g.lam * float(g.norms(self.params).sum())
                else:
                    total += g.lam * float(self._support[g.name].sum()) if self.keep is None \
                        else float(self._support[g.name].sum())
        return total

    def project_(self) -> None:
        """Hard projection: set W to V (zero) on every group V has removed."""
        with torch.no_grad():
            live = {n: p.data for n, p in self.params.items()}
            for g in self.groups:
                g.scale_(live, self._support[g.name].to(torch.float64))

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        return {
            "V": {n: t.clone() for n, t in self.V.items()},
            "U": {n: t.clone() for n, t in self.U.items()},
            "rho": self.rho,
            "num_updates": self.num_updates,
            "stable_updates": self.stable_updates,
            "support": {k: v.clone() for k, v in self._support.items()},
        }

    def load_state_dict(self, state: Mapping) -> None:
        names = set(self.params)
        for key in ("V", "U"):
            if set(state[key]) != names:
                raise ValueError(f"AULM state holds {key} for {sorted(state[key])}, but the model's grouped "
                                 f"parameters are {sorted(names)}: the checkpoint is from another model")
            for n, t in state[key].items():
                if tuple(t.shape) != tuple(self.params[n].shape):
                    raise ValueError(f"AULM state {key}[{n}] has shape {tuple(t.shape)}, the parameter has "
                                     f"{tuple(self.params[n].shape)}: the checkpoint is from another model")
        device = next(iter(self.params.values())).device
        self.V = {n: t.to(device).clone() for n, t in state["V"].items()}
        self.U = {n: t.to(device).clone() for n, t in state["U"].items()}
        self.rho = float(state["rho"])
        self.num_updates = int(state["num_updates"])
        self.stable_updates = int(state["stable_updates"])
        self._support = {k: v.clone().to(device) for k, v in state["support"].items()}
