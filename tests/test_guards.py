"""The loss guard: a non-finite loss stops the fit at its step, and the error says how the loss got
there (grew over steps, or jumped in one) and what to change."""

import pytest
import torch

from lightning_ssr import Pruning, PruningSchedule
from lightning_ssr.guards import LossGuard
from tests.lit import TinyClassifier, loader, trainer


def _feed(guard, losses, start=1):
    for step, value in enumerate(losses, start=start):
        guard.check(torch.tensor(value), step, 0)


def test_a_loss_that_grows_after_a_prune_points_at_the_warm_up():
    guard = LossGuard()
    _feed(guard, [2.0, 1.5])
    guard.mark_prune(2, lr_warmup_steps=0)
    with pytest.raises(FloatingPointError) as info:
        _feed(guard, [19.0, 6.0, 480.0, 9e27, float("nan")], start=3)
    text = str(info.value)
    assert "nan at optimizer step 7" in text
    assert "From the prune at step 2 on, the loss grew from 19 (step 3) to 9e+27 (step 6)" in text
    assert "lr_warmup_steps" in text


def test_with_a_warm_up_already_or_without_a_prune_the_advice_is_the_learning_rate():
    for prune in (True, False):
        guard = LossGuard()
        if prune:
            guard.mark_prune(0, lr_warmup_steps=100)
        with pytest.raises(FloatingPointError) as info:
            _feed(guard, [2.3, 40.0, float("inf")])
        text = str(info.value)
        assert "inf at optimizer step 3" in text and "grew from 2.3 (step 1) to 40 (step 2)" in text
        assert "lr_warmup_steps" not in text and "Lower it" in text
        assert ("pruned model" in text) == prune


def test_a_loss_that_jumps_in_one_step_points_at_the_batch():
    guard = LossGuard()
    with pytest.raises(FloatingPointError) as info:
        _feed(guard, [2.3, 1.1, 0.9, float("nan")])
    text = str(info.value)
    assert "was 0.9 at step 3" in text and "in one step" in text and "NaN or infinite inputs" in text
    assert "grew" not in text


def test_a_first_loss_that_is_not_finite_gets_the_general_advice():
    guard = LossGuard()
    guard.check(None, 0, 0)  # a step without a loss (manual optimization) is not checked
    with pytest.raises(FloatingPointError, match=r"nan at optimizer step 1 \(epoch 0\).*Lower the learning rate"):
        _feed(guard, [float("nan")])


class Diverging(TinyClassifier):
    """A loss that grows tenfold a step from the third step on and is NaN at the seventh."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        step = self.global_step
        return loss * float("nan") if step == 6 else loss * 10.0 ** max(step - 2, 0)


@pytest.mark.parametrize("warmup", [0, 3])
def test_the_callback_follows_the_loss_from_its_prune(tmp_path, warmup):
    torch.manual_seed(0)
    model = Diverging(lr=0.0)  # lr 0: the weights stay, only the reported loss grows
    callback = Pruning("l1", target={"macs": 0.5}, verbose=False,
                       schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=3, lr_warmup_steps=warmup))
    fit = trainer(tmp_path, [callback], max_epochs=3)
    with pytest.raises(FloatingPointError) as info:
        fit.fit(model, loader(n=64))
    text = str(info.value)
    assert fit.global_step == 7 and "nan at optimizer step 7" in text
    assert callback.engine.events[0]["step"] == 0
    assert "From the prune at step 0 on, the loss grew" in text and "(step 6)" in text
    assert ("lr_warmup_steps" in text) == (warmup == 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_on_a_gpu_the_history_is_read_only_when_it_raises():
    guard = LossGuard()
    guard.mark_prune(0)
    with pytest.raises(FloatingPointError, match="lr_warmup_steps"):
        for step, value in enumerate([2.0, 30.0, 900.0] + [float("nan")] * 20, start=1):
            guard.check(torch.tensor(value, device="cuda"), step, 0)
            torch.cuda.synchronize()  # the copy of each flag has finished before the next check
