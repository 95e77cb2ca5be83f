"""The report on real (tiny) training runs: two seeds of one setting become one row."""

from __future__ import annotations

import csv

import pytest

from nmtbench.report import write_report
from nmtbench.train import train

from ..conftest import TINY_TRANSFORMER, tiny_train_config


@pytest.mark.slow
def test_two_seeds_of_a_tiny_run_share_one_row(tmp_path):
    runs = tmp_path / "runs"
    for seed in (1, 2):
        cfg = tiny_train_config(tmp_path, TINY_TRANSFORMER + [
            f"seed={seed}", f"paths.output_dir={runs / f'seed{seed}'}", f"paths.cache_dir={tmp_path / 'cache'}",
            "trainer.max_steps=6", "trainer.val_check_interval=3"])
        train(cfg)
    files = write_report([runs], tmp_path / "report", include_published=False)
    with open(files["table.csv"], newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["name"] == "smoke" and rows[0]["seeds"] == "[1, 2]"
    assert "2 seeds" in files["table.md"].read_text(encoding="utf-8")
