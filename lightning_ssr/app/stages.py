"""The job's stages, each a plain function that the command, the recipes, the benchmarks and a
notebook call alike::

    from lightning_ssr.app.cli import compose_config
    from lightning_ssr.app.stages import build_data, compress, evaluate, train_dense

    cfg = compose_config(["pruning=oneshot", "target.macs=0.25"])
    dm = build_data(cfg)
    net, dense_info = train_dense(cfg, dm, out)     # the dense network (cached)
    lm, callback = compress(cfg, net, dm, out)      # a pruned copy in a LightningModule
    metrics = evaluate(cfg, dm, net, lm.model)      # accuracy, cost and latency of both

:func:`lightning_ssr.app.cli.run` composes them as the command does.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
import traceback
import warnings
from dataclasses import asdict
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from torch import nn

from .. import __version__
from ..checkpoint import CheckpointReadError, load_pruned, read_checkpoint, save_pruned, saved_model_kind
from ..cost import ModelCost, count_cost
from ..engine import steps_per_epoch
from ..latency import compare_latency, others_share
from ..modes import eval_mode
from ..pruning import SHORT_FIT, SHORT_FIT_STEPS, Pruning
from ..report import PruningResult, format_layer_table, layer_rows, write_json
from ..schedule import PruningSchedule
from ..structure import find_channel_groups
from ..structure.groups import ForwardError
from ..structure.plan import PlanMismatchError
from ..targets import TARGET_KINDS, parse_rates
from ..validation import check_flag, check_number, some_names
from .console import lines_dropped, progress_bars
from .data import check_augment
from .export import (
    EXPORT_FORMATS,
    check_export_available,
    export_onnx,
    export_program,
    export_torchscript,
    exported_max_abs_diff,
    onnx_max_abs_diff,
)
from .sweep import flatten_config

#: Keys of the ``target`` group that are limits, not the target itself.
TARGET_LIMITS = ("min_channels", "max_pruning_ratio", "allocation", "round_to")


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def input_shape(dm: pl.LightningDataModule) -> list[int]:
    return [1, dm.in_channels, dm.image_size, dm.image_size]


def input_description(dm: pl.LightningDataModule) -> dict | None:
    """What the network trained on ``dm`` reads, for whoever feeds the pruned model images of their
    own (kept in ``pruned.pt`` and ``result.json``): the shape of one image and the normalization
    the data module applied, ``(x - mean) / std`` to pixels in [0, 1] (grey images repeated where
    the network reads colour); ``None`` for a data module of your own (it says nothing of it)."""
    norm = getattr(dm, "normalization", None)
    if not isinstance(norm, dict):
        return None
    return {"data": type(dm).__name__, "shape": input_shape(dm)[1:], "pixels": "in [0, 1], then (x - mean) / std",
            **norm}


# ----------------------------------------------------------------- building
def build_schedule(cfg: DictConfig) -> PruningSchedule:
    try:
        return PruningSchedule(**_plain(cfg.schedule))
    except (TypeError, ValueError) as err:  # named as the config group the user gave it in
        raise type(err)(f"schedule: {str(err).removeprefix('PruningSchedule: ')}") from err


def pruning_enabled(cfg: DictConfig) -> bool:
    """``False`` for ``pruning=none`` (the equal-budget dense baseline)."""
    return cfg.pruning.get("name", "none") not in (None, "none")


def build_pruning(cfg: DictConfig) -> Pruning | None:
    """The :class:`~lightning_ssr.Pruning` callback of ``cfg.pruning`` (``name`` plus the method's
    arguments and ``ignored_layers``), ``cfg.target`` and ``cfg.schedule``; ``None`` with
    ``pruning=none``. Every argument is validated here, before any training."""
    schedule = build_schedule(cfg)
    if not pruning_enabled(cfg):
        return None
    kwargs = _plain(cfg.pruning)
    name = kwargs.pop("name")
    ignored = kwargs.pop("ignored_layers", None) or []
    target = {k: v for k, v in _plain(cfg.target).items() if k not in TARGET_LIMITS}
    given = [k for k in TARGET_KINDS if target.get(k) is not None]
    if len(given) > 1:  # (a value given for another kind than the chosen group's)
        choices = " or ".join(f"target={k} target.{k}={target[k]}" for k in given)
        raise ValueError(f"the target sets {' and '.join(f'target.{k}={target[k]}' for k in given)}: a target is one "
                         f"of {', '.join(TARGET_KINDS)}. Choose the one you mean with its group ({choices}: each "
                         "group's file leaves the other kinds null)")
    return Pruning(method=name, method_kwargs=kwargs, target=target, schedule=schedule, ignored_layers=ignored,
                   min_channels=cfg.target.get("min_channels", 1),
                   max_pruning_ratio=cfg.target.get("max_pruning_ratio", 1.0),
                   allocation=cfg.target.get("allocation"), round_to=cfg.target.get("round_to"),
                   verbose=bool(cfg.verbose))


def weight_averaging(cfg: DictConfig) -> list[pl.Callback]:
    """``[EMAWeightAveraging(decay=ema_decay)]`` for the run that prunes (its average starts again
    from the pruned model at each prune, and the run ends with it), or ``[]`` with ``ema_decay=null``."""
    decay = check_number("the config", "ema_decay (the weights' moving average's decay per optimizer step, "
                         "e.g. 0.999; null: none)", cfg.get("ema_decay"), low=0.0, high=1.0, low_open=True,
                         high_open=True, optional=True)
    if decay is None:
        return []
    ema = getattr(pl.callbacks, "EMAWeightAveraging", None)
    if ema is None:
        raise ValueError(f"ema_decay={decay} needs Lightning's EMAWeightAveraging (Lightning 2.6+; installed: "
                         f"{pl.__version__}): pip install 'lightning>=2.6', or set ema_decay=null")
    return [_moving_average(ema)(decay=decay)]


@functools.cache  # (one class)
def _moving_average(ema: type[pl.Callback]) -> type[pl.Callback]:
    """``EMAWeightAveraging`` that also keeps its decay in the checkpoint (under the same state key,
    so that either class reads the other's), so that a resume with another decay is refused at
    set-up: Lightning's keeps only its last update step."""

    class MovingAverage(ema):
        def __init__(self, decay: float):
            super().__init__(decay=decay)
            self.decay = decay

        @property
        def state_key(self) -> str:
            return ema.__qualname__

        def state_dict(self) -> dict:
            return {**super().state_dict(), "decay": self.decay}

    return MovingAverage


def _check_resumed_average(cfg: DictConfig, checkpoint: dict, averaging: list[pl.Callback]) -> None:
    """A checkpoint of a run with ema_decay holds the average as its state_dict and the weights
    trained on as ``current_model_state``: resumed without the average, Lightning would go on from
    the average; with it where the run had none, from the weights as their average. And another
    decay would go on averaging at another rate than the run began."""
    if bool(averaging) != ("current_model_state" in checkpoint):
        written = "with ema_decay set" if not averaging else "without ema_decay (ema_decay=null)"
        raise ValueError(f"ckpt_path={cfg.ckpt_path} was written by a run {written}: resume with the same "
                         "ema_decay as that run")
    if not averaging:
        return
    (average,) = averaging
    state = (checkpoint.get("callbacks") or {}).get(average.state_key)
    if isinstance(state, dict) and state.get("decay") not in (None, average.decay):
        raise ValueError(f"ckpt_path={cfg.ckpt_path} was written by a run with ema_decay={state['decay']}, not "
                         f"{average.decay}: resume with the same ema_decay as that run")


#: where the run that prunes keeps its settings in each checkpoint it writes (:class:`RunSettingsRecord`)
RUN_SETTINGS_KEY = "lightning_ssr_run_settings"
#: where it keeps the path of the dense model it was compressed from (its baseline and teacher)
DENSE_MODEL_KEY = "lightning_ssr_dense_model"

#: configuration a resume may change: the compression settings the callback compares itself
#: (``Pruning.check_resume``, which lets a fine-tune grow), ``ema_decay`` (compared above), the
#: Trainer's, and what only places, shows or measures the run
RESUMABLE_CHANGES = ("ckpt_path", "hydra", "pruning", "schedule", "target", "ema_decay", "trainer", "verbose",
                     "latency", "export", "plugins")
#: keys, at any depth (a recipe's second data set too), that only place files or feed the loaders
RESUMABLE_LEAVES = ("root", "num_workers", "eval_batch_size", "cache_dir", "use_cache")


def run_settings(cfg: DictConfig) -> dict:
    """The settings a resumed run must share with the run that wrote its checkpoint (flat
    ``key: value``, each value as JSON, so that 1 and 1.0 differ as the run's numbers do): the
    seed, the network, the data, the module, the dense model and a recipe's own settings;
    everything but :data:`RESUMABLE_CHANGES` and :data:`RESUMABLE_LEAVES`. A value that resolves
    only inside a Hydra job (``${hydra:...}``) is compared as written."""
    raw, plain = OmegaConf.to_container(cfg, resolve=False), {}
    for key in raw:
        if key in RESUMABLE_CHANGES:
            continue
        try:
            value = cfg[key]
            # (a mapping or a list as plain data: a ListConfig in a checkpoint would not load with weights_only)
            plain[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        except Exception:  # noqa: BLE001 - an interpolation that resolves only in a Hydra job
            plain[key] = raw[key]
    return {k: v for k, v in flatten_config(_json_leaves(plain)).items() if k.rsplit(".", 1)[-1] not in RESUMABLE_LEAVES}


def _json_leaves(value):
    """``value`` with each mapping kept and every other value (a list too) as its JSON text."""
    if isinstance(value, dict):
        return {k: _json_leaves(v) for k, v in value.items()}
    return json.dumps(value, sort_keys=True, default=str)


class RunSettingsRecord(pl.Callback):
    """Keeps :func:`run_settings` in every checkpoint of the run that prunes, so that a resume with
    other settings is refused at set-up (:func:`_check_resumed_settings`): it would go on with the
    checkpoint's weights and optimizer, and ``result.json`` would record settings the run never had."""

    def __init__(self, settings: dict, dense: str | None = None):
        self.settings, self.dense = settings, dense

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint[RUN_SETTINGS_KEY] = dict(self.settings)
        if self.dense is not None:  # (a resume compares with, and distills from, this one: resumed_dense_model)
            checkpoint[DENSE_MODEL_KEY] = str(Path(self.dense).resolve())


def resumed_dense_model(cfg: DictConfig, checkpoint: dict | None = None, keyed: DictConfig | None = None
                        ) -> Path | None:
    """For a resume (``ckpt_path``): the dense model the checkpoint's run was compressed from, where
    this configuration keys another (a trainer setting changed, which a resume allows: the dense
    cache is keyed by them), so that the resumed run compares with and distills from the same dense
    model; ``None`` where they are the same, or the checkpoint does not say (one of a fit of your
    own, or of an earlier version). Refused (``ValueError``) where that model is gone. ``keyed``:
    the configuration the dense model is trained with, where it is not ``cfg`` (a recipe's source
    model is trained on another data set)."""
    if cfg.get("ckpt_path") is None:
        return None
    recorded = _recorded_dense(cfg.ckpt_path, checkpoint)
    keyed = cfg if keyed is None else keyed
    current = dense_cache_path(keyed)
    if not isinstance(recorded, str):
        return None
    if Path(recorded).name == current.name and (current.is_file() or not Path(recorded).is_file()):
        return None  # (the same key, found in this dense.cache_dir, e.g. on another machine; or trained again)
    for found in (Path(recorded), current.with_name(Path(recorded).name)):  # (there, or in this cache_dir)
        if found.is_file():
            try:  # (into a throwaway network, at set-up: refused before anything trains)
                _read_cached(build_network(keyed, build_data(keyed)), found)
            except CACHE_LOAD_ERRORS as err:
                raise ValueError(_unloadable_dense(found, err)) from err
            return found
    raise ValueError(f"ckpt_path={cfg.ckpt_path} was written by a run compressed from the dense model {recorded}, "
                     f"which is gone (not in dense.cache_dir={cfg.dense.cache_dir} either), and these settings key "
                     f"another ({current.name}: a trainer setting, or the network's code, changed): the resumed run "
                     "would compare with, and distill from, another dense model. Resume with the trainer settings of "
                     "that run, or start a new run without ckpt_path")


#: the last checkpoint's recorded dense model, by (path, modification time, size): the set-up reads
#: the checkpoint once, and the run asks again without reading it a second time
_RECORDED_DENSE: dict[tuple, object] = {}


def _recorded_dense(path, checkpoint: dict | None) -> object:
    """``checkpoint[DENSE_MODEL_KEY]`` of the checkpoint at ``path`` (read where ``checkpoint`` is
    not given and this file, unchanged, was not seen before)."""
    try:
        stat = Path(path).stat()
        key = (str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)
    except OSError:  # (missing: read_checkpoint names it)
        key = None
    if checkpoint is None and key is not None and key in _RECORDED_DENSE:
        return _RECORDED_DENSE[key]
    recorded = (read_checkpoint(path) if checkpoint is None else checkpoint).get(DENSE_MODEL_KEY)
    _RECORDED_DENSE.clear()
    if key is not None:
        _RECORDED_DENSE[key] = recorded
    return recorded


def _check_resumed_settings(cfg: DictConfig, checkpoint: dict) -> None:
    written = checkpoint.get(RUN_SETTINGS_KEY)
    if not isinstance(written, dict):  # a checkpoint of a fit of your own, or of an earlier version
        return
    now = run_settings(cfg)
    changed = [f"{k}: {_shown(written, k)} -> {_shown(now, k)}" for k in sorted(set(written) | set(now))
               if written.get(k) != now.get(k)]  # (values are JSON text, never None)
    if changed:
        raise ValueError(f"ckpt_path={cfg.ckpt_path} was written by a run with other settings "
                         f"({some_names(changed)}): a resume goes on with that run's weights and optimizer, so "
                         "these would not apply, and result.json would record them. Resume with that run's "
                         "settings, or start a new run without ckpt_path")


def _shown(settings: dict, key: str) -> str:
    return "(unset)" if key not in settings else str(settings[key])  # (JSON text: a string shows quoted)


def build_data(cfg: DictConfig) -> pl.LightningDataModule:
    """The data module of ``cfg.data``, set up (its splits loaded)."""
    dm = instantiate(cfg.data)
    dm.setup()
    return dm


def build_network(cfg: DictConfig, dm: pl.LightningDataModule) -> nn.Module:
    """A freshly initialized network of ``cfg.model`` for ``dm``'s inputs, seeded with ``cfg.seed``."""
    pl.seed_everything(cfg.seed, workers=True)  # the dense model's initialization depends on it
    return instantiate(cfg.model, in_channels=dm.in_channels, num_classes=dm.num_classes, input_size=dm.image_size)


def build_module(cfg: DictConfig, net: nn.Module, dm: pl.LightningDataModule, **overrides) -> pl.LightningModule:
    """The LightningModule of ``cfg.module`` around ``net``."""
    return instantiate(cfg.module, model=net, num_classes=dm.num_classes, **overrides)


#: Lightning's (and NumPy's) range of seeds
MAX_SEED = 2**32 - 1


def check_run_settings(cfg: DictConfig) -> None:
    """The run's own settings (seed, dense stage, latency, flags), before anything is built: a
    negative ``dense.epochs`` trained forever (Lightning's ``max_epochs=-1``), ``seed=1.5`` seeded
    with 1, ``latency.batch_sizes=[0]`` timed empty batches, a string flag read as true."""
    owner = "config"
    for key, what in (("in_channels", "its images' channels (data=mnist_rgb: the digits in 3)"),
                      ("num_classes", "its classes"), ("input_size", "its images' size (data.image_size)")):
        if key in cfg.model:  # (+model.in_channels=3 built the data's 1 channel and result.json said 3: probe)
            raise ValueError(f"{owner}: model.{key} comes from the data set, {what}, not from the model's "
                             f"config: leave +model.{key}={cfg.model[key]} out")
    check_number(owner, "seed", cfg.seed, low=0, high=MAX_SEED, integer=True)
    check_number(owner, "dense.epochs", cfg.dense.epochs, low=0, integer=True)
    check_number(owner, "dense.lr", cfg.dense.lr, low=0.0, low_open=True)
    check_number(owner, "latency.repeats", cfg.latency.repeats, low=1, integer=True)
    sizes = cfg.latency.batch_sizes
    if not OmegaConf.is_list(sizes) and not isinstance(sizes, (list, tuple)):
        raise TypeError(f"{owner}: latency.batch_sizes must be a list of batch sizes (e.g. [1, 256], or [] to "
                        f"time nothing), got {sizes!r}")
    for size in sizes:
        check_number(owner, "latency.batch_sizes", size, low=1, integer=True)
    for name, value in (("verbose", cfg.verbose), ("dense.use_cache", cfg.dense.use_cache)):
        check_flag(name, value, owner)


#: set (true) on an error :func:`check_config` raised, before any training: the command prints it
#: in one line, without a traceback
REFUSED_BEFORE_TRAINING = "lightning_ssr_refused_before_training"


def plainly(err: BaseException) -> BaseException:
    """An error of an object Hydra built (``InstantiationException``: "Error in call to target
    '...'", the cause's repr, "full_key: module", on three lines) as its cause alone, in one line,
    prefixed with the config key where the cause does not name it; any other error as it is."""
    from hydra.errors import InstantiationException

    cause = err.__cause__
    if not isinstance(err, InstantiationException) or not isinstance(cause, Exception):
        return err
    key = re.search(r"full_key: (\S+)", str(err))
    text = cause.args[0] if isinstance(cause, KeyError) and len(cause.args) == 1 else cause  # (no repr quotes)
    said = " ".join(str(text).split())
    if key and not re.match(rf"{re.escape(key.group(1))}\b", said):
        said = f"{key.group(1)}: {said}"
    try:
        plain = type(cause)(said)
    except Exception:  # noqa: BLE001 - an exception class of other arguments: said as a ValueError
        plain = None
    if plain is None or str(plain) != said:  # (a KeyError quotes its message: said as a ValueError too)
        plain = ValueError(said)
    plain.__cause__ = cause
    return plain


@contextlib.contextmanager
def before_training():
    """Checks made before anything trains: what they raise (a Ctrl-C too) is marked
    :data:`REFUSED_BEFORE_TRAINING` (the command prints a refusal in one line; a value an object
    Hydra builds refuses, as that object's own error: :func:`plainly`)."""
    try:
        yield
    except (Exception, KeyboardInterrupt) as err:
        plain = plainly(err)
        setattr(plain, REFUSED_BEFORE_TRAINING, True)
        if plain is err:
            raise
        raise plain from err.__cause__


def check_config(cfg: DictConfig, resumes_the_module: bool = False) -> tuple[Pruning | None, pl.LightningDataModule]:
    """Build everything a run needs once, so that a bad value fails before any training.
    Returns the pruning callback (``None`` with ``pruning=none``) and the data module.
    ``resumes_the_module``: ``ckpt_path`` resumes the module this builds (the default job's; a
    recipe trains another), so the checkpoint's plan must rebuild it: one of another
    architecture is refused now, not in Lightning's restore after the dense model."""
    with before_training():
        return _check_config(cfg, resumes_the_module)


def _check_config(cfg: DictConfig, resumes_the_module: bool = False) -> tuple[Pruning | None, pl.LightningDataModule]:
    callback, averaging = check_settings(cfg)
    # missing, truncated or not a checkpoint: an error naming the file
    checkpoint = read_checkpoint(cfg.ckpt_path) if cfg.ckpt_path is not None else None
    if checkpoint is not None and "pytorch-lightning_version" not in checkpoint:
        made = saved_model_kind(checkpoint) or "a state dict"
        raise ValueError(f"ckpt_path={cfg.ckpt_path} is {made}, not a Lightning checkpoint of a fit: ckpt_path goes on "
                         "with an interrupted run, from a checkpoint its training wrote (the run's "
                         "logs/version_0/checkpoints/epoch=N-step=M.ckpt). A pruned model is loaded with "
                         "lightning_ssr.load_pruned(fresh_network, 'pruned.pt')")
    if checkpoint is not None:
        _check_resumed_settings(cfg, checkpoint)
        _check_resumed_average(cfg, checkpoint, averaging)
        if resumes_the_module:  # (the default job's dense model: a recipe trains its own)
            resumed_dense_model(cfg, checkpoint)  # (gone, where the settings key another: refused now)
    instantiate(cfg.trainer, max_epochs=1, logger=False, enable_checkpointing=False)
    dm = build_data(cfg)
    net = build_network(cfg, dm)
    lm = build_module(cfg, net, dm)
    build_module(cfg, net, dm, lr=cfg.dense.lr)
    check_evaluation_limits(cfg, dm)
    if checkpoint is not None and resumes_the_module:
        # its weights into a copy, through its plan: a checkpoint of another network is told as such, before
        # the settings its callback state holds are compared with these (Lightning's own error came after
        # the dense training, as a failed run)
        try:
            load_pruned(copy.deepcopy(lm), checkpoint)
        except (PlanMismatchError, ForwardError) as err:
            raise PlanMismatchError(f"ckpt_path={cfg.ckpt_path}: {err}") from err
    if checkpoint is not None and callback is not None:
        try:  # another method, or other settings: refused as the resume would
            callback.check_resume(checkpoint)
        except ValueError as err:  # (its advice is the library's: said in the command's terms too)
            raise ValueError(f"ckpt_path={cfg.ckpt_path}: {str(err).rstrip('.')}. With this command: resume with the settings of the "
                             "run that wrote it, or run without ckpt_path, which compresses the dense model anew") \
                from err
    if callback is not None:
        check_target(cfg, callback, lm, dm)
        if resumes_the_module and checkpoint is None:  # (the default job: the fit trains on dm's batches)
            check_update_interval(cfg, callback, dm)
    return callback, dm


def _short_fit_warning(max_epochs: int, callback: Pruning) -> str:
    """What the command warns of where ``trainer.max_epochs`` ends the run before its scheduled
    prune but the method may still prune early (:func:`check_settings`); ``result.json`` keeps it
    in these words, not the callback's (:func:`fit_to_prune`)."""
    schedule = callback.schedule
    least = next(n for n in range(schedule.total_epochs + 1) if schedule.reaches_last_prune(n))
    return (f"trainer.max_epochs={max_epochs} ends the compression run before its scheduled prune, at the start of "
            f"epoch {schedule.last_prune_epoch} (0-based) of the schedule's {schedule.total_epochs}: the model is "
            f"pruned only if {callback.method.name} converges before (schedule.stop_early), else the run ends "
            f"unpruned (status failed). Leave trainer.max_epochs unset, or give it at least {least}, to be sure")


def check_builds(cfg: DictConfig, trainer: bool = True) -> None:
    """The arguments of what a run builds from its config without reading data or building a
    network: the Trainer's (with ``trainer``: a run on this machine), the data module's (made, not
    set up) and the training module's, each checked as it is made. Cheap enough to run on every run
    of a sweep before the first starts (:func:`check_config` builds them all again, with the data
    and the network)."""
    if trainer:
        instantiate(cfg.trainer, max_epochs=1, logger=False, enable_checkpointing=False)
    dm = instantiate(cfg.data)
    instantiate(cfg.module, model=nn.Identity(), num_classes=getattr(dm, "num_classes", None) or 10)


def check_settings(cfg: DictConfig) -> tuple[Pruning | None, list[pl.Callback]]:
    """The checks of :func:`check_config` that need neither the data, the network nor a
    checkpoint: the run's own settings, the export format, weight averaging, the pruning callback
    (method arguments, target, schedule) against ``trainer.max_epochs``, and the Trainer's numbers.
    Cheap enough to run on every run of a sweep before the first starts. Returns the callback
    (``None`` with ``pruning=none``) and the weight-averaging callbacks."""
    check_run_settings(cfg)
    from .recipes import recipe_for  # (the recipes are built from this module)

    recipe = recipe_for(cfg)
    if recipe is not None and recipe.check is not None:  # (a sweep's bad adaptation.* value: before any run: review)
        recipe.check(cfg)
    if cfg.export is not None and cfg.export not in EXPORT_FORMATS:
        raise ValueError(f"export must be null or one of {EXPORT_FORMATS}, got {cfg.export!r}")
    if cfg.export is not None:
        check_export_available(cfg.export)  # (onnx without its packages: said now, not after the training)
    dtype = {"64": "float64", "64-true": "float64", "double": "float64", "bf16-true": "bfloat16"}.get(
        str(cfg.trainer.get("precision")))
    if cfg.export == "onnx" and dtype is not None:  # (float16 convolutions it runs)
        raise ValueError(f"export=onnx with trainer.precision={cfg.trainer.precision}: the network trains in {dtype}, "
                         f"and onnxruntime runs no {dtype} convolution, so the export could neither be checked nor run. "
                         "Use export=torch_export or export=torchscript, or train with trainer.precision=32-true")
    averaging = weight_averaging(cfg)  # (a bad ema_decay fails here)
    callback = build_pruning(cfg)
    strategy = cfg.trainer.get("strategy")
    if callback is not None and isinstance(strategy, str):  # (the callback refuses these at its set-up: after the dense model)
        # (fsdp and deepspeed shard the model, on one device too; a launcher that forks or spawns any number)
        named = strategy.lower()
        if "ddp" in named and any(k in named for k in ("spawn", "fork", "notebook")):
            raise ValueError(f"trainer.strategy={strategy}: the Pruning callback does not support a launcher that "
                             "returns the trained weights to the main process (spawn, fork, notebook), whose model "
                             "still has the full size. Use trainer.strategy=ddp")
        if any(k in named for k in ("fsdp", "deepspeed")):
            raise ValueError(f"trainer.strategy={strategy}: the Pruning callback does not support a strategy that "
                             "shards the model (its parameters are held in flat shards the rebuild cannot cut). Use "
                             "trainer.strategy=auto on one device, or trainer.strategy=ddp on several")
        if named.startswith("xla"):  # (Lightning's XLAStrategy forks its processes, on one device too)
            raise ValueError(f"trainer.strategy={strategy}: the Pruning callback does not support Lightning's XLA "
                             "strategy, whose launcher forks its processes and returns the trained weights to the main "
                             "process, whose model still has the full size. Use trainer.strategy=single_xla on one "
                             "device")
    max_epochs = cfg.trainer.get("max_epochs")  # (unset or 0: the schedule's; negative: no bound, as in Lightning)
    if callback is not None and max_epochs and not callback.schedule.reaches_last_prune(max_epochs):
        schedule = callback.schedule
        # (a method that converges may still prune early, at the end of a sparsify epoch: warned, not refused)
        early = (schedule.stop_early and callback.method.sparsifies and schedule.prune_events == 1
                 and (max_epochs < 0 or max_epochs > schedule.warmup_epochs))
        least = next(n for n in range(schedule.total_epochs + 1) if schedule.reaches_last_prune(n))
        if early:
            warnings.warn(_short_fit_warning(max_epochs, callback), stacklevel=2)
        else:
            raise ValueError(f"trainer.max_epochs={max_epochs} ends the compression run before its last prune, due "
                             f"at the start of epoch {schedule.last_prune_epoch} (0-based) of the schedule's "
                             f"{schedule.total_epochs}: the model would not be pruned. Leave trainer.max_epochs unset "
                             f"(the schedule's {schedule.total_epochs} epochs), give it at least {least}, or shorten "
                             "the schedule (schedule.sparsify_epochs=...)")
    if callback is not None and callback.schedule.restart_lr and not cfg.module.get("cosine", False):
        raise ValueError("schedule.restart_lr=true starts the cosine learning-rate schedule again after the prune; "
                         "set module.cosine=true, or schedule.restart_lr=false")
    # the Trainer's own settings (precision, devices, strategy, ...) fail here, not after the dense training
    for key in TRAINER_NUMBERS:  # (Lightning's own error for a word there names no setting)
        value = cfg.trainer.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise TypeError(f"trainer.{key} must be a number, got {type(value).__name__} {value!r}")
    return callback, averaging


#: the Trainer's settings that take only a number (an int, or a float as a fraction); not
#: val_check_interval, which also takes a time ("00:00:10:00")
TRAINER_NUMBERS = ("max_epochs", "min_epochs", "max_steps", "min_steps", "limit_train_batches", "limit_val_batches",
                   "limit_test_batches", "limit_predict_batches", "check_val_every_n_epoch",
                   "num_sanity_val_steps", "log_every_n_steps", "accumulate_grad_batches", "gradient_clip_val")


def check_target(cfg: DictConfig, callback: Pruning, lm: pl.LightningModule, dm: pl.LightningDataModule) -> None:
    """Trace the (untrained) module once and turn the target into keep counts, as the callback
    will at the prune: an unknown ``ignored_layers`` name, rates that do not fit the model or a
    target below what ``min_channels``/``max_pruning_ratio`` allow fail now."""
    # random rows (the dry run compares outputs: zeros would show only the biases), drawn without
    # touching the global RNG the run is seeded with
    example = torch.randn([2, *input_shape(dm)[1:]], generator=torch.Generator().manual_seed(0))
    groups = find_channel_groups(lm, example, list(cfg.pruning.get("ignored_layers") or []))
    if not groups:
        raise ValueError(f"model {model_label(cfg)!r} has no prunable filters (with ignored_layers "
                         f"{list(cfg.pruning.get('ignored_layers') or [])})")
    budget = callback.budget  # latency: timed at set-up, on the device
    round_to = budget.round_to_on(_fit_device(cfg))  # (round_to's default is 8 on CUDA)
    budget.check(lm, groups, count_cost(lm, example), round_to)
    # the fit's set-up on copies, on the fit's device where this process sees it: its dry run (what the
    # rebuild cannot handle) and the rehearsal of the method's hooks fail now, not after the dense model
    device, timed = _preflight_device(cfg)
    callback.engine.check_method(lm, example, round_to, groups, device if timed or budget.target is None or
                                 budget.target.kind != "latency" else None)


def check_update_interval(cfg: DictConfig, callback: Pruning, dm: pl.LightningDataModule) -> None:
    """A sparsify phase that holds no step of the method's periodic update, and a
    ``trainer.max_steps`` that ends the run before its last prune, warned of now, before the dense
    model trains (the fit's set-up would say it after): where the fit's steps per epoch are known
    (:func:`_fit_epoch_steps`). ``dm``: the one the compression fit trains on (a recipe's own: the
    target's, or both domains')."""
    spe = _fit_epoch_steps(cfg, dm)
    if spe:
        callback.engine.check_update_interval(spe)
        said = _short_steps_warning(cfg, callback, spe)
        if said:
            warnings.warn(said, stacklevel=2)


def _fit_epoch_steps(cfg: DictConfig, dm: pl.LightningDataModule) -> int | None:
    """The optimizer steps per epoch of the compression fit, where it runs in one process on a data
    module that counts its batches (``train_batches()``); ``None`` where that is not known before it."""
    if not _fit_process(cfg)[1] or cfg.trainer.get("overfit_batches"):
        return None  # (several ranks share the batches; overfit_batches counts them otherwise: the fit says it)
    return epoch_steps(dm, cfg.trainer.get("limit_train_batches"), int(cfg.trainer.get("accumulate_grad_batches") or 1))


def _short_steps_warning(cfg: DictConfig, callback: Pruning, spe: int) -> str | None:
    """What the command warns of where ``trainer.max_steps`` ends the run before its last scheduled
    prune, at ``spe`` optimizer steps per epoch, in its own terms (the callback says it as
    ``Trainer(max_steps=...)`` and ``fit(ckpt_path=...)``, which the command never showed); ``None``
    where it does not."""
    max_steps, schedule = cfg.trainer.get("max_steps"), callback.schedule
    max_epochs = cfg.trainer.get("max_epochs") or schedule.total_epochs  # (the fit's: fit_to_prune)
    # (with the fit's max_epochs, as the callback judges it: a schedule that ends with its prune is
    # reached at the last step of the epoch before it, which the epochs' bound alone lets through: review)
    if (max_steps is None or max_steps < 0 or schedule.reaches_last_prune(max_epochs, max_steps, spe)
            or not schedule.reaches_last_prune(max_epochs)):  # (an epochs' bound short of it: said by check_config)
        return None
    step = schedule.last_prune_epoch * spe
    enough = (schedule.total_epochs * spe if schedule.finetune_epochs else
              next(n for n in (step, step + 1) if schedule.reaches_last_prune(max_epochs, n, spe)))
    return (f"trainer.max_steps={max_steps} ends the compression run before its last prune, due at the start of "
            f"epoch {schedule.last_prune_epoch} (0-based; optimizer step {step} at {spe} steps per epoch): the run "
            f"ends failed, its model short of the target, and says how to go on from its last checkpoint "
            f"(ckpt_path=...). Leave trainer.max_steps unset, or give it {enough} for the schedule's "
            f"{schedule.total_epochs} epochs")


def _preflight_device(cfg: DictConfig) -> tuple[str, bool]:
    """:func:`_fit_process`'s device, and whether a latency target may be timed there: where the fit
    runs in this one process on it, and not for a resumed fit (``ckpt_path``: its set-up was timed
    by the run it goes on from)."""
    device, alone = _fit_process(cfg)
    return device, alone and cfg.get("ckpt_path") is None


def _fit_process(cfg: DictConfig) -> tuple[str, bool]:
    """Where the checks before training rehearse the fit's set-up, and whether the fit runs there,
    in this one process: for a CUDA fit, the GPU of this process's rank (``cuda:<k>`` for
    ``trainer.devices=[k]``; ``LOCAL_RANK`` picks among several), else the CPU; ``True`` only where
    that is the device the fit trains on, in one process (several ranks share the batches, and
    would each time a latency target, competing). ``trainer.devices=auto`` on CUDA is every GPU
    this process sees, as in Lightning. A fit whose launcher forks its ranks is rehearsed on the
    CPU: CUDA used before the fork fails it."""
    accelerator = str(cfg.trainer.get("accelerator") or "auto").lower()
    devices = cfg.trainer.get("devices", "auto")
    devices = list(devices) if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)) else devices
    if isinstance(devices, str) and "," in devices:  # ("0,1" and "1,": GPU indices, as Lightning reads them)
        devices = [int(d) for d in devices.split(",") if d.strip()]
    fit = _fit_device(cfg)
    auto = devices in (None, "auto", -1, "-1")  # (every GPU there is)
    one = (devices in (1, "1") or (isinstance(devices, list) and len(devices) == 1)
           or (auto and (fit == "cpu" or torch.cuda.device_count() <= 1)))
    strategy = str(cfg.trainer.get("strategy") or "auto").lower()
    single = one and "ddp" not in strategy and "fsdp" not in strategy and int(cfg.trainer.get("num_nodes") or 1) == 1
    device = "cpu"
    # a launcher that forks (ddp_fork, ddp_notebook; auto on several GPUs in an interactive session,
    # as Lightning picks): CUDA in this process before the fit would fail it in every fork
    interactive = hasattr(sys, "ps1") or bool(sys.flags.interactive)  # (as Lightning tells it)
    forks = "fork" in strategy or "notebook" in strategy or (strategy == "auto" and not one and interactive)
    if fit == "cuda" and torch.cuda.is_available() and not forks:  # (the rehearsal on the GPU, timed or not)
        rank = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))  # (srun sets the latter)
        index = devices[rank] if isinstance(devices, list) and rank < len(devices) else rank
        device = f"cuda:{int(index)}"
    mps = accelerator == "mps" or (accelerator == "auto" and fit == "cpu" and torch.backends.mps.is_available())
    known = accelerator in ("cpu", "gpu", "cuda", "auto") and not mps  # (mps, xla, ...: timed at the fit only)
    return device, known and single and device.split(":")[0] == fit


def _fit_device(cfg: DictConfig) -> str:
    """The device type the run will train on, from ``trainer.accelerator`` (``auto``: CUDA where
    torch sees a GPU, as Lightning picks)."""
    accelerator = str(cfg.trainer.get("accelerator") or "auto").lower()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a training stage of a job. Lightning shuts the fit down and exits;
    this says where it stopped, what was kept and how to go on. A ``KeyboardInterrupt``: what
    catches ``Exception`` lets it through, as it does Ctrl-C.

    ``where``: the stage, epoch and step; ``checkpoint``: the last checkpoint to resume from, or
    ``None`` with ``lost`` saying why there is none. The message is for a single run (a sweep's
    says how to go on with the one run: :func:`lightning_ssr.app.cli.sweep_interrupted`).
    ``signal``: ``"Ctrl-C"`` or ``"SIGTERM"`` (what a scheduler or ``timeout`` sends: Lightning
    stops the fit at the next batch, and would exit 0); it gives the command's :attr:`exit_code`."""

    def __init__(self, where: str, checkpoint: str | None = None, lost: str = "; nothing of it was kept",
                 message: str | None = None, signal: str = "Ctrl-C", redone: str = ""):
        self.where, self.checkpoint, self.lost, self._message = where, checkpoint, lost, message
        self.signal, self.redone = signal, redone
        if message is not None:
            super().__init__(message)
        elif checkpoint is None:
            super().__init__(f"{where}{lost}: run the job again")
        else:
            super().__init__(f"{where}. The last checkpoint is {checkpoint}{redone}: run the same command with "
                             f"ckpt_path={shlex.quote(checkpoint)} to go on from it")

    def __reduce__(self):  # whole after a pickle (a sweep launcher's worker process sends it back)
        return type(self), (self.where, self.checkpoint, self.lost, self._message, self.signal, self.redone)

    @property
    def exit_code(self) -> int:
        """The command's exit code: 128 + the signal's number, as a shell reports it."""
        return _INTERRUPTIONS[self.signal][1]


def fit(trainer: pl.Trainer, stage: str, *args, resumable: bool = False, **kwargs) -> None:
    """``trainer.fit(*args, **kwargs)``; an interruption becomes :class:`RunInterrupted`, naming
    ``stage``, the epoch and step, and with ``resumable`` the last checkpoint to resume from."""
    try:
        trainer.fit(*args, **kwargs)
        _raise_if_sigterm(trainer)
    except BaseException as err:
        how = _interruption(err, trainer)
        if how is None:
            saved = last_checkpoint(trainer) if resumable and isinstance(err, Exception) else None
            if saved is not None:  # (a failure mid-fit named no checkpoint to go on from once fixed: probe)
                err.add_note(f"(the fit's last checkpoint: {saved}; once the cause is fixed, the same command with "
                             f"{shlex.quote(f'ckpt_path={saved}')} goes on from it)")
            raise
        with interruptions_held():  # (a second Ctrl-C must not cut the account of the first short)
            where = (f"{_INTERRUPTIONS[how][0]} during {stage} at epoch {trainer.current_epoch} (optimizer step "
                     f"{trainer.global_step})")
            if not resumable:
                raise RunInterrupted(where, signal=how) from err
            saved = last_checkpoint(trainer)
            if saved is None and not trainer.checkpoint_callbacks:
                raise RunInterrupted(where, lost="; checkpointing is off (trainer.enable_checkpointing=false), so "
                                     "nothing was kept", signal=how) from err
            if saved is None:
                raise RunInterrupted(where, lost=", before its first checkpoint (one is written at the end of each "
                                     "epoch)", signal=how) from err
            raise RunInterrupted(where, saved, signal=how, redone=_redone(saved, trainer.global_step)) from err


def _redone(checkpoint: str, step: int) -> str:
    """`` (of step N: steps N+1-M run again)`` where ``checkpoint``'s name gives its step (Lightning's
    ``epoch=E-step=N.ckpt``) and it is older than ``step``; else nothing."""
    found = re.search(r"(?:^|-)step=(\d+)", Path(checkpoint).name)  # (not a metric's "val_step=")
    if found is None or int(found.group(1)) >= step:
        return ""
    saved = int(found.group(1))
    again = f"step {step}" if saved + 1 == step else f"steps {saved + 1}-{step}"
    return f" (of optimizer step {saved}: {again} run again)"


#: each interruption: how the job's message tells it, and the command's exit code (128 + the
#: signal's number, as a shell reports it)
_INTERRUPTIONS = {"Ctrl-C": ("interrupted", 130), "SIGTERM": ("stopped by SIGTERM", 143)}


class Terminated(KeyboardInterrupt):
    """SIGTERM where no Trainer runs (the set-up, between stages, the export): raised at once, as
    Python raises Ctrl-C's ``KeyboardInterrupt`` there, and told like it (exit code 143). Inside a
    Trainer's run Lightning's handler takes SIGTERM instead, and stops at the end of the batch."""

    signal = "SIGTERM"
    where = "stopped by SIGTERM outside training"  # (a sweep's message names the run after it)

    def __init__(self, message: str = "stopped by SIGTERM outside training (at the set-up, between the stages, or "
                                      "in the export): run the job again"):
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        return _INTERRUPTIONS[self.signal][1]


def _raise_terminated(signum, frame) -> None:
    # a Trainer's run chains the handler it found (this one) after its own: Lightning is in
    # charge then, and stops the run at the end of the batch (fit() tells it as RunInterrupted)
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        raise Terminated


@contextlib.contextmanager
def sigterm_raises():
    """Within it, SIGTERM outside a Trainer's run raises :class:`Terminated` (Python's default ends
    the process at once, without a word or a ``result.json``); the handler before it comes back after."""
    if threading.current_thread() is not threading.main_thread():  # (only the main thread sets handlers)
        yield
        return
    before = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


@contextlib.contextmanager
def interruptions_held(interrupted: bool = True):
    """Within it, Ctrl-C and SIGTERM wait: while an interruption or a failure is told and recorded
    (its checkpoint found, ``result.json`` written), which a second one would cut short, leaving a
    ``result.json`` that says ``running`` and a message that the job stopped outside training. It
    lasts a fraction of a second; the handlers before it come back after. What it is recording is
    an interruption (``interrupted``): one more is dropped. A failure: the first interruption that
    came meanwhile is raised at its end (a sweep's Ctrl-C is not lost to the next job)."""
    if threading.current_thread() is not threading.main_thread():  # (only the main thread sets handlers)
        yield
        return
    came: list[int] = []

    def hold(signum, frame):
        came.append(signum)

    before = {s: signal.signal(s, hold) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
    if came and not interrupted:
        raise KeyboardInterrupt if came[0] == signal.SIGINT else Terminated()


def _raise_if_sigterm(trainer: pl.Trainer) -> None:
    """A SIGTERM that Lightning noted but did not act on (it raises only between batches, and a
    validation's last batch lets it pass): as if it had raised it."""
    if getattr(trainer, "received_sigterm", False):
        raise SIGTERMException


def _interruption(err: BaseException, trainer: pl.Trainer | None = None) -> str | None:
    """``"Ctrl-C"`` or ``"SIGTERM"`` where ``err`` is that interruption of a Lightning loop (of
    ``trainer``), not yet told as :class:`RunInterrupted`; else ``None``. Lightning turns Ctrl-C
    into a graceful shutdown and ``sys.exit(1)`` (a ``SystemExit`` raised while the
    ``KeyboardInterrupt`` was handled), and SIGTERM into ``SIGTERMException`` at the next batch (a
    ``SystemExit`` whose code is 0). An error raised after the trainer received SIGTERM is the
    signal's too: sent to the process group (a scheduler's, ``docker stop``), it also ends the
    DataLoader's worker processes, and the loader fails before the batch ends."""
    if isinstance(err, RunInterrupted):
        return None
    if isinstance(err, SIGTERMException) or getattr(trainer, "received_sigterm", False):
        return "SIGTERM"
    for cause in (err, err.__context__):  # (Terminated: a SIGTERM before Lightning's handler was set)
        if isinstance(cause, KeyboardInterrupt):
            return getattr(cause, "signal", "Ctrl-C")
    return None


def after_the_run_that_prunes(err: BaseException, lm: pl.LightningModule | None) -> RunInterrupted | None:
    """Ctrl-C after the run that prunes finished (``lm`` is its module: in the evaluation or the
    export): the interruption that names its last checkpoint, from which the same command with
    ``ckpt_path=`` goes on (the default job then only evaluates and exports again); ``None`` where
    that does not apply."""
    if not isinstance(err, KeyboardInterrupt) or getattr(err, "checkpoint", None):
        return None
    trainer = getattr(lm, "_trainer", None)
    saved = last_checkpoint(trainer) if trainer is not None else None
    if saved is None:
        return None
    signal = getattr(err, "signal", "Ctrl-C")
    return RunInterrupted(f"{_INTERRUPTIONS[signal][0]} after the run that prunes had finished, during the evaluation "
                          "or the export", saved, signal=signal)


@contextlib.contextmanager
def after_pruning(lm: pl.LightningModule):
    """The steps after the run that prunes (evaluation, export) of a recipe: Ctrl-C in them names
    that run's last checkpoint (:func:`after_the_run_that_prunes`), where there is one."""
    try:
        yield
    except KeyboardInterrupt as err:
        resumable = after_the_run_that_prunes(err, lm)
        if resumable is None:
            raise
        raise resumable from err


def last_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest checkpoint file a ``ModelCheckpoint`` of ``trainer`` wrote, or ``None``."""
    paths = {Path(p) for cb in trainer.checkpoint_callbacks for p in (cb.last_model_path, cb.best_model_path) if p}
    found = [p for p in paths if p.is_file()]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


# ------------------------------------------------------------------- stages
#: Trainer keys that change how a run looks, not the model it trains: left out of the cache key.
_PRESENTATION_KEYS = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps", "max_epochs",
                      "default_root_dir", "logger", "enable_checkpointing", "callbacks")


#: Trainer keys that bound the compression run (``max_epochs`` too, which the dense training takes
#: from ``dense.epochs``): the dense training runs ``dense.epochs`` without them, and they are left
#: out of its cache key. ``+trainer.max_steps=60`` shortens the run to prune, not the dense model.
DENSE_UNBOUNDED = {"max_steps": -1, "max_time": None, "min_epochs": None, "min_steps": None}


#: module settings the dense model does not train with: it trains without distillation, and at
#: dense.lr (module.lr is the compression run's rate)
DENSE_UNUSED_MODULE_KEYS = ("distill", "temperature", "lr")


def cap_log_interval(trainer: pl.Trainer, dm: pl.LightningDataModule) -> int | None:
    """Cap ``trainer.log_every_n_steps`` at the optimizer steps of an epoch on each process (its
    share of ``dm``'s batches under DDP, after ``limit_train_batches`` and gradient accumulation),
    so that each epoch logs its training metrics and Lightning has no cause to warn that it would
    not. Returns the interval, or ``None`` (unchanged) when ``dm`` cannot count its batches (it has
    no ``train_batches()``)."""
    if getattr(dm, "train_batches", None) is None or not trainer.log_every_n_steps:
        return None
    steps = epoch_steps(dm, trainer.limit_train_batches, trainer.accumulate_grad_batches, trainer.world_size)
    if steps:
        trainer.log_every_n_steps = min(trainer.log_every_n_steps, steps)
    return trainer.log_every_n_steps


def epoch_steps(dm: pl.LightningDataModule, limit, accumulate: int, world_size: int = 1) -> int | None:
    """Optimizer steps an epoch on each of ``world_size`` processes, as Lightning counts them: its
    share of ``dm``'s batches (``train_batches()``), bounded by ``limit_train_batches`` (an int
    counts batches, a float is their share), over gradient accumulation; ``None`` where ``dm``
    cannot count its batches."""
    count = getattr(dm, "train_batches", None)
    if not callable(count):
        return None
    batches = math.ceil(count() / max(1, world_size))
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    return steps_per_epoch(batches, accumulate)


def dense_cache_path(cfg: DictConfig) -> Path:
    """Where the dense model of ``cfg`` is cached: keyed by everything that changes it (model,
    data, module, seed, dense settings and every trainer setting but presentation ones)."""
    keyed = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "module")}
    for k in DENSE_UNUSED_MODULE_KEYS:  # the dense model trains without them
        keyed["module"].pop(k, None)
    keyed["seed"] = cfg.seed
    if keyed["data"].get("train_size") is not None:  # caches of the earlier subsets, a few images off, not reused
        keyed["data_subset"] = "exact"
    augment = sorted(set(check_augment(keyed["data"].pop("augment", None))))  # [shift, flip] as [flip, shift]
    if augment:  # none: the key of the caches made before the setting existed
        keyed["data"]["augment"] = augment
    keyed["dense"] = {k: v for k, v in OmegaConf.to_container(cfg.dense, resolve=True).items()
                      if k not in ("cache_dir", "use_cache")}
    keyed["trainer"] = {k: v for k, v in OmegaConf.to_container(cfg.trainer, resolve=True).items()
                        if k not in _PRESENTATION_KEYS and k not in DENSE_UNBOUNDED}
    network = network_digests(cfg)
    if network:  # a network or data of your own: its code is part of the key (none: the earlier key)
        keyed["plugin_files"] = sorted(network.values())
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:16]
    data = cfg.data._target_.rsplit(".", 1)[-1]
    return Path(cfg.dense.cache_dir) / f"{model_label(cfg)}-{data}-seed{cfg.seed}-{digest}.pt"


def network_digests(cfg: DictConfig) -> dict[str, str]:
    """What the dense model's code is, outside this package: the SHA-256 of each module a
    ``model._target_`` or ``data._target_`` names (a network or a dataset of your own, by
    ``module:<name>``: its source file, or a package's ``.py`` files; a plugin file such a target
    reaches by its name, by its path as given), and of the modules of your own it imports, found
    by reading its imports. Nothing is imported to find them. Editing such a network (the same
    shapes, another ``forward``) must not reuse the dense model its earlier code trained; editing a
    plugin that only holds pruning methods does not train the dense model again."""
    files = {Path(str(p)).stem: str(p) for p in cfg.get("plugins") or [] if str(p).endswith(".py")}
    digests: dict[str, str] = {}
    seen: set[str] = set()
    for section in ("model", "data"):
        target = str((cfg.get(section) or {}).get("_target_") or "")
        if "." not in target or target.startswith("lightning_ssr."):
            continue
        top = target.split(".")[0]
        if top in files:  # a plugin file reached by its name, and what it imports of your own
            path = Path(files[top]).expanduser()
            digests[files[top]] = _file_digest(files[top])
            for imported in _imports(path, top):
                if _of_your_own(imported.split(".")[0]):
                    _local_digests(imported, digests, seen)
            continue
        _local_digests(_target_module(target), digests, seen)
    return digests


def plugin_digests(cfg: DictConfig) -> dict[str, str]:
    """:func:`network_digests`, and the SHA-256 of each plugin given as a ``.py`` file (by its path
    as given) or as a module name (``module:<name>``): all the code of your own a run used."""
    digests = {str(p): _file_digest(str(p)) for p in cfg.get("plugins") or [] if str(p).endswith(".py")}
    files = {Path(str(p)).stem for p in cfg.get("plugins") or [] if str(p).endswith(".py")}
    for name in dict.fromkeys(str(p) for p in cfg.get("plugins") or [] if not str(p).endswith(".py")):
        if name.split(".")[0] not in files:  # (a plugin file reached by its name: its digest is there already)
            _local_digests(name, digests)
    digests.update(network_digests(cfg))
    return digests


def _find_spec(name: str):
    """The spec of module ``name`` found part by part by the import system's finders
    (``sys.meta_path``: ``sys.path``, and those an editable install adds), importing nothing (not
    even its parent packages, as ``importlib.util.find_spec`` does); ``None`` where no finder
    knows it (a class, an attribute, a module made at run time, a built-in one)."""
    from importlib.machinery import BuiltinImporter, FrozenImporter

    finders = [f for f in sys.meta_path if f not in (BuiltinImporter, FrozenImporter) and hasattr(f, "find_spec")]
    spec, locations = None, None
    for end in range(1, name.count(".") + 2):
        if spec is not None and not spec.submodule_search_locations:
            return None  # a module's attribute, not a submodule
        part, spec = ".".join(name.split(".")[:end]), None
        for finder in finders:
            try:
                spec = finder.find_spec(part, locations)
            except (ImportError, ValueError, OSError, TypeError):
                continue
            if spec is not None:
                break
        if spec is None:
            return None
        locations = spec.submodule_search_locations
    return spec


def _target_module(target: str) -> str:
    """The module a ``_target_`` lives in: its longest dotted prefix that is a module
    (``pkg.nets.Net.build``, a class method: ``pkg.nets``)."""
    parts = target.split(".")
    found = (".".join(parts[:end]) for end in range(len(parts) - 1, 0, -1))
    return next((name for name in found if _find_spec(name) is not None), parts[0])


def _local_digests(name: str, digests: dict[str, str], seen: set[str] | None = None) -> None:
    """Add module ``name``'s digest (``module:<name>``) and, read from its source, those of the
    modules of your own it imports (not of this package, the standard library or installed
    packages), to ``digests``."""
    seen = set() if seen is None else seen
    if name in seen:
        return
    seen.add(name)
    digest, sources = _module_digest(name)
    if digest is None:
        return
    digests[f"module:{name}"] = digest
    for source in sources:
        for imported in _imports(source, name):
            if _of_your_own(imported.split(".")[0]):
                _local_digests(imported, digests, seen)


def _of_your_own(top: str) -> bool:
    """Whether top-level module ``top`` is code of your own (not this package, the standard
    library or an installed package), found without importing it."""
    if top == "lightning_ssr" or top in sys.stdlib_module_names:
        return False
    spec = _find_spec(top)
    where = spec and (spec.origin if spec.origin and spec.origin.endswith(".py") else
                      next(iter(spec.submodule_search_locations or []), None))
    return bool(where) and not installed_code(Path(where))


def _module_digest(name: str) -> tuple[str | None, list[Path]]:
    """The SHA-256 of module ``name``'s source (a package, a namespace package too: of its ``.py``
    files) and those files, found without importing anything (:func:`_find_spec`); no digest
    where it has no source file of your own here (a plugin file's alias, a built-in, an installed
    package's)."""
    spec = _find_spec(name)
    if spec is None:
        return None, []
    if spec.origin and spec.origin.endswith(".py"):
        roots = [Path(spec.origin).parent] if spec.submodule_search_locations else []
        files = [Path(spec.origin)] if not roots else []
    elif spec.submodule_search_locations:  # a namespace package
        roots = [Path(p) for p in spec.submodule_search_locations]
        files = []
    else:
        return None, []
    files += [f for root in roots for f in sorted(root.rglob("*.py"))]
    if not files or installed_code(files[0]):
        return None, []
    base = roots[0] if roots else files[0].parent
    joined = "".join(f"{_relative(f, base)}:{_file_digest(str(f))}\n" for f in files)
    return hashlib.sha256(joined.encode()).hexdigest(), files


def _relative(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return path.name


def installed_code(path: Path) -> bool:
    """A file of the Python installation (its standard library), of an installed package, or of
    this package: not of your own."""
    import sysconfig

    resolved = str(Path(path).resolve())
    roots = {str(Path(p).resolve()) for key, p in sysconfig.get_paths().items()
             if key in ("stdlib", "platstdlib", "purelib", "platlib") and p}
    roots.add(str(Path(__file__).resolve().parent.parent))  # lightning_ssr/
    return ("site-packages" in Path(path).parts or "dist-packages" in Path(path).parts
            or any(resolved == r or resolved.startswith(r + os.sep) for r in roots))


def _imports(source: Path, module: str) -> list[str]:
    """The modules ``source`` (of module ``module``) imports, read without running it."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (OSError, SyntaxError, ValueError):
        return []
    package = module if source.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join(parts[:len(parts) - node.level + 1]) if len(parts) >= node.level - 1 else ""
                name = ".".join(p for p in (base, node.module) if p)
            else:
                name = node.module or ""
            if name:
                found.append(name)
    return found


def code_identity(cfg: DictConfig) -> dict:
    """What a run's outcome depends on besides its configuration: this package's version and the
    plugin files' contents (a network or a method of your own). Recorded in ``result.json``."""
    return {"lightning_ssr": __version__, "plugin_files": plugin_digests(cfg)}


def _file_digest(path: str) -> str:
    """The SHA-256 of a file's bytes (an unreadable one: its path, which load_plugins refuses anyway)."""
    try:
        return hashlib.sha256(Path(path).expanduser().read_bytes()).hexdigest()
    except OSError:
        return path


def model_label(cfg: DictConfig) -> str:
    """The model's name in file names and messages: ``model.name`` (the zoo's models), else the
    last part of ``model._target_`` (a network of your own, whose factory takes no ``name``)."""
    name = cfg.model.get("name")
    return str(name) if name else str(cfg.model._target_).rsplit(".", 1)[-1]


#: what loading a cached dense model raises for a damaged file or one of another network
CACHE_LOAD_ERRORS = (CheckpointReadError, KeyError, RuntimeError)


def _read_cached(net: nn.Module, cache: Path) -> None:
    """Load the cached dense weights into ``net`` (:data:`CACHE_LOAD_ERRORS` where it cannot)."""
    net.load_state_dict(read_checkpoint(cache)["state_dict"])


def _load_cached(net: nn.Module, cache: Path) -> bool:
    """Load the cached dense weights into ``net``; ``False`` (with a warning) if the file is damaged."""
    try:
        _read_cached(net, cache)
        return True
    except CACHE_LOAD_ERRORS as err:
        reason = str(err) if len(str(err)) <= 400 else str(err)[:400] + " ..."
        warnings.warn(f"the cached dense model {str(cache)!r} is unreadable ({reason}); training the "
                      "dense model again and overwriting it", stacklevel=2)
        return False


def _unloadable_dense(cache: Path, err: Exception) -> str:
    return (f"the dense model {cache}, which the checkpoint's run was compressed from, does not load into this "
            f"network ({type(err).__name__}: {str(err)[:300]}): resume with that run's settings, or start a new run "
            "without ckpt_path")


def rank_zero_print(line: str) -> None:
    """``print(line)`` in the process of rank 0 only (under DDP, every rank runs the command)."""
    if rank_zero_only.rank == 0:
        print(line)


def train_dense(cfg: DictConfig, dm: pl.LightningDataModule, output_dir: str | os.PathLike,
                cache: Path | None = None, what: str = "the dense model") -> tuple[nn.Module, dict]:
    """The dense network: trained for ``dense.epochs`` (then cached), or loaded from the cache;
    ``cache``: that dense model instead of the one ``cfg`` keys (:func:`resumed_dense_model`);
    ``what``: what the console calls it (a recipe trains several).

    The cache is written through a unique temporary file and an atomic rename, so parallel runs
    (a joblib multirun) never see a partial file; a damaged cache file is retrained and replaced.
    Returns the network and ``{"cache": {"path", "reused"}, "seconds"}``.
    """
    start = time.perf_counter()
    net = build_network(cfg, dm)
    if cache is not None:
        try:
            _read_cached(net, cache)
        except CACHE_LOAD_ERRORS as err:  # (checked at set-up: changed since)
            raise ValueError(_unloadable_dense(cache, err)) from err
        keyed = dense_cache_path(cfg)
        why = (f"dense.cache_dir={cfg.dense.cache_dir} does not hold it" if keyed.name == cache.name else
               f"these settings key another, {keyed.name}: a trainer setting, or the network's code, changed")
        rank_zero_print(f"Reusing {what} the resumed run was compressed from, cached at {cache} ({why})")
        return net, {"cache": {"path": str(cache), "reused": True}, "seconds": time.perf_counter() - start}
    cache = dense_cache_path(cfg)
    reused = bool(cfg.dense.use_cache) and cache.is_file() and _load_cached(net, cache)
    if reused:
        rank_zero_print(f"Reusing {what} cached at {cache}")
    else:
        epochs = f"{cfg.dense.epochs} epoch{'s' * (cfg.dense.epochs != 1)}"
        rank_zero_print(f"Training {what} ({epochs}); it will be cached at {cache}")
        net = build_network(cfg, dm)  # a fresh initialization, also after a failed cache load
        dense_lm = build_module(cfg, net, dm, lr=cfg.dense.lr,
                                **{"distill": 0.0} if "distill" in cfg.module else {})
        bounds = {k: v for k, v in DENSE_UNBOUNDED.items() if k in cfg.trainer}
        trainer = instantiate(cfg.trainer, max_epochs=cfg.dense.epochs, logger=False, enable_checkpointing=False,
                              default_root_dir=str(Path(output_dir) / "dense"), **bounds)
        fit(trainer, "the dense training", dense_lm, dm)  # (the cache is written only after it)
        bad = [n for n, p in net.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise FloatingPointError(f"dense training diverged (non-finite values in {bad[:3]}); lower "
                                     "dense.lr. Nothing was cached.")
        save_pruned(net, cache, None, config=OmegaConf.to_container(cfg, resolve=True))
    return net, {"cache": {"path": str(cache), "reused": reused}, "seconds": time.perf_counter() - start}


def compress(cfg: DictConfig, net: nn.Module, dm: pl.LightningDataModule, output_dir: str | os.PathLike,
             callback: Pruning | None = None, dense: str | None = None, teacher: nn.Module | None = None
             ) -> tuple[pl.LightningModule, Pruning | None]:
    """Prune a copy of ``net`` with ``callback`` (by default :func:`build_pruning`) during
    ``schedule.total_epochs`` of training (or ``trainer.max_epochs``); ``net`` stays as it is.

    With ``pruning=none`` the copy is fine-tuned for the same epochs without pruning. Returns
    the LightningModule (its ``.model`` is the pruned network) and the callback. ``dense``: the
    path of ``net``'s cache, kept in the checkpoints (:func:`resumed_dense_model`). ``teacher``: the
    network ``module.distill`` distills from, where it is not ``net`` (the transfer recipe's dense
    fine-tune, where ``net`` holds the source's layers and a new head).
    """
    if callback is None:
        callback = build_pruning(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    lm = build_module(cfg, copy.deepcopy(net), dm)
    if cfg.module.get("distill"):  # distillation from the dense network (ImageClassifier.set_teacher)
        # (the dense network is cached, and the checkpoints name it: a recipe's own teacher goes into them)
        lm.set_teacher(copy.deepcopy(net if teacher is None else teacher), checkpointed=teacher is not None)
    fit_to_prune(cfg, lm, dm, output_dir, callback, dense)
    return lm, callback


def fit_to_prune(cfg: DictConfig, lm: pl.LightningModule, dm: pl.LightningDataModule,
                 output_dir: str | os.PathLike, callback: Pruning | None, dense: str | None = None) -> None:
    """The run that prunes: ``lm`` trained with ``callback`` for ``schedule.total_epochs`` (or
    ``trainer.max_epochs``), its metrics and checkpoints in ``output_dir``, from ``cfg.ckpt_path``
    where one is given. Ctrl-C names the last checkpoint (:class:`RunInterrupted`)."""
    max_epochs = cfg.trainer.max_epochs or build_schedule(cfg).total_epochs
    # metrics (pruning/*, train_loss, val_acc) go to <output_dir>/logs as CSV, chosen explicitly:
    # logger=True would look for TensorBoard and print a notice when it is not installed
    extra = {} if "logger" in cfg.trainer else {"logger": CSVLogger(str(output_dir), name="logs")}
    trainer = instantiate(cfg.trainer, max_epochs=max_epochs,
                          callbacks=([callback] if callback else []) + weight_averaging(cfg)
                          + progress_bars(cfg.trainer) + [RunSettingsRecord(run_settings(cfg), dense)],
                          default_root_dir=str(output_dir), **extra)
    cap_log_interval(trainer, dm)
    with warnings.catch_warnings():
        # a resumed run writes its checkpoints in its own output directory, by design
        warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
        # (said at set-up, before the dense training, in the command's terms: check_settings)
        warnings.filterwarnings("ignore", message=SHORT_FIT)
        # max_steps too, where the steps per epoch are known before the fit: at set-up, or here for a resume
        spe = _fit_epoch_steps(cfg, dm) if callback is not None else None
        said = _short_steps_warning(cfg, callback, spe) if spe else None
        if said:
            warnings.filterwarnings("ignore", message=SHORT_FIT_STEPS)
            if cfg.ckpt_path is not None:  # (a resume's set-up does not count its steps: check_config)
                warnings.warn(said, stacklevel=2)
        try:  # (a fit a bound ends before its last prune: the run's error says how to go on, in the command's terms)
            with lines_dropped(f"{type(callback).__name__}: the fit ended at optimizer step"):
                fit(trainer, "the run that prunes", lm, dm, ckpt_path=cfg.ckpt_path, resumable=True)
        finally:  # (result.json keeps it in the command's words, as it was said: also for a run that failed)
            if callback is not None and cfg.trainer.get("max_epochs"):
                reword_warnings(callback, SHORT_FIT, _short_fit_warning(cfg.trainer.max_epochs, callback))
            if said:
                reword_warnings(callback, SHORT_FIT_STEPS, said)


def reword_warnings(callback: Pruning, pattern: str, said: str | None) -> None:
    """The warnings the callback's run keeps for its result (the engine's, and its result's once
    made) with each one matching ``pattern`` replaced by ``said`` (``None``: left out), where the
    command says the same in its own terms, or asked for what the library warns of."""
    for kept in (callback.engine.warnings, *([callback.result.warnings] if callback.result is not None else [])):
        reworded = (said if re.match(pattern, w) else w for w in kept)
        # (once: a resumed run brings its checkpoint's warning back beside its own: review)
        kept[:] = list(dict.fromkeys(w for w in reworded if w is not None))


def _as_module(cfg: DictConfig, model: nn.Module, dm: pl.LightningDataModule) -> pl.LightningModule:
    return model if isinstance(model, pl.LightningModule) else build_module(cfg, model, dm)


def check_evaluation_limits(cfg: DictConfig, dm: pl.LightningDataModule, data: str = "data") -> None:
    """A fraction of ``trainer.limit_val_batches`` or ``limit_test_batches`` that leaves less than
    one batch of ``dm``'s split (``eval_batches()``): Lightning refuses it as the loop starts, the
    validation's in the dense training, the test's after every epoch trained (0.5 of the single
    test batch of data=uci_digits failed a finished run: probe). Refused before training. ``data``:
    where ``dm``'s settings are (``adaptation.target`` for a recipe's second data set)."""
    counts = getattr(dm, "eval_batches", None)
    trainer = cfg.get("trainer") or {}
    if not callable(counts):
        return
    for key, split, what in (("limit_val_batches", "val", "validation"), ("limit_test_batches", "test", "test")):
        value = trainer.get(key)
        if not isinstance(value, float) or not 0.0 < value < 1.0:
            continue
        batches = counts(split)
        if int(batches * value) < 1:
            size = getattr(dm, "eval_batch_size", None)
            raise ValueError(
                f"trainer.{key}={value} leaves no batch of the {what} split{'' if data == 'data' else f' of {data}'}, "
                f"which is {batches} batch{'es' * (batches != 1)}{f' of {data}.eval_batch_size={size}' if size else ''}: give "
                + ("1.0 (the whole split)" if batches == 1 else f"at least {math.ceil(1000 / batches) / 1000:g} of it")
                + f", a number of batches (trainer.{key}=1), or a smaller {data}.eval_batch_size")


def train_batch_limit(cfg: DictConfig) -> int | float | None:
    """``trainer.limit_train_batches`` where the epochs train on part of the batches (a number of
    them, or a fraction below 1.0), as a recipe's record says it; ``None`` where they see all."""
    limit = cfg.trainer.get("limit_train_batches")
    return None if limit is None or (isinstance(limit, float) and limit >= 1.0) else limit


def evaluation_limits(cfg: DictConfig, dm: pl.LightningDataModule | None = None) -> dict:
    """``trainer.limit_test_batches`` and ``limit_val_batches`` where they leave out part of a
    split (an int: that many batches; a fraction below 1.0), as the evaluation honours them;
    ``{}`` where it sees whole splits. 0 (validation off while training) does not turn the final
    evaluation off: it reads the whole split. A number of batches that ``dm`` counts as its whole
    split (``eval_batches()``) leaves nothing out (2 of a test split of 2 batches was reported as
    "part of the test split": probe)."""
    trainer = cfg.get("trainer") or {}
    counts = getattr(dm, "eval_batches", None)
    limits = {}
    for key, split in (("limit_test_batches", "test"), ("limit_val_batches", "val")):
        value = trainer.get(key)
        if value is None or value == 0 or (isinstance(value, float) and value >= 1.0):
            continue
        if isinstance(value, int) and callable(counts) and value >= counts(split):
            continue
        limits[key] = value
    return limits


#: the Trainer precision that runs a model whose weights are in this dtype (a fit under
#: ``trainer.precision=64-true`` leaves them in float64): the evaluation's batches are converted as the fit's were
TRUE_PRECISIONS = {torch.float64: "64-true", torch.bfloat16: "bf16-true", torch.float16: "16-true"}


def dtype_of(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s floating weights (float32 for a model of none)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def accuracy(cfg: DictConfig, model: nn.Module, dm: pl.LightningDataModule) -> dict:
    """Test and validation accuracy (fractions) of a network or LightningModule, on the batches
    ``trainer.limit_test_batches`` and ``limit_val_batches`` allow (recorded as
    ``evaluation_limits`` where that is not the whole of a split), in the dtype of its weights."""
    lm = _as_module(cfg, model, dm)
    limits = evaluation_limits(cfg, dm)
    precision = TRUE_PRECISIONS.get(dtype_of(lm))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, **limits,
                         **({"precision": precision} if precision else {}))
    try:
        test = float(trainer.test(lm, dm, verbose=False)[0]["test_acc"])
        _raise_if_sigterm(trainer)  # (each run of the Trainer forgets an earlier one's)
        val = float(trainer.validate(lm, dm, verbose=False)[0]["val_acc"])
        _raise_if_sigterm(trainer)
    except BaseException as err:
        signal = _interruption(err, trainer)
        if signal is None:
            raise
        raise RunInterrupted(f"{_INTERRUPTIONS[signal][0]} during the evaluation", signal=signal) from err
    return {"accuracy": test, "val_accuracy": val, **({"evaluation_limits": limits} if limits else {})}


def dense_accuracy(cfg: DictConfig, net: nn.Module, dm: pl.LightningDataModule, cache: str | os.PathLike) -> dict:
    """:func:`accuracy` of the dense network loaded from (or written to) ``cache``
    (:func:`train_dense`), kept beside it in ``<cache>.accuracy.json``: the runs that share a dense
    model (a sweep, a benchmark) evaluate it once. The cache's name already holds the data and
    model settings; the record also holds the sha256 of the weights file, so a file trained again
    is evaluated again, and an unreadable record is replaced. An evaluation on part of a split
    (:func:`evaluation_limits`) is neither read from the record nor kept in it."""
    if evaluation_limits(cfg, dm):
        return accuracy(cfg, net, dm)
    cache = Path(cache)
    record_path = cache.with_name(cache.name + ".accuracy.json")
    digest = hashlib.sha256(cache.read_bytes()).hexdigest() if cache.is_file() else None
    try:
        record = json.loads(record_path.read_text())
        if digest is not None and record["weights_sha256"] == digest:
            return {"accuracy": float(record["accuracy"]), "val_accuracy": float(record["val_accuracy"])}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    metrics = accuracy(cfg, net, dm)
    if digest is not None and cfg.dense.use_cache:
        write_json(record_path, {**metrics, "weights_sha256": digest})
    return metrics


def evaluate(cfg: DictConfig, dm: pl.LightningDataModule, dense: nn.Module, pruned: nn.Module,
             dense_metrics: dict | None = None) -> dict:
    """Accuracy (test and validation), cost (MACs, parameters) and CPU latency of the dense and
    the pruned network (or their LightningModules); latency is measured alternately in one process.
    ``dense_metrics``: the dense network's accuracy when it is known (:func:`dense_accuracy`).

    Returns ``{"dense": {...}, "pruned": {...}, "speedup": {"batch_<n>": x}, "latency_load": {...}}``
    (how busy other processes kept the machine while timing: :class:`OtherProcessesLoad`).
    """
    shape = input_shape(dm)
    out = {}
    for key, model in (("dense", dense), ("pruned", pruned)):
        cost = count_cost(model, torch.zeros(shape, dtype=dtype_of(model)))
        known = dense_metrics if key == "dense" and dense_metrics is not None else accuracy(cfg, model, dm)
        out[key] = {**known, "macs": int(cost.macs), "params": int(cost.params)}
    dtype = dtype_of(pruned)  # (both timed in the dtype the pruned one trained in: trainer.precision=64-true)
    timed = dense if dtype_of(dense) == dtype else copy.deepcopy(dense).to(dtype)
    # under DDP rank 0 times alone, and writes the result (both ranks timed at once, each slowing the other's
    # figures by a third: probe); the other ranks' figures are not kept
    sizes = tuple(cfg.latency.batch_sizes) if rank_zero_only.rank == 0 else ()
    latency = compare_latency(timed, pruned, shape, sizes, cfg.latency.repeats, dtype=dtype)
    out["dense"]["latency_ms"] = latency["dense"]
    out["pruned"]["latency_ms"] = latency["pruned"]
    out["speedup"] = latency["speedup"]
    out["latency_load"] = latency["load"]
    return out


EXPORT_FILES = ("pruned.onnx", "pruned.onnx.data", "pruned.pt2", "pruned.ts")  # what export=... writes beside pruned.pt


def export_model(cfg: DictConfig, lm: pl.LightningModule, callback: Pruning | None, dm: pl.LightningDataModule,
                 output_dir: str | os.PathLike, used_on: pl.LightningDataModule | None = None) -> dict:
    """Write ``pruned.pt`` (:func:`~lightning_ssr.checkpoint.save_pruned` of the LightningModule
    and the callback's plan: ``load_pruned(build_model(...), path)`` loads it; with the input it
    reads, :func:`input_description` of ``used_on``, by default ``dm``) and, with
    ``export=onnx|torchscript|torch_export``, the exported network; an export an earlier attempt
    left in the folder (a run resumed with another ``export``, or none) is removed.

    Returns ``{"checkpoint": path, "export": {...} or None, "input": {...} or None}``.
    """
    output_dir = Path(output_dir)
    if rank_zero_only.rank != 0:  # under DDP every rank holds the same model: rank 0 writes it
        return {"checkpoint": None, "export": None}
    if callback is not None and callback.result is None:  # the fit ended before the prune: nothing pruned to keep
        return {"checkpoint": None, "export": None}
    plan = callback.plan if callback is not None else None
    reads = input_description(dm if used_on is None else used_on)
    extra = {} if reads is None else {"input": reads}
    out = {"checkpoint": str(save_pruned(lm, output_dir / "pruned.pt", plan, **extra)), "export": None, "input": reads}
    for name in EXPORT_FILES:  # (an earlier attempt's export in this folder is of another model: a resume's)
        (output_dir / name).unlink(missing_ok=True)
    if cfg.export is None:
        return out
    net = lm.model
    dtype = dtype_of(net)  # (trainer.precision=64-true: the network and its example in float64)
    example = torch.randn(input_shape(dm), dtype=dtype)
    if cfg.export == "onnx":
        path = export_onnx(net, example, output_dir / "pruned.onnx")
        out["export"] = {"format": "onnx", "path": str(path)}
        if Path(f"{path}.data").is_file():  # a model too large for one file: its weights travel beside it
            out["export"]["external_data"] = f"{path}.data"
        try:
            fresh = torch.randn(4, *example.shape[1:], dtype=dtype)
            out["export"]["onnxruntime_max_abs_diff"] = onnx_max_abs_diff(net, path, fresh)
            with torch.no_grad(), eval_mode(net):
                out["export"]["output_max_abs"] = float(net(fresh).abs().max())
        except ImportError:  # the check needs onnxruntime: recorded and said, not left as a silent None
            out["export"]["onnxruntime_max_abs_diff"] = None
            out["export"]["check"] = "not run: onnxruntime is not installed (pip install onnxruntime)"
            warnings.warn("the ONNX export was not checked against PyTorch: onnxruntime is not installed "
                          "(pip install onnxruntime)", stacklevel=2)
    else:
        if cfg.export == "torchscript":
            out["export"] = {"format": "torchscript",
                             "path": str(export_torchscript(net, example, output_dir / "pruned.ts"))}
        else:
            export_program(net, example, output_dir / "pruned.pt2")
            out["export"] = {"format": "torch_export", "path": str(output_dir / "pruned.pt2")}
        fresh = torch.randn(4, *example.shape[1:], dtype=dtype)  # (the file loaded back, on another batch than the example)
        out["export"]["max_abs_diff"] = exported_max_abs_diff(net, out["export"]["path"], fresh)
        with torch.no_grad(), eval_mode(net):
            out["export"]["output_max_abs"] = float(net(fresh).abs().max())
    return out


def base_result(cfg: DictConfig, lm: pl.LightningModule | None, callback: Pruning | None,
                 dm: pl.LightningDataModule) -> PruningResult:
    """The callback's result or, with ``pruning=none`` (or before anything was pruned), one built here."""
    if callback is not None and callback.result is not None:
        result = copy.deepcopy(callback.result)
    else:
        method = callback.method.name if callback is not None else "none"
        config = {"method": callback.method.config() if callback is not None else {},
                  "schedule": asdict(build_schedule(cfg))}
        target = callback.target.to_dict() if callback is not None and callback.target is not None else None
        result = PruningResult(method=method, config=config, target=target)
        if lm is not None:
            cost = count_cost(lm, torch.zeros(input_shape(dm), dtype=dtype_of(lm)))
            result.dense = {"macs": int(cost.macs), "params": int(cost.params)}
            result.pruned = dict(result.dense)
            result.layers = layer_rows(cost, cost)
        if callback is not None:
            result.warnings = list(callback.engine.warnings)
    if callback is not None and callback.events_done < callback.schedule.prune_events:
        # (a fit bounded before its last prune event: the model is not at the target; one of
        # several events done was reported "ok" with the miss among the warnings: probe)
        schedule = callback.schedule
        bounds = [f"trainer.{k}={cfg.trainer[k]}" for k in ("max_epochs", "max_steps", "max_time")
                  if cfg.trainer.get(k) not in (None, -1)
                  and not (k == "max_epochs" and schedule.reaches_last_prune(cfg.trainer[k]))]
        ended = (f"{' or '.join(bounds)} ended it" if bounds else
                 "something ended it (a callback that stops the fit, or a bound of the Trainer)")
        trainer = getattr(lm, "_trainer", None) if lm is not None else None
        saved = last_checkpoint(trainer) if trainer is not None else None
        go_on = (shlex.quote(f"ckpt_path={saved}") if saved else
                 "ckpt_path=<its last checkpoint (logs/version_N/checkpoints/ in the run's folder)>")
        # (without max_steps, a max_epochs=-1 left in the command trained on without end: review)
        drop = [*bounds, *(["trainer.max_epochs=-1"] if cfg.trainer.get("max_epochs") == -1 else [])]
        progress = callback.checkpoint_progress if saved else None
        mid = (f" (saved after {progress['batches']} of the {progress['of']} training batches of epoch "
               f"{progress['epoch']}: Lightning goes on at the next epoch's start, without the others)"
               if progress and 0 < progress["batches"] < progress["of"] else "")
        done = callback.events_done
        result.status = "failed"
        result.error = (("the model was not pruned: " if not done else
                         f"the model was pruned in {done} of its {schedule.prune_events} prune events, short of the "
                         f"target (pruned.pt holds it as it stands): ")
                        + f"training ended before the prune event at the start of epoch {schedule.prune_epoch(done)}; "
                        f"{ended}. To go on from this run, run the same command "
                        f"{'without ' + ' and '.join(drop) + ' and ' if drop else ''}with {go_on}{mid}: it goes on "
                        f"to the end of the schedule's {schedule.total_epochs} epochs")
    restored = getattr(lm, "teacher_restored", None)  # (a resume that went on from its checkpoint's teacher)
    if restored and restored not in result.warnings:
        result.warnings.append(restored)
    result.config["cli"] = OmegaConf.to_container(cfg, resolve=True)
    result.config["code"] = code_identity(cfg)
    return result


def print_final_table(result: PruningResult, callback: Pruning | None) -> None:
    """The per-layer table, unless the callback printed it already (one prune event, verbose); on
    rank 0 alone under DDP (each rank printed it)."""
    if (callback is not None and callback.verbose and len(callback.events) == 1) or rank_zero_only.rank != 0:
        return
    if not result.layers:
        return
    before = ModelCost(result.dense["macs"], result.dense["params"], {})
    after = ModelCost(result.pruned["macs"], result.pruned["params"], {})
    title = "dense -> pruned, all prune events" if callback is not None and len(callback.events) > 1 else ""
    print(("\n" + title if title else "") + "\n" + format_layer_table(result.layers, before, after))


def latency_line(result: PruningResult) -> str | None:
    dense, pruned = result.dense.get("latency_ms"), result.pruned.get("latency_ms")
    if not dense or not pruned:
        return None
    parts = [f"batch {k.split('_', 1)[1]}: {dense[k]:.3f} -> {pruned[k]:.3f} ms ({dense[k] / pruned[k]:.2f}x)"
             for k in dense if k in pruned]
    load = result.machine.get("latency_load") or {}
    crowded = (f" (other processes kept {others_share(load)} busy "
               f"while timing, with this run's {load['threads']} threads: both times are slower than on an idle "
               "machine, their ratio less so)") if load.get("crowded") else ""
    return "CPU latency: " + ", ".join(parts) + crowded


def _configuration_only(cfg: DictConfig) -> PruningResult:
    """A result that knows only the run's configuration (resolved where it can be)."""
    try:
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. the bad value is an interpolation
        config = OmegaConf.to_container(cfg, resolve=False)
    # (pruning.name: null is no pruning, as pruning_enabled reads it: "none", not "None")
    result = PruningResult(method=str(cfg.pruning.get("name") or "none"), config={"cli": config})
    given = config.get("target") if result.method != "none" else None  # (as given: a script filters runs by it)
    if isinstance(given, dict):
        result.target = {k: v for k, v in given.items() if k not in TARGET_LIMITS and v is not None} or None
        if result.target and isinstance(result.target.get("rates"), str):  # ("[0.5]*2": the list a run records)
            with contextlib.suppress(ValueError, TypeError):
                result.target["rates"] = parse_rates(result.target["rates"])
    return result


def started_result(cfg: DictConfig, began: float | None = None) -> PruningResult:
    """The ``result.json`` a run writes as it starts (``status: running``), replaced by the one it
    ends with. A run killed before it could record its end (SIGKILL, out of memory, a power cut)
    leaves this one, so that its folder still says which configuration ran there and that the run
    did not end: a sweep run again sets it aside if its job is now another configuration, and
    its report lists it as unfinished."""
    result = _configuration_only(cfg)
    # (which code ran: a sweep run again goes on from a killed run's checkpoint only with the same)
    with contextlib.suppress(Exception):  # (a plugin that cannot be read: said as the run loads it)
        result.config["code"] = code_identity(cfg)
    result.status = "running"
    # (when this attempt started: a sweep run again goes on only from the checkpoints it wrote)
    result.config["started_at"] = time.time() if began is None else began  # (``began``: the run's ``time.time()``)
    result.error = (f"the run started at {time.strftime('%Y-%m-%d %H:%M:%S')} and has not recorded its end: it is "
                    "still running, or it was killed (SIGKILL, out of memory, a power cut). The same command "
                    "with ckpt_path=<checkpoint> goes on from a checkpoint it left (logs/version_N/checkpoints/ "
                    "in its folder); without one, it runs again from the start")
    return result


def failed_result(cfg: DictConfig, err: BaseException, timings: dict, lm=None, callback=None, dm=None) -> PruningResult:
    """The ``result.json`` of a run that failed: what is known of it, ``status: failed`` (``interrupted``
    for Ctrl-C or SIGTERM, which name the checkpoint to go on from) and the error."""
    result = None
    if lm is not None or callback is not None:
        try:
            result = base_result(cfg, lm, callback, dm)
        except Exception:  # noqa: BLE001 - the original error is the one to report
            result = None
    if result is None:  # failed at the checks: only the configuration is known
        result = _configuration_only(cfg)
    result.status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"  # (Ctrl-C, SIGTERM)
    result.error = "".join(traceback.format_exception_only(err)).strip()
    result.timings.update(timings)
    return result


def compared_result(cfg: DictConfig, lm: pl.LightningModule, callback: Pruning | None, dm: pl.LightningDataModule,
                    eval_dm: pl.LightningDataModule, reference: nn.Module, output_dir: str | os.PathLike,
                    dense_role: str, pruned_role: str) -> PruningResult:
    """The result of a recipe that trains a reference and a compressed model from the same start:
    the per-layer table, both evaluated on ``eval_dm``'s test split (``dense`` is the reference),
    ``pruned.pt`` (and the export) written; ``dm`` gives the input shape. Where ``eval_dm`` is
    another domain's (adaptation: its labels are for the final test only), the validation
    accuracy, the sweeps' objective, is ``dm``'s, and ``source_accuracy`` its test accuracy."""
    result = base_result(cfg, lm, callback, dm)
    print_final_table(result, callback)
    metrics = evaluate(cfg, eval_dm, reference, lm.model)
    files = export_model(cfg, lm, callback, dm, output_dir, used_on=eval_dm)  # (adaptation: the target's images)
    if eval_dm is not dm:
        for key, model in (("dense", reference), ("pruned", lm.model)):
            own = accuracy(cfg, model, dm)
            metrics[key].update(val_accuracy=own["val_accuracy"], source_accuracy=own["accuracy"])
    result.dense.update(metrics["dense"], role=dense_role)
    result.pruned.update(metrics["pruned"], role=pruned_role, **files)
    result.machine["latency_load"] = metrics["latency_load"]
    return result


def pair_line(result: PruningResult, dense_label: str, pruned_label: str, recipe: bool = False,
              distill: float | None = None) -> str:
    """``<dense_label> X% at N MACs; <pruned_label> Y% at M MACs (Rx fewer)``; with ``pruning=none``
    the second is the dense model trained on, the equal-budget baseline, and says so. ``recipe``: a
    recipe's, whose compressed stage starts where its dense stage started and trains as many epochs
    (the dense stage is its equal-budget baseline): with ``pruning=none`` that training repeated,
    distilled from the first where ``distill`` (``module.distill``) is above 0, and said so
    (``None``: a record that holds no ``distill``)."""
    first = f"{dense_label} {100 * result.dense['accuracy']:.2f}% at {result.dense['macs'] / 1e6:.2f}M MACs; "
    if result.method == "none" and recipe:  # (it was called "trained on": it trained again: probe)
        how = ("" if distill == 0 else " (its distillation from the first not recorded)" if distill is None else
               f" and distilled from the first (module.distill={distill:g})")
        return first + (f"{dense_label} trained again, from the same start for the same epochs, with pruning=none"
                        f"{how} {100 * result.pruned['accuracy']:.2f}%")
    if result.method == "none":  # (nothing was compressed: "compressed ... (1.0x fewer)" said otherwise)
        return first + (f"{dense_label} trained on for the same epochs (pruning=none, the equal-budget baseline) "
                        f"{100 * result.pruned['accuracy']:.2f}%")
    return first + (f"{pruned_label} {100 * result.pruned['accuracy']:.2f}% at {result.pruned['macs'] / 1e6:.3f}M MACs "
                    f"({result.macs_reduction:.1f}x fewer)")


def finish(result: PruningResult, output_dir: Path, start: float, extra: str | None = None) -> PruningResult:
    """Write ``result.json`` and print the summary (on the global rank 0 only, under DDP)."""
    result.timings["total_s"] = time.perf_counter() - start
    if rank_zero_only.rank != 0:
        return result
    path = result.save(output_dir / "result.json")
    print("\n" + result.summary())
    for line in (extra, latency_line(result)):
        if line:
            print(line)
    if result.status != "ok" and len((result.error or "").strip().splitlines()) > 1:  # (its first line: the summary's)
        print(f"warning: {result.error}")
    print(f"wrote {path} ({result.timings['total_s']:.0f} s)")
    return result
