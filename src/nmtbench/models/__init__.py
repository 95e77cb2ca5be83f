"""Model registry: `model.name` in the config -> (typed config dataclass, nn.Module class).

Every model implements one interface (docs/interfaces.md), so the LightningModule, decoding and
callbacks work unchanged for all of them:

    forward(src, src_lens, tgt_in) -> logits (B, T, V)
    encode(src, src_lens) -> memory: dict[str, Tensor], every value batch-first
    decode(prev_tokens, memory, cache=None) -> (logits, cache)
        cache None: teacher-forced pass over prev_tokens (B, T) -> logits (B, T, V), None
        cache dict (start with {}): incremental; only prev_tokens[:, -1] is new -> (B, 1, V)
    reorder_cache(cache, index) -> cache   (select rows along the batch dim, for beam search)
    model_dim: int                          (width used by the inverse-sqrt LR schedule)
    flops_per_batch(src_lens, tgt_lens) -> float   (analytic training FLOPs, fwd + bwd)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from torch import nn

from nmtbench.config import from_mapping, to_container
from nmtbench.errors import ConfigError
from nmtbench.optim import OptimConfig


@dataclass
class TrainingConfig:
    """Keys of `cfg.model` that configure training rather than the architecture (read by
    Seq2SeqModule; each model's schema in nmtbench.schema sets their defaults)."""

    name: str  # the registry key below: transformer | lstm
    label_smoothing: float = 0.0  # epsilon of the label-smoothed cross entropy
    # What an optimizer step's summed loss is divided by: its target tokens (Vaswani et al.
    # 2017; fairseq) or its sentences (Luong et al. 2015, Sutskever et al. 2014: "divided by
    # 128"), counted over all micro-batches and ranks of the step (Seq2SeqModule).
    loss_normalization: str = "tokens"
    optim: OptimConfig = field(default_factory=OptimConfig)  # optimiser + LR schedule


TRAINING_KEYS = tuple(f.name for f in fields(TrainingConfig))


def _registry() -> dict[str, tuple[type, type[nn.Module]]]:
    from nmtbench.models.lstm import LSTMConfig, LSTMSeq2Seq
    from nmtbench.models.transformer import TransformerConfig, TransformerSeq2Seq

    return {
        "transformer": (TransformerConfig, TransformerSeq2Seq),
        "lstm": (LSTMConfig, LSTMSeq2Seq),
    }


def model_config(cfg: Mapping[str, Any]) -> Any:
    """Validate the architecture keys of `cfg.model` into its typed dataclass."""
    cfg = to_container(cfg)
    name = cfg.get("name")
    models = _registry()
    if name not in models:
        raise ConfigError(f"Unknown model.name '{name}'. Available: {', '.join(sorted(models))}.")
    config_cls, _ = models[name]
    return from_mapping(config_cls, cfg, "model", ignore=TRAINING_KEYS)


def build_model(cfg: Mapping[str, Any], vocab_size: int, pad_id: int) -> nn.Module:
    """Build the model named by `cfg.name` from the architecture keys of `cfg`."""
    arch = model_config(cfg)
    _, model_cls = _registry()[to_container(cfg)["name"]]
    return model_cls(arch, vocab_size=vocab_size, pad_id=pad_id)
