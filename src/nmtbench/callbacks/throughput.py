"""ThroughputCallback: training tokens/s and MFU, built on Lightning's `Throughput`.

Items are tokens, counted from the batch (interfaces.md): source tokens = `src_lens.sum()`
(EOS included), target tokens = `(tgt_out != pad_id).sum()`. FLOPs come from the model's
analytic `flops_per_batch(src_lens, tgt_lens)` (forward + backward, useful work only), so
MFU = achieved model FLOP/s / peak FLOP/s (see `nmtbench.flops` for the peak values).

How it measures, and why:
- Counts are accumulated as device tensors and turned into numbers only at logging steps
  (every `trainer.log_every_n_steps` optimizer steps) and at the end of training, so there
  is no host-device synchronisation per step. On CUDA the clock is read after that sync.
- At those points every rank sums its counts with one all-reduce (5 numbers), so totals
  are exact over all DDP ranks, not rank zero's times `world_size`; per-device values are
  total / world_size. The decision to reduce depends only on the global step, so every
  rank takes part.
- Time is WallClockCallback's training time excluding validation (decoding for BLEU is not
  training throughput): the run's one clock, so tokens/s x hours = tokens exactly. Without
  a WallClockCallback the counts are kept but rates and MFU are null. (List it after the
  WallClockCallback, as configs/callbacks/default.yaml does, so the clock of a resumed run
  is restored before the first rate window opens.)
- Rates logged at each logging step are rolling means over the last `window_size` - 1
  logging intervals (`lightning.fabric.utilities.throughput.Throughput`); results.json gets
  run means (totals / training time excluding validation).
- Resumed runs continue the totals (`state_dict`, applied when the resumed fit starts).

Logged (TensorBoard, rank zero, every `log_every_n_steps`): `perf/tokens_per_sec`,
`perf/tgt_tokens_per_sec`, `perf/samples_per_sec`, `perf/flops_per_sec` (all devices),
`perf/device/tokens_per_sec`, `perf/device/tgt_tokens_per_sec`, `perf/device/flops_per_sec`,
`perf/mfu`.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.trainer.states import TrainerFn

from nmtbench.callbacks.common import (
    NO_FIT,
    Fields,
    LogStepGate,
    MeasurementCallback,
    Summary,
    find_callback,
    log_to_loggers,
    reduce_sum,
    sync_device,
    unmeasured,
)
from nmtbench.callbacks.wallclock import WallClockCallback
from nmtbench.flops import CPU_MEASURED, mfu, resolve_peak_flops

log = logging.getLogger(__name__)


class ThroughputCallback(MeasurementCallback):
    """Tokens/s (source+target and target), per device and in total, and MFU.

    Args:
        peak_flops_per_device: peak FLOP/s of one device for MFU; null = from the datasheet
            table by device name and precision (GPU) or measured (CPU), see `nmtbench.flops`.
        cpu_benchmark_seconds: length of the CPU fp32 matmul benchmark run once at the start
            of fit when the peak is not configured (0 disables it: MFU is then null on CPU).
        window_size: logging intervals in the rolling window of the logged rates (>= 2;
            2 = the rate over the last logging interval).
        max_pending: flush the accumulated per-batch tensors after this many micro-batches
            even between logging steps (bounds memory when logging is rare).
    """

    CONFIG_NAME = "throughput"
    SUMMARY_DEFAULTS = dict.fromkeys(
        ("peak_flops_per_device", "peak_flops_source", "tokens_seen", "tgt_tokens_seen", "sentences_seen",
         "tokens_per_sec", "tgt_tokens_per_sec", "tokens_per_sec_per_device", "train_flops", "mfu"))

    def __init__(
        self,
        peak_flops_per_device: float | None = None,
        cpu_benchmark_seconds: float = 1.0,
        window_size: int = 2,
        max_pending: int = 512,
    ) -> None:
        super().__init__()
        if window_size < 2:
            raise ValueError(f"callbacks.throughput.window_size must be >= 2, got {window_size}.")
        self.peak_flops_per_device = peak_flops_per_device
        self.cpu_benchmark_seconds = cpu_benchmark_seconds
        self.window_size = window_size
        self.max_pending = max_pending
        self.wallclock: WallClockCallback | None = None  # the clock (found in setup)
        self.fitted = False
        self.peak: float | None = None
        self.peak_source: str | None = None
        self.world_size = 1
        self.pad_id = 0
        self.has_flops = True
        # Totals over all ranks (and over resumed segments).
        self.tokens = 0
        self.tgt_tokens = 0
        self.sentences = 0
        self.batches = 0
        self.flops = 0.0
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._gate = LogStepGate()
        self._tokens_window: Throughput | None = None
        self._tgt_window: Throughput | None = None
        self._peak_resolved = False
        self._flops_at_last_update = 0.0

    # -- setup ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.world_size = int(trainer.world_size)
        self.pad_id = int(getattr(pl_module, "pad_id", 0))
        self.wallclock = find_callback(trainer, WallClockCallback)
        if stage != TrainerFn.FITTING or self._peak_resolved:
            return
        if self.wallclock is None and trainer.is_global_zero:
            log.info("ThroughputCallback: no WallClockCallback (callbacks.wallclock=null): token counts "
                     "only, no tokens/s or MFU.")
        self._peak_resolved = True
        device = trainer.strategy.root_device
        if not trainer.is_global_zero and device.type == "cpu" and self.peak_flops_per_device is None:
            return  # only rank zero reports MFU; do not benchmark the CPU in every process
        self.peak, self.peak_source = resolve_peak_flops(
            device, str(trainer.precision), self.peak_flops_per_device, self.cpu_benchmark_seconds
        )
        if self.peak is None and trainer.is_global_zero:
            log.info("ThroughputCallback: MFU disabled: %s", self.peak_source)

    def _new_windows(self) -> None:
        # Totals over all ranks are fed as one "device" (world_size=1) so that
        # device/items_per_sec is the total; per-device values are divided by world_size here.
        available = self.peak * self.world_size if self.peak else None
        self._tokens_window = Throughput(available_flops=available, world_size=1, window_size=self.window_size)
        self._tgt_window = Throughput(world_size=1, window_size=self.window_size)
        self._update_windows()

    # -- counting ------------------------------------------------------------------------
    def _elapsed(self) -> float | None:
        """Training seconds excluding validation, from WallClockCallback (None without it)."""
        return self.wallclock.train_seconds_excl_val() if self.wallclock is not None else None

    def _flush(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Turn pending per-batch tensors into numbers and sum them over ranks (all ranks call this)."""
        tokens = tgt = sentences = 0
        flops = 0.0
        if self._pending:
            src_lens = [s.detach().to("cpu", non_blocking=False) for s, _ in self._pending]
            tgt_lens = [t.detach().to("cpu", non_blocking=False) for _, t in self._pending]
            tokens = int(sum(int(s.sum()) for s in src_lens)) + int(sum(int(t.sum()) for t in tgt_lens))
            tgt = int(sum(int(t.sum()) for t in tgt_lens))
            sentences = int(sum(s.numel() for s in src_lens))
            flops = self._batch_flops(pl_module, src_lens, tgt_lens)
        num_batches = len(self._pending)
        self._pending = []
        counts = reduce_sum(trainer, [tokens, tgt, sentences, flops, num_batches])
        self.tokens += int(counts[0])
        self.tgt_tokens += int(counts[1])
        self.sentences += int(counts[2])
        self.flops += float(counts[3])
        self.batches += int(counts[4])

    def _batch_flops(self, pl_module, src_lens: list[torch.Tensor], tgt_lens: list[torch.Tensor]) -> float:
        model = getattr(pl_module, "model", pl_module)
        fn = getattr(model, "flops_per_batch", None)
        if fn is None:
            if self.has_flops:
                log.warning("ThroughputCallback: %s has no flops_per_batch(src_lens, tgt_lens); MFU is null.",
                            type(model).__name__)
            self.has_flops = False
            return 0.0
        return float(sum(fn(s, t) for s, t in zip(src_lens, tgt_lens)))

    def _update_windows(self) -> None:
        elapsed = self._elapsed()
        if self._tokens_window is None or self._tgt_window is None or elapsed is None:
            return
        if self._tokens_window._time and elapsed <= self._tokens_window._time[-1]:
            return  # no time passed (fake clocks, back-to-back flushes): nothing to add
        flops_delta = self.flops - self._flops_at_last_update
        self._flops_at_last_update = self.flops
        common = dict(time=elapsed, batches=self.batches, samples=self.sentences)
        try:
            self._tokens_window.update(**common, lengths=self.tokens,
                                       flops=flops_delta if self.has_flops else None)
            self._tgt_window.update(**common, lengths=self.tgt_tokens)
        except ValueError as err:  # non-monotonic counters: restart the windows, never stop training
            log.debug("ThroughputCallback: restarting the rate windows (%s)", err)
            self._new_windows()

    def _rates(self) -> dict[str, float]:
        """perf/* metrics from the rolling windows (empty until the window has filled)."""
        if self._tokens_window is None or self._tgt_window is None:
            return {}
        ws = self.world_size
        m, t = self._tokens_window.compute(), self._tgt_window.compute()
        out: dict[str, float] = {}
        if "device/items_per_sec" in m:
            out["perf/tokens_per_sec"] = m["device/items_per_sec"]
            out["perf/device/tokens_per_sec"] = m["device/items_per_sec"] / ws
            out["perf/samples_per_sec"] = m["device/samples_per_sec"]
        if "device/items_per_sec" in t:
            out["perf/tgt_tokens_per_sec"] = t["device/items_per_sec"]
            out["perf/device/tgt_tokens_per_sec"] = t["device/items_per_sec"] / ws
        if "device/flops_per_sec" in m:
            out["perf/flops_per_sec"] = m["device/flops_per_sec"]
            out["perf/device/flops_per_sec"] = m["device/flops_per_sec"] / ws
        if "device/mfu" in m:
            out["perf/mfu"] = m["device/mfu"]
        return out

    # -- hooks ---------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)  # a resumed fit's totals first
        self.fitted = True
        self._pending = []
        self._flops_at_last_update = self.flops
        if self.wallclock is not None:
            self._new_windows()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        src_lens = batch["src_lens"].detach()
        tgt_lens = batch["tgt_out"].detach().ne(self.pad_id).sum(dim=1)
        self._pending.append((src_lens, tgt_lens))
        log_step = self._gate(trainer)
        # Both conditions are identical on every rank (global step, micro-batch count).
        if log_step or len(self._pending) >= self.max_pending:
            self._flush(trainer, pl_module)
            sync_device(trainer)
            self._update_windows()
            if log_step:
                log_to_loggers(trainer, self._rates())

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, pl_module)
        self._remeasure_cpu_peak(trainer)
        fields, _ = self.summary()
        if trainer.is_global_zero and fields["tokens_per_sec"] is not None:
            log.info("Training throughput %.0f tokens/s (%.0f per device), MFU %s",
                     fields["tokens_per_sec"], fields["tokens_per_sec_per_device"],
                     "n/a" if fields["mfu"] is None else f"{fields['mfu']:.3f}")

    def _remeasure_cpu_peak(self, trainer: L.Trainer) -> None:
        """A CPU peak measured while something else ran is too low (MFU above 100% was seen after
        a 1-second benchmark that overlapped another process): measure again after training and
        keep the larger of the two."""
        if not (trainer.is_global_zero and self.peak and str(self.peak_source).startswith(CPU_MEASURED)):
            return
        again, source = resolve_peak_flops(trainer.strategy.root_device, str(trainer.precision), None,
                                           self.cpu_benchmark_seconds)
        start = self.peak
        self.peak = max(start, again or 0.0)
        self.peak_source = f"{source}, the larger of the start and end of training"
        if start < 0.8 * self.peak:
            log.warning("ThroughputCallback: the CPU peak measured at the start of training (%.3g FLOP/s) was "
                        "%.0f%% below the one at the end (%.3g): something else was running then; MFU uses the "
                        "larger.", start, 100 * (1 - start / self.peak), self.peak)

    # -- results -------------------------------------------------------------------------
    def summary(self) -> Summary:
        """Run totals and means over WallClockCallback's training time excluding validation."""
        if not self.fitted:
            return unmeasured(self.SUMMARY_DEFAULTS, NO_FIT)
        r = Fields()
        peak_reason = self.peak_source or "unknown peak FLOP/s"
        r.put("peak_flops_per_device", self.peak, peak_reason)
        r.put("peak_flops_source", self.peak_source if self.peak else None, peak_reason)
        r.put("tokens_seen", self.tokens)
        r.put("tgt_tokens_seen", self.tgt_tokens)
        r.put("sentences_seen", self.sentences)
        seconds = self._elapsed()
        time_reason = ("no WallClockCallback (callbacks.wallclock=null): no training time"
                       if seconds is None else "no training time measured")
        seconds = seconds if seconds and seconds > 0 else None
        tokens_per_sec = self.tokens / seconds if seconds else None
        r.put("tokens_per_sec", tokens_per_sec, time_reason)
        r.put("tgt_tokens_per_sec", self.tgt_tokens / seconds if seconds else None, time_reason)
        r.put("tokens_per_sec_per_device", tokens_per_sec / self.world_size if seconds else None, time_reason)
        flops_reason = "the model has no flops_per_batch(src_lens, tgt_lens)"
        r.put("train_flops", self.flops if self.has_flops else None, flops_reason)
        mfu_value = mfu(self.flops, seconds, self.world_size, self.peak) if self.has_flops and seconds else None
        r.put("mfu", mfu_value, flops_reason if not self.has_flops else time_reason if not seconds else peak_reason)
        return r.summary()

    def resume_state(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "tgt_tokens": self.tgt_tokens, "sentences": self.sentences,
                "batches": self.batches, "flops": self.flops}

    def restore(self, state: dict[str, Any]) -> None:
        self.tokens = int(state.get("tokens", 0))
        self.tgt_tokens = int(state.get("tgt_tokens", 0))
        self.sentences = int(state.get("sentences", 0))
        self.batches = int(state.get("batches", 0))
        self.flops = float(state.get("flops", 0.0))

__all__ = ["ThroughputCallback"]
