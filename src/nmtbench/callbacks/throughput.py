"""ThroughputCallback: training tokens/s and MFU, built on Lightning's `Throughput`.

Items are tokens, counted from the batch (interfaces.md): source tokens = `src_lens.sum()`
(EOS included), target tokens = `(tgt_out != pad_id).sum()`. FLOPs come from the model's
analytic `flops_per_batch(src_lens, tgt_lens)` (forward + backward, useful work only), so
MFU = achieved model FLOP/s / peak FLOP/s (see `nmtbench.flops` for the peak values).

How it measures, and why:
- Counts are accumulated as device tensors and turned into numbers only at logging steps
  (every `trainer.log_every_n_steps` optimizer steps) and around validation, so there is
  no host-device synchronisation per step. On CUDA the clock is read after that sync.
- At those points every rank sums its counts with one all-reduce (4 numbers), so totals
  are exact over all DDP ranks, not rank zero's times `world_size`; per-device values are
  total / world_size. The decision to reduce depends only on the global step, so every
  rank takes part.
- Time excludes validation (decoding for BLEU is not training throughput).
- Rates logged at each logging step are rolling means over the last `window_size` - 1
  logging intervals (`lightning.fabric.utilities.throughput.Throughput`); results.json gets
  run means (totals / training time excluding validation).

Logged (TensorBoard, rank zero, every `log_every_n_steps`): `perf/tokens_per_sec`,
`perf/tgt_tokens_per_sec`, `perf/samples_per_sec`, `perf/flops_per_sec` (all devices),
`perf/device/tokens_per_sec`, `perf/device/tgt_tokens_per_sec`, `perf/device/flops_per_sec`,
`perf/mfu`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.throughput import Throughput
from lightning.pytorch.trainer.states import TrainerFn

from nmtbench.callbacks.wallclock import LogStepGate, log_to_loggers
from nmtbench.flops import mfu, resolve_peak_flops

log = logging.getLogger(__name__)


class ThroughputCallback(L.Callback):
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
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        peak_flops_per_device: float | None = None,
        cpu_benchmark_seconds: float = 1.0,
        window_size: int = 2,
        max_pending: int = 512,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        super().__init__()
        if window_size < 2:
            raise ValueError(f"callbacks.throughput.window_size must be >= 2, got {window_size}.")
        self.peak_flops_per_device = peak_flops_per_device
        self.cpu_benchmark_seconds = cpu_benchmark_seconds
        self.window_size = window_size
        self.max_pending = max_pending
        self.clock = clock
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
        self.train_seconds = 0.0  # training time excluding validation, closed intervals
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._run_start: float | None = None  # clock when the open training interval began
        self._gate = LogStepGate()
        self._tokens_window: Throughput | None = None
        self._tgt_window: Throughput | None = None
        self._peak_resolved = False
        self._flops_at_last_update = 0.0
        self._resume_state: dict[str, Any] | None = None

    # -- setup ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.world_size = int(trainer.world_size)
        self.pad_id = int(getattr(pl_module, "pad_id", 0))
        if stage != TrainerFn.FITTING or self._peak_resolved:
            return
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
    def _elapsed(self) -> float:
        open_interval = self.clock() - self._run_start if self._run_start is not None else 0.0
        return self.train_seconds + open_interval

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
        counts = torch.tensor([tokens, tgt, sentences, flops, num_batches], dtype=torch.float64)
        if self.world_size > 1:
            device = trainer.strategy.root_device
            reduce_device = device if device.type == "cuda" else torch.device("cpu")
            counts = trainer.strategy.reduce(counts.to(reduce_device), reduce_op="sum").cpu()
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
        if self._tokens_window is None or self._tgt_window is None:
            return
        elapsed = self._elapsed()
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

    @staticmethod
    def _sync(trainer: L.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    # -- hooks ---------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply_resume_state()
        self._pending = []
        self._run_start = self.clock()
        self._flops_at_last_update = self.flops
        self._new_windows()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        src_lens = batch["src_lens"].detach()
        tgt_lens = batch["tgt_out"].detach().ne(self.pad_id).sum(dim=1)
        self._pending.append((src_lens, tgt_lens))
        log_step = self._gate(trainer)
        # Both conditions are identical on every rank (global step, micro-batch count).
        if log_step or len(self._pending) >= self.max_pending:
            self._flush(trainer, pl_module)
            self._sync(trainer)
            self._update_windows()
            if log_step:
                log_to_loggers(trainer, self._rates())

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self._run_start is None:
            return
        self._flush(trainer, pl_module)
        self._sync(trainer)
        self.train_seconds += self.clock() - self._run_start
        self._run_start = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING or self._tokens_window is None:
            return
        if self._run_start is None:
            self._run_start = self.clock()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, pl_module)
        self._sync(trainer)
        if self._run_start is not None:
            self.train_seconds += self.clock() - self._run_start
            self._run_start = None
        s = self.summary()
        if trainer.is_global_zero and s["tokens_per_sec"] is not None:
            log.info("Training throughput %.0f tokens/s (%.0f per device), MFU %s",
                     s["tokens_per_sec"], s["tokens_per_sec_per_device"],
                     "n/a" if s["mfu"] is None else f"{s['mfu']:.3f}")

    # -- results -------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Run totals and means for results.json (None where undefined)."""
        seconds = self._elapsed()
        rate = (lambda n: n / seconds) if seconds > 0 else (lambda n: None)
        tokens_per_sec = rate(self.tokens)
        return {
            "tokens_seen": self.tokens,
            "tgt_tokens_seen": self.tgt_tokens,
            "sentences_seen": self.sentences,
            "train_seconds_excl_val": seconds,
            "tokens_per_sec": tokens_per_sec,
            "tgt_tokens_per_sec": rate(self.tgt_tokens),
            "tokens_per_sec_per_device": None if tokens_per_sec is None else tokens_per_sec / self.world_size,
            "train_flops": self.flops if self.has_flops else None,
            "mfu": mfu(self.flops, seconds, self.world_size, self.peak) if self.has_flops else None,
            "peak_flops_per_device": self.peak,
            "peak_flops_source": self.peak_source,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "tgt_tokens": self.tgt_tokens, "sentences": self.sentences,
                "batches": self.batches, "flops": self.flops, "train_seconds": self._elapsed()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied at the next on_train_start (a resumed fit), not when trainer.test() restores
        # a checkpoint: that must not roll this run's totals back (see WallClockCallback).
        self._resume_state = dict(state_dict)

    def _apply_resume_state(self) -> None:
        state, self._resume_state = self._resume_state, None
        if not state:
            return
        self.tokens = int(state.get("tokens", 0))
        self.tgt_tokens = int(state.get("tgt_tokens", 0))
        self.sentences = int(state.get("sentences", 0))
        self.batches = int(state.get("batches", 0))
        self.flops = float(state.get("flops", 0.0))
        self.train_seconds = float(state.get("train_seconds", 0.0))

__all__ = ["ThroughputCallback"]
