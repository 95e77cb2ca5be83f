"""Shared data caches: two runs preparing the same cache at once build it once, and a kill
during preparation leaves nothing a later run would read."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from nmtbench.data.prepare import load_prepared

from ..conftest import compose_config
from .runner import kill_group, start

# A toy cache large enough that building it takes seconds (the processes overlap).
DATA = ["data=toy", "data.toy.num_train=20000", "data.toy.num_valid=50", "data.toy.num_test=50",
        "data.vocab_size=300"]


def prepare_args(root: Path) -> list[str]:
    return [*DATA, f"paths.root_dir={root}", f"hydra.run.dir={root / 'runs'}"]


def cache_entries(root: Path) -> list[str]:
    cache = root / "data" / "cache"
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) if cache.exists() else []


@pytest.mark.slow
def test_two_prepare_data_runs_started_together_build_one_cache(tmp_path, fault_table):
    runs = [start("prepare_data.py", prepare_args(tmp_path), tmp_path / f"prepare{i}.log") for i in (0, 1)]
    codes = [r.wait(timeout=600) for r in runs]
    outputs = [r.output for r in runs]
    assert codes == [0, 0], "\n".join(o[-2000:] for o in outputs)
    entries = cache_entries(tmp_path)
    assert [e.split("-")[0] for e in entries] == ["spm", "toy"], entries  # one cache, one tokenizer, no temp dirs
    cache_dir = str(tmp_path / "data" / "cache" / next(e for e in entries if e.startswith("toy-")))
    assert all(cache_dir in o for o in outputs)
    built = [o for o in outputs if "Preparing data" in o]
    assert len(built) == 1, "both processes built the cache"
    waited = any("Waiting for another process" in o for o in outputs)
    fault_table.add("two prepare_data runs on one cache at once", True, 0,
                    f"one build; the other {'waited on the lock, then reused it' if waited else 'reused it'}")


@pytest.mark.slow
def test_kill9_during_preparation_leaves_no_cache_and_the_next_run_rebuilds(tmp_path, fault_table):
    cache = tmp_path / "data" / "cache"
    r = start("prepare_data.py", prepare_args(tmp_path), tmp_path / "killed.log")
    deadline = time.monotonic() + 300
    while not (cache.exists() and any(p.name.startswith(".tmp-") for p in cache.iterdir())):
        assert r.proc.poll() is None and time.monotonic() < deadline, r.output[-3000:]
        time.sleep(0.02)
    kill_group(r, signal.SIGKILL)
    r.proc.wait(timeout=60)
    cfg = compose_config(prepare_args(tmp_path)[:-1])
    assert load_prepared(cfg.data) is None  # nothing a later run would take for a cache
    assert not [e for e in cache_entries(tmp_path) if e.startswith("toy-")]

    again = start("prepare_data.py", prepare_args(tmp_path), tmp_path / "again.log")
    assert again.wait(timeout=600) == 0, again.output[-3000:]
    assert load_prepared(cfg.data) is not None
    assert not [e for e in cache_entries(tmp_path) if e.startswith(".tmp-")]  # the dead build's temp dir is gone
    fault_table.add("kill -9 during data preparation", True, 0, "no half-built cache; the next run rebuilt it")
