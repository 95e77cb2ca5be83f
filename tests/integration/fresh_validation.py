"""A fresh-process oracle for what validation logs: loss and BLEU of saved checkpoints.

    python -m tests.integration.fresh_validation CKPT [CKPT ...]   # one JSON line per checkpoint

Each checkpoint is loaded into a new module (`nmtbench.evaluate.load_module`: weights,
config and tokenizer from the file) in a process that never trained, so no state of the
training process (caches, optimizer, callbacks) can reach the numbers. It scores the
validation split the way the run's config says validation does, but without the callbacks'
code: the same validation batches (the run's data module), in the run's precision (autocast
under bf16-mixed), the loss summed over their target tokens, and the run's `callbacks.bleu` decoding (beam size, length penalty, max_len_b, the
first `max_sentences` sentences) scored by sacrebleu itself. torchmetrics' `SacreBLEUScore`
(what `val/bleu` logs) does not smooth, so neither does this (`smooth_method="none"`).
`val/paper_bleu` and `val/len_ratio` come from the test scorer, `nmtbench.scoring.paper_bleu`
over the whole set at once (validation sums per-rank statistics).
"""

from __future__ import annotations

import json
import sys

import sacrebleu
import torch

from nmtbench.evaluate import load_datamodule, load_module
from nmtbench.loss import label_smoothed_loss
from nmtbench.precision import decoding_context
from nmtbench.scoring import paper_bleu, paper_tokenize


def fresh_validation(ckpt_path: str) -> dict[str, float]:
    module = load_module(ckpt_path, "cpu")
    cfg = module.hparams["cfg"]
    bleu_cfg = cfg["callbacks"]["bleu"]
    datamodule = load_datamodule(module)
    _, refs = datamodule.raw_text("valid")
    max_sentences = bleu_cfg.get("max_sentences")
    loss_sum, tokens, hyps = 0.0, 0, {}
    # The precision the run trained and validated in (its resolved trainer.precision); no_grad
    # as validation (trainer.inference_mode: false).
    with torch.no_grad(), decoding_context(cfg["trainer"]["precision"], torch.device("cpu")):
        for batch in datamodule.val_dataloader():
            loss, _, ntok = label_smoothed_loss(module(batch), batch["tgt_out"], module.pad_id,
                                                module.label_smoothing)
            loss_sum, tokens = loss_sum + float(loss), tokens + int(ntok)
            keep = batch["ids"] < max_sentences if max_sentences is not None else batch["ids"] >= 0
            if not bool(keep.any()):
                continue
            sub = {k: v[keep] for k, v in batch.items()}
            out = module.translate(sub, beam_size=int(bleu_cfg["beam_size"]),
                                   length_penalty=float(bleu_cfg["length_penalty"]),
                                   max_len_b=int(bleu_cfg["max_len_b"]))
            hyps.update(zip(sub["ids"].tolist(), out))
    ids = sorted(hyps)
    out, ref = [hyps[i] for i in ids], [refs[i] for i in ids]
    bleu = sacrebleu.corpus_bleu(out, [ref], smooth_method="none")
    lang = cfg["data"]["tgt_lang"]
    ratio = sum(len(paper_tokenize(h, lang).split()) for h in out) / sum(len(paper_tokenize(r, lang).split()) for r in ref)
    step = int(torch.load(ckpt_path, map_location="cpu", weights_only=False)["global_step"])
    return {"step": step, "val/loss": loss_sum / max(tokens, 1), "val/bleu": bleu.score,
            "val/paper_bleu": paper_bleu(out, ref, lang)["score"], "val/len_ratio": ratio,
            "sentences": len(ids)}


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(json.dumps({"ckpt": path, **fresh_validation(path)}), flush=True)
