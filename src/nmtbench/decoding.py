"""Batched greedy and beam search over the model interface (docs/interfaces.md).

The same code decodes every model: it only calls `encode`, `decode` and `reorder_cache`,
and expands/reorders the memory dict generically with `index_select(0, ...)`.

Conventions (both searches):
- Output length. Sentence b may emit at most `max_len[b] = src_lens[b] + max_len_b` tokens
  before EOS (src_lens counts the source EOS, as in fairseq's max_len_a * src_len + max_len_b
  with max_len_a = 0; Vaswani et al. 2017, section 6.1: "input length + 50"); at step
  `max_len[b]` EOS is forced.
- EOS handling. Hypotheses end at the first EOS; the returned token lists exclude BOS, EOS
  and pad; PAD and BOS are never generated.
- Scores are sums of fp32 log-probabilities, logit - logsumexp(logits) over the whole
  vocabulary (PAD/BOS are masked after normalising). Greedy search takes the arg-max logit.
- Finished sentences leave the batch (rows, memory and cache are shrunk), so late steps
  only pay for the sentences still being decoded; beam search runs its first step once per
  sentence (the K beams are identical until then) and copies the result to the K beams.
- Beam search keeps one memory row per sentence for models that declare
  `shares_memory_across_beams` (their `decode` maps token row r to memory row r // K);
  for the others the memory is expanded to one row per beam.
- `use_cache=False` re-runs the teacher-forced `decode(prefix, memory, None)` on the whole
  prefix each step and takes the last position (the quadratic baseline).

Beam search (fairseq's `SequenceGenerator` scheme, with the GNMT length penalty):
- Each step takes the top 2K candidates over the flattened (K x V) beam-by-vocabulary
  scores (computed as each beam's top 2K, then the top 2K of those K * 2K: the same set,
  without normalising and offsetting all K x V scores). EOS candidates among the top K become finished hypotheses, scored
  `log P(y) / lp(|y|)` with lp(n) = ((5 + n) / 6) ** alpha (Wu et al. 2016, eq. 14; the paper
  uses alpha = 0.6, Vaswani et al. 2017 section 6.1) and |y| counting the EOS (as
  tensor2tensor, which produced the paper's numbers). The K best non-EOS candidates
  stay alive.
- A sentence is done once it has K finished hypotheses (fairseq's rule; it makes beam 1 equal
  greedy search exactly) or has reached its maximum length. The best finished hypothesis by
  normalised score is returned.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def gnmt_length_penalty(length: int | float | Tensor, alpha: float) -> float | Tensor:
    """GNMT length penalty lp(Y) = ((5 + |Y|) / 6) ** alpha (Wu et al. 2016, eq. 14)."""
    return ((5.0 + length) / 6.0) ** alpha


def _next_logits(
    model: nn.Module, tokens: Tensor, memory: dict[str, Tensor], cache: dict | None
) -> tuple[Tensor, dict | None]:
    # tokens (N, t) prefix incl. BOS -> logits of the next token (N, V) in fp32
    if cache is None:
        logits, _ = model.decode(tokens, memory, None)  # (N, t, V)
    else:
        logits, cache = model.decode(tokens, memory, cache)  # (N, 1, V)
    return logits[:, -1].float(), cache


def _mask_special(logits: Tensor, step: int, max_lens: Tensor, bos_id: int, eos_id: int, pad_id: int,
                  lse: Tensor | None = None) -> None:
    # logits (N, V) in place: never PAD/BOS; only EOS once a row reaches its maximum length.
    # lse (N, 1): the rows' log-normalisers (log-probs = logits - lse), computed before masking
    logits[:, pad_id] = -torch.inf
    if bos_id != eos_id:
        logits[:, bos_id] = -torch.inf
    at_max = max_lens <= step  # (N,)
    if at_max.any():  # forced EOS; floored (log-prob >= -1e9) so a model giving EOS zero
        eos = logits[at_max, eos_id]  # probability still ends
        floor = -1e9 if lse is None else lse[at_max, 0] - 1e9
        logits[at_max] = -torch.inf
        logits[at_max, eos_id] = eos.clamp(min=floor)


def _top_candidates(logits: Tensor, lse: Tensor, scores: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The n best continuations of each sentence over all its beams, best first.

    logits (B*K, V) masked, lse (B*K, 1), scores (B, K) running log-probs ->
    cand_scores (B, n) = scores + log-prob, cand_beam (B, n), cand_tok (B, n).
    Equal to a top-n over the flattened (K x V) scores: a candidate among the n best of its
    sentence is among the n best of its own beam, so each beam's top-n (on the raw logits: the
    beam's normaliser and running score are constants of the row) holds all of them, and only
    K * n numbers are normalised, offset and ranked instead of K * V.
    """
    B, K = scores.shape
    top_logits, top_tok = logits.topk(min(n, logits.size(1)), dim=1)  # (B*K, n')
    per_beam = top_tok.size(1)
    cand = (top_logits - lse).view(B, K, per_beam).add_(scores[:, :, None]).view(B, K * per_beam)
    cand_scores, pos = cand.topk(min(n, K * per_beam), dim=1)  # (B, n)
    return cand_scores, pos // per_beam, top_tok.view(B, K * per_beam).gather(1, pos)


def _select(memory: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
    return {k: v.index_select(0, index) for k, v in memory.items()}


@torch.no_grad()  # not inference_mode: there autocast re-casts every weight at every step
def greedy_search(
    model: nn.Module, src: Tensor, src_lens: Tensor, *, bos_id: int, eos_id: int, pad_id: int,
    max_len_b: int = 50, use_cache: bool = True,
) -> list[list[int]]:
    """Greedy decoding of a batch: src (B, S), src_lens (B,) -> one token list per row."""
    B, device = src.size(0), src.device
    memory = model.encode(src, src_lens)
    max_lens = src_lens.to(device) + max_len_b  # (B,)
    alive = torch.arange(B, device=device)  # original row of each active sentence
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)  # (N, t)
    cache: dict | None = {} if use_cache else None
    hyps: list[list[int]] = [[] for _ in range(B)]
    for step in range(int(max_lens.max()) + 1):
        logits, cache = _next_logits(model, tokens, memory, cache)  # (N, V)
        _mask_special(logits, step, max_lens, bos_id, eos_id, pad_id)
        next_tok = logits.argmax(dim=-1)  # (N,): the most probable token (log-softmax is monotone)
        done = next_tok == eos_id
        if done.any():
            for i in done.nonzero().flatten().tolist():
                hyps[int(alive[i])] = tokens[i, 1:].tolist()
            keep = (~done).nonzero().flatten()
            if keep.numel() == 0:
                break
            alive, max_lens, next_tok = alive[keep], max_lens[keep], next_tok[keep]
            tokens, memory = tokens[keep], _select(memory, keep)
            if cache is not None:
                cache = model.reorder_cache(cache, keep)
        tokens = torch.cat([tokens, next_tok[:, None]], dim=1)
    return hyps


@torch.no_grad()  # not inference_mode: there autocast re-casts every weight at every step
def beam_search(
    model: nn.Module, src: Tensor, src_lens: Tensor, *, bos_id: int, eos_id: int, pad_id: int,
    beam_size: int = 4, length_penalty: float = 0.6, max_len_b: int = 50, use_cache: bool = True,
    return_scores: bool = False,
) -> list[list[int]] | tuple[list[list[int]], list[float]]:
    """Beam search of a batch: src (B, S), src_lens (B,) -> the best hypothesis of each row
    (and, with `return_scores`, its length-normalised log-probability)."""
    alpha, K = length_penalty, beam_size
    B, device = src.size(0), src.device
    shared = bool(getattr(model, "shares_memory_across_beams", False))  # memory row per sentence
    memory = model.encode(src, src_lens)
    if not shared:
        memory = _select(memory, torch.arange(B, device=device).repeat_interleave(K))
    max_lens = src_lens.to(device) + max_len_b  # (B,)
    alive = torch.arange(B, device=device)  # original row of each active sentence
    tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)  # (B*K, t)
    scores = torch.zeros(B, K, device=device)  # (B, K) running log-probs of live hypotheses
    scores[:, 1:] = -torch.inf  # all beams start identical: expand only beam 0 at step 0
    num_finished = torch.zeros(B, dtype=torch.long, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]  # (normalised, ids)
    cache: dict | None = {} if use_cache else None
    for step in range(int(max_lens.max()) + 1):
        if step == 0 and K > 1:  # the K beams of a sentence are identical: run one, copy it K times
            first_memory = memory if shared else _select(memory, torch.arange(0, B * K, K, device=device))
            logits, cache = _next_logits(model, tokens[::K], first_memory, cache)  # (B, V)
            beams = torch.arange(B, device=device).repeat_interleave(K)
            logits = logits.index_select(0, beams)  # (B*K, V)
            if cache is not None:
                cache = model.reorder_cache(cache, beams)
        else:
            logits, cache = _next_logits(model, tokens, memory, cache)  # (B*K, V)
        lse = logits.logsumexp(dim=-1, keepdim=True)  # (B*K, 1): log-prob = logit - lse
        _mask_special(logits, step, max_lens.repeat_interleave(K), bos_id, eos_id, pad_id, lse)
        cand_scores, cand_beam, cand_tok = _top_candidates(logits, lse, scores, 2 * K)  # (B, 2K)
        is_eos = (cand_tok == eos_id) & (cand_scores > -torch.inf)  # (B, 2K)

        # EOS among the top K: finished hypotheses, |y| = step + 1 tokens including EOS
        eos_top = is_eos[:, :K]
        if eos_top.any():
            lp = float(gnmt_length_penalty(step + 1, alpha))
            hits = eos_top.nonzero().tolist()
            beams, raw = cand_beam.tolist(), cand_scores.tolist()
            for b, j in hits:
                ids = tokens[b * K + beams[b][j], 1:].tolist()
                finished[int(alive[b])].append((raw[b][j] / lp, ids))
            num_finished += eos_top.sum(dim=1)

        # the K best non-EOS candidates stay alive
        live_scores, live_pos = cand_scores.masked_fill(is_eos, -torch.inf).topk(K, dim=1)  # (B, K)
        live_beam, live_tok = cand_beam.gather(1, live_pos), cand_tok.gather(1, live_pos)
        rows = torch.arange(B, device=device)[:, None] * K + live_beam  # (B, K) rows to continue

        done = (num_finished >= K) | (max_lens <= step)  # (B,)
        keep = (~done).nonzero().flatten()  # active sentences that continue
        if keep.numel() == 0:
            break
        rows = rows[keep].flatten()  # (B'*K,)
        tokens = torch.cat([tokens[rows], live_tok[keep].view(-1, 1)], dim=1)
        if cache is not None:
            cache = model.reorder_cache(cache, rows)
        if keep.numel() < B:  # the memory changes only when sentences leave the batch
            memory = _select(memory, keep if shared else rows)
            alive, max_lens, num_finished = alive[keep], max_lens[keep], num_finished[keep]
        scores, B = live_scores[keep], keep.numel()

    best = [max(hyps, key=lambda h: h[0]) for hyps in finished]  # first of equals wins
    if return_scores:
        return [ids for _, ids in best], [score for score, _ in best]
    return [ids for _, ids in best]

