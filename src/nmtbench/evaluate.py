"""`evaluate(cfg)`: decode a split with beam search from a checkpoint and score it; and
`translate_lines` for raw text. `scripts/evaluate.py` / `scripts/translate.py` wrap them.

Everything about the model and data comes from the checkpoint: `Seq2SeqModule` saves the
run's full resolved config under `hparams["cfg"]`, so the test split, the tokenizer and the
architecture are rebuilt exactly as trained (`data:` keys in the evaluate config override
the run's, e.g. a moved `data.cache_dir`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nmtbench.config import to_container
from nmtbench.errors import ConfigError
from nmtbench.scoring import corpus_scores

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_module(ckpt_path: str | Path, device: torch.device | str = "cpu"):
    """The trained `Seq2SeqModule` of a checkpoint (also an averaged one), in eval mode."""
    from nmtbench.module import Seq2SeqModule

    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist (pass a .ckpt file of a run).")
    module = Seq2SeqModule.load_from_checkpoint(path, map_location="cpu", weights_only=False)
    return module.to(device).eval()


def load_datamodule(module, data_overrides: Any = None):
    """The run's data (from the checkpoint's config, `data_overrides` merged on top),
    prepared and set up, with its tokenizer attached to `module`."""
    from nmtbench.data.datamodule import Seq2SeqDataModule

    run_cfg = module.hparams["cfg"]
    data_cfg = OmegaConf.merge(OmegaConf.create(run_cfg["data"]), OmegaConf.create(to_container(data_overrides) or {}))
    datamodule = Seq2SeqDataModule(data_cfg, seed=int(run_cfg.get("seed", 0)))
    datamodule.prepare_data()
    datamodule.setup("test")
    module.attach_tokenizer(datamodule.tokenizer)
    return datamodule


def decode_split(module, datamodule, split: str, *, beam_size: int, length_penalty: float, max_len_b: int,
                 max_sentences: int | None = None) -> tuple[list[str], list[str], list[str]]:
    """(sources, references, hypotheses) of `split` in its original order; the first
    `max_sentences` examples only when given."""
    if split not in ("valid", "test"):
        raise ConfigError(f"split={split}: use 'valid' or 'test'.")
    sources, refs = datamodule.raw_text(split)
    n = len(refs) if max_sentences is None else min(max_sentences, len(refs))
    loader = datamodule.test_dataloader() if split == "test" else datamodule.val_dataloader()
    hyps: list[str | None] = [None] * n
    for batch in loader:
        keep = batch["ids"] < n
        if not bool(keep.any()):
            continue
        batch = {k: v[keep].to(module.device) for k, v in batch.items()}
        out = module.translate(batch, beam_size=beam_size, length_penalty=length_penalty, max_len_b=max_len_b)
        for i, hyp in zip(batch["ids"].tolist(), out):
            hyps[i] = hyp
    missing = [i for i, h in enumerate(hyps) if h is None]
    if missing:
        raise RuntimeError(f"{len(missing)} {split} examples were never decoded (first: {missing[0]})")
    return sources[:n], refs[:n], hyps  # type: ignore[return-value]


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Decode `cfg.split` of the checkpoint's data with beam search, write `hypotheses.txt`,
    `references.txt` and `scores.json` into `cfg.paths.output_dir`, return the scores."""
    if cfg.get("ckpt_path") in (None, "", "???"):
        raise ConfigError("evaluate needs ckpt_path=<path to a .ckpt>.")
    device = pick_device(cfg.get("device", "auto"))
    module = load_module(cfg.ckpt_path, device)
    datamodule = load_datamodule(module, cfg.get("data"))
    lang = cfg.get("lang") or datamodule.tgt_lang

    start = time.perf_counter()
    sources, refs, hyps = decode_split(
        module, datamodule, cfg.split, beam_size=int(cfg.beam_size), length_penalty=float(cfg.length_penalty),
        max_len_b=int(cfg.max_len_b), max_sentences=cfg.get("max_sentences"),
    )
    seconds = time.perf_counter() - start

    scores = corpus_scores(hyps, refs, lang=lang)
    ckpt = torch.load(cfg.ckpt_path, map_location="cpu", weights_only=False)
    scores.update(
        ckpt_path=str(Path(cfg.ckpt_path).resolve()), global_step=int(ckpt.get("global_step", -1)),
        averaged_from=ckpt.get("averaged_from"), split=cfg.split, lang=lang, data=datamodule.describe(),
        model=module.hparams["cfg"]["model"]["name"], beam_size=int(cfg.beam_size),
        length_penalty=float(cfg.length_penalty), max_len_b=int(cfg.max_len_b), device=str(device),
        decode_seconds=round(seconds, 3), sentences_per_sec=round(len(hyps) / max(seconds, 1e-9), 3),
    )
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "hypotheses.txt").write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    (out / "references.txt").write_text("".join(r + "\n" for r in refs), encoding="utf-8")
    (out / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"[evaluate] {cfg.split}: {len(hyps)} sentences, beam {cfg.beam_size}, lp {cfg.length_penalty} "
          f"({seconds:.1f} s, {scores['sentences_per_sec']:.1f} sentences/s)")
    print(f"  sacreBLEU (detokenized) {scores['sacrebleu']:.2f}  {scores['signature']}")
    print(f"  chrF                    {scores['chrf']:.2f}  {scores['chrf_signature']}")
    print(f"  paper BLEU (tokenized, compound-split) {scores['paper_bleu']:.2f}")
    print(f"  written to {out}/{{hypotheses.txt,references.txt,scores.json}}")
    return scores


def translate_lines(module, lines: Sequence[str], *, beam_size: int = 4, length_penalty: float = 0.6,
                    max_len_b: int = 50, max_tokens: int = 4096) -> list[str]:
    """Translate raw source lines (module needs a tokenizer): batched by a padded-token
    budget over length-sorted lines; the result is in input order."""
    from nmtbench.data.batching import Collator, pack

    tok = module.tokenizer
    if tok is None:
        raise RuntimeError("translate_lines needs module.tokenizer (see load_datamodule / attach_tokenizer)")
    collate = Collator(tok.pad_id, tok.bos_id, tok.eos_id)
    ids = [np.asarray(tok.encode(line), dtype=np.int64) for line in lines]
    lengths = np.array([len(x) + 1 for x in ids], dtype=np.int64)  # + EOS
    order = np.argsort(lengths, kind="stable")
    out: list[str] = [""] * len(ids)
    # The evaluation batching: length-sorted, (rows x longest source) within max_tokens.
    for chunk in pack(order, lengths, max_tokens):
        batch = collate([(int(i), ids[i], np.zeros(0, dtype=np.int64)) for i in chunk])
        batch = {k: v.to(module.device) for k, v in batch.items()}
        for i, hyp in zip(chunk.tolist(), module.translate(batch, beam_size=beam_size,
                                                           length_penalty=length_penalty,
                                                           max_len_b=max_len_b)):
            out[i] = hyp
    return out
