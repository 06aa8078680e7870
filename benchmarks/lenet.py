"""LeNet-5, the SSR paper's table: SSR-L2,1, SSR-L2,0 and the best baseline on the full MNIST
(55k/5k/10k) and on Fashion-MNIST, beside the paper's rows.

    python benchmarks/lenet.py                              # both datasets, 5 seeds, 2 runs at a time
    python benchmarks/lenet.py --datasets mnist --seeds 0 1 --methods ssr_l20@method l1@uniform none
    python benchmarks/lenet.py --datasets mnist --methods ssr_l21@method ssr_l20@method ssr_l20@uniform \
        l1@uniform none --override module.distill=0.7 --work-dir ~/.cache/lightning_ssr/benchmarks/lenet_distill \
        --out benchmarks/results/lenet_distill.json    # every run, none too, also learns the dense model's outputs

A method is named with its allocation, ``<method>@<allocation>`` (``ssr_l21@method``: the
structure SSR learns; ``ssr_l21@uniform``: every layer the same fraction; a bare name takes the
method's default), or ``none``: the dense model fine-tuned for the same epochs, unpruned, the
equal-budget reference that tells the effect of pruning from that of the extra training. A
structure in place of the allocation, ``<method>@<conv1>-<conv2>-<fc1>`` (``l1@1-16-65``), prunes
to those counts (``target.rates`` by layer): a learned structure handed to another method, which
tells what the structure is worth from what the method's weights are.
Every method compresses the same dense LeNet-5 of each seed (the job's dense cache) to the same
MACs target (MNIST: 2.5% of the dense MACs, 40x; Fashion-MNIST: 10%, 10x) with the same epoch
budget: methods with a training-time term get ``--sparsify`` epochs with it and ``--finetune``
after the prune; one-shot methods (l1) prune at the start and fine-tune for both. The accuracy
drop is dense minus pruned top-1 on the 10k test split, in points; nothing is selected on it.
Each method is compared with ``--reference`` (``l1@uniform``) seed by seed: the mean difference
in accuracy with its 95% interval (:mod:`benchmarks.stats`).

Runs train ``--jobs`` at a time, one thread each (LeNet-5 is too small for two threads to help
one run). Speed is measured afterwards, alone, in this process, on a fresh LeNet-5 rebuilt from
each run's plan: dense and pruned called in turn, at batch 1 and 256 in eager PyTorch, and at
batch 1 in ONNX Runtime with bound buffers, on 1 thread and on all (``speedup_b1_runtime``: each
model at its faster thread count, the dense one's fastest over the row's runs;
``speedup_b1_runtime_1thread``: both on one).
``--remeasure FILE`` times an earlier file's runs again without training. Each run's outputs stay
under ``--work-dir`` (``~/.cache/lightning_ssr/benchmarks/lenet``): after an interruption, the same
command goes on from the runs that finished there with the same settings. Writes
``benchmarks/results/lenet.json``: the machine, the settings, and rows ``{dataset, method,
filters, macs_reduction, params_reduction, drop_mean, drop_std, n_runs, speedup_b1_eager,
speedup_b1_runtime, speedup_b1_runtime_1thread, speedup_b256, vs_reference, vs_none}`` (means
over the seeds; ``filters`` is the most common structure), the paper's rows (``source: paper``),
and every run.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

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
from benchmarks.specs import (
    LENET_SEEDS,
    check_pruning_overrides,
    check_spec,
    extra_overrides,
    given_structure,
    is_oneshot,
    parse_spec,
    spec_overrides,
)
from benchmarks.stats import interval, mean_std, paired_by_seed, pm
from lightning_ssr.app.cli import compose_config, run
from lightning_ssr.app.console import quiet_lightning
from lightning_ssr.app.export import export_onnx
from lightning_ssr.app.models import build_model
from lightning_ssr.app.stages import build_data, train_dense
from lightning_ssr.latency import compare_latency, steady_allocator
from lightning_ssr.report import machine_info, write_json
from lightning_ssr.structure.surgery import apply_plan

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
DATASETS = {"mnist": ("mnist", 0.025), "fashion_mnist": ("fashion_mnist", 0.1)}  # name: (data config, MACs kept)
# each method with the allocations that apply to it, and the equal-budget unpruned reference
METHODS = ["ssr_l21@method", "ssr_l21@uniform", "ssr_l20@method", "ssr_l20@uniform", "l1@uniform", "l1@global",
           "none"]
REFERENCE = "l1@uniform"
# The SSR paper's LeNet-5 rows on MNIST (Lin et al. 2019, Table: filters, FLOPs, params, CPU speed-up,
# top-1 error increase); dense 2.29M MACs, 431K params.
PAPER = [
    {"method": "SSL (Wen 2016)", "filters": "3-15-175", "macs": 162e3, "params": 45e3, "speedup": 3.62, "drop": 0.05},
    {"method": "SSL (Wen 2016)", "filters": "2-11-134", "macs": 91e3, "params": 26e3, "speedup": 4.40, "drop": 0.20},
    {"method": "Taylor (Molchanov 2017)", "filters": "2-7-99", "macs": 65e3, "params": 13e3, "speedup": 4.80,
     "drop": 0.20},
    {"method": "SSR-L2,1", "filters": "3-11-108", "macs": 118e3, "params": 21e3, "speedup": 4.00, "drop": 0.05},
    {"method": "SSR-L2,1", "filters": "2-8-77", "macs": 67e3, "params": 11e3, "speedup": 5.50, "drop": 0.18},
]
DENSE_MACS, DENSE_PARAMS = 2_293_000, 431_080


LAYERS = {"model.conv1": 20, "model.conv2": 50, "model.fc1": 500}  # the prunable layers and their widths


def structure_of(spec: str) -> dict[str, int] | None:
    """The per-layer counts of a spec ``<method>@<conv1>-<conv2>-<fc1>`` (``l1@1-16-65``: the method
    prunes to that structure, given by hand), or ``None`` for ``<method>@<allocation>``."""
    counts = given_structure(spec)
    return dict(zip(LAYERS, counts)) if counts is not None and len(counts) == len(LAYERS) else None


def check_lenet_spec(spec: str) -> str:
    """An argparse type: a method spec (:func:`benchmarks.specs.check_spec`), or a method with a
    LeNet-5 structure in place of the allocation (:func:`structure_of`)."""
    keep = structure_of(spec)
    if keep is None:
        return check_spec(spec)
    if parse_spec(check_spec(parse_spec(spec)[0]))[0] == "none":
        raise argparse.ArgumentTypeError(f"{spec!r}: none prunes nothing; give a method with the structure")
    bad = [f"{name} {k}" for (name, k) in keep.items() if not 1 <= k <= LAYERS[name]]
    if bad:
        raise argparse.ArgumentTypeError(f"{spec!r}: a LeNet-5 structure keeps 1 to "
                                         f"{'-'.join(map(str, LAYERS.values()))} filters; got {', '.join(bad)}")
    return spec


def overrides(dataset: str, method: str, seed: int, args) -> list[str]:
    data, macs = DATASETS[dataset]
    oneshot = is_oneshot(method)
    sparsify = 0 if oneshot else args.sparsify
    finetune = args.finetune + (args.sparsify if oneshot else 0)
    keep = structure_of(method)
    if keep is not None:  # the structure given: each layer's rate keeps exactly its count
        rates = ",".join(f"{name}:{round(1 - k / LAYERS[name], 12)!r}" for name, k in keep.items())
        method_part = [f"pruning={parse_spec(method)[0]}", "target=rates", f"target.rates={{{rates}}}"]
        target = []
    else:
        method_part = spec_overrides(method)
        target = [] if parse_spec(method)[0] == "none" else [f"target.macs={macs}"]
    return [f"data={data}", "model=lenet5", *method_part, *target,
            f"seed={seed}", f"dense.epochs={args.dense_epochs}", f"schedule.sparsify_epochs={sparsify}",
            f"schedule.finetune_epochs={finetune}", "schedule.warmup_epochs=0", "verbose=false",
            "trainer.enable_progress_bar=false", "latency.batch_sizes=[]", *extra_overrides(method, args.override)]


def dense_job(dataset: str, seed: int, args, out_dir: str) -> str:
    """Train (or reuse) the dense model of one seed, so that the compression runs share it."""
    cfg = compose_config(overrides(dataset, "none", seed, args))  # the method does not change it
    _, info = train_dense(cfg, build_data(cfg), out_dir)
    return info["cache"]["path"]


def compress_job(dataset: str, method: str, seed: int, args, out_dir: str) -> dict:
    run_overrides = overrides(dataset, method, seed, args)
    start = time.perf_counter()
    record = {"dataset": dataset, "method": method, "seed": seed, "overrides": run_overrides}
    reused, row = run_or_reuse(run_overrides, out_dir, record, compose_config, run)
    return row if reused else keep_run(out_dir, {**row, **record, "seconds": time.perf_counter() - start})


def ort_call(path: Path, threads: int, batch: int = 1):
    """A call of the ONNX Runtime session of the model at ``path`` on ``threads`` threads, with the
    input and output buffers bound once (IO binding), as a deployment calls a model."""
    import numpy as np
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((batch, 1, 28, 28)).astype(np.float32)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name, output = session.get_inputs()[0].name, session.get_outputs()[0].name
    shape = session.run(None, {name: x})[0].shape
    binding = session.io_binding()
    binding.bind_cpu_input(name, x)
    binding.bind_ortvalue_output(output, ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, "cpu"))
    return lambda: session.run_with_iobinding(binding)


def runtime_ms(paths: dict[str, Path], repeats: int) -> dict[int, dict[str, float]]:
    """Batch-1 ONNX Runtime milliseconds of each model, per thread count (1 and all): each model
    called ``repeats`` times back to back (a call of microseconds slows by a quarter when another
    model runs between two of its calls, so they are not interleaved call by call), the models
    alternating in 3 rounds, each round with a new session, the fastest round's median kept: on a
    small shared machine a two-thread session sometimes runs 1.5x slower for its whole life (its
    second thread shares a core the host lends elsewhere)."""
    out = {}
    for threads in sorted({1, os.cpu_count() or 1}):
        best = dict.fromkeys(paths, float("inf"))
        for _ in range(3):
            for k, path in paths.items():
                call = ort_call(path, threads)
                for _ in range(20):
                    call()
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    call()
                    times.append(time.perf_counter() - t)
                best[k] = min(best[k], 1000 * statistics.median(times))
        out[threads] = best
    return out


class _Holder(torch.nn.Module):
    """Holds the network as the LightningModule does (``model.*``), the names the plan uses."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)


def pruned_network(row: dict) -> torch.nn.Module:
    """A fresh LeNet-5 rebuilt to the run's plan (the time does not depend on the weights)."""
    return apply_plan(_Holder(build_model("lenet5")), row["plan"]).model.eval()


def has_plan(row: dict) -> bool:
    """Whether a run has a pruned network to time: it finished and pruned (``none`` prunes nothing,
    its network is the dense one)."""
    return row.get("status") == "ok" and row.get("plan") is not None


def measure_speed(row: dict, repeats: int, tmp: Path) -> dict:
    """Dense vs pruned latency of one run's structure."""
    dense = build_model("lenet5").eval()
    pruned = pruned_network(row)
    eager = compare_latency(dense, pruned, [1, 1, 28, 28], (1, 256), repeats)
    x = torch.randn(1, 1, 28, 28)
    paths = {k: export_onnx(m, x, tmp / f"{row['dataset']}-{row['method']}-{row['seed']}-{k}.onnx")
             for k, m in (("dense", dense), ("pruned", pruned))}
    by_threads = runtime_ms(paths, 10 * repeats)
    best = {k: min(ms[k] for ms in by_threads.values()) for k in paths}  # each model at its faster count
    return {"eager_ms": {"dense": eager["dense"], "pruned": eager["pruned"]}, "runtime_ms": best,
            "runtime_ms_by_threads": {str(t): ms for t, ms in by_threads.items()},
            "speedup_b1_eager": eager["speedup"]["batch_1"], "speedup_b256": eager["speedup"]["batch_256"],
            "speedup_b1_runtime": best["dense"] / best["pruned"],
            "speedup_b1_runtime_1thread": by_threads[1]["dense"] / by_threads[1]["pruned"]}


def structure(row: dict) -> str:
    return "-".join(str(layer["after"]) for layer in row["layers"][:-1])  # the classifier's outputs stay


def learned_structure(row: dict) -> str | None:
    """The structure the method's own criterion held at the prune (before the engine met the target)."""
    events = row.get("events") or []
    learned = events[0].get("learned") if events else None
    if not learned:
        return None
    names = [layer["name"] for layer in row["layers"][:-1]]
    return "-".join(str(learned.get(n, "?")) for n in names)


def runtime_speedup(runs: list[dict]) -> float | None:
    """The batch-1 ONNX Runtime speed-up of a row, each model at its faster thread count: the dense
    network's fastest time over the row's runs (it is the same network in each, and its two-thread
    time ranged from 65 to 110 us between sessions here) over the median of the pruned ones."""
    timed = [r["speed"]["runtime_ms"] for r in runs if "runtime_ms" in r.get("speed", {})]
    if not timed:
        return None
    return min(t["dense"] for t in timed) / statistics.median(t["pruned"] for t in timed)


def summarize(runs: list[dict], reference: str = REFERENCE) -> list[dict]:
    """One row per (dataset, method): means over the seeds, the failed runs listed, and paired
    comparisons by seed with ``reference`` and with ``none`` (accuracy points, higher: better)."""
    grouped = _grouped(runs)

    def accuracy_by_seed(dataset, method):
        return {r["seed"]: 100 * r["pruned"]["accuracy"] for r in grouped.get((dataset, method), [])
                if r.get("status") == "ok"}
    rows = []
    for (dataset, method), group in grouped.items():
        ok = [r for r in group if r.get("status") == "ok"]
        failed = [{"seed": r["seed"], "error": r.get("error")} for r in group if r.get("status") != "ok"]
        if not ok:
            rows.append({"source": "measured", "dataset": dataset, "method": method, "n_runs": 0,
                         "failed": len(group), "errors": failed})
            continue
        drop_mean, drop_std = mean_std([r["accuracy_drop_points"] for r in ok])

        def mean(key, ok=ok):
            values = [r["speed"][key] for r in ok if key in r.get("speed", {})]
            return statistics.fmean(values) if values else None
        mine = accuracy_by_seed(dataset, method)
        learned = [s for s in (learned_structure(r) for r in ok) if s]
        rows.append({
            "source": "measured", "dataset": dataset, "method": method,
            "filters": collections.Counter(structure(r) for r in ok).most_common(1)[0][0],
            "structures": dict(collections.Counter(structure(r) for r in ok)),
            "learned": collections.Counter(learned).most_common(1)[0][0] if learned else None,
            "allocation": (ok[0].get("config") or {}).get("allocation"),
            "macs_reduction": statistics.fmean(r["macs_reduction"] for r in ok),
            "params_reduction": statistics.fmean(r["params_reduction"] for r in ok),
            "drop_mean": drop_mean, "drop_std": drop_std,
            "dense_accuracy_mean": statistics.fmean(r["dense"]["accuracy"] for r in ok),
            "pruned_accuracy_mean": statistics.fmean(r["pruned"]["accuracy"] for r in ok),
            "n_runs": len(ok), "failed": len(failed), "errors": failed,
            "vs_reference": None if method == reference else {
                "reference": reference, **paired_by_seed(mine, accuracy_by_seed(dataset, reference))},
            "vs_none": None if method == "none" else paired_by_seed(mine, accuracy_by_seed(dataset, "none")),
            "speedup_b1_eager": mean("speedup_b1_eager"), "speedup_b1_runtime": runtime_speedup(ok),
            "speedup_b1_runtime_1thread": mean("speedup_b1_runtime_1thread"),
            "speedup_b256": mean("speedup_b256"),
        })
    return rows


def format_table(rows: list[dict]) -> str:
    """The console table: one line per row, failures and paired comparisons included."""
    header = (f"{'dataset':<13} {'method':<24} {'filters':<10} {'learned':<10} {'MACs':>6} {'drop (pt)':>13} "
              f"{'runs':>4} {'vs reference (pt)':<44} {'b1 ORT':>7} {'b256':>6}")
    lines = [header]
    for row in rows:
        if not row.get("n_runs") and row.get("source") != "paper":
            lines.append(f"{row['dataset']:<13} {row['method']:<24} all {row['failed']} runs failed: "
                         f"{row['errors'][0]['error'] if row.get('errors') else ''}")
            continue

        def x(v):
            return f"{v:.1f}x" if v else "-"
        name = row["method"] + (" (paper)" if row["source"] == "paper" else "")
        versus = interval(row["vs_reference"]) if row.get("vs_reference") else ""
        lines.append(f"{row['dataset']:<13} {name:<24} {row['filters']:<10} {row.get('learned') or '':<10} "
                     f"{row['macs_reduction']:>5.1f}x {pm(row['drop_mean'], row['drop_std'], sign=True):>13} "
                     f"{row['n_runs'] or '':>4} {versus:<44} {x(row.get('speedup_b1_runtime')):>7} "
                     f"{x(row.get('speedup_b256') or row.get('speedup_cpu_paper')):>6}")
        if row.get("failed"):
            lines.append(f"{'':<13} {'':<24} {row['failed']} failed: " + "; ".join(
                f"seed {e['seed']}: {e['error']}" for e in row["errors"]))
    return "\n".join(lines)


def _grouped(runs):
    out: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        out.setdefault((r["dataset"], r["method"]), []).append(r)
    return out


def paper_rows(datasets=("mnist",)) -> list[dict]:
    """The paper's rows for those of ``datasets`` it reports (MNIST only)."""
    return [{"source": "paper", "dataset": "mnist", "method": p["method"], "filters": p["filters"],
             "macs_reduction": DENSE_MACS / p["macs"], "params_reduction": DENSE_PARAMS / p["params"],
             "drop_mean": p["drop"], "drop_std": None, "n_runs": None, "speedup_cpu_paper": p["speedup"]}
            for p in PAPER if "mnist" in datasets]


def train_all(args, log) -> list[dict]:
    """Train every (dataset, seed) dense model and every compression run, then time each run."""
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    log(f"runs in {work} (a finished run found there with the same settings is not trained again)")
    with tempfile.TemporaryDirectory() as tmp, \
            job_pool(args.jobs, 1 if args.jobs > 1 else torch.get_num_threads()) as pool:
        tmp = Path(tmp)
        dense = [pool.submit(dense_job, d, s, args, str(tmp / f"dense-{d}-{s}")) for d in args.datasets
                 for s in args.seeds]
        for future in dense:
            log(f"dense model ready: {Path(future.result()).name}")
        futures = [pool.submit(compress_job, d, m, s, args, str(work / f"{d}-{m}-{s}"))
                   for d in args.datasets for s in args.seeds for m in args.methods_by_dataset[d]]
        runs = []
        for future in futures:
            r = future.result()
            runs.append(r)
            log(f"{r['dataset']:<13} {r['method']:<8} seed {r['seed']}: " + ("(finished earlier) " if r.pop(
                "reused", False) else "") + (
                f"{structure(r)}, {r['macs_reduction']:.1f}x MACs, drop {r['accuracy_drop_points']:+.2f} pt"
                if r.get("status") == "ok" else f"FAILED {r.get('error')}"))
        pool.shutdown()
        log("measuring speed (alone, all threads)")
        torch.set_num_threads(os.cpu_count() or 1)
        for r in runs:
            if has_plan(r):
                r["speed"] = measure_speed(r, args.repeats, tmp)
    return runs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=METHODS, type=check_lenet_spec,
                        help="<method>@<allocation> (a bare name: the method's default allocation), "
                             "<method>@<conv1>-<conv2>-<fc1> (that structure, e.g. l1@1-16-65), or none")
    parser.add_argument("--methods-for", nargs="+", action="append", default=[], metavar="DATASET SPEC",
                        help="the methods of one dataset instead of --methods: a dataset, then its specs")
    parser.add_argument("--reference", default=REFERENCE, type=check_lenet_spec,
                        help="the method every other is compared with, seed by seed (one of the methods run)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(LENET_SEEDS))
    parser.add_argument("--dense-epochs", type=counted(1), default=20)
    parser.add_argument("--sparsify", type=counted(0), default=6, help="epochs with the method's term")
    parser.add_argument("--finetune", type=counted(0), default=14, help="epochs after the prune")
    parser.add_argument("--jobs", type=counted(1), default=2, help="runs at a time (one thread each)")
    parser.add_argument("--repeats", type=counted(1), default=60, help="timed forward passes per measurement")
    parser.add_argument("--override", nargs="*", default=[],
                        help="more config overrides for every run (pruning.<key>: for the methods whose "
                             "config has the key)")
    parser.add_argument("--work-dir", type=Path, default=WORK_ROOT / "lenet",
                        help="where each run's outputs stay; an interrupted benchmark run again with the same "
                             "options goes on from the runs that finished there")
    parser.add_argument("--out", type=Path, default=RESULTS / "lenet.json")
    parser.add_argument("--force", action="store_true", help="replace --out even if it holds more runs")
    parser.add_argument("--remeasure", type=Path, default=None, metavar="JSON",
                        help="train nothing: time the runs of this earlier output again (from their plans) "
                             "and write them with the new speed figures to --out")
    args = parser.parse_args(argv)
    if args.remeasure is not None and not args.remeasure.is_file():
        parser.error(f"--remeasure: no such file {args.remeasure}")
    for entry in args.methods_for:
        if entry[0] not in args.datasets or len(entry) < 2:
            parser.error(f"--methods-for {' '.join(entry)}: give one of {args.datasets}, then its method specs")
        for spec in entry[1:]:
            check_lenet_spec(spec)
    args.methods_by_dataset = {d: args.methods for d in args.datasets} | {e[0]: e[1:] for e in args.methods_for}
    without = [d for d, ms in args.methods_by_dataset.items() if args.reference not in ms]
    if args.remeasure is None and without:
        parser.error(f"--reference {args.reference}: not among the methods run on {', '.join(without)}, so nothing "
                     "there would be compared with it; add it to those methods, or give --reference one they run")
    check_seeds(parser, args.seeds, args.override)
    check_once(parser, "--datasets", args.datasets)
    check_once(parser, "--methods-for", [e[0] for e in args.methods_for])
    for dataset, methods in args.methods_by_dataset.items():
        check_once(parser, f"--methods of {dataset}", methods)
    try:
        check_pruning_overrides(args.override, [m for ms in args.methods_by_dataset.values() for m in ms])
    except ValueError as err:
        parser.error(str(err))
    if args.remeasure is None:  # (each data set and method once, on the first seed: the others differ by it only)
        check_runs(parser, [overrides(d, m, args.seeds[0], args) for d, ms in args.methods_by_dataset.items() for m in ms])
    if args.remeasure is None:  # (nor runs of fewer epochs, nor timed fewer times)
        refuse_smaller(args.out, len(args.seeds) * sum(len(m) for m in args.methods_by_dataset.values()), args.force,
                       {k: getattr(args, k) for k in ("dense_epochs", "sparsify", "finetune", "repeats", "override",
                                                      "datasets", "methods", "seeds")},
                       same=("override",), covers=("datasets", "methods", "seeds"))
    else:  # the remeasured runs, timed as often, replace no more runs nor runs timed more often
        remeasured = json.loads(args.remeasure.read_text())
        earlier = remeasured.get("settings") or {}  # (the runs are the remeasured file's: held to the out file's)
        refuse_smaller(args.out, len(remeasured.get("runs") or []), args.force,
                       {"repeats": args.repeats, **{k: earlier[k] for k in ("dense_epochs", "sparsify", "finetune",
                                                                           "override", "datasets", "methods")
                                                    if k in earlier}},
                       same=("override",), covers=("datasets", "methods"))
    quiet_lightning()
    start = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - start:6.0f} s] {msg}", flush=True)
    allocator = steady_allocator()  # before any model is built: the timings repeat
    if args.remeasure is not None:
        previous = remeasured
        runs, command = previous["runs"], previous.get("command")  # (not recorded: said so, never inferred)
        log(f"measuring speed again for the {len(runs)} runs of {args.remeasure} (their plans, fresh weights)")
        torch.set_num_threads(os.cpu_count() or 1)
        with tempfile.TemporaryDirectory() as tmp:
            for r in runs:
                if has_plan(r):
                    r["speed"] = measure_speed(r, args.repeats, Path(tmp))
        # (the file's own settings, but what this command does: a trained file records remeasure: null, which
        # wrote over this one's, and the file lost its speed_command and its training's seconds: probe)
        args.__dict__.update({k: v for k, v in previous["settings"].items()
                              if k not in ("out", "repeats", "remeasure", "force")})
    else:
        runs, command = train_all(args, log), command_line("lenet", argv)
    rows = summarize(runs, args.reference)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["macs_kept"] = {d: DATASETS[d][1] for d in args.datasets}
    out = {"benchmark": "lenet", "command": command, "machine": machine_info(), "allocator": allocator,
           "settings": settings,
           "rows": rows + paper_rows(args.datasets),
           "runs": runs, "seconds": time.perf_counter() - start}
    if args.remeasure is not None:  # the runs' accuracy is the earlier command's; the speed is this one's
        out["speed_command"] = command_line("lenet", argv)
        out["seconds"] = previous["seconds"]
    write_json(args.out, relative_to=REPO, obj=out)
    print(format_table(rows + paper_rows(args.datasets)))
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s)")
    return out


if __name__ == "__main__":
    script_main(main, keeps_runs=True)
