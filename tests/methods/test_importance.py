"""Channel importance on hand-built examples: each score ranks the channels as its definition says."""

import pytest
import torch
from torch import nn

from lightning_ssr.app.models import build_model
from lightning_ssr.methods.importance import (
    IMPORTANCES,
    bn_scale,
    first_order_taylor,
    get_importance,
    l1_norm,
    l2_norm,
    random_scores,
)
from lightning_ssr.structure import find_channel_groups
from tests.nets import SmallResidualCNN


class Hand(nn.Module):
    """conv (3 filters of 4 weights each, no bias) -> BN -> 1x1 conv -> linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 2, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.mix = nn.Conv2d(3, 2, 1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            # channel 0: [1, 1, 1, 1] (L1 4, L2^2 4); channel 1: [3, 0, 0, 0] (L1 3, L2^2 9);
            # channel 2: [0.1] * 4 (L1 0.4, L2^2 0.04)
            self.conv.weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0], [0.1] * 4]).view(3, 1, 2, 2))
            self.bn.weight.copy_(torch.tensor([0.5, -0.1, 2.0]))  # |gamma|: 0.5, 0.1, 2.0
            self.bn.bias.zero_()

    def forward(self, x):
        return self.fc(self.mix(torch.relu(self.bn(self.conv(x)))).mean((2, 3)))


def _group(model, x, root):
    return next(g for g in find_channel_groups(model, x) if g.name == root)


@pytest.fixture
def hand():
    model = Hand()
    return model, _group(model, torch.randn(1, 1, 4, 4), "conv")


def _ranking(scores):
    return torch.sort(scores, descending=True, stable=True).indices.tolist()


def test_l1_sums_the_producer_filters(hand):
    model, group = hand
    scores = l1_norm(group, model)
    assert torch.allclose(scores, torch.tensor([4.0, 3.0, 0.4], dtype=torch.float64))
    assert _ranking(scores) == [0, 1, 2]


def test_l1_of_a_frozen_producer_whose_norm_trains_sums_its_filters():
    """A frozen conv before a trainable BatchNorm scored zero for every filter (its weight is not
    among the group's trainable slices), so the prune kept its first filters (probe)."""
    model = Hand()
    model.conv.requires_grad_(False)
    group = _group(model, torch.randn(1, 1, 4, 4), "conv")
    assert [s.param for s in group.fixed] == ["conv.weight"]
    assert torch.allclose(l1_norm(group, model), torch.tensor([4.0, 3.0, 0.4], dtype=torch.float64))


def test_l2_is_the_group_norm_of_the_whole_output_side(hand):
    model, group = hand
    scores = l2_norm(group, model)
    # filter, BN gamma and BN beta (0) of each channel
    expected = torch.tensor([4.0 + 0.25, 9.0 + 0.01, 0.04 + 4.0], dtype=torch.float64).sqrt()
    assert torch.allclose(scores, expected)
    assert _ranking(scores) == [1, 0, 2]


def test_bn_scale_ranks_by_gamma_and_falls_back_to_l1_without_bn(hand):
    model, group = hand
    scores = bn_scale(group, model)
    assert torch.allclose(scores, torch.tensor([0.5, 0.1, 2.0], dtype=torch.float64))
    assert _ranking(scores) == [2, 0, 1]
    lenet = build_model("lenet5")
    conv1 = _group(lenet, torch.randn(1, 1, 28, 28), "conv1")
    assert torch.equal(bn_scale(conv1, lenet), l1_norm(conv1, lenet))


def test_l1_of_a_coupled_group_sums_every_producer():
    torch.manual_seed(0)
    model = SmallResidualCNN()
    group = _group(model, torch.randn(1, 3, 16, 16), "dw")  # the residual stream
    expected = sum(getattr(model, m).weight.detach().double().abs().sum((1, 2, 3)) for m in ("stem", "conv_b", "dw"))
    assert torch.allclose(l1_norm(group, model), expected)


def test_random_is_reproducible_and_depends_on_the_seed_and_the_group():
    lenet = build_model("lenet5")
    groups = {g.name: g for g in find_channel_groups(lenet, torch.randn(1, 1, 28, 28))}
    a = random_scores(groups["conv2"], lenet)
    assert torch.equal(a, random_scores(groups["conv2"], build_model("lenet5")))  # weights play no part
    assert not torch.equal(a, random_scores(groups["conv2"], lenet, seed=1))
    assert not torch.equal(a[:20], random_scores(groups["conv1"], lenet))
    assert a.shape == (50,) and bool(((a >= 0) & (a < 1)).all())
    assert len(set(a.tolist())) == 50


def test_get_importance_by_name_or_callable():
    assert set(IMPORTANCES) == {"fsm", "l1", "l2", "bn_scale", "random"}
    assert get_importance("l1") is l1_norm and get_importance("bn_scale") is bn_scale

    def mine(group, model):
        return torch.zeros(group.size)

    assert get_importance(mine) is mine
    with pytest.raises(ValueError, match=r"unknown importance 'magic'.*'bn_scale', 'fsm', 'l1', 'l2', 'random'"):
        get_importance("magic")


def test_first_order_taylor_of_a_frozen_layer_is_read_from_its_consumers_in_the_same_units():
    """A frozen layer's output side has no gradient: its channels scored zero, and an allocation by
    these values (SSR's, Taylor's) cut it to its floor first. The consumers' weights that read a
    channel give the same first-order value, ``sum a * dL/da`` over its activations: here the
    output side (conv, BN affine) and the 1x1 conv's columns, on one batch."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 5, 5)
    scores = {}
    for frozen in (False, True):
        torch.manual_seed(1)  # (the same weights both times)
        model = Hand().train()
        # BatchNorm's eps makes the conv before it scale-dependent by eps / (var + eps) (5e-4 for channel 2's
        # small weights), a real difference between the routes: without it they are one quantity
        model.bn.eps = 1e-12  # (it must be > 0 in training)
        model.conv.requires_grad_(not frozen)
        model.bn.requires_grad_(not frozen)
        group = next(g for g in find_channel_groups(model, x) if g.size == 3)
        assert bool(group.slices) is not frozen  # (frozen: its rows are the group's fixed ones)
        model(x).square().sum().backward()
        scores[frozen] = first_order_taylor(group, dict(model.named_parameters()))
    assert bool((scores[True] > 0).all())
    # float32 along two routes, each summing up to 64 products (4 images x 16 positions, through
    # BatchNorm's statistics on the output side): within 1e-4 relative, as the test below argues
    assert scores[True].tolist() == pytest.approx(scores[False].tolist(), rel=1e-4, abs=1e-12)


def test_first_order_taylor_is_the_squared_derivative_of_the_loss_along_each_channel():
    """Scaling channel c's output side (filter, BN affine) by ``a`` changes the loss at ``a = 1`` by
    ``sum g * w`` over those parameters: the score is its square, channel by channel."""
    torch.manual_seed(0)
    model = Hand().train()
    x = torch.randn(4, 1, 5, 5)
    group = next(g for g in find_channel_groups(model, x) if g.size == 3)
    params = dict(model.named_parameters())
    for p in params.values():
        p.grad = None
    assert torch.equal(first_order_taylor(group, params), torch.zeros(3, dtype=torch.float64))  # no gradients yet
    model(x).square().sum().backward()
    scores = first_order_taylor(group, params)
    for c in range(3):
        scale = torch.ones(3, requires_grad=True)
        probe = Hand().train()
        probe.load_state_dict(model.state_dict())
        w = probe.conv.weight * scale.view(3, 1, 1, 1)
        gamma, beta = probe.bn.weight * scale, probe.bn.bias * scale
        h = torch.nn.functional.batch_norm(torch.nn.functional.conv2d(x, w), None, None, gamma, beta, training=True)
        loss = probe.fc(probe.mix(torch.relu(h)).mean((2, 3))).square().sum()
        (grad,) = torch.autograd.grad(loss, scale)
        # float32 along two routes whose longest reduction is BatchNorm's over 4 images x 16 positions:
        # each derivative within about 64 * eps32 (8e-6) relative, their squares within twice that
        # each, so 4 * 64 * eps32 (3e-5) between them; 1e-4 leaves room for the other short sums
        assert scores[c].item() == pytest.approx(grad[c].item() ** 2, rel=1e-4, abs=1e-12)
