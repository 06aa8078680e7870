import collections
import copy
import io
import json
import re

import pytest
import torch
from torch import nn

from lightning_ssr import prune_oneshot
from lightning_ssr.app.models import build_model
from lightning_ssr.checkpoint import load_pruned, save_pruned
from lightning_ssr.structure import (
    PlanMismatchError,
    PruningPlan,
    apply_plan,
    find_channel_groups,
    plan_from_support,
    prune_channels,
    remap_optimizer,
)
from lightning_ssr.structure.surgery import mask_channels, restore_modules, snapshot_modules
from tests.nets import SmallResidualCNN, randomize_bn
from tests.numerics import assert_same_function

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
    """The masked model, masked as the engine masks it before the rebuild."""
    masked = copy.deepcopy(model)
    mask_channels(dict(masked.named_parameters()), groups, support)
    return masked


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
    assert_same_function(masked, rebuilt, x)


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


def test_unreadable_plans_say_what_they_are_and_name_the_file(tmp_path):
    """A newer format said only 'not supported', and PruningPlan.load added 'missing, truncated
    or not a plan'; a plan that is a string raised AttributeError; an index out of range at the end
    of a long list was cut from the message (probe)."""
    newer = {"format_version": 2, "input_shape": [1, 1, 28, 28], "groups": []}
    (tmp_path / "newer.json").write_text(json.dumps(newer))
    with pytest.raises(PlanMismatchError, match=r"newer.json': pruning plan format_version 2 is not supported "
                                                r"\(this version of lightning_ssr reads 1\): it was written by a "
                                                r"newer version of lightning_ssr; upgrade the package") as raised:
        PruningPlan.load(tmp_path / "newer.json")
    assert "truncated" not in str(raised.value)
    with pytest.raises(PlanMismatchError, match="format_version None .* not written by PruningPlan.to_dict"):
        PruningPlan.from_dict({"input_shape": [1, 1, 28, 28], "groups": []})
    with pytest.raises(PlanMismatchError, match=r"a pruning plan is a mapping .*; got a str"):
        PruningPlan.from_dict("conv1: [0, 1]")
    torch.save({"state_dict": {}, "pruning_plan": newer}, tmp_path / "newer.pt")
    with pytest.raises(PlanMismatchError, match=r"newer.pt': pruning plan format_version 2"):
        load_pruned(build_model("lenet5"), tmp_path / "newer.pt")
    model = build_model("lenet5")
    with pytest.raises(PlanMismatchError, match=r"got \[0, 1, 2, 3, 4, 5, 6, 7\]\.\.\. \(999 out of range\)"):
        apply_plan(model, PruningPlan([1, 1, 28, 28], {"conv1": [*range(10), 999]}, {"conv1": 20}))
    with pytest.raises(PlanMismatchError, match=r"\(3 after 4\)"):
        apply_plan(model, PruningPlan([1, 1, 28, 28], {"conv1": [0, 4, 3]}, {"conv1": 20}))


def test_a_plan_edited_by_hand_is_refused_where_it_is_not_plain_integers_or_names_a_group_twice(tmp_path):
    """A hand-edited plan: indices 1.7, "1" and True were taken as 1; a layer named twice kept the
    last entry; two layers of one channel group with other kept channels failed in the rebuild as
    a structure the graph maps wrongly; missing keys or a 'groups' mapping raised a bare KeyError or
    TypeError; a result.json without a plan said 'format_version None' (probe)."""
    good = {"format_version": 1, "input_shape": [1, 1, 28, 28], "groups": [{"root": "conv1", "size": 20, "kept": [0, 1]}]}
    for kept in ([0, 1.7], [0, "1"], [True, 2], 5):
        bad = {**good, "groups": [{"root": "conv1", "size": 20, "kept": kept}]}
        with pytest.raises(PlanMismatchError, match=r"kept channels of 'conv1' must be a list of integers"):
            PruningPlan.from_dict(bad)
    with pytest.raises(PlanMismatchError, match=r"names layer 'conv1' twice: one entry per group"):
        PruningPlan.from_dict({**good, "groups": good["groups"] * 2})
    with pytest.raises(PlanMismatchError, match=r"each group of a pruning plan is a mapping with 'root', 'size' and "
                                                r"'kept'; got \{'root': 'conv1', 'size': 20\}"):
        PruningPlan.from_dict({**good, "groups": [{"root": "conv1", "size": 20}]})
    with pytest.raises(PlanMismatchError, match=r"a list of 'groups' .*; its 'groups' is a dict"):
        PruningPlan.from_dict({**good, "groups": {"conv1": [0, 1]}})
    with pytest.raises(PlanMismatchError, match=r"this one has keys \['format_version', 'groups'\]"):
        PruningPlan.from_dict({"format_version": 1, "groups": []})
    (tmp_path / "result.json").write_text(json.dumps({"method": "l1", "status": "failed", "plan": None}))
    with pytest.raises(PlanMismatchError, match=r"result.json': it is a run's result.json that holds no plan \(the "
                                                r"run's status: 'failed'\)"):
        PruningPlan.load(tmp_path / "result.json")
    assert PruningPlan.from_dict(good).kept == {"conv1": [0, 1]}
    # two layers of one group of coupled channels (a residual sum), named as two entries
    model = SmallResidualCNN()
    groups = find_channel_groups(model, torch.randn(2, 3, 16, 16))
    shared = next(g for g in groups if len([m for m in g.out_modules if isinstance(model.get_submodule(m), nn.Conv2d)])
                  > 1)
    first, other = [m for m in shared.out_modules if isinstance(model.get_submodule(m), nn.Conv2d)][:2]
    plan = PruningPlan([1, 3, 16, 16], {first: [0, 1], other: [2, 3]}, {first: shared.size, other: shared.size})
    with pytest.raises(PlanMismatchError, match=rf"names one group of coupled channels twice, as '{first}' and "
                                                rf"'{other}' .*one entry per group, by its first layer '{shared.name}'"):
        apply_plan(model, plan)


def test_plans_compose():
    first = PruningPlan([1, 1, 28, 28], {"conv1": [1, 3, 5, 7]}, {"conv1": 20})
    second = PruningPlan([1, 1, 28, 28], {"conv1": [0, 2], "fc1": [4]}, {"conv1": 4, "fc1": 500})
    both = first.then(second)
    assert both.kept == {"conv1": [1, 5], "fc1": [4]}
    assert both.sizes == {"conv1": 20, "fc1": 500}
    # after() undoes then(): what the second plan did, counted from the channels the first kept
    step = both.after(first)
    assert step.kept == second.kept and step.sizes == second.sizes


@pytest.mark.parametrize(("kept", "sizes", "match"), [
    ({"conv1": [0, 1]}, {"conv1": 20}, r"keeps channels \[0\] that one removed"),
    ({"conv1": [1]}, {"conv1": 10}, "counts 10 channels where that one counted 20"),
    ({"fc1": [4]}, {"fc1": 500}, "leaves out 'conv1'"),
])
def test_a_plan_that_does_not_continue_another_is_refused(kept, sizes, match):
    first = PruningPlan([1, 1, 28, 28], {"conv1": [1, 3, 5, 7]}, {"conv1": 20})
    with pytest.raises(PlanMismatchError, match=match):
        PruningPlan([1, 1, 28, 28], kept, sizes).after(first)


def test_optimizer_state_not_shaped_like_its_parameter_is_refused_by_name():
    """An optimizer of another library whose state is factored (per row, per column) was kept at the
    dense size: the first step after the prune failed in the optimizer with a size mismatch."""
    torch.manual_seed(0)
    model = SmallResidualCNN()
    x = torch.randn(8, 3, 16, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(x), torch.randint(0, 5, (8,))).backward()
    opt.step()
    opt.state[model.conv_a.weight]["row_moment"] = torch.zeros(12, 1)  # (as a factored optimizer keeps)
    groups = find_channel_groups(model, x)
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}
    old = dict(model.named_parameters())
    remap = prune_channels(model, x, kept)
    with pytest.raises(ValueError, match=r"optimizer SGD keeps state 'row_moment' of conv_a.weight in shape \(12, 1\), "
                                         r"not the parameter's \(12, 8, 3, 3\): the prune cannot slice it"):
        remap_optimizer(opt, old, dict(model.named_parameters()), remap)


class NoisyFactored(torch.optim.Optimizer):
    """Another library's optimizer that draws noise in step() and keeps a factored moment for
    matrices and kernels (one value per output row)."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.01})

    @torch.no_grad()
    def step(self, closure=None):
        import random

        random.random()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.dim() > 1:
                        self.state[p]["row"] = p.grad.flatten(1).pow(2).mean(1, keepdim=True)
                    p.add_(p.grad + 1e-3 * torch.randn_like(p), alpha=-group["lr"])


def test_the_set_up_probe_of_another_librarys_optimizer_copies_only_what_a_prune_cuts_and_keeps_the_rng():
    import random

    from lightning_ssr.structure.surgery import check_remappable

    torch.manual_seed(0)
    model = SmallResidualCNN()
    opt = NoisyFactored(model.parameters())
    calls, step = [], opt.step
    opt.step = lambda closure=None: calls.append(1) or step(closure)  # (Lightning sets a step around the optimizer's)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch_state, python_state = torch.get_rng_state(), random.getstate()
    # fc2.weight alone may be cut: its row moment is refused; its bias, a vector, gets none
    with pytest.raises(ValueError, match=r"keeps state 'row' of fc2.weight in shape \(5, 1\)"):
        check_remappable([opt], {"fc2.weight": model.fc2.weight})
    check_remappable([opt], {"fc2.bias": model.fc2.bias})  # a bias: state shaped like it, or none
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters()) and not opt.state
    assert all(p.grad is None for p in model.parameters()) and calls == []


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
        # the same shapes, values and operations in one process: bit for bit
        assert torch.equal(p, q), n


def test_plan_is_plain_data_and_round_trips():
    plan = PruningPlan([1, 3, 16, 16], {"stem": [0, 2, 5], "fc1": [1]}, {"stem": 8, "fc1": 16})
    data = plan.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data == {"format_version": 1, "input_shape": [1, 3, 16, 16],
                    "groups": [{"root": "stem", "size": 8, "kept": [0, 2, 5]}, {"root": "fc1", "size": 16, "kept": [1]}]}
    assert PruningPlan.from_dict(data) == plan


def test_plan_from_support_keeps_the_true_channels():
    model = SmallResidualCNN()
    x = torch.randn(4, 3, 16, 16)
    groups = find_channel_groups(model, x)
    support = {g.name: torch.arange(g.size) % 3 == 1 for g in groups}
    plan = plan_from_support(x.shape, support, groups)
    assert plan.input_shape == [1, 3, 16, 16]  # batch 1
    assert plan.kept == {g.name: list(range(1, g.size, 3)) for g in groups}
    assert plan.sizes == {g.name: g.size for g in groups}


def test_remap_gives_the_surviving_elements_of_every_replaced_parameter():
    torch.manual_seed(0)
    model = SmallResidualCNN()
    x = torch.randn(2, 3, 16, 16)
    groups = find_channel_groups(model, x)
    kept = {g.name: torch.nonzero(_random_support(groups, 4)[g.name]).flatten().tolist() for g in groups}
    old = {n: p.detach().clone() for n, p in model.named_parameters()}
    old_objects = dict(model.named_parameters())
    remap = prune_channels(model, x, kept)
    new = dict(model.named_parameters())
    assert remap and set(remap) <= set(new)
    for n, p in new.items():
        if n in remap:
            assert remap[n].shape == p.shape
            assert torch.equal(p.detach(), old[n].flatten()[remap[n].flatten()].view(p.shape)), n
        else:
            assert torch.equal(p.detach(), old[n]), n
    assert model.conv_a.weight is not old_objects["conv_a.weight"]
    # the surviving filters of conv_a are the kept rows, in order, on the kept input channels
    stream = next(g.name for g in groups if "stem" in g.out_modules)
    assert torch.equal(model.conv_a.weight.detach(), old["conv_a.weight"][kept["conv_a"]][:, kept[stream]])


def test_restore_modules_undoes_every_change():
    model = SmallResidualCNN()
    x = torch.randn(2, 3, 16, 16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    handle = model.fc2.register_forward_hook(lambda *args: calls.append(1))  # registered before the snapshot
    containers = {(n, k): v for n, m in model.named_modules() for k, v in vars(m).items() if isinstance(v, dict)}
    snapshot = snapshot_modules(model)
    groups = find_channel_groups(model, x)
    prune_channels(model, x, {g.name: [0] for g in groups})
    model.conv_a.marker = "added after the snapshot"
    with torch.no_grad():
        model.fc2.weight.add_(1.0)
    restore_modules(snapshot)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.conv_a.out_channels == 12 and not hasattr(model.conv_a, "marker")
    # the same dicts (OrderedDicts stay OrderedDicts), so the handle still removes its hook, and
    # hooks can be registered again (a plain dict takes no weak reference: a second prune failed)
    assert all(vars(dict(model.named_modules())[n])[k] is v for (n, k), v in containers.items())
    handle.remove()
    calls.clear()  # the rebuild's own forward passes
    assert model(x).shape == (2, 5) and not calls
    prune_channels(model, x, {g.name: [0] for g in groups})
    assert model.conv_a.out_channels == 1


def test_a_channels_last_model_and_its_optimizer_state_stay_channels_last():
    """A model moved to channels_last for speed keeps that layout through the rebuild (whose own
    check compares it with the masked model), and so do the sliced momentum buffers."""
    torch.manual_seed(0)
    model = SmallResidualCNN().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    opt.step()
    groups = find_channel_groups(model, x)
    old = dict(model.named_parameters())
    remap = prune_channels(model, x, {g.name: list(range(0, g.size, 2)) for g in groups},
                           {g.name: g.size for g in groups})
    remap_optimizer(opt, old, dict(model.named_parameters()), remap)
    spatial = [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]
    assert spatial and model.conv_a.out_channels == 6  # pruned: the layout survived a real cut
    assert all(p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous() for p in spatial)
    assert all(opt.state[p]["momentum_buffer"].is_contiguous(memory_format=torch.channels_last) for p in spatial)


class Lookahead(torch.optim.Optimizer):
    """A Lookahead-style wrapper (as timm's): it shares its inner optimizer's parameter groups, the
    inner one keeps the moments, and it keeps slow weights of its own."""

    def __init__(self, base, k=2, alpha=0.5):
        self.base, self.k, self.alpha = base, k, alpha
        self.param_groups, self.defaults = base.param_groups, base.defaults
        self.state = collections.defaultdict(dict)
        self._optimizer_step_pre_hooks, self._optimizer_step_post_hooks = {}, {}
        self.steps = 0

    @torch.no_grad()
    def step(self, closure=None):
        held = vars(self)
        (held["base"] if "base" in held else held["inner"][0] if "inner" in held else held["held"]["fast"][0]).step()
        self.steps += 1
        for group in self.param_groups:
            for p in group["params"]:
                slow = self.state[p].setdefault("slow", p.detach().clone())
                if self.steps % self.k == 0:
                    slow.add_(p - slow, alpha=self.alpha)
                    p.copy_(slow)


@pytest.mark.parametrize("held", ["attribute", "list", "nested"])
def test_a_wrapping_optimizers_inner_state_is_sliced_too(held):
    """The inner optimizer's Adam moments were dropped at the prune (its step count started over)
    and its dense-shaped entries stayed, without a word: only the wrapper's own state was sliced.
    The wrapper holds it as an attribute, in a list, or deeper (a dict of lists)."""
    from lightning_ssr.structure.surgery import check_remappable

    torch.manual_seed(0)
    model = SmallResidualCNN()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt = Lookahead(base)
    if held == "list":
        opt.inner = [vars(opt).pop("base")]
    if held == "nested":  # (a dict of lists: review)
        opt.held = {"fast": [vars(opt).pop("base")]}
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    moments = {n: base.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    check_remappable([opt], dict(model.named_parameters()))  # its set-up probe steps a copy, and passes
    assert opt.steps == 3 and all(torch.equal(base.state[p]["exp_avg"], moments[n])
                                  for n, p in model.named_parameters())
    groups = find_channel_groups(model, x)
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}
    old = dict(model.named_parameters())
    remap = prune_channels(model, x, kept)
    assert remap_optimizer(opt, old, dict(model.named_parameters()), remap) == len(remap)
    params = dict(model.named_parameters())
    assert set(base.state) == set(opt.state) == set(params.values())
    for n, p in params.items():
        index = remap[n].flatten() if n in remap else torch.arange(p.numel())
        assert torch.equal(base.state[p]["exp_avg"], moments[n].flatten()[index].view(p.shape))
        assert base.state[p]["step"] == 3 and opt.state[p]["slow"].shape == p.shape
    opt.step()  # and it steps the small model


def test_a_failed_prune_gives_a_wrapping_optimizer_and_its_inner_one_back_as_they_were():
    from lightning_ssr.engine import _optimizer_snapshot, _restore_optimizer

    torch.manual_seed(0)
    model = SmallResidualCNN()
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,))
    opt = Lookahead(torch.optim.AdamW(model.parameters(), lr=1e-2))
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    before = copy.deepcopy(opt.base.state_dict()), {p: s["slow"].clone() for p, s in opt.state.items()}
    params = list(model.parameters())
    saved = _optimizer_snapshot(opt)
    old = dict(model.named_parameters())
    remap = prune_channels(model, x, {g.name: [0, 1] for g in find_channel_groups(model, x)})
    remap_optimizer(opt, old, dict(model.named_parameters()), remap)
    _restore_optimizer(opt, saved)
    assert opt.param_groups[0]["params"] == params and list(opt.base.state) == params
    assert all(torch.equal(opt.state[p]["slow"], slow) for p, slow in before[1].items())
    restored = opt.base.state_dict()
    assert all(torch.equal(restored["state"][i][k], before[0]["state"][i][k]) for i in before[0]["state"]
               for k in before[0]["state"][i])


class History(torch.optim.Optimizer):
    """Another library's optimizer that keeps its last gradients in a deque per parameter, and a
    row norm only for parameters whose gradient is not zero."""

    def __init__(self, params, keep_rows=False):
        super().__init__(params, {"lr": 0.01})
        self.keep_rows = keep_rows

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.keep_rows:
                    if p.dim() > 1 and p.grad.any():
                        self.state[p]["rownorm"] = p.grad.flatten(1).norm(dim=1)
                else:
                    self.state[p].setdefault("history", collections.deque(maxlen=2)).append(p.grad.clone())
                p.add_(p.grad, alpha=-group["lr"])


@pytest.mark.parametrize("wrapped", [False, True], ids=["alone", "wrapped"])
@pytest.mark.parametrize(("keep_rows", "match"), [
    (False, r"keeps state 'history' of fc2.weight as a deque of tensors, not one tensor shaped like the parameter"),
    (True, r"keeps state 'rownorm' of fc2.weight in shape \(5,\), not the parameter's \(5, 16\)"),
], ids=["deque", "state-only-for-nonzero-gradients"])
def test_optimizer_state_a_prune_cannot_slice_is_refused_at_set_up(keep_rows, match, wrapped):
    """A deque of gradients passed the set-up check and failed in the user's optimizer at the first
    step after the prune; a state made only for nonzero gradients was not made by the set-up's
    zero-gradient probe and was refused only at the prune."""
    from lightning_ssr.structure.surgery import check_remappable

    model = SmallResidualCNN()
    optimizer = History(model.parameters(), keep_rows)
    with pytest.raises(ValueError, match=match):  # (wrapped: its own setting kept in the probe's copy: review)
        check_remappable([Lookahead(optimizer) if wrapped else optimizer], {"fc2.weight": model.fc2.weight})


def test_a_deque_of_state_tensors_is_refused_at_the_prune_too():
    torch.manual_seed(0)
    model = SmallResidualCNN()
    x = torch.randn(8, 3, 16, 16)
    opt = History(model.parameters())
    nn.functional.cross_entropy(model(x), torch.randint(0, 5, (8,))).backward()
    opt.step()
    groups = find_channel_groups(model, x)
    old = dict(model.named_parameters())
    remap = prune_channels(model, x, {g.name: list(range(0, g.size, 2)) for g in groups})
    with pytest.raises(ValueError, match=r"keeps state 'history' of \S+ as a deque of tensors"):
        remap_optimizer(opt, old, dict(model.named_parameters()), remap)


def test_a_plan_of_the_same_network_under_another_name_says_how_to_rename_it():
    """The command's plan (``model.conv1``) applied to the network alone was asked "made for another
    architecture?" (probe): the error gives the renaming that applies it."""
    net = build_model("lenet5")
    plan = prune_oneshot(copy.deepcopy(net), torch.randn(2, 1, 28, 28), {"macs": 0.5}).renamed(lambda n: "model." + n)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = build_model("lenet5")

        def forward(self, x):
            return self.net(x)

    for model, said, rename in ((net, "n.removeprefix('model.')", lambda n: n.removeprefix("model.")),
                                (Holder(), "'net.' + n.removeprefix('model.')",
                                 lambda n: "net." + n.removeprefix("model."))):
        with pytest.raises(PlanMismatchError, match=r"names layer 'model\.\w+', which is not a prunable layer of this "
                                                    r"model .* apply " + re.escape(f"plan.renamed(lambda n: {said})") + "$"):
            apply_plan(model, plan)
        apply_plan(model, plan.renamed(rename))  # (the advice works)
    with pytest.raises(PlanMismatchError, match=r"another architecture\?$"):  # (no layer of that name)
        apply_plan(build_model("lenet5"), plan.renamed(lambda n: "model." + n + "x"))
    # another network whose first layer's last name matches one of this model's is no renaming (review)
    resnet = build_model("resnet20", in_channels=1, input_size=28)
    other = prune_oneshot(resnet, torch.randn(2, 1, 28, 28), {"macs": 0.5})
    with pytest.raises(PlanMismatchError, match=r"another architecture\?$"):
        apply_plan(build_model("lenet5"), PruningPlan(kept={"layer1.0.conv1": [0], **other.kept},
                                                      sizes={"layer1.0.conv1": 20, **other.sizes},
                                                      input_shape=other.input_shape))


def test_a_checkpoint_given_as_a_plan_file_says_how_to_read_its_plan(tmp_path):
    """PruningPlan.load of a save_pruned file said 'UnicodeDecodeError ... missing, truncated or not a
    plan written by PruningPlan.save' (probe): it names the two ways to read what it holds."""
    torch.manual_seed(0)
    model = build_model("lenet5")
    plan = prune_oneshot(model, torch.randn(2, 1, 28, 28), {"macs": 0.5})
    save_pruned(model, tmp_path / "pruned.pt", plan)
    with pytest.raises(PlanMismatchError, match=r"pruned.pt': it is a checkpoint written by torch.save, not a plan: "
                                                r"load_pruned\(model, path\) rebuilds a model from it, and "
                                                r"PruningPlan.from_dict\(torch.load\(path, weights_only=True\)\['pruning_plan'\]\) reads the plan"):
        PruningPlan.load(tmp_path / "pruned.pt")
    assert PruningPlan.from_dict(torch.load(tmp_path / "pruned.pt", weights_only=True)["pruning_plan"]).kept == plan.kept
