"""End-to-end evaluation: train a few steps, average the checkpoints, evaluate, translate."""

from __future__ import annotations

import json

import pytest
import sacrebleu

from nmtbench.checkpoints import last_checkpoints, save_averaged
from nmtbench.evaluate import evaluate, load_datamodule, load_module, translate_lines
from nmtbench.scoring import paper_bleu
from nmtbench.train import train

from ..conftest import TINY_TRANSFORMER, compose_config

TINY_RUN = [
    *TINY_TRANSFORMER,
    "test=false",
]


@pytest.mark.slow
def test_evaluate_scores_equal_sacrebleu_on_its_files(tiny_cfg, tmp_path):
    train(tiny_cfg(TINY_RUN))
    run = tmp_path / "run"
    averaged = save_averaged(last_checkpoints(run, n=2), run / "checkpoints" / "averaged.ckpt")

    out = tmp_path / "eval"
    cfg = compose_config(
        [f"ckpt_path={averaged}", f"paths.root_dir={tmp_path}", f"paths.output_dir={out}",
         "beam_size=2", "max_len_b=5", "max_sentences=12", "device=cpu"],
        config_name="evaluate",
    )
    scores = evaluate(cfg)

    hyps = (out / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    refs = (out / "references.txt").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == len(refs) == 12
    assert scores["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["paper_bleu"] == pytest.approx(paper_bleu(hyps, refs, "de")["score"])
    saved = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert saved["sacrebleu"] == pytest.approx(scores["sacrebleu"])
    assert saved["beam_size"] == 2 and saved["global_step"] == 12 and len(saved["averaged_from"]) == 2
    assert "tok:13a" in saved["signature"]

    # references are the original test lines, in test order
    module = load_module(averaged)
    datamodule = load_datamodule(module)
    sources, test_refs = datamodule.raw_text("test")
    assert refs == test_refs[:12]
    # translate_lines (scripts/translate.py) gives the same output as the test decoding
    again = translate_lines(module, sources[:12], beam_size=2, max_len_b=5, max_tokens=64)
    assert again == hyps
