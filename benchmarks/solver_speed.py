"""AULM (``ssr_l21``) against direct group lasso by subgradient (``ssl``): how fast each
solver reaches a sparse structure, LeNet-5 on the full MNIST.

    python benchmarks/solver_speed.py                    # 3 seeds
    python benchmarks/solver_speed.py --epochs 6 --variants base grow --seeds 0

Both solvers start from the same dense checkpoint (the job's dense cache), with the same lam
(FLOPs-scaled, as the job uses it), optimizer, data order and number of sparsify epochs. During
the sparsify phase the surviving-filter count (AULM: the support of V; SSL: the groups above its
relative threshold) is recorded at every update (every ``--interval`` steps), with the optimizer
step and the wall time. The levels compared are ones both solvers reach: ``K`` is the larger of
the two solvers' sparsest counts over the phase (each gets there at some update), and the levels
a quarter and a half of the way from K back up to the dense count. Each solver's time to a level is measured two ways: the first update from
which its count stays at or below it until the end of the phase (``stay``; ``censored`` when
that is only the last update), and the first update at which it reaches it (``first``; a solver
whose support still oscillates reaches a level long before it stays there). After the sparsify
phase both are pruned and fine-tuned for the same epochs, and test accuracy is measured. Over
the seeds (``--seeds``), each ratio is given as mean ± std, and the difference of epochs
(SSL minus AULM) with its paired 95% interval.

AULM variants (``--variants``): ``base`` (rho fixed at 0.1, the job's ssr_l21 default),
``grow`` (rho x1.1 per update, capped at 2.0) and ``rho1`` (rho fixed at 1.0).

Writes ``benchmarks/results/solver_speed.json``: the machine, the command, the settings, per seed
and solver the trajectory, final structure and accuracy; per seed the times to each level and the
ratios ``ssl / aulm`` of epochs and seconds (> 1: AULM is faster), both ways; and the summary over
seeds. ``--recompute`` recomputes the comparisons from the trajectories stored in ``--out``.

Each solver's finished run is kept in ``--work-dir``
(``~/.cache/lightning_ssr/benchmarks/solver_speed``), keyed by its settings, its dense model and
the package's code: an interrupted command goes on from the runs that finished. Seconds are compared only between runs
timed by the same command (``session``): a run read back was timed under another load, and its
ratio of seconds to a new one is left out (``null``); the ratio of epochs stays.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import (
    WORK_ROOT,
    check_runs,
    check_seeds,
    code_digest,
    command_line,
    config_digest,
    counted,
    number_at_least,
    refuse_smaller,
    script_main,
)
from benchmarks.stats import mean_std, paired, pm
from lightning_ssr import Pruning, PruningSchedule
from lightning_ssr.app.cli import compose_config
from lightning_ssr.app.console import quiet_lightning
from lightning_ssr.app.stages import build_data, build_module, train_dense
from lightning_ssr.report import machine_info, write_json

RESULTS = Path(__file__).parent / "results"
#: the command that timed a run: seconds compare only within one
SESSION = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
REPO = Path(__file__).resolve().parent.parent
VARIANTS = {
    "base": {"rho": 0.1},
    "grow": {"rho": 0.1, "rho_growth": 1.1, "rho_max": 2.0},
    "rho1": {"rho": 1.0},
}


class Trajectory(Callback):
    """Surviving filters, optimizer step and wall time after each of the method's updates."""

    def __init__(self, pruning: Pruning):
        self.pruning = pruning
        self.points: list[dict] = []
        self._start = None
        self._last = -1

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        cb = self.pruning
        step = cb.engine.last_update_step
        if cb.events_done or step == self._last or step < 0:
            return
        self._last = step
        method = cb.method
        support = method.aulm.support() if hasattr(method, "aulm") else method._support
        self.points.append({"step": trainer.global_step, "seconds": time.perf_counter() - self._start,
                            "filters": {k: int(v.sum()) for k, v in support.items()}})


def run_solver(name: str, kwargs: dict, cfg, net, dm, args, steps_per_epoch: int) -> dict:
    schedule = PruningSchedule(sparsify_epochs=args.epochs, finetune_epochs=args.finetune,
                               update_every_n_steps=args.interval, stop_early=False)
    cb = Pruning(method=name, method_kwargs=kwargs, target=None, schedule=schedule, verbose=False)
    trajectory = Trajectory(cb)
    pl.seed_everything(cfg.seed, workers=True)
    lm = build_module(cfg, copy.deepcopy(net), dm)
    trainer = pl.Trainer(max_epochs=schedule.total_epochs, accelerator="cpu", devices=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[cb, trajectory], num_sanity_val_steps=0, limit_val_batches=0,
                         limit_train_batches=args.batches or 1.0)
    start = time.perf_counter()
    trainer.fit(lm, dm)
    fit_s = time.perf_counter() - start
    test = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False)
    acc = float(test.test(lm, dm, verbose=False)[0]["test_acc"])
    final = {g: len(k) for g, k in cb.plan.kept.items()} if cb.plan is not None else {}
    return {"method": name, "kwargs": kwargs, "trajectory": trajectory.points, "final_filters": final,
            "final_total": sum(final.values()), "test_accuracy": acc, "fit_s": fit_s,
            "macs": cb.result.pruned["macs"] if cb.result else None, "steps_per_epoch": steps_per_epoch}


def solver_run(name: str, kwargs: dict, cfg, net, dm, args, steps_per_epoch: int, dense_cache: str) -> dict:
    """:func:`run_solver`, or the run that finished in ``args.work_dir`` with the same settings
    and dense model (read back, ``"reused": True``); a finished run is kept there."""
    key = {"method": name, "kwargs": kwargs, "seed": cfg.seed, "dense": dense_cache, "steps_per_epoch": steps_per_epoch,
           "code": code_digest(), **{k: getattr(args, k) for k in ("data", "epochs", "finetune", "interval", "batches")}}
    digest = config_digest(key)[:12]
    path = Path(args.work_dir) / f"seed{cfg.seed}-{name}-{digest}.json"
    try:
        kept = json.loads(path.read_text())
        if kept.get("key") == json.loads(json.dumps(key, default=str)):
            return {**kept["run"], "reused": True}
    except (OSError, ValueError, AttributeError, KeyError):
        pass  # not run yet (or cut short while written): it runs
    run = {**run_solver(name, kwargs, cfg, net, dm, args, steps_per_epoch), "session": SESSION}
    write_json(path, obj={"key": key, "run": run})
    return run


def totals(run: dict) -> list[int]:
    return [sum(p["filters"].values()) for p in run["trajectory"]]


def time_to(run: dict, level: int, stay: bool = True) -> dict:
    """The first update at which the total surviving count is <= ``level`` (``stay``: and stays so
    until the end of the sparsify phase; ``censored``: that is only the last update)."""
    points, counts = run["trajectory"], totals(run)
    for i in range(len(points)):
        if counts[i] <= level and (not stay or all(t <= level for t in counts[i:])):
            p = points[i]
            return {"step": p["step"], "epochs": p["step"] / run["steps_per_epoch"], "seconds": p["seconds"],
                    "censored": stay and i == len(points) - 1}
    return {"step": None, "epochs": None, "seconds": None, "censored": True}


def common_levels(a: dict, b: dict) -> list[int]:
    """Levels both solvers reach: the larger of their sparsest counts ``K``, and a quarter and a half
    of the way from ``K`` back up to the densest count either had (the dense model's, at the first
    update). Multiples of ``K`` could lie above the dense count: on LeNet-5, fc1's 500 channels
    hardly move, ``K`` is about 520 of 570, and 1.25 K was reached by both at the first update."""
    level = max(min(totals(a)), min(totals(b)))
    top = max(max(totals(a)), max(totals(b)))
    return sorted({level, round(level + (top - level) / 4), round(level + (top - level) / 2)})


def compare(runs: dict) -> dict:
    """Per AULM variant against SSL, at levels both reach: epochs and seconds to reach each and stay
    (``stay``) and to reach it first (``first``); ratios ssl / aulm (> 1: AULM is faster)."""
    def ratio(x, y):
        return x / y if x is not None and y else None

    out = {}
    for name, r in runs.items():
        if name == "ssl":
            continue
        rows = []
        for level in common_levels(r, runs["ssl"]):
            row = {"level_filters": level}
            for stay, tag in ((True, "stay"), (False, "first")):
                a, s = time_to(r, level, stay), time_to(runs["ssl"], level, stay)
                row[f"aulm_{tag}"], row[f"ssl_{tag}"] = a, s
                row[f"epochs_ratio_ssl_over_aulm_{tag}"] = ratio(s["epochs"], a["epochs"])
                # (timed by other commands, under other loads: not compared)
                # (a file written before sessions were recorded holds none: one command timed all its runs)
                row[f"seconds_ratio_ssl_over_aulm_{tag}"] = ratio(s["seconds"], a["seconds"]) if (
                    r.get("session") == runs["ssl"].get("session")) else None
            rows.append(row)
        out[name] = {"accuracy_aulm": r["test_accuracy"], "accuracy_ssl": runs["ssl"]["test_accuracy"],
                     "levels": rows}
    return out


def summarize(per_seed: dict) -> dict:
    """Over seeds, per AULM variant and level rank (0: the sparsest common level): the ratios as
    mean ± std and the epochs SSL needs more than AULM, with its paired 95% interval."""
    out: dict[str, list] = {}
    variants = sorted({v for c in per_seed.values() for v in c})
    for variant in variants:
        ranks = []
        for rank in range(3):
            found = [c[variant]["levels"][rank] for c in per_seed.values()
                     if variant in c and len(c[variant]["levels"]) > rank]
            entry = {"rank": rank, "levels": [f["level_filters"] for f in found]}
            for tag in ("stay", "first"):
                ratios = [f[f"epochs_ratio_ssl_over_aulm_{tag}"] for f in found
                          if f[f"epochs_ratio_ssl_over_aulm_{tag}"] is not None]
                both = [f for f in found if f[f"ssl_{tag}"]["epochs"] is not None and f[f"aulm_{tag}"]["epochs"]
                        is not None]
                entry[f"ratio_{tag}"] = dict(zip(("mean", "std"), mean_std(ratios)), n=len(ratios))
                entry[f"ssl_minus_aulm_epochs_{tag}"] = paired(
                    [f[f"ssl_{tag}"]["epochs"] - f[f"aulm_{tag}"]["epochs"] for f in both])
                entry[f"censored_{tag}"] = sum(f[f"ssl_{tag}"]["censored"] or f[f"aulm_{tag}"]["censored"]
                                               for f in found)
            ranks.append(entry)
        out[variant] = ranks
    return out


def dense_overrides(data: str, seed: int) -> list[str]:
    """The overrides of the default job on ``data`` whose dense model the solvers start from."""
    return ["model=lenet5", f"data={data}", f"seed={seed}", "verbose=false"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--lam", type=number_at_least(0.0), default=0.002)
    parser.add_argument("--epochs", type=counted(1), default=8, help="sparsify epochs (both solvers)")
    parser.add_argument("--finetune", type=counted(0), default=2, help="identical fine-tune epochs after the prune")
    parser.add_argument("--interval", type=counted(1), default=25, help="steps between updates (V/U; SSL's support)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threshold", type=number_at_least(0.0), default=1e-2, help="ssl: relative norm threshold")
    parser.add_argument("--batches", type=counted(0), default=0, help="training batches per epoch (0: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--force", action="store_true", help="replace --out even if it holds more runs")
    parser.add_argument("--out", type=Path, default=RESULTS / "solver_speed.json")
    parser.add_argument("--work-dir", type=Path, default=WORK_ROOT / "solver_speed",
                        help="each solver's finished run; one found there with the same settings is reused")
    parser.add_argument("--recompute", action="store_true",
                        help="recompute the comparisons of the trajectories stored in --out (no training)")
    args = parser.parse_args(argv)
    check_seeds(parser, args.seeds)
    code_digest()  # (the code this command's runs are keyed by: taken before any of them)
    if args.recompute and not args.out.is_file():
        parser.error(f"--recompute: no such file {args.out} (--out names the file whose trajectories it recomputes)")
    if args.recompute:
        out = json.loads(args.out.read_text())
        out["comparisons"] = {seed: compare(runs) for seed, runs in out["runs"].items()}
        out["summary"] = summarize(out["comparisons"])
        write_json(args.out, relative_to=REPO, obj=out)
        return out
    refuse_smaller(args.out, len(args.seeds) * (1 + len(args.variants)), args.force,  # (nor fewer epochs, batches)
                   {k: getattr(args, k) for k in ("epochs", "finetune", "batches", "data", "lam", "interval",
                                                  "threshold", "variants", "seeds")},
                   unbounded=("batches",), same=("data", "lam", "interval", "threshold"), covers=("variants", "seeds"))
    check_runs(parser, [dense_overrides(args.data, args.seeds[0])])  # (a bad --data ended in Hydra's traceback)
    quiet_lightning()
    all_runs, comparisons, dense = {}, {}, {}
    for seed in args.seeds:
        # the dense model of the default job on this data (cached): --batches limits the solvers only
        cfg = compose_config(dense_overrides(args.data, seed))
        dm = build_data(cfg)
        with tempfile.TemporaryDirectory() as tmp:
            net, dense_info = train_dense(cfg, dm, tmp)
        dense[str(seed)] = {"cache": dense_info["cache"]}
        steps = args.batches or len(dm.train_dataloader())
        cache = str(dense_info["cache"]["path"])
        solvers = [("ssl", "ssl", {"lam": args.lam, "threshold": args.threshold}),
                   *((f"aulm_{v}", "ssr_l21", {"lam": args.lam, **VARIANTS[v]}) for v in args.variants)]
        runs = {}
        for label, method, kwargs in solvers:
            r = runs[label] = solver_run(method, kwargs, cfg, net, dm, args, steps, cache)
            again = ", finished before: read back" if r.get("reused") else ""
            print(f"seed {seed} {label}: {r['final_filters']} acc {r['test_accuracy']:.4f} ({r['fit_s']:.0f} s{again})",
                  flush=True)
        all_runs[str(seed)] = runs
        comparisons[str(seed)] = compare(runs)
    summary = summarize(comparisons)
    for variant, ranks in summary.items():
        for entry in ranks:
            print(f"{variant} vs ssl at <= {entry['levels']} filters: epochs ratio to stay "
                  f"{pm(entry['ratio_stay']['mean'], entry['ratio_stay']['std'])}x, first reached "
                  f"{pm(entry['ratio_first']['mean'], entry['ratio_first']['std'])}x")
    out = {"benchmark": "solver_speed", "command": command_line("solver_speed", argv),
           "machine": machine_info(), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                   for k, v in vars(args).items() if k != "work_dir"},
           "dense": dense, "n_runs": sum(len(r) for r in all_runs.values()), "runs": all_runs,
           "comparisons": comparisons, "summary": summary}
    write_json(args.out, relative_to=REPO, obj=out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    script_main(main, keeps_runs=True)
