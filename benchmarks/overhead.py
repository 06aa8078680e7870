"""Per-step training overhead of the SSRPruning callback in its sparsify phase.

    python benchmarks/overhead.py                      # resnet20 + resnet56, batch 64
    python benchmarks/overhead.py --models resnet20 --steps 50 --rounds 5
    python benchmarks/overhead.py --quick              # smoke run, a few seconds per model

Runs real Lightning fits of a plain LightningModule (SGD with momentum 0.9, cross-entropy)
on synthetic data (random 3x32x32 images, 10 classes) in one process, alternating fits with
and without ``SSRPruning(regularizer="l20", flops_budget=0.5, rho=0.5)`` whose schedule keeps
it in the sparsify phase from the first batch on (``update_every_n_steps=25``). Both kinds of
fit start from the same weights (deep copies of one initialized model) and see the same data.

A step is timed from ``on_train_batch_start`` to ``on_train_batch_end`` (after every other
callback's hook, so the V/U update that the callback runs in ``on_train_batch_end`` is
inside it; on CUDA the device is synchronized at both ends). Each fit runs ``--warmup``
discarded steps (the callback's one-off set-up, which traces the model, happens in the first
of them) and then ``--steps`` timed ones. ``step_ms_with``/``step_ms_without`` are the
medians of all timed steps of the ``--rounds`` fits of each kind (medians, because on a
shared machine other processes' bursts of load inflate whole fits), and

    ratio = step_ms_with / step_ms_without

The median step holds the W-step but leaves out the 1-in-25 steps that carry a V/U update, so
``ratio_amortized = (step_ms_with + update_ms_per_step) / step_ms_without`` is the whole
sparsify-phase cost. ``wstep_ms`` is the median duration of the callback's
``on_before_optimizer_step`` (the W-step gradient term ``rho * (W - V + U)``) and
``update_ms_per_step`` the total time of its ``on_train_batch_end`` (the V/U update every 25
steps) divided by the number of timed steps (with ``--steps`` a multiple of 25 every fit holds
the same number of updates); both are measured by timing the ``super()`` calls in a subclass
(with CUDA events on a GPU, so no extra synchronization enters the step). ``max_other_cores``
is the most CPU (in cores) that other processes used during any fit of the row;
``--quiet-below CORES`` waits for a quiet machine before each fit and runs a fit again
(``--retries``) when other processes used that much CPU during it.

CPU fp32 always; with CUDA also fp32, bf16-mixed and 16-mixed on the GPU. Writes
``benchmarks/results/overhead.json``: ``{"machine": ..., "settings": ..., "rows": [...]}``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import command_line, refuse_smaller, script_main
from lightning_ssr import PruningSchedule, SSRPruning
from lightning_ssr.app.models import build_model
from lightning_ssr.report import machine_info, write_json

RESULTS = Path(__file__).resolve().parent / "results" / "overhead.json"
REPO = Path(__file__).resolve().parent.parent
UPDATE_EVERY = 25


class LitClassifier(LightningModule):
    def __init__(self, model: nn.Module, lr: float = 0.05):
        super().__init__()
        self.model = model
        self.lr = lr
        self.loss = nn.CrossEntropyLoss()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


class Clock:
    """Shared state of the step timer and the timed callback: which batch, on which device."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.batch_idx = -1
        self.t0 = 0.0
        self.steps: list[tuple[int, float]] = []  # (batch_idx, seconds)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


class StepStart(Callback):
    """First in the callback list: starts the step clock."""

    def __init__(self, clock: Clock):
        self.clock = clock

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.clock.sync()
        self.clock.batch_idx = batch_idx
        self.clock.t0 = time.perf_counter()


class StepEnd(Callback):
    """Last in the callback list: stops it, after every other callback's on_train_batch_end."""

    def __init__(self, clock: Clock):
        self.clock = clock

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.clock.sync()
        self.clock.steps.append((batch_idx, time.perf_counter() - self.clock.t0))


class HookTimer:
    """Times a block by perf_counter on CPU, by a pair of CUDA events on a GPU (no sync)."""

    def __init__(self, clock: Clock):
        self.clock = clock
        self.records: list[tuple[int, object]] = []  # (batch_idx, seconds | (start, end) events)

    def __enter__(self):
        if self.clock.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.clock.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.records.append((self.clock.batch_idx, (self._start, end)))
        else:
            self.records.append((self.clock.batch_idx, time.perf_counter() - self._start))
        return False

    def seconds(self, first_batch: int) -> list[float]:
        """Durations of the calls from batch ``first_batch`` on (call after the fit)."""
        self.clock.sync()
        out = []
        for idx, rec in self.records:
            if idx >= first_batch:
                out.append(rec[0].elapsed_time(rec[1]) / 1e3 if self.clock.cuda else rec)
        return out


class TimedSSRPruning(SSRPruning):
    """SSRPruning whose W-step and V/U-update hooks are timed (the calls themselves unchanged)."""

    def __init__(self, clock: Clock, **kwargs):
        super().__init__(**kwargs)
        self._bench_wstep = HookTimer(clock)
        self._bench_update = HookTimer(clock)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        with self._bench_wstep:
            super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with self._bench_update:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


class AlternatingSSRPruning(TimedSSRPruning):
    """The callback's per-step work (batch-start checks, W-step, batch-end hook) on even batches
    only: steps with and without it, interleaved one by one in the same fit, so that the
    machine's drifts in speed (which on a shared VM reach several-fold within seconds) hit
    both kinds alike."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % 2 == 0 or self.engine.needs_setup:
            super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self._bench_wstep.clock.batch_idx % 2 == 0:
            super().on_before_optimizer_step(trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx % 2 == 0:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def make_pruning(clock: Clock, cls=None) -> TimedSSRPruning:
    return (cls or TimedSSRPruning)(
        clock, regularizer="l20", flops_budget=0.5, rho=0.5,
        schedule=PruningSchedule(warmup_epochs=0, sparsify_epochs=1000, finetune_epochs=0,
                                 update_every_n_steps=UPDATE_EVERY))


class CpuMeter:
    """CPU time the rest of the machine uses (all cores' busy time minus this process's), from
    /proc; ``None`` where /proc is missing. Shared machines make timings noisy: the results
    record this per fit, and ``--quiet-below`` waits for it to drop before each fit."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def sample(self):
        try:
            with open("/proc/stat") as f:
                cpu = [int(v) for v in f.readline().split()[1:]]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(cpu) - cpu[3] - (cpu[4] if len(cpu) > 4 else 0)  # all but idle and iowait
        return time.perf_counter(), busy, int(own[11]) + int(own[12])  # utime + stime, all threads

    def other_cores(self, a, b) -> float | None:
        """Cores' worth of CPU used by other processes between samples ``a`` and ``b``."""
        if a is None or b is None or b[0] <= a[0]:
            return None
        return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / self.hz / (b[0] - a[0]))

    def wait_quiet(self, below: float, max_wait_s: float) -> float | None:
        """Sleep in 2 s windows until others use less than ``below`` cores (or ``max_wait_s``)."""
        deadline = time.perf_counter() + max_wait_s
        while True:
            a = self.sample()
            time.sleep(2.0)
            load = self.other_cores(a, self.sample())
            if load is None or load < below or time.perf_counter() >= deadline:
                return load


def sparsify_fit(trainer: Trainer, module: LightningModule, loader: DataLoader) -> None:
    """``trainer.fit``: the timed fits measure steps of the sparsify phase and stop, by design, long
    before the prune, which the callback would warn of."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Trainer\(max_steps=\d+\) ends before the last scheduled prune")
        trainer.fit(module, train_dataloaders=loader)


def one_fit(base: nn.Module, loader: DataLoader, device: str, precision: str, with_pruning: bool,
            warmup: int, steps: int, meter: CpuMeter) -> dict:
    """One fit of warmup + steps steps; returns the timed steps and (with pruning) hook times."""
    clock = Clock(cuda=device == "cuda")
    pruning = make_pruning(clock) if with_pruning else None
    callbacks = [StepStart(clock)] + ([pruning] if pruning else []) + [StepEnd(clock)]
    trainer = Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
        max_steps=warmup + steps, max_epochs=-1, callbacks=callbacks,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    before = meter.sample()
    sparsify_fit(trainer, LitClassifier(copy.deepcopy(base)), loader)
    other = meter.other_cores(before, meter.sample())
    timed = [s for idx, s in clock.steps if idx >= warmup]
    if len(timed) != steps:
        raise RuntimeError(f"expected {steps} timed steps, got {len(timed)}")
    out = {"steps_s": timed, "other_cores": other}
    if pruning is not None:
        out["wstep_s"] = pruning._bench_wstep.seconds(warmup)
        out["update_s"] = pruning._bench_update.seconds(warmup)
        if len(out["wstep_s"]) != steps:
            raise RuntimeError(f"the W-step ran {len(out['wstep_s'])} times in {steps} steps: is the "
                               "callback in its sparsify phase?")
    return out


def one_offs(base: nn.Module, loader: DataLoader, device: str, precision: str, latency: bool) -> dict:
    """The callback's costs that are not per step, in seconds, from a short fit that prunes at the
    start of its second epoch: the set-up on the first batch (tracing, the target's allocation, the
    dry run), the dry run alone, the rebuild (the cut, its numerical check, the optimizer remap);
    and, with ``latency``, the allocation of a latency target of half the dense time (the layer
    table and the calibration rounds that time pruned copies)."""
    pruning = SSRPruning(regularizer="l20", flops_budget=0.5, rho=0.5, verbose=False,
                         # (an update in each of its 3 steps: with one every 25, SSR would prune what it never updated)
                         schedule=PruningSchedule(sparsify_epochs=1, finetune_epochs=0, update_every_n_steps=1))
    trainer = Trainer(accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
                      max_epochs=1, limit_train_batches=3, callbacks=[pruning], logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(LitClassifier(copy.deepcopy(base)), train_dataloaders=loader)
    t = pruning.result.timings
    out = {"setup_s": t["setup_s"], "dry_run_s": t["dry_run_s"], "rehearsal_s": t.get("rehearsal_s"),
           "allocation_s": t["allocation_s"], "rebuild_s": t["rebuild_s"][0]}
    if latency:
        from lightning_ssr import Pruning
        from lightning_ssr.latency import latency_model, timing_batch
        from lightning_ssr.structure import find_channel_groups

        model = copy.deepcopy(base).to(device)
        x = next(iter(loader))[0].to(device)
        groups = find_channel_groups(model, x[:2])
        from lightning_ssr.cost import count_cost

        cost = count_cost(model, x[:2])
        start = time.perf_counter()
        table = latency_model(model, timing_batch(x, 16), groups, cost)
        cb = Pruning("oneshot", target={"latency": 0.5 * table.dense_ms, "batch_size": 16}, verbose=False)
        cb.budget.keep_counts(model, x[:2], groups, cost, round_to=cb.budget.round_to_on(device), table=table,
                              timing_input=x)
        out["latency_calibration_s"] = time.perf_counter() - start
    return out


def in_fit(base: nn.Module, loader: DataLoader, device: str, precision: str, warmup: int, steps: int) -> dict:
    """One fit of ``warmup + 2 * steps`` steps with the callback active on even batches only;
    the median step time of each kind (the rare V/U-update steps fall outside the medians)."""
    clock = Clock(cuda=device == "cuda")
    pruning = make_pruning(clock, AlternatingSSRPruning)
    trainer = Trainer(
        accelerator="gpu" if device == "cuda" else "cpu", devices=1, precision=precision,
        max_steps=warmup + 2 * steps, max_epochs=-1, callbacks=[StepStart(clock), pruning, StepEnd(clock)],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    sparsify_fit(trainer, LitClassifier(copy.deepcopy(base)), loader)
    timed = clock.steps[warmup:]
    return {"on": statistics.median(s for i, s in timed if i % 2 == 0),
            "off": statistics.median(s for i, s in timed if i % 2 == 1)}


def overhead_ratios(on: float, off: float, update_per_step: float, step_with: float, step_without: float) -> dict:
    """The overhead figures from step times in seconds: ``ratio`` (in one fit, steps with the
    callback's per-step work over steps without it, the amortized V/U update added),
    ``ratio_between_fits`` and ``ratio_between_fits_amortized`` (fits with over fits without)."""
    return {"ratio": (on + update_per_step) / off, "ratio_between_fits": step_with / step_without,
            "ratio_between_fits_amortized": (step_with + update_per_step) / step_without}


def measure(model_name: str, device: str, precision: str, args, meter: CpuMeter) -> dict:
    torch.manual_seed(args.seed)
    base = build_model(model_name, in_channels=3, num_classes=10, input_size=32)
    n = (args.warmup + args.steps) * args.batch_size
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, 10, (n,)))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=False, num_workers=0,
                        pin_memory=device == "cuda")
    with_fits, without_fits = [], []
    for r in range(args.rounds):
        # alternate which kind goes first, so a drift of the machine's speed hits both alike
        for with_pruning in ((True, False) if r % 2 == 0 else (False, True)):
            for attempt in range(1 + (args.retries if args.quiet_below is not None else 0)):
                if args.quiet_below is not None:
                    meter.wait_quiet(args.quiet_below, args.max_wait)
                fit = one_fit(base, loader, device, precision, with_pruning, args.warmup, args.steps, meter)
                # a fit that other processes disturbed is run again (up to --retries times)
                if args.quiet_below is None or fit["other_cores"] is None or fit["other_cores"] < args.quiet_below:
                    break
                again = "running it again" if attempt < args.retries else "keeping it"
                print(f"  ({model_name} {'with' if with_pruning else 'without'}: other processes used "
                      f"{fit['other_cores']:.2f} cores during the fit; {again})", flush=True)
            (with_fits if with_pruning else without_fits).append(fit)
    # medians of all timed steps of all fits of a kind: robust to bursts of foreign load, and they
    # leave out the few steps that carry a V/U update (1 in 25), whose cost is update_ms_per_step
    step_with = statistics.median(s for f in with_fits for s in f["steps_s"])
    step_without = statistics.median(s for f in without_fits for s in f["steps_s"])
    wstep = [s for f in with_fits for s in f["wstep_s"]]
    update_per_step = sum(s for f in with_fits for s in f["update_s"]) / (args.steps * len(with_fits))
    others = [f["other_cores"] for f in with_fits + without_fits if f["other_cores"] is not None]
    alternating = in_fit(base, loader, device, precision, args.warmup, args.rounds * args.steps)
    costs = one_offs(base, loader, device, precision, latency=precision == "32-true" and not args.quick)
    return {**costs,
        "model": model_name, "device": device, "precision": precision, "batch_size": args.batch_size,
        # the headline (ratio): in one fit, steps with the callback's per-step work against steps
        # without it, interleaved one by one, plus the amortized V/U update; between fits: fits with
        # the callback against fits without it (noisier on a shared machine)
        **overhead_ratios(alternating["on"], alternating["off"], update_per_step, step_with, step_without),
        "step_ms_on_in_fit": 1e3 * alternating["on"],
        "step_ms_off_in_fit": 1e3 * alternating["off"],
        "wstep_ms": 1e3 * statistics.median(wstep),
        "update_ms_per_step": 1e3 * update_per_step,
        "step_ms_with": 1e3 * step_with,
        "step_ms_without": 1e3 * step_without,
        "fit_mean_step_ms_with": [round(1e3 * statistics.fmean(f["steps_s"]), 2) for f in with_fits],
        "fit_mean_step_ms_without": [round(1e3 * statistics.fmean(f["steps_s"]), 2) for f in without_fits],
        "max_other_cores": round(max(others), 2) if others else None,
    }


HEADER = (f"{'model':<9} {'device':<6} {'precision':<11} {'batch':>5} {'ratio':>6} {'fits':>6} "
          f"{'wstep ms':>9} {'upd ms/step':>11} {'step ms with':>12} {'without':>9} {'others':>6} "
          f"{'setup s':>8} {'dry run s':>9} {'rebuild s':>9} {'latency s':>9}")


def format_row(r: dict) -> str:
    others = "-" if r["max_other_cores"] is None else f"{r['max_other_cores']:.2f}"
    return (f"{r['model']:<9} {r['device']:<6} {r['precision']:<11} {r['batch_size']:>5} {r['ratio']:>6.3f} "
            f"{r['ratio_between_fits_amortized']:>6.3f} {r['wstep_ms']:>9.3f} {r['update_ms_per_step']:>11.3f} "
            f"{r['step_ms_with']:>12.2f} {r['step_ms_without']:>9.2f} {others:>6} {r['setup_s']:>8.2f} "
            f"{r['dry_run_s']:>9.2f} {r['rebuild_s']:>9.2f} {r.get('latency_calibration_s') or 0:>9.1f}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet20", "resnet56"], choices=["resnet20", "resnet56"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=50,
                   help=f"timed steps per fit (a multiple of {UPDATE_EVERY} amortizes the V/U update exactly)")
    p.add_argument("--warmup", type=int, default=5, help="discarded steps at the start of every fit")
    p.add_argument("--rounds", type=int, default=5, help="fits with and fits without the callback, each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet-below", type=float, default=None, metavar="CORES",
                   help="before each fit, wait until other processes use fewer than CORES cores")
    p.add_argument("--max-wait", type=float, default=120.0, help="seconds --quiet-below waits at most per fit")
    p.add_argument("--retries", type=int, default=3,
                   help="with --quiet-below: how often a fit disturbed by other processes is run again")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 8, 3 warm-up + 26 steps, 1 round")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--force", action="store_true", help="replace --out even if it was made with a larger budget")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.warmup, args.steps, args.rounds = 8, 3, 26, 1
    if args.steps < 1 or args.warmup < 1 or args.rounds < 1 or args.batch_size < 1:
        p.error("--steps, --warmup, --rounds and --batch-size must be >= 1")
    # a file made with more steps or rounds (or a larger batch) is not replaced by a smaller budget
    budget = ("steps", "rounds", "batch_size")  # (a file that records none was made with the defaults)
    # (and one of fewer models: --models resnet20 timed into the file of both dropped resnet56's rows: probe)
    refuse_smaller(args.out, None, args.force, {**{k: getattr(args, k) for k in budget}, "models": args.models},
                   recorded_default={k: p.get_default(k) for k in budget}, covers=("models",))

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    # in-memory tensors need no loader workers; Lightning's hint about that is noise here
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    # Lightning 2.6's pytree helper trips a deprecation of newer torch (LeafSpec); not ours to fix
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
    torch.manual_seed(args.seed)

    configs = [("cpu", "32-true")]
    if torch.cuda.is_available():
        configs += [("cuda", "32-true"), ("cuda", "bf16-mixed"), ("cuda", "16-mixed")]
    machine = {**machine_info(), "lightning": lightning.__version__,
               "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    print(f"{machine['cpu']}, {machine['usable_cores']} cores, torch {machine['torch']} "
          f"({machine['torch_threads']} threads){', ' + machine['gpu'] if machine['gpu'] else ''}")
    print(f"batch {args.batch_size}, {args.warmup} warm-up + {args.steps} timed steps per fit, "
          f"{args.rounds} fits with and {args.rounds} without the callback per row\n{HEADER}", flush=True)
    start = time.time()
    meter = CpuMeter()
    rows = []
    for device, precision in configs:
        for name in args.models:
            rows.append(measure(name, device, precision, args, meter))
            print(format_row(rows[-1]), flush=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "force")}
    settings.update(update_every_n_steps=UPDATE_EVERY, regularizer="l20", flops_budget=0.5, rho=0.5,
                    total_time_s=round(time.time() - start, 1))
    write_json(args.out, relative_to=REPO, obj={"benchmark": "overhead", "command": command_line("overhead", argv),
                                                "machine": machine, "settings": settings, "rows": rows})
    print(f"total {time.time() - start:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    script_main(main, keeps_runs=False)
