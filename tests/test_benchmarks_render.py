"""benchmarks/render.py: RESULTS.md from the results files, and README's generated parts (headline, method table)."""

import json
import re
from pathlib import Path

import pytest

from benchmarks import PARTS, command_line
from benchmarks.render import (
    END,
    METHODS_END,
    METHODS_START,
    START,
    headline,
    method_table_markdown,
    render,
    render_lenet,
    render_recipes,
    update_readme,
)
from lightning_ssr.methods import available_methods


def test_python_m_benchmarks_writes_its_quick_budgets_beside_the_full_ones():
    for part, args in PARTS:
        if part in ("methods", "lenet", "solver_speed", "recipes", "speedup"):  # smaller budgets than the files
            assert "--out" in args and args[args.index("--out") + 1].endswith("_quick.json"), part
        if part in ("methods", "lenet", "recipes"):  # and keep their runs apart from a full run's (probe)
            assert "--work-dir" in args and args[args.index("--work-dir") + 1].endswith(f"{part}_quick"), part


def test_render_names_the_recorded_command_and_machine_and_lists_files_it_cannot_render(tmp_path):
    machine = {"cpu": "Some CPU", "cores": 2, "torch_threads": 2, "torch": "2.x"}
    (tmp_path / "overhead.json").write_text(json.dumps({"machine": machine, "command": "python benchmarks/overhead.py "
                                                        "--steps 25 --rounds 3", "rows": [
        {"model": "resnet20", "device": "cpu", "batch_size": 64, "ratio": 1.0123}]}))
    (tmp_path / "speedup.json").write_text(json.dumps({"latency": []}))  # no command recorded: none inferred
    (tmp_path / "mystery.json").write_text(json.dumps({"a": 1}))
    text = render(tmp_path)
    assert re.search(r"the command is not recorded in this file → `\S+/speedup.json`", text)
    assert "`python benchmarks/overhead.py --steps 25 --rounds 3`" in text
    assert "machine: Some CPU, 2 cores, 2 torch threads, torch 2.x" in text and "| resnet20 | cpu | 32-true | 64 | 1.012 |" in text
    assert "## mystery" in text and "no renderer" in text
    # a file cut short is said, and the others rendered (it stopped the whole render in a traceback: probe)
    (tmp_path / "broken.json").write_text('{"rows": [')
    text = render(tmp_path)
    assert re.search(r"## broken\n\n`\S+/broken.json` is unreadable \(JSONDecodeError: .*\); run its benchmark "
                     r"again, or remove it\.", text)
    assert "| resnet20 | cpu | 32-true | 64 | 1.012 |" in text


def test_readme_generated_parts_are_replaced_between_their_markers_only(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Results\n\nintro\n\n{START}\nold figures\n{END}\n\n## Methods\n"
                      f"{METHODS_START}\nold table\n{METHODS_END}\nkept\n")
    update_readme(readme, "| new headline |", "| new table |")
    text = readme.read_text()
    assert "old figures" not in text and "old table" not in text
    assert f"{START}\n| new headline |\n{END}" in text and f"{METHODS_START}\n| new table |\n{METHODS_END}" in text
    assert text.startswith("# x\n\n## Results\n\nintro\n\n") and text.endswith(f"{METHODS_END}\nkept\n")
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="results:start"):
        update_readme(readme, "x")


def test_readme_method_table_is_the_registry():
    """README's method table is generated: a method added or changed without running
    ``python benchmarks/render.py`` fails here."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    body = readme.split(METHODS_START, 1)[1].split(METHODS_END, 1)[0].strip("\n")
    assert body == method_table_markdown()
    for name in available_methods():
        assert f"| `{name}` |" in body


def test_headline_reads_each_file_and_says_what_it_cannot_summarize(tmp_path):
    assert "no results files yet" in headline(tmp_path)
    (tmp_path / "lenet.json").write_text(json.dumps({"rows": [
        {"source": "paper", "dataset": "mnist", "method": "ssr_l21", "drop_mean": 0.18},
        {"dataset": "mnist", "method": "none", "n_runs": 5, "drop_mean": -0.1},
        {"dataset": "mnist", "method": "a@method", "n_runs": 5, "drop_mean": 0.3, "drop_std": 0.1,
         "macs_reduction": 40.0, "dense_accuracy_mean": 0.992, "filters": "2-3-100",
         "vs_reference": {"reference": "l1@uniform", "mean": 0.2, "low": -0.1, "high": 0.5,
                          "verdict": "not distinguishable"}},
        {"dataset": "mnist", "method": "l1@uniform", "n_runs": 5, "drop_mean": 0.5, "drop_std": 0.2,
         "macs_reduction": 40.0, "dense_accuracy_mean": 0.992, "filters": "4-8-50", "vs_reference": None}]}))
    (tmp_path / "recipes.json").write_text(json.dumps({"summary": [{"experiment": "da", "n_runs": 3}]}))
    text = headline(tmp_path)
    # the best mean drop among the compressed rows (none and the paper's rows are not candidates)
    assert "a@method: 40.0x fewer MACs, drop +0.30 ± 0.10 pt over 5 seeds (dense 99.20%), structure 2-3-100" in text
    assert "vs l1@uniform: +0.20 [-0.10, +0.50], not distinguishable" in text
    assert "| recipes | (cannot summarize this file: KeyError 'compressed_minus_dense')" in text


def test_the_adaptation_headline_sets_dann_against_its_equal_budget_control(tmp_path):
    """Source only trains dense.epochs, DANN those and the schedule's: the control, the same runs
    without the domain term, trains as long, and DANN is compared with it by seed."""
    def rows(accuracies):
        return [{"experiment": "da", "seed": s, "status": "ok", "dense_accuracy": a} for s, a in accuracies.items()]
    summary = {"experiment": "da", "n_runs": 3, "source_only_accuracy": {"mean": 47.0, "std": 1.5},
               "dense_accuracy": {"mean": 79.0, "std": 1.9}, "gap_closed": {"mean": 0.62}}
    (tmp_path / "recipes.json").write_text(json.dumps({"summary": [summary],
                                                       "rows": rows({0: 77.0, 1: 80.0, 2: 80.0})}))
    assert "without adaptation" not in headline(tmp_path)  # no control file: nothing claimed
    (tmp_path / "recipes_no_adaptation.json").write_text(json.dumps({"rows": rows({0: 47.0, 1: 49.0, 2: 48.0})}))
    text = headline(tmp_path)
    assert "same epochs without adaptation 48.00 ± 1.00% (3 seeds), DANN dense - it: +31.00 [" in text
    assert "], higher" in text


def test_a_recipes_file_with_its_own_controls_is_compared_with_them_and_tables_them(tmp_path):
    """recipes.py runs each adaptation seed's control itself (the default ``--control``): its rows,
    summarized, give the headline's comparison, before any separate control file."""
    from benchmarks.recipes import summarize

    def row(seed, dense, variant=None):
        return {"experiment": "da", "seed": seed, "status": "ok", "error": None, "kind": "adaptation",
                "dense_accuracy": dense, "pruned_accuracy": dense - 1, "source_only_accuracy": 45.0,
                "macs_reduction": 4.0, **({"variant": variant} if variant else {})}
    rows = [row(0, 77.0), row(1, 80.0), row(2, 80.0),
            row(0, 47.0, "no_adaptation"), row(1, 49.0, "no_adaptation"), row(2, 48.0, "no_adaptation")]
    data = {"summary": summarize(rows), "rows": rows}
    (entry,) = data["summary"]
    assert entry["n_runs"] == 3 and entry["dense_accuracy"]["mean"] == pytest.approx(79.0)  # controls apart
    assert entry["no_adaptation_accuracy"]["mean"] == pytest.approx(48.0)
    assert entry["dann_minus_no_adaptation"]["mean"] == pytest.approx(31.0)
    (tmp_path / "recipes.json").write_text(json.dumps(data))
    (tmp_path / "recipes_no_adaptation.json").write_text(json.dumps({"rows": [  # older, other figures: unused
        {"experiment": "da", "seed": s, "status": "ok", "dense_accuracy": 10.0 + s} for s in range(3)]}))
    text = headline(tmp_path)
    assert "same epochs without adaptation 48.00 ± 1.00% (3 seeds), DANN dense - it: +31.00 [" in text
    table = "\n".join(render_recipes(data))
    assert "| 48.00 ± 1.00 | +31.00 [" in table and "| da (no adaptation) | 1 |" in table
    assert "Failed runs" not in table
    # a failed run is listed with its error, not only counted (probe)
    data["rows"].append({"experiment": "da", "seed": 3, "status": "failed", "kind": "adaptation",
                         "error": "FloatingPointError: the training loss is nan\nmore"})
    table = "\n".join(render_recipes(data))
    assert "- da, seed 3: FloatingPointError: the training loss is nan" in table and "more" not in table


def test_the_record_of_a_whole_run_comes_first_with_its_total(tmp_path):
    (tmp_path / "overhead.json").write_text(json.dumps({"rows": []}))
    (tmp_path / "run.json").write_text(json.dumps({"machine": {"cpu": "C"}, "command": "python -m benchmarks",
                                                   "parts": {"targets": 600.0},
                                                   "failed": [], "total_s": 3000.0}))
    text = render(tmp_path)
    assert text.index("## run") < text.index("## overhead")
    assert "`python -m benchmarks`" in text and "| targets | 10.0 min |" in text and "**50.0 min**" in text


def test_the_gpu_check_renders_its_parts(tmp_path):
    data = {"benchmark": "gpu", "command": "python -m benchmarks.gpu", "machine": {"gpu": "Some GPU"}, "cuda": "13.0",
            "device": "cuda", "parts": {
                "tests": {"summary": "18 passed in 40.0s", "ok": True},
                "speedup": [{"model": "resnet56", "round_to": 8, "batch": 1024, "macs_reduction": 2.0,
                             "fp32": {"speedup": 1.7, "speedup_over_macs_reduction": 0.85},
                             "bf16": {"speedup": 1.5, "speedup_over_macs_reduction": 0.75}},
                            {"model": "vgg16_bn", "round_to": 32, "error": "OutOfMemoryError: boom"}]}}
    (tmp_path / "gpu.json").write_text(json.dumps(data))
    text = render(tmp_path)
    assert "`python -m benchmarks.gpu`" in text and "Device: Some GPU (CUDA 13.0)" in text
    assert "| resnet56 | 8 | 1024 | 2.00x | 1.70x | 0.85 | 1.50x | 0.75 |" in text
    assert "| vgg16_bn | 32 | failed | OutOfMemoryError: boom |" in text and "18 passed" in text


def test_a_recorded_command_names_no_path_of_the_machine_it_ran_on():
    home = str(Path.home() / "runs" / "lenet")
    assert command_line("lenet", ["--work-dir", home, "--seeds", "0"]) == \
        "python benchmarks/lenet.py --work-dir ~/runs/lenet --seeds 0"


def test_the_distilled_lenet_tables_have_their_own_headline_rows(tmp_path):
    row = {"dataset": "mnist", "method": "ssr_l20@method", "filters": "1-16-65", "macs_reduction": 40.0,
           "drop_mean": 0.24, "drop_std": 0.09, "n_runs": 5, "dense_accuracy_mean": 0.9921,
           "vs_reference": {"reference": "l1@uniform", "n": 5, "mean": 0.07, "low": -0.1, "high": 0.24,
                            "verdict": "not distinguishable"}}
    for name, dataset in (("lenet_distill", "mnist"), ("lenet_distill_fashion_mnist", "fashion_mnist")):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"settings": {"override": ["module.distill=0.7"]}, "rows": [{**row, "dataset": dataset}]}))
    (tmp_path / "lenet.json").write_text(json.dumps({"settings": {"override": []}, "rows": [row]}))
    text = headline(tmp_path)
    assert "LeNet-5 on mnist, distilled from the dense model, lowest mean drop" in text
    assert "LeNet-5 on fashion_mnist, distilled from the dense model" in text
    assert "(benchmarks/RESULTS.md#lenet_distill_fashion_mnist)" in text and "not distinguishable" in text
    assert "| LeNet-5 on mnist, lowest mean drop |" in text  # no teacher recorded: none named


def test_a_lenet_headline_names_the_epoch_budget_its_file_ran_with(tmp_path):
    row = {"dataset": "mnist", "method": "ssr_l20@method", "filters": "1-16-65", "macs_reduction": 40.0,
           "drop_mean": 0.2, "drop_std": 0.05, "n_runs": 5, "dense_accuracy_mean": 0.9921}
    for name, sparsify, finetune, extra in (("lenet_distill", 6, 14, []), ("lenet_distill_s10", 10, 14, []),
                                            ("lenet_distill_s16", 16, 8, []),
                                            ("lenet_distill_restart", 10, 14, ["schedule.restart_lr=true"]),
                                            ("lenet_distill_warmup_seeds5_9", 10, 14, ["schedule.restart_lr=true",
                                                                              "schedule.lr_warmup_steps=200"])):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"settings": {"sparsify": sparsify, "finetune": finetune, "override": ["module.distill=0.7", *extra]},
             "rows": [row]}))
    text = headline(tmp_path)
    assert "LeNet-5 on mnist, distilled from the dense model, 6 + 14 epochs, lowest mean drop" in text
    assert "LeNet-5 on mnist, distilled from the dense model, 10 + 14 epochs, lowest mean drop" in text
    assert "LeNet-5 on mnist, distilled from the dense model, 16 + 8 epochs, lowest mean drop" in text
    assert ("LeNet-5 on mnist, distilled from the dense model, 10 + 14 epochs, the LR schedule restarted after "
            "the prune, lowest mean drop") in text
    assert ("LeNet-5 on mnist, distilled from the dense model, 10 + 14 epochs, the LR schedule restarted after "
            "the prune, 200 LR warm-up steps after it, lowest mean drop") in text
    assert "(benchmarks/RESULTS.md#lenet_distill_s10)" in text


def test_a_lenet_headline_names_seeds_other_than_the_default(tmp_path):
    row = {"dataset": "mnist", "method": "ssr_l20@method", "filters": "1-16-65", "macs_reduction": 40.0,
           "drop_mean": 0.2, "drop_std": 0.05, "n_runs": 5, "dense_accuracy_mean": 0.9921}
    settings = {"sparsify": 10, "finetune": 14, "override": ["schedule.restart_lr=true"]}
    for name, seeds in (("lenet_distill_restart", [0, 1, 2, 3, 4]), ("lenet_distill_restart_seeds5_9", [5, 6, 7, 8, 9]),
                        ("lenet_distill_s10", [0, 3])):
        (tmp_path / f"{name}.json").write_text(json.dumps({"settings": {**settings, "seeds": seeds}, "rows": [row]}))
    text = headline(tmp_path)
    assert "10 + 14 epochs, the LR schedule restarted after the prune, lowest mean drop" in text  # the default seeds
    assert "the LR schedule restarted after the prune, seeds 5-9, lowest mean drop" in text
    assert "(benchmarks/RESULTS.md#lenet_distill_restart_seeds5_9)" in text
    assert "seeds 0, 3, lowest mean drop" in text


def test_a_lenet_table_with_a_failed_run_states_one_dense_accuracy_and_the_headline_counts_the_failure(tmp_path):
    ok = {"dataset": "mnist", "method": "ssr_l20@method", "filters": "2-7-50", "macs_reduction": 40.0,
          "drop_mean": 0.26, "drop_std": 0.06, "n_runs": 5, "failed": 0, "dense_accuracy_mean": 0.9923}
    short = {**ok, "method": "l1@uniform", "filters": "2-6-87", "drop_mean": 0.23, "n_runs": 4, "failed": 1,
             "dense_accuracy_mean": 0.99225, "errors": [{"seed": 6, "error": "FloatingPointError: nan"}]}
    text = "\n".join(render_lenet({"rows": [ok, short]}))
    assert "Dense accuracy (mean over seeds): mnist 99.23%." in text  # the five seeds', not also the four's
    # without comparisons, no row is called the reference but the reference's (every row was: probe)
    assert "(reference)" not in text and text.count("| - | ") >= 2
    compared = "\n".join(render_lenet({"rows": [ok, short], "settings": {"reference": "l1@uniform"}}))
    assert compared.count("(reference)") == 1 and "| l1@uniform | 2-6-87 |" in compared
    # a paired interval over fewer seeds than the row's runs says so (the reference's seed 6 failed: probe)
    versus = {"mean": -0.05, "low": -0.14, "high": 0.05, "verdict": "not distinguishable", "seeds": [5, 7, 8, 9]}
    paired = "\n".join(render_lenet({"rows": [{**ok, "vs_reference": versus}, short],
                                      "settings": {"reference": "l1@uniform"}}))
    assert "| 5 | -0.05 [-0.14, +0.05], not distinguishable (4 paired seeds) |" in paired
    assert "- mnist l1@uniform, seed 6: FloatingPointError: nan" in text
    (tmp_path / "lenet_distill_restart.json").write_text(json.dumps({"rows": [ok, short]}))
    assert "drop +0.23 ± 0.06 pt over 4 seeds (1 failed, listed in the table) (dense" in headline(tmp_path)


def test_a_lenet_headline_leaves_out_a_structure_given_by_hand(tmp_path):
    learned = {"dataset": "mnist", "method": "ssr_l20@method", "filters": "1-16-65", "macs_reduction": 40.0,
               "drop_mean": 0.22, "drop_std": 0.1, "n_runs": 5, "dense_accuracy_mean": 0.9921}
    given = {**learned, "method": "ssr_l20@1-16-65", "drop_mean": 0.15}
    (tmp_path / "lenet_distill_s10.json").write_text(json.dumps({"rows": [given, learned]}))
    text = headline(tmp_path)
    assert "ssr_l20@method: 40.0x fewer MACs, drop +0.22" in text and "ssr_l20@1-16-65" not in text


def test_a_lenet_table_leaves_out_the_papers_rows_of_a_dataset_it_did_not_run():
    measured = {"dataset": "fashion_mnist", "method": "l1@uniform", "filters": "5-15-149", "macs_reduction": 10.0,
                "drop_mean": 0.63, "drop_std": 0.09, "n_runs": 5, "dense_accuracy_mean": 0.9152}
    paper = {"source": "paper", "dataset": "mnist", "method": "SSR-L2,1", "filters": "2-8-77",
             "macs_reduction": 34.2, "drop_mean": 0.18, "speedup_cpu_paper": 5.5}
    text = "\n".join(render_lenet({"rows": [measured, paper]}))
    assert "5-15-149" in text and "(paper)" not in text
    text = "\n".join(render_lenet({"rows": [measured, {**measured, "dataset": "mnist"}, paper]}))
    assert "SSR-L2,1 (paper)" in text


def test_a_part_that_refuses_its_budget_is_reported_and_the_others_still_run(monkeypatch, capsys):
    """A timing part's refusal (SystemExit: a file of a larger budget kept) stopped python -m
    benchmarks: the parts after it, the record and the rendering were skipped."""
    import types

    import benchmarks.__main__ as runner
    import benchmarks.render

    ran = []

    def part(name):
        def main(argv):
            ran.append(name)
            if name == "speedup":
                raise SystemExit("benchmarks/results/speedup.json was made with a larger budget")
        return types.SimpleNamespace(main=main)

    monkeypatch.setattr(runner, "importlib", types.SimpleNamespace(import_module=lambda m: part(m.split(".")[-1])))
    monkeypatch.setattr(benchmarks.render, "main", lambda argv: ran.append("render"))
    monkeypatch.chdir(Path.cwd())  # (main changes to the repository's folder)
    assert runner.main(["--only", "speedup", "overhead"]) == 1
    assert ran == ["speedup", "overhead", "render"]
    captured = capsys.readouterr()
    assert "speedup: benchmarks/results/speedup.json was made with a larger budget" in captured.err
    assert "1 of 2 parts ran" in captured.out and "failed: speedup" in captured.out


def test_rendering_results_from_another_folder_leaves_the_repositorys_readme(tmp_path, capsys, monkeypatch):
    """``render.py --results <elsewhere> --out <elsewhere>`` replaced the repository README's
    published figures with those of the other folder (a quick trial's), linking to a RESULTS.md
    it had not written. Only the repository's results folder updates it by default."""
    from benchmarks import render

    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{START}\nold figures\n{END}\n{METHODS_START}\nold table\n{METHODS_END}\n")
    monkeypatch.setattr(render, "README", readme)
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "structure.json").write_text(json.dumps({"benchmark": "structure", "rows": []}))
    render.main(["--results", str(tmp_path / "res"), "--out", str(tmp_path / "RESULTS.md")])
    assert "old figures" in readme.read_text() and (tmp_path / "RESULTS.md").is_file()
    text = (tmp_path / "RESULTS.md").read_text()  # (the folder it was rendered from, not the repository's)
    assert "benchmarks/results" not in text and "res/structure.json`" in text
    assert f"`{(tmp_path / 'res').resolve().as_posix()}/*.json`" in text  # (a path that reads them again)
    assert "left README.md as it is" in capsys.readouterr().out
    render.main(["--results", str(tmp_path / "res"), "--out", str(tmp_path / "RESULTS.md"), "--readme", str(readme)])
    assert "old figures" not in readme.read_text()  # (named: updated)
    with pytest.raises(SystemExit):
        render.main(["--results", str(tmp_path / "res"), "--out", str(tmp_path / "R.md"), "--readme",
                     str(tmp_path / "nowhere.md")])
    err = capsys.readouterr().err
    assert f"--readme {tmp_path / 'nowhere.md'}: no such file" in err


def test_the_benchmarks_can_write_into_another_folder(tmp_path, monkeypatch, capsys):
    """``python -m benchmarks`` had no place of its own to write: even one part replaced the
    repository's results, RESULTS.md and README. ``--results-dir`` moves each part's file, the
    record and RESULTS.md there, and leaves README alone."""
    import types

    import benchmarks.__main__ as runner
    import benchmarks.render

    argvs, rendered = {}, []

    def part(name):
        return types.SimpleNamespace(main=lambda argv: argvs.setdefault(name, argv))

    monkeypatch.setattr(runner, "importlib", types.SimpleNamespace(import_module=lambda m: part(m.split(".")[-1])))
    monkeypatch.setattr(benchmarks.render, "main", rendered.append)
    monkeypatch.chdir(Path.cwd())
    out = tmp_path / "trial"
    assert runner.main(["--only", "structure", "speedup", "--results-dir", str(out)]) == 0
    assert argvs["structure"] == ["--out", str(out / "structure.json")]
    assert argvs["speedup"] == ["--repeats", "12", "--out", str(out / "speedup_quick.json")]
    assert rendered == [["--results", str(out), "--out", str(out / "RESULTS.md"), "--no-readme"]]
    capsys.readouterr()
    runner.main(["--list", "--results-dir", str(out)])
    listed = capsys.readouterr().out
    assert f"--out {out / 'lenet_quick.json'}" in listed and f"--out {out / 'targets_quick.json'}" in listed
