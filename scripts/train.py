"""Train a model: `python scripts/train.py model=transformer` (see configs/train.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from nmtbench.errors import NmtbenchError
from nmtbench.schema import register_configs
from nmtbench.train import train


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
    main()
