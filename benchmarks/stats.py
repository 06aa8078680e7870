"""The arithmetic every benchmark shares: means and spreads over seeds, paired comparisons by seed
with a 95% interval, and the formatting that shows one run as one number.

A comparison of two methods is made per seed (both compress the same dense model of that seed, so
the seed's luck cancels) and summarized by the mean difference and its 95% Student-t interval;
where the interval contains 0 the two are "not distinguishable".

Run as a script, it compares one method's accuracy drops in one results file with another's, by
seed (two recipes of the same benchmark); with ``--field``, another figure of the runs, and for
``recipes.py``'s files an experiment's rows (its DANN against an equal-budget run without the
domain classifier, for example)::

    python benchmarks/stats.py benchmarks/results/B.json l1@uniform benchmarks/results/A.json l1@uniform
    python benchmarks/stats.py benchmarks/results/recipes.json da_mnist_to_mnist_m \
        benchmarks/results/recipes_no_adaptation.json da_mnist_to_mnist_m --field dense_accuracy

In a ``recipes.py`` file that holds the adaptation runs' controls, ``<experiment>:no_adaptation``
names the control's rows (a bare experiment, the runs themselves)::

    python benchmarks/stats.py R.json da_mnist_to_mnist_m R.json da_mnist_to_mnist_m:no_adaptation --field dense_accuracy
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

#: two-sided 95% quantiles of Student's t distribution, by degrees of freedom (1-30)
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
        2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
        2.045, 2.042]


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom: the table up to 30,
    beyond it the Cornish-Fisher expansion around the normal quantile (within 0.001 of the exact
    value: 2.0395 at 31, where the normal's 1.96 made intervals 4% too narrow)."""
    if df < 1:
        raise ValueError(f"t95: degrees of freedom must be >= 1, got {df}")
    if df <= len(_T95):
        return _T95[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """The mean and the sample standard deviation; ``std`` is ``None`` for fewer than two values."""
    values = [float(v) for v in values]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def paired(differences: Sequence[float]) -> dict:
    """The mean of per-seed differences with its 95% interval, and the verdict: ``"higher"``,
    ``"lower"`` or ``"not distinguishable"`` (the interval contains 0, or a single seed)."""
    d = [float(v) for v in differences]
    n = len(d)
    if n == 0:
        return {"n": 0, "mean": None, "low": None, "high": None, "verdict": "no common seeds"}
    mean = statistics.fmean(d)
    if n < 2:
        return {"n": 1, "mean": mean, "low": None, "high": None, "verdict": "not distinguishable (one seed)"}
    half = t95(n - 1) * statistics.stdev(d) / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "higher" if low > 0 else "lower" if high < 0 else "not distinguishable"
    return {"n": n, "mean": mean, "low": low, "high": high, "verdict": verdict}


def paired_by_seed(values: Mapping[int, float], reference: Mapping[int, float]) -> dict:
    """:func:`paired` over the seeds both hold: ``values[seed] - reference[seed]``."""
    seeds = sorted(set(values) & set(reference))
    return {**paired([values[s] - reference[s] for s in seeds]), "seeds": seeds}


def pm(mean: float | None, std: float | None, digits: int = 2, sign: bool = False) -> str:
    """``mean ± std``, or only the mean where there is no spread (one run)."""
    if mean is None:
        return "-"
    body = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return body if std is None else f"{body} ± {std:.{digits}f}"


def interval(p: Mapping, digits: int = 2) -> str:
    """A paired comparison as ``+0.12 [-0.05, +0.29], not distinguishable``."""
    if p.get("mean") is None:
        return p.get("verdict", "-")
    if p.get("low") is None:
        return f"{p['mean']:+.{digits}f} ({p['verdict']})"
    return f"{p['mean']:+.{digits}f} [{p['low']:+.{digits}f}, {p['high']:+.{digits}f}], {p['verdict']}"


DROP = "accuracy_drop_points"


def drops_by_seed(path: Path, method: str, field: str = DROP, dataset: str | None = None) -> dict[int, float]:
    """``field`` (the accuracy drop in points by default) of each finished run of ``method`` in a
    results file, by seed: its ``runs`` by method, or, in a ``recipes.py`` file, its ``rows`` by
    experiment (``<experiment>:<variant>``: the rows of that variant, e.g. ``no_adaptation``, the
    equal-budget control; a bare experiment: the rows of none). A file of several data sets needs
    ``dataset``: their runs share seeds."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"{path}: unreadable results file ({type(err).__name__}: {err})") from err
    runs, key = (data["runs"], "method") if "runs" in data else (data.get("rows", []), "experiment")
    name, variant = method.split(":", 1) if key == "experiment" and ":" in method else (method, None)
    chosen = [r for r in runs if r.get(key) == name and r.get("variant") == variant and r.get("status") == "ok"
              and r.get(field) is not None and (dataset is None or r.get("dataset") == dataset)]
    datasets = sorted({r["dataset"] for r in chosen if r.get("dataset") is not None})
    if len(datasets) > 1:  # (by seed alone, one data set's runs would replace the other's)
        raise SystemExit(f"{path}: {method!r} ran on {', '.join(datasets)}; choose one with --dataset")
    drops = {r["seed"]: r[field] for r in chosen}
    if not drops:
        raise SystemExit(f"{path}: no finished run of {method!r}" + (f" with {field!r}" if field != DROP else ""))
    return drops


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="One method's accuracy drop in one results file minus another's, "
                                                 "paired by seed, with its 95% interval (points)")
    parser.add_argument("results", type=Path)
    parser.add_argument("method")
    parser.add_argument("reference", type=Path)
    parser.add_argument("reference_method")
    parser.add_argument("--field", default=DROP,
                        help=f"the figure compared (default {DROP}; e.g. dense_accuracy in recipes.py's files)")
    parser.add_argument("--dataset", default=None,
                        help="the data set whose runs are compared, in a file of several (lenet.py's)")
    args = parser.parse_args(argv)
    p = paired_by_seed(drops_by_seed(args.results, args.method, args.field, args.dataset),
                       drops_by_seed(args.reference, args.reference_method, args.field, args.dataset))
    what = "drop" if args.field == DROP else args.field
    unit = " (points)" if args.field == DROP or "accuracy" in args.field else ""
    on = f" on {args.dataset}" if args.dataset else ""
    print(f"{what} of {args.method} in {args.results.name} minus {what} of {args.reference_method} in "
          f"{args.reference.name}{on}{unit}, seeds {p['seeds']}: {interval(p)}")
    return p


if __name__ == "__main__":
    main()
