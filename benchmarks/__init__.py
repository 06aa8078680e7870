"""The project's benchmarks: each module is a script (``python benchmarks/<name>.py``) writing a
JSON file under ``benchmarks/results/``; ``python -m benchmarks`` runs them all and renders
``benchmarks/RESULTS.md``."""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import math
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lightning_ssr.latency import cache_root
from lightning_ssr.report import portable_paths


def _quick_work(part: str) -> list[str]:
    """A quick budget's own work directory: its runs, named by data set, method and seed only, would
    overwrite a full run's in the script's default one, and end the resume of an interrupted full run."""
    return ["--work-dir", str(cache_root() / "benchmarks" / f"{part}_quick")]


# (part, arguments): structural and timing parts first, training ones after. Here every training
# part runs on a smaller budget than its script's default, so that the whole run took about an
# hour on 2 CPU cores once the dense models were cached (before recipes.py ran the adaptation
# run's control beside it, one run more), and writes its own *_quick.json: a quick
# budget never overwrites the file of a script's full budget (methods.json, lenet.json,
# solver_speed.json, recipes.json come from the scripts' own commands, recorded in each file).
PARTS = [
    ("structure", []),
    ("targets", ["--latency-allocations", "global", "--out", "benchmarks/results/targets_quick.json"]),
    ("speedup", ["--repeats", "12", "--out", "benchmarks/results/speedup_quick.json"]),
    ("overhead", ["--steps", "25", "--rounds", "3", "--out", "benchmarks/results/overhead_quick.json"]),
    ("solver_speed", ["--epochs", "6", "--finetune", "1", "--seeds", "0",
                      "--out", "benchmarks/results/solver_speed_quick.json"]),
    ("update_interval", []),
    ("methods", ["--seeds", "0", "--methods", "ssr_l21@method", "ssr_l20@method", "l1@uniform", "none",
                 "--macs", "0.5", "--dense-epochs", "8", "--train-size", "2000",
                 "--out", "benchmarks/results/methods_quick.json", *_quick_work("methods")]),
    ("lenet", ["--seeds", "0", "1", "--sparsify", "4", "--finetune", "5", "--repeats", "30", "--datasets", "mnist",
               "--methods", "ssr_l21@method", "ssr_l20@method", "l1@uniform", "none",
               "--out", "benchmarks/results/lenet_quick.json",
               *_quick_work("lenet")]),
    ("recipes", ["--seeds", "0", "--experiments", "transfer_fmnist_to_mnist", "da_mnist_to_digits",
                 "--out", "benchmarks/results/recipes_quick.json", *_quick_work("recipes")]),
]


def command_line(script: str, argv) -> str:
    """The command a benchmark ran with: ``python benchmarks/<script>.py`` and its arguments
    (``argv``; ``None``: this process's own), paths in them portable (the home directory as ``~``)."""
    args = [portable_paths(a, Path(__file__).resolve().parent.parent)
            for a in (sys.argv[1:] if argv is None else argv)]
    return " ".join([f"python benchmarks/{script}.py", *args])


def recorded_runs(data) -> int:
    """How many runs a results file holds (its ``runs``, or the runs its rows summarize, or its
    rows where each is a run's record)."""
    if not isinstance(data, dict):
        return len(data)
    if isinstance(data.get("n_runs"), int):
        return data["n_runs"]
    runs = data.get("runs")
    if isinstance(runs, (list, dict)):
        return len(runs)
    rows = [r for r in data.get("rows", []) if isinstance(r, dict)]
    return sum(int(r["n_runs"]) if isinstance(r.get("n_runs"), int) else int("seed" in r) for r in rows)


def check_once(parser, flag: str, values) -> None:
    """Refuse, through ``parser``, a value of ``flag`` given twice: each is one run (or one set of
    runs) of the comparison, and two of them trained into one run folder, and were counted as two
    independent runs of one seed (``--methods l1@uniform l1@uniform``: "± 0.00, runs 2": probe)."""
    twice = [v for v in dict.fromkeys(values) if list(values).count(v) > 1]
    if twice:
        parser.error(f"{flag}: {', '.join(map(str, twice))} given more than once; each is one independent run")


def check_seeds(parser, seeds, overrides=()) -> None:
    """Refuse, through ``parser``, seeds given twice (counted as independent runs, they shared one
    run folder and dense model: probe), negative ones, and a seed set by ``--override`` (the runs
    were labelled by ``--seeds`` and all trained the overridden one)."""
    check_once(parser, "--seeds", seeds)
    if any(s < 0 for s in seeds):
        parser.error(f"--seeds must be >= 0, got {sorted(s for s in seeds if s < 0)}")
    if any(str(o).split("=", 1)[0].strip().lstrip("+~") == "seed" for o in overrides or ()):
        parser.error("--override seed=...: the runs' seeds are --seeds")


def check_runs(parser, runs) -> None:
    """Compose each run's configuration (``runs``: lists of the command's overrides) and check it
    as the command checks its own before training, through ``parser``: a bad model, data set,
    override or Trainer value is refused here, before any work, not in a worker's traceback after
    the dense training began (probe)."""
    from lightning_ssr.app.cli import compose_config
    from lightning_ssr.app.console import lightning_silenced
    from lightning_ssr.app.stages import check_builds, check_settings, plainly

    for overrides in dict.fromkeys(tuple(r) for r in runs):
        try:
            with lightning_silenced():  # (each Trainer checked here printed its GPU/TPU lines and Lightning's tip)
                cfg = compose_config(list(overrides))
                check_settings(cfg)
                check_builds(cfg, trainer=True)
        except Exception as err:  # noqa: BLE001 - whatever the command would refuse, said as the parser's error
            said = " ".join(str(plainly(err)).split())
            parser.error(f"a run of this command is refused ({said}); its overrides: {' '.join(overrides)}")


def refuse_smaller(path: Path, planned: int | None, force: bool = False, budget: dict | None = None,
                   unbounded: tuple[str, ...] = (), same: tuple[str, ...] = (), covers: tuple[str, ...] = (),
                   from_rows: dict[str, str] | None = None, recorded_default: dict | None = None) -> None:
    """Before any training or timing: stop (saying how to go on) if ``path`` already holds more runs
    than the ``planned`` ones (``None``: a timing benchmark, not judged by runs), or was made with a
    larger budget per run: a value of ``budget`` (this command's epochs, data size, batches, timed
    repeats, ...) below the one its ``settings`` record (for the keys in ``unbounded``, ``None`` or 0
    is everything, more than any number; ``recorded_default``: what a file that records a key was
    made with when it does not record it); or runs of another experiment:
    for the keys in ``same`` (overrides, the model, the data) another value (a list in any order),
    for those in ``covers`` (data sets, methods, targets) a list that leaves out some of the file's
    (``from_rows``: for a key its settings do not record, the row field whose values give it).
    A quick run never replaces stronger evidence; ``python -m benchmarks`` writes its quick budgets to
    *_quick.json."""
    path = Path(path)
    # (an --out that cannot be written failed only when the results were written, after the work: probe)
    blocked = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None) if path.parent else None
    if path.is_dir() or (blocked is not None and blocked != path):
        raise SystemExit(f"--out {path}: " + ("it is a folder; give the path of a .json file" if path.is_dir() else
                                              f"{blocked} is a file, not a folder, so nothing can be written there"))
    if force or not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # an unreadable file holds nothing to keep
    recorded = {**(recorded_default or {}), **((old.get("settings") or {}) if isinstance(old, dict) else {})}
    for key, field in (from_rows or {}).items():
        rows = old.get("rows") if isinstance(old, dict) else None
        if key not in recorded and isinstance(rows, list):
            recorded[key] = sorted({r[field] for r in rows if isinstance(r, dict) and field in r})

    def level(key, value):
        return math.inf if key in unbounded and value in (None, 0) else value

    def items(value):
        return {json.dumps(v, sort_keys=True) for v in value} if isinstance(value, (list, tuple)) else {json.dumps(value)}

    why = [f"{recorded_runs(old)} runs, this budget plans {planned}"] \
        if planned is not None and recorded_runs(old) > planned else []
    for key, value in (budget or {}).items():
        if key not in recorded:  # (an older file that did not record it: not judged)
            continue
        before = recorded[key]
        if key in same:
            if items(before) != items(value):
                why.append(f"{key} {before!r} where this command has {value!r}")
        elif key in covers:
            left_out = sorted(items(before) - items(value))
            if left_out:
                why.append(f"{key}: this command leaves out {', '.join(str(json.loads(v)) for v in left_out)}")
        elif isinstance(level(key, before), (int, float)) and isinstance(level(key, value), (int, float)) \
                and level(key, before) > level(key, value):
            why.append(f"{key} {before!r} > {value!r}")
    if why:
        command = (old.get("command") if isinstance(old, dict) else None) or "its command is not recorded"
        raise SystemExit(f"{path} holds runs of a larger budget or another experiment ({'; '.join(why)}: {command}). "
                         "Write elsewhere with --out, or pass --force to replace it.")


#: where the training benchmarks keep each run's outputs (``--work-dir``), so that an interrupted
#: benchmark run again with the same command goes on from the runs that finished
WORK_ROOT = cache_root() / "benchmarks"
RUN_FILE = "benchmark_run.json"  # a finished run's record, in its own directory under the work dir


@functools.cache
def code_digest() -> str:
    """sha256 of the package's source (every ``lightning_ssr/**/*.py`` but hidden files, by path
    and content; one that cannot be read, by its path alone): a finished run made by other code of
    the package is trained again, not read back into a results file beside runs of this code
    (taylor's global allocation changed, and a work directory's earlier taylor@global runs would
    have been reused). Taken once per command, before its runs (:func:`job_pool`: the workers
    inherit it), so that all its runs carry the code the command started with."""
    import lightning_ssr

    root = Path(lightning_ssr.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue  # (an editor's lock file, .#engine.py, is a dangling link)
        try:
            content = path.read_bytes()
        except OSError:
            content = b""
        digest.update(relative.as_posix().encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def config_digest(cfg) -> str:
    """sha256 of a run's composed config, resolved (a changed config file changes it, not only a
    changed override)."""
    from omegaconf import OmegaConf

    plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


def finished_run(out_dir: str | os.PathLike, overrides: list[str], digest: str, code: str | None = None
                 ) -> dict | None:
    """The record :func:`keep_run` left in ``out_dir`` for a run that finished with the same
    ``overrides`` and the same composed config (``digest``: :func:`config_digest`), and, where
    ``code`` is given, by the same code of the package (:func:`code_digest`), or ``None``: not run
    yet, failed, run with other settings, another config or other code, or cut short."""
    try:
        record = json.loads((Path(out_dir) / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("status") != "ok" or record.get("overrides") != overrides \
            or record.get("config_sha256") != digest or (code is not None and record.get("code_sha256") != code):
        return None
    return record


def set_aside_path(out_dir: str | os.PathLike, digest: str) -> Path:
    """Where a finished run of ``out_dir``'s data set, method and seed, made with other settings
    (config ``digest``), is kept while another budget's run of them uses ``out_dir``."""
    return Path(f"{Path(out_dir)}@{digest[:12]}")


def make_room(out_dir: str | os.PathLike, overrides: list[str], digest: str, code: str | None = None
              ) -> dict | None:
    """Before a run of config ``digest`` in ``out_dir``: a finished run of other settings there
    (another budget's, in the same work directory) is moved aside (:func:`set_aside_path`), not
    trained over; and this config's own finished run, set aside so by an earlier command, is moved
    back and its record returned (``None``: the run trains), where ``code`` made it too."""
    import shutil

    out_dir = Path(out_dir)
    try:
        record = json.loads((out_dir / RUN_FILE).read_text())
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("status") == "ok" and record.get("config_sha256") not in (None, digest):
        aside = set_aside_path(out_dir, record["config_sha256"])
        if finished_run(aside, record.get("overrides"), record["config_sha256"], record.get("code_sha256")):
            shutil.rmtree(out_dir)  # (that config's run, of the same code, is kept there already: this is its copy)
        else:  # (a set-aside run of other code, or cut short, is replaced by this one: review)
            if aside.exists():
                shutil.rmtree(aside)
            os.replace(out_dir, aside)
            print(f"{out_dir.name}: the run of other settings there is kept in {aside.name}", flush=True)
    mine = set_aside_path(out_dir, digest)
    if finished_run(mine, overrides, digest, code) is None:
        return None
    if out_dir.exists():  # (a run of this config cut short there: the finished one replaces it)
        shutil.rmtree(out_dir)
    os.replace(mine, out_dir)
    return finished_run(out_dir, overrides, digest, code)


def run_or_reuse(overrides: list[str], out_dir: str | os.PathLike, record: dict, compose, train) -> tuple[bool, dict]:
    """One training run of a benchmark, unless it already finished: ``compose(overrides)`` gives
    the config, whose digest goes into ``record["config_sha256"]``; a run that finished in
    ``out_dir`` with the same overrides and config is read back (``(True, its record with
    "reused": True)``), else ``train(cfg, out_dir).to_dict()`` runs (``(False, that dict)``). A
    finished run of other settings in ``out_dir`` is kept, moved aside (:func:`make_room`), and
    read back from there by a later command with its settings. A finished run of other code of the
    package (``record["code_sha256"]``: :func:`code_digest`) is trained again, and said.
    An exception gives ``(False, {"status": "failed", "error": ...})``: the other runs go on."""
    try:
        cfg = compose(overrides)
        record["config_sha256"], record["code_sha256"] = config_digest(cfg), code_digest()
        done = finished_run(out_dir, overrides, record["config_sha256"], record["code_sha256"])
        if done is None:
            done = make_room(out_dir, overrides, record["config_sha256"], record["code_sha256"])
        if done is None and any(finished_run(where, overrides, record["config_sha256"]) is not None for where in (
                out_dir, set_aside_path(out_dir, record["config_sha256"]))):  # (kept there, or set aside: review)
            print(f"{Path(out_dir).name}: its finished run was made by other code of lightning_ssr: trained again",
                  flush=True)
        if done is not None:
            return True, {**done, "reused": True}
        return False, train(cfg, out_dir).to_dict()
    except Exception as err:  # noqa: BLE001 - recorded; the other runs go on
        return False, {"status": "failed", "error": f"{type(err).__name__}: {err}"}


def keep_run(out_dir: str | os.PathLike, record: dict) -> dict:
    """Write a run's record (with its ``status``, ``overrides`` and ``config_sha256``) into
    ``out_dir``, atomically."""
    from lightning_ssr.report import write_json

    write_json(Path(out_dir) / RUN_FILE, obj=record)
    return record


def script_main(main, keeps_runs: bool):
    """A benchmark script's entry point (``python benchmarks/<name>.py``): ``main()``, where a Ctrl-C
    ends the script with status 130 and one line that says what was kept (``keeps_runs``: its
    finished runs, in its work directory), not a traceback, nor the advice of the interrupted
    run's own resume (a ``ckpt_path=`` in a temporary folder the script had already deleted:
    probe). Returns what ``main()`` returns."""
    try:
        return main()
    except KeyboardInterrupt as err:
        if not getattr(err, "told", False):
            said = ("the runs that finished are kept in the work directory, and the same command goes on from them"
                    if keeps_runs else "this benchmark keeps no finished runs between commands (it has no work "
                    "directory): the same command starts over")
            print(f"\ninterrupted (Ctrl-C): {said}", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


ORPHAN_POLL_S = 2.0


def exit_when_orphaned(parent: int, poll_s: float = ORPHAN_POLL_S) -> threading.Thread:
    """Watch, from a daemon thread, that the process ``parent`` is still this one's parent, and end
    this process (exit code 1) once it is not: a pool's worker whose benchmark was killed (SIGKILL,
    an out-of-memory kill) would otherwise wait on the pool's queue, and hold its memory, forever."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    thread = threading.Thread(target=watch, name="exit-when-orphaned", daemon=True)
    thread.start()
    return thread


def init_worker(threads: int) -> None:
    """A benchmark's worker process: ``threads`` torch threads, Lightning's chatter filtered, and
    an exit of its own if the benchmark that started it dies."""
    import torch

    from lightning_ssr.app.console import quiet_lightning

    exit_when_orphaned(os.getppid())
    torch.set_num_threads(threads)
    quiet_lightning(hardware=False)  # (each worker repeated "GPU available: False" beside the table)


@contextlib.contextmanager
def job_pool(jobs: int, threads: int):
    """A pool of ``jobs`` worker processes (:func:`init_worker` with ``threads``) that a Ctrl-C
    stops: the queued runs are cancelled and the workers ended, where the pool's own exit waited
    for every queued run to train (a second Ctrl-C printed a traceback, a third ended it). The runs
    that finished stay in the work directory: the same command goes on from them."""
    code_digest()  # (taken now, before any run: forked workers inherit it)
    pool = ProcessPoolExecutor(jobs, initializer=init_worker, initargs=(threads,))
    try:
        yield pool
    except BaseException as err:
        processes = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.kill()
        for process in processes:
            process.join(timeout=10)
        if isinstance(err, KeyboardInterrupt):
            print("interrupted: the queued runs were cancelled; the runs that finished are kept in the work "
                  "directory, and the same command goes on from them", file=sys.stderr, flush=True)
            err.told = True  # (said: the script's entry point ends it without another word, :func:`script_main`)
        raise
    pool.shutdown()


def counted(low: int):
    """An argparse ``type``: an integer of at least ``low`` (a bad value is refused before any run)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below {low}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


def number_at_least(low: float):
    """An argparse ``type``: a finite number of at least ``low`` (``--lam -1`` ended in the method's
    traceback after the dense model loaded: probe)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"{value} is not a finite number >= {low:g}")
        return value
    parse.__name__ = f"number >= {low:g}"
    return parse


def kept_fraction(text: str) -> float:
    """An argparse ``type``: a fraction of the dense model kept, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in (0, 1]: the fraction of the dense model's MACs kept")
    return value
