"""MACs and parameters: counted on the model, and estimated for keep counts without a rebuild."""

import pytest
import torch

from lightning_ssr.app.models import build_model
from lightning_ssr.cost import ModelCost, channel_macs, count_cost, estimate_macs, estimate_params
from lightning_ssr.structure import find_channel_groups, prune_channels
from tests.nets import SmallResidualCNN


def _lenet():
    model = build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    return model, x, count_cost(model, x), find_channel_groups(model, x)


def test_lenet5_matches_the_published_size():
    _, _, cost, _ = _lenet()
    assert cost.macs == 2_293_000  # paper: 2.3M
    assert cost.params == 431_080  # paper: 0.43M


def test_per_layer_counts_follow_the_convention():
    _, _, cost, _ = _lenet()
    layers = cost.layers
    assert list(layers) == ["conv1", "conv2", "fc1", "fc2"]
    assert layers["conv1"].macs == 20 * 24 * 24 * 1 * 5 * 5  # out elements x in/groups x kernel
    assert layers["conv2"].macs == 50 * 8 * 8 * 20 * 5 * 5
    assert layers["fc1"].macs == 800 * 500 and layers["fc2"].macs == 500 * 10
    assert layers["conv1"].params == 20 * 25 + 20  # weight and bias
    assert (layers["conv2"].in_channels, layers["conv2"].out_channels, layers["conv2"].kind) == (20, 50, "Conv2d")
    assert cost.macs == sum(layer.macs for layer in layers.values())


def test_depthwise_convs_and_batch_size_one():
    model = SmallResidualCNN()
    cost = count_cost(model, torch.randn(7, 3, 16, 16))  # per sample whatever the batch
    assert cost.layers["dw"].macs == 8 * 16 * 16 * 1 * 9  # one input channel per group
    assert cost.params == sum(p.numel() for p in model.parameters())  # BN included
    assert count_cost(model, torch.randn(1, 3, 16, 16)).macs == cost.macs


def test_counting_leaves_the_model_in_its_mode_and_without_hooks():
    model = SmallResidualCNN().train()
    count_cost(model, torch.randn(2, 3, 16, 16))
    assert model.training and all(m.training for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())
    before = model.bn0.running_mean.clone()
    count_cost(model, torch.randn(2, 3, 16, 16))
    assert torch.equal(model.bn0.running_mean, before)  # counted in eval mode: no BN statistics update


def test_model_cost_round_trips_as_plain_data():
    _, _, cost, _ = _lenet()
    data = cost.to_dict()
    assert data["macs"] == 2_293_000 and data["layers"][0]["name"] == "conv1"
    assert ModelCost.from_dict(data) == cost


def test_channel_costs_include_producer_and_consumer_macs():
    _, _, cost, groups = _lenet()
    per_channel = channel_macs(groups, cost)
    assert per_channel["conv1"] == 25 * 24 * 24 + 50 * 25 * 8 * 8
    assert per_channel["conv2"] == 20 * 25 * 8 * 8 + 16 * 500
    assert per_channel["fc1"] == 800 + 10


def test_estimates_of_the_full_model_are_its_cost():
    for model, x in ((build_model("lenet5"), torch.randn(2, 1, 28, 28)), (SmallResidualCNN(), torch.randn(2, 3, 16, 16))):
        cost = count_cost(model, x)
        groups = find_channel_groups(model, x)
        full = {g.name: g.size for g in groups}
        assert estimate_macs(groups, cost, full) == cost.macs
        assert estimate_params(model, groups, full) == cost.params


@pytest.mark.parametrize("factory,shape", [(lambda: build_model("lenet5"), (2, 1, 28, 28)),
                                           (SmallResidualCNN, (2, 3, 16, 16)),
                                           (lambda: build_model("resnet20", 3, 10, 32), (2, 3, 32, 32))],
                         ids=["lenet5", "small_residual", "resnet20"])
@pytest.mark.parametrize("seed", [0, 1])
def test_estimates_equal_the_measured_cost_after_the_rebuild(factory, shape, seed):
    torch.manual_seed(seed)
    model = factory()
    x = torch.randn(*shape)
    cost = count_cost(model, x)
    groups = find_channel_groups(model, x)
    gen = torch.Generator().manual_seed(seed)
    keep = {g.name: int(torch.randint(1, g.size + 1, (1,), generator=gen)) for g in groups}
    macs, params = estimate_macs(groups, cost, keep), estimate_params(model, groups, keep)
    prune_channels(model, x, {g.name: list(range(keep[g.name])) for g in groups})
    after = count_cost(model, x)
    assert after.macs == pytest.approx(macs, rel=1e-12)
    assert after.params == pytest.approx(params, rel=1e-12)
    assert after.macs < cost.macs
