"""The one-command GPU check, checked on the CPU: its refusal without a GPU, its arguments, and
the JSON it writes (its parts run at tiny sizes with --smoke)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import gpu

REPO = Path(__file__).resolve().parent.parent
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")


@needs_no_gpu
def test_the_script_says_there_is_no_gpu_and_changes_nothing(tmp_path):
    proc = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, check=False, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == gpu.NO_GPU
    assert "no CUDA GPU is visible to torch" in proc.stderr and "nothing was run" in proc.stderr


def test_the_script_names_an_interpreter_without_torch_and_passes_smoke_on(tmp_path):
    """With the default python3, which has no torch here, it said no GPU was visible; its own
    advice, --smoke, still stopped at the GPU check (probe)."""
    script = str(REPO / "scripts" / "gpu_check.sh")
    proc = subprocess.run(["bash", script], capture_output=True, text=True, timeout=120, check=False,
                          env={"PYTHON": "/bin/false", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "/bin/false cannot import torch" in proc.stderr
    proc = subprocess.run(["bash", script, "--smoke", "--parts", "nothing"], capture_output=True, text=True,
                          timeout=120, check=False, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert "invalid choice: 'nothing'" in proc.stderr  # (benchmarks.gpu read its arguments: the GPU check let it)


@needs_no_gpu
def test_the_module_refuses_without_a_gpu_and_writes_nothing(tmp_path, capsys):
    assert gpu.main(["--out", str(tmp_path / "gpu.json")]) == gpu.NO_GPU
    assert "no CUDA GPU is visible" in capsys.readouterr().err and not (tmp_path / "gpu.json").exists()


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        gpu.main(["--parts", "everything"])


def test_a_smoke_run_writes_every_part_it_ran(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--smoke", "--parts", "overhead", "speedup", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["benchmark"] == "gpu" and data["smoke"] is True and data["device"] == "cpu"
    assert data["command"] == f"python -m benchmarks.gpu --smoke --parts overhead speedup --out {out}"
    assert set(data["parts"]) == {"overhead", "speedup"} and set(data["seconds"]) == {"overhead", "speedup"}
    (row,) = data["parts"]["overhead"]
    assert row["ratio"] > 0 and {"setup_s", "dry_run_s", "rebuild_s", "update_ms_per_step"} <= set(row)
    speed = data["parts"]["speedup"]
    assert [r["round_to"] for r in speed] == [1, 8]
    for r in speed:
        for label in ("fp32", "bf16"):
            s = r[label]
            assert s["speedup"] == pytest.approx(s["dense_ms"] / s["pruned_ms"])
            assert s["speedup_over_macs_reduction"] == pytest.approx(s["speedup"] / r["macs_reduction"])


def test_a_part_that_would_start_after_the_budget_is_skipped_and_said(tmp_path):
    out = tmp_path / "gpu.json"
    assert gpu.main(["--smoke", "--parts", "speedup", "tests", "--budget", "0", "--out", str(out)]) == 0
    parts = json.loads(out.read_text())["parts"]
    assert "time budget" in parts["tests"]["skipped"]
