"""When the callback regularizes, prunes and fine-tunes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PruningSchedule:
    """Dense warm-up -> ADMM -> prune-and-rebuild -> fine-tune, counted in epochs.

    - ``warmup_epochs``: plain training before the regularizer starts.
    - ``admm_epochs``: epochs of AULM; the rebuild happens at the end of the last one, or
      earlier once AULM has converged if ``stop_early``.
    - ``finetune_epochs``: training of the rebuilt model (the Trainer's ``max_epochs``
      should be at least :attr:`total_epochs`).
    - ``update_every_n_steps``: the V/U update interval in optimizer steps; ``None`` means
      once per epoch, at its end. ``benchmarks/update_interval.py`` compares them on
      LeNet-5/MNIST (2 seeds, 10 ADMM + 3 fine-tune epochs): with the L2,0 budget (22.6x
      fewer FLOPs) every 25 steps lost the least accuracy (0.28 points, against 0.48-1.10
      for every 10 or 100 steps or once per epoch); with L2,1 at lam 0.002 every 25 steps
      pruned the most (3.3x fewer FLOPs, against 2.4-2.5x) at the same accuracy. Hence the
      default of 25. Between updates U accumulates W - V, so the interval also changes how
      hard a given lam prunes: retune lam when you change it.
    """

    warmup_epochs: int = 0
    admm_epochs: int = 10
    finetune_epochs: int = 10
    update_every_n_steps: int | None = 25
    stop_early: bool = True

    def __post_init__(self):
        for name in ("warmup_epochs", "finetune_epochs"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"PruningSchedule.{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.admm_epochs, int) or self.admm_epochs < 1:
            raise ValueError(f"PruningSchedule.admm_epochs must be an int >= 1, got {self.admm_epochs!r}")
        n = self.update_every_n_steps
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ValueError(f"PruningSchedule.update_every_n_steps must be a positive int or None "
                             f"(once per epoch), got {n!r}")

    @property
    def prune_epoch(self) -> int:
        """The (0-based) epoch at whose end the rebuild happens at the latest."""
        return self.warmup_epochs + self.admm_epochs - 1

    @property
    def total_epochs(self) -> int:
        return self.warmup_epochs + self.admm_epochs + self.finetune_epochs
