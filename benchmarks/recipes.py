"""Transfer learning and domain adaptation, compressed: the two recipe experiments, end to end
on the real datasets, as the CLI runs them.

    python benchmarks/recipes.py                       # both, their configs' defaults
    python benchmarks/recipes.py --experiments transfer_fmnist_to_mnist --seeds 0 1

- ``transfer_fmnist_to_mnist``: LeNet-5 trained on Fashion-MNIST, fine-tuned with a new head on
  1,000 labeled MNIST digits, once dense and once compressed 10x by SSR-L2,0 during the fine-tune;
- ``da_mnist_to_digits``: LeNet-5 trained on MNIST, adapted with DANN to the unlabeled UCI digits,
  once dense and once with its convolutions compressed 5x during the adaptation.

Writes ``benchmarks/results/recipes.json``: the machine, and one row per (experiment, seed) with
the target-domain test accuracies (dense and compressed; for adaptation also source only), the
MACs and parameters of both, and the wall time; the full ``result.json`` of each run is kept.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from lightning_ssr.app.cli import compose_config, run
from lightning_ssr.app.console import quiet_lightning
from lightning_ssr.report import machine_info, write_json

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = ["transfer_fmnist_to_mnist", "da_mnist_to_digits"]


def row_of(experiment: str, seed: int, result) -> dict:
    row = {"experiment": experiment, "seed": seed, "status": result.status,
           "dense_accuracy": result.dense.get("accuracy"), "pruned_accuracy": result.pruned.get("accuracy"),
           "dense_macs": result.dense.get("macs"), "pruned_macs": result.pruned.get("macs"),
           "dense_params": result.dense.get("params"), "pruned_params": result.pruned.get("params"),
           "macs_reduction": result.macs_reduction, "params_reduction": result.params_reduction,
           "seconds": result.timings.get("total_s")}
    if "transfer" in result.config:
        info = result.config["transfer"]
        row.update(source=info["source"], target=info["target"], source_test_accuracy=info["source_test_accuracy"],
                   target_train_images=info["target_train_images"])
    if "adaptation" in result.config:
        info = result.config["adaptation"]
        row.update(source=info["source"], target=info["target"],
                   source_only_accuracy=info["source_only_target_accuracy"])
    return row


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENTS, choices=EXPERIMENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--override", nargs="*", default=[], help="more config overrides for every run")
    parser.add_argument("--out", type=Path, default=RESULTS / "recipes.json")
    args = parser.parse_args(argv)
    quiet_lightning()
    rows, results, start = [], [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for experiment in args.experiments:
            for seed in args.seeds:
                overrides = [f"+experiment={experiment}", f"seed={seed}", "trainer.enable_progress_bar=false",
                             "verbose=false", *args.override]
                result = run(compose_config(overrides), Path(tmp) / f"{experiment}-{seed}")
                rows.append(row_of(experiment, seed, result))
                results.append(result.to_dict())
    out = {"benchmark": "recipes", "machine": machine_info(), "settings": {"seeds": args.seeds,
           "override": args.override}, "rows": rows, "results": results, "seconds": time.perf_counter() - start}
    write_json(args.out, relative_to=REPO, obj=out)
    print(f"\n{'experiment':<26} {'runs':>4} {'source only':>11} {'dense':>7} {'compressed':>10} {'MACs red.':>9}")
    for experiment in args.experiments:
        mine = [r for r in rows if r["experiment"] == experiment and r["status"] == "ok"]
        if not mine:
            continue

        def mean(key, mine=mine):
            values = [r[key] for r in mine if r.get(key) is not None]
            return 100 * statistics.fmean(values) if values else None
        only = mean("source_only_accuracy")
        print(f"{experiment:<26} {len(mine):>4} {'' if only is None else f'{only:.2f}%':>11} "
              f"{mean('dense_accuracy'):>6.2f}% {mean('pruned_accuracy'):>9.2f}% "
              f"{statistics.fmean(r['macs_reduction'] for r in mine):>8.1f}x")
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")
    return out


if __name__ == "__main__":
    main()
