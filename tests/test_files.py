"""atomic_write: whole files, with the permissions a plain write gives (not a temporary file's 0600)."""

import os
import stat

import pytest
import torch
from torch import nn

from lightning_ssr.checkpoint import save_pruned
from lightning_ssr.files import atomic_write, atomic_write_text
from lightning_ssr.report import write_json
from lightning_ssr.structure.plan import PruningPlan


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_files_the_package_writes_are_readable_by_others(tmp_path, umask_022):
    # the temporary file mkstemp creates is 0600: results, checkpoints and caches were owner-only
    written = [
        write_json(tmp_path / "result.json", {"a": 1}),
        save_pruned(nn.Linear(2, 2), tmp_path / "pruned.pt", None),
        atomic_write_text(tmp_path / "t.txt", "x"),
    ]
    PruningPlan(input_shape=[1, 2]).save(tmp_path / "plan.json")
    written.append(tmp_path / "plan.json")
    for path in written:
        assert mode(path) == 0o644, path
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)  # no temporary left


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        path = atomic_write_text(tmp_path / "private.json", "{}")
        assert os.umask(0o077) == 0o077  # reading the umask left it as it was
    finally:
        os.umask(old)
    assert mode(path) == 0o600


def test_a_file_system_without_modes_still_gets_the_file(tmp_path, monkeypatch):
    def refuses(path, mode):
        raise PermissionError(1, "Operation not permitted", path)

    monkeypatch.setattr(os, "chmod", refuses)  # vfat, some FUSE mounts: the result must not be lost
    assert atomic_write_text(tmp_path / "result.json", "{}").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "result.json", "old")

    def fails(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fails)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_writer_that_adds_its_own_suffix(tmp_path):
    import numpy as np

    path = atomic_write(tmp_path / "arrays.npz", lambda tmp: np.savez(tmp, x=np.arange(3)), suffix=".npz")
    with np.load(path) as data:
        assert data["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["arrays.npz"]
    assert torch.load(save_pruned(nn.Linear(1, 1), tmp_path / "m.pt", None), weights_only=True)["pruning_plan"] is None
