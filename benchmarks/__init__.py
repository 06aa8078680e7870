"""The project's benchmarks: each module is a script (``python benchmarks/<name>.py``) writing a
JSON file under ``benchmarks/results/``; ``python -m benchmarks`` runs them all and renders
``benchmarks/RESULTS.md``."""

# (part, arguments): structural and timing parts first, training ones after. Here every part
# runs on a smaller budget than its script's default, so that the whole run takes under an hour
# on 2 CPU cores once the dense models are cached: latency targets with global allocation only,
# fewer timing repeats, shorter solver trajectories, methods on one seed and 20 batches per
# epoch, LeNet-5 on 2 seeds and 4+5 epochs (into lenet_quick.json; lenet.json is the script's
# 5-seed, 6+14-epoch budget, over an hour on its own), the recipes on 2 seeds.
PARTS = [
    ("structure", []),
    ("targets", ["--latency-allocations", "global"]),
    ("speedup", ["--repeats", "12"]),
    ("overhead", ["--steps", "25", "--rounds", "3"]),
    ("solver_speed", ["--epochs", "6", "--finetune", "1"]),
    ("update_interval", []),
    ("methods", ["--seeds", "0", "--batches", "20", "--dense-epochs", "5", "--override",
                 "trainer.limit_val_batches=2"]),
    ("lenet", ["--seeds", "0", "1", "--sparsify", "4", "--finetune", "5", "--repeats", "30",
               "--out", "benchmarks/results/lenet_quick.json"]),
    ("recipes", ["--seeds", "0", "1"]),
]
