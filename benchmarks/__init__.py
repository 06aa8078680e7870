"""The project's benchmarks: each module is a script (``python benchmarks/<name>.py``) writing a
JSON file under ``benchmarks/results/``; ``python -m benchmarks`` runs them all and renders
``benchmarks/RESULTS.md``."""

# (part, arguments): structural and timing parts first, training ones after. The training parts
# run here on smaller budgets than their scripts' defaults, so that the whole run takes about an
# hour on 2 CPU cores (dense models come from the cache after the first run): methods on one
# seed, LeNet-5 on 3 seeds and 4+6 epochs (written to lenet_quick.json; lenet.json is the
# script's full budget, 5 seeds and 6+14 epochs, about 75 minutes on its own).
PARTS = [
    ("structure", []),
    ("targets", []),
    ("speedup", []),
    ("overhead", ["--steps", "25", "--rounds", "4"]),
    ("solver_speed", []),
    ("update_interval", []),
    ("methods", ["--seeds", "0", "--batches", "30", "--dense-epochs", "5", "--override",
                 "trainer.limit_val_batches=2"]),
    ("lenet", ["--seeds", "0", "1", "2", "--sparsify", "4", "--finetune", "6", "--repeats", "30",
               "--out", "benchmarks/results/lenet_quick.json"]),
    ("recipes", ["--seeds", "0", "1", "2"]),
]
