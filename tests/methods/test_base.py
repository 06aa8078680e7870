"""The method registry and protocol: any registered method runs through the engine."""

import lightning.pytorch as pl
import pytest
import torch

from lightning_ssr import Pruning, PruningSchedule
from lightning_ssr.methods import PruningMethod, available_methods, base, build_method, register_method, top_k_masks
from tests.lit import TinyClassifier, loader, trainer

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

    # a method that keeps fewer channels than a layer's floor is refused
    bad = Pruning(method=KeepFirst(offset=-100), target={"filters": 0.5}, schedule=schedule, verbose=False)
    with pytest.raises(RuntimeError, match="keeps 0 channels"):
        trainer(tmp_path, [bad], 1).fit(TinyClassifier(), loader())
