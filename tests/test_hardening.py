"""Fail before training, never corrupt: the dry run, the numerical rebuild check, exact restore,
and the bad-input table (every refused case raises before the first optimizer step and leaves
the model's state_dict bitwise unchanged)."""

import collections
import copy
import json
import re
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import callbacks as lightning_callbacks
from lightning.pytorch.callbacks import ModelPruning, StochasticWeightAveraging
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_ssr import Pruning, PruningSchedule, SSRPruning, UnsupportedLayerError
from lightning_ssr.methods.oneshot import OneShot
from lightning_ssr.methods.ssr import SSR as SSRMethod
from lightning_ssr.structure import find_channel_groups, prune_channels
from lightning_ssr.structure.surgery import mask_channels
from tests.nets import AuxHeadCNN, GroupedTransposed, PairSum, SmallResidualCNN, TiedBranches
from tests.numerics import assert_same_function

# the tiny networks here have coarse steps: a target whole channels cannot come within 2% of is
# warned of (tests/test_allocation.py), which is not what these tests are about
pytestmark = pytest.mark.filterwarnings("ignore:target .* the closest the channel counts come below it")


class ChannelShuffleNet(nn.Module):
    def __init__(self, groups=3):
        super().__init__()
        self.g = groups
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.c2 = nn.Conv2d(12, 12, 3, padding=1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        n, c, h, w = x.shape
        x = x.view(n, self.g, c // self.g, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


class SliceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.c2 = nn.Conv2d(5, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.c1(x))[:, :5]
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


class FrontPadNet(nn.Module):
    """Two zero channels padded in front of c1's: the dependency graph maps c1's channel i to c2's
    input i, not i + 2. Kept alone, c1's last channel happens to map right; any two do not."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(18, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = nn.functional.pad(torch.relu(self.bn1(self.c1(x))), (0, 0, 0, 0, 2, 0))
        return self.fc(torch.relu(self.c2(x)).mean((2, 3)))


class DictInputNet(nn.Module):
    """forward() takes a dict; the engine traces forward(tensor), which cannot work."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, batch):
        if not isinstance(batch, dict):
            raise TypeError("DictInputNet.forward takes a dict")
        return self.fc(torch.relu(self.c1(batch["image"])).mean((2, 3)))


class Lit(pl.LightningModule):
    def __init__(self, net, dict_input=False):
        super().__init__()
        self.net = net
        self.dict_input = dict_input

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.dict_input:
            return F.cross_entropy(self({"image": batch["image"]}), batch["label"])
        x, y = batch
        out = self(x)
        return F.cross_entropy(out[0] if isinstance(out, tuple) else out, y)  # FeatureNet: (logits, features)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class FeatureNet(nn.Module):
    """Returns a feature map beside the logits: its width is the interface, set by ``c2``."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.c2 = nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        features = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(features.mean((2, 3))), features


def _data(dict_input=False):
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, 8, 8, generator=gen), torch.randint(0, 5, (32,), generator=gen)
    if dict_input:
        return DataLoader([{"image": a, "label": b} for a, b in zip(x, y)], batch_size=8)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def _trainer(tmp_path, callbacks, max_epochs=3):
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                      callbacks=callbacks)


ONESHOT = {"schedule": PruningSchedule(sparsify_epochs=0, finetune_epochs=2), "verbose": False}
SSR = {"schedule": PruningSchedule(warmup_epochs=1, sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=2),
       "verbose": False}

def with_normed(layer: str, norm: str) -> SmallResidualCNN:
    """SmallResidualCNN whose ``layer`` computes its weight from other parameters: ``weight_norm`` and
    ``spectral_norm`` parametrizations, the older ``torch.nn.utils.weight_norm`` (weight_g, weight_v),
    or a ``torch.nn.utils.prune`` mask (weight_orig * weight_mask)."""
    net = SmallResidualCNN()
    if norm == "prune_mask":  # torch.nn.utils.prune, as Lightning's ModelPruning leaves it
        torch.nn.utils.prune.l1_unstructured(getattr(net, layer), "weight", amount=0.3)
    elif norm == "weight_g_v":
        with warnings.catch_warnings():  # deprecated in favour of the parametrization, still in use
            warnings.simplefilter("ignore")
            torch.nn.utils.weight_norm(getattr(net, layer))
    else:
        getattr(torch.nn.utils.parametrizations, norm)(getattr(net, layer))
    return net


class NormNet(nn.Module):
    """conv -> ``norm`` (over its 16 channels) -> conv -> linear, or with ``norm="layer"`` a linear ->
    LayerNorm -> linear head."""

    def __init__(self, norm):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.norm = nn.GroupNorm(norm, 16) if isinstance(norm, int) else nn.Identity()
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 16)
        self.ln = nn.LayerNorm(16) if norm == "layer" else nn.Identity()
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.norm(self.c1(x))))).mean((2, 3))
        return self.fc2(torch.relu(self.ln(self.fc1(x))))


class AfterConvNet(nn.Module):
    """conv -> ``kind`` -> ReLU -> conv -> linear: what the first conv's channels pass through before
    the next layer reads them (a norm, an activation, a learned threshold subtracted)."""

    def __init__(self, kind):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.after = {"prelu": nn.PReLU(), "instance_norm_running": nn.InstanceNorm2d(16, affine=True,
                                                                                       track_running_stats=True),
                      "batch_norm_plain": nn.BatchNorm2d(16, affine=False)}.get(kind, nn.Identity())
        self.shift = nn.Parameter(torch.zeros(1)) if kind.startswith("shift") else None  # (0: a removed channel stays 0)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 5)
        self.temperature = nn.Module()  # (a module of its own, whose parameter moves no removed channel)
        self.temperature.value = nn.Parameter(torch.ones(1)) if kind == "shift_and_temperature" else None

    def forward(self, x):
        x = self.after(self.c1(x))
        x = torch.relu(x - self.shift if self.shift is not None else x)
        out = self.fc(torch.relu(self.c2(x)).mean((2, 3)))
        return out if self.temperature.value is None else out / self.temperature.value


class UpdateFails(SSRMethod):
    """A method whose proximal step fails on this model (as SSR's once did on channels_last weights)."""

    def update(self):
        raise RuntimeError("view size is not compatible with input tensor's size and stride")


class MaskTooShort(OneShot):
    """A method whose masks do not match the groups it was given."""

    def select(self, keep):
        return {name: mask[:-1] for name, mask in super().select(keep).items()}


class MasksByModuleName(OneShot):
    """Masks keyed by something other than group.name (a newcomer's first try)."""

    def select(self, keep):
        return {f"layer:{name}": mask for name, mask in super().select(keep).items()}


class KeepsAll(OneShot):
    """select() that ignores the counts it is given."""

    def select(self, keep):
        return {name: torch.ones_like(mask) for name, mask in super().select(keep).items()}


class FloatMasks(OneShot):
    def select(self, keep):
        return {name: mask.float() for name, mask in super().select(keep).items()}


class RowMasks(OneShot):
    """Masks of the right count in a (1, n) shape (flattened, unasked, before: probe)."""

    def select(self, keep):
        return {name: mask.view(1, -1) for name, mask in super().select(keep).items()}


class MasksWithAnExtra(OneShot):
    """Every group's mask, and one more for a name that is no group (ignored silently: probe)."""

    def select(self, keep):
        return {**super().select(keep), "net.head": torch.ones(5, dtype=torch.bool)}


class UpdateReturnsList(SSRMethod):
    def update(self):
        return [super().update()]


class ReadyReturnsBool(SSRMethod):
    def ready(self):
        return super().ready()[0]


class StateWithADefaultdict(SSRMethod):
    def state_dict(self):
        return {**super().state_dict(), "seen": collections.defaultdict(int)}


class OneShotStateWithADefaultdict(OneShot):
    """A one-shot method's state: it was neither rehearsed nor saved (only sparsifying methods' was)."""

    def state_dict(self):
        return {"seen": collections.defaultdict(int)}


class SetupScalesTheModel(OneShot):
    def setup(self, context):
        super().setup(context)
        with torch.no_grad():
            context.model.net.stem.weight.mul_(2)


class NoChannelValues(SSRMethod):
    def allocation_scores(self):
        return None


class ChannelValuesCutShort(SSRMethod):
    def allocation_scores(self):
        return {name: values[:-1] for name, values in super().allocation_scores().items()}


class AfterRebuildFails(SSRMethod):
    def after_rebuild(self, model, plan):
        raise ValueError("the validation data went away")


# (id, network factory, callback factory, expected error, text the message must contain)
REFUSED_AT_SETUP = [
    ("channel_shuffle", ChannelShuffleNet, lambda: Pruning("oneshot", target={"macs": 0.5}, **ONESHOT),
     UnsupportedLayerError, "dry run at set-up"),
    ("slice", SliceNet, lambda: Pruning("oneshot", target={"macs": 0.5}, **ONESHOT),
     UnsupportedLayerError, "ignored_layers"),
    # the structure SSR learns is not known at set-up: the dry run's copies (floors of one channel,
    # then half of each layer) find the wrong mapping, not the prune after the sparsify phase
    ("front_pad_learned_structure", FrontPadNet, lambda: Pruning("ssr_l20", target={"macs": 0.5}, **SSR),
     UnsupportedLayerError, "dry run at set-up, before training: rebuilding the pruned model failed"),
    ("lam_unknown_layer", SmallResidualCNN,
     lambda: Pruning("ssr_l21", method_kwargs={"lam": {"net.nope": 0.1}}, **SSR), ValueError, "unknown ['net.nope']"),
    ("ignored_unknown_layer", SmallResidualCNN,
     lambda: Pruning("oneshot", target={"macs": 0.5}, ignored_layers=["net.nope"], **ONESHOT),
     ValueError, "net.nope"),
    ("everything_ignored", SmallResidualCNN,
     lambda: Pruning("oneshot", target={"macs": 0.5}, ignored_layers=["net"], **ONESHOT), ValueError,
     "found no prunable filters in the model: ignored_layers (net) leaves no layer"),
    ("rates_list_too_short", SmallResidualCNN, lambda: Pruning("oneshot", target={"rates": [0.5]}, **ONESHOT),
     ValueError, "1 rates given for a model with 5 convolutions (net.stem, net.conv_a, net.conv_b, net.dw, net.mix"),
    ("rates_unknown_layer", SmallResidualCNN,
     lambda: Pruning("oneshot", target={"rates": {"net.nope": 0.5}}, **ONESHOT), ValueError, "['net.nope']"),
    ("target_unreachable", SmallResidualCNN,
     lambda: Pruning("oneshot", target={"macs": 0.01}, min_channels=4, **ONESHOT), ValueError, "too small"),
    *[(f"{norm}_{layer}", lambda norm=norm, layer=layer: with_normed(layer, norm),
       lambda: Pruning("oneshot", target={"macs": 0.5}, **ONESHOT), UnsupportedLayerError,
       f"layer 'net.{layer}' ({cls}) has no weight parameter of its own")
      for norm, layer, cls in [("weight_norm", "conv_a", "ParametrizedConv2d"),
                               ("spectral_norm", "mix", "ParametrizedConv2d"), ("weight_g_v", "stem", "Conv2d"),
                               ("prune_mask", "stem", "Conv2d")]],
    ("prune_mask_remedy", lambda: with_normed("stem", "prune_mask"),
     lambda: Pruning("oneshot", target={"macs": 0.5}, **ONESHOT), UnsupportedLayerError,
     ("torch.nn.utils.prune (or Lightning's ModelPruning) masks it: weight = weight_orig * weight_mask, recomputed "
     "before each forward; the rebuild slices plain parameters and cannot follow it. Remove it for the pruning "
     "(torch.nn.utils.prune.remove(module, 'weight')")),
    *[(name, net, lambda: Pruning("oneshot", target={"macs": 0.5}, **ONESHOT), UnsupportedLayerError, text)
      for name, net, text in [
          ("channels_the_tracer_loses", PairSum, "before 'net.conv2' reads them"),
          ("grouped_transposed_conv", GroupedTransposed,
           "layer 'net.up' (ConvTranspose2d, groups=2) is a grouped transposed convolution"),
          ("tied_weight", TiedBranches, "tied parameters (one tensor held by several layers: net.a.weight, net.b.weight)")]],
    ("bn_scale_without_batchnorm", SmallResidualCNN, lambda: Pruning("bn_scale", target={"macs": 0.5}, **SSR),
     ValueError, "have no BatchNorm. Pass ['net.fc1', 'net.mix'] in ignored_layers"),
    ("group_norm", lambda: NormNet(4), lambda: Pruning("oneshot", target={"macs": 0.5}, **ONESHOT),
     UnsupportedLayerError, "layer 'net.norm' (GroupNorm, 4 groups of 4 channels) normalizes several channels together"),
    ("instance_norm_running_statistics", lambda: AfterConvNet("instance_norm_running"),
     lambda: Pruning("oneshot", target={"macs": 0.5}, **ONESHOT), UnsupportedLayerError,
     ("layer 'net.after' (InstanceNorm2d, track_running_stats=True) normalizes the output channels of 'net.c1' with "
      "running statistics")),
    # zero at the initial values only: refused at the prune after the sparsify phase, before (probe)
    ("learned_threshold", lambda: AfterConvNet("shift_and_temperature"),
     lambda: Pruning("l1", target={"macs": 0.5}, **SSR),
     UnsupportedLayerError, ("the rebuild holds with the model's initial values, but not once training moves "
                             "'net.shift' (tried with them moved)")),
    ("batch_norm_without_affine", lambda: AfterConvNet("batch_norm_plain"),
     lambda: Pruning("ssr_l20", target={"macs": 0.5}, **SSR), UnsupportedLayerError,
     ("but not once training moves 'net.after.running_mean', 'net.after.running_var' (tried with them moved): a "
      "removed channel is zero now only because of their initial values, and the prune after training would fail. "
      "A norm layer without affine parameters maps a removed (zero) channel to -running_mean / std: build it with "
      "affine=True")),
    ("returned_features", FeatureNet, lambda: Pruning("oneshot", target={"macs": 0.5}, **ONESHOT),
     UnsupportedLayerError, "An output of forward() carries the channels of ['net.c2']"),
    ("method_update_fails", SmallResidualCNN,
     lambda: Pruning(UpdateFails("l20", rho=0.5), target={"macs": 0.5}, **SSR), RuntimeError,
     ("pruning method 'ssr_l20' failed in update(), rehearsed at set-up on a copy of the model with zero gradients, "
      "before training (the fit runs the same hook): RuntimeError: view size is not compatible")),
    ("method_masks_under_other_names", SmallResidualCNN,
     lambda: Pruning(MasksByModuleName(), target={"macs": 0.5}, **ONESHOT), RuntimeError,
     "'layer:net.mix'], which are no groups (masks are keyed by group.name)"),
    ("method_mask_wrong_size", SmallResidualCNN, lambda: Pruning(MaskTooShort(), target={"macs": 0.5}, **ONESHOT),
     RuntimeError, "failed in select(), rehearsed at set-up"),
    ("method_after_rebuild_fails", SmallResidualCNN,
     lambda: Pruning(AfterRebuildFails("l21", rho=0.5), target={"macs": 0.5}, **SSR), RuntimeError,
     ("failed in after_rebuild(), rehearsed at set-up on a copy of the model with zero gradients, before training "
      "(the fit runs the same hook): ValueError: the validation data went away")),
    ("method_keeps_other_counts", SmallResidualCNN, lambda: Pruning(KeepsAll(), target={"macs": 0.5}, **ONESHOT),
     RuntimeError, "failed in select(), rehearsed at set-up"),
    ("method_float_masks", SmallResidualCNN, lambda: Pruning(FloatMasks(), target={"macs": 0.5}, **ONESHOT),
     RuntimeError, "select() returned a torch.float32 mask for group"),
    ("method_masks_of_two_dimensions", SmallResidualCNN, lambda: Pruning(RowMasks(), target={"macs": 0.5}, **ONESHOT),
     RuntimeError, "select() returned a mask of shape (1, 16) for group 'net.fc1', which needs a 1-D bool tensor"),
    ("method_masks_with_an_extra_name", SmallResidualCNN,
     lambda: Pruning(MasksWithAnExtra(), target={"macs": 0.5}, **ONESHOT), RuntimeError,
     "select() returned masks for ['net.head'], which are no groups of the model"),
    ("method_update_returns_a_list", SmallResidualCNN,
     lambda: Pruning(UpdateReturnsList("l20", rho=0.5), target={"macs": 0.5}, **SSR), RuntimeError,
     "failed in update(), rehearsed at set-up"),
    ("method_ready_returns_a_bool", SmallResidualCNN,
     lambda: Pruning(ReadyReturnsBool("l20", rho=0.5), target={"macs": 0.5}, **SSR), RuntimeError,
     "ready() must return a pair (bool, reason: str), got False"),
    ("method_state_a_checkpoint_cannot_hold", SmallResidualCNN,
     lambda: Pruning(StateWithADefaultdict("l20", rho=0.5), target={"macs": 0.5}, **SSR), RuntimeError,
     ("failed in state_dict(), rehearsed at set-up on a copy of the model with zero gradients, before training (the "
      "fit runs the same hook): RuntimeError: its state_dict() cannot go through a checkpoint (saved with "
      "torch.save, read back with torch.load(weights_only=True)): it holds a value of type "
      "collections.defaultdict")),
    ("one_shot_method_state_a_checkpoint_cannot_hold", SmallResidualCNN,
     lambda: Pruning(OneShotStateWithADefaultdict(), target={"macs": 0.5}, **ONESHOT), RuntimeError,
     "failed in state_dict(), rehearsed at set-up"),
    ("method_setup_changes_the_model", SmallResidualCNN,
     lambda: Pruning(SetupScalesTheModel(), target={"macs": 0.5}, **ONESHOT), RuntimeError,
     "pruning method 'oneshot': setup() changed the model (changed ['net.stem.weight'])"),
    ("method_learns_no_structure", SmallResidualCNN,
     lambda: Pruning(NoChannelValues("l21", rho=0.5), target={"macs": 0.5}, **SSR), RuntimeError,
     "failed in allocation_scores(), rehearsed at set-up"),
    # (it said "no values (or the wrong number)": how many, and how many it needs: probe)
    ("method_channel_values_cut_short", SmallResidualCNN,
     lambda: Pruning(ChannelValuesCutShort("l21", rho=0.5), target={"macs": 0.5}, **SSR), RuntimeError,
     ("allocation_scores()'s score of group 'net.fc1' holds 15 values for its 16 channels (a Tensor): give one "
      "finite value per channel, as a tensor")),
    ("layer_norm", lambda: NormNet("layer"), lambda: Pruning("l1", target={"filters": 0.5}, **ONESHOT),
     UnsupportedLayerError, "layer 'net.ln' (LayerNorm, normalized_shape (16,)) normalizes several channels together"),
    # it said "rebuilding the pruned model failed (output 0 differs ... by nan) ... Pass these layers in ignored_layers"
    ("infinite_weight", lambda: _with(SmallResidualCNN(), "conv_a.weight", float("inf")),
     lambda: Pruning("l1", target={"macs": 0.5}, **ONESHOT), ValueError,
     "the model's net.conv_a.weight holds NaN or infinity: the training diverged"),
    # it said "allocation='global': the importance scores of group 'net.dw' are not finite"
    ("infinite_weight_global", lambda: _with(SmallResidualCNN(), "stem.weight", float("inf")),
     lambda: Pruning("l1", target={"macs": 0.5}, allocation="global", **ONESHOT), ValueError,
     "the model's net.stem.weight holds NaN or infinity: the training diverged"),
    ("infinite_running_variance", lambda: _with(SmallResidualCNN(), "bn_a.running_var", float("inf")),
     lambda: Pruning("ssr_l20", target={"macs": 0.5}, **SSR), ValueError,
     "the model's net.bn_a.running_var holds NaN or infinity"),
]


@pytest.mark.parametrize("make", [lambda p: torch.optim.Adafactor(p, lr=0.01), lambda p: torch.optim.LBFGS(p, lr=0.1)],
                         ids=["adafactor", "lbfgs"])
def test_an_optimizer_whose_state_a_prune_cannot_slice_is_refused_before_the_first_step(tmp_path, make):
    """Adafactor's factored moments and LBFGS's flat history stayed at the dense sizes: the whole
    sparsify phase ran, then the first step after the prune failed in torch with a size mismatch."""

    class Other(Lit):
        def configure_optimizers(self):
            return make(self.parameters())

    torch.manual_seed(0)
    _refused_before_the_first_step(tmp_path, Other(SmallResidualCNN()), Pruning("ssr_l20", target={"macs": 0.5}, **SSR),
                                   TypeError, r"optimizer (Adafactor|LBFGS) keeps state that is not shaped like each "
                                              r"parameter \(factored or flat\), which a prune cannot slice")


class AuxLit(Lit):
    """Deep supervision: the training step adds the loss of a head that forward() never calls."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y) + 0.3 * F.cross_entropy(self.net.aux_logits(x), y)


UNSEEN_HEAD = "layer 'net.aux' (Conv2d, 12 inputs) trains, but forward() did not use it when the engine traced it"


def test_a_head_forward_never_calls_is_warned_of_before_the_first_step(tmp_path):
    """An auxiliary head only training_step uses is invisible to the trace of forward(): the prune
    cut the channels it read, and its first use after the prune failed with a shape error, after
    the whole sparsify phase. Which channels it reads cannot be known before training (a refusal
    caught attention layers and functional heads), so the set-up warns, naming the layers."""
    torch.manual_seed(0)
    callback = Pruning("oneshot", target={"macs": 0.5}, **ONESHOT)
    trainer = _trainer(tmp_path, [callback])

    class Stop(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            raise RuntimeError("stop")  # after the callback's set-up (it comes first), before the first step

    trainer.callbacks.append(Stop())
    with pytest.warns(UserWarning, match=re.escape(UNSEEN_HEAD)) as record, pytest.raises(RuntimeError, match="stop"):
        trainer.fit(AuxLit(AuxHeadCNN()), _data())
    assert trainer.global_step == 0
    said = next(str(w.message) for w in record if UNSEEN_HEAD in str(w.message))
    assert "If training_step feeds it the channels of 'net.conv_a'" in said
    assert "ignored_layers=['net.conv_a']" in said and "pass 'net.aux' in ignored_layers to say so" in said


def test_a_head_forward_never_calls_trains_through_the_prune_once_its_channels_are_kept_whole(tmp_path):
    """The warning's first remedy: ``conv_a``'s channels, which the head reads, are left whole;
    the other layers are pruned and the training step's head goes on reading 12 channels."""
    torch.manual_seed(0)
    model = AuxLit(AuxHeadCNN())
    callback = Pruning("oneshot", target={"macs": 0.7}, ignored_layers=["net.conv_a"], **ONESHOT)
    trainer = _trainer(tmp_path, [callback])
    trainer.fit(model, _data())
    assert trainer.global_step == 3 * 4 and callback.result.events
    assert model.net.conv_a.out_channels == 12 and model.net.stem.out_channels < 8
    assert not any("did not use it" in w for w in callback.result.warnings)


@pytest.mark.parametrize("how", ["ignored", "frozen", "not_trained"])
def test_a_head_forward_never_calls_is_not_warned_of_where_it_cannot_be_concerned(tmp_path, how):
    """Named in ignored_layers (it reads no pruned channel), frozen, or held by no optimizer (a
    teacher, an average): no warning, and the model prunes with the head untouched."""

    class Holds(Lit):
        def configure_optimizers(self):
            return torch.optim.SGD([p for n, p in self.named_parameters() if not n.startswith("net.aux.")], lr=0.05)

    torch.manual_seed(0)
    model = (Holds if how == "not_trained" else Lit)(AuxHeadCNN())
    if how == "frozen":
        model.net.aux.requires_grad_(False)
    aux = copy.deepcopy(model.net.aux.state_dict())
    callback = Pruning("oneshot", target={"macs": 0.5}, ignored_layers=["net.aux"] if how == "ignored" else [],
                       **ONESHOT)
    _trainer(tmp_path, [callback]).fit(model, _data())
    assert callback.result.events and model.net.conv_a.out_channels < 12
    assert not any("did not use it" in w for w in callback.result.warnings)
    assert all(torch.equal(aux[k], v) for k, v in model.net.aux.state_dict().items())


class Attention(nn.Module):
    """nn.MultiheadAttention calls its out_proj through a function, not as a module; and a cosine
    head reads its weight functionally. Both are used by forward()."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        tokens = x.flatten(2).transpose(1, 2)
        y, _ = self.att(tokens, tokens, tokens)
        return F.linear(F.normalize(y.mean(1), dim=1), F.normalize(self.head.weight, dim=1))


def test_layers_forward_uses_through_a_function_are_not_taken_for_unseen_ones():
    from lightning_ssr.structure.groups import unseen_readers

    torch.manual_seed(0)
    net, x = Attention(), torch.randn(2, 3, 8, 8)
    groups = find_channel_groups(net, x, ["c2"])
    assert [g.name for g in groups] == ["c1"] and groups[0].size == 16
    assert unseen_readers(net, x, groups) == []
    assert unseen_readers(AuxHeadCNN(), torch.randn(2, 3, 8, 8),
                          find_channel_groups(AuxHeadCNN(), torch.randn(2, 3, 8, 8)))[0].startswith(
        "layer 'aux' (Conv2d, 12 inputs) trains, but forward() did not use it")
    flat = AuxHeadCNN()
    flat.aux = nn.Linear(12 * 2 * 2, 5)  # a head on conv_a's channels pooled to 2x2 and flattened
    said = unseen_readers(flat, torch.randn(2, 3, 8, 8), find_channel_groups(flat, torch.randn(2, 3, 8, 8)))
    assert len(said) == 1 and said[0].startswith("layer 'aux' (Linear, 48 inputs)") and "'conv_a'" in said[0]


class FactoredMomentum(torch.optim.Optimizer):
    """An optimizer of another library (not torch.optim) that keeps, for each matrix or kernel, one
    moment per output row, as a factored optimizer does: a prune cannot slice that state."""

    def __init__(self, params, lr=0.01):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if p.dim() > 1:
                    rows = p.grad.pow(2).flatten(1).mean(1, keepdim=True)
                    state["row_moment"] = 0.9 * state.get("row_moment", rows) + 0.1 * rows
                    scale = state["row_moment"].view(-1, *[1] * (p.dim() - 1)).add(1e-8).rsqrt()
                    p.add_(p.grad * scale, alpha=-group["lr"])
                else:
                    p.add_(p.grad, alpha=-group["lr"])


class OtherSGD(torch.optim.SGD):
    """An optimizer of another library whose state is per element, like SGD's."""


def test_another_librarys_optimizer_with_factored_state_is_refused_before_the_first_step(tmp_path):
    """Its state appears at its first step, so the check by type cannot see it: the whole sparsify
    phase ran, then the prune refused the state of the first layer it cut. One step on a copy of
    the optimizer, at set-up, shows the state's shapes."""

    class Other(Lit):
        def configure_optimizers(self):
            return FactoredMomentum(self.parameters())

    torch.manual_seed(0)
    _refused_before_the_first_step(
        tmp_path, Other(SmallResidualCNN()), Pruning("ssr_l20", target={"macs": 0.5}, **SSR), ValueError,
        r"optimizer FactoredMomentum keeps state 'row_moment' of net\.\w+\.weight in shape \(\d+, 1\), not the "
        r"parameter's \(\d+, \d+(, 3, 3)?\): the prune cannot slice it")


def test_another_librarys_optimizer_with_per_element_state_prunes(tmp_path):
    class Other(Lit):
        def configure_optimizers(self):
            return OtherSGD(self.parameters(), lr=0.01, momentum=0.9)

    torch.manual_seed(0)
    model, callback = Other(SmallResidualCNN()), Pruning("oneshot", target={"macs": 0.5}, **ONESHOT)
    _trainer(tmp_path, [callback]).fit(model, _data())
    assert callback.result.events and 2.0 <= callback.result.macs_reduction <= 2.0 / 0.98  # met from below, within 2%


def _refused_before_the_first_step(tmp_path, model, callback, error, match=None, data=None):
    """Fit ``model`` with ``callback``: ``error`` (matching ``match``) before the first optimizer
    step, the model's state_dict unchanged. Returns the exception info."""
    before = copy.deepcopy(model.state_dict())
    trainer = _trainer(tmp_path, [callback])
    with pytest.raises(error, match=match) as info:
        trainer.fit(model, data if data is not None else _data())
    assert trainer.global_step == 0
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    return info


def _with(net: nn.Module, name: str, value: float) -> nn.Module:
    """``net`` with one element of its tensor ``name`` set to ``value``."""
    with torch.no_grad():
        dict([*net.named_parameters(), *net.named_buffers()])[name].view(-1)[0] = value
    return net


@pytest.mark.parametrize("case", REFUSED_AT_SETUP, ids=[c[0] for c in REFUSED_AT_SETUP])
def test_refused_before_the_first_step_with_the_model_unchanged(tmp_path, case):
    _, net, make_callback, error, text = case
    torch.manual_seed(0)
    info = _refused_before_the_first_step(tmp_path, Lit(net()), make_callback(), error)
    assert text in str(info.value)


@pytest.mark.parametrize("norm", ["weight_norm", "weight_g_v"])
def test_a_weight_normed_layer_the_message_names_can_be_left_out_and_the_rest_prunes(tmp_path, norm):
    """What the refusal says to do: pass the group's root in ignored_layers; the parametrized layer's
    channels stay whole (and its parametrization in place) while the other groups are pruned."""
    torch.manual_seed(0)
    model = Lit(with_normed("stem", norm))
    with pytest.raises(UnsupportedLayerError, match="layer 'net.stem'") as info:
        _trainer(tmp_path, [Pruning("oneshot", target={"filters": 0.7}, **ONESHOT)]).fit(model, _data())
    (root,) = re.findall(r"or pass '([^']+)' in ignored_layers", str(info.value))  # the stem's residual group
    pruning = Pruning("oneshot", target={"filters": 0.7}, ignored_layers=[root], **ONESHOT)
    _trainer(tmp_path, [pruning]).fit(model, _data())
    cut = {row["name"] for row in pruning.result.layers if row["after"] < row["before"]}
    assert cut and "net.stem" not in cut and model.net.stem.weight.shape[0] == 8
    assert torch.nn.utils.parametrize.is_parametrized(model.net.stem) == (norm == "weight_norm")


def test_a_returned_feature_map_can_keep_its_width_and_the_rest_prunes(tmp_path):
    """What the refusal says: the layer that sets the returned width, in ignored_layers."""
    torch.manual_seed(0)
    model = Lit(FeatureNet())
    pruning = Pruning("oneshot", target={"filters": 0.6}, ignored_layers=["net.c2"], **ONESHOT)
    _trainer(tmp_path, [pruning]).fit(model, _data())
    assert model.net.c1.out_channels < 12 and model.net(torch.randn(1, 3, 8, 8))[1].shape == (1, 8, 8, 8)


@pytest.mark.parametrize(("norm", "ignored"), [(16, []), (4, ["net.c1"])], ids=["one_channel_per_group", "ignored"])
def test_group_norm_of_one_channel_per_group_prunes_and_one_of_wider_groups_can_be_left_whole(tmp_path, norm, ignored):
    """The rebuild's numerical check passes (else the prune raises): a GroupNorm of one channel per
    group keeps one per group; a wider one, ignored as its refusal says, stays whole."""
    torch.manual_seed(0)
    model = Lit(NormNet(norm))
    pruning = Pruning("l1", target={"filters": 0.5}, ignored_layers=ignored, **ONESHOT)
    _trainer(tmp_path, [pruning]).fit(model, _data())
    gn = model.net.norm
    assert pruning.result is not None and model.net.c2.out_channels < 8
    assert (gn.num_groups, gn.num_channels) == ((model.net.c1.out_channels,) * 2 if norm == 16 else (4, 16))
    assert norm == 4 or model.net.c1.out_channels < 16


class SharedScale(nn.Module):
    """Logits scaled by a learned scalar that two modules hold (a parameter shared between them)."""

    def __init__(self):
        super().__init__()
        self.net = AfterConvNet("identity")
        self.first, self.second = nn.Module(), nn.Module()
        self.first.scale = nn.Parameter(torch.ones(1))
        self.second.scale = self.first.scale

    def forward(self, x):
        return self.net(x) * self.first.scale * self.second.scale


def test_a_parameter_two_modules_share_is_moved_once_and_the_model_prunes(tmp_path):
    """The dry run looked a shared parameter up under its second name and failed with a raw
    KeyError at set-up (review)."""
    from lightning_ssr.structure.surgery import moved_by_training

    torch.manual_seed(0)
    assert moved_by_training(SharedScale()) == ["first.scale"]
    model = Lit(SharedScale())
    pruning = Pruning("l1", target={"macs": 0.5}, **ONESHOT)
    _trainer(tmp_path, [pruning]).fit(model, _data())
    assert pruning.result is not None and model.net.net.c1.out_channels < 16


def test_a_prelu_of_one_shared_slope_prunes_and_keeps_its_slope(tmp_path):
    """nn.PReLU()'s one slope was cut as if it were per channel: a raw IndexError at set-up (probe).
    PReLU(0) = 0, so a removed channel stays zero: the layer before prunes, the slope stays whole."""
    torch.manual_seed(0)
    model = Lit(AfterConvNet("prelu"))
    with torch.no_grad():
        model.net.after.weight.fill_(-0.3)
    pruning = Pruning("l1", target={"macs": 0.5}, **ONESHOT)
    _trainer(tmp_path, [pruning]).fit(model, _data())
    assert pruning.result is not None and model.net.c1.out_channels < 16
    assert model.net.after.weight.shape == (1,) and model.net(torch.randn(2, 3, 8, 8)).shape == (2, 5)


class ConcatIntoGrouped(nn.Module):
    """Two branches joined by a concat that a grouped convolution reads: each branch holds whole
    groups of its input, so the groups stay equally wide only if both branches keep equal counts."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.mixed = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        joined = torch.cat([F.relu(self.a(x)), F.relu(self.b(x))], 1)
        return self.fc(F.relu(self.mixed(joined)).mean((2, 3)))


@pytest.mark.parametrize("method", ["ssr_l20", "l1"])
def test_a_concat_read_by_a_grouped_convolution_is_refused_before_the_first_step_naming_every_branch(tmp_path, method):
    """The graph maps some selections from such branches wrongly; the dry run did not catch every
    one, so a method that learns the structure could be refused only at its prune, after its
    sparsify epochs. Refused at set-up now, every branch named at once; with them in ignored_layers,
    as the message says, the grouped convolution's own filters are pruned (the rebuild checked)."""
    settings = SSR if method == "ssr_l20" else ONESHOT
    torch.manual_seed(0)
    info = _refused_before_the_first_step(tmp_path, Lit(ConcatIntoGrouped()),
                                          Pruning(method, target={"macs": 0.5}, **settings), UnsupportedLayerError)
    assert ("the grouped convolution 'net.mixed' (4 groups) reads a concat that holds the channels of 'net.a', "
            "'net.b'") in str(info.value)
    assert "Pass ['net.a', 'net.b'] in ignored_layers" in str(info.value)
    # a plan given to the rebuild names every branch too
    from lightning_ssr.structure import prune_channels

    with pytest.raises(UnsupportedLayerError, match=r"holds the channels of 'a', 'b'.*Pass \['a', 'b'\]"):
        prune_channels(ConcatIntoGrouped(), torch.randn(2, 3, 8, 8), {"a": list(range(4))})
    model = Lit(ConcatIntoGrouped())
    pruning = Pruning(method, target={"filters": 0.75}, ignored_layers=["net.a", "net.b"], **settings)
    _trainer(tmp_path, [pruning]).fit(model, _data())
    assert model.net.a.out_channels == model.net.b.out_channels == 8
    assert model.net.mixed.out_channels < 16 and model.net.mixed.out_channels % 4 == 0


def test_dict_input_model_is_refused_before_the_first_step(tmp_path):
    info = _refused_before_the_first_step(tmp_path, Lit(DictInputNet(), dict_input=True),
                                          Pruning("oneshot", target={"macs": 0.5}, **ONESHOT), Exception,
                                          "forward\\(\\) taking a dict", data=_data(dict_input=True))
    assert "unpack the batch in training_step" in str(info.value)  # not example_input=, a tensor, which cannot help


class PairInputNet(nn.Module):
    """forward() takes an (image, mask) pair; given the image alone, its BatchNorm raises a ValueError."""

    def __init__(self):
        super().__init__()
        self.c1, self.bn, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Linear(8, 5)

    def forward(self, pair):
        image, mask = pair
        return self.fc(self.bn(self.c1(image * mask)).mean((2, 3)))


def test_a_forward_that_raises_a_value_error_on_the_batch_tensor_gets_the_engines_advice(tmp_path):
    """A ValueError from the user's own forward() (here BatchNorm's "expected 4D input") came
    through raw: the engine's errors are ValueErrors too, and were let through as such."""
    _refused_before_the_first_step(tmp_path, Lit(PairInputNet()), Pruning("l1", target={"macs": 0.5}, **ONESHOT),
                                   ValueError, r"traces the model's forward\(\) on one input tensor of shape "
                                   r"\(2, 3, 8, 8\).*ValueError: expected 4D input \(got 3D input\).*example_input=")


def test_an_example_input_in_another_dtype_than_the_model_is_told_so(tmp_path):
    """Under precision="64-true" a float32 example_input failed the trace, and the advice was about
    forward() taking several inputs (probe): the dtypes are named now."""
    model = Lit(SmallResidualCNN())
    before = copy.deepcopy(model.state_dict())
    pruning = Pruning("l1", target={"macs": 0.5}, example_input=torch.randn(2, 3, 8, 8), **ONESHOT)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, precision="64-true",
                         callbacks=[pruning])
    with pytest.raises(ValueError, match=r"shape \(2, 3, 8, 8\) and dtype torch.float32 .* The model's parameters are "
                                         r"torch.float64: give the example in the model's dtype"):
        trainer.fit(model, _data())
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v.float()) for k, v in model.state_dict().items() if v.is_floating_point())


class ConvGRU(nn.Module):
    """Conv features read by a GRU, column by column: the tracer cannot follow c2's channels into it."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 8, 3, padding=1)
        self.gru, self.fc = nn.GRU(8, 6, batch_first=True), nn.Linear(6, 5)

    def forward(self, x):
        columns = F.relu(self.c2(F.relu(self.c1(x)))).mean(2).transpose(1, 2)  # (batch, width, channels)
        return self.fc(self.gru(columns)[0][:, -1])


def test_a_layer_feeding_a_recurrent_layer_is_named_and_ignoring_it_prunes_the_rest(tmp_path):
    """Before, torch-pruning's IndexError came out as advice to define forward(x), and no
    ignored_layers setting helped: the rebuild traced every group, the ignored one too."""
    torch.manual_seed(0)
    model = Lit(ConvGRU())
    before = copy.deepcopy(model.state_dict())
    trainer = _trainer(tmp_path, [Pruning("l1", target={"macs": 0.7}, **ONESHOT)])
    with pytest.raises(UnsupportedLayerError, match="output channels of 'net.c2' reach an operation the dependency "
                       "tracer .* cannot follow .*Pass 'net.c2' in ignored_layers"):
        trainer.fit(model, _data())
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pruning = Pruning("l1", target={"macs": 0.7}, ignored_layers=["net.c2"], **ONESHOT)
    _trainer(tmp_path, [pruning]).fit(model, _data())  # the rebuild's numerical check passed, or it raises
    assert model.net.c1.out_channels < 12 and model.net.c2.out_channels == 8
    assert pruning.result.pruned["macs"] <= 0.7 * pruning.result.dense["macs"]


class ChannelScale(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.s = nn.Parameter(torch.full((1, channels, 1, 1), 2.0))

    def forward(self, x):
        return x * self.s


class ScaledNet(nn.Module):
    """A learnable per-channel scale on c1's output (LayerScale-like), bare or in a module."""

    def __init__(self, wrapped):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(3, 12, 3, padding=1), nn.Conv2d(12, 8, 3, padding=1), nn.Linear(8, 5)
        self.scale = ChannelScale(12) if wrapped else nn.Parameter(torch.full((1, 12, 1, 1), 2.0))

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = self.scale(x) if isinstance(self.scale, nn.Module) else x * self.scale
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


@pytest.mark.parametrize("wrapped", [False, True], ids=["bare", "in_a_module"])
def test_a_per_channel_parameter_is_named_with_its_layer_and_ignoring_that_layer_prunes_the_rest(tmp_path, wrapped):
    """Before, the refusal named neither, advised ignoring a module wrapping the parameter (which
    changed nothing), and ignoring c1 failed too: the rebuild refused every group, the ignored one too."""
    torch.manual_seed(0)
    model = Lit(ScaledNet(wrapped))
    before = copy.deepcopy(model.state_dict())
    trainer = _trainer(tmp_path, [Pruning("l1", target={"macs": 0.7}, **ONESHOT)])
    param = "net.scale.s" if wrapped else "net.scale"
    with pytest.raises(UnsupportedLayerError, match=f"the parameter '{param}', a bare nn.Parameter used in forward"
                       r"\(\), is coupled to the output channels of 'net.c1'.*Pass 'net.c1' in ignored_layers"):
        trainer.fit(model, _data())
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    pruning = Pruning("l1", target={"macs": 0.7}, ignored_layers=["net.c1"], **ONESHOT)
    _trainer(tmp_path, [pruning]).fit(model, _data())  # the rebuild's numerical check passed, or it raises
    assert model.net.c1.out_channels == 12 and model.net.c2.out_channels < 8
    assert pruning.result.pruned["macs"] <= 0.7 * pruning.result.dense["macs"]


# Lightning >= 2.6 only (setup.cfg allows 2.2): the tests that use it are skipped without it
EMAWeightAveraging = getattr(lightning_callbacks, "EMAWeightAveraging", None)
needs_ema = pytest.mark.skipif(EMAWeightAveraging is None, reason="needs Lightning's EMAWeightAveraging (2.6+)")

# Lightning's callbacks that hold a copy of the model (or its parameters) from set-up on, which the
# rebuild leaves at the dense shapes: (id, callback, placed before Pruning in the list). WeightAveraging
# (EMAWeightAveraging) shares the fit: tests/test_pruning_averaging.py
DENSE_COPY = [
    pytest.param(("swa_first", lambda: StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1), True),
                 id="swa_first"),
    pytest.param(("swa_after", lambda: StochasticWeightAveraging(swa_lrs=0.01, swa_epoch_start=1), False),
                 id="swa_after"),
    pytest.param(("model_pruning", lambda: ModelPruning("l1_unstructured", amount=0.5), False), id="model_pruning"),
]


@pytest.mark.parametrize("case", DENSE_COPY)
def test_callbacks_holding_a_dense_copy_are_refused_before_the_first_step(tmp_path, case):
    """Without the check each of these fits failed with a shape error right after the prune."""
    _, make_other, first = case
    torch.manual_seed(0)
    model = Lit(SmallResidualCNN())
    before = copy.deepcopy(model.state_dict())
    other, pruning = make_other(), Pruning("oneshot", target={"macs": 0.5}, **ONESHOT)
    trainer = _trainer(tmp_path, [other, pruning] if first else [pruning, other])
    with pytest.raises(Exception, match=f"cannot share a fit with {type(other).__name__}") as info:
        trainer.fit(model, _data())
    assert "second fit" in str(info.value)
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("make_other", [lambda: Pruning("random", target={"macs": 0.5}, **ONESHOT),
                                        lambda: SSRPruning(regularizer="l20", flops_budget=0.5, **SSR)],
                         ids=["another_method", "ssr_preset"])
def test_a_second_pruning_callback_in_the_same_fit_is_refused_before_the_first_step(tmp_path, make_other):
    """Without the check the fit failed after the first prune: the second rebuild met the shapes the first left."""
    torch.manual_seed(0)
    model = Lit(SmallResidualCNN())
    before = copy.deepcopy(model.state_dict())
    trainer = _trainer(tmp_path, [Pruning("oneshot", target={"macs": 0.5}, **ONESHOT), make_other()])
    with pytest.raises(Exception, match="cannot share a fit with another") as info:
        trainer.fit(model, _data())
    assert "second fit" in str(info.value)
    assert trainer.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_two_pruning_callbacks_of_one_method_are_refused_by_lightning_as_documented(tmp_path):
    """They share a state_key: Lightning refuses them in Trainer(...), before any fit; the README's
    troubleshooting row and Pruning's docstring quote its message."""
    with pytest.raises(RuntimeError, match="Found more than one stateful callback of type `Pruning`"):
        _trainer(tmp_path, [Pruning("oneshot", target={"macs": 0.5}, **ONESHOT),
                            Pruning("oneshot", target={"macs": 0.25}, **ONESHOT)])


@pytest.mark.parametrize("make_other", [pytest.param(lambda: EMAWeightAveraging(), marks=needs_ema, id="ema"),
                                        pytest.param(lambda: ModelPruning("l1_unstructured", amount=0.5),
                                                     id="model_pruning")])
def test_a_second_fit_of_the_pruned_module_takes_those_callbacks(tmp_path, make_other):
    """What the refusal tells the user to do: prune in one fit, average (or mask) in the next."""
    torch.manual_seed(0)
    model = Lit(SmallResidualCNN())
    pruning = Pruning("oneshot", target={"macs": 0.5}, **ONESHOT)
    _trainer(tmp_path, [pruning], max_epochs=2).fit(model, _data())
    pruned = {k: v.shape for k, v in model.state_dict().items()}
    plain = copy.deepcopy(model)
    trainer = _trainer(tmp_path, [make_other()], max_epochs=1)
    trainer.fit(model, _data())
    assert trainer.global_step == 4
    _trainer(tmp_path, [], max_epochs=1).fit(plain, _data())
    after, last = model.state_dict(), plain.state_dict()
    assert {k: v.shape for k, v in after.items()} == pruned
    assert any(not torch.equal(last[k], after[k]) for k in last)  # averaged (masked), not the plain weights


BAD_ARGUMENTS = [
    (lambda: SSRPruning(regularizer="l20", flops_budget=0.5, rho_growth="x"), TypeError, "rho_growth"),
    (lambda: SSRPruning(rho=-1.0), ValueError, "rho"),
    (lambda: SSRPruning(rho=float("nan")), ValueError, "rho"),
    (lambda: SSRPruning(lam=-0.1), ValueError, "lam"),
    (lambda: SSRPruning(patience=1.5), TypeError, "patience"),
    (lambda: Pruning("oneshot", target={"macs": 1.5}), ValueError, "macs"),
    (lambda: Pruning("oneshot", target={"flops": 0.5}), ValueError, "flops"),
    (lambda: Pruning("oneshot"), ValueError, "needs a target"),
    (lambda: Pruning("nope", target={"macs": 0.5}), ValueError, "available"),
    (lambda: Pruning("ssr_l20", method_kwargs={"rhoo": 1}), TypeError, "rhoo"),
    (lambda: Pruning("oneshot", target={"macs": 0.5}, ignored_layers=[3]), TypeError, "ignored_layers"),
    (lambda: Pruning("oneshot", target={"macs": 0.5}, min_channels=0), ValueError, "min_channels"),
    (lambda: Pruning("oneshot", target={"macs": 0.5}, max_pruning_ratio=0), ValueError, "max_pruning_ratio"),
    (lambda: Pruning("ssr_l20", target={"macs": 0.5}, schedule={"sparsify_epochs": 0}), ValueError, "sparsify"),
    (lambda: PruningSchedule(update_every_n_steps=0), ValueError, "update_every_n_steps"),
    (lambda: PruningSchedule(finetune_epochs="3"), TypeError, "finetune_epochs"),
    (lambda: Pruning("oneshot", target={"rates": "__import__('os')"}), ValueError, "rate expression"),
    (lambda: Pruning("oneshot", target={"rates": {"net.conv_a": 1.0}}), ValueError, "rates must be in [0, 1)"),
]


@pytest.mark.parametrize("make, error, name", BAD_ARGUMENTS, ids=[b[2] for b in BAD_ARGUMENTS])
def test_bad_arguments_fail_in_init_and_name_the_argument(make, error, name):
    with pytest.raises(error) as info:
        make()
    assert name in str(info.value)


def test_ignored_layers_string_is_one_name_and_modules_are_accepted(tmp_path):
    torch.manual_seed(0)
    model = Lit(SmallResidualCNN(in_channels=3, num_classes=5))
    by_name = Pruning("oneshot", target={"macs": 0.5}, ignored_layers="net.conv_a", **ONESHOT)
    _trainer(tmp_path, [by_name]).fit(model, _data())
    assert model.net.conv_a.out_channels == 12  # ignored: whole
    model = Lit(SmallResidualCNN(in_channels=3, num_classes=5))
    by_module = Pruning("oneshot", target={"macs": 0.5}, ignored_layers=[model.net.conv_a], **ONESHOT)
    _trainer(tmp_path, [by_module]).fit(model, _data())
    assert model.net.conv_a.out_channels == 12
    assert model.net.stem.out_channels < 8 or model.net.mix.out_channels < 6  # others were pruned


def test_numerical_check_catches_a_wrong_rebuild_and_restores_bit_for_bit():
    torch.manual_seed(0)
    net = ChannelShuffleNet()
    example = torch.randn(2, 3, 8, 8)
    groups = find_channel_groups(net, example)
    state = copy.deepcopy(net.state_dict())
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}  # 6 of 12: the view still works
    with pytest.raises(UnsupportedLayerError) as info:
        prune_channels(net, example, kept, {g.name: g.size for g in groups})
    assert "restored unchanged" in str(info.value) and "c1" in str(info.value)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(p.shape == state[n].shape for n, p in net.named_parameters())


def test_rebuilt_model_equals_the_masked_model_numerically():
    torch.manual_seed(0)
    net = SmallResidualCNN(in_channels=3, num_classes=5)
    example = torch.randn(2, 3, 16, 16)
    groups = find_channel_groups(net, example)
    kept = {g.name: list(range(1, g.size, 2)) for g in groups}
    masked = copy.deepcopy(net)
    masks = {}
    for g in groups:
        m = torch.zeros(g.size, dtype=torch.bool)
        m[kept[g.name]] = True
        masks[g.name] = m
    mask_channels(dict(masked.named_parameters()), groups, masks)
    prune_channels(net, example, kept)
    assert_same_function(masked, net, torch.randn(4, 3, 16, 16))


def test_a_failing_rebuild_mid_fit_restores_model_and_optimizer_exactly(tmp_path, monkeypatch):
    """Force the real rebuild to fail after training (its numerical check reports a mismatch);
    model, buffers and optimizer state must be exactly as just before the attempt, and the
    error must say so truthfully."""
    import lightning_ssr.engine as engine_module
    from lightning_ssr.structure import surgery

    seen = {}
    real = surgery.prune_channels

    def recording(model, example, kept, sizes=None):
        seen["model"] = copy.deepcopy(model.state_dict())
        seen["optimizer"] = copy.deepcopy(trainer.optimizers[0].state_dict())
        return real(model, example, kept, sizes, _diagnose=False)

    monkeypatch.setattr(engine_module, "prune_channels", recording)
    monkeypatch.setattr(surgery, "_mismatch", lambda reference, outputs: "forced mismatch")
    torch.manual_seed(0)
    model = Lit(SmallResidualCNN(in_channels=3, num_classes=5))
    callback = Pruning("ssr_l20", target={"macs": 0.5}, method_kwargs={"rho": 0.5}, **SSR)
    trainer = _trainer(tmp_path, [callback])
    # the dry run and the method's rehearsal at set-up would catch the forced mismatch
    monkeypatch.setattr(callback.engine, "_dry_run", lambda *args: None)
    monkeypatch.setattr(callback.engine, "_rehearse", lambda *args: None)
    with pytest.raises(UnsupportedLayerError, match="restored unchanged"):
        trainer.fit(model, _data())
    assert trainer.global_step > 0  # it failed at the real prune, after training
    after = model.state_dict()
    assert seen["model"].keys() == after.keys() and all(torch.equal(seen["model"][k], after[k]) for k in after)
    opt, ref = trainer.optimizers[0].state_dict(), seen["optimizer"]
    assert opt["param_groups"] == ref["param_groups"]
    for i, s in ref["state"].items():
        for k, v in s.items():
            assert torch.equal(v, opt["state"][i][k]) if torch.is_tensor(v) else v == opt["state"][i][k]


def test_nan_loss_stops_at_that_step_and_the_last_checkpoint_stays_intact(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    class Exploding(Lit):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            return loss * float("nan") if self.global_step == 5 else loss  # in epoch 1 (4 steps per epoch)

    model = Exploding(SmallResidualCNN(in_channels=3, num_classes=5))
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=tmp_path,
                         callbacks=[Pruning("ssr_l20", target={"macs": 0.5}, **SSR), saver])
    with pytest.raises(FloatingPointError, match="optimizer step 6"):
        trainer.fit(model, _data())
    assert trainer.global_step == 6
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=0.ckpt"]
    state = torch.load(tmp_path / "ckpt" / "epoch=0.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# ------------------------------------------------------------ errors that used to hide
def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_failure_after_the_rebuild_restores_model_and_optimizer_and_says_so(tmp_path):
    """A method whose after_rebuild raises (FSM's compensation check, say): the prune is undone,
    model and optimizer exactly as just before it, and the error says so."""
    from lightning.pytorch.callbacks import Callback

    from lightning_ssr.methods.ssr import SSR

    class Failing(SSR):
        def after_rebuild(self, model, plan):
            if self is callback.method:  # (the set-up's rehearsal, on copies, passes)
                raise ValueError("the validation data went away")

    seen = {}

    class Record(Callback):  # runs before the pruning callback at the prune's first batch
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == SSR_SCHEDULE.prune_epoch() and "model" not in seen:
                seen["model"] = _state(pl_module)
                seen["optimizer"] = copy.deepcopy(trainer.optimizers[0].state_dict())

    torch.manual_seed(0)
    model = Lit(SmallResidualCNN(in_channels=3, num_classes=5))
    callback = Pruning(Failing("l20", rho=0.5), target={"macs": 0.5}, schedule=SSR_SCHEDULE, verbose=False)
    trainer = _trainer(tmp_path, [Record(), callback])
    with pytest.raises(RuntimeError, match="failed after the rebuild .*the validation data went away.*restored exactly"
                                           ".*It came from the method 'ssr_l20' in after_rebuild"):
        trainer.fit(model, _data())
    assert _same(seen["model"], model.state_dict())
    opt = trainer.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    restored, before = opt.state_dict(), seen["optimizer"]
    assert restored["param_groups"] == before["param_groups"]
    assert all(torch.equal(restored["state"][i][k], before["state"][i][k]) for i in before["state"]
               for k in before["state"][i])
    assert callback.events == [] and callback.plan is None


SSR_SCHEDULE = PruningSchedule(warmup_epochs=1, sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=2)


def test_out_of_memory_during_a_rebuild_is_reported_as_such_not_as_an_unsupported_layer(monkeypatch):
    from lightning_ssr.structure import surgery

    net = SmallResidualCNN(in_channels=3, num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    before = _state(net)
    real, calls = surgery.check_outputs, []

    def oom_on_the_check(model, inputs, precision=None):
        calls.append(1)
        if len(calls) == 2:  # the rebuilt model's outputs
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(model, inputs, precision)

    monkeypatch.setattr(surgery, "check_outputs", oom_on_the_check)
    groups = find_channel_groups(net, x)
    with pytest.raises(torch.OutOfMemoryError, match="out of memory while rebuilding.*restored unchanged"):
        prune_channels(net, x, {g.name: list(range(0, g.size, 2)) for g in groups})
    assert _same(before, net.state_dict())


def test_a_bug_during_a_rebuild_is_not_blamed_on_the_layers(monkeypatch):
    """An error that is not the structure's (here, in masking) keeps its own type and message."""
    from lightning_ssr.structure import surgery

    net = SmallResidualCNN(in_channels=3, num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    before = _state(net)
    monkeypatch.setattr(surgery, "mask_channels", lambda *a, **k: {}["missing"])
    groups = find_channel_groups(net, x)
    with pytest.raises(KeyError, match="missing"):
        prune_channels(net, x, {g.name: list(range(0, g.size, 2)) for g in groups})
    assert _same(before, net.state_dict())


def test_kept_channels_not_aligned_to_grouped_convolutions_are_refused_naming_the_cause():
    from lightning_ssr.structure import PlanMismatchError
    from tests.nets import SmallResNeXt

    net = SmallResNeXt()
    x = torch.randn(2, 3, 8, 8)
    groups = {g.name: g for g in find_channel_groups(net, x)}
    name = next(n for n, g in groups.items() if g.blocks > 1)
    before = _state(net)
    kept = {name: [0, 1, 2, 5, 9, 14]}  # blocks of 4: positions differ from block to block
    with pytest.raises(PlanMismatchError, match=r"grouped convolutions .* same positions.*align_blocks"):
        prune_channels(net, x, kept)
    assert _same(before, net.state_dict())


def test_fsm_refuses_at_set_up_a_validation_score_that_fails(tmp_path):
    def broken(model):
        raise KeyError("labels")

    torch.manual_seed(0)
    model = Lit(SmallResNeXt_with_bn())
    before = _state(model)
    callback = Pruning("fsm", target={"macs": 0.5}, evaluate=broken, **ONESHOT)
    trainer = _trainer(tmp_path, [callback])
    with pytest.raises(ValueError, match=r"fsm: compensate=True .* failed on the dense model \(KeyError.*evaluate="):
        trainer.fit(model, _data())
    assert trainer.global_step == 0 and _same(before, model.state_dict())


def SmallResNeXt_with_bn():
    from tests.nets import SmallResNeXt

    return SmallResNeXt(in_channels=3, num_classes=5)


def test_a_truncated_latency_cache_is_said_and_timed_again(tmp_path):
    from lightning_ssr.cost import count_cost
    from lightning_ssr.latency import latency_model

    net = SmallResidualCNN(in_channels=3, num_classes=5)
    x = torch.randn(2, 3, 16, 16)
    (tmp_path / "layers.json").write_text('{"truncated": [1, 2')
    with pytest.warns(UserWarning, match="latency cache .*layers.json.* unreadable .*timed again"):
        table = latency_model(net, x, find_channel_groups(net, x), count_cost(net, x), cache_dir=tmp_path, repeats=2)
    assert table.layers and json.loads((tmp_path / "layers.json").read_text())  # written anew, whole


def test_a_failed_batchnorm_fold_is_recorded_not_only_warned():
    from lightning_ssr.app.export import optimize_for_cpu_inference

    net = Lit(DictInputNet())  # torch.fx cannot trace a forward that checks its input's type
    report = {}
    with pytest.warns(UserWarning, match="BatchNorm folding skipped"):
        optimize_for_cpu_inference(net, report=report)
    assert report["bn_folded"] is False and "bn_fold_error" in report
    report = {}
    optimize_for_cpu_inference(SmallResidualCNN(in_channels=3, num_classes=5), report=report)
    assert report == {"bn_folded": True}


def test_a_layout_the_rehearsal_finds_is_blamed_on_the_model_not_the_method(tmp_path, monkeypatch):
    """Where the rebuild to the method's own selection (the rehearsal) is what finds a layout the
    dependency graph maps wrongly, the refusal is the dry run's, naming the layers, not a failure of
    the method's."""
    import lightning_ssr.engine as engine_mod

    monkeypatch.setattr(engine_mod, "dry_run", lambda *args: None)  # only the rehearsal rebuilds
    torch.manual_seed(0)
    model = Lit(FrontPadNet())
    trainer = _trainer(tmp_path, [Pruning("l1", target={"macs": 0.5}, **ONESHOT)])
    with pytest.raises(UnsupportedLayerError, match=r"^dry run at set-up, before training, to the channels 'l1' "
                                                    r"selects: rebuilding the pruned model failed .* a pad of the "
                                                    r"channel dimension") as info:
        trainer.fit(model, _data())
    assert "failed in" not in str(info.value) and trainer.global_step == 0


def test_an_op_after_which_a_removed_channel_is_not_zero_is_named_among_the_causes():
    """A sigmoid after a pruned convolution: a removed channel reads 0.5, not 0, so the rebuild
    differs from the masked model; the refusal named only shuffles, slices, pads and concats."""
    from lightning_ssr import prune_oneshot

    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.mix, self.head = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 1), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.mix(torch.sigmoid(self.conv(x))).mean((2, 3)))

    with pytest.raises(UnsupportedLayerError, match=r"or through an op after which a removed channel is not zero "
                                                    r"\(a sigmoid, an exp, a constant added, BatchNorm without "
                                                    r"affine\)"):
        prune_oneshot(Gated(), torch.randn(2, 3, 8, 8), {"macs": 0.5})
