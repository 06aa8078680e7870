"""AULM (``ssr_l21``) against direct group lasso by subgradient (``ssl``): how fast each
solver reaches a sparse structure, LeNet-5 on the full MNIST.

    python benchmarks/solver_speed.py
    python benchmarks/solver_speed.py --epochs 6 --variants base grow

Both solvers start from the same dense checkpoint (the job's dense cache), with the same lam
(FLOPs-scaled, as the job uses it), optimizer, data order and number of sparsify epochs. During
the sparsify phase the surviving-filter count (AULM: the support of V; SSL: the groups above its
relative threshold) is recorded at every update (every ``--interval`` steps), with the optimizer
step and the wall time. The common level ``K`` is the larger of the final counts (the level
both reach); each solver's time to ``K`` is measured two ways: the first update from which its
count stays at or below ``K`` (``stay``), and the first update at which it reaches ``K``
(``first``; a solver whose support still oscillates reaches a level long before it stays there). After the sparsify phase both are pruned and fine-tuned for the same epochs, and
test accuracy is measured.

AULM variants (``--variants``): ``base`` (rho fixed at 0.1, the job's ssr_l21 default),
``grow`` (rho x1.1 per update, capped at 2.0) and ``rho1`` (rho fixed at 1.0).

Writes ``benchmarks/results/solver_speed.json``: the machine, the settings, per solver the
trajectory, time and epochs to ``K``, final structure and accuracy; and the ratios
``ssl / aulm`` of epochs and of seconds to ``K`` (> 1: AULM is faster), both ways.
``--recompute`` recomputes the comparisons from the trajectories stored in ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_ssr import Pruning, PruningSchedule
from lightning_ssr.cli import build_data, build_module, compose_config, quiet_lightning, train_dense
from lightning_ssr.report import machine_info, write_json

RESULTS = Path(__file__).parent / "results"
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
        if cb.events_done or cb._last_update_step == self._last or cb._last_update_step < 0:
            return
        self._last = cb._last_update_step
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


def time_to(run: dict, level: int, stay: bool = True) -> dict:
    """The first update at which the total surviving count is <= ``level`` (``stay``: and stays so
    until the end of the sparsify phase)."""
    points = run["trajectory"]
    totals = [sum(p["filters"].values()) for p in points]
    for i in range(len(points)):
        if totals[i] <= level and (not stay or all(t <= level for t in totals[i:])):
            p = points[i]
            return {"step": p["step"], "epochs": p["step"] / run["steps_per_epoch"], "seconds": p["seconds"]}
    return {"step": None, "epochs": None, "seconds": None}


def compare(runs: dict) -> dict:
    """Per AULM variant against SSL, at the larger of their final counts: epochs and seconds to
    reach it and stay (``*_stay``) and to reach it first (``*_first``); ratios ssl / aulm."""
    def ratio(x, y):
        return x / y if x is not None and y else None

    out = {}
    for name, r in runs.items():
        if name == "ssl":
            continue
        level = max(r["final_total"], runs["ssl"]["final_total"])
        row = {"level_filters": level, "accuracy_aulm": r["test_accuracy"], "accuracy_ssl": runs["ssl"]["test_accuracy"]}
        for stay, tag in ((True, "stay"), (False, "first")):
            a, s = time_to(r, level, stay), time_to(runs["ssl"], level, stay)
            row[f"aulm_{tag}"], row[f"ssl_{tag}"] = a, s
            row[f"epochs_ratio_ssl_over_aulm_{tag}"] = ratio(s["epochs"], a["epochs"])
            row[f"seconds_ratio_ssl_over_aulm_{tag}"] = ratio(s["seconds"], a["seconds"])
        out[name] = row
        print(f"{name} vs ssl at <= {level} filters: to stay there {row['epochs_ratio_ssl_over_aulm_stay']}x "
              f"(epochs), first reached {row['epochs_ratio_ssl_over_aulm_first']}x; seconds "
              f"{row['seconds_ratio_ssl_over_aulm_stay']}x / {row['seconds_ratio_ssl_over_aulm_first']}x")
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="mnist")
    parser.add_argument("--lam", type=float, default=0.002)
    parser.add_argument("--epochs", type=int, default=8, help="sparsify epochs (both solvers)")
    parser.add_argument("--finetune", type=int, default=2, help="identical fine-tune epochs after the prune")
    parser.add_argument("--interval", type=int, default=25, help="steps between updates (V/U; SSL's support)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--threshold", type=float, default=1e-2, help="ssl: relative norm threshold")
    parser.add_argument("--batches", type=int, default=0, help="training batches per epoch (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "solver_speed.json")
    parser.add_argument("--recompute", action="store_true",
                        help="recompute the comparisons of the trajectories stored in --out (no training)")
    args = parser.parse_args(argv)
    if args.recompute:
        out = json.loads(args.out.read_text())
        out["comparisons"] = compare(out["runs"])
        write_json(args.out, relative_to=REPO, obj=out)
        return out
    quiet_lightning()

    # the dense model of the default job on this data (cached): --batches limits the solvers only
    cfg = compose_config(["model=lenet5", f"data={args.data}", f"seed={args.seed}", "verbose=false"])
    dm = build_data(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        net, dense_info = train_dense(cfg, dm, tmp)
    steps = args.batches or len(dm.train_dataloader())

    runs = {"ssl": run_solver("ssl", {"lam": args.lam, "threshold": args.threshold}, cfg, net, dm, args, steps)}
    print(f"ssl: {runs['ssl']['final_filters']} acc {runs['ssl']['test_accuracy']:.4f} ({runs['ssl']['fit_s']:.0f} s)",
          flush=True)
    for variant in args.variants:
        r = run_solver("ssr_l21", {"lam": args.lam, **VARIANTS[variant]}, cfg, net, dm, args, steps)
        runs[f"aulm_{variant}"] = r
        print(f"aulm_{variant}: {r['final_filters']} acc {r['test_accuracy']:.4f} ({r['fit_s']:.0f} s)", flush=True)

    comparisons = compare(runs)
    out = {"benchmark": "solver_speed", "machine": machine_info(), "settings": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "dense": {"cache": dense_info["cache"]}, "runs": runs, "comparisons": comparisons}
    write_json(args.out, relative_to=REPO, obj=out)
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
