"""From the run config to a ready Trainer: everything `train()` needs decided before it fits.

`fit_machine(cfg)` makes the trainer settings fit this machine (device, precision: the guards
below) and refuses the combinations that cannot work; `build_trainer(cfg, data)` then plans
the batch of an optimizer step over devices and micro-batches (`batch_plan`), turns an
integer `val_check_interval` into micro-batches, instantiates and orders the callbacks, loggers and plugins, and builds
`nmtbench.trainer.Trainer` with all of it. Nothing changes the Trainer after it is built.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig

from nmtbench.callbacks.resume import ResumeCheckpoint
from nmtbench.checkpoints import AtomicCheckpointIO
from nmtbench.data.batching import BatchPlan
from nmtbench.data.config import DataConfig
from nmtbench.errors import ConfigError, NmtbenchError
from nmtbench.precision import resolve_precision

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every non-null entry of a callbacks/logger group (each has a _target_)."""
    objects = []
    for name, node in (group or {}).items():
        if node is None:
            continue
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ConfigError(f"Config entry '{name}' needs a _target_ (or set it to null to disable it).")
        try:
            objects.append(hydra.utils.instantiate(node))
        except InstantiationException as exc:  # our callbacks' own config errors, in one line
            if isinstance(exc.__cause__, NmtbenchError):
                raise exc.__cause__ from None
            raise
    return objects


def check_devices(cfg: DictConfig) -> None:
    """More GPUs requested than visible is an error naming both counts (before any work)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    devices = cfg.trainer.get("devices", "auto")
    if accelerator not in ("gpu", "cuda", "auto") or not torch.cuda.is_available():
        return
    visible = torch.cuda.device_count()
    wanted = devices if isinstance(devices, int) else (len(devices) if isinstance(devices, (list, ListConfig)) else None)
    ids = list(devices) if isinstance(devices, (list, ListConfig)) else []
    if (wanted is not None and wanted > visible) or any(int(i) >= visible for i in ids):
        raise ConfigError(
            f"trainer.devices={devices} but this machine has {visible} visible CUDA GPU(s). "
            f"Use trainer.devices={visible} (or auto), or run where that many GPUs are visible "
            "(CUDA_VISIBLE_DEVICES limits them)."
        )


def check_strategy(cfg: DictConfig) -> None:
    """Refuse, before any work, the strategy combinations that cannot work (docs/multi_gpu.md)."""
    strategy = cfg.trainer.get("strategy")
    target = str(strategy.get("_target_", "")) if isinstance(strategy, DictConfig) else str(strategy or "")
    if "FSDP" not in target and target != "fsdp":
        return
    if not torch.cuda.is_available():
        raise ConfigError("trainer=fsdp needs CUDA GPUs (Lightning and torch's FSDP shard across GPUs only). On a CPU "
                          "machine use trainer=ddp_sim; on GPUs the tested path is trainer=ddp.")
    if cfg.model.get("name") == "lstm":
        raise ConfigError("trainer=fsdp shards the Transformer's layers; the LSTM rows cannot use it: nn.LSTM keeps its "
                          "own references to its weights (its flat-weight list), which FSDP's flattening replaces, and "
                          "the input-feeding decoder reads them directly. The LSTM rows fit on any GPU: use trainer=ddp.")


def degrade_gpu_settings(cfg: DictConfig) -> None:
    """Make the trainer's device settings fit this machine (edits `cfg.trainer`).

    - `trainer.accelerator: gpu|cuda` without a visible GPU is an error that names the fix.
    - `trainer.precision` is resolved for the device (`nmtbench.precision.resolve_precision`):
      `auto` becomes `bf16-mixed` on a CPU with native bf16 (AMX, AVX512-BF16) and `32-true` on
      others; bf16 asked for on a CPU without it, and fp16 on any CPU, fall back to `32-true`.
      The choice and its reason are logged once.
    """
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    on_gpu = torch.cuda.is_available() and accelerator in ("gpu", "cuda", "auto")
    if not torch.cuda.is_available() and accelerator in ("gpu", "cuda"):
        raise ConfigError(
            f"trainer.accelerator={accelerator} but no CUDA GPU is visible. On this machine use "
            "trainer=cpu (one process) or trainer=ddp_sim (2 CPU processes over gloo), "
            "or set trainer.accelerator=cpu."
        )
    requested = str(cfg.trainer.get("precision", "32-true"))
    precision, why = resolve_precision(requested, on_gpu)
    # Before the Trainer exists, Lightning's rank_zero_only reads the rank from the launcher's
    # environment (RANK, LOCAL_RANK, SLURM_PROCID): log once, not once per process.
    if precision != requested and requested != "auto":
        rank_zero_only(log.warning)("Precision %s: %s.", precision, why)
    elif requested == "auto" or not on_gpu:
        rank_zero_only(log.info)("Precision %s (trainer.precision=%s): %s.", precision, requested, why)
    cfg.trainer.precision = precision


def batch_plan(data: DataConfig, world_size: int, accumulate_grad_batches: int = 1) -> BatchPlan:
    """Split `data.effective_batch_tokens` per optimizer step over devices and micro-batches.

    `data.max_tokens` is the most one device takes in one micro-batch (a cap); the plan's
    `micro_batch_tokens` is the budget each micro-batch gets. k = ceil(effective /
    (max_tokens * world_size)) micro-batches of effective / (k * world_size) padded tokens per
    device: the step holds the same number of tokens on 1 GPU and on 8, so the paper's batch
    and learning rate go together whatever the GPU count. With `data.effective_batch_tokens:
    null` the trainer's `accumulate_grad_batches` and `data.max_tokens` are used as they are
    (the batch per step then grows with the devices).
    """
    effective = data.effective_batch_tokens
    if not effective:
        return BatchPlan(int(accumulate_grad_batches or 1), data.max_tokens, world_size)
    accumulation = max(1, math.ceil(effective / (data.max_tokens * world_size)))
    per_device = effective // (accumulation * world_size)
    longest = data.max_len + 1
    if per_device < longest:
        raise ConfigError(
            f"data.effective_batch_tokens={effective} over {world_size} devices leaves {per_device} "
            f"tokens per micro-batch, less than the longest training example ({longest} = "
            "data.max_len + 1): raise data.effective_batch_tokens or use fewer devices."
        )
    return BatchPlan(accumulation, per_device, world_size)


def planned_world_size(trainer_cfg: DictConfig) -> int:
    """The number of processes the trainer config asks for (`num_nodes` x `devices`), as
    Lightning will count them: "auto" is 1 on CPU and every visible GPU on CUDA."""
    devices = trainer_cfg.get("devices", "auto")
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    gpus = torch.cuda.device_count() if torch.cuda.is_available() and accelerator in ("gpu", "cuda", "auto") else 0
    if isinstance(devices, (list, ListConfig)):
        count = len(devices)
    elif str(devices) in ("auto", "-1"):
        count = gpus or 1
    else:
        count = int(devices)
    return count * int(trainer_cfg.get("num_nodes", 1) or 1)


def val_check_batches(interval: Any, accumulation: int) -> Any:
    """An integer `trainer.val_check_interval` counts optimizer steps; Lightning counts it in
    micro-batches, so it is multiplied by the accumulation: 1 GPU x 8 micro-batches and 8
    GPUs x 1 validate (and checkpoint) after the same optimizer steps. Fractions of an epoch and
    time-based intervals ("DD:HH:MM:SS") are left as they are."""
    if isinstance(interval, int) and not isinstance(interval, bool) and accumulation > 1:
        return interval * accumulation
    return interval


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's `SLURMEnvironment` with auto-requeue off: its SIGUSR1 handler
    saves from inside the signal handler on every rank; `nmtbench.preemption` handles the
    signal instead (agreed at a step end, `last.ckpt`, `scontrol requeue` on rank zero)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def ordered(callbacks: list[Any]) -> list[Any]:
    """ResumeCheckpoint last: its save includes every other callback's update of the step.
    (It is a Lightning `Checkpoint`; Lightning moves checkpoint callbacks after the others and
    keeps their order, so last here is last in the Trainer.)"""
    return [c for c in callbacks if not isinstance(c, ResumeCheckpoint)] + [
        c for c in callbacks if isinstance(c, ResumeCheckpoint)]


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


def log_batch_plan(cfg: DictConfig, plan: BatchPlan) -> None:
    log.info("Batch per optimizer step: %d micro-batch(es) of <= %d padded tokens on %d device(s) "
             "= <= %d tokens (data.effective_batch_tokens=%s, data.max_tokens=%s); loss / %s",
             plan.accumulation, plan.micro_batch_tokens, plan.world_size, plan.tokens_per_step,
             cfg.data.get("effective_batch_tokens"), cfg.data.max_tokens, cfg.model.loss_normalization)
    if not cfg.data.get("effective_batch_tokens") and plan.world_size > 1:
        log.warning("data.effective_batch_tokens is not set, so the batch per optimizer step grows with the "
                    "device count: %d devices x %d micro-batch(es) x %d tokens = %d tokens per step. The "
                    "learning rate schedule was tuned for a batch, not a device count: pin it with "
                    "data.effective_batch_tokens=%d (the same step on any number of GPUs; the paper rows "
                    "pin 27000 for the Transformer, 3750 for the LSTMs).", plan.world_size, plan.accumulation,
                    plan.micro_batch_tokens, plan.tokens_per_step, plan.tokens_per_step)


def fit_machine(cfg: DictConfig) -> None:
    """Make `cfg.trainer` fit this machine and refuse what cannot run here, before any work
    (data preparation included): device count, strategy, precision."""
    degrade_gpu_settings(cfg)
    check_devices(cfg)
    check_strategy(cfg)


def build_trainer(cfg: DictConfig, data: DataConfig) -> tuple[L.Trainer, BatchPlan]:
    """The Trainer of the run config and the batch plan its data module must follow.
    Call `fit_machine(cfg)` first (train() does, before preparing the data)."""
    world_size = planned_world_size(cfg.trainer)
    plan = batch_plan(data, world_size, int(cfg.trainer.get("accumulate_grad_batches") or 1))
    callbacks = ordered(instantiate_group(cfg.get("callbacks")))
    loggers = instantiate_group(cfg.get("logger"))
    # Atomic checkpoint writes (temporary file + rename) and one-line errors for bad files.
    plugins = hydra.utils.instantiate(cfg.trainer.get("plugins")) or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False,
        plugins=[*plugins, *cluster_plugins(), AtomicCheckpointIO()], accumulate_grad_batches=plan.accumulation,
        val_check_interval=val_check_batches(cfg.trainer.get("val_check_interval"), plan.accumulation),
    )
    if trainer.world_size != world_size:
        raise ConfigError(f"The trainer runs {trainer.world_size} processes but its config asks for {world_size} "
                          f"(trainer.devices={cfg.trainer.get('devices')}, trainer.num_nodes="
                          f"{cfg.trainer.get('num_nodes')}): set both explicitly to match the launcher.")
    # The ranks are known here (DDP, torchrun and SLURM all set them when the Trainer is built).
    check_hydra_multirun(trainer)
    rank_zero_log_file(trainer)
    if trainer.is_global_zero:
        log_batch_plan(cfg, plan)
    return trainer, plan


__all__ = ["batch_plan", "build_trainer", "check_devices", "check_strategy", "degrade_gpu_settings",
           "fit_machine", "instantiate_group", "planned_world_size", "val_check_batches"]
