"""`train(cfg)`: config in, metrics out. `scripts/train.py` is a thin Hydra wrapper around it."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from nmtbench.config import to_container
from nmtbench.errors import ConfigError
from nmtbench.models import model_config

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a callbacks/logger group (each has a _target_)."""
    objects = []
    for name, node in (group or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"Config entry '{name}' needs a _target_ (or set it to null to disable it).")
        objects.append(hydra.utils.instantiate(node))
    return objects


def resolve_ckpt_path(cfg: DictConfig, output_dir: Path) -> str | None:
    if cfg.get("ckpt_path") in (None, ""):
        return None
    if cfg.ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.exists() else None
    path = Path(cfg.ckpt_path)
    if not path.exists():
        raise ConfigError(f"ckpt_path={cfg.ckpt_path} does not exist.")
    return str(path)


def gradient_accumulation(cfg: DictConfig, world_size: int) -> int:
    """Micro-batches per optimizer step so the effective batch does not depend on GPU count.

    accumulation = ceil(data.effective_batch_tokens / (data.max_tokens * world_size)); with
    `data.effective_batch_tokens: null` the trainer's `accumulate_grad_batches` is kept.
    """
    effective = cfg.data.get("effective_batch_tokens")
    if not effective:
        return int(cfg.trainer.get("accumulate_grad_batches") or 1)
    return max(1, math.ceil(effective / (cfg.data.max_tokens * world_size)))


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and optionally test) the configured model; return the final metrics."""
    from nmtbench.data.datamodule import Seq2SeqDataModule
    from nmtbench.module import Seq2SeqModule

    model_config(cfg.model)  # validate the architecture keys before any heavy work
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule = Seq2SeqDataModule(cfg.data, seed=cfg.seed)
    module = Seq2SeqModule(to_container(cfg), vocab_size=int(cfg.data.vocab_size))
    log.info("Model %s: %s parameters (vocab %d)", cfg.model.name, f"{module.num_parameters:,}", cfg.data.vocab_size)
    print(f"[nmtbench] model={cfg.model.name} parameters={module.num_parameters:,} vocab={cfg.data.vocab_size}")

    if cfg.get("compile"):
        if torch.cuda.is_available():
            module.model = torch.compile(module.model)
        else:
            log.warning("compile=true ignored: torch.compile is only enabled on GPU runs.")

    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer_kwargs: dict[str, Any] = {}
    optim_clip = float(cfg.model.get("optim", {}).get("grad_clip", 0.0) or 0.0)
    if optim_clip > 0 and cfg.trainer.get("gradient_clip_val") is None:
        trainer_kwargs["gradient_clip_val"] = optim_clip
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                 **trainer_kwargs)
    accumulation = gradient_accumulation(cfg, trainer.world_size)
    if accumulation != trainer.accumulate_grad_batches:
        trainer.accumulate_grad_batches = accumulation
    log.info("Gradient accumulation: %d micro-batches of <= %d tokens on %d device(s)",
             trainer.accumulate_grad_batches, cfg.data.max_tokens, trainer.world_size)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    trainer.fit(module, datamodule=datamodule, ckpt_path=resolve_ckpt_path(cfg, output_dir))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}

    if cfg.get("test") and not trainer.fast_dev_run:
        ckpt = "best" if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path else None
        if ckpt is None:
            log.warning("No best checkpoint (no validation ran?): testing the current weights.")
        trainer.test(module, datamodule=datamodule, ckpt_path=ckpt)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    log.info("Final metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics
