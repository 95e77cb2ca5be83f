"""Train a model: `python scripts/train.py model=transformer` (see configs/train.yaml).
The same as the console script `nmtbench-train`: both run `nmtbench.cli.train`."""

from nmtbench.cli import train

if __name__ == "__main__":
    train()
