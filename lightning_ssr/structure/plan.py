"""Pruning plans: plain data that says which channels of each group survive.

A :class:`PruningPlan` says, for each group of coupled channels, which channels of the
*unpruned* model survive. It holds only strings, ints and lists, so it can sit in a
checkpoint that loads with ``torch.load(weights_only=True)``, and a freshly built model
plus the plan reproduces the pruned shapes (:func:`lightning_ssr.structure.apply_plan`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..files import atomic_write_text
from .groups import ChannelGroup

PLAN_FORMAT_VERSION = 1
PLAN_CHECKPOINT_KEY = "pruning_plan"


class PlanMismatchError(ValueError):
    """The plan does not fit the model it is applied to."""


#: what to do with a model that has no layers yet (the plan's refusal, wherever a plan is applied)
NOT_BUILT_YET = ("if it builds its network in configure_model(), call model.configure_model() before loading "
                 "(Lightning calls it only inside fit, validate, test and predict)")


@dataclass
class PruningPlan:
    input_shape: list[int]
    kept: dict[str, list[int]] = field(default_factory=dict)  # group root -> kept channels
    sizes: dict[str, int] = field(default_factory=dict)  # group root -> channels before pruning

    def to_dict(self) -> dict:
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "input_shape": [int(s) for s in self.input_shape],
            "groups": [{"root": name, "size": int(self.sizes[name]), "kept": [int(i) for i in kept]}
                       for name, kept in self.kept.items()],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningPlan:
        if not isinstance(data, Mapping):
            raise PlanMismatchError(f"a pruning plan is a mapping with 'format_version', 'input_shape' and 'groups' "
                                    f"(PruningPlan.to_dict()); got a {type(data).__name__}")
        version = data.get("format_version")
        if version != PLAN_FORMAT_VERSION:
            newer = (isinstance(version, int) and not isinstance(version, bool) and version > PLAN_FORMAT_VERSION)
            raise PlanMismatchError(
                f"pruning plan format_version {version!r} is not supported (this version of lightning_ssr reads "
                f"{PLAN_FORMAT_VERSION}): " + ("it was written by a newer version of lightning_ssr; upgrade the "
                                               "package to read it" if newer else
                                               "it was not written by PruningPlan.to_dict() or save()"))
        plan = cls(input_shape=[int(s) for s in data["input_shape"]])
        for entry in data["groups"]:
            plan.kept[str(entry["root"])] = [int(i) for i in entry["kept"]]
            plan.sizes[str(entry["root"])] = int(entry["size"])
        return plan

    def save(self, path) -> None:
        """Write the plan as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> PruningPlan:
        """Read a plan written by :meth:`save` (or the ``plan`` of a ``result.json``); an error that
        names the file if it is missing, truncated or not a plan."""
        try:
            data = json.loads(Path(path).read_text())
            if isinstance(data, Mapping) and "plan" in data and "groups" not in data:
                data = data["plan"]
            return cls.from_dict(data)
        except PlanMismatchError as err:  # (a plan this version cannot read: said as such, not "truncated")
            raise PlanMismatchError(f"pruning plan file {str(path)!r}: {err}") from err
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise PlanMismatchError(f"pruning plan file {str(path)!r} is unreadable ({type(err).__name__}: {err}); "
                                    "it is missing, truncated or not a plan written by PruningPlan.save") from err

    def then(self, later: PruningPlan, input_shape: Sequence[int] | None = None) -> PruningPlan:
        """The plan equal to applying ``self`` and then ``later`` (whose indices count the
        channels ``self`` kept), traced on ``input_shape`` (by default ``self``'s; a model pruned
        now gives the shape it was traced on, where ``self`` may have come from a network inside it)."""
        out = PruningPlan(list(self.input_shape if input_shape is None else input_shape), dict(self.kept),
                          dict(self.sizes))
        for name, kept in later.kept.items():
            if name in self.kept:
                out.kept[name] = [self.kept[name][i] for i in kept]
            else:
                out.kept[name] = list(kept)
                out.sizes[name] = later.sizes[name]
        return out

    def renamed(self, rename: Callable[[str], str]) -> PruningPlan:
        """The same plan with each layer name ``rename(name)`` (a prefix added or stripped)."""
        return PruningPlan(list(self.input_shape), {rename(k): list(v) for k, v in self.kept.items()},
                           {rename(k): v for k, v in self.sizes.items()})

    def after(self, earlier: PruningPlan) -> PruningPlan:
        """The inverse of :meth:`then`: the plan that, applied after ``earlier``, gives this one (per
        layer, the positions among the channels ``earlier`` kept of those this plan keeps). Raises
        :class:`PlanMismatchError` when this plan does not continue ``earlier``: it keeps a channel
        ``earlier`` removed, counts from other widths, or leaves out a layer ``earlier`` cut."""
        step = PruningPlan(list(self.input_shape))
        for name in earlier.kept:
            if name not in self.kept:
                raise PlanMismatchError(f"the pruning plan does not continue the one this model was rebuilt with: it "
                                        f"leaves out '{name}', which that plan cut; construct a fresh model to load it")
        for name, kept in self.kept.items():
            if name not in earlier.kept:
                step.kept[name], step.sizes[name] = list(kept), self.sizes[name]
                continue
            position = {c: i for i, c in enumerate(earlier.kept[name])}
            removed = [c for c in kept if c not in position]
            if earlier.sizes[name] != self.sizes[name] or removed:
                raise PlanMismatchError(
                    f"the pruning plan does not continue the one this model was rebuilt with: in '{name}' it "
                    + (f"keeps channels {removed[:5]} that one removed" if removed else
                       f"counts {self.sizes[name]} channels where that one counted {earlier.sizes[name]}")
                    + "; construct a fresh model to load it")
            step.kept[name], step.sizes[name] = [position[c] for c in kept], len(earlier.kept[name])
        return step



def plan_from_support(input_shape: Sequence[int], support: Mapping[str, torch.Tensor],
                      groups: Iterable[ChannelGroup]) -> PruningPlan:
    """The plan that keeps, in each group, the channels where ``support`` is True."""
    plan = PruningPlan(input_shape=[1, *[int(s) for s in input_shape[1:]]])
    for g in groups:
        plan.kept[g.name] = [int(i) for i in torch.nonzero(support[g.name]).flatten().tolist()]
        plan.sizes[g.name] = g.size
    return plan
