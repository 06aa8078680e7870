import pytest
import torch

from lightning_ssr.flops import count_cost
from lightning_ssr.groups import find_channel_groups
from lightning_ssr.models import build_model
from lightning_ssr.rates import keep_counts_from_rates, parse_rates, prune_by_rates
from tests.nets import SmallResidualCNN


def test_parse_rate_expressions():
    assert parse_rates("[0.]+[0.6,0.]*2") == [0.0, 0.6, 0.0, 0.6, 0.0]
    assert parse_rates("[0.3]*2+[0.8]") == [0.3, 0.3, 0.8]
    assert parse_rates("2*[0.1]") == [0.1, 0.1]
    assert parse_rates([0.5, 0]) == [0.5, 0.0]
    assert len(parse_rates("[0.]+[0.6,0.]*9+[0.6,0.]*9+[0.4,0.]*9")) == 55


@pytest.mark.parametrize("expr", ["__import__('os').system('true')", "[0.1]*2.5", "[1.0]", "[-0.1]",
                                  "[0.1]+0.2", "[0.1", "open('x')"])
def test_unsafe_or_invalid_expressions_are_refused(expr):
    with pytest.raises(ValueError):
        parse_rates(expr)


# Published FLOPs (MACs) and parameters, FSM README; tolerance 1.5%.
PUBLISHED = [
    ("vgg16_bn", None, 313.7e6, 14.98e6),
    ("vgg16_bn", "[0.3]*5+[0.35]*3+[0.8]*5", 106.8e6, 2.05e6),
    ("vgg16_bn", "[0.5]*8+[0.8]*5", 59.7e6, 1.41e6),
    ("resnet56", None, 125.5e6, 0.85e6),
    ("resnet56", "[0.]+[0.6,0.]*9+[0.6,0.]*9+[0.4,0.]*9", 61.7e6, 0.48e6),
]


@pytest.mark.parametrize("name,rates,flops,params", PUBLISHED)
def test_structure_reproduces_published_flops_and_params(name, rates, flops, params):
    model = build_model(name, in_channels=3, num_classes=10, input_size=32)
    x = torch.zeros(2, 3, 32, 32)
    if rates:
        prune_by_rates(model, x, rates)
    cost = count_cost(model, x)
    assert cost.macs == pytest.approx(flops, rel=0.015)
    assert cost.params == pytest.approx(params, rel=0.015)


def test_coupled_layers_with_different_rates_are_refused():
    model = SmallResidualCNN()
    x = torch.randn(2, 3, 16, 16)
    groups = find_channel_groups(model, x)
    # conv order: stem, conv_a, conv_b, dw, mix; stem and conv_b write the same residual stream
    with pytest.raises(ValueError, match="share their output channels"):
        keep_counts_from_rates(model, groups, [0.5, 0.0, 0.25])
    keep = keep_counts_from_rates(model, groups, [0.5, 0.5, 0.5, 0.5])
    assert keep[next(g.name for g in groups if "stem" in g.out_modules)] == 4


def test_rates_on_unprunable_layers_are_refused():
    model = build_model("resnet20", in_channels=3, num_classes=10, input_size=32)
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match="cannot be pruned"):
        prune_by_rates(model, x, [0.5])  # the stem writes the type-A residual stream
    with pytest.raises(ValueError, match="rates given"):
        prune_by_rates(model, x, [0.0] * 30)


@pytest.mark.parametrize("criterion", ["l1", "l2", "bn_scale", "random"])
def test_criteria_choose_which_channels_survive(criterion):
    model = build_model("vgg16_bn", in_channels=3, num_classes=10, input_size=32)
    with torch.no_grad():
        model.features[0].weight[5:].mul_(0.01)  # channels 5.. of the first conv are tiny
        model.features[1].weight[5:].mul_(0.01)
    plan = prune_by_rates(model, torch.zeros(2, 3, 32, 32), [0.9], criterion=criterion)
    kept = plan.kept["features.0"]
    assert len(kept) == 7  # ceil(64 * 0.1)
    if criterion != "random":
        assert set(range(5)) <= set(kept)
    with pytest.raises(ValueError, match="unknown importance criterion"):
        prune_by_rates(build_model("lenet5"), torch.zeros(1, 1, 28, 28), [0.5], criterion="magic")
