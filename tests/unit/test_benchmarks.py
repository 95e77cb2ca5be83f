"""Benchmark helpers: the peer systems compute the same loss as ours, and their absence is
reported with the install command; the ratios over rounds and precisions are computed as
documented (the benchmarks themselves print numbers, never assert them)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from benchmarks import decode, peers, precisions, train_throughput
from benchmarks.timing import ratio_over_rounds
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


def entry(**rounds_by_precision: list[float]) -> dict:
    """A system's JSON entry from its tokens/s per round in each precision."""
    per = {p: {"tokens_per_s": sum(r) / len(r), "tokens_per_s_rounds": r} for p, r in rounds_by_precision.items()}
    return precisions.system_entry(per, train_throughput.RATE)


def test_system_entry_keeps_the_fp32_keys_and_names_the_faster_precision():
    e = entry(fp32=[100.0, 110.0, 90.0], bf16=[200.0, 150.0, 250.0])
    assert e["best_precision"] == "bf16" and set(e["precision"]) == {"fp32", "bf16"}
    assert e["tokens_per_s"] == pytest.approx(100.0)  # the fp32 figures, for readers of the old keys
    assert "tokens_per_s_rounds" not in e
    assert entry(fp32=[3.0, 1.0, 2.0], bf16=[1.5, 1.5, 1.5])["best_precision"] == "fp32"  # by the median
    assert "tokens_per_s" not in entry(bf16=[1.0])  # no fp32 run: no fp32 keys


def test_ratios_are_medians_over_rounds_in_fp32_and_at_each_systems_best_precision():
    systems = {
        # ours is faster in bf16, MarianMT in fp32 (bf16 slower for it): _best compares those two
        "base/nmtbench": entry(fp32=[150.0, 120.0, 100.0], bf16=[300.0, 240.0, 300.0]),
        "base/hf_marian": entry(fp32=[100.0, 100.0, 100.0], bf16=[90.0, 80.0, 70.0]),
        "lstm-mini/nmtbench_feed": entry(fp32=[80.0, 80.0], bf16=[100.0, 100.0]),
        "lstm-mini/nmtbench_nofeed": entry(fp32=[100.0, 120.0], bf16=[100.0, 100.0]),
    }
    r = train_throughput.ratios(systems)
    for key in train_throughput.RATIOS:  # every key and its spread is in the JSON line, None when absent
        assert key in r and f"{key}_spread" in r
    for key in train_throughput.BEST:
        assert f"{key}_best" in r and f"{key}_best_spread" in r
    assert r["speedup_vs_peer"] == pytest.approx(1.2)  # fp32 per round: 1.5, 1.2, 1.0
    assert r["speedup_vs_peer_spread"] == pytest.approx((1.5 - 1.0) / 1.2)
    assert r["speedup_vs_peer_best"] == pytest.approx(3.0)  # ours bf16 / MarianMT fp32: 3.0, 2.4, 3.0
    assert r["speedup_vs_peer_best_spread"] == pytest.approx((3.0 - 2.4) / 3.0)
    assert r["input_feeding_cost_mini"] == pytest.approx(1.375)  # fp32: median of 1.25, 1.5
    assert "input_feeding_cost_mini_best" not in r
    assert r["speedup_vs_peer_mini"] is None and r["speedup_vs_peer_mini_best"] is None
    assert r["speedup_vs_onmt_lstm_best"] is None and r["speedup_vs_onmt_lstm_best_spread"] is None


def test_a_peer_with_variants_is_compared_at_its_fastest_variant_and_precision():
    """MarianMT runs with HF's default attention and with its eager attention: the fp32 ratio
    takes the first variant (the peer as it comes), `_best` the variant and precision with the
    highest median rate (here eager in bf16), and the printed line names it."""
    systems = {
        "mini/nmtbench": entry(fp32=[100.0, 100.0, 100.0], bf16=[300.0, 300.0, 300.0]),
        "mini/hf_marian": entry(fp32=[80.0, 80.0, 80.0], bf16=[100.0, 100.0, 100.0]),
        "mini/hf_marian_eager": entry(fp32=[50.0, 50.0, 50.0], bf16=[150.0, 200.0, 250.0]),
    }
    assert precisions.best_variant(systems, ("mini/hf_marian", "mini/hf_marian_eager"),
                                   train_throughput.RATE) == ("mini/hf_marian_eager", "bf16")
    r = train_throughput.ratios(systems)
    assert r["speedup_vs_peer_mini"] == pytest.approx(1.25)  # fp32, default attention: 100 / 80
    assert r["speedup_vs_peer_mini_best"] == pytest.approx(1.5)  # bf16 / eager bf16: 2.0, 1.5, 1.2
    assert r["speedup_vs_peer_mini_best_spread"] == pytest.approx((2.0 - 1.2) / 1.5)
    lines = precisions.ratio_lines({"systems": systems, **r}, train_throughput.RATIOS, train_throughput.BEST,
                                   train_throughput.RATE)
    assert any("1.50x" in line and "hf_marian_eager bf16" in line for line in lines)
    del systems["mini/hf_marian_eager"]  # a variant that did not run: the other one alone
    assert train_throughput.ratios(systems)["speedup_vs_peer_mini_best"] == pytest.approx(3.0)


def test_ratio_over_rounds_needs_one_rate_per_round_on_both_sides():
    assert ratio_over_rounds([2.0], [1.0]) == (2.0, 0.0)
    with pytest.raises(ValueError):
        ratio_over_rounds([1.0, 2.0], [1.0])


def test_decode_ratios_and_rounds():
    rows = {0: (2.0, 20, 4), 1: (1.0, 10, 4), 2: (4.0, 40, 4)}  # batch -> (seconds, tokens, sentences)
    f = decode.figures(rows, 2)  # round 0: batches 0 and 2, round 1: batch 1
    assert f[decode.RATE] == pytest.approx([8 / 6.0, 4 / 1.0])
    assert f["sentences_per_s"] == pytest.approx(12 / 7.0) and f["sentences"] == 12
    per_round = {"cache": {"fp32": [10.0, 12.0], "bf16": [20.0, 30.0]}, "hf": {"fp32": [5.0, 6.0], "bf16": [8.0, 12.0]},
                 "greedy": {"fp32": [4.0, 4.0]}, "hf_greedy": {"fp32": [2.0, 4.0]}}
    systems = {name: precisions.system_entry({p: {"sentences_per_s": 0.0, decode.RATE: r} for p, r in rates.items()},
                                             decode.RATE) for name, rates in per_round.items()}
    r = decode.ratios(systems)
    assert r["speedup_vs_peer"] == pytest.approx(2.0) and r["speedup_vs_peer_spread"] == pytest.approx(0.0)
    assert r["speedup_vs_peer_best"] == pytest.approx(2.5)  # bf16 / bf16: 2.5, 2.5
    assert r["speedup_vs_peer_greedy"] == pytest.approx(1.5) and r["speedup_vs_peer_greedy_spread"] == pytest.approx(2 / 3)
    assert r["speedup_vs_peer_greedy_best"] == pytest.approx(1.5)


def test_precisions_default_to_fp32_and_bf16_only_where_bf16_is_native(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("nmtbench.precision.cpu_native_bf16", lambda: (True, "AVX512-BF16"))
    assert precisions.resolve(None, cpu) == (["fp32", "bf16"], None)
    monkeypatch.setattr("nmtbench.precision.cpu_native_bf16", lambda: (False, "neither AMX nor AVX512-BF16"))
    chosen, note = precisions.resolve(None, cpu)
    assert chosen == ["fp32"] and "fp32 only" in note and "neither AMX" in note
    chosen, note = precisions.resolve("bf16,fp32", cpu)  # asked for: run, and say it is emulated
    assert chosen == ["bf16", "fp32"] and "emulated" in note
    with pytest.raises(SystemExit):
        precisions.resolve("fp16", cpu)


def test_every_system_runs_each_precision_on_the_same_batches_in_rounds():
    """run_group end to end on tiny models: every (system, precision) steps on every batch,
    warm-up untimed, and the figures have one rate per round."""
    cfg = TransformerConfig(num_encoder_layers=1, num_decoder_layers=1, d_model=16, num_heads=2, d_ff=32,
                            max_positions=64)
    systems = []
    for name in ("a", "b"):
        model = TransformerSeq2Seq(cfg, V, peers.PAD).train()
        systems.append(train_throughput.System(name, model, train_throughput.ours_loss(model, 0.1),
                                               train_throughput.flops_of(model)))
    runs = [train_throughput.Run(s, p) for s in systems for p in ("fp32", "bf16")]
    rounds = [[batch()], [batch(), batch()]]
    train_throughput.run_group(runs, rounds, warmup=1, log=lambda msg: None)
    for run in runs:
        assert run.rounds == [0, 1, 1] and len(run.timing.wall) == 3
        f = run.figures(len(rounds))
        assert len(f[train_throughput.RATE]) == 2 and f["steps"] == 3 and f["target_tokens"] == 3 * 16
    assert precisions.system_entry({r.precision: r.figures(2) for r in runs[:2]}, train_throughput.RATE)[
        "best_precision"] in ("fp32", "bf16")


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
