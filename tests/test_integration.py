"""The callback alongside Lightning's own callbacks and loggers, frozen sub-modules, a network
under any attribute name, and the refusal of torch.compile'd modules."""

import copy
import csv

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lightning_ssr import PLAN_CHECKPOINT_KEY, Pruning, PruningSchedule, SSRPruning, load_pruned
from tests.lit import loader
from tests.nets import SmallResidualCNN

SCHEDULE = PruningSchedule(sparsify_epochs=2, finetune_epochs=2, update_every_n_steps=2, stop_early=False)


class Validated(pl.LightningModule):
    """The network sits under an unusual attribute name; part of it can be frozen."""

    def __init__(self, freeze_stem=False):
        super().__init__()
        self.the_network_itself = SmallResidualCNN()
        if freeze_stem:
            for p in self.the_network_itself.conv_a.parameters():
                p.requires_grad_(False)

    def forward(self, x):
        return self.the_network_itself(x)

    def training_step(self, batch, batch_idx):
        loss = F.cross_entropy(self(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=1e-2)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_works_with_lightnings_callbacks_and_loggers(tmp_path):
    pl.seed_everything(0)
    model = Validated()
    ssr = SSRPruning(regularizer="l20", flops_budget=0.5, schedule=SCHEDULE)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_last=True, save_top_k=-1)
    trainer = pl.Trainer(
        max_epochs=SCHEDULE.total_epochs, accelerator="cpu", devices=1, default_root_dir=tmp_path,
        logger=CSVLogger(tmp_path, name="logs"), log_every_n_steps=1, enable_model_summary=False,
        callbacks=[ssr, ckpt, EarlyStopping(monitor="val_loss", patience=10), LearningRateMonitor(),
                   RichProgressBar()])
    trainer.fit(model, loader(), loader(n=32, seed=1))
    assert [e["epoch"] for e in ssr.events] == [SCHEDULE.prune_epoch()]
    # the step-interval LR schedule went on through the rebuild: 16 steps of gamma 0.9
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.9 ** 16)
    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"pruning/rho", "pruning/primal_residual", "pruning/relative_primal_residual", "pruning/dual_residual",
            "pruning/regularizer", "pruning/macs", "pruning/params", "pruning/filters/the_network_itself.conv_a",
            "lr-AdamW"} <= logged
    assert not any(k.startswith("ssr/") for k in logged)
    # the logged size after the rebuild is the pruned model's
    macs = [float(row["pruning/macs"]) for row in rows if row.get("pruning/macs")]
    assert macs and macs[-1] == ssr.result.pruned["macs"]
    # and so is each layer's last logged width (it held the sparsify phase's support: probe)
    widths = [float(row["pruning/filters/the_network_itself.conv_a"]) for row in rows
              if row.get("pruning/filters/the_network_itself.conv_a")]
    assert widths[-1] == model.the_network_itself.conv_a.out_channels
    # the last checkpoint carries the plan and reloads into a fresh module
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert last[PLAN_CHECKPOINT_KEY] == ssr.plan.to_dict()
    fresh = load_pruned(Validated(), last).eval()
    model.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_frozen_submodules_stay_frozen_and_unchanged(tmp_path):
    pl.seed_everything(0)
    model = Validated(freeze_stem=True)
    frozen_before = model.the_network_itself.conv_a.weight.detach().clone()
    ssr = SSRPruning(regularizer="l20", filter_budget=0.5, schedule=SCHEDULE)
    with pytest.warns(UserWarning, match=r"the_network_itself.conv_a is frozen \(requires_grad=False\) and may "
                                         r"lose filters: what it keeps stays as it is and cannot adapt to the loss. "
                                         r"To keep frozen layers whole, pass them in ignored_layers"):
        pl.Trainer(max_epochs=SCHEDULE.total_epochs, accelerator="cpu", devices=1, logger=False,
                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                   callbacks=[ssr]).fit(model, loader(), loader(seed=1))
    assert sum("is frozen" in w for w in ssr.result.warnings) == 1
    conv_a = model.the_network_itself.conv_a
    assert not conv_a.weight.requires_grad
    # conv_a lost filters (its own group) and input channels (the stream), but what is left is untouched
    kept_out = ssr.plan.kept["the_network_itself.conv_a"]
    stream = next(n for n in ssr.plan.kept if n.endswith(("stem", "conv_b", "dw")))
    kept_in = ssr.plan.kept[stream]
    assert torch.equal(conv_a.weight.detach(), frozen_before[kept_out][:, kept_in])


def _compiled_in_place(part: str) -> pl.LightningModule:
    model = Validated()
    (model if part == "module" else model.the_network_itself).compile()
    return model


def _compiled_wrapped_part() -> pl.LightningModule:
    model = Validated()
    model.the_network_itself = torch.compile(model.the_network_itself)
    return model


class CompiledInConfigureModel(Validated):
    """Compiled where Lightning lets a module build itself, after the callbacks' setup."""

    def configure_model(self):
        self.the_network_itself = torch.compile(self.the_network_itself)


class CompiledInSetup(Validated):
    def setup(self, stage):
        self.the_network_itself.compile()


def _compiled_forward() -> pl.LightningModule:
    model = Validated()
    model.the_network_itself.forward = torch.compile(model.the_network_itself.forward)
    return model


@pytest.mark.parametrize(("make", "named"), [
    (lambda: torch.compile(Validated()), "the Validated itself"), (lambda: _compiled_in_place("module"),
                                                                   "the Validated itself"),
    (lambda: _compiled_in_place("network"), "the_network_itself"), (_compiled_wrapped_part, "the_network_itself"),
    (CompiledInConfigureModel, "the_network_itself"), (CompiledInSetup, "the_network_itself"),
    (_compiled_forward, "the_network_itself")],
    ids=["wrapped", "module_in_place", "network_in_place", "network_wrapped", "in_configure_model", "in_setup",
         "forward"])
def test_compiled_modules_are_refused_before_the_first_step(tmp_path, make, named):
    """In place, ``module.compile()`` keeps the module's class: a compiled network trained its whole
    sparsify phase, then the rebuild failed in Dynamo with advice about channel shuffles. Compiled in
    ``configure_model()`` or ``setup()`` (after this callback's setup), it failed at the first batch
    in Dynamo, naming neither; a compiled ``forward`` was refused as "a plan for another
    architecture" (probe)."""
    model = make()
    before = copy.deepcopy(model.state_dict())
    trainer = pl.Trainer(max_epochs=SCHEDULE.total_epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, default_root_dir=tmp_path, enable_progress_bar=False,
                         callbacks=[SSRPruning(schedule=SCHEDULE)])
    with pytest.raises(MisconfigurationException, match=r"compiled module \(torch.compile\(module\), "
                                                        r"module.compile\(\), or a compiled forward\) cannot follow; "
                                                        rf"compiled here: {named}\. "):
        trainer.fit(model, loader(), loader(seed=1))
    assert trainer.global_step == 0
    after = {k.replace("_orig_mod.", ""): v for k, v in model.state_dict().items()}  # (compiled in configure_model)
    assert after.keys() == {k.replace("_orig_mod.", "") for k in before}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items() if k in before)
    assert all(torch.equal(v, after[k.replace("_orig_mod.", "")]) for k, v in before.items())


class KeptFromCompiling(nn.Module):
    """A part that torch.compiler.disable keeps out of compilation (Dynamo marks it as it marks a
    compiled function), beside a TorchScript loss."""

    @torch.compiler.disable
    def forward(self, x):
        return x


class NotCompiled(Validated):
    def __init__(self):
        super().__init__()
        self.aux = KeptFromCompiling()
        self.loss = torch.jit.script(nn.CrossEntropyLoss())

    def forward(self, x):
        return self.the_network_itself(self.aux(x))


def test_a_forward_kept_from_compiling_and_a_scripted_module_are_not_taken_for_compiled(tmp_path):
    """The compiled-forward check refused the first as compiled and failed with an AttributeError on
    the second (review): both prune."""
    pl.seed_everything(0)
    model = NotCompiled()
    pruning = SSRPruning(regularizer="l20", flops_budget=0.5, schedule=SCHEDULE, verbose=False)
    pl.Trainer(max_epochs=SCHEDULE.total_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
               default_root_dir=tmp_path, enable_progress_bar=False, enable_model_summary=False,
               callbacks=[pruning]).fit(model, loader(), loader(seed=1))
    assert pruning.result is not None and pruning.result.status == "ok"


def test_the_methods_update_metrics_reach_the_logger_at_its_interval(tmp_path):
    """Updates every 3 steps, the logger every 4 (Lightning writes step metrics every
    log_every_n_steps): the latest update's values are in each write of the sparsify phase
    (Lightning keeps a step metric until it is logged again), and in none after the prune."""
    pl.seed_everything(0)
    schedule = PruningSchedule(sparsify_epochs=3, finetune_epochs=1, update_every_n_steps=3)
    ssr = Pruning("ssr_l20", target={"macs": 0.5}, schedule=schedule, verbose=False)
    trainer = pl.Trainer(max_epochs=schedule.total_epochs, accelerator="cpu", devices=1, default_root_dir=tmp_path,
                         logger=CSVLogger(tmp_path, name="logs"), log_every_n_steps=4, enable_model_summary=False,
                         enable_progress_bar=False, enable_checkpointing=False, callbacks=[ssr])
    trainer.fit(Validated(), loader(n=256), loader(n=32, seed=1))
    with open(trainer.logger.log_dir + "/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    prune_step = ssr.events[0]["step"]
    written = sorted({int(r["step"]) for r in rows if r.get("train_loss") and int(r["step"]) < prune_step})
    with_residual = sorted({int(r["step"]) for r in rows if r.get("pruning/primal_residual")})
    assert len(written) == 12 and with_residual == written  # and none after the prune, which ends the updates
