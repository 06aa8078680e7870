"""The pruning result (result.json) and the per-layer table."""

import json

import pytest
import torch

from lightning_ssr import PruningResult, count_cost, prune_oneshot
from lightning_ssr.app.models import build_model
from lightning_ssr.report import RESULT_SCHEMA_VERSION, format_layer_table, layer_rows, machine_info

# the keys of result.json: PruningResult's fields, the schema version and the derived figures
RESULT_KEYS = {"schema_version", "method", "config", "target", "dense", "pruned", "layers", "plan", "events", "trajectory",
               "timings", "machine", "status", "error", "warnings", "macs_reduction", "params_reduction",
               "accuracy_drop_points"}


def _result():
    return PruningResult(
        method="oneshot", config={"method": {"importance": "l2"}}, target={"macs": 0.25},
        dense={"macs": 2000, "params": 400, "accuracy": 0.99}, pruned={"macs": 500, "params": 100, "accuracy": 0.98},
        layers=[{"name": "conv1", "before": 20, "after": 5, "macs_before": 2000, "macs_after": 500,
                 "params_before": 400, "params_after": 100}],
        plan={"format_version": 1, "input_shape": [1, 1, 28, 28], "groups": [{"root": "conv1", "size": 20,
                                                                             "kept": [0, 3, 7, 8, 19]}]},
        events=[{"epoch": 3, "step": 120, "macs": 500, "params": 100}], timings={"fit_s": 1.5})


def test_to_dict_has_the_documented_keys_and_derived_figures():
    data = _result().to_dict()
    assert set(data) == RESULT_KEYS
    assert data["schema_version"] == RESULT_SCHEMA_VERSION == 1
    assert data["macs_reduction"] == 4.0 and data["params_reduction"] == 4.0
    assert data["accuracy_drop_points"] == pytest.approx(1.0)
    assert data["status"] == "ok" and data["error"] is None
    assert set(data["machine"]) >= {"cpu", "cores", "torch_threads", "torch", "python", "gpu"}
    json.dumps(data)  # plain data


def test_save_and_load_round_trip(tmp_path):
    result = _result()
    path = result.save(tmp_path / "out" / "result.json")
    assert path == tmp_path / "out" / "result.json"
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # written atomically, no temporary left
    assert json.loads(path.read_text())["macs_reduction"] == 4.0
    loaded = PruningResult.load(path)
    assert loaded == result
    assert loaded.to_dict() == result.to_dict()


def test_unreadable_or_foreign_results_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unreadable"):
        PruningResult.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="broken.json.*unreadable"):
        PruningResult.load(tmp_path / "broken.json")
    data = _result().to_dict()
    data["schema_version"] = 2
    with pytest.raises(ValueError, match="schema_version 2"):
        PruningResult.from_dict(data)
    # another JSON file (a benchmark's results, a list): named, and said to be no result
    (tmp_path / "bench.json").write_text('{"rows": [], "runs": []}')
    with pytest.raises(ValueError, match=r"bench.json': not a pruning result: an object without schema_version"):
        PruningResult.load(tmp_path / "bench.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list.json': not a pruning result: a JSON list"):
        PruningResult.load(tmp_path / "list.json")
    # edited by hand: figures that are no numbers, no dense figures, an unknown status (probe)
    for edit, match in ((lambda d: d["pruned"].update(accuracy="high"), r"pruned.accuracy is 'high', not a number"),
                        (lambda d: d.pop("dense"), r"it holds no dense"),
                        (lambda d: d.update(status="weird"), r"status 'weird' is not one of ok, failed"),
                        (lambda d: d.update(dense=[1]), r"dense is a list, not a mapping")):
        data = _result().to_dict()
        edit(data)
        (tmp_path / "edited.json").write_text(json.dumps(data))
        with pytest.raises(ValueError, match=r"edited.json': " + match):
            PruningResult.load(tmp_path / "edited.json")
    torch.save({"state_dict": {"w": torch.ones(3)}}, tmp_path / "pruned.pt")  # (a UnicodeDecodeError: probe)
    with pytest.raises(ValueError, match=r"pruned.pt' is unreadable: it is not text \(a checkpoint\?\); give the "
                                         r"run's result.json"):
        PruningResult.load(tmp_path / "pruned.pt")


def test_missing_figures_give_none_not_an_error():
    result = PruningResult(method="ssr_l21")
    assert result.macs_reduction is None and result.params_reduction is None and result.accuracy_drop_points is None
    assert result.summary() == "ssr_l21: not pruned"
    assert "4.0x fewer MACs" in _result().summary() and "98.00% (1.00 points lower)" in _result().summary()
    # a run that ended before its prune (status failed, the dense model's figures on both sides)
    ended = PruningResult(method="ssr_l20", status="failed", error="the model was not pruned: ...",
                          dense={"macs": 100, "params": 10}, pruned={"macs": 100, "params": 10})
    # (it read "1.0x fewer MACs, 1.0x fewer parameters")
    assert ended.summary() == "ssr_l20: not pruned (the run failed: the model was not pruned: ...)"
    # with accuracy measured, the model it ended with is not called pruned either
    ended.dense["accuracy"], ended.pruned["accuracy"] = 0.0995, 0.12
    assert ended.summary().splitlines()[1] == "test accuracy: dense 9.95% -> not pruned 12.00% (2.05 points higher)"
    same = PruningResult(method="none", dense={"macs": 100, "params": 10}, pruned={"macs": 100, "params": 10})
    assert same.summary().startswith("none: not pruned (the equal-budget baseline")  # (not "1.0x fewer MACs")


@pytest.mark.parametrize("pruned, said", [(0.9945, "99.45% (4.45 points higher)"), (0.94999, "95.00% (the same)")])
def test_a_gain_is_said_as_one(pruned, said):
    # a gain was printed as "(-4.45 points drop)"
    result = PruningResult(method="l1", dense={"macs": 2, "params": 2, "accuracy": 0.95},
                           pruned={"macs": 1, "params": 1, "accuracy": pruned})
    assert result.summary().endswith(f"dense 95.00% -> pruned {said}")


def test_layer_rows_and_table_from_two_costs():
    model = build_model("lenet5")
    x = torch.randn(2, 1, 28, 28)
    before = count_cost(model, x)
    prune_oneshot(model, x, [0.5, 0.5])
    after = count_cost(model, x)
    rows = layer_rows(before, after)
    assert [r["name"] for r in rows] == ["conv1", "conv2", "fc1", "fc2"]
    assert rows[0] == {"name": "conv1", "before": 20, "after": 10, "macs_before": 288000, "macs_after": 144000,
                       "params_before": 520, "params_after": 260}
    assert rows[3]["before"] == rows[3]["after"] == 10  # the classifier keeps its outputs
    table = format_layer_table(rows, before, after)
    assert "conv1" in table and f"{before.macs / after.macs:.1f}x fewer MACs" in table


def test_machine_info_describes_this_machine():
    info = machine_info()
    assert info["torch"] == torch.__version__ and info["cores"] >= 1


def test_shared_json_files_hold_no_paths_of_this_machine(tmp_path):
    import json
    import os
    import tempfile

    from lightning_ssr.report import write_json

    repo = tmp_path / "repo"
    home = os.path.expanduser("~")
    obj = {"out": repo / "benchmarks" / "results" / "x.json", "runs": [{"checkpoint": os.path.join(
        tempfile.gettempdir(), "run0", "pruned.pt"), "cache": os.path.join(home, ".cache", "d.pt")}],
        "name": "resnet20", "n": 3}
    path = write_json(tmp_path / "out.json", obj, relative_to=repo)
    assert json.loads(path.read_text()) == {
        "out": "./benchmarks/results/x.json", "runs": [{"checkpoint": "<tmp>/run0/pruned.pt", "cache": "~/.cache/d.pt"}],
        "name": "resnet20", "n": 3}
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically: no temporary file left


@pytest.mark.parametrize("measured, met, said", [
    (0.30, True, "latency target met: 0.300 ms measured"),
    # over what was asked, within the engine's tolerance: "met" alone read as a contradiction (probe)
    (0.36, True, "latency target met (+3%, within the 10% a timing may run over): 0.360 ms measured"),
    (0.40, False, "latency target missed (+14%): 0.400 ms measured")])
def test_a_latency_target_is_said_in_the_summary(measured, met, said):
    # a latency target's outcome was only inside the events
    result = PruningResult(method="l1", target={"latency": 0.35, "batch_size": 1},
                           dense={"macs": 2, "params": 2}, pruned={"macs": 1, "params": 1},
                           events=[{"epoch": 0, "latency_measured_ms": measured, "latency_target_met": met,
                                    "latency_dense_ms": 0.6}])
    assert result.summary().splitlines()[-1] == f"{said} for 0.350 ms asked per batch of 1 (dense 0.600 ms)"
    assert "latency" not in PruningResult(method="l1", target={"macs": 0.5}, events=result.events).summary()
    # timed again at the end (the command's latency.batch_sizes, on the CPU): both figures, each said for
    # what it is; a target timed on a GPU is not compared with the CPU's figure
    result.pruned["latency_ms"] = {"batch_1": 0.33}
    result.events[0]["latency_device"] = "cuda"
    assert result.summary().splitlines()[-1] == f"{said} for 0.350 ms asked per batch of 1 (dense 0.600 ms)"
    result.events[0]["latency_device"] = "cpu"
    assert result.summary().splitlines()[-1] == (
        f"{said} for 0.350 ms asked per batch of 1 (dense 0.600 ms); timed at the prune, in the fit. The finished "
        "model, timed again at the end beside the dense one: 0.330 ms (6% below the target)")
    result.pruned["latency_ms"] = {"batch_1": 0.42}
    assert result.summary().endswith("0.420 ms (20% above the target)")


def test_the_summary_of_a_run_that_failed_or_was_interrupted_says_so_and_why():
    failed = PruningResult(method="ssr_l20", status="failed", error="ValueError: ssr_l20: rho must be > 0, got -1",
                           dense={"macs": 2, "params": 2}, pruned={"macs": 2, "params": 2})
    assert failed.summary() == "ssr_l20: not pruned (the run failed: ValueError: ssr_l20: rho must be > 0, got -1)"
    stopped = PruningResult(method="l1", status="interrupted", error="RunInterrupted: stopped by SIGINT\nmore",
                            dense={"macs": 4, "params": 4}, pruned={"macs": 1, "params": 1})
    assert stopped.summary() == "l1: 4.0x fewer MACs, 4.0x fewer parameters (the run was interrupted: RunInterrupted: " \
                                "stopped by SIGINT)"
    assert "(the run" not in PruningResult(method="l1", dense={"macs": 4, "params": 4},
                                           pruned={"macs": 1, "params": 1}).summary()


def test_the_equal_budget_baseline_is_not_called_pruned():
    """pruning=none printed '1.0x fewer MACs' and 'dense 53.30% -> pruned 84.25%'."""
    baseline = PruningResult(method="none", dense={"macs": 4, "params": 4, "accuracy": 0.5},
                             pruned={"macs": 4, "params": 4, "accuracy": 0.8})
    assert baseline.summary().splitlines() == [
        "none: not pruned (the equal-budget baseline: the dense model trained on for the same epochs)",
        "test accuracy: dense 50.00% -> trained on 80.00% (30.00 points higher)"]


def test_a_filters_target_says_the_share_of_channels_it_measures():
    """The per-layer table counts a residual stream once per layer that writes to it: its filter sum
    put resnet50 at 0.675 of its filters for filters=0.5, and the summary said no fraction (probe)."""
    result = PruningResult(method="l1", target={"filters": 0.5}, status="ok",
                           dense={"macs": 100, "params": 10, "prunable_channels": 22}, pruned={"macs": 40, "params": 5},
                           events=[{"keep": {"a": 3, "b": 8}}],
                           plan={"groups": [{"root": "a", "size": 6, "kept": [0, 1, 2]},
                                            {"root": "b", "size": 16, "kept": list(range(8))}]})
    assert result.summary().splitlines()[0] == (
        "l1: 2.5x fewer MACs, 2.0x fewer parameters; 11 of 22 prunable channels kept (50.0%: the filters target's "
        "measure, where channels coupled across layers count once)")
    macs = PruningResult(**{**result.__dict__, "target": {"macs": 0.4}})
    assert macs.summary().splitlines()[0] == "l1: 2.5x fewer MACs, 2.0x fewer parameters"
