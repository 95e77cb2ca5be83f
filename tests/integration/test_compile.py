"""A run with compile=true: the model is compiled in place and its checkpoint evaluates."""

from __future__ import annotations

import shutil

import pytest
import torch

from nmtbench.evaluate import evaluate, load_module
from nmtbench.train import train

from ..conftest import TINY_TRANSFORMER, compose_config


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                    reason="torch.compile's CPU backend (inductor) needs a C++ compiler")
def test_compiled_run_checkpoint_has_plain_keys_and_evaluates(tiny_cfg, tmp_path):
    torch._dynamo.reset()
    cfg = tiny_cfg([*TINY_TRANSFORMER, "compile=true", "test=false", "trainer.max_steps=2",
                    "trainer.val_check_interval=2", "data.max_valid_sentences=8"])
    train(cfg)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all(k.startswith("model.") and "_orig_mod" not in k for k in state)
    module = load_module(str(ckpt))
    assert not any("_orig_mod" in k for k in module.state_dict())
    out = tmp_path / "eval"
    scores = evaluate(compose_config(
        [f"ckpt_path={ckpt}", f"paths.root_dir={tmp_path}", f"paths.output_dir={out}", "beam_size=2",
         "max_len_b=5", "max_sentences=8", "device=cpu"], config_name="evaluate"))
    assert scores["global_step"] == 2
    assert len((out / "hypotheses.txt").read_text(encoding="utf-8").splitlines()) == 8
