"""benchmarks/trajectory.py: the structure over the sparsify phase, read from recorded runs."""

import json

import pytest

from benchmarks import trajectory


def _run(method, seed, held, kept, dataset="mnist"):
    names = list(kept)
    return {"method": method, "seed": seed, "dataset": dataset, "status": "ok",
            "layers": [{"name": n, "before": 20, "after": kept[n]} for n in names],
            "trajectory": [{"step": 25 * (i + 1), "kept": dict(zip(names, h, strict=True))} for i, h in enumerate(held)],
            "events": [{"allocation": "method"}]}


def test_curves_average_the_seeds_update_by_update_in_the_models_layer_order():
    runs = [_run("ssr", 0, [(10, 20), (4, 18)], {"a": 4, "b": 18}),
            _run("ssr", 1, [(12, 20), (6, 16), (2, 16)], {"a": 2, "b": 16}),
            _run("ssr", 2, [(1, 1)], {"a": 1, "b": 1}, dataset="fashion_mnist"),  # another data set: left out
            {**_run("l1", 0, [], {"a": 5, "b": 5}), "trajectory": []},
            {**_run("l1", 1, [], {"a": 7, "b": 5}), "trajectory": []}]
    c = trajectory.curves(runs, "mnist", ["ssr", "absent"], "l1")
    ssr = c["methods"]["ssr"]
    assert list(ssr["held"]) == ["a", "b"] and ssr["seeds"] == [0, 1] and ssr["steps"] == [25, 50, 75]
    assert ssr["held"]["a"] == [11, 5, 2]  # the third update: only seed 1 got there
    assert ssr["kept"] == {"a": 3, "b": 17} and ssr["allocation"] == "method"
    assert "absent" not in c["methods"] and c["reference"]["kept"] == {"a": 6, "b": 5}


def test_main_writes_curves_and_plot_and_says_when_no_run_recorded_one(tmp_path):
    results = tmp_path / "lenet.json"
    results.write_text(json.dumps({"command": "python benchmarks/lenet.py", "runs": [
        _run("ssr_l21@method", 0, [(10, 20), (4, 18)], {"a": 4, "b": 18}),
        {**_run("l1@uniform", 0, [], {"a": 5, "b": 5}), "trajectory": []}]}))
    out = trajectory.main(["--results", str(results)])
    written = json.loads((tmp_path / "lenet_trajectory_mnist.json").read_text())
    assert written["methods"]["ssr_l21@method"]["held"]["a"] == [10, 4] == out["methods"]["ssr_l21@method"]["held"]["a"]
    assert written["source_command"] == "python benchmarks/lenet.py"
    assert (tmp_path / "lenet_trajectory_mnist.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="recorded a trajectory"):
        trajectory.main(["--results", str(results), "--dataset", "fashion_mnist"])


def test_render_shows_the_last_held_and_kept_counts_and_links_the_plot(tmp_path):
    from benchmarks.render import render

    results = tmp_path / "lenet.json"
    results.write_text(json.dumps({"command": "python benchmarks/lenet.py", "runs": [
        _run("ssr_l21@method", 0, [(10, 20), (4, 18)], {"a": 4, "b": 18})]}))
    trajectory.main(["--results", str(results), "--methods", "ssr_l21@method"])
    results.unlink()  # the rendered section comes from the trajectory file alone
    text = render(tmp_path)
    assert "| a | 20 | 4.0 | 4.0 | - |" in text and "![trajectory](results/lenet_trajectory_mnist.png)" in text


def test_a_file_with_several_targets_needs_macs_and_each_target_has_its_own_files(tmp_path):
    results = tmp_path / "methods.json"
    rows = [{**_run("ssr_l21@method", 0, [(10, 20)], {"a": 10, "b": 20}), "macs_target": 0.5},
            {**_run("ssr_l21@method", 0, [(2, 8)], {"a": 2, "b": 8}), "macs_target": 0.25},
            {**_run("l1@uniform", 0, [], {"a": 5, "b": 5}), "trajectory": [], "macs_target": 0.25}]
    results.write_text(json.dumps({"command": "python benchmarks/methods.py", "rows": rows}))
    with pytest.raises(SystemExit):  # which target? refused, not averaged across both
        trajectory.main(["--results", str(results), "--dataset", "all"])
    with pytest.raises(SystemExit):
        trajectory.main(["--results", str(results), "--dataset", "all", "--macs", "0.1"])
    out = trajectory.main(["--results", str(results), "--dataset", "all", "--macs", "0.25"])
    assert out["methods"]["ssr_l21@method"]["held"]["a"] == [2] and out["reference"]["kept"] == {"a": 5, "b": 5}
    assert (tmp_path / "methods_trajectory_all_macs0.25.png").is_file()

    from benchmarks.render import render_trajectory

    text = "\n".join(render_trajectory(json.loads((tmp_path / "methods_trajectory_all_macs0.25.json").read_text())))
    assert "results/methods_trajectory_all_macs0.25.png" in text


def test_a_channel_group_without_a_layer_of_its_own_is_plotted_from_the_plan():
    """A ResNet's residual stream is a group rooted at a parameter-free shortcut: it has no row in
    the layer table, so its dense size and kept count come from the plan."""
    run = _run("ssr", 0, [(10,)], {"a": 10})
    run["trajectory"][0]["kept"] = {"a": 10, "stream": 3}
    run["plan"] = {"groups": [{"root": "a", "size": 20, "kept": list(range(10))},
                              {"root": "stream", "size": 32, "kept": [0, 5, 9]}]}
    c = trajectory.curves([run], None, ["ssr"], "l1")["methods"]["ssr"]
    assert list(c["held"]) == ["a", "stream"] and c["held"]["stream"] == [3]
    assert c["kept"]["stream"] == 3 and c["dense"]["stream"] == 32
