"""Peak FLOP/s table lookup, MFU arithmetic, and ThroughputCallback's token counts and
perf/* scalars on a tiny CPU fit (fake model, see test_callbacks_results.py); its time is
WallClockCallback's clock."""

from __future__ import annotations

import pytest
import torch

from nmtbench.callbacks.throughput import ThroughputCallback
from nmtbench.callbacks.wallclock import WallClockCallback
from nmtbench.flops import (
    chip_key,
    compute_dtype,
    datasheet_peak_flops,
    measure_cpu_matmul_flops,
    mfu,
    resolve_peak_flops,
)
from tests.unit.test_callbacks_results import (
    FLOPS_PER_TOKEN,
    TRAIN_BATCHES,
    TinyData,
    TinyModule,
    batch_tokens,
    tiny_trainer,
)


@pytest.mark.parametrize("name, key", [
    ("NVIDIA H100 80GB HBM3", "h100 sxm"),
    ("NVIDIA H100 PCIe", "h100 pcie"),
    ("NVIDIA H100 NVL", "h100 nvl"),
    ("NVIDIA H200", "h200 sxm"),
    ("NVIDIA A100-SXM4-80GB", "a100"),
    ("NVIDIA A100-PCIE-40GB", "a100"),
    ("Tesla V100-SXM2-16GB", "v100 sxm2"),
    ("Tesla V100-PCIE-32GB", "v100 pcie"),
    ("Tesla V100S-PCIE-32GB", "v100s pcie"),
    ("Tesla P100-PCIE-16GB", "p100 pcie"),
    ("Tesla P100-SXM2-16GB", "p100 sxm2"),
    ("NVIDIA GeForce RTX 4090", None),
])
def test_chip_key(name, key):
    assert chip_key(name) == key


@pytest.mark.parametrize("name, dtype, tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4),
    ("NVIDIA H100 80GB HBM3", "tf32", 494.7),
    ("NVIDIA H100 80GB HBM3", "fp32", 67),
    ("NVIDIA H100 PCIe", "bf16", 756),
    ("NVIDIA A100-SXM4-40GB", "bf16", 312),
    ("NVIDIA A100-SXM4-40GB", "tf32", 156),
    ("NVIDIA A100-SXM4-40GB", "fp32", 19.5),
    ("Tesla V100-SXM2-16GB", "fp16", 125),
    ("Tesla V100-SXM2-16GB", "tf32", 15.7),  # no TF32 on Volta: plain fp32
    ("Tesla P100-PCIE-16GB", "fp16", 18.7),
    ("Tesla P100-SXM2-16GB", "fp32", 10.6),
])
def test_datasheet_peak(name, dtype, tflops):
    peak, source = datasheet_peak_flops(name, dtype)
    assert peak == pytest.approx(tflops * 1e12)
    assert source.startswith("datasheet:") and "dense" in source


def test_datasheet_peak_unknown():
    assert datasheet_peak_flops("Tesla V100-SXM2-16GB", "bf16")[0] is None  # no bf16 on Volta
    peak, why = datasheet_peak_flops("Some GPU", "bf16")
    assert peak is None and "Some GPU" in why


def test_compute_dtype():
    assert compute_dtype("bf16-mixed") == compute_dtype("bf16-true") == "bf16"
    assert compute_dtype("16-mixed") == compute_dtype("16-true") == "fp16"
    assert compute_dtype("32-true") == "fp32" and compute_dtype("32-true", tf32=True) == "tf32"
    assert compute_dtype("64-true") == "fp64"


def test_mfu_arithmetic():
    # 8 devices x 100 TFLOP/s for 10 s = 8e15 FLOPs available; 2e15 used -> 25 %.
    assert mfu(2e15, 10.0, 8, 100e12) == pytest.approx(0.25)
    assert mfu(1.0, 0.0, 1, 1e12) is None and mfu(1.0, 1.0, 1, None) is None


def test_peak_resolution_config_and_cpu():
    assert resolve_peak_flops(torch.device("cpu"), "32-true", configured=5e12) == (5e12, "config")
    peak, source = resolve_peak_flops(torch.device("cpu"), "32-true", cpu_benchmark_seconds=0.05)
    assert peak > 1e6 and source == "measured: CPU fp32 matmul"
    peak, why = resolve_peak_flops(torch.device("cpu"), "32-true", cpu_benchmark_seconds=0)
    assert peak is None and "disabled" in why
    assert measure_cpu_matmul_flops(seconds=0.02, n=64) > 0


def test_window_size_is_checked():
    with pytest.raises(ValueError, match="window_size"):
        ThroughputCallback(window_size=1)


def test_token_counts_and_perf_scalars(tmp_path):
    clock, cb = WallClockCallback(), ThroughputCallback(peak_flops_per_device=1e9)
    trainer = tiny_trainer(tmp_path, [clock, cb], max_steps=6, limit_val_batches=0)
    trainer.fit(TinyModule(), datamodule=TinyData())
    seen = (TRAIN_BATCHES * 4)[:6]
    tokens = sum(batch_tokens(b)[0] for b in seen)
    tgt = sum(batch_tokens(b)[1] for b in seen)
    s, reasons = cb.summary()
    assert reasons == {}
    assert (s["tokens_seen"], s["tgt_tokens_seen"]) == (tokens, tgt)
    assert s["sentences_seen"] == sum(len(b["ids"]) for b in seen)
    assert s["train_flops"] == pytest.approx(FLOPS_PER_TOKEN * tokens)
    seconds = clock.train_seconds_excl_val()  # the one clock
    assert s["tokens_per_sec"] == pytest.approx(tokens / seconds, rel=1e-12)
    assert s["tokens_per_sec_per_device"] == s["tokens_per_sec"]  # world_size 1
    assert s["mfu"] == pytest.approx(s["train_flops"] / seconds / 1e9, rel=1e-12)

    logged = [(step, m) for step, m in trainer.logger.records if "perf/tokens_per_sec" in m]
    assert [step for step, _ in logged] == [2, 4, 6]  # every log_every_n_steps=2
    m = logged[-1][1]
    assert {"perf/tgt_tokens_per_sec", "perf/device/tokens_per_sec", "perf/device/tgt_tokens_per_sec",
            "perf/flops_per_sec", "perf/device/flops_per_sec", "perf/mfu", "perf/samples_per_sec"} <= set(m)
    # per-window identities: FLOPs per token is constant in the fake model
    assert m["perf/flops_per_sec"] == pytest.approx(FLOPS_PER_TOKEN * m["perf/tokens_per_sec"])
    assert m["perf/mfu"] == pytest.approx(m["perf/device/flops_per_sec"] / 1e9)
    assert m["perf/tgt_tokens_per_sec"] < m["perf/tokens_per_sec"]


def test_gradient_accumulation_counts_every_micro_batch(tmp_path):
    cb = ThroughputCallback(peak_flops_per_device=1e9)
    trainer = tiny_trainer(tmp_path, [WallClockCallback(), cb], max_steps=3, limit_val_batches=0,
                           accumulate_grad_batches=2)
    trainer.fit(TinyModule(), datamodule=TinyData())
    tokens = sum(batch_tokens(b)[0] for b in (TRAIN_BATCHES * 4)[:6])
    assert cb.summary()[0]["tokens_seen"] == tokens


def test_without_wallclock_counts_but_no_rates(tmp_path):
    cb = ThroughputCallback(peak_flops_per_device=1e9)
    trainer = tiny_trainer(tmp_path, [cb], max_steps=4, limit_val_batches=0)
    trainer.fit(TinyModule(), datamodule=TinyData())
    s, reasons = cb.summary()
    assert s["tokens_seen"] == sum(batch_tokens(b)[0] for b in (TRAIN_BATCHES * 4)[:4])
    for key in ("tokens_per_sec", "tgt_tokens_per_sec", "tokens_per_sec_per_device", "mfu"):
        assert s[key] is None and "callbacks.wallclock=null" in reasons[key]
    assert not any("perf/tokens_per_sec" in m for _, m in trainer.logger.records)


def test_resume_state_applies_only_when_fit_resumes():
    cb = ThroughputCallback()
    cb.tokens, cb.tgt_tokens, cb.sentences, cb.batches, cb.flops = 100, 40, 10, 3, 5e5
    clock = WallClockCallback(clock=lambda: 0.0)
    clock.load_state_dict({"train_seconds": 3.0, "val_seconds": 1.0, "device_seconds": 3.0})
    clock.on_train_start(None, None)
    resumed = ThroughputCallback()
    resumed.wallclock = clock
    resumed.load_state_dict(cb.state_dict())
    assert resumed.summary()[0]["tokens_seen"] is None  # trainer.test(ckpt_path=...) restores too: ignored
    resumed.on_train_start(None, None)  # a resumed fit applies it
    fields, _ = resumed.summary()
    assert fields["tokens_seen"] == 100 and fields["train_flops"] == 5e5
    assert fields["tokens_per_sec"] == pytest.approx(50.0)  # 100 tokens / (3 - 1) s of training


def test_a_cpu_peak_measured_under_load_is_measured_again_after_training(tmp_path, monkeypatch, caplog):
    """The CPU peak is benchmarked at the start and at the end of training; MFU uses the larger
    (a start-up benchmark that overlapped another process once gave MFU above 100%)."""
    import nmtbench.callbacks.throughput as throughput_module

    readings = iter([(2e8, "measured: CPU fp32 matmul"), (1e9, "measured: CPU fp32 matmul")])
    monkeypatch.setattr(throughput_module, "resolve_peak_flops", lambda *a, **k: next(readings))
    clock, cb = WallClockCallback(), ThroughputCallback()
    trainer = tiny_trainer(tmp_path, [clock, cb], max_steps=4, limit_val_batches=0)
    with caplog.at_level("WARNING"):
        trainer.fit(TinyModule(), datamodule=TinyData())
    s, _ = cb.summary()
    assert s["peak_flops_per_device"] == 1e9
    assert s["peak_flops_source"] == "measured: CPU fp32 matmul, the larger of the start and end of training"
    assert s["mfu"] == pytest.approx(s["train_flops"] / clock.train_seconds_excl_val() / 1e9, rel=1e-12)
    assert "something else was running" in caplog.text
