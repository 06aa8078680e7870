"""``fsm``: the closed-form importance, its combination through dependency groups, the BN
compensation, the procedures, and the published structures at the paper's rates."""

import math

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_ssr import Pruning, PruningSchedule, count_cost, prune_oneshot
from lightning_ssr.app.models import build_model
from lightning_ssr.cost import channel_macs
from lightning_ssr.methods import FSM, MethodContext, build_method, expected_relu, fsm_importance
from lightning_ssr.methods.fsm import channel_shift, compensate_bn, compensation_entries
from lightning_ssr.structure import find_channel_groups
from lightning_ssr.structure.plan import plan_from_support
from lightning_ssr.structure.surgery import prune_channels
from tests.lit import TinyClassifier, loader, trainer
from tests.nets import randomize_bn

# Most fits here run FSM without validation data on purpose (its BatchNorm compensation is then
# not applied); Lightning says the module's validation_step goes unused in them.
pytestmark = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")


def _set_bn(bn: nn.BatchNorm2d, gamma, beta, mean=None, var=None):
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(gamma))
        bn.bias.copy_(torch.tensor(beta))
        if mean is not None:
            bn.running_mean.copy_(torch.tensor(mean))
        if var is not None:
            bn.running_var.copy_(torch.tensor(var))


class Chain(nn.Module):
    """conv1 -> bn1 -> relu -> conv2 -> bn2 -> relu -> pool -> fc."""

    def __init__(self, c1=4, c2=3):
        super().__init__()
        self.conv1 = nn.Conv2d(2, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.fc = nn.Linear(c2, 2)

    def forward(self, x):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    """A residual stream written by stem/bn0 and conv_b/bn_b, read by conv_b and conv_c."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(4)
        self.conv_b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.conv_c = nn.Conv2d(4, 3, 1, bias=False)
        self.bn_c = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(x + self.bn_b(self.conv_b(x)))
        return self.fc(F.relu(self.bn_c(self.conv_c(x))).mean((2, 3)))


class Concat(nn.Module):
    """Two branches (3 and 2 channels) concatenated and read by one conv."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(3)
        self.b = nn.Conv2d(2, 2, 1, bias=False)
        self.bn_b = nn.BatchNorm2d(2)
        self.mix = nn.Conv2d(5, 4, 3, padding=1, bias=False)
        self.bn_m = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = torch.cat([F.relu(self.bn_a(self.a(x))), F.relu(self.bn_b(self.b(x)))], 1)
        return self.fc(F.relu(self.bn_m(self.mix(x))).mean((2, 3)))


X = torch.zeros(2, 2, 8, 8)


def _groups(model):
    return {g.name: g for g in find_channel_groups(model, X)}


def _by_hand(conv: nn.Conv2d, columns, beta, gamma):
    """``(1/N) sum_j |s_jk| E_k`` for the input columns ``columns`` of ``conv``."""
    e = expected_relu(torch.as_tensor(beta, dtype=torch.float64), torch.as_tensor(gamma, dtype=torch.float64))
    s = conv.weight.detach().double()[:, columns].sum((2, 3))  # [N, k]
    return s.abs().mean(0) * e


# ------------------------------------------------------------- closed form
@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (1.5, 0.5), (-1.0, 2.0), (-1.0, 0.7), (0.3, 3.0)])
def test_expected_relu_matches_monte_carlo_within_one_percent(mean, std):
    gen = torch.Generator().manual_seed(0)
    samples = mean + std * torch.randn(4_000_000, generator=gen, dtype=torch.float64)
    monte_carlo = float(samples.clamp_min(0).mean())
    closed = float(expected_relu(torch.tensor(mean, dtype=torch.float64), torch.tensor(std, dtype=torch.float64)))
    assert closed == pytest.approx(monte_carlo, rel=0.01)
    # and the textbook form, computed independently
    z = mean / std
    textbook = mean * 0.5 * (1 + math.erf(z / math.sqrt(2))) + std * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    assert closed == pytest.approx(textbook, rel=1e-7)


def test_expected_relu_with_zero_std_is_the_relu_of_the_mean_and_is_vectorized():
    out = expected_relu(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.0, 0.0, -1.0]))  # |gamma| is used
    assert out[0] == 2.0 and out[1] == 0.0
    assert float(out[2]) == pytest.approx(float(expected_relu(torch.tensor(0.5), torch.tensor(1.0))))


# ------------------------------------------------------------- importance
def test_importance_of_a_plain_chain_is_the_mean_kernel_shift():
    torch.manual_seed(0)
    model = Chain()
    _set_bn(model.bn1, [1.0, 0.5, 2.0, 0.1], [0.0, 1.0, -1.0, 0.2])
    groups = _groups(model)
    got = fsm_importance(groups["conv1"], model)
    expected = _by_hand(model.conv2, [0, 1, 2, 3], [0.0, 1.0, -1.0, 0.2], [1.0, 0.5, 2.0, 0.1])
    assert torch.allclose(got, expected, rtol=1e-9)
    # the last conv feeds a linear layer: I_k = E_k of its BN
    _set_bn(model.bn2, [1.0, 0.2, 0.5], [-3.0, 0.0, 1.0])
    got = fsm_importance(groups["conv2"], model)
    assert torch.allclose(got, expected_relu(torch.tensor([-3.0, 0.0, 1.0]), torch.tensor([1.0, 0.2, 0.5])))
    assert int(got.argmin()) == 0  # a channel that is almost always off after the ReLU goes first


def test_residual_stream_sums_the_bns_each_consumer_sees_and_averages_the_consumers():
    torch.manual_seed(1)
    model = Residual()
    g0, b0 = [1.0, 0.5, 0.2, 2.0], [0.1, -0.5, 1.0, 0.0]
    gb, bb = [0.3, 1.5, 0.2, 0.4], [0.5, 0.5, -2.0, 1.0]
    _set_bn(model.bn0, g0, b0)
    _set_bn(model.bn_b, gb, bb)
    group = next(g for g in find_channel_groups(model, X) if "stem" in g.out_modules)
    assert group.feeds == {"conv_b": ["bn0"], "conv_c": ["bn0", "bn_b"]}
    # conv_b reads bn0 alone; conv_c reads the sum of both BN outputs: N(b0 + bb, g0^2 + gb^2)
    first = _by_hand(model.conv_b, [0, 1, 2, 3], b0, g0)
    summed_std = (torch.tensor(g0, dtype=torch.float64) ** 2 + torch.tensor(gb, dtype=torch.float64) ** 2).sqrt()
    second = _by_hand(model.conv_c, [0, 1, 2, 3], torch.tensor(b0) + torch.tensor(bb), summed_std)
    assert torch.allclose(fsm_importance(group, model), (first + second) / 2, rtol=1e-9)


def test_concat_reads_each_branch_at_its_offset():
    torch.manual_seed(2)
    model = Concat()
    _set_bn(model.bn_a, [1.0, 0.1, 0.5], [0.0, 0.0, 1.0])
    _set_bn(model.bn_b, [0.7, 1.2], [0.3, -0.3])
    groups = _groups(model)
    assert groups["a"].feeds == {"mix": ["bn_a"]} and groups["b"].feeds == {"mix": ["bn_b"]}
    assert torch.allclose(fsm_importance(groups["a"], model), _by_hand(model.mix, [0, 1, 2], [0.0, 0.0, 1.0],
                                                                       [1.0, 0.1, 0.5]), rtol=1e-9)
    assert torch.allclose(fsm_importance(groups["b"], model), _by_hand(model.mix, [3, 4], [0.3, -0.3], [0.7, 1.2]),
                          rtol=1e-9)


def test_a_group_without_batchnorm_is_refused_naming_it():
    model = build_model("lenet5")
    group = next(g for g in find_channel_groups(model, torch.zeros(2, 1, 28, 28)) if g.name == "conv1")
    with pytest.raises(ValueError, match=r"no prunable group .*\['conv1'\].*fsm does not apply"):
        fsm_importance(group, model)


def test_a_network_without_any_batchnorm_is_refused_at_once_with_the_methods_that_apply(tmp_path):
    """Not one group at a time (following the advice to ignore each led to the next error)."""
    model = Classifier()
    model.model = build_model("lenet5", in_channels=3, num_classes=5, input_size=16)
    cb = Pruning(method="fsm", target={"macs": 0.5}, schedule=PruningSchedule(sparsify_epochs=0), verbose=False)
    t = trainer(tmp_path, [cb], 1)
    with pytest.raises(ValueError, match=r"no prunable group of this model .*3 groups.*Use a method that needs "
                                         r"no BatchNorm: l1, oneshot, ssl, ssr_l20, ssr_l21, taylor\.\n"
                                         r"\(raised by pruning method 'fsm' in its check\(\)\)$") as err:
        t.fit(model, loader())
    assert all(name in str(err.value) for name in ("model.conv1", "model.conv2", "model.fc1"))
    assert t.global_step == 0


@pytest.mark.parametrize("name,rates,flops,params", [
    ("vgg16_bn", "[0.3]*5+[0.35]*3+[0.8]*5", 106.8e6, 2.05e6),
    ("vgg16_bn", "[0.5]*8+[0.8]*5", 59.7e6, 1.41e6),
    ("resnet56", "[0.]+[0.6,0.]*9+[0.6,0.]*9+[0.4,0.]*9", 61.7e6, 0.48e6),
])
def test_fsm_at_the_papers_rates_gives_the_published_structures(name, rates, flops, params):
    model = build_model(name, in_channels=3, num_classes=10, input_size=32)
    x = torch.zeros(2, 3, 32, 32)
    with torch.no_grad():  # non-trivial BN affine parameters, so that FSM's ranking is not all ties
        gen = torch.Generator().manual_seed(0)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.1)
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
    prune_oneshot(model, x, rates, importance="fsm")
    cost = count_cost(model, x)
    assert cost.macs == pytest.approx(flops, rel=0.015)
    assert cost.params == pytest.approx(params, rel=0.015)


# ------------------------------------------------------------- compensation
def _context(model, keep):
    groups = find_channel_groups(model, X)
    cost = count_cost(model, X)
    return MethodContext(model=model, groups=groups, cost=cost, channel_macs=channel_macs(groups, cost),
                         keep=keep, min_keep={g.name: 1 for g in groups}, example=X)


def test_compensation_matches_the_formula_on_a_hand_built_chain():
    torch.manual_seed(3)
    model = Chain()
    gamma, beta = [1.0, 0.5, 2.0, 0.1], [0.0, 1.0, -1.0, 0.2]
    _set_bn(model.bn1, gamma, beta)
    _set_bn(model.bn2, [1.0, 1.0, 1.0], [0.0, 0.0, 0.0], mean=[0.4, -0.2, 0.0], var=[2.0, 1.0, 3.0])
    method = FSM()
    method.setup(_context(model, {"conv1": 2, "conv2": 3}))
    masks = method.select({"conv1": 2, "conv2": 3})
    kept = masks["conv1"]
    # by hand: s_jk = kernel sums of conv2, E_k of bn1
    e = expected_relu(torch.tensor(beta, dtype=torch.float64), torch.tensor(gamma, dtype=torch.float64))
    s = model.conv2.weight.detach().double().sum((2, 3))  # [3, 4]
    full, part = (s * e).sum(1), (s[:, kept] * e[kept]).sum(1)
    mean, var = torch.tensor([0.4, -0.2, 0.0], dtype=torch.float64), torch.tensor([2.0, 1.0, 3.0], dtype=torch.float64)
    apply = (full / mean > 0) & (mean != 0)
    expected_mean = torch.where(apply, mean * part / full, mean)
    expected_var = torch.where(apply, var * 0.5, var)  # half of conv1's channels go

    entries = compensation_entries(method.context.groups, method._shifts, masks)
    plan = plan_from_support(X.shape, masks, method.context.groups)
    prune_channels(model, X, plan.kept, plan.sizes)
    assert compensate_bn(model, entries) == ["bn2"]
    assert torch.allclose(model.bn2.running_mean.double(), expected_mean, atol=1e-6)
    assert torch.allclose(model.bn2.running_var.double(), expected_var, atol=1e-6)
    assert not torch.equal(expected_mean, mean)  # the example does exercise the correction


def test_compensation_follows_the_consumers_own_pruned_outputs():
    torch.manual_seed(4)
    model = Chain(c1=4, c2=4)
    _set_bn(model.bn1, [1.0, 0.5, 2.0, 0.1], [0.0, 1.0, -1.0, 0.2])
    _set_bn(model.bn2, [1.0] * 4, [0.0] * 4, mean=[0.5, 0.4, 0.3, 0.2], var=[1.0] * 4)
    method = FSM()
    method.setup(_context(model, {"conv1": 2, "conv2": 2}))
    masks = method.select({"conv1": 2, "conv2": 2})
    _, shifts = channel_shift(method.context.groups[[g.name for g in method.context.groups].index("conv1")], model)
    rows = torch.nonzero(masks["conv2"]).flatten()
    full = shifts["conv2"].sum(0)[rows]
    entries = compensation_entries(method.context.groups, method._shifts, masks)
    plan = plan_from_support(X.shape, masks, method.context.groups)
    prune_channels(model, X, plan.kept, plan.sizes)
    before = model.bn2.running_mean.double().clone()
    compensate_bn(model, entries)
    ratio = model.bn2.running_mean.double() / before
    part = shifts["conv2"][masks["conv1"]].sum(0)[rows]
    expected = torch.where(full / before > 0, part / full, torch.ones_like(full))
    assert torch.allclose(ratio, expected, atol=1e-6)


class Classifier(pl.LightningModule):
    """A module with validation data: the engine's default score is its top-1 accuracy."""

    def __init__(self):
        super().__init__()
        self.model = TinyClassifier().backbone

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


IGNORED = ["model.mix", "model.fc1"]  # no BatchNorm after them


@pytest.mark.parametrize("scores,decision", [([0.5, 0.6], "kept"), ([0.6, 0.5], "reverted")])
def test_compensation_is_kept_only_if_the_validation_score_does_not_fall(tmp_path, scores, decision):
    calls = []

    def evaluate(model):  # the first call is the check at set-up that the score can be taken
        calls.append({n: b.clone() for n, b in model.named_buffers() if "running" in n})
        return ([0.0] + scores)[len(calls) - 1]

    pl.seed_everything(0)
    module = Classifier()
    randomize_bn(module)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0  # training steps leave the running statistics as they are
    cb = Pruning(method="fsm", target={"macs": 0.6}, schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=0),
                 ignored_layers=IGNORED, evaluate=evaluate, verbose=False)
    trainer(tmp_path, [cb], 1, limit_train_batches=1).fit(module, loader())
    event = cb.events[0]
    assert event["compensation"] == decision and event["val_before"] == scores[0]
    assert event["bn_adjusted"] == ["model.bn_a", "model.bn_b"]
    uncompensated, compensated = calls[1:]
    assert any(not torch.equal(compensated[n], uncompensated[n]) for n in compensated)
    final = {n: b for n, b in module.named_buffers() if "running" in n}
    expected = compensated if decision == "kept" else uncompensated
    assert all(torch.equal(final[n], expected[n]) for n in expected)


def test_default_score_is_validation_accuracy_and_never_runs_without_validation_data(tmp_path):
    pl.seed_everything(0)
    module = Classifier()
    cb = Pruning(method="fsm", target={"macs": 0.6}, schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1),
                 ignored_layers=IGNORED, verbose=False)
    trainer(tmp_path, [cb], 1, num_sanity_val_steps=0).fit(module, loader(), val_dataloaders=loader(seed=1))
    event = cb.events[0]
    assert event["compensation"] in ("kept", "reverted") and 0.0 <= event["val_before"] <= 1.0
    # the val accuracy is that of the 64 validation samples: a multiple of 1/64
    assert (event["val_before"] * 64) == pytest.approx(round(event["val_before"] * 64))

    pl.seed_everything(0)
    cb = Pruning(method="fsm", target={"macs": 0.6}, schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1),
                 ignored_layers=IGNORED, verbose=False)
    with pytest.warns(UserWarning, match="compensation not applied: no validation data"):
        trainer(tmp_path, [cb], 1).fit(Classifier(), loader())  # no validation data
    assert cb.events[0]["compensation"].startswith("not applied: no validation data")


class ByteImages(Classifier):
    """Images kept as bytes (0..255), made floats on the device in on_after_batch_transfer, as
    Lightning's docs do; every forward's input recorded."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return (x.to(self.dtype) / 255 - 0.5) / 0.25, y

    def forward(self, x):
        self.seen.append((x.dtype, float(x.abs().max())))
        return self.model(x)


def _bytes(seed):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (32, 3, 16, 16), generator=gen, dtype=torch.uint8)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, torch.randint(0, 5, (32,), generator=gen)),
                                       batch_size=16)


@pytest.mark.parametrize("precision", ["32-true", "64-true"])
def test_the_default_score_sees_each_batch_as_validation_step_does(tmp_path, precision):
    """The score read the validation loaders itself: byte images reached the model unconverted (refused as
    "the validation score failed on the dense model"), and under 64-true float32 inputs met float64
    weights (the same refusal); images normalized in on_after_batch_transfer were scored raw, silently
    (probe). It now takes Lightning's path: the precision's conversion, the batch hooks, the device."""
    pl.seed_everything(0)
    module = ByteImages()
    cb = Pruning(method="fsm", target={"macs": 0.6}, schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1),
                 ignored_layers=IGNORED, verbose=False)
    trainer(tmp_path, [cb], 1, num_sanity_val_steps=0, precision=precision).fit(module, _bytes(0), _bytes(1))
    assert cb.events[0]["compensation"] in ("kept", "reverted") and 0.0 <= cb.events[0]["val_before"] <= 1.0
    dtype = torch.float64 if precision == "64-true" else torch.float32  # (and the rebuild's check: float64)
    assert len(module.seen) > 4 and all(d in (dtype, torch.float64) and peak <= 2.0 for d, peak in module.seen)


class AugmentsWhileTraining(Classifier):
    """Lightning's augmentation on the device: only ``if self.trainer.training``; each one counted."""

    def __init__(self):
        super().__init__()
        self.augmented = 0

    def on_after_batch_transfer(self, batch, dataloader_idx):
        if self.trainer.training:
            self.augmented += 1
            return batch[0].flip(-1), batch[1]
        return batch


def test_the_default_score_does_not_augment_validation_batches(tmp_path):
    """The score ran the batch hooks while the trainer trained: validation batches were augmented,
    and the keep-or-revert decision made on them (review). They run as in validation now."""
    pl.seed_everything(0)
    module = AugmentsWhileTraining()
    cb = Pruning(method="fsm", target={"macs": 0.6}, schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1),
                 ignored_layers=IGNORED, verbose=False)
    trainer(tmp_path, [cb], 1, num_sanity_val_steps=0).fit(module, loader(n=32), loader(n=32, seed=1))
    assert cb.events[0]["compensation"] in ("kept", "reverted") and module.augmented == 2  # (the 2 training batches)


# ------------------------------------------------------------- procedures
def test_layerwise_procedure_prunes_one_share_of_the_layers_per_event(tmp_path):
    pl.seed_everything(0)
    module = Classifier()
    schedule = PruningSchedule(sparsify_epochs=0, prune_events=2, epochs_between_prunes=1, finetune_epochs=1)
    cb = Pruning(method="fsm", method_kwargs={"procedure": "layerwise", "compensate": False},
                 target={"rates": [0.5, 0.5, 0.5, 0.5, 0.0]}, schedule=schedule, ignored_layers=IGNORED,
                 verbose=False)
    sizes = []

    class Probe(pl.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            sizes.append((pl_module.model.conv_a.out_channels, pl_module.model.stem.out_channels))

    trainer(tmp_path, [cb, Probe()], schedule.total_epochs).fit(module, loader())
    # two prunable groups, one per event in network order: the stream (stem first), then conv_a
    assert len(cb.events) == 2 and sizes == [(12, 4), (6, 4)]


def test_oneshot_procedure_prunes_every_layer_at_the_first_event(tmp_path):
    pl.seed_everything(0)
    module = Classifier()
    cb = Pruning(method="fsm", method_kwargs={"compensate": False}, target={"rates": [0.5, 0.5, 0.5, 0.5, 0.0]},
                 schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1), ignored_layers=IGNORED,
                 verbose=False)
    trainer(tmp_path, [cb], 1).fit(module, loader())
    assert (module.model.conv_a.out_channels, module.model.stem.out_channels) == (6, 4)


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="procedure"):
        build_method("fsm", procedure="greedy")
    with pytest.raises(TypeError, match="compensate"):
        build_method("fsm", compensate="yes")


def test_fsm_refuses_a_model_without_batchnorm_before_the_first_step(tmp_path):
    pl.seed_everything(0)
    module = Classifier()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    cb = Pruning(method="fsm", target={"macs": 0.5}, schedule=PruningSchedule(sparsify_epochs=0), verbose=False)
    t = trainer(tmp_path, [cb], 1)
    with pytest.raises(ValueError, match=r"'model.fc1' \(read by 'model.fc2'\), 'model.mix' \(read by "
                                         r"'model.fc1'\) reach them .*ignored_layers"):
        t.fit(module, loader())
    assert t.global_step == 0
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in before.items())


def test_entries_for_one_bn_are_combined_not_compounded():
    torch.manual_seed(5)
    model = Concat()
    _set_bn(model.bn_m, [1.0] * 4, [0.0] * 4, mean=[10.0, 10.0, 10.0, 10.0], var=[1.0] * 4)
    full_a, kept_a = torch.full((4,), 1.0, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    full_b, kept_b = torch.full((4,), 9.0, dtype=torch.float64), torch.full((4,), 8.9, dtype=torch.float64)
    entries = [{"consumer": "mix", "bn": "bn_m", "full": full_a, "kept": kept_a, "removed": 1, "size": 3},
               {"consumer": "mix", "bn": "bn_m", "full": full_b, "kept": kept_b, "removed": 0, "size": 2}]
    assert compensate_bn(model, entries) == ["bn_m"]
    assert torch.allclose(model.bn_m.running_mean.double(), torch.full((4,), 10.0 * 9.4 / 10.0, dtype=torch.float64))
    assert torch.allclose(model.bn_m.running_var.double(), torch.full((4,), 1.0 - 1 / 5, dtype=torch.float64))


def test_fsm_scores_grouped_conv_consumers_by_their_bn_alone():
    from tests.nets import SmallResNeXt

    model = SmallResNeXt()
    randomize_bn(model)
    groups = {g.name: g for g in find_channel_groups(model, torch.randn(2, 3, 16, 16))}
    scores = fsm_importance(groups["reduce"], model)  # read by the grouped conv: E_k of bn1
    beta, gamma = model.bn1.bias.detach(), model.bn1.weight.detach()
    assert torch.allclose(scores, expected_relu(beta, gamma))
