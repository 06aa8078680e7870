"""Shapes beyond plain chains and residual streams: DenseNet concat streams (norms over part of a
concat), transposed convolutions with U-Net skip concats. Masked == rebuilt, numerically."""

import copy

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ssr import Pruning, PruningSchedule, count_cost, prune_oneshot
from lightning_ssr.cost import estimate_macs
from lightning_ssr.structure import align_blocks, find_channel_groups, plan_from_support, prune_channels
from lightning_ssr.structure.groups import UnsupportedLayerError
from lightning_ssr.structure.surgery import mask_channels
from lightning_ssr.targets import min_keep_counts
from tests.lit import NetClassifier, trainer
from tests.nets import SmallDenseNet, SmallResNeXt, SmallSEConcat, SmallUNet, random_keep_masks, randomize_bn
from tests.numerics import assert_same_function

X = torch.randn(2, 3, 16, 16)


@pytest.mark.parametrize("factory", [SmallDenseNet, SmallUNet, SmallResNeXt, SmallSEConcat],
                         ids=["densenet", "unet", "resnext", "se-over-concat"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_masked_and_rebuilt_agree(factory, seed):
    torch.manual_seed(seed)
    model = factory()
    randomize_bn(model, seed)
    groups = find_channel_groups(model, X)
    support = {g.name: align_blocks(g, m) for g, m in zip(groups, random_keep_masks(groups, seed).values())}
    masked = copy.deepcopy(model)
    mask_channels(dict(masked.named_parameters()), groups, support)
    rebuilt = copy.deepcopy(masked)
    plan = plan_from_support(X.shape, support, groups)
    prune_channels(rebuilt, X, plan.kept, plan.sizes)
    assert_same_function(masked, rebuilt, X)
    # the cost estimate of the kept counts is the rebuilt model's count (transposed conv included)
    keep = {g.name: int(support[g.name].sum()) for g in groups}
    assert count_cost(rebuilt, X).macs == pytest.approx(estimate_macs(groups, count_cost(model, X), keep))


def test_densenet_groups_include_the_norms_over_the_concat_at_their_offsets():
    model = SmallDenseNet()
    groups = {g.name: g for g in find_channel_groups(model, X)}
    layer1 = groups["layer1.2"]  # channels 8..11 of the stream after the first concat
    bn_rows = {s.param: s.index.flatten().tolist() for s in layer1.slices if "weight" in s.param}
    assert bn_rows["layer2.0.weight"] == [8, 9, 10, 11] and bn_rows["transition.0.weight"] == [8, 9, 10, 11]


def test_a_gate_over_a_concat_is_cut_with_each_branch_at_its_offset():
    """The gate's layer spans both branches: taken as the root, each branch held only part of its
    channels, and the model was refused ("slices of unequal width") without naming a layer."""
    groups = {g.name: g for g in find_channel_groups(SmallSEConcat(), X)}
    assert set(groups) == {"b1.0", "b2.0", "se_reduce", "conv"}
    for name, rows in (("b1.0", list(range(6))), ("b2.0", list(range(6, 12)))):
        gate = {s.param: s.index.flatten().tolist() for s in groups[name].slices}
        assert gate["se_expand.weight"] == gate["se_expand.bias"] == rows


def test_transposed_conv_macs_are_counted():
    model = SmallUNet()
    cost = count_cost(model, X)
    # ConvTranspose2d(16, 8, 2, stride 2) on a 8x8 input: every input element meets 8 * 2 * 2 weights
    assert cost.layers["up"].macs == 16 * 8 * 8 * 8 * 2 * 2


def test_a_unet_prunes_to_a_macs_target_through_the_engine_entry_point():
    torch.manual_seed(0)
    model = SmallUNet()
    dense = count_cost(model, X)
    prune_oneshot(model, X, {"macs": 0.5})
    assert count_cost(model, X).macs <= 0.5 * dense.macs
    assert model(X).shape == (2, 2, 16, 16)


def test_a_padding_shortcut_is_still_refused_by_name():
    class Pad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(8)
            self.b = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            return self.b(self.bn(nn.functional.pad(self.a(x), (0, 0, 0, 0, 2, 2))))

    with pytest.raises(UnsupportedLayerError, match="'a'.*ignored_layers"):
        find_channel_groups(Pad(), X)


def test_densenet_trains_through_the_pruning_callback(tmp_path):
    pl.seed_everything(0)
    data = DataLoader(TensorDataset(torch.randn(32, 3, 16, 16), torch.randint(0, 5, (32,))), batch_size=8)
    module = NetClassifier(SmallDenseNet())
    schedule = PruningSchedule(sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=2)
    cb = Pruning(method="ssr_l20", target={"macs": 0.5}, schedule=schedule, verbose=False)
    trainer(tmp_path, [cb], schedule.total_epochs).fit(module, data)
    assert cb.result.pruned["macs"] <= 0.5 * cb.result.dense["macs"]
    assert module(torch.randn(2, 3, 16, 16)).shape == (2, 5)


def test_grouped_convolutions_split_their_groups_into_blocks_pruned_alike():
    model = SmallResNeXt()
    groups = {g.name: g for g in find_channel_groups(model, X)}
    assert groups["reduce"].blocks == 4 and groups["grouped"].blocks == 4  # in side and out side
    mask = torch.tensor([1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)  # 6 kept, unevenly
    aligned = align_blocks(groups["reduce"], mask)
    assert aligned.view(4, 4).sum(1).tolist() == [2, 2, 2, 2]  # ceil(6 / 4) per block
    assert all(torch.equal(aligned.view(4, 4)[0], row) for row in aligned.view(4, 4))
    assert aligned.view(4, 4)[0].tolist() == [True, True, False, False]  # the positions most blocks keep
    # keep counts are whole blocks, and a target through the engine entry point rebuilds correctly
    floor = min_keep_counts(list(groups.values()))
    assert floor["reduce"] == 4
    dense = count_cost(model, X)
    prune_oneshot(model, X, {"macs": 0.6})
    assert model.grouped.in_channels % 4 == 0 and model.grouped.out_channels % 4 == 0
    assert count_cost(model, X).macs <= 0.6 * dense.macs


def test_resnext_trains_through_the_pruning_callback(tmp_path):
    pl.seed_everything(0)
    data = DataLoader(TensorDataset(torch.randn(32, 3, 16, 16), torch.randint(0, 5, (32,))), batch_size=8)
    module = NetClassifier(SmallResNeXt())
    schedule = PruningSchedule(sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=2)
    cb = Pruning(method="ssr_l21", method_kwargs={"lam": 0.05}, target={"macs": 0.5}, schedule=schedule,
                 verbose=False)
    trainer(tmp_path, [cb], schedule.total_epochs).fit(module, data)
    assert module.net.grouped.in_channels % 4 == 0 and module.net.grouped.out_channels % 4 == 0
    assert cb.result.pruned["macs"] <= 0.5 * cb.result.dense["macs"]
