"""Where parallel text comes from: local files, the generated toy task, or WMT14 on the HF hub.

Every source yields one `Corpus` per split ("train", "valid", "test"): a sized sequence of
(source, target) sentence pairs that can be streamed in chunks. Identity (what goes into
the cache key) is computed without reading the text, so a prepared cache is found again
without touching the network or rereading gigabytes.

Bad input fails with the file, the line and the fix: sides with different line counts,
invalid UTF-8, a missing file, an unreachable WMT14 download.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from nmtbench.atomic import build_lock
from nmtbench.data.config import DataConfig
from nmtbench.data.toy import toy_hash, toy_identity, write_toy
from nmtbench.errors import ConfigError, DataError

SPLITS = ("train", "valid", "test")
HF_SPLITS = {"train": "train", "valid": "validation", "test": "test"}
PROBE_TIMEOUT_S = 3.0


class Corpus(Protocol):
    """A split of parallel text: `len()` pairs, streamed in order by `chunks()`."""

    description: str  # names the data in messages, e.g. the two file paths

    def __len__(self) -> int: ...

    def chunks(self, size: int) -> Iterator[tuple[list[str], list[str]]]:
        """Consecutive (sources, targets) lists of at most `size` pairs, in order."""
        ...


def take(corpus: Corpus, indices: np.ndarray, chunk_size: int = 10000) -> list[tuple[str, str]]:
    """The pairs at `indices`, in ascending index order (one streaming pass over the corpus,
    or random access when the corpus has its own `take`)."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    if hasattr(corpus, "take"):
        return corpus.take(indices)
    out: list[tuple[str, str]] = []
    start, pos = 0, 0
    for src, tgt in corpus.chunks(chunk_size):
        end = start + len(src)
        stop = int(np.searchsorted(indices, end))
        for i in indices[pos:stop]:
            out.append((src[i - start], tgt[i - start]))
        pos, start = stop, end
        if pos == len(indices):
            break
    return out


# ----------------------------------------------------------------------------- files


def count_lines(path: str) -> int:
    """Number of lines as Python iterates them (a last line without a newline counts)."""
    count, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


@dataclass
class TextFileCorpus:
    """Two line-aligned UTF-8 files; line i of `src_path` translates to line i of `tgt_path`."""

    src_path: str
    tgt_path: str
    num_lines: int

    @property
    def description(self) -> str:
        return f"{self.src_path} + {self.tgt_path}"

    def __len__(self) -> int:
        return self.num_lines

    def chunks(self, size: int) -> Iterator[tuple[list[str], list[str]]]:
        with open(self.src_path, "rb") as fs, open(self.tgt_path, "rb") as ft:
            src: list[str] = []
            tgt: list[str] = []
            for lineno, (bs, bt) in enumerate(zip(fs, ft), start=1):
                src.append(_decode(bs, self.src_path, lineno))
                tgt.append(_decode(bt, self.tgt_path, lineno))
                if len(src) == size:
                    yield src, tgt
                    src, tgt = [], []
            if src:
                yield src, tgt


def _decode(line: bytes, path: str, lineno: int) -> str:
    try:
        return line.decode("utf-8").rstrip("\n").rstrip("\r")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}:{lineno}: invalid UTF-8 (byte 0x{line[exc.start]:02x} at column {exc.start + 1}). "
            "The data must be UTF-8 text; fix the line or re-encode the file "
            "(e.g. iconv -f latin1 -t utf-8)."
        ) from exc


def open_text_pair(src_path: str, tgt_path: str) -> TextFileCorpus:
    """Check that both sides exist and have the same number of lines."""
    n_src, n_tgt = count_lines(src_path), count_lines(tgt_path)
    if n_src != n_tgt:
        raise DataError(
            f"Parallel files have different line counts: {src_path} has {n_src} lines, "
            f"{tgt_path} has {n_tgt} lines. Line i of one side must translate line i of "
            "the other; fix the files so both have the same number of lines."
        )
    return TextFileCorpus(src_path, tgt_path, n_src)


def split_paths(cfg: DataConfig, directory: str) -> dict[str, tuple[str, str]]:
    """{split: (source path, target path)} for a directory of `{prefix}.{lang}` files."""
    prefixes = {"train": cfg.train_prefix, "valid": cfg.valid_prefix, "test": cfg.test_prefix}
    return {
        split: tuple(os.path.join(directory, f"{prefix}.{lang}") for lang in (cfg.src_lang, cfg.tgt_lang))
        for split, prefix in prefixes.items()
    }


def check_files_exist(cfg: DataConfig, paths: dict[str, tuple[str, str]]) -> None:
    if cfg.source == "files" and not os.path.isdir(cfg.dir):
        raise DataError(
            f"data.dir={cfg.dir} does not exist (or is not a directory). data=files reads "
            f"{{data.dir}}/{{prefix}}.{{lang}}: point data.dir at the directory holding the text."
        )
    for split, pair in paths.items():
        for path in pair:
            if not os.path.isfile(path):
                raise DataError(
                    f"Missing {split} file: {path} does not exist. data=files reads "
                    f"{{data.dir}}/{{prefix}}.{{lang}} with data.dir={cfg.dir}, "
                    f"data.train_prefix={cfg.train_prefix}, data.valid_prefix={cfg.valid_prefix}, "
                    f"data.test_prefix={cfg.test_prefix}, data.src_lang={cfg.src_lang}, "
                    f"data.tgt_lang={cfg.tgt_lang}. Point data.dir or the prefixes at existing files."
                )


# ---------------------------------------------------------------------------- source


def _file_identity(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def source_identity(cfg: DataConfig) -> dict[str, Any]:
    """What the text is (for the cache key), computed without reading it.

    files: absolute paths, sizes and mtimes; toy: generator parameters and seed;
    wmt14: dataset name, config, revision and direction.
    """
    if cfg.source == "files":
        paths = split_paths(cfg, cfg.dir)
        check_files_exist(cfg, paths)
        return {"source": "files", **{s: [_file_identity(p) for p in pair] for s, pair in paths.items()}}
    if cfg.source == "toy":
        _check_toy_langs(cfg)
        return {
            "source": "toy", "toy": toy_identity(cfg.toy), "src_lang": cfg.src_lang,
            "tgt_lang": cfg.tgt_lang,
        }
    return {
        "source": "wmt14", "dataset": cfg.hf_dataset, "config": cfg.hf_config,
        "revision": cfg.hf_revision or "main", "src_lang": cfg.src_lang, "tgt_lang": cfg.tgt_lang,
    }


def _check_toy_langs(cfg: DataConfig) -> None:
    if {cfg.src_lang, cfg.tgt_lang} != {"en", "de"}:
        raise ConfigError(
            f"data=toy generates en/de text; got data.src_lang={cfg.src_lang}, "
            f"data.tgt_lang={cfg.tgt_lang}. Use en->de (default) or de->en."
        )


def _write_toy(cfg: DataConfig) -> str:
    """The toy text directory, generated once even by processes that start together."""
    _check_toy_langs(cfg)
    prefixes = {"train": cfg.train_prefix, "valid": cfg.valid_prefix, "test": cfg.test_prefix}
    with build_lock(os.path.join(cfg.dir, f"toy-{toy_hash(cfg.toy)}")):
        return write_toy(cfg.toy, cfg.dir, prefixes)


def open_source(cfg: DataConfig) -> dict[str, Corpus]:
    """{split: Corpus}. Generates the toy text or downloads WMT14 when needed."""
    if cfg.source == "toy":
        paths = split_paths(cfg, _write_toy(cfg))
    elif cfg.source == "files":
        paths = split_paths(cfg, cfg.dir)
    else:
        return load_wmt14(cfg)
    check_files_exist(cfg, paths)
    return {split: open_text_pair(*pair) for split, pair in paths.items()}


def read_split(cfg: DataConfig, split: str, allow_download: bool = False) -> tuple[list[str], list[str]]:
    """(sources, targets) of one split, read from the text itself (no cache, no tokenizer).

    For evaluation: the toy text is generated if missing, local files are read, and WMT14
    comes from the local Hugging Face cache; it is downloaded only with `allow_download`.
    """
    if split not in SPLITS:
        raise ConfigError(f"split={split}: use one of {', '.join(SPLITS)}.")
    if cfg.source == "wmt14":
        corpus = load_wmt14(cfg, splits=(split,), allow_download=allow_download)[split]
    else:
        directory = _write_toy(cfg) if cfg.source == "toy" else cfg.dir
        paths = split_paths(cfg, directory)
        check_files_exist(cfg, {split: paths[split]})
        corpus = open_text_pair(*paths[split])
    sources: list[str] = []
    targets: list[str] = []
    for src, tgt in corpus.chunks(10000):
        sources.extend(src)
        targets.extend(tgt)
    return sources, targets


# ----------------------------------------------------------------------------- WMT14


@dataclass
class HFCorpus:
    """One split of a Hugging Face translation dataset ({"translation": {lang: text}})."""

    dataset: Any  # datasets.Dataset
    src_lang: str
    tgt_lang: str
    description: str

    def __len__(self) -> int:
        return len(self.dataset)

    def chunks(self, size: int, dataset: Any = None) -> Iterator[tuple[list[str], list[str]]]:
        for batch in (dataset or self.dataset).iter(batch_size=size):
            pairs = batch["translation"]
            yield [p[self.src_lang] for p in pairs], [p[self.tgt_lang] for p in pairs]

    def take(self, indices: np.ndarray) -> list[tuple[str, str]]:
        """Random access through the memory-mapped Arrow table (no full pass)."""
        out: list[tuple[str, str]] = []
        for src, tgt in self.chunks(10000, self.dataset.select(indices.tolist())):
            out.extend(zip(src, tgt))
        return out


def _offline_message(cfg: DataConfig, why: str) -> str:
    return (
        f"The WMT14 download ({cfg.hf_dataset}, config {cfg.hf_config}) is unreachable: {why}. "
        "Offline, use local text instead: data=files data.dir=../shared/data/wmt14_sample "
        "data.valid_prefix=newstest2013 data.test_prefix=newstest2014 (a 38.7k-pair sample "
        "with the real newstest sets), or data=toy for the generated task. To download it, "
        "retry with network access and HF_HUB_OFFLINE unset (data.hf_cache_dir sets where "
        "it is cached)."
    )


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the HF endpoint answers a HEAD request within `timeout` (any HTTP status).

    Made through the hub client's own HTTP session, so it goes where `datasets` would go:
    through `HTTPS_PROXY`/`HTTP_PROXY` on compute nodes that reach the internet only that way
    (a raw socket to the hub would fail there and force offline mode). Offline it fails within
    `timeout`, instead of `datasets`' ~25 s of retries."""
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout)
        return True
    except Exception:  # noqa: BLE001 - any transport error (requests or httpx): not reachable
        return False


def load_wmt14(cfg: DataConfig, splits: tuple[str, ...] = SPLITS, allow_download: bool = True) -> dict[str, Corpus]:
    """Load WMT14 (`splits` only) from the HF hub or its local cache, failing within seconds offline.

    With HF_HUB_OFFLINE set, without `allow_download`, or when the hub does not answer a
    3 s probe, the dataset is loaded in offline mode: from the local HF cache if it is
    there, else a DataError that names the offline alternatives.
    """
    import datasets
    from huggingface_hub import constants

    if {cfg.src_lang, cfg.tgt_lang} != set(cfg.hf_config.split("-")):
        raise ConfigError(
            f"data.src_lang={cfg.src_lang} / data.tgt_lang={cfg.tgt_lang} do not match "
            f"data.hf_config={cfg.hf_config}; WMT14 En-De uses hf_config=de-en with "
            "src_lang/tgt_lang en/de in either direction."
        )
    offline = bool(datasets.config.HF_HUB_OFFLINE) or not allow_download
    why = "HF_HUB_OFFLINE is set and the dataset is not in the local cache"
    if not allow_download:
        why = "it is not in the local Hugging Face cache, and evaluation downloads only when asked (download=true)"
    if not offline and not hub_reachable():
        offline = True
        why = f"no connection to {constants.ENDPOINT} within {PROBE_TIMEOUT_S:.0f} s and the dataset is not in the local cache"
    previous = (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)
    try:
        # Offline mode makes `datasets` use its local cache at once instead of retrying.
        datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = offline
        hf_splits = None if tuple(splits) == SPLITS else [HF_SPLITS[s] for s in splits]
        only = {} if hf_splits is None else {"split": hf_splits}  # these splits only
        loaded = datasets.load_dataset(
            cfg.hf_dataset, cfg.hf_config, revision=cfg.hf_revision, cache_dir=cfg.hf_cache_dir, **only
        )
        if hf_splits is not None:
            loaded = dict(zip(hf_splits, loaded))
    except (ConnectionError, FileNotFoundError, OSError) as exc:
        if offline:
            raise DataError(_offline_message(cfg, why)) from exc
        raise DataError(_offline_message(cfg, f"{type(exc).__name__}: {exc}")) from exc
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = previous
    out: dict[str, Corpus] = {}
    for split in splits:
        hf_split = HF_SPLITS[split]
        if hf_split not in loaded:
            raise DataError(f"{cfg.hf_dataset} ({cfg.hf_config}) has no '{hf_split}' split.")
        out[split] = HFCorpus(
            loaded[hf_split], cfg.src_lang, cfg.tgt_lang,
            f"{cfg.hf_dataset}/{cfg.hf_config} [{hf_split}]",
        )
    return out
