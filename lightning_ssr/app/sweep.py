"""Sweep reports: every ``result.json`` under a directory, compared.

``lightning-ssr-report <sweep_dir>`` (and the multirun's own callback, :class:`SweepReport`)
writes, next to the runs:

- ``report.md`` and ``report.csv``: one row per configuration (the settings that differ between
  runs, seeds pooled), with the mean and standard deviation over seeds of the test accuracy and
  of the drop from the dense model, the MACs and the reductions, and whether the configuration
  is on the Pareto front of accuracy against MACs; failed runs are listed with their errors;
- ``pareto.png``: test accuracy against MACs, one colour per method, every run as a dot, each
  configuration's mean as a ring, the Pareto front as a line;
- ``layers.png``: the per-layer surviving filters of one run (``--run``; by default the
  cheapest configuration on the Pareto front);
- ``structure.png``: per layer, the fraction of filters each configuration keeps, one panel per
  target: the structures of the methods (and allocations) side by side.

A configuration is named by what was swept: the command-line choices that differ between the
runs (``pruning=l1 target.macs=0.1``, from each Hydra job's ``overrides.yaml``).

A run directory is one with a ``result.json`` or a Hydra ``.hydra`` folder; a Hydra job that
left no ``result.json`` (killed, or failed before writing it) is reported as failed. The jobs a
grid sweep planned (its ``multirun.yaml``) that left no run, after a Ctrl-C, are listed as
never started, each with the command that runs it alone in the sweep's folder
(``<sweep_dir>/<job number>``, Hydra's default ``hydra.sweep.subdir``).

A sweep run again in its folder with other values numbers its jobs anew. The runs an earlier
sweep left there are listed apart, not counted (:func:`of_the_sweep`), and a job whose folder
holds one moves it to ``<sweep_dir>/.replaced/`` before it runs (which the report skips).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..files import atomic_write, atomic_write_text
from ..report import PruningResult, part_of_test_split
from ..schedule import PruningSchedule
from ..targets import MET_TOLERANCE

#: config keys that never tell configurations apart (seeds are pooled; paths are where, not what)
POOLED_KEYS = ("seed", "ckpt_path", "dense.cache_dir", "data.root", "verbose", "export")


def flatten_config(config: Mapping, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}`` (lists and mappings under a key as JSON)."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
    return out


#: where a sweep run again in its folder keeps the runs its jobs' folders held of other
#: configurations (:func:`lightning_ssr.app.cli.set_aside_other_run`); not part of the sweep
REPLACED_DIR = ".replaced"


def find_runs(root: str | Path) -> list[dict]:
    """Every run under ``root``: ``{"dir", "status", "error", "result"}`` (``result``: the
    ``result.json`` as a dict, or ``None``). Runs set aside under ``.replaced`` are not counted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"sweep directory {str(root)!r} does not exist")
    dirs = {p.parent for p in root.rglob("result.json")} | {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    dirs = {d for d in dirs if REPLACED_DIR not in d.relative_to(root).parts}
    runs = []
    # by job number where a folder is one (2 before 10), a folder of another name after them
    for d in sorted(dirs, key=lambda p: [(0, int(s), "") if s.isdecimal() else (1, 0, s) for s in p.relative_to(root).parts]):
        path = d / "result.json"
        if not path.is_file():
            runs.append({"dir": d, "status": "failed", "result": None,
                         "error": f"no result.json in {str(d)!r}: the run did not finish (it was killed, or stopped "
                                  "before it could record its end)"})
            continue
        try:
            result = PruningResult.load(path).to_dict()
        except ValueError as err:
            runs.append({"dir": d, "status": "failed", "result": None, "error": str(err)})
            continue
        runs.append({"dir": d, "status": result.get("status", "ok"), "error": result.get("error"), "result": result})
    return runs


#: the sweeper whose jobs are a grid fixed at the start (an Optuna sweep's are not)
GRID_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def planned_jobs(sweep_dir: str | Path) -> tuple[object, list[list[str]]] | None:
    """The Hydra settings of a grid sweep (``multirun.yaml``) and its jobs' overrides, in launch
    order (job ``i`` is the ``i``-th): the product of the sweeper's ``params`` and the command
    line's overrides, as Hydra's basic sweeper expands them. ``None`` for another sweeper, a
    shuffled sweep (its order is drawn anew), a folder that is not a sweep, or a file that cannot
    be read."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        hydra_cfg = OmegaConf.load(path).hydra
        if hydra_cfg.sweeper.get("_target_") != GRID_SWEEPER:
            return None
        given = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
        grid = grid_choices(OverridesParser.create().parse_overrides([*given, *hydra_cfg.overrides.task]))
        if grid is None:
            return None
        return hydra_cfg, [list(job) for job in itertools.product(*grid[0].values())]
    except Exception:  # noqa: BLE001 - a sweep type or file this cannot expand: nothing is said to be missing
        return None


def grid_choices(overrides) -> tuple[dict[str, list[str]], set[str]] | None:
    """A job's parsed task overrides as Hydra's grid sweeper expands them: ``{key: ["key=value",
    ...]}``, whose product in this order numbers its jobs (a key given twice: its last values, at
    its first place), and the keys swept. ``None`` for a sweep that is not a fixed grid (shuffled:
    its order is drawn anew; an interval) and for one with a ``glob()`` of group choices, which only
    Hydra's config loader expands."""
    from hydra.errors import HydraException

    choices: dict[str, list[str]] = {}
    swept: set[str] = set()
    for override in overrides:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep() or getattr(override.value(), "shuffle", False):
                return None
            try:
                choices[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
            except HydraException:  # (a glob: "ConfigLoader is not set")
                return None
            swept.add(key)
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
            swept.discard(key)
    return choices, swept


def _pairs(overrides) -> set[tuple[str, str]]:
    return {(k.lstrip("+~"), v) for k, _, v in (str(o).partition("=") for o in overrides)}


def never_started(sweep_dir: str | Path, runs: Sequence[dict], strays: Sequence[dict] = ()) -> list[dict]:
    """The jobs of a grid sweep with no run (the sweep was stopped before them, or is still
    running): ``{"job", "overrides", "command"}``, the command running each alone in the folder
    Hydra gives job ``i`` by default, ``<sweep_dir>/<i>``. A job counts as run when a run's
    command-line choices include its own (a run resumed with ``ckpt_path=`` has one more), or when
    that folder exists and holds no run of an earlier sweep (``strays``, :func:`of_the_sweep`): no
    command is given that would write over a run (``command`` is ``None`` for a folder that holds
    an earlier sweep's)."""
    planned = planned_jobs(sweep_dir)
    if planned is None:
        return []
    hydra_cfg, jobs = planned
    root = Path(sweep_dir).resolve()
    started = [set(o.items()) for o in map(_overrides, runs) if o is not None]
    # folders that hold a run of an earlier sweep (not one of ``runs``): the job has not run there
    earlier = {_job_of_folder(hydra_cfg, root, Path(r["dir"])) for r in strays}
    numbered = _numbered(hydra_cfg)
    missing = [(i, job) for i, job in enumerate(jobs)
               if not any(_pairs(job) <= run for run in started)
               and (not numbered or not (root / str(i)).exists() or i in earlier)]
    if not missing:
        return []
    from .cli import run_alone_command  # the command a Ctrl-C in a sweep gives, built the same way

    # (into a folder that holds an earlier sweep's run, no command: run alone, the job would write
    # over it; the sweep run again sets it aside first)
    return [{"job": i, "overrides": job, "command": None if i in earlier else
             run_alone_command(hydra_cfg, job, str(root / str(i)))} for i, job in missing]


def newest_checkpoint(folder: str | Path, since: float | None = None, also: Sequence[Path] = ()) -> Path | None:
    """The newest checkpoint a run left in ``folder`` (``logs/version_*/checkpoints/``, and the
    paths ``also``) that reads whole (a kill during a save cuts one short); ``since``: only those
    written from that time on (a file's modification time; those of ``also`` regardless). ``None``
    where there is none."""
    from ..checkpoint import CheckpointReadError, check_checkpoint_file

    saved = []
    for path in [*Path(folder).glob("logs/version_*/checkpoints/*.ckpt"), *map(Path, also)]:
        try:  # (a run still going rotates its checkpoints: one listed may be gone by now)
            mtime = path.stat().st_mtime
        except OSError:
            continue
        if since is None or mtime >= since or path in also:
            saved.append((mtime, path))
    for _, path in sorted(saved, reverse=True):
        try:
            check_checkpoint_file(path)
        except (CheckpointReadError, OSError):  # (cut short, or rotated away since it was listed)
            continue
        if path.is_file():
            return path
    return None


def attempt_checkpoint(folder: str | Path, record: Mapping) -> Path | None:
    """The newest intact checkpoint in ``folder`` (:func:`newest_checkpoint`) that the attempt
    ``record`` describes (a run's ``result.json``, read) wrote, or went on from (its ``ckpt_path``):
    an earlier attempt's checkpoints in the folder (one that failed, and was trained again from the
    start since) are not its. The attempt's start is ``config.started_at``; a record without it (of
    an earlier version) is taken to start its ``timings.total_s`` before ``result.json`` was written."""
    config = record.get("config") or {}
    started = config.get("started_at")
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        try:
            written = (Path(folder) / "result.json").stat().st_mtime
        except OSError:
            written = None
        total = (record.get("timings") or {}).get("total_s")
        started = None if written is None else written - float(total if isinstance(total, (int, float)) else 0.0)
    given = (config.get("cli") or {}).get("ckpt_path")
    # (a second's slack: the clock's grain)
    return newest_checkpoint(folder, since=None if started is None else started - 1.0,
                             also=[Path(given)] if isinstance(given, str) and given else [])


def go_on_command(sweep_dir: str | Path, run: dict) -> str | None:
    """The command that goes on with an unfinished run of the sweep alone, in its folder (where the
    report finds it): from the newest checkpoint it left (``ckpt_path=``), else from the start;
    ``None`` where the sweep's plan (``multirun.yaml``) or the run's choices cannot be read."""
    planned, given = planned_jobs(sweep_dir), _override_items(run)
    if planned is None or given is None:
        return None
    overrides = [o for o in given if not o.startswith("ckpt_path=")]
    from .cli import _override_value, run_alone_command

    intact = attempt_checkpoint(run["dir"], run.get("result") or {})
    extra = [f"ckpt_path={_override_value(str(intact.resolve()))}"] if intact is not None else []
    return run_alone_command(planned[0], overrides, str(Path(run["dir"]).resolve()), extra)


def of_the_sweep(sweep_dir: str | Path, runs: Sequence[dict]) -> tuple[list[dict], list[dict]]:
    """``runs`` split into those of the grid sweep that ``multirun.yaml`` describes and those left
    in its folder by an earlier sweep with other values (a folder ``<i>`` whose choices are not job
    ``i``'s: the sweep run again in its folder renumbered its jobs, or has fewer of them). Runs of
    another sweeper, or without recorded choices, all count."""
    planned = planned_jobs(sweep_dir)
    if planned is None:
        return list(runs), []
    hydra_cfg, jobs = planned
    root = Path(sweep_dir).resolve()
    ours, strays = [], []
    for run in runs:
        choices = _overrides(run)
        num = _job_of_folder(hydra_cfg, root, Path(run["dir"]))
        if choices is None:
            match = True
        elif num is not None:
            match = num < len(jobs) and _pairs(jobs[num]) <= set(choices.items())
        elif _numbered(hydra_cfg):  # (a folder not named by a job number is none of the sweep's jobs)
            match = False
        else:
            match = any(_pairs(job) <= set(choices.items()) for job in jobs)
        if not match:  # (a run of its own put in the folder was said to be an earlier sweep's: probe)
            run = {**run, "stray": "earlier_sweep" if num is not None else "not_a_job"}
        (ours if match else strays).append(run)
    return ours, strays


def _numbered(hydra_cfg) -> bool:
    """Whether the sweep's job folders are their job numbers (Hydra's default ``hydra.sweep.subdir``)."""
    from omegaconf import OmegaConf

    sweep = OmegaConf.to_container(hydra_cfg.sweep, resolve=False) if "sweep" in hydra_cfg else {}  # (as written)
    return str((sweep or {}).get("subdir", "${hydra.job.num}")).replace(" ", "") == "${hydra.job.num}"


def _job_of_folder(hydra_cfg, root: Path, folder: Path) -> int | None:
    """The job whose folder ``folder`` is, where the sweep's folders are the job numbers."""
    where = folder.resolve()
    parts = where.relative_to(root).parts if where.is_relative_to(root) else ()
    return int(parts[0]) if _numbered(hydra_cfg) and len(parts) == 1 and parts[0].isdigit() else None


def swept_keys(sweep_dir: str | Path) -> list[str]:
    """The keys a grid sweep gives more than one value (``pruning``, ``target.macs``): they name
    its configurations even while the runs so far share one value."""
    planned = planned_jobs(sweep_dir)
    if planned is None:
        return []
    values: dict[str, set[str]] = {}
    for job in planned[1]:
        for key, value in _pairs(job):
            values.setdefault(key, set()).add(value)
    return sorted(k for k, v in values.items() if len(v) > 1)


def _settings(run: dict) -> dict:
    result = run["result"] or {}
    return flatten_config((result.get("config") or {}).get("cli") or {})


def _override_items(run: dict) -> list[str] | None:
    """The command line of a Hydra job as it was given (``.hydra/overrides.yaml``: ``pruning=l1``,
    ``+trainer.max_steps=3``, ...); ``None`` where the run has no such file, or it is unreadable."""
    path = Path(run["dir"]) / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        from omegaconf import OmegaConf

        return [str(item) for item in OmegaConf.to_container(OmegaConf.load(path)) or []]
    except Exception:  # noqa: BLE001 - an unreadable file: fall back to the recorded configuration
        return None


def _overrides(run: dict) -> dict | None:
    """The command-line choices of a Hydra job as ``{key: value}`` (:func:`_override_items`, the
    ``+``/``~`` prefixes dropped); ``None`` where the run has none on record."""
    items = _override_items(run)
    if items is None:
        return None
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _given_alike(runs: Sequence[dict], shared: Mapping[str, str]) -> list[str]:
    """The command-line items, as typed (``+experiment=...``, ``~key``: a command can take them
    again), that every run was given alike: those of ``shared`` (:func:`_shared_overrides`) and the
    deletions every run has."""
    if not runs:
        return []
    others = [set(_override_items(r) or []) for r in runs[1:]]
    out = []
    for item in _override_items(runs[0]) or []:
        key, sep, _ = item.partition("=")
        if (key.lstrip("+~") in shared) if sep else all(item in o for o in others):
            out.append(item)
    return out


def _shared_overrides(runs: Sequence[dict], swept: Sequence[str] = ()) -> dict:
    """The command-line choices every run of the sweep was given alike (``{}`` where a run has
    none on record), but those the sweep's grid varies (``swept``: the runs so far may share a
    value the jobs not yet run do not)."""
    given = [_overrides(r) for r in runs]
    if not given or any(g is None for g in given):
        return {}
    return {k: v for k, v in given[0].items() if k not in swept and all(g.get(k) == v for g in given[1:])}


def _pooled(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in POOLED_KEYS)


def varying_keys(runs: Sequence[dict], swept: Sequence[str] = ()) -> list[str]:
    """What tells the runs apart: the command-line choices that differ between them (from each
    Hydra job's ``overrides.yaml``: ``pruning=l1 target.macs=0.1``), or, for runs without one,
    the configuration keys whose values differ, a config group's keys folded into its choice
    (``pruning=l1``, not every key of the ``pruning`` section). Seeds and paths are pooled.
    ``swept``: choices a grid sweep varies (:func:`swept_keys`), named even where the runs so far
    share their value."""
    found = [r for r in runs if r["result"] is not None]
    if _by_overrides(found):
        overrides = [_overrides(r) for r in found]
        keys = sorted(set().union(*overrides))
        return [k for k in keys if not _pooled(k) and (len({o.get(k) for o in overrides}) > 1 or k in swept)]
    settings = [_settings(r) for r in found]
    keys = sorted(set().union(*settings)) if settings else []
    differ = [k for k in keys if not _pooled(k) and len({json.dumps(s.get(k), default=str) for s in settings}) > 1]
    chosen = {k.rsplit(".", 1)[0] for k in differ if k.endswith(".name")}  # a config group's choice changed
    return [k for k in differ if not any(k.startswith(g + ".") for g in chosen) or k.endswith(".name")]


def _by_overrides(runs: Sequence[dict]) -> bool:
    """Whether every run records its command-line choices (then they name the configurations)."""
    return bool(runs) and all(_overrides(r) is not None for r in runs)


def _values(run: dict, keys: Sequence[str], by_overrides: bool) -> tuple[str, ...]:
    """What ``run`` ran with for each of ``keys``, as its command line gave it."""
    settings = _settings(run)
    if by_overrides:  # a choice the run was not given: what it ran with (an experiment's), not "default" (probe)
        overrides = _overrides(run)
        return tuple(overrides[k] if k in overrides else _recorded(settings, k) for k in keys)
    return tuple(str(settings.get(k)) for k in keys)


def _label(run: dict, keys: Sequence[str], values: Sequence[str]) -> str:
    """``k=v`` for each key and its value (a config group's ``name`` key as the group: ``pruning=l1``)."""
    if not keys:
        return str((run["result"] or {}).get("method") or "run")
    return " ".join(f"{k.removesuffix('.name')}={v}" for k, v in zip(keys, values))


def _short_numbers(values: Sequence[str], least: int = 4) -> dict[str, str]:
    """Each number among ``values`` written with as few significant digits (``least`` at fewest)
    as keep the numbers apart: Optuna's ``module.lr=0.0012345678901234567`` reads ``0.001235``
    (the report printed 19 digits: probe), where no other value of that key rounds alike."""
    numbers = {}
    for value in values:
        if not any(c in str(value) for c in ".eE"):  # (an integer stays as given: max_steps=2000000)
            continue
        try:
            numbers[value] = float(value)
        except (TypeError, ValueError):
            continue
    given = set(values)
    for digits in range(least, 18):
        shown = {v: f"{x:.{digits}g}" for v, x in numbers.items()}
        shown = {v: s for v, s in shown.items() if len(s) < len(v)}
        # apart from every value of the key, as written: "2.0" shortened is "2", another run's value (review)
        if len({shown.get(v, v) for v in given}) == len(given):
            return shown
    return {}


def _recorded(settings: Mapping, key: str) -> str:
    """The value ``key`` (a setting, or a config group such as ``pruning``: its ``name``) has in a
    run's recorded configuration; ``default`` where it records none."""
    for name in (key, f"{key}.name"):
        if settings.get(name) is not None:
            return str(settings[name])
    return "default"


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)  # one run: no spread


def trained_epochs(result: Mapping) -> int | None:
    """The epochs the run that prunes trained: the command's ``trainer.max_epochs`` where given,
    else its schedule's total (``None`` where the result does not say)."""
    config = result.get("config") or {}
    given = ((config.get("cli") or {}).get("trainer") or {}).get("max_epochs")
    if isinstance(given, int) and given > 0:
        return given
    try:
        return PruningSchedule(**config["schedule"]).total_epochs
    except (KeyError, TypeError, ValueError):
        return None


def _epochs_cell(values: Sequence[int | None]) -> str:
    known = sorted({v for v in values if v is not None})
    return "" if not known else str(known[0]) if len(known) == 1 else f"{known[0]}-{known[-1]}"


def comparison(result: Mapping | None) -> str:
    """What a run's accuracy and MACs compare with: its network and the images it is tested on
    (``"lenet5 on MNISTDigits 28x28"``; an adaptation's, the target's). Runs of another network or
    data set are compared apart: their accuracies come from other test sets, their MACs from other
    networks (one Pareto front over both crowned one data set's runs, and one dense point stood
    between two networks: probe)."""
    cli = ((result or {}).get("config") or {}).get("cli") or {}
    model = cli.get("model") if isinstance(cli.get("model"), Mapping) else {}
    name = model.get("name") or str(model.get("_target_", "?")).rsplit(".", 1)[-1]
    adaptation = cli.get("adaptation") if isinstance(cli.get("adaptation"), Mapping) else {}
    data = adaptation.get("target") or cli.get("data")
    data = data if isinstance(data, Mapping) else {}
    said = f"{name} on {str(data.get('_target_', '?')).rsplit('.', 1)[-1]}"
    if data.get("image_size"):
        said += f" {data['image_size']}x{data['image_size']}"
    said += f", {data['channels']} channels" if data.get("channels") else ""
    # a recipe's dense model is another (trained on a source data set first): its runs are compared apart
    # (a transfer run shared the plain runs' front and their dense mean: probe)
    for recipe, how in (("adaptation", "adapted"), ("transfer", "transferred")):
        part = cli.get(recipe) if isinstance(cli.get(recipe), Mapping) else {}
        source = part.get("source") if isinstance(part.get("source"), Mapping) else None
        if recipe == "adaptation" and adaptation:
            source = cli.get("data") if isinstance(cli.get("data"), Mapping) else {}
        if source is not None:
            said += f", {how} from {str(source.get('_target_', '?')).rsplit('.', 1)[-1]}"
    return said


def summarize(runs: Sequence[dict], swept: Sequence[str] = ()) -> list[dict]:
    """One row per configuration (seeds pooled), in the order the runs were found; ``swept``: as
    :func:`varying_keys`."""
    keys = varying_keys(runs, swept)
    by_overrides = _by_overrides([r for r in runs if r["result"] is not None])
    groups: dict[tuple[str, ...], list[dict]] = {}
    for run in runs:
        if run["result"] is not None:
            groups.setdefault(_values(run, keys, by_overrides), []).append(run)
    shown = [_short_numbers([values[i] for values in groups]) for i in range(len(keys))]
    rows = []
    for values, members in groups.items():
        label = _label(members[0], keys, [shown[i].get(v, v) for i, v in enumerate(values)])
        exact = _label(members[0], keys, values)  # (report.csv: the values as given, for a program to read back)
        ok = [m["result"] for m in members if m["status"] == "ok" and m["result"].get("pruned", {}).get("macs")]
        acc = [100 * r["pruned"]["accuracy"] for r in ok if r["pruned"].get("accuracy") is not None]
        drop = [r["accuracy_drop_points"] for r in ok if r.get("accuracy_drop_points") is not None]
        acc_mean, acc_std = _mean_std(acc)
        drop_mean, drop_std = _mean_std(drop)
        rows.append({
            "config": label, "config_given": exact, "method": (members[0]["result"] or {}).get("method"),
            "comparison": comparison(members[0]["result"]),
            "runs": len(ok), "failed": len(members) - len(ok),
            "interrupted": sum(1 for m in members if m["status"] == "interrupted"),
            "running": sum(1 for m in members if m["status"] == "running"),
            "accuracy_mean": acc_mean, "accuracy_std": acc_std, "drop_mean": drop_mean, "drop_std": drop_std,
            "macs_mean": _mean_std([r["pruned"]["macs"] for r in ok])[0],
            "macs_reduction_mean": _mean_std([r["macs_reduction"] for r in ok if r.get("macs_reduction")])[0],
            "params_reduction_mean": _mean_std([r["params_reduction"] for r in ok if r.get("params_reduction")])[0],
            "epochs": _epochs_cell([trained_epochs(r) for r in ok]),
            "dirs": [str(m["dir"]) for m in members],
        })
    for compared in {r["comparison"] for r in rows}:  # (a front within each network and data set)
        mine = [r for r in rows if r["comparison"] == compared]
        front = pareto_front([(r["macs_mean"], r["accuracy_mean"]) for r in mine])
        for i, row in enumerate(mine):
            row["pareto"] = i in front
    return rows


def pareto_front(points: Sequence[tuple[float | None, float | None]],
                 tolerance: float = MET_TOLERANCE) -> set[int]:
    """Indices of the points no other point beats: fewer or equal MACs and higher or equal
    accuracy, one of them strictly. MACs within ``tolerance`` of each other (relative) count as
    equal: runs of one target land within :data:`~lightning_ssr.targets.MET_TOLERANCE` below it, so
    they differ by what rounding the counts left (114,536 and 114,600), and the less accurate one
    is not on the front for that. Points with a missing coordinate
    are never on the front."""
    valid = [i for i, (m, a) in enumerate(points) if m is not None and a is not None]

    def beats(j: int, i: int) -> bool:
        (mj, aj), (mi, ai) = points[j], points[i]
        same = abs(mj - mi) <= tolerance * max(abs(mi), abs(mj))
        return (mj <= mi or same) and aj >= ai and (aj > ai or (mj < mi and not same))

    return {i for i in valid if not any(beats(j, i) for j in valid if j != i)}


def _fmt(value, digits=2, suffix=""):
    return "" if value is None else f"{value:.{digits}f}{suffix}"


def _pm(mean, std, runs: int, digits=2):
    """``mean ± std`` over seeds; one run has no spread to show."""
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" if runs < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def write_markdown(rows: Sequence[dict], runs: Sequence[dict], path: Path, title: str,
                   missing: Sequence[dict] = (), strays: Sequence[dict] = (),
                   sweep_dir: str | Path | None = None) -> Path:
    # (of the runs whose accuracy was measured: a failed run's None is no limit of its own: probe)
    limits = {((r["result"].get("pruned") or {}).get("evaluation_limits") or {}).get("limit_test_batches")
              for r in runs if r.get("result") and (r["result"].get("pruned") or {}).get("accuracy") is not None}
    split = ("the test split" if limits <= {None} else part_of_test_split(limits.pop()) if len(limits) == 1 else
             "the test split, or part of it (trainer.limit_test_batches differs between runs)")
    lines = [f"# {title}", "", (f"{count_runs(sum(r['runs'] for r in rows))} finished, "
             f"{unfinished(runs)}. Mean ± std over seeds; accuracy on {split}; * marks the Pareto front of "
             "accuracy against MACs."), "",
             "| configuration | runs | epochs | accuracy (%) | drop (pt) | MACs | MACs reduction | params reduction | Pareto |",
             "|---|---|---|---|---|---|---|---|---|"]
    compared = list(dict.fromkeys(r["comparison"] for r in rows))
    if len(compared) > 1:  # (accuracies of other test sets, MACs of other networks: not one front)
        lines[2] += (f" The runs test {len(compared)} networks or data sets ({'; '.join(compared)}): each has its "
                     "own Pareto front, and the plots a panel each.")
    shared = _shared_overrides(runs, swept_keys(sweep_dir) if sweep_dir is not None else ())
    given = _given_alike(runs, shared)
    if given:  # (a tiny test sweep, trainer.limit_train_batches=10, would read like a real one)
        lines[4:4] = [f"Every run was given: `{' '.join(given)}`.", ""]
    for r in rows:
        stopped, running = r.get("interrupted", 0), r.get("running", 0)
        runs_cell = f"{r['runs']}" + "".join(f" (+{n} {what})" for n, what in (
            (r["failed"] - stopped - running, "failed"), (stopped, "interrupted"), (running, "running or killed")) if n)
        macs = "" if r["macs_mean"] is None else f"{r['macs_mean'] / 1e6:.3f}M"
        lines.append(f"| {r['config']} | {runs_cell} | {r.get('epochs', '')} | "
                     f"{_pm(r['accuracy_mean'], r['accuracy_std'], r['runs'])} | "
                     f"{_pm(r['drop_mean'], r['drop_std'], r['runs'])} | {macs} | {_fmt(r['macs_reduction_mean'], 2, 'x')} | "
                     f"{_fmt(r['params_reduction_mean'], 2, 'x')} | {'*' if r['pareto'] else ''} |")
    budgets = sorted({r["epochs"] for r in rows if r.get("epochs")}, key=lambda cell: int(cell.split("-")[0]))
    if len(budgets) > 1:
        lines += ["", (f"The configurations trained for different numbers of epochs ({', '.join(budgets)}): their "
                       "accuracies are not an equal-budget comparison. A method with a sparsify phase trains it on "
                       "top of the fine-tuning, and a method without one (l1, oneshot, ...) runs the oneshot schedule; "
                       "give each the same total (schedule.finetune_epochs) to compare them.")]
    failed = [r for r in runs if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed and interrupted runs" if any(r["status"] in ("interrupted", "running") for r in failed)
                  else "## Failed runs", ""]
        how = {"interrupted": " (interrupted)", "running": " (running, or killed)"}
        for r in failed:
            error = (r["error"] or "no error recorded").replace("\n", " ")
            lines.append(f"- `{r['dir']}`{how.get(r['status'], '')}: {error}")
            command = go_on_command(sweep_dir, r) if sweep_dir is not None and r["status"] in how else None
            if command is not None:  # (the same sweep command again goes on with it too)
                lines.append(("  - if it is no longer running, it goes on alone" if r["status"] == "running" else
                              "  - goes on alone") + f", in its folder, with: `{command}`")
    warned = [(r, (r.get("result") or {}).get("warnings") or []) for r in runs if r["status"] == "ok"]
    warned = [(r, said) for r, said in warned if said]
    if warned:  # counted above: finished, but with a warning that may explain its figures
        lines += ["", "## Finished runs that warned", ""]
        lines += [f"- `{r['dir']}`: {said[0]}" + (f" (and {len(said) - 1} more in its result.json)"
                                                   if len(said) > 1 else "") for r, said in warned]
    if missing:
        lines += ["", "## Runs that never started", "",
                  (f"{count_runs(len(missing))} of the sweep's grid {'has' if len(missing) == 1 else 'have'} no folder "
                   "(the sweep was stopped, or is still running); each runs alone, in a folder of the sweep where "
                   "this report finds it, with:"), ""]
        lines += [f"- job {m['job']} (`{' '.join(m['overrides'])}`): " + (
            f"`{m['command']}`" if m["command"] else "its folder holds a run of an earlier sweep (listed below), which "
            "the sweep command run again moves to .replaced/ before it runs the job") for m in missing]
    if strays:
        lines += ["", "## Runs in this folder that are not the sweep's (not counted)", ""]
        why = {"earlier_sweep": "an earlier sweep's: its choices are not those of the job its folder now stands for "
                                "(the sweep was run again in its folder with other values, which renumbers its jobs)",
               "not_a_job": "a run of its own: its folder is no job's of the sweep, and its choices are no job's"}
        lines += [f"- `{r['dir']}` ({why[r.get('stray', 'earlier_sweep')]}): "
                  f"`{' '.join(f'{k}={v}' for k, v in (_overrides(r) or {}).items())}`" for r in strays]
    return atomic_write_text(path, "\n".join(lines) + "\n")


def write_csv(rows: Sequence[dict], path: Path) -> Path:
    fields = ["config", "method", "runs", "failed", "epochs", "accuracy_mean", "accuracy_std", "drop_mean", "drop_std",
              "macs_mean", "macs_reduction_mean", "params_reduction_mean", "pareto", "comparison"]
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    # (float32 accuracies read back as 28.9000004529953: six decimals say all they hold)
    writer.writerows({**{k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()},
                      "config": row.get("config_given", row["config"])} for row in rows)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text.getvalue(), newline=""))


def _pyplot():
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError("the sweep plots need matplotlib: pip install 'lightning_ssr[plots]'") from err
    matplotlib.use("Agg")  # headless: files only
    import matplotlib.pyplot as plt

    return plt


def _method_colours(plt, rows: Sequence[dict]) -> dict:
    """One colour per method, the same in every plot of the report."""
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(sorted({r["method"] for r in rows if r["method"]}))}


def plot_pareto(rows: Sequence[dict], runs: Sequence[dict], path: Path, title: str) -> Path | None:
    """Test accuracy against MACs, a panel for each network and data set (:func:`comparison`);
    ``None`` (no plot) when no run finished with both."""
    finished = [(r["result"] or {}).get("pruned") or {} for r in runs if r["status"] == "ok"]
    if not any(p.get("accuracy") is not None and p.get("macs") for p in finished):
        return None
    plt = _pyplot()
    # (a network or data set none of whose runs finished has nothing to plot: no panel)
    compared = list(dict.fromkeys(r["comparison"] for r in rows if r["accuracy_mean"] is not None))
    fig, axes = plt.subplots(len(compared), 1, figsize=(7, 4.5 * len(compared)), squeeze=False)
    colour = _method_colours(plt, rows)
    by_dir = {str(r["dir"]): r for r in runs}
    for ax, panel in zip(axes[:, 0], compared, strict=True):
        mine = [r for r in rows if r["comparison"] == panel]
        for row in mine:
            members = [by_dir[d]["result"] for d in row["dirs"] if by_dir[d]["status"] == "ok"]
            members = [m for m in members if m["pruned"].get("accuracy") is not None and m["pruned"].get("macs")]
            ax.scatter([m["pruned"]["macs"] / 1e6 for m in members], [100 * m["pruned"]["accuracy"] for m in members],
                       color=colour.get(row["method"]), alpha=0.45, s=18)
        for method in colour:
            means = [r for r in mine if r["method"] == method and r["accuracy_mean"] is not None]
            if means:
                ax.scatter([r["macs_mean"] / 1e6 for r in means], [r["accuracy_mean"] for r in means],
                           facecolors="none", edgecolors=[colour[method]], s=70, linewidths=1.5, label=method)
        dense = [by_dir[d]["result"]["dense"] for r in mine for d in r["dirs"] if by_dir[d]["result"]
                 and by_dir[d]["result"].get("dense", {}).get("accuracy")]
        if dense:
            ax.scatter([statistics.fmean(d["macs"] for d in dense) / 1e6],
                       [100 * statistics.fmean(d["accuracy"] for d in dense)], marker="*", s=120, color="black",
                       label="dense (mean)")
        front = sorted((r["macs_mean"] / 1e6, r["accuracy_mean"]) for r in mine if r["pareto"])
        if front:
            # (a front of one point drew no line, though the legend listed it: a marker shows it: probe)
            ax.plot([p[0] for p in front], [p[1] for p in front], color="black", linewidth=1, linestyle="--",
                    marker="x" if len(front) == 1 else None, label="Pareto front")
        ax.set_xscale("log")  # pruned models span orders of magnitude below the dense one
        ax.set_xlabel("MACs (millions, log scale)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title if len(compared) == 1 else f"{title}: {panel}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_layers(result: Mapping, path: Path, title: str) -> Path:
    plt = _pyplot()
    layers = result.get("layers") or []
    if not layers:
        raise ValueError("the run has no per-layer table (it was not pruned)")
    names = [layer["name"] for layer in layers]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names) + 2), 4.2))
    xs = range(len(names))
    ax.bar(xs, [layer["before"] for layer in layers], color="lightgray", label="dense")
    ax.bar(xs, [layer["after"] for layer in layers], color="tab:blue", label="kept")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("filters / neurons")
    ax.set_yscale("log" if max(layer["before"] for layer in layers) > 20 * min(
        max(layer["after"], 1) for layer in layers) else "linear")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_structures(rows: Sequence[dict], runs: Sequence[dict], path: Path, title: str) -> Path | None:
    """Per layer, the fraction of filters each configuration keeps (mean over its seeds), one
    line per configuration, one panel per target: how the methods (and allocations) spread the
    same budget over the layers. ``None`` if no target has two configurations to compare."""
    by_dir = {str(r["dir"]): r for r in runs}
    by_target: dict[str, list[tuple[dict, list[dict]]]] = {}
    for row in rows:
        members = [by_dir[d]["result"] for d in row["dirs"] if by_dir[d]["status"] == "ok"]
        members = [m for m in members if m.get("layers") and m.get("target")]
        if members:  # (a panel for each target of each network and data set: their layers are their own)
            key = json.dumps([row["comparison"], members[0]["target"]], sort_keys=True)
            by_target.setdefault(key, []).append((row, members))
    if not any(len(chosen) > 1 for chosen in by_target.values()):
        return None
    plt = _pyplot()
    panels = sorted(by_target.items(), key=lambda kv: [-len(kv[1]), kv[0]])
    several = len({json.loads(key)[0] for key in by_target}) > 1
    width = max(6.5, 0.35 * max(len(chosen[0][1][0]["layers"]) for _, chosen in panels) + 3)
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, 3.9 * len(panels) + 0.9), squeeze=False)
    colour = _method_colours(plt, rows)  # a method's colour is the one pareto.png gives it
    styles = ("-", "--", ":", "-.")
    for ax, (key, chosen) in zip(axes[:, 0], panels, strict=True):
        compared, target = json.loads(key)
        names = [layer["name"] for layer in chosen[0][1][0]["layers"]]
        seen: dict[str, int] = {}
        for row, members in chosen:
            fractions = []
            for name in names:
                kept = [layer["after"] / layer["before"] for m in members for layer in m["layers"]
                        if layer["name"] == name and layer["before"]]
                fractions.append(statistics.fmean(kept) if kept else float("nan"))
            n = seen[row["method"]] = seen.get(row["method"], -1) + 1  # one method's allocations: a line style each
            ax.plot(range(len(names)), fractions, marker="o", color=colour.get(row["method"]), alpha=0.85,
                    linestyle=styles[n % len(styles)], label=row["config"])
        ax.set_yscale("log")
        ax.set_ylabel("filters kept / dense")
        ax.set_title(("target " + " ".join(f"{k}={v}" for k, v in target.items())
                      + (f", {compared}" if several else "")), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
    fig.suptitle(f"{title} (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _default_layers_run(rows: Sequence[dict], runs: Sequence[dict]) -> dict | None:
    """The first finished run of the cheapest configuration on the Pareto front."""
    by_dir = {str(r["dir"]): r for r in runs}
    for row in sorted((r for r in rows if r["pareto"]), key=lambda r: r["macs_mean"]):
        for d in row["dirs"]:
            if by_dir[d]["status"] == "ok":
                return by_dir[d]
    return None


def write_report(sweep_dir: str | Path, out_dir: str | Path | None = None, run: str | Path | None = None,
                 plots: bool = True) -> dict:
    """Aggregate every run under ``sweep_dir`` (see the module docstring); returns the rows and the
    paths written."""
    sweep_dir = Path(sweep_dir)
    out = Path(out_dir) if out_dir is not None else sweep_dir
    found = find_runs(sweep_dir)
    if not found and planned_jobs(sweep_dir) is None:  # (a grid whose jobs all wait: each listed with its command)
        raise FileNotFoundError(f"no runs under {str(sweep_dir)!r}: no result.json and no Hydra job folder")
    runs, strays = of_the_sweep(sweep_dir, found)
    chosen = None
    if plots and run is not None:  # (before anything is written: a run that cannot be plotted changes nothing)
        wanted = Path(run) if Path(run).is_absolute() else sweep_dir / run
        chosen = next((r for r in runs if r["dir"].resolve() == wanted.resolve()), None)
        plotted = [r for r in runs if r["status"] == "ok" and (r["result"] or {}).get("layers")]
        if chosen is None or chosen not in plotted:
            what = ("no run there" if chosen is None or chosen["result"] is None else
                    f"that run {chosen['status']}, so it has no per-layer table" if chosen["status"] != "ok" else
                    "that run pruned nothing, so it has no per-layer table")
            names = [str(r["dir"].relative_to(sweep_dir)) if r["dir"].is_relative_to(sweep_dir) else str(r["dir"])
                     for r in plotted]
            raise FileNotFoundError(f"--run {str(run)!r}: {what}; finished runs: {names[:8]}"
                                    + (f" and {len(names) - 8} more" if len(names) > 8 else ""))
    out.mkdir(parents=True, exist_ok=True)
    rows = summarize(runs, swept_keys(sweep_dir))
    missing = never_started(sweep_dir, runs, strays)
    title = f"Sweep {sweep_dir.name}"
    files = {"markdown": write_markdown(rows, runs, out / "report.md", title, missing, strays, sweep_dir),
             "csv": write_csv(rows, out / "report.csv")}
    if plots:
        pareto = plot_pareto(rows, runs, out / "pareto.png", f"{title}: accuracy against MACs")
        if pareto is not None:
            files["pareto"] = pareto
        structure = plot_structures(rows, runs, out / "structure.png", f"{title}: filters kept per layer")
        if structure is not None:
            files["structure"] = structure
        if run is None:
            chosen = _default_layers_run(rows, runs)
        if chosen is not None and chosen["result"].get("layers"):
            name = chosen["dir"].relative_to(sweep_dir) if chosen["dir"].is_relative_to(sweep_dir) else chosen["dir"]
            config = next((r["config"] for r in rows if str(chosen["dir"]) in r["dirs"]), chosen["result"]["method"])
            files["layers"] = plot_layers(chosen["result"], out / "layers.png",
                                          f"Surviving filters per layer: {config} (run {name})")
        if out.resolve() == sweep_dir.resolve():  # (in a folder of the user's own, --out, nothing is removed)
            for name in PLOTS:  # a plot this report has nothing for: an earlier sweep's there would pass for its own
                if out / name not in files.values():
                    (out / name).unlink(missing_ok=True)
    return {"rows": rows, "runs": runs, "missing": missing, "strays": strays, "files": files}


#: the plots a report writes (and removes when it has nothing to plot)
PLOTS = ("pareto.png", "structure.png", "layers.png")


def count_runs(n: int, noun: str = "run") -> str:
    """``1 run``, ``3 runs`` (or of another ``noun``)."""
    return f"{n} {noun}{'s' * (n != 1)}"


def unfinished(runs: Sequence[Mapping]) -> str:
    """``2 failed``, or ``1 failed, 1 interrupted`` (Ctrl-C or SIGTERM: its checkpoint goes on with
    it), ``, 1 running or killed`` (a ``result.json`` that never recorded its run's end)."""
    interrupted = sum(1 for r in runs if r["status"] == "interrupted")
    running = sum(1 for r in runs if r["status"] == "running")
    failed = sum(1 for r in runs if r["status"] not in ("ok", "interrupted", "running"))
    return (f"{failed} failed" + (f", {interrupted} interrupted" if interrupted else "")
            + (f", {running} running or killed" if running else ""))


def format_summary(report: Mapping) -> str:
    rows, runs = report["rows"], report["runs"]
    best = [r for r in rows if r["pareto"]]
    compared = list(dict.fromkeys(r["comparison"] for r in best))
    fronts = []
    for panel in compared:  # (a front for each network and data set: comparison)
        mine = sorted((r for r in best if r["comparison"] == panel), key=lambda r: r["macs_mean"])[:6]
        said = ", ".join(f"{r['config']} ({_fmt(r['accuracy_mean'])}% at {_fmt(r['macs_reduction_mean'], 1, 'x')})"
                         for r in mine)
        fronts.append(f"{panel}: {said}" if len(compared) > 1 else said)
    front = "; ".join(fronts)
    # (counted as report.md counts them: those that finished, then those that did not)
    lines = [f"{count_runs(sum(r['runs'] for r in rows))} finished, {unfinished(runs)}, "
             f"{count_runs(len(rows), 'configuration')}; "
             + (f"Pareto front: {front}" if front else "no finished run to compare")]
    if report.get("strays"):
        strays = report["strays"]
        whose = ("of an earlier sweep with other values" if all(r.get("stray") != "not_a_job" for r in strays) else
                 "not the sweep's (no job's folder and choices)" if all(r.get("stray") == "not_a_job" for r in strays)
                 else "not the sweep's (an earlier sweep's, or in no job's folder)")
        lines.append(f"{count_runs(len(strays))} in the folder {'is' if len(strays) == 1 else 'are'} {whose}, not "
                     f"counted: {report['files']['markdown']} lists them")
    if report.get("missing"):
        lines.append(f"{count_runs(len(report['missing']))} of the sweep's grid never started (the sweep was stopped, "
                     f"or is still running): {report['files']['markdown']} gives the command of each")
    lines += [f"wrote {p}" for p in report["files"].values()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightning-ssr-report", description="Compare every run of a sweep: a "
                                     "Markdown table, a CSV, a Pareto plot of accuracy against MACs and a "
                                     "per-layer filter plot.")
    parser.add_argument("sweep_dir", help="a multirun directory (or any folder holding result.json files)")
    parser.add_argument("--out", default=None, help="where to write the report (default: sweep_dir)")
    parser.add_argument("--run", default=None, help="the run whose per-layer filters to plot (a job folder, "
                        "relative to sweep_dir; default: the cheapest configuration on the Pareto front)")
    parser.add_argument("--no-plots", action="store_true", help="only the table and the CSV")
    args = parser.parse_args(argv)
    try:
        report = write_report(args.sweep_dir, args.out, args.run, plots=not args.no_plots)
    except (FileNotFoundError, ImportError, ValueError) as err:
        print(f"lightning-ssr-report: {err}", file=sys.stderr)
        return 2
    print(format_summary(report))
    return 1 if report["missing"] or any(r["status"] != "ok" for r in report["runs"]) else 0


try:  # the multirun's callback; Hydra is a dependency, but this module also works without it
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra-core is installed with the package
    _HydraCallback = object


def launched_rank() -> int:
    """The rank of this process among those a launcher started for one fit: Lightning's DDP
    launcher runs the command again for each other rank (``LOCAL_RANK``, ``NODE_RANK`` set), as
    do ``srun`` (``SLURM_PROCID``) and ``torchrun`` (``RANK``, ``GROUP_RANK``); 0 for the process a
    user started."""
    ranks = []
    for name in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "RANK", "GROUP_RANK"):
        try:
            ranks.append(int(os.environ.get(name, "0")))
        except ValueError:
            ranks.append(0)
    return max(ranks)


class SweepReport(_HydraCallback):
    """Hydra callback: write the sweep report when a multirun ends (``conf/config.yaml`` registers
    it under ``hydra.callbacks``). A report failure is printed, never raised: the runs are done."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if launched_rank() > 0:  # (a DDP rank Lightning launched runs the command, "-m" included: rank 0 reports)
            return
        try:  # counted first: the exit code says whether a run failed, with or without a report
            runs = of_the_sweep(sweep_dir, find_runs(sweep_dir))[0]
            LAST_SWEEP.update(dir=str(sweep_dir), runs=len(runs), failed=sum(r["status"] != "ok" for r in runs))
            print("\n" + format_summary(write_report(sweep_dir)))
        except Exception as err:  # noqa: BLE001 - the sweep's runs stand; say why there is no report
            print(f"no sweep report for {str(sweep_dir)!r}: {type(err).__name__}: {err}", file=sys.stderr)


#: the last sweep this process reported: ``dir``, ``runs``, ``failed`` (the command's exit code)
LAST_SWEEP: dict = {}


if __name__ == "__main__":
    sys.exit(main())
