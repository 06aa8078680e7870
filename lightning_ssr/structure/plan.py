"""Pruning plans: plain data that says which channels of each group survive.

A :class:`PruningPlan` says, for each group of coupled channels, which channels of the
*unpruned* model survive. It holds only strings, ints and lists, so it can sit in a
checkpoint that loads with ``torch.load(weights_only=True)``, and a freshly built model
plus the plan reproduces the pruned shapes (:func:`lightning_ssr.structure.apply_plan`).
"""

from __future__ import annotations

import json
import numbers
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_write_text
from .groups import ChannelGroup

PLAN_FORMAT_VERSION = 1
PLAN_CHECKPOINT_KEY = "pruning_plan"


class PlanMismatchError(ValueError):
    """The plan does not fit the model it is applied to."""


#: what to do with a model that has no layers yet (the plan's refusal, wherever a plan is applied)
NOT_BUILT_YET = ("if it builds its network in configure_model(), call model.configure_model() before loading "
                 "(Lightning calls it only inside fit, validate, test and predict)")


def _is_int(value) -> bool:
    """An integer as a plan holds it (``True`` and ``1.0`` are not one: a plan edited by hand)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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
        def integers(value, what: str) -> list[int]:
            if not isinstance(value, (list, tuple)) or not all(_is_int(i) for i in value):
                raise PlanMismatchError(f"the pruning plan's {what} must be a list of integers; got {value!r:.80}")
            return [int(i) for i in value]

        if "input_shape" not in data or not isinstance(data.get("groups"), (list, tuple)):
            has = (f"its 'groups' is a {type(data['groups']).__name__}" if "groups" in data and "input_shape" in data
                   else f"this one has keys {sorted(map(str, data))}")
            raise PlanMismatchError(f"a pruning plan has 'input_shape' and a list of 'groups' (PruningPlan.to_dict()); "
                                    f"{has}")
        plan = cls(input_shape=integers(data["input_shape"], "input_shape"))
        for entry in data["groups"]:
            if not isinstance(entry, Mapping) or {"root", "size", "kept"} - set(entry):
                raise PlanMismatchError(f"each group of a pruning plan is a mapping with 'root', 'size' and 'kept'; "
                                        f"got {entry!r:.80}")
            root = str(entry["root"])
            if root in plan.kept:
                raise PlanMismatchError(f"the pruning plan names layer '{root}' twice: one entry per group")
            if not _is_int(entry["size"]):
                raise PlanMismatchError(f"the pruning plan's size of '{root}' must be an integer; got {entry['size']!r}")
            plan.kept[root] = integers(entry["kept"], f"kept channels of '{root}'")
            plan.sizes[root] = int(entry["size"])
        return plan

    def save(self, path) -> None:
        """Write the plan as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path) -> PruningPlan:
        """Read a plan written by :meth:`save` (or the ``plan`` of a ``result.json``); an error that
        names the file if it is missing, truncated or not a plan."""
        try:
            with open(path, "rb") as f:
                head = f.read(2)
            if head in (b"PK", b"\x80\x02"):  # a torch.save file (zip, or the legacy pickle)
                raise PlanMismatchError("it is a checkpoint written by torch.save, not a plan: load_pruned(model, path) "
                                        "rebuilds a model from it, and PruningPlan.from_dict(torch.load(path, "
                                        "weights_only=True)['pruning_plan']) reads the plan it holds")
            data = json.loads(Path(path).read_text())
            if isinstance(data, Mapping) and "groups" not in data and ("plan" in data or "status" in data):
                if not data.get("plan"):  # (a result.json of a run that pruned nothing)
                    raise PlanMismatchError(f"it is a run's result.json that holds no plan (the run's status: "
                                            f"{data.get('status', 'ok')!r}): the run pruned nothing to replay")
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
                if later.sizes[name] != len(self.kept[name]) or any(not 0 <= i < len(self.kept[name]) for i in kept):
                    raise PlanMismatchError(
                        f"the later plan counts {later.sizes[name]} channels in '{name}', where this one kept "
                        f"{len(self.kept[name])}: it is not counted from the widths this plan leaves. A plan counted "
                        "from the constructed shapes (prune_oneshot's, the callback's, the engine's) holds the earlier "
                        "prunes already: use it as it is")
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
            if earlier.sizes[name] != self.sizes[name] or removed:  # (other counts first: the likelier cause)
                raise PlanMismatchError(
                    f"the pruning plan does not continue the one this model was rebuilt with: in '{name}' it "
                    + (f"counts {self.sizes[name]} channels where that one counted {earlier.sizes[name]}"
                       if earlier.sizes[name] != self.sizes[name] else f"keeps channels {removed[:5]} that one removed")
                    + "; construct a fresh model to load it")
            step.kept[name], step.sizes[name] = [position[c] for c in kept], len(earlier.kept[name])
        return step



#: on each layer a pruning plan cut (a group's root): its channels before any prune, those kept,
#: and its place in the plan (the mark it came from, then its position). Kept on the layers, not
#: on the model, so that a module that holds them (a network pruned bare, then wrapped; one pruned
#: again inside a module pruned before) reads the plan of its layers, from its own name down.
PRUNED_LAYER_ATTR = "_pruning_kept"
#: on the module a plan was recorded for: the input shape that plan was traced on
PLAN_INPUT_ATTR = "_pruning_input_shape"
_last_mark = 0


def _next_mark() -> int:
    """A later record of a layer sorts after the earlier ones of others, also when they were made in
    another process (a model pickled to a worker, pruned there in part): the wall clock in
    nanoseconds, made strictly increasing within this process."""
    global _last_mark
    _last_mark = max(time.time_ns(), _last_mark + 1)
    return _last_mark


def applied_plan(model: nn.Module) -> PruningPlan | None:
    """The plan ``model`` was already rebuilt with (by an earlier pruning fit, ``prune_oneshot``,
    or loaded with :func:`load_pruned`), from its constructed shapes, with layer names relative to
    ``model``; ``None`` for a model at its constructed shapes. Its input shape is that of the
    outermost module under ``model`` (``model`` itself, where it was) that a plan was recorded
    for. A submodule's plan holds the layers under it that were cut as roots: a cut made from a
    root outside it (its first layer's input channels, cut with the layer before it) is not in it."""
    found = sorted(((vars(module)[PRUNED_LAYER_ATTR], name) for name, module in model.named_modules()
                    if name and PRUNED_LAYER_ATTR in vars(module)), key=lambda item: tuple(item[0]["order"]))
    if not found:
        return None
    shapes = [(name.count(".") if name else -1, vars(module)[PLAN_INPUT_ATTR]) for name, module in
              model.named_modules() if PLAN_INPUT_ATTR in vars(module)]
    shape = min(shapes, key=lambda item: item[0])[1] if shapes else found[0][0]["input_shape"]
    plan = PruningPlan(input_shape=list(shape))
    for record, name in found:
        plan.kept[name] = list(record["kept"])
        plan.sizes[name] = int(record["size"])
    return plan


def mark_applied_plan(model: nn.Module, plan: PruningPlan) -> None:
    """Record that ``model`` is rebuilt with ``plan`` (names relative to ``model``, from its
    constructed shapes: an earlier plan of it composed in, traced on ``model``'s input), on the
    layers it cuts, where :func:`applied_plan` and a checkpoint find it; a record of a layer
    under ``model`` that the plan does not name is dropped."""
    for name, module in model.named_modules():
        if PRUNED_LAYER_ATTR in vars(module) and name not in plan.kept:
            delattr(module, PRUNED_LAYER_ATTR)
    shape = [int(s) for s in plan.input_shape]
    setattr(model, PLAN_INPUT_ATTR, shape)
    mark = _next_mark()
    for order, (root, kept) in enumerate(plan.kept.items()):
        setattr(model.get_submodule(root), PRUNED_LAYER_ATTR,
                {"input_shape": shape, "size": int(plan.sizes[root]), "kept": [int(i) for i in kept],
                 "order": [mark, order]})


def plan_from_support(input_shape: Sequence[int], support: Mapping[str, torch.Tensor],
                      groups: Iterable[ChannelGroup]) -> PruningPlan:
    """The plan that keeps, in each group, the channels where ``support`` is True."""
    plan = PruningPlan(input_shape=[1, *[int(s) for s in input_shape[1:]]])
    for g in groups:
        plan.kept[g.name] = [int(i) for i in torch.nonzero(support[g.name]).flatten().tolist()]
        plan.sizes[g.name] = g.size
    return plan
