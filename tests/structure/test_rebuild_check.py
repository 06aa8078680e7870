"""The masked-vs-rebuilt check runs where neither the model's dtype nor TF32 decides its
outcome: in float64, or with TF32 off where a model cannot run in float64."""

import collections
import copy

import pytest
import torch
from torch import nn

from lightning_ssr.structure import find_channel_groups, prune_channels
from lightning_ssr.structure.surgery import check_outputs, exact_float32, in_float64, rebuild_tolerance
from tests.nets import SmallResidualCNN, randomize_bn
from tests.numerics import assert_same_function, unit_roundoff


def _flags():
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision


def test_exact_float32_turns_tf32_off_and_restores_the_settings_even_after_an_error():
    before = _flags()
    with exact_float32():
        assert _flags() == ("ieee", "ieee")
    assert _flags() == before
    with pytest.raises(KeyError), exact_float32():
        raise KeyError("boom")
    assert _flags() == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_in_float64_gives_every_tensor_back_bit_for_bit_and_keeps_the_objects(dtype):
    torch.manual_seed(0)
    model = SmallResidualCNN().to(dtype)
    randomize_bn(model)
    params = {n: p for n, p in model.named_parameters()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with in_float64(model):
        assert all(p.dtype == torch.float64 for p in model.parameters())
        assert all(b.dtype in (torch.float64, torch.long) for b in model.buffers())
    after = model.state_dict()
    assert all(after[k].dtype == before[k].dtype and torch.equal(after[k], before[k]) for k in before)
    assert all(p is params[n] for n, p in model.named_parameters())


def test_the_check_runs_in_float64_for_a_float32_model():
    model = SmallResidualCNN().eval()
    outputs, precision = check_outputs(model, torch.randn(2, 3, 16, 16))
    assert precision == "float64" and outputs[0].dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32


class Float32Only(nn.Module):
    """A forward that fixes its dtype (it cannot run in float64) and records TF32's setting."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.seen = []

    def forward(self, x):
        self.seen.append(_flags())
        x = torch.relu(self.c1(x.float()))
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


def test_a_model_that_cannot_run_in_float64_is_checked_in_its_dtype_with_tf32_off():
    torch.manual_seed(0)
    model = Float32Only()
    x = torch.randn(2, 3, 8, 8)
    before = _flags()
    groups = find_channel_groups(model, x)
    model.seen.clear()
    _, precision = check_outputs(model, x)
    assert precision == "native" and model.seen[-1] == ("ieee", "ieee")
    prune_channels(model, x, {g.name: list(range(0, g.size, 2)) for g in groups})
    assert model.c1.out_channels == 4 and model.c2.out_channels == 4
    assert _flags() == before


def test_tf32_sized_errors_pass_the_float64_check_but_not_a_wrong_mapping():
    """The tolerance the check applies in float64 sits far above float64 rounding and far below
    both TF32's error (about 1e-3, 10 mantissa bits) and a wrong channel mapping (order 1)."""
    tf32_error = 2.0 ** -11
    assert unit_roundoff(torch.float64) * 1e5 < rebuild_tolerance(torch.float64) < tf32_error
    torch.manual_seed(0)
    model = SmallResidualCNN()
    randomize_bn(model)
    x = torch.randn(2, 3, 16, 16)
    groups = find_channel_groups(model, x)
    rebuilt = copy.deepcopy(model)
    prune_channels(rebuilt, x, {g.name: list(range(g.size)) for g in groups})
    assert_same_function(model, rebuilt, x)
    with torch.no_grad():  # a single swapped pair of filters is far outside the tolerance
        rebuilt.stem.weight[[0, 1]] = rebuilt.stem.weight[[1, 0]].clone()
    with pytest.raises(AssertionError, match="outputs differ"):
        assert_same_function(model, rebuilt, x)


def test_a_model_with_nan_weights_is_refused_by_name_before_anything_changes():
    """prune_oneshot (and the engine's dry run and prunes) said "rebuilding the pruned model failed
    (... differs ... by nan) ... Pass these layers in ignored_layers", which led nowhere."""
    from lightning_ssr import prune_oneshot

    torch.manual_seed(0)
    model = SmallResidualCNN()
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^the model's fc1.weight holds NaN or infinity: the training diverged"):
        prune_oneshot(model, torch.randn(2, 3, 16, 16), {"macs": 0.5})
    after = model.state_dict()
    assert all(torch.equal(before[k].nan_to_num(), after[k].nan_to_num()) for k in before)
    assert model.conv_a.out_channels == 12


class BiasFreeShuffle(nn.Module):
    """Bias-free convolutions and fresh BatchNorms around a channel shuffle (which the graph maps
    wrongly): every activation of an all-zero input is zero."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)  # a channel shuffle
        return self.head(torch.relu(self.b2(self.c2(x)))).mean((2, 3))


def test_an_all_zero_example_does_not_make_the_check_compare_zeros():
    """README's own example input was torch.zeros: on a network without biases every activation is
    zero, masked and rebuilt agreed on zeros, and a wrong mapping passed (off by 0.064 on other
    inputs: probe). The check runs such an example as random values of its shape."""
    from lightning_ssr import prune_oneshot
    from lightning_ssr.structure.groups import UnsupportedLayerError
    from lightning_ssr.structure.surgery import informative_example

    torch.manual_seed(0)
    model = BiasFreeShuffle().eval()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(UnsupportedLayerError, match="differs from the masked model's"):
        prune_oneshot(model, torch.zeros(1, 3, 16, 16), {"macs": 0.5})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())

    zeros, batch = torch.zeros(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4)
    state = torch.get_rng_state()
    varied = informative_example((zeros, batch, torch.arange(4)))
    assert varied[0].dtype == torch.float64 and varied[0].shape == zeros.shape and varied[0].unique().numel() > 1
    assert varied[1] is batch and torch.equal(varied[2], torch.arange(4))  # (data, and what is no float, as given)
    assert torch.equal(informative_example({"x": zeros})["x"], varied[0])  # (seeded: the same each time)
    pair = collections.namedtuple("Pair", "image mask")(zeros, batch)  # (a namedtuple's fields, review)
    assert type(informative_example(pair)).__name__ == "Pair" and informative_example(pair).mask is batch
    assert torch.equal(torch.get_rng_state(), state)
