"""A plain image-classification LightningModule, used by the CLI (users bring their own)."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ..checkpoint import CheckpointReadError, PrunedCheckpointMixin
from ..schedule import end_cosines
from ..validation import check_flag, check_number, some_names

#: the checkpoint key of the teacher's weights (a distilled run): a resume distills from the teacher
#: its run started with, also where the network given to :meth:`ImageClassifier.set_teacher` differs
TEACHER_CHECKPOINT_KEY = "lightning_ssr_teacher"


class ImageClassifier(PrunedCheckpointMixin, pl.LightningModule):
    """Cross-entropy training of ``model`` with SGD (momentum) and an optional cosine LR schedule.

    With ``distill > 0`` the loss is ``(1 - distill) * cross-entropy + distill * T^2 *
    KL(teacher || model)`` on the logits softened by ``temperature`` T (Hinton et al. 2015),
    against a teacher given with :meth:`set_teacher` (the CLI's: the dense network): a pruned
    network fine-tuned towards its dense original's outputs.
    """

    def __init__(self, model: nn.Module, num_classes: int = 10, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 5e-4, nesterov: bool = False, cosine: bool = True, distill: float = 0.0,
                 temperature: float = 4.0):
        super().__init__()
        check_number("module", "lr", lr, low=0.0, low_open=True)
        check_number("module", "distill (the weight of the distillation loss)", distill, low=0.0, high=1.0)
        check_number("module", "temperature", temperature, low=0.0, low_open=True)
        check_number("module", "momentum", momentum, low=0.0, high=1.0, high_open=True)
        check_number("module", "weight_decay", weight_decay, low=0.0)
        for name, flag in (("nesterov", nesterov), ("cosine", cosine)):
            check_flag(name, flag, "module")
        if nesterov and momentum == 0:
            raise ValueError("module: nesterov=true needs momentum > 0 (SGD's Nesterov momentum)")
        self.save_hyperparameters(ignore=["model"])
        self.model = model
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        #: set by a resume whose checkpoint's teacher differs from the one given: what it did
        self.teacher_restored: str | None = None

    def set_teacher(self, teacher: nn.Module, checkpointed: bool = True) -> None:
        """The network whose outputs ``distill`` pulls towards: frozen, in eval mode, and kept out
        of this module's parameters and state dict. With ``checkpointed`` a distilled run's
        checkpoints hold its weights apart (``TEACHER_CHECKPOINT_KEY``), and a resume distills from
        those: where the teacher given here differs (a recipe's dense fine-tune trained again for
        another length), the resumed run says so in :attr:`teacher_restored` and goes on from the
        teacher it started with. ``checkpointed=False``: a teacher the run keeps elsewhere (the
        command's cached dense model, which its checkpoints name), not written into each one."""
        teacher = teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self.__dict__["_teacher"] = teacher  # not a submodule: no optimizer, no state_dict entry
        self.__dict__["_teacher_checkpointed"] = checkpointed

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        teacher = self.__dict__.get("_teacher")
        if self.hparams.distill > 0 and teacher is not None and self.__dict__.get("_teacher_checkpointed", True):
            checkpoint[TEACHER_CHECKPOINT_KEY] = {k: v.detach().clone() for k, v in teacher.state_dict().items()}
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # (before the plan rebuilds this module: a refusal leaves it as it was)
        restored = self._checkpoint_teacher(checkpoint)
        super().on_load_checkpoint(checkpoint)
        if restored is not None:
            self.set_teacher(restored)
            self.teacher_restored = ("the resumed run distills from the teacher its checkpoint holds (the one its "
                                     "run started with); the teacher given now differs (trained again with other "
                                     "settings?)")
            rank_zero_info(f"{type(self).__name__}: {self.teacher_restored}")

    def _checkpoint_teacher(self, checkpoint: dict) -> nn.Module | None:
        """For a fit resumed from ``checkpoint``: a copy of the teacher given holding the teacher the
        checkpoint's run distilled from, where the two differ; ``None`` where they do not, where
        there is none, or outside a fit (test, validate and predict use no teacher)."""
        saved, teacher = checkpoint.get(TEACHER_CHECKPOINT_KEY), self.__dict__.get("_teacher")
        trainer = getattr(self, "_trainer", None)
        fitting = trainer is not None and trainer.state.fn == TrainerFn.FITTING
        if saved is None or teacher is None or self.hparams.distill <= 0 or not fitting:
            return None  # (no teacher now: on_fit_start says what to do; distill=0: none is used)
        mine = teacher.state_dict()
        if mine.keys() == saved.keys() and all(torch.equal(mine[k].cpu(), saved[k].cpu()) for k in mine):
            return None  # the same teacher: nothing to do
        restored = copy.deepcopy(teacher)  # (the network given stays as it is)
        try:
            restored.load_state_dict(saved)
        except RuntimeError as err:
            other = sorted(k for k in set(mine) & set(saved) if mine[k].shape != saved[k].shape)
            said = [f"{what} {some_names(keys, 4)}" for what, keys in (
                ("only the one given has", sorted(set(mine) - set(saved))),
                ("only the checkpoint's has", sorted(set(saved) - set(mine))),
                ("of other shapes (checkpoint's vs given):",
                 [f"{k} {tuple(saved[k].shape)} vs {tuple(mine[k].shape)}" for k in other]))
                if keys]
            source = f"ckpt_path={trainer.ckpt_path}" if trainer.ckpt_path else "the checkpoint"
            raise CheckpointReadError(
                f"{source} holds the teacher of a distilled run whose layers differ from the teacher given to "
                f"set_teacher ({type(teacher).__name__}; {'; '.join(said)}): resume with the teacher network of that "
                "run, or start a new run without the checkpoint") from err
        return restored

    def on_fit_start(self) -> None:
        teacher = self.__dict__.get("_teacher")
        if self.hparams.distill > 0 and teacher is None:
            raise ValueError(f"module.distill={self.hparams.distill} needs a teacher network: call "
                             "set_teacher(dense_network) before fit, or set module.distill=0")
        if teacher is not None:
            teacher.to(self.device)  # once: the trainer has placed this module by now

    def on_train_start(self) -> None:
        # a resume with another max_epochs (schedule.finetune_epochs): the cosine ends at the new end
        for sched, unit, end in end_cosines(self.trainer):
            rank_zero_info(f"{type(self).__name__}: the cosine learning-rate schedule of the checkpoint now ends "
                           f"at {unit} {end} (the fit's end); the rate is {sched.get_last_lr()[0]:.3g}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self.log("train_loss", loss, prog_bar=True)
        return self.with_distillation(loss, x, logits)

    def with_distillation(self, loss: torch.Tensor, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``loss`` blended with the distillation term on ``x`` (whose outputs are ``logits``):
        ``(1 - distill) * loss + distill * KD``; ``loss`` itself without distillation."""
        kd = self.distillation(x, logits)
        return loss if kd is None else (1 - self.hparams.distill) * loss + self.hparams.distill * kd

    def distillation(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor | None:
        """``T^2 * KL(teacher || model)`` on ``x``, whose outputs here are ``logits``, both softened
        by the temperature T; ``None`` without distillation (``distill=0`` or no teacher)."""
        teacher = self.__dict__.get("_teacher")
        if self.hparams.distill <= 0 or teacher is None:
            return None
        t = self.hparams.temperature
        with torch.no_grad():
            target = F.log_softmax(teacher(x) / t, dim=1)
        kd = F.kl_div(F.log_softmax(logits / t, dim=1), target, reduction="batchmean", log_target=True) * t * t
        self.log("train_distill", kd)
        return kd

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_acc(self(x), y)
        self.log("val_acc", self.val_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc(self(x), y)
        self.log("test_acc", self.test_acc)

    def predict_step(self, batch, batch_idx):
        """The logits of a batch's images: an ``(images, labels)`` batch, as the data modules give
        (Lightning's default passed the pair to ``forward``: probe), or images alone."""
        return self(batch[0] if isinstance(batch, (list, tuple)) else batch)

    def param_groups(self) -> list[dict]:
        """The optimizer's parameter groups (one: every parameter; a subclass may split them)."""
        return [{"params": list(self.parameters())}]

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.SGD(self.param_groups(), lr=hp.lr, momentum=hp.momentum,
                              weight_decay=hp.weight_decay, nesterov=hp.nesterov)
        if not hp.cosine or not self.trainer.max_epochs:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
