"""Recurrent encoder-decoder baselines: Sutskever et al. 2014 and Luong et al. 2015.

One stacked-LSTM encoder-decoder with `attention`:
  none      Sutskever et al. 2014, "Sequence to Sequence Learning with Neural Networks"
            (arXiv:1409.3215): the decoder starts from the encoder's final (h, c) and sees the
            source only through them. `model=lstm_seq2seq` is the En-De version measured by
            Luong et al. 2015, Table 1, "Base + reverse + dropout" (14.0 BLEU).
  luong     Luong et al. 2015, "Effective Approaches to Attention-based Neural Machine
            Translation" (arXiv:1508.04025), global attention (section 3.1) on the top decoder
            state h_t, attentional vector h~_t = tanh(W_c [c_t; h_t]) (eq. 5), softmax on h~_t
            (eq. 6), input feeding (section 3.3): [emb(y_{t-1}); h~_{t-1}] is the decoder input.
  bahdanau  Bahdanau et al. 2015 (arXiv:1409.0473): additive score on the *previous* top
            decoder state s_{t-1} (appendix A.1.2); the context c_t is fed to the decoder input
            with emb(y_{t-1}) (eq. 4: s_t = f(s_{t-1}, y_{t-1}, c_t)).

`input_feeding: false` (attention models only) drops the recurrence through the attention:
the decoder LSTM runs over the whole target at once (one nn.LSTM call) and attention for all
steps is two batched matmuls, the GNMT-style fast path (Wu et al. 2016). For luong this is
Table 1's "global attention" row without "feed input"; for bahdanau the context then only
reaches the output layer. With feeding, the decoder is a Python loop over steps on the
nn.LSTM's own weights; everything that does not depend on the previous step is computed once
outside it: embeddings, the embedding half of layer 1's gates, the encoder-side attention keys
(W_a h_s) and the output layer. Weights and encoder states read at every step get their
gradients in one product after the loop (`nmtbench.models.recurrence`), and step outputs are
stacked once. The measurements behind these choices: docs/performance.md.

Deviations from the papers (all three used word-level vocabularies and MATLAB/Theano code):
- One joint BPE vocabulary (`data.vocab_size`) instead of separate 50k word vocabularies
  (Luong section 4.1; Sutskever used 160k/80k). Source and target embedding tables are still
  separate unless `share_embeddings: true` (then source, target and output layer share one
  matrix, which needs embed_dim == hidden_size). No <unk> replacement (BPE makes it moot).
- Source reversal (Sutskever section 3.3) reverses the real tokens only: EOS stays last and
  padding stays at the end, "a b c EOS pad" -> "c b a EOS pad", so the decoder starts right
  after the first source word, as in the paper's "C B A <EOS>" picture (Figure 1).
- Dropout p (Zaremba et al. 2015, as cited by Luong section 4.1) on the non-recurrent
  connections: embeddings, between LSTM layers, and on the output-layer input (h~_t, or h_t
  without attention). With input feeding the dropped h~_t is also what is fed back
  (OpenNMT's choice; the paper does not say).
- h~_0 = 0 for the first input-feeding step (not specified in the paper).
- nn.LSTM keeps two bias vectors per layer (b_ih + b_hh); the papers have one.
- Luong's `location` score is not offered (Table 4: `dot` is the best global score).
- bahdanau uses the stacked unidirectional LSTM encoder (RNNsearch: one bidirectional GRU
  layer, 620-dim embeddings), starts the decoder from the encoder's final state (instead of
  tanh(W_s h_1-backward)), and uses Luong's attentional layer tanh(W_c [c_t; h_t]) instead of
  the maxout deep output, so all three variants share the output layer.

Shapes: B batch, S source length, T target length, E embed_dim, H hidden_size,
L num_layers, V vocabulary.

Memory (`encode`), all batch-first: "h", "c" (B, L, H) final encoder states; with attention
also "enc_out" (B, S, H) encoder top states (zeros at padding), "enc_keys" (B, S, H) the
precomputed key projection (not for `dot`), "src_bias" (B, 1, S) 0 / -inf padding mask.
Cache (`decode`): "h", "c" (B, L, H) decoder states after the last step; "feed" (B, H) the
fed-back h~ (luong with input feeding).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nmtbench.models import register_model
from nmtbench.models.attention import SCORES, GlobalAttention, padding_bias
from nmtbench.models.recurrence import Tape, lstm_step, step_attention, step_linear

ATTENTIONS = ("none", "luong", "bahdanau")


@dataclass
class LSTMConfig:
    # Defaults: Luong et al. 2015 global attention with input feeding (sections 3.1, 3.3, 4.1).
    num_layers: int = 4  # "stacking LSTM models have 4 layers" (Luong 4.1; Sutskever 3.4)
    hidden_size: int = 1000  # "each with 1000 cells" (Luong 4.1; Sutskever 3.4)
    embed_dim: int = 1000  # "1000-dimensional embeddings" (Luong 4.1; Sutskever 3.4)
    dropout: float = 0.2  # "dropout with probability 0.2" (Luong 4.1, after Zaremba et al.)
    attention: str = "luong"  # none | luong | bahdanau; global attention (Luong 3.1)
    attention_score: str = "dot"  # dot | general | concat; best global score (Luong Table 4)
    input_feeding: bool = True  # feed h~_{t-1} into the decoder (Luong 3.3; Table 1, +1.3 BLEU)
    reverse_source: bool = True  # Sutskever 3.3; Luong Table 1 "+reverse" (+1.3 BLEU)
    share_embeddings: bool = False  # papers: separate source/target vocabularies and matrices
    init_range: float = 0.1  # "uniformly initialized in [-0.1, 0.1]" (Luong 4.1)

    def __post_init__(self) -> None:
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention='{self.attention}' not in {ATTENTIONS}")
        if self.attention_score not in SCORES:
            raise ValueError(f"attention_score='{self.attention_score}' not in {SCORES}")
        for name in ("num_layers", "hidden_size", "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.share_embeddings and self.embed_dim != self.hidden_size:
            raise ValueError("share_embeddings needs embed_dim == hidden_size (the output's input)")
        if self.attention == "none" and self.input_feeding:
            warnings.warn("model.input_feeding is ignored without attention", stacklevel=2)
        if self.attention != "luong" and self.attention_score != "dot":
            warnings.warn(f"model.attention_score is ignored with attention={self.attention}",
                          stacklevel=2)


def reversal_index(src_lens: Tensor, max_len: int) -> Tensor:
    """(B, S) gather index that reverses the first src_len - 1 positions (the words) of each
    row and leaves EOS and padding in place. The permutation is its own inverse."""
    pos = torch.arange(max_len, device=src_lens.device)[None, :]  # (1, S)
    words = (src_lens - 1)[:, None]  # (B, 1)
    return torch.where(pos < words, words - 1 - pos, pos)  # (B, S)


def reverse_source(src: Tensor, src_lens: Tensor) -> Tensor:
    """[a b c EOS pad] -> [c b a EOS pad] per row (Sutskever et al. 2014, section 3.3)."""
    return src.gather(1, reversal_index(src_lens, src.size(1)))


@register_model("lstm", LSTMConfig, training={
    "label_smoothing": 0.0,  # plain cross entropy (Sutskever et al. 2014, Luong et al. 2015)
    # summed loss / sentences of the step: "the gradient divided by 128" (Luong 4.1; Sutskever 3.4)
    "loss_normalization": "sentences",
    "optim": {  # Luong et al. 2015, section 4.1 (Sutskever et al. 2014, 3.4)
        "name": "sgd",  # "we train ... using plain SGD"; adam selectable
        "lr": 1.0,  # "we start with a learning rate of 1"
        "betas": [0.9, 0.999],  # Adam only (not in the papers): Kingma & Ba 2015 defaults
        "eps": 1e-8,  # Adam only (not in the papers): Kingma & Ba 2015 default
        "weight_decay": 0.0,  # none in the papers
        "schedule": "halving",  # "we begin to halve the learning rate every epoch"
        "warmup_steps": 0,  # no warmup in the papers
        # with dropout: 12 epochs, "start halving the learning rate after 8 epochs";
        # without dropout: 10 epochs, halving after 5 (decay_start_epoch 6)
        "decay_start_epoch": 9,
        "decay_factor": 0.5,  # halve
    },
})
class LSTMSeq2Seq(nn.Module):
    """Stacked-LSTM encoder-decoder implementing the nmtbench model interface
    (`nmtbench.models.interface.Seq2SeqModel`, docs/interfaces.md)."""

    shares_memory_across_beams = False  # beam search expands the memory to one row per beam

    def __init__(self, cfg: LSTMConfig, vocab_size: int, pad_id: int):
        super().__init__()
        self.cfg, self.vocab_size, self.pad_id = cfg, vocab_size, pad_id
        E, H, L, p = cfg.embed_dim, cfg.hidden_size, cfg.num_layers, cfg.dropout
        self.feeds = cfg.attention != "none" and cfg.input_feeding  # decoder input has +H
        self.src_embed = nn.Embedding(vocab_size, E, padding_idx=pad_id)
        self.tgt_embed = (self.src_embed if cfg.share_embeddings
                          else nn.Embedding(vocab_size, E, padding_idx=pad_id))
        inter_layer = p if L > 1 else 0.0
        self.encoder = nn.LSTM(E, H, L, batch_first=True, dropout=inter_layer)
        self.decoder = nn.LSTM(E + H * self.feeds, H, L, batch_first=True, dropout=inter_layer)
        self.attention = None
        if cfg.attention != "none":
            score = "concat" if cfg.attention == "bahdanau" else cfg.attention_score
            self.attention = GlobalAttention(H, score)
            self.combine = nn.Linear(2 * H, H, bias=False)  # W_c of h~ = tanh(W_c [c; h]) (eq. 5)
        self.drop = nn.Dropout(p)
        self.output = nn.Linear(H, vocab_size)  # softmax layer W_s (Luong eq. 6), with bias
        if cfg.share_embeddings:
            self.output.weight = self.src_embed.weight
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Every parameter ~ U(-init_range, init_range) (Luong 4.1); padding embeddings zero."""
        with torch.no_grad():
            for param in self.parameters():
                param.uniform_(-self.cfg.init_range, self.cfg.init_range)
            self.src_embed.weight[self.pad_id].zero_()
            self.tgt_embed.weight[self.pad_id].zero_()

    @property
    def model_dim(self) -> int:
        return self.cfg.hidden_size

    # -- encoder -------------------------------------------------------------------------
    def encode(self, src: Tensor, src_lens: Tensor) -> dict[str, Tensor]:
        """src (B, S) ids + EOS, right-padded; src_lens (B,) -> memory (see module docstring)."""
        S = src.size(1)
        if self.cfg.reverse_source:
            src = reverse_source(src, src_lens)
        x = self.drop(self.src_embed(src))  # (B, S, E)
        # Packing skips the padding entirely (cuDNN on GPU); lengths must live on the CPU.
        packed = pack_padded_sequence(x, src_lens.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = self.encoder(packed)  # h, c: (L, B, H) at each row's last real token
        memory = {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}  # (B, L, H)
        if self.attention is not None:
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=S)  # (B, S, H)
            memory["enc_out"] = out
            if self.attention.key_proj is not None:
                memory["enc_keys"] = self.attention.keys(out)  # (B, S, H), once per sentence
            memory["src_bias"] = padding_bias(src_lens, S, out.dtype)  # (B, 1, S)
        return memory

    # -- decoder -------------------------------------------------------------------------
    def _attend(self, query: Tensor, memory: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        # query (B, T, H) -> context (B, T, H), weights (B, T, S)
        keys = memory.get("enc_keys", memory["enc_out"])
        return self.attention(query, keys, memory["enc_out"], memory["src_bias"])

    def _parallel(self, emb: Tensor, h: Tensor, c: Tensor, memory: dict[str, Tensor]):
        """All T steps at once (no recurrence through attention). emb (B, T, E); h, c (L, B, H).
        Returns the output-layer input (B, T, H), attention weights (B, T, S) or None, h, c."""
        out, (h_new, c_new) = self.decoder(emb, (h, c))  # out (B, T, H)
        if self.attention is None:
            return self.drop(out), None, h_new, c_new
        if self.cfg.attention == "bahdanau":  # query s_{t-1}: previous top state
            query = torch.cat([h[-1].unsqueeze(1), out[:, :-1]], dim=1)  # (B, T, H)
        else:  # luong: query h_t
            query = out
        context, weights = self._attend(query, memory)  # (B, T, H), (B, T, S)
        h_tilde = torch.tanh(self.combine(torch.cat([context, out], dim=-1)))  # (B, T, H)
        return self.drop(h_tilde), weights, h_new, c_new

    def _feed_loop(self, emb: Tensor, h: list[Tensor], c: list[Tensor], feed: Tensor | None,
                   memory: dict[str, Tensor]):
        """Input-feeding recurrence, one step at a time. emb (B, T, E); h, c: L tensors (B, H),
        updated in place; feed (B, H) = h~_{t-1} (luong) or None (bahdanau).
        Returns the output-layer input (B, T, H), attention weights (B, T, S) and feed."""
        luong = self.cfg.attention == "luong"
        weights = self.decoder.all_weights  # per layer [w_ih, w_hh, b_ih, b_hh]
        E, L = emb.size(-1), len(weights)
        # Weights and encoder states used at every step go through `recurrence.Tape`: their
        # gradients are formed once after the loop instead of step by step.
        tapes = [Tape() for _ in range(L + 1)]  # one per layer, one for W_c
        w_ih, w_hh, b_ih, b_hh = weights[0]
        # Layer 1's input is [emb(y_{t-1}); feed]: the embedding half of its gates for all
        # steps is one large GEMM; per step only [feed; h] @ [W_ih[:, E:] | W_hh]^T remains.
        emb_gates = F.linear(emb, w_ih[:, :E], b_ih + b_hh)  # (B, T, 4H)
        cells = [(w_ih[:, E:], w_hh)] + [(w[0], w[1]) for w in weights[1:]]  # per layer (in, H)
        if torch.is_grad_enabled():  # one [W_ih | W_hh] (4H, in + H) product per step
            cells = [tape.share(torch.cat(w, dim=1)) for tape, w in zip(tapes, cells)]
        biases = [None] + [w[2] + w[3] for w in weights[1:]]

        def gates_of(k: int, x: Tensor, h_k: Tensor) -> Tensor:  # (B, 4H) without bias
            if isinstance(cells[k], tuple):  # no gradient: two products, no weight copy
                return F.linear(x, cells[k][0]) + F.linear(h_k, cells[k][1])
            return step_linear(torch.cat([x, h_k], dim=1), cells[k], tapes[k])

        w_c = tapes[L].share(self.combine.weight)  # W_c (H, 2H)
        fast_attention = luong and self.attention.score != "concat"
        if fast_attention:
            mem_tape = Tape()
            values = mem_tape.share(memory["enc_out"])  # (B, S, H)
            key_tape = Tape() if "enc_keys" in memory else mem_tape  # dot: keys are the values
            keys = key_tape.share(memory["enc_keys"]) if "enc_keys" in memory else values
        outs, attns = [], []
        for gates_t in emb_gates.unbind(1):  # (B, 4H); unbind: one backward node for all steps
            if not luong:  # bahdanau: c_t from s_{t-1}, fed with y_{t-1} (eq. 4)
                context, attn = self._attend(h[-1].unsqueeze(1), memory)
                feed = context.squeeze(1)  # (B, H)
            x = None
            for k in range(L):
                if k == 0:
                    gates = gates_t + gates_of(0, feed, h[0])
                else:
                    x = F.dropout(x, self.cfg.dropout, self.training)  # as nn.LSTM's dropout
                    gates = gates_of(k, x, h[k]) + biases[k]
                h[k], c[k] = lstm_step(gates, h[k], c[k])  # (B, H) each
                x = h[k]
            if fast_attention:  # c_t from h_t (eq. 7)
                context, attn = step_attention(x.unsqueeze(1), keys, values, memory["src_bias"],
                                               key_tape, mem_tape)
                context = context.squeeze(1)
            elif luong:
                context, attn = self._attend(x.unsqueeze(1), memory)
                context = context.squeeze(1)
            else:
                context = feed
            h_tilde = self.drop(torch.tanh(step_linear(torch.cat([context, x], dim=1), w_c, tapes[L])))
            if luong:
                feed = h_tilde  # h~_t is fed to step t + 1 (section 3.3)
            outs.append(h_tilde)
            attns.append(attn)
        return torch.stack(outs, dim=1), torch.cat(attns, dim=1), feed

    def _decode(self, prev_tokens: Tensor, memory: dict[str, Tensor], state: dict[str, Tensor]):
        """Run the decoder over prev_tokens (B, T) from `state` ("h", "c" (B, L, H), "feed").
        Returns logits (B, T, V), attention weights (B, T, S) or None, and the new state."""
        emb = self.drop(self.tgt_embed(prev_tokens))  # (B, T, E), all steps at once
        if self.feeds:
            h, c = list(state["h"].unbind(1)), list(state["c"].unbind(1))  # L x (B, H)
            feed = state.get("feed")
            if feed is None and self.cfg.attention == "luong":
                feed = emb.new_zeros(emb.size(0), self.cfg.hidden_size)  # h~_0 = 0
            out, attn, feed = self._feed_loop(emb, h, c, feed, memory)
            new_state = {"h": torch.stack(h, 1), "c": torch.stack(c, 1)}
            if feed is not None:
                new_state["feed"] = feed
        else:
            h0 = state["h"].transpose(0, 1).contiguous()  # (L, B, H)
            c0 = state["c"].transpose(0, 1).contiguous()
            out, attn, h, c = self._parallel(emb, h0, c0, memory)
            new_state = {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}
        return self.output(out), attn, new_state  # (B, T, V)

    def decode(self, prev_tokens: Tensor, memory: dict[str, Tensor], cache: dict | None = None):
        """cache None: teacher-forced logits (B, T, V), None. cache dict ({} at the start):
        only prev_tokens[:, -1] is new -> logits (B, 1, V), updated cache."""
        initial = {"h": memory["h"], "c": memory["c"]}
        if cache is None:
            return self._decode(prev_tokens, memory, initial)[0], None
        logits, _, cache = self._decode(prev_tokens[:, -1:], memory, cache or initial)
        return logits, cache

    def reorder_cache(self, cache: dict[str, Tensor], index: Tensor) -> dict[str, Tensor]:
        return {k: v.index_select(0, index) for k, v in cache.items()}

    def forward(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor) -> Tensor:
        """src (B, S), src_lens (B,), tgt_in (B, T) = BOS + y -> logits (B, T, V)."""
        return self.decode(tgt_in, self.encode(src, src_lens))[0]

    def attention_weights(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced attention weights (B, T, S) indexed by *original* source position."""
        if self.attention is None:
            raise ValueError("attention_weights needs a model with attention")
        memory = self.encode(src, src_lens)
        weights = self._decode(tgt_in, memory, {"h": memory["h"], "c": memory["c"]})[1]
        if self.cfg.reverse_source:  # undo the reversal (the index is its own inverse)
            index = reversal_index(src_lens, src.size(1))[:, None, :].expand_as(weights)
            weights = weights.gather(2, index)
        return weights

    # -- cost ----------------------------------------------------------------------------
    def flops_per_batch(self, src_lens: Tensor, tgt_lens: Tensor) -> float:
        """Analytic training FLOPs (forward + backward = 3 x forward) of the matmuls for
        sentences of these lengths: LSTM gates 2 (in + H) 4H per token and layer, attention
        (keys, scores, context, W_c), output layer 2 H V per target token. Elementwise
        gate/softmax work and embedding lookups are not counted."""
        src_lens = torch.as_tensor(src_lens, dtype=torch.float64)
        tgt_lens = torch.as_tensor(tgt_lens, dtype=torch.float64)
        n_src, n_tgt = float(src_lens.sum()), float(tgt_lens.sum())
        E, H, L = self.cfg.embed_dim, self.cfg.hidden_size, self.cfg.num_layers

        def lstm(first_in: int) -> float:  # forward FLOPs per token through the L layers
            return 2 * (first_in + H) * 4 * H + (L - 1) * 2 * (H + H) * 4 * H

        forward = n_src * lstm(E) + n_tgt * (lstm(E + H * self.feeds) + 2 * H * self.vocab_size)
        if self.attention is not None:
            n_pairs = float((src_lens * tgt_lens).sum())
            forward += self.attention.flops(H, n_src, n_tgt, n_pairs) + n_tgt * 2 * (2 * H) * H
        return 3.0 * forward


__all__ = ["ATTENTIONS", "LSTMConfig", "LSTMSeq2Seq", "reversal_index", "reverse_source"]
