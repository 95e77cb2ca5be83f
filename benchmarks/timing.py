"""The one timing helper of the benchmarks: wall-clock and CPU time of repeated calls.

`time_calls(fn, device, warmup, repeats)` runs `fn` `warmup` times, then `repeats` times,
each between two device synchronisations (CUDA work is queued: without them the clock would
stop before the GPU does), and returns every call's wall and process-CPU seconds with their
median and spread. CPU time (all threads of this process) is the robust number on a shared
machine: other processes stretch the wall clock but not it.

Repeated rounds: `ratio_over_rounds(a, b)` is the median over rounds of a[r] / b[r] (two
systems' rates measured in the same rounds) and its `spread`, (max - min) / median: how far
apart the rounds are, printed next to each ratio the benchmarks report.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


def sync(device: torch.device | str) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(values: Sequence[float]) -> float:
    """(max - min) / median of `values`: 0 when they agree (or there is one, or none)."""
    if not values:
        return 0.0
    median = statistics.median(values)
    return (max(values) - min(values)) / median if median else 0.0


def ratio_over_rounds(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(median, spread) over rounds r of a[r] / b[r]: `a` and `b` hold one rate per round."""
    if len(a) != len(b) or not a:
        raise ValueError(f"one rate per round on both sides, got {len(a)} and {len(b)}")
    per_round = [x / y for x, y in zip(a, b)]
    return statistics.median(per_round), spread(per_round)


@dataclass
class Timing:
    wall: list[float] = field(default_factory=list)  # seconds of each timed call
    cpu: list[float] = field(default_factory=list)  # process CPU seconds of each timed call

    @property
    def median(self) -> float:
        return statistics.median(self.wall)

    @property
    def median_cpu(self) -> float:
        return statistics.median(self.cpu)

    @property
    def total(self) -> float:
        return sum(self.wall)

    @property
    def spread(self) -> float:
        """(max - min) / median of the calls' wall time: how far apart repeats are."""
        return spread(self.wall)

    def add(self, wall: float, cpu: float) -> None:
        self.wall.append(wall)
        self.cpu.append(cpu)


class Stopwatch:
    """`with watch: ...` adds the block's wall and CPU seconds to `watch.timing`, between two
    device synchronisations."""

    def __init__(self, device: torch.device | str = "cpu", timing: Timing | None = None):
        self.device = torch.device(device)
        self.timing = timing if timing is not None else Timing()

    def __enter__(self) -> Stopwatch:
        sync(self.device)
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        sync(self.device)
        self.timing.add(time.perf_counter() - self._wall, time.process_time() - self._cpu)


def time_calls(fn: Callable[[], object], device: torch.device | str = "cpu", warmup: int = 1,
               repeats: int = 5) -> Timing:
    """`fn()` `warmup` times untimed, then `repeats` timed calls (module docstring)."""
    for _ in range(warmup):
        fn()
    watch = Stopwatch(device)
    for _ in range(repeats):
        with watch:
            fn()
    return watch.timing


__all__ = ["Stopwatch", "Timing", "ratio_over_rounds", "spread", "sync", "time_calls"]
