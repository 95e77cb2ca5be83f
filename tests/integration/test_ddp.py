"""Multi-process training on CPU (gloo) through the real CLI: `trainer=ddp_sim`.

One 2-process run of the shrunk smoke experiment (`python scripts/train.py experiment=smoke
trainer=ddp_sim ...`, module fixture) is checked for:
  - one Hydra run directory shared by both ranks, written by rank zero only;
  - distinct training batches on the two ranks;
  - the same parameters (and validation loss) as a 1-process run with 2-fold gradient
    accumulation and the same effective batch (`data.effective_batch_tokens`), with the loss
    divided by the sentences of the whole step across ranks (`model.loss_normalization`;
    tests/unit/test_loss_normalization.py shows 1 process == one big batch).
The fast tests at the end cover the multi-GPU configs without starting processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import pytest
import torch

from nmtbench.data.batching import BatchPlan, TokenBatchSampler
from nmtbench.data.config import load_data_config
from nmtbench.data.datamodule import Seq2SeqDataModule
from nmtbench.errors import ConfigError
from nmtbench.train import train
from nmtbench.trainer_setup import batch_plan, degrade_gpu_settings
from tests.conftest import compose_config

from ..conftest import TINY_TRANSFORMER

REPO = Path(__file__).resolve().parents[2]
STEPS = 6  # optimizer steps of both runs
VAL_EVERY = 3  # optimizer steps between validations (scaled by the accumulation in train.py)
MAX_TOKENS = 500  # per micro-batch; see test_global_batches_match_between_one_and_two_processes
EFFECTIVE = 2 * MAX_TOKENS  # -> accumulation 2 on 1 process, 1 on 2 processes

# The shrunk smoke experiment, shared by the 2-process and the 1-process run. Plain SGD keeps
# the update linear in the gradient, so the fp32 noise of a different reduction order stays at
# ~1e-7 (Adam divides near-zero gradients by their own size and can amplify it to ~lr); the
# inverse-sqrt warmup makes the lr depend on the optimizer step count.
TINY = [
    "experiment=smoke",
    "data.toy.num_train=600",
    "data.toy.num_valid=40",
    "data.toy.num_test=40",
    "data.vocab_size=300",
    f"data.max_tokens={MAX_TOKENS}",
    f"data.effective_batch_tokens={EFFECTIVE}",
    *TINY_TRANSFORMER,
    "model.dropout=0.0",
    "model.optim.name=sgd",
    # Luong's per-sentence loss (the SGD rows): the count is summed over both micro-batches
    # (1 process) or both ranks (2 processes) before the gradient is divided by it.
    "model.loss_normalization=sentences",
    "model.optim.lr=0.5",
    "model.optim.warmup_steps=4",
    f"trainer.max_steps={STEPS}",
    "trainer.max_time=null",
    f"trainer.val_check_interval={VAL_EVERY}",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "callbacks.progress_bar=null",
    "callbacks.throughput.cpu_benchmark_seconds=0",
]


class RecordTraining(L.Callback):
    """Test probe, built by Hydra in every process: what each rank trained on and ended with.

    Writes `<out_dir>/rank<r>.json` (per micro-batch: optimizer step, lr and example ids; the
    final `callback_metrics`) and `<out_dir>/rank<r>.pt` (the final model parameters).
    """

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.batches.append({"step": trainer.global_step, "lr": lr, "ids": batch["ids"].tolist()})

    def on_train_end(self, trainer, pl_module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        record = {"world_size": trainer.world_size, "accumulation": trainer.accumulate_grad_batches,
                  "batches": self.batches, "metrics": metrics}
        (self.out_dir / f"rank{rank}.json").write_text(json.dumps(record))
        params = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
        torch.save(params, self.out_dir / f"rank{rank}.pt")


def probe(out_dir: Path) -> list[str]:
    return [f"+callbacks.probe._target_={__name__}.RecordTraining", f"+callbacks.probe.out_dir={out_dir}"]


def load_probe(out_dir: Path, rank: int) -> tuple[dict, dict[str, torch.Tensor]]:
    record = json.loads((out_dir / f"rank{rank}.json").read_text())
    return record, torch.load(out_dir / f"rank{rank}.pt")


def ids_per_step(*records: dict) -> dict[int, list[int]]:
    """Optimizer step -> sorted ids of every micro-batch of that step, over the given ranks."""
    steps: dict[int, list[int]] = {}
    for record in records:
        for batch in record["batches"]:
            steps.setdefault(batch["step"], []).extend(batch["ids"])
    return {s: sorted(ids) for s, ids in steps.items()}


def one_process_config(root: Path):
    """The 1-process twin of the DDP run: same data, seed and effective batch (accumulation 2)."""
    return compose_config(TINY + [f"paths.root_dir={root}", f"paths.output_dir={root / 'single'}",
                                  "trainer=cpu", "test=false", *probe(root / "probe_single")])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Both runs, side by side, in one fresh root directory.

    - `python scripts/train.py experiment=smoke trainer=ddp_sim ...` (shrunk, 2 processes) with
      the Hydra run directory left at its default (`<root>/runs/smoke/<timestamp>`), so the
      test sees whether rank 1 reuses rank zero's directory; probe output in `probe_ddp/`.
    - `train(cfg)` in this process with `trainer=cpu` (1 process, accumulation 2), started
      while the DDP run imports; output in `single/`, probe output in `probe_single/`.
    """
    root = tmp_path_factory.mktemp("ddp")
    cfg = one_process_config(root)
    Seq2SeqDataModule(cfg.data, seed=cfg.seed).prepare_data()  # once, before both runs
    cmd = [sys.executable, "scripts/train.py", *TINY, "trainer=ddp_sim", f"paths.root_dir={root}",
           *probe(root / "probe_ddp")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with open(root / "ddp_stdout.txt", "w") as out, open(root / "ddp_stderr.txt", "w") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
        try:
            assert batch_plan(load_data_config(cfg.data), world_size=1).accumulation == 2
            train(cfg)
            returncode = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    tail = (root / "ddp_stderr.txt").read_text()[-6000:]
    assert returncode == 0, f"DDP run failed:\n{tail}"
    return root


@pytest.mark.ddp
@pytest.mark.slow
def test_ddp_sim_run_writes_one_run_directory_from_rank_zero(runs):
    run_dirs = [p for p in (runs / "runs" / "smoke").iterdir()]
    assert len(run_dirs) == 1, f"expected one run directory, got {run_dirs}"
    run = run_dirs[0]
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2
    assert results["steps"] == STEPS
    assert results["test_num_sentences"] == 40  # hypotheses gathered from both ranks
    configs = sorted(str(p.relative_to(run)) for p in run.rglob("config.yaml"))
    assert configs == [".hydra/config.yaml", "config.yaml"]  # Hydra's (rank zero) and train.py's
    assert not list(run.glob(".pl_ddp_hydra*")), "a non-zero rank wrote its own Hydra subdirectory"
    log = (run / "smoke.log").read_text()
    assert log.count("Batch per optimizer step: 1 micro-batch(es)") == 1, "the log file is not rank zero's alone"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == STEPS
    assert sorted(p.name for p in (run / "checkpoints").glob("step*.ckpt"))[0].startswith(f"step{VAL_EVERY:07d}")


@pytest.mark.ddp
@pytest.mark.slow
def test_each_rank_trains_on_distinct_batches(runs):
    rank0, params0 = load_probe(runs / "probe_ddp", 0)
    rank1, params1 = load_probe(runs / "probe_ddp", 1)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["accumulation"] == rank1["accumulation"] == 1
    ids0 = [i for b in rank0["batches"] for i in b["ids"]]
    ids1 = [i for b in rank1["batches"] for i in b["ids"]]
    assert len(rank0["batches"]) == len(rank1["batches"]) == STEPS
    assert not set(ids0) & set(ids1), "the two ranks trained on the same examples"
    assert len(set(ids0 + ids1)) == len(ids0) + len(ids1)
    for name, value in params0.items():  # DDP keeps the replicas identical
        torch.testing.assert_close(params1[name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.ddp
@pytest.mark.slow
def test_one_process_with_accumulation_matches_two_processes(runs):
    """Same seed and effective batch: 1 process x 2 micro-batches == 2 processes x 1."""
    single, params = load_probe(runs / "probe_single", 0)
    rank0, ddp_params = load_probe(runs / "probe_ddp", 0)
    rank1, _ = load_probe(runs / "probe_ddp", 1)
    assert single["accumulation"] == 2 and len(single["batches"]) == 2 * STEPS
    # Per optimizer step, the single process saw exactly the union of both ranks' batches ...
    assert ids_per_step(single) == ids_per_step(rank0, rank1)
    # ... at the same learning rate (the schedule counts optimizer steps, not micro-batches) ...
    lrs = {b["step"]: b["lr"] for b in single["batches"]}
    assert lrs == {b["step"]: b["lr"] for b in rank0["batches"]}
    assert len(set(lrs.values())) == STEPS  # warmup: the lr changes at every step
    # ... so it ends with the same parameters and the same (token-weighted) validation loss.
    for name, value in ddp_params.items():
        torch.testing.assert_close(params[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert single["metrics"]["val/loss"] == pytest.approx(rank0["metrics"]["val/loss"], rel=1e-5)
    assert rank0["metrics"]["val/loss"] == rank1["metrics"]["val/loss"]  # reduced over ranks
    assert single["metrics"]["val/bleu"] == pytest.approx(rank0["metrics"]["val/bleu"], abs=1e-6)
    # Validation ran after the same optimizer steps (val_check_interval counts steps).
    ckpts = sorted(p.name[:11] for p in (runs / "single" / "checkpoints").glob("step*.ckpt"))
    assert ckpts == [f"step{VAL_EVERY:07d}", f"step{STEPS:07d}"]


# -- fast checks of the configs (no processes) ------------------------------------------------


def test_global_batches_match_between_one_and_two_processes(tmp_path):
    """Precondition of the equivalence test, checked on the sampler directly.

    The sampler balances the batch count to a multiple of the world size only, so 1 and 2
    processes build the same global batch list only when the count is already even (true for
    the toy data at MAX_TOKENS; at 600 tokens it is 31 vs 32 and the runs would differ).
    """
    cfg = one_process_config(tmp_path)
    datamodule = Seq2SeqDataModule(cfg.data, seed=cfg.seed)
    datamodule.prepare_data()
    datamodule.setup()
    lengths = datamodule.datasets["train"].padded_lengths()
    one = TokenBatchSampler(lengths, MAX_TOKENS, seed=cfg.seed, rank=0, world_size=1).global_batches(0)
    two = TokenBatchSampler(lengths, MAX_TOKENS, seed=cfg.seed, rank=0, world_size=2).global_batches(0)
    assert len(one) % 2 == 0
    assert [b.tolist() for b in one] == [b.tolist() for b in two]


def test_effective_batch_is_split_into_equal_budgets_on_1_to_16_gpus():
    data = load_data_config(compose_config(["data.max_tokens=4096", "data.effective_batch_tokens=25000"]).data)
    plans = {n: batch_plan(data, world_size=n) for n in (1, 2, 4, 8, 16)}
    assert [plans[n].accumulation for n in (1, 2, 4, 8, 16)] == [7, 4, 2, 1, 1]
    assert plans[1].micro_batch_tokens == 3571 and plans[8].micro_batch_tokens == 3125  # <= data.max_tokens
    for plan in plans.values():
        assert 25000 - plan.accumulation * plan.world_size <= plan.tokens_per_step <= 25000
    data = load_data_config(compose_config(["data.effective_batch_tokens=null", "data.max_tokens=4096"]).data)
    assert batch_plan(data, world_size=8, accumulate_grad_batches=3) == BatchPlan(3, 4096, 8)  # as configured
    with pytest.raises(ConfigError, match="data.max_len"):
        batch_plan(load_data_config(compose_config(["data.effective_batch_tokens=4096", "data.max_len=256"]).data),
                   world_size=32)


def test_effective_batch_gives_the_same_tokens_per_step_on_1_and_8_gpus():
    """Real (unpadded) tokens per optimizer step, from the sampler's actual batches of one epoch
    of WMT-like lengths, with the budgets of batch_plan: within 5% on 1 and 8 ranks."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(np.log(26), 0.55, 200_000).astype(np.int64), 2, 257)
    data = load_data_config(compose_config(["data.max_tokens=4096", "data.effective_batch_tokens=25000"]).data)

    def tokens_per_step(world_size: int) -> float:
        plan = batch_plan(data, world_size)
        sampler = TokenBatchSampler(lengths, plan.micro_batch_tokens, seed=1, rank=0, world_size=world_size)
        steps = len(sampler.global_batches(0)) / (plan.accumulation * world_size)
        return float(lengths.sum()) / steps

    one, eight = tokens_per_step(1), tokens_per_step(8)
    assert abs(one - eight) / one < 0.05, (one, eight)
    assert 0.8 * 25000 < one <= 25000  # packing loses a little to padding


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks")
def test_gpu_settings_degrade_on_cpu(caplog):
    with pytest.raises(ConfigError, match="trainer=ddp_sim"):
        degrade_gpu_settings(compose_config(["trainer=ddp"]))
    cfg = compose_config(["trainer=ddp_sim", "trainer.precision=16-mixed"])
    degrade_gpu_settings(cfg)
    assert cfg.trainer.precision == "32-true"
    assert "needs a GPU" in caplog.text


def test_multi_gpu_trainer_configs_compose_and_build_their_strategies(monkeypatch):
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from nmtbench.models.transformer import DecoderLayer, EncoderLayer

    for name, backend in (("ddp", "nccl"), ("ddp_sim", "gloo"), ("multinode", "nccl")):
        strategy = hydra.utils.instantiate(compose_config([f"trainer={name}"]).trainer.strategy)
        assert isinstance(strategy, DDPStrategy) and strategy._process_group_backend == backend
    fsdp = hydra.utils.instantiate(compose_config(["trainer=fsdp"]).trainer.strategy)
    assert isinstance(fsdp, FSDPStrategy)
    assert fsdp.kwargs["auto_wrap_policy"]._module_classes == {EncoderLayer, DecoderLayer}
    # multinode reads the node and GPU counts from torchrun, else SLURM (Lightning's order).
    for var in ("SLURM_NNODES", "SLURM_NTASKS_PER_NODE", "GROUP_WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)

    def nodes_and_devices():
        trainer_cfg = compose_config(["trainer=multinode"]).trainer
        return trainer_cfg.num_nodes, trainer_cfg.devices

    assert nodes_and_devices() == (1, "auto")
    monkeypatch.setenv("SLURM_NNODES", "4")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    assert nodes_and_devices() == (4, 8)
    monkeypatch.setenv("GROUP_WORLD_SIZE", "2")  # torchrun inside a SLURM job (1 task per node)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert nodes_and_devices() == (2, 4)


def test_fsdp_refuses_at_startup_what_cannot_work(monkeypatch):
    """trainer=fsdp: CUDA only (Lightning and torch FSDP), and never the LSTM rows; each
    refusal names its reason and the trainer to use instead, before any work."""
    from nmtbench.trainer_setup import check_strategy

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="needs CUDA GPUs.*trainer=ddp_sim"):
        check_strategy(compose_config(["trainer=fsdp"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ConfigError, match="LSTM rows cannot use it.*trainer=ddp"):
        check_strategy(compose_config(["trainer=fsdp", "model=lstm_attention"]))
    check_strategy(compose_config(["trainer=fsdp", "model=transformer_big"]))  # the row FSDP is for
    check_strategy(compose_config(["trainer=ddp", "model=lstm_attention"]))


def test_validation_decoding_gathers_the_sharded_weights_under_fsdp(monkeypatch):
    """Decoding calls encode/decode outside FSDP's forward, so BleuCallback gathers every
    parameter for it (`summon_full_params`, read-only) under FSDPStrategy, on every rank and
    for every batch; elsewhere it gathers nothing. (FSDP itself needs GPUs: the gather is
    checked here against a recording stand-in.)"""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy
    from torch.distributed.fsdp import FullyShardedDataParallel

    from nmtbench.callbacks.bleu import full_weights

    calls = []

    class Recording:
        def __enter__(self):
            calls.append("enter")

        def __exit__(self, *exc):
            calls.append("exit")

    def summon(module, writeback=True, recurse=True, **kwargs):
        calls.append((module, writeback, recurse))
        return Recording()

    monkeypatch.setattr(FullyShardedDataParallel, "summon_full_params", staticmethod(summon))
    fsdp = FSDPStrategy()
    monkeypatch.setattr(FSDPStrategy, "model", property(lambda self: "the wrapped model"))
    with full_weights(SimpleNamespace(strategy=fsdp)):
        calls.append("decode")
    assert calls == [("the wrapped model", False, True), "enter", "decode", "exit"]
    calls.clear()
    with full_weights(SimpleNamespace(strategy=DDPStrategy())):
        calls.append("decode")
    assert calls == ["decode"]
