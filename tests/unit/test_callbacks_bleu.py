"""BleuCallback's val/bleu and test scores equal sacrebleu's corpus BLEU on the same text,
val/paper_bleu equals nmtbench.scoring's paper BLEU, and each test records its weights."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import sacrebleu
import torch

from nmtbench.callbacks.bleu import BleuCallback, summarize_tests, which_weights
from nmtbench.checkpoints import save_averaged
from nmtbench.scoring import (
    paper_bleu,
    paper_bleu_from_statistics,
    paper_bleu_statistics,
    paper_tokenize,
)

REFS = [
    "der kleine Hund läuft schnell über die Straße, sagte der Test-Fall-Autor.",
    "ich habe heute keine Zeit für dich",
    "das Haus am See ist sehr alt",
    "wir gehen morgen früh in den Park",
    "sie liest ein Buch über die Geschichte Europas",
]
HYPS = [
    "der kleine Hund läuft über die Straße, sagte der Test-Autor.",
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
    from lightning.pytorch.plugins.precision import Precision
    from lightning.pytorch.strategies import SingleDeviceStrategy

    return SimpleNamespace(sanity_checking=False, datamodule=datamodule, is_global_zero=True, loggers=[],
                           global_step=10, world_size=1, ckpt_path=None, checkpoint_callbacks=[],
                           strategy=SingleDeviceStrategy("cpu"), precision_plugin=Precision())


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
    # the papers' tokenized, compound-split BLEU of the same hypotheses, as scoring.py computes it
    paper = paper_bleu(HYPS, REFS, lang="de")["score"]
    assert paper != pytest.approx(expected, abs=0.5)  # a different scale
    assert module.logged["val/paper_bleu"] == pytest.approx(paper, abs=1e-9)
    # every sentence scored, and the output/reference length ratio of the tokenized text
    assert module.logged["val/bleu_sentences"] == len(REFS)
    tok = sacrebleu.corpus_bleu(HYPS, [REFS], tokenize="13a")
    assert module.logged["val/len_ratio"] == pytest.approx(tok.sys_len / tok.ref_len, rel=0.05)
    assert module.logged["val/len_ratio"] < 1.0  # the hypotheses are shorter
    fields, _ = cb.summary()
    assert fields["best_val_paper_bleu"] == pytest.approx(paper, abs=1e-9)
    assert fields["best_val_bleu_step"] == 10 and fields["test_evaluations"] == []


def test_paper_bleu_statistics_add_up_over_ranks():
    """What DDP ranks do: each scores its share, the statistics are summed."""
    tok_h, tok_r = [paper_tokenize(h, "de") for h in HYPS], [paper_tokenize(r, "de") for r in REFS]
    parts = [paper_bleu_statistics(tok_h[:2], tok_r[:2]), paper_bleu_statistics(tok_h[2:], tok_r[2:]),
             paper_bleu_statistics([], [])]  # a rank without sentences
    summed = [sum(column) for column in zip(*parts)]
    assert paper_bleu_from_statistics(summed) == pytest.approx(paper_bleu(HYPS, REFS)["score"], abs=1e-9)


def test_test_scores_equal_sacrebleu():
    cb, trainer, module = BleuCallback(num_examples=0), fake_trainer(), FakeModule()
    cb.on_test_start(trainer, module)
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
    assert cb.test_scores["paper_bleu"] == pytest.approx(paper_bleu(HYPS, REFS)["score"], abs=1e-9)
    assert (cb.test_scores["weights"], cb.test_scores["global_step"]) == ("current", 10)


def test_test_writes_translations_in_test_order(tmp_path):
    """The files beside results.json hold every test sentence once, in test-set order (the batches
    arrive shuffled), so the sacrebleu CLI on them gives the score the run recorded."""
    cb, trainer, module = BleuCallback(num_examples=0, output_dir=str(tmp_path)), fake_trainer(), FakeModule()
    cb.on_test_start(trainer, module)
    cb.on_test_epoch_start(trainer, module)
    for i, batch in enumerate(batches()):
        cb.on_test_batch_end(trainer, module, None, batch, i)
    cb.on_test_epoch_end(trainer, module)
    hyps = (tmp_path / "test_hypotheses.current.txt").read_text(encoding="utf-8").splitlines()
    refs = (tmp_path / "test_references.txt").read_text(encoding="utf-8").splitlines()
    assert (hyps, refs) == (HYPS, REFS)
    assert sacrebleu.corpus_bleu(hyps, [refs]).score == pytest.approx(cb.test_scores["sacrebleu"], abs=1e-9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_hypotheses.current.txt", "test_references.txt"]


def test_tested_weights(tmp_path):
    import torch as T

    best, last, other = tmp_path / "best.ckpt", tmp_path / "last.ckpt", tmp_path / "step9.ckpt"
    for step, path in ((5, best), (9, last), (9, other)):
        T.save({"global_step": step, "state_dict": {"w": T.ones(2) * step}}, path)
    averaged = save_averaged([best, other], tmp_path / "averaged.ckpt")
    ckpt_cb = SimpleNamespace(best_model_path=str(best), last_model_path=str(last))
    trainer = SimpleNamespace(ckpt_path=None, global_step=12, checkpoint_callbacks=[ckpt_cb])
    assert which_weights(trainer) == {"weights": "current", "ckpt_path": None, "averaged_from": None,
                                       "global_step": 12}
    trainer.ckpt_path = str(best)
    assert which_weights(trainer) == {"weights": "best", "ckpt_path": str(best), "averaged_from": None,
                                       "global_step": 5}
    trainer.ckpt_path = str(last)
    assert which_weights(trainer)["weights"] == "last"
    trainer.ckpt_path = str(other)
    assert which_weights(trainer)["weights"] == "checkpoint"
    trainer.ckpt_path = str(averaged)
    assert which_weights(trainer) == {"weights": "averaged", "ckpt_path": str(averaged),
                                       "averaged_from": [str(best), str(other)], "global_step": 9}


def test_averaged_evaluation_fills_the_top_level_fields():
    def evaluation(weights, score):
        return {"weights": weights, "ckpt_path": f"/{weights}.ckpt", "averaged_from": None, "sacrebleu": score}

    fields, reasons = summarize_tests([evaluation("best", 20.0), evaluation("averaged", 21.0),
                                       evaluation("last", 19.0)], "no test")
    assert fields["test_weights"] == "averaged" and fields["test_sacrebleu"] == 21.0
    assert len(fields["test_evaluations"]) == 3
    assert "not an average" in reasons["test_averaged_from"]
    fields, _ = summarize_tests([evaluation("best", 20.0), evaluation("last", 19.0)], "no test")
    assert fields["test_weights"] == "last" and fields["test_sacrebleu"] == 19.0  # the last one run
    fields, reasons = summarize_tests([], "no test")
    assert fields["test_sacrebleu"] is None and reasons["test_weights"] == "no test"
