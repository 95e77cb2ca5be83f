"""WallClockCallback: the run's one training clock, the validation curve and time-to-BLEU.

The clock runs from the start of the training loop (`on_train_start`: after data
preparation, model setup and device transfer) to its end (`on_train_end`). Validation
during fit (loss + BLEU decoding) is timed separately, so both "wall-clock" and "wall-clock
excluding validation" are known. Every other callback that needs training time reads this
clock (ThroughputCallback's tokens/s and MFU), so all times in results.json agree.
On CUDA the clock is read after a device synchronisation at each boundary.

After each validation the curve gets a point {step, hours, hours_excl_val, device_hours,
bleu, paper_bleu} from the logged `val/bleu` and `val/paper_bleu` (BleuCallback). The
metric named by `monitor` (either of those) is compared with each target of `bleu_targets`;
the first validation that reaches a target records its step and time, once
(`time/to_bleu_<t>` or `time/to_paper_bleu_<t>`). Targets are per experiment
(`callbacks.wallclock.bleu_targets` and `.monitor`), e.g. a paper's dev-set BLEU on
`val/paper_bleu`. At the end, `time_to_fraction_of_best` is the first validation reaching
90/95/99 % of the run's best value of the monitored metric: comparable across rows at any
scale.

Device-hours = wall-clock x `trainer.world_size` (all processes of the run); on GPU runs
this is the GPU-hours figure papers quote ("12 hours on 8 P100" = 96 GPU-hours).

Timing is done on every rank (it is cheap) but only rank zero's clock is logged and written
to results.json. The state (elapsed times, the curve, targets reached) is saved in
checkpoints, so a resumed run continues its clock; the time between the last checkpoint
and an interruption is not counted.

Logged (rank zero): `time/train_hours`, `time/train_hours_excl_val`, `time/val_hours`,
`time/device_hours`, `time/gpu_hours` (GPU runs) every `log_every_n_steps` and after each
validation; `time/to_<metric>_<t>` (hours) and `time/to_<metric>_<t>_step` once per target.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn

from nmtbench.callbacks.common import (
    HOUR,
    NO_FIT,
    Fields,
    LogStepGate,
    MeasurementCallback,
    Summary,
    format_target,
    log_to_loggers,
    sync_device,
    unmeasured,
)
from nmtbench.errors import ConfigError
from nmtbench.results_schema import CURVE_METRICS, time_to_fraction_of_best

log = logging.getLogger(__name__)


class WallClockCallback(MeasurementCallback):
    """Measure training wall-clock (with/without validation), device-hours and time-to-BLEU.

    Args:
        bleu_targets: values (0-100) of `monitor` whose first crossing is recorded.
        monitor: the logged metric compared with the targets: `val/bleu` (detokenized
            sacreBLEU) or `val/paper_bleu` (tokenized, compound-split; the papers' scale).
        clock: a monotonic clock returning seconds (injectable for tests).
    """

    CONFIG_NAME = "wallclock"
    SUMMARY_DEFAULTS = {"train_hours": None, "train_hours_excl_val": None, "val_hours": None,
                        "device_hours": None, "gpu_hours": None, "time_to_bleu": [],
                        "time_to_fraction_of_best": [], "val_curve": []}

    def __init__(
        self,
        bleu_targets: Sequence[float] = (20.0, 25.0),
        monitor: str = "val/bleu",
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        if monitor not in CURVE_METRICS:
            raise ConfigError(f"callbacks.wallclock.monitor={monitor!r} is not a validation BLEU metric: "
                              f"use one of {', '.join(CURVE_METRICS)}.")
        self.bleu_targets = sorted(float(t) for t in (bleu_targets or ()))
        self.monitor = monitor
        self.clock = clock
        self.world_size = 1
        self.is_gpu = False
        self.fitted = False
        # Totals of earlier segments (resumed runs) + the open segment.
        self._train_before = 0.0  # seconds of train loop (incl. validation) in closed segments
        self._device_before = 0.0  # device-seconds in closed segments
        self._val_total = 0.0  # seconds of validation (closed intervals, all segments)
        self._start: float | None = None  # clock at on_train_start of the open segment
        self._val_start: float | None = None  # clock at the start of an open validation
        self.curve: list[dict[str, Any]] = []  # {step, hours, hours_excl_val, device_hours, bleu, paper_bleu}
        self.reached: dict[float, dict[str, Any]] = {}  # target -> first curve point reaching it
        self._gate = LogStepGate()

    # -- the clock -----------------------------------------------------------------------
    def _open(self, since: float | None) -> float:
        return self.clock() - since if since is not None else 0.0

    def train_seconds(self) -> float:
        """Wall-clock of the training loop so far (validation included)."""
        return self._train_before + self._open(self._start)

    def val_seconds(self) -> float:
        return self._val_total + self._open(self._val_start)

    def train_seconds_excl_val(self) -> float:
        """Training time without validation: the time base of throughput and MFU."""
        return self.train_seconds() - self.val_seconds()

    def device_seconds(self) -> float:
        return self._device_before + self._open(self._start) * self.world_size

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
        super().on_train_start(trainer, pl_module)  # a resumed fit's clock and curve first
        self.fitted = True
        self._start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._gate(trainer):
            log_to_loggers(trainer, self._time_metrics())

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self._start is None:
            return
        sync_device(trainer)
        self._val_start = self.clock()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._val_start is None:
            return
        sync_device(trainer)
        self._val_total += self.clock() - self._val_start
        self._val_start = None
        metrics = self._time_metrics()
        values = {key: float(trainer.callback_metrics[name]) for name, key in CURVE_METRICS.items()
                  if name in trainer.callback_metrics}
        if "bleu" in values:
            metrics.update(self.record(trainer.global_step, values))
        log_to_loggers(trainer, metrics)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is None:
            return
        sync_device(trainer)
        segment = self.clock() - self._start
        self._train_before += segment
        self._device_before += segment * self.world_size
        self._start = None
        metrics = self._time_metrics()
        log_to_loggers(trainer, metrics)
        log.info("Training wall-clock %.3f h (%.3f h excluding validation), %.3f device-hours on %d device(s)",
                 metrics["time/train_hours"], metrics["time/train_hours_excl_val"],
                 metrics["time/device_hours"], self.world_size)

    # -- curve and targets ---------------------------------------------------------------
    def record(self, step: int, values: Mapping[str, float]) -> dict[str, float]:
        """Add a validation ({"bleu": ..., "paper_bleu": ...}) to the curve; return the
        `time/to_*` metrics of targets it reaches first."""
        train, val = self.train_seconds(), self.val_seconds()
        point = {"step": int(step), "hours": train / HOUR, "hours_excl_val": (train - val) / HOUR,
                 "device_hours": self.device_seconds() / HOUR, "bleu": float(values["bleu"]),
                 "paper_bleu": values.get("paper_bleu")}
        self.curve.append(point)
        value = point[CURVE_METRICS[self.monitor]]
        new: dict[str, float] = {}
        for target in self.bleu_targets:
            if target in self.reached or value is None or value < target:
                continue
            self.reached[target] = point
            name = f"time/to_{CURVE_METRICS[self.monitor]}_{format_target(target)}"
            new[name] = point["hours"]
            new[f"{name}_step"] = float(step)
            log.info("%s %.2f reached target %s at step %d after %.3f h", self.monitor, value,
                     format_target(target), step, point["hours"])
        return new

    def time_to_bleu(self) -> list[dict[str, Any]]:
        """One record per target: {target, metric, reached, step, hours, hours_excl_val,
        device_hours, bleu} (`bleu` = the monitored metric's value there)."""
        out = []
        for target in self.bleu_targets:
            hit = self.reached.get(target)
            keys = ("step", "hours", "hours_excl_val", "device_hours")
            out.append({"target": target, "metric": self.monitor, "reached": hit is not None,
                        **{k: (hit.get(k) if hit else None) for k in keys},
                        "bleu": hit[CURVE_METRICS[self.monitor]] if hit else None})
        return out

    def summary(self) -> Summary:
        """results.json fields: hours (`gpu_hours` null on non-GPU runs), the curve and
        time to the targets and to fractions of the best value."""
        if not self.fitted:
            return unmeasured(self.SUMMARY_DEFAULTS, NO_FIT)
        train, val = self.train_seconds(), self.val_seconds()
        device_hours = self.device_seconds() / HOUR
        r = Fields()
        r.put("train_hours", train / HOUR)
        r.put("train_hours_excl_val", (train - val) / HOUR)
        r.put("val_hours", val / HOUR)
        r.put("device_hours", device_hours)
        r.put("gpu_hours", device_hours if self.is_gpu else None,
              "not a GPU run (device_hours = wall-clock x processes)")
        r.put("time_to_bleu", self.time_to_bleu())
        r.put("time_to_fraction_of_best", time_to_fraction_of_best(self.curve, self.monitor))
        r.put("val_curve", [dict(p) for p in self.curve])
        return r.summary()

    # -- checkpointing -------------------------------------------------------------------
    def resume_state(self) -> dict[str, Any]:
        return {
            "train_seconds": self.train_seconds(),
            "device_seconds": self.device_seconds(),
            "val_seconds": self.val_seconds(),
            "curve": [dict(p) for p in self.curve],
            "reached": {str(t): dict(r) for t, r in self.reached.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self._train_before = float(state.get("train_seconds", 0.0))
        self._device_before = float(state.get("device_seconds", 0.0))
        self._val_total = float(state.get("val_seconds", 0.0))
        # Points of checkpoints written before paper BLEU existed lack the new keys.
        self.curve = [{"device_hours": None, "paper_bleu": None, **p} for p in state.get("curve", [])]
        key = CURVE_METRICS[self.monitor]
        self.reached = {float(t): {"device_hours": None, "paper_bleu": None, **r}
                        for t, r in state.get("reached", {}).items() if r.get(key) is not None}


__all__ = ["WallClockCallback"]
