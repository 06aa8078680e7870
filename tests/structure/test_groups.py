"""Coupled channel groups: residual streams, depthwise convs, the classifier, ignored layers."""

import re

import pytest
import torch
from torch import nn

from lightning_ssr.app.models import build_model
from lightning_ssr.structure import UnsupportedLayerError, find_channel_groups, prune_channels
from tests.nets import GroupedTransposed, PairSum, SmallResidualCNN, TiedBranches

STREAM = {"stem", "bn0", "conv_b", "bn_b", "dw"}  # SmallResidualCNN's residual stream (dw is depthwise on it)


def _members(groups):
    """module name -> the groups whose output channels it holds"""
    out = {}
    for g in groups:
        for m in g.out_modules:
            out.setdefault(m, []).append(g.name)
    return out


def _classifier(model):
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]


def test_residual_groups_couple_the_whole_stream():
    model = SmallResidualCNN()
    groups = find_channel_groups(model, torch.randn(2, 3, 16, 16))
    members = _members(groups)
    # one group holds the residual stream: stem, bn0, conv_b, bn_b and the depthwise conv go together
    stream = [g for g in groups if STREAM & set(g.out_modules)]
    assert len(stream) == 1 and set(stream[0].out_modules) == STREAM
    assert all(len(members[m]) == 1 for m in STREAM)
    assert stream[0].size == 8
    assert dict(stream[0].consumers) == {"conv_a": 1, "mix": 2}  # concat: both halves go to mix
    # the other groups: one per conv/linear whose outputs feed another layer
    others = {g.name: set(g.out_modules) for g in groups if g is not stream[0]}
    assert others == {"conv_a": {"conv_a", "bn_a"}, "mix": {"mix"}, "fc1": {"fc1"}}
    # the classifier's outputs are never a prunable group
    assert "fc2" not in members


def test_each_stage_of_a_resnet_is_one_group_and_the_classifier_is_never_one():
    model = build_model("resnet18", in_channels=3, num_classes=10, input_size=32)
    groups = find_channel_groups(model, torch.randn(2, 3, 32, 32))
    by_member = _members(groups)
    assert all(len(v) == 1 for v in by_member.values())  # a layer's channels belong to one group
    stage1 = {"conv1", "bn1", "layer1.0.conv2", "layer1.0.bn2", "layer1.1.conv2", "layer1.1.bn2"}
    assert len({by_member[m][0] for m in stage1}) == 1
    for stage in (2, 3, 4):
        stream = {f"layer{stage}.0.shortcut.0", f"layer{stage}.0.shortcut.1", f"layer{stage}.0.conv2",
                  f"layer{stage}.1.conv2", f"layer{stage}.0.bn2", f"layer{stage}.1.bn2"}
        assert len({by_member[m][0] for m in stream}) == 1, stage
    # 4 residual streams + the first conv of each of the 8 blocks
    assert len(groups) == 12
    assert _classifier(model) == "fc" and "fc" not in by_member


def test_a_depthwise_conv_follows_its_producer():
    model = build_model("mobilenetv2", in_channels=3, num_classes=10, input_size=32)
    groups = find_channel_groups(model, torch.randn(2, 3, 32, 32))
    by_member = _members(groups)
    depthwise = [n for n, m in model.named_modules()
                 if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels]
    assert len(depthwise) == 17
    for name in depthwise:
        prefix = name.rsplit(".", 1)[0]  # features.<i>.block
        producer = f"{prefix}.0"  # the 1x1 expansion conv (or, in the first block, the stem's conv)
        if name == "features.3.block.0":  # first block: no expansion, the stem produces its input
            producer = "features.0"
        assert by_member[name] == by_member[producer], name
        # the depthwise conv is never the consumer that would shrink its input separately
        assert all(c != name for g in groups for c, _ in g.consumers)
    assert _classifier(model) not in by_member


@pytest.mark.parametrize("name", ["lenet5", "vgg16_bn", "resnet20", "googlenet"])
def test_the_classifier_is_never_a_group(name):
    model = build_model(name, in_channels=3, num_classes=10, input_size=32)
    groups = find_channel_groups(model, torch.randn(2, 3, 32, 32))
    assert groups and _classifier(model) not in _members(groups)
    assert all(g.consumers for g in groups)  # every group feeds a conv/linear


def test_ignored_layers_remove_their_groups():
    model = SmallResidualCNN()
    x = torch.randn(2, 3, 16, 16)
    all_groups = {g.name for g in find_channel_groups(model, x)}
    assert {g.name for g in find_channel_groups(model, x, ["conv_a"])} == all_groups - {"conv_a"}
    stream = next(g.name for g in find_channel_groups(model, x) if "stem" in g.out_modules)
    for member in ("stem", "conv_b", "dw"):  # ignoring any layer of the stream removes the whole stream
        assert {g.name for g in find_channel_groups(model, x, [member])} == all_groups - {stream}
    assert {g.name for g in find_channel_groups(model, x, ["fc1", "mix"])} == all_groups - {"fc1", "mix"}
    with pytest.raises(ValueError, match="no module named"):
        find_channel_groups(model, x, ["conv_z"])


def test_an_ignored_container_leaves_every_layer_in_it_and_a_wrong_name_gets_the_closest():
    """A block or container named in ignored_layers stands for every layer in it (it was accepted
    and ignored nothing); a name without its parent's prefix, or misspelled, is answered with the
    module meant."""
    from tests.lit import NetClassifier

    model, x = NetClassifier(SmallResidualCNN()), torch.randn(2, 3, 16, 16)  # the network under "net"
    assert find_channel_groups(model, x)
    assert find_channel_groups(model, x, ["net"]) == []  # every layer is in it
    with pytest.raises(ValueError, match=r"no module named \['conv_a'\] in the model \('conv_a': did you mean "
                                         r"'net.conv_a'\?\)"):
        find_channel_groups(model, x, ["conv_a"])
    with pytest.raises(ValueError, match=r"\('net.stm': did you mean 'net.stem'\?\)"):
        find_channel_groups(model, x, ["net.stm"])


def test_modules_can_declare_their_own_ignored_layers():
    class Declared(SmallResidualCNN):
        pruning_ignored_layers = ("conv_a",)

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Declared()

        def forward(self, x):
            return self.inner(x)

    names = {g.name for g in find_channel_groups(Outer(), torch.randn(2, 3, 16, 16))}
    assert "inner.conv_a" not in names and "inner.fc1" in names


def test_a_grouped_convolution_splits_the_groups_it_touches_into_blocks():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 4, 1), nn.Flatten(),
                        nn.LazyLinear(2))
    x = torch.randn(1, 3, 8, 8)
    net(x)
    blocks = {g.name: g.blocks for g in find_channel_groups(net, x)}
    assert blocks == {"0": 2, "1": 2, "2": 1}  # its input side, its output side, and a plain conv


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


def test_a_per_channel_buffer_that_fails_the_rebuild_is_named_with_its_shape():
    """A constant registered as a buffer and applied per channel in forward(): the graph passes
    through the multiplication, the rebuild cannot slice the buffer, and the error says which."""
    class Scale(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.register_buffer("scale", torch.linspace(0.5, 1.5, c).view(1, c, 1, 1))
            self.register_buffer("window", torch.ones(1, 1, 8, 8))  # as wide as the channels, but spatial

        def forward(self, x):
            return x * self.scale * self.window

    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), Scale(8), nn.ReLU(), nn.Conv2d(8, 6, 3))
    x = torch.randn(2, 3, 10, 10)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(UnsupportedLayerError, match=re.escape("does not slice: '2.scale' (1, 8, 1, 1);")) as info:
        prune_channels(net, x, {"0": [0, 2, 5]})
    assert "running_mean" not in str(info.value)  # a norm layer's statistics are sliced: not suspects
    assert "window" not in str(info.value)  # its width 8 is the image's, not the channels' dimension
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_a_forward_hook_that_fails_the_rebuild_is_named():
    """A user's hook holding a per-channel gate: the rebuild's check runs the model through it, and
    the error names the hook's module beside the groups."""
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3))
    gate = torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1)
    net[0].register_forward_hook(lambda module, args, out: out * gate)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(UnsupportedLayerError, match=re.escape("forward hooks on '0' (forward hook): a hook that "
                                                              "holds a per-channel tensor")):
        prune_channels(net, torch.randn(2, 3, 10, 10), {"0": [0, 2, 5]})
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


@pytest.mark.parametrize("factory", ["residual", "resnext", "densenet"])
def test_flat_channels_give_the_groups_norms_and_scaling_in_one_pass(factory):
    """The V-step's vectorized path computes what the per-group one does (in float64 the two
    differ only in the order of the sums of squares, bounded by n * u of the largest norm)."""
    from lightning_ssr.structure.groups import FlatChannels
    from tests.nets import SmallDenseNet, SmallResidualCNN, SmallResNeXt

    torch.manual_seed(0)
    model = {"residual": SmallResidualCNN, "resnext": SmallResNeXt, "densenet": SmallDenseNet}[factory]()
    x = torch.randn(2, 3, 16, 16)
    groups = find_channel_groups(model, x)
    params = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    flat = FlatChannels(groups, {n: p.shape for n, p in params.items()})
    norms = flat.split(flat.norms(params))
    for g in groups:
        expected = g.norms(params)
        assert torch.allclose(norms[g.name], expected, rtol=1e-12, atol=0), g.name
    sums = flat.split(flat.sums(params))
    for g in groups:  # the same float64 numbers summed in another order: within n * u of the sum of |x|
        rows = [params[s.param].movedim(s.dim, 0)[s.index.reshape(-1)].reshape(g.size, -1) for s in g.slices]
        expected = sum(r.sum(1) for r in rows)
        n = sum(r.shape[1] for r in rows)
        bound = n * torch.finfo(torch.float64).eps * sum(r.abs().sum(1) for r in rows)
        assert bool(((sums[g.name] - expected).abs() <= bound).all()), g.name
    assert torch.equal(flat.sums({}), torch.zeros(flat.channels, dtype=torch.float64))
    scales = {g.name: torch.rand(g.size, dtype=torch.float64) for g in groups}
    by_group = {n: t.clone() for n, t in params.items()}
    for g in groups:
        g.scale_(by_group, scales[g.name])
    # a model moved to channels_last: its 4-d weights are not contiguous, and scaled in place all the same
    channels_last = {n: t.clone().to(memory_format=torch.channels_last) if t.dim() == 4 else t.clone()
                     for n, t in params.items()}
    assert any(not t.is_contiguous() for t in channels_last.values())
    flat.scale_(params, flat.join(scales, "cpu"))
    flat.scale_(channels_last, flat.join(scales, "cpu"))
    for name, value in params.items():  # the same products of the same two numbers: equal bit for bit
        assert torch.equal(value, by_group[name]), name
        assert torch.equal(channels_last[name], value), name


def test_a_trace_that_fails_says_whether_forward_or_the_tracer_failed(monkeypatch):
    import torch_pruning as tp

    from lightning_ssr.structure.groups import ForwardError

    net = SmallResidualCNN()
    with pytest.raises(ForwardError, match=r"forward\(\) failed on the example input of shape \(2, 5, 16, 16\): RuntimeError"):
        find_channel_groups(net, torch.randn(2, 5, 16, 16))  # 5 channels where the stem takes 3

    def fails(self, model, example_inputs, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", fails)
    with pytest.raises(UnsupportedLayerError, match=r"forward\(\) runs on the example input of shape \(2, 3, 16, 16\), but "
                       r"tracing its channels failed: IndexError: list index out of range"):
        find_channel_groups(net, torch.randn(2, 3, 16, 16))
    assert all(m.training for m in net.modules())  # the modes given back after both failures


class TwoIntoGRU(nn.Module):
    """c1 and c2 (coupled by a residual add) feed a GRU, which the tracer cannot follow; c0 feeds c1 only."""

    def __init__(self):
        super().__init__()
        self.c0, self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
        self.gru, self.fc = nn.GRU(6, 4, batch_first=True), nn.Linear(4, 3)

    def forward(self, x):
        a = torch.relu(self.c1(torch.relu(self.c0(x))))
        columns = (self.c2(a) + a).mean(2).transpose(1, 2)
        return self.fc(self.gru(columns)[0][:, -1])


def test_every_layer_the_tracer_cannot_follow_is_named_at_once_and_ignoring_them_leaves_the_rest():
    net, x = TwoIntoGRU(), torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedLayerError, match=r"output channels of '(c1', 'c2|c2', 'c1)' reach an operation "
                       r"the dependency tracer \(torch-pruning\) cannot follow .*IndexError"):
        find_channel_groups(net, x)
    assert [g.name for g in find_channel_groups(net, x, ["c1", "c2"])] == ["c0"]


class CatPlusSlice(nn.Module):
    """A concat of two branches added to the first channels of a wider conv: its rows equal the
    concat's, but reach the add through a slice, which the rebuild cannot follow."""

    def __init__(self):
        super().__init__()
        self.big, self.a, self.b = nn.Conv2d(3, 16, 1), nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(3, 6, 1)
        self.conv, self.rest, self.fc = nn.Conv2d(12, 8, 3, padding=1), nn.Conv2d(4, 8, 1), nn.Linear(8, 5)

    def forward(self, x):
        z = self.big(x)
        y = torch.cat([self.a(x), self.b(x)], 1) + z[:, :12]
        return self.fc((torch.relu(self.conv(torch.relu(y))) + self.rest(z[:, 12:])).mean((2, 3)))


def test_a_layer_holding_a_concats_rows_through_a_slice_is_refused_by_name():
    with pytest.raises(UnsupportedLayerError, match=r"channels of '[ab]' are coupled to 'big' \(16 channels\) "
                                                    r"through an op .*Pass '[ab]' in ignored_layers"):
        find_channel_groups(CatPlusSlice(), torch.randn(2, 3, 8, 8))


def test_channels_the_tracer_loses_before_a_layer_reads_them_are_refused_by_name():
    """conv1 was left out of the prunable layers without a word: taken for the model's output."""
    net, x = PairSum(), torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedLayerError, match=r"output channels of 'conv1' reach an operation the dependency "
                       r"tracer .* the trace stops at '\w+', before 'conv2' reads them.*Pass 'conv1' in ignored_layers"):
        find_channel_groups(net, x)
    assert [g.name for g in find_channel_groups(net, x, ["conv1"])] == ["conv2"]


class TwoLost(PairSum):
    """Two producers summed, then lost: ignoring one leaves the other's group unprunable too."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        x = torch.relu(self.conv1(x) + self.conv0(x))
        b, c, h, w = x.shape
        x = x.reshape(b, c // 2, 2, h, w).sum(2).repeat_interleave(2, 1)
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def test_a_lost_group_that_holds_an_ignored_layer_is_not_refused():
    assert [g.name for g in find_channel_groups(TwoLost(), torch.randn(2, 3, 8, 8), ["conv0"])] == ["conv2"]


def test_a_grouped_transposed_conv_and_a_tied_weight_are_refused_by_name():
    """Both went on to a raw IndexError / KeyError in the rebuild or the cost estimate."""
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedLayerError, match=r"layer 'up' \(ConvTranspose2d, groups=2\) is a grouped "
                                                    r"transposed convolution.*Pass 'up' in ignored_layers"):
        find_channel_groups(GroupedTransposed(), x)
    with pytest.raises(UnsupportedLayerError, match=r"tied parameters \(one tensor held by several layers: a.weight, "
                                                    r"b.weight\).*group 'b' reaches b.weight, a.weight\). Pass 'b' in "
                                                    r"ignored_layers"):
        find_channel_groups(TiedBranches(), x)
    assert [g.name for g in find_channel_groups(TiedBranches(), x, ["b"])] == ["c"]


class ScaledLogits(nn.Module):
    """A learnable per-class scale on the classifier's output: channels no layer consumes."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)
        self.class_scale = nn.Parameter(torch.ones(5))

    def forward(self, x):
        return self.fc(torch.relu(self.c1(x)).mean((2, 3))) * self.class_scale


def test_a_parameter_on_the_models_outputs_does_not_refuse_the_model():
    assert [g.name for g in find_channel_groups(ScaledLogits(), torch.randn(2, 3, 8, 8))] == ["c1"]


class PairNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)

    def forward(self, image, mask):
        return self.fc(torch.relu(self.c1(image * mask)).mean((2, 3)))


def test_a_tracer_failure_on_a_model_of_several_inputs_is_not_blamed_on_its_forward(monkeypatch):
    import torch_pruning as tp

    def fails(self, model, example_inputs, **kwargs):
        raise IndexError("list index out of range")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", fails)
    with pytest.raises(UnsupportedLayerError, match=r"forward\(\) runs on the example input \(a tuple\)"):
        find_channel_groups(PairNet(), (torch.randn(2, 3, 8, 8), torch.ones(2, 1, 8, 8)))


class Aliased(nn.Module):
    """One layer reached under two names, as ``self.backbone = self.model.features`` (which
    ``BackboneFinetuning`` asks for) or a wrapper makes: refused as a tied weight before."""

    def __init__(self):
        super().__init__()
        self.model = SmallResidualCNN()
        self.first = self.model.conv_a  # the same module, not a copy
        self.head = nn.Sequential(self.model.fc2)

    def forward(self, x):
        return self.model(x)


def test_a_layer_reached_under_two_names_is_no_tie_and_prunes():
    from lightning_ssr import prune_oneshot

    torch.manual_seed(0)
    net = Aliased()
    x = torch.randn(2, 3, 16, 16)
    assert [g.name for g in find_channel_groups(net, x)] == [f"model.{g.name}" for g in
                                                             find_channel_groups(net.model, x)]
    prune_oneshot(net, x, {"macs": 0.5})  # (its rebuild checked numerically)
    assert net.first is net.model.conv_a and net.first.weight.shape[0] < 12 and net.head[0] is net.model.fc2


class TiedAcrossGroups(nn.Module):
    """A weight tied between two layers whose output channels are groups of their own, and whose
    inputs are a third layer's: three groups reach the tie."""

    def __init__(self):
        super().__init__()
        self.stem, self.keep = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1)
        self.a, self.b = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.b.weight = self.a.weight
        self.fc = nn.Linear(16 + 6, 5)

    def forward(self, x):
        s = torch.relu(self.stem(x))
        k = torch.relu(self.keep(x)).mean((2, 3))
        return self.fc(torch.cat([torch.relu(self.a(s)).mean((2, 3)), torch.relu(self.b(s)).mean((2, 3)), k], 1))


def test_a_tie_is_refused_once_naming_every_group_that_reaches_it():
    """Each refusal named one group, and ignoring it led to the next one: round the tie."""
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedLayerError) as info:
        find_channel_groups(TiedAcrossGroups(), x)
    message = str(info.value)
    assert "a.weight, b.weight" in message and "Pass 'a', 'b', 'stem' in ignored_layers" in message
    assert [g.name for g in find_channel_groups(TiedAcrossGroups(), x, ["stem", "a", "b"])] == ["keep"]


class Checkpointed(nn.Module):
    """A block run through torch.utils.checkpoint, in eval mode too or only while training."""

    def __init__(self, use_reentrant=True, train_only=False):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 5)
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.use_reentrant, self.train_only = use_reentrant, train_only

    def forward(self, x):
        from torch.utils.checkpoint import checkpoint

        x = torch.relu(self.c1(x))
        x = self.mid(x) if self.train_only and not self.training else checkpoint(
            self.mid, x, use_reentrant=self.use_reentrant)
        return self.fc(x.mean((2, 3)))


def test_a_reentrant_activation_checkpoint_is_refused_naming_its_layers_and_the_fix():
    """Its layers run with autograd off, so the trace missed them: the target was refused as too
    small, or the dry run blamed conv1 and sent the user round ignored_layers."""
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(UnsupportedLayerError, match=r"layers mid.0, mid.2 run with autograd off inside forward\(\) "
                                                    r"\(as torch.utils.checkpoint.checkpoint\(..., use_reentrant=True\)"
                                                    r".*Use use_reentrant=False"):
        find_channel_groups(Checkpointed(), x)
    assert sorted(g.name for g in find_channel_groups(Checkpointed(use_reentrant=False), x)) == ["c1", "mid.0", "mid.2"]
    assert sorted(g.name for g in find_channel_groups(Checkpointed(train_only=True), x)) == ["c1", "mid.0", "mid.2"]
    frozen = Checkpointed()  # frozen layers under no autograd are the user's choice: traced as before
    frozen.mid.requires_grad_(False)
    find_channel_groups(frozen, x)
    # a layer run again with autograd off for a side computation (a logged norm) is traced (review)
    logged = Checkpointed(use_reentrant=False)
    logged.forward = lambda x: (torch.no_grad()(lambda: logged.c1(x).norm())(), Checkpointed.forward(logged, x))[1]
    assert sorted(g.name for g in find_channel_groups(logged, x)) == ["c1", "mid.0", "mid.2"]


def test_a_parameter_a_layer_holds_under_two_of_its_names_is_a_tie():
    """Told apart from one layer under two module names (review): refused by the tie check, not by
    the rebuild's, which blamed a channel shuffle."""
    net = TiedBranches()
    net.c.register_parameter("w_alias", net.c.weight)
    with pytest.raises(UnsupportedLayerError, match=r"tied parameters .*c.w_alias"):
        find_channel_groups(net, torch.randn(2, 3, 8, 8), ["b"])
