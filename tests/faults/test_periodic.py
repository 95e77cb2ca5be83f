"""Periodic resumable checkpoints (ResumeCheckpoint): every N steps or M minutes, besides the
validation ones, and never just before a validation (a resume from there would skip it)."""

from __future__ import annotations

import json

import pytest
import torch

from nmtbench.train import train

from ..conftest import TINY_TRANSFORMER, tiny_train_config
from .probe import probe_overrides


def periodic_run(tmp_path, *extra):
    return tiny_train_config(tmp_path, [*TINY_TRANSFORMER, "test=false", "trainer.max_steps=12",
                                        "trainer.val_check_interval=6", "data.toy.num_valid=8",
                                        "data.toy.num_test=8", "callbacks.bleu.max_len_b=4",
                                        *probe_overrides(tmp_path / "probe"), *extra])


def saves(tmp_path) -> list[int]:
    end = json.loads((tmp_path / "probe" / "end_rank0.json").read_text())
    assert {reason for _, reason in end["resume_saves"]} <= {"periodic"}
    return [step for step, _ in end["resume_saves"]]


@pytest.mark.slow
def test_every_n_steps_saves_last_and_defers_past_validations(tmp_path, fault_table):
    train(periodic_run(tmp_path, "callbacks.resume_checkpoint.every_n_steps=3"))
    # 3, then 6 is a validation step (ModelCheckpoint saves there): deferred to 7; 9; 12 validates.
    assert saves(tmp_path) == [3, 7, 9]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 12 and "optimizer_states" in last and "loops" in last  # resumable
    assert not list((tmp_path / "run" / "checkpoints").glob("last-v*.ckpt"))  # one last.ckpt
    fault_table.add("periodic checkpoints (every N steps)", True, 0, "last.ckpt at 3, 7, 9 besides validations")


@pytest.mark.slow
def test_every_minutes_saves_on_time(tmp_path):
    train(periodic_run(tmp_path, "callbacks.resume_checkpoint.every_minutes=1e-9"))
    assert saves(tmp_path) == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]


def test_bad_settings_are_one_line_config_errors(tmp_path):
    from nmtbench.errors import ConfigError
    from nmtbench.trainer_setup import instantiate_group

    from ..conftest import compose_config

    for override, key in (("callbacks.resume_checkpoint.every_n_steps=0", "every_n_steps"),
                          ("callbacks.resume_checkpoint.every_minutes=-1", "every_minutes"),
                          ("callbacks.nonfinite.action=ignore", "action"),
                          ("callbacks.nonfinite.max_consecutive=0", "max_consecutive")):
        cfg = compose_config([override, f"paths.output_dir={tmp_path}"])
        with pytest.raises(ConfigError, match=rf"callbacks\.\w+\.{key}"):
            instantiate_group(cfg.callbacks)
