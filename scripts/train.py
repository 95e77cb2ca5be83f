"""Train a model: `python scripts/train.py model=transformer` (see configs/train.yaml)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nmtbench.config import exit_on_unknown_overrides
from nmtbench.errors import NmtbenchError
from nmtbench.schema import register_configs
from nmtbench.train import train

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    except NmtbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    # Returned for Hydra sweepers (e.g. Optuna) that optimise a scalar.
    return metrics.get("val/best_bleu")


if __name__ == "__main__":
    register_configs()  # the schemas configs/model and configs/data build on
    exit_on_unknown_overrides(CONFIG_DIR, "train")
    main()
