"""Continuation: how a method that learns the structure reaches a target gradually during the
sparsify phase, without the user tuning its strength (``lam``, ``penalty``).

- :meth:`Continuation.budget_fraction` (SSR-L2,1; SSR-L2,0 with a ``ramp``): the budget of
  each update falls from the dense model's cost to the target along a geometric path over the
  first ``ramp_updates`` updates, then stays at the target. The method allocates every update anew from the weights
  it has then, so a channel that the loss keeps large comes back, and the support can neither
  creep back above the target (as a fixed ``lam`` let it on LeNet-5) nor fall below it.
- :meth:`Continuation.feedback` (SSL, network slimming: subgradient methods, whose groups never
  reach exact zeros): one global multiplier on the method's strength grows by a constant step at
  each update while what the method keeps costs more than the target allows, ``growth_total`` in
  all over ``ramp_updates``, and holds once it fits.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..validation import check_number

#: updates to reach the needed strength when the length of the sparsify phase is not known
DEFAULT_RAMP_UPDATES = 20


class Continuation:
    """A ramp over the sparsify phase's updates, and a strength multiplier (plain numbers:
    checkpointed by the method)."""

    def __init__(self, ramp_updates: int | None = None, growth_total: float = 100.0):
        self.ramp_updates = max(1, int(ramp_updates or DEFAULT_RAMP_UPDATES))
        self.growth_total = check_number("Continuation", "growth_total", growth_total, low=1.0)
        self.strength = 1.0
        self.updates = 0

    @classmethod
    def learning(cls, context, ramp: float, growth_total: float = 100.0) -> Continuation | None:
        """The continuation of a method set up with ``context`` (a :class:`MethodContext`) when it
        learns a target's structure (``allocation="method"``), its ramp the fraction ``ramp`` of the
        sparsify phase's updates; ``None`` otherwise."""
        if context.allocation != "method" or context.budget is None:
            return None
        return cls(cls.ramp_for(context.sparsify_updates, ramp), growth_total=growth_total)

    @staticmethod
    def ramp_for(sparsify_updates: int | None, ramp: float) -> int | None:
        """The updates of the ramp: the fraction ``ramp`` of the sparsify phase's updates."""
        if sparsify_updates is None:
            return None
        return max(1, round(ramp * sparsify_updates))

    def budget_fraction(self, final: float) -> float:
        """The fraction of the dense model's cost this update's budget allows: from 1 down to
        ``final`` along a geometric path over the ramp, then ``final``."""
        self.updates += 1
        return final ** min(1.0, self.updates / self.ramp_updates)

    def feedback(self, over_target: bool) -> float:
        """The strength for this update, raised by one step while the support is over the target."""
        self.updates += 1
        if over_target:
            self.strength *= self.growth_total ** (1.0 / self.ramp_updates)
        return self.strength

    def state_dict(self) -> dict:
        return {"strength": self.strength, "updates": self.updates, "ramp_updates": self.ramp_updates}

    def load_state_dict(self, state: Mapping) -> None:
        self.strength = float(state["strength"])
        self.updates = int(state["updates"])
        self.ramp_updates = int(state["ramp_updates"])
