"""`Trainer`: Lightning's Trainer whose fit loop acts only between optimizer steps.

With gradient accumulation (k micro-batches per optimizer step) Lightning 2.6 may validate,
checkpoint or stop after any micro-batch: a time-based `val_check_interval`, the `max_time`
Timer and an early stop (`trainer.should_stop`) are checked after every micro-batch. A
checkpoint written there records the sampler's position but not the gradients accumulated
so far, so a run resumed from it drops them, and a stop there throws them away. Here the
epoch loop validates and stops only when the micro-batch it just ran ended an optimizer
step; a request that comes inside a step is served at the step's end. (The batch sampler
makes every epoch a whole number of steps, `nmtbench.data.batching`, so the step-counted
validations of `val_check_interval` fall on step boundaries by themselves.)

Checkpoints that rank zero writes alone (DDP) end with a broadcast of the outcome instead of
Lightning's barrier (`nmtbench.distributed.on_rank_zero`): if the write fails there, every
rank stops with the error instead of the others waiting in the barrier.

It also drops Lightning's per-micro-batch SIGTERM broadcast under DDP (a collective and a
host sync for every micro-batch): `nmtbench.callbacks.resume.ResumeCheckpoint` replaces
Lightning's SIGTERM handler, so that broadcast would only ever send zeros, and the ranks agree
on a stop once per optimizer step instead.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop
from lightning.pytorch.strategies import Strategy

from nmtbench.distributed import on_rank_zero


class StepBoundaryEpochLoop(_TrainingEpochLoop):
    """Lightning's training epoch loop, validating and stopping only between optimizer steps."""

    def _inside_optimizer_step(self) -> bool:
        """True after a micro-batch that accumulated without stepping the optimizer."""
        return self.batch_progress.current.ready > 0 and self._should_accumulate()

    def _should_check_val_fx(self, data_fetcher: Any) -> bool:
        return not self._inside_optimizer_step() and super()._should_check_val_fx(data_fetcher)

    @property
    def done(self) -> bool:
        if self._inside_optimizer_step() and not self._num_ready_batches_reached():
            return False
        return super().done

    def _broadcast_sigterm_tensor(self) -> None:
        return None


class Trainer(L.Trainer):
    """`lightning.pytorch.Trainer` with `StepBoundaryEpochLoop` (the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        epoch_loop = self.fit_loop.epoch_loop
        self.fit_loop.epoch_loop = StepBoundaryEpochLoop(
            self, min_steps=epoch_loop.min_steps, max_steps=epoch_loop.max_steps
        )

    def save_checkpoint(self, filepath: Any, weights_only: bool | None = None, storage_options: Any = None) -> None:
        """Lightning's save (every rank builds the checkpoint together), with rank zero's write
        followed by the broadcast of its outcome. Strategies that write on several ranks
        (sharded FSDP, DeepSpeed) keep Lightning's own save."""
        if self.model is None or type(self.strategy).save_checkpoint is not Strategy.save_checkpoint:
            return super().save_checkpoint(filepath, weights_only, storage_options)
        with self.profiler.profile("save_checkpoint"):
            checkpoint = self._checkpoint_connector.dump_checkpoint(weights_only)
            on_rank_zero(self, f"writing the checkpoint {filepath}", self.strategy.checkpoint_io.save_checkpoint,
                         checkpoint, filepath, storage_options=storage_options)


__all__ = ["StepBoundaryEpochLoop", "Trainer"]
