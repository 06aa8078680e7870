"""Every use of Lightning's private API, in one place.

The callback relies on a few attributes Lightning does not document. Each is reached only through
a function here, with the reason no public API serves. :func:`check` looks for all of them when a
fit starts, so that a Lightning release that moves one fails at once with a message naming the
attribute and the version, rather than somewhere in the middle of a fit. Tested with the
Lightning versions in :data:`TESTED` (the suite checks the installed one).
"""

from __future__ import annotations

import contextlib

import lightning
import torch
from lightning.pytorch import callbacks as lightning_callbacks
from lightning.pytorch.trainer.states import RunningStage

#: the Lightning versions (major.minor) this module has been tested with
TESTED = ("2.6",)


class LightningInternalsError(RuntimeError):
    """A private Lightning attribute the callback relies on is missing from the installed version."""


def _missing(what: str, why: str) -> LightningInternalsError:
    return LightningInternalsError(
        f"lightning_ssr relies on Lightning's private {what} ({why}), which Lightning {lightning.__version__} "
        f"does not have; lightning_ssr is tested with Lightning {', '.join(TESTED)}.x. Install one of those "
        "(pip install 'lightning==2.6.*') or report this with the versions.")


def _trainer_attrs(trainer) -> list[tuple[object, str, str, str]]:
    return [
        (trainer, "_checkpoint_connector", "Trainer._checkpoint_connector", _WHY_CHECKPOINT),
        (getattr(trainer, "_checkpoint_connector", None), "_loaded_checkpoint",
         "_CheckpointConnector._loaded_checkpoint", _WHY_CHECKPOINT),
        (trainer.fit_loop.epoch_loop.val_loop, "setup_data", "fit_loop.epoch_loop.val_loop.setup_data", _WHY_VAL),
    ]


#: a resumed fit(ckpt_path=...) loads the weights before any callback hook sees the checkpoint, so
#: the model's pruned shapes must be rebuilt from the checkpoint Lightning is loading at that moment
_WHY_CHECKPOINT = "the checkpoint being restored, read while its weights load, to rebuild the pruned shapes first"
#: the validation data are only set up by Lightning when validation first runs; a method that checks
#: a change on validation data before then (FSM's compensation) asks for them early
_WHY_VAL = "to set the validation data up before Lightning's first validation, for FSM's compensation check"
#: LightningModule.log checks which hook is running; requesting the loaders sets that name, which
#: must be put back or the next self.log in training_step is refused
_WHY_FX = "the name of the running hook, put back after the validation data are set up"
#: a WeightAveraging callback (EMAWeightAveraging) averages into a copy of the module it made at
#: set-up and exposes no way to rebuild it: the rebuild gives that copy the pruned shapes too
_WHY_AVERAGE = "the copy of the model a WeightAveraging callback averages into, rebuilt with the model at a prune"
#: the default validation score (FSM's compensation check) sees each batch as validation_step does
_WHY_BATCH = "the batch hooks (on_before_batch_transfer) a validation batch goes through before validation_step"
_WHY_COMPILE = "whether the LightningModule was torch.compile'd, which a mid-fit rebuild cannot follow"


def check(trainer, pl_module) -> None:
    """Every private attribute reached here exists in the installed Lightning; else an error naming it."""
    for owner, attr, what, why in _trainer_attrs(trainer):
        if owner is None or not hasattr(owner, attr):
            raise _missing(what, why)
    for attr, why in (("_current_fx_name", _WHY_FX), ("_compiler_ctx", _WHY_COMPILE),
                      ("_on_before_batch_transfer", _WHY_BATCH)):
        if not hasattr(pl_module, attr):
            raise _missing(f"LightningModule.{attr}", why)
    for cb in _weight_averaging(trainer):
        for attr in ("_average_model", "_copy_average_to_current"):
            if not hasattr(cb, attr):
                raise _missing(f"{type(cb).__name__}.{attr}", _WHY_AVERAGE)


def _weight_averaging(trainer) -> list:
    cls = getattr(lightning_callbacks, "WeightAveraging", None)  # Lightning 2.5+
    return [cb for cb in trainer.callbacks if cls is not None and isinstance(cb, cls)]


def end_with_averages(trainer, pl_module) -> None:
    """Give ``pl_module`` the average of each WeightAveraging callback of the fit, as its
    ``on_train_end`` does; for a fit whose training loop had nothing left to run (resumed from
    the checkpoint of its last step), where Lightning calls no ``on_train_end``."""
    for cb in _weight_averaging(trainer):
        if cb._average_model is not None:
            cb._copy_average_to_current(pl_module)


def averaged_models(trainer) -> list[torch.optim.swa_utils.AveragedModel]:
    """The ``AveragedModel`` of each WeightAveraging callback of the fit (EMAWeightAveraging), once
    its set-up has made one: its ``.module`` is a copy of the LightningModule."""
    return [cb._average_model for cb in _weight_averaging(trainer) if cb._average_model is not None]


def loaded_checkpoint(trainer) -> dict:
    """The checkpoint ``fit(ckpt_path=...)`` is restoring (empty when none)."""
    return getattr(trainer._checkpoint_connector, "_loaded_checkpoint", None) or {}


def resumed_epoch(checkpoint: dict) -> tuple[int | None, bool]:
    """The epoch a fit resumed from ``checkpoint`` starts in, and whether that is exact: the fit
    loop's saved progress says an epoch whose training had ended (a checkpoint written at the end
    of a training epoch: the fit goes on with the next one). Otherwise (mid-epoch, or after the
    epoch's validation) Lightning decides from its batch loops at the restore; the saved ``epoch``
    is then a lower bound. ``(None, False)`` without either."""
    try:
        progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]
        processed, completed = int(progress["processed"]), int(progress["completed"])
    except (KeyError, TypeError, ValueError):
        processed = completed = None
    if processed is not None and processed > completed:
        return processed, True
    epoch = checkpoint.get("epoch")
    return (epoch, False) if isinstance(epoch, int) else (None, False)


def epoch_progress(trainer) -> dict | None:
    """Where a fit's training epoch stands as a checkpoint is saved: ``{"epoch", "batches" (its
    training batches done), "of" (its batches)}``; ``None`` outside a fit, or with batches that
    are not counted. A checkpoint saved mid-epoch (as ``max_steps`` stops a fit) is resumed by
    Lightning at the next epoch's start, its epoch's last batches untrained."""
    if trainer is None or not getattr(trainer, "training", False):
        return None
    of = trainer.num_training_batches
    done = getattr(getattr(getattr(trainer.fit_loop, "epoch_loop", None), "batch_progress", None), "current", None)
    if done is None or not isinstance(of, int):
        return None
    return {"epoch": int(trainer.current_epoch), "batches": int(done.completed), "of": int(of)}


def set_up_validation_data(trainer, pl_module) -> None:
    """Have Lightning set the fit's validation dataloaders up now (they are otherwise set up at the
    first validation); the running hook's name is kept, so that logging goes on working."""
    hook = pl_module._current_fx_name
    try:
        trainer.fit_loop.epoch_loop.val_loop.setup_data()
    finally:
        pl_module._current_fx_name = hook


def validation_batch(trainer, pl_module, batch, dataloader_idx: int):
    """``batch`` as Lightning's validation loop hands it to ``validation_step``: the precision
    plugin's conversion (``64-true`` makes float inputs float64), ``on_before_batch_transfer``, the
    move to the device and ``on_after_batch_transfer`` (the module's, or the datamodule's where it
    overrides them), run as in validation (:func:`validating`)."""
    with validating(trainer):
        batch = trainer.precision_plugin.convert_input(batch)
        batch = pl_module._on_before_batch_transfer(batch, dataloader_idx=dataloader_idx)
        return trainer.strategy.batch_to_device(batch, dataloader_idx=dataloader_idx)


@contextlib.contextmanager
def validating(trainer):
    """The trainer's stage set to validating, then put back: a batch hook that augments only
    ``if self.trainer.training`` (Lightning's own pattern) leaves a validation batch as it is, also
    when the pruning engine scores one during training."""
    stage = trainer.state.stage
    trainer.state.stage = RunningStage.VALIDATING
    try:
        yield
    finally:
        trainer.state.stage = stage


def compiled_modules(pl_module) -> list[str]:
    """The names of the module's compiled parts (``""``: the module itself): compiled wrapped,
    ``torch.compile(module)``, in place, ``module.compile()`` (which keeps the module and compiles
    its call), or by its ``forward`` (``torch.compile`` of the method); empty where none is."""
    found = [""] if getattr(pl_module, "_compiler_ctx", None) else []
    found += [name for name, m in pl_module.named_modules() if isinstance(m, torch._dynamo.eval_frame.OptimizedModule)
              or getattr(m, "_compiled_call_impl", None) is not None or _compiled_forward(m)]
    return list(dict.fromkeys(found))


def _compiled_forward(module) -> bool:
    """Whether ``module``'s forward is compiled: set on the module (``m.forward =
    torch.compile(m.forward)``) or on its class (``@torch.compile`` over ``def forward``). Not a
    forward ``torch.compiler.disable`` keeps out of compilation (Dynamo marks both alike), nor a
    TorchScript module's."""
    if isinstance(module, torch.jit.ScriptModule):
        return False
    forward = module.__dict__.get("forward")
    if forward is None:
        try:
            forward = getattr(type(module), "forward", None)
        except (AttributeError, RuntimeError):  # (a descriptor that refuses the class)
            return False
    return hasattr(forward, "_torchdynamo_orig_callable") and not getattr(forward, "_torchdynamo_disable", False)


def early_stopping_stopped(callback) -> bool:
    """Whether this EarlyStopping stopped the fit: its ``stopping_reason`` (Lightning 2.6: a
    threshold or a non-finite metric stops it in epoch 0, its stopped epoch and count at 0), or its
    stopped epoch (under DDP, set on every rank, where the reason is set only on the rank that
    decided), else (before 2.6) its count at its patience."""
    reason = getattr(callback, "stopping_reason", None)
    if callback.stopped_epoch > 0:
        return True
    if reason is not None:
        return getattr(reason, "name", "NOT_STOPPED") != "NOT_STOPPED"
    return callback.wait_count >= callback.patience


def ddp_start_method(strategy) -> str:
    """How a DDPStrategy starts its processes (``"popen"``: subprocesses running the script)."""
    return getattr(strategy, "_start_method", "popen")


def rewrap_ddp(trainer, pl_module) -> None:
    """After a rebuild the DistributedDataParallel wrapper holds the old parameters (its reducer
    fails on the next step): wrap the rebuilt module again."""
    trainer.strategy.model = pl_module
    trainer.strategy.configure_ddp()
