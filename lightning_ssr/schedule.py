"""When the engine sparsifies, prunes and fine-tunes, counted in epochs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import InitVar, dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR

from .validation import check_flag, check_number


@dataclass(frozen=True)
class PruningSchedule:
    """``warmup`` -> ``sparsify`` -> ``prune`` (one or more events) -> ``finetune``.

    - ``warmup_epochs``: plain training before the method's training-time term starts.
    - ``sparsify_epochs``: epochs with the method's term (SSR: AULM). The first prune event
      happens at the start of the epoch after them (before its first step), or earlier once
      the method is ready, if ``stop_early``. Methods without a term (``oneshot``) use 0.
    - ``prune_events`` and ``epochs_between_prunes``: iterative pruning. Event ``k`` (0-based)
      is due ``k * epochs_between_prunes`` epochs after the first; each removes an equal share
      of the way to the target, and the last one reaches it.
    - ``finetune_epochs``: training of the pruned model after the last event.
    - ``update_every_n_steps``: the interval of the method's periodic update in optimizer
      steps; ``None`` means once per epoch, at its end. ``benchmarks/update_interval.py``
      compared intervals for SSR on LeNet-5/MNIST (2 seeds): every 25 steps pruned the most with
      L2,1 and, tied with every 10, lost the least accuracy with the L2,0 budget, hence the default.

    - ``restart_lr``: after the last prune event, the learning-rate schedule starts again from
      its initial rate and anneals over what it had left, so that the fine-tuning of the pruned
      model gets a whole schedule (learning-rate rewinding, Renda et al. 2020) rather than the
      tail that was left when the method pruned late. It needs ``CosineAnnealingLR``
      schedulers (the run is refused before its first step otherwise); a prune at the first
      step leaves the schedule as it was.
    - ``lr_warmup_steps``: after each prune event, the next ``n`` optimizer steps take a
      learning rate that rises linearly, ``(k + 1) / (n + 1)`` of the scheduled one at the
      ``k``-th step, then the scheduled rate itself (gradual warm-up, Goyal et al. 2017). A
      network cut by much (LeNet-5 at 40x fewer MACs, no BatchNorm) can diverge when its first
      steps take the full rate, worse with a distillation term scaled by ``T^2``. The scaling
      applies inside each ``optimizer.step()`` only: schedulers, checkpoints and learning-rate
      monitors see the scheduled rate. ``0`` (the default) steps at the scheduled rate at once.

    ``admm_epochs`` is accepted as the former name of ``sparsify_epochs`` (with a ``FutureWarning``).
    """

    warmup_epochs: int = 0
    sparsify_epochs: int = 10
    finetune_epochs: int = 10
    update_every_n_steps: int | None = 25
    stop_early: bool = True
    prune_events: int = 1
    epochs_between_prunes: int = 1
    restart_lr: bool = False
    lr_warmup_steps: int = 0
    admm_epochs: InitVar[int | None] = None

    def __post_init__(self, admm_epochs):
        owner = "PruningSchedule"
        if admm_epochs is not None:
            # (10, the default, is taken as not given: a sentinel default broke LightningCLI's and OmegaConf's
            # reading of the signature: review)
            if self.sparsify_epochs not in (admm_epochs, 10):
                raise ValueError(f"{owner}: sparsify_epochs={self.sparsify_epochs!r} and admm_epochs={admm_epochs!r} "
                                 "(its former name) disagree: give sparsify_epochs only")
            warnings.warn(f"{owner}: admm_epochs is the former name of sparsify_epochs, and will go: write "
                          f"sparsify_epochs={admm_epochs!r}", FutureWarning, stacklevel=3)
            object.__setattr__(self, "sparsify_epochs", admm_epochs)
        for name in ("warmup_epochs", "sparsify_epochs", "finetune_epochs"):
            check_number(owner, name, getattr(self, name), low=0, integer=True)
        check_number(owner, "prune_events", self.prune_events, low=1, integer=True)
        check_number(owner, "epochs_between_prunes", self.epochs_between_prunes, low=1, integer=True)
        check_number(owner, "update_every_n_steps", self.update_every_n_steps, low=1, integer=True, optional=True)
        check_number(owner, "lr_warmup_steps", self.lr_warmup_steps, low=0, integer=True)
        for name in ("stop_early", "restart_lr"):
            check_flag(name, getattr(self, name), owner)

    def prune_epoch(self, event: int = 0) -> int:
        """The (0-based) epoch at whose start prune event ``event`` is due."""
        return self.warmup_epochs + self.sparsify_epochs + event * self.epochs_between_prunes

    @property
    def last_prune_epoch(self) -> int:
        """The (0-based) epoch at whose start the last prune event is due."""
        return self.prune_epoch(self.prune_events - 1)

    @property
    def total_epochs(self) -> int:
        return self.last_prune_epoch + self.finetune_epochs

    @property
    def min_epochs(self) -> int:
        """The fewest epochs a training takes to complete the last prune (with one epoch of
        fine-tuning after it, if the schedule has any): the ``Trainer(min_epochs=...)`` that keeps
        a stop request (``EarlyStopping``) from ending the training before the prune."""
        return min(self.last_prune_epoch + 1, self.total_epochs)

    def lr_scale(self, steps_since_prune: int | None) -> float:
        """The factor of the learning rate at the optimizer step ``steps_since_prune`` steps after
        the last prune event (0: the first step of the pruned model); ``None``: no prune yet."""
        n = self.lr_warmup_steps
        if steps_since_prune is None or steps_since_prune < 0 or steps_since_prune >= n:
            return 1.0
        return (steps_since_prune + 1) / (n + 1)

    def reaches_last_prune(self, max_epochs: int | None = None, max_steps: int | None = None,
                           steps_per_epoch: int | None = None) -> bool:
        """Whether a training bounded by ``max_epochs`` and ``max_steps`` (optimizer steps; ``None``
        or negative: no bound, as in Lightning) gets to the last scheduled prune event. The event
        happens before the first step of its epoch, so that step must be taken, unless the
        schedule ends with the prune (no fine-tune epoch) and the training ends with the epoch
        before it, where the prune happens at the end of the training. ``max_steps`` is only
        judged with ``steps_per_epoch`` known."""
        last = self.last_prune_epoch
        bounded = max_epochs is not None and max_epochs >= 0
        prunes_at_end = bounded and last == self.total_epochs and max_epochs == last
        if bounded and max_epochs <= last and not prunes_at_end:
            return False
        if max_steps is None or max_steps < 0 or steps_per_epoch is None:
            return True
        return max_steps > last * steps_per_epoch or (prunes_at_end and max_steps == last * steps_per_epoch)

    def phase(self, epoch: int, events_done: int) -> str:
        """``"warmup"``, ``"sparsify"``, ``"prune"`` (between iterative events) or ``"finetune"``."""
        if events_done >= self.prune_events:
            return "finetune"
        if events_done > 0:
            return "prune"
        if epoch < self.warmup_epochs:
            return "warmup"
        return "sparsify"


def check_restartable(schedulers: Sequence[Any]) -> None:
    """Refuse, before training, learning-rate schedulers that ``restart_lr`` cannot start again:
    it needs at least one, and each a :class:`torch.optim.lr_scheduler.CosineAnnealingLR`."""
    if not schedulers:
        raise ValueError("PruningSchedule(restart_lr=True) starts the learning-rate schedule again after the last "
                         "prune, but the optimizer has no scheduler: return a CosineAnnealingLR from "
                         "configure_optimizers (a hand-written loop passes it to the engine: "
                         "engine.on_batch_start(..., schedulers=[scheduler])), or set restart_lr=False")
    other = sorted({type(s).__name__ for s in schedulers if not isinstance(s, CosineAnnealingLR)})
    if other:
        raise ValueError(f"PruningSchedule(restart_lr=True) can start CosineAnnealingLR schedules again, not "
                         f"{', '.join(other)}: use CosineAnnealingLR, or set restart_lr=False")


def restart_lr_schedules(schedulers: Sequence[CosineAnnealingLR]) -> int | None:
    """Start each cosine schedule again from its initial rates, annealed over the steps it had left
    (its own unit: epochs or steps). Returns those steps, or ``None`` where nothing changed: none
    was left, or none had been taken (a schedule restarted at its start is the same schedule)."""
    left = None
    for sched in schedulers:
        steps = sched.T_max - sched.last_epoch
        if steps < 1 or sched.last_epoch == 0:
            continue
        sched.T_max, sched.last_epoch = steps, 0
        for group, base in zip(sched.optimizer.param_groups, sched.base_lrs, strict=True):
            group["lr"] = base
        sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]
        left = steps if left is None else max(left, steps)
    return left


def fit_cosines(trainer: Any) -> list[tuple[CosineAnnealingLR, str, int, int]]:
    """The cosine schedules of a Lightning ``trainer`` (its ``lr_scheduler_configs``) stepped once
    an epoch or once an optimizer step (``frequency=1``), each as ``(scheduler, unit, position,
    end)``: ``("epoch", current_epoch, max_epochs)`` or ``("step", global_step, the fit's last
    step)`` (see :func:`fit_last_step`). Those of a fit without a finite end in their unit are left out."""
    found = []
    for config in trainer.lr_scheduler_configs:
        if not isinstance(config.scheduler, CosineAnnealingLR) or config.frequency != 1:
            continue
        if config.interval == "epoch" and trainer.max_epochs is not None and trainer.max_epochs > 0:
            found.append((config.scheduler, "epoch", trainer.current_epoch, trainer.max_epochs))
        elif config.interval == "step":
            end = fit_last_step(trainer)
            if end is not None:
                found.append((config.scheduler, "step", trainer.global_step, end))
    return found


def fit_last_step(trainer: Any) -> int | None:
    """The optimizer step (``global_step``) at which a Lightning ``trainer``'s fit ends: the steps
    taken plus those of the epochs left at the present epoch length, capped by ``max_steps``.
    Counted from where the fit is, not as ``estimated_stepping_batches`` (every epoch at the present
    length): a resume may change the epoch length (``accumulate_grad_batches``,
    ``limit_train_batches``, the data). ``None`` for a fit without an end."""
    max_steps = trainer.max_steps if trainer.max_steps is not None and trainer.max_steps > 0 else None
    batches = trainer.num_training_batches
    if trainer.max_epochs is None or trainer.max_epochs < 0 or not math.isfinite(batches):
        return max_steps
    accumulate = trainer.accumulate_grad_batches
    # batches of this epoch taken before a mid-epoch checkpoint; at an epoch's start, Lightning still
    # holds the last epoch's count (all its batches) until the epoch begins
    progress = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None), "batch_progress", None)
    taken = progress.current.ready if progress is not None else 0
    taken = taken if taken < batches else 0
    end = (trainer.global_step + math.ceil(batches / accumulate) * (trainer.max_epochs - trainer.current_epoch)
           - taken // accumulate)
    return min(end, max_steps) if max_steps is not None else end


def cosine_end(sched: CosineAnnealingLR, position: int) -> int:
    """Where the cosine ``sched``, at ``position`` of the fit (in its own unit: epochs for an
    epoch-wise one, optimizer steps for a per-step one), ends."""
    return position - sched.last_epoch + sched.T_max


def end_cosine_at(sched: CosineAnnealingLR, position: int, end: int) -> bool:
    """Make the cosine ``sched``, at ``position`` of the fit, end at ``end``, both in its own unit
    (epochs for one stepped once an epoch, optimizer steps for one stepped once a step): its length
    changes by as many steps as its end moves, and the rates become the new cosine's at its
    position. ``False`` (nothing changed) where it ends there already, or where the new end is at or
    before its position. A checkpoint holds the cosine of the run that wrote it: without this, a
    resume that fine-tunes longer would train its added epochs past the cosine's end, at about
    ``eta_min`` (0 here), and change nothing. :func:`end_cosines` does it for each of a fit's."""
    start = position - sched.last_epoch  # where this cosine began (0, or the restart after a prune)
    length = end - start
    if cosine_end(sched, position) == end or length <= sched.last_epoch:
        return False
    sched.T_max = length
    for group, base in zip(sched.optimizer.param_groups, sched.base_lrs, strict=True):
        group["lr"] = sched.eta_min + (base - sched.eta_min) * (1 + math.cos(math.pi * sched.last_epoch / length)) / 2
    sched._last_lr = [group["lr"] for group in sched.optimizer.param_groups]
    return True


def end_cosines(trainer: Any) -> list[tuple[CosineAnnealingLR, str, int]]:
    """Make each cosine schedule of a Lightning ``trainer`` (see :func:`fit_cosines`) end where the
    fit does: at ``max_epochs`` for an epoch-wise one, at the fit's last optimizer step for a
    per-step one. Call it in the module's ``on_train_start``, where a resumed fit has its
    checkpoint's schedulers. Any cosine that ends elsewhere is changed, also in a fresh fit: a
    cosine made shorter than the fit on purpose should not be given to it. Returns
    ``(scheduler, unit, end)`` for each one changed."""
    return [(sched, unit, end) for sched, unit, position, end in fit_cosines(trainer)
            if end_cosine_at(sched, position, end)]


class ScaledSteps:
    """Scales the learning rate of every parameter group by ``scale`` during each
    ``optimizer.step()`` and restores the exact rates after it (torch's optimizer step hooks), so
    that schedulers and checkpoints never see the scaled rate. Used for
    :attr:`PruningSchedule.lr_warmup_steps`; ``set(optimizers, 1.0)`` removes the hooks."""

    def __init__(self):
        self.scale = 1.0
        self._handles: dict[int, tuple[torch.optim.Optimizer, Any, Any]] = {}  # each optimizer held: ids stay unique
        self._saved: dict[int, list[float]] = {}
        self._depth: dict[int, int] = {}

    def set(self, optimizers: Sequence[torch.optim.Optimizer], scale: float) -> None:
        self.scale = float(scale)
        if self.scale == 1.0:
            self.remove()
            return
        for optimizer in optimizers:
            if id(optimizer) not in self._handles:
                self._handles[id(optimizer)] = (optimizer, optimizer.register_step_pre_hook(self._before),
                                                optimizer.register_step_post_hook(self._after))

    def remove(self) -> None:
        for _, pre, post in self._handles.values():
            pre.remove()
            post.remove()
        self._handles.clear()
        self._saved.clear()
        self._depth.clear()

    def _before(self, optimizer, args, kwargs) -> None:
        # an optimizer subclass whose step calls its parent's runs the hooks twice, nested: scale once
        key = id(optimizer)
        depth = self._depth.get(key, 0)
        self._depth[key] = depth + 1
        if depth == 0:
            self._saved[key] = [group["lr"] for group in optimizer.param_groups]
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * self.scale

    def _after(self, optimizer, args, kwargs) -> None:
        key = id(optimizer)
        self._depth[key] -= 1
        if self._depth[key] == 0:
            del self._depth[key]
            for group, lr in zip(optimizer.param_groups, self._saved.pop(key), strict=True):
                group["lr"] = lr
