"""Pruning plans (plain data) and the physical rebuild.

A :class:`PruningPlan` says, for each group of coupled channels, which channels of the
*unpruned* model survive. It holds only strings, ints and lists, so it can sit in a
checkpoint that loads with ``torch.load(weights_only=True)``, and a freshly built model
plus the plan reproduces the pruned shapes (:func:`apply_plan`).

The rebuild itself is torch-pruning's. :func:`prune_channels` wraps it so that every
parameter's surviving elements are known exactly (as flat indices into the old tensor),
which is what carries optimizer state, and any other parameter-shaped state, across.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .groups import ChannelGroup, UnsupportedLayerError, build_dependency_graph, find_channel_groups

PLAN_FORMAT_VERSION = 1
PLAN_CHECKPOINT_KEY = "pruning_plan"


class PlanMismatchError(ValueError):
    """The plan does not fit the model it is applied to."""


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
        version = data.get("format_version")
        if version != PLAN_FORMAT_VERSION:
            raise PlanMismatchError(f"pruning plan format_version {version!r} is not supported "
                                    f"(this version of lightning_ssr reads {PLAN_FORMAT_VERSION})")
        plan = cls(input_shape=[int(s) for s in data["input_shape"]])
        for entry in data["groups"]:
            plan.kept[str(entry["root"])] = [int(i) for i in entry["kept"]]
            plan.sizes[str(entry["root"])] = int(entry["size"])
        return plan

    def then(self, later: PruningPlan) -> PruningPlan:
        """The plan equal to applying ``self`` and then ``later`` (whose indices count the
        channels ``self`` kept)."""
        out = PruningPlan(list(self.input_shape), dict(self.kept), dict(self.sizes))
        for name, kept in later.kept.items():
            if name in self.kept:
                out.kept[name] = [self.kept[name][i] for i in kept]
            else:
                out.kept[name] = list(kept)
                out.sizes[name] = later.sizes[name]
        return out


def _match_groups(groups: Sequence[ChannelGroup], kept: Mapping[str, Sequence[int]],
                  sizes: Mapping[str, int] | None) -> dict[str, ChannelGroup]:
    """Map each plan entry to the model's group that holds its root layer; validate indices."""
    by_member = {m: g for g in groups for m in g.out_modules}
    matched = {}
    for name, idx in kept.items():
        if name not in by_member:
            raise PlanMismatchError(
                f"the pruning plan names layer '{name}', which is not a prunable layer of this model "
                f"(prunable: {[g.name for g in groups]}); was the plan made for another architecture?")
        g = by_member[name]
        if sizes is not None and sizes.get(name, g.size) != g.size:
            raise PlanMismatchError(f"the pruning plan expects {sizes[name]} channels in '{name}', the model "
                                    f"has {g.size}; was the plan made for another architecture or width?")
        ids = list(idx)
        if not ids:
            raise PlanMismatchError(f"the pruning plan keeps no channel of '{name}'; at least one must stay")
        if sorted(set(ids)) != ids or ids[0] < 0 or ids[-1] >= g.size:
            raise PlanMismatchError(f"the pruning plan's kept indices for '{name}' must be sorted, unique and "
                                    f"in [0, {g.size}); got {ids[:8]}{'...' if len(ids) > 8 else ''}")
        matched[name] = g
    return matched


def _output_shapes(model: nn.Module, example_inputs) -> list[tuple[int, ...]]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_inputs)
    finally:
        model.train(was_training)
    flat = out if isinstance(out, (tuple, list)) else [out]
    return [tuple(t.shape) for t in flat if torch.is_tensor(t)]


def prune_channels(model: nn.Module, example_inputs, kept: Mapping[str, Sequence[int]],
                   sizes: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Physically remove every channel not in ``kept[group root]``; other groups stay whole.

    The plan is validated before the model is touched, and the rebuilt model is checked with
    a forward pass on ``example_inputs``; if the rebuild fails or changes the output shapes,
    the model is restored as it was and :class:`UnsupportedLayerError` is raised. Returns, for
    each parameter whose tensor was replaced, the flat indices (into the old tensor) of the
    elements it kept, shaped like the new tensor: ``new = old.flatten()[remap[name]]``.
    """
    graph = build_dependency_graph(model, example_inputs)
    groups = find_channel_groups(model, example_inputs, graph=graph)
    matched = _match_groups(groups, kept, sizes)
    expected_shapes = _output_shapes(model, example_inputs)
    modules = dict(model.named_modules())
    old_params = dict(model.named_parameters())
    values = {n: p.data for n, p in old_params.items()}
    flags = {n: p.requires_grad for n, p in old_params.items()}
    # torch-pruning edits modules in place (new Parameter objects, new attribute values);
    # a shallow copy of every module's own state is enough to undo it.
    snapshot = {m: {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(m).items() if k != "_modules"}
                for m in model.modules()}
    # Replace every parameter's values by its element indices (exact in float64), let
    # torch-pruning cut the tensors, and read off which elements survived.
    with torch.no_grad():
        for p in old_params.values():
            p.grad = None
            p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape)
    remap = {}
    try:
        try:
            for name, ids in kept.items():
                g = matched[name]
                removed = sorted(set(range(g.size)) - set(ids))
                if not removed:
                    continue
                root = modules[g.name]
                pruner = graph.get_pruner_of_module(root)
                graph.get_pruning_group(root, pruner.prune_out_channels, removed).prune(record_history=False)
        finally:
            for n, p in model.named_parameters():
                if p is old_params.get(n):
                    continue
                index = p.data.long()
                with torch.no_grad():
                    p.data = values[n].flatten()[index.flatten().to(values[n].device)].view(index.shape)
                p.requires_grad_(flags.get(n, True))
                p.grad = None
                remap[n] = index
            with torch.no_grad():
                for n, p in old_params.items():
                    p.data = values[n]
        shapes = _output_shapes(model, example_inputs)
        if shapes != expected_shapes:
            raise RuntimeError(f"output shapes changed from {expected_shapes} to {shapes}")
    except Exception as err:
        for m, state in snapshot.items():
            vars(m).update(state)
        raise UnsupportedLayerError(
            f"rebuilding the pruned model failed ({err}); the model was restored unchanged. The channels "
            f"of {sorted(kept)} pass through a structure the dependency graph maps wrongly (for example a "
            "concat followed by flatten -> linear); pass the layers involved in ignored_layers.") from err
    return {n: i for n, i in remap.items() if i.shape != values[n].shape}


def remap_optimizer(optimizer: torch.optim.Optimizer, old_params: Mapping[str, nn.Parameter],
                    new_params: Mapping[str, nn.Parameter], remap: Mapping[str, torch.Tensor]) -> int:
    """Point ``optimizer`` at the rebuilt parameters, slicing its state to the kept elements.

    State tensors shaped like the old parameter (momentum, Adam moments) are sliced; others
    (step counters) are kept. Learning rates and param-group options are untouched, so LR
    schedulers continue. Returns the number of parameters swapped.
    """
    name_of = {id(p): n for n, p in old_params.items()}
    swapped = 0
    for group in optimizer.param_groups:
        for i, p in enumerate(group["params"]):
            name = name_of.get(id(p))
            if name is None or new_params.get(name) is None or new_params[name] is p:
                continue
            new = new_params[name]
            state = optimizer.state.pop(p, None)
            if state:
                index = remap.get(name)
                for key, value in state.items():
                    if torch.is_tensor(value) and value.shape == p.shape and index is not None:
                        state[key] = value.flatten()[index.flatten().to(value.device)].view(new.shape).clone()
                optimizer.state[new] = state
            group["params"][i] = new
            swapped += 1
    return swapped


def plan_from_support(input_shape: Sequence[int], support: Mapping[str, torch.Tensor],
                      groups: Iterable[ChannelGroup]) -> PruningPlan:
    """The plan that keeps, in each group, the channels where ``support`` is True."""
    plan = PruningPlan(input_shape=[1, *[int(s) for s in input_shape[1:]]])
    for g in groups:
        plan.kept[g.name] = [int(i) for i in torch.nonzero(support[g.name]).flatten().tolist()]
        plan.sizes[g.name] = g.size
    return plan


def apply_plan(model: nn.Module, plan: PruningPlan | Mapping) -> nn.Module:
    """Rebuild a freshly constructed (unpruned) model into the pruned shapes of ``plan``.

    Raises :class:`PlanMismatchError`, leaving the model untouched, when the plan does not fit.
    """
    if not isinstance(plan, PruningPlan):
        plan = PruningPlan.from_dict(plan)
    ref = next(model.parameters())
    example = torch.zeros(plan.input_shape, dtype=ref.dtype, device=ref.device)
    prune_channels(model, example, plan.kept, plan.sizes)
    return model


def _strip_prefix(plan: PruningPlan, state_dict: Mapping[str, torch.Tensor], model: nn.Module):
    """Find the prefix (e.g. ``"model."``) that maps the plan's layer names onto ``model``."""
    names = {n for n, _ in model.named_modules()}
    roots = list(plan.kept)
    if all(r in names for r in roots):
        return plan, dict(state_dict)
    for root in roots:
        for cut in range(root.count(".") + 1):
            prefix = ".".join(root.split(".")[: cut + 1]) + "."
            if all(r.startswith(prefix) and r[len(prefix):] in names for r in roots):
                stripped = PruningPlan(plan.input_shape, {r[len(prefix):]: k for r, k in plan.kept.items()},
                                       {r[len(prefix):]: s for r, s in plan.sizes.items()})
                sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
                return stripped, sd
    raise PlanMismatchError(f"the checkpoint's pruning plan names layers {roots[:3]}..., which this model does "
                            "not have (with or without a common prefix): it was saved from another architecture")


def load_pruned(model: nn.Module, checkpoint, strict: bool = True) -> nn.Module:
    """Load a pruned checkpoint into a freshly constructed (unpruned) ``model``.

    ``checkpoint`` is a path or an already loaded dict holding ``"state_dict"`` and
    ``"pruning_plan"`` (a Lightning checkpoint saved with the callback, or the CLI's
    ``pruned.pt``); it is read with ``torch.load(weights_only=True)``. ``model`` may be the
    LightningModule or the network inside it: a prefix such as ``"model."`` is stripped.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state_dict = checkpoint["state_dict"]
    data = checkpoint.get(PLAN_CHECKPOINT_KEY)
    if data is None:
        model.load_state_dict(state_dict, strict=strict)
        return model
    plan, state_dict = _strip_prefix(PruningPlan.from_dict(data), state_dict, model)
    apply_plan(model, plan)
    model.load_state_dict(state_dict, strict=strict)
    return model
