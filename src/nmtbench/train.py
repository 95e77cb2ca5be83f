"""`train(cfg)`: config in, metrics out. `scripts/train.py` is a thin Hydra wrapper around it."""

from __future__ import annotations

import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
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


GPU_ONLY_PRECISIONS = ("16-mixed", "bf16-mixed", "16-true", "bf16-true", "16", "bf16", "transformer-engine")


def degrade_gpu_settings(cfg: DictConfig) -> None:
    """Make GPU-only trainer settings safe on a machine without CUDA (edits `cfg.trainer`).

    - `trainer.accelerator: gpu|cuda` without a visible GPU is an error that names the fix.
    - Mixed/half precision on CPU falls back to `32-true` with a warning: CPU autocast in
      bf16/fp16 is about 100x slower than fp32 here and gives no memory benefit worth having.
    """
    if torch.cuda.is_available():
        return
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda"):
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible. On this machine use "
            "trainer=cpu (one process) or trainer=ddp_sim (2 CPU processes over gloo), "
            "or set trainer.accelerator=cpu."
        )
    precision = str(cfg.trainer.get("precision", "32-true"))
    if accelerator in ("cpu", "auto") and precision in GPU_ONLY_PRECISIONS:
        # Before the Trainer exists, Lightning's rank_zero_only reads the rank from the launcher's
        # environment (RANK, LOCAL_RANK, SLURM_PROCID): warn once, not once per process.
        rank_zero_only(log.warning)("trainer.precision=%s needs a GPU; no CUDA device is visible, so training runs in "
                    "32-true instead (CPU bf16/fp16 autocast is far slower than fp32).", precision)
        cfg.trainer.precision = "32-true"


def check_hydra_multirun(trainer: L.Trainer) -> None:
    """Refuse Hydra multirun (`-m`) when Lightning itself will re-launch the script per device.

    Lightning's DDP launcher re-runs `sys.argv` in each extra process; with `-m` every one of
    them would start the whole sweep again. torchrun/SLURM launches are not affected.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    env = getattr(trainer.strategy, "cluster_environment", None)
    relaunches = trainer.world_size > 1 and env is not None and not env.creates_processes_externally
    if relaunches and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            "Hydra multirun (-m) cannot be combined with a multi-process trainer "
            f"(trainer.strategy={type(trainer.strategy).__name__}, {trainer.world_size} processes): "
            "launch the runs one at a time, or start the processes with torchrun/srun."
        )


def rank_zero_log_file(trainer: L.Trainer) -> None:
    """Only rank zero writes the run's log file: other ranks drop Hydra's file handler.

    Every DDP process runs Hydra's job logging into the same run directory; non-zero ranks
    keep logging to their console (stderr), which torchrun/SLURM collect per task.
    """
    if trainer.is_global_zero:
        return
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()


def gradient_accumulation(cfg: DictConfig, world_size: int) -> int:
    """Micro-batches per optimizer step so the effective batch does not depend on GPU count.

    accumulation = ceil(data.effective_batch_tokens / (data.max_tokens * world_size)); with
    `data.effective_batch_tokens: null` the trainer's `accumulate_grad_batches` is kept.
    """
    effective = cfg.data.get("effective_batch_tokens")
    if not effective:
        return int(cfg.trainer.get("accumulate_grad_batches") or 1)
    return max(1, math.ceil(effective / (cfg.data.max_tokens * world_size)))


def validate_every_optimizer_steps(trainer: L.Trainer) -> None:
    """Make an integer `trainer.val_check_interval` count optimizer steps, not micro-batches.

    Lightning counts it in training batches, so with k-fold accumulation it is multiplied
    by k here: 1 GPU x 8 micro-batches and 8 GPUs x 1 micro-batch then validate (and
    checkpoint) after the same optimizer steps. Fractions of an epoch, time-based intervals
    and fast_dev_run are left alone.
    """
    interval = trainer.val_check_interval
    k = trainer.accumulate_grad_batches
    if k > 1 and isinstance(interval, int) and not isinstance(interval, bool) and not trainer.fast_dev_run:
        trainer.val_check_interval = interval * k


def compile_in_place(model: torch.nn.Module) -> None:
    """`torch.compile` the model's forward in place (`nn.Module.compile`).

    The module, its parameters and so the checkpoint keys (`model.*`) stay as they are, so
    evaluate.py loads a compiled run's checkpoints; wrapping it (`torch.compile(model)`) would
    save every weight as `model._orig_mod.*`. Training and validation losses run the compiled
    forward; decoding calls `encode`/`decode` directly and stays eager. `dynamic=True`: token
    batches change shape every step, so one shape-generic graph is compiled up front instead of
    a static one followed by a recompile. On CPU, inductor generates C++ and needs a compiler.
    """
    if not torch.cuda.is_available() and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
        raise ConfigError("compile=true on a CPU-only machine needs a C++ compiler for torch.compile's "
                          "inductor backend: install one (e.g. apt-get install g++) or set compile=false.")
    model.compile(dynamic=True)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and optionally test) the configured model; return the final metrics."""
    from nmtbench.data.datamodule import Seq2SeqDataModule
    from nmtbench.module import Seq2SeqModule

    model_config(cfg.model)  # validate the architecture keys before any heavy work
    degrade_gpu_settings(cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    datamodule = Seq2SeqDataModule(cfg.data, seed=cfg.seed)
    module = Seq2SeqModule(to_container(cfg), vocab_size=int(cfg.data.vocab_size))

    if cfg.get("compile"):
        compile_in_place(module.model)

    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    trainer_kwargs: dict[str, Any] = {}
    optim_clip = float(cfg.model.get("optim", {}).get("grad_clip", 0.0) or 0.0)
    if optim_clip > 0 and cfg.trainer.get("gradient_clip_val") is None:
        trainer_kwargs["gradient_clip_val"] = optim_clip
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                 **trainer_kwargs)
    # The ranks are known here (DDP, torchrun and SLURM all set them when the Trainer is built).
    check_hydra_multirun(trainer)
    rank_zero_log_file(trainer)
    # Lightning reads both attributes in the fit loop (not at construction), so setting them
    # on the built Trainer takes effect.
    accumulation = gradient_accumulation(cfg, trainer.world_size)
    trainer.accumulate_grad_batches = accumulation
    validate_every_optimizer_steps(trainer)
    if trainer.is_global_zero:
        log.info("Model %s: %s parameters (vocab %d)", cfg.model.name, f"{module.num_parameters:,}",
                 cfg.data.vocab_size)
        log.info("Gradient accumulation: %d micro-batches of <= %d tokens on %d device(s) "
                 "(<= %d tokens per optimizer step; data.effective_batch_tokens=%s)",
                 accumulation, cfg.data.max_tokens, trainer.world_size,
                 accumulation * cfg.data.max_tokens * trainer.world_size,
                 cfg.data.get("effective_batch_tokens"))

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
    if trainer.is_global_zero:
        log.info("Final metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics
