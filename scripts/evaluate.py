"""Evaluate a checkpoint on the test split: `python scripts/evaluate.py ckpt_path=...`
(see configs/evaluate.yaml). Writes hypotheses.txt, references.txt, scores.json."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nmtbench.config import exit_on_unknown_overrides
from nmtbench.errors import NmtbenchError
from nmtbench.evaluate import evaluate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    try:
        scores = evaluate(cfg)
    except NmtbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    return scores["sacrebleu"]


if __name__ == "__main__":
    exit_on_unknown_overrides(CONFIG_DIR, "evaluate")
    main()
