"""The interface every model implements (docs/interfaces.md), as a `typing.Protocol`.

The LightningModule (training loss, validation), decoding (greedy and beam search) and the
callbacks (FLOPs, BLEU) use a model only through these members, so any class that has them
trains, decodes and is measured like the built-in ones. Shapes: B batch, S source length,
T target length, V vocabulary.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Seq2SeqModel(Protocol):
    shares_memory_across_beams: bool  # decode accepts B memory rows for B * k token rows

    @property
    def model_dim(self) -> int:
        """Width used by the inverse-sqrt learning-rate schedule (d_model)."""

    def forward(self, src: Tensor, src_lens: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) of src (B, S), src_lens (B,), tgt_in (B, T)."""

    def encode(self, src: Tensor, src_lens: Tensor) -> dict[str, Tensor]:
        """Memory: a dict of tensors, every value batch-first (dim 0 = B)."""

    def decode(self, prev_tokens: Tensor, memory: dict[str, Tensor],
               cache: dict | None = None) -> tuple[Tensor, dict | None]:
        """cache None: teacher forcing over prev_tokens (B, T) -> (logits (B, T, V), None);
        cache dict (start with {}): incremental, only prev_tokens[:, -1] is new ->
        (logits (B, 1, V), the updated cache). Must match teacher forcing within 1e-5 (fp32)."""

    def reorder_cache(self, cache: dict, index: Tensor) -> dict:
        """Keep cache rows `index` along the batch dimension (beam search)."""

    def flops_per_batch(self, src_lens: Tensor, tgt_lens: Tensor) -> float:
        """Analytic training FLOPs (forward + backward) of a batch with these lengths."""


__all__ = ["Seq2SeqModel"]
