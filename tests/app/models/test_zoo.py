"""Every zoo model: forward on 28x28 grayscale and 32x32 RGB, masked == rebuilt, plan round trip."""

import copy
import io

import pytest
import torch

from lightning_ssr.app.models import MODELS, build_model
from lightning_ssr.structure import apply_plan, find_channel_groups, plan_from_support, prune_channels
from lightning_ssr.structure.surgery import mask_channels
from tests.nets import random_keep_masks, randomize_bn
from tests.numerics import assert_same_function

INPUTS = {"gray28": (1, 28), "rgb32": (3, 32)}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("inp", sorted(INPUTS))
def test_forward_shape(name, inp):
    c, s = INPUTS[inp]
    model = build_model(name, in_channels=c, num_classes=7, input_size=s).eval()
    with torch.no_grad():
        assert model(torch.randn(2, c, s, s)).shape == (2, 7)



@pytest.mark.parametrize("name", sorted(MODELS))
def test_masked_and_rebuilt_models_agree_and_the_plan_replays(name):
    c, s = INPUTS["gray28"] if name == "lenet5" else INPUTS["rgb32"]
    torch.manual_seed(0)
    model = build_model(name, in_channels=c, num_classes=10, input_size=s)
    randomize_bn(model)
    x = torch.randn(2, c, s, s)
    groups = find_channel_groups(model, x)
    assert groups, name
    support = random_keep_masks(groups, 0)
    masked = copy.deepcopy(model)
    mask_channels(dict(masked.named_parameters()), groups, support)
    masked.eval()
    rebuilt = copy.deepcopy(masked)
    plan = plan_from_support(x.shape, support, groups)
    prune_channels(rebuilt, x, plan.kept, plan.sizes)
    rebuilt.eval()
    assert sum(p.numel() for p in rebuilt.parameters()) < sum(p.numel() for p in model.parameters())
    assert_same_function(masked, rebuilt, x)

    buffer = io.BytesIO()
    torch.save({"state_dict": rebuilt.state_dict(), "pruning_plan": plan.to_dict()}, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    fresh = build_model(name, in_channels=c, num_classes=10, input_size=s)
    apply_plan(fresh, ckpt["pruning_plan"])
    fresh.load_state_dict(ckpt["state_dict"])
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), rebuilt(x))
