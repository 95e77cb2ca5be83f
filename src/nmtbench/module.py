"""Seq2SeqModule: the one LightningModule every model trains with.

It owns what is shared by all architectures: the label-smoothed cross-entropy, the
optimiser and LR schedule, validation loss/perplexity, and `translate` (greedy or beam
search through `nmtbench.decoding`). BLEU is computed by `nmtbench.callbacks.bleu`.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torchmetrics import SumMetric

from nmtbench.config import from_mapping
from nmtbench.models import build_model
from nmtbench.optim import OptimConfig, ScheduledLR, build_optimizer


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross entropy and NLL of rows of logits, in cache-sized row chunks.

    Forward reads the logits chunk by chunk through one reused scratch buffer and keeps only
    the per-row log-sum-exp. Backward overwrites the saved logits with their gradient
    w * (softmax(x) * (g_loss + g_nll) - onehot * ((1 - eps) g_loss + g_nll) - eps g_loss / V),
    chunk by chunk: the logits are consumed (read them before calling backward) and no
    (N, V) tensor is allocated. Autograd through log_softmax + gather + mean allocates four
    (N, V) tensors (log-probabilities, two gradients, their sum; plus a float copy of
    bf16/fp16 logits); a fresh tensor of that size costs page faults on every step
    (docs/performance.md).
    """

    @staticmethod
    def forward(ctx, logits, target, weight, epsilon: float):
        # logits (N, V) any float dtype; target (N,) long; weight (N,) float (1 token, 0 pad)
        rows = _rows_per_chunk(logits)
        lse, x_t, x_mean = [], [], []
        scratch = None
        for x, t in zip(logits.split(rows), target.split(rows)):
            if scratch is None:
                scratch = torch.empty(x.shape, dtype=_upcast(x[:0]).dtype, device=x.device)
            x = _upcast(x)  # fp32 view for fp32/fp64; one chunk's fp32 copy for bf16/fp16
            buf = scratch[: x.size(0)]
            m = x.amax(dim=-1)  # (n,)
            torch.sub(x, m[:, None], out=buf).exp_()
            lse.append(buf.sum(dim=-1).log_().add_(m))
            x_t.append(x.gather(1, t[:, None]).squeeze(1))
            x_mean.append(x.mean(dim=-1))
        lse, x_t, x_mean = torch.cat(lse), torch.cat(x_t), torch.cat(x_mean)  # (N,) each
        nll = ((lse - x_t) * weight).sum()
        smooth = ((lse - x_mean) * weight).sum()
        ctx.save_for_backward(logits, target, weight, lse)
        ctx.epsilon = epsilon
        return (1.0 - epsilon) * nll + epsilon * smooth, nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_loss, g_nll):
        logits, target, weight, lse = ctx.saved_tensors
        eps, V = ctx.epsilon, logits.size(-1)
        scale = weight * (g_loss + g_nll)  # (N,) on softmax
        hit = weight * ((1.0 - eps) * g_loss + g_nll)  # (N,) on the target's one-hot
        uniform = weight * (eps / V * g_loss)  # (N,) on every entry
        rows = _rows_per_chunk(logits)
        for start in range(0, logits.size(0), rows):
            sl = slice(start, start + rows)
            x = logits[sl]
            g = _upcast(x)  # in place for fp32/fp64; bf16/fp16 through an fp32 chunk
            g.sub_(lse[sl, None]).exp_().mul_(scale[sl, None]).sub_(uniform[sl, None])
            g.scatter_add_(1, target[sl, None], -hit[sl, None])
            if g is not x:
                x.copy_(g)
        return logits, None, None, None


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _rows_per_chunk(logits: torch.Tensor) -> int:
    # CPU: ~1 MB of fp32 per chunk (stays in cache); GPU: ~256 MB (a chunk is a few launches)
    budget = 1 << 18 if logits.device.type == "cpu" else 1 << 26
    return max(1, budget // max(1, logits.size(-1)))


def label_smoothed_loss(
    logits: torch.Tensor, target: torch.Tensor, pad_id: int, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed label-smoothed cross entropy, summed NLL and the number of target tokens.

    logits (B, T, V), target (B, T). Padding positions are ignored. The smoothed target is
    (1 - eps) * one_hot + eps / V (uniform over the vocabulary), as in
    `torch.nn.functional.cross_entropy(label_smoothing=eps)` and Szegedy et al. 2016.
    Both sums are differentiable; the loss is computed in fp32 whatever the logits' dtype.
    Backward writes the gradient into the logits' memory (see `_SmoothedCrossEntropy`): read
    or copy the logits before calling backward if you need them afterwards.
    """
    mask = target.ne(pad_id)  # (B, T)
    V = logits.size(-1)
    loss, nll = _SmoothedCrossEntropy.apply(
        logits.reshape(-1, V), target.reshape(-1), mask.reshape(-1).to(_upcast(logits[:0]).dtype), float(epsilon)
    )
    return loss, nll, mask.sum()


class Seq2SeqModule(L.LightningModule):
    """Training/evaluation logic around any model implementing the nmtbench interface.

    `cfg` is the full resolved run config (a plain dict); it is saved in every checkpoint
    so evaluation can rebuild the data, tokenizer and model from the checkpoint alone.
    """

    def __init__(self, cfg: dict[str, Any], vocab_size: int, pad_id: int = 0, bos_id: int = 2, eos_id: int = 3):
        super().__init__()
        self.save_hyperparameters()
        model_cfg = cfg["model"]
        self.model = build_model(model_cfg, vocab_size=vocab_size, pad_id=pad_id)
        self.optim_cfg = from_mapping(OptimConfig, model_cfg.get("optim"), "model.optim")
        self.label_smoothing = float(model_cfg.get("label_smoothing", 0.0))
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.tokenizer = None  # attached in setup() from the datamodule (not saved)
        # Token-weighted validation loss, reduced across ranks by torchmetrics.
        self.val_loss_sum = SumMetric()
        self.val_nll_sum = SumMetric()
        self.val_tokens = SumMetric()

    # -- setup -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "tokenizer", None) is not None:
            self.attach_tokenizer(dm.tokenizer)

    def attach_tokenizer(self, tokenizer) -> None:
        vocab = self.hparams["vocab_size"]
        if tokenizer.vocab_size != vocab:
            raise ValueError(
                f"The tokenizer has {tokenizer.vocab_size} pieces but the model was built for {vocab}; "
                "rebuild the data cache or set data.vocab_size to match."
            )
        self.tokenizer = tokenizer

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # -- steps -------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(batch["src"], batch["src_lens"], batch["tgt_in"])

    def _loss(self, batch):
        logits = self(batch)
        return label_smoothed_loss(logits, batch["tgt_out"], self.pad_id, self.label_smoothing)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, nll, ntok = self._loss(batch)
        ntok = ntok.clamp(min=1)
        bsz = batch["src"].size(0)
        self.log("train/loss", loss / ntok, prog_bar=True, batch_size=bsz)
        self.log("train/nll", nll / ntok, batch_size=bsz)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=bsz)
        return loss / ntok

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        loss, nll, ntok = self._loss(batch)
        self.val_loss_sum.update(loss.detach())
        self.val_nll_sum.update(nll.detach())
        self.val_tokens.update(ntok.float())

    def on_validation_epoch_end(self) -> None:
        ntok = self.val_tokens.compute().clamp(min=1)
        loss = self.val_loss_sum.compute() / ntok
        nll = self.val_nll_sum.compute() / ntok
        # Already reduced across ranks by torchmetrics: every rank logs the same value.
        self.log("val/loss", loss)
        self.log("val/nll", nll)
        self.log("val/ppl", torch.exp(nll.clamp(max=50.0)))
        for metric in (self.val_loss_sum, self.val_nll_sum, self.val_tokens):
            metric.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        # Decoding and scoring of the test split happen in BleuCallback.
        return None

    # -- decoding ----------------------------------------------------------------------
    @torch.no_grad()
    def translate_ids(self, batch: dict[str, torch.Tensor], beam_size: int = 1, length_penalty: float = 0.6,
                      max_len_b: int = 50) -> list[list[int]]:
        from nmtbench.decoding import beam_search, greedy_search

        was_training = self.model.training
        self.model.eval()
        try:
            ids = dict(bos_id=self.bos_id, eos_id=self.eos_id, pad_id=self.pad_id, max_len_b=max_len_b)
            if beam_size <= 1:
                return greedy_search(self.model, batch["src"], batch["src_lens"], **ids)
            return beam_search(self.model, batch["src"], batch["src_lens"], beam_size=beam_size,
                               length_penalty=length_penalty, **ids)
        finally:
            self.model.train(was_training)

    def translate(self, batch: dict[str, torch.Tensor], beam_size: int = 1, length_penalty: float = 0.6,
                  max_len_b: int = 50) -> list[str]:
        """Detokenized translations of `batch["src"]`, in batch order."""
        if self.tokenizer is None:
            raise RuntimeError("Seq2SeqModule.translate needs a tokenizer: call attach_tokenizer() first.")
        return [self.tokenizer.decode(h) for h in self.translate_ids(batch, beam_size, length_penalty, max_len_b)]

    # -- optimisation ------------------------------------------------------------------
    def configure_optimizers(self):
        optimizer = build_optimizer(self.optim_cfg, self.model.parameters())
        scheduler = ScheduledLR(optimizer, self.optim_cfg, self.model.model_dim, epoch_fn=lambda: self.current_epoch)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


__all__ = ["Seq2SeqModule", "label_smoothed_loss"]
