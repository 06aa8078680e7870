"""One-call loading of pruned checkpoints, with torch.load(weights_only=True)."""

import copy
import re
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_ssr import (
    PLAN_CHECKPOINT_KEY,
    CheckpointReadError,
    PlanMismatchError,
    PrunedCheckpointMixin,
    Pruning,
    PruningSchedule,
    SSRPruning,
    apply_plan,
    load_pruned,
    prune_oneshot,
    read_checkpoint,
    save_pruned,
)
from lightning_ssr.app.models import build_model
from lightning_ssr.checkpoint import applied_plan, apply_checkpoint_plan
from lightning_ssr.structure import PruningPlan
from tests.lit import NetClassifier, TinyClassifier, epoch_checkpoints, loader, trainer
from tests.nets import SmallResidualCNN
from tests.numerics import assert_same_function

# the tiny networks here have coarse steps: a target whole channels cannot come within 2% of is
# warned of (tests/test_allocation.py), which is not what these tests are about
pytestmark = pytest.mark.filterwarnings("ignore:target .* the closest the channel counts come below it")


class PlainLitNet(pl.LightningModule):
    """LitNet without the mixin: a user's module that only the callback looks after."""

    def __init__(self, width: int = 3):
        super().__init__()
        self.save_hyperparameters()
        self.net = SmallResidualCNN(in_channels=width)

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class LitNet(PrunedCheckpointMixin, PlainLitNet):
    pass


@pytest.fixture(scope="module")
def pruned_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    pl.seed_everything(0)
    model = LitNet()
    cb = SSRPruning(regularizer="l20", flops_budget=0.4,
                    schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=2))
    ckpt = ModelCheckpoint(dirpath=tmp, save_last=True)
    trainer(tmp, [cb, ckpt], 2).fit(model, loader())
    assert applied_plan(model).to_dict() == cb.plan.to_dict()  # the callback marks the rebuilt module
    x = torch.randn(3, 3, 16, 16)
    model.eval()
    with torch.no_grad():
        expected = model(x)
    return tmp / "last.ckpt", x, expected


def test_checkpoint_loads_with_weights_only(pruned_checkpoint):
    path, _, _ = pruned_checkpoint
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["pruning_plan"]["format_version"] == 1
    assert read_checkpoint(path)["pruning_plan"] == ckpt["pruning_plan"]


def test_load_from_checkpoint_rebuilds_the_pruned_shapes(pruned_checkpoint):
    path, x, expected = pruned_checkpoint
    model = LitNet.load_from_checkpoint(path, weights_only=True).eval()
    with torch.no_grad():
        assert torch.equal(model(x), expected)


def test_a_module_of_uninitialized_weights_loads_the_pruned_checkpoint(pruned_checkpoint):
    """Lightning's fast load (load_from_checkpoint under trainer.init_module(empty_init=True)) and
    load_pruned into a module after to_empty() or of NaN weights failed with "the training diverged":
    the rebuild was checked on the weights the load was about to replace (probe). They take placeholder
    values for the check; the loaded module gives the pruned one's outputs. A meta module is told
    to materialize first."""
    path, x, expected = pruned_checkpoint
    with pl.Trainer(accelerator="cpu", logger=False).init_module(empty_init=True):
        fast = LitNet.load_from_checkpoint(path)
    nan = LitNet()
    with torch.no_grad():
        for p in nan.parameters():
            p.fill_(float("nan"))
    emptied = LitNet().to_empty(device="cpu")
    for module in (fast, load_pruned(nan, path), load_pruned(emptied, path)):
        with torch.no_grad():
            assert torch.equal(module.eval()(x), expected)
    with torch.device("meta"):
        meta = LitNet()
    with pytest.raises(PlanMismatchError, match=r"last.ckpt': this LitNet is on the meta device: .*Materialize it first "
                                                r"\(model.to_empty\(device='cpu'\)\)"):
        load_pruned(meta, path)


def test_a_pruned_checkpoint_without_its_plan_is_named_and_may_be_a_weights_only_one(pruned_checkpoint, tmp_path):
    """A ModelCheckpoint(save_weights_only=True) file of a module without the mixin, loaded with
    the mixin, was said to come from a fit without the Pruning callback, and the file was not named
    (probe)."""
    path, _, _ = pruned_checkpoint
    saved = torch.load(path, weights_only=True)
    del saved[PLAN_CHECKPOINT_KEY]
    torch.save(saved, tmp_path / "weights.ckpt")
    with pytest.raises(PlanMismatchError, match=r"weights.ckpt': the checkpoint holds no pruning plan, and weights of "
                                                r"other shapes .*or one of ModelCheckpoint\(save_weights_only=True\)"):
        LitNet.load_from_checkpoint(tmp_path / "weights.ckpt")


def test_plans_replay_step_by_step_or_by_part_and_the_record_follows_every_cut(tmp_path):
    """Review of the change that made apply_plan record its plan: a plan counted from the widths an
    earlier plan left (a later prune's own) and a plan of one part of the model, named from the
    whole, were refused where they had replayed; a cut with prune_channels left the record stale, so
    save_pruned refused the right plan and saved, by default, one that did not load; first.then()
    of an already composed plan raised a bare IndexError."""
    from lightning_ssr.structure import prune_channels

    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    model = build_model("lenet5")
    first = prune_oneshot(model, x, {"macs": 0.5})
    step = prune_oneshot(copy.deepcopy(model), x, {"macs": 0.5}).after(first)  # (counted from the widths left)
    prune_channels(model, x, step.kept, step.sizes)
    assert applied_plan(model).kept == first.then(step).kept
    save_pruned(model, tmp_path / "default.pt")
    save_pruned(model, tmp_path / "given.pt", first.then(step))
    for name in ("default.pt", "given.pt"):
        assert_same_function(model, load_pruned(build_model("lenet5"), tmp_path / name), x)
    fresh = build_model("lenet5")
    apply_plan(fresh, first)
    apply_plan(fresh, step)  # (step by step)
    assert [p.shape for p in fresh.parameters()] == [p.shape for p in model.parameters()]
    assert applied_plan(fresh).kept == first.then(step).kept
    with pytest.raises(PlanMismatchError, match=r"the later plan counts \d+ channels in '\w+', where this one kept "
                                                r"\d+: .*holds the earlier prunes already: use it as it is"):
        first.then(first.then(step))

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = build_model("lenet5"), build_model("lenet5")

        def forward(self, x):
            return self.a(x) + self.b(x)

    pa = prune_oneshot(build_model("lenet5"), x, {"macs": 0.5})
    pb = prune_oneshot(build_model("lenet5"), x, {"macs": 0.3})
    two = Two()
    apply_plan(two.a, pa)
    apply_plan(two, pb.renamed(lambda k: f"b.{k}"))  # (one part's plan, named from the whole)
    assert applied_plan(two.a).kept == pa.kept and applied_plan(two.b).kept == pb.kept


def test_a_cut_of_the_whole_after_a_prune_of_a_part_records_the_wholes_input(tmp_path):
    """The record composed by prune_channels kept the input shape of the sub-network pruned
    first, and save_pruned wrote a file whose load traced the whole on it and failed (review)."""
    from lightning_ssr.structure import prune_channels

    def build():
        return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), SmallResidualCNN(in_channels=8))

    torch.manual_seed(0)
    model, x = build(), torch.randn(2, 3, 16, 16)
    prune_oneshot(model[1], torch.randn(2, 8, 16, 16), {"macs": 0.5})
    prune_channels(model, x, {"0": [0, 1, 2, 3]}, {"0": 8})
    assert applied_plan(model).input_shape == [1, 3, 16, 16]
    save_pruned(model, tmp_path / "whole.pt")
    assert_same_function(model, load_pruned(build(), tmp_path / "whole.pt"), x)


def test_a_load_with_strict_false_keeps_the_weights_the_checkpoint_does_not_hold(pruned_checkpoint):
    """Placeholder values for the rebuild's check went into every tensor, and a strict=False load
    left the module's own weights of the layers the checkpoint lacks replaced by them (review):
    only the tensors that are not finite take placeholders."""
    path, _, _ = pruned_checkpoint
    saved = torch.load(path, weights_only=True)
    head = [k for k in saved["state_dict"] if k.startswith("net.fc2.")]
    partial = {**saved, "state_dict": {k: v for k, v in saved["state_dict"].items() if k not in head}}
    module = LitNet()
    with torch.no_grad():
        module.net.stem.weight[0, 0, 0, 0] = float("nan")
    own = {k: v.clone() for k, v in module.state_dict().items() if k in head}
    load_pruned(module, partial, strict=False)
    assert own and all(torch.equal(module.state_dict()[k], v) for k, v in own.items())


def test_apply_plan_records_the_plan_so_that_later_checkpoints_keep_it(tmp_path):
    """apply_plan (prune_oneshot's "replays it on a fresh model") did not record the plan: a fit of
    the rebuilt module wrote checkpoints without it, which did not load (probe). save_pruned saves
    the plan the module carries by default, and refuses another."""
    pl.seed_everything(0)
    x = torch.randn(4, 3, 16, 16)
    net = SmallResidualCNN()
    plan = prune_oneshot(net, x, {"macs": 0.5})
    module = LitNet()
    apply_plan(module.net, plan)
    module.net.load_state_dict(net.state_dict())
    assert applied_plan(module.net).kept == plan.kept
    assert apply_plan(module.net, plan) is module.net  # (a module at this plan already: left alone)
    trainer(tmp_path, [ModelCheckpoint(dirpath=tmp_path, save_last=True)], 1).fit(module, loader())
    loaded = LitNet.load_from_checkpoint(tmp_path / "last.ckpt")
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), module.eval()(x))
    save_pruned(module, tmp_path / "carried.pt")  # (no plan given: the one it carries)
    with torch.no_grad():
        assert torch.equal(load_pruned(SmallResidualCNN(), tmp_path / "carried.pt").eval()(x), module.net(x))


def test_load_pruned_into_a_fresh_module_or_the_bare_network(pruned_checkpoint):
    path, x, expected = pruned_checkpoint
    module = load_pruned(LitNet(), path).eval()
    net = load_pruned(SmallResidualCNN(), path).eval()  # "net." prefix stripped
    with torch.no_grad():
        assert torch.equal(module(x), expected)
        assert torch.equal(net(x), expected)
    assert applied_plan(module).to_dict() == torch.load(path, weights_only=True)["pruning_plan"]
    # loading the same checkpoint's plan again is a no-op; a plan that keeps channels this one removed is refused
    apply_checkpoint_plan(module, torch.load(path, weights_only=True))
    applied = applied_plan(module).to_dict()
    cut = next(g for g in applied["groups"] if len(g["kept"]) < g["size"])
    other = dict(applied, groups=[dict(g, kept=list(range(g["size"]))) if g is cut else g for g in applied["groups"]])
    with pytest.raises(PlanMismatchError, match="keeps channels .* that one removed; construct a fresh model"):
        apply_checkpoint_plan(module, {"pruning_plan": other})
    assert applied_plan(module).to_dict() == applied


def test_load_pruned_again_into_a_pruned_model_and_from_the_bare_network_into_its_module(pruned_checkpoint, tmp_path):
    """Loading a checkpoint into a model it pruned already said "the pruning plan expects 32 channels
    in 'conv1', the model has 9; ... another architecture or width?"; and one saved from the bare
    network (save_pruned(net, ...)) did not load into the LightningModule that holds it."""
    path, x, expected = pruned_checkpoint
    module = load_pruned(LitNet(), path)
    with torch.no_grad():
        module.net.fc2.bias.add_(1.0)  # (loaded again: the checkpoint's weights come back)
    assert load_pruned(module, path) is module
    net = SmallResidualCNN()
    save_pruned(net, tmp_path / "bare.pt", prune_oneshot(net, x, {"macs": 0.3}))
    from_bare = load_pruned(LitNet(), tmp_path / "bare.pt")
    with torch.no_grad():
        assert torch.equal(module.eval()(x), expected) and torch.equal(from_bare.eval()(x), net.eval()(x))
    # a module that holds the network twice: which one is not guessed
    twice = LitNet()
    twice.ema_net = SmallResidualCNN()
    with pytest.raises(PlanMismatchError, match=r"holds 2 times \(ema_net, net\): load it into the one it belongs "
                                                r"to, e.g. load_pruned\(model.ema_net, path\)"):
        load_pruned(twice, tmp_path / "bare.pt")
    # a model pruned by something else than this plan (prune_oneshot records its plan): said, with what to do
    other = LitNet()
    prune_oneshot(other.net, x, {"macs": 0.2})
    with pytest.raises(PlanMismatchError, match=r"the pruning plan does not continue the one this model was rebuilt "
                                                r"with: .*construct a fresh model to load it"):
        load_pruned(other, path)


def test_the_network_saved_with_its_modules_plan_loads_into_either(pruned_checkpoint, tmp_path):
    """save_pruned(model.net, path, callback.plan), the callback's plan naming "net.c1": the file
    held "c1.weight" beside a plan of "net.c1" and loaded into neither (probe). The plan is made
    relative to the module saved; one that names layers it has not is refused before any write."""
    path, x, expected = pruned_checkpoint
    module = load_pruned(LitNet(), path)
    plan = PruningPlan.from_dict(torch.load(path, weights_only=True)["pruning_plan"])
    assert all(name.startswith("net.") for name in plan.kept)
    save_pruned(module.net, tmp_path / "net.pt", plan)
    saved = PruningPlan.from_dict(torch.load(tmp_path / "net.pt", weights_only=True)["pruning_plan"])
    assert saved.kept == {name.removeprefix("net."): kept for name, kept in plan.kept.items()}
    with torch.no_grad():
        for fresh in (SmallResidualCNN(), LitNet()):
            assert torch.equal(load_pruned(fresh, tmp_path / "net.pt").eval()(x), expected)
        # the other way round: the network's plan saved with the module that holds it
        save_pruned(module, tmp_path / "module.pt", plan.renamed(lambda r: r.removeprefix("net.")))
        assert torch.equal(load_pruned(SmallResidualCNN(), tmp_path / "module.pt").eval()(x), expected)
    with pytest.raises(PlanMismatchError, match=r"save_pruned: the plan names layers .* which this Linear does not "
                                                r"have, with or without a common prefix: give it the module"):
        save_pruned(torch.nn.Linear(2, 2), tmp_path / "wrong.pt", plan)
    assert not (tmp_path / "wrong.pt").exists()


@pytest.mark.parametrize("kept", [0.0, 0.001, 0.5, 0.99])
def test_a_truncated_checkpoint_is_named_by_load_from_checkpoint_and_by_a_resumed_fit(pruned_checkpoint, tmp_path,
                                                                                      kept):
    """Lightning's own loading of a truncated file said only torch's error (OSError: [Errno 22]
    Invalid argument, RuntimeError or EOFError, by where the file was cut); the mixin names the file
    first, and the callback adds a note (shown under the traceback) that names it and what is wrong."""
    path, _, _ = pruned_checkpoint
    truncated = tmp_path / "half.ckpt"
    truncated.write_bytes(path.read_bytes()[:int(path.stat().st_size * kept)])
    said = "half.ckpt' is unreadable: it is " + ("empty" if kept == 0 else "truncated")
    with pytest.raises(CheckpointReadError, match=said):
        LitNet.load_from_checkpoint(truncated)
    model = LitNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    schedule = PruningSchedule(sparsify_epochs=0, finetune_epochs=2)
    fit = trainer(tmp_path, [Pruning(method="l1", target={"macs": 0.5}, schedule=schedule, verbose=False)], 2)
    with pytest.raises(Exception) as raised:  # torch's own error, raised in Lightning, before any callback reads it
        fit.fit(model, loader(), ckpt_path=truncated)
    assert not isinstance(raised.value, CheckpointReadError)
    assert len(raised.value.__notes__) == 1 and re.search(said, raised.value.__notes__[0])  # in the traceback
    assert fit.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_changed_archive_directory_and_a_pruned_model_given_to_fit_are_named(pruned_checkpoint, tmp_path):
    """A byte changed in the zip's directory, at its end: torch's 'PytorchStreamReader failed
    reading zip archive' named no file, from load_from_checkpoint or a resumed fit. A pruned model
    (save_pruned's file) given to fit(ckpt_path=...): Lightning's KeyError 'pytorch-lightning_version'
    said nothing more (probe)."""
    path, _, _ = pruned_checkpoint
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    flipped = tmp_path / "flipped.ckpt"
    flipped.write_bytes(bytes(data))
    pruned = tmp_path / "pruned.pt"
    save_pruned(load_pruned(LitNet(), path), pruned, torch.load(path, weights_only=True)["pruning_plan"])
    dense = save_pruned(LitNet(), tmp_path / "dense.pt", config={})  # (as the command's cache of dense models)
    with pytest.raises(CheckpointReadError, match="flipped.ckpt' is unreadable: it is truncated, corrupted or not a "
                                                  "torch checkpoint"):
        LitNet.load_from_checkpoint(flipped)
    schedule = PruningSchedule(sparsify_epochs=0, finetune_epochs=2)
    for given, said in [(flipped, "flipped.ckpt' is unreadable"),
                        (pruned, (r"pruned.pt' is a pruned model \(save_pruned's file, as a run's pruned.pt\), not a "
                                 r"Lightning checkpoint of a fit: .* lightning_ssr.load_pruned\(fresh_module, path\)")),
                        # (it was called "a pruned model": probe)
                        (dense, (r"dense.pt' is a dense model the command cached \(dense.cache_dir\), not a Lightning "
                                r"checkpoint of a fit"))]:
        model = LitNet()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        fit = trainer(tmp_path, [Pruning(method="l1", target={"macs": 0.5}, schedule=schedule, verbose=False)], 2)
        with pytest.raises(Exception) as raised:
            fit.fit(model, loader(), ckpt_path=given)
        assert len(raised.value.__notes__) == 1 and re.search(said, raised.value.__notes__[0]), given
        assert fit.global_step == 0 and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # given to predict (test, validate), the note says so, not "start a new fit" (review)
    predicting = trainer(tmp_path, [Pruning(method="l1", target={"macs": 0.5}, schedule=schedule, verbose=False)], 2)
    with pytest.raises(Exception) as raised:
        predicting.predict(LitNet(), torch.utils.data.DataLoader(torch.randn(4, 3, 16, 16)), ckpt_path=pruned)
    assert re.search(r"predict\(ckpt_path=...\) reads a checkpoint a fit wrote .* and call predict\(module\) without "
                     r"ckpt_path$", raised.value.__notes__[0])


def _corrupt(path, out):
    """``path`` copied to ``out`` with 16 bytes of a tensor's data changed (as by a disk or copy
    error): the archive's directory is whole, so torch.load reads it, changed weights and all."""
    import struct
    import zipfile

    data = bytearray(Path(path).read_bytes())
    with zipfile.ZipFile(path) as archive:
        entry = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    name_len, extra_len = struct.unpack("<HH", data[entry.header_offset + 26:entry.header_offset + 30])
    start = entry.header_offset + 30 + name_len + extra_len
    data[start:start + 16] = bytes(b ^ 0xFF for b in data[start:start + 16])
    Path(out).write_bytes(bytes(data))
    return out


def test_a_corrupted_checkpoint_is_refused_where_torch_would_load_its_changed_weights(pruned_checkpoint, tmp_path):
    """16 changed bytes inside a tensor: torch.load(weights_only=True) returned the changed weights,
    load_pruned loaded them, and a resumed fit trained on them. The archive's CRC tells."""
    path, _, _ = pruned_checkpoint
    bad = _corrupt(path, tmp_path / "bad.ckpt")
    torch.load(bad, weights_only=True)  # (torch itself does not notice)
    said = r"bad.ckpt' is unreadable: it is corrupted: its entry '[^']+/data/\d+' fails the archive's CRC check"
    with pytest.raises(CheckpointReadError, match=said):
        read_checkpoint(bad)
    model = LitNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointReadError, match=said):
        load_pruned(model, bad)
    with pytest.raises(CheckpointReadError, match=said):
        LitNet.load_from_checkpoint(bad)
    schedule = PruningSchedule(sparsify_epochs=0, finetune_epochs=2)
    fit = trainer(tmp_path, [Pruning(method="l1", target={"macs": 0.5}, schedule=schedule, verbose=False)], 2)
    with pytest.raises(CheckpointReadError, match=said):
        fit.fit(model, loader(), ckpt_path=bad)
    assert fit.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the module as it was

    plain = PlainLitNet()  # without the mixin: the callback refuses the file, before the weights load
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    fit = trainer(tmp_path, [Pruning(method="ssr_l20", target={"macs": 0.4}, verbose=False,
                                     schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=1))], 2)
    with pytest.raises(CheckpointReadError, match=said):
        fit.fit(plain, loader(), ckpt_path=bad)
    assert fit.global_step == 0 and all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    assert read_checkpoint(path)["state_dict"]  # (the whole file reads as before)
    # a whole file saved without CRCs (torch.serialization.set_crc32_options(False)): nothing to check, read
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(torch.load(path, weights_only=True), tmp_path / "no_crc.ckpt")
    finally:
        torch.serialization.set_crc32_options(True)
    assert read_checkpoint(tmp_path / "no_crc.ckpt")["state_dict"]


def test_the_mixin_keeps_lightnings_refusal_of_an_instance_call_and_loads_a_legacy_checkpoint(pruned_checkpoint,
                                                                                              tmp_path):
    path, x, expected = pruned_checkpoint
    with pytest.raises(TypeError, match="cannot be called on an instance"):
        LitNet().load_from_checkpoint(path)  # a new module is returned, the instance is not loaded
    legacy = tmp_path / "legacy.ckpt"  # torch's format before zip archives, not checked (nothing is loaded)
    torch.save(torch.load(path, weights_only=True), legacy, _use_new_zipfile_serialization=False)
    model = LitNet.load_from_checkpoint(legacy, weights_only=False).eval()
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    # save_pruned's file is no Lightning checkpoint: said so, with the call that reads it (a bare
    # KeyError 'pytorch-lightning_version' before: probe); and that call does
    save_pruned(model, tmp_path / "pruned.pt", applied_plan(model))
    with pytest.raises(CheckpointReadError, match=r"pruned.pt' is not a Lightning checkpoint .*save_pruned or "
                                                  r"torch.save wrote it\): load it with lightning_ssr.load_pruned\(LitNet"):
        LitNet.load_from_checkpoint(tmp_path / "pruned.pt")
    with torch.no_grad():
        assert torch.equal(load_pruned(LitNet(), tmp_path / "pruned.pt").eval()(x), expected)


def test_save_pruned_round_trips(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    plan = prune_oneshot(model, x, {"macs": 0.3})
    path = save_pruned(model, tmp_path / "sub" / "pruned.pt", plan, accuracy=0.5)
    data = torch.load(path, weights_only=True)
    assert data["pruning_plan"] == plan.to_dict() and data["accuracy"] == 0.5
    fresh = load_pruned(build_model("lenet5"), path).eval()
    with torch.no_grad():
        assert torch.equal(fresh(x), model.eval()(x))
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["pruned.pt"]  # no temporary file left


def test_unreadable_checkpoints_name_the_file(tmp_path):
    with pytest.raises(CheckpointReadError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.ckpt")
    torch.save({"state_dict": {"w": torch.ones(1000)}}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tmp_path / "good.pt").read_bytes()[:300])
    with pytest.raises(CheckpointReadError, match="truncated.pt' is unreadable: it is truncated: a zip archive "
                                                  "without its directory"):  # (as the mixin says it: probe)
        read_checkpoint(truncated)
    # the mistakes a user makes: the run's folder, its result.json, a whole module saved
    with pytest.raises(CheckpointReadError, match="is a directory: give the checkpoint file in it"):
        read_checkpoint(tmp_path)
    (tmp_path / "result.json").write_text('{"schema_version": 1}')
    with pytest.raises(CheckpointReadError, match="result.json' is unreadable: it is a JSON file"):
        read_checkpoint(tmp_path / "result.json")
    torch.save(build_model("lenet5"), tmp_path / "whole.pt")
    with pytest.raises(CheckpointReadError, match=r"whole.pt' is unreadable: it holds objects other than tensors.*"
                                                  r"torch.save\(model\)"):
        read_checkpoint(tmp_path / "whole.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointReadError, match="not a mapping"):
        read_checkpoint(tmp_path / "list.pt")
    with pytest.raises(CheckpointReadError, match="no 'state_dict'"):
        load_pruned(build_model("lenet5"), {"pruning_plan": None})
    # a file of random bytes was taken for "a whole module saved with torch.save(model)?"
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 256)) * 2)
    with pytest.raises(CheckpointReadError, match="noise.pt' is unreadable: it is truncated, corrupted or not a torch"):
        read_checkpoint(tmp_path / "noise.pt")
    # a bare state_dict of a pruned model: what it lacks, and how to save one that loads
    torch.save(build_model("lenet5").state_dict(), tmp_path / "plain.pt")
    with pytest.raises(CheckpointReadError, match=r"plain.pt' has no 'state_dict' entry \(keys: .*\): it is a bare "
                                                  r"state_dict .* no pruning plan .* lightning_ssr.save_pruned"):
        load_pruned(build_model("lenet5"), tmp_path / "plain.pt")


class LazyLitNet(pl.LightningModule):
    """Builds its network in configure_model(), which Lightning calls only inside fit and the like."""

    def configure_model(self):
        if not hasattr(self, "net"):
            self.net = SmallResidualCNN(in_channels=3)

    def forward(self, x):
        return self.net(x)


def test_a_module_that_builds_its_network_later_is_told_to_build_it_first(pruned_checkpoint):
    path, x, expected = pruned_checkpoint
    lazy = LazyLitNet()
    with pytest.raises(PlanMismatchError, match=r"this LazyLitNet has no layers yet: if it builds its network in "
                                                r"configure_model\(\), call model.configure_model\(\) before loading"):
        load_pruned(lazy, path)
    plan = read_checkpoint(path)[PLAN_CHECKPOINT_KEY]  # applied alone, the plan says the same
    with pytest.raises(PlanMismatchError, match=r"this LazyLitNet has no layers yet: if it builds its network in "):
        apply_plan(LazyLitNet(), plan)  # (it failed with StopIteration)
    lazy.configure_model()
    with torch.no_grad():
        assert torch.equal(load_pruned(lazy, path).eval()(x), expected)


def test_a_checkpoint_from_another_architecture_is_refused(pruned_checkpoint):
    path, _, _ = pruned_checkpoint
    other = build_model("lenet5")
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(PlanMismatchError, match="another architecture"):
        load_pruned(other, path)
    assert other.conv1.out_channels == 20
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())

    class OtherLit(LitNet):
        def __init__(self):
            super().__init__()
            self.net = build_model("lenet5", in_channels=3, input_size=16)

    # the file named once ("'<file>': the checkpoint: the pruning plan names ...": probe)
    with pytest.raises(PlanMismatchError) as info:
        OtherLit.load_from_checkpoint(path)
    assert str(info.value).startswith(f"{str(path)!r}: the pruning plan expects 16 channels in 'net.fc1'"), info.value


def test_a_checkpoint_loads_into_a_module_that_holds_the_network_under_another_name(pruned_checkpoint):
    """The command's pruned.pt (keys "model.conv1...") loaded into a user's LightningModule whose
    network is ``self.net`` was refused as "saved from another architecture" (probe)."""
    path, x, expected = pruned_checkpoint

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = LitNet().net  # (the checkpoint's layers are net.<...>)

        def forward(self, x):
            return self.body(x)

    holder = Holder()
    with torch.no_grad():
        assert torch.equal(load_pruned(holder, path).body.eval()(x), expected)
    saved = PruningPlan.from_dict(read_checkpoint(path)[PLAN_CHECKPOINT_KEY])
    assert sorted(applied_plan(holder).kept) == sorted("body." + n.removeprefix("net.") for n in saved.kept)


def test_a_model_built_with_other_arguments_is_named_with_the_fix_and_left_untouched(tmp_path):
    # a model for 3-channel images, loaded into one built for 1 channel; one of 10 classes into 5
    saved = build_model("lenet5", in_channels=3)
    save_pruned(saved, tmp_path / "pruned.pt", prune_oneshot(saved, torch.randn(2, 3, 28, 28), {"macs": 0.5}))
    for model in (build_model("lenet5"), build_model("lenet5", in_channels=3, num_classes=5)):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(PlanMismatchError, match=r"pruned.pt'.*construct the model as the saved one was"):
            load_pruned(model, tmp_path / "pruned.pt")
        assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    with pytest.raises(PlanMismatchError, match=r"traced on inputs of shape \(1, 3, 28, 28\)"):
        load_pruned(build_model("lenet5"), tmp_path / "pruned.pt")
    with pytest.raises(PlanMismatchError, match=r"other shapes than this model after the plan \(size mismatch for fc2"):
        load_pruned(build_model("lenet5", in_channels=3, num_classes=5), tmp_path / "pruned.pt")
    load_pruned(build_model("lenet5", in_channels=3), tmp_path / "pruned.pt")


def test_a_failed_load_leaves_the_model_untouched(pruned_checkpoint):
    path, _, _ = pruned_checkpoint
    data = torch.load(path, weights_only=True)
    data["state_dict"] = {k: v for k, v in data["state_dict"].items() if "fc2" not in k}  # missing keys
    module = LitNet()
    shapes = {k: v.shape for k, v in module.state_dict().items()}
    with pytest.raises(PlanMismatchError, match=r"holds the weights of another network \(it lacks net\.fc2\.bias, "
                                                r"net\.fc2\.weight\): it was not saved from this model"):
        load_pruned(module, data)
    assert {k: v.shape for k, v in module.state_dict().items()} == shapes
    assert applied_plan(module) is None


def test_resuming_fit_from_a_checkpoint_of_another_architecture_is_refused(pruned_checkpoint, tmp_path):
    path, _, _ = pruned_checkpoint

    class OtherNet(LitNet):
        def __init__(self):
            super().__init__()
            self.net = build_model("lenet5", in_channels=3, num_classes=5, input_size=16)

    cb = SSRPruning(schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=1))
    with pytest.raises(PlanMismatchError, match="another architecture"):
        trainer(tmp_path, [cb], 3).fit(OtherNet(), loader(), ckpt_path=path)
    # the plan's refusal names the file on every path (the mixin's and test(ckpt_path=...) did not: probe)
    other = OtherNet()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(PlanMismatchError, match=rf"{re.escape(str(path))}: the pruning plan .*another "
                                                r"architecture"):
        apply_checkpoint_plan(other, torch.load(path, weights_only=True), source=f"ckpt_path={path}")
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_two_optimizers_are_refused_with_a_clear_error(tmp_path):
    class TwoOptimizers(LitNet):
        def configure_optimizers(self):
            return [torch.optim.SGD(self.parameters(), lr=0.1), torch.optim.Adam(self.parameters())]

    with pytest.raises(Exception, match="manual optimization"):
        trainer(tmp_path, [SSRPruning()], SSRPruning().schedule.total_epochs).fit(TwoOptimizers(), loader())


def test_a_truncated_plan_file_names_the_file(tmp_path):
    plan = PruningPlan([1, 1, 28, 28], {"conv1": [0, 2]}, {"conv1": 20})
    plan.save(tmp_path / "plan.json")
    assert PruningPlan.load(tmp_path / "plan.json") == plan
    (tmp_path / "cut.json").write_text((tmp_path / "plan.json").read_text()[:25])
    with pytest.raises(PlanMismatchError, match="cut.json.*unreadable"):
        PruningPlan.load(tmp_path / "cut.json")


def _second_pruning_fit(tmp_path, model, ckpt_path=None):
    """A second pruning fit of ``model`` (l1 this time), pruning at the start of its epoch 1, with a
    checkpoint at the end of every epoch in ``tmp_path / "second"``."""
    pruning = Pruning("l1", target={"filters": 0.6}, verbose=False,
                      schedule=PruningSchedule(warmup_epochs=1, sparsify_epochs=0, finetune_epochs=1))
    ckpt = epoch_checkpoints(tmp_path / "second", resume_from=ckpt_path)
    fit = trainer(tmp_path, [pruning, ckpt], 2)
    fit.fit(model, loader(), ckpt_path=ckpt_path)
    return pruning, fit


def test_the_plans_of_two_pruning_fits_compose_so_that_their_checkpoints_load_into_a_fresh_module(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    first = Pruning("oneshot", target={"filters": 0.5}, verbose=False,
                    schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1))
    trainer(tmp_path, [first], 1).fit(model, loader())
    after_first = {k: v.clone() for k, v in model.state_dict().items()}
    second, fit = _second_pruning_fit(tmp_path, model)
    assert second.plan.to_dict() != first.plan.to_dict()
    # a checkpoint of the second fit from before its prune holds the first fit's plan
    before_prune = read_checkpoint(tmp_path / "second" / "epoch=0.ckpt")
    assert before_prune[PLAN_CHECKPOINT_KEY] == first.plan.to_dict()
    assert {k: v.shape for k, v in load_pruned(TinyClassifier(), before_prune).state_dict().items()} == {
        k: v.shape for k, v in after_first.items()}
    # the last one holds both plans composed, relative to the constructed shapes
    fit.save_checkpoint(tmp_path / "final.ckpt")
    fresh = load_pruned(TinyClassifier(), tmp_path / "final.ckpt")
    x = next(iter(loader()))[0]
    model.eval()
    fresh.eval()
    assert torch.equal(fresh(x), model(x))
    rebuilt = TinyClassifier()
    apply_plan(rebuilt, second.plan)  # the result's plan alone rebuilds the shapes
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    # and the second fit resumed in a fresh module from before its prune ends where the uninterrupted one did
    pl.seed_everything(0)
    resumed_model = TinyClassifier()
    _second_pruning_fit(tmp_path, resumed_model, ckpt_path=tmp_path / "second" / "epoch=0.ckpt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in resumed_model.state_dict().items())


@pytest.mark.parametrize("resume_epoch", [0, 1], ids=["before_its_prune", "after_its_prune"])
def test_a_second_pruning_fit_of_a_loaded_network_resumes_in_a_module_built_the_same_way(tmp_path, resume_epoch):
    """The first fit's plan sits on the bare network (load_pruned), wrapped in a new LightningModule
    for the second fit: resuming that fit in a module built the same way rebuilds only what the
    checkpoint's plan adds to the network's own."""
    pl.seed_everything(0)
    first_module = NetClassifier(SmallResidualCNN())
    first = Pruning("oneshot", target={"filters": 0.5}, verbose=False,
                    schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1))
    trainer(tmp_path, [first], 1).fit(first_module, loader())
    save_pruned(first_module, tmp_path / "pruned.pt", first.plan)

    def loaded():
        return NetClassifier(load_pruned(SmallResidualCNN(), tmp_path / "pruned.pt"))

    pl.seed_everything(1)
    model = loaded()
    _second_pruning_fit(tmp_path, model)
    pl.seed_everything(1)
    resumed = loaded()
    _second_pruning_fit(tmp_path, resumed, ckpt_path=tmp_path / "second" / f"epoch={resume_epoch}.ckpt")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in resumed.state_dict().items())


def test_weights_only_checkpoints_of_a_mixin_module_hold_the_plan(tmp_path):
    """Lightning calls no callback's on_save_checkpoint for weights-only checkpoints: the mixin
    writes the plan itself, so they load into a fresh module like full ones."""
    pl.seed_everything(0)
    model = LitNet()
    pruning = Pruning("l1", target={"filters": 0.5}, verbose=False,
                      schedule=PruningSchedule(warmup_epochs=1, sparsify_epochs=0, finetune_epochs=1))
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, filename="{epoch}", save_weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no warning: the module writes the plan
        trainer(tmp_path, [pruning, ckpt], 2).fit(model, loader())
    before, after = read_checkpoint(tmp_path / "epoch=0.ckpt"), read_checkpoint(tmp_path / "epoch=1.ckpt")
    assert "optimizer_states" not in after and PLAN_CHECKPOINT_KEY not in before  # dense, weights only
    assert after[PLAN_CHECKPOINT_KEY] == pruning.plan.to_dict()
    x = next(iter(loader()))[0]
    loaded = LitNet.load_from_checkpoint(tmp_path / "epoch=1.ckpt", weights_only=True).eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_weights_only_checkpoints_of_a_module_without_the_mixin_are_warned_of_before_training(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    pruning = Pruning("l1", target={"filters": 0.5}, verbose=False,
                      schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1))
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_weights_only=True)
    fit = trainer(tmp_path, [pruning, ckpt], 1)
    with pytest.warns(UserWarning, match=r"save_weights_only=True\) writes checkpoints without the pruning plan.*"
                                         r"a freshly constructed TinyClassifier cannot load\. Mix "
                                         r"lightning_ssr\.PrunedCheckpointMixin"):
        fit.fit(model, loader())
    (saved,) = tmp_path.glob("*.ckpt")
    assert PLAN_CHECKPOINT_KEY not in read_checkpoint(saved)  # what the warning is about


def test_a_pruned_model_saved_without_its_plan_or_a_later_prunes_plan_alone_is_named_with_the_fix(tmp_path):
    """A pruned model fine-tuned further in a fit without the callback (README's advice) left a
    checkpoint without its plan: 'construct the model as the saved one was'; the plan of a second
    prune saved alone: 'another architecture or width'. Each says what to do instead."""
    model = build_model("lenet5")
    example = torch.randn(2, 1, 28, 28)
    first = prune_oneshot(model, example, {"macs": 0.5})
    torch.save({"state_dict": model.state_dict()}, tmp_path / "plain.ckpt")  # (a plain ModelCheckpoint's)
    with pytest.raises(PlanMismatchError, match=r"plain.ckpt' holds no pruning plan, and weights of other shapes "
                                                r"than this model .*Save a pruned model with lightning_ssr.save_pruned"
                                                r"\(model, path, plan\), or mix PrunedCheckpointMixin into"):
        load_pruned(build_model("lenet5"), tmp_path / "plain.ckpt")
    # the other way round: a dense model's checkpoint loaded into the pruned model (it said the checkpoint
    # was of a pruned model without its plan: probe); prune_oneshot recorded its plan: pruned for certain
    torch.save({"state_dict": build_model("lenet5").state_dict()}, tmp_path / "dense.ckpt")
    with pytest.raises(PlanMismatchError, match=r"dense.ckpt' holds no pruning plan, and weights larger than this "
                                                r"model's .*: this model was pruned already, and the checkpoint was "
                                                r"saved before a prune \(a dense model\)\. Load it into a freshly"):
        load_pruned(model, tmp_path / "dense.ckpt")
    # a fresh model built smaller (10 classes, the checkpoint's 100) is not told it was pruned (review)
    torch.save({"state_dict": build_model("lenet5", num_classes=100).state_dict()}, tmp_path / "classes.ckpt")
    with pytest.raises(PlanMismatchError, match=r"classes.ckpt' holds no pruning plan, and weights larger than this "
                                                r"model's .*: was this model pruned already .*\? Then load it into a "
                                                r"freshly constructed model; else construct the model as the saved"):
        load_pruned(build_model("lenet5"), tmp_path / "classes.ckpt")
    # a second prune returns the plan from the constructed shapes, both prunes in one (it was the one counted
    # from the widths the first left, which neither loaded nor replayed on a fresh model: probe)
    second = prune_oneshot(model, example, {"macs": 0.5})
    assert second.sizes == first.sizes and all(set(second.kept[n]) <= set(first.kept[n]) for n in first.kept)
    save_pruned(model, tmp_path / "second.pt", second)
    loaded = load_pruned(build_model("lenet5"), tmp_path / "second.pt")
    assert_same_function(model, loaded, example)
    # the plan counted from those widths is refused when saved (the file would not load), and named when replayed
    step = second.after(first)
    with pytest.raises(PlanMismatchError, match=r"save_pruned: the plan given is not the one this \w+ was rebuilt "
                                                r"with \(they differ in .*\): the file would not load. Leave out the plan"):
        save_pruned(model, tmp_path / "step.pt", step)
    assert not (tmp_path / "step.pt").exists()
    with pytest.raises(PlanMismatchError, match=r"or is it the plan of a later prune, made on a model pruned before "
                                                r"\(save the plans in order as one: first.then\(second\)\)"):
        apply_plan(build_model("lenet5"), step)
    # a model that carries the plan it was pruned with is pruned for certain: said so
    with pytest.raises(PlanMismatchError, match=r"dense.ckpt' .*weights larger than this model's .*: this model was "
                                                r"pruned already, and the checkpoint was saved before a prune"):
        load_pruned(loaded, tmp_path / "dense.ckpt")


def test_a_module_whose_network_prune_oneshot_pruned_keeps_the_plan_in_its_checkpoints(tmp_path):
    """prune_oneshot on the network inside a PrunedCheckpointMixin module, then a plain fit: the
    Trainer's checkpoints held no plan, and loading them failed on the shapes, with a message that
    advised the mixin the module had (probe). prune_oneshot records the plan where the mixin and
    load_pruned find it; pruned twice, the record covers both prunes."""
    pl.seed_everything(0)
    module = LitNet()
    x = torch.randn(4, 3, 16, 16)
    first = prune_oneshot(module.net, x, {"macs": 0.7})
    second = prune_oneshot(module.net, x, {"macs": 0.7})  # (both prunes in one, from the constructed shapes)
    recorded = applied_plan(module.net)
    assert recorded.kept == second.kept and recorded.kept == first.then(second.after(first)).kept
    ckpt = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer(tmp_path, [ckpt], 1).fit(module, loader())
    saved = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert PruningPlan.from_dict(saved[PLAN_CHECKPOINT_KEY]).kept == {f"net.{k}": v for k, v in recorded.kept.items()}
    module.eval()
    with torch.no_grad():
        expected = module(x)
    for loaded in (LitNet.load_from_checkpoint(tmp_path / "last.ckpt"),
                   load_pruned(PlainLitNet(), tmp_path / "last.ckpt"),
                   load_pruned(SmallResidualCNN(in_channels=3), tmp_path / "last.ckpt")):
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)


def test_load_from_checkpoint_with_strict_false_and_lazy_layers_still_load(tmp_path):
    """The check of a checkpoint's keys before the load refused load_from_checkpoint(path,
    strict=False) into a module with a head more (Lightning does not tell on_load_checkpoint the
    strict it was given), and read the shape of a lazy layer's uninitialized weight (review)."""

    class Head(LitNet):
        def __init__(self):
            super().__init__()
            self.aux = torch.nn.Linear(5, 3)

    torch.save({"state_dict": LitNet().state_dict(), "pytorch-lightning_version": pl.__version__},
               tmp_path / "plain.ckpt")
    with pytest.warns(UserWarning, match=r"Found keys that are in the model state dict but not in the checkpoint: "
                                         r"\['aux.weight', 'aux.bias'\]"):  # (Lightning's, as with strict=False)
        assert isinstance(Head.load_from_checkpoint(tmp_path / "plain.ckpt", strict=False), Head)
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"aux.weight\""):
        Head.load_from_checkpoint(tmp_path / "plain.ckpt")  # (strict: torch's own refusal, as before)

    class Lazy(LitNet):
        def __init__(self):
            super().__init__()
            self.net.fc2 = torch.nn.LazyLinear(5)

    built = Lazy()
    built(torch.randn(2, 3, 16, 16))  # (materialized)
    torch.save({"state_dict": built.state_dict(), "pytorch-lightning_version": pl.__version__}, tmp_path / "lazy.ckpt")
    x = torch.randn(2, 3, 16, 16)
    for loaded in (Lazy.load_from_checkpoint(tmp_path / "lazy.ckpt"), load_pruned(Lazy(), tmp_path / "lazy.ckpt")):
        assert torch.equal(loaded.eval()(x), built.eval()(x))


def test_a_network_pruned_again_inside_a_module_pruned_before_records_both_prunes(tmp_path):
    """prune_oneshot on the network of a module pruned before (by the module): the network's
    record missed the first prune, and the module's checkpoints carried its older plan, which
    did not load (review). The record lives on the layers: each holder reads both prunes."""
    pl.seed_everything(0)
    module = LitNet()
    x = torch.randn(4, 3, 16, 16)
    first = prune_oneshot(module, x, {"macs": 0.7})
    second = prune_oneshot(module.net, x, {"macs": 0.7})  # (both prunes in one, from the constructed shapes)
    both = second.renamed(lambda k: f"net.{k}")
    assert all(set(both.kept[n]) <= set(first.kept[n]) for n in first.kept)  # (the first prune's cut stays)
    assert applied_plan(module).kept == both.kept
    assert applied_plan(module.net).kept == {k[len("net."):]: v for k, v in both.kept.items()}
    save_pruned(module, tmp_path / "both.pt", applied_plan(module))
    fresh = load_pruned(LitNet(), tmp_path / "both.pt")
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), module.eval()(x))


def _body():
    return torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))


class _Stemmed(torch.nn.Module):
    """A network (declared first) behind a stem: its input is not the module's."""

    def __init__(self):
        super().__init__()
        self.net = _body()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())

    def forward(self, x):
        return self.net(self.stem(x))


class _Unsqueezing(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):  # x: (B, 12, 12)
        return self.net(x.unsqueeze(1))


def test_the_applied_plan_of_a_module_is_traced_on_its_own_input_whatever_was_pruned_inside_it(tmp_path):
    """The records of a network pruned inside (or before being wrapped in) a module held the
    network's input shape, and the module's plan took it: its checkpoint did not load (review)."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    module = _Stemmed()
    first = prune_oneshot(module, x, {"rates": {"stem.0": 0.5}}, ignored_layers=["net.0", "net.2"])
    second = prune_oneshot(module.net, module.stem(x), {"rates": "[0.5]*2"})  # (the network, on its own input)
    assert applied_plan(module).input_shape == [1, 3, 16, 16] and applied_plan(module.net).input_shape == [1, 4, 14, 14]
    # composed by hand, the first plan's shape (review): the same plan as recorded
    by_hand = first.then(second.renamed(lambda k: f"net.{k}"))
    assert by_hand.input_shape == [1, 3, 16, 16] and by_hand.kept == applied_plan(module).kept
    for plan in (applied_plan(module), by_hand):
        save_pruned(module, tmp_path / "stemmed.pt", plan)
        with torch.no_grad():
            assert torch.equal(load_pruned(_Stemmed(), tmp_path / "stemmed.pt")(x), module(x))
    # pruned bare, then wrapped in a module with another input, and pruned again through it
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    fresh = copy.deepcopy(net)
    prune_oneshot(net, torch.randn(2, 1, 12, 12), {"rates": "[0.5]*2"})
    wrapped = _Unsqueezing(net)
    prune_oneshot(wrapped, torch.randn(2, 12, 12), {"rates": "[0.25]*2"})
    assert applied_plan(wrapped).input_shape == [1, 12, 12]
    save_pruned(wrapped, tmp_path / "wrapped.pt", applied_plan(wrapped))
    y = torch.randn(2, 12, 12)
    with torch.no_grad():
        assert torch.equal(load_pruned(_Unsqueezing(fresh), tmp_path / "wrapped.pt")(y), wrapped(y))


def test_a_plan_lists_the_networks_pruned_apart_in_the_order_they_were_pruned_also_across_processes(monkeypatch):
    """The records carried a serial count of this process: a network pruned in another (a worker,
    its model pickled back) sorted by that count beside one pruned here, not by when each was."""
    from lightning_ssr.structure import plan as plans

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = SmallResidualCNN(), SmallResidualCNN()

    torch.manual_seed(0)
    x, model = torch.randn(2, 3, 16, 16), Two()
    for _ in range(3):  # the first process pruned other models before
        prune_oneshot(SmallResidualCNN(), x, {"macs": 0.5})
    prune_oneshot(model.a, x, {"macs": 0.5})
    model = copy.deepcopy(model)  # (as pickled to another process)
    monkeypatch.setattr(plans, "_last_mark", 0)  # a new process: its own marks start again
    prune_oneshot(model.b, x, {"macs": 0.5})
    names = list(applied_plan(model).kept)
    assert names == [f"a.{n}" for n in applied_plan(model.a).kept] + [f"b.{n}" for n in applied_plan(model.b).kept]
