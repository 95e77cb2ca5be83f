"""WallClockCallback: training wall-clock, validation time, GPU-hours and time-to-BLEU.

The clock runs from the start of the training loop (`on_train_start`: after data
preparation, model setup and device transfer) to its end (`on_train_end`). Validation
during fit (loss + BLEU decoding) is timed separately, so both "wall-clock" and "wall-clock
excluding validation" are known. After each validation the monitored metric (`val/bleu`,
logged by BleuCallback) is compared with each BLEU target; the first validation that
reaches a target records its step and time (`time/to_bleu_<target>`), once.

Device-hours = wall-clock x `trainer.world_size` (all processes of the run); on GPU runs
this is the GPU-hours figure papers quote ("12 hours on 8 P100" = 96 GPU-hours).

Timing is done on every rank (it is cheap) but only rank zero's clock is logged and written
to results.json. The state (elapsed times, the BLEU curve, targets reached) is saved in
checkpoints, so a resumed run continues its clock; the time between the last checkpoint
and an interruption is not counted.

Logged (TensorBoard, rank zero): `time/train_hours`, `time/train_hours_excl_val`,
`time/val_hours`, `time/device_hours`, `time/gpu_hours` (GPU runs) every
`log_every_n_steps` and after each validation; `time/to_bleu_<t>` (hours) and
`time/to_bleu_<t>_step` once per target.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger(__name__)

HOUR = 3600.0


def log_to_loggers(trainer: L.Trainer, metrics: Mapping[str, float], step: int | None = None) -> None:
    """Write scalars straight to the trainer's loggers at `step` (default: global step).

    Used by the measurement callbacks instead of `pl_module.log`, so values measured on
    rank zero are neither reduced across ranks nor averaged over steps by Lightning.
    Only rank zero writes.
    """
    if not trainer.is_global_zero or not metrics:
        return
    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)


class LogStepGate:
    """True once per optimizer step that is a logging step (`global_step % log_every_n_steps == 0`).

    `on_train_batch_end` runs for every micro-batch; with gradient accumulation several
    micro-batches share a global step, and only the first one after the optimizer step fires.
    The decision depends only on the global step, so it is the same on every DDP rank
    (collectives may be issued under it).
    """

    def __init__(self) -> None:
        self.last_step = -1

    def __call__(self, trainer: L.Trainer, every: int | None = None) -> bool:
        step = trainer.global_step
        every = max(1, int(every or trainer.log_every_n_steps or 1))
        if step == self.last_step or step == 0 or step % every != 0:
            return False
        self.last_step = step
        return True


def format_target(target: float) -> str:
    """20.0 -> "20", 27.3 -> "27.3" (used in metric names)."""
    return f"{float(target):g}"


class WallClockCallback(L.Callback):
    """Measure training wall-clock (with/without validation), device-hours and time-to-BLEU.

    Args:
        bleu_targets: BLEU values (0-100) whose first crossing is recorded.
        monitor: the logged metric compared with the targets.
        clock: a monotonic clock returning seconds (injectable for tests).
    """

    def __init__(
        self,
        bleu_targets: Sequence[float] = (20.0, 25.0, 27.3),
        monitor: str = "val/bleu",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        self.bleu_targets = sorted(float(t) for t in (bleu_targets or ()))
        self.monitor = monitor
        self.clock = clock
        self.world_size = 1
        self.is_gpu = False
        # Totals of earlier segments (resumed runs) + the open segment.
        self._train_before = 0.0  # seconds of train loop (incl. validation) in closed segments
        self._device_before = 0.0  # device-seconds in closed segments
        self._val_total = 0.0  # seconds of validation (closed intervals, all segments)
        self._start: float | None = None  # clock at on_train_start of the open segment
        self._val_start: float | None = None  # clock at the start of an open validation
        self.curve: list[dict[str, Any]] = []  # {step, hours, hours_excl_val, bleu}
        self.reached: dict[float, dict[str, Any]] = {}  # target -> first record reaching it
        self._gate = LogStepGate()
        self._resume_state: dict[str, Any] | None = None

    # -- clock ---------------------------------------------------------------------------
    def train_seconds(self) -> float:
        """Wall-clock of the training loop so far (validation included)."""
        open_segment = self.clock() - self._start if self._start is not None else 0.0
        return self._train_before + open_segment

    def val_seconds(self) -> float:
        open_val = self.clock() - self._val_start if self._val_start is not None else 0.0
        return self._val_total + open_val

    def device_seconds(self) -> float:
        open_segment = self.clock() - self._start if self._start is not None else 0.0
        return self._device_before + open_segment * self.world_size

    def _time_metrics(self) -> dict[str, float]:
        train, val = self.train_seconds(), self.val_seconds()
        metrics = {
            "time/train_hours": train / HOUR,
            "time/train_hours_excl_val": (train - val) / HOUR,
            "time/val_hours": val / HOUR,
            "time/device_hours": self.device_seconds() / HOUR,
        }
        if self.is_gpu:
            metrics["time/gpu_hours"] = metrics["time/device_hours"]
        return metrics

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.world_size = int(trainer.world_size)
        self.is_gpu = trainer.strategy.root_device.type == "cuda"

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply_resume_state()
        self._start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._gate(trainer):
            log_to_loggers(trainer, self._time_metrics())

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self._start is None:
            return
        self._val_start = self.clock()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is None:
            return
        self._val_total += self.clock() - self._val_start
        self._val_start = None
        metrics = self._time_metrics()
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None:
            metrics.update(self.record(trainer.global_step, float(value)))
        log_to_loggers(trainer, metrics)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None:
            return
        segment = self.clock() - self._start
        self._train_before += segment
        self._device_before += segment * self.world_size
        self._start = None
        metrics = self._time_metrics()
        log_to_loggers(trainer, metrics)
        log.info("Training wall-clock %.3f h (%.3f h excluding validation), %.3f device-hours on %d device(s)",
                 metrics["time/train_hours"], metrics["time/train_hours_excl_val"],
                 metrics["time/device_hours"], self.world_size)

    # -- BLEU curve and targets ---------------------------------------------------------
    def record(self, step: int, bleu: float) -> dict[str, float]:
        """Add a validation result to the curve; return `time/to_bleu_*` metrics of newly reached targets."""
        train, val = self.train_seconds(), self.val_seconds()
        point = {"step": int(step), "hours": train / HOUR, "hours_excl_val": (train - val) / HOUR,
                 "bleu": float(bleu)}
        self.curve.append(point)
        new: dict[str, float] = {}
        for target in self.bleu_targets:
            if target in self.reached or bleu < target:
                continue
            self.reached[target] = {**point, "device_hours": self.device_seconds() / HOUR}
            name = format_target(target)
            new[f"time/to_bleu_{name}"] = point["hours"]
            new[f"time/to_bleu_{name}_step"] = float(step)
            log.info("val/bleu %.2f reached target %s at step %d after %.3f h", bleu, name, step,
                     point["hours"])
        return new

    def time_to_bleu(self) -> list[dict[str, Any]]:
        """One record per target: {target, reached, step, hours, hours_excl_val, device_hours, bleu}."""
        out = []
        for target in self.bleu_targets:
            hit = self.reached.get(target)
            keys = ("step", "hours", "hours_excl_val", "device_hours", "bleu")
            out.append({"target": target, "reached": hit is not None,
                        **{k: (hit[k] if hit else None) for k in keys}})
        return out

    def summary(self) -> dict[str, Any]:
        """The numbers results.json needs (hours; `gpu_hours` None on non-GPU runs)."""
        train, val = self.train_seconds(), self.val_seconds()
        device_hours = self.device_seconds() / HOUR
        return {
            "train_hours": train / HOUR,
            "train_hours_excl_val": (train - val) / HOUR,
            "val_hours": val / HOUR,
            "device_hours": device_hours,
            "gpu_hours": device_hours if self.is_gpu else None,
            "time_to_bleu": self.time_to_bleu(),
            "val_curve": [dict(p) for p in self.curve],
        }

    # -- checkpointing -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "train_seconds": self.train_seconds(),
            "device_seconds": self.device_seconds(),
            "val_seconds": self.val_seconds(),
            "curve": [dict(p) for p in self.curve],
            "reached": {str(t): dict(r) for t, r in self.reached.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied at the next on_train_start, i.e. only when fitting resumes: Lightning also
        # restores callback states for trainer.test(ckpt_path=...), which must not roll this
        # run's clock and BLEU curve back to the checkpoint's.
        self._resume_state = dict(state_dict)

    def _apply_resume_state(self) -> None:
        state, self._resume_state = self._resume_state, None
        if not state:
            return
        self._train_before = float(state.get("train_seconds", 0.0))
        self._device_before = float(state.get("device_seconds", 0.0))
        self._val_total = float(state.get("val_seconds", 0.0))
        self.curve = [dict(p) for p in state.get("curve", [])]
        self.reached = {float(t): dict(r) for t, r in state.get("reached", {}).items()}

__all__ = ["WallClockCallback", "LogStepGate", "log_to_loggers", "format_target"]
