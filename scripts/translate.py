"""Translate stdin or a file with a checkpoint, batched:
`python scripts/translate.py ckpt_path=... [input=FILE] [output=FILE] beam_size=4`
(see configs/translate.yaml). Needs only the checkpoint (its tokenizer is inside)."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nmtbench.config import exit_on_unknown_overrides
from nmtbench.errors import NmtbenchError
from nmtbench.evaluate import translate

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@hydra.main(version_base="1.3", config_path="../configs", config_name="translate")
def main(cfg: DictConfig) -> None:
    try:
        translate(cfg)
    except NmtbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    exit_on_unknown_overrides(CONFIG_DIR, "translate")
    main()
