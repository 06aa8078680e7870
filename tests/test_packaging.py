"""The package installs with its Hydra configuration: a wheel holds ``conf/`` as
``lightning_ssr.conf``, and the installed ``lightning-ssr`` runs from any directory.

The wheel is built offline (``--no-build-isolation``: the venv's setuptools) from a copy of
the checkout, so the build writes nothing into the repository.
"""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SKIP = (".git", ".venv", "outputs", "multirun", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", ".ruff_cache", "lightning_logs", "tests", "benchmarks")
TINY = [
    "data=uci_digits",
    "dense.epochs=1",
    "dense.use_cache=false",
    "schedule.sparsify_epochs=1",
    "schedule.finetune_epochs=1",
    "schedule.update_every_n_steps=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "latency.repeats=3",
    "latency.batch_sizes=[1]",
]


def _pip(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=True,
                          timeout=300, **kwargs)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*SKIP))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q", "-w", str(tmp / "dist"), str(src))
    (built,) = (tmp / "dist").glob("lightning_ssr-*.whl")
    return built


def _expected_packages() -> set[str]:
    """Every package of the source tree, under the names a wheel must install it as."""
    out = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "lightning_ssr").rglob("__init__.py")}
    conf = ROOT / "conf"
    out |= {".".join(("lightning_ssr", "conf", *d.relative_to(conf).parts)) for d in [conf, *conf.rglob("*")]
            if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.yaml"))}
    return out


def test_the_wheel_holds_every_package_and_every_config_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = sorted(p.relative_to(ROOT / "conf").as_posix() for p in (ROOT / "conf").rglob("*.yaml"))
    assert {"config.yaml", "pruning/ssr_l20.yaml", "pruning/oneshot.yaml", "target/macs.yaml"} <= set(yamls)
    missing = [y for y in yamls if f"lightning_ssr/conf/{y}" not in names]
    assert not missing, f"config files missing from the wheel: {missing}"
    packages = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith((".py", ".yaml"))}
    missing = sorted(_expected_packages() - packages)
    assert not missing, f"packages missing from the wheel (add them to setup.cfg [options] packages): {missing}"
    assert not any(n.startswith("conf/") for n in names), "conf/ must install as lightning_ssr/conf/, not at the top"


def test_the_installed_command_runs_from_any_directory(wheel, tmp_path):
    site = tmp_path / "site"
    _pip("install", "--no-deps", "--no-cache-dir", "-q", "--target", str(site), str(wheel))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    # the installed copy (not the checkout) is imported, configuration included
    code = ("import lightning_ssr, lightning_ssr.conf, lightning_ssr.app.cli as c; "
            "print(lightning_ssr.__file__); print(lightning_ssr.conf.__file__); print(c.CONFIG_DIR)")
    where = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env, capture_output=True, text=True,
                           check=True, timeout=120)
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout

    command = [str(site / "bin" / "lightning-ssr")] if (site / "bin" / "lightning-ssr").is_file() \
        else [sys.executable, "-m", "lightning_ssr"]
    overrides = TINY + [f"dense.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run(command + overrides, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["method"] == "ssr_l20" and result["status"] == "ok"
    assert (tmp_path / "run" / "pruned.pt").is_file()
    assert "ssr_l20:" in proc.stdout and "result.json" in proc.stdout
