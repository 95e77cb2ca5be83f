"""Building the data cache (nmtbench.data.prepare): reuse, invalidation, atomicity, cleaning,
and the messages for bad input."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from nmtbench.data import prepare as prepare_module
from nmtbench.data import shards
from nmtbench.data.config import ToyConfig, load_data_config
from nmtbench.data.prepare import load_prepared, prepare
from nmtbench.data.toy import generate
from nmtbench.errors import ConfigError, DataError

PAIRS = generate(ToyConfig(seed=11, num_train=300, num_valid=30, num_test=30))


def write_split(directory, prefix, pairs, langs=("en", "de")):
    for lang, side in zip(langs, (0, 1)):
        with open(os.path.join(directory, f"{prefix}.{lang}"), "w", encoding="utf-8") as f:
            f.writelines(p[side] + "\n" for p in pairs)


@pytest.fixture
def files_dir(tmp_path):
    directory = tmp_path / "text"
    directory.mkdir()
    for split, pairs in PAIRS.items():
        write_split(directory, split, pairs)
    return directory


def files_cfg(tmp_path, files_dir, **overrides):
    cfg = {
        "source": "files", "dir": str(files_dir), "cache_dir": str(tmp_path / "cache"),
        "vocab_size": 120, "num_proc": 1,
    }
    cfg.update(overrides)
    return cfg


def test_prepare_builds_shards_and_raw_text(tmp_path, files_dir):
    prepared = prepare(files_cfg(tmp_path, files_dir))
    assert not prepared.reused
    assert prepared.stats["train"] == {"total": 300, "kept": 300, "empty": 0, "too_long": 0, "length_ratio": 0}
    assert prepared.dtype == np.dtype(np.uint16).str
    offsets = np.load(os.path.join(prepared.dir, "valid.tgt.idx.npy"))
    assert len(offsets) == 31 and offsets[0] == 0
    ids = np.fromfile(os.path.join(prepared.dir, "valid.tgt.bin"), dtype=np.uint16)
    assert len(ids) == offsets[-1] and ids.max() < 120
    with open(os.path.join(prepared.dir, "test.tgt.txt"), encoding="utf-8") as f:
        assert f.read().split("\n")[:-1] == [de for _, de in PAIRS["test"]]
    with open(os.path.join(prepared.dir, "stats.json")) as f:
        assert json.load(f)["valid"]["kept"] == 30


def test_second_prepare_reuses_and_a_changed_setting_rebuilds(tmp_path, files_dir):
    first = prepare(files_cfg(tmp_path, files_dir))
    meta = os.path.join(first.dir, "meta.json")
    mtime = os.stat(meta).st_mtime_ns
    start = time.perf_counter()
    again = prepare(files_cfg(tmp_path, files_dir))
    assert again.reused and again.dir == first.dir
    assert os.stat(meta).st_mtime_ns == mtime
    assert time.perf_counter() - start < 2.0

    other = prepare(files_cfg(tmp_path, files_dir, max_len=20))  # filters change: new shards
    assert not other.reused and other.dir != first.dir
    assert other.stats["train"]["too_long"] > 0
    # batching / loading settings do not change the cache
    assert prepare(files_cfg(tmp_path, files_dir, max_tokens=300, num_workers=0)).reused
    # neither does the working directory: paths are made absolute
    assert load_data_config(files_cfg(tmp_path, files_dir))  # sanity
    os.utime(files_dir / "train.de", ns=(1, 1))  # the data changes: new cache
    assert not prepare(files_cfg(tmp_path, files_dir)).reused


def test_relative_paths_resolve_against_the_cwd(tmp_path, files_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_data_config({"source": "files", "dir": "text", "cache_dir": "cache"})
    assert cfg.dir == str(files_dir) and cfg.cache_dir == str(tmp_path / "cache")


def test_crash_mid_build_leaves_no_cache(tmp_path, files_dir, monkeypatch):
    calls = []

    def crash(*args, **kwargs):
        calls.append(args[1])
        if args[1] == "valid":
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kwargs)

    real = shards.encode_split
    monkeypatch.setattr(prepare_module, "encode_split", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare(files_cfg(tmp_path, files_dir))
    assert calls == ["train", "valid"]  # it crashed after writing the train shards
    cache = tmp_path / "cache"
    assert not [n for n in os.listdir(cache) if n.startswith("files-")]
    assert not [n for n in os.listdir(cache) if n.startswith(".tmp")]
    assert load_prepared(files_cfg(tmp_path, files_dir)) is None
    monkeypatch.setattr(prepare_module, "encode_split", real)
    assert not prepare(files_cfg(tmp_path, files_dir)).reused  # builds fine afterwards


def test_filters_count_every_dropped_pair_and_never_touch_valid(tmp_path, files_dir):
    train = list(PAIRS["train"][:100])
    train[3] = ("", train[3][1])  # empty source
    train[7] = (train[7][0], "   ")  # blank target
    long_en = " ".join(["the small dog sees the old man"] * 80)
    train[9] = (long_en, train[9][1])  # too long, and an extreme ratio
    train[11] = (" ".join([train[11][0]] * 5), train[11][1])  # 5x longer source
    write_split(files_dir, "train", train)
    write_split(files_dir, "valid", [("", "")] + PAIRS["valid"][1:])
    prepared = prepare(files_cfg(tmp_path, files_dir, max_len=400, max_len_ratio=2.5))
    stats = prepared.stats
    assert stats["train"]["empty"] == 2 and stats["train"]["too_long"] == 1
    assert stats["train"]["length_ratio"] >= 1
    assert stats["train"]["kept"] == 100 - 2 - 1 - stats["train"]["length_ratio"]
    assert stats["valid"] == {"total": 30, "kept": 30, "empty": 0, "too_long": 0, "length_ratio": 0}
    with open(os.path.join(prepared.dir, "stats.json")) as f:
        assert json.load(f) == stats


def test_mismatched_line_counts_name_both_files_and_counts(tmp_path, files_dir):
    with open(files_dir / "train.de", encoding="utf-8") as f:
        lines = f.readlines()
    with open(files_dir / "train.de", "w", encoding="utf-8") as f:
        f.writelines(lines[:-1])
    with pytest.raises(DataError) as err:
        prepare(files_cfg(tmp_path, files_dir))
    msg = str(err.value)
    assert str(files_dir / "train.en") in msg and str(files_dir / "train.de") in msg
    assert "300" in msg and "299" in msg


def test_invalid_utf8_names_file_and_line(tmp_path, files_dir):
    with open(files_dir / "train.de", "rb") as f:
        lines = f.readlines()
    lines[41] = b"Der M\xe4nner sieht den Hund.\n"  # latin-1, not UTF-8
    with open(files_dir / "train.de", "wb") as f:
        f.writelines(lines)
    with pytest.raises(DataError, match=rf"{files_dir / 'train.de'}:42: invalid UTF-8"):
        prepare(files_cfg(tmp_path, files_dir))


def test_missing_file_names_the_path_and_prefixes(tmp_path, files_dir):
    with pytest.raises(DataError) as err:
        prepare(files_cfg(tmp_path, files_dir, valid_prefix="dev"))
    msg = str(err.value)
    assert str(files_dir / "dev.en") in msg
    assert "data.valid_prefix=dev" in msg and "data.train_prefix=train" in msg


def test_empty_training_set_after_filtering_gives_the_counts(tmp_path, files_dir):
    with pytest.raises(DataError, match=r"No training pairs left.*300 read, 0 kept.*too_long 300"):
        prepare(files_cfg(tmp_path, files_dir, max_len=1))
    assert not [n for n in os.listdir(tmp_path / "cache") if n.startswith("files-")]


def test_config_rejects_unknown_and_bad_keys(tmp_path, files_dir):
    with pytest.raises(ConfigError, match="data.vocab_sise.*vocab_size"):
        load_data_config({"source": "files", "dir": "x", "vocab_sise": 8000})
    with pytest.raises(ConfigError, match="data.source"):
        load_data_config({"source": "wmt16"})
    with pytest.raises(ConfigError, match="data.dir is required"):
        load_data_config({"source": "files"})
    with pytest.raises(ConfigError, match="data.toy.num_verb"):
        load_data_config({"source": "toy", "dir": "x", "toy": {"num_verb": 3}})
    with pytest.raises(ConfigError, match="vocab_size=5000 is too large"):
        prepare(files_cfg(tmp_path, files_dir, vocab_size=5000))


def test_parallel_encoding_matches_serial(tmp_path, files_dir):
    serial = prepare(files_cfg(tmp_path, files_dir))
    parallel = prepare(files_cfg(tmp_path / "p", files_dir, num_proc=2))
    for name in ("train.src.bin", "train.tgt.bin", "test.src.bin"):
        a = np.fromfile(os.path.join(serial.dir, name), dtype=np.uint16)
        b = np.fromfile(os.path.join(parallel.dir, name), dtype=np.uint16)
        assert np.array_equal(a, b)
