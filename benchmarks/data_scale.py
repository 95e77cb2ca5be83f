"""Data preparation at WMT14 scale: `python -m benchmarks data --pairs 4500000`.

What is measured (documented because it decides what the numbers mean):
- Corpus: the training pairs of `--data-dir` (the 38.7k-pair WMT14 sample) repeated up to
  `--pairs` pairs, each line prefixed with its running index ("17 ", "38756 ", ...) so no two
  lines are equal; valid/test are the sample's newstest2013/2014. Writing it is not timed.
- Preparation: `nmtbench.data.prepare.prepare` on it, as `scripts/prepare_data.py` runs it
  (data=files, the data config's defaults: joint BPE of `--vocab-size` trained on a
  `--bpe-sample`-sentence sample (default 1M; WMT14's config: 37000 pieces, 2M sentences),
  `data.num_proc` encoding processes, shards), in a fresh Python process
  so nothing is cached. Timed end to end, with the BPE training reported apart (a fixed cost:
  the sample does not grow with the corpus) from the pass over the corpus (sampling, encoding,
  writing), whose time should grow linearly with the pairs.
- Peak RSS: the largest sum of the resident memory of the preparing process and all its
  children (the encoding workers), polled every 0.2 s from /proc.
- With one `--pairs` value above 0.5M, a 0.5M-pair point is run first for the linearity check.
Targets (issue 12): 4.5M pairs in <= 10 minutes and <= 4 GB on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REFERENCE_PAIRS = 500_000

PREPARE = """
import json, sys, time
from rich.console import Console
from nmtbench.data.prepare import prepare
start = time.perf_counter()
prepared = prepare(json.loads(sys.argv[1]), Console(stderr=True))
print(json.dumps({"seconds": time.perf_counter() - start, "dir": prepared.dir, "kept": prepared.stats["train"]["kept"]}))
"""


def write_corpus(data_dir: Path, out: Path, pairs: int) -> None:
    """out/train.{en,de}: the sample's training pairs repeated to `pairs`, index-prefixed."""
    out.mkdir(parents=True, exist_ok=True)
    src = (data_dir / "train.en").read_text(encoding="utf-8").splitlines()
    tgt = (data_dir / "train.de").read_text(encoding="utf-8").splitlines()
    n = len(src)
    with open(out / "train.en", "w", encoding="utf-8") as fs, open(out / "train.de", "w", encoding="utf-8") as ft:
        for start in range(0, pairs, n):
            stop = min(pairs, start + n)
            fs.write("".join(f"{i} {src[i - start]}\n" for i in range(start, stop)))
            ft.write("".join(f"{i} {tgt[i - start]}\n" for i in range(start, stop)))
    for prefix in ("newstest2013", "newstest2014"):
        for lang in ("en", "de"):
            target = out / f"{prefix}.{lang}"
            if not target.exists():
                target.symlink_to((data_dir / f"{prefix}.{lang}").resolve())


def _tree_rss(pid: int) -> int:
    """Resident bytes of `pid` and all its descendants (0 once it has exited)."""
    children: dict[int, list[int]] = {}
    rss = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def prepare_point(data_dir: Path, pairs: int, vocab_size: int, num_proc: int, work: Path,
                  bpe_sample: int | None = None) -> dict:
    corpus = work / f"corpus-{pairs}"
    t0 = time.perf_counter()
    write_corpus(data_dir, corpus, pairs)
    written = time.perf_counter() - t0
    cache = work / f"cache-{pairs}"
    cfg = {"source": "files", "dir": str(corpus), "valid_prefix": "newstest2013", "test_prefix": "newstest2014",
           "cache_dir": str(cache), "vocab_size": vocab_size, "num_proc": num_proc}
    if bpe_sample:
        cfg["input_sentence_size"] = bpe_sample
    proc = subprocess.Popen([sys.executable, "-c", PREPARE, json.dumps(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    peak, done = 0, threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            done.wait(0.2)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    out, err = proc.communicate()
    done.set()
    watcher.join()
    if proc.returncode != 0:
        raise SystemExit(f"prepare of {pairs:,} pairs failed (exit {proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    bpe = _bpe_seconds(err)
    size = sum(f.stat().st_size for f in Path(result["dir"]).rglob("*") if f.is_file())
    return {"pairs": pairs, "seconds": result["seconds"], "bpe_seconds": bpe,
            "corpus_seconds": result["seconds"] - (bpe or 0.0), "pairs_per_s": pairs / result["seconds"],
            "peak_rss_bytes": peak, "cache_bytes": size, "kept": result["kept"], "corpus_write_seconds": written,
            "corpus_bytes": sum((corpus / f"train.{lang}").stat().st_size for lang in ("en", "de"))}


def _bpe_seconds(log: str) -> float | None:
    """The 'Trained the tokenizer ... in X s' figure that prepare prints."""
    for line in log.splitlines():
        if "Trained the tokenizer" in line and " in " in line:
            try:
                return float(line.rsplit(" in ", 1)[1].split()[0])
            except ValueError:
                return None
    return None


def run_scale(args) -> int:
    from benchmarks import REPO_ROOT

    data_dir = args.data_dir if args.data_dir.is_absolute() else REPO_ROOT / args.data_dir
    points = [int(p) for p in str(args.pairs).split(",")]
    if len(points) == 1 and points[0] > REFERENCE_PAIRS:
        points.insert(0, REFERENCE_PAIRS)
    work = Path(tempfile.mkdtemp(prefix="nmtbench-data-scale-", dir=args.work_dir))
    print(f"[data --pairs] points {points}, {args.num_proc} encoding processes, BPE vocab {args.vocab_size} "
          f"(sample {args.bpe_sample or 'default'}), "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; work dir {work}", flush=True)
    rows = []
    try:
        for pairs in points:
            row = prepare_point(data_dir.resolve(), pairs, args.vocab_size, args.num_proc, work,
                                args.bpe_sample)
            rows.append(row)
            print(f"  {pairs:>9,} pairs: {row['seconds']:7.1f} s ({row['pairs_per_s']:,.0f} pairs/s; BPE "
                  f"{row['bpe_seconds'] or float('nan'):.1f} s, corpus pass {row['corpus_seconds']:.1f} s), peak RSS "
                  f"{row['peak_rss_bytes'] / 2**30:.2f} GiB, cache {row['cache_bytes'] / 2**20:,.0f} MiB", flush=True)
            shutil.rmtree(work / f"corpus-{pairs}", ignore_errors=True)
            shutil.rmtree(work / f"cache-{pairs}", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = {"points": rows, "load_avg_end": os.getloadavg()[0], "vocab_size": args.vocab_size,
               "bpe_sample": args.bpe_sample}
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        summary["corpus_time_ratio"] = b["corpus_seconds"] / a["corpus_seconds"]
        summary["pairs_ratio"] = b["pairs"] / a["pairs"]
        print(f"  corpus pass time x{summary['corpus_time_ratio']:.2f} for x{summary['pairs_ratio']:.1f} the pairs "
              f"(linear = equal)")
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    return 0
