"""The Transformer of Vaswani et al. 2017, "Attention Is All You Need" (arXiv:1706.03762).

Encoder-decoder, post-norm by default (paper section 3.1), sinusoidal positions (3.5),
one embedding matrix shared by source, target and the pre-softmax projection (3.4).
The defaults of `TransformerConfig` are the paper's base model (Table 3, row "base");
`configs/model/transformer_big.yaml` holds the big model.

Shapes: B batch, S source length, T target length, D d_model, H heads, Dh = D / H,
F d_ff, V vocabulary.

Memory (`encode`): {"src_mask": (B, S) bool, True = real token} and, per decoder layer, the
encoder-decoder attention keys/values "dec{i}.cross_k" / "dec{i}.cross_v" (B, H, S, Dh),
projected once per sentence; they live in the memory, not the cache, because the beams of a
sentence share them (the memory changes only when sentences leave the batch). The encoder
output is not kept (`encoder_states` returns it). `shares_memory_across_beams`: `decode` also
accepts B memory rows for B * k token rows (row r belongs to sentence r // k): cross-attention
runs a sentence's k beams as k query positions against one copy of its keys/values.

Attention runs through `F.scaled_dot_product_attention` (teacher-forced self-attention with
`is_causal=True`, no (T, T) mask; boolean padding masks, True = attend), except in bf16 on
CPU (`_matmul_attention`). docs/performance.md has the measurements behind these choices.

Decoder cache (incremental decoding, see `decode`): a flat dict of tensors, all batch-first,
    "dec{i}.self_k" / "dec{i}.self_v"   (B, H, t, Dh)  self-attention keys/values of the prefix
    "reorder_index"                     (B',)          a pending `reorder_cache`, if any
`reorder_cache` only records the rows to keep (composing with one still pending); the next
`decode` gathers them straight into the tensor that also receives the new position, so the
prefix is copied once per step instead of twice (index_select, then cat).

The model keeps no state derived from its weights between calls (no cached output matrix or
pre-cast copies): the next call uses the parameters as they are (docs/performance.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nmtbench.models import register_model


@dataclass
class TransformerConfig:
    num_encoder_layers: int = 6  # N = 6 (section 3.1, Table 3 base)
    num_decoder_layers: int = 6  # N = 6 (section 3.1, Table 3 base)
    d_model: int = 512  # d_model = 512 (section 3.1, Table 3 base)
    num_heads: int = 8  # h = 8 (section 3.2.2, Table 3 base)
    d_ff: int = 2048  # d_ff = 2048 (section 3.3, Table 3 base)
    dropout: float = 0.1  # P_drop = 0.1 on sub-layer outputs and embedding sums (section 5.4)
    attention_dropout: float = 0.0  # not in the paper (fairseq option); 0 = paper
    activation_dropout: float = 0.0  # not in the paper (fairseq option); 0 = paper
    activation: str = "relu"  # FFN(x) = max(0, xW1 + b1)W2 + b2 (section 3.3, eq. 2)
    pre_norm: bool = False  # paper: post-norm LayerNorm(x + Sublayer(x)) (section 3.1)
    share_embeddings: bool = True  # one matrix for both embeddings and pre-softmax (section 3.4)
    scale_embeddings: bool = True  # embeddings multiplied by sqrt(d_model) (section 3.4)
    max_positions: int = 1024  # length of the sinusoidal table (section 3.5); not learned

    def __post_init__(self) -> None:
        if self.d_model % self.num_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation='{self.activation}' not in {sorted(_ACTIVATIONS)}")
        for name in ("num_encoder_layers", "num_decoder_layers", "d_model", "d_ff", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}
REORDER = "reorder_index"  # decoder cache key of a pending `reorder_cache` (module docstring)


def sinusoidal_positions(num_positions: int, dim: int) -> Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...) (section 3.5)."""
    pos = torch.arange(num_positions, dtype=torch.float32)[:, None]  # (P, 1)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(num_positions, dim)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq[: dim // 2])
    return pe  # (P, D)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (section 3.2.2), split into K/V projection and
    attention so the decoder can cache projected keys and values."""

    def __init__(self, d_model: int, num_heads: int, attention_dropout: float):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, d_model // num_heads
        self.attention_dropout = attention_dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, H, L, Dh)
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (B, L, D) -> 2 x (B, H, L, Dh)
        return self._split(self.k_proj(x)), self._split(self.v_proj(x))

    def forward(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool = False) -> Tensor:
        # x (B, L, D); k, v (B, H, M, Dh); mask bool, True = attend, broadcast to (B, H, L, M);
        # is_causal: position i attends to 0..i (L == M), mask must be None
        q = self._split(self.q_proj(x))  # (B, H, L, Dh)
        p = self.attention_dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype != torch.float32:
            out = _matmul_attention(q, k, v, mask, is_causal, p)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p, is_causal=is_causal)
        return self.out_proj(out.transpose(1, 2).flatten(2))  # (B, L, D)


def _matmul_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool, p: float) -> Tensor:
    """SDPA's semantics as two matmuls (fp32 softmax): bf16 on CPU, where SDPA was 3-7x slower."""
    scores = torch.matmul(q * q.size(-1) ** -0.5, k.transpose(-2, -1))  # (B, H, L, M)
    if is_causal:  # mask the future: j > i
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), -torch.inf)
    if mask is not None:
        scores = scores.masked_fill(~mask, -torch.inf)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    probs = probs if mask is None else probs.masked_fill(~mask, 0.0)  # no key left: 0, as SDPA (not nan)
    return torch.matmul((F.dropout(probs, p) if p else probs).to(v.dtype), v)


class FeedForward(nn.Module):
    """Position-wise FFN(x) = act(x W1 + b1) W2 + b2 (section 3.3)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc2 = nn.Linear(cfg.d_ff, cfg.d_model)
        self.act = _ACTIVATIONS[cfg.activation]
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, L, D)
        return self.fc2(self.activation_dropout(self.act(self.fc1(x))))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # x (B, S, D); mask (B, 1, 1, S)
        h = self.norm1(x) if self.pre_norm else x
        x = x + self.dropout(self.self_attn(h, *self.self_attn.project_kv(h), mask))
        x = x if self.pre_norm else self.norm1(x)
        h = self.norm2(x) if self.pre_norm else x
        x = x + self.dropout(self.ffn(h))
        return x if self.pre_norm else self.norm2(x)


def _append(prefix: Tensor, new: Tensor, reorder: Tensor | None) -> Tensor:
    """prefix (N0, H, t, Dh), new (N, H, 1, Dh) -> (N, H, t + 1, Dh) = [prefix[reorder]; new]:
    one copy of the prefix (the reorder lands straight in the new tensor, no cat)."""
    out = new.new_empty(new.size(0), new.size(1), prefix.size(2) + new.size(2), new.size(3))
    t = prefix.size(2)
    if reorder is None:
        out[:, :, :t] = prefix
    elif torch.is_grad_enabled() and prefix.requires_grad:  # out= does not record gradients
        out[:, :, :t] = prefix.index_select(0, reorder)
    else:
        torch.index_select(prefix, 0, reorder, out=out[:, :, :t])
    out[:, :, t:] = new
    return out


class DecoderLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig, index: int):
        super().__init__()
        self.pre_norm, self.name = cfg.pre_norm, f"dec{index}"
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attention_dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.attention_dropout)
        self.ffn = FeedForward(cfg)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.dropout = nn.Dropout(cfg.dropout)

    def _sublayer(self, x: Tensor, norm: nn.LayerNorm, fn) -> Tensor:
        if self.pre_norm:  # x + Sublayer(LayerNorm(x))
            return x + self.dropout(fn(norm(x)))
        return norm(x + self.dropout(fn(x)))  # LayerNorm(x + Sublayer(x)) (section 3.1)

    def forward(self, x: Tensor, memory: dict[str, Tensor], cache: dict | None,
                reorder: Tensor | None = None) -> Tensor:
        # x (B, t, D); memory from `encode` (cross K/V (B, H, S, Dh)). cache None: teacher
        # forcing, causal self-attention over the t positions; cache dict: incremental, t = 1
        # and the new position attends to the whole cached prefix (no mask needed); reorder:
        # the rows of the cached prefix to continue (pending `reorder_cache`), None = all
        def self_attention(h: Tensor) -> Tensor:
            k, v = self.self_attn.project_kv(h)  # (B, H, t, Dh)
            if cache is not None:
                keys = f"{self.name}.self_k", f"{self.name}.self_v"
                if keys[0] in cache:  # append the new position, applying a pending reorder
                    k, v = (_append(cache[key], new, reorder) for key, new in zip(keys, (k, v)))
                cache[keys[0]], cache[keys[1]] = k, v
            return self.self_attn(h, k, v, None, is_causal=cache is None)

        def cross_attention(h: Tensor) -> Tensor:
            k, v = memory[f"{self.name}.cross_k"], memory[f"{self.name}.cross_v"]  # (Bm, H, S, Dh)
            mask = memory["src_mask"][:, None, None, :]  # (Bm, 1, 1, S)
            beams = h.size(0) // k.size(0)  # token rows per memory row (beam search: k)
            if beams == 1:
                return self.cross_attn(h, k, v, mask)
            # (Bm * k, t, D) -> (Bm, k * t, D): a sentence's beams become extra query positions
            out = self.cross_attn(h.reshape(k.size(0), -1, h.size(-1)), k, v, mask)
            return out.reshape(h.shape)

        x = self._sublayer(x, self.norm1, self_attention)
        x = self._sublayer(x, self.norm2, cross_attention)
        return self._sublayer(x, self.norm3, self.ffn)


@register_model("transformer", TransformerConfig, training={
    "label_smoothing": 0.1,  # epsilon_ls = 0.1 (section 5.4)
    "loss_normalization": "tokens",  # summed loss / target tokens of the step (fairseq, tensor2tensor)
    "optim": {},  # Adam(0.9, 0.98, 1e-9), eq. 3 schedule, warmup 4000: the OptimConfig defaults (5.3)
})
class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder Transformer implementing the nmtbench model interface
    (`nmtbench.models.interface.Seq2SeqModel`, docs/interfaces.md)."""

    shares_memory_across_beams = True  # decode takes B memory rows for B * k token rows

    def __init__(self, cfg: TransformerConfig, vocab_size: int, pad_id: int):
        super().__init__()
        self.cfg, self.vocab_size, self.pad_id = cfg, vocab_size, pad_id
        D = cfg.d_model
        self.embed_scale = math.sqrt(D) if cfg.scale_embeddings else 1.0
        self.src_embed = nn.Embedding(vocab_size, D, padding_idx=pad_id)
        if cfg.share_embeddings:  # one (V, D) matrix: source, target, output (section 3.4)
            self.tgt_embed = self.src_embed
        else:  # three independent matrices
            self.tgt_embed = nn.Embedding(vocab_size, D, padding_idx=pad_id)
            self.out_proj = nn.Linear(D, vocab_size, bias=False)
        self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, D), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_decoder_layers))
        # pre-norm needs a final LayerNorm on each stack (the residual stream is unnormalised)
        self.enc_norm = nn.LayerNorm(D) if cfg.pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(D) if cfg.pre_norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform projections, zero biases, N(0, D^-1/2) embeddings, zero pad row
        (as fairseq's transformer; the paper does not state its initialisation)."""
        for name, p in self.named_parameters():
            if "embed" in name or "norm" in name:
                continue
            if p.dim() == 2:
                nn.init.xavier_uniform_(p)
            else:
                nn.init.zeros_(p)
        embeddings = {id(m): m for m in (self.src_embed, self.tgt_embed)}.values()
        for emb in embeddings:
            nn.init.normal_(emb.weight, mean=0.0, std=self.cfg.d_model**-0.5)
            with torch.no_grad():
                emb.weight[self.pad_id].zero_()
        if not self.cfg.share_embeddings:
            nn.init.normal_(self.out_proj.weight, mean=0.0, std=self.cfg.d_model**-0.5)

    @property
    def model_dim(self) -> int:
        return self.cfg.d_model

    def _embed(self, emb: nn.Embedding, tokens: Tensor, offset: int = 0) -> Tensor:
        # tokens (B, L) -> (B, L, D): scaled embedding + sinusoid at positions offset..offset+L-1
        L = tokens.size(1)
        if offset + L > self.cfg.max_positions:
            raise ValueError(f"length {offset + L} exceeds max_positions={self.cfg.max_positions}")
        x = emb(tokens) * self.embed_scale + self.positions[offset : offset + L]
        return self.dropout(x)

    def _logits(self, h: Tensor) -> Tensor:  # (B, T, D) -> (B, T, V)
        weight = self.tgt_embed.weight if self.cfg.share_embeddings else self.out_proj.weight
        return F.linear(h, weight)

    def encoder_states(self, src: Tensor, src_lens: Tensor) -> tuple[Tensor, Tensor]:
        # src (B, S) long; src_lens (B,) -> encoder output (B, S, D), src_mask (B, S) bool
        S = src.size(1)
        src_mask = torch.arange(S, device=src.device)[None, :] < src_lens.to(src.device)[:, None]
        x = self._embed(self.src_embed, src)
        attn_mask = src_mask[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.encoder:
            x = layer(x, attn_mask)
        return self.enc_norm(x), src_mask

    def encode(self, src: Tensor, src_lens: Tensor) -> dict[str, Tensor]:
        # src (B, S) long; src_lens (B,) -> memory (module docstring): src_mask (B, S) bool
        # (True = token), dec{i}.cross_k / dec{i}.cross_v (B, H, S, Dh)
        enc, src_mask = self.encoder_states(src, src_lens)
        memory = {"src_mask": src_mask}
        for layer in self.decoder:  # encoder-decoder keys/values, once per sentence
            memory[f"{layer.name}.cross_k"], memory[f"{layer.name}.cross_v"] = layer.cross_attn.project_kv(enc)
        return memory

    def decode(
        self, prev_tokens: Tensor, memory: dict[str, Tensor], cache: dict | None = None
    ) -> tuple[Tensor, dict | None]:
        """Teacher-forced (cache None): prev_tokens (B, T) -> logits (B, T, V), None.
        Incremental (cache dict, start with {}): prev_tokens (B, t) is the whole prefix and only
        prev_tokens[:, -1] is new -> logits (B, 1, V) and the updated cache."""
        reorder = None
        if cache is None:
            x = self._embed(self.tgt_embed, prev_tokens)  # (B, T, D)
        else:
            step = prev_tokens.size(1) - 1
            x = self._embed(self.tgt_embed, prev_tokens[:, -1:], offset=step)  # (B, 1, D)
            reorder = cache.pop(REORDER, None)
        for layer in self.decoder:
            x = layer(x, memory, cache, reorder)
        return self._logits(self.dec_norm(x)), cache

    def forward(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor) -> Tensor:
        # src (B, S), src_lens (B,), tgt_in (B, T) -> logits (B, T, V)
        return self.decode(tgt_in, self.encode(src, src_lens))[0]

    @staticmethod
    def reorder_cache(cache: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        """Keep cache rows `index` (beam search: the hypotheses that continue). Lazy: the index
        is stored (composed with one still pending) and the next `decode` applies it while
        appending the new position, so the prefix is copied once per step, not twice."""
        pending = cache.get(REORDER)
        return {**cache, REORDER: index if pending is None else pending.index_select(0, index)}

    def flops_per_batch(self, src_lens: Tensor, tgt_lens: Tensor) -> float:
        """Analytic training FLOPs (forward + backward = 3 x forward) of one batch: 2*m*n*k for
        every matmul (Q/K/V/O projections, attention scores and weighted sum, FFN, output
        projection) at each sequence's own (unpadded) lengths S_i, T_i, i.e. the useful work (a
        padded batch executes more). Attention counts the full S x S / T x T / T x S scores
        (the usual convention, although SDPA's causal kernels may skip the masked half).
        Embedding lookups, softmax, LayerNorm, biases and activations are ignored (O(L*D))."""
        c = self.cfg
        D, F_, V = c.d_model, c.d_ff, self.vocab_size
        S, T = src_lens.double(), tgt_lens.double()
        proj, ffn = 2 * D * D, 2 * 2 * D * F_  # per token: one D x D projection, the FFN
        enc = c.num_encoder_layers * (S * (4 * proj + ffn) + 2 * 2 * S * S * D)
        dec_self = 4 * proj * T + 2 * 2 * T * T * D
        dec_cross = 2 * proj * T + 2 * proj * S + 2 * 2 * T * S * D  # Q, O on T; K, V on S
        dec = c.num_decoder_layers * (dec_self + dec_cross + ffn * T)
        out = 2 * T * D * V
        return float(3 * (enc + dec + out).sum())
