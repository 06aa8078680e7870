"""A method added from one file outside the package, with its own config, runs through the
command: no file of the project is touched."""

import json
import subprocess
import sys
import textwrap

METHOD = '''
"""A pruning method outside lightning_ssr: keep the first channels of every layer."""
import torch

from lightning_ssr.methods import PruningMethod, register_method


@register_method("first_channels")
class FirstChannels(PruningMethod):
    """Keep each layer's first channels (a plugin's example)."""

    name = "first_channels"

    def select(self, keep):
        masks = {}
        for g in self.context.groups:
            m = torch.zeros(g.size, dtype=torch.bool)
            m[: keep[g.name]] = True
            masks[g.name] = m
        return masks
'''

CONFIG = '''
# the plugin's config, found through hydra.searchpath
defaults:
  - override /schedule@_global_.schedule: oneshot
  - _self_

name: first_channels
ignored_layers: []
'''


def test_a_method_from_one_file_outside_the_package_runs_through_the_command(tmp_path):
    plugin = tmp_path / "plugin"
    (plugin / "conf" / "pruning").mkdir(parents=True)
    (plugin / "first_channels.py").write_text(textwrap.dedent(METHOD))
    (plugin / "conf" / "pruning" / "first_channels.yaml").write_text(textwrap.dedent(CONFIG))
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "lightning_ssr.app.cli", "pruning=first_channels",
           f"plugins=[{plugin / 'first_channels.py'}]", f"hydra.searchpath=[file://{plugin / 'conf'}]",
           "data=uci_digits", "dense.epochs=1", f"dense.cache_dir={tmp_path / 'dense'}", "target.macs=0.5",
           "schedule.finetune_epochs=1", "trainer.limit_train_batches=3", "trainer.enable_progress_bar=false",
           "latency.batch_sizes=[]", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["method"] == "first_channels"
    assert result["pruned"]["macs"] <= 0.5 * result["dense"]["macs"]
    assert all(group["kept"] == list(range(len(group["kept"]))) for group in result["plan"]["groups"])


def test_a_plugin_that_cannot_be_loaded_is_named(tmp_path):
    import pytest

    from lightning_ssr.app.cli import load_plugins
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING

    with pytest.raises(FileNotFoundError, match="plugins: no file") as err:
        load_plugins([str(tmp_path / "missing.py")])
    assert getattr(err.value, REFUSED_BEFORE_TRAINING)  # one line, not a traceback
    with pytest.raises(ModuleNotFoundError, match="plugins: cannot import 'no_such_module_xyz'") as err:
        load_plugins(["no_such_module_xyz"])
    assert getattr(err.value, REFUSED_BEFORE_TRAINING)


def test_a_plugin_named_like_a_file_of_this_folder_is_pointed_at_it_and_its_own_errors_keep_theirs(
        tmp_path, monkeypatch):
    import pytest

    from lightning_ssr.app.cli import load_plugins
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING

    # run from the plugin's folder, plugins=[fpgm]: the current folder is not on sys.path
    (tmp_path / "fpgm_probe_xyz.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModuleNotFoundError, match=r"\(a file in this folder: plugins=\[fpgm_probe_xyz.py\]\)"):
        load_plugins(["fpgm_probe_xyz"])
    # the plugin itself imports what is not installed: its own error, and a note that names the plugin
    with pytest.raises(ModuleNotFoundError, match="No module named 'no_such_dependency_xyz'") as err:
        load_plugins(["fpgm_probe_xyz.py"])
    assert getattr(err.value, REFUSED_BEFORE_TRAINING)  # (nothing ran: refused, not "the run failed")
    said = (f"(raised while loading the plugin 'fpgm_probe_xyz.py', at {tmp_path / 'fpgm_probe_xyz.py'}, line 1: "
            "import no_such_dependency_xyz: mend it there, or leave it out of plugins)")
    assert err.value.__notes__ == [said]
    # an error raised in a function the plugin calls: the plugin's line that called it, not torch's
    (tmp_path / "calls_probe_xyz.py").write_text("import torch\n\nW = torch.zeros(2, 3) @ torch.zeros(2, 3)\n")
    with pytest.raises(RuntimeError, match="cannot be multiplied") as err:
        load_plugins(["calls_probe_xyz.py"])
    assert f"at {tmp_path / 'calls_probe_xyz.py'}, line 3: W = torch.zeros" in err.value.__notes__[0]
    # a method registered under a built-in's name: the message named the method, not the file
    (tmp_path / "clash_probe_xyz.py").write_text(
        "from lightning_ssr.methods import PruningMethod, register_method\n\n"
        "@register_method('taylor')\nclass Mine(PruningMethod):\n    name = 'taylor'\n")
    with pytest.raises(ValueError, match="'taylor'") as err:
        load_plugins(["clash_probe_xyz.py"])
    assert "'clash_probe_xyz.py'" in err.value.__notes__[0]


def test_a_method_of_your_own_that_fails_its_rehearsal_is_refused_before_the_dense_model_trains(tmp_path,
                                                                                               monkeypatch, request):
    """Its select() gives masks of the wrong size: refused only at the fit's set-up, after the
    dense model had trained (20 epochs by default), under a message that said nothing was trained."""
    import pytest

    from lightning_ssr.app.cli import compose_config, run
    from lightning_ssr.app.stages import REFUSED_BEFORE_TRAINING
    from lightning_ssr.methods import base

    # the plugin registers its method in this process: the registry and the modules come back as they were
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    for name in ("lightning_ssr_plugin_wrong_masks_probe", "wrong_masks_probe"):
        request.addfinalizer(lambda name=name: sys.modules.pop(name, None))
    plugin = tmp_path / "wrong_masks_probe.py"
    plugin.write_text(textwrap.dedent("""
        import torch
        from lightning_ssr.methods import PruningMethod, register_method

        @register_method("wrong_masks_probe")
        class WrongMasks(PruningMethod):
            name = "wrong_masks_probe"

            def select(self, keep):
                return {g.name: torch.ones(g.size - 1, dtype=torch.bool) for g in self.context.groups}
        """))
    cfg = compose_config(["data=uci_digits", "pruning=l1", "pruning.name=wrong_masks_probe", f"plugins=[{plugin}]",
                          f"dense.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(RuntimeError, match=r"'wrong_masks_probe' failed in select\(\), rehearsed at set-up .* "
                                           r"returned a mask of \d+ entries .* This fit trained nothing") as err:
        run(cfg, tmp_path / "run")
    assert getattr(err.value, REFUSED_BEFORE_TRAINING) and not (tmp_path / "cache").exists()
    assert "wrong_masks_probe" in sys.modules  # (what the finalizer takes away)
