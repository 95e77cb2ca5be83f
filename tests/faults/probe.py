"""Test probes, built by Hydra inside the training process (`+callbacks.probe._target_=...`).

`Probe` appends one JSON line per training batch to `<out_dir>/rank<r>.jsonl` (flushed at
once, so a `kill -9` keeps every line written), and can
- pause at the end of step `pause_at_step` (rank zero only) after writing `<out_dir>/paused`,
  until a stop signal arrives or `pause_seconds` pass: the test then kills it at a known step;
- pause during step `signal_at_step` (rank zero only), in the backward of its last
  micro-batch, before the ranks agree on the step (`nmtbench.distributed.StepSync`), after
  writing `<out_dir>/paused`: a stop signal sent then stops the run at the end of that step;
- make the loss NaN at `nan_steps` (on `nan_ranks`) through a forward hook on the logits;
- set the learning rate to NaN at `nan_lr_step`, so the update makes the weights NaN;
- pause at the first test batch (`pause_in_test`) until a stop signal arrives, so the test
  can be signalled;
- write `<out_dir>/end_rank<r>.json` at the end of fit: the NonFiniteLossCallback summary
  and the saves of ResumeCheckpoint.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch

from nmtbench.callbacks.nonfinite import NonFiniteLossCallback
from nmtbench.callbacks.resume import ResumeCheckpoint
from nmtbench.preemption import SIGNALS


class Probe(L.Callback):
    def __init__(self, out_dir: str, pause_at_step: int | None = None, pause_seconds: float = 120.0,
                 nan_steps: list[int] | None = None, nan_ranks: list[int] | None = None,
                 nan_lr_step: int | None = None, pause_in_test: bool = False, signal_at_step: int | None = None,
                 pause_rank: int = 0):
        self.out_dir = Path(out_dir)
        self.pause_at_step = pause_at_step
        self.signal_at_step = signal_at_step
        self.pause_rank = pause_rank
        self.pause_seconds = pause_seconds
        self.nan_steps = set(nan_steps or [])
        self.nan_ranks = None if nan_ranks is None else set(nan_ranks)
        self.nan_lr_step = nan_lr_step
        self.pause_in_test = pause_in_test
        self._poison = False
        self._file = None

    def setup(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out_dir / f"rank{trainer.global_rank}.jsonl", "a", encoding="utf-8")
        pl_module.model.register_forward_hook(self._maybe_poison)

    def _maybe_poison(self, module, inputs, output):
        return output * float("nan") if self._poison and module.training else output

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._opt_step = trainer.global_step + 1  # the optimizer step this micro-batch belongs to
        rank_ok = self.nan_ranks is None or trainer.global_rank in self.nan_ranks
        self._poison = rank_ok and trainer.global_step in self.nan_steps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.nan_lr_step:
            for group in optimizer.param_groups:
                group["lr"] = float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._poison = False
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        checksum = float(sum(p.detach().double().abs().sum() for p in pl_module.model.parameters()))
        record = {"step": trainer.global_step, "opt_step": self._opt_step, "epoch": trainer.current_epoch,
                  "batch_idx": batch_idx,
                  "loss": None if loss is None else float(loss), "weights": checksum,
                  "lr": trainer.optimizers[0].param_groups[0]["lr"], "ids": batch["ids"].tolist()}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if trainer.global_step == self.pause_at_step and trainer.global_rank == self.pause_rank:
            self._pause("paused", trainer.global_step)

    def on_before_backward(self, trainer, pl_module, loss):
        last = not trainer.fit_loop.epoch_loop._should_accumulate()  # this micro-batch ends the step
        if last and trainer.global_step + 1 == self.signal_at_step and trainer.global_rank == self.pause_rank:
            self._pause("paused", trainer.global_step + 1)

    def _pause(self, name: str, step: int) -> None:
        """Write <out_dir>/<name>, then wait until a stop signal arrives (or pause_seconds)."""
        (self.out_dir / name).write_text(str(step))
        deadline = time.monotonic() + self.pause_seconds
        while time.monotonic() < deadline and not SIGNALS.requested:
            time.sleep(0.02)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.pause_in_test and batch_idx == 0 and trainer.global_rank == self.pause_rank:
            self._pause("paused_test", trainer.global_step)

    def on_fit_end(self, trainer, pl_module):
        nonfinite = next((c for c in trainer.callbacks if isinstance(c, NonFiniteLossCallback)), None)
        fields = nonfinite.summary()[0] if nonfinite is not None else {}
        resume = next((c for c in trainer.callbacks if isinstance(c, ResumeCheckpoint)), None)
        end = {**fields, "skipped_steps": getattr(nonfinite, "skipped_steps", []), "global_step": trainer.global_step,
               "finite_weights": bool(all(torch.isfinite(p).all() for p in pl_module.parameters())),
               "resume_saves": [list(s) for s in getattr(resume, "saved", [])]}
        (self.out_dir / f"end_rank{trainer.global_rank}.json").write_text(json.dumps(end))

    def teardown(self, trainer, pl_module, stage):
        if self._file is not None:
            self._file.close()
            self._file = None


def probe_overrides(out_dir, **kwargs) -> list[str]:
    """Hydra overrides that add a Probe writing to `out_dir` (kwargs: Probe arguments)."""
    out = [f"+callbacks.probe._target_={__name__}.Probe", f"+callbacks.probe.out_dir={out_dir}"]
    for key, value in kwargs.items():
        value = "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, (list, tuple)) else value
        out.append(f"+callbacks.probe.{key}={value}")
    return out


def read_records(out_dir, rank: int = 0) -> list[dict]:
    path = Path(out_dir) / f"rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def losses_by_step(records: list[dict]) -> dict[int, float]:
    """global step after the batch -> loss of that batch (no gradient accumulation here)."""
    return {r["step"]: r["loss"] for r in records}


def losses_by_optimizer_step(records: list[dict]) -> dict[int, list[float]]:
    """optimizer step -> the losses of its micro-batches, in order (with gradient accumulation)."""
    out: dict[int, list[float]] = {}
    for r in records:
        out.setdefault(r["opt_step"], []).append(r["loss"])
    return out
