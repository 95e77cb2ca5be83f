"""ResumeCheckpoint: keep `last.ckpt` resumable, and stop on SIGTERM without losing the run.

- **Periodic**: every `every_n_steps` optimizer steps and/or every `every_minutes` minutes
  of training, `<dirpath>/last.ckpt` is rewritten (besides the validation checkpoints of
  `ModelCheckpoint`), so a crash or `kill -9` loses at most that much work.
- **SIGTERM** (a cluster's preemption, `kill`, `scancel`): the run finishes the optimizer step
  it is in, saves `last.ckpt` of that step and stops with `nmtbench.errors.Preempted` (exit
  status 143). `ckpt_path=last` resumes it exactly (same batches, learning rate and callback
  totals). The handler only sets a flag; the decision is taken at the end of an optimizer
  step on every rank together (one all-reduce under DDP), so all processes save the same step
  and exit.
- During the test after training (nothing left to save) SIGTERM stops the run at once, also
  with status 143.
- If a validation is due after that step, it runs first (and `ModelCheckpoint` saves its
  checkpoint); the stop follows at the end of the next step. Lightning would skip, on resume,
  a validation that a checkpoint taken before it interrupted. The worst case to exit is
  therefore one validation plus two steps.

Why not Lightning's own SIGTERM handling: Lightning 2.6 raises on each rank that sees the
signal (ranks can stop at different steps) and also in the middle of a validation, and
saves nothing. Under SLURM, Lightning's auto-requeue (`SIGUSR1`, `#SBATCH --signal`) still
works: its handler stays in place; the `scontrol requeue` it issues ends the job with
SIGTERM, which lands here.

All writes go through the trainer's CheckpointIO (`AtomicCheckpointIO` in `train.py`:
temporary file, fsync, rename). Checkpoints always hold the full training state.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from nmtbench.errors import ConfigError, Preempted

log = logging.getLogger(__name__)


class ResumeCheckpoint(L.Callback):
    """Periodic resumable `last.ckpt`, and save-then-stop on SIGTERM (see the module doc)."""

    def __init__(self, dirpath: str, every_n_steps: int | None = None, every_minutes: float | None = None,
                 on_sigterm: bool = True, filename: str = "last"):
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"callbacks.resume_checkpoint.every_n_steps must be >= 1 or null, got {every_n_steps}.")
        if every_minutes is not None and every_minutes <= 0:
            raise ConfigError(f"callbacks.resume_checkpoint.every_minutes must be > 0 or null, got {every_minutes}.")
        self.dirpath = str(dirpath)
        self.filename = filename
        self.every_n_steps = every_n_steps
        self.every_minutes = every_minutes
        self.on_sigterm = on_sigterm
        self.sigterm_received = False  # set by the signal handler (this process)
        self.stop_requested = False  # any rank got SIGTERM (agreed at a step end)
        self.saved: list[tuple[int, str]] = []  # (global_step, reason) of this process's saves
        self._last_seen_step = -1
        self._deferred_step: int | None = None
        self._last_save_time = time.monotonic()
        self._previous_handler: Any = None

    @property
    def path(self) -> str:
        return os.path.join(self.dirpath, f"{self.filename}.ckpt")

    # -- the signal --------------------------------------------------------------------
    def _handle_sigterm(self, signum: int, frame: Any) -> None:
        if not self.sigterm_received:
            log.warning("SIGTERM received: saving %s at the end of this optimizer step, then stopping.",
                        self.path)
        self.sigterm_received = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save_time = time.monotonic()
        self._last_seen_step = trainer.global_step
        # Lightning installs its handlers just before training starts; this one replaces them.
        if self.on_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._handle_sigterm)

    def _restore_handler(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous_handler)
        self._previous_handler = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handler()

    # During the test that follows training there is nothing to save: stop at once (status 143).
    def _stop_test(self, signum: int, frame: Any) -> None:
        message = ("Stopped by SIGTERM during the test. Training had finished and its checkpoints are "
                   "complete: score them with scripts/evaluate.py ckpt_path=...")
        log.warning(message)
        raise Preempted(message)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._stop_test)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_handler()

    # -- the decision, at the end of every optimizer step --------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_seen_step:
            return  # a micro-batch of an accumulating step: no optimizer step yet
        self._last_seen_step = step
        time_due = (self.every_minutes is not None
                    and time.monotonic() - self._last_save_time >= 60.0 * self.every_minutes)
        stop = self.sigterm_received
        if trainer.world_size > 1:  # every rank takes the same decision (rank zero's clock)
            flags = torch.tensor([float(stop), float(time_due and trainer.is_global_zero)],
                                 device=pl_module.device)
            flags = trainer.strategy.reduce(flags, reduce_op="sum")
            stop, time_due = bool(flags[0] > 0), bool(flags[1] > 0)
        self.stop_requested = self.stop_requested or stop
        steps_due = self.every_n_steps is not None and step % self.every_n_steps == 0
        if not (self.stop_requested or steps_due or time_due or self._deferred_step is not None):
            return
        if self._deferred_step is None and _validation_follows(trainer):
            self._deferred_step = step  # validate first (a checkpoint taken now would skip it
            return  # on resume); save at the end of the next step
        self._deferred_step = None
        reason = "SIGTERM" if self.stop_requested else "periodic"
        self.save(trainer, reason)
        if self.stop_requested:
            raise Preempted(
                f"Stopped by SIGTERM at step {step}; saved {self.path}. Resume with the same command "
                f"plus ckpt_path=last hydra.run.dir={os.path.dirname(self.dirpath)}"
            )

    def save(self, trainer: L.Trainer, reason: str) -> None:
        """Write `last.ckpt` of the current step (all ranks call this together)."""
        start = time.perf_counter()
        trainer.save_checkpoint(self.path)
        self._last_save_time = time.monotonic()
        self.saved.append((trainer.global_step, reason))
        rank_zero_info(f"Saved {self.path} at step {trainer.global_step} ({reason}, "
                       f"{time.perf_counter() - start:.1f} s)")


def _validation_follows(trainer: L.Trainer) -> bool:
    """Whether Lightning validates right after the current training batch."""
    loop = trainer.fit_loop.epoch_loop
    try:
        return bool(loop._should_check_val_fx(trainer.fit_loop._data_fetcher))
    except (AttributeError, TypeError):  # another Lightning version: save now
        return False
