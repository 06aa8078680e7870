import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from hydra.errors import ConfigCompositionException, InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from omegaconf import OmegaConf
from torch import nn

from lightning_ssr.app.cli import CONFIG_DIR, compose_config, run
from lightning_ssr.app.models import build_model
from lightning_ssr.app.stages import build_pruning, cap_log_interval
from lightning_ssr.checkpoint import load_pruned, read_checkpoint
from lightning_ssr.methods import available_methods
from lightning_ssr.pruning import SHORT_FIT_STEPS
from lightning_ssr.report import PruningResult
from lightning_ssr.targets import parse_rates
from tests.numerics import implementations_tolerance

FAST = [
    "data=uci_digits",
    "dense.epochs=1",
    "schedule.sparsify_epochs=1",
    "schedule.finetune_epochs=1",
    "schedule.update_every_n_steps=5",
    "trainer.limit_train_batches=8",
    "target.macs=0.2",
    "latency.repeats=3",
    "latency.batch_sizes=[1]",
    "trainer.enable_progress_bar=false",
]
ONESHOT_FAST = ["pruning=oneshot"] + [o for o in FAST if not o.startswith("schedule.sparsify")]
TABLE_HEADER = "layer                          filters"


def _compose(overrides):
    return compose_config(overrides)


def test_default_config_composes_with_every_group():
    cfg = _compose([])
    assert cfg.model.name == "lenet5"
    assert cfg.data._target_.endswith("MNISTDigits")
    assert cfg.pruning.name == "ssr_l20" and cfg.pruning.rho == 0.5
    assert cfg.target.macs == 0.05
    assert (cfg.schedule.sparsify_epochs, cfg.schedule.finetune_epochs, cfg.schedule.update_every_n_steps) == (10, 10, 25)
    assert set(cfg) >= {"model", "data", "pruning", "target", "schedule", "trainer", "module", "dense", "seed"}
    assert (Path(CONFIG_DIR) / "config.yaml").is_file()


def test_every_pruning_file_names_a_registered_method_and_builds():
    names = sorted(p.stem for p in (Path(CONFIG_DIR) / "pruning").glob("*.yaml"))
    assert set(names) == set(available_methods()) | {"none"}
    for name in names:
        cfg = _compose([f"pruning={name}"])
        assert cfg.pruning.name == name
        callback = build_pruning(cfg)
        assert (callback is None) == (name == "none")
        if callback is not None:
            assert callback.method.name == name


def test_pruning_files_choose_their_schedule_and_target_and_the_command_line_wins():
    l21 = _compose(["pruning=ssr_l21"])
    assert all(l21.target[k] is None for k in ("macs", "params", "filters", "rates"))
    assert build_pruning(l21).target is None  # lam decides
    assert _compose(["pruning=ssr_l21", "target=macs"]).target.macs == 0.05
    oneshot = _compose(["pruning=oneshot"])
    assert oneshot.schedule.sparsify_epochs == 0 and oneshot.schedule.finetune_epochs == 20
    assert build_pruning(oneshot).schedule.total_epochs == build_pruning(_compose([])).schedule.total_epochs
    assert _compose(["pruning=oneshot", "schedule=default"]).schedule.sparsify_epochs == 10
    assert _compose(["+experiment=fashion_mnist_l21"]).target.macs is None


def test_end_to_end_run_writes_result_json_pruned_pt_and_reuses_the_dense_cache(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO)  # the callback prints its table through Lightning's rank-zero logger
    cfg = _compose(FAST + [f"dense.cache_dir={tmp_path / 'cache'}"])
    result = run(cfg, tmp_path)
    out = capfd.readouterr().out
    assert (out + caplog.text).count(TABLE_HEADER) == 1  # the callback's table, not a second one
    assert "ssr_l20:" in out and "CPU latency: batch 1:" in out and "result.json" in out
    assert f"Training the dense model (1 epoch); it will be cached at {tmp_path / 'cache'}" in out  # not a bare bar
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result.to_dict()))
    assert PruningResult.load(tmp_path / "result.json").method == "ssr_l20"
    assert on_disk["status"] == "ok" and on_disk["target"] == {"macs": 0.2}
    for key in ("dense", "pruned"):
        assert on_disk[key].keys() >= {"accuracy", "val_accuracy", "macs", "params", "latency_ms"}
        assert 0.0 <= on_disk[key]["accuracy"] <= 1.0
        assert set(on_disk[key]["latency_ms"]) == {"batch_1"}
    assert on_disk["pruned"]["macs"] <= 0.2 * on_disk["dense"]["macs"]
    assert on_disk["macs_reduction"] >= 5.0
    assert {layer["name"] for layer in on_disk["layers"]} == {"model.conv1", "model.conv2", "model.fc1", "model.fc2"}
    assert len(on_disk["events"]) == 1 and on_disk["plan"] is not None
    assert on_disk["timings"].keys() >= {"dense_s", "compress_s", "evaluate_s", "total_s"}
    assert on_disk["config"]["cli"]["pruning"]["name"] == "ssr_l20"
    assert not on_disk["dense"]["cache"]["reused"]

    # pruned.pt loads into a freshly built network with the documented one call
    net = load_pruned(build_model("lenet5"), tmp_path / "pruned.pt")
    kept = {r["name"].removeprefix("model."): r["after"] for r in on_disk["layers"]}
    assert net.conv1.out_channels == kept["conv1"] and net.fc1.out_features == kept["fc1"]
    saved = torch.load(tmp_path / "pruned.pt", weights_only=True)
    state = saved["state_dict"]
    assert torch.equal(net.conv1.weight, state["model.conv1.weight"])
    # with what it reads: images of your own, normalized as the data module did, give its test accuracy
    from lightning_ssr.app.data import UCIDigits

    reads = saved["input"]
    assert reads == on_disk["pruned"]["input"] and reads["data"] == "UCIDigits" and reads["shape"] == [1, 28, 28]
    dm = instantiate(cfg.data)
    dm.setup()
    images, labels = dm.splits["test"].tensors
    raw = images * dm.normalization["std"] + dm.normalization["mean"]  # (the pixels in [0, 1] a user holds)
    assert 0.0 <= float(raw.min()) + 1e-6 and float(raw.max()) <= 1.0 + 1e-6 and isinstance(dm, UCIDigits)
    with torch.no_grad():
        mine = (net.eval()((raw - reads["mean"]) / reads["std"]).argmax(1) == labels).float().mean()
    assert float(mine) == pytest.approx(on_disk["pruned"]["accuracy"], abs=2.5 / len(labels))  # (a prediction or two at a tie may flip in float32)
    # and the command's Lightning checkpoints with its LightningModule's own load_from_checkpoint (it has the mixin)
    from lightning_ssr.app.module import ImageClassifier

    last = max((tmp_path / "logs").glob("version_*/checkpoints/*.ckpt"), key=lambda p: p.stat().st_mtime)
    loaded = ImageClassifier.load_from_checkpoint(last, model=build_model("lenet5"), weights_only=True)
    assert loaded.model.conv1.out_channels == kept["conv1"] and loaded.model.fc1.out_features == kept["fc1"]
    ckpt = torch.load(last, weights_only=True)["state_dict"]
    assert all(torch.equal(v, ckpt[k]) for k, v in loaded.state_dict().items())

    caplog.clear()
    again = run(_compose(FAST + [f"dense.cache_dir={tmp_path / 'cache'}", "verbose=false"]), tmp_path / "again")
    out = capfd.readouterr().out
    assert out.count(TABLE_HEADER) == 1 and TABLE_HEADER not in caplog.text  # the callback was quiet: the CLI prints it
    assert again.dense["cache"]["reused"]
    assert again.dense["accuracy"] == result.dense["accuracy"]
    assert Path(again.dense["cache"]["path"] + ".accuracy.json").is_file()  # evaluated once, read back


def test_the_final_evaluation_honours_the_trainers_limits_and_says_so(tmp_path):
    """trainer.limit_test_batches=1: Lightning said "1 batch will be used" while the evaluation
    read the whole test split (117 of a 184 s trial run). It reads one batch now, and says so."""
    cfg = _compose(ONESHOT_FAST + ["trainer.limit_test_batches=1", "trainer.limit_val_batches=2",
                                   "data.eval_batch_size=16", f"dense.cache_dir={tmp_path / 'cache'}"])
    result = run(cfg, tmp_path / "run")
    for key in ("dense", "pruned"):
        assert result.__dict__[key]["evaluation_limits"] == {"limit_test_batches": 1, "limit_val_batches": 2}
        assert (16 * result.__dict__[key]["accuracy"]) == pytest.approx(round(16 * result.__dict__[key]["accuracy"]))
        assert (32 * result.__dict__[key]["val_accuracy"]) == pytest.approx(
            round(32 * result.__dict__[key]["val_accuracy"]))
    assert "on part of the test split (trainer.limit_test_batches=1)" in result.summary()
    # a figure from part of a split is not kept as the dense model's accuracy for the runs that share it
    assert not Path(result.dense["cache"]["path"] + ".accuracy.json").exists()
    # 1.0 is all of it, and 0 (validation off while training) does not turn the final evaluation off
    whole = run(_compose(ONESHOT_FAST + ["data.eval_batch_size=16", "trainer.limit_test_batches=1.0",
                                         "trainer.limit_val_batches=0", f"dense.cache_dir={tmp_path / 'cache'}"]),
                tmp_path / "whole")
    assert whole.status == "ok" and whole.pruned["val_accuracy"] is not None
    assert "evaluation_limits" not in whole.pruned and "part of the test split" not in whole.summary()
    assert Path(whole.dense["cache"]["path"] + ".accuracy.json").is_file()
    # as many batches as the split has, or more, are all of it too ("on part of the test split": probe)
    from lightning_ssr.app.stages import build_data, evaluation_limits

    dm = build_data(_compose(ONESHOT_FAST + ["data.eval_batch_size=16"]))
    test, val = dm.eval_batches("test"), dm.eval_batches("val")
    assert test > 1 and val > 1 and test == -(-len(dm.splits["test"]) // 16)

    def limits(test_batches, val_batches):
        return evaluation_limits(_compose(ONESHOT_FAST + ["data.eval_batch_size=16",
                                                         f"trainer.limit_test_batches={test_batches}",
                                                         f"trainer.limit_val_batches={val_batches}"]), dm)

    assert limits(test, val + 5) == {} and limits(test - 1, val) == {"limit_test_batches": test - 1}
    assert limits(test + 1, val - 1) == {"limit_val_batches": val - 1}


def test_oneshot_and_ssr_l20_write_results_with_the_same_keys(tmp_path):
    cache = f"dense.cache_dir={tmp_path / 'cache'}"
    ssr = run(_compose(FAST + [cache]), tmp_path / "ssr")
    oneshot = run(_compose(ONESHOT_FAST + [cache]), tmp_path / "oneshot")
    a = json.loads((tmp_path / "ssr" / "result.json").read_text())
    b = json.loads((tmp_path / "oneshot" / "result.json").read_text())
    assert a.keys() == b.keys()
    assert a["dense"].keys() == b["dense"].keys() and a["pruned"].keys() == b["pruned"].keys()
    assert (a["method"], b["method"]) == ("ssr_l20", "oneshot")
    assert b["config"]["schedule"]["sparsify_epochs"] == 0 and b["events"][0]["epoch"] == 0
    assert oneshot.pruned["macs"] <= 0.2 * oneshot.dense["macs"]
    assert oneshot.dense["accuracy"] == ssr.dense["accuracy"]  # the same cached dense model


def test_a_structure_given_by_layer_rates_is_what_the_run_keeps(tmp_path):
    """target.rates as {layer: rate} from the command line: the per-layer counts of a structure
    given by hand (fc1 too), as in the LeNet-5 benchmark's l1@1-16-65."""
    cfg = _compose([o for o in ONESHOT_FAST if not o.startswith("target.")] + [
        "pruning=l1", "target=rates", "target.rates={model.conv1:0.95,model.conv2:0.68,model.fc1:0.87}",
        f"dense.cache_dir={tmp_path / 'cache'}"])
    result = run(cfg, tmp_path)
    assert result.status == "ok" and result.events[0]["keep"] == {"model.conv1": 1, "model.conv2": 16, "model.fc1": 65}
    assert result.target == {"rates": {"model.conv1": 0.95, "model.conv2": 0.68, "model.fc1": 0.87}}


def test_export_onnx_at_the_end_of_a_run(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pip install '.[dev]')")
    cfg = _compose(FAST + ["export=onnx", f"dense.cache_dir={tmp_path / 'cache'}"])
    result = run(cfg, tmp_path)
    assert (tmp_path / "pruned.onnx").is_file()
    export = result.pruned["export"]
    # two float32 implementations: within the layers' summed fan-in times float32's round-off
    bound = implementations_tolerance(load_pruned(build_model("lenet5"), read_checkpoint(tmp_path / "pruned.pt")))
    assert export["onnxruntime_max_abs_diff"] <= bound * max(1.0, export["output_max_abs"])
    # run again in its folder (as a resume is) with another export: the earlier model's export does not
    # stay beside the new pruned.pt (probe: result.json said no export, pruned.onnx was the old model)
    (tmp_path / "pruned.onnx.data").write_bytes(b"an earlier export's weights")
    again = run(_compose(FAST + ["target.macs=0.3", "export=torch_export", f"dense.cache_dir={tmp_path / 'cache'}"]),
                tmp_path)
    assert not (tmp_path / "pruned.onnx").exists() and not (tmp_path / "pruned.onnx.data").exists()
    # and the program is loaded back and checked, as the ONNX file is (within one implementation's reductions)
    export = again.pruned["export"]
    assert export["format"] == "torch_export" and (tmp_path / "pruned.pt2").is_file()
    assert export["max_abs_diff"] <= bound * max(1.0, export["output_max_abs"])


def test_a_run_in_float64_is_evaluated_and_exported_in_float64(tmp_path):
    """trainer.precision=64-true trained and pruned, then failed at the evaluation (a float32 input
    for the float64 network), and no pruned.pt was written (probe). The evaluation, the latency and
    the export take the network's dtype; an ONNX export, which onnxruntime cannot run in float64, is
    refused before training."""
    cache = f"dense.cache_dir={tmp_path / 'cache'}"
    result = run(_compose(ONESHOT_FAST + ["trainer.precision=64-true", "export=torch_export", cache]), tmp_path / "a")
    assert result.status == "ok" and 0 < result.pruned["accuracy"] <= 1 and result.pruned["latency_ms"]["batch_1"] > 0
    saved = read_checkpoint(tmp_path / "a" / "pruned.pt")
    assert {v.dtype for v in saved["state_dict"].values() if v.is_floating_point()} == {torch.float64}
    # the program against eager PyTorch, both in float64: the layers' summed fan-in times float64's round-off
    bound = implementations_tolerance(load_pruned(build_model("lenet5"), saved), torch.float64)
    assert result.pruned["export"]["max_abs_diff"] <= bound * max(1.0, result.pruned["export"]["output_max_abs"])
    for precision, dtype in (("64-true", "float64"), ("bf16-true", "bfloat16")):  # (bf16-true: review)
        with pytest.raises(ValueError, match=rf"export=onnx with trainer.precision={precision}: .*onnxruntime runs no "
                                             rf"{dtype} convolution.*Use export=torch_export"):
            run(_compose(ONESHOT_FAST + [f"trainer.precision={precision}", "export=onnx", cache]), tmp_path / "b")
        assert json.loads((tmp_path / "b" / "result.json").read_text())["status"] == "failed"


def test_an_export_that_cannot_be_checked_says_so(tmp_path, monkeypatch):
    import lightning_ssr.app.stages as stages_mod

    def no_onnxruntime(*args):
        raise ImportError("No module named 'onnxruntime'")

    monkeypatch.setattr(stages_mod, "onnx_max_abs_diff", no_onnxruntime)
    cfg = _compose(FAST + ["export=onnx", f"dense.cache_dir={tmp_path / 'cache'}"])
    with pytest.warns(UserWarning, match="not checked .* onnxruntime is not installed"):
        result = run(cfg, tmp_path)
    assert result.pruned["export"]["check"].startswith("not run: onnxruntime is not installed")


def test_a_fresh_run_is_reproducible(tmp_path):
    """Same seed, no cache: the dense model (its initialization included) and the result repeat."""
    first = run(_compose(FAST + [f"dense.cache_dir={tmp_path / 'a'}"]), tmp_path / "a")
    second = run(_compose(FAST + [f"dense.cache_dir={tmp_path / 'b'}"]), tmp_path / "b")
    assert not first.dense["cache"]["reused"] and not second.dense["cache"]["reused"]
    assert first.dense["accuracy"] == second.dense["accuracy"]
    assert first.pruned["accuracy"] == second.pruned["accuracy"]
    assert first.plan == second.plan
    assert first.layers == second.layers


def test_pruning_none_is_the_equal_budget_dense_baseline(tmp_path):
    cfg = _compose(FAST + ["pruning=none", f"dense.cache_dir={tmp_path}"])
    result = run(cfg, tmp_path)
    assert result.method == "none" and result.status == "ok" and result.target is None
    assert result.pruned["macs"] == result.dense["macs"]
    assert result.plan is None and result.events == []
    assert result.config["schedule"]["sparsify_epochs"] == 1
    assert json.loads((tmp_path / "result.json").read_text()).keys() == result.to_dict().keys()


@pytest.mark.parametrize("timed", [True, False])
def test_a_job_that_times_models_steadies_the_allocator_first(tmp_path, monkeypatch, timed):
    import lightning_ssr.app.cli as cli_mod

    calls = []
    monkeypatch.setattr(cli_mod, "steady_allocator", lambda: calls.append(1))
    batch_sizes = "latency.batch_sizes=[1]" if timed else "latency.batch_sizes=[]"
    cfg = _compose([o for o in FAST if not o.startswith("latency.batch_sizes")]
                   + [batch_sizes, "pruning=none", f"dense.cache_dir={tmp_path}"])
    run(cfg, tmp_path)
    assert calls == ([1] if timed else [])


def test_a_misspelled_key_is_answered_with_the_closest_setting_not_a_proposal_to_add_it():
    with pytest.raises(ValueError, match=r"^pruning.lamda is not a setting of the configuration \(did you mean "
                                         r"pruning.lam\? pruning has name, lam, .*\+pruning.lamda=\.\.\.$") as info:
        _compose(["pruning.lamda=0.1"])
    assert isinstance(info.value.__cause__, ConfigCompositionException)  # Hydra's own error, kept
    with pytest.raises(ValueError, match=r"^sed is not .*did you mean seed\? its top level has model, data"):
        _compose(["sed=3"])
    with pytest.raises(ValueError, match=r"did you mean trainer.max_epochs\?"):
        _compose(["trainer.max_epoch=3"])


def test_a_value_for_another_kind_of_target_says_to_choose_its_group():
    """target=macs (the default) has no latency key: Hydra's message proposed +target.latency=...,
    which then failed for two targets; a second kind set beside the group's named the kinds only."""
    from lightning_ssr.app.stages import build_pruning

    with pytest.raises(ValueError, match=r"^target.latency is not a setting of this target: a latency target is "
                                         r"chosen with its group, target=latency target.latency=\.\.\. \(the target "
                                         r"now sets target.macs\)$"):
        _compose(["target.latency=2"])
    _compose(["target=latency", "target.latency=2"])  # (as said)
    with pytest.raises(ValueError, match=r"^the target sets target.macs=0.05 and target.params=0.1: a target is one "
                                         r"of .*Choose the one you mean with its group \(target=macs target.macs=0.05 "
                                         r"or target=params target.params=0.1: each group's file leaves the other kinds "
                                         r"null\)$"):
        build_pruning(_compose(["target.params=0.1"]))
    # (the kind given beside the group's comes first in the order of kinds: both are offered, the given one too)
    with pytest.raises(ValueError, match=r"\(target=rates target.rates=\[0.3\]\*2 or target=macs target.macs=0.05"):
        build_pruning(_compose(["target.rates='[0.3]*2'"]))
    with pytest.raises(ValueError, match=r"^target.latency is not a setting of this target: a latency target is "
                                         r"chosen with its group, target=latency target.latency=\.\.\.$"):
        _compose(["target=none", "target.latency=2"])  # (no kind set now: nothing said of it)
    assert build_pruning(_compose(["target=params", "target.params=0.1"])).target.params == 0.1


def test_an_argument_of_another_method_names_the_methods_settings():
    with pytest.raises(ValueError, match=r"pruning.importance is not a setting .*pruning has name, lam, "):
        _compose(["pruning.importance=l1"])  # oneshot's argument, not SSR's


def test_a_sweep_is_checked_for_each_choice_before_anything_runs(capsys, monkeypatch):
    """A key that one of a sweep's choices lacks would fail that job after the others ran: the
    command refuses the sweep before Hydra starts, naming the choice, with exit code 1."""
    from lightning_ssr.app import cli

    with pytest.raises(ValueError, match=r"^pruning.lam is not a setting of the configuration with pruning=l1 "):
        cli.check_override_keys(["-m", "pruning=ssr_l20,l1", "data=uci_digits", "pruning.lam=0.1"])
    with pytest.raises(ValueError, match=r"^trainer.max_epoch is not a setting of the configuration \(did you mean "):
        cli.check_override_keys(["data=uci_digits", "trainer.max_epoch=3"])  # (not "with data=uci_digits")
    # a recipe's section without its experiment: named, not "did you mean trainer?" (probe)
    with pytest.raises(ValueError, match=r"^transfer.freeze: transfer is a section of the experiment "
                                         r"transfer_fmnist_to_mnist; choose one first, "
                                         r"\+experiment=transfer_fmnist_to_mnist transfer.freeze=\.\.\.$"):
        cli.check_override_keys(["transfer.freeze=[conv1]"])
    with pytest.raises(ValueError, match=r"^adaptation.domain_weight: adaptation is a section of the experiments "
                                         r"da_mnist_to_digits, da_mnist_to_mnist_m;"):
        cli.check_override_keys(["adaptation.domain_weight=0.5"])
    # valid settings, additions, deletions, Hydra's own and a group's choice pass
    cli.check_override_keys(["-m", "pruning=ssr_l20,l1", "target.macs=0.1,0.05", "+trainer.max_steps=3",
                             "~plugins", "hydra.job.chdir=false", "+experiment=da_mnist_to_digits",
                             "adaptation.domain_weight=0.5", "data@adaptation.target=mnist_10k",
                             "+trainer.max_time=null", "trainer.max_time=00:00:10:00"])  # added, then changed
    started = []
    monkeypatch.setattr(cli, "_hydra_main", lambda: started.append(1))
    monkeypatch.setattr(sys, "argv", ["lightning-ssr", "pruning.rh=0.5"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1 and not started
    err = capsys.readouterr().err
    assert err.startswith("lightning-ssr: pruning.rh is not a setting") and "did you mean pruning.rho?" in err


def test_an_optuna_search_space_is_checked_at_its_ends_before_the_first_trial():
    """An Optuna search was not checked before it started (only grids were): an interval whose
    every value a run refuses (pruning.lam=interval(-2,-1)) failed each trial in turn, then ended
    in the plugin's traceback; n_trials=0 and direction=minimize (the plugin's default, which
    searches for the worst model) too. Just inside each end of each interval (where trials land:
    on an end, almost never), each end of a range and each choice are composed as a trial is,
    before the first."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="needs hydra-optuna-sweeper "
                        "(pip install 'lightning_ssr[optuna]')")
    from lightning_ssr.app import cli

    search = ["-m", "+experiment=optuna_ssr"]
    near = r"^a trial of the search near the ends of its space \(pruning.lam={} pruning.rho=\S+ " \
           r"schedule.update_every_n_steps={}\) would be refused as it starts: ValueError: {}"
    with pytest.raises(ValueError, match=near.format("-1.999", 10, r"ssr_l21: lam must be in \[0.0, inf\), got -1.999") +
                       r".* Nothing has run: change that value or narrow the search space"):
        cli.check_sweep_runs([*search, "pruning.lam=interval(-2,-1)"])
    with pytest.raises(ValueError, match=near.format(r"\S+", 0, "schedule: update_every_n_steps must be in")):
        cli.check_sweep_runs([*search, "schedule.update_every_n_steps=choice(10,0)"])
    with pytest.raises(ValueError, match=near.format(r"\S+", 10, "target macs .* must be in")):
        cli.check_sweep_runs([*search, "target.macs=0"])  # (a value every trial has)
    with pytest.raises(ValueError, match=r"target.macs=0.0\) .*target macs .* must be in"):
        cli.check_sweep_runs([*search, "target.macs=range(0,0.3,0.1)"])  # (a range: its first and last)
    with pytest.raises(ValueError, match=r"^pruning.rho: a log interval starts above 0, got interval\(0.0, 1.0\)"):
        cli.check_sweep_runs([*search, "pruning.rho=tag(log, interval(0, 1))"])
    with pytest.raises(ValueError, match=r"^hydra.sweeper.n_trials=0: a search runs at least one trial"):
        cli.check_sweep_runs([*search, "hydra.sweeper.n_trials=0"])
    with pytest.raises(ValueError, match=r"^hydra.sweeper.direction=minimize: each trial returns one value, its "
                                         r"pruned model's validation accuracy, .* give hydra.sweeper.direction=maximize"):
        cli.check_sweep_runs(["-m", "hydra/sweeper=optuna", "pruning.lam=interval(0.001, 0.01)"])  # (its default)
    # the experiment as given, a grid of targets searched with it, one objective given as a list, an interval
    # whose end a run refuses but whose inside it takes (trials never land on 0: review), pass
    cli.check_sweep_runs(search)
    cli.check_sweep_runs([*search, "target.macs=0.1,0.2", "hydra.sweeper.n_trials=3"])
    cli.check_sweep_runs([*search, "hydra.sweeper.direction=[maximize]"])
    cli.check_sweep_runs(["-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=maximize", "pruning=l1",
                          "target.macs=interval(0, 0.5)"])


def test_each_run_of_a_grid_sweep_is_checked_before_the_first_trains(capsys, monkeypatch):
    """A value one run would refuse as it starts (a target of 0, a method's negative argument)
    refused the sweep only when that run came up, after the runs before it trained: the command
    refuses it before Hydra starts, naming the run as Hydra numbers it and its swept values."""
    from lightning_ssr.app import cli

    with pytest.raises(ValueError, match=r"^run 1 of the sweep \(pruning=ssr_l20 target.macs=0\) would be refused "
                                         r"as it starts: ValueError: target macs .* must be in \(0, 1\].*"
                                         r"Nothing has run: change or drop that value$"):
        cli.check_sweep_runs(["-m", "pruning=ssr_l20,l1", "target.macs=0.1,0", "data=uci_digits"])
    with pytest.raises(ValueError, match=r"^run 2 of the sweep \(pruning.lam=-1 seed=0\) .*ssr_l20: lam must be in"):
        cli.check_sweep_runs(["-m", "pruning.lam=1,-1", "seed=0,1"])  # Hydra's order: lam=-1 seed=0 is job 2
    with pytest.raises(ValueError, match=r"^run 1 of the sweep \(trainer.max_epochs=1\) .*trainer.max_epochs=1 ends "
                                         r"the compression run before its last prune"):
        cli.check_sweep_runs(["--multirun", "pruning=l1", "schedule.sparsify_epochs=3", "trainer.max_epochs=8,1"])
    with pytest.raises(ValueError, match=r"^run 0 of the sweep \(target.macs=0.0\) .*must be in \(0, 1\]"):
        cli.check_sweep_runs(["-m", "target.macs=range(0,0.2,0.1)"])  # (a range is a grid too)
    with pytest.raises(ValueError, match=r"^run 1 of the sweep \(pruning.lam=nan\) .*lam must be"):
        cli.check_sweep_runs(["-m", "pruning.lam=0.1,nan"])
    # what the objects Hydra builds check as they are made: each run trained before the next one's was refused (probe)
    limit = (r"\(trainer.limit_train_batches=-1\) .*MisconfigurationException: trainer: You have passed invalid "
             r"value -1 for limit_train_batches")
    for values, said in [("module.lr=0.01,-1", r"\(module.lr=-1\) .*ValueError: module: lr must be in \(0.0, inf\)"),
                         ("data.batch_size=64,0", r"\(data.batch_size=0\) .*ValueError: data: batch_size must be in"),
                         ("trainer.limit_train_batches=5,-1", limit)]:
        with pytest.raises(ValueError, match=rf"^run 1 of the sweep {said}.* Nothing has run: change or drop that value$"):
            cli.check_sweep_runs(["-m", values, "data=uci_digits"])
    # a launcher that runs the jobs elsewhere makes their Trainers there: a GPU sweep sent to SLURM from a
    # node without one was refused (review); run here, the same sweep is
    cli.check_sweep_runs(["-m", "hydra/launcher=slurm", "trainer.accelerator=gpu", "module.lr=0.01,0.02"])
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"trainer: No supported gpu backend found! Nothing has run"):
            cli.check_sweep_runs(["-m", "trainer.accelerator=gpu", "module.lr=0.01,0.02"])

    # valid grids, a single run, another sweeper, Hydra's own errors and plugin runs pass (checked as they start)
    cli.check_sweep_runs(["-m", "pruning=ssr_l20,l1", "target.macs=0.1,0.05", "seed=0,1", "hydra.job.chdir=false"])
    cli.check_sweep_runs(["target.macs=0"])  # (one run: its own check says it, with the run's record)
    # a misspelled choice: Hydra's message now (it left a sweep folder a report took for runs never started)
    with pytest.raises(ValueError, match=r"^run 0 of the sweep \(pruning=nosuch\) does not compose: In 'config': "
                                         r"Could not find 'pruning/nosuch' Available options in 'pruning': bn_scale "
                                         r"fsm l1 .*Nothing has run: change or drop that value$"):
        cli.check_sweep_runs(["-m", "pruning=nosuch,l1"])
    cli.check_sweep_runs(["-m", "target.macs=0", "plugins=[my_plugin]"])
    cli.check_sweep_runs(["-m", "seed=${hydra:job.num}", "target.macs=0.1,0.2"])  # (resolves in its job only)
    # a glob of group choices: only Hydra's config loader expands it (it raised HydraException here)
    cli.check_sweep_runs(["-m", "pruning=glob(l1)", "target.macs=0"])
    capsys.readouterr()
    cli.check_sweep_runs(["-m", "seed=0,1,2,3,4,5", "target.macs=0.1,0.2,0.3,0.4,0.5,0.6"])  # (seconds: said)
    assert capsys.readouterr().out == "lightning-ssr: checking the settings of the sweep's 36 runs before the first starts\n"
    monkeypatch.setattr(cli, "MAX_CHECKED_RUNS", 33)  # (the count said is the sweep's, not the cap)
    cli.check_sweep_runs(["-m", "seed=0,1,2,3,4,5", "target.macs=0.1,0.2,0.3,0.4,0.5,0.6"])
    assert capsys.readouterr().out == ("lightning-ssr: checking the settings of the first 33 of the sweep's 36 runs "
                                       "(the others as each starts) before the first starts\n")
    monkeypatch.undo()
    started = []
    monkeypatch.setattr(cli, "_hydra_main", lambda: started.append(1))
    monkeypatch.setattr(sys, "argv", ["lightning-ssr", "-m", "seed=0,1.5"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1 and not started
    assert capsys.readouterr().err.startswith("lightning-ssr: run 1 of the sweep (seed=1.5) would be refused")


def test_plainly_says_the_objects_own_error_in_one_line_under_its_key():
    from hydra.errors import InstantiationException

    from lightning_ssr.app.stages import plainly

    def wrapped(cause, key):
        try:
            raise InstantiationException(f"Error in call to target 'x.Y':\n{cause!r}\nfull_key: {key}") from cause
        except InstantiationException as err:
            return err

    assert str(plainly(wrapped(KeyError("missing thing"), "data"))) == "data: missing thing"  # (no repr quotes)
    said = plainly(wrapped(ValueError("models: two lines\nof it"), "model"))
    assert type(said) is ValueError and str(said) == "model: models: two lines of it"  # (another word: prefixed)
    assert str(plainly(wrapped(ValueError("module: lr must be > 0"), "module"))) == "module: lr must be > 0"
    plain = ValueError("as it is")
    assert plainly(plain) is plain


def test_unknown_model_fails_with_hydras_error():
    with pytest.raises(ConfigCompositionException, match="model/resnet9000"):
        _compose(["model=resnet9000"])


@pytest.mark.parametrize("overrides,match", [
    (["pruning=ssr_l21", "pruning.lam=-1"], r"lam must be in \[0.0"),
    (["target.macs=1.5"], r"target macs .* \(0, 1\]"),
    (["target.params=0.5"], r"a target is one of .*target=params target.params=0.5"),
    # the callback refuses these strategies at its set-up, which came after the dense training
    (["trainer.strategy=ddp_spawn"], (r"trainer.strategy=ddp_spawn: the Pruning callback does not support a launcher "
                                      r"that returns the trained weights .*Use trainer.strategy=ddp$")),
    (["trainer.strategy=fsdp"], (r"trainer.strategy=fsdp: the Pruning callback does not support a strategy that "
                                r"shards the model")),
    # (Lightning's XLAStrategy is a DDPStrategy that forks, on one device too: the callback refuses it)
    (["trainer.strategy=xla", "trainer.devices=1"], (r"trainer.strategy=xla: the Pruning callback does not support "
                                                    r"Lightning's XLA strategy, .*Use trainer.strategy=single_xla on "
                                                    r"one device$")),
    (["pruning=oneshot", "target=none"], "needs a target"),
    (["schedule.sparsify_epochs=0"], "sparsify_epochs >= 1"),
    (["schedule.update_every_n_steps=0"], "update_every_n_steps"),
    (["+pruning.lamda=0.1"], r"unexpected keyword arguments \['lamda'\] \('lamda': did you mean 'lam'\?\)"),
    (["pruning.ignored_layers=[model.conv9]"], "no module named"),
    (["target=rates", "target.rates='[0.5]*9'"], "9 rates given for a model with 2 convolutions"),
    (["target=rates", "target.rates={model.conv9:0.5}"], r"target rates name \['model.conv9'\], which are not"),
    (["target.macs=0.001", "target.min_channels=5"], "too small"),
    # a method that needs BatchNorm, on the default LeNet-5 (none): it was refused after the dense training
    (["pruning=fsm"], "no prunable group of this model reaches its consumers through an affine BatchNorm"),
    # Lightning's and torch's own errors named no setting ("'<=' not supported between instances of 'int' and 'str'")
    (["trainer.limit_train_batches=foo"], "trainer.limit_train_batches must be a number, got str 'foo'"),
    (["data.split_seed=abc"], "data: split_seed must be an int, got str 'abc'"),
    (["data.image_size=0"], r"data: image_size must be in \[1, inf\), got 0"),
    (["data.batch_size=0"], r"data: batch_size must be in \[1, inf\), got 0"),
    (["data.num_workers=-1"], r"data: num_workers must be in \[0, inf\), got -1"),
    (["pruning=bn_scale"], "bn_scale prunes by BatchNorm scales, but no prunable group of this model has a BatchNorm"),
    (["module.lr=-1"], r"module: lr must be in \(0.0, inf\), got -1"),
    (["schedule.restart_lr=true", "module.cosine=false"], "restart_lr=true .* set module.cosine=true"),
    (["schedule.restart_lr=1"], "restart_lr must be true or false"),
    (["schedule.sparsify_epochs=abc"], "schedule: sparsify_epochs must be an int, got str 'abc'"),
    (["schedule.lr_warmup_steps=-5"], r"lr_warmup_steps must be in \[0"),
    (["export=tflite"], "export must be null or one of"),
    (["ema_decay=1.0"], r"ema_decay .* must be in \(0.0, 1.0\), got 1.0"),
    (["ema_decay=fast"], "ema_decay .* must be a number, got str 'fast'"),
    # the run's own settings: a negative dense.epochs trained forever, seed=1.5 seeded with 1,
    # batch size 0 was timed, a string flag read as true, dense.lr's error named module.lr
    (["seed=abc"], "config: seed must be an int, got str 'abc'"),
    (["seed=1.5"], "config: seed must be an int, got float 1.5"),
    (["seed=-5"], r"config: seed must be in \[0, 4294967295\]"),
    (["dense.epochs=-1"], r"config: dense.epochs must be in \[0, inf\)"),
    (["dense.lr=-0.1"], r"config: dense.lr must be in \(0.0, inf\)"),
    (["latency.repeats=0"], r"config: latency.repeats must be in \[1"),
    (["latency.batch_sizes=[1,0]"], r"config: latency.batch_sizes must be in \[1"),
    (["latency.batch_sizes=4"], "latency.batch_sizes must be a list"),
    (["dense.use_cache=maybe"], "config: dense.use_cache must be true or false, got 'maybe'"),
    (["verbose=1"], "config: verbose must be true or false, got 1"),
    (["module.momentum=2"], r"module: momentum must be in \[0.0, 1.0\)"),
    (["module.weight_decay=-1"], r"module: weight_decay must be in \[0.0"),
    (["module.nesterov=true", "module.momentum=0"], "nesterov=true needs momentum > 0"),
    # the Trainer's own settings: they failed after the dense training
    (["trainer.precision=33"], "Precision 33 is invalid"),
    (["trainer.devices=0"], "devices"),
])
def test_bad_values_fail_before_training(tmp_path, overrides, match):
    """Each in one line (a value of an object Hydra builds came as Hydra's three-line wrapper,
    "Error in call to target ...", "full_key: module": probe): the object's own error."""
    cfg = _compose(["data=uci_digits", f"dense.cache_dir={tmp_path / 'cache'}"] + overrides)
    with pytest.raises((ValueError, TypeError, MisconfigurationException), match=match) as info:
        run(cfg, tmp_path)
    assert "\n" not in str(info.value) and not isinstance(info.value, InstantiationException)
    assert not (tmp_path / "dense").exists() and not (tmp_path / "cache").exists()
    # nothing trained, but the run is on record (a sweep's report lists it with the reason)
    failed = PruningResult.load(tmp_path / "result.json")
    assert failed.status == "failed" and re.search(match, failed.error) and failed.pruned == {}
    # its target as given (it was null: a script filtering runs by target misread them: probe)
    given = {k: v for k, v in OmegaConf.to_container(cfg.target).items() if k in ("macs", "params", "filters",
                                                                                  "rates", "latency", "batch_size")}
    if isinstance(given.get("rates"), str):  # (recorded as the list a run records)
        given["rates"] = parse_rates(given["rates"])
    assert failed.target == ({k: v for k, v in given.items() if v is not None} or None)


def test_a_refused_run_records_a_rates_target_as_a_run_does(tmp_path):
    """As given, a rates expression was recorded as its string ('[0.5]*2'), where a run records
    the list (review)."""
    cfg = _compose(["data=uci_digits", "target=rates", "target.rates='[0.5]*2'", "seed=-5"])
    with pytest.raises(ValueError, match="seed"):
        run(cfg, tmp_path)
    assert PruningResult.load(tmp_path / "result.json").target == {"rates": [0.5, 0.5]}


def test_a_run_refused_before_training_leaves_the_record_of_the_run_its_folder_held(tmp_path):
    """A resume refused (a changed target), or a run given the folder of another, wrote its failure
    over the interrupted run's result.json: the report then took the run for one of another
    configuration and a sweep run again set it aside and trained it from the start."""
    from lightning_ssr.app.cli import KEPT_RECORD
    from lightning_ssr.app.stages import started_result

    interrupted = started_result(_compose(["data=uci_digits", "target.macs=0.1"]))
    interrupted.status, interrupted.error = "interrupted", "RunInterrupted: stopped by SIGINT"
    interrupted.save(tmp_path / "result.json")
    before = (tmp_path / "result.json").read_bytes()
    cfg = _compose(["data=uci_digits", f"dense.cache_dir={tmp_path / 'cache'}", "target.macs=0"])
    with pytest.raises(ValueError, match=r"target macs") as info:
        run(cfg, tmp_path)
    assert (tmp_path / "result.json").read_bytes() == before
    assert getattr(info.value, KEPT_RECORD) == str(tmp_path / "result.json")
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr", "data=uci_digits", "target.macs=0",
                           f"dense.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path}"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and (tmp_path / "result.json").read_bytes() == before
    assert (f"(not recorded: {tmp_path / 'result.json'} still records the run that was there before; "
            "HYDRA_FULL_ERROR=1 shows the traceback)") in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / ".replaced").exists() and "moved to" not in proc.stderr  # (set aside, then put back)
    # an earlier failure before training is replaced: its error would be given as this run's
    interrupted.status, interrupted.error = "failed", "FloatingPointError: the loss is NaN"
    interrupted.save(tmp_path / "result.json")
    with pytest.raises(ValueError, match=r"target macs"):
        run(cfg, tmp_path)
    assert "target macs" in PruningResult.load(tmp_path / "result.json").error
    # one after training is kept: a run that ended unpruned names its checkpoint to go on from
    interrupted.error = "the model was not pruned ... resume with ckpt_path=..."
    interrupted.timings = {"dense_s": 3.0, "compress_s": 9.0, "total_s": 12.0}
    interrupted.save(tmp_path / "result.json")
    before = (tmp_path / "result.json").read_bytes()
    with pytest.raises(ValueError, match=r"target macs"):
        run(cfg, tmp_path)
    assert (tmp_path / "result.json").read_bytes() == before
    # a recipe's failure after training records no stage's time: it is marked as not refused before training
    from lightning_ssr.app.cli import REFUSED_MARK, _record_stop

    _record_stop(cfg, RuntimeError("the export failed"), (0.0, 0.0), tmp_path, None, before=False)
    after_training = (tmp_path / "result.json").read_bytes()
    assert json.loads(after_training)["config"][REFUSED_MARK] is False
    with pytest.raises(ValueError, match=r"target macs"):
        run(cfg, tmp_path)
    assert (tmp_path / "result.json").read_bytes() == after_training
    refused = json.loads(after_training)  # (and one marked refused before training is replaced)
    refused["config"][REFUSED_MARK] = True
    (tmp_path / "result.json").write_text(json.dumps(refused))
    with pytest.raises(ValueError, match=r"target macs"):
        run(cfg, tmp_path)
    assert json.loads((tmp_path / "result.json").read_text())["error"].startswith("ValueError: target macs")
    # a folder without a record gets the failure, as before (test_bad_values_fail_before_training)
    (tmp_path / "result.json").unlink()
    with pytest.raises(ValueError, match=r"target macs"):
        run(cfg, tmp_path)
    assert PruningResult.load(tmp_path / "result.json").status == "failed"


def test_an_export_whose_packages_are_missing_is_refused_before_training(tmp_path, monkeypatch):
    """export=onnx without onnxscript trained the dense model, compressed it, and failed at the
    export with a bare ModuleNotFoundError; it is refused now, naming the extra."""
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: its import fails
    cfg = _compose(["data=uci_digits", f"dense.cache_dir={tmp_path / 'cache'}", "export=onnx"])
    with pytest.raises(ImportError, match=r"export=onnx needs onnxscript, which is not installed: "
                                          r"pip install 'lightning_ssr\[export\]'"):
        run(cfg, tmp_path)
    assert not (tmp_path / "cache").exists()
    assert PruningResult.load(tmp_path / "result.json").status == "failed"


def test_values_lightning_and_torch_accept_pass_the_checks_before_training(tmp_path):
    """The checks added to name a bad data or trainer value must not refuse good ones: a time for
    val_check_interval (Lightning takes "DD:HH:MM:SS"), a negative split seed (torch takes it)."""
    from lightning_ssr.app.stages import check_config

    cfg = _compose(FAST + ["+trainer.val_check_interval=00:00:10:00", "data.split_seed=-1", "trainer.max_epochs=-1",
                           "trainer.limit_train_batches=1.0", f"dense.cache_dir={tmp_path / 'cache'}"])
    callback, dm = check_config(cfg)
    assert callback is not None and dm.split_seed == -1


def test_unknown_model_name_fails_before_training(tmp_path):
    cfg = _compose(["model.name=alexnet9000", "data=uci_digits"])
    with pytest.raises(ValueError, match="^model: unknown model 'alexnet9000'; available"):
        run(cfg, tmp_path)


@pytest.mark.parametrize("override,says", [
    ("+model.in_channels=3", ("model.in_channels comes from the data set, its images' channels (data=mnist_rgb: the "
                             "digits in 3), not from the model's config: leave +model.in_channels=3 out")),
    ("+model.num_classes=100", "model.num_classes comes from the data set, its classes"),
    ("+model.input_size=32", "model.input_size comes from the data set, its images' size (data.image_size)")])
def test_what_the_data_decides_of_the_model_is_refused_in_the_models_config(tmp_path, override, says):
    """+model.in_channels=3 trained the data's 1-channel network, and result.json recorded 3 (probe)."""
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING

    with pytest.raises(ValueError, match=re.escape(f"config: {says}")) as info:
        run(_compose(["data=uci_digits", f"dense.cache_dir={tmp_path / 'cache'}", override]), tmp_path / "run")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "cache").exists()


def test_console_entry_point_reports_bad_keys():
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr", "nonsense_key=1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "nonsense_key" in proc.stderr


def test_with_hydra_job_chdir_relative_paths_are_the_launch_folders(tmp_path):
    """With hydra.job.chdir=True the job runs in its output folder: ckpt_path=e3.ckpt was "does not
    exist", plugins=[myplug.py] "no file", data.root=fm a data set to install, each though it was in
    the folder the command was started in (probe). They are read from there."""
    from lightning_ssr.app.cli import paths_from

    cfg = _compose(["ckpt_path=e3.ckpt", "plugins=[myplug.py,some_module]", "data=fashion_mnist", "data.root=fm",
                    "dense.cache_dir=/abs/cache"])
    paths_from(cfg, tmp_path)
    assert (cfg.ckpt_path, cfg.data.root, cfg.dense.cache_dir) == (str(tmp_path / "e3.ckpt"), str(tmp_path / "fm"),
                                                                   "/abs/cache")
    assert list(cfg.plugins) == [str(tmp_path / "myplug.py"), "some_module"]  # (a module name stays one)
    (tmp_path / "e3.ckpt").write_bytes(b"not a checkpoint")
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr", "hydra.job.chdir=True", "ckpt_path=e3.ckpt"],
                          cwd=tmp_path, env={**os.environ, "LIGHTNING_SSR_CACHE": str(tmp_path / "cache")},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert f"checkpoint file '{tmp_path / 'e3.ckpt'}' is unreadable" in proc.stderr


SAME_SECOND = """
import datetime, sys
import hydra.core.utils

class SameSecond(datetime.datetime):  # every process's clock at 12:00:00 of one day, its microseconds its own
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime.now().replace(year=2026, month=1, day=1, hour=12, minute=0, second=0)

hydra.core.utils.datetime = SameSecond
from lightning_ssr.app.cli import main
sys.argv[0] = "lightning-ssr"
main()
"""


def test_two_commands_started_in_the_same_second_each_get_their_own_folder(tmp_path):
    """Hydra's default folder is named to the second: two commands started together wrote into one,
    the second moved the first's running record aside, the first then wrote over the second's
    result (probe). Named to the microsecond now. (Refused runs: each still writes its folder.)"""
    (tmp_path / "same_second.py").write_text(SAME_SECOND)
    env = {**os.environ, "LIGHTNING_SSR_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "same_second.py", "target.macs=0", f"seed={seed}"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for seed in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [1, 1]
    records = sorted(tmp_path.glob("outputs/2026-01-01/12-00-00*/result.json"))
    assert len(records) == 2
    assert sorted(PruningResult.load(r).config["cli"]["seed"] for r in records) == [0, 1]


@pytest.mark.parametrize("recipe", [[], ["+experiment=da_mnist_to_digits"]], ids=["run", "recipe"])
def test_a_value_refused_before_training_is_one_line_without_a_traceback(tmp_path, recipe):
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr", *recipe, "data=uci_digits",
                           "schedule.sparsify_epochs=abc",
                           f"hydra.run.dir={tmp_path}", f"dense.cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-2:] == [
        "lightning-ssr: refused before training: TypeError: schedule: sparsify_epochs must be an int, got str 'abc'",
        f"(recorded in {tmp_path / 'result.json'}; HYDRA_FULL_ERROR=1 shows the traceback)"]
    assert PruningResult.load(tmp_path / "result.json").status == "failed"


# ------------------------------------------------------------- hardening
def test_the_dense_accuracy_is_evaluated_once_per_weights_file(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from lightning_ssr.app import stages

    evaluated = []

    def fake_accuracy(cfg, model, dm):
        evaluated.append(model)
        return {"accuracy": 0.9 + 0.01 * len(evaluated), "val_accuracy": 0.8}

    monkeypatch.setattr(stages, "accuracy", fake_accuracy)
    cfg = OmegaConf.create({"dense": {"use_cache": True}})
    cache = tmp_path / "dense.pt"
    cache.write_bytes(b"weights")
    first = stages.dense_accuracy(cfg, "net", None, str(cache))
    assert evaluated == ["net"] and first == {"accuracy": 0.91, "val_accuracy": 0.8}
    assert stages.dense_accuracy(cfg, "net", None, cache) == first and len(evaluated) == 1  # read back

    cache.write_bytes(b"weights trained again")  # another file under the same name: evaluated again
    assert stages.dense_accuracy(cfg, "net", None, cache)["accuracy"] == pytest.approx(0.92)
    record = tmp_path / "dense.pt.accuracy.json"
    record.write_text('{"accuracy": 0.9')  # cut short
    assert stages.dense_accuracy(cfg, "net", None, cache)["accuracy"] == pytest.approx(0.93)
    assert json.loads(record.read_text())["accuracy"] == pytest.approx(0.93)  # replaced

    record.unlink()
    stages.dense_accuracy(OmegaConf.create({"dense": {"use_cache": False}}), "net", None, cache)
    assert not record.exists() and len(evaluated) == 4  # no cache, no record


def test_dense_cache_is_keyed_on_the_settings_that_change_the_dense_model():
    from lightning_ssr.app.stages import dense_cache_path

    base = dense_cache_path(_compose([]))
    assert dense_cache_path(_compose(["trainer.limit_train_batches=2"])) != base  # a smoke run has its own cache
    assert dense_cache_path(_compose(["trainer.precision=bf16-mixed"])) != base
    assert dense_cache_path(_compose(["trainer.enable_progress_bar=false"])) == base  # presentation only
    # the dense model trains at dense.lr: module.lr (the compression run's) shares its cache, the
    # other SGD settings, which it trains with, do not
    assert dense_cache_path(_compose(["module.lr=0.05"])) == base
    assert dense_cache_path(_compose(["dense.lr=0.05"])) != base
    assert dense_cache_path(_compose(["module.weight_decay=1e-4"])) != base
    # the bounds of the compression run: the dense model trains dense.epochs whatever they are
    assert dense_cache_path(_compose(["+trainer.max_steps=60", "+trainer.max_time=00:00:10:00"])) == base
    # augmentation trains the dense model too; none keeps the key the caches had before the setting existed
    assert dense_cache_path(_compose(["data.augment=[shift]"])) != base
    assert dense_cache_path(_compose(["data.augment=[flip,shift]"])) == dense_cache_path(
        _compose(["data.augment=[shift,flip]"]))  # the same augmentation
    assert dense_cache_path(_compose(["data.augment=shift"])) == dense_cache_path(_compose(["data.augment=[shift]"]))
    keyed = _compose([])
    del keyed.data.augment
    assert dense_cache_path(keyed) == base == dense_cache_path(_compose(["data.augment=[]"]))


def test_trainer_bounds_shorten_the_run_to_prune_not_the_dense_training(tmp_path, monkeypatch):
    import lightning.pytorch as pl

    from lightning_ssr.app.stages import build_data, train_dense

    fits = []
    fit = pl.Trainer.fit

    def recorded_fit(trainer, *args, **kwargs):
        fit(trainer, *args, **kwargs)
        fits.append((trainer.current_epoch, trainer.global_step))

    monkeypatch.setattr(pl.Trainer, "fit", recorded_fit)
    cfg = _compose(FAST + ["dense.epochs=2", "dense.use_cache=false", "+trainer.max_steps=3",
                           "+trainer.min_epochs=3", "+trainer.max_time=00:01:00:00"])
    train_dense(cfg, build_data(cfg), tmp_path)
    assert fits == [(2, 16)]  # its 2 epochs of 8 batches, not the 3 steps (or 3 epochs) of the run to prune


def test_a_network_of_your_own_in_a_module_keys_the_dense_cache_and_the_runs_code(tmp_path, monkeypatch):
    """A network reached by model._target_ (or a plugin given as a module name), not a .py file:
    editing its forward (same shapes) reused the dense model the earlier code trained, without a
    word, and a sweep took a run of the old code for one of the new."""
    from lightning_ssr.app.stages import code_identity, dense_cache_path

    monkeypatch.syspath_prepend(str(tmp_path))
    source = tmp_path / "my_nets_for_the_cache.py"
    source.write_text("def build(**kw):\n    return None\n")
    overrides = [*FAST, "model._target_=my_nets_for_the_cache.build", "~model.name"]
    cfg = _compose(overrides)
    first, code = dense_cache_path(cfg), code_identity(cfg)
    assert set(code["plugin_files"]) == {"module:my_nets_for_the_cache"}
    assert dense_cache_path(_compose(overrides)) == first  # (the same code: the same key)
    source.write_text("def build(**kw):\n    return None  # forward() changed\n")
    assert dense_cache_path(_compose(overrides)) != first and code_identity(_compose(overrides)) != code
    # given as a plugin module: the run's code too; the package's own networks are not
    assert "module:my_nets_for_the_cache" in code_identity(_compose([*FAST, "plugins=[my_nets_for_the_cache]"]))[
        "plugin_files"]
    assert code_identity(_compose(FAST))["plugin_files"] == {}


def test_the_dense_cache_key_follows_the_networks_code_wherever_it_lives(tmp_path, monkeypatch):
    """A class method's module, a helper module the network imports, a namespace package; a
    package that fails to import does not stop the key (a sweep went down with it); a plugin of
    pruning methods only is the run's code, not the dense model's."""
    from lightning_ssr.app.stages import code_identity, dense_cache_path

    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "keypkg_nets").mkdir()
    (tmp_path / "keypkg_nets" / "__init__.py").write_text("")
    (tmp_path / "keypkg_nets" / "nets.py").write_text("import keyhelper_layers\nclass Net:\n    @classmethod\n"
                                                       "    def build(cls, **kw):\n        return None\n")
    (tmp_path / "keyhelper_layers.py").write_text("WIDTH = 4\n")
    (tmp_path / "keyns_nets").mkdir()  # a namespace package: no __init__.py
    (tmp_path / "keyns_nets" / "nets.py").write_text("def build(**kw):\n    return None\n")
    (tmp_path / "keybroken_pkg").mkdir()
    (tmp_path / "keybroken_pkg" / "__init__.py").write_text("raise RuntimeError('broken on import')\n")
    (tmp_path / "keymethods_only.py").write_text("X = 1\n")

    def keys(target, *more):
        cfg = _compose([*FAST, f"model._target_={target}", "~model.name", *more])
        return dense_cache_path(cfg), code_identity(cfg)["plugin_files"]

    first, code = keys("keypkg_nets.nets.Net.build")
    assert {"module:keypkg_nets.nets", "module:keyhelper_layers"} <= set(code)
    assert "keypkg_nets" not in sys.modules  # found without importing the user's code
    (tmp_path / "keyhelper_layers.py").write_text("WIDTH = 8\n")  # the helper the network imports
    assert keys("keypkg_nets.nets.Net.build")[0] != first

    first, code = keys("keyns_nets.nets.build")
    assert "module:keyns_nets.nets" in code
    (tmp_path / "keyns_nets" / "nets.py").write_text("def build(**kw):\n    return 1\n")
    assert keys("keyns_nets.nets.build")[0] != first

    broken, code = keys("keybroken_pkg.nets.build")  # refused where the run imports it, not here
    assert keys("keybroken_pkg.nets.build")[0] == broken and code

    # a network in a plugin file (README's example): the modules of your own it imports key it too
    (tmp_path / "keyplugin_models.py").write_text("import keyplugin_blocks\ndef build(**kw):\n    return None\n")
    (tmp_path / "keyplugin_blocks.py").write_text("DEPTH = 1\n")
    first, code = keys("keyplugin_models.build", f"plugins=[{tmp_path / 'keyplugin_models.py'}]")
    assert "module:keyplugin_blocks" in code
    (tmp_path / "keyplugin_blocks.py").write_text("DEPTH = 2\n")
    assert keys("keyplugin_models.build", f"plugins=[{tmp_path / 'keyplugin_models.py'}]")[0] != first

    first, code = keys("keyns_nets.nets.build", "plugins=[keymethods_only]")
    assert "module:keymethods_only" in code
    (tmp_path / "keymethods_only.py").write_text("X = 2\n")
    second, changed = keys("keyns_nets.nets.build", "plugins=[keymethods_only]")
    assert second == first and changed != code  # the run's code changed; the dense model's did not

    # a package installed with pip install -e: found by the finder the install puts on sys.meta_path,
    # from a folder that is not on sys.path (it had no key: a stale dense model was reused)
    from importlib.machinery import PathFinder
    from importlib.util import spec_from_file_location

    elsewhere = tmp_path / "project" / "keyedit_nets"
    elsewhere.mkdir(parents=True)
    (elsewhere / "__init__.py").write_text("")
    (elsewhere / "nets.py").write_text("def build(**kw):\n    return None\n")

    class EditableFinder:  # what setuptools' editable install adds, in short
        @classmethod
        def find_spec(cls, fullname, path=None, target=None):
            if fullname == "keyedit_nets":
                return spec_from_file_location(fullname, elsewhere / "__init__.py",
                                               submodule_search_locations=[str(elsewhere)])
            if fullname.startswith("keyedit_nets."):
                return PathFinder.find_spec(fullname, [str(elsewhere)])
            return None

    monkeypatch.setattr(sys, "meta_path", [*sys.meta_path, EditableFinder])
    first, code = keys("keyedit_nets.nets.build")
    assert "module:keyedit_nets.nets" in code and "keyedit_nets" not in sys.modules
    (elsewhere / "nets.py").write_text("def build(**kw):\n    return 2\n")
    assert keys("keyedit_nets.nets.build")[0] != first


def test_code_of_your_own_is_told_from_the_installation_by_its_paths():
    """A base prefix of /usr took /usr/src/app/nets.py for installed code (no digest: a stale dense
    model reused); a folder beside the package's, lightning_ssr_ext/, passed for the package."""
    import os

    import lightning_ssr
    from lightning_ssr.app.stages import installed_code

    assert installed_code(Path(torch.__file__)) and installed_code(Path(os.__file__))
    assert installed_code(Path(lightning_ssr.__file__))
    assert not installed_code(Path(lightning_ssr.__file__).parent.parent / "lightning_ssr_ext" / "nets.py")
    assert not installed_code(Path("/usr/src/app/nets.py"))


def test_a_damaged_dense_cache_is_retrained_and_overwritten(tmp_path):
    from lightning_ssr.app.stages import dense_cache_path

    overrides = FAST + [f"dense.cache_dir={tmp_path / 'cache'}"]
    first = run(_compose(overrides), tmp_path / "first")
    cache = dense_cache_path(_compose(overrides))
    whole = cache.read_bytes()
    cache.write_bytes(whole[:100])  # truncated, as by a crash or a full disk
    with pytest.warns(UserWarning, match="unreadable.*training the dense model again"):
        again = run(_compose(overrides), tmp_path / "again")
    assert not again.dense["cache"]["reused"] and again.dense["accuracy"] == first.dense["accuracy"]
    assert torch.load(cache, weights_only=True)["state_dict"]  # overwritten with a whole file
    # bytes changed inside a tensor (a disk or copy error), which torch.load reads without a word
    from lightning_ssr.app.stages import _load_cached
    from tests.test_checkpoint import _corrupt

    _corrupt(cache, cache)
    with pytest.warns(UserWarning, match="unreadable .*fails the archive's CRC check.*training the dense model again"):
        assert not _load_cached(build_model("lenet5", in_channels=1, num_classes=10, input_size=28), cache)


def test_concurrent_cache_writes_never_leave_a_partial_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from lightning_ssr.checkpoint import save_pruned

    net = build_model("lenet5")
    path = tmp_path / "dense.pt"
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: save_pruned(net, path, None), range(16)))
    assert torch.load(path, weights_only=True)["state_dict"].keys() == net.state_dict().keys()
    assert [p.name for p in tmp_path.iterdir()] == ["dense.pt"]  # no temporary file left behind


def test_resume_from_a_lightning_checkpoint_name_with_equals_signs(tmp_path):
    from lightning_ssr.app.cli import quote_path_overrides

    overrides = FAST + [f"dense.cache_dir={tmp_path / 'cache'}"]
    run(_compose(overrides), tmp_path / "first")
    ckpts = sorted((tmp_path / "first").rglob("epoch=*-step=*.ckpt"))
    assert ckpts, "the run saved no Lightning checkpoint"
    typed = f"ckpt_path={ckpts[-1]}"  # as a user types it: "=" inside the value, unquoted
    assert quote_path_overrides([typed]) == [f"ckpt_path='{ckpts[-1]}'"]
    cfg = compose_config(overrides + [typed])
    assert cfg.ckpt_path == str(ckpts[-1])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        resumed = run(cfg, tmp_path / "resumed")
    # the resumed run writes its checkpoints in its own output directory: Lightning's notice of
    # the changed dirpath is not for the user
    assert not [w for w in seen if "dirpath has changed" in str(w.message)]
    assert resumed.status == "ok" and resumed.plan is not None
    # the same checkpoint with another target or method: refused before anything trains, in one line
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING

    # and with other settings of the run (its module, seed, data): refused too; a resume went on with
    # the checkpoint's weights and optimizer, and result.json recorded the new settings as the run's
    settings = r"^ckpt_path=.* was written by a run with other settings \({}\): a resume goes on with"
    for change, text in (("target.macs=0.1", r"target.macs: 0.2 -> 0.1"), ("pruning=l1", "from method 'ssr_l20'"),
                         ("module.lr=0.1", settings.format(r"module.lr: 0.01 -> 0.1")),
                         ("seed=1", settings.format(r"seed: 0 -> 1")),
                         ("+module.extra=1", settings.format(r"module.extra: \(unset\) -> 1"))):
        with pytest.raises(ValueError, match=text) as info:
            run(compose_config([*overrides, typed, change, f"dense.cache_dir={tmp_path / 'other'}"]),
                tmp_path / "changed")
        assert getattr(info.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "other").exists()


def test_an_unreadable_checkpoint_is_named_before_training(tmp_path):
    from lightning_ssr.checkpoint import CheckpointReadError

    bad = tmp_path / "epoch=3-step=120.ckpt"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointReadError, match="epoch=3-step=120.ckpt.*unreadable"):
        run(compose_config(FAST + [f"ckpt_path={bad}"]), tmp_path / "run")
    # refused in the checks, before any training: on record as failed, naming the file
    assert not (tmp_path / "run" / "dense").exists()
    failed = PruningResult.load(tmp_path / "run" / "result.json")
    assert failed.status == "failed" and "epoch=3-step=120.ckpt" in failed.error and failed.pruned == {}


def test_a_checkpoint_without_pruning_state_past_the_warm_up_is_refused_before_training(tmp_path):
    """A dense fit's checkpoint (Lightning's, without the callback) given as ckpt_path: the fit
    would refuse it at its start; the command refuses it before the dense model trains."""
    from lightning_ssr.app import stages
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING

    cfg = compose_config(FAST + [f"dense.cache_dir={tmp_path / 'cache'}"])
    dm = stages.build_data(cfg)
    weights = stages.build_module(cfg, stages.build_network(cfg, dm), dm).state_dict()  # (this job's module's)
    ckpt = tmp_path / "epoch=2-step=30.ckpt"
    torch.save({"epoch": 2, "global_step": 30, "state_dict": weights, "callbacks": {},
                "pytorch-lightning_version": "2.6.0"}, ckpt)
    with pytest.raises(ValueError, match="resumes at epoch at least 2 from a checkpoint that holds no Pruning "
                                         "state") as info:
        run(compose_config(FAST + [f"ckpt_path={ckpt}", f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "cache").exists()


def test_a_checkpoint_of_another_architecture_is_refused_before_training(tmp_path):
    """A resnet20 run's checkpoint given to a lenet5 job: its plan names layers lenet5 lacks.
    Refused at the set-up, in one line (it was refused by Lightning's restore, after the dense
    model, with a traceback)."""
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING
    from lightning_ssr.methods.oneshot import prune_oneshot
    from lightning_ssr.structure import PLAN_CHECKPOINT_KEY, PlanMismatchError

    class Wrapped(nn.Module):  # the job's LightningModule holds its network as .model
        def __init__(self):
            super().__init__()
            self.model = build_model("resnet20", in_channels=1, num_classes=10, input_size=28)

        def forward(self, x):
            return self.model(x)

    wrapped = Wrapped()
    plan = prune_oneshot(wrapped, torch.randn(2, 1, 28, 28), "[0.5]*19")
    ckpt = tmp_path / "epoch=0-step=8.ckpt"
    torch.save({"epoch": 0, "global_step": 8, "state_dict": wrapped.state_dict(), "callbacks": {},
                "pytorch-lightning_version": "2.6.0", PLAN_CHECKPOINT_KEY: plan.to_dict()}, ckpt)
    with pytest.raises(PlanMismatchError, match=r"^ckpt_path=.*epoch=0-step=8.ckpt: ") as info:
        run(compose_config(FAST + [f"ckpt_path={ckpt}", f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "cache").exists()
    large = Wrapped()  # lenet5's own layers, but a plan traced on 32x32 inputs, which this job's lenet5 cannot take
    large.model = build_model("lenet5", in_channels=1, num_classes=10, input_size=32)
    torch.save({**torch.load(ckpt, weights_only=True),
                PLAN_CHECKPOINT_KEY: prune_oneshot(large, torch.randn(2, 1, 32, 32), "[0.5]*2").to_dict()}, ckpt)
    with pytest.raises(PlanMismatchError, match=r"^ckpt_path=.*epoch=0-step=8.ckpt: .*forward\(\) failed"):
        run(compose_config(FAST + [f"ckpt_path={ckpt}", f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")
    # a fit of your own, before its prune (no plan), of another network and with other pruning settings:
    # Lightning's restore failed after the dense training ("Missing key(s) ..."), or the settings its
    # callback state holds were named first, as if the run were this job's with other settings
    own = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    torch.save({"epoch": 0, "global_step": 8, "state_dict": {f"net.{k}": v for k, v in own.state_dict().items()},
                "callbacks": {}, "pytorch-lightning_version": "2.6.0"}, ckpt)
    with pytest.raises(PlanMismatchError, match=r"^ckpt_path=.*epoch=0-step=8.ckpt: the checkpoint holds the weights "
                                                r"of another network \(it lacks model\.conv1\.bias, model\.conv1\.weight"
                                                r".*it holds net\.0\.bias.*: it was not saved from this model") as info:
        run(compose_config(FAST + [f"ckpt_path={ckpt}", f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "cache").exists()


def test_a_pruned_model_given_as_ckpt_path_is_refused_naming_what_loads_it(tmp_path):
    """The run's pruned.pt is a model, not a fit's checkpoint: Lightning failed on it with a
    KeyError ('pytorch-lightning_version') deep in its restore, after the dense model."""
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING
    from lightning_ssr.checkpoint import save_pruned
    from lightning_ssr.structure import PruningPlan

    pruned = save_pruned(nn.Linear(2, 2), tmp_path / "pruned.pt", PruningPlan([1, 2]))  # (a plan that cut nothing)
    with pytest.raises(ValueError, match=r"pruned.pt is a pruned model \(save_pruned's file, as a run's pruned.pt\), not a Lightning "
                                         r"checkpoint of a fit.*lightning_ssr.load_pruned\(") as info:
        run(compose_config(FAST + [f"ckpt_path={pruned}", f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "cache").exists()
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, other)  # some other file of tensors
    with pytest.raises(ValueError, match=r"weights.pt is a state dict, not a Lightning checkpoint of a fit"):
        run(compose_config(FAST + [f"ckpt_path={other}", f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")
    (tmp_path / "none").mkdir()
    unpruned = save_pruned(nn.Linear(2, 2), tmp_path / "none" / "pruned.pt", None)  # (pruning=none's pruned.pt)
    with pytest.raises(ValueError, match=r"pruned.pt is a model saved unpruned \(save_pruned without a plan, as the "
                                         r"pruned.pt of a run with pruning=none\), not a Lightning"):
        run(compose_config(FAST + [f"ckpt_path={unpruned}", f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")
    dense = save_pruned(nn.Linear(2, 2), tmp_path / "lenet5-UCIDigits-seed0-0123.pt", None, config={})  # (the cache's)
    with pytest.raises(ValueError, match=r"0123.pt is a dense model the command cached \(dense.cache_dir\), not a "
                                         r"Lightning checkpoint of a fit"):  # (it was named a pruned model)
        run(compose_config(FAST + [f"ckpt_path={dense}", f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")


OWN_MODELS = """
import torch
from torch import nn


class Small(nn.Module):
    def __init__(self, in_channels, num_classes, shuffle=False):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(in_channels, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.fc, self.shuffle = nn.Linear(8, num_classes), shuffle

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        if self.shuffle:  # a channel shuffle, which the rebuild cannot map
            n, c, h, w = x.shape
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


def build(in_channels, num_classes, input_size):
    return Small(in_channels, num_classes)


def shuffled(in_channels, num_classes, input_size):
    return Small(in_channels, num_classes, shuffle=True)
"""


# (its small network has coarse steps at this target, which is said: not what this test is about)
@pytest.mark.filterwarnings("ignore:target .* the closest the channel counts come below it")
def test_a_network_of_your_own_from_a_plugin_file_and_one_the_rebuild_cannot_handle(tmp_path):
    """model._target_ names a factory in a plugin file, by the file's name, without the zoo's
    ``name`` key. A channel shuffle is refused before the dense model trains (it failed after)."""
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING

    (tmp_path / "own_models_cli.py").write_text(OWN_MODELS)
    own = FAST + [f"plugins=[{tmp_path / 'own_models_cli.py'}]", "~model.name", f"dense.cache_dir={tmp_path / 'cache'}"]
    result = run(compose_config(own + ["model._target_=own_models_cli.build"]), tmp_path / "run")
    assert result.status == "ok" and result.macs_reduction > 1
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.pt")] == ["build"]
    from lightning_ssr.app.stages import dense_cache_path

    before = dense_cache_path(compose_config(own + ["model._target_=own_models_cli.build"]))
    with open(tmp_path / "own_models_cli.py", "a") as f:
        f.write("\n# an edit of the network's code\n")
    after = dense_cache_path(compose_config(own + ["model._target_=own_models_cli.build"]))
    assert before.exists() and after != before  # the edited network's dense model is not the cached one
    with pytest.raises(Exception, match=r"dry run at set-up.*channel shuffle.*ignored_layers") as info:
        run(compose_config(own + ["model._target_=own_models_cli.shuffled"]), tmp_path / "bad")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING)
    assert not list((tmp_path / "cache").glob("shuffled-*"))  # no dense model was trained for it


def test_the_command_prints_no_adverts_or_deprecation_noise(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ssr", *FAST, "trainer.limit_val_batches=1", f"dense.cache_dir={tmp_path / 'cache'}",
         f"hydra.run.dir={tmp_path / 'run'}"],
        capture_output=True, text=True, timeout=600, check=False)
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-2000:]
    for noise in ("Tip", "litlogger", "tensorboardX", "LeafSpec", "Seed set to", "`Trainer.fit` stopped",
                  "smaller than the logging interval"):
        assert noise not in text, noise
    assert text.count("GPU available") <= 1
    assert text.count("`Trainer(limit_val_batches=1)` was configured") == 1  # (each Trainer of the job said it)
    assert text.count(TABLE_HEADER) == 1 and "ssr_l20:" in text


@pytest.mark.parametrize("trainer, world_size, expected", [
    ([], 1, 20),  # the default 25 is more than the epoch holds
    (["trainer.limit_train_batches=8"], 1, 8),
    (["trainer.limit_train_batches=0.5"], 1, 10),
    (["trainer.log_every_n_steps=5"], 1, 5),
    (["trainer.accumulate_grad_batches=4"], 1, 5),  # the interval counts optimizer steps
    ([], 2, 10),  # each process of a DDP run has half the batches
])
def test_the_logging_interval_is_capped_at_the_steps_of_an_epoch(trainer, world_size, expected, monkeypatch):
    import lightning.pytorch as pl

    cfg = _compose(["data=uci_digits"] + trainer)
    dm = instantiate(cfg.data)
    assert dm.train_batches() == 20  # 70% of 1,797 images, in batches of 64
    fit = instantiate(cfg.trainer, max_epochs=1, logger=False, enable_checkpointing=False)
    monkeypatch.setattr(pl.Trainer, "world_size", property(lambda self: world_size))
    assert cap_log_interval(fit, dm) == expected == fit.log_every_n_steps
    assert cap_log_interval(fit, object()) is None  # a data module that cannot count its batches: left as it is


def test_common_trainer_settings_are_plain_overrides():
    cfg = _compose(["trainer.precision=16-mixed", "trainer.devices=2", "trainer.strategy=ddp",
                    "trainer.accelerator=cpu", "trainer.accumulate_grad_batches=4", "trainer.gradient_clip_val=1.0",
                    "trainer.limit_train_batches=3", "trainer.limit_val_batches=2", "trainer.limit_test_batches=1"])
    assert cfg.trainer.precision == "16-mixed" and cfg.trainer.strategy == "ddp" and cfg.trainer.limit_test_batches == 1
    assert _compose(["+trainer.fast_dev_run=true"]).trainer.fast_dev_run is True  # any other key: with "+"


@pytest.mark.usefixtures("sigint_kept")
def test_ctrl_c_records_where_the_run_stopped_and_the_checkpoint_to_resume_from(tmp_path, monkeypatch):
    from lightning_ssr.app.module import ImageClassifier
    from lightning_ssr.app.stages import RunInterrupted, dense_cache_path

    step = ImageClassifier.training_step

    def interrupted_at(stop):
        def training_step(self, batch, batch_idx):
            if self.global_step == stop:
                raise KeyboardInterrupt
            return step(self, batch, batch_idx)
        return training_step

    overrides = FAST + [f"dense.cache_dir={tmp_path / 'cache'}"]
    # during the dense training: nothing cached, nothing to resume
    monkeypatch.setattr(ImageClassifier, "training_step", interrupted_at(3))
    with pytest.raises(RunInterrupted, match=r"during the dense training at epoch 0 \(optimizer step 3\); nothing"):
        run(_compose(overrides), tmp_path / "dense")
    assert not dense_cache_path(_compose(overrides)).exists()
    assert "RunInterrupted: interrupted" in json.loads((tmp_path / "dense" / "result.json").read_text())["error"]
    monkeypatch.setattr(ImageClassifier, "training_step", step)
    train_dense_only = run(_compose(overrides + ["pruning=none", "schedule.finetune_epochs=0"]), tmp_path / "d")
    assert train_dense_only.status == "ok"  # the dense model is cached now
    # in epoch 1 of the run that prunes (8 steps an epoch): the checkpoint of epoch 0 is named
    monkeypatch.setattr(ImageClassifier, "training_step", interrupted_at(12))
    called = time.time()
    with pytest.raises(RunInterrupted, match=r"during the run that prunes at epoch 1 \(optimizer step 12\)") as info:
        run(_compose(overrides), tmp_path / "run")
    saved = re.search(r"ckpt_path=(\S+) to go on", str(info.value)).group(1)
    assert Path(saved).name == "epoch=0-step=8.ckpt" and Path(saved).is_file()
    assert "step=8.ckpt (of optimizer step 8: steps 9-12 run again): run the same command" in str(info.value)
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "interrupted" and saved in record["error"]
    # when the attempt started (a sweep run again goes on only from its checkpoints): the clock's time then
    assert called <= record["config"]["started_at"] <= Path(saved).stat().st_mtime
    monkeypatch.setattr(ImageClassifier, "training_step", step)
    resumed = run(_compose(overrides + [f"ckpt_path={saved}"]), tmp_path / "resumed")
    assert resumed.status == "ok" and resumed.macs_reduction > 1
    # the resumed run is the uninterrupted one, batch order included (the data module keeps its seed)
    full = run(_compose(overrides), tmp_path / "full")
    assert full.plan == resumed.plan
    weights = [read_checkpoint(tmp_path / name / "pruned.pt")["state_dict"] for name in ("full", "resumed")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_command_answers_ctrl_c_with_the_message_and_exit_code_130(monkeypatch, capsys):
    from lightning_ssr.app import cli
    from lightning_ssr.app.stages import RunInterrupted

    def interrupted():
        raise RunInterrupted("interrupted during the run that prunes at epoch 1 (optimizer step 12)", "e 0.ckpt")

    monkeypatch.setattr(cli, "_hydra_main", interrupted)
    monkeypatch.setattr(sys, "argv", ["lightning-ssr"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 130
    err = capsys.readouterr().err
    assert err.strip() == ("lightning-ssr: interrupted during the run that prunes at epoch 1 (optimizer step 12). The "
                           "last checkpoint is e 0.ckpt: run the same command with ckpt_path='e 0.ckpt' to go on from it")


def test_sigterm_stops_the_run_like_ctrl_c_with_exit_code_143(tmp_path, monkeypatch, capsys):
    """A scheduler's or timeout's SIGTERM: Lightning stops the fit at the end of the batch with a
    SystemExit whose code is 0, which would have ended the command silently with success and no
    result. It is said, recorded and answered with 143 (128 + SIGTERM), as Ctrl-C is with 130."""
    import os
    import signal

    from lightning_ssr.app import cli
    from lightning_ssr.app.module import ImageClassifier
    from lightning_ssr.app.stages import RunInterrupted

    step = ImageClassifier.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler notes it; the batch finishes
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "training_step", training_step)
    with pytest.raises(RunInterrupted, match=r"stopped by SIGTERM during the dense training at epoch 0 \(optimizer "
                                             r"step 4\); nothing of it was kept") as info:
        run(_compose(FAST + [f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")
    assert info.value.exit_code == 143
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "interrupted" and "stopped by SIGTERM" in record["error"]

    # in the evaluation of the pruned model (one test batch: Lightning notes it and goes on): said
    # after the test, with the run's last checkpoint, and exit code 143 all the same
    monkeypatch.setattr(ImageClassifier, "training_step", step)
    evaluate = ImageClassifier.test_step

    def test_step(self, batch, batch_idx):
        if self.model.conv1.out_channels < 20:  # the pruned model
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "test_step", test_step)
    with pytest.raises(RunInterrupted, match=r"^stopped by SIGTERM after the run that prunes had finished, during "
                                             r"the evaluation or the export. The last checkpoint is ") as late:
        run(_compose(FAST + [f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "late")
    assert late.value.exit_code == 143 and Path(late.value.checkpoint).is_file()

    def stopped():
        raise info.value

    monkeypatch.setattr(cli, "_hydra_main", stopped)
    monkeypatch.setattr(sys, "argv", ["lightning-ssr"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 143 and "stopped by SIGTERM" in capsys.readouterr().err


INTERRUPT_PLUGIN = """
from pathlib import Path

from lightning_ssr.app.module import ImageClassifier

step = ImageClassifier.training_step
done = Path(__file__).with_suffix(".done")


def training_step(self, batch, batch_idx):  # Ctrl-C once, in epoch 1 of the run that fine-tunes 2 epochs
    if self.global_step == 12 and self.trainer.max_epochs == 3 and not done.exists():
        done.touch()
        raise KeyboardInterrupt
    return step(self, batch, batch_idx)


ImageClassifier.training_step = training_step
"""


def test_ctrl_c_in_a_sweep_says_how_to_go_on_with_that_run_alone(tmp_path):
    """The single run's advice, the same command with ckpt_path=, would give every run of the sweep
    that checkpoint. The message names the run and the command that finishes it in its folder, where
    the sweep's report then finds it."""
    (tmp_path / "interrupt.py").write_text(INTERRUPT_PLUGIN)
    sweep = tmp_path / "sweep"
    base = [o for o in FAST if not o.startswith("schedule.finetune")] + [
        f"dense.cache_dir={tmp_path / 'cache'}", f"plugins=[{tmp_path / 'interrupt.py'}]"]
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr", "-m", *base, "schedule.finetune_epochs=1,2,3",
                           f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 130, proc.stderr[-2000:]
    message = proc.stderr.strip().splitlines()[-1]
    assert message.startswith("lightning-ssr: interrupted during the run that prunes at epoch 1 (optimizer step 12), "
                              f"in run 1 of the sweep in {sweep}; the sweep stopped there"), message
    assert "Traceback" not in proc.stderr and not (sweep / "2").exists()
    command = re.search(r"to go on with that run alone \(in its folder, where the report finds it\): (.+?)\. "
                        r"lightning-ssr-report", message).group(1)
    assert "schedule.finetune_epochs=2" in command and f"hydra.run.dir={sweep / '1'}" in command
    # the whole sweep again, on a copy of its folder: the interrupted run goes on from its checkpoint, as its
    # command does (it trained again from the start, leaving the checkpoint unused and unmentioned)
    shutil.copytree(sweep, tmp_path / "copy")
    saved = max((tmp_path / "copy" / "1").glob("logs/version_0/checkpoints/*.ckpt"))
    rerun = subprocess.run([sys.executable, "-m", "lightning_ssr", "-m", *base, "schedule.finetune_epochs=1,2,3",
                            f"hydra.sweep.dir={tmp_path / 'copy'}"], capture_output=True, text=True, timeout=600,
                           check=False)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (f"run 1: interrupted before with the same configuration; goes on from its last checkpoint {saved}"
            in rerun.stdout), rerun.stdout[-2000:]
    went_on = json.loads((tmp_path / "copy" / "1" / "result.json").read_text())
    assert went_on["status"] == "ok" and went_on["config"]["cli"]["ckpt_path"] == str(saved)
    args = shlex.split(command)
    assert args[0] == "lightning-ssr"
    resumed = subprocess.run([sys.executable, "-m", "lightning_ssr", *args[1:]], capture_output=True, text=True,
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    result = json.loads((sweep / "1" / "result.json").read_text())
    assert result["status"] == "ok" and result["config"]["cli"]["schedule"]["finetune_epochs"] == 2
    # the whole sweep again, in the same folder: the runs that finished are not trained again
    again = subprocess.run([sys.executable, "-m", "lightning_ssr", "-m", *base, "schedule.finetune_epochs=1,2,3",
                            f"hydra.sweep.dir={sweep}"], capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, again.stderr[-2000:]
    for job in (0, 1):
        assert f"run {job}: finished before with the same configuration" in again.stdout
    assert "run 2: finished before" not in again.stdout
    assert json.loads((sweep / "2" / "result.json").read_text())["status"] == "ok"
    assert json.loads((sweep / "1" / "result.json").read_text()) == result  # (not written again)


def test_a_sweep_run_again_goes_on_only_from_a_checkpoint_of_the_interrupted_attempt(tmp_path):
    """The folder may hold the checkpoints of an earlier attempt of the same configuration (one that
    failed, trained again from the start since): the interrupted attempt goes on from what it wrote,
    or from the checkpoint it went on from itself, not from those."""
    import os

    from lightning_ssr.app.cli import interrupted_checkpoint
    from lightning_ssr.app.stages import started_result

    cfg = compose_config(FAST)
    saved = tmp_path / "logs" / "version_0" / "checkpoints"
    saved.mkdir(parents=True)
    torch.save({"state_dict": {}}, saved / "epoch=3-step=40.ckpt")
    os.utime(saved / "epoch=3-step=40.ckpt", (1e9, 1e9))  # (written long before the attempt started)
    attempt = started_result(cfg)
    attempt.status, attempt.timings = "interrupted", {"total_s": 5.0}
    attempt.save(tmp_path / "result.json")
    assert interrupted_checkpoint(cfg, tmp_path) is None
    mine = tmp_path / "logs" / "version_1" / "checkpoints"
    mine.mkdir(parents=True)
    torch.save({"state_dict": {}}, mine / "epoch=0-step=8.ckpt")
    attempt.save(tmp_path / "result.json")
    assert interrupted_checkpoint(cfg, tmp_path) == mine / "epoch=0-step=8.ckpt"
    (mine / "epoch=0-step=8.ckpt").unlink()  # an attempt that went on from the old one, and wrote none itself
    attempt.config["cli"]["ckpt_path"] = str(saved / "epoch=3-step=40.ckpt")
    attempt.save(tmp_path / "result.json")
    assert interrupted_checkpoint(cfg, tmp_path) == saved / "epoch=3-step=40.ckpt"
    assert interrupted_checkpoint(compose_config(FAST + ["seed=1"]), tmp_path) is None  # (another configuration)
    # the attempt's start is recorded: a later attempt refused before training writes its record back unchanged
    # (the file's time is then now, long after the attempt's checkpoints), and it still goes on from them
    del attempt.config["cli"]["ckpt_path"]
    attempt.config["started_at"] = 1e9 - 100.0
    attempt.save(tmp_path / "result.json")
    assert interrupted_checkpoint(cfg, tmp_path) == saved / "epoch=3-step=40.ckpt"
    del attempt.config["started_at"]  # (a record of an earlier version: its time less the attempt's duration)
    attempt.save(tmp_path / "result.json")
    assert interrupted_checkpoint(cfg, tmp_path) is None


def test_a_sweep_job_is_skipped_only_for_its_own_finished_configuration(tmp_path):
    """finished_before: the same resolved configuration, status ok. Another value (one batch,
    limit 1, is not all of them, limit 1.0, though Python's 1 == 1.0), or an interrupted run, runs."""
    from lightning_ssr.app.cli import finished_before
    from lightning_ssr.app.stages import code_identity
    from lightning_ssr.report import PruningResult

    cfg = compose_config(FAST + ["trainer.limit_val_batches=1"])
    done = PruningResult(method="ssr_l20", pruned={"val_accuracy": 0.9},
                         config={"cli": OmegaConf.to_container(cfg, resolve=True), "code": code_identity(cfg)})
    done.save(tmp_path / "result.json")
    assert finished_before(cfg, tmp_path).pruned == {"val_accuracy": 0.9}
    assert finished_before(compose_config(FAST + ["trainer.limit_val_batches=1.0"]), tmp_path) is None
    assert finished_before(compose_config(FAST + ["trainer.limit_val_batches=1", "seed=1"]), tmp_path) is None
    assert finished_before(compose_config(FAST + ["trainer.limit_val_batches=1", f"ckpt_path={tmp_path}/e.ckpt"]),
                           tmp_path) is not None  # (a run finished from its checkpoint)
    # the same configuration with other code: another version of this package, or a plugin file edited since
    for code in ({**code_identity(cfg), "lightning_ssr": "0.0.1"}, None):
        PruningResult(method="ssr_l20", config={"cli": done.config["cli"], "code": code}).save(tmp_path / "result.json")
        assert finished_before(cfg, tmp_path) is None
    plugin = tmp_path / "my_net.py"
    plugin.write_text("WIDTH = 4\n")
    mine = compose_config(FAST + [f"plugins=[{plugin}]"])
    PruningResult(method="ssr_l20", config={"cli": OmegaConf.to_container(mine, resolve=True),
                                            "code": code_identity(mine)}).save(tmp_path / "result.json")
    assert finished_before(mine, tmp_path) is not None
    plugin.write_text("WIDTH = 8\n")
    assert finished_before(mine, tmp_path) is None
    done.status = "interrupted"
    done.save(tmp_path / "result.json")
    assert finished_before(cfg, tmp_path) is None
    (tmp_path / "result.json").write_text("{")  # damaged: run again
    assert finished_before(cfg, tmp_path) is None


def test_a_run_killed_before_it_recorded_its_end_leaves_its_configuration_and_is_set_aside_by_another(
        tmp_path, monkeypatch):
    """SIGKILL, out of memory: nothing runs after it. The result.json written as the run starts
    (status running) stays: it names the configuration, so a sweep run again moves it aside when its
    job is now another configuration, and keeps it (and the checkpoints to go on from) for its own."""
    from lightning_ssr.app import cli

    class Killed(BaseException):
        """Stands for SIGKILL: no handler of the run sees it."""

    def killed(cfg, dm, output_dir, *more):
        (Path(output_dir) / "logs").mkdir()
        (Path(output_dir) / "logs" / "last.ckpt").write_text("a checkpoint")
        raise Killed

    monkeypatch.setattr(cli, "train_dense", killed)
    cfg = compose_config(FAST + ["trainer.limit_val_batches=1"])
    job = tmp_path / "sweep" / "0"
    with pytest.raises(Killed):
        run(cfg, job)
    left = PruningResult.load(job / "result.json")
    assert left.status == "running" and "killed" in left.error and "ckpt_path=" in left.error
    assert left.config["cli"] == OmegaConf.to_container(cfg, resolve=True)
    assert cli.finished_before(cfg, job) is None  # not finished: trained again
    assert cli.set_aside_other_run(cfg, job, tmp_path / "sweep", 0) is None  # its own: it stays, to go on from
    assert (job / "logs" / "last.ckpt").is_file()
    other = compose_config(FAST + ["trainer.limit_val_batches=1", "seed=7"])
    why, aside = cli.set_aside_other_run(other, job, tmp_path / "sweep", 0)
    assert why.startswith("a run (ssr_l20, running) of another configuration (it differs in seed")
    assert (aside / "logs" / "last.ckpt").is_file() and not (job / "logs").exists()
    assert "has not ended" in left.summary()


def test_a_second_ctrl_c_while_the_first_is_recorded_does_not_cut_the_record_short(tmp_path, monkeypatch):
    """Two Ctrl-C 0.02 s apart: the second one, raised while the first was being recorded, left
    result.json saying 'running' and a message that the job stopped outside training."""
    import os
    import signal
    import traceback

    from lightning_ssr.app import cli, stages

    def interrupted(cfg, dm, output_dir, *more):
        raise KeyboardInterrupt

    def second_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # delivered at once, in the middle of the recording
        return recording(*args, **kwargs)

    recording = cli.failed_result
    monkeypatch.setattr(cli, "train_dense", interrupted)
    monkeypatch.setattr(cli, "failed_result", second_ctrl_c)
    with pytest.raises(KeyboardInterrupt) as raised:
        run(compose_config(FAST), tmp_path)
    assert "interrupted" in [frame.name for frame in traceback.extract_tb(raised.value.__traceback__)]  # the first
    assert PruningResult.load(tmp_path / "result.json").status == "interrupted"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back

    # a failure being recorded when the first Ctrl-C comes: recorded whole, then the Ctrl-C is
    # raised (a sweep stops there, rather than losing it to its next job)
    def failed(cfg, dm, output_dir, *more):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "train_dense", failed)
    with pytest.raises(KeyboardInterrupt) as raised:
        run(compose_config(FAST), tmp_path / "failed")
    assert isinstance(raised.value.__context__, RuntimeError)
    recorded = PruningResult.load(tmp_path / "failed" / "result.json")
    assert recorded.status == "failed" and "boom" in recorded.error
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

    class Trainer:  # a fit interrupted by Ctrl-C, and a second one while its checkpoint is looked for
        current_epoch, global_step, checkpoint_callbacks, received_sigterm = 1, 12, [object()], False

        def fit(self, *args, **kwargs):
            raise KeyboardInterrupt

    def found(trainer):
        os.kill(os.getpid(), signal.SIGINT)
        return str(tmp_path / "epoch=0-step=10.ckpt")

    monkeypatch.setattr(stages, "last_checkpoint", found)
    with pytest.raises(stages.RunInterrupted, match=r"interrupted during the run at epoch 1 \(optimizer step 12\)") as told:
        stages.fit(Trainer(), "the run", resumable=True)
    assert told.value.checkpoint == str(tmp_path / "epoch=0-step=10.ckpt")


def test_ctrl_c_in_a_sweep_before_a_checkpoint_gives_the_command_that_runs_it_again():
    from omegaconf import OmegaConf

    from lightning_ssr.app.cli import sweep_interrupted
    from lightning_ssr.app.stages import RunInterrupted

    hydra_cfg = OmegaConf.create({"sweep": {"dir": "multirun/x"},
                                  "runtime": {"output_dir": "multirun/x/3", "config_sources": []},
                                  "job": {"num": 3, "config_name": "config"},
                                  "overrides": {"task": ["seed=3", "target.macs=0.1"], "hydra": []}})
    err = sweep_interrupted(RunInterrupted("interrupted during the dense training at epoch 2 (optimizer step 40)"),
                            hydra_cfg)
    assert str(err) == ("interrupted during the dense training at epoch 2 (optimizer step 40), in run 3 of the sweep "
                        "in multirun/x; nothing of it was kept; the sweep stopped there (runs without a result.json did not "
                        "finish). To run it again alone (in its folder, where the report finds it): lightning-ssr "
                        "seed=3 target.macs=0.1 hydra.run.dir=multirun/x/3 hydra.mode=RUN. lightning-ssr-report "
                        "multirun/x reports "
                        "the runs that finished and, for a grid sweep, gives the command of each run that never started")
    assert str(sweep_interrupted(KeyboardInterrupt(), hydra_cfg)).startswith(
        "interrupted, in run 3 of the sweep in multirun/x; the sweep stopped there")
    from lightning_ssr.app.stages import Terminated

    term = sweep_interrupted(Terminated(), hydra_cfg)  # a SIGTERM in the run's set-up: told as one ("interrupted")
    assert str(term).startswith("stopped by SIGTERM outside training, in run 3 of the sweep in multirun/x; the sweep "
                                "stopped there") and term.exit_code == 143


def test_an_interrupted_sweep_runs_record_gives_the_sweeps_advice(tmp_path):
    """The record of a sweep's run stopped by Ctrl-C kept the single run's advice ("run the same
    command with ckpt_path=...", which would give every run of the sweep that checkpoint), and the
    sweep's report showed it beside the right command (probe)."""
    from lightning_ssr.app.cli import said_in_record
    from lightning_ssr.app.stages import RunInterrupted
    from lightning_ssr.report import PruningResult

    path = tmp_path / "result.json"
    said_in_record(path, RunInterrupted("x"))  # (no record: nothing to correct)
    assert not path.exists()
    record = PruningResult(method="l1", status="interrupted",
                           error="RunInterrupted: ...; run the same command with ckpt_path=a.ckpt")
    record.save(path)
    said_in_record(path, RunInterrupted("", message="interrupted ..., in run 3 of the sweep; to go on with that run "
                                                    "alone: cmd"))
    assert PruningResult.load(path).error == ("lightning_ssr.app.stages.RunInterrupted: interrupted ..., in run 3 of "
                                              "the sweep; to go on with that run alone: cmd")
    PruningResult(method="l1", status="ok").save(path)
    said_in_record(path, RunInterrupted("y"))  # (a finished record is not touched)
    assert PruningResult.load(path).error is None


def test_the_sweep_command_keeps_the_runs_hydra_flags_but_not_the_sweeps_and_quotes_what_hydra_would_misread():
    import pickle

    from omegaconf import OmegaConf

    from lightning_ssr.app.cli import sweep_interrupted
    from lightning_ssr.app.stages import RunInterrupted

    run_dir = "multirun/x/lr=0.1,seed=3"  # a folder named by hydra.job.override_dirname
    hydra_cfg = OmegaConf.create({
        "sweep": {"dir": "multirun/x"}, "runtime": {"output_dir": run_dir, "config_sources": [
            {"path": "pkg://lightning_ssr.conf", "schema": "pkg", "provider": "main"},
            {"path": "file:///home/me/conf", "schema": "file", "provider": "command-line"}]},
        "job": {"num": 3, "config_name": "mine"},
        "overrides": {"task": ["seed=3"], "hydra": [
            "hydra.mode=MULTIRUN", "hydra.searchpath=[file://plugins]", "hydra/job_logging=disabled",
            "hydra.job.chdir=false", "hydra.sweep.dir=multirun/x", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
            "++hydra.sweeper.max_batch_size=4"]}})
    err = sweep_interrupted(RunInterrupted("interrupted during the run that prunes at epoch 4 (optimizer step 9)",
                                           "ck/epoch=3.ckpt"), hydra_cfg)
    command = re.search(r"alone \(in its folder, where the report finds it\): (.+?)\. lightning-ssr-report",
                        str(err)).group(1)
    assert shlex.split(command) == ["lightning-ssr", "--config-dir=/home/me/conf", "--config-name=mine",
                                    "hydra.searchpath=[file://plugins]", "hydra/job_logging=disabled",
                                    "hydra.job.chdir=false", "seed=3", "ckpt_path='ck/epoch=3.ckpt'",
                                    f"hydra.run.dir='{run_dir}'", "hydra.mode=RUN"]
    # whole after a pickle, as a launcher's worker process sends it back
    again = pickle.loads(pickle.dumps(err))
    assert (str(again), again.checkpoint, again.where) == (str(err), err.checkpoint, err.where)


@pytest.mark.usefixtures("sigint_kept")
def test_ctrl_c_during_the_evaluation_is_recorded_and_said(tmp_path, monkeypatch):
    from lightning_ssr.app.module import ImageClassifier
    from lightning_ssr.app.stages import RunInterrupted

    def test_step(self, batch, batch_idx):
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageClassifier, "test_step", test_step)
    overrides = FAST + [f"dense.cache_dir={tmp_path / 'cache'}"]
    # after the run that prunes: its last checkpoint, from which the same command only evaluates again
    with pytest.raises(RunInterrupted, match="^interrupted after the run that prunes had finished, during the "
                                             "evaluation or the export. The last checkpoint is .*: run the same "
                                             "command with ckpt_path=") as info:
        run(_compose(overrides), tmp_path / "run")
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "interrupted" and "interrupted after the run that prunes" in record["error"]
    monkeypatch.undo()
    again = run(_compose([*overrides, f"ckpt_path={info.value.checkpoint}"]), tmp_path / "again")
    assert again.status == "ok" and again.pruned["macs"] < again.dense["macs"]
    # before the run that prunes finished: no checkpoint of it is offered from here
    monkeypatch.setattr("lightning_ssr.app.cli.compress", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt) as info:
        run(_compose(overrides), tmp_path / "early")
    assert getattr(info.value, "checkpoint", None) is None


def test_a_compression_run_the_schedule_would_not_reach_the_prune_in_is_refused_before_training(tmp_path):
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING, check_config

    fast = FAST + [f"dense.cache_dir={tmp_path / 'cache'}", "schedule.stop_early=false"]
    with pytest.raises(ValueError, match=r"trainer.max_epochs=1 ends the compression run before its last prune, "
                                         r"due at the start of epoch 1 \(0-based\) of the schedule's 2: .* give it "
                                         r"at least 2") as info:
        run(_compose([*fast, "trainer.max_epochs=1"]), tmp_path / "run")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "cache").exists()
    # no bound (-1, with max_steps), the schedule's (0), or an early prune still possible: not refused
    for extra in (["trainer.max_epochs=-1", "+trainer.max_steps=1000"], ["trainer.max_epochs=0"]):
        assert check_config(_compose([*fast, *extra]))[0] is not None
    with pytest.warns(UserWarning, match=r"trainer.max_epochs=1 ends the compression run before its scheduled prune, "
                                         r"at the start of epoch 1 \(0-based\) of the schedule's 2: the model is pruned "
                                         r"only if ssr_l20 converges before"):
        assert check_config(_compose([*fast, "trainer.max_epochs=1", "schedule.stop_early=true"]))[0] is not None
    # not even one sparsify epoch ends before the bound: it cannot prune early either
    with pytest.raises(ValueError, match=r"trainer.max_epochs=1 ends the compression run before its last prune"):
        check_config(_compose([*fast, "trainer.max_epochs=1", "schedule.stop_early=true", "schedule.warmup_epochs=1"]))


def test_a_run_max_epochs_cuts_short_keeps_the_warning_in_the_commands_words(tmp_path):
    """Warned of at set-up in the command's terms (trainer.max_epochs), the run's result.json kept
    the callback's (Trainer(max_epochs=1), fit(ckpt_path=...)), which the command never showed."""
    import re

    from lightning_ssr.pruning import SHORT_FIT

    fast = FAST + [f"dense.cache_dir={tmp_path / 'cache'}", "trainer.max_epochs=1", "schedule.stop_early=true"]
    with pytest.warns(UserWarning, match=r"^trainer.max_epochs=1 ends the compression run"):
        result = run(_compose(fast), tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [w for w in on_disk["warnings"] if w.startswith("trainer.max_epochs=1 ends the compression run before its "
                                                           "scheduled prune")], on_disk["warnings"]
    assert not [w for w in on_disk["warnings"] if re.match(SHORT_FIT, w)] and result.warnings == on_disk["warnings"]


def test_a_run_a_bound_stops_between_its_prune_events_is_failed_and_says_how_to_go_on(tmp_path, caplog):
    """trainer.max_steps ending a run of 2 prune events after the first: status "ok", "1.4x fewer
    MACs" against a 2.5x target, the miss among the warnings only, in the callback's Python words
    (Trainer(max_epochs=...), fit(ckpt_path=...)) and naming no checkpoint (probe)."""
    fast = FAST + [f"dense.cache_dir={tmp_path / 'cache'}", "schedule.stop_early=false", "schedule.prune_events=2",
                   "schedule.epochs_between_prunes=1", "trainer.max_epochs=-1", "+trainer.max_steps=4",
                   "pruning=l1", "schedule.sparsify_epochs=0"]
    # warned at set-up, in the command's terms (the callback's Trainer(max_steps=4) and fit(ckpt_path=...) were
    # printed as the fit started, and kept in result.json)
    said = (r"^trainer.max_steps=4 ends the compression run before its last prune, due at the start of epoch 1 "
            r"\(0-based; optimizer step 8 at 8 steps per epoch\): the run ends failed, .* Leave trainer.max_steps "
            r"unset, or give it 16 for the schedule's 2 epochs$")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run(_compose(fast), tmp_path / "run")
    shown = [str(w.message) for w in caught]
    assert [m for m in shown if re.match(said, m)] and not [m for m in shown if re.match(SHORT_FIT_STEPS, m)], shown
    # nor the callback's advice as the fit ends (Trainer(max_epochs=-1, ...).fit(module, ckpt_path=...)): the error says it
    assert not [r for r in caplog.records if "Trainer(" in r.getMessage()], caplog.text
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert [w for w in on_disk["warnings"] if re.match(said, w)], on_disk["warnings"]
    assert not [w for w in on_disk["warnings"] if re.match(SHORT_FIT_STEPS, w)], on_disk["warnings"]
    assert result.status == "failed" and len(result.events) == 1 and result.pruned["macs"] < result.dense["macs"]
    assert re.search(r"^the model was pruned in 1 of its 2 prune events, short of the target \(pruned.pt holds it "
                     r"as it stands\): training ended before the prune event at the start of epoch 1; "
                     r"trainer.max_steps=4 ended it. To go on from this run, run the same command without "
                     r"trainer.max_steps=4 and trainer.max_epochs=-1 and with ckpt_path=\S+step=4\.ckpt \(saved after "
                     r"4 of the 8 training batches of epoch 0: Lightning goes on at the next epoch's start, without "
                     r"the others\): it goes on to the end of the schedule's 2 epochs$",
                     result.error), result.error  # (-1 left in the command trained on without end: review)
    assert on_disk["status"] == "failed"
    assert (tmp_path / "run" / "pruned.pt").is_file()
    # a resume bounded again before the last prune is told so in the same words, as its fit starts
    saved = re.search(r"ckpt_path=(\S+\.ckpt)", result.error).group(1)
    again = [*fast[:-4], "trainer.max_epochs=-1", "+trainer.max_steps=6", "pruning=l1", "schedule.sparsify_epochs=0",
             f"ckpt_path={saved}"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run(_compose(again), tmp_path / "resumed")
    shown = [str(w.message) for w in caught]
    assert [m for m in shown if m.startswith("trainer.max_steps=6 ends the compression run before its last prune")]
    assert not [m for m in shown if re.match(SHORT_FIT_STEPS, m)], shown
    assert resumed.status == "failed" and "trainer.max_steps=6 ended it" in resumed.error
    # once: the checkpoint's warning of max_steps=4 came back beside this run's, both reworded alike (review)
    warned = [w for w in resumed.warnings if "ends the compression run before its last prune" in w]
    assert len(warned) == 1 and warned[0].startswith("trainer.max_steps=6"), resumed.warnings


def test_a_max_steps_at_the_last_step_before_a_final_prune_is_not_warned_of():
    """A schedule that ends with its prune is reached by the last step of the epoch before it,
    which the callback lets through; the command warned all the same, asking for one step more
    (review)."""
    from lightning_ssr.app.stages import _short_steps_warning

    def said(max_steps, *extra):
        cfg = _compose(FAST + ["schedule.sparsify_epochs=2", "schedule.finetune_epochs=0",
                               f"+trainer.max_steps={max_steps}", *extra])
        return _short_steps_warning(cfg, build_pruning(cfg), 8)

    assert said(16) is None and said(40) is None
    assert re.search(r"^trainer.max_steps=15 ends the compression run .* give it 16 for the schedule's 2 epochs$",
                     said(15))
    assert said(15, "trainer.max_epochs=1") is None  # (an epochs' bound short of the prune: refused apart)


def test_a_run_whose_result_failed_exits_with_1_and_says_so(monkeypatch, capsys, tmp_path):
    from lightning_ssr.app import cli

    failed = PruningResult(method="l1", status="failed", error="the model was not pruned")
    monkeypatch.setattr(cli, "run", lambda cfg, output_dir: failed)
    monkeypatch.setattr(sys, "argv", ["lightning-ssr", f"hydra.run.dir={tmp_path}"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 1
    assert "lightning-ssr: the run failed (recorded in" in capsys.readouterr().err


def test_ctrl_c_outside_training_exits_with_130_and_a_line(monkeypatch, capsys):
    from lightning_ssr.app import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_hydra_main", interrupted)
    monkeypatch.setattr(sys, "argv", ["lightning-ssr"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 130
    assert capsys.readouterr().err.startswith("lightning-ssr: interrupted outside training")


@pytest.mark.usefixtures("sigint_kept")
@pytest.mark.parametrize("checkpointing", [True, False])
def test_an_interrupted_fit_says_what_was_kept(tmp_path, checkpointing):
    import lightning.pytorch as pl

    from lightning_ssr.app.stages import RunInterrupted, fit
    from tests.lit import TinyClassifier, loader


    class Interrupted(TinyClassifier):
        def training_step(self, batch, batch_idx):
            if self.global_step == 1:  # in the first epoch: no checkpoint yet
                raise KeyboardInterrupt
            return super().training_step(batch, batch_idx)

    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=checkpointing, default_root_dir=tmp_path)
    kept = "before its first checkpoint" if checkpointing else r"checkpointing is off \(trainer.enable_checkpointing"
    with pytest.raises(RunInterrupted, match=rf"interrupted during the run at epoch 0 \(optimizer step 1\)[,;] {kept}"):
        fit(trainer, "the run", Interrupted(), loader(), resumable=True)
    # an error of another kind passes through as it is
    with pytest.raises(SystemExit, match="3"):
        fit(pl.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, default_root_dir=tmp_path), "the run",
            type("Exits", (TinyClassifier,), {"training_step": lambda self, b, i: sys.exit(3)})(), loader())


def test_a_run_that_ends_before_its_prune_says_how_to_go_on_in_the_commands_terms(tmp_path):
    """trainer.max_epochs=1 ends the run before the prune (not refused ahead: the method may still
    converge and prune early). The message gave the library's Trainer(max_epochs=...).fit(...),
    and the run wrote a pruned.pt of the dense model."""
    cfg = _compose(FAST + ["trainer.max_epochs=1", f"dense.cache_dir={tmp_path / 'cache'}", "verbose=false"])
    with pytest.warns(UserWarning) as said:  # at set-up, before the dense training; not again by the callback
        result = run(cfg, tmp_path)
    told = [str(w.message) for w in said if "max_epochs=1" in str(w.message)]
    assert len(told) == 1 and told[0].startswith("trainer.max_epochs=1 ends the compression run before its "), told
    assert result.status == "failed" and not (tmp_path / "pruned.pt").exists()
    (saved,) = tmp_path.glob("logs/version_0/checkpoints/*.ckpt")
    assert ("at the start of epoch 1; trainer.max_epochs=1 ended it. To go on from this run, run the same command "
            f"without trainer.max_epochs=1 and with {shlex.quote(f'ckpt_path={saved}')}") in result.error
    assert result.error.endswith(": it goes on to the end of the schedule's 2 epochs")  # (an epoch's end: no more)
    assert result.pruned.get("checkpoint") is None


def test_a_latency_target_below_the_floors_is_refused_before_the_dense_model_trains(tmp_path):
    """A latency target no structure reaches was found at the first batch of the compression run,
    after the dense training, under 'the run failed'; the checks time the untrained model on the
    device the run trains on."""
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr", "data=uci_digits", "dense.epochs=1",
                           "schedule.sparsify_epochs=1", "schedule.finetune_epochs=1", "target=latency",
                           "target.latency=0.000001", "latency.batch_sizes=[]", "trainer.enable_progress_bar=false",
                           f"hydra.run.dir={tmp_path}", f"dense.cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.splitlines()[-2:]
    assert last[0].startswith("lightning-ssr: refused before training: ValueError: target latency=1e-06 ms is too "
                              "small: the channels every layer must keep")
    assert re.search(r"already give \d+\.\d{3} ms, 0\.\d{4} of the dense model's \d+\.\d{3} ms \(timed on cpu "
                     r"with \d+ torch threads: a machine other processes keep busy times slower", last[0]), last[0]
    assert last[1] == f"(recorded in {tmp_path / 'result.json'}; HYDRA_FULL_ERROR=1 shows the traceback)"
    assert PruningResult.load(tmp_path / "result.json").status == "failed"
    assert not (tmp_path / "cache").exists()  # no dense model trained


def _plugin_failing_after(folder: Path, name: str, calls: int, message: str) -> Path:
    """A plugin file registering ``name``: SSR-L2,0 whose before_optimizer_step raises
    ``RuntimeError(message)`` after ``calls`` calls (its rehearsal passes)."""
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(f"""
        from lightning_ssr.methods import register_method
        from lightning_ssr.methods.ssr import SSR

        class Failing(SSR):
            name = {name!r}

            def before_optimizer_step(self):  # (each copy the rehearsals make counts its own calls)
                self.calls = getattr(self, "calls", 0) + 1
                if self.calls > {calls}:
                    raise RuntimeError({message!r})
                super().before_optimizer_step()

        @register_method({name!r})
        def failing(**kwargs):
            return Failing(regularizer="l20", **kwargs)
        """))
    return path


def test_a_run_that_fails_after_a_checkpoint_names_it_to_go_on_from(tmp_path):
    """A method of one's own that fails in the second epoch: the message named no checkpoint to
    go on from once the bug is fixed (probe)."""
    plugin = _plugin_failing_after(tmp_path, "sixth_step_probe", 5, "boom at the sixth step")
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr", "data=uci_digits", "dense.epochs=1",
                           "schedule.sparsify_epochs=2", "schedule.finetune_epochs=1", "pruning=ssr_l20",
                           "schedule.update_every_n_steps=2", "trainer.limit_train_batches=4",
                           "pruning.name=sixth_step_probe", f"plugins=[{plugin}]",
                           "latency.batch_sizes=[]", "trainer.enable_progress_bar=false",
                           f"hydra.run.dir={tmp_path / 'run'}", f"dense.cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=300, check=False)
    saved = tmp_path / "run" / "logs" / "version_0" / "checkpoints" / "epoch=0-step=4.ckpt"
    assert proc.returncode == 1 and saved.is_file(), proc.stderr[-2000:]
    assert (f"boom at the sixth step (raised by pruning method 'sixth_step_probe' in its before_optimizer_step()) "
            f"(the fit's last checkpoint: {saved}; once the cause is fixed, the same command with "
            f"ckpt_path={saved} goes on from it)") in proc.stderr, proc.stderr[-2000:]


def test_a_run_that_fails_after_its_checks_is_one_line_without_a_traceback(tmp_path):
    """A method of one's own that fails at its second step (its rehearsal passes): Hydra printed
    19 frames of traceback above the message."""
    plugin = _plugin_failing_after(tmp_path, "second_step_probe", 1, "boom at the second step")
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr", "data=uci_digits", "dense.epochs=1",
                           "schedule.sparsify_epochs=1", "schedule.finetune_epochs=1", "pruning=ssr_l20",
                           "pruning.name=second_step_probe", f"plugins=[{plugin}]",
                           "latency.batch_sizes=[]", "trainer.enable_progress_bar=false",
                           f"hydra.run.dir={tmp_path}", f"dense.cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.splitlines()[-2:]
    assert last[0] == ("lightning-ssr: the run failed: RuntimeError: boom at the second step (raised by pruning method "
                       "'second_step_probe' in its before_optimizer_step())"), last[0]
    assert last[1] == f"(recorded in {tmp_path / 'result.json'}; HYDRA_FULL_ERROR=1 shows the traceback)"
    assert PruningResult.load(tmp_path / "result.json").status == "failed"


def test_help_names_the_command_and_shows_how_to_use_it():
    out = subprocess.run([sys.executable, "-m", "lightning_ssr.app.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert out.startswith("lightning-ssr: train the dense model")  # not Hydra's "cli is powered by Hydra."
    assert "lightning-ssr -m pruning=ssr_l20,l1 target.macs=0.1,0.05" in out and "ckpt_path=<checkpoint>" in out
    assert "pruning: bn_scale, fsm, l1, none, oneshot, random, ssl, ssr_l20, ssr_l21, taylor" in out


@pytest.mark.parametrize("choice", [None, "stdout", "disabled"])
def test_the_job_log_file_is_made_only_when_written_and_other_logging_choices_stay_whole(choice):
    # every run left an empty cli.log; the first fix merged delay into whatever job_logging was
    # chosen, and hydra/job_logging=stdout then failed at start ("Unable to configure handler 'file'")
    from hydra import compose, initialize_config_dir

    from lightning_ssr.app.cli import CONFIG_DIR

    overrides = [] if choice is None else [f"hydra/job_logging={choice}"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        logging_cfg = compose("config", overrides=overrides, return_hydra_config=True).hydra.job_logging
    handlers = logging_cfg.get("handlers") or {}
    if choice is None:
        assert handlers["file"]["delay"] is True and handlers["file"]["class"] == "logging.FileHandler"
    else:
        assert "file" not in handlers


def test_the_set_up_checks_use_the_round_to_of_the_device_the_run_trains_on(monkeypatch):
    """round_to's default is 8 on CUDA: the pre-training checks (the floors against the target, the
    dry run) take the fit's device from trainer.accelerator, not the CPU they run on."""
    import torch

    from lightning_ssr.app import stages

    assert stages._fit_device(_compose(["trainer.accelerator=gpu"])) == "cuda"
    assert stages._fit_device(_compose(["trainer.accelerator=cpu"])) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert stages._fit_device(_compose(["trainer.accelerator=auto"])) == "cuda"
    seen = []
    monkeypatch.setattr(stages, "_fit_device", lambda cfg: "cuda")
    cfg = _compose(FAST)
    callback, dm = stages.build_pruning(cfg), stages.build_data(cfg)
    lm = stages.build_module(cfg, stages.build_network(cfg, dm), dm)
    from lightning_ssr.engine import PruningEngine

    # the dry run (on a copy of the engine, set up on this CPU) rounds as the fit's device does, on the
    # groups check_target traced (not traced again)
    traced, find = [], PruningEngine._find_groups
    monkeypatch.setattr(PruningEngine, "_find_groups", lambda *a: traced.append(1) or find(*a))
    # the copies go to the fit's GPU where this process sees one (here it sees none: they stay on the CPU)
    devices, check = [], PruningEngine.check_method
    monkeypatch.setattr(PruningEngine, "check_method", lambda engine, *a: devices.append(a[-1]) or check(
        engine, *a[:-1], "cpu"))
    monkeypatch.setattr(PruningEngine, "_dry_run", lambda engine, model, example, groups, floor: seen.append(
        (dict(floor), groups)))
    stages.check_target(cfg, callback, lm, dm)
    (floor, groups), = seen
    assert floor == callback.budget.floors(groups, 8) != callback.budget.floors(groups, 1)
    assert traced == [] and devices == ["cuda:0"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    stages.check_target(cfg, callback, lm, dm)
    assert devices == ["cuda:0", "cpu"]


def test_the_checks_before_training_time_a_latency_target_only_where_the_fit_would(monkeypatch):
    """The latency set-up timed ahead on the CPU for an MPS fit, on GPU 0 for trainer.devices=[1],
    once per DDP rank (also for devices=auto on several GPUs), and again for a fit resumed past its
    prune; a fit on several GPUs was rehearsed on the CPU."""
    import torch

    from lightning_ssr.app import stages

    def preflight(*overrides):
        return stages._preflight_device(_compose(["trainer.accelerator=cpu", *overrides]))

    assert preflight() == ("cpu", True)
    assert preflight("trainer.devices=2", "trainer.strategy=ddp") == ("cpu", False)
    assert preflight("ckpt_path=/somewhere/last.ckpt") == ("cpu", False)
    assert preflight("trainer.accelerator=mps") == ("cpu", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert preflight("trainer.accelerator=gpu", "trainer.devices=[1]") == ("cuda:1", True)
    assert preflight("trainer.accelerator=gpu", "trainer.devices=auto") == ("cuda:0", True)  # (the one GPU)
    # several GPUs: rehearsed on this rank's GPU (a method that makes its tensors there), timed nowhere
    assert preflight("trainer.accelerator=gpu", "trainer.devices=2") == ("cuda:0", False)
    assert preflight("trainer.accelerator=gpu", "trainer.devices='2,3'") == ("cuda:2", False)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert preflight("trainer.accelerator=gpu", "trainer.devices=[2,3]") == ("cuda:3", False)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "1")  # (srun's ranks: no LOCAL_RANK)
    assert preflight("trainer.accelerator=gpu", "trainer.devices=2", "trainer.strategy=ddp") == ("cuda:1", False)
    monkeypatch.delenv("SLURM_LOCALID")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # auto (and -1) is every GPU: DDP, several ranks
    assert preflight("trainer.accelerator=gpu", "trainer.devices=auto") == ("cuda:0", False)
    assert preflight("trainer.accelerator=gpu", "trainer.devices=-1") == ("cuda:0", False)
    # a launcher that forks its ranks: CUDA in this process before the fork would fail the fit in every rank
    assert preflight("trainer.accelerator=gpu", "trainer.devices=2", "trainer.strategy=ddp_fork") == ("cpu", False)
    assert preflight("trainer.accelerator=gpu", "trainer.devices=2", "trainer.strategy=ddp_notebook") == ("cpu", False)
    monkeypatch.setattr(sys, "ps1", ">>> ", raising=False)  # (an interactive session: auto forks there)
    assert preflight("trainer.accelerator=gpu", "trainer.devices=2") == ("cpu", False)
    assert preflight("trainer.accelerator=gpu", "trainer.devices=1") == ("cuda:0", True)  # (one GPU: no fork)


def test_ema_decay_averages_the_run_that_prunes_and_it_ends_with_the_average(tmp_path, monkeypatch):
    from lightning.pytorch.callbacks import WeightAveraging

    from lightning_ssr.app import stages

    averaging, real_fit = {}, stages.fit

    def spy(trainer, stage, *args, **kwargs):
        averaging[stage] = [cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging)]
        return real_fit(trainer, stage, *args, **kwargs)

    monkeypatch.setattr(stages, "fit", spy)
    cfg = _compose(FAST + ["ema_decay=0.9", f"dense.cache_dir={tmp_path / 'cache'}"])
    result = run(cfg, tmp_path)
    assert result.status == "ok"
    assert averaging["the dense training"] == []  # the dense model trains without (its cache is shared)
    (ema,) = averaging["the run that prunes"]
    average = ema._average_model
    assert int(average.n_averaged) > 0  # restarted at the prune, then updated at every step after it
    pruned = read_checkpoint(tmp_path / "pruned.pt")["state_dict"]
    mine = average.module.state_dict()
    assert pruned.keys() <= mine.keys() and any(k.startswith("model.") for k in pruned)
    assert all(torch.equal(pruned[k], mine[k].to(pruned[k].device)) for k in pruned)  # the run ended with it
    # its checkpoints keep the decay (a resume with another is refused at set-up)
    (ckpt,) = sorted(tmp_path.glob("**/checkpoints/*.ckpt"))[-1:]
    assert read_checkpoint(ckpt)["callbacks"]["EMAWeightAveraging"]["decay"] == 0.9


def test_sigterm_outside_a_trainers_run_is_told_and_recorded_and_inside_one_lightning_stops_the_batch(
        tmp_path, monkeypatch, capsys):
    """Python's default ended the command at once on a SIGTERM in the set-up or the export: no word,
    no result.json. The command's handler raises there, as Ctrl-C does; in a Trainer's run it leaves
    SIGTERM to Lightning, which stops at the end of the batch, as without it."""
    import os
    import signal

    def term():
        os.kill(os.getpid(), signal.SIGTERM)

    unhandled = []  # where the command's handler is missing: noted here instead of ending pytest
    original = signal.signal(signal.SIGTERM, lambda signum, frame: unhandled.append(signum))
    try:
        _sigterm_cases(tmp_path, monkeypatch, capsys, term, unhandled)
    finally:
        signal.signal(signal.SIGTERM, original)


def _sigterm_cases(tmp_path, monkeypatch, capsys, term, unhandled):
    import signal

    from lightning_ssr.app import cli, stages
    from lightning_ssr.app.module import ImageClassifier
    from lightning_ssr.app.stages import RunInterrupted, Terminated, sigterm_raises

    before = signal.getsignal(signal.SIGTERM)
    cache = f"dense.cache_dir={tmp_path / 'cache'}"
    check = cli.check_config

    def check_then_term(*args, **kwargs):
        checked = check(*args, **kwargs)
        term()
        return checked

    monkeypatch.setattr(cli, "check_config", check_then_term)
    monkeypatch.setattr(sys, "argv", ["lightning-ssr", *FAST, cache, f"hydra.run.dir={tmp_path / 'setup'}"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 143
    assert "lightning-ssr: stopped by SIGTERM outside training" in capsys.readouterr().err
    record = json.loads((tmp_path / "setup" / "result.json").read_text())
    assert record["status"] == "interrupted" and record["error"].startswith("lightning_ssr.app.stages.Terminated")
    assert signal.getsignal(signal.SIGTERM) is before  # the handler before the command's is back
    monkeypatch.setattr(cli, "check_config", check)

    # in a Trainer's run: Lightning's stop at the end of the batch, as without the command's handler
    step = ImageClassifier.training_step

    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            term()
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "training_step", training_step)
    with sigterm_raises(), pytest.raises(RunInterrupted, match=r"stopped by SIGTERM during the dense training at "
                                                                r"epoch 0 \(optimizer step 4\)"):
        run(_compose(FAST + [cache]), tmp_path / "fit")
    monkeypatch.setattr(ImageClassifier, "training_step", step)

    # in the export, after the run that prunes: its last checkpoint, to go on from
    export = stages.export_model

    def export_then_term(*args, **kwargs):
        term()
        return export(*args, **kwargs)

    monkeypatch.setattr(cli, "export_model", export_then_term)
    with sigterm_raises(), pytest.raises(RunInterrupted, match=r"^stopped by SIGTERM after the run that prunes had "
                                                                "finished, during the evaluation or the export") as late:
        run(_compose(FAST + [cache]), tmp_path / "export")
    assert late.value.exit_code == 143 and Path(late.value.checkpoint).is_file()
    assert isinstance(late.value.__cause__, Terminated)
    assert not unhandled


def test_a_resume_with_a_trainer_setting_that_keys_the_dense_model_keeps_the_runs_dense_model(tmp_path, capsys,
                                                                                              monkeypatch):
    """A resume may change the trainer; the dense cache is keyed by it, so a resume with another
    trainer.limit_train_batches trained another dense model and compared with (and distilled from)
    it, silently. The checkpoint names its dense model; the resume takes it, or is refused before
    training where it is gone."""
    from lightning_ssr.app.stages import DENSE_MODEL_KEY

    cache = f"dense.cache_dir={tmp_path / 'cache'}"
    first = run(_compose(FAST + [cache]), tmp_path / "first")
    (dense,) = (tmp_path / "cache").glob("*.pt")
    assert first.dense["cache"]["path"] == str(dense)
    ckpt = min((tmp_path / "first").glob("logs/version_0/checkpoints/*.ckpt"))
    assert read_checkpoint(ckpt)[DENSE_MODEL_KEY] == str(dense.resolve())
    capsys.readouterr()
    from lightning_ssr.app import stages

    reads, read = [], stages.read_checkpoint
    monkeypatch.setattr(stages, "read_checkpoint", lambda path: reads.append(str(path)) or read(path))
    resumed = run(_compose(FAST + [cache, "trainer.limit_train_batches=6", f"ckpt_path={ckpt}"]), tmp_path / "second")
    assert reads.count(str(ckpt)) == 1  # (the set-up reads it; the run asks for its dense model without reading again)
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert f"Reusing the dense model the resumed run was compressed from, cached at {dense.resolve()}" in out
    assert "Training the dense model" not in out and list((tmp_path / "cache").glob("*.pt")) == [dense]
    assert resumed.status == "ok" and resumed.dense["cache"]["path"] == str(dense.resolve())
    assert resumed.dense["accuracy"] == first.dense["accuracy"]
    with pytest.raises(ValueError, match=r"^ckpt_path=.*: the checkpoint's pruning run was set up differently .*without ckpt_path\. "
                                         r"With this command: resume with the settings of the run that wrote it, or "
                                         r"run without ckpt_path, which compresses the dense model anew$"):
        run(_compose(FAST + [cache, "target.macs=0.3", f"ckpt_path={ckpt}"]), tmp_path / "other")
    # dense.cache_dir may change (another machine): the same name there, or the checkpoint's own, is found
    from lightning_ssr.app.stages import (
        REFUSED_BEFORE_TRAINING,
        build_data,
        dense_cache_path,
        resumed_dense_model,
        train_dense,
    )

    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / dense.name).write_bytes(dense.read_bytes())
    elsewhere = _compose(FAST + [f"dense.cache_dir={moved}", f"ckpt_path={ckpt}"])
    assert resumed_dense_model(elsewhere) is None and dense_cache_path(elsewhere) == moved / dense.name
    elsewhere_ckpt = tmp_path / "recorded_elsewhere.ckpt"  # (its dense model recorded in a folder now gone)
    torch.save({**read_checkpoint(ckpt), DENSE_MODEL_KEY: str(tmp_path / "gone" / dense.name)}, elsewhere_ckpt)
    other = _compose(FAST + [f"dense.cache_dir={moved}", "trainer.limit_train_batches=6",
                             f"ckpt_path={elsewhere_ckpt}"])
    assert resumed_dense_model(other) == moved / dense.name
    # only dense.cache_dir changed, to a folder that lacks it: the recorded one, not a dense model trained again
    empty = _compose(FAST + [f"dense.cache_dir={tmp_path / 'empty'}", f"ckpt_path={ckpt}"])
    assert resumed_dense_model(empty) == dense.resolve()
    capsys.readouterr()
    train_dense(empty, build_data(empty), tmp_path / "unused", dense.resolve())
    assert f"cached at {dense.resolve()} (dense.cache_dir={tmp_path / 'empty'} does not hold it)" in capsys.readouterr().out
    # one that no longer loads into the network: refused at set-up (the folder's record kept), not after it
    (moved / dense.name).write_bytes(dense.read_bytes())
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, dense)
    with pytest.raises(ValueError, match=r"the dense model .*, which the checkpoint's run was compressed from, does "
                                         r"not load into this network") as info:
        run(_compose(FAST + [cache, "trainer.limit_train_batches=6", f"ckpt_path={ckpt}"]), tmp_path / "second")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING, False)
    assert json.loads((tmp_path / "second" / "result.json").read_text())["status"] == "ok"  # (kept)
    (moved / dense.name).rename(dense)
    dense.unlink()  # gone: refused before training, not a dense model trained on other settings
    with pytest.raises(ValueError, match=r"was written by a run compressed from the dense model .*which is gone "
                                         r"\(not in dense.cache_dir=.*\), and these settings key another .*Resume "
                                         r"with the trainer settings of that run"):
        run(_compose(FAST + [cache, "trainer.limit_train_batches=6", f"ckpt_path={ckpt}"]), tmp_path / "third")
    assert not list((tmp_path / "cache").glob("*.pt"))


def test_a_resume_may_change_what_only_places_shows_or_bounds_the_run(tmp_path):
    from lightning_ssr.app.stages import RUN_SETTINGS_KEY, _check_resumed_settings, run_settings

    written = {RUN_SETTINGS_KEY: run_settings(_compose(FAST))}
    for change in ("data.num_workers=2", "data.eval_batch_size=10", "trainer.max_epochs=9", "latency.repeats=5",
                   "dense.use_cache=false", "schedule.finetune_epochs=4", "export=onnx", "verbose=false"):
        _check_resumed_settings(_compose(FAST + [change]), written)  # not refused
    _check_resumed_settings(_compose(FAST + ["seed=3"]), {})  # a checkpoint without the record: nothing to compare
    with pytest.raises(ValueError, match=r"data.batch_size: 64 -> 8"):
        _check_resumed_settings(_compose(FAST + ["data.batch_size=8"]), written)
    with pytest.raises(ValueError, match=r"seed: 0 -> 0.0"):  # (as JSON: equal in Python, not the same setting)
        _check_resumed_settings(_compose(FAST + ["seed=0.0"]), written)
    # a recipe's second data set places its files and feeds its loaders freely too
    recipe = ["+experiment=da_mnist_to_mnist_m"]
    written = {RUN_SETTINGS_KEY: run_settings(_compose(recipe))}
    _check_resumed_settings(_compose(recipe + ["adaptation.target.num_workers=2"]), written)
    # a list at the top (+tags=[a,b]) is plain data in the checkpoint: it loaded only without weights_only
    settings = run_settings(_compose(FAST + ["+tags=[a,b]"]))
    torch.save({RUN_SETTINGS_KEY: settings}, tmp_path / "record.ckpt")
    assert torch.load(tmp_path / "record.ckpt", weights_only=True)[RUN_SETTINGS_KEY]["tags"] == '["a", "b"]'


@pytest.mark.parametrize("written_with, resumed_with", [(True, False), (False, True)], ids=["dropped", "added"])
def test_a_resume_with_another_ema_decay_setting_is_refused_before_training(tmp_path, written_with, resumed_with):
    """A checkpoint of a run with ema_decay holds the average as its state_dict and the weights
    trained on as current_model_state: resumed without it, Lightning went on from the average (with
    the optimizer state of the other weights); the other way round, from the weights as the average."""
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING

    state = {"model.fc2.bias": torch.zeros(10)}
    checkpoint = {"epoch": 0, "global_step": 8, "state_dict": state, "callbacks": {},
                  "pytorch-lightning_version": "2.6.0"}
    if written_with:
        checkpoint["current_model_state"] = dict(state)
    ckpt = tmp_path / "epoch=0-step=8.ckpt"
    torch.save(checkpoint, ckpt)
    overrides = FAST + [f"ckpt_path={ckpt}", f"dense.cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(ValueError, match=r"^ckpt_path=.*epoch=0-step=8.ckpt was written by a run "
                                         r"with(out)? ema_decay.*: resume with the same ema_decay") as info:
        run(compose_config(overrides + (["ema_decay=0.999"] if resumed_with else [])), tmp_path / "run")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "cache").exists()


def test_the_checkpoint_keeps_ema_decay_and_a_resume_with_another_is_refused_before_training(tmp_path):
    """Lightning's EMAWeightAveraging keeps only its last update step: a resume with another decay
    went on averaging at another rate than the run began, without a word."""
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING, weight_averaging

    (average,) = weight_averaging(_compose(["ema_decay=0.99"]))
    assert average.state_key == "EMAWeightAveraging"  # (Lightning's own class reads its state, and back)
    assert average.state_dict() == {"latest_update_step": 0, "decay": 0.99}
    average.load_state_dict({"latest_update_step": 5})  # (one written by Lightning's own class)
    assert average.state_dict()["latest_update_step"] == 5
    state = {"model.fc2.bias": torch.zeros(10)}
    checkpoint = {"epoch": 0, "global_step": 8, "state_dict": state, "current_model_state": dict(state),
                  "callbacks": {"EMAWeightAveraging": {"latest_update_step": 8, "decay": 0.99}},
                  "pytorch-lightning_version": "2.6.0"}
    ckpt = tmp_path / "epoch=0-step=8.ckpt"
    torch.save(checkpoint, ckpt)
    overrides = FAST + [f"ckpt_path={ckpt}", f"dense.cache_dir={tmp_path / 'cache'}", "ema_decay=0.999"]
    with pytest.raises(ValueError, match=r"^ckpt_path=.*epoch=0-step=8.ckpt was written by a run with "
                                         r"ema_decay=0.99, not 0.999: resume with the same ema_decay") as info:
        run(compose_config(overrides), tmp_path / "run")
    assert getattr(info.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "cache").exists()


def test_a_loader_failing_after_sigterm_is_told_as_the_sigterm(tmp_path, monkeypatch):
    """SIGTERM sent to the process group (a scheduler's, docker stop) also ends the DataLoader's
    worker processes, and the loader fails before Lightning stops at the end of the batch: the run
    was recorded as failed, with the loader's traceback, exit code 1 and no checkpoint to go on from."""
    import os
    import signal

    from lightning_ssr.app.module import ImageClassifier
    from lightning_ssr.app.stages import RunInterrupted

    step = ImageClassifier.training_step

    def training_step(self, batch, batch_idx):
        if self.model.conv1.out_channels < 20 and self.trainer.current_epoch == 1:  # the run that prunes, epoch 1
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("DataLoader worker (pid 4242) exited unexpectedly")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ImageClassifier, "training_step", training_step)
    with pytest.raises(RunInterrupted, match=r"^stopped by SIGTERM during the run that prunes at epoch 1 .* The last "
                                             r"checkpoint is ") as info:
        run(_compose(FAST + [f"dense.cache_dir={tmp_path / 'cache'}"]), tmp_path / "run")
    assert info.value.exit_code == 143 and Path(info.value.checkpoint).is_file()
    assert "exited unexpectedly" in str(info.value.__cause__)
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert record["status"] == "interrupted" and "stopped by SIGTERM" in record["error"]


def test_under_ddp_only_rank_zero_says_what_the_dense_model_is(tmp_path, capsys, monkeypatch):
    """Every rank runs the command: 'Training the dense model ...' came once per rank."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from lightning_ssr.app.stages import build_data, train_dense

    cfg = _compose(FAST + [f"dense.cache_dir={tmp_path / 'cache'}"])
    dm = build_data(cfg)
    train_dense(cfg, dm, tmp_path)
    assert "Training the dense model" in capsys.readouterr().out
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    train_dense(cfg, dm, tmp_path)
    assert "Reusing the dense model" not in capsys.readouterr().out
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    train_dense(cfg, dm, tmp_path)
    assert "Reusing the dense model" in capsys.readouterr().out


def test_a_rank_lightning_launched_leaves_the_checks_and_hydras_own_lines_to_rank_zero(monkeypatch):
    """Lightning's DDP launcher runs the command again for each other rank, a sweep's "-m"
    included: Hydra's "Launching N jobs" and job lines came once per rank, and each rank checked
    the sweep again. Rank 0 has done both."""
    from lightning_ssr.app import cli

    seen = []
    monkeypatch.setattr(cli, "_hydra_main", lambda: seen.append(list(sys.argv[1:])))
    monkeypatch.setattr(cli, "check_sweep_runs", lambda args: seen.append("checked"))
    monkeypatch.setattr(sys, "argv", ["lightning-ssr", "-m", "seed=0,1"])
    cli.main()
    assert seen == ["checked", ["-m", "seed=0,1"]]
    seen.clear()
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(sys, "argv", ["lightning-ssr", "-m", "seed=0,1"])
    cli.main()
    assert seen == [["-m", "seed=0,1", "hydra/hydra_logging=disabled"]]
    assert _compose(["hydra/hydra_logging=disabled"]) is not None  # (a choice Hydra has)


def test_a_single_run_given_the_folder_of_another_sets_that_run_aside(tmp_path):
    """hydra.run.dir=<a finished run's folder> with another setting wrote over its result.json and
    pruned model without a word (a sweep's jobs set such a run aside): it is moved to .replaced."""
    common = [sys.executable, "-m", "lightning_ssr", *FAST, f"dense.cache_dir={tmp_path / 'cache'}",
              f"hydra.run.dir={tmp_path / 'run'}"]
    first = subprocess.run(common, capture_output=True, text=True, timeout=300, check=False)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run([*common, "target.macs=0.3"], capture_output=True, text=True, timeout=300, check=False)
    assert second.returncode == 0, second.stderr[-2000:]
    (aside,) = (tmp_path / "run" / ".replaced").iterdir()
    assert (f"lightning-ssr: {tmp_path / 'run'} held a run (ssr_l20, ok) of another configuration (it differs in "
            f"target.macs); it was moved to {aside}, not written over") in second.stderr
    moved = PruningResult.load(aside / "result.json")
    assert moved.target == {"macs": 0.2} and moved.pruned["checkpoint"] == str(aside / "pruned.pt")
    assert (aside / "pruned.pt").is_file() and (aside / "logs").is_dir()
    assert PruningResult.load(tmp_path / "run" / "result.json").target == {"macs": 0.3}


def test_a_sparsify_phase_without_an_update_is_warned_of_before_the_dense_model_trains(tmp_path, monkeypatch):
    """8 batches an epoch, an update every 25 steps, one sparsify epoch: the method never updates.
    The fit's set-up said so, after the dense model had trained; now the checks say it, once."""
    from lightning_ssr.app import cli

    cfg = _compose([o for o in FAST if not o.startswith("schedule.update_every")]
                   + ["schedule.update_every_n_steps=25", f"dense.cache_dir={tmp_path / 'cache'}"])
    said_by_then, train_dense = [], cli.train_dense

    def counted(*args, **kwargs):
        said_by_then.append(len([w for w in said if "with no multiple of 25" in str(w.message)]))
        return train_dense(*args, **kwargs)

    monkeypatch.setattr(cli, "train_dense", counted)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = run(cfg, tmp_path / "run")
    assert said_by_then == [1]
    texts = [str(w.message) for w in said if "with no multiple of 25" in str(w.message)]
    assert len(texts) == 1 and "its sparsify phase is steps 1-8 (1 epoch(s) of 8)" in texts[0]
    assert texts[0] in result.warnings


def test_a_single_runs_set_aside_moves_only_what_a_run_wrote_and_all_or_nothing(tmp_path, monkeypatch):
    """A run in a project's own folder (hydra.run.dir=.) moved the whole project (.git, plugin
    files, data) into .replaced; a move that failed half way left half the run hidden."""
    from lightning_ssr.app import cli
    from lightning_ssr.app.cli import REFUSED_MARK, set_aside_other_run
    from lightning_ssr.app.stages import started_result

    other = started_result(_compose(["data=uci_digits", "target.macs=0.1"]))
    other.status = "ok"
    cfg = _compose(["data=uci_digits", "target.macs=0.3"])

    def folder(name, *extra):
        run_dir = tmp_path / name
        (run_dir / "logs" / "version_0").mkdir(parents=True)
        (run_dir / ".hydra").mkdir()
        other.save(run_dir / "result.json")
        (run_dir / "pruned.pt").write_bytes(b"model")
        for item in extra:
            (run_dir / item).mkdir()
        return run_dir

    run_dir = folder("run")
    why, aside = set_aside_other_run(cfg, run_dir, run_dir, "run", alone=True)
    assert "of another configuration (it differs in target.macs)" in why
    assert sorted(p.name for p in aside.iterdir()) == ["logs", "pruned.pt", "result.json"]
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", ".replaced"]
    project = folder("project", ".git", "data")  # other files beside the run's: nothing is moved
    assert set_aside_other_run(cfg, project, project, "run", alone=True)[1] is None
    assert sorted(p.name for p in project.iterdir()) == [".git", ".hydra", "data", "logs", "pruned.pt", "result.json"]
    refused = folder("refused")  # a run refused before training: the new run replaces its record
    other.status, other.config[REFUSED_MARK] = "failed", True
    other.save(refused / "result.json")
    assert set_aside_other_run(cfg, refused, refused, "run", alone=True) is None
    other.status = "ok"
    del other.config[REFUSED_MARK]
    half = folder("half")
    rename = Path.rename

    def failing(self, target):
        if self.name == "result.json":
            raise PermissionError("not this one")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(PermissionError):
        set_aside_other_run(cfg, half, half, "run", alone=True)
    monkeypatch.undo()
    assert sorted(p.name for p in half.iterdir()) == [".hydra", ".replaced", "logs", "pruned.pt", "result.json"]
    assert list((half / ".replaced").iterdir()) == []
    # a Ctrl-C once the move is made (as the hidden folder takes its name, or as the record is rewritten
    # for it): the move is put back, not left half told, the record as it was (review)
    for when in ("rename", "rehome"):
        late = folder(f"late_{when}")
        record = (late / "result.json").read_bytes()

        def interrupted(*args, _when=when, _original=rename if when == "rename" else cli._rehome):
            out = _original(*args)
            if _when == "rehome" or args[0].parent.name == ".replaced":
                os.kill(os.getpid(), signal.SIGINT)
            return out

        monkeypatch.setattr(Path, "rename", interrupted) if when == "rename" else monkeypatch.setattr(
            cli, "_rehome", interrupted)
        with pytest.raises(KeyboardInterrupt):
            set_aside_other_run(cfg, late, late, "run", alone=True)
        monkeypatch.undo()
        assert sorted(p.name for p in late.iterdir()) == [".hydra", "logs", "pruned.pt", "result.json"], when
        assert (late / "result.json").read_bytes() == record


def test_a_ctrl_c_before_training_is_a_record_a_later_refusal_replaces(tmp_path, monkeypatch):
    """A Ctrl-C during the checks (a plugin importing, here) is stopped before training: its record
    is marked so, and a later run refused before training records its own error over it (it was
    kept, and the refusal said 'still records the run that was there before')."""
    from lightning_ssr.app import cli
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING

    def interrupted(paths):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_plugins", interrupted)
    with pytest.raises(KeyboardInterrupt) as info:
        run(_compose(["data=uci_digits"]), tmp_path)
    assert getattr(info.value, REFUSED_BEFORE_TRAINING, False)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["status"] == "interrupted" and record["config"][cli.REFUSED_MARK] is True
    assert not cli._worth_keeping((tmp_path / "result.json").read_bytes())
    monkeypatch.undo()
    with pytest.raises(ValueError, match="target macs") as info:
        run(_compose(["data=uci_digits", f"dense.cache_dir={tmp_path / 'cache'}", "target.macs=0"]), tmp_path)
    assert getattr(info.value, cli.KEPT_RECORD, None) is None
    assert "target macs" in json.loads((tmp_path / "result.json").read_text())["error"]
    record["config"][cli.REFUSED_MARK] = False  # (interrupted in training: kept)
    assert cli._worth_keeping(json.dumps(record).encode())


def test_the_readmes_configuration_table_names_every_key_of_each_pruning_config():
    """README's `pruning` row left out `ramp` of ssr_l20 and ssr_l21, which the CLI's own refusal of
    an unknown key lists (probe)."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    (row,) = [line for line in (root / "README.md").read_text().splitlines() if line.startswith("| `pruning` |")]
    choices, keys_column = row.split(" | ")[1:3]
    for path in sorted((root / "conf" / "pruning").glob("*.yaml")):
        keys = set(yaml.safe_load(path.read_text()) or {}) - {"name", "defaults", "ignored_layers"}
        assert f"`{path.stem}`" in choices, path.stem
        if not keys:
            continue
        # the method's own entry, "`name`: `key`, ...;" (ssr_l21 shares ssr_l20's: "`ssr_l20`, `ssr_l21`: ...")
        found = re.search(rf"`{path.stem}`(?:, `\w+`)*: ([^;|]*)", keys_column)
        assert found, path.stem
        entry = found.group(1)
        missing = sorted(k for k in keys if f"`{k}`" not in entry)
        assert not missing, (path.stem, missing)


def test_a_moved_records_paths_follow_it_the_checkpoint_it_resumed_from_too(tmp_path):
    """A finished sweep run moved from job 1's folder to job 0's had its pruned model's path
    updated, but its config.cli.ckpt_path still named the old folder, which no longer exists (probe)."""
    from lightning_ssr.app import cli

    old, folder = tmp_path / "sw" / "1", tmp_path / "sw" / "0"
    folder.mkdir(parents=True)
    PruningResult(method="l1", config={"cli": {"ckpt_path": str(old / "checkpoints" / "last.ckpt"), "seed": 0,
                                               "dense": {"cache_dir": str(tmp_path / "cache")}}},
                  pruned={"checkpoint": str(old / "pruned.pt")}).save(folder / "result.json")
    moved = cli._rehome(folder, old)
    assert moved.pruned["checkpoint"] == str(folder / "pruned.pt")
    assert moved.config["cli"] == {"ckpt_path": str(folder / "checkpoints" / "last.ckpt"), "seed": 0,
                                   "dense": {"cache_dir": str(tmp_path / "cache")}}  # (what lay elsewhere stays)
    assert PruningResult.load(folder / "result.json").config["cli"] == moved.config["cli"]


def test_under_ddp_rank_zero_alone_times_the_final_models(monkeypatch, tmp_path):
    """Every rank timed the dense and the pruned model at the end, at the same moment: rank 0's
    figures, the ones written, ran a third slower than a single process's (probe). The other
    ranks time nothing."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from lightning_ssr.app.cli import compose_config
    from lightning_ssr.app.stages import build_data, build_network, evaluate

    cfg = compose_config(["data=uci_digits", "latency.batch_sizes=[1]", "latency.repeats=3",
                          "trainer.enable_progress_bar=false", f"dense.cache_dir={tmp_path}"])
    dm = build_data(cfg)
    net = build_network(cfg, dm)
    known = {"accuracy": 0.5, "val_accuracy": 0.5}
    monkeypatch.setattr("lightning_ssr.app.stages.accuracy", lambda cfg, model, dm: known)
    out = evaluate(cfg, dm, net, net, known)
    assert set(out["dense"]["latency_ms"]) == set(out["pruned"]["latency_ms"]) == {"batch_1"}
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    out = evaluate(cfg, dm, net, net, known)
    assert out["dense"]["latency_ms"] == out["pruned"]["latency_ms"] == out["speedup"] == {}


def test_an_evaluation_fraction_of_less_than_one_batch_is_refused_before_training(tmp_path):
    """trainer.limit_test_batches=0.5 of data=uci_digits' single test batch: Lightning refused it
    when the test began, after every epoch trained, and the run was lost (probe); 0.5 of the
    validation split, in the dense training's first validation."""
    from lightning_ssr.app.cli import compose_config
    from lightning_ssr.app.stages import check_config

    def check(*overrides):
        check_config(compose_config(["data=uci_digits", f"dense.cache_dir={tmp_path}", *overrides]))

    with pytest.raises(ValueError, match=r"^trainer.limit_test_batches=0.5 leaves no batch of the test split, which "
                                         r"is 1 batch of data.eval_batch_size=1000: give 1.0 \(the whole split\), a "
                                         r"number of batches \(trainer.limit_test_batches=1\)"):
        check("trainer.limit_test_batches=0.5")
    with pytest.raises(ValueError, match=r"^trainer.limit_val_batches=0.3 leaves no batch of the validation split, "
                                         r"which is 2 batches of data.eval_batch_size=100: give at least 0.5 of it"):
        check("trainer.limit_val_batches=0.3", "data.eval_batch_size=100")
    check("trainer.limit_val_batches=0.5", "data.eval_batch_size=100", "trainer.limit_test_batches=1.0")
    with pytest.raises(ValueError, match=r"give at least 0.334 of it"):  # (rounded up: 0.333 of 3 batches is none)
        check("trainer.limit_val_batches=0.2", "data.eval_batch_size=60")
    check("trainer.limit_val_batches=0.334", "data.eval_batch_size=60")
    # a recipe's second data set too: the target's single test batch, after the source-only model trained (review)
    from lightning_ssr.app.recipes.adaptation import run_adaptation

    cfg = compose_config(["+experiment=da_mnist_to_digits", "trainer.limit_test_batches=0.5",
                          f"dense.cache_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"^trainer.limit_test_batches=0.5 leaves no batch of the test split of "
                                         r"adaptation.target, which is 1 batch of adaptation.target.eval_batch_size"):
        run_adaptation(cfg, tmp_path / "run")
    assert not list(tmp_path.glob("*.pt"))  # (nothing trained)


def test_a_config_of_two_recipes_is_refused_and_recorded_as_refused(tmp_path):
    """Two experiments at once failed outside the record: result.json kept 'running', with the advice
    to resume from a checkpoint, and the console said the run failed (probe)."""
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING

    cfg = _compose(["+experiment=[transfer_fmnist_to_mnist,da_mnist_to_digits]", f"dense.cache_dir={tmp_path / 'c'}"])
    with pytest.raises(ValueError, match=r"several recipes \['adaptation', 'transfer'\]; a job runs one: give one "
                                         r"experiment alone \(\+experiment=<name>\)") as info:
        run(cfg, tmp_path)
    assert getattr(info.value, REFUSED_BEFORE_TRAINING)
    record = PruningResult.load(tmp_path / "result.json")
    assert record.status == "failed" and "several recipes" in record.error and not (tmp_path / "c").exists()
