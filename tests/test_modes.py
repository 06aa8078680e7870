"""Train/eval modes given back after the engine's own passes, submodule by submodule."""

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_ssr import Pruning, PruningSchedule
from lightning_ssr.modes import eval_mode
from tests.lit import TinyClassifier, loader, trainer
from tests.nets import SmallResidualCNN


def test_eval_mode_gives_each_submodule_its_own_mode_back_also_after_an_error():
    net = SmallResidualCNN()
    net.bn_a.eval()  # a part the user keeps frozen while the rest trains
    with eval_mode(net):
        assert not any(m.training for m in net.modules())
    assert not net.bn_a.training and all(m.training for m in net.modules() if m is not net.bn_a)
    with pytest.raises(RuntimeError), eval_mode(net):
        raise RuntimeError("a failed trace")
    assert not net.bn_a.training and net.bn_b.training and net.training


class CountingTrain(nn.Sequential):
    calls = 0

    def train(self, mode=True):
        CountingTrain.calls += 1
        return super().train(mode)


def test_eval_mode_calls_a_models_own_train_when_it_gives_the_mode_back():
    model = CountingTrain(nn.Linear(2, 2))
    with eval_mode(model):
        pass
    assert CountingTrain.calls == 2 and model.training  # eval(), then train(True)


class FrozenBNClassifier(TinyClassifier):
    """The user's module keeps one BatchNorm's statistics frozen (eval mode) while it trains."""

    def on_train_start(self):
        self.backbone.bn_a.eval()


@pytest.mark.parametrize("method", ["l1", "ssr_l20"])
def test_a_submodule_the_user_froze_stays_frozen_through_a_pruning_fit(tmp_path, method):
    pl.seed_everything(0)
    model = FrozenBNClassifier()
    schedule = PruningSchedule(sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=2, stop_early=False)
    cb = Pruning(method=method, target={"macs": 0.5}, schedule=schedule, verbose=False)
    trainer(tmp_path, [cb], schedule.total_epochs).fit(model, loader())
    bn = model.backbone.bn_a
    assert cb.events and bn.num_features < 12  # pruned, and the kept channels' statistics untouched
    assert not bn.training and model.backbone.bn_b.training
    assert torch.equal(bn.running_mean, torch.zeros(bn.num_features))
    assert torch.equal(bn.running_var, torch.ones(bn.num_features))
