#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu.py): the CUDA tests, the default job on the GPU,
# the callback's overhead in fp32/bf16/fp16, and the speed-up at batch 1024 for round_to 1-32.
#
#   bash scripts/gpu_check.sh            # writes benchmarks/results/gpu.json
#
# For a machine whose Python already has a CUDA build of torch, with no network: the package is
# installed without its dependencies (torch stays as it is). Missing pure-Python dependencies are
# installed from a wheel folder made beforehand where there is a network
# (bash scripts/gpu_wheels.sh -> .gpu_wheels/), if there is one. Exits with status 3, having
# changed nothing, where no GPU is visible (2 where $PYTHON has no torch); --smoke runs its parts
# at tiny sizes on the CPU, installing nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "gpu check: $PYTHON cannot import torch: give the interpreter that has the CUDA build of torch" \
    "(PYTHON=/path/to/python bash scripts/gpu_check.sh); nothing was run." >&2
  exit 2
fi
for arg in "$@"; do  # the script's own check on the CPU, at tiny sizes: nothing installed
  if [ "$arg" = "--smoke" ]; then exec "$PYTHON" -m benchmarks.gpu "$@"; fi
done
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  "$PYTHON" -c "import sys; sys.path.insert(0, '.'); from benchmarks.gpu import no_gpu_message; print(no_gpu_message())" \
    >&2 2>/dev/null || echo "gpu check: no CUDA GPU is visible to torch ($PYTHON); nothing was run." >&2
  exit 3
fi

WHEELS=${GPU_WHEELS:-.gpu_wheels}
missing=$("$PYTHON" - <<'PY'
import importlib.util
need = {"lightning": "lightning", "torchmetrics": "torchmetrics", "hydra": "hydra-core", "omegaconf": "omegaconf",
        "torch_pruning": "torch-pruning", "pytest": "pytest", "typing_extensions": "typing_extensions"}
print(" ".join(pkg for mod, pkg in need.items() if importlib.util.find_spec(mod) is None))
PY
)
if [ -n "$missing" ]; then
  if [ -d "$WHEELS" ]; then
    "$PYTHON" -m pip install --quiet --no-index --find-links "$WHEELS" $missing
  else
    echo "gpu check: missing Python packages: $missing. Install them, or make $WHEELS with scripts/gpu_wheels.sh where there is a network and bring it along." >&2
    exit 2
  fi
fi
"$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null
"$PYTHON" -m benchmarks.gpu "$@"
