import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_ssr import PLAN_CHECKPOINT_KEY, PruningSchedule, SSRPruning
from tests.nets import SmallResidualCNN


class TinyClassifier(pl.LightningModule):
    """A user's own LightningModule: nothing of lightning_ssr is subclassed."""

    def __init__(self, lr=0.05):
        super().__init__()
        self.backbone = SmallResidualCNN(in_channels=3, num_classes=5)
        self.lr = lr
        self.losses = []

    def forward(self, x):
        return self.backbone(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)}


def _loader(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=gen)
    y = torch.randint(0, 5, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def _trainer(tmp_path, callbacks, max_epochs, **kw):
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                      default_root_dir=tmp_path, callbacks=callbacks, **kw)


SCHEDULE = PruningSchedule(warmup_epochs=1, admm_epochs=2, finetune_epochs=2, update_every_n_steps=2,
                           stop_early=False)


class Snapshot(Callback):
    """Records the parameters at the start of every epoch."""

    def __init__(self):
        self.params = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.params[trainer.current_epoch] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def test_callback_shrinks_the_model_within_one_fit_and_keeps_training(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    dense_params = sum(p.numel() for p in model.parameters())
    cb = SSRPruning(regularizer="l20", flops_budget=0.4, rho=0.5, schedule=SCHEDULE)
    snap = Snapshot()
    trainer = _trainer(tmp_path, [cb, snap], SCHEDULE.total_epochs)
    trainer.fit(model, _loader())

    assert cb.pruned_at_epoch == SCHEDULE.prune_epoch
    assert sum(p.numel() for p in model.parameters()) < dense_params
    assert cb.summary["macs_after"] <= 0.4 * cb.summary["macs_before"]
    assert all(math.isfinite(v) for v in model.losses)
    # training continued on the small model: its parameters moved after the rebuild
    after_rebuild, final = snap.params[SCHEDULE.prune_epoch + 1], dict(model.named_parameters())
    assert all(after_rebuild[n].shape == p.shape for n, p in final.items())
    assert any(not torch.equal(after_rebuild[n], p.detach()) for n, p in final.items())
    # the optimizer steps the model's (new) parameters and the LR schedule went on
    opt = trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** (SCHEDULE.total_epochs // 2))


def test_l21_regularization_shrinks_group_norms(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = SSRPruning(regularizer="l21", lam=0.5, lam_scaling="none", rho=1.0,
                    schedule=PruningSchedule(admm_epochs=3, finetune_epochs=1, update_every_n_steps=1))
    _trainer(tmp_path, [cb], 4).fit(model, _loader())
    assert cb.pruned_at_epoch is not None
    assert any(r["after"] < r["before"] for r in cb.summary["layers"])


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stop_after", [1, 2, 4], ids=["warmup", "mid_admm", "after_rebuild"])
def test_resumed_run_restores_state_and_matches_an_uninterrupted_run(tmp_path, stop_after):
    def run(max_epochs, ckpt_path=None, dirpath=None):
        pl.seed_everything(0)
        model = TinyClassifier()
        cb = SSRPruning(regularizer="l20", flops_budget=0.4, rho=0.5, rho_growth=1.2, schedule=SCHEDULE)
        ckpt = ModelCheckpoint(dirpath=dirpath or tmp_path / "unused", save_top_k=-1, every_n_epochs=1,
                               filename="{epoch}")
        trainer = _trainer(tmp_path, [cb, ckpt], max_epochs)
        trainer.fit(model, _loader(), ckpt_path=ckpt_path)
        return model, cb

    full_model, _ = run(SCHEDULE.total_epochs)
    run(stop_after, dirpath=tmp_path / "ckpts")
    path = tmp_path / "ckpts" / f"epoch={stop_after - 1}.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("SSRPruning"))
    if stop_after <= SCHEDULE.warmup_epochs:
        assert state["aulm"] is None and PLAN_CHECKPOINT_KEY not in checkpoint
    elif stop_after <= SCHEDULE.prune_epoch:
        assert state["aulm"] is not None and PLAN_CHECKPOINT_KEY not in checkpoint
    else:
        assert state["aulm"] is None and checkpoint[PLAN_CHECKPOINT_KEY]["groups"]

    restored = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            aulm = cb.aulm
            if not restored and aulm is not None:
                restored.update(V={k: v.clone() for k, v in aulm.V.items()},
                                U={k: v.clone() for k, v in aulm.U.items()}, rho=aulm.rho)

    pl.seed_everything(0)
    model = TinyClassifier()
    cb = SSRPruning(regularizer="l20", flops_budget=0.4, rho=0.5, rho_growth=1.2, schedule=SCHEDULE)
    trainer = _trainer(tmp_path, [cb, Probe()], SCHEDULE.total_epochs)
    trainer.fit(model, _loader(), ckpt_path=path)

    if SCHEDULE.warmup_epochs < stop_after <= SCHEDULE.prune_epoch:
        assert restored["rho"] == pytest.approx(state["aulm"]["rho"])
        for name, v in state["aulm"]["V"].items():
            assert torch.equal(restored["V"][name], v)
            assert torch.equal(restored["U"][name], state["aulm"]["U"][name])
    final, expected = _weights(model), _weights(full_model)
    assert final.keys() == expected.keys()
    for k in expected:
        assert torch.equal(final[k], expected[k]), k


@pytest.mark.parametrize("kwargs,match", [
    ({"lam": -0.1}, "lam must be a finite number >= 0"),
    ({"lam": float("nan")}, "lam must be a finite number >= 0"),
    ({"lam": {"conv1": -1.0}}, "lam values"),
    ({"regularizer": "l20", "flops_budget": 1.5}, r"flops_budget .* \(0, 1\]"),
    ({"regularizer": "l20", "filter_budget": 0.0}, r"filter_budget .* \(0, 1\]"),
    ({"regularizer": "l20", "flops_budget": 0.5, "filter_budget": 0.5}, "not both"),
    ({"regularizer": "l21", "flops_budget": 0.5}, "regularizer='l20'"),
    ({"regularizer": "l1"}, "regularizer must be one of"),
    ({"rho": 0}, "rho must be a positive number"),
    ({"rho_growth": 0.5}, "rho_growth"),
    ({"rho": 1.0, "rho_max": 0.5}, "rho_max"),
    ({"min_channels": 0}, "min_channels"),
    ({"max_pruning_ratio": 0.0}, "max_pruning_ratio"),
    ({"max_pruning_ratio": 1.5}, "max_pruning_ratio"),
    ({"lam_scaling": "params"}, "lam_scaling"),
    ({"schedule": {"admm_epochs": 0}}, "admm_epochs"),
    ({"schedule": {"update_every_n_steps": 0}}, "update_every_n_steps"),
])
def test_bad_arguments_fail_with_clear_messages(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SSRPruning(**kwargs)


def test_manual_optimization_is_refused(tmp_path):
    class Manual(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = F.cross_entropy(self(batch[0]), batch[1])
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    with pytest.raises(Exception, match="automatic optimization"):
        _trainer(tmp_path, [SSRPruning()], 1).fit(Manual(), _loader())


def test_per_layer_pruning_ratio_is_capped(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = SSRPruning(regularizer="l20", filter_budget=0.1, max_pruning_ratio=0.5,
                    schedule=PruningSchedule(admm_epochs=1, finetune_epochs=0, update_every_n_steps=2))
    with pytest.raises(ValueError, match="too small"):  # 10% of the filters cannot fit the 50% cap
        _trainer(tmp_path, [cb], 1).fit(model, _loader())
    cb = SSRPruning(regularizer="l21", lam=100.0, max_pruning_ratio=0.5,
                    schedule=PruningSchedule(admm_epochs=1, finetune_epochs=0, update_every_n_steps=2))
    _trainer(tmp_path, [cb], 1).fit(TinyClassifier(), _loader())
    assert all(r["after"] >= r["before"] / 2 for r in cb.summary["layers"])


def test_layers_can_be_excluded(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = SSRPruning(regularizer="l20", filter_budget=0.5, ignored_layers=["backbone.conv_a"],
                    schedule=PruningSchedule(admm_epochs=1, finetune_epochs=0, update_every_n_steps=2))
    _trainer(tmp_path, [cb], 1).fit(model, _loader())
    assert model.backbone.conv_a.out_channels == 12
    assert model.backbone.fc1.out_features < 16
    with pytest.raises(ValueError, match="no module named"):
        _trainer(tmp_path, [SSRPruning(ignored_layers=["nope"], schedule=SCHEDULE)], 3).fit(TinyClassifier(), _loader())


def test_state_restored_but_not_yet_applied_round_trips():
    cb = SSRPruning(schedule=SCHEDULE)
    state = {"aulm": {"V": {}, "U": {}, "rho": 0.3, "num_updates": 2, "stable_updates": 0, "support": {}},
             "lam": {"a": 0.1}, "keep": None, "plan": None, "pruned_at_epoch": None, "last_update_step": 8}
    cb.load_state_dict(state)
    again = SSRPruning(schedule=SCHEDULE)
    again.load_state_dict(cb.state_dict())
    assert again.state_dict() == state
