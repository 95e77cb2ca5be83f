"""Build or reuse the prepared data cache: text -> tokenizer -> shards.

    {cache_dir}/{source}-{key}/       key = hash(source identity, tokenizer settings, filters)
        meta.json                     what was built (identity, settings, dtype, sizes)
        stats.json                    kept/dropped pairs per split and reason
        spm.model, spm.vocab          the joint BPE tokenizer
        {split}.{src,tgt}.bin/.idx.npy  token shards (see shards.py)
        {valid,test}.{src,tgt}.txt    raw text: the BLEU sources and references
    {cache_dir}/spm-{tokenizer key}/  the tokenizer alone, reused when only filters change

Both directories are built in a temporary directory next to them and moved into place
with one `os.replace`, so a crash never leaves a half-written cache that a later run would
read: a cache directory either is complete or does not exist. Each is built under a lock
(`.{name}.lock` next to it), so processes that start together (two runs, the first rank of
every node) build it once: the others wait, then reuse it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from nmtbench.atomic import atomic_dir, build_lock
from nmtbench.data.config import DataConfig, load_data_config
from nmtbench.data.shards import (
    DROP_REASONS,
    Filters,
    encode_split,
    encoding_pool,
    id_dtype,
    make_progress,
)
from nmtbench.data.sources import SPLITS, Corpus, open_source, source_identity, take
from nmtbench.data.tokenizer import train_sentencepiece
from nmtbench.errors import DataError

FORMAT_VERSION = 1  # bump when the cache layout or encoding changes
SAMPLE_SEED = 1234  # fixed: the tokenizer sample must not depend on the training seed


@dataclass(frozen=True)
class PreparedData:
    """A complete cache directory."""

    dir: str
    key: str
    stats: dict[str, dict[str, int]]  # split -> counts (total, kept, per drop reason)
    meta: dict[str, Any]
    reused: bool  # True when an existing cache was found (nothing was built)

    @property
    def tokenizer_path(self) -> str:
        return os.path.join(self.dir, "spm.model")

    @property
    def dtype(self) -> str:
        return self.meta["dtype"]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def tokenizer_settings(cfg: DataConfig) -> dict[str, Any]:
    return {
        "model_type": "bpe", "vocab_size": cfg.vocab_size,
        "input_sentence_size": cfg.input_sentence_size,
        "character_coverage": cfg.character_coverage, "sample_seed": SAMPLE_SEED,
    }


def cache_identity(cfg: DataConfig) -> dict[str, Any]:
    """Everything the cache content depends on (and nothing else)."""
    return {
        "format_version": FORMAT_VERSION,
        "data": source_identity(cfg),
        "tokenizer": tokenizer_settings(cfg),
        "filters": {"max_len": cfg.max_len, "max_len_ratio": cfg.max_len_ratio},
    }


def cache_path(cfg: DataConfig) -> tuple[str, str, dict[str, Any]]:
    """(directory, key, identity) of the cache for `cfg` (nothing is read or built)."""
    identity = cache_identity(cfg)
    key = _hash(identity)
    return os.path.join(cfg.cache_dir, f"{cfg.source}-{key}"), key, identity


def load_prepared(cfg: DataConfig | Mapping[str, Any]) -> PreparedData | None:
    """The complete cache for `cfg`, or None when it has not been built."""
    cfg = load_data_config(cfg)
    directory, key, _ = cache_path(cfg)
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.isfile(meta_path):
        return None
    with open(meta_path) as f:
        meta = json.load(f)
    with open(os.path.join(directory, "stats.json")) as f:
        stats = json.load(f)
    return PreparedData(directory, key, stats, meta, reused=True)


def prepare(cfg_data: DataConfig | Mapping[str, Any], console: Console | None = None) -> PreparedData:
    """Build the cache for `cfg_data` unless it exists; print the counts either way."""
    cfg = load_data_config(cfg_data)
    console = console or Console(stderr=True)
    prepared = load_prepared(cfg)
    if prepared is not None:
        console.print(f"[green]Reusing[/green] prepared data {prepared.dir}")
        print_stats(prepared.stats, console)
        return prepared
    directory, key, identity = cache_path(cfg)
    # One builder per cache: a second process (another run, another node) waits, then reuses.
    with build_lock(directory, on_wait=console.print):
        prepared = load_prepared(cfg)
        if prepared is not None:
            console.print(f"[green]Reusing[/green] prepared data {prepared.dir} (built by another process)")
            print_stats(prepared.stats, console)
            return prepared
        start = time.perf_counter()
        console.print(f"Preparing data ({cfg.source}) into {directory}")
        corpora = open_source(cfg)
        if len(corpora["train"]) == 0:
            raise DataError(f"The training data is empty: {corpora['train'].description}.")
        spm_dir = build_tokenizer(cfg, corpora["train"], console)
        stats, meta = _build(cfg, corpora, spm_dir, directory, key, identity, console)
    console.print(f"Prepared in {time.perf_counter() - start:.1f} s")
    print_stats(stats, console)
    return PreparedData(directory, key, stats, meta, reused=False)


def build_tokenizer(cfg: DataConfig, train: Corpus, console: Console) -> str:
    """Directory holding spm.model for (source, tokenizer settings); trained if missing."""
    identity = {"format_version": FORMAT_VERSION, "data": source_identity(cfg),
                "tokenizer": tokenizer_settings(cfg)}
    directory = os.path.join(cfg.cache_dir, f"spm-{_hash(identity)}")
    # Caches that differ only in their filters share this tokenizer: build it once too.
    with build_lock(directory, on_wait=console.print):
        if os.path.isfile(os.path.join(directory, "spm.model")):
            console.print(f"Reusing tokenizer {directory}/spm.model")
            return directory
        _train_tokenizer(cfg, train, identity, directory, console)
    return directory


def _train_tokenizer(cfg: DataConfig, train: Corpus, identity: dict[str, Any], directory: str,
                     console: Console) -> None:
    num_pairs = min(len(train), (cfg.input_sentence_size + 1) // 2)
    rng = np.random.default_rng(SAMPLE_SEED)
    indices = rng.choice(len(train), size=num_pairs, replace=False)
    with console.status(f"Reading a sample of {num_pairs:,} training pairs for the tokenizer"):
        pairs = take(train, indices)
    sentences = [s for pair in pairs for s in pair if s.strip()]
    random.Random(SAMPLE_SEED).shuffle(sentences)
    start = time.perf_counter()
    with atomic_dir(directory) as tmp:
        with console.status(
            f"Training SentencePiece BPE (vocab {cfg.vocab_size}) on {len(sentences):,} sentences"
        ):
            train_sentencepiece(
                sentences, os.path.join(tmp, "spm.model"), vocab_size=cfg.vocab_size,
                character_coverage=cfg.character_coverage, num_threads=cfg.processes,
            )
        with open(os.path.join(tmp, "tokenizer.json"), "w") as f:
            json.dump({**identity, "sentences": len(sentences)}, f, indent=2)
    console.print(
        f"Trained the tokenizer (BPE, vocab {cfg.vocab_size}) on {len(sentences):,} sentences "
        f"in {time.perf_counter() - start:.1f} s"
    )


def _build(
    cfg: DataConfig, corpora: dict[str, Corpus], spm_dir: str, directory: str, key: str,
    identity: dict[str, Any], console: Console,
) -> tuple[dict[str, dict[str, int]], dict[str, Any]]:
    filters = Filters(cfg.max_len, cfg.max_len_ratio)
    stats: dict[str, dict[str, int]] = {}
    with atomic_dir(directory) as tmp:
        for name in ("spm.model", "spm.vocab"):
            shutil.copy2(os.path.join(spm_dir, name), os.path.join(tmp, name))
        model_path = os.path.join(tmp, "spm.model")
        with encoding_pool(cfg.processes) as pool, make_progress() as progress:
            for split in SPLITS:
                stats[split] = encode_split(
                    corpora[split], split, tmp, model_path, cfg.vocab_size,
                    filters=filters if split == "train" else None,
                    pool=pool, progress=progress, raw_text=split != "train",
                )
        if stats["train"]["kept"] == 0:
            raise DataError(
                f"No training pairs left after filtering {corpora['train'].description}: "
                f"{_counts_text(stats['train'])}. Relax data.max_len={cfg.max_len} / "
                f"data.max_len_ratio={cfg.max_len_ratio}, or check the data."
            )
        meta = {
            **identity, "key": key, "dtype": id_dtype(cfg.vocab_size).str,
            "vocab_size": cfg.vocab_size, "src_lang": cfg.src_lang, "tgt_lang": cfg.tgt_lang,
            "sizes": {split: stats[split]["kept"] for split in SPLITS},
            "inputs": {split: corpora[split].description for split in SPLITS},
        }
        with open(os.path.join(tmp, "stats.json"), "w") as f:
            json.dump(stats, f, indent=2)
        with open(os.path.join(tmp, "meta.json"), "w") as f:  # written last
            json.dump(meta, f, indent=2)
    return stats, meta


def _counts_text(counts: Mapping[str, int]) -> str:
    dropped = ", ".join(f"{r} {counts.get(r, 0):,}" for r in DROP_REASONS)
    return f"{counts['total']:,} read, {counts['kept']:,} kept, dropped: {dropped}"


def print_stats(stats: Mapping[str, Mapping[str, int]], console: Console) -> None:
    table = Table(title="Sentence pairs (only train is filtered; the rest: pairs dropped, by reason)")
    for column in ("split", "read", "kept", *DROP_REASONS):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, c in stats.items():
        table.add_row(split, f"{c['total']:,}", f"{c['kept']:,}", *(f"{c.get(r, 0):,}" for r in DROP_REASONS))
    console.print(table)
