"""Optimisers and learning-rate schedules named in `model.optim`.

Schedules return a multiplier on `optim.lr`, evaluated at the optimizer step count
(so gradient accumulation does not stretch warmup):

- `inverse_sqrt` (Vaswani et al. 2017, eq. 3):
      lr = optim.lr * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5)
  `optim.lr` is a scale (1.0 = the paper).
- `constant`: lr = optim.lr, with an optional linear warmup.
- `halving` (Luong et al. 2015, sec. 4.1): lr = optim.lr * decay_factor^k, where k counts
  the epochs started at or after `decay_start_epoch` (1-based, as the paper counts).

`lr_at` is the one formula; `build_scheduler` applies it through torch's `LambdaLR`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from nmtbench.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class OptimConfig:
    # Defaults: the Transformer's optimiser, Vaswani et al. 2017, section 5.3 (the LSTM rows'
    # SGD recipe is registered with nmtbench.models.lstm). Gradient clipping is a trainer flag:
    # `trainer.gradient_clip_val`.
    name: str = "adam"  # adam | sgd; "We used the Adam optimizer"
    lr: float = 1.0  # inverse_sqrt: scale on eq. 3 (1.0 = the paper); else the peak lr
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # beta1 = 0.9, beta2 = 0.98
    eps: float = 1e-9  # epsilon = 1e-9
    weight_decay: float = 0.0  # none in the paper
    schedule: str = "inverse_sqrt"  # inverse_sqrt (eq. 3) | constant | halving
    warmup_steps: int = 4000  # warmup_steps = 4000
    decay_start_epoch: int = 0  # halving: first (1-based) epoch with a halved lr; 0 = never
    decay_factor: float = 0.5  # halving: lr multiplier per epoch

    def __post_init__(self) -> None:
        if self.name not in ("adam", "sgd"):
            raise ConfigError(f"model.optim.name must be 'adam' or 'sgd', got '{self.name}'.")
        if self.schedule not in ("inverse_sqrt", "constant", "halving"):
            raise ConfigError(
                f"model.optim.schedule must be inverse_sqrt, constant or halving, got '{self.schedule}'."
            )
        if not self.lr > 0:
            raise ConfigError(f"model.optim.lr must be > 0 (the peak lr, or the inverse_sqrt scale), got {self.lr}.")
        if self.schedule == "inverse_sqrt" and self.warmup_steps <= 0:
            raise ConfigError("model.optim.warmup_steps must be > 0 for the inverse_sqrt schedule.")


def lr_at(cfg: OptimConfig, step: int, epoch: int = 0, model_dim: int = 512) -> float:
    """Learning rate at optimizer step `step` (1-based) during 0-based epoch `epoch`."""
    step = max(step, 1)
    if cfg.schedule == "inverse_sqrt":
        return cfg.lr * model_dim**-0.5 * min(step**-0.5, step * cfg.warmup_steps**-1.5)
    if cfg.schedule == "constant":
        warm = min(1.0, step / cfg.warmup_steps) if cfg.warmup_steps > 0 else 1.0
        return cfg.lr * warm
    # halving
    halvings = 0
    if cfg.decay_start_epoch > 0:
        halvings = max(0, (epoch + 1) - cfg.decay_start_epoch + 1)
    return cfg.lr * cfg.decay_factor**halvings


def build_optimizer(cfg: OptimConfig, params) -> torch.optim.Optimizer:
    """torch.optim.Adam or SGD. On CPU the fused implementation (one vectorised kernel over all
    parameters; same update rule) replaces torch's default per-parameter loop (~10x faster,
    docs/performance.md). On GPUs torch's default (multi-tensor `foreach`) is kept: a
    fused optimizer unscales fp16 gradients itself, which Lightning's 16-mixed gradient
    clipping refuses."""
    params = list(params)
    fused = bool(params) and all(p.device.type == "cpu" and p.dtype.is_floating_point for p in params)
    # The scheduler sets the real lr every step; lr here is the step-1 value's placeholder.
    if cfg.name == "adam":
        return torch.optim.Adam(
            params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
            fused=fused or None,
        )
    return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, model_dim: int,
                    epoch_fn: Callable[[], int] = lambda: 0) -> torch.optim.lr_scheduler.LambdaLR:
    """torch's `LambdaLR` following `lr_at`: stepped once per optimizer step, it sets every
    param group's lr to `lr_at(cfg, step, epoch_fn(), model_dim)` (step 1 at construction).

    LambdaLR multiplies the optimizer's initial lr (`cfg.lr`, set by `build_optimizer`), so
    the factor is `lr_at / cfg.lr`. Its state_dict holds the step count (`last_epoch`); on
    resume Lightning restores it with the optimizer's lr, and the halving schedule reads the
    restored trainer epoch through `epoch_fn`.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda done: lr_at(cfg, done + 1, epoch_fn(), model_dim) / cfg.lr
    )


__all__ = ["OptimConfig", "build_optimizer", "build_scheduler", "lr_at"]
