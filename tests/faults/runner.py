"""Run the real command-line scripts in subprocesses, kill them, and wait for files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..conftest import TINY_TRANSFORMER

REPO = Path(__file__).resolve().parents[2]

# The smoke experiment shrunk to seconds: a one-layer 32-wide Transformer with dropout (so the
# random state must be restored too), 400 toy pairs (~10 batches an epoch, so runs cross
# epochs), validation with a short greedy BLEU every 6 steps, 24 steps.
STEPS, VAL_EVERY = 24, 6
TINY_RUN = [
    "experiment=smoke",
    "data.toy.num_train=400", "data.toy.num_valid=8", "data.toy.num_test=8",
    "data.vocab_size=200", "data.max_tokens=600",
    *TINY_TRANSFORMER, "model.dropout=0.1",
    f"trainer.max_steps={STEPS}", "trainer.max_time=null", f"trainer.val_check_interval={VAL_EVERY}",
    "trainer.log_every_n_steps=1", "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null", "callbacks.throughput.cpu_benchmark_seconds=0",
    "callbacks.bleu.max_len_b=4", "test=false",
]


def env() -> dict[str, str]:
    paths = [str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


@dataclass
class Run:
    proc: subprocess.Popen
    log: Path
    started: float

    @property
    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                kill_group(self, signal.SIGKILL)

    def wait_for(self, path: Path, timeout: float = 300) -> None:
        """Until `path` exists; fails with the process output if it exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode} before {path} appeared:\n{self.output[-4000:]}")
            if time.monotonic() > deadline:
                kill_group(self, signal.SIGKILL)
                raise AssertionError(f"{path} did not appear within {timeout} s:\n{self.output[-4000:]}")
            time.sleep(0.05)


def start(script: str, args: list[str], log: Path, stdin: str | None = None, environ: dict | None = None) -> Run:
    """`python scripts/<script> <args>` in its own session (so its DDP children can be killed);
    `environ`: variables added to the environment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "w", encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / script), *args], cwd=REPO, env={**env(), **(environ or {})},
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.PIPE if stdin else None,
                            text=True, start_new_session=True)
    if stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()
    out.close()
    return Run(proc, log, time.monotonic())


def run(script: str, args: list[str], log: Path, timeout: float = 600, stdin: str | None = None) -> tuple[int, str]:
    r = start(script, args, log, stdin)
    return r.wait(timeout), r.output


def kill_group(r: Run, sig: int) -> None:
    try:
        os.killpg(r.proc.pid, sig)
    except ProcessLookupError:
        pass


def ckpt_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])
