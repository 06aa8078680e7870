"""Guards a training loop keeps while it prunes: a non-finite loss stops the run at its step, and
the random number generators' states travel with a checkpoint."""

from __future__ import annotations

import random
from collections.abc import Mapping

import torch


class LossGuard:
    """Stop at the step whose loss is NaN or infinite. On the CPU the check is immediate; on a GPU
    the flag is copied asynchronously and read once the copy has finished (a step or two later),
    so that training never waits for the device.

    The error says how the loss got there, from the losses it checked (kept as tensors, read only
    when it raises): whether it grew over many steps (a learning rate too high for the model, often
    right after a prune) or jumped in one (often a batch with NaN or infinite values)."""

    def __init__(self):
        self._pending = None  # (pinned flag, event, step, epoch, loss) of a check in flight
        self._first = None  # (step, loss) of the first finite loss since the start or the last prune
        self._last = None  # (step, loss) of the latest finite loss
        self._prune = None  # (step, lr_warmup_steps) of the last prune
        self._term = None  # the method working on the gradients at the step checked (named in the error)

    def mark_prune(self, step: int, lr_warmup_steps: int = 0) -> None:
        """A prune happened before optimizer step ``step``: the losses are followed from there."""
        self._prune = (int(step), int(lr_warmup_steps))
        self._first = self._last = None

    def check(self, loss, step: int, epoch: int, term: str | None = None) -> None:
        """``term``: the pruning method whose ``before_optimizer_step()`` works on the gradients at
        this step (named in the error), or None."""
        if not torch.is_tensor(loss):
            return
        loss = loss.detach()
        if loss.device.type == "cpu":
            self._term = term
            if not bool(torch.isfinite(loss).all()):
                self._raise(float(loss.float().sum()), step, epoch)
            self._remember(step, loss)
            return
        pending = self._pending
        if pending is not None and pending[1].query():
            flag, _, at_step, at_epoch, at_loss, at_term = pending
            self._pending = None
            if not bool(flag):
                self._term = at_term  # (the method of the step it was read for, not of this one)
                self._raise(float("nan"), at_step, at_epoch)
            self._remember(at_step, at_loss)
        if self._pending is None and loss.device.type == "cuda":
            flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            flag.copy_(torch.isfinite(loss).all(), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending = (flag, event, step, epoch, loss, term)

    def _remember(self, step: int, loss: torch.Tensor) -> None:
        if self._first is None:
            self._first = (step, loss)
        self._last = (step, loss)

    def _raise(self, value: float, step: int, epoch: int) -> None:
        history = self._history()
        if self._term is not None:
            history += (f" Pruning method {self._term!r} works on the gradients before each step of this phase "
                        "(before_optimizer_step()): a value it puts there that is not finite ends the same way.")
        raise_non_finite(value, step, epoch, history)

    def _history(self) -> str:
        """How the loss got to the failing step, and what to change."""
        if self._last is None:
            return ""
        (first_step, first), (last_step, last) = self._first, self._last
        first, last = float(first.float().sum()), float(last.float().sum())
        if last_step > first_step and abs(last) > 10 * max(abs(first), 1e-12):
            pruned = self._prune is not None
            text = (f" {f'From the prune at step {self._prune[0]} on, the' if pruned else 'The'} loss grew from "
                    f"{first:.4g} (step {first_step}) to {last:.4g} (step {last_step}): the learning rate is too high "
                    f"for the {'pruned ' if pruned else ''}model.")
            if pruned and self._prune[1] == 0:
                return text + (" Give the schedule a warm-up after the prune (lr_warmup_steps, e.g. 200), and run "
                               "again or resume from a checkpoint saved before the prune; or lower the learning "
                               "rate, or clip gradients.")
            return text + " Lower it (or the method's strength, e.g. rho for SSR), or clip gradients."
        return (f" The loss was {last:.4g} at step {last_step}: a loss that turns non-finite in one step comes from "
                "the batch (NaN or infinite inputs or targets), the loss itself, or one step too large. Check the "
                "data, lower the learning rate (or the method's strength, e.g. rho for SSR), or clip gradients.")


def raise_non_finite(value: float, step: int, epoch: int, history: str = "") -> None:
    advice = history or (" Lower the learning rate (or the method's strength, e.g. rho for SSR), or clip "
                         "gradients.")
    raise FloatingPointError(
        f"the training loss is {value} at optimizer step {step} (epoch {epoch}); training stopped there.{advice} "
        "Checkpoints saved before this step are intact.")


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
