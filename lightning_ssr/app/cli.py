"""The ``lightning-ssr`` command: dense baseline -> pruning (any registered method) -> fine-tune -> report.

Hydra composes the model, data, pruning method, target, schedule and trainer from the
package's configuration (``conf/`` in the repository, installed as ``lightning_ssr.conf``);
see the README's configuration reference. :func:`run` is the whole job: the default one of
:mod:`lightning_ssr.app.stages`, or a recipe (:mod:`lightning_ssr.app.recipes`) chosen by a
top-level section of the configuration. Everything is built (and validated) before any training
starts, and the run ends with ``result.json`` (a :class:`~lightning_ssr.report.PruningResult`)
and ``pruned.pt`` in the output directory.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import logging
import math
import os
import re
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from ..files import atomic_write_text
from ..latency import steady_allocator
from ..report import PruningResult
from ..targets import TARGET_KINDS
from ..validation import closest_name, some_names
from .console import quiet_lightning
from .recipes import recipe_for
from .stages import (
    EXPORT_FILES,
    REFUSED_BEFORE_TRAINING,
    RunInterrupted,
    Terminated,
    after_the_run_that_prunes,
    base_result,
    before_training,
    check_config,
    code_identity,
    compress,
    dense_accuracy,
    evaluate,
    export_model,
    failed_result,
    finish,
    installed_code,
    interruptions_held,
    print_final_table,
    rank_zero_print,
    resumed_dense_model,
    sigterm_raises,
    started_result,
    train_dense,
)
from .sweep import (
    GRID_SWEEPER,
    LAST_SWEEP,
    REPLACED_DIR,
    SweepReport,
    _overrides,
    _pairs,
    attempt_checkpoint,
    count_runs,
    flatten_config,
    grid_choices,
    launched_rank,
    planned_jobs,
)

#: The package that holds the configuration (``conf/`` in the repository).
CONFIG_MODULE = "lightning_ssr.conf"
#: The ``config_path`` Hydra is given.
CONFIG_PATH = f"pkg://{CONFIG_MODULE}"
#: The primary config's name.
CONFIG_NAME = "config"


def _config_dir() -> str:
    """The configuration directory on disk: the installed ``lightning_ssr.conf`` package, or
    ``conf/`` next to the package in a source checkout that was not installed."""
    spec = importlib.util.find_spec(CONFIG_MODULE)
    if spec is not None and spec.submodule_search_locations:
        return str(Path(next(iter(spec.submodule_search_locations))).resolve())
    return str(Path(__file__).resolve().parents[2] / "conf")


#: The configuration directory on disk (for ``hydra.initialize_config_dir``).
CONFIG_DIR = _config_dir()


def compose_config(overrides: Sequence[str] = (), config_name: str = CONFIG_NAME) -> DictConfig:
    """The job's configuration with command-line style ``overrides``, outside of a Hydra app
    (notebooks, tests): ``compose_config(["pruning=oneshot", "target.macs=0.25"])``."""
    from hydra.errors import ConfigCompositionException

    overrides = quote_path_overrides(overrides)
    try:
        return _compose(overrides, config_name)
    except ConfigCompositionException as err:
        if config_name == CONFIG_NAME:
            check_override_keys(overrides, err)  # a misspelled key: its closest names
        raise


def _compose(overrides: Sequence[str], config_name: str = CONFIG_NAME) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


#: Most combinations of a sweep's config-group choices :func:`check_override_keys` composes.
MAX_CHECKED_COMBINATIONS = 16


def check_override_keys(args: Sequence[str], cause: BaseException | None = None) -> None:
    """Refuse a setting on the command line that the configuration does not have
    (``pruning.rh=0.5``) with ``ValueError``: the closest settings that exist and those of its
    section, where Hydra's own message proposes adding it (``+pruning.rh=0.5``). Each combination
    of the config-group choices given (``pruning=ssr_l20,l1``: both) is composed and checked, up to
    :data:`MAX_CHECKED_COMBINATIONS`. What this cannot judge (Hydra's flags, another search path,
    a syntax error, a group it does not know) is left to Hydra."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException

    if any((a.startswith("-") and a not in ("-m", "--multirun")) or "searchpath" in a for a in args):
        return
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
        choices, keys, added = [], [], []
        for o in overrides:
            key = o.key_or_group
            if key == "hydra" or key.startswith("hydra.") or "/" in key or o.type == OverrideType.DEL:
                continue
            group = o.package is not None or ("." not in key and Path(CONFIG_DIR, key).is_dir())
            if group:
                values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
                choices.append([f"{o.get_key_element()}={_override_value(v)}" for v in values])
            elif o.type == OverrideType.CHANGE:
                keys.append(key)
            else:  # +key / ++key: added here, so a later key=value of it (or under it) is Hydra's to apply
                added.append(key)
    except HydraException:  # Hydra's parser says what is wrong with it
        return
    keys = [k for k in keys if not any(k == a or k.startswith(a + ".") for a in added)]
    if not keys:
        return
    for combination in itertools.islice(itertools.product(*choices), MAX_CHECKED_COMBINATIONS):
        try:
            cfg = _compose(combination)
        except HydraException:  # a bad choice: Hydra's message lists the options
            return
        for key in keys:
            try:  # (the choices named: those of the key's own group, e.g. pruning=l1 for pruning.lam)
                _check_key(cfg, key, " ".join(c for c in combination if _chooses_for(c, key)), cause)
            except ValueError:
                try:  # only what Hydra refuses too: a key it would set is not refused here
                    _compose([*combination, f"{key}=null"])
                except HydraException:
                    pass
                else:
                    continue
                raise


#: the launchers that run a sweep's jobs on this machine (their Trainers are checked before the first)
LOCAL_LAUNCHERS = (".BasicLauncher", ".JoblibLauncher")

#: Most runs of a grid sweep :func:`check_sweep_runs` checks before the first starts.
MAX_CHECKED_RUNS = 256


def check_sweep_runs(args: Sequence[str]) -> None:
    """Every run of a grid sweep (``-m``) checked before the first starts: a value its own checks
    would refuse as it starts (``target.macs=0.1,0``, a method's argument out of range, a schedule
    that ``trainer.max_epochs`` cuts short, ``module.lr=-1``, ``data.batch_size=0``, a Trainer
    argument) refuses the sweep now with ``ValueError``, naming the run as Hydra numbers it and its
    values, instead of failing after the runs before it trained. Only
    :func:`~.stages.check_settings` and :func:`~.stages.check_builds` (once for each distinct
    trainer, data and module settings) run here; what needs the data, the network or a checkpoint
    (a target below what the floors cost) is checked as each run starts. An Optuna search is
    checked near the ends of its space (:func:`_check_search`). Left to Hydra or to the runs:
    another sweeper or sweeps set in a config file, runs that load plugins, a syntax or
    composition error, and the runs past :data:`MAX_CHECKED_RUNS`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not any(a in ("-m", "--multirun") for a in args) or any(
            (a.startswith("-") and a not in ("-m", "--multirun")) or "searchpath" in a for a in args):
        return
    try:
        overrides = OverridesParser.create().parse_overrides([a for a in args if not a.startswith("-")])
    except HydraException:  # Hydra's parser says what is wrong with it
        return
    hydras = [o for o in overrides if o.key_or_group == "hydra" or o.key_or_group.startswith(("hydra.", "hydra/"))]
    search = _search_sweeper(overrides, hydras)
    if search is not None:  # an Optuna search: near the ends of its space, before the first trial
        _check_search(search, [o for o in overrides if o not in hydras], hydras)
        return
    if any(o.key_or_group.startswith(("hydra/sweeper", "hydra.sweeper")) for o in overrides):
        return  # another sweeper numbers (or picks) its runs otherwise
    found = grid_choices([o for o in overrides if o not in hydras])
    if found is None:
        return  # (shuffled, or an interval: not a fixed grid)
    grid, swept = found
    runs = math.prod(len(v) for v in grid.values())
    if runs > 32:  # (about 0.1 s a run: said where it takes seconds)
        which = (f"the sweep's {runs} runs" if runs <= MAX_CHECKED_RUNS else
                 f"the first {MAX_CHECKED_RUNS} of the sweep's {runs} runs (the others as each starts)")
        print(f"lightning-ssr: checking the settings of {which} before the first starts", flush=True)
    # (Hydra's own settings compose with each run: the launcher decides where its Trainer is made)
    _check_grid(grid, swept, [o.input_line for o in hydras if not o.is_sweep_override()])


#: where :func:`_check_search` checks an interval: this share of its width inside each end
INSIDE = 1e-3

#: the sweeper of Optuna's Hydra plugin (``hydra/sweeper=optuna``, ``+experiment=optuna_ssr``)
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


def _search_sweeper(overrides, hydras) -> DictConfig | None:
    """The sweeper settings (``hydra.sweeper``) of a command whose configuration chooses Optuna's
    search, composed once with each swept value at its first (an interval left out); ``None`` for
    another sweeper, or a command that does not compose (Hydra or the grid check says why)."""
    from hydra import compose, initialize_config_dir

    fixed = []
    for override in overrides:
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif override.is_discrete_sweep():
            try:
                fixed.append(f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}")
            except Exception:  # noqa: BLE001 - (a glob: only Hydra's config loader expands it)
                return None
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose(config_name=CONFIG_NAME, overrides=fixed, return_hydra_config=True)
        sweeper = cfg.hydra.get("sweeper") or {}
        return sweeper if sweeper.get("_target_") == OPTUNA_SWEEPER else None
    except Exception:  # noqa: BLE001 - Hydra's to say as it composes (the grid check names the run)
        return None


def _check_search(sweeper: DictConfig, overrides, hydras) -> None:
    """:func:`check_sweep_runs` for an Optuna search: its settings this command's objective needs
    (one value, the pruned model's validation accuracy, maximized; at least one trial), and its
    space (``hydra.sweeper.params`` and the command line's) just inside each end of each interval,
    at each end of a range and at each choice, composed as a trial is: a space whose trials near an
    end would have failed (``pruning.lam=interval(-2, -1)``) is refused before the first."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep, RangeSweep
    from hydra.errors import HydraException

    where = "hydra.sweeper"
    direction = sweeper.get("direction")
    if OmegaConf.is_list(direction) and len(direction) == 1:  # (one objective, as a list: the plugin reads it so)
        direction = direction[0]
    direction = getattr(direction, "name", direction)  # (the plugin's default is its enum, Direction.minimize)
    if direction != "maximize":
        raise ValueError(f"{where}.direction={direction}: each trial returns one value, its pruned model's validation "
                         "accuracy, which the search maximizes: give hydra.sweeper.direction=maximize. Nothing has run")
    trials = sweeper.get("n_trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"{where}.n_trials={trials}: a search runs at least one trial (an integer >= 1). "
                         "Nothing has run")
    parser = OverridesParser.create()
    space = {}
    for key, expression in (sweeper.get("params") or {}).items():
        try:
            space[str(key)] = parser.parse_override(f"{key}={expression}")
        except HydraException as err:
            raise ValueError(f"{where}.params.{key}={expression} is not a search space Hydra reads ({err}). "
                             "Nothing has run") from err
    fixed = []
    for override in overrides:
        if override.is_sweep_override():
            space[override.get_key_element()] = override
        else:
            fixed.append(override.input_line)
            space.pop(override.get_key_element(), None)  # (the command line fixes it for every trial)
    grid: dict[str, list[str]] = {}
    for key, override in space.items():
        value = override.value()
        if isinstance(value, IntervalSweep):
            low, high = value.start, value.end
            if "log" in value.tags and low <= 0:
                raise ValueError(f"{key}: a log interval starts above 0, got interval({low}, {high}). Nothing has run")
            # just inside each end, where trials may land (on the end itself, almost never: interval(0, 0.5) of a
            # target that refuses 0 is a search of valid targets: review)
            ends = ([low * (high / low) ** INSIDE, high * (low / high) ** INSIDE] if "log" in value.tags else
                    [low + (high - low) * INSIDE, high - (high - low) * INSIDE])
            ends = [f"{v:.6g}" for v in ends]
        elif isinstance(value, RangeSweep):
            values = list(override.sweep_string_iterator())
            ends = values[:1] + values[-1:] if len(values) > 1 else values
        elif override.is_sweep_override():
            ends = list(override.sweep_string_iterator())
        else:
            ends = [override.get_value_element_as_str()]
        grid[key] = [f"{key}={v}" for v in dict.fromkeys(str(v) for v in ends)]
    corners = math.prod(len(v) for v in grid.values())
    if corners > 32:  # (as a grid's: said where it takes seconds, and where the cap leaves some for the trials)
        which = (f"the search's {corners} corners of its space" if corners <= MAX_CHECKED_RUNS else
                 f"the first {MAX_CHECKED_RUNS} of the search's {corners} corners of its space (the others as each "
                 "trial starts)")
        print(f"lightning-ssr: checking the settings of {which} before the first trial", flush=True)
    _check_grid({**{o: [o] for o in fixed}, **grid}, set(grid), [o.input_line for o in hydras
                                                                 if not o.is_sweep_override()], search=True)


def _check_grid(grid: dict[str, list[str]], swept: set[str], hydras: Sequence[str] = (), search: bool = False) -> None:
    """:func:`check_sweep_runs`' check of each run of the grid, composed as Hydra will (``search``:
    the ends of an Optuna search's space, :func:`_check_search`)."""
    hardware = logging.getLogger("lightning.pytorch.utilities.rank_zero")  # (a Trainer made says its hardware:
    level = hardware.level  # the run will say it)
    hardware.setLevel(logging.WARNING)
    try:
        _check_each(grid, swept, hydras, search)
    finally:
        hardware.setLevel(level)


def _check_each(grid: dict[str, list[str]], swept: set[str], hydras: Sequence[str], search: bool) -> None:
    import itertools
    import warnings

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    from .stages import check_builds, check_settings, plainly

    built = set()  # (the trainer, data and module settings checked already)
    if search:  # (a search's trials are drawn: what is checked is its space's every end and choice)
        def which(values: str) -> str:
            return f"a trial of the search near the ends of its space ({values})"
        change = "change that value or narrow the search space (hydra.sweeper.params, or the command line's)"
    else:
        def which(values: str) -> str:
            return f"run {job} of the sweep ({values})"
        change = "change or drop that value"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for job, combination in enumerate(itertools.islice(itertools.product(*grid.values()), MAX_CHECKED_RUNS)):
            values = " ".join(c for c, k in zip(combination, grid) if k in swept)
            try:
                cfg = compose(config_name=CONFIG_NAME, overrides=[*combination, *hydras], return_hydra_config=True)
            except MissingConfigException as err:  # (a group's choice misspelled: Hydra's message, said now)
                # Hydra would fail there too, after writing the sweep's folder, which a report then reads as a
                # sweep whose runs never started
                said = " ".join(str(err).split("\nConfig search path:")[0].split())
                raise ValueError(f"{which(values or ' '.join(combination))} does not compose: "
                                 f"{said}. Nothing has run: {change}") from err
            except (HydraException, OmegaConfBaseException):  # Hydra's to say, as it composes the run
                return
            sweeper = cfg.hydra.get("sweeper") or {}
            if not search and (sweeper.get("_target_") != GRID_SWEEPER or sweeper.get("params")):
                return  # (an experiment's config chose the sweeper, or sweeps of its own)
            if cfg.get("plugins"):
                continue  # (checked as it starts, once its plugins are loaded)
            try:
                with warnings.catch_warnings():  # (the run says them itself)
                    warnings.simplefilter("ignore")
                    check_settings(cfg)
                    builds = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, ["trainer", "data", "module"]), resolve=True)
                    if builds not in built:
                        # (a launcher that runs the jobs elsewhere, SLURM's: their Trainer is theirs to make, on
                        # nodes whose devices this one may not have)
                        check_builds(cfg, trainer=str(cfg.hydra.launcher.get("_target_", "")).endswith(LOCAL_LAUNCHERS))
                        built.add(builds)
            except OmegaConfBaseException:
                continue  # a value that resolves only inside its job (${hydra:job.num}, ${oc.env:...} on a node)
            except Exception as err:
                said = plainly(err)
                text = str(said) if str(said).endswith((".", "!", "?")) else f"{said}."
                raise ValueError(f"{which(values)} would be refused as it starts: "
                                 f"{type(said).__name__}: {text} Nothing has run: {change}") from err


def _chooses_for(choice: str, key: str) -> bool:
    """Whether the group choice ``choice`` (``pruning=l1``, ``data@adaptation.target=mnist``) puts
    the config that holds ``key``: its package (after ``@``), else its group."""
    group = choice.split("=", 1)[0]
    where = group.split("@", 1)[1] if "@" in group else group
    return key == where or key.startswith(where + ".")


def _check_key(cfg: DictConfig, key: str, choices: str, cause: BaseException | None) -> None:
    node, parts = cfg, key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, DictConfig):  # a list's index or a value's field: Hydra's to judge
            return
        names = [str(k) for k in node]  # (a mandatory value, "???", is one; "in" would not say so)
        if part not in names:
            if i == 1 and parts[0] == "target" and part in TARGET_KINDS:  # (target=macs has no latency key)
                now = [f"target.{k}" for k in TARGET_KINDS if node.get(k) is not None]
                raise ValueError(f"{key} is not a setting of this target: a {part} target is chosen with its "
                                 f"group, target={part} {key}=..." + (f" (the target now sets {', '.join(now)})"
                                                                       if now else "")) from cause
            section = ".".join(parts[:i])
            owners = _experiments_with(part) if i == 0 else []
            if owners:  # (a recipe's section, asked for without its experiment: "did you mean trainer?")
                raise ValueError(f"{key}: {part} is a section of the experiment"
                                 f"{'s' if len(owners) > 1 else ''} {', '.join(owners)}; choose one first, "
                                 f"+experiment={owners[0]} {key}=...") from cause
            close = closest_name(part, names)
            hint = f"did you mean {'.'.join([*parts[:i], close])}? " if close else ""
            where = f" with {choices}" if choices else ""
            raise ValueError(f"{key} is not a setting of the configuration{where} ({hint}"
                             f"{section or 'its top level'} has {', '.join(names)}); a key of your own is added "
                             f"with a '+': +{key}=...") from cause
        node = node._get_node(part)


def _experiments_with(section: str) -> list[str]:
    """The experiments (``conf/experiment/*.yaml``) whose configuration adds the top-level
    ``section`` (``transfer``, ``adaptation``)."""
    import yaml

    owners = []
    for path in sorted((Path(CONFIG_DIR) / "experiment").glob("*.yaml")):
        try:
            keys = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(keys, dict) and section in keys:
            owners.append(path.stem)
    return owners


#: Keys whose values are file paths, which may contain "=" (Lightning names checkpoints
#: "epoch=3-step=120.ckpt"): their values are quoted for Hydra's override parser.
PATH_KEYS = ("ckpt_path",)


def quote_path_overrides(overrides: Sequence[str]) -> list[str]:
    """Quote the value of ``ckpt_path=...`` when it holds an ``=`` and is not quoted yet, so that
    ``ckpt_path=outputs/run/epoch=3-step=120.ckpt`` works as typed."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.lstrip("+~") in PATH_KEYS and "=" in value and value[:1] not in "'\"":
            item = f"{key}='" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
        out.append(item)
    return out


def load_plugins(paths: Sequence[str]) -> list[str]:
    """Import each of ``paths`` (``plugins:`` in the configuration): a module name, or the path of a
    ``.py`` file. A plugin registers what it adds when it is imported (a pruning method with
    :func:`lightning_ssr.methods.register_method`, a recipe with
    :func:`lightning_ssr.app.recipes.register_recipe`). Returns the modules' names."""
    names = []
    for item in paths or []:
        try:
            names.append(_load_plugin(str(item)))
        except Exception as err:  # the plugin's own error (a syntax error, a name already registered): its file named
            if not getattr(err, REFUSED_BEFORE_TRAINING, False):
                where = _raised_at(err)
                err.add_note(f"(raised while loading the plugin {str(item)!r}{where}: mend it there, or leave it out "
                             "of plugins)")
                setattr(err, REFUSED_BEFORE_TRAINING, True)
            raise
    return names


def _raised_at(err: BaseException) -> str:
    """Where a plugin's error was raised, for its one-line refusal: ``, at <file>, line <n>`` of the
    innermost frame in code of your own (not the import machinery, this package, the standard
    library or an installed package); '' for a SyntaxError, whose message says it."""
    if isinstance(err, SyntaxError):
        return ""
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not f.filename.startswith("<") and not installed_code(Path(f.filename))]
    if not frames:
        return ""
    frame = frames[-1]
    return f", at {frame.filename}, line {frame.lineno}" + (f": {frame.line}" if frame.line else "")


def _load_plugin(item: str) -> str:
    """:func:`load_plugins` of one plugin; returns its module's name."""
    if item.endswith(".py"):
        path = Path(item).expanduser().resolve()
        if not path.is_file():
            with before_training():  # a one-line refusal
                raise FileNotFoundError(f"plugins: no file {item!r}")
        name = f"lightning_ssr_plugin_{path.stem}"
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        # its file's name reaches it too (model._target_=my_models.build), where no other module has
        # it (the same file, found on sys.path, is not imported a second time)
        if path.stem.isidentifier() and path.stem not in sys.modules:
            found = importlib.util.find_spec(path.stem)
            if found is None or (found.origin and Path(found.origin).resolve() == path):
                sys.modules[path.stem] = sys.modules[name]
    else:
        try:
            importlib.import_module(item)
        except ModuleNotFoundError as err:
            if err.name is None or not (item == err.name or item.startswith(err.name + ".")):  # raised inside the plugin: its own traceback
                raise
            here = " (a file in this folder: plugins=[" + item.replace(".", "/") + ".py])" if Path(
                item.replace(".", "/") + ".py").is_file() else ""
            with before_training():
                raise ModuleNotFoundError(f"plugins: cannot import {item!r} ({err}); give an importable module "
                                          f"name or the path of a .py file{here}") from err
        name = item
    return name


#: set on an error of a run that stopped before training in a folder that held an earlier run's
#: ``result.json``: that record was written back (the path), not replaced by this run's failure
KEPT_RECORD = "lightning_ssr_kept_record"


def _earlier_record(output_dir: Path) -> bytes | None:
    """The ``result.json`` ``output_dir`` holds before a run starts there (an interrupted run a
    resume means to go on with, a finished one), as it is on disk; ``None`` where there is none."""
    try:
        return (output_dir / "result.json").read_bytes()
    except OSError:
        return None


#: in ``config`` of the record of a run refused before it trained (:func:`_record_stop`)
REFUSED_MARK = "refused_before_training"


def _worth_keeping(record: bytes) -> bool:
    """Whether an earlier ``result.json`` records a run that trained: any status but a failure
    before training (marked ``config[REFUSED_MARK]``; a failure of an earlier version, unmarked,
    by the stages it timed)."""
    try:
        data = json.loads(record)
    except ValueError:
        data = None
    if not isinstance(data, dict):  # (unreadable: no status, so not a failure to replace)
        return True
    config, timings = data.get("config"), data.get("timings")
    marked = isinstance(config, dict) and isinstance(config.get(REFUSED_MARK), bool)
    if data.get("status") == "interrupted":  # (a Ctrl-C during the checks is marked as stopped before training)
        return not (marked and config[REFUSED_MARK])
    if data.get("status") != "failed":
        return True
    if marked:
        return not config[REFUSED_MARK]
    return isinstance(timings, dict) and any(k in timings for k in ("dense_s", "compress_s"))


#: how long rank 0, whose error is a broken connection, waits for the failed rank's own error
PEER_ERROR_WAIT_S = 5.0


def save_failure(failed: PruningResult, err: BaseException, path: Path) -> None:
    """The record of a failed run (``result.json``), once, by rank 0 (every rank wrote its own over
    the others'). Under DDP another rank leaves its error beside it (``.rank<N>.error``), and rank 0,
    whose own error is then often only the connection the failed rank broke (gloo's "Connection
    closed by peer"), records that rank's error first (review: the record held the broken connection
    alone, the cause only in the failed rank's output)."""
    rank = rank_zero_only.rank
    if rank != 0:
        with contextlib.suppress(OSError):
            atomic_write_text(path.parent / f".rank{rank}.error", failed.error or f"{type(err).__name__}: {err}")
        return
    found = sorted(path.parent.glob(".rank*.error"))  # (any other rank's that failed: said, and not left behind)
    deadline = time.monotonic() + PEER_ERROR_WAIT_S
    while not found and PEER_LOST.search(str(err)) and time.monotonic() < deadline:
        time.sleep(0.1)
        found = sorted(path.parent.glob(".rank*.error"))
    if found:
        said = []
        for file in found:
            with contextlib.suppress(OSError):
                said.append(f"{file.name[1:-len('.error')].replace('rank', 'rank ')}: {file.read_text().strip()}")
                file.unlink()
        if said:
            failed.error = "; ".join(said) + f" (then rank 0: {failed.error})"
    failed.save(path)


def _record_stop(cfg: DictConfig, err: BaseException, start: tuple[float, float], output_dir: Path,
                 earlier: bytes | None, before: bool) -> None:
    """``result.json`` for a run that failed or was interrupted: its failure, except for a run that
    stopped ``before`` training in a folder that held an earlier run's record (a resume refused, or
    given the wrong folder, erased the interrupted run it meant to go on with, and a sweep then set
    that run aside): that record is written back, unchanged, and ``err`` says so (:data:`KEPT_RECORD`).
    An earlier failure before any training is replaced (its error would be given as this run's); one
    after training (a run that ended unpruned, or failed in its evaluation: a run to go on with) is kept."""
    path = output_dir / "result.json"
    if before and earlier is not None and _worth_keeping(earlier):
        if rank_zero_only.rank == 0:
            path.write_bytes(earlier)
        setattr(err, KEPT_RECORD, str(path))
        return
    failed = failed_result(cfg, err, {"total_s": time.perf_counter() - start[0]})
    failed.config["started_at"] = start[1]  # (the wall-clock time it started: the running record's)
    failed.config[REFUSED_MARK] = before  # (a later run refused before training keeps this record unless it is one)
    save_failure(failed, err, path)


def run(cfg: DictConfig, output_dir: str | os.PathLike) -> PruningResult:
    """The whole job: check the config, dense model, pruning + fine-tuning, evaluation, files,
    ``result.json``. A failure still writes ``result.json`` (``status: failed``, the error); until
    the run ends, it says ``status: running`` (:func:`started_result`)."""
    start, began = time.perf_counter(), time.time()  # (the duration's clock; the record's time of the start)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    earlier = _earlier_record(output_dir)
    if rank_zero_only.rank == 0:  # what a killed run leaves: its configuration, unfinished
        started_result(cfg, began).save(output_dir / "result.json")
    try:
        load_plugins(cfg.get("plugins") or [])
        recipe = recipe_for(cfg)  # (two recipes' sections: refused, recorded as such, not left "running": probe)
    except (Exception, KeyboardInterrupt) as err:  # (a Ctrl-C while a plugin imports: stopped before training)
        setattr(err, REFUSED_BEFORE_TRAINING, True)
        with interruptions_held(interrupted=isinstance(err, KeyboardInterrupt)):
            _record_stop(cfg, err, (start, began), output_dir, earlier, before=True)
        raise
    if recipe is not None:
        try:
            result = recipe.run(cfg, output_dir)
        except (Exception, KeyboardInterrupt) as err:  # an interrupted run is recorded too
            with interruptions_held(isinstance(err, KeyboardInterrupt)):
                _record_stop(cfg, err, (start, began), output_dir, earlier, before=getattr(err, REFUSED_BEFORE_TRAINING, False))
            raise
        return finish(result, output_dir, start, recipe.summary(result))
    try:
        callback, dm = check_config(cfg, resumes_the_module=True)  # a bad value fails here, before any training
    except (Exception, KeyboardInterrupt) as err:
        # a sweep's report lists this run as failed, with the reason
        with interruptions_held(isinstance(err, KeyboardInterrupt)):
            _record_stop(cfg, err, (start, began), output_dir, earlier, before=True)
        raise
    timings: dict[str, float] = {}
    net = lm = None
    if cfg.latency.batch_sizes or cfg.target.get("latency") is not None:
        steady_allocator()  # this job times models: keep the allocator from moving their times
    try:
        net, dense_info = train_dense(cfg, dm, output_dir, resumed_dense_model(cfg))
        timings["dense_s"] = dense_info["seconds"]
        t = time.perf_counter()
        lm, callback = compress(cfg, net, dm, output_dir, callback, dense_info["cache"]["path"])
        timings["compress_s"] = time.perf_counter() - t
        result = base_result(cfg, lm, callback, dm)
        print_final_table(result, callback)
        t = time.perf_counter()
        metrics = evaluate(cfg, dm, net, lm.model, dense_accuracy(cfg, net, dm, dense_info["cache"]["path"]))
        timings["evaluate_s"] = time.perf_counter() - t
        files = export_model(cfg, lm, callback, dm, output_dir)
        result.dense.update(metrics["dense"], cache=dense_info["cache"])
        result.pruned.update(metrics["pruned"], **files)
        result.machine["latency_load"] = metrics["latency_load"]
    except (Exception, KeyboardInterrupt) as err:
        with interruptions_held(isinstance(err, KeyboardInterrupt)):  # (nor a Ctrl-C cut the record short)
            timings["total_s"] = time.perf_counter() - start
            resumable = after_the_run_that_prunes(err, lm) if "compress_s" in timings else None
            failed = failed_result(cfg, resumable or err, timings, lm, callback, dm)
            failed.config["started_at"] = began
            save_failure(failed, err, output_dir / "result.json")
        if resumable is not None:
            raise resumable from err
        raise
    result.timings.update(timings)
    return finish(result, output_dir, start)


def finished_before(cfg: DictConfig, output_dir: Path) -> PruningResult | None:
    """The result a sweep's job folder already holds for this very configuration, finished
    (``status: ok``): a sweep run again in the same ``hydra.sweep.dir`` (after Ctrl-C, or with
    values added to its first swept key, whose jobs come last) goes on with the runs it lacks
    instead of training every run again. (Other added values renumber the jobs: their folders'
    runs are set aside, :func:`set_aside_other_run`, and each job takes back a finished run of
    its configuration from where it was left, :func:`recover_finished_run`.)"""
    found = _recorded_run(cfg, output_dir)
    if found is None:
        return None
    result, differ = found
    # and the same code: a plugin file edited since (or another version of this package) runs it again
    return result if result.status == "ok" and not differ and result.config.get("code") == code_identity(cfg) else None


def interrupted_checkpoint(cfg: DictConfig, output_dir: Path) -> Path | None:
    """For a sweep's job run again: the newest intact checkpoint of the interrupted (or killed:
    ``running``) run of this very configuration and code that ``output_dir`` holds, to go on from;
    ``None`` where there is none, or the job is given a ``ckpt_path`` of its own."""
    if cfg.get("ckpt_path") is not None:
        return None
    found = _recorded_run(cfg, output_dir)
    if found is None:
        return None
    result, differ = found
    if result.status not in ("interrupted", "running") or differ or result.config.get("code") != code_identity(cfg):
        return None
    return attempt_checkpoint(output_dir, result.to_dict())


def recover_finished_run(cfg: DictConfig, output_dir: Path, sweep_dir: Path,
                         siblings: bool = True) -> tuple[PruningResult, Path] | None:
    """A finished run of this very configuration and code that a sweep run again with other values
    left elsewhere in its folder, moved into this job's ``output_dir`` so that it is not trained
    again; returns its result and where it was. It is looked for under ``.replaced/`` (where a job
    set it aside) and, with ``siblings`` (a launcher that runs one job at a time), in the folder of
    another job number that this sweep's job of that number has not written (its recorded
    overrides are not the job's planned ones): the duplicate of a value, or a job running beside
    this one, is never taken. ``None`` where there is none, or where ``output_dir`` holds a run of
    its own (a failed or interrupted one goes on from its checkpoint)."""
    if (output_dir / "result.json").exists() or output_dir.resolve() == sweep_dir.resolve():
        return None
    places = sorted(p for p in sweep_dir.glob(f"{REPLACED_DIR}/*/result.json") if not p.parent.name.startswith("."))
    planned = planned_jobs(sweep_dir) if siblings else None
    if planned is not None:
        jobs = planned[1]
        for path in sorted(sweep_dir.glob("*/result.json")):
            folder = path.parent
            if folder.resolve() == output_dir.resolve() or not folder.name.isdigit():
                continue
            number = int(folder.name)
            written = _overrides({"dir": folder})
            if number < len(jobs) and written is not None and _pairs(jobs[number]) <= set(written.items()):
                continue  # (this sweep's own job of that number wrote it; resumed alone, with ckpt_path= too)
            places.append(path)
    for path in places:
        result = finished_before(cfg, path.parent)
        if result is None:
            continue
        source = path.parent
        for item in sorted(source.iterdir()):  # (not its .hydra: this job's own is there)
            if item.name != ".hydra" and not (output_dir / item.name).exists():
                item.rename(output_dir / item.name)
        if REPLACED_DIR not in source.relative_to(sweep_dir).parts:  # a job's folder: its rest set aside
            (sweep_dir / REPLACED_DIR).mkdir(exist_ok=True)
            rest = Path(tempfile.mkdtemp(prefix=f"{source.name}-{time.strftime('%Y%m%dT%H%M%S')}-",
                                         dir=sweep_dir / REPLACED_DIR))
            for item in source.iterdir():
                item.rename(rest / item.name)
            source.rmdir()
        return _rehome(output_dir, source), source
    return None


def _rehome(folder: Path, written_in: Path) -> PruningResult:
    """The ``result.json`` moved into ``folder`` from ``written_in`` with its paths (the pruned
    model's, the export's, the checkpoint it was resumed from) under ``folder``: those under
    ``written_in`` (as given or resolved) and
    those of a record moved before without this (under the folder its pruned model was saved in)."""
    result = PruningResult.load(folder / "result.json")
    olds = {written_in, written_in.resolve()}
    saved = result.pruned.get("checkpoint")
    if isinstance(saved, str) and (folder / Path(saved).name).is_file():
        olds.add(Path(saved).parent)
    for old in olds:
        result.pruned = _moved_paths(result.pruned, old, folder)
        if isinstance(result.config.get("cli"), dict):  # (a run resumed from a checkpoint in its folder)
            result.config["cli"] = _moved_paths(result.config["cli"], old, folder)
    result.save(folder / "result.json")
    return result


def _moved_paths(value, old: Path, new: Path):
    """``value`` (a result's section) with each path under ``old`` put under ``new``."""
    if isinstance(value, dict):
        return {k: _moved_paths(v, old, new) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(f"{old}{os.sep}"):
        return str(new / Path(value).relative_to(old))
    return value


def _recorded_run(cfg: DictConfig, output_dir: Path) -> tuple[PruningResult, list[str]] | None:
    """The run ``output_dir/result.json`` records, and the configuration keys in which it differs
    from ``cfg`` (``ckpt_path`` aside: a run finished from its checkpoint counts); ``None`` where
    there is none that can be read."""
    path = output_dir / "result.json"
    if not path.is_file():
        return None
    try:
        result = PruningResult.load(path)
        done, now = dict(result.config.get("cli") or {}), OmegaConf.to_container(cfg, resolve=True)
        done.pop("ckpt_path", None)
        now.pop("ckpt_path", None)
        # as written to JSON, types included: Python's 1 == 1.0 == True would take limit_train_batches=1
        # (one batch) for 1.0 (all of them)
        done, now = flatten_config(done), flatten_config(json.loads(json.dumps(now, default=str)))
        differ = [k for k in sorted(set(done) | set(now))
                  if json.dumps(done.get(k), sort_keys=True) != json.dumps(now.get(k), sort_keys=True)]
    except (ValueError, TypeError, OmegaConfBaseException):  # unreadable, or an interpolation that fails now
        return None
    return result, differ


#: what a run writes in its folder, beside Hydra's files and its log: all a single run given the folder
#: of another sets aside (:func:`set_aside_other_run`)
RUN_FILES = ("result.json", "pruned.pt", *EXPORT_FILES, "logs",
             "lightning_logs", "dense", "dann_dense", "dense_finetune", "source", "target_trained")


def set_aside_other_run(cfg: DictConfig, output_dir: Path, sweep_dir: Path, job: int | str,
                        keep: Sequence[str] = (".hydra",), alone: bool = False) -> tuple[str, Path] | None:
    """Move what ``output_dir`` holds of a run that this job would write over (its ``result.json``,
    pruned model, logs and checkpoints; not ``keep``, what Hydra has written for this job) to a new
    folder under ``<sweep_dir>/.replaced/``; returns why, and that folder. Such a run is one of
    another configuration (a sweep run again in its folder with other values numbers its jobs
    anew; or a setting or a version of this package that adds a key), or a finished one of this
    configuration made by other code. A failed or interrupted run of this configuration stays (a
    resume goes on from its checkpoint). ``alone``: a single run, its ``.replaced/`` in its own
    folder (``sweep_dir`` is ``output_dir``), which moves only what a run writes there
    (:data:`RUN_FILES`, logs), and nothing (``(why, None)``) where the folder holds other files too
    (a run in a project's own folder, ``hydra.run.dir=.``), nor a record of a run refused before
    training, which the run replaces. Where a move fails, what was moved goes back."""
    found = _recorded_run(cfg, output_dir)
    if found is None or (output_dir.resolve() == sweep_dir.resolve() and not alone):  # (hydra.sweep.subdir=.)
        return None
    result, differ = found
    if differ:
        why = f"a run ({result.method}, {result.status}) of another configuration (it differs in {some_names(differ, 3)})"
    elif result.status == "ok" and result.config.get("code") != code_identity(cfg):
        why = f"a finished run ({result.method}) of this configuration made by other code (package or plugin files)"
    else:
        return None
    items = [item for item in output_dir.iterdir()
             if item.name not in (*keep, REPLACED_DIR, "multirun.yaml") and not _open_log(item)]
    if alone:
        if not _worth_keeping((output_dir / "result.json").read_bytes()):
            return None
        if any(item.name not in RUN_FILES and item.suffix != ".log" for item in items):
            return why, None
    record = (output_dir / "result.json").read_bytes()
    (sweep_dir / REPLACED_DIR).mkdir(parents=True, exist_ok=True)
    name = f"{job}-{time.strftime('%Y%m%dT%H%M%S')}-"
    moving = Path(tempfile.mkdtemp(prefix=f".{name}", dir=sweep_dir / REPLACED_DIR))  # (hidden until whole)
    moved = []
    aside = moving.with_name(moving.name[1:])
    try:
        with interruptions_held(interrupted=False):  # (a Ctrl-C waits for the move and is raised after it)
            try:
                for item in items:
                    item.rename(moving / item.name)
                    moved.append(item)
                moving.rename(aside)  # (one rename: a job beside this one never takes a run half moved)
            except BaseException:  # (an error: nothing half moved, the folder is as it was)
                for item in moved:
                    with contextlib.suppress(OSError):
                        (moving / item.name).rename(item)
                with contextlib.suppress(OSError):
                    moving.rmdir()
                raise
            if (aside / "result.json").is_file():
                try:  # (its paths follow it: the folder it left holds another run's model next)
                    _rehome(aside, output_dir)
                except (OSError, ValueError):
                    pass
    except (KeyboardInterrupt, Terminated):  # (came during the move: the run stops, its folder as it was)
        if aside.is_dir():
            with interruptions_held(), contextlib.suppress(OSError):
                _put_back(aside, output_dir, record)
        raise
    return why, aside


def _put_back(aside: Path, output_dir: Path, record: bytes) -> None:
    """Undo :func:`set_aside_other_run` for a run refused before training: what ``aside`` holds
    goes back into ``output_dir``, and its ``result.json`` is ``record`` again, as it was."""
    for item in aside.iterdir():
        item.replace(output_dir / item.name)
    aside.rmdir()
    with contextlib.suppress(OSError):  # (the folder it was made in, unless it holds others)
        aside.parent.rmdir()
    (output_dir / "result.json").write_bytes(record)


def _open_log(path: Path) -> bool:
    """Whether a logging handler of this process writes to ``path`` now (a delayed file handler
    opens its file at the first record: before, the file is an earlier run's)."""
    handlers = [h for logger in (logging.getLogger(), *logging.Logger.manager.loggerDict.values())
                for h in getattr(logger, "handlers", [])]
    return any(isinstance(h, logging.FileHandler) and h.stream is not None
               and Path(h.baseFilename).resolve() == path.resolve() for h in handlers)


def _end_process_group() -> None:
    """A run under DDP leaves its process group at the end (each rank its own): gloo's threads,
    left running, can abort the process as it exits ('terminate called without an active
    exception')."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


#: the settings that name a file or folder (besides ``plugins``' files)
PATH_SETTINGS = ("ckpt_path", "data.root", "dense.cache_dir", "transfer.source.root", "adaptation.target.root")


def paths_from(cfg: DictConfig, folder: str | os.PathLike) -> None:
    """The relative paths of ``cfg`` (:data:`PATH_SETTINGS`, and the ``.py`` files or paths among
    ``plugins``) made absolute from ``folder``, in place: with ``hydra.job.chdir=True`` a job runs
    in its output folder, where ``ckpt_path=e3.ckpt`` was "no such file", ``data.root=fm`` a data
    set to install and ``plugins=[myplug.py]`` "no file", though each was in the folder the command
    was started in (probe)."""
    def absolute(value):
        if isinstance(value, str) and value and not os.path.isabs(value) and not value.startswith(("~", "${")):
            return os.path.join(os.fspath(folder), value)
        return value

    with open_dict(cfg):
        for key in PATH_SETTINGS:
            value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
            if isinstance(value, str) and absolute(value) != value:
                OmegaConf.update(cfg, key, absolute(value), merge=False)
        if cfg.get("plugins"):
            cfg.plugins = [absolute(p) if isinstance(p, str) and (p.endswith(".py") or "/" in p) else p
                           for p in cfg.plugins]


@hydra.main(version_base="1.3", config_path=CONFIG_PATH if importlib.util.find_spec(CONFIG_MODULE) else CONFIG_DIR,
            config_name=CONFIG_NAME)
def _hydra_main(cfg: DictConfig) -> float | None:
    """One job. Returns the pruned model's validation accuracy: the objective a sweeper such as
    Optuna maximizes (``None`` for a failed run in a multirun, which a sweeper counts as failed)."""
    return _to_the_search(HydraConfig.get(), _job(cfg))


#: a collective's error where another rank of the fit ended (gloo's, NCCL's)
PEER_LOST = re.compile(r"Connection closed by peer|Connection reset by peer|remote worker|NCCL communicator was aborted")


#: what this process's jobs returned to an Optuna search, in order (``None``: the run failed)
SEARCH_RETURNS: list[float | None] = []


def _to_the_search(hydra_cfg: DictConfig, value: float | None) -> float | None:
    """``value``, the job's objective, for the sweeper. An Optuna search whose every trial failed
    ends after its last in the plugin's traceback ("No trials are completed yet"): the command ends
    there instead, with the sweep's report (its runs and their errors) and exit code 1. Only where
    that is known here: a study of this command alone (no ``storage``, which may hold trials of an
    earlier search) whose trials run one by one in this process (Hydra's basic launcher)."""
    sweeper = hydra_cfg.get("sweeper") or {}
    if hydra_cfg.mode != RunMode.MULTIRUN or sweeper.get("_target_") != OPTUNA_SWEEPER or launched_rank() > 0:
        return value
    SEARCH_RETURNS.append(value)
    trials = sweeper.get("n_trials")
    if (value is None and sweeper.get("storage") is None and isinstance(trials, int) and len(SEARCH_RETURNS) >= trials
            and all(v is None for v in SEARCH_RETURNS)
            and str(hydra_cfg.launcher.get("_target_", "")).endswith(".BasicLauncher")):
        sweep_dir = Path(hydra_cfg.runtime.cwd) / hydra_cfg.sweep.dir  # (hydra.job.chdir=true: the job is in its own)
        SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
        report = sweep_dir / "report.md"
        listed = f"{report} lists them with their errors" if report.exists() else f"their folders are in {report.parent}"
        raise SystemExit(f"lightning-ssr: every one of the search's {len(SEARCH_RETURNS)} trials failed, so it has "
                         f"no best parameters (no optimization_results.yaml); {listed}")
    return value


def _job(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    quiet_lightning()  # (again: a launcher's worker process, joblib's, runs the job outside main())
    if hydra_cfg.job.get("chdir"):  # (the job runs in its output folder: paths given are the launch folder's)
        paths_from(cfg, hydra_cfg.runtime.cwd)
    sweeper = str((hydra_cfg.get("sweeper") or {}).get("_target_", ""))
    if hydra_cfg.mode != RunMode.MULTIRUN and sweeper and sweeper != GRID_SWEEPER and launched_rank() == 0:
        # (an experiment that chose a search, run without -m: one run of its defaults, silently otherwise)
        print(f"lightning-ssr: this configuration's sweeper ({sweeper.rsplit('.', 1)[-1]}) searches only with -m; "
              "this is one run of its defaults", file=sys.stderr)
    alone = None  # a single run's folder that held another run, set aside: (why, where)
    if hydra_cfg.mode != RunMode.MULTIRUN and cfg.get("ckpt_path") is None and launched_rank() == 0:
        # a single run given the folder of another (hydra.run.dir=...): its files are set aside, as a sweep's
        # are, and put back where this run is refused before training (which changes nothing)
        output_dir = Path(hydra_cfg.runtime.output_dir)
        record = _earlier_record(output_dir)
        try:
            alone = set_aside_other_run(cfg, output_dir, output_dir, "run",
                                        keep=(".hydra", str(hydra_cfg.output_subdir or ".hydra")), alone=True)
        except OSError as err:
            print(f"lightning-ssr: {output_dir} holds an earlier run that could not be moved aside "
                  f"({type(err).__name__}: {err}); nothing has run: give the run another hydra.run.dir",
                  file=sys.stderr)
            sys.exit(1)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        output_dir = Path(hydra_cfg.runtime.output_dir)
        try:
            replaced = set_aside_other_run(cfg, output_dir, Path(hydra_cfg.sweep.dir), hydra_cfg.job.num)
        except OSError as err:  # this run alone fails: nothing of the earlier one is written over
            print(f"run {hydra_cfg.job.num} failed: its folder {output_dir} holds an earlier run that could not be "
                  f"moved aside ({type(err).__name__}: {err}); the sweep goes on", file=sys.stderr)
            return None
        if replaced is not None:
            why, aside = replaced
            print(f"run {hydra_cfg.job.num}: its folder held {why}; moved to {aside}, not written over", file=sys.stderr)
        done = finished_before(cfg, output_dir)
        if done is not None:
            rank_zero_print(f"run {hydra_cfg.job.num}: finished before with the same configuration "
                            f"({Path(hydra_cfg.runtime.output_dir) / 'result.json'}); not run again (remove its "
                            "folder, or give the sweep another hydra.sweep.dir, to run it again)")
            return done.pruned.get("val_accuracy")
        try:  # (another job's folder only where the launcher runs one job at a time)
            recovered = recover_finished_run(cfg, output_dir, Path(hydra_cfg.sweep.dir), siblings=str(
                hydra_cfg.launcher.get("_target_", "")).endswith(".BasicLauncher"))
        except OSError as err:  # (what could not be moved stays where it was; this run trains)
            print(f"run {hydra_cfg.job.num}: a finished run of its configuration could not be moved into its folder "
                  f"({type(err).__name__}: {err}); it runs again", file=sys.stderr)
            recovered = None
        if recovered is not None:
            done, where = recovered
            rank_zero_print(f"run {hydra_cfg.job.num}: finished before with the same configuration in {where} (the "
                            f"sweep was run again with other values); moved to {output_dir}, not run again")
            return done.pruned.get("val_accuracy")
        saved = interrupted_checkpoint(cfg, output_dir)
        if saved is not None:  # (as its go-on command does: the sweep run again goes on with it)
            cfg.ckpt_path = str(saved)
            rank_zero_print(f"run {hydra_cfg.job.num}: interrupted before with the same configuration; goes on from "
                            f"its last checkpoint {saved}")
    try:
        result = run(cfg, Path(hydra_cfg.runtime.output_dir))
    except (Exception, KeyboardInterrupt) as err:
        if alone is not None and getattr(err, REFUSED_BEFORE_TRAINING, False):
            # refused (or stopped) before training: the folder as it was, its record included
            if alone[1] is not None:
                _put_back(alone[1], Path(hydra_cfg.runtime.output_dir), record)
                setattr(err, KEPT_RECORD, str(Path(hydra_cfg.runtime.output_dir) / "result.json"))
            alone = None
        if isinstance(err, KeyboardInterrupt):
            if hydra_cfg.mode == RunMode.MULTIRUN:
                told = sweep_interrupted(err, hydra_cfg)
                said_in_record(Path(hydra_cfg.runtime.output_dir) / "result.json", told)
                raise told from err
            raise
        notes = "".join(f" {note}" for note in getattr(err, "__notes__", ()))  # (a plugin's: where it raised)
        if hydra_cfg.mode != RunMode.MULTIRUN:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            # what is wrong and where it is recorded, not a traceback through the set-up or the training loop
            # (a bad value refused before training; a diverged loss, a refusal at the first batch, ... after)
            when = "refused before training" if getattr(err, REFUSED_BEFORE_TRAINING, False) else "the run failed"
            if rank_zero_only.rank != 0:  # (its own error: rank 0 may give only the broken connection it left)
                print(f"lightning-ssr: rank {rank_zero_only.rank}: {when}: {type(err).__name__}: {err}{notes}",
                      file=sys.stderr)
            else:
                kept = getattr(err, KEPT_RECORD, None)
                where = (f"not recorded: {kept} still records the run that was there before" if kept else
                         f"recorded in {Path(hydra_cfg.runtime.output_dir) / 'result.json'}")
                if PEER_LOST.search(str(err)):  # (the rank that failed first says why, in its own line)
                    where = f"another rank failed first: its own error is the line 'lightning-ssr: rank N: ...'; {where}"
                print(f"lightning-ssr: {when}: {type(err).__name__}: {err}{notes}\n({where}; HYDRA_FULL_ERROR=1 "
                      "shows the traceback)", file=sys.stderr)
            sys.exit(1)
        # one broken run must not stop the sweep: it is recorded (result.json, status failed)
        # and the sweep's report lists it with its error
        kept = " (its folder's result.json still records the run that was there before)" if getattr(
            err, KEPT_RECORD, None) else ""
        print(f"run {hydra_cfg.job.num} failed ({type(err).__name__}: {err}{notes}){kept}; the sweep goes on",
              file=sys.stderr)
        return None
    finally:
        if hydra_cfg.mode != RunMode.MULTIRUN:
            _end_process_group()
        if alone is not None and alone[1] is not None:
            print(f"lightning-ssr: {hydra_cfg.runtime.output_dir} held {alone[0]}; it was moved to {alone[1]}, not "
                  "written over", file=sys.stderr)
        elif alone is not None:  # (the folder holds other files too: nothing of it was moved)
            print(f"lightning-ssr: {hydra_cfg.runtime.output_dir} held {alone[0]}, whose files this run wrote over "
                  "(the folder holds other files too, so nothing was moved aside): give each run a folder of its own "
                  "(hydra.run.dir)", file=sys.stderr)
    if result.status != "ok" and hydra_cfg.mode != RunMode.MULTIRUN:  # (a sweep counts it in its report)
        if rank_zero_only.rank == 0:  # (the warning above says why)
            print(f"lightning-ssr: the run {result.status} (recorded in "
                  f"{Path(hydra_cfg.runtime.output_dir) / 'result.json'})", file=sys.stderr)
        sys.exit(1)
    return result.pruned.get("val_accuracy") if result.status == "ok" else None


def _override_value(value: str) -> str:
    """``value`` as a Hydra override's value: quoted where Hydra's grammar would read it otherwise."""
    if not any(c in value for c in "=,[]{}()'\" \\$:"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Hydra settings of a sweep, not of one run in it (the run's folder is set anew)
SWEEP_ONLY = ("hydra.mode", "hydra.sweep", "hydra.sweeper", "hydra/sweeper", "hydra.launcher", "hydra/launcher",
              "hydra.run.dir", "hydra.job.num", "hydra.job.id")
# what Lightning's DDP launcher, and main() for its ranks, add to the command each other rank runs (a rank's
# sweep writes its multirun.yaml again, with them): these exact settings, in a rank's command (which names the
# rank's process), not the same keys a user set
RANK_JOB = re.compile(r"hydra\.job\.name=train_ddp_process_\d+")
RANK_ADDED = ("hydra.output_subdir=null", "hydra/hydra_logging=disabled")


def _sweep_only(override: str, rank: bool = False) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return (any(key == k or key.startswith((k + ".", k + "/")) for k in SWEEP_ONLY) or bool(RANK_JOB.fullmatch(override))
            or (rank and override in RANK_ADDED))


def run_alone_command(hydra_cfg, overrides: Sequence[str], run_dir: str, extra: Sequence[str] = ()) -> str:
    """The command that runs one job of a sweep alone in ``run_dir`` (a folder of the sweep, where
    its report finds the run): the sweep's config flags and the Hydra flags that are not the
    sweep's, the job's ``overrides``, then ``extra`` (``ckpt_path=...``)."""
    config = [f"--config-dir={source.path.removeprefix('file://')}" for source in hydra_cfg.runtime.config_sources
              if source.provider == "command-line" and source.schema == "file"]
    if hydra_cfg.job.config_name != CONFIG_NAME:
        config.append(f"--config-name={hydra_cfg.job.config_name}")
    rank = any(RANK_JOB.fullmatch(o) for o in hydra_cfg.overrides.hydra)  # (a command a DDP rank ran)
    hydra_flags = [o for o in hydra_cfg.overrides.hydra if not _sweep_only(o, rank)]
    args = ["lightning-ssr", *config, *hydra_flags, *overrides, *extra, f"hydra.run.dir={_override_value(run_dir)}",
            "hydra.mode=RUN"]  # also where a config file set the sweep's mode
    return " ".join(shlex.quote(a) for a in args)


def said_in_record(path: Path, told: BaseException) -> None:
    """The error of an interrupted run's record (``path``, status ``interrupted``) as ``told``: a
    sweep's run recorded the single run's advice (run the same command with ``ckpt_path=``, which
    gives every run of the sweep that checkpoint), and the sweep's report showed it (probe)."""
    if rank_zero_only.rank != 0:
        return
    try:
        record = PruningResult.load(path)
    except ValueError:  # (none written, or unreadable: nothing to correct)
        return
    if record.status == "interrupted":
        record.error = "".join(traceback.format_exception_only(told)).strip()
        record.save(path)


def sweep_interrupted(err: KeyboardInterrupt, hydra_cfg) -> RunInterrupted:
    """Ctrl-C in a job of a sweep: which run it was, the command that goes on with it (or runs it
    again) alone in its folder, where the sweep's report finds it (``ckpt_path`` on the sweep's
    command line would give every run that checkpoint), and the report of the runs that finished
    and of those that never started."""
    sweep_dir, run_dir = str(hydra_cfg.sweep.dir), str(hydra_cfg.runtime.output_dir)
    where = f"{getattr(err, 'where', 'interrupted')}, in run {hydra_cfg.job.num} of the sweep in {sweep_dir}"
    saved = getattr(err, "checkpoint", None)
    command = run_alone_command(hydra_cfg, hydra_cfg.overrides.task, run_dir,
                                [f"ckpt_path={_override_value(saved)}"] if saved else [])
    stopped = "the sweep stopped there (runs without a result.json did not finish)"
    if saved:
        head = f"{where}; {stopped}. Its last checkpoint is {saved}{getattr(err, 'redone', '')}; to go on with that run"
    else:
        head = f"{where}{getattr(err, 'lost', '')}; {stopped}. To run it again"
    return RunInterrupted(where, saved, signal=getattr(err, "signal", "Ctrl-C"), redone=getattr(err, "redone", ""),
                          message=(
        f"{head} alone (in its folder, where the report finds it): {command}. "
        f"lightning-ssr-report {shlex.quote(sweep_dir)} reports the runs that finished and, for a grid sweep, "
        "gives the command of each run that never started"))


def main() -> None:
    sys.argv[1:] = quote_path_overrides(sys.argv[1:])
    if launched_rank() > 0:
        # a DDP rank Lightning launched runs the command again (a sweep's "-m" included): rank 0 checked it,
        # and says what Hydra says (each sweep's "Launching N jobs" and job lines came once per rank)
        sys.argv.append("hydra/hydra_logging=disabled")
    else:
        try:  # a misspelled key, before Hydra: its closest names, not a proposal to add it
            check_override_keys(sys.argv[1:])
            check_sweep_runs(sys.argv[1:])  # a sweep's every run, before the first trains
        except ValueError as err:
            print(f"lightning-ssr: {err}", file=sys.stderr)
            sys.exit(1)
    quiet_lightning()
    LAST_SWEEP.clear()
    SEARCH_RETURNS.clear()
    try:
        with sigterm_raises():  # SIGTERM outside a Trainer's run: told as Ctrl-C is, not a silent end
            _hydra_main()
    except KeyboardInterrupt as err:  # Ctrl-C: where it stopped and how to go on, not a traceback
        outside = "interrupted outside training (at the set-up, the evaluation or the export): run the job again"
        told = err if isinstance(err, (RunInterrupted, Terminated)) else outside
        print(f"lightning-ssr: {told}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 130))
    if LAST_SWEEP.get("failed"):  # a sweep goes on past a failed run; its exit code says so (as the report's)
        print(f"lightning-ssr: {LAST_SWEEP['failed']} of the sweep's {count_runs(LAST_SWEEP['runs'])} failed; "
              f"{Path(LAST_SWEEP['dir']) / 'report.md'} lists them with their errors", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
