"""Per-layer summaries of a pruning result, and CPU latency measurement."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
from torch import nn

from .flops import ModelCost


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


@torch.no_grad()
def measure_latency_ms(model: nn.Module, example: torch.Tensor, repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of one forward pass of ``example`` in eval mode, in milliseconds."""
    was_training = model.training
    model.eval()
    try:
        for _ in range(warmup):
            model(example)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(example)
            times.append((time.perf_counter() - start) * 1e3)
    finally:
        model.train(was_training)
    return statistics.median(times)


def compare_latency(dense: nn.Module, pruned: nn.Module, input_shape: Sequence[int],
                    batch_sizes: Sequence[int] = (1, 256), repeats: int = 30,
                    memory_format: torch.memory_format = torch.contiguous_format) -> dict:
    """Latency of both models at each batch size, measured alternately in one process."""
    out = {"dense": {}, "pruned": {}, "speedup": {}}
    for bs in batch_sizes:
        x = torch.randn(bs, *input_shape[1:]).contiguous(memory_format=memory_format)
        # interleave the two models so that machine noise hits both alike
        d, p = [], []
        for _ in range(3):
            d.append(measure_latency_ms(dense, x, repeats=max(repeats // 3, 3)))
            p.append(measure_latency_ms(pruned, x, repeats=max(repeats // 3, 3)))
        dm, pm = statistics.median(d), statistics.median(p)
        out["dense"][f"batch_{bs}"] = dm
        out["pruned"][f"batch_{bs}"] = pm
        out["speedup"][f"batch_{bs}"] = dm / pm
    return out
