"""End-to-end: train(cfg) on a shrunk smoke config writes what a run must write."""

from __future__ import annotations

import pytest
import torch

from nmtbench.train import train

from ..conftest import TINY_TRANSFORMER


@pytest.mark.slow
def test_train_writes_tensorboard_events_checkpoints_and_metrics(tiny_cfg, tmp_path):
    cfg = tiny_cfg(TINY_TRANSFORMER)
    metrics = train(cfg)
    run = tmp_path / "run"

    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file written"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/loss", "val/ppl", "val/bleu"} <= scalars

    ckpts = run / "checkpoints"
    assert (ckpts / "last.ckpt").exists()
    assert len(list(ckpts.glob("step*.ckpt"))) >= 1
    ckpt = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 12
    assert ckpt["hyper_parameters"]["cfg"]["model"]["d_model"] == 32

    assert (run / "config.yaml").exists()
    for key in ("val/loss", "val/bleu", "test/bleu"):
        assert key in metrics
    assert 0.0 <= metrics["val/bleu"] <= 100.0


@pytest.mark.slow
def test_resume_from_last_checkpoint_continues_step_count(tiny_cfg, tmp_path):
    cfg = tiny_cfg(TINY_TRANSFORMER + ["test=false"])
    train(cfg)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    cfg2 = tiny_cfg(TINY_TRANSFORMER + ["test=false", "trainer.max_steps=18", f"ckpt_path={last}"])
    train(cfg2)
    ckpt = torch.load(last, map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 18
    # The LambdaLR schedule resumed at its step: the lr to use next is the formula's at step 19.
    from nmtbench.config import from_mapping
    from nmtbench.optim import OptimConfig, lr_at

    assert ckpt["lr_schedulers"][0]["last_epoch"] == 18
    optim_cfg = from_mapping(OptimConfig, cfg2.model.optim, "model.optim")
    expected = lr_at(optim_cfg, 19, model_dim=cfg2.model.d_model)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(expected)
