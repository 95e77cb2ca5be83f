"""WallClockCallback with a fake clock: hours with/without validation, device-hours,
time-to-BLEU targets firing once at the right step on the monitored metric, time to
fractions of the best value, and resume through state_dict."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from nmtbench.callbacks.common import LogStepGate
from nmtbench.callbacks.wallclock import WallClockCallback
from nmtbench.errors import ConfigError
from nmtbench.results_schema import time_to_fraction_of_best


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


def validate(cb, trainer, clock, step, bleu, train_s=100.0, val_s=20.0, paper_bleu=None):
    """Train for train_s seconds up to `step`, then validate for val_s seconds with val/bleu = bleu
    (and val/paper_bleu = paper_bleu, default bleu + 1)."""
    clock.now += train_s
    trainer.global_step = step
    cb.on_validation_start(trainer, None)
    clock.now += val_s
    paper = bleu + 1.0 if paper_bleu is None else paper_bleu
    trainer.callback_metrics = {"val/bleu": torch.tensor(bleu), "val/paper_bleu": torch.tensor(paper)}
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
    assert ttb[27.3] == {"target": 27.3, "metric": "val/bleu", "reached": False, "step": None, "hours": None,
                         "hours_excl_val": None, "device_hours": None, "bleu": None}

    logged = trainer.loggers[0]
    assert logged.keys().count("time/to_bleu_20") == 1
    assert logged.keys().count("time/to_bleu_25") == 1
    assert "time/to_bleu_27.3" not in logged.keys()
    step_of = {k: s for s, m in logged.records for k in m}
    assert step_of["time/to_bleu_20"] == 200 and step_of["time/to_bleu_25_step"] == 400

    s, reasons = cb.summary()
    assert reasons == {}
    assert s["train_hours"] == pytest.approx(630 / 3600)
    assert s["val_hours"] == pytest.approx(100 / 3600)
    assert s["train_hours_excl_val"] == pytest.approx(530 / 3600)
    assert s["device_hours"] == s["gpu_hours"] == pytest.approx(2 * 630 / 3600)
    assert [p["step"] for p in s["val_curve"]] == [100, 200, 300, 400, 500]
    assert s["val_curve"][1]["paper_bleu"] == 22.0
    assert s["val_curve"][1]["device_hours"] == pytest.approx(2 * 240 / 3600)
    # best val/bleu 26 at step 400: 90 % (23.4) and 95 % (24.7) and 99 % (25.74) first at 400
    assert [(f["fraction"], f["step"]) for f in s["time_to_fraction_of_best"]] == [(0.9, 400), (0.95, 400),
                                                                                    (0.99, 400)]


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
    s, reasons = cb.summary()
    assert s["gpu_hours"] is None and "not a GPU run" in reasons["gpu_hours"]
    assert s["device_hours"] == pytest.approx(15 / 3600)
    assert s["val_hours"] == 0.0 and s["val_curve"] == [] and s["time_to_fraction_of_best"] == []


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
    s, _ = resumed.summary()
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


def test_targets_on_paper_bleu():
    """An experiment can set its targets on val/paper_bleu (e.g. a paper's dev-set BLEU)."""
    clock, trainer = FakeClock(), fake_trainer()
    cb = WallClockCallback(bleu_targets=[25.8], monitor="val/paper_bleu", clock=clock)
    cb.setup(trainer, None, "fit")
    cb.on_train_start(trainer, None)
    validate(cb, trainer, clock, 100, 26.0, paper_bleu=25.0)  # val/bleu passes 25.8, paper BLEU not
    validate(cb, trainer, clock, 200, 26.5, paper_bleu=25.9)
    cb.on_train_end(trainer, None)
    s, _ = cb.summary()
    assert s["time_to_bleu"] == [{"target": 25.8, "metric": "val/paper_bleu", "reached": True, "step": 200,
                                  "hours": pytest.approx(240 / 3600), "hours_excl_val": pytest.approx(200 / 3600),
                                  "device_hours": pytest.approx(240 / 3600), "bleu": pytest.approx(25.9)}]
    assert {f["metric"] for f in s["time_to_fraction_of_best"]} == {"val/paper_bleu"}
    step_of = {k: step for step, m in trainer.loggers[0].records for k in m}
    assert step_of["time/to_paper_bleu_25.8"] == 200 and "time/to_bleu_25.8" not in step_of


def test_monitor_must_be_a_bleu_metric():
    with pytest.raises(ConfigError, match="callbacks.wallclock.monitor='val/loss'"):
        WallClockCallback(monitor="val/loss")


def test_time_to_fraction_of_best_on_a_synthetic_curve():
    bleu = [2.0, 10.0, 18.5, 19.2, 21.0, 19.0, 20.5]  # best 21.0; 90 % = 18.9, 95 % = 19.95, 99 % = 20.79
    curve = [{"step": 100 * (i + 1), "hours": 0.5 * (i + 1), "hours_excl_val": 0.4 * (i + 1),
              "device_hours": 4.0 * (i + 1), "bleu": b, "paper_bleu": None} for i, b in enumerate(bleu)]
    out = time_to_fraction_of_best(curve, "val/bleu")
    assert [(f["fraction"], f["step"]) for f in out] == [(0.9, 400), (0.95, 500), (0.99, 500)]
    first = out[0]
    assert first == {"fraction": 0.9, "metric": "val/bleu", "threshold": pytest.approx(18.9), "step": 400,
                     "hours": 2.0, "hours_excl_val": pytest.approx(1.6), "device_hours": 16.0}
    assert time_to_fraction_of_best(curve, "val/paper_bleu") == []  # no point has a paper BLEU
    assert time_to_fraction_of_best([], "val/bleu") == []


def test_not_fitted_summary_is_null_with_a_reason():
    fields, reasons = WallClockCallback().summary()
    assert fields["train_hours"] is None and "test only" in reasons["train_hours"]
    assert fields["val_curve"] == [] and "val_curve" not in reasons


def test_experiment_can_set_monitor_and_targets(tmp_path):
    import hydra

    from tests.conftest import compose_config

    cfg = compose_config(["experiment=vaswani2017_base", "callbacks.wallclock.monitor=val/paper_bleu",
                          "callbacks.wallclock.bleu_targets=[25.8]"])
    cb = hydra.utils.instantiate(cfg.callbacks.wallclock)
    assert cb.monitor == "val/paper_bleu" and cb.bleu_targets == [25.8]
