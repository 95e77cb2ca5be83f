"""nmtbench.precision: which precision a run uses on a CPU, and decoding in it."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from nmtbench import precision as P
from nmtbench.trainer_setup import degrade_gpu_settings
from tests.conftest import compose_config


@pytest.fixture
def native(monkeypatch):
    def set_native(value: bool):
        monkeypatch.setattr(P, "cpu_native_bf16", lambda: (value, "AVX512-BF16" if value else "neither AMX nor AVX512-BF16"))
    return set_native


@pytest.mark.parametrize("has_bf16,expected", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_is_bf16_mixed_only_where_the_cpu_has_native_bf16(native, has_bf16, expected):
    native(has_bf16)
    precision, why = P.resolve_precision("auto", on_gpu=False)
    assert precision == expected
    assert ("natively" in why) == has_bf16


def test_explicit_bf16_falls_back_to_fp32_without_native_bf16_and_fp16_always_on_cpu(native):
    native(False)
    assert P.resolve_precision("bf16-mixed", on_gpu=False)[0] == "32-true"
    native(True)
    assert P.resolve_precision("bf16-mixed", on_gpu=False) == ("bf16-mixed", "as configured")
    precision, why = P.resolve_precision("16-mixed", on_gpu=False)
    assert precision == "32-true" and "needs a GPU" in why
    assert P.resolve_precision("32-true", on_gpu=False)[0] == "32-true"


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU trainer's choice")
@pytest.mark.parametrize("has_bf16", [True, False])
def test_the_cpu_trainer_resolves_auto_at_startup_and_says_why(native, has_bf16, caplog):
    native(has_bf16)
    cfg = compose_config(["trainer=cpu"])
    assert cfg.trainer.precision == "auto"
    with caplog.at_level("INFO"):
        degrade_gpu_settings(cfg)
    assert cfg.trainer.precision == ("bf16-mixed" if has_bf16 else "32-true")
    assert "Precision" in caplog.text and ("natively" in caplog.text) == has_bf16


def test_this_machine_reports_a_reason():
    native, why = P.cpu_native_bf16()
    assert isinstance(native, bool) and why


def test_decoding_context_autocasts_only_mixed_precisions():
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with P.decoding_context("bf16-mixed", torch.device("cpu")):
        assert (x @ w).dtype == torch.bfloat16
    with P.decoding_context("32-true", torch.device("cpu")):
        assert (x @ w).dtype == torch.float32
    assert P.decoding_precision("32-true", torch.device("cpu")) == "32-true"


def test_evaluation_decodes_in_the_training_precision_where_native(native):
    cpu = torch.device("cpu")
    native(True)
    assert P.decoding_precision("auto", cpu, trained="bf16-mixed") == "bf16-mixed"
    assert P.decoding_precision("auto", cpu, trained="32-true") == "32-true"
    native(False)
    assert P.decoding_precision("auto", cpu, trained="bf16-mixed") == "32-true"


def test_clipping_by_norm_works_with_the_fused_optimizer_under_bf16_mixed():
    """Lightning's mixed-precision plugin refuses clipping with a fused optimizer (the CPU
    default) even in bf16, where nothing needs unscaling: Seq2SeqModule clips itself."""
    from nmtbench.config import to_container
    from nmtbench.module import Seq2SeqModule

    cfg = compose_config(["model=lstm_attention", "size=smoke", "model.hidden_size=16", "model.embed_dim=8"])
    module = Seq2SeqModule({"model": to_container(cfg.model)}, vocab_size=30)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=1, gradient_clip_val=0.01, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    module.trainer = trainer
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.defaults["fused"]
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    module.configure_gradient_clipping(optimizer, gradient_clip_val=0.01, gradient_clip_algorithm="norm")
    total = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()])
    assert float(total) == pytest.approx(0.01, rel=1e-3)
