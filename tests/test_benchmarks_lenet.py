"""benchmarks/lenet.py: speed from a run's plan, and timing earlier runs again without training."""

import argparse
import json

import pytest

from benchmarks import RUN_FILE, config_digest, finished_run, lenet, set_aside_path
from lightning_ssr.app.cli import compose_config

PLAN = {"format_version": 1, "input_shape": [1, 1, 28, 28], "groups": [
    {"root": "model.fc1", "size": 500, "kept": list(range(0, 500, 6))[:80]},
    {"root": "model.conv2", "size": 50, "kept": [0, 17, 22, 35, 41, 47]},
    {"root": "model.conv1", "size": 20, "kept": [13, 15]}]}


def _run(seed, drop):
    return {"status": "ok", "dataset": "mnist", "method": "ssr_l21", "seed": seed, "plan": PLAN,
            "layers": [{"after": 2}, {"after": 6}, {"after": 80}, {"after": 10}],
            "macs_reduction": 40.0, "params_reduction": 44.0, "accuracy_drop_points": drop,
            "dense": {"accuracy": 0.99}, "pruned": {"accuracy": 0.99 - drop / 100},
            "speed": {"speedup_b1_eager": 1.0, "speedup_b1_runtime": 1.0, "speedup_b256": 1.0}}


def test_the_pruned_network_is_rebuilt_from_the_runs_plan():
    net = lenet.pruned_network({"plan": PLAN})
    assert (net.conv1.out_channels, net.conv2.out_channels, net.fc1.out_features) == (2, 6, 80)
    assert not net.training


def test_remeasure_times_the_earlier_runs_again_and_keeps_their_accuracy(tmp_path, monkeypatch):
    previous = {"command": "python benchmarks/lenet.py --seeds 0 1", "seconds": 123.0, "runs": [_run(0, 0.3), _run(1, 0.5)],
                "settings": {"datasets": ["mnist"], "methods": ["ssr_l21"], "seeds": [0, 1], "repeats": 60,
                             "out": "elsewhere.json", "remeasure": None, "force": False}}  # (a trained file's)
    src, out = tmp_path / "before.json", tmp_path / "after.json"
    src.write_text(json.dumps(previous))
    timed = []

    def fake_speed(row, repeats, tmp):
        timed.append((row["seed"], repeats))
        return {"speedup_b1_eager": 2.0, "speedup_b1_runtime": 6.5, "speedup_b256": 11.0,
                "runtime_ms": {"dense": 0.065, "pruned": 0.010}}
    monkeypatch.setattr(lenet, "measure_speed", fake_speed)
    lenet.main(["--remeasure", str(src), "--out", str(out), "--repeats", "7"])
    data = json.loads(out.read_text())
    assert timed == [(0, 7), (1, 7)]
    assert data["command"] == previous["command"] and "--remeasure" in data["speed_command"]
    assert data["seconds"] == 123.0
    assert data["settings"]["remeasure"].endswith("before.json") and data["settings"]["repeats"] == 7
    (row,) = [r for r in data["rows"] if r.get("source") == "measured"]
    assert row["drop_mean"] == pytest.approx(0.4) and row["speedup_b1_runtime"] == pytest.approx(6.5)
    assert row["n_runs"] == 2


def test_remeasure_of_a_missing_file_is_refused(tmp_path):
    with pytest.raises(SystemExit):
        lenet.main(["--remeasure", str(tmp_path / "nope.json"), "--out", str(tmp_path / "x.json")])


def test_remeasure_of_an_older_file_does_not_infer_its_command(tmp_path, monkeypatch):
    """The command was rebuilt from the file's settings: a command nobody ran, which as written
    would write another file (probe). It stays unrecorded; the remeasure's own command is kept."""
    previous = {"seconds": 1.0, "runs": [_run(0, 0.3)],
                "settings": {"datasets": ["mnist", "fashion_mnist"], "methods": ["ssr_l21", "ssr_l20", "l1"],
                             "seeds": [0, 1], "sparsify": 6, "finetune": 30, "repeats": 60, "override": [],
                             "out": "<tmp>/x.json"}}
    src, out = tmp_path / "before.json", tmp_path / "after.json"
    src.write_text(json.dumps(previous))
    monkeypatch.setattr(lenet, "measure_speed", lambda row, repeats, tmp: dict(row["speed"]))
    lenet.main(["--remeasure", str(src), "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["command"] is None
    assert written["speed_command"].startswith("python benchmarks/lenet.py --remeasure ")


def test_the_runtime_speed_up_takes_the_dense_networks_fastest_time_over_the_rows_runs():
    runs = [{"speed": {"runtime_ms": {"dense": d, "pruned": p}}} for d, p in ((0.066, 0.012), (0.110, 0.013),
                                                                              (0.070, 0.011))]
    assert lenet.runtime_speedup(runs) == pytest.approx(0.066 / 0.012)
    assert lenet.runtime_speedup([{"speed": {}}]) is None


def test_an_interrupted_benchmark_goes_on_from_the_runs_that_finished(tmp_path, monkeypatch):
    args = argparse.Namespace(dense_epochs=1, sparsify=1, finetune=1, override=[])
    calls = []

    class Result:
        def to_dict(self):
            return {"status": "ok", "accuracy_drop_points": 0.3}

    def fake_run(cfg, out_dir):
        calls.append(out_dir)
        return Result()

    monkeypatch.setattr(lenet, "run", fake_run)
    monkeypatch.setattr(lenet, "compose_config", lambda overrides: overrides)
    out = tmp_path / "mnist-l1@uniform-0"
    first = lenet.compress_job("mnist", "l1@uniform", 0, args, str(out))
    assert len(calls) == 1 and (out / RUN_FILE).is_file()

    again = lenet.compress_job("mnist", "l1@uniform", 0, args, str(out))  # finished: not trained again
    assert len(calls) == 1 and again.pop("reused") is True and again == first

    args.finetune = 2  # other settings: the earlier run does not count, and is kept aside, not trained over
    longer = lenet.compress_job("mnist", "l1@uniform", 0, args, str(out))
    assert len(calls) == 2
    aside = set_aside_path(out, first["config_sha256"])
    assert json.loads((aside / RUN_FILE).read_text()) == first
    # (a quick budget in the work directory of an interrupted full one destroyed its finished runs: probe)
    args.finetune = 1  # the first budget again: its run is found where it was kept, and moved back
    again = lenet.compress_job("mnist", "l1@uniform", 0, args, str(out))
    assert len(calls) == 2 and again.pop("reused") is True and again == first and not aside.exists()
    args.finetune = 2
    again = lenet.compress_job("mnist", "l1@uniform", 0, args, str(out))
    assert len(calls) == 2 and again.pop("reused") is True and again == longer

    # the same overrides over a changed config file: the earlier run does not count either
    monkeypatch.setattr(lenet, "compose_config", lambda overrides: {"overrides": overrides, "file": "edited"})
    lenet.compress_job("mnist", "l1@uniform", 0, args, str(out))
    assert len(calls) == 3


def test_a_failed_or_unreadable_run_is_trained_again(tmp_path, monkeypatch):
    args = argparse.Namespace(dense_epochs=1, sparsify=1, finetune=1, override=[])
    out = tmp_path / "run"
    out.mkdir()
    (out / RUN_FILE).write_text('{"status": "ok", "overr')  # cut short by the interruption
    assert finished_run(out, lenet.overrides("mnist", "l1", 0, args), "any") is None

    def failing_run(cfg, out_dir):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(lenet, "run", failing_run)
    monkeypatch.setattr(lenet, "compose_config", lambda overrides: overrides)
    row = lenet.compress_job("mnist", "l1", 0, args, str(out))
    assert row["status"] == "failed" and "out of memory" in row["error"]
    ovr = lenet.overrides("mnist", "l1", 0, args)
    assert row["config_sha256"] == config_digest(ovr) and finished_run(out, ovr, config_digest(ovr)) is None


def test_the_unpruned_reference_is_not_timed_and_its_row_stays(tmp_path, monkeypatch):
    none = {**_run(0, 0.0), "method": "none", "plan": None, "macs_reduction": 1.0, "params_reduction": 1.0,
            "layers": [{"after": 20}, {"after": 50}, {"after": 500}, {"after": 10}]}
    previous = {"command": "python benchmarks/lenet.py", "seconds": 1.0, "runs": [_run(0, 0.3), none],
                "settings": {"datasets": ["mnist"], "seeds": [0], "repeats": 60}}
    src, out = tmp_path / "before.json", tmp_path / "after.json"
    src.write_text(json.dumps(previous))
    timed = []
    monkeypatch.setattr(lenet, "measure_speed", lambda row, repeats, tmp: timed.append(row["method"]) or {})
    lenet.main(["--remeasure", str(src), "--out", str(out)])
    assert timed == ["ssr_l21"]  # nothing pruned: nothing to time
    methods = {r["method"] for r in json.loads(out.read_text())["rows"] if r.get("source") == "measured"}
    assert methods == {"ssr_l21", "none"}


def test_the_papers_rows_join_only_a_table_that_has_their_dataset():
    assert {r["dataset"] for r in lenet.paper_rows(["mnist", "fashion_mnist"])} == {"mnist"}
    assert len(lenet.paper_rows(["mnist"])) == len(lenet.PAPER)
    assert lenet.paper_rows(["fashion_mnist"]) == []


def test_a_structure_spec_prunes_to_that_structure_with_the_others_settings():
    """``l1@1-16-65``: the method prunes to the counts given, through target.rates by layer; the
    epochs and the other overrides are those of ``l1@uniform``."""
    args = argparse.Namespace(dense_epochs=20, sparsify=10, finetune=14, override=["module.distill=0.7"])
    given = lenet.overrides("mnist", "l1@1-16-65", 0, args)
    assert given[2:5] == ["pruning=l1", "target=rates",
                          "target.rates={model.conv1:0.95,model.conv2:0.68,model.fc1:0.87}"]
    uniform = lenet.overrides("mnist", "l1@uniform", 0, args)
    assert given[5:] == [o for o in uniform[2:] if not o.startswith(("pruning=", "target"))]
    assert lenet.structure_of("l1@uniform") is None and lenet.structure_of("ssr_l20@2-6-87") == {
        "model.conv1": 2, "model.conv2": 6, "model.fc1": 87}
    assert lenet.check_lenet_spec("l1@1-16-65") == "l1@1-16-65"
    for bad, match in (("l1@0-16-65", "keeps 1 to 20-50-500 filters; got model.conv1 0"),
                       ("l1@1-16-501", "model.fc1 501"), ("l9@1-16-65", "l9"), ("none@1-16-65", "prunes nothing")):
        with pytest.raises((argparse.ArgumentTypeError, ValueError), match=match):
            lenet.check_lenet_spec(bad)


def test_a_pruning_override_reaches_the_runs_that_prune_and_spares_the_others():
    """``--override pruning.rho=1.0``: the SSR runs take it; the dense model's job and ``none``,
    whose ``pruning=none`` config has no such key, compose without it."""
    args = argparse.Namespace(dense_epochs=20, sparsify=10, finetune=14,
                              override=["module.distill=0.7", "pruning.rho=1.0"])
    ssr = compose_config(lenet.overrides("mnist", "ssr_l20@method", 0, args))
    none = compose_config(lenet.overrides("mnist", "none", 0, args))
    assert ssr.pruning.rho == 1.0 and ssr.module.distill == none.module.distill == 0.7
    assert none.pruning.name == "none" and "rho" not in none.pruning
    assert "pruning.rho=1.0" not in lenet.overrides("mnist", "none", 0, args)
    # the l1 reference has no rho either: it runs beside the SSR runs instead of failing
    l1 = compose_config(lenet.overrides("mnist", "l1@uniform", 0, args))
    assert l1.pruning.name == "l1" and "rho" not in l1.pruning and l1.module.distill == 0.7


def test_the_reference_may_be_a_structure_and_must_be_among_the_methods_run(capsys, monkeypatch):
    """A reference nothing is run for compared nothing, without a word; a structure was refused."""
    monkeypatch.setattr(lenet, "train_all", lambda args, log: (_ for _ in ()).throw(RuntimeError("training")))
    with pytest.raises(SystemExit):
        lenet.main(["--datasets", "mnist", "--methods", "ssr_l20@method", "--out", "unused.json"])
    assert "--reference l1@uniform: not among the methods run on mnist" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one dataset has it, the other not
        lenet.main(["--datasets", "mnist", "fashion_mnist", "--methods", "ssr_l20@method", "none", "--methods-for",
                    "fashion_mnist", "l1@uniform", "none", "--out", "unused.json"])
    assert "not among the methods run on mnist," in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="training"):  # accepted: the run would start
        lenet.main(["--datasets", "mnist", "--methods", "ssr_l20@method", "l1@2-6-87", "--reference", "l1@2-6-87",
                    "--out", "unused.json"])


def test_a_pruning_override_no_method_has_is_refused_before_any_run(capsys):
    """A typo (``pruning.rhoo``) would reach no run at all: refused with the keys there are."""
    with pytest.raises(SystemExit):
        lenet.main(["--datasets", "mnist", "--methods", "ssr_l20@method", "l1@uniform", "none",
                    "--override", "pruning.rhoo=1.0", "--out", "unused.json"])
    err = capsys.readouterr().err
    assert "pruning.rhoo" in err and "'rho'" in err
