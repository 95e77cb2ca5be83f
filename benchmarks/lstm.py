"""Training tokens/s of the LSTM baselines: input feeding vs none vs no attention.

    python -m benchmarks lstm [--sizes small,paper] [--variants feed,nofeed,none]

Setup (documented because it decides what the numbers mean):
- Models: `nmtbench.models.lstm.LSTMSeq2Seq`, random weights, fp32, train mode (dropout on),
  on whatever device `--device` names (CPU by default).
  small: 2 layers, 256 units, 256-dim embeddings, vocabulary 8000 (the smoke/mini scale);
  paper: 4 layers, 1000 units, 1000-dim embeddings, vocabulary 50000 (Luong et al. 2015).
- Variants: `feed` = luong attention (dot) with input feeding (Python loop over target
  steps, `nmtbench.models.recurrence`), `nofeed` = the same attention without input feeding (one
  nn.LSTM call over the whole target + batched attention), `none` = no attention
  (Sutskever et al. 2014); `bahdanau` / `bahdanau-nofeed` optional.
- One training step = forward + cross-entropy + backward (no optimiser update) on a batch of
  `--batch-size` random sentences, every source and target exactly `--length` tokens (no
  padding, so tokens/s is not diluted by pad positions). `--warmup` untimed steps, then the
  median of `--steps` timed steps.
Reported: wall and process-CPU ms/step, target tokens per wall second and per CPU second
(the unit of Luong et al. 2015: "1K target words per second" on a K40), speed relative to
`none`, and analytic GFLOP per CPU second (`model.flops_per_batch`). On a shared machine run
with `--threads 1` and read the CPU columns: other processes stretch the wall clock.

Then, for the input-feeding decoder loop alone (decoder + attention + output layer, fwd +
bwd), two ways to run the steps of the stacked LSTM: lstm.py's loop (one [x; h] product per
layer on the nn.LSTM's weights, gradients of shared weights deferred) vs calling the
nn.LSTM itself on a length-1 sequence.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from benchmarks.timing import time_calls
from nmtbench.models.lstm import LSTMConfig, LSTMSeq2Seq

SIZES = {
    "small": dict(num_layers=2, hidden_size=256, embed_dim=256, vocab=8000),
    "paper": dict(num_layers=4, hidden_size=1000, embed_dim=1000, vocab=50000),
}
VARIANTS = {
    "feed": dict(attention="luong", input_feeding=True),
    "nofeed": dict(attention="luong", input_feeding=False),
    "none": dict(attention="none", input_feeding=False),
    "bahdanau": dict(attention="bahdanau", input_feeding=True),
    "bahdanau-nofeed": dict(attention="bahdanau", input_feeding=False),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="small,paper", help="subset of small,paper")
    parser.add_argument("--variants", default="feed,nofeed,none",
                        help=f"comma-separated subset of {','.join(VARIANTS)}")
    parser.add_argument("--batch-size", type=int, default=0,
                        help="sentences per batch (0 = 64 for small, 16 for paper)")
    parser.add_argument("--length", type=int, default=25, help="source = target length in tokens")
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0 = 5 small, 2 paper)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--no-step-compare", action="store_true",
                        help="skip the lstm.py loop vs nn.LSTM-per-step comparison")
    parser.add_argument("--seed", type=int, default=0)


def _time(fn, device: torch.device, warmup: int, steps: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of `fn()` over `steps` runs after `warmup`
    (`benchmarks.timing`: CPU time is the robust number on a shared machine)."""
    timing = time_calls(fn, device, warmup, steps)
    return timing.median, timing.median_cpu


def _batch(B: int, length: int, vocab: int, device: torch.device, seed: int):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, vocab, (B, length), generator=g).to(device)
    tgt = torch.randint(4, vocab, (B, length), generator=g).to(device)
    lens = torch.full((B,), length, device=device)
    return src, lens, tgt


def _train_step(model: LSTMSeq2Seq, src, lens, tgt) -> None:
    model.zero_grad(set_to_none=True)
    logits = model(src, lens, tgt)  # (B, T, V); the labels are the inputs: cost is the same
    F.cross_entropy(logits.flatten(0, 1), tgt.flatten()).backward()


def _nn_lstm_feed_loop(model: LSTMSeq2Seq, emb, memory):
    """The luong input-feeding loop of lstm.py, but one nn.LSTM call (seq_len 1) per step."""
    h = memory["h"].transpose(0, 1).contiguous()  # (L, B, H)
    c = memory["c"].transpose(0, 1).contiguous()
    feed = emb.new_zeros(emb.size(0), model.cfg.hidden_size)
    outs = []
    for t in range(emb.size(1)):
        x = torch.cat([emb[:, t], feed], dim=1).unsqueeze(1)  # (B, 1, E + H)
        out, (h, c) = model.decoder(x, (h, c))  # (B, 1, H)
        context, _ = model._attend(out, memory)
        feed = model.drop(torch.tanh(model.combine(torch.cat([context, out], -1)))).squeeze(1)
        outs.append(feed)
    return torch.stack(outs, 1)  # (B, T, H)


def _compare_step_impls(model: LSTMSeq2Seq, src, lens, tgt, device, warmup, steps) -> dict:
    with torch.no_grad():
        memory = {k: v.detach() for k, v in model.encode(src, lens).items()}
    emb = model.tgt_embed(tgt)  # (B, T, E)

    def cell_stack():
        h, c = list(memory["h"].unbind(1)), list(memory["c"].unbind(1))
        feed = emb.new_zeros(emb.size(0), model.cfg.hidden_size)
        out = model._feed_loop(emb.detach().requires_grad_(), h, c, feed, memory)[0]
        model.output(out).sum().backward()

    def nn_lstm_per_step():
        out = _nn_lstm_feed_loop(model, emb.detach().requires_grad_(), memory)
        model.output(out).sum().backward()

    return {"lstm.py feeding loop": _time(cell_stack, device, warmup, steps),
            "nn.LSTM per step (seq_len 1)": _time(nn_lstm_per_step, device, warmup, steps)}


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fp32, source = target length {args.length}")
    rows, step_impls = [], {}
    for size in args.sizes.split(","):
        dims = dict(SIZES[size])
        vocab = dims.pop("vocab")
        B = args.batch_size or (64 if size == "small" else 16)
        steps = args.steps or (5 if size == "small" else 2)
        src, lens, tgt = _batch(B, args.length, vocab, device, args.seed)
        size_rows = []
        for variant in args.variants.split(","):
            torch.manual_seed(args.seed)
            cfg = LSTMConfig(**dims, **VARIANTS[variant])
            model = LSTMSeq2Seq(cfg, vocab_size=vocab, pad_id=0).to(device).train()
            batch = (src, lens, tgt)
            step = lambda m=model, b=batch: _train_step(m, *b)  # noqa: E731
            wall, cpu = _time(step, device, args.warmup, steps)
            flops = model.flops_per_batch(lens, lens)
            size_rows.append([size, variant, B, wall, cpu, B * args.length, flops])
            if variant == "feed" and not args.no_step_compare:
                step_impls[size] = _compare_step_impls(model, *batch, device, args.warmup, steps)
            del model
        base = {r[1]: r[4] for r in size_rows}.get("none", float("nan"))  # CPU s of `none`
        rows += [r + [base / r[4]] for r in size_rows]

    header = (f"{'size':6} {'variant':16} {'batch':>5} {'ms/step':>9} {'CPU ms':>9} "
              f"{'tgt tok/s':>10} {'tok/CPU-s':>10} {'vs none':>8} {'GFLOP/CPU-s':>11}")
    print(header)
    print("-" * len(header))
    for size, variant, B, wall, cpu, tokens, flops, rel in rows:
        print(f"{size:6} {variant:16} {B:5d} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} "
              f"{tokens / wall:10.0f} {tokens / cpu:10.0f} {rel:8.2f} {flops / cpu / 1e9:11.1f}")
    print("tgt tok/s: target tokens per wall second; tok/CPU-s: per second of this process's CPU "
          "time (all threads); vs none: CPU-time speed relative to `none`.")
    for size, impls in step_impls.items():
        fastest = min(wall for wall, _ in impls.values())
        print(f"\n{size}: input-feeding decoder loop (fwd + bwd), one LSTM step as")
        for name, (wall, cpu) in impls.items():
            print(f"  {name:30} {wall * 1e3:9.1f} ms ({cpu * 1e3:.1f} ms CPU), "
                  f"{wall / fastest:.2f}x the fastest")
    return 0
