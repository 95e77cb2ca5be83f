"""nmtbench.trainer.Trainer: Lightning's Trainer with the step-boundary epoch loop (the
behaviour is tested end to end in tests/integration/test_accumulation_resume.py)."""

from __future__ import annotations

import lightning as L

from nmtbench.trainer import StepBoundaryEpochLoop, Trainer


def test_trainer_is_a_lightning_trainer_with_the_step_boundary_loop():
    trainer = Trainer(accelerator="cpu", max_steps=7, min_steps=2, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    assert isinstance(trainer, L.Trainer)
    loop = trainer.fit_loop.epoch_loop
    assert isinstance(loop, StepBoundaryEpochLoop)
    assert (loop.max_steps, loop.min_steps) == (7, 2)
    assert loop.trainer is trainer and loop.val_loop.trainer is trainer
