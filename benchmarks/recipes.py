"""Transfer learning and domain adaptation, compressed: the recipe experiments, end to end on the
real datasets, as the CLI runs them, over seeds.

    python benchmarks/recipes.py                       # all three, 3 seeds, their configs' defaults
    python benchmarks/recipes.py --no-control          # without the adaptation runs' equal-budget controls
    python benchmarks/recipes.py --experiments da_mnist_to_mnist_m --seeds 0 --out /tmp/r.json

- ``transfer_fmnist_to_mnist``: LeNet-5 trained on Fashion-MNIST, fine-tuned with a new head on
  1,000 labeled MNIST digits, once dense and once compressed 10x by SSR-L2,0 during the fine-tune,
  with the same epochs (so the cost of compression is not mixed with a difference in training);
- ``da_mnist_to_digits``: LeNet-5 trained on MNIST, adapted with DANN to the unlabeled UCI digits,
  once dense and once compressed 5x during the adaptation;
- ``da_mnist_to_mnist_m``: the same on MNIST -> MNIST-M (Ganin et al., JMLR 2016), compressed 4x.

Each adaptation run reports, on the target's test split: source only, DANN dense, DANN compressed
and the same network trained on the target's labels (the ceiling), and the share of the gap
between source only and the ceiling that DANN closes. Model selection never sees the target's
labels. DANN trains ``dense.epochs`` more than source only, so each adaptation seed also runs its
equal-budget control (``--no-control`` leaves it out): the same run with the domain term off
(``adaptation.domain_weight=0``), whose "dense" network is source-only training for DANN's epochs
on both domains' batches; DANN dense minus it, paired by seed, is what the adaptation adds.

Writes ``benchmarks/results/recipes.json``: the command, the machine, one row per (experiment,
seed; the controls' rows are marked ``"variant": "no_adaptation"``), a summary per experiment
(means ± std over seeds and paired intervals by seed: compressed minus dense, and for adaptation
DANN dense minus source only and minus the control), and every run's ``result.json``.
Runs train ``--jobs`` at a time, one thread each. Each run's outputs stay under ``--work-dir``
(``~/.cache/lightning_ssr/benchmarks/recipes``): after an interruption, the same command goes on
from the runs that finished there with the same settings.
"""

from __future__ import annotations

import argparse
import sys
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
    refuse_smaller,
    run_or_reuse,
    script_main,
)
from benchmarks.stats import mean_std, paired_by_seed
from lightning_ssr.app.cli import compose_config, run
from lightning_ssr.app.console import quiet_lightning
from lightning_ssr.report import machine_info, write_json

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = ["transfer_fmnist_to_mnist", "da_mnist_to_digits", "da_mnist_to_mnist_m"]
#: the equal-budget control of an adaptation run: the same run with the domain term off
CONTROL, CONTROL_OVERRIDE = "no_adaptation", "adaptation.domain_weight=0"


def _pct(value):
    return None if value is None else 100 * value


def row_of(experiment: str, seed: int, result: dict, variant: str | None = None) -> dict:
    """One run's figures (accuracies in %), from its ``result.json`` as a dict; ``variant``:
    ``"no_adaptation"`` for the equal-budget control of an adaptation run."""
    dense, pruned = result.get("dense") or {}, result.get("pruned") or {}
    row = {"experiment": experiment, "seed": seed, **({"variant": variant} if variant else {}),
           "status": result.get("status"), "error": result.get("error"),
           "dense_accuracy": _pct(dense.get("accuracy")), "pruned_accuracy": _pct(pruned.get("accuracy")),
           "dense_macs": dense.get("macs"), "pruned_macs": pruned.get("macs"),
           "dense_params": dense.get("params"), "pruned_params": pruned.get("params"),
           "macs_reduction": result.get("macs_reduction"), "params_reduction": result.get("params_reduction"),
           "seconds": (result.get("timings") or {}).get("total_s")}
    config = result.get("config") or {}
    if "transfer" in config:
        info = config["transfer"]
        row.update(kind="transfer", source=info["source"], target=info["target"],
                   source_test_accuracy=_pct(info["source_test_accuracy"]),
                   target_train_images=info["target_train_images"])
    if "adaptation" in config:
        info = config["adaptation"]
        only, ceiling = _pct(info["source_only_target_accuracy"]), _pct(info.get("target_trained_accuracy"))
        row.update(kind="adaptation", source=info["source"], target=info["target"], source_only_accuracy=only,
                   ceiling_accuracy=ceiling, gap_closed=gap_closed(only, row["dense_accuracy"], ceiling),
                   domain_accuracy=_pct((info.get("domain_accuracy_test") or {}).get("dense")),
                   pruned_domain_accuracy=_pct((info.get("domain_accuracy_test") or {}).get("compressed")))
    return row


def gap_closed(source_only: float | None, adapted: float | None, ceiling: float | None) -> float | None:
    """The share of the gap between source only and the ceiling that adaptation closes (the paper's
    DANN on MNIST -> MNIST-M: (76.66 - 52.25) / (95.96 - 52.25) = 0.56)."""
    if None in (source_only, adapted, ceiling) or ceiling <= source_only:
        return None
    return (adapted - source_only) / (ceiling - source_only)


FIELDS = ["source_only_accuracy", "dense_accuracy", "pruned_accuracy", "ceiling_accuracy", "gap_closed",
          "domain_accuracy", "pruned_domain_accuracy", "source_test_accuracy", "macs_reduction", "params_reduction"]


def summarize(rows: list[dict]) -> list[dict]:
    """Per experiment: mean and std over its seeds of every figure, the paired intervals by seed
    (compressed - dense; for adaptation, DANN dense - source only, and DANN dense - the control
    where its rows are there), and the seeds whose accuracies repeat another seed's exactly (a seed
    that does not reach a stage shows up here)."""
    out = []
    for experiment in dict.fromkeys(r["experiment"] for r in rows):
        mine = [r for r in rows if r["experiment"] == experiment and r["status"] == "ok" and not r.get("variant")]
        control = {r["seed"]: r["dense_accuracy"] for r in rows if r["experiment"] == experiment
                   and r.get("variant") == CONTROL and r["status"] == "ok" and r.get("dense_accuracy") is not None}
        entry = {"experiment": experiment, "n_runs": len(mine), "seeds": [r["seed"] for r in mine],
                 "failed": [{"seed": r["seed"], "error": r["error"], **({"variant": r["variant"]} if r.get("variant")
                                                                       else {})}
                            for r in rows if r["experiment"] == experiment and r["status"] != "ok"]}
        for key in FIELDS:
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                entry[key] = dict(zip(("mean", "std"), mean_std(values), strict=True))

        def by_seed(key, mine=mine):
            return {r["seed"]: r[key] for r in mine if r.get(key) is not None}
        entry["compressed_minus_dense"] = paired_by_seed(by_seed("pruned_accuracy"), by_seed("dense_accuracy"))
        if any(r.get("kind") == "adaptation" for r in mine):
            entry["dann_minus_source_only"] = paired_by_seed(by_seed("dense_accuracy"), by_seed("source_only_accuracy"))
        if control:
            entry["no_adaptation_accuracy"] = dict(zip(("mean", "std"), mean_std(list(control.values())), strict=True))
            entry["no_adaptation_seeds"] = sorted(control)
            entry["dann_minus_no_adaptation"] = paired_by_seed(by_seed("dense_accuracy"), control)
        scores = {r["seed"]: (r.get("source_only_accuracy"), r["dense_accuracy"],
                              r["pruned_accuracy"]) for r in mine}
        entry["identical_seeds"] = sorted([a, b] for a in scores for b in scores if a < b and scores[a] == scores[b])
        out.append(entry)
    return out


def overrides_for(experiment: str, seed: int, overrides: list[str], variant: str | None = None) -> list[str]:
    """The command's overrides of one run (``variant="no_adaptation"``: its equal-budget control)."""
    return [f"+experiment={experiment}", f"seed={seed}", "trainer.enable_progress_bar=false", "verbose=false",
            "latency.batch_sizes=[]", *overrides, *([CONTROL_OVERRIDE] if variant == CONTROL else [])]


def run_job(experiment: str, seed: int, overrides: list[str], out_dir: str, variant: str | None = None) -> dict:
    """One run of ``experiment`` at ``seed`` (``variant="no_adaptation"``: its equal-budget
    control); one that finished in ``out_dir`` with the same overrides and composed config is taken
    as it is (``"reused": True``)."""
    run_overrides = overrides_for(experiment, seed, overrides, variant)
    start = time.perf_counter()
    record = {"experiment": experiment, "seed": seed, **({"variant": variant} if variant else {}),
              "overrides": run_overrides}
    reused, result = run_or_reuse(run_overrides, out_dir, record, compose_config, run)
    if reused:
        return result
    if result["status"] == "failed":
        result["timings"] = {"total_s": time.perf_counter() - start}
    return keep_run(out_dir, {**record, "status": result.get("status"), "result": result})


def format_table(summary: list[dict]) -> str:
    def cell(entry, key):
        s = entry.get(key)
        if not s:
            return "-"
        return f"{s['mean']:.2f}" + ("" if s["std"] is None else f" ± {s['std']:.2f}")
    head = f"{'experiment':<26} {'runs':>4} {'source only':>15} {'dense':>15} {'compressed':>15} {'ceiling':>15} {'red.':>6}"
    lines = [head]
    for e in summary:
        red = e.get("macs_reduction")
        lines.append(f"{e['experiment']:<26} {e['n_runs']:>4} {cell(e, 'source_only_accuracy'):>15} "
                     f"{cell(e, 'dense_accuracy'):>15} {cell(e, 'pruned_accuracy'):>15} "
                     f"{cell(e, 'ceiling_accuracy'):>15} {'' if not red else format(red['mean'], '.1f') + 'x':>6}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiments", nargs="+", default=EXPERIMENTS, choices=EXPERIMENTS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=counted(1), default=2, help="runs at a time (one thread each)")
    parser.add_argument("--override", nargs="*", default=[], help="more config overrides for every run")
    parser.add_argument("--work-dir", type=Path, default=WORK_ROOT / "recipes",
                        help="where each run's outputs stay; an interrupted benchmark run again with the same "
                             "options goes on from the runs that finished there")
    parser.add_argument("--out", type=Path, default=RESULTS / "recipes.json")
    parser.add_argument("--force", action="store_true", help="replace --out even if it holds more runs")
    parser.add_argument("--control", action=argparse.BooleanOptionalAction, default=True,
                        help="with each adaptation run, its equal-budget control: the same run with the domain "
                             f"term off ({CONTROL_OVERRIDE}; not with an --override of adaptation.domain_weight)")
    args = parser.parse_args(argv)
    check_seeds(parser, args.seeds, args.override)
    check_once(parser, "--experiments", args.experiments)
    if args.control and any(o.replace(" ", "").lstrip("+").startswith("adaptation.domain_weight=")
                            for o in args.override):
        print("no equal-budget controls: --override sets adaptation.domain_weight itself")
        args.control = False
    jobs = [(e, s, None) for e in args.experiments for s in args.seeds]
    if args.control:
        jobs += [(e, s, CONTROL) for e, s, _ in jobs if e.startswith("da_")]
    # (each experiment and variant once, on the first seed: the others differ by it only)
    check_runs(parser, [overrides_for(e, args.seeds[0], args.override, v) for e, s, v in jobs if s == args.seeds[0]])
    refuse_smaller(args.out, len(jobs), args.force, {"override": args.override, "experiments": args.experiments,
                                                     "seeds": args.seeds},
                   same=("override",), covers=("experiments", "seeds"), from_rows={"experiments": "experiment"})
    quiet_lightning()
    start = time.perf_counter()
    rows, results = [], []
    # the slowest experiment first, so that the others fill the second worker around it
    order = sorted(jobs, key=lambda j: EXPERIMENTS.index(j[0]), reverse=True)
    print(f"runs in {args.work_dir} (a finished run found there with the same settings is not trained again)")
    with job_pool(args.jobs, 1 if args.jobs > 1 else 2) as pool:
        futures = {pool.submit(run_job, e, s, list(args.override),
                               str(args.work_dir / "-".join([e, str(s), *([v] if v else [])])), v): (e, s, v)
                   for e, s, v in order}
        done = {}
        for future, (e, s, v) in futures.items():
            job = future.result()
            done[(e, s, v)] = job
            row = row_of(e, s, job["result"], v)
            print(f"[{time.perf_counter() - start:6.0f} s] {e} seed {s}{' (no adaptation)' if v else ''}: "
                  + ("(finished earlier) " if job.get("reused") else "") + (
                f"dense {row['dense_accuracy']:.2f}%, compressed {row['pruned_accuracy']:.2f}% at "
                f"{row['macs_reduction']:.1f}x MACs" if row["status"] == "ok" else f"FAILED {row['error']}"),
                flush=True)
    for e, s, v in jobs:  # rows in the order asked for
        rows.append(row_of(e, s, done[(e, s, v)]["result"], v))
        results.append(done[(e, s, v)]["result"])
    summary = summarize(rows)
    out = {"benchmark": "recipes", "command": command_line("recipes", argv), "machine": machine_info(),
           "settings": {"seeds": args.seeds, "jobs": args.jobs, "override": args.override,
                        "control": args.control, "experiments": args.experiments},
           "n_runs": len(rows), "summary": summary, "rows": rows, "results": results,
           "seconds": time.perf_counter() - start}
    write_json(args.out, relative_to=REPO, obj=out)
    print("\n" + format_table(summary))
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")
    return out


if __name__ == "__main__":
    sys.exit(0 if script_main(main, keeps_runs=True) else 1)
