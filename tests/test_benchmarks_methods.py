"""benchmarks/methods.py: an interrupted run goes on from the runs that finished, and the order of
the runs leaves whole targets behind an interruption, and a pruning override no method has is refused."""

import argparse

import pytest

from benchmarks import RUN_FILE, methods
from tests.pools import InlinePool


def _args(**kw):
    base = {"model": "resnet20", "data": "fashion_mnist", "dense_epochs": 1, "sparsify": 1, "finetune": 1,
            "accelerator": "cpu", "train_size": 0, "batches": 0, "override": []}
    return argparse.Namespace(**{**base, **kw})


def test_a_finished_run_is_read_back_and_a_changed_setting_trains_again(tmp_path, monkeypatch):
    """The reuse itself (failed and cut-short records, a changed config file) is tested with
    lenet.py's, which shares :func:`benchmarks.run_or_reuse`."""
    trained = []
    monkeypatch.setattr(methods, "run", lambda cfg, out_dir: trained.append(cfg) or argparse.Namespace(
        to_dict=lambda: {"status": "ok", "accuracy_drop_points": 0.3}))
    monkeypatch.setattr(methods, "compose_config", lambda overrides: overrides)
    out = tmp_path / "l1@uniform-0-0.25"
    first = methods.compress_job("l1@uniform", 0, 0.25, _args(), str(out))
    assert len(trained) == 1 and (out / RUN_FILE).is_file() and first["macs_target"] == 0.25
    assert "target.macs=0.25" in trained[0] and "seed=0" in trained[0]

    again = methods.compress_job("l1@uniform", 0, 0.25, _args(), str(out))
    assert len(trained) == 1 and again.pop("reused") is True and again == first

    methods.compress_job("l1@uniform", 0, 0.25, _args(finetune=2), str(out))  # another budget
    assert len(trained) == 2


def _fake_runs(monkeypatch) -> list:
    """methods.py's runs, recorded and not trained: the list of the configs it would have trained."""
    trained = []
    monkeypatch.setattr(methods, "run", lambda cfg, out_dir: trained.append(cfg) or argparse.Namespace(
        to_dict=lambda: {"status": "ok", "accuracy_drop_points": 0.3}))
    monkeypatch.setattr(methods, "compose_config", lambda overrides: overrides)
    return trained


def test_a_finished_run_of_other_code_of_the_package_trains_again(tmp_path, monkeypatch, capsys):
    """A work directory's finished runs were read back whatever code had made them: taylor's global
    allocation changed, and an earlier taylor@global run would have gone into the new results."""
    import benchmarks

    trained = _fake_runs(monkeypatch)
    out = tmp_path / "taylor@global-0-0.25"
    first = methods.compress_job("taylor@global", 0, 0.25, _args(), str(out))
    assert first["code_sha256"] == benchmarks.code_digest() and len(first["code_sha256"]) == 64
    monkeypatch.setattr(benchmarks, "code_digest", lambda: "0" * 64)  # the package's code changed
    methods.compress_job("taylor@global", 0, 0.25, _args(), str(out))
    assert len(trained) == 2
    assert "taylor@global-0-0.25: its finished run was made by other code of lightning_ssr: trained again" in (
        capsys.readouterr().out)
    again = methods.compress_job("taylor@global", 0, 0.25, _args(), str(out))  # (by this code now: read back)
    assert len(trained) == 2 and again["reused"] is True


def test_another_budget_in_the_work_directory_keeps_this_codes_run(tmp_path, monkeypatch, capsys):
    """A run of budget A set aside by budget B, then the code changed: A trained again, B's command
    then deleted that new run of A (its set-aside folder held A's run of the old code), and every
    switch between the budgets trained again (review)."""
    import benchmarks

    trained = _fake_runs(monkeypatch)
    out = str(tmp_path / "l1@uniform-0-0.25")
    budget_a, budget_b = _args(), _args(finetune=2)
    methods.compress_job("l1@uniform", 0, 0.25, budget_a, out)
    methods.compress_job("l1@uniform", 0, 0.25, budget_b, out)  # A set aside
    monkeypatch.setattr(benchmarks, "code_digest", lambda: "1" * 64)  # the package's code changed
    methods.compress_job("l1@uniform", 0, 0.25, budget_a, out)  # B set aside; A of the old code is not reused
    assert len(trained) == 3
    assert "its finished run was made by other code of lightning_ssr: trained again" in capsys.readouterr().out
    methods.compress_job("l1@uniform", 0, 0.25, budget_b, out)  # B of the old code: trained again, A set aside
    assert len(trained) == 4
    for budget in (budget_a, budget_b, budget_a):  # each of this code now kept: read back, whichever comes
        assert methods.compress_job("l1@uniform", 0, 0.25, budget, out)["reused"] is True
    assert len(trained) == 4


def test_none_then_the_largest_reduction_first(tmp_path, monkeypatch):
    """The order the runs are submitted in: ``none`` first, then every seed of the smallest MACs
    fraction, so that an interrupted benchmark leaves whole targets to reuse."""
    submitted = []

    def fake_compress(method, seed, macs, args, out_dir):
        submitted.append((method, seed, macs))
        return {"status": "failed", "error": "not run", "method": method, "seed": seed, "macs_target": macs}

    monkeypatch.setattr(methods, "job_pool", lambda *args: InlinePool())
    monkeypatch.setattr(methods, "dense_job", lambda s, a, o: {"seed": s, "path": "d.pt", "reused": True,
                                                                 "seconds": 0.0})
    monkeypatch.setattr(methods, "compress_job", fake_compress)
    monkeypatch.setattr(methods, "plot", lambda *a: None)
    methods.main(["--methods", "l1@uniform", "ssr_l21@method", "none", "--seeds", "0", "1", "--macs", "0.5",
                  "0.25", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "m.json")])
    assert submitted[:2] == [("none", 0, None), ("none", 1, None)]
    assert [macs for _, _, macs in submitted[2:]] == [0.25] * 4 + [0.5] * 4
    assert (tmp_path / "m.json").is_file()


def test_a_pruning_override_no_method_has_is_refused_before_any_run(capsys):
    """The same check as lenet.py's: a ``pruning.<key>`` none of the methods has is refused."""
    with pytest.raises(SystemExit):
        methods.main(["--methods", "l1@uniform", "none", "--override", "pruning.rho=1.0", "--out", "unused.json"])
    assert "pruning.rho" in capsys.readouterr().err


def test_a_reference_not_among_the_methods_is_refused_before_any_run(capsys, monkeypatch):
    """Nothing would be compared with it, without a word."""
    def started():
        raise AssertionError("the benchmark started")  # fail fast, not train, if the check is gone
    monkeypatch.setattr(methods, "quiet_lightning", started)
    with pytest.raises(SystemExit):
        methods.main(["--methods", "ssr_l20@method", "none", "--out", "unused.json"])
    assert "--reference l1@uniform: not among the methods run" in capsys.readouterr().err


def test_the_code_digest_reads_the_packages_sources_and_skips_hidden_files(tmp_path, monkeypatch):
    """An editor's lock file (.#engine.py, a dangling link) made every run fail (review)."""
    import lightning_ssr
    from benchmarks import code_digest

    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("x = 1\n")
    (tmp_path / "pkg" / "sub" / "a.py").write_text("y = 2\n")
    monkeypatch.setattr(lightning_ssr, "__file__", str(tmp_path / "pkg" / "__init__.py"))
    first = code_digest.__wrapped__()
    (tmp_path / "pkg" / ".#a.py").symlink_to(tmp_path / "pkg" / "missing.py")
    assert code_digest.__wrapped__() == first
    (tmp_path / "pkg" / "sub" / "a.py").write_text("y = 3\n")
    assert code_digest.__wrapped__() != first
