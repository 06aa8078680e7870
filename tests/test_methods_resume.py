"""Every registered method survives a save -> resume in the middle of its pruning phase: the
resumed fit ends with the events, plan and weights of an uninterrupted one."""

import lightning.pytorch as pl
import pytest
import torch

from lightning_ssr import PLAN_CHECKPOINT_KEY, Pruning, PruningSchedule
from lightning_ssr.methods import available_methods, build_method
from lightning_ssr.methods.oneshot import OneShot as OneShotMethod
from tests.lit import TinyClassifier, assert_same_weights, epoch_checkpoints, loader, stopped_fit, trainer

# sparsifying methods: the checkpoint of epoch 0 falls inside the sparsify phase (prune at epoch 2)
SPARSIFY = PruningSchedule(sparsify_epochs=2, finetune_epochs=1, update_every_n_steps=2, stop_early=False)
# one-shot methods: two events (epochs 0 and 2); the checkpoint of epoch 0 falls between them.
# (With epochs_between_prunes=1 a fit stopped by max_epochs=1 would run the second event at the
# end of epoch 0 -- "no epoch left" -- and the checkpoint would hold both events; see the last test.)
ITERATIVE = PruningSchedule(sparsify_epochs=0, prune_events=2, epochs_between_prunes=2, finetune_epochs=1)
NO_BN = ["backbone.mix", "backbone.fc1"]  # TinyClassifier's layers without BatchNorm
METHOD_KWARGS = {  # strong enough terms that the sparsify phase changes the weights visibly
    "bn_scale": {"penalty": 1e-2},
    "ssl": {"lam": 1e-2},
    "ssr_l20": {"rho": 0.5, "rho_growth": 1.2},
    "ssr_l21": {"rho": 0.5, "rho_growth": 1.2},
    "taylor": {"batches": 6},  # spans the checkpoint: the restored window counts
    "random": {"seed": 1},
    "fsm": {"compensate": False},  # its BatchNorm check needs validation data, which these fits have none of
}


def _setup(name):
    sparsifies = build_method(name).sparsifies
    schedule = SPARSIFY if sparsifies else ITERATIVE
    ignored = NO_BN if build_method(name).requires_batchnorm else []
    return sparsifies, schedule, ignored


# (a few steps: SSL and network slimming zero no filter in them, which the prune warns of)
@pytest.mark.filterwarnings("ignore:pruning method '(ssl|bn_scale)' .* sparsify phase zeroed no filter")
@pytest.mark.parametrize("name", available_methods())
def test_every_method_resumes_mid_phase_like_an_uninterrupted_run(tmp_path, name):
    sparsifies, schedule, ignored = _setup(name)

    def run(max_epochs, ckpt_path=None, dirpath=None):
        pl.seed_everything(0)
        model = TinyClassifier()
        cb = Pruning(method=name, method_kwargs=METHOD_KWARGS.get(name), target={"macs": 0.5}, schedule=schedule,
                     ignored_layers=ignored, verbose=False)
        ckpt = epoch_checkpoints(dirpath or tmp_path / "unused", resume_from=ckpt_path)
        with stopped_fit(schedule, max_epochs):
            trainer(tmp_path, [cb, ckpt], max_epochs).fit(model, loader(shuffle=True), ckpt_path=ckpt_path)
        return model, cb

    full_model, full_cb = run(schedule.total_epochs)
    assert len(full_cb.events) == schedule.prune_events
    assert [e["epoch"] for e in full_cb.events] == [schedule.prune_epoch(k) for k in range(schedule.prune_events)]
    assert full_cb.result.pruned["macs"] <= 0.5 * full_cb.result.dense["macs"]

    run(1, dirpath=tmp_path / "ckpts")  # stops after epoch 0, in the middle of the phase
    path = tmp_path / "ckpts" / "epoch=0.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("Pruning"))
    assert state["method"] == name
    if sparsifies:  # before the prune: no plan yet
        assert state["events_done"] == 0 and state["plan"] is None and PLAN_CHECKPOINT_KEY not in checkpoint
    else:  # between the two events: the first one's plan
        assert state["events_done"] == 1 and state["events"] == full_cb.events[:1]
        assert checkpoint[PLAN_CHECKPOINT_KEY] == state["plan"]
        assert state["plan"] != full_cb.plan.to_dict()

    model, cb = run(schedule.total_epochs, ckpt_path=path)
    assert cb.events == full_cb.events
    assert cb.plan.to_dict() == full_cb.plan.to_dict()
    assert_same_weights(model, full_model)
    assert cb.result.pruned == full_cb.result.pruned
    # the one-off timings of the run's first process (set-up, each event's rebuild) are still given
    assert set(cb.result.timings) == set(full_cb.result.timings)
    assert len(cb.result.timings.get("rebuild_s", [])) == len(full_cb.result.timings.get("rebuild_s", []))
    # the resumed fit trained only the epochs after the checkpoint
    assert len(model.losses) == 4 * (schedule.total_epochs - 1)
    assert model.losses == full_model.losses[4:]


def _stop_and_resume(tmp_path, name, schedule, stop, allocation=None):
    def run(max_epochs, dirpath, ckpt_path=None):
        pl.seed_everything(0)
        model = TinyClassifier()
        cb = Pruning(method=name, target={"macs": 0.5}, schedule=schedule, allocation=allocation, verbose=False)
        ckpt = epoch_checkpoints(dirpath, resume_from=ckpt_path)
        with stopped_fit(schedule, max_epochs):
            trainer(tmp_path, [cb, ckpt], max_epochs).fit(model, loader(shuffle=True), ckpt_path=ckpt_path)
        return model, cb

    full = run(schedule.total_epochs, tmp_path / "full")
    run(stop, tmp_path / "stopped")
    resumed = run(schedule.total_epochs, tmp_path / "resumed", ckpt_path=tmp_path / "stopped" / f"epoch={stop - 1}.ckpt")
    return full, resumed


BEFORE_AN_EVENT = [
    ("oneshot", PruningSchedule(sparsify_epochs=0, prune_events=2, epochs_between_prunes=1, finetune_epochs=1), 1,
     None),
    ("taylor", PruningSchedule(sparsify_epochs=2, finetune_epochs=1, update_every_n_steps=2, stop_early=False), 2,
     None),
    # (its counts come at the prune, from the scores of the steps on both sides of the checkpoint)
    ("taylor", PruningSchedule(sparsify_epochs=2, finetune_epochs=1, update_every_n_steps=2, stop_early=False), 2,
     "global"),
]


@pytest.mark.parametrize("name,schedule,stop,allocation", BEFORE_AN_EVENT,
                         ids=[f"{b[0]}@{b[3] or 'default'}" for b in BEFORE_AN_EVENT])
def test_a_fit_stopped_one_epoch_before_an_event_resumes_to_the_same_run(tmp_path, name, schedule, stop, allocation):
    """A fit whose max_epochs ends just before a prune event leaves that event to the resumed fit:
    events (with their epochs), plan, weights and costs are those of an uninterrupted fit."""
    (full_model, full_cb), (model, cb) = _stop_and_resume(tmp_path, name, schedule, stop, allocation)
    assert cb.events[0]["allocation"] == (allocation or "uniform")
    assert cb.plan.to_dict() == full_cb.plan.to_dict()
    assert_same_weights(model, full_model)
    assert cb.events == full_cb.events


def test_method_state_in_the_mid_sparsify_checkpoint(tmp_path):
    """What the checkpoint holds for the stateful methods, after the 4 steps of epoch 0."""
    pl.seed_everything(0)
    cb = Pruning(method="taylor", method_kwargs={"batches": 3}, target={"macs": 0.5}, schedule=SPARSIFY,
                 verbose=False)
    ckpt = epoch_checkpoints(tmp_path / "ckpts")
    with stopped_fit(SPARSIFY, 1):
        trainer(tmp_path, [cb, ckpt], 1).fit(TinyClassifier(), loader(shuffle=True))
    checkpoint = torch.load(tmp_path / "ckpts" / "epoch=0.ckpt", weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("Pruning"))
    method_state = state["method_state"]
    assert method_state["seen"] == 4
    assert all(w.shape[0] == 3 and bool((w >= 0).all()) and bool((w > 0).any())
               for w in method_state["window"].values())
    assert state["last_update_step"] == 4


class CountsPrunes(OneShotMethod):
    """An iterative one-shot method that keeps what it learned between prunes (how often it chose)."""

    def __init__(self):
        super().__init__()
        self.chosen = torch.zeros((), dtype=torch.long)

    def select(self, keep):
        self.chosen += 1
        return super().select(keep)

    def state_dict(self):
        return {"chosen": self.chosen.clone()}

    def load_state_dict(self, state):
        self.chosen = state["chosen"].clone()


def test_a_one_shot_methods_state_between_prunes_is_saved_and_restored(tmp_path):
    # only a sparsifying method's state was saved: this one's was None in every checkpoint, and a
    # resumed fit chose its second prune as if it were its first
    pl.seed_everything(0)
    cb = Pruning(method=CountsPrunes(), target={"macs": 0.5}, schedule=ITERATIVE, verbose=False)
    ckpt = epoch_checkpoints(tmp_path / "ckpts")
    with stopped_fit(ITERATIVE, 1):
        trainer(tmp_path, [cb, ckpt], 1).fit(TinyClassifier(), loader(shuffle=True))
    checkpoint = torch.load(tmp_path / "ckpts" / "epoch=0.ckpt", weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("Pruning"))
    assert int(state["method_state"]["chosen"]) == 1  # the first event's choice, between the two
    resumed = CountsPrunes()
    pl.seed_everything(0)
    trainer(tmp_path, [Pruning(method=resumed, target={"macs": 0.5}, schedule=ITERATIVE, verbose=False),
                       epoch_checkpoints(tmp_path / "again", resume_from=tmp_path / "ckpts" / "epoch=0.ckpt")],
            ITERATIVE.total_epochs).fit(TinyClassifier(), loader(shuffle=True),
                                        ckpt_path=str(tmp_path / "ckpts" / "epoch=0.ckpt"))
    assert int(resumed.chosen) == 2  # the restored count, then the second event


class _UnfreezeAt(pl.Callback):
    """BackboneFinetuning's pattern: a layer frozen when the fit starts trains from an epoch on."""

    def __init__(self, layer: str, epoch: int):
        self.layer, self.epoch = layer, epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch >= self.epoch:
            pl_module.get_submodule(self.layer).requires_grad_(True)


@pytest.mark.filterwarnings(r"ignore:.*backbone.conv_a is frozen \(requires_grad=False\)")
def test_a_layer_unfrozen_during_the_fit_is_measured_as_at_set_up_also_on_resume(tmp_path):
    """Which parameters are frozen was read when the groups were traced: a fit resumed after a
    callback unfroze a layer traced it trainable, and the SSR term and the prune of the resumed fit
    differed from the uninterrupted one's (probe, with BackboneFinetuning). The run keeps the set-up's
    split in its state and warns at the prune that the layer trains now."""
    schedule = SPARSIFY

    def run(max_epochs, ckpt_path=None, dirpath=None):
        pl.seed_everything(0)
        model = TinyClassifier()
        model.backbone.conv_a.requires_grad_(False)
        cb = Pruning(method="ssr_l20", method_kwargs=METHOD_KWARGS["ssr_l20"], target={"macs": 0.5},
                     schedule=schedule, verbose=False)
        ckpt = epoch_checkpoints(dirpath or tmp_path / "unused", resume_from=ckpt_path)
        with stopped_fit(schedule, max_epochs):
            trainer(tmp_path, [cb, _UnfreezeAt("backbone.conv_a", 1), ckpt], max_epochs).fit(
                model, loader(shuffle=True), ckpt_path=ckpt_path)
        return model, cb

    with pytest.warns(UserWarning, match=r"backbone.conv_a was frozen or trainable when the pruning set up and now "
                                         r"the other .*measures, regularizes and ranks their channels as at set-up"):
        full_model, full_cb = run(schedule.total_epochs)
    run(1, dirpath=tmp_path / "ckpts")
    state = next(v for k, v in torch.load(tmp_path / "ckpts" / "epoch=0.ckpt", weights_only=True)["callbacks"].items()
                 if k.startswith("Pruning"))
    assert state["frozen"] == ["backbone.conv_a.weight"]
    with pytest.warns(UserWarning, match=r"backbone.conv_a was frozen or trainable when the pruning set up"):
        model, cb = run(schedule.total_epochs, ckpt_path=tmp_path / "ckpts" / "epoch=0.ckpt")
    assert cb.plan.to_dict() == full_cb.plan.to_dict()
    assert_same_weights(model, full_model)
