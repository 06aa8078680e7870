"""The GPU check, in one command: what only a CUDA machine can tell, within about 8 minutes.

    scripts/gpu_check.sh                   # installs the package without touching torch, then this
    python -m benchmarks.gpu               # the same, the package already installed
    python -m benchmarks.gpu --smoke       # on the CPU, tiny sizes: checks the check itself

On a machine whose Python has a CUDA build of torch (no network needed), it runs, each part
timed and recorded (a part that fails is recorded with its error; the others still run):

1. ``tests``: the CUDA tests, ``pytest tests/test_cuda.py -m cuda`` (the callback end to end in
   fp32, bf16-mixed and 16-mixed; masked and rebuilt models equal on the GPU);
2. ``job``: the default command on the GPU (``lightning-ssr trainer.accelerator=gpu`` with
   short epochs), its ``result.json`` summarized;
3. ``overhead``: the callback's step time with / without it, in one fit, for ResNet-20 and
   ResNet-56 at batch 256 in fp32, bf16-mixed and 16-mixed (``benchmarks/overhead.py``'s
   measurement), with its one-off costs;
4. ``speedup``: the realized speed-up of ResNet-56 (half the MACs) and VGG-16 (a fifth) at batch
   1024, dense against pruned timed in turn, in fp32 and under bf16 autocast, channels_last, for
   ``round_to`` 1, 8, 16 and 32, as a ratio to the MACs reduction.

Without a visible GPU it says so and exits with status 3, having run nothing (``--smoke`` runs
every part on the CPU at tiny sizes instead, to check the script). Writes
``benchmarks/results/gpu.json`` (the smoke run: ``gpu_smoke.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lightning_ssr.app.console import quiet_lightning
from lightning_ssr.report import machine_info, write_json

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
NO_GPU = 3  # the exit status without a visible GPU
SPEEDUP_CASES = [("resnet56", {"macs": 0.5}), ("vgg16_bn", {"macs": 0.2})]
ROUND_TO = (1, 8, 16, 32)
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


def no_gpu_message() -> str:
    return (f"gpu check: no CUDA GPU is visible to torch {torch.__version__} (CUDA build: {torch.version.cuda}); "
            "nothing was run. Run it on a machine where python -c 'import torch; print(torch.cuda.is_available())' "
            "prints True, with a CUDA build of torch installed (or pass --smoke to check the script on the CPU).")


def run_tests(smoke: bool) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600, check=False)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"command": " ".join(cmd[2:]), "returncode": proc.returncode, "summary": last,
            "ok": proc.returncode == 0 or (smoke and proc.returncode == 5)}


def run_job(device: str, smoke: bool, tmp: Path) -> dict:
    overrides = [f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "trainer.enable_progress_bar=false",
                 "dense.epochs=2", "schedule.sparsify_epochs=2", "schedule.finetune_epochs=2",
                 f"dense.cache_dir={tmp / 'dense'}", f"hydra.run.dir={tmp / 'job'}"]
    if smoke:
        overrides += ["data=uci_digits", "dense.epochs=1", "schedule.sparsify_epochs=1", "schedule.finetune_epochs=1",
                      "trainer.limit_train_batches=3", "schedule.update_every_n_steps=1", "latency.batch_sizes=[1]"]
    cmd = [sys.executable, "-m", "lightning_ssr.app.cli", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=900, check=False)
    out = {"command": "lightning-ssr " + " ".join(overrides[:6]), "returncode": proc.returncode}
    path = tmp / "job" / "result.json"
    if proc.returncode != 0 or not path.is_file():
        return {**out, "ok": False, "error": proc.stderr[-2000:]}
    result = json.loads(path.read_text())
    return {**out, "ok": result["status"] == "ok", "macs_reduction": result["macs_reduction"],
            "accuracy_dense": result["dense"].get("accuracy"), "accuracy_pruned": result["pruned"].get("accuracy"),
            "latency_ms": {"dense": result["dense"].get("latency_ms"), "pruned": result["pruned"].get("latency_ms")},
            "device": result["config"]["cli"]["trainer"]["accelerator"]}


def run_overhead(device: str, smoke: bool) -> list[dict]:
    from benchmarks.overhead import CpuMeter, measure

    args = types.SimpleNamespace(batch_size=8 if smoke else 256, warmup=3 if smoke else 5, steps=26 if smoke else 50,
                                 rounds=1 if smoke else 2, seed=0, quiet_below=None, max_wait=0.0, retries=0,
                                 quick=smoke)
    rows = []
    for name in ("resnet20",) if smoke else ("resnet20", "resnet56"):
        for precision in ("32-true",) if smoke else PRECISIONS:
            try:
                rows.append(measure(name, device, precision, args, CpuMeter()))
            except Exception as err:  # noqa: BLE001 - recorded; the other rows go on
                rows.append({"model": name, "precision": precision, "error": f"{type(err).__name__}: {err}"})
    return rows


def _time_pair(dense, pruned, x, dtype: torch.dtype | None, repeats: int) -> tuple[float, float]:
    from lightning_ssr.latency import interleaved_ms

    device = x.device
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else torch.autocast(device.type,
                                                                                                   enabled=False)
    with torch.no_grad(), autocast:
        return tuple(interleaved_ms([lambda: dense(x), lambda: pruned(x)], repeats, device=device, min_seconds=1.0))


def run_speedup(device: str, smoke: bool) -> list[dict]:
    from lightning_ssr.app.models import build_model
    from lightning_ssr.cost import count_cost
    from lightning_ssr.methods import prune_oneshot

    batch, repeats = (8, 3) if smoke else (1024, 20)
    cases = [("resnet20", {"macs": 0.5})] if smoke else SPEEDUP_CASES
    rows = []
    for name, target in cases:
        torch.manual_seed(0)
        dense = build_model(name, in_channels=3, num_classes=10, input_size=32).to(device).eval()
        dense = dense.to(memory_format=torch.channels_last)
        probe = torch.randn(2, 3, 32, 32, device=device)
        x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        for round_to in (1, 8) if smoke else ROUND_TO:
            try:
                pruned = build_model(name, in_channels=3, num_classes=10, input_size=32).to(device)
                pruned.load_state_dict(dense.state_dict())
                prune_oneshot(pruned, probe, target, round_to=round_to)
                pruned = pruned.eval().to(memory_format=torch.channels_last)
                reduction = count_cost(dense, probe).macs / count_cost(pruned, probe).macs
                row = {"model": name, "target": target, "round_to": round_to, "batch": batch,
                       "macs_reduction": reduction}
                for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
                    dense_ms, pruned_ms = _time_pair(dense, pruned, x, dtype, repeats)
                    row[label] = {"dense_ms": dense_ms, "pruned_ms": pruned_ms, "speedup": dense_ms / pruned_ms,
                                  "speedup_over_macs_reduction": dense_ms / pruned_ms / reduction}
                rows.append(row)
            except Exception as err:  # noqa: BLE001 - recorded; the other rows go on
                rows.append({"model": name, "target": target, "round_to": round_to, "error": f"{type(err).__name__}: {err}"})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="every part on the CPU at tiny sizes (checks the script)")
    parser.add_argument("--parts", nargs="+", default=["tests", "job", "overhead", "speedup"],
                        choices=["tests", "job", "overhead", "speedup"])
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; parts that would start later are skipped")
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/gpu.json (smoke: "
                        "gpu_smoke.json)")
    args = parser.parse_args(argv)
    quiet_lightning()
    if not torch.cuda.is_available() and not args.smoke:
        print(no_gpu_message(), file=sys.stderr)
        return NO_GPU
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    out_path = args.out or RESULTS / ("gpu_smoke.json" if args.smoke else "gpu.json")
    given = list(sys.argv[1:] if argv is None else argv)
    record = {"benchmark": "gpu", "command": " ".join(["python -m benchmarks.gpu", *given]), "machine": machine_info(),
              "device": device, "cuda": torch.version.cuda, "smoke": args.smoke, "parts": {}, "seconds": {}}
    start = time.perf_counter()
    runners = {"tests": lambda: run_tests(args.smoke), "overhead": lambda: run_overhead(device, args.smoke),
               "speedup": lambda: run_speedup(device, args.smoke)}
    with tempfile.TemporaryDirectory() as tmp:
        runners["job"] = lambda: run_job(device, args.smoke, Path(tmp))
        for part in args.parts:
            if time.perf_counter() - start > args.budget:
                record["parts"][part] = {"skipped": f"the time budget of {args.budget:.0f} s was spent"}
                continue
            t = time.perf_counter()
            print(f"gpu check: {part} ...", flush=True)
            try:
                record["parts"][part] = runners[part]()
            except Exception as err:  # noqa: BLE001 - one failed part must not stop the others
                record["parts"][part] = {"error": f"{type(err).__name__}: {err}"}
            record["seconds"][part] = time.perf_counter() - t
            print(f"gpu check: {part} done in {record['seconds'][part]:.0f} s", flush=True)
    record["total_s"] = time.perf_counter() - start
    write_json(out_path, relative_to=REPO, obj=record)
    print(f"wrote {out_path} ({record['total_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    os.chdir(REPO)
    sys.exit(main())
