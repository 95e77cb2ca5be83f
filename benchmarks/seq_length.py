"""LSTM vs Transformer encoder time over sequence length (forward, forward + backward).

    python -m benchmarks seq-length --out runs/bench/seq_length
    python -m benchmarks seq-length --lengths 10,100,1000 --width 512 --device cuda

Setup (documented because it decides what the numbers mean):
- Recurrent: `torch.nn.Embedding` + `torch.nn.LSTM(width, width, num_layers, batch_first=True)`
  (cuDNN on CUDA). Its work is a chain of `length` dependent steps per layer: time grows
  linearly with length and the steps cannot run in parallel.
- Transformer: the project's encoder, `TransformerSeq2Seq(TransformerConfig(...)).encode`
  (nmtbench.models.transformer: embeddings x sqrt(d), sinusoidal positions, post-norm layers
  of self-attention + FFN), with the same width (d_model = width), `--layers` layers,
  `--heads` heads and d_ff = 4 x width. All positions of a layer run in parallel; self-attention
  is O(length^2), the rest O(length).
- Same batch (`--batch-size` rows of random ids, no padding), fp32, dropout 0. Forward runs
  under `torch.no_grad()` in eval mode; forward + backward runs in train mode and
  back-propagates `output.sum()` through every parameter. Times are medians of `--repeats`
  runs after `--warmup` untimed runs (CUDA: synchronised).
- Equal width is not equal parameters: at width 256 and 2 layers the LSTM stack has ~1.1M
  parameters and the Transformer stack ~1.6M (both printed; embeddings excluded).

Reported: milliseconds per batch for each length, the LSTM / Transformer time ratio, and the
growth exponent between the two longest lengths (1 = linear, 2 = quadratic). With --out:
seq_length.md, seq_length.csv and seq_length.png (both curves, linear and log-log axes).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from benchmarks.timing import time_calls
from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq

PAD = 0
DEFAULT_LENGTHS = "10,50,100,200,500,1000"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, help="write seq_length.{md,csv,png} here")
    parser.add_argument("--lengths", default=DEFAULT_LENGTHS, help="comma-separated sequence lengths")
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per batch")
    parser.add_argument("--width", type=int, default=256, help="LSTM hidden size = Transformer d_model")
    parser.add_argument("--layers", type=int, default=2, help="layers of each encoder")
    parser.add_argument("--heads", type=int, default=4, help="Transformer attention heads")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per point (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per point")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--seed", type=int, default=0)


class LSTMEncoder(nn.Module):
    """Embedding + stacked `torch.nn.LSTM`: (B, S) ids -> (B, S, width)."""

    def __init__(self, vocab_size: int, width: int, num_layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=PAD)
        self.lstm = nn.LSTM(width, width, num_layers=num_layers, batch_first=True)

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(src))  # (B, S, width)
        return out


class TransformerEncoder(nn.Module):
    """The encoder half of `TransformerSeq2Seq` (the decoder is built with 1 layer and unused)."""

    def __init__(self, vocab_size: int, width: int, num_layers: int, num_heads: int, max_len: int):
        super().__init__()
        cfg = TransformerConfig(num_encoder_layers=num_layers, num_decoder_layers=1, d_model=width,
                                num_heads=num_heads, d_ff=4 * width, dropout=0.0,
                                max_positions=max_len + 1)
        self.model = TransformerSeq2Seq(cfg, vocab_size=vocab_size, pad_id=PAD)

    def forward(self, src: torch.Tensor, src_lens: torch.Tensor) -> torch.Tensor:
        return self.model.encoder_states(src, src_lens)[0]  # (B, S, width)

    def encoder_parameters(self) -> int:
        return sum(p.numel() for layer in self.model.encoder for p in layer.parameters())


def time_ms(fn: Callable[[], None], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall-clock milliseconds of `fn()` over `repeats` runs after `warmup` runs."""
    return 1000.0 * time_calls(fn, device, warmup, repeats).median


def measure(model: nn.Module, src: torch.Tensor, src_lens: torch.Tensor, device: torch.device,
            repeats: int, warmup: int) -> tuple[float, float]:
    """(forward ms, forward + backward ms) of `model(src, src_lens)` on one batch."""

    def forward() -> None:
        with torch.no_grad():
            model(src, src_lens)

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        model(src, src_lens).sum().backward()

    model.eval()
    fwd = time_ms(forward, device, repeats, warmup)
    model.train()
    fwd_bwd = time_ms(forward_backward, device, repeats, warmup)
    return fwd, fwd_bwd


def growth_exponent(lengths: list[int], times: list[float]) -> float | None:
    """log(t2 / t1) / log(L2 / L1) over the two longest lengths (1 = linear, 2 = quadratic)."""
    if len(lengths) < 2 or min(times[-2:]) <= 0:
        return None
    return math.log(times[-1] / times[-2]) / math.log(lengths[-1] / lengths[-2])


def busy_warning(device: torch.device) -> str | None:
    """A warning when other processes keep the CPU busy (CPU timings are then unreliable)."""
    if device.type != "cpu" or not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if load <= cores:
        return None
    message = f"the CPU is busy (load {load:.1f} on {cores} cores): timings are unreliable"
    if torch.get_num_threads() > 1:
        message += (f"; {torch.get_num_threads()} OpenMP threads stall on descheduled peers, "
                    "re-run on an idle machine or with --threads 1")
    return message


def write_outputs(out: Path, rows: list[dict[str, float]], header: str) -> list[Path]:
    """seq_length.md, seq_length.csv and seq_length.png in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path, png = out / "seq_length.md", out / "seq_length.csv", out / "seq_length.png"
    cols = ["length", "lstm_fwd_ms", "lstm_fwd_bwd_ms", "transformer_fwd_ms", "transformer_fwd_bwd_ms",
            "ratio_fwd", "ratio_fwd_bwd"]
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=cols)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# LSTM vs Transformer encoder time over sequence length\n\n{header}\n",
             "| length | LSTM fwd (ms) | LSTM fwd+bwd (ms) | Transformer fwd (ms) | Transformer fwd+bwd (ms) "
             "| LSTM / Transformer (fwd) | LSTM / Transformer (fwd+bwd) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['length']} | {r['lstm_fwd_ms']:.1f} | {r['lstm_fwd_bwd_ms']:.1f} | "
                     f"{r['transformer_fwd_ms']:.1f} | {r['transformer_fwd_bwd_ms']:.1f} | "
                     f"{r['ratio_fwd']:.2f} | {r['ratio_fwd_bwd']:.2f} |")
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = [r["length"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, log in zip(axes, (False, True)):
        for key, label, style in (("lstm_fwd_bwd_ms", "LSTM fwd+bwd", "-o"), ("lstm_fwd_ms", "LSTM fwd", "--o"),
                                  ("transformer_fwd_bwd_ms", "Transformer fwd+bwd", "-s"),
                                  ("transformer_fwd_ms", "Transformer fwd", "--s")):
            color = "tab:red" if key.startswith("lstm") else "tab:blue"
            ax.plot(lengths, [r[key] for r in rows], style, color=color, label=label, markersize=4)
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel("time per batch (ms)")
        ax.grid(alpha=0.3, which="both")
        if log:
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title("log-log (slope 1 = linear, 2 = quadratic)")
        else:
            ax.set_title("linear axes")
    axes[0].legend(fontsize=8)
    fig.suptitle(header.replace("\n", " "), fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return [md, csv_path, png]


def run(args: argparse.Namespace) -> int:
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    lengths = sorted(int(x) for x in args.lengths.split(","))
    if args.width % args.heads:
        raise SystemExit(f"--width {args.width} must be divisible by --heads {args.heads}")
    torch.manual_seed(args.seed)

    lstm = LSTMEncoder(args.vocab_size, args.width, args.layers).to(device)
    transformer = TransformerEncoder(args.vocab_size, args.width, args.layers, args.heads, max(lengths)).to(device)
    lstm_params = sum(p.numel() for p in lstm.lstm.parameters())
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads")
    header = (f"{where}; batch {args.batch_size}, width {args.width}, {args.layers} layers; "
              f"LSTM = torch.nn.LSTM ({lstm_params / 1e6:.2f}M params), Transformer = "
              f"nmtbench TransformerSeq2Seq.encode ({args.heads} heads, d_ff {4 * args.width}, "
              f"{transformer.encoder_parameters() / 1e6:.2f}M params); fp32; median of {args.repeats}")
    print(f"[seq-length] {header}")
    busy = busy_warning(device)
    if busy:
        print(f"[seq-length] warning: {busy}")
    print(f"  {'length':>6}  {'LSTM fwd':>10}  {'LSTM f+b':>10}  {'Trf fwd':>10}  {'Trf f+b':>10}  "
          f"{'LSTM/Trf f+b':>12}   (ms per batch)")

    rows = []
    for length in lengths:
        src = torch.randint(4, args.vocab_size, (args.batch_size, length), device=device)
        src_lens = torch.full((args.batch_size,), length, device=device)
        lstm_fwd, lstm_fb = measure(lstm, src, src_lens, device, args.repeats, args.warmup)
        trf_fwd, trf_fb = measure(transformer, src, src_lens, device, args.repeats, args.warmup)
        row = {"length": length, "lstm_fwd_ms": lstm_fwd, "lstm_fwd_bwd_ms": lstm_fb,
               "transformer_fwd_ms": trf_fwd, "transformer_fwd_bwd_ms": trf_fb,
               "ratio_fwd": lstm_fwd / trf_fwd, "ratio_fwd_bwd": lstm_fb / trf_fb}
        rows.append(row)
        print(f"  {length:>6}  {lstm_fwd:>10.1f}  {lstm_fb:>10.1f}  {trf_fwd:>10.1f}  {trf_fb:>10.1f}  "
              f"{row['ratio_fwd_bwd']:>12.2f}", flush=True)

    for name, key in (("LSTM", "lstm_fwd_bwd_ms"), ("Transformer", "transformer_fwd_bwd_ms")):
        k = growth_exponent(lengths, [r[key] for r in rows])
        if k is not None:
            print(f"  {name} fwd+bwd growth exponent {lengths[-2]}->{lengths[-1]}: {k:.2f} "
                  "(1 = linear, 2 = quadratic)")
    if args.out is not None:
        for path in write_outputs(args.out, rows, header):
            print(f"  wrote {path}")
    return 0
