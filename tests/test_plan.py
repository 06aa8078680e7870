import copy
import io

import pytest
import torch
from torch import nn

from lightning_ssr.groups import UnsupportedLayerError, find_channel_groups
from lightning_ssr.models import build_model
from lightning_ssr.plan import (
    PlanMismatchError,
    PruningPlan,
    apply_plan,
    plan_from_support,
    prune_channels,
    remap_optimizer,
)
from tests.nets import SmallResidualCNN, randomize_bn

CASES = [
    ("lenet5", lambda: build_model("lenet5"), (4, 1, 28, 28)),
    ("small_residual", SmallResidualCNN, (4, 3, 16, 16)),
]


def _random_support(groups, seed):
    gen = torch.Generator().manual_seed(seed)
    support = {}
    for g in groups:
        keep = torch.zeros(g.size, dtype=torch.bool)
        count = int(torch.randint(1, g.size, (1,), generator=gen))
        keep[torch.randperm(g.size, generator=gen)[:count]] = True
        support[g.name] = keep
    return support


def _masked_copy(model, groups, support):
    masked = copy.deepcopy(model)
    live = {n: p.data for n, p in masked.named_parameters()}
    for g in groups:
        g.scale_(live, support[g.name].double())
    return masked


def _max_rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("name,factory,shape", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rebuilt_model_equals_masked_model(name, factory, shape, seed):
    torch.manual_seed(seed)
    model = factory()
    randomize_bn(model, seed)
    x = torch.randn(*shape)
    groups = find_channel_groups(model, x)
    support = _random_support(groups, seed)
    masked = _masked_copy(model, groups, support).eval()
    rebuilt = copy.deepcopy(masked)
    prune_channels(rebuilt, x, {g.name: torch.nonzero(support[g.name]).flatten().tolist() for g in groups})
    rebuilt.eval()
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        assert _max_rel_diff(rebuilt(x), masked(x)) <= 1e-5


def test_residual_groups_couple_the_whole_stream():
    model = SmallResidualCNN()
    groups = {g.name: g for g in find_channel_groups(model, torch.randn(2, 3, 16, 16))}
    stream = next(g for g in groups.values() if "stem" in g.out_modules)
    # the residual stream: stem, bn0, conv_b, bn_b and the depthwise conv are pruned together
    assert {"stem", "bn0", "conv_b", "bn_b", "dw"} <= set(stream.out_modules)
    assert dict(stream.consumers) == {"conv_a": 1, "mix": 2}  # concat: both halves go to mix
    # the classifier's outputs are never a prunable group
    assert all("fc2" not in g.out_modules for g in groups.values())


@pytest.mark.parametrize("name,factory,shape", CASES, ids=[c[0] for c in CASES])
def test_plan_round_trip_through_a_weights_only_checkpoint(name, factory, shape):
    torch.manual_seed(0)
    model = factory()
    randomize_bn(model)
    x = torch.randn(*shape)
    groups = find_channel_groups(model, x)
    plan = plan_from_support(x.shape, _random_support(groups, 3), groups)
    prune_channels(model, x, plan.kept, plan.sizes)
    buffer = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "pruning_plan": plan.to_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    fresh = factory()
    apply_plan(fresh, ckpt["pruning_plan"])
    fresh.load_state_dict(ckpt["state_dict"])
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_a_plan_for_another_architecture_is_refused_and_the_model_is_untouched():
    lenet = build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    groups = find_channel_groups(lenet, x)
    plan = plan_from_support(x.shape, _random_support(groups, 0), groups)
    other = SmallResidualCNN(in_channels=1)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(PlanMismatchError, match="another architecture"):
        apply_plan(other, plan)
    after = other.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("bad", [[0, 0, 1], [5, 1], [-1, 2], [0, 20], []])
def test_out_of_range_or_malformed_indices_are_refused(bad):
    model = build_model("lenet5")
    plan = PruningPlan(input_shape=[1, 1, 28, 28], kept={"conv1": bad}, sizes={"conv1": 20})
    with pytest.raises(PlanMismatchError):
        apply_plan(model, plan)
    assert model.conv1.out_channels == 20


def test_wrong_format_version_is_refused():
    with pytest.raises(PlanMismatchError, match="format_version"):
        PruningPlan.from_dict({"format_version": 99, "input_shape": [1, 1, 28, 28], "groups": []})


def test_plans_compose():
    first = PruningPlan([1, 1, 28, 28], {"conv1": [1, 3, 5, 7]}, {"conv1": 20})
    second = PruningPlan([1, 1, 28, 28], {"conv1": [0, 2], "fc1": [4]}, {"conv1": 4, "fc1": 500})
    both = first.then(second)
    assert both.kept == {"conv1": [1, 5], "fc1": [4]}
    assert both.sizes == {"conv1": 20, "fc1": 500}


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=1e-2),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
], ids=["sgd", "nesterov", "adam", "adamw"])
def test_optimizer_state_is_sliced_onto_the_rebuilt_parameters(make_opt):
    torch.manual_seed(0)
    model = SmallResidualCNN()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    opt = make_opt(model.parameters())
    for _ in range(3):  # build up optimizer state
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    groups = find_channel_groups(model, x)
    support = _random_support(groups, 1)
    kept = {g.name: torch.nonzero(support[g.name]).flatten().tolist() for g in groups}
    reference = copy.deepcopy(model)
    old_state = copy.deepcopy(opt.state_dict())

    old = dict(model.named_parameters())
    remap = prune_channels(model, x, kept)
    assert remap_optimizer(opt, old, dict(model.named_parameters()), remap) == len(remap)

    # the reference: a model built small from the start, with the state sliced by hand
    prune_channels(reference, x, kept)
    ref_opt = make_opt(reference.parameters())
    ref_state = ref_opt.state_dict()
    ref_state["state"] = {}
    for i, (n, p) in enumerate(reference.named_parameters()):
        st = {k: (v.flatten()[remap[n].flatten()].view(p.shape) if n in remap and torch.is_tensor(v) and v.dim() > 0
                  else v) for k, v in old_state["state"][i].items()}
        ref_state["state"][i] = {k: v.clone() for k, v in st.items()}
    ref_opt.load_state_dict(ref_state)

    for m, o in ((model, opt), (reference, ref_opt)):
        o.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()
        o.step()
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.allclose(p, q, atol=1e-7, rtol=0), n


def test_unsupported_layer_gets_a_clear_error_naming_it():
    class Scaler(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(c))
            self.proj = nn.Linear(c, c)  # gives the module parameters of its own kind

        def forward(self, x):
            return x * self.gain.view(1, -1, 1, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.scale = Scaler(4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.scale(self.conv(x)).mean((2, 3)))

    with pytest.raises(UnsupportedLayerError, match="ignored_layers"):
        find_channel_groups(Net(), torch.randn(1, 1, 8, 8))
