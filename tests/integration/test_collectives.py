"""One agreement between ranks per optimizer step, and no barrier.

A 2-process run (`trainer=ddp_sim`, 2 micro-batches per step) with the default callbacks
counts, on each rank, the torch.distributed collectives issued between the ends of two
optimizer steps (the gradient all-reduce of DDP's reducer runs in C++ and is not counted: it
is the step's data, not a decision). Outside logging and validation steps there must be
exactly one: the all-reduce of `nmtbench.distributed.StepSync`, carrying the loss
normalisation count, the non-finite flags and the stop/save flags together. Before, every
step had a barrier + all-reduce for each of them and a broadcast per micro-batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lightning as L
import pytest
import torch.distributed as dist

from ..conftest import TINY_TRANSFORMER

REPO = Path(__file__).resolve().parents[2]
COLLECTIVES = ("all_reduce", "barrier", "broadcast", "broadcast_object_list", "all_gather", "all_gather_object",
               "all_gather_into_tensor", "reduce", "reduce_scatter_tensor", "gather", "scatter")


class CountCollectives(L.Callback):
    """Test probe: wraps torch.distributed's collectives and records, per optimizer step,
    how many of each this rank called since the previous step ended."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.counts: Counter = Counter()
        self.per_step: dict[int, dict[str, int]] = {}
        self.last_step = -1

    def on_train_start(self, trainer, pl_module):
        for name in COLLECTIVES:
            original = getattr(dist, name)

            def counted(*args, _name=name, _original=original, **kwargs):
                self.counts[_name] += 1
                return _original(*args, **kwargs)

            setattr(dist, name, counted)
        self.last_step = trainer.global_step
        self.counts.clear()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.last_step:
            self.per_step[trainer.global_step] = dict(self.counts)
            self.counts.clear()
            self.last_step = trainer.global_step

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.per_step))


@pytest.mark.slow
@pytest.mark.ddp
def test_one_all_reduce_per_optimizer_step_and_no_barrier(tmp_path):
    steps, val_every, log_every = 12, 10, 5
    args = ["experiment=smoke", "trainer=ddp_sim", "data.toy.num_train=400", "data.toy.num_valid=8",
            "data.toy.num_test=8", "data.vocab_size=200", "data.max_tokens=300", "data.effective_batch_tokens=1200",
            *TINY_TRANSFORMER, f"trainer.max_steps={steps}", "trainer.max_time=null",
            f"trainer.val_check_interval={val_every}", f"trainer.log_every_n_steps={log_every}",
            "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
            "callbacks.throughput.cpu_benchmark_seconds=0", "callbacks.bleu.max_len_b=4", "test=false",
            f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
            f"+callbacks.probe._target_={__name__}.CountCollectives", f"+callbacks.probe.out_dir={tmp_path / 'probe'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "2 micro-batch(es)" in proc.stderr + proc.stdout
    for rank in (0, 1):
        per_step = {int(k): v for k, v in json.loads((tmp_path / "probe" / f"rank{rank}.json").read_text()).items()}
        assert sorted(per_step) == list(range(1, steps + 1))
        # Logging steps flush the throughput counters (one more all-reduce) and the step after a
        # validation carries the validation's collectives: leave both out.
        plain = [s for s in range(2, steps + 1) if s % log_every and (s - 1) % val_every]
        assert len(plain) >= 6
        for step in plain:
            assert per_step[step] == {"all_reduce": 1}, f"rank {rank}, step {step}: {per_step[step]}"
