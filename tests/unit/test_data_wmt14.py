"""data=wmt14 without network: a quick, actionable DataError (never ~25 s of retries)."""

from __future__ import annotations

import os
import time

import datasets
import pytest
from huggingface_hub import constants

from nmtbench.data import prepare as prepare_module
from nmtbench.data import sources
from nmtbench.data.config import ToyConfig
from nmtbench.data.prepare import prepare
from nmtbench.data.toy import write_toy
from nmtbench.errors import DataError

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def wmt14_cfg(tmp_path):
    return {"source": "wmt14", "cache_dir": str(tmp_path / "cache"), "hf_cache_dir": str(tmp_path / "hf"),
            "vocab_size": 100, "num_proc": 1}


def test_offline_mode_fails_fast_and_names_the_offline_sources(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        prepare(wmt14_cfg(tmp_path))
    assert time.perf_counter() - start < 10
    msg = str(err.value)
    assert "unreachable" in msg and "data=files" in msg and "data=toy" in msg
    assert "HF_HUB_OFFLINE" in msg


def test_unreachable_hub_without_offline_mode_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert not sources.hub_reachable(timeout=1)
    start = time.perf_counter()
    with pytest.raises(DataError, match="no connection to http://127.0.0.1:9.*data=files"):
        prepare(wmt14_cfg(tmp_path))
    assert time.perf_counter() - start < 10
    assert datasets.config.HF_HUB_OFFLINE is False  # the temporary offline switch is undone


def test_a_prepared_wmt14_cache_is_reused_without_the_hub(tmp_path, monkeypatch):
    text = write_toy(ToyConfig(num_train=200, num_valid=10, num_test=10), str(tmp_path / "toy"),
                     {"train": "train", "valid": "valid", "test": "test"})
    corpora = {s: sources.open_text_pair(f"{text}/{s}.en", f"{text}/{s}.de") for s in sources.SPLITS}
    monkeypatch.setattr(prepare_module, "open_source", lambda cfg: corpora)
    assert not prepare(wmt14_cfg(tmp_path)).reused

    def no_network(cfg):
        raise AssertionError("the hub must not be contacted when the cache exists")

    monkeypatch.setattr(prepare_module, "open_source", no_network)
    assert prepare(wmt14_cfg(tmp_path)).reused
