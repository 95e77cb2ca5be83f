"""Build (or reuse) the data cache: text -> joint BPE tokenizer -> token shards.

Takes the same overrides as scripts/train.py, e.g.

    python scripts/prepare_data.py data=toy
    python scripts/prepare_data.py data=files data.dir=../shared/data/wmt14_sample \
        data.valid_prefix=newstest2013 data.test_prefix=newstest2014
    python scripts/prepare_data.py                      # WMT14 from the HF hub (default)

Training runs the same code (Seq2SeqDataModule.prepare_data), so this is optional: it
lets the slow part run once, on a CPU machine, before training.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from nmtbench.config import exit_on_unknown_overrides
from nmtbench.data.prepare import prepare
from nmtbench.errors import NmtbenchError
from nmtbench.schema import register_configs

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@hydra.main(config_path="../configs", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        prepared = prepare(cfg.data)
    except NmtbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(prepared.dir)


if __name__ == "__main__":
    register_configs()  # the schemas configs/model and configs/data build on
    exit_on_unknown_overrides(CONFIG_DIR, "train")
    # Hydra's log directory: runs/prepare_data/<time>/ rather than runs/train/<time>/.
    if not any(arg.startswith("task_name=") for arg in sys.argv[1:]):
        sys.argv.append("task_name=prepare_data")
    main()
