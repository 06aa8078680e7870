"""The Lightning callback: SSR regularization with AULM, then a physical prune-and-rebuild."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from .aulm import AULM, REGULARIZERS
from .budget import LAM_SCALINGS, allocate_keep_counts, min_keep_counts, resolve_lam
from .flops import count_cost
from .groups import assign_channel_costs, find_channel_groups
from .plan import PLAN_CHECKPOINT_KEY, PruningPlan, apply_plan, plan_from_support, prune_channels, remap_optimizer
from .report import format_layer_table, layer_rows
from .schedule import PruningSchedule


def _check_fraction(name: str, value) -> float | None:
    if value is None:
        return None
    value = float(value)
    if not (0.0 < value <= 1.0):
        raise ValueError(f"{name} is the fraction of the dense model to keep and must be in (0, 1]; "
                         f"got {value} (for 20x fewer FLOPs use 0.05)")
    return value


def _check_lam(lam):
    def ok(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    if isinstance(lam, Mapping):
        bad = {k: v for k, v in lam.items() if not ok(v)}
        if bad:
            raise ValueError(f"lam values must be finite numbers >= 0, got {bad}")
        return {str(k): float(v) for k, v in lam.items()}
    if not ok(lam):
        raise ValueError(f"lam must be a finite number >= 0 (or a mapping layer -> number), got {lam!r}")
    return float(lam)


def _first_tensor(batch) -> torch.Tensor | None:
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class SSRPruning(Callback):
    r"""Structured-sparsity regularized filter pruning for any LightningModule.

    During the ADMM phase of ``schedule`` the callback adds ``rho * (W - V + U)`` to the
    gradients of every prunable filter (after unscaling and accumulation, in
    ``on_before_optimizer_step``; gradient clipping, which runs after, clips this term too)
    and updates V and U every ``schedule.update_every_n_steps`` optimizer steps. At the end
    of the phase (or once AULM has converged) the filters V has zeroed are removed from the
    model for real, the optimizer state is sliced onto the smaller parameters, and training
    continues on the small model in the same ``fit``.

    Args:
        regularizer: ``"l21"`` (group lasso, soft threshold) or ``"l20"`` (hard threshold,
            or the budget form when a budget is given).
        lam: regularization strength, a number or a mapping ``{layer: number}`` naming every
            prunable layer (names relative to the LightningModule, e.g. ``"model.conv1"``).
        lam_scaling: with a numeric ``lam``: ``"flops"`` (default) scales it per layer by the
            MACs one filter of that layer costs, relative to the mean; ``"none"`` uses it as is.
        flops_budget: fraction of the dense MACs to keep (L2,0 budget form), in (0, 1].
        filter_budget: fraction of the prunable filters to keep (L2,0 budget form), in (0, 1].
        rho, rho_growth, rho_max: ADMM penalty, its growth factor per V-update and its cap.
        schedule: a :class:`PruningSchedule` (or a mapping of its fields).
        ignored_layers: names of layers whose output channels must not be pruned. The
            classifier's outputs are never pruned.
        min_channels: channels every layer keeps at least.
        max_pruning_ratio: the largest fraction of any layer's channels that may be removed.
        example_input: an input batch used to trace the model; by default the LightningModule's
            ``example_input_array`` or the first tensor of the first training batch.
        tol, patience: convergence: relative primal residual below ``tol`` with an unchanged
            support for ``patience`` updates.
        verbose: print the per-layer table after the rebuild (rank zero only).
    """

    def __init__(
        self,
        regularizer: str = "l21",
        lam: float | Mapping[str, float] = 1e-3,
        lam_scaling: str = "flops",
        flops_budget: float | None = None,
        filter_budget: float | None = None,
        rho: float = 0.1,
        rho_growth: float = 1.0,
        rho_max: float | None = None,
        schedule: PruningSchedule | Mapping | None = None,
        ignored_layers: Sequence[str] = (),
        min_channels: int = 1,
        max_pruning_ratio: float = 1.0,
        example_input: torch.Tensor | None = None,
        tol: float = 1e-3,
        patience: int = 3,
        verbose: bool = True,
    ):
        super().__init__()
        if regularizer not in REGULARIZERS:
            raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {regularizer!r}")
        self.lam = _check_lam(lam)
        if lam_scaling not in LAM_SCALINGS:
            raise ValueError(f"lam_scaling must be one of {LAM_SCALINGS}, got {lam_scaling!r}")
        self.flops_budget = _check_fraction("flops_budget", flops_budget)
        self.filter_budget = _check_fraction("filter_budget", filter_budget)
        if self.flops_budget is not None and self.filter_budget is not None:
            raise ValueError("give flops_budget or filter_budget, not both")
        if (self.flops_budget is not None or self.filter_budget is not None) and regularizer != "l20":
            raise ValueError("a FLOPs/filter budget selects the budget form of L2,0: set regularizer='l20'")
        if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho must be a positive number, got {rho!r}")
        if not rho_growth >= 1.0:
            raise ValueError(f"rho_growth must be >= 1 (rho never shrinks), got {rho_growth!r}")
        if rho_max is not None and not rho_max >= rho:
            raise ValueError(f"rho_max must be >= rho, got rho_max={rho_max!r}, rho={rho!r}")
        if not isinstance(min_channels, int) or min_channels < 1:
            raise ValueError(f"min_channels must be an int >= 1, got {min_channels!r}")
        if not (isinstance(max_pruning_ratio, (int, float)) and 0.0 < max_pruning_ratio <= 1.0):
            raise ValueError(f"max_pruning_ratio must be in (0, 1], got {max_pruning_ratio!r}")
        if not tol > 0:
            raise ValueError(f"tol must be > 0, got {tol!r}")
        if not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be an int >= 0, got {patience!r}")
        if schedule is None:
            schedule = PruningSchedule()
        elif isinstance(schedule, Mapping):
            schedule = PruningSchedule(**schedule)
        elif not isinstance(schedule, PruningSchedule):
            raise TypeError(f"schedule must be a PruningSchedule or a mapping, got {type(schedule).__name__}")
        self.regularizer = regularizer
        self.lam_scaling = lam_scaling
        self.rho, self.rho_growth, self.rho_max = float(rho), float(rho_growth), rho_max
        self.schedule = schedule
        self.ignored_layers = list(ignored_layers)
        self.min_channels = min_channels
        self.max_pruning_ratio = float(max_pruning_ratio)
        self.tol, self.patience = float(tol), patience
        self.verbose = verbose
        self._example = example_input

        self.aulm: AULM | None = None
        self.plan: PruningPlan | None = None  # cumulative plan of the model being trained
        self.pruned_at_epoch: int | None = None
        self.summary: dict | None = None  # per-layer before/after of the last rebuild
        self._pending_state: dict | None = None
        self._last_update_step = -1

    # ---------------------------------------------------------------- phases
    def _in_admm_phase(self, trainer: Trainer) -> bool:
        s = self.schedule
        return self.pruned_at_epoch is None and s.warmup_epochs <= trainer.current_epoch <= s.prune_epoch

    @property
    def state_key(self) -> str:
        return self._generate_state_key(regularizer=self.regularizer)

    # ----------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "SSRPruning adds its ADMM term in on_before_optimizer_step and remaps the optimizer at the "
                "rebuild; it supports automatic optimization only (automatic_optimization=True).")
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and getattr(strategy, "_start_method", "popen") != "popen":
            raise MisconfigurationException(
                f"SSRPruning does not support DDPStrategy(start_method={strategy._start_method!r}): those "
                "launchers return the trained weights to the main process, whose model still has the full "
                "size, so loading them fails after the rebuild. Use strategy='ddp' (subprocess launcher).")
        if trainer.world_size > 1 and not isinstance(strategy, DDPStrategy):
            raise MisconfigurationException(
                f"SSRPruning supports single-device training and strategy='ddp'; got {type(strategy).__name__}.")
        if getattr(pl_module, "_compiler_ctx", None) or any(
                isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in pl_module.modules()):
            raise MisconfigurationException(
                "SSRPruning rebuilds the model during fit, which a torch.compile'd module cannot follow; "
                "train the uncompiled module and compile the pruned one afterwards (torch.compile(model)).")
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= self.schedule.prune_epoch:
            rank_zero_warn(
                f"Trainer(max_epochs={trainer.max_epochs}) ends before the scheduled rebuild at the end of "
                f"epoch {self.schedule.prune_epoch}; the model would not be pruned. Use "
                f"max_epochs={self.schedule.total_epochs} for this schedule.")
        if self._example is None and getattr(pl_module, "example_input_array", None) is not None:
            self._example = _first_tensor(pl_module.example_input_array)
        install_plan_loader(pl_module)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._example is None:
            found = _first_tensor(batch)
            if found is None:
                raise MisconfigurationException(
                    "SSRPruning could not find an input tensor in the training batch; pass example_input= "
                    "or set example_input_array on your LightningModule.")
            self._example = found[:2].detach().clone()
        if self.aulm is None and self._in_admm_phase(trainer):
            self._start_admm(trainer, pl_module)

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self.aulm is not None:
            self.aulm.add_penalty_gradient()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch: Any,
                           batch_idx: int) -> None:
        n = self.schedule.update_every_n_steps
        step = trainer.global_step
        if self.aulm is None or n is None or step == self._last_update_step or step % n != 0:
            return
        self._update(trainer, pl_module, step)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.aulm is None:
            return
        if self.schedule.update_every_n_steps is None:
            self._update(trainer, pl_module, trainer.global_step)
        aulm = self.aulm
        self._log(pl_module, "ssr/regularizer", aulm.regularizer_value(), on_epoch=True, on_step=False)
        for name, count in aulm.surviving().items():
            self._log(pl_module, f"ssr/filters/{name}", float(count), on_epoch=True, on_step=False)
        converged = self.schedule.stop_early and aulm.converged()
        if trainer.current_epoch >= self.schedule.prune_epoch or converged:
            if converged and trainer.current_epoch < self.schedule.prune_epoch:
                rank_zero_info(f"SSRPruning: AULM converged at epoch {trainer.current_epoch}; rebuilding now.")
            self.prune_and_rebuild(trainer, pl_module)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if self.plan is not None:
            checkpoint[PLAN_CHECKPOINT_KEY] = self.plan.to_dict()

    @override
    def state_dict(self) -> dict[str, Any]:
        if self.aulm is not None:
            admm = {"aulm": self.aulm.state_dict(), "lam": {g.name: g.lam for g in self.aulm.groups},
                    "keep": dict(self.aulm.keep) if self.aulm.keep else None}
        else:  # not started, or restored but not yet rebuilt onto the model
            admm = self._pending_state or {"aulm": None, "lam": None, "keep": None}
        return {
            **admm,
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "pruned_at_epoch": self.pruned_at_epoch,
            "last_update_step": self._last_update_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.plan = PruningPlan.from_dict(state_dict["plan"]) if state_dict.get("plan") else None
        self.pruned_at_epoch = state_dict.get("pruned_at_epoch")
        self._last_update_step = int(state_dict.get("last_update_step", -1))
        self.aulm = None
        self._pending_state = None
        if state_dict.get("aulm") is not None:
            self._pending_state = {"aulm": state_dict["aulm"], "lam": state_dict.get("lam"),
                                   "keep": state_dict.get("keep")}

    # ------------------------------------------------------------- internals
    def _start_admm(self, trainer: Trainer, pl_module: LightningModule) -> None:
        example = self._example.to(pl_module.device)
        try:
            groups = find_channel_groups(pl_module, example, self.ignored_layers)
        except RuntimeError as err:
            raise MisconfigurationException(
                "SSRPruning traces the LightningModule's forward() on one input batch to find prunable "
                f"filters, and that failed: {err}. Define forward() to run the network, or pass "
                "example_input=.") from err
        if not groups:
            raise MisconfigurationException("SSRPruning found no prunable filters in the model.")
        cost = count_cost(pl_module, example)
        assign_channel_costs(groups, cost)
        pending = self._pending_state or {}
        lam = pending.get("lam") or resolve_lam(groups, self.lam, self.lam_scaling)
        for g in groups:
            g.lam = float(lam[g.name])
        min_keep = min_keep_counts(groups, self.min_channels, self.max_pruning_ratio)
        keep = pending.get("keep")
        if keep is None and (self.flops_budget is not None or self.filter_budget is not None):
            keep = allocate_keep_counts(groups, cost, self.flops_budget, self.filter_budget, min_keep)
        self.aulm = AULM(dict(pl_module.named_parameters()), groups, self.regularizer, self.rho,
                         self.rho_growth, self.rho_max, keep, min_keep, self.tol, self.patience)
        if pending.get("aulm") is not None:
            self.aulm.load_state_dict(pending["aulm"])
        else:
            self.aulm.start(self._sync(trainer))
        self._pending_state = None
        if self.verbose and not pending:
            target = f", keeping {keep}" if keep else ""
            rank_zero_info(f"SSRPruning: {len(groups)} prunable layers, {self.regularizer}{target}; "
                           f"ADMM until the end of epoch {self.schedule.prune_epoch}.")

    @staticmethod
    def _log(pl_module: LightningModule, name: str, value: float, **kwargs) -> None:
        # every rank holds the same value; syncing keeps Lightning's epoch-level reduction exact
        pl_module.log(name, value, sync_dist=pl_module.trainer.world_size > 1, **kwargs)

    @staticmethod
    def _sync(trainer: Trainer):
        """Under data parallelism: every rank takes rank 0's decisions."""
        if trainer.world_size <= 1:
            return None
        return lambda obj: trainer.strategy.broadcast(obj, src=0)

    def _update(self, trainer: Trainer, pl_module: LightningModule, step: int) -> None:
        stats = self.aulm.update(self._sync(trainer))
        self._last_update_step = step
        self._log(pl_module, "ssr/primal_residual", stats.primal_residual)
        self._log(pl_module, "ssr/relative_primal_residual", stats.relative_primal_residual)
        self._log(pl_module, "ssr/dual_residual", stats.dual_residual)
        self._log(pl_module, "ssr/rho", stats.rho)

    def prune_and_rebuild(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Project W onto V's support, remove the zeroed filters, remap the optimizer(s)."""
        aulm = self.aulm
        example = self._example.to(pl_module.device)
        aulm.project_()
        step_plan = plan_from_support(example.shape, aulm.support(), aulm.groups)
        if trainer.world_size > 1:  # every rank prunes exactly what rank 0 decided
            step_plan = PruningPlan.from_dict(trainer.strategy.broadcast(step_plan.to_dict(), src=0))
        before = count_cost(pl_module, example)
        old_params = dict(pl_module.named_parameters())
        remap = prune_channels(pl_module, example, step_plan.kept, step_plan.sizes)
        new_params = dict(pl_module.named_parameters())
        for optimizer in trainer.optimizers:
            remap_optimizer(optimizer, old_params, new_params, remap)
        if isinstance(trainer.strategy, DDPStrategy) and trainer.world_size > 1:
            # the old DistributedDataParallel wrapper holds the old parameters: wrap again
            trainer.strategy.model = pl_module
            trainer.strategy.configure_ddp()
        after = count_cost(pl_module, example)
        self.plan = step_plan if self.plan is None else self.plan.then(step_plan)
        pl_module._ssr_applied_plan = self.plan.to_dict()
        self.pruned_at_epoch = trainer.current_epoch
        self.aulm = None
        rows = layer_rows(before, after)
        self.summary = {"layers": rows, "macs_before": before.macs, "macs_after": after.macs,
                        "params_before": before.params, "params_after": after.params,
                        "epoch": trainer.current_epoch}
        self._log(pl_module, "ssr/flops", float(after.macs), on_epoch=True, on_step=False)
        self._log(pl_module, "ssr/params", float(after.params), on_epoch=True, on_step=False)
        if self.verbose:
            rank_zero_info("SSRPruning: rebuilt the model at the end of epoch "
                           f"{trainer.current_epoch}\n" + format_layer_table(rows, before, after))


class PrunedCheckpointMixin:
    """Mix into a LightningModule so that ``YourModule.load_from_checkpoint(path)`` rebuilds
    the pruned shapes from the checkpoint's plan before the weights load::

        class LitNet(PrunedCheckpointMixin, pl.LightningModule): ...

        model = LitNet.load_from_checkpoint("last.ckpt")  # in any process, no callback needed

    Without the mixin, use :func:`lightning_ssr.load_pruned` on a fresh module.
    """

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        _apply_checkpoint_plan(self, checkpoint)
        super().on_load_checkpoint(checkpoint)


def _apply_checkpoint_plan(pl_module, checkpoint: dict) -> None:
    data = checkpoint.get(PLAN_CHECKPOINT_KEY)
    current = getattr(pl_module, "_ssr_applied_plan", None)
    if data is not None and data != current:
        if current is not None:
            raise ValueError("the checkpoint's pruning plan differs from the one this model was already "
                             "rebuilt with; construct a fresh model to load it")
        apply_plan(pl_module, data)
        pl_module._ssr_applied_plan = data


def install_plan_loader(pl_module: LightningModule) -> None:
    """Make ``pl_module`` rebuild itself from a checkpoint's pruning plan before its weights load.

    Lightning calls ``LightningModule.on_load_checkpoint`` before it loads the state dict when
    resuming ``fit(ckpt_path=...)``; the wrapper applies the plan there, then calls the
    module's own hook.
    """
    if getattr(pl_module, "_ssr_plan_loader_installed", False) or isinstance(pl_module, PrunedCheckpointMixin):
        return
    original = pl_module.on_load_checkpoint

    def on_load_checkpoint(checkpoint: dict) -> None:
        _apply_checkpoint_plan(pl_module, checkpoint)
        original(checkpoint)

    pl_module.on_load_checkpoint = on_load_checkpoint
    pl_module._ssr_plan_loader_installed = True
