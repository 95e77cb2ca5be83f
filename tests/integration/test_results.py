"""results.json end to end: a shrunk smoke run writes a file that validates and TensorBoard
holds the val/, time/ and perf/ scalars; under 2-process DDP on CPU only rank zero writes,
token counts are summed over both ranks and both ranks log the same val/paper_bleu."""

from __future__ import annotations

import atexit
import json
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from nmtbench.callbacks.bleu import BleuCallback
from nmtbench.callbacks.gpu_stats import GpuStatsCallback
from nmtbench.callbacks.results import ResultsCallback
from nmtbench.callbacks.throughput import ThroughputCallback
from nmtbench.callbacks.wallclock import WallClockCallback
from nmtbench.results_schema import load_results, validate_results
from nmtbench.scoring import paper_bleu
from nmtbench.train import end_process_group
from tests.unit.test_callbacks_results import (
    CFG,
    REFS,
    TinyData,
    TinyModule,
    batch_tokens,
    make_batch,
)

from ..conftest import TINY_TRANSFORMER

TINY_RUN = [
    *TINY_TRANSFORMER,
    "callbacks.throughput.cpu_benchmark_seconds=0.2",
    # an untrained model decodes to the maximum length: keep decoding short
    "data.toy.num_valid=10",
    "data.toy.num_test=10",
    "callbacks.bleu.max_len_b=8",
]

GPU_KEYS = ("gpu_kernel_active_pct_mean", "gpu_util_mean", "gpu_mem_gb_mean", "gpu_mem_gb_max",
            "gpu_power_w_mean", "gpu_hours")


@pytest.mark.slow
def test_smoke_run_results_and_scalars(tiny_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from nmtbench.train import train

    train(tiny_cfg(TINY_RUN))
    run = tmp_path / "run"
    r = load_results(run / "results.json")  # raises if it does not validate
    assert r["stages"] == ["fit", "test"]
    assert r["model_name"] == "transformer" and r["num_parameters"] > 0
    assert r["task_name"] == "smoke" and r["data_source"] == "toy"
    assert r["steps"] == 12 and r["tokens_seen"] > 0 and r["train_flops"] > 0
    assert r["nonfinite_skipped_batches"] == 0  # callbacks.nonfinite (action skip) found nothing to skip
    assert r["mfu"] is not None and 0 < r["mfu"] < 1.5
    assert r["peak_flops_source"] == "measured: CPU fp32 matmul, the larger of the start and end of training"
    assert [p["step"] for p in r["val_curve"]] == [6, 12]
    assert r["best_val_bleu"] is not None and r["test_sacrebleu"] is not None
    assert r["test_paper_bleu"] is not None and r["test_chrf"] is not None
    assert r["best_val_paper_bleu"] is not None and all(p["paper_bleu"] is not None for p in r["val_curve"])
    assert len(r["time_to_fraction_of_best"]) == 3
    # train.py tests the best checkpoint
    (evaluation,) = r["test_evaluations"]
    assert evaluation["weights"] == r["test_weights"] == "best"
    assert r["test_ckpt_path"].endswith(".ckpt") and Path(r["test_ckpt_path"]).exists()
    for key in GPU_KEYS:
        assert r[key] is None and r["null_reasons"][key]
    # every field holds a value except the GPU ones (and targets the tiny model cannot reach)
    allowed = set(GPU_KEYS) | {"experiment", "model_variant", "test_averaged_from"}
    assert set(r["null_reasons"]) <= allowed, r["null_reasons"]

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"val/bleu", "val/paper_bleu"} <= scalars
    assert {"time/train_hours", "time/train_hours_excl_val", "time/val_hours", "time/device_hours"} <= scalars
    assert {"perf/tokens_per_sec", "perf/tgt_tokens_per_sec", "perf/device/tokens_per_sec", "perf/mfu"} <= scalars


class SpyResults(ResultsCallback):
    """Leaves a marker for every rank that gets past the rank-zero guard of `_write`."""

    def build(self, trainer, pl_module):
        Path(self.output_dir, f"built_by_rank{trainer.global_rank}").touch()
        return super().build(trainer, pl_module)


class RankMetrics(L.Callback):
    """Writes what each rank's trainer holds for val/paper_bleu after each validation."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def setup(self, trainer, pl_module, stage):
        # What scripts/train.py does at the end of a run (nmtbench.train.end_process_group):
        # Lightning destroys only an NCCL group at exit, and a gloo group left to the
        # interpreter's shutdown can abort a spawned rank (SIGABRT, "terminate called without
        # an active exception"; pytorch/pytorch#190489). atexit runs in the rank before that.
        atexit.register(end_process_group)

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            value = float(trainer.callback_metrics["val/paper_bleu"])
            Path(self.out_dir, f"paper_bleu_rank{trainer.global_rank}").write_text(repr(value))


UNIFORM_BATCH = make_batch([(5, 4), (3, 2)])


class UniformData(TinyData):
    """Every training batch has the same token count, whichever rank gets which batch."""

    def train_dataloader(self):
        return DataLoader([UNIFORM_BATCH] * 12, batch_size=None)


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_only_rank_zero_writes(tmp_path):
    callbacks = [BleuCallback(num_examples=0, test_beam_size=1), WallClockCallback(bleu_targets=[20]),
                 ThroughputCallback(peak_flops_per_device=1e9), GpuStatsCallback(),
                 SpyResults(output_dir=str(tmp_path)), RankMetrics(str(tmp_path))]
    trainer = L.Trainer(callbacks=callbacks, accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=3, val_check_interval=3,
                        log_every_n_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(TinyModule(CFG), datamodule=UniformData())

    assert sorted(p.name for p in tmp_path.glob("built_by_rank*")) == ["built_by_rank0"]
    r = json.loads((tmp_path / "results.json").read_text())
    assert validate_results(r) == []
    assert r["world_size"] == 2 and r["device_names"] == ["cpu", "cpu"]
    # 3 steps on each of 2 ranks: summed over ranks, not rank zero's count
    assert r["tokens_seen"] == 2 * 3 * batch_tokens(UNIFORM_BATCH)[0]
    assert r["device_hours"] == pytest.approx(2 * r["train_hours"])
    assert r["tokens_per_sec_per_device"] == pytest.approx(r["tokens_per_sec"] / 2)
    assert r["val_curve"] and r["val_curve"][0]["step"] == 3
    # each rank decodes half of the validation set; both log the paper BLEU of all of it
    values = {p.name: float(p.read_text()) for p in tmp_path.glob("paper_bleu_rank*")}
    assert set(values) == {"paper_bleu_rank0", "paper_bleu_rank1"}
    assert values["paper_bleu_rank0"] == values["paper_bleu_rank1"] == pytest.approx(r["val_curve"][0]["paper_bleu"])
    hyps = TinyModule(CFG).translate({"ids": torch.arange(len(REFS))})
    assert values["paper_bleu_rank0"] == pytest.approx(paper_bleu(hyps, REFS)["score"], abs=1e-4)  # float32 log
