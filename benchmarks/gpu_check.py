"""One GPU check that prints one JSON line: `scripts/gpu_check.sh` (issue 12, item 6).

    bash scripts/gpu_check.sh                  # on a CUDA machine, <= 8 minutes
    python -m benchmarks.gpu_check --device cpu --tiny   # the same code, tiny, on CPU

On a machine without CUDA (and no `--device`) it says so on stderr, prints
{"cuda": false, ...} and exits 0. Sections (each timed after warm-up, CUDA synchronised):
- transformer_base: Transformer base (Vaswani et al. 2017, vocab 37000) training steps
  (forward, label-smoothed loss, backward, Adam) in bf16 autocast on a fixed batch of
  `--batch-tokens` target tokens (sources the same length): tokens/s and MFU over the
  datasheet bf16 dense peak (`nmtbench.flops`), eager and compiled as `compile=true` trains
  (`model.compile()`, and the loss through `compiled_loss_rows`).
  Goal on H100/H200: MFU >= 0.40.
- lstm_attention: Luong et al. 2015's model (4 x 1000, input feeding) training tokens/s, bf16.
- decode: beam-4 sentences/s of Transformer base on newstest2014 sources (`--input`), equal work as in
  `benchmarks/decode.py`.
- seq_length: LSTM vs Transformer encoder forward + backward ms at 10..1000 tokens
  (`benchmarks/seq_length.py`): the Transformer's time should stay nearly flat on a GPU while
  the LSTM's grows linearly.
- smoke: a 30-step `experiment=smoke trainer=gpu` training run through scripts/train.py;
  its results.json must have the NVML fields (gpu_util_mean, gpu_mem_gb_max, ...) filled.
Record the figures in docs/results.md whenever a CUDA machine runs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import REPO_ROOT, shared_data
from benchmarks.timing import Stopwatch
from nmtbench.flops import CPU_MEASURED, datasheet_peak_flops, measure_cpu_matmul_flops
from nmtbench.loss import compiled_loss_rows, label_smoothed_loss
from nmtbench.models.lstm import LSTMConfig, LSTMSeq2Seq
from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq
from nmtbench.optim import OptimConfig, build_optimizer

NVML_FIELDS = ("gpu_util_mean", "gpu_mem_gb_max", "gpu_mem_gb_mean", "gpu_power_w_mean")
SECTIONS = ("transformer_base", "lstm_attention", "decode", "seq_length", "smoke")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA, or report its absence) | cuda | cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny models and steps (a CPU check of the logic)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--batch-tokens", type=int, default=16384, help="target tokens per training batch")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per configuration")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend of the compiled run")
    parser.add_argument("--input", type=Path, default=shared_data("wmt14_sample") / "newstest2014.en",
                        help="English sources of the decode section (one sentence a line)")
    return parser.parse_args(argv)


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    if device.type == "cuda":
        return datasheet_peak_flops(torch.cuda.get_device_name(device), "bf16")
    return measure_cpu_matmul_flops(0.5), f"{CPU_MEASURED} fp32 matmul"


def train_rate(model: torch.nn.Module, device: torch.device, batch_tokens: int, length: int, steps: int,
               epsilon: float, warmup: int, loss_rows=None) -> dict:
    """Target tokens/s and MFU of full training steps on one fixed random batch."""
    B = max(1, batch_tokens // length)
    vocab = model.vocab_size
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, vocab, (B, length), generator=g).to(device)
    tgt = torch.randint(4, vocab, (B, length + 1), generator=g).to(device)
    lens = torch.full((B,), length, device=device)
    optimizer = build_optimizer(OptimConfig(lr=1e-4, schedule="constant", warmup_steps=0), model.parameters())
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with amp:
            logits = model(src, lens, tgt[:, :-1])
        loss, _, ntok = label_smoothed_loss(logits, tgt[:, 1:], 0, epsilon, loss_rows)
        (loss / ntok).backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    # the steps back to back, as training runs them (CUDA queues a step while the last computes)
    with Stopwatch(device) as watch:
        for _ in range(steps):
            step()
    seconds = watch.timing.total / steps
    flops = model.flops_per_batch(lens, lens)
    peak, source = peak_flops(device)
    return {"tokens_per_s": B * length / seconds, "ms_per_step": 1e3 * seconds, "batch": [B, length],
            "mfu": flops / seconds / peak if peak else None, "peak_flops": peak, "peak_source": source}


def transformer_base(device: torch.device, args: argparse.Namespace) -> dict:
    cfg = TransformerConfig(num_encoder_layers=1, num_decoder_layers=1, d_model=64, num_heads=4, d_ff=128) \
        if args.tiny else TransformerConfig()
    vocab = 1000 if args.tiny else 37000
    out = {}
    for mode in ("eager", "compiled"):
        torch.manual_seed(0)
        model = TransformerSeq2Seq(cfg, vocab, 0).to(device).train()
        loss_rows = None
        if mode == "compiled":  # as compile=true trains: the forward, and the loss on CUDA
            model.compile(backend=args.compile_backend)
            if device.type == "cuda":
                loss_rows = compiled_loss_rows(backend=args.compile_backend)
        warmup = 3 if mode == "compiled" else 2  # the compiled warm-up includes compilation
        out[mode] = train_rate(model, device, args.batch_tokens, 8 if args.tiny else 64, args.steps, 0.1, warmup,
                               loss_rows)
        del model
    return out


def lstm_attention(device: torch.device, args: argparse.Namespace) -> dict:
    dims = dict(num_layers=1, hidden_size=32, embed_dim=32) if args.tiny else {}
    torch.manual_seed(0)
    model = LSTMSeq2Seq(LSTMConfig(**dims), 1000 if args.tiny else 50000, 0).to(device).train()
    length = 8 if args.tiny else 50
    return train_rate(model, device, min(args.batch_tokens, 128 * length), length, max(2, args.steps // 4), 0.0, 1)


def decode(device: torch.device, args: argparse.Namespace) -> dict:
    from benchmarks.decode import fake_tokenize, make_batches, run_nmtbench

    cfg = TransformerConfig(num_encoder_layers=1, num_decoder_layers=1, d_model=64, num_heads=4, d_ff=128,
                            dropout=0.0) if args.tiny else TransformerConfig(dropout=0.0)
    vocab = 1000 if args.tiny else 37000
    if not args.input.is_file():
        raise FileNotFoundError(f"--input {args.input}: no such file; pass English sources (one a line), e.g. "
                                "newstest2014.en of the WMT14 sample")
    lines = args.input.read_text(encoding="utf-8").splitlines()[: 8 if args.tiny else 512]
    batches = [(s.to(device), n.to(device)) for s, n in make_batches(fake_tokenize(lines, vocab, 0), 64)]
    torch.manual_seed(0)
    model = TransformerSeq2Seq(cfg, vocab, 0).to(device).eval()
    run_nmtbench(model, batches[:1], 4, True)  # warm-up
    seconds, tokens = run_nmtbench(model, batches, 4, True)  # timed between device synchronisations
    return {"sentences_per_s": len(lines) / seconds, "tokens_per_s": tokens / seconds, "sentences": len(lines)}


def seq_length(device: torch.device, args: argparse.Namespace) -> dict:
    from benchmarks.seq_length import LSTMEncoder, TransformerEncoder, measure

    lengths = [10, 20] if args.tiny else [10, 50, 100, 200, 500, 1000]
    width, batch = (32, 2) if args.tiny else (512, 32)
    torch.manual_seed(0)
    lstm = LSTMEncoder(1000, width, 2).to(device)
    trf = TransformerEncoder(1000, width, 2, 4 if args.tiny else 8, max(lengths)).to(device)
    rows = []
    for length in lengths:
        src = torch.randint(4, 1000, (batch, length), device=device)
        lens = torch.full((batch,), length, device=device)
        _, lstm_ms = measure(lstm, src, lens, device, 3, 1)
        _, trf_ms = measure(trf, src, lens, device, 3, 1)
        rows.append({"length": length, "lstm_fwd_bwd_ms": lstm_ms, "transformer_fwd_bwd_ms": trf_ms})
    return {"width": width, "batch": batch, "rows": rows}


def nvml_fields_filled(results: dict) -> dict[str, bool]:
    """Which NVML fields of a results.json are filled (not null, not missing)."""
    return {field: results.get(field) is not None for field in NVML_FIELDS}


def smoke(device: torch.device, args: argparse.Namespace) -> dict:
    trainer = ["trainer=gpu"] if device.type == "cuda" else ["trainer=cpu"]
    with tempfile.TemporaryDirectory(prefix="nmtbench-gpu-check-") as tmp:
        steps = 2 if args.tiny else 30
        cmd = [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "experiment=smoke", *trainer,
               f"trainer.max_steps={steps}", "trainer.max_time=null", f"trainer.val_check_interval={steps}",
               "trainer.enable_progress_bar=false", "callbacks.progress_bar=null", "test=false",
               f"paths.output_dir={tmp}/run", f"hydra.run.dir={tmp}/run"]
        if args.tiny:
            cmd += ["data.toy.num_train=300", "data.toy.num_valid=20", "data.toy.num_test=20", "data.vocab_size=200",
                    "model.d_model=32", "model.num_heads=2", "model.d_ff=64", "callbacks.throughput.cpu_benchmark_seconds=0.1"]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
        out = {"returncode": proc.returncode, "seconds": time.perf_counter() - start}
        path = Path(tmp) / "run" / "results.json"
        if proc.returncode != 0 or not path.exists():
            return {**out, "error": proc.stderr[-1500:]}
        results = json.loads(path.read_text())
        filled = nvml_fields_filled(results)
        return {**out, "tokens_per_sec": results.get("tokens_per_sec"), "nvml_filled": filled,
                "nvml_ok": all(filled.values()), **{k: results.get(k) for k in NVML_FIELDS}}


RUNNERS = {"transformer_base": transformer_base, "lstm_attention": lstm_attention, "decode": decode,
           "seq_length": seq_length, "smoke": smoke}


def resolve_device(name: str) -> torch.device | None:
    """The device to check, or None when `auto` finds no CUDA device."""
    if name == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible (torch.cuda.is_available() is False)")
    return torch.device(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    if device is None:
        print("gpu_check: no CUDA device visible (torch.cuda.is_available() is False): nothing measured. "
              "Run it on a CUDA machine (or --device cpu --tiny to exercise the code).", file=sys.stderr)
        print(json.dumps({"cuda": False, "torch": torch.__version__, "measured": None}))
        return 0
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(sections) - set(RUNNERS)
    if unknown:
        raise SystemExit(f"--sections: unknown {sorted(unknown)}; choose from {','.join(RUNNERS)}")
    report: dict = {"cuda": device.type == "cuda", "device": torch.cuda.get_device_name(device)
                    if device.type == "cuda" else "cpu", "torch": torch.__version__, "tiny": args.tiny}
    start = time.perf_counter()
    for name in sections:
        t0 = time.perf_counter()
        try:
            report[name] = RUNNERS[name](device, args)
        except Exception as exc:  # noqa: BLE001 - one failing section must not hide the others
            report[name] = {"error": f"{type(exc).__name__}: {exc}"[:1500]}
        print(f"gpu_check: {name} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    report["seconds"] = time.perf_counter() - start
    print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
