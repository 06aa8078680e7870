"""The generic ``Pruning`` callback: any registered method, one schedule, a physical rebuild.

The callback owns everything that is not method-specific: graph discovery, the schedule,
targets -> keep counts, masking and the rebuild, optimizer remapping, checkpoint state, DDP
broadcast, logging (``pruning/*``) and the :class:`~lightning_ssr.report.PruningResult`.
The method (:mod:`lightning_ssr.methods`) decides which channels go.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn
from typing_extensions import override

from .checkpoint import APPLIED_PLAN_ATTR, apply_checkpoint_plan
from .cost import ModelCost, channel_macs, count_cost
from .latency import WHOLE_MODEL_SECONDS, steady_allocator, time_ms, timing_batch
from .methods.base import MethodContext, PruningMethod, build_method
from .methods.ssr import SSR
from .report import PruningResult, format_layer_table, layer_rows
from .schedule import PruningSchedule
from .structure.groups import ChannelGroup, UnsupportedLayerError, align_blocks, find_channel_groups
from .structure.plan import PLAN_CHECKPOINT_KEY, PruningPlan, plan_from_support
from .structure.surgery import dry_run, model_copy, prune_channels, remap_optimizer
from .targets import Budget, Target, group_step, intermediate_keep_counts, latency_table


def _first_tensor(batch) -> torch.Tensor | None:
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, Sequence) and not isinstance(batch, str):
        for item in batch:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _rng_states() -> dict:
    """The global RNG states (torch CPU and CUDA, Python's ``random``), as checkpoint-safe data."""
    states = {"torch": torch.get_rng_state(), "python": _python_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _python_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_rng_states(states: Mapping) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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


def validation_accuracy(trainer: Trainer, pl_module: LightningModule) -> Callable[[nn.Module], float | None]:
    """``(model) -> top-1 accuracy`` over the fit's validation batches ``(x, y)`` (all ranks
    together; ``limit_val_batches`` respected), ``None`` when the fit has no validation data.
    The validation dataloaders are requested on the first call only."""

    def loaders() -> list:
        if trainer.val_dataloaders is None:
            hook = pl_module._current_fx_name  # Lightning's loader hooks leave theirs set; logging checks it
            try:
                trainer.fit_loop.epoch_loop.val_loop.setup_data()
            except MisconfigurationException:  # validation_step without validation data
                return []
            finally:
                pl_module._current_fx_name = hook
        found = trainer.val_dataloaders
        if found is None:
            return []
        return list(found.values()) if isinstance(found, Mapping) else (
            list(found) if isinstance(found, (list, tuple)) else [found])

    def evaluate(model: nn.Module) -> float | None:
        sources = loaders()
        if not sources:
            return None
        limit = trainer.limit_val_batches
        device = pl_module.device
        correct = torch.zeros((), dtype=torch.long, device=device)
        total = torch.zeros((), dtype=torch.long, device=device)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for loader in sources:
                    n = limit if isinstance(limit, int) else (
                        int(limit * len(loader)) if limit < 1.0 and hasattr(loader, "__len__") else None)
                    for i, batch in enumerate(loader):
                        if n is not None and i >= n:
                            break
                        if not (isinstance(batch, (list, tuple)) and len(batch) >= 2 and torch.is_tensor(batch[0])
                                and torch.is_tensor(batch[1]) and not batch[1].is_floating_point()):
                            raise TypeError(
                                "the default validation score is top-1 accuracy over batches (inputs, integer "
                                f"labels), but a validation batch is a {type(batch).__name__}; pass "
                                "Pruning(evaluate=...) a callable (model) -> score on your validation data.")
                        out = model(batch[0].to(device))
                        labels = batch[1].to(device)
                        if not torch.is_tensor(out) or out.dim() < 2 or labels.shape != out.shape[:1]:
                            raise TypeError(
                                "the default validation score is top-1 accuracy: it needs logits [batch, classes] "
                                f"and labels [batch], got {type(out).__name__} "
                                f"{tuple(out.shape) if torch.is_tensor(out) else ''} and labels "
                                f"{tuple(labels.shape)}; pass Pruning(evaluate=...) a callable (model) -> score.")
                        correct += (out.argmax(1) == labels).sum()
                        total += labels.numel()
        finally:
            model.train(was_training)
        if trainer.world_size > 1:
            correct = trainer.strategy.reduce(correct, reduce_op="sum")
            total = trainer.strategy.reduce(total, reduce_op="sum")
        return float(correct) / float(total) if int(total) > 0 else None

    return evaluate


class Pruning(Callback):
    r"""Filter pruning inside ``fit`` with any registered method; the model shrinks for real.

    Args:
        method: a registered method's name (``"ssr_l20"``, ``"ssr_l21"``, ``"oneshot"``, ...; see
            :func:`lightning_ssr.methods.available_methods`) or a :class:`PruningMethod` instance.
        target: what to reach: a :class:`~lightning_ssr.targets.Target` or a mapping such as
            ``{"macs": 0.05}``, ``{"params": 0.1}``, ``{"filters": 0.3}`` or
            ``{"rates": "[0.5]*3"}``; ``None`` lets the method decide (SSR with ``lam``).
        schedule: a :class:`PruningSchedule` (or a mapping of its fields).
        method_kwargs: arguments of the method when ``method`` is a name.
        ignored_layers: module names (relative to the LightningModule) or module objects whose
            output channels must not be pruned. The classifier's outputs are never pruned.
        min_channels: channels every layer keeps at least.
        max_pruning_ratio: the largest fraction of any layer's (dense) channels that may go.
        example_input: an input batch used to trace the model; by default the LightningModule's
            ``example_input_array`` or the first tensor of the first training batch.
        verbose: print the per-layer table after each rebuild (rank zero only).
        allocation: how a fraction or latency target is divided among the layers: ``"method"``
            (the structure the method learns while it trains, moved only as far as the target needs;
            the default for methods that learn one: SSR, SSL, network slimming), ``"uniform"``
            (every layer keeps the same fraction; the default for the others) or ``"global"``
            (channels compete across layers by importance, normalized per layer, over the cost each
            saves); see :class:`~lightning_ssr.targets.Budget`.
        round_to: kept channel counts are multiples of this (a layer narrower keeps all); ``None``:
            8 on CUDA (tensor cores) and 1 elsewhere.
        evaluate: ``(model) -> score`` (higher is better) on validation data, for methods that
            check a change before keeping it (FSM's BN compensation). By default: top-1
            accuracy of ``model(x)`` over the fit's validation batches ``(x, y)``; never test data.

    After ``fit``: :attr:`result` (:class:`PruningResult`) and :attr:`plan` (the cumulative
    :class:`PruningPlan` of the model being trained).
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
        super().__init__()
        if evaluate is not None and not callable(evaluate):
            raise TypeError(f"evaluate must be a callable (model) -> score, got {type(evaluate).__name__}")
        self._evaluate = evaluate
        if isinstance(method, PruningMethod):
            if method_kwargs:
                raise ValueError("method_kwargs only apply when method is given by name")
            self.method = method
        elif isinstance(method, str):
            self.method = build_method(method, **dict(method_kwargs or {}))
        else:
            raise TypeError(f"method must be a registered method name or a PruningMethod, got {type(method).__name__}")
        self.budget = Budget(target, min_channels=min_channels, max_pruning_ratio=max_pruning_ratio,
                             allocation=allocation, round_to=round_to)
        self.target = self.budget.target
        self.allocation = self.budget.allocation_for(self.method)  # refuses "method" for a method that learns none
        self.round_to, self.min_channels = self.budget.round_to, self.budget.min_channels
        self.max_pruning_ratio = self.budget.max_pruning_ratio
        if self.target is None and self.method.needs_target:
            raise ValueError(f"pruning method {self.method.name!r} needs a target, e.g. target={{'macs': 0.5}}")
        if schedule is None:
            schedule = PruningSchedule()
        elif isinstance(schedule, Mapping):
            schedule = PruningSchedule(**schedule)
        elif not isinstance(schedule, PruningSchedule):
            raise TypeError(f"schedule must be a PruningSchedule or a mapping, got {type(schedule).__name__}")
        if self.method.sparsifies and schedule.sparsify_epochs < 1:
            raise ValueError(f"pruning method {self.method.name!r} trains with a sparsity term: give it "
                             "schedule.sparsify_epochs >= 1")
        if schedule.prune_events > 1 and self.target is None:
            raise ValueError("iterative pruning (prune_events > 1) needs a target to divide into steps")
        self.schedule = schedule
        self._ignored_names, self._ignored_modules = _layer_names(ignored_layers)
        if example_input is not None and not torch.is_tensor(example_input):
            raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
        self.verbose = bool(verbose)
        self._example = example_input

        self.plan: PruningPlan | None = None  # cumulative plan of the model being trained
        self.result: PruningResult | None = None
        self.events_done = 0
        self._context: MethodContext | None = None
        self._started = False  # the method's sparsify phase began (start() or a restored state)
        self._pending_method_state: dict | None = None
        self._prune_early = False
        self._last_update_step = -1
        self._dense: dict | None = None  # dense sizes, final keep counts, dense cost
        self._events: list[dict] = []
        self._trajectory: list[dict] = []
        self._hook = None
        self._trainer: Trainer | None = None
        self._fit_start = None
        self._prune_timing: dict = {}
        self._loss_flag = None  # on an accelerator: (pinned flag, event, step) of a loss check in flight
        self._ignored_resolved = list(self._ignored_names)
        self._latency: dict | None = None  # latency target: dense and predicted milliseconds
        self._latency_table = None  # latency target learned by the method: the table timed at set-up
        self._timing_rows: torch.Tensor | None = None  # latency target: real inputs to time on

    # ------------------------------------------------------------ properties
    @property
    def state_key(self) -> str:
        return self._generate_state_key(method=self.method.name)

    @property
    def events(self) -> list[dict]:
        """One entry per prune event so far: ``epoch`` (at whose start it happened), ``step``,
        ``macs`` and ``params`` after it."""
        return list(self._events)

    @property
    def phase(self) -> str:
        epoch = self._trainer.current_epoch if self._trainer is not None else 0
        return self.schedule.phase(epoch, self.events_done)

    # ----------------------------------------------------------------- hooks
    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer
        name = type(self).__name__
        if not pl_module.automatic_optimization:
            raise MisconfigurationException(
                f"{name} adds its training-time term in on_before_optimizer_step and remaps the optimizer at the "
                "rebuild; it supports automatic optimization only (automatic_optimization=True).")
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and getattr(strategy, "_start_method", "popen") != "popen":
            raise MisconfigurationException(
                f"{name} does not support DDPStrategy(start_method={strategy._start_method!r}): those "
                "launchers return the trained weights to the main process, whose model still has the full "
                "size, so loading them fails after the rebuild. Use strategy='ddp' (subprocess launcher).")
        if trainer.world_size > 1 and not isinstance(strategy, DDPStrategy):
            raise MisconfigurationException(
                f"{name} supports single-device training and strategy='ddp'; got {type(strategy).__name__}.")
        if getattr(pl_module, "_compiler_ctx", None) or any(
                isinstance(m, torch._dynamo.eval_frame.OptimizedModule) for m in pl_module.modules()):
            raise MisconfigurationException(
                f"{name} rebuilds the model during fit, which a torch.compile'd module cannot follow; "
                "train the uncompiled module and compile the pruned one afterwards (torch.compile(model)).")
        last = self.schedule.prune_epoch(self.schedule.prune_events - 1)
        if trainer.max_epochs is not None and 0 <= trainer.max_epochs < last:
            rank_zero_warn(
                f"Trainer(max_epochs={trainer.max_epochs}) ends before the last scheduled prune at the start of "
                f"epoch {last}; the model would not be fully pruned. Use max_epochs={self.schedule.total_epochs} "
                "for this schedule.")
        if self._example is None and getattr(pl_module, "example_input_array", None) is not None:
            self._example = _first_tensor(pl_module.example_input_array)
        # Resuming fit(ckpt_path=...) after a rebuild: the model must have the pruned shapes before
        # Lightning loads the weights. A load_state_dict pre-hook (a public torch.nn.Module hook,
        # removed in teardown) applies the checkpoint's plan at that moment.
        if self._hook is None:
            self._hook = pl_module.register_load_state_dict_pre_hook(self._before_weights_load)
        self._fit_start = time.perf_counter()

    def _before_weights_load(self, module, state_dict, prefix, *args) -> None:
        if prefix:
            return
        checkpoint = getattr(self._trainer._checkpoint_connector, "_loaded_checkpoint", None) or {}
        loaded = checkpoint.get("state_dict")
        # Lightning restoring fit(ckpt_path=...): torch's load_state_dict hands the hook a copy of
        # the checkpoint's state dict (OrderedDict(state_dict)), so compare the tensors it holds
        if loaded is not None and len(loaded) == len(state_dict) and all(
                state_dict.get(k) is v for k, v in loaded.items()):
            apply_checkpoint_plan(module, checkpoint)

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        if self._example is None:
            found = _first_tensor(batch)
            if found is None:
                raise MisconfigurationException(
                    f"{type(self).__name__} could not find an input tensor in the training batch; pass "
                    "example_input= or set example_input_array on your LightningModule.")
            self._example = found[:2].detach().clone()
        if self.events_done >= self.schedule.prune_events:
            return
        if self._context is None:
            if self.target is not None and self.target.kind == "latency":  # real inputs to time on
                found = _first_tensor(batch)
                self._timing_rows = None if found is None else found[: self.target.batch_size].detach().clone()
            self._setup_method(trainer, pl_module)
        epoch = trainer.current_epoch
        due = epoch >= self.schedule.prune_epoch(self.events_done) or (self._prune_early and self.events_done == 0)
        if not due and not self._started and (self.events_done > 0 or epoch >= self.schedule.warmup_epochs):
            self._start_sparsify()  # before the first event after warm-up; between events at once
        if due:
            self._prune(trainer, pl_module)

    @override
    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if self._started:
            self.method.before_optimizer_step()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch: Any,
                           batch_idx: int) -> None:
        self._check_loss(trainer, outputs)
        n = self.schedule.update_every_n_steps
        step = trainer.global_step
        if not self._started or n is None or step == self._last_update_step or step % n:
            return
        self._update(pl_module, step)

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._started:
            if self.schedule.update_every_n_steps is None:
                self._update(pl_module, trainer.global_step)
            for key, value in self.method.metrics().items():
                self._log(pl_module, f"pruning/{key}", value, on_epoch=True, on_step=False)
            if self.schedule.stop_early and not self._prune_early and self.events_done == 0:
                ready, reason = self.method.ready()
                if ready and trainer.current_epoch + 1 < self.schedule.prune_epoch(0):
                    self._prune_early = True
                    rank_zero_info(f"{type(self).__name__}: {reason}; pruning at the start of the next epoch.")
        # when the schedule ends with a prune (no fine-tune epoch after it), the prune due at the
        # start of the next epoch happens now. A fit stopped earlier than the schedule (to be resumed)
        # leaves it to the resumed fit, which then records it at the scheduled epoch.
        if (self._context is not None and self.events_done < self.schedule.prune_events
                and trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
                and trainer.max_epochs >= self.schedule.total_epochs
                and trainer.current_epoch + 1 >= self.schedule.prune_epoch(self.events_done)):
            self._prune(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # also after a resume that trained no further (the result is not in the checkpoint)
        if self.plan is not None and self._dense is not None:
            example = self._example if self._example is not None else torch.zeros(self.plan.input_shape)
            self.result = self._build_result(count_cost(pl_module, example.to(pl_module.device)), fit_end=True)

    @override
    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        if self.plan is not None:
            checkpoint[PLAN_CHECKPOINT_KEY] = self.plan.to_dict()

    @override
    def state_dict(self) -> dict[str, Any]:
        if self._context is not None and self._started:
            method_state = self.method.state_dict()
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
            "last_update_step": self._last_update_step,
            "dense": self._dense,
            "latency": self._latency,
            "rng": _rng_states(),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("method") not in (None, self.method.name):
            raise ValueError(f"the checkpoint's pruning state is from method {state_dict['method']!r}, this callback "
                             f"runs {self.method.name!r}; resume with the same method")
        self.plan = PruningPlan.from_dict(state_dict["plan"]) if state_dict.get("plan") else None
        self.events_done = int(state_dict.get("events_done", 0))
        self._events = list(state_dict.get("events", []))
        self._trajectory = list(state_dict.get("trajectory", []))
        self._prune_early = bool(state_dict.get("prune_early", False))
        self._last_update_step = int(state_dict.get("last_update_step", -1))
        self._dense = state_dict.get("dense")
        self._latency = state_dict.get("latency")
        self._pending_method_state = state_dict.get("method_state") or None
        self._context = None
        self._started = False
        trainer = self._trainer
        if state_dict.get("rng") is not None and (trainer is None or trainer.world_size == 1):
            # Lightning's checkpoints hold no RNG state, so a shuffled DataLoader (or dropout) would
            # draw differently after a resume; restoring the states of the moment of the save makes
            # a resumed single-process run continue exactly like an uninterrupted one
            _set_rng_states(state_dict["rng"])

    # ------------------------------------------------------------- internals
    def _check_loss(self, trainer: Trainer, outputs) -> None:
        """Stop at the step whose loss is NaN or infinite. On CPU the check is immediate; on an
        accelerator the flag is copied asynchronously and read once the copy has finished (a
        step or two later), so training never waits for the device."""
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if not torch.is_tensor(loss):
            return
        if loss.device.type == "cpu":
            if not bool(torch.isfinite(loss).all()):
                self._raise_non_finite(trainer, float(loss.detach().float().sum()), trainer.global_step)
            return
        pending = self._loss_flag
        if pending is not None and pending[1].query():
            flag, _, step = pending
            self._loss_flag = None
            if not bool(flag):
                self._raise_non_finite(trainer, float("nan"), step)
        if self._loss_flag is None and loss.device.type == "cuda":
            flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            flag.copy_(torch.isfinite(loss.detach()).all(), non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._loss_flag = (flag, event, trainer.global_step)

    @staticmethod
    def _raise_non_finite(trainer: Trainer, value: float, step: int) -> None:
        raise FloatingPointError(
            f"the training loss is {value} at optimizer step {step} (epoch {trainer.current_epoch}); training "
            "stopped there. Checkpoints saved before this step are intact. Lower the learning rate (or the "
            "method's strength, e.g. rho for SSR), or clip gradients, and resume from the last checkpoint.")

    def _sync(self, trainer: Trainer):
        """Under data parallelism: every rank takes rank 0's decisions."""
        if trainer.world_size <= 1:
            return None
        return lambda obj: trainer.strategy.broadcast(obj, src=0)

    @staticmethod
    def _log(pl_module: LightningModule, name: str, value: float, **kwargs) -> None:
        # every rank holds the same value; syncing keeps Lightning's epoch-level reduction exact
        pl_module.log(name, value, sync_dist=pl_module.trainer.world_size > 1, **kwargs)

    def _find_groups(self, pl_module: LightningModule, example: torch.Tensor) -> list[ChannelGroup]:
        names = {m: n for n, m in pl_module.named_modules()}
        missing = [type(m).__name__ for m in self._ignored_modules if m not in names]
        if missing:
            raise ValueError(f"ignored_layers: modules {missing} are not part of the LightningModule")
        ignored = self._ignored_names + [names[m] for m in self._ignored_modules]
        self._ignored_resolved = ignored
        try:
            return find_channel_groups(pl_module, example, ignored)
        except (UnsupportedLayerError, ValueError):
            raise
        except Exception as err:  # whatever forward() raises on a plain tensor
            raise MisconfigurationException(
                f"{type(self).__name__} traces the LightningModule's forward() on one input tensor of shape "
                f"{tuple(example.shape)} (from example_input=, example_input_array or the first training batch) "
                f"to find prunable filters, and that failed: {type(err).__name__}: {err}. Define forward(x) to run "
                "the network on the input tensor (a forward() taking a dict or several inputs is not supported), "
                "or pass example_input=.") from err

    def _setup_method(self, trainer: Trainer, pl_module: LightningModule) -> None:
        example = self._example.to(pl_module.device)
        groups = self._find_groups(pl_module, example)
        if not groups:
            raise MisconfigurationException(f"{type(self).__name__} found no prunable filters in the model.")
        cost = count_cost(pl_module, example)
        budget = self.budget
        if self._dense is None:  # first set-up, on the dense model
            sizes = {g.name: g.size for g in groups}
            round_to = budget.round_to_on(example.device)
            floor = budget.floors(groups, round_to)
            final = None
            if self.allocation in ("uniform", "global", "rates"):
                scores = None
                if self.allocation == "global":
                    scores = self.method.importance(pl_module, groups) or {
                        g.name: g.norms({n: p.detach() for n, p in pl_module.named_parameters()}) for g in groups}
                final, self._latency = budget.keep_counts(pl_module, example, groups, cost, round_to=round_to,
                                                          allocation=self.allocation, scores=scores, shared=[self],
                                                          timing_input=self._timing_rows)
                if trainer.world_size > 1:  # timings (and ties) may differ between ranks: rank 0 decides
                    final = trainer.strategy.broadcast(final, src=0)
                    if self._latency is not None:
                        self._latency = trainer.strategy.broadcast(self._latency, src=0)
            elif self.allocation == "method" and self.target.kind != "latency":
                budget.check(pl_module, groups, cost, round_to)  # the floors fit the target
            self._dry_run(pl_module, example, groups, floor)
            self._dense = {"sizes": sizes, "min_keep": floor, "final_keep": final, "cost": cost.to_dict(),
                           "round_to": round_to, "allocation": self.allocation,
                           "steps": {g.name: group_step(g, round_to) for g in groups}}
        dense = self._dense
        min_keep = {g.name: min(dense["min_keep"][g.name], g.size) for g in groups}
        keep = None
        if dense["final_keep"] is not None:
            keep = intermediate_keep_counts(dense["sizes"], dense["final_keep"], self.events_done,
                                            self.schedule.prune_events, dense["min_keep"],
                                            dense.get("steps") or dense.get("round_to", 1))
            keep = {g.name: min(keep[g.name], g.size) for g in groups}
        view = None
        if dense.get("allocation") == "method" and dense["final_keep"] is None:
            view = budget.view(pl_module, groups, cost, dense["round_to"], self._method_latency_table(pl_module, example,
                                                                                                        groups, cost))
            if not view.fits(view.floor):
                budget.check(pl_module, groups, cost, dense["round_to"])  # says why
                raise ValueError(f"target {self.target.to_dict()} is below what the layers' floors already cost "
                                 f"({view.fraction(view.floor):.4f} of the dense model); raise it or relax "
                                 "min_channels / max_pruning_ratio / round_to")
        self._context = MethodContext(model=pl_module, groups=groups, cost=cost,
                                      channel_macs=channel_macs(groups, cost), keep=keep, min_keep=min_keep,
                                      sync=self._sync(trainer), example=example, event=self.events_done,
                                      events=self.schedule.prune_events, final_keep=dense["final_keep"],
                                      evaluate=self._evaluate or validation_accuracy(trainer, pl_module),
                                      allocation=dense.get("allocation", "uniform"), budget=view,
                                      sparsify_updates=self._planned_updates(trainer))
        self.method.setup(self._context)
        if self._pending_method_state is not None:
            self.method.load_state_dict(self._pending_method_state)
            self._pending_method_state = None
            self._started = True
        if self.verbose and self.events_done == 0 and not self._started:
            goal = f"target {self.target.to_dict()}" if self.target is not None else "no target (the method decides)"
            rank_zero_info(f"{type(self).__name__}: {self.method.name}, {len(groups)} prunable groups, {goal}; "
                           f"first prune at the start of epoch {self.schedule.prune_epoch(0)}.")

    def _dry_run(self, pl_module: LightningModule, example: torch.Tensor, groups: Sequence[ChannelGroup],
                 floor: Mapping[str, int]) -> None:
        """Prune a deep copy of the model to every group's minimum and check the rebuild, before
        the first optimizer step: what would fail at the real prune fails now."""
        trial = model_copy(pl_module, shared=[self])
        try:
            dry_run(trial, example, groups, floor)
        finally:
            del trial

    def _method_latency_table(self, pl_module: LightningModule, example: torch.Tensor, groups, cost):
        """A latency target learned by the method: the per-layer table it steers by (timed once,
        on the dense model, with the allocator steadied as for any latency allocation)."""
        if self.target.kind != "latency":
            return None
        if self._latency_table is None:
            steady_allocator()
            self._latency_table, _ = latency_table(pl_module, example, groups, cost, self.target, self._timing_rows)
        return self._latency_table

    def _planned_updates(self, trainer: Trainer) -> int | None:
        """The method's periodic updates in the sparsify phase (None where the epoch length is unknown)."""
        batches = trainer.num_training_batches
        if not isinstance(batches, int) and not (isinstance(batches, float) and math.isfinite(batches)):
            return None
        steps = math.ceil(int(batches) / max(1, trainer.accumulate_grad_batches)) * self.schedule.sparsify_epochs
        every = self.schedule.update_every_n_steps
        return max(1, steps // every) if every else max(1, self.schedule.sparsify_epochs)

    def _start_sparsify(self) -> None:
        if self.method.sparsifies:
            self.method.start()
            self._started = True

    def _update(self, pl_module: LightningModule, step: int) -> None:
        metrics = self.method.update()
        self._last_update_step = step
        learned = self.method.learned_counts() if self.events_done == 0 else None
        if learned:  # the structure the method holds, update by update, until the first prune
            self._trajectory.append({"step": int(step), "kept": {k: int(v) for k, v in learned.items()}})
        for key, value in metrics.items():
            self._log(pl_module, f"pruning/{key}", value)

    def _prune(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Select, mask, rebuild, remap the optimizer(s), and record the event."""
        ctx = self._context
        example = self._example.to(pl_module.device)
        keep = ctx.keep
        learned = self.method.learned_counts()
        if keep is None and self._dense.get("allocation") == "method":
            keep = self._method_counts(trainer, pl_module, example, ctx)
        masks = self.method.select(keep)
        masks = self._check_masks(masks, ctx)
        if trainer.world_size > 1:  # every rank prunes exactly what rank 0 decided
            masks = trainer.strategy.broadcast(masks, src=0)
        step_plan = plan_from_support(example.shape, masks, ctx.groups)
        before = ctx.cost
        old_params = dict(pl_module.named_parameters())
        remap = prune_channels(pl_module, example, step_plan.kept, step_plan.sizes)
        new_params = dict(pl_module.named_parameters())
        for optimizer in trainer.optimizers:
            remap_optimizer(optimizer, old_params, new_params, remap)
        if isinstance(trainer.strategy, DDPStrategy) and trainer.world_size > 1:
            # the old DistributedDataParallel wrapper holds the old parameters: wrap again
            trainer.strategy.model = pl_module
            trainer.strategy.configure_ddp()
        after = count_cost(pl_module, example)
        self.plan = step_plan if self.plan is None else self.plan.then(step_plan)
        setattr(pl_module, APPLIED_PLAN_ATTR, self.plan.to_dict())
        info = dict(self.method.after_rebuild(pl_module, step_plan) or {})
        if self._latency is not None and self.events_done + 1 == self.schedule.prune_events:
            rows = example if self._timing_rows is None else self._timing_rows.to(example.device, example.dtype)
            batch = timing_batch(rows, self.target.batch_size)
            was_training = pl_module.training
            pl_module.eval()
            try:
                measured = time_ms(lambda: pl_module(batch), device=batch.device, min_seconds=WHOLE_MODEL_SECONDS)
            finally:
                pl_module.train(was_training)
            info.update(latency_dense_ms=self._latency["dense_ms"], latency_predicted_ms=self._latency["predicted_ms"],
                        latency_measured_ms=measured, latency_uncalibrated_ms=self._latency.get("uncalibrated_ms"),
                        latency_calibrated_ms=self._latency.get("calibrated_ms"),
                        latency_calibration_ms=self._latency.get("calibration_ms"))
        self.events_done += 1
        counts = {g.name: int(masks[g.name].sum()) for g in ctx.groups}
        self._events.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                             "macs": int(after.macs), "params": int(after.params),
                             "keep": counts, "allocation": self._dense.get("allocation", "uniform"),
                             **({"learned": {k: int(v) for k, v in learned.items()}} if learned else {}), **info})
        self._context = None
        self._started = False
        self._log(pl_module, "pruning/macs", float(after.macs), on_epoch=True, on_step=False)
        self._log(pl_module, "pruning/params", float(after.params), on_epoch=True, on_step=False)
        self.result = self._build_result(after)
        if self.verbose:
            rank_zero_info(f"{type(self).__name__}: pruned at the start of epoch {trainer.current_epoch} "
                           f"(event {self.events_done} of {self.schedule.prune_events})\n"
                           + format_layer_table(layer_rows(before, after), before, after))

    def _method_counts(self, trainer: Trainer, pl_module: LightningModule, example: torch.Tensor,
                       ctx: MethodContext) -> dict[str, int]:
        """The counts of this event from the structure the method learned (``allocation="method"``):
        a threshold on the method's cross-layer channel values that meets the target (within the
        target's tolerance, from below), then this event's share of the way there."""
        values = self.method.allocation_scores()
        if values is None:
            raise RuntimeError(f"pruning method {self.method.name!r} learns the structure (allocation='method') "
                               "but gave no channel values at the prune; did its sparsify phase run?")
        if trainer.world_size > 1:
            values = trainer.strategy.broadcast(values, src=0)
        dense = self._dense
        final, latency = self.budget.keep_counts(pl_module, example, ctx.groups, ctx.cost, round_to=dense["round_to"],
                                                 allocation="method", scores=values, shared=[self],
                                                 timing_input=self._timing_rows, table=self._latency_table)
        if trainer.world_size > 1:
            final = trainer.strategy.broadcast(final, src=0)
            latency = trainer.strategy.broadcast(latency, src=0)
        dense["final_keep"] = final
        if latency is not None:
            self._latency = latency
        keep = intermediate_keep_counts(dense["sizes"], final, self.events_done, self.schedule.prune_events,
                                        dense["min_keep"], dense.get("steps") or dense.get("round_to", 1))
        ctx.final_keep = final
        return {g.name: min(keep[g.name], g.size) for g in ctx.groups}

    def _check_masks(self, masks: Mapping[str, torch.Tensor], ctx: MethodContext) -> dict[str, torch.Tensor]:
        out = {}
        for g in ctx.groups:
            m = masks.get(g.name)
            if m is None or m.numel() != g.size:
                raise RuntimeError(f"pruning method {self.method.name!r} returned no mask (or a mask of the wrong size) "
                                   f"for group {g.name!r}")
            m = m.detach().to("cpu", torch.bool).flatten()
            if g.blocks > 1:  # grouped convolutions: the same positions in every block
                with torch.no_grad():
                    m = align_blocks(g, m, g.norms(ctx.params))
            if int(m.sum()) < ctx.min_keep.get(g.name, 1):
                raise RuntimeError(f"pruning method {self.method.name!r} keeps {int(m.sum())} channels of {g.name!r}, "
                                   f"fewer than its minimum {ctx.min_keep.get(g.name, 1)}")
            out[g.name] = m
        return out

    def _build_result(self, after: ModelCost, fit_end: bool = False) -> PruningResult:
        dense = ModelCost.from_dict(self._dense["cost"])
        config = {"method": self.method.config(), "schedule": asdict(self.schedule),
                  "min_channels": self.min_channels, "max_pruning_ratio": self.max_pruning_ratio,
                  "allocation": self.allocation, "round_to": self._dense.get("round_to", 1),
                  "ignored_layers": list(self._ignored_resolved)}
        return PruningResult(
            method=self.method.name, config=config,
            target=self.target.to_dict() if self.target is not None else None,
            dense={"macs": int(dense.macs), "params": int(dense.params)},
            pruned={"macs": int(after.macs), "params": int(after.params)},
            layers=layer_rows(dense, after), plan=self.plan.to_dict() if self.plan is not None else None,
            events=list(self._events), trajectory=list(self._trajectory),
            timings=self._timings(fit_end))

    def _timings(self, fit_end: bool) -> dict:
        """Seconds since this process's ``fit`` started: to the last prune event, and to the fit's end."""
        if self._fit_start is None:
            return {}
        now = time.perf_counter() - self._fit_start
        if fit_end:
            return {**self._prune_timing, "fit_s": now}
        self._prune_timing = {"last_prune_s": now}
        return dict(self._prune_timing)


class SSRPruning(Pruning):
    r"""SSR (AULM with L2,1 or L2,0) through the generic :class:`Pruning` engine, with the
    arguments of earlier versions.

    ``flops_budget`` / ``filter_budget`` become ``target={"macs": ...}`` / ``{"filters": ...}``
    (the L2,0 budget form); the other arguments go to :class:`~lightning_ssr.methods.SSR`.
    """

    def __init__(self, regularizer: str = "l21", lam: float | Mapping[str, float] = 1e-3, lam_scaling: str = "flops",
                 flops_budget: float | None = None, filter_budget: float | None = None, rho: float = 0.1,
                 rho_growth: float = 1.0, rho_max: float | None = None,
                 schedule: PruningSchedule | Mapping | None = None, ignored_layers: Sequence[str | nn.Module] = (),
                 min_channels: int = 1, max_pruning_ratio: float = 1.0, example_input: torch.Tensor | None = None,
                 tol: float = 1e-3, patience: int = 3, verbose: bool = True):
        if flops_budget is not None and filter_budget is not None:
            raise ValueError("SSRPruning: give flops_budget or filter_budget, not both")
        budget = {"macs": flops_budget} if flops_budget is not None else (
            {"filters": filter_budget} if filter_budget is not None else None)
        if budget is not None and regularizer != "l20":
            raise ValueError("SSRPruning: a FLOPs/filter budget selects the budget form of L2,0: set regularizer='l20'")
        method = SSR(regularizer=regularizer, lam=lam, lam_scaling=lam_scaling, rho=rho, rho_growth=rho_growth,
                     rho_max=rho_max, tol=tol, patience=patience)
        super().__init__(method=method, target=budget, schedule=schedule, ignored_layers=ignored_layers,
                         min_channels=min_channels, max_pruning_ratio=max_pruning_ratio,
                         example_input=example_input, verbose=verbose)
