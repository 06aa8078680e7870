"""One checkpoint format and one loader for pruned models.

Every pruned checkpoint is a mapping with ``"state_dict"`` (the weights of the pruned
module) and ``"pruning_plan"`` (:meth:`PruningPlan.to_dict`: plain data). Lightning
checkpoints written while the :class:`~lightning_ssr.Pruning` callback runs have this shape,
and so does the CLI's ``pruned.pt`` (written by :func:`save_pruned`). Both load with
``torch.load(weights_only=True)`` and through :func:`load_pruned`, or with
``YourModule.load_from_checkpoint`` when the module mixes in :class:`PrunedCheckpointMixin`.
"""

from __future__ import annotations

import functools
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from .files import atomic_write
from .structure.groups import ForwardError
from .structure.plan import (
    NOT_BUILT_YET,
    PLAN_CHECKPOINT_KEY,
    PlanMismatchError,
    PruningPlan,
    applied_plan,
)
from .structure.surgery import apply_plan, fill_placeholder_values, has_usable_values, restore_modules, snapshot_modules
from .validation import some_names


class _class_only:
    """A classmethod that refuses a call on an instance, as Lightning's ``load_from_checkpoint``
    does: ``model.load_from_checkpoint(path)`` returns a new module and leaves ``model`` as it was."""

    def __init__(self, func):
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, instance, owner=None):
        owner = owner if owner is not None else type(instance)

        @functools.wraps(self.func)
        def call(*args, **kwargs):
            if instance is not None:
                raise TypeError(f"The classmethod `{owner.__name__}.{self.func.__name__}` cannot be called on an "
                                "instance: call it on the class, and use the module it returns")
            return self.func(owner, *args, **kwargs)

        return call


class CheckpointReadError(RuntimeError):
    """A checkpoint, ``pruned.pt`` or plan file that cannot be read."""


_JSON_WHY = ("it is a JSON file (a result.json?), not a torch checkpoint: the CLI writes the pruned model beside its "
             "result.json, as pruned.pt")


def _head(path) -> bytes:
    """A file's first bytes, leading whitespace stripped: enough to tell JSON and zip archives apart."""
    with open(path, "rb") as f:
        return f.read(64).lstrip()


def checkpoint_damage(path) -> str | None:
    """Why a zip checkpoint's bytes are not the ones written (an entry whose CRC fails: a disk,
    copy or transfer error that torch.load does not notice, loading the changed weights), or
    ``None``. Reads the whole file once; a file that is not a zip archive is left to torch."""
    if not _head(path).startswith(b"PK"):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            for entry in archive.infolist():
                # (torch.serialization.set_crc32_options(False) writes 0 for every CRC: not recorded)
                if entry.CRC == 0 and entry.file_size > 0:
                    continue
                try:
                    with archive.open(entry) as data:  # (the CRC is compared as the entry's end is read)
                        while data.read(1 << 24):
                            pass
                except zipfile.BadZipFile as err:
                    if "CRC" not in str(err):
                        raise
                    return (f"it is corrupted: its entry {entry.filename!r} fails the archive's CRC check (its bytes "
                            "changed after it was written: a disk, copy or transfer error). Use another checkpoint "
                            "or re-create it")
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        return f"its archive is damaged ({type(err).__name__}: {err})"
    return None


@functools.lru_cache(maxsize=8)
def _damage_of(path: str, inode: int, size: int, mtime_ns: int) -> str | None:
    return checkpoint_damage(path)


def refuse_damaged_checkpoint(path) -> None:
    """A :class:`CheckpointReadError` naming ``path`` where the local file is a checkpoint whose
    bytes changed after it was written (:func:`checkpoint_damage`); each version of a file is
    read once however often it is asked (a resume asks before the module and the callback load)."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        return
    stat = os.stat(path)
    damage = _damage_of(str(Path(path).resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if damage is not None:
        raise CheckpointReadError(f"checkpoint file {str(path)!r} is unreadable: {damage}")


def check_checkpoint_file(path) -> None:
    """Before Lightning loads ``path`` (``load_from_checkpoint``), or after its loading failed
    (``fit(ckpt_path=...)``): a local file that is a damaged checkpoint is a
    :class:`CheckpointReadError` naming it, where torch's own error (``OSError: [Errno 22] Invalid
    argument`` or a ``RuntimeError``, by where the file was cut) names nothing. Nothing is loaded:
    a checkpoint is a zip archive, whose directory is at its end, so a file that begins as one and
    has none was cut short, and one whose entries fail their CRC was changed after it was written.
    An empty file and a JSON file are named too; anything else (a legacy pickled checkpoint, a
    remote path, a file object, a missing file) is left to Lightning."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        return
    head = _head(path)
    if not head:
        why = "it is empty (a save that was interrupted?). Use another checkpoint"
    elif head[:1] in (b"{", b"["):
        why = _JSON_WHY
    elif head.startswith(b"PK") and not zipfile.is_zipfile(path):
        why = "it is truncated: a zip archive without its directory, at its end. Use another checkpoint or re-create it"
    else:
        refuse_damaged_checkpoint(path)
        return
    raise CheckpointReadError(f"checkpoint file {str(path)!r} is unreadable: {why}")


def read_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` with an error that names the file when it is
    missing, truncated, corrupted (an entry whose CRC fails) or not a checkpoint."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointReadError(f"checkpoint file {str(path)!r} is a directory: give the checkpoint file in it "
                                  "(the CLI's pruned.pt, or a Lightning .ckpt)")
    if not path.is_file():
        raise CheckpointReadError(f"checkpoint file {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zip/pickle errors differ by how the file is damaged
        if _head(path)[:1] in (b"{", b"["):
            why = _JSON_WHY
        elif "Weights only load failed" in str(err) and (_head(path)[:2] == b"PK" or _head(path)[:1] == b"\x80"):
            # (a zip, torch's format, or a pickle: a file torch wrote, with objects it will not unpickle)
            why = ("it holds objects other than tensors and plain data (a whole module saved with torch.save(model)?), "
                   "which torch.load(weights_only=True) does not unpickle: save the module's state_dict, or "
                   "lightning_ssr.save_pruned(module, path, plan)")
        else:
            check_checkpoint_file(path)  # (empty, or cut short: said as such)
            why = ("it is truncated, corrupted or not a torch checkpoint. Use another checkpoint or re-create it "
                   f"({type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]})")
        raise CheckpointReadError(f"checkpoint file {str(path)!r} is unreadable: {why}") from err
    refuse_damaged_checkpoint(path)
    if not isinstance(data, Mapping):
        raise CheckpointReadError(f"checkpoint file {str(path)!r} holds a {type(data).__name__}, not a mapping "
                                  "with 'state_dict'")
    return data


def saved_model_kind(data: Mapping) -> str | None:
    """What a file :func:`save_pruned` wrote holds, as a message names it; ``None`` for any other
    file (no ``pruning_plan`` entry). A file without a plan holds an unpruned model: the command's
    cache of dense models (which keeps its ``config``) or a run's ``pruned.pt`` of ``pruning=none``
    (it was called a pruned model: probe)."""
    if PLAN_CHECKPOINT_KEY not in data:
        return None
    if data[PLAN_CHECKPOINT_KEY] is not None:
        return "a pruned model (save_pruned's file, as a run's pruned.pt)"
    if "config" in data:
        return "a dense model the command cached (dense.cache_dir)"
    return "a model saved unpruned (save_pruned without a plan, as the pruned.pt of a run with pruning=none)"


def failed_load_reason(path, stage: str | None = None) -> str | None:
    """Why loading the local file ``path`` failed, where torch's or Lightning's error names
    neither the file nor what to do (a zip whose directory was changed: ``RuntimeError:
    PytorchStreamReader failed``; a pruned model given to ``fit(ckpt_path=...)``: ``KeyError:
    'pytorch-lightning_version'``); ``None`` where the file reads as a checkpoint of a fit (the
    failure was elsewhere) or is not a local file. ``stage``: the Trainer's (``"fit"``, ``"test"``,
    ...) that was given the file as ``ckpt_path``. Reads the whole file: for a load that failed."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        return None
    try:
        check_checkpoint_file(path)
        data = read_checkpoint(path)
    except CheckpointReadError as err:
        return str(err)
    if stage is not None and "pytorch-lightning_version" not in data:
        made = saved_model_kind(data) or "a state dict"
        then = "start a new fit without ckpt_path" if stage == "fit" else f"call {stage}(module) without ckpt_path"
        return (f"checkpoint file {str(path)!r} is {made}, not a Lightning checkpoint of a fit: {stage}(ckpt_path=...) "
                "reads a checkpoint a fit wrote (ModelCheckpoint's). Load a pruned model's weights with "
                f"lightning_ssr.load_pruned(fresh_module, path) and {then}")
    return None


def save_pruned(module: nn.Module, path: str | os.PathLike, plan: PruningPlan | Mapping | None = None,
                **extra) -> Path:
    """Write ``{"state_dict", "pruning_plan", **extra}`` for ``module``, atomically. ``plan``: by
    default the one ``module`` was rebuilt with (by the callback, ``prune_oneshot``,
    ``apply_plan`` or a load). The plan's layer names are made relative to ``module``: the
    callback's plan (of the LightningModule, e.g. ``net.c1``) saved with the network inside it
    (``c1``) loses the network's prefix, and the other way round. A plan that names layers
    ``module`` does not have, or is not the one ``module`` was rebuilt with, is refused before
    anything is written (the file would not load)."""
    recorded = applied_plan(module)
    if plan is None:
        plan = recorded
    elif not isinstance(plan, PruningPlan):
        plan = PruningPlan.from_dict(plan)
    if plan is not None:
        try:
            plan = _relative_to(plan, {}, module)[0]
        except PlanMismatchError:
            raise PlanMismatchError(
                f"save_pruned: the plan names layers {some_names(list(plan.kept), 3)}, which this "
                f"{type(module).__name__} does not have, with or without a common prefix: give it the module "
                "the plan was made on (the LightningModule the callback pruned), or the network inside it") from None
        if recorded is not None and (recorded.kept, recorded.sizes) != (plan.kept, plan.sizes):
            differ = sorted(n for n in set(plan.kept) | set(recorded.kept)
                            if (plan.kept.get(n), plan.sizes.get(n)) != (recorded.kept.get(n), recorded.sizes.get(n)))
            raise PlanMismatchError(
                f"save_pruned: the plan given is not the one this {type(module).__name__} was rebuilt with (they differ "
                f"in {some_names(differ, 3)}): the file would not load. Leave out the plan (save_pruned(module, path)) "
                "to save the one the module carries; a plan of an earlier prune, or one counted from the widths a "
                "prune left, is not it")
    data = plan.to_dict() if plan is not None else None
    payload = {"state_dict": module.state_dict(), PLAN_CHECKPOINT_KEY: data, **extra}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def _relative_to(plan: PruningPlan, state_dict: Mapping[str, torch.Tensor], model: nn.Module):
    """Map the plan's layer names and the state-dict keys onto ``model``: strip a common prefix
    (e.g. ``"model."``) when the checkpoint was saved from the module that holds ``model``, add
    the one of the network inside ``model`` when it was saved from that network."""
    names = {n for n, _ in model.named_modules()}
    roots = list(plan.kept)
    if all(r in names for r in roots):
        return plan, dict(state_dict)
    for root in roots:
        for cut in range(root.count(".") + 1):
            prefix = ".".join(root.split(".")[: cut + 1]) + "."
            if all(r.startswith(prefix) and r[len(prefix):] in names for r in roots):
                # (the weights of the network itself beside the plan of the module that held it: a file
                # save_pruned wrote before it made the plan relative to the module it saved)
                sd = ({k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
                      if any(k.startswith(prefix) for k in state_dict) else dict(state_dict))
                return plan.renamed(lambda r, p=prefix: r.removeprefix(p)), sd
    def holders_of(inner: list[str]) -> list[str]:
        return sorted(p for p in {n[: -len(inner[0])] for n in names if n.endswith("." + inner[0])}
                      if all(p + r in names for r in inner))

    # saved from the network that ``model`` holds (save_pruned(net, ...) loaded into its LightningModule)
    holders = holders_of(roots)
    if len(holders) == 1:
        return plan.renamed(lambda r, p=holders[0]: p + r), {holders[0] + k: v for k, v in state_dict.items()}
    # saved from a module that holds the network under another name (the command's ``model.`` into a
    # LightningModule's ``net.``: "saved from another architecture", said of the same network: probe)
    for cut in range(roots[0].count(".") if not holders else 0):
        prefix = ".".join(roots[0].split(".")[: cut + 1]) + "."
        if all(r.startswith(prefix) for r in roots):
            inner = holders_of([r[len(prefix):] for r in roots])
            if len(inner) == 1:
                return (plan.renamed(lambda r, p=prefix, q=inner[0]: q + r.removeprefix(p)),
                        {inner[0] + k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)})
    if holders:
        raise PlanMismatchError(f"the checkpoint was saved from a network that this model holds {len(holders)} times "
                                f"({', '.join(h.rstrip('.') for h in holders)}): load it into the one it belongs to, "
                                f"e.g. load_pruned(model.{holders[0].rstrip('.')}, path)")
    if not any(p.dim() > 1 for p in model.parameters()):  # no layer at all yet
        raise PlanMismatchError(
            f"the checkpoint's pruning plan names layers {some_names(roots, 3)}, and this {type(model).__name__} has "
            f"no layers yet: {NOT_BUILT_YET}")
    raise PlanMismatchError(f"the checkpoint's pruning plan names layers {some_names(roots, 3)}, which this model "
                            "does not have (with or without a common prefix): it was saved from another architecture")


def _strip_key_prefix(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict:
    """Without a plan: strip the prefix (e.g. ``"model."``) that maps the keys onto ``model``'s."""
    own = set(model.state_dict())
    if own <= set(state_dict) or not state_dict:
        return dict(state_dict)
    first = next(iter(state_dict))
    for cut in range(first.count(".")):
        prefix = ".".join(first.split(".")[: cut + 1]) + "."
        stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if own <= set(stripped):
            return stripped
    return dict(state_dict)


BUILT_OTHERWISE = ("construct the model as the saved one was (the same architecture and arguments: input "
                   "channels, image size, number of classes, widths)")


def weights_mismatch(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "the checkpoint",
                     planned: bool = False, strict: bool = True) -> PlanMismatchError | None:
    """Why ``state_dict`` does not load into ``model`` as it is (after the checkpoint's plan, where
    ``planned``), or ``None`` where it does: keys it lacks or holds beyond the model's (with
    ``strict``), or tensors of other shapes. Said before loading, since torch's ``load_state_dict``
    copies the tensors that fit before it fails on the others. ``source``: the file, as named."""
    own = model.state_dict()
    lacking, extra = (sorted(set(own) - set(state_dict)), sorted(set(state_dict) - set(own))) if strict else ([], [])
    if lacking or extra:
        said = "; ".join(part for part in (
            f"it lacks {some_names(lacking, 3)}" if lacking else "",
            f"it holds {some_names(extra, 3)}, which this model has not" if extra else "") if part)
        return PlanMismatchError(f"{source} holds the weights of another network ({said}): it was not saved from "
                                 f"this model; {BUILT_OTHERWISE}")
    differ = [(k, v.shape, own[k].shape) for k, v in state_dict.items()  # (a lazy one takes the checkpoint's)
              if k in own and torch.is_tensor(v) and torch.is_tensor(own[k]) and not is_lazy(own[k])
              and v.shape != own[k].shape]
    if not differ:
        return None
    mismatches = "; ".join(f"size mismatch for {k}: {tuple(theirs)} in the checkpoint, {tuple(ours)} in this model"
                           for k, theirs, ours in differ[:2])
    if planned:
        return PlanMismatchError(f"{source} holds weights of other shapes than this model after the plan "
                                 f"({mismatches}): {BUILT_OTHERWISE}")
    if all(len(a) == len(b) and all(x >= y for x, y in zip(a, b)) for _, a, b in differ):
        # (the model may be the pruned one; or one built smaller)
        pruned = applied_plan(model) is not None  # (it carries a plan: pruned, for certain)
        return PlanMismatchError(
            f"{source} holds no pruning plan, and weights larger than this model's ({mismatches}): " + (
                "this model was pruned already, and the checkpoint was saved before a prune (a dense model). Load it "
                "into a freshly constructed model" if pruned else
                "was this model pruned already (the checkpoint saved before a prune)? Then load it into a freshly "
                f"constructed model; else {BUILT_OTHERWISE}"))
    return PlanMismatchError(
        f"{source} holds no pruning plan, and weights of other shapes than this model ({mismatches}): it was saved "
        "from a pruned model without its plan (a checkpoint of a fit without the Pruning callback, or one of "
        "ModelCheckpoint(save_weights_only=True), which no callback can write the plan into). Save a pruned "
        "model with lightning_ssr.save_pruned(model, path, plan), or mix PrunedCheckpointMixin into the "
        f"LightningModule, so that its checkpoints keep the plan; or, if it is not pruned, {BUILT_OTHERWISE}")


def load_pruned(model: nn.Module, checkpoint, strict: bool = True) -> nn.Module:
    """Load a pruned checkpoint into a freshly constructed (unpruned) ``model``, in one call.

    ``checkpoint`` is a path or an already loaded mapping in the format above (a Lightning
    checkpoint or the CLI's ``pruned.pt``). ``model`` may be the LightningModule or the
    network inside it: a prefix such as ``"model."`` is stripped or added. A model already
    pruned with this plan (or with an earlier plan of the same fit) takes the rest of it. If anything fails (another
    architecture, missing keys, a damaged file), the error says so and ``model`` is left
    exactly as it was.
    """
    source = "the checkpoint"
    if not isinstance(checkpoint, Mapping):
        source = repr(str(checkpoint))
        checkpoint = read_checkpoint(checkpoint)
    if "state_dict" not in checkpoint:
        bare = bool(checkpoint) and all(torch.is_tensor(v) for v in checkpoint.values())
        why = (": it is a bare state_dict (torch.save(model.state_dict())), which holds no pruning plan to rebuild "
               "the pruned shapes from. Save a pruned model with lightning_ssr.save_pruned(model, path, plan) (the "
               "plan: prune_oneshot's return value, or the callback's or engine's .plan)" if bare else "")
        raise CheckpointReadError(f"{source} has no 'state_dict' entry (keys: {sorted(checkpoint)[:6]}){why}")
    state_dict = checkpoint["state_dict"]
    if not isinstance(state_dict, Mapping):
        raise CheckpointReadError(f"{source}'s 'state_dict' is a {type(state_dict).__name__}, not the mapping of "
                                  "tensor names to tensors that module.state_dict() returns")
    data = checkpoint.get(PLAN_CHECKPOINT_KEY)
    snapshot = snapshot_modules(model)
    plan = None
    try:
        if data is not None:
            plan = data if isinstance(data, PruningPlan) else PruningPlan.from_dict(data)
            plan, state_dict = _relative_to(plan, state_dict, model)
            rebuild_to(model, plan)  # (a model this plan, or an earlier one of it, pruned already: the rest)
        else:
            state_dict = _strip_key_prefix(state_dict, model)
        mismatch = weights_mismatch(model, state_dict, source, planned=plan is not None, strict=strict)
        if mismatch is not None:  # (torch would load the tensors that fit, then fail)
            raise mismatch
        model.load_state_dict(state_dict, strict=strict)
    except Exception as err:
        restore_modules(snapshot)
        if isinstance(err, PlanMismatchError) and source != "the checkpoint" and source not in str(err):
            raise PlanMismatchError(f"{source}: {err}") from err  # (the file named: which one did not fit)
        if isinstance(err, ForwardError) and plan is not None:
            raise PlanMismatchError(f"{source}: its pruning plan was traced on inputs of shape "
                                    f"{tuple(plan.input_shape)}, and this model's forward() failed on them ({err}): "
                                    f"{BUILT_OTHERWISE}") from err
        raise
    return model


def apply_checkpoint_plan(module: nn.Module, checkpoint: Mapping, source: str = "the checkpoint",
                          strict: bool | None = None) -> None:
    """Rebuild ``module`` into the shapes of the plan stored in ``checkpoint``, if any, before its
    weights load. A module already rebuilt with the same plan is left alone; one rebuilt with an
    earlier plan that the checkpoint's continues (a later pruning fit of it) takes the rest
    (:meth:`PruningPlan.after`); any other plan is refused, and so is a checkpoint of other shapes
    without a plan (the dense model's) for a module already pruned, or weights that do not fit the
    module (:func:`weights_mismatch`): then ``module`` is left as it was. ``source``: the file, as
    the error names it; ``strict``: whether the load will refuse missing or unexpected keys (by
    default the module's ``strict_loading``, as Lightning's restore of a fit; ``False``: the
    shapes only)."""
    data = checkpoint.get(PLAN_CHECKPOINT_KEY)
    state_dict = checkpoint.get("state_dict")
    strict = getattr(module, "strict_loading", True) if strict is None else strict
    if data is not None:
        try:  # (the file named: a plan of another network said which layer, not where it came from)
            plan = PruningPlan.from_dict(data)
            current = applied_plan(module)
            snapshot = None if current is not None and (current.kept, current.sizes) == (plan.kept, plan.sizes) \
                else snapshot_modules(module)  # (a module at this plan already is left alone: nothing to undo)
            rebuild_to(module, plan)
        except PlanMismatchError as err:
            raise PlanMismatchError(f"{source}: {err}") from err
        mismatch = weights_mismatch(module, state_dict, source, planned=True, strict=strict) if state_dict else None
        if mismatch is not None:
            if snapshot is not None:
                restore_modules(snapshot)
            raise mismatch
        return
    if applied_plan(module) is not None:  # a pruned module, a checkpoint without a plan: from before the prune?
        own = module.state_dict()
        other = next(((k, v) for k, v in (checkpoint.get("state_dict") or {}).items()
                      if k in own and torch.is_tensor(v) and v.shape != own[k].shape), None)
        if other is not None:  # (torch would load the tensors whose shapes match, then fail)
            raise PlanMismatchError(
                f"{source} holds no pruning plan and other shapes than this pruned module ({other[0]}: "
                f"{tuple(other[1].shape)}, the module's {tuple(own[other[0]].shape)}): it was saved before the prune "
                "(the dense model). Load it into a freshly constructed module, e.g. "
                f"trainer.{_call_of(source)}(YourModule(), ckpt_path=...)")
    mismatch = weights_mismatch(module, state_dict, source, strict=strict) if state_dict else None
    if mismatch is not None:  # (torch would load the tensors whose shapes match, then fail)
        raise mismatch


def _call_of(source: str) -> str:
    """The Trainer call a :func:`restored_from` source names (``"test"`` of ``test(ckpt_path=...)``);
    ``validate`` where it names none."""
    call = source.partition("(ckpt_path=")[0]
    return call if call in ("fit", "validate", "test", "predict") else "validate"


def restored_from(trainer) -> str:
    """The call that restores a checkpoint, as an error names it: ``fit(ckpt_path='...')``."""
    call = trainer.state.fn.value if trainer.state.fn else "fit"
    return f"{call}(ckpt_path={str(trainer.ckpt_path)!r})"


def rebuild_to(module: nn.Module, target: PruningPlan) -> None:
    """Rebuild ``module`` into the shapes of ``target`` before values are loaded into it
    (:func:`apply_plan`: a module at its constructed shapes takes the whole plan, one rebuilt with
    an earlier plan that ``target`` continues takes the rest, one already at ``target`` is left
    alone; any other is refused). A module of uninitialized values (built under Lightning's
    ``init_module(empty_init=True)``) is given placeholder values first
    (:func:`fill_placeholder_values`), which the load replaces: the rebuild is checked on them."""
    ref = next(module.parameters(), None)
    current = applied_plan(module)
    snapshot = None
    if ref is not None and not ref.is_meta and (current is None or (current.kept, current.sizes) != (
            target.kept, target.sizes)):
        example = torch.zeros(target.input_shape, dtype=ref.dtype, device=ref.device)
        if not has_usable_values(module, example):
            snapshot = snapshot_modules(module)  # (a failed rebuild gives the module back as it was)
            fill_placeholder_values(module, only_non_finite=True)  # (what a strict=False load leaves: the module's)
            if not has_usable_values(module, example):  # (finite values that overflow: uninitialized memory)
                fill_placeholder_values(module)
    try:
        apply_plan(module, target, strict=True)
    except BaseException:
        if snapshot is not None:
            restore_modules(snapshot)
        raise


class PrunedCheckpointMixin:
    """Mix into a LightningModule so that ``YourModule.load_from_checkpoint(path)`` rebuilds
    the pruned shapes from the checkpoint's plan before the weights load::

        class LitNet(PrunedCheckpointMixin, pl.LightningModule): ...

        model = LitNet.load_from_checkpoint("last.ckpt")  # in any process, no callback needed

    The module also writes the plan it was rebuilt with into every checkpoint it is saved in,
    weights-only ones included (``ModelCheckpoint(save_weights_only=True)``), for which Lightning
    calls no callback's ``on_save_checkpoint``, so that the callback cannot write it there.

    Without the mixin, use :func:`load_pruned` on a fresh module. Resuming ``fit`` needs
    neither: the :class:`~lightning_ssr.Pruning` callback rebuilds the model itself.
    """

    @_class_only  # as Lightning's: model.load_from_checkpoint(path) on an instance is a TypeError
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's, with a damaged file named (:func:`check_checkpoint_file`) first, and after
        a failed load where torch's error does not name it (:func:`failed_load_reason`)."""
        check_checkpoint_file(checkpoint_path)
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        except PlanMismatchError as err:  # (the hook that raised it knows no file: named here)
            named = repr(str(checkpoint_path))
            if named in str(err) or not isinstance(checkpoint_path, (str, os.PathLike)):
                raise
            # ("the checkpoint: the pruning plan ...", the hook's words, becomes "'<file>': the pruning plan ...")
            raise PlanMismatchError(f"{named}: {str(err).removeprefix('the checkpoint: ')}") from err
        except (RuntimeError, OSError, EOFError, KeyError) as err:
            if isinstance(err, KeyError) and err.args == ("pytorch-lightning_version",):  # (save_pruned's file)
                raise CheckpointReadError(
                    f"{str(checkpoint_path)!r} is not a Lightning checkpoint (it holds no 'pytorch-lightning_version': "
                    f"save_pruned or torch.save wrote it): load it with lightning_ssr.load_pruned({cls.__name__}(...), "
                    f"{str(checkpoint_path)!r}), which reads both") from err
            reason = None if isinstance(err, CheckpointReadError) else failed_load_reason(checkpoint_path)
            if reason is None:
                raise
            raise CheckpointReadError(reason) from err

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        plan = applied_plan(self)
        if plan is not None:
            checkpoint[PLAN_CHECKPOINT_KEY] = plan.to_dict()
        super().on_save_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        trainer = getattr(self, "_trainer", None)  # a fit(ckpt_path=...): its file read whole before the rebuild
        source, strict = "the checkpoint", False  # (load_from_checkpoint(strict=...) is not told to this hook)
        if trainer is not None:
            refuse_damaged_checkpoint(trainer.ckpt_path)
            if trainer.ckpt_path is not None:  # (a Trainer's restore loads with the module's strict_loading)
                source, strict = restored_from(trainer), None
        apply_checkpoint_plan(self, checkpoint, source, strict)
        super().on_load_checkpoint(checkpoint)
