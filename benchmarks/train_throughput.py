"""Training throughput: ours vs Hugging Face MarianMT and OpenNMT-py on the same batches.

    python -m benchmarks train-throughput [--json] [--groups mini,base,lstm-mini,lstm-paper]

What is measured (documented because it decides what the numbers mean):
- Batches: real token batches of the WMT14 sample (`--data-dir`, train split), prepared by
  the project's own pipeline (joint BPE, `--vocab-size` 8000, cached under `--cache-dir`)
  and cut by its token-budget sampler (length-bucketed, seed 0). Each group takes its first
  `--batches` batches under its own budget; every system of the group gets the same ones.
  The base-size models have a 37000-word vocabulary (the paper's) and read the same ids.
- One step = forward, loss, backward and optimizer step, as in training, dropout on.
  Optimizer: Adam (betas 0.9/0.98, eps 1e-9) from `nmtbench.optim.build_optimizer` for every
  system (fused on CPU, as the HF Trainer's default `adamw_torch_fused`). Loss: each system's
  own training loss, same objective: ours `label_smoothed_loss`, HF the Trainer's
  `LabelSmoother`, OpenNMT-py its `CrossEntropyLoss` criterion; eps 0.1 for the Transformers,
  0 for the LSTMs (the configs' values).
- Groups (systems side by side):
    mini        our Transformer d_model 256, 3+3 layers, 4 heads, d_ff 1024, vocab 8000 |
                MarianMTModel at the same dimensions
    base        the same at Transformer base (6+6, 512, 8 heads, 2048), vocab 37000
    lstm-mini   our lstm_attention (2 x 512, embeddings 256, vocab 8000, dot attention) with
                input feeding and without | OpenNMT-py's RNN encoder-decoder with global dot
                attention and input feeding, same sizes
    lstm-paper  the same at Luong et al. 2015's size (4 x 1000, embeddings 1000, vocab 50000)
- Interleaved: batch by batch, every system runs its step on the same batch in rotating
  order, so load from other processes hits all alike; `--warmup` untimed steps first.
- Reported per system: target tokens (non-pad) per second of wall time, milliseconds per
  step, achieved FLOP/s (the model's analytic `flops_per_batch` on each batch's real lengths,
  the same count for every system of a group) and that over the fp32 matmul peak measured in
  the same run (`nmtbench.flops.measure_cpu_matmul_flops`, best of ~2 s at start and end).
  speedup_vs_peer = ours / MarianMT at base size, speedup_vs_peer_mini at mini size,
  speedup_vs_onmt_lstm = ours (input feeding) / OpenNMT-py at lstm-mini (and _paper),
  input_feeding_cost_* = tokens/s without input feeding / with it.
A full run takes about 5-8 minutes on 2 idle cores; history of measured figures:
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import REPO_ROOT, peers, shared_data
from benchmarks.timing import Stopwatch, Timing
from nmtbench.flops import measure_cpu_matmul_flops
from nmtbench.loss import label_smoothed_loss
from nmtbench.models.lstm import LSTMConfig, LSTMSeq2Seq
from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq
from nmtbench.optim import OptimConfig, build_optimizer

DEFAULT_DATA = shared_data("wmt14_sample")
TRANSFORMERS = {
    "mini": (TransformerConfig(num_encoder_layers=3, num_decoder_layers=3, d_model=256, num_heads=4,
                               d_ff=1024, max_positions=1024), 8000),
    "base": (TransformerConfig(), 37000),
}
LSTMS = {  # configs/model_size/mini/lstm_attention.yaml; configs/model/lstm_attention.yaml
    "lstm-mini": (dict(num_layers=2, hidden_size=512, embed_dim=256, dropout=0.3), 8000),
    "lstm-paper": (dict(num_layers=4, hidden_size=1000, embed_dim=1000, dropout=0.2), 50000),
}
# (target-token budget of a batch, timed batches) per group: ~1 minute each on 2 idle cores
GROUP_DEFAULTS = {"mini": (4096, 6), "base": (1024, 4), "lstm-mini": (4096, 4), "lstm-paper": (1024, 2)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--groups", default="mini,base,lstm-mini,lstm-paper",
                        help="comma-separated subset of " + ",".join(GROUP_DEFAULTS))
    parser.add_argument("--batches", type=int, default=0, help="timed batches per group (0 = its default)")
    parser.add_argument("--max-tokens", type=int, default=0, help="batch budget in padded tokens (0 = default)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per system")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--cache-dir", type=Path, default=REPO_ROOT / "data" / "cache")
    parser.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary of the batches")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--no-peers", action="store_true", help="only our systems")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of every figure")
    parser.add_argument("--seed", type=int, default=0)


@dataclass
class System:
    name: str
    model: torch.nn.Module
    loss: Callable[[dict], torch.Tensor]  # batch -> scalar training loss
    flops: Callable[[dict], float]  # batch -> analytic training FLOPs
    timing: Timing = field(default_factory=Timing)  # wall and CPU seconds of each timed step
    tokens: int = 0
    flop_count: float = 0.0

    def __post_init__(self) -> None:
        self.optimizer = build_optimizer(
            OptimConfig(lr=1e-4, schedule="constant", warmup_steps=0), self.model.parameters())

    def step(self, batch: dict) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(batch).backward()
        self.optimizer.step()


def ours_loss(model: torch.nn.Module, epsilon: float) -> Callable[[dict], torch.Tensor]:
    def loss(batch: dict) -> torch.Tensor:  # Seq2SeqModule.training_step's loss
        logits = model(batch["src"], batch["src_lens"], batch["tgt_in"])
        total, _, ntok = label_smoothed_loss(logits, batch["tgt_out"], peers.PAD, epsilon)
        return total / ntok.clamp(min=1)
    return loss


def flops_of(model) -> Callable[[dict], float]:
    return lambda b: model.flops_per_batch(b["src_lens"], b["tgt_out"].ne(peers.PAD).sum(1))


def build_group(group: str, with_peers: bool, log: Callable[[str], None]) -> list[System]:
    systems = []
    if group in TRANSFORMERS:
        cfg, vocab = TRANSFORMERS[group]
        ours = TransformerSeq2Seq(cfg, vocab, peers.PAD).train()
        systems.append(System("nmtbench", ours, ours_loss(ours, 0.1), flops_of(ours)))
        reason = peers.missing("transformers") if with_peers else "--no-peers"
        if reason is None:
            hf = peers.marian(cfg, vocab).train()
            systems.append(System("hf_marian", hf, lambda b, m=hf: peers.marian_loss(m, b, 0.1),
                                  flops_of(ours)))
        else:
            log(f"[train-throughput] {reason}")
        return systems
    dims, vocab = LSTMS[group]
    for name, feeding in (("nmtbench_feed", True), ("nmtbench_nofeed", False)):
        model = LSTMSeq2Seq(LSTMConfig(**dims, input_feeding=feeding), vocab, peers.PAD).train()
        systems.append(System(name, model, ours_loss(model, 0.0), flops_of(model)))
    reason = peers.missing("onmt") if with_peers else "--no-peers"
    if reason is None:
        onmt = peers.OnmtLSTM(dims["num_layers"], dims["hidden_size"], dims["embed_dim"], vocab,
                              dims["dropout"]).train()
        systems.append(System("onmt_feed", onmt, lambda b, m=onmt: peers.onmt_loss(m, b, 0.0),
                              flops_of(systems[0].model)))
    else:
        log(f"[train-throughput] {reason}")
    return systems


def load_batches(args: argparse.Namespace, max_tokens: int, count: int) -> list[dict]:
    from rich.console import Console

    from nmtbench.data.config import load_data_config
    from nmtbench.data.datamodule import Seq2SeqDataModule
    from nmtbench.data.prepare import prepare

    data_dir = args.data_dir if args.data_dir.is_absolute() else REPO_ROOT / args.data_dir
    cfg = load_data_config({
        "source": "files", "dir": str(data_dir.resolve()), "valid_prefix": "newstest2013",
        "test_prefix": "newstest2014", "cache_dir": str(args.cache_dir), "vocab_size": args.vocab_size,
        "max_tokens": max_tokens, "num_workers": 0,
    })
    prepare(cfg, Console(stderr=True, quiet=True))
    dm = Seq2SeqDataModule(cfg, seed=args.seed)
    dm.setup("fit")
    batches = []
    for batch in dm.train_dataloader():
        batches.append(batch)
        if len(batches) == count:
            return batches
    return batches


def run_group(systems: list[System], batches: list[dict], warmup: int, log: Callable[[str], None]) -> None:
    for system in systems:
        for i in range(warmup):
            system.step(batches[i % len(batches)])
    for i, batch in enumerate(batches):
        k = i % len(systems)
        for system in systems[k:] + systems[:k]:
            with Stopwatch(timing=system.timing):
                system.step(batch)
            system.tokens += int(batch["tgt_out"].ne(peers.PAD).sum())
            system.flop_count += system.flops(batch)
        log(f"  batch {i + 1}/{len(batches)} {tuple(batch['src'].shape)}->{tuple(batch['tgt_in'].shape)}: "
            + ", ".join(f"{s.name} {s.timing.wall[-1]:.2f} s" for s in systems))


def versions() -> dict[str, str | None]:
    out = {"torch": torch.__version__, "python": platform.python_version()}
    for module in ("transformers", "onmt"):
        try:
            with warnings.catch_warnings():  # onmt: torch.cuda.amp deprecation warnings
                warnings.simplefilter("ignore")
                out[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - not installed (or broken): reported as null
            out[module] = None
    return out


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUP_DEFAULTS]
    if unknown:
        raise SystemExit(f"--groups: unknown {unknown}; choose from {','.join(GROUP_DEFAULTS)}")
    load_start = os.getloadavg()[0]
    peak = measure_cpu_matmul_flops(2.0)
    log(f"[train-throughput] torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load {load_start:.1f}; fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    results: dict = {"peak_flops": peak, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                     "load_avg_start": load_start, "versions": versions(), "systems": {}}
    for group in groups:
        max_tokens, count = GROUP_DEFAULTS[group]
        max_tokens, count = args.max_tokens or max_tokens, args.batches or count
        batches = load_batches(args, max_tokens, count + args.warmup)
        timed = batches[args.warmup:] or batches
        systems = build_group(group, not args.no_peers, log)
        log(f"[train-throughput] {group}: {', '.join(s.name for s in systems)} on {len(timed)} batches of "
            f"<= {max_tokens} tokens")
        run_group(systems, timed, args.warmup, log)
        for s in systems:
            wall, steps = s.timing.total, len(s.timing.wall)
            results["systems"][f"{group}/{s.name}"] = {
                "tokens_per_s": s.tokens / wall, "ms_per_step": 1e3 * wall / steps,
                "cpu_s_per_step": sum(s.timing.cpu) / steps, "flops_per_s": s.flop_count / wall,
                "fraction_of_matmul_peak": s.flop_count / wall / peak, "target_tokens": s.tokens,
                "steps": steps,
            }
        del systems
    results["load_avg_end"] = os.getloadavg()[0]
    # a busy machine can depress one peak measurement: keep the better of start and end
    end_peak = measure_cpu_matmul_flops(2.0)
    if end_peak > peak:
        for r in results["systems"].values():
            r["fraction_of_matmul_peak"] *= peak / end_peak
        results["peak_flops"] = peak = end_peak
    results.update(ratios(results["systems"]))
    print_table(results)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


def ratios(systems: dict[str, dict]) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        if a in systems and b in systems:
            return systems[a]["tokens_per_s"] / systems[b]["tokens_per_s"]
        return None

    return {
        "speedup_vs_peer": ratio("base/nmtbench", "base/hf_marian"),
        "speedup_vs_peer_mini": ratio("mini/nmtbench", "mini/hf_marian"),
        "speedup_vs_onmt_lstm": ratio("lstm-mini/nmtbench_feed", "lstm-mini/onmt_feed"),
        "speedup_vs_onmt_lstm_paper": ratio("lstm-paper/nmtbench_feed", "lstm-paper/onmt_feed"),
        "input_feeding_cost_mini": ratio("lstm-mini/nmtbench_nofeed", "lstm-mini/nmtbench_feed"),
        "input_feeding_cost_paper": ratio("lstm-paper/nmtbench_nofeed", "lstm-paper/nmtbench_feed"),
    }


def print_table(results: dict) -> None:
    print(f"\n{'system':32} {'tgt tok/s':>10} {'ms/step':>9} {'GFLOP/s':>8} {'of peak':>8}")
    for name, r in results["systems"].items():
        print(f"{name:32} {r['tokens_per_s']:10.0f} {r['ms_per_step']:9.0f} {r['flops_per_s'] / 1e9:8.1f} "
              f"{r['fraction_of_matmul_peak']:8.1%}")
    for key in ("speedup_vs_peer", "speedup_vs_peer_mini", "speedup_vs_onmt_lstm", "speedup_vs_onmt_lstm_paper",
                "input_feeding_cost_mini", "input_feeding_cost_paper"):
        value = results.get(key)
        print(f"{key:32} {'n/a' if value is None else f'{value:.2f}x'}")
    print(f"(load average {results['load_avg_start']:.1f} at start, {results['load_avg_end']:.1f} at end, "
          f"{results['cpus']} CPUs, {results['threads']} torch threads)")
