"""Binarized splits: encode text with several processes into memory-mapped shards.

On disk, per split and side (`src`, `tgt`):

    {split}.{side}.bin       all token ids of the split, concatenated (uint16 if vocab <= 65536)
    {split}.{side}.idx.npy   int64 offsets (N + 1,): example i is bin[offsets[i]:offsets[i + 1]]

No BOS/EOS is stored; the collator adds them. Training pairs are cleaned here (empty,
longer than `max_len`, extreme length ratio) and every drop is counted by reason;
valid/test are never filtered, so their example i is line i of the raw text.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import sentencepiece as spm
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nmtbench.errors import DataError

if TYPE_CHECKING:  # workers import this module: keep its imports light
    from nmtbench.data.sources import Corpus

CHUNK_PAIRS = 2000  # pairs per encoding task
IN_FLIGHT = 32  # chunks submitted to the workers ahead of the writer
DROP_REASONS = ("empty", "too_long", "length_ratio")


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass(frozen=True)
class Filters:
    """Training-pair cleaning; `None` for valid/test (never filtered)."""

    max_len: int
    max_len_ratio: float | None


@dataclass
class EncodedChunk:
    src_ids: np.ndarray  # (sum of kept source lengths,) ids
    src_lens: np.ndarray  # (kept,) int64
    tgt_ids: np.ndarray
    tgt_lens: np.ndarray
    dropped: Counter  # reason -> count


# One SentencePiece processor per process (the pool initializer loads it).
_PROCESSOR: dict[str, spm.SentencePieceProcessor] = {}


def _processor(model_path: str) -> spm.SentencePieceProcessor:
    if model_path not in _PROCESSOR:
        _PROCESSOR.clear()
        _PROCESSOR[model_path] = spm.SentencePieceProcessor(model_file=model_path)
    return _PROCESSOR[model_path]


def drop_reason(src: str, tgt: str, n_src: int, n_tgt: int, filters: Filters) -> str | None:
    """Why a training pair is dropped (None = kept). Lengths are in subword tokens."""
    if not src.strip() or not tgt.strip():
        return "empty"
    if n_src > filters.max_len or n_tgt > filters.max_len:
        return "too_long"
    if filters.max_len_ratio is not None and max(n_src, n_tgt) > filters.max_len_ratio * max(1, min(n_src, n_tgt)):
        return "length_ratio"
    return None


def encode_chunk(args: tuple[str, list[str], list[str], Filters | None, str]) -> EncodedChunk:
    """Encode (and, for training, filter) one chunk of pairs. Runs in a worker process."""
    model_path, src, tgt, filters, dtype = args
    sp = _processor(model_path)
    src_ids, tgt_ids = sp.encode(src), sp.encode(tgt)
    dropped: Counter = Counter()
    if filters is not None:
        keep = []
        for i, (s, t) in enumerate(zip(src, tgt)):
            reason = drop_reason(s, t, len(src_ids[i]), len(tgt_ids[i]), filters)
            if reason is None:
                keep.append(i)
            else:
                dropped[reason] += 1
        src_ids = [src_ids[i] for i in keep]
        tgt_ids = [tgt_ids[i] for i in keep]

    def flat(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        ids = np.fromiter(itertools.chain.from_iterable(seqs), dtype=dtype, count=int(lens.sum()))
        return ids, lens

    (si, sl), (ti, tl) = flat(src_ids), flat(tgt_ids)
    return EncodedChunk(si, sl, ti, tl, dropped)


def make_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
    )


def _ready(x: int) -> int:
    return x


@contextlib.contextmanager
def encoding_pool(num_proc: int) -> Iterator[ProcessPoolExecutor | None]:
    """`num_proc` worker processes for `encode_split` (None when num_proc == 1).

    "spawn" rather than "fork": the caller may run threads (rich, torch) that must not be
    forked mid-operation. Each worker imports the `__main__` script and this module, which
    costs a second or two once per prepare; returns when the workers are up. A worker that
    cannot start or dies raises a DataError instead of hanging.
    """
    if num_proc <= 1:
        yield None
        return
    pool = ProcessPoolExecutor(num_proc, mp_context=mp.get_context("spawn"))
    try:
        try:
            list(pool.map(_ready, range(num_proc)))  # wait until the workers have started
        except BrokenProcessPool as exc:
            raise DataError(
                f"The {num_proc} encoding worker processes could not start ({exc}). "
                "Run with data.num_proc=1 to encode in this process."
            ) from exc
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def encode_split(
    corpus: Corpus,
    split: str,
    out_dir: str,
    model_path: str,
    vocab_size: int,
    *,
    filters: Filters | None,
    pool: ProcessPoolExecutor | None = None,
    progress: Progress | None = None,
    raw_text: bool = False,
) -> dict[str, int]:
    """Encode `corpus` into `out_dir`/{split}.{src,tgt}.{bin,idx.npy}; returns counts.

    Chunks of pairs are encoded by `pool` (in this process when None). With `raw_text`,
    also writes the untokenized lines to {split}.{src,tgt}.txt (the BLEU references).
    Returns {"total", "kept", "empty", "too_long", "length_ratio"}.
    """
    dtype = id_dtype(vocab_size)
    lens: dict[str, list[np.ndarray]] = {"src": [], "tgt": []}
    dropped: Counter = Counter()
    files = {side: open(os.path.join(out_dir, f"{split}.{side}.bin"), "wb") for side in ("src", "tgt")}
    texts = (
        {side: open(os.path.join(out_dir, f"{split}.{side}.txt"), "w", encoding="utf-8", newline="\n")
         for side in ("src", "tgt")}
        if raw_text else {}
    )
    task = progress.add_task(f"encode {split}", total=len(corpus), rate="") if progress else None

    def tasks():
        for src, tgt in corpus.chunks(CHUNK_PAIRS):
            if texts:
                texts["src"].writelines(s + "\n" for s in src)
                texts["tgt"].writelines(t + "\n" for t in tgt)
            yield model_path, src, tgt, filters, dtype.str

    total, start = 0, time.perf_counter()
    try:
        results = _ordered(pool, tasks(), IN_FLIGHT) if pool else map(encode_chunk, tasks())
        for chunk in results:
            chunk.src_ids.tofile(files["src"])
            chunk.tgt_ids.tofile(files["tgt"])
            lens["src"].append(chunk.src_lens)
            lens["tgt"].append(chunk.tgt_lens)
            dropped.update(chunk.dropped)
            n = len(chunk.src_lens) + sum(chunk.dropped.values())
            total += n
            if progress is not None:
                rate = f"{total / max(time.perf_counter() - start, 1e-9):,.0f} pairs/s"
                progress.update(task, advance=n, rate=rate)
    finally:
        for f in (*files.values(), *texts.values()):
            f.close()
    for side in ("src", "tgt"):
        side_lens = np.concatenate(lens[side]) if lens[side] else np.zeros(0, np.int64)
        offsets = np.zeros(len(side_lens) + 1, dtype=np.int64)
        np.cumsum(side_lens, out=offsets[1:])
        np.save(os.path.join(out_dir, f"{split}.{side}.idx.npy"), offsets)
    kept = total - sum(dropped.values())
    return {"total": total, "kept": kept, **{r: dropped.get(r, 0) for r in DROP_REASONS}}


def _ordered(pool: ProcessPoolExecutor, tasks: Iterator, window: int) -> Iterator[EncodedChunk]:
    """Results of `encode_chunk` over `tasks` in order, with at most `window` in flight
    (Executor.map would read the whole corpus into its queue at once)."""
    pending: deque[Future] = deque()
    try:
        for task in tasks:
            pending.append(pool.submit(encode_chunk, task))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BrokenProcessPool as exc:
        raise DataError(
            f"An encoding worker process died ({exc}); out of memory? "
            "Retry with a smaller data.num_proc (1 encodes in this process)."
        ) from exc


class TokenShard:
    """Read side of one split and side: memory-mapped ids + offsets.

    Opened lazily, so the object pickles cheaply into DataLoader workers (each worker
    maps the file itself instead of receiving a copy).
    """

    def __init__(self, directory: str, split: str, side: str, dtype: str):
        self.bin_path = os.path.join(directory, f"{split}.{side}.bin")
        self.offsets = np.load(os.path.join(directory, f"{split}.{side}.idx.npy"))
        self.dtype = np.dtype(dtype)
        self._ids: np.ndarray | None = None

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            if os.path.getsize(self.bin_path) == 0:
                self._ids = np.zeros(0, dtype=self.dtype)
            else:
                self._ids = np.memmap(self.bin_path, dtype=self.dtype, mode="r")
        return self._ids

    @property
    def lengths(self) -> np.ndarray:
        """(N,) number of ids of each example (without BOS/EOS)."""
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_ids"] = None
        return state
