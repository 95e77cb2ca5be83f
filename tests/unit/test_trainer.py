"""nmtbench.trainer.Trainer: Lightning's Trainer with the step-boundary epoch loop (the
behaviour is tested end to end in tests/integration/test_accumulation_resume.py)."""

from __future__ import annotations

import hydra
import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from nmtbench.trainer import StepBoundaryEpochLoop, Trainer
from nmtbench.trainer_setup import fit_machine

from ..conftest import compose_config


def test_trainer_is_a_lightning_trainer_with_the_step_boundary_loop():
    trainer = Trainer(accelerator="cpu", max_steps=7, min_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    assert isinstance(trainer, L.Trainer)
    loop = trainer.fit_loop.epoch_loop
    assert isinstance(loop, StepBoundaryEpochLoop)
    assert (loop.max_steps, loop.min_steps) == (7, 2)
    assert loop.trainer is trainer and loop.val_loop.trainer is trainer


class _RecordsGradMode(L.LightningModule):
    """Records the autograd mode its validation and test steps run in."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)
        self.modes: dict[str, tuple[bool, bool]] = {}

    def _record(self, stage: str, batch) -> None:
        self.modes[stage] = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
        self.layer(batch)

    def validation_step(self, batch, batch_idx):
        self._record("validate", batch)

    def test_step(self, batch, batch_idx):
        self._record("test", batch)


@pytest.mark.parametrize("trainer_name", ["cpu", "default"])
def test_validation_and_test_run_under_no_grad_not_inference_mode(trainer_name, tmp_path):
    """The configs turn Lightning's default (inference_mode) off, so validation and test decode
    as evaluate.py and translate.py do (no_grad, where autocast caches its weight casts)."""
    cfg = compose_config([f"trainer={trainer_name}", f"paths.output_dir={tmp_path}"])
    fit_machine(cfg)  # resolves trainer=cpu's precision: auto, as train() does
    trainer = hydra.utils.instantiate(cfg.trainer, accelerator="cpu", devices=1, logger=False,
                                      enable_checkpointing=False, enable_progress_bar=False,
                                      enable_model_summary=False, callbacks=[])
    module, data = _RecordsGradMode(), DataLoader([torch.ones(2)] * 2, batch_size=None)
    trainer.validate(module, dataloaders=data, verbose=False)
    trainer.test(module, dataloaders=data, verbose=False)
    assert module.modes == {"validate": (False, False), "test": (False, False)}
