"""Resume is exact with gradient accumulation, across epochs, on 1 and 2 processes.

The shrunk smoke experiment runs through the real CLI (`scripts/train.py`, `trainer=cpu` or
`trainer=ddp_sim`) with k = 2 or 3 micro-batches per optimizer step, for more than three
epochs whose plain packing is *not* a multiple of W x k batches, validating (and saving a
checkpoint) every few optimizer steps. A second run resumes from the checkpoint of a
validation in the third epoch and must train exactly as the uninterrupted run did: the same
micro-batches, losses and learning rates at every later step, and the same final weights.
Every validation and every checkpoint sits on an optimizer-step boundary, at the same
optimizer steps whatever the process count.

Before the fix (batches packed without regard to k, Lightning validating on a global
micro-batch counter), the last accumulation window of an epoch came up short, validations of
later epochs fell inside a window, and a resume from their checkpoints lost the partial
gradient: losses differed from the first step after the resume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from nmtbench.data.batching import pack
from nmtbench.data.datamodule import Seq2SeqDataModule
from tests.conftest import compose_config

from ..conftest import TINY_TRANSFORMER

REPO = Path(__file__).resolve().parents[2]
MICRO = 300  # padded tokens per micro-batch
VAL_EVERY = 4


class RecordSteps(L.Callback):
    """Test probe (built by Hydra in every process): per micro-batch (optimizer step, epoch,
    ids, loss, lr); per validation the micro-batch counter of the epoch; final weights."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.batches: list[dict] = []
        self.validations: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.append({"step": trainer.global_step, "epoch": trainer.current_epoch,
                             "ids": batch["ids"].tolist(), "lr": trainer.optimizers[0].param_groups[0]["lr"]})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches[-1]["loss"] = float(outputs["loss"])

    def on_validation_start(self, trainer, pl_module):
        if trainer.training or trainer.state.fn == "fit":
            loop = trainer.fit_loop.epoch_loop
            self.validations.append({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                     "ready": loop.batch_progress.current.ready})

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        record = {"accumulation": trainer.accumulate_grad_batches, "world_size": trainer.world_size,
                  "batches": self.batches, "validations": self.validations,
                  "num_training_batches": trainer.num_training_batches}
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(record))
        torch.save({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()},
                   self.out_dir / f"rank{rank}.pt")


def overrides(world: int, k: int, steps: int) -> list[str]:
    return [
        "experiment=smoke", "data.toy.num_train=340", "data.toy.num_valid=16", "data.toy.num_test=16",
        "data.vocab_size=300", "data.max_len=60", f"data.max_tokens={MICRO}",
        f"data.effective_batch_tokens={MICRO * k * world}", *TINY_TRANSFORMER, "model.dropout=0.1",
        "model.optim.warmup_steps=10", f"trainer.max_steps={steps}", "trainer.max_time=null",
        f"trainer.val_check_interval={VAL_EVERY}", "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "callbacks.bleu.max_len_b=5",
        "callbacks.throughput.cpu_benchmark_seconds=0", "callbacks.model_checkpoint.save_top_k=-1",
        "test=false", f"trainer={'ddp_sim' if world > 1 else 'cpu'}", *([f"trainer.devices={world}"] if world > 1 else []),
    ]


def run_cli(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]


def probe(out: Path) -> list[str]:
    return [f"+callbacks.probe._target_={__name__}.RecordSteps", f"+callbacks.probe.out_dir={out}"]


def load(out: Path, rank: int) -> tuple[dict, dict]:
    return json.loads((out / f"rank{rank}.json").read_text()), torch.load(out / f"rank{rank}.pt")


def plain_packing(tmp_path: Path, world: int) -> int:
    """Batches per epoch of the plain packing (before any split): 37, so that for each W, k
    tested here the epoch is not whole optimizer steps without splitting."""
    cfg = compose_config(overrides(world, 1, 1) + [f"paths.root_dir={tmp_path}"])
    dm = Seq2SeqDataModule(cfg.data, seed=cfg.seed)
    dm.prepare_data()
    lengths = dm._dataset("train").padded_lengths()
    return len(pack(np.argsort(lengths, kind="stable"), lengths, MICRO))


@pytest.mark.slow
@pytest.mark.parametrize("world,k", [(1, 2), (1, 3), (2, 2), (2, 3)], ids=["1proc-k2", "1proc-k3", "2proc-k2", "2proc-k3"])
def test_resume_from_a_later_epoch_is_exact_with_accumulation(tmp_path, world, k):
    packed = plain_packing(tmp_path / "data", world)
    # Balanced only to the world size (as before), each rank's epoch would not be whole steps.
    assert -(-packed // world) % k, "the data must need splitting to hold whole optimizer steps"
    steps_per_epoch = -(-packed // (world * k))
    steps = 3 * steps_per_epoch + 2  # into a fourth epoch
    common = overrides(world, k, steps) + [f"paths.root_dir={tmp_path / 'data'}"]

    run_cli(common + [f"hydra.run.dir={tmp_path / 'full'}", *probe(tmp_path / "probe_full")], tmp_path)
    ckpts = {int(torch.load(p, map_location="cpu", weights_only=False)["global_step"]): p
             for p in (tmp_path / "full" / "checkpoints").glob("step*.ckpt")}
    # Validations (and their checkpoints) every VAL_EVERY optimizer steps, on step boundaries.
    assert sorted(ckpts) == list(range(VAL_EVERY, steps + 1, VAL_EVERY))
    for path in [*ckpts.values(), tmp_path / "full" / "checkpoints" / "last.ckpt"]:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        ready = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"]
        assert ready % k == 0, f"{path.name}: saved after {ready} micro-batches of its epoch (k={k})"
    # A checkpoint of the third epoch (epochs are 0-based), from a validation.
    later = next(s for s in sorted(ckpts) if s > 2 * steps_per_epoch)
    run_cli(common + [f"hydra.run.dir={tmp_path / 'resumed'}", f"ckpt_path={ckpts[later]}",
                      *probe(tmp_path / "probe_resumed")], tmp_path)

    for rank in range(world):
        full, full_weights = load(tmp_path / "probe_full", rank)
        resumed, resumed_weights = load(tmp_path / "probe_resumed", rank)
        assert full["accumulation"] == resumed["accumulation"] == k
        assert full["num_training_batches"] % k == 0  # every epoch is whole optimizer steps
        assert full["batches"][-1]["epoch"] >= 3
        assert all(v["ready"] % k == 0 for v in full["validations"] + resumed["validations"])
        assert [v["step"] for v in full["validations"]] == list(range(VAL_EVERY, steps + 1, VAL_EVERY))
        after = [b for b in full["batches"] if b["step"] >= later]
        assert len(after) == (steps - later) * k and len(resumed["batches"]) == len(after)
        for a, b in zip(after, resumed["batches"]):
            assert (a["step"], a["epoch"], a["ids"], a["lr"]) == (b["step"], b["epoch"], b["ids"], b["lr"])
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-6, abs=1e-7), a["step"]
        for name, value in full_weights.items():
            torch.testing.assert_close(resumed_weights[name], value, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow
def test_time_based_validation_and_max_time_stop_wait_for_the_end_of_the_optimizer_step(tmp_path):
    """A time-based `val_check_interval` and the `max_time` Timer fire after whatever
    micro-batch is running; the validation, its checkpoint and the stop still come at the end
    of that optimizer step (nmtbench.trainer.StepBoundaryEpochLoop)."""
    k = 3
    args = overrides(1, k, 100000) + [f"paths.root_dir={tmp_path / 'data'}", f"hydra.run.dir={tmp_path / 'run'}",
                                      "trainer.val_check_interval=00:00:00:01", "trainer.max_time=00:00:00:06",
                                      *probe(tmp_path / "probe")]
    run_cli(args, tmp_path)
    record, _ = load(tmp_path / "probe", 0)
    assert len(record["validations"]) >= 3
    assert all(v["ready"] % k == 0 for v in record["validations"]), record["validations"]
    assert len(record["batches"]) == k * record["batches"][-1]["step"] + k  # the last step is whole
    for path in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        assert ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"] % k == 0, path.name
