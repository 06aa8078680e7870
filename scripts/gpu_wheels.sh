#!/usr/bin/env bash
# Wheels of the package's pure-Python dependencies (not torch), at the versions of this machine's
# .venv, in .gpu_wheels/: for scripts/gpu_check.sh on a GPU machine without a network (made here,
# carried there).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
pins=$("$PYTHON" - <<'PY'
import importlib.metadata as md
names = ["lightning", "lightning-utilities", "torchmetrics", "hydra-core", "omegaconf", "antlr4-python3-runtime",
         "torch-pruning", "pytest", "pluggy", "iniconfig", "typing_extensions", "fsspec", "packaging", "tqdm", "PyYAML"]
print(" ".join(f"{n}=={md.version(n)}" for n in names))
PY
)
rm -rf .gpu_wheels && mkdir -p .gpu_wheels
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir .gpu_wheels $pins
du -sh .gpu_wheels
