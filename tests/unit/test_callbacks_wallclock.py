"""WallClockCallback with a fake clock: hours with/without validation, device-hours,
time-to-BLEU targets firing once at the right step, and resume through state_dict."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from nmtbench.callbacks.wallclock import LogStepGate, WallClockCallback


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CaptureLogger:
    def __init__(self) -> None:
        self.records: list[tuple[int, dict]] = []

    def log_metrics(self, metrics, step):
        self.records.append((step, dict(metrics)))

    def keys(self) -> list[str]:
        return [k for _, m in self.records for k in m]


def fake_trainer(world_size=1, device="cpu"):
    return SimpleNamespace(
        world_size=world_size, strategy=SimpleNamespace(root_device=torch.device(device)),
        sanity_checking=False, state=SimpleNamespace(fn=TrainerFn.FITTING), callback_metrics={},
        global_step=0, log_every_n_steps=10, is_global_zero=True, loggers=[CaptureLogger()],
    )


def validate(cb, trainer, clock, step, bleu, train_s=100.0, val_s=20.0):
    """Train for train_s seconds up to `step`, then validate for val_s seconds with val/bleu = bleu."""
    clock.now += train_s
    trainer.global_step = step
    cb.on_validation_start(trainer, None)
    clock.now += val_s
    trainer.callback_metrics = {"val/bleu": torch.tensor(bleu)}
    cb.on_validation_end(trainer, None)


def test_targets_fire_once_at_the_right_step():
    clock, trainer = FakeClock(), fake_trainer(world_size=2, device="cuda")
    cb = WallClockCallback(bleu_targets=[25, 20, 27.3], clock=clock)
    cb.setup(trainer, None, "fit")
    cb.on_train_start(trainer, None)
    for step, bleu in [(100, 10.0), (200, 21.0), (300, 19.0), (400, 26.0), (500, 24.0)]:
        validate(cb, trainer, clock, step, bleu)
    clock.now += 30.0
    cb.on_train_end(trainer, None)

    ttb = {r["target"]: r for r in cb.time_to_bleu()}
    assert list(ttb) == [20.0, 25.0, 27.3]
    assert ttb[20.0]["step"] == 200 and ttb[20.0]["bleu"] == 21.0
    assert ttb[20.0]["hours"] == pytest.approx(240 / 3600)  # 2 x (100 train + 20 val)
    assert ttb[20.0]["hours_excl_val"] == pytest.approx(200 / 3600)
    assert ttb[20.0]["device_hours"] == pytest.approx(2 * 240 / 3600)
    assert ttb[25.0]["step"] == 400 and ttb[25.0]["hours"] == pytest.approx(480 / 3600)
    assert ttb[27.3] == {"target": 27.3, "reached": False, "step": None, "hours": None,
                         "hours_excl_val": None, "device_hours": None, "bleu": None}

    logged = trainer.loggers[0]
    assert logged.keys().count("time/to_bleu_20") == 1
    assert logged.keys().count("time/to_bleu_25") == 1
    assert "time/to_bleu_27.3" not in logged.keys()
    step_of = {k: s for s, m in logged.records for k in m}
    assert step_of["time/to_bleu_20"] == 200 and step_of["time/to_bleu_25_step"] == 400

    s = cb.summary()
    assert s["train_hours"] == pytest.approx(630 / 3600)
    assert s["val_hours"] == pytest.approx(100 / 3600)
    assert s["train_hours_excl_val"] == pytest.approx(530 / 3600)
    assert s["device_hours"] == s["gpu_hours"] == pytest.approx(2 * 630 / 3600)
    assert [p["step"] for p in s["val_curve"]] == [100, 200, 300, 400, 500]


def test_cpu_run_has_no_gpu_hours_and_sanity_check_is_ignored():
    clock, trainer = FakeClock(), fake_trainer()
    cb = WallClockCallback(clock=clock)
    cb.setup(trainer, None, "fit")
    cb.on_train_start(trainer, None)
    trainer.sanity_checking = True
    validate(cb, trainer, clock, 0, 50.0, train_s=0.0, val_s=5.0)
    trainer.sanity_checking = False
    clock.now += 10
    cb.on_train_end(trainer, None)
    s = cb.summary()
    assert s["gpu_hours"] is None and s["device_hours"] == pytest.approx(15 / 3600)
    assert s["val_hours"] == 0.0 and s["val_curve"] == []


def test_resume_continues_the_clock():
    clock, trainer = FakeClock(), fake_trainer()
    cb = WallClockCallback(bleu_targets=[20], clock=clock)
    cb.setup(trainer, None, "fit")
    cb.on_train_start(trainer, None)
    validate(cb, trainer, clock, 100, 22.0)
    state = cb.state_dict()  # saved by the checkpoint after validation
    clock.now += 500  # lost: after the checkpoint, before the crash

    clock2 = FakeClock()
    clock2.now = 1000.0
    resumed = WallClockCallback(bleu_targets=[20], clock=clock2)
    resumed.load_state_dict(state)
    resumed.setup(trainer, None, "fit")
    resumed.on_train_start(trainer, None)
    validate(resumed, trainer, clock2, 200, 30.0)
    resumed.on_train_end(trainer, None)
    s = resumed.summary()
    assert s["train_hours"] == pytest.approx(240 / 3600)
    assert s["val_hours"] == pytest.approx(40 / 3600)
    assert s["time_to_bleu"][0]["step"] == 100  # reached before the resume, not re-fired
    assert [p["step"] for p in s["val_curve"]] == [100, 200]
    assert trainer.loggers[0].keys().count("time/to_bleu_20") == 1


def test_state_restored_by_test_does_not_roll_back():
    """trainer.test(ckpt_path="best") restores callback states; only a resumed fit applies them."""
    clock, trainer = FakeClock(), fake_trainer()
    cb = WallClockCallback(bleu_targets=[20], clock=clock)
    cb.setup(trainer, None, "fit")
    cb.on_train_start(trainer, None)
    validate(cb, trainer, clock, 100, 10.0)
    best = cb.state_dict()
    validate(cb, trainer, clock, 200, 30.0)
    cb.on_train_end(trainer, None)
    before = cb.summary()
    cb.load_state_dict(best)  # what trainer.test(ckpt_path=...) does
    assert cb.summary() == before


def test_time_scalars_at_log_steps():
    clock, trainer = FakeClock(), fake_trainer()
    cb = WallClockCallback(clock=clock)
    cb.setup(trainer, None, "fit")
    cb.on_train_start(trainer, None)
    for step in (9, 10, 10, 11, 20):  # 10 twice: gradient accumulation micro-batches
        trainer.global_step = step
        clock.now += 1
        cb.on_train_batch_end(trainer, None, None, None, 0)
    steps = [s for s, m in trainer.loggers[0].records if "time/train_hours" in m]
    assert steps == [10, 20]
    assert set(trainer.loggers[0].records[0][1]) == {
        "time/train_hours", "time/train_hours_excl_val", "time/val_hours", "time/device_hours"}


def test_log_step_gate():
    gate, trainer = LogStepGate(), SimpleNamespace(global_step=0, log_every_n_steps=5)
    fired = []
    for step in [0, 1, 5, 5, 6, 10, 10, 15]:
        trainer.global_step = step
        fired.append(gate(trainer))
    assert fired == [False, False, True, False, False, True, False, True]
