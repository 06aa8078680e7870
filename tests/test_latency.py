"""Latency targets: the table-based predictor, the allocation against it, and the on-disk cache.
(Whether predictions match measured latency is a benchmark, not a unit test: timings depend on
the machine.)"""

import math

import pytest
import torch

import lightning_ssr.latency as latency_mod
from lightning_ssr.app.models import build_model
from lightning_ssr.cost import count_cost
from lightning_ssr.latency import LatencyModel, latency_model
from lightning_ssr.structure import find_channel_groups
from lightning_ssr.targets import Target, keep_counts, min_keep_counts

X = torch.randn(4, 1, 28, 28)


def _lenet():
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    return model, find_channel_groups(model, X), count_cost(model, X)


def _linear_table(cost, groups):
    """A synthetic table: each layer's time proportional to its MACs at the given widths."""
    varies_out = {m for g in groups for m in g.out_modules}
    varies_in = {m for g in groups for m, _ in g.consumers}
    layers = {}
    for name, layer in cost.layers.items():
        ins = [1, layer.in_channels] if name in varies_in else [layer.in_channels]
        outs = [1, layer.out_channels] if name in varies_out else [layer.out_channels]
        per = layer.macs / (layer.in_channels * layer.out_channels) * 1e-6
        layers[name] = {"in": ins, "out": outs, "ms": [[per * i * o for o in outs] for i in ins]}
    full = sum(layer.macs for layer in cost.layers.values()) * 1e-6
    return LatencyModel(batch_size=4, device="synthetic", dense_ms=full + 1.0, rest_ms=1.0, layers=layers)


def test_prediction_interpolates_the_table_and_equals_the_dense_time_at_full_width():
    _model, groups, cost = _lenet()
    table = _linear_table(cost, groups)
    full = {g.name: g.size for g in groups}
    assert table.predict(groups, cost, full) == pytest.approx(table.dense_ms)
    half = {g.name: g.size // 2 for g in groups}
    # MACs-proportional layer times: the prediction is rest + the MACs of the half-width model
    from lightning_ssr.cost import estimate_macs

    assert table.predict(groups, cost, half) == pytest.approx(1.0 + estimate_macs(groups, cost, half) * 1e-6)


@pytest.mark.parametrize("fraction", [0.8, 0.6, 0.4])
def test_a_latency_target_is_met_within_two_percent_of_the_prediction(fraction):
    model, groups, cost = _lenet()
    table = _linear_table(cost, groups)
    target = Target(latency=fraction * table.dense_ms, batch_size=4)
    keep = keep_counts(model, groups, cost, target, min_keep_counts(groups), latency=table)
    predicted = table.predict(groups, cost, keep)
    assert 0.98 * target.latency <= predicted <= target.latency * (1 + 1e-9)


def test_latency_targets_are_validated():
    for bad in (0, -1.0, float("nan"), "2ms", True):
        with pytest.raises(ValueError, match="latency"):
            Target(latency=bad)
    with pytest.raises(ValueError, match="batch_size"):
        Target(latency=2.0, batch_size=0)
    assert Target.coerce({"latency": 2.0, "batch_size": 8}).to_dict() == {"latency": 2.0, "batch_size": 8}
    model, groups, cost = _lenet()
    with pytest.raises(ValueError, match="latency table"):
        keep_counts(model, groups, cost, Target(latency=1.0), min_keep_counts(groups))


@pytest.fixture
def timings(monkeypatch):
    """Every timing the latency module takes, counted (and kept short)."""
    calls = []
    real = latency_mod.time_ms

    def counting(fn, repeats=20, warmup=3, device=None, min_seconds=0.0):
        calls.append(1)
        real(fn, 1, 1, device)  # runs the call; the time returned is fixed, for determinism
        return 100.0 if min_seconds == latency_mod.WHOLE_MODEL_SECONDS else 1.0

    monkeypatch.setattr(latency_mod, "time_ms", counting)
    return calls


def test_layer_timings_are_measured_once_and_cached_on_disk(tmp_path, timings):
    model, groups, cost = _lenet()
    calls = timings
    first = latency_model(model, X, groups, cost, cache_dir=tmp_path)
    n = len(calls)
    assert (tmp_path / "layers.json").is_file() and n > len(cost.layers)  # a grid per prunable layer
    second = latency_model(model, X, groups, cost, cache_dir=tmp_path)
    assert len(calls) == n + 1  # only the whole model is timed again
    assert first.layers == second.layers
    assert first.layers["conv1"]["out"] == [3, 5, 10, 15, 20]  # conv1's outputs are prunable: a grid
    assert first.layers["conv1"]["in"] == [1]  # its input (the image) is not
    # the model is left as it was (eval mode here), and its outputs unchanged
    assert not model.training


def test_a_cache_timed_on_a_busy_machine_is_timed_again(tmp_path, timings):
    import json

    model, groups, cost = _lenet()
    first = latency_model(model, X, groups, cost, cache_dir=tmp_path)
    cache = tmp_path / "layers.json"
    # layer timings taken while the machine was busy: together far slower than the whole model
    cache.write_text(json.dumps({k: 1000 * v for k, v in json.loads(cache.read_text()).items()}))
    n = len(timings)
    second = latency_model(model, X, groups, cost, cache_dir=tmp_path)
    assert len(timings) > n + 1 and second.layers == first.layers
    assert max(json.loads(cache.read_text()).values()) < 1000  # the cache is repaired


def test_timing_batches_are_made_of_the_given_rows():
    from lightning_ssr.latency import timing_batch

    rows = torch.arange(3.0).view(3, 1)
    assert timing_batch(rows, 2).flatten().tolist() == [0.0, 1.0]
    assert timing_batch(rows, 7).flatten().tolist() == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0]


def test_the_floor_is_timed_before_a_latency_target_is_refused(monkeypatch):
    import lightning_ssr.targets as targets_mod
    from lightning_ssr.targets import target_keep_counts

    model, groups, cost = _lenet()
    table = _linear_table(cost, groups)
    # a table whose untimed rest (norms, activations) is most of the time: it thinks the
    # floor costs 90% of the dense model, while the clock says 20%
    table.rest_ms = 9 * table.dense_ms
    table.dense_ms *= 10
    floor = {g.name: 1 for g in groups}
    assert table.predict(groups, cost, floor) > 0.9 * table.dense_ms
    dense_table = table.table_ms(groups, cost, {g.name: g.size for g in groups})

    def clock(model, example, gs, keep, repeats=20, shared=(), dense_ms=None):
        t = table.table_ms(groups, cost, keep)
        return table.dense_ms * (0.2 + 0.8 * (t - 0.9 * dense_table) / (0.1 * dense_table))

    monkeypatch.setattr(targets_mod, "latency_model", lambda *a, **k: table)
    monkeypatch.setattr(targets_mod, "measure_keep", clock)
    monkeypatch.setattr(latency_mod, "measure_keep", clock)
    keep, _info = target_keep_counts(model, X, groups, cost, Target(latency=0.5 * table.dense_ms, batch_size=4),
                                    min_keep_counts(groups))
    assert 0.45 * table.dense_ms <= clock(model, X, groups, keep) <= 0.55 * table.dense_ms
    with pytest.raises(ValueError, match="too small"):  # below the measured floor: refused
        target_keep_counts(model, X, groups, cost, Target(latency=0.1 * table.dense_ms, batch_size=4),
                           min_keep_counts(groups))


def test_a_floor_the_calibrated_table_deems_too_slow_is_timed_not_given_up(monkeypatch):
    """A model whose time is mostly fixed (a LeNet at batch 1): the first counts ran 10% over the
    target, that one point scaled every smaller model alike, the table deemed even the floor too
    slow, and the calibration stopped there, 10% over, where the floor met the target (probe: a
    0.09 ms target missed by 11-13%, the floor timed 0.083 ms)."""
    from lightning_ssr.latency import calibrated_keep_counts

    model, groups, cost = _lenet()
    table = _linear_table(cost, groups)
    table.rest_ms = 9 * table.dense_ms  # (the table's time is 90% fixed)
    table.dense_ms *= 10
    full = table.table_ms(groups, cost, {g.name: g.size for g in groups})
    floor = min_keep_counts(groups)

    def clock(model, example, gs, keep, repeats=20, shared=(), dense_ms=None):
        return table.dense_ms * (0.85 + 4.0 * (table.table_ms(groups, cost, keep) / full - 0.9))

    monkeypatch.setattr(latency_mod, "measure_keep", clock)
    target = Target(latency=0.95 * table.dense_ms, batch_size=4)

    def allocate(t):
        return keep_counts(model, groups, cost, target, floor, latency=t)
    first = allocate(table)
    assert clock(model, X, groups, first) > 1.05 * target.latency  # (over the target by more than the tolerance)
    keep, info = calibrated_keep_counts(allocate, model, X, groups, cost, table, target_ms=target.latency, floor=floor)
    assert clock(model, X, groups, floor) in info["calibration_ms"]  # the floor was timed
    assert abs(info["calibrated_ms"] / target.latency - 1) <= 0.03
    # without the floor to time (the earlier behaviour), the first counts, over the target, came back
    table.calibration.clear()
    keep, info = calibrated_keep_counts(allocate, model, X, groups, cost, table, target_ms=target.latency)
    assert keep == first and info["calibration_ms"] == [clock(model, X, groups, first)]


def test_when_calibration_rounds_run_out_the_timed_counts_nearest_the_target_that_meet_it_are_kept(monkeypatch):
    from lightning_ssr.latency import calibrated_keep_counts

    model, groups, cost = _lenet()
    table = _linear_table(cost, groups)
    options = [{g.name: max(1, g.size * k // 8) for g in groups} for k in (7, 3, 5, 6, 2)]
    times = {0: 0.9, 1: 0.35, 2: 0.63, 3: 0.5, 4: 0.2}  # (none within the 3% tolerance of 0.6)
    calls = iter(range(100))
    picked = []

    def allocate(t):  # an allocation that never settles
        picked.append(options[min(next(calls), 4)])
        return picked[-1]

    def clock(model, example, gs, keep, repeats=20, shared=(), dense_ms=None):
        return times[options.index(keep)] * table.dense_ms

    monkeypatch.setattr(latency_mod, "measure_keep", clock)
    keep, info = calibrated_keep_counts(allocate, model, X, groups, cost, table, rounds=4,
                                        target_ms=0.6 * table.dense_ms)
    # 0.63 is the nearest to 0.6, but over it: of 0.35 and 0.5, which meet it, the nearer
    assert keep == options[3] and len(info["calibration_ms"]) == 4


def _skewed_clock(table, groups, cost, scale=1.3, offset=0.4):
    """A synthetic clock that the table misjudges: the time of a pruned copy is an affine function
    of the table's time with a slope and offset the dense point does not reveal."""
    dense_table = table.table_ms(groups, cost, {g.name: g.size for g in groups})

    def measure(model, example, gs, keep, repeats=20, shared=(), dense_ms=None):
        # the dense model keeps its measured time; pruned ones keep a fixed cost the table misses
        t = table.table_ms(groups, cost, keep)
        return table.dense_ms * (offset + (1 - offset) * (t / dense_table) ** scale)
    return measure


def test_calibration_against_whole_model_timings_corrects_a_misjudging_table(monkeypatch):
    from lightning_ssr.latency import calibrated_keep_counts

    model, groups, cost = _lenet()
    table = _linear_table(cost, groups)
    clock = _skewed_clock(table, groups, cost)
    monkeypatch.setattr(latency_mod, "measure_keep", clock)
    target = Target(latency=0.7 * table.dense_ms, batch_size=4)

    def allocate(t):
        return keep_counts(model, groups, cost, target, min_keep_counts(groups), latency=t)
    uncalibrated = allocate(_linear_table(cost, groups))
    # the table alone misses the target by far more than 10% on this clock
    assert abs(clock(model, X, groups, uncalibrated) / target.latency - 1) > 0.10
    keep, info = calibrated_keep_counts(allocate, model, X, groups, cost, table, target_ms=target.latency)
    truth = clock(model, X, groups, keep)
    assert truth == info["calibrated_ms"] in info["calibration_ms"]  # the counts returned were timed
    assert abs(truth / info["predicted_ms"] - 1) <= 0.03
    assert 0.97 * target.latency <= truth <= target.latency * 1.03
    assert 1 <= len(info["calibration_ms"]) <= 5 and len(table.calibration) == len(info["calibration_ms"])


def test_calibration_never_returns_counts_it_did_not_time(monkeypatch):
    """An allocation within tolerance of its prediction, followed by a re-allocation nobody timed,
    must not be what comes back: of the timed counts, those that meet the target (0.66 is nearer
    to 0.6 than 0.3 is, and was kept, 10% over the target, beside counts timed under it: probe)."""
    from lightning_ssr.latency import calibrated_keep_counts

    model, groups, cost = _lenet()
    table = _linear_table(cost, groups)
    options = [{g.name: max(1, g.size * k // 8) for g in groups} for k in (5, 4, 3)]
    times = {0: 0.66, 1: 0.9, 2: 0.3}  # the second proposal runs far slower than anything predicts
    proposals = iter(options)
    timed = []

    def clock(model, example, gs, keep, repeats=20, shared=(), dense_ms=None):
        timed.append(keep)
        return times[options.index(keep)] * table.dense_ms

    monkeypatch.setattr(latency_mod, "measure_keep", clock)
    keep, info = calibrated_keep_counts(lambda t: next(proposals), model, X, groups, cost, table, rounds=3,
                                        target_ms=0.6 * table.dense_ms)
    assert keep in timed and keep == options[2]  # 0.3: the one timed that meets 0.6
    assert info["calibrated_ms"] == pytest.approx(0.3 * table.dense_ms)
    # where none met it, the fastest timed
    proposals, times[2] = iter(options), 0.7
    keep, _ = calibrated_keep_counts(lambda t: next(proposals), model, X, groups, cost, table, rounds=3,
                                     target_ms=0.6 * table.dense_ms)
    assert keep == options[0]


def test_calibration_stops_when_the_table_proposes_counts_it_timed_already(monkeypatch):
    from lightning_ssr.latency import calibrated_keep_counts

    model, groups, cost = _lenet()
    table = _linear_table(cost, groups)
    same = {g.name: max(1, g.size // 2) for g in groups}
    calls = []

    def clock(model, example, gs, keep, repeats=20, shared=(), dense_ms=None):
        calls.append(keep)
        return 0.8 * table.dense_ms

    monkeypatch.setattr(latency_mod, "measure_keep", clock)
    keep, info = calibrated_keep_counts(lambda t: dict(same), model, X, groups, cost, table,
                                        target_ms=0.5 * table.dense_ms)
    assert keep == same and len(calls) == 1 and info["calibration_ms"] == [0.8 * table.dense_ms]


def test_a_latency_target_through_the_callback_records_predicted_and_measured_latency(tmp_path, monkeypatch):
    import lightning.pytorch as pl

    import lightning_ssr.targets as targets_mod
    from lightning_ssr import Pruning, PruningSchedule
    from tests.lit import TinyClassifier, loader, trainer

    tables = []

    def synthetic(model, batch, groups, cost):  # deterministic: no timing in a unit test
        assert batch.shape[0] == 3  # the target's batch size
        tables.append(_linear_table(cost, groups))
        monkeypatch.setattr(latency_mod, "measure_keep", _skewed_clock(tables[-1], groups, cost))
        return tables[-1]

    monkeypatch.setattr(targets_mod, "latency_model", synthetic)
    import lightning_ssr.engine as engine_mod

    monkeypatch.setattr(engine_mod, "model_ms", lambda m, rows, batch: 1e-6 * count_cost(m, rows[:1]).macs)
    pl.seed_everything(0)
    model = TinyClassifier()
    probe = torch.randn(2, 3, 16, 16)
    dense_ms = _linear_table(count_cost(model, probe), find_channel_groups(model, probe)).dense_ms
    cb = Pruning(method="oneshot", target={"latency": 0.85 * dense_ms, "batch_size": 3},
                 schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1), verbose=False)
    trainer(tmp_path, [cb], 1).fit(model, loader())
    event = cb.events[0]
    assert event["latency_dense_ms"] == pytest.approx(dense_ms)
    assert 0.97 * 0.85 * dense_ms <= event["latency_predicted_ms"] <= 0.85 * dense_ms * 1.03
    assert event["latency_uncalibrated_ms"] > 0 and len(event["latency_calibration_ms"]) >= 1
    # the check after the prune times the pruned model (the clock: 1 ms per million MACs)
    assert event["latency_measured_ms"] == pytest.approx(1e-6 * cb.result.pruned["macs"])
    assert cb.result.pruned["macs"] < cb.result.dense["macs"]
    assert cb.result.target == {"latency": 0.85 * dense_ms, "batch_size": 3}


def test_a_missed_latency_target_is_warned_about_and_recorded(tmp_path, monkeypatch):
    import lightning.pytorch as pl

    import lightning_ssr.engine as engine_mod
    import lightning_ssr.targets as targets_mod
    from lightning_ssr import Pruning, PruningSchedule
    from tests.lit import TinyClassifier, loader, trainer

    def synthetic(model, batch, groups, cost):
        table = _linear_table(cost, groups)
        monkeypatch.setattr(latency_mod, "measure_keep", _skewed_clock(table, groups, cost))
        return table

    monkeypatch.setattr(targets_mod, "latency_model", synthetic)
    pl.seed_everything(0)
    model = TinyClassifier()
    probe = torch.randn(2, 3, 16, 16)
    asked = 0.85 * _linear_table(count_cost(model, probe), find_channel_groups(model, probe)).dense_ms
    monkeypatch.setattr(engine_mod, "model_ms", lambda model, rows, batch: 1.5 * asked)  # the clock says: too slow
    cb = Pruning(method="oneshot", target={"latency": asked, "batch_size": 3},
                 schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1), verbose=False)
    with pytest.warns(UserWarning, match=r"latency target missed: .* \+50% over"):
        trainer(tmp_path, [cb], 1).fit(model, loader())
    assert cb.events[0]["latency_target_met"] is False
    assert cb.result.events[0]["latency_measured_ms"] == pytest.approx(1.5 * asked)
    assert set(cb.events[0]["latency_load"]) == {"other_processes_cores", "cores", "threads", "cpu_quota_cores",
                                                 "quota_other_processes_cores", "crowded", "crowded_by", "threads_over"}

    class Crowded(latency_mod.OtherProcessesLoad):  # the others kept 1.5 cores busy meanwhile
        def __exit__(self, *exc):
            self.cores = 1.5

        def crowded(self, threads=None):
            return True

    class Quiet(latency_mod.OtherProcessesLoad):  # nobody else ran during the calibration
        def __exit__(self, *exc):
            self.cores = 0.0

        def crowded(self, threads=None):
            return False

    monkeypatch.setattr(engine_mod, "OtherProcessesLoad", Crowded)
    monkeypatch.setattr(targets_mod, "OtherProcessesLoad", Quiet)
    cb = Pruning(method="oneshot", target={"latency": asked, "batch_size": 3},
                 schedule=PruningSchedule(sparsify_epochs=0, finetune_epochs=1), verbose=False)
    with pytest.warns(UserWarning, match=r"\+50% over .*Other processes kept the machine busy during this timing "
                                         r"\(1.5 of the \d+ cores\): time again on a quiet one"):
        trainer(tmp_path, [cb], 1).fit(TinyClassifier(), loader())


def test_prune_oneshot_meets_a_latency_target_on_a_bare_model(monkeypatch):
    import lightning_ssr.targets as targets_mod
    from lightning_ssr import prune_oneshot

    model, groups, cost = _lenet()
    table = _linear_table(cost, groups)
    clock = _skewed_clock(table, groups, cost)
    seen = []

    def synthetic(m, batch, g, c):
        seen.append(batch.shape[0])
        return table

    monkeypatch.setattr(targets_mod, "latency_model", synthetic)
    monkeypatch.setattr(latency_mod, "measure_keep", clock)
    monkeypatch.setattr(latency_mod, "_STEADIED", None)
    import ctypes.util

    calls = []  # steady_allocator looks the C library up first
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: calls.append(name))
    report = {}
    plan = prune_oneshot(model, X, {"latency": 0.75 * table.dense_ms, "batch_size": 8}, report=report)
    assert seen == [8]
    # a library call never changes the process's allocator on its own, and says that it was not steadied
    assert calls == [] and report.get("allocator") is None
    keep = {name: len(kept) for name, kept in plan.kept.items()}
    assert 0.97 * 0.75 * table.dense_ms <= clock(model, X, groups, keep) <= 0.75 * table.dense_ms * 1.03


def test_depthwise_and_grouped_layers_are_timed_at_their_own_structure(tmp_path, monkeypatch, timings):
    from torch import nn

    from tests.nets import SmallResNeXt

    made = []
    original = latency_mod._layer_like
    monkeypatch.setattr(latency_mod, "_layer_like", lambda m, i, o: made.append((i, o, original(m, i, o))) or made[-1][2])
    model = SmallResNeXt().eval()
    x = torch.randn(2, 3, 16, 16)
    groups = find_channel_groups(model, x)
    table = latency_model(model, x, groups, count_cost(model, x), cache_dir=tmp_path)
    grouped = [layer for i, o, layer in made if isinstance(layer, nn.Conv2d) and layer.groups > 1]
    assert grouped and all(layer.groups == 4 and layer.in_channels % 4 == 0 and layer.out_channels % 4 == 0
                           for layer in grouped)
    assert table.layers["grouped"]["in"] == [4, 8, 12, 16]

    dw = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                       nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.Flatten(), nn.Linear(4 * 16 * 16, 2)).eval()
    groups = find_channel_groups(dw, x)
    cost = count_cost(dw, x)
    table = latency_model(dw, x, groups, cost, cache_dir=tmp_path)
    assert table.layers["3"]["tied"]
    full = {g.name: g.size for g in groups}
    half = {g.name: g.size // 2 if "0" in g.out_modules else g.size for g in groups}  # the depthwise pair halves
    assert table.layer_ms("3", *latency_mod.kept_widths(groups, cost, half)["3"]) == pytest.approx(
        table.layer_ms("3", 4, 4))  # the depthwise layer is looked up at its pruned width
    assert table.layer_ms("3", *latency_mod.kept_widths(groups, cost, full)["3"]) == pytest.approx(
        table.layer_ms("3", 8, 8))


def test_time_ms_repeats_until_the_minimum_duration():
    calls = []
    latency_mod.time_ms(lambda: calls.append(1), repeats=3, warmup=1, min_seconds=0.05)
    assert len(calls) > 100  # a call of microseconds is repeated until 50 ms have passed
    calls.clear()
    latency_mod.time_ms(lambda: calls.append(1), repeats=3, warmup=1)
    assert len(calls) == 4


def test_interleaved_ms_calls_the_functions_in_turn_and_times_each():
    calls = []
    out = latency_mod.interleaved_ms([lambda: calls.append("a"), lambda: calls.append("b")], repeats=4,
                                     min_seconds=0.0)
    assert calls == ["a", "b"] * 8  # 4 warm-up cycles, then 4 timed ones, one call of each per cycle
    assert len(out) == 2 and all(ms >= 0 for ms in out)
    calls.clear()
    latency_mod.interleaved_ms([lambda: calls.append("a"), lambda: calls.append("b")], repeats=1, min_seconds=0.05)
    assert len(calls) > 200 and calls[:4] == ["a", "b", "a", "b"]  # fills 50 ms twice, still in turn


def test_compare_latency_gives_back_the_models_modes():
    from lightning_ssr.latency import compare_latency

    dense, pruned = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
    dense.train()
    pruned.eval()
    out = compare_latency(dense, pruned, [1, 4], (1, 2), repeats=3)
    assert set(out["speedup"]) == {"batch_1", "batch_2"}
    for key, speedup in out["speedup"].items():  # the ratio of the two medians
        assert speedup == pytest.approx(out["dense"][key] / out["pruned"][key]) and out["pruned"][key] > 0
    assert dense.training and not pruned.training


def test_measure_keep_times_the_copy_against_the_dense_model(monkeypatch):
    from lightning_ssr.latency import measure_keep

    model, groups, _cost = _lenet()
    model.train()
    half = {g.name: g.size // 2 for g in groups}
    x = torch.randn(8, 1, 28, 28)
    assert math.isfinite(measure_keep(model, x, groups, half))
    timed = []

    def interleaved(fns, repeats, device=None, min_seconds=0.0):  # a clock that reads what it times
        outputs = [fn() for fn in fns]
        timed.append([o.shape for o in outputs])
        widths = [next(m for m in model_.modules() if isinstance(m, torch.nn.Conv2d)).out_channels
                  for model_ in (model, seen[-1])]
        return [float(w) for w in widths]

    seen = []
    real_copy = latency_mod.model_copy
    monkeypatch.setattr(latency_mod, "model_copy", lambda m, shared=(): seen.append(real_copy(m, shared)) or seen[-1])
    monkeypatch.setattr(latency_mod, "interleaved_ms", interleaved)
    relative = measure_keep(model, x, groups, half, dense_ms=1000.0)
    # the dense model's 1000 ms times the ratio measured call by call: the copy has half of conv1's 20 filters
    assert relative == pytest.approx(1000.0 * 10 / 20) and timed[0] == [torch.Size([8, 10])] * 2
    assert model.training  # its mode is given back
    assert model.conv1.weight.shape == (20, 1, 5, 5)  # and it is not pruned itself


def test_time_ms_warms_up_for_the_minimum_duration_too():
    calls = []
    latency_mod.time_ms(lambda: calls.append(1), repeats=1, warmup=1, min_seconds=0.05)
    assert len(calls) > 200  # warm-up and measurement each fill 50 ms of microsecond calls


def test_a_latency_table_timed_already_is_used_as_given(monkeypatch):
    import lightning_ssr.targets as targets_mod
    from lightning_ssr.targets import target_keep_counts

    model, groups, cost = _lenet()
    table = _linear_table(cost, groups)  # timed at batch 4
    monkeypatch.setattr(targets_mod, "latency_model", lambda *a, **k: pytest.fail("timed again"))
    monkeypatch.setattr(latency_mod, "measure_keep", _skewed_clock(table, groups, cost))
    keep, info = target_keep_counts(model, X, groups, cost, Target(latency=0.7 * table.dense_ms, batch_size=4),
                                    min_keep_counts(groups), table=table)
    assert info["dense_ms"] == table.dense_ms and sum(keep.values()) < sum(g.size for g in groups)
    with pytest.raises(ValueError, match="batch 4"):
        target_keep_counts(model, X, groups, cost, Target(latency=0.7 * table.dense_ms, batch_size=8),
                           min_keep_counts(groups), table=table)


def test_steady_allocator_fixes_glibcs_thresholds_or_changes_nothing():
    import platform

    out = latency_mod.steady_allocator()
    if platform.libc_ver()[0] == "glibc":
        assert out == {"mmap_threshold": latency_mod.STEADY_MMAP_THRESHOLD,
                       "trim_threshold": latency_mod.STEADY_TRIM_THRESHOLD}
        assert latency_mod.steady_allocator() == out  # idempotent
    else:
        assert out is None
    x = torch.randn(64, 64)
    assert torch.equal(x @ torch.eye(64), x)  # allocation still works afterwards


def test_other_processes_load_counts_the_others_cpu_time_not_this_process(monkeypatch):
    """Between two readings the machine spent 3.0 CPU seconds busy in 2.0 s, 1.0 of them this
    process's own: the others kept 1.0 core busy. With 2 threads of its own on 2 cores, crowded."""
    readings = iter([(10.0, 5.0, 100.0), (13.0, 6.0, 102.0)])
    monkeypatch.setattr(latency_mod, "_machine_cpu_seconds", lambda: next(readings))
    monkeypatch.setattr(latency_mod, "usable_cores", lambda: 2)
    monkeypatch.setattr(latency_mod, "cpu_quota", lambda: None)  # (not this machine's, if it has one)
    with latency_mod.OtherProcessesLoad() as load:
        pass
    assert load.cores == pytest.approx(1.0)
    assert load.crowded(threads=2) and not load.crowded(threads=1)
    assert load.to_dict()["other_processes_cores"] == pytest.approx(1.0) and load.to_dict()["cores"] == 2
    readings = iter([(10.0, 5.0, 100.0), (10.5, 5.0, 100.1)])  # 0.1 s: ten ticks at most, too few to judge
    monkeypatch.setattr(latency_mod, "_machine_cpu_seconds", lambda: next(readings))
    with latency_mod.OtherProcessesLoad() as short:
        pass
    assert short.cores is None and not short.crowded(threads=64)
    monkeypatch.setattr(latency_mod, "_machine_cpu_seconds", lambda: None)  # not Linux: nothing claimed
    with latency_mod.OtherProcessesLoad() as unknown:
        pass
    assert unknown.cores is None and not unknown.crowded(threads=64)


@pytest.mark.skipif(latency_mod._machine_cpu_seconds() is None, reason="needs Linux's /proc/stat to read the CPU time")
def test_other_processes_load_sees_a_busy_child_process():
    """A child process spinning for 1.5 s while this one sleeps: at least half a core of others'
    work (more where the machine is busier)."""
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    try:
        time.sleep(0.2)  # the interpreter's start is not what is measured
        with latency_mod.OtherProcessesLoad() as load:
            time.sleep(1.0)
    finally:
        child.wait(timeout=60)
    assert load.cores is not None and load.cores >= 0.5


def test_a_crowded_timing_is_said_in_the_latency_line_and_the_target_summary():
    from lightning_ssr.app.stages import latency_line
    from lightning_ssr.report import PruningResult

    result = PruningResult(method="l1", dense={"latency_ms": {"batch_1": 2.0}}, pruned={"latency_ms": {"batch_1": 1.0}})
    assert latency_line(result) == "CPU latency: batch 1: 2.000 -> 1.000 ms (2.00x)"
    result.machine["latency_load"] = {"other_processes_cores": 1.9, "cores": 2, "threads": 1, "crowded": True}
    assert latency_line(result).endswith("(other processes kept 1.9 of the 2 cores busy while timing, with this "
                                         "run's 1 threads: both times are slower than on an idle machine, their "
                                         "ratio less so)")
    event = {"latency_measured_ms": 1.0, "latency_dense_ms": 2.0, "latency_target_met": True,
             "latency_load": {"other_processes_cores": 1.4, "cores": 2, "threads": 1, "crowded": True}}
    target = PruningResult(method="l1", target={"latency": 1.1, "batch_size": 1}, events=[event])
    assert target.summary().endswith("other processes kept up to 1.4 of the 2 cores busy while it was timed: on an "
                                     "idle machine it runs faster")
    event["latency_load"]["crowded"] = False
    assert target.summary().endswith("(dense 2.000 ms)")


def _cgroup_tree(root, files):
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_cpu_quota_is_read_from_cgroup_v2_and_v1_the_tightest_on_the_way_up(tmp_path, monkeypatch):
    """``docker --cpus 1.5`` on cgroup v2 (cpu.max), a parent's tighter limit on v1
    (cfs_quota_us over cfs_period_us, usage from cpuacct), and no limit at all."""
    v2 = tmp_path / "v2"
    _cgroup_tree(v2, {"cgroup.controllers": "cpu memory", "cpu.max": "max 100000",
                      "job/cpu.max": "150000 100000", "job/cpu.stat": "usage_usec 2500000\nuser_usec 2000000\n",
                      "proc": "0::/job\n"})
    monkeypatch.setattr(latency_mod, "CGROUP_ROOT", v2)
    monkeypatch.setattr(latency_mod, "PROC_SELF_CGROUP", v2 / "proc")
    quota = latency_mod.cpu_quota()
    assert quota.cores == 1.5 and quota.group == v2 / "job" and quota.used_seconds() == 2.5

    v1 = tmp_path / "v1"
    _cgroup_tree(v1, {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000",
                      "cpu/a/cpu.cfs_quota_us": "50000", "cpu/a/cpu.cfs_period_us": "100000",
                      "cpu/a/b/cpu.cfs_quota_us": "300000", "cpu/a/b/cpu.cfs_period_us": "100000",
                      "cpuacct/a/cpuacct.usage": "7000000000", "proc": "2:cpuacct:/a/b\n1:cpu:/a/b\n0::/\n"})
    monkeypatch.setattr(latency_mod, "CGROUP_ROOT", v1)
    monkeypatch.setattr(latency_mod, "PROC_SELF_CGROUP", v1 / "proc")
    quota = latency_mod.cpu_quota()
    assert quota.cores == 0.5 and quota.group == v1 / "cpu" / "a" and quota.used_seconds() == 7.0

    monkeypatch.setattr(latency_mod, "PROC_SELF_CGROUP", v1 / "proc2")  # a namespace's path climbing out
    (v1 / "proc2").write_text("1:cpu:/../../a\n")
    assert latency_mod.cpu_quota().group == v1 / "cpu" / "a"  # read inside the mount, never above it
    monkeypatch.setattr(latency_mod, "PROC_SELF_CGROUP", v1 / "proc")
    (v1 / "cpuacct" / "a" / "cpuacct.usage").unlink()  # the usage unreadable: the quota is still known
    assert latency_mod.cpu_quota().cores == 0.5 and latency_mod.cpu_quota().used_seconds() is None
    (v1 / "cpu" / "a" / "cpu.cfs_quota_us").write_text("-1")
    (v1 / "cpu" / "a" / "b" / "cpu.cfs_quota_us").write_text("-1")
    assert latency_mod.cpu_quota() is None
    monkeypatch.setattr(latency_mod, "PROC_SELF_CGROUP", tmp_path / "absent")  # not Linux
    assert latency_mod.cpu_quota() is None


def test_a_timing_crowded_inside_its_cpu_quota_is_said(monkeypatch):
    """A 2-core quota on a 64-core machine: the machine's other processes (10 cores) leave room,
    but the group's others used 1.5 of its quota in the 2 s, so this process's 1 thread had too
    little of it. Said as the quota's, not the machine's cores."""
    from lightning_ssr.app.stages import latency_line
    from lightning_ssr.report import PruningResult

    class Group:
        cores = 2.0
        used = iter([100.0, 104.0])  # 4.0 CPU s in 2 s, 1.0 of them this process's own

        def used_seconds(self):
            return next(self.used)

    readings = iter([(10.0, 5.0, 100.0), (31.0, 6.0, 102.0)])  # the machine: 21 s busy, 1 of them own
    monkeypatch.setattr(latency_mod, "_machine_cpu_seconds", lambda: next(readings))
    monkeypatch.setattr(latency_mod, "usable_cores", lambda: 64)
    monkeypatch.setattr(latency_mod, "cpu_quota", Group)
    with latency_mod.OtherProcessesLoad() as load:
        pass
    assert load.cores == pytest.approx(10.0) and load.quota_other_cores == pytest.approx(1.5)
    assert load.crowded(threads=1) and not load.crowded(threads=0)
    record = {**load.to_dict(), "threads": 1, "crowded": True, "crowded_by": load._crowded_by(1)}
    assert record["crowded_by"] == "quota" and record["cpu_quota_cores"] == 2.0
    result = PruningResult(method="l1", dense={"latency_ms": {"batch_1": 2.0}}, pruned={"latency_ms": {"batch_1": 1.0}},
                           machine={"latency_load": record})
    assert "(other processes kept 1.5 of the group's 2-core CPU quota busy while timing" in latency_line(result)


def test_own_threads_over_the_quota_or_an_unreadable_usage_blame_no_other_process(monkeypatch):
    """16 threads under a 2-core quota, the group otherwise idle: the timing is slow by its own
    doing (recorded as threads_over), not crowded by others. A quota whose usage cannot be read
    says nothing about the others."""
    class Group:
        cores = 2.0

        def __init__(self, used):
            self.used = iter(used)

        def used_seconds(self):
            return next(self.used)

    for used, others in (([100.0, 102.0], 0.0), ([None, None], None)):  # 2 s of the group's: all this one's
        readings = iter([(10.0, 5.0, 100.0), (12.0, 7.0, 102.0)])
        monkeypatch.setattr(latency_mod, "_machine_cpu_seconds", lambda readings=readings: next(readings))
        monkeypatch.setattr(latency_mod, "usable_cores", lambda: 64)
        monkeypatch.setattr(latency_mod, "cpu_quota", lambda used=used: Group(used))
        monkeypatch.setattr(torch, "get_num_threads", lambda: 16)
        with latency_mod.OtherProcessesLoad() as load:
            pass
        assert load.quota_cores == 2.0 and load.quota_other_cores == others
        record = load.to_dict()
        assert not record["crowded"] and record["crowded_by"] is None and record["threads_over"]
