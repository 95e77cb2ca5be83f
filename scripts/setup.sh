#!/usr/bin/env bash
# Install nmtbench and its dependencies into the current Python environment.
#
# torch is installed first, so no other package can pull a different build:
#   - with an NVIDIA GPU (nvidia-smi works): the default (CUDA) build from PyPI;
#   - without one: the CPU build: a local wheel if pip's find-links has one, otherwise the
#     PyTorch CPU index ($NMTBENCH_TORCH_CPU_INDEX). Never the multi-GB CUDA wheels.
# Then `pip install -e .[dev]`. Set NMTBENCH_TORCH_VERSION to pin another torch.
set -euo pipefail
PY=${PYTHON:-python3}
TORCH_VERSION=${NMTBENCH_TORCH_VERSION:-2.13.0}
CPU_INDEX=${NMTBENCH_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
cd "$(dirname "$0")/.."

if "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] NVIDIA GPU found: installing the CUDA build of torch"
  "$PY" -m pip install "torch>=2.3"
else
  echo "[setup] no NVIDIA GPU: installing the CPU build of torch==$TORCH_VERSION"
  "$PY" -m pip install --no-index "torch==$TORCH_VERSION" 2>/dev/null \
    || "$PY" -m pip install "torch==$TORCH_VERSION" --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple
fi
"$PY" -m pip install -e ".[dev]"
