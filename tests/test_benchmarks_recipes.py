"""benchmarks/recipes.py: the figures it derives from the runs (gap closed, means, paired
intervals, repeated seeds, failures), and one tiny run of the script end to end."""

import json

import pytest

from benchmarks import RUN_FILE, recipes
from benchmarks.render import render_recipes
from lightning_ssr.report import portable_paths
from tests.pools import InlinePool

TINY = ["dense.epochs=1", "schedule.sparsify_epochs=1", "schedule.finetune_epochs=1", "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1"]


def test_gap_closed_is_the_share_of_the_gap_to_the_ceiling():
    assert recipes.gap_closed(52.25, 76.66, 95.96) == pytest.approx(0.5585, abs=1e-4)  # the paper's DANN
    assert recipes.gap_closed(50.0, 50.0, 90.0) == 0.0
    assert recipes.gap_closed(50.0, 40.0, 90.0) == pytest.approx(-0.25)  # worse than source only: negative
    assert recipes.gap_closed(50.0, 60.0, None) is None  # no ceiling measured
    assert recipes.gap_closed(50.0, 60.0, 50.0) is None  # no gap to close


def _row(seed, only, dense, pruned, ceiling=98.0, status="ok"):
    return {"experiment": "da", "seed": seed, "status": status, "error": None if status == "ok" else "boom",
            "kind": "adaptation", "source_only_accuracy": only, "dense_accuracy": dense, "pruned_accuracy": pruned,
            "ceiling_accuracy": ceiling, "gap_closed": recipes.gap_closed(only, dense, ceiling), "macs_reduction": 4.0}


def test_summary_means_paired_intervals_repeated_seeds_and_failures():
    rows = [_row(0, 45.0, 76.0, 75.0), _row(1, 46.0, 77.0, 76.5), _row(2, 45.0, 76.0, 75.0),
            _row(3, 0, 0, 0, status="failed")]
    (e,) = recipes.summarize(rows)
    assert e["n_runs"] == 3 and e["seeds"] == [0, 1, 2] and e["failed"] == [{"seed": 3, "error": "boom"}]
    assert e["dense_accuracy"]["mean"] == pytest.approx(76 + 1 / 3)
    assert e["compressed_minus_dense"]["mean"] == pytest.approx((-1 - 0.5 - 1) / 3)
    assert e["compressed_minus_dense"]["verdict"] == "lower"  # -0.83 with a 95% interval of ±0.72
    assert e["dann_minus_source_only"]["verdict"] == "higher"
    assert e["identical_seeds"] == [[0, 2]]  # seeds 0 and 2 gave the very same accuracies: said, not hidden
    text = "\n".join(render_recipes({"summary": [e], "rows": rows}))
    assert "| da | 3 | 45.33 ± 0.58 | 76.33 ± 0.58 |" in text and "| 0=2 | 1 |" in text


def test_refuses_to_overwrite_a_file_with_more_runs_before_training(tmp_path):
    out = tmp_path / "recipes.json"
    out.write_text(json.dumps({"n_runs": 9, "command": "python benchmarks/recipes.py"}))
    with pytest.raises(SystemExit, match=r"\(9 runs, this budget plans"):
        recipes.main(["--experiments", "da_mnist_to_digits", "--seeds", "0", "--out", str(out)])


def test_an_override_of_the_domain_weight_is_its_own_control_and_runs_none(tmp_path, monkeypatch, capsys):
    """The command that made recipes_no_adaptation.json (``--override adaptation.domain_weight=0``)
    still runs as recorded: those runs are the controls, and none is added beside them."""
    ran = []
    monkeypatch.setattr(recipes, "job_pool", lambda *args: InlinePool())
    monkeypatch.setattr(recipes, "run_job", lambda e, s, overrides, out_dir, v=None: ran.append((e, s, v, overrides))
                        or {"result": {"status": "failed", "error": "not trained here"}})
    for override in ("adaptation.domain_weight=0", "++adaptation.domain_weight=0"):
        recipes.main(["--experiments", "da_mnist_to_digits", "--seeds", "0", "--out", str(tmp_path / "r.json"),
                      "--override", override, "--force"])  # (each writes over the file of another override)
        assert ran == [("da_mnist_to_digits", 0, None, [override])]
        assert "no equal-budget controls: --override sets adaptation.domain_weight itself" in capsys.readouterr().out
        ran.clear()
    recipes.main(["--experiments", "da_mnist_to_digits", "transfer_fmnist_to_mnist", "--seeds", "0",
                  "--out", str(tmp_path / "r.json"), "--force"])
    assert sorted((e, v or "") for e, _, v, _ in ran) == [  # transfer has no control
        ("da_mnist_to_digits", ""), ("da_mnist_to_digits", "no_adaptation"), ("transfer_fmnist_to_mnist", "")]


def test_a_tiny_run_writes_rows_summary_and_command_and_goes_on_after_an_interruption(tmp_path, capsys):
    out = tmp_path / "recipes.json"
    argv = ["--experiments", "da_mnist_to_digits", "--seeds", "0", "1", "--jobs", "1", "--out", str(out),
            "--work-dir", str(tmp_path / "work"), "--override", f"dense.cache_dir={tmp_path / 'dense'}", *TINY]
    recipes.main(argv)
    data = json.loads(out.read_text())
    assert "finished earlier" not in capsys.readouterr().out

    # interrupted before seed 1's control finished (its record cut short): the same command trains it only
    (tmp_path / "work" / "da_mnist_to_digits-1-no_adaptation" / RUN_FILE).write_text('{"status": "o')
    again = recipes.main(argv)
    printed = capsys.readouterr().out
    assert "seed 1 (no adaptation): (finished earlier)" not in printed
    assert "seed 0: (finished earlier)" in printed and "seed 1: (finished earlier)" in printed
    assert "seed 0 (no adaptation): (finished earlier)" in printed
    assert again["rows"][:3] == data["rows"][:3]
    assert {**again["rows"][3], "seconds": None} == {**data["rows"][3], "seconds": None}  # trained again alike
    recorded = " ".join(portable_paths(a, ".") for a in argv)  # the temporary directory as <tmp>
    assert data["command"] == "python benchmarks/recipes.py " + recorded and data["n_runs"] == 4
    assert str(tmp_path) not in data["command"].split()
    # each adaptation seed with its equal-budget control: the same run with the domain term off
    assert [(r["seed"], r.get("variant"), r["status"]) for r in data["rows"]] == [
        (0, None, "ok"), (1, None, "ok"), (0, "no_adaptation", "ok"), (1, "no_adaptation", "ok")]
    assert [res["config"]["adaptation"]["domain_weight"] > 0 for res in data["results"]] == [True, True, False, False]
    (e,) = data["summary"]
    control = {r["seed"]: r["dense_accuracy"] for r in data["rows"][2:]}
    dense = {r["seed"]: r["dense_accuracy"] for r in data["rows"][:2]}
    assert e["no_adaptation_seeds"] == [0, 1]
    assert e["dann_minus_no_adaptation"]["mean"] == pytest.approx(sum(dense[s] - control[s] for s in (0, 1)) / 2)
    assert e["n_runs"] == 2  # the controls are not counted as runs of the experiment
    for r in data["rows"][:2]:
        assert r["source"] == "MNISTDigits" and r["target"] == "UCIDigits" and r["macs_reduction"] > 4
        assert 0 <= r["ceiling_accuracy"] <= 100 and 0 <= r["domain_accuracy"] <= 100
        assert r["gap_closed"] == recipes.gap_closed(r["source_only_accuracy"], r["dense_accuracy"],
                                                     r["ceiling_accuracy"])
    assert e["compressed_minus_dense"]["n"] == 2
    # two seeds, two different runs: the seed reaches the source, the DANN and the compressed stages
    assert e["identical_seeds"] == []
