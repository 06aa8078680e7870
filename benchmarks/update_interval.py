"""Benchmark: how often should AULM update V and U?

``PruningSchedule.update_every_n_steps`` sets the V/U update interval of the AULM solver:
every N optimizer steps, or once per epoch (``None``; ~110 steps per epoch for LeNet-5 on
the 7,000 MNIST training digits used here). This script compresses LeNet-5 on MNIST with

1. SSR-L2,1 (group lasso): first a short search (``--lams``, tried in order) for a ``lam``
   that reaches ``--min-reduction`` (2x fewer FLOPs) with an update every
   ``--search-interval`` (25) steps, then every interval at that ``lam``;
2. SSR-L2,0 in its budget form (``flops_budget``, 0.05 by default) at every interval;

for each seed, and records per run the FLOPs reduction, the filters left per layer, dense
and pruned test accuracy, the accuracy drop, the rebuild epoch and the wall time. Every run
has the same number of ADMM epochs (``stop_early`` is off, so the comparison does not
depend on when AULM happens to converge). Results, plus a conclusion computed from them
(which interval gives the most FLOPs reduction at an accuracy drop within ``--acc-tol``
points of the best), go to ``benchmarks/results/update_interval.json``.

Each run's outputs go to a folder of its own under ``--work-dir``
(``~/.cache/lightning_ssr/benchmarks/update_interval``): a run that finished there with the same
settings is read back, not trained again, so an interrupted command goes on where it stopped.

Run (17 runs of 20-30 s each, about 8 minutes on 2 idle CPU cores including the dense
model of seed 1; 18 minutes were measured while other jobs shared the cores)::

    python benchmarks/update_interval.py
    python benchmarks/update_interval.py --intervals 25 epoch --seeds 0 --lams 0.01
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import (
    WORK_ROOT,
    check_runs,
    check_seeds,
    code_digest,
    command_line,
    keep_run,
    refuse_smaller,
    run_or_reuse,
    script_main,
)
from lightning_ssr.app.cli import compose_config, run
from lightning_ssr.report import machine_info, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "update_interval.json"
REPO = Path(__file__).resolve().parent.parent


def interval_arg(text: str) -> int | None:
    """``"epoch"`` (or ``"none"``/``"null"``) means once per epoch; otherwise a step count."""
    return None if text.lower() in ("epoch", "none", "null") else int(text)


def label(interval: int | None) -> str:
    return "epoch" if interval is None else str(interval)


def overrides_for(args, regularizer: str, interval: int | None, seed: int, lam: float | None = None) -> list[str]:
    """The command's overrides of one run."""
    overrides = [
        f"pruning=ssr_{regularizer}", f"seed={seed}",
        f"schedule.update_every_n_steps={'null' if interval is None else interval}",
        f"schedule.sparsify_epochs={args.admm_epochs}", f"schedule.finetune_epochs={args.finetune_epochs}",
        "schedule.stop_early=false", "trainer.enable_progress_bar=false",
        "latency.repeats=3", "latency.batch_sizes=[1]", f"verbose={str(args.verbose).lower()}",
    ]
    # pruning=ssr_l21 runs without a target (lam decides); ssr_l20 with target=macs, the budget form
    return [*overrides, f"pruning.lam={lam}" if regularizer == "l21" else f"target.macs={args.flops_budget}"]


def run_dir(args, regularizer: str, interval: int | None, seed: int, lam: float | None = None) -> Path:
    """The run's own folder in the work directory (its settings: :func:`run_or_reuse` tells
    another budget's run there apart by its config)."""
    setting = f"lam{lam:g}" if regularizer == "l21" else f"budget{args.flops_budget:g}"
    return Path(args.work_dir) / f"{regularizer}-{setting}-every{label(interval)}-seed{seed}"


def run_one(args, regularizer: str, interval: int | None, seed: int, lam: float | None = None) -> dict:
    """Compress once (or read back the run that finished in its folder) and return the row of the
    table; a failed run stops the command (the finished ones are kept)."""
    overrides = overrides_for(args, regularizer, interval, seed, lam)
    out_dir = run_dir(args, regularizer, interval, seed, lam)
    record = {"regularizer": regularizer, "interval": label(interval), "seed": seed, "overrides": overrides}
    quiet = contextlib.nullcontext() if args.verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        reused, r = run_or_reuse(overrides, out_dir, record, compose_config, run)
    if r.get("status") not in ("ok", None) or "macs_reduction" not in r:
        raise RuntimeError(f"the run {' '.join(overrides)} failed ({r.get('error') or r.get('status')}); its outputs "
                           f"are in {out_dir}. The runs that finished are kept in {args.work_dir}")
    if not reused:
        keep_run(out_dir, {**r, **record})
    row = {
        "regularizer": regularizer, "lam": lam,
        "flops_budget": args.flops_budget if regularizer == "l20" else None,
        "interval": label(interval), "seed": seed,
        "flops_reduction": r["macs_reduction"],
        "filters_after": {layer["name"].removeprefix("model."): layer["after"] for layer in r["layers"]},
        "dense_accuracy": r["dense"]["accuracy"], "pruned_accuracy": r["pruned"]["accuracy"],
        "accuracy_drop_points": r["accuracy_drop_points"],
        "pruned_at_epoch": r["events"][0]["epoch"] if r["events"] else None, "wall_time_s": r["timings"]["total_s"],
        **({"reused": True} if reused else {}),
    }
    print(f"  {format_row(row)}" + ("  (finished before: read back)" if reused else ""), flush=True)
    return row


def format_row(r: dict) -> str:
    setting = f"lam={r['lam']:g}" if r["regularizer"] == "l21" else f"budget={r['flops_budget']:g}"
    filters = "/".join(str(n) for n in r["filters_after"].values())
    return (f"{r['regularizer']:<4} {setting:<13} {r['interval']:>6} {r['seed']:>4} {r['flops_reduction']:>7.2f}x "
            f"{filters:<16} {100 * r['dense_accuracy']:>6.2f} {100 * r['pruned_accuracy']:>7.2f} "
            f"{r['accuracy_drop_points']:>+6.2f} {r['pruned_at_epoch']!s:>6} {r['wall_time_s']:>6.0f}")


HEADER = (f"{'reg':<4} {'setting':<13} {'every':>6} {'seed':>4} {'FLOPs':>8} {'filters left':<16} "
          f"{'dense%':>6} {'pruned%':>7} {'drop':>6} {'rebuilt':>6} {'time s':>6}")


def summarize(rows: list[dict], acc_tol: float) -> tuple[dict, str]:
    """Mean per (regularizer, interval) over seeds, and the interval each regularizer prefers.

    Preferred: the largest mean FLOPs reduction among the intervals whose mean accuracy drop
    is within ``acc_tol`` points of the smallest; if all reductions are within 5% of each
    other (as in the budget form, where the budget fixes them) the smallest drop wins.
    """
    summary, sentences = {}, []
    for reg in dict.fromkeys(r["regularizer"] for r in rows):
        per = {}
        for r in (r for r in rows if r["regularizer"] == reg):
            per.setdefault(r["interval"], []).append(r)
        means = {k: {"flops_reduction": statistics.mean(r["flops_reduction"] for r in v),
                     "accuracy_drop_points": statistics.mean(r["accuracy_drop_points"] for r in v),
                     "runs": len(v)} for k, v in per.items()}
        reductions = [m["flops_reduction"] for m in means.values()]
        best_drop = min(m["accuracy_drop_points"] for m in means.values())
        if max(reductions) <= 1.05 * min(reductions):
            best = min(means, key=lambda k: means[k]["accuracy_drop_points"])
            why = "same FLOPs reduction, smallest accuracy drop"
        else:
            similar = [k for k, m in means.items() if m["accuracy_drop_points"] <= best_drop + acc_tol]
            best = max(similar, key=lambda k: means[k]["flops_reduction"])
            why = f"most FLOPs reduction with a drop within {acc_tol:g} points of the best"
        setting = per[best][0]
        setting = f"lam={setting['lam']:g}" if reg == "l21" else f"flops_budget={setting['flops_budget']:g}"
        # intervals that sparsify clearly more than `best`, but at a clearly larger accuracy drop
        tradeoffs = [k for k, m in means.items() if m["flops_reduction"] > 1.05 * means[best]["flops_reduction"]]
        summary[reg] = {"setting": setting, "per_interval": means, "best_interval": best, "tradeoffs": tradeoffs}
        parts = ", ".join(f"every {k}: {m['flops_reduction']:.2f}x / {m['accuracy_drop_points']:+.2f} pt"
                          for k, m in means.items())
        more = "".join(f"; every {k} prunes more ({means[k]['flops_reduction']:.2f}x) but drops "
                       f"{means[k]['accuracy_drop_points']:.2f} points" for k in tradeoffs)
        sentences.append(f"{reg} ({setting}; mean FLOPs reduction / accuracy drop) {parts} -> best: "
                         f"every {best} ({why}{more}).")
    return summary, " ".join(sentences)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--intervals", nargs="+", type=interval_arg, default=[10, 25, 100, None],
                   help="V/U update intervals in optimizer steps; 'epoch' = once per epoch")
    p.add_argument("--lams", nargs="+", type=float, default=[0.002, 0.01],
                   help="L2,1 lam values tried in order until one reaches --min-reduction")
    p.add_argument("--min-reduction", type=float, default=2.0,
                   help="FLOPs reduction that counts as 'sparsified noticeably' in the lam search")
    p.add_argument("--search-interval", type=int, default=25, help="update interval of the lam search")
    p.add_argument("--flops-budget", type=float, default=0.05, help="budget of the L2,0 runs")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--admm-epochs", type=int, default=10)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--acc-tol", type=float, default=0.5, help="accuracy drops within this many points are 'similar'")
    p.add_argument("--skip-l20", action="store_true")
    p.add_argument("--verbose", action="store_true", help="show the output of every run")
    p.add_argument("--work-dir", type=Path, default=WORK_ROOT / "update_interval",
                   help="each run's outputs; a finished run found there with the same settings is reused")
    p.add_argument("--force", action="store_true", help="replace --out even if it holds runs of a larger budget")
    p.add_argument("--out", "--output", type=Path, default=RESULTS, help="where to write (--output: its earlier name)")
    args = p.parse_args(argv)
    check_seeds(p, args.seeds)
    code_digest()  # (the code this command's runs are recorded with: taken before any of them)
    if args.flops_budget <= 0 or args.flops_budget > 1 or args.admm_epochs < 1 or args.finetune_epochs < 0:
        p.error("--flops-budget must be in (0, 1], --admm-epochs >= 1 and --finetune-epochs >= 0")
    # (it replaced a file of 17 runs with one of 1, without a word: probe)
    refuse_smaller(args.out, len(args.seeds) * len(args.intervals) * (1 if args.skip_l20 else 2), args.force,
                   {"admm_epochs": args.admm_epochs, "finetune_epochs": args.finetune_epochs, "seeds": args.seeds,
                    "intervals": [label(i) for i in args.intervals], "lams": args.lams, "min_reduction":
                    args.min_reduction, "search_interval": args.search_interval,
                    "regularizers": ["l21", *([] if args.skip_l20 else ["l20"])],
                    # (the L2,0 budget only where L2,0 runs; a --skip-l20 run dropped the file's L2,0 rows: review)
                    **({} if args.skip_l20 else {"flops_budget": args.flops_budget})},
                   same=("flops_budget", "lams", "min_reduction", "search_interval"),
                   covers=("seeds", "intervals", "regularizers"), from_rows={"regularizers": "regularizer"})
    # (each kind of run once, on the first seed: a bad --lams value failed at the first run's set-up)
    check_runs(p, [*(overrides_for(args, "l21", i, args.seeds[0], lam) for lam in args.lams
                     for i in [args.search_interval, *args.intervals]),
                   *(() if args.skip_l20 else (overrides_for(args, "l20", i, args.seeds[0]) for i in args.intervals))])
    if not args.verbose:
        for name in ("lightning.pytorch", "lightning.fabric", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore")
    start = time.time()
    ref = args.search_interval

    print(f"L2,1: searching lam with an update every {ref} steps (seed {args.seeds[0]})\n  {HEADER}")
    search = []
    for lam in args.lams:
        search.append(run_one(args, "l21", ref, args.seeds[0], lam))
        if search[-1]["flops_reduction"] >= args.min_reduction:
            break
    lam = max(search, key=lambda r: r["flops_reduction"])["lam"] \
        if search[-1]["flops_reduction"] < args.min_reduction else search[-1]["lam"]

    print(f"L2,1 at lam={lam:g}, L2,0 at flops_budget={args.flops_budget:g}: comparing intervals\n  {HEADER}")
    rows = [r for r in search if r["lam"] == lam]  # the search run at the chosen lam is reused
    done = {(r["regularizer"], r["interval"], r["seed"]) for r in rows}
    for reg in ["l21"] + ([] if args.skip_l20 else ["l20"]):
        for seed in args.seeds:
            for interval in args.intervals:
                if (reg, label(interval), seed) not in done:
                    rows.append(run_one(args, reg, interval, seed, lam if reg == "l21" else None))

    rows.sort(key=lambda r: (r["regularizer"] != "l21", r["interval"] == "epoch",
                             interval_arg(r["interval"]) or 0, r["seed"]))
    summary, conclusion = summarize(rows, args.acc_tol)
    print(f"\nAll runs ({args.admm_epochs} ADMM + {args.finetune_epochs} fine-tune epochs, "
          f"filters left = conv1/conv2/fc1/fc2):\n{HEADER}")
    for r in rows:
        print(format_row(r))
    print(f"\nConclusion: {conclusion}\nTotal time: {time.time() - start:.0f} s")
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "verbose", "work_dir")}
    settings["intervals"] = [label(i) for i in args.intervals]
    write_json(args.out, relative_to=REPO, obj={
        "benchmark": "update_interval", "command": command_line("update_interval", argv), "machine": machine_info(), "settings": settings, "chosen_lam": lam, "lam_search": search, "rows": rows,
        "summary": summary, "conclusion": conclusion, "total_time_s": time.time() - start,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    script_main(main, keeps_runs=True)
