"""Behaviour of the Transformer (nmtbench.models.transformer) against the model interface."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq
from nmtbench.schema import build_model_from_config as build_model

PAD, V = 0, 50


def tiny(pre_norm: bool = False, **kw) -> TransformerSeq2Seq:
    cfg = TransformerConfig(
        num_encoder_layers=2, num_decoder_layers=2, d_model=32, num_heads=4, d_ff=64,
        pre_norm=pre_norm, max_positions=64, **kw,
    )
    torch.manual_seed(0)
    return TransformerSeq2Seq(cfg, vocab_size=V, pad_id=PAD).eval()


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    src_lens = torch.tensor([7, 4, 5])
    tgt_lens = torch.tensor([6, 3, 5])
    src = torch.randint(4, V, (3, 7), generator=g)
    tgt = torch.randint(4, V, (3, 6), generator=g)
    src[torch.arange(7)[None] >= src_lens[:, None]] = PAD
    tgt[torch.arange(6)[None] >= tgt_lens[:, None]] = PAD
    return src, src_lens, tgt, tgt_lens


def test_output_shapes_and_memory():
    model = tiny()
    src, src_lens, tgt, _ = batch()
    assert model(src, src_lens, tgt).shape == (3, 6, V)
    memory = model.encode(src, src_lens)
    assert "enc" not in memory  # no decoder step reads the encoder output itself
    assert memory["dec0.cross_k"].shape == (3, 4, 7, 8)
    assert model.encoder_states(src, src_lens)[0].shape == (3, 7, 32)
    assert memory["src_mask"].dtype == torch.bool
    assert memory["src_mask"].sum(1).tolist() == src_lens.tolist()
    assert model.model_dim == 32


def test_padding_invariance():
    """Garbage at padded source and target positions changes no output at real positions."""
    model = tiny()
    src, src_lens, tgt, tgt_lens = batch()
    ref = model(src, src_lens, tgt)
    src2, tgt2 = src.clone(), tgt.clone()
    src_pad = torch.arange(7)[None] >= src_lens[:, None]
    tgt_pad = torch.arange(6)[None] >= tgt_lens[:, None]
    src2[src_pad] = torch.randint(4, V, (int(src_pad.sum()),))
    tgt2[tgt_pad] = torch.randint(4, V, (int(tgt_pad.sum()),))
    out = model(src2, src_lens, tgt2)
    real = ~tgt_pad
    torch.testing.assert_close(out[real], ref[real], atol=1e-5, rtol=1e-5)
    # and the source padding really is ignored rather than everything being constant
    src3 = src.clone()
    src3[0, 0] = (src3[0, 0] + 1) % V
    assert not torch.allclose(model(src3, src_lens, tgt)[0], ref[0])


def test_causality():
    model = tiny()
    src, src_lens, tgt, _ = batch()
    ref = model(src, src_lens, tgt)
    tgt2 = tgt.clone()
    tgt2[:, 3] = (tgt2[:, 3] + 7) % V
    out = model(src, src_lens, tgt2)
    torch.testing.assert_close(out[:, :3], ref[:, :3], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out[:, 3:], ref[:, 3:])


@pytest.mark.parametrize("pre_norm", [False, True])
def test_incremental_decoding_matches_teacher_forcing(pre_norm):
    model = tiny(pre_norm=pre_norm)
    src, src_lens, tgt, _ = batch()
    memory = model.encode(src, src_lens)
    full, none_cache = model.decode(tgt, memory)
    assert none_cache is None
    cache: dict = {}
    steps = []
    for t in range(1, tgt.size(1) + 1):
        logits, cache = model.decode(tgt[:, :t], memory, cache)
        assert logits.shape == (3, 1, V)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    assert set(cache) == {f"dec{i}.self_{kv}" for i in range(2) for kv in "kv"}
    assert cache["dec0.self_k"].shape == (3, 4, tgt.size(1), 8)
    assert memory["dec1.cross_k"].shape == (3, 4, 7, 8)  # projected once, in encode


def test_reorder_cache():
    model = tiny()
    src, src_lens, tgt, _ = batch()
    memory = model.encode(src, src_lens)
    cache: dict = {}
    for t in range(1, 4):
        _, cache = model.decode(tgt[:, :t], memory, cache)
    index = torch.tensor([2, 2, 0])
    cache = model.reorder_cache(cache, index)
    memory2 = {k: v.index_select(0, index) for k, v in memory.items()}
    tgt2 = tgt.index_select(0, index)
    step, _ = model.decode(tgt2[:, :4], memory2, cache)
    full, _ = model.decode(tgt2[:, :4], memory2)
    torch.testing.assert_close(step[:, 0], full[:, 3], atol=1e-5, rtol=1e-5)


def test_reorders_compose_and_are_applied_by_the_next_decode():
    """`reorder_cache` is lazy: two reorders compose into one pending index, and the next
    incremental step (with or without autograd) gives the logits of the re-indexed prefixes."""
    model = tiny()
    src, src_lens, tgt, _ = batch()
    memory = model.encode(src, src_lens)
    first, second = torch.tensor([2, 2, 0]), torch.tensor([1, 0, 2])
    tgt2 = tgt.index_select(0, first).index_select(0, second)
    memory2 = {k: v.index_select(0, first).index_select(0, second) for k, v in memory.items()}
    full, _ = model.decode(tgt2[:, :4], memory2)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            cache: dict = {}
            for t in range(1, 4):
                _, cache = model.decode(tgt[:, :t], memory, cache)
            cache = model.reorder_cache(model.reorder_cache(cache, first), second)
            step, cache = model.decode(tgt2[:, :4], memory2, cache)
        torch.testing.assert_close(step[:, 0], full[:, 3], atol=1e-5, rtol=1e-5)
        assert set(cache) == {f"dec{i}.self_{kv}" for i in range(2) for kv in "kv"}  # applied
        assert cache["dec0.self_k"].shape == (3, 4, 4, 8)


def test_decoding_follows_the_weights_the_real_optimizer_writes():
    """Incremental decoding (autograd off, as validation and beam search run it) reads the
    weights of the latest optimizer step. The optimizer is the one training builds on CPU:
    fused Adam, which updates parameters in place without bumping their version counters, so
    any state keyed on `_version` or `data_ptr` would go stale here (issue: validation decoded
    with the output matrix of its first call)."""
    from nmtbench.optim import OptimConfig, build_optimizer

    model = tiny()
    src, src_lens, tgt, _ = batch()
    opt = build_optimizer(OptimConfig(lr=1e-2, schedule="constant", warmup_steps=0), model.parameters())
    assert opt.defaults["fused"], "the CPU default must be the fused optimizer this test is about"
    before = model.tgt_embed.weight.detach().clone()
    for _ in range(3):
        with torch.inference_mode():  # decode step by step, as validation does
            memory, cache = model.encode(src, src_lens), {}
            steps = [model.decode(tgt[:, : t + 1], memory, cache)[0][:, 0] for t in range(tgt.size(1))]
        full = model(src, src_lens, tgt).detach()  # teacher forcing with autograd, as training
        torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
        model.train()
        model(src, src_lens, tgt).logsumexp(-1).mean().backward()
        opt.step()
        opt.zero_grad()
        model.eval()
    assert not torch.equal(before, model.tgt_embed.weight), "the optimizer must have moved the weights"


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_base_and_big():
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        base = build_model({"name": "transformer", "label_smoothing": 0.1}, vocab_size=37000, pad_id=0)
    n = count(base)
    assert 60e6 <= n <= 66e6, n  # Vaswani et al. 2017, Table 3: 65M (ours: 63.08M, no bias)
    # exact: shared embedding + 6 encoder layers + 6 decoder layers (weights, biases, LayerNorms)
    D, Fd = 512, 2048
    attn, ffn = 4 * (D * D + D), 2 * D * Fd + Fd + D
    assert n == 37000 * D + 6 * (attn + ffn + 4 * D) + 6 * (2 * attn + ffn + 6 * D)
    assert base.src_embed.weight is base.tgt_embed.weight
    small = tiny()
    assert torch.all(small.src_embed.weight[PAD] == 0)  # pad row zero
    assert small.src_embed.weight[1:].std().item() == pytest.approx(32**-0.5, rel=0.2)  # N(0, D^-1/2)
    with torch.device("meta"):
        big = build_model(
            {"name": "transformer", "d_model": 1024, "num_heads": 16, "d_ff": 4096, "dropout": 0.3},
            vocab_size=37000, pad_id=0,
        )
    assert 200e6 <= count(big) <= 220e6  # Table 3: 213M


def test_unknown_config_key_is_rejected():
    from nmtbench.errors import ConfigError

    with pytest.raises(ConfigError, match="d_modle"):
        build_model({"name": "transformer", "d_modle": 8}, vocab_size=10, pad_id=0)


@pytest.mark.parametrize("share", [True, False])
def test_flops_match_flop_counter(share):
    model = tiny(share_embeddings=share).train()
    model.dropout.p = 0.0
    B, S, T = 2, 9, 7
    src = torch.randint(4, V, (B, S))
    tgt = torch.randint(4, V, (B, T))
    lens_s, lens_t = torch.full((B,), S), torch.full((B,), T)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(src, lens_s, tgt).sum().backward()
    measured = counter.get_total_flops()
    analytic = model.flops_per_batch(lens_s, lens_t)
    assert abs(analytic - measured) / measured < 0.05, (analytic, measured)
    # per-sequence lengths: a shorter sequence costs less
    assert model.flops_per_batch(torch.tensor([S, 3]), lens_t) < analytic


def test_tiny_model_overfits_tiny_batch():
    model = tiny().train()
    src, src_lens, tgt, tgt_lens = batch()
    labels = torch.roll(tgt, -1, dims=1)
    labels[torch.arange(6)[None] >= (tgt_lens - 1)[:, None]] = -100
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(src, src_lens, tgt).flatten(0, 1), labels.flatten(), ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()


def reference_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
    """softmax(q k^T / sqrt(d) + masks) v written out, with an explicit (L, M) causal mask."""
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5  # (B, H, L, M)
    if is_causal:
        causal = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return scores.softmax(dim=-1) @ v


@pytest.mark.parametrize("pre_norm", [False, True])
def test_sdpa_is_causal_path_equals_masked_reference(monkeypatch, pre_norm):
    """The model's SDPA calls (is_causal=True for decoder self-attention, boolean padding
    masks elsewhere) give the outputs of explicit causal + padding masks, on a padded batch."""
    model = tiny(pre_norm=pre_norm)
    src, src_lens, tgt, tgt_lens = batch()
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("is_causal", False))
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    fast = model(src, src_lens, tgt)
    assert calls.count(True) == 2  # one causal self-attention per decoder layer, no mask tensor
    monkeypatch.setattr(F, "scaled_dot_product_attention", reference_attention)
    ref = model(src, src_lens, tgt)
    real = torch.arange(tgt.size(1))[None] < tgt_lens[:, None]
    torch.testing.assert_close(fast[real], ref[real], atol=1e-5, rtol=1e-5)
    # the module-level call: is_causal equals the explicit lower-triangular boolean mask
    attn = model.decoder[0].self_attn
    x = torch.randn(3, 6, 32)
    k, v = attn.project_kv(x)
    torch.testing.assert_close(attn(x, k, v, None, is_causal=True),
                               attn(x, k, v, torch.ones(6, 6, dtype=torch.bool).tril()))


@pytest.mark.parametrize("queries", [1, 4, 7])
def test_matmul_attention_equals_sdpa(queries):
    """bf16 attention on CPU runs as two matmuls (`_matmul_attention`): SDPA's outputs and
    gradients for padding masks (a row with no key left included), causal masking and no
    mask, with 1 query (a decoding step), K (a sentence's beams on its shared memory) or as
    many as keys; checked in fp32, where the two must agree tightly, and in bf16 within its
    rounding."""
    from nmtbench.models.transformer import _matmul_attention

    g = torch.Generator().manual_seed(0)
    q0, k0, v0 = (torch.randn(3, 4, n, 8, generator=g) for n in (queries, 7, 7))
    mask = (torch.arange(7)[None] < torch.tensor([7, 2, 5])[:, None])[:, None, None, :]
    masked_row = mask.clone()
    masked_row[1] = False  # every key masked: SDPA gives 0 (and zero gradients), not nan
    cases = [dict(mask=mask), dict(mask=masked_row), dict(mask=None)]
    cases += [dict(mask=None, is_causal=True)] if queries == 7 else []  # causal: L == M
    for case in cases:
        grads = []
        for fn in (_matmul_attention, None):
            q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
            if fn is None:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=case["mask"],
                                                     is_causal=case.get("is_causal", False))
            else:
                out = fn(q, k, v, case["mask"], case.get("is_causal", False), 0.0)
            out.pow(2).sum().backward()
            grads.append([out.detach(), q.grad, k.grad, v.grad])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        bf = [t.bfloat16() for t in (q0, k0, v0)]
        torch.testing.assert_close(_matmul_attention(*bf, case["mask"], case.get("is_causal", False), 0.0).float(),
                                   grads[1][0], atol=4e-2, rtol=2e-2)


def test_bf16_attention_on_cpu_does_not_call_sdpa(monkeypatch):
    """The kernel choice itself: fp32 attention goes through SDPA, bf16 (autocast) on CPU does
    not, in teacher forcing and in decoding steps; and the bf16 decoding steps give the
    teacher-forced logits within bf16 rounding."""
    model = tiny()
    src, src_lens, tgt, _ = batch()
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(1) or sdpa(*a, **kw))
    model.decode(tgt, model.encode(src, src_lens))
    assert len(calls) == 2 + 4  # encoder self, decoder self + cross, 2 layers each
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        memory = model.encode(src, src_lens)
        full, _ = model.decode(tgt, memory)
        cache: dict = {}
        steps = []
        for t in range(1, tgt.size(1) + 1):
            logits, cache = model.decode(tgt[:, :t], memory, cache)
            steps.append(logits)
    assert calls == []
    torch.testing.assert_close(torch.cat(steps, 1).float(), full.float(), atol=0.1, rtol=0.05)


def test_bf16_attention_dropout_applies_in_training_only():
    model = tiny(attention_dropout=0.5)
    src, src_lens, tgt, _ = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eval_out = model(src, src_lens, tgt)
        assert torch.equal(eval_out, model(src, src_lens, tgt))
        model.train()
        model.dropout.p = 0.0  # only attention dropout left
        for layer in [*model.encoder, *model.decoder]:
            layer.dropout.p = 0.0
        assert not torch.allclose(model(src, src_lens, tgt), eval_out)
