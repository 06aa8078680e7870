"""The ``Pruning`` callback: Lightning's hooks driving the :class:`~lightning_ssr.engine.PruningEngine`.

The engine (plain PyTorch) owns the schedule, the method calls, the rebuild, optimizer remapping,
state and the result. The callback adapts it to Lightning: it checks the fit's setup, hands the
engine the batch, step and optimizers at each hook, logs what the engine returns (``pruning/*``),
stops on a non-finite loss, keeps the RNG states and the plan in checkpoints, rebuilds the
pruned shapes before a resumed fit loads its weights, and, under DDP, broadcasts rank 0's
decisions and re-wraps the model after a rebuild. Lightning's private attributes are reached only
through :mod:`lightning_ssr.lightning_internals`.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch import callbacks as lightning_callbacks
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from typing_extensions import override

from . import lightning_internals as internals
from .checkpoint import (
    CheckpointReadError,
    PrunedCheckpointMixin,
    applied_plan,
    apply_checkpoint_plan,
    check_checkpoint_file,
    failed_load_reason,
    rebuild_to,
    refuse_damaged_checkpoint,
    restored_from,
)
from .engine import PruningEngine, World, first_tensor, steps_per_epoch
from .guards import LossGuard, rng_states, set_rng_states
from .methods.base import PruningMethod
from .methods.ssr import SSR
from .modes import eval_mode
from .report import PruningResult
from .schedule import PruningSchedule, cosine_end, fit_cosines
from .structure.plan import PLAN_CHECKPOINT_KEY, PruningPlan
from .targets import Budget, Target
from .validation import check_keywords, keyword_names


def validation_accuracy(trainer: Trainer, pl_module: LightningModule) -> Callable[[nn.Module], float | None]:
    """``(model) -> top-1 accuracy`` over the fit's validation batches ``(x, y)`` (all ranks
    together; ``limit_val_batches`` respected), each as ``validation_step`` would get it (the
    precision's conversion, the batch hooks, the device) and run in the precision's context;
    ``None`` when the fit has no validation data.
    The validation dataloaders are requested on the first call only."""

    def loaders() -> list:
        if trainer.val_dataloaders is None:
            try:
                internals.set_up_validation_data(trainer, pl_module)
            except MisconfigurationException:  # validation_step without validation data
                return []
        found = trainer.val_dataloaders
        if found is None:
            return []
        return list(found.values()) if isinstance(found, Mapping) else (
            list(found) if isinstance(found, (list, tuple)) else [found])

    def evaluate(model: nn.Module) -> float | None:
        sources = loaders()
        if not sources:
            return None
        device = pl_module.device
        correct = torch.zeros((), dtype=torch.long, device=device)
        total = torch.zeros((), dtype=torch.long, device=device)
        try:
            _score_batches(model, sources, correct, total)
        except Exception:
            if trainer.world_size > 1:  # (the other ranks wait in the reduce below: told, they stop too)
                trainer.strategy.reduce(torch.ones((), dtype=torch.long, device=device), reduce_op="sum")
            raise
        if trainer.world_size > 1:
            failed = trainer.strategy.reduce(torch.zeros((), dtype=torch.long, device=device), reduce_op="sum")
            if int(failed) > 0:
                raise RuntimeError("the validation score failed on another rank (its error is in its own output)")
            correct = trainer.strategy.reduce(correct, reduce_op="sum")
            total = trainer.strategy.reduce(total, reduce_op="sum")
        return float(correct) / float(total) if int(total) > 0 else None

    def _score_batches(model: nn.Module, sources: list, correct: torch.Tensor, total: torch.Tensor) -> None:
        limit = trainer.limit_val_batches
        device = pl_module.device
        with eval_mode(model), torch.no_grad(), trainer.precision_plugin.val_step_context():
            for index, loader in enumerate(sources):
                n = limit if isinstance(limit, int) else (
                    int(limit * len(loader)) if limit < 1.0 and hasattr(loader, "__len__") else None)
                for i, batch in enumerate(loader):
                    if n is not None and i >= n:
                        break
                    # (as validation_step gets it: the precision's dtype, the module's batch hooks, the device)
                    batch = internals.validation_batch(trainer, pl_module, batch, index)
                    if not (isinstance(batch, (list, tuple)) and len(batch) >= 2 and torch.is_tensor(batch[0])
                            and torch.is_tensor(batch[1]) and not batch[1].is_floating_point()):
                        raise TypeError(
                            "the default validation score is top-1 accuracy over batches (inputs, integer "
                            f"labels), but a validation batch is a {type(batch).__name__}; pass "
                            "Pruning(evaluate=...) a callable (model) -> score on your validation data.")
                    out = model(batch[0].to(device))
                    labels = batch[1].to(device)
                    if not torch.is_tensor(out) or out.dim() < 2 or labels.shape != out.shape[:1]:
                        raise TypeError(
                            "the default validation score is top-1 accuracy: it needs logits [batch, classes] "
                            f"and labels [batch], got {type(out).__name__} "
                            f"{tuple(out.shape) if torch.is_tensor(out) else ''} and labels "
                            f"{tuple(labels.shape)}; pass Pruning(evaluate=...) a callable (model) -> score.")
                    correct += (out.argmax(1) == labels).sum()
                    total += labels.numel()

    return evaluate


#: the start of the warning of a fit whose max_epochs ends it before the last scheduled prune
SHORT_FIT = r"Trainer\(max_epochs=\d+\) ends before the last scheduled prune"
#: the same of a ``max_steps`` bound (known once the fit counts its steps per epoch)
SHORT_FIT_STEPS = r"Trainer\(max_steps=\d+\) ends before the last scheduled prune"

#: the epochs Lightning trains where neither max_epochs nor max_steps is given
LIGHTNING_DEFAULT_EPOCHS = 1000

#: Lightning's callbacks that copy the model at set-up, or hold its parameters from then on: the
#: rebuild changes those shapes, so they cannot share a fit with Pruning (what each does with the
#: model, and what it does instead in a second fit of the pruned module). WeightAveraging
#: (EMAWeightAveraging) can: its copy is rebuilt with the model (:func:`restart_averages`).
DENSE_COPY_CALLBACKS = {
    lightning_callbacks.StochasticWeightAveraging: (
        "averages the training weights into a copy of the model made at set-up", "average"),
    lightning_callbacks.ModelPruning: ("masks the parameters it found at set-up and keeps copies of them", "mask"),
}


def in_a_fit(trainer: Trainer | None) -> bool:
    """Whether a checkpoint's run state belongs to what the trainer does now: a fit (or no trainer,
    a load by hand). ``trainer.test/validate/predict(ckpt_path=...)`` load a checkpoint too, but
    no training follows: what resumes a fit (the pruning state, a loader's order) is not theirs."""
    return trainer is None or trainer.state.fn in (None, TrainerFn.FITTING)


def restart_averages(trainer: Trainer, pl_module: LightningModule, restart: bool = True) -> None:
    """Rebuild the copy each WeightAveraging callback of the fit (EMAWeightAveraging) averages into
    with the plan ``pl_module`` was rebuilt with, so that the two keep the same shapes. With
    ``restart`` (after a prune event) the average starts again from ``pl_module``'s weights: what it
    held of the channels that stay averaged the weights before the prune, which the rebuild may have
    changed (a removed channel's constant output folded into its consumers' bias). Without (a resumed
    fit, before the checkpoint's average loads into it) the values are left to the callback."""
    plan = applied_plan(pl_module)
    if plan is None:
        return
    for average in internals.averaged_models(trainer):
        rebuild_to(average.module, plan)
        if not restart:
            continue
        theirs = dict(average.module.state_dict(keep_vars=True))
        with torch.no_grad():
            for name, value in pl_module.state_dict(keep_vars=True).items():
                if name in theirs:
                    theirs[name].copy_(value)
            average.n_averaged.zero_()  # its next update takes the weights as they are then


def restart_monitors(trainer: Trainer) -> list[str]:
    """After a prune event, the callbacks that compare a monitored metric with its best so far start
    over, since the pruned model competes with itself, not with the model before the prune:

    - every ``ModelCheckpoint`` with a ``monitor`` starts its best-k over, among the pruned model's
      checkpoints. Those saved before hold other shapes, which the pruned module cannot load
      (``trainer.test(ckpt_path="best")`` would fail on them); they stay on disk, no longer ranked
      nor deleted (a fit can be resumed from them);
    - every ``EarlyStopping`` forgets its best score and its patience count, which the dense model
      set: else the fine-tuning stops ``patience`` epochs after the prune whenever the pruned model
      does not beat the dense one by then. A stop it asked for before the prune, which
      ``Trainer(min_epochs=...)`` held off, is withdrawn (``trainer.should_stop``);
    - every ``ReduceLROnPlateau`` scheduler forgets its best value and its bad epochs: else it cuts
      the rate right after the prune, when the pruned model scores below the dense one.

    Returns the names of the callbacks (and schedulers) that started over."""
    restarted: list[str] = []
    stopped = any(isinstance(cb, lightning_callbacks.EarlyStopping) for cb in trainer.callbacks) and \
        _early_stopping_stopped(trainer)  # (the same callbacks on every rank: all reduce, or none)
    for cb in trainer.callbacks:
        if isinstance(cb, lightning_callbacks.ModelCheckpoint) and cb.monitor is not None:
            cb.best_k_models = {}
            cb.kth_best_model_path = ""
            cb.best_model_path = ""
            cb.best_model_score = None
            cb.kth_value = torch.tensor(torch.inf if cb.mode == "min" else -torch.inf)
        elif isinstance(cb, lightning_callbacks.EarlyStopping):
            cb.wait_count = 0
            cb.best_score = torch.tensor(torch.inf if cb.monitor_op == torch.lt else -torch.inf)
            if stopped:  # one asked the Trainer to stop, which Trainer(min_epochs=...) held off: withdrawn
                cb.stopped_epoch = 0
                if hasattr(cb, "stopping_reason"):  # Lightning >= 2.6
                    cb.stopping_reason = type(cb.stopping_reason)["NOT_STOPPED"]
                    cb.stopping_reason_message = None
                trainer.should_stop = False
        else:
            continue
        restarted.append(f"{type(cb).__name__}(monitor={cb.monitor!r})")
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.best, scheduler.num_bad_epochs, scheduler.cooldown_counter = scheduler.mode_worse, 0, 0
            restarted.append(f"ReduceLROnPlateau(monitor={config.monitor!r})")
    return restarted


def _early_stopping_stopped(trainer: Trainer, here: bool = True) -> bool:
    """Whether an EarlyStopping of the Trainer stopped the fit, on this rank (where ``here`` holds)
    or on another: a stop in epoch 0 leaves its stopped epoch at 0, and under DDP its reason is set
    only on the rank that decided. One reduce under DDP, made on every rank whatever its own view."""
    local = here and any(internals.early_stopping_stopped(cb) for cb in trainer.callbacks
                         if isinstance(cb, lightning_callbacks.EarlyStopping))
    if getattr(trainer, "world_size", 1) > 1:
        return bool(trainer.strategy.reduce_boolean_decision(local, all=False))
    return local


def _fit_stopped_by_early_stopping(trainer: Trainer) -> bool:
    """Whether an EarlyStopping stopped the fit (its own stop, not another callback's or a
    Timer's), as every rank sees it (``trainer.should_stop`` is not synced by Lightning: code of a
    user's may set it on one rank)."""
    return _early_stopping_stopped(trainer, here=bool(trainer.should_stop))


def _own_generator_use(loaders) -> str | None:
    """What a DataLoader among ``loaders`` (one, or a list, tuple or dict of them, as
    ``trainer.train_dataloader`` gives) draws from a ``torch.Generator`` of its own: ``"shuffles"``
    (its sampler's generator), ``"seeds its workers"`` (``DataLoader(generator=...)`` with
    ``num_workers > 0``: each epoch's worker seeds, hence their random augmentations, come from it),
    or ``None``."""
    if isinstance(loaders, Mapping):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return next((use for use in map(_own_generator_use, loaders) if use), None)
    samplers = [getattr(loaders, "sampler", None), getattr(getattr(loaders, "batch_sampler", None), "sampler", None)]
    if any(isinstance(getattr(s, "generator", None), torch.Generator) for s in samplers):
        return "shuffles"
    if isinstance(getattr(loaders, "generator", None), torch.Generator) and getattr(loaders, "num_workers", 0) > 0:
        return "seeds its workers"
    return None


class _WeightsLoadHook:
    """The callback's load_state_dict pre-hook on the LightningModule. A copy of the module made
    during the fit (the average of EMAWeightAveraging, made at its set-up) holds this same object:
    as a bound method, the hook would copy the callback with it, and through it the Trainer (its
    callbacks, loggers, the DDP launcher's processes, which cannot be copied)."""

    def __init__(self, callback: Pruning):
        self._callback = weakref.ref(callback)

    def __call__(self, module, state_dict, prefix, *args) -> None:
        callback = self._callback()
        if callback is not None:
            callback._before_weights_load(module, state_dict, prefix, *args)

    def __deepcopy__(self, memo) -> _WeightsLoadHook:
        return self


class Pruning(Callback):
    r"""Filter pruning inside ``fit`` with any registered method; the model shrinks for real.

    Args:
        method: a registered method's name (``ssr_l20``, ``ssr_l21``, ``fsm``, ``l1``, ``bn_scale``,
            ``ssl``, ``oneshot``, ``taylor``, ``random``), or a PruningMethod; its own arguments go
            in ``method_kwargs``.
        target: the size to prune to: ``{"macs": f}``, ``{"params": f}``, ``{"filters": f}`` (the
            fraction of the dense model kept), ``{"rates": [...]}`` (per layer),
            ``{"latency": ms, "batch_size": n}``; ``None``: the method decides.
        schedule: a PruningSchedule or its fields (``sparsify_epochs``, ``finetune_epochs``,
            ``prune_events``, ``update_every_n_steps``, ...): when the method trains its term and when
            it prunes.
        engine_args: the other arguments of PruningEngine (below).

    Takes the arguments of :class:`~lightning_ssr.engine.PruningEngine`, which it drives:
    ``method`` (a registered name such as ``"ssr_l20"``, or a :class:`PruningMethod`), ``target``
    (``{"macs": 0.05}``, ``{"params": ...}``, ``{"filters": ...}``, ``{"rates": ...}``,
    ``{"latency": ms, "batch_size": n}``, or ``None``: the method decides), ``schedule`` (a
    :class:`PruningSchedule`), ``method_kwargs``, ``ignored_layers`` (module names relative to the
    LightningModule, or module objects), ``min_channels``, ``max_pruning_ratio``, ``allocation``
    (``"method"``, the default for methods that learn the structure; ``"uniform"``; ``"global"``),
    ``round_to`` (``None``: 8 on CUDA, 1 elsewhere), ``example_input`` (by default the
    LightningModule's ``example_input_array`` or the first tensor of the first training batch),
    ``verbose`` and ``evaluate`` (``(model) -> score`` on validation data, for FSM's compensation
    check; by default top-1 accuracy over the fit's validation batches, never test data).

    After ``fit``: :attr:`result` (:class:`PruningResult`) and :attr:`plan` (the cumulative
    :class:`PruningPlan` of the model being trained). :attr:`engine` is the
    :class:`~lightning_ssr.engine.PruningEngine` it drives.

    One per fit: each would rebuild the model by its own plan. Two with different methods are
    refused when the fit starts; two with the same method share a ``state_key``, which Lightning
    refuses already in ``Trainer(...)`` ("Found more than one stateful callback of type ..."). To
    prune again, with another method or target, give the pruned module a second fit (plans compose).
    """

    def __init__(self, method: str | PruningMethod = "ssr_l20", target: Target | Mapping | None = None,
                 schedule: PruningSchedule | Mapping | None = None, **engine_args: Any):
        super().__init__()
        check_keywords(f"{type(self).__name__}()", engine_args, keyword_names(PruningEngine))
        self.engine = PruningEngine(method, target=target, schedule=schedule, **engine_args)
        self._trainer: Trainer | None = None
        self._world = World(info=rank_zero_info)
        self._hook = None
        self._hook_module = None  # (a weak reference to) the module the hook is registered on
        self._loss_guard = LossGuard()
        self._short_fit = False  # a Trainer bound that ends the fit before the last prune was warned of
        self._train_ended = False  # Lightning ran the fit's on_train_end (not when nothing was left to train)
        self._restored = False  # this fit restored the callback's state from a checkpoint
        #: how far its epoch had got when the checkpoint this fit loaded, or saved last, was written
        #: (:func:`~lightning_ssr.lightning_internals.epoch_progress`; ``None`` before one)
        self.checkpoint_progress: dict | None = None
        self._resume_checked = False  # what a restored fit is checked for, at its first epoch
        self._pruned_again = False  # this fit starts over on the very module the earlier fit pruned
        self._fit_module = None  # (a weak reference to) the module of the last fit, to tell another one given later

    # ------------------------------------------------- the engine's, read here
    @property
    def method(self) -> PruningMethod:
        return self.engine.method

    @property
    def schedule(self) -> PruningSchedule:
        return self.engine.schedule

    @property
    def budget(self) -> Budget:
        return self.engine.budget

    @property
    def target(self) -> Target | None:
        return self.engine.target

    @property
    def allocation(self) -> str:
        return self.engine.allocation

    @property
    def verbose(self) -> bool:
        return self.engine.verbose

    @property
    def plan(self) -> PruningPlan | None:
        return self.engine.plan

    @property
    def result(self) -> PruningResult | None:
        return self.engine.result

    @property
    def events(self) -> list[dict]:
        return self.engine.events

    @property
    def events_done(self) -> int:
        return self.engine.events_done

    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method.name)

    @property
    def phase(self) -> str:
        return self.engine.phase(self._trainer.current_epoch if self._trainer is not None else 0)

    # ----------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage != "fit":
            # test/validate/predict(ckpt_path=...) of a pruned checkpoint on a module built with the
            # dense shapes: the checkpoint's plan rebuilds it before the weights load, as in a resume
            self._watch_weights_load(pl_module)
            return
        internals.check(trainer, pl_module)
        name = type(self).__name__
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"{name} adds its training-time term in on_before_optimizer_step and remaps the optimizer at the "
                "rebuild; it supports automatic optimization only (automatic_optimization=True). With manual "
                "optimization, drive lightning_ssr.PruningEngine from training_step yourself (the README's loop: "
                "on_batch_start before the step, on_before_optimizer_step before each optimizer.step(), on_batch_end "
                "and on_epoch_end after).")
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and internals.ddp_start_method(strategy) != "popen":
            raise MisconfigurationException(
                f"{name} does not support {type(strategy).__name__}(start_method="
                f"{internals.ddp_start_method(strategy)!r}): those launchers return the trained weights to the main "
                "process, whose model still has the full size, so loading them fails after the rebuild. Use "
                "strategy='ddp' (subprocess launcher)" + (", or strategy='single_xla' on one device."
                                                          if "XLA" in type(strategy).__name__ else "."))
        if trainer.world_size > 1 and not isinstance(strategy, DDPStrategy):
            raise MisconfigurationException(
                f"{name} supports single-device training and strategy='ddp'; got {type(strategy).__name__}.")
        self._refuse_compiled(pl_module)
        for cb in trainer.callbacks:
            if isinstance(cb, Pruning) and cb is not self:
                raise MisconfigurationException(
                    f"{name} cannot share a fit with another {type(cb).__name__} (method {cb.method.name!r}): each "
                    "would rebuild the same model by its own plan, and the second rebuild fails on the shapes the "
                    "first left. Use one per fit; to prune again with another method, give the pruned "
                    "LightningModule a second fit with the other callback (the plans compose).")
            known = next((v for k, v in DENSE_COPY_CALLBACKS.items() if isinstance(cb, k)), None)
            if known is not None:
                cls = type(cb).__name__
                raise MisconfigurationException(
                    f"{name} cannot share a fit with {cls}: {cls} {known[0]}, whose shapes the rebuild changes (the "
                    f"fit would fail at its first use after the prune). Prune in this fit, then {known[1]} in a second "
                    f"fit of the pruned LightningModule: Trainer(callbacks=[{cls}(...)]).fit(module, ...).")
        # per fit (before its warnings, which the run keeps); Lightning restores the callback's state after set-up
        self._short_fit = self._restored = self._resume_checked = self._train_ended = self._pruned_again = False
        if trainer.global_step == 0 and not self.engine.fresh:
            # the callback of an earlier fit, given to a new training (a loop over seeds or models):
            # without this it held that fit's finished run and left this model unpruned, without a word.
            # A resumed fit starts here too (its state is restored after set-up).
            earlier = self.engine.plan
            # (said at the train start: a resumed fit restores its run after this hook, and prunes nothing again)
            self._pruned_again = earlier is not None and applied_plan(pl_module) == earlier
            self.engine.reset()
            self._loss_guard = LossGuard()
            if self.verbose and trainer.ckpt_path is None:
                rank_zero_info(f"{name}: a new training from step 0; the run of this callback's earlier fit is set "
                               "aside and pruning starts over.")
        if not isinstance(pl_module, PrunedCheckpointMixin) and any(
                isinstance(cb, lightning_callbacks.ModelCheckpoint) and cb.save_weights_only
                for cb in trainer.checkpoint_callbacks):
            self.engine.warn(
                f"ModelCheckpoint(save_weights_only=True) writes checkpoints without the pruning plan (Lightning "
                f"calls no callback's on_save_checkpoint for them): those saved after the prune hold pruned weights "
                f"that a freshly constructed {type(pl_module).__name__} cannot load. Mix "
                "lightning_ssr.PrunedCheckpointMixin into it (it writes the plan itself), or save full checkpoints.",
                emit=rank_zero_warn)
        monitors = [cb.monitor for cb in trainer.checkpoint_callbacks
                    if isinstance(cb, lightning_callbacks.ModelCheckpoint) and cb.monitor is not None]
        if self.schedule.finetune_epochs == 0 and monitors:
            # the last prune comes at the end of the fit, after its last validation and before
            # ModelCheckpoint saves: the pruned model is saved, ranked by the dense model's score
            self.engine.warn(
                f"the schedule ends with the prune (finetune_epochs=0): ModelCheckpoint(monitor={monitors[0]!r}) saves "
                "the pruned model at the end of the fit with the score of the last validation, which ran on the dense "
                "model. Validate the pruned model after the fit (trainer.validate(module, ...)), or fine-tune at "
                "least one epoch (finetune_epochs >= 1), so that it is validated before it is ranked.",
                emit=rank_zero_warn)
        due = self.schedule.prune_epoch(self.engine.events_done)
        if trainer.fast_dev_run and not self.engine.done and self.verbose and due > 0:
            batches = 1 if trainer.fast_dev_run is True else int(trainer.fast_dev_run)
            rank_zero_info(f"{type(self).__name__}: fast_dev_run trains {batches} batch{'es' if batches > 1 else ''} "
                           "in one epoch: the set-up's dry run prunes and rebuilds a copy of the model (checked "
                           f"numerically), and the prune due at the start of epoch {due} is not made.")
        if (not trainer.fast_dev_run and not self.engine.done
                and not self.schedule.reaches_last_prune(max_epochs=trainer.max_epochs)):
            self._warn_short_fit(f"max_epochs={trainer.max_epochs}", f"max_epochs={self.schedule.total_epochs}")
        total = self.schedule.total_epochs
        if (trainer.max_epochs == LIGHTNING_DEFAULT_EPOCHS and trainer.max_steps == -1 and not trainer.fast_dev_run
                and total < LIGHTNING_DEFAULT_EPOCHS and not self.engine.done):
            # Lightning's own warning says 1000; this says what it means for the schedule
            rank_zero_warn(f"{type(self).__name__}: Trainer(max_epochs={LIGHTNING_DEFAULT_EPOCHS}) (Lightning's "
                           "default where neither max_epochs nor max_steps is given) trains "
                           f"{LIGHTNING_DEFAULT_EPOCHS - total} epochs more "
                           f"than this pruning schedule's {total} (the fine-tune goes on after it). Set "
                           f"Trainer(max_epochs={total}) to end with the schedule.")
        if self.engine.example is None and getattr(pl_module, "example_input_array", None) is not None:
            self.engine.example = first_tensor(pl_module.example_input_array)
        # Resuming fit(ckpt_path=...) after a rebuild: the model must have the pruned shapes before
        # Lightning loads the weights. A load_state_dict pre-hook (a public torch.nn.Module hook,
        # removed in teardown) applies the checkpoint's plan at that moment.
        self._watch_weights_load(pl_module)
        forward_context = trainer.precision_plugin.forward_context  # (autocast under mixed precision)
        self._world = World(info=rank_zero_info, forward_context=forward_context) if trainer.world_size <= 1 else \
            World(size=trainer.world_size, rank=trainer.global_rank,
                  broadcast=lambda obj: trainer.strategy.broadcast(obj, src=0),
                  any_rank=lambda flag: trainer.strategy.reduce_boolean_decision(bool(flag), all=False),
                  rewrap=lambda: internals.rewrap_ddp(trainer, pl_module), info=rank_zero_info,
                  forward_context=forward_context)
        self.engine.start()

    def _after_prune(self, trainer: Trainer) -> None:
        """A prune event happened: the loss guard follows the losses from it, and monitors that
        compare the model with its dense self start again."""
        self._loss_guard.mark_prune(self.engine.events[-1]["step"], self.engine.schedule.lr_warmup_steps)
        restart_averages(trainer, trainer.lightning_module)
        restarted = restart_monitors(trainer)
        if restarted and self.verbose:
            rank_zero_info(f"{type(self).__name__}: {', '.join(restarted)} compare the pruned model with itself "
                           "from here on.")

    def _warn_short_fit(self, bound: str, fix: str, at: str = "") -> None:
        schedule = self.schedule
        self._short_fit = True
        self.engine.warn(
            f"Trainer({bound}) ends before the last scheduled prune at the start of epoch "
            f"{schedule.last_prune_epoch}{at}; the model would not be fully pruned. Use {fix} "
            "for this schedule, or resume this fit later with fit(ckpt_path=...) and a Trainer that goes on.",
            emit=rank_zero_warn, until_done=True)

    def _refuse_compiled(self, pl_module: LightningModule) -> None:
        compiled = internals.compiled_modules(pl_module)
        if compiled:
            where = ", ".join(n or f"the {type(pl_module).__name__} itself" for n in compiled)
            raise MisconfigurationException(
                f"{type(self).__name__} rebuilds the model during fit, which a compiled module (torch.compile(module), "
                f"module.compile(), or a compiled forward) cannot follow; compiled here: {where}. Train the uncompiled "
                "module and compile the pruned one afterwards (torch.compile(model)).")

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # (again: the module's own setup() and configure_model() run after this callback's setup)
        self._refuse_compiled(pl_module)
        # (here, not in setup: Lightning sets trainer.ckpt_path and restores this callback's state after setup)
        earlier_module = self._fit_module() if self._fit_module is not None else None
        if (trainer.global_step > 0 and not self._restored and trainer.ckpt_path is None and not self.engine.fresh
                and earlier_module is not pl_module):
            # (the Trainer goes on from its step and epoch, and the callback took the fit for a continued one: the
            # other module stayed dense, without a word: probe)
            raise MisconfigurationException(
                f"{type(self).__name__}: fit() of another {type(pl_module).__name__} on a Trainer that trained one "
                f"already (at optimizer step {trainer.global_step}, epoch {trainer.current_epoch}): the Trainer goes "
                "on from that epoch, and the pruning schedule of a new model counts its epochs from 0. Give the new "
                "model a new Trainer (and a new Pruning callback, or this one: it starts over).")
        self._fit_module = weakref.ref(pl_module)

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        schedule = self.schedule
        if self._pruned_again and not self._restored:
            goal = f"target {self.engine.target.to_dict()}" if self.engine.target else "what the method decides"
            self.engine.warn(
                f"{type(self).__name__}: this {type(pl_module).__name__} is the model this callback pruned in its "
                f"earlier fit, and this fit prunes it again, to {goal} of its pruned size (the reductions multiply, "
                "and the result's 'dense' is the model this fit starts from). To fine-tune the pruned model further, "
                "fit it without the Pruning callback; to go on with the earlier run, resume it from its checkpoint "
                "(fit(ckpt_path=...)).", emit=rank_zero_warn)
        elif (self.verbose and not self._restored and trainer.global_step == 0 and self.engine.fresh
              and applied_plan(pl_module) is not None):
            # (a pruned model loaded, or pruned by another callback's fit: pruned again, on purpose or not)
            rank_zero_info(f"{type(self).__name__}: this {type(pl_module).__name__} was pruned before (it carries "
                           "a pruning plan), and this fit prunes it again: the target is of its pruned size (the "
                           "reductions multiply), and the result's 'dense' is the model this fit starts from.")
        # past warm-up with nothing of a run: a checkpoint without this callback's state (a second fit
        # of the same Trainer goes on with the run it holds)
        if trainer.current_epoch > schedule.warmup_epochs and not self._restored and self.engine.fresh:
            raise MisconfigurationException(self._stateless_resume(trainer.current_epoch))
        # the optimizer steps per epoch are known from here on (Lightning has set up the data)
        spe = steps_per_epoch(trainer.num_training_batches, trainer.accumulate_grad_batches)
        saved = self.checkpoint_progress  # (the loaded one's: no checkpoint is saved before this hook)
        if (self._restored and saved and saved["batches"] < saved["of"]
                and trainer.current_epoch > saved["epoch"]):
            # (a checkpoint saved as max_steps stopped a fit, mid-epoch, goes on at the next epoch's start
            # without a word from Lightning: the rest of that epoch is never trained: probe)
            skipped = saved["of"] - saved["batches"]
            self.engine.warn(
                f"{type(self).__name__}: this fit goes on at the start of epoch {trainer.current_epoch} from a "
                f"checkpoint saved after {saved['batches']} of the {saved['of']} training batches of epoch "
                f"{saved['epoch']} (optimizer step {trainer.global_step}): Lightning does not train its last "
                f"{skipped}, so every later epoch, prune and the fit's end come that much earlier than in an "
                "uninterrupted fit. To go on exactly, resume from a checkpoint of an epoch that ran to its end (not one "
                "saved as max_steps or max_time stopped a fit).", emit=rank_zero_warn)
        if (not self._short_fit and not trainer.fast_dev_run and not self.engine.done
                and not schedule.reaches_last_prune(trainer.max_epochs, trainer.max_steps, spe)):
            step = schedule.last_prune_epoch * spe
            # the prune's step must be taken, which a schedule that ends with the prune needs one more step for
            enough = schedule.total_epochs * spe if schedule.finetune_epochs else step + 1
            self._warn_short_fit(
                f"max_steps={trainer.max_steps}",
                f"max_steps={enough} (or max_steps=-1 and max_epochs={schedule.total_epochs})",
                at=f" (optimizer step {step}, at {spe} steps per epoch)")

    def _watch_weights_load(self, pl_module: LightningModule) -> None:
        """:meth:`_before_weights_load` as ``pl_module``'s load_state_dict pre-hook (once; removed in teardown)."""
        if self._hook is not None and self._hook_module() is not pl_module:  # (a fit that failed kept it: no teardown)
            self._hook.remove()
            self._hook = None
        if self._hook is None:
            self._hook = pl_module.register_load_state_dict_pre_hook(_WeightsLoadHook(self))
            self._hook_module = weakref.ref(pl_module)

    def _before_weights_load(self, module, state_dict, prefix, *args) -> None:
        if prefix or module is not self._trainer.lightning_module:  # (a copy of it holds the same hook)
            return
        checkpoint = internals.loaded_checkpoint(self._trainer)
        loaded = checkpoint.get("state_dict")
        # Lightning restoring fit(ckpt_path=...): torch's load_state_dict hands the hook a copy of
        # the checkpoint's state dict (OrderedDict(state_dict)), so compare the tensors it holds
        if loaded is not None and len(loaded) == len(state_dict) and all(
                state_dict.get(k) is v for k, v in loaded.items()):
            # a resume this callback would refuse is refused before the module takes the checkpoint's
            # shapes and weights: it stays as it was, for load_pruned or a new fit
            refuse_damaged_checkpoint(self._trainer.ckpt_path)  # (torch.load read it without an error)
            state = self._state_in(checkpoint) if self._fitting() else None
            if state is not None:
                self.engine.resolve_ignored(module)
                self.engine.check_settings(state.get("settings"), state.get("events_done"))
            elif self._fitting():  # none of this callback's state, past warm-up: refused before the weights load
                self.check_resume(checkpoint)
            apply_checkpoint_plan(module, checkpoint, source=restored_from(self._trainer))
            restart_averages(self._trainer, module, restart=False)  # the average loads the checkpoint's after this

    @override
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        # Lightning's loading of a damaged fit(ckpt_path=...) fails with torch's error, which names neither the
        # file nor what is wrong with it (OSError: [Errno 22] Invalid argument for a truncated one)
        # (nor that a pruned model's file is not a checkpoint of a fit: KeyError: 'pytorch-lightning_version')
        if trainer.ckpt_path is not None and not isinstance(exception, CheckpointReadError):
            if trainer.global_step > 0 or trainer.current_epoch > 0:  # the file loaded: its bytes checked, not read
                try:
                    check_checkpoint_file(trainer.ckpt_path)
                    reason = None
                except CheckpointReadError as err:
                    reason = str(err)
            else:  # (fit, test, validate or predict: the call it was given to)
                reason = failed_load_reason(trainer.ckpt_path, trainer.state.fn.value if trainer.state.fn else "fit")
            if reason is not None:
                exception.add_note(f"{type(self).__name__}: {reason}")

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @override
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._restored and not self._resume_checked:  # after the module's own on_train_start
            self._resume_checked = True
            self._warn_cosine_ending_early(trainer)
            use = _own_generator_use(trainer.train_dataloader) if trainer.world_size == 1 else None
            if use:
                self.engine.warn(
                    f"{type(self).__name__}: the training DataLoader {use} with a generator of its own "
                    "(DataLoader(generator=...) or a sampler's), whose state neither Lightning's checkpoint nor the "
                    "callback keeps: this resumed fit draws other "
                    f"{'batches' if use == 'shuffles' else 'worker seeds (so other random augmentations, where the workers draw any)'} than an "
                    "uninterrupted one would, and ends near it, not bitwise equal. Leave the generator out: the "
                    "global RNG, which the callback restores, then does it, for a resume that repeats the run "
                    "exactly.", emit=rank_zero_warn)

    def _warn_cosine_ending_early(self, trainer: Trainer) -> None:
        """A resume keeps the checkpoint's schedulers: a cosine tied to the first fit's length ends
        before a longer fine-tuning does, which then trains at about its ``eta_min``."""
        for sched, unit, position, end in fit_cosines(trainer):
            ends = cosine_end(sched, position)
            if ends < end:
                fit_end = f"max_epochs={end}" if unit == "epoch" else f"the fit's last step ({end})"
                self.engine.warn(
                    f"{type(self).__name__}: the checkpoint's CosineAnnealingLR ends at {unit} {ends} "
                    f"(T_max={sched.T_max}), before {fit_end}: a resume keeps the checkpoint's schedule, so the "
                    f"{unit}s after its end train at about eta_min (then torch's cosine rises again). To fine-tune "
                    "longer along a cosine, end it where the fit does in the module's on_train_start: "
                    "lightning_ssr.end_cosines(self.trainer).", emit=rank_zero_warn)

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        engine = self.engine
        setting_up = engine.needs_setup  # what only the set-up reads: the epoch's length, validation data
        events = engine.events_done
        metrics = engine.on_batch_start(
            pl_module, batch, epoch=trainer.current_epoch, step=trainer.global_step, optimizers=trainer.optimizers,
            world=self._world,
            # (fast_dev_run's one batch is no epoch: a sparsify phase is not judged by it)
            steps_per_epoch=steps_per_epoch(trainer.num_training_batches, trainer.accumulate_grad_batches)
            if setting_up and not trainer.fast_dev_run else None,
            evaluate=(engine.evaluate or validation_accuracy(trainer, pl_module)) if setting_up else None,
            schedulers=[config.scheduler for config in trainer.lr_scheduler_configs])
        if self.engine.events_done > events:
            self._after_prune(trainer)
        for key, value in metrics.items():
            self._log(pl_module, f"pruning/{key}", value, on_epoch=True, on_step=False)

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        self.engine.on_before_optimizer_step()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        self._loss_guard.check(loss, trainer.global_step, trainer.current_epoch, term=self.engine.term_method)
        for key, value in self.engine.on_batch_end(step=trainer.global_step).items():
            self._log(pl_module, f"pruning/{key}", value)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        events = self.engine.events_done
        metrics = self.engine.on_epoch_end(pl_module, epoch=trainer.current_epoch, step=trainer.global_step,
                                           optimizers=trainer.optimizers, max_epochs=trainer.max_epochs,
                                           world=self._world)
        if self.engine.events_done > events:
            self._after_prune(trainer)
        for key, value in metrics.items():
            self._log(pl_module, f"pruning/{key}", value, on_epoch=True, on_step=False)

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._train_ended = True

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._train_ended:
            # a resume from the checkpoint of the fit's last step runs no training loop, so Lightning
            # calls no on_train_end, where a WeightAveraging callback gives the module its average: the
            # fit would end with the weights trained on, not with the average an uninterrupted one has
            internals.end_with_averages(trainer, pl_module)
        engine, schedule = self.engine, self.schedule
        if not engine.done and not trainer.fast_dev_run:  # warned of here, in Lightning's terms
            due = schedule.prune_epoch(engine.events_done)
            shapes = (f"the shapes of prune event {engine.events_done} of {schedule.prune_events}"
                      if engine.events_done else "its dense shapes (Pruning.result is None)")
            # (the Trainer's own max_epochs where it is longer than the schedule, or unbounded (-1, the
            # fit bounded by max_steps or max_time): the advice does not shorten it)
            epochs = (-1 if trainer.max_epochs is None or trainer.max_epochs < 0
                      else max(schedule.total_epochs, trainer.max_epochs))
            message = (f"{type(self).__name__}: the fit ended at optimizer step {trainer.global_step}, before the "
                       f"prune due at the start of epoch {due}: the model keeps {shapes}. To prune and fine-tune it, "
                       f"resume from a checkpoint of this fit: Trainer(max_epochs={epochs}, ...)"
                       ".fit(module, ckpt_path=...).")
            stopped = _fit_stopped_by_early_stopping(trainer)
            if self._short_fit:  # the Trainer's bound was warned of at set-up
                if self.verbose:
                    rank_zero_info(message)
            elif stopped:  # (a resume restores EarlyStopping's count too: it would stop again at once)
                engine.warn(f"{type(self).__name__}: EarlyStopping stopped the fit at optimizer step "
                            f"{trainer.global_step}, before the prune due at the start of epoch {due}: the model keeps "
                            f"{shapes}. Give the Trainer min_epochs={schedule.min_epochs} (Lightning does not stop "
                            "before it, and EarlyStopping starts over at the prune): in a new fit, or in a resume "
                            f"from a checkpoint of this fit, Trainer(min_epochs={schedule.min_epochs}, max_epochs="
                            f"{epochs}, ...).fit(module, ckpt_path=...); without it a resume restores "
                            "EarlyStopping's count, which stops the fit again.", emit=rank_zero_warn, until_done=True)
            elif trainer.global_step == 0 and (trainer.limit_train_batches == 0 or trainer.num_training_batches == 0):
                engine.warn(f"{type(self).__name__}: the fit ran no training batch (limit_train_batches=0, or an empty "
                            f"training loader), so the prune due at the start of epoch {due} was not made: the model "
                            f"keeps {shapes}.", emit=rank_zero_warn, until_done=True)
            else:
                engine.warn(message + f" If a callback stopped it, give the Trainer min_epochs={schedule.min_epochs}: "
                                      "Lightning does not stop before it.", emit=rank_zero_warn, until_done=True)
        engine.finish(pl_module, warn=False, emit=rank_zero_warn)  # (the result, with the warnings above)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # before this fit's first prune, the plan of an earlier pruning fit, if the module carries one:
        # the checkpoint then still loads into a freshly constructed module
        plan = self.plan if self.plan is not None else applied_plan(pl_module)
        if plan is not None:
            checkpoint[PLAN_CHECKPOINT_KEY] = plan.to_dict()

    def _state_in(self, checkpoint: Mapping[str, Any]) -> dict | None:
        """This callback's state in a Lightning checkpoint (``None`` if it holds no pruning state).

        Lightning finds a callback's state by its state_key, which names the class and the method:
        the state of a pruning callback of another class or method would be passed over, and the
        resume taken for one from a dense checkpoint. The same method under another class
        (SSRPruning -> Pruning) is this callback's to restore; another method is refused."""
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states:
            return states[self.state_key]
        others = [key for key, state in states.items()
                  if isinstance(state, Mapping) and {"method", "events_done", "dense"} <= set(state)]
        if len(others) == 1 and states[others[0]]["method"] == self.method.name:
            states[self.state_key] = states[others[0]]
            return states[self.state_key]
        if others:
            method = states[others[0]]["method"]
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's pruning state is from method {method!r} ({others[0]}), this "
                f"callback runs {self.method.name!r} ({self.state_key}). Resume with the same method, or, to prune "
                "differently, load its weights (lightning_ssr.load_pruned) and start a new fit without ckpt_path.")
        return None

    def check_resume(self, checkpoint: Mapping[str, Any]) -> None:
        """Before a fit resumes from ``checkpoint`` (a Lightning checkpoint, loaded): refuse it as
        the resume would at its start, for another method's pruning state or settings other than
        those its run was set up with (the CLI calls this before anything trains)."""
        state = self._state_in({**checkpoint, "callbacks": dict(checkpoint.get("callbacks") or {})})
        if state is not None:
            self.engine.check_settings(state.get("settings"), state.get("events_done"))
            return
        # no pruning state: refused at the fit's start past warm-up (the epoch it resumes at is
        # exact for a checkpoint written at the end of a training epoch, else a lower bound)
        epoch, exact = internals.resumed_epoch(dict(checkpoint))
        if epoch is not None and epoch > self.schedule.warmup_epochs:
            raise ValueError(self._stateless_resume(epoch, "" if exact else "at least "))

    def _stateless_resume(self, epoch: int, bound: str = "") -> str:
        """Why a fit that resumes at ``epoch``, past warm-up, from a checkpoint without this
        callback's state is refused, and what to do instead."""
        name, schedule = type(self).__name__, self.schedule
        phase = "sparsify phase" if self.method.sparsifies else "first prune"
        return (f"{name}: this fit resumes at epoch {bound}{epoch} from a checkpoint that holds no {name} state (a "
                f"fit without this callback wrote it), and the schedule's {phase} starts at epoch "
                f"{schedule.warmup_epochs}: the epochs the checkpoint trained would count as the schedule's, and what "
                f"it schedules before epoch {epoch} would be skipped. To compress a trained model, load its weights "
                "into the module (load_state_dict, or YourModule.load_from_checkpoint) and start a new fit with "
                f"{name}, without ckpt_path.")

    @override
    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._fitting():
            self._state_in(checkpoint)  # another method's state: refused (the weights' pre-hook did, in a fit)

    def _fitting(self) -> bool:
        """Not in a test, validate or predict of the Trainer the callback was set up with: those
        load only a checkpoint's weights (and plan), not the run's state."""
        return in_a_fit(self._trainer)

    @override
    def state_dict(self) -> dict[str, Any]:
        # (what the checkpoint saved last holds of its epoch: the command says a mid-epoch one so)
        self.checkpoint_progress = internals.epoch_progress(self._trainer)
        return {**self.engine.state_dict(), "rng": rng_states(), "epoch_progress": self.checkpoint_progress}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self._fitting():  # trainer.test(ckpt_path=...): the run goes on only in a fit
            return
        self._restored = True
        self.engine.load_state_dict(state_dict)
        self.checkpoint_progress = state_dict.get("epoch_progress")  # (how far its epoch had got: on_train_start)
        trainer = self._trainer
        if state_dict.get("rng") is not None and (trainer is None or trainer.world_size == 1):
            # Lightning's checkpoints hold no RNG state, so a shuffled DataLoader (or dropout) would
            # draw differently after a resume; restoring the states of the moment of the save makes
            # a resumed single-process run continue exactly like an uninterrupted one
            set_rng_states(state_dict["rng"])

    @staticmethod
    def _log(pl_module: LightningModule, name: str, value: float, **kwargs) -> None:
        # every rank holds the same value; syncing keeps Lightning's epoch-level reduction exact
        pl_module.log(name, value, sync_dist=pl_module.trainer.world_size > 1, **kwargs)


class SSRPruning(Pruning):
    r"""SSR (AULM with L2,1 or L2,0) through the generic :class:`Pruning` engine, with the
    arguments of earlier versions.

    ``flops_budget`` / ``filter_budget`` become ``target={"macs": ...}`` / ``{"filters": ...}``
    (the L2,0 budget form); the other arguments go to :class:`~lightning_ssr.methods.SSR`.
    """

    def __init__(self, regularizer: str = "l21", lam: float | Mapping[str, float] = 1e-3, lam_scaling: str = "flops",
                 flops_budget: float | None = None, filter_budget: float | None = None, rho: float = 0.1,
                 rho_growth: float = 1.0, rho_max: float | None = None,
                 schedule: PruningSchedule | Mapping | None = None, ignored_layers: Sequence[str | nn.Module] = (),
                 min_channels: int = 1, max_pruning_ratio: float = 1.0, example_input: torch.Tensor | None = None,
                 tol: float = 1e-3, patience: int = 3, verbose: bool = True):
        if flops_budget is not None and filter_budget is not None:
            raise ValueError("SSRPruning: give flops_budget or filter_budget, not both")
        budget = {"macs": flops_budget} if flops_budget is not None else (
            {"filters": filter_budget} if filter_budget is not None else None)
        if budget is not None and regularizer != "l20":
            raise ValueError("SSRPruning: a FLOPs/filter budget selects the budget form of L2,0: set regularizer='l20'")
        method = SSR(regularizer=regularizer, lam=lam, lam_scaling=lam_scaling, rho=rho, rho_growth=rho_growth,
                     rho_max=rho_max, tol=tol, patience=patience)
        super().__init__(method=method, target=budget, schedule=schedule, ignored_layers=ignored_layers,
                         min_channels=min_channels, max_pruning_ratio=max_pruning_ratio,
                         example_input=example_input, verbose=verbose)
