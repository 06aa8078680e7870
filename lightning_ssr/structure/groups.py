"""Prunable channel groups of a model, discovered with torch-pruning's dependency graph.

A :class:`ChannelGroup` is one set of coupled channels: the output channels of one conv or
linear layer together with every slice that must go when one of them goes (BN after it,
other convs writing into the same residual stream, concat offsets, a depthwise conv, the
consumers' input columns including a flatten -> linear expansion). Channel ``c`` of the
group is the SSR group ``g``.

The *regularized* part of a group (``slices``) is its output side: producer filter rows,
their biases, and the affine parameters of norm layers on those channels. Zeroing those
makes the channel's output exactly zero, so the consumers' input columns (``consumers``)
can then be removed without changing what the network computes.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import parametrize, prune

from ..modes import eval_mode
from ..validation import closest_name, some_names

_CONV = (nn.modules.conv._ConvNd,)  # convolutions, transposed ones included
_ROOTS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
         nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.PReLU)


class UnsupportedLayerError(ValueError):
    """Raised for a layer whose channels the engine cannot prune safely."""


class PartialGroupedReadError(UnsupportedLayerError):
    """The channels of ``root`` are part of what the grouped convolution ``conv`` reads (a concat
    of several producers' channels feeds it): its groups must keep equal counts across producers,
    which the engine does not do yet (:func:`find_channel_groups` names every such producer at once)."""

    def __init__(self, root: str, conv: str, groups: int):
        self.root, self.conv, self.groups = root, conv, groups
        super().__init__(_partial_grouped_message([root], conv, groups))


def _partial_grouped_message(roots: Sequence[str], conv: str, groups: int) -> str:
    listed = ", ".join(repr(r) for r in roots)
    return (f"the grouped convolution '{conv}' ({groups} groups) reads a concat that holds the channels of {listed}: "
            "pruning them would have to keep every group of its input equally wide across the concat's parts, which "
            f"is not supported yet. Pass [{listed}] in ignored_layers (every layer whose channels that concat joins) "
            "to keep them whole; the other layers are still pruned.")


class ForwardError(ValueError):
    """The model's own ``forward()`` failed on the example input the engine traces it with."""


@dataclass
class GroupSlice:
    """Rows ``index[c]`` along ``dim`` of parameter ``param`` belong to channel ``c``."""

    param: str
    dim: int
    index: torch.Tensor  # [channels, k] long


@dataclass
class ChannelGroup:
    name: str  # the root module: its output channels are this group's channels
    size: int
    slices: list[GroupSlice]
    out_modules: list[str]  # conv/linear/norm modules whose output channels these are
    consumers: list[tuple[str, int]]  # (conv/linear module, input columns per channel)
    #: the consumers' weight rows on the input side: rows ``index[c]`` along ``dim`` of the
    #: consumer's weight read channel ``c`` (a concat offset, or a flatten -> linear expansion)
    inputs: list[GroupSlice] = field(default_factory=list)
    #: per consumer: the norm layers of this group whose outputs reach it through parameter-free
    #: ops only (ReLU, add, cat, pooling, flatten); several for a residual stream (summed)
    feeds: dict[str, list[str]] = field(default_factory=dict)
    #: per consumer: the norm layer its output reaches first through parameter-free ops (the
    #: BN after a conv), or ``None``
    consumer_norm: dict[str, str | None] = field(default_factory=dict)
    #: grouped convolutions (ResNeXt) split these channels into this many equal blocks; a
    #: prune keeps the same positions in every block (:func:`align_blocks`)
    blocks: int = 1
    #: output-side rows of frozen parameters (``requires_grad=False``, or a ``pruning_cost_free``
    #: layer such as a fixed placement): masked and removed with the channel, but not part of its
    #: norm, its regularizer or its importance
    fixed: list[GroupSlice] = field(default_factory=list)

    @property
    def measured(self) -> list[GroupSlice]:
        """The slices that measure the channels: the trainable ones or, in a group whose every
        output row is frozen (a frozen layer pruned on request), the frozen ones."""
        return self.slices or self.fixed

    def norms(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """L2 norm of each channel's :attr:`measured` slices in ``tensors`` (parameter name -> tensor)."""
        return _slice_norms(self.measured, self.size, tensors)

    def input_norms(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
        """L2 norm of each channel's input-side slices (the consumers' weights that read it) in
        ``tensors``; ``None`` where no consumer's columns are mapped (:attr:`inputs` is empty). A
        grouped convolution's weight holds only its block's columns: it is left out."""
        present = self.readable_inputs(tensors)
        return _slice_norms(present, self.size, tensors) if present else None

    def readable_inputs(self, tensors: Mapping[str, torch.Tensor]) -> list[GroupSlice]:
        """The input-side slices whose columns ``tensors`` hold: a grouped convolution's weight
        holds only its block's columns, and is left out."""
        return [s for s in self.inputs if s.param in tensors and int(s.index.max()) < tensors[s.param].shape[s.dim]]

    def scale_(self, tensors: Mapping[str, torch.Tensor], scale: torch.Tensor, fixed: bool = False) -> None:
        """Multiply each channel's slices in ``tensors`` by ``scale[c]``, in place (with ``fixed``,
        the frozen slices too)."""
        for s in self.slices + (self.fixed if fixed else []):
            t = tensors[s.param].movedim(s.dim, 0)
            idx = s.index.reshape(-1).to(t.device)
            factor = scale.to(t.dtype).to(t.device).repeat_interleave(s.index.shape[1])
            t[idx] = t[idx] * factor.view(-1, *([1] * (t.dim() - 1)))


class FlatChannels:
    """Every channel of ``groups`` numbered in one vector, with flat index buffers per parameter:
    each grouped element's position in its tensor and the channel it belongs to. Norms of every
    channel, their sums and the scaling of every channel then take one gather and one scatter per parameter,
    whatever the number of groups and slices (the per-group loop cost ~3 ms per V-step on
    ResNet-56). Built once per set of groups; tensors are looked up by parameter name."""

    def __init__(self, groups: Sequence[ChannelGroup], shapes: Mapping[str, torch.Size],
                 device: torch.device | str = "cpu"):
        self.groups = list(groups)
        self.offsets, total = {}, 0
        for g in self.groups:
            self.offsets[g.name] = total
            total += g.size
        self.channels = total
        self.measured = self._index([(g, s) for g in self.groups for s in g.measured], shapes, device)
        self.scaled = self._index([(g, s) for g in self.groups for s in g.slices], shapes, device)

    def _index(self, pairs, shapes, device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        elems: dict[str, list[torch.Tensor]] = {}
        chans: dict[str, list[torch.Tensor]] = {}
        for g, s in pairs:
            shape = shapes[s.param]
            flat = torch.arange(math.prod(shape)).view(shape).movedim(s.dim, 0)
            rows = flat[s.index.reshape(-1)].reshape(g.size, -1)  # channel c's elements: rows[c]
            elems.setdefault(s.param, []).append(rows.reshape(-1))
            owner = torch.arange(g.size).repeat_interleave(rows.shape[1]) + self.offsets[g.name]
            chans.setdefault(s.param, []).append(owner)
        return {p: (torch.cat(elems[p]).to(device), torch.cat(chans[p]).to(device)) for p in elems}

    def split(self, vector: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per group, its channels' entries of a vector over every channel (views)."""
        return {g.name: vector[self.offsets[g.name]:self.offsets[g.name] + g.size] for g in self.groups}

    def join(self, per_group: Mapping[str, torch.Tensor], device) -> torch.Tensor:
        return torch.cat([per_group[g.name].to(device) for g in self.groups])

    def norms(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The L2 norm of every channel's measured slices (float64, in channel order)."""
        total = None
        for name, (elem, chan) in self.measured.items():
            t = tensors[name]
            sq = t.detach().reshape(-1)[elem.to(t.device)].double().pow(2)
            total = torch.zeros(self.channels, dtype=torch.float64, device=t.device) if total is None else total
            total.index_add_(0, chan.to(t.device), sq)
        return total.sqrt()

    def sums(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The sum of every channel's output-side elements (its ``slices``) in ``tensors``
        (float64, in channel order); a parameter missing from ``tensors`` adds nothing."""
        total = None
        for name, (elem, chan) in self.scaled.items():
            if name not in tensors:
                continue
            t = tensors[name]
            total = torch.zeros(self.channels, dtype=torch.float64, device=t.device) if total is None else total
            total.index_add_(0, chan.to(t.device), t.detach().reshape(-1)[elem.to(t.device)].double())
        return torch.zeros(self.channels, dtype=torch.float64) if total is None else total

    def scale_(self, tensors: Mapping[str, torch.Tensor], scale: torch.Tensor) -> None:
        """Multiply every channel's slices in ``tensors`` by ``scale[channel]``, in place."""
        for name, (elem, chan) in self.scaled.items():
            t = tensors[name]
            factor = scale.to(t.device, t.dtype)[chan.to(t.device)]
            if t.is_contiguous():
                flat = t.view(-1)
                idx = elem.to(t.device)
                flat[idx] = flat[idx] * factor
            else:  # another memory layout (channels_last): ``elem`` counts in the logical order
                where = _coordinates(elem.to(t.device), t.shape)
                t[where] = t[where] * factor


def _coordinates(flat: torch.Tensor, shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
    """The index along each dimension of the elements at ``flat`` positions of a ``shape`` in
    logical (row-major) order, whatever the tensor's memory layout."""
    coords = []
    for size in reversed(shape):
        coords.append(flat % size)
        flat = flat // size
    return tuple(reversed(coords))


def _slice_norms(slices: Sequence[GroupSlice], size: int, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
    total = None
    for s in slices:
        t = tensors[s.param].movedim(s.dim, 0)
        rows = t[s.index.reshape(-1).to(t.device)].reshape(size, -1)
        sq = rows.double().pow(2).sum(1)
        total = sq if total is None else total + sq
    return total.sqrt()


def align_blocks(group: ChannelGroup, mask: torch.Tensor, scores: torch.Tensor | None = None) -> torch.Tensor:
    """``mask`` made valid for a group split into ``group.blocks`` blocks by grouped convolutions:
    the same positions kept in every block, as many per block as the mask keeps on average
    (rounded up). Positions are ranked by how many blocks keep them, then by ``scores`` summed
    over the blocks. Unchanged for ``blocks == 1``."""
    mask = mask.detach().to("cpu", torch.bool).flatten()
    if group.blocks <= 1:
        return mask
    width = group.size // group.blocks
    per_block = max(1, math.ceil(int(mask.sum()) / group.blocks))
    votes = mask.view(group.blocks, width).double().sum(0)
    if scores is not None:
        s = scores.detach().double().cpu().flatten().view(group.blocks, width).sum(0)
        votes = votes + s / (s.abs().max() + 1e-30) * 0.5  # a tie-break below one vote
    keep = torch.zeros(width, dtype=torch.bool)
    keep[torch.sort(votes, descending=True, stable=True).indices[:per_block]] = True
    return keep.repeat(group.blocks)


def build_dependency_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """Trace ``model`` on ``example_inputs``; the model's train/eval mode is left unchanged.

    The graph is read from autograd's record of the forward pass, which skips the operations of
    frozen parameters (``requires_grad=False``) on inputs that need no gradient: a frozen first
    layer would be missing. Every parameter is therefore traced as trainable, and its flag given
    back afterwards."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    # trainable layers that run only with autograd off inside forward() (a reentrant activation
    # checkpoint runs its function so) are missing from that record: found, and refused by name
    # (a layer also run so for a side computation, a logged norm say, is in the record: traced)
    off, names = [], {m: n for n, m in model.named_modules()}

    def note_autograd_off(module, args):
        if not torch.is_grad_enabled() and module in names:
            off.append(module)

    trainable = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
    handles = [m.register_forward_pre_hook(note_autograd_off) for m in trainable]
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad(), eval_mode(model):  # torch-pruning sets eval mode and keeps it
            graph = tp.DependencyGraph().build_dependency(model, example_inputs, verbose=False)
    except Exception as err:  # noqa: BLE001 -- raised again, as what failed: the forward or the tracer
        _explain_trace_failure(model, example_inputs, err)
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for handle in handles:
            handle.remove()
    missing = [names[m] for m in dict.fromkeys(off) if m not in graph.module2node]
    if missing:
        raise UnsupportedLayerError(
            f"layers {some_names(missing)} run with autograd off inside forward() (as "
            "torch.utils.checkpoint.checkpoint(..., use_reentrant=True) runs its function, or torch.no_grad()): the "
            "trace reads autograd's record of the forward, where they are missing, so their channels' dependencies "
            "are unknown. Use use_reentrant=False (torch's recommended setting), or checkpoint only while training "
            "(if self.training: ...; the trace runs in eval mode), and train those layers with autograd on.")
    return graph


def _explain_trace_failure(model: nn.Module, example_inputs, err: Exception) -> NoReturn:
    """The trace failed: :class:`ForwardError` where the model's own forward fails on the input
    too, :class:`UnsupportedLayerError` where it runs and the tracer could not follow it."""
    what = (f"of shape {tuple(example_inputs.shape)}" if isinstance(example_inputs, torch.Tensor)
            else f"(a {type(example_inputs).__name__})")
    try:
        with torch.no_grad(), eval_mode(model):  # called as torch-pruning calls it
            if isinstance(example_inputs, (tuple, list)):
                model(*example_inputs)
            elif isinstance(example_inputs, dict):
                model(**example_inputs)
            else:
                model(example_inputs)
    except Exception as forward_err:
        raise ForwardError(f"the model's forward() failed on the example input {what}: "
                           f"{type(forward_err).__name__}: {forward_err}") from forward_err
    raise UnsupportedLayerError(
        f"the model's forward() runs on the example input {what}, but tracing its channels failed: "
        f"{type(err).__name__}: {err}. An operation in forward() is one the dependency tracer (torch-pruning) "
        "cannot follow, so no layer of this model can be pruned as it is: run that operation outside the module "
        "given to the pruning engine, or report it.") from err


def _output_params(module: nn.Module) -> list[tuple[str, int]]:
    """The (parameter, dim) pairs that hold a module's output channels."""
    out = []
    if isinstance(module, _CONV):
        out.append(("weight", 1 if module.transposed else 0))
    elif isinstance(module, nn.PReLU):  # (one slope for all channels, PReLU's default: it stays as it is)
        if module.num_parameters > 1:
            out.append(("weight", 0))
    elif isinstance(module, nn.Linear) or isinstance(module, _NORM) and getattr(module, "weight", None) is not None:
        out.append(("weight", 0))
    if getattr(module, "bias", None) is not None and not isinstance(module, nn.PReLU):
        out.append(("bias", 0))
    return [(n, d) for n, d in out if getattr(module, n) is not None]


def _out_width(module) -> int | None:
    for attr in ("out_channels", "out_features", "num_features", "num_channels"):
        if isinstance(getattr(module, attr, None), int):
            return getattr(module, attr)
    return None


def declared_ignored_layers(model: nn.Module) -> list[str]:
    """Layers that modules of ``model`` declare unprunable in a ``pruning_ignored_layers``
    attribute (names relative to the declaring module), as names relative to ``model``."""
    found = []
    for prefix, module in model.named_modules():
        for name in getattr(module, "pruning_ignored_layers", ()):
            found.append(f"{prefix}.{name}" if prefix else name)
    return found


def _index_matrix(idxs: Sequence[int], root_idxs: Sequence[int], size: int) -> torch.Tensor:
    rows: list[list[int]] = [[] for _ in range(size)]
    for i, r in zip(idxs, root_idxs):
        rows[int(r)].append(int(i))
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        raise UnsupportedLayerError("channels of a coupled group map to slices of unequal width")
    return torch.tensor(rows, dtype=torch.long)


def _is_depthwise(module) -> bool:
    return isinstance(module, _CONV) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _check_supported(module, name: str, root: str) -> None:
    if isinstance(module, _CONV + (nn.Linear,) + _NORM):
        return
    leave = f"Pass '{root}' in ignored_layers to leave these channels unpruned; the other layers are still pruned."
    if isinstance(module, nn.Parameter):
        raise UnsupportedLayerError(
            f"the parameter '{name}', a bare nn.Parameter used in forward(), is coupled to the output channels of "
            f"'{root}', and the engine cannot cut it with them. {leave}")
    if any(True for _ in module.parameters(recurse=False)):
        raise UnsupportedLayerError(
            f"layer '{name}' ({type(module).__name__}) has parameters of its own on the output channels of '{root}', "
            f"and the engine cannot cut it with them. {leave}")


def check_layers(model: nn.Module, groups: Iterable[ChannelGroup]) -> None:
    """Every layer a group's channels reach can be cut exactly, or an error naming it and what to
    do: the rebuild slices each layer's ``weight`` and ``bias`` as parameters of their own (a weight
    a parametrization or weight norm computes from others is refused), and a norm layer that
    normalizes several channels together (``GroupNorm`` with more than one channel per group,
    ``LayerNorm`` over the channels) would normalize the channels that stay by other statistics once
    some of its channels are gone."""
    modules = dict(model.named_modules())
    groups = list(groups)
    _check_not_tied(groups, _shared_parameters(model))
    for g in groups:
        for name in [*g.out_modules, *(c for c, _ in g.consumers)]:
            if name in modules:
                _check_plain_parameters(modules[name], name, g.name)
                _check_channels_normalized_apart(modules[name], name, g.name)
        for name in g.out_modules:
            module = modules.get(name)
            if isinstance(module, nn.modules.instancenorm._InstanceNorm) and module.track_running_stats:
                raise UnsupportedLayerError(
                    f"layer '{name}' ({type(module).__name__}, track_running_stats=True) normalizes the output "
                    f"channels of '{g.name}' with running statistics, which the rebuild cannot cut with them. Build it "
                    f"with track_running_stats=False (InstanceNorm's default), or pass '{g.name}' in ignored_layers to "
                    "leave these channels unpruned; the other layers are still pruned.")
            if isinstance(module, _CONV) and module.transposed and module.groups > 1:
                raise UnsupportedLayerError(
                    f"layer '{name}' ({type(module).__name__}, groups={module.groups}) is a grouped transposed "
                    "convolution, whose output channels the rebuild cannot cut (its weight holds them per group). "
                    f"Pass '{g.name}' in ignored_layers to leave these channels unpruned; the other layers are "
                    "still pruned.")


def _shared_parameters(model: nn.Module) -> dict[str, list[str]]:
    """Each name of a parameter that several layers hold, or one layer under two of its own names (a
    tied weight), with all its names. One layer reached under several names (``self.backbone =
    self.model.features``, an alias that ``BackboneFinetuning`` or a wrapper makes) is no tie: the
    rebuild cuts the layer once."""
    owners: dict[int, list[str]] = {}
    holders: dict[int, set[tuple[int, str]]] = {}  # (the layer, its name for it): an alias counts once
    for prefix, module in model.named_modules(remove_duplicate=False):
        for name, p in module.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(p), []).append(f"{prefix}.{name}" if prefix else name)
            holders.setdefault(id(p), set()).add((id(module), name))
    return {n: names for key, names in owners.items() if len(holders[key]) > 1 for n in names}


def _check_not_tied(groups: Iterable[ChannelGroup], shared: Mapping[str, list[str]]) -> None:
    """One refusal that names every group whose channels reach a tied layer, so that a user who
    ignores them all once is done (one group named at a time sent them round the tie)."""
    ties: dict[str, list[str]] = {}  # root -> the tied parameters its channels reach
    for g in groups:
        for name in dict.fromkeys([*g.out_modules, *(c for c, _ in g.consumers)]):
            for param in ("weight", "bias"):
                full = f"{name}.{param}" if name else param
                if full in shared:
                    ties.setdefault(g.name, []).append(full)
    if not ties:
        return
    what = "; ".join(f"group '{root}' reaches {some_names(params)}" for root, params in ties.items())
    tied = sorted({n for params in ties.values() for p in params for n in shared[p]})
    raise UnsupportedLayerError(
        f"tied parameters (one tensor held by several layers: {some_names(tied, 8)}) would be untied by the "
        f"rebuild, which gives each layer its own cut tensors ({what}). Pass "
        f"{', '.join(repr(r) for r in sorted(ties))} in ignored_layers to leave these channels unpruned, or untie the "
        "parameters.")


def _check_channels_normalized_apart(module: nn.Module, name: str, root: str) -> None:
    if isinstance(module, nn.GroupNorm) and module.num_groups < module.num_channels:
        what = f"{module.num_groups} groups of {module.num_channels // module.num_groups} channels"
    elif isinstance(module, nn.LayerNorm):
        what = f"normalized_shape {tuple(module.normalized_shape)}"
    else:
        return
    raise UnsupportedLayerError(
        f"layer '{name}' ({type(module).__name__}, {what}) normalizes several channels together: removing some "
        "changes the statistics of those that stay, so the pruned model would not compute what the masked one "
        f"does. Pass '{root}' in ignored_layers to leave these channels whole (BatchNorm, InstanceNorm and "
        "GroupNorm with one channel per group prune exactly).")


def _check_plain_parameters(module: nn.Module, name: str, root: str) -> None:
    own = dict(module.named_parameters(recurse=False))
    for attr in ("weight", "bias"):
        if parametrize.is_parametrized(module, attr):
            how = "a parametrization computes it (torch.nn.utils.parametrize: weight_norm, spectral_norm, ...)"
            fix = f"torch.nn.utils.parametrize.remove_parametrizations(module, {attr!r})"
        elif _masked_by_prune(module, attr):
            how = (f"torch.nn.utils.prune (or Lightning's ModelPruning) masks it: {attr} = {attr}_orig * "
                   f"{attr}_mask, recomputed before each forward")
            fix = f"torch.nn.utils.prune.remove(module, {attr!r}), which keeps the masked values"
        elif attr not in own and getattr(module, attr, None) is not None:
            how = f"it is computed from other parameters ({sorted(own)}: torch.nn.utils.weight_norm?)"
            fix = "torch.nn.utils.remove_weight_norm(module)"
        else:
            continue
        raise UnsupportedLayerError(
            f"layer '{name}' ({type(module).__name__}) has no {attr} parameter of its own: {how}; the rebuild "
            f"slices plain parameters and cannot follow it. Remove it for the pruning ({fix}) and apply it again "
            f"to the pruned model if you need it, or pass '{root}' in ignored_layers to leave the channels that "
            "reach it unpruned.")


def _masked_by_prune(module: nn.Module, attr: str) -> bool:
    """Whether ``torch.nn.utils.prune`` reparametrized ``attr`` (``<attr>_orig`` and a mask hook)."""
    return any(isinstance(hook, prune.BasePruningMethod) and getattr(hook, "_tensor_name", None) == attr
               for hook in module._forward_pre_hooks.values())


def _mapped_by_concat(dg: tp.DependencyGraph, module: nn.Module) -> bool:
    """Whether ``module`` reads a concatenation (torch-pruning maps the channels of each part to
    their offsets) and no padding op on the way (whose channel offsets torch-pruning cannot know):
    a norm layer over a DenseNet-style concat stream holds only part of a group's width."""
    seen, found_concat = set(), False
    stack = list(dg.module2node[module].inputs)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.type == tp.ops.OPTYPE.CONCAT:
            found_concat = True
        elif _is_padding(node):
            return False
        m = node.module
        if isinstance(m, _CONV + (nn.Linear, nn.Parameter) + _NORM):
            continue
        stack.extend(node.inputs)
    return found_concat


def _is_padding(node) -> bool:
    """Whether a traced op node pads (``F.pad``): torch-pruning cannot know its channel offsets."""
    return "pad" in type(node.grad_fn).__name__.lower()


def _joined_to_concat(dg: tp.DependencyGraph, group, item) -> bool:
    """Whether ``item``'s layer holds exactly the channels of a concatenation's output in ``group``
    and its output meets that concat's at an elementwise op (a squeeze-and-excitation gate over a
    concat), so that torch-pruning's concat offsets map them; no padding op in the group."""
    idxs = sorted(map(int, item.idxs))
    concats = []
    for other in group:
        node = other.dep.target
        if _is_padding(node):
            return False
        if (node.type == tp.ops.OPTYPE.CONCAT and dg.is_out_channel_pruning_fn(other.dep.handler)
                and sorted(map(int, other.idxs)) == idxs):
            concats.append(node)
    reached = _reached_elementwise(dg.module2node[item.dep.target.module])
    return any(reached & _reached_elementwise(node) for node in concats)


def _reached_elementwise(node) -> set[int]:
    """The elementwise op nodes (ReLU, sigmoid, unsqueeze, mul, add) ``node``'s output reaches
    through elementwise ops only, as node ids: a slice, a reshape or a layer on the way ends a path."""
    seen, stack = set(), list(node.outputs)
    while stack:
        out = stack.pop()
        if id(out) in seen or out.type != tp.ops.OPTYPE.ELEMENTWISE:
            continue
        seen.add(id(out))
        stack.extend(out.outputs)
    return seen


def _nearest_norms(dg: tp.DependencyGraph, module: nn.Module, forward: bool) -> list[nn.Module]:
    """The norm layers reached from ``module`` (its outputs if ``forward``, else its inputs) through
    parameter-free ops only (ReLU, add, cat, pooling, flatten): the walk stops at any layer with
    parameters."""
    found, seen = [], set()
    stack = list(dg.module2node[module].outputs if forward else dg.module2node[module].inputs)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        m = node.module
        if isinstance(m, _NORM):
            found.append(m)
        elif not (isinstance(m, _CONV + (nn.Linear, nn.Parameter)) or (
                isinstance(m, nn.Module) and any(True for _ in m.parameters(recurse=False)))):
            stack.extend(node.outputs if forward else node.inputs)
    return found


def find_channel_groups(
    model: nn.Module,
    example_inputs,
    ignored_layers: Iterable[str] = (),
    graph: tp.DependencyGraph | None = None,
    check: bool = True,
    unsupported: dict[str, UnsupportedLayerError] | None = None,
    frozen: Collection[str] | None = None,
) -> list[ChannelGroup]:
    """Every prunable group of coupled channels in ``model``.

    ``frozen``: the names of the parameters taken as frozen (:attr:`ChannelGroup.fixed`); by
    default those with ``requires_grad=False`` now.

    ``ignored_layers`` are module names whose output channels must not be pruned (a block or any
    container: every layer in it; added to
    those that modules declare in ``pruning_ignored_layers``); groups whose channels are the
    model's outputs (no conv/linear consumes them: the classifier)
    are never returned. With ``check``, the layers they reach must be ones the rebuild cuts
    exactly (:func:`check_layers`), and a group the engine cannot cut is an
    :class:`UnsupportedLayerError`; without ``check`` such a group is left out (the rebuild cuts only
    the groups of its plan), and its error goes into ``unsupported``, by root layer.

    The model is read in eval mode (given back after): reading a parametrized weight in training
    mode runs its parametrization, and spectral_norm's power iteration would update its buffers.
    """
    with eval_mode(model):
        return _find_channel_groups(model, example_inputs, ignored_layers, graph, check, unsupported, frozen)


def _spans_other_producers(dg: tp.DependencyGraph, group, names: Mapping[nn.Module, str]) -> bool:
    """Whether another layer whose output channels the group cuts holds only part of the root's
    channels (the root's channels are a concat of that layer's and others')."""
    size = len(group[0].idxs)
    return any(dg.is_out_channel_pruning_fn(item.dep.handler) and item.dep.target.module in names
               and len(item.idxs) < size for item in group)


def _lost_consumer(dg: tp.DependencyGraph, group, names: Mapping[nn.Module, str]) -> Exception | None:
    """Where no layer of ``group`` consumes its channels but a conv or linear layer still reads
    what they become, further on in the traced graph: the tracer lost them at an operation it
    does not map (a reshape that sums channel pairs, say), so the group is not the model's
    output. The error names where the trace stopped and a layer behind it; ``None`` otherwise."""
    if any(dg.is_in_channel_pruning_fn(item.dep.handler) and isinstance(item.dep.target.module, _CONV + (nn.Linear,))
           for item in group):
        return None
    in_group = {id(item.dep.target.module) for item in group}
    stack = [(dg.module2node[item.dep.target.module], None) for item in group
             if item.dep.target.module in dg.module2node]
    seen = set()
    while stack:
        node, stop = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for out in node.outputs:
            module = out.module
            if id(module) in in_group:
                stack.append((out, None))
                continue
            where = stop or (type(out.grad_fn).__name__.removesuffix("Backward0") if out.grad_fn is not None
                             else type(module).__name__)
            if isinstance(module, _CONV + (nn.Linear,)) and module in names:
                return ValueError(f"the trace stops at {where!r}, before {names[module]!r} reads them")
            stack.append((out, where))
    return None


def _traced_groups(dg: tp.DependencyGraph, ignored: Sequence[nn.Module], names: Mapping[nn.Module, str],
                   strict: bool, unsupported: dict[str, UnsupportedLayerError] | None):
    """torch-pruning's group of coupled channels rooted at each prunable layer that is not in
    ``ignored`` (as ``DependencyGraph.get_all_groups``, one root at a time, each layer in one
    group). Roots whose channels the tracer cannot follow to their consumers (it fails inside
    torch-pruning: a recurrent layer, a reshape that mixes channels with another dimension) are,
    after the other groups, one :class:`UnsupportedLayerError` that names them all; without
    ``strict`` they are left out, each one's error put in ``unsupported``."""
    skip = {id(m) for m in [*ignored, *dg.IGNORED_LAYERS_IN_TRACING]}
    visited = set()
    failed: dict[str, Exception] = {}
    deferred = []
    # two passes: a layer that spans a concat of other producers (an SE gate over a concat) is a root
    # only where no producer's group took it first, as each producer's group holds its own part of it
    for first_pass, candidates in ((True, list(dg.module2node)), (False, deferred)):
        for module in candidates:
            if id(module) in skip or id(module) in visited or not isinstance(module, _ROOTS):
                continue
            pruner = dg.get_pruner_of_module(module)
            if pruner is None or pruner.get_out_channels(module) is None:
                continue
            try:
                group = dg.get_pruning_group(module, pruner.prune_out_channels,
                                             list(range(pruner.get_out_channels(module))))
            except (IndexError, KeyError, ValueError, TypeError, AttributeError, AssertionError, RuntimeError) as err:
                # inside torch-pruning's index mapping, for an operation it does not map
                failed[names.get(module, type(module).__name__)] = err
                continue
            if first_pass and _spans_other_producers(dg, group, names):
                deferred.append(module)
                continue
            prunable = True
            for dep, _ in group:
                if dg.is_out_channel_pruning_fn(dep.handler):
                    visited.add(id(dep.target.module))
                    prunable = prunable and id(dep.target.module) not in skip
            if not prunable:
                continue
            if (lost := _lost_consumer(dg, group, names)) is not None:
                failed[names.get(module, type(module).__name__)] = lost
                continue
            yield group
    if not failed:
        return
    listed = ", ".join(repr(n) for n in failed)
    first = next(iter(failed.values()))
    error = UnsupportedLayerError(
        f"the output channels of {listed} reach an operation the dependency tracer (torch-pruning) cannot follow to "
        f"their consumers ({type(first).__name__}: {first}), for example a recurrent layer (nn.GRU, nn.LSTM over "
        "conv features) or a reshape that mixes channels with another dimension. Pass "
        f"{listed} in ignored_layers to leave these channels unpruned; the other layers are still pruned.")
    if strict:
        raise error from first
    error.__cause__ = first
    if unsupported is not None:
        unsupported.update(dict.fromkeys(failed, error))


def _channel_group(dg: tp.DependencyGraph, group, modules: Mapping[str, nn.Module], names: Mapping[nn.Module, str],
                   params: Mapping[int, str], frozen: Collection[str] | None = None) -> ChannelGroup | None:
    """One of torch-pruning's groups as a :class:`ChannelGroup` (``None`` for the model's outputs),
    or an :class:`UnsupportedLayerError` naming what the engine cannot cut with it."""
    root = group[0].dep.target.module
    size = len(group[0].idxs)
    slices, out_modules, consumers, inputs, consumer_modules, fixed = [], [], [], [], [], []
    problems = []  # refused only where the group is prunable: channels no layer consumes are never cut
    blocks = 1
    for item in group:
        module = item.dep.target.module
        if module not in names and not isinstance(module, nn.Parameter):
            continue  # an op node (add, cat, flatten): no parameters of its own
        name = names.get(module, "<parameter>")
        try:
            _check_supported(module, params.get(id(module), name), names[root])
        except UnsupportedLayerError as err:
            problems.append(err)
            continue
        if dg.is_out_channel_pruning_fn(item.dep.handler):
            width = _out_width(module)
            if (width is not None and width != len(item.idxs) and not _mapped_by_concat(dg, module)
                    and not _joined_to_concat(dg, group, item)):
                problems.append(UnsupportedLayerError(
                    f"channels of '{names[root]}' are coupled to '{name}' ({width} channels) through an op "
                    f"that changes the channel count in a way the engine cannot map (a slice or an index of the "
                    f"channels, a zero-padding shortcut, a reshape). Pass '{names[root]}' in ignored_layers to leave these "
                    f"channels unpruned."))
                continue
            try:
                index = _index_matrix(item.idxs, item.root_idxs, size)
            except UnsupportedLayerError:
                problems.append(UnsupportedLayerError(
                    f"the {size} channels of '{names[root]}' are coupled to '{name}', whose output holds only "
                    f"{len(item.idxs)} of them, through ops that split and join channels in a way the engine cannot "
                    f"map. Pass '{names[root]}' in ignored_layers to leave these channels unpruned."))
                continue
            out_modules.append(name)
            frozen_layer = bool(getattr(module, "pruning_cost_free", False))
            for pname, dim in _output_params(module):
                full = f"{name}.{pname}" if name else pname
                still = full in frozen if frozen is not None else not getattr(module, pname).requires_grad
                (fixed if frozen_layer or still else slices).append(GroupSlice(full, dim, index))
        if isinstance(module, _CONV) and module.groups > 1 and not _is_depthwise(module):
            blocks = math.lcm(blocks, module.groups)  # grouped conv: equal blocks, in or out
        is_consumer = dg.is_in_channel_pruning_fn(item.dep.handler) and isinstance(module, _CONV + (nn.Linear,))
        if is_consumer and not _is_depthwise(module):  # depthwise: an out dep
            if isinstance(module, _CONV) and module.groups > 1 and len(item.idxs) < module.in_channels:
                problems.append(PartialGroupedReadError(names[root], name, module.groups))  # (one part of a concat)
            consumers.append((name, len(item.idxs) // size))
            consumer_modules.append(module)
            dim = 0 if isinstance(module, _CONV) and module.transposed else 1
            try:
                inputs.append(GroupSlice(f"{name}.weight" if name else "weight", dim,
                                         _index_matrix(item.idxs, item.root_idxs, size)))
            except UnsupportedLayerError:
                pass  # reads only part of the channels (a slice): the rebuild check reports it
    if not consumers:
        return None  # model outputs (the classifier): never pruned
    if problems:
        raise problems[0]
    norms = {modules[n]: n for n in out_modules if isinstance(modules.get(n), _NORM)}
    feeds = {names[m]: sorted({norms[n] for n in _nearest_norms(dg, m, forward=False) if n in norms})
             for m in consumer_modules}
    after = {}
    for m in consumer_modules:  # the one norm after each consumer (None: none, or several)
        following = {names.get(n) for n in _nearest_norms(dg, m, forward=True)}
        after[names[m]] = following.pop() if len(following) == 1 else None
    if size % blocks:
        raise UnsupportedLayerError(f"the {size} channels of '{names[root]}' do not split into the {blocks} blocks "
                                    "of the grouped convolutions they reach; pass it in ignored_layers")
    return ChannelGroup(names[root], size, slices, out_modules, consumers, inputs, feeds, after, blocks, fixed)


def _closest_name(name: str, modules: Mapping[str, nn.Module]) -> str | None:
    """The module name ``name`` most likely meant: the one it ends (``conv3`` for ``net.conv3``, the
    training module's prefix left out), or the closest spelling."""
    ends = [n for n in modules if n.endswith("." + name)]
    return ends[0] if len(ends) == 1 else closest_name(name, [n for n in modules if n])


def _find_channel_groups(model: nn.Module, example_inputs, ignored_layers: Iterable[str],
                         graph: tp.DependencyGraph | None, check: bool,
                         unsupported: dict[str, UnsupportedLayerError] | None,
                         frozen: Collection[str] | None = None) -> list[ChannelGroup]:
    modules = dict(model.named_modules())
    ignored_names = list(ignored_layers) + declared_ignored_layers(model)
    unknown = [n for n in ignored_names if n not in modules]
    if unknown:
        hints = "".join(f" ({n!r}: did you mean {close!r}?)" for n in unknown if (close := _closest_name(n, modules)))
        raise ValueError(f"ignored_layers: no module named {unknown} in the model{hints}; "
                         f"module names look like {list(modules)[1:6]}")
    dg = graph if graph is not None else build_dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    groups = []
    # a block or any container stands for every layer in it
    ignored = [m for n in ignored_names for m in modules[n].modules()]
    params = {id(p): n for n, p in model.named_parameters()}
    partial: dict[str, list[PartialGroupedReadError]] = {}  # by grouped conv: every part of its concat, named at once
    for group in _traced_groups(dg, ignored, names, strict=check, unsupported=unsupported):
        try:
            built = _channel_group(dg, group, modules, names, params, frozen)
        except PartialGroupedReadError as err:
            partial.setdefault(err.conv, []).append(err)
            continue
        except UnsupportedLayerError as err:
            if check:
                raise
            if unsupported is not None:
                unsupported[names[group[0].dep.target.module]] = err
            continue
        if built is not None:
            groups.append(built)
    order = list(modules)
    for conv, parts in partial.items():  # every part of the concat named, wherever the error is given
        roots = sorted({e.root for e in parts}, key=order.index)
        error = UnsupportedLayerError(_partial_grouped_message(roots, conv, parts[0].groups))
        if check:
            raise error
        if unsupported is not None:
            unsupported.update(dict.fromkeys(roots, error))
    if check:
        check_layers(model, groups)
    return groups


def unseen_readers(model: nn.Module, example_inputs, groups: Sequence[ChannelGroup],
                   ignored_layers: Iterable[str] = (), trained: set[int] | None = None) -> list[str]:
    """Warnings (best effort) of trainable conv or linear layers that ``forward()`` does not use, traced in
    eval mode on ``example_inputs`` (an auxiliary head or a discriminator that only ``training_step``
    uses, a head forward() calls only in training mode), whose input is as wide as a prunable
    group or a flattened multiple of one: the trace cannot see what they read, and if they read
    those channels, their first use after the prune fails. A layer counts as used where its
    weight reaches the output in the autograd graph (a functional call of ``layer.weight`` too).
    Not concerned: layers in ``ignored_layers`` (or a ``pruning_ignored_layers`` declaration: said
    to read no pruned channel), frozen ones, and, with ``trained`` (the ids of the parameters the
    optimizers hold), ones no optimizer trains (a teacher, an average)."""
    modules = dict(model.named_modules())
    ignored = {m for n in [*ignored_layers, *declared_ignored_layers(model)] if n in modules
               for m in modules[n].modules()}
    candidates = []
    for name, module in modules.items():
        if module in ignored or not isinstance(module, (_CONV, nn.Linear)):
            continue
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or not weight.requires_grad:
            continue  # (a frozen copy: a teacher, an average)
        if trained is not None and id(weight) not in trained:
            continue  # (trained by nothing this run steps)
        width = module.in_features if isinstance(module, nn.Linear) else module.in_channels
        same = [g.name for g in groups if g.size == width or (isinstance(module, nn.Linear) and width % g.size == 0
                                                                and width // g.size > 1)]
        if same:
            candidates.append((name, module, width, same))
    if not candidates:
        return []
    used = _parameters_reaching_the_output(model, example_inputs)
    out = []
    for name, module, width, same in candidates:
        if id(module.weight) in used:
            continue
        same.sort(key=lambda n: next(g.size for g in groups if g.name == n) != width)  # same width first
        readers = some_names([f"'{n}'" for n in same])
        out.append(
            f"layer '{name}' ({type(module).__name__}, {width} inputs) trains, but forward() did not use it when the "
            f"engine traced it (in eval mode, on one input), so the trace cannot see what it reads. If training_step "
            f"feeds it the channels of {'' if len(same) == 1 else 'one of '}{readers}, the prune cuts them and its "
            f"first use after the prune fails: call it in forward(), or keep those channels whole (that layer in "
            f"ignored_layers, e.g. ignored_layers=[{same[0]!r}]). If it reads none of them, pass '{name}' in "
            "ignored_layers to say so.")
    return out


def _parameters_reaching_the_output(model: nn.Module, example_inputs) -> set[int]:
    """The ids of the parameters whose values reach ``model``'s outputs (one forward, in eval mode,
    with gradients recorded, the autograd graph walked back to its leaves)."""
    with eval_mode(model), torch.enable_grad():
        out = model(example_inputs)
    roots = [t.grad_fn for t in _tensors(out) if t.grad_fn is not None]
    seen, used = set(), set()
    while roots:
        fn = roots.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)  # AccumulateGrad: a leaf, a parameter
        if variable is not None:
            used.add(id(variable))
        roots.extend(next_fn for next_fn, _ in fn.next_functions)
    return used


def _tensors(value) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, Mapping):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


