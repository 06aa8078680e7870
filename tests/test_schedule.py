"""The schedule in plain PyTorch: epochs of each phase, and the learning-rate restart after the prune."""

import math

import pytest
import torch
from torch import nn

from lightning_ssr.schedule import PruningSchedule, check_restartable, restart_lr_schedules


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
    with pytest.raises(ValueError, match="no scheduler.*CosineAnnealingLR"):
        check_restartable([])
    with pytest.raises(ValueError, match="not StepLR"):
        check_restartable([sched, torch.optim.lr_scheduler.StepLR(opt, step_size=2)])


def test_restart_lr_must_be_a_bool():
    assert PruningSchedule().restart_lr is False
    with pytest.raises(TypeError, match="restart_lr must be a bool"):
        PruningSchedule(restart_lr="yes")
