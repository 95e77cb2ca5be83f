#!/usr/bin/env bash
# The lowest-versions lane: every core dependency of pyproject.toml at its lower bound (torch,
# lightning, torchmetrics, hydra-core, ... exactly as written after `>=`), in a fresh virtual
# environment, then the unit tests and a short end-to-end `train()` (the smoke experiment, a
# few dozen steps with validation, test and results.json), so the bounds stay true for what a
# run does, not only for what the unit tests import.
#
#   bash scripts/lowest.sh            # or: make lowest
#
# torch is the CPU build of its lowest version: from the PyTorch CPU index when it answers,
# else PyPI's build of that version (on x86-64 Linux a CUDA build: several GB, it runs on the
# CPU too). CI runs the same script (.github/workflows/lowest.yml) on the lowest Python.
# Environment: PYTHON (default python3), LOWEST_VENV (default .venv-lowest),
#              NMTBENCH_TORCH_CPU_INDEX (default https://download.pytorch.org/whl/cpu).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LOWEST_VENV:-.venv-lowest}
CPU_INDEX=${NMTBENCH_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}

"$PY" -m venv --clear "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python - > "$VENV/lowest.txt" <<'PY'
import pathlib
import re

text = pathlib.Path("pyproject.toml").read_text()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
for name, low in re.findall(r'"([A-Za-z0-9_.\-]+)>=([^",;\s]+)', block):
    print(f"{name}=={low}")
PY
echo "[lowest] lower bounds:"; sed 's/^/  /' "$VENV/lowest.txt"
torch_version=$(sed -n 's/^torch==//p' "$VENV/lowest.txt")
if [[ $(uname -s) == Linux && $(uname -m) == x86_64 ]] && python -m pip install --timeout 15 --retries 0 \
     "torch==${torch_version}+cpu" --index-url "$CPU_INDEX" --extra-index-url https://pypi.org/simple; then
  echo "[lowest] torch ${torch_version}+cpu from $CPU_INDEX"
else
  echo "[lowest] no CPU build of torch ${torch_version} reachable: installing PyPI's torch==${torch_version}"
  python -m pip install "torch==${torch_version}"
fi
python -m pip install -c "$VENV/lowest.txt" -e ".[dev]"
python -m pip list

export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
python -m pytest -q tests/unit
out=$(mktemp -d "${TMPDIR:-/tmp}/nmtbench-lowest.XXXXXX")
python scripts/train.py experiment=smoke trainer.max_steps=40 trainer.max_time=null trainer.val_check_interval=20 \
  data.toy.num_train=2000 data.toy.num_valid=32 data.toy.num_test=32 callbacks.progress_bar=null \
  trainer.enable_progress_bar=false paths.root_dir="$out" hydra.run.dir="$out/run"
python - "$out/run/results.json" <<'PY'
import json
import sys

results = json.load(open(sys.argv[1]))
assert results["steps"] == 40 and results["test_sacrebleu"] is not None, results
print(f"[lowest] train() end to end: {results['steps']} steps, test sacreBLEU {results['test_sacrebleu']:.2f}")
PY
rm -rf "$out"
echo "[lowest] passed with the lower bounds of pyproject.toml"
