"""benchmarks/timing.py, the benchmarks' one timing helper: medians, spreads and call counts."""

from __future__ import annotations

import pytest

from benchmarks.timing import Stopwatch, Timing, time_calls


def test_median_and_spread_of_known_timings():
    t = Timing(wall=[3.0, 1.0, 2.0], cpu=[0.5, 0.25, 1.0])
    assert t.median == 2.0 and t.median_cpu == 0.5 and t.total == 6.0
    assert t.spread == pytest.approx((3.0 - 1.0) / 2.0)
    assert Timing(wall=[4.0, 1.0, 2.0, 3.0]).median == 2.5
    assert Timing(wall=[2.0, 2.0]).spread == 0.0
    assert Timing().spread == 0.0  # nothing timed: no spread (and no division by zero)


def test_time_calls_runs_warmup_then_records_each_timed_call():
    calls = []
    timing = time_calls(lambda: calls.append(1), "cpu", warmup=2, repeats=3)
    assert len(calls) == 2 + 3
    assert len(timing.wall) == len(timing.cpu) == 3
    assert all(w >= 0 for w in timing.wall) and all(c >= 0 for c in timing.cpu)


def test_stopwatch_adds_each_block_to_one_timing():
    shared = Timing()
    watch = Stopwatch("cpu", shared)
    for _ in range(2):
        with watch:
            sum(range(1000))
    assert watch.timing is shared and len(shared.wall) == 2 and shared.total >= 0
