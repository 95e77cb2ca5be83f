"""Training tokens/s on 1..N processes (DDP) and the scaling efficiency.

    python -m benchmarks scaling                                  # CPU: 1 and 2 processes (gloo)
    python -m benchmarks scaling --accelerator gpu --devices 1,2,4,8 \
        --overrides size=paper data.max_tokens=4096                      # GPUs (NCCL, bf16-mixed)

Setup (documented because it decides what the numbers mean):
- Each point is a real training run through the CLI, `python scripts/train.py` with
  `experiment=<--experiment>` (default `smoke`: the smoke Transformer on the toy data) and
  `trainer=cpu|gpu` for 1 process, `trainer=ddp_sim|ddp` with `trainer.devices=N` otherwise,
  so the numbers include the token-bucket sampler, DDP gradient all-reduce and the callbacks.
  Validation, test and checkpointing are off; `--steps` optimizer steps, no accumulation.
- Weak scaling: every process keeps the per-device batch (`data.max_tokens`), so N
  processes train on N times the tokens per step. Ideal: tokens/s grows N-fold.
- tokens/s = source + target tokens (without padding) per second of training, summed over
  all processes, as written to results.json by the throughput callback (it excludes start-up
  and data preparation; the first steps are included).
- On CPU each process gets `--threads` torch threads (default 1; OMP_NUM_THREADS), so the
  N-process run uses N times the cores of the 1-process run, as N GPUs would. With fewer
  free cores than processes, or on a machine shared with other jobs, the efficiency measures
  the machine, not DDP: compare with the load average printed with the table.

scaling efficiency (%) = tokens/s(N) / (N x tokens/s(1)) x 100.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import REPO_ROOT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", default="",
                        help="comma-separated process counts (default: 1,2 on CPU; 1,2,4,.. up to all GPUs)")
    parser.add_argument("--accelerator", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--experiment", default="smoke", help="experiment config to train (default: smoke)")
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU")
    parser.add_argument("--overrides", nargs="*", default=[],
                        help="extra Hydra overrides for every run, e.g. data.max_tokens=1024")
    parser.add_argument("--root", default=None,
                        help="paths.root_dir of the runs (default: the current directory, so the "
                             "prepared data cache is reused); run directories go to a temp dir")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")


def device_counts(args: argparse.Namespace) -> list[int]:
    if args.devices:
        return [int(n) for n in args.devices.split(",")]
    if args.accelerator == "cpu":
        return [1, 2]
    import torch

    available = max(1, torch.cuda.device_count())
    counts, n = [], 1
    while n < available:
        counts.append(n)
        n *= 2
    return counts + [available]


def command(args: argparse.Namespace, num: int, run_dir: Path) -> list[str]:
    """The train.py command line for one point of the table."""
    if args.accelerator == "cpu":
        trainer = ["trainer=cpu"] if num == 1 else ["trainer=ddp_sim", f"trainer.devices={num}"]
    else:
        trainer = ["trainer=gpu"] if num == 1 else ["trainer=ddp", f"trainer.devices={num}"]
    root = [f"paths.root_dir={args.root}"] if args.root else []
    return [
        sys.executable, str(REPO_ROOT / "scripts" / "train.py"), f"experiment={args.experiment}", *trainer, *root,
        f"trainer.max_steps={args.steps}", "trainer.max_time=null", "trainer.val_check_interval=100000000",
        "trainer.log_every_n_steps=5", "trainer.enable_progress_bar=false", "+trainer.enable_checkpointing=false",
        "test=false", "data.effective_batch_tokens=null", "trainer.accumulate_grad_batches=1",
        "callbacks.bleu=null", "callbacks.model_checkpoint=null", "callbacks.progress_bar=null",
        "callbacks.throughput.cpu_benchmark_seconds=0", f"hydra.run.dir={run_dir}", *args.overrides,
    ]


def measure(args: argparse.Namespace, num: int, run_dir: Path) -> dict:
    """Run one training and return its results.json numbers."""
    env = dict(os.environ)
    if args.accelerator == "cpu":
        env["OMP_NUM_THREADS"] = str(args.threads)
    start = time.perf_counter()
    proc = subprocess.run(command(args, num, run_dir), cwd=os.getcwd(), env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{num}-process run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "devices": num,
        "world_size": results["world_size"],
        "tokens_per_sec": results["tokens_per_sec"],
        "tokens_per_sec_per_device": results["tokens_per_sec_per_device"],
        "steps": results["steps"],
        "train_seconds": results["train_hours"] * 3600.0,
        "process_wall_seconds": wall,
    }


def table(rows: list[dict]) -> str:
    base = rows[0]["tokens_per_sec"] / rows[0]["devices"]
    lines = ["| processes | tokens/s | tokens/s per process | speed-up | scaling efficiency |",
             "|---:|---:|---:|---:|---:|"]
    for row in rows:
        speedup = row["tokens_per_sec"] / rows[0]["tokens_per_sec"]
        efficiency = 100.0 * row["tokens_per_sec"] / (row["devices"] * base)
        row.update(speedup=speedup, efficiency_pct=efficiency)
        lines.append(f"| {row['devices']} | {row['tokens_per_sec']:,.0f} | {row['tokens_per_sec_per_device']:,.0f} "
                     f"| {speedup:.2f}x | {efficiency:.0f}% |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    counts = device_counts(args)
    where = f"{args.accelerator}, {args.threads} thread(s) per process" if args.accelerator == "cpu" else "gpu"
    print(f"scaling: experiment={args.experiment}, {args.steps} steps per run, processes {counts} ({where}); "
          f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    with tempfile.TemporaryDirectory(prefix="nmtbench-scaling-") as tmp:
        for num in counts:
            row = measure(args, num, Path(tmp) / f"n{num}")
            print(f"  {num} process(es): {row['tokens_per_sec']:,.0f} tokens/s over {row['train_seconds']:.1f} s "
                  f"of training ({row['process_wall_seconds']:.0f} s with start-up)", flush=True)
            rows.append(row)
    print(table(rows))
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


__all__ = ["add_arguments", "run"]
