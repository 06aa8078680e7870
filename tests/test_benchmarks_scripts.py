"""Every benchmark script runs as README says, ``python benchmarks/<name>.py``, from any directory:
the repository root is not on the path then, and each script puts it there itself."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(str(p) for p in BENCHMARKS.glob("*.py") if p.name != "__main__.py" and 'if __name__ == "__main__"' in p.read_text())

# Each script as its own __main__ with --help, in one interpreter (one import of torch) outside the
# repository; what an earlier script imported, put on the path or changed directory to is undone
# before the next.
RUN_EACH = """
import os, runpy, sys
failed, here = [], os.getcwd()
for path in sys.argv[1:]:
    saved = list(sys.path)
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        del sys.modules[name]
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            failed.append((path, stop.code))
    except Exception as err:
        failed.append((path, repr(err)))
    sys.path[:] = saved
    os.chdir(here)  # a script may move to the repository (gpu.py does, to write its paths there)
print("FAILED", failed)
sys.exit(1 if failed else 0)
"""


def test_every_script_starts_from_another_directory(tmp_path):
    assert len(SCRIPTS) >= 10, SCRIPTS
    proc = subprocess.run([sys.executable, "-c", RUN_EACH, *SCRIPTS], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


ORPHANED_POOL = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
sys.path.insert(0, sys.argv[1])
from benchmarks import init_worker

if __name__ == "__main__":  # as the benchmarks start their workers
    with ProcessPoolExecutor(1, initializer=init_worker, initargs=(1,)) as pool:
        print(pool.submit(os.getpid).result(), flush=True)
        pool.submit(time.sleep, 600)
        time.sleep(600)
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _ends_within(pid: int, seconds: float) -> bool:
    """Whether the process ``pid`` ends within ``seconds``."""
    deadline = time.monotonic() + seconds
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _running(pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see whether a process still runs")
def test_a_pool_worker_exits_once_its_benchmark_is_killed(tmp_path):
    """A benchmark killed with SIGKILL cannot stop its workers; each worker sees that it lost its
    parent and ends itself, instead of waiting on the pool's queue for ever."""
    script = tmp_path / "bench.py"
    script.write_text(ORPHANED_POOL)
    proc = subprocess.Popen([sys.executable, str(script), str(BENCHMARKS.parent)], stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(proc.stdout.readline())
        assert _running(worker)
        proc.kill()
        proc.wait(timeout=30)
        assert _ends_within(worker, 20), "the orphaned worker is still running"
    finally:
        proc.kill()
        proc.stdout.close()
        if worker is not None and _running(worker):
            os.kill(worker, signal.SIGKILL)


INTERRUPTED_POOL = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from benchmarks import job_pool

if __name__ == "__main__":
    try:
        with job_pool(1, 1) as pool:
            print(pool.submit(os.getpid).result(), flush=True)
            queued = [pool.submit(time.sleep, 60) for _ in range(3)]
            queued[0].result()
    except KeyboardInterrupt:
        print("stopped", flush=True)
"""


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to see whether a process still runs")
def test_a_ctrl_c_stops_a_benchmarks_pool_and_its_queued_runs(tmp_path):
    """A Ctrl-C recorded the runs in progress as interrupted, then the pool's exit waited while its
    worker trained every queued run; a second Ctrl-C printed a traceback, a third ended it (probe)."""
    script = tmp_path / "bench.py"
    script.write_text(INTERRUPTED_POOL)
    proc = subprocess.Popen([sys.executable, str(script), str(BENCHMARKS.parent)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    worker = None
    try:
        worker = int(proc.stdout.readline())
        time.sleep(0.5)  # (the first queued run sleeps in the worker)
        proc.send_signal(signal.SIGINT)  # (to the benchmark alone: its worker goes on unless it is stopped)
        out, err = proc.communicate(timeout=30)
        assert "stopped" in out and "the queued runs were cancelled" in err
        assert _ends_within(worker, 10), "the worker still runs the queued runs"
    finally:
        proc.kill()
        if worker is not None and _running(worker):
            os.kill(worker, signal.SIGKILL)


def _interrupted(told: bool = False):
    err = KeyboardInterrupt("the run stopped; to go on, run the same command with ckpt_path=/tmp/gone/last.ckpt")
    if told:
        err.told = True
    raise err


@pytest.mark.parametrize("keeps,told,said", [
    (False, False, ("interrupted (Ctrl-C): this benchmark keeps no finished runs between commands (it has no work "
                   "directory): the same command starts over\n")),
    (True, False, ("interrupted (Ctrl-C): the runs that finished are kept in the work directory, and the same command "
                  "goes on from them\n")),
    (True, True, "")])  # (its pool said it already)
def test_a_ctrl_c_ends_a_benchmark_script_with_what_it_kept(keeps, told, said, capsys):
    """update_interval.py and solver_speed.py, interrupted, printed the interrupted run's traceback
    and its advice to resume with ckpt_path= in a temporary folder they had deleted, though they
    keep no run between commands; lenet.py printed a traceback after its pool's line (probe)."""
    from benchmarks import script_main

    with pytest.raises(SystemExit) as info:
        script_main(lambda: _interrupted(told), keeps_runs=keeps)
    assert info.value.code == 130
    assert capsys.readouterr().err.lstrip("\n") == said
    assert script_main(lambda: 3, keeps_runs=keeps) == 3


def test_every_benchmark_script_ends_a_ctrl_c_through_script_main():
    """Each script that trains or times (what a Ctrl-C interrupts) is entered through script_main."""
    for name in ("lenet", "methods", "recipes", "update_interval", "solver_speed", "overhead", "speedup", "targets"):
        tail = (BENCHMARKS / f"{name}.py").read_text().rstrip().splitlines()[-1]
        assert "script_main(main, keeps_runs=" in tail, name


@pytest.mark.parametrize("script,argv,said", [
    ("methods", ["--macs", "1.5"], "argument --macs: 1.5 is not in (0, 1]"),
    ("methods", ["--dense-epochs", "0"], "argument --dense-epochs: 0 is below 1"),
    ("speedup", ["--repeats", "0"], "argument --repeats: 0 is below 1"),
    ("lenet", ["--jobs", "x"], "argument --jobs: 'x' is not an integer"),
    ("solver_speed", ["--interval", "0"], "argument --interval: 0 is below 1"),
    ("recipes", ["--jobs", "0"], "argument --jobs: 0 is below 1"),
    # (seeds given twice were counted as independent runs; a seed overridden trained one seed for every label: probe)
    ("lenet", ["--seeds", "0", "0"], "--seeds: 0 given more than once"),
    # (a method, data set, target or experiment given twice: two runs of one seed, "± 0.00, runs 2": probe)
    ("lenet", ["--methods", "l1@uniform", "l1@uniform", "none", "--reference", "none"],
     "--methods of mnist: l1@uniform given more than once"),
    ("lenet", ["--datasets", "mnist", "mnist"], "--datasets: mnist given more than once"),
    ("methods", ["--macs", "0.5", "0.5"], "--macs: 0.5 given more than once"),
    ("recipes", ["--experiments", "transfer_fmnist_to_mnist", "transfer_fmnist_to_mnist"],
     "--experiments: transfer_fmnist_to_mnist given more than once"),
    # (none@bogus ran as none, and the report's headline named it the best compression: probe)
    ("lenet", ["--methods", "l1@uniform", "none@bogus"], "'none@bogus': none prunes nothing and takes no allocation"),
    ("methods", ["--seeds", "1", "-1"], "--seeds must be >= 0, got [-1]"),
    ("recipes", ["--override", "seed=3"], "--override seed=...: the runs' seeds are --seeds"),
    ("update_interval", ["--flops-budget", "2"], "--flops-budget must be in (0, 1]"),
    # (a negative lam or threshold ended in the method's traceback after the dense model loaded: probe)
    ("solver_speed", ["--lam", "-1"], "argument --lam: -1.0 is not a finite number >= 0"),
    ("solver_speed", ["--threshold", "nan"], "argument --threshold: nan is not a finite number >= 0"),
    ("solver_speed", ["--recompute", "--out", "/nonexistent/s.json"], "--recompute: no such file /nonexistent/s.json"),
    # (an unknown allocation or round_to 0 wrote a results file of "refused" rows)
    ("targets", ["--allocations", "globl"], "argument --allocations: invalid choice: 'globl'"),
    ("targets", ["--round-to", "0"], "argument --round-to: 0 is below 1"),
    # (a bad model, data set or override ended in a worker's traceback, some after the dense training began: probe)
    ("methods", ["--model", "resnet999"], ("a run of this command is refused (In 'config': Could not find "
                                          "'model/resnet999'")),
    ("lenet", ["--override", "foo.bar=1"], "a run of this command is refused (foo.bar is not a setting")])
def test_a_benchmarks_value_out_of_range_is_refused_before_it_runs(script, argv, said, capsys):
    """methods.py --macs 1.5 began training, speedup.py --repeats 0 began timing (probe)."""
    import importlib

    with pytest.raises(SystemExit) as raised:
        importlib.import_module(f"benchmarks.{script}").main(argv)
    assert raised.value.code == 2 and said in capsys.readouterr().err


@pytest.mark.parametrize("script,argv,said", [
    ("recipes", ["--override", "foo.bar=1"], "a run of this command is refused (foo.bar is not a setting"),
    # (a recipe's own settings passed the check and failed in each worker: review)
    ("recipes", ["--experiments", "da_mnist_to_digits", "--override", "adaptation.ceiling=maybe"],
     "a run of this command is refused (adaptation.ceiling must be true or false, got 'maybe')"),
    ("solver_speed", ["--data", "foo"], "a run of this command is refused (In 'config': Could not find 'data/foo'"),
    ("update_interval", ["--lams", "-1"], ("a run of this command is refused (ssr_l21: lam must be in [0.0, inf), "
                                          "got -1.0)"))])
def test_each_scripts_runs_are_checked_before_the_work(script, argv, said, tmp_path, capsys):
    """A bad --data ended in Hydra's traceback, a bad --lams value failed at the first run's set-up,
    after its printed header (a review)."""
    import importlib

    with pytest.raises(SystemExit) as raised:
        importlib.import_module(f"benchmarks.{script}").main([*argv, "--out", str(tmp_path / "out.json")])
    assert raised.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_update_interval_keeps_a_results_file_of_more_runs_or_seeds(tmp_path, capsys):
    """It replaced a file of 17 runs with one of 1 without a word (probe): it is held to the
    larger-budget rule of the other scripts, seeds included."""
    from benchmarks import update_interval

    out = tmp_path / "update_interval.json"
    out.write_text(json.dumps({"command": "python benchmarks/update_interval.py", "settings": {
        "seeds": [0, 1], "intervals": ["10", "25"], "admm_epochs": 10, "finetune_epochs": 3}, "rows": []}))
    with pytest.raises(SystemExit, match=r"holds runs of a larger budget or another experiment \(admm_epochs 10 > 1; "
                                         r"seeds: this command leaves out 1; intervals: .*pass --force"):
        update_interval.main(["--seeds", "0", "--intervals", "25", "--skip-l20", "--admm-epochs", "1", "--out", str(out)])


def test_update_interval_keeps_a_results_file_of_another_budget_or_lam_search(tmp_path, capsys):
    """Runs at another L2,0 budget or of another lam search replaced the file's runs."""
    from benchmarks import update_interval

    out = tmp_path / "update_interval.json"
    out.write_text(json.dumps({"command": "python benchmarks/update_interval.py", "settings": {
        "seeds": [0], "intervals": ["25"], "admm_epochs": 10, "finetune_epochs": 3, "flops_budget": 0.05,
        "lams": [0.002, 0.01], "min_reduction": 2.0, "search_interval": 25}, "rows": []}))
    with pytest.raises(SystemExit, match=r"another experiment \(flops_budget 0\.05 where this command has 0\.1"):
        update_interval.main(["--seeds", "0", "--intervals", "25", "--flops-budget", "0.1", "--out", str(out)])
    with pytest.raises(SystemExit, match=r"another experiment \(lams \[0\.002, 0\.01\] where this command has \[0\.5\]"):
        update_interval.main(["--seeds", "0", "--intervals", "25", "--lams", "0.5", "--out", str(out)])
    # without L2,0 runs: its budget does not matter, and the file's L2,0 rows are not dropped (review)
    out.write_text(json.dumps({**json.loads(out.read_text()), "rows": [{"regularizer": "l21"}, {"regularizer": "l20"}]}))
    with pytest.raises(SystemExit, match=r"another experiment \(regularizers: this command leaves out l20: "):
        update_interval.main(["--seeds", "0", "--intervals", "25", "--skip-l20", "--flops-budget", "0.1", "--out",
                              str(out)])
    # (the lam search's interval is checked with the runs: 0 ended in a traceback after the header: review)
    with pytest.raises(SystemExit) as raised:
        update_interval.main(["--seeds", "0", "--intervals", "25", "--search-interval", "0", "--out",
                              str(tmp_path / "other.json")])
    assert raised.value.code == 2 and ("a run of this command is refused (schedule: update_every_n_steps must be "
                                       "in [1, inf), got 0)") in capsys.readouterr().err


def test_a_benchmark_worker_does_not_repeat_lightnings_availability_lines():
    """Each worker printed "GPU available: False, used: False" (and the TPU, HPU lines) beside the
    benchmark's table; a worker's own notices still show."""
    import logging
    from concurrent.futures import ProcessPoolExecutor

    from benchmarks import init_worker

    chatter = logging.getLogger("lightning.pytorch.utilities.rank_zero")

    def record(message):
        return logging.LogRecord(chatter.name, logging.INFO, __file__, 1, message, None, None)

    with ProcessPoolExecutor(1, initializer=init_worker, initargs=(1,)) as pool:
        assert not pool.submit(chatter.filter, record("GPU available: False, used: False")).result(timeout=120)
        assert pool.submit(chatter.filter, record("Pruning: pruned at epoch 2")).result(timeout=120)


CHECK_RUNS = """
import argparse, sys
sys.path.insert(0, sys.argv[1])
from benchmarks import check_runs
check_runs(argparse.ArgumentParser(), [["model=lenet5", "data=mnist_10k", "pruning=l1", "target.macs=0.5"]])
print("checked", flush=True)
if len(sys.argv) > 2:  # a Trainer the script builds after the check says what Lightning says
    import lightning.pytorch as pl
    pl.Trainer(accelerator="cpu", logger=False)
"""


def test_checking_a_benchmarks_runs_prints_none_of_lightnings_lines(tmp_path):
    """Each Trainer the check of the runs built printed "GPU available: ...", the TPU line and
    Lightning's install tip, before the benchmark's first line (a run)."""
    proc = subprocess.run([sys.executable, "-c", CHECK_RUNS, str(BENCHMARKS.parent)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and proc.stdout.strip() == "checked", proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not proc.stderr.strip(), proc.stderr
    # and only there: the script's own Trainers after it still say it (the quieting outlived the check: review)
    proc = subprocess.run([sys.executable, "-c", CHECK_RUNS, str(BENCHMARKS.parent), "then a Trainer"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "GPU available: False" in proc.stdout + proc.stderr, proc.stderr[-3000:]


def test_an_out_that_cannot_be_written_is_refused_before_the_work(tmp_path):
    """--out naming a folder, or a path under a file, failed only when the results were written,
    after the training or timing (probe)."""
    from benchmarks import refuse_smaller

    with pytest.raises(SystemExit, match=r"--out .*: it is a folder; give the path of a .json file"):
        refuse_smaller(tmp_path, None)
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"--out .*file/x.json: .*file is a file, not a folder"):
        refuse_smaller(tmp_path / "file" / "x.json", None)
    refuse_smaller(tmp_path / "new" / "x.json", None)  # (a folder still to make: fine)


class _FakeResult:
    """What run() gives, as far as update_interval reads it."""

    def __init__(self, overrides):
        self.overrides = overrides

    def to_dict(self):
        return {"status": "ok", "macs_reduction": 3.0, "layers": [{"name": "model.conv1", "after": 4}],
                "dense": {"accuracy": 0.99}, "pruned": {"accuracy": 0.98}, "accuracy_drop_points": 1.0,
                "events": [{"epoch": 1}], "timings": {"total_s": 2.0}}


@pytest.fixture
def script_logging():
    """A benchmark's main() run in this process quiets Lightning's loggers and warnings for the rest
    of it, as the script does: put back after the test (a later test's captured table was gone)."""
    import logging
    import warnings

    names = ("lightning.pytorch", "lightning.fabric", "lightning_fabric")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_update_interval_goes_on_from_the_runs_an_interrupted_command_finished(tmp_path, monkeypatch, capsys,
                                                                               script_logging):
    """It kept no run between commands: a Ctrl-C after an hour started the next command over (its
    runs went to temporary folders)."""
    from benchmarks import update_interval

    trained = []

    def fake_run(cfg, out_dir):
        if len(trained) == 1 and interrupt:
            raise KeyboardInterrupt
        trained.append(str(out_dir))
        return _FakeResult(cfg)

    monkeypatch.setattr(update_interval, "run", fake_run)
    argv = ["--seeds", "0", "--intervals", "25", "50", "--lams", "0.01", "--admm-epochs", "1", "--finetune-epochs", "0",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "out.json")]
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        update_interval.main(argv)
    assert len(trained) == 1 and not (tmp_path / "out.json").exists()
    interrupt = False
    update_interval.main(argv)  # the lam search's run is read back; the other three train
    assert len(trained) == 4 and len(set(trained)) == 4
    assert "(finished before: read back)" in capsys.readouterr().out
    rows = json.loads((tmp_path / "out.json").read_text())["rows"]
    assert len(rows) == 4 and sum(bool(r.get("reused")) for r in rows) == 1
    update_interval.main([*argv, "--force"])  # all four finished: nothing trains
    assert len(trained) == 4
    # another budget's runs in the same work directory are not read back as this one's
    update_interval.main([*argv[:-2], "--out", str(tmp_path / "other.json"), "--admm-epochs", "2"])
    assert len(trained) == 8


def test_solver_speed_goes_on_from_the_solver_runs_an_interrupted_command_finished(tmp_path, monkeypatch,
                                                                                  script_logging):
    """It kept no run between commands: an interrupted command trained every solver again."""
    from benchmarks import solver_speed

    class Data:
        def train_dataloader(self):
            return [0] * 10

    trained = []

    def fake_solver(name, kwargs, cfg, net, dm, args, steps):
        if len(trained) == 2 and interrupt:
            raise KeyboardInterrupt
        trained.append((name, dict(kwargs), cfg.seed))
        points = [{"step": 5 * (i + 1), "seconds": float(i), "filters": {"c": 10 - i}} for i in range(4)]
        return {"method": name, "kwargs": kwargs, "trajectory": points, "final_filters": {"c": 7}, "final_total": 7,
                "test_accuracy": 0.9, "fit_s": 1.0, "macs": 1, "steps_per_epoch": steps}

    monkeypatch.setattr(solver_speed, "run_solver", fake_solver)
    monkeypatch.setattr(solver_speed, "build_data", lambda cfg: Data())
    monkeypatch.setattr(solver_speed, "train_dense", lambda cfg, dm, tmp: (None, {"cache": {"path": "dense.pt"}}))
    argv = ["--seeds", "0", "--variants", "base", "grow", "--work-dir", str(tmp_path / "work"),
            "--out", str(tmp_path / "out.json")]
    interrupt = True
    with pytest.raises(KeyboardInterrupt):
        solver_speed.main(argv)
    assert [t[0] for t in trained] == ["ssl", "ssr_l21"]
    interrupt = False
    monkeypatch.setattr(solver_speed, "SESSION", "a later command")
    out = solver_speed.main(argv)  # ssl and the base variant are read back: grow alone trains
    assert len(trained) == 3 and trained[-1][1]["rho_growth"] == 1.1
    assert [bool(r.get("reused")) for r in out["runs"]["0"].values()] == [True, True, False]
    # seconds are compared within one command's timings only (a reused run was timed under another load)
    levels = {v: out["comparisons"]["0"][v]["levels"] for v in ("aulm_base", "aulm_grow")}
    assert all(row["seconds_ratio_ssl_over_aulm_first"] is not None for row in levels["aulm_base"])
    assert all(row["seconds_ratio_ssl_over_aulm_first"] is None and row["epochs_ratio_ssl_over_aulm_first"]
               is not None for row in levels["aulm_grow"])
    # other settings (more epochs) are not read back as these
    solver_speed.main([*argv[:-2], "--out", str(tmp_path / "other.json"), "--epochs", "9"])
    assert len(trained) == 6
