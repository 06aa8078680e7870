"""Ask for a target, get it: requested vs achieved MACs, parameters, filters and latency,
measured on the rebuilt model, for the zoo and both allocations. No training, no data.

    python benchmarks/targets.py
    python benchmarks/targets.py --models resnet20 --round-to 8
    python benchmarks/targets.py --kinds latency         # only the timed rows (run on an idle machine)

For each model, target kind (macs, params, filters) and level, the keep counts come from
:func:`lightning_ssr.targets.keep_counts` (``uniform`` and ``global`` allocation; global uses the
L2 group norms of the model's initial weights as importance), the model is pruned for real
(:func:`~lightning_ssr.structure.prune_channels`, with its numerical check) and counted again.
Writes ``benchmarks/results/targets.json``: rows ``{model, kind, requested, achieved, allocation,
round_to, error, allocation_s}`` (``error``: achieved / requested - 1) and the machine.

Latency rows ask for a fraction of the dense model's measured time at batch ``LATENCY_BATCH``
on this CPU (all threads): the target in ms is that fraction of the dense time the allocation's
own latency table measured (a separate timing would differ by the machine's drift between the
two). The allocation times layers (a cached table) and pruned copies of the
model (:func:`lightning_ssr.latency.calibrated_keep_counts`); ``achieved`` is then the rebuilt
model's time over the dense model's, measured again, call by call in turn, in this process, and
the row also records the predicted and measured milliseconds (``prediction_error``: measured /
predicted - 1). Timings vary with the machine's load: the structural rows are exact, the latency
ones are not. Every timing runs on ``--threads`` CPU threads, 1 by default: on a 2-core virtual
machine two-thread timings of one pair of models drifted by 15% within a minute, one-thread
timings by 2-3%, once the allocator's thresholds are fixed
(:func:`lightning_ssr.latency.steady_allocator`; the JSON records them).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import command_line, counted, script_main
from lightning_ssr.app.models import build_model
from lightning_ssr.cost import count_cost
from lightning_ssr.latency import interleaved_ms, latency_model, steady_allocator
from lightning_ssr.report import machine_info, write_json
from lightning_ssr.structure import find_channel_groups, prune_channels
from lightning_ssr.targets import ALLOCATIONS, Budget, Target

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
MODELS = {  # name: (in_channels, input size)
    "lenet5": (1, 28), "resnet20": (3, 32), "resnet56": (3, 32), "vgg16_bn": (3, 32),
    "mobilenetv2": (3, 32), "resnet50": (3, 64),
}
LEVELS = {"macs": (0.5, 0.25, 0.1), "params": (0.5, 0.25, 0.1), "filters": (0.7, 0.5, 0.3),
          "latency": (0.75, 0.5, 0.3)}  # latency: fractions of the dense model's measured time
LATENCY_BATCH = 16
TOLERANCE = {"latency": 0.10}  # the others: 2%


def one(name: str, kind: str, level: float, allocation: str, round_to: int) -> dict:
    channels, size = MODELS[name]
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=10, input_size=size)
    model.eval()
    x = torch.randn(2, channels, size, size)
    groups = find_channel_groups(model, x)
    dense = count_cost(model, x)
    params = {n: p.detach() for n, p in model.named_parameters()}
    scores = {g.name: g.norms(params) for g in groups}
    row = {"model": name, "kind": kind, "requested": level, "allocation": allocation, "round_to": round_to}
    dense_model, timed, table = None, torch.randn(LATENCY_BATCH, channels, size, size), None
    start = time.perf_counter()
    if kind == "latency":
        # the target in ms is the level times the dense time the allocation itself measured: a
        # separate measurement would differ by the machine's drift between the two
        dense_model = copy.deepcopy(model)
        table = latency_model(model, timed, groups, dense)
        target = Target(latency=level * table.dense_ms, batch_size=LATENCY_BATCH)
    else:
        target = Target(**{kind: level})
    try:
        keep, timing = Budget(target, allocation=allocation, round_to=round_to).keep_counts(
            model, x, groups, dense, round_to=round_to, allocation=allocation, scores=scores, timing_input=timed,
            table=table)
    except ValueError as err:  # e.g. below what the unprunable layers and floors allow
        return {**row, "achieved": None, "error": None, "allocation_s": time.perf_counter() - start,
                "note": str(err)}
    row["allocation_s"] = time.perf_counter() - start
    order = {g.name: torch.argsort(scores[g.name], descending=True)[: keep[g.name]].sort().values.tolist()
             for g in groups}
    prune_channels(model, x, order, {g.name: g.size for g in groups})
    after = count_cost(model, x)
    if kind == "macs":
        achieved = after.macs / dense.macs
    elif kind == "params":
        achieved = after.params / dense.params
    elif kind == "latency":
        with torch.no_grad():
            dense_ms, pruned_ms = interleaved_ms([lambda: dense_model(timed), lambda: model(timed)], 20,
                                                 min_seconds=1.0)
        achieved = pruned_ms / dense_ms
        row.update(dense_ms=dense_ms, measured_ms=pruned_ms, predicted_ms=timing["predicted_ms"],
                   uncalibrated_ms=timing["uncalibrated_ms"],
                   calibrated_ms=timing["calibrated_ms"], table_dense_ms=timing["dense_ms"], calibration_rounds=len(timing["calibration_ms"]),
                   prediction_error=pruned_ms / timing["predicted_ms"] - 1, macs=after.macs / dense.macs)
    else:
        achieved = sum(keep.values()) / sum(g.size for g in groups)
    return {**row, "achieved": achieved, "error": achieved / level - 1}


def summarize_errors(rows: list[dict]) -> tuple[dict, bool]:
    """Per kind, the largest |achieved / requested - 1| of the rows that met their target (refused
    rows have none), and whether every such row is within its kind's tolerance."""
    met = [r for r in rows if r["achieved"] is not None]
    worst: dict[str, float] = {}
    for r in met:
        worst[r["kind"]] = max(worst.get(r["kind"], 0.0), abs(r["error"]))
    return worst, all(abs(r["error"]) <= TOLERANCE.get(r["kind"], 0.02) for r in met)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    # (an unknown allocation, or round_to 0, wrote a results file of "refused" rows)
    parser.add_argument("--allocations", nargs="+", default=["uniform", "global"], choices=ALLOCATIONS)
    parser.add_argument("--latency-allocations", nargs="+", default=None, choices=ALLOCATIONS,
                        help="allocations of the (timed, slower) latency rows; default: --allocations")
    parser.add_argument("--round-to", type=counted(1), default=1)
    parser.add_argument("--kinds", nargs="+", default=list(LEVELS), choices=list(LEVELS))
    parser.add_argument("--threads", type=counted(1), default=1,
                        help="CPU threads for every timing (default 1: see the module docstring)")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of --out for the models and kinds not run")
    parser.add_argument("--force", action="store_true", help="replace --out even where this run drops rows it holds")
    parser.add_argument("--out", type=Path, default=RESULTS / "targets.json")
    args = parser.parse_args(argv)
    planned = {(name, kind, allocation, level) for name in args.models for kind in args.kinds for level in LEVELS[kind]
               for allocation in ((args.latency_allocations or args.allocations) if kind == "latency"
                                  else args.allocations)}
    covered = {(name, kind) for name in args.models for kind in args.kinds}
    earlier = json.loads(args.out.read_text())["rows"] if args.out.is_file() else []
    # (one round_to a file: rows of another are never kept beside this run's)
    other_round_to = sorted({r.get("round_to", 1) for r in earlier} - {args.round_to})
    kept = [r for r in earlier if args.append and (r["model"], r["kind"]) not in covered
            and r.get("round_to", 1) == args.round_to]
    dropped = [r for r in earlier if r not in kept and (r["model"], r["kind"], r["allocation"], r["requested"])
               not in planned]
    if other_round_to and not args.force:
        raise SystemExit(f"{args.out} holds rows made with round_to {other_round_to[0]}, this run uses "
                         f"{args.round_to}: write elsewhere with --out, or pass --force to replace them")
    if dropped and not args.force:  # (a run of fewer models, kinds or allocations never replaces a larger one)
        raise SystemExit(f"{args.out} holds {len(dropped)} rows this run would drop (e.g. {dropped[0]['model']} "
                         f"{dropped[0]['kind']} {dropped[0]['allocation']} at {dropped[0]['requested']}). Write "
                         "elsewhere with --out, " + ("" if args.append else "keep them with --append, ")
                         + "or pass --force to replace it.")
    torch.set_num_threads(args.threads)
    allocator = steady_allocator()
    rows = []
    print(f"{'model':<12} {'allocation':<8} {'kind':<8} {'requested':>9} {'achieved':>9} {'error':>7} {'alloc s':>8}")
    for name in args.models:
        for kind in args.kinds:
            for level in LEVELS[kind]:
                for allocation in (args.latency_allocations or args.allocations) if kind == "latency" \
                        else args.allocations:
                    row = one(name, kind, level, allocation, args.round_to)
                    rows.append(row)
                    if row["achieved"] is None:
                        print(f"{name:<12} {allocation:<8} {kind:<8} {level:>9.3f}   refused: {row['note'][:60]}")
                        continue
                    extra = (f"  predicted {row['predicted_ms']:.1f} ms, measured {row['measured_ms']:.1f} ms "
                             f"({100 * row['prediction_error']:+.1f}%)" if kind == "latency" else "")
                    print(f"{name:<12} {allocation:<8} {kind:<8} {level:>9.3f} {row['achieved']:>9.4f} "
                          f"{100 * row['error']:>+6.2f}% {row['allocation_s']:>8.2f}{extra}", flush=True)
    rows = kept + rows
    worst, within = summarize_errors(rows)
    out = {"benchmark": "targets", "command": command_line("targets", argv), "machine": machine_info(),
           "threads": args.threads, "allocator": allocator,
           "round_to": args.round_to,
           "latency_batch": LATENCY_BATCH, "rows": rows, "worst_abs_error": worst,
           "within_tolerance": within,
           "tolerance": {k: TOLERANCE.get(k, 0.02) for k in LEVELS}}
    write_json(args.out, relative_to=REPO, obj=out)
    print("worst |error|: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in worst.items())
          + f" over {sum(r['achieved'] is not None for r in rows)} rows "
          f"({sum(r['achieved'] is None for r in rows)} refused); wrote {args.out}")
    return rows


if __name__ == "__main__":
    script_main(main, keeps_runs=False)
