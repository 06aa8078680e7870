"""The baseline methods (l1, random, bn_scale, ssl, taylor) on bare modules, without a Trainer:
each ranks a hand-built example as its definition says, and adds exactly its training-time term."""

import pytest
import torch
from torch import nn

from lightning_ssr.cost import channel_macs, count_cost
from lightning_ssr.methods import L1, SSL, BNScale, MethodContext, RandomPruning, Taylor, build_method, top_k_masks
from lightning_ssr.methods.importance import bn_scale as bn_scale_importance
from lightning_ssr.methods.importance import l1_norm, random_scores
from lightning_ssr.structure import find_channel_groups
from tests.numerics import assert_within_sum_bound

X = torch.randn(2, 2, 6, 6, generator=torch.Generator().manual_seed(0))


class Chain(nn.Module):
    """conv1(+bias) -> [bn1] -> relu -> conv2 -> bn2 -> relu -> mean -> fc.

    Groups: ``conv1`` (``width`` channels: conv1.weight, conv1.bias[, bn1.weight, bn1.bias]) and
    ``conv2`` (3 channels: conv2.weight, bn2.weight, bn2.bias); fc is the classifier."""

    def __init__(self, width=4, bn=True):
        super().__init__()
        self.conv1 = nn.Conv2d(2, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(width, 3, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


# the output-side parameters of each group of Chain (with BN)
SLICES = {"conv1": ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"],
          "conv2": ["conv2.weight", "bn2.weight", "bn2.bias"]}


def _context(model, keep=None, min_keep=None, ignored=()):
    groups = find_channel_groups(model, X, ignored)
    cost = count_cost(model, X)
    return MethodContext(model=model, groups=groups, cost=cost, channel_macs=channel_macs(groups, cost), keep=keep,
                         min_keep=min_keep or {g.name: 1 for g in groups}, example=X)


def _groups(ctx):
    return {g.name: g for g in ctx.groups}


def _set(param, values):
    with torch.no_grad():
        param.copy_(torch.as_tensor(values, dtype=param.dtype).reshape(param.shape))


def _filters(conv, per_channel):
    """Every weight of output channel c of ``conv`` set to ``per_channel[c]``."""
    with torch.no_grad():
        for c, v in enumerate(per_channel):
            conv.weight[c].fill_(v)


def _random_grads(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def _randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))


def _grads(model):
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _mask(values):
    return torch.tensor(values, dtype=torch.bool)


# ---------------------------------------------------------------------------------------- l1
def test_chain_has_the_groups_the_tests_assume():
    ctx = _context(Chain())
    assert {g.name: [s.param for s in g.slices] for g in ctx.groups} == SLICES
    assert all(s.index.shape[1] == 1 for g in ctx.groups for s in g.slices)


def test_l1_scores_the_producer_filters_only_and_keeps_the_largest():
    model = Chain()
    _filters(model.conv1, [0.3, -2.0, 0.1, 1.0])
    _filters(model.conv2, [0.5, 0.2, -0.7])
    # neither biases nor BN scales count for L1: make them rank the other way
    _set(model.conv1.bias, [100.0, 0.0, 50.0, 0.0])
    _set(model.bn1.weight, [9.0, 0.01, 9.0, 0.01])
    ctx = _context(model)
    groups = _groups(ctx)
    per_filter = 2 * 3 * 3  # weights in one conv1 filter
    assert torch.allclose(l1_norm(groups["conv1"], model),
                          torch.tensor([0.3, 2.0, 0.1, 1.0], dtype=torch.float64) * per_filter)
    assert torch.allclose(l1_norm(groups["conv2"], model),
                          torch.tensor([0.5, 0.2, 0.7], dtype=torch.float64) * 4 * 9)

    method = L1()
    assert method.name == "l1" and not method.sparsifies and method.needs_target
    method.setup(ctx)
    masks = method.select({"conv1": 2, "conv2": 1})
    assert masks["conv1"].tolist() == [False, True, False, True]
    assert masks["conv2"].tolist() == [False, False, True]
    masks = method.select({"conv1": 3, "conv2": 2})
    assert masks["conv1"].tolist() == [True, True, False, True]
    assert masks["conv2"].tolist() == [True, False, True]


# ------------------------------------------------------------------------------------ random
def test_random_is_reproducible_for_a_seed_and_differs_for_another():
    model = Chain(width=32)
    keep = {"conv1": 16, "conv2": 1}
    ctx = _context(model)
    first, again, other = RandomPruning(seed=3), RandomPruning(seed=3), RandomPruning(seed=4)
    for m in (first, again, other):
        m.setup(ctx)
    a = first.select(keep)
    assert int(a["conv1"].sum()) == 16 and int(a["conv2"].sum()) == 1
    b = again.select(keep)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the weights do not matter, only the seed (and the group)
    _randomize(model, 7)
    c = first.select(keep)
    assert all(torch.equal(a[k], c[k]) for k in a)
    d = other.select(keep)
    assert not torch.equal(a["conv1"], d["conv1"])
    # the masks are the top-k of the documented scores
    groups = _groups(ctx)
    expected = top_k_masks({n: random_scores(g, model, 3) for n, g in groups.items()}, keep)
    assert all(torch.equal(a[k], expected[k]) for k in a)
    s3, s4 = random_scores(groups["conv1"], model, 3), random_scores(groups["conv1"], model, 4)
    assert s3.shape == (32,) and not torch.equal(s3, s4)
    assert torch.equal(s3, random_scores(groups["conv1"], Chain(width=32), 3))
    assert first.config() == {"seed": 3} and build_method("random", seed=5).seed == 5


# ---------------------------------------------------------------------------------- bn_scale
def test_bn_scale_ranks_by_the_absolute_gamma():
    model = Chain()
    _set(model.bn1.weight, [0.5, -3.0, 0.1, 1.0])
    _set(model.bn2.weight, [-0.2, 0.3, 0.25])
    _filters(model.conv1, [10.0, 0.01, 10.0, 0.01])  # L1 would rank the other way
    ctx = _context(model)
    groups = _groups(ctx)
    assert torch.allclose(bn_scale_importance(groups["conv1"], model),
                          torch.tensor([0.5, 3.0, 0.1, 1.0], dtype=torch.float64))
    method = BNScale(penalty=1e-3)
    method.setup(ctx)
    masks = method.select({"conv1": 2, "conv2": 2})
    assert masks["conv1"].tolist() == [False, True, False, True]
    assert masks["conv2"].tolist() == [False, True, True]
    assert method.metrics()["regularizer"] == pytest.approx(0.5 + 3.0 + 0.1 + 1.0 + 0.2 + 0.3 + 0.25, rel=1e-6)


def test_bn_scale_adds_penalty_times_sign_of_gamma_to_the_bn_weight_grads_only():
    penalty = 0.25
    model = Chain()
    _randomize(model, 1)
    _set(model.bn1.weight, [0.5, -3.0, 0.0, 1.0])  # sign(0) = 0: no push
    _set(model.bn2.weight, [-0.2, 0.3, -0.25])
    method = BNScale(penalty=penalty)
    method.setup(_context(model))
    _random_grads(model, 2)
    before = _grads(model)
    method.before_optimizer_step()
    after = _grads(model)
    assert torch.equal(after["bn1.weight"] - before["bn1.weight"], torch.tensor([penalty, -penalty, 0.0, penalty]))
    assert torch.allclose(after["bn1.weight"], before["bn1.weight"] + torch.tensor([penalty, -penalty, 0.0, penalty]))
    assert torch.allclose(after["bn2.weight"], before["bn2.weight"] + torch.tensor([-penalty, penalty, -penalty]))
    for name in before:
        if name not in ("bn1.weight", "bn2.weight"):
            assert torch.equal(after[name], before[name]), name
    # the weights themselves are untouched
    assert model.bn1.weight.tolist() == [0.5, -3.0, 0.0, 1.0]

    # a gamma without a gradient stays without one; the others still get the term
    model.bn2.weight.grad = None
    method.before_optimizer_step()
    assert model.bn2.weight.grad is None
    assert torch.allclose(model.bn1.weight.grad, before["bn1.weight"] + 2 * torch.tensor([penalty, -penalty, 0.0,
                                                                                           penalty]))
    # penalty 0: nothing changes
    zero = BNScale(penalty=0.0)
    zero.setup(_context(model))
    grads = _grads(model)
    zero.before_optimizer_step()
    assert all(g is None and model.get_parameter(n).grad is None or torch.equal(model.get_parameter(n).grad, g)
               for n, g in grads.items())


def test_bn_scale_names_every_group_without_batchnorm_at_once():
    model = Chain(bn=False)
    model.fc2 = nn.Linear(2, 2)  # a third group, fc (with no BatchNorm either)
    model.forward = lambda x: model.fc2(torch.relu(Chain.forward(model, x)))
    with pytest.raises(ValueError, match=r"'conv1', 'fc' have no BatchNorm\. Pass \['conv1', 'fc'\] in "):
        BNScale().setup(_context(model))
    # none with a BatchNorm: the method does not apply, rather than "ignore every layer"
    model.bn2 = nn.Identity()
    with pytest.raises(ValueError, match=r"no prunable group of this model has a BatchNorm \(3 groups: \['conv1', "
                                         r"'conv2', 'fc'\]\); bn_scale does not apply to it\. Use a method that "
                                         r"needs no BatchNorm: l1, oneshot, ssl, ssr_l20, ssr_l21, taylor\.$"):
        BNScale().setup(_context(model))


def test_bn_scale_names_a_frozen_batchnorm_as_frozen():
    """A frozen BatchNorm was called "no BatchNorm" (probe): its scale is there, the penalty cannot move it."""
    model = Chain()
    model.bn2.requires_grad_(False)
    with pytest.raises(ValueError, match=r"the BatchNorm of 'conv2' is frozen \(requires_grad=False\)\. Unfreeze it, "
                                         r"pass \['conv2'\] in ignored_layers, or use another method \(l1, oneshot, "):
        BNScale().setup(_context(model))


def test_bn_scale_refuses_a_group_without_batchnorm_naming_it():
    model = Chain(bn=False)
    with pytest.raises(ValueError, match="'conv1'.*no BatchNorm.*ignored_layers"):
        BNScale().setup(_context(model))
    # ignoring that layer leaves conv2 (with BN) only: set-up works and covers bn2 only
    method = BNScale(penalty=1.0)
    ctx = _context(model, ignored=["conv1"])
    assert [g.name for g in ctx.groups] == ["conv2"]
    method.setup(ctx)
    _random_grads(model, 0)
    before = _grads(model)
    method.before_optimizer_step()
    assert torch.allclose(model.bn2.weight.grad, before["bn2.weight"] + torch.sign(model.bn2.weight.detach()))
    assert torch.equal(model.conv1.weight.grad, before["conv1.weight"])


# ------------------------------------------------------------------------------------- ssl
#: at most this many squares summed in any group norm of Chain (every parameter element: a loose,
#: host-independent bound for float_sum_tolerance)
N_TERMS = sum(p.numel() for p in Chain().parameters())


def _hand_group_norms(model, group):
    params = dict(model.named_parameters())
    rows = [params[n].detach().double().reshape(params[n].shape[0], -1) for n in SLICES[group]]
    return torch.cat(rows, 1).pow(2).sum(1).sqrt()


def test_ssl_adds_lam_times_the_unit_group_direction_to_the_grads():
    lam = 0.3
    model = Chain()
    _randomize(model, 3)
    with torch.no_grad():  # channel 2 of conv1 is an exactly zero group
        for name in SLICES["conv1"]:
            model.get_parameter(name)[2] = 0.0
    method = SSL(lam=lam, lam_scaling="none")
    method.setup(_context(model))
    _random_grads(model, 4)
    before = _grads(model)
    method.before_optimizer_step()
    after = _grads(model)

    for group, names in SLICES.items():
        norms = _hand_group_norms(model, group)
        for name in names:
            w = model.get_parameter(name).detach().double()
            expected = before[name].double().clone()
            for c in range(w.shape[0]):
                if norms[c] > 0:
                    expected[c] += lam * w[c] / norms[c]
            # float32 group norm (a sum of n squares, in the host's order), then a few elementwise ops
            magnitude = before[name].double().abs() + (expected - before[name].double()).abs()
            assert_within_sum_bound(after[name], expected, magnitude, N_TERMS)
    # the zero group's gradients are left exactly as they were
    for name in SLICES["conv1"]:
        assert torch.equal(after[name][2], before[name][2]), name
        assert not torch.equal(after[name][0], before[name][0]), name
    # parameters outside every group's output side are untouched (fc, and conv2's input side is conv2's rows)
    assert torch.equal(after["fc.weight"], before["fc.weight"]) and torch.equal(after["fc.bias"], before["fc.bias"])
    # the added vector has norm lam for each non-zero group
    added = torch.cat([(after[n] - before[n]).double().reshape(4, -1) for n in SLICES["conv1"]], 1)
    assert torch.allclose(added.norm(dim=1), torch.tensor([lam, lam, 0.0, lam], dtype=torch.float64), rtol=1e-5)


def test_ssl_per_layer_lam_and_missing_grads():
    model = Chain()
    _randomize(model, 5)
    method = SSL(lam={"conv1": 0.0, "conv2": 2.0})
    method.setup(_context(model))
    _random_grads(model, 6)
    before = _grads(model)
    method.before_optimizer_step()
    assert all(torch.equal(model.get_parameter(n).grad, before[n]) for n in SLICES["conv1"])  # lam 0
    norms = _hand_group_norms(model, "conv2")
    added = 2.0 * model.bn2.bias.detach().double() / norms
    expected = before["bn2.bias"].double() + added
    assert_within_sum_bound(model.bn2.bias.grad, expected, before["bn2.bias"].double().abs() + added.abs(), N_TERMS)
    # a slice lacking a gradient (frozen, e.g. a fixed placement, or unused) is left alone; the
    # group's other slices still get the subgradient of the whole group's norm
    model.bn2.bias.grad = None
    grads = _grads(model)
    method.before_optimizer_step()
    norms = _hand_group_norms(model, "conv2")
    added = 2.0 * model.conv2.weight.detach().double() / norms.view(-1, 1, 1, 1)
    expected = grads["conv2.weight"].double() + added
    assert_within_sum_bound(model.conv2.weight.grad, expected, grads["conv2.weight"].double().abs() + added.abs(),
                            N_TERMS)
    assert model.bn2.bias.grad is None


def test_ssl_lam_scaling_flops_weights_groups_by_their_channel_macs():
    model = Chain()
    ctx = _context(model)
    method = SSL(lam=0.1, lam_scaling="flops")
    method.setup(ctx)
    macs = ctx.channel_macs
    mean = (4 * macs["conv1"] + 3 * macs["conv2"]) / 7
    assert method._lam == pytest.approx({n: 0.1 * macs[n] / mean for n in ("conv1", "conv2")})
    assert method._lam["conv1"] != method._lam["conv2"]


def _ssl_on_known_norms(threshold, min_keep=None, **kwargs):
    """conv1's group norms proportional to [1.0, 0.05, 0.5, 0.2]; conv2's to [0.3, 1.0, 0.6]."""
    model = Chain()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    _filters(model.conv1, [1.0, 0.05, -0.5, 0.2])
    _filters(model.conv2, [0.3, -1.0, 0.6])
    method = SSL(threshold=threshold, **kwargs)
    method.setup(_context(model, min_keep=min_keep))
    return model, method


def test_ssl_support_keeps_groups_above_threshold_times_the_layer_max():
    _, method = _ssl_on_known_norms(0.1)
    support = method.support()
    assert support["conv1"].tolist() == [True, False, True, True]
    assert support["conv2"].tolist() == [True, True, True]
    _, method = _ssl_on_known_norms(0.35)
    support = method.support()
    assert support["conv1"].tolist() == [True, False, True, False]
    assert support["conv2"].tolist() == [False, True, True]
    # a group exactly at the threshold goes (strictly above survives)
    _, method = _ssl_on_known_norms(0.5)
    assert method.support()["conv1"].tolist() == [True, False, False, False]
    # min_keep restores the largest groups the threshold removed
    _, method = _ssl_on_known_norms(0.9, min_keep={"conv1": 3, "conv2": 2})
    support = method.support()
    assert support["conv1"].tolist() == [True, False, True, True]
    assert support["conv2"].tolist() == [False, True, True]
    # select: without a target the support, with one the top-k by norm
    _, method = _ssl_on_known_norms(0.35)
    selected = method.select(None)
    assert selected["conv1"].tolist() == [True, False, True, False]
    assert selected["conv2"].tolist() == [False, True, True]
    masks = method.select({"conv1": 1, "conv2": 1})
    assert masks["conv1"].tolist() == [True, False, False, False]
    assert masks["conv2"].tolist() == [False, True, False]


def test_ssl_update_counts_stable_supports_and_its_state_round_trips():
    model, method = _ssl_on_known_norms(0.1, patience=2)
    assert method.ready()[0] is False
    assert method.update() == {"filters": 6.0}
    assert method.stable_updates == 0 and not method.ready()[0]
    method.update()
    assert method.stable_updates == 1 and not method.ready()[0]
    method.update()
    ready, reason = method.ready()
    assert method.stable_updates == 2 and ready and "2 updates" in reason
    state = method.state_dict()
    # the support changes: the count starts again
    _filters(model.conv1, [1.0, 0.05, -0.5, 0.01])
    assert method.update() == {"filters": 5.0}
    assert method.stable_updates == 0 and not method.ready()[0]
    assert method.metrics()["filters/conv1"] == 2.0

    again = SSL(threshold=0.1, patience=2)
    again.setup(_context(Chain()))
    again.load_state_dict(state)
    assert again.stable_updates == 2 and again.ready()[0]
    assert again._support["conv1"].tolist() == [True, False, True, True]
    assert SSL().state_dict() == {"support": None, "stable_updates": 0}


def test_ssl_metrics_report_the_weighted_group_lasso():
    model = Chain()
    _randomize(model, 8)
    method = SSL(lam=0.5, lam_scaling="none")
    method.setup(_context(model))
    expected = 0.5 * sum(float(_hand_group_norms(model, g).sum()) for g in SLICES)
    assert method.metrics()["regularizer"] == pytest.approx(expected, rel=1e-9)


# ----------------------------------------------------------------------------------- taylor
def _hand_taylor(model, group):
    params = dict(model.named_parameters())
    total = 0
    for name in SLICES[group]:
        p = params[name]
        total = total + (p.detach().double() * p.grad.double()).reshape(p.shape[0], -1).sum(1)
    return total.pow(2)


def test_taylor_scores_are_the_squared_sum_of_weight_times_grad():
    model = Chain()
    _randomize(model, 9)
    method = Taylor(batches=4)
    method.setup(_context(model))
    _random_grads(model, 10)
    now = method.scores_now()
    for group in SLICES:
        assert torch.allclose(now[group], _hand_taylor(model, group), rtol=1e-6), group
    # a hand-set example with a known order: only channel c's weights times grads count
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)
            p.grad.zero_()
        model.conv1.weight.grad[:, 0, 0, 0] = torch.tensor([0.1, -3.0, 0.5, 2.0])
        model.bn1.bias.grad.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))  # channel 1: (-3 + 1)^2 = 4
    scores = method.scores_now()["conv1"]
    assert torch.allclose(scores, torch.tensor([0.01, 4.0, 0.25, 4.0], dtype=torch.float64))
    method.before_optimizer_step()
    masks = method.select({"conv1": 2, "conv2": 1})
    assert masks["conv1"].tolist() == [False, True, False, True]  # a tie goes to the lower index


def test_taylor_window_keeps_only_the_last_batches_steps():
    model = Chain()
    _randomize(model, 11)
    method = Taylor(batches=2)
    method.setup(_context(model))
    steps = []
    for seed in (20, 21, 22):
        _random_grads(model, seed)
        steps.append({g: _hand_taylor(model, g) for g in SLICES})
        method.before_optimizer_step()
    importance = method.accumulated()
    for group in SLICES:
        expected = steps[1][group] + steps[2][group]  # the first step fell out of the window
        assert torch.allclose(importance[group], expected, rtol=1e-6), group
        assert not torch.allclose(importance[group], expected + steps[0][group], rtol=1e-6)
    masks = method.select({"conv1": 2, "conv2": 2})
    expected = top_k_masks({g: steps[1][g] + steps[2][g] for g in SLICES}, {"conv1": 2, "conv2": 2})
    assert all(torch.equal(masks[g], expected[g]) for g in SLICES)
    # gradients missing: the step records zeros
    for p in model.parameters():
        p.grad = None
    assert all(torch.equal(v, torch.zeros_like(v)) for v in method.scores_now().values())


def test_taylor_state_round_trips_and_continues_the_window_where_it_was():
    model = Chain()
    _randomize(model, 12)
    ctx = _context(model)
    method = Taylor(batches=2)
    method.setup(ctx)
    for seed in (30, 31, 32):
        _random_grads(model, seed)
        method.before_optimizer_step()
    state = method.state_dict()
    assert state["seen"] == 3 and set(state["window"]) == set(SLICES)
    assert all(w.shape == (2, g.size) for g, w in zip(ctx.groups, (state["window"][g.name] for g in ctx.groups)))

    again = Taylor(batches=2)
    again.setup(ctx)
    again.load_state_dict(state)
    assert all(torch.equal(again.accumulated()[k], method.accumulated()[k]) for k in SLICES)
    # the state is a copy: the original going on does not change it
    _random_grads(model, 33)
    method.before_optimizer_step()
    again.before_optimizer_step()
    # both overwrote the same (oldest) row: still identical
    assert all(torch.equal(again.accumulated()[k], method.accumulated()[k]) for k in SLICES)
    assert state["seen"] == 3 and again.state_dict()["seen"] == 4
    assert all(torch.equal(again.select({"conv1": 2, "conv2": 1})[k], method.select({"conv1": 2, "conv2": 1})[k])
               for k in SLICES)

    wrong = Taylor(batches=3)
    wrong.setup(ctx)
    with pytest.raises(ValueError, match="batches="):
        wrong.load_state_dict(state)


def test_taylor_select_before_any_step_raises():
    method = Taylor(batches=3)
    method.setup(_context(Chain()))
    with pytest.raises(RuntimeError, match="none were seen"):
        method.select({"conv1": 2, "conv2": 1})
    assert method.config() == {"batches": 3}


# ------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("name,kwargs,error,match", [
    ("bn_scale", {"penalty": -1e-4}, ValueError, r"bn_scale: penalty must be in \[0.0, inf\)"),
    ("bn_scale", {"penalty": float("nan")}, ValueError, "bn_scale: penalty must be finite"),
    ("bn_scale", {"penalty": "big"}, TypeError, "bn_scale: penalty must be a number"),
    ("ssl", {"threshold": 1.0}, ValueError, r"ssl: threshold must be in \[0.0, 1.0\)"),
    ("ssl", {"threshold": 1.5}, ValueError, "ssl: threshold"),
    ("ssl", {"threshold": -0.1}, ValueError, "ssl: threshold"),
    ("ssl", {"lam": -1.0}, ValueError, "ssl: lam must be"),
    ("ssl", {"lam": {"conv1": -1.0}}, ValueError, r"ssl: lam\['conv1'\] must be"),
    ("ssl", {"lam_scaling": "params"}, ValueError, "ssl: lam_scaling must be one of"),
    ("ssl", {"patience": -1}, ValueError, "ssl: patience"),
    ("ssl", {"patience": 1.5}, TypeError, "ssl: patience must be an int"),
    ("taylor", {"batches": 0}, ValueError, r"taylor: batches must be in \[1"),
    ("taylor", {"batches": 2.5}, TypeError, "taylor: batches must be an int"),
    ("random", {"seed": -1}, ValueError, "random: seed"),
    ("random", {"seed": 0.5}, TypeError, "random: seed must be an int"),
    ("l1", {"importance": "l2"}, TypeError, r"pruning method 'l1'.*importance"),
    ("l1", {"nonsense": 1}, TypeError, r"pruning method 'l1'.*'nonsense'"),
    ("random", {"nonsense": 1}, TypeError, r"pruning method 'random'.*'nonsense'"),
    ("bn_scale", {"nonsense": 1}, TypeError, r"pruning method 'bn_scale'.*'nonsense'"),
    ("ssl", {"nonsense": 1}, TypeError, r"pruning method 'ssl'.*'nonsense'"),
    ("taylor", {"nonsense": 1}, TypeError, r"pruning method 'taylor'.*'nonsense'"),
])
def test_bad_arguments_name_the_argument(name, kwargs, error, match):
    with pytest.raises(error, match=match):
        build_method(name, **kwargs)


def test_good_arguments_are_kept_and_reported():
    assert build_method("bn_scale", penalty=1e-5).config() == {"penalty": 1e-5, "threshold": 1e-2, "ramp": 0.5}
    assert build_method("taylor", batches=1).config() == {"batches": 1}
    assert build_method("ssl", lam=0.2, lam_scaling="none", threshold=0.0, patience=0).config() == {
        "lam": 0.2, "lam_scaling": "none", "threshold": 0.0, "patience": 0, "ramp": 0.5}
    assert build_method("l1").config() == {"importance": "l1"}
    for name, sparsifies, needs_target in [("l1", False, True), ("random", False, True), ("bn_scale", True, True),
                                           ("ssl", True, False), ("taylor", True, True)]:
        method = build_method(name)
        assert (method.name, method.sparsifies, method.needs_target) == (name, sparsifies, needs_target)
