"""The ``lightning-ssr`` command: dense baseline -> SSR compression -> fine-tune -> report.

Hydra picks the model, data, pruning method, schedule and trainer from ``conf/``; see the
README for the configuration reference. Everything is instantiated (and validated) before
any training starts. Results go to ``result.json`` in the Hydra run directory.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .export import EXPORT_FORMATS, export_onnx, export_program, export_torchscript, onnx_max_abs_diff
from .flops import count_cost
from .plan import PLAN_CHECKPOINT_KEY
from .report import compare_latency, format_layer_table, layer_rows

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def _dense_cache_path(cfg: DictConfig) -> Path:
    keyed = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data", "module")}
    keyed["seed"] = cfg.seed
    keyed["dense"] = {k: v for k, v in OmegaConf.to_container(cfg.dense, resolve=True).items()
                      if k not in ("cache_dir", "use_cache")}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cfg.dense.cache_dir) / f"{cfg.model.name}-{cfg.data._target_.rsplit('.', 1)[-1]}-seed{cfg.seed}-{digest}.pt"


def _test_accuracy(lm: pl.LightningModule, dm: pl.LightningDataModule) -> float:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    return float(trainer.test(lm, dm, verbose=False)[0]["test_acc"])


def _export(fmt: str, net: torch.nn.Module, example: torch.Tensor, output_dir: Path) -> dict:
    if fmt == "onnx":
        path = export_onnx(net, example, output_dir / "pruned.onnx")
        check = torch.randn(4, *example.shape[1:])
        try:
            return {"format": fmt, "path": str(path), "onnxruntime_max_abs_diff": onnx_max_abs_diff(net, path, check)}
        except ImportError:
            return {"format": fmt, "path": str(path), "onnxruntime_max_abs_diff": None}
    if fmt == "torchscript":
        return {"format": fmt, "path": str(export_torchscript(net, example, output_dir / "pruned.ts"))}
    export_program(net, example, output_dir / "pruned.pt2")
    return {"format": fmt, "path": str(output_dir / "pruned.pt2")}


def run(cfg: DictConfig, output_dir: Path) -> dict:
    start = time.time()
    # Build everything first, so a bad value fails before any training.
    if cfg.export is not None and cfg.export not in EXPORT_FORMATS:
        raise ValueError(f"export must be null or one of {EXPORT_FORMATS}, got {cfg.export!r}")
    schedule = instantiate(cfg.schedule)
    callback = instantiate(cfg.pruning, schedule=schedule) if cfg.pruning else None
    dm = instantiate(cfg.data)
    dm.setup()

    def make_net():
        return instantiate(cfg.model, in_channels=dm.in_channels, num_classes=dm.num_classes,
                           input_size=dm.image_size)

    def make_module(net, **overrides):
        return instantiate(cfg.module, model=net, num_classes=dm.num_classes, **overrides)

    pl.seed_everything(cfg.seed, workers=True)  # the dense model's initialization depends on it
    net = make_net()
    input_shape = [1, dm.in_channels, dm.image_size, dm.image_size]

    # Dense baseline, cached.
    cache = _dense_cache_path(cfg)
    reused = bool(cfg.dense.use_cache) and cache.is_file()
    if reused:
        print(f"Reusing the dense model cached at {cache}")
        net.load_state_dict(torch.load(cache, weights_only=True)["state_dict"])
    else:
        dense_lm = make_module(net, lr=cfg.dense.lr)
        trainer = instantiate(cfg.trainer, max_epochs=cfg.dense.epochs, logger=False, enable_checkpointing=False,
                              default_root_dir=str(output_dir / "dense"))
        trainer.fit(dense_lm, dm)
        bad = [n for n, p in net.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise FloatingPointError(f"dense training diverged (non-finite values in {bad[:3]}); lower "
                                     "dense.lr. Nothing was cached.")
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({"state_dict": net.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True)}, tmp)
        os.replace(tmp, cache)
    dense_net = copy.deepcopy(net)
    dense_acc = _test_accuracy(make_module(dense_net), dm)
    dense_cost = count_cost(dense_net, torch.zeros(input_shape))

    # Compression (or, with pruning=none, the same number of epochs of plain fine-tuning).
    pl.seed_everything(cfg.seed, workers=True)
    lm = make_module(net)
    max_epochs = cfg.trainer.max_epochs or schedule.total_epochs
    trainer = instantiate(cfg.trainer, max_epochs=max_epochs, callbacks=[callback] if callback else [],
                          default_root_dir=str(output_dir))
    trainer.fit(lm, dm, ckpt_path=cfg.ckpt_path)
    pruned_acc = _test_accuracy(lm, dm)
    pruned_cost = count_cost(net, torch.zeros(input_shape))

    rows = layer_rows(dense_cost, pruned_cost)
    print("\n" + format_layer_table(rows, dense_cost, pruned_cost))
    latency = compare_latency(dense_net, net, input_shape, tuple(cfg.latency.batch_sizes), cfg.latency.repeats)
    plan = callback.plan.to_dict() if callback is not None and callback.plan is not None else None
    torch.save({"state_dict": net.state_dict(), PLAN_CHECKPOINT_KEY: plan}, output_dir / "pruned.pt")
    result = {
        "dense": {"accuracy": dense_acc, "flops": dense_cost.macs, "params": dense_cost.params},
        "pruned": {"accuracy": pruned_acc, "flops": pruned_cost.macs, "params": pruned_cost.params},
        "flops_reduction": dense_cost.macs / pruned_cost.macs,
        "params_reduction": dense_cost.params / pruned_cost.params,
        "accuracy_drop_points": 100.0 * (dense_acc - pruned_acc),
        "layers": [{"name": r["name"], "before": r["before"], "after": r["after"]} for r in rows],
        "latency_ms": {"dense": latency["dense"], "pruned": latency["pruned"]},
        "speedup": latency["speedup"],
        "pruned_at_epoch": callback.pruned_at_epoch if callback is not None else None,
        "dense_cache": {"path": str(cache), "reused": reused},
        "plan": plan,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "wall_time_s": time.time() - start,
    }
    if cfg.export is not None:
        result["export"] = _export(cfg.export, net, torch.randn(input_shape), output_dir)
    (output_dir / "result.json").write_text(json.dumps(result, indent=2))
    lat = " ".join(f"batch {k.split('_')[1]}: {latency['dense'][k]:.3f} -> {latency['pruned'][k]:.3f} ms "
                   f"({latency['speedup'][k]:.2f}x)" for k in latency["speedup"])
    print(f"test accuracy: dense {100 * dense_acc:.2f}% -> pruned {100 * pruned_acc:.2f}% "
          f"({result['accuracy_drop_points']:+.2f} points drop)")
    print(f"CPU latency: {lat}")
    print(f"wrote {output_dir / 'result.json'} ({result['wall_time_s']:.0f} s)")
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    run(cfg, Path(HydraConfig.get().runtime.output_dir))


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
