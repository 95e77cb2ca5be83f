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
from nmtbench.data.toy import generate
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


def test_wmt14_splits_direction_and_cache_reuse_without_the_hub(tmp_path, monkeypatch):
    """A stand-in for the hub dataset: train/validation/test with {"translation": {de, en}}."""
    pairs = generate(ToyConfig(num_train=200, num_valid=10, num_test=12))

    def fake_load_dataset(name, config, revision=None, cache_dir=None):
        assert (name, config, cache_dir) == ("wmt/wmt14", "de-en", str(tmp_path / "hf"))
        return datasets.DatasetDict({
            hf: datasets.Dataset.from_dict({"translation": [{"en": en, "de": de} for en, de in pairs[split]]})
            for split, hf in sources.HF_SPLITS.items()
        })

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = {**wmt14_cfg(tmp_path), "src_lang": "de", "tgt_lang": "en"}  # de->en
    prepared = prepare(cfg)
    assert not prepared.reused and prepared.stats["test"]["kept"] == 12
    with open(os.path.join(prepared.dir, "test.src.txt"), encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == [de for _, de in pairs["test"]]  # German is the source

    def no_network(*args, **kwargs):
        raise AssertionError("the hub must not be contacted when the cache exists")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.setattr(prepare_module, "open_source", no_network)
    assert prepare(cfg).reused


def test_the_hub_probe_goes_through_the_https_proxy(monkeypatch):
    """Compute nodes often reach the internet only through a proxy: the probe must use it
    (the hub client's session honours HTTP(S)_PROXY), not open a raw socket to the hub."""
    import http.server
    import threading

    from huggingface_hub.utils import close_session

    seen: list[str] = []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # an HTTP proxy gets the absolute URL in the request line
            seen.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proxy = f"http://127.0.0.1:{server.server_address[1]}"
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            monkeypatch.setenv(var, proxy)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        monkeypatch.setattr(constants, "ENDPOINT", "http://hub.invalid")  # not resolvable without the proxy
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the probe runs only when online
        close_session()  # the next session reads the proxy settings
        assert sources.hub_reachable(timeout=3)
        assert seen and seen[0].startswith("http://hub.invalid")
    finally:
        server.shutdown()
        close_session()
