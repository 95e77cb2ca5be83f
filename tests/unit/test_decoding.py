"""Greedy and beam search (nmtbench.decoding) on a controllable fake model and a tiny
random Transformer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nmtbench.decoding import _top_candidates, beam_search, gnmt_length_penalty, greedy_search
from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq

PAD, UNK, BOS, EOS, A, B_ = 0, 1, 2, 3, 4, 5
IDS = dict(bos_id=BOS, eos_id=EOS, pad_id=PAD)


class FakeModel(nn.Module):
    """Next-token distribution is a lookup on the prefix (after BOS): `table[prefix]` maps
    token -> probability weight; unknown prefixes use `default`. Implements the model
    interface, with and without a cache, so the searches can be checked by hand."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], default: dict[int, float], vocab: int = 6):
        super().__init__()
        self.table, self.default, self.vocab = table, default, vocab
        self.calls = 0

    def encode(self, src, src_lens):
        return {"src": src, "lens": src_lens}

    def _logp(self, prefix: tuple[int, ...]) -> torch.Tensor:
        w = torch.full((self.vocab,), 1e-9)
        for tok, p in self.table.get(prefix, self.default).items():
            w[tok] = p
        return (w / w.sum()).log()

    def decode(self, prev_tokens, memory, cache=None):
        self.calls += 1
        assert prev_tokens.size(0) == memory["src"].size(0)  # memory follows the rows
        rows = [tuple(r[1:].tolist()) for r in prev_tokens]
        if cache is None:
            T = prev_tokens.size(1)
            return torch.stack([torch.stack([self._logp(r[:t]) for t in range(T)]) for r in rows]), None
        if cache:  # the cache rows follow the beams and the shrinking batch
            assert cache["n"].tolist() == [len(r) for r in rows]
        cache = {"n": torch.tensor([len(r) + 1 for r in rows])}
        return torch.stack([self._logp(r) for r in rows])[:, None], cache

    @staticmethod
    def reorder_cache(cache, index):
        return {k: v.index_select(0, index) for k, v in cache.items()}


def src_batch(lens):
    lens = torch.tensor(lens)
    src = torch.full((len(lens), int(lens.max())), 7)
    src[torch.arange(src.size(1))[None] >= lens[:, None]] = PAD
    return src, lens


def test_length_penalty_values():
    assert gnmt_length_penalty(1, 0.6) == 1.0
    assert gnmt_length_penalty(7, 0.6) == pytest.approx(2**0.6)
    assert gnmt_length_penalty(10, 0.0) == 1.0
    assert gnmt_length_penalty(19, 1.0) == pytest.approx(4.0)


# Step 0: EOS has log-prob -1.0 (finished, |y| = 1); "A" has -1.1 and then EOS with -0.05:
# raw -1.15 over |y| = 2. Raw (alpha = 0) prefers the short one, alpha = 1 the long one.
RANKING = {
    (): {EOS: math.exp(-1.0), A: math.exp(-1.1), B_: 1 - math.exp(-1.0) - math.exp(-1.1)},
    (A,): {EOS: math.exp(-0.05), B_: 1 - math.exp(-0.05)},
    (B_,): {EOS: 0.5, A: 0.5},
}


@pytest.mark.parametrize("use_cache", [True, False])
def test_finished_hypotheses_ranked_by_normalised_score(use_cache):
    model = FakeModel(RANKING, default={EOS: 1.0})
    src, lens = src_batch([3])
    hyps, scores = beam_search(model, src, lens, beam_size=2, length_penalty=0.0, use_cache=use_cache,
                               return_scores=True, **IDS)
    assert hyps == [[]] and scores[0] == pytest.approx(-1.0, abs=1e-5)
    hyps, scores = beam_search(model, src, lens, beam_size=2, length_penalty=1.0, use_cache=use_cache,
                               return_scores=True, **IDS)
    assert hyps == [[A]]  # EOS excluded, nothing after it
    assert scores[0] == pytest.approx(-1.15 / gnmt_length_penalty(2, 1.0), abs=1e-5)
    # greedy takes EOS at step 0 (argmax)
    assert greedy_search(model, src, lens, use_cache=use_cache, **IDS) == [[]]


def test_eos_cuts_hypotheses_and_batch_rows_are_independent():
    table = {
        (): {A: 0.7, B_: 0.3}, (A,): {B_: 0.8, A: 0.2}, (B_,): {A: 0.8, B_: 0.2},
        (A, B_): {EOS: 0.9, A: 0.1}, (B_, A): {EOS: 0.9, B_: 0.1},
    }
    model = FakeModel(table, default={EOS: 0.5, A: 0.5})
    src, lens = src_batch([2, 5, 1])
    for out in (greedy_search(model, src, lens, **IDS), beam_search(model, src, lens, beam_size=2, **IDS)):
        assert out == [[A, B_]] * 3
    assert all(EOS not in h and BOS not in h and PAD not in h for h in out)


@pytest.mark.parametrize("beam", [1, 3])
def test_max_length_respected(beam):
    model = FakeModel({}, default={A: 0.5, B_: 0.5, EOS: 1e-6})  # never wants to stop
    src, lens = src_batch([1, 4, 2])
    for max_len_b in (0, 3):
        if beam == 1:
            out = greedy_search(model, src, lens, max_len_b=max_len_b, **IDS)
        else:
            out = beam_search(model, src, lens, beam_size=beam, max_len_b=max_len_b, **IDS)
        assert [len(h) for h in out] == (lens + max_len_b).tolist()


def tiny_transformer(seed: int = 0) -> TransformerSeq2Seq:
    torch.manual_seed(seed)
    cfg = TransformerConfig(num_encoder_layers=2, num_decoder_layers=2, d_model=32, num_heads=4, d_ff=64,
                            max_positions=128)
    model = TransformerSeq2Seq(cfg, vocab_size=40, pad_id=PAD).eval()
    with torch.no_grad():  # make EOS likely enough that hypotheses end at different lengths
        model.src_embed.weight[EOS] *= 4
    return model


def random_src(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([6, 3, 8, 1, 5])
    src = torch.randint(4, 40, (5, 8), generator=g)
    src[torch.arange(8)[None] >= lens[:, None]] = PAD
    return src, lens


@pytest.mark.parametrize("V", [3, 50])
def test_top_candidates_equal_a_top_k_over_all_beams_and_tokens(V):
    """Each beam's top 2K, then the top 2K of those, selects what a top 2K over the flattened
    (K x V) log-prob + running-score matrix selects, masked (-inf) entries included."""
    g = torch.Generator().manual_seed(0)
    B, K = 5, 4
    for _ in range(20):
        logits = torch.randn(B * K, V, generator=g) * 3
        logits[torch.rand(B * K, V, generator=g) < 0.2] = -torch.inf
        logits[:, 0] = 1.0  # at least one finite entry per row
        scores = torch.randn(B, K, generator=g)
        scores[0, 1:] = -torch.inf  # step 0: only beam 0 is live
        lse = logits.logsumexp(dim=-1, keepdim=True)
        flat = (logits.log_softmax(-1).view(B, K, V) + scores[:, :, None]).view(B, K * V)
        ref_scores, ref_idx = flat.topk(min(2 * K, K * V), dim=1)
        cand_scores, cand_beam, cand_tok = _top_candidates(logits.clone(), lse, scores, 2 * K)
        torch.testing.assert_close(cand_scores, ref_scores)
        finite = ref_scores > -torch.inf  # the order among -inf entries is arbitrary
        assert torch.equal((cand_beam * V + cand_tok)[finite], ref_idx[finite])


def test_beam_one_equals_greedy():
    model, (src, lens) = tiny_transformer(), random_src()
    greedy = greedy_search(model, src, lens, max_len_b=10, **IDS)
    beam = beam_search(model, src, lens, beam_size=1, max_len_b=10, **IDS)
    assert beam == greedy
    assert len({len(h) for h in greedy}) > 1  # the check is not vacuous: lengths differ


def test_beam_with_cache_equals_without():
    model, (src, lens) = tiny_transformer(1), random_src(1)
    kw = dict(beam_size=4, max_len_b=8, return_scores=True, **IDS)
    hyps_c, scores_c = beam_search(model, src, lens, use_cache=True, **kw)
    hyps_n, scores_n = beam_search(model, src, lens, use_cache=False, **kw)
    assert hyps_c == hyps_n
    assert scores_c == pytest.approx(scores_n, abs=1e-4)
    assert greedy_search(model, src, lens, max_len_b=8, use_cache=False, **IDS) == greedy_search(
        model, src, lens, max_len_b=8, **IDS)


def test_beam_finds_better_normalised_scores_than_greedy():
    """Beam 4 never scores below beam 1 here (the search explores a superset early on)."""
    model, (src, lens) = tiny_transformer(2), random_src(2)
    kw = dict(max_len_b=8, length_penalty=0.6, return_scores=True, **IDS)
    _, s1 = beam_search(model, src, lens, beam_size=1, **kw)
    _, s4 = beam_search(model, src, lens, beam_size=4, **kw)
    assert sum(s4) > sum(s1)


class WithEncoderOutput(nn.Module):
    """The Transformer with the memory layout it had before: the encoder output kept in it and
    one copy per beam (beam search copies both whenever finished sentences leave the batch)."""

    shares_memory_across_beams = False

    def __init__(self, model: TransformerSeq2Seq):
        super().__init__()
        self.model = model

    def encode(self, src, src_lens):
        return {**self.model.encode(src, src_lens), "enc": self.model.encoder_states(src, src_lens)[0]}

    def decode(self, prev_tokens, memory, cache=None):
        return self.model.decode(prev_tokens, memory, cache)

    def reorder_cache(self, cache, index):
        return self.model.reorder_cache(cache, index)


def test_beam_without_encoder_output_or_per_beam_memory_gives_identical_hypotheses():
    model, (src, lens) = tiny_transformer(3), random_src(3)
    assert "enc" not in model.encode(src, lens)
    kw = dict(beam_size=4, max_len_b=8, return_scores=True, **IDS)
    hyps, scores = beam_search(model, src, lens, **kw)
    hyps_enc, scores_enc = beam_search(WithEncoderOutput(model), src, lens, **kw)
    assert hyps == hyps_enc
    assert scores == pytest.approx(scores_enc, abs=1e-5)
    assert len({len(h) for h in hyps}) > 1  # sentences finish at different steps: memory shrinks


@pytest.mark.parametrize("per_beam_memory", [False, True])
def test_beam_search_runs_its_first_step_once_per_sentence(per_beam_memory):
    """The K beams are identical before the first step: it runs on B rows (not B * K) and the
    cache is copied to the beams; the next steps run on B * K rows."""
    model, (src, lens) = tiny_transformer(3), random_src(3)
    searched = WithEncoderOutput(model) if per_beam_memory else model
    rows = []
    decode = searched.decode
    searched.decode = lambda prev, memory, cache=None: rows.append(prev.size(0)) or decode(prev, memory, cache)
    hyps = beam_search(searched, src, lens, beam_size=4, max_len_b=8, **IDS)
    assert rows[0] == src.size(0) and rows[1] == 4 * src.size(0)
    assert hyps == beam_search(model, src, lens, beam_size=4, max_len_b=8, use_cache=False, **IDS)
