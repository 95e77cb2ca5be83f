"""NonFiniteLossCallback: a NaN/inf loss never reaches the weights.

Before every optimizer step, the step's training losses (every micro-batch) and, unless an
fp16 GradScaler already handles overflow, its gradients are checked. The verdict is part of
the step's one agreement between ranks (`nmtbench.distributed.StepSync`), so every rank
skips or stops at the same step without a collective of its own. Then, by `action`:

- `skip`: the update is dropped (gradients set to None: the optimizer leaves every parameter
  and its state alone; the step counter and LR schedule move on). Counted in
  `skipped_batches` (results.json: `nonfinite_skipped_batches`, see `summary()`); after
  `max_consecutive` skips in a row the run stops as below.
- `stop`: the run stops at once with `NonFiniteLossError`, naming the step (as logged for
  `train/loss`) and the last learning rate.

After each optimizer step the weights themselves are checked (`check_weights`): a finite
gradient with an extreme learning rate can still overflow them. The check is queued on the
device and read with the next step's agreement (no host sync of its own); non-finite weights
then stop the run. They are never checkpointed: `Seq2SeqModule.on_save_checkpoint` refuses to
write them (a check per save), so `last.ckpt` keeps the last good state.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from nmtbench.callbacks.common import MeasurementCallback
from nmtbench.distributed import all_reduce_sum
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
        self._weights_flag: torch.Tensor | None = None  # after the last update, not yet read

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
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        sync = getattr(pl_module, "step_sync", None)
        if stage == "fit" and sync is not None:
            sync.register("nonfinite_loss_or_grad", lambda: self._step_flag(trainer, pl_module))
            sync.register("nonfinite_weights", lambda: self._weights_flag if self._weights_flag is not None else 0.0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_checked_step = trainer.global_step
        self._weights_flag = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss.detach()).all()  # stays on the device: no sync per micro-batch
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
        self._last_loss_tensor = loss.detach()

    def _step_flag(self, trainer: L.Trainer, pl_module: L.LightningModule) -> torch.Tensor:
        """1 if this rank's losses or (unless an fp16 GradScaler handles overflow) gradients of
        the step are not all finite; a device tensor, read with the step's agreement."""
        bad = self._bad_loss if self._bad_loss is not None else torch.zeros((), dtype=torch.bool, device=pl_module.device)
        self._bad_loss = None
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if getattr(trainer.precision_plugin, "scaler", None) is None and grads:
            bad = bad | ~torch.isfinite(_max_abs(grads))
        return bad.float()

    def _agreed(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[bool, bool]:
        """(non-finite loss or gradient on any rank, non-finite weights after the previous update)."""
        sync = getattr(pl_module, "step_sync", None)
        if sync is not None and sync.step == trainer.global_step + 1 and "nonfinite_weights" in sync.values:
            return sync.values["nonfinite_loss_or_grad"] > 0, sync.values["nonfinite_weights"] > 0
        weights = self._weights_flag if self._weights_flag is not None else 0.0
        flags = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=pl_module.device).reshape(())
                             for v in (self._step_flag(trainer, pl_module), weights)])
        flags = all_reduce_sum(trainer, flags).tolist()
        return flags[0] > 0, flags[1] > 0

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        bad, bad_weights = self._agreed(trainer, pl_module)
        step = trainer.global_step
        lr = optimizer.param_groups[0]["lr"]
        if bad_weights:
            raise NonFiniteLossError(weights_message(step - 1, lr))
        if not bad:
            self.consecutive = 0
            return
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
        # Queued on the device; read with the next step's agreement (checkpoints check themselves).
        self._weights_flag = (~torch.isfinite(_max_abs(params))).float() if params else None


def weights_message(update_step: int, lr: float) -> str:
    return (f"The weights became non-finite in the update of step {update_step} (lr {lr:.3g}) although "
            "its loss and gradients were finite. Stopped before any checkpoint of them; the "
            "checkpoints hold the last finite weights. Lower model.optim.lr or set "
            "trainer.gradient_clip_val.")


def _max_abs(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max |x| over all tensors (NaN if any is NaN): finite exactly when every value is."""
    return torch.nn.utils.get_total_norm(tensors, norm_type=float("inf"))


