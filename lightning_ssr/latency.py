"""Measured latency as a function of the kept channels, for latency targets.

:func:`latency_model` times every conv/linear layer of a model on its own, at the model's batch
size, device and dtype, for a few widths of its input and output channels (a grid), and times
the whole dense model once. A :class:`LatencyModel` then predicts the model's latency for any
per-group keep counts: the dense model's time scaled by the table's time at the kept widths
(interpolated bilinearly from the grid, plus the rest of the dense time that the layers do not
account for: norms, activations, pooling) over the table's time at the full widths. Layer
timings are cached on disk per (device, dtype, batch, layer shape, widths), so a second
allocation on the same machine measures nothing.

Layers timed alone do not add up to a whole network: a small layer's fixed cost, the norms and
activations that shrink with the channels, and the library's padding of odd widths all differ.
:func:`calibrated_keep_counts` therefore checks the allocation against the clock: it times a
copy of the model pruned to the chosen counts (call by call in turn with the dense model, as a
ratio to it, so that the machine's drifting speed cancels), adds that (table time, measured time) pair to the
model's calibration points, and allocates again until a timed copy runs within 3% of the target.
Between calibration points the prediction interpolates the measured times linearly in the table's
time. The counts it returns were always timed.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import posixpath
import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .cost import ModelCost, kept_widths
from .files import atomic_write_text
from .modes import eval_mode
from .structure.surgery import dry_run, model_copy

#: how far above a latency target the pruned model may run and still meet it (the engine warns
#: beyond it; the timings of one machine repeat within a few percent with the allocator steadied,
#: not better)
LATENCY_MISS = 0.10

#: fractions of a layer's width at which it is timed
GRID = (0.125, 0.25, 0.5, 0.75, 1.0)


def cache_root() -> Path:
    """The project's cache: ``$LIGHTNING_SSR_CACHE``, else ``~/.cache/lightning_ssr``."""
    return Path(os.environ.get("LIGHTNING_SSR_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lightning_ssr")))


def default_cache_dir() -> Path:
    return cache_root() / "latency"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"


#: seconds a whole-model timing runs at least (more repeats for fast models: sub-millisecond
#: calls on a shared CPU need hundreds of repeats for a stable median)
WHOLE_MODEL_SECONDS = 0.3
#: seconds one layer's timing at one width runs at least
LAYER_SECONDS = 0.02
#: a table whose layers at full width take longer than this many times the whole dense model was
#: timed while the machine was busy (or is stale): its layers are timed again, bypassing the cache
INCONSISTENT_TABLE = 1.5


def time_ms(fn, repeats: int = 20, warmup: int = 3, device: torch.device | None = None,
            min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds (CUDA synchronized), over ``repeats`` calls or
    as many as fill ``min_seconds``, whichever is more (at most 5,000). The warm-up, too, lasts
    ``warmup`` calls or ``min_seconds``: a freshly rebuilt model runs up to 40% slower for its first
    few hundred milliseconds (the math library's kernel caches and memory)."""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        start, done = time.perf_counter(), 0
        while done < warmup or (time.perf_counter() - start < min_seconds and done < 5000):
            fn()
            done += 1
        sync()
        times = []
        start = time.perf_counter()
        while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 5000):
            t = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity: ``taskset``, a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _machine_cpu_seconds() -> tuple[float, float, float] | None:
    """(CPU seconds the CPUs this process may run on have spent busy, those of this process, wall
    seconds), or ``None`` where they are not readable (Linux's ``/proc/stat`` is read, one line per
    CPU; a CPU quota is :func:`cpu_quota`'s)."""
    try:
        cpus = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        busy = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *fields = line.split()
                if name in cpus:
                    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
                    busy += user + nice + system + irq + softirq + steal  # (guest time is in user's)
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    own = os.times()
    return busy / hz, own.user + own.system, time.perf_counter()


#: where Linux mounts the cgroup hierarchies, and the file naming this process's groups
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class CpuQuota:
    """A limit on the CPU time of this process's control group (``docker --cpus``, a Kubernetes
    CPU limit, systemd's ``CPUQuota``): ``cores``' worth per second, shared by every process of
    ``group`` (the tightest limit on the way from this process's group to the root)."""

    cores: float
    group: Path
    usage_file: Path  # the group's CPU time: cgroup v2 cpu.stat (usage_usec), v1 cpuacct.usage (ns)

    def used_seconds(self) -> float | None:
        """CPU seconds every process of the group has used so far (``None``: not readable)."""
        try:
            text = self.usage_file.read_text()
            if self.usage_file.name == "cpu.stat":
                fields = dict(line.split() for line in text.splitlines() if line.strip())
                return int(fields["usage_usec"]) / 1e6
            return int(text) / 1e9
        except (OSError, ValueError, KeyError):
            return None


def _cgroup_paths() -> dict[str, str]:
    """This process's group per controller (``""``: the cgroup v2 hierarchy), from /proc/self/cgroup."""
    paths = {}
    try:
        for line in PROC_SELF_CGROUP.read_text().splitlines():
            _id, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    except (OSError, ValueError):
        pass
    return paths


def _walk_up(mount: Path, path: str) -> list[Path]:
    """The group's directory under ``mount`` and its parents up to the mount (a container sees its
    own group as the root; a path that climbs out of it with ``..`` stays at the mount)."""
    group = mount / posixpath.normpath("/" + path).lstrip("/")
    return [group, *[p for p in group.parents if p == mount or mount in p.parents]]


def cpu_quota() -> CpuQuota | None:
    """The tightest CPU quota on this process's control groups (cgroup v2's ``cpu.max``, or v1's
    ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us``), ``None`` without one or off Linux. A quota
    without a cpuset leaves every CPU in the affinity while granting only a part of their time."""
    paths, found = _cgroup_paths(), []
    if "" in paths:  # cgroup v2 (unified; under "unified" on a hybrid v1 machine)
        mount = CGROUP_ROOT if (CGROUP_ROOT / "cgroup.controllers").is_file() else CGROUP_ROOT / "unified"
        for group in _walk_up(mount, paths[""]):
            try:
                limit, period = (group / "cpu.max").read_text().split()
                if limit != "max" and int(limit) > 0 and int(period) > 0:
                    found.append(CpuQuota(int(limit) / int(period), group, group / "cpu.stat"))
            except (OSError, ValueError):
                continue
    if "cpu" in paths:  # cgroup v1: the quota under the cpu controller, the usage under cpuacct
        mount = next((CGROUP_ROOT / name for name in ("cpu", "cpu,cpuacct") if (CGROUP_ROOT / name).is_dir()), None)
        acct = next((CGROUP_ROOT / name for name in ("cpuacct", "cpu,cpuacct") if (CGROUP_ROOT / name).is_dir()), None)
        for group in _walk_up(mount, paths["cpu"]) if mount is not None else []:
            try:
                quota = int((group / "cpu.cfs_quota_us").read_text())
                period = int((group / "cpu.cfs_period_us").read_text())
            except (OSError, ValueError):
                continue
            if quota > 0 and period > 0:  # (without cpuacct the usage is unknown: the quota is still said)
                usage = (acct or mount) / group.relative_to(mount) / "cpuacct.usage"
                found.append(CpuQuota(quota / period, group, usage))
    return min(found, key=lambda q: q.cores, default=None)


#: the shortest block :class:`OtherProcessesLoad` judges (the kernel's CPU time moves in 10 ms ticks)
MIN_LOAD_WINDOW_S = 0.25
#: cores of slack in its judgements: ten 10 ms ticks either way over that shortest block
LOAD_SLACK_CORES = 0.25


class OtherProcessesLoad:
    """How busy the rest of the machine was while the ``with`` block ran: ``cores``, the CPU time
    every other process (and a virtual machine's host, as steal time) used on the CPUs this one
    may run on, per second of the block: the cores they kept busy on average (under DDP, the
    other ranks are among them). ``None`` where the CPU time cannot be read (not Linux) or the
    block was shorter than :data:`MIN_LOAD_WINDOW_S`. Under a CPU quota (:func:`cpu_quota`),
    ``quota_cores`` is its size and ``quota_other_cores`` the part of it the group's other
    processes used. Timings taken while the others plus this process's threads asked for more
    than the usable cores, or more than the quota, were slowed by them (:meth:`crowded`)."""

    cores: float | None = None
    quota_cores: float | None = None
    quota_other_cores: float | None = None

    def __enter__(self) -> OtherProcessesLoad:  # noqa: PYI034 (typing.Self is Python 3.11; 3.10 is supported)
        self._quota = cpu_quota()
        self._start = _machine_cpu_seconds()
        self._quota_start = self._quota.used_seconds() if self._quota is not None else None
        return self

    def __exit__(self, *exc) -> None:
        end = _machine_cpu_seconds()
        quota_end = self._quota.used_seconds() if self._quota is not None else None
        # the kernel counts CPU time in ticks (10 ms at 100 Hz): a shorter block says nothing
        if self._start is None or end is None or end[2] - self._start[2] < MIN_LOAD_WINDOW_S:
            return
        (busy0, own0, t0), (busy1, own1, t1) = self._start, end
        self.cores = max(0.0, (busy1 - busy0) - (own1 - own0)) / (t1 - t0)
        if self._quota is not None:
            self.quota_cores = self._quota.cores
            if self._quota_start is not None and quota_end is not None:
                self.quota_other_cores = max(0.0, (quota_end - self._quota_start) - (own1 - own0)) / (t1 - t0)

    def crowded(self, threads: int | None = None) -> bool:
        """The other processes and this one's ``threads`` (torch's, by default) asked for more
        cores than the machine has, or for more than the group's CPU quota (by a quarter of a
        core: the clock's ticks are coarse)."""
        return self._crowded_by(threads) is not None

    def _crowded_by(self, threads: int | None = None) -> str | None:
        """``"cores"`` or ``"quota"``: what the others and this process asked for more of; ``None``
        when the others did not crowd it. (More threads than cores, or than the quota, slow a timing
        on their own, with the machine quiet: :meth:`to_dict` records that as ``threads_over``.)"""
        if self.cores is None:
            return None
        threads = torch.get_num_threads() if threads is None else threads
        if _others_crowd(self.cores, threads, usable_cores()):
            return "cores"
        if self.quota_cores is not None and self.quota_other_cores is not None and _others_crowd(
                self.quota_other_cores, threads, self.quota_cores):
            return "quota"
        return None

    def to_dict(self) -> dict:
        threads, cores, crowded_by = torch.get_num_threads(), usable_cores(), self._crowded_by()
        room = min(cores, self.quota_cores or math.inf)
        return {"other_processes_cores": self.cores, "cores": cores, "threads": threads,
                "cpu_quota_cores": self.quota_cores, "quota_other_processes_cores": self.quota_other_cores,
                "crowded": crowded_by is not None, "crowded_by": crowded_by,
                "threads_over": threads > room + LOAD_SLACK_CORES}


def _others_crowd(others: float, threads: int, room: float) -> bool:
    """Others kept part of ``room`` (cores, or a quota's) busy, and with this process's threads
    (at most the room: more slow it alone) asked for more than there is, by a quarter of a core
    (the clock's ticks are coarse)."""
    return others > LOAD_SLACK_CORES and others + min(threads, room) > room + LOAD_SLACK_CORES


def others_fraction(load: Mapping) -> float:
    """How much of what it could use a crowded timing's others took (of the cores, or of the quota
    they filled), from a record of :meth:`OtherProcessesLoad.to_dict`."""
    if load.get("crowded_by") == "quota":
        return load["quota_other_processes_cores"] / load["cpu_quota_cores"]
    return load["other_processes_cores"] / load["cores"]


def others_share(load: Mapping) -> str:
    """What the other processes took while a crowded timing ran, from a record of
    :meth:`OtherProcessesLoad.to_dict`: ``"1.9 of the 2 cores"``, or under a CPU quota they
    filled, ``"1.2 of the group's 2-core CPU quota"``."""
    if load.get("crowded_by") == "quota":
        return f"{load['quota_other_processes_cores']:.1f} of the group's {load['cpu_quota_cores']:.3g}-core CPU quota"
    return f"{load['other_processes_cores']:.1f} of the {load['cores']} cores"


#: glibc's mallopt parameters, and the values :func:`steady_allocator` fixes them at
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
STEADY_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: every smaller block comes from the heap
STEADY_TRIM_THRESHOLD = 1024 * 1024 * 1024  # freed heap memory up to 1 GiB stays with the process


#: what :func:`steady_allocator` set in this process (``None``: nothing, or not asked)
_STEADIED: dict | None = None


def steadied_allocator() -> dict | None:
    """The allocator thresholds :func:`steady_allocator` fixed in this process, ``None`` if none
    (recorded beside latency figures: timings taken without it drift more)."""
    return _STEADIED


def steady_allocator() -> dict | None:
    """Fix the C allocator's thresholds for the rest of the process, so that timings repeat.

    Opt-in, for processes that time models: the command and the benchmarks call it, the library
    never does on its own (it changes malloc for the whole process). Call it yourself before a
    latency target if your timings drift.

    glibc's malloc moves its mmap threshold as blocks come and go: after models of other widths
    have been built and freed, the same forward pass can switch from reused heap memory to fresh
    page-faulted mappings. Measured on a 2-core machine, one pruned ResNet-20's time relative to
    the dense model drifted from 0.25 to 0.37 within a minute; with the thresholds fixed, repeats
    agreed within 3%. The cost: up to 1 GiB of freed memory is kept by the process instead of
    going back to the system. Returns the values set, or ``None`` where the C library is not
    glibc (nothing is changed there)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        libc = None
    if libc is None or not hasattr(libc, "mallopt") or not hasattr(libc, "gnu_get_libc_version"):
        return None
    if not (libc.mallopt(_M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD)
            and libc.mallopt(_M_TRIM_THRESHOLD, STEADY_TRIM_THRESHOLD)):
        return None
    global _STEADIED
    _STEADIED = {"mmap_threshold": STEADY_MMAP_THRESHOLD, "trim_threshold": STEADY_TRIM_THRESHOLD}
    return dict(_STEADIED)


def interleaved_ms(fns: Sequence[Callable[[], object]], repeats: int = 10, device: torch.device | None = None,
                   min_seconds: float = WHOLE_MODEL_SECONDS) -> list[float]:
    """Median wall time in milliseconds of each of ``fns``, called in turn (one call of each per
    cycle, CUDA synchronized), for ``repeats`` cycles or as many as fill ``min_seconds``, whichever
    is more (at most 5,000), after a warm-up of the same length.

    For models of milliseconds, compare them with this rather than with one timing after another:
    on a shared machine the speed drifts within seconds, and calls made in turn see the same
    drift, where blocks of calls timed a second apart do not. (For models of microseconds, whose
    calls slow when another model runs between them, time blocks: :func:`report.compare_latency`.)"""
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    times: list[list[float]] = [[] for _ in fns]
    with torch.no_grad():
        for timed in (False, True):  # the warm-up, then the same again, timed
            start, cycles = time.perf_counter(), 0
            while cycles < repeats or (time.perf_counter() - start < min_seconds and cycles < 5000):
                for fn, out in zip(fns, times, strict=True):
                    t = time.perf_counter()
                    fn()
                    sync()
                    if timed:
                        out.append(time.perf_counter() - t)
                cycles += 1
    return [1000 * statistics.median(t) for t in times]


def model_ms(model: nn.Module, rows: torch.Tensor, batch_size: int) -> float:
    """Milliseconds of one call of ``model`` (in eval mode) on a batch of ``batch_size`` of ``rows``
    (:func:`timing_batch`), on their device, timed for at least :data:`WHOLE_MODEL_SECONDS`."""
    batch = timing_batch(rows, batch_size)
    with eval_mode(model):
        return time_ms(lambda: model(batch), device=batch.device, min_seconds=WHOLE_MODEL_SECONDS)


def timing_batch(example: torch.Tensor, batch_size: int) -> torch.Tensor:
    """A batch of ``batch_size`` rows for timing: ``example``'s rows, repeated in turn if it has
    fewer. Use real inputs where possible: max pooling and activations run measurably faster (by
    20% on a CPU) on a batch of one repeated image than on distinct images."""
    if example.shape[0] >= batch_size:
        return example[:batch_size].contiguous()
    reps = math.ceil(batch_size / example.shape[0])
    return example.repeat(reps, *([1] * (example.dim() - 1)))[:batch_size].contiguous()


def _grid(width: int, varies: bool, multiple: int = 1) -> list[int]:
    """Widths to time: fractions of ``width`` (multiples of ``multiple``, for grouped convs)."""
    if not varies or width <= multiple:
        return [width]
    return sorted({max(multiple, math.ceil(width * f / multiple) * multiple) for f in GRID})


def _depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and \
        module.groups == module.in_channels == module.out_channels


def _layer_like(module: nn.Module, in_w: int, out_w: int) -> nn.Module:
    if isinstance(module, nn.Linear):
        return nn.Linear(in_w, out_w, bias=module.bias is not None)
    groups = in_w if _depthwise(module) else module.groups  # depthwise: in, out and groups move together
    kwargs = {"kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                  "dilation": module.dilation, "groups": groups, "bias": module.bias is not None}
    if module.transposed:
        return type(module)(in_w, out_w, output_padding=module.output_padding, **kwargs)
    return type(module)(in_w, out_w, **kwargs)


@dataclass
class LatencyModel:
    """Predicts a model's latency (ms) from per-group keep counts (see the module docstring)."""

    batch_size: int
    device: str
    dense_ms: float
    rest_ms: float  # dense time not in the layer table
    layers: dict[str, dict] = field(default_factory=dict)  # name -> {"in": [...], "out": [...], "ms": [[...]]}
    # name -> elements per output channel (spatial size): the rest (norms, activations, pooling)
    # runs on the layers' outputs, and shrinks with them; without these it is a constant
    outputs: dict[str, float] = field(default_factory=dict)
    # [table_ms, measured_ms] of pruned copies of the model (calibrated_keep_counts)
    calibration: list[list[float]] = field(default_factory=list)

    def layer_ms(self, name: str, in_w: float, out_w: float) -> float:
        t = self.layers[name]
        if t.get("tied"):  # depthwise: one width, that of its (pruned) outputs
            in_w = out_w
        xs, ys, ms = t["in"], t["out"], t["ms"]
        i, fi = _bracket(xs, in_w)
        j, fj = _bracket(ys, out_w)
        i2, j2 = min(i + 1, len(xs) - 1), min(j + 1, len(ys) - 1)
        return ((1 - fi) * (1 - fj) * ms[i][j] + fi * (1 - fj) * ms[i2][j] + (1 - fi) * fj * ms[i][j2]
                + fi * fj * ms[i2][j2])

    def table_ms(self, groups, cost: ModelCost, keep: Mapping[str, int]) -> float:
        """The table's time of the kept widths: the sum over layers, plus the rest (in proportion to
        the elements the layers output, when ``outputs`` is known)."""
        widths = kept_widths(groups, cost, keep)
        rest = self.rest_ms
        if self.outputs:
            full = sum(cost.layers[n].out_channels * e for n, e in self.outputs.items())
            rest *= sum(widths[n][1] * e for n, e in self.outputs.items()) / full if full else 1.0
        return rest + sum(self.layer_ms(n, *widths[n]) for n in self.layers)

    def predict(self, groups, cost: ModelCost, keep: Mapping[str, int]) -> float:
        """The model's time for ``keep``: the table's time, mapped through the measured points (the
        dense model, and the calibration points): linear between neighbouring points, and
        proportional to the nearest point beyond them."""
        table = self.table_ms(groups, cost, keep)
        full = self.rest_ms + sum(float(t["ms"][-1][-1]) for t in self.layers.values())
        points = sorted([(full, self.dense_ms), *((float(a), float(b)) for a, b in self.calibration)])
        if table <= points[0][0]:
            return table * points[0][1] / points[0][0]
        if table >= points[-1][0]:
            return table * points[-1][1] / points[-1][0]
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            if table <= x1:
                return y0 + (y1 - y0) * (table - x0) / (x1 - x0) if x1 > x0 else y1
        return table * points[-1][1] / points[-1][0]  # not reached


def _bracket(xs: Sequence[int], x: float) -> tuple[int, float]:
    """Index ``i`` and weight ``f`` such that ``x ~ xs[i] + f * (xs[i+1] - xs[i])``."""
    if len(xs) == 1 or x <= xs[0]:
        return 0, 0.0
    for i in range(len(xs) - 1):
        if x <= xs[i + 1]:
            return i, (x - xs[i]) / (xs[i + 1] - xs[i])
    return len(xs) - 1, 0.0


def _read_cache(path: Path) -> dict:
    """The layer timings cached at ``path``; an unreadable file (truncated by an interrupted run, or
    not a timing cache) is said and timed anew, then written again whole."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise TypeError(f"it holds a {type(data).__name__}, not the mapping of layer timings")
        return data
    except (OSError, ValueError, TypeError) as err:
        warnings.warn(f"the latency cache {str(path)!r} is unreadable ({type(err).__name__}: {err}); its layers are "
                      "timed again and the file is written anew", stacklevel=3)
        return {}


def latency_model(model: nn.Module, example: torch.Tensor, groups, cost: ModelCost,
                  cache_dir: str | os.PathLike | None = None, repeats: int = 20) -> LatencyModel:
    """Time ``model`` (on ``example``'s batch size, device and dtype) and each of its layers on a
    width grid; ``cache_dir`` (default ``~/.cache/lightning_ssr/latency``) keeps layer timings."""
    device, dtype, batch = example.device, example.dtype, example.shape[0]
    inputs: dict[str, tuple[int, ...]] = {}
    outputs: dict[str, float] = {}
    names = {m: n for n, m in model.named_modules()}
    def record(module, args, output):  # returns None: the output is left as it is
        inputs.setdefault(names[module], tuple(args[0].shape[2:]))
        outputs.setdefault(names[module], float(math.prod(output.shape[2:])))

    handles = [m.register_forward_hook(record) for m in model.modules() if names.get(m) in cost.layers]
    try:
        with eval_mode(model):
            with torch.no_grad():
                model(example[:1])
            dense_ms = time_ms(lambda: model(example), repeats, device=device, min_seconds=WHOLE_MODEL_SECONDS)
    finally:
        for h in handles:
            h.remove()
    cache_path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache_path / "layers.json"
    cache = _read_cache(cache_file)
    layers = _layer_tables(model, cost, inputs, groups, device, dtype, batch, repeats, cache, fresh=False)
    if sum(float(t["ms"][-1][-1]) for t in layers.values()) > INCONSISTENT_TABLE * dense_ms:
        layers = _layer_tables(model, cost, inputs, groups, device, dtype, batch, repeats, cache, fresh=True)
    atomic_write_text(cache_file, json.dumps(cache))
    full = {n: float(t["ms"][-1][-1]) for n, t in layers.items()}
    return LatencyModel(batch_size=batch, device=device_name(device), dense_ms=dense_ms,
                        rest_ms=max(0.0, dense_ms - sum(full.values())), layers=layers, outputs=outputs)


def _layer_tables(model: nn.Module, cost: ModelCost, inputs: Mapping[str, tuple[int, ...]], groups,
                  device: torch.device, dtype: torch.dtype, batch: int, repeats: int, cache: dict,
                  fresh: bool) -> dict[str, dict]:
    """Each layer's time on its width grid, from ``cache`` (updated in place) unless ``fresh``."""
    varies_out = {m for g in groups for m in g.out_modules}
    varies_in = {m for g in groups for m, _ in g.consumers}
    modules = dict(model.named_modules())
    dev = device_name(device)
    layers = {}
    for name, layer in cost.layers.items():
        module = modules[name]
        spatial = inputs.get(name, ())
        depthwise = _depthwise(module)
        multiple = 1 if isinstance(module, nn.Linear) or depthwise else module.groups
        ins = _grid(layer.in_channels, name in varies_in or (depthwise and name in varies_out), multiple)
        outs = _grid(layer.out_channels, name in varies_out and not depthwise, multiple)
        table = []
        for in_w in ins:
            row = []
            for out_w in (outs if not depthwise else [in_w]):
                key = json.dumps([dev, str(dtype), batch, repr(module), spatial, in_w, out_w])
                if fresh or key not in cache:
                    probe = _layer_like(module, in_w, out_w).to(device, dtype).eval()
                    x = torch.randn(batch, in_w, *spatial, device=device, dtype=dtype)
                    cache[key] = time_ms(lambda probe=probe, x=x: probe(x), repeats, device=device,
                                         min_seconds=LAYER_SECONDS)
                row.append(cache[key])
            table.append(row)
        if depthwise:  # out follows in: a 1-D table over the shared width
            layers[name] = {"in": ins, "out": [0], "ms": [[r[0]] for r in table], "tied": True}
        else:
            layers[name] = {"in": ins, "out": outs, "ms": table}
    return layers


def measure_keep(model: nn.Module, example: torch.Tensor, groups, keep: Mapping[str, int],
                 repeats: int = 20, shared: Sequence[object] = (), dense_ms: float | None = None) -> float:
    """Milliseconds of a copy of ``model`` rebuilt to ``keep`` channels per group, on ``example``
    (the weights do not matter for the time; the rebuild is checked numerically as in a dry run).

    With ``dense_ms`` (the dense model's time, measured earlier), the copy is timed interleaved
    with ``model`` itself (:func:`interleaved_ms`) and the result is ``dense_ms`` times their
    ratio: a shared machine's speed drifts by tens of percent between minutes, and a ratio taken
    call by call does not."""
    trial = model_copy(model, shared)
    dry_run(trial, example, groups, keep)
    trial.eval()
    device = example.device
    if dense_ms is None:
        return time_ms(lambda: trial(example), repeats, device=device, min_seconds=WHOLE_MODEL_SECONDS)
    with eval_mode(model):
        dense_now, pruned_now = interleaved_ms([lambda: model(example), lambda: trial(example)], repeats,
                                               device=device, min_seconds=WHOLE_MODEL_SECONDS)
    return dense_ms * pruned_now / dense_now


def calibrated_keep_counts(allocate: Callable[[LatencyModel], dict[str, int]], model: nn.Module,
                           example: torch.Tensor, groups, cost: ModelCost, table: LatencyModel, *,
                           target_ms: float, rounds: int = 5, tolerance: float = 0.03, repeats: int = 20,
                           shared: Sequence[object] = (), floor: Mapping[str, int] | None = None,
                           ) -> tuple[dict[str, int], dict]:
    """Keep counts from ``allocate(table)``, checked against the clock (see the module docstring).
    Each round times the allocation's model; if it runs within ``tolerance`` of ``target_ms``, those
    counts are kept. Otherwise the (table time, measured time) point joins the table's calibration
    and the table allocates again, for at most ``rounds`` timings, or until it proposes counts timed
    already. The counts returned are always ones that were timed (an allocation the calibrated
    table predicts but nobody timed can miss by a third, where the table's time and the clock
    disagree between calibration points): of those that met the target (at most ``tolerance``
    over it), the nearest; where none did, the fastest (counts timed 13% over were kept beside
    counts timed under the target: probe). Where a calibration point makes the table deem even
    the ``floor`` counts too slow, the floor is timed next, not taken on trust: one point over the
    target scaled every smaller model by its error, and a target the floor met by 8% was given up
    after one round, 22% over it (probe).

    Returns the counts and ``{"uncalibrated_ms", "predicted_ms", "calibrated_ms",
    "calibration_ms"}``: the uncalibrated table's prediction for the first counts, the calibrated
    table's prediction and the measured time for the counts returned, and every round's time."""
    if rounds < 1:
        raise ValueError(f"calibrated_keep_counts: rounds must be at least 1, got {rounds}")
    keep = allocate(table)
    first = table.predict(groups, cost, keep)
    timed: list[tuple[dict[str, int], float]] = []  # (counts, measured ms) of each round
    for round_ in range(rounds):
        ms = measure_keep(model, example, groups, keep, repeats, shared, dense_ms=table.dense_ms)
        timed.append((keep, ms))
        table.calibration.append([table.table_ms(groups, cost, keep), ms])
        if abs(ms / target_ms - 1) <= tolerance or round_ == rounds - 1:
            break
        try:
            again = allocate(table)
        except ValueError:  # the calibrated table now deems even the floor too slow: the clock says
            if floor is None or any(dict(floor) == k for k, _ in timed):  # (timed already: what was timed is kept)
                break
            again = dict(floor)
        if any(again == k for k, _ in timed):
            break
        keep = again
    met = [pair for pair in timed if pair[1] <= target_ms * (1 + tolerance)]
    keep, ms = (min(met, key=lambda pair: abs(pair[1] / target_ms - 1)) if met else
                min(timed, key=lambda pair: pair[1]))
    return keep, {"uncalibrated_ms": first, "predicted_ms": table.predict(groups, cost, keep), "calibrated_ms": ms,
                  "calibration_ms": [t for _, t in timed]}


@torch.no_grad()
def compare_latency(dense: nn.Module, pruned: nn.Module, input_shape: Sequence[int],
                    batch_sizes: Sequence[int] = (1, 256), repeats: int = 30,
                    memory_format: torch.memory_format = torch.contiguous_format,
                    dtype: torch.dtype = torch.float32) -> dict:
    """Latency of both models (of weights in ``dtype``) in eval mode at each batch size: each model called back to back, as
    it runs when deployed (a model of microseconds slows by a quarter when another runs between two
    of its calls), the two alternating in 3 rounds so that the machine's drift hits both alike; the
    median over the rounds. ``load``: how busy the other processes kept the machine meanwhile
    (:class:`OtherProcessesLoad`); with ``crowded`` the times are slower than on an idle machine."""
    out = {"dense": {}, "pruned": {}, "speedup": {}}
    with eval_mode(dense, pruned), OtherProcessesLoad() as load:
        for bs in batch_sizes:
            x = torch.randn(bs, *input_shape[1:], dtype=dtype).contiguous(memory_format=memory_format)
            d, p = [], []
            for _ in range(3):
                d.append(time_ms(lambda x=x: dense(x), max(repeats // 3, 3), warmup=5))
                p.append(time_ms(lambda x=x: pruned(x), max(repeats // 3, 3), warmup=5))
            dm, pm = statistics.median(d), statistics.median(p)
            out["dense"][f"batch_{bs}"] = dm
            out["pruned"][f"batch_{bs}"] = pm
            out["speedup"][f"batch_{bs}"] = dm / pm
    out["load"] = load.to_dict()
    return out
