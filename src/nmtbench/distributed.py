"""What the ranks of a run do together: agree once per optimizer step, and learn the outcome
of work that only rank zero does.

**One agreement per optimizer step** (`StepSync`). Several parts of a step need a value summed
over the ranks: the step's target tokens or sentences (the loss normalisation), whether any
rank saw a non-finite loss or gradient (skip the update), whether any rank got a stop signal or
a periodic save is due (save and stop together). Each used to be its own `strategy.reduce`,
which issues a barrier before its all-reduce and is read on the host: at least four blocking
syncs per step on GPUs. Here each part registers a named value; after the step's last
backward the module calls `StepSync.run`, which stacks them into one tensor, all-reduces it
once (no barrier) and reads it on the host once.

**Work that only rank zero does.**
Under DDP some steps run on rank zero alone (writing a checkpoint, averaging checkpoints,
writing results.json) while the other ranks wait for it in a collective. If rank zero fails
there, a barrier never tells the others: with NCCL they wait until the collective timeout
(30 minutes by default) holding their GPUs, and under Lightning's own launcher they can
outlive the job. `on_rank_zero` runs the work on rank zero, then broadcasts its outcome
(None, or the error's text): every rank returns together, or every rank raises, rank zero
with the original error and the others with `RankZeroFailed` naming it. One collective, on
any backend, in place of the barrier.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from nmtbench.errors import NmtbenchError

T = TypeVar("T")


class RankZeroFailed(NmtbenchError):
    """Rank zero failed in work the other ranks were waiting for; this rank stops too."""


def on_rank_zero(trainer: Any, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run `fn(*args, **kwargs)` on rank zero only and let every rank learn how it went.

    Every rank must call this at the same point (it is a collective when the trainer has
    several processes). Returns fn's result on rank zero and None elsewhere. `what` names
    the work in the error the other ranks raise.
    """
    result, error = None, None
    if trainer.is_global_zero:
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the broadcast
            error = exc
    if trainer.world_size > 1:
        text = None if error is None else f"{type(error).__name__}: {error}"
        text = trainer.strategy.broadcast(text, src=0)
        if error is None and text is not None:
            raise RankZeroFailed(f"{what} failed on rank 0, so rank {trainer.global_rank} stops too. "
                                 f"Rank 0's error: {text}")
    if error is not None:
        raise error
    return result


def all_reduce_sum(trainer: Any, values: torch.Tensor) -> torch.Tensor:
    """Sum `values` over the ranks in place: one all-reduce, no barrier (the identity on one
    process). Every rank must call it at the same point."""
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


class StepSync:
    """The values all ranks agree on once per optimizer step (module docstring).

    `register(name, provider)`: `provider()` returns this rank's value (a number or a 0-d
    tensor on any device) when the step's gradients are complete; `run` sums every registered
    value over the ranks with one all-reduce and one host read, and keeps the sums in `values`
    (with `step`, the optimizer step they belong to) until the next run.
    """

    def __init__(self) -> None:
        self.providers: dict[str, Callable[[], Any]] = {}
        self.values: dict[str, float] = {}
        self.step = -1

    def register(self, name: str, provider: Callable[[], Any]) -> None:
        self.providers[name] = provider

    def run(self, trainer: Any, device: torch.device, step: int) -> dict[str, float]:
        names = list(self.providers)
        if not names:
            self.values, self.step = {}, step
            return self.values
        raw = [self.providers[n]() for n in names]
        on_device = [torch.is_tensor(v) for v in raw]
        host = torch.tensor([0.0 if d else float(v) for v, d in zip(raw, on_device)], dtype=torch.float64,
                            pin_memory=device.type == "cuda")
        values = host.to(device, non_blocking=True)
        if any(on_device):
            idx = torch.tensor([i for i, d in enumerate(on_device) if d], device=device)
            dev = torch.stack([v.detach().to(device=device, dtype=torch.float64).reshape(()) for v, d in zip(raw, on_device) if d])
            values = values.index_add(0, idx, dev)
        all_reduce_sum(trainer, values)
        self.values, self.step = dict(zip(names, values.tolist())), step  # the one host read
        return self.values


__all__ = ["RankZeroFailed", "StepSync", "all_reduce_sum", "on_rank_zero"]
