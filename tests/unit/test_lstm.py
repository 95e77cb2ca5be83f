"""Behaviour of the recurrent baselines (nmtbench.models.lstm) against the model interface."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from nmtbench.config import from_mapping
from nmtbench.errors import ConfigError
from nmtbench.models.lstm import LSTMConfig, LSTMSeq2Seq, reverse_source
from nmtbench.optim import OptimConfig
from nmtbench.schema import build_model_from_config, model_settings

from ..conftest import compose_config

PAD, EOS, V = 0, 3, 40

# (attention, attention_score, input_feeding): every score family in both decoder modes.
VARIANTS = [
    ("none", "dot", False),
    ("luong", "dot", True),
    ("luong", "general", True),
    ("luong", "concat", True),
    ("bahdanau", "dot", True),
    ("luong", "dot", False),
    ("luong", "general", False),
    ("luong", "concat", False),
    ("bahdanau", "dot", False),
]
IDS = [f"{a}-{s}-{'feed' if f else 'nofeed'}" for a, s, f in VARIANTS]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are overhead-bound: extra threads only contend with other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(attention="luong", score="dot", feeding=True, seed=0, **kw) -> LSTMSeq2Seq:
    fields = dict(num_layers=2, hidden_size=16, embed_dim=12, attention=attention,
                  attention_score=score, input_feeding=feeding)
    cfg = LSTMConfig(**{**fields, **kw})
    torch.manual_seed(seed)
    return LSTMSeq2Seq(cfg, vocab_size=V, pad_id=PAD).eval()


def batch(seed: int = 0):
    """Sources of different lengths ending in EOS and right-padded; targets BOS + y."""
    g = torch.Generator().manual_seed(seed)
    src_lens = torch.tensor([7, 3, 5])
    src = torch.randint(4, V, (3, 7), generator=g)
    src[torch.arange(3), src_lens - 1] = EOS
    src[torch.arange(7)[None] >= src_lens[:, None]] = PAD
    tgt = torch.randint(4, V, (3, 6), generator=g)
    tgt[:, 0] = 2
    return src, src_lens, tgt


def test_reverse_source_keeps_eos_and_padding_in_place():
    src = torch.tensor([[5, 6, 7, EOS, PAD, PAD],
                        [8, EOS, PAD, PAD, PAD, PAD],
                        [4, 5, 6, 7, 9, EOS]])
    lens = torch.tensor([4, 2, 6])
    assert reverse_source(src, lens).tolist() == [
        [7, 6, 5, EOS, PAD, PAD], [8, EOS, PAD, PAD, PAD, PAD], [9, 7, 6, 5, 4, EOS]]
    assert torch.equal(reverse_source(reverse_source(src, lens), lens), src)  # an involution


def test_encoder_reads_the_reversed_source():
    """reverse_source=True is the same network fed the reversed sentence."""
    src, src_lens, tgt = batch()
    rev = tiny(reverse_source=True)
    fwd = tiny(reverse_source=False)
    fwd.load_state_dict(rev.state_dict())
    out = rev(src, src_lens, tgt)
    reversed_by_hand = reverse_source(src, src_lens)
    torch.testing.assert_close(out, fwd(reversed_by_hand, src_lens, tgt), atol=0, rtol=0)
    assert not torch.allclose(out, fwd(src, src_lens, tgt))


@pytest.mark.parametrize(("attention", "score", "feeding"), VARIANTS, ids=IDS)
def test_shapes_memory_and_model_dim(attention, score, feeding):
    model = tiny(attention, score, feeding)
    src, src_lens, tgt = batch()
    assert model(src, src_lens, tgt).shape == (3, 6, V)
    memory = model.encode(src, src_lens)
    assert memory["h"].shape == memory["c"].shape == (3, 2, 16)
    assert all(v.size(0) == 3 for v in memory.values())  # batch-first for index_select(0)
    if attention != "none":
        assert memory["enc_out"].shape == (3, 7, 16)
        assert ("enc_keys" in memory) == (attention == "bahdanau" or score != "dot")
        assert model.attention_weights(src, src_lens, tgt).shape == (3, 6, 7)
    assert model.model_dim == 16


@pytest.mark.parametrize(("attention", "score", "feeding"), VARIANTS, ids=IDS)
def test_padding_is_ignored(attention, score, feeding):
    """Other ids at padded positions or extra padding columns leave the outputs unchanged,
    and padded positions get exactly zero attention weight."""
    model = tiny(attention, score, feeding)
    src, src_lens, tgt = batch()
    ref = model(src, src_lens, tgt)
    pad = src.eq(PAD)
    garbage = src.masked_scatter(pad, torch.randint(4, V, (int(pad.sum()),)))
    torch.testing.assert_close(model(garbage, src_lens, tgt), ref, atol=0, rtol=0)
    longer = F.pad(src, (0, 4), value=PAD)  # 4 more padding columns
    torch.testing.assert_close(model(longer, src_lens, tgt), ref, atol=1e-6, rtol=1e-6)
    changed = src.clone()
    changed[1, 0] = (changed[1, 0] + 1) % V  # a real token: the output must move
    assert not torch.allclose(model(changed, src_lens, tgt)[1], ref[1])
    if attention != "none":
        weights = model.attention_weights(longer, src_lens, tgt)  # (B, T, S + 4)
        pad_long = longer.eq(PAD)[:, None, :].expand_as(weights)
        assert torch.all(weights[pad_long] == 0)
        assert torch.all(weights[~pad_long] > 0)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 6))


@pytest.mark.parametrize(("attention", "score", "feeding"), VARIANTS, ids=IDS)
def test_incremental_decoding_matches_teacher_forcing(attention, score, feeding):
    model = tiny(attention, score, feeding)
    src, src_lens, tgt = batch()
    memory = model.encode(src, src_lens)
    ref, none_cache = model.decode(tgt, memory, None)
    assert none_cache is None
    cache, steps = {}, []
    for t in range(tgt.size(1)):
        logits, cache = model.decode(tgt[:, : t + 1], memory, cache)
        assert logits.shape == (3, 1, V)
        steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, 1), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("attention", "score", "feeding"), [
    ("none", "dot", False), ("luong", "general", True), ("bahdanau", "dot", False)])
def test_reorder_cache_follows_the_selected_rows(attention, score, feeding):
    model = tiny(attention, score, feeding)
    src, src_lens, tgt = batch()
    index = torch.tensor([2, 0, 0, 1])
    memory = model.encode(src, src_lens)
    cache = {}
    for t in range(3):
        _, cache = model.decode(tgt[:, : t + 1], memory, cache)
    cache = model.reorder_cache(cache, index)
    memory = {k: v.index_select(0, index) for k, v in memory.items()}
    tgt_r = tgt[index]
    for t in range(3, tgt.size(1)):
        logits, cache = model.decode(tgt_r[:, : t + 1], memory, cache)
    ref = model(src[index], src_lens[index], tgt_r)[:, -1:]
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("attention", "score"), [
    ("none", "dot"), ("luong", "dot"), ("luong", "general"), ("luong", "concat"),
    ("bahdanau", "dot")])
def test_tiny_model_overfits_a_tiny_batch(attention, score):
    """Random 6-token targets for 3 sources are memorised in 150 Adam steps."""
    torch.manual_seed(0)
    model = LSTMSeq2Seq(LSTMConfig(num_layers=1, hidden_size=32, embed_dim=16, dropout=0.0,
                                   attention=attention, attention_score=score,
                                   input_feeding=attention != "none"), vocab_size=V, pad_id=PAD)
    src, src_lens, _ = batch()
    y = torch.randint(4, V, (3, 5), generator=torch.Generator().manual_seed(1))
    tgt_in = torch.cat([torch.full((3, 1), 2), y], 1)
    tgt_out = torch.cat([y, torch.full((3, 1), EOS)], 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(src, src_lens, tgt_in).flatten(0, 1), tgt_out.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    logits = model(src, src_lens, tgt_in)
    assert F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten()).item() < 0.05
    assert torch.equal(logits.argmax(-1), tgt_out)


@pytest.mark.parametrize(("attention", "score", "feeding"),
                         [v for v in VARIANTS if v[1] != "concat"] + [("luong", "concat", True)])
def test_flops_match_the_flop_counter(attention, score, feeding):
    """Analytic FLOPs vs FlopCounterMode (forward + backward) on the decomposed LSTM path.

    On CPU nn.LSTM runs as one oneDNN (mkldnn) op that FlopCounterMode cannot see, so the
    count is taken with oneDNN disabled: aten's LSTM then runs as addmm/mm ops. The
    remaining gap (< 2% here) is the backward matmul that is never computed for the zero
    initial state of the encoder."""
    model = tiny(attention, score, feeding, dropout=0.0).train()
    B, S, T = 4, 9, 7  # no padding: FlopCounterMode counts padded positions too
    src, tgt = torch.randint(4, V, (B, S)), torch.randint(4, V, (B, T))
    src_lens, tgt_lens = torch.full((B,), S), torch.full((B,), T)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.backends.mkldnn.flags(enabled=False), FlopCounterMode(display=False) as counter:
            model(src, src_lens, tgt).sum().backward()
    counted = counter.get_total_flops()
    analytic = model.flops_per_batch(src_lens, tgt_lens)
    assert abs(analytic - counted) / counted < 0.05, (analytic, counted)


def _paper_model(name: str) -> LSTMSeq2Seq:
    cfg = compose_config([f"model={name}"]).model
    with torch.device("meta"):  # 200M+ parameters without allocating them
        return build_model_from_config(cfg, vocab_size=50_000, pad_id=PAD)


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_parameter_counts():
    """Sutskever et al. 2014, section 3.4: 4 x 1000 LSTMs, 1000-dim embeddings, 160k/80k
    vocabularies: "384M parameters of which 64M are pure recurrent connections (32M for the
    encoder LSTM and 32M for the decoder LSTM)" = 64M + 160M + 80M (input) + 80M (softmax).
    Luong et al. 2015 do not report a count; their 50k + 50k vocabularies give
    64M + 3 x 50M = 214M for the no-attention model, and global attention with input feeding
    adds 4M (the fed h~ in the first decoder layer: 4H x H) + 2M (W_c: H x 2H) = 220M.
    nn.LSTM's second bias vector adds 8k per layer (64k in all)."""
    seq2seq, attention = _paper_model("lstm_seq2seq"), _paper_model("lstm_attention")
    enc = _count(seq2seq.encoder)
    total_seq2seq, total_attention = _count(seq2seq) / 1e6, _count(attention) / 1e6
    print(f"\nencoder LSTM {enc / 1e6:.3f}M (Sutskever: 32M); with 50k vocabularies "
          f"lstm_seq2seq {total_seq2seq:.1f}M, lstm_attention {total_attention:.1f}M")
    assert 32.0e6 <= enc <= 32.04e6 and 32.0e6 <= _count(seq2seq.decoder) <= 32.04e6
    # Sutskever's total from our recurrent part + his vocabularies: 384M.
    assert abs(2 * enc + (160_000 + 80_000 + 80_000) * 1000 - 384e6) < 0.1e6
    assert 213.9e6 <= _count(seq2seq) <= 214.2e6
    assert 219.9e6 <= _count(attention) <= 220.2e6


def test_paper_configs_and_presets_are_valid():
    optim_keys = {"name", "lr", "betas", "eps", "weight_decay", "schedule", "warmup_steps",
                  "decay_start_epoch", "decay_factor"}
    for name, attention in (("lstm_seq2seq", "none"), ("lstm_attention", "luong")):
        composed = compose_config([f"model={name}"])
        cfg = composed.model
        assert cfg.name == "lstm" and cfg.label_smoothing == 0.0
        assert set(cfg.optim) == optim_keys
        assert composed.trainer.gradient_clip_val == 5.0  # "rescaled whenever its norm exceeds 5"
        optim = from_mapping(OptimConfig, cfg.optim, "model.optim")
        assert (optim.name, optim.lr, optim.schedule) == ("sgd", 1.0, "halving")
        assert (optim.decay_start_epoch, optim.decay_factor) == (9, 0.5)
        arch, _ = model_settings(cfg)
        assert (arch.num_layers, arch.hidden_size, arch.embed_dim) == (4, 1000, 1000)
        assert arch.dropout == 0.2
        assert arch.attention == attention and arch.reverse_source and arch.init_range == 0.1
        for size in ("smoke", "mini"):
            preset = compose_config([f"model={name}", f"size={size}"])
            assert model_settings(preset.model)[0].attention == attention
            assert from_mapping(OptimConfig, preset.model.optim, "model.optim").name == "adam"
            assert preset.trainer.gradient_clip_val == 5.0


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.hiden_size"):
        model_settings({"name": "lstm", "hiden_size": 8})
    with pytest.raises(ConfigError, match="attention"):
        model_settings({"name": "lstm", "attention": "local"})
    with pytest.raises(ConfigError, match="share_embeddings"):
        model_settings({"name": "lstm", "share_embeddings": True, "embed_dim": 8, "hidden_size": 16})


def test_shared_embeddings_tie_source_target_and_output():
    model = tiny(share_embeddings=True, embed_dim=16)
    assert model.src_embed.weight is model.tgt_embed.weight is model.output.weight
    src, src_lens, tgt = batch()
    assert model(src, src_lens, tgt).shape == (3, 6, V)


def use_plain_autograd(monkeypatch) -> None:
    """Replace the feeding loop's deferred-gradient functions (nmtbench.models.recurrence) by
    step-by-step autograd: the reference they are compared with."""
    import nmtbench.models.lstm as lstm_module
    from nmtbench.models.recurrence import Tape

    monkeypatch.setattr(Tape, "share", lambda self, x: x)
    monkeypatch.setattr(lstm_module, "step_linear", lambda x, w, tape: x @ w.t())

    def plain_attention(query, keys, values, bias, *tapes):
        weights = torch.baddbmm(bias, query, keys.transpose(1, 2)).softmax(dim=-1)
        return torch.bmm(weights, values), weights

    monkeypatch.setattr(lstm_module, "step_attention", plain_attention)


@pytest.mark.parametrize("attention,score", [("luong", "dot"), ("luong", "general"), ("luong", "concat"),
                                             ("bahdanau", "dot")])
def test_input_feeding_gradients_equal_plain_autograd(monkeypatch, attention, score):
    """The feeding loop defers the gradients of per-step weights and encoder states to one
    product after the loop (nmtbench.models.recurrence); they equal step-by-step autograd."""
    src, src_lens, tgt = batch()

    def grads(model):
        model(src, src_lens, tgt).square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = grads(tiny(attention, score, dropout=0.0))
    use_plain_autograd(monkeypatch)
    plain = grads(tiny(attention, score, dropout=0.0))
    assert fast.keys() == plain.keys() and len(fast) > 5
    for name in plain:
        torch.testing.assert_close(fast[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("attention,score", [("luong", "dot"), ("luong", "general"), ("bahdanau", "dot")])
def test_input_feeding_trains_under_bf16_autocast(monkeypatch, attention, score):
    """trainer=gpu runs bf16-mixed: the feeding loop's hand-written backward gets bf16 grads
    beside fp32 weights. Its gradients under autocast match plain autograd under autocast
    (bf16 tolerance) and come back in each parameter's dtype (CPU autocast stands in for CUDA)."""
    src, src_lens, tgt = batch()

    def grads(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(src, src_lens, tgt)
        assert out.dtype == torch.bfloat16  # autocast did run the products in bf16
        out.float().square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fast = grads(tiny(attention, score, dropout=0.0))
    use_plain_autograd(monkeypatch)
    plain = grads(tiny(attention, score, dropout=0.0))
    assert fast.keys() == plain.keys() and len(fast) > 5
    for name in plain:
        assert fast[name].dtype == torch.float32 and torch.isfinite(fast[name]).all(), name
        error = (fast[name] - plain[name]).norm() / plain[name].norm().clamp_min(1e-12)
        assert error < 0.05, (name, float(error))
