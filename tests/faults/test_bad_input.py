"""Bad input is named, in one line, with the fix: never a traceback, never lost work.

Each case goes through `train(cfg)` (what `scripts/train.py` runs and prints as `error: ...`)
or the entry point's override check; one case runs the real CLI to pin the one-line output.
A results.json of another schema given to report.py is covered by the report's own tests.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from nmtbench.data.config import ToyConfig
from nmtbench.data.toy import write_toy
from nmtbench.errors import ConfigError, DataError, NmtbenchError
from nmtbench.overrides import exit_on_unknown_overrides
from nmtbench.train import train

from ..conftest import CONFIG_DIR, TINY_TRANSFORMER, compose_config
from .runner import run


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("text")
    return Path(write_toy(ToyConfig(num_train=200, num_valid=10, num_test=10), str(root),
                          {"train": "train", "valid": "valid", "test": "test"}))


def files_run(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    return ["experiment=smoke", "data=files", f"data.dir={data_dir}", "data.vocab_size=120",
            "data.max_tokens=600", "data.num_proc=1", "data.num_workers=0", *TINY_TRANSFORMER,
            "trainer.max_steps=2", "trainer.max_time=null", "test=false", "trainer.enable_progress_bar=false",
            "callbacks.progress_bar=null", "callbacks.throughput.cpu_benchmark_seconds=0",
            f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}", *extra]


def broken_copy(text_dir: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "broken"
    shutil.copytree(text_dir, copy)
    edit(copy)
    return copy


def drop_last_line(d: Path) -> None:
    lines = (d / "train.de").read_bytes().splitlines(keepends=True)
    (d / "train.de").write_bytes(b"".join(lines[:-1]))


def latin1_line(d: Path) -> None:
    lines = (d / "train.de").read_bytes().splitlines(keepends=True)
    lines[41] = "Der Männer sieht den Hund.\n".encode("latin-1")
    (d / "train.de").write_bytes(b"".join(lines))


CASES = {  # fault -> (how to break the input, extra overrides, error type, what the message must say, table note)
    "sides with different line counts": (drop_last_line, [], DataError, r"train\.en has 200 lines.*train\.de has 199",
                                         "names both files and their line counts"),
    "invalid UTF-8": (latin1_line, [], DataError, r"train\.de:42: invalid UTF-8", "names file:line, byte, iconv fix"),
    "empty training set after filtering": (None, ["data.max_len=1", "data.max_tokens=600"], DataError,
                                           r"No training pairs left.*200 read, 0 kept.*data\.max_len=1",
                                           "counts per drop reason, the filter keys to relax"),
    "missing data directory": (None, ["data.dir=/nonexistent/text"], DataError,
                               r"data\.dir=/nonexistent/text does not exist", "names data.dir"),
    "missing data file": (None, ["data.valid_prefix=dev"], DataError, r"dev\.en does not exist.*data\.valid_prefix=dev",
                          "names the path and the prefix keys"),
    "max_tokens below the longest allowed sequence": (None, ["data.max_tokens=100", "data.max_len=256"], ConfigError,
                                                      r"data\.max_tokens=100 is smaller.*data\.max_len=256.*>= 257",
                                                      "names both keys and the minimum"),
}


@pytest.mark.slow
@pytest.mark.parametrize("fault", list(CASES))
def test_bad_data_is_one_line_naming_file_line_or_key(fault, text_dir, tmp_path, fault_table):
    edit, extra, error, pattern, note = CASES[fault]
    data_dir = broken_copy(text_dir, tmp_path, edit) if edit else text_dir
    with pytest.raises(error, match=pattern) as err:
        train(compose_config(files_run(tmp_path, data_dir, *extra)))
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "data" / "cache").glob("files-*"))  # nothing half-built left behind
    fault_table.add(fault, True, 0, f"one line: {note}")


@pytest.mark.parametrize("config_name,override,suggestion", [
    ("train", "model.d_modle=64", "model.d_model"),
    ("train", "trainer.max_step=10", "trainer.max_steps"),
    ("evaluate", "data.cache_dri=x", "data.cache_dir"),
    ("translate", "beam_sise=2", "beam_size"),
])
def test_unknown_config_key_names_it_and_suggests_the_right_one(config_name, override, suggestion, capsys, fault_table):
    argv = [override] if config_name == "train" else ["ckpt_path=x.ckpt", override]
    with pytest.raises(SystemExit) as exit_:
        exit_on_unknown_overrides(CONFIG_DIR, config_name, argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    key = override.split("=")[0]
    assert err.count("\n") == 0 and f"'{key}'" in err and f"Did you mean '{suggestion}'" in err
    fault_table.add(f"misspelled key {key} ({config_name})", True, 0, f"suggests {suggestion}")


def test_valid_overrides_pass_the_key_check():
    exit_on_unknown_overrides(CONFIG_DIR, "train", ["experiment=smoke", "model.d_model=64", "+extra=1",
                                                     "hydra.run.dir=x"])
    exit_on_unknown_overrides(CONFIG_DIR, "evaluate", ["ckpt_path=x", "data.cache_dir=y", "data.dir=z"])


@pytest.mark.slow
def test_cli_prints_one_error_line_without_traceback(tmp_path):
    code, out = run("train.py", ["model.d_modle=64"], tmp_path / "typo.log")
    assert code == 1 and out.strip().splitlines() == [
        "error: Unknown config key 'model.d_modle'. Did you mean 'model.d_model'?"]
    code, out = run("prepare_data.py", ["data=files", f"data.dir={tmp_path / 'nowhere'}", f"paths.root_dir={tmp_path}",
                                        f"hydra.run.dir={tmp_path / 'runs'}"], tmp_path / "nodata.log")
    assert code == 1 and "Traceback" not in out
    assert [line for line in out.splitlines() if line.startswith("error: ")] == [
        f"error: data.dir={tmp_path / 'nowhere'} does not exist (or is not a directory). data=files reads "
        "{data.dir}/{prefix}.{lang}: point data.dir at the directory holding the text."]


def test_more_gpus_than_exist(monkeypatch, tmp_path, fault_table):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for devices in ("4", "[0,3]"):
        cfg = compose_config(["trainer=gpu", f"trainer.devices={devices}", f"paths.output_dir={tmp_path}"])
        with pytest.raises(ConfigError, match=r"trainer.devices=.* but this machine has 1 visible CUDA GPU"):
            train(cfg)
    fault_table.add("more GPUs requested than exist", True, 0, "names both counts, before any work")


def test_every_bad_input_error_is_an_nmtbench_error():
    assert all(issubclass(case[2], NmtbenchError) for case in CASES.values())
