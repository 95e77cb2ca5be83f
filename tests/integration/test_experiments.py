"""Every table-row experiment composes, pins its paper's settings, and runs one step.

The runs shrink each experiment to seconds (tiny dimensions, tiny generated data, CPU,
`trainer.fast_dev_run=true`) and keep everything else of the experiment file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nmtbench.data.config import ToyConfig
from nmtbench.data.toy import write_toy

from ..conftest import CONFIG_DIR, compose_config

PAPER = ["luong2015_seq2seq", "luong2015_attention", "vaswani2017_base", "vaswani2017_big"]
MINI = ["mini_seq2seq", "mini_attention", "mini_transformer"]

TINY_MODEL = {
    "transformer": ["model.d_model=32", "model.num_heads=2", "model.d_ff=64",
                    "model.num_encoder_layers=1", "model.num_decoder_layers=1"],
    "lstm": ["model.num_layers=1", "model.hidden_size=32", "model.embed_dim=32"],
}
TOY = ["data.toy.num_train=400", "data.toy.num_valid=24", "data.toy.num_test=24"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tensors are tiny, and on a shared, busy CPU two OpenMP threads
    make every small op wait for a descheduled thread (measured: 12 s -> 0.4 s per run)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_table_row_has_an_experiment_file():
    present = {p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")}
    assert set(PAPER + MINI) <= present


def test_paper_experiments_pin_the_published_settings():
    s2s = compose_config(["experiment=luong2015_seq2seq"])
    att = compose_config(["experiment=luong2015_attention"])
    for cfg in (s2s, att):
        m = cfg.model
        assert (m.num_layers, m.hidden_size, m.embed_dim, m.dropout, m.init_range) == (4, 1000, 1000, 0.2, 0.1)
        assert m.reverse_source is True and m.label_smoothing == 0.0
        o = m.optim
        assert (o.name, o.lr, o.schedule, o.decay_start_epoch, o.decay_factor) == ("sgd", 1.0, "halving", 9, 0.5)
        assert "grad_clip" not in o and cfg.trainer.gradient_clip_val == 5.0  # a trainer flag
        assert cfg.trainer.max_epochs == 12 and cfg.trainer.max_steps == -1
        assert cfg.data.source == "wmt14"
        # 128 sentences per step (~3750 padded tokens), the loss divided by the sentences
        assert cfg.data.effective_batch_tokens == 3750 and m.loss_normalization == "sentences"
    assert s2s.model.attention == "none"
    assert (att.model.attention, att.model.attention_score, att.model.input_feeding) == ("luong", "dot", True)

    base = compose_config(["experiment=vaswani2017_base"])
    big = compose_config(["experiment=vaswani2017_big"])
    for cfg, steps, keep in ((base, 100_000, 5), (big, 300_000, 20)):
        assert cfg.trainer.max_steps == steps
        assert cfg.data.effective_batch_tokens == 27000 and cfg.data.vocab_size == 37000
        assert cfg.model.loss_normalization == "tokens"
        assert cfg.average.last_n == keep and OmegaConf.to_yaml(cfg.average).endswith("checkpoints/periodic\n")
        assert cfg.model.optim.warmup_steps == 4000 and cfg.model.label_smoothing == 0.1
        assert (cfg.callbacks.bleu.test_beam_size, cfg.callbacks.bleu.length_penalty) == (4, 0.6)
        assert cfg.callbacks.periodic_checkpoint.save_top_k == keep == cfg.published.average_last_checkpoints
    assert (base.model.d_model, base.model.dropout) == (512, 0.1)
    assert (big.model.d_model, big.model.dropout) == (1024, 0.3)


def test_mini_rows_compose_from_the_shared_base():
    """The three mini rows: Multi30k, a 20-minute CPU budget, greedy validation on 500 pairs,
    beam-4 test (all from _mini.yaml); each its own model and task name."""
    cfgs = {name: compose_config([f"experiment={name}"]) for name in MINI}
    for name, cfg in cfgs.items():
        assert cfg.task_name == name and cfg.model.get("d_model", cfg.model.get("embed_dim")) == 256 and cfg.trainer.accelerator == "cpu"
        assert (cfg.data.source, cfg.data.valid_prefix, cfg.data.test_prefix) == ("files", "val", "test2016")
        assert cfg.trainer.max_time == "00:00:20:00" and cfg.trainer.max_steps == -1
        assert (cfg.callbacks.bleu.beam_size, cfg.callbacks.bleu.max_sentences) == (1, 500)
        assert (cfg.callbacks.bleu.test_beam_size, cfg.callbacks.bleu.length_penalty) == (4, 0.6)
        # >= 8 validation points in 20 minutes whatever the row's speed; a 10-minute snapshot
        assert cfg.trainer.val_check_interval == "00:00:02:00"
        assert cfg.callbacks.snapshot_checkpoint.train_time_interval.minutes == 10
    models = {(c.model.name, c.model.get("attention")) for c in cfgs.values()}
    assert models == {("lstm", "none"), ("lstm", "luong"), ("transformer", None)}
    lstm = [c for c in cfgs.values() if c.model.name == "lstm"]
    assert all(c.trainer.gradient_clip_val == 5.0 and c.model.optim.name == "adam" for c in lstm)
    assert cfgs["mini_transformer"].trainer.gradient_clip_val is None
    assert cfgs["mini_transformer"].model.optim.warmup_steps == 400


@pytest.fixture(scope="module")
def multi30k_like(tmp_path_factory) -> Path:
    """A tiny parallel-text directory with Multi30k's file names (train / val / test2016)."""
    root = tmp_path_factory.mktemp("files")
    cfg = ToyConfig(num_train=400, num_valid=24, num_test=24)
    return Path(write_toy(cfg, str(root), {"train": "train", "valid": "val", "test": "test2016"}))


def shrunk(experiment: str, tmp_path: Path, cache: Path, files_dir: Path, extra=()) -> list[str]:
    """Overrides that keep the experiment but make it run in seconds on one CPU."""
    cfg = compose_config([f"experiment={experiment}"])
    data = [f"data.dir={files_dir}"] if cfg.data.source == "files" else ["data=toy", *TOY]
    return [
        f"experiment={experiment}", *data,
        f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={cache}",
        "data.vocab_size=200", "data.max_tokens=600", "data.num_workers=0", "data.num_proc=1",
        *TINY_MODEL[cfg.model.name],
        "++trainer.fast_dev_run=true", "trainer.accelerator=cpu", "trainer.devices=1",
        "trainer.precision=32-true", "trainer.enable_progress_bar=false", "callbacks.progress_bar=null",
        "callbacks.throughput.cpu_benchmark_seconds=0", *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", PAPER + MINI)
def test_experiment_runs_one_step(experiment, tmp_path, tmp_path_factory, multi30k_like):
    from nmtbench.train import train

    cache = tmp_path_factory.getbasetemp() / "cache"  # shared: identical data settings prepare once
    cfg = compose_config(shrunk(experiment, tmp_path, cache, multi30k_like))
    train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert results["stages"] == ["fit"]
    assert results["model_name"] == cfg.model.name
    assert results["steps"] in (0, 1)  # one batch (an accumulating run takes no optimizer step)


@pytest.mark.slow
def test_periodic_checkpoints_keep_the_last_n(tmp_path, tmp_path_factory, multi30k_like):
    """The paper rows' checkpoint-averaging callback (monitor: step) keeps the newest files."""
    from nmtbench.train import train

    cache = tmp_path_factory.getbasetemp() / "cache"
    extra = ["++trainer.fast_dev_run=false", "trainer.max_steps=4", "trainer.val_check_interval=100",
             "data.effective_batch_tokens=null", "test=false", "callbacks.bleu=null",
             "callbacks.model_checkpoint=null",
             "callbacks.periodic_checkpoint.every_n_train_steps=1", "callbacks.periodic_checkpoint.save_top_k=2"]
    train(compose_config(shrunk("vaswani2017_base", tmp_path, cache, multi30k_like, extra)))
    saved = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "periodic").glob("*.ckpt"))
    assert saved == ["step0000003.ckpt", "step0000004.ckpt"]
