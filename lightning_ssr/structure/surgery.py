"""The physical rebuild: remove channels from a model, and carry optimizer state across.

The rebuild itself is torch-pruning's. :func:`prune_channels` wraps it so that every
parameter's surviving elements are known exactly (as flat indices into the old tensor),
which is what carries optimizer state, and any other parameter-shaped state, across.
"""

from __future__ import annotations

import collections
import copy
import itertools
import random
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ..modes import eval_mode
from ..validation import some_names
from .groups import (
    _CONV,
    _NORM,
    ChannelGroup,
    UnsupportedLayerError,
    align_blocks,
    build_dependency_graph,
    check_layers,
    find_channel_groups,
)
from .plan import NOT_BUILT_YET, PlanMismatchError, PruningPlan, applied_plan, mark_applied_plan


def _renaming(names: Sequence[str], layers: Iterable[str]) -> str | None:
    """The advice for a plan of the same network held under another name (``model.conv1`` for a
    network whose layer is ``conv1``, or ``net.conv1``: the command's plan applied to the network
    alone, said to be "made for another architecture": probe): one prefix stripped and one added
    that map every name of the plan onto a layer of the model; ``None`` where none does (a
    matching last component alone is no renaming: review)."""
    layers = set(layers)
    parts = names[0].split(".")
    for cut in range(len(parts)):
        strip, tail = ".".join(parts[:cut]) + "." * bool(cut), ".".join(parts[cut:])
        found = [m[: -len(tail)] for m in layers if m == tail or m.endswith("." + tail)]
        for add in found:
            if (strip or add) and all(n.startswith(strip) and add + n.removeprefix(strip) in layers for n in names):
                renamed = "n" if not strip else f"n.removeprefix({strip!r})"
                renamed = renamed if not add else f"{add!r} + {renamed}"
                return (f"its layer names are this model's with "
                        f"{'the prefix ' + repr(strip) if strip else 'no prefix'} where this model has "
                        f"{repr(add) if add else 'none'}: apply plan.renamed(lambda n: {renamed})")
    return None


def _match_groups(groups: Sequence[ChannelGroup], kept: Mapping[str, Sequence[int]],
                  sizes: Mapping[str, int] | None) -> dict[str, ChannelGroup]:
    """Map each plan entry to the model's group that holds its root layer; validate indices."""
    by_member = {m: g for g in groups for m in g.out_modules}
    matched = {}
    for name, idx in kept.items():
        if name not in by_member:
            raise PlanMismatchError(
                f"the pruning plan names layer '{name}', which is not a prunable layer of this model "
                f"(prunable: {[g.name for g in groups]}); " + (_renaming([name, *kept], by_member) or
                                                              "was the plan made for another architecture?"))
        g = by_member[name]
        twice = next((other for other, h in matched.items() if h is g), None)
        if twice is not None:
            raise PlanMismatchError(f"the pruning plan names one group of coupled channels twice, as '{twice}' and "
                                    f"'{name}' (their channels are cut together): one entry per group, by its first "
                                    f"layer '{g.name}'")
        if sizes is not None and sizes.get(name, g.size) != g.size:
            pruned = ("; or was the model pruned already (load into a freshly constructed one)"
                      if g.size < sizes[name] else "; or is it the plan of a later prune, made on a model pruned "
                      "before (save the plans in order as one: first.then(second))")
            raise PlanMismatchError(f"the pruning plan expects {sizes[name]} channels in '{name}', the model "
                                    f"has {g.size}; was the plan made for another architecture or width{pruned}?")
        ids = list(idx)
        if not ids:
            raise PlanMismatchError(f"the pruning plan keeps no channel of '{name}'; at least one must stay")
        if sorted(set(ids)) != ids or ids[0] < 0 or ids[-1] >= g.size:
            wrong = next((f"{i} out of range" for i in ids if not 0 <= i < g.size), None) or next(
                f"{b} after {a}" for a, b in itertools.pairwise(ids) if b <= a)  # (the first offending index, named)
            raise PlanMismatchError(f"the pruning plan's kept indices for '{name}' must be sorted, unique and "
                                    f"in [0, {g.size}); got {ids[:8]}{'...' if len(ids) > 8 else ''} ({wrong})")
        if g.blocks > 1:  # grouped convolutions: every block keeps the same positions
            mask = torch.zeros(g.size, dtype=torch.bool)
            mask[ids] = True
            if not torch.equal(align_blocks(g, mask), mask):
                raise PlanMismatchError(
                    f"the channels of '{name}' reach grouped convolutions that split them into {g.blocks} blocks of "
                    f"{g.size // g.blocks}: every block must keep the same positions, as many in each; got "
                    f"{ids[:8]}{'...' if len(ids) > 8 else ''}. Make the mask valid with "
                    "lightning_ssr.structure.align_blocks(group, mask, scores) first (the callback does).")
        matched[name] = g
    return matched


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` (``channels_last_3d``) for a 4-D (5-D) tensor laid out that way,
    else ``torch.contiguous_format``: what a rebuilt tensor is laid out as, like the one it replaces
    (a model moved to channels_last for speed stays so after the prune)."""
    for dim, fmt in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if t.dim() == dim and not t.is_contiguous() and t.is_contiguous(memory_format=fmt):
            return fmt
    return torch.contiguous_format


def snapshot_modules(model: nn.Module) -> dict:
    """Everything a rebuild changes: each module's own attributes (parameters, buffers, sizes)
    and every parameter's and buffer's values. :func:`restore_modules` puts it all back."""
    own = {m: {k: v for k, v in vars(m).items() if k != "_modules"} for m in model.modules()}
    return {
        "vars": own,
        # the contents of each dict attribute (parameters, buffers, hooks), to refill the same dict
        # object: a hook's RemovableHandle holds a weak reference to the dict it was registered in
        "dicts": {(m, k): list(v.items()) for m, attrs in own.items() for k, v in attrs.items()
                  if isinstance(v, dict)},
        "data": {t: t.data.clone() for m in model.modules()
                 for t in [*m._parameters.values(), *m._buffers.values()] if t is not None},
    }


def restore_modules(snapshot: dict) -> None:
    """Undo every change since :func:`snapshot_modules`, bit for bit: the same attribute objects
    (dicts of their own type and identity, so that hooks registered before still come off) with
    the contents they had."""
    for m, state in snapshot["vars"].items():
        for key in [k for k in vars(m) if k not in state and k != "_modules"]:
            del vars(m)[key]  # attributes set since the snapshot (e.g. the applied-plan marker)
        vars(m).update(state)
    for (m, key), items in snapshot["dicts"].items():
        attribute = vars(m)[key]
        attribute.clear()
        attribute.update(items)
    with torch.no_grad():
        for t, data in snapshot["data"].items():
            t.data = data


def _outputs(model: nn.Module, example_inputs) -> list[torch.Tensor]:
    """The model's output tensors on ``example_inputs`` in eval mode (train mode restored)."""
    with eval_mode(model), torch.no_grad():
        out = model(example_inputs)
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


@contextmanager
def exact_float32():
    """Float32 matrix products and convolutions in full IEEE precision, not TF32, for the
    duration (on Ampere and newer GPUs cuDNN convolutions use TF32 by default, with errors near
    1e-3). The settings are process-wide; they are restored on exit, also after an error."""
    cudnn_conv = torch.backends.cudnn.conv
    saved = (torch.backends.cuda.matmul.fp32_precision, cudnn_conv.fp32_precision)
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    cudnn_conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, cudnn_conv.fp32_precision = saved


@contextmanager
def in_float64(model: nn.Module):
    """Every floating-point parameter and buffer of ``model`` in float64 for the duration, then
    back in its own dtype, bit for bit (float16, bfloat16 and float32 all convert to float64 and
    back exactly). The tensors stay the same objects, so optimizers and hooks are unaffected."""
    saved = []
    try:
        for m in model.modules():
            for t in [*m._parameters.values(), *m._buffers.values()]:
                if t is not None and t.is_floating_point() and t.dtype != torch.float64:
                    dtype = t.dtype
                    t.data = t.data.double()
                    saved.append((t, dtype))
        yield
    finally:
        for t, dtype in saved:
            t.data = t.data.to(dtype)


def _as_float64(inputs):
    if torch.is_tensor(inputs):
        return inputs.double() if inputs.is_floating_point() else inputs
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_as_float64(i) for i in inputs)
    return inputs


def check_outputs(model: nn.Module, example_inputs, precision: str | None = None) -> tuple[list[torch.Tensor], str]:
    """The model's outputs for the masked-vs-rebuilt check, and the precision they were computed in.

    ``"float64"`` (the default where the model runs in it): parameters, buffers and inputs in
    float64 (:func:`in_float64`), so that neither the model's own dtype nor TF32 on the GPU
    decides the tolerance; two evaluations then differ only in the order of their sums.
    ``"native"``: the model's own dtype with TF32 off (:func:`exact_float32`), for models whose
    forward does not run in float64 (a device without it, a dtype fixed inside ``forward``).
    ``precision=None`` tries float64 first and falls back to native."""
    if precision in (None, "float64"):
        try:
            with in_float64(model):
                return _outputs(model, _as_float64(example_inputs)), "float64"
        except (RuntimeError, TypeError):
            if precision == "float64":
                raise
    with exact_float32():
        return _outputs(model, example_inputs), "native"


def informative_example(example_inputs):
    """The inputs the masked-vs-rebuilt check runs on: ``example_inputs``, except that a floating
    tensor in it whose elements are all equal (``torch.zeros(...)``, which a network without biases
    maps to zeros at every layer: the check would compare zeros with zeros) is replaced by uniform
    random values in [0, 1) of its shape, dtype and device (seeded; the global random state is not
    used). A tensor, or a tuple, list or dict of them."""
    generator = torch.Generator().manual_seed(0)

    def varied(x):
        if torch.is_tensor(x) and x.is_floating_point() and x.numel() > 1 and bool((x == x.flatten()[0]).all()):
            return torch.rand(x.shape, generator=generator).to(dtype=x.dtype, device=x.device)
        return x

    if isinstance(example_inputs, tuple) and hasattr(example_inputs, "_fields"):  # (a namedtuple)
        return type(example_inputs)(*(varied(x) for x in example_inputs))
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(varied(x) for x in example_inputs)
    if isinstance(example_inputs, dict):
        return {k: varied(x) for k, x in example_inputs.items()}
    return varied(example_inputs)


def rebuild_tolerance(dtype: torch.dtype) -> float:
    """Relative tolerance (to the largest output, at least 1) of the masked-vs-rebuilt check.

    The rebuilt model computes the masked model's function with the zeroed channels left out of
    its sums, so the two outputs differ only by rounding in the order of summation. One dot
    product of n terms is off by at most n * u times the sum of the terms' magnitudes (u: the
    unit round-off; Higham, *Accuracy and Stability of Numerical Algorithms*, 3.1), on any host
    and any summation order. In float64 (u = 1.1e-16), n = 10^5 terms (a 3x3 convolution over
    11,000 channels) gives 1.1e-11; 1e-9 leaves a factor of 100 for the growth through the
    layers, and a wrong channel mapping moves outputs by O(1). The other dtypes are only used
    where the model cannot run in float64 (TF32 off): float32, u = 6e-8, 1e-4 allows n * growth
    of about 1,700; 16-bit floats, u = 4e-3 (bfloat16), 2e-2."""
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


def _buffers_as_wide_as(model: nn.Module, widths: set[int]) -> list[str]:
    """Buffers outside norm layers with a dimension of one of ``widths`` (the channel counts of the
    groups a rebuild failed on), named with their shapes: per-channel constants the rebuild cannot
    slice (it slices parameters, and the running statistics of norm layers)."""
    found = []
    for prefix, module in model.named_modules():
        if isinstance(module, _NORM):
            continue
        for name, buffer in module.named_buffers(recurse=False):
            # the dimension that broadcasts against the channels: -3 of an (N)CHW activation, the
            # last one of a (N)C feature vector (or of a 1-d buffer a forward() reshapes)
            channel = buffer.shape[-3] if buffer.dim() >= 3 else (buffer.shape[-1] if buffer.dim() else 0)
            if buffer.numel() > 1 and channel in widths:
                found.append(f"'{prefix + '.' if prefix else ''}{name}' {tuple(buffer.shape)}")
    return found


def forward_hooks(model: nn.Module) -> dict[tuple[str, str, int], str]:
    """The forward hooks and forward pre-hooks on ``model``'s modules, by (module, kind, handle id)
    (ids are unique in a process: a hook removed and registered again is another one), each named
    as ``'<module>' (forward hook)``. A rebuild's numerical check runs the model through them."""
    found = {}
    for prefix, module in model.named_modules():
        for kind, hooks in (("forward pre-hook", module._forward_pre_hooks), ("forward hook", module._forward_hooks)):
            for handle in hooks:
                found[(prefix, kind, handle)] = f"'{prefix or type(module).__name__}' ({kind})"
    return found


def module_hooks(model: nn.Module) -> dict[tuple[str, str, int], str]:
    """:func:`forward_hooks` and the backward hooks and backward pre-hooks on ``model``'s modules,
    named alike (``'<module>' (backward hook)``): what a method must not leave on the model it
    prunes (a backward hook that holds a per-channel tensor fails on the smaller model's first
    backward)."""
    found = forward_hooks(model)
    for prefix, module in model.named_modules():
        for kind, hooks in (("backward pre-hook", module._backward_pre_hooks), ("backward hook", module._backward_hooks)):
            for handle in hooks:
                found[(prefix, kind, handle)] = f"'{prefix or type(module).__name__}' ({kind})"
    return found


def _offending_groups(model: nn.Module, example_inputs, kept: Mapping[str, Sequence[int]],
                      sizes: Mapping[str, int] | None, groups: Sequence[ChannelGroup], limit: int = 32) -> list[str]:
    """Which groups fail the rebuild on their own (tried one at a time on copies; ``groups``: the
    model's, found once: they name parameters, not the copies' modules, and tracing them again for
    each trial took seconds a group where torch-pruning maps a reshape's indices)."""
    bad = []
    for name in list(kept)[:limit]:
        trial = copy.deepcopy(model)
        try:
            prune_channels(trial, example_inputs, {name: kept[name]}, sizes, _diagnose=False, _groups=groups)
        except Exception:  # noqa: BLE001 - any failure of this group alone marks it as involved
            bad.append(name)
    return bad


def check_finite(model: nn.Module) -> None:
    """Refuse a model whose parameters or normalization statistics hold NaN or infinity (a training
    that diverged, a bad initialization) with ``ValueError`` naming them: its outputs are not
    finite, so no rebuild can be checked against them, and its channel scores say nothing."""
    tensors = [(n, p) for n, p in model.named_parameters()]
    tensors += [(n, b) for n, b in model.named_buffers() if n.rsplit(".", 1)[-1] in ("running_mean", "running_var")]
    tensors = [(n, t.detach()) for n, t in tensors if t.is_floating_point() and t.numel()]
    flags = [torch.isfinite(t).all() for _, t in tensors]
    if not flags or bool(torch.stack([f.to(flags[0].device) for f in flags]).all()):
        return  # (one wait for an accelerator, not one per tensor)
    bad = [n for (n, _), finite in zip(tensors, flags, strict=True) if not bool(finite)]
    raise ValueError(f"the model's {some_names(bad)} {'holds' if len(bad) == 1 else 'hold'} NaN or infinity: the training "
                     "diverged or the weights were loaded wrong, and a model whose outputs are not finite cannot be "
                     "pruned (nor its rebuild checked). Lower the learning rate, or start from a checkpoint whose "
                     "weights are finite")


def has_usable_values(model: nn.Module, example_inputs) -> bool:
    """Whether ``model``'s parameters and norm statistics are finite and give finite outputs on
    ``example_inputs`` (:func:`informative_example`): not so for a model of uninitialized memory
    (Lightning's ``init_module(empty_init=True)``, ``to_empty()``), on which no rebuild can be checked."""
    try:
        check_finite(model)
    except ValueError:
        return False
    try:
        outputs = _outputs(model, informative_example(example_inputs))
    except Exception:  # noqa: BLE001 - a forward that fails on these inputs: the rebuild says why, naming them
        return True
    return all(bool(torch.isfinite(o).all()) for o in outputs if o.is_floating_point() or o.is_complex())


def fill_placeholder_values(model: nn.Module, only_non_finite: bool = False) -> None:
    """Give every floating parameter of ``model`` seeded random values of a fan-in scale (a
    matrix or filter ``N(0, 1 / fan_in)``, any other ``U(-0.5, 0.5)``) and norm layers the
    statistics of a fresh one (means 0, variances 1), in place: for a model whose values a load
    is about to replace, so that its rebuild is checked on values that say something. With
    ``only_non_finite``, only the tensors that hold NaN or infinity. The global random state is
    not used."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.is_floating_point() or (only_non_finite and bool(torch.isfinite(p).all())):
                continue
            if p.dim() > 1:
                values = torch.randn(p.shape, generator=generator) / max(1, p[0].numel()) ** 0.5
            else:
                values = torch.rand(p.shape, generator=generator) - 0.5
            p.copy_(values)
        for name, b in model.named_buffers():
            if (b.is_floating_point() and name.rsplit(".", 1)[-1] in ("running_mean", "running_var")
                    and not (only_non_finite and bool(torch.isfinite(b).all()))):
                b.fill_(0.0 if name.endswith("running_mean") else 1.0)


def prune_channels(model: nn.Module, example_inputs, kept: Mapping[str, Sequence[int]],
                   sizes: Mapping[str, int] | None = None, _diagnose: bool = True,
                   _groups: Sequence[ChannelGroup] | None = None) -> dict[str, torch.Tensor]:
    """Physically remove every channel not in ``kept[group root]``; other groups stay whole.

    The plan is validated before the model is touched. The channels to remove are first
    masked (their filters, biases and norm affine zeroed: the *masked model*); the rebuilt
    model must then give the masked model's outputs on ``example_inputs`` (an all-equal one
    replaced: :func:`informative_example`) in eval mode, both
    computed in float64 where the model runs in it (:func:`check_outputs`: TF32 and the model's
    own dtype play no part), within :func:`rebuild_tolerance`. If the rebuild fails or
    the outputs differ, the model is restored bit for bit as it was before the call and
    :class:`UnsupportedLayerError` names the groups involved. Returns, for each parameter
    whose tensor was replaced, the flat indices (into the old tensor) of the elements it kept,
    shaped like the new tensor: ``new = old.flatten()[remap[name]]``.
    """
    check_finite(model)
    graph = build_dependency_graph(model, example_inputs)
    unsupported = {}  # groups the engine cannot cut: an error where the plan cuts one
    groups = _groups if _groups is not None else find_channel_groups(model, example_inputs, graph=graph, check=False,
                                                                     unsupported=unsupported)
    for name in kept:
        if name in unsupported:
            raise unsupported[name]
    matched = _match_groups(groups, kept, sizes)
    check_layers(model, matched.values())  # only the groups the plan cuts
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
    stage = "mask"  # where a failure happened: torch-pruning's cut and the numerical check say "unsupported"
    try:
        mask_channels(old_params, list(matched.values()), masks)
        checked = informative_example(example_inputs)
        reference, precision = check_outputs(model, checked)
        values = {n: p.data for n, p in old_params.items()}
        flags = {n: p.requires_grad for n, p in old_params.items()}
        # Replace every parameter's values by its element indices (exact in float64), let
        # torch-pruning cut the tensors, and read off which elements survived.
        with torch.no_grad():
            for p in old_params.values():
                p.grad = None
                p.data = torch.arange(p.numel(), dtype=torch.float64, device=p.device).view(p.shape)
        stage = "cut"
        # a GroupNorm of one channel per group stays one (torch-pruning leaves num_groups as it was)
        per_channel = [m for m in modules.values() if isinstance(m, nn.GroupNorm) and m.num_groups == m.num_channels]
        try:
            for name, ids in kept.items():
                g = matched[name]
                removed = sorted(set(range(g.size)) - set(ids))
                if not removed:
                    continue
                root = modules[g.name]
                pruner = graph.get_pruner_of_module(root)
                graph.get_pruning_group(root, pruner.prune_out_channels, removed).prune(record_history=False)
            for m in per_channel:
                m.num_groups = m.num_channels
        finally:
            for n, p in model.named_parameters():
                if p is old_params.get(n):
                    continue
                index = p.data.long()
                with torch.no_grad():
                    p.data = values[n].flatten()[index.flatten().to(values[n].device)].view(index.shape).contiguous(
                        memory_format=memory_format_of(values[n]))
                p.requires_grad_(flags.get(n, True))
                p.grad = None
                remap[n] = index
            with torch.no_grad():
                for n, p in old_params.items():
                    p.data = values[n]
        stage = "check"
        outputs = check_outputs(model, checked, precision)[0]
        problem = _mismatch(reference, outputs)
        if problem is not None and [r.shape for r in reference] != [o.shape for o in outputs]:
            stage = "outputs"  # what the model returns carries pruned channels
        if problem is not None:
            raise RuntimeError(problem)
    except BaseException as err:
        restore_modules(snapshot)
        if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
            raise type(err)(f"out of memory while rebuilding the pruned model ({err}); the model was restored "
                            "unchanged. Free memory (a smaller batch, or the rebuild on the CPU) and try again.") from err
        if stage not in ("cut", "check", "outputs") or not isinstance(err, Exception):  # not the structure's fault
            raise
        involved = _offending_groups(model, example_inputs, kept, sizes, groups) if _diagnose else []
        involved = involved or sorted(kept)
        if stage == "outputs":
            raise UnsupportedLayerError(
                f"rebuilding the pruned model changed what it returns ({err}); the model was restored unchanged. "
                f"An output of forward() carries the channels of {involved} (a feature map returned beside the "
                "logits): removing them would change the model's interface. Pass these layers in ignored_layers, "
                "or return from forward() only tensors whose width no prunable layer sets.") from err
        coupled = {n: [m for m in matched[n].out_modules if m != n and isinstance(modules.get(m), (nn.Linear,
                       nn.modules.conv._ConvNd))] for n in involved if n in matched}
        named = [f"{n!r} (one group with {some_names([repr(m) for m in coupled[n]], 4)}: ignoring one keeps all whole)"
                 if coupled.get(n) else repr(n) for n in involved]
        buffers = _buffers_as_wide_as(model, {matched[n].size for n in involved if n in matched})
        suspects = (f" Buffers as wide as these channels, which the rebuild does not slice: {', '.join(buffers)}; a "
                    "per-channel constant used in forward() cannot follow the cut, so leave its channels whole."
                    if buffers else "")
        hooks = sorted(set(forward_hooks(model).values()))
        if hooks:  # one that holds a per-channel tensor (a gate, a running mean) fails the check as the cut would
            suspects += (f" The check ran the model through its forward hooks on {some_names(hooks, 4)}: a hook that "
                         "holds a per-channel tensor cannot follow the cut, so remove it before the prune.")
        raise UnsupportedLayerError(
            f"rebuilding the pruned model failed ({err}); the model was restored unchanged. The channels of "
            f"{', '.join(named)} pass through a structure the dependency graph maps wrongly (for example a channel "
            "shuffle, a slice, a pad of the channel dimension, a concat followed by flatten -> linear), or through an op after which a removed channel is not zero (a sigmoid, an exp, "
            "a constant added, BatchNorm without affine), so the masked model still reads it." + suspects +
            " Pass these layers in ignored_layers.") from err
    prior = applied_plan(model)
    if prior is not None:  # a model that records its plan records this cut too (save_pruned reads the record)
        step = PruningPlan(list(prior.input_shape), {n: [int(i) for i in ids] for n, ids in kept.items()},
                           {n: matched[n].size for n in kept})
        shape = [1, *example_inputs.shape[1:]] if torch.is_tensor(example_inputs) else prior.input_shape
        mark_applied_plan(model, prior.then(step, shape))  # (traced on this model's input: review)
    return {n: i for n, i in remap.items() if i.shape != values[n].shape}


#: torch's optimizers whose state is not shaped like each parameter (Adafactor's factored row and
#: column moments, LBFGS's flat history of all parameters), which a prune cannot slice
UNSLICEABLE_OPTIMIZERS = tuple(c for c in (getattr(torch.optim, n, None) for n in ("LBFGS", "Adafactor")) if c)


def check_remappable(optimizers: Sequence[torch.optim.Optimizer],
                     cut: Mapping[str, nn.Parameter] | None = None) -> None:
    """Refuse, before training, an optimizer whose state a prune cannot slice onto the smaller
    tensors: one of :data:`UNSLICEABLE_OPTIMIZERS`, or one of another library whose state (or that
    of an optimizer it wraps), after one step taken on a copy of it with small random gradients,
    holds for one of the parameters in ``cut`` (by name: those a prune may replace) a tensor not
    shaped like the parameter, or a list of tensors. Where that
    copy cannot be made or stepped (a step that needs a closure), the check is left to the
    prune (:func:`remap_optimizer`), as before."""
    for optimizer in (o for outer in optimizers for o in optimizers_within(outer)):
        if isinstance(optimizer, UNSLICEABLE_OPTIMIZERS):
            raise TypeError(f"optimizer {type(optimizer).__name__} keeps state that is not shaped like each parameter "
                            "(factored or flat), which a prune cannot slice onto the smaller tensors: use an optimizer "
                            "whose state is per element (SGD, Adam, AdamW, RMSprop, Adagrad, NAdam, RAdam, ...)")
    for optimizer in optimizers:
        if cut and any(not type(o).__module__.startswith("torch.optim") for o in optimizers_within(optimizer)):
            _check_state_after_a_step(optimizer, cut)


def optimizers_within(optimizer: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """``optimizer`` and the optimizers it wraps (a Lookahead-style wrapper holds its inner
    optimizer as an attribute, shares its parameter groups, and its inner one keeps the moments):
    a prune slices the state of each."""
    found, todo = [], [optimizer]
    while todo:
        current = todo.pop()
        if any(current is o for o in found):
            continue
        found.append(current)
        todo.extend(_optimizers_in(list(vars(current).values()), set()))
    return found


def _optimizers_in(values: list, seen: set[int]) -> list[torch.optim.Optimizer]:
    """The optimizers among ``values`` and in the lists, tuples and dicts they hold, at any depth
    (an optimizer's own state and groups, which hold none, are not walked)."""
    out = []
    for value in values:
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, torch.optim.Optimizer):
            out.append(value)
        elif isinstance(value, dict) and not isinstance(value, collections.defaultdict):
            out.extend(_optimizers_in(list(value.values()), seen))
        elif isinstance(value, (list, tuple)):
            out.extend(_optimizers_in(list(value), seen))
    return out


def _copy_optimizers(holders: Sequence[torch.optim.Optimizer], memo: dict) -> list[torch.optim.Optimizer]:
    """Copies of ``holders`` (an optimizer and those it wraps) that share what the originals share.
    Each takes its original's data (torch's own copy of an optimizer keeps only its groups and state:
    a wrapper's inner optimizer, or a setting of another library's, would be lost), not its hooks
    or the functions set on it (the step Lightning or an LR scheduler wraps around the optimizer's
    own would run the run's hooks or step the real optimizer)."""
    copies = []
    for holder in holders:  # (shells first: a wrapper's reference to its inner one finds its copy)
        memo[id(holder)] = object.__new__(type(holder))
        copies.append(memo[id(holder)])
    for holder, made in zip(holders, copies):
        made.__dict__.update(copy.deepcopy({k: v for k, v in vars(holder).items()
                                            if not _is_hooks(k) and not callable(v)}, memo))
        made.__dict__.update({k: collections.OrderedDict() for k in vars(holder) if _is_hooks(k)})
    return copies


def _is_hooks(attribute: str) -> bool:
    """Whether an optimizer's attribute holds hooks (``_optimizer_step_pre_hooks``, ...)."""
    return attribute.startswith("_optimizer_") and attribute.endswith("_hooks")


def _tensors_in(value) -> bool:
    """Whether ``value``, not itself a tensor, holds tensors with dimensions (a list, deque or dict
    of gradients kept as optimizer state), which a prune cannot slice."""
    items = (value.values() if isinstance(value, Mapping) else
             value if isinstance(value, (list, tuple, set, frozenset, collections.deque)) else ())
    return any(_tensors_in(v) or (torch.is_tensor(v) and v.dim() > 0) for v in items)


def _check_state_after_a_step(optimizer: torch.optim.Optimizer, cut: Mapping[str, nn.Parameter]) -> None:
    name_of = {id(p): n for n, p in cut.items()}
    originals = [p for group in optimizer.param_groups for p in group["params"] if id(p) in name_of]
    if not originals:
        return
    # only the parameters a prune may cut (and their state) are copied: the others map to None
    memo: dict = {}
    holders = optimizers_within(optimizer)
    for group in optimizer.param_groups:
        for p in group["params"]:
            if id(p) not in name_of:
                memo[id(p)] = None
                memo.update((id(v), None) for h in holders for v in h.state.get(p, {}).values() if torch.is_tensor(v))
    devices = sorted({p.device.index for p in originals if p.device.type == "cuda" and p.device.index is not None})
    python = random.getstate()
    try:  # (an optimizer that draws noise in step() leaves the run's random streams as they were)
        with torch.random.fork_rng(devices=devices):
            # (its attributes too: torch's own copy of an optimizer keeps only its groups and state,
            # and a wrapper's inner optimizer, or a setting of another library's, would be lost)
            copied = _copy_optimizers(holders, memo)
            probe = copied[0]
            for holder in copied:
                for group in holder.param_groups:
                    group["params"] = [p for p in group["params"] if p is not None]
                holder.state.pop(None, None)
            copies = [p for group in probe.param_groups for p in group["params"]]
            with torch.no_grad():  # (small, not zero: some optimizers keep state only for nonzero gradients)
                for p in copies:
                    p.grad = torch.randn_like(p).mul_(1e-3)
            probe.step()
    except Exception:  # noqa: BLE001 - not probeable here; the prune checks each state it slices
        return
    finally:
        random.setstate(python)
    for holder in copied:
        for original, p in zip(originals, copies):
            for key, value in (holder.state.get(p) or {}).items():
                if (torch.is_tensor(value) and value.dim() > 0 and value.shape != p.shape) or _tensors_in(value):
                    raise ValueError(_unsliceable_state(holder, key, name_of[id(original)], value, p))


def _unsliceable_state(optimizer: torch.optim.Optimizer, key, name: str, value, param: torch.Tensor) -> str:
    held = (f"in shape {tuple(value.shape)}, not the parameter's {tuple(param.shape)}" if torch.is_tensor(value) else
            f"as a {type(value).__name__} of tensors, not one tensor shaped like the parameter "
            f"{tuple(param.shape)}")
    return (f"optimizer {type(optimizer).__name__} keeps state {key!r} of {name} {held}: the prune cannot slice it "
            "onto the smaller tensor. Use an optimizer whose state is per element (SGD, Adam, AdamW, RMSprop, ...)")


def remap_optimizer(optimizer: torch.optim.Optimizer, old_params: Mapping[str, nn.Parameter],
                    new_params: Mapping[str, nn.Parameter], remap: Mapping[str, torch.Tensor]) -> int:
    """Point ``optimizer`` (and any optimizer it wraps) at the rebuilt parameters, slicing its
    state to the kept elements.

    State tensors shaped like the old parameter (momentum, Adam moments) are sliced; others
    (step counters) are kept; state the prune cannot slice (another shape, a list of tensors) is
    refused with a :class:`ValueError` naming it. Learning rates and param-group options are
    untouched, so LR schedulers continue. Returns the number of parameters swapped.
    """
    swaps = {id(p): (name, new_params[name]) for name, p in old_params.items()
             if new_params.get(name) is not None and new_params[name] is not p}
    holders = optimizers_within(optimizer)
    for holder in holders:
        for p in [p for p in holder.state if id(p) in swaps]:
            name, new = swaps[id(p)]
            state, index = holder.state.pop(p), remap.get(name)
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and index is not None:
                    state[key] = value.flatten()[index.flatten().to(value.device)].view(new.shape).clone(
                        memory_format=memory_format_of(value))
                elif index is not None and ((torch.is_tensor(value) and value.dim() > 0) or _tensors_in(value)):
                    raise ValueError(_unsliceable_state(holder, key, name, value, p))
            holder.state[new] = state
    swapped = sum(id(p) in swaps for group in optimizer.param_groups for p in group["params"])
    seen = set()
    for group in (g for holder in holders for g in holder.param_groups):
        if id(group) not in seen:  # (a wrapper shares its inner optimizer's groups)
            seen.add(id(group))
            group["params"] = [swaps[id(p)][1] if id(p) in swaps else p for p in group["params"]]
    return swapped


def apply_plan(model: nn.Module, plan: PruningPlan | Mapping, strict: bool = False) -> nn.Module:
    """Rebuild a freshly constructed (unpruned) model into the pruned shapes of ``plan``, and
    record the plan on it (:func:`~lightning_ssr.structure.plan.applied_plan`: its checkpoints keep
    it). A model rebuilt with this plan already is left alone; one rebuilt with an earlier plan
    takes the rest: ``plan`` counted from the constructed shapes and continuing that plan (a later
    prune of it, :meth:`PruningPlan.after`), or, per layer, counted from the width the earlier plan
    left (a later prune's own plan, replayed step by step); layers ``plan`` does not name stay as
    they are. ``strict`` (a checkpoint's plan, loaded): only a plan that continues the earlier one.

    Raises :class:`PlanMismatchError`, leaving the model untouched, when the plan does not fit.
    """
    if not isinstance(plan, PruningPlan):
        plan = PruningPlan.from_dict(plan)
    ref = next(model.parameters(), None)
    if ref is None:
        raise PlanMismatchError(f"the pruning plan names layers {list(plan.kept)[:3]}, and this "
                                f"{type(model).__name__} has no layers yet: {NOT_BUILT_YET}")
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise PlanMismatchError(
            f"this {type(model).__name__} is on the meta device: a rebuild is checked on the model's outputs, which a "
            "meta tensor has not. Materialize it first (model.to_empty(device='cpu')), then load or rebuild it")
    current = applied_plan(model)
    if current is not None and (current.kept, current.sizes) == (plan.kept, plan.sizes):
        return model
    step = plan if current is None else _step_after(current, plan, strict)
    example = torch.zeros(plan.input_shape, dtype=ref.dtype, device=ref.device)
    prune_channels(model, example, step.kept, step.sizes)
    if current is None:  # (a model that records a plan has the cut composed into it by prune_channels)
        mark_applied_plan(model, plan)
    return model


def _step_after(current: PruningPlan, plan: PruningPlan, strict: bool) -> PruningPlan:
    """The cut that takes a model rebuilt with ``current`` to ``plan``. ``strict``: ``plan``
    continues ``current`` (:meth:`PruningPlan.after`: a checkpoint's). Otherwise each layer of
    ``plan`` may also be one no plan cut yet, or be counted from the width ``current`` left (a
    later prune's plan, replayed step by step), and the layers it leaves out stay as they are (a
    plan of another part of the model)."""
    if strict:
        return plan.after(current)
    step = PruningPlan(list(plan.input_shape))
    for name, kept in plan.kept.items():
        if name in current.kept and plan.sizes[name] == len(current.kept[name]) != current.sizes[name]:
            step.kept[name], step.sizes[name] = list(kept), plan.sizes[name]  # (counted from the width left)
        elif name in current.kept:
            one = PruningPlan(list(plan.input_shape), {name: list(kept)}, {name: plan.sizes[name]})
            earlier = PruningPlan(list(current.input_shape), {name: current.kept[name]}, {name: current.sizes[name]})
            step.kept[name], step.sizes[name] = one.after(earlier).kept[name], len(current.kept[name])
        else:
            step.kept[name], step.sizes[name] = list(kept), plan.sizes[name]
    return step


def spread_indices(size: int, count: int) -> list[int]:
    """``count`` channel indices spread evenly over ``[0, size)``, always including the last one
    (so that a dry run does not keep only a prefix, which would hide slicing ops)."""
    if count >= size:
        return list(range(size))
    picks = torch.linspace(size - 1, 0, count).round().long().tolist()
    return sorted({int(i) for i in picks})


def model_copy(model: nn.Module, shared: Sequence[object] = (), memo: dict | None = None) -> nn.Module:
    """A deep copy of ``model`` to prune on the side. A LightningModule's trainer, and the objects
    in ``shared``, are referenced, not copied (the trainer holds the data loaders, the loggers and
    the optimizers of the real model). ``memo``: the copy's memo, filled in, so that a later
    ``copy.deepcopy(obj, memo)`` gives ``obj`` the copy's modules and parameters where it held the
    model's."""
    memo = {} if memo is None else memo
    memo.update({id(obj): obj for obj in shared})
    trainer = getattr(model, "_trainer", None)
    if trainer is not None:
        memo[id(trainer)] = trainer
    return copy.deepcopy(model, memo)


def moved_by_training(model: nn.Module) -> list[str]:
    """The tensors whose values training moves, outside the layers a rebuild cuts, on which a
    removed channel's staying zero can depend: the running statistics of norm layers (a BatchNorm
    without affine maps a zero channel to ``-mean / std``) and the trainable parameters of other
    modules (a learned threshold subtracted from every channel). At their initial values (means 0,
    a threshold 0) such a channel is zero, and only the trained model shows it is not."""
    found, seen = [], set()  # (a tensor two modules share: once, under its first name)
    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, _NORM):
            tensors = [(n, b) for n, b in module.named_buffers(recurse=False)
                       if n in ("running_mean", "running_var") and b is not None and b.is_floating_point()]
        elif not isinstance(module, _CONV + (nn.Linear,)):
            tensors = [(n, p) for n, p in module.named_parameters(recurse=False)
                       if p.requires_grad and p.is_floating_point()]
        else:
            continue
        for n, t in tensors:
            if id(t) not in seen:
                seen.add(id(t))
                found.append(dot + n)
    return found


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of ``model`` under each of its names (a shared one under all)."""
    return {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}


def _move_as_training_would(model: nn.Module, names: Sequence[str], sign: int) -> None:
    """Move the tensors :func:`moved_by_training` named, in place: running means by a random
    amount, running variances by a random factor, parameters by ``sign`` times a random positive
    amount (a scalar has one sign: the two dry runs move it both ways). Seeded: the global random
    state is not used."""
    generator = torch.Generator().manual_seed(0)
    tensors = _named_tensors(model)
    with torch.no_grad():
        for name in names:
            t = tensors[name]
            noise = torch.rand(t.shape, generator=generator, dtype=torch.float64)
            if name.endswith("running_var"):
                t.mul_((noise - 0.5).exp().to(t))
            elif name.endswith("running_mean"):
                t.add_((sign * (noise - 0.5)).to(t))
            else:
                t.add_((sign * (0.5 + noise) * 0.1 * (1 + t.detach().abs().mean().double())).to(t))


_MOVED_ADVICE = {
    "stats": "A norm layer without affine parameters maps a removed (zero) channel to -running_mean / std: build "
             "it with affine=True, or leave its channels whole (ignored_layers).",
    "parameter": "A parameter of your own applied to every channel (a learned threshold or offset) makes a removed "
                 "channel nonzero: apply it where no pruned channel passes, or leave those channels whole "
                 "(ignored_layers).",
}


def _moved_culprits(model: nn.Module, example_inputs, kept: Mapping[str, Sequence[int]],
                    groups: Sequence[ChannelGroup], initial: Mapping[str, torch.Tensor]) -> list[str] | None:
    """After a dry run failed on ``model`` with what training moves moved (``initial``: their
    values before): ``None`` where the rebuild fails at the initial values too (the structure's own
    fault); else the moved tensors it fails with, narrowed to one kind where one alone fails it
    (parameters, the statistics of norms without affine, other statistics), then to the modules
    (of the first 8) whose own fail it. Tried on copies."""
    sizes = {g.name: g.size for g in groups}

    def holds(moved: Sequence[str]) -> bool:  # the rebuild, with only ``moved`` moved
        trial = copy.deepcopy(model)
        tensors = _named_tensors(trial)
        with torch.no_grad():
            for n, value in initial.items():
                if n not in moved:
                    tensors[n].copy_(value)
        try:
            prune_channels(trial, example_inputs, kept, sizes, _diagnose=False, _groups=groups)
        except UnsupportedLayerError:
            return False
        return True

    if not holds([]):
        return None
    modules = dict(model.named_modules())
    stats = [n for n in initial if n.endswith(("running_mean", "running_var"))]
    plain = [n for n in stats if getattr(modules.get(n.rpartition(".")[0]), "weight", None) is None]
    kinds = [[n for n in initial if n not in stats], plain, [n for n in stats if n not in plain]]
    kind = next((kind for kind in kinds if kind and not holds(kind)), list(initial))
    owners: dict[str, list[str]] = {}  # (then by the module that holds them: a GRU's weights beside a threshold)
    for n in kind:
        owners.setdefault(n.rpartition(".")[0], []).append(n)
    failing = [n for names in list(owners.values())[:8] if not holds(names) for n in names] if len(owners) > 1 else []
    return failing or kind


def dry_run(model: nn.Module, example_inputs, groups: Sequence[ChannelGroup], keep: Mapping[str, int],
            move: int = 0) -> None:
    """Prune ``model`` (pass a copy: it is rebuilt in place) to ``keep[g]`` channels in every
    group and check the rebuild numerically, so that anything that would fail at the real prune
    fails now. Raises :class:`UnsupportedLayerError` naming the groups involved. ``move`` (+1 or
    -1): first move what training moves (:func:`moved_by_training`) that way, so that a removed
    channel that is zero only at the initial values fails now, not at the prune after training."""
    kept = {}
    for g in groups:
        mask = torch.zeros(g.size, dtype=torch.bool)
        mask[spread_indices(g.size, keep[g.name])] = True
        kept[g.name] = torch.nonzero(align_blocks(g, mask)).flatten().tolist()
    moved = moved_by_training(model) if move else []
    initial = {n: t.detach().clone() for n, t in _named_tensors(model).items() if n in moved}
    _move_as_training_would(model, moved, move)
    try:
        prune_channels(model, example_inputs, kept, {g.name: g.size for g in groups})
    except UnsupportedLayerError as err:
        culprits = _moved_culprits(model, example_inputs, kept, groups, initial) if moved else None
        if culprits:
            raise UnsupportedLayerError(
                f"dry run at set-up, before training: the rebuild holds with the model's initial values, but not once "
                f"training moves {some_names([repr(n) for n in culprits], 4)} (tried with them moved): a removed channel "
                "is zero now only because of their initial values, and the prune after training would fail. "
                f"{_MOVED_ADVICE['stats' if culprits[0].endswith(('running_mean', 'running_var')) else 'parameter']} "
                f"{err}") from err
        raise UnsupportedLayerError(f"dry run at set-up, before training: {err}") from err
