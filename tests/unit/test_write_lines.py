"""nmtbench.atomic.write_lines: the one-sentence-per-line files the sacrebleu CLI rescores."""

from __future__ import annotations

import logging

import pytest
import sacrebleu

from nmtbench.atomic import write_lines

HYPS = ["Die Katze saß gestern auf der Matte vor dem Haus .",
        "Übermorgen fährt der Zug um acht Uhr nach München ab .",
        "Er hat das Buch über die Geschichte Europas gelesen ."]


def test_utf8_one_line_per_item(tmp_path):
    path = tmp_path / "sub" / "hyps.txt"  # the folder is made
    write_lines(path, HYPS)
    assert path.read_bytes() == ("\n".join(HYPS) + "\n").encode("utf-8")
    assert path.read_text(encoding="utf-8").splitlines() == HYPS
    assert [p.name for p in path.parent.iterdir()] == ["hyps.txt"]  # no temporary file left


def test_line_break_in_an_item_keeps_lines_aligned_and_the_score(tmp_path, caplog):
    refs = list(HYPS)
    hyps = [HYPS[0], HYPS[1].replace(" um ", "\num\r\n"), HYPS[2]]  # a hypothesis with line breaks
    with caplog.at_level(logging.WARNING):
        write_lines(tmp_path / "hyps.txt", hyps)
    assert "1 item(s) contain a line break (first: item 1)" in caplog.text
    written = (tmp_path / "hyps.txt").read_text(encoding="utf-8").splitlines()
    assert len(written) == 3 and written[2] == HYPS[2]  # the sentence after it stays on its line
    # the file scores as the in-memory strings did (13a splits on any whitespace)
    assert sacrebleu.corpus_bleu(written, [refs]).score == sacrebleu.corpus_bleu(hyps, [refs]).score
    assert sacrebleu.corpus_bleu(written, [refs]).score == pytest.approx(100.0)


def test_empty_list_writes_an_empty_file(tmp_path):
    write_lines(tmp_path / "empty.txt", [])
    assert (tmp_path / "empty.txt").read_bytes() == b""
