"""`train(cfg)`: config in, metrics out. `nmtbench.cli.train` (the console script
`nmtbench-train`, and `scripts/train.py`) is the Hydra entry point around it."""

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
from hydra.errors import InstantiationException
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from nmtbench.callbacks.resume import ResumeCheckpoint
from nmtbench.checkpoints import AtomicCheckpointIO
from nmtbench.config import to_container
from nmtbench.data.batching import BatchPlan
from nmtbench.distributed import all_reduce_sum, on_rank_zero
from nmtbench.errors import CheckpointError, ConfigError, NmtbenchError, Preempted
from nmtbench.precision import resolve_precision
from nmtbench.preemption import SIGNALS
from nmtbench.schema import model_settings

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


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path` for `Trainer.fit`: null (new run), "last" (Lightning resolves it: the newest
    `last*.ckpt` of the run's checkpoint directory; none yet = a new run, with a warning), or
    a path, which must exist."""
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt in ("last", "hpc"):
        return str(ckpt)
    if not Path(ckpt).is_file():
        raise ConfigError(
            f"ckpt_path={ckpt} does not exist. Pass a .ckpt file, or ckpt_path=last together with "
            "hydra.run.dir=<the run directory> to resume a run from its newest checkpoint."
        )
    return str(ckpt)


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


def order_callbacks(trainer: L.Trainer) -> None:
    """ResumeCheckpoint last: its save includes every other callback's update of the step."""
    resume = [c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)]
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ResumeCheckpoint)] + resume


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


def batch_plan(cfg: DictConfig, world_size: int) -> BatchPlan:
    """Split `data.effective_batch_tokens` per optimizer step over devices and micro-batches.

    k = ceil(effective / (data.max_tokens * world_size)) micro-batches, each with a budget of
    effective / (k * world_size) padded tokens per device (data.max_tokens is the most one
    device can take): the step holds the same number of tokens on 1 GPU and on 8, so the
    paper's batch and learning rate go together whatever the GPU count. With
    `data.effective_batch_tokens: null` the trainer's `accumulate_grad_batches` and
    `data.max_tokens` are used as they are (the batch per step then grows with the devices).
    """
    effective = cfg.data.get("effective_batch_tokens")
    cap = int(cfg.data.max_tokens)  # the most one device takes in one micro-batch
    if not effective:
        return BatchPlan(int(cfg.trainer.get("accumulate_grad_batches") or 1), cap, world_size)
    effective = int(effective)
    accumulation = max(1, math.ceil(effective / (cap * world_size)))
    per_device = effective // (accumulation * world_size)
    longest = int(cfg.data.max_len) + 1
    if per_device < longest:
        raise ConfigError(
            f"data.effective_batch_tokens={effective} over {world_size} devices leaves {per_device} "
            f"tokens per micro-batch, less than the longest training example ({longest} = "
            "data.max_len + 1): raise data.effective_batch_tokens or use fewer devices."
        )
    return BatchPlan(accumulation, per_device, world_size)


def validate_every_optimizer_steps(trainer: L.Trainer) -> None:
    """Make an integer `trainer.val_check_interval` count optimizer steps, not micro-batches.

    Lightning counts it in training batches, so with k-fold accumulation it is multiplied
    by k here: 1 GPU x 8 micro-batches and 8 GPUs x 1 micro-batch then validate (and
    checkpoint) after the same optimizer steps. Fractions of an epoch, time-based intervals
    and fast_dev_run are left alone.
    """
    # A time-based interval ("DD:HH:MM:SS") leaves `val_check_interval` unset in Lightning.
    interval = getattr(trainer, "val_check_interval", None)
    k = trainer.accumulate_grad_batches
    if k > 1 and isinstance(interval, int) and not isinstance(interval, bool) and not trainer.fast_dev_run:
        trainer.val_check_interval = interval * k


TEST_WEIGHTS = ("best", "last")


def save_final_checkpoint(trainer: L.Trainer, output_dir: Path) -> Path:
    """Write `<run>/checkpoints/last.ckpt` with the weights of the last optimizer step.

    Lightning's ModelCheckpoint refreshes last.ckpt only when it also saves a top-k checkpoint,
    so a run whose last validation is not in the top k (or that stops between validations)
    would leave an older step there. Called on every rank (saving is collective under DDP;
    rank zero writes).
    """
    path = output_dir / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(path)
    if trainer.is_global_zero:
        log.info("Saved the final weights (step %d) to %s", trainer.global_step, path)
    return path


def checkpoint_to_test(cfg: DictConfig, trainer: L.Trainer, output_dir: Path) -> str | None:
    """The checkpoint `cfg.test_weights` names: "best" (top val/bleu checkpoint; the final
    weights when no validation ran) or "last" (the final optimizer step)."""
    weights = str(cfg.get("test_weights", "best"))
    if weights not in TEST_WEIGHTS:
        raise ConfigError(f"test_weights must be one of {', '.join(TEST_WEIGHTS)}, got '{weights}'.")
    last = output_dir / "checkpoints" / "last.ckpt"
    if weights == "best":
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if best:
            return best
        log.warning("No best checkpoint (no validation ran?): testing the final weights.")
    return str(last) if last.exists() else None


def average_after_fit(cfg: DictConfig, trainer: L.Trainer, output_dir: Path) -> Path | None:
    """Average the last `average.last_n` checkpoints of `average.dir` into
    `<run>/checkpoints/averaged.ckpt` (rank zero writes; every rank learns the outcome, so a
    failure there ends every rank at once: `nmtbench.distributed.on_rank_zero`); None when off.

    Vaswani et al. 2017 (section 6.1) average the last 5 (base) or 20 (big) checkpoints,
    written at 10-minute intervals; the experiment's periodic checkpoint callback keeps them.
    """
    avg = cfg.get("average") or {}
    n = int(avg.get("last_n") or 0)
    if n <= 0:
        return None
    target = output_dir / "checkpoints" / "averaged.ckpt"
    source = Path(avg.get("dir") or output_dir / "checkpoints")
    on_rank_zero(trainer, "checkpoint averaging", _average, source, n, target)
    return target


def _average(source: Path, n: int, target: Path) -> None:
    from nmtbench.checkpoints import last_checkpoints, save_averaged

    if not source.is_dir() or not any(source.glob("*.ckpt")):
        raise CheckpointError(
            f"average.dir={source} holds no checkpoints to average (average.last_n={n}): the run saved "
            "none there, e.g. it was shorter than the periodic checkpoint interval. Its other "
            "checkpoints are complete; average them by hand (scripts/average_checkpoints.py), or set "
            "average.last_n=0."
        )
    paths = last_checkpoints(source, n)
    if len(paths) < n:
        log.warning("average.last_n=%d but only %d checkpoints exist: averaging those.", n, len(paths))
    save_averaged(paths, target)
    log.info("Averaged %d checkpoints (steps of %s) into %s", len(paths), ", ".join(p.name for p in paths), target)


def compile_in_place(module) -> None:
    """`torch.compile` the model's forward in place (`nn.Module.compile`), and on CUDA the loss.

    The module, its parameters and so the checkpoint keys (`model.*`) stay as they are, so
    evaluate.py loads a compiled run's checkpoints; wrapping it (`torch.compile(model)`) would
    save every weight as `model._orig_mod.*`. Training and validation losses run the compiled
    forward; decoding calls `encode`/`decode` directly and stays eager. `dynamic=True`: token
    batches change shape every step, so one shape-generic graph is compiled up front instead of
    a static one followed by a recompile. On CPU, inductor generates C++ and needs a compiler.
    On CUDA the label-smoothed loss is compiled too (`compiled_loss_rows`): the eager chunked
    loss is tuned for CPU caches and took a third of a Transformer-base step on an H200; on CPU
    the eager one stays.
    """
    if not torch.cuda.is_available() and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")):
        raise ConfigError("compile=true on a CPU-only machine needs a C++ compiler for torch.compile's "
                          "inductor backend: install one (e.g. apt-get install g++) or set compile=false.")
    module.model.compile(dynamic=True)
    if torch.cuda.is_available():
        from nmtbench.loss import compiled_loss_rows

        module.loss_rows = compiled_loss_rows()


def scalar_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The trainer's logged scalar metrics as floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's `SLURMEnvironment` with auto-requeue off: its SIGUSR1 handler
    saves from inside the signal handler on every rank; `nmtbench.preemption` handles the
    signal instead (agreed at a step end, `last.ckpt`, `scontrol requeue` on rank zero)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def stop_point(trainer: L.Trainer, where: str) -> None:
    """Between the phases of `train()`: if any rank got a stop signal, every rank stops here
    together (one all-reduce), with exit status 143."""
    flag = torch.tensor([float(SIGNALS.requested)], dtype=torch.float64, device=trainer.strategy.root_device)
    if all_reduce_sum(trainer, flag).item() > 0:
        message = f"Stopped by {SIGNALS.describe()} {where}; the run's checkpoints are complete."
        rank_zero_only(log.warning)(message)
        raise Preempted(message)


def log_batch_plan(cfg: DictConfig, plan: BatchPlan, module) -> None:
    log.info("Batch per optimizer step: %d micro-batch(es) of <= %d padded tokens on %d device(s) "
             "= <= %d tokens (data.effective_batch_tokens=%s, data.max_tokens=%s); loss / %s",
             plan.accumulation, plan.micro_batch_tokens, plan.world_size, plan.tokens_per_step,
             cfg.data.get("effective_batch_tokens"), cfg.data.max_tokens, module.loss_normalization)
    if not cfg.data.get("effective_batch_tokens") and plan.world_size > 1:
        log.warning("data.effective_batch_tokens is not set, so the batch per optimizer step grows with the "
                    "device count: %d devices x %d micro-batch(es) x %d tokens = %d tokens per step. The "
                    "learning rate schedule was tuned for a batch, not a device count: pin it with "
                    "data.effective_batch_tokens=%d (the same step on any number of GPUs; the paper rows "
                    "pin 27000 for the Transformer, 3750 for the LSTMs).", plan.world_size, plan.accumulation,
                    plan.micro_batch_tokens, plan.tokens_per_step, plan.tokens_per_step)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and optionally test) the configured model; return the final metrics."""
    from nmtbench.data.config import load_data_config
    from nmtbench.data.datamodule import Seq2SeqDataModule
    from nmtbench.data.prepare import prepare
    from nmtbench.module import Seq2SeqModule

    model_settings(cfg.model)  # validate the model and data keys before any heavy work
    data_cfg = load_data_config(cfg.data)
    degrade_gpu_settings(cfg)
    check_devices(cfg)
    check_strategy(cfg)
    ckpt_path = resolve_ckpt_path(cfg)
    # The data cache, built or reused by every process before any process group exists: one
    # builds it under a file lock while the others wait on the lock, so no collective (with
    # its timeout) ever waits on data preparation (hours for WMT14 on a slow disk).
    prepare(data_cfg)
    L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)

    module = Seq2SeqModule(to_container(cfg), vocab_size=int(cfg.data.vocab_size))

    if cfg.get("compile"):
        compile_in_place(module)

    callbacks = instantiate_group(cfg.get("callbacks"))
    loggers = instantiate_group(cfg.get("logger"))
    # Atomic checkpoint writes (temporary file + rename) and one-line errors for bad files.
    plugins = hydra.utils.instantiate(cfg.trainer.get("plugins")) or []
    plugins = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                                 plugins=[*plugins, *cluster_plugins(), AtomicCheckpointIO()])
    order_callbacks(trainer)
    resume = next((c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)), None)
    if ckpt_path == "last" and not trainer.checkpoint_callbacks and resume and Path(resume.path).is_file():
        ckpt_path = resume.path  # Lightning looks for last.ckpt only in ModelCheckpoint directories
    # The ranks are known here (DDP, torchrun and SLURM all set them when the Trainer is built).
    check_hydra_multirun(trainer)
    rank_zero_log_file(trainer)
    # Lightning reads both attributes in the fit loop (not at construction), so setting them
    # on the built Trainer takes effect.
    plan = batch_plan(cfg, trainer.world_size)
    trainer.accumulate_grad_batches = plan.accumulation
    validate_every_optimizer_steps(trainer)
    datamodule = Seq2SeqDataModule(data_cfg, seed=cfg.seed, plan=plan)
    if trainer.is_global_zero:
        log.info("Model %s: %s parameters (vocab %d)", cfg.model.name, f"{module.num_parameters:,}",
                 cfg.data.vocab_size)
        log_batch_plan(cfg, plan, module)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)

    SIGNALS.reset()
    SIGNALS.install(trainer)  # SIGTERM/SIGUSR1 become flags the ranks agree on (nmtbench.preemption)
    try:
        return _fit_and_test(cfg, trainer, module, datamodule, ckpt_path, resume, output_dir)
    finally:
        SIGNALS.restore()
        end_process_group()


def end_process_group() -> None:
    """Destroy the process group the run created, on every rank, before the process exits:
    left to the interpreter's shutdown, a rank that finishes first can abort in the backend's
    destructor while its peers still hold the connection (seen with gloo: SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _fit_and_test(cfg: DictConfig, trainer: L.Trainer, module, datamodule, ckpt_path: str | None,
                  resume: ResumeCheckpoint | None, output_dir: Path) -> dict[str, float]:
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except CheckpointError as exc:  # raised while restoring: say which file
        path = str(trainer.ckpt_path or cfg.ckpt_path)
        raise (exc if path in str(exc) else CheckpointError(f"{path}: {exc}")) from exc
    except Preempted as exc:
        rank_zero_only(log.warning)("%s", exc.message)
        raise
    if not trainer.fast_dev_run and not trainer.interrupted:
        save_final_checkpoint(trainer, output_dir)
    if resume is not None and resume.stop_requested:  # a stop signal in the last step: no test
        message = f"Stopped by {SIGNALS.describe()} after the last step ({trainer.global_step}); the test is skipped."
        rank_zero_only(log.warning)(message)
        raise Preempted(message)
    stop_point(trainer, "after training, before the test")
    metrics = scalar_metrics(trainer)

    if cfg.get("test") and not trainer.fast_dev_run:
        trainer.test(module, datamodule=datamodule, ckpt_path=checkpoint_to_test(cfg, trainer, output_dir))
        metrics.update(scalar_metrics(trainer))
        averaged = average_after_fit(cfg, trainer, output_dir)
        if averaged is not None:
            stop_point(trainer, "after averaging checkpoints, before testing the average")
            trainer.test(module, datamodule=datamodule, ckpt_path=str(averaged))
            metrics.update(scalar_metrics(trainer))
    if trainer.is_global_zero:
        log.info("Final metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    return metrics
