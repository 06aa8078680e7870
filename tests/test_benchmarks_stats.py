"""The benchmarks' arithmetic: means and spreads over seeds, paired intervals, the verdicts, and the
guard that keeps a quick budget from replacing a results file made with a larger one."""

import json
import math
from pathlib import Path

import pytest

from benchmarks import refuse_smaller
from benchmarks.methods import summarize as summarize_methods
from benchmarks.stats import interval, mean_std, paired, paired_by_seed, pm, t95


def test_one_run_has_no_spread_and_prints_as_one_number():
    assert mean_std([0.5]) == (0.5, None)
    assert pm(0.5, None) == "0.50" and pm(0.5, 0.1) == "0.50 ± 0.10" and pm(-0.25, None, sign=True) == "-0.25"
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert mean == 2.0 and std == pytest.approx(1.0)
    assert mean_std([]) == (None, None)


def test_the_paired_interval_is_the_student_t_interval_of_the_differences():
    d = [0.3, 0.5, 0.1, 0.4, 0.2]  # mean 0.3, sd 0.158
    p = paired(d)
    half = 2.776 * math.sqrt(0.025) / math.sqrt(5)
    assert p["mean"] == pytest.approx(0.3) and p["low"] == pytest.approx(0.3 - half)
    assert p["high"] == pytest.approx(0.3 + half) and p["verdict"] == "higher"
    assert paired([-x for x in d])["verdict"] == "lower"
    assert paired([0.3, -0.2, 0.1])["verdict"] == "not distinguishable"  # the interval holds 0
    assert paired([0.3])["verdict"].startswith("not distinguishable") and paired([])["n"] == 0
    assert t95(1) == 12.706 and t95(4) == 2.776 and t95(30) == 2.042
    # beyond the table, Student's quantile, not the normal's 1.96 (4% too narrow at 31 seeds: probe)
    for df, exact in [(31, 2.0395), (40, 2.0211), (60, 2.0003), (100, 1.9840), (1000, 1.9623)]:
        assert t95(df) == pytest.approx(exact, abs=1e-3)
    assert "[" in interval(p) and "higher" in interval(p)


def test_a_file_of_several_data_sets_is_compared_on_the_one_chosen(tmp_path, capsys):
    """By seed alone, the last data set's runs replaced the first's, and the output named none
    (probe: lenet.json's MNIST comparison printed its Fashion-MNIST figure)."""
    from benchmarks.stats import main

    runs = [{"method": m, "dataset": ds, "seed": seed, "status": "ok", "accuracy_drop_points": drop + seed / 10}
            for ds, base in (("mnist", 0.2), ("fashion_mnist", 1.0)) for seed in (0, 1, 2)
            for m, drop in (("a", base), ("b", base + 0.5))]
    path = tmp_path / "lenet.json"
    path.write_text(json.dumps({"runs": runs}))
    with pytest.raises(SystemExit, match="'a' ran on fashion_mnist, mnist; choose one with --dataset"):
        main([str(path), "a", str(path), "b"])
    assert main([str(path), "a", str(path), "b", "--dataset", "mnist"])["mean"] == pytest.approx(-0.5)
    assert "on mnist (points)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="missing.json: unreadable results file"):
        main([str(tmp_path / "missing.json"), "a", str(path), "b"])


def test_pairs_are_made_on_the_seeds_both_have():
    p = paired_by_seed({0: 99.0, 1: 98.5, 2: 98.0}, {0: 98.8, 2: 97.9, 3: 90.0})
    assert p["seeds"] == [0, 2] and p["mean"] == pytest.approx(0.15)


def _run(method, seed, acc, target=0.5, status="ok"):
    if status != "ok":
        return {"method": method, "seed": seed, "macs_target": target, "status": "failed", "error": "boom"}
    return {"method": method, "seed": seed, "macs_target": target, "status": "ok", "accuracy_drop_points": 1.0 - acc,
            "dense": {"accuracy": 0.99}, "pruned": {"accuracy": acc / 100 + 0.98}, "macs_reduction": 2.0,
            "params_reduction": 2.0, "timings": {}, "layers": [{"after": 4}, {"after": 10}]}


def test_the_methods_summary_pairs_each_method_with_the_reference_and_lists_failures():
    rows = [_run("l1@uniform", s, a) for s, a in enumerate([0.1, 0.2, 0.3])]
    rows += [_run("ssr_l21@method", s, a) for s, a in enumerate([0.6, 0.7, 0.9])]
    rows += [_run("none", s, a, target=None) for s, a in enumerate([1.5, 1.65, 1.85])]
    rows += [_run("fsm@uniform", 0, 0.0, status="failed")]
    summary = {(s["method"], s["macs_target"]): s for s in summarize_methods(rows)}
    ssr = summary[("ssr_l21@method", 0.5)]
    assert ssr["runs"] == 3 and ssr["vs_reference"]["mean"] == pytest.approx(1.6 / 3)
    assert ssr["vs_reference"]["verdict"] == "higher" and ssr["vs_none"]["verdict"] == "lower"
    assert summary[("l1@uniform", 0.5)]["vs_reference"] is None
    fsm = summary[("fsm@uniform", 0.5)]
    assert fsm["runs"] == 0 and fsm["errors"] == [{"seed": 0, "error": "boom"}]
    without_none = summarize_methods([r for r in rows if r["method"] != "none"])
    assert all(s.get("vs_none") is None for s in without_none)  # not run: no comparison, not "no common seeds"


def test_a_quick_budget_never_replaces_a_larger_results_file(tmp_path):
    path = tmp_path / "lenet.json"
    path.write_text(json.dumps({"command": "python benchmarks/lenet.py", "runs": [{}] * 70}))
    with pytest.raises(SystemExit, match=r"\(70 runs, this budget plans 4.*--force"):
        refuse_smaller(path, planned=4)
    refuse_smaller(path, planned=70)  # the same budget may replace it
    refuse_smaller(path, planned=4, force=True)
    refuse_smaller(tmp_path / "missing.json", planned=1)
    # as many runs, each of a smaller budget, or of another experiment: refused too (a tiny methods.py run
    # replaced the file of 135 runs, whose rows are the runs' records: counted as none; probe)
    path.write_text(json.dumps({"command": "python benchmarks/methods.py", "rows": [{"seed": 0}] * 135,
                                "settings": {"dense_epochs": 30, "train_size": None, "batches": 0,
                                             "override": ["trainer.limit_val_batches=1"]}}))
    budget = {"dense_epochs": 30, "train_size": None, "batches": 0, "override": ["trainer.limit_val_batches=1"]}
    kinds = {"unbounded": ("train_size", "batches"), "same": ("override",)}
    refuse_smaller(path, 135, budget=budget, **kinds)
    for smaller, said in [({"dense_epochs": 1}, "dense_epochs 30 > 1"), ({"train_size": 64}, "train_size None > 64"),
                          ({"batches": 4}, "batches 0 > 4"), ({"override": []}, "override .* where this command has")]:
        with pytest.raises(SystemExit, match=f"holds runs of a larger budget or another experiment \\({said}"):
            refuse_smaller(path, 135, budget={**budget, **smaller}, **kinds)
    with pytest.raises(SystemExit, match=r"\(135 runs, this budget plans 2"):
        refuse_smaller(path, 2, budget=budget, **kinds)
    # the same overrides in another order are the same experiment; a list that covers the file's may replace
    # it, one that leaves some out may not (another data set of as many runs replaced a file: review)
    path.write_text(json.dumps({"command": None, "rows": [{"seed": 0, "experiment": "da"}] * 4,
                                "settings": {"override": ["a=1", "b=2"], "datasets": ["mnist"]}}))
    refuse_smaller(path, 4, budget={"override": ["b=2", "a=1"], "datasets": ["mnist", "fashion_mnist"]},
                   same=("override",), covers=("datasets",))
    with pytest.raises(SystemExit, match=r"datasets: this command leaves out mnist: its command is not recorded\)"):
        refuse_smaller(path, 4, budget={"datasets": ["fashion_mnist"]}, covers=("datasets",))
    with pytest.raises(SystemExit, match=r"experiments: this command leaves out da"):  # (older files: their rows)
        refuse_smaller(path, 4, budget={"experiments": ["transfer"]}, covers=("experiments",),
                       from_rows={"experiments": "experiment"})


@pytest.mark.parametrize("script,argv", [
    ("methods", ["--dense-epochs", "1"]), ("solver_speed", ["--epochs", "1"]), ("lenet", ["--finetune", "1"]),
    ("lenet", ["--remeasure", "{quick}", "--repeats", "1"]), ("targets", ["--models", "lenet5", "--kinds", "macs"]),
    ("targets", ["--models", "lenet5", "--kinds", "macs", "--append", "--round-to", "8"]),
    # (a run of fewer models replaced the file of both, dropping the other's rows: probe)
    ("overhead", ["--models", "resnet20", "--steps", "25", "--rounds", "3"])])
def test_a_smaller_run_of_each_script_is_refused_before_it_trains(tmp_path, script, argv):
    """Each refusal comes before any training or timing: the call returns at once (probe: a remeasure,
    a run of fewer epochs, of fewer models replaced the files; a run of as many runs trained 8 minutes)."""
    import importlib
    import shutil

    smaller = "lenet_distill_t2.json"  # (a file of fewer runs than lenet.json, remeasured into its place)
    for name in (f"{script}.json", smaller):
        shutil.copy(Path(__file__).resolve().parent.parent / "benchmarks" / "results" / name, tmp_path / name)
    argv = [a.replace("{quick}", str(tmp_path / smaller)) for a in argv]
    with pytest.raises(SystemExit, match="--force"):
        importlib.import_module(f"benchmarks.{script}").main([*argv, "--out", str(tmp_path / f"{script}.json")])


@pytest.mark.parametrize("script", ["speedup", "overhead"])
def test_a_timing_benchmark_never_replaces_a_file_timed_with_a_larger_budget(tmp_path, script):
    """python -m benchmarks timed speedup with 12 repeats into the file of the full 24; overhead's
    --quick replaced a file of 3 rounds. Refused before any timing (the call returns at once)."""
    import importlib

    main = importlib.import_module(f"benchmarks.{script}").main
    path = tmp_path / f"{script}.json"
    path.write_text(json.dumps({"command": f"python benchmarks/{script}.py", "settings": {}}))
    smaller = ["--repeats", "3"] if script == "speedup" else ["--quick"]
    with pytest.raises(SystemExit, match=f"larger budget .*python benchmarks/{script}.py.*--force"):
        main([*smaller, "--out", str(path)])
    if script == "speedup":  # a file that records no repeats was timed with the default
        path.write_text(json.dumps({"settings": {"repeats": 30}}))
        with pytest.raises(SystemExit, match="repeats 30 > 24"):
            main(["--out", str(path)])


def test_a_budget_is_compared_key_by_key(tmp_path):
    """A timing benchmark plans no runs (``planned=None``): only its budget is compared, key by key,
    a key its file does not record read as ``recorded_default``."""
    path = tmp_path / "overhead.json"
    path.write_text(json.dumps({"settings": {"steps": 50, "rounds": 1}}))
    with pytest.raises(SystemExit, match=r"larger budget or another experiment \(steps 50 > 25: its command is not"):
        refuse_smaller(path, None, budget={"steps": 25, "rounds": 3})
    refuse_smaller(path, None, budget={"steps": 50, "rounds": 3})  # as large in every key: may replace it
    refuse_smaller(path, None, force=True, budget={"steps": 25})
    refuse_smaller(tmp_path / "missing.json", None, budget={"steps": 1})
    with pytest.raises(SystemExit, match=r"batch_size 64 > 8"):  # not recorded: made with the default
        refuse_smaller(path, None, budget={"steps": 50, "batch_size": 8}, recorded_default={"batch_size": 64})
    refuse_smaller(path, None, budget={"steps": 50, "batch_size": 64}, recorded_default={"batch_size": 64})


def test_the_overhead_ratios_are_step_times_over_step_times():
    from benchmarks.overhead import overhead_ratios

    r = overhead_ratios(on=0.105, off=0.100, update_per_step=0.002, step_with=0.110, step_without=0.100)
    assert r["ratio"] == pytest.approx(1.07) and r["ratio_between_fits"] == pytest.approx(1.10)
    assert r["ratio_between_fits_amortized"] == pytest.approx(1.12)


def test_the_target_error_is_achieved_over_requested_and_refusals_are_left_out():
    from benchmarks.targets import TOLERANCE, summarize_errors

    rows = [{"kind": "macs", "achieved": 0.495, "error": 0.495 / 0.5 - 1},
            {"kind": "macs", "achieved": 0.24, "error": 0.24 / 0.25 - 1},
            {"kind": "latency", "achieved": None, "error": None}]
    worst, within = summarize_errors(rows)
    assert worst == {"macs": pytest.approx(0.04)} and within is (0.04 <= TOLERANCE.get("macs", 0.02))


def test_the_solvers_time_to_a_level_both_reach():
    from benchmarks.solver_speed import common_levels, time_to

    def run(totals):
        return {"steps_per_epoch": 100, "trajectory": [
            {"step": 25 * (i + 1), "seconds": float(i + 1), "filters": {"a": t}} for i, t in enumerate(totals)]}

    aulm, ssl = run([60, 40, 30, 30, 30]), run([70, 50, 45, 28, 35])
    # the larger of the sparsest counts (30 and 28), then 1/4 and 1/2 of the way up to the densest (70)
    assert common_levels(aulm, ssl) == [30, 40, 50]
    assert max(common_levels(run([570, 530, 520]), run([570, 518]))) < 570  # never above the dense count
    assert time_to(aulm, 30) == {"step": 75, "epochs": 0.75, "seconds": 3.0, "censored": False}
    assert time_to(ssl, 30)["step"] is None  # it reached 28 but did not stay at or below 30
    assert time_to(ssl, 30, stay=False)["step"] == 100
    assert time_to(ssl, 45) == {"step": 75, "epochs": 0.75, "seconds": 3.0, "censored": False}
    assert time_to(ssl, 50) == {"step": 50, "epochs": 0.5, "seconds": 2.0, "censored": False}
    assert time_to(run([50, 50, 29]), 30)["censored"] is True  # only the last update: censored


def test_the_script_pairs_one_methods_drops_in_two_results_files_by_seed(tmp_path, capsys):
    from benchmarks.stats import main

    def write(name, drops, extra=()):
        runs = [{"method": "l1@uniform", "seed": s, "status": "ok", "accuracy_drop_points": d} for s, d in drops.items()]
        runs += list(extra)
        (tmp_path / name).write_text(json.dumps({"runs": runs}))
        return str(tmp_path / name)

    new = write("new.json", {0: 0.5, 1: 0.7, 2: 0.9}, [{"method": "l1@uniform", "seed": 3, "status": "failed",
                                                        "accuracy_drop_points": None}])
    old = write("old.json", {0: 0.4, 1: 0.5, 2: 0.6, 3: 0.6})
    p = main([new, "l1@uniform", old, "l1@uniform"])
    assert p["seeds"] == [0, 1, 2] and p["mean"] == pytest.approx(0.2, rel=1e-12)  # float64, a few roundings of ~1e-16
    assert p == {**paired([0.5 - 0.4, 0.7 - 0.5, 0.9 - 0.6]), "seeds": [0, 1, 2]}
    assert capsys.readouterr().out.startswith("drop of l1@uniform in new.json minus drop of l1@uniform in old.json "
                                              f"(points), seeds [0, 1, 2]: {interval(p)}")
    with pytest.raises(SystemExit, match="no finished run of 'ssr_l20@method'"):
        main([new, "ssr_l20@method", old, "l1@uniform"])


def test_the_script_pairs_a_field_of_recipes_rows_by_experiment_and_seed(tmp_path, capsys):
    """recipes.py writes rows by experiment: DANN against an equal-budget run without adaptation."""
    from benchmarks.stats import main

    def write(name, accuracies):
        rows = [{"experiment": "da", "seed": s, "status": "ok", "dense_accuracy": a} for s, a in accuracies.items()]
        (tmp_path / name).write_text(json.dumps({"rows": rows}))
        return str(tmp_path / name)

    dann, control = write("dann.json", {0: 80.0, 1: 78.0, 2: 79.0}), write("control.json", {0: 50.0, 1: 52.0})
    p = main([dann, "da", control, "da", "--field", "dense_accuracy"])
    assert p == {**paired([80.0 - 50.0, 78.0 - 52.0]), "seeds": [0, 1]}
    assert capsys.readouterr().out.startswith("dense_accuracy of da in dann.json minus dense_accuracy of da in "
                                              "control.json (points), seeds [0, 1]")
    with pytest.raises(SystemExit, match="no finished run of 'da' with 'pruned_accuracy'"):
        main([dann, "da", control, "da", "--field", "pruned_accuracy"])
    # one file with each seed's control beside it (recipes.py --control): the control's rows come
    # after, under the same experiment and seed, and are named by their variant, not mixed in
    rows = [{"experiment": "da", "seed": s, "status": "ok", "dense_accuracy": 80.0 - s} for s in range(3)]
    rows += [{"experiment": "da", "variant": "no_adaptation", "seed": s, "status": "ok", "dense_accuracy": 48.0 + s}
             for s in range(3)]
    (tmp_path / "both.json").write_text(json.dumps({"rows": rows}))
    both = str(tmp_path / "both.json")
    p = main([both, "da", both, "da:no_adaptation", "--field", "dense_accuracy"])
    assert p == {**paired([32.0, 30.0, 28.0]), "seeds": [0, 1, 2]}
