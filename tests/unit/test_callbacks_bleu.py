"""BleuCallback's val/bleu and test scores equal sacrebleu's corpus BLEU on the same text."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sacrebleu
import torch

from nmtbench.callbacks.bleu import BleuCallback

REFS = [
    "der kleine Hund läuft schnell über die Straße",
    "ich habe heute keine Zeit für dich",
    "das Haus am See ist sehr alt",
    "wir gehen morgen früh in den Park",
    "sie liest ein Buch über die Geschichte Europas",
]
HYPS = [
    "der kleine Hund läuft über die Straße",
    "ich habe heute keine Zeit",
    "das Haus am See ist alt",
    "wir gehen morgen in den großen Park",
    "sie liest ein Buch über Geschichte",
]


class FakeModule:
    """Translates row i of a batch to HYPS[ids[i]] and records what is logged."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def translate(self, batch, beam_size=1, length_penalty=0.6, max_len_b=50):
        return [HYPS[i] for i in batch["ids"].tolist()]

    def log(self, name, value, **kwargs):
        self.logged[name] = float(value)


def fake_trainer():
    datamodule = SimpleNamespace(raw_text=lambda split: (["src"] * len(REFS), REFS), tgt_lang="de")
    return SimpleNamespace(sanity_checking=False, datamodule=datamodule, is_global_zero=True, loggers=[],
                           global_step=10)


def batches():
    # Two batches in a shuffled order: ids restore the reference alignment.
    for ids in ([3, 0, 4], [1, 2]):
        ids_t = torch.tensor(ids)
        yield {"ids": ids_t, "src": torch.ones(len(ids), 4, dtype=torch.long), "src_lens": torch.full((len(ids),), 4)}


def test_val_bleu_equals_sacrebleu():
    cb, trainer, module = BleuCallback(num_examples=0), fake_trainer(), FakeModule()
    cb.on_validation_epoch_start(trainer, module)
    for i, batch in enumerate(batches()):
        cb.on_validation_batch_end(trainer, module, None, batch, i)
    cb.on_validation_epoch_end(trainer, module)
    expected = sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert 0 < expected < 100
    assert module.logged["val/bleu"] == pytest.approx(expected, abs=1e-4)
    assert cb.best_bleu == cb.last_bleu == pytest.approx(expected, abs=1e-4)


def test_test_scores_equal_sacrebleu():
    cb, trainer, module = BleuCallback(num_examples=0), fake_trainer(), FakeModule()
    cb.on_test_epoch_start(trainer, module)
    for i, batch in enumerate(batches()):
        cb.on_test_batch_end(trainer, module, None, batch, i)
    cb.on_test_epoch_end(trainer, module)
    expected = sacrebleu.corpus_bleu(HYPS, [REFS])
    assert cb.test_scores["sacrebleu"] == pytest.approx(expected.score, abs=1e-6)
    assert module.logged["test/bleu"] == pytest.approx(expected.score, abs=1e-4)
    assert cb.test_scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score, abs=1e-6)
    assert cb.test_scores["num_sentences"] == len(REFS)
    assert "nrefs:1" in cb.test_scores["signature"]
