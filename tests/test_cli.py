import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, InstantiationException

from lightning_ssr.cli import CONFIG_DIR, run

FAST = [
    "data=uci_digits",
    "dense.epochs=1",
    "schedule.admm_epochs=1",
    "schedule.finetune_epochs=1",
    "schedule.update_every_n_steps=5",
    "pruning.flops_budget=0.2",
    "latency.repeats=3",
    "trainer.enable_progress_bar=false",
]


def _compose(overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def test_default_config_composes_with_every_group():
    cfg = _compose([])
    assert cfg.model.name == "lenet5"
    assert cfg.pruning.regularizer == "l20"
    assert set(cfg) >= {"model", "data", "pruning", "schedule", "trainer", "module", "dense", "seed"}


def test_end_to_end_run_writes_result_json_and_reuses_the_dense_cache(tmp_path):
    cfg = _compose(FAST + [f"dense.cache_dir={tmp_path / 'cache'}"])
    result = run(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk.keys() >= {"dense", "pruned", "layers", "latency_ms", "config", "wall_time_s"}
    for key in ("dense", "pruned"):
        assert on_disk[key].keys() >= {"accuracy", "flops", "params"}
        assert 0.0 <= on_disk[key]["accuracy"] <= 1.0
    assert on_disk["pruned"]["flops"] <= 0.2 * on_disk["dense"]["flops"]
    assert {layer["name"] for layer in on_disk["layers"]} == {"conv1", "conv2", "fc1", "fc2"}
    assert set(on_disk["latency_ms"]["dense"]) == {"batch_1", "batch_256"}
    assert not result["dense_cache"]["reused"]
    again = run(cfg, tmp_path)
    assert again["dense_cache"]["reused"]
    assert again["dense"]["accuracy"] == result["dense"]["accuracy"]


def test_export_onnx_at_the_end_of_a_run(tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is a test dependency (pip install '.[dev]')")
    cfg = _compose(FAST + ["export=onnx", f"dense.cache_dir={tmp_path / 'cache'}"])
    result = run(cfg, tmp_path)
    assert (tmp_path / "pruned.onnx").is_file()
    assert result["export"]["onnxruntime_max_abs_diff"] <= 1e-4


def test_a_fresh_run_is_reproducible(tmp_path):
    """Same seed, no cache: the dense model (its initialization included) and the result repeat."""
    first = run(_compose(FAST + [f"dense.cache_dir={tmp_path / 'a'}"]), tmp_path / "a")
    second = run(_compose(FAST + [f"dense.cache_dir={tmp_path / 'b'}"]), tmp_path / "b")
    assert not first["dense_cache"]["reused"] and not second["dense_cache"]["reused"]
    assert first["dense"]["accuracy"] == second["dense"]["accuracy"]
    assert first["pruned"]["accuracy"] == second["pruned"]["accuracy"]
    assert first["plan"] == second["plan"]


def test_pruning_none_is_the_equal_budget_dense_baseline(tmp_path):
    overrides = [o for o in FAST if not o.startswith("pruning.")]
    cfg = _compose(overrides + ["pruning=none", f"dense.cache_dir={tmp_path}"])
    result = run(cfg, tmp_path)
    assert result["pruned"]["flops"] == result["dense"]["flops"]
    assert result["plan"] is None


def test_unknown_key_fails_with_hydras_error():
    with pytest.raises(ConfigCompositionException, match="Could not override 'pruning.lamda'"):
        _compose(["pruning.lamda=0.1"])


def test_unknown_model_fails_with_hydras_error():
    with pytest.raises(ConfigCompositionException, match="model/resnet9000"):
        _compose(["model=resnet9000"])


@pytest.mark.parametrize("overrides,match", [
    (["pruning=ssr_l21", "pruning.lam=-1"], "lam must be a finite number >= 0"),
    (["pruning.flops_budget=1.5"], r"flops_budget .* \(0, 1\]"),
    (["schedule.admm_epochs=0"], "admm_epochs"),
    (["export=tflite"], "export must be null or one of"),
])
def test_bad_values_fail_before_training(tmp_path, overrides, match):
    cfg = _compose(overrides)
    with pytest.raises((InstantiationException, ValueError), match=match):
        run(cfg, tmp_path)
    assert not (tmp_path / "dense").exists()


def test_unknown_model_name_fails_before_training(tmp_path):
    cfg = _compose(["model.name=alexnet9000", "data=uci_digits"])
    with pytest.raises(InstantiationException, match="unknown model 'alexnet9000'; available"):
        run(cfg, tmp_path)


def test_console_entry_point_reports_bad_keys():
    proc = subprocess.run([sys.executable, "-m", "lightning_ssr", "nonsense_key=1"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode != 0
    assert "nonsense_key" in proc.stderr
