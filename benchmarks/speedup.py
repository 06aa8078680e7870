"""CPU latency of dense vs physically pruned models, and the cost of replaying a plan.

    python benchmarks/speedup.py [--repeats 24] [--out benchmarks/results/speedup.json]

Measures, in one process and alternating dense/pruned so machine noise hits both alike:
ResNet-56 at the FSM rates and VGG-16-BN at the FSM rates, 32x32 RGB, batch 1 and 64, in
both memory layouts (contiguous NCHW and channels_last, the same layout for dense and
pruned), after optimize_for_cpu_inference (BN folded into the convs, channels_last), and
after compile_for_cpu_inference (torch.compile with inductor freezing, channels_last).
Reports speedup = dense latency / pruned latency and its ratio to the FLOPs reduction
(1.0 = the pruned model is as much faster as it is cheaper). Besides the papers' rates, each
model is pruned to a MACs target with kept counts rounded to multiples of 8 and 16
(``round_to``), and to a latency target (a fraction of the dense model's measured time at batch
64 on one thread, through the per-layer latency table), recording the target and the time
measured after the prune, in turn with the dense model, on that thread. oneDNN's CPU convolutions
handle the odd channel counts of pruned layers (7, 13, 39, ...) much better in
channels_last; "best" is the mode where the pruned model is fastest. Also times apply_plan (fresh
ResNet-50 + plan -> pruned shapes) at 224x224. Writes ``--out`` (benchmarks/results/speedup.json),
with the command and ``settings.repeats``; a file timed with more repeats is not replaced (one that
records none was made with the default), unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import command_line, counted, refuse_smaller, script_main
from lightning_ssr.app.export import compile_for_cpu_inference, optimize_for_cpu_inference
from lightning_ssr.app.models import build_model
from lightning_ssr.cost import count_cost
from lightning_ssr.latency import compare_latency, interleaved_ms, steady_allocator, time_ms
from lightning_ssr.methods.oneshot import prune_oneshot
from lightning_ssr.report import machine_info, write_json
from lightning_ssr.structure import apply_plan

#: timed calls per model, batch and mode (what a file that records no ``settings.repeats`` was made with)
REPEATS = 24

# (model, target: rates, a {kind: value} target, or {"latency_fraction": f} of the dense
# model's measured time at batch 64, round_to)
CASES = [
    ("resnet56", "[0.]+[0.6,0.]*9+[0.6,0.]*9+[0.4,0.]*9", 1),
    ("resnet56", {"macs": 0.5}, 8),
    ("resnet56", {"macs": 0.5}, 16),
    ("resnet56", {"latency_fraction": 0.5}, 1),
    ("vgg16_bn", "[0.3]*5+[0.35]*3+[0.8]*5", 1),
    ("vgg16_bn", "[0.5]*8+[0.8]*5", 1),
    ("vgg16_bn", {"macs": 0.2}, 8),
    ("vgg16_bn", {"macs": 0.2}, 16),
    ("vgg16_bn", {"latency_fraction": 0.2}, 1),
]


def _prune(dense, pruned, x, target, round_to: int, repeats: int, extra: dict):
    """Prune ``pruned`` to ``target``; a latency target (``{"latency_fraction": f}``) is set, met
    and checked on one thread (on a 2-core virtual machine the same two-thread model's time drifts
    by 15% within a minute, see targets.py), with its figures added to ``extra``. Returns the
    target as it was given to the pruner."""
    latency = isinstance(target, dict) and "latency_fraction" in target
    if latency:
        torch.set_num_threads(1)
        extra["latency_threads"] = 1
        batch = torch.zeros(64, 3, 32, 32)
        dense_ms = time_ms(lambda: dense(batch), repeats)
        fraction = target["latency_fraction"]
        target = {"latency": fraction * dense_ms, "batch_size": 64}
        extra["latency_target_ms"] = target["latency"]
    timing = {}
    prune_oneshot(pruned, x, target, round_to=round_to, report=timing)
    pruned.eval()
    if latency:
        dense_now, pruned_now = interleaved_ms([lambda: dense(batch), lambda: pruned(batch)], repeats,
                                               min_seconds=1.0)  # again, in turn: the machine's speed drifts
        extra.update(latency_measured_ms=pruned_now, latency_dense_now_ms=dense_now, latency_fraction=fraction,
                     latency_achieved_fraction=pruned_now / dense_now, latency_predicted_ms=timing["predicted_ms"],
                     latency_uncalibrated_ms=timing["uncalibrated_ms"],
                     latency_calibration_ms=timing["calibration_ms"])
    return target


def latency_case(name: str, target, round_to: int, repeats: int) -> dict:
    dense = build_model(name, in_channels=3, num_classes=10, input_size=32).eval()
    pruned = build_model(name, in_channels=3, num_classes=10, input_size=32)
    pruned.load_state_dict(dense.state_dict())
    x = torch.zeros(2, 3, 32, 32)
    extra = {}
    threads = torch.get_num_threads()
    try:
        target = _prune(dense, pruned, x, target, round_to, repeats, extra)
    finally:
        torch.set_num_threads(threads)  # the layouts below compare at the machine's thread count
    flops_ratio = count_cost(dense, x).macs / count_cost(pruned, x).macs
    rates = target if isinstance(target, str) else json.dumps(target)
    layouts = {}
    folding: dict[str, dict] = {"dense": {}, "pruned": {}}  # whether BN folding worked, per model

    def folded(which):
        return lambda m: optimize_for_cpu_inference(m, report=folding[which])
    modes = (("contiguous", lambda m: m, lambda m: m, torch.contiguous_format),
             ("channels_last", lambda m: m.to(memory_format=torch.channels_last),
              lambda m: m.to(memory_format=torch.channels_last), torch.channels_last),
             ("folded_bn_channels_last", folded("dense"), folded("pruned"), torch.channels_last),
             ("inductor_frozen", compile_for_cpu_inference, compile_for_cpu_inference, torch.channels_last))
    for layout, prepare_dense, prepare_pruned, fmt in modes:
        torch._dynamo.reset()  # each case compiles afresh (dynamo's recompile limit would fall back to eager)
        lat = compare_latency(prepare_dense(dense), prepare_pruned(pruned), [1, 3, 32, 32], (1, 64), repeats,
                              memory_format=fmt)
        layouts[layout] = {
            "latency_ms": {"dense": lat["dense"], "pruned": lat["pruned"]},
            "speedup": lat["speedup"],
            "speedup_over_flops_reduction": {k: v / flops_ratio for k, v in lat["speedup"].items()},
        }
    layouts["folded_bn_channels_last"]["bn_folding"] = folding  # recorded: a failed fold is not hidden
    best = min(layouts, key=lambda k: layouts[k]["latency_ms"]["pruned"]["batch_64"])
    return {"model": name, "rates": rates, "round_to": round_to, "flops_reduction": flops_ratio, "best_layout": best,
            "kept": {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)},
            "layouts": layouts, **extra}


def rebuild_time(repeats: int = 3) -> dict:
    model = build_model("resnet50", in_channels=3, num_classes=1000, input_size=224)
    x = torch.zeros(1, 3, 224, 224)
    plan = prune_oneshot(model, x, [0.0] + [0.5] * 52, importance="l1")  # every prunable conv at 50%
    times = []
    for _ in range(repeats):
        fresh = build_model("resnet50", in_channels=3, num_classes=1000, input_size=224)
        start = time.perf_counter()
        apply_plan(fresh, plan)
        times.append(time.perf_counter() - start)
    return {"model": "resnet50", "input": [1, 3, 224, 224], "groups": len(plan.kept),
            "apply_plan_s": statistics.median(times), "all_s": times}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=counted(1), default=REPEATS, help="timed calls per model, batch and mode")
    parser.add_argument("--latency-targets-only", action="store_true",
                        help="run only the latency-target cases and replace those rows of the results file")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "speedup.json")
    parser.add_argument("--force", action="store_true", help="replace --out even if it was timed with more repeats")
    args = parser.parse_args(argv)
    out = args.out
    refuse_smaller(out, None, args.force, {"repeats": args.repeats}, recorded_default={"repeats": REPEATS})
    cases = [c for c in CASES if not args.latency_targets_only or "latency_fraction" in c[1]]
    allocator = steady_allocator()
    result = {"benchmark": "speedup", "command": command_line("speedup", argv), "machine": machine_info(),
              "settings": {"repeats": args.repeats}, "allocator": allocator,
              "latency": [latency_case(n, t, k, args.repeats) for n, t, k in cases]}
    if args.latency_targets_only and out.is_file():
        previous = json.loads(out.read_text())
        kept = [r for r in previous["latency"] if "latency_target_ms" not in r]
        result = {**previous, "latency": kept + result["latency"],
                  "machine_latency_targets": result["machine"]}
    else:
        result["rebuild"] = rebuild_time()
    for row in result["latency"]:
        for layout, m in row["layouts"].items():
            print(f"{row['model']:<9} {row['rates']:<40} r{row['round_to']:<3} {layout:<14} FLOPs "
                  f"{row['flops_reduction']:.2f}x  "
                  + "  ".join(f"{k}: {m['speedup'][k]:.2f}x ({m['speedup_over_flops_reduction'][k]:.2f} of FLOPs)"
                              for k in m["speedup"]))
        if "latency_target_ms" in row:
            print(f"{row['model']:<9} latency target {row['latency_target_ms']:.1f} ms at batch 64: predicted "
                  f"{row.get('latency_predicted_ms', float('nan')):.1f} ms, measured {row['latency_measured_ms']:.1f} "
                  f"ms; {row['latency_achieved_fraction']:.3f} of the dense time, asked "
                  f"{row['latency_fraction']:.3f} ({row['latency_achieved_fraction'] / row['latency_fraction'] - 1:+.1%})")
    rb = result["rebuild"]
    print(f"apply_plan on ResNet-50 at 224x224 ({rb['groups']} groups): {rb['apply_plan_s']:.2f} s")
    write_json(out, relative_to=Path(__file__).resolve().parent.parent, obj=result)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    script_main(main, keeps_runs=False)
