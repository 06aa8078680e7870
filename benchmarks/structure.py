"""FLOPs (MACs) and parameters of the zoo models, dense and pruned at the papers' rates,
against the published figures. Pure structure: no training, no data. The rated cases are
pruned with FSM's importance (on BatchNorm parameters drawn at random, so that the ranking is
not all ties): the paper's rates through this engine give the paper's structures.

    python benchmarks/structure.py [--out FILE]

prints a table and writes benchmarks/results/structure.json: a list of
{model, rates, flops, params, published_flops, published_params, flops_error, params_error}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: the repository root holds the benchmarks package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import command_line
from lightning_ssr.app.models import build_model
from lightning_ssr.cost import count_cost
from lightning_ssr.methods.oneshot import prune_oneshot
from lightning_ssr.report import machine_info, write_json

# (model, input (C, size), rates or None for dense, published MACs, published params)
CASES = [
    ("lenet5", (1, 28), None, 2.3e6, 0.43e6),  # SSR paper (Caffe LeNet)
    ("vgg16_bn", (3, 32), None, 313.7e6, 14.98e6),  # FSM README
    ("vgg16_bn", (3, 32), "[0.3]*5+[0.35]*3+[0.8]*5", 106.8e6, 2.05e6),
    ("vgg16_bn", (3, 32), "[0.5]*8+[0.8]*5", 59.7e6, 1.41e6),
    ("resnet56", (3, 32), None, 125.5e6, 0.85e6),
    ("resnet56", (3, 32), "[0.]+[0.6,0.]*9+[0.6,0.]*9+[0.4,0.]*9", 61.7e6, 0.48e6),
    ("resnet56", (3, 32), "[0.]+[0.7,0.]*27", 40.2e6, 0.27e6),
]


def measure(name: str, channels: int, size: int, rates: str | None) -> tuple[int, int]:
    model = build_model(name, in_channels=channels, num_classes=10, input_size=size)
    x = torch.zeros(2, channels, size, size)
    if rates is not None:
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.1)
                    m.bias.copy_(torch.randn(m.num_features, generator=gen))
        prune_oneshot(model, x, rates, importance="fsm")
    cost = count_cost(model, x)
    return cost.macs, cost.params


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "structure.json")
    out = parser.parse_args(argv).out
    rows = []
    print(f"{'model':<10} {'rates':<40} {'MACs':>9} {'published':>9} {'err':>6} {'params':>7} {'published':>9} {'err':>6}")
    for name, (c, s), rates, pub_flops, pub_params in CASES:
        flops, params = measure(name, c, s, rates)
        row = {"model": name, "rates": rates or "dense", "importance": "fsm" if rates else None, "flops": flops,
               "params": params,
               "published_flops": pub_flops, "published_params": pub_params,
               "flops_error": flops / pub_flops - 1, "params_error": params / pub_params - 1}
        rows.append(row)
        print(f"{name:<10} {row['rates']:<40} {flops / 1e6:>8.2f}M {pub_flops / 1e6:>8.2f}M "
              f"{100 * row['flops_error']:>+5.1f}% {params / 1e6:>6.3f}M {pub_params / 1e6:>8.3f}M "
              f"{100 * row['params_error']:>+5.1f}%")
    write_json(out, relative_to=Path(__file__).resolve().parent.parent,
               obj={"benchmark": "structure", "command": command_line("structure", argv), "machine": machine_info(),
                    "rows": rows})
    print(f"wrote {out}")
    return rows


if __name__ == "__main__":
    main()
