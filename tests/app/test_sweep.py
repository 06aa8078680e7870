"""Sweep reports (lightning_ssr.app.sweep) and Hydra multirun: failed runs recorded, the sweep goes on,
and the report aggregates every result.json."""

import csv
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_ssr.app.sweep import find_runs, format_summary, main, pareto_front, summarize, write_report
from lightning_ssr.report import PruningResult

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _result(tmp: Path, name: str, method: str, macs_kept: float, seed: int, accuracy: float,
            status: str = "ok", error: str | None = None, warned: tuple = (), schedule: dict | None = None,
            data: str | None = None, model: str = "lenet5", dense_accuracy: float = 0.99) -> Path:
    dense_macs = 1_000_000
    cli = {"model": {"name": model}, "pruning": {"name": method}, "target": {"macs": macs_kept}, "seed": seed,
           "dense": {"cache_dir": f"/somewhere/{seed}"}}
    if data is not None:
        cli["data"] = {"_target_": f"lightning_ssr.app.data.{data}", "image_size": 28}
    config = {"cli": cli} if schedule is None else {"cli": cli, "schedule": schedule}
    result = PruningResult(method=method, config=config, target={"macs": macs_kept},
                           dense={"macs": dense_macs, "params": 1000, "accuracy": dense_accuracy},
                           pruned={"macs": int(dense_macs * macs_kept), "params": int(1000 * macs_kept),
                                   "accuracy": accuracy},
                           layers=[{"name": "conv1", "before": 20, "after": 10, "macs_before": 1, "macs_after": 1,
                                    "params_before": 1, "params_after": 1}],
                           status=status, error=error, warnings=list(warned))
    (tmp / name).mkdir(parents=True, exist_ok=True)
    return result.save(tmp / name / "result.json")


def test_pareto_front_keeps_the_points_nothing_beats():
    points = [(1.0, 90.0), (2.0, 95.0), (2.0, 93.0), (3.0, 94.0), (None, 99.0), (0.5, None)]
    assert pareto_front(points) == {0, 1}
    # one target, two methods: 0.06% apart in MACs from rounding, 5 points apart in accuracy
    assert pareto_front([(114_536, 11.2), (114_600, 16.2)]) == {1}
    assert pareto_front([(114_536, 11.2), (114_600, 16.2)], tolerance=0.0) == {0, 1}
    # where no trade between layers closes the gap (round_to=8 on a small network), a run lands up to 2% below
    assert pareto_front([(20e6, 0.90), (20e6 * (1 - 0.0145), 0.89)]) == {0}


def test_summary_pools_seeds_per_configuration_and_lists_failures(tmp_path):
    _result(tmp_path, "0", "ssr_l20", 0.5, 0, 0.98)
    _result(tmp_path, "1", "ssr_l20", 0.5, 1, 0.96)
    _result(tmp_path, "2", "l1", 0.5, 0, 0.95)
    _result(tmp_path, "3", "l1", 0.5, 1, 0.0, status="failed", error="ValueError: lam must be >= 0")
    (tmp_path / "4" / ".hydra").mkdir(parents=True)  # a Hydra job that never wrote result.json
    runs = find_runs(tmp_path)
    assert [r["status"] for r in runs] == ["ok", "ok", "ok", "failed", "failed"]
    assert "did not finish" in runs[4]["error"]
    rows = {r["config"]: r for r in summarize(runs)}
    assert set(rows) == {"pruning=ssr_l20", "pruning=l1"}  # seed and cache paths are pooled
    ssr = rows["pruning=ssr_l20"]
    assert ssr["runs"] == 2 and ssr["failed"] == 0
    assert ssr["accuracy_mean"] == pytest.approx(97.0) and ssr["accuracy_std"] == pytest.approx(1.41421, rel=1e-4)
    assert ssr["drop_mean"] == pytest.approx(2.0)
    assert rows["pruning=l1"]["runs"] == 1 and rows["pruning=l1"]["failed"] == 1
    assert ssr["pareto"] and not rows["pruning=l1"]["pareto"]  # same MACs, lower accuracy


def test_report_command_writes_table_csv_and_plots(tmp_path, capsys):
    for i, (method, kept, acc) in enumerate([("ssr_l20", 0.5, 0.98), ("ssr_l20", 0.25, 0.97), ("l1", 0.25, 0.57)]):
        _result(tmp_path / "sweep", str(i), method, kept, 0, acc)
    assert main([str(tmp_path / "sweep"), "--run", "1"]) == 0
    out = capsys.readouterr().out
    assert "3 runs finished, 0 failed" in out
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "| pruning=ssr_l20 target.macs=0.25 | 1 |  | 97.00 |" in md  # one run: no spread to show (no schedule)
    with open(tmp_path / "sweep" / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["pareto"] for r in rows} == {"True", "False"}
    assert rows[2]["accuracy_mean"] == "57.0"  # (100 * 0.57 is 56.99999999999999 in binary)
    for name in ("pareto.png", "layers.png", "structure.png"):
        data = (tmp_path / "sweep" / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000


def _png_height(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[20:24], "big")  # the IHDR chunk: width, then height


def test_runs_on_other_data_sets_or_networks_are_compared_apart(tmp_path):
    """A sweep over data=mnist_10k,fashion_mnist had one Pareto front over both: Fashion-MNIST's runs
    took it from MNIST's by accuracies of another test set, and one dense point stood at the mean
    of the two (probe). Each network and data set has its own front, and a panel of its own."""
    for i, (data, method, acc) in enumerate([("MNISTDigits", "l1", 0.96), ("MNISTDigits", "ssr_l20", 0.95),
                                             ("FashionMNIST", "l1", 0.85), ("FashionMNIST", "ssr_l20", 0.86)]):
        _result(tmp_path / "two", str(i), method, 0.1, 0, acc, data=data,
                dense_accuracy=0.99 if data == "MNISTDigits" else 0.90)
    for i, (method, acc) in enumerate([("l1", 0.96), ("ssr_l20", 0.95)]):
        _result(tmp_path / "one", str(i), method, 0.1, 0, acc, data="MNISTDigits")
    rows = summarize(find_runs(tmp_path / "two"))
    assert {r["comparison"] for r in rows} == {"lenet5 on MNISTDigits 28x28", "lenet5 on FashionMNIST 28x28"}
    front = {(r["comparison"].split()[2], r["method"]) for r in rows if r["pareto"]}
    assert front == {("MNISTDigits", "l1"), ("FashionMNIST", "ssr_l20")}  # (one front over both: Fashion-MNIST's)
    write_report(tmp_path / "two")
    write_report(tmp_path / "one")
    assert _png_height(tmp_path / "two" / "pareto.png") > 1.8 * _png_height(tmp_path / "one" / "pareto.png")
    assert ("The runs test 2 networks or data sets (lenet5 on MNISTDigits 28x28; lenet5 on FashionMNIST 28x28): "
            "each has its own Pareto front") in (tmp_path / "two" / "report.md").read_text()
    assert "networks or data sets" not in (tmp_path / "one" / "report.md").read_text()
    with open(tmp_path / "two" / "report.csv") as f:  # (which front a row's pareto flag is of: review)
        assert {(r["comparison"], r["pareto"]) for r in csv.DictReader(f)} >= {("lenet5 on MNISTDigits 28x28", "True")}
    summary = format_summary(write_report(tmp_path / "two"))
    assert "Pareto front: lenet5 on MNISTDigits 28x28: " in summary and "; lenet5 on FashionMNIST 28x28: " in summary


def test_a_recipes_runs_are_compared_apart_from_plain_runs_of_the_same_network_and_data():
    """A transfer run (its dense model fine-tuned from Fashion-MNIST) shared the plain MNIST runs'
    Pareto front, which it topped, and their dense mean (probe)."""
    from lightning_ssr.app.sweep import comparison

    def cli(**extra):
        return {"config": {"cli": {"model": {"name": "lenet5"}, "transfer": None,
                                   "data": {"_target_": "lightning_ssr.app.data.MNISTDigits", "image_size": 28},
                                   **extra}}}
    fashion = {"_target_": "lightning_ssr.app.data.FashionMNIST", "image_size": 28}
    assert comparison(cli()) == "lenet5 on MNISTDigits 28x28"
    assert comparison(cli(transfer={"source": fashion, "freeze": []})) == (
        "lenet5 on MNISTDigits 28x28, transferred from FashionMNIST")
    adapted = cli(adaptation={"target": {"_target_": "lightning_ssr.app.data.MNISTM", "image_size": 28}})
    assert comparison(adapted) == "lenet5 on MNISTM 28x28, adapted from MNISTDigits"


def test_a_choice_a_run_was_not_given_is_labelled_by_what_it_ran_with(tmp_path):
    """A run of +experiment=... (which chose ssr_l20 at 0.1 itself) beside runs given pruning= and
    target.macs= was labelled "pruning=default target.macs=default" (probe)."""
    root = tmp_path / "mixed"
    _job(root, 0, ["pruning=l1", "target.macs=0.5"], "l1")
    _job(root, 1, ["+experiment=mine"], "ssr_l20", kept=0.1)
    labels = {r["method"]: r["config"] for r in summarize(find_runs(root))}
    assert labels == {"l1": "experiment=default pruning=l1 target.macs=0.5",
                      "ssr_l20": "experiment=mine pruning=ssr_l20 target.macs=0.1"}


def test_every_target_gets_its_panel_and_one_run_shows_no_spread(tmp_path, monkeypatch):
    from lightning_ssr.app import sweep

    for i, (method, kept, acc) in enumerate([("ssr_l20", 0.5, 0.98), ("l1", 0.5, 0.96), ("ssr_l20", 0.25, 0.97),
                                             ("l1", 0.25, 0.95)]):
        _result(tmp_path / "two", str(i), method, kept, 0, acc)
    _result(tmp_path / "one", "0", "ssr_l20", 0.5, 0, 0.98)
    _result(tmp_path / "one", "1", "l1", 0.5, 0, 0.96)
    titles = []
    monkeypatch.setattr(sweep, "plot_layers", lambda result, path, title: titles.append(title) or path)
    write_report(tmp_path / "two")
    write_report(tmp_path / "one")
    # the second target was left out of structure.png: one panel per target now
    one, two = _png_height(tmp_path / "one" / "structure.png"), _png_height(tmp_path / "two" / "structure.png")
    assert two > 1.5 * one  # 3.6 in more per panel
    # the per-layer plot is named by its configuration, as the table names it
    assert titles[0] == "Surviving filters per layer: pruning=ssr_l20 target.macs=0.25 (run 2)"
    with open(tmp_path / "two" / "report.csv") as f:
        assert {r["accuracy_std"] for r in csv.DictReader(f)} == {""}  # one run per configuration: no spread


def test_report_command_says_what_is_wrong(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no runs" in capsys.readouterr().err
    _result(tmp_path / "one", "0", "l1", 0.5, 0, 0.9)
    assert main([str(tmp_path / "one"), "--run", "7"]) == 2
    assert "--run '7': no run there; finished runs: ['0']" in capsys.readouterr().err
    # a failed run: its layers.png of an earlier report was removed, and nothing said (probe)
    _result(tmp_path / "one", "1", "l1", 0.5, 1, 0.0, status="failed", error="ValueError: lam must be >= 0")
    assert main([str(tmp_path / "one")]) == 1 and (tmp_path / "one" / "layers.png").is_file()  # (1: a run failed)
    capsys.readouterr()
    assert main([str(tmp_path / "one"), "--run", "1"]) == 2
    assert ("--run '1': that run failed, so it has no per-layer table; finished runs: ['0']"
            in capsys.readouterr().err)
    assert (tmp_path / "one" / "layers.png").is_file()


def test_one_run_is_counted_in_the_singular(tmp_path, capsys):
    _result(tmp_path / "one", "0", "l1", 0.5, 0, 0.9)
    assert main([str(tmp_path / "one"), "--no-plots"]) == 0
    assert capsys.readouterr().out.startswith("1 run finished, 0 failed, 1 configuration; Pareto front: l1 (90.00% at 2.0x)")
    assert "\n1 run finished, 0 failed." in (tmp_path / "one" / "report.md").read_text()


def test_a_sweep_that_cannot_write_its_report_still_counts_its_failed_runs(tmp_path, monkeypatch, capsys):
    from omegaconf import OmegaConf

    from lightning_ssr.app import sweep

    _result(tmp_path, "0", "l1", 0.5, 0, 0.9)
    _result(tmp_path, "1", "l1", 0.5, 1, 0.9, status="failed", error="ValueError: too small")

    def no_plots(*args, **kwargs):
        raise ImportError("the plots need matplotlib (pip install 'lightning_ssr[plots]')")

    monkeypatch.setattr(sweep, "write_report", no_plots)
    monkeypatch.setattr(sweep, "LAST_SWEEP", {})
    sweep.SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert sweep.LAST_SWEEP == {"dir": str(tmp_path), "runs": 2, "failed": 1}  # the exit code is 1
    assert "no sweep report" in capsys.readouterr().err
    # a DDP rank Lightning launched runs the command again, "-m" included: only the user's process reports
    # (the rank-1 process counted a run still being evaluated as failed, and wrote the report a second time)
    for name in ("LOCAL_RANK", "RANK"):  # (Lightning's launcher; torchrun's first process on another node)
        monkeypatch.setattr(sweep, "LAST_SWEEP", {})
        monkeypatch.setenv(name, "1")
        sweep.SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
        assert sweep.LAST_SWEEP == {} and capsys.readouterr().err == ""
        monkeypatch.delenv(name)


def test_the_report_gives_each_configurations_epochs_and_says_when_budgets_differ(tmp_path):
    """-m pruning=ssr_l20,l1 schedule.finetune_epochs=1: ssr_l20 trained its 10 sparsify epochs and
    1 more, l1 (the oneshot schedule) 1 in all, side by side in the table with nothing said."""
    _result(tmp_path, "0", "ssr_l20", 0.5, 0, 0.98, schedule={"sparsify_epochs": 10, "finetune_epochs": 1})
    _result(tmp_path, "1", "l1", 0.5, 0, 0.95, schedule={"sparsify_epochs": 0, "finetune_epochs": 1})
    write_report(tmp_path, plots=False)
    md = (tmp_path / "report.md").read_text()
    assert "| pruning=ssr_l20 | 1 | 11 | 98.00 |" in md and "| pruning=l1 | 1 | 1 | 95.00 |" in md
    assert "trained for different numbers of epochs (1, 11): their accuracies are not an equal-budget comparison" in md
    with open(tmp_path / "report.csv") as f:
        assert [r["epochs"] for r in csv.DictReader(f)] == ["11", "1"]
    _result(tmp_path, "1", "l1", 0.5, 0, 0.95, schedule={"sparsify_epochs": 0, "finetune_epochs": 11})
    write_report(tmp_path, plots=False)
    assert "different numbers of epochs" not in (tmp_path / "report.md").read_text()


def test_a_sweep_whose_runs_all_failed_gets_its_report_without_plots(tmp_path, capsys):
    """Every run refused (an impossible target in each): the Pareto plot failed on its log axis
    ("Data cannot be log-scaled"), so there was no report, and the command exited 2. The plots of
    an earlier sweep in the folder would have passed for this one's."""
    from lightning_ssr.app.sweep import main

    _result(tmp_path, "0", "l1", 0.001, 0, 0.0, status="failed", error="ValueError: target macs=0.001 is too small")
    _result(tmp_path, "1", "l1", 0.002, 0, 0.0, status="failed", error="ValueError: target macs=0.002 is too small")
    for name in ("pareto.png", "structure.png", "layers.png"):
        (tmp_path / name).write_bytes(PNG_MAGIC)  # an earlier sweep's
    assert main([str(tmp_path)]) == 1  # runs failed: 1, as for any sweep with a failed run
    out = capsys.readouterr()
    assert "0 runs finished, 2 failed" in out.out and "wrote" in out.out and not out.err
    assert "target macs=0.001 is too small" in (tmp_path / "report.md").read_text()
    assert not any((tmp_path / name).exists() for name in ("pareto.png", "structure.png", "layers.png"))
    # in a folder of the user's own (--out), nothing of theirs is removed
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "pareto.png").write_bytes(PNG_MAGIC)
    assert main([str(tmp_path), "--out", str(tmp_path / "figures")]) == 1
    assert (tmp_path / "figures" / "pareto.png").read_bytes() == PNG_MAGIC


def test_an_interrupted_run_is_reported_as_interrupted_not_failed(tmp_path):
    """Ctrl-C or SIGTERM in a run of a sweep: its result.json says interrupted (its error names the
    checkpoint to go on from); the report counts it apart from the failures and still exits 1."""
    _result(tmp_path, "0", "l1", 0.5, 0, 0.9)
    _result(tmp_path, "1", "l1", 0.5, 1, 0.0, status="interrupted",
            error="RunInterrupted: stopped by SIGTERM during the run that prunes at epoch 1 (optimizer step 12)")
    _result(tmp_path, "2", "l1", 0.5, 2, 0.0, status="failed", error="ValueError: too small")
    report = write_report(tmp_path, plots=False)
    text = Path(report["files"]["markdown"]).read_text()
    assert "1 run finished, 1 failed, 1 interrupted." in text
    assert "`1` (interrupted): RunInterrupted: stopped by SIGTERM" in text.replace(str(tmp_path / "1"), "1")
    assert format_summary(report).startswith("1 run finished, 1 failed, 1 interrupted, 1 configuration")
    assert main([str(tmp_path), "--no-plots"]) == 1  # the report's exit code: not everything finished


def test_finished_runs_that_warned_are_listed_with_their_first_warning(tmp_path):
    """A finished run whose method never updated (too short a sparsify phase) counted like the
    others, and its warning was only in the log of its job."""
    never = "pruning method 'ssr_l20' updates every 25 optimizer steps, but ... it would never update"
    _result(tmp_path, "0", "ssr_l20", 0.5, 0, 0.9, warned=(never, "latency target missed: ..."))
    _result(tmp_path, "1", "ssr_l20", 0.5, 1, 0.9)
    text = Path(write_report(tmp_path, plots=False)["files"]["markdown"]).read_text().replace(str(tmp_path) + "/", "")
    assert "2 runs finished" in text
    assert f"## Finished runs that warned\n\n- `0`: {never} (and 1 more in its result.json)\n" in text
    assert "`1`" not in text


def test_a_damaged_result_file_is_a_failed_run_not_a_crash(tmp_path):
    _result(tmp_path, "0", "l1", 0.5, 0, 0.9)
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "result.json").write_text('{"method": "l1", "dense": ')  # truncated
    report = write_report(tmp_path, plots=False)
    assert [r["status"] for r in report["runs"]] == ["ok", "failed"]
    assert "unreadable" in report["runs"][1]["error"]


def _grid_sweep(root: Path, task: list[str], params: dict | None = None, subdir: str = "${hydra.job.num}") -> Path:
    """A sweep folder as Hydra's basic sweeper leaves it at the start: its ``multirun.yaml``."""
    from omegaconf import OmegaConf

    root.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"hydra": {
        "sweep": {"dir": str(root), "subdir": subdir},
        "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "params": params},
        "overrides": {"hydra": ["hydra.mode=MULTIRUN", "hydra.job.chdir=false"], "task": task},
        "runtime": {"config_sources": []}, "job": {"config_name": "config"}}}), root / "multirun.yaml")
    return root


def _job(root: Path, num: int, overrides: list[str], method: str | None, kept: float = 0.5) -> None:
    from omegaconf import OmegaConf

    if method is not None:
        _result(root, str(num), method, kept, 0, 0.9)
    (root / str(num) / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(overrides), root / str(num) / ".hydra" / "overrides.yaml")


def test_the_report_says_what_every_run_was_given_alike(tmp_path):
    """A tiny test sweep (trainer.limit_train_batches=10) read like a real one: the table named only
    what varied."""
    for num, (method, macs) in enumerate([("l1", "0.5"), ("random", "0.5"), ("l1", "0.25")]):
        _job(tmp_path, num, [f"pruning={method}", f"target.macs={macs}", "trainer.limit_train_batches=10", "seed=3"],
             method, float(macs))
    write_report(tmp_path, plots=False)
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[4] == "Every run was given: `trainer.limit_train_batches=10 seed=3`."
    assert lines[5] == "" and lines[6].startswith("| configuration |")
    # as typed: '+experiment=...' was shown as 'experiment=...', which Hydra refuses, and '~key' was left off (probe)
    for num in range(2):
        _job(tmp_path, num, [f"pruning={('l1', 'random')[num]}", "+experiment=transfer_fmnist_to_mnist",
                             "~pruning.ignored_layers", "seed=3"], ("l1", "random")[num])
    shutil.rmtree(tmp_path / "2")  # (two runs now)
    write_report(tmp_path, plots=False)
    lines = (tmp_path / "report.md").read_text().splitlines()
    assert lines[4] == "Every run was given: `+experiment=transfer_fmnist_to_mnist ~pruning.ignored_layers seed=3`."


def test_the_runs_a_stopped_sweep_never_started_are_listed_with_their_commands(tmp_path, capsys):
    # Ctrl-C in job 1 of a 2 x 2 grid: job 0 finished, job 1 left its folder, jobs 2 and 3 none
    sweep = _grid_sweep(tmp_path / "sweep", ["pruning=l1,random", "target.macs=0.5,0.25", "seed=3"])
    _job(sweep, 0, ["pruning=l1", "target.macs=0.5", "seed=3"], "l1")
    _job(sweep, 1, ["pruning=l1", "target.macs=0.25", "seed=3"], None)
    assert main([str(sweep), "--no-plots"]) == 1  # the sweep is not complete: not a success
    out = capsys.readouterr().out
    assert "1 run finished, 1 failed" in out and "2 runs of the sweep's grid never started (the sweep was stopped" in out
    md = (sweep / "report.md").read_text()
    assert "## Runs that never started\n\n2 runs of the sweep's grid have no folder (the sweep was stopped" in md
    for num, overrides in [(2, "pruning=random target.macs=0.5 seed=3"), (3, "pruning=random target.macs=0.25 seed=3")]:
        assert (f"- job {num} (`{overrides}`): `lightning-ssr hydra.job.chdir=false {overrides} "
                f"hydra.run.dir={sweep / str(num)} hydra.mode=RUN`") in md
    # run as told, the report finds them and the sweep is whole; a run resumed with the checkpoint
    # the Ctrl-C message named has one more choice, and is the same job
    _job(sweep, 1, ["pruning=l1", "target.macs=0.25", "seed=3", "ckpt_path=ck/last.ckpt"], "l1", 0.25)
    _job(sweep, 2, ["pruning=random", "target.macs=0.5", "seed=3"], "random")
    _job(sweep, 3, ["pruning=random", "target.macs=0.25", "seed=3"], "random", 0.25)
    report = write_report(sweep, plots=False)
    assert report["missing"] == [] and "never started" not in (sweep / "report.md").read_text()


def test_no_command_is_given_into_a_folder_that_holds_a_run(tmp_path):
    from lightning_ssr.app.sweep import never_started

    # runs that keep no .hydra folder (hydra.output_subdir=null): their folders tell they ran
    sweep = _grid_sweep(tmp_path / "sweep", ["pruning=l1,random"])
    _result(sweep, "0", "l1", 0.5, 0, 0.9)
    assert [m["job"] for m in never_started(sweep, find_runs(sweep))] == [1]
    write_report(sweep, plots=False)
    assert "\n1 run of the sweep's grid has no folder" in (sweep / "report.md").read_text()
    _result(sweep, "1", "random", 0.5, 0, 0.9)
    assert never_started(sweep, find_runs(sweep)) == []


def test_the_grid_includes_the_sweepers_params_and_other_sweepers_are_not_guessed(tmp_path):
    from lightning_ssr.app.sweep import planned_jobs

    sweep = _grid_sweep(tmp_path / "a", ["target.macs=0.5,0.25"], params={"pruning": "l1,random"})
    assert planned_jobs(sweep)[1] == [["pruning=l1", "target.macs=0.5"], ["pruning=l1", "target.macs=0.25"],
                                      ["pruning=random", "target.macs=0.5"], ["pruning=random", "target.macs=0.25"]]
    (tmp_path / "b").mkdir()
    assert planned_jobs(tmp_path / "b") is None  # not a sweep: no multirun.yaml
    optuna = (tmp_path / "a" / "multirun.yaml").read_text().replace(
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", "hydra_plugins.optuna_sweeper.OptunaSweeper")
    (tmp_path / "b" / "multirun.yaml").write_text(optuna)
    assert planned_jobs(tmp_path / "b") is None  # its trials are not a grid fixed at the start
    shuffled = _grid_sweep(tmp_path / "c", ["seed=shuffle(1,2,3)"])
    assert planned_jobs(shuffled) is None  # its order is drawn anew: job numbers cannot be told


def test_runs_an_earlier_sweep_left_in_the_folder_are_listed_apart_not_counted(tmp_path, capsys):
    # the folder held a 2 x 2 sweep; run again with pruning=l1 target.macs=0.5 alone, its job 0 is
    # folder 0, and folders 1-3 are the earlier sweep's: folder 2 is even of the same configuration,
    # and must not be pooled with job 0 as a second seed
    sweep = _grid_sweep(tmp_path / "sweep", ["pruning=l1", "target.macs=0.5"])
    _job(sweep, 0, ["pruning=l1", "target.macs=0.5"], "l1")
    _job(sweep, 1, ["pruning=random", "target.macs=0.5"], "random")
    _job(sweep, 2, ["pruning=l1", "target.macs=0.5"], "l1")
    _job(sweep, 3, ["pruning=l1", "target.macs=0.25"], None)  # (unfinished: not a failure of this sweep)
    assert main([str(sweep), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1 run finished, 0 failed") and "3 runs in the folder are of an earlier sweep" in out
    report = write_report(sweep, plots=False)
    assert [r["runs"] for r in report["rows"]] == [1] and len(report["strays"]) == 3
    md = (sweep / "report.md").read_text()
    assert "## Runs in this folder that are not the sweep's (not counted)" in md
    assert (f"- `{sweep / '1'}` (an earlier sweep's: its choices are not those of the job its folder now stands for "
            "(the sweep was run again in its folder with other values, which renumbers its jobs)): "
            "`pruning=random target.macs=0.5`") in md
    # a run of its own put in the sweep's folder is not said to be an earlier sweep's (probe)
    _job(sweep, "mine", ["model=resnet20", "pruning=l1", "target.macs=0.5"], "l1")
    assert main([str(sweep), "--no-plots"]) == 0
    assert ("4 runs in the folder are not the sweep's (an earlier sweep's, or in no job's folder), not counted"
            in capsys.readouterr().out)
    assert (f"- `{sweep / 'mine'}` (a run of its own: its folder is no job's of the sweep, and its choices are no "
            "job's): `model=resnet20 pruning=l1 target.macs=0.5`") in (sweep / "report.md").read_text()


def test_a_job_whose_folder_holds_an_earlier_sweeps_run_is_listed_as_never_started_without_a_command(tmp_path,
                                                                                                     capsys):
    # the sweep stopped before job 1, whose folder still holds an earlier sweep's ssl run: the grid
    # is not complete, and running job 1 alone there would write over that run
    sweep = _grid_sweep(tmp_path / "sweep", ["pruning=l1,random"])
    _job(sweep, 0, ["pruning=l1"], "l1")
    _job(sweep, 1, ["pruning=ssl"], "ssl")
    assert main([str(sweep), "--no-plots"]) == 1
    assert "1 run of the sweep's grid never started" in capsys.readouterr().out
    md = (sweep / "report.md").read_text()
    assert "- job 1 (`pruning=random`): its folder holds a run of an earlier sweep (listed below)" in md
    assert "hydra.run.dir" not in md


def test_folders_named_otherwise_than_by_job_number_are_matched_by_their_choices(tmp_path):
    # hydra.sweep.subdir=${seed}: folders 1, 2, 3 are seeds, not job numbers
    sweep = _grid_sweep(tmp_path / "sweep", ["pruning=l1", "seed=1,2,3"], subdir="${seed}")
    for seed in (1, 2, 3):
        _job(sweep, seed, ["pruning=l1", f"seed={seed}"], "l1")
    report = write_report(sweep, plots=False)
    assert [(r["config"], r["runs"]) for r in report["rows"]] == [("l1", 3)]
    assert report["strays"] == [] and report["missing"] == []


def test_a_stopped_sweep_names_its_rows_by_what_it_sweeps_and_counts_interruptions_apart(tmp_path):
    # only l1's runs exist so far: the rows still say pruning=l1, since the grid sweeps pruning
    sweep = _grid_sweep(tmp_path / "sweep", ["pruning=l1,random", "target.macs=0.5,0.25"])
    _job(sweep, 0, ["pruning=l1", "target.macs=0.5"], "l1")
    _job(sweep, 1, ["pruning=l1", "target.macs=0.25"], "l1", 0.25)
    record = _result(sweep, "1", "l1", 0.25, 0, 0.0, status="interrupted", error="RunInterrupted: stopped by SIGINT")
    data = json.loads(record.read_text())
    data["config"]["started_at"] = 1e9 - 3600  # (the attempt that wrote the checkpoints below)
    record.write_text(json.dumps(data))
    saved = sweep / "1" / "logs" / "version_0" / "checkpoints"
    saved.mkdir(parents=True)
    torch.save({"state_dict": {}}, saved / "epoch=0-step=2.ckpt")
    torch.save({"state_dict": {}}, saved / "epoch=0-step=4.ckpt")
    (saved / "epoch=0-step=6.ckpt").write_bytes(b"PK\x03\x04 cut short by the kill")  # newer, but not whole
    for age, name in enumerate(("epoch=0-step=6.ckpt", "epoch=0-step=4.ckpt", "epoch=0-step=2.ckpt")):
        os.utime(saved / name, (1e9 - age * 60, 1e9 - age * 60))  # in the order they were written
    report = write_report(sweep, plots=False)
    assert [r["config"] for r in report["rows"]] == ["pruning=l1 target.macs=0.5", "pruning=l1 target.macs=0.25"]
    md = (sweep / "report.md").read_text()
    assert "| pruning=l1 target.macs=0.25 | 0 (+1 interrupted) |" in md and "## Failed and interrupted runs" in md
    assert "Every run was given" not in md  # (the runs so far share pruning=l1; the grid's jobs do not)
    # how to go on with it alone, in its folder, from the checkpoint it left (a killed run had no command)
    ckpt = shlex.quote(f"ckpt_path='{saved.resolve() / 'epoch=0-step=4.ckpt'}'")  # (quoted for Hydra, then the shell)
    assert (f"  - goes on alone, in its folder, with: `lightning-ssr hydra.job.chdir=false pruning=l1 target.macs=0.25 "
            f"{ckpt} hydra.run.dir={sweep.resolve() / '1'} hydra.mode=RUN`") in md


def test_a_run_that_never_recorded_its_end_is_counted_as_running_or_killed(tmp_path, capsys):
    _result(tmp_path, "0", "l1", 0.5, 0, 0.9)
    _result(tmp_path, "1", "l1", 0.5, 1, 0.0, status="running", error="the run started at ... and has not recorded "
            "its end: it is still running, or it was killed")
    assert main([str(tmp_path), "--no-plots"]) == 1
    assert capsys.readouterr().out.startswith("1 run finished, 0 failed, 1 running or killed")
    md = (tmp_path / "report.md").read_text()
    assert "| l1 | 1 (+1 running or killed) |" in md and "## Failed and interrupted runs" in md
    assert f"- `{tmp_path / '1'}` (running, or killed): the run started at" in md


def test_a_running_runs_go_on_command_is_for_when_it_has_stopped_and_skips_a_checkpoint_gone_since(tmp_path):
    """A run still going rotates its checkpoints: one the report listed may be gone when it reads
    it (the report failed with FileNotFoundError); its command is worded for when it has stopped."""
    sweep = _grid_sweep(tmp_path / "sweep", ["pruning=l1", "target.macs=0.5,0.25"])
    _job(sweep, 0, ["pruning=l1", "target.macs=0.5"], "l1")
    _job(sweep, 1, ["pruning=l1", "target.macs=0.25"], "l1", 0.25)
    _result(sweep, "1", "l1", 0.25, 0, 0.0, status="running", error="the run started at ... and has not recorded "
            "its end: it is still running, or it was killed")
    saved = sweep / "1" / "logs" / "version_0" / "checkpoints"
    saved.mkdir(parents=True)
    torch.save({"state_dict": {}}, saved / "epoch=0-step=4.ckpt")
    (saved / "epoch=1-step=8.ckpt").symlink_to(saved / "rotated-away.ckpt")  # listed, then gone
    write_report(sweep, plots=False)
    md = (sweep / "report.md").read_text()
    ckpt = shlex.quote(f"ckpt_path='{saved.resolve() / 'epoch=0-step=4.ckpt'}'")
    assert (f"  - if it is no longer running, it goes on alone, in its folder, with: `lightning-ssr "
            f"hydra.job.chdir=false pruning=l1 target.macs=0.25 {ckpt} hydra.run.dir={sweep.resolve() / '1'} "
            "hydra.mode=RUN`") in md
    # a checkpoint written before the attempt started is an earlier attempt's: the sweep run again would not take
    # it, nor does the command
    os.utime(saved / "epoch=0-step=4.ckpt", (1e9, 1e9))
    write_report(sweep, plots=False)
    assert (f"with: `lightning-ssr hydra.job.chdir=false pruning=l1 target.macs=0.25 hydra.run.dir="
            f"{sweep.resolve() / '1'} hydra.mode=RUN`") in (sweep / "report.md").read_text()


def test_a_sweep_run_again_with_other_values_sets_aside_what_its_folders_held(tmp_path):
    """Hydra numbers a sweep's jobs anew: run again in its folder with fewer values, job 0's folder
    held the finished run of another configuration. It is moved to .replaced, not written over,
    and the report counts this sweep's runs alone. Job 0's own configuration had finished in job
    1's folder: it is moved into job 0's, not trained again (it was); then a third sweep takes the
    l1 run back from .replaced."""
    sweep = tmp_path / "sweep"
    common = [sys.executable, "-m", "lightning_ssr.app.cli", "-m", "target.macs=0.5",
              f"dense.cache_dir={tmp_path / 'dense'}", f"hydra.sweep.dir={sweep}", *TINY]
    first = subprocess.run([*common, "pruning=l1,random"], check=False, capture_output=True, text=True, timeout=600,
                           cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    second = subprocess.run([*common, "pruning=random"], check=False, capture_output=True, text=True, timeout=600,
                            cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r"run 0: its folder held a run \(l1, ok\) of another configuration \(it differs in "
                     r"[^)]*pruning\.name[^)]*\); moved to \S+\.replaced\S+, not written over", second.stderr)
    (aside,) = (p.parent for p in (sweep / ".replaced").glob("*/result.json"))
    assert json.loads((aside / "result.json").read_text())["method"] == "l1" and (aside / "pruned.pt").is_file()
    random_run = json.loads((sweep / "0" / "result.json").read_text())
    assert random_run["method"] == "random"
    assert f"run 0: finished before with the same configuration in {sweep / '1'} (the sweep was run again with " \
           f"other values); moved to {sweep / '0'}, not run again" in second.stdout
    assert random_run["pruned"]["checkpoint"] == str(sweep / "0" / "pruned.pt")
    assert (sweep / "0" / "pruned.pt").is_file() and not (sweep / "1" / "result.json").exists()
    assert "Epoch" not in second.stdout + second.stderr  # nothing trained
    report = write_report(sweep, plots=False)
    assert [(r["config"], r["runs"]) for r in report["rows"]] == [("random", 1)] and report["strays"] == []
    assert json.loads((aside / "result.json").read_text())["pruned"]["checkpoint"] == str(aside / "pruned.pt")
    # (the set-aside record's paths follow it: folder 0 holds the random model next)
    third = subprocess.run([*common, "pruning=random,l1,random"], check=False, capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "run 0: finished before with the same configuration (" in third.stdout
    assert f"run 1: finished before with the same configuration in {aside}" in third.stdout
    l1_run = json.loads((sweep / "1" / "result.json").read_text())
    assert l1_run["method"] == "l1" and l1_run["pruned"]["checkpoint"] == str(sweep / "1" / "pruned.pt")
    # a value given twice: job 2 does not take job 0's run of this sweep (its folder stays whole)
    assert "run 2: finished before" not in third.stdout and (sweep / "0" / "result.json").is_file()
    report = write_report(sweep, plots=False)
    assert [(r["config"], r["runs"]) for r in report["rows"]] == [("pruning=random", 2), ("pruning=l1", 1)]


def test_a_job_does_not_take_its_sweeps_own_run_resumed_alone_with_the_go_on_command(tmp_path):
    """A value given twice (job 2 repeats job 0's): job 0's run of this very sweep, finished alone
    with the report's go-on command, has ckpt_path= among its overrides. Compared with job 0's
    planned overrides by equality, its folder passed for another sweep's, and job 2 took the run
    and left job 0 looking never run. The job's own choices are found in the folder's now, as
    the report finds them."""
    from omegaconf import OmegaConf

    from lightning_ssr.app.cli import compose_config, recover_finished_run
    from lightning_ssr.app.stages import code_identity, started_result

    sweep = _grid_sweep(tmp_path / "sweep", ["pruning=random,l1,random"])
    cfg = compose_config(["pruning=random"])
    (sweep / "0" / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(["pruning=random", "ckpt_path='/runs/epoch=1-step=8.ckpt'"]),
                   sweep / "0" / ".hydra" / "overrides.yaml")
    finished = started_result(cfg)
    finished.status, finished.config["code"] = "ok", code_identity(cfg)
    finished.save(sweep / "0" / "result.json")
    (sweep / "2" / ".hydra").mkdir(parents=True)
    assert recover_finished_run(cfg, sweep / "2", sweep) is None
    assert (sweep / "0" / "result.json").is_file() and not (sweep / "2" / "result.json").exists()
    # the same run in the folder of a job that planned other values (a sweep run again): taken back
    (sweep / "1" / ".hydra").mkdir(parents=True)
    for name in ("result.json", ".hydra/overrides.yaml"):
        (sweep / "1" / name).write_bytes((sweep / "0" / name).read_bytes())
    (sweep / "0" / "result.json").unlink()
    taken = recover_finished_run(cfg, sweep / "2", sweep)
    assert taken is not None and taken[1] == sweep / "1" and (sweep / "2" / "result.json").is_file()


TINY = ["dense.epochs=1", "schedule.sparsify_epochs=1", "schedule.finetune_epochs=1",
        "trainer.limit_train_batches=4", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
        "latency.batch_sizes=[]", "verbose=false"]


def test_a_sweep_run_whose_plugin_fails_says_where_the_plugin_raised(tmp_path):
    """The sweep's line for a failed run dropped the error's notes: a plugin's error named neither
    the plugin nor its line."""
    (tmp_path / "raises_probe_xyz.py").write_text("X = 1\nY = undefined_name_xyz\n")
    sweep = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr.app.cli", "-m", "seed=0", "plugins=[raises_probe_xyz.py]",
                           f"dense.cache_dir={tmp_path / 'dense'}", f"hydra.sweep.dir={sweep}", *TINY],
                          check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (f"run 0 failed (NameError: name 'undefined_name_xyz' is not defined (raised while loading the plugin "
            f"'raises_probe_xyz.py', at {tmp_path / 'raises_probe_xyz.py'}, line 2: Y = undefined_name_xyz: mend "
            "it there, or leave it out of plugins)); the sweep goes on") in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_multirun_records_a_broken_run_and_reports_the_sweep(tmp_path, launcher):
    """2x2 sweep; target.macs=0.02 with min_channels=8 cannot be met (the floors alone keep 9.5%
    of the MACs): that run fails at its checks, the other three finish, and the report lists all."""
    if launcher == "joblib":
        pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="needs hydra-joblib-launcher "
                            "(pip install 'lightning_ssr[sweeps]')")
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lightning_ssr.app.cli", "-m", "target.macs=0.5,0.02", "target.min_channels=1,8",
           f"dense.cache_dir={tmp_path / 'dense'}", f"hydra.sweep.dir={sweep}", *TINY]
    if launcher == "joblib":
        cmd += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    # the sweep went on past the broken run, and its exit code says one failed (as lightning-ssr-report's)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (f"lightning-ssr: 1 of the sweep's 4 runs failed; "
                                                    f"{sweep / 'report.md'} lists them with their errors")
    results = sorted(sweep.glob("*/result.json"))
    assert len(results) == 4
    data = {p.parent.name: json.loads(p.read_text()) for p in results}
    failed = [d for d in data.values() if d["status"] == "failed"]
    assert len(failed) == 1 and "too small" in failed[0]["error"]
    assert failed[0]["config"]["cli"]["target"] == {**failed[0]["config"]["cli"]["target"], "macs": 0.02,
                                                    "min_channels": 8}
    assert sum(d["status"] == "ok" and d["pruned"]["macs"] < d["dense"]["macs"] for d in data.values()) == 3
    md = (sweep / "report.md").read_text()
    assert "3 runs finished, 1 failed" in md and "too small" in md
    assert (sweep / "report.csv").is_file()
    # as quiet in a launcher's worker processes as in the command's own (joblib's printed Lightning's tips,
    # its seed lines and a FutureWarning of its own: probe)
    said = proc.stdout + proc.stderr
    assert not any(line in said for line in ("Tip: ", "Seed set to", "LeafSpec", "`Trainer.fit` stopped"))
    for name in ("pareto.png", "layers.png", "structure.png"):
        assert (sweep / name).read_bytes().startswith(PNG_MAGIC)


def test_a_search_run_without_multirun_says_it_is_one_run(tmp_path):
    """+experiment=optuna_ssr without -m ran one job of its defaults, with no word of the search."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs hydra-optuna-sweeper "
                        "(pip install 'lightning_ssr[optuna]')")
    cmd = [sys.executable, "-m", "lightning_ssr", "+experiment=optuna_ssr", "target.macs=0"]  # (refused: no training)
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "LIGHTNING_SSR_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1
    assert ("lightning-ssr: this configuration's sweeper (OptunaSweeper) searches only with -m; this is one run of "
            "its defaults") in proc.stderr


def test_the_optuna_experiment_searches_and_reports(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs hydra-optuna-sweeper "
                        "(pip install 'lightning_ssr[optuna]')")
    import yaml

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lightning_ssr.app.cli", "-m", "+experiment=optuna_ssr", "hydra.sweeper.n_trials=2",
           f"dense.cache_dir={tmp_path / 'dense'}", f"hydra.sweep.dir={sweep}", *TINY]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    assert len(results) == 2 and all(r["status"] == "ok" and r["method"] == "ssr_l21" for r in results)
    # every trial met the 4x MACs target; the searched values differ between trials
    assert all(abs(r["pruned"]["macs"] / r["dense"]["macs"] - 0.25) <= 0.02 * 0.25 for r in results)
    assert len({r["config"]["cli"]["pruning"]["lam"] for r in results}) == 2
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == {"pruning.lam", "pruning.rho", "schedule.update_every_n_steps"}
    assert best["best_value"] == max(r["pruned"]["val_accuracy"] for r in results)
    assert (sweep / "report.md").is_file()


def test_a_search_whose_every_trial_failed_ends_with_its_report_not_a_traceback(tmp_path):
    """Every trial of an Optuna search failed (here a plugin that cannot load, which only a trial
    finds): the plugin's sweeper ended in a traceback ("No trials are completed yet") with no
    report, and each trial's line came with two of the sweeper's saying the search had exceeded
    its failure rate, beside seven lines of its database layer's plugins."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs hydra-optuna-sweeper "
                        "(pip install 'lightning_ssr[optuna]')")
    broken = tmp_path / "broken_plugin.py"
    broken.write_text('raise RuntimeError("broken on purpose")\n')
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "lightning_ssr.app.cli", "-m", "+experiment=optuna_ssr", "hydra.sweeper.n_trials=2",
           f"plugins=[{broken}]", f"dense.cache_dir={tmp_path / 'dense'}", f"hydra.sweep.dir={sweep}", *TINY]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 1, said[-3000:]
    assert "Traceback" not in said and "No trials are completed yet" not in said
    assert "float-castable" not in said and "setup plugin" not in said
    assert said.count("RuntimeError: broken on purpose") == 2
    assert proc.stderr.rstrip().endswith(f"lightning-ssr: every one of the search's 2 trials failed, so it has no best "
                                         f"parameters (no optimization_results.yaml); {sweep / 'report.md'} lists "
                                         "them with their errors")
    assert "broken on purpose" in (sweep / "report.md").read_text()
    assert not (sweep / "optimization_results.yaml").exists()


def test_the_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs hydra-submitit-launcher "
                        "(pip install 'lightning_ssr[slurm]')")
    from hydra import compose, initialize_config_dir

    from lightning_ssr.app.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.partition) == (1, 1, "gpu")


def test_configurations_are_named_by_what_was_swept(tmp_path):
    """lightning-ssr -m pruning=ssr_l20,l1 target.macs=0.1,0.05 seed=0,1: each configuration is named
    by its command-line choices, not by every key in which the method sections differ."""
    i = 0
    for method in ("ssr_l20", "l1"):
        for kept in (0.1, 0.05):
            for seed in (0, 1):
                path = _result(tmp_path, str(i), method, kept, seed, 0.97)
                data = json.loads(path.read_text())  # the method sections differ in many keys
                data["config"]["cli"]["pruning"].update({"lam": 0.001, "rho": 0.5} if method == "ssr_l20" else {})
                path.write_text(json.dumps(data))
                (tmp_path / str(i) / ".hydra").mkdir()
                (tmp_path / str(i) / ".hydra" / "overrides.yaml").write_text(
                    f"- pruning={method}\n- target.macs={kept}\n- seed={seed}\n")
                i += 1
    rows = {r["config"]: r for r in summarize(find_runs(tmp_path))}
    assert set(rows) == {f"pruning={m} target.macs={k}" for m in ("ssr_l20", "l1") for k in (0.1, 0.05)}
    assert all(r["runs"] == 2 for r in rows.values())
    # without the Hydra files, a config group's keys fold into its choice
    for d in tmp_path.iterdir():
        if (d / ".hydra").is_dir():
            (d / ".hydra" / "overrides.yaml").unlink()
    rows = {r["config"] for r in summarize(find_runs(tmp_path))}
    assert rows == {f"pruning=ssr_l20 target.macs={k}" for k in (0.1, 0.05)} | {
        f"pruning=l1 target.macs={k}" for k in (0.1, 0.05)}


def test_a_sweep_without_a_finished_run_says_so_instead_of_an_empty_front(tmp_path, capsys):
    _result(tmp_path, "0", "l1", 0.5, 0, 0.0, status="failed", error="ValueError: boom")
    assert main([str(tmp_path), "--no-plots"]) == 1
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith("; no finished run to compare") and "Pareto front" not in first


def test_a_sweep_stopped_before_its_first_job_lists_every_job_with_its_command(tmp_path, capsys):
    """Only multirun.yaml in the folder: 'no runs under ...' (exit 2) instead of the grid's jobs."""
    sweep = _grid_sweep(tmp_path / "sweep", ["pruning=l1,random"])
    assert main([str(sweep), "--no-plots"]) == 1
    assert "2 runs of the sweep's grid never started" in capsys.readouterr().out
    md = (sweep / "report.md").read_text()
    assert "- job 0 (`pruning=l1`): `lightning-ssr" in md and "- job 1 (`pruning=random`): `lightning-ssr" in md


def test_a_method_has_one_colour_in_every_plot_and_panels_name_their_target_plainly(tmp_path, monkeypatch):
    """l1 was blue in pareto.png and ssr_l20 blue in structure.png; panels were titled with a
    Python dict."""
    import matplotlib.axes

    for i, (method, kept, acc) in enumerate([("ssr_l20", 0.5, 0.98), ("l1", 0.5, 0.96)]):
        _result(tmp_path, str(i), method, kept, 0, acc)
    seen, titles = {}, []
    scatter, plot, set_title = matplotlib.axes.Axes.scatter, matplotlib.axes.Axes.plot, matplotlib.axes.Axes.set_title

    def spy_scatter(ax, *args, **kwargs):
        if kwargs.get("label") in ("ssr_l20", "l1"):  # a method's mean, ringed in its colour
            seen[("pareto", kwargs["label"])] = tuple(kwargs["edgecolors"][0])
        return scatter(ax, *args, **kwargs)

    def spy_plot(ax, *args, **kwargs):
        if "label" in kwargs and "color" in kwargs:  # structure.png: one line per configuration
            seen[("structure", kwargs["label"].removeprefix("pruning="))] = tuple(kwargs["color"])
        return plot(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "scatter", spy_scatter)
    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy_plot)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda ax, text, *a, **k: titles.append(text) or
                        set_title(ax, text, *a, **k))
    write_report(tmp_path)
    for method in ("ssr_l20", "l1"):
        assert seen[("pareto", method)] == seen[("structure", method)], seen
    assert seen[("pareto", "l1")] != seen[("pareto", "ssr_l20")]
    assert "target macs=0.5" in titles


def test_the_go_on_command_leaves_out_what_a_ddp_rank_added_to_the_sweeps_command(tmp_path):
    """A DDP rank Lightning launched runs the sweep's command again, with hydra.job.name,
    hydra.output_subdir and hydra.run.dir added (and hydra/hydra_logging=disabled, by main()), and
    its sweep writes multirun.yaml again: the report's commands carried them."""
    from omegaconf import OmegaConf

    from lightning_ssr.app.cli import run_alone_command

    hydra_cfg = OmegaConf.create({"runtime": {"config_sources": []}, "job": {"config_name": "config"},
                                  "overrides": {"hydra": ["hydra.sweep.dir=/s", "hydra.job.chdir=false",
                                                          'hydra.run.dir="/s/0"', "hydra.job.name=train_ddp_process_1",
                                                          "hydra.output_subdir=null", "hydra/hydra_logging=disabled"]}})
    command = run_alone_command(hydra_cfg, ["pruning=l1"], "/s/0")
    assert command == "lightning-ssr hydra.job.chdir=false pruning=l1 hydra.run.dir=/s/0 hydra.mode=RUN"
    # the same keys a user set stay on the command (they were left out too), the values a rank adds included,
    # in a command no rank ran (review)
    for user in (["hydra.job.name=mine", "hydra.output_subdir=cfg", "hydra/hydra_logging=none"],
                 ["hydra.output_subdir=null", "hydra/hydra_logging=disabled"]):
        hydra_cfg.overrides.hydra = user
        assert run_alone_command(hydra_cfg, ["pruning=l1"], "/s/0") == (
            f"lightning-ssr {' '.join(user)} pruning=l1 hydra.run.dir=/s/0 hydra.mode=RUN")


def test_runs_in_folders_of_numbers_and_of_other_names_are_all_found(tmp_path):
    """A folder of another name beside the job numbers ('old', a copy a user made) failed the
    report: "'<' not supported between instances of 'int' and 'str'"."""
    for name in ("10", "old", "2"):
        _job(tmp_path, name, ["pruning=l1", "seed=3"], "l1")
    assert [Path(r["dir"]).name for r in find_runs(tmp_path)] == ["2", "10", "old"]


def test_the_report_says_where_its_runs_were_evaluated_on_part_of_the_test_split(tmp_path):
    """It said "accuracy on the test split" of runs that each read trainer.limit_test_batches=2 of
    it (a single run's summary says "on part of the test split": probe)."""
    def header():
        write_report(tmp_path, plots=False)
        return (tmp_path / "report.md").read_text().splitlines()[2]

    for num, method in enumerate(["l1", "random"]):
        _result(tmp_path, str(num), method, 0.5, 0, 0.9)
    assert "accuracy on the test split;" in header()
    for num in range(2):
        path = tmp_path / str(num) / "result.json"
        data = json.loads(path.read_text())
        data["pruned"]["evaluation_limits"] = {"limit_test_batches": 2}
        path.write_text(json.dumps(data))
    assert "accuracy on part of the test split (trainer.limit_test_batches=2);" in header()
    # a failed run, measured nowhere, is no other limit (it said "differs between runs": probe)
    _result(tmp_path, "2", "l1", 0.5, 1, None, status="failed", error="RuntimeError: boom")
    assert "accuracy on part of the test split (trainer.limit_test_batches=2);" in header()
    data["pruned"]["evaluation_limits"] = {"limit_test_batches": 5}
    path.write_text(json.dumps(data))
    assert "accuracy on the test split, or part of it (trainer.limit_test_batches differs between runs);" in header()


def test_labels_write_an_optimizers_floats_short_but_apart(tmp_path):
    """An Optuna sweep's labels printed its samples whole (``module.lr=0.0012345678901234567``):
    each number is written with the fewest significant digits, four at least, that keep the
    configurations apart; integers and names stay as given."""
    root = tmp_path / "optuna"
    for num, (lr, steps) in enumerate([("0.0012345678901234567", "2000000"), ("0.0012345999", "2000000"),
                                       ("0.03", "3000000"), ("0.0012345678901234567", "3000000")]):
        _job(root, num, [f"module.lr={lr}", f"trainer.max_steps={steps}", "pruning=l1"], "l1")
    rows = summarize(find_runs(root))
    assert [r["config"] for r in rows] == [  # (six digits tell the first two apart; 0.0012346 is 0.00123460)
        "module.lr=0.00123457 trainer.max_steps=2000000", "module.lr=0.0012346 trainer.max_steps=2000000",
        "module.lr=0.03 trainer.max_steps=3000000", "module.lr=0.00123457 trainer.max_steps=3000000"]
    # report.csv keeps the values as given, for a program to read back (review)
    write_report(root, plots=False)
    with open(root / "report.csv", newline="") as f:
        assert next(r["config"] for r in csv.DictReader(f)) == (
            "module.lr=0.0012345678901234567 trainer.max_steps=2000000")
    # values apart as given stay apart as shown: "2.0" is not written "2" beside a run of "2" (review)
    apart = tmp_path / "apart"
    for num, t in enumerate(["2", "2.0", "2.00001"]):
        _job(apart, num, [f"module.temperature={t}", "pruning=l1"], "l1")
    assert [r["config"] for r in summarize(find_runs(apart))] == [
        "module.temperature=2", "module.temperature=2.0", "module.temperature=2.00001"]
