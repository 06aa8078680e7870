"""The physical rebuild: remove channels from a model, and carry optimizer state across.

The rebuild itself is torch-pruning's. :func:`prune_channels` wraps it so that every
parameter's surviving elements are known exactly (as flat indices into the old tensor),
which is what carries optimizer state, and any other parameter-shaped state, across.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .groups import ChannelGroup, UnsupportedLayerError, align_blocks, build_dependency_graph, find_channel_groups
from .plan import PlanMismatchError, PruningPlan


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


def snapshot_modules(model: nn.Module) -> dict:
    """Everything a rebuild changes: each module's own attributes (parameters, buffers, sizes)
    and every parameter's and buffer's values. :func:`restore_modules` puts it all back."""
    return {
        "vars": {m: {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(m).items() if k != "_modules"}
                 for m in model.modules()},
        "data": {t: t.data.clone() for m in model.modules()
                 for t in [*m._parameters.values(), *m._buffers.values()] if t is not None},
    }


def restore_modules(snapshot: dict) -> None:
    """Undo every change since :func:`snapshot_modules`, bit for bit."""
    for m, state in snapshot["vars"].items():
        for key in [k for k in vars(m) if k not in state and k != "_modules"]:
            del vars(m)[key]  # attributes set since the snapshot (e.g. the applied-plan marker)
        vars(m).update(state)
    with torch.no_grad():
        for t, data in snapshot["data"].items():
            t.data = data


def _outputs(model: nn.Module, example_inputs) -> list[torch.Tensor]:
    """The model's output tensors on ``example_inputs`` in eval mode (train mode restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(example_inputs)
    finally:
        model.train(was_training)
    flat, stack = [], [out]
    while stack:
        item = stack.pop(0)
        if torch.is_tensor(item):
            flat.append(item.detach().clone())
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
    return flat


def rebuild_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance of the masked-vs-rebuilt check: the rebuild only changes the order in
    which floating-point sums are taken."""
    return {torch.float64: 1e-9, torch.float32: 1e-4}.get(dtype, 2e-2)


def _mismatch(reference: Sequence[torch.Tensor], outputs: Sequence[torch.Tensor]) -> str | None:
    if len(reference) != len(outputs):
        return f"the model returns {len(outputs)} tensors instead of {len(reference)}"
    for i, (r, o) in enumerate(zip(reference, outputs)):
        if r.shape != o.shape:
            return f"output {i} changed shape from {tuple(r.shape)} to {tuple(o.shape)}"
        if not r.is_floating_point():
            if not torch.equal(r, o):
                return f"output {i} changed"
            continue
        scale = max(1.0, float(r.abs().max())) if r.numel() else 1.0
        diff = float((r.double() - o.double()).abs().max()) if r.numel() else 0.0
        if not diff <= rebuild_tolerance(r.dtype) * scale:  # also catches NaN
            return (f"output {i} differs from the masked model's by {diff:.3g} (max abs; tolerance "
                    f"{rebuild_tolerance(r.dtype) * scale:.3g} for {r.dtype})")
    return None


def mask_channels(params: Mapping[str, torch.Tensor], groups: Sequence[ChannelGroup],
                  masks: Mapping[str, torch.Tensor]) -> None:
    """Zero the output side (filters, biases, norm affine) of every channel ``masks`` drops, in
    place: the *masked model*, whose outputs the rebuilt model must reproduce."""
    live = {n: p.data for n, p in params.items()}
    with torch.no_grad():
        for g in groups:
            if g.name in masks:
                g.scale_(live, masks[g.name].to(torch.float64), fixed=True)


def _offending_groups(model: nn.Module, example_inputs, kept: Mapping[str, Sequence[int]],
                      sizes: Mapping[str, int] | None, limit: int = 32) -> list[str]:
    """Which groups fail the rebuild on their own (tried one at a time on copies)."""
    bad = []
    for name in list(kept)[:limit]:
        trial = copy.deepcopy(model)
        try:
            prune_channels(trial, example_inputs, {name: kept[name]}, sizes, _diagnose=False)
        except Exception:  # noqa: BLE001 - any failure of this group alone marks it as involved
            bad.append(name)
    return bad


def prune_channels(model: nn.Module, example_inputs, kept: Mapping[str, Sequence[int]],
                   sizes: Mapping[str, int] | None = None, _diagnose: bool = True) -> dict[str, torch.Tensor]:
    """Physically remove every channel not in ``kept[group root]``; other groups stay whole.

    The plan is validated before the model is touched. The channels to remove are first
    masked (their filters, biases and norm affine zeroed: the *masked model*); the rebuilt
    model must then give the masked model's outputs on ``example_inputs`` in eval mode, within
    a dtype-dependent relative tolerance (:func:`rebuild_tolerance`). If the rebuild fails or
    the outputs differ, the model is restored bit for bit as it was before the call and
    :class:`UnsupportedLayerError` names the groups involved. Returns, for each parameter
    whose tensor was replaced, the flat indices (into the old tensor) of the elements it kept,
    shaped like the new tensor: ``new = old.flatten()[remap[name]]``.
    """
    graph = build_dependency_graph(model, example_inputs)
    groups = find_channel_groups(model, example_inputs, graph=graph)
    matched = _match_groups(groups, kept, sizes)
    modules = dict(model.named_modules())
    # torch-pruning edits modules in place (new Parameter objects, new attribute values)
    snapshot = snapshot_modules(model)
    old_params = dict(model.named_parameters())
    masks = {}
    for name, ids in kept.items():
        mask = torch.zeros(matched[name].size, dtype=torch.bool)
        mask[list(ids)] = True
        masks[matched[name].name] = mask
    remap = {}
    try:
        mask_channels(old_params, list(matched.values()), masks)
        reference = _outputs(model, example_inputs)
        values = {n: p.data for n, p in old_params.items()}
        flags = {n: p.requires_grad for n, p in old_params.items()}
        # Replace every parameter's values by its element indices (exact in float64), let
        # torch-pruning cut the tensors, and read off which elements survived.
        with torch.no_grad():
            for p in old_params.values():
                p.grad = None
                p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape)
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
        problem = _mismatch(reference, _outputs(model, example_inputs))
        if problem is not None:
            raise RuntimeError(problem)
    except Exception as err:
        restore_modules(snapshot)
        involved = _offending_groups(model, example_inputs, kept, sizes) if _diagnose else []
        involved = involved or sorted(kept)
        raise UnsupportedLayerError(
            f"rebuilding the pruned model failed ({err}); the model was restored unchanged. The channels of "
            f"{involved} pass through a structure the dependency graph maps wrongly (for example a channel "
            "shuffle, a slice, or a concat followed by flatten -> linear); pass these layers in "
            "ignored_layers.") from err
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


def spread_indices(size: int, count: int) -> list[int]:
    """``count`` channel indices spread evenly over ``[0, size)``, always including the last one
    (so that a dry run does not keep only a prefix, which would hide slicing ops)."""
    if count >= size:
        return list(range(size))
    picks = torch.linspace(size - 1, 0, count).round().long().tolist()
    return sorted({int(i) for i in picks})


def model_copy(model: nn.Module, shared: Sequence[object] = ()) -> nn.Module:
    """A deep copy of ``model`` to prune on the side. A LightningModule's trainer, and the objects
    in ``shared``, are referenced, not copied (the trainer holds the data loaders, the loggers and
    the optimizers of the real model)."""
    memo = {id(obj): obj for obj in shared}
    trainer = getattr(model, "_trainer", None)
    if trainer is not None:
        memo[id(trainer)] = trainer
    return copy.deepcopy(model, memo)


def dry_run(model: nn.Module, example_inputs, groups: Sequence[ChannelGroup], keep: Mapping[str, int]) -> None:
    """Prune ``model`` (pass a copy: it is rebuilt in place) to ``keep[g]`` channels in every
    group and check the rebuild numerically, so that anything that would fail at the real prune
    fails now. Raises :class:`UnsupportedLayerError` naming the groups involved."""
    kept = {}
    for g in groups:
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[spread_indices(g.size, keep[g.name])] = True
        kept[g.name] = torch.nonzero(align_blocks(g, mask)).flatten().tolist()
    try:
        prune_channels(model, example_inputs, kept, {g.name: g.size for g in groups})
    except UnsupportedLayerError as err:
        raise UnsupportedLayerError(f"dry run at set-up, before training: {err}") from err
