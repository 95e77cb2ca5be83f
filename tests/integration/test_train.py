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


@pytest.mark.slow
def test_last_checkpoint_holds_the_final_step_when_training_stops_between_validations(tiny_cfg, tmp_path):
    # Validation (and the top-k checkpoints) at step 6 only; training goes on to step 10.
    cfg = tiny_cfg(TINY_TRANSFORMER + ["test=false", "trainer.max_steps=10"])
    train(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 10


@pytest.mark.slow
def test_test_weights_last_and_averaging_after_fit(tiny_cfg, tmp_path, caplog):
    cfg = tiny_cfg(TINY_TRANSFORMER + ["test_weights=last", "average.last_n=2", "data.toy.num_test=8",
                                       "callbacks.bleu.max_len_b=8"])
    with caplog.at_level("INFO"):
        metrics = train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    averaged = torch.load(ckpts / "averaged.ckpt", map_location="cpu", weights_only=False)
    steps = sorted(torch.load(p, map_location="cpu", weights_only=False)["global_step"]
                   for p in averaged["averaged_from"])
    assert steps == [6, 12]  # the last two checkpoints by step (last.ckpt is step 12 too: counted once)
    assert "test/bleu" in metrics
    assert "Averaged 2 checkpoints" in caplog.text
    from nmtbench.results_schema import load_results

    results = load_results(tmp_path / "run" / "results.json")
    assert [e["weights"] for e in results["test_evaluations"]] == ["last", "averaged"]
    assert results["test_evaluations"][0]["global_step"] == 12
    assert results["test_weights"] == "averaged"  # the top-level test fields are the average's
    assert results["test_sacrebleu"] == results["test_evaluations"][1]["sacrebleu"]
    assert results["test_ckpt_path"] == str(ckpts / "averaged.ckpt")


def test_test_weights_must_be_best_or_last(tiny_cfg, tmp_path):
    from nmtbench.errors import ConfigError
    from nmtbench.train import checkpoint_to_test

    with pytest.raises(ConfigError, match="test_weights"):
        checkpoint_to_test(tiny_cfg(["test_weights=worst"]), trainer=None, output_dir=tmp_path)


@pytest.mark.slow
def test_time_based_validation_interval(tiny_cfg, tmp_path):
    # The mini rows validate every few minutes of training (a time, not a step count), which
    # Lightning keeps outside `trainer.val_check_interval`; with accumulation 2, the step-based
    # rescaling (trainer_setup.val_check_batches) must leave it alone.
    cfg = tiny_cfg(TINY_TRANSFORMER + ["test=false", "trainer.val_check_interval=00:00:01:00",
                                       "trainer.accumulate_grad_batches=2"])
    metrics = train(cfg)
    assert "train/loss" in metrics
    from nmtbench.results_schema import load_results

    assert load_results(tmp_path / "run" / "results.json")["steps"] == 12


@pytest.mark.slow
def test_a_time_limited_run_ends_with_one_complete_validation_of_its_final_weights(tiny_cfg, tmp_path,
                                                                                   monkeypatch):
    # No validation is due by step count: the only one is the one Lightning runs when the
    # Timer stops training (issue: "the validation after max_time scored 5 BLEU under the one
    # before"). It must be complete (every sentence of the BLEU subset), in eval mode, of the
    # final weights, and last.ckpt must hold that final step.
    import lightning as L

    modes: list[bool] = []

    class RecordMode(L.Callback):
        def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
            modes.append(pl_module.training)

    from nmtbench import trainer_setup

    cfg = tiny_cfg(TINY_TRANSFORMER + ["test=false", "trainer.max_steps=-1", "trainer.max_epochs=-1",
                                       "trainer.max_time=00:00:00:03", "trainer.val_check_interval=100000",
                                       "trainer.check_val_every_n_epoch=null", "callbacks.bleu.max_len_b=8"])
    original = trainer_setup.instantiate_group

    def with_recorder(group):
        objects = original(group)
        return [*objects, RecordMode()] if group is not None and "bleu" in group else objects

    monkeypatch.setattr(trainer_setup, "instantiate_group", with_recorder)
    metrics = train(cfg)
    from nmtbench.results_schema import load_results

    results = load_results(tmp_path / "run" / "results.json")
    assert results["steps"] > 0
    assert [p["step"] for p in results["val_curve"]] == [results["steps"]]
    assert modes and not any(modes)  # every validation batch ran with the model in eval mode
    assert metrics["val/bleu_sentences"] == 40  # the whole toy validation set was decoded
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == results["steps"]
