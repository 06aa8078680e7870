import pytest
import torch

from lightning_ssr.budget import allocate_keep_counts, resolve_lam
from lightning_ssr.flops import count_cost
from lightning_ssr.groups import assign_channel_costs, estimate_macs, find_channel_groups
from lightning_ssr.models import build_model
from lightning_ssr.plan import prune_channels
from tests.nets import SmallResidualCNN


def _lenet():
    model = build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    cost = count_cost(model, x)
    groups = find_channel_groups(model, x)
    assign_channel_costs(groups, cost)
    return model, x, cost, groups


def test_lenet5_matches_the_published_size():
    _, _, cost, _ = _lenet()
    assert cost.macs == 2_293_000  # paper: 2.3M
    assert cost.params == 431_080  # paper: 0.43M


def test_channel_costs_include_producer_and_consumer_macs():
    _, _, _, groups = _lenet()
    by_name = {g.name: g for g in groups}
    assert by_name["conv1"].macs_per_channel == 25 * 24 * 24 + 50 * 25 * 8 * 8
    assert by_name["conv2"].macs_per_channel == 20 * 25 * 8 * 8 + 16 * 500
    assert by_name["fc1"].macs_per_channel == 800 + 10


@pytest.mark.parametrize("factory,shape", [(lambda: build_model("lenet5"), (2, 1, 28, 28)),
                                           (SmallResidualCNN, (2, 3, 16, 16))])
@pytest.mark.parametrize("budget", [0.05, 0.3, 0.7])
def test_flops_budget_is_met_and_the_estimate_is_exact(factory, shape, budget):
    model = factory()
    x = torch.randn(*shape)
    cost = count_cost(model, x)
    groups = find_channel_groups(model, x)
    keep = allocate_keep_counts(groups, cost, flops_budget=budget)
    estimate = estimate_macs(groups, cost, keep)
    prune_channels(model, x, {g.name: list(range(keep[g.name])) for g in groups})
    assert count_cost(model, x).macs == pytest.approx(estimate)
    assert estimate <= budget * cost.macs


def test_filter_budget_and_min_channels():
    _, _, cost, groups = _lenet()
    keep = allocate_keep_counts(groups, cost, filter_budget=0.1)
    assert sum(keep.values()) <= 0.1 * 570
    with pytest.raises(ValueError, match="too small"):
        allocate_keep_counts(groups, cost, flops_budget=0.001, min_keep=5)
    with pytest.raises(ValueError, match="exactly one"):
        allocate_keep_counts(groups, cost)


def test_lam_scaling():
    _, _, _, groups = _lenet()
    flat = resolve_lam(groups, 0.1, "none")
    assert set(flat.values()) == {0.1}
    scaled = resolve_lam(groups, 0.1, "flops")
    assert scaled["conv1"] > scaled["conv2"] > scaled["fc1"]
    mean = sum(g.size * scaled[g.name] for g in groups) / sum(g.size for g in groups)
    assert mean == pytest.approx(0.1)
    explicit = resolve_lam(groups, {"conv1": 0.4, "conv2": 0.15, "fc1": 0.02})
    assert explicit == {"conv1": 0.4, "conv2": 0.15, "fc1": 0.02}
    with pytest.raises(ValueError, match="missing"):
        resolve_lam(groups, {"conv1": 0.4})


def test_max_pruning_ratio_caps_every_layer():
    from lightning_ssr.budget import min_keep_counts

    _, _, cost, groups = _lenet()
    floor = min_keep_counts(groups, min_channels=1, max_pruning_ratio=0.75)
    assert floor == {"conv1": 5, "conv2": 13, "fc1": 125}
    keep = allocate_keep_counts(groups, cost, flops_budget=0.3, min_keep=floor)
    assert all(keep[n] >= floor[n] for n in floor)
    with pytest.raises(ValueError, match="max_pruning_ratio"):
        min_keep_counts(groups, max_pruning_ratio=0.0)
