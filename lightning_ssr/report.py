"""The pruning result (one schema, written as ``result.json``), per-layer tables and latency."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .cost import ModelCost
from .files import atomic_write_text
from .latency import LATENCY_MISS, others_fraction, others_share

RESULT_SCHEMA_VERSION = 1


def machine_info() -> dict:
    """The machine a figure was measured on: CPU model, cores, threads, torch, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    return info


def portable_paths(obj, root: str | os.PathLike):
    """``obj`` with this machine's paths made portable: those under ``root`` relative to it, the
    home directory as ``~`` and the temporary directory as ``<tmp>`` (for files that are shared)."""
    if isinstance(obj, dict):
        return {k: portable_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [portable_paths(v, root) for v in obj]
    if isinstance(obj, Path):
        obj = str(obj)
    if isinstance(obj, str) and obj.startswith(os.sep):
        for base, name in ((str(Path(root).resolve()), "."), (tempfile.gettempdir(), "<tmp>"),
                           (os.path.expanduser("~"), "~")):
            if obj == base or obj.startswith(base + os.sep):
                return name + obj[len(base):]
    return obj


def write_json(path: str | os.PathLike, obj, relative_to: str | os.PathLike | None = None) -> Path:
    """Write ``obj`` as indented JSON, atomically; with ``relative_to``, its paths made
    :func:`portable_paths`."""
    if relative_to is not None:
        obj = portable_paths(obj, relative_to)
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def part_of_test_split(limit, each: bool = False) -> str:
    """How a summary says that its accuracies read ``trainer.limit_test_batches`` of the test split
    (``each``: of each of several splits)."""
    return f"part of {'its' if each else 'the'} test split (trainer.limit_test_batches={limit})"


@dataclass
class PruningResult:
    """Everything one pruning run produced, as plain data (``result.json``).

    ``dense`` and ``pruned`` hold ``macs``, ``params`` and, where measured, ``accuracy``
    (fraction, test split), ``val_accuracy`` and ``latency_ms`` (``{"batch_<n>": ms}``);
    ``evaluation_limits``, where the accuracies come from part of a split (the command's
    ``trainer.limit_test_batches`` / ``limit_val_batches``).
    ``layers`` is the per-layer table (``name``, ``before``/``after`` output channels,
    ``macs_before``/``macs_after``, ``params_before``/``params_after``); ``plan`` is
    :meth:`PruningPlan.to_dict`; ``events`` lists each prune event (``epoch``, ``step``,
    ``macs``, ``params``, ``keep``: the channels kept per group, ``allocation``: where those
    counts came from, ``learned``: the counts the method's own criterion held at the prune);
    ``trajectory`` lists, for each periodic update before the first prune, the channels the
    method's criterion kept per group (``step``, ``kept``); ``timings`` holds wall times in
    seconds; ``machine`` is :func:`machine_info` (and ``latency_load``, how busy other processes
    kept the machine while the command timed the models: :class:`~lightning_ssr.latency.OtherProcessesLoad`).
    ``status`` is ``"ok"``, ``"failed"`` or ``"interrupted"`` (Ctrl-C, SIGTERM; then ``error``
    says why, an interruption with the checkpoint to go on from); the command writes
    ``"running"`` as a run starts, which a run killed before it could record its end leaves. ``warnings`` holds what the
    pruning run warned of, in order (a sparsify phase too short to update, a missed latency
    target, a fit that ended before its prune, ...), so that a run read later says it too.
    """

    method: str
    config: dict = field(default_factory=dict)
    target: dict | None = None
    dense: dict = field(default_factory=dict)
    pruned: dict = field(default_factory=dict)
    layers: list = field(default_factory=list)
    plan: dict | None = None
    events: list = field(default_factory=list)
    trajectory: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)
    machine: dict = field(default_factory=machine_info)
    status: str = "ok"
    error: str | None = None
    warnings: list = field(default_factory=list)

    @property
    def macs_reduction(self) -> float | None:
        return _ratio(self.dense.get("macs"), self.pruned.get("macs"))

    @property
    def params_reduction(self) -> float | None:
        return _ratio(self.dense.get("params"), self.pruned.get("params"))

    @property
    def accuracy_drop_points(self) -> float | None:
        d, p = self.dense.get("accuracy"), self.pruned.get("accuracy")
        return None if d is None or p is None else 100.0 * (d - p)

    def to_dict(self) -> dict:
        out = {"schema_version": RESULT_SCHEMA_VERSION, **asdict(self)}
        out.update(macs_reduction=self.macs_reduction, params_reduction=self.params_reduction,
                   accuracy_drop_points=self.accuracy_drop_points)
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> PruningResult:
        if not isinstance(data, Mapping) or "schema_version" not in data:
            what = "an object without schema_version" if isinstance(data, Mapping) else f"a JSON {type(data).__name__}"
            raise ValueError(f"not a pruning result: {what} (a result.json holds schema_version "
                             f"{RESULT_SCHEMA_VERSION}, method, dense, pruned, ...)")
        version = data.get("schema_version")
        if version != RESULT_SCHEMA_VERSION:
            raise ValueError(f"result schema_version {version!r} is not supported (this version reads "
                             f"{RESULT_SCHEMA_VERSION})")
        _check_fields(data)
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``result.json`` atomically."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningResult:
        try:
            data = json.loads(Path(path).read_text())
        except UnicodeDecodeError as err:  # (a binary file: a checkpoint given for the run's result.json)
            raise ValueError(f"result file {str(path)!r} is unreadable: it is not text (a checkpoint?); give the "
                             "run's result.json") from err
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"result file {str(path)!r} is unreadable: {err}") from err
        try:
            return cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"result file {str(path)!r}: {err}") from err

    def summary(self) -> str:
        """The final summary lines: reductions and, where measured, accuracy."""
        # (a run that ended before its prune holds the dense model as "pruned": 1.0x is not a result)
        unpruned = self.status != "ok" and self.pruned.get("macs") == self.dense.get("macs")
        baseline = self.method == "none"  # (pruning=none: the equal-budget dense baseline)
        if baseline:
            lines = ["none: not pruned (the equal-budget baseline: the dense model trained on for the same epochs)"]
        elif self.macs_reduction and not unpruned:
            lines = [f"{self.method}: {self.macs_reduction:.1f}x fewer MACs, {self.params_reduction:.1f}x fewer parameters"]
        else:
            lines = [f"{self.method}: not pruned"]
        # (of the model this run started from: a plan of a model pruned again holds the first one's sizes: review)
        total = self.dense.get("prunable_channels")
        if (self.target or {}).get("filters") and self.events and total and not unpruned:
            # (the target's measure: the per-layer table counts a residual stream once per layer that
            # writes it, which put resnet50 at 0.675 of its filters for a 0.5 target: probe)
            kept = sum(self.events[-1].get("keep", {}).values())
            lines[0] += (f"; {kept} of {total} prunable channels kept ({kept / total:.1%}: the filters target's "
                         "measure, where channels coupled across layers count once)")
        if self.status != "ok":  # a failed or interrupted run says so, and why, before any figure
            error = (self.error or "no error recorded").strip().splitlines()
            how = {"interrupted": "was interrupted", "running": "has not ended"}.get(self.status, self.status)
            lines[0] += f" (the run {how}: {error[0] if error else 'no error recorded'})"
        if self.accuracy_drop_points is not None:
            drop = round(self.accuracy_drop_points, 2)  # as printed: -0.001 is no change
            change = f"{drop:.2f} points lower" if drop > 0 else f"{-drop:.2f} points higher" if drop < 0 else "the same"
            after = "trained on" if baseline else "not pruned" if unpruned else "pruned"  # (the model it ended with)
            part = (self.pruned.get("evaluation_limits") or {}).get("limit_test_batches")
            lines.append(f"test accuracy: dense {100 * self.dense['accuracy']:.2f}% -> {after} "
                         f"{100 * self.pruned['accuracy']:.2f}% ({change})"
                         + (f", on {part_of_test_split(part)}" if part is not None
                            else ""))
        if self.warnings:  # (printed when they were given; the summary says they were)
            lines.append(f"{len(self.warnings)} warning{'s' if len(self.warnings) > 1 else ''} during the run "
                         "(kept in the result's 'warnings')")
        timed = [e for e in self.events if e.get("latency_measured_ms") is not None]
        if timed and (self.target or {}).get("latency"):  # a latency target: asked, measured, met or not
            e, asked = timed[-1], self.target["latency"]
            over = e["latency_measured_ms"] / asked - 1
            verdict = (f"missed ({over:+.0%})" if not e.get("latency_target_met") else
                       f"met ({over:+.0%}, within the {LATENCY_MISS:.0%} a timing may run over)" if over > 0 else "met")
            busy = [load for load in (e.get("latency_calibration_load"), e.get("latency_load")) if load and
                    load.get("crowded")]
            batch = self.target.get("batch_size", 1)
            # the end's timing of the finished model (the command's latency.batch_sizes), beside the prune's
            end = (self.pruned.get("latency_ms") or {}).get(f"batch_{batch}")  # (timed on the CPU)
            end = end if e.get("latency_device") == "cpu" else None  # a GPU-timed target: not comparable
            lines.append(f"latency target {verdict}: {e['latency_measured_ms']:.3f} ms measured for {asked:.3f} ms "
                         f"asked per batch of {batch} (dense {e['latency_dense_ms']:.3f} ms)"
                         + (f"; other processes kept up to {others_share(max(busy, key=others_fraction))} busy while "
                            "it was timed: on an idle machine it runs faster"
                            if busy else "")
                         + (f"; timed at the prune, in the fit. The finished model, timed again at the end beside "
                            f"the dense one: {end:.3f} ms ({abs(end / asked - 1):.0%} {'below' if end <= asked else 'above'} the "
                            "target)"
                            if isinstance(end, (int, float)) else ""))
        return "\n".join(lines)


RESULT_STATUSES = ("ok", "failed", "interrupted", "running")


def _check_fields(data: Mapping) -> None:
    """What a result's figures are read as, checked where it is read (a result.json edited by hand
    made the sweep's report fail with a TypeError naming no file, or said "not pruned" of a run
    whose dense figures were gone)."""
    missing = [k for k in ("method", "dense", "pruned") if k not in data]
    if missing:
        raise ValueError(f"it holds no {', '.join(missing)} (a result.json holds method, dense, pruned, ...)")
    if data.get("status", "ok") not in RESULT_STATUSES:
        raise ValueError(f"status {data.get('status')!r} is not one of {', '.join(RESULT_STATUSES)}")
    for side in ("dense", "pruned"):
        figures = data[side]
        if not isinstance(figures, Mapping):
            # (a ValueError, as every unreadable result: callers catch that)
            raise ValueError(f"{side} is a {type(figures).__name__}, not a mapping of figures")  # noqa: TRY004
        for key in ("macs", "params", "accuracy", "val_accuracy"):
            value = figures.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"{side}.{key} is {value!r}, not a number")


def _ratio(a, b) -> float | None:
    return None if not a or not b else float(a) / float(b)


def layer_rows(before: ModelCost, after: ModelCost) -> list[dict]:
    """One row per conv/linear layer: output channels, MACs and params before and after."""
    rows = []
    for name, b in before.layers.items():
        a = after.layers.get(name)
        rows.append({
            "name": name,
            "before": b.out_channels,
            "after": a.out_channels if a else 0,
            "macs_before": b.macs,
            "macs_after": a.macs if a else 0,
            "params_before": b.params,
            "params_after": a.params if a else 0,
        })
    return rows


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def format_layer_table(rows: Sequence[dict], before: ModelCost, after: ModelCost) -> str:
    header = f"{'layer':<24} {'filters':>13} {'MACs':>19} {'params':>19}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['name']:<24} {r['before']:>5} -> {r['after']:<5} "
            f"{_human(r['macs_before']):>8} -> {_human(r['macs_after']):<8} "
            f"{_human(r['params_before']):>8} -> {_human(r['params_after']):<8}")
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<24} {'':>13} {_human(before.macs):>8} -> {_human(after.macs):<8} "
        f"{_human(before.params):>8} -> {_human(after.params):<8}")
    lines.append(f"{before.macs / max(after.macs, 1):.1f}x fewer MACs, "
                 f"{before.params / max(after.params, 1):.1f}x fewer parameters")
    return "\n".join(lines)
