"""The structure over the sparsify phase: per layer, the filters a method that learns the structure
holds at each update (``trajectory`` in its ``result.json``), against what it kept at the prune and
what the reference kept, from a results file that holds whole runs (``lenet.json``,
``methods.json``).

    python benchmarks/trajectory.py                                   # lenet.json, MNIST
    python benchmarks/trajectory.py --results benchmarks/results/lenet.json --dataset fashion_mnist
    python benchmarks/trajectory.py --results benchmarks/results/methods.json --dataset all --macs 0.25

Writes ``<results>_trajectory_<dataset>.png`` beside the results file and
``<results>_trajectory_<dataset>.json`` (the curves: per method and layer, the mean over seeds of
the filters held at each update, the counts kept at the prune, and the reference's counts).
Nothing is trained: it reads what the runs recorded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import command_line
from lightning_ssr.report import write_json

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def runs_of(data: dict) -> list[dict]:
    """The whole runs a results file holds (lenet.json: ``runs``; methods.json: ``rows``)."""
    runs = data.get("runs")
    if isinstance(runs, list):
        return runs
    return [r for r in data.get("rows", []) if isinstance(r, dict) and "layers" in r]


def curves(runs: list[dict], dataset: str | None, methods: list[str], reference: str,
           macs: float | None = None) -> dict:
    """Per method: per layer, the mean over seeds of the filters held at each update (updates
    aligned by index; seeds that stopped earlier drop out), the mean count kept at the prune, and
    the runs' seeds. The reference: its mean kept counts. ``macs``: only the runs at that MACs
    target (methods.json holds several)."""
    def mine(method):
        return [r for r in runs if r.get("method") == method and r.get("status") == "ok"
                and (dataset is None or r.get("dataset") == dataset)
                and (macs is None or r.get("macs_target") == macs)]

    def counts(run, when):  # per layer, and per channel group of the plan (a residual stream has no layer of its own)
        groups = (run.get("plan") or {}).get("groups", [])
        return {**{layer["name"]: layer[when] for layer in run["layers"]},
                **{g["root"]: g["size"] if when == "before" else len(g["kept"]) for g in groups}}

    def kept(run):
        return counts(run, "after")

    def before(run):
        return counts(run, "before")

    out = {"methods": {}, "reference": None}
    for method in methods:
        chosen = [r for r in mine(method) if r.get("trajectory")]
        if not chosen:
            continue
        tracked = chosen[0]["trajectory"][0]["kept"]
        layers = [layer["name"] for layer in chosen[0]["layers"] if layer["name"] in tracked]  # the model's order
        layers += [name for name in tracked if name not in layers]  # then the groups with no layer of their own
        length = max(len(r["trajectory"]) for r in chosen)
        held = {}
        for name in layers:
            series = []
            for i in range(length):
                values = [r["trajectory"][i]["kept"][name] for r in chosen if i < len(r["trajectory"])]
                series.append(statistics.fmean(values))
            held[name] = series
        steps = max((r["trajectory"] for r in chosen), key=len)
        out["methods"][method] = {
            "seeds": [r.get("seed") for r in chosen], "steps": [t["step"] for t in steps], "held": held,
            "kept": {n: statistics.fmean(kept(r)[n] for r in chosen) for n in layers},
            "dense": before(chosen[0]), "allocation": (chosen[0]["events"][0] if chosen[0].get("events") else {}).get(
                "allocation")}
    ref = mine(reference)
    if ref:
        names = list(kept(ref[0]))
        out["reference"] = {"method": reference, "seeds": [r.get("seed") for r in ref],
                            "kept": {n: statistics.fmean(kept(r)[n] for r in ref) for n in names}}
    return out


def plot(data: dict, path: Path, title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'lightning_ssr[plots]')", file=sys.stderr)
        return None
    methods = data["methods"]
    if not methods:
        return None
    layers = list(next(iter(methods.values()))["held"])
    cols = min(4, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, name in zip(axes.flat, layers):
        for i, (method, c) in enumerate(methods.items()):
            color = colors[i % len(colors)]
            ax.plot(c["steps"], c["held"][name], color=color, label=f"{method}: held by the method")
            ax.axhline(c["kept"][name], color=color, linestyle=":", label=f"{method}: kept at the prune")
        if data["reference"]:
            ax.axhline(data["reference"]["kept"].get(name, float("nan")), color="black", linestyle="--",
                       label=f"{data['reference']['method']}: kept")
        dense = next(iter(methods.values()))["dense"].get(name)
        ax.set_yscale("log")
        ax.set_title(f"{name} ({dense} filters dense)")
        ax.set_xlabel("optimizer step (sparsify phase)")
    axes[0][0].set_ylabel("filters (mean over seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 + 0.04 * (len(labels) // 3), 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS / "lenet.json")
    parser.add_argument("--dataset", default="mnist", help="the runs' dataset (lenet.json); 'all': every run")
    parser.add_argument("--methods", nargs="+", default=["ssr_l21@method", "ssr_l20@method"])
    parser.add_argument("--reference", default="l1@uniform")
    parser.add_argument("--macs", type=float, default=None,
                        help="the runs at this MACs target (a file with several targets: methods.json)")
    args = parser.parse_args(argv)
    if not args.results.is_file():
        parser.error(f"--results: no file {args.results}")
    data = json.loads(args.results.read_text())
    dataset = None if args.dataset == "all" else args.dataset
    targets = sorted({r["macs_target"] for r in runs_of(data) if r.get("macs_target") is not None})
    if args.macs is None and len(targets) > 1:
        parser.error(f"{args.results} holds runs at several MACs targets {targets}: choose one with --macs")
    if args.macs is not None and args.macs not in targets:
        parser.error(f"--macs {args.macs:g}: {args.results} holds runs at {targets or 'no recorded target'}")
    found = curves(runs_of(data), dataset, args.methods, args.reference, args.macs)
    if not found["methods"]:
        raise SystemExit(f"{args.results}: no run of {args.methods} on {args.dataset} recorded a trajectory (runs "
                         "written before the result held one: run its command again)")
    stem = f"{args.results.stem}_trajectory_{args.dataset}" + (f"_macs{args.macs:g}" if args.macs is not None else "")
    json_path, png_path = (args.results.with_name(stem + suffix) for suffix in (".json", ".png"))
    out = {"benchmark": "trajectory", "command": command_line("trajectory", argv), "source": str(args.results.name),
           "source_command": data.get("command"), "machine": data.get("machine"), "dataset": args.dataset,
           "macs": args.macs, "plot": png_path.name, **found}
    write_json(json_path, relative_to=REPO, obj=out)
    png = plot(found, png_path, f"{args.results.stem}, {args.dataset}"
               + (f", {args.macs:g} of the MACs" if args.macs is not None else "")
               + ": filters per layer over the sparsify phase")
    for method, c in found["methods"].items():
        last = {n: round(v[-1], 1) for n, v in c["held"].items()}
        print(f"{method} ({len(c['seeds'])} seeds): held at the last update {last}; kept at the prune "
              f"{ {n: round(v, 1) for n, v in c['kept'].items()} }")
    if found["reference"]:
        print(f"{args.reference}: kept {({n: round(v, 1) for n, v in found['reference']['kept'].items()})}")
    print(f"wrote {json_path}" + (f" and {png}" if png else ""))
    return out


if __name__ == "__main__":
    main()
