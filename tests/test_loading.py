"""One-call loading of pruned checkpoints, with torch.load(weights_only=True)."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_ssr import PlanMismatchError, PrunedCheckpointMixin, PruningSchedule, SSRPruning, load_pruned
from lightning_ssr.models import build_model
from tests.nets import SmallResidualCNN
from tests.test_callback import _loader, _trainer


class LitNet(PrunedCheckpointMixin, pl.LightningModule):
    def __init__(self, width: int = 3):
        super().__init__()
        self.save_hyperparameters()
        self.net = SmallResidualCNN(in_channels=width)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    pl.seed_everything(0)
    model = LitNet()
    cb = SSRPruning(regularizer="l20", flops_budget=0.4,
                    schedule=PruningSchedule(admm_epochs=1, finetune_epochs=1, update_every_n_steps=2))
    ckpt = ModelCheckpoint(dirpath=tmp, save_last=True)
    _trainer(tmp, [cb, ckpt], 2).fit(model, _loader())
    x = torch.randn(3, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    return tmp / "last.ckpt", x, expected


def test_checkpoint_loads_with_weights_only(pruned_checkpoint):
    path, _, _ = pruned_checkpoint
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["pruning_plan"]["format_version"] == 1


def test_load_from_checkpoint_rebuilds_the_pruned_shapes(pruned_checkpoint):
    path, x, expected = pruned_checkpoint
    model = LitNet.load_from_checkpoint(path, weights_only=True).eval()
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_load_pruned_into_a_fresh_module_or_the_bare_network(pruned_checkpoint):
    path, x, expected = pruned_checkpoint
    module = load_pruned(LitNet(), path).eval()
    net = load_pruned(SmallResidualCNN(), path).eval()  # "net." prefix stripped
    with torch.no_grad():
        assert torch.equal(module(x), expected)
        assert torch.equal(net(x), expected)


def test_a_checkpoint_from_another_architecture_is_refused(pruned_checkpoint):
    path, _, _ = pruned_checkpoint
    other = build_model("lenet5")
    with pytest.raises(PlanMismatchError, match="another architecture"):
        load_pruned(other, path)
    assert other.conv1.out_channels == 20


def test_resuming_fit_from_a_checkpoint_of_another_architecture_is_refused(pruned_checkpoint, tmp_path):
    path, _, _ = pruned_checkpoint

    class OtherNet(LitNet):
        def __init__(self):
            super().__init__()
            self.net = build_model("lenet5", in_channels=3, num_classes=5, input_size=16)

    cb = SSRPruning(schedule=PruningSchedule(admm_epochs=1, finetune_epochs=1))
    with pytest.raises(PlanMismatchError, match="another architecture"):
        _trainer(tmp_path, [cb], 3).fit(OtherNet(), _loader(), ckpt_path=path)


def test_two_optimizers_are_refused_with_a_clear_error(tmp_path):
    class TwoOptimizers(LitNet):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(Exception, match="manual optimization"):
        _trainer(tmp_path, [SSRPruning()], 1).fit(TwoOptimizers(), _loader())
