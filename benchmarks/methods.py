"""Every pruning method on one harness: same dense checkpoint, data, target and epoch budget.

    python benchmarks/methods.py                       # Fashion-MNIST, ResNet-20, ~50% fewer MACs, 3 seeds
    python benchmarks/methods.py --methods l1 fsm --seeds 0

For each seed the dense model is trained once (the job's dense cache) and every method
compresses that same checkpoint through the job's stages (``lightning_ssr.cli.run``):

- methods with a training-time term (ssr_l21, ssr_l20, bn_scale, ssl, taylor) get
  ``--sparsify`` epochs with it, then ``--finetune`` epochs;
- one-shot methods (fsm, l1, oneshot, random) prune at the start and fine-tune for
  ``--sparsify + --finetune`` epochs: the same total budget;
- every method prunes to the same MACs target (``target.macs``; ssr_l21 ranks by V's norms);
- ``none`` is the dense model fine-tuned for the same total epochs, unpruned: the reference
  that separates the effect of pruning from that of the extra training.

Writes ``benchmarks/results/methods.json`` (machine, settings, one ``PruningResult`` per run and
a per-method summary: mean and std over seeds of the accuracy drop from the dense checkpoint,
of the gap to ``none`` (the points a method loses against the unpruned model trained for the
same epochs: the measure of the pruning itself), MACs and params reductions) and ``methods.png`` (test accuracy against MACs, one colour per method).
Accuracy is on the test split; nothing is selected on it (FSM's compensation is checked on
the validation split).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from lightning_ssr.cli import compose_config, quiet_lightning, run
from lightning_ssr.methods import available_methods, build_method
from lightning_ssr.report import machine_info, write_json

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
METHODS = ["ssr_l21", "ssr_l20", "fsm", "l1", "bn_scale", "ssl", "oneshot", "taylor", "random", "none"]


def overrides_for(method: str, seed: int, args) -> list[str]:
    oneshot = method == "none" or not build_method(method).sparsifies
    sparsify = 0 if oneshot else args.sparsify
    finetune = args.finetune + (args.sparsify if oneshot else 0)
    out = [f"model={args.model}", f"data={args.data}", f"pruning={method}", "target=macs",
           f"target.macs={args.macs}", f"seed={seed}", f"dense.epochs={args.dense_epochs}",
           f"schedule.sparsify_epochs={sparsify}", f"schedule.finetune_epochs={finetune}",
           "schedule.warmup_epochs=0", "schedule.prune_events=1", "verbose=false",
           "trainer.enable_progress_bar=false", f"trainer.accelerator={args.accelerator}",
           "latency.batch_sizes=[]"]
    if args.batches:
        out.append(f"trainer.limit_train_batches={args.batches}")
    if args.rates:
        out += ["target=rates", f"target.rates='{args.rates}'"]
    return out + list(args.override)


def summarize(rows: list[dict]) -> dict:
    by_method: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("status") == "ok":
            by_method.setdefault(row["method"], []).append(row)
    unpruned = {r["seed"]: r["pruned"]["accuracy"] for r in by_method.get("none", [])}
    out = {}
    for method, runs in by_method.items():
        drops = [r["accuracy_drop_points"] for r in runs]
        gaps = [100 * (unpruned[r["seed"]] - r["pruned"]["accuracy"]) for r in runs if r["seed"] in unpruned]
        out[method] = {
            # accuracy points below the unpruned model fine-tuned for the same epochs (same seed)
            "gap_to_none_mean": statistics.fmean(gaps) if gaps else None,
            "gap_to_none_std": statistics.stdev(gaps) if len(gaps) > 1 else None,
            "runs": len(runs),
            "drop_mean": statistics.fmean(drops),
            "drop_std": statistics.stdev(drops) if len(drops) > 1 else 0.0,
            "accuracy_mean": statistics.fmean(r["pruned"]["accuracy"] for r in runs),
            "macs_reduction_mean": statistics.fmean(r["macs_reduction"] for r in runs),
            "params_reduction_mean": statistics.fmean(r["params_reduction"] for r in runs),
            "seconds_mean": statistics.fmean(r["timings"].get("compress_s", 0.0) for r in runs),
        }
    return out


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'lightning_ssr[plots]'): no PNG written")
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({r["method"] for r in rows if r.get("status") == "ok"})
    cmap = plt.get_cmap("tab10")
    dense = [r["dense"] for r in rows if r.get("status") == "ok" and "accuracy" in r["dense"]]
    if dense:
        ax.scatter([d["macs"] / 1e6 for d in dense], [100 * d["accuracy"] for d in dense], marker="*", s=80,
                   color="black", label="dense")
    for i, method in enumerate(methods):
        runs = [r for r in rows if r["method"] == method and r.get("status") == "ok"]
        ax.scatter([r["pruned"]["macs"] / 1e6 for r in runs], [100 * r["pruned"]["accuracy"] for r in runs],
                   color=cmap(i % 10), label=method, alpha=0.8)
    ax.set_xlabel("MACs (millions)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=available_methods() + ["none"],
                        help="registered methods; none: the dense model fine-tuned for the same epochs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--macs", type=float, default=0.5, help="MACs fraction kept (every method)")
    parser.add_argument("--rates", default=None, help="per-layer rates instead of --macs (e.g. the FSM paper's)")
    parser.add_argument("--dense-epochs", type=int, default=6)
    parser.add_argument("--sparsify", type=int, default=3, help="epochs with the method's term")
    parser.add_argument("--finetune", type=int, default=3, help="epochs after the prune")
    parser.add_argument("--batches", type=int, default=100, help="training batches per epoch (0: all)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--override", nargs="*", default=[], help="more config overrides for every run")
    parser.add_argument("--out", type=Path, default=RESULTS / "methods.json")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of --out for other (method, seed) pairs and add these")
    args = parser.parse_args(argv)
    quiet_lightning()

    rows, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for method in args.methods:
                cfg = compose_config(overrides_for(method, seed, args))
                t = time.perf_counter()
                try:
                    result = run(cfg, Path(tmp) / f"{method}-{seed}")
                    row = result.to_dict()
                except Exception as err:  # noqa: BLE001 - recorded, and the other runs go on
                    row = {"method": method, "status": "failed", "error": f"{type(err).__name__}: {err}"}
                row["seed"] = seed
                rows.append(row)
                print(f"[{time.perf_counter() - start:6.0f} s] seed {seed} {method:<9} "
                      + (f"drop {row['accuracy_drop_points']:+.2f} pt at {row['macs_reduction']:.2f}x MACs "
                         f"({time.perf_counter() - t:.0f} s)" if row.get("status") == "ok" else row.get("error", "")),
                      flush=True)
    if args.append and args.out.is_file():
        done = {(r["method"], r["seed"]) for r in rows}
        rows = [r for r in json.loads(args.out.read_text())["rows"] if (r["method"], r["seed"]) not in done] + rows
    summary = summarize(rows)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out = {"benchmark": "methods", "machine": machine_info(), "settings": settings, "summary": summary,
           "rows": rows, "seconds": time.perf_counter() - start}
    write_json(args.out, relative_to=REPO, obj=out)
    png = plot(rows, args.out.with_suffix(".png"), f"{args.model} on {args.data}: every method, same budget")
    print(f"\n{'method':<10} {'runs':>4} {'drop (pt)':>14} {'gap to none':>14} {'MACs red.':>9} {'params red.':>11}")
    for method, s in sorted(summary.items(), key=lambda kv: -kv[1]["accuracy_mean"]):
        gap = f"{s['gap_to_none_mean']:>+7.2f} ± {s['gap_to_none_std'] or 0:.2f}" if s["gap_to_none_mean"] is not None \
            else f"{'':>14}"
        print(f"{method:<10} {s['runs']:>4} {s['drop_mean']:>+7.2f} ± {s['drop_std']:.2f} {gap} "
              f"{s['macs_reduction_mean']:>8.2f}x {s['params_reduction_mean']:>10.2f}x")
    print(f"wrote {args.out}" + (f" and {png}" if png else ""))
    return out


if __name__ == "__main__":
    main()
