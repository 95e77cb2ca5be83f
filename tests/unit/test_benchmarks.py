"""Benchmark helpers: the peer systems compute the same loss as ours, and their absence is
reported with the install command (the benchmarks themselves print numbers, never assert them)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from benchmarks import peers, train_throughput
from nmtbench.loss import label_smoothed_loss
from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq

V = 60


def batch():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, V, (3, 7), generator=g)
    src_lens = torch.tensor([7, 5, 2])
    src[torch.arange(7)[None] >= src_lens[:, None]] = peers.PAD
    tgt = torch.randint(4, V, (3, 6), generator=g)
    tgt[1, 4:] = peers.PAD
    tgt_in = torch.cat([torch.full((3, 1), peers.BOS), tgt[:, :-1]], 1)
    return {"src": src, "src_lens": src_lens, "tgt_in": tgt_in, "tgt_out": tgt}


def test_missing_peer_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    message = peers.missing("transformers", "onmt")
    assert "transformers, OpenNMT-py not installed" in message and '-e ".[bench]"' in message
    assert 'torch==' in message


def test_ratios_are_ours_over_the_peer_and_none_when_absent():
    systems = {"base/nmtbench": {"tokens_per_s": 150.0}, "base/hf_marian": {"tokens_per_s": 100.0},
               "lstm-mini/nmtbench_feed": {"tokens_per_s": 80.0}, "lstm-mini/nmtbench_nofeed": {"tokens_per_s": 100.0}}
    r = train_throughput.ratios(systems)
    assert r["speedup_vs_peer"] == pytest.approx(1.5)
    assert r["input_feeding_cost_mini"] == pytest.approx(1.25)
    assert r["speedup_vs_peer_mini"] is None and r["speedup_vs_onmt_lstm"] is None


@pytest.mark.skipif(peers.missing("transformers") is not None, reason="needs the bench extra (transformers)")
def test_marian_peer_has_our_dimensions_and_the_same_loss():
    cfg = TransformerConfig(num_encoder_layers=1, num_decoder_layers=1, d_model=16, num_heads=2, d_ff=32,
                            max_positions=64)
    hf = peers.marian(cfg, V, dropout=0.0).eval()
    ours = TransformerSeq2Seq(cfg, V, peers.PAD)
    hf_weights = sum(p.numel() for n, p in hf.named_parameters() if "embed_positions" not in n)
    assert hf_weights == sum(p.numel() for p in ours.parameters())  # + HF's fixed sinusoid tables
    b = batch()
    mask = b["src"].ne(peers.PAD).long()
    logits = hf(input_ids=b["src"], attention_mask=mask, decoder_input_ids=b["tgt_in"]).logits
    loss, _, ntok = label_smoothed_loss(logits.detach().clone(), b["tgt_out"], peers.PAD, 0.1)
    torch.testing.assert_close(peers.marian_loss(hf, b, 0.1), loss / ntok)


@pytest.mark.skipif(peers.missing("onmt") is not None, reason="needs the bench extra (OpenNMT-py)")
def test_onmt_peer_runs_and_uses_cross_entropy():
    torch.manual_seed(0)
    model = peers.OnmtLSTM(num_layers=2, hidden_size=16, embed_dim=8, vocab_size=V, dropout=0.0).eval()
    b = batch()
    scores = model(b["src"], b["src_lens"], b["tgt_in"], b["tgt_out"])
    assert scores.shape == (3, 6, V)
    _, nll, ntok = label_smoothed_loss(scores.detach().clone(), b["tgt_out"], peers.PAD, 0.0)
    torch.testing.assert_close(peers.onmt_loss(model, b, 0.0), nll / ntok)
