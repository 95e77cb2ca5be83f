"""Global (soft) attention for the recurrent decoder.

Luong et al. 2015, "Effective Approaches to Attention-based Neural Machine Translation"
(arXiv:1508.04025), section 3.1, eq. 8, scores a decoder state h_t against every encoder
state h_s:

    dot      score = h_t . h_s
    general  score = h_t . (W_a h_s)
    concat   score = v_a . tanh(W_a [h_t; h_s]) = v_a . tanh(W_q h_t + W_k h_s)

`concat` is also the additive score of Bahdanau et al. 2015 ("Neural Machine Translation by
Jointly Learning to Align and Translate", arXiv:1409.0473, appendix A.1.2):
e_ij = v_a . tanh(W_a s_{i-1} + U_a h_j). Which decoder state is the query (the current one,
Luong, or the previous one, Bahdanau) is decided by the caller (`nmtbench.models.lstm`).

a_t = softmax(score) over the real source positions; padded positions get a score of -inf,
hence a weight of exactly 0. The context is c_t = sum_s a_t(s) h_s.

The key side (W_a h_s, W_k h_s) depends only on the encoder, so `keys` computes it once per
sentence and the decoder reuses it at every step. Shapes: B batch, T decoder steps,
S source length, H hidden size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

SCORES = ("dot", "general", "concat")


def padding_bias(src_lens: Tensor, max_len: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """(B,) lengths -> (B, 1, S) additive mask: 0 at real positions, -inf at padding."""
    pad = torch.arange(max_len, device=src_lens.device)[None, :] >= src_lens[:, None]  # (B, S)
    bias = torch.zeros(pad.shape, dtype=dtype, device=src_lens.device)
    return bias.masked_fill(pad, float("-inf")).unsqueeze(1)


class GlobalAttention(nn.Module):
    """score -> masked softmax -> context, for T queries at once (T = 1 while stepping)."""

    def __init__(self, hidden_size: int, score: str):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"attention score '{score}' not in {SCORES}")
        self.score = score
        # W_a (general) / W_k (concat): applied to the encoder states once, in `keys`.
        self.key_proj = nn.Linear(hidden_size, hidden_size, bias=False) if score != "dot" else None
        # W_q and v_a of the concat / additive score (Luong eq. 8; Bahdanau A.1.2 has no biases).
        concat = score == "concat"
        self.query_proj = nn.Linear(hidden_size, hidden_size, bias=False) if concat else None
        self.v = nn.Linear(hidden_size, 1, bias=False) if concat else None

    def keys(self, memory: Tensor) -> Tensor:
        """(B, S, H) encoder states -> (B, S, H) keys; `dot` uses the states themselves."""
        return memory if self.key_proj is None else self.key_proj(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, bias: Tensor
                ) -> tuple[Tensor, Tensor]:
        """query (B, T, H); keys, memory (B, S, H); bias (B, 1, S) from `padding_bias`.

        Returns the context (B, T, H) and the attention weights (B, T, S).
        """
        if self.score == "concat":
            q = self.query_proj(query)  # (B, T, H)
            hidden = torch.tanh(q.unsqueeze(2) + keys.unsqueeze(1))  # (B, T, S, H)
            scores = self.v(hidden).squeeze(-1) + bias  # (B, T, S)
        else:
            scores = torch.baddbmm(bias, query, keys.transpose(1, 2))  # (B, T, S)
        weights = torch.softmax(scores, dim=-1)  # (B, T, S); exactly 0 where bias = -inf
        return torch.bmm(weights, memory), weights  # (B, T, H), (B, T, S)

    def flops(self, hidden_size: int, num_src: float, num_tgt: float, num_pairs: float) -> float:
        """Forward matmul FLOPs for `num_src` source tokens, `num_tgt` target tokens and
        `num_pairs` = sum over sentences of S_i * T_i (query/key pairs)."""
        H = hidden_size
        flops = 2 * H * num_pairs * 2  # scores (dot products or v_a) + context
        if self.key_proj is not None:
            flops += 2 * H * H * num_src  # W_a h_s / W_k h_s, once per source token
        if self.query_proj is not None:
            flops += 2 * H * H * num_tgt  # W_q h_t
        return flops


__all__ = ["SCORES", "GlobalAttention", "padding_bias"]
