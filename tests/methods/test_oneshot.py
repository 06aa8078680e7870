"""``oneshot``: prune the least important channels at once, on a bare model (``prune_oneshot``)
or inside ``fit`` through the engine."""

import lightning.pytorch as pl
import pytest
import torch

from lightning_ssr import PLAN_CHECKPOINT_KEY, Pruning, PruningSchedule, apply_plan, count_cost, prune_oneshot
from lightning_ssr.app.models import build_model
from lightning_ssr.methods import OneShot, build_method
from lightning_ssr.methods.importance import IMPORTANCES
from tests.lit import Snapshot, TinyClassifier, assert_same_weights, epoch_checkpoints, loader, trainer

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
        prune_oneshot(model, x, rates)
    cost = count_cost(model, x)
    assert cost.macs == pytest.approx(flops, rel=0.015)
    assert cost.params == pytest.approx(params, rel=0.015)


def test_a_rate_list_a_rate_string_and_a_rates_target_are_the_same_target():
    x = torch.zeros(2, 1, 28, 28)
    plans = []
    for target in ([0.5, 0.3], "[0.5]+[0.3]", {"rates": "[0.5,0.3]"}):
        torch.manual_seed(0)
        plans.append(prune_oneshot(build_model("lenet5"), x, target))
    assert plans[0].to_dict() == plans[1].to_dict() == plans[2].to_dict()
    assert {n: len(k) for n, k in plans[0].kept.items()} == {"conv1": 10, "conv2": 35, "fc1": 500}


def test_rates_on_unprunable_layers_are_refused():
    model = build_model("resnet20", in_channels=3, num_classes=10, input_size=32)
    x = torch.zeros(2, 3, 32, 32)
    stem_only = [0.5] + [0.0] * 18  # one rate per convolution (19)
    with pytest.raises(ValueError, match="cannot be pruned"):
        prune_oneshot(model, x, stem_only, ignored_layers=["conv1"])  # ignored: the stem's stream stays
    with pytest.raises(ValueError, match="share their output channels"):
        prune_oneshot(model, x, stem_only)  # the stem writes the residual stream the blocks' conv2 write too
    for rates in ([0.0] * 30, [0.5]):  # too many, too few (the rest would be left whole without a word)
        with pytest.raises(ValueError, match=f"{len(rates)} rates given for a model with 19 convolutions"):
            prune_oneshot(model, x, rates)
    assert model.conv1.out_channels == 16  # the model was left alone


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale", "random"])
def test_importance_chooses_which_channels_survive(importance):
    model = build_model("vgg16_bn", in_channels=3, num_classes=10, input_size=32)
    with torch.no_grad():
        model.features[0].weight[5:].mul_(0.01)  # channels 5.. of the first conv are tiny
        model.features[1].weight[5:].mul_(0.01)
    plan = prune_oneshot(model, torch.zeros(2, 3, 32, 32), {"rates": {"features.0": 0.9}}, importance=importance)
    kept = plan.kept["features.0"]
    assert len(kept) == 7  # ceil(64 * 0.1)
    assert model.features[0].out_channels == 7
    if importance != "random":
        assert set(range(5)) <= set(kept)
    with pytest.raises(ValueError, match="unknown importance 'magic'"):
        prune_oneshot(build_model("lenet5"), torch.zeros(1, 1, 28, 28), [0.5], importance="magic")


def test_prune_oneshot_meets_a_fraction_target_and_its_plan_replays():
    torch.manual_seed(0)
    model = build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    dense = count_cost(model, x)
    plan = prune_oneshot(model, x, {"macs": 0.3}, min_channels=2, max_pruning_ratio=0.9)
    pruned = count_cost(model, x)
    assert pruned.macs <= 0.3 * dense.macs
    assert all(2 <= len(plan.kept[n]) and len(plan.kept[n]) >= 0.1 * plan.sizes[n] for n in plan.kept)
    fresh = apply_plan(build_model("lenet5"), plan)
    assert {n: p.shape for n, p in fresh.named_parameters()} == {n: p.shape for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="too small"):
        prune_oneshot(build_model("lenet5"), x, {"macs": 0.01}, max_pruning_ratio=0.5)
    # a list of inputs was torch's "conv2d() received an invalid combination of arguments"
    with pytest.raises(TypeError, match="prune_oneshot: example_inputs must be one input tensor .*, got list"):
        prune_oneshot(build_model("lenet5"), [x], {"macs": 0.3})


def test_oneshot_method_settings():
    method = build_method("oneshot", importance="bn_scale")
    assert isinstance(method, OneShot) and method.needs_target and not method.sparsifies
    assert method.config() == {"importance": "bn_scale"}
    assert build_method("oneshot").importance_fn == "l2"  # the SSR group norm by default
    with pytest.raises(ValueError, match="importance must be one of"):
        OneShot(importance="magic")


def test_an_importance_that_reads_batchnorm_is_refused_where_a_group_has_none():
    """pruning=oneshot pruning.importance=bn_scale on LeNet-5 (no BatchNorm) scored every channel
    by its L1 norm instead and recorded bn_scale, where pruning=bn_scale refuses the model; with
    importance=fsm the refusal named one group of three and advised the method in use (probe)."""
    from lightning_ssr.structure import find_channel_groups
    from tests.nets import SmallResidualCNN

    x = torch.randn(2, 1, 28, 28)
    lenet = build_model("lenet5")
    groups = find_channel_groups(lenet, x)
    with pytest.raises(ValueError, match=r"^oneshot's importance='bn_scale' ranks channels by their BatchNorm "
                                         r"scales, but no prunable group of this model has one: use importance='l1'"):
        OneShot(importance="bn_scale").check(lenet, groups)
    with pytest.raises(ValueError, match=r"^oneshot's importance='fsm' .*\(3 groups: \['conv1', 'conv2', 'fc1'\]\); "
                                         r"oneshot's importance='fsm' does not apply to it. Use importance='l1' or 'l2'"):
        OneShot(importance="fsm").check(lenet, groups)
    OneShot(importance="l1").check(lenet, groups)  # (what needs no BatchNorm)
    net = SmallResidualCNN()  # (BatchNorm on some groups: the others named, to leave out)
    with pytest.raises(ValueError, match=r"but the channels of 'fc1', 'mix' have none: pass \['fc1', 'mix'\] in "
                                         r"ignored_layers, or use importance='l1' or 'l2'"):
        OneShot(importance="bn_scale").check(net, find_channel_groups(net, torch.randn(2, 3, 16, 16)))
    net = build_model("resnet20", in_channels=3, num_classes=10, input_size=32)  # (BatchNorm on every group)
    OneShot(importance="bn_scale").check(net, find_channel_groups(net, torch.randn(2, 3, 32, 32)))
    # the function itself, and the bare-model API, are held to the same (they fell back silently: review)
    with pytest.raises(ValueError, match=r"^oneshot's importance='bn_scale' ranks channels by their BatchNorm"):
        OneShot(importance=IMPORTANCES["bn_scale"]).check(lenet, groups)
    with pytest.raises(ValueError, match=r"^prune_oneshot: importance='bn_scale' ranks channels by their BatchNorm"):
        prune_oneshot(build_model("lenet5"), x, {"macs": 0.3}, importance="bn_scale")
    # a frozen BatchNorm is a scale to rank by, as the check says (the importance read the L1 norm: review)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.requires_grad_(False)
            m.weight.data.uniform_(0.1, 1.0)
    groups = find_channel_groups(net, torch.randn(2, 3, 32, 32))
    OneShot(importance="bn_scale").check(net, groups)
    g = groups[0]
    assert not torch.equal(IMPORTANCES["bn_scale"](g, net), IMPORTANCES["l1"](g, net))


ONESHOT = PruningSchedule(sparsify_epochs=0, finetune_epochs=2)


def test_oneshot_through_the_engine_shrinks_the_model_within_one_fit(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = Pruning(method="oneshot", target={"macs": 0.5}, schedule=ONESHOT)
    snap = Snapshot()
    fit = trainer(tmp_path, [cb, snap], ONESHOT.total_epochs)
    fit.fit(model, loader())
    assert ONESHOT.total_epochs == 2 and [e["epoch"] for e in cb.events] == [0]
    assert cb.events[0]["step"] == 0  # before the first optimizer step
    assert cb.result.pruned["macs"] <= 0.5 * cb.result.dense["macs"]
    assert cb.result.method == "oneshot" and cb.result.target == {"macs": 0.5}
    assert sum(p.numel() for p in model.parameters()) == cb.result.pruned["params"] < cb.result.dense["params"]
    assert len(model.losses) == 8  # 2 epochs of 4 steps, all on the small model
    # the small model trained: its parameters moved over the second epoch
    assert any(not torch.equal(snap.params[1][n], p.detach()) for n, p in model.named_parameters())
    opt = fit.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


def test_oneshot_resume_after_the_prune_matches_an_uninterrupted_run(tmp_path):
    def run(max_epochs, dirpath, ckpt_path=None):
        pl.seed_everything(0)
        model = TinyClassifier()
        cb = Pruning(method="oneshot", target={"macs": 0.5}, schedule=ONESHOT, verbose=False)
        ckpt = epoch_checkpoints(dirpath, resume_from=ckpt_path)
        trainer(tmp_path, [cb, ckpt], max_epochs).fit(model, loader(), ckpt_path=ckpt_path)
        return model, cb

    full_model, full_cb = run(ONESHOT.total_epochs, tmp_path / "full")
    run(1, tmp_path / "ckpts")
    path = tmp_path / "ckpts" / "epoch=0.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("Pruning"))
    assert state["method"] == "oneshot" and state["events_done"] == 1 and state["method_state"] is None
    assert checkpoint[PLAN_CHECKPOINT_KEY] == state["plan"] == full_cb.plan.to_dict()
    model, cb = run(ONESHOT.total_epochs, None, ckpt_path=path)
    assert cb.events == full_cb.events
    assert_same_weights(model, full_model)


def test_oneshot_with_a_batchnorm_importance_is_refused_before_the_first_step(tmp_path):
    """Through the callback, the refusal comes at the fit's set-up: no optimizer step, the model as it was."""
    pl.seed_everything(0)
    model = TinyClassifier()  # (its fc1 and mix channels have no BatchNorm)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = Pruning(method="oneshot", method_kwargs={"importance": "bn_scale"}, target={"macs": 0.5}, schedule=ONESHOT,
                 verbose=False)
    fit = trainer(tmp_path, [cb], ONESHOT.total_epochs)
    with pytest.raises(ValueError, match=r"oneshot's importance='bn_scale' ranks channels by their BatchNorm scales, "
                                         r"but the channels of .* have none"):
        fit.fit(model, loader())
    assert fit.global_step == 0
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
