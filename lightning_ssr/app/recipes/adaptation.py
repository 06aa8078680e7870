"""Domain adaptation, compressed: DANN (Ganin et al., JMLR 2016) adapts a network trained on a
labeled source domain to an unlabeled target domain, and the pruning callback compresses the
feature extractor during the adaptation.

``lightning-ssr +experiment=da_mnist_to_digits`` runs :func:`run_adaptation`:

1. **source only**: the dense network trained on the labeled source (``data``), cached like every
   dense model of the job, and tested on the target's test split;
2. **DANN dense**: from those weights, :class:`DANN` trains on labeled source batches and
   unlabeled target batches (``adaptation.target``'s training images; their labels are never
   read) for the schedule's epochs;
3. **DANN compressed**: the same, with the pruning callback; with ``module.distill > 0`` it also
   learns DANN dense's outputs on the images of both domains (distillation, no labels needed).

Model selection never sees target labels: the validation split is the source's (the pruning
methods that score on validation batches score there). The target's labels serve only the final
test. The run that compresses writes a checkpoint at the end of each epoch: ``ckpt_path=`` goes on
from one (the trainings before it are cached or seeded, and run again to the same weights).
``result.json``: ``dense`` is DANN dense and ``pruned`` DANN compressed, both on the
target's test split; ``config["adaptation"]`` records the source-only accuracies.

The domain classifier reads the input of the network's last ``nn.Linear`` (the features), so
that layer's input width must stay: the recipe adds the layers producing it to
``pruning.ignored_layers`` (:func:`feature_producers`; ``result.json`` records them as
``config["adaptation"]["features_kept_whole"]``), and :class:`DANN` checks the width at every step.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.utilities import CombinedLoader
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ...modes import eval_mode
from ...pruning import in_a_fit
from ...report import part_of_test_split
from ...structure import find_channel_groups
from ...validation import check_flag, check_number
from .. import stages
from ..console import progress_bars
from ..data import EpochShuffleSampler, augment_images
from ..module import ImageClassifier
from . import last_linear, register_recipe


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; the gradient is multiplied by ``-coeff`` on the way back."""
    return _ReverseGradient.apply(x, coeff)


def feature_producers(cfg: DictConfig, dm: pl.LightningDataModule) -> list[str]:
    """The layers whose output channels the domain classifier reads, named as in the training
    module (``"model.fc1"``): the roots of the channel groups that the head (the network's last
    ``nn.Linear``) reads. Pruning them would change the features' width under the domain
    classifier, so the recipe keeps them whole (traced on a throwaway network of ``cfg`` for
    ``dm``'s images, the layers ``pruning.ignored_layers`` names left out as the callback leaves them)."""
    net = stages.build_network(cfg, dm)
    head, _ = last_linear(net, "DANN")
    example = torch.randn([2, *stages.input_shape(dm)[1:]], generator=torch.Generator().manual_seed(0))
    # traced as the training module holds it (under "model"): the names of ignored_layers, and those a
    # refusal of one suggests, are the callback's ("model.fc1"), not the bare network's
    groups = find_channel_groups(_AsTrained(net), example, list(cfg.pruning.get("ignored_layers") or []))
    return sorted(g.name for g in groups if any(s.param == f"model.{head}.weight" for s in g.inputs))


class _AsTrained(nn.Module):
    """The network under the attribute the training module keeps it in (``model``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DANN(ImageClassifier):
    """Domain-adversarial training of ``model`` (a classifier whose last ``nn.Linear`` is the head).

    Each training batch is ``{"source": (x, y), "target": (x, _)}`` (:class:`DomainAdaptationData`).
    The loss is the source cross-entropy plus ``domain_weight`` times the domain classifier's
    binary cross-entropy on the features of both, seen through a gradient reversal whose
    coefficient rises from 0 to 1 as ``2 / (1 + exp(-10 p)) - 1`` over training progress ``p``.

    The domain classifier's SGD momentum is ``domain_momentum``; the network keeps its own. Which
    one works depends on the pair of domains, so the experiment configs set it:

    - 0 (the default here): on a toy shift (tests/app/test_recipes.py), with the network's
      momentum of 0.9 on the classifier too, the classifier told the domains apart to the end
      (accuracy 1.0); with plain SGD on it the features became indistinguishable (0.5). On
      MNIST -> UCI digits, 0.9 sent one seed of three to chance (10%).
    - 0.9, the paper's (one momentum for all parameters): on MNIST -> MNIST-M it closed 62% of
      the gap to the ceiling over 3 seeds, against 18% with 0.
    """

    def __init__(self, model: nn.Module, num_classes: int = 10, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 5e-4, domain_weight: float = 1.0, domain_hidden: int = 100,
                 nesterov: bool = False, cosine: bool = True, domain_momentum: float = 0.0, distill: float = 0.0,
                 temperature: float = 4.0):
        check_number("DANN", "domain_weight", domain_weight, low=0.0)
        check_number("DANN", "domain_hidden", domain_hidden, low=1, integer=True)
        check_number("DANN", "domain_momentum", domain_momentum, low=0.0, high=1.0, high_open=True)
        super().__init__(model, num_classes, lr, momentum, weight_decay, nesterov, cosine, distill, temperature)
        self.save_hyperparameters(ignore=["model"])
        self.head_name, head = last_linear(model, "DANN")
        # trained with the network (configure_optimizers takes every parameter), never deployed
        self.domain = nn.Sequential(nn.Linear(head.in_features, domain_hidden), nn.ReLU(),
                                    nn.Linear(domain_hidden, 1))
        # forward() does not call it: it reads the head's input, whose producers the recipe keeps
        # whole (feature_producers), so it reads no channel a prune cuts
        self.pruning_ignored_layers = ("domain",)

    def _logits_and_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seen = []
        head = self.model.get_submodule(self.head_name)
        handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        features = seen[-1].flatten(1)
        expected = self.domain[0].in_features
        if features.shape[1] != expected:
            raise RuntimeError(
                f"DANN: the features read by the domain classifier have {features.shape[1]} channels, the classifier "
                f"expects {expected}; the layer producing the input of {self.head_name!r} was pruned. Leave it unpruned: "
                f"add it to pruning.ignored_layers")
        return logits, features

    def param_groups(self) -> list[dict]:
        domain = list(self.domain.parameters())
        ids = {id(p) for p in domain}
        network = [p for p in self.parameters() if id(p) not in ids]
        return [{"params": network}, {"params": domain, "momentum": self.hparams.domain_momentum,
                                      "nesterov": False}]

    @torch.no_grad()
    def domain_accuracy(self, source: torch.Tensor, target: torch.Tensor) -> float:
        """How well the domain classifier tells ``source`` images from ``target`` ones (0.5: not at
        all, the aim of the adaptation), on the network's features, in eval mode."""
        with eval_mode(self):
            _, fs = self._logits_and_features(source)
            _, ft = self._logits_and_features(target)
            right = (self.domain(fs).squeeze(1) < 0).sum() + (self.domain(ft).squeeze(1) > 0).sum()
        return float(right) / (len(source) + len(target))

    def reversal_coefficient(self) -> float:
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        p = min(self.global_step / total, 1.0)
        return 2.0 / (1.0 + math.exp(-10.0 * p)) - 1.0

    def training_step(self, batch, batch_idx):
        (xs, ys), (xt,) = batch["source"], batch["target"]  # the target's batches hold no labels
        x = torch.cat([xs, xt])
        logits, features = self._logits_and_features(x)
        n = xs.shape[0]
        task = F.cross_entropy(logits[:n], ys)
        domain_labels = torch.cat([torch.zeros(n, device=xs.device), torch.ones(xt.shape[0], device=xs.device)])
        domain_logits = self.domain(reverse_gradient(features, self.reversal_coefficient())).squeeze(1)
        domain = F.binary_cross_entropy_with_logits(domain_logits, domain_labels)
        # with distillation, also towards the teacher's outputs on both domains' images
        loss = self.with_distillation(task, x, logits) + self.hparams.domain_weight * domain
        self.log_dict({"train_loss": loss, "source_loss": task, "domain_loss": domain}, prog_bar=False)
        return loss


class DomainAdaptationData(pl.LightningDataModule):
    """Labeled ``source`` and unlabeled ``target`` training batches, side by side (the shorter
    loader cycles); validation on the source; test on the target."""

    def __init__(self, source: pl.LightningDataModule, target: pl.LightningDataModule):
        super().__init__()
        pair = f"the source {type(source).__name__} (data) and the target {type(target).__name__} (adaptation.target)"
        if source.num_classes != target.num_classes:
            raise ValueError(f"{pair} have {source.num_classes} and {target.num_classes} classes: DANN adapts one "
                             "classifier, so both domains need the same classes")
        if source.in_channels != target.in_channels:
            grey, colour = (("data", "adaptation.target") if source.in_channels < target.in_channels
                            else ("adaptation.target", "data"))
            raise ValueError(f"{pair} have {source.in_channels}- and {target.in_channels}-channel images: one network "
                             f"reads both. Serve the grey ones in colour: {grey}.channels=3 (as conf/data/mnist_rgb.yaml "
                             f"does), or choose a {colour} of the same channels")
        if source.image_size != target.image_size:
            raise ValueError(f"{pair} have images of {source.image_size}x{source.image_size} and "
                             f"{target.image_size}x{target.image_size}: one network reads both. Give them one size "
                             f"(adaptation.target.image_size={source.image_size}, or data.image_size="
                             f"{target.image_size})")
        self.source, self.target = source, target
        if source.batch_size != target.batch_size:  # (data.batch_size given alone, say)
            raise ValueError(f"{pair} have batches of {source.batch_size} and {target.batch_size} images: DANN trains "
                             "on equal source and target halves of each batch. Give them one size "
                             f"(adaptation.target.batch_size={source.batch_size})")
        self.num_classes, self.in_channels = source.num_classes, source.in_channels
        self.image_size = source.image_size
        self._target_seed: int | None = None  # the seed of the last unlabeled target loader's order
        self._resumed_target_seed: int | None = None  # a checkpoint's, for the next one

    def setup(self, stage: str | None = None) -> None:
        self.source.setup(stage)
        self.target.setup(stage)

    def train_batches(self) -> int:
        """Training batches per epoch: the longer of the two loaders (the shorter one cycles)."""
        return max(self.source.train_batches(), self.target.train_batches())

    def train_dataloader(self):
        return CombinedLoader({"source": self.source.train_dataloader(), "target": self._unlabeled_target()},
                              mode="max_size_cycle")

    def _unlabeled_target(self) -> DataLoader:
        """The target's training images without their labels: the loader never reads a label (its
        batches are ``[images]``), so nothing downstream can. Shuffled like the source's batches,
        in an order drawn from the global RNG (seeded by the caller)."""
        self.target.setup()
        images = self.target.splits["train"].tensors[0]
        if self._resumed_target_seed is not None:  # a resumed fit: the uninterrupted fit's order
            seed, self._resumed_target_seed = self._resumed_target_seed, None
        else:
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
        self._target_seed = seed
        return DataLoader(TensorDataset(images), batch_size=self.target.batch_size,
                          sampler=EpochShuffleSampler(len(images), seed))

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the source's state (its order's seed) and the target's order's seed."""
        state = {"source": self.source.state_dict()}
        if self._target_seed is not None:
            state["target_order_seed"] = self._target_seed
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if not in_a_fit(self.trainer):  # test/validate/predict(ckpt_path=...): no training loader follows
            return
        self.source.trainer = self.trainer  # the fit's: an evaluation of the source alone may have left its own
        self.source.load_state_dict(state_dict.get("source", {}))
        seed = state_dict.get("target_order_seed")
        self._resumed_target_seed = None if seed is None else int(seed)

    def val_dataloader(self):
        return self.source.val_dataloader()

    def test_dataloader(self):
        return self.target.test_dataloader()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """``data.augment`` (the source's setting) on both domains' training images."""
        augment = getattr(self.source, "augment", ())
        if augment and self.trainer is not None and self.trainer.training:
            (xs, ys), (xt,) = batch["source"], batch["target"]
            return {"source": (augment_images(xs, augment), ys), "target": (augment_images(xt, augment),)}
        return batch


def _fit_dense(cfg: DictConfig, lm: pl.LightningModule, dm, epochs: int, root: Path):
    """DANN dense: no pruning, no logs, no checkpoints (a resumed job trains it again, seeded)."""
    trainer = instantiate(cfg.trainer, max_epochs=epochs, callbacks=progress_bars(cfg.trainer),
                          enable_checkpointing=False, default_root_dir=str(root), logger=False)
    stages.cap_log_interval(trainer, dm)
    stages.rank_zero_print(f"Training {_label(lm.hparams.domain_weight)} dense from the source-only model ({epochs} "
                           f"epoch{'s' * (epochs != 1)}), the reference the compressed run is compared with")
    stages.fit(trainer, "DANN dense, a training of the domain-adaptation recipe", lm, dm)
    return lm


def _domain_accuracy(model: DANN, source_dm, target_dm) -> float:
    """The trained domain classifier's accuracy at telling the source's test images from as many of
    the target's (images only): 0.5 when the features no longer show the domain."""
    source, target = source_dm.splits["test"].tensors[0], target_dm.splits["test"].tensors[0]
    n = min(len(source), len(target))
    device = next(model.parameters()).device
    return model.domain_accuracy(source[:n].to(device), target[:n].to(device))


def check_adaptation(cfg: DictConfig) -> None:
    """The adaptation settings that need no data nor network, checked before anything trains."""
    a = cfg.adaptation
    if a.target is None or "_target_" not in a.target:
        raise ValueError("adaptation.target must be a data config (e.g. the contents of conf/data/uci_digits.yaml)")
    check_flag("adaptation.ceiling", a.get("ceiling", False))
    # (as DANN checks them: refused here before a sweep's first run, not as each run starts)
    # (named as typed, as the other settings are; the two the run reads as they are, without a default)
    check_number("config", "adaptation.domain_weight", a.get("domain_weight"), low=0.0)
    check_number("config", "adaptation.domain_momentum", a.get("domain_momentum", 0.0), low=0.0, high=1.0,
                 high_open=True)
    check_number("config", "adaptation.domain_hidden", a.get("domain_hidden"), low=1, integer=True)


def run_adaptation(cfg: DictConfig, output_dir: str | Path):
    """The domain-adaptation job (see the module docstring). Returns the :class:`PruningResult`."""
    output_dir = Path(output_dir)
    given, cfg = cfg, copy.deepcopy(cfg)  # (the features' producers join the copy's ignored_layers)
    a = cfg.adaptation
    said = []  # warnings of the set-up, kept in result.json's warnings too
    with stages.before_training():
        check_adaptation(cfg)
        if a.target.get("batch_size") != cfg.data.get("batch_size"):  # (data.batch_size given alone, say)
            said.append(f"adaptation.target.batch_size={a.target.get('batch_size')} follows data.batch_size="
                        f"{cfg.data.get('batch_size')}: DANN trains on equal source and target halves of each batch")
            warnings.warn(said[-1], stacklevel=2)
            with open_dict(a.target):
                a.target.batch_size = cfg.data.get("batch_size")
        target_dm, source_dm = instantiate(a.target), stages.build_data(cfg)
        DomainAdaptationData(source_dm, target_dm)  # domains a network cannot read both of fail here
        # (the target's splits are evaluated with the same limits: 0.5 of its single test batch failed after
        # the source-only model trained: review)
        stages.check_evaluation_limits(cfg, target_dm, "adaptation.target")
        domain = getattr(source_dm, "domain", None)  # (MNIST and its 10k subset, or its 3-channel copy: one domain)
        if (domain is not None and domain == getattr(target_dm, "domain", None)) or all(
                a.target.get(k) == cfg.data.get(k) for k in ("_target_", "root", "channels")):
            names = type(source_dm).__name__ + ("" if type(target_dm) is type(source_dm) else
                                                f" and {type(target_dm).__name__}, both {domain}")
            said.append(f"adaptation.target is the source's data set ({names}): the two domains "
                        "are the same images, so there is no shift to adapt to, and the recipe compares its "
                        "trainings on one domain. Choose another target (e.g. data@adaptation.target=mnist_m)")
            warnings.warn(said[-1], stacklevel=2)
        kept_whole = feature_producers(cfg, source_dm) if stages.pruning_enabled(cfg) else []
        if kept_whole:
            with open_dict(cfg):
                cfg.pruning.ignored_layers = sorted({*(cfg.pruning.get("ignored_layers") or []), *kept_whole})
        callback, source_dm = stages.check_config(cfg)
        data = DomainAdaptationData(source_dm, target_dm)
        if callback is not None and cfg.ckpt_path is None:  # (DANN compressed trains on both domains' batches)
            stages.check_update_interval(cfg, callback, data)
        module_args = {"num_classes": source_dm.num_classes, "lr": cfg.module.lr, "momentum": cfg.module.momentum,
                       "weight_decay": cfg.module.weight_decay, "domain_weight": a.domain_weight,
                       "domain_hidden": a.domain_hidden, "nesterov": cfg.module.nesterov, "cosine": cfg.module.cosine,
                       "domain_momentum": a.get("domain_momentum", 0.0)}
        # distillation (module.distill) only in the compressed run: towards DANN dense, its teacher
        distill_args = {"distill": cfg.module.get("distill", 0.0), "temperature": cfg.module.get("temperature", 4.0)}
        DANN(stages.build_network(cfg, source_dm), **module_args, **distill_args)  # a bad setting fails here
        # a resume goes on from the source-only model its run started from (gone: refused now)
        resumed_source = stages.resumed_dense_model(cfg)

    net, dense_info = stages.train_dense(cfg, source_dm, output_dir, resumed_source, what="the source-only model "
                                         f"(on {type(source_dm).__name__}'s labels)")
    source_only = stages.accuracy(cfg, net, target_dm)
    source_test = stages.accuracy(cfg, net, source_dm)["accuracy"]
    ceiling = None
    if a.get("ceiling"):  # the reference above: the same network trained on the target's labels
        target_cfg = cfg.copy()
        target_cfg.data = a.target
        trained, ceiling_info = stages.train_dense(target_cfg, target_dm, output_dir / "target_trained",
                                                   what="the reference trained on the target's labels "
                                                        f"({type(target_dm).__name__})")
        ceiling = {"accuracy": stages.accuracy(target_cfg, trained, target_dm)["accuracy"],
                   "cache": ceiling_info["cache"]}
    epochs = cfg.trainer.max_epochs or stages.build_schedule(cfg).total_epochs

    t = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    dense = _fit_dense(cfg, DANN(copy.deepcopy(net), **module_args), data, epochs, output_dir / "dann_dense")
    dense_s = time.perf_counter() - t
    t = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    compressed = DANN(copy.deepcopy(net), **module_args, **distill_args)
    if distill_args["distill"] > 0:
        compressed.set_teacher(copy.deepcopy(dense.model))
    # checkpoints in output_dir: Ctrl-C names the last one, and ckpt_path= goes on from it (the
    # trainings before it are cached or seeded, so they give again what they gave)
    stages.fit_to_prune(cfg, compressed, data, output_dir, callback, dense_info["cache"]["path"])
    compress_s = time.perf_counter() - t

    with stages.after_pruning(compressed):
        result = stages.compared_result(cfg, compressed, callback, source_dm, target_dm, dense.model, output_dir,
                                        f"{_label(a.domain_weight)} dense, on the target's test split",
                                        f"{_label(a.domain_weight)} compressed, on the target's test split")
        # with domain_weight=0 the domain classifier never learns: its accuracy would say nothing
        domain_accuracy = {"dense": _domain_accuracy(dense, source_dm, target_dm),
                           "compressed": _domain_accuracy(compressed, source_dm, target_dm)
                           } if a.domain_weight > 0 else None
    domain_params = sum(p.numel() for p in compressed.domain.parameters())
    for event in result.events:  # (counted on the training module at the prune: the network's here, as pruned's)
        if isinstance(event.get("params"), int):
            event["params"] -= domain_params
    result.config["adaptation"] = {
        "source": type(source_dm).__name__, "target": type(target_dm).__name__,
        "source_only_target_accuracy": source_only["accuracy"], "source_only_source_accuracy": source_test,
        "target_train_images_unlabeled": len(target_dm.splits["train"]),
        "domain_weight": a.domain_weight, "dense_cache": dense_info["cache"],
        "epochs_from_source_only": epochs,  # (each of the two trainings, from the source-only model)
        "domain_accuracy_test": domain_accuracy,
        # trained beside the network, not part of it: counted in the table printed at the prune (the
        # training module's), not in result.json's sizes (the network's, its events' too)
        "domain_classifier_params": domain_params,
        # (the validation accuracies, the sweeps' objective, are the source's: model selection never sees them)
        "target_labels_used_for": "the final test" + (" and the trained-on-target ceiling" if ceiling else ""),
        "target_trained_accuracy": ceiling["accuracy"] if ceiling else None,
        # (from scratch, dense.epochs: the source-only model's budget, not DANN's dense.epochs + epochs: probe)
        "target_trained_epochs": cfg.dense.epochs if ceiling else None,
        "target_trained_cache": ceiling["cache"] if ceiling else None,
        "settings": OmegaConf.to_container(a, resolve=True),
        "distill": float(distill_args["distill"]),  # (from DANN dense, in the compressed run)
        "features_kept_whole": kept_whole,
        # the source-only and ceiling figures come from part of their test splits too (none: the whole)
        **({"evaluation_limits": source_only["evaluation_limits"]} if source_only.get("evaluation_limits") else {}),
    }
    if stages.train_batch_limit(cfg) is not None:  # (epochs of part of the batches)
        result.config["adaptation"]["limit_train_batches"] = stages.train_batch_limit(cfg)
    # as given, so that a sweep run again finds this run finished (the layers kept whole are recorded above)
    result.config["cli"] = OmegaConf.to_container(given, resolve=True)
    result.timings.update(dense_s=dense_info["seconds"], dann_dense_s=dense_s, compress_s=compress_s)
    result.warnings = [*said, *(w for w in result.warnings if w not in said)]
    return result


def _label(domain_weight) -> str:
    """What the recipe's two trainings are: DANN, or without its domain term (``domain_weight=0``)
    source-only training for the same epochs on both domains' batches (the equal-budget control)."""
    return "no adaptation (same epochs)" if domain_weight == 0 else "DANN"


def adaptation_summary(result) -> str:
    info = result.config["adaptation"]
    ceiling = info.get("target_trained_accuracy")
    epochs = info.get("epochs_from_source_only")
    second = "DANN trained again (pruning=none)" if result.method == "none" else "DANN compressed"
    limit = info.get("limit_train_batches")
    per_epoch = f" of trainer.limit_train_batches={limit}" if limit is not None else ""
    return (f"adaptation {info['source']} -> {info['target']} (target test accuracy): source only "
            f"{100 * info['source_only_target_accuracy']:.2f}%; "
            + (f"then {epochs} epoch{'s' * (epochs != 1)}{per_epoch} from it: " if epochs else "")
            + stages.pair_line(result, f"{_label(info.get('domain_weight'))} dense",
                               f"{_label(info.get('domain_weight'))} compressed", recipe=True,
                               distill=info.get("distill"))
            + ("; DANN's equal-budget control, the same epochs without the domain term, is this run with "
               "adaptation.domain_weight=0 (not run here)" if epochs and info.get("domain_weight") != 0 else "")
            + (f"; trained on the target {100 * ceiling:.2f}%" if ceiling is not None else "")
            + (f" ({info['target_trained_epochs']} epoch{'s' * (info['target_trained_epochs'] != 1)}{per_epoch} from "
               "scratch, "
               "as source only; DANN's models train "
               f"{epochs} more from source only)" if ceiling is not None and info.get("target_trained_epochs")
               and epochs else "")
            + (f"; each on {part_of_test_split(info['evaluation_limits']['limit_test_batches'], each=True)}"
               if (info.get("evaluation_limits") or {}).get("limit_test_batches") is not None else "")
            + (f"; domain classifier after DANN dense {100 * info['domain_accuracy_test']['dense']:.1f}%, after "
               f"{second} {100 * info['domain_accuracy_test']['compressed']:.1f}% (chance is 50%, which a "
               "classifier that always answers one domain also scores; a fresh one may still tell the domains "
               "apart)" if info.get("domain_accuracy_test") else "")
            + ("; no domain classifier trained (adaptation.domain_weight=0: source-only training on both domains' "
               "batches)" if info.get("domain_weight") == 0 else "")
            + (f". Sizes are the network's; the table at the prune also counts the "
               f"{info['domain_classifier_params']:,} parameters of the module's domain classifier"
               + (", which only training uses" if info.get("domain_weight") != 0 else ", which this run did not use")
               if info.get("domain_classifier_params") else ""))


register_recipe("adaptation", run_adaptation, adaptation_summary, check_adaptation)
