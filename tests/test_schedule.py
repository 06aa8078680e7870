"""The schedule in plain PyTorch: epochs of each phase, and the learning-rate restart and warm-up after the prune."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lightning_ssr.schedule import (
    PruningSchedule,
    ScaledSteps,
    check_restartable,
    end_cosine_at,
    fit_cosines,
    restart_lr_schedules,
)
from tests.lit import RecordingSGD


def cosine(lrs=(0.1,), t_max=10):
    params = [nn.Parameter(torch.zeros(1)) for _ in lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=lrs[0])
    return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)


def test_a_restarted_cosine_schedule_anneals_again_from_its_initial_rates_over_what_it_had_left():
    opt, sched = cosine(lrs=(0.1, 0.02), t_max=10)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] < 0.1
    assert restart_lr_schedules([sched]) == 6
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.02] and sched.get_last_lr() == [0.1, 0.02]
    for k in range(1, 7):
        opt.step()
        sched.step()
        # the recursive form torch steps with against the closed form: a few float64 roundings
        for group, base in zip(opt.param_groups, (0.1, 0.02)):
            assert group["lr"] == pytest.approx(base * (1 + math.cos(math.pi * k / 6)) / 2, rel=1e-12, abs=1e-15)
    state = sched.state_dict()  # what a checkpoint keeps: the restarted horizon, not the original
    assert state["T_max"] == 6 and state["last_epoch"] == 6


def test_a_schedule_at_its_start_or_at_its_end_is_left_as_it_is():
    opt, sched = cosine()
    assert restart_lr_schedules([sched]) is None and sched.T_max == 10  # a prune at the first step
    for _ in range(10):
        opt.step()
        sched.step()
    lr = opt.param_groups[0]["lr"]
    assert restart_lr_schedules([sched]) is None and opt.param_groups[0]["lr"] == lr  # no step left


def test_only_cosine_schedules_can_be_restarted():
    opt, sched = cosine()
    check_restartable([sched])
    # (a hand-written loop is told where its scheduler goes, not only Lightning's configure_optimizers: probe)
    with pytest.raises(ValueError, match=r"no scheduler.*CosineAnnealingLR.*engine\.on_batch_start\(\.\.\., "
                                         r"schedulers=\[scheduler\]\)"):
        check_restartable([])
    with pytest.raises(ValueError, match="not StepLR"):
        check_restartable([sched, torch.optim.lr_scheduler.StepLR(opt, step_size=2)])


def test_restart_lr_must_be_a_bool():
    assert PruningSchedule().restart_lr is False
    with pytest.raises(TypeError, match="restart_lr must be true or false"):
        PruningSchedule(restart_lr="yes")


def test_lr_warmup_raises_the_rate_linearly_over_the_steps_after_a_prune():
    warm = PruningSchedule(lr_warmup_steps=3)
    # None: no prune yet; a negative count: a step before the last prune
    assert [warm.lr_scale(k) for k in (None, -1, 0, 1, 2, 3, 50)] == [1.0, 1.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert PruningSchedule().lr_scale(0) == 1.0  # the default steps at the scheduled rate at once


@pytest.mark.parametrize("bad,error", [(-1, ValueError), (2.5, TypeError), ("10", TypeError), (True, TypeError)])
def test_lr_warmup_steps_must_be_a_count(bad, error):
    with pytest.raises(error, match="lr_warmup_steps"):
        PruningSchedule(lr_warmup_steps=bad)


def test_scaled_steps_scale_the_rate_inside_the_step_only_and_restore_it_exactly():
    torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)  # wraps SGD.step with the hooks too
    params = [nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))]
    opt = RecordingSGD([{"params": [params[0]], "lr": 0.1}, {"params": [params[1]], "lr": 0.03}], lr=0.1)
    scaled = ScaledSteps()
    scaled.set([opt], 0.25)
    scaled.set([opt], 0.25)  # set again at the next batch: still one pair of hooks
    params[0].grad, params[1].grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert opt.seen == [0.025]
    assert torch.equal(params[0].detach(), torch.full((2,), 1 - 0.025))  # the update took the scaled rate
    assert torch.equal(params[1].detach(), torch.full((2,), 1 - 0.03 * 0.25))
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.03]  # outside the step: the rates as they were
    scaled.set([opt], 1.0)  # the warm-up is over: the hooks are gone
    opt.step()
    assert opt.seen == [0.025, 0.1]


@pytest.mark.parametrize(("schedule", "max_epochs", "max_steps", "reaches"), [
    # prune at the start of epoch 2 (step 8 at 4 steps per epoch), one fine-tune epoch after it
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=1), 3, -1, True),
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=1), 2, -1, False),  # ends with the epoch before the prune
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=1), 1, -1, False),
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=1), -1, -1, True),  # no bound
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=1), None, 9, True),  # the prune's step is taken
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=1), -1, 8, False),  # stops right before it
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=1), 5, 3, False),
    # a schedule that ends with the prune: the engine prunes at the end of the fit's last epoch
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=0), 2, -1, True),
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=0), 2, 8, True),
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=0), 2, 7, False),
    (PruningSchedule(sparsify_epochs=2, finetune_epochs=0), -1, 8, False),  # no epoch end to prune at
    # iterative: the last of 3 events is at the start of epoch 4
    (PruningSchedule(sparsify_epochs=2, prune_events=3, finetune_epochs=1), 4, -1, False),
    (PruningSchedule(sparsify_epochs=2, prune_events=3, finetune_epochs=1), 5, 17, True),
])
def test_reaches_last_prune_judges_the_trainers_bounds_against_the_step_of_the_last_event(
        schedule, max_epochs, max_steps, reaches):
    assert schedule.reaches_last_prune(max_epochs, max_steps, steps_per_epoch=4) is reaches


def test_reaches_last_prune_does_not_judge_max_steps_without_the_epoch_length():
    schedule = PruningSchedule(sparsify_epochs=2, finetune_epochs=1)
    assert schedule.reaches_last_prune(None, 3, steps_per_epoch=None)
    assert not schedule.reaches_last_prune(2, 3, steps_per_epoch=None)  # max_epochs alone already falls short


def _cosine(T_max, steps):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T_max)
    for _ in range(steps):
        opt.step()
        sched.step()
    return sched


def _on_curve(base, position, length):
    return base * (1 + math.cos(math.pi * position / length)) / 2


@pytest.mark.parametrize("start", [0, 2], ids=["from_the_first_epoch", "restarted_at_a_prune_in_epoch_2"])
def test_a_cosine_is_made_to_end_at_the_new_max_epochs_and_goes_on_along_it(start):
    # a cosine of 3 epochs begun at `start`, at its end (rate 0), in a fit now asked to run 3 epochs more
    # tolerances: float64 rates from a handful of operations (relative rounding ~1e-15); torch's
    # recursive step and the closed form differ by that, far inside 1e-12 (1e-9 after a step);
    # at the cosine's end the factor 1 + cos(pi) is 0 in IEEE arithmetic
    sched = _cosine(3, 3)
    assert sched.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)
    assert not end_cosine_at(sched, start + 3, start + 3)  # the same end: untouched
    assert end_cosine_at(sched, start + 3, start + 6)
    assert sched.T_max == 6 and sched.get_last_lr()[0] == pytest.approx(_on_curve(0.1, 3, 6), rel=1e-12)
    sched.optimizer.step()
    sched.step()  # torch's own recursive step goes on along the new cosine
    assert sched.get_last_lr()[0] == pytest.approx(_on_curve(0.1, 4, 6), rel=1e-9)
    assert not end_cosine_at(_cosine(3, 3), 3, 3 - 1)  # a new end before its position: nothing to do


def _config(scheduler, interval="epoch", frequency=1):
    return SimpleNamespace(scheduler=scheduler, interval=interval, frequency=frequency)


@pytest.mark.parametrize("max_epochs, max_steps, batches, accumulate, expected", [
    (6, -1, 4, 1, [("epoch", 2, 6), ("step", 8, 24)]),  # 8 steps taken, 4 epochs of 4 left
    (6, -1, 4, 3, [("epoch", 2, 6), ("step", 8, 16)]),  # a resume that accumulates: 2 steps an epoch now
    (6, 20, 4, 1, [("epoch", 2, 6), ("step", 8, 20)]),  # max_steps comes first
    (6, -1, float("inf"), 1, [("epoch", 2, 6)]),  # an iterable dataset without max_steps: no last step
    (-1, -1, 4, 1, []),  # a fit without an end: nothing to end at
    (-1, 10, 4, 1, [("step", 8, 10)]),  # max_steps alone
])
def test_fit_cosines_names_each_cosines_unit_position_and_the_fits_end_in_it(max_epochs, max_steps, batches,
                                                                             accumulate, expected):
    epoch_wise, step_wise, every_other, other = _cosine(6, 2), _cosine(24, 8), _cosine(6, 2), _cosine(6, 2)
    trainer = SimpleNamespace(current_epoch=2, global_step=8, max_epochs=max_epochs, max_steps=max_steps,
                              num_training_batches=batches, accumulate_grad_batches=accumulate,
                              lr_scheduler_configs=[
                                  _config(epoch_wise), _config(step_wise, "step"),
                                  _config(every_other, "step", frequency=2),  # its steps are not the fit's
                                  _config(torch.optim.lr_scheduler.StepLR(other.optimizer, 2))])
    found = [(unit, position, end) for sched, unit, position, end in fit_cosines(trainer)]
    assert found == expected
    assert all(sched is {"epoch": epoch_wise, "step": step_wise}[unit] for sched, unit, _, _ in fit_cosines(trainer))
