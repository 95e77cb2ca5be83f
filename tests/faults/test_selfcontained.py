"""A checkpoint is enough: translate with nothing else, evaluate without building anything."""

from __future__ import annotations

import os

import pytest
import torch

from nmtbench.errors import DataError
from nmtbench.evaluate import evaluate

from ..conftest import compose_config
from .runner import run


@pytest.mark.slow
def test_translate_cli_needs_only_the_checkpoint(trained_run, tmp_path, fault_table):
    empty = tmp_path / "empty_cache"
    empty.mkdir()
    data, hidden = trained_run.parent / "data", trained_run.parent / "hidden"
    data.rename(hidden)  # no text, no tokenizer file, no cache: only the checkpoint
    try:
        code, out = run("translate.py", [f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}",
                                         f"data.cache_dir={empty}", "beam_size=2", "max_len_b=4", "device=cpu"],
                        tmp_path / "translate.log", stdin="a small test .\nthe dog sees the cat .\n")
    finally:
        hidden.rename(data)
    assert code == 0, out[-3000:]
    assert len([line for line in out.splitlines() if line.strip()]) >= 2 and "error" not in out
    assert list(empty.iterdir()) == []
    fault_table.add("translate with an empty cache dir and no data", True, 0, "tokenizer read from the checkpoint")


@pytest.mark.slow
def test_evaluate_reads_only_its_split_and_builds_nothing(trained_run, tmp_path, fault_table):
    empty, text = tmp_path / "empty_cache", tmp_path / "text"
    empty.mkdir()
    cfg = compose_config([f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", f"paths.root_dir={tmp_path}",
                          f"paths.output_dir={tmp_path / 'eval'}", f"data.cache_dir={empty}", f"data.dir={text}",
                          "beam_size=2", "max_len_b=4", "device=cpu"], config_name="evaluate")
    scores = evaluate(cfg)
    refs = (tmp_path / "eval" / "references.txt").read_text(encoding="utf-8").splitlines()
    assert len(refs) == 8 and scores["global_step"] == 6
    assert list(empty.iterdir()) == []  # no cache, no tokenizer trained
    assert not [p for p in tmp_path.rglob("spm.model")]
    assert sorted(p.suffix for p in text.glob("toy-*/test.*")) == [".de", ".en"]  # the toy text, regenerated
    fault_table.add("evaluate with an empty cache dir", True, 0, "reads the test split only; no cache or tokenizer built")


def test_evaluate_never_downloads_unless_asked(trained_run, tmp_path):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    data = ckpt["hyper_parameters"]["cfg"]["data"]
    data.update(source="wmt14", dir=None, hf_cache_dir=str(tmp_path / "hf"), hf_config="de-en")
    torch.save(ckpt, tmp_path / "wmt14.ckpt")
    cfg = compose_config([f"ckpt_path={tmp_path / 'wmt14.ckpt'}", f"paths.output_dir={tmp_path / 'eval'}",
                          "device=cpu"], config_name="evaluate")
    assert os.environ.get("HF_HUB_OFFLINE")  # the test never goes online either way
    with pytest.raises(DataError, match=r"download=true"):
        evaluate(cfg)
