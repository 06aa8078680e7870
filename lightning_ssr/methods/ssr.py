"""SSR (``ssr_l21``, ``ssr_l20``): structured-sparsity regularization solved by AULM, in plain PyTorch.

Splits ``min_W L(W) + lam R(W)`` into ``W = V`` with scaled dual ``U`` and penalty ``rho``:

1. W-step (every optimizer step, by the user's optimizer): the gradient of
   ``(rho/2) ||W - V + U||^2``, i.e. ``rho * (W - V + U)``, is added to ``W.grad``.
2. V-step: ``V = prox_{(lam/rho) R}(W + U)`` group by group (:mod:`lightning_ssr.methods.prox`).
3. U-step: ``U = U + W - V``.
4. ``rho <- min(rho * rho_growth, rho_max)``, and ``U <- U * rho_old / rho_new`` so that the
   unscaled dual ``rho * U`` carries over (U is the dual scaled by 1/rho).

Convergence: the relative primal residual ``||W - V|| / ||W||`` is below ``tol`` and the
support of ``V`` (which groups are non-zero) has not changed for ``patience`` updates.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ..structure.groups import ChannelGroup, FlatChannels
from ..validation import check_choice, check_number
from .base import MethodContext, PruningMethod, Sync, register_method, top_k_masks
from .continuation import Continuation
from .importance import first_order_taylor
from .prox import group_hard_threshold, group_soft_threshold, keep_top_k, protect_largest

REGULARIZERS = ("l21", "l20")
LAM_SCALINGS = ("flops", "none")


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
    :func:`lightning_ssr.structure.find_channel_groups`; ``lam`` maps each group's name to its
    regularization strength (:func:`resolve_lam`). With
    ``keep`` (group name -> channel count) the V-step is the budget form of L2,0: keep the
    ``keep[g]`` channels of largest norm in each group; ``keep`` may also be a function of every
    group's norms of ``W + U`` returning the counts (a budget over all layers at once). With
    ``keep`` and L2,1 the V-step is the prox of ``lam * L2,1`` plus the budget: the soft threshold
    ``lam / rho`` on the ``keep[g]`` channels of largest norm, zero on the others (the soft
    threshold keeps the order of the norms, so selecting before or after it is the same).
    ``min_keep`` (a number, or a count per group) is the number of channels the threshold forms
    never remove.
    """

    def __init__(
        self,
        params: Mapping[str, torch.nn.Parameter],
        groups: Sequence[ChannelGroup],
        lam: Mapping[str, float] | None = None,
        regularizer: str = "l21",
        rho: float = 0.1,
        rho_growth: float = 1.0,
        rho_max: float | None = None,
        keep: Mapping[str, int] | Callable[[dict[str, torch.Tensor]], Mapping[str, int]] | None = None,
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
        self.groups = list(groups)
        self.lam = {g.name: float((lam or {}).get(g.name, 0.0)) for g in self.groups}
        self.regularizer = regularizer
        self.rho = float(rho)
        self.rho_growth = float(rho_growth)
        self.rho_max = float(rho_max) if rho_max is not None else math.inf
        self.keep = keep if keep is None or callable(keep) else dict(keep)
        self.min_keep = (dict(min_keep) if isinstance(min_keep, Mapping)
                         else {g.name: min(int(min_keep), g.size) for g in self.groups})
        self.tol = float(tol)
        self.patience = int(patience)
        names = sorted({s.param for g in self.groups for s in g.measured})
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"grouped parameters {missing} are not among the model's parameters")
        self.params = {n: params[n] for n in names}
        self._plist = list(self.params.values())
        device = self._plist[0].device if self._plist else "cpu"
        self.flat = FlatChannels(self.groups, {n: p.shape for n, p in self.params.items()}, device)
        self._shift: list[torch.Tensor] = []  # rho * (U - V), refreshed whenever V, U or rho change
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
        self._refresh_shift()

    def _refresh_shift(self) -> None:
        with torch.no_grad():
            diff = torch._foreach_sub([self.U[n] for n in self.params], [self.V[n] for n in self.params])
            torch._foreach_mul_(diff, self.rho)
        self._shift = diff

    def add_penalty_gradient(self) -> None:
        """W-step: ``W.grad += rho * (W - V + U)`` for every grouped parameter with a gradient.

        Two vectorized calls over all grouped parameters (``rho * (U - V)`` is precomputed at
        each update), no host-device synchronization.
        """
        grads = [p.grad for p in self._plist]
        if any(g is None for g in grads):  # e.g. a frozen or unused parameter
            keep = [i for i, g in enumerate(grads) if g is not None]
            params, shift, grads = [self._plist[i] for i in keep], [self._shift[i] for i in keep], \
                [grads[i] for i in keep]
        else:
            params, shift = self._plist, self._shift
        if not grads:
            return
        with torch.no_grad():
            torch._foreach_add_(grads, shift)
            torch._foreach_add_(grads, [p.detach() for p in params], alpha=self.rho)

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
            names = list(self.params)
            weights = [p.detach() for p in self._plist]
            vs = [self.V[n] for n in names]
            diff = torch._foreach_sub(weights, vs)
            torch._foreach_add_([self.U[n] for n in names], diff)
            dual = torch._foreach_sub(vs, [previous[n] for n in names])
            sums = torch.stack([torch.stack(torch._foreach_norm(t)).double().pow(2).sum()
                                for t in (diff, dual, weights)]).tolist()  # one synchronization
            primal_sq, dual_sq, w_sq = sums
            changed = any(not torch.equal(support[k], self._support.get(k, support[k].logical_not()))
                          for k in support)
            self._support = support
            self.stable_updates = 0 if changed else self.stable_updates + 1
            self.num_updates += 1
            rho_used = self.rho
            self.rho = min(self.rho * self.rho_growth, self.rho_max)
            if self.rho != rho_used:  # U is the dual scaled by 1/rho: keep rho * U unchanged
                torch._foreach_mul_(list(self.U.values()), rho_used / self.rho)
        self._refresh_shift()
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
        all_norms = self.flat.norms(tensors)
        norms = self.flat.split(all_norms)
        keep = self.keep(norms) if callable(self.keep) else self.keep
        scales = {}
        for g in self.groups:
            n = norms[g.name]
            if keep is not None and self.regularizer == "l21":  # the prox of lam * L2,1 + a support budget
                scale = group_soft_threshold(n, self.lam[g.name] / self.rho) * keep_top_k(n, keep[g.name])
            elif keep is not None:
                scale = keep_top_k(n, keep[g.name])
            elif self.regularizer == "l21":
                scale = group_soft_threshold(n, self.lam[g.name] / self.rho)
            else:
                scale = group_hard_threshold(n, self.lam[g.name] / self.rho)
            scales[g.name] = protect_largest(scale, n, self.min_keep[g.name])
        if sync is not None:
            scales = sync(scales)
        self.flat.scale_(tensors, self.flat.join(scales, all_norms.device))
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
        trained = {n: p for n, p in self.params.items() if p.requires_grad}  # frozen ones cannot follow V
        with torch.no_grad():
            primal = sum(float((p.detach() - self.V[n]).double().pow(2).sum()) for n, p in trained.items())
            norm = sum(float(p.detach().double().pow(2).sum()) for p in trained.values())
        return math.sqrt(primal) <= self.tol * max(math.sqrt(norm), 1e-12) and self.stable_updates >= self.patience

    def regularizer_value(self) -> float:
        """``sum_g lam_g ||W_g||`` for L2,1; ``sum_g lam_g [V_g != 0]`` for L2,0 (W is never exactly 0)."""
        total = 0.0
        with torch.no_grad():
            for g in self.groups:
                if self.regularizer == "l21":
                    total += self.lam[g.name] * float(g.norms(self.params).sum())
                else:
                    total += self.lam[g.name] * float(self._support[g.name].sum()) if self.keep is None \
                        else float(self._support[g.name].sum())
        return total

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        return {
            "V": {n: t.clone() for n, t in self.V.items()},
            "U": {n: t.clone() for n, t in self.U.items()},
            "rho": self.rho,
            "lam": dict(self.lam),
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
        if "lam" in state:
            self.lam = {k: float(v) for k, v in state["lam"].items()}
        self.num_updates = int(state["num_updates"])
        self.stable_updates = int(state["stable_updates"])
        self._support = {k: v.clone().to(device) for k, v in state["support"].items()}
        self._refresh_shift()


def resolve_lam(groups: Sequence[ChannelGroup], lam, scaling: str = "flops",
                channel_macs: Mapping[str, float] | None = None,
                counts: Mapping[str, int] | None = None) -> dict[str, float]:
    """Regularization strength per group.

    - ``lam`` a number and ``scaling="flops"`` (default): ``lam * channel_macs[g] / mean``,
      the mean taken over all channels of the model (``counts``: over the channels of that
      structure, with ``channel_macs`` what one channel costs there). A filter whose removal
      saves more compute is pushed harder, so the regularizer spends sparsity where it buys speed.
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
        return {n: float(lam[n]) for n in names}
    check_choice("resolve_lam", "lam_scaling", scaling, LAM_SCALINGS)
    if scaling == "none":
        return {n: float(lam) for n in names}
    if channel_macs is None:
        raise ValueError("resolve_lam: lam_scaling='flops' needs channel_macs (lightning_ssr.cost.channel_macs)")
    counts = counts or {g.name: g.size for g in groups}
    channels = sum(counts[g.name] for g in groups)
    mean = sum(counts[g.name] * channel_macs[g.name] for g in groups) / max(channels, 1)
    return {g.name: float(lam) * channel_macs[g.name] / mean if mean > 0 else float(lam) for g in groups}


def lam_at(context: MethodContext, lam, scaling: str, counts: Mapping[str, int]) -> dict[str, float]:
    """Per-group lam at the structure ``counts`` (a method learning a target's structure): with
    ``scaling="flops"``, proportional to what one channel costs there in the target's unit
    (``context.budget``); without a budget, at the dense model's MACs (:func:`resolve_lam`)."""
    if context.budget is None or isinstance(lam, Mapping) or scaling == "none":
        return resolve_lam(context.groups, lam, scaling, context.channel_macs)
    return resolve_lam(context.groups, lam, scaling, context.budget.unit_cost(counts), counts)


class SSR(PruningMethod):
    r"""Structured-sparsity regularization (L2,1 or L2,0 over filter groups) solved with AULM.

    Register names: ``ssr_l21`` (group lasso, soft threshold) and ``ssr_l20`` (hard threshold;
    with a target, the budget form).

    With a target, SSR learns the per-layer structure itself (``allocation="method"``, the
    default). At every V-step the channels compete across all layers by one value: what removing
    the channel would cost the loss, to first order (``(sum g * w)^2`` over its output side, or for a
    frozen layer over the consumers' weights that read it, the
    loss's gradients summed over the optimizer steps since the last V-step, before the penalty's
    are added, as :func:`~lightning_ssr.methods.importance.first_order_taylor`), over the cost of one
    channel of its layer at the structure being learned (in the target's unit; ``lam_scaling="none"``:
    not divided). Loss units are what a knapsack over all layers needs: the same number means the
    same damage in any layer, and a ReLU network cannot rescale it away. At the V-step of the start
    there is no gradient yet; there the value is the product of the channel's norm in ``W + U``
    and the norm of the consumers' weights that read it (rescale-invariant, but not comparable
    across layers: used alone it cut LeNet-5's conv2 to 3 channels at 40x with L2,1). L2,0
    projects onto the target at that first V-step and the loss values move channels between
    layers from the first update on (waiting for the first gradients instead, and projecting
    from a few steps' values, locked in a degenerate structure on a LeNet-5 seed). Channels the
    V-step zeroes are pulled to zero by the penalty, so their value falls, unless the loss pulls
    back. The channels of highest value that meet the budget of this update stay, and V keeps, in
    each layer, that many channels:

    - L2,1: the V-step is the prox of ``lam * L2,1`` plus the budget (the soft threshold on the
      channels the budget keeps, zero on the others), and the budget falls from the dense
      model's cost to the target along a geometric path over the first ``ramp`` of the sparsify
      phase (a continuation). The budget, not ``lam``, decides how much goes: the user gives the
      target and never tunes ``lam``, which only shrinks the survivors a little. (One global
      multiplier raised on ``lam`` until the soft threshold alone meets the target lets the
      filters' own norms decide across layers, which a ReLU network rescales at will: on a toy
      network that multiplier emptied the one layer that could lose nothing, and raised just
      enough to meet the target at every update it shrank every surviving channel by as much
      as the largest one it dropped.)
    - L2,0: the budget is the target from the first V-step (the budget form, over all layers),
      so channels can move between layers while AULM runs. In practice the first updates decide:
      in every LeNet-5 run of the MNIST 40x benchmarks the structure stopped changing within the
      first 750 optimizer steps (of 5150 to 13750; their ``trajectory``), the channels zeroed
      early having lost their value by then.
      With ``ramp`` the budget of L2,0 falls to the target along L2,1's geometric path instead,
      so the channels compete at every budget on the way (gradual pruning, not one cut).

    With ``allocation="uniform"`` or ``"global"`` the engine fixes the counts at set-up; L2,0's
    V-step then keeps the top-k of each layer (the budget form) and L2,1 keeps the top-k of V.

    Args:
        regularizer: ``"l21"`` or ``"l20"``.
        lam: a number >= 0, or a mapping ``{layer: number}`` naming every prunable layer (names
            relative to the LightningModule, e.g. ``"model.conv1"``). With a target, L2,1's shrinkage of
            the channels the budget keeps; unused by L2,0's budget form.
        lam_scaling: with a numeric ``lam``: ``"flops"`` scales it per layer by what one filter
            of that layer costs, relative to the mean (MACs; with a target learned by the method,
            the target's own unit at the current structure); ``"none"`` uses it as is.
        rho, rho_growth, rho_max: ADMM penalty, its growth factor per update and its cap.
        tol, patience: convergence (:meth:`ready`): relative primal residual below ``tol`` with an
            unchanged support for ``patience`` updates.
        ramp: with a target whose structure SSR learns (``allocation="method"``; otherwise
            unused), the fraction of the sparsify phase's updates over which the budget falls to
            the target. ``None`` (the default): 0.5 for L2,1; for L2,0 no ramp, the target from
            the first V-step (a ramp changed nothing measurable on LeNet-5 at 40x: README).
    """

    sparsifies = True
    needs_target = False
    learns_structure = True

    def __init__(self, regularizer: str = "l21", lam: float | Mapping[str, float] = 1e-3,
                 lam_scaling: str = "flops", rho: float = 0.1, rho_growth: float = 1.0,
                 rho_max: float | None = None, tol: float = 1e-3, patience: int = 3,
                 ramp: float | None = None):
        owner = f"ssr_{regularizer}" if regularizer in REGULARIZERS else "SSR"
        self.regularizer = check_choice(owner, "regularizer", regularizer, REGULARIZERS)
        self.name = f"ssr_{regularizer}"
        if isinstance(lam, Mapping):
            self.lam = {str(k): check_number(owner, f"lam[{k!r}]", v, low=0.0) for k, v in lam.items()}
        else:
            self.lam = check_number(owner, "lam", lam, low=0.0)
        self.lam_scaling = check_choice(owner, "lam_scaling", lam_scaling, LAM_SCALINGS)
        self.rho = check_number(owner, "rho", rho, low=0.0, low_open=True)
        self.rho_growth = check_number(owner, "rho_growth", rho_growth, low=1.0)
        self.rho_max = check_number(owner, "rho_max", rho_max, low=self.rho, optional=True)
        self.tol = check_number(owner, "tol", tol, low=0.0, low_open=True)
        self.patience = check_number(owner, "patience", patience, low=0, integer=True)
        self.ramp = check_number(owner, "ramp", ramp, low=0.0, high=1.0, low_open=True, optional=True)
        self.aulm: AULM | None = None
        self._counts: dict[str, int] | None = None  # the structure being learned (allocation="method")
        self._continuation: Continuation | None = None
        self._taylor: dict[str, torch.Tensor] = {}  # the channels' loss-unit values since the last V-step
        self._scores: dict[str, torch.Tensor] = {}  # the values the last V-step allocated by

    @property
    def effective_ramp(self) -> float | None:
        """``ramp`` as used: given, or 0.5 for L2,1 and none for L2,0."""
        return self.ramp if self.ramp is not None else (0.5 if self.regularizer == "l21" else None)

    @property
    def allocating(self) -> bool:
        """Whether SSR learns the counts towards a target (``allocation="method"``)."""
        ctx = getattr(self, "context", None)
        return ctx is not None and ctx.allocation == "method" and ctx.budget is not None

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        lam = resolve_lam(context.groups, self.lam, self.lam_scaling, context.channel_macs)
        keep = context.keep if self.regularizer == "l20" else None
        self._counts, self._continuation, self._taylor, self._scores = None, None, {}, {}
        if self.allocating:
            self._counts = {g.name: g.size for g in context.groups}
            keep = self._project
            if self.effective_ramp is not None:
                self._continuation = Continuation.learning(context, self.effective_ramp)
        self.aulm = AULM(context.params, context.groups, lam, self.regularizer, self.rho, self.rho_growth,
                         self.rho_max, keep, context.min_keep, self.tol, self.patience)

    # ----------------------------------------------- learning the structure
    def _values(self, norms: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per group, each channel's value over its layer's lam at the structure being learned: its
        first-order Taylor value (loss units) summed over the optimizer steps since the last V-step;
        at the V-step of the start, before any gradient, its norm in ``W + U`` (``norms``) times the
        norm of the consumer weights that read it (L2,0: squared)."""
        lam = lam_at(self.context, self.lam, self.lam_scaling, self._counts)
        unit = max(lam.values(), default=1.0) or 1.0  # a zero lam (lam=0) still ranks by the values
        if self._taylor:
            return {g.name: self._taylor[g.name] / max(lam[g.name] / unit, 1e-12) for g in self.context.groups}
        weights = {s.param: self.context.params[s.param].detach() for g in self.context.groups for s in g.inputs
                   if s.param in self.context.params}
        power = 1 if self.regularizer == "l21" else 2
        out = {}
        for g in self.context.groups:
            inputs = g.input_norms(weights)
            value = norms[g.name].double() * (inputs.to(norms[g.name].device) if inputs is not None else 1.0)
            out[g.name] = value.pow(power) / max(lam[g.name] / unit, 1e-12)
        return out

    def _project(self, norms: dict[str, torch.Tensor]) -> dict[str, int]:
        """The counts of this V-step: the channels of highest value that meet this update's budget
        (on the continuation's path to the target: L2,1, and L2,0 with a ``ramp``; otherwise the
        target)."""
        view = self.context.budget
        limit = None
        if self._continuation is not None:
            limit = view.measure.total * self._continuation.budget_fraction(view.measure.limit / view.measure.total)
        self._scores = self._values(norms)
        self._counts = view.allocate(self._scores, limit=limit)
        return self._counts

    def _current_norms(self) -> dict[str, torch.Tensor]:
        """Per group, the channel norms of ``W + U`` now."""
        with torch.no_grad():
            t = {n: p.detach() + self.aulm.U[n] for n, p in self.aulm.params.items()}
            return {g.name: g.norms(t) for g in self.context.groups}

    def allocation_scores(self) -> dict[str, torch.Tensor] | None:
        if self.aulm is None or not self.aulm.started or self._counts is None or not self._scores:
            return None
        return {k: v.cpu() for k, v in self._scores.items()}

    def learned_counts(self) -> dict[str, int] | None:
        if self.aulm is None or not self.aulm.started:
            return None
        return self.aulm.surviving()

    # ------------------------------------------------------------ protocol
    def start(self) -> None:
        self.aulm.start(self.context.sync)

    def before_optimizer_step(self) -> None:
        if self.aulm is not None and self.aulm.started:
            if self.allocating:  # the loss's gradients, before the penalty's are added (first_order_taylor,
                # every channel in one pass: this runs at every optimizer step)
                products = {n: p.detach() * p.grad for n, p in self.aulm.params.items() if p.grad is not None}
                step = self.aulm.flat.split(self.aulm.flat.sums(products).pow(2))
                params = self.context.params
                for g in self.context.groups:  # frozen (at set-up, or since: no gradient on its side now): the
                    if not any(params[s.param].grad is not None for s in g.slices):  # weights that read it
                        step[g.name] = first_order_taylor(g, params).to(step[g.name])
                self._taylor = {k: v + self._taylor[k] for k, v in step.items()} if self._taylor else step
            self.aulm.add_penalty_gradient()

    def update(self) -> dict[str, float]:
        stats = self.aulm.update(self.context.sync)
        self._taylor = {}
        out = {"primal_residual": stats.primal_residual,
               "relative_primal_residual": stats.relative_primal_residual,
               "dual_residual": stats.dual_residual, "rho": stats.rho}
        if self.allocating:
            out["kept_fraction"] = self.context.budget.fraction(self.aulm.surviving())
        return out

    def ready(self) -> tuple[bool, str]:
        if self.aulm is None or not self.aulm.started:
            return False, "AULM has not started"
        if self._continuation is not None and self._continuation.updates < self._continuation.ramp_updates:
            return False, "the budget is still falling towards the target"
        if self.aulm.converged():
            return True, (f"AULM converged: relative primal residual below {self.tol} with the support "
                          f"unchanged for {self.aulm.stable_updates} updates")
        return False, "AULM has not converged"

    def select(self, keep: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
        support = self.aulm.support()
        if keep is None or (isinstance(self.aulm.keep, Mapping) and dict(keep) == self.aulm.keep):
            return {k: v.cpu() for k, v in support.items()}
        # the channels V keeps first, then by their norm in W + U (the order V's prox ranks them in)
        norms = self._current_norms()
        scores = {}
        for name, n in norms.items():
            n = n.double().cpu()
            scores[name] = n + support[name].cpu().double() * (float(n.max()) + 1.0)
        return top_k_masks(scores, keep)

    def metrics(self) -> dict[str, float]:
        if self.aulm is None or not self.aulm.started:
            return {}
        out = {"regularizer": self.aulm.regularizer_value()}
        out.update({f"filters/{name}": float(c) for name, c in self.aulm.surviving().items()})
        return out

    def state_dict(self) -> dict:
        if self.aulm is None or not self.aulm.started:
            return {}
        state = {"aulm": self.aulm.state_dict()}
        if self._counts is not None:
            state["counts"] = dict(self._counts)
        if self._continuation is not None:
            state["continuation"] = self._continuation.state_dict()
        for key, values in (("taylor", self._taylor), ("scores", self._scores)):
            if values:
                state[key] = {k: v.detach().cpu().clone() for k, v in values.items()}
        return state

    def load_state_dict(self, state: Mapping) -> None:
        if state.get("aulm") is not None:
            self.aulm.load_state_dict(state["aulm"])
        if state.get("counts") is not None and self._counts is not None:
            self._counts = {k: int(v) for k, v in state["counts"].items()}
        if state.get("continuation") is not None and self._continuation is not None:
            self._continuation.load_state_dict(state["continuation"])
        if self._counts is not None:
            device = next(iter(self.context.params.values())).device
            sizes = {g.name: g.size for g in self.context.groups}
            for key in ("taylor", "scores"):
                values = state.get(key) or {}
                for name, v in values.items():
                    if sizes.get(name) != v.numel():
                        raise ValueError(f"ssr: the checkpoint's channel values for {name!r} do not match this "
                                         "model's groups; the checkpoint is from another model")
                setattr(self, f"_{key}", {k: v.double().to(device) for k, v in values.items()})

    def config(self) -> dict:
        return {"regularizer": self.regularizer, "lam": self.lam, "lam_scaling": self.lam_scaling, "rho": self.rho,
                "rho_growth": self.rho_growth, "rho_max": self.rho_max, "tol": self.tol, "patience": self.patience,
                "ramp": self.effective_ramp}


@register_method("ssr_l21")
def ssr_l21(**kwargs) -> SSR:
    """SSR with the L2,1 group norm (group lasso, soft threshold)."""
    return SSR(regularizer="l21", **kwargs)


@register_method("ssr_l20")
def ssr_l20(**kwargs) -> SSR:
    """SSR with the L2,0 group norm (hard threshold; with a target, the budget form)."""
    return SSR(regularizer="l20", **kwargs)


# the two names take SSR's arguments but the regularizer: said so, for the registry's check of
# misspelled arguments (``rh=0.5``: did you mean ``rho``?) and for ``help()``
ssr_l21.__signature__ = ssr_l20.__signature__ = inspect.signature(SSR).replace(
    parameters=[p for p in inspect.signature(SSR).parameters.values() if p.name != "regularizer"])
