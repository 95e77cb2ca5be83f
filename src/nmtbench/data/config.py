"""The `data:` config section as typed dataclasses (validated with `from_mapping`).

`load_data_config(cfg.data)` is the one way in: it rejects unknown keys by name, checks
values, and makes every path absolute against the current working directory, so later
code never depends on where it runs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nmtbench.config import from_mapping
from nmtbench.errors import ConfigError

SOURCES = ("toy", "files", "wmt14")


@dataclass(frozen=True)
class ToyConfig:
    """Parameters of the generated English->German-like task (see `nmtbench.data.toy`).

    The generated text is a pure function of these values: same values, same files.
    """

    seed: int = 0  # generator seed (independent of the training seed)
    num_train: int = 30000  # training pairs
    num_valid: int = 500  # validation pairs (disjoint from train)
    num_test: int = 500  # test pairs (disjoint from train and valid)
    num_nouns: int = 69  # nouns taken from the built-in lexicon (at most 69)
    num_verbs: int = 40  # verbs taken from the built-in lexicon (at most 40)
    num_adjectives: int = 30  # adjectives taken from the built-in lexicon (at most 30)

    def __post_init__(self) -> None:
        for name in ("num_train", "num_valid", "num_test", "num_nouns", "num_verbs", "num_adjectives"):
            if getattr(self, name) < 1:
                raise ConfigError(f"data.toy.{name} must be >= 1, got {getattr(self, name)}.")


@dataclass(frozen=True)
class DataConfig:
    """Everything the data pipeline reads from `cfg.data`.

    Keys that change the prepared cache (and so its key): the source identity
    (`source`, languages, `dir` + prefixes, `hf_*`, `toy.*`), the tokenizer settings
    (`vocab_size`, `input_sentence_size`, `character_coverage`) and the training filters
    (`max_len`, `max_len_ratio`). Everything else only affects loading and batching.
    """

    source: str  # toy | files | wmt14
    src_lang: str = "en"
    tgt_lang: str = "de"
    dir: str | None = None  # files: input directory; toy: where the generated text is written
    train_prefix: str = "train"  # files: {dir}/{train_prefix}.{lang}
    valid_prefix: str = "valid"
    test_prefix: str = "test"
    cache_dir: str = "data/cache"  # prepared caches live in {cache_dir}/<key>/
    hf_dataset: str = "wmt/wmt14"  # wmt14: Hugging Face dataset name
    hf_config: str = "de-en"  # wmt14: dataset config (language pair)
    hf_revision: str | None = None  # wmt14: dataset revision (None = main)
    hf_cache_dir: str | None = None  # wmt14: HF datasets cache (None = HF default)
    toy: ToyConfig = field(default_factory=ToyConfig)
    vocab_size: int = 8000  # joint SentencePiece BPE vocabulary (pad=0 unk=1 bos=2 eos=3)
    input_sentence_size: int = 1_000_000  # sentences sampled (both sides) to train the BPE
    character_coverage: float = 1.0  # SentencePiece character coverage
    max_len: int = 256  # drop training pairs with more subword tokens on either side
    max_len_ratio: float | None = None  # drop training pairs with longer/shorter > this
    max_tokens: int = 4096  # training batch budget per device, padded (B * max len)
    eval_max_tokens: int = 8192  # evaluation batch budget per device, padded
    max_valid_sentences: int | None = None  # validate on the first N valid pairs only
    num_workers: int = 2  # DataLoader worker processes
    num_proc: int | None = None  # processes that encode the shards (None = up to 8 CPUs)
    effective_batch_tokens: int | None = None  # read by training (gradient accumulation)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ConfigError(
                f"data.source must be one of {', '.join(SOURCES)}, got '{self.source}'. "
                "Pick one with data=toy, data=files or data=wmt14."
            )
        if self.src_lang == self.tgt_lang:
            raise ConfigError(f"data.src_lang and data.tgt_lang are both '{self.src_lang}'.")
        if self.source == "files" and not self.dir:
            raise ConfigError(
                "data.dir is required for data=files: the directory holding "
                f"{{prefix}}.{self.src_lang} / {{prefix}}.{self.tgt_lang}, "
                "e.g. data.dir=../shared/data/multi30k."
            )
        if self.source == "toy" and not self.dir:
            raise ConfigError("data.dir is required for data=toy (where the generated text goes).")
        positive = ("vocab_size", "input_sentence_size", "max_len", "max_tokens", "eval_max_tokens")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"data.{name} must be >= 1, got {getattr(self, name)}.")
        if self.max_tokens < self.max_len + 1:
            raise ConfigError(
                f"data.max_tokens={self.max_tokens} is smaller than the longest training example "
                f"data.max_len={self.max_len} allows ({self.max_len + 1} tokens with EOS/BOS): such "
                f"a pair could not fit in a batch. Set data.max_tokens >= {self.max_len + 1} or "
                f"lower data.max_len."
            )
        if self.vocab_size < 8:
            raise ConfigError(f"data.vocab_size={self.vocab_size} is too small (at least 8).")
        if not 0.0 < self.character_coverage <= 1.0:
            raise ConfigError(
                f"data.character_coverage must be in (0, 1], got {self.character_coverage}."
            )
        if self.max_len_ratio is not None and self.max_len_ratio < 1.0:
            raise ConfigError(
                f"data.max_len_ratio must be >= 1 (or null to disable), got {self.max_len_ratio}."
            )
        if self.max_valid_sentences is not None and self.max_valid_sentences < 1:
            raise ConfigError(
                f"data.max_valid_sentences must be >= 1 (or null for all), got {self.max_valid_sentences}."
            )
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}.")
        if self.num_proc is not None and self.num_proc < 1:
            raise ConfigError(f"data.num_proc must be >= 1 (or null for auto), got {self.num_proc}.")

    @property
    def processes(self) -> int:
        """Number of encoding processes (`num_proc`, or up to 8 CPUs when null)."""
        return self.num_proc or max(1, min(8, os.cpu_count() or 1))


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(str(path)))


def load_data_config(mapping: Mapping[str, Any] | DataConfig) -> DataConfig:
    """Validate the `data:` section and make its paths absolute (against the cwd)."""
    cfg = mapping if isinstance(mapping, DataConfig) else from_mapping(DataConfig, mapping, "data")
    return dataclasses.replace(
        cfg,
        dir=_absolute(cfg.dir),
        cache_dir=_absolute(cfg.cache_dir),
        hf_cache_dir=_absolute(cfg.hf_cache_dir),
    )
