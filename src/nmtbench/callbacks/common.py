"""What the measurement callbacks share: logging helpers and the `summary()` contract.

Every measurement callback (wall-clock, throughput, GPU stats, BLEU) subclasses
`MeasurementCallback`: it measures its own thing and returns, from `summary()`, its
results.json fields and the reason for each null one. `ResultsCallback` only merges these
summaries (docs/results_schema.md); a callback that is not configured contributes its
`SUMMARY_DEFAULTS` with the reason "not configured".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import lightning as L
import torch
import torch.distributed as dist

HOUR = 3600.0
NO_FIT = "no training in this process (test only)"

Summary = tuple[dict[str, Any], dict[str, str]]  # (fields, null_reasons)


class Fields:
    """Builds a summary: `put(key, value, reason)` records why a value is null."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.reasons: dict[str, str] = {}

    def put(self, key: str, value: Any, reason: str | None = None) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        self.values[key] = value
        if value is None:
            self.reasons[key] = reason or "not measured"
        else:
            self.reasons.pop(key, None)

    def summary(self) -> Summary:
        return dict(self.values), dict(self.reasons)


def unmeasured(defaults: Mapping[str, Any], reason: str) -> Summary:
    """A summary where nothing was measured: lists stay empty, scalars are null with `reason`."""
    fields = Fields()
    for key, default in defaults.items():
        fields.put(key, [] if isinstance(default, list) else None, reason)
    return fields.summary()


class MeasurementCallback(L.Callback):
    """A callback that contributes fields to results.json through `summary()`.

    Subclasses set `CONFIG_NAME` (their key under `callbacks:`) and `SUMMARY_DEFAULTS`
    (every field they contribute -> its value when not measured: None or []).
    """

    CONFIG_NAME: ClassVar[str] = ""
    SUMMARY_DEFAULTS: ClassVar[dict[str, Any]] = {}

    def summary(self) -> Summary:
        raise NotImplementedError

    # -- totals that continue when fitting resumes ------------------------------------------
    # Lightning restores callback states for a resumed fit and also for trainer.test(ckpt_path=
    # ...), which must not roll this run's totals back to the checkpoint's. So the saved state
    # is held until the next on_train_start, i.e. applied only when fitting resumes.
    def resume_state(self) -> dict[str, Any]:
        """What a checkpoint saves for a resumed fit to continue from (subclasses)."""
        return {}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's `resume_state()` (subclasses); called at fit start."""

    def state_dict(self) -> dict[str, Any]:
        return self.resume_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending_resume = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = self.__dict__.pop("_pending_resume", None)
        if state:
            self.restore(state)

    @classmethod
    def not_configured(cls) -> Summary:
        return unmeasured(cls.SUMMARY_DEFAULTS,
                          f"{cls.__name__} not configured (callbacks.{cls.CONFIG_NAME}=null)")


def find_callback(trainer: L.Trainer, cls: type) -> Any:
    """The first callback of type `cls` in `trainer.callbacks`, or None."""
    return next((cb for cb in trainer.callbacks if isinstance(cb, cls)), None)


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


def sync_device(trainer: L.Trainer) -> None:
    """Wait for queued CUDA work, so that a clock read afterwards includes it."""
    device = trainer.strategy.root_device
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def reduce_sum(trainer: L.Trainer, values: list[float]) -> list[float]:
    """Element-wise sum of `values` over all ranks (every rank must call it); float64."""
    counts = torch.tensor(values, dtype=torch.float64)
    if trainer.world_size > 1:
        device = trainer.strategy.root_device
        counts = trainer.strategy.reduce(counts.to(device if device.type == "cuda" else "cpu"),
                                         reduce_op="sum").cpu()
    return counts.tolist()


def gather_objects(items: list[Any]) -> list[Any]:
    """All items from every rank (concatenated in rank order); the input when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list[list[Any]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


__all__ = ["HOUR", "NO_FIT", "Summary", "Fields", "unmeasured", "MeasurementCallback", "find_callback",
           "log_to_loggers", "LogStepGate", "format_target", "sync_device", "reduce_sum", "gather_objects"]
