"""Data pipeline speed: preprocessing pairs/s, and loader tokens/s vs a training step.

    python -m benchmarks data [--data-dir ../shared/data/wmt14_sample] [--num-proc 2]
    python -m benchmarks data --pairs 4500000 [--json]   # WMT14 scale: see data_scale.py

What is measured (documented because it decides what the numbers mean):
- Preprocessing: the training split of `--data-dir` (train.{en,de}) encoded with the joint
  BPE (`--vocab-size`, trained first on the same text, not timed) into shards, with
  1 and `--num-proc` encoding processes. Pool start-up is excluded (reported apart);
  reading, encoding, cleaning and writing are included. Reported in sentence pairs/s.
- Loader: `Seq2SeqDataModule.train_dataloader()` on that cache (token-budget batches of
  `--max-tokens` padded tokens, `--num-workers` workers), iterated for
  `--loader-batches` batches. Tokens = non-pad source + target tokens of each batch.
- Training step: Transformer base (`TransformerConfig()` defaults: 6+6 layers, d_model 512,
  d_ff 2048, 8 heads), vocabulary `--model-vocab` (37000, the paper's), fp32, one
  forward + cross-entropy + backward + Adam step per real batch from the same loader with
  a `--model-max-tokens` budget (CPU: small batches keep a few steps under a minute; the
  rate is per token, so it carries over to larger batches to first order). One warm-up
  step, then `--model-steps` timed steps. Same token count as the loader.
- Ratio: loader tokens/s / training tokens/s. The loader should be >= 10x faster, so
  that data loading never limits training.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks import REPO_ROOT, shared_data
from benchmarks.timing import Stopwatch
from nmtbench.data.config import load_data_config
from nmtbench.data.datamodule import Seq2SeqDataModule
from nmtbench.data.prepare import build_tokenizer, prepare
from nmtbench.data.shards import encode_split, encoding_pool, make_progress
from nmtbench.data.sources import open_source

DEFAULT_DATA = shared_data("wmt14_sample")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA,
                        help="directory with train.{en,de}, newstest2013.*, newstest2014.* "
                             "(relative paths: against the repository root)")
    parser.add_argument("--num-proc", type=int, default=2, help="encoding processes to compare with 1")
    parser.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary of the tokenizer")
    parser.add_argument("--max-tokens", type=int, default=4096, help="loader batch budget (padded tokens)")
    parser.add_argument("--num-workers", type=int, default=0, help="loader worker processes")
    parser.add_argument("--loader-batches", type=int, default=300, help="batches timed for the loader")
    parser.add_argument("--model-vocab", type=int, default=37000, help="vocabulary of the Transformer")
    parser.add_argument("--model-max-tokens", type=int, default=1024, help="batch budget of the timed training steps")
    parser.add_argument("--model-steps", type=int, default=3, help="timed training steps (after 1 warm-up)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="keep the cache here (default: a temporary dir)")
    parser.add_argument("--pairs", default=None,
                        help="WMT14-scale mode: prepare corpora of these many pairs (comma list; one value "
                             "above 0.5M also runs 0.5M) and report time, peak RSS, cache size")
    parser.add_argument("--work-dir", default=None, help="--pairs: where the corpora are written (default: tmp)")
    parser.add_argument("--bpe-sample", type=int, default=None,
                        help="--pairs: sentences sampled to train the BPE (data.input_sentence_size; default: "
                             "the data config's default). configs/data/wmt14.yaml: --vocab-size 37000 "
                             "--bpe-sample 2000000")
    parser.add_argument("--json", action="store_true", help="--pairs: end with one JSON line")


def preprocessing(cfg, console: Console) -> list[tuple[int, float, float, float]]:
    """[(processes, pairs/s, pool start-up s, main-process CPU s)] for the training split.

    The main process reads, dispatches and writes; its CPU time shows whether it could
    limit the scaling with more processes.
    """
    corpora = open_source(cfg)
    spm_dir = build_tokenizer(cfg, corpora["train"], console)
    rows = []
    for num_proc in sorted({1, cfg.processes}):
        out = tempfile.mkdtemp(prefix="nmtbench-bench-")
        try:
            start = time.perf_counter()
            with encoding_pool(num_proc) as pool:  # returns when the processes are up
                startup = time.perf_counter() - start
                with make_progress() as progress:
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    stats = encode_split(corpora["train"], "train", out, f"{spm_dir}/spm.model",
                                         cfg.vocab_size, filters=None, pool=pool, progress=progress)
                    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            rows.append((num_proc, stats["total"] / elapsed, startup, cpu))
        finally:
            shutil.rmtree(out, ignore_errors=True)
    return rows


def loader_rate(dm: Seq2SeqDataModule, num_batches: int) -> tuple[float, float, int]:
    """(non-pad tokens/s, padded tokens/s, batches) of the training loader."""
    tokens = padded = batches = 0
    start = time.perf_counter()
    while batches < num_batches:
        for batch in dm.train_dataloader():
            tokens += int(batch["src_lens"].sum()) + int((batch["tgt_out"] != 0).sum())
            padded += batch["src"].numel() + batch["tgt_out"].numel()
            batches += 1
            if batches == num_batches:
                break
    elapsed = time.perf_counter() - start
    return tokens / elapsed, padded / elapsed, batches


def training_rate(dm: Seq2SeqDataModule, vocab_size: int, steps: int) -> tuple[float, float, int]:
    """(non-pad tokens/s, seconds per step, mean tokens per batch) of Transformer-base steps."""
    from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq

    torch.manual_seed(0)
    model = TransformerSeq2Seq(TransformerConfig(), vocab_size, 0).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    batches = iter(dm.train_dataloader())

    def train_step(batch: dict) -> None:
        logits = model(batch["src"], batch["src_lens"], batch["tgt_in"])  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["tgt_out"].flatten(), ignore_index=0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    train_step(next(batches))  # warms up allocations and kernels (not timed)
    watch, tokens = Stopwatch(), 0
    for _ in range(steps):
        batch = next(batches)
        with watch:
            train_step(batch)
        tokens += int(batch["src_lens"].sum()) + int((batch["tgt_out"] != 0).sum())
    elapsed = watch.timing.total
    return tokens / elapsed, elapsed / steps, tokens // steps


def run(args: argparse.Namespace) -> int:
    if args.pairs:
        from benchmarks.data_scale import run_scale

        return run_scale(args)
    console = Console()
    data_dir = args.data_dir if args.data_dir.is_absolute() else REPO_ROOT / args.data_dir
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="nmtbench-bench-cache-"))
    cfg = load_data_config({
        "source": "files", "dir": str(data_dir.resolve()), "valid_prefix": "newstest2013",
        "test_prefix": "newstest2014", "cache_dir": str(cache), "vocab_size": args.vocab_size,
        "num_proc": args.num_proc, "max_tokens": args.max_tokens, "num_workers": args.num_workers,
    })
    try:
        console.rule("Preprocessing")
        pre = preprocessing(cfg, console)
        prepare(cfg, console)

        console.rule("Loader vs training step")
        dm = Seq2SeqDataModule(cfg, seed=0)
        dm.setup("fit")
        loader_tok, loader_padded, n_batches = loader_rate(dm, args.loader_batches)
        model_dm = Seq2SeqDataModule({**_as_dict(cfg), "max_tokens": args.model_max_tokens, "num_workers": 0}, seed=0)
        model_dm.setup("fit")
        train_tok, step_s, batch_tokens = training_rate(model_dm, args.model_vocab, args.model_steps)
    finally:
        if args.cache_dir is None:
            shutil.rmtree(cache, ignore_errors=True)

    load = os.getloadavg()[0]
    table = Table(title=f"Data pipeline on {data_dir.resolve()} ({os.cpu_count()} CPUs, load {load:.1f}, "
                        f"{torch.get_num_threads()} torch threads)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for num_proc, rate, startup, cpu in pre:
        table.add_row(f"preprocessing, {num_proc} process(es)",
                      f"{rate:,.0f} pairs/s (+{startup:.1f} s start-up; main process {cpu:.1f} CPU s)")
    if len(pre) > 1:
        table.add_row("preprocessing speed-up", f"{pre[-1][1] / pre[0][1]:.2f}x with {pre[-1][0]} processes")
    table.add_row(f"loader ({args.max_tokens} tokens, {args.num_workers} workers, {n_batches} batches)",
                  f"{loader_tok:,.0f} tokens/s ({loader_padded:,.0f} padded)")
    table.add_row(f"Transformer-base fp32 step ({args.model_max_tokens}-token batches, ~{batch_tokens} tokens)",
                  f"{train_tok:,.0f} tokens/s ({step_s:.2f} s/step)")
    ratio = loader_tok / train_tok
    table.add_row("loader / training", f"{ratio:,.0f}x ({'ok' if ratio >= 10 else 'BELOW the 10x target'})")
    console.print(table)
    return 0


def _as_dict(cfg) -> dict:
    from dataclasses import asdict

    return asdict(cfg)
