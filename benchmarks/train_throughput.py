"""Training throughput: ours vs Hugging Face MarianMT and OpenNMT-py on the same batches,
each system in fp32 and in bf16.

    python -m benchmarks train-throughput [--json] [--groups mini,base,lstm-mini,lstm-paper]
        [--precisions fp32,bf16] [--rounds 3] [--batches N]

What is measured (documented because it decides what the numbers mean):
- Batches: real token batches of the WMT14 sample (`--data-dir`, train split), prepared by
  the project's own pipeline (joint BPE, `--vocab-size` 8000, cached under `--cache-dir`)
  and cut by its token-budget sampler (length-bucketed, seed 0). Each group takes its first
  `--rounds` x `--batches` batches under its own budget (after the `--warmup` batches);
  every system of the group gets the same ones, in every precision.
  The base-size models have a 37000-word vocabulary (the paper's) and read the same ids.
- One step = forward, loss, backward and optimizer step, as in training, dropout on.
  Optimizer: Adam (betas 0.9/0.98, eps 1e-9) from `nmtbench.optim.build_optimizer` for every
  system (fused on CPU, as the HF Trainer's default `adamw_torch_fused`). Loss: each system's
  own training loss, same objective: ours `label_smoothed_loss`, HF the Trainer's
  `LabelSmoother`, OpenNMT-py its `CrossEntropyLoss` criterion; eps 0.1 for the Transformers,
  0 for the LSTMs (the configs' values).
- Precisions (`--precisions`, benchmarks/precisions.py): fp32, and bf16 = autocast to
  bfloat16 around the system's forward and loss with fp32 weights and optimizer, as the
  project's `bf16-mixed` trains; the same for every system. Default: both where the CPU
  computes bf16 natively (AMX / AVX512-BF16), else fp32 with the reason printed.
- Groups (systems side by side):
    mini        our Transformer d_model 256, 3+3 layers, 4 heads, d_ff 1024, vocab 8000 |
                MarianMTModel at the same dimensions, with HF's default attention (SDPA,
                `hf_marian`) and its eager attention (`hf_marian_eager`)
    base        the same at Transformer base (6+6, 512, 8 heads, 2048), vocab 37000
    lstm-mini   our lstm_attention (2 x 512, embeddings 256, vocab 8000, dot attention) with
                input feeding and without | OpenNMT-py's RNN encoder-decoder with global dot
                attention and input feeding, same sizes
    lstm-paper  the same at Luong et al. 2015's size (4 x 1000, embeddings 1000, vocab 50000)
- Interleaved: batch by batch, every (system, precision) runs its step on the same batch in
  rotating order, so load from other processes hits all alike; `--warmup` untimed steps of
  each first.
- Rounds: the timed batches run as `--rounds` rounds of `--batches` batches each (default per
  group: mini 2 x 4096 tokens, base 3 x 1024, lstm-mini 2 x 4096, lstm-paper 1 x 1024). Every
  ratio is computed per round (tokens/s of the two systems over that round's batches) and
  reported as its median over rounds with its spread, (max - min) / median: a large spread
  says the machine (or the batches) moved the ratio, so read it before the ratio.
- Reported per system and precision: target tokens (non-pad) per second of wall time (over
  all rounds, and per round), milliseconds per step, achieved FLOP/s (the model's analytic
  `flops_per_batch` on each batch's real lengths, the same count for every system of a
  group) and that over the matmul peak of that precision measured in the same run
  (`nmtbench.flops.measure_cpu_matmul_flops`, best of ~2 s at start and end); its best precision.
  speedup_vs_peer = ours / MarianMT (HF's default attention) at base size, _mini at mini size,
  speedup_vs_onmt_lstm = ours (input feeding) / OpenNMT-py at lstm-mini (and _paper),
  input_feeding_cost_* = tokens/s without input feeding / with it: all in fp32;
  `<ratio>_best`: each at its faster precision (MarianMT: and attention); `<ratio>_spread`.
Measured figures and how long a run takes: benchmarks/RESULTS.md.
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

from benchmarks import REPO_ROOT, peers, precisions, shared_data
from benchmarks.timing import Stopwatch, Timing
from nmtbench.flops import measure_cpu_matmul_flops
from nmtbench.loss import label_smoothed_loss
from nmtbench.models.lstm import LSTMConfig, LSTMSeq2Seq
from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq
from nmtbench.optim import OptimConfig, build_optimizer

DEFAULT_DATA = shared_data("wmt14_sample")
DEVICE = torch.device("cpu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TRANSFORMERS = {
    "mini": (TransformerConfig(num_encoder_layers=3, num_decoder_layers=3, d_model=256, num_heads=4,
                               d_ff=1024, max_positions=1024), 8000),
    "base": (TransformerConfig(), 37000),
}
LSTMS = {  # the mini and paper sizes of configs/model/lstm_attention.yaml
    "lstm-mini": (dict(num_layers=2, hidden_size=512, embed_dim=256, dropout=0.3), 8000),
    "lstm-paper": (dict(num_layers=4, hidden_size=1000, embed_dim=1000, dropout=0.2), 50000),
}
# (target-token budget of a batch, timed batches per round) per group. With 3 rounds and
# fp32 + bf16, about 0.5-2.5 minutes a group on 2 idle cores (module docstring).
GROUP_DEFAULTS = {"mini": (4096, 2), "base": (1024, 3), "lstm-mini": (4096, 2), "lstm-paper": (1024, 1)}
# ratio key -> (numerator, denominator) system; those in BEST also get `<key>_best`.
RATIOS = {  # a tuple: the peer's variants (fp32 ratio: the first; `_best`: the fastest)
    "speedup_vs_peer": ("base/nmtbench", ("base/hf_marian", "base/hf_marian_eager")),
    "speedup_vs_peer_mini": ("mini/nmtbench", ("mini/hf_marian", "mini/hf_marian_eager")),
    "speedup_vs_onmt_lstm": ("lstm-mini/nmtbench_feed", "lstm-mini/onmt_feed"),
    "speedup_vs_onmt_lstm_paper": ("lstm-paper/nmtbench_feed", "lstm-paper/onmt_feed"),
    "input_feeding_cost_mini": ("lstm-mini/nmtbench_nofeed", "lstm-mini/nmtbench_feed"),
    "input_feeding_cost_paper": ("lstm-paper/nmtbench_nofeed", "lstm-paper/nmtbench_feed"),
}
BEST = ("speedup_vs_peer", "speedup_vs_peer_mini", "speedup_vs_onmt_lstm", "speedup_vs_onmt_lstm_paper")
RATE = "tokens_per_s_rounds"  # one tokens/s per round: what the ratios are computed from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--groups", default="mini,base,lstm-mini,lstm-paper",
                        help="comma-separated subset of " + ",".join(GROUP_DEFAULTS))
    parser.add_argument("--batches", type=int, default=0,
                        help="timed batches per round and group (0 = the group's default)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of timed batches; each ratio is the median over rounds (spread printed)")
    precisions.add_argument(parser)
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="batch budget in padded tokens (0 = the group's default; at least 257)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per system and precision")
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

    def __post_init__(self) -> None:
        self.optimizer = build_optimizer(
            OptimConfig(lr=1e-4, schedule="constant", warmup_steps=0), self.model.parameters())

    def step(self, batch: dict, precision: str = "fp32") -> None:
        """One training step; bf16: autocast around forward and loss (fp32 weights, optimizer)."""
        self.optimizer.zero_grad(set_to_none=True)
        with precisions.context(precision, DEVICE):
            loss = self.loss(batch)
        loss.backward()
        self.optimizer.step()


@dataclass
class Run:
    """One system in one precision: the round, seconds, target tokens and FLOPs of each timed step."""
    system: System
    precision: str
    timing: Timing = field(default_factory=Timing)
    rounds: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    flops: list[float] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.system.name} {self.precision}"

    def figures(self, num_rounds: int) -> dict:
        wall, steps = self.timing.total, len(self.timing.wall)

        def in_round(values: list, r: int) -> float:
            return sum(v for v, k in zip(values, self.rounds) if k == r)

        return {
            "tokens_per_s": sum(self.tokens) / wall, "ms_per_step": 1e3 * wall / steps,
            "cpu_s_per_step": sum(self.timing.cpu) / steps, "flops_per_s": sum(self.flops) / wall,
            "target_tokens": sum(self.tokens), "steps": steps,
            "tokens_per_s_rounds": [in_round(self.tokens, r) / in_round(self.timing.wall, r)
                                    for r in range(num_rounds)],
        }


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
        if reason is None:  # HF's default attention (SDPA), and its eager attention
            for name, attention in (("hf_marian", None), ("hf_marian_eager", "eager")):
                hf = peers.marian(cfg, vocab, attention=attention).train()
                systems.append(System(name, hf, lambda b, m=hf: peers.marian_loss(m, b, 0.1), flops_of(ours)))
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


def run_group(runs: list[Run], rounds: list[list[dict]], warmup: int, log: Callable[[str], None]) -> None:
    """Warm-up steps of every run, then each round's batches, every run on each batch in
    rotating order (the rotation continues across rounds)."""
    first = [b for batches in rounds for b in batches]
    for run in runs:
        for i in range(warmup):
            run.system.step(first[i % len(first)], run.precision)
    i = 0
    for r, batches in enumerate(rounds):
        for j, batch in enumerate(batches):
            k = i % len(runs)
            for run in runs[k:] + runs[:k]:
                with Stopwatch(DEVICE, run.timing):
                    run.system.step(batch, run.precision)
                run.rounds.append(r)
                run.tokens.append(int(batch["tgt_out"].ne(peers.PAD).sum()))
                run.flops.append(run.system.flops(batch))
            i += 1
            log(f"  round {r + 1}/{len(rounds)} batch {j + 1}/{len(batches)} "
                f"{tuple(batch['src'].shape)}->{tuple(batch['tgt_in'].shape)}: "
                + ", ".join(f"{run.label} {run.timing.wall[-1]:.2f} s" for run in runs))


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


def matmul_peaks(precs: list[str]) -> dict[str, float]:
    """FLOP/s of the best ~2 s of square matmuls in fp32 and in each other precision's dtype."""
    return {p: measure_cpu_matmul_flops(2.0, dtype=DTYPES[p]) for p in dict.fromkeys(["fp32", *precs])}


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUP_DEFAULTS]
    if unknown:
        raise SystemExit(f"--groups: unknown {unknown}; choose from {','.join(GROUP_DEFAULTS)}")
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    precs, note = precisions.resolve(args.precisions, DEVICE)
    load_start = os.getloadavg()[0]
    peaks = matmul_peaks(precs)
    log(f"[train-throughput] torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"load {load_start:.1f}; precisions {','.join(precs)}, {args.rounds} rounds; matmul peak "
        + ", ".join(f"{p} {v / 1e9:.1f}" for p, v in peaks.items()) + " GFLOP/s")
    if note:
        log(f"[train-throughput] {note}")
    results: dict = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "precisions": precs,
                     "precisions_note": note, "rounds": args.rounds, "load_avg_start": load_start,
                     "versions": versions(), "systems": {}}
    for group in groups:
        max_tokens, per_round = GROUP_DEFAULTS[group]
        max_tokens, per_round = args.max_tokens or max_tokens, args.batches or per_round
        batches = load_batches(args, max_tokens, per_round * args.rounds + args.warmup)
        timed = batches[args.warmup:] or batches
        rounds = [timed[r * per_round:(r + 1) * per_round] for r in range(args.rounds)]
        rounds = [r for r in rounds if r]
        systems = build_group(group, not args.no_peers, log)
        runs = [Run(s, p) for s in systems for p in precs]
        log(f"[train-throughput] {group}: {', '.join(s.name for s in systems)} in {', '.join(precs)} on "
            f"{len(rounds)} rounds of {per_round} batches of <= {max_tokens} tokens")
        run_group(runs, rounds, args.warmup, log)
        for s in systems:
            figures = {r.precision: r.figures(len(rounds)) for r in runs if r.system is s}
            results["systems"][f"{group}/{s.name}"] = precisions.system_entry(figures, RATE)
        del systems, runs
    results["load_avg_end"] = os.getloadavg()[0]
    # a busy machine can depress one peak measurement: keep the better of start and end
    end_peaks = matmul_peaks(precs)
    peaks = {p: max(v, end_peaks[p]) for p, v in peaks.items()}
    results["peak_flops"] = peaks["fp32"]
    results.update({f"peak_flops_{p}": v for p, v in peaks.items() if p != "fp32"})
    for entry in results["systems"].values():
        for p, figures in entry["precision"].items():
            figures["fraction_of_matmul_peak"] = figures["flops_per_s"] / peaks[p]
        if "fp32" in entry["precision"]:
            entry["fraction_of_matmul_peak"] = entry["precision"]["fp32"]["fraction_of_matmul_peak"]
    results.update(ratios(results["systems"]))
    print_table(results)
    if args.json:
        print(json.dumps(results, sort_keys=True))
    return 0


def ratios(systems: dict[str, dict]) -> dict[str, float | None]:
    """RATIOS as medians over rounds with their spreads: fp32, and `_best` for BEST."""
    return precisions.ratios(systems, RATIOS, BEST, RATE)


def print_table(results: dict) -> None:
    several = len(results["precisions"]) > 1
    print(f"\n{'system':28} {'prec':5} {'tgt tok/s':>10} {'ms/step':>9} {'GFLOP/s':>8} {'of peak':>8}")
    for name, entry in results["systems"].items():
        for p, r in entry["precision"].items():
            mark = "*" if several and p == entry["best_precision"] else " "
            print(f"{name:28} {p:4}{mark} {r['tokens_per_s']:10.0f} {r['ms_per_step']:9.0f} "
                  f"{r['flops_per_s'] / 1e9:8.1f} {r['fraction_of_matmul_peak']:8.1%}")
    if several:
        print("* the system's faster precision; of peak: over the matmul peak of that precision")
    for line in precisions.ratio_lines(results, RATIOS, BEST, RATE):
        print(line)
    print(f"(load average {results['load_avg_start']:.1f} at start, {results['load_avg_end']:.1f} at end, "
          f"{results['cpus']} CPUs, {results['threads']} torch threads)")
