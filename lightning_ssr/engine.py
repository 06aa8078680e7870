"""The pruning engine: schedule, method calls, the rebuild, optimizer remapping, state and the
result, in plain PyTorch. The :class:`~lightning_ssr.Pruning` callback drives it from Lightning's
hooks; a hand-written training loop drives it the same way::

    engine = PruningEngine("ssr_l20", target={"macs": 0.25}, schedule=PruningSchedule(...))
    step = 0
    for epoch in range(engine.schedule.total_epochs):
        for x, y in data:
            engine.on_batch_start(model, x, epoch=epoch, step=step, optimizers=[optimizer])
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            engine.on_before_optimizer_step()
            optimizer.step()
            step += 1
            engine.on_batch_end(step=step)
        engine.on_epoch_end(model, epoch=epoch, step=step, optimizers=[optimizer],
                            max_epochs=engine.schedule.total_epochs)
    result = engine.finish(model)

(with a learning-rate scheduler and ``PruningSchedule(restart_lr=True)``, pass
``schedulers=[scheduler]`` to ``on_batch_start`` as well).

The engine owns everything that is not method-specific: graph discovery, targets -> keep counts
(:class:`~lightning_ssr.targets.Budget`), the dry run at set-up, masking and the rebuild,
optimizer remapping, the per-event records and the :class:`~lightning_ssr.report.PruningResult`.
The method (:mod:`lightning_ssr.methods`) decides which channels go. Data parallelism enters
through a :class:`World`: rank 0's decisions broadcast to every rank, and a hook to re-wrap the
model after a rebuild.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import pickle
import random
import sys
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .cost import ModelCost, channel_macs, count_cost
from .latency import LATENCY_MISS, OtherProcessesLoad, model_ms, others_share
from .methods.base import (
    MethodContext,
    PruningMethod,
    Sync,
    build_method,
    checked_metrics,
    checked_ready,
    plain_data,
    unloadable,
)
from .report import PruningResult, format_layer_table, layer_rows
from .schedule import PruningSchedule, ScaledSteps, check_restartable, restart_lr_schedules
from .structure.groups import (
    ChannelGroup,
    ForwardError,
    UnsupportedLayerError,
    align_blocks,
    find_channel_groups,
    unseen_readers,
)
from .structure.plan import PruningPlan, applied_plan, mark_applied_plan, plan_from_support
from .structure.surgery import (
    check_finite,
    check_remappable,
    dry_run,
    forward_hooks,
    model_copy,
    module_hooks,
    moved_by_training,
    optimizers_within,
    prune_channels,
    remap_optimizer,
    restore_modules,
    snapshot_modules,
)
from .targets import (
    Budget,
    Target,
    global_channel_values,
    group_step,
    intermediate_keep_counts,
    latency_table,
    parse_rates,
    target_too_small,
)
from .validation import check_flag, check_keywords, keyword_names, some_names


def _identity(obj):
    return obj


@dataclass
class World:
    """The processes training one model: their number, this one's rank, how rank 0's value
    reaches every rank (``broadcast``), whether any rank says yes (``any_rank``), what must happen after a rebuild (``rewrap``: a data
    parallel wrapper holds the old parameters), how to tell the user something once (``info``),
    and the context the training forward runs in (``forward_context``: autocast under mixed
    precision, where the set-up's rehearsal runs its example batch, as the fit will)."""

    size: int = 1
    rank: int = 0
    broadcast: Callable[[Any], Any] = _identity
    #: whether this rank's flag, or any other rank's, is true (every rank calls it at the same point:
    #: an error on one rank stops all of them there, instead of leaving them waiting in a collective)
    any_rank: Callable[[bool], bool] = bool
    rewrap: Callable[[], None] | None = None
    info: Callable[[str], None] = print
    forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def __post_init__(self) -> None:
        if self.size > 1 and self.any_rank is bool:  # (a failure on one rank would leave the others waiting: review)
            raise ValueError(f"World(size={self.size}): several processes need any_rank, which tells every rank "
                             "whether any rank's flag is true (an all-reduce of it: torch.distributed.all_reduce of "
                             "int(flag) with ReduceOp.MAX, > 0)")

    @property
    def sync(self) -> Callable[[Any], Any] | None:
        """The broadcast, under data parallelism; ``None`` in one process."""
        return self.broadcast if self.size > 1 else None


#: one process, talking on stdout
SINGLE = World()


@dataclass
class DenseState:
    """What the engine records of the dense model at its first set-up (checkpointed as plain data)."""

    sizes: dict[str, int]  # per group: its channels
    min_keep: dict[str, int]  # per group: the floor
    final_keep: dict[str, int] | None  # per group: the counts of the last event (None: not known yet)
    cost: dict  # ModelCost.to_dict() of the dense model
    round_to: int
    allocation: str  # where the counts come from (Budget.allocation_for)
    steps: dict[str, int] = field(default_factory=dict)  # per group: the granularity of its count
    #: what ranked the channels of a global allocation: ``"method"`` (its importance() of the dense
    #: model), ``"method_at_prune"`` (its importance_at_prune(), from its training: the counts are
    #: decided at the prune) or ``"l2_group_norm"`` (the dense weights', where the method gives
    #: neither); ``None`` otherwise
    importance: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping | None) -> DenseState | None:
        if data is None:
            return None
        return cls(sizes=dict(data["sizes"]), min_keep=dict(data["min_keep"]),
                   final_keep=None if data.get("final_keep") is None else dict(data["final_keep"]),
                   cost=data["cost"], round_to=int(data.get("round_to", 1)),
                   allocation=data.get("allocation", "uniform"), steps=dict(data.get("steps") or {}),
                   importance=data.get("importance"))

    @property
    def counts_at_prune(self) -> bool:
        """Whether the counts are decided at the first prune (from what the method learned, or
        ranked by what it gathered while it trained), not yet known."""
        return self.final_keep is None and (self.allocation == "method" or self.importance == "method_at_prune")

    def keep_at(self, event: int, events: int, groups: Sequence[ChannelGroup]) -> dict[str, int] | None:
        """The counts of prune event ``event`` (0-based) of ``events``, for the model's current groups."""
        if self.final_keep is None:
            return None
        keep = intermediate_keep_counts(self.sizes, self.final_keep, event, events, self.min_keep,
                                        self.steps or self.round_to)
        return {g.name: min(keep[g.name], g.size) for g in groups}


def _adds_a_term(method: PruningMethod) -> bool:
    """Whether ``method`` changes the gradients before each optimizer step (its training-time term)."""
    return type(method).before_optimizer_step is not PruningMethod.before_optimizer_step


def _ranks_at_prune(method: PruningMethod) -> bool:
    """Whether ``method`` gives its global importance at the prune (:meth:`importance_at_prune`)."""
    return type(method).importance_at_prune is not PruningMethod.importance_at_prune


def _updates(method: PruningMethod) -> bool:
    """Whether ``method`` has a periodic update of its own (every ``update_every_n_steps``)."""
    return type(method).update is not PruningMethod.update


#: schedule settings that act from a prune event on: a resume from a checkpoint saved before the
#: first event may change them (:meth:`PruningEngine.check_settings`)
AFTER_PRUNE_SETTINGS = ("restart_lr", "lr_warmup_steps")


def _refuse_resume(changed: list[str]) -> None:
    raise ValueError(
        "the checkpoint's pruning run was set up differently from this one (checkpoint -> now: "
        + "; ".join(changed) + "). A resume continues the run the checkpoint holds: resume with its "
        "settings (only schedule.finetune_epochs may change, and before the first prune event also "
        f"{' and '.join(AFTER_PRUNE_SETTINGS)}), or, to prune differently, load its weights "
        "(lightning_ssr.load_pruned) and start a new fit without ckpt_path")


def _differs(old: Any, new: Any) -> bool:
    """Whether two recorded settings differ; a value ``!=`` cannot judge (a tensor in a custom
    method's config) by its text."""
    try:
        return bool(old != new)
    except (RuntimeError, TypeError, ValueError):
        return repr(old) != repr(new)


def _layer_names(ignored_layers) -> tuple[list[str], list[nn.Module]]:
    """Split ``ignored_layers`` (names or modules) into names and modules; a type error otherwise."""
    if isinstance(ignored_layers, (str, nn.Module)):
        ignored_layers = [ignored_layers]
    if not isinstance(ignored_layers, Sequence) and not hasattr(ignored_layers, "__iter__"):
        raise TypeError(f"ignored_layers must be a list of module names or modules, got "
                        f"{type(ignored_layers).__name__}")
    names, modules = [], []
    for item in ignored_layers:
        if isinstance(item, str):
            names.append(item)
        elif isinstance(item, nn.Module):
            modules.append(item)
        else:
            raise TypeError(f"ignored_layers entries must be module names (str) or nn.Module objects, got "
                            f"{type(item).__name__} {item!r}")
    return names, modules


def _changed_entries(ours: Mapping[str, Any], copied: nn.Module) -> str | None:
    """What differs between the state_dict ``ours`` and that of ``copied``, a model it was taken
    from since changed (names added or missing, tensors changed), or ``None``."""
    theirs = copied.state_dict()
    added, missing = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    changed = [k for k in ours if k in theirs and not _same_tensor(ours[k], theirs[k])]
    parts = [f"{what} {names[:5]}" for what, names in (("added", added), ("removed", missing), ("changed", changed))
             if names]
    return "; ".join(parts) or None


def _method_copy(method: PruningMethod, memo: dict) -> PruningMethod:
    """A deep copy of ``method`` (``memo``: the model copy's, so that it holds the copied model).
    Functions it holds as attributes (an importance closure, a hook wrapped on the instance) are
    not copied by ``deepcopy``: where they close over the method itself or one of its bound
    methods, the copy's close over the copy instead."""
    copied = copy.deepcopy(method, memo)
    for key, value in vars(copied).items():
        if isinstance(value, types.FunctionType) and value.__closure__:
            cells = tuple(types.CellType(_rebound(cell.cell_contents, method, copied)) if _holds_cell(cell)
                          else cell for cell in value.__closure__)
            rebuilt = types.FunctionType(value.__code__, value.__globals__, value.__name__, value.__defaults__, cells)
            rebuilt.__kwdefaults__, rebuilt.__dict__ = value.__kwdefaults__, dict(value.__dict__)
            setattr(copied, key, rebuilt)
    return copied


def _holds_cell(cell) -> bool:
    try:
        cell.cell_contents  # noqa: B018 (an empty cell raises)
    except ValueError:
        return False
    return True


def _rebound(value: Any, original: PruningMethod, copied: PruningMethod) -> Any:
    if value is original:
        return copied
    if isinstance(value, types.MethodType) and value.__self__ is original:
        return types.MethodType(value.__func__, copied)
    return value


def _same_tensor(a: Any, b: Any) -> bool:
    """Equal shape, dtype and values, bit for bit (NaN equal to NaN at the same place); a
    module's extra state (not a tensor) by ``==`` where it compares."""
    if not (torch.is_tensor(a) and torch.is_tensor(b)):
        try:
            return bool(a == b)
        except (TypeError, ValueError, RuntimeError):  # not comparable: not judged
            return True
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    b = b.to(a.device)
    if a.is_floating_point() or a.is_complex():
        return bool(torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all())
    return torch.equal(a, b)


@contextlib.contextmanager
def _other_rng_kept():
    """Python's and NumPy's global random states as they were, whatever runs inside."""
    python = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        random.setstate(python)
        if numpy_state is not None:
            numpy.random.set_state(numpy_state)


def _optimizer_snapshot(optimizer: torch.optim.Optimizer) -> list[dict]:
    """What a rebuild changes in an optimizer and in any it wraps: each group's parameter list and
    the state (copied)."""
    holders = optimizers_within(optimizer)
    copied: dict[int, dict] = {}  # (a wrapper may share its inner optimizer's state: copied once)
    for o in holders:
        if id(o.state) not in copied:
            copied[id(o.state)] = {p: copy.deepcopy(s) for p, s in o.state.items()}
    return [{"params": [list(g["params"]) for g in o.param_groups], "state": copied[id(o.state)]} for o in holders]


def _restore_optimizer(optimizer: torch.optim.Optimizer, saved: Sequence[Mapping]) -> None:
    for holder, held in zip(optimizers_within(optimizer), saved):
        for group, params in zip(holder.param_groups, held["params"]):
            group["params"] = list(params)
        holder.state.clear()
        holder.state.update(held["state"])


def first_tensor(batch) -> torch.Tensor | None:
    """The first tensor in a batch (a tensor, or nested sequences and mappings of them)."""
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


class PruningEngine:
    r"""Filter pruning during training with any registered method; the model shrinks for real.

    Args:
        method: a registered method's name (``"ssr_l20"``, ``"ssr_l21"``, ``"oneshot"``, ...; see
            :func:`lightning_ssr.methods.available_methods`) or a :class:`PruningMethod` instance.
        target: what to reach: a :class:`~lightning_ssr.targets.Target` or a mapping such as
            ``{"macs": 0.05}``, ``{"params": 0.1}``, ``{"filters": 0.3}`` or
            ``{"rates": "[0.5]*3"}``; ``None`` lets the method decide (SSR with ``lam``).
        schedule: a :class:`PruningSchedule` (or a mapping of its fields); by default
            ``PruningSchedule()``, and for a method without a training-time term (``oneshot``,
            ``l1``, ...) a prune at the start and as many fine-tune epochs (as ``schedule=oneshot``).
        method_kwargs: arguments of the method when ``method`` is a name.
        ignored_layers: module names (relative to the model the engine is given) or module objects
            whose output channels must not be pruned. The classifier's outputs are never pruned.
        min_channels: channels every layer keeps at least (>= 1).
        max_pruning_ratio: the largest fraction of any layer's channels pruned (in (0, 1]).
        allocation: how a target is divided among the layers: ``"method"`` (the structure the
            method learns; the default for methods that learn one), ``"uniform"`` (the default for
            the others) or ``"global"`` (channels ranked across layers).
        round_to: kept counts are multiples of it; ``None``: 8 on CUDA, 1 elsewhere
            (:class:`~lightning_ssr.targets.Budget` holds these four).
        example_input: an input batch used to trace the model; by default the first tensor of the
            first batch.
        verbose: print the per-layer table after each rebuild (rank zero only).
        evaluate: ``(model) -> score`` (higher is better) on validation data, for methods that
            check a change before keeping it (FSM's BN compensation); never test data.
    """

    def __init__(
        self,
        method: str | PruningMethod = "ssr_l20",
        target: Target | Mapping | None = None,
        schedule: PruningSchedule | Mapping | None = None,
        method_kwargs: Mapping[str, Any] | None = None,
        ignored_layers: Sequence[str | nn.Module] = (),
        min_channels: int = 1,
        max_pruning_ratio: float = 1.0,
        example_input: torch.Tensor | None = None,
        verbose: bool = True,
        evaluate: Callable[[nn.Module], float] | None = None,
        allocation: str | None = None,
        round_to: int | None = None,
    ):
        if evaluate is not None and not callable(evaluate):
            raise TypeError(f"evaluate must be a callable (model) -> score, got {type(evaluate).__name__}")
        self.evaluate = evaluate
        if isinstance(method, PruningMethod):
            if method_kwargs:
                raise ValueError("method_kwargs only apply when method is given by name")
            if not isinstance(method.name, str) or not method.name:
                raise ValueError(f"pruning method {type(method).__qualname__} has no name: set the class attribute "
                                 "name = '...' (results, logs and checkpoints name the method by it)")
            self.method = method
            self._new_method = None  # a method object given: reset() keeps it (its set-up starts it over)
        elif isinstance(method, str):
            self.method = build_method(method, **dict(method_kwargs or {}))
            # (a partial, not a lambda: the engine pickles, with ddp_spawn's refusal still to come)
            self._new_method = functools.partial(build_method, method, **dict(method_kwargs or {}))
        else:
            raise TypeError(f"method must be a registered method name or a PruningMethod, got {type(method).__name__}")
        self.budget = Budget(target, min_channels=min_channels, max_pruning_ratio=max_pruning_ratio,
                             allocation=allocation, round_to=round_to)
        self.allocation = self.budget.allocation_for(self.method)  # refuses "method" for a method that learns none
        if self.target is None and self.method.needs_target:
            raise ValueError(f"pruning method {self.method.name!r} needs a target, e.g. target={{'macs': 0.5}}")
        if schedule is None:  # a method without a training-time term prunes at once and fine-tunes for as long
            default = PruningSchedule()
            schedule = default if self.method.sparsifies else replace(
                default, sparsify_epochs=0, finetune_epochs=default.total_epochs)
        elif isinstance(schedule, Mapping):
            check_keywords("schedule", schedule, keyword_names(PruningSchedule))
            schedule = PruningSchedule(**schedule)
        elif not isinstance(schedule, PruningSchedule):
            raise TypeError(f"schedule must be a PruningSchedule or a mapping, got {type(schedule).__name__}")
        if self.method.sparsifies and schedule.sparsify_epochs < 1:
            raise ValueError(f"pruning method {self.method.name!r} trains before its prune (a sparsity term, or "
                             "scores it gathers from the training steps): give it schedule.sparsify_epochs >= 1")
        if schedule.prune_events > 1 and self.target is None:
            raise ValueError("iterative pruning (prune_events > 1) needs a target to divide into steps")
        self.schedule = schedule
        self._ignored_names, self._ignored_modules = _layer_names(ignored_layers)
        if example_input is not None and not torch.is_tensor(example_input):
            raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
        self.verbose = check_flag("verbose", verbose)
        self._example_input = example_input
        self.reset()

    def reset(self) -> None:
        """Forget the run: the next training starts over on the model it is given, as a new engine
        with these settings would (the example input given here stays)."""
        if getattr(self, "_scaled_steps", None) is not None:  # not the first call, from __init__
            self._scaled_steps.remove()
            if self._new_method is not None:
                self.method = self._new_method()  # nothing of the earlier run's method (FSM's decisions)
        self.example = self._example_input
        self.plan: PruningPlan | None = None  # cumulative plan of the model being trained
        self.result: PruningResult | None = None
        self.events_done = 0
        self.last_update_step = -1
        self._updates_judged = False  # the set-up knew the epoch length, and warned of a phase without an update
        self.dense: DenseState | None = None
        self._events: list[dict] = []
        self._trajectory: list[dict] = []
        self._context: MethodContext | None = None
        self._hooks_before: dict = {}  # the model's forward hooks before the method's last setup()
        self._started = False  # the method's sparsify phase began (start() or a restored state)
        self._pending_method_state: dict | None = None
        # the parameters frozen (requires_grad=False) when the run set up: its groups are measured so
        # from then on, also where a callback unfreezes them later (BackboneFinetuning), and on resume
        self._frozen: list[str] | None = None
        self._prune_early = False
        self._start_time: float | None = None
        self._prune_timing: dict = {}
        self._costs: dict = {}  # one-off seconds: set-up (trace, target, dry run), allocation, each rebuild
        self.warnings: list[str] = []  # what the run warned of (warn), for its result
        self._until_done: list[str] = []  # those of them true only until the last prune (a fit too short)
        self._unloadable_state_warned = False  # a method state a checkpoint cannot hold, warned of once
        self._phase_too_short = False  # the set-up found no step to update at in the sparsify phase
        self._ignored_resolved = list(self._ignored_names)
        # a state loaded before the model was known, with layers ignored as module objects: the
        # names its run ignored, compared once the model gives the objects their names
        self._ignored_saved: list[str] | None = None
        self._latency: dict | None = None  # latency target: dense and predicted milliseconds
        self._latency_table = None  # latency target learned by the method: the table timed at set-up
        self._timing_rows: torch.Tensor | None = None  # latency target: real inputs to time on
        self._scaled_steps = ScaledSteps()  # schedule.lr_warmup_steps after a prune
        self._setup_evaluate: Callable[[nn.Module], float] | None = None  # what the last set-up was given
        # the driver's calls, checked: the step count at the start of the batch begun and not yet
        # ended, and whether on_before_optimizer_step came in it
        self._open_step: int | None = None
        self._term_added = False
        # the epoch the last on_batch_start was in, and whether on_epoch_end came after it
        self._epoch_begun: int | None = None
        self._epoch_ended = False

    # ------------------------------------------------------------ properties
    @property
    def fresh(self) -> bool:
        """Nothing of a run yet: no set-up, no event, no result."""
        return self.dense is None and self.events_done == 0 and self.result is None and self._context is None

    @property
    def target(self) -> Target | None:
        return self.budget.target

    @property
    def events(self) -> list[dict]:
        """One entry per prune event so far: ``epoch`` (at whose start it happened), ``step``,
        ``macs`` and ``params`` after it, ``keep`` (the channels kept per group), ``allocation``
        (where those counts came from) and ``learned`` (what the method's own criterion held)."""
        return list(self._events)

    @property
    def term_method(self) -> str | None:
        """The method's name while its ``before_optimizer_step()`` works on the gradients (its
        sparsify phase: a training-time term, or Taylor's reading of them), else None."""
        return self.method.name if self._started and _adds_a_term(self.method) else None

    @property
    def needs_setup(self) -> bool:
        """The next batch sets the method up (on the dense model, or after a prune event)."""
        return self._context is None and not self.done

    @property
    def done(self) -> bool:
        """Every scheduled prune event happened."""
        return self.events_done >= self.schedule.prune_events

    def phase(self, epoch: int) -> str:
        return self.schedule.phase(epoch, self.events_done)

    # ------------------------------------------------------- the driver's calls
    def start(self) -> None:
        """The training starts (timings in the result count from here; a batch an error cut short
        in an earlier training is not held against this one)."""
        self._start_time = time.perf_counter()
        self._open_step = None
        self._epoch_begun = None  # (a new training's epochs: its first is judged by its own calls)

    def on_batch_start(self, model: nn.Module, batch, *, epoch: int, step: int,
                       optimizers: Sequence[torch.optim.Optimizer], world: World = SINGLE,
                       steps_per_epoch: int | None = None, evaluate: Callable[[nn.Module], float] | None = None,
                       schedulers: Sequence[Any] = ()) -> dict[str, float]:
        """Before the step of ``batch`` (``epoch``, the global optimizer ``step``): sets the method
        up, starts its sparsify phase, and prunes when an event is due. ``schedulers``: the
        optimizers' learning-rate schedulers, which ``schedule.restart_lr`` starts again after
        the last event. Returns metrics of a prune (``macs``, ``params`` after it), else ``{}``.
        After a prune, the optimizer steps of ``schedule.lr_warmup_steps`` take a scaled rate."""
        if self._ignored_saved is not None:  # a loaded state's ignored layers, given as modules: compared now
            self.resolve_ignored(model)
        if (self._open_step is not None and step > self._open_step and self._started
                and self.schedule.update_every_n_steps is not None):
            raise RuntimeError(
                f"PruningEngine: the batch begun at optimizer step {self._open_step} ended without "
                "engine.on_batch_end(step=...): call it after each optimizer.step(), with the count of steps taken. "
                f"It makes the periodic update of {self.method.name!r} (every {self.schedule.update_every_n_steps} "
                "steps while it sparsifies), which is otherwise never made.")
        if (self._epoch_begun is not None and epoch > self._epoch_begun and not self._epoch_ended and self._started
                and self.schedule.update_every_n_steps is None and _updates(self.method) and not self.done):
            raise RuntimeError(
                f"PruningEngine.on_batch_start: epoch {epoch} began, and epoch {self._epoch_begun} of the sparsify "
                "phase ended without engine.on_epoch_end(model, epoch=..., step=..., optimizers=..., max_epochs=...): "
                f"with schedule.update_every_n_steps=None, {self.method.name!r} makes its periodic update there, and "
                "what it prunes would not be what it learned. Call it after each epoch, as the README's loop does.")
        self._open_step, self._term_added = step, False
        metrics = self._before_batch(model, batch, epoch, step, optimizers, world, steps_per_epoch, evaluate,
                                     schedulers)
        if epoch != self._epoch_begun:  # (after the batch's set-up: a fresh training starts its own count)
            self._epoch_begun, self._epoch_ended = epoch, False
        last = self._events[-1]["step"] if self._events else None
        self._scaled_steps.set(optimizers, self.schedule.lr_scale(None if last is None else step - last))
        return metrics

    def _before_batch(self, model, batch, epoch, step, optimizers, world, steps_per_epoch, evaluate,
                      schedulers) -> dict[str, float]:
        if self.example is None:
            found = first_tensor(batch)
            if found is None:
                raise ValueError("the pruning engine could not find an input tensor in the training batch; pass "
                                 "example_input= (or set example_input_array on your LightningModule)")
            self.example = found[:2].detach().clone()
        if self.done:
            return {}
        self._check_model(model, "on_batch_start")
        if self._context is None and self.plan is not None:
            self._check_rebuilt(model)
        if self.fresh and epoch > self.schedule.warmup_epochs:  # (before anything is set up on this model)
            raise ValueError(
                f"PruningEngine: the loop is at epoch {epoch}, past the schedule's warm-up "
                f"({self.schedule.warmup_epochs} epoch(s)), and this engine holds no run: a fresh engine would count "
                "the loop's earlier epochs as the schedule's and skip what it schedules before this one (prune an "
                "already pruned model again, say). A resumed loop restores the engine before its first batch, "
                "engine.load_state_dict(saved['engine']) (README's hand-written loop); a new compression starts "
                "its epochs at 0 (a loop that counts epochs from 1 passes epoch - 1).")
        if self._start_time is None:  # (a loop that never called start(), or a fresh engine resumed: this batch
            self.start()               # is open, and its on_batch_end makes the update due at its step)
            self._open_step = step
        if self._context is None:
            check_remappable(optimizers)  # by type, before the set-up's work
            if self.schedule.restart_lr:
                check_restartable(schedulers)
            if self.target is not None and self.target.kind == "latency":  # real inputs to time on
                found = first_tensor(batch)
                self._timing_rows = None if found is None else found[: self.target.batch_size].detach().clone()
            self._setup_evaluate = evaluate or self.evaluate
            self._setup_method(model, world, steps_per_epoch, self._setup_evaluate)
            final = self._context.final_keep  # (known at set-up unless the method learns the structure)
            cut = [g for g in self._context.groups if final is None or final.get(g.name, 0) < g.size]
            names = {s.param for g in cut for s in (*g.slices, *g.inputs)}
            try:  # by the state one step gives a copy of each optimizer
                check_remappable(optimizers, {n: p for n, p in model.named_parameters() if n in names})
            except ValueError:
                self._context = None  # set up again on the next training, with the optimizer it is given
                raise
            if self.events_done == 0 and world.rank == 0:
                if (loose := _parameters_no_optimizer_holds(model, optimizers, cut)) is not None:
                    self.warn(loose)
                if (frozen := _frozen_layers_cut(model, cut)) is not None:
                    self.warn(frozen)
                trained = {id(p) for o in optimizers for group in o.param_groups for p in group["params"]}
                example = self.example.to(next(model.parameters()).device)
                for said in unseen_readers(model, example, self._context.groups, self.resolve_ignored(model), trained):
                    self.warn(said)
        due = epoch >= self.schedule.prune_epoch(self.events_done) or (self._prune_early and self.events_done == 0)
        if not due and not self._started and (self.events_done > 0 or epoch >= self.schedule.warmup_epochs):
            self._start_sparsify()  # before the first event after warm-up; between events at once
        if due:
            return self._prune(model, epoch, step, optimizers, world, schedulers)
        return {}

    def on_before_optimizer_step(self) -> None:
        """After the gradients of a step are complete (unscaled, accumulated), before the step."""
        if self._started:
            self._call("before_optimizer_step")
        self._term_added = True

    def on_batch_end(self, *, step: int) -> dict[str, float]:
        """After optimizer step ``step`` (the count of steps taken): the method's periodic update
        when it is due. Returns its metrics."""
        stepped = self._open_step is not None and step > self._open_step  # (not a batch that accumulates)
        if stepped and self._started and not self._term_added and _adds_a_term(self.method):
            raise RuntimeError(
                f"PruningEngine: optimizer step {step} was taken without engine.on_before_optimizer_step(), so "
                f"{self.method.name!r} did not add its training-time term to the gradients. Call it after "
                "loss.backward() and before optimizer.step(), on every step.")
        self._open_step = None
        n = self.schedule.update_every_n_steps
        # only after a batch that stepped: one that accumulates keeps the count of the step before it, which
        # with accumulation made an update before any step of the sparsify phase (at step 0: on untrained weights)
        if not self._started or n is None or not stepped or step == self.last_update_step or step % n:
            return {}
        return self._update(step)

    def on_epoch_end(self, model: nn.Module, *, epoch: int, step: int, optimizers: Sequence[torch.optim.Optimizer],
                     max_epochs: int | None, world: World = SINGLE) -> dict[str, float]:
        """After epoch ``epoch``: the per-epoch update, the method's metrics, the early-stop check,
        and the prune due next when the training ends with it. Returns metrics to log per epoch."""
        if self.fresh and step > 0:
            raise RuntimeError(
                f"PruningEngine.on_epoch_end: epoch {epoch} ended after {step} optimizer steps, and no batch began with "
                "engine.on_batch_start(...): it sets the method up, starts its sparsify phase and prunes when due. "
                "Call it before each batch, as the README's loop does.")
        if not self.done:
            self._check_model(model, "on_epoch_end")
        self._epoch_ended = True
        out: dict[str, float] = {}
        if self._started:
            if self.schedule.update_every_n_steps is None:
                out.update(self._update(step))
            out.update(checked_metrics(self.method.name, "metrics", self._call("metrics")))
            if self.schedule.stop_early and not self._prune_early and self.events_done == 0:
                ready, reason = checked_ready(self.method.name, self._call("ready"))
                if ready and epoch + 1 < self.schedule.prune_epoch(0):
                    self._prune_early = True
                    if world.rank == 0:
                        world.info(f"Pruning: {reason}; pruning at the start of the next epoch.")
        # when the schedule ends with a prune (no fine-tune epoch after it), the prune due at the
        # start of the next epoch happens now. A fit stopped earlier than the schedule (to be resumed)
        # leaves it to the resumed fit, which then records it at the scheduled epoch.
        if (self.dense is not None and not self.done and max_epochs is not None and epoch + 1 >= max_epochs
                and max_epochs >= self.schedule.total_epochs
                and epoch + 1 >= self.schedule.prune_epoch(self.events_done)):
            if self._context is None:  # an earlier event at this epoch's last batch: the next batch set up none
                self._setup_method(model, world, None, self._setup_evaluate)
                if not self._started:  # (a restored method state is already started)
                    self._start_sparsify()
            # (recorded at the epoch it was due at the start of, not the one that ended)
            out.update(self._prune(model, epoch + 1, step, optimizers, world))
        return out

    def warn(self, message: str, emit: Callable[..., Any] | None = None, until_done: bool = False) -> None:
        """Warn of ``message`` (with ``emit``, e.g. Lightning's ``rank_zero_warn``; else
        ``warnings.warn``) and keep it for the result's ``warnings`` (once, however often given).
        ``until_done``: a warning that the schedule's last prune would not be made (a fit that
        ends too early), dropped from the result when a resumed fit makes it."""
        if message not in self.warnings:
            self.warnings.append(message)
        if until_done and message not in self._until_done:
            self._until_done.append(message)
        if emit is not None:
            emit(message)
        else:
            warnings.warn(message, stacklevel=3)

    def finish(self, model: nn.Module, warn: bool = True, emit: Callable[..., Any] | None = None
               ) -> PruningResult | None:
        """The training ended: the result, with the model as it is now (also after a resume that
        trained no further: the result is not in a checkpoint). With ``warn``, a training that ended
        before the schedule's last prune is warned of (the callback says it in Lightning's terms).
        ``emit``: how its warnings are given (:meth:`warn`; under DDP, once: ``rank_zero_warn``)."""
        self._scaled_steps.remove()
        if warn and not self.done and not self.fresh:
            due = self.schedule.prune_epoch(self.events_done)
            shapes = (f"the shapes of prune event {self.events_done} of {self.schedule.prune_events}"
                      if self.events_done else "its dense shapes (the result is None)")
            self.warn(f"PruningEngine.finish: the training ended before the prune due at the start of epoch "
                      f"{due}: the model keeps {shapes}. Train for the schedule's total_epochs "
                      f"({self.schedule.total_epochs}), calling on_epoch_end after each epoch.", emit,
                      until_done=True)
        if self.plan is not None and self.dense is not None:
            # (a loop of your own has no guard of the loss: a divergence after the prune went unsaid)
            bad = _non_finite(model, "weights")
            if bad:
                self.warn(f"PruningEngine.finish: the model's {some_names(bad)} {'holds' if len(bad) == 1 else 'hold'} "
                          "NaN or infinity: the training diverged, and this result describes a model whose outputs "
                          "are not finite. Lower the learning rate, or go on from a checkpoint of finite weights.",
                          emit)
            # (after a resume without a step, no example was seen: one of the plan's shape, in the model's dtype)
            ref = next(model.parameters())
            example = self.example if self.example is not None else torch.zeros(self.plan.input_shape, dtype=ref.dtype)
            self.result = self._build_result(count_cost(model, example.to(ref.device)), fit_end=True)
        return self.result

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed training needs to continue exactly (plain data and tensors)."""
        # a sparsifying method's state once its phase began; another's (an iterative one-shot method
        # keeps what it learned between prunes, a generator of its own) whenever it is set up
        if self._context is not None and (self._started or not self.method.sparsifies):
            method_state = self._call("state_dict")
            why = None if self._unloadable_state_warned else unloadable(method_state)  # (checked at set-up; warned of once)
            if why is not None:
                self._unloadable_state_warned = True
                self.warn(f"pruning method {self.method.name!r}: its state_dict() cannot go through a checkpoint "
                          f"any more: {why}. The checkpoints this fit writes from here on cannot "
                          "be resumed (torch.load(weights_only=True) refuses them). Keep tensors, numbers, strings, "
                          "booleans, None, dicts, lists and tuples in it (lightning_ssr.methods.plain_data converts "
                          "most values)")
        else:
            method_state = self._pending_method_state
        return {
            "method": self.method.name,
            "method_state": method_state,
            "plan": self.plan.to_dict() if self.plan is not None else None,
            "events_done": self.events_done,
            "events": list(self._events),
            "trajectory": list(self._trajectory),
            "prune_early": self._prune_early,
            "frozen": self._frozen,
            "last_update_step": self.last_update_step,
            "dense": self.dense.to_dict() if self.dense is not None else None,
            "latency": self._latency,
            "settings": self.settings(),
            "warnings": list(self.warnings),
            "warnings_until_done": list(self._until_done),
            # the one-off seconds (set-up, each rebuild) and the time to the last prune, which a
            # resumed fit's process did not live through: its result still gives them
            "timings": {**self._costs, **self._prune_timing},
        }

    def settings(self) -> dict[str, Any]:
        """What decides the run's structure and schedule, as plain data: a resume must not change it.

        ``schedule.finetune_epochs`` is left out: fine-tuning longer (or shorter) on resume is what
        raising ``Trainer(max_epochs=...)`` asks for, and changes nothing already done. Rates given
        as an expression are recorded as the rates it gives, ignored layers as a set of names (a
        module given as an object, by its name once the model is known)."""
        schedule = {k: v for k, v in asdict(self.schedule).items() if k != "finetune_epochs"}
        budget = self.budget.to_dict()
        target = self.target
        if target is not None and target.kind == "rates" and not isinstance(target.value, Mapping):
            budget["target"] = {"rates": parse_rates(target.value)}
        return plain_data({"method": self.method.name, "method_config": self.method.config(), **budget,
                           "allocation": self.allocation, "schedule": schedule,
                           "ignored_layers": sorted(set(self._ignored_resolved))})

    @property
    def _ignored_unnamed(self) -> bool:
        """Layers are ignored as module objects that no model has given names yet."""
        return bool(self._ignored_modules) and self._ignored_resolved == self._ignored_names

    def resolve_ignored(self, model: nn.Module) -> list[str]:
        """The names of the ignored layers in ``model`` (modules given as objects, by their name)."""
        names = {m: n for n, m in model.named_modules()}
        missing = [type(m).__name__ for m in self._ignored_modules if m not in names]
        if missing:
            raise ValueError(f"ignored_layers: modules {missing} are not part of the model being pruned")
        self._ignored_resolved = self._ignored_names + [names[m] for m in self._ignored_modules]
        saved = self._ignored_saved
        if saved is not None and _differs(saved, sorted(set(self._ignored_resolved))):
            _refuse_resume([f"ignored_layers: {saved!r} -> {sorted(set(self._ignored_resolved))!r}"])
        self._ignored_saved = None  # compared and the same: nothing to hold the loop to any more
        return self._ignored_resolved

    def check_settings(self, saved: Mapping[str, Any] | None, events_done: int | None = None) -> None:
        """Refuse a resume whose settings differ from those the checkpoint's run was set up with
        (settings only one side records, of another version, are not compared).

        Before the first prune event (the checkpoint's ``events_done`` is 0), the schedule's
        :data:`AFTER_PRUNE_SETTINGS` may change too: they act from a prune event on, so a run that
        diverged right after its prune can resume from a checkpoint saved before it with a warm-up."""
        if not saved:
            return  # a checkpoint of an earlier version: nothing to compare with
        current, changed = self.settings(), []
        free = {"schedule": AFTER_PRUNE_SETTINGS} if events_done == 0 else {}
        if self._ignored_unnamed and "ignored_layers" in saved:  # modules without names until the model is known
            current["ignored_layers"] = saved["ignored_layers"]  # compared then (resolve_ignored)
        for key in sorted(set(saved) & set(current)):
            old, new = saved[key], current[key]
            if isinstance(old, Mapping) and isinstance(new, Mapping):
                changed += [f"{key}.{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new))
                            if k not in free.get(key, ()) and _differs(old[k], new[k])]
                if key == "target" and set(old) != set(new):
                    changed.append(f"target: {dict(old)!r} -> {dict(new)!r}")
            elif _differs(old, new):
                changed.append(f"{key}: {old!r} -> {new!r}")
        if changed:
            _refuse_resume(changed)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("method") not in (None, self.method.name):
            raise ValueError(f"the checkpoint's pruning state is from method {state['method']!r}, this engine "
                             f"runs {self.method.name!r}; resume with the same method")
        saved = state.get("settings") or {}
        self.check_settings(saved, state.get("events_done"))
        if self._ignored_unnamed and "ignored_layers" in saved:
            self._ignored_saved = sorted(saved["ignored_layers"])
            self._ignored_resolved = list(self._ignored_saved)  # the run's, until the model names the modules
        self.plan = PruningPlan.from_dict(state["plan"]) if state.get("plan") else None
        self.events_done = int(state.get("events_done", 0))
        self._events = list(state.get("events", []))
        self._trajectory = list(state.get("trajectory", []))
        self._prune_early = bool(state.get("prune_early", False))
        frozen = state.get("frozen")  # (a checkpoint from before it was kept: as the model is now)
        self._frozen = None if frozen is None else [str(n) for n in frozen]
        self.last_update_step = int(state.get("last_update_step", -1))
        self.dense = DenseState.from_dict(state.get("dense"))
        self._latency = state.get("latency")
        # the run's warnings before the checkpoint, then this fit's (its set-up warns again)
        saved = list(state.get("warnings", []))
        self.warnings = saved + [w for w in self.warnings if w not in saved]
        until_done = state.get("warnings_until_done")
        if until_done is None:  # (a checkpoint from before they were kept apart: told by their words)
            until_done = [w for w in saved if "ends before the last scheduled prune" in w
                          or "before the prune due at the start of epoch" in w]
        self._until_done = list(dict.fromkeys([*until_done, *self._until_done]))
        self._pending_method_state = state.get("method_state") or None
        timings = dict(state.get("timings") or {})  # (a checkpoint from before timings were kept: none)
        self._prune_timing = {k: timings.pop(k) for k in ("last_prune_s",) if k in timings}
        self._costs = {k: list(v) if isinstance(v, list) else v for k, v in timings.items()}
        self._context = None
        self._started = False

    # ------------------------------------------------------------- internals
    def _check_model(self, model: nn.Module, where: str) -> None:
        """``model`` is the one the method was set up on: the method's term goes into that model's
        gradients and its selection into that model's channels (another, a copy made mid-run, was
        pruned from the first one's state, without a word)."""
        if self._context is not None and model is not self._context.model:
            raise ValueError(
                f"PruningEngine.{where}: given another model ({type(model).__name__} at {id(model):#x}) than the "
                f"one it was set up on ({type(self._context.model).__name__} at {id(self._context.model):#x}): "
                f"{self.method.name!r} adds its term to the first one's gradients and prunes from its state. Pass "
                "the same model object at every call; to compress another model, use a new PruningEngine (or "
                "engine.reset()).")

    def _find_groups(self, model: nn.Module, example: torch.Tensor,
                     ignored: Sequence[str] | None = None) -> list[ChannelGroup]:
        """``ignored``: the names resolved already (a copy of the model does not hold the modules
        ``ignored_layers`` gave); by default resolved on ``model``."""
        ignored = self.resolve_ignored(model) if ignored is None else ignored
        try:
            return find_channel_groups(model, example, ignored, frozen=self._frozen)
        except ForwardError as err:  # whatever forward() raises on a plain tensor
            dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
            other = example.is_floating_point() and dtypes and example.dtype not in dtypes  # (precision="64-true")
            traced = (f"the pruning engine traces the model's forward() on one input tensor of shape "
                      f"{tuple(example.shape)}{f' and dtype {example.dtype}' if other else ''} (from example_input=, "
                      "example_input_array or the first training batch)")
            failed = f"that failed: {type(err.__cause__).__name__}: {err.__cause__}."
            if other:
                raise ValueError(
                    f"{traced}, and {failed} The model's parameters are {', '.join(sorted(str(d) for d in dtypes))}: "
                    "give the example in the model's dtype (the Trainer's precision converts the training batches, "
                    "not example_input or example_input_array).") from err
            raise ValueError(
                f"{traced} to find prunable filters, and {failed} "
                "Define forward(x) to run the network on one input tensor (a forward() taking a dict or several "
                "inputs is not supported: "
                "unpack the batch in training_step and call forward on the tensor), or, where the tensor taken "
                "from the batch is not the input, pass the input as example_input= (a tensor).") from err

    def _check_rebuilt(self, model: nn.Module) -> None:
        """A resumed engine whose plan the model was not rebuilt with (a fresh model at its dense
        shapes, say) is refused before anything changes: its next prune would cut the dense model
        and record a plan that indexes the saved one's channels."""
        modules = dict(model.named_modules())
        wrong = []
        for root, kept in self.plan.kept.items():
            module = modules.get(root)
            width = None if module is None else getattr(module, "out_channels", getattr(module, "out_features", None))
            if module is None or (isinstance(width, int) and width != len(kept)):
                wrong.append(f"'{root}' " + ("is not in the model" if module is None else
                                             f"has {width} output channels, the plan {len(kept)}"))
        if wrong:
            raise ValueError(
                f"PruningEngine.on_batch_start: this engine's state is of a model pruned by {self.events_done} prune "
                f"event(s), and the model given was not rebuilt with that plan: {some_names(wrong, 3)}. Rebuild a "
                "freshly constructed model with the saved plan before the loop goes on: "
                "model = load_pruned(Net(), {'state_dict': saved['model'], 'pruning_plan': saved['engine']['plan']}) "
                "(README's hand-written loop), or apply_plan(model, engine.plan) from lightning_ssr.")

    def _setup_method(self, model: nn.Module, world: World, steps_per_epoch: int | None,
                      evaluate: Callable[[nn.Module], float] | None,
                      groups: Sequence[ChannelGroup] | None = None) -> None:
        """``groups``: the model's, where they were traced already (:meth:`check_method`)."""
        started = time.perf_counter()
        device = next(model.parameters()).device
        example = self.example.to(device)
        if self._frozen is None:  # (the run's first set-up: its groups were traced as the model is now)
            self._frozen = sorted(n for n, p in model.named_parameters() if not p.requires_grad)
        groups = self._find_groups(model, example) if groups is None else list(groups)
        self._check_prunable(model, groups)
        cost = count_cost(model, example)
        budget = self.budget
        rehearse = False
        if self.dense is None:  # first set-up, on the dense model
            check_finite(model)  # (a diverged model named as such, not by the scores importance() reads from it)
            round_to = budget.round_to_on(device)
            floor = budget.floors(groups, round_to)
            final = ranked = None
            at_prune = self.allocation == "global" and _ranks_at_prune(self.method)
            if at_prune:  # ranked by what the method gathers while it trains: at the prune
                ranked = "method_at_prune"
            if self.allocation in ("uniform", "global", "rates") and not at_prune:
                scores = None
                if self.allocation == "global":
                    scores = self._call("importance", model, groups)
                    ranked = "method" if scores is not None else "l2_group_norm"
                    if scores is not None:  # ({} fell back to the L2 norm, without a word)
                        _check_scores(self.method.name, "importance", scores, groups, "or None for the L2 group norm")
                    if scores is None:
                        scores = {g.name: g.norms({n: p.detach() for n, p in model.named_parameters()})
                                  for g in groups}
                        if self.method.sparsifies and world.rank == 0:
                            # (taylor@global, ssr_l20@global: recorded as "global", the counts were the L2
                            # ranking's, the same for every such method, whatever it learned: probe)
                            self.warn(self._l2_global_said())
                # timings (and ties) may differ between ranks: rank 0 decides, or refuses, for all of them
                final, self._latency = _on_rank_zero(world, lambda: budget.keep_counts(
                    model, example, groups, cost, round_to=round_to, allocation=self.allocation, scores=scores,
                    shared=[self], timing_input=self._timing_rows))
                if self.target is not None and all(final[g.name] >= g.size for g in groups) and world.rank == 0:
                    self._warn_met_already(self._latency.get("dense_ms") if isinstance(self._latency, dict) else None)
                short = budget.shortfall(model, groups, cost, final) if world.rank == 0 else None
                if short:
                    self.warn(short)
            elif (self.allocation == "method" or at_prune) and self.target.kind != "latency":
                budget.check(model, groups, cost, round_to)  # the floors fit the target
            allocated = time.perf_counter()
            self._dry_run(model, example, groups, floor)
            self._costs.update(allocation_s=allocated - started, dry_run_s=time.perf_counter() - allocated)
            rehearse = True
            self.dense = DenseState(sizes={g.name: g.size for g in groups}, min_keep=floor, final_keep=final,
                                    cost=cost.to_dict(), round_to=round_to, allocation=self.allocation,
                                    steps={g.name: group_step(g, round_to) for g in groups}, importance=ranked)
        if (self.dense.counts_at_prune and self.target is not None and self.target.kind == "latency"
                and self._latency_table is None):
            # the table the method steers by: rank 0's for every rank (each rank timed its own, while the
            # others timed theirs, and each rank's dense time differed by a fifth: probe)
            self._latency_table = _on_rank_zero(world, lambda: latency_table(
                model, example, groups, cost, self.target, self._timing_rows)[0])
        self._context = self._method_context(model, example, groups, cost, self.events_done, world.sync, evaluate,
                                             steps_per_epoch)
        view = self._context.budget
        if rehearse and view is not None and world.rank == 0 and view.fits({g.name: g.size for g in groups}):
            self._warn_met_already()
        if self.method.sparsifies and _updates(self.method) and steps_per_epoch:
            self._warn_if_never_updated(steps_per_epoch, warn=rehearse and world.rank == 0)
        # (a resumed fit does not rehearse, nor warn: its first fit judged the phase at its own set-up)
        self._updates_judged = self._updates_judged or bool(steps_per_epoch)
        if rehearse:
            rehearsed = time.perf_counter()
            try:
                if self._rehearse(model, example, world.forward_context):
                    self._costs["rehearsal_s"] = time.perf_counter() - rehearsed
            except BaseException:
                self.dense = None  # set up again from the start on the next training
                raise
        self._hooks_before = module_hooks(model)
        self._call("setup", self._context)
        if self._pending_method_state is not None:
            self._call("load_state_dict", self._pending_method_state)
            self._pending_method_state = None
            self._started = self.method.sparsifies  # a sparsifying method's state is saved once started
        if self.events_done == 0 and "setup_s" not in self._costs:  # trace, target, dry run: once, on the dense model
            self._costs["setup_s"] = time.perf_counter() - started
        if self.verbose and self.events_done == 0 and not self._started and world.rank == 0:
            goal = f"target {self.target.to_dict()}" if self.target is not None else "no target (the method decides)"
            world.info(f"Pruning: {self.method.name}, {len(groups)} prunable groups, {goal}; "
                       f"first prune at the start of epoch {self.schedule.prune_epoch(0)}.")

    def _method_context(self, model: nn.Module, example: torch.Tensor, groups: Sequence[ChannelGroup],
                        cost: ModelCost, event: int, sync: Sync | None,
                        evaluate: Callable[[nn.Module], float] | None,
                        steps_per_epoch: int | None, dense: DenseState | None = None) -> MethodContext:
        """What the method is set up with before prune event ``event`` (0-based), on ``model`` as
        it is then (the dense model, or the model an earlier event pruned). With the counts decided
        at the prune (:attr:`DenseState.counts_at_prune`), the target bound to this model, refused where its
        floors miss it. ``dense``: the dense model's record, by default the engine's."""
        dense = self.dense if dense is None else dense
        view = None
        if dense.counts_at_prune:
            view = self.budget.view(model, groups, cost, dense.round_to,
                                    self._method_latency_table(model, example, groups, cost))
            if not view.fits(view.floor):
                device = example.device.type
                timed = (f" (timed on {device} with {torch.get_num_threads()} torch threads: a machine other "
                         "processes keep busy times slower; time on a quiet one, or on one thread with "
                         "OMP_NUM_THREADS=1)") if view.kind == "latency" and device == "cpu" else ""
                raise target_too_small(self.target, view.measure.describe(view.floor), timed)
        return MethodContext(model=model, groups=list(groups), cost=cost, channel_macs=channel_macs(groups, cost),
                             keep=dense.keep_at(event, self.schedule.prune_events, groups),
                             min_keep={g.name: min(dense.min_keep[g.name], g.size) for g in groups}, sync=sync,
                             example=example, event=event, events=self.schedule.prune_events,
                             final_keep=dense.final_keep, evaluate=evaluate, allocation=dense.allocation,
                             budget=view, sparsify_updates=self._planned_updates(steps_per_epoch))

    def _l2_global_said(self) -> str:
        """Of a method that trains towards its prune (``sparsifies``) and gives no ``importance()``
        of the dense model, under ``allocation="global"``: where its counts come from."""
        name = self.method.name
        instead = (f"allocation='method' (its default) takes them from what {name} learns" if
                   self.method.learns_structure else
                   f"{name}'s own scores need the training before the prune, and decide which channels go within "
                   "each layer (a method that gives importance_at_prune() has them ranked across layers at the "
                   "prune)")
        return (f"pruning method {name!r} with allocation='global': the per-layer counts are decided at set-up, on "
                f"the dense model, by the L2 group norms of its weights ({name} gives no importance() of the dense "
                f"model), as for any method without one; {instead}. Each prune event records importance="
                "'l2_group_norm'.")

    def _warn_met_already(self, dense_ms: float | None = None) -> None:
        """The target asks for nothing: the dense model meets it already."""
        if dense_ms is None and self.target.kind == "latency" and self._latency_table is not None:
            dense_ms = getattr(self._latency_table, "dense_ms", None)
        self.warn(f"target {self.target.to_dict()}: the dense model meets it already, so every layer keeps all its "
                  "filters and nothing is pruned. Lower the target" + (
                      f" (milliseconds per batch of batch_size, timed on this device: {dense_ms:.3f} ms dense)"
                      if dense_ms else "") + ".")

    def _check_prunable(self, model: nn.Module, groups: Sequence[ChannelGroup]) -> None:
        """The model has prunable groups, and the method can prune them (its :meth:`check`)."""
        if not groups:
            ignored = self.resolve_ignored(model)
            raise ValueError("the pruning engine found no prunable filters in the model" + (
                f": ignored_layers ({some_names([str(n) for n in ignored])}) leaves no layer whose output channels a "
                "layer after it reads (the layers coupled with an ignored one, whose outputs a residual add or a "
                "concat joins into the same channels, stay whole with it); leave some out of ignored_layers"
                if ignored else
                " (no conv or linear layer whose output channels another conv or linear layer reads)"))
        self._call("check", model, list(groups))

    def check_structure(self, model: nn.Module, example: torch.Tensor, round_to: int | None = None,
                        groups: Sequence[ChannelGroup] | None = None) -> None:
        """The set-up's dry run ahead of time, on ``model`` (its structure only: untrained weights
        do): a layout the rebuild cannot handle fails now, before anything trains (the command
        runs this before its dense training). ``round_to``: the fit's (by default, that of the
        example's device); ``groups``: the model's, where the caller has traced them already.
        The model, the method and the run are not changed."""
        groups = self._find_groups(model, example) if groups is None else groups
        self._check_prunable(model, groups)
        round_to = self.budget.round_to_on(example.device) if round_to is None else round_to
        self._dry_run(model, example, groups, self.budget.floors(groups, round_to))

    def check_method(self, model: nn.Module, example: torch.Tensor, round_to: int | None = None,
                     groups: Sequence[ChannelGroup] | None = None, device: torch.device | str | None = None) -> None:
        """The fit's whole set-up ahead of time, on copies of this engine, its method and ``model``
        (untrained weights do): the dry run (:meth:`check_structure`'s), the allocation, and the
        rehearsal of the method's hooks with the rebuild to what it selects. A method of your own
        that would fail at its first update or at the prune fails now, before anything trains (the
        command runs this before its dense training). Nothing of the run changes; what the set-up
        warns of, the fit warns of. ``round_to``: the fit's (by default, that of the example's
        device); ``groups``: the model's, where the caller has traced them already; ``device``:
        where the fit trains (the copies go there: a method that makes its tensors on the GPU is
        rehearsed on it), by default the example's. A latency target's set-up times the model: only
        with ``device`` given (the fit's) is it run whole, so that a target below what the floors
        cost fails now; without, only the structure is checked."""
        if self.target is not None and self.target.kind == "latency" and device is None:
            self.check_structure(model, example, round_to, groups)
            return
        try:
            trial = copy.deepcopy(self)
        except (TypeError, RuntimeError, AttributeError, ValueError, copy.Error):  # a method holding a lock, ...
            self.check_structure(model, example, round_to, groups)  # (the fit's set-up says it cannot rehearse it)
            return
        device = torch.device(device) if device is not None else example.device
        trial.example, trial.verbose = example.to(device), False
        if round_to is not None:  # (the copy is set up on the example's device: the fit's may round otherwise)
            trial.budget = replace(trial.budget, round_to=round_to)
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), _other_rng_kept(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trial._setup_method(model_copy(model, shared=[trial]).to(device), World(info=lambda message: None), None,
                                None, groups)

    def _dry_run(self, model: nn.Module, example: torch.Tensor, groups: Sequence[ChannelGroup],
                 floor: Mapping[str, int]) -> None:
        """Prune a deep copy of the model to every group's minimum and check the rebuild, before
        the first optimizer step: what would fail at the real prune fails now. Then a copy pruned
        to half of each group (or its minimum, where that is more): one kept channel (the last, at a
        floor of 1) maps the same under an op that shifts the channels (a pad at the front), where
        several spread ones do not. Each copy first has what training moves moved, one way and then
        the other (:func:`moved_by_training`): a channel zero only at the initial values fails now."""
        half = {g.name: max(floor[g.name], g.size // 2) for g in groups}
        runs = [(floor, 1), (half, -1)] if half != dict(floor) else [(floor, 1)]
        if len(runs) == 1 and any(not n.endswith(("running_mean", "running_var")) for n in moved_by_training(model)):
            runs.append((floor, -1))  # (a learned scalar moved both ways)
        for keep, move in runs:
            trial = model_copy(model, shared=[self])
            try:
                dry_run(trial, example, groups, keep, move)
            finally:
                del trial

    def _rehearse(self, model: nn.Module, example: torch.Tensor,
                  forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> bool:
        """Run a copy of the method through its hooks once, in the fit's order, on a copy of the
        model with zero gradients (after its first update, its state goes through a checkpoint's
        round trip: ``state_dict()``, ``load_state_dict()``), then rebuild that copy to the
        channels the method selects (checked numerically) and call its ``after_rebuild``: a method
        that would fail at its first update or at the prune (an unsupported layout, a mask of the
        wrong size or count, a state a checkpoint cannot hold) fails at set-up, before training.
        Nothing of the run changes: not the model, the method, the random states (torch, Python,
        NumPy); the method's warnings are not shown (the fit shows its own). The validation
        callable is not run (``evaluate=None``), nor is anything synced. The example batch runs
        in ``forward_context`` (the fit's autocast), where the method's hooks see what the fit's
        forward gives them. With several prune events, the rebuilt copy goes through the same
        hooks once more, from ``setup()`` on, as the fit's next event does on the smaller model."""
        name = self.method.name
        memo: dict = {}
        trial = model_copy(model, shared=[self], memo=memo)
        try:
            method = _method_copy(self.method, memo)
        except (TypeError, RuntimeError, AttributeError, ValueError, copy.Error) as err:  # a lock, an open file, ...
            del trial
            self.warn(f"pruning method {name!r} cannot be copied ({type(err).__name__}: {err}), so it was not "
                      "rehearsed at set-up: a failure in its hooks shows in the fit")
            return False
        ctx = replace(self._context, model=trial, sync=None, evaluate=None)
        cuda = sorted({p.device.index or 0 for p in trial.parameters() if p.device.type == "cuda"})
        hook = "setup"
        users_hooks = forward_hooks(trial)  # (the user's: not run on the copy's example batch)
        hooks_before = module_hooks(trial)
        nan_gradients: list[str] = []
        # with several prune events, a second round on the rebuilt copy, as the fit sets the method up again
        # on the smaller model: a per-channel state of the method's that stays the dense model's fails there
        event, dense, entries = 0, self.dense, model.state_dict()  # (entries: what setup() must leave as it is)
        try:
            with torch.random.fork_rng(devices=cuda), _other_rng_kept(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # what the method warns of, it warns of in the fit
                for event in range(min(self.schedule.prune_events, 2)):
                    if event:  # what the fit gives the method before its next event: the final counts known
                        hook = "the set-up of the next prune event"
                        hooks_before = module_hooks(trial)
                        entries = {k: v.clone() for k, v in trial.state_dict().items()}
                        ctx = replace(self._method_context(
                            trial, example, self._find_groups(trial, example, self._ignored_resolved),
                            count_cost(trial, example), event, None, None, None, dense=dense),
                            sparsify_updates=ctx.sparsify_updates)
                        hook = "setup"
                    # (its refusal of the model passes as it is, named: the real set-up gives the same)
                    self._call("setup", ctx, method=method)
                    changed = _changed_entries(entries, trial)
                    if changed:
                        raise RuntimeError(
                            f"pruning method {name!r}: setup() changed the model ({changed}); setup runs again on "
                            "every resume and after each prune, so the model it changes is not the model a checkpoint "
                            "holds. Keep the method's own tensors on the method (and in its state_dict()).")
                    if method.sparsifies:
                        hook = "start"
                        method.start()
                    if self.schedule.prune_epoch(event) > 0:  # (the fit trains batches before its first prune)
                        # one batch through the copy, as training sends them, with a backward of zero: what the
                        # method's own forward (and tensor) hooks record, they have recorded once when it selects
                        hook = "the forward and backward pass of the example batch"
                        _zero_backward(trial, example, users_hooks, forward_context)
                    if method.sparsifies:
                        for p in trial.parameters():
                            if p.requires_grad:
                                p.grad = torch.zeros_like(p)
                        hook = "before_optimizer_step"
                        method.before_optimizer_step()
                        # (a term that divides by the gradients' norm is not finite on zero gradients alone:
                        # said, not refused)
                        nan_gradients = _non_finite(trial, "gradients")
                        for param in trial.parameters():  # (made finite again: update() and select() read them too)
                            if param.grad is not None:
                                param.grad.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
                        hook = "update"
                        checked_metrics(name, "update", method.update())
                        bad = _non_finite(trial, "weights")
                        if bad:
                            raise FloatingPointError(f"it left NaN or infinity in {some_names(bad, 4)} (the model's "
                                                     "weights, zero gradients before it)")
                        hook = "metrics"
                        checked_metrics(name, "metrics", method.metrics())
                        hook = "ready"
                        checked_ready(name, method.ready())
                    hook = "state_dict"  # every method's: a checkpoint keeps it (a sparsifying one's once started)
                    state = method.state_dict()
                    why = unloadable(state)
                    if why is not None:
                        raise RuntimeError(
                            f"its state_dict() cannot go through a checkpoint (saved with torch.save, read back with "
                            f"torch.load(weights_only=True)): {why}. Keep tensors, numbers, strings, booleans, None, "
                            "dicts, lists and tuples in it (lightning_ssr.methods.plain_data converts most values)")
                    hook = "load_state_dict"
                    method.load_state_dict(state)
                    keep = ctx.keep
                    if keep is None and ctx.budget is not None:  # (counts decided at the prune)
                        hook = "allocation_scores" if ctx.allocation == "method" else "importance_at_prune"
                        values = getattr(method, hook)()
                        if values is None:
                            raise RuntimeError(f"its counts come at the prune (allocation={ctx.allocation!r}) and it "
                                               "gave no channel values after start() and one update()")
                        _check_scores(name, hook, values, ctx.groups)
                        if ctx.allocation == "method":  # (the view's allocation is the fit's: test_allocation)
                            final = ctx.budget.allocate(values)
                        elif ctx.budget.kind != "latency":  # ranked as the fit ranks them
                            final = self.budget.keep_counts(trial, example, ctx.groups, ctx.cost,
                                                            round_to=self.dense.round_to, allocation="global",
                                                            scores=values)[0]
                        else:  # (the fit times the model at the prune: here the table's estimate)
                            final = ctx.budget.allocate(
                                global_channel_values(trial, ctx.groups, ctx.cost, ctx.budget.kind, values))
                        # (as the fit: the final counts from its values, this event's share of the way there)
                        dense = replace(self.dense, final_keep=final)
                        keep = dense.keep_at(event, self.schedule.prune_events, ctx.groups)
                    hook = "select"
                    before_select = {k: v.detach().clone() for k, v in trial.named_parameters()}  # (its weights)
                    if keep is None:  # no target: the method's own counts, not yet what they will be, held
                        # to the floors (one that did not keep them was refused at the prune, after its sparsify phase)
                        masks = self._check_masks(method.select(None), ctx, None)
                    else:
                        masks = self._check_masks(method.select(dict(keep)), ctx, keep)  # (its own copy: below)
                    changed = [k for k, v in trial.named_parameters()
                               if k in before_select and not _same_tensor(before_select[k], v)]
                    left = _hooks_added(trial, hooks_before)
                    if left:
                        raise RuntimeError(
                            f"it left hooks on {some_names(left, 4)}: remove the method's hooks by the end of "
                            "select() (the rebuild's check runs the model right after it, and the smaller model goes "
                            "on training with them); after_rebuild() may register them again on the smaller model")
                    step_plan = plan_from_support(example.shape, masks, ctx.groups)
                    hook = "the rebuild to its selection"
                    remap = prune_channels(trial, example, step_plan.kept, step_plan.sizes)
                    # what select() changed must go with the rebuild: the weights it was given, cut the same way
                    if changed:
                        rebuilt = dict(trial.named_parameters())
                        changed = [k for k in changed if k in rebuilt and not _same_tensor(
                            before_select[k].flatten()[remap[k].flatten().to(before_select[k].device)].view(
                                remap[k].shape) if k in remap else before_select[k], rebuilt[k].detach())]
                        if changed:  # (the masked model is made after select(): the rebuild's check cannot see it)
                            hook = "select"
                            raise RuntimeError(
                                f"it changed the model's weights ({some_names(changed, 4)}), and not only in the "
                                "channels it drops: select() only chooses the channels, and what it changes goes into "
                                "the pruned model unchecked (nor need it zero the channels it drops: the rebuild removes "
                                "them). Change weights in update() or before_optimizer_step(), or in after_rebuild()")
                    hook = "after_rebuild"
                    info = method.after_rebuild(trial, step_plan)
                    if info is not None and not isinstance(info, Mapping):
                        raise TypeError(f"after_rebuild() must return a dict (or None), got {type(info).__name__}")
            if nan_gradients:  # (outside the block that hides the method's warnings: this one is the engine's)
                self.warn(f"pruning method {name!r}: before_optimizer_step() put NaN or infinity into the gradients "
                          f"of {some_names(nan_gradients, 4)} when they were all zero (rehearsed at set-up on a copy "
                          "of the model). If it does so with the fit's gradients, the fit stops a step or two later, "
                          "when the loss turns, naming it.")
        except Exception as err:
            if hook == "setup" and not event:
                raise  # the method's own refusal of the model (the real set-up gives the same), as it is
            left = _hooks_added(trial, hooks_before)
            if hook == "the rebuild to its selection" and isinstance(err, UnsupportedLayerError) and left:
                raise _hooks_left(name, left, err, "Rehearsed at set-up on a copy of the model, before training: "
                                                   "this fit trained nothing.") from err
            if hook == "the rebuild to its selection" and isinstance(err, UnsupportedLayerError):
                # the model's structure, not the method: said as the dry run says it
                raise UnsupportedLayerError(f"dry run at set-up, before training, to the channels {name!r} selects: "
                                            f"{err}") from err
            if hook == "the set-up of the next prune event":  # the engine's own work, not the method's
                raise RuntimeError(
                    f"the set-up's rehearsal of pruning method {name!r} failed where it sets up the next prune event "
                    "on a rebuilt copy of the model, before the method's hooks ran: "
                    f"{type(err).__name__}: {str(err).rstrip('.')}. This fit trained nothing. With "
                    "schedule.prune_events=1 the rehearsal stops at the first prune; please report this.") from err
            where = hook if hook.startswith("the ") else f"{hook}()"
            if event:
                where += (" after the rehearsal's first prune (set up again on the smaller model, as the fit does "
                          "before its next prune event: the method's per-channel state must follow the cut, in "
                          "setup() or after_rebuild())")
            hint = (" (its setup() must call super().setup(context), which keeps the groups, the model and the "
                    "parameters as self.context)" if isinstance(err, AttributeError) and "'context'" in str(err)
                    and "context" not in vars(method) else "")
            raise RuntimeError(
                f"pruning method {name!r} failed in {where}, rehearsed at set-up on a copy of the model "
                f"with zero gradients, before training (the fit runs the same hook): {type(err).__name__}: "
                f"{str(err).rstrip('.')}{hint}. This fit trained nothing.") from err
        finally:
            del trial, method
        return True

    def _method_latency_table(self, model: nn.Module, example: torch.Tensor, groups, cost):
        """A latency target learned by the method: the per-layer table it steers by (timed once, on
        the dense model)."""
        if self.target.kind != "latency":
            return None
        if self._latency_table is None:
            self._latency_table, _ = latency_table(model, example, groups, cost, self.target, self._timing_rows)
        return self._latency_table

    def check_update_interval(self, steps_per_epoch: int) -> None:
        """Warn now of a sparsify phase, at ``steps_per_epoch`` optimizer steps an epoch, that holds
        no step of the method's periodic update (the fit's set-up says it too, unless said here):
        for a caller that knows the epoch's length before anything trains (the command)."""
        if self.method.sparsifies and _updates(self.method):
            self._warn_if_never_updated(steps_per_epoch)

    def _warn_if_never_updated(self, steps_per_epoch: int, warn: bool = True) -> None:
        """A sparsify phase without one multiple of ``update_every_n_steps`` among its optimizer
        steps: the method's periodic update (the V/U step of AULM, a learned count) never runs,
        and what it prunes comes from weights it never shaped. Said at set-up, before training
        (with ``warn``: a resumed fit's set-up only notes it, for the prune)."""
        n, schedule = self.schedule.update_every_n_steps, self.schedule
        if n is None or schedule.sparsify_epochs == 0:
            return
        first = schedule.warmup_epochs * steps_per_epoch  # the phase's steps: first + 1 .. last
        last = first + schedule.sparsify_epochs * steps_per_epoch
        self._phase_too_short = last // n == first // n
        if self._phase_too_short and warn:
            # with several prune events it updates between them too: the first event is the one unshaped
            never = ("it would never update, and what it prunes" if schedule.prune_events == 1 else
                     "it would not update before its first prune event, and what that event prunes")
            message = (
                f"pruning method {self.method.name!r} updates every {n} optimizer steps "
                f"(schedule.update_every_n_steps), but its sparsify phase is steps {first + 1}-{last} "
                f"({schedule.sparsify_epochs} epoch(s) of {steps_per_epoch}), with no multiple of {n}: {never} "
                f"would not be what it learned. Lower schedule.update_every_n_steps (to "
                f"{last - first} or less) or lengthen the sparsify phase.")
            if message not in self.warnings:  # (said before training, where the caller knew the epoch's length)
                self.warn(message)

    def _planned_updates(self, steps_per_epoch: int | None) -> int | None:
        """The method's periodic updates in the sparsify phase (None where the epoch length is unknown)."""
        if steps_per_epoch is None:
            return None
        steps = steps_per_epoch * self.schedule.sparsify_epochs
        every = self.schedule.update_every_n_steps
        return max(1, steps // every) if every else max(1, self.schedule.sparsify_epochs)

    def _call(self, hook: str, *args, method: PruningMethod | None = None):
        """The method's ``hook`` (``method``: a copy of it, the rehearsal's); what it raises carries
        a note naming the method and the hook."""
        method = self.method if method is None else method
        try:
            return getattr(method, hook)(*args)
        except Exception as err:
            err.add_note(f"(raised by pruning method {method.name!r} in its {hook}())")
            raise

    def _start_sparsify(self) -> None:
        if self.method.sparsifies:
            self._call("start")
            self._started = True

    def _update(self, step: int) -> dict[str, float]:
        metrics = checked_metrics(self.method.name, "update", self._call("update"))
        self.last_update_step = step
        learned = self._call("learned_counts") if self.events_done == 0 else None
        if learned:  # the structure the method holds, update by update, until the first prune
            self._trajectory.append({"step": int(step), "kept": {k: int(v) for k, v in learned.items()}})
        return metrics

    def _counts_at_prune(self, model: nn.Module, example: torch.Tensor, ctx: MethodContext, world: World) -> dict:
        """The counts of this event, decided now: from the structure the method learned
        (``allocation="method"``: a threshold on its cross-layer channel values that meets the
        target within its tolerance, from below), or from a global ranking of the scores it gathered
        while it trained (``allocation="global"``, :meth:`PruningMethod.importance_at_prune`); then
        this event's share of the way there."""
        allocation = self.dense.allocation
        hook = "allocation_scores" if allocation == "method" else "importance_at_prune"
        values = self._call(hook)
        if values is None:
            raise RuntimeError(f"pruning method {self.method.name!r}: its counts come at the prune (allocation="
                               f"{allocation!r}) but its {hook}() gave no channel values; did its sparsify phase run?")
        values = world.broadcast(values) if world.size > 1 else values
        _check_scores(self.method.name, hook, values, ctx.groups)  # (rank 0's, on every rank: refused by all alike)
        final, latency = _on_rank_zero(world, lambda: self.budget.keep_counts(
            model, example, ctx.groups, ctx.cost, round_to=self.dense.round_to, allocation=allocation, scores=values,
            shared=[self], timing_input=self._timing_rows, table=self._latency_table))
        self.dense.final_keep = final
        if latency is not None:
            self._latency = latency
        short = self.budget.shortfall(model, ctx.groups, ctx.cost, final) if world.rank == 0 else None
        if short:
            self.warn(short)
        ctx.final_keep = final
        return self.dense.keep_at(self.events_done, self.schedule.prune_events, ctx.groups)

    def _prune(self, model: nn.Module, epoch: int, step: int, optimizers: Sequence[torch.optim.Optimizer],
               world: World, schedulers: Sequence[Any] = ()) -> dict[str, float]:
        """Select, mask, rebuild, remap the optimizer(s), record the event, and after the last
        event start the learning-rate schedules again if the schedule says so."""
        ctx = self._context
        example = self.example.to(next(model.parameters()).device)
        keep = ctx.keep
        never_updated = (self.events_done == 0 and self.method.sparsifies and _updates(self.method) and self._started
                         and self.last_update_step < 0 and self.schedule.update_every_n_steps is not None
                         and world.rank == 0)
        if never_updated and self._updates_judged and not self._phase_too_short:
            self.warn(  # (the phase held steps to update at: on_batch_end never saw one of them taken)
                f"pruning method {self.method.name!r} prunes at step {step} without having run its periodic update "
                f"once, though its sparsify phase held multiples of {self.schedule.update_every_n_steps} "
                "(schedule.update_every_n_steps): what it prunes is not what it learned. In a loop of your own, "
                "on_batch_end(step=...) takes the count of optimizer steps taken, after optimizer.step(): the count "
                "before it reads as a batch that accumulates gradients without stepping.")
        if never_updated and not self._updates_judged:
            self.warn(  # (a loop that gave on_batch_start no steps_per_epoch: the set-up could not tell)
                f"pruning method {self.method.name!r} prunes at step {step} without having run its periodic update "
                f"once (every {self.schedule.update_every_n_steps} optimizer steps, schedule.update_every_n_steps): "
                "what it prunes is not what it learned. Lower schedule.update_every_n_steps or lengthen the sparsify "
                "phase. The length of an epoch was not known at set-up (an IterableDataset, or a hand-written "
                "loop that gave on_batch_start() no steps_per_epoch=len(loader)), or this warning would have come "
                "before training.")
        check_finite(model)  # (a diverged model named as such, not by the scores a method reads from it)
        if world.rank == 0 and (thawed := _frozen_since_set_up(model, ctx.groups, self._frozen)) is not None:
            self.warn(thawed)
        learned = self._call("learned_counts")
        if keep is None and self.dense.counts_at_prune:
            keep = self._counts_at_prune(model, example, ctx, world)
            final = ctx.final_keep  # (this event's counts are a share of the way there: the first may cut none)
            if (self.events_done == 0 and learned and world.rank == 0 and self.dense.allocation == "method"
                    and all(learned.get(g.name, g.size) >= g.size for g in ctx.groups)
                    and any(final[g.name] < g.size for g in ctx.groups)):  # (a target the dense model meets: none)
                self.warn(  # (its channel values, ranked across layers as they are, need not say what each can lose)
                    f"pruning method {self.method.name!r} prunes at step {step} with allocation='method', but its "
                    "sparsify phase zeroed no filter: the structure it learned is the dense one, and the per-layer "
                    f"counts ({', '.join(f'{k} {v}' for k, v in final.items())}) come from ranking its channel values "
                    "across layers as they stand. Lengthen the sparsify phase (schedule.sparsify_epochs), update "
                    "more often (schedule.update_every_n_steps), or use allocation='uniform' or 'global'.")
        # (the method's own copy: one that changed the counts it was given, in place, changed what its
        # masks were checked against, and the rehearsal's change carried into the fit: probe)
        masks = self._check_masks(self._call("select", None if keep is None else dict(keep)), ctx, keep)
        if world.size > 1:  # every rank prunes exactly what rank 0 decided
            masks = world.broadcast(masks)
        step_plan = plan_from_support(example.shape, masks, ctx.groups)
        before = ctx.cost
        old_params = dict(model.named_parameters())
        recorded = applied_plan(model)  # (read before the cut: prune_channels records it on the model)
        snapshot = snapshot_modules(model)  # prune_channels restores the model itself if it fails;
        saved = [_optimizer_snapshot(o) for o in optimizers]  # what follows it is undone here
        rebuild_start = time.perf_counter()
        try:
            remap = prune_channels(model, example, step_plan.kept, step_plan.sizes)  # restores the model if it fails
        except BaseException as err:
            if world.size > 1:
                with contextlib.suppress(Exception):  # (a broken process group: this rank's own error is said)
                    world.any_rank(True)  # (the other ranks stop at their first settle() below, and undo theirs)
            left = _hooks_added(model, self._hooks_before) if isinstance(err, UnsupportedLayerError) else None
            if not left:
                raise
            raise _hooks_left(self.method.name, left, err, f"The prune at the start of epoch {epoch} was not made: "
                              "the model and the optimizer are as they were, and nothing was recorded.") from err
        stage = "slicing the optimizer's state onto the rebuilt parameters (remap_optimizer)"
        rewrapped = False  # (the same on every rank at each settle(): they pass the rewrap together)

        def settle() -> None:
            """Every rank at the same point: where another rank's part failed, this one stops too
            (it would wait for that rank in the next collective: the wrapper's, an evaluation's)."""
            if world.size > 1 and world.any_rank(False):
                raise _OtherRankFailed()

        try:
            new_params = dict(model.named_parameters())
            for optimizer in optimizers:
                remap_optimizer(optimizer, old_params, new_params, remap)
            rebuild_s = time.perf_counter() - rebuild_start  # the cut, its numerical check, the optimizer
            settle()
            stage = "rewrapping the data-parallel model around the rebuilt one"
            if world.rewrap is not None:
                world.rewrap()  # a data-parallel wrapper held the old parameters
                rewrapped = True
            stage = "counting the pruned model's cost"
            after = count_cost(model, example)
            # cumulative from the shapes the model was constructed with, also across fits: a model an
            # earlier fit pruned (or load_pruned rebuilt) carries that plan, and this one comes after it
            stage = "composing this prune's plan with the model's earlier one"
            prior = self.plan if self.plan is not None else recorded
            plan = step_plan if prior is None else prior.then(step_plan, step_plan.input_shape)
            settle()
            stage = f"the method {self.method.name!r} in after_rebuild()"
            info = dict(self.method.after_rebuild(model, step_plan) or {})
            settle()
            if self._latency is not None and self.events_done + 1 == self.schedule.prune_events:
                stage = "timing the pruned model for the latency target"
                info.update(self._latency_check(model, example, world))
            settle()
        except BaseException as err:
            other = isinstance(err, _OtherRankFailed)
            restore_modules(snapshot)  # (first: whatever the other ranks do, this one is as it was)
            for optimizer, state in zip(optimizers, saved):
                _restore_optimizer(optimizer, state)
            if world.size > 1 and not other:
                try:
                    world.any_rank(True)  # (the others wait at their next settle(): told, they stop there too)
                except Exception:  # noqa: BLE001 - the process group broke (a rank died): this rank's own error is said
                    rewrapped = False
            if rewrapped:  # (every rank, at the same point: a collective; before it the wrapper still holds
                world.rewrap()  # the parameters restore_modules put back)
            if not isinstance(err, Exception):
                raise
            what = "another rank failed: its error is in its own output" if other else f"{type(err).__name__}: {err}"
            raise RuntimeError(
                f"the prune at the start of epoch {epoch} failed after the rebuild ({what}); the model and the "
                f"optimizer were restored exactly as they were before the prune, and nothing was recorded."
                + ("" if other else f" It came from {stage}.")) from err
        self.plan = plan
        mark_applied_plan(model, self.plan)
        self.events_done += 1
        if self.done:  # (a fit that ended too early was resumed, and made the last prune: no longer true)
            self.warnings = [w for w in self.warnings if w not in self._until_done]
            self._until_done = []
        restarted = restart_lr_schedules(schedulers) if self.schedule.restart_lr and self.done else None
        if restarted is not None:
            info["lr_restart"] = restarted  # the scheduler steps the fine-tuning anneals over
        self._costs.setdefault("rebuild_s", []).append(rebuild_s)  # wall times go to timings, not to events
        self._events.append({"epoch": epoch, "step": step, "macs": int(after.macs), "params": int(after.params),
                             "keep": {g.name: int(masks[g.name].sum()) for g in ctx.groups},
                             "allocation": self.dense.allocation,
                             **({"importance": self.dense.importance} if self.dense.importance else {}),
                             **({"learned": {k: int(v) for k, v in learned.items()}} if learned else {}), **info})
        self._context = None
        self._started = False
        self.result = self._build_result(after)
        if self.target is None and all(masks[g.name].all() for g in ctx.groups) and world.rank == 0:
            self.warn(f"pruning method {self.method.name!r} kept every filter at the prune at the start of epoch "
                      f"{epoch}: without a target, what it removes is what its own criterion dropped (for SSR and "
                      "SSL, the groups its regularizer zeroed: raise lam). Give a target (macs, params, filters, "
                      "latency) to prune to a size.")
        if self.verbose and world.rank == 0:
            world.info(f"Pruning: pruned at the start of epoch {epoch} (event {self.events_done} of "
                       f"{self.schedule.prune_events})\n" + format_layer_table(layer_rows(before, after), before, after))
        # (and each group's width: SSR's filters/<layer> held the sparsify phase's last support, read as the final)
        return {"macs": float(after.macs), "params": float(after.params),
                **{f"filters/{g.name}": float(masks[g.name].sum()) for g in ctx.groups}}

    def _latency_check(self, model: nn.Module, example: torch.Tensor, world: World) -> dict:
        """A latency target, after the last prune: the pruned model timed, beside what was asked and
        predicted. A miss by more than :data:`LATENCY_MISS` is warned about, not only recorded."""
        rows = example if self._timing_rows is None else self._timing_rows.to(example.device, example.dtype)

        def timed() -> tuple[float, dict]:
            with OtherProcessesLoad() as load:
                ms = model_ms(model, rows, self.target.batch_size)
            return ms, load.to_dict()

        # (rank 0 times while the others wait: one result on every rank, and no sibling rank's load in it)
        measured, load = _on_rank_zero(world, timed)
        lat = self._latency
        met = measured <= self.target.latency * (1 + LATENCY_MISS)
        timed_load = load if rows.device.type == "cpu" else None  # (a GPU's time is not the CPUs')
        busy = [f"{what} ({others_share(d)})"
                for what, d in (("the calibration", lat.get("calibration_load") or {}), ("this timing", timed_load or {}))
                if d.get("crowded")]
        if not met and world.rank == 0:
            self.warn(
                f"latency target missed: the pruned model runs {measured:.3f} ms per batch of {self.target.batch_size}, "
                f"{measured / self.target.latency - 1:+.0%} over the {self.target.latency:.3f} ms asked (predicted "
                f"{lat['predicted_ms']:.3f} ms, dense {lat['dense_ms']:.3f} ms). "
                + (f"Other processes kept the machine busy during {' and '.join(busy)}: " if busy else
                   f"None of the counts the calibration timed met it either (the fastest ran {lat['calibrated_ms']:.3f}"
                   " ms): the floors (min_channels, max_pruning_ratio, round_to) or the machine's noise keep it "
                   "there: " if (lat.get("calibrated_ms") or 0) > self.target.latency * (1 + LATENCY_MISS) else
                   "A busy machine times slower than the calibration did: ")
                + "time again on a quiet one (lightning_ssr.latency.steady_allocator() first), or ask for less.")
        return {"latency_dense_ms": lat["dense_ms"], "latency_predicted_ms": lat["predicted_ms"],
                "latency_measured_ms": measured, "latency_target_met": met,
                "latency_uncalibrated_ms": lat.get("uncalibrated_ms"), "latency_calibrated_ms": lat.get("calibrated_ms"),
                "latency_calibration_ms": lat.get("calibration_ms"),
                "latency_calibration_load": lat.get("calibration_load"), "latency_load": timed_load,
                "latency_device": rows.device.type}

    def _check_masks(self, masks: Mapping[str, torch.Tensor], ctx: MethodContext,
                     keep: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
        """The masks ``select(keep)`` returned, as CPU bool masks (grouped convolutions' blocks
        aligned), refused unless each is a bool tensor of its group's size keeping at least the
        group's minimum and, at the last prune event, exactly ``keep[group]`` channels, the counts
        that meet the target (an earlier event's share of the way is the method's to divide: FSM's
        layer-wise procedure prunes some layers whole and leaves the others)."""
        name = self.method.name
        if not isinstance(masks, Mapping):
            raise TypeError(f"pruning method {name!r}: select() must return a mapping group name -> bool mask, "
                            f"got {type(masks).__name__}")
        out = {}
        others = sorted(set(map(str, masks)) - {c.name for c in ctx.groups})
        if others and all(g.name in masks for g in ctx.groups):  # (with a group missing: said below, with it)
            raise RuntimeError(f"pruning method {name!r}: select() returned masks for {others[:5]}, which are no "
                               "groups of the model (an ignored layer's, or another model's?): masks are keyed by "
                               "the names of context.groups only")
        for g in ctx.groups:
            m = masks.get(g.name)
            if torch.is_tensor(m) and m.dim() != 1:  # (a 2-D mask of the right count was flattened, unasked)
                raise RuntimeError(f"pruning method {name!r}: select() returned a mask of shape {tuple(m.shape)} for "
                                   f"group {g.name!r}, which needs a 1-D bool tensor of its {g.size} channels")
            if not torch.is_tensor(m) or m.numel() != g.size:
                got = "nothing" if m is None else (f"a mask of {m.numel()} entries" if torch.is_tensor(m)
                                                   else f"a {type(m).__name__}")
                named = f"; it named {others[:5]}, which are no groups (masks are keyed by group.name)" if others else ""
                raise RuntimeError(f"pruning method {name!r}: select() returned {got} for group {g.name!r}, "
                                   f"which needs a bool tensor of its {g.size} channels (True: keep){named}")
            if m.dtype != torch.bool:
                raise RuntimeError(f"pruning method {name!r}: select() returned a {m.dtype} mask for group {g.name!r}; "
                                   "masks must be bool (True: keep); turn scores into a mask with "
                                   "lightning_ssr.methods.top_k_masks(scores, keep)")
            m = m.detach().to("cpu").flatten()
            if g.blocks > 1:  # grouped convolutions: the same positions in every block
                with torch.no_grad():
                    m = align_blocks(g, m, g.norms(ctx.params))
            kept = int(m.sum())
            if keep is not None and ctx.event + 1 >= ctx.events and g.name in keep and kept != keep[g.name]:
                raise RuntimeError(f"pruning method {name!r}: select(keep) kept {kept} channels of {g.name!r} where "
                                   f"keep[{g.name!r}] is {keep[g.name]}: the counts meet the target, and a method "
                                   "chooses which channels, not how many (top_k_masks(scores, keep) does both)")
            if kept < ctx.min_keep.get(g.name, 1):
                raise RuntimeError(
                    f"pruning method {name!r}: select() kept {kept} channels of {g.name!r}, fewer than its minimum "
                    f"{ctx.min_keep.get(g.name, 1)} (min_channels={self.budget.min_channels}, max_pruning_ratio="
                    f"{self.budget.max_pruning_ratio}): a method keeps at least context.min_keep[group] channels "
                    "of each group" + (" (with a target, top_k_masks(scores, keep) does)" if keep is not None else
                                       " when it decides the counts itself, without a target"))
            out[g.name] = m
        return out

    def _build_result(self, after: ModelCost, fit_end: bool = False) -> PruningResult:
        dense = ModelCost.from_dict(self.dense.cost)
        config = {"method": self.method.config(), "schedule": asdict(self.schedule),
                  "min_channels": self.budget.min_channels, "max_pruning_ratio": self.budget.max_pruning_ratio,
                  "allocation": self.allocation, "round_to": self.dense.round_to,
                  "ignored_layers": list(self._ignored_resolved)}
        return PruningResult(
            method=self.method.name, config=config,
            target=self.target.to_dict() if self.target is not None else None,
            # (prunable_channels: what a filters target counts, of the model this run started from)
            dense={"macs": int(dense.macs), "params": int(dense.params),
                   "prunable_channels": int(sum(self.dense.sizes.values()))},
            pruned={"macs": int(after.macs), "params": int(after.params)},
            layers=layer_rows(dense, after), plan=self.plan.to_dict() if self.plan is not None else None,
            events=list(self._events), trajectory=list(self._trajectory),
            timings=self._timings(fit_end), warnings=list(self.warnings))

    def _timings(self, fit_end: bool) -> dict:
        """Seconds since this process's training started: to the last prune event, and to the end."""
        if self._start_time is None:
            return {}
        now = time.perf_counter() - self._start_time
        if fit_end:
            return {**self._costs, **self._prune_timing, "fit_s": now}
        self._prune_timing = {"last_prune_s": now}
        return {**self._costs, **self._prune_timing}


def _non_finite(model: nn.Module, what: str) -> list[str]:
    """The parameters whose gradients (``what="gradients"``) or values hold NaN or infinity."""
    tensors = ((n, p.grad if what == "gradients" else p) for n, p in model.named_parameters())
    return [n for n, t in tensors if t is not None and not bool(torch.isfinite(t).all())]


def _check_scores(method: str, hook: str, scores, groups: Sequence[ChannelGroup], instead: str = "") -> None:
    """Refuse channel scores a method's ``hook`` gave for the allocation where they are not one
    finite value per channel of every group (a tensor each), naming the method, the hook and the
    group (the allocation's own error named neither: probe)."""
    if not isinstance(scores, Mapping):
        raise TypeError(f"pruning method {method!r}: {hook}() gave a {type(scores).__name__}: give a dict of one "
                        f"tensor per group{', ' + instead if instead else ''}")
    missing = [g.name for g in groups if g.name not in scores]
    if missing:
        raise ValueError(f"pruning method {method!r}: {hook}() gave no scores for groups {some_names(missing, 4)} "
                         f"(the allocation ranks every group's channels): give one tensor per group"
                         f"{', ' + instead if instead else ''}")
    for g in groups:
        s = scores[g.name]
        why = ("is not a tensor" if not torch.is_tensor(s) else
               f"holds {s.numel()} values for its {g.size} channels" if s.numel() != g.size else
               "is a meta tensor, without values" if s.device.type == "meta" else
               "is not finite" if not bool(torch.isfinite(s.detach().float()).all()) else None)
        if why is not None:
            raise ValueError(f"pruning method {method!r}: {hook}()'s score of group {g.name!r} {why} (a "
                             f"{type(s).__name__}): give one finite value per channel, as a tensor")


def _hooks_added(model: nn.Module, before: Mapping) -> list[str]:
    """The hooks on ``model`` that were not in ``before`` (:func:`module_hooks`)."""
    return sorted({label for key, label in module_hooks(model).items() if key not in before})


def _hooks_left(method: str, hooks: Sequence[str], err: Exception, outcome: str) -> RuntimeError:
    """A rebuild that failed with forward hooks the method registered still on the model."""
    return RuntimeError(
        f"pruning method {method!r} left hooks on {some_names(list(hooks), 4)} at the prune, and the "
        "rebuild's numerical check, which runs the model through them, failed: a hook that holds a per-channel "
        "tensor cannot follow the cut. Remove the method's hooks by the end of select() (the rebuild comes right "
        f"after it); after_rebuild() may register them again on the smaller model. {outcome} The rebuild "
        f"said: {err}")


def _parameters_no_optimizer_holds(model: nn.Module, optimizers: Sequence[torch.optim.Optimizer],
                                   groups: Sequence[ChannelGroup]) -> str | None:
    """The warning (``None``: nothing to warn of) of trainable parameters of the layers a prune
    cuts (``groups``' slices, the layers that read them; the groups the target leaves whole are not
    passed) that none of ``optimizers`` holds:
    the prune replaces their tensors and moves only the given optimizers onto the new ones, so an
    optimizer not given (a hand-written loop's) would go on stepping the old tensors and train
    nothing from then on, without a word. Parameters the prune leaves alone (a teacher or a
    moving-average copy held as a submodule) are not its concern."""
    cut = {s.param for g in groups for s in (*g.slices, *g.inputs)}
    held = {id(p) for optimizer in optimizers for group in optimizer.param_groups for p in group["params"]}
    loose = [name for name, p in model.named_parameters() if name in cut and p.requires_grad and id(p) not in held]
    if not loose:
        return None
    return (f"PruningEngine: the model's {some_names(loose)} {'requires' if len(loose) == 1 else 'require'} grad but "
            f"{'is' if len(loose) == 1 else 'are'} in none of the {len(optimizers)} optimizer(s) given (under "
            "Lightning: those configure_optimizers returns): a prune replaces the tensors of the layers it cuts and "
            "moves only the given optimizers onto the new ones. If an optimizer not given trains them, pass it too "
            "(optimizers=[...]); if nothing trains them, set requires_grad=False on them.")


#: the warning of frozen layers a prune may cut (:func:`_frozen_layers_cut`), for a caller that asked for it
FROZEN_LAYERS_CUT = r"PruningEngine: .* (is|are) frozen \(requires_grad=False\) and may lose filters"


def _zero_backward(model: nn.Module, example: torch.Tensor, others: Mapping,
                   forward_context: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
    """``model(example)`` in its mode, as training sends batches (a method's hook may record training
    batches only: ``if module.training``), without the forward hooks ``others`` names
    (:func:`forward_hooks` of the model before the method's set-up: the user's, which on this copy
    still call the user's code, and which the engine's passes otherwise reach in eval mode only),
    then a backward of zero times the sum of its floating-point outputs (a tensor, or one in a
    tuple, list or dict), where they need gradients; the gradients it leaves are zero. Where the
    forward fails without those hooks (a hook that returns a changed input or output is part of
    the model's computation), it runs again with them, and that run's error is the one raised:
    then the user's hooks, a counting one too, see this batch. A single sample is doubled: a
    batch norm in training mode needs two. The forward runs in ``forward_context`` (the fit's
    autocast), the backward outside it, as Lightning runs them."""
    if example.shape[0] == 1:
        example = torch.cat([example, example])
    try:
        with forward_context():
            out = _without_hooks(model, example, others)
    except Exception:  # noqa: BLE001 (the same forward again, with the model's own hooks, decides)
        with forward_context():
            out = model(example)
    found = [out] if isinstance(out, torch.Tensor) else (
        list(out.values()) if isinstance(out, Mapping) else list(out) if isinstance(out, (tuple, list)) else [])
    outputs = [t for t in found if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
    if outputs:
        (sum(t.float().sum() for t in outputs) * 0.0).backward()
    for param in model.parameters():  # (an infinite output times zero is NaN)
        if param.grad is not None:
            param.grad.zero_()


def _without_hooks(model: nn.Module, example: torch.Tensor, others: Mapping):
    """``model(example)`` with the forward hooks and pre-hooks ``others`` names left out, put back after."""
    saved = []
    for prefix, module in model.named_modules():
        for attr, kind in (("_forward_hooks", "forward hook"), ("_forward_pre_hooks", "forward pre-hook")):
            hooks = getattr(module, attr)
            if any((prefix, kind, key) in others for key in hooks):
                saved.append((module, attr, hooks))  # (the dict itself: the method's handles point to it)
                setattr(module, attr, type(hooks)((k, v) for k, v in hooks.items() if (prefix, kind, k) not in others))
    try:
        return model(example)
    finally:
        for module, attr, hooks in saved:
            setattr(module, attr, hooks)


def _frozen_layers_cut(model: nn.Module, groups: Sequence[ChannelGroup]) -> str | None:
    """The warning (``None``: nothing to warn of) of frozen layers (``requires_grad=False``) whose
    filters the prune may remove (``groups``: those it cuts): they lose filters, and what they keep
    cannot adapt to the loss. A fixed placement (``pruning_cost_free``) is not one."""
    modules, params = dict(model.named_modules()), dict(model.named_parameters())
    frozen = []
    for group in groups:
        for part in group.fixed:
            layer = part.param.rpartition(".")[0]
            param = params.get(part.param)
            module = modules.get(layer)
            if (param is not None and not param.requires_grad and layer not in frozen
                    and isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
                    and not getattr(module, "pruning_cost_free", False)):
                frozen.append(layer)
    if not frozen:
        return None
    return (f"PruningEngine: {some_names(frozen)} {'is' if len(frozen) == 1 else 'are'} frozen (requires_grad=False) "
            f"and may lose filters: what {'it keeps' if len(frozen) == 1 else 'they keep'} stays as it is and cannot "
            "adapt to the loss. To keep frozen layers whole, pass them in ignored_layers.")


def _on_rank_zero(world: World, compute: Callable[[], Any]) -> Any:
    """``compute()`` on rank 0 alone, its value, or its error, given to every rank: a decision
    made from timings (which differ between ranks) is rank 0's, also a refusal, and the other
    ranks wait meanwhile (a timing without its sibling ranks' load)."""
    if world.size <= 1:
        return compute()
    outcome = None
    if world.rank == 0:
        try:
            outcome = ("value", compute())
        except BaseException as err:  # (every rank raises it, after the broadcast; a Ctrl-C too: review)
            try:  # (an error class of other arguments does not come back from a pickle: said as a RuntimeError)
                copy_ = pickle.loads(pickle.dumps(err))
            except Exception:  # noqa: BLE001
                copy_ = RuntimeError(f"{type(err).__name__}: {err}")
            world.broadcast(("error", copy_))
            raise
    outcome = world.broadcast(outcome)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]


class _OtherRankFailed(Exception):
    """Another rank's part of a prune failed (it raises its own error); this rank undoes its own."""


def _frozen_since_set_up(model: nn.Module, groups: Sequence[ChannelGroup], frozen: Sequence[str] | None) -> str | None:
    """The warning (``None``: nothing to warn of) of layers whose channels the groups measure
    without their weights, frozen when the run set up, that train now (a callback unfroze them:
    BackboneFinetuning), or the other way round."""
    if frozen is None:
        return None
    params, frozen = dict(model.named_parameters()), set(frozen)
    changed = sorted({s.param.rpartition(".")[0] for g in groups for s in (*g.slices, *g.fixed)
                      if s.param in params and (s.param in frozen) != (not params[s.param].requires_grad)})
    if not changed:
        return None
    return (f"PruningEngine: {some_names(changed)} {'was' if len(changed) == 1 else 'were'} frozen or trainable when the "
            "pruning set up and now the other (a callback froze or unfroze them since): the method measures, "
            "regularizes and ranks their channels as at set-up, so that a resumed fit does the same. Freeze or "
            "unfreeze them before the fit starts to have them count as they are now.")


def steps_per_epoch(batches, accumulate: int = 1) -> int | None:
    """Optimizer steps per epoch from the batches per epoch (``None`` where that is not finite)."""
    if isinstance(batches, float) and not math.isfinite(batches):
        return None
    if batches is None:
        return None
    return math.ceil(int(batches) / max(1, accumulate))
