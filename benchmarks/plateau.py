"""Does a Transformer leave the unigram plateau? Training loss over the first steps vs the loss
of a model that ignores the source.

    python -m benchmarks plateau                                   # mini Transformer, WMT14 sample, 300 steps
    python -m benchmarks plateau --overrides model.pre_norm=false  # the post-norm recipe that stalled

What is measured (documented because it decides what the numbers mean):
- One real training run through the CLI, `python scripts/train.py experiment=<--experiment>`
  (default `wmt_sample_transformer`: the mini Transformer on the WMT14 sample,
  `../shared/data/wmt14_sample` or NMTBENCH_WMT14_SAMPLE) for `--steps` optimizer steps,
  validation and test off, logging the training loss every 10 steps (TensorBoard events).
- The plateau: a model that ignores the source can at best predict the target unigram
  distribution p of the training set. Under label smoothing eps over V pieces the best such
  prediction is q = (1 - eps) p + eps / V and its loss is the entropy H(q) (nats per target
  token, end-of-sentence included), the same quantity as the run's `train/loss`. On the WMT14
  sample (8k BPE, eps 0.1) it is 7.51; a post-norm mini Transformer sat there for 1,500
  steps (docs/results.md, "Why the mini Transformer stalled").
- Verdict: the mean training loss of the last 50 steps against the plateau; "left" when it
  is at least `--margin` (default 0.3 nats) below it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import REPO_ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", default="wmt_sample_transformer")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps")
    parser.add_argument("--margin", type=float, default=0.3, help="nats below the plateau that count as leaving it")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra Hydra overrides, e.g. model.pre_norm=false")
    parser.add_argument("--json", action="store_true", help="end with one JSON line")


def unigram_plateau(target_ids: np.ndarray, vocab_size: int, label_smoothing: float) -> float:
    """H((1 - eps) p + eps / V) in nats: the label-smoothed loss of the best source-blind
    unigram prediction, p the target unigram distribution (module docstring)."""
    counts = np.bincount(np.asarray(target_ids, dtype=np.int64).ravel(), minlength=vocab_size)[:vocab_size]
    q = (1.0 - label_smoothing) * counts / counts.sum() + label_smoothing / vocab_size
    return float(-(q * np.log(q)).sum())


def loss_curve(run_dir: Path) -> dict[int, float]:
    """step -> train/loss from the run's TensorBoard events."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve: dict[int, float] = {}
    for events in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        if "train/loss" in acc.Tags().get("scalars", []):
            curve.update({e.step: e.value for e in acc.Scalars("train/loss")})
    return curve


def run_plateau_training(args: argparse.Namespace, run_dir: Path) -> None:
    command = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), f"experiment={args.experiment}",
               f"trainer.max_steps={args.steps}", "trainer.max_time=null", "+trainer.limit_val_batches=0",
               "trainer.log_every_n_steps=10", "test=false", "callbacks.progress_bar=null",
               "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}", *args.overrides]
    print("running:", " ".join(command[1:]), flush=True)
    proc = subprocess.run(command, cwd=os.getcwd(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: the training run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def target_ids_of(run_dir: Path) -> tuple[np.ndarray, int, float]:
    """The training split's target ids, the vocabulary size and the label smoothing of the run."""
    from omegaconf import OmegaConf

    from nmtbench.data.config import load_data_config
    from nmtbench.data.prepare import load_prepared
    from nmtbench.data.shards import TokenShard
    from nmtbench.data.tokenizer import EOS_ID
    from nmtbench.schema import model_settings

    cfg = OmegaConf.load(run_dir / "config.yaml")
    data = load_data_config(cfg.data)
    prepared = load_prepared(data)
    if prepared is None:
        sys.exit(f"error: no prepared data cache for the run in {run_dir} (data.cache_dir={data.cache_dir})")
    shard = TokenShard(prepared.dir, "train", "tgt", prepared.dtype)
    ids = np.concatenate([np.asarray(shard.ids, dtype=np.int64), np.full(len(shard), EOS_ID)])  # + one EOS each
    return ids, int(cfg.data.vocab_size), float(model_settings(cfg.model)[1].label_smoothing)


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="nmtbench-plateau-") as tmp:
        run_dir = Path(tmp) / "run"
        run_plateau_training(args, run_dir)
        curve = loss_curve(run_dir)
        ids, vocab, eps = target_ids_of(run_dir)
    plateau = unigram_plateau(ids, vocab, eps)
    steps = sorted(curve)
    tail = [curve[s] for s in steps if s > steps[-1] - 50] if steps else []
    final = float(np.mean(tail)) if tail else float("nan")
    left = bool(final <= plateau - args.margin)
    print(f"unigram plateau (label-smoothed, eps {eps}, V {vocab}): {plateau:.3f}")
    shown = sorted({near for s in (10, 50, 100, 200, 300, 500, *steps[-1:])
                    if steps and abs((near := min(steps, key=lambda x: abs(x - s))) - s) <= 10})
    for step in shown:
        print(f"  step {step:5d}  train/loss {curve[step]:.3f}  ({curve[step] - plateau:+.3f} vs plateau)")
    print(f"mean loss of the last 50 steps {final:.3f}: {'left' if left else 'did NOT leave'} the plateau "
          f"(margin {args.margin})")
    if args.json:
        print(json.dumps({"benchmark": "plateau", "experiment": args.experiment, "overrides": args.overrides,
                          "steps": args.steps, "plateau": plateau, "final_loss": final, "left_plateau": left,
                          "curve": {str(s): curve[s] for s in steps}}))
    return 0
