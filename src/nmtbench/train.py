"""`train(cfg)`: config in, metrics out. `nmtbench.cli.train` (the console script
`nmtbench-train`, and `scripts/train.py`) is the Hydra entry point around it."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from nmtbench.callbacks.resume import ResumeCheckpoint
from nmtbench.config import to_container
from nmtbench.data.config import load_data_config
from nmtbench.data.datamodule import Seq2SeqDataModule
from nmtbench.data.prepare import prepare
from nmtbench.distributed import all_reduce_sum, on_rank_zero
from nmtbench.errors import CheckpointError, ConfigError, Preempted
from nmtbench.module import Seq2SeqModule
from nmtbench.preemption import SIGNALS
from nmtbench.schema import model_settings
from nmtbench.trainer_setup import build_trainer, fit_machine

log = logging.getLogger(__name__)


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
    On CUDA the label-smoothed loss is compiled too (`compiled_loss_rows`; docs/performance.md,
    "Loss"); on CPU the eager one stays.
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


def stop_point(trainer: L.Trainer, where: str) -> None:
    """Between the phases of `train()`: if any rank got a stop signal, every rank stops here
    together (one all-reduce), with exit status 143."""
    flag = torch.tensor([float(SIGNALS.requested)], dtype=torch.float64, device=trainer.strategy.root_device)
    if all_reduce_sum(trainer, flag).item() > 0:
        message = f"Stopped by {SIGNALS.describe()} {where}; the run's checkpoints are complete."
        rank_zero_only(log.warning)(message)
        raise Preempted(message)


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) the configured model; return the final metrics.

    Instantiate (data, Trainer, model), fit, then test the best checkpoint and the average of
    the last ones; the callbacks write results.json and the TensorBoard events.
    """
    model_settings(cfg.model)  # validate the model and data keys before any heavy work
    data_cfg = load_data_config(cfg.data)
    ckpt_path = resolve_ckpt_path(cfg)
    fit_machine(cfg)  # device count, strategy, precision: refused or resolved before any work
    # The data cache, built or reused by every process before any process group exists: one
    # builds it under a file lock while the others wait on the lock, so no collective (with
    # its timeout) ever waits on data preparation (hours for WMT14 on a slow disk).
    prepare(data_cfg)
    L.seed_everything(cfg.seed, workers=True)
    trainer, plan = build_trainer(cfg, data_cfg)
    module = Seq2SeqModule(to_container(cfg), vocab_size=int(cfg.data.vocab_size))
    if cfg.get("compile"):
        compile_in_place(module)
    datamodule = Seq2SeqDataModule(data_cfg, seed=cfg.seed, plan=plan)
    output_dir = Path(cfg.paths.output_dir)
    if trainer.is_global_zero:
        log.info("Model %s: %s parameters (vocab %d)", cfg.model.name, f"{module.num_parameters:,}", cfg.data.vocab_size)
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    resume = next((c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)), None)
    if ckpt_path == "last" and resume and Path(resume.path).is_file() and not any(
            isinstance(c, ModelCheckpoint) for c in trainer.callbacks):
        ckpt_path = resume.path  # Lightning looks for last.ckpt only in ModelCheckpoint directories

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
