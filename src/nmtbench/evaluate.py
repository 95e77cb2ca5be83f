"""`evaluate(cfg)`: decode a split with beam search from a checkpoint and score it;
`translate(cfg)` / `translate_lines` for raw text. `scripts/evaluate.py` /
`scripts/translate.py` call them.

A checkpoint is self-contained: `Seq2SeqModule` saves the run's resolved config
(`hparams["cfg"]`) and the SentencePiece model (bytes + SHA-256) in it. So:

- translating needs only the checkpoint (no data cache, no data source, no download);
- evaluating reads only the split it scores, as text (the toy text is regenerated, local
  files are read, WMT14 comes from the local Hugging Face cache and is downloaded only with
  `download=true`), and encodes it with the checkpoint's tokenizer: no tokenizer is
  trained and no cache is built.

`data.*` keys of the evaluate/translate config (non-null ones) override the checkpoint's data
section, e.g. a moved `data.dir`. Checkpoints written before tokenizers were embedded fall
back to the tokenizer of the run's data cache (`data.cache_dir`), which must exist.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nmtbench.atomic import write_lines
from nmtbench.checkpoints import load_checkpoint
from nmtbench.config import to_container
from nmtbench.errors import CheckpointError, ConfigError, DataError
from nmtbench.precision import decoding_context, decoding_precision
from nmtbench.scoring import corpus_scores

log = logging.getLogger(__name__)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_data_config(module, data_overrides: Any = None):
    """The checkpoint's `DataConfig` with the non-null `data_overrides` merged on top."""
    from nmtbench.data.config import load_data_config

    overrides = {k: v for k, v in (to_container(data_overrides) or {}).items() if v is not None}
    merged = OmegaConf.merge(OmegaConf.create(module.hparams["cfg"]["data"]), OmegaConf.create(overrides))
    return load_data_config(OmegaConf.to_container(merged, resolve=True))


def load_module(ckpt_path: str | Path, device: torch.device | str = "cpu", data_overrides: Any = None):
    """The trained `Seq2SeqModule` of a checkpoint (also an averaged one), in eval mode, with
    its tokenizer: the checkpoint's own, or for an older checkpoint without one, that of the
    run's data cache (which must exist; nothing is built)."""
    from nmtbench.module import Seq2SeqModule

    ckpt = load_checkpoint(ckpt_path)
    hparams = ckpt.get("hyper_parameters") or {}
    if "cfg" not in hparams:
        raise CheckpointError(f"{ckpt_path} is not an nmtbench checkpoint (no hyper_parameters['cfg']).")
    module = Seq2SeqModule(**hparams)
    module.on_load_checkpoint(ckpt)  # attaches the checkpoint's tokenizer
    module.load_state_dict(ckpt["state_dict"])
    if module.tokenizer is None:
        module.attach_tokenizer(_cached_tokenizer(module, ckpt_path, data_overrides))
    return module.to(device).eval()


def trained_precision(module) -> str:
    """The precision the checkpoint's run trained in (its resolved trainer.precision)."""
    return str((module.hparams["cfg"].get("trainer") or {}).get("precision", "32-true"))


def _cached_tokenizer(module, ckpt_path, data_overrides):
    from nmtbench.data.prepare import load_prepared
    from nmtbench.data.tokenizer import Tokenizer

    cfg = run_data_config(module, data_overrides)
    prepared = load_prepared(cfg)
    if prepared is None:
        raise DataError(
            f"{ckpt_path} has no tokenizer inside (it was written before checkpoints carried one) "
            f"and its data cache is not under data.cache_dir={cfg.cache_dir}. Pass the training "
            "run's data.cache_dir=..., or build it with scripts/prepare_data.py and the run's data settings."
        )
    return Tokenizer(prepared.tokenizer_path)


def load_datamodule(module, data_overrides: Any = None):
    """The run's data (the checkpoint's config, non-null `data_overrides` merged on top),
    prepared and set up; its tokenizer must be the checkpoint's (checked by hash)."""
    from nmtbench.data.datamodule import Seq2SeqDataModule

    datamodule = Seq2SeqDataModule(run_data_config(module, data_overrides),
                                   seed=int(module.hparams["cfg"].get("seed", 0)))
    datamodule.prepare_data()
    datamodule.setup("test")
    module.attach_tokenizer(datamodule.tokenizer)
    return datamodule


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Decode `cfg.split` of the checkpoint's data with beam search, write `hypotheses.txt`,
    `references.txt` and `scores.json` into `cfg.paths.output_dir`, return the scores."""
    from nmtbench.data.sources import read_split

    if cfg.get("ckpt_path") in (None, "", "???"):
        raise ConfigError("evaluate needs ckpt_path=<path to a .ckpt>.")
    if cfg.split not in ("valid", "test"):
        raise ConfigError(f"split={cfg.split}: use 'valid' or 'test'.")
    device = pick_device(cfg.get("device", "auto"))
    module = load_module(cfg.ckpt_path, device, cfg.get("data"))
    data_cfg = run_data_config(module, cfg.get("data"))
    sources, refs = read_split(data_cfg, cfg.split, allow_download=bool(cfg.get("download", False)))
    if cfg.get("max_sentences") is not None:
        sources, refs = sources[: int(cfg.max_sentences)], refs[: int(cfg.max_sentences)]
    lang = cfg.get("lang") or data_cfg.tgt_lang

    precision = decoding_precision(str(cfg.get("precision", "auto")), device, trained_precision(module))
    start = time.perf_counter()
    with decoding_context(precision, device):
        hyps = translate_lines(module, sources, beam_size=int(cfg.beam_size), length_penalty=float(cfg.length_penalty),
                               max_len_b=int(cfg.max_len_b), max_tokens=data_cfg.eval_max_tokens)
    seconds = time.perf_counter() - start

    scores = corpus_scores(hyps, refs, lang=lang)
    ckpt = load_checkpoint(cfg.ckpt_path)
    scores.update(
        ckpt_path=str(Path(cfg.ckpt_path).resolve()), global_step=int(ckpt.get("global_step", -1)),
        averaged_from=ckpt.get("averaged_from"), split=cfg.split, lang=lang,
        data=f"{_describe(data_cfg)}, {cfg.split} {len(refs)} pairs",
        model=module.hparams["cfg"]["model"]["name"], tokenizer_sha256=module.tokenizer.sha256,
        beam_size=int(cfg.beam_size), length_penalty=float(cfg.length_penalty), max_len_b=int(cfg.max_len_b),
        device=str(device), precision=precision, decode_seconds=round(seconds, 3),
        sentences_per_sec=round(len(hyps) / max(seconds, 1e-9), 3),
    )
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_lines(out / "hypotheses.txt", hyps)
    write_lines(out / "references.txt", refs)
    (out / "scores.json").write_text(json.dumps(scores, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"[evaluate] {cfg.split}: {len(hyps)} sentences, beam {cfg.beam_size}, lp {cfg.length_penalty}, {precision} "
          f"({seconds:.1f} s, {scores['sentences_per_sec']:.1f} sentences/s)")
    print(f"  sacreBLEU (detokenized) {scores['sacrebleu']:.2f}  {scores['signature']}")
    print(f"  chrF                    {scores['chrf']:.2f}  {scores['chrf_signature']}")
    print(f"  paper BLEU (tokenized, compound-split) {scores['paper_bleu']:.2f}")
    print(f"  written to {out}/{{hypotheses.txt,references.txt,scores.json}}")
    return scores


def _describe(cfg) -> str:
    from nmtbench.data.datamodule import Seq2SeqDataModule

    return Seq2SeqDataModule(cfg).describe()


def translate(cfg: DictConfig) -> list[str]:
    """`scripts/translate.py`: translate `cfg.input` (a file; null = stdin) into `cfg.output`
    (null = stdout) with the checkpoint alone."""
    if cfg.get("ckpt_path") in (None, "", "???"):
        raise ConfigError("translate needs ckpt_path=<path to a .ckpt>.")
    device = pick_device(cfg.get("device", "auto"))
    module = load_module(cfg.ckpt_path, device, cfg.get("data"))
    if cfg.get("input"):
        if not Path(cfg.input).is_file():
            raise DataError(f"input={cfg.input} does not exist (a text file, one sentence a line).")
        text = Path(cfg.input).read_text(encoding="utf-8")
    else:
        text = sys.stdin.read()
    precision = decoding_precision(str(cfg.get("precision", "auto")), device, trained_precision(module))
    with decoding_context(precision, device):
        hyps = translate_lines(module, text.splitlines(), beam_size=int(cfg.beam_size),
                               length_penalty=float(cfg.length_penalty), max_len_b=int(cfg.max_len_b),
                               max_tokens=int(cfg.max_tokens))
    if cfg.get("output"):
        write_lines(cfg.output, hyps)
    else:
        sys.stdout.write("".join(h + "\n" for h in hyps))
    return hyps


def translate_lines(module, lines: Sequence[str], *, beam_size: int = 4, length_penalty: float = 0.6,
                    max_len_b: int = 50, max_tokens: int = 4096) -> list[str]:
    """Translate raw source lines (module needs a tokenizer): batched by a padded-token
    budget over length-sorted lines; the result is in input order."""
    from nmtbench.data.batching import Collator, pack

    tok = module.tokenizer
    if tok is None:
        raise RuntimeError("translate_lines needs module.tokenizer (see load_module / attach_tokenizer)")
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
