"""The method protocol and the registry of pruning methods.

A method decides *which* channels go; the engine (:class:`lightning_ssr.Pruning`) owns
everything else: the schedule, graph discovery, target -> keep counts, the rebuild,
optimizer remapping, checkpoints, DDP and the result. The lifecycle, in engine order:

1. ``setup(context)`` once the groups of the current model are known (again after each
   prune event when more follow);
2. ``start()`` when the sparsify phase begins;
3. ``before_optimizer_step()`` every optimizer step of the sparsify phase: the training-time
   term, added to the (unscaled, accumulated) gradients;
4. ``update()`` every ``schedule.update_every_n_steps`` optimizer steps of the sparsify
   phase (or at epoch end), returning metrics to log (a dict of numbers, or None);
5. ``ready()`` -> ``(bool, reason)``: may the engine prune early;
6. ``select(keep)`` -> per group, a bool mask of the channels to keep; ``keep`` holds the
   counts the target asks for, which each mask keeps exactly (``None`` when there is no target
   and the method decides).
   With ``allocation="method"`` (the default for methods that :attr:`learns_structure`) the
   engine first asks :meth:`allocation_scores` for the method's cross-layer channel values and
   makes the counts from them (the structure the method learned, moved only as far as the
   target needs); during the sparsify phase such a method steers itself towards the target
   with ``context.budget`` (a :class:`~lightning_ssr.targets.BudgetView`). With
   ``allocation="global"``, a method that implements :meth:`importance_at_prune` has its
   channels ranked across layers at the prune, by the scores it gathered while it trained;
   others by :meth:`importance` of the dense model, at set-up;
7. ``after_rebuild(model, plan)``: optional, e.g. BN compensation; may return a dict of plain
   values, recorded in the prune event;
8. ``state_dict()`` / ``load_state_dict()``: plain tensors and numbers, restored on resume
   (with the state of any generator the method draws from, for an exact resume).

``setup`` must leave the model as it is: it runs again on every resume and after each prune.
A resumed fit calls ``setup`` and then ``load_state_dict`` again, not ``start``: hooks the method
needs through its sparsify phase go on in ``setup``, every time, and record only while a flag is set
that ``start`` sets and its state keeps (``load_state_dict`` restores it).
Hooks a method registers on the model's modules (forward and backward) must be gone by the end
of ``select``: the rebuild's
numerical check runs the model right after it (``after_rebuild`` may register them again).
Before training, the engine rehearses a copy of the method through these hooks on a copy of the
model (zero gradients, no validation, nothing synced) and holds it to the above; the class
attribute :attr:`PruningMethod.name` names it in results, logs and checkpoints.

Methods are plain PyTorch (no Lightning imports) and are registered by name with
:func:`register_method`, so that ``pruning=<name>`` in a config picks one.
"""

from __future__ import annotations

import io
import numbers
import pickle
import re
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..cost import ModelCost
from ..structure.groups import ChannelGroup
from ..targets import BudgetView
from ..validation import check_keywords, closest_name, keyword_names

Sync = Callable[[Any], Any]


@dataclass
class MethodContext:
    """What the engine hands a method at set-up."""

    model: nn.Module
    groups: list[ChannelGroup]
    cost: ModelCost  # of the model as it is now
    channel_macs: dict[str, float]  # per group: MACs one channel costs (producers + consumers)
    keep: dict[str, int] | None  # per group: channels the target keeps (None: no target)
    min_keep: dict[str, int]  # per group: channels that must stay
    sync: Sync | None = None  # under DDP: broadcast rank 0's value to every rank
    example: torch.Tensor | None = None  # an input batch (for tracing)
    event: int = 0  # the prune event this set-up leads to (0-based) ...
    events: int = 1  # ... of this many
    final_keep: dict[str, int] | None = None  # per group: channels kept after the last event
    #: the validation score of a model (higher is better; the engine's default: top-1 accuracy
    #: on the fit's validation data), ``None`` without validation data. Never test data.
    evaluate: Callable[[nn.Module], float] | None = None
    #: where the counts come from: "uniform", "global", "method", "rates" or "none" (no target)
    allocation: str = "none"
    #: where the counts are decided at the prune (allocation="method", or "global" by
    #: importance_at_prune()): the target bound to this model, which a method that learns the
    #: structure steers towards
    budget: BudgetView | None = None
    #: the periodic updates planned for the sparsify phase (None: not known, e.g. an iterable dataset)
    sparsify_updates: int | None = None
    params: dict[str, nn.Parameter] = field(init=False)

    def __post_init__(self):
        self.params = dict(self.model.named_parameters())


class PruningMethod:
    """Base class of pruning methods; every hook but :meth:`select` has a no-op default."""

    name: str = ""
    #: whether the method trains with a term during a sparsify phase (False: the engine can prune
    #: at the start of fine-tuning, as one-shot methods do)
    sparsifies: bool = False
    #: whether the method can decide the keep counts itself (no target needed)
    needs_target: bool = True
    #: whether the method learns the per-layer structure while it trains, so that a target's
    #: counts can come from it (``allocation="method"``, then its default): it implements
    #: :meth:`allocation_scores` and steers towards ``context.budget`` in its updates
    learns_structure: bool = False
    #: whether every pruned channel must pass through a BatchNorm (the method scores or penalizes
    #: its scale); layers without one go in ``ignored_layers``
    requires_batchnorm: bool = False

    def check(self, model: nn.Module, groups: list[ChannelGroup]) -> None:
        """Refuse a model this method cannot prune, from its structure alone (raise, naming the
        layers and what to do): called before the set-up's dry run, and by the command before its
        dense model trains, on untrained weights. Nothing to refuse by default."""

    def setup(self, context: MethodContext) -> None:
        self.context = context

    def start(self) -> None:
        pass

    def before_optimizer_step(self) -> None:
        pass

    def update(self) -> dict[str, float]:
        return {}

    def ready(self) -> tuple[bool, str]:
        return False, "the method has no convergence test"

    def select(self, keep: Mapping[str, int] | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__qualname__} does not implement select(keep): every method gives, "
                                  "per group, a bool mask keeping keep[group] channels")

    def after_rebuild(self, model: nn.Module, plan) -> dict | None:
        return None

    def allocation_scores(self) -> dict[str, torch.Tensor] | None:
        """Per group, one value per channel, comparable across groups (higher: keep): the method's
        own criterion, so that the channels it would keep are those of highest value. The engine's
        ``allocation="method"`` sets a threshold on them that meets the target."""
        return None

    def learned_counts(self) -> dict[str, int] | None:
        """Per group, the channels the method's own criterion keeps now (recorded at the prune,
        beside the counts the engine made meet the target)."""
        return None

    def importance(self, model: nn.Module, groups: list[ChannelGroup]) -> dict[str, torch.Tensor] | None:
        """Channel scores of the dense model for the engine's global allocation (higher: more
        important), one tensor per group; ``None`` lets the engine use the L2 group norm. Called at
        the first set-up, before :meth:`setup` (``self.context`` is not set yet): the counts are
        decided on the dense model, from its weights."""
        return None

    def importance_at_prune(self) -> dict[str, torch.Tensor] | None:
        """Channel scores from what the method saw while it trained (higher: more important), one
        tensor per group, for the engine's global allocation: a method whose criterion needs the
        training before the prune (Taylor's gradients) implements it, and ``allocation="global"``
        then ranks its channels at the prune, by these, instead of at set-up by :meth:`importance`.
        The engine normalizes each group's scores by its largest and weighs them by the cost of
        one channel, as it does :meth:`importance`'s."""
        return None

    def metrics(self) -> dict[str, float]:
        """Epoch-level values to log (e.g. the regularizer)."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        pass

    def config(self) -> dict:
        """The method's settings, for the result (plain data: :func:`plain_data`)."""
        return {}


def plain_data(value: Any) -> Any:
    """``value`` as data a checkpoint holds and ``torch.load(weights_only=True)`` reads back: mappings,
    lists, numbers, strings, booleans and None. Numbers of NumPy or 0-d tensors become Python
    numbers, tensors and arrays lists, a function its qualified name, anything else its text
    (without a memory address, which differs from one process to the next)."""
    if value is None or type(value) in (bool, int, float, str):  # exactly: NumPy's float64 is a float
        return value
    if hasattr(value, "tolist") and callable(value.tolist):  # tensors, NumPy arrays and scalars
        return plain_data(value.tolist())
    for kind in (bool, int, float, str):  # other subclasses (an IntEnum, a str enum)
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [plain_data(v) for v in items]
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', None) or ''}.{value.__qualname__}".lstrip(".")
    return re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))


def checked_metrics(method: str, hook: str, value: Any) -> dict[str, Any]:
    """What ``update()`` (or ``metrics()``) returned, the values the engine logs: a mapping of
    names to numbers (a one-element tensor counts, left where it is); ``None`` counts as no
    metrics."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"pruning method {method!r}: {hook}() must return a dict of metric name -> number "
                        f"(or None), got {type(value).__name__}")
    for key, v in value.items():
        if not isinstance(key, str) or not (isinstance(v, numbers.Real) or torch.is_tensor(v) and v.numel() == 1):
            raise TypeError(f"pruning method {method!r}: {hook}() returned {key!r}: {type(v).__name__}; metrics "
                            "are name -> number (a number or a one-element tensor)")
    return dict(value)


def checked_ready(method: str, value: Any) -> tuple[bool, str]:
    """What ``ready()`` returned: a pair ``(may the engine prune early, why)``."""
    if (not isinstance(value, tuple) or len(value) != 2 or not isinstance(value[0], (bool, torch.Tensor))
            or not isinstance(value[1], str)):
        raise TypeError(f"pruning method {method!r}: ready() must return a pair (bool, reason: str), got "
                        f"{value!r}")
    return bool(value[0]), value[1]


def unloadable(value: Any) -> str | None:
    """Why a checkpoint holding ``value`` cannot give it back under
    ``torch.load(weights_only=True)`` (how checkpoints are read here), or ``None`` when it can.
    The answer is torch's own: ``value`` goes through ``torch.save`` and that load, with each
    tensor replaced by an empty one of its dtype (what is checked is the structure, not the data)."""
    def skeleton(v):
        if torch.is_tensor(v):
            return torch.empty(0, dtype=v.dtype)
        if type(v) in (dict, OrderedDict):
            return type(v)((k, skeleton(x)) for k, x in v.items())
        if type(v) in (list, tuple):
            return type(v)(skeleton(x) for x in v)
        return v

    buffer = io.BytesIO()
    try:
        torch.save(skeleton(value), buffer)
        buffer.seek(0)
        torch.load(buffer, weights_only=True)
    except (pickle.PickleError, TypeError, AttributeError, RuntimeError, ValueError) as err:
        text = re.sub(r"\x1b\[[0-9;]*m| at 0x[0-9a-fA-F]+", "", str(err))
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found:
            return f"it holds a value of type {found.group(1)}, which torch.load(weights_only=True) does not read"
        return f"{type(err).__name__}: {text.strip().splitlines()[0][:300]}"
    return None


_REGISTRY: dict[str, Callable[..., PruningMethod]] = {}
#: the entry point group through which installed distributions add methods
ENTRY_POINT_GROUP = "lightning_ssr.methods"
_entry_points_loaded = False
#: entry points that failed to load: name -> the error (raised where that method is asked for, each time)
_BROKEN_ENTRY_POINTS: dict[str, ImportError] = {}


def _load_entry_points() -> None:
    """Import the methods that installed distributions declare (once). One that fails to load is
    kept with its error, raised where that method is asked for: the others load and work."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    from importlib.metadata import entry_points

    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in _REGISTRY:
            try:
                loaded = entry.load()  # a module that registers its method as it is imported, or the method
                if entry.name not in _REGISTRY:
                    if isinstance(loaded, types.ModuleType):
                        raise ValueError(f"module {loaded.__name__!r} registers no method named {entry.name!r}: name "
                                         "the method's class in the entry point ('package.module:MyMethod'), or "
                                         "register it under the entry point's name")
                    register_method(entry.name, loaded)
            except Exception as err:  # noqa: BLE001 (a broken plugin is named, with its entry point, where asked for)
                broken = ImportError(f"the pruning method {entry.name!r} declared by entry point {entry.value!r} "
                                     f"failed to load: {type(err).__name__}: {err}")
                broken.__cause__ = err
                _BROKEN_ENTRY_POINTS[entry.name] = broken


def _same_definition(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are one definition run twice (a notebook cell run again, a module
    reloaded): the same module and qualified name."""
    qualname = getattr(a, "__qualname__", None)
    return (qualname is not None and "<lambda>" not in qualname  # every lambda of a module has one name
            and (getattr(a, "__module__", None), qualname) == (getattr(b, "__module__", None),
                                                               getattr(b, "__qualname__", None)))


def register_method(name: str, factory: Callable[..., PruningMethod] | None = None):
    """Register ``factory`` (a :class:`PruningMethod` subclass, or a function returning a
    method) as ``name``; usable as a decorator. A definition run again (a notebook cell, a
    reloaded module) replaces its earlier self; another definition under a taken name is refused."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name):
        raise ValueError(f"register_method: a method's name is a non-empty string of letters, digits, '_', '.' and "
                         f"'-' (it is what pruning=<name> picks), got {name!r}")

    def add(f):
        if isinstance(f, type) and not issubclass(f, PruningMethod):
            raise TypeError(f"register_method({name!r}): {f.__qualname__} is not a PruningMethod subclass "
                            "(lightning_ssr.methods.PruningMethod)")
        if not callable(f):
            raise TypeError(f"register_method({name!r}): give the method's class (or a function returning a "
                            f"method), got {type(f).__name__}")
        old = _REGISTRY.get(name)
        if old is not None and old is not f and not _same_definition(old, f):
            raise ValueError(f"a pruning method named {name!r} is already registered ({_qualified(old)}); "
                             "choose another name")
        _REGISTRY[name] = f
        return f
    return add(factory) if factory is not None else add


def _qualified(f: Any) -> str:
    return f"{getattr(f, '__module__', '?')}.{getattr(f, '__qualname__', type(f).__name__)}"


def available_methods() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def methods_without_batchnorm() -> str:
    """The registered methods that need no BatchNorm, for a refusal of a model without one (``random``,
    a baseline, is no advice)."""
    return ", ".join(n for n in available_methods()
                     if n != "random" and not getattr(_REGISTRY[n], "requires_batchnorm", False))


def build_method(name: str, **kwargs) -> PruningMethod:
    """The method registered as ``name``, built with ``kwargs`` (validated by the method)."""
    if name not in _REGISTRY:
        _load_entry_points()
    if name not in _REGISTRY and name in _BROKEN_ENTRY_POINTS:
        broken = _BROKEN_ENTRY_POINTS[name]
        raise ImportError(str(broken)) from broken.__cause__
    if name not in _REGISTRY:
        names = available_methods()
        close = next((n for n in names if n.lower() == str(name).lower()), None) or closest_name(str(name), names)
        hint = f" (did you mean {close!r}?)" if close else ""
        raise ValueError(f"unknown pruning method {name!r}{hint}; available: {names}. A method of your own "
                         "is registered when its module is imported (@register_method; in the CLI: "
                         "plugins=[your_module or path/to/file.py])")
    check_keywords(f"pruning method {name!r}", kwargs, keyword_names(_REGISTRY[name]))
    try:
        method = _REGISTRY[name](**kwargs)
    except (TypeError, ValueError) as err:  # (a value it could not use: "could not convert string to float")
        if str(err).startswith((f"{name}:", f"pruning method {name!r}")):  # (the method's own check names it)
            raise
        raise (TypeError if isinstance(err, TypeError) else ValueError)(f"pruning method {name!r}: {err}") from err
    if not isinstance(method, PruningMethod):
        raise TypeError(f"pruning method {name!r}: its factory {_qualified(_REGISTRY[name])} returned a "
                        f"{type(method).__name__}, not a PruningMethod")
    if method.name != name:  # a subclass registered under its own name reports that name, not its parent's
        method.name = name
    return method


def method_table() -> list[dict]:
    """One row per registered method: its name, what it is (the first line of its docstring),
    whether it trains with a sparsity term, learns the per-layer structure, needs a target."""
    rows = []
    for name in available_methods():
        method = build_method(name)
        factory = _REGISTRY[name]
        doc = ((type(method).__doc__ if isinstance(factory, type) else factory.__doc__) or "").strip().split("\n")[0]
        rows.append({"name": name, "summary": doc, "sparsifies": method.sparsifies,
                     "learns_structure": method.learns_structure, "needs_target": method.needs_target})
    return rows


def top_k_masks(scores: Mapping[str, torch.Tensor], keep: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """Per group, a bool mask of the ``keep[g]`` channels of highest score (ties: lower index).
    Scores that are not finite are refused: NaN sorts as the highest, so its channels would be
    kept by accident."""
    out = {}
    for name, s in scores.items():
        bad = ~torch.isfinite(s.detach())
        if bool(bad.any()):
            where = bad.nonzero().flatten().tolist()
            raise ValueError(f"the scores of group {name!r} are not finite at channel(s) {where[:8]}"
                             f"{' ...' if len(where) > 8 else ''} (of {s.numel()}): a criterion that divides by "
                             "zero, or a model whose weights diverged; NaN would rank first and keep those "
                             "channels by accident")
        order = torch.sort(s, descending=True, stable=True).indices[: keep[name]]
        mask = torch.zeros(s.numel(), dtype=torch.bool)
        mask[order.cpu()] = True
        out[name] = mask
    return out
