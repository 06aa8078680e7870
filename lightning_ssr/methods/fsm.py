"""``fsm``: feature-shift minimization (Duan et al., ACCV 2022), for any traceable network.

**Importance, data-free.** A channel ``k`` seen by a consumer layer through BatchNorm and
ReLU is modelled as ``N(beta_k, gamma_k^2)`` before the ReLU; its expected value after it is
the closed form ``E_k = beta_k Phi(beta_k/|gamma_k|) + |gamma_k| phi(beta_k/|gamma_k|)``
(:func:`expected_relu`). With the consumer conv's weight ``W' [N, C, kh, kw]`` and
``s_jk = sum_{h,w} W'[j, k, h, w]``, removing ``k`` shifts the consumer's outputs by
``s_jk E_k`` on average, hence ``I_k = (1/N) sum_j |s_jk E_k|``.

**Combination, from the dependency group** (no per-architecture tables). Each consumer of a
group sees the norm layers that reach it through parameter-free ops
(:attr:`ChannelGroup.feeds`):

- one norm: the plain case (a conv -> BN -> ReLU -> conv chain, a depthwise pair, an
  inception branch read through a concat at its offset);
- several norms (a residual stream: the consumer reads the sum of every block's BN output):
  the channel is the sum of independent normals, ``N(sum beta, sum gamma^2)``;
- several consumers (a stream read by many blocks, a concat read by several branches): the
  importance is the mean over the conv consumers of their ``I_k``; where no consumer is a
  conv (the last conv before a linear classifier) it is ``E_k`` (mean over consumers).

**Compensation** (the paper's "distribution optimization", :meth:`FSM.after_rebuild`): after a
prune, each conv consumer's following BN gets ``running_mean_j *= kept_j / full_j`` where
``full_j = sum_k s_jk E_k`` and ``kept_j`` sums over the kept ``k`` only (when
``full_j / running_mean_j > 0``, and then also ``running_var_j *= 1 - p``, ``p`` the fraction
of the group pruned). It is kept only when the engine's validation score does not fall; without
validation data it is not applied. Never selected on test data.

**Procedures.** ``procedure="oneshot"``: every group at once, at each prune event.
``procedure="layerwise"`` (the paper's): the groups to prune are split, in network order,
over the schedule's ``prune_events``; event ``e`` prunes its share to the final rate and
the following epochs fine-tune (``prune_events`` = the number of pruned layers gives the
paper's one layer per event).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..structure.groups import ChannelGroup
from ..validation import check_choice, check_flag
from .base import MethodContext, PruningMethod, methods_without_batchnorm, register_method, top_k_masks

PROCEDURES = ("oneshot", "layerwise")
_BN = nn.modules.batchnorm._BatchNorm
_CONV = (nn.modules.conv._ConvNd,)


def expected_relu(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``E[max(0, X)]`` for ``X ~ N(mean, std^2)``, elementwise; ``max(0, mean)`` where ``std = 0``."""
    mean, std = mean.double(), std.double().abs()
    safe = torch.where(std > 0, std, torch.ones_like(std))
    z = mean / safe
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return torch.where(std > 0, mean * cdf + std * pdf, mean.clamp_min(0.0))


def _norm_stats(group: ChannelGroup, params: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per norm layer of the group: (beta, gamma) of the group's channels, float64 on the CPU."""
    weights = {s.param.rsplit(".", 1)[0]: s for s in group.slices if s.param.endswith(".weight")}
    biases = {s.param.rsplit(".", 1)[0]: s for s in group.slices if s.param.endswith(".bias")}
    out = {}
    for name in weights.keys() & biases.keys():
        w, b = weights[name], biases[name]
        gamma = params[w.param].detach().movedim(w.dim, 0)[w.index[:, 0].to(params[w.param].device)]
        beta = params[b.param].detach().movedim(b.dim, 0)[b.index[:, 0].to(params[b.param].device)]
        out[name] = (beta.double().cpu(), gamma.double().cpu())
    return out


def _without_bn(group: ChannelGroup, model: nn.Module) -> str | None:
    """The first consumer that reads ``group`` without an affine BatchNorm on the way, if any."""
    modules = dict(model.named_modules())
    for consumer, norms in group.feeds.items():
        if not any(isinstance(modules.get(n), _BN) and modules[n].affine for n in norms):
            return consumer
    return None


def check_fsm_group(group: ChannelGroup, model: nn.Module) -> None:
    """Raise a ValueError naming the group and consumer when FSM cannot score ``group``: every
    consumer must see the group's channels through an affine BatchNorm."""
    check_fsm_groups([group], model)


def check_fsm_groups(groups: Sequence[ChannelGroup], model: nn.Module, who: str = "fsm",
                     instead: str | None = None) -> None:
    """FSM can score every group: one error naming all those it cannot (or saying that no group
    has a BatchNorm, and which methods apply: ``instead``, by default the methods that need none),
    not one group at a time. ``who``: what scores them (``"oneshot's importance='fsm'"``)."""
    bad = {g.name: c for g in groups if (c := _without_bn(g, model)) is not None}
    if not bad:
        return
    instead = instead or f"a method that needs no BatchNorm: {methods_without_batchnorm()}"
    if len(bad) == len(groups):
        raise ValueError(
            f"{who} scores each channel from the BatchNorm before its consumers (data-free), but no prunable group of "
            f"this model reaches its consumers through an affine BatchNorm ({len(groups)} groups: "
            f"{sorted(bad)[:6]}{'...' if len(bad) > 6 else ''}); {who} does not apply to it. Use {instead}.")
    detail = ", ".join(f"'{g}' (read by '{c}')" for g, c in sorted(bad.items()))
    raise ValueError(
        f"{who} scores a channel from the BatchNorm that precedes its consumer, but the channels of {detail} reach "
        f"them without an affine BatchNorm on the way. Pass {sorted(bad)} in ignored_layers, or use {instead}.")


def channel_shift(group: ChannelGroup, model: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(E, shifts)``: ``E`` [consumers, size] the expected post-ReLU value of each channel as each
    consumer sees it, and per conv consumer the signed shift ``s_jk E_k`` as [size, N]."""
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    stats = _norm_stats(group, params)
    inputs = {s.param.rsplit(".", 1)[0] if "." in s.param else "": s for s in group.inputs}
    expected, shifts = [], {}
    for consumer, norms in group.feeds.items():
        used = [stats[n] for n in norms if n in stats and isinstance(modules.get(n), _BN)]
        if not used:  # its BNs are frozen (not part of the group's trainable slices)
            continue
        mean = torch.stack([b for b, _ in used]).sum(0)
        std = torch.stack([g.pow(2) for _, g in used]).sum(0).sqrt()
        e = expected_relu(mean, std)
        module = modules[consumer]
        if getattr(module, "pruning_cost_free", False):
            continue  # a fixed placement (the CIFAR ResNets' shortcut), not a learned consumer
        expected.append(e)
        if isinstance(module, _CONV) and module.groups == 1 and consumer in inputs:
            s = inputs[consumer]
            w = params[s.param].detach().movedim(s.dim, 0)
            rows = w[s.index.reshape(-1).to(w.device)]  # [size * k, N, *kernel]
            kernel_sums = rows.reshape(group.size, s.index.shape[1], rows.shape[1], -1).sum((1, 3))
            shifts[consumer] = kernel_sums.double().cpu() * e[:, None]
    if not expected:
        raise ValueError(f"fsm: no consumer of '{group.name}' reads it through a trainable affine BatchNorm; "
                         f"pass '{group.name}' in ignored_layers or use another method")
    return torch.stack(expected), shifts


def fsm_importance(group: ChannelGroup, model: nn.Module) -> torch.Tensor:
    """FSM importance of each channel of ``group`` (see the module docstring); an importance
    function like those of :mod:`lightning_ssr.methods.importance`."""
    check_fsm_group(group, model)
    return _importance(*channel_shift(group, model))


def _importance(expected: torch.Tensor, shifts: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The mean over conv consumers of ``(1/N) sum_j |s_jk E_k|``; ``E_k`` where there is none."""
    if not shifts:
        return expected.mean(0)
    return torch.stack([s.abs().mean(1) for s in shifts.values()]).mean(0)


@register_method("fsm")
class FSM(PruningMethod):
    """Feature-shift minimization: data-free BN-based importance, optional BN compensation.

    Args:
        procedure: ``"oneshot"`` (every group at each event) or ``"layerwise"`` (the groups
            split over the schedule's prune events, in network order).
        compensate: adjust the following BNs' running statistics after each prune, kept only if
            the validation score does not fall.
    """

    name = "fsm"
    requires_batchnorm = True

    def __init__(self, procedure: str = "oneshot", compensate: bool = True):
        self.procedure = check_choice("fsm", "procedure", procedure, PROCEDURES)
        self.compensate = check_flag("compensate", compensate, "fsm")
        self._shifts: dict[str, dict[str, torch.Tensor]] = {}
        self.decisions: list[dict] = []

    def check(self, model: nn.Module, groups: list[ChannelGroup]) -> None:
        check_fsm_groups(groups, model)

    def setup(self, context: MethodContext) -> None:
        super().setup(context)
        self.check(context.model, context.groups)
        if self.compensate and context.evaluate is not None and context.event == 0:
            # the compensation is checked on validation data at each prune: a score that cannot be
            # taken must fail now, before training, not after a rebuild
            try:
                context.evaluate(context.model)
            except Exception as err:
                raise ValueError(f"fsm: compensate=True checks each BatchNorm adjustment on validation data, and "
                                 f"the validation score failed on the dense model ({type(err).__name__}: {err}). "
                                 "Pass Pruning(evaluate=...) a callable (model) -> score, or compensate=False.") from err

    def importance(self, model: nn.Module, groups) -> dict[str, torch.Tensor]:
        return {g.name: fsm_importance(g, model) for g in groups}

    def _units(self) -> list[str]:
        """The groups the current event prunes."""
        ctx = self.context
        final = ctx.final_keep or ctx.keep or {}
        todo = [g for g in ctx.groups if final.get(g.name, g.size) < g.size]
        if self.procedure == "oneshot":
            return [g.name for g in todo]
        order = {name: i for i, (name, _) in enumerate(ctx.model.named_modules())}
        todo = [g.name for g in sorted(todo, key=lambda g: min(order.get(m, len(order)) for m in g.out_modules))]
        # layer-wise: the groups still to prune, split over the events left
        left = max(ctx.events - ctx.event, 1)
        share = math.ceil(len(todo) / left)
        return todo[:share]

    def select(self, keep: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
        ctx = self.context
        units = set(self._units())
        counts = dict(ctx.final_keep) if self.procedure == "layerwise" and ctx.final_keep else dict(keep)
        counts = {g.name: (min(counts[g.name], g.size) if g.name in units else g.size) for g in ctx.groups}
        shifts = {g.name: channel_shift(g, ctx.model) for g in ctx.groups}  # checked at set-up
        masks = top_k_masks({name: _importance(*es) for name, es in shifts.items()}, counts)
        # the shifts of the model as it is at this event, for the compensation after the rebuild
        self._shifts = {name: es[1] for name, es in shifts.items()
                        if self.compensate and not bool(masks[name].all())}
        return masks

    def after_rebuild(self, model: nn.Module, plan) -> dict | None:
        shifts, self._shifts = self._shifts, {}
        if not self.compensate or not shifts:
            return None
        groups = self.context.groups
        masks = {}  # what the engine pruned (it may align or broadcast the selected masks)
        for g in groups:
            mask = torch.zeros(g.size, dtype=torch.bool)
            mask[plan.kept.get(g.name, list(range(g.size)))] = True
            masks[g.name] = mask
        entries = compensation_entries(groups, shifts, masks)
        if not entries:
            return None
        evaluate = self.context.evaluate
        saved = {n: b.detach().clone() for n, b in model.named_buffers()}

        def restore():
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(saved[n])

        before = evaluate(model) if evaluate is not None else None
        if before is None:  # no validation data (recorded and said): the statistics stay as rebuilt
            info = {"compensation": "not applied: no validation data to check it on"}
            self.decisions.append(dict(info))
            warnings.warn(f"fsm: BatchNorm compensation {info['compensation']}", stacklevel=2)
            return info
        try:
            adjusted = compensate_bn(model, entries)
            after = evaluate(model)
            if after is None:
                raise ValueError("the validation score was available before the adjustment and not after it")
        except Exception:
            restore()  # the statistics as rebuilt; the engine undoes the prune and says what happened
            raise
        keep = after >= before
        if self.context.sync is not None:
            keep = bool(self.context.sync(keep))
        if not keep:
            restore()
        info = {"compensation": "kept" if keep else "reverted", "val_before": float(before),
                "val_after": float(after), "bn_adjusted": adjusted}
        self.decisions.append(dict(info))
        return info

    def state_dict(self) -> dict:
        return {"decisions": list(self.decisions)}

    def load_state_dict(self, state: Mapping) -> None:
        self.decisions = list(state.get("decisions", []))

    def config(self) -> dict:
        return {"procedure": self.procedure, "compensate": self.compensate}


def _kept_rows(groups, masks: Mapping[str, torch.Tensor], conv: str) -> torch.Tensor | None:
    """The output rows of ``conv`` that stay when ``masks`` are applied; ``None`` if all stay."""
    for g in groups:
        if conv in g.out_modules and not bool(masks[g.name].all()):
            for s in g.slices:
                if s.param == f"{conv}.weight":
                    return torch.sort(s.index[masks[g.name]].reshape(-1)).values
    return None


def compensation_entries(groups, shifts: Mapping[str, Mapping[str, torch.Tensor]],
                         masks: Mapping[str, torch.Tensor]) -> list[dict]:
    """Per (pruned group, conv consumer with a BN after it): the expected input of each of the
    consumer's kept outputs with every channel of the group (``full``) and with the kept ones
    (``kept``), and how many of the group's channels went."""
    entries = []
    for g in groups:
        if g.name not in shifts or bool(masks[g.name].all()):
            continue
        mask = masks[g.name]
        for consumer, shift in shifts[g.name].items():
            bn = g.consumer_norm.get(consumer)
            if bn is None:
                continue
            full, kept = shift.sum(0), shift[mask].sum(0)
            outputs = _kept_rows(groups, masks, consumer)
            if outputs is not None:  # the consumer's own outputs are pruned at this event too
                full, kept = full[outputs], kept[outputs]
            entries.append({"consumer": consumer, "bn": bn, "full": full, "kept": kept,
                            "removed": int((~mask).sum()), "size": g.size})
    return entries


def compensate_bn(model: nn.Module, entries: list[dict]) -> list[str]:
    """Apply FSM's running-statistics correction (see the module docstring) to the BN after each
    consumer in the rebuilt ``model``. Entries for the same BN (a consumer reading several pruned
    groups, e.g. through a concat) are combined first: one ratio of the summed expected inputs,
    and one variance factor ``1 - p`` with ``p`` the fraction of all their channels that went.
    Returns the BNs adjusted."""
    modules = dict(model.named_modules())
    combined: dict[str, dict] = {}
    for e in entries:
        c = combined.setdefault(e["bn"], {"full": 0.0, "kept": 0.0, "removed": 0, "size": 0})
        if isinstance(c["full"], torch.Tensor) and c["full"].shape != e["full"].shape:
            continue
        c["full"] = c["full"] + e["full"]
        c["kept"] = c["kept"] + e["kept"]
        c["removed"] += e["removed"]
        c["size"] += e["size"]
    adjusted = []
    with torch.no_grad():
        for name, c in combined.items():
            bn = modules.get(name)
            full, kept = c["full"], c["kept"]
            if not isinstance(bn, _BN) or bn.running_mean is None or full.numel() != bn.num_features:
                continue
            mean, var = bn.running_mean.double().cpu(), bn.running_var.double().cpu()
            nonzero = (full != 0) & (mean != 0)
            apply = nonzero & (full / torch.where(nonzero, mean, torch.ones_like(mean)) > 0)
            ratio = kept / torch.where(apply, full, torch.ones_like(full))
            rate = c["removed"] / c["size"]
            bn.running_mean.copy_(torch.where(apply, mean * ratio, mean).to(bn.running_mean))
            bn.running_var.copy_(torch.where(apply, var * (1.0 - rate), var).to(bn.running_var))
            if bool(apply.any()):
                adjusted.append(name)
    return sorted(adjusted)
