#!/usr/bin/env bash
# Install nmtbench and its dependencies into the current Python environment.
#
# torch is installed first, so no other package can pull a different build:
#   - with an NVIDIA GPU (nvidia-smi works): the default (CUDA) build from PyPI, and the
#     `nvml` extra (nvidia-ml-py) for GPU utilisation/memory/power in results.json;
#   - without one: the CPU build, never the multi-GB CUDA wheels. First from the indexes pip
#     is configured with (a local wheel in find-links, a mirror), asking for the `+cpu` build
#     so that PyPI's CUDA build cannot match; then, if none has it, from the PyTorch CPU index
#     ($NMTBENCH_TORCH_CPU_INDEX) with a short timeout and no retries, so an unreachable index
#     fails in seconds instead of pip's five retries per package. On macOS PyPI's wheels are
#     the CPU build.
# Then `pip install -e .[dev]` (`.[dev,nvml]` with a GPU).
# Environment: PYTHON (default python3), NMTBENCH_TORCH_VERSION (default 2.13.0),
#              NMTBENCH_TORCH_CPU_INDEX (default https://download.pytorch.org/whl/cpu).
set -euo pipefail
PY=${PYTHON:-python3}
TORCH_VERSION=${NMTBENCH_TORCH_VERSION:-2.13.0}
CPU_INDEX=${NMTBENCH_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
cd "$(dirname "$0")/.."

extras=dev
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras=dev,nvml
fi

if "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] torch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
elif [[ $extras == dev,nvml ]]; then
  echo "[setup] NVIDIA GPU found: installing the CUDA build of torch==$TORCH_VERSION"
  "$PY" -m pip install "torch==$TORCH_VERSION"
elif [[ $(uname -s) == Darwin ]]; then
  echo "[setup] macOS: installing torch==$TORCH_VERSION (PyPI's macOS wheels are CPU builds)"
  "$PY" -m pip install "torch==$TORCH_VERSION"
else
  # x86-64 CPU builds carry the local label +cpu (PyPI's x86-64 wheels are CUDA builds).
  spec="torch==$TORCH_VERSION"
  [[ $(uname -m) == x86_64 ]] && spec="torch==$TORCH_VERSION+cpu"
  echo "[setup] no NVIDIA GPU: installing the CPU build $spec"
  if ! "$PY" -m pip install "$spec"; then
    echo "[setup] the configured indexes have no $spec: trying $CPU_INDEX"
    "$PY" -m pip install --timeout 15 --retries 0 "$spec" \
      --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple
  fi
fi
"$PY" -m pip install -e ".[$extras]"
