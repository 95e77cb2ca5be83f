"""NonFiniteLossCallback: a NaN/inf loss never reaches the weights.

Before every optimizer step, the step's training losses (every micro-batch) and, unless an
fp16 GradScaler already handles overflow, its gradients are checked. Under DDP the verdict
is all-reduced, so every rank skips or stops at the same step. Then, by `action`:

- `skip`: the update is dropped (gradients set to None: the optimizer leaves every parameter
  and its state alone; the step counter and LR schedule move on). Counted in
  `skipped_batches` (results.json: `nonfinite_skipped_batches`, see `summary()`); after
  `max_consecutive` skips in a row the run stops as below.
- `stop`: the run stops at once with `NonFiniteLossError`, naming the step (as logged for
  `train/loss`) and the last learning rate.

After each optimizer step the weights themselves are checked (`check_weights`): a finite
gradient with an extreme learning rate can still overflow them. Non-finite weights always
stop the run, before any checkpoint of them is written (this callback runs before the
checkpoint callbacks and before validation), so `last.ckpt` keeps the last good state.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from nmtbench.callbacks.common import MeasurementCallback
from nmtbench.errors import ConfigError, NonFiniteLossError

log = logging.getLogger(__name__)

ACTIONS = ("skip", "stop")


class NonFiniteLossCallback(MeasurementCallback):
    """Skip or stop on a non-finite loss/gradient; stop on non-finite weights."""

    CONFIG_NAME = "nonfinite"
    SUMMARY_DEFAULTS = {"nonfinite_skipped_batches": None}

    def __init__(self, action: str = "skip", max_consecutive: int = 5, check_weights: bool = True):
        if action not in ACTIONS:
            raise ConfigError(f"callbacks.nonfinite.action must be one of {', '.join(ACTIONS)}, got '{action}'.")
        if max_consecutive < 1:
            raise ConfigError(f"callbacks.nonfinite.max_consecutive must be >= 1, got {max_consecutive}.")
        self.action = action
        self.max_consecutive = int(max_consecutive)
        self.check_weights = check_weights
        self.skipped_batches = 0  # optimizer steps dropped over the run (continues on resume)
        self.consecutive = 0
        self.skipped_steps: list[int] = []  # this process's skipped steps (for messages/tests)
        self._bad_loss: torch.Tensor | None = None  # any non-finite micro-batch loss since the last step
        self._last_loss_tensor: torch.Tensor | None = None
        self._last_checked_step = -1

    # -- results.json --------------------------------------------------------------------
    def summary(self) -> tuple[dict[str, Any], dict[str, str]]:
        """(fields, null_reasons) for results.json: `nonfinite_skipped_batches` is always a number."""
        return {"nonfinite_skipped_batches": self.skipped_batches}, {}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_batches": self.skipped_batches, "consecutive": self.consecutive}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_batches = int(state_dict.get("skipped_batches", 0))
        self.consecutive = int(state_dict.get("consecutive", 0))

    # -- checks --------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_checked_step = trainer.global_step

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()  # stays on the device: no sync per micro-batch
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
        self._last_loss_tensor = loss.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        bad = self._bad_loss if self._bad_loss is not None else torch.zeros((), dtype=torch.bool, device=pl_module.device)
        self._bad_loss = None
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        if scaler is None and grads:  # fp16 loss scaling skips overflowing steps itself
            bad = bad | ~torch.isfinite(_max_abs(grads))
        if not _agree(trainer, pl_module, bad):
            self.consecutive = 0
            return
        step = trainer.global_step
        lr = optimizer.param_groups[0]["lr"]
        loss = float("nan") if self._last_loss_tensor is None else float(self._last_loss_tensor)
        what = f"Non-finite training loss or gradient (last loss {loss}) at step {step} (lr {lr:.3g})"
        if self.action == "stop":
            raise NonFiniteLossError(
                f"{what}. Stopped before the update; the checkpoints hold the last finite weights. "
                "Lower model.optim.lr, set trainer.gradient_clip_val, or use "
                "callbacks.nonfinite.action=skip to drop such batches.")
        self.consecutive += 1
        if self.consecutive > self.max_consecutive:
            raise NonFiniteLossError(
                f"{what}: {self.consecutive} non-finite steps in a row "
                f"(callbacks.nonfinite.max_consecutive={self.max_consecutive}). Stopped before the "
                "update; the checkpoints hold the last finite weights. Lower model.optim.lr or set "
                "trainer.gradient_clip_val.")
        optimizer.zero_grad(set_to_none=True)  # no update: parameters and optimizer state unchanged
        self.skipped_batches += 1
        self.skipped_steps.append(step)
        log.warning("%s: update skipped (%d in a row, %d in the run).", what, self.consecutive, self.skipped_batches)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self.check_weights or step == self._last_checked_step:
            return  # no optimizer step since the last check (gradient accumulation)
        self._last_checked_step = step
        params = [p.detach() for p in pl_module.parameters()]
        bad = ~torch.isfinite(_max_abs(params)) if params else torch.zeros((), dtype=torch.bool)
        if _agree(trainer, pl_module, bad):
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            raise NonFiniteLossError(
                f"The weights became non-finite in the update of step {step - 1} (lr {lr:.3g}) although "
                "its loss and gradients were finite. Stopped before any checkpoint of them; the "
                "checkpoints hold the last finite weights. Lower model.optim.lr or set "
                "trainer.gradient_clip_val.")


def _max_abs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max |x| over all tensors (NaN if any is NaN): finite exactly when every value is."""
    return torch.nn.utils.get_total_norm(tensors, norm_type=float("inf"))


def _agree(trainer: L.Trainer, pl_module: L.LightningModule, bad: torch.Tensor) -> bool:
    """True if any rank saw a non-finite value (one sync; an all-reduce under DDP)."""
    flag = bad.to(device=pl_module.device, dtype=torch.float32).reshape(1)
    if trainer.world_size > 1:
        flag = trainer.strategy.reduce(flag, reduce_op="sum")
    return bool(flag.item() > 0)
