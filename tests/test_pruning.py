"""The generic ``Pruning`` engine and its ``SSRPruning`` preset inside ``Trainer.fit``."""

import dataclasses
import io
import logging
import math
import re
import shutil
import sys
import warnings

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_ssr import (
    PLAN_CHECKPOINT_KEY,
    PlanMismatchError,
    Pruning,
    PruningPlan,
    PruningResult,
    PruningSchedule,
    SSRPruning,
    apply_plan,
    end_cosines,
    load_pruned,
)
from lightning_ssr.methods import PruningMethod
from tests.lit import (
    RecordingClassifier,
    Snapshot,
    TinyClassifier,
    assert_same_weights,
    epoch_checkpoints,
    loader,
    stopped_fit,
    trainer,
)

SCHEDULE = PruningSchedule(warmup_epochs=1, sparsify_epochs=2, finetune_epochs=2, update_every_n_steps=2,
                           stop_early=False)
STATE_KEYS = {"method", "method_state", "plan", "events_done", "events", "trajectory", "prune_early", "frozen",
              "last_update_step", "dense", "latency", "settings", "warnings", "warnings_until_done", "timings",
              "rng", "epoch_progress"}


def test_schedule_epochs():
    # the prune happens at the START of the epoch after warm-up and sparsification
    assert SCHEDULE.prune_epoch() == 3 and SCHEDULE.total_epochs == 5
    with pytest.warns(FutureWarning, match=r"admm_epochs is the former name of sparsify_epochs.*sparsify_epochs=4"):
        assert PruningSchedule(admm_epochs=4).sparsify_epochs == 4  # the former name is still accepted
    # both names, disagreeing: the former one silently won (probe)
    with pytest.raises(ValueError, match=r"sparsify_epochs=1 and admm_epochs=2 \(its former name\) disagree"):
        PruningSchedule(sparsify_epochs=1, admm_epochs=2)
    # the signature's default is a plain 10, which LightningCLI and OmegaConf read (review)
    from omegaconf import OmegaConf

    assert OmegaConf.structured(PruningSchedule).sparsify_epochs == 10
    iterative = PruningSchedule(warmup_epochs=1, sparsify_epochs=2, prune_events=3, epochs_between_prunes=2,
                                finetune_epochs=4)
    assert [iterative.prune_epoch(k) for k in range(3)] == [3, 5, 7]
    assert iterative.total_epochs == 11
    assert [iterative.phase(0, 0), iterative.phase(1, 0), iterative.phase(4, 1), iterative.phase(9, 3)] == [
        "warmup", "sparsify", "prune", "finetune"]


def test_callback_shrinks_the_model_within_one_fit_and_keeps_training(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    dense_params = sum(p.numel() for p in model.parameters())
    cb = SSRPruning(regularizer="l20", flops_budget=0.4, rho=0.5, schedule=SCHEDULE)
    snap = Snapshot()
    fit = trainer(tmp_path, [cb, snap], SCHEDULE.total_epochs)
    fit.fit(model, loader())

    assert [e["epoch"] for e in cb.events] == [SCHEDULE.prune_epoch()]
    assert sum(p.numel() for p in model.parameters()) < dense_params
    assert cb.result.pruned["macs"] <= 0.4 * cb.result.dense["macs"]
    assert cb.events[0]["macs"] == cb.result.pruned["macs"]
    assert cb.events[0]["params"] == cb.result.pruned["params"] == sum(p.numel() for p in model.parameters())
    assert cb.result.plan == cb.plan.to_dict()
    assert all(math.isfinite(v) for v in model.losses)
    # the model still had its dense shapes when the prune epoch began (the rebuild is at its
    # first step), and training continued on the small model: its parameters moved afterwards
    assert all(p.shape == snap.params[0][n].shape for n, p in snap.params[SCHEDULE.prune_epoch()].items())
    after_rebuild, final = snap.params[SCHEDULE.prune_epoch() + 1], dict(model.named_parameters())
    assert all(after_rebuild[n].shape == p.shape for n, p in final.items())
    assert any(not torch.equal(after_rebuild[n], p.detach()) for n, p in final.items())
    # the optimizer steps the model's (new) parameters and the LR schedule went on
    opt = fit.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** (SCHEDULE.total_epochs // 2))
    # the result is plain data: it round-trips through result.json
    assert PruningResult.load(cb.result.save(tmp_path / "result.json")) == cb.result
    # the callback state is plain data too: it loads with weights_only=True
    buffer = io.BytesIO()
    torch.save(cb.state_dict(), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["plan"] == cb.plan.to_dict()


class AliasedClassifier(TinyClassifier):
    """A backbone layer also held under a second name (``self.features = ...``, as a module for
    ``BackboneFinetuning`` or a wrapper makes): refused as a tied weight, with advice that led
    nowhere, before."""

    def __init__(self):
        super().__init__()
        self.first = self.backbone.conv_a


def test_a_layer_held_under_two_names_is_pruned_once_with_its_optimizer_state(tmp_path):
    pl.seed_everything(0)
    model = AliasedClassifier()
    cb = Pruning("l1", target={"macs": 0.5}, schedule=SCHEDULE, verbose=False)
    fit = trainer(tmp_path, [cb], SCHEDULE.total_epochs)
    fit.fit(model, loader())
    assert model.first is model.backbone.conv_a and model.first.weight.shape[0] < 12
    opt = fit.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert opt.state[model.first.weight]["momentum_buffer"].shape == model.first.weight.shape


@pytest.mark.filterwarnings("ignore:pruning method 'ssr_l21' kept every filter")  # (the lam=0 run, as warned)
def test_l21_regularization_shrinks_group_norms(tmp_path):
    """Against the same run with lam = 0 (AULM's term then pulls W towards its own prox, which is
    W + U: no shrinkage), the group norms at the end of the sparsify phase are smaller, and more
    groups are zero in V."""
    norms, surviving = {}, {}

    class AtTheEnd(Callback):
        def __init__(self, lam):
            self.lam = lam

        def on_train_epoch_end(self, trainer, pl_module):
            aulm = trainer.callbacks[0].method.aulm
            if trainer.current_epoch == 2 and aulm is not None and aulm.started:  # the last sparsify epoch
                norms[self.lam] = float(sum(g.norms(aulm.params).detach().sum() for g in aulm.groups))
                surviving[self.lam] = (sum(aulm.surviving().values()), sum(g.size for g in aulm.groups))

    results = {}
    for lam in (0.0, 0.5):
        pl.seed_everything(0)
        model = TinyClassifier()
        cb = SSRPruning(regularizer="l21", lam=lam, lam_scaling="none", rho=1.0,
                        schedule=PruningSchedule(sparsify_epochs=3, finetune_epochs=1, update_every_n_steps=1))
        trainer(tmp_path / f"lam{lam}", [cb, AtTheEnd(lam)], 4).fit(model, loader())
        results[lam] = cb.result
    assert norms[0.5] < 0.7 * norms[0.0]
    assert surviving[0.5][0] < surviving[0.0][0] == surviving[0.0][1]  # lam = 0 zeroes no group
    assert len(results[0.5].events) == 1 and any(r["after"] < r["before"] for r in results[0.5].layers)
    assert all(r["macs_after"] <= r["macs_before"] and r["params_after"] <= r["params_before"]
               for r in results[0.5].layers)


@pytest.mark.parametrize("stop_after", [1, 2, 4], ids=["warmup", "mid_sparsify", "after_rebuild"])
def test_resumed_run_restores_state_and_matches_an_uninterrupted_run(tmp_path, stop_after):
    def run(max_epochs, ckpt_path=None, dirpath=None):
        pl.seed_everything(0)
        model = TinyClassifier()
        cb = SSRPruning(regularizer="l20", flops_budget=0.4, rho=0.5, rho_growth=1.2, schedule=SCHEDULE)
        ckpt = epoch_checkpoints(dirpath or tmp_path / "unused", resume_from=ckpt_path)
        with stopped_fit(SCHEDULE, max_epochs):
            trainer(tmp_path, [cb, ckpt], max_epochs).fit(model, loader(shuffle=True), ckpt_path=ckpt_path)
        return model, cb

    full_model, full_cb = run(SCHEDULE.total_epochs)
    run(stop_after, dirpath=tmp_path / "ckpts")
    path = tmp_path / "ckpts" / f"epoch={stop_after - 1}.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    state = next(v for k, v in checkpoint["callbacks"].items() if k.startswith("SSRPruning"))
    assert set(state) == STATE_KEYS
    if stop_after <= SCHEDULE.warmup_epochs:
        assert state["method_state"] is None and PLAN_CHECKPOINT_KEY not in checkpoint
    elif stop_after < SCHEDULE.prune_epoch():
        assert state["method_state"]["aulm"] is not None and PLAN_CHECKPOINT_KEY not in checkpoint
        assert state["events_done"] == 0 and state["plan"] is None
    else:
        assert state["method_state"] is None and checkpoint[PLAN_CHECKPOINT_KEY]["groups"]
        assert state["events_done"] == 1 and state["plan"] == checkpoint[PLAN_CHECKPOINT_KEY]

    restored = {}

    class Probe(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            aulm = cb.method.aulm
            if not restored and aulm is not None and aulm.started:
                restored.update(V={k: v.clone() for k, v in aulm.V.items()},
                                U={k: v.clone() for k, v in aulm.U.items()}, rho=aulm.rho)

    pl.seed_everything(0)
    model = TinyClassifier()
    cb = SSRPruning(regularizer="l20", flops_budget=0.4, rho=0.5, rho_growth=1.2, schedule=SCHEDULE)
    trainer(tmp_path, [cb, Probe(), epoch_checkpoints(None, resume_from=path)], SCHEDULE.total_epochs).fit(
        model, loader(shuffle=True), ckpt_path=path)

    if SCHEDULE.warmup_epochs < stop_after < SCHEDULE.prune_epoch():
        aulm_state = state["method_state"]["aulm"]
        assert restored["rho"] == pytest.approx(aulm_state["rho"])
        for name, v in aulm_state["V"].items():
            assert torch.equal(restored["V"][name], v)
            assert torch.equal(restored["U"][name], aulm_state["U"][name])
    assert_same_weights(model, full_model)
    # the first fit's "ends before the last scheduled prune" is not the resumed run's: its result
    # kept it, and the summary ended "1 warning during the run" (probe)
    assert any("ends before the last scheduled prune" in w for w in state["warnings"]) == (stop_after < 3)
    assert cb.result.warnings == full_cb.result.warnings
    assert cb.events == full_cb.events and cb.plan.to_dict() == full_cb.plan.to_dict()
    # no monkey-patching of the module, and the load_state_dict pre-hook is gone after fit
    assert "on_load_checkpoint" not in vars(model)
    assert not model._load_state_dict_pre_hooks


def test_a_resume_whose_loader_shuffles_with_its_own_generator_is_told_it_is_not_exact(tmp_path):
    """DataLoader(shuffle=True, generator=g): the generator's state is in no checkpoint, so the
    resumed fit shuffled as the first epoch did and ended away from an uninterrupted run, silently
    (probe). The global RNG, which the callback restores, is not warned of (the test above)."""
    def fit(max_epochs, ckpt_path=None, generator=True):
        pl.seed_everything(0)
        data = loader(shuffle=True)
        if generator:
            data = torch.utils.data.DataLoader(data.dataset, batch_size=16, shuffle=True,
                                               generator=torch.Generator().manual_seed(0))
        cb = Pruning("l1", target={"filters": 0.5}, schedule=SHORT, verbose=False)
        with warnings.catch_warnings(record=True) as said, stopped_fit(SHORT, max_epochs):
            warnings.simplefilter("always")
            trainer(tmp_path, [cb, epoch_checkpoints(tmp_path / "ckpts" if ckpt_path is None else None,
                                                     resume_from=ckpt_path)], max_epochs).fit(
                TinyClassifier(), data, ckpt_path=ckpt_path)
        return [str(w.message) for w in said if "generator of its own" in str(w.message)]

    assert fit(1) == []  # (no resume: nothing to say)
    (told,) = fit(SHORT.total_epochs, ckpt_path=tmp_path / "ckpts" / "epoch=0.ckpt")
    assert "this resumed fit draws other batches than an uninterrupted one would" in told
    assert fit(SHORT.total_epochs, ckpt_path=tmp_path / "ckpts" / "epoch=0.ckpt", generator=False) == []


def test_a_loaders_own_generator_is_found_where_it_shuffles_or_seeds_the_workers():
    """A generator given only to seed the workers (shuffle=False, num_workers > 0) was not warned
    of, though each epoch's worker seeds (their random augmentations) come from it."""
    from lightning_ssr.pruning import _own_generator_use

    data = loader().dataset
    DataLoader = torch.utils.data.DataLoader

    def g():
        return torch.Generator().manual_seed(0)

    assert _own_generator_use(DataLoader(data, shuffle=True, generator=g())) == "shuffles"
    assert _own_generator_use(DataLoader(data, num_workers=2, generator=g())) == "seeds its workers"
    assert _own_generator_use({"a": DataLoader(data), "b": [DataLoader(data, num_workers=1, generator=g())]}) \
        == "seeds its workers"
    assert _own_generator_use(DataLoader(data, generator=g())) is None  # (no workers: it draws nothing used)
    assert _own_generator_use([DataLoader(data, shuffle=True, num_workers=2)]) is None


@pytest.mark.parametrize("kwargs,match", [
    ({"lam": -0.1}, r"lam must be in \[0.0, inf\)"),
    ({"lam": float("nan")}, "lam must be finite"),
    ({"lam": True}, "lam must be a number"),
    ({"lam": {"conv1": -1.0}}, r"lam\['conv1'\] must be in \[0.0, inf\)"),
    ({"regularizer": "l20", "flops_budget": 1.5}, r"target macs .* \(0, 1\]"),
    ({"regularizer": "l20", "filter_budget": 0.0}, r"target filters .* \(0, 1\]"),
    ({"regularizer": "l20", "flops_budget": 0.5, "filter_budget": 0.5}, "not both"),
    ({"regularizer": "l21", "flops_budget": 0.5}, "regularizer='l20'"),
    ({"regularizer": "l1"}, "regularizer must be one of"),
    ({"rho": 0}, r"rho must be in \(0.0, inf\)"),
    ({"rho_growth": 0.5}, "rho_growth"),
    ({"rho": 1.0, "rho_max": 0.5}, "rho_max"),
    ({"min_channels": 0}, "min_channels"),
    ({"max_pruning_ratio": 0.0}, "max_pruning_ratio"),
    ({"max_pruning_ratio": 1.5}, "max_pruning_ratio"),
    ({"lam_scaling": "params"}, "lam_scaling"),
    ({"schedule": {"sparsify_epochs": 0}}, "sparsify_epochs >= 1"),
    ({"schedule": {"update_every_n_steps": 0}}, "update_every_n_steps"),
    ({"schedule": {"prune_events": 2}}, "needs a target"),
])
def test_bad_arguments_fail_with_clear_messages(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        SSRPruning(**kwargs)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"method": "nope"}, ValueError, "unknown pruning method 'nope'"),
    # a letter O for a zero: the look-alike, not difflib's first pick of two as close (probe)
    ({"method": "ssr_l2O", "target": {"macs": 0.5}}, ValueError, r"'ssr_l2O' \(did you mean 'ssr_l20'\?\)"),
    # the method's own check names it: once (it was "pruning method 'ssr_l20': ssr_l20: rho ...": probe)
    ({"method": "ssr_l20", "method_kwargs": {"rho": "big"}}, TypeError, r"^ssr_l20: rho must be a number, got str"),
    ({"method": 3}, TypeError, "registered method name"),
    ({"method": "oneshot"}, ValueError, "needs a target"),
    ({"method": "oneshot", "target": {"flops": 0.5}}, ValueError, "unknown target key"),
    ({"method": "oneshot", "target": 0.5}, TypeError, "target must be"),
    ({"method": "oneshot", "target": {"macs": 0.5}, "method_kwargs": {"foo": 1}}, TypeError, "'oneshot'.*foo"),
    ({"method": PruningMethod(), "target": {"macs": 0.5}, "method_kwargs": {"foo": 1}}, ValueError,
     "method_kwargs"),
    ({"method": "oneshot", "target": {"macs": 0.5}, "schedule": 3}, TypeError, "schedule"),
    ({"method": "oneshot", "target": {"macs": 0.5}, "ignored_layers": [3]}, TypeError, "ignored_layers"),
    ({"method": "oneshot", "target": {"macs": 0.5}, "example_input": [1.0]}, TypeError, "example_input"),
    ({"method": "oneshot", "targt": {"macs": 0.5}}, TypeError,
     (r"^Pruning\(\) got unexpected keyword arguments \['targt'\] \('targt': did you mean 'target'\?\); its "
      "arguments are method, target, schedule, method_kwargs")),
    # a misspelled method or schedule argument names the closest one, like Pruning's own
    ({"method": "ssr_l20", "target": {"macs": 0.5}, "method_kwargs": {"rh": 0.5}}, TypeError,
     (r"pruning method 'ssr_l20' got unexpected keyword arguments \['rh'\] \('rh': did you mean 'rho'\?\); its "
     "arguments are lam, lam_scaling, rho,")),
    ({"method": "l1", "target": {"macs": 0.5}, "method_kwargs": {"lam": 1}}, TypeError,
     r"pruning method 'l1' got unexpected keyword arguments \['lam'\]; it takes none"),
    ({"method": "oneshot", "target": {"macs": 0.5}, "schedule": {"sparsify_epoch": 1}}, TypeError,
     (r"schedule got unexpected keyword arguments \['sparsify_epoch'\] \('sparsify_epoch': did you mean "
     "'sparsify_epochs'")),
    # the limits are the target section's in the CLI, arguments of Pruning in Python
    ({"method": "oneshot", "target": {"macs": 0.5, "allocation": "global"}}, ValueError,
     r"unknown target key\(s\) \['allocation'\].*\(allocation: an argument of Pruning\(...\)"),
    # "no" would read as true
    ({"method": "oneshot", "target": {"macs": 0.5}, "verbose": "no"}, TypeError, "verbose must be true or false"),
])
def test_bad_engine_arguments_fail_with_clear_messages(kwargs, error, match):
    with pytest.raises(error, match=match):
        Pruning(**kwargs)


def test_manual_optimization_is_refused(tmp_path):
    class Manual(TinyClassifier):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            loss = F.cross_entropy(self(batch[0]), batch[1])
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()

    with pytest.raises(Exception, match=r"automatic optimization only .* With manual optimization, drive "
                                        r"lightning_ssr.PruningEngine from training_step yourself"):
        trainer(tmp_path, [SSRPruning()], 1).fit(Manual(), loader())


SHORT = PruningSchedule(sparsify_epochs=2, finetune_epochs=1)  # the prune at the start of epoch 2: step 8


class StopAfterFirstEpoch(Callback):
    """Asks the Trainer to stop after epoch 0, as EarlyStopping does when its metric stalls."""

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.should_stop = True


class Keep(Callback):
    """Keeps the Trainer of the fit it runs in (to save a checkpoint after the fit ended)."""

    kept = None

    def on_fit_start(self, trainer, pl_module):
        self.kept = trainer


class WarningsAtFirstBatch(Callback):
    """Records which warnings had been issued when the first batch started."""

    def __init__(self, record):
        self.record, self.seen = record, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.seen is None:
            self.seen = [str(w.message) for w in self.record]


def _fit_with_bounds(tmp_path, extra=(), verbose=False, schedule=SHORT, **bounds):
    """A short l1 schedule in a fit bounded by ``bounds``; returns the callback, the model's
    state_dict before the fit and the warnings issued, and those seen by the first batch."""
    pl.seed_everything(0)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruning = Pruning("l1", target={"filters": 0.5}, schedule=schedule, verbose=verbose)
    bounds.setdefault("max_epochs", -1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first = WarningsAtFirstBatch(record)
        trainer(tmp_path, [pruning, first, *extra], **bounds).fit(model, loader())
    mine = [str(w.message) for w in record if "prune" in str(w.message)]
    return pruning, model, before, mine, [m for m in first.seen if "prune" in m]


def test_a_fit_with_no_training_batch_or_a_fast_dev_run_is_told_what_happened(tmp_path, caplog):
    """limit_train_batches=0 was told to resume "if a callback stopped it"; fast_dev_run skipped the
    prune without a word, and warned that SSR's one-batch "sparsify phase" would never update."""
    pl.seed_everything(0)
    pruning = Pruning("l1", target={"filters": 0.5}, schedule=SHORT, verbose=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path, [pruning], 5, limit_train_batches=0).fit(TinyClassifier(), loader())
    warned = [str(w.message) for w in record if "prune" in str(w.message)]
    assert len(warned) == 1 and "the fit ran no training batch (limit_train_batches=0" in warned[0]
    assert "callback" not in warned[0] and pruning.plan is None
    pl.seed_everything(0)
    with caplog.at_level(logging.INFO), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruning = Pruning("ssr_l20", target={"macs": 0.5}, schedule=SCHEDULE, verbose=True)
        pl.Trainer(fast_dev_run=True, accelerator="cpu", callbacks=[pruning], enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path).fit(TinyClassifier(), loader())
    assert not [str(w.message) for w in record if "prune" in str(w.message) or "update" in str(w.message)]
    assert "fast_dev_run trains 1 batch in one epoch: the set-up's dry run prunes and rebuilds a copy" in caplog.text
    assert pruning.plan is None
    caplog.clear()  # a prune due at the start of epoch 0 is made in it, and not said to be skipped (review)
    with caplog.at_level(logging.INFO):
        pruning = Pruning("l1", target={"macs": 0.5}, schedule=PruningSchedule(sparsify_epochs=0), verbose=True)
        pl.Trainer(fast_dev_run=3, accelerator="cpu", callbacks=[pruning], enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path).fit(TinyClassifier(), loader())
    assert "Pruning: fast_dev_run" not in caplog.text and pruning.events_done == 1


@pytest.mark.parametrize("bounds", [{"max_epochs": 2}, {"max_steps": 8}, {"max_epochs": 5, "max_steps": 3}],
                         ids=["max_epochs_ends_with_the_epoch_before", "max_steps_one_short", "max_steps"])
def test_a_trainer_bound_that_ends_before_the_prune_is_warned_of_before_the_first_step(tmp_path, caplog, bounds):
    with caplog.at_level(logging.INFO):
        pruning, model, before, warned, by_first_batch = _fit_with_bounds(tmp_path, verbose=True, **bounds)
    bound = next(f"{k}={v}" for k, v in bounds.items() if k == "max_steps" or len(bounds) == 1)
    assert len(warned) == 1 and f"Trainer({bound}) ends before the last scheduled prune" in warned[0]
    assert by_first_batch == warned  # issued before step 0
    if "max_steps" in bounds:
        assert "(optimizer step 8, at 4 steps per epoch)" in warned[0] and "max_steps=12" in warned[0]
    # the fit ran as asked, unpruned, and its end says so (as information: the bound was warned of)
    assert pruning.plan is None and pruning.result is None
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert "before the prune due at the start of epoch 2: the model keeps its dense shapes" in caplog.text


@pytest.mark.parametrize("schedule", [SHORT, PruningSchedule(sparsify_epochs=2, finetune_epochs=0)],
                         ids=["finetune", "ends_with_the_prune"])
def test_the_max_steps_the_warning_advises_reaches_the_prune(tmp_path, schedule):
    _, _, _, warned, _ = _fit_with_bounds(tmp_path, schedule=schedule, max_steps=3)
    (advised,) = re.findall(r"Use max_steps=(\d+)", warned[0])
    assert schedule.reaches_last_prune(-1, int(advised), steps_per_epoch=4)
    pruning, *_ = _fit_with_bounds(tmp_path, schedule=schedule, max_steps=int(advised))
    assert pruning.events_done == 1


@pytest.mark.parametrize("bounds", [{"max_epochs": 3}, {"max_steps": 9}, {"max_epochs": 3, "max_steps": 12}])
def test_trainer_bounds_that_reach_the_prune_warn_of_nothing(tmp_path, bounds):
    pruning, model, before, warned, _ = _fit_with_bounds(tmp_path, **bounds)
    assert warned == [] and pruning.plan is not None and pruning.result is not None
    assert sum(v.numel() for v in model.state_dict().values()) < sum(v.numel() for v in before.values())


def test_a_fit_a_callback_stops_before_the_prune_says_so_at_its_end_and_min_epochs_prevents_it(tmp_path):
    stopped = Keep()  # (the fit's Trainer, saved from after the fit ended)
    pruning, model, before, warned, by_first_batch = _fit_with_bounds(tmp_path, [StopAfterFirstEpoch(), stopped],
                                                                      max_epochs=3)
    assert by_first_batch == [] and len(warned) == 1  # nothing to foresee; the end tells what happened
    assert "the fit ended at optimizer step 4, before the prune due at the start of epoch 2" in warned[0]
    assert "min_epochs=3" in warned[0] and pruning.plan is None
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    # resumed as it says, the prune made: the result no longer says it was not (review)
    stopped.kept.save_checkpoint(tmp_path / "stopped.ckpt")
    resumed = Pruning("l1", target={"filters": 0.5}, schedule=SHORT, verbose=False)
    trainer(tmp_path, [resumed], 3).fit(TinyClassifier(), loader(), ckpt_path=tmp_path / "stopped.ckpt")
    assert resumed.result is not None and not any("before the prune due" in w for w in resumed.result.warnings)
    # an EarlyStopping that did not stop it is not named as the one that did (review)
    idle = EarlyStopping(monitor="never_logged", strict=False, patience=100)
    _, _, _, warned, _ = _fit_with_bounds(tmp_path, [StopAfterFirstEpoch(), idle], max_epochs=3)
    assert "If a callback stopped it, give the Trainer min_epochs=3" in warned[0] and "EarlyStopping" not in warned[0]
    # the advice works: Lightning does not stop before min_epochs, and the schedule completes
    pruning, _, _, warned, _ = _fit_with_bounds(tmp_path, [StopAfterFirstEpoch()], max_epochs=3, min_epochs=3)
    assert warned == [] and pruning.result is not None and pruning.events_done == 1


def test_a_fit_early_stopping_stops_before_the_prune_is_told_to_resume_with_min_epochs(tmp_path):
    """A resume from the checkpoint restores EarlyStopping's count, which stops it again at once: the
    end of the fit says so, and the min_epochs it names, in a resume too, reaches the prune."""
    schedule, scores = PruningSchedule(sparsify_epochs=3, finetune_epochs=1), (1.0, 0.5, 0.4, 0.3)
    warned = (r"EarlyStopping stopped the fit at optimizer step {}, before the prune due at the start of epoch 3: "
              r".*Trainer\(min_epochs=4, max_epochs=4, ...\).fit\(module, ckpt_path=...\); without it a resume "
              r"restores EarlyStopping's count")

    def fit(min_epochs=None, ckpt_path=None):
        pl.seed_everything(0)
        pruning = Pruning("l1", target={"filters": 0.5}, schedule=schedule, verbose=False)
        shutil.rmtree(tmp_path / "saved", ignore_errors=True)  # (Lightning warns of a folder that holds some)
        callbacks = [pruning, EarlyStopping(monitor="score", mode="max", patience=0),
                     ModelCheckpoint(dirpath=tmp_path / "saved", save_last=True)]
        trainer(tmp_path, callbacks, schedule.total_epochs, min_epochs=min_epochs).fit(
            ScoredClassifier(scores), loader(), loader(), ckpt_path=ckpt_path)
        return pruning

    assert schedule.min_epochs == 4
    with pytest.warns(UserWarning, match=warned.format(8)):
        assert fit().plan is None
    stopped = shutil.copy(tmp_path / "saved" / "last.ckpt", tmp_path / "stopped.ckpt")
    with pytest.warns(UserWarning, match=warned.format(12)):  # the resume the other advice gave: stopped again
        assert fit(ckpt_path=stopped).plan is None
    assert fit(min_epochs=4, ckpt_path=stopped).events_done == 1
    # a Trainer that trains longer than the schedule is told its own max_epochs, not a shorter one (probe)
    pl.seed_everything(0)
    with pytest.warns(UserWarning, match=r"Trainer\(min_epochs=4, max_epochs=6, ...\)"):
        trainer(tmp_path, [Pruning("l1", target={"filters": 0.5}, schedule=schedule, verbose=False),
                           EarlyStopping(monitor="score", mode="max", patience=0)], 6).fit(
            ScoredClassifier(scores), loader(), loader())
    # nor, where the fit is bounded by steps (max_epochs=-1), a bound in epochs (review)
    pl.seed_everything(0)
    with pytest.warns(UserWarning, match=r"Trainer\(min_epochs=4, max_epochs=-1, ...\)"):
        trainer(tmp_path, [Pruning("l1", target={"filters": 0.5}, schedule=schedule, verbose=False),
                           EarlyStopping(monitor="score", mode="max", patience=0)], -1, max_steps=100).fit(
            ScoredClassifier(scores), loader(), loader())
    # a stop in epoch 0 (a threshold: its count at 0, its stopped epoch 0) is EarlyStopping's too (review)
    pl.seed_everything(0)
    early = EarlyStopping(monitor="score", mode="max", stopping_threshold=0.9)
    with pytest.warns(UserWarning, match=r"EarlyStopping stopped the fit at optimizer step 4"):
        trainer(tmp_path, [Pruning("l1", target={"filters": 0.5}, schedule=schedule, verbose=False), early],
                schedule.total_epochs).fit(ScoredClassifier(scores), loader(), loader())
    assert early.stopped_epoch == 0 and early.wait_count == 0
    # held off by min_epochs, that stop is withdrawn at the prune, as a later one is: fine-tuning runs
    # all its epochs (it ended at min_epochs, one fine-tuning epoch of three: review)
    schedule = PruningSchedule(sparsify_epochs=3, finetune_epochs=3)
    for scores in [(1.0, 0.5, 0.4, 0.3, 0.2, 0.1), (0.5, 1.0, 0.4, 0.3, 0.2, 0.1)]:
        pl.seed_everything(0)
        early = EarlyStopping(monitor="score", mode="max", stopping_threshold=0.9)
        fitted = trainer(tmp_path, [Pruning("l1", target={"filters": 0.5}, schedule=schedule, verbose=False), early],
                         schedule.total_epochs, min_epochs=schedule.min_epochs)
        fitted.fit(ScoredClassifier(scores), loader(), loader())
        assert fitted.current_epoch == 6 and early.stopping_reason.name == "NOT_STOPPED", scores


def test_a_stop_one_rank_decided_in_epoch_0_is_withdrawn_on_every_rank_at_the_prune():
    """Under DDP Lightning sets EarlyStopping's reason on the rank whose metric decided, and its
    stopped epoch (0 in epoch 0) on every rank: the deciding rank withdrew the stop at the prune
    and the others kept it, so the ranks' fits would end at different epochs (review)."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import EarlyStopping

    from lightning_ssr.pruning import restart_monitors

    class Ranks:  # every rank's vote, as DDP's reduce_boolean_decision(all=False) gathers them
        def __init__(self, others):
            self.others = others

        def reduce_boolean_decision(self, decision, all=True):
            return decision or any(self.others)

    for decided in (True, False):  # this rank decided; another rank did
        early = EarlyStopping(monitor="score", stopping_threshold=0.5)
        if decided:
            early.stopping_reason = type(early.stopping_reason)["STOPPING_THRESHOLD"]
        trainer = SimpleNamespace(callbacks=[early], should_stop=True, lr_scheduler_configs=[], world_size=2,
                                  strategy=Ranks([not decided]))
        restart_monitors(trainer)
        assert trainer.should_stop is False and early.stopping_reason.name == "NOT_STOPPED", decided


def test_a_stop_another_rank_decided_in_epoch_0_is_named_at_the_fits_end_on_every_rank():
    """The end-of-fit warning (an EarlyStopping stop before the prune: give min_epochs) read this
    rank's EarlyStopping only: a stop in epoch 0 that another rank decided got the generic message."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import EarlyStopping, Timer

    from lightning_ssr.pruning import _fit_stopped_by_early_stopping

    class Ranks:  # as DDP's reduce_boolean_decision(all=False) gathers every rank's vote
        def __init__(self, others):
            self.others, self.calls = others, 0

        def reduce_boolean_decision(self, decision, all=True):
            self.calls += 1
            return decision or self.others

    for decided, others, should_stop in [(True, False, True), (False, True, True), (False, False, True),
                                         (False, True, False), (True, False, False)]:
        first, second = (EarlyStopping(monitor=m, stopping_threshold=0.5) for m in ("a", "b"))
        if decided:
            first.stopping_reason = type(first.stopping_reason)["STOPPING_THRESHOLD"]
        ranks = Ranks(others)
        trainer = SimpleNamespace(callbacks=[first, Timer(), second], should_stop=should_stop, world_size=2,
                                  strategy=ranks)
        assert _fit_stopped_by_early_stopping(trainer) is (decided and should_stop or others)
        # one collective on every rank, whatever its own should_stop (not synced by Lightning: a rank that skipped
        # it while another reduced would hang: review)
        assert ranks.calls == 1
    trainer.world_size = 1
    assert _fit_stopped_by_early_stopping(trainer) is False and ranks.calls == 1  # (one process: no collective)


class ScoredClassifier(TinyClassifier):
    """Validation logs ``scores[epoch]`` as "score" (by default best in epoch 0, before the prune);
    test logs the loss."""

    def __init__(self, scores=(0.0, -1.0, -2.0, -3.0)):
        super().__init__()
        self.scores = scores

    def validation_step(self, batch, batch_idx):
        self.log("score", self.scores[self.current_epoch])

    def test_step(self, batch, batch_idx):
        self.log("test_loss", F.cross_entropy(self(batch[0]), batch[1]))


class WiderClassifier(TinyClassifier):
    """Another architecture under the same names: the head's input is wider."""

    def __init__(self):
        super().__init__()
        self.backbone.fc1 = torch.nn.Linear(self.backbone.fc1.in_features, 24)
        self.backbone.fc2 = torch.nn.Linear(24, 5)


@pytest.mark.parametrize("other", ["wider", "renamed"])
def test_a_fit_resumed_from_another_architectures_checkpoint_is_refused_with_the_module_untouched(tmp_path, other):
    """A checkpoint of another network saved before any prune (no plan), given to fit(ckpt_path=...)
    with the callback: torch loaded the tensors whose shapes matched (BatchNorm statistics, a
    bias) into the module, then failed with its own size-mismatch error, which named no file
    (probe). It is refused before any tensor loads, naming the file and what differs; the
    PrunedCheckpointMixin refuses the same without the callback."""
    from lightning_ssr import PrunedCheckpointMixin

    pl.seed_everything(0)
    source = WiderClassifier() if other == "wider" else TinyClassifier()
    state = source.state_dict()
    if other == "renamed":
        state = {k.replace("backbone.", "body."): v for k, v in state.items()}
    path = tmp_path / "other.ckpt"
    torch.save({"epoch": 0, "global_step": 4, "state_dict": state, "pytorch-lightning_version": pl.__version__,
                "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}, path)
    said = (r"size mismatch for backbone\.fc1\.bias: \(24,\) in the checkpoint, \(16,\) in this model"
            if other == "wider" else r"holds the weights of another network \(it lacks backbone\.")

    class Mixed(PrunedCheckpointMixin, TinyClassifier):
        pass

    for module, callbacks in ((TinyClassifier(), [Pruning("l1", target={"macs": 0.5}, schedule=SCHEDULE,
                                                           verbose=False)]), (Mixed(), [])):
        before = {k: v.clone() for k, v in module.state_dict().items()}
        fit = trainer(tmp_path, callbacks, SCHEDULE.total_epochs)
        with pytest.raises(PlanMismatchError, match=rf"^fit\(ckpt_path='.*other\.ckpt'\) .*{said}"):
            fit.fit(module, loader(), ckpt_path=str(path))
        assert fit.global_step == 0 and all(torch.equal(v, before[k]) for k, v in module.state_dict().items())


def test_a_schedule_ending_with_the_prune_warns_that_the_checkpoint_is_ranked_by_the_dense_score(tmp_path):
    """With finetune_epochs=0 the prune comes after the fit's last validation and before
    ModelCheckpoint saves: the pruned model was saved as "best" with the dense model's score."""
    pl.seed_everything(0)
    pruning = Pruning("l1", target={"filters": 0.5}, schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=0),
                      verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="score", mode="max")
    with pytest.warns(UserWarning, match=r"ends with the prune \(finetune_epochs=0\): ModelCheckpoint\(monitor='score'\) "
                                         r"saves the pruned model .* score of the last validation, which ran on the "
                                         r"dense model"):
        trainer(tmp_path, [pruning, ckpt], 1).fit(ScoredClassifier(), loader(), loader())
    assert pruning.engine.done
    later = Pruning("l1", target={"filters": 0.5}, schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=1),
                    verbose=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*ends with the prune")
        trainer(tmp_path, [later, ModelCheckpoint(dirpath=tmp_path / "other", monitor="score", mode="max")], 2).fit(
            ScoredClassifier(), loader(), loader())


@pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`")  # the fresh Trainers lack ModelCheckpoint
@pytest.mark.parametrize("save_top_k", [1, 2, -1])
def test_model_checkpoint_ranks_the_pruned_models_checkpoints_so_that_best_loads(tmp_path, save_top_k):
    pl.seed_everything(0)
    model = ScoredClassifier()
    pruning = Pruning("l1", target={"filters": 0.5}, schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=2),
                      verbose=False)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpts", monitor="score", mode="max", save_top_k=save_top_k)
    fit = trainer(tmp_path, [pruning, ckpt], 3)
    fit.fit(model, loader(), loader())
    # the dense checkpoint of epoch 0 scored best, but the pruned module cannot load it: the ranking
    # restarted at the prune (start of epoch 1), and the dense file stays on disk for a resume
    assert ckpt.best_model_path.endswith("epoch=1-step=8.ckpt") and float(ckpt.best_model_score) == -1.0
    pruned_files = {str(tmp_path / "ckpts" / f) for f in ("epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt")}
    assert set(ckpt.best_k_models) <= pruned_files
    assert (tmp_path / "ckpts" / "epoch=0-step=4.ckpt").exists()
    tested = fit.test(model, loader(), ckpt_path="best", verbose=False)
    assert math.isfinite(tested[0]["test_loss"])
    best = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    # the dense checkpoint, in the same Trainer: torch's size mismatch came after it had loaded the
    # tensors whose shapes matched (the head's bias, BatchNorm's counters) into the pruned module
    for call in ("validate", "test"):  # (the advice named validate for a test too: probe)
        with pytest.raises(PlanMismatchError, match=r"holds no pruning plan and other shapes than this pruned module .* "
                                                    r"saved before the prune \(the dense model\)\. Load it into a "
                                                    rf"freshly constructed module, e.g. trainer.{call}\(YourModule\(\)"):
            getattr(fit, call)(model, loader(), ckpt_path=str(tmp_path / "ckpts" / "epoch=0-step=4.ckpt"), verbose=False)
        assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())
    # a freshly built module (the dense shapes), tested, validated or used for predictions from the
    # pruned checkpoint by a Trainer with the callback: the checkpoint's plan rebuilds it first
    for run in ("test", "validate", "predict"):
        fresh = ScoredClassifier()
        other = trainer(tmp_path, [Pruning("l1", target={"filters": 0.5}, verbose=False)], 1)
        if run == "predict":
            images = torch.utils.data.DataLoader(torch.randn(8, 3, 16, 16), batch_size=4)  # (forward's input)
            assert other.predict(fresh, images, ckpt_path=ckpt.best_model_path)[0].shape == (4, 5)
        else:
            getattr(other, run)(fresh, loader(), ckpt_path=ckpt.best_model_path, verbose=False)
        assert fresh.state_dict().keys() == best.keys()
        assert all(torch.equal(v, best[k]) for k, v in fresh.state_dict().items())


def test_early_stopping_compares_the_pruned_model_with_itself(tmp_path):
    # the dense model scored 1.0; after the prune (start of epoch 1) the fine-tuning improves, 0.5 -> 0.7, but
    # stays below it: measured against the dense best, patience=2 would stop the fine-tuning after epoch 2
    pl.seed_everything(0)
    model = ScoredClassifier(scores=(1.0, 0.5, 0.6, 0.7))
    pruning = Pruning("l1", target={"filters": 0.5}, schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=3),
                      verbose=False)
    stopping = EarlyStopping(monitor="score", mode="max", patience=2)
    fit = trainer(tmp_path, [pruning, stopping], 4)
    fit.fit(model, loader(), loader())
    assert fit.current_epoch == 4 and stopping.stopped_epoch == 0  # the whole schedule ran
    assert float(stopping.best_score) == pytest.approx(0.7) and stopping.wait_count == 0
    assert pruning.result is not None


def test_reduce_lr_on_plateau_compares_the_pruned_model_with_itself(tmp_path):
    """The dense model scored 1.0; after the prune the scores improve, 0.5 -> 0.7, below it. Against
    the dense best, ReduceLROnPlateau(patience=0) would halve the rate after every epoch of the
    fine-tuning; it starts over at the prune, and the rate stays."""
    class PlateauClassifier(ScoredClassifier):
        def configure_optimizers(self):
            opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", patience=0, factor=0.5)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "score"}}

    pl.seed_everything(0)
    model = PlateauClassifier(scores=(1.0, 0.5, 0.6, 0.7))
    pruning = Pruning("l1", target={"filters": 0.5}, schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=3),
                      verbose=False)
    fit = trainer(tmp_path, [pruning], 4)
    fit.fit(model, loader(), loader())
    plateau = fit.lr_scheduler_configs[0].scheduler
    assert pruning.events_done == 1 and fit.optimizers[0].param_groups[0]["lr"] == 0.05
    assert plateau.best == pytest.approx(0.7) and plateau.num_bad_epochs == 0


def test_a_stop_early_stopping_asked_for_before_the_prune_is_withdrawn_there(tmp_path):
    # the dense scores fall (1.0, 0.5): EarlyStopping(patience=1) asks to stop after epoch 1, which
    # min_epochs (the schedule's, 3) holds off; the prune at the start of epoch 2 withdraws the request,
    # and the fine-tuning, which improves (0.4, 0.45, 0.5), runs its whole schedule
    schedule = PruningSchedule(sparsify_epochs=2, finetune_epochs=3)
    assert schedule.min_epochs == 3
    pl.seed_everything(0)
    model = ScoredClassifier(scores=(1.0, 0.5, 0.4, 0.45, 0.5))
    pruning = Pruning("l1", target={"filters": 0.5}, schedule=schedule, verbose=False)
    stopping = EarlyStopping(monitor="score", mode="max", patience=1)
    fit = trainer(tmp_path, [pruning, stopping], schedule.total_epochs, min_epochs=schedule.min_epochs)
    fit.fit(model, loader(), loader())
    assert fit.current_epoch == 5 and stopping.stopped_epoch == 0 and pruning.events_done == 1
    assert float(stopping.best_score) == pytest.approx(0.5)


@pytest.mark.parametrize("change, named, stop", [
    ({"target": {"macs": 0.3}}, "target.macs: 0.4 -> 0.3", 2),
    ({"target": {"macs": 0.3}}, "target.macs: 0.4 -> 0.3", 4),  # a checkpoint of the pruned model
    ({"rho": 0.25}, "method_config.rho: 0.5 -> 0.25", 2),
    ({"method": "ssr_l21"}, "pruning state is from method 'ssr_l20'", 2),
    ({"method": "ssr_l21"}, "pruning state is from method 'ssr_l20'", 4),
    ({"sparsify_epochs": 3}, "schedule.sparsify_epochs: 2 -> 3", 2),
    ({"min_channels": 2}, "min_channels: 1 -> 2", 2),
    ({"finetune_epochs": 3}, None, 2),  # fine-tuning longer on resume: allowed
    ({"lr_warmup_steps": 3}, None, 2),  # a warm-up after a prune still to come: allowed
    ({"lr_warmup_steps": 3}, "schedule.lr_warmup_steps: 0 -> 3", 4),  # after it: refused
])
def test_resuming_with_other_pruning_settings_is_refused_before_a_step(tmp_path, change, named, stop):
    """A resume continues the checkpoint's run; a changed target, method or schedule would mix two runs
    (the counts fixed at set-up are the checkpoint's, a learned structure would follow the new target).
    Refused before the module takes the checkpoint's shapes: it stays as it was, and load_pruned works."""
    def callback(**kw):
        schedule = dataclasses.replace(SCHEDULE, **{k: kw.pop(k) for k in ("sparsify_epochs", "finetune_epochs",
                                                                            "lr_warmup_steps") if k in kw})
        args = {"method": "ssr_l20", "target": {"macs": 0.4}, "method_kwargs": {"rho": kw.pop("rho", 0.5)},
                **kw}
        return Pruning(schedule=schedule, verbose=False, **args)

    pl.seed_everything(0)
    with stopped_fit(SCHEDULE, stop):
        trainer(tmp_path, [callback(), epoch_checkpoints(tmp_path / "ckpts")], stop).fit(TinyClassifier(), loader())
    path = tmp_path / "ckpts" / f"epoch={stop - 1}.ckpt"
    target = change.pop("target", None)
    cb = callback(**change, **({"target": target} if target else {}))
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit = trainer(tmp_path, [cb, epoch_checkpoints(None, resume_from=path)], cb.schedule.total_epochs)
    if named is None:
        fit.fit(model, loader(), ckpt_path=path)
        assert cb.events_done == 1 and fit.current_epoch == cb.schedule.total_epochs
        return
    with pytest.raises(ValueError, match=re.escape(named)) as info:
        fit.fit(model, loader(), ckpt_path=path)
    assert "only schedule.finetune_epochs may change" in str(info.value) or "Resume with the same method" in str(info.value)
    assert fit.global_step == 0 and cb.engine.events_done == 0  # refused while restoring, before the loops
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    load_pruned(model, path)  # what the message says to do
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_of_ssrpruning_resumes_with_pruning_and_the_same_settings(tmp_path):
    """Another class, the same method and settings: the state is found under the other state_key."""
    def run(cb, max_epochs, ckpt_path=None, dirpath=None):
        pl.seed_everything(0)
        model = TinyClassifier()
        with stopped_fit(SCHEDULE, max_epochs):
            trainer(tmp_path, [cb, epoch_checkpoints(dirpath or tmp_path / "unused", resume_from=ckpt_path)],
                    max_epochs).fit(model, loader(shuffle=True), ckpt_path=ckpt_path)
        return model

    def old():
        return SSRPruning(regularizer="l20", flops_budget=0.4, rho=0.5, schedule=SCHEDULE, verbose=False)

    full = run(old(), SCHEDULE.total_epochs)
    run(old(), 2, dirpath=tmp_path / "ckpts")
    new = Pruning("ssr_l20", target={"macs": 0.4}, method_kwargs={"rho": 0.5, "lam_scaling": "flops"},
                  schedule=SCHEDULE, verbose=False)
    with pytest.warns(UserWarning, match="callbacks used to create the checkpoint"):  # Lightning's, of the class
        resumed = run(new, SCHEDULE.total_epochs, ckpt_path=tmp_path / "ckpts" / "epoch=1.ckpt")
    assert new.events_done == 1
    assert_same_weights(full, resumed)


def test_a_second_fit_of_the_same_trainer_goes_on_with_the_run(tmp_path):
    """The same Trainer fitted again for more epochs, before the prune: the run goes on (it was
    taken for a resume of a checkpoint without the callback's state and refused)."""
    pl.seed_everything(0)
    cb = Pruning("ssr_l20", target={"macs": 0.5}, schedule=SCHEDULE, verbose=False)
    model = TinyClassifier()
    fit = trainer(tmp_path, [cb], 2)
    with stopped_fit(SCHEDULE, 2):
        fit.fit(model, loader())
    assert cb.engine.dense is not None and cb.events_done == 0
    fit.fit_loop.max_epochs = SCHEDULE.total_epochs
    fit.fit(model, loader())
    assert cb.events_done == 1 and fit.current_epoch == SCHEDULE.total_epochs
    assert cb.result.pruned["macs"] <= 0.5 * cb.result.dense["macs"]


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_another_module_fitted_on_a_trainer_that_trained_one_is_refused(tmp_path):
    """trainer.fit(new_module) on the Trainer of a finished pruning fit: the callback took it for
    the first run going on, and the new module stayed dense, without a word (probe)."""
    pl.seed_everything(0)
    cb = Pruning("l1", target={"macs": 0.5}, schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=1),
                 verbose=False)
    class Tested(TinyClassifier):
        def test_step(self, batch, batch_idx):
            return None

    fit = trainer(tmp_path, [cb, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], 2)
    first = Tested()
    fit.fit(first, loader())
    fit.test(first, loader(), ckpt_path="last", verbose=False)  # (a stale ckpt_path hid the next fit: review)
    other = TinyClassifier()
    before = {k: v.clone() for k, v in other.state_dict().items()}
    fit.fit_loop.max_epochs = 4
    with pytest.raises(MisconfigurationException, match=r"Pruning: fit\(\) of another TinyClassifier on a Trainer that "
                                                        r"trained one already \(at optimizer step 8, epoch 2\).*Give the "
                                                        r"new model a new Trainer"):
        fit.fit(other, loader())
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())
    # a resume of the first run into a new module, on that Trainer, is no new model: it goes on (review)
    fit.fit(Tested(), loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert cb.events_done == 1 and fit.current_epoch == 4


def test_a_fit_an_error_cut_short_mid_batch_does_not_hold_it_against_the_next(tmp_path):
    """An error after the optimizer step and before the callback's on_train_batch_end (another
    callback raised): the engine saw the batch begin and never end. The same Trainer fitted again
    goes on, without taking it for a loop that left out on_batch_end."""

    class FailOnce(Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 7 and not getattr(self, "done", False):  # in the sparsify phase
                self.done = True
                raise RuntimeError("a failure of the user's own")

    pl.seed_everything(0)
    cb = Pruning("ssr_l20", target={"macs": 0.5}, schedule=SCHEDULE, verbose=False)
    model = TinyClassifier()
    fit = trainer(tmp_path, [FailOnce(), cb], SCHEDULE.total_epochs)
    with pytest.raises(RuntimeError, match="a failure of the user's own"):
        fit.fit(model, loader())
    fit.fit(model, loader())
    assert cb.events_done == 1 and fit.current_epoch == SCHEDULE.total_epochs


@pytest.mark.parametrize("again", ["another_model", "the_pruned_model"])
def test_a_callback_given_to_a_second_training_prunes_that_training_too(tmp_path, again):
    """One callback instance for several trainings (a loop over seeds or models): each new training
    from step 0 starts the run over. It held the finished run before and left the model unpruned."""
    cb = Pruning("oneshot", target={"macs": 0.5}, schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1))
    pl.seed_everything(0)
    first = TinyClassifier()
    trainer(tmp_path, [cb], cb.schedule.total_epochs).fit(first, loader())
    first_result = cb.result
    second = TinyClassifier() if again == "another_model" else first
    second.example_input_array = torch.zeros(1, 3, 16, 16)  # the first training traced a batch's two rows
    before = sum(p.numel() for p in second.parameters())
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path, [cb], cb.schedule.total_epochs).fit(second, loader())
    # the same pruned model given again, most likely to fine-tune it further, is told that it is pruned again
    said = [str(w.message) for w in record if "pruned in its earlier fit" in str(w.message)]
    assert len(said) == (again == "the_pruned_model")
    if said:
        assert ("this TinyClassifier is the model this callback pruned in its earlier fit, and this fit prunes it "
                "again, to target {'macs': 0.5} of its pruned size") in said[0]
        assert "fit it without the Pruning callback" in said[0] and said[0] in cb.result.warnings
    assert cb.events_done == 1 and cb.result is not first_result
    assert sum(p.numel() for p in second.parameters()) == cb.result.pruned["params"] < before
    assert cb.result.pruned["macs"] <= 0.5 * cb.result.dense["macs"]
    assert cb.engine.example.shape == (1, 3, 16, 16)  # this training's own, as a new callback takes it
    if again == "the_pruned_model":  # pruned again from the shapes the first training left: the plans compose
        assert {k: v for k, v in cb.result.dense.items() if k != "prunable_channels"} == first_result.pruned
        # (what a filters target counts: the channels the first training left, not the plan's first sizes: review)
        assert cb.result.dense["prunable_channels"] == sum(first_result.events[-1]["keep"].values())
        fresh = TinyClassifier()
        apply_plan(fresh, PruningPlan.from_dict(cb.result.plan))
        assert [p.shape for p in fresh.parameters()] == [p.shape for p in second.parameters()]


def test_a_new_callback_on_a_pruned_module_says_that_it_prunes_it_again(tmp_path, caplog):
    """A new callback given the module an earlier fit pruned (or a pruned model loaded) prunes it
    again, relative to its pruned size: it said nothing, where the callback of that fit warns."""
    schedule = PruningSchedule(sparsify_epochs=0, finetune_epochs=1)
    pl.seed_everything(0)
    model = TinyClassifier()
    trainer(tmp_path, [Pruning("oneshot", target={"macs": 0.5}, schedule=schedule, verbose=False)], 1).fit(
        model, loader())
    with caplog.at_level(logging.INFO):
        trainer(tmp_path, [Pruning("oneshot", target={"macs": 0.5}, schedule=schedule)], 1).fit(model, loader())
    assert ("Pruning: this TinyClassifier was pruned before (it carries a pruning plan), and this fit prunes it "
            "again: the target is of its pruned size (the reductions multiply)") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):  # (a module at its constructed shapes: nothing said)
        trainer(tmp_path, [Pruning("oneshot", target={"macs": 0.5}, schedule=schedule)], 1).fit(
            TinyClassifier(), loader())
    assert "was pruned before" not in caplog.text


def test_resuming_the_pruned_module_from_its_checkpoint_is_not_taken_for_pruning_it_again(tmp_path):
    """The same callback and module, fit(ckpt_path=last.ckpt): the run goes on (nothing is pruned
    again), so the warning for a module given back to its callback must not come; it did, because
    Lightning tells the callback of the checkpoint only after its set-up."""
    cb = Pruning("oneshot", target={"macs": 0.5}, schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=2),
                 verbose=False)
    pl.seed_everything(0)
    model = TinyClassifier()
    trainer(tmp_path, [cb, ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)], 1).fit(model, loader())
    assert cb.events_done == 1
    pruned = [p.shape for p in model.parameters()]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer(tmp_path, [cb], 2).fit(model, loader(), ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert not [w for w in record if "pruned in its earlier fit" in str(w.message)]
    assert cb.events_done == 1 and [p.shape for p in model.parameters()] == pruned


@pytest.mark.parametrize(("warmup", "refused"), [(0, True), (3, False)], ids=["past_the_sparsify_start", "in_warmup"])
def test_resuming_a_checkpoint_written_without_the_callback_is_refused_where_the_schedule_is_past(tmp_path, warmup,
                                                                                                refused):
    """A dense fit's checkpoint (no Pruning in it) resumed with the callback: its epochs would count as the
    schedule's and skip what the schedule puts before them, unless they fall in the warm-up."""
    pl.seed_everything(0)
    trainer(tmp_path, [epoch_checkpoints(tmp_path / "dense")], 3).fit(TinyClassifier(), loader())
    dense = tmp_path / "dense" / "epoch=2.ckpt"
    schedule = PruningSchedule(warmup_epochs=warmup, sparsify_epochs=2, finetune_epochs=1, update_every_n_steps=2)
    model = TinyClassifier()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruning = Pruning("ssr_l20", target={"macs": 0.5}, schedule=schedule, verbose=False)
    fit = trainer(tmp_path, [pruning, epoch_checkpoints(tmp_path / "dense", resume_from=dense)], 6)
    if refused:
        with pytest.raises(Exception, match="resumes at epoch 3 from a checkpoint that holds no Pruning state") as info:
            fit.fit(model, loader(), ckpt_path=dense)
        assert "start a new fit with Pruning, without ckpt_path" in str(info.value)
        # refused before the module took the checkpoint's weights (it held them after: probe), before a step
        assert fit.global_step == 0 and pruning.engine.events_done == 0
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    else:
        fit.fit(model, loader(), ckpt_path=dense)  # the dense epochs are the warm-up
        assert pruning.events_done == 1 and fit.current_epoch == schedule.total_epochs == 6
    # check_resume (what the command runs before anything trains) refuses the same checkpoint at
    # the epoch the fit resumes at: written at the end of training epoch 2, the fit goes on at 3
    checkpoint = torch.load(dense, weights_only=True)
    assert checkpoint["epoch"] == 2
    fresh = Pruning("ssr_l20", target={"macs": 0.5}, schedule=schedule, verbose=False)
    if refused:
        with pytest.raises(ValueError, match="resumes at epoch 3 from a checkpoint that holds no Pruning"):
            fresh.check_resume(checkpoint)
    else:
        fresh.check_resume(checkpoint)
    # the same epoch's checkpoint written mid-epoch (its training not ended): the fit resumes in it
    # or, after the epoch's last batch, at the next one; only the fit knows which. The saved epoch
    # is a lower bound: past warm-up it is refused as such, in epoch W (= warmup_epochs) left to the fit
    mid = {**checkpoint, "loops": {"fit_loop": {"epoch_progress": {"current": {"processed": 2, "completed": 2}}}}}
    if refused:
        with pytest.raises(ValueError, match="resumes at epoch at least 2 from a checkpoint that holds no Pruning"):
            fresh.check_resume(mid)
    for lower_bound in (warmup, None):  # (None: a checkpoint without Lightning's loops, nor an epoch)
        fresh.check_resume({**mid, "epoch": lower_bound, "loops": {}})


def test_per_layer_pruning_ratio_is_capped(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = SSRPruning(regularizer="l20", filter_budget=0.1, max_pruning_ratio=0.5,
                    schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=0, update_every_n_steps=2))
    with pytest.raises(ValueError, match="too small"):  # 10% of the filters cannot fit the 50% cap
        trainer(tmp_path, [cb], 1).fit(model, loader())
    cb = SSRPruning(regularizer="l21", lam=100.0, max_pruning_ratio=0.5,
                    schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=0, update_every_n_steps=2))
    trainer(tmp_path, [cb], 1).fit(TinyClassifier(), loader())
    assert all(r["after"] >= r["before"] / 2 for r in cb.result.layers)
    assert any(r["after"] < r["before"] for r in cb.result.layers)


def test_layers_can_be_excluded_by_name_or_module(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = SSRPruning(regularizer="l20", filter_budget=0.5, ignored_layers=["backbone.conv_a"],
                    schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=0, update_every_n_steps=2))
    trainer(tmp_path, [cb], 1).fit(model, loader())
    assert model.backbone.conv_a.out_channels == 12
    assert model.backbone.fc1.out_features < 16
    assert "backbone.conv_a" not in cb.plan.kept

    model = TinyClassifier()
    cb = Pruning(method="oneshot", target={"filters": 0.5}, ignored_layers=[model.backbone.fc1],
                 schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1))
    trainer(tmp_path, [cb], 1).fit(model, loader())
    assert model.backbone.fc1.out_features == 16
    assert model.backbone.conv_a.out_channels < 12

    with pytest.raises(ValueError, match="no module named"):
        trainer(tmp_path, [SSRPruning(ignored_layers=["nope"], schedule=SCHEDULE)],
                SCHEDULE.total_epochs).fit(TinyClassifier(), loader())
    stranger = torch.nn.Conv2d(1, 1, 1)
    with pytest.raises(ValueError, match="not part of the model being pruned"):
        trainer(tmp_path, [SSRPruning(ignored_layers=[stranger], schedule=SCHEDULE)],
                SCHEDULE.total_epochs).fit(TinyClassifier(), loader())


def test_state_restored_but_not_yet_applied_round_trips():
    cb = SSRPruning(schedule=SCHEDULE)
    aulm = {"V": {}, "U": {}, "rho": 0.3, "num_updates": 2, "stable_updates": 0, "support": {}}
    state = {"method": "ssr_l21", "method_state": {"aulm": aulm}, "plan": None, "events_done": 0, "events": [],
             "trajectory": [{"step": 4, "kept": {"a": 3}}], "prune_early": True, "frozen": ["a.weight"], "last_update_step": 8, "dense": {"sizes": {"a": 4}, "min_keep": {"a": 1},
                                                                    "final_keep": None, "cost": None, "round_to": 1,
                                                                    "allocation": "method", "steps": {"a": 1},
                                                                    "importance": None},
             "latency": {"dense_ms": 2.0, "predicted_ms": 1.0}, "settings": cb.engine.settings(),
             "warnings": ["pruning method 'ssr_l21' updates every 25 optimizer steps ...", "Trainer(max_epochs=2) ..."],
             "warnings_until_done": ["Trainer(max_epochs=2) ..."],
             "timings": {"setup_s": 0.5, "rebuild_s": [0.25], "last_prune_s": 9.0}}
    cb.load_state_dict(state)
    again = SSRPruning(schedule=SCHEDULE)
    again.load_state_dict(cb.state_dict())
    assert {k: v for k, v in again.state_dict().items() if k not in ("rng", "epoch_progress")} == state

    plan = {"format_version": 1, "input_shape": [1, 3, 16, 16], "groups": [{"root": "a", "size": 4, "kept": [0, 2]}]}
    pruned = dict(state, method_state=None, plan=plan, events_done=1,
                  events=[{"epoch": 3, "step": 12, "macs": 10, "params": 5}])
    cb.load_state_dict(pruned)
    assert {k: v for k, v in cb.state_dict().items() if k not in ("rng", "epoch_progress")} == pruned
    assert cb.plan.kept == {"a": [0, 2]} and cb.events == pruned["events"]


def test_state_of_another_method_is_refused():
    cb = Pruning(method="oneshot", target={"macs": 0.5})
    assert cb.state_key.startswith("Pruning") and "oneshot" in cb.state_key
    assert set(cb.state_dict()) == STATE_KEYS
    with pytest.raises(ValueError, match="same method"):
        cb.load_state_dict(dict(SSRPruning().state_dict()))


ITERATIVE = PruningSchedule(sparsify_epochs=0, prune_events=2, epochs_between_prunes=1, finetune_epochs=1)


def test_iterative_pruning_reaches_the_target_at_the_last_event_and_the_plan_replays(tmp_path):
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = Pruning(method="oneshot", target={"macs": 0.5}, schedule=ITERATIVE)
    trainer(tmp_path, [cb], ITERATIVE.total_epochs).fit(model, loader())

    dense = cb.result.dense["macs"]
    assert [e["epoch"] for e in cb.events] == [ITERATIVE.prune_epoch(0), ITERATIVE.prune_epoch(1)] == [0, 1]
    first, second = cb.events
    assert 0.5 * dense < first["macs"] < dense  # a step on the way
    assert second["macs"] <= 0.5 * dense < first["macs"]
    assert second["params"] < first["params"]
    assert cb.result.pruned["macs"] == second["macs"] and cb.result.events == cb.events
    # the cumulative plan (indices into the dense model) replays on a fresh model
    fresh = TinyClassifier()
    apply_plan(fresh, cb.plan)
    shapes = {n: p.shape for n, p in model.state_dict().items()}
    assert {n: p.shape for n, p in fresh.state_dict().items()} == shapes
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model.eval()(x))


@pytest.mark.parametrize("method", ["oneshot", "l1", "ssr_l20"])
@pytest.mark.parametrize("batches", [1, 2])
def test_iterative_pruning_without_finetuning_makes_its_last_event_at_one_batch_per_epoch(tmp_path, method, batches):
    """No fine-tuning: the last event happens at the end of the fit. With one batch per epoch the
    event before it took that epoch's only batch, and no batch was left to set the method up again."""
    pl.seed_everything(0)
    schedule = PruningSchedule(sparsify_epochs=1 if method == "ssr_l20" else 0, prune_events=2,
                               epochs_between_prunes=1, finetune_epochs=0, update_every_n_steps=1)
    cb = Pruning(method, target={"macs": 0.5}, schedule=schedule, verbose=False)
    model = TinyClassifier()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*before the prune")  # the fit-end warning of a missed event
        trainer(tmp_path, [cb], schedule.total_epochs).fit(model, loader(n=16 * batches))
    # (the last at the start of the epoch after the fit's last: recorded there, as scheduled, not at the last)
    assert cb.events_done == 2 and [e["epoch"] for e in cb.events] == [schedule.prune_epoch(k) for k in range(2)]
    assert cb.result.pruned["macs"] <= 0.5 * cb.result.dense["macs"] < cb.events[0]["macs"]
    assert cb.result.pruned["params"] == sum(p.numel() for p in model.parameters())


def test_iterative_pruning_resumes_between_events(tmp_path):
    def run(max_epochs, dirpath, ckpt_path=None):
        pl.seed_everything(0)
        model = TinyClassifier()
        cb = Pruning(method="oneshot", target={"macs": 0.5}, schedule=ITERATIVE, verbose=False)
        ckpt = epoch_checkpoints(dirpath, resume_from=ckpt_path)
        trainer(tmp_path, [cb, ckpt], max_epochs).fit(model, loader(), ckpt_path=ckpt_path)
        return model, cb

    full_model, full_cb = run(ITERATIVE.total_epochs, tmp_path / "full")
    with stopped_fit(ITERATIVE, 1):
        _, stopped = run(1, tmp_path / "stopped")  # stops after the first of two events
    assert stopped.events_done == 1
    model, cb = run(ITERATIVE.total_epochs, tmp_path / "resumed", ckpt_path=tmp_path / "stopped" / "epoch=0.ckpt")
    assert cb.events == full_cb.events and cb.plan.to_dict() == full_cb.plan.to_dict()
    assert_same_weights(model, full_model)


def test_iterative_pruning_with_ssr_sparsifies_again_between_events(tmp_path, monkeypatch):
    pl.seed_everything(0)
    model = TinyClassifier()
    schedule = PruningSchedule(sparsify_epochs=1, prune_events=2, epochs_between_prunes=1, finetune_epochs=1,
                               update_every_n_steps=2)
    cb = Pruning(method="ssr_l20", target={"macs": 0.5}, schedule=schedule, method_kwargs={"rho": 0.5})
    starts = []
    original = type(cb.method).start

    def recording(method):  # the callback's method, not the copy the set-up rehearses
        if method is cb.method:
            starts.append(cb.events_done)
        return original(method)

    monkeypatch.setattr(type(cb.method), "start", recording)
    trainer(tmp_path, [cb], schedule.total_epochs).fit(model, loader())
    assert len(cb.events) == 2 and cb.events[1]["macs"] <= 0.5 * cb.result.dense["macs"]
    assert cb.events[0]["macs"] > cb.events[1]["macs"]
    assert starts == [0, 1]  # AULM restarted on the smaller model for the second event


@pytest.mark.parametrize("allocation", ["uniform", "global"])
def test_allocation_and_round_to_reach_the_rebuilt_model(tmp_path, allocation):
    pl.seed_everything(0)
    model = TinyClassifier()
    cb = Pruning(method="oneshot", method_kwargs={"importance": "l1"}, target={"macs": 0.6},
                 schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1), allocation=allocation, round_to=4,
                 verbose=False)
    # (a net this small has coarse steps: round_to=4 lands it well below the target, which is said)
    with pytest.warns(UserWarning, match=r"target \{'macs': 0.6\}: the closest the channel counts come below it is "
                                         r"0.50\d\d of the dense model's macs"):
        trainer(tmp_path, [cb], 1).fit(model, loader())
    sizes = {n: len(k) for n, k in cb.plan.kept.items()}
    dense = cb.plan.sizes
    assert all(k % 4 == 0 or k == dense[n] for n, k in sizes.items()) and sizes != dense
    assert cb.result.pruned["macs"] <= 0.6 * cb.result.dense["macs"]
    assert cb.result.config["allocation"] == allocation and cb.result.config["round_to"] == 4


def test_allocation_and_round_to_are_validated_in_init():
    with pytest.raises(ValueError, match="allocation"):
        Pruning(method="oneshot", target={"macs": 0.5}, allocation="greedy")
    with pytest.raises(ValueError, match="round_to"):
        Pruning(method="oneshot", target={"macs": 0.5}, round_to=0)


class CosineClassifier(TinyClassifier):
    """The user's module with a cosine schedule over the whole fit."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        return {"optimizer": opt,
                "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=SCHEDULE.total_epochs)}


class EpochRates(Callback):
    """The learning rate each epoch trains with (read at its first batch, after any prune)."""

    def __init__(self):
        self.lrs = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.setdefault(trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"])


RESTART = dataclasses.replace(SCHEDULE, restart_lr=True)


@pytest.mark.parametrize("restart", [False, True])
def test_restart_lr_gives_the_fine_tuning_a_whole_cosine_schedule(tmp_path, restart):
    pl.seed_everything(0)
    rates = EpochRates()
    cb = Pruning(method="l1", target={"macs": 0.5}, schedule=RESTART if restart else SCHEDULE, verbose=False)
    trainer(tmp_path, [cb, rates], SCHEDULE.total_epochs).fit(CosineClassifier(), loader())
    total, prune = SCHEDULE.total_epochs, SCHEDULE.prune_epoch()
    plain = [0.05 * (1 + math.cos(math.pi * e / total)) / 2 for e in range(total)]
    left = total - prune  # the fine-tuning: its own cosine from the initial rate
    restarted = plain[:prune] + [0.05 * (1 + math.cos(math.pi * k / left)) / 2 for k in range(left)]
    expected = restarted if restart else plain
    assert [rates.lrs[e] for e in range(total)] == pytest.approx(expected, rel=1e-12)
    assert cb.events[0].get("lr_restart") == (left if restart else None)


def test_restart_lr_without_a_cosine_schedule_is_refused_before_the_first_step(tmp_path):
    model = TinyClassifier()  # its scheduler is a StepLR
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit = trainer(tmp_path, [Pruning(method="l1", target={"macs": 0.5}, schedule=RESTART, verbose=False)],
                  SCHEDULE.total_epochs)
    with pytest.raises(ValueError, match="CosineAnnealingLR schedules again, not StepLR"):
        fit.fit(model, loader())
    assert fit.global_step == 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("stop_after", [3, 4], ids=["before_the_prune", "after_the_restart"])
def test_a_resumed_run_with_restart_lr_matches_an_uninterrupted_one(tmp_path, stop_after):
    def run(max_epochs, dirpath, ckpt_path=None):
        pl.seed_everything(0)
        model, rates = CosineClassifier(), EpochRates()
        cb = Pruning(method="l1", target={"macs": 0.5}, schedule=RESTART, verbose=False)
        fit = trainer(tmp_path, [cb, rates, epoch_checkpoints(dirpath, resume_from=ckpt_path)], max_epochs)
        fit.fit(model, loader(shuffle=True), ckpt_path=ckpt_path)
        return model, cb, rates, fit

    full_model, full_cb, full_rates, full_fit = run(RESTART.total_epochs, tmp_path / "full")
    with stopped_fit(RESTART, stop_after):
        run(stop_after, tmp_path / "stopped")
    model, cb, rates, fit = run(RESTART.total_epochs, tmp_path / "resumed",
                                ckpt_path=tmp_path / "stopped" / f"epoch={stop_after - 1}.ckpt")
    assert cb.events == full_cb.events and cb.events[0]["lr_restart"] == RESTART.finetune_epochs
    assert all(rates.lrs[e] == full_rates.lrs[e] for e in rates.lrs)  # the epochs the resumed fit ran
    assert fit.optimizers[0].param_groups[0]["lr"] == full_fit.optimizers[0].param_groups[0]["lr"]
    assert_same_weights(model, full_model)


class StepCosineClassifier(TinyClassifier):
    """The user's module with a per-step cosine over the fit's optimizer steps."""

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class EndingCosineClassifier(CosineClassifier):
    """The same, made to end where the fit does when a resume changes it, as the README says to."""

    def on_train_start(self):
        end_cosines(self.trainer)


class EndingStepCosineClassifier(StepCosineClassifier):
    on_train_start = EndingCosineClassifier.on_train_start


@pytest.mark.parametrize("resumed_with", [{}, {"accumulate_grad_batches": 2}, {"limit_train_batches": 3},
                                          {"max_steps": 13}], ids=["same_epochs", "accumulating", "fewer_batches",
                                                                   "max_steps"])
def test_end_cosines_ends_a_per_step_cosine_at_the_last_step_of_a_resume_with_other_epochs(tmp_path, resumed_with):
    """Not at estimated_stepping_batches, which counts every epoch at the resumed fit's length."""
    pl.seed_everything(0)
    trainer(tmp_path, [epoch_checkpoints(tmp_path / "ckpts")], 2).fit(EndingStepCosineClassifier(), loader())
    path = tmp_path / "ckpts" / "epoch=1.ckpt"  # 8 steps taken, 4 an epoch
    fit = trainer(tmp_path, [epoch_checkpoints(None, resume_from=path)], 4, **resumed_with)
    fit.fit(EndingStepCosineClassifier(), loader(), ckpt_path=path)
    per_epoch = {"accumulate_grad_batches": 2, "limit_train_batches": 3}
    last = min(8 + 2 * per_epoch.get(next(iter(resumed_with), ""), 4), resumed_with.get("max_steps", 99))
    sched = fit.lr_scheduler_configs[0].scheduler
    assert fit.global_step == last and sched.T_max == last
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # the cosine's end: 1 + cos(pi) is 0


# Lightning's notes on what the test does on purpose: resume mid-epoch, into the folder that holds the checkpoint
@pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended")
@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
def test_end_cosines_ends_a_per_step_cosine_at_the_last_step_of_a_resume_from_mid_epoch(tmp_path):
    """A checkpoint saved after 2 of epoch 1's 4 steps: 6 taken, 2 + 2 epochs x 4 left."""
    pl.seed_everything(0)
    mid = ModelCheckpoint(dirpath=tmp_path / "mid", every_n_train_steps=6, save_top_k=-1)
    trainer(tmp_path, [mid], 2).fit(EndingStepCosineClassifier(), loader())
    path = tmp_path / "mid" / "epoch=1-step=6.ckpt"
    again = ModelCheckpoint(dirpath=tmp_path / "mid", every_n_train_steps=6, save_top_k=-1)  # the same callback
    fit = trainer(tmp_path, [again], 4)
    fit.fit(EndingStepCosineClassifier(), loader(), ckpt_path=path)
    sched = fit.lr_scheduler_configs[0].scheduler
    assert fit.global_step == 16 and sched.T_max == 16
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # the cosine's end: 1 + cos(pi) is 0


@pytest.mark.parametrize("module", [CosineClassifier, EndingCosineClassifier, StepCosineClassifier,
                                    EndingStepCosineClassifier])
def test_a_resume_that_fine_tunes_past_the_checkpoints_cosine_is_warned_of(tmp_path, module):
    total, steps = SCHEDULE.total_epochs, 4  # optimizer steps an epoch
    pl.seed_everything(0)
    cb = Pruning(method="l1", target={"macs": 0.5}, schedule=SCHEDULE, verbose=False)
    trainer(tmp_path, [cb, epoch_checkpoints(tmp_path / "ckpts")], total).fit(module(), loader())
    longer = dataclasses.replace(SCHEDULE, finetune_epochs=SCHEDULE.finetune_epochs + 2)
    cb, rates = Pruning(method="l1", target={"macs": 0.5}, schedule=longer, verbose=False), EpochRates()
    path = tmp_path / "ckpts" / f"epoch={total - 1}.ckpt"
    fit = trainer(tmp_path, [cb, rates, epoch_checkpoints(None, resume_from=path)], longer.total_epochs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit.fit(module(), loader(), ckpt_path=path)
    said = [str(w.message) for w in caught if "CosineAnnealingLR ends" in str(w.message)]
    if module is CosineClassifier:
        fit_end = f"max_epochs={total + 2}"
        assert said == [f"Pruning: the checkpoint's CosineAnnealingLR ends at epoch {total} (T_max={total}), before "
                        f"{fit_end}: a resume keeps the checkpoint's schedule, so the epochs after its end"
                        + said[0].split("the epochs after its end", 1)[1]]
    elif module is StepCosineClassifier:
        fit_end = f"the fit's last step ({steps * (total + 2)})"
        assert said == [f"Pruning: the checkpoint's CosineAnnealingLR ends at step {steps * total} (T_max="
                        f"{steps * total}), before {fit_end}: a resume keeps the checkpoint's schedule, so the steps "
                        "after its end" + said[0].split("the steps after its end", 1)[1]]
    if module in (CosineClassifier, StepCosineClassifier):
        assert "lightning_ssr.end_cosines(self.trainer)" in said[0]
        # what the warning is about: the cosine's end, where 1 + cos(pi) is 0 in float64
        assert rates.lrs[total] == pytest.approx(0.0, abs=1e-12)
    else:
        assert said == [] and rates.lrs[total] > 0.01 * CosineClassifier().lr  # the added epochs train
        assert fit.lr_scheduler_configs[0].scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # ends at the end


WARM = dataclasses.replace(SCHEDULE, lr_warmup_steps=6)  # 4 steps an epoch: the warm-up crosses an epoch end


def test_lr_warmup_ramps_the_steps_after_the_prune_and_leaves_the_schedule_alone(tmp_path):
    runs = {}
    for schedule in (SCHEDULE, WARM):
        pl.seed_everything(0)
        model, rates = RecordingClassifier(), EpochRates()
        cb = Pruning(method="l1", target={"macs": 0.5}, schedule=schedule, verbose=False)
        fit = trainer(tmp_path, [cb, rates], SCHEDULE.total_epochs)
        fit.fit(model, loader())
        runs[schedule.lr_warmup_steps] = fit.optimizers[0].seen, rates.lrs
    (plain, plain_rates), (warm, warm_rates) = runs[0], runs[6]
    first = 4 * SCHEDULE.prune_epoch()  # the first step of the pruned model
    assert warm[:first] == plain[:first]
    assert warm[first:first + 6] == pytest.approx([p * (k + 1) / 7 for k, p in enumerate(plain[first:first + 6])],
                                                  rel=1e-15)
    assert warm[first + 6:] == plain[first + 6:] and len(warm) == len(plain)
    assert warm_rates == plain_rates  # what the scheduler and a rate monitor see: the scheduled rate


@pytest.mark.parametrize("stop_after, stopped_warmup", [(3, 6), (4, 6), (3, 0)],
                         ids=["before_the_prune", "in_the_warmup", "added_on_resume_before_the_prune"])
def test_a_resumed_run_with_lr_warmup_matches_an_uninterrupted_one(tmp_path, stop_after, stopped_warmup):
    """Also a run stopped before its prune without a warm-up, resumed with one (what the NaN loss
    error advises): the same as a run with the warm-up from the start."""
    def run(max_epochs, dirpath, ckpt_path=None, schedule=WARM):
        pl.seed_everything(0)
        model = RecordingClassifier()
        cb = Pruning(method="l1", target={"macs": 0.5}, schedule=schedule, verbose=False)
        fit = trainer(tmp_path, [cb, epoch_checkpoints(dirpath, resume_from=ckpt_path)], max_epochs)
        fit.fit(model, loader(shuffle=True), ckpt_path=ckpt_path)
        return model, fit

    full_model, full_fit = run(WARM.total_epochs, tmp_path / "full")
    with stopped_fit(WARM, stop_after):
        run(stop_after, tmp_path / "stopped", schedule=dataclasses.replace(WARM, lr_warmup_steps=stopped_warmup))
    model, fit = run(WARM.total_epochs, tmp_path / "resumed",
                     ckpt_path=tmp_path / "stopped" / f"epoch={stop_after - 1}.ckpt")
    resumed = fit.optimizers[0].seen  # the steps after the resume, scaled as in the uninterrupted fit
    assert resumed == full_fit.optimizers[0].seen[-len(resumed):] and len(resumed) == 4 * (WARM.total_epochs - stop_after)
    assert fit.optimizers[0].param_groups[0]["lr"] == full_fit.optimizers[0].param_groups[0]["lr"]
    assert_same_weights(model, full_model)


class _CLIData(pl.LightningDataModule):
    def train_dataloader(self):
        return loader()


def _cli(tmp_path, monkeypatch, pruning_args):
    """LightningCLI run from Python on a config: the command line is left empty (pytest's own)."""
    from lightning.pytorch.cli import LightningCLI

    monkeypatch.setattr(sys, "argv", ["train.py"])
    config = {"seed_everything": 0, "trainer": {"max_epochs": 3, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
                          "enable_progress_bar": False, "enable_model_summary": False,
                          "default_root_dir": str(tmp_path),
                          "callbacks": [{"class_path": "lightning_ssr.Pruning", "init_args": pruning_args}]}}
    return LightningCLI(TinyClassifier, _CLIData, args={"fit": config}, save_config_kwargs={"overwrite": True})


# (the target is coarse on this tiny network, and said to be: not what this test is about)
@pytest.mark.filterwarnings("ignore:target .* the closest the channel counts come below it")
def test_lightning_cli_configures_the_callback_from_plain_data(tmp_path, monkeypatch):
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse (pip install 'lightning_ssr[cli]')")
    cli = _cli(tmp_path, monkeypatch, {"method": "l1", "target": {"filters": 0.5}, "allocation": "uniform", "round_to": 2,
                          "schedule": {"sparsify_epochs": 2, "finetune_epochs": 1}})
    (pruning,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, Pruning)]
    assert pruning.schedule == PruningSchedule(sparsify_epochs=2, finetune_epochs=1)
    assert pruning.allocation == "uniform" and pruning.result is not None
    # the engine's keyword arguments (allocation, round_to) reach it through Pruning(**engine_args)
    kept = [layer["after"] for layer in pruning.result.layers if layer["after"] < layer["before"]]
    assert kept and all(n % 2 == 0 for n in kept)
    saved = (tmp_path / "config.yaml").read_text()  # LightningCLI's record of the run, replayable
    assert "lightning_ssr.Pruning" in saved and "round_to: 2" in saved


@pytest.mark.parametrize(("pruning_args", "match"), [
    ({"method": "l1", "target": {"filters": 0.5}, "allocaton": "uniform"}, "Option 'allocaton' is not accepted"),
    ({"method": "l1", "target": {"filters": 0.5}, "allocation": "unifrom"},
     "allocation must be one of ('uniform', 'global', 'method'), got 'unifrom'"),  # the callback's own check
    ({"method": "l1", "target": {"filter": 0.5}}, "unknown target key(s) ['filter']"),
    ({"method": "ssr_l20", "target": {"macs": 0.5}, "method_kwargs": {"rhoo": 1.0}}, "did you mean 'rho'"),
])
def test_lightning_cli_refuses_a_bad_callback_config_before_training(tmp_path, monkeypatch, capsys, pruning_args,
                                                                      match):
    pytest.importorskip("jsonargparse", reason="LightningCLI needs jsonargparse (pip install 'lightning_ssr[cli]')")
    with pytest.raises((SystemExit, ValueError, TypeError)) as error:
        _cli(tmp_path, monkeypatch, pruning_args)
    assert match in str(error.value) + capsys.readouterr().err  # jsonargparse exits with the reasons on stderr


def test_a_method_without_a_training_time_term_prunes_at_once_by_default():
    # Pruning("oneshot", target=...) trained the dense model 10 epochs before pruning, silently
    # (the CLI's pruning=oneshot selects schedule=oneshot)
    oneshot = Pruning("oneshot", target={"macs": 0.5}).schedule
    ssr = Pruning("ssr_l20", target={"macs": 0.5}).schedule
    assert (oneshot.sparsify_epochs, oneshot.prune_epoch(0), oneshot.total_epochs) == (0, 0, ssr.total_epochs)
    assert ssr == PruningSchedule()
    assert Pruning("oneshot", target={"macs": 0.5}, schedule={"sparsify_epochs": 3}).schedule.prune_epoch(0) == 3


def test_a_sparsify_phase_too_short_for_one_update_is_warned_of_at_set_up(tmp_path):
    """4 steps an epoch, one sparsify epoch after one of warm-up (steps 5-8), updates every 25
    steps: AULM would never run its V/U step, and the prune would not come from what it learned.
    One update in the phase (every 4 steps: step 8) is enough to say nothing."""
    pl.seed_everything(0)
    schedule = PruningSchedule(warmup_epochs=1, sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=25)
    pruning = Pruning("ssr_l20", target={"macs": 0.5}, schedule=schedule, verbose=False)
    with pytest.warns(UserWarning, match=r"'ssr_l20' updates every 25 optimizer steps .* sparsify phase is steps "
                                         r"5-8 \(1 epoch\(s\) of 4\), with no multiple of 25: it would never update"):
        trainer(tmp_path, [pruning], 3).fit(TinyClassifier(), loader())
    assert pruning.engine.last_update_step == -1  # (never)
    # the result keeps it: a run read later (result.json, a sweep's) says it was warned of
    (kept,) = pruning.result.warnings
    assert "with no multiple of 25: it would never update" in kept
    assert "1 warning during the run (kept in the result's 'warnings')" in pruning.result.summary()
    enough = PruningSchedule(warmup_epochs=1, sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=4)
    pruning = Pruning("ssr_l20", target={"macs": 0.5}, schedule=enough, verbose=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*would never update")
        trainer(tmp_path, [pruning], 3).fit(TinyClassifier(), loader())
    assert pruning.engine.last_update_step == 8 and pruning.result.warnings == []


def test_a_sparsify_phase_too_short_for_one_update_is_warned_of_with_several_prune_events_too(tmp_path):
    """With several prune events the method updates between them, so the warning was skipped; but
    the first event then prunes from weights the method never shaped (steps 5-8, every 25)."""
    pl.seed_everything(0)
    schedule = PruningSchedule(warmup_epochs=1, sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=25,
                               prune_events=2)
    pruning = Pruning("ssr_l20", target={"macs": 0.5}, schedule=schedule, verbose=False)
    with pytest.warns(UserWarning, match=r"sparsify phase is steps 5-8 \(1 epoch\(s\) of 4\), with no multiple of "
                                         r"25: it would not update before its first prune event"):
        trainer(tmp_path, [pruning], schedule.total_epochs).fit(TinyClassifier(), loader())
    assert pruning.engine.last_update_step == -1 and pruning.engine.done


@pytest.mark.filterwarnings("ignore:`max_epochs` was not set")  # (Lightning's own, which the test provokes)
def test_a_fit_without_max_epochs_is_told_it_trains_past_the_schedule(tmp_path):
    """Without max_epochs (a LightningCLI config that leaves it out), Lightning trains 1000 epochs:
    the prune came at epoch 1, then 998 epochs of fine-tune nobody asked for. Said at the start,
    in the schedule's terms; a fit bounded by max_epochs or max_steps is not told."""
    pl.seed_everything(0)
    schedule = PruningSchedule(sparsify_epochs=0, finetune_epochs=1)

    class StopAfterTwoEpochs(Callback):  # (the test's own end: the fit would run its 1000 epochs)
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = trainer.current_epoch >= 1

    def fit(**bounds):
        pruning = Pruning("l1", target={"macs": 0.5}, schedule=schedule, verbose=False)
        pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=tmp_path, callbacks=[pruning, StopAfterTwoEpochs()],
                   **bounds).fit(TinyClassifier(), loader())
        return pruning

    with pytest.warns(UserWarning, match=r"^Pruning: Trainer\(max_epochs=1000\) \(Lightning's default where neither "
                                         r"max_epochs nor max_steps is given\) trains 999 epochs more than this pruning "
                                         r"schedule's 1 \(the fine-tune goes on after it\)\. Set Trainer\(max_epochs=1\)"):
        fit()
    for bounds in ({"max_epochs": 1}, {"max_steps": 2}):
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=r"Pruning: Trainer\(max_epochs=1000\)")
            fit(**bounds)


def test_a_fit_resumed_before_its_prune_is_not_told_of_updates_a_short_phase_never_held(tmp_path):
    """A sparsify phase too short for one update is warned of at the first fit's set-up; the fit
    resumed before its prune does not rehearse, and was told at the prune that its phase 'held
    multiples of 16', blaming on_batch_end's step count, which no loop of the user's gave."""
    short = PruningSchedule(warmup_epochs=1, sparsify_epochs=1, finetune_epochs=1, update_every_n_steps=16)

    def pruning():
        return Pruning(method="ssr_l21", target={"filters": 0.5}, schedule=short, verbose=False)

    with pytest.warns(UserWarning, match=r"with no multiple of 16: it would never update"), \
            pytest.warns(UserWarning, match=r"Trainer\(max_epochs=2\) ends before the last scheduled prune"):
        trainer(tmp_path, [pruning(), epoch_checkpoints(tmp_path / "ck")], 2).fit(TinyClassifier(), loader())
    saved = tmp_path / "ck" / "epoch=1.ckpt"
    resumed = pruning()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r".*held multiples of")
        trainer(tmp_path, [resumed, epoch_checkpoints(None, saved)], 3).fit(TinyClassifier(), loader(),
                                                                              ckpt_path=saved)
    assert resumed.plan is not None


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # (each fit keeps its checkpoints apart)
def test_a_fit_resumed_from_a_checkpoint_saved_mid_epoch_is_told_the_steps_lightning_skips(tmp_path):
    """A fit that max_steps stopped mid-epoch saves its epoch's checkpoint, and Lightning goes on
    from it at the next epoch's start without a word: the rest of that epoch was never trained, and
    every later prune came that many steps earlier than in the uninterrupted fit (probe)."""
    schedule = PruningSchedule(sparsify_epochs=0, finetune_epochs=2, prune_events=2, epochs_between_prunes=1)

    def fit(max_steps, ckpt_path=None, folder="ckpt", epochs=schedule.total_epochs):
        pl.seed_everything(0)
        callback = Pruning("l1", target={"macs": 0.5}, schedule=schedule, verbose=False)
        fitter = trainer(tmp_path, [callback, ModelCheckpoint(dirpath=tmp_path / folder, save_top_k=-1)],
                         epochs, max_steps=max_steps)
        fitter.fit(TinyClassifier(), loader(80), ckpt_path=ckpt_path)
        return fitter, callback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the callback's warning that this fit ends before the schedule does)
        fit(7)  # 5 steps per epoch: stopped at step 7, in epoch 1
    saved = tmp_path / "ckpt" / "epoch=1-step=7.ckpt"
    with pytest.warns(UserWarning, match=r"this fit goes on at the start of epoch 2 from a checkpoint saved after "
                                         r"2 of the 5 training batches of epoch 1 \(optimizer step 7\): Lightning "
                                         r"does not train its last 3"):
        resumed, callback = fit(-1, saved, "resumed")
    assert resumed.global_step == 12 and any("2 of the 5 training batches" in w for w in callback.result.warnings)
    # from a checkpoint of an epoch that ran to its end: nothing to say, also where the steps lag
    # behind an uninterrupted fit's since an earlier mid-epoch resume (it said so again: review)
    for checkpoint, folder in ((tmp_path / "ckpt" / "epoch=0-step=5.ckpt", "resumed_at_an_epochs_end"),
                               (tmp_path / "resumed" / "epoch=2-step=12.ckpt", "resumed_again")):
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            fitted, _ = fit(-1, checkpoint, folder, epochs=schedule.total_epochs + 1)  # (an epoch more to train)
        assert fitted.global_step > int(checkpoint.stem.split("step=")[1])
        assert not [w for w in said if "training batches of epoch" in str(w.message)], checkpoint
