"""BleuCallback: BLEU of the validation and test splits, and which weights each test used.

Validation: each batch is decoded (greedy by default) and scored against the original
reference lines (`datamodule.raw_text("valid")`) two ways, both on the whole corpus of all
ranks (every rank logs the same value):
- `val/bleu`: detokenized sacreBLEU through torchmetrics' `SacreBLEUScore`, whose n-gram
  statistics are summed across DDP ranks (0-100; torchmetrics returns 0-1);
- `val/paper_bleu`: the papers' tokenized, compound-split BLEU (`nmtbench.scoring`) of the
  same hypotheses; each rank tokenizes its own and the BLEU statistics are summed.

Decoding runs in the trainer's precision context (autocast under `bf16-mixed`), as the
validation loss does, and under FSDP with the parameters gathered (`full_weights`). Test: beam search (beam 4, length penalty 0.6 by default). Hypotheses are gathered on
rank zero in test order and scored with sacrebleu (score + signature), chrF and
paper-style tokenized BLEU. Each `trainer.test()` adds one record to `test_evaluations`
with the weights it used: `trainer.ckpt_path` at test start (none = the current weights),
and whether that file is the best or last checkpoint of ModelCheckpoint or an average
(`averaged_from` in the file, written by `nmtbench.checkpoints.save_averaged`).
Each test also writes its translations beside results.json (`output_dir`), so the score can be
checked with the sacrebleu CLI without decoding again:
`test_hypotheses.<weights>.txt` (detokenized, one line per test sentence, in test-set order)
and `test_references.txt`; e.g. `sacrebleu test_references.txt -i test_hypotheses.best.txt`.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics.text import SacreBLEUScore

from nmtbench.callbacks.common import (
    Fields,
    MeasurementCallback,
    Summary,
    gather_objects,
    reduce_sum,
)
from nmtbench.scoring import paper_bleu_from_statistics, paper_bleu_statistics, paper_tokenize

log = logging.getLogger(__name__)

# results.json top-level key -> key of a test_evaluations record
TEST_FIELDS = {
    "test_sacrebleu": "sacrebleu",
    "test_sacrebleu_signature": "signature",
    "test_paper_bleu": "paper_bleu",
    "test_paper_bleu_signature": "paper_bleu_signature",
    "test_chrf": "chrf",
    "test_chrf_signature": "chrf_signature",
    "test_beam_size": "beam_size",
    "test_length_penalty": "length_penalty",
    "test_num_sentences": "num_sentences",
    "test_weights": "weights",
    "test_ckpt_path": "ckpt_path",
    "test_averaged_from": "averaged_from",
}


def _percent(score: float) -> float:
    """A 0-100 score clipped to its range: float noise puts a perfect BLEU at 100.00000000000004."""
    return min(max(float(score), 0.0), 100.0)


def _checkpoint_meta(path: str) -> dict[str, Any]:
    """`global_step` and `averaged_from` of a checkpoint file (memory-mapped: tensors are not read)."""
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
        except RuntimeError:  # not the zip format: mmap is unsupported
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a remote path, a vanished file: record what is known
        log.warning("Could not read %s to record which weights were tested: %s", path, err)
        return {}
    return {"global_step": ckpt.get("global_step"), "averaged_from": ckpt.get("averaged_from")}


def which_weights(trainer: L.Trainer) -> dict[str, Any]:
    """{weights, ckpt_path, averaged_from, global_step} of the weights this test uses.

    weights: "averaged" (the file has `averaged_from`), "best" / "last" (ModelCheckpoint's best
    or last file), "checkpoint" (another file) or "current" (no checkpoint: in-memory weights).
    """
    path = trainer.ckpt_path
    if not path:
        return {"weights": "current", "ckpt_path": None, "averaged_from": None,
                "global_step": int(trainer.global_step)}
    path = str(path)
    meta = _checkpoint_meta(path)

    def same(other: Any) -> bool:
        return bool(other) and Path(str(other)).resolve() == Path(path).resolve()

    callbacks = trainer.checkpoint_callbacks
    if meta.get("averaged_from"):
        weights = "averaged"
    elif any(same(getattr(cb, "best_model_path", None)) for cb in callbacks):
        weights = "best"
    elif any(same(getattr(cb, "last_model_path", None)) for cb in callbacks) or Path(path).name.startswith("last"):
        weights = "last"
    else:
        weights = "checkpoint"
    averaged_from = meta.get("averaged_from")
    step = meta.get("global_step")
    return {"weights": weights, "ckpt_path": path,
            "averaged_from": [str(p) for p in averaged_from] if averaged_from else None,
            "global_step": int(step) if step is not None else None}


def full_weights(trainer: L.Trainer):
    """The model's full parameters for decoding. FSDP shards them and gathers a layer only
    inside its own forward; decoding calls `encode`/`decode` directly, so under FSDPStrategy
    every parameter is all-gathered for the duration (`summon_full_params`, read-only), on
    every rank together. Elsewhere the parameters are whole already."""
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.summon_full_params(trainer.strategy.model, writeback=False, recurse=True)
    return contextlib.nullcontext()


def summarize_tests(evaluations: list[dict[str, Any]], reason: str) -> Summary:
    """`test_evaluations` and the top-level test_* fields: those of the "averaged" evaluation
    when there is one, else of the last one run."""
    r = Fields()
    chosen = next((e for e in reversed(evaluations) if e["weights"] == "averaged"),
                  evaluations[-1] if evaluations else None)
    for key, source in TEST_FIELDS.items():
        if chosen is None:
            r.put(key, None, reason)
        elif source == "ckpt_path":
            r.put(key, chosen[source], "the current (in-memory) weights were tested, not a checkpoint file")
        elif source == "averaged_from":
            r.put(key, chosen[source], f"the tested weights are not an average (test_weights={chosen['weights']})")
        else:
            r.put(key, chosen.get(source), "not recorded by the test")
    r.put("test_evaluations", [dict(e) for e in evaluations])
    return r.summary()


class BleuCallback(MeasurementCallback):
    CONFIG_NAME = "bleu"
    SUMMARY_DEFAULTS = {"best_val_bleu": None, "best_val_bleu_step": None, "last_val_bleu": None,
                        "best_val_paper_bleu": None, **dict.fromkeys(TEST_FIELDS), "test_evaluations": []}

    def __init__(self, beam_size: int = 1, max_sentences: int | None = None, num_examples: int = 4,
                 test_beam_size: int = 4, length_penalty: float = 0.6, max_len_b: int = 50,
                 output_dir: str | None = None):
        super().__init__()
        self.output_dir = output_dir  # test translations go here; None = trainer.default_root_dir
        self.beam_size = beam_size
        self.max_sentences = max_sentences
        self.num_examples = num_examples
        self.test_beam_size = test_beam_size
        self.length_penalty = length_penalty
        self.max_len_b = max_len_b
        self.best_bleu: float | None = None
        self.best_bleu_step: int | None = None
        self.last_bleu: float | None = None
        self.best_paper_bleu: float | None = None
        self.evaluations: list[dict[str, Any]] = []  # one per trainer.test() (rank zero)
        self._testing: dict[str, Any] = {}  # which_weights() of the running test
        self._metric = SacreBLEUScore(tokenize="13a")
        self._outputs: list[tuple[int, str]] = []
        self._tok_refs: dict[tuple[str, int], str] = {}  # (split, id) -> paper-tokenized reference

    # -- shared --------------------------------------------------------------------------
    def _decode_batch(self, trainer, pl_module, batch, split: str, beam_size: int) -> None:
        # Every rank enters `full_weights` for every batch (a collective under FSDP), also when
        # none of its sentences is decoded.
        with full_weights(trainer):
            ids = batch["ids"]
            if split == "valid" and self.max_sentences is not None:
                keep = ids < self.max_sentences
                if not bool(keep.any()):
                    return
                batch = {k: v[keep] for k, v in batch.items()}
                ids = batch["ids"]
            # In the trainer's precision (bf16-mixed: autocast), as the validation loss and training.
            with trainer.precision_plugin.forward_context():
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

    @staticmethod
    def _lang(trainer) -> str:
        return getattr(trainer.datamodule, "tgt_lang", "de")

    def _paper_bleu(self, trainer) -> tuple[float, float, int]:
        """(paper BLEU, hypothesis/reference length ratio, sentences) of every rank's validation
        hypotheses (a collective: all ranks call it)."""
        lang = self._lang(trainer)
        _, refs = trainer.datamodule.raw_text("valid")
        tok_refs = []
        for i, _ in self._outputs:
            if ("valid", i) not in self._tok_refs:
                self._tok_refs["valid", i] = paper_tokenize(refs[i], lang)
            tok_refs.append(self._tok_refs["valid", i])
        stats = paper_bleu_statistics([paper_tokenize(h, lang) for _, h in self._outputs], tok_refs)
        total = reduce_sum(trainer, [*stats, float(len(self._outputs))])
        ratio = total[0] / total[1] if total[1] else 0.0
        return _percent(paper_bleu_from_statistics(total[:10])), ratio, int(total[10])

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
        bleu = _percent(float(self._metric.compute()) * 100.0)  # n-gram stats summed across ranks
        paper, ratio, sentences = self._paper_bleu(trainer)
        self.last_bleu = bleu
        if self.best_bleu is None or bleu > self.best_bleu:
            self.best_bleu, self.best_bleu_step = bleu, int(trainer.global_step)
        self.best_paper_bleu = paper if self.best_paper_bleu is None else max(self.best_paper_bleu, paper)
        # Equal on every rank; the mean of sync_dist keeps it.
        pl_module.log("val/bleu", bleu, sync_dist=True)
        pl_module.log("val/paper_bleu", paper, sync_dist=True)
        pl_module.log("val/best_bleu", self.best_bleu, sync_dist=True)
        # Diagnostics of a BLEU change: output length (brevity, or outputs that run to the
        # length limit) and the number of sentences scored (every validation scores them all).
        pl_module.log("val/len_ratio", ratio, sync_dist=True)
        pl_module.log("val/bleu_sentences", float(sentences), sync_dist=True)
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
    def on_test_start(self, trainer, pl_module) -> None:
        self._testing = which_weights(trainer) if trainer.is_global_zero else {}

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._reset(pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._decode_batch(trainer, pl_module, batch, "test", self.test_beam_size)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        from nmtbench.scoring import corpus_scores

        bleu = float(self._metric.compute()) * 100.0
        outputs = sorted(gather_objects(self._outputs))
        if trainer.is_global_zero:
            _, refs = trainer.datamodule.raw_text("test")
            hyps, test_refs = [h for _, h in outputs], [refs[i] for i, _ in outputs]
            scores = corpus_scores(hyps, test_refs, lang=self._lang(trainer))
            scores.update({k: _percent(scores[k]) for k in ("sacrebleu", "paper_bleu", "chrf")})
            self.evaluations.append({**self._testing, **scores, "beam_size": self.test_beam_size,
                                     "length_penalty": self.length_penalty})
            log.info("test (%s weights) sacreBLEU %.2f (%s); paper-style BLEU %.2f",
                     self._testing.get("weights"), scores["sacrebleu"], scores["signature"], scores["paper_bleu"])
            self._write_translations(trainer, hyps, test_refs)
        pl_module.log("test/bleu", bleu, sync_dist=True)  # equal on every rank; the mean keeps it

    def _write_translations(self, trainer, hyps: list[str], refs: list[str]) -> None:
        """`test_hypotheses.<weights>.txt` and `test_references.txt` in the output directory."""
        from nmtbench.atomic import write_lines

        out = self.output_dir or getattr(trainer, "default_root_dir", None)
        if out is None:
            return
        hyp_path = Path(out) / f"test_hypotheses.{self._testing.get('weights') or 'current'}.txt"
        ref_path = Path(out) / "test_references.txt"
        write_lines(hyp_path, hyps)
        write_lines(ref_path, refs)
        log.info("test translations: %s (check: sacrebleu %s -i %s)", hyp_path, ref_path, hyp_path)

    @property
    def test_scores(self) -> dict[str, Any] | None:
        """The latest test evaluation (None before any test)."""
        return self.evaluations[-1] if self.evaluations else None

    # -- results -------------------------------------------------------------------------
    def summary(self) -> Summary:
        no_val = "no validation with BLEU ran"
        r = Fields()
        r.put("best_val_bleu", self.best_bleu, no_val)
        r.put("best_val_bleu_step", self.best_bleu_step, no_val)
        r.put("last_val_bleu", self.last_bleu, no_val)
        r.put("best_val_paper_bleu", self.best_paper_bleu, no_val)
        fields, reasons = r.summary()
        test_fields, test_reasons = summarize_tests(self.evaluations, "test has not run in this process")
        return {**fields, **test_fields}, {**reasons, **test_reasons}

    def resume_state(self) -> dict[str, Any]:
        return {"best_bleu": self.best_bleu, "best_bleu_step": self.best_bleu_step,
                "best_paper_bleu": self.best_paper_bleu}

    def restore(self, state: dict[str, Any]) -> None:
        self.best_bleu = state.get("best_bleu")
        self.best_bleu_step = state.get("best_bleu_step")
        self.best_paper_bleu = state.get("best_paper_bleu")


__all__ = ["BleuCallback", "TEST_FIELDS", "which_weights", "summarize_tests"]
