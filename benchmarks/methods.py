"""Every pruning method, with every allocation that applies to it, on one harness: the same dense
checkpoint, data, targets and epoch budget, over seeds, with paired comparisons.

    python benchmarks/methods.py                       # every registered method and allocation: ResNet-20,
                                                       # Fashion-MNIST, 2x and 4x fewer MACs, 3 seeds
    python benchmarks/methods.py --methods ssr_l21@method l1@uniform none --seeds 0 --macs 0.5

A method is named with its allocation (``ssr_l21@method``, ``l1@uniform``; :mod:`benchmarks.specs`).
For each seed the dense model is trained once to convergence (``--dense-epochs``; the job's dense
cache) and every method compresses that same checkpoint through the job's stages
(``lightning_ssr.app.cli.run``):

- methods with a training-time term (ssr_l21, ssr_l20, bn_scale, ssl, taylor) get
  ``--sparsify`` epochs with it, then ``--finetune`` epochs;
- one-shot methods (fsm, l1, oneshot, random) prune at the start and fine-tune for
  ``--sparsify + --finetune`` epochs: the same total budget;
- every method prunes to each MACs target (``--macs``);
- ``none`` is the dense model fine-tuned for the same total epochs, unpruned: the reference that
  separates the effect of pruning from that of the extra training (one per seed, for all targets).

Each method is compared with ``--reference`` (``l1@uniform``) at the same target, seed by seed:
the mean difference of test accuracy with its 95% interval (:mod:`benchmarks.stats`); "not
distinguishable" where the interval contains 0. Runs train ``--jobs`` at a time, one thread each,
``none`` first, then the largest reduction; each finished run is kept under ``--work-dir``
(``~/.cache/lightning_ssr/benchmarks/methods``), so the same command after an interruption goes
on from the runs that finished (and ``--macs 0.25`` alone writes that target's table from them).
Writes ``benchmarks/results/methods.json`` (machine, command, settings, one ``PruningResult`` per run
and one row per (target, method): accuracy mean ± std, drop from the dense checkpoint, gap to
``none``, the paired comparison, reductions, the structure kept) and ``methods.png``. Accuracy is on
the test split; nothing is selected on it (FSM's compensation is checked on the validation split).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import (
    WORK_ROOT,
    check_once,
    check_runs,
    check_seeds,
    command_line,
    counted,
    job_pool,
    keep_run,
    kept_fraction,
    refuse_smaller,
    run_or_reuse,
    script_main,
)
from benchmarks.specs import (
    check_pruning_overrides,
    check_spec,
    extra_overrides,
    is_oneshot,
    parse_spec,
    registry_specs,
    spec_overrides,
)
from benchmarks.stats import interval, mean_std, paired_by_seed, pm
from lightning_ssr.app.cli import compose_config, run
from lightning_ssr.app.console import quiet_lightning
from lightning_ssr.app.stages import build_data, train_dense
from lightning_ssr.report import machine_info, write_json

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
REFERENCE = "l1@uniform"


def overrides_for(method: str, seed: int, macs: float | None, args) -> list[str]:
    oneshot = is_oneshot(method)
    sparsify = 0 if oneshot else args.sparsify
    finetune = args.finetune + (args.sparsify if oneshot else 0)
    out = [f"model={args.model}", f"data={args.data}", *spec_overrides(method), f"seed={seed}",
           f"dense.epochs={args.dense_epochs}", f"schedule.sparsify_epochs={sparsify}",
           f"schedule.finetune_epochs={finetune}", "schedule.warmup_epochs=0", "schedule.prune_events=1",
           "verbose=false", "trainer.enable_progress_bar=false", f"trainer.accelerator={args.accelerator}",
           "latency.batch_sizes=[]"]
    if macs is not None:
        out.append(f"target.macs={macs}")
    if args.train_size:
        out.append(f"+data.train_size={args.train_size}")
    if args.batches:
        out.append(f"trainer.limit_train_batches={args.batches}")
    return out + extra_overrides(method, args.override)


def dense_job(seed: int, args, out_dir: str) -> dict:
    """Train (or reuse) the dense model of one seed, so that every compression run shares it."""
    cfg = compose_config(overrides_for("none", seed, None, args))
    dm = build_data(cfg)
    _, info = train_dense(cfg, dm, out_dir)
    return {"seed": seed, "path": info["cache"]["path"], "reused": info["cache"]["reused"], "seconds": info["seconds"]}


def compress_job(method: str, seed: int, macs: float | None, args, out_dir: str) -> dict:
    """One compression run; a run that finished in ``out_dir`` with the same overrides and
    composed config is read back instead of trained again."""
    run_overrides = overrides_for(method, seed, macs, args)
    start = time.perf_counter()
    record = {"method": method, "seed": seed, "macs_target": macs, "overrides": run_overrides}
    reused, row = run_or_reuse(run_overrides, out_dir, record, compose_config, run)
    return row if reused else keep_run(out_dir, {**row, **record, "seconds": time.perf_counter() - start})


def structure(row: dict) -> str:
    return "-".join(str(layer["after"]) for layer in row["layers"][:-1])


def summarize(rows: list[dict], reference: str = REFERENCE) -> list[dict]:
    """One row per (target, method): means over seeds (no spread for one run), the failures, and
    paired comparisons by seed with ``reference`` at the same target and with ``none``."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r.get("macs_target"), r["method"]), []).append(r)

    def accuracy(target, method):
        return {r["seed"]: 100 * r["pruned"]["accuracy"] for r in groups.get((target, method), [])
                if r.get("status") == "ok"}
    out = []
    for (target, method), runs in groups.items():
        ok = [r for r in runs if r.get("status") == "ok"]
        failed = [{"seed": r["seed"], "error": r.get("error")} for r in runs if r.get("status") != "ok"]
        row = {"macs_target": target, "method": method, "runs": len(ok), "failed": len(failed), "errors": failed}
        if ok:
            acc_mean, acc_std = mean_std([100 * r["pruned"]["accuracy"] for r in ok])
            drop_mean, drop_std = mean_std([r["accuracy_drop_points"] for r in ok])
            row.update(
                accuracy_mean=acc_mean, accuracy_std=acc_std, drop_mean=drop_mean, drop_std=drop_std,
                dense_accuracy_mean=statistics.fmean(100 * r["dense"]["accuracy"] for r in ok),
                macs_reduction_mean=statistics.fmean(r["macs_reduction"] for r in ok),
                params_reduction_mean=statistics.fmean(r["params_reduction"] for r in ok),
                filters=collections.Counter(structure(r) for r in ok).most_common(1)[0][0],
                seconds_mean=statistics.fmean(r["timings"].get("compress_s", 0.0) for r in ok),
                vs_reference=None if method == reference or target is None else {
                    "reference": reference, **paired_by_seed(accuracy(target, method), accuracy(target, reference))},
                vs_none=None if method == "none" or (None, "none") not in groups  # not run: no comparison
                else paired_by_seed(accuracy(target, method), accuracy(None, "none")),
            )
        out.append(row)
    return out


def plot(rows: list[dict], path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'lightning_ssr[plots]'): no PNG written")
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    methods = sorted({r["method"] for r in rows if r.get("status") == "ok"})
    cmap = plt.get_cmap("tab20")
    dense = [r["dense"] for r in rows if r.get("status") == "ok" and "accuracy" in r["dense"]]
    if dense:
        ax.scatter([statistics.fmean(d["macs"] for d in dense) / 1e6], [100 * statistics.fmean(
            d["accuracy"] for d in dense)], marker="*", s=100, color="black", label="dense (mean)")
    for i, method in enumerate(methods):
        runs = [r for r in rows if r["method"] == method and r.get("status") == "ok"]
        ax.scatter([r["pruned"]["macs"] / 1e6 for r in runs], [100 * r["pruned"]["accuracy"] for r in runs],
                   color=cmap(i % 20), label=method, alpha=0.8, s=18)
    ax.set_xscale("log")
    ax.set_xlabel("MACs (millions, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def format_table(summary: list[dict]) -> str:
    header = (f"{'MACs kept':>9} {'method':<18} {'runs':>4} {'accuracy (%)':>15} {'gap to none':>22} "
              f"{'vs reference (pt)':<46} {'MACs red.':>9} filters")
    lines = [header]
    for s in sorted(summary, key=lambda s: (s["macs_target"] or 1.0, -(s.get("accuracy_mean") or 0))):
        if not s["runs"]:
            lines.append(f"{s['macs_target'] or '-':>9} {s['method']:<18} all {s['failed']} failed: "
                         f"{s['errors'][0]['error'] if s['errors'] else ''}")
            continue
        none = interval(s["vs_none"]) if s.get("vs_none") else "-"
        ref = interval(s["vs_reference"]) if s.get("vs_reference") else "-"
        lines.append(f"{s['macs_target'] or '-':>9} {s['method']:<18} {s['runs']:>4} "
                     f"{pm(s['accuracy_mean'], s['accuracy_std']):>15} {none:>22} {ref:<46} "
                     f"{s['macs_reduction_mean']:>8.2f}x {s['filters']}")
        for e in s["errors"]:
            lines.append(f"{'':>9} {'':<18} failed, seed {e['seed']}: {e['error']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=None, type=check_spec,
                        help="<method>@<allocation> (a bare name: the method's default), or none; default: every "
                             "registered method with each allocation that applies, and none")
    parser.add_argument("--reference", default=REFERENCE, type=check_spec)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--train-size", type=counted(0), default=4000, help="labeled training images (0: all)")
    parser.add_argument("--macs", nargs="+", type=kept_fraction, default=[0.5, 0.25], help="MACs fractions kept")
    parser.add_argument("--dense-epochs", type=counted(1), default=30)
    parser.add_argument("--sparsify", type=counted(0), default=3, help="epochs with the method's term")
    parser.add_argument("--finetune", type=counted(0), default=5, help="epochs after the prune")
    parser.add_argument("--batches", type=counted(0), default=0, help="training batches per epoch (0: all)")
    parser.add_argument("--jobs", type=counted(1), default=2, help="runs at a time (one thread each)")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--override", nargs="*", default=[],
                        help="more config overrides for every run (pruning.<key>: for the methods whose "
                             "config has the key)")
    parser.add_argument("--work-dir", type=Path, default=WORK_ROOT / "methods",
                        help="each run's outputs; a finished run found there with the same settings is reused")
    parser.add_argument("--out", type=Path, default=RESULTS / "methods.json")
    parser.add_argument("--force", action="store_true", help="replace --out even if it holds more runs")
    args = parser.parse_args(argv)
    check_seeds(parser, args.seeds, args.override)
    args.methods = args.methods or registry_specs()
    check_once(parser, "--methods", args.methods)
    check_once(parser, "--macs", args.macs)
    if args.reference not in args.methods:
        parser.error(f"--reference {args.reference}: not among the methods run, so nothing would be compared with "
                     "it; add it to --methods, or give --reference one of them")
    try:
        check_pruning_overrides(args.override, args.methods)
    except ValueError as err:
        parser.error(str(err))
    check_runs(parser, [overrides_for(m, args.seeds[0], None if parse_spec(m)[0] == "none" else args.macs[0], args)
                        for m in args.methods])
    quiet_lightning()
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)
    # none first, then the largest reduction first, seed by seed: an interrupted run leaves whole
    # targets to reuse
    jobs = [(m, s, None) for s in args.seeds for m in args.methods if parse_spec(m)[0] == "none"] + [
        (m, s, macs) for macs in sorted(args.macs) for s in args.seeds for m in args.methods
        if parse_spec(m)[0] != "none"]
    refuse_smaller(args.out, len(jobs), args.force,  # (nor runs of fewer epochs, images or batches)
                   {k: getattr(args, k) for k in ("dense_epochs", "sparsify", "finetune", "train_size", "batches",
                                                  "model", "data", "override", "methods", "macs", "seeds")},
                   unbounded=("train_size", "batches"), same=("model", "data", "override"),
                   covers=("methods", "macs", "seeds"))
    rows = []
    work = Path(args.work_dir).expanduser()
    work.mkdir(parents=True, exist_ok=True)
    log(f"runs in {work} (a finished run found there with the same settings is not trained again)")
    with tempfile.TemporaryDirectory() as tmp, job_pool(args.jobs, 1 if args.jobs > 1 else 2) as pool:
        dense = [pool.submit(dense_job, s, args, str(Path(tmp) / f"dense-{s}")) for s in args.seeds]
        dense_models = [f.result() for f in dense]
        for d in dense_models:
            log(f"dense model of seed {d['seed']}: {Path(d['path']).name} ({'reused' if d['reused'] else 'trained'})")
        futures = [pool.submit(compress_job, m, s, macs, args, str(work / f"{m}-{s}-{macs}"))
                   for m, s, macs in jobs]
        for future in futures:
            r = future.result()
            rows.append(r)
            log(f"seed {r['seed']} {r['method']:<18} {r['macs_target'] or '-':>5}: " + (
                f"{100 * r['pruned']['accuracy']:.2f}% at {r['macs_reduction']:.2f}x MACs "
                + ("(reused)" if r.get("reused") else f"({r['seconds']:.0f} s)")
                if r.get("status") == "ok" else f"FAILED {r.get('error')}"))
    summary = summarize(rows, args.reference)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--methods" not in argv:  # the registry's list changes as methods are added: record the one run
        argv += ["--methods", *args.methods]
    out = {"benchmark": "methods", "command": command_line("methods", argv),
           "machine": machine_info(), "settings": settings, "dense": dense_models, "summary": summary,
           "rows": rows, "seconds": time.perf_counter() - start}
    write_json(args.out, relative_to=REPO, obj=out)
    png = plot(rows, args.out.with_suffix(".png"), f"{args.model} on {args.data}: every method, same budget")
    print("\n" + format_table(summary))
    print(f"wrote {args.out}" + (f" and {png}" if png else ""))
    return out


if __name__ == "__main__":
    script_main(main, keeps_runs=True)
