"""GpuStatsCallback with a fake NVML module: means per logging interval and over the run,
the background thread, and turning off cleanly (one info line) without CUDA or NVML.
NVML's utilization.gpu is reported as kernel-active time (gpu/kernel_active_pct)."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.trainer.states import TrainerFn

from nmtbench.callbacks.gpu_stats import GpuStatsCallback, nvml_handle


class FakeNVML:
    """The part of the pynvml API the callback uses; readings come from fixed sequences."""

    def __init__(self, util=(50, 70, 90, 30), mem_bytes=(2e9, 4e9, 6e9, 8e9), power_mw=(100e3, 200e3, 300e3, 400e3),
                 init_error: Exception | None = None) -> None:
        self.util, self.mem, self.power = list(util), list(mem_bytes), list(power_mw)
        self.i = {"util": 0, "mem": 0, "power": 0}
        self.init_error = init_error
        self.initialised = self.shutdown = False

    def _next(self, key, values):
        value = values[self.i[key] % len(values)]
        self.i[key] += 1
        return value

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error
        self.initialised = True

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("handle", uuid)

    def nvmlDeviceGetName(self, handle):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self._next("util", self.util), memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(used=self._next("mem", self.mem), total=80e9)

    def nvmlDeviceGetPowerUsage(self, handle):
        return self._next("power", self.power)


class CaptureLogger:
    def __init__(self) -> None:
        self.records = []

    def log_metrics(self, metrics, step):
        self.records.append((step, dict(metrics)))


def fake_trainer(device="cuda:0"):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), world_size=1,
                           is_global_zero=True, loggers=[CaptureLogger()], global_step=0, log_every_n_steps=2,
                           state=SimpleNamespace(fn=TrainerFn.FITTING))


def test_interval_and_run_means():
    nvml, trainer = FakeNVML(), fake_trainer()
    cb = GpuStatsCallback(nvml=nvml)
    cb.setup(trainer, None, "fit")
    assert cb.enabled and nvml.initialised and cb.device_name == "NVIDIA H100 80GB HBM3"
    # two samples, then a logging step, then two more samples and a logging step
    for step, n_samples in ((2, 2), (4, 2)):
        for _ in range(n_samples):
            cb.record(cb.sample())
        trainer.global_step = step
        cb.on_train_batch_end(trainer, None, None, None, 0)
    cb.on_train_end(trainer, None)
    cb.teardown(trainer, None, "fit")
    assert nvml.shutdown

    (s1, m1), (s2, m2) = trainer.loggers[0].records
    assert (s1, s2) == (2, 4)
    assert m1 == pytest.approx({"gpu/kernel_active_pct": 60.0, "gpu/mem_gb": 3.0, "gpu/power_w": 150.0})
    assert m2 == pytest.approx({"gpu/kernel_active_pct": 60.0, "gpu/mem_gb": 7.0, "gpu/power_w": 350.0})
    s, reasons = cb.summary()
    assert reasons == {}
    assert s["gpu_kernel_active_pct_mean"] == pytest.approx(60.0)
    assert s["gpu_util_mean"] == s["gpu_kernel_active_pct_mean"]  # the schema 1.0 name, kept until 2.0
    assert s["gpu_mem_gb_mean"] == pytest.approx(5.0) and s["gpu_mem_gb_max"] == pytest.approx(8.0)
    assert s["gpu_power_w_mean"] == pytest.approx(250.0)
    assert s["gpu_per_device"] == [{"rank": 0, "name": "NVIDIA H100 80GB HBM3", "kernel_active_pct_mean": 60.0,
                                    "mem_gb_mean": 5.0, "mem_gb_max": 8.0, "power_w_mean": 250.0,
                                    "num_samples": 4, "util_mean": 60.0}]


def test_missing_power_reading_is_skipped():
    nvml = FakeNVML()
    nvml.nvmlDeviceGetPowerUsage = lambda handle: (_ for _ in ()).throw(RuntimeError("Not Supported"))
    cb = GpuStatsCallback(nvml=nvml)
    cb.setup(fake_trainer(), None, "fit")
    cb.record(cb.sample())
    assert cb.run_means()["power_w_mean"] is None and cb.run_means()["kernel_active_pct_mean"] == 50.0


def test_background_thread_samples():
    trainer = fake_trainer()
    cb = GpuStatsCallback(interval_s=0.01, nvml=FakeNVML())
    cb.setup(trainer, None, "fit")
    cb.on_train_start(trainer, None)
    deadline = time.monotonic() + 5
    while cb.run_means()["num_samples"] < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    cb.on_train_end(trainer, None)
    n = cb.run_means()["num_samples"]
    assert n >= 3 and cb._thread is None
    time.sleep(0.05)
    assert cb.run_means()["num_samples"] == n  # stopped


def test_turns_off_without_cuda(caplog):
    caplog.set_level(logging.INFO)
    trainer, nvml = fake_trainer("cpu"), FakeNVML()
    cb = GpuStatsCallback(nvml=nvml)
    for stage in ("fit", "test"):
        cb.setup(trainer, None, stage)
    cb.on_train_start(trainer, None)
    trainer.global_step = 2
    cb.on_train_batch_end(trainer, None, None, None, 0)
    cb.on_train_end(trainer, None)
    cb.teardown(trainer, None, "fit")
    assert not cb.enabled and not nvml.initialised and cb._thread is None
    assert trainer.loggers[0].records == []
    fields, reasons = cb.summary()
    assert fields["gpu_kernel_active_pct_mean"] is None and fields["gpu_per_device"] == []
    assert reasons["gpu_kernel_active_pct_mean"] == reasons["gpu_util_mean"] == "no NVIDIA GPU (running on cpu)"
    lines = [r.getMessage() for r in caplog.records if "GpuStatsCallback" in r.getMessage()]
    assert lines == ["GpuStatsCallback off: no NVIDIA GPU (running on cpu)."]


def test_turns_off_when_nvml_fails(caplog):
    caplog.set_level(logging.INFO)
    cb = GpuStatsCallback(nvml=FakeNVML(init_error=OSError("libnvidia-ml.so.1: cannot open shared object")))
    cb.setup(fake_trainer(), None, "fit")
    assert not cb.enabled and "NVML unavailable" in cb.disabled_reason
    assert sum("GpuStatsCallback off" in r.getMessage() for r in caplog.records) == 1


def test_nvml_handle_respects_cuda_visible_devices(monkeypatch):
    nvml = FakeNVML()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert nvml_handle(nvml, 1) == ("handle", 5)
    assert nvml_handle(nvml, 0, uuid="GPU-abc") == ("handle", "GPU-abc")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml_handle(nvml, 2) == ("handle", 2)


def test_real_pynvml_without_driver_turns_off():
    """The real nvidia-ml-py on a machine without the NVIDIA driver fails in nvmlInit."""
    pytest.importorskip("pynvml")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cb = GpuStatsCallback()
    trainer = fake_trainer("cuda:0")  # pretend CUDA so that NVML is tried
    cb.setup(trainer, None, "fit")
    assert not cb.enabled and "NVML unavailable" in cb.disabled_reason


def test_picklable_for_ddp_spawn():
    import pickle

    cb = GpuStatsCallback(interval_s=0.5)
    clone = pickle.loads(pickle.dumps(cb))
    assert clone.interval_s == 0.5 and clone._thread is None
    clone.record({"kernel_active_pct": 1.0, "mem_gb": 1.0, "power_w": 1.0})  # the lock was recreated
    assert clone.run_means()["num_samples"] == 1


def test_no_samples_and_test_only_reasons():
    cb = GpuStatsCallback(interval_s=30.0, nvml=FakeNVML())
    fields, reasons = cb.summary()  # no fit in this process
    assert fields["gpu_mem_gb_mean"] is None and "test only" in reasons["gpu_mem_gb_mean"]
    trainer = fake_trainer()
    cb.setup(trainer, None, "fit")
    cb.on_train_end(trainer, None)  # training ended before the first sample
    fields, reasons = cb.summary()
    assert fields["gpu_per_device"] == [] and "interval_s=30.0" in reasons["gpu_kernel_active_pct_mean"]
