"""A LightningModule, data and a Trainer shared by the tests that run ``fit`` (not from the package)."""

import contextlib
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

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

    optimizer_class = torch.optim.SGD

    def configure_optimizers(self):
        opt = self.optimizer_class(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)}


class RecordingSGD(torch.optim.SGD):
    """SGD that records the rate of its first group as its step reads it (after the step pre-hooks).
    A subclass whose step calls its parent's runs torch's step hooks twice, nested (both classes'
    steps are wrapped once an SGD was made): the rate must still be scaled once."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.seen = []

    def step(self, closure=None):
        self.seen.append(self.param_groups[0]["lr"])
        return super().step(closure)


class RecordingClassifier(TinyClassifier):
    """TinyClassifier whose optimizer records the rate each step takes (StepLR as before)."""

    optimizer_class = RecordingSGD


class NetClassifier(pl.LightningModule):
    """Cross-entropy training of any network ``net`` (SGD, momentum)."""

    def __init__(self, net, lr=0.05):
        super().__init__()
        self.net = net
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def loader(n=64, seed=0, shuffle=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 16, 16, generator=gen)
    y = torch.randint(0, 5, (n,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=shuffle)


def trainer(tmp_path, callbacks, max_epochs, **kw):
    """A quiet CPU Trainer; it writes checkpoints only where the test asks for them (a
    ModelCheckpoint among ``callbacks``), so fits that share ``tmp_path`` do not warn."""
    kw.setdefault("enable_checkpointing", any(isinstance(c, ModelCheckpoint) for c in callbacks))
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                      default_root_dir=tmp_path, callbacks=callbacks, **kw)


def stopped_fit(schedule, max_epochs):
    """Around a fit of ``max_epochs`` that a test stops before the schedule's last prune, to resume
    it later: the callback's warning that the model would not be fully pruned, expected."""
    if not schedule.reaches_last_prune(max_epochs):
        return pytest.warns(UserWarning, match="ends before the last scheduled prune")
    return contextlib.nullcontext()


def epoch_checkpoints(dirpath, resume_from=None) -> ModelCheckpoint:
    """A checkpoint at the end of every epoch into ``dirpath``, named ``epoch=N.ckpt``; for a fit
    resumed from ``resume_from``, one that reads its state from that file's folder and writes
    nothing, so that Lightning neither warns that the folder changed nor that it is not empty."""
    if resume_from is not None:
        return ModelCheckpoint(dirpath=Path(resume_from).parent, save_top_k=0, every_n_epochs=1, filename="{epoch}")
    return ModelCheckpoint(dirpath=dirpath, save_top_k=-1, every_n_epochs=1, filename="{epoch}")


class Snapshot(Callback):
    """Records the parameters at the start of every epoch."""

    def __init__(self):
        self.params = {}

    def on_train_epoch_start(self, trainer, pl_module):
        self.params[trainer.current_epoch] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, expected_model):
    final, expected = weights(model), weights(expected_model)
    assert final.keys() == expected.keys()
    for k in expected:
        assert torch.equal(final[k], expected[k]), k
