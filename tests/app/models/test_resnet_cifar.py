"""The CIFAR ResNets' type-A shortcut as a fixed placement convolution: the same function as zero
padding, free in the cost counts, frozen, and prunable on both of its residual streams."""

import copy

import torch
import torch.nn.functional as F

from lightning_ssr import count_cost, prune_oneshot
from lightning_ssr.app.models import build_model
from lightning_ssr.app.models.resnet_cifar import ZeroPadShortcut
from lightning_ssr.structure import find_channel_groups, plan_from_support, prune_channels
from lightning_ssr.structure.surgery import mask_channels
from tests.nets import randomize_bn
from tests.numerics import assert_same_function

X = torch.randn(2, 3, 32, 32)


def test_the_shortcut_is_subsampling_plus_zero_padding():
    shortcut = ZeroPadShortcut(16, 32)
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(shortcut(x), F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))
    assert not shortcut.weight.requires_grad


def test_the_streams_are_prunable_and_the_shortcut_follows_them():
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=3, num_classes=10, input_size=32)
    randomize_bn(model)
    groups = {g.name: g for g in find_channel_groups(model, X)}
    stem = next(g for g in groups.values() if "conv1" in g.out_modules)
    assert ("layer2.0.shortcut", 1) in stem.consumers  # stage 1's stream feeds the shortcut's columns
    stage2 = next(g for g in groups.values() if "layer2.0.shortcut" in g.out_modules)  # rows of stage 2's
    masks = {g.name: torch.ones(g.size, dtype=torch.bool) for g in groups.values()}
    masks[stem.name][[0, 5, 9]] = False
    masks[stage2.name][[3, 8, 20, 31]] = False  # 8 and 20 receive stage 1's channels 0 and 12
    masked = copy.deepcopy(model)
    mask_channels(dict(masked.named_parameters()), list(groups.values()), masks)
    rebuilt = copy.deepcopy(masked)
    plan = plan_from_support(X.shape, masks, list(groups.values()))
    prune_channels(rebuilt, X, plan.kept, plan.sizes)
    assert rebuilt.layer2[0].shortcut.weight.shape == (28, 13, 1, 1)
    assert_same_function(masked, rebuilt, X)
    # the placement is still one-hot: each kept input channel lands on one output channel at most
    w = rebuilt.layer2[0].shortcut.weight.flatten(1)
    assert set(w.unique().tolist()) <= {0.0, 1.0} and bool((w.sum(0) <= 1).all()) and bool((w.sum(1) <= 1).all())


def test_the_shortcut_costs_nothing_and_a_target_can_prune_the_streams():
    model = build_model("resnet56", in_channels=3, num_classes=10, input_size=32)
    dense = count_cost(model, X)
    assert "layer2.0.shortcut" not in dense.layers
    assert dense.params == sum(p.numel() for n, p in model.named_parameters() if "shortcut" not in n)
    prune_oneshot(model, X, {"macs": 0.5})
    assert model.conv1.out_channels < 16  # the stage-1 stream was pruned too
    assert count_cost(model, X).macs <= 0.5 * dense.macs


def test_a_checkpoint_from_before_the_placement_form_loads():
    model = build_model("resnet20", in_channels=3, num_classes=10, input_size=32)
    state = {k: v for k, v in model.state_dict().items() if "shortcut" not in k}  # as saved before
    fresh = build_model("resnet20", in_channels=3, num_classes=10, input_size=32)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.layer2[0].shortcut.weight, ZeroPadShortcut.placement(16, 32))
