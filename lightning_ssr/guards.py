"""Guards a training loop keeps while it prunes: a non-finite loss stops the run at its step, and
the random number generators' states travel with a checkpoint."""

from __future__ import annotations

import random
from collections.abc import Mapping

import torch


class LossGuard:
    """Stop at the step whose loss is NaN or infinite. On the CPU the check is immediate; on a GPU
    the flag is copied asynchronously and read once the copy has finished (a step or two later),
    so that training never waits for the device."""

    def __init__(self):
        self._pending = None  # (pinned flag, event, step, epoch) of a check in flight

    def check(self, loss, step: int, epoch: int) -> None:
        if not torch.is_tensor(loss):
            return
        if loss.device.type == "cpu":
            if not bool(torch.isfinite(loss).all()):
                raise_non_finite(float(loss.detach().float().sum()), step, epoch)
            return
        pending = self._pending
        if pending is not None and pending[1].query():
            flag, _, at_step, at_epoch = pending
            self._pending = None
            if not bool(flag):
                raise_non_finite(float("nan"), at_step, at_epoch)
        if self._pending is None and loss.device.type == "cuda":
            flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            flag.copy_(torch.isfinite(loss.detach()).all(), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (flag, event, step, epoch)


def raise_non_finite(value: float, step: int, epoch: int) -> None:
    raise FloatingPointError(
        f"the training loss is {value} at optimizer step {step} (epoch {epoch}); training stopped there. "
        "Checkpoints saved before this step are intact. Lower the learning rate (or the method's strength, "
        "e.g. rho for SSR), or clip gradients, and resume from the last checkpoint.")


def rng_states() -> dict:
    """The global RNG states (torch CPU and CUDA, Python's ``random``), as checkpoint-safe data."""
    version, internal, gauss = random.getstate()
    states = {"torch": torch.get_rng_state(), "python": [version, list(internal), gauss]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
