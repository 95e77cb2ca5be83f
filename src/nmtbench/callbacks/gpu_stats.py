"""GpuStatsCallback: GPU kernel-active time, memory and power sampled with NVML during fit.

Each rank samples its own CUDA device from a background thread every `interval_s`
seconds (nvidia-ml-py, `import pynvml`): kernel-active time (%), memory used (GB = 1e9
bytes, all processes on the device) and board power draw (W). Sampling runs from the start
to the end of the training loop, validation included.

"Kernel-active time" is NVML's `utilization.gpu` (nvidia-smi's "GPU-Util"): the percent of
the sample period during which one or more kernels was executing. It is not SM occupancy
nor the share of SMs busy: one small kernel running all the time reads 100 %. It shows
whether the GPU waits for the host (data loading, Python overhead), not how well the
kernels use it; MFU (ThroughputCallback) measures that.

- Every `log_every_n_steps` rank zero logs the means of its device's samples since the
  previous log: `gpu/kernel_active_pct`, `gpu/mem_gb`, `gpu/power_w`.
- At the end of fit the run means of every rank's device (and its name) are gathered (one
  collective, every rank takes part) into `per_device` and averaged into the run summary
  for results.json.
- Without an NVIDIA GPU (not a CUDA run, or NVML fails to initialise) the callback logs one
  info line and turns itself off; results.json then has null GPU fields with that reason.

NVML numbers its devices in PCI order and ignores `CUDA_VISIBLE_DEVICES`; the device of a
rank is found by its UUID (from torch) and, failing that, through `CUDA_VISIBLE_DEVICES`.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn

from nmtbench.callbacks.common import (
    NO_FIT,
    Fields,
    LogStepGate,
    MeasurementCallback,
    Summary,
    gather_objects,
    log_to_loggers,
    unmeasured,
)

log = logging.getLogger(__name__)

GB = 1e9
_FIELDS = ("kernel_active_pct", "mem_gb", "power_w")
_RUN_KEYS = ("kernel_active_pct_mean", "mem_gb_mean", "mem_gb_max", "power_w_mean", "num_samples")


class _Stats:
    """Running sums of the samples of one period (thread-safe through the owner's lock)."""

    def __init__(self) -> None:
        self.n = 0
        self.sums = dict.fromkeys(_FIELDS, 0.0)
        self.counts = dict.fromkeys(_FIELDS, 0)
        self.mem_max: float | None = None

    def add(self, sample: dict[str, float | None]) -> None:
        self.n += 1
        for key in _FIELDS:
            value = sample.get(key)
            if value is not None:
                self.sums[key] += value
                self.counts[key] += 1
        mem = sample.get("mem_gb")
        if mem is not None:
            self.mem_max = mem if self.mem_max is None else max(self.mem_max, mem)

    def means(self) -> dict[str, float | None]:
        return {k: (self.sums[k] / self.counts[k] if self.counts[k] else None) for k in _FIELDS}


def _uuid_of(device: torch.device) -> str | None:
    try:
        uuid = str(torch.cuda.get_device_properties(device).uuid)
    except Exception:  # old torch / no uuid
        return None
    return uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"


def nvml_handle(nvml: ModuleType, cuda_index: int, uuid: str | None = None) -> Any:
    """NVML handle of the CUDA device `cuda_index` of this process."""
    if uuid:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(uuid)
        except Exception:
            pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    visible = [v.strip() for v in visible if v.strip()]
    if cuda_index < len(visible):
        entry = visible[cuda_index]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry))
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(cuda_index)


class GpuStatsCallback(MeasurementCallback):
    """Sample NVML in a background thread; log interval means and keep run means.

    Args:
        interval_s: seconds between samples.
        nvml: an object with the pynvml API (injectable for tests); default `import pynvml`.
    """

    CONFIG_NAME = "gpu_stats"
    # gpu_util_mean: schema 1.0 name of gpu_kernel_active_pct_mean, written too until schema 2.0.
    SUMMARY_DEFAULTS = {"gpu_kernel_active_pct_mean": None, "gpu_util_mean": None, "gpu_mem_gb_mean": None,
                        "gpu_mem_gb_max": None, "gpu_power_w_mean": None, "gpu_per_device": []}

    def __init__(self, interval_s: float = 1.0, nvml: Any = None) -> None:
        super().__init__()
        if interval_s <= 0:
            raise ValueError(f"callbacks.gpu_stats.interval_s must be > 0, got {interval_s}.")
        self.interval_s = float(interval_s)
        self._nvml = nvml
        self.enabled = False
        self.disabled_reason: str | None = None
        self.device_name: str | None = None
        self.per_device: list[dict[str, Any]] = []
        self._handle = None
        self._lock = threading.Lock()
        self._interval = _Stats()
        self._run = _Stats()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._setup_done = False
        self._gate = LogStepGate()

    # -- pickling (ddp_spawn sends callbacks to the worker processes) --------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_stop", "_thread", "_handle"):
            state.pop(key, None)
        if isinstance(state.get("_nvml"), ModuleType):
            state["_nvml"] = None  # re-imported in the worker
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._handle = None

    # -- setup ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._setup_done or stage != TrainerFn.FITTING:
            return
        self._setup_done = True
        device = trainer.strategy.root_device
        if device.type != "cuda":
            self._turn_off(trainer, f"no NVIDIA GPU (running on {device.type})")
            return
        nvml = self._nvml
        if nvml is None:
            try:
                import pynvml as nvml  # nvidia-ml-py, the optional extra nmtbench[nvml]
            except ImportError:
                self._turn_off(trainer, "nvidia-ml-py is not installed; pip install 'nmtbench[nvml]' "
                               "(or nvidia-ml-py) to record GPU utilisation, memory and power")
                return
        try:
            nvml.nvmlInit()
            self._nvml = nvml
            self._handle = nvml_handle(nvml, device.index or 0, _uuid_of(device))
            name = nvml.nvmlDeviceGetName(self._handle)
            self.device_name = name.decode() if isinstance(name, bytes) else str(name)
        except Exception as err:  # NVMLError_LibraryNotFound, driver errors
            self._turn_off(trainer, f"no NVIDIA GPU (NVML unavailable: {err})")
            return
        self.enabled = True

    def _turn_off(self, trainer: L.Trainer, reason: str) -> None:
        self.enabled = False
        self.disabled_reason = reason
        if trainer.is_global_zero:
            log.info("GpuStatsCallback off: %s.", reason)

    # -- sampling ------------------------------------------------------------------------
    def sample(self) -> dict[str, float | None]:
        """One NVML reading of this rank's device; fields NVML cannot read are None."""
        nvml, handle = self._nvml, self._handle
        out: dict[str, float | None] = dict.fromkeys(_FIELDS)
        try:
            out["kernel_active_pct"] = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:
            pass
        try:
            out["mem_gb"] = float(nvml.nvmlDeviceGetMemoryInfo(handle).used) / GB
        except Exception:
            pass
        try:
            out["power_w"] = float(nvml.nvmlDeviceGetPowerUsage(handle)) / 1000.0  # mW -> W
        except Exception:
            pass
        return out

    def record(self, sample: dict[str, float | None]) -> None:
        with self._lock:
            self._interval.add(sample)
            self._run.add(sample)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.record(self.sample())
            self._stop.wait(self.interval_s)

    def _start_thread(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="nmtbench-gpu-stats", daemon=True)
        self._thread.start()

    def _stop_thread(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(5.0, 2 * self.interval_s))
            self._thread = None

    def interval_means(self) -> dict[str, float]:
        """`gpu/*` means of the samples since the previous call (empty if there were none)."""
        with self._lock:
            stats, self._interval = self._interval, _Stats()
        if stats.n == 0:
            return {}
        return {f"gpu/{k}": v for k, v in stats.means().items() if v is not None}

    def run_means(self) -> dict[str, Any]:
        """This rank's means over the whole fit: {kernel_active_pct_mean, mem_gb_mean, mem_gb_max,
        power_w_mean, num_samples}."""
        with self._lock:
            means, n, mem_max = self._run.means(), self._run.n, self._run.mem_max
        return {"kernel_active_pct_mean": means["kernel_active_pct"], "mem_gb_mean": means["mem_gb"],
                "mem_gb_max": mem_max, "power_w_mean": means["power_w"], "num_samples": n}

    # -- hooks ---------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.enabled:
            self._start_thread()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.enabled and self._gate(trainer):
            log_to_loggers(trainer, self.interval_means())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stop_thread()
        self.per_device = self._gather(trainer)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._stop_thread()
        if self._handle is not None:
            self._handle = None
            try:
                self._nvml.nvmlShutdown()
            except Exception:
                pass

    def _gather(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        """Every rank's device name and run means, in rank order (one all_gather_object when
        world_size > 1: all ranks call it); empty when no rank has samples."""
        own = self.run_means() if self.enabled else {**dict.fromkeys(_RUN_KEYS), "num_samples": 0}
        rows = gather_objects([{"name": self.device_name, **own}])
        out = [{"rank": rank, "name": row["name"], **{k: row[k] for k in _RUN_KEYS}}
               for rank, row in enumerate(rows)]
        return out if any(r["num_samples"] for r in out) else []

    def summary(self) -> Summary:
        """Run means over all devices for results.json (null with the reason when not measured)."""
        if not self._setup_done:
            return unmeasured(self.SUMMARY_DEFAULTS, NO_FIT)
        if not self.enabled:
            return unmeasured(self.SUMMARY_DEFAULTS, self.disabled_reason or "GpuStatsCallback disabled")
        rows = [r for r in self.per_device if r["num_samples"]]

        def mean(key: str) -> float | None:
            values = [r[key] for r in rows if r[key] is not None]
            return sum(values) / len(values) if values else None

        reason = f"no NVML samples (training shorter than interval_s={self.interval_s})"
        maxima = [r["mem_gb_max"] for r in rows if r["mem_gb_max"] is not None]
        r = Fields()
        r.put("gpu_kernel_active_pct_mean", mean("kernel_active_pct_mean"), reason)
        r.put("gpu_util_mean", mean("kernel_active_pct_mean"), reason)
        r.put("gpu_mem_gb_mean", mean("mem_gb_mean"), reason)
        r.put("gpu_mem_gb_max", max(maxima) if maxima else None, reason)
        r.put("gpu_power_w_mean", mean("power_w_mean"), reason)
        # util_mean: schema 1.0 name of kernel_active_pct_mean, written too until schema 2.0.
        r.put("gpu_per_device", [{**row, "util_mean": row["kernel_active_pct_mean"]} for row in self.per_device])
        return r.summary()


__all__ = ["GpuStatsCallback", "nvml_handle"]
