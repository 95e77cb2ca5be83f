"""Metrics in nmtbench.scoring."""

from __future__ import annotations

import pytest
import sacrebleu

from nmtbench.scoring import (
    chrf_score,
    compound_split,
    corpus_scores,
    paper_bleu,
    paper_tokenize,
    sacrebleu_score,
)

REFS = [
    "Das ist ein Test-Fall für die Übersetzung.",
    'Er sagte: "Wir kommen morgen um 3 Uhr."',
    "Die E-Mail-Adresse ist nicht erreichbar, oder?",
]
HYPS = [
    "Das ist ein Testfall für die Übersetzung.",
    'Er sagte: "Wir kommen morgen."',
    "Die E-Mail ist erreichbar?",
]


def test_sacrebleu_equals_corpus_bleu():
    out = sacrebleu_score(HYPS, REFS)
    assert out["score"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert "tok:13a" in out["signature"] and "case:mixed" in out["signature"]
    assert 0 < out["score"] < 100


def test_chrf_equals_corpus_chrf():
    assert chrf_score(HYPS, REFS)["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)


def test_paper_bleu_of_references_is_100_and_differs_from_sacrebleu():
    assert paper_bleu(REFS, REFS, "de")["score"] == pytest.approx(100.0)
    ours = paper_bleu(HYPS, REFS, "de")
    assert 0 < ours["score"] < 100
    assert ours["score"] != pytest.approx(sacrebleu_score(HYPS, REFS)["score"])
    assert "tok:none" in ours["signature"]


def test_compound_splitting():
    assert compound_split("a-b") == "a ##AT##-##AT## b"
    assert paper_tokenize("Ein Test-Fall.", "de") == "Ein Test ##AT##-##AT## Fall ."
    # t2t's perl substitution does not overlap matches (reproduced on purpose)
    assert compound_split("a-b-c") == "a ##AT##-##AT## b-c"
    assert compound_split("- a -") == "- a -"


def test_misaligned_inputs_are_rejected():
    with pytest.raises(ValueError, match="aligned"):
        sacrebleu_score(HYPS, REFS[:2])


def test_corpus_scores_bundles_all_metrics():
    out = corpus_scores(HYPS, REFS, lang="de")
    assert out["sacrebleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert out["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert out["paper_bleu"] == pytest.approx(paper_bleu(HYPS, REFS, "de")["score"])
    assert out["num_sentences"] == 3 and "13a" in out["signature"]
