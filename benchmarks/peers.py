"""The implementations people would pick instead, built at our models' dimensions.

Hugging Face `transformers` (MarianMTModel) and OpenNMT-py are optional: they come with the
`bench` extra (README, "Benchmarks"). `missing()` names what is absent and how to install it,
so a benchmark can skip the peer systems with that message instead of failing.

- `marian(cfg, vocab_size, dropout)`: `transformers.MarianMTModel` with a TransformerConfig's
  dimensions: post-norm, sinusoidal positions, scaled embeddings tied across encoder, decoder
  and output (the same architecture as `nmtbench.models.transformer`). `marian_loss` is the
  Hugging Face Trainer's label smoothing (`transformers.trainer_pt_utils.LabelSmoother`, what
  `TrainingArguments(label_smoothing_factor=...)` uses).
- `onmt_lstm(...)`: OpenNMT-py's `RNNEncoder` + `InputFeedRNNDecoder` (LSTM, global `dot`
  attention with input feeding, Luong et al. 2015) + a linear generator, as
  `onmt.model_builder` assembles them; `onmt_loss` is OpenNMT-py's training criterion
  (`nn.CrossEntropyLoss(ignore_index=pad, reduction="sum", label_smoothing=...)` on the
  generator's fp32 scores, `onmt.utils.loss.LossCompute`).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import Tensor, nn

from nmtbench.models.transformer import TransformerConfig

PAD, BOS, EOS = 0, 2, 3
INSTALL = 'pip install "torch==' + torch.__version__.split("+")[0] + '" -e ".[bench]"'


def missing(*modules: str) -> str | None:
    """None when every module imports, else a one-line message naming the install command."""
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    if not absent:
        return None
    names = {"transformers": "transformers", "onmt": "OpenNMT-py"}
    return (f"{', '.join(names.get(m, m) for m in absent)} not installed: the peer systems are "
            f"skipped. Install the benchmark extra: {INSTALL}")


def marian(cfg: TransformerConfig, vocab_size: int, dropout: float | None = None, attention: str | None = None):
    """MarianMTModel with our Transformer's dimensions; `attention`: HF's attention kernel
    (`attn_implementation`: None = HF's default, SDPA; "eager" = its matmul attention)."""
    from transformers import MarianConfig, MarianMTModel

    hf_cfg = MarianConfig(
        vocab_size=vocab_size, d_model=cfg.d_model, encoder_layers=cfg.num_encoder_layers,
        decoder_layers=cfg.num_decoder_layers, encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads, encoder_ffn_dim=cfg.d_ff, decoder_ffn_dim=cfg.d_ff,
        activation_function=cfg.activation, max_position_embeddings=cfg.max_positions,
        scale_embedding=cfg.scale_embeddings, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
        decoder_start_token_id=BOS, forced_eos_token_id=None,
        dropout=cfg.dropout if dropout is None else dropout,
        attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
    )
    model = MarianMTModel(hf_cfg)
    if attention is not None:
        model.set_attn_implementation(attention)
    return model


def marian_loss(model, batch: dict[str, Tensor], epsilon: float) -> Tensor:
    """One forward pass and the HF Trainer's label-smoothed loss (mean over target tokens)."""
    from transformers.trainer_pt_utils import LabelSmoother

    mask = batch["src"].ne(PAD).long()
    out = model(input_ids=batch["src"], attention_mask=mask, decoder_input_ids=batch["tgt_in"])
    labels = batch["tgt_out"].masked_fill(batch["tgt_out"].eq(PAD), -100)
    return LabelSmoother(epsilon=epsilon)(out, labels)


class OnmtLSTM(nn.Module):
    """OpenNMT-py's RNN encoder-decoder with global attention and input feeding."""

    def __init__(self, num_layers: int, hidden_size: int, embed_dim: int, vocab_size: int,
                 dropout: float, attn_type: str = "dot"):
        super().__init__()
        with warnings.catch_warnings():  # onmt.modules.sru: torch.cuda.amp deprecation warnings
            warnings.simplefilter("ignore")
            from onmt.decoders.decoder import InputFeedRNNDecoder
            from onmt.encoders.rnn_encoder import RNNEncoder
            from onmt.models import NMTModel
            from onmt.modules import Embeddings

        def embeddings():
            return Embeddings(embed_dim, vocab_size, PAD, dropout=dropout)

        encoder = RNNEncoder("LSTM", False, num_layers, hidden_size, dropout, embeddings())
        decoder = InputFeedRNNDecoder("LSTM", False, num_layers, hidden_size, attn_type=attn_type,
                                      dropout=dropout, embeddings=embeddings())
        self.model = NMTModel(encoder, decoder)
        self.generator = nn.Linear(hidden_size, vocab_size)
        for p in self.parameters():  # onmt's param_init 0.1 (Luong et al. 2015, section 4.1)
            nn.init.uniform_(p, -0.1, 0.1)

    def forward(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor, tgt_out: Tensor) -> Tensor:
        # onmt feeds (B, L, 1) feature tensors and the whole target (BOS + y + EOS)
        tgt = torch.cat([tgt_in, tgt_out[:, -1:]], dim=1).unsqueeze(-1)
        dec_out, _ = self.model(src.unsqueeze(-1), tgt, src_lens)
        return self.generator(dec_out)  # (B, T, V)


def onmt_loss(model: OnmtLSTM, batch: dict[str, Tensor], epsilon: float) -> Tensor:
    """OpenNMT-py's criterion on the generator's fp32 scores, normalised by target tokens."""
    scores = model(batch["src"], batch["src_lens"], batch["tgt_in"], batch["tgt_out"])
    target = batch["tgt_out"].reshape(-1)
    criterion = nn.CrossEntropyLoss(ignore_index=PAD, reduction="sum", label_smoothing=epsilon)
    return criterion(scores.reshape(-1, scores.size(-1)).float(), target) / target.ne(PAD).sum()
