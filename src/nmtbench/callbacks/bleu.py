"""BleuCallback: detokenized sacreBLEU of the validation and test splits.

Validation: each batch is decoded (greedy by default) and scored against the original
reference lines (`datamodule.raw_text("valid")`) with torchmetrics' `SacreBLEUScore`,
whose n-gram statistics are summed across DDP ranks before BLEU is computed, so `val/bleu`
is the BLEU of the whole gathered corpus, not an average of per-rank BLEU. It is logged
on sacrebleu's 0-100 scale (torchmetrics returns 0-1).

Test: beam search (beam 4, length penalty 0.6 by default). Hypotheses are gathered on
rank zero in test order and scored with sacrebleu (score + signature), chrF and
paper-style tokenized BLEU; the result is kept in `test_scores` for other callbacks.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch.distributed as dist
from torchmetrics.text import SacreBLEUScore

log = logging.getLogger(__name__)


def _gather_objects(items: list[Any]) -> list[Any]:
    """All items from every rank (concatenated); the input list when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return items
    gathered: list[list[Any]] = [None] * dist.get_world_size()  # type: ignore[list-item]
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


class BleuCallback(L.Callback):
    def __init__(self, beam_size: int = 1, max_sentences: int | None = None, num_examples: int = 4,
                 test_beam_size: int = 4, length_penalty: float = 0.6, max_len_b: int = 50):
        super().__init__()
        self.beam_size = beam_size
        self.max_sentences = max_sentences
        self.num_examples = num_examples
        self.test_beam_size = test_beam_size
        self.length_penalty = length_penalty
        self.max_len_b = max_len_b
        self.best_bleu: float | None = None
        self.last_bleu: float | None = None
        self.test_scores: dict[str, Any] | None = None
        self._metric = SacreBLEUScore(tokenize="13a")
        self._outputs: list[tuple[int, str]] = []

    # -- shared --------------------------------------------------------------------------
    def _decode_batch(self, trainer, pl_module, batch, split: str, beam_size: int) -> None:
        ids = batch["ids"]
        if split == "valid" and self.max_sentences is not None:
            keep = ids < self.max_sentences
            if not bool(keep.any()):
                return
            batch = {k: v[keep] for k, v in batch.items()}
            ids = batch["ids"]
        hyps = pl_module.translate(batch, beam_size=beam_size, length_penalty=self.length_penalty,
                                   max_len_b=self.max_len_b)
        _, refs = trainer.datamodule.raw_text(split)
        batch_refs = [refs[i] for i in ids.tolist()]
        self._metric.update(hyps, [[r] for r in batch_refs])
        self._outputs.extend(zip(ids.tolist(), hyps))

    def _reset(self, pl_module) -> None:
        self._metric = self._metric.to(pl_module.device)
        self._metric.reset()
        self._outputs = []

    # -- validation ------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._reset(pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking:
            return
        self._decode_batch(trainer, pl_module, batch, "valid", self.beam_size)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        bleu = float(self._metric.compute()) * 100.0  # n-gram stats summed across ranks
        self.last_bleu = bleu
        self.best_bleu = bleu if self.best_bleu is None else max(self.best_bleu, bleu)
        pl_module.log("val/bleu", bleu, sync_dist=True)  # equal on every rank; the mean keeps it
        pl_module.log("val/best_bleu", self.best_bleu, sync_dist=True)  # equal on every rank; the mean keeps it
        if trainer.is_global_zero and self.num_examples > 0:
            self._log_examples(trainer, sorted(self._outputs)[: self.num_examples])

    def _log_examples(self, trainer, examples: list[tuple[int, str]]) -> None:
        srcs, refs = trainer.datamodule.raw_text("valid")
        rows = [f"**{i}** | {srcs[i]} | {refs[i]} | {hyp}" for i, hyp in examples]
        text = "id | source | reference | hypothesis\n---|---|---|---\n" + "\n".join(rows)
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                experiment.add_text("val/examples", text, global_step=trainer.global_step)

    # -- test --------------------------------------------------------------------------------
    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._reset(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._decode_batch(trainer, pl_module, batch, "test", self.test_beam_size)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        from nmtbench.scoring import corpus_scores

        bleu = float(self._metric.compute()) * 100.0
        outputs = sorted(_gather_objects(self._outputs))
        if trainer.is_global_zero:
            _, refs = trainer.datamodule.raw_text("test")
            hyps = [h for _, h in outputs]
            tgt_lang = getattr(trainer.datamodule, "tgt_lang", "de")
            self.test_scores = corpus_scores(hyps, [refs[i] for i, _ in outputs], lang=tgt_lang)
            self.test_scores.update(beam_size=self.test_beam_size, length_penalty=self.length_penalty,
                                    num_sentences=len(hyps))
            log.info("test sacreBLEU %.2f (%s); paper-style BLEU %.2f", self.test_scores["sacrebleu"],
                     self.test_scores["signature"], self.test_scores["paper_bleu"])
        pl_module.log("test/bleu", bleu, sync_dist=True)  # equal on every rank; the mean keeps it

    def state_dict(self) -> dict[str, Any]:
        return {"best_bleu": self.best_bleu}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_bleu = state_dict.get("best_bleu")


__all__ = ["BleuCallback"]
