"""The method registry and protocol: any registered method runs through the engine."""

import re
import threading

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from lightning_ssr import Pruning, PruningEngine, PruningSchedule
from lightning_ssr.methods import PruningMethod, available_methods, base, build_method, register_method, top_k_masks
from tests.lit import TinyClassifier, epoch_checkpoints, loader, trainer

NO_BN = ["backbone.mix", "backbone.fc1"]  # TinyClassifier's layers without BatchNorm


@pytest.mark.parametrize("name", available_methods())
def test_every_registered_name_builds_its_method(name):
    method = build_method(name)
    assert isinstance(method, PruningMethod) and method.name == name
    assert isinstance(method.config(), dict)


def test_the_builtin_methods_are_registered():
    assert {"oneshot", "ssr_l20", "ssr_l21"} <= set(available_methods())
    assert available_methods() == sorted(available_methods())


def test_an_unknown_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="unknown pruning method 'magnitude'") as err:
        build_method("magnitude")
    assert all(repr(name) in str(err.value) for name in available_methods())
    assert "plugins=[your_module or path/to/file.py]" in str(err.value)  # how one of your own is found


@pytest.mark.parametrize(("given", "meant"), [("SSR_L20", "ssr_l20"), ("ssr-l20", "ssr_l20"), ("tailor", "taylor")])
def test_a_misspelled_method_name_gets_the_name_it_most_likely_meant(given, meant):
    with pytest.raises(ValueError, match=f"unknown pruning method '{given}' \\(did you mean '{meant}'\\?\\)"):
        build_method(given)


@pytest.mark.parametrize("name", available_methods())
def test_an_unknown_argument_is_a_type_error_naming_the_method(name):
    with pytest.raises(TypeError, match=f"pruning method '{name}'.*'nonsense'"):
        build_method(name, nonsense=1)


def test_a_name_cannot_be_registered_twice(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    with pytest.raises(ValueError, match="already registered"):
        register_method("oneshot", lambda: None)


def test_top_k_masks_prefer_the_higher_score_then_the_lower_index():
    masks = top_k_masks({"a": torch.tensor([1.0, 3.0, 2.0, 3.0]), "b": torch.tensor([5.0, 5.0, 5.0])},
                        {"a": 2, "b": 1})
    assert masks["a"].tolist() == [False, True, False, True]
    assert masks["b"].tolist() == [True, False, False]
    # NaN sorted first: [1, nan, 3, 2] kept channels 1 and 2, the NaN one by accident; refused now
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"the scores of group 'g' are not finite at channel\(s\) \[1\] \(of 4\)"):
            top_k_masks({"g": torch.tensor([1.0, bad, 3.0, 2.0])}, {"g": 2})


# (a few steps: SSL and network slimming zero no filter in them, which the prune warns of)
@pytest.mark.filterwarnings("ignore:pruning method '(ssl|bn_scale)' .* sparsify phase zeroed no filter")
@pytest.mark.parametrize("name", available_methods())
def test_every_method_prunes_a_channels_last_model_and_keeps_its_layout(tmp_path, name):
    """A model moved to channels_last for speed: its 4-d weights are not contiguous, which the
    methods' in-place updates (SSR's proximal steps, SSL's and slimming's penalties) must allow."""
    pl.seed_everything(0)
    model = TinyClassifier().to(memory_format=torch.channels_last)
    method = build_method(name)
    schedule = (PruningSchedule(sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=2, stop_early=False)
                if method.sparsifies else PruningSchedule(sparsify_epochs=0, finetune_epochs=1))
    cb = Pruning(method=name, target={"macs": 0.5}, schedule=schedule, verbose=False,
                 method_kwargs={"compensate": False} if name == "fsm" else None,  # no validation data to check it on
                 ignored_layers=NO_BN if method.requires_batchnorm else [])
    trainer(tmp_path, [cb], schedule.total_epochs).fit(model, loader())
    assert len(cb.events) == 1 and cb.result.pruned["macs"] <= 0.5 * cb.result.dense["macs"]
    spatial = [p for p in model.parameters() if p.dim() == 4 and p.shape[2:] != (1, 1)]
    assert spatial and all(p.is_contiguous(memory_format=torch.channels_last) for p in spatial)
    assert all(torch.isfinite(p).all() for p in model.parameters())


class KeepFirst(PruningMethod):
    """A user's method: keep the first k channels of every group."""

    name = "keep_first"

    def __init__(self, offset=0):
        self.offset = offset
        self.calls = []

    def setup(self, context):
        super().setup(context)
        self.calls.append("setup")

    def select(self, keep):
        self.calls.append("select")
        return {g.name: torch.arange(g.size) < keep[g.name] + self.offset for g in self.context.groups}

    def after_rebuild(self, model, plan):
        self.calls.append("after_rebuild")


def test_a_registered_user_method_runs_through_the_engine(monkeypatch, tmp_path):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    register_method("keep_first", KeepFirst)
    assert "keep_first" in available_methods()
    pl.seed_everything(0)
    model = TinyClassifier()
    schedule = PruningSchedule(sparsify_epochs=0, finetune_epochs=1)
    cb = Pruning(method="keep_first", target={"filters": 0.5}, schedule=schedule, verbose=False)
    trainer(tmp_path, [cb], 1).fit(model, loader())
    assert cb.method.calls == ["setup", "select", "after_rebuild"]
    assert all(kept == list(range(len(kept))) for kept in cb.plan.kept.values())
    assert cb.result.method == "keep_first"

    # a method that keeps other counts than the target's is refused at set-up, before training
    bad = Pruning(method=KeepFirst(offset=-100), target={"filters": 0.5}, schedule=schedule, verbose=False)
    fit = trainer(tmp_path, [bad], 1)
    with pytest.raises(RuntimeError, match=r"failed in select\(\), rehearsed at set-up .* kept 0 channels of"):
        fit.fit(TinyClassifier(), loader())
    assert fit.global_step == 0


class Gate(PruningMethod):
    """A user's method that gates every conv's output through forward hooks (all ones here)."""

    name = "gate"
    sparsifies = True

    def __init__(self, tidy=False):
        self.tidy = tidy  # removes its hooks in select(), as the protocol asks
        self.handles = []

    def setup(self, context):
        super().setup(context)
        for m in context.model.modules():
            if isinstance(m, torch.nn.Conv2d):
                gate = torch.ones(m.out_channels)
                self.handles.append(m.register_forward_hook(lambda mod, i, out, g=gate: out * g.view(1, -1, 1, 1)))

    def select(self, keep):
        if self.tidy:
            for handle in self.handles:
                handle.remove()
            self.handles = []
        return {g.name: torch.arange(g.size) < keep[g.name] for g in self.context.groups}


class UncopiableGate(Gate):
    """Gate holding a lock: it cannot be copied, so it is not rehearsed, and fails at the real prune."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()


def _refused_at_setup(tmp_path, method, match, error=RuntimeError, trainer_kwargs=None, **kwargs):
    """Fit TinyClassifier with ``method`` (1 + 1 epochs, half the filters): refused with ``match``
    before the first optimizer step, the model as it was."""
    schedule = PruningSchedule(sparsify_epochs=1, finetune_epochs=1)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit = trainer(tmp_path, [Pruning(method=method, target={"filters": 0.5}, schedule=schedule, verbose=False,
                                     **kwargs)], 2, **(trainer_kwargs or {}))
    with pytest.raises(error, match=match):
        fit.fit(model, loader())
    assert fit.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_method_that_leaves_its_forward_hooks_at_the_prune_is_named(tmp_path):
    schedule = PruningSchedule(sparsify_epochs=1, finetune_epochs=1)
    _refused_at_setup(tmp_path, Gate(), r"pruning method 'gate' failed in select\(\), rehearsed at set-up .*it left "
                                        r"hooks on 'backbone\.conv_a' \(forward hook\).* This fit trained "
                                        r"nothing")  # (at select(), not only where the rebuild fails)

    # not rehearsed (it cannot be copied): the real prune says the same, and undoes nothing it did not do
    model = TinyClassifier()
    cb = Pruning(method=UncopiableGate(), target={"filters": 0.5}, schedule=schedule, verbose=False)
    fit = trainer(tmp_path, [cb], 2)
    with pytest.warns(UserWarning, match="cannot be copied"), \
            pytest.raises(RuntimeError, match=r"'gate' left hooks on .*\(forward hook\).* The prune at the start of epoch 1 was "
                                              r"not made: the model and the optimizer are as they were"):
        fit.fit(model, loader())
    assert cb.plan is None and [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == [
        m.out_channels for m in TinyClassifier().modules() if isinstance(m, torch.nn.Conv2d)]

    # the same method removing its hooks in select() prunes
    cb = Pruning(method=Gate(tidy=True), target={"filters": 0.5}, schedule=schedule, verbose=False)
    model = TinyClassifier()
    trainer(tmp_path, [cb], 2).fit(model, loader())
    assert cb.plan is not None and not any(m._forward_hooks for m in model.modules())


class GradientMeans(PruningMethod):
    """A user's method that scores channels by the output gradients a backward hook records."""

    name = "gradient_means"
    sparsifies = True

    def setup(self, context):
        super().setup(context)
        self.scores = {g.name: torch.zeros(g.size) for g in context.groups}
        self.handles = []
        for g in context.groups:
            module = context.model.get_submodule(g.out_modules[-1])
            self.handles.append(module.register_full_backward_hook(self._recorder(g.name)))

    def _recorder(self, name):
        def record(module, grad_input, grad_output):
            out = grad_output[0]
            self.scores[name] += out.abs().transpose(0, 1).reshape(out.shape[1], -1).mean(1)
        return record

    def select(self, keep):  # (its hooks stay: they would fail on the smaller model's first backward)
        return top_k_masks(self.scores, keep)


def test_a_method_that_leaves_its_backward_hooks_at_the_prune_is_refused_before_training(tmp_path):
    """Only forward hooks were checked: a backward hook left by select() passed the set-up and failed
    at the first step after the prune (size 16 against 6), the sparsify phase lost (probe)."""
    _refused_at_setup(tmp_path, GradientMeans(), r"pruning method 'gradient_means' failed in select\(\), rehearsed at "
                                                 r"set-up .*it left hooks on 'backbone\.bn_a' \(backward hook\), "
                                                 r"'backbone\.fc1' \(backward hook\)")


class ChannelMeans(Gate):
    """A user's method whose forward hook adds a training batch's channel means into a float32
    sum with ``index_add_``, which wants one dtype: under bf16 autocast its first batch fails."""

    name = "channel_means"

    def setup(self, context):
        PruningMethod.setup(self, context)
        stem = context.model.backbone.stem
        self.sums = torch.zeros(stem.out_channels)
        self.handles = [stem.register_forward_hook(self.record)]

    def record(self, module, inputs, output):
        if module.training:
            self.sums.index_add_(0, torch.arange(len(self.sums)), output.detach().mean((0, 2, 3)))


def test_the_rehearsal_runs_the_example_batch_in_the_fits_autocast(tmp_path):
    """The rehearsal ran the example batch in float32 under a bf16-mixed fit: a method whose hook
    fails on bfloat16 features passed set-up and failed at the fit's first batch (an item the
    notes carried)."""
    _refused_at_setup(tmp_path, ChannelMeans(), r"pruning method 'channel_means' failed in the forward and backward "
                                                r"pass of the example batch, rehearsed at set-up .*Float\) and source "
                                                r"\(BFloat16\)", trainer_kwargs={"precision": "bf16-mixed"})
    cb = Pruning(method=ChannelMeans(tidy=True), target={"filters": 0.5},
                 schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=1), verbose=False)
    trainer(tmp_path, [cb], 2).fit(TinyClassifier(), loader())  # in float32 it works
    assert cb.plan is not None


class Halving(KeepFirst):
    """A user's method whose select() halves the first convolution's weights before it chooses."""

    name = "halving"

    def select(self, keep):
        with torch.no_grad():
            next(m for m in self.context.model.modules() if isinstance(m, torch.nn.Conv2d)).weight.mul_(0.5)
        return super().select(keep)


def test_a_select_that_changes_the_model_is_refused_before_training(tmp_path):
    """The masked model is made after select(): a change it made went into the pruned model
    unchecked, accepted silently (probe)."""
    _refused_at_setup(tmp_path, Halving(), r"pruning method 'halving' failed in select\(\), rehearsed at set-up .*it "
                                           r"changed the model's weights \(backbone\.stem\.weight\), and not only in "
                                           r"the channels it drops: select\(\) only chooses the channels")
    schedule = PruningSchedule(sparsify_epochs=1, finetune_epochs=1)
    # a forward in select() (scoring by activations) moves BatchNorm's running statistics, not the weights:
    # accepted (it was refused: review)
    cb = Pruning(method=ForwardInSelect(), target={"filters": 0.5}, schedule=schedule, verbose=False)
    trainer(tmp_path, [cb], 2).fit(TinyClassifier(), loader())
    assert cb.plan is not None
    # zeroing the channels it drops changes nothing the rebuild keeps: accepted (it was refused); zeroing
    # channels it keeps is refused
    for zeroes_kept in (False, True):
        method = ZeroingSelect(zeroes_kept)
        if zeroes_kept:
            _refused_at_setup(tmp_path, method, r"'zeroing_select' failed in select\(\), rehearsed at set-up .*it "
                                                r"changed the model's weights \(backbone\.stem\.weight")
            continue
        cb = Pruning(method=method, target={"filters": 0.5}, schedule=schedule, verbose=False)
        model = TinyClassifier()
        trainer(tmp_path, [cb], 2).fit(model, loader())
        assert cb.plan is not None and model.backbone.stem.out_channels < TinyClassifier().backbone.stem.out_channels


class ZeroingSelect(KeepFirst):
    """A user's method whose select() zeroes the weights of the channels it drops (or keeps)."""

    name = "zeroing_select"

    def __init__(self, zeroes_kept=False):
        super().__init__()
        self.zeroes_kept = zeroes_kept

    def select(self, keep):
        masks = super().select(keep)
        params = dict(self.context.model.named_parameters())
        with torch.no_grad():
            for g in self.context.groups:
                zeroed = masks[g.name] if self.zeroes_kept else ~masks[g.name]
                for part in g.slices:
                    params[part.param].index_fill_(part.dim, part.index[zeroed].flatten(), 0.0)
        return masks


class ForwardInSelect(KeepFirst):
    """A user's method whose select() runs the example batch through the model, in training mode."""

    name = "forward_in_select"

    def select(self, keep):
        with torch.no_grad():
            self.context.model(self.context.example)
        return super().select(keep)


class LateNumpy(KeepFirst):
    """A user's method whose state holds a numpy scalar from its second save on."""

    name = "late_numpy"

    def __init__(self):
        super().__init__()
        self.saves = 0

    def state_dict(self):
        self.saves += 1
        return {"avg": np.float64(0.5)} if self.saves > 1 else {}


def test_a_method_state_that_a_checkpoint_cannot_hold_later_in_the_fit_is_warned_of(tmp_path):
    """The rehearsal checks the method's state_dict() once, at set-up: one that took a numpy value
    later made every checkpoint after it unresumable, said nowhere (probe)."""
    schedule = PruningSchedule(sparsify_epochs=3, finetune_epochs=1)  # (its state is saved until the prune)
    cb = Pruning(method=LateNumpy(), target={"filters": 0.5}, schedule=schedule, verbose=False)
    with pytest.warns(UserWarning, match=r"pruning method 'late_numpy': its state_dict\(\) cannot go through a "
                                         r"checkpoint any more: it holds a value of type "
                                         r"numpy.* The checkpoints this fit writes from here on cannot be resumed"):
        trainer(tmp_path, [cb, epoch_checkpoints(tmp_path / "ckpts")], schedule.total_epochs).fit(
            TinyClassifier(), loader())
    assert sum("cannot go through a checkpoint any more" in w for w in cb.result.warnings) == 1


class MeanActivation(PruningMethod):
    """A user's method that scores each conv's filters by their mean |activation| over the
    training batches, recorded by forward hooks, and has no fallback for an empty record."""

    name = "mean_activation"

    def __init__(self, training_only=False):
        self.training_only = training_only  # records training batches only (if module.training), as README advises

    def setup(self, context):
        super().setup(context)
        self.seen, self.handles = {}, []
        for name, m in context.model.named_modules():
            if isinstance(m, torch.nn.Conv2d):
                self.handles.append(m.register_forward_hook(lambda mod, i, out, n=name: None if (
                    self.training_only and not mod.training) else self.seen.setdefault(n, []).append(
                    out.detach().abs().mean((0, 2, 3)))))

    def select(self, keep):
        for handle in self.handles:
            handle.remove()
        if not self.seen:
            raise RuntimeError("no activations recorded")
        masks = {}
        for group in self.context.groups:
            recorded = self.seen.get(group.name)  # (a group rooted at a linear layer: no record, kept in order)
            score = torch.stack(recorded).mean(0) if recorded else -torch.arange(group.size, dtype=torch.float)
            order = torch.argsort(score, descending=True)[: keep[group.name]]
            masks[group.name] = torch.zeros(group.size, dtype=torch.bool).index_fill_(0, order, True)
        return masks


def test_a_method_that_records_activations_with_forward_hooks_is_rehearsed_with_a_batch(tmp_path):
    """The set-up's rehearsal ran no forward pass: a method scoring filters by the activations its
    forward hooks record was refused there, though the fit sends it batches before its prune. The
    rehearsal sends the example batch through the copy where the fit trains before its first prune;
    where the prune comes before any batch, its refusal there is the fit's own."""
    after_a_warm_up = PruningSchedule(warmup_epochs=1, sparsify_epochs=0, finetune_epochs=1)
    for training_only in (False, True):  # (in the model's mode: a method may record training batches only)
        model = TinyClassifier()
        cb = Pruning(method=MeanActivation(training_only), target={"filters": 0.5}, schedule=after_a_warm_up,
                     verbose=False)
        trainer(tmp_path, [cb], 2).fit(model, loader())
        assert cb.plan is not None and not any(m._forward_hooks for m in model.modules())
    # without the hooks the model had before the method's: a user's hook that counts training batches is not fed
    fresh, counted = TinyClassifier(), []
    fresh.backbone.conv_a.register_forward_hook(lambda mod, i, out: counted.append(1) if mod.training else None)
    PruningEngine(MeanActivation(), target={"filters": 0.5}, schedule=after_a_warm_up).check_method(
        fresh, next(iter(loader()))[0])
    assert counted == []
    # a hook that is part of the computation (it returns the pooled features flattened) runs where it is needed
    shaped = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                 torch.nn.AdaptiveAvgPool2d(1), torch.nn.Linear(8, 3))
    shaped[3].register_forward_hook(lambda mod, i, out: out.flatten(1))
    PruningEngine("l1", target={"filters": 0.5}, schedule=after_a_warm_up).check_method(shaped, torch.randn(4, 1, 8, 8))
    at_once = PruningSchedule(sparsify_epochs=0, finetune_epochs=1)
    fit = trainer(tmp_path, [Pruning(method=MeanActivation(), target={"filters": 0.5}, schedule=at_once,
                                     verbose=False)], 1)
    with pytest.raises(RuntimeError, match=r"failed in select\(\), rehearsed at set-up .*no activations recorded"):
        fit.fit(TinyClassifier(), loader())
    assert fit.global_step == 0


class PoisonedTerm(PruningMethod):
    """A user's method whose training-time term turns NaN after ``after`` steps (0: at once), or
    whose update leaves NaN in the weights."""

    name = "poisoned_term"
    sparsifies = True

    def __init__(self, after=0, in_update=False):
        self.after, self.in_update, self.steps = after, in_update, 0

    def before_optimizer_step(self):
        self.steps += 1
        if not self.in_update and self.steps > self.after:
            for p in self.context.model.parameters():
                p.grad.add_(float("nan"))
                break

    def update(self):
        if self.in_update:
            with torch.no_grad():
                next(self.context.model.parameters()).fill_(float("inf"))
        return {}

    def select(self, keep):
        return {g.name: torch.arange(g.size) < keep[g.name] for g in self.context.groups}


def test_an_update_that_is_not_finite_is_refused_at_set_up(tmp_path):
    schedule = PruningSchedule(sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=2)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit = trainer(tmp_path, [Pruning(method=PoisonedTerm(in_update=True), target={"filters": 0.5}, schedule=schedule,
                                     verbose=False)], 2)
    with pytest.raises(RuntimeError, match=r"failed in update\(\), rehearsed .*it left NaN or infinity in "
                                           r"backbone\.stem\.weight \(the model's weights"):
        fit.fit(model, loader())
    assert fit.global_step == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class NormalizedTerm(PoisonedTerm):
    """A term that scales each gradient to unit norm: NaN on the rehearsal's zero gradients only.
    It scores channels by the gradients it saw, in update(), and selects by those scores."""

    name = "normalized_term"

    def setup(self, context):
        super().setup(context)
        self.seen = {g.name: torch.zeros(g.size) for g in context.groups}

    def before_optimizer_step(self):
        for p in self.context.model.parameters():
            p.grad.div_(p.grad.norm())

    def update(self):
        gradient = float(next(self.context.model.parameters()).grad.abs().sum())
        for name in self.seen:
            self.seen[name] += gradient
        return {}

    def select(self, keep):
        return top_k_masks({name: seen + torch.arange(seen.numel()) for name, seen in self.seen.items()}, keep)

    def state_dict(self):
        return {"seen": self.seen}

    def load_state_dict(self, state):
        self.seen = dict(state["seen"])


def test_a_term_not_finite_on_zero_gradients_is_said_at_set_up_and_named_when_the_loss_turns(tmp_path):
    """Refusing it refused a method that normalizes the gradients, finite on any real ones; said at
    set-up, it is named again by the loss guard if the fit's gradients turn it NaN too."""
    schedule = PruningSchedule(sparsify_epochs=2, finetune_epochs=1, update_every_n_steps=2)
    said = r"'(normalized|poisoned)_term': before_optimizer_step\(\) put NaN or infinity into the gradients of "
    with pytest.warns(UserWarning, match=said + r"backbone\.stem\.weight.* when they were all zero"):
        trainer(tmp_path, [Pruning(method=NormalizedTerm(), target={"filters": 0.5}, schedule=schedule,
                                   verbose=False)], 3).fit(TinyClassifier(), loader())  # trains to its end
    fit = trainer(tmp_path, [Pruning(method=PoisonedTerm(after=3), target={"filters": 0.5}, schedule=schedule,
                                     verbose=False)], 3)
    with pytest.raises(FloatingPointError, match=r"at optimizer step 5 .*Pruning method 'poisoned_term' works on "
                                                 r"the gradients before each step of this phase"):  # (finite at set-up)
        fit.fit(TinyClassifier(), loader())


def test_a_definition_run_again_replaces_itself_and_another_under_a_taken_name_is_refused(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    def define():  # a notebook cell run twice: two classes of one qualified name
        class Cell(KeepFirst):
            name = "cell"
        return Cell

    first, second = define(), define()
    register_method("cell", first)
    register_method("cell", second)
    assert base._REGISTRY["cell"] is second
    with pytest.raises(ValueError, match=r"'cell' is already registered \(.*Cell\); choose another name"):
        register_method("cell", KeepFirst)


@pytest.mark.parametrize(("name", "factory", "error", "text"), [
    ("", KeepFirst, ValueError, "a method's name is a non-empty string"),
    (3, KeepFirst, ValueError, "got 3"),
    ("my method", KeepFirst, ValueError, "got 'my method'"),
    ("as_dict", dict, TypeError, "dict is not a PruningMethod subclass"),
    ("answer", 42, TypeError, "got int"),
])
def test_a_bad_registration_is_refused_and_the_registry_stays_usable(monkeypatch, name, factory, error, text):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    before = available_methods()
    with pytest.raises(error, match=re.escape(text)):
        register_method(name, factory)
    assert available_methods() == before
    assert [row["name"] for row in base.method_table()] == before


def test_a_subclass_registered_under_its_own_name_reports_that_name(monkeypatch):
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    class KeepFirstTwice(KeepFirst):  # inherits name = "keep_first"
        pass

    register_method("keep_first_twice", KeepFirstTwice)
    register_method("not_a_method", lambda: object())
    assert build_method("keep_first_twice").name == "keep_first_twice"
    with pytest.raises(TypeError, match="'not_a_method': its factory .* returned a object, not a PruningMethod"):
        build_method("not_a_method")


def test_a_method_object_without_a_name_is_refused_when_given():
    class Nameless(KeepFirst):
        name = ""

    with pytest.raises(ValueError, match="pruning method .*Nameless has no name: set the class attribute name"):
        Pruning(method=Nameless(), target={"filters": 0.5})


class _EntryPoint:
    def __init__(self, name, value, load):
        self.name, self.value, self.load = name, value, load


def test_an_entry_point_may_name_a_module_that_registers_its_method_or_the_method(monkeypatch):
    import importlib.metadata
    import types

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    monkeypatch.setattr(base, "_entry_points_loaded", False)
    registering = types.ModuleType("registering")

    def load_registering():  # importing the module registers its method, under the entry point's name
        register_method("from_module", KeepFirst)
        return registering

    entries = [_EntryPoint("from_module", "registering", load_registering),
               _EntryPoint("from_class", "plugin:KeepFirst", lambda: KeepFirst)]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: entries)
    assert {"from_module", "from_class"} <= set(available_methods())

    monkeypatch.setattr(base, "_entry_points_loaded", False)
    monkeypatch.setattr(base, "_BROKEN_ENTRY_POINTS", {})
    silent = types.ModuleType("silent")

    def missing():
        raise AttributeError("module 'plugin' has no attribute 'Nope'")

    # a broken entry point fails where it is asked for, each time, with its cause; the others load and
    # work (one broken entry point refused every method, then was forgotten: probe)
    entries[:] = [_EntryPoint("unregistered", "silent", lambda: silent), _EntryPoint("nope", "plugin:Nope", missing),
                  _EntryPoint("working", "plugin:KeepFirst", lambda: KeepFirst)]
    assert "working" in available_methods() and "nope" not in available_methods()
    assert isinstance(build_method("working"), KeepFirst)
    for _ in range(2):
        with pytest.raises(ImportError, match="module 'silent' registers no method named 'unregistered': name the "
                                              "method's class in the entry point"):
            build_method("unregistered")
        with pytest.raises(ImportError, match=r"'nope' declared by entry point 'plugin:Nope' failed to load: "
                                              r"AttributeError: module 'plugin' has no attribute 'Nope'"):
            build_method("nope")


def test_two_lambdas_are_two_definitions():
    saved = dict(base._REGISTRY)
    try:
        register_method("by_lambda", lambda: KeepFirst())
        with pytest.raises(ValueError, match="'by_lambda' is already registered"):
            register_method("by_lambda", lambda: KeepFirst(offset=1))
    finally:
        base._REGISTRY.clear()
        base._REGISTRY.update(saved)


@pytest.mark.parametrize("value", [{"rho": 0.5, "n": 3, "flag": True}, {"x": torch.tensor(2.0)}, None])
def test_metrics_are_numbers_or_one_element_tensors(value):
    import numpy as np

    assert base.checked_metrics("m", "update", value) == (value or {})
    assert base.checked_metrics("m", "update", {"f": np.float32(1.5)}) == {"f": np.float32(1.5)}
    with pytest.raises(TypeError, match=r"pruning method 'm': update\(\) returned 'v': Tensor"):
        base.checked_metrics("m", "update", {"v": torch.ones(3)})
    with pytest.raises(TypeError, match=r"update\(\) must return a dict of metric name -> number \(or None\), got list"):
        base.checked_metrics("m", "update", [1.0])


class NoSelect(PruningMethod):
    name = "no_select"


class NoSuperSetup(KeepFirst):
    name = "no_super_setup"

    def setup(self, context):
        self.calls.append("setup")  # (super().setup(context) forgotten)


class ListImportance(KeepFirst):
    name = "list_importance"

    def __init__(self, scores="list"):
        super().__init__()
        self.scores = scores

    def importance(self, model, groups):
        return {g.name: ([1.0] * g.size if self.scores == "list" else torch.full((g.size,), float("nan")))
                for g in groups}


@pytest.mark.parametrize("method,allocation,said", [
    (NoSelect(), "uniform", r"NoSelect does not implement select\(keep\): every method gives, per group, a bool mask"),
    (NoSuperSetup(), "uniform", r"has no attribute 'context' \(its setup\(\) must call super\(\).setup\(context\)"),
    (ListImportance(), "global", (r"pruning method 'list_importance': importance\(\)'s score of group '.*' is not a "
                                 r"tensor \(a list\)")),
    (ListImportance("nan"), "global", r"importance\(\)'s score of group '.*' is not finite")])
def test_a_plugin_authors_mistakes_are_named_with_what_to_do(tmp_path, method, allocation, said):
    """NotImplementedError with no text, AttributeError 'context', a raw AttributeError from the
    allocation and a message naming neither the method nor importance() (probe)."""
    _refused_at_setup(tmp_path, method, said, error=Exception, allocation=allocation)


class LateNaN(PruningMethod):
    """Scores of its own for the global allocation, which turn NaN once it has seen more than one
    step (finite in the set-up's rehearsal, which runs one)."""

    name = "late_nan"
    sparsifies = True

    def setup(self, context):
        super().setup(context)
        self.seen = 0

    def before_optimizer_step(self):
        self.seen += 1

    def importance_at_prune(self):
        return {g.name: torch.full((g.size,), float("nan") if self.seen > 1 else 1.0) for g in self.context.groups}

    def select(self, keep):
        return top_k_masks(self.importance_at_prune(), keep)


def test_scores_that_turn_nan_by_the_prune_name_the_method_and_its_hook(tmp_path):
    """They failed at the prune with "allocation='global': the importance scores of group ... are
    not finite", naming neither the method nor the hook (probe)."""
    schedule = PruningSchedule(sparsify_epochs=1, finetune_epochs=1, stop_early=False)
    model = TinyClassifier()
    cb = Pruning(method=LateNaN(), target={"filters": 0.5}, allocation="global", schedule=schedule, verbose=False)
    with pytest.raises(ValueError, match=r"pruning method 'late_nan': importance_at_prune\(\)'s score of group '.*' is "
                                         r"not finite \(a Tensor\): give one finite value per channel"):
        trainer(tmp_path, [cb], 2).fit(model, loader())
    assert cb.plan is None
