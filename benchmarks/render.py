"""Render ``benchmarks/RESULTS.md`` from the JSON files under ``benchmarks/results/``, and write
README.md's two generated parts: the headline results (between its ``<!-- results:start -->``
and ``<!-- results:end -->`` lines) and the method table from the registry (between
``<!-- methods:start -->`` and ``<!-- methods:end -->``).

    python benchmarks/render.py

Every figure in RESULTS.md is read from a results file, next to the command that wrote it and
the machine it ran on (CPU model, cores, torch threads and version, or the GPU). A results file
with no renderer here is listed with its keys, so nothing is silently left out.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
METHODS_START, METHODS_END = "<!-- methods:start -->", "<!-- methods:end -->"

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(HERE.parent))
from benchmarks.specs import LENET_SEEDS, given_structure
from benchmarks.stats import interval, paired_by_seed, pm


def machine_line(data) -> str:
    m = data.get("machine") if isinstance(data, dict) else None
    if not m:
        return "machine: not recorded in this file"
    parts = [m.get("gpu") or m.get("cpu") or m.get("platform", "?")]
    cores = m.get("cores") or m.get("cpu_count")
    if cores:
        parts.append(f"{cores} cores")
    threads = m.get("torch_threads") or m.get("cpu_threads")
    if threads:
        parts.append(f"{threads} torch threads")
    if m.get("torch"):
        parts.append(f"torch {m['torch']}")
    return "machine: " + ", ".join(str(p) for p in parts)


def _f(v, digits=2, suffix=""):
    return "-" if v is None else f"{v:.{digits}f}{suffix}"


def table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def failures(rows, label) -> list[str]:
    """The failed runs of a file, listed (never dropped)."""
    out = []
    for r in rows:
        for e in r.get("errors") or []:
            out.append(f"- {label(r)}, seed {e['seed']}: {e['error']}")
    return ["", "Failed runs:", ""] + out if out else []


def render_lenet(d):
    rows = []
    reference = (d.get("settings") or {}).get("reference")  # (a file without comparisons has no reference row)
    measured = [r for r in d["rows"] if r.get("source") != "paper"]
    datasets = {r["dataset"] for r in measured}
    for r in d["rows"]:
        if r.get("source") == "paper":
            if r["dataset"] not in datasets:  # e.g. the paper's MNIST rows in a Fashion-MNIST table (older files)
                continue
            rows.append([r["dataset"], r["method"] + " (paper)", r["filters"], "-", _f(r["macs_reduction"], 1, "x"),
                         f"{r['drop_mean']:+.2f}", "-", "-", "-", _f(r.get("speedup_cpu_paper"), 1, "x")])
        elif r.get("n_runs"):
            versus = r.get("vs_reference")
            rows.append([r["dataset"], r["method"], r["filters"], r.get("learned") or "-",
                         _f(r["macs_reduction"], 1, "x"), pm(r["drop_mean"], r["drop_std"], sign=True), r["n_runs"],
                         _versus(versus, r["n_runs"]) if versus else "(reference)" if r["method"] == reference else "-",
                         _f(r.get("speedup_b1_runtime"), 1, "x"), _f(r.get("speedup_b256"), 1, "x")])
    # one figure per dataset, over the most seeds: a row with a failed run averages fewer dense models
    dense = sorted({r["dataset"]: 100 * r["dense_accuracy_mean"]
                    for r in sorted((r for r in measured if r.get("n_runs")), key=lambda r: r["n_runs"])}.items())
    return table(["dataset", "method", "filters", "learned", "MACs", "drop (pt)", "runs",
                  "accuracy vs reference (pt, 95% CI)", "b1 ONNX RT", "b256"], rows) + [
        "", "Dense accuracy (mean over seeds): " + ", ".join(f"{ds} {acc:.2f}%" for ds, acc in dense) + ".",
        ("`filters`: the structure most runs kept; `learned`: what the method's own criterion held at the prune "
         "(before the engine met the target). `drop`: dense minus pruned test accuracy, mean ± std over seeds; "
         "`none` is the dense model trained for the same extra epochs. The comparison is paired by seed: the mean "
         "difference of accuracy with its 95% interval. The paper's speed-up column is its CPU figure (batch not "
         "stated); ours are measured dense vs pruned in one process, b1 ONNX RT with each model at its faster "
         "thread count.")] + failures(measured, lambda r: f"{r['dataset']} {r['method']}")


def _versus(p, runs) -> str:
    """A paired comparison (:func:`interval`) of a row of ``runs`` runs, with how many seeds it pairs
    where that is fewer (a failed run of the reference: "runs 5" beside an interval of 4 seeds)."""
    paired = len(p.get("seeds") or ()) if isinstance(p.get("seeds"), (list, tuple)) else None
    said = interval(p)
    return f"{said} ({paired} paired seeds)" if paired is not None and isinstance(runs, int) and paired < runs else said


def render_methods(d):
    summary = d["summary"]
    if isinstance(summary, dict):  # a file written before the paired comparisons
        summary = [{"method": m, "macs_target": None, **s} for m, s in summary.items()]
    rows = []
    for s in sorted(summary, key=lambda s: (-(s.get("macs_target") or 1.0), -(s.get("accuracy_mean") or 0))):
        if not s.get("runs"):
            continue
        versus, none = s.get("vs_reference"), s.get("vs_none")
        rows.append([_f(s.get("macs_target"), 2) if s.get("macs_target") else "-", s["method"], s["runs"],
                     pm(s.get("accuracy_mean"), s.get("accuracy_std")),
                     _versus(none, s["runs"]) if none else "-", _versus(versus, s["runs"]) if versus else "-",
                     _f(s.get("macs_reduction_mean"), 2, "x"), s.get("filters", "-")])
    settings = d.get("settings", {})
    dense = [x for x in (s.get("dense_accuracy_mean") for s in summary) if x is not None]
    head = [f"{settings.get('model')} on {settings.get('data')} ({settings.get('train_size') or 'all'} training "
            f"images), seeds {settings.get('seeds')}; dense {settings.get('dense_epochs')} epochs, "
            f"{statistics.fmean(dense):.2f}% (mean); every method {settings.get('sparsify')} + "
            f"{settings.get('finetune')} epochs (with its term, then after the prune; one-shot methods prune at "
            "the start and fine-tune for both)." if dense else "", ""]
    return head + table(["MACs kept", "method", "runs", "accuracy (%)", "vs none (pt, 95% CI)",
                         "vs reference (pt, 95% CI)", "MACs red.", "filters"], rows) + [
        "", ("Comparisons are paired by seed: the mean difference of test accuracy with its 95% interval, at the same "
        "target; `none` is the dense model trained for the same epochs, unpruned.")] + failures(
        summary, lambda s: f"{s['method']} at {s.get('macs_target')}")


def render_targets(d):
    rows = []
    by, refused = {}, {}
    tolerance = d.get("tolerance", {})
    for r in d["rows"]:
        if r.get("achieved") is not None:
            by.setdefault((r["kind"], r["allocation"]), []).append(abs(r["error"]))
        else:
            refused.setdefault(r["kind"], []).append(r)
    for (kind, allocation), errs in sorted(by.items()):
        limit = tolerance.get(kind)
        within = "-" if limit is None else f"{sum(e <= limit for e in errs)} of {len(errs)}"
        rows.append([kind, allocation, len(errs), within, f"{100 * max(errs):.2f}%",
                     f"{100 * statistics.fmean(errs):.2f}%"])
    out = table(["kind", "allocation", "rows", "within tolerance", "worst error", "mean error"], rows)
    if tolerance:
        out += ["", "Tolerance: " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(tolerance.items()))
                + ". Refused (a target below what the floors allow, with an error that says so): "
                + (", ".join(f"{len(v)} {k}" for k, v in sorted(refused.items())) or "none") + "."]
    lat = [r for r in d["rows"] if r["kind"] == "latency"]
    if lat:
        out += ["", f"Latency rows (batch {d.get('latency_batch')}, fractions of the dense model's measured time):", ""]
        out += table(["model", "allocation", "requested", "achieved", "error", "predicted ms", "measured ms",
                      "dense ms then / now", "MACs kept", "allocation s"],
                     [[r["model"], r["allocation"], _f(r["requested"], 2),
                       _f(r.get("achieved"), 3) if r.get("achieved") is not None else "refused",
                       _f(100 * r["error"], 1, "%") if r.get("error") is not None else "-",
                       _f(r.get("predicted_ms"), 2), _f(r.get("measured_ms"), 2),
                       f"{_f(r.get('table_dense_ms'), 2)} / {_f(r.get('dense_ms'), 2)}", _f(r.get("macs"), 3),
                       _f(r.get("allocation_s"), 1)] for r in lat])
        out += ["", ("Predicted ms come from the allocation's timings, measured ms from the check after the prune; "
                     "the dense model's time at each (then / now) shows how far the machine's own speed moved "
                     "between them. `achieved` divides the measured time by the dense time taken with it.")]
    return out


def render_speedup(d):
    rows = []
    for r in d.get("latency", []):
        best = r["layouts"][r["best_layout"]]
        extra = ""
        if "latency_target_ms" in r:
            extra = f"target {r['latency_target_ms']:.1f} ms, measured {r['latency_measured_ms']:.1f} ms"
            if "latency_achieved_fraction" in r:  # measured in turn with the dense model, after the prune
                extra += (f"; {r['latency_achieved_fraction']:.3f} of dense, asked {r['latency_fraction']:.3f} "
                          f"({r['latency_achieved_fraction'] / r['latency_fraction'] - 1:+.1%})")
        target = re.sub(r"\d+\.\d{3,}", lambda m: f"{float(m.group()):.1f}", str(r["rates"]))  # ms, rounded
        rows.append([r["model"], f"`{target}`", r.get("round_to", 1), _f(r["flops_reduction"], 2, "x"),
                     r["best_layout"], _f(best["speedup"]["batch_64"], 2, "x"),
                     _f(best["speedup_over_flops_reduction"]["batch_64"], 2), extra])
    return table(["model", "target", "round_to", "MACs red.", "best layout", "speed-up b64", "÷ MACs red.", "latency"],
                 rows)


def render_recipes(d):
    if "summary" not in d:  # a file written before the runs over seeds
        return ["(this file predates the summaries over seeds; run its command again)"]

    def stat(entry, key, digits=2):
        s = entry.get(key)
        return pm(s["mean"], s["std"], digits) if s else "-"
    rows = []
    for e in d["summary"]:
        versus, control = e.get("dann_minus_source_only"), e.get("dann_minus_no_adaptation")
        rows.append([e["experiment"], e["n_runs"], stat(e, "source_only_accuracy"), stat(e, "dense_accuracy"),
                     interval(versus) if versus else "-", stat(e, "no_adaptation_accuracy"),
                     interval(control) if control else "-", stat(e, "gap_closed"), stat(e, "pruned_accuracy"),
                     interval(e["compressed_minus_dense"]), stat(e, "ceiling_accuracy"), stat(e, "domain_accuracy", 1),
                     stat(e, "macs_reduction", 1),
                     ", ".join(f"{a}={b}" for a, b in e["identical_seeds"]) or "none",
                     len(e["failed"])])
    lines = table(["experiment", "seeds", "source only %", "dense %", "dense - source only", "no adaptation %",
                   "dense - no adaptation", "gap closed",
                   "compressed %", "compressed - dense", "ceiling %", "domain acc. %", "MACs red.", "identical seeds",
                   "failed"], rows)
    control = any(str(o).replace(" ", "") == "adaptation.domain_weight=0"
                  for o in (d.get("settings") or {}).get("override") or [])
    dense = ("source-only training for DANN's epochs on both domains' batches (the domain term off: "
             "`adaptation.domain_weight=0`), the equal-budget control of DANN, and *compressed* the same compressed"
             if control else "DANN dense and *compressed* DANN compressed")
    lines += ["", ("Accuracies on the target domain's test split, mean ± std over seeds; its labels are used for "
              f"nothing else (the ceiling trains on them, separately). For adaptation, *dense* is {dense}; for "
              "transfer, *dense* is the dense fine-tune with the same epochs as the "
              "compressed one and *source only* is blank. *gap closed*: (dense - source only) / (ceiling - "
              "source only). *no adaptation*: the equal-budget control of DANN dense, the same run with the domain "
              "term off (`adaptation.domain_weight=0`): source-only training for DANN's epochs on both domains' "
              "batches. *domain acc.*: after DANN dense, how often its domain classifier is right on the "
              "source's test images and as many of the target's (chance is 50%, which a classifier that always "
              "answers one domain also scores). Differences are paired by seed with their 95% interval."), ""]
    runs = [[r["experiment"] + (" (no adaptation)" if r.get("variant") else ""), r["seed"],
             _f(r.get("source_only_accuracy"), 2), _f(r["dense_accuracy"], 2),
             _f(r["pruned_accuracy"], 2), _f(r.get("ceiling_accuracy"), 2), _f(r.get("domain_accuracy"), 1),
             _f(r.get("pruned_domain_accuracy"), 1), _f(r["macs_reduction"], 2, "x"),
             _f(r["seconds"] / 60 if r.get("seconds") else None, 1, " min")] for r in d["rows"] if r["status"] == "ok"]
    failed = [f"- {r['experiment']}{' (no adaptation)' if r.get('variant') else ''}, seed {r['seed']}: "
              f"{(r.get('error') or 'no error recorded').splitlines()[0]}" for r in d["rows"] if r["status"] != "ok"]
    return lines + table(["experiment", "seed", "source only %", "dense %", "compressed %", "ceiling %",
                          "domain acc. dense %", "domain acc. compressed %", "MACs red.", "wall time"], runs) + (
        ["", "Failed runs:", "", *failed] if failed else [])


def render_solver_speed(d):
    if "summary" not in d:  # a file written before the comparisons over seeds
        return ["(this file predates the comparisons over seeds; run its command again)"]
    rows = []
    for variant, ranks in d["summary"].items():
        for e in ranks:
            rows.append([variant, e["levels"], pm(e["ratio_first"]["mean"], e["ratio_first"]["std"]),
                         pm(e["ratio_stay"]["mean"], e["ratio_stay"]["std"]),
                         interval(e["ssl_minus_aulm_epochs_stay"]), e["censored_stay"]])
    return table(["AULM variant", "filters level (per seed)", "SSL / AULM epochs (first reach)", "(stay)",
                  "SSL minus AULM epochs to stay (95% CI)", "censored"], rows) + [
        "", ("Levels are ones both solvers reach: the larger of their sparsest counts K, and a quarter and a half of the way from K back up to the dense count. "
        "`censored`: seeds where a solver stayed only from the last update.")]


def render_overhead(d):
    rows = [[r["model"], r["device"], r.get("precision", "32-true"), r["batch_size"], _f(r["ratio"], 3),
             _f(r.get("wstep_ms"), 3), _f(r.get("update_ms_per_step"), 3), _f(r.get("setup_s"), 2),
             _f(r.get("dry_run_s"), 2), _f(r.get("rebuild_s"), 2), _f(r.get("latency_calibration_s"), 1)]
            for r in d["rows"] if "ratio" in r]
    return table(["model", "device", "precision", "batch", "step time with / without the callback",
                  "W-step ms", "V/U ms per step", "set-up s", "dry run s", "rebuild s", "latency calibration s"],
                 rows) + ["", ("The ratio is measured in one fit, steps with and without the callback's per-step work "
                               "interleaved one by one, the V/U update amortized over its interval. The one-off "
                               "costs: the set-up on the first batch (trace, allocation, dry run), the dry run "
                               "alone, one rebuild (cut, numerical check, optimizer remap), and the allocation of "
                               "a latency target (layer table and calibration).")]


def render_gpu(d):
    parts = d.get("parts", {})
    out = [f"Device: {d.get('machine', {}).get('gpu') or d.get('device')} (CUDA {d.get('cuda')})"
           + (" (smoke run on the CPU)" if d.get("smoke") else "") + "."]
    for name in ("tests", "job"):
        p = parts.get(name)
        if p:
            out.append(f"- {name}: " + ("; ".join(f"{k} {v}" for k, v in p.items() if k in (
                "summary", "ok", "macs_reduction", "accuracy_dense", "accuracy_pruned", "skipped", "error"))))
    over = [r for r in parts.get("overhead", []) if isinstance(r, dict) and "ratio" in r]
    if over:
        out += ["", *render_overhead({"rows": over})[:-2]]
    speed = [r for r in parts.get("speedup", []) if isinstance(r, dict)]
    if speed:
        out += ["", *table(["model", "round_to", "batch", "MACs red.", "fp32 speed-up", "÷ MACs red.",
                            "bf16 speed-up", "÷ MACs red."],
                           [[r["model"], r["round_to"], r.get("batch", "-"), _f(r.get("macs_reduction"), 2, "x"),
                             _f((r.get("fp32") or {}).get("speedup"), 2, "x"),
                             _f((r.get("fp32") or {}).get("speedup_over_macs_reduction"), 2),
                             _f((r.get("bf16") or {}).get("speedup"), 2, "x"),
                             _f((r.get("bf16") or {}).get("speedup_over_macs_reduction"), 2)]
                            if "error" not in r else [r["model"], r["round_to"], "failed", r["error"], "", "", "", ""]
                            for r in speed])]
    return out


def render_trajectory(d):
    methods = d.get("methods") or {}
    if not methods:
        return ["(no trajectories in this file)"]
    layers = list(next(iter(methods.values()))["held"])
    ref = d.get("reference") or {}
    rows = []
    for name in layers:
        row = [name, next(iter(methods.values()))["dense"].get(name, "-")]
        for c in methods.values():
            row += [_f(c["held"][name][-1], 1), _f(c["kept"][name], 1)]
        rows.append(row + [_f((ref.get("kept") or {}).get(name), 1)])
    head = ["layer", "dense"]
    for method, c in methods.items():
        head += [f"{method}: held at the last update ({len(c['seeds'])} seeds)", f"{method}: kept at the prune"]
    png = "results/" + (d.get("plot") or f"{Path(d.get('source', 'x')).stem}_trajectory_{d.get('dataset')}.png")
    return table(head + [f"{ref.get('method', 'reference')}: kept"], rows) + [
        "", f"From the runs of `{d.get('source_command')}`. The curves, update by update: ![trajectory]({png})"]


def render_run(d):
    rows = [[part, _f(s / 60, 1, " min")] for part, s in d["parts"].items()]
    rows.append(["**total**", f"**{d['total_s'] / 60:.1f} min**"])
    return table(["part", "wall time"], rows) + (
        ["", f"Failed parts: {', '.join(d['failed'])}."] if d.get("failed") else [])


def render_update_interval(d):
    return [d.get("conclusion", "")]


def render_structure(d):
    d = d["rows"] if isinstance(d, dict) else d
    rows = [[r["model"], f"`{r['rates']}`", _f(r["flops"] / 1e6, 2, "M"), _f(r["params"] / 1e6, 3, "M"),
             _f(100 * r["flops_error"], 2, "%") if r.get("flops_error") is not None else "-"] for r in d]
    return table(["model", "rates", "MACs", "params", "vs published MACs"], rows)


#: the LeNet-5 tables with a headline row: without a teacher, and with the dense model as one
#: (``lenet_distill_s10``: the same with 10 epochs of the method's term instead of 6;
#: ``lenet_distill_s16``: 16 of its 24 epochs with the term, the other runs unchanged;
#: ``lenet_distill_restart``: lenet_distill_s10 with the LR schedule restarted after the prune;
#: ``lenet_distill_restart_seeds5_9``: that again on five seeds it had not run;
#: ``lenet_distill_warmup_seeds5_9``: that with an LR warm-up after the prune;
#: ``lenet_distill_warmup``: the warm-up on the default seeds;
#: ``lenet_distill_warmup_fashion_mnist``: that recipe on Fashion-MNIST)
LENET_TABLES = ("lenet", "lenet_distill", "lenet_distill_fashion_mnist", "lenet_distill_s10", "lenet_distill_s16",
                "lenet_distill_restart", "lenet_distill_restart_seeds5_9", "lenet_distill_warmup",
                "lenet_distill_warmup_seeds5_9", "lenet_distill_warmup_fashion_mnist",
                # the warm-up recipe fine-tuned 24 epochs instead of 14; seeds 0-2 (the run was stopped there)
                "lenet_distill_long_mnist")
def _shown_folder(results: Path) -> str:
    """``results`` as RESULTS.md names it: relative to the repository where it lies inside it
    (``benchmarks/results``), else where it is (the home directory as ``~``): a path that reads
    the files again (not the ``<tmp>`` of the paths the results record)."""
    resolved, home = Path(results).resolve(), Path("~").expanduser().resolve()
    for base, name in ((HERE.parent.resolve(), None), (home, "~")):
        if resolved.is_relative_to(base):
            inside = resolved.relative_to(base).as_posix()
            return inside if name is None else name if inside == "." else f"{name}/{inside}"
    return resolved.as_posix()


RENDERERS = {"run": render_run, "lenet_quick": render_lenet, **dict.fromkeys(LENET_TABLES, render_lenet),
             "methods": render_methods, "methods_quick": render_methods, "solver_speed_quick": render_solver_speed,
             "targets": render_targets, "speedup": render_speedup, "speedup_quick": render_speedup, "recipes": render_recipes,
             "solver_speed": render_solver_speed, "overhead": render_overhead,
             "update_interval": render_update_interval, "structure": render_structure, "gpu": render_gpu,
             "gpu_smoke": render_gpu, "trajectory": render_trajectory}


def render(results: Path = RESULTS) -> str:
    folder = _shown_folder(results)
    lines = ["# Results", "", (f"Generated by `python benchmarks/render.py` from `{folder}/*.json`; do not edit "
             "by hand. Each section names the command that wrote its file and the machine it ran on."), ""]
    for path in sorted(results.glob("*.json"), key=lambda p: (p.stem != "run", p.stem)):  # the whole run first
        name = path.stem
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:  # (one cut-short file stopped the whole render in a traceback: probe)
            lines += [f"## {name}", "", (f"`{folder}/{path.name}` is unreadable ({type(err).__name__}: {err}); "
                      "run its benchmark again, or remove it."), ""]
            continue
        command = data.get("command") if isinstance(data, dict) else None
        made = f"`{command}`" if command else "the command is not recorded in this file"
        lines += [f"## {name}", "", f"{made} → `{folder}/{path.name}`; " + machine_line(data), ""]
        if isinstance(data, dict) and data.get("speed_command"):
            lines += [f"Speed figures measured again, on the same structures, by `{data['speed_command']}`.", ""]
        # by the file's name, else by the benchmark that wrote it (methods_update5.json: "methods")
        renderer = RENDERERS.get(name) or (RENDERERS.get(data.get("benchmark")) if isinstance(data, dict) else None)
        if renderer is None:
            keys = list(data) if isinstance(data, dict) else f"a list of {len(data)} rows"
            lines += [f"(no renderer for this file; its keys: {keys})", ""]
            continue
        lines += renderer(data) + [""]
    return "\n".join(lines)


def _load(results: Path, name: str):
    path = results / f"{name}.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except ValueError:
        return None


def _section(name: str) -> str:
    return f"[{name}](benchmarks/RESULTS.md#{name})"


def _lenet_headline(d, name: str = "lenet") -> list[list[str]]:
    """The lowest mean drop per dataset of a LeNet-5 table (``name``: its file), named by what the
    file recorded it ran with: a teacher (``module.distill``), the epoch budget (the method's
    term + fine-tuning), a restarted LR schedule (``schedule.restart_lr``), an LR warm-up after the
    prune (``schedule.lr_warmup_steps``) and seeds other than
    the default ones; rows of a structure given by hand (``l1@1-16-65``) are left out."""
    settings = d.get("settings") or {}
    given = dict(o.split("=", 1) for o in settings.get("override") or [] if "=" in o)  # what the file ran with
    what = "LeNet-5 on {}" + (", distilled from the dense model" if float(given.get("module.distill", 0)) > 0 else "")
    if "sparsify" in settings and "finetune" in settings:  # the epoch budget, which tables may differ in
        what += f", {settings['sparsify']} + {settings['finetune']} epochs"
    if given.get("schedule.restart_lr", "").lower() == "true":
        what += ", the LR schedule restarted after the prune"
    if int(given.get("schedule.lr_warmup_steps", 0)) > 0:
        what += f", {given['schedule.lr_warmup_steps']} LR warm-up steps after it"
    seeds = settings.get("seeds")
    if seeds and seeds != list(LENET_SEEDS):  # a replication on other seeds reads apart from the first run
        contiguous = sorted(seeds) == list(range(min(seeds), max(seeds) + 1))
        what += f", seeds {min(seeds)}-{max(seeds)}" if contiguous and len(seeds) > 1 else \
            f", seeds {', '.join(map(str, seeds))}"
    rows = []
    measured = [r for r in d.get("rows", []) if r.get("source") != "paper" and r.get("n_runs")]
    for dataset in dict.fromkeys(r["dataset"] for r in measured):
        # a structure given by hand (l1@1-16-65) is a control, not a method's result
        mine = [r for r in measured if r["dataset"] == dataset and r["method"] != "none"
                and given_structure(r["method"]) is None]
        if not mine:
            continue
        best = min(mine, key=lambda r: r["drop_mean"])
        versus = best.get("vs_reference")
        text = (f"{best['method']}: {best['macs_reduction']:.1f}x fewer MACs, drop "
                f"{pm(best['drop_mean'], best['drop_std'], sign=True)} pt over {best['n_runs']} seeds"
                + (f" ({best['failed']} failed, listed in the table)" if best.get("failed") else "") + " (dense "
                f"{100 * best['dense_accuracy_mean']:.2f}%), structure {best['filters']}")
        if versus:
            text += f"; vs {versus.get('reference', 'the reference')}: {interval(versus)}"
        rows.append([what.format(dataset) + ", lowest mean drop", text, _section(name)])
    return rows


def _methods_headline(d) -> list[list[str]]:
    summary = d.get("summary")
    if not isinstance(summary, list):
        return []
    rows = []
    reference = d.get("settings", {}).get("reference", "the reference")
    for target in sorted({s.get("macs_target") for s in summary if s.get("macs_target")}, reverse=True):
        here = [s for s in summary if s.get("macs_target") == target and s.get("vs_reference")]
        above = [s["method"] for s in here if s["vs_reference"].get("verdict") == "higher"]
        below = [s["method"] for s in here if s["vs_reference"].get("verdict") == "lower"]
        seeds = max((s.get("runs") or 0 for s in here), default=0)
        rows.append([f"{d.get('settings', {}).get('model')}, every method at {target:g} of the MACs ({seeds} seeds)",
                     (f"above {reference} (95% CI excludes 0): {', '.join(above) or 'none'}; below: "
                     f"{', '.join(below) or 'none'}; the other {len(here) - len(above) - len(below)} not "
                     "distinguishable"), _section("methods")])
    return rows


#: the equal-budget control of the adaptation experiments: the same runs without the domain term
#: (``recipes.py --override adaptation.domain_weight=0``), whose "dense" is source-only training
#: for DANN's epochs on both domains' batches
RECIPES_CONTROL = "recipes_no_adaptation"


def _control_line(d, control, experiment: str) -> str:
    """``; same epochs without adaptation X%, DANN - it: +Z [lo, hi], higher``, paired by seed:
    from the control runs ``d`` holds itself (``recipes.py`` with its default ``--control``), or else
    from the separate ``control`` file ("" without either)."""
    own = next((e for e in d.get("summary") or [] if e.get("experiment") == experiment
                and e.get("dann_minus_no_adaptation")), None)
    if own is not None:
        return (f"; same epochs without adaptation {pm(**own['no_adaptation_accuracy'])}% "
                f"({len(own['no_adaptation_seeds'])} seeds), DANN dense - it: {interval(own['dann_minus_no_adaptation'])}")
    if not isinstance(control, dict):
        return ""

    def by_seed(data):
        return {r["seed"]: r["dense_accuracy"] for r in data.get("rows", [])
                if r.get("experiment") == experiment and r.get("status") == "ok" and r.get("dense_accuracy") is not None}
    mine = by_seed(control)
    if not mine:
        return ""
    values = list(mine.values())
    spread = pm(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)
    return (f"; same epochs without adaptation {spread}% ({len(values)} seeds), DANN dense - it: "
            f"{interval(paired_by_seed(by_seed(d), mine))}")


def _recipes_headline(d, control=None) -> list[list[str]]:
    rows = []
    for e in d.get("summary") or []:
        def stat(key, e=e):
            s = e.get(key)
            return pm(s["mean"], s["std"]) if s else "-"
        red = (e.get("macs_reduction") or {}).get("mean")
        red = "" if red is None else f" {red:.1f}x"
        if e.get("source_only_accuracy"):
            gap = e.get("gap_closed")
            text = (f"source only {stat('source_only_accuracy')}%; DANN dense {stat('dense_accuracy')}%"
                    + (f" (closes {100 * gap['mean']:.0f}% of the gap)" if gap else "")
                    + f"; compressed{red}: {stat('pruned_accuracy')}%"
                    + (f"; trained on target {stat('ceiling_accuracy')}%" if e.get("ceiling_accuracy") else "")
                    + _control_line(d, control, e["experiment"]))
        else:
            text = (f"dense fine-tune {stat('dense_accuracy')}%; compressed{red}: {stat('pruned_accuracy')}% "
                    f"(same epochs); compressed - dense {interval(e['compressed_minus_dense'])}")
        rows.append([f"{e['experiment']} ({e['n_runs']} seeds)", text, _section("recipes")])
    return rows


def _speed_headline(overhead, speedup, gpu) -> list[list[str]]:
    rows = []
    if overhead:
        over = [r for r in overhead.get("rows", []) if "ratio" in r]
        if over:
            rows.append(["step time with the callback ÷ without (sparsify phase)",
                         ", ".join(f"{r['model']} {r['device']} b{r['batch_size']}: {r['ratio']:.3f}" for r in over),
                         _section("overhead")])
    if speedup:
        ratios = [r["layouts"][r["best_layout"]]["speedup_over_flops_reduction"]["batch_64"]
                  for r in speedup.get("latency", []) if "best_layout" in r]
        if ratios:
            rows.append(["CPU speed-up ÷ MACs reduction, batch 64, best layout",
                         f"{min(ratios):.2f} to {max(ratios):.2f} over {len(ratios)} pruned models",
                         _section("speedup")])
    if gpu and not gpu.get("smoke"):
        best = [r.get("fp32", {}).get("speedup_over_macs_reduction") for r in gpu.get("parts", {}).get("speedup", [])
                if isinstance(r, dict)]
        best = [b for b in best if b is not None]
        if best:
            rows.append(["GPU speed-up ÷ MACs reduction, batch 1024, fp32, best round_to", f"{max(best):.2f}",
                         _section("gpu")])
    return rows


def headline(results: Path = RESULTS) -> str:
    """The short table of headline results for README, each row from one results file."""
    rows = []
    makers = [(name, functools.partial(_lenet_headline, name=name)) for name in LENET_TABLES]
    makers += [("methods", _methods_headline),
               ("recipes", functools.partial(_recipes_headline, control=_load(results, RECIPES_CONTROL)))]
    for name, make in makers:
        data = _load(results, name)
        if isinstance(data, dict):
            try:
                rows += make(data)
            except (KeyError, TypeError, ValueError) as err:  # an older file: said, not hidden
                rows.append([name, f"(cannot summarize this file: {type(err).__name__} {err})", _section(name)])
    rows += _speed_headline(_load(results, "overhead"), _load(results, "speedup"), _load(results, "gpu"))
    if not rows:
        return "(no results files yet: run `python -m benchmarks`)"
    return "\n".join(table(["what", "result", "section"], rows))


def method_table_markdown() -> str:
    """README's method table, from the registry."""
    from lightning_ssr.methods import method_table

    def mark(flag):
        return "yes" if flag else ""
    rows = [[f"`{m['name']}`", m["summary"].replace("``", "`").replace("|", "\\|"), mark(m["sparsifies"]), mark(m["learns_structure"]),
             mark(m["needs_target"])] for m in method_table()]
    return "\n".join(table(["name", "what", "uses the sparsify phase", "learns the structure", "needs a target"], rows))


def replace_between(text: str, start: str, end: str, body: str, where: str = "README") -> str:
    """``text`` with the lines between its ``start`` and ``end`` markers replaced by ``body``."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{where} needs one {start!r} line followed by one {end!r} line")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return head + start + "\n" + body.strip("\n") + "\n" + end + tail


def update_readme(readme: Path, headline_md: str, methods_md: str | None = None) -> None:
    """Write README's generated parts: the headline results, and the method table (if given)."""
    text = replace_between(readme.read_text(), START, END, headline_md, str(readme))
    if methods_md is not None:
        text = replace_between(text, METHODS_START, METHODS_END, methods_md, str(readme))
    readme.write_text(text)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md")
    parser.add_argument("--readme", type=Path, default=None,
                        help="the README whose generated parts are replaced (default: the repository's, where "
                             "--results is the repository's results folder; else none)")
    parser.add_argument("--no-readme", action="store_true", help="write RESULTS.md only")
    args = parser.parse_args(argv)
    # (results from another folder never replace the repository's published ones unless --readme names it)
    ours = args.results.resolve() == RESULTS.resolve()
    readme = None if args.no_readme else args.readme or (README if ours else None)
    if readme is not None and not readme.is_file():
        parser.error(f"--readme {readme}: no such file")
    if not args.results.is_dir():
        parser.error(f"--results {args.results}: no such folder")
    text = render(args.results)
    args.out.write_text(text)
    print(f"wrote {args.out}")
    if readme is not None:
        update_readme(readme, headline(args.results), method_table_markdown())
        print(f"updated the headline results and the method table of {readme}")
    elif not args.no_readme:
        print(f"left README.md as it is (results from {args.results}, not the repository's; --readme names one "
              "to update)")
    return args.out


if __name__ == "__main__":
    main()
