"""Property test: random small CNNs built from conv, BN, ReLU, pooling, residual add, concat,
depthwise conv and linear layers; prune random groups; the rebuilt model must run, have
consistent shapes, and compute what the masked model computes."""

import collections
import copy
import random
import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from lightning_ssr.structure import UnsupportedLayerError, align_blocks, find_channel_groups, prune_channels
from lightning_ssr.structure.surgery import mask_channels
from tests.nets import random_keep_masks
from tests.numerics import assert_same_function

BLOCKS = ("conv", "residual", "concat", "depthwise", "pool")


class ConvBN(nn.Module):
    def __init__(self, cin, cout, k=3, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x)))


class Residual(nn.Module):
    def __init__(self, c, mid):
        super().__init__()
        self.a = ConvBN(c, mid)
        self.b = nn.Conv2d(mid, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn(self.b(self.a(x))))


class Concat(nn.Module):
    def __init__(self, cin, c1, c2):
        super().__init__()
        self.left = ConvBN(cin, c1, 1)
        self.right = ConvBN(cin, c2, 3)

    def forward(self, x):
        return torch.cat([self.left(x), self.right(x)], 1)


class RandomCNN(nn.Module):
    def __init__(self, spec, widths, in_channels=3, num_classes=4, size=16):
        super().__init__()
        layers, c = [ConvBN(in_channels, widths[0])], widths[0]
        for i, kind in enumerate(spec):
            w = widths[(i + 1) % len(widths)]
            if kind == "conv":
                layers.append(ConvBN(c, w))
                c = w
            elif kind == "residual":
                layers.append(Residual(c, w))
            elif kind == "concat":  # a concat feeding a conv (see test_concat_into_flatten_is_refused)
                layers += [Concat(c, w, widths[i % len(widths)]), ConvBN(w + widths[i % len(widths)], w, 1)]
                c = w
            elif kind == "depthwise":
                layers += [ConvBN(c, c, 3, groups=c), ConvBN(c, w, 1)]
                c = w
            elif kind == "pool" and size > 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * size * size, widths[-1]), nn.ReLU(),
                                  nn.Linear(widths[-1], num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def _random_prune_setup(model, groups, seed):
    """Keep a random half of every group (at least one channel): the kept indices, the masked
    model, and a copy of it for the rebuild."""
    by_name = {g.name: g for g in groups}  # grouped convolutions: the same positions in every block
    masks = {name: align_blocks(by_name[name], keep) for name, keep in random_keep_masks(groups, seed).items()}
    kept = {name: torch.nonzero(keep).flatten().tolist() for name, keep in masks.items()}
    masked = copy.deepcopy(model)
    mask_channels(dict(masked.named_parameters()), groups, masks)
    return kept, masked, copy.deepcopy(masked)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(st.sampled_from(BLOCKS), min_size=1, max_size=5),
       widths=st.lists(st.integers(2, 8), min_size=2, max_size=4),
       seed=st.integers(0, 2**16))
def test_random_cnns_rebuild_exactly(spec, widths, seed):
    torch.manual_seed(seed)
    model = RandomCNN(spec, widths)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.normal_(m.bias, 0, 0.1)
    x = torch.randn(2, 3, 16, 16)
    groups = find_channel_groups(model, x)
    kept, masked, rebuilt = _random_prune_setup(model, groups, seed)
    prune_channels(rebuilt, x, kept)
    masked.eval()
    rebuilt.eval()
    for name, module in rebuilt.named_modules():  # shapes are consistent with the modules' attributes
        if isinstance(module, nn.Conv2d):
            assert module.weight.shape[:2] == (module.out_channels, module.in_channels // module.groups), name
        if isinstance(module, nn.BatchNorm2d):
            assert module.weight.shape[0] == module.running_mean.shape[0] == module.num_features, name
        if isinstance(module, nn.Linear):
            assert module.weight.shape == (module.out_features, module.in_features), name
    assert rebuilt.eval()(x).shape == (2, 4)
    assert_same_function(masked, rebuilt, x)


def test_concat_into_flatten_is_refused_and_the_model_is_restored():
    """torch-pruning couples the two halves of a concat that feeds flatten -> linear (spatial
    > 1) as if they were one tensor; the rebuild notices and restores the model."""
    torch.manual_seed(0)
    model = RandomCNN(["concat"], [2, 2])
    model.features = model.features[:2]  # drop the 1x1 conv after the concat
    model.head[1] = nn.Linear(4 * 16 * 16, 2)
    x = torch.randn(2, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        before_out = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    groups = find_channel_groups(model, x)
    with pytest.raises(UnsupportedLayerError, match="restored unchanged") as refused:
        prune_channels(model, x, {g.name: [0] for g in groups})
    # both branches are named: one named alone, ignoring it left the other unprunable, a second refusal (probe)
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and n.startswith("features.1.")}
    (first, second), = re.findall(r"The channels of '([\w.]+)' \(one group with '([\w.]+)': ignoring one keeps all "
                                  r"whole\)", str(refused.value))
    assert {first, second} == convs, (first, second, convs)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        assert torch.equal(model(x), before_out)


# ------------------------------------------------- ops the graph may mishandle
class Shuffle(nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        return x.view(n, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Slice(nn.Module):
    def __init__(self, keep):
        super().__init__()
        self.keep = keep

    def forward(self, x):
        return x[:, : self.keep]


RISKY = ("conv", "shuffle", "slice", "grouped", "concat", "depthwise", "residual")


class RiskyCNN(nn.Module):
    """Random stacks that include channel shuffles, slices, grouped convs and, optionally, a
    concat feeding flatten -> linear."""

    def __init__(self, spec, width, concat_head):
        super().__init__()
        layers, c = [ConvBN(3, width)], width
        for kind in spec:
            if kind == "conv":
                layers.append(ConvBN(c, width))
                c = width
            elif kind == "shuffle":
                layers += [ConvBN(c, 2 * width), Shuffle(2)]
                c = 2 * width
            elif kind == "slice":
                layers += [ConvBN(c, width + 2), Slice(width)]
                c = width
            elif kind == "grouped":
                layers += [ConvBN(c, 2 * width), ConvBN(2 * width, 2 * width, 3, groups=2)]
                c = 2 * width
            elif kind == "concat":
                layers += [Concat(c, width, width), ConvBN(2 * width, width, 1)]
                c = width
            elif kind == "depthwise":
                layers += [ConvBN(c, c, 3, groups=c), ConvBN(c, width, 1)]
                c = width
            elif kind == "residual":
                layers.append(Residual(c, width))
        layers.append(nn.MaxPool2d(4))  # 8 -> 2
        if concat_head:
            layers.append(Concat(c, width, width))
            c = 2 * width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * 4, 4))

    def forward(self, x):
        return self.head(self.features(x))


def _risky_case(spec, width, concat_head, seed) -> str:
    """One risky model: ``"refused"`` at set-up, ``"refused at the rebuild"`` (the model restored),
    or ``"rebuilt"`` (and then it must compute the masked model's function exactly)."""
    from lightning_ssr.structure.surgery import dry_run

    torch.manual_seed(seed)
    model = RiskyCNN(spec, width, concat_head).eval()
    # (8 x 8: torch-pruning maps a reshape's indices one by one, seconds a group at 16 x 16)
    x = torch.randn(2, 3, 8, 8)
    try:
        groups = find_channel_groups(model, x)
        dry_run(copy.deepcopy(model), x, groups, {g.name: 1 for g in groups})
    except UnsupportedLayerError:
        return "refused"
    kept, masked, rebuilt = _random_prune_setup(model, groups, seed)
    try:
        prune_channels(rebuilt, x, kept)
    except UnsupportedLayerError as err:  # a refusal must leave the model exactly as it was
        assert "restored unchanged" in str(err)
        assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), masked.state_dict().values()))
        return "refused at the rebuild"
    fresh = torch.randn(3, 3, 8, 8)  # not the input the engine checked with
    assert_same_function(masked, rebuilt, fresh)
    return "rebuilt"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=st.lists(st.sampled_from(RISKY), min_size=1, max_size=4), width=st.integers(2, 6),
       concat_head=st.booleans(), seed=st.integers(0, 2**16))
def test_risky_ops_are_rebuilt_exactly_or_refused_at_setup_never_silently_wrong(spec, width, concat_head, seed):
    _risky_case(spec, width, concat_head, seed)


def test_the_risky_property_rebuilds_models_not_only_refuses_them():
    """The property above would pass without checking anything if every model were refused: on
    fixed draws from the same space, several are rebuilt (and checked), and refusals do occur."""
    rng = random.Random(0)
    outcomes = collections.Counter(
        _risky_case([rng.choice(RISKY) for _ in range(rng.randint(1, 4))], rng.randint(2, 6), rng.random() < 0.5,
                    rng.randint(0, 2**16)) for _ in range(12))
    assert outcomes["rebuilt"] >= 3 and outcomes["refused"] >= 1, outcomes
