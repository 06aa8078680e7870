"""strategy="ddp" with 2 CPU processes (gloo): same decisions on every rank, a re-wrapped DDP
after the mid-fit rebuild, and the same result as one process with the same global batch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).with_name("ddp_job.py")


def _run(out: Path, devices: int, kind: str, *extra: str) -> subprocess.CompletedProcess:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, str(JOB), str(out), str(devices), kind, *extra],
                          capture_output=True, text=True, timeout=300, check=False)


def _load(out: Path, rank: int) -> dict:
    return torch.load(out / f"rank{rank}.pt", weights_only=True)


@pytest.fixture(scope="module")
def lenet_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("ddp")
    for devices in (1, 2):
        proc = _run(base / f"d{devices}", devices, "lenet")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return base


def test_ranks_end_identical_and_match_a_single_process_run(lenet_runs):
    r0, r1 = _load(lenet_runs / "d2", 0), _load(lenet_runs / "d2", 1)
    single = _load(lenet_runs / "d1", 0)
    assert r0["world_size"] == 2
    assert r0["plan"] == r1["plan"] == single["plan"]
    assert r0["events"] == r1["events"] == single["events"] and len(r0["events"]) == 1
    for key, value in r0["state_dict"].items():
        assert torch.equal(value, r1["state_dict"][key]), key
        # Same global batch of 16: the gradients averaged over 2 x 8 instead of 16 differ only by the
        # order of their sums. In float32 that drifted by up to 4.3e-5 over the 20 steps on one host
        # and 1e-5 on another; the runs are in float64, whose unit round-off is 2^29 (5e8) times
        # smaller, so the same growth gives about 1e-13. A wrong average or a different decision
        # moves weights by more than 1e-4; 1e-9 sits between the two with orders to spare.
        assert value.dtype == torch.float64
        assert torch.allclose(value, single["state_dict"][key], rtol=0, atol=1e-9), key
    assert r0["state_dict"]["backbone.conv1.weight"].shape[0] < 20  # it was pruned


def test_ddp_with_batchnorm_prunes_identically_on_every_rank(tmp_path):
    proc = _run(tmp_path, 2, "residual")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _load(tmp_path, 0), _load(tmp_path, 1)
    assert r0["plan"] == r1["plan"]
    for key, value in r0["state_dict"].items():
        if "running_" in key or "num_batches_tracked" in key:
            continue  # BN statistics are per rank (SyncBatchNorm needs GPUs)
        assert torch.equal(value, r1["state_dict"][key]), key


def test_a_latency_target_is_timed_on_rank_zero_for_every_rank(tmp_path):
    """Each rank timed the pruned model itself, at the same moment as its sibling: their events
    held other measurements, and each blamed the other rank's load ("crowded") on the machine
    (probe). Rank 0 times while the others wait, and every rank records its figures."""
    proc = _run(tmp_path, 2, "latency")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _load(tmp_path, 0), _load(tmp_path, 1)
    assert r0["events"] == r1["events"] and "latency_measured_ms" in r0["events"][0]


def test_the_latency_table_a_method_steers_by_is_rank_zeros_for_every_rank(tmp_path):
    """With the structure learned by the method, each rank timed its own per-layer table while the
    other timed its own: their dense times differed by a fifth, each steered by another table, and
    a refusal came on one rank alone (probe). Rank 0 times it; every rank steers by it."""
    proc = _run(tmp_path, 2, "method_latency")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = _load(tmp_path, 0), _load(tmp_path, 1)
    assert r0["table_dense_ms"] is not None and r0["table_dense_ms"] == r1["table_dense_ms"]
    assert r0["plan"] == r1["plan"] and r0["events"] == r1["events"]


def test_a_failure_after_the_rebuild_on_one_rank_stops_every_rank(tmp_path):
    """after_rebuild failed on rank 1 only: its recovery re-wrapped DDP (a collective) alone while
    rank 0 trained on, and the job hung without a word (probe). Every rank learns of it at the next
    settle point, restores its model and raises: rank 1 its own error, rank 0 that another rank failed."""
    proc = _run(tmp_path, 2, "fails_on_rank_1")
    assert proc.returncode != 0
    said = proc.stdout + proc.stderr
    assert "failed after the rebuild (RuntimeError: a failure on rank 1 only)" in said, said[-3000:]
    assert "failed after the rebuild (another rank failed: its error is in its own output)" in said, said[-3000:]
    assert not list(tmp_path.glob("rank*.pt"))


@pytest.mark.parametrize("how", ["--by-object", "--by-name"])
def test_ddp_spawn_is_refused_with_a_reason(tmp_path, how):
    """A method given by name made the callback unpicklable (a lambda), so the spawn failed with
    "Can't pickle local object" before the refusal could say why and what to use."""
    proc = _run(tmp_path, 2, "lenet", "--spawn", how)
    assert proc.returncode != 0
    assert "start_method='spawn'" in proc.stderr and "strategy='ddp'" in proc.stderr


def test_the_cli_job_runs_under_ddp_and_rank_zero_reports(tmp_path):
    """lightning-ssr trainer.strategy=ddp trainer.devices=2 on CPU: one result.json, one summary, one
    table of all prune events and each warning once (each rank printed them: probe)."""
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ssr.app.cli", "trainer.strategy=ddp", "trainer.devices=2", "data=uci_digits",
         "dense.epochs=1", f"dense.cache_dir={tmp_path / 'dense'}", "schedule.sparsify_epochs=1",
         "schedule.finetune_epochs=1", "schedule.prune_events=2", "trainer.limit_train_batches=4",
         "trainer.enable_progress_bar=false", "latency.batch_sizes=[]", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1 and proc.stdout.count("fewer MACs, ") >= 1
    assert proc.stdout.count("dense -> pruned, all prune events") == 1
    # (4 steps an epoch: the method's update every 25 steps never runs, which it warns of)
    assert proc.stderr.count("warning: pruning method 'ssr_l20' updates every 25 optimizer steps") == 1
    result = json.loads((run_dir / "result.json").read_text())
    assert result["status"] == "ok" and result["pruned"]["macs"] < result["dense"]["macs"]
    assert result["config"]["cli"]["trainer"]["strategy"] == "ddp"
    assert (run_dir / "pruned.pt").is_file()


FAILS_ON_RANK_1 = """
import torch.distributed as dist
from lightning_ssr.methods.oneshot import L1

_select = L1.select


def select(self, keep):
    if dist.is_initialized() and dist.get_rank() == 1:
        raise RuntimeError("a failure on rank 1 only")
    return _select(self, keep)


L1.select = select
"""


def test_the_cli_says_the_error_of_the_rank_that_failed(tmp_path):
    """Rank 1 failed alone: the command printed rank 0's error only (another rank failed, or
    gloo's "Connection closed by peer"), rank 1's own error appeared nowhere, and every rank wrote
    its failure over the others' in result.json (probe)."""
    plugin = tmp_path / "fails_on_rank_1.py"
    plugin.write_text(FAILS_ON_RANK_1)
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_ssr.app.cli", "trainer.strategy=ddp", "trainer.devices=2", "data=uci_digits",
         "pruning=l1", f"plugins=[{plugin}]", "dense.epochs=1", f"dense.cache_dir={tmp_path / 'dense'}",
         "schedule.finetune_epochs=1", "trainer.limit_train_batches=4", "trainer.enable_progress_bar=false",
         "latency.batch_sizes=[]", f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 1
    assert "lightning-ssr: rank 1: " in proc.stderr and "RuntimeError: a failure on rank 1 only" in proc.stderr, \
        proc.stderr[-3000:]
    record = json.loads((run_dir / "result.json").read_text())
    # (rank 0's own error, gloo's broken connection, came alone: the record names rank 1's first)
    assert record["status"] == "failed" and record["error"].startswith("rank 1: ") and \
        "a failure on rank 1 only" in record["error"], record["error"]
    assert "another rank failed first: its own error is the line 'lightning-ssr: rank N: ...'" in proc.stderr
    assert not list(run_dir.glob(".rank*"))


def test_the_command_leaves_its_process_group_at_the_end(tmp_path):
    """gloo's threads left running aborted a rank at exit now and then, under load (-6 after a
    complete fit): the command destroys its process group as a run ends."""
    import torch.distributed as dist

    from lightning_ssr.app.cli import _end_process_group

    _end_process_group()  # none: nothing to do
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert dist.is_initialized()
    _end_process_group()
    assert not dist.is_initialized()
