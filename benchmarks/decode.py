"""Decoding speed: nmtbench beam search (beam 4) and greedy search vs HF generate(), equal
work, each in fp32 and in bf16.

    python -m benchmarks decode [--json] [--num-sentences 320] [--batch-size 32] [--beam-size 4]
        [--precisions fp32,bf16] [--rounds 3]

Setup (documented because it decides what the numbers mean):
- Model: Transformer base (Vaswani et al. 2017: 6+6 layers, d_model 512, 8 heads, d_ff 2048,
  shared embeddings), vocabulary 37000, random weights, fp32 weights, eval mode.
- Input: the first N lines of newstest2014.en. No tokenizer is trained: every whitespace
  token becomes 1 subword id (2 with probability 0.3, about the pieces-per-word ratio of a
  37k joint BPE), ids drawn at random from [4, V), plus EOS. So the source lengths follow
  the real length distribution; the ids carry no meaning.
- Equal work: random weights would stop at arbitrary lengths, so EOS is disabled and every
  system runs exactly T_b decoder steps for every sentence of batch b, where T_b is the
  longest source (in ids) of the batch: nmtbench gets EOS masked out of the logits and its
  maximum output length set to T_b - 1 (+ the forced EOS = T_b steps); HF gets
  `min_new_tokens = max_new_tokens = T_b`. Batches are length-sorted, as in evaluation.
- HF: `transformers.MarianMTModel` with the same dimensions (post-norm, sinusoidal
  positions, scaled and tied embeddings: the same architecture), `generate(num_beams=4)` and
  `generate(num_beams=1)` (greedy), run when `transformers` is installed (`bench` extra);
  each with HF's default attention (SDPA: `hf`, `hf_greedy`) and with its eager attention
  (`hf_eager`, `hf_greedy_eager`; same weights), as the faster differs by precision on CPU.
- Precisions (`--precisions`, benchmarks/precisions.py): fp32, and bf16 = autocast to
  bfloat16 around the whole search (ours: every encode/decode call, as evaluate.py and
  translate.py decode a bf16-mixed checkpoint, `nmtbench.precision.decoding_context`; HF:
  around `generate()`), the same for both. Default: both where the CPU computes bf16
  natively, else fp32 with the reason printed. The search without the cache runs in fp32
  only (in the first precision when fp32 is not among them).
- Systems alternate batch by batch (rotating order over system x precision), so load from
  other processes on a shared machine hits all of them alike. Without the cache the search
  is quadratic in length (and the interface's `decode(prefix, memory, None)` projects every
  position onto the vocabulary, as fairseq's non-incremental path does), so
  `--no-cache-batches` batches spread over the length range run without it and are compared
  with the cached search on those.
- Rounds: batch i belongs to round i mod `--rounds` (so each round spans the length range);
  every ratio is computed per round and reported as its median over rounds with its spread,
  (max - min) / median.
Reported: sentences/s and generated tokens/s per system and precision, and each system's
best (faster) precision; in the JSON line that `--json` prints last, `speedup_vs_peer` (beam,
ours / HF with its default attention) and `speedup_vs_peer_greedy` in fp32,
`speedup_vs_peer_best` and `speedup_vs_peer_greedy_best` with each system at its best
precision (HF: at its faster attention too), a `_spread` for each, and `cache_vs_no_cache`.
A full run takes about 3-7 minutes on 2 idle cores (host-dependent; bf16 adds about half the
fp32 time of the four cached searches); measured figures: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks import peers, precisions, shared_data
from benchmarks.timing import Stopwatch
from nmtbench.decoding import beam_search, greedy_search
from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq

PAD, BOS, EOS = 0, 2, 3
DEFAULT_INPUT = shared_data("wmt14_sample") / "newstest2014.en"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="English source text (one sentence a line)")
    parser.add_argument("--num-sentences", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=32, help="sentences per batch (x beam rows)")
    parser.add_argument("--beam-size", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=37000)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--systems", default="cache,hf,hf_eager,greedy,hf_greedy,hf_greedy_eager,no_cache",
                        help="comma-separated subset of cache,hf,hf_eager,greedy,hf_greedy,hf_greedy_eager,no_cache")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of every figure")
    parser.add_argument("--no-cache-batches", type=int, default=2,
                        help="batches (spread over the length range) decoded without the cache")
    precisions.add_argument(parser)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds (batch i in round i mod rounds); each ratio is the median over rounds")
    parser.add_argument("--seed", type=int, default=0)


def fake_tokenize(lines: list[str], vocab_size: int, seed: int) -> list[Tensor]:
    """Whitespace tokens -> 1 or 2 random ids each (see the module docstring), plus EOS."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for line in lines:
        words = max(1, len(line.split()))
        n = words + int((torch.rand(words, generator=g) < 0.3).sum())
        out.append(torch.cat([torch.randint(4, vocab_size, (n,), generator=g), torch.tensor([EOS])]))
    return out


def make_batches(seqs: list[Tensor], batch_size: int) -> list[tuple[Tensor, Tensor]]:
    """Length-sorted batches: (src (B, S) right-padded, src_lens (B,))."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    batches = []
    for start in range(0, len(order), batch_size):
        chunk = [seqs[i] for i in order[start : start + batch_size]]
        lens = torch.tensor([len(s) for s in chunk])
        src = torch.full((len(chunk), int(lens.max())), PAD)
        for row, s in enumerate(chunk):
            src[row, : len(s)] = s
        batches.append((src, lens))
    return batches


class FixedLength(nn.Module):
    """Wraps a model so beam search runs a fixed number of steps: EOS never wins before the
    forced EOS, and `encode` masks with the true lengths whatever `src_lens` the search got
    (the search derives the maximum output length from the `src_lens` it is given)."""

    def __init__(self, model: nn.Module, true_lens: Tensor):
        super().__init__()
        self.model, self.true_lens = model, true_lens
        self.shares_memory_across_beams = getattr(model, "shares_memory_across_beams", False)

    def encode(self, src, src_lens):
        return self.model.encode(src, self.true_lens)

    def decode(self, prev_tokens, memory, cache=None):
        logits, cache = self.model.decode(prev_tokens, memory, cache)
        logits[..., EOS] = -1e4  # never chosen before the forced EOS (random logits are O(1))
        return logits, cache

    def reorder_cache(self, cache, index):
        return self.model.reorder_cache(cache, index)


def run_nmtbench(model, batches, beam_size: int, use_cache: bool, precision: str = "fp32") -> tuple[float, int]:
    """Seconds and generated tokens (EOS included) for all batches (beam 1: greedy search)."""
    tokens, device = 0, batches[0][0].device
    with Stopwatch(device) as watch, precisions.context(precision, device):
        for src, lens in batches:
            steps = int(lens.max())
            wrapped = FixedLength(model, lens)
            kw = dict(max_len_b=0, bos_id=BOS, eos_id=EOS, pad_id=PAD, use_cache=use_cache)
            max_lens = torch.full_like(lens, steps - 1)
            if beam_size > 1:
                hyps = beam_search(wrapped, src, max_lens, beam_size=beam_size, **kw)
            else:
                hyps = greedy_search(wrapped, src, max_lens, **kw)
            assert all(len(h) == steps - 1 for h in hyps)
            tokens += len(hyps) * steps
    return watch.timing.total, tokens


def run_hf(model, batches, beam_size: int, precision: str = "fp32") -> tuple[float, int]:
    tokens, device = 0, batches[0][0].device
    # no_grad, as generate() itself uses: under inference_mode autocast re-casts every weight every step
    with torch.no_grad(), Stopwatch(device) as watch, precisions.context(precision, device):
        for src, lens in batches:
            steps = int(lens.max())
            mask = (torch.arange(src.size(1))[None] < lens[:, None]).long()
            beam = dict(length_penalty=0.6, early_stopping=False) if beam_size > 1 else {}
            out = model.generate(input_ids=src, attention_mask=mask, num_beams=beam_size, do_sample=False,
                                 max_new_tokens=steps, min_new_tokens=steps, **beam)
            assert out.size(1) == steps + 1  # decoder start token + T_b generated tokens
            tokens += src.size(0) * steps
    return watch.timing.total, tokens


LABELS = {"cache": "nmtbench beam (cache)", "no_cache": "nmtbench beam (no cache)",
          "hf": "HF MarianMT generate() beam", "hf_eager": "HF generate() beam, eager attn",
          "greedy": "nmtbench greedy", "hf_greedy": "HF generate() greedy",
          "hf_greedy_eager": "HF generate() greedy, eager attn"}
RATIOS = {"speedup_vs_peer": ("cache", ("hf", "hf_eager")),  # HF's variants: fp32 the first, _best the fastest
          "speedup_vs_peer_greedy": ("greedy", ("hf_greedy", "hf_greedy_eager"))}
RATE = "sentences_per_s_rounds"  # one sentences/s per round: what the ratios are computed from


def figures(rows: dict[int, tuple[float, int, int]], rounds: int) -> dict:
    """A system's figures in one precision from {batch index: (seconds, tokens, sentences)};
    batch i counts in round i mod `rounds` (rounds without its batches are left out)."""
    secs, toks, sents = (sum(v[k] for v in rows.values()) for k in range(3))
    per_round = [[v for i, v in rows.items() if i % rounds == r] for r in range(rounds)]
    return {"sentences_per_s": sents / secs, "tokens_per_s": toks / secs, "sentences": sents, "seconds": secs,
            RATE: [sum(v[2] for v in vs) / sum(v[0] for v in vs) for vs in per_round if vs]}


def ratios(systems: dict[str, dict]) -> dict[str, float | None]:
    """RATIOS (beam and greedy, ours / HF) as medians over rounds with their spreads: in fp32,
    and `_best` with each system at its best precision."""
    return precisions.ratios(systems, RATIOS, tuple(RATIOS), RATE)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    lines = args.input.read_text(encoding="utf-8").splitlines()[: args.num_sentences]
    batches = make_batches(fake_tokenize(lines, args.vocab_size, args.seed), args.batch_size)
    torch.manual_seed(args.seed)
    cfg = TransformerConfig(dropout=0.0)
    model = TransformerSeq2Seq(cfg, vocab_size=args.vocab_size, pad_id=PAD).eval()
    n = len(lines)
    src_tokens = sum(int(lens.sum()) for _, lens in batches)
    precs, note = precisions.resolve(args.precisions, device)
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    rounds = min(args.rounds, len(batches))
    load_start = os.getloadavg()[0]
    print(f"[decode] {n} sentences of {args.input.name} ({src_tokens / n:.1f} source ids on average), "
          f"{len(batches)} length-sorted batches of {args.batch_size} in {rounds} rounds, beam {args.beam_size}, "
          f"Transformer base, vocab {args.vocab_size}, precisions {','.join(precs)}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, cpu, load {load_start:.1f}", flush=True)
    if note:
        print(f"[decode] {note}")
    if rounds < args.rounds:
        print(f"[decode] --rounds {args.rounds}: only {len(batches)} batches, so {rounds} rounds")

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    K = args.beam_size
    runners = {
        "cache": lambda b, p: run_nmtbench(model, [b], K, use_cache=True, precision=p),
        "no_cache": lambda b, p: run_nmtbench(model, [b], K, use_cache=False, precision=p),
        "greedy": lambda b, p: run_nmtbench(model, [b], 1, use_cache=True, precision=p),
    }
    reason = peers.missing("transformers")
    if reason is None:
        hf_model = peers.marian(cfg, args.vocab_size).eval()
        hf_eager = peers.marian(cfg, args.vocab_size, attention="eager").eval()
        hf_eager.load_state_dict(hf_model.state_dict())
        runners["hf"] = lambda b, p: run_hf(hf_model, [b], K, precision=p)
        runners["hf_eager"] = lambda b, p: run_hf(hf_eager, [b], K, precision=p)
        runners["hf_greedy"] = lambda b, p: run_hf(hf_model, [b], 1, precision=p)
        runners["hf_greedy_eager"] = lambda b, p: run_hf(hf_eager, [b], 1, precision=p)
    elif {"hf", "hf_eager", "hf_greedy", "hf_greedy_eager"} & set(systems):
        print(f"[decode] {reason}")
    systems = [s for s in systems if s in runners]
    # Every system in every precision, but the slow search without the cache in one only.
    no_cache_precision = "fp32" if "fp32" in precs else precs[0]
    units = [(name, p) for name in systems for p in precs if name != "no_cache" or p == no_cache_precision]
    # The no-cache search is O(T^2) and slow: it runs on `--no-cache-batches` batches at the
    # centres of equal slices of the length-sorted list (one batch = the median lengths); its
    # ratio is taken against the cached search on the same batches.
    k = min(len(batches), max(1, args.no_cache_batches))
    no_cache_ids = {int((j + 0.5) * len(batches) / k) for j in range(k)}
    for name, p in units:  # warm-up on the shortest batch (not timed)
        runners[name](batches[0], p)
    # Units alternate batch by batch (rotating order), so load on a shared machine hits all alike.
    times: dict[tuple[str, str], dict[int, tuple[float, int, int]]] = {unit: {} for unit in units}
    for i, batch in enumerate(batches):
        order = units[i % len(units):] + units[: i % len(units)]
        for name, p in order:
            if name == "no_cache" and i not in no_cache_ids:
                continue
            seconds, tokens = runners[name](batch, p)
            times[name, p][i] = (seconds, tokens, batch[0].size(0))
        print(f"  batch {i + 1}/{len(batches)} (round {i % rounds + 1}, {tuple(batch[0].shape)}): "
              + ", ".join(f"{name} {p} {times[name, p][i][0]:.1f} s" for name, p in order if i in times[name, p]),
              flush=True)

    results: dict = {"beam_size": K, "num_sentences": n, "threads": torch.get_num_threads(), "precisions": precs,
                     "precisions_note": note, "rounds": rounds, "load_avg_start": load_start,
                     "versions": {"torch": torch.__version__}, "systems": {}}
    several = len(precs) > 1
    for name in systems:
        per = {p: figures(times[name, p], rounds) for p in precs if (name, p) in times}
        entry = results["systems"][name] = precisions.system_entry(per, RATE)
        for p, f in per.items():
            mark = "*" if several and len(per) > 1 and p == entry["best_precision"] else " "
            print(f"  {LABELS[name]:<32} {p:4}{mark} {f['sentences']:5d} sentences {f['seconds']:8.1f} s  "
                  f"{f['sentences_per_s']:7.2f} sentences/s  {f['tokens_per_s']:8.1f} tokens/s")
    if several:
        print("  * the system's faster precision")

    results.update(ratios(results["systems"]))
    common = set(times.get(("no_cache", no_cache_precision), {}))
    cache = times.get(("cache", no_cache_precision), {})

    def rate(rows: dict[int, tuple[float, int, int]]) -> float:
        rows = [v for i, v in rows.items() if i in common]
        return sum(r[2] for r in rows) / sum(r[0] for r in rows)

    results.update(cache_vs_no_cache=rate(cache) / rate(times["no_cache", no_cache_precision])
                   if common and cache else None, load_avg_end=os.getloadavg()[0])
    labels = {"speedup_vs_peer": f"nmtbench / HF generate(), beam {K}:",
              "speedup_vs_peer_best": f"each at its best (precision, HF's attention), beam {K}:",
              "speedup_vs_peer_greedy": "nmtbench / HF generate(), greedy:",
              "speedup_vs_peer_greedy_best": "each at its best (precision, HF's attention), greedy:"}
    for line in precisions.ratio_lines(results, RATIOS, tuple(RATIOS), RATE, labels, width=54):
        print(f"  {line}")
    if results["cache_vs_no_cache"] is not None:
        print(f"  cache / no cache (same {len(common)} batches, {no_cache_precision}): "
              f"{results['cache_vs_no_cache']:.2f}x")
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0
