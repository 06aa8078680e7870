"""Lightning's weight averaging (EMAWeightAveraging) in the fit that prunes: its averaged copy is
rebuilt with the model at each prune and starts again from the pruned weights, and a resumed fit
goes on exactly like an uninterrupted one."""

import threading

import pytest
import torch
from lightning.pytorch import callbacks as lightning_callbacks
from lightning.pytorch.callbacks import Callback

from lightning_ssr import Pruning, PruningSchedule
from tests.lit import (
    TinyClassifier,
    assert_same_weights,
    epoch_checkpoints,
    loader,
    stopped_fit,
    trainer,
)

EMAWeightAveraging = getattr(lightning_callbacks, "EMAWeightAveraging", None)
pytestmark = pytest.mark.skipif(EMAWeightAveraging is None, reason="needs Lightning's EMAWeightAveraging (2.6+)")

SCHEDULE = PruningSchedule(warmup_epochs=1, sparsify_epochs=1, finetune_epochs=2, update_every_n_steps=2,
                           stop_early=False)
DECAY = 0.9


class PostPruneWeights(Callback):
    """The model's parameters after each optimizer step from the prune on (recorded at the end of
    the batch, which is where the averaging callback takes them)."""

    def __init__(self, pruning):
        self.pruning, self.steps = pruning, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.pruning.events_done:
            self.steps.append({k: v.detach().clone() for k, v in pl_module.named_parameters()})


@pytest.mark.parametrize("method", ["l1", "ssr_l20"])
@pytest.mark.parametrize("ema_first", [True, False], ids=["ema_first", "pruning_first"])
def test_the_average_is_rebuilt_at_the_prune_and_averages_the_pruned_model_from_there(tmp_path, method, ema_first):
    """Without the rebuild the average kept the dense shapes and the fit failed at its first
    update after the prune (it was refused at set-up for that reason)."""
    torch.manual_seed(0)
    model = TinyClassifier()
    pruning = Pruning(method, target={"macs": 0.5}, schedule=SCHEDULE, verbose=False)
    ema, record = EMAWeightAveraging(decay=DECAY), None
    record = PostPruneWeights(pruning)
    callbacks = [ema, pruning, record] if ema_first else [pruning, record, ema]
    fit = trainer(tmp_path, callbacks, SCHEDULE.total_epochs)
    fit.fit(model, loader())
    assert pruning.events_done == 1 and pruning.result.pruned["macs"] <= 0.5 * pruning.result.dense["macs"]
    assert record.steps, "no optimizer step after the prune"
    # the EMA of the pruned model's weights over the steps after the prune, its first step's weights
    # first (the restart); the fit ends with the average in the model (on_train_end)
    expected = dict(record.steps[0])
    for step in record.steps[1:]:
        expected = {k: DECAY * expected[k] + (1 - DECAY) * step[k] for k in expected}
    final = dict(model.named_parameters())
    assert {k: v.shape for k, v in final.items()} == {k: v.shape for k, v in expected.items()}
    # float32, one rounding per update and the same formula up to the order of its two products
    for k, v in expected.items():
        torch.testing.assert_close(final[k].detach(), v, rtol=1e-5, atol=1e-6 * float(v.abs().max()))
    assert any(not torch.equal(final[k], record.steps[-1][k]) for k in final)  # averaged, not the last weights
    assert int(ema._average_model.n_averaged) == len(record.steps)


class HoldsALock(Callback):
    """A callback of the user's that cannot be copied (a lock; a logger's open file is alike)."""

    def __init__(self):
        self.lock = threading.Lock()


def test_the_average_copies_the_module_without_the_callback_or_the_trainer(tmp_path):
    """Pruning first, as the CLI orders them: its weights-load hook was a bound method, so the
    average's copy of the module copied the callback and the Trainer with it, and a callback or a
    DDP launcher that cannot be copied failed the fit at set-up (TypeError: cannot pickle
    '_thread.lock' object)."""
    torch.manual_seed(0)
    model = TinyClassifier()
    pruning = Pruning("l1", target={"macs": 0.5}, schedule=SCHEDULE, verbose=False)
    ema = EMAWeightAveraging(decay=DECAY)
    fit = trainer(tmp_path, [pruning, ema, HoldsALock()], SCHEDULE.total_epochs)
    fit.fit(model, loader())
    assert pruning.events_done == 1
    hooks = list(ema._average_model.module._load_state_dict_pre_hooks.values())
    assert len(hooks) == 1 and hooks[0].hook._callback() is pruning  # the same hook, not a copy of it


@pytest.mark.parametrize("ema_first", [True, False], ids=["ema_first", "pruning_first"])
@pytest.mark.parametrize("stop_after", [2, 3], ids=["before_the_prune", "after_the_prune"])
def test_a_resumed_fit_with_the_average_matches_an_uninterrupted_one(tmp_path, stop_after, ema_first):
    def run(max_epochs, dirpath, ckpt_path=None):
        torch.manual_seed(0)
        model = TinyClassifier()
        pruning = Pruning("ssr_l20", target={"macs": 0.5}, schedule=SCHEDULE, verbose=False)
        ema = EMAWeightAveraging(decay=DECAY)
        both = [ema, pruning] if ema_first else [pruning, ema]
        fit = trainer(tmp_path, [*both, epoch_checkpoints(dirpath, resume_from=ckpt_path)], max_epochs)
        fit.fit(model, loader(shuffle=True), ckpt_path=ckpt_path)
        return model, pruning, ema

    full_model, full_pruning, full_ema = run(SCHEDULE.total_epochs, tmp_path / "full")
    with stopped_fit(SCHEDULE, stop_after):
        run(stop_after, tmp_path / "stopped")
    model, pruning, ema = run(SCHEDULE.total_epochs, tmp_path / "resumed",
                              ckpt_path=tmp_path / "stopped" / f"epoch={stop_after - 1}.ckpt")
    assert pruning.events == full_pruning.events
    assert_same_weights(model, full_model)  # the average, which the fit ends with
    assert int(ema._average_model.n_averaged) == int(full_ema._average_model.n_averaged)


def test_a_fit_resumed_from_its_last_step_ends_with_the_average_too(tmp_path):
    """Resumed from the checkpoint of its last step (the job interrupted in its evaluation, then run
    again with ckpt_path), the fit has no training left to run, so Lightning calls no on_train_end,
    where the average goes into the module: it ended with the weights trained on."""
    def run(dirpath, ckpt_path=None):
        torch.manual_seed(0)
        model = TinyClassifier()
        pruning = Pruning("l1", target={"macs": 0.5}, schedule=SCHEDULE, verbose=False)
        fit = trainer(tmp_path, [pruning, EMAWeightAveraging(decay=DECAY),
                                 epoch_checkpoints(dirpath, resume_from=ckpt_path)], SCHEDULE.total_epochs)
        fit.fit(model, loader(shuffle=True), ckpt_path=ckpt_path)
        return model, fit

    full, _ = run(tmp_path / "full")
    last = tmp_path / "full" / f"epoch={SCHEDULE.total_epochs - 1}.ckpt"
    trained_on = torch.load(last, weights_only=True)["current_model_state"]
    resumed, fit = run(tmp_path / "full", ckpt_path=last)
    assert fit.global_step == torch.load(last, weights_only=True)["global_step"]  # nothing left to train
    assert_same_weights(resumed, full)
    assert any(not torch.equal(v, trained_on[k]) for k, v in resumed.state_dict().items())

