"""The Lightning-free engine: a hand-written training loop on a bare nn.Module, with the same
plan and the same weights as the Pruning callback inside Trainer.fit on the same data and seed."""

import re
import subprocess
import sys

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_ssr import Pruning, PruningEngine, PruningSchedule
from lightning_ssr.engine import _differs, plain_data
from tests.lit import NetClassifier, trainer
from tests.nets import SmallResidualCNN

SCHEDULE = PruningSchedule(warmup_epochs=1, sparsify_epochs=2, finetune_epochs=2, update_every_n_steps=2,
                           stop_early=False)


def _data():
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(64, 3, 16, 16, generator=gen), torch.randint(0, 5, (64,), generator=gen))


def _unprefixed(obj):
    """``obj`` with the LightningModule's "net." taken off every module name."""
    if isinstance(obj, dict):
        return {(k[4:] if isinstance(k, str) and k.startswith("net.") else k): _unprefixed(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unprefixed(v) for v in obj]
    return obj[4:] if isinstance(obj, str) and obj.startswith("net.") else obj


@pytest.mark.parametrize("method,kwargs", [("ssr_l20", {"rho": 0.5}), ("ssr_l21", {"rho": 0.5}), ("l1", {})])
def test_a_plain_training_loop_gives_the_callbacks_plan_and_weights(tmp_path, method, kwargs):
    schedule = SCHEDULE if method != "l1" else PruningSchedule(sparsify_epochs=0, finetune_epochs=5, lr_warmup_steps=3)
    target = {"macs": 0.4}

    # the callback in Trainer.fit
    pl.seed_everything(0)
    lit = NetClassifier(SmallResidualCNN(in_channels=3, num_classes=5), lr=0.05)
    callback = Pruning(method, target=target, method_kwargs=kwargs, schedule=schedule, verbose=False)
    trainer(tmp_path, [callback], schedule.total_epochs).fit(lit, DataLoader(_data(), batch_size=16))

    # the engine in a loop written by hand, on a bare nn.Module
    pl.seed_everything(0)
    model = SmallResidualCNN(in_channels=3, num_classes=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    engine = PruningEngine(method, target=target, method_kwargs=kwargs, schedule=schedule, verbose=False)
    step = 0
    engine.start()
    for epoch in range(schedule.total_epochs):
        model.train()
        for x, y in DataLoader(_data(), batch_size=16):
            engine.on_batch_start(model, x, epoch=epoch, step=step, optimizers=[optimizer], steps_per_epoch=4)
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            engine.on_before_optimizer_step()
            optimizer.step()
            step += 1
            engine.on_batch_end(step=step)
        engine.on_epoch_end(model, epoch=epoch, step=step, optimizers=[optimizer], max_epochs=schedule.total_epochs)
    result = engine.finish(model)

    assert "lightning" not in type(model).__module__
    # the callback's names are relative to the LightningModule, which holds the network as "net"
    assert engine.plan.to_dict() == _unprefixed(callback.plan.to_dict())
    assert engine.events == _unprefixed(callback.events) and len(engine.events) == 1
    expected = lit.net.state_dict()
    assert model.state_dict().keys() == expected.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k
    assert result.pruned == callback.result.pruned and result.plan == _unprefixed(callback.result.plan)
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


def _loop(method="ssr_l20", skip=(), epochs=None, accumulate=1):
    """The README's hand-written loop, leaving out the driver calls named in ``skip``; with
    ``accumulate`` > 1, one optimizer step every that many batches."""
    torch.manual_seed(0)
    model = SmallResidualCNN(in_channels=3, num_classes=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    schedule = SCHEDULE if method != "l1" else PruningSchedule(sparsify_epochs=0, finetune_epochs=2)
    engine = PruningEngine(method, target={"macs": 0.5}, schedule=schedule, verbose=False)
    step = 0
    for epoch in range(schedule.total_epochs if epochs is None else epochs):
        for i, (x, y) in enumerate(DataLoader(_data(), batch_size=16)):
            engine.on_batch_start(model, x, epoch=epoch, step=step, optimizers=[optimizer], steps_per_epoch=4)
            F.cross_entropy(model(x), y).backward()
            if (i + 1) % accumulate == 0:
                if "term" not in skip:
                    engine.on_before_optimizer_step()
                optimizer.step()
                optimizer.zero_grad()
                step += 1
            if "batch_end" not in skip:
                engine.on_batch_end(step=step)
        engine.on_epoch_end(model, epoch=epoch, step=step, optimizers=[optimizer], max_epochs=schedule.total_epochs)
    return engine, engine.finish(model)


def test_a_loop_that_leaves_out_a_driver_call_is_told_which_and_where():
    # SSR's term goes into the gradients in on_before_optimizer_step: without it SSR is not SSR
    with pytest.raises(RuntimeError, match=r"optimizer step 5 was taken without engine.on_before_optimizer_step\(\)"):
        _loop(skip=("term",))  # step 5: the first of the sparsify phase, after the warm-up epoch's 4
    # the periodic update comes from on_batch_end
    with pytest.raises(RuntimeError, match="the batch begun at optimizer step 4 ended without engine.on_batch_end"):
        _loop(skip=("batch_end",))
    # a method without a term, and the warm-up and fine-tuning of any, need neither
    engine, result = _loop("l1", skip=("term", "batch_end"))
    assert result is not None and engine.done


def test_a_loop_that_accumulates_gradients_calls_the_term_once_per_optimizer_step():
    engine, result = _loop(accumulate=2)
    assert result is not None and engine.done and engine.last_update_step > 0


def test_finish_warns_of_a_training_that_ended_before_the_prune():
    with pytest.warns(UserWarning, match=r"finish: the training ended before the prune due at the start of epoch 3: "
                                         r"the model keeps its dense shapes \(the result is None\)\. Train for "
                                         r"the schedule's total_epochs \(5\)"):
        engine, result = _loop(epochs=2)
    assert result is None and not engine.done


def test_import_lightning_ssr_loads_neither_hydra_nor_the_app():
    code = ("import sys, lightning_ssr; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('hydra', 'omegaconf') or m.startswith('lightning_ssr.app')); print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_nothing_in_the_library_imports_the_app():
    from pathlib import Path

    import lightning_ssr

    root = Path(lightning_ssr.__file__).parent
    offenders = [str(p.relative_to(root)) for p in root.rglob("*.py") if "app" not in p.relative_to(root).parts
                 and ("from .app" in p.read_text() or "lightning_ssr.app" in p.read_text()
                      or "import hydra" in p.read_text())]
    assert offenders == ["__main__.py"]  # python -m lightning_ssr runs the command, on request


def test_settings_that_equality_cannot_judge_are_compared_by_their_text():
    """A custom method's config may hold a tensor: comparing it on resume must not raise."""
    assert not _differs(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0]))
    assert _differs(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 3.0]))
    assert not _differs({"macs": 0.1}, {"macs": 0.1}) and _differs([8], [1])


def test_settings_that_act_from_the_prune_on_may_change_only_before_it():
    def engine(**schedule):
        return PruningEngine("l1", target={"macs": 0.5}, schedule=PruningSchedule(**schedule))

    saved = engine().settings()
    for change in ({"restart_lr": True}, {"lr_warmup_steps": 200}):
        engine(**change).check_settings(saved, events_done=0)  # before the first prune: what acts later may change
        for events_done in (1, None):  # after it, or when the checkpoint does not say
            with pytest.raises(ValueError, match=f"schedule.{next(iter(change))}"):
                engine(**change).check_settings(saved, events_done=events_done)
    with pytest.raises(ValueError, match="schedule.update_every_n_steps: 25 -> 5"):  # acts before it: never
        engine(update_every_n_steps=5).check_settings(saved, events_done=0)
    state = engine().state_dict()
    engine(lr_warmup_steps=200).load_state_dict(state)  # events_done 0: allowed
    del state["events_done"]  # a state that does not say: refused
    with pytest.raises(ValueError, match="schedule.lr_warmup_steps: 0 -> 200"):
        engine(lr_warmup_steps=200).load_state_dict(state)


def test_a_state_loaded_before_the_model_compares_layers_ignored_as_modules_once_it_is_known():
    """A hand loop's resume: a new engine, the ignored layer given as a module, loads the saved
    state before it sees the model. The modules have no names yet: the layer is compared at the
    first batch, not refused for lacking a name, and a different layer is refused there."""
    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                   torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 4 * 4, 3))

    def engine(ignored):
        return PruningEngine("l1", target={"macs": 0.5}, ignored_layers=[ignored], verbose=False,
                             schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1),
                             example_input=torch.randn(1, 1, 8, 8))

    def first_batch(engine, model, step):
        engine.on_batch_start(model, torch.randn(4, 1, 8, 8), epoch=0, step=step,
                              optimizers=[torch.optim.SGD(model.parameters(), lr=0.01)])

    model = net()
    first = engine(model[2])
    first_batch(first, model, 0)  # prunes (one-shot, at the first batch), conv 2 kept whole
    state = first.state_dict()
    assert state["settings"]["ignored_layers"] == ["2"] and first.events_done == 1
    fresh = net()
    same = engine(fresh[2])
    same.load_state_dict(state)  # was refused: "ignored_layers: ['2'] -> []"
    assert same.settings() == first.settings()
    first_batch(same, fresh, 1)
    other = engine(fresh[0])
    other.load_state_dict(state)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(ValueError, match=re.escape("ignored_layers: ['2'] -> ['0']")):
        first_batch(other, fresh, 1)
    assert all(torch.equal(v, before[k]) for k, v in fresh.state_dict().items())  # refused before touching it


def test_equivalent_settings_are_the_same_settings_and_plain_data():
    """Rates as an expression or as the list it gives, ignored layers in another order, a function
    given as importance (its repr holds an address that differs between processes), NumPy numbers:
    recorded alike, as data a weights-only load reads back."""
    import io

    import numpy as np

    def importance(group, model):
        return group

    def engine(rates, ignored):
        return PruningEngine("oneshot", target={"rates": rates}, ignored_layers=ignored,
                             method_kwargs={"importance": importance})

    a, b = engine("[0.5]*2", ["x", "y"]), engine([0.5, 0.5], ["y", "x"])
    assert a.settings() == b.settings()
    a.check_settings(b.settings())
    assert a.settings()["method_config"]["importance"].endswith("importance") and "0x" not in str(a.settings())
    with pytest.raises(ValueError, match=r"target.rates: \[0.5, 0.25\] -> \[0.5, 0.5\]"):
        a.check_settings(engine([0.5, 0.25], ["x", "y"]).settings())
    odd = {"n": np.float64(0.5), "t": torch.tensor([1, 2]), "s": {3}, "f": importance}
    buffer = io.BytesIO()
    torch.save(plain_data(odd), buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == {"n": 0.5, "t": [1, 2], "s": [3], "f": plain_data(importance)}
