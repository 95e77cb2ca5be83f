"""ResumeCheckpoint: keep `last.ckpt` resumable, and stop on SIGTERM/SIGUSR1 without losing the run.

- **Periodic**: every `every_n_steps` optimizer steps and/or every `every_minutes` minutes
  of training (rank zero's clock), `<dirpath>/last.ckpt` is rewritten (besides the
  validation checkpoints of `ModelCheckpoint`), so a crash or `kill -9` loses at most that
  much work.
- **SIGTERM** (a cluster's preemption, `kill`, `scancel`) and **SIGUSR1** (SLURM's warning
  before the time limit, `#SBATCH --signal=SIGUSR1@120`): the handler only records the signal
  (`nmtbench.preemption`); the ranks agree on it in the optimizer step's one all-reduce
  (`nmtbench.distributed.StepSync`), so every rank saves `last.ckpt` of the same step together
  and stops with `nmtbench.errors.Preempted` (exit status 143). A signal that arrives during
  the step's forward/backward stops the run at the end of that step; one that arrives later
  in the step, at the end of the next. After SIGUSR1, rank zero first runs `scontrol requeue
  <job>`: SLURM restarts the job, whose `ckpt_path=last` resumes it exactly (same batches,
  learning rate and callback totals).
- During the test that follows training (nothing left to save) the ranks agree after every
  test batch and stop together, also with status 143.
- If a validation is due after the step, it runs first (and `ModelCheckpoint` saves its
  checkpoint); the save and stop follow at the end of the next step. Lightning would skip, on
  resume, a validation that a checkpoint taken before it interrupted. The worst case to exit
  is therefore one validation plus two steps.

A Lightning `Checkpoint` (so Lightning orders it with the checkpoint callbacks, after the
others; `nmtbench.trainer_setup` puts it last among them). All writes go through the trainer's CheckpointIO (`AtomicCheckpointIO` in `train.py`:
temporary file, fsync, rename). Checkpoints always hold the full training state.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.utilities import rank_zero_info

from nmtbench.distributed import all_reduce_sum, on_rank_zero
from nmtbench.errors import ConfigError, Preempted
from nmtbench.preemption import SIGNALS, requeue_slurm_job

log = logging.getLogger(__name__)


class ResumeCheckpoint(Checkpoint):
    """Periodic resumable `last.ckpt`, and save-then-stop on SIGTERM/SIGUSR1 (module doc)."""

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
        self.on_sigterm = on_sigterm  # handle SIGTERM and SIGUSR1 (nmtbench.preemption)
        self.stop_requested = False  # the ranks agreed to stop (at a step end)
        self.requeue = ""  # after SIGUSR1: what `scontrol requeue` did
        self.saved: list[tuple[int, str]] = []  # (global_step, reason) of this process's saves
        self._last_seen_step = -1
        self._deferred_step: int | None = None
        self._last_save_time = time.monotonic()

    @property
    def path(self) -> str:
        return os.path.join(self.dirpath, f"{self.filename}.ckpt")

    @property
    def sigterm_received(self) -> bool:
        """This process got a stop signal (not yet agreed with the other ranks)."""
        return SIGNALS.requested

    # -- the values agreed once per optimizer step ---------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        sync = getattr(pl_module, "step_sync", None)
        if stage != "fit" or sync is None:
            return
        if self.on_sigterm:
            sync.register("stop_sigterm", lambda: float(signal.SIGTERM in SIGNALS.received))
            sync.register("stop_sigusr1", lambda: float(signal.SIGUSR1 in SIGNALS.received))
        sync.register("save_due", lambda: float(trainer.is_global_zero and self._time_due()))

    def _time_due(self) -> bool:
        return self.every_minutes is not None and time.monotonic() - self._last_save_time >= 60.0 * self.every_minutes

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save_time = time.monotonic()
        self._last_seen_step = trainer.global_step
        # Lightning installs its handlers just before training starts; these replace them.
        if self.on_sigterm:
            SIGNALS.install(trainer)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_sigterm:
            SIGNALS.install(trainer)

    # -- the decision, at the end of every optimizer step --------------------------------
    def _agreed(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[bool, bool, bool]:
        """(stop, requeue, time_due) of the step that just ended, as all ranks agreed on them."""
        sync = getattr(pl_module, "step_sync", None)
        if sync is not None and sync.step == trainer.global_step and "save_due" in sync.values:
            values = sync.values
            sigusr1 = values.get("stop_sigusr1", 0.0) > 0
            return values.get("stop_sigterm", 0.0) > 0 or sigusr1, sigusr1, values["save_due"] > 0
        # No agreement ran this step (a module without step_sync): one reduce of our own.
        flags = torch.tensor([float(signal.SIGTERM in SIGNALS.received), float(signal.SIGUSR1 in SIGNALS.received),
                              float(trainer.is_global_zero and self._time_due())], dtype=torch.float64)
        flags = all_reduce_sum(trainer, flags.to(pl_module.device)).tolist()
        return bool(flags[0] or flags[1]) and self.on_sigterm, bool(flags[1]) and self.on_sigterm, bool(flags[2])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if step == self._last_seen_step:
            return  # a micro-batch of an accumulating step: no optimizer step yet
        self._last_seen_step = step
        stop, requeue, time_due = self._agreed(trainer, pl_module)
        self.stop_requested = self.stop_requested or stop
        steps_due = self.every_n_steps is not None and step % self.every_n_steps == 0
        if not (self.stop_requested or steps_due or time_due or self._deferred_step is not None):
            return
        if self._deferred_step is None and _validation_follows(trainer):
            self._deferred_step = step  # validate first (a checkpoint taken now would skip it
            return  # on resume); save at the end of the next step
        self._deferred_step = None
        reason = ("SIGUSR1" if requeue else "SIGTERM") if self.stop_requested else "periodic"
        self.save(trainer, reason)
        if not self.stop_requested:
            return
        resume = f"ckpt_path=last hydra.run.dir={os.path.dirname(self.dirpath)}"
        if requeue:
            self.requeue = on_rank_zero(trainer, "scontrol requeue", requeue_slurm_job) or "requeued by rank 0"
            raise Preempted(f"Stopped by SIGUSR1 at step {step}; saved {self.path}; {self.requeue}. The "
                            f"requeued job (or the same command plus {resume}) resumes from it.")
        raise Preempted(f"Stopped by {SIGNALS.describe()} at step {step}; saved {self.path}. Resume with "
                        f"the same command plus {resume}")

    # -- the test after training: nothing to save, stop together -------------------------
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.on_sigterm:
            return
        flags = torch.tensor([float(SIGNALS.requested)], dtype=torch.float64, device=pl_module.device)
        if all_reduce_sum(trainer, flags).item() > 0:
            message = (f"Stopped by {SIGNALS.describe()} during the test. Training had finished and its "
                       "checkpoints are complete: score them with scripts/evaluate.py ckpt_path=...")
            log.warning(message)
            raise Preempted(message)

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
