#!/usr/bin/env bash
# One GPU check (issue 12): Transformer-base bf16 training tokens/s + MFU (eager, compiled),
# lstm_attention tokens/s, beam-4 decode sentences/s, the LSTM-vs-Transformer sequence-length
# benchmark and a 30-step trainer=gpu smoke run with its NVML fields. Prints one JSON line on
# stdout (progress on stderr); <= 8 minutes on an H100/H200. Without CUDA it says so and
# exits 0. Record the figures in docs/results.md.
#   bash scripts/gpu_check.sh [--sections transformer_base,decode] [--batch-tokens 16384]
set -euo pipefail
# From any directory: the benchmarks are the top-level package benchmarks/ of the repository.
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export PYTHONPATH="$root:$root/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec "${PYTHON:-python}" -m benchmarks.gpu_check "$@"
