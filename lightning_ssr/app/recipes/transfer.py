"""Transfer learning, compressed: a network trained on a source dataset is fine-tuned on a
target dataset with a new head, and the pruning callback compresses it during that fine-tune.

``lightning-ssr +experiment=transfer_fmnist_to_mnist`` runs :func:`run_transfer`:

1. the dense network on the source data (``transfer.source``), trained once and cached like
   every dense model of the job;
2. a new classification head (the network's last ``nn.Linear``, freshly initialized for the
   target's classes), and the layers named in ``transfer.freeze`` frozen;
3. the **dense fine-tune**: the network fine-tuned on the target's labeled training images
   (``data.train_size`` of them) for the schedule's epochs, unpruned: the reference;
4. the **compressed fine-tune**: the same start and the same epochs, with the pruning callback.
   Frozen layers are not pruned (their filters are the source's) unless
   ``transfer.prune_frozen=true``.

``result.json`` is the usual :class:`~lightning_ssr.report.PruningResult`: ``dense`` is the
dense fine-tune and ``pruned`` the compressed one, on the target's test split;
``config["transfer"]`` records the source, its test accuracy, the target's labeled images and
the frozen layers.
"""

from __future__ import annotations

import copy
import re
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from ...engine import FROZEN_LAYERS_CUT
from ...report import part_of_test_split
from ...validation import check_flag, check_number
from .. import stages
from . import last_linear, register_recipe


def new_head(net: nn.Module, num_classes: int) -> str:
    """Replace the last ``nn.Linear`` of ``net`` by a freshly initialized one with
    ``num_classes`` outputs; returns its name."""
    name, old = last_linear(net, "the transfer recipe")
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return name


def _keep_eval(module: nn.Module, args) -> None:
    """A frozen norm layer's forward pre-hook: it normalizes with the source's statistics and does
    not update them, whatever mode the training puts it in."""
    module.training = False


def freeze(net: nn.Module, names) -> list[str]:
    """Stop the gradients of the named modules (names as in ``net.named_modules()``), and keep
    their batch norms' running statistics those of the source (used, not updated)."""
    modules = dict(net.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"transfer.freeze names {unknown}, which {type(net).__name__} does not have; its layers: "
                         f"{[n for n, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]}")
    for n in names:
        for p in modules[n].parameters():
            p.requires_grad_(False)
        for m in modules[n].modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(_keep_eval)
    return list(names)


def check_head_trains(net: nn.Module, frozen) -> None:
    """Refuse a ``transfer.freeze`` that holds the head: ``new_head`` gives the target a freshly
    initialized last ``nn.Linear``, so freezing it (or a container of it) would keep random weights,
    not the source's, and with every layer frozen nothing would train at all."""
    head, _ = last_linear(net, "the transfer recipe")
    holders = [n for n in frozen if n in ("", head) or head.startswith(f"{n}.")]
    if holders:
        raise ValueError(f"transfer.freeze names {holders}, which holds the network's last nn.Linear {head!r}: the "
                         "recipe replaces it by a new head, freshly initialized for the target's classes, which must "
                         "train. Freeze the layers before it (e.g. transfer.freeze=[conv1])")


def _source_config(cfg: DictConfig) -> DictConfig:
    source = copy.deepcopy(cfg)
    with open_dict(source):
        source.data = cfg.transfer.source  # (dense.epochs: the dense network is the one trained on the source)
    return source


def _source_data(source_cfg: DictConfig, target: pl.LightningDataModule) -> pl.LightningDataModule:
    """The source's data module, refused before anything trains where its settings are wrong (named
    as transfer.source's) or where one network cannot read both the source's images and the
    target's: it would fail in the target's fine-tune, after the source model trained."""
    try:
        source = stages.build_data(source_cfg)
    except InstantiationException as err:  # (a bad setting: said again as the setting it is)
        said = re.sub(r"^data\b", "transfer.source", str(stages.plainly(err)))
        raise ValueError(said if said.startswith("transfer.source") else f"transfer.source: {said}") from err
    pair = f"the source {type(source).__name__} (transfer.source) and the target {type(target).__name__} (data)"
    if source.in_channels != target.in_channels:
        raise ValueError(f"{pair} have {source.in_channels}- and {target.in_channels}-channel images: the network "
                         "trained on the source is fine-tuned on the target. Serve the grey ones in colour (channels=3, "
                         "as conf/data/mnist_rgb.yaml does), or choose a pair of the same channels")
    if source.image_size != target.image_size:
        raise ValueError(f"{pair} have images of {source.image_size}x{source.image_size} and "
                         f"{target.image_size}x{target.image_size}: the network trained on the source is fine-tuned on "
                         f"the target. Give them one size (transfer.source.image_size={target.image_size}, or "
                         f"data.image_size={source.image_size})")
    return source


def check_transfer(cfg: DictConfig) -> None:
    """The transfer settings, checked before anything trains."""
    t = cfg.transfer
    if t.source is None or "_target_" not in t.source:
        raise ValueError("transfer.source must be a data config (e.g. the contents of conf/data/fashion_mnist.yaml)")
    # the dense network is the one trained on the source: it must train, for dense.epochs
    check_number("transfer (the network trained on transfer.source)", "dense.epochs", cfg.dense.epochs, low=1,
                 integer=True)
    check_flag("transfer.prune_frozen", t.prune_frozen)


def run_transfer(cfg: DictConfig, output_dir: str | Path):
    """The transfer job (see the module docstring). Returns the :class:`PruningResult`."""
    output_dir = Path(output_dir)
    given, cfg = cfg, copy.deepcopy(cfg)  # (frozen layers join the copy's ignored_layers; result.json records the given)
    with stages.before_training():
        check_transfer(cfg)
        # the network's names; "model.conv1" (a name of the training module) means conv1 too
        names = cfg.transfer.freeze or []
        names = [names] if isinstance(names, str) else names  # transfer.freeze=conv1: one name
        frozen = [str(n).removeprefix("model.") for n in names]
        if frozen:  # on a throwaway network: a bad name fails before any training, named as transfer.freeze
            throwaway = stages.build_network(cfg, stages.build_data(cfg))
            freeze(throwaway, frozen)
            check_head_trains(throwaway, frozen)
        if frozen and not cfg.transfer.prune_frozen:  # the source's filters stay: their layers are not pruned
            with open_dict(cfg):
                cfg.pruning.ignored_layers = sorted({*(cfg.pruning.get("ignored_layers") or []),
                                                     *(f"model.{n}" for n in frozen)})
        callback, dm = stages.check_config(cfg)
        if callback is not None and cfg.ckpt_path is None:  # (the compressed fine-tune trains on dm's batches)
            stages.check_update_interval(cfg, callback, dm)
        source_cfg = _source_config(cfg)
        source_dm = _source_data(source_cfg, dm)
        # a resume goes on from the source model its run started from (gone: refused now)
        resumed_source = stages.resumed_dense_model(cfg, keyed=source_cfg)
    source_net, source_info = stages.train_dense(source_cfg, source_dm, output_dir / "source", resumed_source,
                                                 what=f"the source model (on {type(source_dm).__name__})")
    source_accuracy = stages.accuracy(source_cfg, source_net, source_dm)["accuracy"]

    pl.seed_everything(cfg.seed, workers=True)
    net = copy.deepcopy(source_net)
    head = new_head(net, dm.num_classes)
    freeze(net, frozen)

    # the dense fine-tune: the same start and epochs, no pruning
    t = time.perf_counter()
    epochs = cfg.trainer.max_epochs or stages.build_schedule(cfg).total_epochs
    # (without distillation: the dense fine-tune is the teacher of the compressed one, where one is asked for)
    reference = stages.build_module(cfg, copy.deepcopy(net), dm, **{"distill": 0.0} if "distill" in cfg.module else {})
    pl.seed_everything(cfg.seed, workers=True)
    trainer = instantiate(cfg.trainer, max_epochs=epochs, logger=False, enable_checkpointing=False,
                          default_root_dir=str(output_dir / "dense_finetune"), callbacks=stages.weight_averaging(cfg))
    stages.rank_zero_print(f"Fine-tuning the dense model on {type(dm).__name__} ({epochs} epoch{'s' * (epochs != 1)}), "
                           "the reference the compressed fine-tune is compared with")
    stages.fit(trainer, "the dense fine-tune of the transfer recipe", reference, dm)
    dense_s = time.perf_counter() - t

    t = time.perf_counter()
    with warnings.catch_warnings():
        if frozen and cfg.transfer.prune_frozen:  # (asked for: not warned of)
            warnings.filterwarnings("ignore", message=FROZEN_LAYERS_CUT)
        lm, callback = stages.compress(cfg, net, dm, output_dir, callback, source_info["cache"]["path"],
                                       teacher=reference.model)
    if frozen and cfg.transfer.prune_frozen and callback is not None:
        stages.reword_warnings(callback, FROZEN_LAYERS_CUT, None)
    compress_s = time.perf_counter() - t
    with stages.after_pruning(lm):
        result = stages.compared_result(cfg, lm, callback, dm, dm, reference.model, output_dir,
                                        "dense fine-tune on the target", "compressed fine-tune on the target")
    result.config["transfer"] = {
        "source": OmegaConf.to_container(cfg.transfer.source, resolve=True)["_target_"].rsplit(".", 1)[-1],
        "source_test_accuracy": source_accuracy, "source_cache": source_info["cache"],
        "target": type(dm).__name__, "target_train_images": len(dm.splits["train"]), "new_head": head, "frozen": frozen,
        "frozen_pruned": bool(cfg.transfer.prune_frozen) if frozen else None,
        "distill": float(cfg.module.get("distill", 0.0)),  # (from the dense fine-tune, in the compressed one)
    }
    if stages.train_batch_limit(cfg) is not None:  # (trained on part of them)
        result.config["transfer"]["limit_train_batches"] = stages.train_batch_limit(cfg)
    result.timings.update(source_s=source_info["seconds"], dense_finetune_s=dense_s, compress_s=compress_s)
    # as given, so that a sweep run again finds this run finished (the frozen layers are config["transfer"]'s)
    result.config["cli"] = OmegaConf.to_container(given, resolve=True)
    return result


def transfer_summary(result) -> str:
    info = result.config["transfer"]
    trained = (f"; trained on trainer.limit_train_batches={info['limit_train_batches']} per epoch"
               if info.get("limit_train_batches") is not None else "")
    part = (result.pruned.get("evaluation_limits") or {}).get("limit_test_batches")
    return (f"transfer {info['source']} -> {info['target']} ({info['target_train_images']} labeled images{trained}): "
            f"the source model on {info['source']}'s test split {100 * info['source_test_accuracy']:.2f}%; on "
            f"{info['target']}'s test split: " + stages.pair_line(result, "dense fine-tune", "compressed fine-tune",
                                                                 recipe=True, distill=info.get("distill"))
            + (f"; each on {part_of_test_split(part, each=True)}" if part is not None else ""))


register_recipe("transfer", run_transfer, transfer_summary, check_transfer)
